//! `filter`: score every row and write the kept rows.
//!
//! Passes over the shards (each streams Arrow batches of only the needed
//! columns; memory holds the centroids, the training sample and ~10 bytes
//! per row, never the dataset):
//!
//! 1. **sample** — read the embeddings once, validate every row, keep a
//!    seeded uniform sample of [`KMeansParams::sample`] rows (chosen up
//!    front from the row count in the footers, so it does not depend on
//!    batch size);
//! 2. **k-means** on the sample (skipped with `centroids`);
//! 3. **score** — nearest centroid and score of every row; a reader thread
//!    decodes the next batch while the GEMM runs;
//! 4. **select** an exact budget ([`crate::select`]);
//! 5. **write** one pruned shard per input (same file name, schema and row
//!    order), or one scores table, then the JSON report and PNG plot.
//!
//! This file holds the job's types (parameters, embedding and output
//! specs); the driver that runs the passes is the child module `driver`,
//! the write step `write`. [`Engine::Sql`] and `cluster` run the same
//! prune as DataFusion plans instead (child module `sql`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cluster::KMeansParams;
use crate::embed::EncoderSpec;
use crate::pipeline::stages::{DedupParams, KeepOf, KnnParams, QualityParams, check_distance};
use crate::score::Metric;
use crate::select::dbp::DbpParams;
use crate::select::robust::CcsParams;
use crate::select::{Budget, Keep};
use crate::{Error, Result};

mod checks;
mod dedup;
mod driver;
mod prefilter;
mod sources;
#[cfg(feature = "datafusion")]
mod sql;
mod summary;
mod write;

pub use driver::run_filter;
#[cfg(feature = "datafusion")]
pub use sql::run_filter_sql;

/// Rows per embedding batch in the sample and score passes. A batch of 384-float
/// rows is then 3 MiB, which, split between the cores, mostly stays in their L2 caches
/// (2 MiB each on the benchmarks' Xeon) from decoding to checking, normalising and
/// searching it; at 8192 rows (12 MiB) every step read it back from L3. On the 1M × 384
/// filter: sample pass 1.29 → 1.20 s, the run 0.18 s faster (six alternating pairs),
/// peak RSS about 50 MB lower.
pub const DEFAULT_BATCH_ROWS: usize = 2048;
/// Name of the scores table written by `scores_only`.
pub const SCORES_TABLE: &str = "scores.parquet";
pub use crate::io::writer::{CLUSTER_COLUMN, SCORE_COLUMN};
/// Column added by `with_scores` after SemDeDup: M, the row's largest
/// cosine with an earlier-ranked row of its cluster (1 for exact duplicates).
pub const MAX_SIM_COLUMN: &str = "dprune_max_sim";
/// Column added by `with_scores` after a de-duplication stage: the global
/// row id (row index over the inputs in order) of the row this one
/// duplicates, or null.
pub const DUP_OF_COLUMN: &str = "dprune_dup_of";

/// What runs a `filter` job in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// dprune's own streaming passes: every metric and stage.
    #[default]
    Native,
    /// The cluster-based prunes (proto, DBP, CCS, Moderate, balanced) as
    /// DataFusion plans (a scan of the embeddings, `dprune_nearest`,
    /// `row_number()` windows, a write plan): the plans `cluster` runs on
    /// Ballista, here in this process. Same kept rows as `Native`; fewer
    /// options (the others are refused by name).
    Sql,
}

impl Engine {
    /// The accepted names.
    pub const NAMES: &'static str = "native or sql";
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Native => "native",
            Engine::Sql => "sql",
        })
    }
}

impl FromStr for Engine {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "native" => Ok(Engine::Native),
            "sql" | "datafusion" => Ok(Engine::Sql),
            _ => Err(Error::param("--engine", format!("`{s}`: expected {}", Engine::NAMES))),
        }
    }
}

/// How the kept fraction is spread over clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// One global ranking.
    #[default]
    None,
    /// The same fraction of every cluster.
    Clusters,
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::None => "none",
            Balance::Clusters => "clusters",
        })
    }
}

impl FromStr for Balance {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Balance::None),
            "clusters" => Ok(Balance::Clusters),
            _ => Err(Error::param("--balance", format!("`{s}`: expected none or clusters"))),
        }
    }
}

/// What to compute and keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterParams {
    /// How many rows to keep; defaults to [`crate::select::DEFAULT_KEEP`].
    pub keep: Budget,
    /// The score.
    pub metric: Metric,
    /// Keep the hardest (default) or easiest rows.
    pub prefer: Keep,
    /// Spread the budget over clusters.
    pub balance: Balance,
    /// The clustering.
    pub kmeans: KMeansParams,
    /// Centroids to load instead of fitting (`.npy`, `k × dim`).
    pub centroids: Option<PathBuf>,
    /// The cluster of every input row (`.npy` integer vector in input order,
    /// e.g. faiss's or scikit-learn's labels) instead of the nearest of
    /// `centroids`, which it needs: reuse a clustering made elsewhere.
    pub assignments: Option<PathBuf>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Exclude rows with null, non-finite or zero embeddings instead of failing.
    pub drop_invalid: bool,
    /// Rows per batch; defaults to [`DEFAULT_BATCH_ROWS`]. Results do not depend on it.
    pub batch_rows: usize,
    /// Stage 1: remove rows whose embedding (or `exact_key`) equals an
    /// earlier row's.
    pub exact_dedup: bool,
    /// Compare this column's values instead of the embedding in stage 1.
    pub exact_key: Option<String>,
    /// Stage 2 (SemDeDup with `dedup.eps`) and the `semdedup` metric.
    pub dedup: DedupParams,
    /// Stage 3: a percentile rule on a score column.
    pub quality: Option<QualityParams>,
    /// What `keep` is a fraction of.
    pub keep_of: KeepOf,
    /// Rank by this numeric column (higher = harder) instead of the
    /// prototypicality score.
    pub score_col: Option<String>,
    /// DBP allocation (`metric = "dbp"`).
    pub dbp: DbpParams,
    /// CCS (`metric = "ccs"`).
    pub ccs: CcsParams,
    /// kNN density (`metric = "knn"`).
    pub knn: KnnParams,
    /// External per-cluster weights for DBP's allocation instead of the
    /// complexity (PASER-style): a `.npy` vector of k values.
    pub cluster_weights: Option<PathBuf>,
    /// Folder for the temporary per-cluster files of SemDeDup and kNN and
    /// the kept-row prefetch [default: the system temporary folder].
    pub spill_dir: Option<PathBuf>,
    /// Pre-filter (`--where`, `where` in pipeline files): a SQL predicate
    /// over the inputs' columns; rows for which it is not true are removed
    /// before every other stage, as if the inputs held only the others
    /// (the k-means sample, `keep` and every stage see only those). Row
    /// groups whose statistics rule out a match are not read.
    #[serde(rename = "where")]
    pub where_sql: Option<String>,
}

impl Default for FilterParams {
    fn default() -> Self {
        FilterParams {
            keep: Budget::default(),
            metric: Metric::default(),
            prefer: Keep::default(),
            balance: Balance::default(),
            kmeans: KMeansParams::default(),
            centroids: None,
            assignments: None,
            seed: 0,
            drop_invalid: false,
            batch_rows: DEFAULT_BATCH_ROWS,
            exact_dedup: false,
            exact_key: None,
            dedup: DedupParams::default(),
            quality: None,
            keep_of: KeepOf::default(),
            score_col: None,
            dbp: DbpParams::default(),
            ccs: CcsParams::default(),
            knn: KnnParams::default(),
            cluster_weights: None,
            spill_dir: None,
            where_sql: None,
        }
    }
}

impl FilterParams {
    /// Checks values that do not depend on the data.
    pub fn validate(&self) -> Result<()> {
        self.keep.validate()?;
        self.kmeans.validate()?;
        if self.batch_rows == 0 {
            return Err(Error::param("--batch-rows", "must be at least 1"));
        }
        self.dedup.validate()?;
        if let Some(q) = &self.quality {
            q.validate()?;
        }
        self.dbp.validate()?;
        self.ccs.validate()?;
        self.knn.validate()?;
        // Flags a rule would silently ignore are errors.
        if self.prefer == Keep::Easy && matches!(self.metric, Metric::Semdedup | Metric::Moderate) {
            return Err(Error::param(
                "--keep-easy",
                format!(
                    "does not apply to --metric {}: it keeps {}",
                    self.metric,
                    if self.metric == Metric::Semdedup {
                        "the least redundant rows"
                    } else {
                        "the rows nearest their cluster's median distance"
                    }
                ),
            ));
        }
        if self.balance == Balance::Clusters && matches!(self.metric, Metric::Dbp | Metric::Moderate) {
            return Err(Error::param(
                "--balance",
                format!(
                    "clusters does not apply to --metric {}: it sets its own per-cluster quotas",
                    self.metric
                ),
            ));
        }
        if self.cluster_weights.is_some() && self.metric != Metric::Dbp {
            return Err(Error::param("--cluster-weights", "only applies with --metric dbp"));
        }
        if self.assignments.is_some() && self.centroids.is_none() {
            return Err(Error::param(
                "--assignments",
                "needs --centroids: rows are scored against their assigned cluster's centroid",
            ));
        }
        if self.exact_key.is_some() && !self.exact_dedup {
            return Err(Error::param("--exact-key", "only applies with --exact-dedup"));
        }
        if self.needs_spill() {
            check_distance(self.kmeans.distance)?;
        }
        if let Some(w) = &self.where_sql {
            if w.trim().is_empty() {
                return Err(Error::param("--where", "the predicate is empty"));
            }
            if !cfg!(feature = "datafusion") {
                return Err(Error::param(
                    "--where",
                    "this dprune was built without SQL support; rebuild with `--features datafusion`",
                ));
            }
        }
        Ok(())
    }

    /// Whether embeddings (and so k-means) are needed.
    fn needs_clusters(&self) -> bool {
        let by_metric = match self.metric {
            Metric::Random => false,
            Metric::Proto | Metric::Ccs => self.score_col.is_none(),
            Metric::Semdedup | Metric::Dbp | Metric::Moderate | Metric::Knn => true,
        };
        by_metric
            || self.balance == Balance::Clusters
            || self.runs_semdedup()
            || (self.exact_dedup && self.exact_key.is_none())
    }

    /// Whether the SemDeDup pass runs.
    fn runs_semdedup(&self) -> bool {
        self.metric == Metric::Semdedup || self.dedup.eps.is_some()
    }

    /// Whether rows are grouped by cluster on disk (SemDeDup, kNN).
    fn needs_spill(&self) -> bool {
        self.runs_semdedup() || self.metric == Metric::Knn
    }
}

/// Where the embeddings come from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum EmbeddingSpec {
    /// Detect the column (see [`ColumnSource::detect`](crate::io::embeddings::ColumnSource::detect)).
    #[default]
    Auto,
    /// This column.
    Column(String),
    /// `.npy` sidecars (paths or a glob), one per shard in order.
    Sidecars(Vec<String>),
    /// Encode a column on the fly (`--text-col`, with `--model` or the
    /// built-in hashed embedder), each row once thanks to the cache.
    Encode(EncoderSpec),
}

/// Where and how to write.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputSpec {
    /// Output folder (created if missing).
    pub dir: PathBuf,
    /// Replace files in a non-empty folder.
    pub overwrite: bool,
    /// Compute and report, write nothing.
    pub dry_run: bool,
    /// Append `dprune_cluster` and `dprune_score` to pruned shards.
    pub with_scores: bool,
    /// Write one scores table instead of pruned shards.
    pub scores_only: bool,
    /// Save the centroids to this `.npy`.
    pub save_centroids: Option<PathBuf>,
    /// Skip the PNG plot.
    pub no_plot: bool,
}

/// A complete `filter` job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Input paths or globs.
    pub inputs: Vec<String>,
    /// Embedding source.
    pub embeddings: EmbeddingSpec,
    /// Parameters.
    pub params: FilterParams,
    /// Output.
    pub output: OutputSpec,
    /// What runs the job in this process (ignored with `cluster`).
    pub engine: Engine,
    /// Run on this Ballista cluster (`df://host:port`, see `dprune cluster`)
    /// instead of in this process: the [`Engine::Sql`] plans.
    pub cluster: Option<String>,
}
