//! `dprune demos`: flags → [`DemosConfig`] → [`run_demos`].

use std::path::PathBuf;

use clap::Args;
use dprune::pipeline::annotate::{DEFAULT_DEMOS_K, DEFAULT_ID_COLUMN, DemoOrder, DemosConfig, run_demos};

const EXAMPLES: &str = "\
Examples:
  # 8 demonstrations per test query from the labelled rows, most similar last
  dprune demos --annotated labeled.parquet --queries test.parquet --k 8 -o demos.parquet

  # most similar first, different id column names
  dprune demos --annotated labeled.parquet --id-col uid --queries test.parquet \\
      --query-id-col qid --order descending -o demos.parquet

Search is exact and over the annotated rows only. If the annotated file was written by
`dprune annotate`, queries get the same transform (pool-mean centering) as the pool.
A demo with the query's own id is skipped (unless --keep-self).
Output columns: query_id, position (0-based, prompt order), demo_id, cosine.";

/// Flags of `dprune demos`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct DemosArgs {
    /// Annotated rows (Parquet files or quoted globs), e.g. `annotate` output with labels.
    #[arg(long, required = true, value_name = "FILE", num_args = 1..)]
    annotated: Vec<String>,

    /// Query rows (Parquet files or quoted globs).
    #[arg(long, required = true, value_name = "FILE", num_args = 1..)]
    queries: Vec<String>,

    /// Output Parquet file.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,

    /// Demonstrations per query.
    #[arg(long, default_value_t = DEFAULT_DEMOS_K as i64, value_name = "K", allow_negative_numbers = true)]
    k: i64,

    /// Order: ascending (most similar last, next to the query) or descending.
    #[arg(long, default_value = "ascending", value_name = "ORDER")]
    order: String,

    /// Embedding column of both files [default: auto-detected].
    #[arg(long, value_name = "NAME")]
    embedding_col: Option<String>,

    /// Id column of the annotated rows.
    #[arg(long, default_value = DEFAULT_ID_COLUMN, value_name = "NAME")]
    id_col: String,

    /// Id column of the queries [default: --id-col].
    #[arg(long, value_name = "NAME")]
    query_id_col: Option<String>,

    /// Allow a demo with the same id as its query.
    #[arg(long)]
    keep_self: bool,

    /// Diverse demos by maximal marginal relevance: λ·similarity − (1 − λ)·redundancy
    /// with the demos already picked (e.g. 0.7; 1 = plain nearest).
    #[arg(long, value_name = "LAMBDA")]
    mmr: Option<f32>,

    /// Proceed although queries and annotated rows record different encoders.
    #[arg(long)]
    force: bool,

    /// Replace an existing output file.
    #[arg(long)]
    overwrite: bool,

    /// No summary (errors still print).
    #[arg(short, long)]
    quiet: bool,
}

/// Runs `dprune demos`.
pub fn run(args: DemosArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.k >= 1, "invalid --k: {} must be at least 1", args.k);
    let cfg = DemosConfig {
        annotated: args.annotated.clone(),
        queries: args.queries.clone(),
        embedding_col: args.embedding_col.clone(),
        id_col: args.id_col.clone(),
        query_id_col: args.query_id_col.clone(),
        k: args.k as usize,
        order: args.order.parse::<DemoOrder>()?,
        keep_self: args.keep_self,
        mmr: args.mmr,
        force: args.force,
        output: args.output.clone(),
        overwrite: args.overwrite,
    };
    let s = run_demos(&cfg)?;
    for n in &s.notes {
        eprintln!("warning: {n}");
    }
    if !args.quiet {
        eprintln!(
            "{} demonstrations for {} queries from {} annotated rows{} -> {}",
            s.rows,
            s.queries,
            s.annotated,
            if s.self_skipped > 0 {
                format!(" ({} self-matches skipped)", s.self_skipped)
            } else {
                String::new()
            },
            cfg.output.display()
        );
    }
    Ok(())
}
