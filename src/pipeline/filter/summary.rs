//! The report of a `filter` run built from its per-row results.

use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::io::Dataset;
use crate::pipeline::filter::{Balance, FilterConfig};
use crate::pipeline::passes::Rows;
use crate::pipeline::report::{
    ClusterReport, HISTOGRAM_BINS, InputReport, InvalidReport, KMeansReport, Report, ScoreReport, histogram,
};
use crate::score::Metric;
use crate::select::Keep;

pub(super) fn build_report(
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
            complexity: None,
            share: None,
            quota: None,
        })
        .collect();
    let mut sums = vec![(0f64, 0u64); k];
    if k > 0 {
        for (i, _) in rows.valid.iter().enumerate().filter(|(_, v)| **v) {
            let c = rows.labels[i] as usize;
            clusters[c].size += 1;
            clusters[c].kept += kept[i] as u64;
            if !rows.scores[i].is_nan() {
                sums[c].0 += rows.scores[i] as f64;
                sums[c].1 += 1;
            }
        }
        for (c, &(s, m)) in clusters.iter_mut().zip(&sums) {
            c.mean_score = if m > 0 { (s / m as f64) as f32 } else { f32::NAN };
        }
    }
    let n_kept = kept.iter().filter(|&&k| k).count() as u64;
    let scores = score_report(p, &rows.scores, &rows.valid, kept, n_kept);
    Report {
        dprune_version: env!("CARGO_PKG_VERSION").into(),
        command: "filter".into(),
        dry_run: cfg.output.dry_run,
        inputs,
        embedding_source: None,
        dim: None,
        n_rows: data.num_rows(),
        n_eligible: rows.valid.iter().filter(|&&v| v).count() as u64,
        prefilter: None,
        invalid,
        n_kept,
        params: p.clone(),
        seed: p.seed,
        kmeans,
        clusters,
        scores: Some(scores),
        stages: vec![],
        semdedup: None,
        prefetch: None,
        outputs: vec![],
        timings_s: BTreeMap::new(),
        warnings: vec![],
    }
}

/// The score summary of a run (quantiles, histogram, the global rule's
/// threshold) from every row's score, whether it was usable and kept.
fn score_report(
    p: &crate::pipeline::filter::FilterParams,
    scores: &[f32],
    valid: &[bool],
    kept: &[bool],
    n_kept: u64,
) -> ScoreReport {
    let scored: Vec<bool> = valid.iter().zip(scores).map(|(&v, s)| v && !s.is_nan()).collect();
    let mut valid_scores: Vec<f32> = scores
        .iter()
        .zip(valid)
        .filter(|(s, v)| **v && !s.is_nan())
        .map(|(s, _)| *s)
        .collect();
    valid_scores.par_sort_unstable_by(|a, b| a.total_cmp(b));
    if valid_scores.is_empty() {
        valid_scores.push(f32::NAN);
    }
    let q = |f: f64| valid_scores[((valid_scores.len() - 1) as f64 * f).round() as usize];
    let quantiles = [0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0]
        .iter()
        .map(|&f| (format!("{f}"), q(f)))
        .collect();
    // A single score threshold exists only for the global rules.
    let global_rule = match p.metric {
        Metric::Proto | Metric::Random => Some(p.prefer),
        Metric::Semdedup => Some(Keep::Easy),
        _ => None,
    };
    let threshold = global_rule
        .filter(|_| p.balance == Balance::None && n_kept > 0)
        .map(|prefer| {
            let it = scores.iter().zip(kept).filter(|(_, k)| **k).map(|(s, _)| *s);
            match prefer {
                Keep::Hard => it.fold(f32::INFINITY, f32::min),
                Keep::Easy => it.fold(f32::NEG_INFINITY, f32::max),
            }
        });
    let mean = valid_scores.iter().map(|&v| v as f64).sum::<f64>() / valid_scores.len() as f64;
    ScoreReport {
        metric: p.metric.to_string(),
        min: valid_scores[0],
        max: *valid_scores.last().expect("at least one value"),
        mean,
        quantiles,
        threshold,
        histogram: histogram(scores, &scored, kept, HISTOGRAM_BINS),
    }
}
