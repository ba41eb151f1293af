//! k-nearest-neighbour graphs by cosine similarity: exact (blocked matrix
//! products) or approximate ([`Hnsw`]), for selective annotation.
//!
//! Row `i`'s list holds the `k` rows most similar to it, most similar first,
//! never `i` itself (excluded by index, so duplicate rows still count as
//! neighbours); ties go to the lower row id. Rows must be unit vectors: see
//! [`prepare`] for the optional mean-centering that both reference
//! implementations apply first. An HNSW graph reports its recall@k against
//! exact search on a seeded sample of rows.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::{Hnsw, HnswParams};
use crate::distance::{PACKED_COL_ALIGN, PackedRows, dot, dot_batch_packed_cols, normalize};
use crate::rng::Rng;
use crate::{Error, Result};

/// Pools with more rows than this use HNSW when the backend is [`KnnBackend::Auto`].
pub const DEFAULT_HNSW_THRESHOLD: usize = 50_000;
/// Rows whose HNSW neighbours are compared with exact search.
pub const DEFAULT_RECALL_SAMPLE: usize = 1_000;
/// Query rows per parallel task of the exact search (ten 12-row register
/// tiles of the AVX-512 product).
const QUERY_BLOCK: usize = 120;
/// Columns per product tile of the exact search: a `QUERY_BLOCK × COL_BLOCK`
/// tile of similarities (480 KiB) stays in L2 while the top-k reads it.
const COL_BLOCK: usize = 1024;

/// Which search builds the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnnBackend {
    /// Exact below [`KnnParams::hnsw_threshold`] rows, HNSW above.
    #[default]
    Auto,
    /// Exact search (blocked matrix products).
    Exact,
    /// Approximate search (HNSW).
    Hnsw,
}

impl fmt::Display for KnnBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KnnBackend::Auto => "auto",
            KnnBackend::Exact => "exact",
            KnnBackend::Hnsw => "hnsw",
        })
    }
}

impl FromStr for KnnBackend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(KnnBackend::Auto),
            "exact" => Ok(KnnBackend::Exact),
            "hnsw" => Ok(KnnBackend::Hnsw),
            _ => Err(Error::param("--knn", format!("`{s}`: expected auto, exact or hnsw"))),
        }
    }
}

/// How a kNN graph is built (the `k` itself belongs to the method using it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnnParams {
    /// Exact, HNSW, or automatic; defaults to [`KnnBackend::Auto`].
    pub backend: KnnBackend,
    /// Row count above which `Auto` uses HNSW; defaults to [`DEFAULT_HNSW_THRESHOLD`].
    pub hnsw_threshold: usize,
    /// HNSW settings (`neighbors` is ignored: the method's `k` is used).
    pub hnsw: HnswParams,
    /// Rows sampled to measure HNSW recall; defaults to [`DEFAULT_RECALL_SAMPLE`].
    pub recall_sample: usize,
    /// Seed of the recall sample.
    pub seed: u64,
}

impl Default for KnnParams {
    fn default() -> Self {
        KnnParams {
            backend: KnnBackend::Auto,
            hnsw_threshold: DEFAULT_HNSW_THRESHOLD,
            hnsw: HnswParams {
                parallel_build: true,
                ..HnswParams::default()
            },
            recall_sample: DEFAULT_RECALL_SAMPLE,
            seed: 0,
        }
    }
}

impl KnnParams {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        self.hnsw.validate()
    }

    /// The backend used for `n` rows.
    pub fn resolve(&self, n: usize) -> KnnBackend {
        match self.backend {
            KnnBackend::Auto if n > self.hnsw_threshold => KnnBackend::Hnsw,
            KnnBackend::Auto => KnnBackend::Exact,
            b => b,
        }
    }
}

/// A directed kNN graph: `k` out-neighbours per row, most similar first.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnGraph {
    n: usize,
    k: usize,
    idx: Vec<u32>,
    sim: Vec<f32>,
}

/// A graph with how it was built.
#[derive(Debug, Clone)]
pub struct KnnBuild {
    /// The graph.
    pub graph: KnnGraph,
    /// The backend actually used.
    pub backend: KnnBackend,
    /// Recall@k of an HNSW graph against exact search on a sample.
    pub recall: Option<f64>,
}

impl KnnGraph {
    /// A graph from explicit lists (`n × k` row-major); checks ids and
    /// self-loops.
    pub fn from_lists(n: usize, k: usize, idx: Vec<u32>, sim: Vec<f32>) -> Result<Self> {
        if idx.len() != n * k || sim.len() != n * k {
            return Err(Error::Shape {
                op: "knn graph",
                expected: format!("{n} x {k} neighbours"),
                got: format!("{} ids and {} similarities", idx.len(), sim.len()),
            });
        }
        for (p, &j) in idx.iter().enumerate() {
            if j as usize >= n || j as usize == p / k.max(1) {
                return Err(Error::param("knn graph", format!("row {} lists neighbour {j}", p / k)));
            }
        }
        Ok(KnnGraph { n, k, idx, sim })
    }

    /// Rows.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Neighbours per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Row `i`'s neighbours, most similar first.
    #[inline]
    pub fn neighbors(&self, i: usize) -> &[u32] {
        &self.idx[i * self.k..(i + 1) * self.k]
    }

    /// Cosines to row `i`'s neighbours, in the order of [`Self::neighbors`].
    #[inline]
    pub fn sims(&self, i: usize) -> &[f32] {
        &self.sim[i * self.k..(i + 1) * self.k]
    }

    /// The reversed graph in CSR form: `(ptr, src, sim)`, where the rows
    /// listing `v` as a neighbour are `src[ptr[v]..ptr[v + 1]]`, ascending.
    pub fn in_edges(&self) -> (Vec<usize>, Vec<u32>, Vec<f32>) {
        let mut ptr = vec![0usize; self.n + 1];
        for &j in &self.idx {
            ptr[j as usize + 1] += 1;
        }
        for v in 0..self.n {
            ptr[v + 1] += ptr[v];
        }
        let mut fill = ptr.clone();
        let mut src = vec![0u32; self.idx.len()];
        let mut sim = vec![0f32; self.idx.len()];
        for u in 0..self.n {
            for (&v, &s) in self.neighbors(u).iter().zip(self.sims(u)) {
                let p = &mut fill[v as usize];
                src[*p] = u as u32;
                sim[*p] = s;
                *p += 1;
            }
        }
        (ptr, src, sim)
    }
}

/// Centers rows on their mean (when `center`) and scales them to unit
/// length, in place. Returns the mean that was subtracted (apply the same
/// to queries with [`apply_transform`]). Zero rows stay zero.
pub fn prepare(rows: &mut [f32], dim: usize, center: bool) -> Result<Option<Vec<f32>>> {
    check_shape(rows, dim, "knn prepare")?;
    let mean = center.then(|| mean_rows(rows, dim));
    apply_transform(rows, dim, mean.as_deref());
    Ok(mean)
}

/// Subtracts `mean` (if any) from every row and normalises it.
pub fn apply_transform(rows: &mut [f32], dim: usize, mean: Option<&[f32]>) {
    rows.par_chunks_mut(dim.max(1)).for_each(|r| {
        if let Some(m) = mean {
            r.iter_mut().zip(m).for_each(|(x, m)| *x -= m);
        }
        normalize(r);
    });
}

/// Mean row in f64 over fixed chunks (independent of the thread count).
fn mean_rows(rows: &[f32], dim: usize) -> Vec<f32> {
    let n = rows.len() / dim.max(1);
    let sums: Vec<Vec<f64>> = rows
        .par_chunks(dim * 1024)
        .map(|c| {
            let mut s = vec![0f64; dim];
            for r in c.chunks_exact(dim) {
                s.iter_mut().zip(r).for_each(|(a, &x)| *a += x as f64);
            }
            s
        })
        .collect();
    let mut total = vec![0f64; dim];
    for s in sums {
        total.iter_mut().zip(s).for_each(|(a, x)| *a += x);
    }
    total.iter().map(|&s| (s / n.max(1) as f64) as f32).collect()
}

fn check_shape(rows: &[f32], dim: usize, op: &'static str) -> Result<usize> {
    if dim == 0 || !rows.len().is_multiple_of(dim) {
        return Err(Error::Shape {
            op,
            expected: format!("n x {dim}"),
            got: format!("{} values", rows.len()),
        });
    }
    Ok(rows.len() / dim)
}

/// Similarity order: higher first, ties to the lower id (the order every
/// kNN list follows, NaN and signed zeros included, via `total_cmp`).
#[inline]
fn by_sim(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Values per threshold check of [`TopK::scan`] (four AVX-512 registers).
const SCAN_CHUNK: usize = 64;

/// The `k` best candidates of a stream in [`by_sim`] order, without holding
/// the stream: candidates go to a buffer of up to `2k` only when they are
/// not below the `k`-th best seen at the last compaction, so after the first
/// few hundred values almost every chunk is rejected by one vector compare.
/// The kept set is the `k` best of everything offered whatever the order
/// and grouping of the offers (`by_sim` is a total order on distinct ids):
/// a rejected value is below `k` kept ones, so it could never be in the top.
struct TopK {
    k: usize,
    /// Buffer size that triggers a compaction.
    cap: usize,
    buf: Vec<(u32, f32)>,
    /// The `k`-th best at the last compaction (−∞ before the first).
    thr: f32,
}

impl TopK {
    fn new(k: usize) -> Self {
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
    fn scan(&mut self, vals: &[f32], j0: u32, skip: u32) {
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
    fn finish(&mut self) -> std::vec::Drain<'_, (u32, f32)> {
        self.compact();
        self.buf.sort_unstable_by(by_sim);
        self.thr = f32::NEG_INFINITY;
        self.buf.drain(..)
    }
}

fn check_k(n: usize, k: usize) -> Result<()> {
    if k == 0 {
        return Err(Error::param("k", "the kNN graph needs k of at least 1"));
    }
    if n <= k {
        return Err(Error::param(
            "k",
            format!(
                "the pool has {n} rows, too few for k = {k} neighbours (at least {} rows needed); lower k",
                k + 1
            ),
        ));
    }
    Ok(())
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
fn exact_knn_blocked(rows: &[f32], dim: usize, k: usize, qb: usize, cb: usize) -> Result<KnnGraph> {
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
fn exact_row(rows: &[f32], dim: usize, i: usize, k: usize) -> Vec<(u32, f32)> {
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

/// An approximate kNN graph through HNSW. Rows whose search returns fewer
/// than `k` other rows are completed by exact search, so every row has
/// exactly `k` neighbours.
pub fn hnsw_knn(rows: &[f32], dim: usize, k: usize, params: &HnswParams) -> Result<KnnGraph> {
    let n = check_shape(rows, dim, "hnsw knn")?;
    check_k(n, k)?;
    let index = Hnsw::build(rows, dim, &vec![true; n], params)?;
    graph_from_index(&index, rows, dim, k)
}

/// The kNN graph of `rows` read from an index built over all of them
/// ([`Hnsw::build`] with every row included): each row's search, itself
/// removed, completed by exact search where it returns fewer than `k`.
pub fn graph_from_index(index: &Hnsw, rows: &[f32], dim: usize, k: usize) -> Result<KnnGraph> {
    let n = check_shape(rows, dim, "hnsw knn")?;
    check_k(n, k)?;
    if index.len() != n || index.dim() != dim {
        return Err(Error::Shape {
            op: "hnsw knn",
            expected: format!("an index over {n} x {dim} rows"),
            got: format!("{} x {} rows", index.len(), index.dim()),
        });
    }
    let lists: Vec<Vec<(u32, f32)>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let x = &rows[i * dim..(i + 1) * dim];
            let mut nb: Vec<(u32, f32)> = index
                .search(x, k + 1)
                .into_iter()
                .filter(|&(j, _)| j as usize != i)
                .collect();
            if nb.len() < k {
                return exact_row(rows, dim, i, k);
            }
            nb.truncate(k);
            nb
        })
        .collect();
    let mut idx = Vec::with_capacity(n * k);
    let mut sim = Vec::with_capacity(n * k);
    for l in lists {
        for (j, s) in l {
            idx.push(j);
            sim.push(s);
        }
    }
    Ok(KnnGraph { n, k, idx, sim })
}

/// Recall@k of `graph` against exact search on `sample` rows drawn with
/// `seed` (all rows when the pool is smaller): the mean fraction of the
/// exact `k` neighbours found.
pub fn recall_at_k(graph: &KnnGraph, rows: &[f32], dim: usize, sample: usize, seed: u64) -> Result<f64> {
    let n = check_shape(rows, dim, "knn recall")?;
    if n != graph.n {
        return Err(Error::Shape {
            op: "knn recall",
            expected: format!("{} rows", graph.n),
            got: format!("{n} rows"),
        });
    }
    let picks = Rng::new(seed).sample_indices(n as u64, sample.max(1) as u64);
    let k = graph.k;
    let found: usize = picks
        .par_iter()
        .map(|&i| {
            let i = i as usize;
            let truth = exact_row(rows, dim, i, k);
            let got = graph.neighbors(i);
            truth.iter().filter(|(j, _)| got.contains(j)).count()
        })
        .sum();
    Ok(found as f64 / (picks.len() * k).max(1) as f64)
}

/// Builds the graph of `rows` (unit vectors) with the backend `params`
/// choose for their size, measuring recall when HNSW is used.
pub fn build_knn(rows: &[f32], dim: usize, k: usize, params: &KnnParams) -> Result<KnnBuild> {
    params.validate()?;
    let n = check_shape(rows, dim, "knn")?;
    match params.resolve(n) {
        KnnBackend::Hnsw => {
            let graph = hnsw_knn(rows, dim, k, &params.hnsw)?;
            let recall = recall_at_k(&graph, rows, dim, params.recall_sample, params.seed)?;
            Ok(KnnBuild {
                graph,
                backend: KnnBackend::Hnsw,
                recall: Some(recall),
            })
        }
        _ => Ok(KnnBuild {
            graph: exact_knn(rows, dim, k)?,
            backend: KnnBackend::Exact,
            recall: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        let mut v: Vec<f32> = (0..n * dim).map(|_| r.normal() as f32).collect();
        prepare(&mut v, dim, false).unwrap();
        v
    }

    fn brute(rows: &[f32], dim: usize, k: usize) -> Vec<Vec<u32>> {
        let n = rows.len() / dim;
        (0..n)
            .map(|i| {
                let mut c: Vec<(u32, f64)> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| {
                        let s = crate::distance::dot_reference(&rows[i * dim..][..dim], &rows[j * dim..][..dim]);
                        (j as u32, s)
                    })
                    .collect();
                c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                c.truncate(k);
                c.into_iter().map(|x| x.0).collect()
            })
            .collect()
    }

    #[test]
    fn exact_matches_brute_force_and_excludes_self() {
        let (n, dim, k) = (157, 9, 6);
        let rows = unit_rows(n, dim, 4);
        let g = exact_knn(&rows, dim, k).unwrap();
        let b = brute(&rows, dim, k);
        for (i, bi) in b.iter().enumerate() {
            assert!(!g.neighbors(i).contains(&(i as u32)));
            assert_eq!(g.neighbors(i), &bi[..], "row {i}");
            assert!(g.sims(i).windows(2).all(|w| w[0] >= w[1]));
        }
    }

    /// The graph the way it was built before the bounded top-k: every
    /// similarity of a row from one full product, sorted by [`by_sim`].
    fn materialised(rows: &[f32], dim: usize, k: usize) -> KnnGraph {
        let n = rows.len() / dim;
        let mut s = vec![0f32; n * n];
        crate::distance::dot_batch(rows, rows, dim, &mut s);
        let (mut idx, mut sim) = (Vec::new(), Vec::new());
        for i in 0..n {
            let mut c: Vec<(u32, f32)> = (0..n).filter(|&j| j != i).map(|j| (j as u32, s[i * n + j])).collect();
            c.sort_by(by_sim);
            c.truncate(k);
            idx.extend(c.iter().map(|x| x.0));
            sim.extend(c.iter().map(|x| x.1));
        }
        KnnGraph { n, k, idx, sim }
    }

    #[test]
    fn exact_graph_does_not_depend_on_blocks_or_threads() {
        // Rows drawn from 7 distinct vectors: every similarity ties with
        // many others, across tile borders, so only the lower-id rule decides.
        let (n, dim) = (613, 19);
        let base = unit_rows(7, dim, 11);
        let mut r = Rng::new(12);
        let mut rows = Vec::with_capacity(n * dim);
        for i in 0..n {
            let b = if i % 5 == 0 { r.below(7) as usize } else { i % 7 };
            rows.extend_from_slice(&base[b * dim..(b + 1) * dim]);
        }
        let mixed = unit_rows(n, dim, 13);
        for (rows, k) in [(&rows, 150), (&rows, 3), (&mixed, 10), (&mixed, 150)] {
            let want = materialised(rows, dim, k);
            for (qb, cb) in [(1, 32), (7, 64), (13, 96), (120, 1024), (1000, 32)] {
                assert_eq!(
                    exact_knn_blocked(rows, dim, k, qb, cb).unwrap(),
                    want,
                    "k {k} qb {qb} cb {cb}"
                );
            }
            for t in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
                assert_eq!(pool.install(|| exact_knn(rows, dim, k)).unwrap(), want, "{t} threads");
            }
            for i in [0, 1, 312, n - 1] {
                let e = exact_row(rows, dim, i, k);
                assert_eq!(e.iter().map(|x| x.0).collect::<Vec<_>>(), want.neighbors(i), "row {i}");
            }
        }
        // ties: row 0's neighbours are the rows equal to it, in id order
        let g = exact_knn(&rows, dim, 3).unwrap();
        let same: Vec<u32> = (1..n as u32)
            .filter(|&j| rows[j as usize * dim..][..dim] == rows[..dim])
            .take(3)
            .collect();
        assert_eq!(g.neighbors(0), &same[..]);
    }

    #[test]
    fn top_k_keeps_the_best_whatever_the_offer_order() {
        let mut r = Rng::new(2);
        // few distinct values (ties), a NaN and both zeros
        let mut vals: Vec<f32> = (0..500).map(|_| (r.below(9) as f32) / 8.0 - 0.5).collect();
        vals[17] = f32::NAN;
        vals[40] = -0.0;
        vals[41] = 0.0;
        for k in [1, 5, 64, 200, 499] {
            let mut want: Vec<(u32, f32)> = vals.iter().enumerate().map(|(j, &v)| (j as u32, v)).collect();
            want.retain(|x| x.0 != 3);
            want.sort_by(by_sim);
            want.truncate(k);
            // offered in one go, in chunks of 7, and back to front in chunks of 64
            let mut a = TopK::new(k);
            a.scan(&vals, 0, 3);
            let a: Vec<_> = a.finish().collect();
            let mut b = TopK::new(k);
            for (c, ch) in vals.chunks(7).enumerate() {
                b.scan(ch, (c * 7) as u32, 3);
            }
            let b: Vec<_> = b.finish().collect();
            let mut c = TopK::new(k);
            for (p, ch) in vals.chunks(64).enumerate().rev() {
                c.scan(ch, (p * 64) as u32, 3);
            }
            let c: Vec<_> = c.finish().collect();
            for got in [&a, &b, &c] {
                assert_eq!(got.len(), want.len(), "k {k}");
                for (x, y) in got.iter().zip(&want) {
                    assert!(x.0 == y.0 && x.1.to_bits() == y.1.to_bits(), "k {k}: {x:?} vs {y:?}");
                }
            }
        }
    }

    #[test]
    fn duplicates_are_neighbours_and_ties_go_to_lower_id() {
        // rows 0, 1, 2 identical; 3 orthogonal; 4 equal to 3
        let rows = vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
        let g = exact_knn(&rows, 2, 2).unwrap();
        assert_eq!(g.neighbors(0), &[1, 2]);
        assert_eq!(g.neighbors(1), &[0, 2]);
        assert_eq!(g.neighbors(2), &[0, 1]);
        assert_eq!(g.neighbors(3), &[4, 0]);
        assert_eq!(g.neighbors(4), &[3, 0]);
        let (ptr, src, _) = g.in_edges();
        assert_eq!(&src[ptr[0]..ptr[1]], &[1, 2, 3, 4]);
        assert_eq!(ptr[5], 10);
    }

    #[test]
    fn centering_subtracts_the_mean() {
        let mut rows = vec![2.0, 1.0, 4.0, 1.0, 3.0, 4.0];
        let mean = prepare(&mut rows, 2, true).unwrap().unwrap();
        assert_eq!(mean, vec![3.0, 2.0]);
        assert_eq!(
            rows,
            vec![
                -1.0 / 2f32.sqrt(),
                -1.0 / 2f32.sqrt(),
                1.0 / 2f32.sqrt(),
                -1.0 / 2f32.sqrt(),
                0.0,
                1.0
            ]
        );
    }

    #[test]
    fn hnsw_recall_is_measured_and_high_on_small_pools() {
        let (n, dim, k) = (600, 16, 10);
        let rows = unit_rows(n, dim, 5);
        let params = KnnParams {
            backend: KnnBackend::Hnsw,
            recall_sample: 200,
            ..KnnParams::default()
        };
        let b = build_knn(&rows, dim, k, &params).unwrap();
        assert_eq!(b.backend, KnnBackend::Hnsw);
        let r = b.recall.unwrap();
        assert!(r > 0.9, "recall {r}");
        for i in 0..n {
            assert_eq!(b.graph.neighbors(i).len(), k);
            assert!(!b.graph.neighbors(i).contains(&(i as u32)));
        }
        let exact = build_knn(&rows, dim, k, &KnnParams::default()).unwrap();
        assert_eq!(exact.backend, KnnBackend::Exact);
        assert_eq!(recall_at_k(&exact.graph, &rows, dim, 50, 1).unwrap(), 1.0);
    }

    #[test]
    fn graph_from_index_checks_the_index_and_matches_hnsw_knn() {
        let (n, dim, k) = (300, 8, 5);
        let rows = unit_rows(n, dim, 6);
        let params = HnswParams::default();
        let index = Hnsw::build(&rows, dim, &vec![true; n], &params).unwrap();
        // a serial build is deterministic, so both routes give the same graph
        assert_eq!(
            graph_from_index(&index, &rows, dim, k).unwrap(),
            hnsw_knn(&rows, dim, k, &params).unwrap()
        );
        let e = graph_from_index(&index, &rows[..(n - 1) * dim], dim, k)
            .unwrap_err()
            .to_string();
        assert!(e.contains("an index over 299 x 8 rows") && e.contains("300 x 8"), "{e}");
        let other = unit_rows(n, dim + 1, 6);
        assert!(graph_from_index(&index, &other, dim + 1, k).is_err());
    }

    #[test]
    fn bad_k_is_an_error() {
        let rows = unit_rows(5, 3, 1);
        let e = exact_knn(&rows, 3, 5).unwrap_err().to_string();
        assert!(e.contains("5 rows") && e.contains("k = 5"), "{e}");
        assert!(exact_knn(&rows, 3, 0).is_err());
        assert!(exact_knn(&rows[..7], 3, 1).is_err());
        assert!("fast".parse::<KnnBackend>().is_err());
    }
}
