//! Stage 2 of `filter`: SemDeDup over the spilled clusters, its threshold,
//! the optional cross-cluster pass, and what the report shows of it.

use crate::Result;
use crate::cluster::Centroids;
use crate::pipeline::filter::FilterParams;
use crate::pipeline::passes::Rows;
use crate::pipeline::progress::{Pass, Progress};
use crate::pipeline::spill::SpilledClusters;
use crate::pipeline::stages::{
    EPS_CURVE, GlobalPass, SemDedupReport, global_duplicates, pairwise_warning, remove, semdedup_second_cluster,
    semdedup_spilled,
};
use crate::score::semdedup::{SemDedupParams, eps_curve, is_duplicate, quantiles};

/// M and `dup_of` of every row (exact duplicates marked too) and the report.
pub(super) struct DedupOutcome {
    pub max_sim: Vec<f32>,
    pub dup_of: Vec<Option<u32>>,
    pub report: SemDedupReport,
}

/// Runs SemDeDup on the `eligible` rows and, with `p.dedup.eps`, removes
/// the duplicates from `eligible` (recording each removal with `stage`).
#[allow(clippy::too_many_arguments)]
pub(super) fn run_semdedup(
    p: &FilterParams,
    rows: &Rows,
    eligible: &mut [bool],
    sp: &SpilledClusters,
    guests: Option<&SpilledClusters>,
    c: &Centroids,
    exact_dup_of: &[Option<u32>],
    stage: &mut dyn FnMut(&str, &[bool], u64),
    warn: &mut dyn FnMut(String),
    progress: &dyn Progress,
) -> Result<DedupOutcome> {
    let params = SemDedupParams::default().with_keep(p.dedup.keep.to_keep(p.seed));
    let mut sizes = vec![0u64; c.k()];
    for (&l, &e) in rows.labels.iter().zip(eligible.iter()) {
        if e {
            sizes[l as usize] += 1;
        }
    }
    if let Some(w) = pairwise_warning(&sizes, c.dim()) {
        warn(w);
    }
    progress.begin(Pass::Dedup, sp.rows);
    let on_partition = |m| progress.advance(m);
    // With an eps and the second-cluster pass, both passes share one read of the spill.
    let (mut sc, cross) = match (p.dedup.eps, p.dedup.global, guests) {
        (Some(eps), GlobalPass::SecondCluster, Some(gs)) => {
            let (sc, g) = semdedup_second_cluster(
                sp,
                gs,
                &rows.labels,
                &rows.second,
                &rows.margin,
                eligible,
                c,
                &params,
                eps,
                &on_partition,
            )?;
            (sc, Some(g))
        }
        _ => (
            semdedup_spilled(sp, &rows.labels, eligible, c, &params, &on_partition)?,
            None,
        ),
    };
    progress.end();
    let mut curve_eps: Vec<f64> = EPS_CURVE.to_vec();
    if let Some(e) = p.dedup.eps
        && !curve_eps.contains(&e)
    {
        curve_eps.push(e);
        curve_eps.sort_by(f64::total_cmp);
    }
    let qs = [0.5, 0.9, 0.95, 0.99, 0.999, 1.0];
    let mut report = SemDedupReport {
        eps: p.dedup.eps,
        keep: p.dedup.keep.to_string(),
        partitions: sp.partitions(),
        spill_bytes: sp.bytes,
        largest_cluster: sizes.iter().copied().max().unwrap_or(0),
        pairs: sizes.iter().map(|&s| (s as f64) * (s as f64)).sum(),
        max_sim_quantiles: qs.iter().copied().zip(quantiles(&sc.max_sim, eligible, &qs)).collect(),
        eps_curve: eps_curve(&sc.max_sim, eligible, &curve_eps)?,
        removed_within: 0,
        removed_global: 0,
        // Every row near its boundary, spilled again or (its two clusters in one
        // partition) found in the owner spill.
        global_candidates: guests.map_or(0, |_| {
            rows.second
                .iter()
                .zip(&rows.valid)
                .filter(|&(&s, &v)| v && s != u32::MAX)
                .count() as u64
        }),
    };
    if let Some(eps) = p.dedup.eps {
        let m = &sc.max_sim;
        report.removed_within = remove(eligible, |i| is_duplicate(m[i], eps));
        stage("semdedup", eligible, report.removed_within);
        let g = match p.dedup.global {
            GlobalPass::SecondCluster => cross,
            GlobalPass::Hnsw => Some(global_duplicates(
                sp,
                &rows.labels,
                eligible,
                c.dim(),
                eps,
                &p.dedup.hnsw,
            )?),
            GlobalPass::Off => None,
        };
        if let Some(g) = g {
            report.removed_global = remove(eligible, |i| g[i].is_some());
            stage("semdedup_global", eligible, report.removed_global);
            for (i, g) in g.into_iter().enumerate() {
                if g.is_some() {
                    sc.dup_of[i] = g;
                }
            }
        }
    }
    if !exact_dup_of.is_empty() {
        sc.mark_exact(exact_dup_of);
    }
    Ok(DedupOutcome {
        max_sim: sc.max_sim,
        dup_of: sc.dup_of,
        report,
    })
}
