//! Per-row scores that selection ranks by.
//!
//! * [`Metric::Proto`]: self-supervised prototypicality (Sorscher et al.,
//!   "Beyond neural scaling laws", NeurIPS 2022): score = 1 − cos(x, c),
//!   the cosine distance of a row to its nearest k-means centroid. High =
//!   hard (atypical), low = easy (prototypical).
//! * [`Metric::Random`]: a seeded uniform score per row id, the baseline
//!   every pruning metric must beat.
//! * [`Metric::Semdedup`]: SemDeDup's M (largest cosine with an
//!   earlier-ranked member of the cluster); the least redundant rows are
//!   kept ([`semdedup`]).
//! * [`Metric::Dbp`], [`Metric::Ccs`], [`Metric::Moderate`]: selection
//!   rules over the prototypicality score ([`crate::select::dbp`],
//!   [`crate::select::robust`]).

pub mod knn;
pub mod semdedup;

pub use semdedup::{Assignment, DedupKeep, SemDedupParams};

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::{Centroids, Distance};
use crate::distance::norm2;
use crate::rng::mix64;
use crate::{Error, Result};

/// What to score rows by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Cosine distance to the nearest centroid (SSP).
    #[default]
    Proto,
    /// Seeded random scores.
    Random,
    /// SemDeDup redundancy: keep the rows with the smallest M.
    Semdedup,
    /// Density-based pruning: per-cluster quotas from complexity.
    Dbp,
    /// Coverage-centric coreset selection over score strata.
    Ccs,
    /// Moderate coreset: rows nearest their cluster's median distance.
    Moderate,
    /// kNN density: mean cosine distance to the nearest rows of the
    /// cluster ([`knn`]), with an outlier cap for keep-hard.
    Knn,
}

impl Metric {
    /// Every metric name, for help and error texts.
    pub const NAMES: &'static str = "proto, random, semdedup, dbp, ccs, moderate or knn";
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Metric::Proto => "proto",
            Metric::Random => "random",
            Metric::Semdedup => "semdedup",
            Metric::Dbp => "dbp",
            Metric::Ccs => "ccs",
            Metric::Moderate => "moderate",
            Metric::Knn => "knn",
        })
    }
}

impl FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "proto" | "ssp" => Ok(Metric::Proto),
            "random" => Ok(Metric::Random),
            "semdedup" => Ok(Metric::Semdedup),
            "dbp" => Ok(Metric::Dbp),
            "ccs" => Ok(Metric::Ccs),
            "moderate" => Ok(Metric::Moderate),
            "knn" => Ok(Metric::Knn),
            _ => Err(Error::param("--metric", format!("`{s}`: expected {}", Metric::NAMES))),
        }
    }
}

/// Prototypicality of `rows` (row-major, `c.dim()` columns): the nearest
/// centroid into `labels` and 1 − cos(x, c) into `scores`. With
/// [`Distance::Cosine`] the rows must be unit vectors.
pub fn prototypicality(c: &Centroids, rows: &[f32], labels: &mut [u32], scores: &mut [f32]) {
    c.nearest(rows, labels, scores);
    dots_to_distances(c, rows, labels, scores);
}

/// Prototypicality against given clusters (`--assignments`): 1 − cos(x,
/// c_label) of every row into `scores`; `labels` are not changed. With
/// [`Distance::Cosine`] the rows must be unit vectors.
pub fn prototypicality_given(c: &Centroids, rows: &[f32], labels: &[u32], scores: &mut [f32]) {
    // The same kernel as the nearest search: given the nearest centroid, the same bits.
    c.dots_to(rows, labels, scores);
    dots_to_distances(c, rows, labels, scores);
}

/// Turns each row's dot with centroid `labels[i]` into 1 − cos(x, c).
fn dots_to_distances(c: &Centroids, rows: &[f32], labels: &[u32], scores: &mut [f32]) {
    let dim = c.dim();
    match c.distance() {
        Distance::Cosine => scores.par_iter_mut().for_each(|s| *s = 1.0 - *s),
        Distance::L2 => scores
            .par_iter_mut()
            .zip(labels.par_iter())
            .zip(rows.par_chunks(dim))
            .for_each(|((s, &j), x)| {
                let denom = (norm2(x) * norm2(c.row(j as usize))).sqrt();
                *s = 1.0 - *s / denom;
            }),
    }
}

/// A uniform score in [0, 1) for global row `row` under `seed`: a pure
/// function, so the random baseline does not depend on order or threads.
#[inline]
pub fn random_score(seed: u64, row: u64) -> f32 {
    let h = mix64(mix64(seed ^ 0xD1B5_4A32_D192_ED03).wrapping_add(row));
    (h >> 40) as f32 / (1u64 << 24) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_is_cosine_distance_to_nearest() {
        let c = Centroids::try_new(vec![1.0, 0.0, 0.0, 1.0], 2, Distance::Cosine).unwrap();
        let s2 = std::f32::consts::FRAC_1_SQRT_2;
        let rows = [1.0, 0.0, s2, s2, 0.0, 1.0];
        let mut l = [0u32; 3];
        let mut s = [0f32; 3];
        prototypicality(&c, &rows, &mut l, &mut s);
        assert_eq!(l, [0, 0, 1]);
        assert!((s[0] - 0.0).abs() < 1e-6 && (s[1] - (1.0 - s2)).abs() < 1e-6 && s[2].abs() < 1e-6);
    }

    #[test]
    fn given_labels_score_against_their_own_centroid() {
        let c = Centroids::try_new(vec![1.0, 0.0, 0.0, 1.0], 2, Distance::Cosine).unwrap();
        let s2 = std::f32::consts::FRAC_1_SQRT_2;
        // The second row is nearer centroid 0 but assigned to 1: same distance; the
        // third is assigned to its far centroid: distance 1.
        let rows = [1.0, 0.0, s2, s2, 0.0, 1.0];
        let mut s = [0f32; 3];
        prototypicality_given(&c, &rows, &[0, 1, 0], &mut s);
        assert!(s[0].abs() < 1e-6 && (s[1] - (1.0 - s2)).abs() < 1e-6 && (s[2] - 1.0).abs() < 1e-6);
        let c = Centroids::try_new(vec![2.0, 0.0, 0.0, 2.0], 2, Distance::L2).unwrap();
        prototypicality_given(&c, &[3.0, 0.0], &[1], &mut s[..1]);
        assert!((s[0] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn proto_l2_uses_true_cosine() {
        let c = Centroids::try_new(vec![2.0, 0.0, 0.0, 2.0], 2, Distance::L2).unwrap();
        let rows = [3.0, 1.0];
        let mut l = [0u32; 1];
        let mut s = [0f32; 1];
        prototypicality(&c, &rows, &mut l, &mut s);
        assert_eq!(l[0], 0);
        let cos = 3.0 / 10f32.sqrt();
        assert!((s[0] - (1.0 - cos)).abs() < 1e-6);
    }

    #[test]
    fn random_scores_are_uniformish_and_seeded() {
        let a: Vec<f32> = (0..10_000).map(|i| random_score(1, i)).collect();
        let b: Vec<f32> = (0..10_000).map(|i| random_score(2, i)).collect();
        assert_ne!(a, b);
        assert!(a.iter().all(|&v| (0.0..1.0).contains(&v)));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!((mean - 0.5).abs() < 0.02);
        assert_eq!(random_score(1, 77), a[77]);
    }
}
