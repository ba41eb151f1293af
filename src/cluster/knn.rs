//! k-nearest-neighbour graphs by cosine similarity: exact (blocked matrix
//! products) or approximate ([`Hnsw`]), for selective annotation.
//!
//! Row `i`'s list holds the `k` rows most similar to it, most similar first,
//! never `i` itself (excluded by index, so duplicate rows still count as
//! neighbours); ties go to the lower row id. Rows must be unit vectors: see
//! [`prepare`] for the optional mean-centering that both reference
//! implementations apply first. An HNSW graph reports its recall@k against
//! exact search on a seeded sample of rows.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::{Hnsw, HnswParams};
use crate::distance::normalize;
use crate::rng::Rng;
use crate::{Error, Result};

/// Pools with more rows than this use HNSW when the backend is [`KnnBackend::Auto`].
pub const DEFAULT_HNSW_THRESHOLD: usize = 50_000;
/// Rows whose HNSW neighbours are compared with exact search.
pub const DEFAULT_RECALL_SAMPLE: usize = 1_000;

mod exact;

pub use exact::exact_knn;
use exact::exact_row;
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
mod tests;
