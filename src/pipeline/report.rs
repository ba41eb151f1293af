//! The run report: everything needed to understand, reproduce and audit a
//! run, written as `_dprune_report.json` next to the outputs (and printed
//! by `--dry-run`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::io::AtomicFile;
use crate::pipeline::filter::FilterParams;
use crate::pipeline::stages::{SemDedupReport, StageReport};
use crate::{Error, Result};

/// Name of the JSON report inside the output folder.
pub const REPORT_JSON: &str = "_dprune_report.json";
/// Name of the PNG plot inside the output folder.
pub const REPORT_PNG: &str = "_dprune_report.png";
/// Bins of the score histograms.
pub const HISTOGRAM_BINS: usize = 50;

/// One input shard's numbers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputReport {
    /// The file.
    pub path: String,
    /// Rows read.
    pub rows: u64,
    /// Rows kept.
    pub kept: u64,
    /// Rows excluded because their embedding was unusable.
    pub invalid: u64,
    /// The written file, if any.
    pub output: Option<String>,
}

/// The k-means fit (or loaded centroids).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KMeansReport {
    /// Clusters.
    pub k: usize,
    /// `fit` or the centroids file they were loaded from.
    pub source: String,
    /// Training rows (0 when loaded).
    pub train_rows: u64,
    /// Lloyd iterations run.
    pub iterations: usize,
    /// Whether the tolerance was reached.
    pub converged: bool,
    /// Final inertia on the training rows (sum of squared L2 distances).
    pub inertia: Option<f64>,
    /// Inertia per iteration.
    pub inertia_history: Vec<f64>,
    /// Training rows searched against every centroid, per iteration (the
    /// others kept their cluster by the drift bound, with the same result).
    #[serde(default)]
    pub searched_history: Vec<u64>,
    /// Empty clusters re-seeded during the fit.
    pub reseeded_empty: usize,
    /// Where the centroids were saved, if asked.
    pub saved_to: Option<String>,
}

/// Size and kept count of one cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterReport {
    /// Cluster id.
    pub id: u32,
    /// Usable rows in the cluster.
    pub size: u64,
    /// Rows kept.
    pub kept: u64,
    /// Mean score of the cluster's rows.
    pub mean_score: f32,
    /// DBP complexity (d_intra · d_inter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complexity: Option<f64>,
    /// DBP share of the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// DBP quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
}

/// A histogram over `[lo, hi]` with equal-width bins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Histogram {
    /// Lower edge.
    pub lo: f32,
    /// Upper edge.
    pub hi: f32,
    /// Counts of all usable rows per bin.
    pub all: Vec<u64>,
    /// Counts of kept rows per bin.
    pub kept: Vec<u64>,
}

/// Summary of the scores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScoreReport {
    /// The metric.
    pub metric: String,
    /// Smallest, largest and mean score of usable rows.
    pub min: f32,
    /// Largest score.
    pub max: f32,
    /// Mean score.
    pub mean: f64,
    /// Quantiles (0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1).
    pub quantiles: BTreeMap<String, f32>,
    /// The score of the last row kept at the boundary (global selection).
    pub threshold: Option<f32>,
    /// Histograms of all and kept rows.
    pub histogram: Histogram,
}

/// The `--where` pre-filter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WhereReport {
    /// The SQL predicate.
    pub predicate: String,
    /// Rows in all inputs.
    pub rows_in: u64,
    /// Rows for which the predicate is true.
    pub rows_out: u64,
    /// Row groups in all inputs.
    pub row_groups: u64,
    /// Row groups skipped by their statistics (predicate pushdown), never read.
    pub row_groups_skipped: u64,
}

/// The kept-row prefetch of a run ([`crate::pipeline::prefetch`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Rows whose embeddings the score pass copied.
    pub rows: u64,
    /// Whether they held every kept row, so the write pass used them.
    pub used: bool,
}

/// Counts of unusable embeddings by kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InvalidReport {
    /// Null embeddings (or null elements).
    pub null: u64,
    /// NaN or infinite elements.
    pub not_finite: u64,
    /// All-zero vectors.
    pub zero: u64,
}

impl InvalidReport {
    /// All unusable rows.
    pub fn total(&self) -> u64 {
        self.null + self.not_finite + self.zero
    }
}

/// The full report of a `filter` run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// dprune's version.
    pub dprune_version: String,
    /// The command (`filter`).
    pub command: String,
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// Per input shard.
    pub inputs: Vec<InputReport>,
    /// Where embeddings came from.
    pub embedding_source: Option<String>,
    /// Embedding dimension.
    pub dim: Option<usize>,
    /// Rows in all inputs.
    pub n_rows: u64,
    /// Rows with a usable embedding (the N of the budget), after `--where`.
    pub n_eligible: u64,
    /// The `--where` pre-filter, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefilter: Option<WhereReport>,
    /// Unusable rows, excluded with `drop_invalid`.
    pub invalid: InvalidReport,
    /// Rows kept.
    pub n_kept: u64,
    /// The parameters, as resolved.
    pub params: FilterParams,
    /// The seed.
    pub seed: u64,
    /// The clustering, when one was used.
    pub kmeans: Option<KMeansReport>,
    /// Per cluster.
    pub clusters: Vec<ClusterReport>,
    /// Scores.
    pub scores: Option<ScoreReport>,
    /// Rows in, removed and left by every stage, in order (`where` first when
    /// given; the last is the budget).
    #[serde(default)]
    pub stages: Vec<StageReport>,
    /// The SemDeDup pass, when it ran.
    #[serde(default)]
    pub semdedup: Option<SemDedupReport>,
    /// The kept-row prefetch, when the run made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<PrefetchReport>,
    /// Output folder and files (empty for a dry run).
    pub outputs: Vec<String>,
    /// Seconds per pass and in total.
    pub timings_s: BTreeMap<String, f64>,
    /// Warnings raised during the run.
    pub warnings: Vec<String>,
}

impl Report {
    /// Writes the report as pretty JSON (atomically).
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let atomic = AtomicFile::new(path)?;
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Internal(format!("report JSON: {e}")))?;
        std::fs::write(atomic.tmp_path(), text + "\n").map_err(|e| Error::io("writing", path, e))?;
        atomic.commit()
    }

    /// Reads a report written by [`Report::write_json`].
    pub fn read_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// A histogram of `values` (where `use_row` is true), and of those also `kept`.
pub fn histogram(values: &[f32], use_row: &[bool], kept: &[bool], bins: usize) -> Histogram {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for (v, &u) in values.iter().zip(use_row) {
        if u {
            lo = lo.min(*v);
            hi = hi.max(*v);
        }
    }
    if lo > hi {
        return Histogram {
            lo: 0.0,
            hi: 0.0,
            all: vec![0; bins],
            kept: vec![0; bins],
        };
    }
    let width = ((hi - lo) / bins as f32).max(f32::MIN_POSITIVE);
    let mut all = vec![0u64; bins];
    let mut kb = vec![0u64; bins];
    for ((v, &u), &k) in values.iter().zip(use_row).zip(kept) {
        if u {
            let b = (((v - lo) / width) as usize).min(bins - 1);
            all[b] += 1;
            if k {
                kb[b] += 1;
            }
        }
    }
    Histogram { lo, hi, all, kept: kb }
}
