//! Certified bf16 tiles for SemDeDup's within-cluster maxima: a tile's
//! products in bfloat16 (`vdpbf16ps`, about twice the f32 rate), then only
//! the pairs that could still be a column's maximum recomputed in f32 — so M
//! and `dup_of` are bit-identical to [`super::max_sim_ranked`]'s f32 tiles.
//!
//! For row i and column j, the f32 product f_ij lies within e_i of the bf16
//! product b_ij ([`Bf16Bound`], the rounding actually made plus both
//! summation errors). Column j's final maximum is at least its floor (the
//! diagonal tile's maximum, computed first) and at least
//! L_j = max_i (b_ij − e_i); a row with b_ij + e_i below either can neither
//! reach nor tie that maximum, so it cannot be the (earliest) arg-max. The
//! two scans run in f32 with e_i padded by far more than their rounding.
//!
//! The candidates left (about one pair in a hundred on the 1M benchmark) get
//! vectorized f32 dots ([`fast_pair_dots`]) first; those within four times the
//! f32 error of their column's best ([`contender_cut`]) then get the kernel's
//! own fused chain ([`kernel_pair_dots`], about one pair a column), taken in
//! rank order with the f32 tiles' strict `>`. A tile whose bound is not
//! finite, or whose candidates would cost more than half the f32 tile (many
//! identical rows, or a tiny cluster), is left to the f32 path.
//!
//! The diagonal tile ([`diagonal_certified`]) runs the same test without a
//! floor: its upper triangle in bf16, band by band, then L_j over the whole
//! column before any candidate is taken (per band, every band would keep a
//! few candidates per column). Without the narrowing, the candidates' f32
//! chains cost what the bf16 triangle saved (tried 2026-12-06).

use crate::distance::{
    Bf16Bound, Bf16Norms, PackedBf16, contender_cut, dot_batch_bf16, dot_batch_bf16_cols, f32_error_per_norm,
    fast_pair_dots, kernel_pair_dots,
};

use super::TileMax;

/// Rows `idx` of the row-major `data` (`dim` columns), in that order: a
/// tile's rows read where they are, not gathered.
#[derive(Debug, Clone, Copy)]
pub(super) struct RowSet<'a> {
    pub(super) data: &'a [f32],
    pub(super) idx: &'a [usize],
    pub(super) dim: usize,
}

impl<'a> RowSet<'a> {
    fn len(&self) -> usize {
        self.idx.len()
    }

    fn row(&self, i: usize) -> &'a [f32] {
        let g = self.idx[i];
        &self.data[g * self.dim..(g + 1) * self.dim]
    }
}

/// A column block rounded to bf16, with the error bound of rows against it.
pub(super) struct Bf16Block {
    packed: PackedBf16,
    bound: Bf16Bound,
    /// Each column's norms (for its rows' paddings on the diagonal and the f32 error).
    norms: Vec<Bf16Norms>,
}

impl Bf16Block {
    /// Packs the columns `cols`.
    pub(super) fn new(cols: RowSet) -> Self {
        let norms: Vec<Bf16Norms> = (0..cols.len()).map(|i| Bf16Norms::of(cols.row(i))).collect();
        Bf16Block {
            packed: PackedBf16::new(cols.data, cols.dim, cols.idx, &vec![1.0; cols.len()]),
            bound: Bf16Bound::from_norms(norms.iter().copied(), cols.dim),
            norms,
        }
    }
}

/// A candidate (a vectorized f32 dot, and for the few near their column's best a scalar
/// fused chain) costs at most about this many products of the tile's f32 kernel; tiles
/// whose candidates would cost half the f32 tile go to it.
const PAIR_COST: usize = 8;

/// Per-thread buffers.
#[derive(Default)]
pub(super) struct CertScratch {
    ones: Vec<f32>,
    b: Vec<f32>,
    pad: Vec<f32>,
    lo: Vec<f32>,
    found: Vec<(u32, u32)>,
    pairs: Vec<(u32, u32)>,
    at: Vec<(u32, u32)>,
    fast: Vec<f32>,
    exact: Vec<f32>,
    /// The largest norm bound of the rows last padded.
    max_norm: f64,
}

/// The row paddings e_i (see [`absorb_certified`]) of rows with the `norms` given
/// against `block`; `false` where one is not finite.
fn paddings(block: &Bf16Block, norms: impl Iterator<Item = Bf16Norms>, s: &mut CertScratch) -> bool {
    let pad = &mut s.pad;
    pad.clear();
    s.max_norm = 0.0;
    for n in norms {
        s.max_norm = s.max_norm.max(n.norm);
        let e = block.bound.error(&n);
        let mag = block.bound.magnitude(&n) + e;
        let padded = ((e + mag * f64::from(2f32.powi(-20))) as f32).next_up();
        if !padded.is_finite() {
            return false;
        }
        pad.push(padded);
    }
    true
}

/// The diagonal tile of a column block (its columns `cols` against themselves, row i
/// before column j only where i < j) into `t`, exactly as the f32 bands would: the
/// triangle's bf16 products in bands of `band` rows (a multiple of 32) against the
/// columns from the band on, L_j = max over i < j of b_ij − e_i, then the f32 products of
/// the pairs with b_ij + e_i ≥ L_j, in rank order per column. `false` (and `t` untouched)
/// where the f32 bands should run instead. `a` is the block's first rank.
pub(super) fn diagonal_certified(
    block: &Bf16Block,
    cols: RowSet,
    a: usize,
    band: usize,
    t: &mut TileMax,
    s: &mut CertScratch,
) -> bool {
    let tc = block.packed.k();
    debug_assert!(band > 0 && band.is_multiple_of(32));
    if !paddings(block, block.norms.iter().copied(), s) {
        return false;
    }
    // The triangle's bands, stored one after another: band s0 is (s1 − s0) × (tc − s0).
    s.b.clear();
    let mut cost = 0;
    for s0 in (0..tc).step_by(band) {
        let s1 = (s0 + band).min(tc);
        s.ones.resize(s1 - s0, 1.0);
        let at = s.b.len();
        s.b.resize(at + (s1 - s0) * (tc - s0), 0.0);
        dot_batch_bf16_cols(cols.data, &cols.idx[s0..s1], &s.ones, &block.packed, s0, &mut s.b[at..]);
        cost += (s1 - s0) * (tc - s0);
    }
    s.lo.clear();
    s.lo.resize(tc, f32::NEG_INFINITY);
    let mut at = 0;
    for s0 in (0..tc).step_by(band) {
        let (s1, w) = ((s0 + band).min(tc), tc - s0);
        for (ii, line) in s.b[at..at + (s1 - s0) * w].chunks_exact(w).enumerate() {
            let (i, e) = (s0 + ii, s.pad[s0 + ii]);
            // Columns after row i: from i + 1 on.
            for (l, &v) in s.lo[i + 1..].iter_mut().zip(&line[ii + 1..]) {
                *l = l.max(v - e);
            }
        }
        at += (s1 - s0) * w;
    }
    s.found.clear();
    let mut at = 0;
    for s0 in (0..tc).step_by(band) {
        let (s1, w) = ((s0 + band).min(tc), tc - s0);
        for (ii, line) in s.b[at..at + (s1 - s0) * w].chunks_exact(w).enumerate() {
            let (i, e) = (s0 + ii, s.pad[s0 + ii]);
            for (q, (&v, &l)) in line[ii + 1..].iter().zip(&s.lo[i + 1..]).enumerate() {
                if v + e >= l {
                    s.found.push(((i + 1 + q) as u32, i as u32));
                }
            }
            if 2 * s.found.len() * PAIR_COST > cost {
                return false;
            }
        }
        at += (s1 - s0) * w;
    }
    absorb_pairs(block, cols, cols, a as u32, t, s);
    true
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
    cols: RowSet,
    x: RowSet,
    first_rank: u32,
    floor: &[f32],
    t: &mut TileMax,
    s: &mut CertScratch,
) -> bool {
    let (tr, w) = (x.len(), block.packed.k());
    // e_i, padded by 2⁻²⁰ of the largest magnitude met: the f32 sums b ± e below round
    // by at most 2⁻²⁴ of that each, so the padded scans stay on the safe side.
    if !paddings(block, (0..tr).map(|i| Bf16Norms::of(x.row(i))), s) {
        return false;
    }
    s.ones.resize(tr, 1.0);
    s.b.resize(tr * w, 0.0);
    dot_batch_bf16(x.data, x.idx, &s.ones, &block.packed, &mut s.b);
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
    absorb_pairs(block, x, cols, first_rank, t, s);
    true
}

/// The kernel's f32 products of the candidates `s.found` ((column, row) pairs) of the
/// rows `x` (rank positions `first_rank..`) with the block's columns `cols`, absorbed into
/// `t` column by column and in rank order within one, so strict `>` keeps the earliest
/// row on ties. Narrowed first, as `cluster::certified` narrows its rechecks: vectorized
/// f32 dots ([`fast_pair_dots`]) of a column's candidates, then the kernel's scalar chain
/// only for those within four times the f32 error of the best ([`contender_cut`]); the rest
/// can neither reach nor tie that best's kernel value.
fn absorb_pairs(block: &Bf16Block, x: RowSet, cols: RowSet, first_rank: u32, t: &mut TileMax, s: &mut CertScratch) {
    let dim = x.dim;
    s.found.sort_unstable();
    s.pairs.clear();
    s.pairs.extend(s.found.iter().map(|&(j, i)| (i, j)));
    // The same pairs as positions in the rows' buffers, for the dot products.
    s.at.clear();
    s.at.extend(
        s.pairs
            .iter()
            .map(|&(i, j)| (x.idx[i as usize] as u32, cols.idx[j as usize] as u32)),
    );
    s.fast.resize(s.pairs.len(), 0.0);
    fast_pair_dots(x.data, cols.data, dim, &s.at, &mut s.fast);
    let row_err = f32_error_per_norm(dim) * s.max_norm;
    let (mut w, mut a) = (0, 0);
    while a < s.pairs.len() {
        let j = s.pairs[a].1;
        let b = a + s.pairs[a..].iter().take_while(|p| p.1 == j).count();
        match contender_cut(&s.fast[a..b], row_err * block.norms[j as usize].norm) {
            Some(cut) if b - a > 1 => {
                for q in a..b {
                    if s.fast[q] as f64 >= cut {
                        s.pairs[w] = s.pairs[q];
                        s.at[w] = s.at[q];
                        w += 1;
                    }
                }
            }
            _ => {
                s.pairs.copy_within(a..b, w);
                s.at.copy_within(a..b, w);
                w += b - a;
            }
        }
        a = b;
    }
    s.pairs.truncate(w);
    s.at.truncate(w);
    s.exact.resize(s.pairs.len(), 0.0);
    kernel_pair_dots(x.data, cols.data, dim, &s.at, &mut s.exact);
    for (&(i, j), &v) in s.pairs.iter().zip(&s.exact) {
        let j = j as usize;
        if v > t.best[j] {
            t.best[j] = v;
            t.arg[j] = first_rank + i;
        }
    }
}
