//! SemDeDup's within-cluster maxima in tiles ([`max_sim_ranked`]): column
//! blocks of ranked rows, their diagonal tile's upper triangle in bands, the
//! earlier rows' tiles in parallel, merged in rank order so the values and
//! arg-maxima are bit-identical to one full f32 `X·Xᵀ` (with AVX-512 BF16,
//! through the certified bf16 tiles of [`super::certified`]).

use std::sync::OnceLock;

use rayon::prelude::*;

use super::certified::{Bf16Block, CertScratch, RowSet, absorb_certified, diagonal_certified, row_norms};
use crate::distance::{PackedRows, certified_bf16_pays, dot_batch_packed_cols, dot_batch_rows};

thread_local! {
    /// [`diagonal_certified`]'s buffers, one set per thread.
    static DIAGONAL_SCRATCH: std::cell::RefCell<CertScratch> = std::cell::RefCell::new(CertScratch::default());
    /// The earlier tiles' buffers, one set per thread: rayon's `map_init` made one per
    /// split, so each column block zeroed (and often faulted in) megabytes afresh.
    static EARLIER_SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Rows per band of a diagonal tile in [`max_sim_ranked`]: a band of rows
/// is multiplied only with the columns from its own first row on, so a
/// diagonal tile costs about (1/2 + band / 2·tile) of the full square
/// instead of all of it. A multiple of the packed-column alignment (32) and
/// of the kernel's 12-row register tile, so no band pads rows or columns.
pub(super) const DIAGONAL_BAND_ROWS: usize = 96;

/// For rows `order[0..m]` of `rows` (taken in that order): the largest dot
/// product with an earlier row of the order and the position of that row
/// (the earliest on ties); `(-inf, u32::MAX)` for position 0.
///
/// Column blocks `[a, b)` of `block` rows are packed once and, inside each,
/// the row tiles `[r0, r1)` with `r0 < b` all run in parallel; each tile
/// scans its rows in rank order, and tiles are merged by an order-preserving
/// reduce that only takes a later tile's value when strictly larger, so the
/// result (value and arg-max) is the same as one sequential scan, whatever
/// the threads. The diagonal tile (rows and columns both `[a, b)`) only
/// needs its upper triangle: it is computed in bands of
/// [`DIAGONAL_BAND_ROWS`] rows against the columns from the band on. Every
/// product is the kernel's one fused chain per pair, whatever tile or band
/// computed it, so the values are bit-identical to one full `X·Xᵀ`.
///
/// Where the AVX-512 BF16 kernel runs ([`certified_bf16_pays`]), the
/// diagonal tile goes through [`certified::diagonal_certified`] and the
/// off-diagonal tiles through [`certified::absorb_certified`]: bf16
/// products, then f32 only for the pairs that can still reach a column's
/// maximum — which is at least the diagonal tile's, so that is the
/// off-diagonal tiles' floor. The f32 rows are packed only for a tile left
/// to the f32 path. Same results.
pub(super) fn max_sim_ranked(rows: &[f32], dim: usize, order: &[u32], block: usize) -> (Vec<f32>, Vec<u32>) {
    max_sim_ranked_with(rows, dim, order, block, certified_bf16_pays())
}

pub(super) fn max_sim_ranked_with(
    rows: &[f32],
    dim: usize,
    order: &[u32],
    block: usize,
    bf16: bool,
) -> (Vec<f32>, Vec<u32>) {
    let m = order.len();
    if m < 2 {
        return (vec![f32::NEG_INFINITY; m], vec![u32::MAX; m]);
    }
    let positions = |r: std::ops::Range<usize>| order[r].iter().map(|&p| p as usize).collect::<Vec<usize>>();
    // Every row's bf16 norms in rank order, for its own block's columns and as a row of
    // the later blocks' tiles.
    let norms = if bf16 {
        let all = positions(0..m);
        row_norms(RowSet {
            data: rows,
            idx: &all,
            dim,
        })
    } else {
        Vec::new()
    };
    let parts: Vec<TileMax> = (0..m.div_ceil(block))
        .into_par_iter()
        .map(|bi| {
            let a = bi * block;
            let b = (a + block).min(m);
            let tc = b - a;
            let col_idx = positions(a..b);
            let cols = RowSet {
                data: rows,
                idx: &col_idx,
                dim,
            };
            // The f32 rows, gathered and packed, only where a tile goes the f32 way.
            let (gathered, packed) = (OnceLock::new(), OnceLock::new());
            let gathered = || {
                gathered.get_or_init(|| {
                    let mut v = Vec::new();
                    gather(rows, dim, &order[a..b], &mut v);
                    v
                })
            };
            let packed = || packed.get_or_init(|| PackedRows::new(gathered(), dim));
            let half = bf16.then(|| Bf16Block::with_norms(cols, norms[a..b].to_vec()));
            let mut diag = TileMax::empty(tc);
            let certified = half.as_ref().is_some_and(|h| {
                // The thread's scratch, reused from block to block and cluster to cluster
                // (fresh, its megabytes of bands were faulted in and zeroed every time);
                // a fresh one where it is in use further up this thread's stack.
                DIAGONAL_SCRATCH.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut s) => diagonal_certified(h, cols, a, DIAGONAL_BAND_ROWS, &mut diag, &mut s),
                    Err(_) => {
                        diagonal_certified(h, cols, a, DIAGONAL_BAND_ROWS, &mut diag, &mut CertScratch::default())
                    }
                })
            });
            if !certified {
                diagonal_tile(gathered(), packed(), a, &mut Scratch::default().out, &mut diag);
            }
            // The diagonal ranks last: merged after the earlier tiles, it keeps their
            // arg-max on ties.
            let tile = |s: &mut Scratch, ri: usize| {
                let mut t = TileMax::empty(tc);
                let r0 = ri * block;
                let r1 = (r0 + block).min(b);
                let tr = r1 - r0;
                let row_idx = positions(r0..r1);
                if let Some(h) = &half {
                    let x = RowSet {
                        data: rows,
                        idx: &row_idx,
                        dim,
                    };
                    if absorb_certified(h, cols, x, &norms[r0..r1], r0 as u32, &diag.best, &mut t, &mut s.cert) {
                        return t;
                    }
                }
                // The rows are gathered while the kernel packs them (scale 1: the
                // same bits as gathering first), one copy fewer.
                s.ones.resize(tr, 1.0);
                s.out.resize(tr * tc, 0.0);
                dot_batch_rows(rows, &row_idx, &s.ones[..tr], packed(), &mut s.out);
                // every row of an earlier tile ranks before every column
                for (ii, line) in s.out.chunks_exact(tc).enumerate() {
                    t.absorb(line, 0, (r0 + ii) as u32);
                }
                t
            };
            let earlier = (0..bi)
                .into_par_iter()
                // A fresh scratch where this thread's is in use further up its stack.
                .map(|ri| {
                    EARLIER_SCRATCH.with(|cell| match cell.try_borrow_mut() {
                        Ok(mut s) => tile(&mut s, ri),
                        Err(_) => tile(&mut Scratch::default(), ri),
                    })
                })
                .reduce(|| TileMax::empty(tc), TileMax::merge);
            earlier.merge(diag)
        })
        .collect();
    let mut best = Vec::with_capacity(m);
    let mut arg = Vec::with_capacity(m);
    for t in parts {
        best.extend(t.best);
        arg.extend(t.arg);
    }
    (best, arg)
}

/// The upper triangle of the diagonal tile of the column block starting at
/// rank `a` (`cols`, packed as `packed`): band by band, each row `i` of the
/// band against the columns `j > i`, in rank order, into `t`.
fn diagonal_tile(cols: &[f32], packed: &PackedRows, a: usize, out: &mut Vec<f32>, t: &mut TileMax) {
    let tc = packed.k();
    let dim = cols.len() / tc;
    for s0 in (0..tc).step_by(DIAGONAL_BAND_ROWS) {
        let s1 = (s0 + DIAGONAL_BAND_ROWS).min(tc);
        let w = tc - s0;
        out.resize((s1 - s0) * w, 0.0);
        dot_batch_packed_cols(&cols[s0 * dim..s1 * dim], packed, s0..tc, out);
        for (ii, line) in out.chunks_exact(w).enumerate() {
            // columns ranked after row i = s0 + ii, i.e. from i + 1 on
            let i = s0 + ii;
            t.absorb(&line[ii + 1..], i + 1, (a + i) as u32);
        }
    }
}

/// Running maxima of one column block.
pub(super) struct TileMax {
    pub(super) best: Vec<f32>,
    pub(super) arg: Vec<u32>,
}

impl TileMax {
    pub(super) fn empty(n: usize) -> Self {
        TileMax {
            best: vec![f32::NEG_INFINITY; n],
            arg: vec![u32::MAX; n],
        }
    }

    /// Row `row`'s products with the columns `start..`: a column takes the
    /// value when strictly larger, so with rows absorbed in rank order ties
    /// keep the earliest row.
    #[inline]
    pub(super) fn absorb(&mut self, line: &[f32], start: usize, row: u32) {
        let (best, arg) = (&mut self.best[start..], &mut self.arg[start..]);
        #[cfg(target_arch = "x86_64")]
        if crate::distance::kernel() == crate::distance::Kernel::Avx512 {
            // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
            return unsafe { absorb_avx512(line, best, arg, row) };
        }
        absorb_body(line, best, arg, row);
    }

    /// `self` covers earlier rows than `later`: ties keep `self`'s arg-max.
    pub(super) fn merge(mut self, later: TileMax) -> Self {
        for ((b, g), (&lb, &lg)) in self
            .best
            .iter_mut()
            .zip(&mut self.arg)
            .zip(later.best.iter().zip(&later.arg))
        {
            if lb > *b {
                *b = lb;
                *g = lg;
            }
        }
        self
    }
}

/// [`TileMax::absorb`] in plain code (elsewhere, and the test oracle).
fn absorb_body(line: &[f32], best: &mut [f32], arg: &mut [u32], row: u32) {
    for ((&v, bv), g) in line.iter().zip(best).zip(arg) {
        if v > *bv {
            *bv = v;
            *g = row;
        }
    }
}

/// [`absorb_body`] sixteen columns at a time: an ordered greater-than compare (false
/// with NaN on either side, as `>`) masks the stores of the value and the row. Compiled
/// for the baseline target, the loop ran a compare and branch per column.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn absorb_avx512(line: &[f32], best: &mut [f32], arg: &mut [u32], row: u32) {
    use std::arch::x86_64::*;
    let n = line.len().min(best.len()).min(arg.len());
    let r = _mm512_set1_epi32(row as i32);
    let mut j = 0;
    while j < n {
        let live: __mmask16 = if n - j >= 16 {
            0xFFFF
        } else {
            ((1u32 << (n - j)) - 1) as u16
        };
        // SAFETY: lanes at or past n are masked off, so every access is inside the slices.
        unsafe {
            let v = _mm512_maskz_loadu_ps(live, line.as_ptr().add(j));
            let b = _mm512_maskz_loadu_ps(live, best.as_ptr().add(j));
            let up = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(live, v, b);
            _mm512_mask_storeu_ps(best.as_mut_ptr().add(j), up, v);
            _mm512_mask_storeu_epi32(arg.as_mut_ptr().add(j).cast(), up, r);
        }
        j += 16;
    }
}

#[derive(Default)]
struct Scratch {
    ones: Vec<f32>,
    out: Vec<f32>,
    cert: CertScratch,
}

fn gather(rows: &[f32], dim: usize, idx: &[u32], buf: &mut Vec<f32>) {
    buf.clear();
    buf.reserve(idx.len() * dim);
    for &i in idx {
        let i = i as usize;
        buf.extend_from_slice(&rows[i * dim..(i + 1) * dim]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absorb_takes_the_same_columns_on_every_path() {
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 0.5, 0.5];
        let mut rng = crate::rng::Rng::new(9);
        for n in 0..41 {
            for start in [0, 1, 7] {
                let w = n + start;
                let mut plain = TileMax::empty(w);
                for (i, b) in plain.best.iter_mut().enumerate() {
                    *b = if i % 5 == 0 {
                        specials[i % specials.len()]
                    } else {
                        rng.normal() as f32
                    };
                }
                let mut fast = TileMax {
                    best: plain.best.clone(),
                    arg: plain.arg.clone(),
                };
                for row in 0..4u32 {
                    let line: Vec<f32> = (0..n)
                        .map(|j| match (j + row as usize) % 6 {
                            0 => specials[j % specials.len()],
                            1 => plain.best[start + j],
                            _ => rng.normal() as f32,
                        })
                        .collect();
                    absorb_body(&line, &mut plain.best[start..], &mut plain.arg[start..], row);
                    fast.absorb(&line, start, row);
                }
                let bits = |t: &TileMax| t.best.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
                assert_eq!(bits(&fast), bits(&plain), "n {n}, start {start}");
                assert_eq!(fast.arg, plain.arg, "n {n}, start {start}");
            }
        }
    }
}
