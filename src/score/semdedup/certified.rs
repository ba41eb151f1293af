//! Certified bf16 tiles for SemDeDup's within-cluster maxima: an
//! off-diagonal tile's products in bfloat16 (`vdpbf16ps`, about twice the f32
//! rate), then only the pairs that could still be a column's maximum
//! recomputed in f32 by the kernel's own fused chain ([`kernel_pair_dots`]) —
//! so M and `dup_of` are bit-identical to [`super::max_sim_ranked`]'s f32
//! tiles.
//!
//! For row i and column j, the f32 product f_ij lies within e_i of the bf16
//! product b_ij ([`Bf16Bound`], the rounding actually made plus both
//! summation errors). Column j's final maximum is at least its floor (the
//! diagonal tile's maximum, computed first) and at least
//! L_j = max_i (b_ij − e_i); a row with b_ij + e_i below either can neither
//! reach nor tie that maximum, so it cannot be the (earliest) arg-max. The
//! others get their f32 product, taken in rank order with the f32 tiles'
//! strict `>`. The two scans run in f32 with e_i padded by far more than
//! their rounding. A tile whose bound is not finite, or whose candidates
//! would cost more than half the f32 tile (e.g. many identical rows), is left
//! to the f32 path. The diagonal tile stays in f32: with its triangle in
//! narrow bands, the candidates of every band would cost what bf16 saves.

use crate::distance::{Bf16Bound, Bf16Norms, PackedBf16, dot_batch_bf16, kernel_pair_dots};

use super::TileMax;

/// A column block rounded to bf16, with the error bound of rows against it.
pub(super) struct Bf16Block {
    packed: PackedBf16,
    bound: Bf16Bound,
}

impl Bf16Block {
    /// Packs the `tc × dim` columns `cols`.
    pub(super) fn new(cols: &[f32], dim: usize) -> Self {
        let tc = cols.len() / dim;
        let idx: Vec<usize> = (0..tc).collect();
        Bf16Block {
            packed: PackedBf16::new(cols, dim, &idx, &vec![1.0; tc]),
            bound: Bf16Bound::new(cols, dim),
        }
    }
}

/// A candidate's f32 product (one scalar fused chain, eight interleaved) costs about
/// this many products of the tile's f32 kernel; tiles whose candidates would cost half
/// the f32 tile go to it.
const PAIR_COST: usize = 8;

/// Per-thread buffers.
#[derive(Default)]
pub(super) struct CertScratch {
    idx: Vec<usize>,
    ones: Vec<f32>,
    b: Vec<f32>,
    pad: Vec<f32>,
    lo: Vec<f32>,
    found: Vec<(u32, u32)>,
    pairs: Vec<(u32, u32)>,
    exact: Vec<f32>,
}

/// Absorbs the products of the rows `x` (rank positions `first_rank..`, all
/// before the block's columns) with the block's columns (`cols`, f32,
/// row-major) into `t`, exactly as the f32 tile would, except that a column
/// keeps −∞ where no row reaches `floor` (a lower bound on the column's
/// final maximum, which such rows cannot be); `false` (and `t` untouched)
/// where the f32 tile should run instead (module doc).
#[allow(clippy::too_many_arguments)]
pub(super) fn absorb_certified(
    block: &Bf16Block,
    cols: &[f32],
    x: &[f32],
    dim: usize,
    first_rank: u32,
    floor: &[f32],
    t: &mut TileMax,
    s: &mut CertScratch,
) -> bool {
    let (tr, w) = (x.len() / dim, block.packed.k());
    // e_i, padded by 2⁻²⁰ of the largest magnitude met: the f32 sums b ± e below round
    // by at most 2⁻²⁴ of that each, so the padded scans stay on the safe side.
    s.pad.clear();
    for xi in x.chunks_exact(dim) {
        let n = Bf16Norms::of(xi);
        let e = block.bound.error(&n);
        let mag = block.bound.magnitude(&n) + e;
        let padded = ((e + mag * f64::from(2f32.powi(-20))) as f32).next_up();
        if !padded.is_finite() {
            return false;
        }
        s.pad.push(padded);
    }
    s.idx.clear();
    s.idx.extend(0..tr);
    s.ones.resize(tr, 1.0);
    s.b.resize(tr * w, 0.0);
    dot_batch_bf16(x, &s.idx, &s.ones, &block.packed, &mut s.b);
    // L_j (at least the floor), then the rows that can reach it.
    s.lo.clear();
    s.lo.extend_from_slice(floor);
    for (line, &e) in s.b.chunks_exact(w).zip(&s.pad) {
        for (l, &v) in s.lo.iter_mut().zip(line) {
            *l = l.max(v - e);
        }
    }
    s.found.clear();
    for (ii, (line, &e)) in s.b.chunks_exact(w).zip(&s.pad).enumerate() {
        for (c, (ch, lo)) in line.chunks(16).zip(s.lo.chunks(16)).enumerate() {
            if ch.iter().zip(lo).fold(false, |a, (&v, &l)| a | (v + e >= l)) {
                for (q, (&v, &l)) in ch.iter().zip(lo).enumerate() {
                    if v + e >= l {
                        s.found.push(((c * 16 + q) as u32, ii as u32));
                    }
                }
            }
        }
        if 2 * s.found.len() * PAIR_COST > tr * w {
            return false;
        }
    }
    // f32 products of the candidates, column by column and in rank order within one, so
    // strict `>` keeps the earliest row on ties.
    s.found.sort_unstable();
    s.pairs.clear();
    s.pairs.extend(s.found.iter().map(|&(j, ii)| (ii, j)));
    s.exact.resize(s.pairs.len(), 0.0);
    kernel_pair_dots(x, cols, dim, &s.pairs, &mut s.exact);
    for (&(ii, j), &v) in s.pairs.iter().zip(&s.exact) {
        let j = j as usize;
        if v > t.best[j] {
            t.best[j] = v;
            t.arg[j] = first_rank + ii;
        }
    }
    true
}
