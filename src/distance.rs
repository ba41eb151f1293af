//! Distance kernels: dot products, norms and the blocked matrix product
//! that every nearest-centroid search in dprune is built on.
//!
//! Squared Euclidean distance is computed as ‖x‖² − 2x·c + ‖c‖², so a block
//! of rows against all centroids is one matrix product (GEMM) instead of
//! per-pair loops. Kernels are single-threaded; callers parallelise over
//! fixed-size row chunks, which keeps every sum in a fixed order and makes
//! results independent of the thread count.

use std::sync::OnceLock;

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

#[cfg(target_arch = "x86_64")]
mod avx512;
mod bf16;
mod bound;
mod int8;
mod pairs;
mod rowwise;
mod sketch;

pub use bf16::{
    Bf16Kernel, PackedBf16, bf16_kernel, bf16_to_f32, certified_bf16_pays, dot_batch_bf16, dot_batch_bf16_cols, to_bf16,
};
pub use bound::{Bf16Bound, Bf16Norms, f32_error_per_norm, norm_upper_bound};
pub use int8::{
    I8Bound, I8Norms, I8Rows, Int8Kernel, MAX_INT8_DIM, PackedI8, Quantized, RowSource, TileSkip, dot_batch_i8,
    fill_skipped_tiles, int8_kernel,
};
pub use pairs::{contender_cut, contender_cut_second, fast_pair_dots, kernel_pair_dots};
pub(crate) use rowwise::{PREFETCH_ROWS_AHEAD, add_rows_fixed, prefetch_row};
pub use rowwise::{axpy, min_l2_update, row_norms2};
pub use sketch::{I8Sketch, l2_rel_error};

/// Independent accumulators per kernel, so LLVM can vectorise without
/// reordering a single serial sum (16 f32 = two AVX2 registers).
const LANES: usize = 16;

/// Dot product of two equal-length slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    acc.iter().sum::<f32>() + s
}

/// Squared L2 norm.
#[inline]
pub fn norm2(a: &[f32]) -> f32 {
    dot(a, a)
}

/// Squared Euclidean distance.
#[inline(always)]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let mut s = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        s += (x - y) * (x - y);
    }
    acc.iter().sum::<f32>() + s
}

/// The precision of the low-precision products of the certified nearest-centroid
/// search (`cluster::CertifiedSearch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowPrecision {
    /// bfloat16 inputs, f32 sums ([`dot_batch_bf16`]).
    Bf16,
    /// int8 inputs, exact integer sums ([`dot_batch_i8`]).
    Int8,
}

/// The precision in which the certified search pays on this CPU for rows of `dim`
/// values: int8 where the AVX-512 VNNI kernel runs (twice the bf16 rate), else bf16
/// where the AVX-512 BF16 kernel runs, else none (the f32 search is faster there).
/// `DPRUNE_CERTIFIED=0` turns it off; `DPRUNE_CERTIFIED=bf16` keeps to bf16.
pub fn certified_precision(dim: usize) -> Option<LowPrecision> {
    let var = std::env::var("DPRUNE_CERTIFIED").unwrap_or_default();
    if var == "0" {
        return None;
    }
    if var != "bf16" && dim <= MAX_INT8_DIM && int8_kernel() == Int8Kernel::Avx512Vnni {
        return Some(LowPrecision::Int8);
    }
    certified_bf16_pays().then_some(LowPrecision::Bf16)
}

/// Scales `a` to unit L2 norm in place; returns the original norm (0 leaves
/// `a` unchanged).
#[inline]
pub fn normalize(a: &mut [f32]) -> f32 {
    let n = norm2(a).sqrt();
    if n > 0.0 && n.is_finite() {
        let inv = 1.0 / n;
        a.iter_mut().for_each(|v| *v *= inv);
    }
    n
}

/// [`normalize`] from `x` into `y` (same length), leaving `x` as it is: the
/// same operations, so `y` holds the same bits `normalize` would leave in `x`.
/// A zero or non-finite norm copies `x` unchanged.
///
/// # Panics
/// If the lengths differ.
pub fn normalize_into(x: &[f32], y: &mut [f32]) -> f32 {
    assert_eq!(x.len(), y.len(), "normalize_into: lengths");
    let n = norm2(x).sqrt();
    if n > 0.0 && n.is_finite() {
        let inv = 1.0 / n;
        y.iter_mut().zip(x).for_each(|(o, &v)| *o = v * inv);
    } else {
        y.copy_from_slice(x);
    }
    n
}

/// Dot product in f64, the slow oracle for tests and benches.
pub fn dot_reference(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Which matrix-product kernel this process uses: AVX-512 where the CPU has
/// it, else the portable one (ndarray's). Decided once, never per call, so a
/// row's products never depend on the size of the block it is in.
/// `DPRUNE_KERNEL=portable` forces the portable kernel (for comparisons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Register-tiled AVX-512 kernel (the private `avx512` module).
    Avx512,
    /// ndarray's `general_mat_mul` (matrixmultiply).
    Portable,
}

/// The kernel in use (see [`Kernel`]).
pub fn kernel() -> Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    *K.get_or_init(|| {
        let forced = std::env::var("DPRUNE_KERNEL").is_ok_and(|v| v == "portable");
        #[cfg(target_arch = "x86_64")]
        if !forced && avx512::available() {
            return Kernel::Avx512;
        }
        let _ = forced;
        Kernel::Portable
    })
}

/// Right-hand rows prepared once for many [`dot_batch_packed`] calls (the
/// centroids of a search): packed for the kernel in use.
#[derive(Debug, Clone)]
pub struct PackedRows {
    data: Vec<f32>,
    k: usize,
    dim: usize,
}

impl PackedRows {
    /// Packs `k = c.len() / dim` row-major rows.
    ///
    /// # Panics
    /// If `c.len()` is not a multiple of `dim`.
    pub fn new(c: &[f32], dim: usize) -> Self {
        assert!(dim > 0 && c.len().is_multiple_of(dim), "PackedRows: c is not k x dim");
        let data = match kernel() {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::pack(c, dim),
            _ => c.to_vec(),
        };
        PackedRows {
            data,
            k: c.len() / dim,
            dim,
        }
    }

    /// Packs the rows `rows` of the row-major `x` (`dim` columns), row `rows[j]` multiplied
    /// by `scale[j]` (one f32 multiply per value, e.g. the inverse norm for unit rows): the
    /// same packed values as [`PackedRows::new`] on the scaled rows gathered first, without
    /// the gathered copy.
    ///
    /// # Panics
    /// If `x` is not a multiple of `dim`, a row index is out of range, or `scale` is not one
    /// value per row.
    pub fn from_rows(x: &[f32], dim: usize, rows: &[usize], scale: &[f32]) -> Self {
        assert!(dim > 0 && x.len().is_multiple_of(dim), "PackedRows: x is not n x dim");
        assert_eq!(rows.len(), scale.len(), "PackedRows: one scale per row");
        let data = match kernel() {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::pack_rows(avx512::Rows::selected(x, dim, rows, scale)),
            _ => gather_scaled(x, dim, rows, scale),
        };
        PackedRows {
            data,
            k: rows.len(),
            dim,
        }
    }

    /// Number of rows.
    pub fn k(&self) -> usize {
        self.k
    }
}

/// Column ranges of [`dot_batch_packed_cols`] start at multiples of this
/// (the width of one packed block).
pub const PACKED_COL_ALIGN: usize = 32;

/// [`dot_batch_packed`] against the packed rows `cols` only, so a large
/// packed set can be swept in cache-sized tiles:
/// `out[i * w + (j - cols.start)] = x_i · c_j` with `w = cols.len()`,
/// bit-identical to the same entries of `dot_batch_packed`.
///
/// # Panics
/// If the lengths do not match, `cols` reaches past the packed rows, or
/// `cols.start` is not a multiple of [`PACKED_COL_ALIGN`].
pub fn dot_batch_packed_cols(x: &[f32], c: &PackedRows, cols: std::ops::Range<usize>, out: &mut [f32]) {
    let dim = c.dim;
    let m = x.len() / dim;
    let w = cols.end.saturating_sub(cols.start);
    assert_eq!(x.len(), m * dim, "dot_batch_packed_cols: x is not m x dim");
    assert!(cols.end <= c.k, "dot_batch_packed_cols: columns past the packed rows");
    assert_eq!(
        cols.start % PACKED_COL_ALIGN,
        0,
        "dot_batch_packed_cols: unaligned start"
    );
    assert_eq!(out.len(), m * w, "dot_batch_packed_cols: out is not m x cols");
    if m == 0 || w == 0 {
        return;
    }
    match kernel() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            let nr = avx512::NR;
            let b = &c.data[cols.start / nr * dim * nr..cols.end.div_ceil(nr) * dim * nr];
            // SAFETY: AVX-512F checked by kernel(); `b` is whole packed blocks
            // (the start is block-aligned) holding columns `cols`; lengths checked above.
            unsafe { avx512::dot_batch(x, b, w, dim, out) }
        }
        _ => portable(x, &c.data[cols.start * dim..cols.end * dim], dim, m, w, out),
    }
}

/// [`dot_batch`] against rows packed once by [`PackedRows::new`]:
/// `out[i * k + j] = x_i · c_j`, bit-identical to `dot_batch(x, c, ..)`.
///
/// # Panics
/// If the lengths do not match.
pub fn dot_batch_packed(x: &[f32], c: &PackedRows, out: &mut [f32]) {
    let (dim, k) = (c.dim, c.k);
    let m = x.len() / dim;
    assert_eq!(x.len(), m * dim, "dot_batch_packed: x is not m x dim");
    assert_eq!(out.len(), m * k, "dot_batch_packed: out is not m x k");
    if m == 0 || k == 0 {
        return;
    }
    match kernel() {
        // SAFETY: the kernel was chosen because the CPU has AVX-512F; `c` was
        // packed for it with this dim and k; lengths are checked above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { avx512::dot_batch(x, &c.data, k, dim, out) },
        _ => portable(x, &c.data, dim, m, k, out),
    }
}

/// [`dot_batch_packed`] for selected, scaled left-hand rows:
/// `out[i * k + j] = (x_{rows[i]} · scale[i]) · c_j`, bit-identical to `dot_batch_packed` on
/// the scaled rows gathered first (the scaling happens while the kernel packs its left
/// blocks, so nothing else is copied).
///
/// # Panics
/// If the lengths do not match, a row index is out of range, or `scale` is not one value
/// per row.
pub fn dot_batch_rows(x: &[f32], rows: &[usize], scale: &[f32], c: &PackedRows, out: &mut [f32]) {
    let (dim, k, m) = (c.dim, c.k, rows.len());
    assert!(x.len().is_multiple_of(dim), "dot_batch_rows: x is not n x dim");
    assert_eq!(scale.len(), m, "dot_batch_rows: one scale per row");
    assert_eq!(out.len(), m * k, "dot_batch_rows: out is not m x k");
    if m == 0 || k == 0 {
        return;
    }
    match kernel() {
        // SAFETY: AVX-512F checked by kernel(); `c` was packed for it with this dim and k;
        // lengths are checked above (and row indices by `Rows::selected`).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe {
            avx512::dot_batch_rows(avx512::Rows::selected(x, dim, rows, scale), &c.data, k, out)
        },
        _ => portable(&gather_scaled(x, dim, rows, scale), &c.data, dim, m, k, out),
    }
}

/// The rows `rows` of `x`, row `rows[i]` times `scale[i]`, gathered row-major.
fn gather_scaled(x: &[f32], dim: usize, rows: &[usize], scale: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * dim);
    for (&r, &s) in rows.iter().zip(scale) {
        out.extend(x[r * dim..(r + 1) * dim].iter().map(|v| v * s));
    }
    out
}

/// `out[i * k + j] = x_i · c_j` for `m` rows `x` and `k` rows `c`, both
/// row-major with `dim` columns: one single-threaded GEMM (X·Cᵀ).
///
/// Each output element is accumulated in the same order whatever `m` and `k`
/// are, so a row's results do not depend on which rows share its block.
///
/// # Panics
/// If the slice lengths do not match `m`, `k` and `dim`.
pub fn dot_batch(x: &[f32], c: &[f32], dim: usize, out: &mut [f32]) {
    let m = x.len() / dim.max(1);
    let k = c.len() / dim.max(1);
    assert_eq!(x.len(), m * dim, "dot_batch: x is not m x dim");
    assert_eq!(c.len(), k * dim, "dot_batch: c is not k x dim");
    assert_eq!(out.len(), m * k, "dot_batch: out is not m x k");
    if m == 0 || k == 0 {
        return;
    }
    match kernel() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            // Pack the smaller side: x·c and c·x are the same fused chains
            // (multiplication commutes exactly), so either gives identical values.
            if m >= k {
                // SAFETY: AVX-512F checked by kernel(); packed with this dim and k.
                unsafe { avx512::dot_batch(x, &avx512::pack(c, dim), k, dim, out) }
            } else {
                let mut t = vec![0f32; k * m];
                // SAFETY: as above, with the roles of x and c swapped.
                unsafe { avx512::dot_batch(c, &avx512::pack(x, dim), m, dim, &mut t) }
                for (j, col) in t.chunks_exact(m).enumerate() {
                    for (i, &v) in col.iter().enumerate() {
                        out[i * k + j] = v;
                    }
                }
            }
        }
        _ => portable(x, c, dim, m, k, out),
    }
}

/// ndarray's GEMM (matrixmultiply), single-threaded.
fn portable(x: &[f32], c: &[f32], dim: usize, m: usize, k: usize, out: &mut [f32]) {
    let a = ArrayView2::from_shape((m, dim), x).expect("shape checked by the caller");
    let b = ArrayView2::from_shape((k, dim), c).expect("shape checked by the caller");
    let mut o = ArrayViewMut2::from_shape((m, k), out).expect("shape checked by the caller");
    general_mat_mul(1.0, &a, &b.t(), 0.0, &mut o);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vecs(len: std::ops::Range<usize>) -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
        len.prop_flat_map(|n| {
            (
                proptest::collection::vec(-10f32..10f32, n),
                proptest::collection::vec(-10f32..10f32, n),
            )
        })
    }

    proptest! {
        #[test]
        fn dot_matches_f64_reference((a, b) in vecs(0..300)) {
            let fast = dot(&a, &b) as f64;
            let slow = dot_reference(&a, &b);
            let scale: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum::<f64>() + 1.0;
            prop_assert!((fast - slow).abs() <= 1e-5 * scale, "fast {fast} slow {slow}");
        }

        #[test]
        fn l2_matches_f64_reference((a, b) in vecs(0..300)) {
            let fast = l2_squared(&a, &b) as f64;
            let slow: f64 = a.iter().zip(&b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
            prop_assert!((fast - slow).abs() <= 1e-5 * (slow + 1.0));
        }

        #[test]
        fn gemm_identity_matches_reference(
            m in 1usize..20, k in 1usize..20, dim in 1usize..40, seed in 0u64..1000
        ) {
            let mut rng = crate::rng::Rng::new(seed);
            let x: Vec<f32> = (0..m * dim).map(|_| rng.normal() as f32).collect();
            let c: Vec<f32> = (0..k * dim).map(|_| rng.normal() as f32).collect();
            let mut out = vec![0f32; m * k];
            dot_batch(&x, &c, dim, &mut out);
            for i in 0..m {
                for j in 0..k {
                    let xi = &x[i * dim..(i + 1) * dim];
                    let cj = &c[j * dim..(j + 1) * dim];
                    let slow = dot_reference(xi, cj);
                    // ‖x‖² − 2x·c + ‖c‖² must equal the direct squared distance.
                    let d_gemm = norm2(xi) as f64 - 2.0 * out[i * k + j] as f64 + norm2(cj) as f64;
                    let d_ref: f64 = xi.iter().zip(cj).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
                    prop_assert!((out[i * k + j] as f64 - slow).abs() <= 1e-4 * (dim as f64));
                    prop_assert!((d_gemm - d_ref).abs() <= 1e-3 * (dim as f64));
                }
            }
        }
    }

    proptest! {
        #[test]
        fn packed_and_unpacked_products_are_identical(
            m in 1usize..40, k in 1usize..80, dim in 1usize..70, seed in 0u64..1000
        ) {
            let mut rng = crate::rng::Rng::new(seed);
            let x: Vec<f32> = (0..m * dim).map(|_| rng.normal() as f32).collect();
            let c: Vec<f32> = (0..k * dim).map(|_| rng.normal() as f32).collect();
            let (mut a, mut b) = (vec![0f32; m * k], vec![0f32; m * k]);
            dot_batch(&x, &c, dim, &mut a);
            dot_batch_packed(&x, &PackedRows::new(&c, dim), &mut b);
            prop_assert_eq!(&a, &b);
            // Transposed roles give the transposed values exactly.
            let mut t = vec![0f32; k * m];
            dot_batch(&c, &x, dim, &mut t);
            for i in 0..m {
                for j in 0..k {
                    prop_assert_eq!(a[i * k + j].to_bits(), t[j * m + i].to_bits());
                }
            }
            // The portable kernel agrees to rounding.
            let mut p = vec![0f32; m * k];
            portable(&x, &c, dim, m, k, &mut p);
            for (u, v) in a.iter().zip(&p) {
                prop_assert!((u - v).abs() <= 1e-4 * (dim as f32).sqrt() * 4.0, "{u} vs {v}");
            }
        }
    }

    #[test]
    fn selected_scaled_rows_equal_gathered_rows_bit_for_bit() {
        let (n, dim) = (41, 67);
        let mut rng = crate::rng::Rng::new(5);
        let x: Vec<f32> = (0..n * dim).map(|_| rng.normal() as f32).collect();
        let left = [7usize, 0, 40, 13, 13, 2, 9, 21, 30, 31, 32, 1, 5, 8];
        let right: Vec<usize> = (0..n).rev().step_by(2).collect();
        let sl: Vec<f32> = left.iter().map(|&r| 1.0 / (1.0 + r as f32)).collect();
        let sr: Vec<f32> = right.iter().map(|&r| 0.5 + r as f32 * 0.1).collect();
        let mut got = vec![0f32; left.len() * right.len()];
        dot_batch_rows(&x, &left, &sl, &PackedRows::from_rows(&x, dim, &right, &sr), &mut got);
        let gl = gather_scaled(&x, dim, &left, &sl);
        let gr = gather_scaled(&x, dim, &right, &sr);
        let mut want = vec![0f32; got.len()];
        dot_batch_packed(&gl, &PackedRows::new(&gr, dim), &mut want);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
        let r = std::panic::catch_unwind(|| PackedRows::from_rows(&x, dim, &[n], &[1.0]));
        assert!(r.is_err(), "an out-of-range row is refused");
    }

    #[test]
    fn column_ranges_of_packed_products_are_bit_identical() {
        let (m, k, dim) = (13, 150, 37);
        let mut rng = crate::rng::Rng::new(3);
        let x: Vec<f32> = (0..m * dim).map(|_| rng.normal() as f32).collect();
        let c: Vec<f32> = (0..k * dim).map(|_| rng.normal() as f32).collect();
        let p = PackedRows::new(&c, dim);
        let mut all = vec![0f32; m * k];
        dot_batch_packed(&x, &p, &mut all);
        for (a, b) in [(0, 150), (32, 64), (64, 150), (128, 129), (96, 96)] {
            let w = b - a;
            let mut part = vec![0f32; m * w];
            dot_batch_packed_cols(&x, &p, a..b, &mut part);
            for i in 0..m {
                assert_eq!(
                    &part[i * w..(i + 1) * w],
                    &all[i * k + a..i * k + b],
                    "rows {a}..{b}, row {i}"
                );
            }
        }
        let r = std::panic::catch_unwind(|| dot_batch_packed_cols(&x, &p, 1..3, &mut [0f32; 26]));
        assert!(r.is_err(), "an unaligned start is refused");
    }

    #[test]
    fn kernel_is_avx512_where_the_cpu_has_it() {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") && std::env::var("DPRUNE_KERNEL").is_err() {
            assert_eq!(kernel(), Kernel::Avx512);
        }
    }

    #[test]
    fn gemm_row_result_independent_of_block_composition() {
        let dim = 67;
        let mut rng = crate::rng::Rng::new(9);
        let x: Vec<f32> = (0..37 * dim).map(|_| rng.normal() as f32).collect();
        let c: Vec<f32> = (0..13 * dim).map(|_| rng.normal() as f32).collect();
        let mut all = vec![0f32; 37 * 13];
        dot_batch(&x, &c, dim, &mut all);
        for i in 0..37 {
            let mut one = vec![0f32; 13];
            dot_batch(&x[i * dim..(i + 1) * dim], &c, dim, &mut one);
            assert_eq!(&all[i * 13..(i + 1) * 13], &one[..], "row {i}");
        }
    }

    #[test]
    fn normalize_unit_and_zero() {
        let mut a = vec![3.0, 4.0];
        assert_eq!(normalize(&mut a), 5.0);
        assert!((norm2(&a) - 1.0).abs() < 1e-6);
        let mut z = vec![0.0; 3];
        assert_eq!(normalize(&mut z), 0.0);
        assert_eq!(z, vec![0.0; 3]);
    }

    #[test]
    fn normalize_into_matches_normalize_bit_for_bit() {
        let mut rng = crate::rng::Rng::new(7);
        for len in [1usize, 3, 16, 383, 384] {
            let x: Vec<f32> = (0..len).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
            let mut a = x.clone();
            let mut y = vec![f32::NAN; len];
            assert_eq!(normalize(&mut a).to_bits(), normalize_into(&x, &mut y).to_bits());
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
        for bad in [vec![0.0f32; 4], vec![1.0, f32::NAN, 0.0], vec![f32::INFINITY, 1.0]] {
            let mut y = vec![5.0f32; bad.len()];
            normalize_into(&bad, &mut y);
            assert_eq!(
                bad.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}
