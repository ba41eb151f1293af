//! int8 matrix products `X·Cᵀ` for the certified searches: each row scaled by its own
//! max |value| / 127 and rounded to integers in [−127, 127], the integer dot products
//! summed exactly in i32 (`vpdpbusd`, AVX-512 VNNI: 64 multiply-adds per instruction,
//! twice `vdpbf16ps`), then converted and scaled once in f32.
//!
//! Every output is defined by one sequence of operations, whatever kernel runs it: with
//! q, s the integers and scale of the left row and r, σ those of the right row,
//! `out = (Σ q_t·r_t as f32) · (s · σ)` (an exact integer sum, one conversion, two f32
//! products). The SIMD kernel adds 128 to q so it fits `vpdpbusd`'s unsigned operand and
//! subtracts 128·Σr afterwards, in exact integer arithmetic, so both kernels give the
//! same bits (unit-tested where the CPU has the instruction).
//!
//! Error. With x̃ = s·q and c̃ = σ·r the values the integers stand for,
//! x·c − x̃·c̃ = (x − x̃)·c + x̃·(c − c̃), so by Cauchy–Schwarz the rounding moves the dot
//! by at most ‖x − x̃‖·max‖c‖ + ‖x̃‖·max‖c − c̃‖; the three f32 roundings of the output add
//! at most 3.0001·u·‖x̃‖·max‖c̃‖ (u = 2⁻²⁴). [`I8Bound`] adds the f32 kernel's own error
//! γ_d·‖x‖·max‖c‖ (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, §3.1),
//! which makes it B + E of `cluster::certified`. About five times the bf16 bound for
//! random unit rows (0.018 against 0.0035 at d = 384): more candidates per row, each an
//! f32 pair product, for half the product cost.
//!
//! Layout as in the bf16 kernel next door: right-hand rows packed once into blocks of
//! [`NR`] rows stored quad-major (`[quad][row in block]`, four bytes per word, the
//! lowest coordinate in the low byte); left-hand rows per call into blocks of [`MR`].

use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

use super::PREFETCH_ROWS_AHEAD;

mod quantized;
pub use quantized::{Quantized, RowSource};

/// Left-hand rows per register tile.
const MR: usize = 12;
/// Right-hand rows per register tile (two 16-lane registers).
const NR: usize = 32;
/// Unit roundoff of f32.
const U32: f64 = 1.0 / (1u64 << 24) as f64;
/// Rows longer than this use bf16: 255·127·d must stay below 2³¹ in the i32 sums.
pub const MAX_INT8_DIM: usize = 32_768;
/// Rows whose largest |value| is below this are quantized to zeros (their scale would
/// underflow); the residual, the row itself, carries the whole error.
const TINY: f32 = 1e-30;

/// Which int8 kernel this process uses (decided once; `DPRUNE_KERNEL=portable` forces the
/// portable one, as for the f32 and bf16 kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    /// AVX-512 VNNI (`vpdpbusd`).
    Avx512Vnni,
    /// Plain integer arithmetic (bit-identical, many times slower).
    Portable,
}

/// The int8 kernel in use (see [`Int8Kernel`]).
pub fn int8_kernel() -> Int8Kernel {
    static K: OnceLock<Int8Kernel> = OnceLock::new();
    *K.get_or_init(|| {
        let forced = std::env::var("DPRUNE_KERNEL").is_ok_and(|v| v == "portable");
        #[cfg(target_arch = "x86_64")]
        if !forced && simd::available() {
            return Int8Kernel::Avx512Vnni;
        }
        let _ = forced;
        Int8Kernel::Portable
    })
}

/// Upper bounds on a row's norms: ‖x‖, ‖x̃‖ and ‖x − x̃‖ (x̃ the value its integers
/// stand for). NaN or ∞ in the row gives NaN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct I8Norms {
    /// ‖x‖.
    pub norm: f64,
    /// ‖x̃‖.
    pub rounded: f64,
    /// ‖x − x̃‖.
    pub residual: f64,
}

impl I8Norms {
    const NAN: Self = I8Norms {
        norm: f64::NAN,
        rounded: f64::NAN,
        residual: f64::NAN,
    };

    fn max(self, o: Self) -> Self {
        I8Norms {
            norm: self.norm.max(o.norm),
            rounded: self.rounded.max(o.rounded),
            residual: self.residual.max(o.residual),
        }
    }
}

/// B + E for int8 products against a set of right-hand rows (module doc).
#[derive(Debug, Clone, Copy)]
pub struct I8Bound {
    right: I8Norms,
    gamma: f64,
}

impl I8Bound {
    /// An upper bound on |int8 product − f32 kernel product| for a row with norms `x`
    /// against any of the rows.
    #[inline]
    pub fn error(&self, x: &I8Norms) -> f64 {
        let c = &self.right;
        let rounding = x.residual * c.norm + x.rounded * c.residual;
        let output = 3.0001 * U32 * x.rounded * c.rounded;
        let f32_kernel = self.gamma * x.norm * c.norm;
        (rounding + output + f32_kernel) * 1.01 + 1e-30
    }
}

/// Rows quantized and packed once for many [`dot_batch_i8`] calls.
#[derive(Debug, Clone)]
pub struct PackedI8 {
    /// `blocks × quads × NR` words, zero-padded.
    data: Vec<u32>,
    /// Per packed row (padded to whole blocks): the scale σ, and 128·Σr.
    scale: Vec<f32>,
    corr: Vec<i32>,
    bound: I8Bound,
    k: usize,
    dim: usize,
}

impl PackedI8 {
    /// Quantizes and packs the rows of the row-major `c` (`dim` columns).
    ///
    /// # Panics
    /// If `c` is not a multiple of `dim`, or `dim` is 0 or above [`MAX_INT8_DIM`].
    pub fn new(c: &[f32], dim: usize) -> Self {
        assert!(
            dim > 0 && dim <= MAX_INT8_DIM && c.len().is_multiple_of(dim),
            "PackedI8: c is not n x dim"
        );
        Self::from_rows(c.chunks_exact(dim), dim)
    }

    /// [`PackedI8::new`] of the rows given, in order, each read where it lies (the same
    /// bits as packing them gathered, without the copy).
    ///
    /// # Panics
    /// If a row is not `dim` long, or `dim` is 0 or above [`MAX_INT8_DIM`].
    pub fn from_rows<'a>(c: impl ExactSizeIterator<Item = &'a [f32]>, dim: usize) -> Self {
        Self::from_sources(c.map(RowSource::Raw), dim)
    }

    /// [`PackedI8::from_rows`] of rows quantized now or before ([`RowSource`]): the same
    /// bits either way.
    ///
    /// # Panics
    /// As [`PackedI8::from_rows`].
    pub fn from_sources<'a>(c: impl ExactSizeIterator<Item = RowSource<'a>>, dim: usize) -> Self {
        assert!(dim > 0 && dim <= MAX_INT8_DIM, "PackedI8: dim {dim} out of range");
        let (k, quads) = (c.len(), dim.div_ceil(4));
        let mut words = vec![0u32; k * quads];
        let blocks = k.div_ceil(NR);
        let (mut scale, mut corr) = (vec![0f32; blocks * NR], vec![0i32; blocks * NR]);
        let mut right = I8Norms {
            norm: 0.0,
            rounded: 0.0,
            residual: 0.0,
        };
        // Rows read by position are scattered: each is fetched a few rows ahead.
        let c: Vec<RowSource> = c.collect();
        for (j, (row, w)) in c.iter().zip(words.chunks_exact_mut(quads)).enumerate() {
            if let Some(ahead) = c.get(j + PREFETCH_ROWS_AHEAD) {
                ahead.prefetch();
            }
            let (s, sum, norms) = row.quantize(dim, w, 0);
            (scale[j], corr[j]) = (s, 128 * sum);
            // A row that cannot be scaled (NaN, ∞) makes every bound NaN, so every search
            // falls back to f32 instead of trusting a bound that ignores it.
            right = if norms.norm.is_nan() || right.norm.is_nan() {
                I8Norms::NAN
            } else {
                right.max(norms)
            };
        }
        let mut data = Vec::new();
        pack_words(&words, quads, NR, &mut data);
        let d = dim as f64;
        let bound = I8Bound {
            right,
            gamma: d * U32 / (1.0 - d * U32),
        };
        PackedI8 {
            data,
            scale,
            corr,
            bound,
            k,
            dim,
        }
    }

    /// Number of rows.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The error bound against these rows.
    pub fn bound(&self) -> &I8Bound {
        &self.bound
    }
}

/// `out[i·k + j]` = the int8 product (module doc) of row `i` of the row-major `x` with
/// row `j` packed in `c`, and `err[i]` = [`I8Bound::error`] of row `i`; single-threaded.
///
/// # Panics
/// If the lengths do not match.
pub fn dot_batch_i8(x: &[f32], c: &PackedI8, out: &mut [f32], err: &mut [f64]) {
    let dim = c.dim;
    assert!(x.len().is_multiple_of(dim), "dot_batch_i8: x is not n x dim");
    let m = x.len() / dim;
    assert!(out.len() == m * c.k && err.len() == m, "dot_batch_i8: out is not m x k");
    if m == 0 {
        return;
    }
    thread_local! {
        static BUF: RefCell<(Vec<u32>, I8Rows)> = RefCell::new((Vec::new(), I8Rows::default()));
    }
    BUF.with_borrow_mut(|(words, rows)| {
        rows.fill(x, dim, words);
        rows.dot_batch(c, out, err);
    });
}

/// Left-hand rows quantized and packed for [`dot_batch_i8`]'s kernel, kept for
/// products against several sets of right-hand rows (k-means searches the same
/// sample once per iteration; quantizing it was a sixth of a search).
#[derive(Debug, Clone, Default)]
pub struct I8Rows {
    /// `⌈m / MR⌉ × quads × MR` words.
    a: Vec<u32>,
    /// Each row's scale, padded to whole blocks.
    scale: Vec<f32>,
    norms: Vec<I8Norms>,
    dim: usize,
}

impl I8Rows {
    /// Quantizes and packs the rows of the row-major `x` (`dim` columns).
    ///
    /// # Panics
    /// If `x` is not a multiple of `dim`, or `dim` is 0 or above [`MAX_INT8_DIM`].
    pub fn new(x: &[f32], dim: usize) -> Self {
        let mut r = I8Rows::default();
        r.fill(x, dim, &mut Vec::new());
        r
    }

    /// [`I8Rows::new`] of the rows given, in order, each read where it lies (the same
    /// bits as from them gathered, without the copy).
    ///
    /// # Panics
    /// If a row is not `dim` long, or `dim` is 0 or above [`MAX_INT8_DIM`].
    pub fn from_rows<'a>(x: impl ExactSizeIterator<Item = &'a [f32]>, dim: usize) -> Self {
        Self::from_sources(x.map(RowSource::Raw), dim)
    }

    /// [`I8Rows::from_rows`] of rows quantized now or before ([`RowSource`]): the same
    /// bits either way.
    ///
    /// # Panics
    /// As [`I8Rows::from_rows`].
    pub fn from_sources<'a>(x: impl ExactSizeIterator<Item = RowSource<'a>>, dim: usize) -> Self {
        let mut r = I8Rows::default();
        r.fill_rows(x, dim, &mut Vec::new());
        r
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.norms.len()
    }

    fn fill(&mut self, x: &[f32], dim: usize, words: &mut Vec<u32>) {
        assert!(
            dim > 0 && dim <= MAX_INT8_DIM && x.len().is_multiple_of(dim),
            "I8Rows: x is not n x dim"
        );
        self.fill_rows(x.chunks_exact(dim).map(RowSource::Raw), dim, words);
    }

    fn fill_rows<'a>(&mut self, x: impl ExactSizeIterator<Item = RowSource<'a>>, dim: usize, words: &mut Vec<u32>) {
        assert!(dim > 0 && dim <= MAX_INT8_DIM, "I8Rows: dim {dim} out of range");
        let m = x.len();
        let quads = dim.div_ceil(4);
        self.dim = dim;
        words.clear();
        words.resize(m * quads, 0);
        self.scale.clear();
        self.scale.resize(m.div_ceil(MR) * MR, 0.0);
        self.norms.clear();
        let x: Vec<RowSource> = x.collect();
        for (i, (row, w)) in x.iter().zip(words.chunks_exact_mut(quads)).enumerate() {
            if let Some(ahead) = x.get(i + PREFETCH_ROWS_AHEAD) {
                ahead.prefetch();
            }
            let (s, _, norms) = row.quantize(dim, w, 128);
            self.scale[i] = s;
            self.norms.push(norms);
        }
        pack_words(words, quads, MR, &mut self.a);
    }

    /// [`dot_batch_i8`] of these rows against `c` (same bits as from the f32 rows).
    ///
    /// # Panics
    /// If the dimensions differ or `out` is not rows × k, `err` one per row.
    pub fn dot_batch(&self, c: &PackedI8, out: &mut [f32], err: &mut [f64]) {
        self.dot_batch_where(c, out, err, None);
    }

    /// [`I8Rows::dot_batch`], except that every register tile (rows `i`, columns `j`, at
    /// most 12 × 32) for which `skip(i, j)` holds is not computed: its outputs are −∞.
    /// For callers that can prove a whole tile useless (the cross pass's pairs that the
    /// other direction computes, or that lie too far apart to be near-duplicates).
    ///
    /// # Panics
    /// As [`I8Rows::dot_batch`].
    pub fn dot_batch_where(&self, c: &PackedI8, out: &mut [f32], err: &mut [f64], skip: Option<&TileSkip<'_>>) {
        let (dim, k, m) = (c.dim, c.k, self.rows());
        assert!(
            self.dim == dim && out.len() == m * k && err.len() == m,
            "I8Rows::dot_batch: shapes"
        );
        for (e, n) in err.iter_mut().zip(&self.norms) {
            *e = c.bound.error(n);
        }
        if m == 0 || k == 0 {
            return;
        }
        let quads = dim.div_ceil(4);
        match int8_kernel() {
            // SAFETY: this kernel is chosen only when the CPU has AVX-512F/BW/VNNI; `a` was
            // packed by `fill` and `c` by `PackedI8::new`, for this dim, m and k.
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx512Vnni => unsafe { simd::dot_batch(&self.a, &self.scale, c, m, quads, out, skip) },
            _ => portable_where(&self.a, &self.scale, c, m, quads, out, skip),
        }
    }
}

/// The portable kernel, then the skipped tiles set to −∞ (the SIMD kernel's outputs).
fn portable_where(
    a: &[u32],
    scale: &[f32],
    c: &PackedI8,
    m: usize,
    quads: usize,
    out: &mut [f32],
    skip: Option<&TileSkip<'_>>,
) {
    portable(a, scale, c, m, quads, out);
    if let Some(skip) = skip {
        fill_skipped_tiles(out, m, c.k, skip);
    }
}

/// Decides, per register tile (its left rows, its right rows), whether
/// [`I8Rows::dot_batch_where`] may leave it out.
pub type TileSkip<'a> = dyn Fn(Range<usize>, Range<usize>) -> bool + Sync + 'a;

/// Sets the outputs of the register tiles of an `m × k` product that `skip` leaves out
/// to −∞, as [`I8Rows::dot_batch_where`] leaves them: for other kernels' products, so
/// that every kernel leaves out the same pairs.
///
/// # Panics
/// If `out` is shorter than `m × k`.
pub fn fill_skipped_tiles(out: &mut [f32], m: usize, k: usize, skip: &TileSkip<'_>) {
    assert!(out.len() >= m * k, "fill_skipped_tiles: out is not m x k");
    for_each_tile(m, k, |i, j| {
        if skip(i.clone(), j.clone()) {
            fill_tile(out, k, i, j);
        }
    });
}

/// Calls `f` with the rows and columns of every register tile of an `m × k` product,
/// column blocks outermost, as the SIMD kernel visits them.
fn for_each_tile(m: usize, k: usize, mut f: impl FnMut(Range<usize>, Range<usize>)) {
    for j0 in (0..k).step_by(NR) {
        for i0 in (0..m).step_by(MR) {
            f(i0..(i0 + MR).min(m), j0..(j0 + NR).min(k));
        }
    }
}

/// Sets the outputs of a skipped tile (row stride `k`) to −∞.
fn fill_tile(out: &mut [f32], k: usize, i: Range<usize>, j: Range<usize>) {
    for r in i {
        out[r * k + j.start..r * k + j.end].fill(f32::NEG_INFINITY);
    }
}

/// Quantizes `row` into `words` (four values per word, the lowest coordinate in the low
/// byte, padded with `offset`): value t becomes q_t + `offset` (0 for the signed right
/// rows, 128 for the unsigned left ones), q_t = x_t·(127 / m) rounded to nearest even,
/// m = max|x_t|, and s = m / 127 is the row's scale. Returns s, Σq_t and the norms. A
/// row of zeros, or one too small to scale, gets s = 0; a row with NaN or ∞ (or squares
/// that overflow f32) gets s = NaN, so its products and error are NaN.
fn quantize_row(row: &[f32], words: &mut [u32], offset: i32) -> (f32, i32, I8Norms) {
    // SAFETY: u8 has alignment 1 and every byte pattern is a valid u32: the words are
    // written byte by byte, in coordinate order.
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 4) };
    bytes[row.len()..].fill(offset as u8);
    #[cfg(target_arch = "x86_64")]
    if crate::distance::kernel() == crate::distance::Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
        return unsafe { quantize_avx512(row, bytes, offset) };
    }
    quantize_body(row, bytes, offset)
}

/// [`quantize_body`] in AVX-512F intrinsics: the same operations lane by lane, so the
/// same bytes, scale and norms (tested).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_avx512(row: &[f32], bytes: &mut [u8], offset: i32) -> (f32, i32, I8Norms) {
    use std::arch::x86_64::*;
    const L: usize = 16;
    let n = row.len();
    let (full, rest) = (n / L, n % L);
    let tail: __mmask16 = ((1u32 << rest) - 1) as u16;
    let src = row.as_ptr();
    // SAFETY (both closures): chunk c < n.div_ceil(16); the last one is read and written
    // through the mask of its `rest` live lanes.
    let load = |c: usize| unsafe {
        if c < full {
            _mm512_loadu_ps(src.add(L * c))
        } else {
            _mm512_maskz_loadu_ps(tail, src.add(L * c))
        }
    };
    // SAFETY (the three views): a 512-bit register is 16 lanes of 32 bits, two are 16 of 64.
    let lanes = |v: __m512| -> [f32; L] { unsafe { std::mem::transmute(v) } };
    let (mut mx, mut sq) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for c in 0..n.div_ceil(L) {
        let v = load(c);
        mx = _mm512_max_ps(_mm512_abs_ps(v), mx);
        sq = _mm512_add_ps(sq, _mm512_mul_ps(v, v));
    }
    let sq = lanes(sq);
    let Some((s, inv)) = scale_of(&lanes(mx), &sq) else {
        bytes.fill(offset as u8);
        return (f32::NAN, 0, I8Norms::NAN);
    };
    let (sv, invv, off) = (_mm512_set1_ps(s), _mm512_set1_ps(inv), _mm512_set1_ps(offset as f32));
    let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    let (mut sum, mut sq_q, mut sq_r) = (_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_ps());
    let dst = bytes.as_mut_ptr();
    for c in 0..n.div_ceil(L) {
        let v = load(c);
        let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(v, invv));
        let q = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
        let b = _mm512_cvtps_epi32(_mm512_add_ps(q, off));
        // Narrowed in a register, then stored: the masked narrowing store
        // (`vpmovdb` to memory) was slow.
        let packed = _mm512_cvtepi32_epi8(b);
        if c < full {
            // SAFETY: 16 bytes from 16c lie inside `bytes` (c < full).
            unsafe { _mm_storeu_si128(dst.add(L * c).cast(), packed) };
        } else {
            let mut t = [0u8; L];
            // SAFETY: `t` holds 16 bytes.
            unsafe { _mm_storeu_si128(t.as_mut_ptr().cast(), packed) };
            bytes[L * c..L * c + rest].copy_from_slice(&t[..rest]);
        }
        let qi = _mm512_cvtps_epi32(q);
        sum = _mm512_add_epi32(sum, qi);
        sq_q = _mm512_add_epi32(sq_q, _mm512_mullo_epi32(qi, qi));
        // The residual x − s·q with one rounding, its square added with one more.
        let e = _mm512_fnmadd_ps(sv, q, v);
        sq_r = _mm512_fmadd_ps(e, e, sq_r);
    }
    let ints = |v: __m512i| -> [i32; L] { unsafe { std::mem::transmute(v) } };
    (
        s,
        ints(sum).iter().sum(),
        norms_of(s, n, &sq, &ints(sq_q), &lanes(sq_r)),
    )
}

/// Written in 16 lanes: the oracle of [`quantize_avx512`] (the same operations lane by
/// lane) and the path elsewhere.
fn quantize_body(row: &[f32], bytes: &mut [u8], offset: i32) -> (f32, i32, I8Norms) {
    const L: usize = 16;
    let (mut max, mut sq) = ([0f32; L], [0f32; L]);
    for ch in row.chunks(L) {
        for (l, &v) in ch.iter().enumerate() {
            max[l] = v.abs().max(max[l]);
            sq[l] += v * v;
        }
    }
    let Some((s, inv)) = scale_of(&max, &sq) else {
        bytes.fill(offset as u8);
        return (f32::NAN, 0, I8Norms::NAN);
    };
    let off = offset as f32;
    let (mut sum, mut sq_q, mut sq_r) = ([0i32; L], [0i32; L], [0f32; L]);
    for (ch, bs) in row.chunks(L).zip(bytes.chunks_mut(L)) {
        for (l, (&v, b)) in ch.iter().zip(bs).enumerate() {
            // Any integer is a valid rounding: the error uses the residual actually made.
            let q = (v * inv).round_ties_even().clamp(-127.0, 127.0);
            *b = (q + off) as i32 as u8;
            let qi = q as i32;
            sum[l] += qi;
            sq_q[l] += qi * qi;
            let e = (-s).mul_add(q, v);
            sq_r[l] = e.mul_add(e, sq_r[l]);
        }
    }
    (s, sum.iter().sum(), norms_of(s, row.len(), &sq, &sq_q, &sq_r))
}

/// The scale and its inverse from the lanes' max |x_t| and f32 sums of squares: None
/// when a square sum is not finite (NaN, ∞, or squares beyond f32); (0, 0) for a row
/// too small to scale.
#[inline]
fn scale_of(max: &[f32; 16], sq: &[f32; 16]) -> Option<(f32, f32)> {
    if !sq.iter().sum::<f32>().is_finite() {
        return None;
    }
    let max = max.iter().fold(0f32, |m, &v| m.max(v));
    Some(if max < TINY {
        (0.0, 0.0)
    } else {
        (max / 127.0, 127.0 / max)
    })
}

/// Upper bounds on the norms from the lanes' f32 sums over a row of `n` values:
/// `sq_x` of the squares x_t² (a product and a sum each), `sq_r` of the squared
/// residuals (x_t − s·q_t with one rounding, added by FMA), `sq_q` of q_t² (exact).
/// Each lane's sum has at most n + 1 roundings of terms that are all ≥ 0, so it is
/// within γ_{n+2} of its exact value, plus 2⁻¹⁴⁹ per term for squares that fall to
/// subnormals (Higham §3.1, §4.2); a rounded residual is within u of its value. The
/// bounds are taken in f64 with a 1e-9 margin for the square roots.
#[inline]
fn norms_of(s: f32, n: usize, sq_x: &[f32; 16], sq_q: &[i32; 16], sq_r: &[f32; 16]) -> I8Norms {
    let g = (n + 2) as f64 * U32;
    let gamma = g / (1.0 - g);
    let tiny = n as f64 * f64::from(f32::from_bits(1));
    let up = |lanes: &[f32; 16], extra: f64| {
        let sum: f64 = lanes.iter().map(|&v| f64::from(v)).sum();
        ((sum + tiny) / (1.0 - gamma) * extra).sqrt() * (1.0 + 1e-9)
    };
    I8Norms {
        norm: up(sq_x, 1.0),
        rounded: (sq_q.iter().map(|&v| f64::from(v)).sum::<f64>()).sqrt() * (1.0 + 1e-9) * f64::from(s),
        residual: up(sq_r, 1.0 / ((1.0 - U32) * (1.0 - U32))),
    }
}

/// Transposes row-major words (`cols` per row) into zero-padded blocks of `width` rows,
/// `[col][row in block]`.
fn pack_words(words: &[u32], cols: usize, width: usize, out: &mut Vec<u32>) {
    #[cfg(target_arch = "x86_64")]
    if crate::distance::kernel() == crate::distance::Kernel::Avx512 {
        return super::avx512::pack_words(words, cols, width, out);
    }
    pack_words_scatter(words, cols, width, out)
}

/// The plain word-by-word [`pack_words`] (elsewhere, and the test oracle).
fn pack_words_scatter(words: &[u32], cols: usize, width: usize, out: &mut Vec<u32>) {
    let m = words.len() / cols;
    out.clear();
    out.resize(m.div_ceil(width) * width * cols, 0);
    for (i, row) in words.chunks_exact(cols).enumerate() {
        let block = &mut out[(i / width) * width * cols..];
        for (p, &w) in row.iter().enumerate() {
            block[p * width + i % width] = w;
        }
    }
}

/// The same integers and f32 operations as the SIMD kernel, in plain code.
fn portable(a: &[u32], scale: &[f32], c: &PackedI8, m: usize, quads: usize, out: &mut [f32]) {
    let k = c.k;
    for i in 0..m {
        let ablock = &a[(i / MR) * MR * quads..];
        for j in 0..k {
            let bblock = &c.data[(j / NR) * quads * NR + j % NR..];
            let mut acc = 0i32;
            for p in 0..quads {
                let (w, v) = (ablock[p * MR + i % MR], bblock[p * NR]);
                for b in 0..4 {
                    let u = ((w >> (8 * b)) & 0xFF) as i32;
                    let r = ((v >> (8 * b)) & 0xFF) as u8 as i8 as i32;
                    acc += u * r;
                }
            }
            out[i * k + j] = ((acc - c.corr[j]) as f32) * (scale[i] * c.scale[j]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd;

#[cfg(test)]
mod tests;
