//! Turning M (max similarity to an earlier-ranked row) into decisions:
//! duplicates at an eps, the eps → kept curve, an exact budget, quantiles,
//! and the cost estimate of the within-cluster pass.

use rayon::prelude::*;
use serde::Serialize;

use crate::{Error, Result};

/// Checks an eps: a finite number in [0, 1].
pub fn validate_eps(eps: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&eps) {
        return Err(Error::param(
            "--dedup",
            format!("eps {eps} is outside [0, 1]; rows with max similarity > 1 - eps are removed"),
        ));
    }
    Ok(())
}

/// The similarity threshold 1 − eps, rounded to f32 exactly as the
/// reference does (`np.float32(1 - eps)`).
#[inline]
pub fn similarity_threshold(eps: f64) -> f32 {
    (1.0 - eps) as f32
}

/// Whether a row with max similarity `max_sim` is a duplicate at `eps`:
/// `max_sim > 1 − eps`, strictly, as SemDeDup's `semdedup.py`. NeMo
/// Curator uses `>=`, which removes rows sitting exactly on the threshold
/// (e.g. exact copies at eps = 0); NaN is never a duplicate.
#[inline]
pub fn is_duplicate(max_sim: f32, eps: f64) -> bool {
    max_sim > similarity_threshold(eps)
}

/// Which eligible rows are kept at `eps` (ineligible rows are not kept).
///
/// # Panics
/// If the lengths differ.
pub fn kept_at_eps(max_sim: &[f32], eligible: &[bool], eps: f64) -> Result<Vec<bool>> {
    validate_eps(eps)?;
    assert_eq!(max_sim.len(), eligible.len(), "kept_at_eps: lengths differ");
    Ok(max_sim
        .iter()
        .zip(eligible)
        .map(|(&m, &e)| e && !is_duplicate(m, eps))
        .collect())
}

/// One point of the eps → kept curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct EpsPoint {
    /// The eps.
    pub eps: f64,
    /// Eligible rows kept.
    pub kept: u64,
    /// Eligible rows removed as duplicates.
    pub removed: u64,
}

/// Kept and removed counts for every eps in `eps_list` from one sort of M.
///
/// # Panics
/// If the lengths differ.
pub fn eps_curve(max_sim: &[f32], eligible: &[bool], eps_list: &[f64]) -> Result<Vec<EpsPoint>> {
    assert_eq!(max_sim.len(), eligible.len(), "eps_curve: lengths differ");
    let mut nan = 0u64;
    let mut m: Vec<f32> = Vec::with_capacity(max_sim.len());
    for (&v, &e) in max_sim.iter().zip(eligible) {
        match (e, v.is_nan()) {
            (false, _) => {}
            (true, true) => nan += 1,
            (true, false) => m.push(v),
        }
    }
    // In parallel: the same bits (equal keys are equal floats), a million rows on
    // one thread took a run's last 60 ms.
    m.par_sort_unstable_by(f32::total_cmp);
    let total = m.len() as u64 + nan;
    eps_list
        .iter()
        .map(|&eps| {
            validate_eps(eps)?;
            let t = similarity_threshold(eps);
            // M <= t is kept; NaN is never a duplicate.
            let kept = m.partition_point(|&v| v <= t) as u64 + nan;
            Ok(EpsPoint {
                eps,
                kept,
                removed: total - kept,
            })
        })
        .collect()
}

/// The kept set for an exact budget: the `budget` eligible rows of
/// smallest M, ties to the lower row id (a quantile of M).
#[derive(Debug, Clone, PartialEq)]
pub struct ExactKeep {
    /// One flag per row.
    pub kept: Vec<bool>,
    /// The largest M kept (the threshold); `None` when nothing is kept.
    pub max_kept: Option<f32>,
    /// The smallest M removed; `None` when nothing eligible is removed.
    pub min_removed: Option<f32>,
    /// An eps giving the same kept set, `1 − max_kept`, when one exists
    /// (not when equal M values straddle the cut, or nothing is kept).
    pub eps: Option<f64>,
}

/// Keeps exactly `budget` eligible rows: those least redundant (smallest M),
/// ties to the lower row id.
///
/// # Panics
/// If the lengths differ.
pub fn keep_least_redundant(max_sim: &[f32], eligible: &[bool], budget: u64) -> Result<ExactKeep> {
    assert_eq!(max_sim.len(), eligible.len(), "keep_least_redundant: lengths differ");
    let n_eligible = eligible.iter().filter(|&&e| e).count() as u64;
    if budget > n_eligible {
        return Err(Error::param(
            "--keep",
            format!("budget {budget} is more than the {n_eligible} rows left"),
        ));
    }
    if let Some(i) = (0..max_sim.len()).find(|&i| eligible[i] && max_sim[i].is_nan()) {
        return Err(Error::Internal(format!(
            "row {i} is eligible but has no max similarity"
        )));
    }
    let mut idx: Vec<u32> = (0..max_sim.len() as u32).filter(|&i| eligible[i as usize]).collect();
    let by = |a: &u32, b: &u32| max_sim[*a as usize].total_cmp(&max_sim[*b as usize]).then(a.cmp(b));
    let b = budget as usize;
    if b > 0 && b < idx.len() {
        idx.select_nth_unstable_by(b - 1, by);
    }
    let mut kept = vec![false; max_sim.len()];
    for &i in &idx[..b] {
        kept[i as usize] = true;
    }
    let max_kept = idx[..b].iter().map(|&i| max_sim[i as usize]).max_by(f32::total_cmp);
    let min_removed = idx[b..].iter().map(|&i| max_sim[i as usize]).min_by(f32::total_cmp);
    let eps = match (max_kept, min_removed) {
        (Some(t), Some(r)) if r > t => Some(1.0 - t as f64),
        (Some(t), None) => Some(1.0 - t as f64),
        _ => None,
    };
    Ok(ExactKeep {
        kept,
        max_kept,
        min_removed,
        eps: eps.map(|e| e.clamp(0.0, 1.0)),
    })
}

/// Quantiles (`qs` in [0, 1], nearest-rank on the sorted values) of M over
/// eligible rows; empty when no row is eligible.
pub fn quantiles(max_sim: &[f32], eligible: &[bool], qs: &[f64]) -> Vec<f32> {
    let mut m: Vec<f32> = max_sim
        .iter()
        .zip(eligible)
        .filter(|(v, e)| **e && !v.is_nan())
        .map(|(&v, _)| v)
        .collect();
    if m.is_empty() {
        return Vec::new();
    }
    m.par_sort_unstable_by(f32::total_cmp);
    let last = m.len() - 1;
    qs.iter()
        .map(|&q| m[((q.clamp(0.0, 1.0) * last as f64).round() as usize).min(last)])
        .collect()
}

/// The cost of the within-cluster pass for cluster `sizes`: what the
/// report needs to warn that k is too small for N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PairwiseCost {
    /// Σ n_c²: pairs compared (twice) and the f32 count of an unblocked pass.
    pub sum_sq: u128,
    /// The largest cluster.
    pub largest: u64,
}

impl PairwiseCost {
    /// From cluster sizes.
    pub fn new(sizes: &[u64]) -> Self {
        PairwiseCost {
            sum_sq: sizes.iter().map(|&s| s as u128 * s as u128).sum(),
            largest: sizes.iter().copied().max().unwrap_or(0),
        }
    }

    /// Floating-point operations of the blocked pass (about n²·dim per
    /// cluster: half the pairs, two flops each).
    pub fn flops(&self, dim: usize) -> f64 {
        self.sum_sq as f64 * dim as f64
    }
}
