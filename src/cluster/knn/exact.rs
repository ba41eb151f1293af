//! Exact kNN search: rows packed once for the AVX-512 product, swept in cache-sized
//! column tiles whose similarities feed a bounded top-k per query row ([`TopK`]), so the
//! graph is the same for any thread count and block size.

use std::cmp::Ordering;

use rayon::prelude::*;

use super::{KnnGraph, check_k, check_shape};
use crate::Result;
use crate::distance::{PACKED_COL_ALIGN, PackedRows, dot, dot_batch_packed_cols};

/// Query rows per parallel task of the exact search (ten 12-row register
/// tiles of the AVX-512 product).
const QUERY_BLOCK: usize = 120;
/// Columns per product tile of the exact search: a `QUERY_BLOCK × COL_BLOCK`
/// tile of similarities (480 KiB) stays in L2 while the top-k reads it.
const COL_BLOCK: usize = 1024;

/// Similarity order: higher first, ties to the lower id (the order every
/// kNN list follows, NaN and signed zeros included, via `total_cmp`).
#[inline]
pub(super) fn by_sim(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Values per threshold check of [`TopK::scan`] (four AVX-512 registers).
pub(super) const SCAN_CHUNK: usize = 64;

/// The `k` best candidates of a stream in [`by_sim`] order, without holding
/// the stream: candidates go to a buffer of up to `2k` only when they are
/// not below the `k`-th best seen at the last compaction, so after the first
/// few hundred values almost every chunk is rejected by one vector compare.
/// The kept set is the `k` best of everything offered whatever the order
/// and grouping of the offers (`by_sim` is a total order on distinct ids):
/// a rejected value is below `k` kept ones, so it could never be in the top.
pub(super) struct TopK {
    k: usize,
    /// Buffer size that triggers a compaction.
    cap: usize,
    buf: Vec<(u32, f32)>,
    /// The `k`-th best at the last compaction (−∞ before the first).
    thr: f32,
}

impl TopK {
    pub(super) fn new(k: usize) -> Self {
        let cap = 2 * k.max(SCAN_CHUNK);
        TopK {
            k,
            cap,
            buf: Vec::with_capacity(cap),
            thr: f32::NEG_INFINITY,
        }
    }

    /// Offers `vals[t]` as the similarity of id `j0 + t`, skipping id `skip`.
    #[inline]
    pub(super) fn scan(&mut self, vals: &[f32], j0: u32, skip: u32) {
        #[cfg(target_arch = "x86_64")]
        if crate::distance::kernel() == crate::distance::Kernel::Avx512 {
            // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
            return unsafe { self.scan_avx512(vals, j0, skip) };
        }
        self.scan_body(vals, j0, skip)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn scan_avx512(&mut self, vals: &[f32], j0: u32, skip: u32) {
        self.scan_body(vals, j0, skip)
    }

    // `!(v < thr)` on purpose: unlike `v >= thr` it passes NaN
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    #[inline(always)]
    fn scan_body(&mut self, vals: &[f32], j0: u32, skip: u32) {
        for (c, chunk) in vals.chunks(SCAN_CHUNK).enumerate() {
            let thr = self.thr;
            // `!(v < thr)` also lets NaN through, for `total_cmp` to place it;
            // a fold without early exit compiles to vector compares
            if !chunk.iter().fold(false, |a, &v| a | !(v < thr)) {
                continue;
            }
            let base = j0 + (c * SCAN_CHUNK) as u32;
            for (t, &v) in chunk.iter().enumerate() {
                let j = base + t as u32;
                if !(v < self.thr) && j != skip {
                    self.buf.push((j, v));
                    if self.buf.len() == self.cap {
                        self.compact();
                    }
                }
            }
        }
    }

    /// Keeps the `k` best of the buffer and raises the threshold to the `k`-th.
    fn compact(&mut self) {
        let k = self.k;
        if self.buf.len() > k && k > 0 {
            self.buf.select_nth_unstable_by(k - 1, by_sim);
            self.buf.truncate(k);
        }
        if self.buf.len() == k && k > 0 {
            self.thr = self.buf[k - 1].1;
        }
    }

    /// The kept candidates, best first; the state is reset for reuse.
    pub(super) fn finish(&mut self) -> std::vec::Drain<'_, (u32, f32)> {
        self.compact();
        self.buf.sort_unstable_by(by_sim);
        self.thr = f32::NEG_INFINITY;
        self.buf.drain(..)
    }
}

/// The exact kNN graph of `rows` (`n × dim` unit vectors). The rows are
/// packed once for the AVX-512 product; parallel tasks take blocks of query
/// rows and sweep all rows in cache-sized column tiles, each tile one
/// matrix product whose values feed a bounded top-k per query row. Every
/// similarity is one fixed sum of its two rows and the kept set does not
/// depend on the order of the offers, so the graph is the same for any
/// thread count and block sizes.
pub fn exact_knn(rows: &[f32], dim: usize, k: usize) -> Result<KnnGraph> {
    exact_knn_blocked(rows, dim, k, QUERY_BLOCK, COL_BLOCK)
}

/// [`exact_knn`] with `qb` query rows per task and `cb` columns per tile
/// (a multiple of [`PACKED_COL_ALIGN`]).
pub(super) fn exact_knn_blocked(rows: &[f32], dim: usize, k: usize, qb: usize, cb: usize) -> Result<KnnGraph> {
    let n = check_shape(rows, dim, "exact knn")?;
    check_k(n, k)?;
    debug_assert!(qb > 0 && cb > 0 && cb.is_multiple_of(PACKED_COL_ALIGN));
    let packed = PackedRows::new(rows, dim);
    let mut idx = vec![0u32; n * k];
    let mut sim = vec![0f32; n * k];
    idx.par_chunks_mut(qb * k)
        .zip(sim.par_chunks_mut(qb * k))
        .enumerate()
        .for_each_init(
            || (vec![0f32; qb * cb], Vec::<TopK>::new()),
            |(tile, tops), (b, (oi, os))| {
                let start = b * qb;
                let m = oi.len() / k;
                let x = &rows[start * dim..(start + m) * dim];
                tops.resize_with(m, || TopK::new(k));
                for c0 in (0..n).step_by(cb) {
                    let w = (n - c0).min(cb);
                    let t = &mut tile[..m * w];
                    dot_batch_packed_cols(x, &packed, c0..c0 + w, t);
                    for (r, top) in tops.iter_mut().enumerate() {
                        top.scan(&t[r * w..(r + 1) * w], c0 as u32, (start + r) as u32);
                    }
                }
                for (r, top) in tops.iter_mut().take(m).enumerate() {
                    for (t, (j, v)) in top.finish().enumerate() {
                        oi[r * k + t] = j;
                        os[r * k + t] = v;
                    }
                }
            },
        );
    Ok(KnnGraph { n, k, idx, sim })
}

/// The exact `k` nearest other rows of row `i` (one pass over all rows).
pub(super) fn exact_row(rows: &[f32], dim: usize, i: usize, k: usize) -> Vec<(u32, f32)> {
    let x = &rows[i * dim..(i + 1) * dim];
    let mut top = TopK::new(k);
    let mut s = [0f32; SCAN_CHUNK];
    for (c, block) in rows.chunks(SCAN_CHUNK * dim).enumerate() {
        let w = block.len() / dim;
        for (v, r) in s.iter_mut().zip(block.chunks_exact(dim)) {
            *v = dot(x, r);
        }
        top.scan(&s[..w], (c * SCAN_CHUNK) as u32, i as u32);
    }
    top.finish().collect()
}
