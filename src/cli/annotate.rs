//! `dprune annotate`: flags → [`AnnotateConfig`] → [`run_annotate`].

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dprune::cluster::knn::{DEFAULT_HNSW_THRESHOLD, KnnBackend};
use dprune::pipeline::annotate::{
    AnnotateConfig, AnnotateReport, ConfidenceOrder, DEFAULT_CONFIDENCE_COLUMN, DEFAULT_ID_COLUMN,
    DEFAULT_LABEL_COLUMN, TwoStageFiles, run_annotate,
};
use dprune::select::annotate::facility::{DEFAULT_FACILITY_FLOOR, DEFAULT_SPARSE_ABOVE, DEFAULT_SPARSE_K};
use dprune::select::annotate::ideal::{DEFAULT_IDEAL_K, DEFAULT_REALISATIONS};
use dprune::select::annotate::two_stage::{DEFAULT_KNN_CONFIDENCE_K, KnnScore};
use dprune::select::annotate::votek::{DEFAULT_VOTEK_K, DEFAULT_VOTEK_RHO};
use dprune::select::annotate::{AnnotateParams, DEFAULT_BUDGET, FirstSeed, Method};

use crate::cli::encode_flags::EncoderFlags;

const EXAMPLES: &str = "\
Examples:
  # choose 100 pool rows to annotate with fast vote-k (embedding column auto-detected)
  dprune annotate --budget 100 --method fast-votek pool.parquet -o to_annotate.parquet

  # IDEAL with 200 live-edge realisations, a named embedding column and id column
  dprune annotate --budget 18 --method ideal --ideal-realisations 200 \\
      --embedding-col emb --id-col uid pool.parquet -o to_annotate.parquet

  # facility location on a pool without an id column (row positions become ids)
  dprune annotate --budget 50 --method facility --row-index pool.parquet -o picked.parquet

<<<<<<< HEAD
  # no embeddings yet: embed a text column with an ONNX sentence encoder (cached for reruns)
  dprune annotate --budget 100 --model minilm.onnx --text-col text --cache emb-cache/ \\
      pool.parquet -o to_annotate.parquet

  # ... or with the built-in hashed n-gram embedder (lexical, no model needed)
  dprune annotate --budget 100 --text-col text pool.parquet -o to_annotate.parquet

Methods: fast-votek, ideal, facility (mfl), kcenter, kmeans, random.
=======
  # two-stage vote-k: stage 1 writes ceil(100/10) = 10 rows to annotate ...
  dprune annotate --budget 100 --method votek pool.parquet -o stage1.parquet
  # ... stage 2 with an LM's confidence per pool row (CSV or Parquet: id, confidence) ...
  dprune annotate --budget 100 --method votek --confidence conf.csv \\
      pool.parquet -o to_annotate.parquet
  # ... or with the LM-free kNN surrogate over the labelled stage-1 rows (votek-knnconf)
  dprune annotate --budget 100 --method votek --knn-confidence \\
      --stage1 stage1_labelled.parquet pool.parquet -o to_annotate.parquet

Methods: fast-votek, votek (two-stage), ideal, facility (mfl), kcenter, kmeans, random.
>>>>>>> votek
Outputs: the selected rows (all columns, selection order) with dprune_rank, dprune_gain and
dprune_method; a JSON report (coverage metrics) next to it as NAME.report.json.
The output's metadata records the encoder, so `dprune demos` embeds queries the same way.";

/// Flags of `dprune annotate`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct AnnotateArgs {
    /// Pool Parquet files or quoted globs, read in the order given.
    #[arg(required = true, value_name = "POOL")]
    inputs: Vec<String>,

    /// Output Parquet file of the selected rows.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,

    /// Rows to select (at least 1, at most the pool).
    #[arg(long, default_value_t = DEFAULT_BUDGET as i64, value_name = "N", allow_negative_numbers = true)]
    budget: i64,

    /// Selection method: fast-votek, votek (two-stage), ideal, facility, kcenter, kmeans or random.
    #[arg(long, default_value = "fast-votek", value_name = "METHOD")]
    method: String,

    /// Embedding column [default: the only list-of-floats column, or a known name].
    #[arg(long, value_name = "NAME")]
    embedding_col: Option<String>,

    /// Id column (must be unique).
    #[arg(long, default_value = DEFAULT_ID_COLUMN, value_name = "NAME")]
    id_col: String,

    /// Use row positions as ids (adds a dprune_row column) instead of an id column.
    #[arg(long)]
    row_index: bool,

    /// Do not centre embeddings on the pool mean before normalising.
    #[arg(long)]
    no_center: bool,

    /// kNN graph: auto (exact up to the threshold, then HNSW), exact or hnsw.
    #[arg(long, default_value = "auto", value_name = "HOW")]
    knn: String,

    /// Pool size above which --knn auto uses HNSW.
    #[arg(long, default_value_t = DEFAULT_HNSW_THRESHOLD, value_name = "ROWS")]
    hnsw_threshold: usize,

    /// Neighbours each row votes for (vote-k).
    #[arg(long, default_value_t = DEFAULT_VOTEK_K, value_name = "K")]
    votek_k: usize,

    /// Vote-k discount base ρ.
    #[arg(long, default_value_t = DEFAULT_VOTEK_RHO, value_name = "RHO")]
    votek_rho: f64,

    /// Two-stage vote-k: stage-1 rows [default: ceil(budget / 10)].
    #[arg(long, value_name = "N", help_heading = "Two-stage vote-k (--method votek)")]
    votek_stage1: Option<usize>,

    /// Stage 2: a confidence per pool row (Parquet, CSV or TSV with the id column and
    /// --confidence-col; stage-1 rows may be left out).
    #[arg(long, value_name = "FILE", help_heading = "Two-stage vote-k (--method votek)")]
    confidence: Option<PathBuf>,

    /// Confidence column of --confidence.
    #[arg(long, default_value = DEFAULT_CONFIDENCE_COLUMN, value_name = "NAME", help_heading = "Two-stage vote-k (--method votek)")]
    confidence_col: String,

    /// Direction of the confidence: higher-is-more-confident (a probability) or
    /// higher-is-less-confident (an NLL, as the reference's).
    #[arg(
        long,
        default_value = "higher-is-more-confident",
        value_name = "ORDER",
        help_heading = "Two-stage vote-k (--method votek)"
    )]
    confidence_order: String,

    /// Stage 2: the annotated stage-1 rows (the stage-1 output plus a label column); their
    /// ids must be the stage-1 rows.
    #[arg(long, value_name = "FILE", help_heading = "Two-stage vote-k (--method votek)")]
    stage1: Option<PathBuf>,

    /// Stage 2 without an LM: confidence from a similarity-weighted kNN vote among the
    /// labelled --stage1 rows (reported as votek-knnconf).
    #[arg(long, help_heading = "Two-stage vote-k (--method votek)")]
    knn_confidence: bool,

    /// Label column of --stage1.
    #[arg(long, default_value = DEFAULT_LABEL_COLUMN, value_name = "NAME", help_heading = "Two-stage vote-k (--method votek)")]
    label_col: String,

    /// Labelled neighbours of the kNN confidence.
    #[arg(long, default_value_t = DEFAULT_KNN_CONFIDENCE_K, value_name = "K", help_heading = "Two-stage vote-k (--method votek)")]
    knn_confidence_k: usize,

    /// kNN confidence: probability (largest class share) or margin (largest minus second).
    #[arg(
        long,
        default_value = "probability",
        value_name = "HOW",
        help_heading = "Two-stage vote-k (--method votek)"
    )]
    knn_confidence_score: String,

    /// Neighbours per row of IDEAL's graph.
    #[arg(long, default_value_t = DEFAULT_IDEAL_K, value_name = "K")]
    ideal_k: usize,

    /// IDEAL live-edge realisations (common random numbers).
    #[arg(long, default_value_t = DEFAULT_REALISATIONS, value_name = "R")]
    ideal_realisations: usize,

    /// IDEAL first seed: greedy (argmax of spread) or index0 (the reference's behaviour).
    #[arg(long, default_value = "greedy", value_name = "HOW")]
    ideal_first: String,

    /// Facility-location floor, in [-1, 0].
    #[arg(long, default_value_t = DEFAULT_FACILITY_FLOOR, value_name = "F", allow_negative_numbers = true)]
    mfl_floor: f32,

    /// Neighbours per row of sparse facility location (pools above --mfl-dense-max).
    #[arg(long, default_value_t = DEFAULT_SPARSE_K, value_name = "K")]
    mfl_sparse_k: usize,

    /// Largest pool for exact (dense, n² memory) facility location; sparse top-k above.
    #[arg(long, default_value_t = DEFAULT_SPARSE_ABOVE, value_name = "ROWS")]
    mfl_dense_max: usize,

    /// JSON report [default: the output with extension .report.json].
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,

    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Replace existing output and report files.
    #[arg(long)]
    overwrite: bool,

    /// Worker threads [default: all cores].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// No summary (errors still print).
    #[arg(short, long)]
    quiet: bool,

    // Embedding on the fly (issue 4): --model, --text-col, ... as in `filter`.
    #[command(flatten)]
    encoder: EncoderFlags,
}

impl AnnotateArgs {
    fn config(&self) -> anyhow::Result<AnnotateConfig> {
        anyhow::ensure!(self.budget >= 1, "invalid --budget: {} must be at least 1", self.budget);
        let mut params = AnnotateParams::default()
            .with_method(self.method.parse::<Method>()?)
            .with_budget(self.budget as usize)
            .with_seed(self.seed);
        params.knn.backend = self.knn.parse::<KnnBackend>()?;
        params.knn.hnsw_threshold = self.hnsw_threshold;
        params.facility.sparse_above = self.mfl_dense_max;
        params.votek.k = self.votek_k;
        params.votek.rho = self.votek_rho;
        params.ideal.k = self.ideal_k;
        params.ideal.realisations = self.ideal_realisations;
        params.ideal.first = self.ideal_first.parse::<FirstSeed>()?;
        params.facility.floor = self.mfl_floor;
        params.facility.sparse_k = self.mfl_sparse_k;
        params.two_stage.stage1 = self.votek_stage1;
        params.two_stage.knn_k = self.knn_confidence_k;
        params.two_stage.knn_score = self.knn_confidence_score.parse::<KnnScore>()?;
        let two_stage = TwoStageFiles {
            confidence: self.confidence.clone(),
            confidence_col: self.confidence_col.clone(),
            confidence_order: self.confidence_order.parse::<ConfidenceOrder>()?,
            stage1: self.stage1.clone(),
            label_col: self.label_col.clone(),
            knn_confidence: self.knn_confidence,
        };
        Ok(AnnotateConfig {
            inputs: self.inputs.clone(),
            embedding_col: self.embedding_col.clone(),
            id_col: self.id_col.clone(),
            row_index: self.row_index,
            center: !self.no_center,
            params,
            two_stage,
            output: self.output.clone(),
            report: self.report.clone(),
            overwrite: self.overwrite,
            encoder: self.encoder.spec(self.threads)?,
        })
    }
}

/// Runs `dprune annotate`.
pub fn run(args: AnnotateArgs) -> anyhow::Result<()> {
    if let Some(t) = args.threads {
        anyhow::ensure!(t >= 1, "invalid --threads: must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("starting the thread pool")?;
    }
    let cfg = args.config()?;
    let (report, _) = run_annotate(&cfg)?;
    print_annotate_summary(&report, &cfg, args.quiet);
    Ok(())
}

/// The one-line summary of an annotate run on stderr (unless `quiet`).
pub fn print_annotate_summary(report: &AnnotateReport, cfg: &AnnotateConfig, quiet: bool) {
    if !quiet {
        let m = &report.metrics;
        eprintln!(
            "selected {} of {} rows with {} in {:.2}s -> {} (report: {}); facility location {:.4}, coverage@q0.5 {:.3}",
            report.budget,
            report.pool_rows,
            report.meta.method,
            report.seconds.values().sum::<f64>(),
            cfg.output.display(),
            cfg.report_path().display(),
            m.facility_location,
            m.coverage.last().map_or(0.0, |c| c.coverage),
        );
        if report.excluded_rows > 0 {
            eprintln!(
                "note: {} pool rows had no embedding (undecodable image) and were left out",
                report.excluded_rows
            );
        }
        if report.fallback > 0 {
            eprintln!(
                "note: {} rows were added at random (seeded): the method had no further candidates",
                report.fallback
            );
        }
        if let Some(t) = report.two_stage.as_ref().filter(|t| t.stage == 1) {
            eprintln!(
                "note: stage 1 of two-stage vote-k ({} of {} rows): annotate them, then run stage 2 with \
                 --confidence FILE, or --knn-confidence --stage1 LABELLED_FILE, and the same pool, flags and seed",
                t.stage1_rows, t.budget
            );
        }
        if let Some(r) = report.knn_recall {
            eprintln!("note: approximate kNN graph, recall@k {r:.3} against exact search on a sample");
        }
    }
}
