//! `dprune sql`: flags → [`SqlConfig`] → [`run_sql`] → a printed table
//! or a Parquet file.

use std::path::PathBuf;

use clap::Args;
use datafusion::arrow::util::pretty::pretty_format_batches;
use dprune::cluster::Distance;
use dprune::datafusion::FunctionParams;
use dprune::embed::{Device, EncoderSpec, InputKind};
use dprune::pipeline::sql::{DEFAULT_MAX_ROWS, SqlConfig, TableSpec, run_sql};

const EXAMPLES: &str = "\
Examples:
  # nearest centroid and prototypicality score of every row
  dprune sql --table t='laion/*.parquet' --centroids centroids.npy \\
      \"SELECT id, dprune_nearest(clip_emb)['distance'] AS d FROM t ORDER BY d DESC LIMIT 10\"

  # a complete prune: keep the 30% least prototypical rows (ties by id), as `dprune filter --keep 0.3`
  dprune sql --table t='laion/*.parquet' --centroids centroids.npy -o kept.parquet \\
      \"WITH s AS (SELECT *, dprune_nearest(clip_emb)['distance'] AS d FROM t),
            r AS (SELECT *, row_number() OVER (ORDER BY d DESC, id) AS rk FROM s)
       SELECT * EXCEPT (d, rk) FROM r WHERE rk <= (SELECT (COUNT(*) * 3) / 10 FROM t) ORDER BY id\"

  # embed a caption column with an ONNX sentence encoder
  dprune sql --table t=docs.parquet --model minilm.onnx \"SELECT id, dprune_embed(text) AS emb FROM t\" -o emb.parquet

Functions: dprune_nearest(emb) -> {cluster, distance = 1 - cos}, dprune_cosine(a, b),
dprune_normalize(emb), dprune_embed(text). Identifiers are lower-cased unless \"quoted\".
DataFusion options come from DATAFUSION_* environment variables (the option's key in upper
case, dots as underscores; e.g. DATAFUSION_EXECUTION_BATCH_SIZE=16384).";

/// Flags of `dprune sql`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct SqlArgs {
    /// The query (DataFusion SQL, one statement).
    #[arg(value_name = "QUERY")]
    query: String,

    /// A table: NAME=GLOB (Parquet files; repeat for more tables).
    #[arg(long = "table", value_name = "NAME=GLOB")]
    tables: Vec<String>,

    /// Centroids for dprune_nearest (.npy, k × dim; e.g. from `filter --save-centroids`).
    #[arg(long, value_name = "FILE.npy")]
    centroids: Option<PathBuf>,

    /// How dprune_nearest finds the nearest centroid: cosine or l2 (the distance returned
    /// is 1 − cos either way).
    #[arg(long, default_value = "cosine", value_name = "D")]
    distance: String,

    /// ONNX encoder for dprune_embed.
    #[arg(long, value_name = "FILE.onnx")]
    model: Option<PathBuf>,

    /// HF tokenizer.json of the model [default: tokenizer.json next to the model].
    #[arg(long, value_name = "FILE", requires = "model")]
    tokenizer: Option<PathBuf>,

    /// The model embeds images (a column of encoded images or paths) instead of text.
    #[arg(long, requires = "model")]
    image_model: bool,

    /// Where the model runs: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: String,

    /// Write the result to this Parquet file (zstd) instead of printing it.
    #[arg(short, long, value_name = "FILE.parquet")]
    output: Option<PathBuf>,

    /// Replace an existing output file.
    #[arg(long, requires = "output")]
    overwrite: bool,

    /// Rows printed without -o.
    #[arg(long, default_value_t = DEFAULT_MAX_ROWS, value_name = "N")]
    max_rows: usize,

    /// Worker threads [default: all cores].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// No summary on stderr.
    #[arg(short, long)]
    quiet: bool,
}

impl SqlArgs {
    fn config(&self) -> anyhow::Result<SqlConfig> {
        let tables = self
            .tables
            .iter()
            .map(|t| t.parse::<TableSpec>())
            .collect::<dprune::Result<Vec<_>>>()?;
        let encoder = match &self.model {
            Some(m) => Some(EncoderSpec {
                column: "dprune_embed".into(),
                kind: if self.image_model {
                    InputKind::Image
                } else {
                    InputKind::Text
                },
                model: Some(m.clone()),
                tokenizer: self.tokenizer.clone(),
                device: self.device.parse::<Device>()?,
                threads: self.threads,
                ..EncoderSpec::default()
            }),
            None => None,
        };
        Ok(SqlConfig {
            query: self.query.clone(),
            tables,
            functions: FunctionParams {
                centroids: self.centroids.clone(),
                distance: self.distance.parse::<Distance>()?,
                encoder,
            },
            output: self.output.clone(),
            overwrite: self.overwrite,
            max_rows: self.max_rows,
            threads: self.threads,
        })
    }
}

/// Runs `dprune sql`.
pub fn run(args: SqlArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let out = run_sql(&cfg)?;
    match &out.output {
        Some(path) => {
            if !args.quiet {
                eprintln!("wrote {} rows to {}", out.rows, path.display());
            }
        }
        None => {
            let shown: usize = out.head.iter().map(|b| b.num_rows()).sum();
            let head = if out.head.is_empty() {
                vec![datafusion::arrow::array::RecordBatch::new_empty(out.schema.clone())]
            } else {
                out.head.clone()
            };
            println!("{}", pretty_format_batches(&head)?);
            if !args.quiet {
                let omitted = out.rows - shown as u64;
                if omitted > 0 {
                    eprintln!(
                        "{} rows ({shown} shown, {omitted} omitted; --max-rows N shows more, -o FILE writes all)",
                        out.rows
                    );
                } else {
                    eprintln!("{} rows", out.rows);
                }
            }
        }
    }
    Ok(())
}
