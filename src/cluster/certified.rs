//! Certified nearest-centroid search for cosine centroids: the bulk of the
//! products in low precision — int8 (`vpdpbusd`, [`dot_batch_i8`]) where
//! AVX-512 VNNI runs, else bfloat16 (`vdpbf16ps`, [`dot_batch_bf16`]) — then
//! the few centroids that could still win recomputed in f32, each pair by the
//! f32 kernel's own fused chain ([`kernel_pair_dots`]), so labels and dots are
//! bit-identical to [`Centroids::nearest`].
//!
//! The bf16 bound is derived below; the int8 one has the same form, with the
//! quantization residuals in place of the bf16 roundings and exact integer
//! sums ([`crate::distance::I8Bound`]): about five times wider, so more
//! candidates per row, for half the product cost.
//!
//! Error bound. With x̃, c̃ a row and a centroid rounded to bf16, the bf16
//! score `b_j` is within B = ‖x − x̃‖·max‖c‖ + ‖x̃‖·max‖c − c̃‖ + γ_d·‖x̃‖·max‖c̃‖
//! of the exact dot (the rounding errors actually made, by Cauchy–Schwarz,
//! plus the f32 summation), and the f32 dot `f_j` the full search computes is
//! within E = γ_d·‖x‖·max‖c‖ of it, γ_d = d·u/(1 − d·u), u = 2⁻²⁴ (Higham,
//! *Accuracy and Stability of Numerical Algorithms*, 2002, §3.1; see
//! [`Bf16Bound`]). Every f_j ≤ b_j + B + E, and the best bf16 centroid has
//! f ≥ max b − B − E; so a centroid with b_j < max b − 2(B + E) can neither
//! beat nor tie it, and the full search's winner (the first largest f32 dot)
//! is the first largest f32 dot among the others — the candidates. For random
//! unit rows at d = 384, 2(B + E) ≈ 0.0066 (the worst-case rounding,
//! 2⁻⁸ per value, would give 0.016). Denormals flushed by the bf16 kernel are
//! covered by a 1e-30 absolute term.
//!
//! Candidates are narrowed before the kernel's chains run: an f32 dot in any
//! (vectorized) order is within e = γ_d·‖x‖·max‖c‖ of the exact one, as the
//! kernel's is (so the two differ by at most 2e), and a candidate whose fast dot
//! is below the row's best by more than 4e cannot win or tie
//! (`CertifiedSearch::narrow`, [`contender_cut`](crate::distance::contender_cut)). A row then usually
//! runs one chain, its winner's, instead of one per candidate. For the two
//! nearest the cut hangs from the second largest fast dot instead
//! ([`contender_cut_second`](crate::distance::contender_cut_second)): usually two chains.
//!
//! Rows with many candidates (e.g. all-zero rows) fall back to the full f32
//! search. Everything is per row, in fixed chunks: results do not depend on
//! the thread count or on which rows share a batch.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::cluster::centroids::{BOUND_CANDIDATES, CHUNK_ROWS, Centroids, Distance, TopScores};
use crate::distance::{
    Bf16Bound, I8Rows, LowPrecision, PackedBf16, PackedI8, certified_precision, dot_batch_bf16, dot_batch_i8,
    kernel_pair_dots,
};

mod candidates;
use candidates::{candidates, max_score, top_two};

/// What the search needs besides the centroids, made once per set of
/// centroids and precision (cached in [`Centroids`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Packing {
    bf16: OnceLock<(PackedBf16, Bf16Bound)>,
    int8: OnceLock<PackedI8>,
    /// [`Centroids::f32_error`].
    pub(super) f32_err: OnceLock<f64>,
}

/// The int8 left operands of one fixed set of rows, chunk by chunk ([`CHUNK_ROWS`]),
/// made on the first search that needs them and reused by the next (k-means searches
/// its sample once per iteration against new centroids; the rows' quantization does not
/// depend on them). Same bits as quantizing afresh.
#[derive(Debug, Default)]
pub(crate) struct RowCache {
    chunks: Vec<OnceLock<I8Rows>>,
}

impl RowCache {
    /// A cache for `rows` rows (searched whole, from the first).
    pub(crate) fn new(rows: usize) -> Self {
        RowCache {
            chunks: (0..rows.div_ceil(CHUNK_ROWS)).map(|_| OnceLock::new()).collect(),
        }
    }
}

/// The centroids in the precision the search runs in, with the bound of B + E.
#[derive(Debug, Clone, Copy)]
enum Low<'a> {
    Bf16(&'a PackedBf16, Bf16Bound),
    Int8(&'a PackedI8),
}

/// The search (see the module doc); cheap to make: the low-precision
/// packing is made once per set of centroids and kept with them.
#[derive(Debug)]
pub struct CertifiedSearch<'a> {
    c: &'a Centroids,
    low: Low<'a>,
    f32_err: f64,
}

impl<'a> CertifiedSearch<'a> {
    /// The search for `c`, where it pays: cosine centroids on a CPU with the
    /// AVX-512 VNNI or BF16 kernel (elsewhere the low-precision products would
    /// be slower than the f32 search); int8 where VNNI runs, unless
    /// `DPRUNE_CERTIFIED=bf16`. `DPRUNE_CERTIFIED=0` turns it off.
    pub fn new(c: &'a Centroids) -> Option<Self> {
        let p = certified_precision(c.dim())?;
        (c.distance() == Distance::Cosine).then(|| Self::build(c, p))
    }

    /// The search in precision `p` whatever the CPU (tests: the portable
    /// kernels give the same bits).
    pub(crate) fn build(c: &'a Centroids, p: LowPrecision) -> Self {
        let (k, dim) = (c.k(), c.dim());
        let low = match p {
            LowPrecision::Bf16 => {
                let (packed, bound) = c.certified.bf16.get_or_init(|| {
                    let rows: Vec<usize> = (0..k).collect();
                    let packed = PackedBf16::new(c.as_slice(), dim, &rows, &vec![1.0; k]);
                    (packed, Bf16Bound::new(c.as_slice(), dim))
                });
                Low::Bf16(packed, *bound)
            }
            LowPrecision::Int8 => Low::Int8(c.certified.int8.get_or_init(|| PackedI8::new(c.as_slice(), dim))),
        };
        CertifiedSearch {
            c,
            low,
            f32_err: c.f32_error(),
        }
    }

    /// Exactly [`Centroids::nearest`]: for every row of `rows` the nearest
    /// centroid into `labels` and the f32 dot with it into `dots`.
    ///
    /// # Panics
    /// If the lengths disagree.
    pub fn nearest(&self, rows: &[f32], labels: &mut [u32], dots: &mut [f32]) {
        self.nearest_cached(rows, None, labels, dots);
    }

    /// [`CertifiedSearch::nearest`], taking the rows' int8 operands from `cache`
    /// (made for these `rows`) where the search runs in int8.
    ///
    /// # Panics
    /// If the lengths disagree, or the cache is for another number of rows.
    pub(crate) fn nearest_cached(&self, rows: &[f32], cache: Option<&RowCache>, labels: &mut [u32], dots: &mut [f32]) {
        let dim = self.c.dim();
        let n = labels.len();
        assert!(
            rows.len() == n * dim && dots.len() == n,
            "CertifiedSearch::nearest: lengths"
        );
        assert!(
            cache.is_none_or(|c| c.chunks.len() == n.div_ceil(CHUNK_ROWS)),
            "CertifiedSearch::nearest: cache for other rows"
        );
        rows.par_chunks(CHUNK_ROWS * dim)
            .zip(labels.par_chunks_mut(CHUNK_ROWS))
            .zip(dots.par_chunks_mut(CHUNK_ROWS))
            .enumerate()
            .for_each_init(Scratch::default, |s, (ci, ((x, l), d))| {
                let left = cache.map(|k| &k.chunks[ci]);
                self.chunk(x, l, d, None, None, left, s)
            });
    }

    /// [`CertifiedSearch::nearest`] of the rows `sel` of the row-major `x` (ascending or
    /// not): `labels[q]` and `dots[q]` for row `sel[q]`. Each chunk of rows is copied into
    /// a per-thread buffer by the thread that searches it, instead of the caller gathering
    /// them all first (same bits: a row's results do not depend on its chunk).
    ///
    /// # Panics
    /// If the lengths disagree or a row is out of range.
    pub fn nearest_rows(&self, x: &[f32], sel: &[u32], labels: &mut [u32], dots: &mut [f32]) {
        let dim = self.c.dim();
        assert!(
            labels.len() == sel.len() && dots.len() == sel.len(),
            "CertifiedSearch::nearest_rows: lengths"
        );
        sel.par_chunks(CHUNK_ROWS)
            .zip(labels.par_chunks_mut(CHUNK_ROWS))
            .zip(dots.par_chunks_mut(CHUNK_ROWS))
            .for_each_init(
                || (Scratch::default(), Vec::new()),
                |(s, rows), ((ids, l), d)| {
                    rows.clear();
                    for &i in ids {
                        rows.extend_from_slice(&x[i as usize * dim..(i as usize + 1) * dim]);
                    }
                    self.chunk(rows, l, d, None, None, None, s)
                },
            );
    }

    /// Exactly [`Centroids::nearest_two`]: [`CertifiedSearch::nearest`] and the
    /// second-nearest centroid into `second` (ties to the lower index).
    ///
    /// The candidates are then the centroids whose bf16 score is within twice
    /// the bound of the *second* largest bf16 score: at least two centroids
    /// have an f32 dot at or above that score minus the bound, so no other
    /// centroid can be first or second, nor tie with them.
    ///
    /// # Panics
    /// If the lengths disagree.
    pub fn nearest_two(&self, rows: &[f32], labels: &mut [u32], dots: &mut [f32], second: &mut [u32]) {
        let dim = self.c.dim();
        let n = labels.len();
        assert!(
            rows.len() == n * dim && dots.len() == n && second.len() == n,
            "CertifiedSearch::nearest_two: lengths"
        );
        rows.par_chunks(CHUNK_ROWS * dim)
            .zip(labels.par_chunks_mut(CHUNK_ROWS))
            .zip(dots.par_chunks_mut(CHUNK_ROWS))
            .zip(second.par_chunks_mut(CHUNK_ROWS))
            .for_each_init(Scratch::default, |s, (((x, l), d), s2)| {
                self.chunk(x, l, d, Some(s2), None, None, s)
            });
    }

    /// Exactly [`Centroids::nearest`], and the candidates and bound of
    /// [`Centroids::nearest_bounded`] (here from the bf16 scores: the bound
    /// is the best bf16 score left out plus B + E).
    ///
    /// # Panics
    /// If the lengths disagree.
    #[cfg(test)]
    pub(crate) fn nearest_bounded(
        &self,
        rows: &[f32],
        labels: &mut [u32],
        dots: &mut [f32],
        cand: &mut [u32],
        rest: &mut [f64],
    ) {
        self.nearest_bounded_cached(rows, None, labels, dots, cand, rest);
    }

    /// [`CertifiedSearch::nearest_bounded`], taking the rows' int8 operands from
    /// `cache` (made for these `rows`) where the search runs in int8.
    ///
    /// # Panics
    /// If the lengths disagree, or the cache is for another number of rows.
    pub(crate) fn nearest_bounded_cached(
        &self,
        rows: &[f32],
        cache: Option<&RowCache>,
        labels: &mut [u32],
        dots: &mut [f32],
        cand: &mut [u32],
        rest: &mut [f64],
    ) {
        let dim = self.c.dim();
        let n = labels.len();
        assert!(
            rows.len() == n * dim && dots.len() == n && cand.len() == n * BOUND_CANDIDATES && rest.len() == n,
            "CertifiedSearch::nearest_bounded: lengths"
        );
        assert!(
            cache.is_none_or(|c| c.chunks.len() == n.div_ceil(CHUNK_ROWS)),
            "CertifiedSearch::nearest_bounded: cache for other rows"
        );
        rows.par_chunks(CHUNK_ROWS * dim)
            .zip(labels.par_chunks_mut(CHUNK_ROWS))
            .zip(dots.par_chunks_mut(CHUNK_ROWS))
            .zip(cand.par_chunks_mut(CHUNK_ROWS * BOUND_CANDIDATES))
            .zip(rest.par_chunks_mut(CHUNK_ROWS))
            .enumerate()
            .for_each_init(Scratch::default, |s, (ci, ((((x, l), d), c), r))| {
                let left = cache.map(|k| &k.chunks[ci]);
                self.chunk(x, l, d, None, Some((c, r)), left, s)
            });
    }

    #[allow(clippy::too_many_arguments)]
    fn chunk(
        &self,
        x: &[f32],
        labels: &mut [u32],
        dots: &mut [f32],
        mut second: Option<&mut [u32]>,
        bounds: Option<(&mut [u32], &mut [f64])>,
        left: Option<&OnceLock<I8Rows>>,
        s: &mut Scratch,
    ) {
        let (k, dim, m) = (self.c.k(), self.c.dim(), labels.len());
        s.scores.resize(m * k, 0.0);
        s.row_err.resize(m, 0.0);
        match self.low {
            Low::Bf16(packed, bound) => {
                s.idx.clear();
                s.idx.extend(0..m);
                s.ones.resize(m, 1.0);
                dot_batch_bf16(x, &s.idx, &s.ones, packed, &mut s.scores);
                for (e, row) in s.row_err.iter_mut().zip(x.chunks_exact(dim)) {
                    *e = bound.row_error(row);
                }
            }
            Low::Int8(packed) => match left {
                Some(cell) => cell
                    .get_or_init(|| I8Rows::new(x, dim))
                    .dot_batch(packed, &mut s.scores, &mut s.row_err),
                None => dot_batch_i8(x, packed, &mut s.scores, &mut s.row_err),
            },
        }
        // Candidates, as (row, centroid) pairs in that order.
        s.pairs.clear();
        s.fallback.clear();
        for i in 0..m {
            let b = &s.scores[i * k..(i + 1) * k];
            let err = s.row_err[i];
            // With a second nearest wanted, the cut hangs from the second largest score;
            // otherwise only the largest's value is needed (the candidates name it).
            let (top, base) = if second.is_some() {
                top_two(b)
            } else {
                let top = max_score(b);
                (top, top)
            };
            if bounds.is_some() {
                s.tops.resize_with(i + 1, TopScores::default);
                s.tops[i].reset();
                s.tops[i].offer(b, 0, top);
            }
            let cut = base as f64 - 2.0 * err;
            // Rounded down: a candidate set larger than needed is still exact.
            let cut = (cut as f32).next_down();
            let before = s.pairs.len();
            if top.is_finite() && base.is_finite() && cut.is_finite() {
                s.found.clear();
                candidates(b, cut, &mut s.found);
                if s.found.len() <= MAX_CANDIDATES.max(k / 8) {
                    s.pairs.extend(s.found.iter().map(|&j| (i as u32, j)));
                }
            }
            if s.pairs.len() == before {
                s.fallback.push(i);
            }
        }
        // Exact f32 dots of the candidates: each pair's own fused chain, the kernel's bits.
        labels.fill(u32::MAX);
        dots.fill(f32::NEG_INFINITY);
        if let Some(s2) = second.as_deref_mut() {
            s2.fill(u32::MAX);
            s.second.clear();
            s.second.resize(m, f32::NEG_INFINITY);
        }
        self.narrow(x, s, second.is_some());
        s.exact.resize(s.pairs.len(), 0.0);
        kernel_pair_dots(x, self.c.as_slice(), dim, &s.pairs, &mut s.exact);
        // Pairs arrive row by row, centroids ascending: the first largest wins, and the
        // one it displaces, or the first largest of the rest, is second.
        for (&(i, j), &v) in s.pairs.iter().zip(&s.exact) {
            let i = i as usize;
            let (l, d) = (&mut labels[i], &mut dots[i]);
            if v > *d || *l == u32::MAX {
                if let Some(s2) = second.as_deref_mut()
                    && *l != u32::MAX
                {
                    (s2[i], s.second[i]) = (*l, *d);
                }
                (*l, *d) = (j, v);
            } else if let Some(s2) = second.as_deref_mut()
                && (v > s.second[i] || s2[i] == u32::MAX)
            {
                (s2[i], s.second[i]) = (j, v);
            }
        }
        let mut bounds = bounds;
        if let Some((cand, rest)) = bounds.as_mut() {
            // Fallback rows are overwritten below, from the f32 search.
            for (i, t) in s.tops.iter_mut().enumerate().take(m) {
                if labels[i] != u32::MAX {
                    let c = &mut cand[i * BOUND_CANDIDATES..(i + 1) * BOUND_CANDIDATES];
                    rest[i] = t.finish(labels[i], s.row_err[i], c);
                }
            }
        }
        if !s.fallback.is_empty() {
            s.x.clear();
            for &i in &s.fallback {
                s.x.extend_from_slice(&x[i * dim..(i + 1) * dim]);
            }
            let f = s.fallback.len();
            let (mut l, mut d) = (vec![0u32; f], vec![0f32; f]);
            match second {
                None if let Some((cand, rest)) = bounds.as_mut() => {
                    let (mut c, mut o) = (vec![0u32; f * BOUND_CANDIDATES], vec![0f64; f]);
                    self.c.nearest_bounded(&s.x, &mut l, &mut d, &mut c, &mut o);
                    for (r, &i) in s.fallback.iter().enumerate() {
                        rest[i] = o[r];
                        cand[i * BOUND_CANDIDATES..(i + 1) * BOUND_CANDIDATES]
                            .copy_from_slice(&c[r * BOUND_CANDIDATES..(r + 1) * BOUND_CANDIDATES]);
                    }
                }
                Some(s2) => {
                    let mut t = vec![0u32; f];
                    self.c.nearest_two(&s.x, &mut l, &mut d, &mut t);
                    for (r, &i) in s.fallback.iter().enumerate() {
                        s2[i] = t[r];
                    }
                }
                None => self.c.nearest(&s.x, &mut l, &mut d),
            }
            for (r, &i) in s.fallback.iter().enumerate() {
                (labels[i], dots[i]) = (l[r], d[r]);
            }
        }
    }
}

/// Rows with more candidates than this (or than k/8) use the full f32 search.
const MAX_CANDIDATES: usize = 64;

/// Per-thread buffers of [`CertifiedSearch::nearest`].
#[derive(Default)]
struct Scratch {
    idx: Vec<usize>,
    ones: Vec<f32>,
    scores: Vec<f32>,
    pairs: Vec<(u32, u32)>,
    fallback: Vec<usize>,
    found: Vec<u32>,
    x: Vec<f32>,
    exact: Vec<f32>,
    /// The candidates [`CertifiedSearch::narrow`] takes fast dots of, and those dots.
    need: Vec<(u32, u32)>,
    fast: Vec<f32>,
    /// The f32 dot with the second nearest so far, per row (with `nearest_two`).
    second: Vec<f32>,
    /// With `nearest_bounded`: each row's best low-precision scores.
    tops: Vec<TopScores>,
    /// B + E of each row of the chunk.
    row_err: Vec<f64>,
}

#[cfg(test)]
mod tests;
