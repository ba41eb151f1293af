//! AVX-512 kernel for `X·Cᵀ` with both operands row-major along `dim`: the
//! product behind every nearest-centroid search and similarity tile.
//!
//! The right-hand rows are packed once into blocks of [`NR`] rows stored
//! dimension-major (`[t][row in block]`), so one 512-bit load gives 16 rows'
//! coordinate `t`; the left-hand rows are packed per call into blocks of
//! [`MR`] rows, also dimension-major, so each tile reads both operands from
//! one pointer each (twelve row pointers would not fit the general-purpose
//! registers) and every coordinate is a broadcast. An `MR × NR` tile of dot
//! products lives in 24 of the 32 vector registers while `t` runs over the
//! whole dimension, so every output is one fused multiply-add chain in
//! ascending `t`: its value depends only on its two rows, never on the block
//! it was computed in.

use std::arch::x86_64::*;
use std::cell::RefCell;

/// Left-hand rows per register tile.
const MR: usize = 12;
/// Right-hand rows per register tile (two 16-lane registers).
pub(super) const NR: usize = 32;

/// Whether this CPU runs the kernel (checked once; cached by std).
#[inline]
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// Packs `k` rows of `dim` values (row-major) into zero-padded blocks of
/// [`NR`] rows, each block `dim × NR` dimension-major.
pub(super) fn pack(c: &[f32], dim: usize) -> Vec<f32> {
    let k = c.len() / dim;
    let blocks = k.div_ceil(NR);
    let mut out = vec![0f32; blocks * dim * NR];
    for (j, row) in c.chunks_exact(dim).enumerate() {
        let (b, l) = (j / NR, j % NR);
        let base = b * dim * NR + l;
        for (t, &v) in row.iter().enumerate() {
            out[base + t * NR] = v;
        }
    }
    out
}

/// `out[i * k + j] = x_i · c_j` for `m = x.len() / dim` rows against the `k`
/// rows packed by [`pack`].
///
/// # Safety
/// The CPU must support AVX-512F ([`available`]); `packed` must come from
/// [`pack`] with the same `dim` and `k`; `out.len() == m * k`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot_batch(x: &[f32], packed: &[f32], k: usize, dim: usize, out: &mut [f32]) {
    let m = x.len() / dim;
    debug_assert_eq!(out.len(), m * k);
    debug_assert_eq!(packed.len(), k.div_ceil(NR) * dim * NR);
    thread_local! {
        // Reused across calls: a fresh buffer per call would be mapped and faulted in each time.
        static LEFT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    LEFT.with_borrow_mut(|a| {
        pack_left(x, dim, a);
        for jb in 0..k.div_ceil(NR) {
            let b = &packed[jb * dim * NR..(jb + 1) * dim * NR];
            let j0 = jb * NR;
            let w = (k - j0).min(NR);
            for (ib, ablock) in a.chunks_exact(dim * MR).enumerate() {
                let i0 = ib * MR;
                let h = (m - i0).min(MR);
                let o = &mut out[i0 * k + j0..];
                // SAFETY: the caller guarantees AVX-512F; blocks are full-size by construction.
                unsafe {
                    match h {
                        12 => tile::<12>(ablock, b, dim, k, w, o),
                        11 => tile::<11>(ablock, b, dim, k, w, o),
                        10 => tile::<10>(ablock, b, dim, k, w, o),
                        9 => tile::<9>(ablock, b, dim, k, w, o),
                        8 => tile::<8>(ablock, b, dim, k, w, o),
                        7 => tile::<7>(ablock, b, dim, k, w, o),
                        6 => tile::<6>(ablock, b, dim, k, w, o),
                        5 => tile::<5>(ablock, b, dim, k, w, o),
                        4 => tile::<4>(ablock, b, dim, k, w, o),
                        3 => tile::<3>(ablock, b, dim, k, w, o),
                        2 => tile::<2>(ablock, b, dim, k, w, o),
                        _ => tile::<1>(ablock, b, dim, k, w, o),
                    }
                }
            }
        }
    });
}

/// Packs the left-hand rows into zero-padded blocks of [`MR`] rows, each
/// `dim × MR` dimension-major, into `a` (resized).
fn pack_left(x: &[f32], dim: usize, a: &mut Vec<f32>) {
    let m = x.len() / dim;
    a.clear();
    a.resize(m.div_ceil(MR) * MR * dim, 0.0);
    for (i, row) in x.chunks_exact(dim).enumerate() {
        let base = (i / MR) * MR * dim + i % MR;
        for (t, &v) in row.iter().enumerate() {
            a[base + t * MR] = v;
        }
    }
}

/// One `H × NR` register tile: the first `H` rows of a packed left block
/// `a` against one packed right block `b`; the first `w` columns are stored
/// to `out` (row stride `k`).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const H: usize>(a: &[f32], b: &[f32], dim: usize, k: usize, w: usize, out: &mut [f32]) {
    debug_assert!(a.len() >= dim * MR && b.len() >= dim * NR && H <= MR);
    let mut acc = [[_mm512_setzero_ps(); 2]; H];
    let ap = a.as_ptr();
    let bp = b.as_ptr();
    for t in 0..dim {
        // SAFETY: t < dim and r < H <= MR keep every read inside `a` and `b` (checked above).
        unsafe {
            let b0 = _mm512_loadu_ps(bp.add(t * NR));
            let b1 = _mm512_loadu_ps(bp.add(t * NR + 16));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*ap.add(t * MR + r));
                acc_r[0] = _mm512_fmadd_ps(xv, b0, acc_r[0]);
                acc_r[1] = _mm512_fmadd_ps(xv, b1, acc_r[1]);
            }
        }
    }
    let m0 = lane_mask(w);
    let op = out.as_mut_ptr();
    for (r, acc_r) in acc.iter().enumerate() {
        debug_assert!(r * k + w <= out.len());
        // SAFETY: row r's first w outputs lie inside `out` (the caller sliced it at
        // column j0 with at least (H - 1)·k + w values left); masked lanes are not touched.
        unsafe {
            _mm512_mask_storeu_ps(op.add(r * k), m0, acc_r[0]);
            if w > 16 {
                _mm512_mask_storeu_ps(op.add(r * k + 16), lane_mask(w - 16), acc_r[1]);
            }
        }
    }
}

/// The first `min(w, 16)` lanes.
#[inline]
fn lane_mask(w: usize) -> __mmask16 {
    if w >= 16 { 0xFFFF } else { ((1u32 << w) - 1) as u16 }
}
