//! The `filter` driver: runs the passes in order (plan, `--where`, sample,
//! k-means, score, removal stages, budget, report, write) and times each.
//! See the parent module for what every pass does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::checks::check_output;
use super::dedup::run_semdedup;
use super::sources::{load_centroids, open_source};
use super::summary::build_report;
use super::{Balance, FilterConfig, FilterParams, OutputSpec, prefilter, write};
use crate::cluster::{Centroids, Distance, KMeans, KMeansParams};
use crate::io::embeddings::EmbeddingSource;
use crate::io::{Dataset, columns, expand_inputs};
use crate::pipeline::budget::{Ranking, choose};
use crate::pipeline::passes::{Rows, Spills, TrainedRows, read_sample, score_rows};
use crate::pipeline::plot;
use crate::pipeline::prefetch::{KeptPrefetch, prefetch_threshold};
use crate::pipeline::progress::{Pass, Progress};
use crate::pipeline::report::{InvalidReport, KMeansReport, PrefetchReport, REPORT_JSON, REPORT_PNG, Report};
use crate::pipeline::spill::{ClusterSpill, DropBehind, cluster_layout, partitions_for};
use crate::pipeline::stages::{GlobalPass, KeepOf, StageReport, exact_dedup, knn_spilled, quality_drop, remove};
use crate::rng::Rng;
use crate::score::semdedup::hash_bytes;
use crate::score::{Metric, random_score};
use crate::select::Keep;
use crate::{Error, Result};
use arrow::datatypes::DataType;

/// Wall-clock timer per pass.
pub(super) struct Timings {
    start: Instant,
    last: Instant,
    map: BTreeMap<String, f64>,
}

impl Timings {
    pub(super) fn new() -> Self {
        let now = Instant::now();
        Timings {
            start: now,
            last: now,
            map: BTreeMap::new(),
        }
    }
    pub(super) fn mark(&mut self, name: &str) {
        let now = Instant::now();
        *self.map.entry(name.to_string()).or_default() += (now - self.last).as_secs_f64();
        self.last = now;
    }
    pub(super) fn finish(mut self) -> BTreeMap<String, f64> {
        self.map.insert("total".into(), self.start.elapsed().as_secs_f64());
        self.map.values_mut().for_each(|v| *v = (*v * 1000.0).round() / 1000.0);
        self.map
    }
}

/// Runs a `filter` job; returns its report (also written unless `dry_run`).
pub fn run_filter(cfg: &FilterConfig, progress: &dyn Progress) -> Result<Report> {
    if cfg.cluster.is_some() || cfg.engine == super::Engine::Sql {
        #[cfg(feature = "datafusion")]
        return super::run_filter_sql(cfg, progress);
        #[cfg(not(feature = "datafusion"))]
        return Err(Error::param(
            "--engine",
            "sql (and --cluster): this dprune was built without the `datafusion` feature",
        ));
    }
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
    let mut prefetch = None;
    if p.needs_clusters() {
        let source = open_source(&data, &cfg.embeddings)?;
        let d = source.dim();
        source_desc = Some(source.describe());
        dim = Some(d);
        let (centroids, kr, trained) =
            fit_or_load(&data, source.as_ref(), p, only, n_pass, &mut invalid, progress, &mut t)?;
        if let Some(path) = &p.assignments {
            rows.labels = load_assignments(path, n, centroids.k())?;
        }
        // The sample pass checked every row: the usable ones are known.
        let n_usable = n_pass - invalid.total();
        invalid = InvalidReport::default(); // the score pass recounts every row
        if p.exact_dedup && p.exact_key.is_none() {
            rows.hashes = vec![None; n as usize];
        }
        let parts = partitions_for(n, d, centroids.k());
        let cross = p.dedup.eps.is_some() && p.dedup.global == GlobalPass::SecondCluster;
        // Neighbouring clusters share a partition, so the cross pass finds most rows of
        // a cluster's boundary already there (sizes from the k-means sample's labels).
        let layout: Option<Arc<[u32]>> = (p.needs_spill() && cross).then(|| {
            let sizes = trained.as_ref().map(|t| {
                let mut s = vec![0u64; centroids.k()];
                t.labels.iter().for_each(|&l| s[l as usize] += 1);
                s
            });
            cluster_layout(&centroids, sizes.as_deref(), parts).into()
        });
        let create = |dir| match &layout {
            Some(l) => ClusterSpill::create_with_layout(dir, d, parts, l.clone()),
            None => ClusterSpill::create(dir, d, parts),
        };
        let spill = if p.needs_spill() {
            Some(create(p.spill_dir.as_deref())?)
        } else {
            None
        };
        let guests = if cross {
            Some(create(p.spill_dir.as_deref())?)
        } else {
            None
        };
        prefetch = match plan_prefetch(cfg, &data, source.as_ref(), trained.as_ref(), n_usable) {
            Ok(kp) => kp,
            // Only a speed-up: without its folder the shards are read again to write them.
            Err(e) => {
                warn(format!("kept-row prefetch off: {e}"));
                None
            }
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
                kept: prefetch.as_ref(),
            },
            trained.as_ref(),
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
    // Removed on a thread of their own while the run goes on (gone when it returns).
    let _spills_removed = DropBehind::new((spilled, guest_spill));
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

    if let Some(e) = prefetch.as_ref().and_then(KeptPrefetch::failure) {
        warn(format!("kept-row prefetch off: {e}"));
    }
    // The prefetched copies serve the write only if they hold every kept row.
    let prefetch = prefetch.filter(|kp| {
        let by_shard: Vec<&[bool]> = data
            .shards
            .iter()
            .map(|s| &kept[data.offset(s.index) as usize..data.offset(s.index + 1) as usize])
            .collect();
        let used = kp.covers(&by_shard);
        report.prefetch = Some(PrefetchReport {
            rows: kp.copied(),
            used,
        });
        used
    });
    if !out.dry_run {
        write::write_outputs(
            &data,
            out,
            &write::Selection {
                rows: &rows,
                kept: &kept,
                centroids: centroids_kept.as_ref(),
                max_sim: max_sim.as_deref(),
                dup_of: &dup_of,
                prefetch: prefetch.as_ref(),
            },
            &mut report,
            progress,
        )?;
        t.mark("write");
    }
    report.warnings = warnings;
    report.timings_s = t.finish();
    write_report_files(out, &mut report)?;
    Ok(report)
}

/// The kept-row prefetch of this run ([`crate::pipeline::prefetch`]), if it
/// applies: a plain global prototypicality ranking (no removal stage, no
/// per-cluster budget, no given assignment) of a `FixedSizeList<Float32>`
/// column, with pruned shards to write and a k-means sample whose scores place
/// the threshold. `DPRUNE_PREFETCH=0` turns it off.
fn plan_prefetch(
    cfg: &FilterConfig,
    data: &Dataset,
    source: &dyn EmbeddingSource,
    trained: Option<&TrainedRows>,
    n_usable: u64,
) -> Result<Option<KeptPrefetch>> {
    let (p, out) = (&cfg.params, &cfg.output);
    // Keeping the hardest only: the training rows pulled their centroids, so their scores
    // run low, which moves the threshold to the safe side (more copies) for the largest
    // scores and to the unsafe side for the smallest.
    let plain = p.metric == Metric::Proto
        && p.prefer == Keep::Hard
        && p.balance == Balance::None
        && !p.exact_dedup
        && p.dedup.eps.is_none()
        && p.quality.is_none()
        && p.score_col.is_none()
        && p.assignments.is_none();
    let off = std::env::var("DPRUNE_PREFETCH").is_ok_and(|v| v == "0");
    if off || !plain || out.dry_run || out.scores_only {
        return Ok(None);
    }
    let (Some(trained), Some(col)) = (trained, source.column()) else {
        return Ok(None);
    };
    let f32_lists = data.shards.iter().all(|s| {
        matches!(s.schema.field_with_name(col).map(|f| f.data_type()),
            Ok(DataType::FixedSizeList(item, _)) if item.data_type() == &DataType::Float32)
    });
    let Ok(budget) = p.keep.resolve(n_usable) else {
        return Ok(None);
    };
    if !f32_lists {
        return Ok(None);
    }
    // The scores the score pass gives the training rows (1 − the dot, in f32).
    let sample: Vec<f32> = trained.dots.iter().map(|&d| 1.0 - d).collect();
    let Some(t) = prefetch_threshold(&sample, budget as f64 / n_usable as f64, p.prefer) else {
        return Ok(None);
    };
    KeptPrefetch::create(
        p.spill_dir.as_deref(),
        col,
        source.dim(),
        t,
        p.prefer,
        data.shards.len(),
    )
    .map(Some)
}

/// Writes the report's PNG (unless `no_plot`) and JSON into the output
/// folder, listing them in `report.outputs` (nothing for a dry run).
pub(super) fn write_report_files(out: &OutputSpec, report: &mut Report) -> Result<()> {
    if out.dry_run {
        return Ok(());
    }
    if !out.no_plot {
        let png = out.dir.join(REPORT_PNG);
        plot::write_report_png(report, &png)?;
        report.outputs.push(png.display().to_string());
    }
    let json = out.dir.join(REPORT_JSON);
    report.outputs.push(json.display().to_string());
    report.write_json(&json)
}

/// The centroids of a run: loaded from `p.centroids`, or fitted by k-means
/// on a seeded sample of the `n_pass` rows `only` keeps (all when `None`).
/// Shared by the local and the distributed driver, so both fit the same.
#[allow(clippy::too_many_arguments)]
pub(super) fn fit_or_load(
    data: &Dataset,
    source: &dyn EmbeddingSource,
    p: &FilterParams,
    only: Option<&[bool]>,
    n_pass: u64,
    invalid: &mut InvalidReport,
    progress: &dyn Progress,
    t: &mut Timings,
) -> Result<(Centroids, KMeansReport, Option<TrainedRows>)> {
    let n = data.num_rows();
    let d = source.dim();
    match &p.centroids {
        Some(path) => {
            let (c, kr) = load_centroids(path, d, p.kmeans.distance)?;
            Ok((c, kr, None))
        }
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
            let (sample, taken) = read_sample(data, source, &sample_ids, only, p, invalid, progress)?;
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
            // 256 rows per centroid: often hundreds of MB, freed while the score pass starts.
            crate::background::drop_behind(sample);
            t.mark("kmeans");
            let kr = KMeansReport {
                k,
                source: "fit".into(),
                train_rows: train as u64,
                iterations: fit.iterations,
                converged: fit.converged,
                inertia: Some(fit.inertia()),
                inertia_history: fit.inertia_history.clone(),
                searched_history: fit.searched_history.clone(),
                reseeded_empty: fit.reseeded,
                saved_to: None,
            };
            let trained = (p.kmeans.distance == Distance::Cosine && TrainedRows::enabled()).then_some(TrainedRows {
                ids: taken,
                labels: fit.labels,
                dots: fit.dots,
            });
            Ok((fit.centroids, kr, trained))
        }
    }
}

/// `--assignments`: one cluster per input row, each below `k`.
fn load_assignments(path: &std::path::Path, n: u64, k: usize) -> Result<Vec<u32>> {
    let bad = |reason: String| Error::Npy {
        path: path.to_path_buf(),
        reason,
    };
    let labels = crate::io::npy::read_labels(path)?;
    if labels.len() as u64 != n {
        return Err(bad(format!("{} labels for {n} input rows", labels.len())));
    }
    labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            u32::try_from(l)
                .ok()
                .filter(|&l| (l as usize) < k)
                .ok_or_else(|| bad(format!("row {i} has cluster {l}, but the centroids have k = {k}")))
        })
        .collect()
}
