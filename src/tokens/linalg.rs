//! Small dense kernels shared by the reducers: unit rows, cosine Gram matrices (child module
//! `gram`), top-k with index tie-break, percentiles (numpy's linear rule) and Jacobi
//! eigenvalues for numerical rank.
//!
//! Products go through ndarray's `dot` / `general_mat_mul` (GEMM), except the cosine Gram,
//! which has its own FMA microkernels; nothing here loops over token pairs when a matrix
//! product does the job.

use ndarray::{Array2, ArrayView2};

use super::Precision;
use crate::distance::{PackedBf16, PackedRows, dot_batch_bf16, dot_batch_rows};
use crate::{Error, Result};

mod gram;

pub(crate) use gram::cosine_gram;
#[cfg(test)]
pub(crate) use gram::gram;

/// Rows scaled to unit L2 norm (zero rows stay zero): the tests' oracle for the packed paths.
///
/// # Errors
/// [`Error::InvalidParam`] naming `what` when a row holds a NaN or infinity.
#[cfg(test)]
pub(crate) fn unit_rows(x: ArrayView2<'_, f32>, what: &'static str) -> Result<Array2<f32>> {
    let norms = row_norms(x, what)?;
    Ok(scaled_rows(x, &norms))
}

/// Cosine similarities `[rows_a.len(), rows_b.len()]` between selected rows of `x`, in the
/// given precision ([`Precision::resolve`] decides `Auto`): each side's rows times their
/// inverse norms (rows of norm 0 unscaled), scaled while the kernel packs them, then one
/// product — f32 ([`crate::distance::dot_batch_rows`]), or rounded to bf16 with f32 sums
/// ([`crate::distance::dot_batch_bf16`], the same bits on every CPU).
///
/// # Errors
/// [`Error::InvalidParam`] naming `what` when a row holds a NaN or infinity.
pub(crate) fn cosine_between(
    x: ArrayView2<'_, f32>,
    rows_a: &[usize],
    rows_b: &[usize],
    precision: Precision,
    what: &'static str,
) -> Result<Array2<f32>> {
    let norms = row_norms(x, what)?;
    let (m, k) = (rows_a.len(), rows_b.len());
    if x.ncols() == 0 || m == 0 || k == 0 {
        return Ok(Array2::zeros((m, k)));
    }
    let x = x.as_standard_layout();
    let flat = x.as_slice().expect("standard layout is contiguous");
    let dim = x.ncols();
    let inv = |rows: &[usize]| -> Vec<f32> {
        rows.iter()
            .map(|&j| if norms[j] > 0.0 { 1.0 / norms[j] } else { 1.0 })
            .collect()
    };
    let mut out = vec![0f32; m * k];
    match precision.resolve() {
        Precision::Bf16 => {
            let packed = PackedBf16::new(flat, dim, rows_b, &inv(rows_b));
            dot_batch_bf16(flat, rows_a, &inv(rows_a), &packed, &mut out);
        }
        _ => {
            let packed = PackedRows::from_rows(flat, dim, rows_b, &inv(rows_b));
            dot_batch_rows(flat, rows_a, &inv(rows_a), &packed, &mut out);
        }
    }
    Ok(Array2::from_shape_vec((m, k), out).expect("sized above"))
}

/// The L2 norm of every row.
///
/// # Errors
/// [`Error::InvalidParam`] naming `what` when a row holds a NaN or infinity.
fn row_norms(x: ArrayView2<'_, f32>, what: &'static str) -> Result<Vec<f32>> {
    let x = x.as_standard_layout();
    let norms2 = match x.as_slice() {
        Some(flat) if x.ncols() > 0 => crate::distance::row_norms2(flat, x.ncols()),
        _ => vec![0.0; x.nrows()],
    };
    norms2
        .into_iter()
        .enumerate()
        .map(|(j, n2)| {
            let norm = n2.sqrt();
            if norm.is_finite() {
                Ok(norm)
            } else {
                Err(Error::param(
                    what,
                    format!("row {j} holds a NaN or infinite value (or overflows)"),
                ))
            }
        })
        .collect()
}

/// Each row divided by its norm from [`row_norms`] (rows of norm 0 unchanged).
fn scaled_rows(x: ArrayView2<'_, f32>, norms: &[f32]) -> Array2<f32> {
    let mut out = x.to_owned();
    for (mut row, &norm) in out.rows_mut().into_iter().zip(norms) {
        if norm > 0.0 {
            row.mapv_inplace(|v| v / norm);
        }
    }
    out
}

/// Lanes of the multi-accumulator reductions below (R18: independent accumulators vectorise).
const LANES: usize = 16;

/// Maximum of a slice (`-inf` when empty), with [`LANES`] independent accumulators.
#[inline]
pub(crate) fn max_lanes(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    rest.iter()
        .fold(acc.iter().copied().fold(f32::NEG_INFINITY, f32::max), |m, &x| m.max(x))
}

/// Sum of a slice with [`LANES`] independent accumulators.
#[inline]
pub(crate) fn sum_lanes(v: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// The first index of the largest value of `v` (no NaN; 0 when `v` is empty or all `-inf`),
/// the index a sequential `if v[j] > v[best]` scan finds, with [`LANES`] independent maxima
/// so it vectorises.
pub(crate) fn argmax_first(v: &[f32]) -> usize {
    let mut best = [f32::NEG_INFINITY; LANES];
    let mut at = [u32::MAX; LANES];
    let (chunks, rest) = v.as_chunks::<LANES>();
    for (c, chunk) in chunks.iter().enumerate() {
        let j0 = (c * LANES) as u32;
        for l in 0..LANES {
            // strict: a lane keeps its first maximum
            if chunk[l] > best[l] {
                best[l] = chunk[l];
                at[l] = j0 + l as u32;
            }
        }
    }
    let mut pick = (f32::NEG_INFINITY, u32::MAX);
    for (l, &x) in rest.iter().enumerate() {
        if x > pick.0 {
            pick = (x, (chunks.len() * LANES + l) as u32);
        }
    }
    for (&x, &j) in best.iter().zip(&at) {
        if x > pick.0 || (x == pick.0 && j < pick.1) {
            pick = (x, j);
        }
    }
    if pick.1 == u32::MAX { 0 } else { pick.1 as usize }
}

/// Total order "higher score first, then lower index".
#[inline]
pub(crate) fn desc_by_score(scores: &[f32], a: usize, b: usize) -> std::cmp::Ordering {
    scores[b].total_cmp(&scores[a]).then(a.cmp(&b))
}

/// Indices of the `k` highest scores (ties: lower index), returned ascending.
pub(crate) fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    top_k_of((0..scores.len()).collect(), scores, k)
}

/// The `k` best of `candidates` by `scores` (ties: lower index), returned ascending.
pub(crate) fn top_k_of(mut candidates: Vec<usize>, scores: &[f32], k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, |&a, &b| desc_by_score(scores, a, b));
        candidates.truncate(k);
    }
    candidates.sort_unstable();
    candidates
}

/// Percentile `q ∈ [0, 1]` of ascending `sorted` by linear interpolation (numpy's default).
pub(crate) fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 1 {
        return sorted[0];
    }
    let pos = q * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let frac = pos - lo as f64;
    sorted[lo] + frac * (sorted[hi] - sorted[lo])
}

/// Maximum Jacobi sweeps (cyclic Jacobi converges quadratically; 30 is generous).
const JACOBI_MAX_SWEEPS: usize = 30;

/// Eigenvalues of a symmetric matrix by the cyclic Jacobi method (f64).
pub(crate) fn symmetric_eigenvalues(a: Array2<f64>) -> Vec<f64> {
    let n = a.nrows();
    let mut a: Vec<f64> = a.iter().copied().collect(); // logical row-major order
    let total: f64 = a.iter().map(|v| v * v).sum();
    for _ in 0..JACOBI_MAX_SWEEPS {
        let mut off = 0.0;
        for p in 0..n {
            for q in p + 1..n {
                off += a[p * n + q] * a[p * n + q];
            }
        }
        if off <= 1e-30 * total || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let sn = t * c;
                // A <- A·P (columns p, q), then Pᵀ·A (rows p, q).
                for row in a.chunks_exact_mut(n) {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - sn * akq;
                    row[q] = sn * akp + c * akq;
                }
                let (head, tail) = a.split_at_mut(q * n);
                let rp = &mut head[p * n..(p + 1) * n];
                let rq = &mut tail[..n];
                for (x, y) in rp.iter_mut().zip(rq.iter_mut()) {
                    let (apk, aqk) = (*x, *y);
                    *x = c * apk - sn * aqk;
                    *y = sn * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[i * n + i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, s};

    #[test]
    fn top_k_breaks_ties_by_index() {
        let s = [0.5, 0.9, 0.5, 0.1, 0.9];
        assert_eq!(top_k(&s, 2), vec![1, 4]);
        assert_eq!(top_k(&s, 3), vec![0, 1, 4]);
        assert_eq!(top_k(&s, 0), Vec::<usize>::new());
        assert_eq!(top_k(&s, 9), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        let v: Vec<f64> = (1..=9).map(f64::from).collect();
        assert_eq!(percentile_sorted(&v, 0.25), 3.0);
        assert_eq!(percentile_sorted(&v, 0.75), 7.0);
        let w = [1.0, 2.0, 4.0, 8.0];
        assert!((percentile_sorted(&w, 0.75) - 5.0).abs() < 1e-12); // pos 2.25
    }

    #[test]
    fn lane_reductions_match_iterators() {
        let v: Vec<f32> = (0..37).map(|i| ((i * 13) % 17) as f32 - 8.0).collect();
        assert_eq!(max_lanes(&v), 8.0);
        assert_eq!(sum_lanes(&v), v.iter().sum::<f32>());
        assert_eq!(max_lanes(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn argmax_first_matches_the_sequential_scan() {
        let scan = |v: &[f32]| {
            let mut b = 0;
            for (j, &x) in v.iter().enumerate() {
                if x > v[b] {
                    b = j;
                }
            }
            b
        };
        for n in [0usize, 1, 5, 15, 16, 17, 40, 288] {
            for seed in 0..6u64 {
                // few distinct values, so maxima tie across lanes and in the remainder
                let v: Vec<f32> = (0..n).map(|j| ((j as u64 * 7 + seed * 13) % 5) as f32 - 2.0).collect();
                assert_eq!(argmax_first(&v), scan(&v), "n {n} seed {seed}");
            }
        }
        assert_eq!(argmax_first(&[f32::NEG_INFINITY; 20]), 0);
        assert_eq!(argmax_first(&[-0.0, 0.0, -0.0]), 0);
    }

    #[test]
    fn jacobi_eigenvalues_of_known_matrix() {
        let a = array![[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 5.0]];
        let mut ev = symmetric_eigenvalues(a);
        ev.sort_by(f64::total_cmp);
        for (got, want) in ev.iter().zip([1.0, 3.0, 5.0]) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
    }

    #[test]
    fn unit_rows_rejects_nan() {
        let x = array![[3.0f32, 4.0], [0.0, 0.0], [f32::NAN, 1.0]];
        assert!(unit_rows(x.view(), "tokens").is_err());
        let y = unit_rows(x.slice(s![..2, ..]), "tokens").unwrap();
        assert_eq!(y, array![[0.6, 0.8], [0.0, 0.0]]);
    }
}
