//! Row-wise helpers of k-means and the scoring passes (k-means++'s distance
//! update, the update's sums, axpy, squared norms), each compiled for the
//! widest vectors this CPU has with the same per-element order on every path,
//! so they give the same bits with and without AVX-512.

use super::{Kernel, dot, kernel, l2_squared};

/// `d2[p] = min(d2[p], ‖pts_p − c‖²)` for every row `p` of `pts` (the
/// k-means++ update), compiled for the widest vectors this CPU has; every
/// path gives the same values (the same per-lane sums, no reassociation).
pub fn min_l2_update(pts: &[f32], dim: usize, c: &[f32], d2: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if kernel() == Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
        return unsafe { min_l2_update_avx512(pts, dim, c, d2) };
    }
    min_l2_update_body(pts, dim, c, d2)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn min_l2_update_avx512(pts: &[f32], dim: usize, c: &[f32], d2: &mut [f32]) {
    min_l2_update_body(pts, dim, c, d2)
}

#[inline(always)]
fn min_l2_update_body(pts: &[f32], dim: usize, c: &[f32], d2: &mut [f32]) {
    for (x, v) in pts.chunks_exact(dim).zip(d2.iter_mut()) {
        let dist = l2_squared(x, c);
        if dist < *v {
            *v = dist;
        }
    }
}

/// `acc[d] ± trunc(row[d] · scale[d])` (minus with `subtract`) for each row `i` of
/// `members`: the k-means update's exact sums, in fixed point (integer adds, so
/// the sums do not depend on the order of the rows); compiled for the widest
/// vectors this CPU has (`vcvttps2qq`), the same integers on every path.
///
/// The caller guarantees every `|row[d] · scale[d]|` < 2⁶³ and that the sums
/// cannot overflow (`cluster::kmeans`'s `ExactSums` chooses `scale` so).
pub(crate) fn add_rows_fixed(acc: &mut [i64], data: &[f32], members: &[u32], scale: &[f32], subtract: bool) {
    assert_eq!(acc.len(), scale.len(), "add_rows_fixed: lengths");
    #[cfg(target_arch = "x86_64")]
    if kernel() == Kernel::Avx512 && std::arch::is_x86_feature_detected!("avx512dq") {
        // SAFETY: the CPU has AVX-512F and AVX-512DQ (checked above).
        return unsafe { add_rows_fixed_avx512(acc, data, members, scale, subtract) };
    }
    add_rows_fixed_body(acc, data, members, scale, subtract)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn add_rows_fixed_avx512(acc: &mut [i64], data: &[f32], members: &[u32], scale: &[f32], subtract: bool) {
    add_rows_fixed_body(acc, data, members, scale, subtract)
}

#[inline(always)]
fn add_rows_fixed_body(acc: &mut [i64], data: &[f32], members: &[u32], scale: &[f32], subtract: bool) {
    let dim = acc.len();
    let sign: i64 = if subtract { -1 } else { 1 };
    for (q, &i) in members.iter().enumerate() {
        // Members are scattered over the sample: fetch a row ahead, since the
        // adds themselves wait on memory, not on arithmetic.
        if let Some(&ahead) = members.get(q + PREFETCH_ROWS_AHEAD) {
            prefetch_row(&data[ahead as usize * dim..(ahead as usize + 1) * dim]);
        }
        let x = &data[i as usize * dim..(i as usize + 1) * dim];
        for (a, (&v, &s)) in acc.iter_mut().zip(x.iter().zip(scale)) {
            let t = v * s;
            // The caller's range guarantee (doc); the check keeps a broken one from being UB.
            debug_assert!(t.abs() < 9.2e18, "add_rows_fixed: {t} out of range");
            // SAFETY: `t` is finite and |t| < 2^63 (the caller's guarantee above), so the
            // truncation is defined and equals `t as i64`.
            *a += sign * unsafe { t.to_int_unchecked::<i64>() };
        }
    }
}

/// How far ahead loops over scattered rows ([`add_rows_fixed`], quantizing and
/// rounding rows read by position) prefetch their rows.
pub(crate) const PREFETCH_ROWS_AHEAD: usize = 2;

/// Asks for every cache line of `row` (a hint; no effect on results).
#[inline(always)]
pub(crate) fn prefetch_row(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(16) {
        // SAFETY: prefetching is a hint and never faults; the pointer is in bounds.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// `y += a · x`, element by element (no fused multiply-add, so every path gives the same
/// bits), compiled for the widest vectors this CPU has.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(y.len(), x.len(), "axpy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if kernel() == Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
        return unsafe { axpy_avx512(y, a, x) };
    }
    axpy_body(y, a, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn axpy_avx512(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_body(y, a, x)
}

#[inline(always)]
fn axpy_body(y: &mut [f32], a: f32, x: &[f32]) {
    for (v, &u) in y.iter_mut().zip(x) {
        *v += a * u;
    }
}

/// The squared L2 norm of every `dim`-wide row of `x` (as [`norm2`](super::norm2), same bits), compiled
/// for the widest vectors this CPU has.
pub fn row_norms2(x: &[f32], dim: usize) -> Vec<f32> {
    assert!(dim > 0 && x.len().is_multiple_of(dim), "row_norms2: x is not n x dim");
    #[cfg(target_arch = "x86_64")]
    if kernel() == Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
        return unsafe { row_norms2_avx512(x, dim) };
    }
    row_norms2_body(x, dim)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_norms2_avx512(x: &[f32], dim: usize) -> Vec<f32> {
    row_norms2_body(x, dim)
}

#[inline(always)]
fn row_norms2_body(x: &[f32], dim: usize) -> Vec<f32> {
    x.chunks_exact(dim).map(|r| dot(r, r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn kmeans_helpers_equal_their_plain_loops_bit_for_bit(
            n in 0usize..11, dim in 1usize..70, seed in 0u64..1000
        ) {
            let mut rng = crate::rng::Rng::new(seed);
            let pts: Vec<f32> = (0..n * dim).map(|_| rng.normal() as f32).collect();
            let c: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
            // min_l2_update (AVX-512 where present) = l2_squared per row.
            let start: Vec<f32> = (0..n).map(|p| if p % 3 == 0 { f32::INFINITY } else { dim as f32 }).collect();
            let mut got = start.clone();
            min_l2_update(&pts, dim, &c, &mut got);
            let want: Vec<f32> = start
                .iter()
                .zip(pts.chunks_exact(dim))
                .map(|(&v, x)| v.min(l2_squared(x, &c)))
                .collect();
            prop_assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            // add_rows_fixed = each value scaled and truncated, added (or subtracted) one by one.
            let members: Vec<u32> = (0..n as u32).rev().chain(0..n as u32 / 2).collect();
            let scale: Vec<f32> = (0..dim).map(|d| (2.0f32).powi(40 + (d % 7) as i32)).collect();
            for subtract in [false, true] {
                let mut acc: Vec<i64> = (0..dim as i64).map(|d| d * 3 - 5).collect();
                let mut slow = acc.clone();
                add_rows_fixed(&mut acc, &pts, &members, &scale, subtract);
                for &i in &members {
                    for ((a, &v), &s) in slow.iter_mut().zip(&pts[i as usize * dim..(i as usize + 1) * dim]).zip(&scale) {
                        let q = (v * s) as i64;
                        *a += if subtract { -q } else { q };
                    }
                }
                prop_assert_eq!(acc, slow);
            }
        }
    }
}
