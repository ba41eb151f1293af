//! The stages that remove rows before the final budget, in the order of
//! `data_pruning.md` §9 (issue 3, "Composition"):
//!
//! 1. **exact duplicates** — bit-identical embeddings, or identical values
//!    of a key column; the first row (lowest row id) survives;
//! 2. **SemDeDup** (Abbas et al. 2023) — within each k-means cluster, rows
//!    with M > 1 − eps are removed (M: the largest cosine with an
//!    earlier-ranked member); optionally a cross-cluster pass over an HNSW
//!    index (`global`). Clusters are grouped on disk ([`crate::pipeline::spill`]),
//!    so memory holds one partition, not the dataset;
//! 3. **quality** — drop the lowest `drop_below_percentile` % of a score
//!    column (e.g. a CLIP score) among the rows left; null or NaN values
//!    are dropped too.
//!
//! Each stage narrows an eligibility mask; [`StageReport`] records the
//! counts after every stage.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::hnsw::HnswParams;
use crate::cluster::{Centroids, Distance};
use crate::pipeline::spill::{SpilledClusters, for_each_prefetched};
use crate::score::knn::knn_distance;
use crate::score::semdedup::{
    ClusterDedup, DedupKeep, DedupScores, EpsPoint, PairwiseCost, SemDedupParams, dedup_cluster_at, validate_eps,
};
use crate::select::{Keep, floor_fraction, select_top};
use crate::{Error, Result};

mod cross;
pub use cross::{
    Pruning, boundary, global_duplicates, near_boundary, second_cluster_duplicates, semdedup_second_cluster,
};

/// The eps values of the report's EPS → kept curve.
pub const EPS_CURVE: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3];
/// Estimated within-cluster work (Σ n_c² · dim multiply-adds) above which
/// the report warns that k is too small for N.
pub const PAIRWISE_WARN_FLOPS: f64 = 2e12;

/// Which member of a near-duplicate group survives (SemDeDup's ranking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupRank {
    /// Farthest from the centroid first (the SemDeDup default).
    #[default]
    Hard,
    /// Closest to the centroid first.
    Easy,
    /// Seeded random order (`seed` of the run).
    Random,
}

impl DedupRank {
    /// The library ranking with the run's seed.
    pub fn to_keep(self, seed: u64) -> DedupKeep {
        match self {
            DedupRank::Hard => DedupKeep::Hard,
            DedupRank::Easy => DedupKeep::Easy,
            DedupRank::Random => DedupKeep::Random { seed },
        }
    }
}

impl fmt::Display for DedupRank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DedupRank::Hard => "hard",
            DedupRank::Easy => "easy",
            DedupRank::Random => "random",
        })
    }
}

impl FromStr for DedupRank {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "hard" => Ok(DedupRank::Hard),
            "easy" => Ok(DedupRank::Easy),
            "random" => Ok(DedupRank::Random),
            _ => Err(Error::param(
                "--dedup-keep",
                format!("`{s}`: expected hard, easy or random"),
            )),
        }
    }
}

/// SemDeDup settings: used by the threshold stage (`eps`) and by
/// `metric = "semdedup"`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupParams {
    /// Remove rows with M > 1 − eps (the stage is off when `None`).
    pub eps: Option<f64>,
    /// Ranking inside a cluster.
    pub keep: DedupRank,
    /// Also remove near-duplicates split across clusters.
    pub global: GlobalPass,
    /// The HNSW index of the global pass.
    pub hnsw: HnswParams,
}

impl DedupParams {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if let Some(eps) = self.eps {
            validate_eps(eps)?;
        } else if self.global != GlobalPass::Off {
            return Err(Error::param("--dedup-global", "needs a threshold: --dedup EPS"));
        }
        self.hnsw.validate()
    }
}

/// `metric = "knn"`: kNN density within clusters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnnParams {
    /// Neighbours averaged; defaults to [`crate::score::knn::DEFAULT_KNN`].
    pub neighbors: usize,
    /// With keep-hard, first exclude this fraction of the most isolated
    /// rows (likely noise); defaults to
    /// [`crate::select::robust::DEFAULT_OUTLIER_CAP`].
    pub outlier_cap: f64,
}

impl Default for KnnParams {
    fn default() -> Self {
        KnnParams {
            neighbors: crate::score::knn::DEFAULT_KNN,
            outlier_cap: crate::select::robust::DEFAULT_OUTLIER_CAP,
        }
    }
}

impl KnnParams {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if self.neighbors == 0 {
            return Err(Error::param("--knn", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.outlier_cap) {
            return Err(Error::param(
                "--outlier-cap",
                format!("{} is outside [0, 1)", self.outlier_cap),
            ));
        }
        Ok(())
    }
}

/// The cross-cluster pass of SemDeDup. In both, a row goes when a row of
/// lower id in another cluster, also left by the within-cluster pass, has
/// cosine > 1 − eps with it (SemDeDup's rule, first row wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlobalPass {
    /// Within clusters only.
    #[default]
    Off,
    /// Every row near the boundary to its second-nearest cluster is also
    /// compared with that cluster's rows (exact, blocked matrix products in the
    /// same sweep over the spill as the within-cluster pass; neighbouring
    /// clusters share a partition, so few rows are spilled twice): finds pairs
    /// split by one cluster boundary, which is where near-duplicates split;
    /// bounded memory, deterministic.
    SecondCluster,
    /// An HNSW index ([`Hnsw`](crate::cluster::hnsw::Hnsw)) over all rows left: finds pairs anywhere,
    /// but holds the rows in memory (approximate; the build is parallel and
    /// deterministic).
    Hnsw,
}

impl FromStr for GlobalPass {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(GlobalPass::Off),
            "second-cluster" | "second_cluster" => Ok(GlobalPass::SecondCluster),
            "hnsw" => Ok(GlobalPass::Hnsw),
            _ => Err(Error::param(
                "--dedup-global",
                format!("`{s}`: expected second-cluster, hnsw or off"),
            )),
        }
    }
}

/// The quality stage: a percentile rule on a numeric column.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QualityParams {
    /// The column (higher = better).
    pub column: String,
    /// Drop this percentage of the rows left, lowest values first, in [0, 100).
    pub drop_below_percentile: f64,
}

impl QualityParams {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if self.column.is_empty() {
            return Err(Error::param("--quality-col", "no column given"));
        }
        if !(0.0..100.0).contains(&self.drop_below_percentile) {
            return Err(Error::param(
                "--quality-drop",
                format!("{} is outside [0, 100)", self.drop_below_percentile),
            ));
        }
        Ok(())
    }
}

/// What `--keep F` is a fraction of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepOf {
    /// The usable input rows.
    #[default]
    Input,
    /// The rows left after the removal stages.
    Stage,
}

impl FromStr for KeepOf {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "input" => Ok(KeepOf::Input),
            "stage" => Ok(KeepOf::Stage),
            _ => Err(Error::param("--keep-of", format!("`{s}`: expected input or stage"))),
        }
    }
}

/// Counts around one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// `exact_dedup`, `semdedup`, `semdedup_global`, `quality` or the final metric.
    pub name: String,
    /// Rows entering the stage.
    pub rows_in: u64,
    /// Rows removed.
    pub removed: u64,
    /// Rows left.
    pub rows_out: u64,
}

/// What the SemDeDup pass found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SemDedupReport {
    /// The threshold, when the stage ran.
    pub eps: Option<f64>,
    /// The ranking.
    pub keep: String,
    /// Spill partitions and bytes.
    pub partitions: usize,
    /// Bytes spilled.
    pub spill_bytes: u64,
    /// Largest cluster (rows) and Σ n_c² of the pairwise pass.
    pub largest_cluster: u64,
    /// Σ n_c² over clusters.
    pub pairs: f64,
    /// Quantiles of M over the rows scored.
    pub max_sim_quantiles: Vec<(f64, f32)>,
    /// Kept rows at each eps of [`EPS_CURVE`] (and the run's eps).
    pub eps_curve: Vec<EpsPoint>,
    /// Rows removed within clusters.
    pub removed_within: u64,
    /// Rows removed by the cross-cluster pass.
    pub removed_global: u64,
    /// Rows the second-cluster pass compared with their second cluster
    /// (the others are provably too far from its boundary); 0 without it.
    #[serde(default)]
    pub global_candidates: u64,
}

/// Removes `dup` rows from `eligible`; returns how many were removed.
pub fn remove(eligible: &mut [bool], dup: impl Fn(usize) -> bool) -> u64 {
    let mut n = 0;
    for (i, e) in eligible.iter_mut().enumerate() {
        if *e && dup(i) {
            *e = false;
            n += 1;
        }
    }
    n
}

/// Stage 1 on per-row hashes (`None`: no key, never a duplicate): the
/// first eligible row of every hash survives; returns `dup_of` per row.
pub fn exact_dedup(hashes: &[Option<u128>], eligible: &[bool]) -> Vec<Option<u32>> {
    let mut first = std::collections::HashMap::with_capacity(hashes.len());
    hashes
        .iter()
        .zip(eligible)
        .enumerate()
        .map(|(i, (h, &e))| match (h, e) {
            (Some(h), true) => match first.entry(*h) {
                std::collections::hash_map::Entry::Occupied(o) => Some(*o.get()),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(i as u32);
                    None
                }
            },
            _ => None,
        })
        .collect()
}

/// Stage 3: the eligible rows to drop, lowest `column` values first (NaN
/// first of all), ties to the higher row id so the lower one survives.
pub fn quality_drop(values: &[f64], eligible: &[bool], drop_percentile: f64) -> Vec<bool> {
    let n = eligible.iter().filter(|&&e| e).count() as u64;
    let nan = values.iter().zip(eligible).filter(|(v, e)| **e && v.is_nan()).count() as u64;
    let by_rule = floor_fraction(drop_percentile / 100.0, n);
    // Keep the highest values: select_top over -value keeps the best; NaN ranks lowest.
    let keep_n = n - by_rule.max(nan);
    let scores: Vec<f32> = values
        .iter()
        .map(|&v| if v.is_nan() { f32::NEG_INFINITY } else { v as f32 })
        .collect();
    let kept = select_top(&scores, eligible, keep_n, Keep::Hard);
    eligible.iter().zip(&kept).map(|(&e, &k)| e && !k).collect()
}

/// Runs `f(cluster, row_ids, values, pos)` on every cluster of the spill,
/// with only its `eligible` rows, sorted by row id: their unit embeddings
/// are the rows `pos` of the partition's `values` (`dim` columns), left in
/// place rather than copied per cluster. The clusters of a partition run in
/// parallel while the next partition is read (so at most two are in memory).
/// Results come back in a fixed order (partition, then cluster id),
/// whatever the spill order.
pub fn map_spilled_clusters<T: Send>(
    spilled: &SpilledClusters,
    labels: &[u32],
    eligible: &[bool],
    f: impl Fn(u32, &[u32], &[f32], &[u32]) -> Result<T> + Sync,
    on_partition: &(dyn Fn(u64) + Sync),
) -> Result<Vec<(Vec<u32>, T)>> {
    let mut out = Vec::new();
    for_each_prefetched(
        spilled.partitions(),
        |p, spare: Option<Grouped>| read_grouped(spilled, p, labels, eligible, spare.map(|g| (g.ids, g.values))),
        |_, part| {
            out.extend(map_grouped(part, &f)?);
            on_partition(part.ids.len() as u64);
            Ok(())
        },
    )?;
    Ok(out)
}

/// `f` on every cluster of one partition (see [`map_spilled_clusters`]), in
/// parallel, the results in cluster order.
fn map_grouped<T: Send>(
    part: &Grouped,
    f: &(impl Fn(u32, &[u32], &[f32], &[u32]) -> Result<T> + Sync),
) -> Result<Vec<(Vec<u32>, T)>> {
    let mut done = largest_first(part.groups.len(), |g| {
        let (_, a, b) = part.groups[g];
        (b - a) as u64
    })
    .par_iter()
    // One cluster per task: the threads take the largest first, so the partition does
    // not end with one thread on a big cluster while the other waits.
    .with_max_len(1)
    .map(|&g| {
        let (c, a, b) = part.groups[g];
        let members = &part.pos[a..b];
        let row_ids: Vec<u32> = members.iter().map(|&i| part.ids[i as usize]).collect();
        f(c, &row_ids, &part.values, members).map(|t| (g, row_ids, t))
    })
    .collect::<Result<Vec<_>>>()?;
    done.sort_unstable_by_key(|d| d.0);
    Ok(done.into_iter().map(|(_, ids, t)| (ids, t)).collect())
}

/// The indices `0..n` by decreasing `size` (ties in index order): the order in which
/// parallel work of uneven sizes ends soonest on few threads (longest task first).
pub(crate) fn largest_first(n: usize, size: impl Fn(usize) -> u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(size(i)));
    order
}

/// One spill partition, its eligible rows grouped by cluster.
struct Grouped {
    ids: Vec<u32>,
    values: Vec<f32>,
    /// Positions of the eligible rows, sorted by (cluster, row id).
    pos: Vec<u32>,
    /// (cluster, start, end) of each cluster's run in `pos`.
    groups: Vec<(u32, usize, usize)>,
}

fn read_grouped(
    spilled: &SpilledClusters,
    p: usize,
    labels: &[u32],
    eligible: &[bool],
    bufs: Option<(Vec<u32>, Vec<f32>)>,
) -> Result<Grouped> {
    let (mut ids, mut values) = bufs.unwrap_or_default();
    spilled.read_partition_into(p, &mut ids, &mut values)?;
    let mut pos: Vec<u32> = (0..ids.len() as u32)
        .filter(|&i| eligible[ids[i as usize] as usize])
        .collect();
    pos.sort_unstable_by_key(|&i| (labels[ids[i as usize] as usize], ids[i as usize]));
    let mut groups = Vec::new();
    let mut start = 0;
    while start < pos.len() {
        let c = labels[ids[pos[start] as usize] as usize];
        let end = start + pos[start..].partition_point(|&i| labels[ids[i as usize] as usize] == c);
        groups.push((c, start, end));
        start = end;
    }
    Ok(Grouped {
        ids,
        values,
        pos,
        groups,
    })
}

/// SemDeDup over spilled clusters: M and `dup_of` of every `eligible` row
/// (NaN / `None` for the others).
pub fn semdedup_spilled(
    spilled: &SpilledClusters,
    labels: &[u32],
    eligible: &[bool],
    centroids: &Centroids,
    params: &SemDedupParams,
    on_partition: &(dyn Fn(u64) + Sync),
) -> Result<DedupScores> {
    let n = labels.len();
    let d = centroids.dim();
    let per_cluster = map_spilled_clusters(
        spilled,
        labels,
        eligible,
        |c, row_ids, values, pos| dedup_cluster_at(values, d, pos, row_ids, centroids.row(c as usize), params),
        on_partition,
    )?;
    let mut out = DedupScores {
        max_sim: vec![f32::NAN; n],
        dup_of: vec![None; n],
    };
    for (row_ids, r) in per_cluster {
        scatter(&mut out, &row_ids, r);
    }
    check_spilled(&out, eligible)?;
    Ok(out)
}

/// Puts one cluster's M and `dup_of` at its rows' ids.
fn scatter(out: &mut DedupScores, row_ids: &[u32], r: ClusterDedup) {
    for ((&id, &m), dup) in row_ids.iter().zip(&r.max_sim).zip(r.dup_of) {
        out.max_sim[id as usize] = m;
        out.dup_of[id as usize] = dup;
    }
}

/// Every eligible row must have come back from the spill with its M.
fn check_spilled(out: &DedupScores, eligible: &[bool]) -> Result<()> {
    match (0..eligible.len()).find(|&i| eligible[i] && out.max_sim[i].is_nan()) {
        Some(i) => Err(Error::Internal(format!("row {i} was not spilled"))),
        None => Ok(()),
    }
}

/// kNN density of every `eligible` row within its cluster
/// ([`crate::score::knn::knn_distance`]); NaN for the others.
pub fn knn_spilled(
    spilled: &SpilledClusters,
    labels: &[u32],
    eligible: &[bool],
    dim: usize,
    k: usize,
    on_partition: &(dyn Fn(u64) + Sync),
) -> Result<Vec<f32>> {
    let per_cluster = map_spilled_clusters(
        spilled,
        labels,
        eligible,
        |_, _, values, pos| {
            let mut rows = Vec::with_capacity(pos.len() * dim);
            for &i in pos {
                rows.extend_from_slice(&values[i as usize * dim..(i as usize + 1) * dim]);
            }
            Ok(knn_distance(&rows, dim, k))
        },
        on_partition,
    )?;
    let mut out = vec![f32::NAN; labels.len()];
    for (row_ids, d) in per_cluster {
        for (&id, &v) in row_ids.iter().zip(&d) {
            out[id as usize] = v;
        }
    }
    Ok(out)
}

/// A warning when the within-cluster pass is large for the data: k too
/// small for N.
pub fn pairwise_warning(sizes: &[u64], dim: usize) -> Option<String> {
    let cost = PairwiseCost::new(sizes);
    let flops = cost.flops(dim);
    (flops > PAIRWISE_WARN_FLOPS).then(|| {
        format!(
            "SemDeDup compares {:.2e} row pairs (largest cluster {} rows, about {:.1e} flops): k = {} is small for these data; a larger --k is faster",
            cost.sum_sq as f64,
            cost.largest,
            flops,
            sizes.len()
        )
    })
}

/// Cosine is required for SemDeDup; checked when the stage is asked for.
pub fn check_distance(distance: Distance) -> Result<()> {
    if distance != Distance::Cosine {
        return Err(Error::param(
            "--distance",
            "SemDeDup clusters with spherical k-means: use --distance cosine",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_first_eligible_row_wins() {
        let h = [Some(1), Some(2), Some(1), None, None, Some(2), Some(1)];
        let e = [false, true, true, true, true, true, true];
        assert_eq!(
            exact_dedup(&h, &e),
            vec![None, None, None, None, None, Some(1), Some(2)]
        );
    }

    #[test]
    fn quality_drops_lowest_then_nan_first_and_exactly() {
        let v = [0.5, f64::NAN, 0.1, 0.9, 0.1, 0.7, 0.3, 0.2, 0.8, 0.6];
        let e = [true; 10];
        // 30% of 10 = 3 rows: NaN, then the two 0.1 (ties: the higher id goes first? both go).
        let d = quality_drop(&v, &e, 30.0);
        assert_eq!(d.iter().filter(|&&x| x).count(), 3);
        assert!(d[1] && d[2] && d[4]);
        // 10%: one row; the NaN goes first.
        let d = quality_drop(&v, &e, 10.0);
        assert_eq!(d.iter().position(|&x| x), Some(1));
        assert_eq!(d.iter().filter(|&&x| x).count(), 1);
        // ties at the cut: the lower row id survives
        let d = quality_drop(&[1.0, 1.0, 1.0, 1.0], &[true; 4], 50.0);
        assert_eq!(d, vec![false, false, true, true]);
        // ineligible rows are never dropped and not counted
        let d = quality_drop(&[0.0, 5.0, 1.0, 2.0], &[false, true, true, true], 34.0);
        assert_eq!(d, vec![false, false, true, false]);
    }

    #[test]
    fn params_are_checked() {
        assert!(
            DedupParams {
                eps: Some(1.5),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        let e = DedupParams {
            global: GlobalPass::Hnsw,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("--dedup EPS"), "{e}");
        assert!(
            QualityParams {
                column: "q".into(),
                drop_below_percentile: 100.0
            }
            .validate()
            .is_err()
        );
        assert!(QualityParams::default().validate().is_err());
        assert!("stage".parse::<KeepOf>().is_ok() && "x".parse::<KeepOf>().is_err());
        assert_eq!(
            "random".parse::<DedupRank>().unwrap().to_keep(7),
            DedupKeep::Random { seed: 7 }
        );
    }
}
