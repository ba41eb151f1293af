//! k-means with k-means++ initialisation and Lloyd iterations, spherical
//! (cosine) by default, Euclidean on request.
//!
//! * Spherical k-means (Dhillon & Modha 2001): rows and centroids are unit
//!   vectors, a row goes to the centroid of largest dot product, and a new
//!   centroid is the normalised mean of its rows — what faiss does with
//!   `spherical=True` and what SemDeDup/SSP pruning uses.
//! * Euclidean k-means: nearest centroid by ‖x‖² − 2x·c + ‖c‖², centroid =
//!   mean.
//! * Initialisation: k-means++ (Arthur & Vassilvitskii 2007) on a seeded
//!   sub-sample of [`INIT_POINTS_PER_CENTROID`] points per centroid, because
//!   exact k-means++ costs one full pass over the data per centroid.
//! * Distances for a block of rows against all centroids are one GEMM
//!   ([`crate::distance::dot_batch`]); work is split into fixed-size row
//!   chunks and every reduction is summed in chunk order, so results do not
//!   depend on the number of threads.
//! * Empty clusters are re-seeded by splitting the largest cluster (faiss's
//!   rule: the two halves move apart by a relative 1/1024 per coordinate).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::centroids::CHUNK_ROWS;
pub use crate::cluster::centroids::{Centroids, Distance};
use crate::cluster::drift::{DriftBounds, TRACK_BELOW_DRIFT, full_search};
use crate::distance::{I8Sketch, add_rows_f64, norm2, normalize};
use crate::rng::Rng;
use crate::{Error, Result};

/// Lloyd iterations at most, unless converged earlier.
pub const DEFAULT_MAX_ITERS: usize = 25;
/// Stop when the relative decrease of the inertia falls to this or below.
pub const DEFAULT_TOLERANCE: f64 = 1e-4;
/// Training rows per centroid when no sample size is given (faiss's
/// `max_points_per_centroid`).
pub const DEFAULT_POINTS_PER_CENTROID: u64 = 256;
/// Rows per centroid in the k-means++ sub-sample.
pub const INIT_POINTS_PER_CENTROID: usize = 16;
/// The largest k chosen automatically (larger k must be asked for).
pub const MAX_AUTO_K: usize = 1000;

/// Relative perturbation when splitting a cluster to fill an empty one.
const SPLIT_EPS: f32 = 1.0 / 1024.0;

/// The k used when none is given: ⌊√N⌋, clamped to `1..=`[`MAX_AUTO_K`].
///
/// √N keeps both the number of clusters and their mean size growing with
/// the data; the cap keeps assignment cheap (N·k·d) and is near the values
/// the literature found best for SSP/DBP on ImageNet-to-DataComp scale.
pub fn default_k(n: u64) -> usize {
    ((n as f64).sqrt().floor() as usize).clamp(1, MAX_AUTO_K)
}

/// Parameters of a k-means fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KMeansParams {
    /// Number of clusters; `None` picks [`default_k`] of the row count.
    pub k: Option<usize>,
    /// How rows are compared with centroids; defaults to [`Distance::Cosine`].
    pub distance: Distance,
    /// Lloyd iterations at most; defaults to [`DEFAULT_MAX_ITERS`].
    pub max_iters: usize,
    /// Relative inertia decrease that counts as converged; defaults to
    /// [`DEFAULT_TOLERANCE`]. 0 runs exactly `max_iters` iterations.
    pub tolerance: f64,
    /// Training rows; `None` = [`DEFAULT_POINTS_PER_CENTROID`] per centroid.
    pub sample: Option<u64>,
    /// Seed of the sample and of the initialisation.
    #[serde(skip)]
    pub seed: u64,
}

impl Default for KMeansParams {
    fn default() -> Self {
        KMeansParams {
            k: None,
            distance: Distance::default(),
            max_iters: DEFAULT_MAX_ITERS,
            tolerance: DEFAULT_TOLERANCE,
            sample: None,
            seed: 0,
        }
    }
}

impl KMeansParams {
    /// Sets `k`.
    pub fn with_k(mut self, k: usize) -> Self {
        self.k = Some(k);
        self
    }

    /// Sets the distance.
    pub fn with_distance(mut self, d: Distance) -> Self {
        self.distance = d;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks ranges that do not depend on the data.
    pub fn validate(&self) -> Result<()> {
        if self.k == Some(0) {
            return Err(Error::param("--k", "must be at least 1"));
        }
        if self.max_iters == 0 {
            return Err(Error::param("--max-iters", "must be at least 1"));
        }
        if !(self.tolerance >= 0.0 && self.tolerance.is_finite()) {
            return Err(Error::param(
                "--tolerance",
                format!("{} is not a finite number >= 0", self.tolerance),
            ));
        }
        if self.sample == Some(0) {
            return Err(Error::param("--sample", "must be at least 1"));
        }
        Ok(())
    }

    /// The k for `n` rows.
    pub fn resolve_k(&self, n: u64) -> usize {
        self.k.unwrap_or_else(|| default_k(n))
    }

    /// The number of training rows for `n` rows and `k` clusters.
    pub fn resolve_sample(&self, n: u64, k: usize) -> u64 {
        self.sample
            .unwrap_or(DEFAULT_POINTS_PER_CENTROID.saturating_mul(k as u64))
            .min(n)
    }
}

/// One Lloyd iteration's numbers, passed to progress callbacks.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct IterationStats {
    /// 1-based iteration number.
    pub iteration: usize,
    /// Sum of squared distances of training rows to their centroid.
    pub inertia: f64,
    /// Rows whose cluster changed since the previous iteration.
    pub changed: u64,
    /// Rows searched against every centroid; the others kept their cluster
    /// by the drift bound (see [`KMeans::fit`]).
    pub searched: u64,
}

/// A fitted k-means model.
#[derive(Debug, Clone)]
pub struct KMeans {
    /// The centroids.
    pub centroids: Centroids,
    /// Lloyd iterations run.
    pub iterations: usize,
    /// Inertia (sum of squared L2 distances; for unit rows 2 − 2·cos) at
    /// every iteration.
    pub inertia_history: Vec<f64>,
    /// Whether the tolerance was reached before `max_iters`.
    pub converged: bool,
    /// Empty clusters re-seeded by splitting a large one.
    pub reseeded: usize,
    /// Training rows used.
    pub train_rows: usize,
    /// Rows searched against every centroid, per iteration (the rest kept
    /// their cluster by the drift bound).
    pub searched_history: Vec<u64>,
    /// Every training row's nearest centroid among [`KMeans::centroids`]
    /// (the fit stops right after a search, never after an update), the
    /// first largest dot on ties, as [`Centroids::nearest`] gives it.
    pub labels: Vec<u32>,
    /// The f32 dot of every training row with that centroid, the bits
    /// [`Centroids::nearest`] gives: a score pass can take both as they are.
    pub dots: Vec<f32>,
}

impl KMeans {
    /// Fits `k` centroids to `data` (`n × dim`, row-major). With
    /// [`Distance::Cosine`] the rows must already be unit vectors.
    /// `on_iter` is called after every iteration (progress reporting).
    ///
    /// Cosine fits skip most of the assignment work once the centroids
    /// settle, with the same result bit for bit: each row keeps a few
    /// candidate centroids and a bound on its dot with every other one, grown
    /// by how far the centroids moved, and only rows whose best candidate no
    /// longer beats the bound get the full search (`cluster::drift`).
    /// `DPRUNE_DRIFT_BOUNDS=0` turns this off.
    pub fn fit(
        data: &[f32],
        dim: usize,
        params: &KMeansParams,
        on_iter: &mut dyn FnMut(IterationStats),
    ) -> Result<Self> {
        let bounds = std::env::var("DPRUNE_DRIFT_BOUNDS").map_or(true, |v| v != "0");
        Self::fit_with(data, dim, params, on_iter, bounds.then_some(TRACK_BELOW_DRIFT))
    }

    fn fit_with(
        data: &[f32],
        dim: usize,
        params: &KMeansParams,
        on_iter: &mut dyn FnMut(IterationStats),
        track_below: Option<f64>,
    ) -> Result<Self> {
        params.validate()?;
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(Error::Shape {
                op: "k-means",
                expected: format!("n x {dim}"),
                got: format!("{} values", data.len()),
            });
        }
        let n = data.len() / dim;
        let k = params.resolve_k(n as u64);
        if n < k {
            return Err(Error::param(
                "--k",
                format!("cannot train {k} centroids with {n} rows; choose a smaller --k (at most {n})"),
            ));
        }
        let init = kmeans_pp(data, dim, k, params.seed);
        let mut centroids = Centroids::try_new(init, dim, params.distance)?;
        let mut labels = vec![u32::MAX; n];
        let mut new_labels = vec![0u32; n];
        let mut dots = vec![0f32; n];
        let row_norms: Vec<f32> = match params.distance {
            Distance::Cosine => Vec::new(),
            Distance::L2 => data.par_chunks(dim).map(norm2).collect(),
        };
        let mut drift = match (track_below, params.distance) {
            (Some(t), Distance::Cosine) => Some(DriftBounds::new(data, dim, t)),
            _ => None,
        };
        let mut means = MeanCache::default();
        let mut history = Vec::new();
        let mut searched_history = Vec::new();
        let mut converged = false;
        let mut reseeded = 0;
        for it in 0..params.max_iters {
            let searched = match drift.as_mut() {
                Some(b) => b.assign(data, &centroids, &mut new_labels, &mut dots),
                None => {
                    full_search(&centroids, data, &mut new_labels, &mut dots, None);
                    n as u64
                }
            };
            let inertia = inertia(&centroids, &row_norms, &new_labels, &dots);
            let changed = labels.iter().zip(&new_labels).filter(|(a, b)| a != b).count() as u64;
            std::mem::swap(&mut labels, &mut new_labels);
            history.push(inertia);
            searched_history.push(searched);
            on_iter(IterationStats {
                iteration: it + 1,
                inertia,
                changed,
                searched,
            });
            if changed == 0 {
                converged = true;
                break;
            }
            if it > 0 {
                let prev = history[it - 1];
                if prev - inertia <= params.tolerance * prev {
                    converged = params.tolerance > 0.0;
                    if converged {
                        break;
                    }
                }
            }
            if it + 1 == params.max_iters {
                break; // keep the centroids the final labels were computed with
            }
            let (next, filled) = update(data, dim, k, &labels, &centroids, params, &mut means)?;
            reseeded += filled;
            if let Some(b) = drift.as_mut() {
                b.moved(&centroids, &next);
            }
            centroids = next;
        }
        Ok(KMeans {
            centroids,
            iterations: history.len(),
            inertia_history: history,
            converged,
            reseeded,
            train_rows: n,
            searched_history,
            labels,
            dots,
        })
    }

    /// The final inertia.
    pub fn inertia(&self) -> f64 {
        self.inertia_history.last().copied().unwrap_or(f64::NAN)
    }
}

/// Sum of squared distances, summed per fixed chunk then in chunk order.
fn inertia(c: &Centroids, row_norms: &[f32], labels: &[u32], dots: &[f32]) -> f64 {
    let parts: Vec<f64> = labels
        .par_chunks(CHUNK_ROWS)
        .zip(dots.par_chunks(CHUNK_ROWS))
        .enumerate()
        .map(|(ci, (l, d))| {
            let mut s = 0f64;
            for (i, (&j, &dot)) in l.iter().zip(d).enumerate() {
                let v = match c.distance() {
                    Distance::Cosine => (2.0 - 2.0 * dot).max(0.0),
                    Distance::L2 => c.sq_dist_from_dot(row_norms[ci * CHUNK_ROWS + i], j as usize, dot),
                };
                s += v as f64;
            }
            s
        })
        .collect();
    parts.iter().sum()
}

/// The rows of each cluster, ascending (a stable counting sort): cluster
/// `j`'s rows are `order[starts[j]..starts[j + 1]]`.
pub(crate) fn rows_by_cluster(labels: &[u32], k: usize) -> (Vec<usize>, Vec<u32>) {
    let mut starts = vec![0usize; k + 1];
    for &l in labels {
        starts[l as usize + 1] += 1;
    }
    for j in 0..k {
        starts[j + 1] += starts[j];
    }
    let mut order = vec![0u32; labels.len()];
    let mut fill = starts.clone();
    for (i, &l) in labels.iter().enumerate() {
        order[fill[l as usize]] = i as u32;
        fill[l as usize] += 1;
    }
    (starts, order)
}

/// New centroids from labels: per-cluster sums over rows in ascending
/// order (f64 accumulators), then mean (L2) or normalised mean (cosine);
/// empty clusters are filled by splitting the largest.
/// The means the last update computed and the labels it computed them
/// from: a cluster none of whose rows came or went since has the same
/// members in the same order, so the same mean bit for bit, and is not summed
/// again (once the clusters settle, most of them).
#[derive(Default)]
struct MeanCache {
    labels: Vec<u32>,
    means: Vec<f32>,
}

fn update(
    data: &[f32],
    dim: usize,
    k: usize,
    labels: &[u32],
    old: &Centroids,
    params: &KMeansParams,
    cache: &mut MeanCache,
) -> Result<(Centroids, usize)> {
    let (starts, order) = rows_by_cluster(labels, k);
    let counts: Vec<usize> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    let mut changed = vec![cache.labels.len() != labels.len(); k];
    if cache.labels.len() == labels.len() {
        for (&a, &b) in cache.labels.iter().zip(labels) {
            if a != b {
                changed[a as usize] = true;
                changed[b as usize] = true;
            }
        }
    }
    let mut next = vec![0f32; k * dim];
    next.par_chunks_mut(dim).enumerate().for_each(|(j, c)| {
        let members = &order[starts[j]..starts[j + 1]];
        if members.is_empty() {
            c.copy_from_slice(old.row(j));
            return;
        }
        if !changed[j] {
            c.copy_from_slice(&cache.means[j * dim..(j + 1) * dim]);
            return;
        }
        let mut acc = vec![0f64; dim];
        add_rows_f64(&mut acc, data, members);
        let inv = 1.0 / members.len() as f64;
        for (o, a) in c.iter_mut().zip(&acc) {
            *o = (a * inv) as f32;
        }
    });
    cache.labels.clear();
    cache.labels.extend_from_slice(labels);
    cache.means.clone_from(&next);
    // Empty clusters: split the currently largest one (ties: lowest index).
    let mut filled = 0;
    let mut sizes = counts.clone();
    for j in 0..k {
        if counts[j] != 0 {
            continue;
        }
        let big = (0..k)
            .max_by(|&a, &b| sizes[a].cmp(&sizes[b]).then(b.cmp(&a)))
            .expect("k >= 1");
        let mut rng = Rng::for_stream(params.seed, split_stream(j));
        for d in 0..dim {
            let s = if rng.next_u64() & 1 == 0 { SPLIT_EPS } else { -SPLIT_EPS };
            let v = next[big * dim + d];
            next[j * dim + d] = v * (1.0 + s);
            next[big * dim + d] = v * (1.0 - s);
        }
        sizes[j] = sizes[big] / 2;
        sizes[big] -= sizes[j];
        filled += 1;
    }
    if params.distance == Distance::Cosine {
        for c in next.chunks_exact_mut(dim) {
            if normalize(c) == 0.0 {
                c[0] = 1.0; // a mean of unit vectors that cancels out exactly: any unit vector will do
            }
        }
    }
    Ok((Centroids::try_new(next, dim, params.distance)?, filled))
}

/// RNG stream for the split that fills empty cluster `j` (streams 0 and 1
/// are used by sampling and initialisation).
#[inline]
fn split_stream(j: usize) -> u64 {
    1000 + j as u64
}

/// k-means++ seeding on a seeded sub-sample of at most
/// [`INIT_POINTS_PER_CENTROID`]·k rows. Returns `k × dim` initial centroids.
/// The distance updates go through an int8 sketch of the points
/// ([`I8Sketch`]), which skips the rows it proves unchanged: the same picks.
fn kmeans_pp(data: &[f32], dim: usize, k: usize, seed: u64) -> Vec<f32> {
    let n = data.len() / dim;
    let mut rng = Rng::for_stream(seed, 1);
    let m = (k * INIT_POINTS_PER_CENTROID).min(n);
    let idx = rng.sample_indices(n as u64, m as u64);
    let pts: Vec<f32> = idx
        .iter()
        .flat_map(|&i| data[i as usize * dim..(i as usize + 1) * dim].iter().copied())
        .collect();
    let mut chosen = Vec::with_capacity(k);
    let mut taken = vec![false; m];
    let first = rng.below(m as u64) as usize;
    chosen.push(first);
    taken[first] = true;
    let mut d2 = vec![f32::INFINITY; m];
    // Most points are much nearer their centre so far than the new one: an int8
    // sketch rules them out without reading them (same values).
    let sketch = I8Sketch::new(&pts, dim);
    let mut last = first;
    while chosen.len() < k {
        d2.par_chunks_mut(CHUNK_ROWS).enumerate().for_each(|(ci, d)| {
            sketch.min_update(&pts, ci * CHUNK_ROWS, last, d);
        });
        let parts: Vec<f64> = d2
            .par_chunks(CHUNK_ROWS)
            .map(|d| d.iter().map(|&v| v as f64).sum::<f64>())
            .collect();
        let total: f64 = parts.iter().sum();
        let next = if total > 0.0 && total.is_finite() {
            // Walk chunk totals, then rows, to the point where the running sum passes r.
            let mut r = rng.next_f64() * total;
            let mut pick = None;
            for (ci, &p) in parts.iter().enumerate() {
                if r < p {
                    for (i, &v) in d2[ci * CHUNK_ROWS..].iter().take(CHUNK_ROWS).enumerate() {
                        r -= v as f64;
                        let p_i = ci * CHUNK_ROWS + i;
                        if r < 0.0 && !taken[p_i] {
                            pick = Some(p_i);
                            break;
                        }
                    }
                    break;
                }
                r -= p;
            }
            // Rounding can walk off the end: fall back to the farthest point.
            pick.unwrap_or_else(|| {
                (0..m)
                    .filter(|&i| !taken[i])
                    .max_by(|&a, &b| d2[a].total_cmp(&d2[b]).then(b.cmp(&a)))
                    .expect("m >= k")
            })
        } else {
            // Every remaining point coincides with a chosen one: take untaken points in order.
            (0..m).find(|&i| !taken[i]).expect("m >= k")
        };
        chosen.push(next);
        taken[next] = true;
        last = next;
    }
    chosen
        .iter()
        .flat_map(|&i| pts[i * dim..(i + 1) * dim].iter().copied())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn updates_reuse_only_the_means_of_clusters_whose_rows_stayed() {
        // Warm updates (means of untouched clusters reused) give the bits of a cold one:
        // after a few rows move, after two rows swap clusters, and after a cluster empties
        // (split from the largest) and refills.
        let (k, dim) = (12, 16);
        let (data, truth) = blobs(k, 30, dim, 0.3, 4);
        let n = truth.len();
        for distance in [Distance::Cosine, Distance::L2] {
            let params = KMeansParams {
                distance,
                ..KMeansParams::default()
            };
            let init: Vec<f32> = (0..k)
                .flat_map(|j| data[j * 30 * dim..(j * 30 + 1) * dim].to_vec())
                .collect();
            let mut c = Centroids::try_new(init, dim, distance).unwrap();
            let mut labels = truth.clone();
            let mut warm = MeanCache::default();
            for t in 0..5 {
                let (cold, cold_filled) =
                    update(&data, dim, k, &labels, &c, &params, &mut MeanCache::default()).unwrap();
                let (hot, hot_filled) = update(&data, dim, k, &labels, &c, &params, &mut warm).unwrap();
                let bits = |x: &Centroids| x.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&hot), bits(&cold), "{distance:?} step {t}");
                assert_eq!(hot_filled, cold_filled);
                c = hot;
                match t {
                    0 => labels[3] = 5,
                    1 => labels.swap(0, 40),
                    2 => labels.iter_mut().filter(|v| **v == 7).for_each(|v| *v = 8),
                    3 => labels[2] = 7,
                    _ => {}
                }
                assert_eq!(labels.len(), n);
            }
        }
    }

    /// `k` well-separated unit-norm blobs of `per` rows in `dim` dims.
    pub(crate) fn blobs(k: usize, per: usize, dim: usize, spread: f32, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut rng = Rng::new(seed);
        let centres: Vec<Vec<f32>> = (0..k)
            .map(|_| {
                let mut c: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
                normalize(&mut c);
                c
            })
            .collect();
        let mut data = Vec::new();
        let mut truth = Vec::new();
        for i in 0..k * per {
            let c = i % k;
            let mut x: Vec<f32> = centres[c].iter().map(|&v| v + spread * rng.normal() as f32).collect();
            normalize(&mut x);
            data.extend(x);
            truth.push(c as u32);
        }
        (data, truth)
    }

    fn purity(labels: &[u32], truth: &[u32], k: usize) -> f64 {
        let mut best = 0;
        for c in 0..k {
            let mut counts = vec![0usize; k];
            for (l, t) in labels.iter().zip(truth) {
                if *t as usize == c {
                    counts[*l as usize] += 1;
                }
            }
            best += counts.iter().max().unwrap();
        }
        best as f64 / labels.len() as f64
    }

    #[test]
    fn recovers_planted_clusters_cosine_and_l2() {
        let (data, truth) = blobs(8, 50, 16, 0.05, 1);
        for distance in [Distance::Cosine, Distance::L2] {
            let p = KMeansParams::default().with_k(8).with_distance(distance).with_seed(3);
            let km = KMeans::fit(&data, 16, &p, &mut |_| {}).unwrap();
            let mut labels = vec![0; truth.len()];
            let mut dots = vec![0.0; truth.len()];
            km.centroids.nearest(&data, &mut labels, &mut dots);
            assert!(purity(&labels, &truth, 8) > 0.99, "{distance}");
            assert!(km.converged);
        }
    }

    #[test]
    fn inertia_never_increases() {
        let (data, _) = blobs(10, 40, 8, 0.4, 2);
        let p = KMeansParams {
            tolerance: 0.0,
            max_iters: 15,
            ..KMeansParams::default().with_k(10)
        };
        let km = KMeans::fit(&data, 8, &p, &mut |_| {}).unwrap();
        for w in km.inertia_history.windows(2) {
            assert!(w[1] <= w[0] * (1.0 + 1e-6), "{:?}", km.inertia_history);
        }
    }

    #[test]
    fn same_result_for_one_and_two_threads() {
        let (data, _) = blobs(12, 60, 24, 0.3, 5);
        let p = KMeansParams::default().with_k(12).with_seed(9);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| KMeans::fit(&data, 24, &p, &mut |_| {}).unwrap())
        };
        let (a, b) = (run(1), run(2));
        assert_eq!(a.centroids.as_slice(), b.centroids.as_slice());
        assert_eq!(a.inertia_history, b.inertia_history);
    }

    #[test]
    fn empty_clusters_are_reseeded() {
        // 3 distinct points repeated, k = 5: at most 3 clusters can be non-empty
        // after assignment, so the update must split to fill the rest.
        let mut data = Vec::new();
        for i in 0..30 {
            let mut v = vec![0.0f32; 4];
            v[i % 3] = 1.0;
            data.extend(v);
        }
        let p = KMeansParams {
            tolerance: 0.0,
            max_iters: 5,
            ..KMeansParams::default().with_k(5)
        };
        let km = KMeans::fit(&data, 4, &p, &mut |_| {}).unwrap();
        assert_eq!(km.centroids.k(), 5);
        assert!(km.centroids.as_slice().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn drift_bounds_give_the_same_fit_bit_for_bit() {
        // Tight blobs (most rows keep their cluster by the bound), overlapping ones (many
        // near-ties get the full search), and a case that re-seeds empty clusters.
        let mut cases = vec![
            (blobs(20, 40, 32, 0.05, 21), 20, 32),
            (blobs(15, 60, 24, 0.6, 22), 15, 24),
            (blobs(30, 30, 48, 0.25, 23), 30, 48),
        ];
        let mut dup = Vec::new();
        for i in 0..40 {
            let mut v = vec![0.0f32; 4];
            v[i % 3] = 1.0;
            dup.extend(v);
        }
        cases.push(((dup, vec![]), 5, 4));
        for (((data, _), k, dim), case) in cases.into_iter().zip(0..) {
            let p = KMeansParams {
                tolerance: 0.0,
                max_iters: 12,
                ..KMeansParams::default().with_k(k).with_seed(case)
            };
            let plain = KMeans::fit_with(&data, dim, &p, &mut |_| {}, None).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            // The default, and bounds kept from the first search on (large drifts too).
            for track in [TRACK_BELOW_DRIFT, f64::INFINITY] {
                let bounded = KMeans::fit_with(&data, dim, &p, &mut |_| {}, Some(track)).unwrap();
                let same = bits(bounded.centroids.as_slice()) == bits(plain.centroids.as_slice());
                assert!(same, "case {case}: centroids differ");
                assert_eq!(bounded.inertia_history, plain.inertia_history, "case {case}");
                assert_eq!(bounded.iterations, plain.iterations, "case {case}");
                let n = (data.len() / dim) as u64;
                assert!(plain.searched_history.iter().all(|&s| s == n));
                assert_eq!(bounded.searched_history[0], n, "the first iteration searches every row");
                if case == 0 || track == f64::INFINITY {
                    // The bound must actually spare rows.
                    let spared = bounded.searched_history.iter().skip(1).filter(|&&s| s < n).count();
                    assert!(spared > 0, "case {case}: {:?}", bounded.searched_history);
                }
            }
        }
    }

    #[test]
    fn too_few_rows_is_an_error() {
        let data = vec![1.0f32; 4 * 3];
        let err = KMeans::fit(&data, 4, &KMeansParams::default().with_k(5), &mut |_| {}).unwrap_err();
        assert!(
            err.to_string().contains("cannot train 5 centroids with 3 rows"),
            "{err}"
        );
    }

    #[test]
    fn default_k_grows_then_caps() {
        assert_eq!(default_k(1), 1);
        assert_eq!(default_k(100), 10);
        assert_eq!(default_k(10_000_000), MAX_AUTO_K);
    }
}
