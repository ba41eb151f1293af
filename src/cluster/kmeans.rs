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
//! * The update keeps every cluster's sum exact, in fixed point
//!   (the private `sums` module), so it only adds and subtracts the rows that changed
//!   cluster; a mean depends on its cluster's members, not on their order.
//! * Empty clusters are re-seeded by splitting the largest cluster (faiss's
//!   rule: the two halves move apart by a relative 1/1024 per coordinate).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::centroids::CHUNK_ROWS;
pub use crate::cluster::centroids::{Centroids, Distance};
use crate::cluster::drift::{DriftBounds, TRACK_BELOW_DRIFT, full_search};
use crate::distance::{I8Sketch, norm2, normalize};
use crate::rng::Rng;
use crate::{Error, Result};
use sums::ExactSums;

mod sums;

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
        let mut sums = None;
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
            let (next, filled) = update(data, dim, k, &labels, &centroids, params, &mut sums)?;
            reseeded += filled;
            if let Some(b) = drift.as_mut() {
                b.moved(&centroids, &next);
            }
            centroids = next;
        }
        // The bounds' candidate lists are 64 values per row: freed while the caller goes on.
        crate::background::drop_behind((drift, sums));
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

/// New centroids from labels: each cluster's exact sum ([`ExactSums`], brought
/// to `labels` by the rows that moved), divided by its count, then normalised
/// (cosine); empty clusters keep their centroid until split from the largest.
fn update(
    data: &[f32],
    dim: usize,
    k: usize,
    labels: &[u32],
    old: &Centroids,
    params: &KMeansParams,
    sums: &mut Option<ExactSums>,
) -> Result<(Centroids, usize)> {
    let sums = match sums {
        Some(s) => s,
        None => sums.insert(ExactSums::new(data, dim, k)?),
    };
    sums.update_to(data, labels);
    let counts: Vec<usize> = (0..k).map(|j| sums.count(j)).collect();
    let mut next = vec![0f32; k * dim];
    next.par_chunks_mut(dim).enumerate().for_each(|(j, c)| {
        if counts[j] == 0 {
            c.copy_from_slice(old.row(j));
        } else {
            sums.mean_into(j, c);
        }
    });
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
pub(crate) mod tests;
