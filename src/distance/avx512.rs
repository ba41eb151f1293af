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

/// Rows to pack: row `i` of the packed set is row `rows[i]` of the row-major `x` (row `i`
/// when `rows` is `None`), times `scale[i]` when a scale is given (one f32 multiply per value,
/// so a packed value is exactly `x · s`).
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    x: &'a [f32],
    dim: usize,
    rows: Option<&'a [usize]>,
    scale: Option<&'a [f32]>,
    m: usize,
}

impl<'a> Rows<'a> {
    /// Every row of `x`, unscaled.
    pub(super) fn all(x: &'a [f32], dim: usize) -> Self {
        Rows {
            x,
            dim,
            rows: None,
            scale: None,
            m: x.len() / dim,
        }
    }

    /// The rows `rows` of `x`, row `rows[i]` scaled by `scale[i]`.
    ///
    /// # Panics
    /// If a row index is out of range or `scale` is not one value per row.
    pub(super) fn selected(x: &'a [f32], dim: usize, rows: &'a [usize], scale: &'a [f32]) -> Self {
        assert_eq!(rows.len(), scale.len(), "one scale per selected row");
        let n = x.len() / dim;
        assert!(rows.iter().all(|&r| r < n), "selected row out of range");
        Rows {
            x,
            dim,
            rows: Some(rows),
            scale: Some(scale),
            m: rows.len(),
        }
    }

    /// Number of rows.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.m
    }

    #[inline(always)]
    fn row(&self, i: usize) -> &'a [f32] {
        let r = self.rows.map_or(i, |rows| rows[i]);
        &self.x[r * self.dim..(r + 1) * self.dim]
    }
}

/// Packs `k` rows of `dim` values (row-major) into zero-padded blocks of
/// [`NR`] rows, each block `dim × NR` dimension-major.
pub(super) fn pack(c: &[f32], dim: usize) -> Vec<f32> {
    pack_rows(Rows::all(c, dim))
}

/// [`pack`] for any [`Rows`].
pub(super) fn pack_rows(src: Rows<'_>) -> Vec<f32> {
    let mut out = Vec::new();
    pack_blocks::<NR>(src, &mut out);
    out
}

/// Packs `src` into blocks of `W` rows, each `dim × W` dimension-major (`[t][row in block]`),
/// the last block zero-padded; `out` is resized and every value of it written, so a reused
/// buffer needs no clearing. A 16 × 16 register transpose where the CPU has AVX-512F (16 rows'
/// coordinates `t..t + 16` in, 16 coordinates' rows out), else the plain loop; both write the
/// same values.
fn pack_blocks<const W: usize>(src: Rows<'_>, out: &mut Vec<f32>) {
    let need = src.m.div_ceil(W) * W * src.dim;
    if out.len() < need {
        out.resize(need, 0.0);
    } else {
        out.truncate(need);
    }
    pack_blocks_into::<W>(src, out);
}

/// [`pack_blocks`] into a slice of exactly the packed length.
fn pack_blocks_into<const W: usize>(src: Rows<'_>, out: &mut [f32]) {
    debug_assert_eq!(out.len(), src.m.div_ceil(W) * W * src.dim);
    if available() {
        // SAFETY: AVX-512F checked just above; `out` holds every block.
        unsafe { pack_blocks_avx512::<W>(src, out) }
    } else {
        pack_blocks_scalar::<W>(src, out)
    }
}

/// [`pack_blocks`] for 32-bit words (pairs of bf16): the row-major `m × cols` words in
/// `words` into blocks of `width` rows (12 or 32), each `cols × width` column-major, the
/// last block zero-padded, into `out` (resized). Only moves bits, no arithmetic.
///
/// # Panics
/// If `words` is not a multiple of `cols` or `width` is neither 12 nor 32.
pub(super) fn pack_words(words: &[u32], cols: usize, width: usize, out: &mut Vec<u32>) {
    assert!(
        cols > 0 && words.len().is_multiple_of(cols),
        "pack_words: words is not m x cols"
    );
    let m = words.len() / cols;
    out.clear();
    out.resize(m.div_ceil(width) * width * cols, 0);
    // SAFETY: u32 and f32 have the same size and alignment and every bit pattern is a valid
    // f32; the packing only loads, shuffles and stores, so the bits arrive unchanged.
    let (src, dst) = unsafe {
        (
            std::slice::from_raw_parts(words.as_ptr().cast::<f32>(), words.len()),
            std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), out.len()),
        )
    };
    match width {
        MR => pack_blocks_into::<MR>(Rows::all(src, cols), dst),
        NR => pack_blocks_into::<NR>(Rows::all(src, cols), dst),
        _ => panic!("pack_words: width {width} is neither {MR} nor {NR}"),
    }
}

/// The plain loop of [`pack_blocks`] (and its test oracle).
fn pack_blocks_scalar<const W: usize>(src: Rows<'_>, out: &mut [f32]) {
    let dim = src.dim;
    for (b, block) in out.chunks_exact_mut(W * dim).enumerate() {
        for l in 0..W {
            let i = b * W + l;
            if i < src.m {
                let s = src.scale.map(|s| s[i]);
                for (t, &v) in src.row(i).iter().enumerate() {
                    block[t * W + l] = s.map_or(v, |s| v * s);
                }
            } else {
                for t in 0..dim {
                    block[t * W + l] = 0.0;
                }
            }
        }
    }
}

/// [`pack_blocks`] with AVX-512F: groups of 16 rows (12 for the left blocks, padded with zero
/// rows) are loaded 16 coordinates at a time, transposed in registers and stored as 16
/// dimension-major slices of `W` lanes.
///
/// # Safety
/// The CPU must support AVX-512F; `out.len() == src.m.div_ceil(W) * W * src.dim`.
#[target_feature(enable = "avx512f")]
unsafe fn pack_blocks_avx512<const W: usize>(src: Rows<'_>, out: &mut [f32]) {
    let dim = src.dim;
    debug_assert_eq!(out.len(), src.m.div_ceil(W) * W * dim);
    for (b, block) in out.chunks_exact_mut(W * dim).enumerate() {
        for g in 0..W.div_ceil(16) {
            let lanes = (W - g * 16).min(16);
            let first = b * W + g * 16;
            let live = src.m.saturating_sub(first).min(lanes);
            let scale: [f32; 16] = std::array::from_fn(|l| match src.scale {
                Some(s) if l < live => s[first + l],
                _ => 1.0,
            });
            for t0 in (0..dim).step_by(16) {
                let width = (dim - t0).min(16);
                let mut v = [_mm512_setzero_ps(); 16];
                for (l, vl) in v.iter_mut().enumerate().take(live) {
                    let row = src.row(first + l);
                    // SAFETY: the mask keeps the load inside `row` (t0 + width <= dim).
                    let x = unsafe { _mm512_maskz_loadu_ps(lane_mask(width), row.as_ptr().add(t0)) };
                    *vl = if src.scale.is_some() {
                        _mm512_mul_ps(x, _mm512_set1_ps(scale[l]))
                    } else {
                        x
                    };
                }
                transpose16(&mut v);
                let p = block.as_mut_ptr();
                for (q, vq) in v.iter().enumerate().take(width) {
                    // SAFETY: (t0 + q) * W + g * 16 + lanes <= dim * W: inside this block.
                    unsafe { _mm512_mask_storeu_ps(p.add((t0 + q) * W + g * 16), lane_mask(lanes), *vq) };
                }
            }
        }
    }
}

/// Transposes the 16 × 16 matrix whose rows are `r` in place: 32-bit, then 64-bit interleaves
/// within 128-bit lanes, then two 128-bit lane shuffles.
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose16(r: &mut [__m512; 16]) {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + e]: rows 4g..4g + 4 at coordinate 4c + e in 128-bit lane c.
    let mut u = [_mm512_setzero_ps(); 16];
    let lo = |a: __m512, b: __m512| _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
    let hi = |a: __m512, b: __m512| _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
    for g in 0..4 {
        let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = lo(a, c);
        u[4 * g + 1] = hi(a, c);
        u[4 * g + 2] = lo(b, d);
        u[4 * g + 3] = hi(b, d);
    }
    // Coordinate 4c + e gathers lane c of u[e], u[4 + e], u[8 + e], u[12 + e].
    for e in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x44>(u[e], u[4 + e]);
        let v1 = _mm512_shuffle_f32x4::<0xEE>(u[e], u[4 + e]);
        let v2 = _mm512_shuffle_f32x4::<0x44>(u[8 + e], u[12 + e]);
        let v3 = _mm512_shuffle_f32x4::<0xEE>(u[8 + e], u[12 + e]);
        r[e] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        r[4 + e] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
        r[8 + e] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        r[12 + e] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
    }
}

/// `out[i * k + j] = x_i · c_j` for `m = x.len() / dim` rows against the `k`
/// rows packed by [`pack`].
///
/// # Safety
/// The CPU must support AVX-512F ([`available`]); `packed` must come from
/// [`pack`] with the same `dim` and `k`; `out.len() == m * k`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot_batch(x: &[f32], packed: &[f32], k: usize, dim: usize, out: &mut [f32]) {
    if (1..=NR).contains(&k) {
        // One right-hand block: each packed left block would serve a single tile, and
        // packing it costs about as much as the tile (k-means' mover products).
        // SAFETY: forwarded from the caller.
        return unsafe { dot_batch_unpacked(x, packed, k, dim, out) };
    }
    // SAFETY: forwarded from the caller.
    unsafe { dot_batch_rows(Rows::all(x, dim), packed, k, out) }
}

/// Left-hand rows per tile of [`dot_batch_unpacked`]: their pointers and up to
/// 16 accumulators fit the registers.
const DR: usize = 8;

/// [`dot_batch`] for `k <= NR` without packing `x`: each coordinate is broadcast
/// straight from its row. The same fused chains in ascending `t`, so the same bits.
///
/// # Safety
/// As [`dot_batch`], with `k <= NR`.
#[target_feature(enable = "avx512f")]
unsafe fn dot_batch_unpacked(x: &[f32], packed: &[f32], k: usize, dim: usize, out: &mut [f32]) {
    debug_assert!(k <= NR && packed.len() == dim * NR);
    let m = x.len() / dim;
    debug_assert_eq!(out.len(), m * k);
    let mut i0 = 0;
    while i0 < m {
        let h = (m - i0).min(DR);
        let (a, o) = (&x[i0 * dim..(i0 + h) * dim], &mut out[i0 * k..(i0 + h) * k]);
        // SAFETY: the caller guarantees AVX-512F; `a` is h whole rows, `o` their outputs.
        unsafe {
            match h {
                8 => unpacked_tile::<8>(a, packed, dim, k, o),
                7 => unpacked_tile::<7>(a, packed, dim, k, o),
                6 => unpacked_tile::<6>(a, packed, dim, k, o),
                5 => unpacked_tile::<5>(a, packed, dim, k, o),
                4 => unpacked_tile::<4>(a, packed, dim, k, o),
                3 => unpacked_tile::<3>(a, packed, dim, k, o),
                2 => unpacked_tile::<2>(a, packed, dim, k, o),
                _ => unpacked_tile::<1>(a, packed, dim, k, o),
            }
        }
        i0 += h;
    }
}

/// `H` row-major rows `a` against the one packed block `b` (`k <= NR` live rows):
/// `out[r * k + j] = a_r · b_j`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn unpacked_tile<const H: usize>(a: &[f32], b: &[f32], dim: usize, k: usize, out: &mut [f32]) {
    debug_assert!(a.len() == H * dim && b.len() >= dim * NR && out.len() == H * k);
    let mut acc = [[_mm512_setzero_ps(); 2]; H];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    // SAFETY (both loops): t < dim and r < H keep every read inside `a` and `b` (checked above).
    if k > 16 {
        for t in 0..dim {
            unsafe {
                let b0 = _mm512_loadu_ps(bp.add(t * NR));
                let b1 = _mm512_loadu_ps(bp.add(t * NR + 16));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*ap.add(r * dim + t));
                    acc_r[0] = _mm512_fmadd_ps(xv, b0, acc_r[0]);
                    acc_r[1] = _mm512_fmadd_ps(xv, b1, acc_r[1]);
                }
            }
        }
    } else {
        for t in 0..dim {
            unsafe {
                let b0 = _mm512_loadu_ps(bp.add(t * NR));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*ap.add(r * dim + t));
                    acc_r[0] = _mm512_fmadd_ps(xv, b0, acc_r[0]);
                }
            }
        }
    }
    let op = out.as_mut_ptr();
    for (r, acc_r) in acc.iter().enumerate() {
        // SAFETY: row r's k outputs lie inside `out`; masked lanes are not touched.
        unsafe {
            _mm512_mask_storeu_ps(op.add(r * k), lane_mask(k), acc_r[0]);
            if k > 16 {
                _mm512_mask_storeu_ps(op.add(r * k + 16), lane_mask(k - 16), acc_r[1]);
            }
        }
    }
}

/// [`dot_batch`] for any left-hand [`Rows`]: `out[i * k + j] = row_i · c_j`.
///
/// # Safety
/// As [`dot_batch`], with `m = src.len()`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot_batch_rows(src: Rows<'_>, packed: &[f32], k: usize, out: &mut [f32]) {
    let (m, dim) = (src.m, src.dim);
    debug_assert_eq!(out.len(), m * k);
    debug_assert_eq!(packed.len(), k.div_ceil(NR) * dim * NR);
    thread_local! {
        // Reused across calls: a fresh buffer per call would be mapped and faulted in each time.
        static LEFT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    LEFT.with_borrow_mut(|a| {
        pack_blocks::<MR>(src, a);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..len).map(|_| rng.normal() as f32).collect()
    }

    /// The register transpose writes exactly what the plain loop writes (padding included),
    /// into a reused buffer full of stale values, for both block widths.
    #[test]
    fn simd_packing_equals_the_plain_loop() {
        if !available() {
            eprintln!("no AVX-512F: only the plain loop runs here");
            return;
        }
        for (m, dim) in [(1, 1), (5, 3), (12, 16), (13, 17), (33, 40), (70, 1024)] {
            let x = data(m * dim, m as u64 * 31 + dim as u64);
            let sel: Vec<usize> = (0..m).rev().step_by(2).chain((0..m).step_by(3)).collect();
            let scale: Vec<f32> = sel.iter().map(|&r| 0.25 + r as f32 * 0.37).collect();
            for src in [Rows::all(&x, dim), Rows::selected(&x, dim, &sel, &scale)] {
                fn both<const W: usize>(src: Rows<'_>) -> (Vec<f32>, Vec<f32>) {
                    let need = src.len().div_ceil(W) * W * src.dim;
                    let mut fast = vec![f32::NAN; need + 7];
                    pack_blocks::<W>(src, &mut fast);
                    let mut slow = vec![f32::NAN; need];
                    pack_blocks_scalar::<W>(src, &mut slow);
                    (fast, slow)
                }
                let (f, s) = both::<NR>(src);
                assert_eq!(
                    f.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "NR m {m} dim {dim}"
                );
                let (f, s) = both::<MR>(src);
                assert_eq!(
                    f.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "MR m {m} dim {dim}"
                );
            }
        }
    }

    /// Few right-hand rows (one block) skip the left packing: the same bits as the packed
    /// tiles, for every row count, width and dimension tail.
    #[test]
    fn unpacked_products_equal_the_packed_tiles_bit_for_bit() {
        if !available() {
            eprintln!("no AVX-512F: nothing to compare");
            return;
        }
        for (m, k, dim) in [
            (1, 1, 1),
            (7, 16, 17),
            (8, 17, 384),
            (37, 32, 100),
            (100, 3, 48),
            (9, 31, 385),
        ] {
            let (x, c) = (data(m * dim, m as u64), data(k * dim, 99 + k as u64));
            let packed = pack(&c, dim);
            let (mut direct, mut tiles) = (vec![0f32; m * k], vec![0f32; m * k]);
            // SAFETY: AVX-512F checked above; `packed` holds the k rows of c.
            unsafe {
                dot_batch(&x, &packed, k, dim, &mut direct);
                dot_batch_rows(Rows::all(&x, dim), &packed, k, &mut tiles);
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&direct), bits(&tiles), "m {m} k {k} dim {dim}");
        }
    }

    #[test]
    fn plain_packing_layout_is_dimension_major_blocks() {
        // 3 rows of 2: block 0 holds rows 0..NR at [t][row], zero-padded.
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut out = vec![f32::NAN; 2 * NR];
        pack_blocks_scalar::<NR>(Rows::all(&x, 2), &mut out);
        assert_eq!(&out[..3], &[1.0, 3.0, 5.0]);
        assert_eq!(&out[NR..NR + 3], &[2.0, 4.0, 6.0]);
        assert!(out[3..NR].iter().chain(&out[NR + 3..]).all(|&v| v == 0.0));
    }
}
