//! Which centroids a row's exact f32 dots run for, in the certified search
//! (module doc of `certified`): the centroids whose low-precision score is within
//! the bound of the best (or of the second best), found with one vector compare per
//! sixteen scores ([`candidates`]), then narrowed by vectorized f32 dots to those
//! that can still win or tie ([`CertifiedSearch::narrow`], [`contender_cut`]).

use super::{CertifiedSearch, Scratch};
use crate::cluster::centroids::scan_at_least;
use crate::distance::{contender_cut, contender_cut_second, fast_pair_dots, norm_upper_bound};

impl CertifiedSearch<'_> {
    /// Drops the candidates of a row that an f32 dot in any order (vectorized, not the
    /// kernel's chain) puts certainly below its best: that dot and the kernel's are each
    /// within e = γ_d·‖x‖·max‖c‖ of the exact one, so f_j < max f − 4e means the kernel's
    /// value of j is below the best's ([`contender_cut`]), and j can neither win nor tie. The kernel's own
    /// chain, many times slower, then runs for the few left (usually the winner alone).
    /// With `two`, for `nearest_two`, the candidates that can be neither first nor
    /// second are dropped instead ([`contender_cut_second`]).
    pub(super) fn narrow(&self, x: &[f32], s: &mut Scratch, two: bool) {
        let dim = self.c.dim();
        let places = if two { 2 } else { 1 };
        let group = |pairs: &[(u32, u32)], a: usize| a + pairs[a..].iter().take_while(|p| p.0 == pairs[a].0).count();
        // The fast dots of every row with more candidates than places, in one call: its
        // rows are prefetched a few pairs ahead across rows too (called row by row, each
        // call's first pairs waited on memory).
        s.need.clear();
        let mut a = 0;
        while a < s.pairs.len() {
            let b = group(&s.pairs, a);
            if b - a > places {
                s.need.extend_from_slice(&s.pairs[a..b]);
            }
            a = b;
        }
        s.fast.resize(s.need.len(), 0.0);
        fast_pair_dots(x, self.c.as_slice(), dim, &s.need, &mut s.fast);
        let (mut w, mut a, mut f) = (0, 0, 0);
        while a < s.pairs.len() {
            let i = s.pairs[a].0;
            let b = group(&s.pairs, a);
            let keep_all = b - a <= places || {
                let fast = &s.fast[f..f + (b - a)];
                f += b - a;
                let row = &x[i as usize * dim..(i as usize + 1) * dim];
                let e = self.f32_err * norm_upper_bound(row);
                let cut = if two {
                    contender_cut_second(fast, e)
                } else {
                    contender_cut(fast, e)
                };
                if let Some(cut) = cut {
                    for q in a..b {
                        if fast[q - a] as f64 >= cut {
                            s.pairs[w] = s.pairs[q];
                            w += 1;
                        }
                    }
                    false
                } else {
                    true
                }
            };
            if keep_all {
                s.pairs.copy_within(a..b, w);
                w += b - a;
            }
            a = b;
        }
        s.pairs.truncate(w);
    }
}

/// The largest score and the largest of the others (one occurrence of the largest
/// left out, so a tie gives it twice); −∞ where there is none, and NaN never counts:
/// `argmax_row(b, None)`'s value and the second largest around its index, for
/// `nearest_two`'s cut. One pass of running top-two pairs per lane (four pairs, merged
/// at the end: max and min are exact, so the order does not change the values), where
/// the arg-max and two reductions either side of it read the row three times.
#[inline]
pub(super) fn top_two(b: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::distance::kernel() == crate::distance::Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
        return unsafe { top_two_avx512(b) };
    }
    top_two_body(b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn top_two_avx512(b: &[f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let (n, p) = (b.len(), b.as_ptr());
    let lo = _mm512_set1_ps(f32::NEG_INFINITY);
    // Per lane: `first` the largest seen, `second` the largest of the rest. With `v`
    // NaN, `max(v, first)` keeps `first` and `min(first, v)` gives NaN, which
    // `max(NaN, second)` drops: NaN never enters either.
    let step = |(first, second): (__m512, __m512), v: __m512| {
        (_mm512_max_ps(v, first), _mm512_max_ps(_mm512_min_ps(first, v), second))
    };
    let mut acc = [(lo, lo); 4];
    let mut j = 0;
    while j + 64 <= n {
        for (q, a) in acc.iter_mut().enumerate() {
            // SAFETY: j + 64 <= n.
            *a = step(*a, unsafe { _mm512_loadu_ps(p.add(j + 16 * q)) });
        }
        j += 64;
    }
    while j < n {
        let live: __mmask16 = if n - j >= 16 { !0 } else { (1u16 << (n - j)) - 1 };
        // SAFETY: `live` covers only indices below `n`; the others load as −∞.
        acc[0] = step(acc[0], unsafe { _mm512_mask_loadu_ps(lo, live, p.add(j)) });
        j += 16;
    }
    let merge = |(a1, a2): (__m512, __m512), (b1, b2): (__m512, __m512)| {
        (
            _mm512_max_ps(a1, b1),
            _mm512_max_ps(_mm512_min_ps(a1, b1), _mm512_max_ps(a2, b2)),
        )
    };
    let (first, second) = merge(merge(acc[0], acc[1]), merge(acc[2], acc[3]));
    let top = _mm512_reduce_max_ps(first);
    // The lanes' seconds, and their firsts with one lane holding the top left out.
    let at_top = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(first, _mm512_set1_ps(top));
    let one = at_top & at_top.wrapping_neg();
    let others = _mm512_mask_blend_ps(one, first, lo);
    (top, _mm512_reduce_max_ps(_mm512_max_ps(others, second)))
}

#[inline(always)]
fn top_two_body(b: &[f32]) -> (f32, f32) {
    b.iter()
        .fold((f32::NEG_INFINITY, f32::NEG_INFINITY), |(first, second), &v| {
            if v > first {
                (v, first)
            } else if v > second {
                (first, v)
            } else {
                (first, second)
            }
        })
}

/// The portable [`top_two`], for tests of the vector one.
#[cfg(test)]
pub(super) fn top_two_plain(b: &[f32]) -> (f32, f32) {
    top_two_body(b)
}

/// Appends to `out` the indices `j` with `b[j] >= cut`, ascending
/// ([`scan_at_least`]: one vector compare per sixteen scores).
#[inline]
pub(super) fn candidates(b: &[f32], cut: f32, out: &mut Vec<u32>) {
    scan_at_least(b, cut, |j, _| out.push(j));
}

/// The largest score of `b` that is above −∞ (−∞ when there is none; NaN never
/// counts): the value of `argmax_row(b, None)` without its index, for the rows
/// whose candidates ([`candidates`]) name the winner anyway. Four running maxima,
/// merged at the end: max is exact, so the order does not change the value.
#[inline]
pub(super) fn max_score(b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::distance::kernel() == crate::distance::Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
        return unsafe { max_score_avx512(b) };
    }
    max_score_body(b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_score_avx512(b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let (n, p) = (b.len(), b.as_ptr());
    let lo = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut acc = [lo; 4];
    let mut j = 0;
    while j + 64 <= n {
        for (q, a) in acc.iter_mut().enumerate() {
            // SAFETY: j + 64 <= n. `max(v, a)` returns `a` when `v` is NaN.
            *a = _mm512_max_ps(unsafe { _mm512_loadu_ps(p.add(j + 16 * q)) }, *a);
        }
        j += 64;
    }
    while j < n {
        let live: __mmask16 = if n - j >= 16 { !0 } else { (1u16 << (n - j)) - 1 };
        // SAFETY: `live` covers only indices below `n`; the others load as −∞.
        let v = unsafe { _mm512_mask_loadu_ps(lo, live, p.add(j)) };
        acc[0] = _mm512_max_ps(v, acc[0]);
        j += 16;
    }
    let m = _mm512_max_ps(_mm512_max_ps(acc[0], acc[1]), _mm512_max_ps(acc[2], acc[3]));
    // NaN never reaches the accumulators, so the lane reduction is a plain max.
    _mm512_reduce_max_ps(m)
}

#[inline(always)]
fn max_score_body(b: &[f32]) -> f32 {
    b.iter().fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a })
}

/// The portable [`max_score`], for tests of the vector one.
#[cfg(test)]
pub(super) fn max_score_plain(b: &[f32]) -> f32 {
    max_score_body(b)
}

/// The portable [`candidates`], for tests of the vector one.
#[cfg(test)]
pub(super) fn candidates_plain(b: &[f32], cut: f32, out: &mut Vec<u32>) {
    crate::cluster::centroids::scan_at_least_plain(b, cut, |j, _| out.push(j));
}
