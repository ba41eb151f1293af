//! bf16 matrix products `X·Cᵀ`: inputs rounded to bfloat16, products and sums in f32 — the
//! precision vision-language models already run their tokens in, at about three times the
//! f32 throughput on CPUs with AVX-512 BF16 (`vdpbf16ps`; measured 210 vs 75 GFLOP/s on one
//! Zen 4 core).
//!
//! Every output is defined by one sequence of operations, whatever kernel runs it:
//! both rows are rounded to bf16 (round to nearest even, denormals to signed zero, as
//! `vcvtne2ps2bf16`), then `acc = 0; for p: acc = (acc + a[2p+1]·b[2p+1]) + a[2p]·b[2p]` where
//! each bf16 product is exact in f32 and each addition rounds in f32 (denormal sums flushed
//! to zero) — the semantics of `vdpbf16ps` lane by lane. The portable path performs the same operations in the same
//! order, so both kernels give bit-identical results (unit-tested where the CPU has the
//! instruction), and a value never depends on which rows share its block.
//!
//! Right-hand rows are packed once ([`PackedBf16`]) into blocks of [`NR`] rows stored
//! pair-major (`[pair][row in block][2]`), so one 512-bit load gives 16 rows' pair `p`;
//! left-hand rows are packed per call into blocks of [`MR`] rows (`[pair][row]`, one
//! 32-bit word per pair) and broadcast, as in the f32 kernel next door.

use std::cell::RefCell;
use std::sync::OnceLock;

/// Left-hand rows per register tile.
const MR: usize = 12;
/// Right-hand rows per register tile (two 16-lane registers).
const NR: usize = 32;

/// Rounds `v` to bfloat16 bits: nearest, ties to even; NaN stays a (quiet) NaN; f32
/// denormals become a zero of the same sign (what `vcvtne2ps2bf16` does).
#[inline]
pub fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    if bits & 0x7F80_0000 == 0 {
        return ((bits >> 16) & 0x8000) as u16;
    }
    let lsb = (bits >> 16) & 1;
    (bits.wrapping_add(0x7FFF + lsb) >> 16) as u16
}

/// The f32 value of bfloat16 bits (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Which bf16 kernel this process uses (decided once; `DPRUNE_KERNEL=portable` forces the
/// portable one, as for the f32 kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// AVX-512 BF16 (`vdpbf16ps`).
    Avx512Bf16,
    /// Plain f32 arithmetic in the same order (bit-identical, several times slower).
    Portable,
}

/// The bf16 kernel in use (see [`Bf16Kernel`]).
pub fn bf16_kernel() -> Bf16Kernel {
    static K: OnceLock<Bf16Kernel> = OnceLock::new();
    *K.get_or_init(|| {
        let forced = std::env::var("DPRUNE_KERNEL").is_ok_and(|v| v == "portable");
        #[cfg(target_arch = "x86_64")]
        if !forced && simd::available() {
            return Bf16Kernel::Avx512Bf16;
        }
        let _ = forced;
        Bf16Kernel::Portable
    })
}

/// Whether certified bf16 filtering (bf16 products first, f32 only where the error bound
/// leaves a doubt) pays here: the AVX-512 BF16 kernel runs (elsewhere the bf16 products
/// are slower than the f32 ones) and outpaces the f32 kernel on this CPU
/// (`bf16_outpaces_f32`, a timed probe). `DPRUNE_CERTIFIED=0` turns it off; `DPRUNE_CERTIFIED=bf16`
/// turns it on wherever the kernel runs, without the probe. Either way the outputs are
/// the same bits: only the speed depends on this answer.
pub fn certified_bf16_pays() -> bool {
    if bf16_kernel() != Bf16Kernel::Avx512Bf16 {
        return false;
    }
    match std::env::var("DPRUNE_CERTIFIED").as_deref() {
        Ok("0") => false,
        Ok("bf16") => true,
        _ => bf16_outpaces_f32(),
    }
}

/// How many times the f32 kernel's rate the bf16 products must reach for the certified
/// paths to pay: they add rounding, packing and f32 rechecks of the doubtful pairs. Zen 4
/// runs `vdpbf16ps` at about twice the rate of its f32 FMAs (three times on one core, see
/// the module doc). On Intel the answer has differed between machines: one Sapphire/Emerald
/// Rapids host ran it at about the f32 rate (SemDeDup's certified pairwise pass took 7.2 s
/// against 4.2 s in f32), the Emerald Rapids VM of 2026-12-07 at 1.9× (this probe).
const MIN_BF16_SPEEDUP: f64 = 1.4;

/// A one-time probe, about a millisecond: the same 192 × 512 product (384 dims) through
/// the bf16 kernel and the packed f32 kernel, each the best of four, both including their
/// per-call packing of the left rows as the real tiles do. True when bf16 is at least
/// [`MIN_BF16_SPEEDUP`] times faster. Measured rather than looked up by CPU model so a
/// new CPU gets the right answer; a noisy machine can only cost speed, never change a bit.
pub fn bf16_outpaces_f32() -> bool {
    static PAYS: OnceLock<bool> = OnceLock::new();
    *PAYS.get_or_init(|| {
        let (m, k, dim) = (192, 512, 384);
        let fill =
            |n: usize, mul: usize| -> Vec<f32> { (0..n).map(|i| (i * mul % 1999) as f32 / 1999.0 - 0.5).collect() };
        let (x, c) = (fill(m * dim, 7919), fill(k * dim, 104_729));
        let rows: Vec<usize> = (0..m).collect();
        let all: Vec<usize> = (0..k).collect();
        let bf = PackedBf16::new(&c, dim, &all, &vec![1.0; k]);
        let f32s = super::PackedRows::new(&c, dim);
        let scale = vec![1.0f32; m];
        let mut out = vec![0f32; m * k];
        let (mut t_bf16, mut t_f32) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..4 {
            let t = std::time::Instant::now();
            dot_batch_bf16(&x, &rows, &scale, &bf, &mut out);
            t_bf16 = t_bf16.min(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            super::dot_batch_packed(&x, &f32s, &mut out);
            t_f32 = t_f32.min(t.elapsed().as_secs_f64());
        }
        if std::env::var_os("DPRUNE_PROBE_LOG").is_some() {
            eprintln!("dprune: bf16 products {:.2}x the f32 kernel's rate", t_f32 / t_bf16);
        }
        t_f32 >= MIN_BF16_SPEEDUP * t_bf16
    })
}

/// Rows rounded to bf16 and packed once for many [`dot_batch_bf16`] calls.
#[derive(Debug, Clone)]
pub struct PackedBf16 {
    /// `blocks × pairs × NR` words (two bf16 each, low half = even coordinate), zero-padded.
    data: Vec<u32>,
    k: usize,
    dim: usize,
}

impl PackedBf16 {
    /// Packs the rows `rows` of the row-major `x` (`dim` columns), each multiplied by
    /// `scale[j]` (f32, before rounding; e.g. the inverse norm for unit rows).
    ///
    /// # Panics
    /// If `x` is not a multiple of `dim`, a row index is out of range, or `scale` is not
    /// one value per selected row.
    pub fn new(x: &[f32], dim: usize, rows: &[usize], scale: &[f32]) -> Self {
        assert!(dim > 0 && x.len().is_multiple_of(dim), "PackedBf16: x is not n x dim");
        assert_eq!(rows.len(), scale.len(), "PackedBf16: one scale per row");
        let k = rows.len();
        let mut data = Vec::new();
        pack(x, dim, rows, scale, NR, &mut data);
        PackedBf16 { data, k, dim }
    }

    /// Number of rows.
    pub fn k(&self) -> usize {
        self.k
    }
}

/// `out[i * k + j] = bf16(x_{rows[i]} · scale[i]) · bf16 row j of `c`` (module doc) for the
/// selected rows of the row-major `x` against the `k` rows packed in `c`; single-threaded.
///
/// # Panics
/// If the lengths do not match.
pub fn dot_batch_bf16(x: &[f32], rows: &[usize], scale: &[f32], c: &PackedBf16, out: &mut [f32]) {
    dot_batch_bf16_cols(x, rows, scale, c, 0, out)
}

/// [`dot_batch_bf16`] against the packed rows `from..k` only: `out[i * (k - from) + j -
/// from]`, the same bits as the full product's entries. `from` is a multiple of 32.
///
/// # Panics
/// If the lengths do not match or `from` is not a multiple of 32 up to k.
pub fn dot_batch_bf16_cols(x: &[f32], rows: &[usize], scale: &[f32], c: &PackedBf16, from: usize, out: &mut [f32]) {
    let (dim, k, m) = (c.dim, c.k, rows.len());
    assert!(x.len().is_multiple_of(dim), "dot_batch_bf16: x is not n x dim");
    assert!(
        from <= k && from.is_multiple_of(NR),
        "dot_batch_bf16: column {from} is not a block start"
    );
    assert_eq!(scale.len(), m, "dot_batch_bf16: one scale per row");
    assert_eq!(out.len(), m * (k - from), "dot_batch_bf16: out is not m x cols");
    if m == 0 || k == from {
        return;
    }
    let pairs = dim.div_ceil(2);
    thread_local! {
        static LEFT: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    }
    LEFT.with_borrow_mut(|a| {
        pack(x, dim, rows, scale, MR, a);
        match bf16_kernel() {
            // SAFETY: this kernel is chosen only when the CPU has AVX-512F/BW/BF16; `a` and
            // `c.data` were packed above / by `PackedBf16::new` for this dim, m and k.
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Avx512Bf16 => unsafe { simd::dot_batch(a, &c.data, m, k, from, pairs, out) },
            _ => portable(a, &c.data, m, k, from, pairs, out),
        }
    });
}

/// Packs the selected, scaled, rounded rows into zero-padded blocks of `width` rows laid out
/// `[pair][row in block]`, one word per pair (low half = even coordinate), into `out`.
/// On x86-64 the rows are converted row-major first and then transposed 16 × 16 in registers
/// (the f32 kernel's packing, which only moves bits); elsewhere each word is scattered.
fn pack(x: &[f32], dim: usize, rows: &[usize], scale: &[f32], width: usize, out: &mut Vec<u32>) {
    let pairs = dim.div_ceil(2);
    #[cfg(target_arch = "x86_64")]
    {
        thread_local! {
            static WORDS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
        }
        WORDS.with_borrow_mut(|words| {
            words.clear();
            words.resize(rows.len() * pairs, 0);
            for (i, ((&row, &s), w)) in rows.iter().zip(scale).zip(words.chunks_exact_mut(pairs)).enumerate() {
                // Rows are taken by position, often scattered: fetched a few ahead.
                if let Some(&ahead) = rows.get(i + super::PREFETCH_ROWS_AHEAD) {
                    super::prefetch_row(&x[ahead * dim..(ahead + 1) * dim]);
                }
                convert_row(&x[row * dim..(row + 1) * dim], s, w);
            }
            super::avx512::pack_words(words, pairs, width, out);
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    pack_scatter(x, dim, rows, scale, width, out);
}

/// The plain word-by-word [`pack`] (elsewhere than x86-64, and the test oracle).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn pack_scatter(x: &[f32], dim: usize, rows: &[usize], scale: &[f32], width: usize, out: &mut Vec<u32>) {
    let pairs = dim.div_ceil(2);
    out.clear();
    out.resize(rows.len().div_ceil(width) * width * pairs, 0);
    let mut words = vec![0u32; pairs];
    for (i, (&row, &s)) in rows.iter().zip(scale).enumerate() {
        convert_row(&x[row * dim..(row + 1) * dim], s, &mut words);
        let block = &mut out[(i / width) * width * pairs..];
        for (p, &w) in words.iter().enumerate() {
            block[p * width + i % width] = w;
        }
    }
}

/// `src · s` rounded to bf16, two values per word (an odd length pads with zero); the SIMD
/// conversion where the kernel runs, bit-identical to [`to_bf16`] (tested).
fn convert_row(src: &[f32], s: f32, words: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if bf16_kernel() == Bf16Kernel::Avx512Bf16 {
        // SAFETY: the kernel is chosen only when the CPU has AVX-512F/BW/BF16.
        return unsafe { simd::convert_row(src, s, words) };
    }
    convert_row_portable(src, s, words)
}

fn convert_row_portable(src: &[f32], s: f32, words: &mut [u32]) {
    for (w, pair) in words.iter_mut().zip(src.chunks(2)) {
        let lo = u32::from(to_bf16(pair[0] * s));
        let hi = pair.get(1).map_or(0, |&v| u32::from(to_bf16(v * s)));
        *w = lo | (hi << 16);
    }
}

/// The same operations as the SIMD kernel, in plain f32: each bf16 product is exact, and
/// `vdpbf16ps` adds the odd (high) product first, then the even one, rounding each time
/// (Intel's pseudo-code; checked bit for bit on AMD Zen 4 by the test below).
fn portable(a: &[u32], b: &[u32], m: usize, k: usize, from: usize, pairs: usize, out: &mut [f32]) {
    for i in 0..m {
        let ablock = &a[(i / MR) * MR * pairs..];
        for j in from..k {
            let bblock = &b[(j / NR) * pairs * NR + j % NR..];
            let mut acc = 0f32;
            for p in 0..pairs {
                let (w, v) = (ablock[p * MR + i % MR], bblock[p * NR]);
                let (alo, ahi) = (bf16_to_f32(w as u16), bf16_to_f32((w >> 16) as u16));
                let (blo, bhi) = (bf16_to_f32(v as u16), bf16_to_f32((v >> 16) as u16));
                acc = ftz(ftz(acc + ahi * bhi) + alo * blo);
            }
            out[i * (k - from) + j - from] = acc;
        }
    }
}

/// Flushes an f32 denormal to a zero of the same sign (the instruction's FTZ).
#[inline(always)]
fn ftz(v: f32) -> f32 {
    if v.to_bits() & 0x7F80_0000 == 0 {
        f32::from_bits(v.to_bits() & 0x8000_0000)
    } else {
        v
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! The `vdpbf16ps` register tile: `H × 32` outputs in 24 registers while the pairs run.

    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// Whether this CPU has the instructions (checked once; cached by std).
    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    }

    /// See [`super::dot_batch_bf16`].
    ///
    /// # Safety
    /// The CPU must have AVX-512F/BW/BF16; `a` from `pack` for `m` rows, `b` from
    /// `PackedBf16::new` for `k` rows, both with `pairs` pairs; `out.len() == m * k`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn dot_batch(
        a: &[u32],
        b: &[u32],
        m: usize,
        k: usize,
        from: usize,
        pairs: usize,
        out: &mut [f32],
    ) {
        debug_assert_eq!(a.len(), m.div_ceil(MR) * MR * pairs);
        debug_assert_eq!(b.len(), k.div_ceil(NR) * pairs * NR);
        let stride = k - from;
        for jb in from / NR..k.div_ceil(NR) {
            let bb = &b[jb * pairs * NR..(jb + 1) * pairs * NR];
            let j0 = jb * NR;
            let w = (k - j0).min(NR);
            for (ib, ablock) in a.chunks_exact(pairs * MR).enumerate() {
                let i0 = ib * MR;
                let h = (m - i0).min(MR);
                let o = &mut out[i0 * stride + j0 - from..];
                // SAFETY: the caller guarantees the features; blocks are full-size.
                unsafe {
                    match h {
                        12 => tile::<12>(ablock, bb, pairs, stride, w, o),
                        11 => tile::<11>(ablock, bb, pairs, stride, w, o),
                        10 => tile::<10>(ablock, bb, pairs, stride, w, o),
                        9 => tile::<9>(ablock, bb, pairs, stride, w, o),
                        8 => tile::<8>(ablock, bb, pairs, stride, w, o),
                        7 => tile::<7>(ablock, bb, pairs, stride, w, o),
                        6 => tile::<6>(ablock, bb, pairs, stride, w, o),
                        5 => tile::<5>(ablock, bb, pairs, stride, w, o),
                        4 => tile::<4>(ablock, bb, pairs, stride, w, o),
                        3 => tile::<3>(ablock, bb, pairs, stride, w, o),
                        2 => tile::<2>(ablock, bb, pairs, stride, w, o),
                        _ => tile::<1>(ablock, bb, pairs, stride, w, o),
                    }
                }
            }
        }
    }

    /// One `H × NR` tile; the first `w` columns are stored to `out` (row stride `k`).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[inline]
    unsafe fn tile<const H: usize>(a: &[u32], b: &[u32], pairs: usize, k: usize, w: usize, out: &mut [f32]) {
        debug_assert!(a.len() >= pairs * MR && b.len() >= pairs * NR && H <= MR);
        let mut acc = [[_mm512_setzero_ps(); 2]; H];
        let ap = a.as_ptr();
        let bp = b.as_ptr();
        for p in 0..pairs {
            // SAFETY: p < pairs and r < H <= MR keep every read inside `a` and `b`.
            unsafe {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR).cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR + 16).cast()));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(p * MR + r) as i32));
                    acc_r[0] = _mm512_dpbf16_ps(acc_r[0], av, b0);
                    acc_r[1] = _mm512_dpbf16_ps(acc_r[1], av, b1);
                }
            }
        }
        let op = out.as_mut_ptr();
        for (r, acc_r) in acc.iter().enumerate() {
            debug_assert!(r * k + w <= out.len());
            // SAFETY: row r's first w outputs lie inside `out`; masked lanes are untouched.
            unsafe {
                _mm512_mask_storeu_ps(op.add(r * k), lane_mask(w), acc_r[0]);
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

    /// See [`super::convert_row`].
    ///
    /// # Safety
    /// The CPU must have AVX-512F/BW/BF16; `words.len() == src.len().div_ceil(2)`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn convert_row(src: &[f32], s: f32, words: &mut [u32]) {
        debug_assert_eq!(words.len(), src.len().div_ceil(2));
        let sv = _mm512_set1_ps(s);
        let full = src.len() / 32;
        for c in 0..full {
            // SAFETY: 32 values from 32c and 16 words from 16c lie inside the slices.
            unsafe {
                let lo = _mm512_mul_ps(_mm512_loadu_ps(src.as_ptr().add(32 * c)), sv);
                let hi = _mm512_mul_ps(_mm512_loadu_ps(src.as_ptr().add(32 * c + 16)), sv);
                // cvtne2ps_pbh(a, b): the low 16 bf16 come from b, in order, so the words
                // are (even, odd) pairs of the 32 source values.
                let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(words.as_mut_ptr().add(16 * c).cast(), h);
            }
        }
        super::convert_row_portable(&src[32 * full..], s, &mut words[16 * full..]);
    }

    /// Hardware conversion of 16 values, for the rounding test.
    #[cfg(test)]
    pub(super) fn convert16(v: &[f32; 16]) -> [u16; 16] {
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        unsafe fn go(v: &[f32; 16]) -> [u16; 16] {
            // SAFETY: 16 readable values; the caller checked the features.
            unsafe { std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(v.as_ptr()))) }
        }
        assert!(available());
        // SAFETY: features checked just above.
        unsafe { go(v) }
    }

    /// Runs the SIMD kernel regardless of `DPRUNE_KERNEL`, for the equality test.
    #[cfg(test)]
    pub(super) fn dot_batch_checked(a: &[u32], b: &[u32], m: usize, k: usize, pairs: usize, out: &mut [f32]) {
        assert!(available());
        // SAFETY: features checked just above; the caller packed `a` and `b`.
        unsafe { dot_batch(a, b, m, k, 0, pairs, out) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n * dim).map(|_| rng.normal() as f32).collect()
    }

    #[test]
    fn rounding_is_nearest_even_with_denormals_to_zero() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3F80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to even.
        assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3F82);
        assert_eq!(to_bf16(-1e-40), 0x8000);
        assert!(bf16_to_f32(to_bf16(f32::NAN)).is_nan());
        assert_eq!(bf16_to_f32(to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(bf16_to_f32(to_bf16(f32::MAX)), f32::INFINITY);
    }

    #[test]
    fn transposed_packing_equals_the_word_scatter() {
        for (n, dim) in [(1usize, 1usize), (5, 3), (13, 33), (40, 67), (70, 1024)] {
            let x = rows(n, dim, 40 + n as u64);
            let sel: Vec<usize> = (0..n).rev().step_by(2).chain((0..n).step_by(3)).collect();
            let scale: Vec<f32> = sel.iter().map(|&r| 0.3 + r as f32 * 0.1).collect();
            for width in [MR, NR] {
                let (mut fast, mut slow) = (vec![7u32; 5], Vec::new());
                pack(&x, dim, &sel, &scale, width, &mut fast);
                pack_scatter(&x, dim, &sel, &scale, width, &mut slow);
                assert_eq!(fast, slow, "n {n} dim {dim} width {width}");
            }
        }
    }

    #[test]
    fn products_are_close_to_f32() {
        let (m, k, dim) = (13, 35, 67);
        let x = rows(m, dim, 1);
        let c = rows(k, dim, 2);
        let ones_m = vec![1f32; m];
        let idx_m: Vec<usize> = (0..m).collect();
        let idx_k: Vec<usize> = (0..k).collect();
        let packed = PackedBf16::new(&c, dim, &idx_k, &vec![1f32; k]);
        let mut out = vec![0f32; m * k];
        dot_batch_bf16(&x, &idx_m, &ones_m, &packed, &mut out);
        for i in 0..m {
            for j in 0..k {
                let (a, b) = (&x[i * dim..(i + 1) * dim], &c[j * dim..(j + 1) * dim]);
                let exact = crate::distance::dot_reference(a, b);
                let bound: f64 = a.iter().zip(b).map(|(p, q)| f64::from((p * q).abs())).sum::<f64>() * 2f64.powi(-7);
                assert!((f64::from(out[i * k + j]) - exact).abs() <= bound + 1e-5, "{i},{j}");
            }
        }
    }

    #[test]
    fn selected_scaled_rows_equal_prescaled_rows() {
        let (n, dim) = (20, 9);
        let x = rows(n, dim, 3);
        let sel = [4usize, 0, 17, 9];
        let scale = [0.5f32, 2.0, 1.5, 0.25];
        let pre: Vec<f32> = sel
            .iter()
            .zip(&scale)
            .flat_map(|(&r, &s)| x[r * dim..(r + 1) * dim].iter().map(move |v| v * s))
            .collect();
        let all: Vec<usize> = (0..n).collect();
        let packed = PackedBf16::new(&x, dim, &all, &vec![1f32; n]);
        let mut a = vec![0f32; sel.len() * n];
        let mut b = vec![0f32; sel.len() * n];
        dot_batch_bf16(&x, &sel, &scale, &packed, &mut a);
        dot_batch_bf16(&pre, &[0, 1, 2, 3], &[1.0; 4], &packed, &mut b);
        assert_eq!(a, b);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn hardware_and_portable_agree_bit_for_bit() {
        if !simd::available() {
            eprintln!("no AVX-512 BF16 on this CPU: only the portable kernel is checked elsewhere");
            return;
        }
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            let mut v = [0f32; 16];
            for x in &mut v {
                let e = (rng.below(60) as i32) - 30;
                *x = (rng.normal() as f32) * 2f32.powi(e);
            }
            v[0] = 1e-40;
            v[1] = f32::MAX;
            let hw = simd::convert16(&v);
            let sw: Vec<u16> = v.iter().map(|&x| to_bf16(x)).collect();
            assert_eq!(hw.to_vec(), sw, "{v:?}");
        }
        for len in [1usize, 31, 32, 67, 1024] {
            let v: Vec<f32> = (0..len).map(|_| rng.normal() as f32 * 3.0).collect();
            let (mut hw, mut sw) = (vec![0u32; len.div_ceil(2)], vec![0u32; len.div_ceil(2)]);
            // SAFETY: features checked at the top of this test.
            unsafe { simd::convert_row(&v, 0.37, &mut hw) };
            convert_row_portable(&v, 0.37, &mut sw);
            assert_eq!(hw, sw, "len {len}");
        }
        for (m, k, dim) in [(1, 1, 1), (12, 32, 64), (13, 33, 67), (30, 70, 1024)] {
            let x = rows(m, dim, 11);
            let c = rows(k, dim, 12);
            let idx_m: Vec<usize> = (0..m).collect();
            let idx_k: Vec<usize> = (0..k).collect();
            let packed = PackedBf16::new(&c, dim, &idx_k, &vec![1f32; k]);
            let mut a = Vec::new();
            pack(&x, dim, &idx_m, &vec![1f32; m], MR, &mut a);
            let pairs = dim.div_ceil(2);
            let mut hw = vec![0f32; m * k];
            let mut sw = vec![0f32; m * k];
            simd::dot_batch_checked(&a, &packed.data, m, k, pairs, &mut hw);
            portable(&a, &packed.data, m, k, 0, pairs, &mut sw);
            let hw_bits: Vec<u32> = hw.iter().map(|v| v.to_bits()).collect();
            let sw_bits: Vec<u32> = sw.iter().map(|v| v.to_bits()).collect();
            assert_eq!(hw_bits, sw_bits, "m {m} k {k} dim {dim}");
        }
    }
}
