//! Dot products of chosen (row, centroid) pairs, for the certified searches'
//! rechecks: the f32 kernel's own bits pair by pair ([`kernel_pair_dots`]), a
//! faster vectorized dot within γ_d·‖x‖·‖c‖ of the exact one ([`fast_pair_dots`],
//! Higham 2002 §3.1), and the cut that tells which candidates those vectorized
//! dots rule out ([`contender_cut`]).

use super::{Kernel, LANES, dot_batch, kernel};

/// `out[p] = x_i · c_j` for each pair `(i, j)` of `pairs` (rows of the row-major `x` and
/// `c`, `dim` columns), bit-identical to the same entries of [`dot_batch`]: with the
/// AVX-512 kernel, whose every product is one fused multiply-add chain in ascending
/// coordinate order, the same chains run sixteen pairs at a time, one per vector lane; with the
/// portable kernel, each pair is a 1 × 1 [`dot_batch`] (its values do not depend on the
/// shape either). For the few pairs a certified bf16 search leaves to f32.
///
/// # Panics
/// If a row index is out of range or `out` is not one value per pair.
pub fn kernel_pair_dots(x: &[f32], c: &[f32], dim: usize, pairs: &[(u32, u32)], out: &mut [f32]) {
    assert_eq!(out.len(), pairs.len(), "kernel_pair_dots: one output per pair");
    let row = |m: &'_ [f32], i: u32| -> std::ops::Range<usize> {
        let r = i as usize * dim..(i as usize + 1) * dim;
        assert!(r.end <= m.len(), "kernel_pair_dots: row {i} out of range");
        r
    };
    #[cfg(target_arch = "x86_64")]
    if kernel() == Kernel::Avx512 {
        let ptrs = |ps: &[(u32, u32)]| {
            // A short last group repeats its first pair in the lanes left over.
            let mut xs = [std::ptr::null(); CHAINS];
            let mut cs = [std::ptr::null(); CHAINS];
            for q in 0..CHAINS {
                let (i, j) = ps[if q < ps.len() { q } else { 0 }];
                xs[q] = x[row(x, i)].as_ptr();
                cs[q] = c[row(c, j)].as_ptr();
            }
            (xs, cs)
        };
        let mut groups = pairs.chunks(CHAINS).zip(out.chunks_mut(CHAINS)).peekable();
        let mut cur = groups.peek().map(|(ps, _)| ptrs(ps));
        while let (Some((ps, os)), Some((xs, cs))) = (groups.next(), cur.take()) {
            // The next group's rows are fetched while this one runs: its first use of
            // them would otherwise wait on memory (they are often read for the first time).
            let next = groups.peek().map(|(n, _)| ptrs(n));
            // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F; every
            // pointer starts a whole row of dim values (checked by `row`).
            let v = unsafe { fma_chains16(&xs, &cs, next.as_ref(), dim) };
            os.copy_from_slice(&v[..ps.len()]);
            cur = next;
        }
        return;
    }
    let mut one = [0f32];
    for (&(i, j), o) in pairs.iter().zip(out.iter_mut()) {
        dot_batch(&x[row(x, i)], &c[row(c, j)], dim, &mut one);
        *o = one[0];
    }
}

/// `out[p] = x_i · c_j` for each pair `(i, j)` of `pairs` (as [`kernel_pair_dots`]), summed
/// in whatever order vectorizes best: within γ_d·‖x_i‖·‖c_j‖ of the exact dot
/// ([`f32_error_per_norm`](crate::distance::f32_error_per_norm), which holds for any order), as the kernel's value is, but
/// not its bits. For certified searches that only rule candidates out.
///
/// # Panics
/// If a row index is out of range or `out` is not one value per pair.
pub fn fast_pair_dots(x: &[f32], c: &[f32], dim: usize, pairs: &[(u32, u32)], out: &mut [f32]) {
    assert_eq!(out.len(), pairs.len(), "fast_pair_dots: one output per pair");
    #[cfg(target_arch = "x86_64")]
    if kernel() == Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
        return unsafe { fast_pair_dots_avx512(x, c, dim, pairs, out) };
    }
    fast_pair_dots_body(x, c, dim, pairs, out)
}

/// The cut below which a candidate's [`fast_pair_dots`] value cannot win or tie against
/// the best of `fast` (one row's candidates) in the kernel's values: a fast value and
/// the kernel's value of the same pair are each within `e` (γ_d·‖x‖·max‖c‖) of the exact
/// dot, so within 2e of each other, and f_j < max f − 4e gives k_j < f_j + 2e < max f − 2e
/// ≤ k_top. (Values in `fast` that are the kernel's own may sit among them.) Rounded
/// down (keeping more is still exact); `None` when every candidate must be kept (NaN, ∞).
pub fn contender_cut(fast: &[f32], e: f64) -> Option<f64> {
    let top = fast.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    cut_below(top, fast, e)
}

/// [`contender_cut`] for the first *two* places: the cut below which a candidate's fast
/// value can be neither first nor second in the kernel's values, nor tie the second.
/// It hangs from the second largest of `fast` (the largest when that occurs twice), s:
/// at least two candidates have fast values ≥ s, so kernel values > s − 2e, and the
/// kernel's second is above s − 2e too; f_j < s − 4e gives k_j < s − 2e. `None` as there.
pub fn contender_cut_second(fast: &[f32], e: f64) -> Option<f64> {
    let (mut top, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in fast {
        if v > top {
            second = top;
            top = v;
        } else if v > second {
            second = v;
        }
    }
    cut_below(second, fast, e)
}

/// `from` less 4e, rounded down; `None` when it is not finite or `fast` holds a NaN.
fn cut_below(from: f32, fast: &[f32], e: f64) -> Option<f64> {
    let cut = from as f64 - 4.0 * e;
    let cut = cut - cut.abs() * 1e-12 - 1e-30;
    (cut.is_finite() && fast.iter().all(|v| !v.is_nan())).then_some(cut)
}

/// [`fast_pair_dots`] in AVX-512 registers: four chains of fused multiply-adds (each
/// term rounds at most dim/64 + 6 times, fewer than the d that γ_d allows), the tail
/// through a mask. The portable body's `mul` then `add` in sixteen-lane arrays compiled
/// to twice the instructions and a scalar fold per pair.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fast_pair_dots_avx512(x: &[f32], c: &[f32], dim: usize, pairs: &[(u32, u32)], out: &mut [f32]) {
    use std::arch::x86_64::*;
    for (p, o) in out.iter_mut().enumerate() {
        let (a, b) = pair_rows(x, c, dim, pairs, p);
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut t = 0;
        // SAFETY: every load reads t..t + 16 ≤ dim (or masks the lanes past dim).
        unsafe {
            while t + 64 <= dim {
                for (l, s) in acc.iter_mut().enumerate() {
                    let at = t + 16 * l;
                    *s = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(at)), _mm512_loadu_ps(pb.add(at)), *s);
                }
                t += 64;
            }
            let mut l = 0;
            while t + 16 <= dim {
                acc[l] = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(t)), _mm512_loadu_ps(pb.add(t)), acc[l]);
                (l, t) = (l + 1, t + 16);
            }
            if t < dim {
                let live: __mmask16 = ((1u32 << (dim - t)) - 1) as u16;
                acc[3] = _mm512_fmadd_ps(
                    _mm512_maskz_loadu_ps(live, pa.add(t)),
                    _mm512_maskz_loadu_ps(live, pb.add(t)),
                    acc[3],
                );
            }
        }
        *o = _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ));
    }
}

/// Pairs ahead whose rows [`pair_rows`] fetches: a pair's dot takes less than a memory
/// access.
const LOOKAHEAD: usize = 4;

/// The rows of pair `p` of `pairs` (row i of `x`, row j of `c`), after asking for the
/// rows of pair `p + LOOKAHEAD` (often read for the first time); a row shared with the
/// pair before that one is fetched already.
#[inline(always)]
fn pair_rows<'a>(x: &'a [f32], c: &'a [f32], dim: usize, pairs: &[(u32, u32)], p: usize) -> (&'a [f32], &'a [f32]) {
    if let Some(&(ni, nj)) = pairs.get(p + LOOKAHEAD) {
        if ni != pairs[p + LOOKAHEAD - 1].0 {
            prefetch_row(x, ni as usize * dim, dim);
        }
        prefetch_row(c, nj as usize * dim, dim);
    }
    let (i, j) = (pairs[p].0 as usize, pairs[p].1 as usize);
    (&x[i * dim..(i + 1) * dim], &c[j * dim..(j + 1) * dim])
}

#[inline(always)]
fn fast_pair_dots_body(x: &[f32], c: &[f32], dim: usize, pairs: &[(u32, u32)], out: &mut [f32]) {
    // Four registers of independent sums: the adds overlap instead of waiting on one chain.
    const W: usize = 4 * LANES;
    for (p, o) in out.iter_mut().enumerate() {
        let (a, b) = pair_rows(x, c, dim, pairs, p);
        let mut acc = [0f32; W];
        let (ca, cb) = (a.chunks_exact(W), b.chunks_exact(W));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(p, q)| p * q).sum();
        for (p, q) in ca.zip(cb) {
            for l in 0..W {
                acc[l] += p[l] * q[l];
            }
        }
        // Halving folds: every term passes at most dim/W + log2(W) + 2 roundings (or the
        // tail's), never more than dim, which γ_d assumes.
        let mut h = W;
        while h > 1 {
            h /= 2;
            for l in 0..h {
                acc[l] += acc[l + h];
            }
        }
        *o = acc[0] + tail;
    }
}

/// Asks for `m[at..at + len]` (clamped to `m`) to be brought into cache, a line at a
/// time.
#[inline(always)]
fn prefetch_row(m: &[f32], at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let end = (at + len).min(m.len());
        let mut t = at;
        while t < end {
            // SAFETY: t < m.len(); a prefetch has no effect on memory and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(m.as_ptr().add(t).cast()) };
            t += 16;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (m, at, len);
}

/// Pairs per [`fma_chains16`] call: one per lane of a 512-bit register.
#[cfg(target_arch = "x86_64")]
const CHAINS: usize = 16;

/// Transposes the 16 × 16 matrix whose row r is `m[r]` (lane t of `m[r]` becomes lane r
/// of `m[t]`): the usual four rounds of in-lane and cross-lane shuffles, written out
/// statement by statement. A macro, so it is always expanded inside the AVX-512 function
/// that uses it (`#[inline(always)]` is not allowed with `#[target_feature]`; out of line,
/// as LLVM chose after an unrelated edit, the exact pair dots took a third longer), and
/// straight-line code rather than `std::array::from_fn` closures (LLVM had turned one
/// round into a loop through the stack).
#[cfg(target_arch = "x86_64")]
macro_rules! transpose16 {
    ($m:expr) => {{
        use std::arch::x86_64::*;
        let m: &mut [__m512; 16] = $m;
        let r = *m;
        // Pairs of rows interleaved (32-bit elements).
        let t0 = _mm512_unpacklo_ps(r[0], r[1]);
        let t1 = _mm512_unpackhi_ps(r[0], r[1]);
        let t2 = _mm512_unpacklo_ps(r[2], r[3]);
        let t3 = _mm512_unpackhi_ps(r[2], r[3]);
        let t4 = _mm512_unpacklo_ps(r[4], r[5]);
        let t5 = _mm512_unpackhi_ps(r[4], r[5]);
        let t6 = _mm512_unpacklo_ps(r[6], r[7]);
        let t7 = _mm512_unpackhi_ps(r[6], r[7]);
        let t8 = _mm512_unpacklo_ps(r[8], r[9]);
        let t9 = _mm512_unpackhi_ps(r[8], r[9]);
        let t10 = _mm512_unpacklo_ps(r[10], r[11]);
        let t11 = _mm512_unpackhi_ps(r[10], r[11]);
        let t12 = _mm512_unpacklo_ps(r[12], r[13]);
        let t13 = _mm512_unpackhi_ps(r[12], r[13]);
        let t14 = _mm512_unpacklo_ps(r[14], r[15]);
        let t15 = _mm512_unpackhi_ps(r[14], r[15]);
        // Quads (64-bit pairs within each 128-bit lane).
        let u0 = _mm512_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm512_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm512_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm512_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm512_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm512_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm512_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm512_shuffle_ps::<0xEE>(t5, t7);
        let u8 = _mm512_shuffle_ps::<0x44>(t8, t10);
        let u9 = _mm512_shuffle_ps::<0xEE>(t8, t10);
        let u10 = _mm512_shuffle_ps::<0x44>(t9, t11);
        let u11 = _mm512_shuffle_ps::<0xEE>(t9, t11);
        let u12 = _mm512_shuffle_ps::<0x44>(t12, t14);
        let u13 = _mm512_shuffle_ps::<0xEE>(t12, t14);
        let u14 = _mm512_shuffle_ps::<0x44>(t13, t15);
        let u15 = _mm512_shuffle_ps::<0xEE>(t13, t15);
        // 128-bit lanes, then 256-bit halves.
        let v0 = _mm512_shuffle_f32x4::<0x88>(u0, u4);
        let v1 = _mm512_shuffle_f32x4::<0x88>(u1, u5);
        let v2 = _mm512_shuffle_f32x4::<0x88>(u2, u6);
        let v3 = _mm512_shuffle_f32x4::<0x88>(u3, u7);
        let v4 = _mm512_shuffle_f32x4::<0xDD>(u0, u4);
        let v5 = _mm512_shuffle_f32x4::<0xDD>(u1, u5);
        let v6 = _mm512_shuffle_f32x4::<0xDD>(u2, u6);
        let v7 = _mm512_shuffle_f32x4::<0xDD>(u3, u7);
        let v8 = _mm512_shuffle_f32x4::<0x88>(u8, u12);
        let v9 = _mm512_shuffle_f32x4::<0x88>(u9, u13);
        let v10 = _mm512_shuffle_f32x4::<0x88>(u10, u14);
        let v11 = _mm512_shuffle_f32x4::<0x88>(u11, u15);
        let v12 = _mm512_shuffle_f32x4::<0xDD>(u8, u12);
        let v13 = _mm512_shuffle_f32x4::<0xDD>(u9, u13);
        let v14 = _mm512_shuffle_f32x4::<0xDD>(u10, u14);
        let v15 = _mm512_shuffle_f32x4::<0xDD>(u11, u15);
        m[0] = _mm512_shuffle_f32x4::<0x88>(v0, v8);
        m[1] = _mm512_shuffle_f32x4::<0x88>(v1, v9);
        m[2] = _mm512_shuffle_f32x4::<0x88>(v2, v10);
        m[3] = _mm512_shuffle_f32x4::<0x88>(v3, v11);
        m[4] = _mm512_shuffle_f32x4::<0x88>(v4, v12);
        m[5] = _mm512_shuffle_f32x4::<0x88>(v5, v13);
        m[6] = _mm512_shuffle_f32x4::<0x88>(v6, v14);
        m[7] = _mm512_shuffle_f32x4::<0x88>(v7, v15);
        m[8] = _mm512_shuffle_f32x4::<0xDD>(v0, v8);
        m[9] = _mm512_shuffle_f32x4::<0xDD>(v1, v9);
        m[10] = _mm512_shuffle_f32x4::<0xDD>(v2, v10);
        m[11] = _mm512_shuffle_f32x4::<0xDD>(v3, v11);
        m[12] = _mm512_shuffle_f32x4::<0xDD>(v4, v12);
        m[13] = _mm512_shuffle_f32x4::<0xDD>(v5, v13);
        m[14] = _mm512_shuffle_f32x4::<0xDD>(v6, v14);
        m[15] = _mm512_shuffle_f32x4::<0xDD>(v7, v15);
    }};
}

/// `acc_q = fma(x_q[t], c_q[t], acc_q)` for t ascending, from `acc_q = 0`, for sixteen
/// pairs at once, one per lane: each lane runs the kernel's own chain, so its bits.
/// Sixteen coordinates of the sixteen rows of each side are loaded and transposed in
/// registers (lane q then holds pair q's coordinate t), which costs far less than
/// sixteen scalar chains' loads.
///
/// `next` (the following group's rows) is only prefetched, block by block.
///
/// # Safety
/// The CPU has AVX-512F; every pointer of `xs`, `cs` and `next` starts `dim` readable
/// values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains16(
    xs: &[*const f32; CHAINS],
    cs: &[*const f32; CHAINS],
    next: Option<&([*const f32; CHAINS], [*const f32; CHAINS])>,
    dim: usize,
) -> [f32; CHAINS] {
    use std::arch::x86_64::*;
    let mut acc = _mm512_setzero_ps();
    let (full, rest) = (dim / CHAINS, dim % CHAINS);
    let prefetch = |t0: usize| {
        if let Some((nx, nc)) = next {
            for q in 0..CHAINS {
                // SAFETY: a prefetch never faults, and t0 < dim stays inside the row.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(nx[q].add(t0).cast());
                    _mm_prefetch::<_MM_HINT_T0>(nc[q].add(t0).cast());
                }
            }
        }
    };
    // Whole blocks of sixteen coordinates, then the tail: each with a constant count of
    // coordinates, so the transposed rows stay in registers (a variable count made LLVM
    // keep them on the stack and branch per coordinate).
    for b in 0..full {
        let t0 = b * CHAINS;
        prefetch(t0);
        // SAFETY: t0 + 16 ≤ dim for a whole block.
        let mut xt: [__m512; CHAINS] = std::array::from_fn(|q| unsafe { _mm512_loadu_ps(xs[q].add(t0)) });
        let mut ct: [__m512; CHAINS] = std::array::from_fn(|q| unsafe { _mm512_loadu_ps(cs[q].add(t0)) });
        transpose16!(&mut xt);
        transpose16!(&mut ct);
        for t in 0..CHAINS {
            acc = _mm512_fmadd_ps(xt[t], ct[t], acc);
        }
    }
    if rest > 0 {
        let t0 = full * CHAINS;
        prefetch(t0);
        let tail: __mmask16 = ((1u32 << rest) - 1) as u16;
        // SAFETY: the mask reads only the `rest` live values of the last block.
        let mut xt: [__m512; CHAINS] = std::array::from_fn(|q| unsafe { _mm512_maskz_loadu_ps(tail, xs[q].add(t0)) });
        let mut ct: [__m512; CHAINS] = std::array::from_fn(|q| unsafe { _mm512_maskz_loadu_ps(tail, cs[q].add(t0)) });
        transpose16!(&mut xt);
        transpose16!(&mut ct);
        // Only the live coordinates: an extra fma(0, 0, acc) would turn −0 into +0.
        for t in 0..rest {
            acc = _mm512_fmadd_ps(xt[t], ct[t], acc);
        }
    }
    // SAFETY: a 512-bit register is sixteen f32 lanes.
    unsafe { std::mem::transmute::<__m512, [f32; CHAINS]>(acc) }
}

/// [`transpose16!`] as a function, for its test.
#[cfg(all(test, target_arch = "x86_64"))]
#[target_feature(enable = "avx512f")]
fn transpose16(m: &mut [std::arch::x86_64::__m512; 16]) {
    transpose16!(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::{dot_reference, f32_error_per_norm, norm2};
    use proptest::prelude::*;

    /// A fast value and the kernel's are each within e of the exact dot, so 2e apart at
    /// most: a candidate 3e below the top fast value may still have the larger kernel
    /// value (exact dots 2e apart, the top's kernel value e low, the other's e high) and
    /// must stay; 4e below, it cannot.
    #[test]
    fn the_contender_cut_keeps_everything_within_four_errors() {
        let e = 1e-3;
        let cut = contender_cut(&[0.5, 0.5 - 3.0 * e as f32, 0.4], e).unwrap();
        assert!((0.5 - 3.0 * e as f32) as f64 >= cut);
        assert!(0.4 < cut);
        assert!(cut <= 0.5 - 4.0 * e && cut > 0.5 - 4.0 * e - 1e-9);
        assert_eq!(contender_cut(&[0.5, f32::NAN], e), None);
        assert_eq!(contender_cut(&[f32::INFINITY, 0.5], e), None);
    }

    /// For the second place the cut hangs 4e below the second largest value, counting a
    /// repeated largest as second.
    #[test]
    fn the_second_place_cut_hangs_from_the_second_largest() {
        let e = 1e-3;
        let cut = contender_cut_second(&[0.9, 0.5, 0.5 - 3.0 * e as f32, 0.3], e).unwrap();
        assert!(cut <= 0.5 - 4.0 * e && cut > 0.5 - 4.0 * e - 1e-9, "{cut}");
        assert!((0.5 - 3.0 * e as f32) as f64 >= cut && 0.3 < cut);
        let tied = contender_cut_second(&[0.7, 0.9, 0.9], e).unwrap();
        let top = f64::from(0.9f32);
        assert!(tied <= top - 4.0 * e && tied > top - 4.0 * e - 1e-9, "{tied}");
        // One candidate has no second: nothing to cut against.
        assert_eq!(contender_cut_second(&[0.9], e), None);
        assert_eq!(contender_cut_second(&[0.9, f32::NAN, 0.1], e), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transpose16_moves_lane_t_of_row_r_to_lane_r_of_row_t() {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512F here: the sixteen-lane chains are not exercised");
            return;
        }
        use std::arch::x86_64::__m512;
        let rows: [[f32; 16]; 16] = std::array::from_fn(|r| std::array::from_fn(|t| (r * 16 + t) as f32));
        // SAFETY: AVX-512F is present (checked above); [f32; 16] and __m512 have the same size.
        let got: [[f32; 16]; 16] = unsafe {
            let mut m: [__m512; 16] = std::mem::transmute(rows);
            transpose16(&mut m);
            std::mem::transmute(m)
        };
        for (t, row) in got.iter().enumerate() {
            for (r, &v) in row.iter().enumerate() {
                assert_eq!(v, rows[r][t], "row {t}, lane {r}");
            }
        }
    }

    proptest! {
        #[test]
        fn pair_dots_are_the_kernel_entries_bit_for_bit(
            m in 1usize..30, k in 1usize..30, dim in 1usize..400, seed in 0u64..1000, np in 0usize..40
        ) {
            let mut rng = crate::rng::Rng::new(seed);
            let x: Vec<f32> = (0..m * dim).map(|_| rng.normal() as f32).collect();
            let c: Vec<f32> = (0..k * dim).map(|_| rng.normal() as f32).collect();
            let mut full = vec![0f32; m * k];
            dot_batch(&x, &c, dim, &mut full);
            let pairs: Vec<(u32, u32)> =
                (0..np).map(|_| (rng.below(m as u64) as u32, rng.below(k as u64) as u32)).collect();
            let mut got = vec![0f32; np];
            kernel_pair_dots(&x, &c, dim, &pairs, &mut got);
            for (&(i, j), v) in pairs.iter().zip(&got) {
                prop_assert_eq!(v.to_bits(), full[i as usize * k + j as usize].to_bits());
            }
        }
    }

    proptest! {
        #[test]
        fn fast_pair_dots_are_within_gamma_d_of_the_exact_dot(
            dim in 1usize..400, seed in 0u64..1000, np in 1usize..20, big in 0u32..3
        ) {
            // γ_d·‖x‖·‖c‖ is what the certified search allows them (and the kernel's value).
            let mut rng = crate::rng::Rng::new(seed);
            let scale = [1.0f32, 1e-18, 1e15][big as usize];
            let x: Vec<f32> = (0..4 * dim).map(|_| scale * rng.normal() as f32).collect();
            let c: Vec<f32> = (0..5 * dim).map(|_| rng.normal() as f32).collect();
            let pairs: Vec<(u32, u32)> = (0..np).map(|_| (rng.below(4) as u32, rng.below(5) as u32)).collect();
            let mut got = vec![0f32; np];
            fast_pair_dots(&x, &c, dim, &pairs, &mut got);
            for (&(i, j), &v) in pairs.iter().zip(&got) {
                let (a, b) = (&x[i as usize * dim..][..dim], &c[j as usize * dim..][..dim]);
                let exact = dot_reference(a, b);
                let norms = (norm2(a) as f64).sqrt() * (norm2(b) as f64).sqrt();
                prop_assert!(
                    (v as f64 - exact).abs() <= f32_error_per_norm(dim) * norms,
                    "dim {dim}: {v} against {exact}"
                );
            }
        }
    }
}
