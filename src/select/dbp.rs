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
/// Clusters with fewer rows have no meaningful d_intra (a 1-row cluster is
/// its own centroid, a 2-row one is symmetric about it); they get the mean
/// complexity of the others, as the DBP code does with its NaNs.
pub const MIN_ROWS_FOR_COMPLEXITY: u64 = 3;

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
mod tests {
    use super::*;
    use crate::cluster::Distance;
    use crate::select::floor_fraction;
    use proptest::prelude::*;

    /// `ref_dbp.py::solve_quotas` (exact projection, lb = min(m, n − 1),
    /// empty clusters 0), then `np.rint`.
    fn reference_quotas(shares: &[f64], sizes: &[u64], n_keep: u64, ratio: f64) -> Vec<i64> {
        let k = sizes.len();
        let m = if ratio > 0.0 {
            ((n_keep as f64 / k as f64) * ratio) as i64
        } else {
            1
        };
        let lb: Vec<f64> = sizes
            .iter()
            .map(|&n| if n == 0 { 0.0 } else { m.min(n as i64 - 1) as f64 })
            .collect();
        let ub: Vec<f64> = sizes.iter().map(|&n| n as f64).collect();
        let t: Vec<f64> = shares.iter().map(|p| p * n_keep as f64).collect();
        // project_capped_simplex, literally
        let mut lo = (0..k).map(|j| lb[j] - t[j]).fold(f64::INFINITY, f64::min) - 1.0;
        let mut hi = (0..k).map(|j| ub[j] - t[j]).fold(f64::NEG_INFINITY, f64::max) + 1.0;
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            let s: f64 = (0..k).map(|j| (t[j] + mid).clamp(lb[j], ub[j])).sum();
            if s < n_keep as f64 {
                lo = mid;
            } else {
                hi = mid;
            }
            if hi - lo < 1e-12 {
                break;
            }
        }
        let mid = 0.5 * (lo + hi);
        (0..k)
            .map(|j| (t[j] + mid).clamp(lb[j], ub[j]).round_ties_even() as i64)
            .collect()
    }

    #[test]
    fn hand_computed_allocations() {
        // Interior: λ = 0, x = [6, 3.6, 2.4] → floors [6, 3, 2], +1 to the largest remainder.
        let a = allocate(&[0.5, 0.3, 0.2], &[10, 10, 10], 12, 0.5).unwrap();
        assert_eq!(a.floor, 2);
        assert!(a.lambda.abs() < 1e-9);
        assert_eq!(a.quotas, vec![6, 4, 2]);
        // Cap: cluster 0 holds 2 rows; the surplus is shared by an equal shift (λ = −2.6).
        let a = allocate(&[0.6, 0.2, 0.2], &[2, 10, 10], 12, 0.5).unwrap();
        assert!((a.lambda + 2.6).abs() < 1e-9);
        assert_eq!(a.quotas, vec![2, 5, 5]);
        // Floor: clusters 1 and 2 get ⌊0.5·12/3⌋ = 2, cluster 0 the rest (λ = 2.8).
        let a = allocate(&[0.9, 0.05, 0.05], &[10, 10, 10], 12, 0.5).unwrap();
        assert!((a.lambda - 2.8).abs() < 1e-9);
        assert_eq!(a.quotas, vec![8, 2, 2]);
        // Empty clusters get nothing; a floor larger than a cluster is its size.
        let a = allocate(&[0.25, 0.25, 0.25, 0.25], &[0, 1, 40, 40], 40, 1.0).unwrap();
        assert_eq!(a.floor, 10);
        assert_eq!(a.quotas[..2], [0, 1]);
        assert_eq!(a.quotas.iter().sum::<u64>(), 40);
        assert!(allocate(&[1.0], &[3], 4, 0.5).is_err());
        assert!(allocate(&[1.0], &[3], 2, 1.5).is_err());
    }

    /// Golden values from `ref_dbp.py::solve_quotas` (exact projection, then
    /// `rint`): same continuous solution; its rounding keeps 190 rows for a
    /// budget of 189, dprune's keeps 189 and differs by one in one cluster.
    #[test]
    fn golden_against_ref_dbp() {
        // softmax_f32(d / 0.5) for d = [0.1, 0.3, 0.05, 0.2, 0.2, 0.4, 0.15], as printed by the reference.
        let p = [
            0.11406725645065308,
            0.17016837000846863,
            0.10321231931447983,
            0.13932207226753235,
            0.13932207226753235,
            0.2078441083431244,
            0.12606382369995117,
        ];
        let sizes = [50, 3, 120, 0, 80, 2, 60];
        let a = allocate(&p, &sizes, 189, 0.5).unwrap();
        assert_eq!(a.floor, 13);
        let x_ref = [44.752768, 3.0, 42.701185, 0.0, 49.525928, 2.0, 47.020119];
        for (j, (&x, &w)) in a.continuous.iter().zip(&x_ref).enumerate() {
            assert!((x - w).abs() < 1e-5, "cluster {j}: {x} vs {w}");
        }
        assert_eq!(a.quotas, vec![45, 3, 43, 0, 49, 2, 47]);
        let reference = [45, 3, 43, 0, 50, 2, 47];
        assert_eq!(reference_quotas(&p, &sizes, 189, 0.5), reference);
        for (q, r) in a.quotas.iter().zip(reference) {
            assert!((*q as i64 - r).abs() <= 1);
        }
        let d = [0.1, 0.3, 0.05, 0.2, 0.2, 0.4, 0.15];
        let ours = shares(&d, ShareRule::Softmax, 0.5).unwrap();
        for (a, b) in ours.iter().zip(&p) {
            assert!((a - b).abs() < 1e-7);
        }
    }

    #[test]
    fn softmax_is_stable_and_hand_checked() {
        let p = shares(&[0.0, 0.5 * 2f64.ln()], ShareRule::Softmax, 0.5).unwrap();
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-12 && (p[1] - 2.0 / 3.0).abs() < 1e-12);
        let p = shares(&[1000.0, 1000.0, 0.0], ShareRule::Softmax, 0.001).unwrap();
        assert!((p[0] - 0.5).abs() < 1e-12 && p[2] == 0.0);
        let p = shares(&[1.0, 3.0], ShareRule::Proportional, 0.5).unwrap();
        assert_eq!(p, vec![0.25, 0.75]);
        assert!(shares(&[f64::NAN], ShareRule::Softmax, 0.5).is_err());
        assert!(shares(&[-1.0, 2.0], ShareRule::Proportional, 0.5).is_err());
        assert!(shares(&[1.0], ShareRule::Softmax, 0.0).is_err());
    }

    #[test]
    fn degenerate_clusters_get_the_mean_complexity() {
        let sizes = [1, 2, 5, 5, 0];
        let di = [0.0, 0.1, 0.2, 0.4, f64::NAN];
        let de = [0.5; 5];
        let c = complexity(&di, &de, &sizes);
        assert_eq!(c.imputed, vec![true, true, false, false, true]);
        for (j, &v) in c.value.iter().enumerate() {
            let want = [0.15, 0.15, 0.1, 0.2, 0.15][j];
            assert!((v - want).abs() < 1e-12, "cluster {j}: {v}");
        }
        // k = 1: d_inter is NaN, every cluster falls back to 1.
        let c = complexity(&[0.3], &[f64::NAN], &[10]);
        assert_eq!((c.value, c.imputed), (vec![1.0], vec![true]));
    }

    #[test]
    fn d_intra_and_d_inter_by_hand() {
        let labels = [0, 1, 0, 1, 1];
        let dist = [0.1, 0.2, 0.3, 0.4, 9.0];
        let eligible = [true, true, true, true, false];
        let a = Assignment::try_new(&labels, &dist, &eligible, 3).unwrap();
        let di = d_intra(&a);
        assert!((di[0] - 0.2).abs() < 1e-7 && (di[1] - 0.3).abs() < 1e-7 && di[2].is_nan());
        // Unnormalised centroids (2,0), (0,3), (5,5): cosines 0, s, s.
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let c = [2.0, 0.0, 0.0, 3.0, 5.0, 5.0];
        let d1 = d_inter(&c, 2, 1).unwrap();
        for v in &d1 {
            assert!((v - (1.0 - s)).abs() < 1e-6, "{d1:?}");
        }
        let d2 = d_inter(&c, 2, DEFAULT_NEIGHBORS).unwrap(); // capped at k − 1 = 2
        assert!((d2[0] - (1.0 - s + 1.0) / 2.0).abs() < 1e-6);
        assert!((d2[2] - (1.0 - s)).abs() < 1e-6);
        assert!(d_inter(&[1.0, 0.0], 2, 20).unwrap()[0].is_nan());
        assert!(d_inter(&[0.0, 0.0, 1.0, 0.0], 2, 1).is_err());
    }

    #[test]
    fn plan_runs_end_to_end_without_nan() {
        // Clusters of 1, 2 and 6 rows.
        let labels = [0, 1, 1, 2, 2, 2, 2, 2, 2];
        let dist = [0.0, 0.05, 0.05, 0.1, 0.2, 0.3, 0.1, 0.2, 0.3];
        let eligible = [true; 9];
        let a = Assignment::try_new(&labels, &dist, &eligible, 3).unwrap();
        let c = Centroids::try_new(vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8], 2, Distance::Cosine).unwrap();
        let p = plan(&a, &c, 5, &DbpParams::default()).unwrap();
        assert_eq!(p.sizes, vec![1, 2, 6]);
        assert!(p.shares.iter().all(|s| s.is_finite()));
        assert_eq!(p.allocation.quotas.iter().sum::<u64>(), 5);
        let cx = p.complexity.unwrap();
        assert_eq!(cx.imputed, vec![true, true, false]);
        let wrong_k = Assignment::try_new(&labels, &dist, &eligible, 4).unwrap();
        assert!(plan(&wrong_k, &c, 5, &DbpParams::default()).is_err());
        assert!(DbpParams::default().with_temperature(0.0).validate().is_err());
        assert!(DbpParams::default().with_floor_ratio(-0.1).validate().is_err());
        assert!(DbpParams::default().with_neighbors(0).validate().is_err());
        let p: DbpParams = serde_json::from_str(r#"{"temperature": 0.1}"#).unwrap();
        assert_eq!(p, DbpParams::default().with_temperature(0.1));
        assert!(serde_json::from_str::<DbpParams>(r#"{"temprature": 0.1}"#).is_err());
    }

    #[test]
    fn the_floor_makes_quotas_non_monotone_in_the_budget() {
        // DBP's semantics, not a rounding artefact: when ⌊0.5·B/k⌋ steps up, three
        // clusters pinned at the floor each gain a row and the free cluster gives two back.
        let p = [0.97, 0.01, 0.01, 0.01];
        let s = [100, 100, 100, 100];
        let a = allocate(&p, &s, 79, 0.5).unwrap();
        let b = allocate(&p, &s, 80, 0.5).unwrap();
        assert_eq!(a.quotas, vec![52, 9, 9, 9]);
        assert_eq!(b.quotas, vec![50, 10, 10, 10]);
    }

    fn arb_problem() -> impl Strategy<Value = (Vec<f64>, Vec<u64>, f64)> {
        (1usize..40).prop_flat_map(|k| {
            (
                proptest::collection::vec(0.0f64..2.0, k),
                proptest::collection::vec(0u64..300, k),
                0.0f64..=1.0,
            )
        })
    }

    proptest! {
        #[test]
        fn quotas_sum_exactly_and_stay_in_bounds(
            (w, sizes, frac) in arb_problem(), ratio in 0.0f64..=1.0, tau in 0.05f64..2.0,
        ) {
            let total: u64 = sizes.iter().sum();
            let b = floor_fraction(frac, total);
            let p = shares(&w, ShareRule::Softmax, tau).unwrap();
            let a = allocate(&p, &sizes, b, ratio).unwrap();
            prop_assert_eq!(a.quotas.iter().sum::<u64>(), b);
            let cont_sum: f64 = a.continuous.iter().sum();
            prop_assert!((cont_sum - b as f64).abs() <= 1e-6 * (b as f64 + 1.0), "Σx = {cont_sum}, B = {b}");
            for (j, (&n, (&q, &x))) in sizes.iter().zip(a.quotas.iter().zip(&a.continuous)).enumerate() {
                let floor = a.floor.min(n);
                prop_assert!(q >= floor && q <= n, "cluster {j}: {q} not in [{floor}, {n}]");
                prop_assert!((q as f64 - x).abs() < 1.0 + 1e-6);
            }
        }

        #[test]
        fn monotone_in_the_budget_with_a_fixed_floor(
            (w, sizes, frac) in arb_problem(), tau in 0.05f64..2.0, step in 1u64..20,
        ) {
            // floor_ratio = 0 keeps the floor fixed; then x(B) is monotone exactly and
            // the rounded quotas lose at most one row (largest remainder's Alabama paradox).
            let total: u64 = sizes.iter().sum();
            let b = floor_fraction(frac, total);
            let b2 = (b + step).min(total);
            let p = shares(&w, ShareRule::Softmax, tau).unwrap();
            let a = allocate(&p, &sizes, b, 0.0).unwrap();
            let c = allocate(&p, &sizes, b2, 0.0).unwrap();
            for j in 0..sizes.len() {
                prop_assert!(c.continuous[j] >= a.continuous[j] - 1e-6, "cluster {j}: {} -> {}", a.continuous[j], c.continuous[j]);
                prop_assert!(c.quotas[j] + 1 >= a.quotas[j]);
            }
        }

        #[test]
        fn within_one_of_the_reference_rint(
            k in 1usize..60, base in 20u64..400, seed in 0u64..10_000, frac in 0.01f64..=1.0,
            ratio in 0.001f64..=0.5, tau in 0.1f64..1.0,
        ) {
            // Sizes within ±25 % of a base and a floor of at most half the uniform share, so
            // no cluster is at or below the floor m (where the reference's min(m, n − 1)
            // differs from dprune's min(m, n)); some clusters empty. ratio > 0: at 0 the
            // reference uses a floor of 1.
            let mut r = crate::rng::Rng::new(seed);
            let sizes: Vec<u64> = (0..k)
                .map(|_| if r.below(10) == 0 { 0 } else { base * 3 / 4 + r.below(base / 2 + 1) })
                .collect();
            let w: Vec<f64> = (0..k).map(|_| r.next_f64() * 0.5).collect();
            let total: u64 = sizes.iter().sum();
            let b = floor_fraction(frac, total);
            let p = shares(&w, ShareRule::Softmax, tau).unwrap();
            let ours = allocate(&p, &sizes, b, ratio).unwrap();
            let theirs = reference_quotas(&p, &sizes, b, ratio);
            for (j, (&q, &t)) in ours.quotas.iter().zip(&theirs).enumerate() {
                prop_assert!((q as i64 - t).abs() <= 1, "cluster {j}: {q} vs {t}");
            }
            prop_assert_eq!(ours.quotas.iter().sum::<u64>(), b);
        }
    }
}
