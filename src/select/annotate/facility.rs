//! Facility location (the MFL baseline of the vote-k repository):
//! F(L) = Σ_j max(floor, max_{ℓ∈L} cos(j, ℓ)), maximised by lazy greedy.
//!
//! F is monotone submodular, so lazy greedy (CELF) picks what plain greedy
//! picks. Unlike the reference, selected rows are never picked again, the
//! greedy order is kept (not sorted by id). The dense version holds the
//! N × N similarity matrix, so it is used for small pools only; the sparse
//! one (large pools) only knows each row's `k` nearest neighbours, every
//! other similarity counting as `floor`.

use std::cell::RefCell;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::knn::KnnGraph;
use crate::distance::dot_batch;
use crate::select::annotate::lazy_greedy;
use crate::{Error, Result};

/// The reference's floor (it starts from "max similarity" −1).
pub const DEFAULT_FACILITY_FLOOR: f32 = -1.0;
/// Pools with more rows than this use the sparse top-k version (the dense
/// one holds n² similarities: 64 MiB at this size).
pub const DEFAULT_SPARSE_ABOVE: usize = 4_096;
/// Neighbours per row of the sparse version.
pub const DEFAULT_SPARSE_K: usize = 100;
/// Similarities per block of the initial pass.
const BLOCK_VALUES: usize = 1 << 22;

/// Facility-location settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FacilityParams {
    /// Value of a row no selected row covers, in [−1, 0]; defaults to
    /// [`DEFAULT_FACILITY_FLOOR`] (0 is the common variant).
    pub floor: f32,
    /// Row count above which the sparse version runs; defaults to [`DEFAULT_SPARSE_ABOVE`].
    pub sparse_above: usize,
    /// Neighbours per row in the sparse version; defaults to [`DEFAULT_SPARSE_K`].
    pub sparse_k: usize,
}

impl Default for FacilityParams {
    fn default() -> Self {
        FacilityParams {
            floor: DEFAULT_FACILITY_FLOOR,
            sparse_above: DEFAULT_SPARSE_ABOVE,
            sparse_k: DEFAULT_SPARSE_K,
        }
    }
}

impl FacilityParams {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(-1.0..=0.0).contains(&self.floor) {
            return Err(Error::param(
                "--mfl-floor",
                format!("{} is outside [-1, 0]", self.floor),
            ));
        }
        if self.sparse_k == 0 {
            return Err(Error::param("--mfl-sparse-k", "must be at least 1"));
        }
        Ok(())
    }
}

/// Σ_j max(0, s_j − m_j), in row order, in f64.
#[inline]
fn gain_of(sims: &[f32], m: &[f32]) -> f64 {
    sims.iter().zip(m).map(|(&s, &m)| (s as f64 - m as f64).max(0.0)).sum()
}

/// Dense lazy greedy facility location on `rows` (`n × dim`, unit
/// vectors): up to `budget` rows in greedy order with their gains.
///
/// Holds the `n × n` similarity matrix (4·n² bytes; [`crate::select::annotate::select`]
/// switches to [`facility_sparse`] above [`FacilityParams::sparse_above`] rows),
/// computed once by blocked matrix products, so every evaluation reads the
/// same numbers.
pub fn facility_location(rows: &[f32], dim: usize, budget: usize, floor: f32) -> (Vec<u32>, Vec<f64>) {
    let n = rows.len() / dim.max(1);
    if n == 0 || budget == 0 {
        return (Vec::new(), Vec::new());
    }
    let block = (BLOCK_VALUES / n).clamp(1, 256);
    let mut sims = vec![0f32; n * n];
    sims.par_chunks_mut(block * n).enumerate().for_each(|(b, out)| {
        let start = b * block;
        let m = out.len() / n;
        dot_batch(&rows[start * dim..(start + m) * dim], rows, dim, out);
    });
    let row = |v: u32| &sims[v as usize * n..(v as usize + 1) * n];
    let m = RefCell::new(vec![floor; n]);
    let cands: Vec<(u32, u64, f64)> = {
        let guard = m.borrow();
        let m: &[f32] = &guard;
        (0..n as u32)
            .into_par_iter()
            .map(|i| (i, i as u64, gain_of(row(i), m)))
            .collect()
    };
    lazy_greedy(
        cands,
        budget,
        |v| gain_of(row(v), &m.borrow()),
        |v| {
            m.borrow_mut().iter_mut().zip(row(v)).for_each(|(m, &s)| *m = m.max(s));
        },
    )
}

/// Sparse lazy greedy facility location on a kNN graph: cos(j, i) is known
/// for i among j's neighbours and for i = j (taken as 1); every other pair
/// counts as `floor`.
pub fn facility_sparse(graph: &KnnGraph, budget: usize, floor: f32) -> (Vec<u32>, Vec<f64>) {
    let n = graph.n();
    let (ptr, src, sim) = graph.in_edges();
    let m = RefCell::new(vec![floor; n]);
    let gain = |v: u32, m: &[f32]| -> f64 {
        let v = v as usize;
        let mut g = (1.0 - m[v] as f64).max(0.0);
        for p in ptr[v]..ptr[v + 1] {
            g += (sim[p] as f64 - m[src[p] as usize] as f64).max(0.0);
        }
        g
    };
    let cands: Vec<(u32, u64, f64)> = {
        let m = m.borrow();
        (0..n as u32).map(|v| (v, v as u64, gain(v, &m))).collect()
    };
    lazy_greedy(
        cands,
        budget,
        |v| gain(v, &m.borrow()),
        |v| {
            let mut m = m.borrow_mut();
            m[v as usize] = 1.0;
            for p in ptr[v as usize]..ptr[v as usize + 1] {
                let j = src[p] as usize;
                m[j] = m[j].max(sim[p]);
            }
        },
    )
}

/// F(L) / N with the given floor: the mean over rows of
/// max(floor, max_{ℓ∈L} cos), for reports. `rows` are unit vectors.
pub fn facility_value(rows: &[f32], dim: usize, selected: &[u32], floor: f32) -> f64 {
    let best = best_similarity(rows, dim, selected);
    best.iter().map(|&b| b.max(floor) as f64).sum::<f64>() / best.len().max(1) as f64
}

/// For every row, max_{ℓ∈L} cos(row, ℓ) (−∞ when L is empty).
pub fn best_similarity(rows: &[f32], dim: usize, selected: &[u32]) -> Vec<f32> {
    let l: Vec<f32> = selected
        .iter()
        .flat_map(|&i| rows[i as usize * dim..(i as usize + 1) * dim].iter().copied())
        .collect();
    let k = selected.len();
    rows.par_chunks(256 * dim)
        .flat_map_iter(|x| {
            let m = x.len() / dim;
            let mut s = vec![0f32; m * k];
            dot_batch(x, &l, dim, &mut s);
            (0..m)
                .map(|r| s[r * k..(r + 1) * k].iter().copied().fold(f32::NEG_INFINITY, f32::max))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::knn::exact_knn;
    use crate::distance::dot_reference;
    use crate::select::annotate::tests::unit_rows;

    /// F(L) = Σ_j max(floor, max_{ℓ∈L} cos), brute force in f64.
    fn f_brute(rows: &[f32], dim: usize, l: &[u32], floor: f64) -> f64 {
        let n = rows.len() / dim;
        (0..n)
            .map(|j| {
                l.iter()
                    .map(|&i| dot_reference(&rows[j * dim..][..dim], &rows[i as usize * dim..][..dim]))
                    .fold(floor, f64::max)
            })
            .sum()
    }

    #[test]
    fn gains_match_brute_force_for_small_pools() {
        for case in 0..30u64 {
            let n = 2 + (case as usize % 11); // N ≤ 12
            let dim = 2 + (case as usize % 4);
            let floor = if case % 2 == 0 { -1.0 } else { 0.0 };
            let rows = unit_rows(n, dim, 500 + case);
            let (order, gains) = facility_location(&rows, dim, n, floor);
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, (0..n as u32).collect::<Vec<_>>(), "case {case}");
            for t in 0..n {
                let before = f_brute(&rows, dim, &order[..t], floor as f64);
                let after = f_brute(&rows, dim, &order[..=t], floor as f64);
                assert!((gains[t] - (after - before)).abs() < 1e-4, "case {case} step {t}");
                // the pick is (up to rounding) the best candidate
                for v in 0..n as u32 {
                    if !order[..t].contains(&v) {
                        let mut l = order[..t].to_vec();
                        l.push(v);
                        let g = f_brute(&rows, dim, &l, floor as f64) - before;
                        assert!(
                            gains[t] >= g - 1e-4,
                            "case {case} step {t}: {v} gains {g} > {}",
                            gains[t]
                        );
                    }
                }
            }
            let fv = facility_value(&rows, dim, &order[..1], floor);
            assert!((fv * n as f64 - f_brute(&rows, dim, &order[..1], floor as f64)).abs() < 1e-4);
        }
    }

    #[test]
    fn sparse_with_every_neighbour_matches_dense() {
        let (n, dim) = (40, 5);
        let rows = unit_rows(n, dim, 77);
        let g = exact_knn(&rows, dim, n - 1).unwrap();
        let (dense, dg) = facility_location(&rows, dim, 15, 0.0);
        let (sparse, sg) = facility_sparse(&g, 15, 0.0);
        assert_eq!(dense, sparse);
        for (a, b) in dg.iter().zip(&sg) {
            assert!((a - b).abs() < 1e-4);
        }
    }
}
