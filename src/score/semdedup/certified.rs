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
    Bf16Bound, Bf16Norms, PREFETCH_ROWS_AHEAD, PackedBf16, contender_cut, dot_batch_bf16, dot_batch_bf16_cols,
    f32_error_per_norm, fast_pair_dots, kernel_pair_dots, prefetch_row,
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

/// The norms of each row of `x`, in its order: computed once per cluster, since every
/// row meets one column block per later block and its norms do not change.
pub(super) fn row_norms(x: RowSet) -> Vec<Bf16Norms> {
    (0..x.len())
        .map(|i| {
            // Rows in rank order lie scattered in the partition: fetched a few ahead.
            if i + PREFETCH_ROWS_AHEAD < x.len() {
                prefetch_row(x.row(i + PREFETCH_ROWS_AHEAD));
            }
            Bf16Norms::of(x.row(i))
        })
        .collect()
}

impl Bf16Block {
    /// Packs the columns `cols`.
    #[cfg(test)]
    pub(super) fn new(cols: RowSet) -> Self {
        Self::with_norms(cols, row_norms(cols))
    }

    /// Packs the columns `cols`, whose norms ([`row_norms`]) are `norms`.
    pub(super) fn with_norms(cols: RowSet, norms: Vec<Bf16Norms>) -> Self {
        debug_assert_eq!(norms.len(), cols.len());
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
    /// Candidates per column, then where each column's run starts ([`absorb_pairs`]).
    counts: Vec<u32>,
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
    // Every value is written by the kernel, so the buffer only grows (no zero fill).
    let cost: usize = (0..tc)
        .step_by(band)
        .map(|s0| ((s0 + band).min(tc) - s0) * (tc - s0))
        .sum();
    if s.b.len() < cost {
        s.b.resize(cost, 0.0);
    }
    let mut at = 0;
    for s0 in (0..tc).step_by(band) {
        let s1 = (s0 + band).min(tc);
        s.ones.resize(s1 - s0, 1.0);
        let n = (s1 - s0) * (tc - s0);
        dot_batch_bf16_cols(
            cols.data,
            &cols.idx[s0..s1],
            &s.ones,
            &block.packed,
            s0,
            &mut s.b[at..at + n],
        );
        at += n;
    }
    s.lo.clear();
    s.lo.resize(tc, f32::NEG_INFINITY);
    let mut at = 0;
    for s0 in (0..tc).step_by(band) {
        let (s1, w) = ((s0 + band).min(tc), tc - s0);
        for (ii, line) in s.b[at..at + (s1 - s0) * w].chunks_exact(w).enumerate() {
            let (i, e) = (s0 + ii, s.pad[s0 + ii]);
            // Columns after row i: from i + 1 on.
            raise_floor(&mut s.lo[i + 1..], &line[ii + 1..], e);
        }
        at += (s1 - s0) * w;
    }
    s.found.clear();
    let mut at = 0;
    for s0 in (0..tc).step_by(band) {
        let (s1, w) = ((s0 + band).min(tc), tc - s0);
        for (ii, line) in s.b[at..at + (s1 - s0) * w].chunks_exact(w).enumerate() {
            let (i, e) = (s0 + ii, s.pad[s0 + ii]);
            let found = &mut s.found;
            reaching(&line[ii + 1..], &s.lo[i + 1..], e, |q| {
                found.push(((i + 1 + q) as u32, i as u32))
            });
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
/// before the block's columns; their norms `x_norms`, [`row_norms`]) with the
/// block's columns (`cols`, f32, row-major) into `t`, exactly as the f32 tile
/// would, except that a column keeps −∞ where no row reaches `floor` (a lower
/// bound on the column's final maximum, which such rows cannot be); `false`
/// (and `t` untouched) where the f32 tile should run instead (module doc).
#[allow(clippy::too_many_arguments)]
pub(super) fn absorb_certified(
    block: &Bf16Block,
    cols: RowSet,
    x: RowSet,
    x_norms: &[Bf16Norms],
    first_rank: u32,
    floor: &[f32],
    t: &mut TileMax,
    s: &mut CertScratch,
) -> bool {
    let (tr, w) = (x.len(), block.packed.k());
    // e_i, padded by 2⁻²⁰ of the largest magnitude met: the f32 sums b ± e below round
    // by at most 2⁻²⁴ of that each, so the padded scans stay on the safe side.
    debug_assert_eq!(x_norms.len(), tr);
    if !paddings(block, x_norms.iter().copied(), s) {
        return false;
    }
    s.ones.resize(tr, 1.0);
    if s.b.len() < tr * w {
        s.b.resize(tr * w, 0.0);
    }
    dot_batch_bf16(x.data, x.idx, &s.ones, &block.packed, &mut s.b[..tr * w]);
    // L_j (at least the floor), then the rows that can reach it.
    s.lo.clear();
    s.lo.extend_from_slice(floor);
    for (line, &e) in s.b[..tr * w].chunks_exact(w).zip(&s.pad) {
        raise_floor(&mut s.lo, line, e);
    }
    s.found.clear();
    for (ii, (line, &e)) in s.b[..tr * w].chunks_exact(w).zip(&s.pad).enumerate() {
        let found = &mut s.found;
        reaching(line, &s.lo, e, |q| found.push((q as u32, ii as u32)));
        if 2 * s.found.len() * PAIR_COST > tr * w {
            return false;
        }
    }
    absorb_pairs(block, x, cols, first_rank, t, s);
    true
}

/// `lo[j] = max(lo[j], line[j] − e)` for every column j both have: a column's floor
/// L_j raised by one row's lower bounds. `lo` is never NaN (it starts at −∞ or at a
/// maximum taken with `>`), and a NaN product leaves it as it is, as `f32::max` would.
#[inline]
fn raise_floor(lo: &mut [f32], line: &[f32], e: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::distance::kernel() == crate::distance::Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
        return unsafe { raise_floor_avx512(lo, line, e) };
    }
    for (l, &v) in lo.iter_mut().zip(line) {
        *l = l.max(v - e);
    }
}

/// [`raise_floor`] sixteen columns at a time (compiled for the baseline target, the
/// scalar loops were a fifth of the certified tiles' own time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn raise_floor_avx512(lo: &mut [f32], line: &[f32], e: f32) {
    use std::arch::x86_64::*;
    let n = lo.len().min(line.len());
    let e = _mm512_set1_ps(e);
    let mut j = 0;
    while j < n {
        let live = live_lanes(n - j);
        // SAFETY: lanes at or past n are masked off, so every access is inside the slices.
        unsafe {
            let v = _mm512_sub_ps(_mm512_maskz_loadu_ps(live, line.as_ptr().add(j)), e);
            let l = _mm512_maskz_loadu_ps(live, lo.as_ptr().add(j));
            let up = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(live, v, l);
            _mm512_mask_storeu_ps(lo.as_mut_ptr().add(j), up, v);
        }
        j += 16;
    }
}

/// Calls `found(j)`, in ascending j, for every column j with `line[j] + e ≥ lo[j]`
/// (false where either side is NaN): the rows that can still reach a column's maximum.
#[inline]
fn reaching(line: &[f32], lo: &[f32], e: f32, mut found: impl FnMut(usize)) {
    #[cfg(target_arch = "x86_64")]
    if crate::distance::kernel() == crate::distance::Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
        return unsafe { reaching_avx512(line, lo, e, &mut found) };
    }
    for (j, (&v, &l)) in line.iter().zip(lo).enumerate() {
        if v + e >= l {
            found(j);
        }
    }
}

/// [`reaching`] sixteen columns at a time; most blocks of sixteen have no candidate.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn reaching_avx512(line: &[f32], lo: &[f32], e: f32, found: &mut impl FnMut(usize)) {
    use std::arch::x86_64::*;
    let n = line.len().min(lo.len());
    let e = _mm512_set1_ps(e);
    let mut j = 0;
    while j < n {
        let live = live_lanes(n - j);
        // SAFETY: lanes at or past n are masked off, so every access is inside the slices.
        let mut hits = unsafe {
            let v = _mm512_add_ps(_mm512_maskz_loadu_ps(live, line.as_ptr().add(j)), e);
            let l = _mm512_maskz_loadu_ps(live, lo.as_ptr().add(j));
            _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(live, v, l)
        };
        while hits != 0 {
            found(j + hits.trailing_zeros() as usize);
            hits &= hits - 1;
        }
        j += 16;
    }
}

/// The mask of the first `left` of sixteen lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn live_lanes(left: usize) -> u16 {
    if left >= 16 {
        0xFFFF
    } else {
        ((1u32 << left) - 1) as u16
    }
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
    // By column, rows ascending within one: `found` arrives in row order, so a stable
    // counting sort on the column gives what sorting the (column, row) pairs would, in
    // one pass (the comparison sort was a tenth of the candidates' cost).
    s.counts.clear();
    s.counts.resize(block.packed.k() + 1, 0);
    for &(j, _) in &s.found {
        s.counts[j as usize + 1] += 1;
    }
    for c in 1..s.counts.len() {
        s.counts[c] += s.counts[c - 1];
    }
    s.pairs.clear();
    s.pairs.resize(s.found.len(), (0, 0));
    for &(j, i) in &s.found {
        let at = &mut s.counts[j as usize];
        s.pairs[*at as usize] = (i, j);
        *at += 1;
    }
    debug_assert!(s.pairs.windows(2).all(|w| (w[0].1, w[0].0) < (w[1].1, w[1].0)));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Values that meet every edge of the scans: NaN, infinities, signed zeros, ties.
    fn awkward(n: usize, seed: usize) -> Vec<f32> {
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 0.25, 0.25, -0.5];
        (0..n)
            .map(|i| {
                let h = (i * 2654435761 + seed * 40503) % 97;
                if h < 8 { specials[h] } else { (h as f32 - 48.0) / 64.0 }
            })
            .collect()
    }

    #[test]
    fn the_scans_match_their_scalar_loops_at_every_length() {
        for n in [0, 1, 15, 16, 17, 40, 130] {
            let line = awkward(n, 1);
            // Floors are never NaN (see `raise_floor`).
            let floor: Vec<f32> = awkward(n, 2)
                .into_iter()
                .map(|v| if v.is_nan() { -1.0 } else { v })
                .collect();
            for e in [0.0f32, 0.125, 1e-3] {
                let mut lo = floor.clone();
                raise_floor(&mut lo, &line, e);
                let want: Vec<f32> = floor.iter().zip(&line).map(|(&l, &v)| l.max(v - e)).collect();
                // Equal as numbers (a tie may keep either zero's sign).
                assert!(lo.iter().zip(&want).all(|(a, b)| a == b), "raise_floor n={n} e={e}");
                let mut got = Vec::new();
                reaching(&line, &lo, e, |j| got.push(j));
                let want: Vec<usize> = (0..n).filter(|&j| line[j] + e >= lo[j]).collect();
                assert_eq!(got, want, "reaching n={n} e={e}");
            }
        }
    }
}
