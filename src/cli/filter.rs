//! `dprune filter`: flags → [`FilterConfig`] → [`run_filter`].

use std::path::PathBuf;

use crate::cli::encode_flags::EncoderFlags;
use anyhow::Context;
use clap::{ArgGroup, Args};
use dprune::cluster::kmeans::{DEFAULT_MAX_ITERS, DEFAULT_TOLERANCE};
use dprune::cluster::{Distance, KMeansParams};
use dprune::pipeline::filter::{Balance, DEFAULT_BATCH_ROWS};
use dprune::pipeline::report::REPORT_JSON;
use dprune::pipeline::stages::{DedupParams, DedupRank, GlobalPass, KeepOf, KnnParams, QualityParams};
use dprune::pipeline::{EmbeddingSpec, Engine, FilterConfig, FilterParams, OutputSpec, Report, run_filter};
use dprune::score::Metric;
use dprune::select::dbp::{DbpParams, ShareRule};
use dprune::select::robust::CcsParams;
use dprune::select::{Budget, Keep};

use crate::cli::progress::Bars;

const EXAMPLES: &str = "\
Examples:
  # keep the 30% least prototypical rows of every shard (embedding column auto-detected)
  dprune filter --keep 0.3 'laion/*.parquet' -o pruned/

  # LAION-style .npy sidecars, 500 clusters, save the centroids for later runs
  dprune filter --keep 0.3 --embeddings 'img_emb/*.npy' --k 500 \\
      --save-centroids centroids.npy 'laion/*.parquet' -o pruned/

  # scarce data: keep the most prototypical rows, same fraction in every cluster
  dprune filter --keep 0.5 --keep-easy --balance clusters data.parquet -o out/

  # no embeddings yet: embed a caption column with an ONNX sentence encoder (each row once)
  dprune filter --keep 0.3 --model minilm.onnx --text-col caption 'shards/*.parquet' -o out/

  # ... or with the built-in hashed n-gram embedder (lexical, no model needed)
  dprune filter --keep 0.3 --text-col caption 'shards/*.parquet' -o out/

  # SemDeDup at eps 0.05 after exact de-duplication, then keep 30% of the input by SSP
  dprune filter --exact-dedup --dedup 0.05 --keep 0.3 'laion/*.parquet' -o pruned/

  # only de-duplicate (keep everything else), with M and dup_of columns to audit
  dprune filter --dedup 0.05 --with-scores 'laion/*.parquet' -o dedup/

  # density-based pruning (DBP) to 30%, after dropping the 20% lowest CLIP scores
  dprune filter --metric dbp --keep 0.3 --quality-col clip_score --quality-drop 20 \\
      'laion/*.parquet' -o pruned/

  # only rows matching a SQL predicate take part (row groups ruled out by statistics are skipped)
  dprune filter --where \"similarity > 0.3 AND caption IS NOT NULL\" --keep 0.3 'laion/*.parquet' -o pruned/

  # the same prune as DataFusion plans in this process (what --cluster runs on executors)
  dprune filter --keep 0.3 --engine sql 'laion/*.parquet' -o pruned/

  # on a Ballista cluster started with `dprune cluster scheduler` and `dprune cluster executor`
  dprune filter --keep 0.3 --cluster df://127.0.0.1:50050 '/data/laion/*.parquet' -o /data/pruned/

  # random baseline, scores table only, see the plan first
  dprune filter --keep 0.3 --metric random --dry-run 'shards/*.parquet' -o out/
  dprune filter --keep 0.3 --scores-only 'shards/*.parquet' -o scores/

Outputs: one pruned Parquet file per input (same name, schema and row order),
_dprune_report.json and _dprune_report.png in the output folder.";

/// Flags of `dprune filter`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES, group(ArgGroup::new("budget").args(["keep", "keep_n"])),
          group(ArgGroup::new("emb").args(["embedding_col", "embeddings", "text_col", "image_col"])))]
pub struct FilterArgs {
    /// Parquet files or quoted globs ('dir/*.parquet'), read in the order given.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,

    /// Output folder (created if missing; must be empty unless --overwrite).
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,

    /// Fraction of rows to keep, in (0, 1]: exactly floor(F·N) rows [default: 0.5].
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    keep: Option<f64>,

    /// Number of rows to keep (instead of --keep).
    #[arg(long, value_name = "N")]
    keep_n: Option<u64>,

    /// Final rule: proto (1 − cos to the nearest k-means centroid), random, semdedup
    /// (least redundant), dbp (density-based quotas), ccs (coverage strata), moderate
    /// (nearest the median distance) or knn (kNN density, outlier-capped).
    #[arg(long, default_value = "proto", value_name = "METRIC")]
    metric: String,

    /// What --keep is a fraction of: input (usable input rows) or stage (rows left after
    /// the removal stages).
    #[arg(long, default_value = "input", value_name = "WHAT")]
    keep_of: String,

    /// Pre-filter before every other stage: keep only rows for which this SQL predicate
    /// over the inputs' columns is true (e.g. "similarity > 0.3 AND lang = 'en'"); row
    /// groups whose statistics rule out a match are skipped. Column names are
    /// case-sensitive.
    #[arg(long = "where", value_name = "SQL")]
    where_sql: Option<String>,

    /// What runs the job here: native (dprune's streaming passes, every option) or sql (the
    /// same prune as DataFusion plans: the scan, `dprune_nearest`, row_number() windows and a
    /// write plan; the kept rows equal native's; covers what --cluster covers).
    #[arg(long, value_name = "ENGINE", default_value = "native")]
    engine: String,

    /// Run on a Ballista cluster (`df://HOST:PORT`, see `dprune cluster`): the centroids are
    /// fitted here on the sample, scoring, selection and writing run on the executors, and
    /// the kept rows equal a local run's. Covers --metric proto, dbp, ccs and moderate (with
    /// --keep/--keep-n, --keep-easy, --balance, --centroids, --drop-invalid, --with-scores,
    /// --scores-only, a column or --embeddings sidecars); executors must see the inputs and
    /// the output folder at the same absolute paths.
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,

    /// Stage 1: remove rows whose embedding is bit-identical to an earlier row's.
    #[arg(long)]
    exact_dedup: bool,

    /// With --exact-dedup: compare this column's values instead of the embedding.
    #[arg(long, value_name = "COL")]
    exact_key: Option<String>,

    /// Stage 2, SemDeDup: remove rows with cosine > 1 − EPS to an earlier-ranked row of
    /// their cluster (e.g. 0.05).
    #[arg(long, value_name = "EPS")]
    dedup: Option<f64>,

    /// Which member of a near-duplicate group survives: hard (farthest from the
    /// centroid), easy or random.
    #[arg(long, default_value = "hard", value_name = "RULE")]
    dedup_keep: String,

    /// Also remove near-duplicates split across clusters: second-cluster (the default
    /// when the flag is given: every row also meets its second-nearest cluster; exact,
    /// bounded memory) or hnsw (an HNSW index over all rows left; approximate, in memory).
    #[arg(long, value_name = "METHOD", num_args = 0..=1, default_missing_value = "second-cluster")]
    dedup_global: Option<String>,

    /// Stage 3: a numeric quality column (e.g. a CLIP score; higher is better).
    #[arg(long, value_name = "COL", requires = "quality_drop")]
    quality_col: Option<String>,

    /// With --quality-col: drop this percentage of the rows left, lowest first.
    #[arg(long, value_name = "PCT", requires = "quality_col")]
    quality_drop: Option<f64>,

    /// Rank by this numeric column (higher = harder) instead of prototypicality.
    #[arg(long, value_name = "COL")]
    score_col: Option<String>,

    /// DBP: nearest other centroids averaged in d_inter.
    #[arg(long, default_value_t = dprune::select::dbp::DEFAULT_NEIGHBORS, value_name = "N")]
    dbp_neighbors: usize,

    /// DBP: softmax temperature of the complexity shares.
    #[arg(long, default_value_t = dprune::select::dbp::DEFAULT_TEMPERATURE, value_name = "T")]
    temperature: f64,

    /// DBP: every cluster's floor as a fraction of the uniform share.
    #[arg(long, default_value_t = dprune::select::dbp::DEFAULT_FLOOR_RATIO, value_name = "R")]
    dbp_floor: f64,

    /// CCS: fraction of the hardest rows dropped before stratifying.
    #[arg(long, default_value_t = dprune::select::robust::DEFAULT_CCS_BETA, value_name = "B")]
    ccs_beta: f64,

    /// kNN metric: neighbours averaged per row (searched within the row's cluster).
    #[arg(long, default_value_t = dprune::score::knn::DEFAULT_KNN, value_name = "N")]
    knn: usize,

    /// kNN metric with keep-hard: first set aside this fraction of the most isolated rows.
    #[arg(long, default_value_t = dprune::select::robust::DEFAULT_OUTLIER_CAP, value_name = "F")]
    outlier_cap: f64,

    /// DBP: per-cluster weights (.npy vector of k values, e.g. from an external score)
    /// instead of the complexity.
    #[arg(long, value_name = "FILE.npy")]
    cluster_weights: Option<PathBuf>,

    /// DBP: how weights become shares: softmax (weights / temperature) or proportional.
    #[arg(long, default_value = "softmax", value_name = "RULE")]
    shares: String,

    /// Folder for temporary files (SemDeDup's per-cluster spill, the kept-row
    /// prefetch) [default: the system temp folder].
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,

    /// Keep the most prototypical rows instead of the hardest (for scarce data).
    #[arg(long)]
    keep_easy: bool,

    /// Spread the budget: none (one global ranking) or clusters (same fraction per cluster).
    #[arg(long, default_value = "none", value_name = "HOW")]
    balance: String,

    /// Embedding column [default: the only list-of-floats column; among several, the one
    /// named embedding, emb, clip_emb, img_emb, image_embedding or text_embedding].
    #[arg(long, value_name = "NAME")]
    embedding_col: Option<String>,

    /// LAION-style .npy sidecars, one per shard in sorted order (paths or a quoted glob).
    #[arg(long, value_name = "GLOB", num_args = 1..)]
    embeddings: Option<Vec<String>>,

    #[command(flatten)]
    enc: EncoderFlags,

    /// Number of clusters [default: floor(sqrt(N)), at most 1000].
    #[arg(long, value_name = "K")]
    k: Option<usize>,

    /// k-means training rows [default: 256 per cluster, like faiss].
    #[arg(long, value_name = "ROWS")]
    sample: Option<u64>,

    /// k-means distance: cosine (spherical) or l2.
    #[arg(long, default_value = "cosine", value_name = "D")]
    distance: String,

    /// Maximum Lloyd iterations.
    #[arg(long, default_value_t = DEFAULT_MAX_ITERS, value_name = "N")]
    max_iters: usize,

    /// Stop when the inertia improves by less than this fraction (0: run all iterations).
    #[arg(long, default_value_t = DEFAULT_TOLERANCE, value_name = "T")]
    tolerance: f64,

    /// Use these centroids (.npy, k × dim) instead of fitting k-means.
    #[arg(long, value_name = "FILE")]
    centroids: Option<PathBuf>,

    /// Use this clustering instead of the nearest centroid: a .npy integer
    /// vector with one cluster per input row, in input order (faiss's or
    /// scikit-learn's labels). Needs --centroids.
    #[arg(long, value_name = "FILE.npy")]
    assignments: Option<PathBuf>,

    /// Save the fitted centroids (.npy, k × dim float32).
    #[arg(long, value_name = "FILE")]
    save_centroids: Option<PathBuf>,

    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Exclude rows whose embedding is null, NaN/inf or all zeros (counted in the report).
    #[arg(long)]
    drop_invalid: bool,

    /// Append dprune_cluster and dprune_score (and after de-duplication dprune_max_sim and
    /// dprune_dup_of) columns to the pruned shards.
    #[arg(long)]
    with_scores: bool,

    /// Write one table (file, row, cluster, score, kept) instead of pruned shards.
    #[arg(long)]
    scores_only: bool,

    /// Compute everything, print the report as JSON, write nothing.
    #[arg(long)]
    dry_run: bool,

    /// Replace files in a non-empty output folder.
    #[arg(long)]
    overwrite: bool,

    /// Skip the PNG plot.
    #[arg(long)]
    no_plot: bool,

    /// Worker threads [default: all cores].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Rows per batch (results do not depend on it).
    #[arg(long, default_value_t = DEFAULT_BATCH_ROWS, value_name = "ROWS")]
    batch_rows: usize,

    /// No progress bars or summary (warnings and errors still print).
    #[arg(short, long)]
    quiet: bool,
}

impl FilterArgs {
    fn config(&self) -> anyhow::Result<FilterConfig> {
        let removal_only = self.exact_dedup || self.dedup.is_some() || self.quality_col.is_some();
        let mut keep_of = self.keep_of.parse::<KeepOf>()?;
        let keep = match (self.keep, self.keep_n) {
            (_, Some(n)) => Budget::Count(n),
            (Some(f), None) => Budget::Fraction(f),
            // Only removal stages asked for: keep every row they leave.
            (None, None) if removal_only => {
                keep_of = KeepOf::Stage;
                Budget::Fraction(1.0)
            }
            (None, None) => Budget::default(),
        };
        let embeddings = match (&self.embedding_col, &self.embeddings, self.enc.spec(self.threads)?) {
            (Some(c), _, _) => EmbeddingSpec::Column(c.clone()),
            (None, Some(g), _) => EmbeddingSpec::Sidecars(g.clone()),
            (None, None, Some(spec)) => EmbeddingSpec::Encode(spec),
            (None, None, None) => EmbeddingSpec::Auto,
        };
        let params = FilterParams {
            keep,
            metric: self.metric.parse::<Metric>()?,
            prefer: if self.keep_easy { Keep::Easy } else { Keep::Hard },
            balance: self.balance.parse::<Balance>()?,
            kmeans: KMeansParams {
                k: self.k,
                distance: self.distance.parse::<Distance>()?,
                max_iters: self.max_iters,
                tolerance: self.tolerance,
                sample: self.sample,
                seed: self.seed,
            },
            centroids: self.centroids.clone(),
            assignments: self.assignments.clone(),
            seed: self.seed,
            // Undecodable images become null embeddings, excluded and counted.
            drop_invalid: self.drop_invalid || self.enc.skip_bad,
            batch_rows: self.batch_rows,
            exact_dedup: self.exact_dedup,
            exact_key: self.exact_key.clone(),
            dedup: DedupParams {
                eps: self.dedup,
                keep: self.dedup_keep.parse::<DedupRank>()?,
                global: match &self.dedup_global {
                    Some(m) => m.parse::<GlobalPass>()?,
                    None => GlobalPass::Off,
                },
                ..DedupParams::default()
            },
            quality: self.quality_col.as_ref().map(|c| QualityParams {
                column: c.clone(),
                drop_below_percentile: self.quality_drop.unwrap_or_default(),
            }),
            keep_of,
            score_col: self.score_col.clone(),
            dbp: DbpParams {
                neighbors: self.dbp_neighbors,
                temperature: self.temperature,
                floor_ratio: self.dbp_floor,
                shares: match self.shares.as_str() {
                    "softmax" => ShareRule::Softmax,
                    "proportional" => ShareRule::Proportional,
                    s => anyhow::bail!("invalid --shares: `{s}`: expected softmax or proportional"),
                },
            },
            ccs: CcsParams {
                beta: self.ccs_beta,
                ..CcsParams::default()
            },
            knn: KnnParams {
                neighbors: self.knn,
                outlier_cap: self.outlier_cap,
            },
            cluster_weights: self.cluster_weights.clone(),
            spill_dir: self.spill_dir.clone(),
            where_sql: self.where_sql.clone(),
        };
        let output = OutputSpec {
            dir: self.output.clone(),
            overwrite: self.overwrite,
            dry_run: self.dry_run,
            with_scores: self.with_scores,
            scores_only: self.scores_only,
            save_centroids: self.save_centroids.clone(),
            no_plot: self.no_plot,
        };
        Ok(FilterConfig {
            inputs: self.inputs.clone(),
            embeddings,
            params,
            output,
            engine: self.engine.parse::<Engine>()?,
            cluster: self.cluster.clone(),
        })
    }
}

/// Runs `dprune filter`.
pub fn run(args: FilterArgs) -> anyhow::Result<()> {
    if let Some(t) = args.threads {
        anyhow::ensure!(t >= 1, "invalid --threads: must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("starting the thread pool")?;
    }
    let cfg = args.config()?;
    let bars = Bars::new(args.quiet);
    let report = run_filter(&cfg, &bars)?;
    print_summary(&report, &cfg, args.quiet)
}

/// Prints the outcome of a filter job: the report as JSON for a dry run,
/// else a one-line summary on stderr (unless `quiet`).
pub fn print_summary(report: &Report, cfg: &FilterConfig, quiet: bool) -> anyhow::Result<()> {
    let pct = 100.0 * report.n_kept as f64 / report.n_rows.max(1) as f64;
    if cfg.output.dry_run {
        println!("{}", serde_json::to_string_pretty(report)?);
        if !quiet {
            eprintln!(
                "dry run: would keep {} of {} rows ({pct:.1}%) from {} file(s); nothing written",
                report.n_kept,
                report.n_rows,
                report.inputs.len()
            );
        }
    } else if !quiet {
        eprintln!(
            "kept {} of {} rows ({pct:.1}%) in {:.1}s -> {} (report: {})",
            report.n_kept,
            report.n_rows,
            report.timings_s.get("total").copied().unwrap_or_default(),
            cfg.output.dir.display(),
            cfg.output.dir.join(REPORT_JSON).display()
        );
    }
    Ok(())
}
