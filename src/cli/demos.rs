//! `dprune demos`: flags → [`DemosConfig`] → [`run_demos`].

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Args};
use dprune::pipeline::annotate::{
    DEFAULT_DEMOS_K, DEFAULT_ID_COLUMN, DemoOrder, DemosConfig, TokenBudget, run_demos, template_from_flag,
};

use crate::cli::encode_flags::EncoderFlags;

const EXAMPLES: &str = "\
Examples:
  # 8 demonstrations per test query from the labelled rows, most similar last
  dprune demos --annotated labeled.parquet --queries test.parquet --k 8 -o demos.parquet

  # most similar first, different id column names
  dprune demos --annotated labeled.parquet --id-col uid --queries test.parquet \\
      --query-id-col qid --order descending -o demos.parquet

  # the pool was embedded on the fly by `annotate --model`: embed both files the same way
  dprune demos --annotated labeled.parquet --queries test.parquet --model minilm.onnx \\
      --text-col text -o demos.parquet

  # as many demos as fit 1000 tokens of the LM's tokenizer (text + label), labels taking
  # turns, the query's duplicates (same text, other id) skipped, and one prompt per query
  dprune demos --annotated labeled.parquet --queries test.parquet --k 32 --token-budget 1000 \\
      --budget-tokenizer gpt2-tokenizer.json --budget-col text --budget-col label \\
      --label-col label --exclude-same text \\
      --template '{{#demos}}{{text}} => {{label}}\\n{{/demos}}{{text}} =>' -o demos.parquet

Search is exact and over the annotated rows only. If the annotated file was written by
`dprune annotate`, queries get the same transform (pool-mean centering) as the pool, and
must be embedded by the same encoder (else an error, unless --force).
A demo with the query's own id is skipped (unless --keep-self).
Templates: {{#demos}}...{{/demos}} repeats per demo (prompt order); inside it {{COL}} is the
demo's column, outside it the query's; {{query.COL}} is the query's anywhere; {{{{ is a
literal {{; in --template, \\n and \\t are a newline and a tab.
Output columns: query_id, position (0-based, prompt order), demo_id, cosine (and tokens with
--token-budget); prompts: query_id, demos, prompt.";

/// Flags of `dprune demos`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES, group(ArgGroup::new("tmpl").args(["template", "template_file"])))]
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

    // Issue 5's retrieval options: token budget, labels, value exclusion, templates.
    /// Take the most similar demos while their tokens fit this budget (at most --k).
    #[arg(long, value_name = "TOKENS")]
    token_budget: Option<usize>,

    /// tokenizer.json of the LM that reads the prompts [default: --tokenizer, or the one next
    /// to --model].
    #[arg(long, value_name = "FILE", requires = "token_budget")]
    budget_tokenizer: Option<PathBuf>,

    /// Annotated column whose tokens a demo costs (repeat for several, e.g. text and label)
    /// [default: --text-col].
    #[arg(long, value_name = "COL", requires = "token_budget")]
    budget_col: Vec<String>,

    /// Query column whose tokens come off the budget first.
    #[arg(long, value_name = "COL", requires = "token_budget")]
    budget_query_col: Option<String>,

    /// Never use a demo longer than this many tokens.
    #[arg(long, value_name = "TOKENS", requires = "token_budget")]
    max_demo_tokens: Option<usize>,

    /// Pass over a demo that does not fit and try less similar ones (better packing) instead
    /// of stopping at the first that does not (the reference).
    #[arg(long, requires = "token_budget")]
    budget_skip: bool,

    /// Label column of the annotated rows: labels take turns (round-robin, in the order of
    /// their most similar demo), each turn taking that label's best remaining demo.
    #[arg(long, value_name = "COL")]
    label_col: Option<String>,

    /// Also skip demos whose value in this column (both files) equals the query's, e.g. the
    /// same text under another id.
    #[arg(long, value_name = "COL")]
    exclude_same: Option<String>,

    /// Prompt template, rendered once per query (syntax below).
    #[arg(long, value_name = "TEXT")]
    template: Option<String>,

    /// Read the prompt template from this file (verbatim).
    #[arg(long, value_name = "FILE")]
    template_file: Option<PathBuf>,

    /// Prompts file: Parquet, or JSON lines for a .jsonl name [default: the output with
    /// extension .prompts.parquet].
    #[arg(long, value_name = "FILE", requires = "tmpl")]
    prompts: Option<PathBuf>,

    /// The queries' column to embed [default: --text-col / --image-col].
    #[arg(long, value_name = "NAME")]
    query_text_col: Option<String>,

    // Embedding on the fly (issue 4): --model, --text-col, ... as in `annotate`.
    #[command(flatten)]
    encoder: EncoderFlags,
}

impl DemosArgs {
    fn config(&self) -> anyhow::Result<DemosConfig> {
        anyhow::ensure!(self.k >= 1, "invalid --k: {} must be at least 1", self.k);
        let encoder = self.encoder.spec(None)?;
        let token_budget = match self.token_budget {
            None => None,
            Some(tokens) => {
                let tokenizer = match (&self.budget_tokenizer, &self.encoder.tokenizer, &self.encoder.model) {
                    (Some(t), _, _) | (None, Some(t), _) => t.clone(),
                    (None, None, Some(m)) => m.with_file_name("tokenizer.json"),
                    (None, None, None) => anyhow::bail!(
                        "--token-budget needs --budget-tokenizer: the tokenizer.json of the LM that reads the prompts"
                    ),
                };
                let columns = if self.budget_col.is_empty() {
                    self.encoder.text_col.iter().cloned().collect()
                } else {
                    self.budget_col.clone()
                };
                Some(TokenBudget {
                    tokens,
                    tokenizer,
                    columns,
                    query_column: self.budget_query_col.clone(),
                    max_demo_tokens: self.max_demo_tokens,
                    skip: self.budget_skip,
                })
            }
        };
        let template = match (&self.template, &self.template_file) {
            (Some(t), _) => Some(template_from_flag(t)),
            (None, Some(f)) => {
                Some(std::fs::read_to_string(f).with_context(|| format!("reading --template-file {}", f.display()))?)
            }
            (None, None) => None,
        };
        Ok(DemosConfig {
            annotated: self.annotated.clone(),
            queries: self.queries.clone(),
            embedding_col: self.embedding_col.clone(),
            id_col: self.id_col.clone(),
            query_id_col: self.query_id_col.clone(),
            k: self.k as usize,
            order: self.order.parse::<DemoOrder>()?,
            keep_self: self.keep_self,
            mmr: self.mmr,
            force: self.force,
            output: self.output.clone(),
            overwrite: self.overwrite,
            encoder,
            query_text_col: self.query_text_col.clone(),
            token_budget,
            label_col: self.label_col.clone(),
            exclude_same: self.exclude_same.clone(),
            template,
            prompts: self.prompts.clone(),
        })
    }
}

/// Runs `dprune demos`.
pub fn run(args: DemosArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let s = run_demos(&cfg)?;
    for n in &s.notes {
        eprintln!("warning: {n}");
    }
    if !args.quiet {
        let mut skipped = Vec::new();
        if s.self_skipped > 0 {
            skipped.push(format!("{} self-matches skipped", s.self_skipped));
        }
        if s.same_skipped > 0 {
            skipped.push(format!("{} same-value matches skipped", s.same_skipped));
        }
        if s.without_demos > 0 {
            skipped.push(format!("{} queries without a demo that fits", s.without_demos));
        }
        if s.excluded != (0, 0) {
            skipped.push(format!(
                "{} annotated rows and {} queries without an embedding left out",
                s.excluded.0, s.excluded.1
            ));
        }
        eprintln!(
            "{} demonstrations for {} queries from {} annotated rows{} -> {}{}",
            s.rows,
            s.queries,
            s.annotated,
            if skipped.is_empty() {
                String::new()
            } else {
                format!(" ({})", skipped.join(", "))
            },
            cfg.output.display(),
            s.prompts
                .as_ref()
                .map_or(String::new(), |p| format!(" (prompts: {})", p.display()))
        );
    }
    Ok(())
}
