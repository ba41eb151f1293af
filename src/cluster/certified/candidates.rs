//! Which centroids a row's exact f32 dots run for, in the certified search
//! (module doc of `certified`): the centroids whose low-precision score is within
//! the bound of the best (or of the second best), found with one vector compare per
//! sixteen scores ([`candidates`]), then narrowed by vectorized f32 dots to those
//! that can still win or tie ([`CertifiedSearch::narrow`], [`contender_cut`]).

use super::{CertifiedSearch, Scratch};
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

/// The largest score other than `b[jt]` (−∞ when there is none): the second
/// largest, counting a tie with the largest.
#[inline]
pub(super) fn second_largest(b: &[f32], jt: usize) -> f32 {
    let (lo, hi) = (&b[..jt], &b[(jt + 1).min(b.len())..]);
    lo.iter().chain(hi).fold(f32::NEG_INFINITY, |a, &v| a.max(v))
}

/// Appends to `out` the indices `j` with `b[j] >= cut`, ascending; compiled
/// for AVX-512 where the f32 kernel is (same result on every path).
#[inline]
pub(super) fn candidates(b: &[f32], cut: f32, out: &mut Vec<u32>) {
    #[cfg(target_arch = "x86_64")]
    if crate::distance::kernel() == crate::distance::Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
        return unsafe { candidates_avx512(b, cut, out) };
    }
    candidates_body(b, cut, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn candidates_avx512(b: &[f32], cut: f32, out: &mut Vec<u32>) {
    candidates_body(b, cut, out)
}

#[inline(always)]
fn candidates_body(b: &[f32], cut: f32, out: &mut Vec<u32>) {
    // Most 16-blocks hold no candidate: test them with one vector compare first.
    for (c, ch) in b.chunks(16).enumerate() {
        if ch.iter().fold(false, |a, &v| a | (v >= cut)) {
            for (l, &v) in ch.iter().enumerate() {
                if v >= cut {
                    out.push((c * 16 + l) as u32);
                }
            }
        }
    }
}
