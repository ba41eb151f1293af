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

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::{KMeans, KMeansParams};
use crate::embed::EncoderSpec;
use crate::io::writer::{ExtraColumn, ExtraValues, ScoreColumns, write_filtered, write_scores_table};
use crate::io::{Dataset, columns, expand_inputs, npy};
use crate::pipeline::budget::{Ranking, choose};
use crate::pipeline::passes::{Rows, Spills, read_sample, score_rows};
use crate::pipeline::plot;
use crate::pipeline::progress::{Pass, Progress};
use crate::pipeline::report::{InvalidReport, KMeansReport, REPORT_JSON, REPORT_PNG, Report};
use crate::pipeline::spill::{ClusterSpill, partitions_for};
use crate::pipeline::stages::{
    DedupParams, GlobalPass, KeepOf, KnnParams, QualityParams, StageReport, check_distance, exact_dedup, knn_spilled,
    quality_drop, remove,
};
use crate::rng::Rng;
use crate::score::semdedup::hash_bytes;
use crate::score::{Metric, random_score};
use crate::select::dbp::DbpParams;
use crate::select::robust::CcsParams;
use crate::select::{Budget, Keep};
use crate::{Error, Result};

mod checks;
mod dedup;
mod prefilter;
mod sources;
mod summary;

use checks::check_output;
use dedup::run_semdedup;
use sources::{load_centroids, open_source};
use summary::build_report;

/// Rows per embedding batch in the sample and score passes.
pub const DEFAULT_BATCH_ROWS: usize = 8192;
/// Name of the scores table written by `scores_only`.
pub const SCORES_TABLE: &str = "scores.parquet";
/// Column added by `with_scores`: the row's cluster.
pub const CLUSTER_COLUMN: &str = "dprune_cluster";
/// Column added by `with_scores`: the row's score.
pub const SCORE_COLUMN: &str = "dprune_score";
/// Column added by `with_scores` after SemDeDup: M, the row's largest
/// cosine with an earlier-ranked row of its cluster (1 for exact duplicates).
pub const MAX_SIM_COLUMN: &str = "dprune_max_sim";
/// Column added by `with_scores` after a de-duplication stage: the global
/// row id (row index over the inputs in order) of the row this one
/// duplicates, or null.
pub const DUP_OF_COLUMN: &str = "dprune_dup_of";

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
    /// Folder for the temporary per-cluster files of SemDeDup and kNN
    /// [default: the system temporary folder].
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
    /// Detect the column (see [`ColumnSource::detect`]).
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
}

/// Wall-clock timer per pass.
struct Timings {
    start: Instant,
    last: Instant,
    map: BTreeMap<String, f64>,
}

impl Timings {
    fn new() -> Self {
        let now = Instant::now();
        Timings {
            start: now,
            last: now,
            map: BTreeMap::new(),
        }
    }
    fn mark(&mut self, name: &str) {
        let now = Instant::now();
        *self.map.entry(name.to_string()).or_default() += (now - self.last).as_secs_f64();
        self.last = now;
    }
    fn finish(mut self) -> BTreeMap<String, f64> {
        self.map.insert("total".into(), self.start.elapsed().as_secs_f64());
        self.map.values_mut().for_each(|v| *v = (*v * 1000.0).round() / 1000.0);
        self.map
    }
}

/// Runs a `filter` job; returns its report (also written unless `dry_run`).
pub fn run_filter(cfg: &FilterConfig, progress: &dyn Progress) -> Result<Report> {
    let mut t = Timings::new();
    let p = &cfg.params;
    p.validate()?;
    let out = &cfg.output;
    if out.scores_only && out.with_scores {
        return Err(Error::param("--with-scores", "cannot be combined with --scores-only"));
    }
    let paths = expand_inputs(&cfg.inputs)?;
    if !out.dry_run {
        check_output(&paths, out)?;
    }
    let data = Dataset::open(&paths)?;
    let n = data.num_rows();
    if n == 0 {
        return Err(Error::Empty(format!("the {} input file(s) hold no rows", paths.len())));
    }
    if n > u32::MAX as u64 {
        return Err(Error::param(
            "inputs",
            format!("{n} rows; one run handles at most {} rows", u32::MAX),
        ));
    }
    let mut warnings = Vec::new();
    let mut warn = |m: String| {
        progress.warn(&m);
        warnings.push(m);
    };
    t.mark("plan");

    // `--where` first: every later pass sees only the rows it keeps.
    let prefilter = match &p.where_sql {
        Some(w) => {
            let (keep, r) = prefilter::apply(&data, w, p.batch_rows)?;
            if r.rows_out == 0 {
                return Err(Error::Empty(format!(
                    "--where `{w}` holds for none of the {n} input rows"
                )));
            }
            t.mark("where");
            Some((keep, r))
        }
        None => None,
    };
    let only = prefilter.as_ref().map(|(k, _)| &k[..]);
    let n_pass = prefilter.as_ref().map_or(n, |(_, r)| r.rows_out);

    let mut rows = Rows::new(n as usize);
    if let Some(keep) = only {
        rows.valid.copy_from_slice(keep);
    }
    let mut invalid = InvalidReport::default();
    let mut source_desc = None;
    let mut dim = None;
    let mut kreport = None;
    let mut centroids_kept = None;

    let mut spilled = None;
    let mut guest_spill = None;
    if p.needs_clusters() {
        let source = open_source(&data, &cfg.embeddings)?;
        let d = source.dim();
        source_desc = Some(source.describe());
        dim = Some(d);
        let (centroids, kr) = match &p.centroids {
            Some(path) => load_centroids(path, d, p.kmeans.distance)?,
            None => {
                let km = KMeansParams {
                    seed: p.seed,
                    ..p.kmeans.clone()
                };
                let k = km.resolve_k(n_pass);
                let m = km.resolve_sample(n_pass, k);
                let mut sample_ids = Rng::for_stream(p.seed, 0).sample_indices(n_pass, m);
                if let Some(keep) = only {
                    // The sample is drawn among the rows `--where` keeps: the i-th of them.
                    let ids: Vec<u64> = (0..n).filter(|&g| keep[g as usize]).collect();
                    sample_ids.iter_mut().for_each(|s| *s = ids[*s as usize]);
                }
                progress.begin(Pass::Sample, n);
                let sample = read_sample(&data, source.as_ref(), &sample_ids, only, p, &mut invalid, progress)?;
                progress.end();
                t.mark("sample");
                let train = sample.len() / d;
                if train < k {
                    return Err(Error::param(
                        "--k",
                        format!(
                            "cannot train {k} centroids with {train} usable rows; choose a smaller --k or a larger --sample"
                        ),
                    ));
                }
                progress.begin(Pass::KMeans, km.max_iters as u64);
                let fit = KMeans::fit(&sample, d, &KMeansParams { k: Some(k), ..km }, &mut |_| {
                    progress.advance(1)
                })?;
                progress.end();
                t.mark("kmeans");
                let kr = KMeansReport {
                    k,
                    source: "fit".into(),
                    train_rows: train as u64,
                    iterations: fit.iterations,
                    converged: fit.converged,
                    inertia: Some(fit.inertia()),
                    inertia_history: fit.inertia_history.clone(),
                    reseeded_empty: fit.reseeded,
                    saved_to: None,
                };
                (fit.centroids, kr)
            }
        };
        invalid = InvalidReport::default(); // the score pass recounts every row
        if p.exact_dedup && p.exact_key.is_none() {
            rows.hashes = vec![None; n as usize];
        }
        let parts = partitions_for(n, d, centroids.k());
        let spill = if p.needs_spill() {
            Some(ClusterSpill::create(p.spill_dir.as_deref(), d, parts)?)
        } else {
            None
        };
        let guests = if p.dedup.eps.is_some() && p.dedup.global == GlobalPass::SecondCluster {
            Some(ClusterSpill::create(p.spill_dir.as_deref(), d, parts)?)
        } else {
            None
        };
        progress.begin(Pass::Score, n);
        score_rows(
            &data,
            source.as_ref(),
            &centroids,
            p,
            &mut rows,
            Spills {
                owners: spill.as_ref(),
                guests: guests.as_ref(),
            },
            &mut invalid,
            progress,
        )?;
        progress.end();
        spilled = spill.map(ClusterSpill::finish).transpose()?;
        guest_spill = guests.map(ClusterSpill::finish).transpose()?;
        t.mark("score");
        kreport = Some(kr);
        centroids_kept = Some(centroids);
    }
    // The prototypicality score doubles as the distance to the centroid (DBP, Moderate).
    let dist = rows.scores.clone();
    if p.metric == Metric::Random {
        rows.scores
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, s)| *s = random_score(p.seed, i as u64));
    }

    let n_usable = rows.valid.iter().filter(|&&v| v).count() as u64;
    if n_usable == 0 {
        return Err(Error::Empty(format!(
            "all {n} rows have unusable embeddings; nothing to select from"
        )));
    }
    if invalid.total() > 0 {
        warn(format!(
            "{} rows with unusable embeddings were excluded ({} null, {} not finite, {} all zeros)",
            invalid.total(),
            invalid.null,
            invalid.not_finite,
            invalid.zero
        ));
    }

    // Removal stages: each narrows `eligible`.
    let mut eligible = rows.valid.clone();
    let mut stages = Vec::new();
    if let Some((_, r)) = &prefilter {
        stages.push(StageReport {
            name: "where".into(),
            rows_in: n,
            removed: n - r.rows_out,
            rows_out: r.rows_out,
        });
    }
    let mut stage = |name: &str, eligible: &[bool], removed: u64| {
        let left = eligible.iter().filter(|&&e| e).count() as u64;
        stages.push(StageReport {
            name: name.into(),
            rows_in: left + removed,
            removed,
            rows_out: left,
        });
    };
    let mut dup_of: Vec<Option<u32>> = Vec::new();
    if p.exact_dedup {
        let hashes = match &p.exact_key {
            Some(col) => columns::map_keys(&data, col, hash_bytes)?,
            None => std::mem::take(&mut rows.hashes),
        };
        dup_of = exact_dedup(&hashes, &eligible);
        let removed = remove(&mut eligible, |i| dup_of[i].is_some());
        stage("exact_dedup", &eligible, removed);
        t.mark("exact_dedup");
    }
    let mut max_sim: Option<Vec<f32>> = None;
    let mut sd_report = None;
    if let (Some(sp), Some(c)) = (&spilled, &centroids_kept)
        && p.runs_semdedup()
    {
        let out = run_semdedup(
            p,
            &rows,
            &mut eligible,
            sp,
            guest_spill.as_ref(),
            c,
            &dup_of,
            &mut stage,
            &mut warn,
            progress,
        )?;
        dup_of = out.dup_of;
        max_sim = Some(out.max_sim);
        sd_report = Some(out.report);
        t.mark("semdedup");
    }
    let mut knn = None;
    if let (Some(sp), Some(c), Metric::Knn) = (&spilled, &centroids_kept, p.metric) {
        progress.begin(Pass::Knn, sp.rows);
        knn = Some(knn_spilled(
            sp,
            &rows.labels,
            &eligible,
            c.dim(),
            p.knn.neighbors,
            &|m| progress.advance(m),
        )?);
        progress.end();
        t.mark("knn");
    }
    drop(spilled);
    drop(guest_spill);
    if let Some(q) = &p.quality {
        let values = columns::read_f64_column(&data, &q.column)?;
        let nan = values.iter().zip(&eligible).filter(|(v, e)| **e && v.is_nan()).count();
        if nan > 0 {
            warn(format!(
                "{nan} rows have a null or NaN `{}` and were dropped by the quality stage",
                q.column
            ));
        }
        let drop = quality_drop(&values, &eligible, q.drop_below_percentile);
        let removed = remove(&mut eligible, |i| drop[i]);
        stage("quality", &eligible, removed);
        t.mark("quality");
    }
    if let Some(col) = &p.score_col {
        let values = columns::read_f64_column(&data, col)?;
        let nan = remove(&mut eligible, |i| values[i].is_nan());
        if nan > 0 {
            warn(format!(
                "{nan} rows have a null or NaN `{col}` and cannot be ranked; they are not kept"
            ));
        }
        rows.scores.iter_mut().zip(&values).for_each(|(s, &v)| *s = v as f32);
    }

    // Final stage: the budget.
    let n_left = eligible.iter().filter(|&&e| e).count() as u64;
    let base = match p.keep_of {
        KeepOf::Input => n_usable,
        KeepOf::Stage => n_left,
    };
    let mut budget = p.keep.resolve(base)?;
    if budget > n_left {
        warn(format!(
            "the budget of {budget} rows is more than the {n_left} rows left after the removal stages; keeping all {n_left}"
        ));
        budget = n_left;
    }
    if budget == 0 {
        warn(format!("the budget rounds to 0 rows of {base}; nothing will be kept"));
    }
    let chosen = choose(
        p,
        &Ranking {
            scores: &rows.scores,
            labels: &rows.labels,
            dist: &dist,
            eligible: &eligible,
            centroids: centroids_kept.as_ref(),
            max_sim: max_sim.as_deref(),
            knn: knn.as_deref(),
        },
        budget,
    )?;
    let kept = chosen.kept;
    stage(&p.metric.to_string(), &kept, n_left - budget);
    if p.metric == Metric::Semdedup {
        rows.scores = max_sim.clone().expect("semdedup ran");
    } else if let Some(sh) = chosen.shown_scores {
        rows.scores = sh;
    }
    let k = centroids_kept.as_ref().map_or(0, |c| c.k());
    t.mark("select");

    // Report (before writing, so a dry run shows the same numbers).
    let mut report = build_report(cfg, &data, &rows, &kept, invalid, kreport, k);
    report.embedding_source = source_desc;
    report.dim = dim;
    report.stages = stages;
    report.semdedup = sd_report;
    if let Some((keep, r)) = prefilter {
        // Rows removed by `--where` are not "invalid" rows of their input.
        for (s, input) in data.shards.iter().zip(report.inputs.iter_mut()) {
            let range = data.offset(s.index) as usize..data.offset(s.index + 1) as usize;
            input.invalid -= keep[range].iter().filter(|&&k| !k).count() as u64;
        }
        report.prefilter = Some(r);
    }
    if let Some(plan) = &chosen.dbp {
        for (j, c) in report.clusters.iter_mut().enumerate() {
            c.complexity = plan.complexity.as_ref().map(|cx| cx.value[j]);
            c.share = Some(plan.shares[j]);
            c.quota = Some(plan.allocation.quotas[j]);
        }
    }
    if let Some(c) = &centroids_kept
        && k > 0
        && (n_usable as f64) / (k as f64) < 2.0
    {
        warn(format!(
            "k = {} leaves fewer than 2 rows per cluster on average; choose a smaller --k",
            c.k()
        ));
    }

    if !out.dry_run {
        std::fs::create_dir_all(&out.dir).map_err(|e| Error::io("creating", &out.dir, e))?;
        progress.begin(Pass::Write, n);
        if out.scores_only {
            let cl: Option<Vec<i32>> = centroids_kept
                .as_ref()
                .map(|_| rows.labels.iter().map(|&l| l as i32).collect());
            let dest = out.dir.join(SCORES_TABLE);
            write_scores_table(
                &data,
                &ScoreColumns {
                    cluster: cl.as_deref(),
                    score: &rows.scores,
                    kept: &kept,
                    valid: &rows.valid,
                    max_sim: max_sim.as_deref(),
                    dup_of: (!dup_of.is_empty()).then_some(&dup_of[..]),
                },
                &dest,
            )?;
            progress.advance(n);
            report.outputs.push(dest.display().to_string());
        } else {
            let labels_i32: Option<Vec<i32>> =
                (out.with_scores && centroids_kept.is_some()).then(|| rows.labels.iter().map(|&l| l as i32).collect());
            let dup_i64: Option<(Vec<i64>, Vec<bool>)> = (out.with_scores && !dup_of.is_empty()).then(|| {
                (
                    dup_of.iter().map(|d| d.map_or(-1, |v| v as i64)).collect(),
                    dup_of.iter().map(Option::is_some).collect(),
                )
            });
            let sim_valid: Option<Vec<bool>> = max_sim
                .as_ref()
                .map(|m| m.iter().zip(&rows.valid).map(|(v, &ok)| ok && !v.is_nan()).collect());
            let written: Vec<Result<(usize, PathBuf)>> = data
                .shards
                .par_iter()
                .map(|s| {
                    let r = data.offset(s.index) as usize..data.offset(s.index + 1) as usize;
                    let mut extra = Vec::new();
                    if out.with_scores {
                        if let Some(l) = &labels_i32 {
                            extra.push(ExtraColumn {
                                name: CLUSTER_COLUMN,
                                values: ExtraValues::I32(&l[r.clone()]),
                                valid: Some(&rows.valid[r.clone()]),
                            });
                        }
                        extra.push(ExtraColumn {
                            name: SCORE_COLUMN,
                            values: ExtraValues::F32(&rows.scores[r.clone()]),
                            valid: Some(&rows.valid[r.clone()]),
                        });
                        if let (Some(m), Some(v)) = (&max_sim, &sim_valid) {
                            extra.push(ExtraColumn {
                                name: MAX_SIM_COLUMN,
                                values: ExtraValues::F32(&m[r.clone()]),
                                valid: Some(&v[r.clone()]),
                            });
                        }
                        if let Some((d, v)) = &dup_i64 {
                            extra.push(ExtraColumn {
                                name: DUP_OF_COLUMN,
                                values: ExtraValues::I64(&d[r.clone()]),
                                valid: Some(&v[r.clone()]),
                            });
                        }
                    }
                    let dest = out.dir.join(s.path.file_name().expect("input files have names"));
                    write_filtered(s, &kept[r], &extra, &dest, &|m| progress.advance(m))?;
                    Ok((s.index, dest))
                })
                .collect();
            for w in written {
                let (i, dest) = w?;
                report.inputs[i].output = Some(dest.display().to_string());
                report.outputs.push(dest.display().to_string());
            }
        }
        progress.end();
        if let (Some(path), Some(c)) = (&out.save_centroids, &centroids_kept) {
            npy::write_matrix(path, c.as_slice(), c.k(), c.dim())?;
            if let Some(kr) = report.kmeans.as_mut() {
                kr.saved_to = Some(path.display().to_string());
            }
        }
        t.mark("write");
    }
    report.warnings = warnings;
    report.timings_s = t.finish();
    if !out.dry_run {
        if !out.no_plot {
            let png = out.dir.join(REPORT_PNG);
            plot::write_report_png(&report, &png)?;
            report.outputs.push(png.display().to_string());
        }
        let json = out.dir.join(REPORT_JSON);
        report.outputs.push(json.display().to_string());
        report.write_json(&json)?;
    }
    Ok(report)
}
