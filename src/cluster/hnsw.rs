//! An HNSW index (Malkov & Yashunin 2018) over unit vectors: approximate
//! nearest neighbours, and the cross-cluster near-duplicate pass that
//! per-cluster SemDeDup cannot see.
//!
//! Our own implementation of hnswlib's algorithm (the private `graph` module): levels from
//! a seeded stream, heuristic neighbour selection, M links per upper layer
//! and 2·M on layer 0. Similarity is the dot product, so rows must be
//! L2-normalised. Results are approximate (recall grows with `ef_search`);
//! the build is parallel and deterministic: the graph depends on the rows,
//! the params and the seed, never on the thread count.

mod graph;
mod kernel;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::distance::dot;
use crate::{Error, Result};
use graph::{BuildParams, Graph, ScratchPool};

/// Links per node and layer (HNSW's M).
pub const DEFAULT_M: usize = 16;
/// Candidate list size while building.
pub const DEFAULT_EF_CONSTRUCTION: usize = 200;
/// Candidate list size while searching.
pub const DEFAULT_EF_SEARCH: usize = 100;
/// Neighbours examined per row in [`Hnsw::cross_cluster_duplicates`].
pub const DEFAULT_NEIGHBORS: usize = 10;

/// Seed of the level draws.
pub const DEFAULT_SEED: u64 = 0;

/// Largest M accepted (link lists stay small; hnswlib advises 2..100).
const MAX_M: usize = 256;

/// Parameters of an HNSW index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswParams {
    /// Links per node; defaults to [`DEFAULT_M`] (at most 256).
    pub m: usize,
    /// Build-time candidates; defaults to [`DEFAULT_EF_CONSTRUCTION`].
    pub ef_construction: usize,
    /// Search-time candidates; defaults to [`DEFAULT_EF_SEARCH`].
    pub ef_search: usize,
    /// Neighbours per row for duplicate search; defaults to [`DEFAULT_NEIGHBORS`].
    pub neighbors: usize,
    /// Build on the current rayon pool (else on one thread); the graph is
    /// the same either way. On by default.
    pub parallel_build: bool,
    /// Seed of the random levels; defaults to [`DEFAULT_SEED`].
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: DEFAULT_M,
            ef_construction: DEFAULT_EF_CONSTRUCTION,
            ef_search: DEFAULT_EF_SEARCH,
            neighbors: DEFAULT_NEIGHBORS,
            parallel_build: true,
            seed: DEFAULT_SEED,
        }
    }
}

impl HnswParams {
    /// Sets `ef_search`.
    pub fn with_ef_search(mut self, ef: usize) -> Self {
        self.ef_search = ef;
        self
    }

    /// Sets the neighbours per row.
    pub fn with_neighbors(mut self, k: usize) -> Self {
        self.neighbors = k;
        self
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(2..=MAX_M).contains(&self.m) {
            return Err(Error::param("hnsw m", format!("{} is outside 2..={MAX_M}", self.m)));
        }
        if self.ef_construction == 0 || self.ef_search == 0 {
            return Err(Error::param(
                "hnsw ef",
                "ef_construction and ef_search must be at least 1",
            ));
        }
        if self.neighbors == 0 {
            return Err(Error::param("hnsw neighbors", "must be at least 1"));
        }
        Ok(())
    }
}

/// An HNSW index over some rows of a matrix; neighbours are reported by
/// row id (index into that matrix).
pub struct Hnsw {
    graph: Graph,
    dim: usize,
    /// Row id of each graph node (ascending).
    row_ids: Vec<u32>,
    indexed: Vec<bool>,
    params: HnswParams,
    scratch: ScratchPool,
}

impl std::fmt::Debug for Hnsw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hnsw")
            .field("dim", &self.dim)
            .field("rows", &self.graph.len())
            .field("params", &self.params)
            .finish()
    }
}

impl Hnsw {
    /// Indexes the rows of `rows` (`n × dim` unit vectors) whose `include`
    /// flag is set (the index copies them), in row order.
    pub fn build(rows: &[f32], dim: usize, include: &[bool], params: &HnswParams) -> Result<Self> {
        params.validate()?;
        let n = include.len();
        if dim == 0 || rows.len() != n * dim {
            return Err(Error::Shape {
                op: "hnsw build",
                expected: format!("{n} x {dim} rows"),
                got: format!("{} values", rows.len()),
            });
        }
        if n > u32::MAX as usize {
            return Err(Error::param("rows", format!("{n} rows: at most 2^32 - 1 per run")));
        }
        let row_ids: Vec<u32> = (0..n as u32).filter(|&i| include[i as usize]).collect();
        let bp = BuildParams {
            m: params.m,
            ef_construction: params.ef_construction,
            seed: params.seed,
        };
        let graph = if params.parallel_build {
            Graph::build(rows, dim, &row_ids, bp)
        } else {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .map_err(|e| Error::Internal(format!("hnsw: one-thread pool: {e}")))?
                .install(|| Graph::build(rows, dim, &row_ids, bp))
        };
        let scratch = ScratchPool::new(graph.len());
        Ok(Hnsw {
            graph,
            dim,
            row_ids,
            indexed: include.to_vec(),
            params: params.clone(),
            scratch,
        })
    }

    /// Number of indexed rows.
    pub fn len(&self) -> usize {
        self.graph.len()
    }

    /// Dimension of the indexed rows.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Whether no row is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` indexed rows most similar to `query` (a unit vector), as
    /// (row id, cosine), most similar first, ties to the lower row id.
    ///
    /// # Panics
    /// If `query` does not have the index's dimension.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<(u32, f32)> {
        assert_eq!(query.len(), self.dim, "hnsw search: query dimension");
        if k == 0 || self.is_empty() {
            return Vec::new();
        }
        let pd = self.graph.padded_dim();
        let padded;
        let q = if pd == self.dim {
            query
        } else {
            let mut v = vec![0f32; pd];
            v[..self.dim].copy_from_slice(query);
            padded = v;
            &padded[..]
        };
        let ef = self.params.ef_search.max(k);
        let mut out: Vec<(u32, f32)> = self
            .scratch
            .with(|sc| self.graph.query(q, k, ef, sc))
            .into_iter()
            .map(|(i, s)| (self.row_ids[i as usize], s.clamp(-1.0, 1.0)))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// kNN distance δ_k(i): the mean cosine distance (1 − cos) of every
    /// indexed row to its `k` nearest other indexed rows (fewer when fewer
    /// exist; NaN when none, or for rows not indexed). High = rare / hard;
    /// the very highest are often noise ([`crate::select::robust::cap_outliers`]).
    /// Queries run in parallel.
    ///
    /// `rows` must be the matrix the index was built from.
    pub fn knn_distance(&self, rows: &[f32], k: usize) -> Result<Vec<f32>> {
        let n = self.indexed.len();
        if rows.len() != n * self.dim {
            return Err(Error::Shape {
                op: "hnsw knn distance",
                expected: format!("{n} x {} rows", self.dim),
                got: format!("{} values", rows.len()),
            });
        }
        if k == 0 {
            return Err(Error::param("--knn", "must be at least 1"));
        }
        Ok((0..n)
            .into_par_iter()
            .map(|i| {
                if !self.indexed[i] {
                    return f32::NAN;
                }
                let x = &rows[i * self.dim..(i + 1) * self.dim];
                let nb: Vec<f32> = self
                    .search(x, k + 1)
                    .into_iter()
                    .filter(|&(j, _)| j as usize != i)
                    .take(k)
                    .map(|(_, s)| 1.0 - s)
                    .collect();
                if nb.is_empty() {
                    f32::NAN
                } else {
                    nb.iter().sum::<f32>() / nb.len() as f32
                }
            })
            .collect())
    }

    /// Cross-cluster near-duplicates among the indexed rows: row `i` is a
    /// duplicate of row `j` when, among its [`HnswParams::neighbors`]
    /// approximate nearest neighbours, `j` has a lower row id, another
    /// cluster (`labels`) and cos(i, j) > 1 − `eps` (SemDeDup's strict rule,
    /// first row wins, compared with every earlier row like the per-cluster
    /// pass). Returns the most similar such `j` per row (lower id on ties),
    /// `None` otherwise and for rows not indexed. Queries run in parallel.
    ///
    /// `rows` must be the matrix the index was built from.
    pub fn cross_cluster_duplicates(&self, rows: &[f32], labels: &[u32], eps: f64) -> Result<Vec<Option<u32>>> {
        if !(0.0..=1.0).contains(&eps) {
            return Err(Error::param("--dedup", format!("eps {eps} is outside [0, 1]")));
        }
        let n = self.indexed.len();
        if rows.len() != n * self.dim || labels.len() != n {
            return Err(Error::Shape {
                op: "hnsw cross-cluster duplicates",
                expected: format!("{n} x {} rows and {n} labels", self.dim),
                got: format!("{} values and {} labels", rows.len(), labels.len()),
            });
        }
        // 1 − eps rounded to f32 as SemDeDup does (`score::semdedup::similarity_threshold`).
        let threshold = (1.0 - eps) as f32;
        let k = self.params.neighbors;
        Ok((0..n)
            .into_par_iter()
            .map(|i| {
                if !self.indexed[i] {
                    return None;
                }
                let x = &rows[i * self.dim..(i + 1) * self.dim];
                self.search(x, k + 1)
                    .into_iter()
                    .filter(|&(j, _)| (j as usize) < i && labels[j as usize] != labels[i])
                    .map(|(j, _)| (j, dot(x, &rows[j as usize * self.dim..(j as usize + 1) * self.dim])))
                    .filter(|&(_, s)| s > threshold)
                    .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
                    .map(|(j, _)| j)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::normalize;
    use crate::rng::Rng;

    fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        let mut v: Vec<f32> = (0..n * dim).map(|_| r.normal() as f32).collect();
        v.chunks_exact_mut(dim).for_each(|x| {
            normalize(x);
        });
        v
    }

    #[test]
    fn finds_itself_and_exact_neighbours() {
        let (n, dim) = (300, 16);
        let rows = unit_rows(n, dim, 1);
        let h = Hnsw::build(&rows, dim, &vec![true; n], &HnswParams::default()).unwrap();
        assert_eq!(h.len(), n);
        for i in [0usize, 17, 299] {
            let res = h.search(&rows[i * dim..(i + 1) * dim], 5);
            assert_eq!(res[0].0 as usize, i);
            assert!((res[0].1 - 1.0).abs() < 1e-5);
            // the true nearest other row (brute force) is found on this small set
            let best = (0..n)
                .filter(|&j| j != i)
                .map(|j| (j, dot(&rows[i * dim..][..dim], &rows[j * dim..][..dim])))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            assert_eq!(res[1].0 as usize, best.0);
        }
    }

    #[test]
    fn cross_cluster_duplicates_by_hand() {
        let (n, dim) = (200, 12);
        let mut rows = unit_rows(n, dim, 2);
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 4).collect();
        // Row 151 nearly copies row 10 (other cluster); row 120 copies row 40 (same cluster: not
        // reported here); row 11 copies row 5 (other cluster) exactly.
        let copy = |rows: &mut Vec<f32>, src: usize, dst: usize, jitter: f32| {
            for d in 0..dim {
                rows[dst * dim + d] = rows[src * dim + d] + if d == 0 { jitter } else { 0.0 };
            }
            normalize(&mut rows[dst * dim..(dst + 1) * dim]);
        };
        copy(&mut rows, 10, 151, 0.01);
        copy(&mut rows, 40, 120, 0.0);
        copy(&mut rows, 5, 11, 0.0);
        let mut include = vec![true; n];
        include[77] = false;
        let h = Hnsw::build(&rows, dim, &include, &HnswParams::default()).unwrap();
        let d = h.cross_cluster_duplicates(&rows, &labels, 0.01).unwrap();
        assert_eq!(d[151], Some(10));
        assert_eq!(d[11], Some(5));
        assert_eq!(d[10], None, "the earlier row survives");
        assert_eq!(d[120], None, "same cluster: SemDeDup's job");
        assert_eq!(d.iter().filter(|x| x.is_some()).count(), 2);
        assert_eq!(d[77], None);
        // serial builds are deterministic
        let h2 = Hnsw::build(&rows, dim, &include, &HnswParams::default()).unwrap();
        assert_eq!(h2.cross_cluster_duplicates(&rows, &labels, 0.01).unwrap(), d);
        assert!(h.cross_cluster_duplicates(&rows, &labels[1..], 0.01).is_err());
        assert!(h.cross_cluster_duplicates(&rows, &labels, 2.0).is_err());
    }

    #[test]
    fn knn_distance_ranks_an_isolated_row_highest() {
        // A tight bundle around e0 plus one row far from it.
        let dim = 8;
        let mut rows = Vec::new();
        let mut r = Rng::new(3);
        for _ in 0..30 {
            let mut v: Vec<f32> = (0..dim)
                .map(|d| if d == 0 { 1.0 } else { 0.05 * r.normal() as f32 })
                .collect();
            normalize(&mut v);
            rows.extend(v);
        }
        let mut far = vec![0.0; dim];
        far[1] = 1.0;
        rows.extend(far);
        let include = vec![true; 31];
        let h = Hnsw::build(&rows, dim, &include, &HnswParams::default()).unwrap();
        let d = h.knn_distance(&rows, 5).unwrap();
        let top = (0..31).max_by(|&a, &b| d[a].total_cmp(&d[b])).unwrap();
        assert_eq!(top, 30);
        assert!(d.iter().all(|v| v.is_finite() && *v >= 0.0));
        assert!(h.knn_distance(&rows, 0).is_err());
        let single = Hnsw::build(&rows[..dim], dim, &[true], &HnswParams::default()).unwrap();
        assert!(single.knn_distance(&rows[..dim], 3).unwrap()[0].is_nan());
    }

    /// `n` unit rows around `c` random centres (cosine to the centre ≈ 0.7).
    fn clustered_rows(n: usize, dim: usize, c: usize, seed: u64) -> Vec<f32> {
        let centres = unit_rows(c, dim, seed);
        let mut r = Rng::new(seed + 1);
        let mut v = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let j = r.below(c as u64) as usize;
            let mut x: Vec<f32> = (0..dim)
                .map(|d| centres[j * dim + d] + r.normal() as f32 / (dim as f32).sqrt())
                .collect();
            normalize(&mut x);
            v.extend(x);
        }
        v
    }

    #[test]
    fn recall_at_10_against_exact_search() {
        // 40-d rows whose true neighbours are hard to tell apart: a graph
        // without reverse links or with random links falls far below this.
        let (n, dim, k) = (4000, 40, 10);
        let rows = clustered_rows(n, dim, 40, 11);
        let h = Hnsw::build(&rows, dim, &vec![true; n], &HnswParams::default()).unwrap();
        let exact = crate::cluster::knn::exact_knn(&rows, dim, k).unwrap();
        let mut hits = 0;
        let queries: Vec<usize> = (0..n).step_by(7).collect();
        for &i in &queries {
            let truth = exact.neighbors(i);
            let got: Vec<u32> = h
                .search(&rows[i * dim..(i + 1) * dim], k + 1)
                .into_iter()
                .map(|(j, _)| j)
                .filter(|&j| j as usize != i)
                .collect();
            hits += truth.iter().filter(|j| got.contains(j)).count();
        }
        let recall = hits as f64 / (queries.len() * k) as f64;
        assert!(recall >= 0.97, "recall@10 {recall}");
        // A small ef_construction and M still work, with lower recall.
        let weak = HnswParams {
            m: 2,
            ef_construction: 4,
            ef_search: 10,
            ..HnswParams::default()
        };
        let hw = Hnsw::build(&rows, dim, &vec![true; n], &weak).unwrap();
        assert_eq!(hw.len(), n);
        assert_eq!(hw.search(&rows[..dim], 1)[0].0, 0);
    }

    #[test]
    fn graph_does_not_depend_on_the_thread_count() {
        // Enough rows for batches of many nodes (the parallel path).
        let (n, dim) = (6000, 24);
        let rows = clustered_rows(n, dim, 30, 12);
        let mut include = vec![true; n];
        include[5] = false;
        include[4000] = false;
        let build = |threads: usize, parallel: bool| {
            let p = HnswParams {
                parallel_build: parallel,
                ..HnswParams::default()
            };
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| Hnsw::build(&rows, dim, &include, &p).unwrap())
        };
        let one = build(1, true);
        let two = build(2, true);
        let serial = build(2, false);
        assert!(one.graph.fingerprint() == two.graph.fingerprint());
        assert!(one.graph.fingerprint() == serial.graph.fingerprint());
        for i in (0..n).step_by(97) {
            let q = &rows[i * dim..(i + 1) * dim];
            assert_eq!(one.search(q, 10), two.search(q, 10));
        }
        let d1 = one.knn_distance(&rows, 5).unwrap();
        let d2 = two.knn_distance(&rows, 5).unwrap();
        assert_eq!(
            d1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            d2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(d1[5].is_nan() && d1[4000].is_nan());
        // Another seed gives another graph.
        let other = Hnsw::build(
            &rows,
            dim,
            &include,
            &HnswParams {
                seed: 1,
                ..HnswParams::default()
            },
        )
        .unwrap();
        assert!(other.graph.fingerprint() != one.graph.fingerprint());
    }

    #[test]
    fn unpadded_dimensions_search_correctly() {
        // 7-d rows are padded to 16 inside the index; queries must be too.
        let (n, dim) = (500, 7);
        let rows = unit_rows(n, dim, 13);
        let h = Hnsw::build(&rows, dim, &vec![true; n], &HnswParams::default()).unwrap();
        let exact = crate::cluster::knn::exact_knn(&rows, dim, 1).unwrap();
        for i in [0usize, 250, 499] {
            let res = h.search(&rows[i * dim..(i + 1) * dim], 4);
            assert_eq!(res[0].0 as usize, i);
            assert_eq!(res[1].0, exact.neighbors(i)[0]);
            assert!(res.windows(2).all(|w| w[0].1 >= w[1].1));
        }
    }

    #[test]
    fn params_are_checked() {
        let p = HnswParams {
            m: 300,
            ..HnswParams::default()
        };
        assert!(p.validate().is_err());
        assert!(HnswParams::default().with_neighbors(0).validate().is_err());
        assert!(HnswParams::default().with_ef_search(0).validate().is_err());
        assert!(Hnsw::build(&[1.0, 0.0], 2, &[true, true], &HnswParams::default()).is_err());
        let empty = Hnsw::build(&[], 2, &[], &HnswParams::default()).unwrap();
        assert!(empty.is_empty() && empty.search(&[1.0, 0.0], 3).is_empty());
    }
}
