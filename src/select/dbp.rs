//! Density-based pruning (DBP; Abbas, Rusak et al., ICLR 2024): per-cluster
//! quotas from cluster complexity, with an exact total.
//!
//! * d_intra(j): mean cosine distance of cluster j's rows to its centroid;
//!   d_inter(j): mean cosine distance of centroid j to its `neighbors`
//!   nearest other centroids (centroids normalised first); complexity =
//!   d_intra · d_inter ([`Complexity`]).
//! * shares P = softmax(complexity / τ) (or any external per-cluster
//!   weights, PASER-style, [`ShareRule`]).
//! * quotas: the Euclidean projection of B·P onto {Σx = B, floor_j ≤ x_j ≤ n_j},
//!   in closed form x_j = clip(B·P_j − λ, floor_j, n_j) with λ found by
//!   bisection (no QP solver), then largest-remainder rounding so Σ = B
//!   exactly ([`allocate`]).
//!
//! Which rows fill a quota is [`crate::select::select_per_cluster`]'s job.
//!
//! ```
//! use dprune::select::dbp::{ShareRule, allocate, shares};
//!
//! // Complexities → softmax shares (τ = 0.5) → quotas for 12 of 30 rows.
//! let p = shares(&[0.3, 0.1, 0.1], ShareRule::Softmax, 0.5)?;
//! let a = allocate(&p, &[10, 10, 10], 12, 0.5)?;
//! assert_eq!(a.quotas.iter().sum::<u64>(), 12);
//! assert!(a.quotas[0] > a.quotas[1] && a.quotas[1] >= a.floor);
//! # Ok::<(), dprune::Error>(())
//! ```

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::Centroids;
use crate::distance::{dot_batch, normalize};
use crate::score::semdedup::Assignment;
use crate::{Error, Result};

/// Nearest other centroids averaged in d_inter (the DBP code's `num_NNs`).
pub const DEFAULT_NEIGHBORS: usize = 20;
/// Softmax temperature τ (the DBP code's default).
pub const DEFAULT_TEMPERATURE: f64 = 0.5;
/// Every cluster's floor as a fraction of the uniform share B/k (the DBP
/// code's `cls_bal_ratio`).
pub const DEFAULT_FLOOR_RATIO: f64 = 0.5;
/// Clusters with fewer rows have no d_intra (an empty cluster's mean is
/// NaN); they get the mean complexity of the others, as `prune.py` does with
/// its NaNs (`nanmean`). Singletons and 2-row clusters keep their own,
/// finite d_intra, as `ref_dbp.py` does: imputing them too moved every
/// cluster's softmax share (by 0.4% on the 1M benchmark, whose reference
/// clustering has singletons) and put quotas 2 away from the reference's.
pub const MIN_ROWS_FOR_COMPLEXITY: u64 = 1;

/// Bisection steps on λ at most (f64 converges long before).
const BISECTION_ITERS: usize = 200;
/// Centroids per parallel task in d_inter: scratch is this × k floats.
const CENTROID_CHUNK: usize = 32;

/// How per-cluster weights become shares of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareRule {
    /// softmax(w / τ): DBP.
    #[default]
    Softmax,
    /// w / Σw: PASER-style (weights must be ≥ 0 with a positive sum).
    Proportional,
}

/// Parameters of DBP's allocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DbpParams {
    /// Nearest other centroids in d_inter; defaults to [`DEFAULT_NEIGHBORS`]
    /// (capped at k − 1).
    pub neighbors: usize,
    /// Softmax temperature; defaults to [`DEFAULT_TEMPERATURE`].
    pub temperature: f64,
    /// Floor as a fraction of B/k, in [0, 1]; defaults to [`DEFAULT_FLOOR_RATIO`].
    pub floor_ratio: f64,
    /// How weights become shares; defaults to [`ShareRule::Softmax`].
    pub shares: ShareRule,
}

impl Default for DbpParams {
    fn default() -> Self {
        DbpParams {
            neighbors: DEFAULT_NEIGHBORS,
            temperature: DEFAULT_TEMPERATURE,
            floor_ratio: DEFAULT_FLOOR_RATIO,
            shares: ShareRule::default(),
        }
    }
}

impl DbpParams {
    /// Sets the temperature.
    pub fn with_temperature(mut self, t: f64) -> Self {
        self.temperature = t;
        self
    }

    /// Sets the floor ratio.
    pub fn with_floor_ratio(mut self, r: f64) -> Self {
        self.floor_ratio = r;
        self
    }

    /// Sets the number of neighbours.
    pub fn with_neighbors(mut self, n: usize) -> Self {
        self.neighbors = n;
        self
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if self.neighbors == 0 {
            return Err(Error::param("--dbp-neighbors", "must be at least 1"));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::param(
                "--temperature",
                format!("{} is not a finite number > 0", self.temperature),
            ));
        }
        check_floor_ratio(self.floor_ratio)
    }
}

/// Per-cluster complexity and its parts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Complexity {
    /// Mean cosine distance of the rows to their centroid (NaN if empty).
    pub d_intra: Vec<f64>,
    /// Mean cosine distance to the nearest other centroids (NaN if k = 1).
    pub d_inter: Vec<f64>,
    /// d_intra · d_inter, or the mean over non-degenerate clusters where
    /// `imputed`.
    pub value: Vec<f64>,
    /// Clusters with fewer than [`MIN_ROWS_FOR_COMPLEXITY`] rows or a
    /// non-finite product, given the mean (1 when no cluster qualifies).
    pub imputed: Vec<bool>,
}

/// Integer quotas and the continuous solution they round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Allocation {
    /// Rows to keep per cluster; Σ = budget, `floor_j ≤ q_j ≤ n_j`.
    pub quotas: Vec<u64>,
    /// The exact projection x_j = clip(B·P_j − λ, floor_j, n_j).
    pub continuous: Vec<f64>,
    /// ⌊floor_ratio · B / k⌋ (a cluster's floor is the smaller of this and its size).
    pub floor: u64,
    /// The shift λ.
    pub lambda: f64,
}

/// Everything the report needs about a DBP allocation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DbpPlan {
    /// Eligible rows per cluster.
    pub sizes: Vec<u64>,
    /// The complexity, when computed from the clusters (not with external weights).
    pub complexity: Option<Complexity>,
    /// The weights the shares came from (complexity or external).
    pub weights: Vec<f64>,
    /// Shares of the budget, Σ = 1.
    pub shares: Vec<f64>,
    /// The quotas.
    pub allocation: Allocation,
}

/// d_intra per cluster: the mean of `assign.dist()` over eligible members
/// (NaN for an empty cluster).
pub fn d_intra(assign: &Assignment) -> Vec<f64> {
    let k = assign.k();
    let (mut sum, mut n) = (vec![0f64; k], vec![0u64; k]);
    for ((&l, &d), &e) in assign.labels().iter().zip(assign.dist()).zip(assign.eligible()) {
        if e {
            sum[l as usize] += d as f64;
            n[l as usize] += 1;
        }
    }
    sum.iter()
        .zip(&n)
        .map(|(&s, &c)| if c == 0 { f64::NAN } else { s / c as f64 })
        .collect()
}

/// d_inter per centroid (`k × dim`, row-major, normalised here): the mean
/// of 1 − cos over its min(`neighbors`, k − 1) most similar other centroids;
/// NaN for every centroid when k = 1.
pub fn d_inter(centroids: &[f32], dim: usize, neighbors: usize) -> Result<Vec<f64>> {
    if dim == 0 || centroids.is_empty() || !centroids.len().is_multiple_of(dim) {
        return Err(Error::Shape {
            op: "d_inter",
            expected: format!("k x {dim} centroids"),
            got: format!("{} values", centroids.len()),
        });
    }
    let k = centroids.len() / dim;
    let mut c = centroids.to_vec();
    for (j, row) in c.chunks_exact_mut(dim).enumerate() {
        if row.iter().any(|v| !v.is_finite()) || normalize(row) == 0.0 {
            return Err(Error::param("centroids", format!("centroid {j} is zero or not finite")));
        }
    }
    let nn = neighbors.min(k - 1);
    if nn == 0 {
        return Ok(vec![f64::NAN; k]);
    }
    let chunks: Vec<Vec<f64>> = c
        .par_chunks(CENTROID_CHUNK * dim)
        .enumerate()
        .map(|(ci, x)| {
            let m = x.len() / dim;
            let mut sims = vec![0f32; m * k];
            dot_batch(x, &c, dim, &mut sims);
            sims.chunks_exact_mut(k)
                .enumerate()
                .map(|(i, row)| {
                    row[ci * CENTROID_CHUNK + i] = f32::NEG_INFINITY; // not itself
                    row.select_nth_unstable_by(nn - 1, |a, b| b.total_cmp(a));
                    row[..nn].iter().map(|&s| 1.0 - s as f64).sum::<f64>() / nn as f64
                })
                .collect()
        })
        .collect();
    Ok(chunks.concat())
}

/// complexity = d_intra · d_inter, with degenerate clusters (fewer than
/// [`MIN_ROWS_FOR_COMPLEXITY`] rows, or a NaN/inf product) set to the mean
/// of the others, so singletons and 2-row clusters never produce NaN.
///
/// # Panics
/// If the lengths differ.
pub fn complexity(d_intra: &[f64], d_inter: &[f64], sizes: &[u64]) -> Complexity {
    assert!(
        d_intra.len() == sizes.len() && d_inter.len() == sizes.len(),
        "complexity: lengths differ"
    );
    let raw: Vec<f64> = d_intra.iter().zip(d_inter).map(|(a, b)| a * b).collect();
    let imputed: Vec<bool> = raw
        .iter()
        .zip(sizes)
        .map(|(v, &n)| n < MIN_ROWS_FOR_COMPLEXITY || !v.is_finite())
        .collect();
    let good: Vec<f64> = raw
        .iter()
        .zip(&imputed)
        .filter(|(_, i)| !**i)
        .map(|(v, _)| *v)
        .collect();
    let fill = if good.is_empty() {
        1.0
    } else {
        good.iter().sum::<f64>() / good.len() as f64
    };
    Complexity {
        d_intra: d_intra.to_vec(),
        d_inter: d_inter.to_vec(),
        value: raw
            .iter()
            .zip(&imputed)
            .map(|(&v, &i)| if i { fill } else { v })
            .collect(),
        imputed,
    }
}

/// Shares of the budget from per-cluster `weights`: softmax(w / τ),
/// computed stably (max subtracted), or w / Σw.
pub fn shares(weights: &[f64], rule: ShareRule, temperature: f64) -> Result<Vec<f64>> {
    if let Some(j) = weights.iter().position(|w| !w.is_finite()) {
        return Err(Error::param(
            "weights",
            format!("cluster {j} has weight {}", weights[j]),
        ));
    }
    if weights.is_empty() {
        return Ok(Vec::new());
    }
    match rule {
        ShareRule::Softmax => {
            if !(temperature > 0.0 && temperature.is_finite()) {
                return Err(Error::param(
                    "--temperature",
                    format!("{temperature} is not a finite number > 0"),
                ));
            }
            let z: Vec<f64> = weights.iter().map(|w| w / temperature).collect();
            let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - mx).exp()).collect();
            let s: f64 = e.iter().sum();
            Ok(e.iter().map(|v| v / s).collect())
        }
        ShareRule::Proportional => {
            let s: f64 = weights.iter().sum();
            if weights.iter().any(|&w| w < 0.0) || s <= 0.0 {
                return Err(Error::param(
                    "weights",
                    "proportional shares need weights >= 0 with a positive sum",
                ));
            }
            Ok(weights.iter().map(|w| w / s).collect())
        }
    }
}

/// Quotas for `budget` rows over clusters of `sizes` with `shares`: the
/// projection x_j = clip(B·P_j − λ, floor_j, n_j), Σx = B, solved for λ by
/// bisection, then largest-remainder rounding (ties to the lower cluster
/// index), so the quotas sum to `budget` exactly and stay in
/// [floor_j, n_j] with floor_j = min(⌊floor_ratio·B/k⌋, n_j).
///
/// Differences from the DBP code (`prune.py::pruning_qp`): the floor is
/// min(m, n_j), not min(m, n_j − 1), so a small cluster is not pruned just
/// to satisfy the solver; `floor_ratio = 0` means no floor (the code then
/// uses 1); rounding is exact, not `rint` (whose total can miss B).
pub fn allocate(shares: &[f64], sizes: &[u64], budget: u64, floor_ratio: f64) -> Result<Allocation> {
    check_floor_ratio(floor_ratio)?;
    if shares.len() != sizes.len() {
        return Err(Error::Shape {
            op: "dbp allocation",
            expected: format!("{} shares (one per cluster)", sizes.len()),
            got: format!("{}", shares.len()),
        });
    }
    if let Some(j) = shares.iter().position(|p| !(p.is_finite() && *p >= 0.0)) {
        return Err(Error::param("shares", format!("cluster {j} has share {}", shares[j])));
    }
    let total: u64 = sizes.iter().sum();
    if budget > total {
        return Err(Error::param(
            "--keep",
            format!("budget {budget} is more than the {total} rows in the clusters"),
        ));
    }
    let k = sizes.len();
    if k == 0 {
        return Ok(Allocation {
            quotas: Vec::new(),
            continuous: Vec::new(),
            floor: 0,
            lambda: 0.0,
        });
    }
    let floor = ((budget as f64 / k as f64) * floor_ratio).floor() as u64;
    let lb: Vec<f64> = sizes.iter().map(|&n| floor.min(n) as f64).collect();
    let ub: Vec<f64> = sizes.iter().map(|&n| n as f64).collect();
    let t: Vec<f64> = shares.iter().map(|p| budget as f64 * p).collect();
    let lambda = solve_lambda(&t, &lb, &ub, budget as f64);
    let continuous: Vec<f64> = (0..k).map(|j| (t[j] - lambda).clamp(lb[j], ub[j])).collect();
    let quotas = round_to_total(&continuous, &lb, &ub, budget);
    Ok(Allocation {
        quotas,
        continuous,
        floor,
        lambda,
    })
}

/// DBP from clusters: sizes, complexity, shares and quotas for `budget`
/// rows. `centroids` must be the centroids `assign` refers to.
pub fn plan(assign: &Assignment, centroids: &Centroids, budget: u64, params: &DbpParams) -> Result<DbpPlan> {
    params.validate()?;
    if centroids.k() != assign.k() {
        return Err(Error::Shape {
            op: "dbp",
            expected: format!("{} centroids (one per cluster)", assign.k()),
            got: format!("{}", centroids.k()),
        });
    }
    let sizes = assign.sizes();
    let di = d_intra(assign);
    let de = d_inter(centroids.as_slice(), centroids.dim(), params.neighbors)?;
    let cx = complexity(&di, &de, &sizes);
    let weights = cx.value.clone();
    let mut p = plan_with_weights(&sizes, &weights, budget, params)?;
    p.complexity = Some(cx);
    Ok(p)
}

/// The same allocation from external per-cluster `weights` (PASER-style:
/// any per-cluster signal, shares by [`DbpParams::shares`]).
pub fn plan_with_weights(sizes: &[u64], weights: &[f64], budget: u64, params: &DbpParams) -> Result<DbpPlan> {
    params.validate()?;
    if weights.len() != sizes.len() {
        return Err(Error::Shape {
            op: "dbp weights",
            expected: format!("{} weights (one per cluster)", sizes.len()),
            got: format!("{}", weights.len()),
        });
    }
    let sh = shares(weights, params.shares, params.temperature)?;
    let allocation = allocate(&sh, sizes, budget, params.floor_ratio)?;
    Ok(DbpPlan {
        sizes: sizes.to_vec(),
        complexity: None,
        weights: weights.to_vec(),
        shares: sh,
        allocation,
    })
}

fn check_floor_ratio(r: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&r) {
        return Err(Error::param("--dbp-floor", format!("{r} is outside [0, 1]")));
    }
    Ok(())
}

fn projected_sum(t: &[f64], lb: &[f64], ub: &[f64], lambda: f64) -> f64 {
    (0..t.len()).map(|j| (t[j] - lambda).clamp(lb[j], ub[j])).sum()
}

/// λ with Σ clip(t − λ, lb, ub) = total (Σlb ≤ total ≤ Σub): bisection on
/// the decreasing sum, then the exact λ of the free set it identifies.
fn solve_lambda(t: &[f64], lb: &[f64], ub: &[f64], total: f64) -> f64 {
    let k = t.len();
    // At lo every x_j = ub_j (sum ≥ total); at hi every x_j = lb_j (sum ≤ total).
    let mut lo = (0..k).map(|j| t[j] - ub[j]).fold(f64::INFINITY, f64::min);
    let mut hi = (0..k).map(|j| t[j] - lb[j]).fold(f64::NEG_INFINITY, f64::max);
    if lo >= hi {
        return lo;
    }
    for _ in 0..BISECTION_ITERS {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if projected_sum(t, lb, ub, mid) > total {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let mid = 0.5 * (lo + hi);
    // Free clusters (strictly inside their box) share the rest equally.
    let (mut free_t, mut free_n, mut fixed) = (0.0, 0usize, 0.0);
    for j in 0..k {
        let x = t[j] - mid;
        if x > lb[j] && x < ub[j] {
            free_t += t[j];
            free_n += 1;
        } else {
            fixed += x.clamp(lb[j], ub[j]);
        }
    }
    if free_n > 0 {
        let exact = (free_t - (total - fixed)) / free_n as f64;
        let err = |l: f64| (projected_sum(t, lb, ub, l) - total).abs();
        if err(exact) <= err(mid) {
            return exact;
        }
    }
    mid
}

/// Largest-remainder rounding of `x` (within [lb, ub], integer bounds) to
/// integers summing to `total`.
fn round_to_total(x: &[f64], lb: &[f64], ub: &[f64], total: u64) -> Vec<u64> {
    let k = x.len();
    let mut q: Vec<u64> = (0..k)
        .map(|j| (x[j].floor().max(0.0) as u64).clamp(lb[j] as u64, ub[j] as u64))
        .collect();
    let rem = |q: &[u64], j: usize| x[j] - q[j] as f64;
    let sum: u64 = q.iter().sum();
    if sum < total {
        let mut order: Vec<usize> = (0..k).filter(|&j| q[j] < ub[j] as u64).collect();
        order.sort_by(|&a, &b| rem(&q, b).total_cmp(&rem(&q, a)).then(a.cmp(&b)));
        let mut left = total - sum;
        while left > 0 {
            let mut moved = false;
            for &j in &order {
                if left > 0 && q[j] < ub[j] as u64 {
                    q[j] += 1;
                    left -= 1;
                    moved = true;
                }
            }
            assert!(moved, "round_to_total: Σub < total, checked by the caller");
        }
    } else if sum > total {
        let mut order: Vec<usize> = (0..k).filter(|&j| q[j] > lb[j] as u64).collect();
        order.sort_by(|&a, &b| rem(&q, a).total_cmp(&rem(&q, b)).then(a.cmp(&b)));
        let mut extra = sum - total;
        while extra > 0 {
            let mut moved = false;
            for &j in &order {
                if extra > 0 && q[j] > lb[j] as u64 {
                    q[j] -= 1;
                    extra -= 1;
                    moved = true;
                }
            }
            assert!(moved, "round_to_total: Σlb > total, checked by the caller");
        }
    }
    q
}

#[cfg(test)]
mod tests;
