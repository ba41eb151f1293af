//! The `vpdpbusd` register tile of [`super::dot_batch_i8`]: `H × 32` i32 sums in 24
//! registers while the quads run, then the same conversion and scaling as the portable
//! kernel (the formula in the parent module), so both give the same bits.

use std::arch::x86_64::*;

use super::{MR, NR, PackedI8, TileSkip, fill_tile};

/// Whether this CPU has the instructions (checked once; cached by std).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// See [`super::dot_batch_i8`].
///
/// # Safety
/// The CPU must have AVX-512F/BW/VNNI; `a` packed for `m` rows and `c` for its rows,
/// both with `quads` quads; `scale` covers `a`'s blocks; `out.len() == m * c.k`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn dot_batch(
    a: &[u32],
    scale: &[f32],
    c: &PackedI8,
    m: usize,
    quads: usize,
    out: &mut [f32],
    skip: Option<&TileSkip<'_>>,
) {
    let k = c.k;
    debug_assert_eq!(a.len(), m.div_ceil(MR) * MR * quads);
    debug_assert_eq!(c.data.len(), k.div_ceil(NR) * quads * NR);
    for jb in 0..k.div_ceil(NR) {
        let bb = &c.data[jb * quads * NR..(jb + 1) * quads * NR];
        let j0 = jb * NR;
        let w = (k - j0).min(NR);
        let right = (&c.scale[j0..j0 + NR], &c.corr[j0..j0 + NR]);
        for (ib, ablock) in a.chunks_exact(quads * MR).enumerate() {
            let i0 = ib * MR;
            let h = (m - i0).min(MR);
            let o = &mut out[i0 * k + j0..];
            if skip.is_some_and(|f| f(i0..i0 + h, j0..j0 + w)) {
                fill_tile(out, k, i0..i0 + h, j0..j0 + w);
                continue;
            }
            let s = &scale[i0..i0 + MR];
            // SAFETY: the caller guarantees the features; blocks are full-size.
            unsafe {
                match h {
                    12 => tile::<12>(ablock, bb, quads, k, w, s, right, o),
                    11 => tile::<11>(ablock, bb, quads, k, w, s, right, o),
                    10 => tile::<10>(ablock, bb, quads, k, w, s, right, o),
                    9 => tile::<9>(ablock, bb, quads, k, w, s, right, o),
                    8 => tile::<8>(ablock, bb, quads, k, w, s, right, o),
                    7 => tile::<7>(ablock, bb, quads, k, w, s, right, o),
                    6 => tile::<6>(ablock, bb, quads, k, w, s, right, o),
                    5 => tile::<5>(ablock, bb, quads, k, w, s, right, o),
                    4 => tile::<4>(ablock, bb, quads, k, w, s, right, o),
                    3 => tile::<3>(ablock, bb, quads, k, w, s, right, o),
                    2 => tile::<2>(ablock, bb, quads, k, w, s, right, o),
                    _ => tile::<1>(ablock, bb, quads, k, w, s, right, o),
                }
            }
        }
    }
}

/// One `H × NR` tile; the first `w` columns are stored to `out` (row stride `k`).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile<const H: usize>(
    a: &[u32],
    b: &[u32],
    quads: usize,
    k: usize,
    w: usize,
    scale: &[f32],
    (cscale, corr): (&[f32], &[i32]),
    out: &mut [f32],
) {
    debug_assert!(a.len() >= quads * MR && b.len() >= quads * NR && H <= MR);
    debug_assert!(scale.len() >= H && cscale.len() >= NR && corr.len() >= NR);
    let mut acc = [[_mm512_setzero_si512(); 2]; H];
    let ap = a.as_ptr();
    let bp = b.as_ptr();
    for p in 0..quads {
        // SAFETY: p < quads and r < H <= MR keep every read inside `a` and `b`.
        unsafe {
            let b0 = _mm512_loadu_si512(bp.add(p * NR).cast());
            let b1 = _mm512_loadu_si512(bp.add(p * NR + 16).cast());
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32(*ap.add(p * MR + r) as i32);
                acc_r[0] = _mm512_dpbusd_epi32(acc_r[0], av, b0);
                acc_r[1] = _mm512_dpbusd_epi32(acc_r[1], av, b1);
            }
        }
    }
    // SAFETY: NR values of each right-hand array lie inside them (checked above).
    let (cs, cr) = unsafe {
        (
            [
                _mm512_loadu_ps(cscale.as_ptr()),
                _mm512_loadu_ps(cscale.as_ptr().add(16)),
            ],
            [
                _mm512_loadu_si512(corr.as_ptr().cast()),
                _mm512_loadu_si512(corr.as_ptr().add(16).cast()),
            ],
        )
    };
    let op = out.as_mut_ptr();
    for (r, acc_r) in acc.iter().enumerate() {
        let sr = _mm512_set1_ps(scale[r]);
        for h in 0..2 {
            // (acc − 128·Σr) as f32 · (s · σ): the portable kernel's operations.
            let v = _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_sub_epi32(acc_r[h], cr[h])),
                _mm512_mul_ps(sr, cs[h]),
            );
            if w > 16 * h {
                debug_assert!(r * k + w <= out.len());
                // SAFETY: row r's first w outputs lie inside `out`; masked lanes are untouched.
                unsafe { _mm512_mask_storeu_ps(op.add(r * k + 16 * h), lane_mask(w - 16 * h), v) };
            }
        }
    }
}

/// The first `min(w, 16)` lanes.
#[inline]
fn lane_mask(w: usize) -> __mmask16 {
    if w >= 16 { 0xFFFF } else { ((1u32 << w) - 1) as u16 }
}

/// Runs the SIMD kernel regardless of `DPRUNE_KERNEL`, for the equality test.
#[cfg(test)]
pub(super) fn dot_batch_checked(
    a: &[u32],
    scale: &[f32],
    c: &PackedI8,
    m: usize,
    quads: usize,
    out: &mut [f32],
    skip: Option<&TileSkip<'_>>,
) {
    assert!(available());
    // SAFETY: features checked just above; the caller packed `a` and `c`.
    unsafe { dot_batch(a, scale, c, m, quads, out, skip) }
}
