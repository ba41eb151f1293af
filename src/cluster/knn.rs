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
use crate::distance::{dot, dot_batch, normalize};
use crate::rng::Rng;
use crate::{Error, Result};

/// Pools with more rows than this use HNSW when the backend is [`KnnBackend::Auto`].
pub const DEFAULT_HNSW_THRESHOLD: usize = 50_000;
/// Rows whose HNSW neighbours are compared with exact search.
pub const DEFAULT_RECALL_SAMPLE: usize = 1_000;
/// Target number of similarities per query block of the exact search.
const BLOCK_VALUES: usize = 1 << 22;

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

/// Similarity order: higher first, ties to the lower id.
#[inline]
fn by_sim(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Keeps the `k` best of `cand` in [`by_sim`] order.
fn top_k(cand: &mut Vec<(u32, f32)>, k: usize) {
    if cand.len() > k && k > 0 {
        cand.select_nth_unstable_by(k - 1, by_sim);
    }
    cand.truncate(k);
    cand.sort_unstable_by(by_sim);
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

/// The exact kNN graph of `rows` (`n × dim` unit vectors). Queries run in
/// parallel blocks of rows, each one matrix product against all rows.
pub fn exact_knn(rows: &[f32], dim: usize, k: usize) -> Result<KnnGraph> {
    let n = check_shape(rows, dim, "exact knn")?;
    check_k(n, k)?;
    let block = (BLOCK_VALUES / n).clamp(1, 256);
    let mut idx = vec![0u32; n * k];
    let mut sim = vec![0f32; n * k];
    idx.par_chunks_mut(block * k)
        .zip(sim.par_chunks_mut(block * k))
        .enumerate()
        .for_each(|(b, (oi, os))| {
            let start = b * block;
            let m = oi.len() / k;
            let mut s = vec![0f32; m * n];
            dot_batch(&rows[start * dim..(start + m) * dim], rows, dim, &mut s);
            let mut cand = Vec::with_capacity(n);
            for r in 0..m {
                let i = start + r;
                cand.clear();
                cand.extend(
                    s[r * n..(r + 1) * n]
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .map(|(j, &v)| (j as u32, v)),
                );
                top_k(&mut cand, k);
                for (t, &(j, v)) in cand.iter().enumerate() {
                    oi[r * k + t] = j;
                    os[r * k + t] = v;
                }
            }
        });
    Ok(KnnGraph { n, k, idx, sim })
}

/// The exact `k` nearest other rows of row `i` (one pass over all rows).
fn exact_row(rows: &[f32], dim: usize, i: usize, k: usize) -> Vec<(u32, f32)> {
    let x = &rows[i * dim..(i + 1) * dim];
    let mut cand: Vec<(u32, f32)> = rows
        .chunks_exact(dim)
        .enumerate()
        .filter(|&(j, _)| j != i)
        .map(|(j, r)| (j as u32, dot(x, r)))
        .collect();
    top_k(&mut cand, k);
    cand
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
