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
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::{Centroids, Distance, KMeans, KMeansParams};
use crate::embed::{EncoderSpec, TextSource};
use crate::io::embeddings::{ColumnSource, EmbeddingSource, NpySidecarSource};
use crate::io::writer::{ExtraColumn, ExtraValues, ScoreColumns, write_filtered, write_scores_table};
use crate::io::{Dataset, expand_inputs, npy};
use crate::pipeline::passes::{Rows, read_sample, score_rows};
use crate::pipeline::plot;
use crate::pipeline::progress::{Pass, Progress};
use crate::pipeline::report::{
    ClusterReport, HISTOGRAM_BINS, InputReport, InvalidReport, KMeansReport, REPORT_JSON, REPORT_PNG, Report,
    ScoreReport, histogram,
};
use crate::rng::Rng;
use crate::score::{Metric, random_score};
use crate::select::{Budget, Keep, proportional_quotas, select_per_cluster, select_top};
use crate::{Error, Result};

/// Rows per embedding batch in the sample and score passes.
pub const DEFAULT_BATCH_ROWS: usize = 8192;
/// Name of the scores table written by `scores_only`.
pub const SCORES_TABLE: &str = "scores.parquet";
/// Column added by `with_scores`: the row's cluster.
pub const CLUSTER_COLUMN: &str = "dprune_cluster";
/// Column added by `with_scores`: the row's score.
pub const SCORE_COLUMN: &str = "dprune_score";

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
        Ok(())
    }

    fn needs_clusters(&self) -> bool {
        self.metric == Metric::Proto || self.balance == Balance::Clusters
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

    let mut rows = Rows::new(n as usize);
    let mut invalid = InvalidReport::default();
    let mut source_desc = None;
    let mut dim = None;
    let mut kreport = None;
    let mut centroids_kept = None;

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
                let k = km.resolve_k(n);
                let m = km.resolve_sample(n, k);
                let sample_ids = Rng::for_stream(p.seed, 0).sample_indices(n, m);
                progress.begin(Pass::Sample, n);
                let sample = read_sample(&data, source.as_ref(), &sample_ids, p, &mut invalid, progress)?;
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
        progress.begin(Pass::Score, n);
        score_rows(&data, source.as_ref(), &centroids, p, &mut rows, &mut invalid, progress)?;
        progress.end();
        t.mark("score");
        if p.metric == Metric::Random {
            rows.scores
                .par_iter_mut()
                .enumerate()
                .for_each(|(i, s)| *s = random_score(p.seed, i as u64));
        }
        kreport = Some(kr);
        centroids_kept = Some(centroids);
    } else {
        rows.scores
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, s)| *s = random_score(p.seed, i as u64));
        t.mark("score");
    }

    // Select.
    let n_eligible = rows.valid.iter().filter(|&&v| v).count() as u64;
    if n_eligible == 0 {
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
    let budget = p.keep.resolve(n_eligible)?;
    if budget == 0 {
        warn(format!(
            "the budget rounds to 0 rows of {n_eligible}; nothing will be kept"
        ));
    }
    let k = centroids_kept.as_ref().map_or(0, |c| c.k());
    let kept = match p.balance {
        Balance::Clusters => {
            let mut sizes = vec![0u64; k];
            for (&l, &v) in rows.labels.iter().zip(&rows.valid) {
                if v {
                    sizes[l as usize] += 1;
                }
            }
            let q = proportional_quotas(&sizes, budget);
            select_per_cluster(&rows.scores, &rows.labels, &rows.valid, &q, p.prefer)
        }
        Balance::None => select_top(&rows.scores, &rows.valid, budget, p.prefer),
    };
    t.mark("select");

    // Report (before writing, so a dry run shows the same numbers).
    let mut report = build_report(cfg, &data, &rows, &kept, invalid, kreport, k);
    report.embedding_source = source_desc;
    report.dim = dim;
    if let Some(c) = &centroids_kept
        && k > 0
        && (n_eligible as f64) / (k as f64) < 2.0
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
                },
                &dest,
            )?;
            progress.advance(n);
            report.outputs.push(dest.display().to_string());
        } else {
            let labels_i32: Option<Vec<i32>> =
                (out.with_scores && centroids_kept.is_some()).then(|| rows.labels.iter().map(|&l| l as i32).collect());
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

/// Refuses to write into a non-empty folder without `overwrite`, and to
/// replace an input file in any case.
fn check_output(inputs: &[PathBuf], out: &OutputSpec) -> Result<()> {
    if out.dir.as_os_str().is_empty() {
        return Err(Error::param("--output", "no output folder given"));
    }
    if out.dir.exists() && !out.dir.is_dir() {
        return Err(Error::param(
            "--output",
            format!("{} exists and is not a folder", out.dir.display()),
        ));
    }
    let non_empty = out.dir.is_dir()
        && std::fs::read_dir(&out.dir)
            .map_err(|e| Error::io("reading", &out.dir, e))?
            .next()
            .is_some();
    if non_empty && !out.overwrite {
        return Err(Error::OutputExists { path: out.dir.clone() });
    }
    if let Some(c) = &out.save_centroids
        && c.exists()
        && !out.overwrite
    {
        return Err(Error::OutputExists { path: c.clone() });
    }
    // Same file names from different folders would overwrite each other.
    let mut names = std::collections::HashMap::new();
    for p in inputs {
        let name = p.file_name().unwrap_or_default().to_os_string();
        if let Some(prev) = names.insert(name.clone(), p)
            && !out.scores_only
        {
            {
                return Err(Error::param(
                    "inputs",
                    format!(
                        "{} and {} have the same file name; their pruned shards would collide in one output folder",
                        prev.display(),
                        p.display()
                    ),
                ));
            }
        }
    }
    let out_dir = canonical_dir(&out.dir);
    for p in inputs {
        let input = std::fs::canonicalize(p).map_err(|e| Error::io("reading", p, e))?;
        let dest = out_dir.join(p.file_name().unwrap_or_default());
        if !out.scores_only && dest == input {
            return Err(Error::OutputIsInput { path: dest });
        }
    }
    Ok(())
}

/// The canonical form of a folder that may not exist yet.
fn canonical_dir(dir: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(dir) {
        return c;
    }
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => canonical_dir(parent).join(name),
        _ => std::env::current_dir()
            .map(|c| c.join(dir))
            .unwrap_or_else(|_| dir.to_path_buf()),
    }
}

fn open_source(data: &Dataset, spec: &EmbeddingSpec) -> Result<Box<dyn EmbeddingSource>> {
    Ok(match spec {
        EmbeddingSpec::Auto => Box::new(ColumnSource::detect(data, None)?),
        EmbeddingSpec::Column(c) => Box::new(ColumnSource::detect(data, Some(c))?),
        EmbeddingSpec::Sidecars(pats) => {
            let files = expand_inputs(pats)?;
            Box::new(NpySidecarSource::open(data, &files)?)
        }
        EmbeddingSpec::Encode(spec) => Box::new(TextSource::open(data, spec)?),
    })
}

fn load_centroids(path: &Path, dim: usize, distance: Distance) -> Result<(Centroids, KMeansReport)> {
    let (data, k, d) = npy::read_matrix(path)?;
    if d != dim {
        return Err(Error::Dimension {
            path: path.to_path_buf(),
            row: None,
            expected: dim,
            found: d,
        });
    }
    let c = Centroids::try_new(data, d, distance).map_err(|e| Error::Npy {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let kr = KMeansReport {
        k,
        source: path.display().to_string(),
        train_rows: 0,
        iterations: 0,
        converged: false,
        inertia: None,
        inertia_history: vec![],
        reseeded_empty: 0,
        saved_to: None,
    };
    Ok((c, kr))
}

fn build_report(
    cfg: &FilterConfig,
    data: &Dataset,
    rows: &Rows,
    kept: &[bool],
    invalid: InvalidReport,
    kmeans: Option<KMeansReport>,
    k: usize,
) -> Report {
    let p = &cfg.params;
    let inputs = data
        .shards
        .iter()
        .map(|s| {
            let r = data.offset(s.index) as usize..data.offset(s.index + 1) as usize;
            InputReport {
                path: s.path.display().to_string(),
                rows: s.num_rows,
                kept: kept[r.clone()].iter().filter(|&&k| k).count() as u64,
                invalid: rows.valid[r].iter().filter(|&&v| !v).count() as u64,
                output: None,
            }
        })
        .collect();
    let mut clusters: Vec<ClusterReport> = (0..k as u32)
        .map(|id| ClusterReport {
            id,
            size: 0,
            kept: 0,
            mean_score: 0.0,
        })
        .collect();
    let mut sums = vec![0f64; k];
    if k > 0 {
        for (i, _) in rows.valid.iter().enumerate().filter(|(_, v)| **v) {
            let c = rows.labels[i] as usize;
            clusters[c].size += 1;
            clusters[c].kept += kept[i] as u64;
            sums[c] += rows.scores[i] as f64;
        }
        for (c, s) in clusters.iter_mut().zip(&sums) {
            c.mean_score = if c.size > 0 {
                (s / c.size as f64) as f32
            } else {
                f32::NAN
            };
        }
    }
    let n_kept = kept.iter().filter(|&&k| k).count() as u64;
    let mut valid_scores: Vec<f32> = rows
        .scores
        .iter()
        .zip(&rows.valid)
        .filter(|(_, v)| **v)
        .map(|(s, _)| *s)
        .collect();
    valid_scores.par_sort_unstable_by(|a, b| a.total_cmp(b));
    let q = |f: f64| valid_scores[((valid_scores.len() - 1) as f64 * f).round() as usize];
    let quantiles = [0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0]
        .iter()
        .map(|&f| (format!("{f}"), q(f)))
        .collect();
    let threshold = (p.balance == Balance::None && n_kept > 0).then(|| {
        let it = rows.scores.iter().zip(kept).filter(|(_, k)| **k).map(|(s, _)| *s);
        match p.prefer {
            Keep::Hard => it.fold(f32::INFINITY, f32::min),
            Keep::Easy => it.fold(f32::NEG_INFINITY, f32::max),
        }
    });
    let mean = valid_scores.iter().map(|&v| v as f64).sum::<f64>() / valid_scores.len() as f64;
    let scores = ScoreReport {
        metric: p.metric.to_string(),
        min: valid_scores[0],
        max: *valid_scores.last().expect("n_eligible > 0"),
        mean,
        quantiles,
        threshold,
        histogram: histogram(&rows.scores, &rows.valid, kept, HISTOGRAM_BINS),
    };
    Report {
        dprune_version: env!("CARGO_PKG_VERSION").into(),
        command: "filter".into(),
        dry_run: cfg.output.dry_run,
        inputs,
        embedding_source: None,
        dim: None,
        n_rows: data.num_rows(),
        n_eligible: rows.valid.iter().filter(|&&v| v).count() as u64,
        invalid,
        n_kept,
        params: p.clone(),
        seed: p.seed,
        kmeans,
        clusters,
        scores: Some(scores),
        outputs: vec![],
        timings_s: BTreeMap::new(),
        warnings: vec![],
    }
}
