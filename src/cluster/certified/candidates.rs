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
        let (mut w, mut a) = (0, 0);
        while a < s.pairs.len() {
            let i = s.pairs[a].0;
            let b = a + s.pairs[a..].iter().take_while(|p| p.0 == i).count();
            let keep_all = b - a <= places || {
                s.fast.resize(b - a, 0.0);
                fast_pair_dots(x, self.c.as_slice(), dim, &s.pairs[a..b], &mut s.fast);
                let row = &x[i as usize * dim..(i as usize + 1) * dim];
                let e = self.f32_err * norm_upper_bound(row);
                let cut = if two {
                    contender_cut_second(&s.fast, e)
                } else {
                    contender_cut(&s.fast, e)
                };
                if let Some(cut) = cut {
                    for q in a..b {
                        if s.fast[q - a] as f64 >= cut {
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

/// The largest score other than `b[jt]` (−∞ when there is none; NaN never counts):
/// the second largest, counting a tie with the largest. Two [`max_score`] reductions,
/// either side of `jt` (the scalar fold over a chained iterator it replaces cost
/// `nearest_two` about 0.2 s per million rows).
#[inline]
pub(super) fn second_largest(b: &[f32], jt: usize) -> f32 {
    let (lo, hi) = (&b[..jt.min(b.len())], &b[(jt + 1).min(b.len())..]);
    let (l, h) = (max_score(lo), max_score(hi));
    if h > l { h } else { l }
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
