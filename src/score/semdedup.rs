//! Semantic de-duplication (SemDeDup, Abbas et al. 2023) and exact
//! duplicates.
//!
//! * Inside each k-means cluster, members are ranked ([`DedupKeep`]), and
//!   every member gets M = its largest cosine with an earlier-ranked member
//!   of the same cluster, floored at 0 (the reference's `triu(S, 1).max(0)`),
//!   and `dup_of` = that member's row id. A row is a duplicate at `eps` when
//!   M > 1 − eps ([`is_duplicate`]). M does not depend on eps, so one pass
//!   serves any eps ([`eps_curve`]) and an exact budget ([`keep_least_redundant`]).
//! * Similarities are computed in square tiles of [`DEFAULT_BLOCK_ROWS`]
//!   rows as matrix products ([`crate::distance::dot_batch`]); a cluster of
//!   n rows never needs more than a tile of scratch per thread, not n².
//!   Diagonal tiles compute only their upper triangle, in bands of rows; with
//!   AVX-512 BF16, every tile runs in bf16 with f32 only for the pairs that
//!   can still be a maximum (`certified`). The results are bit-identical to
//!   one full f32 product.
//! * [`ExactDuplicates`] finds rows with bit-identical embeddings (or keys)
//!   by a 128-bit hash, first row wins: the cheap pass to run first.
//!
//! This module scores; it does not read files or spill clusters to disk.
//!
//! ```
//! use dprune::score::semdedup::{Assignment, SemDedupParams, dedup_clusters, eps_curve, kept_at_eps};
//!
//! // Three unit rows in one cluster; row 2 is a near copy of row 0.
//! let rows = [1.0, 0.0, 0.0, 1.0, 0.999, 0.0447];
//! let (labels, dist, eligible) = ([0u32, 0, 0], [0.3f32, 0.2, 0.1], [true; 3]);
//! let assign = Assignment::try_new(&labels, &dist, &eligible, 1)?;
//! let s = dedup_clusters(&rows, 2, &assign, &SemDedupParams::default())?;
//! assert_eq!(s.dup_of, vec![None, None, Some(0)]); // row 0 ranks first (farthest)
//! assert_eq!(kept_at_eps(&s.max_sim, &eligible, 0.01)?, vec![true, true, false]);
//! assert_eq!(eps_curve(&s.max_sim, &eligible, &[0.0001, 0.01])?[1].kept, 2);
//! # Ok::<(), dprune::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::distance::dot_batch;
use crate::distance::kernel_pair_dots;
use crate::rng::mix64;
use crate::{Error, Result};
#[cfg(test)]
use certified::{Bf16Block, CertScratch, RowSet, absorb_certified, diagonal_certified, row_norms};
#[cfg(test)]
use tiles::{DIAGONAL_BAND_ROWS, max_sim_ranked_with};
use tiles::{TileMax, max_sim_ranked};

/// Rows per tile of the within-cluster similarity product: a tile of
/// scratch is `DEFAULT_BLOCK_ROWS²` floats (4 MiB) plus two row blocks.
pub const DEFAULT_BLOCK_ROWS: usize = 1024;

/// Which member of a group of near-duplicates survives: the ranking inside
/// a cluster. The first-ranked member of every group is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupKeep {
    /// Farthest from the centroid first (least prototypical survives): the
    /// SemDeDup default (`which_to_keep: hard`).
    #[default]
    Hard,
    /// Closest to the centroid first (most prototypical survives).
    Easy,
    /// A seeded random order (a pure function of seed and row id).
    Random {
        /// Seed of the order.
        seed: u64,
    },
}

impl DedupKeep {
    /// The same choice with `seed` if it is [`DedupKeep::Random`].
    pub fn with_seed(self, seed: u64) -> Self {
        match self {
            DedupKeep::Random { .. } => DedupKeep::Random { seed },
            other => other,
        }
    }
}

impl fmt::Display for DedupKeep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DedupKeep::Hard => "hard",
            DedupKeep::Easy => "easy",
            DedupKeep::Random { .. } => "random",
        })
    }
}

impl FromStr for DedupKeep {
    type Err = Error;
    /// `hard`, `easy` or `random` (seed 0; set it with [`DedupKeep::with_seed`]).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "hard" => Ok(DedupKeep::Hard),
            "easy" => Ok(DedupKeep::Easy),
            "random" => Ok(DedupKeep::Random { seed: 0 }),
            _ => Err(Error::param(
                "--dedup-keep",
                format!("`{s}`: expected hard, easy or random"),
            )),
        }
    }
}

/// Parameters of the within-cluster pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SemDedupParams {
    /// The ranking inside a cluster; defaults to [`DedupKeep::Hard`].
    pub keep: DedupKeep,
    /// Rows per similarity tile; defaults to [`DEFAULT_BLOCK_ROWS`]. Results
    /// do not depend on it beyond float rounding of the matrix product.
    pub block_rows: usize,
}

impl Default for SemDedupParams {
    fn default() -> Self {
        SemDedupParams {
            keep: DedupKeep::default(),
            block_rows: DEFAULT_BLOCK_ROWS,
        }
    }
}

impl SemDedupParams {
    /// Sets the ranking.
    pub fn with_keep(mut self, keep: DedupKeep) -> Self {
        self.keep = keep;
        self
    }

    /// Sets the tile size.
    pub fn with_block_rows(mut self, block_rows: usize) -> Self {
        self.block_rows = block_rows;
        self
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if self.block_rows == 0 {
            return Err(Error::param("block_rows", "must be at least 1"));
        }
        Ok(())
    }
}

/// Rows with their cluster: `labels[i]` in `0..k`, `dist[i]` the cosine
/// distance of row `i` to its (normalised) centroid, and `eligible[i]`
/// false for rows to leave out (invalid, removed by an earlier stage).
/// Row ids are the indices into these slices.
#[derive(Debug, Clone, Copy)]
pub struct Assignment<'a> {
    labels: &'a [u32],
    dist: &'a [f32],
    eligible: &'a [bool],
    k: usize,
}

impl<'a> Assignment<'a> {
    /// Checks that the three slices have one entry per row and every
    /// eligible label is below `k`.
    pub fn try_new(labels: &'a [u32], dist: &'a [f32], eligible: &'a [bool], k: usize) -> Result<Self> {
        if dist.len() != labels.len() || eligible.len() != labels.len() {
            return Err(Error::Shape {
                op: "cluster assignment",
                expected: format!("{} labels, distances and eligibility flags", labels.len()),
                got: format!("{} distances, {} flags", dist.len(), eligible.len()),
            });
        }
        if labels.len() > u32::MAX as usize {
            return Err(Error::param(
                "rows",
                format!("{} rows: at most 2^32 - 1 per run", labels.len()),
            ));
        }
        if let Some(i) = (0..labels.len()).find(|&i| eligible[i] && labels[i] as usize >= k) {
            return Err(Error::param(
                "labels",
                format!("row {i} has cluster {} but there are only {k} clusters", labels[i]),
            ));
        }
        Ok(Assignment {
            labels,
            dist,
            eligible,
            k,
        })
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.labels.len()
    }

    /// Number of clusters.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Cluster of every row.
    pub fn labels(&self) -> &'a [u32] {
        self.labels
    }

    /// Cosine distance of every row to its centroid.
    pub fn dist(&self) -> &'a [f32] {
        self.dist
    }

    /// Which rows take part.
    pub fn eligible(&self) -> &'a [bool] {
        self.eligible
    }

    /// Eligible rows per cluster.
    pub fn sizes(&self) -> Vec<u64> {
        let mut s = vec![0u64; self.k];
        for (&l, &e) in self.labels.iter().zip(self.eligible) {
            if e {
                s[l as usize] += 1;
            }
        }
        s
    }

    /// Eligible row ids of every cluster, ascending.
    pub fn members(&self) -> Vec<Vec<u32>> {
        let sizes = self.sizes();
        let mut m: Vec<Vec<u32>> = sizes.iter().map(|&s| Vec::with_capacity(s as usize)).collect();
        for (i, (&l, &e)) in self.labels.iter().zip(self.eligible).enumerate() {
            if e {
                m[l as usize].push(i as u32);
            }
        }
        m
    }
}

/// One cluster's members: `rows` (`n × dim` unit vectors, row-major), their
/// global `row_ids` and their `dist`ance to the cluster's normalised centroid.
#[derive(Debug, Clone, Copy)]
pub struct ClusterMembers<'a> {
    rows: &'a [f32],
    dim: usize,
    row_ids: &'a [u32],
    dist: &'a [f32],
}

impl<'a> ClusterMembers<'a> {
    /// Checks the shapes.
    pub fn try_new(rows: &'a [f32], dim: usize, row_ids: &'a [u32], dist: &'a [f32]) -> Result<Self> {
        let n = row_ids.len();
        if dim == 0 || rows.len() != n * dim || dist.len() != n {
            return Err(Error::Shape {
                op: "cluster members",
                expected: format!("{n} x {dim} rows and {n} distances"),
                got: format!("{} values and {} distances", rows.len(), dist.len()),
            });
        }
        Ok(ClusterMembers {
            rows,
            dim,
            row_ids,
            dist,
        })
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.row_ids.len()
    }

    /// Whether the cluster is empty.
    pub fn is_empty(&self) -> bool {
        self.row_ids.is_empty()
    }
}

/// The result for one cluster, in the order of the members given.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterDedup {
    /// M: the largest cosine with an earlier-ranked member, floored at 0;
    /// 0 for the first-ranked member.
    pub max_sim: Vec<f32>,
    /// The row id of the earlier-ranked member reaching M (the earliest
    /// ranked one on ties); `None` for the first-ranked member and when no
    /// earlier member has a positive cosine.
    pub dup_of: Vec<Option<u32>>,
    /// Position of every member in the ranking (0 = kept first).
    pub rank: Vec<u32>,
}

/// M and `dup_of` of every row of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DedupScores {
    /// M per row (see [`ClusterDedup::max_sim`]); NaN for rows that are not
    /// eligible.
    pub max_sim: Vec<f32>,
    /// `dup_of` per row (see [`ClusterDedup::dup_of`]); `None` for rows that
    /// are not eligible.
    pub dup_of: Vec<Option<u32>>,
}

impl DedupScores {
    /// Records the exact-duplicate pass (`exact[i] = Some(first)`, from
    /// [`ExactDuplicates`]): such rows get M = 1 and `dup_of = first`, so
    /// one pair of columns explains both stages.
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn mark_exact(&mut self, exact: &[Option<u32>]) {
        assert_eq!(exact.len(), self.max_sim.len(), "mark_exact: lengths differ");
        for (i, e) in exact.iter().enumerate() {
            if let Some(first) = *e {
                self.max_sim[i] = 1.0;
                self.dup_of[i] = Some(first);
            }
        }
    }
}

/// Cosine distance 1 − cos(x, ĉ) of unit rows to `centroid`, which is
/// normalised first (an unnormalised centroid gives the same distances).
///
/// # Panics
/// If `rows` is not a multiple of `centroid.len()`.
pub fn dist_to_centroid(rows: &[f32], centroid: &[f32]) -> Vec<f32> {
    let dim = centroid.len();
    assert!(
        dim > 0 && rows.len().is_multiple_of(dim),
        "dist_to_centroid: rows not n x dim"
    );
    let pos: Vec<u32> = (0..(rows.len() / dim) as u32).collect();
    dist_at(rows, &pos, centroid)
}

/// [`dist_to_centroid`] of the rows `pos` of `rows` (`centroid.len()` columns), in that
/// order: the kernel's own chain per row ([`kernel_pair_dots`]), the same bits as a
/// [`dot_batch`] of the rows, without packing them.
fn dist_at(rows: &[f32], pos: &[u32], centroid: &[f32]) -> Vec<f32> {
    let mut c = centroid.to_vec();
    crate::distance::normalize(&mut c);
    let pairs: Vec<(u32, u32)> = pos.iter().map(|&p| (p, 0)).collect();
    let mut out = vec![0f32; pos.len()];
    kernel_pair_dots(rows, &c, c.len(), &pairs, &mut out);
    out.iter_mut().for_each(|d| *d = 1.0 - *d);
    out
}

/// The ranking of one cluster's members: local positions (into `row_ids`
/// and `dist`), first-kept first. [`DedupKeep::Hard`]: `dist` descending,
/// [`DedupKeep::Easy`]: ascending, [`DedupKeep::Random`]: a seeded hash of
/// the row id; ties always go to the lower row id.
///
/// The reference (`semdedup.py`) makes `easy` the reverse of `hard`, so its
/// ties go to the higher row id there; dprune keeps the lower one in every
/// mode. `hard` matches the reference exactly (a stable sort of rows in
/// dataset order).
///
/// # Panics
/// If the lengths differ.
pub fn rank_members(row_ids: &[u32], dist: &[f32], keep: DedupKeep) -> Vec<u32> {
    assert_eq!(row_ids.len(), dist.len(), "rank_members: lengths differ");
    let mut order: Vec<u32> = (0..row_ids.len() as u32).collect();
    let id = |p: u32| row_ids[p as usize];
    let d = |p: u32| dist[p as usize];
    match keep {
        DedupKeep::Hard => order.sort_unstable_by(|&a, &b| d(b).total_cmp(&d(a)).then(id(a).cmp(&id(b)))),
        DedupKeep::Easy => order.sort_unstable_by(|&a, &b| d(a).total_cmp(&d(b)).then(id(a).cmp(&id(b)))),
        DedupKeep::Random { seed } => {
            let key = |p: u32| mix64(mix64(seed ^ 0x5EED_DED0_0000_0001).wrapping_add(id(p) as u64));
            order.sort_unstable_by(|&a, &b| key(a).cmp(&key(b)).then(id(a).cmp(&id(b))));
        }
    }
    order
}

/// SemDeDup inside one cluster: ranks the members and computes M and
/// `dup_of` for each (see [`ClusterDedup`]). Parallel over column blocks
/// for clusters larger than a block.
pub fn dedup_cluster(members: &ClusterMembers, params: &SemDedupParams) -> Result<ClusterDedup> {
    let pos: Vec<u32> = (0..members.len() as u32).collect();
    dedup_ranked(members.rows, members.dim, &pos, members.row_ids, members.dist, params)
}

/// [`dedup_cluster`] of one cluster whose rows are the rows `pos` of a larger buffer `rows`
/// (`dim` columns; `row_ids` and their cosine distance to the cluster's centroid in the
/// same order), without copying them out: what the spilled pass runs on each partition.
///
/// # Errors
/// A shape error when `pos`, `row_ids` and `centroid` do not fit `rows`.
pub fn dedup_cluster_at(
    rows: &[f32],
    dim: usize,
    pos: &[u32],
    row_ids: &[u32],
    centroid: &[f32],
    params: &SemDedupParams,
) -> Result<ClusterDedup> {
    let n = rows.len() / dim.max(1);
    if dim == 0
        || rows.len() != n * dim
        || centroid.len() != dim
        || row_ids.len() != pos.len()
        || pos.iter().any(|&p| p as usize >= n)
    {
        return Err(Error::Shape {
            op: "cluster members",
            expected: format!("{} positions into {n} x {dim} rows, a {dim}-d centroid", row_ids.len()),
            got: format!("{} positions, a {}-d centroid", pos.len(), centroid.len()),
        });
    }
    let dist = dist_at(rows, pos, centroid);
    dedup_ranked(rows, dim, pos, row_ids, &dist, params)
}

fn dedup_ranked(
    rows: &[f32],
    dim: usize,
    pos: &[u32],
    row_ids: &[u32],
    dist: &[f32],
    params: &SemDedupParams,
) -> Result<ClusterDedup> {
    params.validate()?;
    let n = pos.len();
    let order = rank_members(row_ids, dist, params.keep);
    let ranked: Vec<u32> = order.iter().map(|&p| pos[p as usize]).collect();
    let (best, arg) = max_sim_ranked(rows, dim, &ranked, params.block_rows);
    let mut out = ClusterDedup {
        max_sim: vec![0.0; n],
        dup_of: vec![None; n],
        rank: vec![0; n],
    };
    for (r, &p) in order.iter().enumerate() {
        let p = p as usize;
        let (m, d) = finish(best[r], arg[r]);
        out.max_sim[p] = m;
        out.dup_of[p] = d.map(|q| row_ids[order[q as usize] as usize]);
        out.rank[p] = r as u32;
    }
    Ok(out)
}

/// SemDeDup over every cluster of an in-memory dataset: `rows` (`N × dim`
/// unit vectors) with their [`Assignment`]. Parallel over clusters and,
/// inside large clusters, over column blocks; no cluster is copied.
pub fn dedup_clusters(rows: &[f32], dim: usize, assign: &Assignment, params: &SemDedupParams) -> Result<DedupScores> {
    params.validate()?;
    let n = assign.n_rows();
    if dim == 0 || rows.len() != n * dim {
        return Err(Error::Shape {
            op: "semdedup",
            expected: format!("{n} x {dim} rows"),
            got: format!("{} values", rows.len()),
        });
    }
    let members = assign.members();
    // Largest clusters first, so the long tasks start early.
    let mut by_size: Vec<usize> = (0..members.len()).collect();
    by_size.sort_unstable_by(|&a, &b| members[b].len().cmp(&members[a].len()).then(a.cmp(&b)));
    let per_cluster: Vec<RankedCluster> = by_size
        .par_iter()
        .map(|&c| {
            let ids = &members[c];
            let dist: Vec<f32> = ids.iter().map(|&i| assign.dist[i as usize]).collect();
            let order = rank_members(ids, &dist, params.keep);
            // Global row ids in rank order index straight into `rows`.
            let ranked: Vec<u32> = order.iter().map(|&p| ids[p as usize]).collect();
            let (best, arg) = max_sim_ranked(rows, dim, &ranked, params.block_rows);
            let mut m = Vec::with_capacity(ranked.len());
            let mut d = Vec::with_capacity(ranked.len());
            for (&b, &a) in best.iter().zip(&arg) {
                let (mm, dd) = finish(b, a);
                m.push(mm);
                d.push(dd.map(|q| ranked[q as usize]));
            }
            RankedCluster { ranked, m, d }
        })
        .collect();
    let mut out = DedupScores {
        max_sim: vec![f32::NAN; n],
        dup_of: vec![None; n],
    };
    for RankedCluster { ranked, m, d } in per_cluster {
        for ((&i, mm), dd) in ranked.iter().zip(m).zip(d) {
            out.max_sim[i as usize] = mm;
            out.dup_of[i as usize] = dd;
        }
    }
    Ok(out)
}

/// M and the arg-max (rank position) from a best cosine; the reference
/// floors M at 0 (`triu` leaves zeros).
#[inline]
fn finish(best: f32, arg: u32) -> (f32, Option<u32>) {
    if best > 0.0 { (best, Some(arg)) } else { (0.0, None) }
}

/// One cluster's result in [`dedup_clusters`]: global row ids in rank
/// order, with M and `dup_of` in the same order.
struct RankedCluster {
    ranked: Vec<u32>,
    m: Vec<f32>,
    d: Vec<Option<u32>>,
}

mod certified;
mod exact;
mod threshold;
mod tiles;

pub use exact::*;
pub use threshold::*;

#[cfg(test)]
mod tests;
