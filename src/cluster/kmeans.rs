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

use crate::cluster::centroids::{BOUND_CANDIDATES, CANDIDATE_WINDOW, CHUNK_ROWS};
pub use crate::cluster::centroids::{Centroids, Distance};
use crate::cluster::certified::CertifiedSearch;
use crate::distance::{
    PackedRows, dot_batch_packed, f32_error_per_norm, min_l2_update, norm_upper_bound, norm2, normalize,
};
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
}

impl KMeans {
    /// Fits `k` centroids to `data` (`n × dim`, row-major). With
    /// [`Distance::Cosine`] the rows must already be unit vectors.
    /// `on_iter` is called after every iteration (progress reporting).
    ///
    /// Cosine fits skip most of the assignment work once the centroids
    /// settle, with the same result bit for bit (drift bounds in the spirit of
    /// Hamerly 2010, in dot-product form, with a short candidate list): a full
    /// search also keeps each row's [`BOUND_CANDIDATES`] best-scoring
    /// centroids and an upper bound on the exact dot with any other one (the
    /// best score left out plus the rounding bounds). When the centroids move
    /// by δ_j, a row's exact dots move by at most ‖x‖·δ_j, so that bound grows
    /// by ‖x‖·max δ_j; the next iteration computes the row's dots with its
    /// candidates only (the f32 kernel's bits), and if the best of them is
    /// strictly above the bound plus the f32 error it is the full search's
    /// answer too. Other
    /// rows get the full search. `DPRUNE_DRIFT_BOUNDS=0` turns this off.
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
        let mut history = Vec::new();
        let mut searched_history = Vec::new();
        let mut converged = false;
        let mut reseeded = 0;
        for it in 0..params.max_iters {
            let searched = match drift.as_mut() {
                Some(b) => b.assign(data, &centroids, &labels, &mut new_labels, &mut dots),
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
            let (next, filled) = update(data, dim, k, &labels, &centroids, params)?;
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
        })
    }

    /// The final inertia.
    pub fn inertia(&self) -> f64 {
        self.inertia_history.last().copied().unwrap_or(f64::NAN)
    }
}

/// The nearest centroid of every row (and, with `bounds`, the candidates
/// and bound of [`Centroids::nearest_bounded`]): bf16 products with an exact
/// f32 recheck where the CPU has them, the same labels and dots as the f32
/// search, so the fit is bit-identical either way.
fn full_search(
    c: &Centroids,
    rows: &[f32],
    labels: &mut [u32],
    dots: &mut [f32],
    bounds: Option<(&mut [u32], &mut [f64])>,
) {
    match (CertifiedSearch::new(c), bounds) {
        (Some(cs), Some((cand, rest))) => cs.nearest_bounded(rows, labels, dots, cand, rest),
        (Some(cs), None) => cs.nearest(rows, labels, dots),
        (None, Some((cand, rest))) => c.nearest_bounded(rows, labels, dots, cand, rest),
        (None, None) => c.nearest(rows, labels, dots),
    }
}

/// Centroids whose dots every row gets computed when they moved much more
/// than the rest ([`DriftBounds::moved`]), at most.
const EXPLICIT_MOVERS: usize = 32;

/// Full searches keep candidates and bounds only once the largest centroid
/// drift of the last update is at most this (half the candidate window:
/// beyond it few rows could keep their cluster by the bound).
const TRACK_BELOW_DRIFT: f64 = CANDIDATE_WINDOW as f64 / 2.0;

/// [`DriftBounds::assign`] searches every row at once when fewer than
/// 1/this of them could keep their cluster by the bound.
const MIN_HOPEFUL_DIVISOR: usize = 4;

/// Rows searched in one batch by [`DriftBounds::assign`] (bounds the copy).
const SEARCH_BATCH_ROWS: usize = 8192;

/// Per-thread buffers of one cluster's candidate products.
#[derive(Default)]
struct ClusterScratch {
    union: Vec<u32>,
    cents: Vec<f32>,
    x: Vec<f32>,
    out: Vec<f32>,
}

/// The per-row state of the drift bounds (see [`KMeans::fit`]).
struct DriftBounds {
    /// Upper bound on ‖x_i‖.
    norms: Vec<f64>,
    /// Row i's candidate centroids (`BOUND_CANDIDATES` per row, ascending).
    cand: Vec<u32>,
    /// Upper bound on the exact dot (hence, plus the f32 error, on the f32
    /// dot) of row i with any centroid not among its candidates. The full
    /// searches' bounds hold for both: a bf16 score plus B + E, or an f32 dot
    /// plus 2E, is above the exact dot too.
    rest: Vec<f64>,
    /// Whether the bounds hold (false until a full search keeps them).
    valid: bool,
    /// The largest drift of the last update among the centroids not in `explicit`.
    max_drift: f64,
    /// The few centroids that moved much more than the rest in the last
    /// update (ascending): their dots are computed for every row instead.
    explicit: Vec<u32>,
    /// Full searches keep bounds when `max_drift` is at most this.
    track_below: f64,
    flags: Vec<bool>,
    batch: Vec<f32>,
}

impl DriftBounds {
    fn new(data: &[f32], dim: usize, track_below: f64) -> Self {
        let norms: Vec<f64> = data.par_chunks(dim).map(norm_upper_bound).collect();
        let n = norms.len();
        DriftBounds {
            norms,
            cand: vec![0; n * BOUND_CANDIDATES],
            rest: vec![f64::INFINITY; n],
            valid: false,
            max_drift: f64::INFINITY, // the first search starts from k-means++ seeds
            explicit: Vec::new(),
            track_below,
            flags: vec![false; n],
            batch: Vec::new(),
        }
    }

    /// Records the move from `old` to `new` centroids: every bound on the
    /// centroids left out grows by ‖x‖ times the largest drift — among the
    /// centroids other than the [`EXPLICIT_MOVERS`] that moved most, when
    /// leaving those out halves it (their dots are then computed for every row).
    fn moved(&mut self, old: &Centroids, new: &Centroids) {
        let dim = old.dim();
        let mut d: Vec<(f64, u32)> = (0..old.k())
            .into_par_iter()
            .map(|j| {
                // f32 − f32 is exact in f64; the f64 sum of squares and sqrt are within
                // a few ulps, covered by the relative slack.
                let s: f64 = (0..dim)
                    .map(|t| {
                        let v = new.row(j)[t] as f64 - old.row(j)[t] as f64;
                        v * v
                    })
                    .sum();
                (s.sqrt() * (1.0 + 1e-12), j as u32)
            })
            .collect();
        d.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let h = EXPLICIT_MOVERS.min(d.len() - 1);
        self.explicit.clear();
        if d[h].0 <= d[0].0 / 2.0 {
            self.explicit.extend(d[..h].iter().map(|p| p.1));
            self.explicit.sort_unstable();
            self.max_drift = d[h].0;
        } else {
            self.max_drift = d[0].0;
        }
    }

    /// Labels and dots for this iteration (the full search's bits), with
    /// `labels` and `dots` holding the last iteration's; returns how many
    /// rows were searched against every centroid.
    fn assign(&mut self, data: &[f32], c: &Centroids, labels: &[u32], new_labels: &mut [u32], dots: &mut [f32]) -> u64 {
        let n = self.norms.len();
        let dim = c.dim();
        let drift = self.max_drift;
        if !self.valid {
            // Candidates and bounds cost a little on every full search: keep them only
            // once the centroids move little enough for rows to keep their cluster.
            if drift <= self.track_below {
                full_search(c, data, new_labels, dots, Some((&mut self.cand, &mut self.rest)));
                self.valid = true;
            } else {
                full_search(c, data, new_labels, dots, None);
            }
            return n as u64;
        }
        // Rows that can still keep their cluster by the bound: their last dot, less the most
        // it can drop, above the grown bound. When few can (the centroids moved far, as in
        // the first iterations), every row gets the full search at once: no candidate dots,
        // no copies.
        let hopeful: usize = dots
            .par_iter()
            .zip(self.rest.par_iter().zip(self.norms.par_iter()))
            .filter(|&(&d, (&r, &norm))| d as f64 - 2.0 * norm * drift > r)
            .count();
        if hopeful < n / MIN_HOPEFUL_DIVISOR {
            self.valid = false;
            return self.assign(data, c, labels, new_labels, dots);
        }
        self.rest
            .par_iter_mut()
            .zip(self.norms.par_iter())
            .for_each(|(r, &norm)| {
                let b = *r + norm * drift;
                // Rounded up: a relative slack far above the f64 rounding of the sum.
                *r = b + b.abs() * 1e-15 + 1e-300;
            });
        // Every row's dots with its candidates, one small product per cluster: the rows
        // of a cluster against the union of their candidates (the f32 kernel's bits
        // depend only on the two rows, not on the block they are computed in).
        let k = c.k();
        let mut starts = vec![0usize; k + 1];
        for &l in labels {
            starts[l as usize + 1] += 1;
        }
        for j in 0..k {
            starts[j + 1] += starts[j];
        }
        let mut order = vec![0u32; n];
        let mut fill = starts.clone();
        for (i, &l) in labels.iter().enumerate() {
            order[fill[l as usize]] = i as u32;
            fill[l as usize] += 1;
        }
        let cand = &self.cand;
        let explicit = &self.explicit[..];
        let best: Vec<Vec<(u32, f32, f32)>> = (0..k)
            .into_par_iter()
            .map_init(ClusterScratch::default, |s, cl| {
                let members = &order[starts[cl]..starts[cl + 1]];
                let row_cands = |i: u32| {
                    let i = i as usize;
                    cand[i * BOUND_CANDIDATES..(i + 1) * BOUND_CANDIDATES]
                        .iter()
                        .take_while(|&&j| j != u32::MAX)
                };
                s.union.clear();
                s.union.extend_from_slice(explicit);
                for &i in members {
                    s.union.extend(row_cands(i));
                }
                s.union.sort_unstable();
                s.union.dedup();
                s.cents.clear();
                for &j in &s.union {
                    s.cents.extend_from_slice(c.row(j as usize));
                }
                s.x.clear();
                for &i in members {
                    s.x.extend_from_slice(&data[i as usize * dim..(i as usize + 1) * dim]);
                }
                let u = s.union.len();
                s.out.resize(members.len() * u, 0.0);
                if u > 0 {
                    dot_batch_packed(&s.x, &PackedRows::new(&s.cents, dim), &mut s.out);
                }
                members
                    .iter()
                    .enumerate()
                    .map(|(r, &i)| {
                        let dot = |j: u32| s.out[r * u + s.union.binary_search(&j).expect("in the union")];
                        // First largest among the candidates (ascending: lowest index on ties).
                        let (mut bj, mut bv) = (u32::MAX, f32::NEG_INFINITY);
                        for j in row_cands(i) {
                            let v = dot(*j);
                            if v > bv {
                                (bj, bv) = (*j, v);
                            }
                        }
                        // The centroids that moved most, when not candidates: computed too, and
                        // the largest of their dots is kept for the bound.
                        let (mut xj, mut xv) = (u32::MAX, f32::NEG_INFINITY);
                        for &j in explicit {
                            if !row_cands(i).any(|&c| c == j) {
                                let v = dot(j);
                                if v > xv {
                                    (xj, xv) = (j, v);
                                }
                            }
                        }
                        if xv > bv || (xv == bv && xj < bj) {
                            (bj, bv) = (xj, xv);
                        }
                        (bj, bv, xv)
                    })
                    .collect()
            })
            .collect();
        // A left-out centroid's f32 dot is at most its exact dot plus E (per unit of ‖x‖).
        let e_norm = f32_error_per_norm(dim) * c.max_norm();
        for (cl, b) in best.iter().enumerate() {
            for (&i, &(bj, bv, xv)) in order[starts[cl]..starts[cl + 1]].iter().zip(b) {
                let i = i as usize;
                // Strictly above every other centroid's possible f32 dot: the full search
                // (first largest dot over all centroids) picks it too. Anything else
                // (NaN included) gets the full search.
                let e = e_norm * self.norms[i];
                let kept = (bv as f64) > self.rest[i] + e;
                self.flags[i] = !kept;
                (new_labels[i], dots[i]) = (bj, bv);
                // The movers left out are bounded by their exact dots from now on.
                if xv > f32::NEG_INFINITY {
                    self.rest[i] = self.rest[i].max(xv as f64 + e);
                }
            }
        }
        let todo: Vec<usize> = (0..n).filter(|&i| self.flags[i]).collect();
        let mut cand = vec![0u32; SEARCH_BATCH_ROWS.min(todo.len()) * BOUND_CANDIDATES];
        for ids in todo.chunks(SEARCH_BATCH_ROWS) {
            self.batch.clear();
            for &i in ids {
                self.batch.extend_from_slice(&data[i * dim..(i + 1) * dim]);
            }
            let m = ids.len();
            let (mut l, mut d, mut r) = (vec![0u32; m], vec![0f32; m], vec![0f64; m]);
            let cand = &mut cand[..m * BOUND_CANDIDATES];
            full_search(c, &self.batch, &mut l, &mut d, Some((&mut *cand, &mut r)));
            for (q, &i) in ids.iter().enumerate() {
                (new_labels[i], dots[i], self.rest[i]) = (l[q], d[q], r[q]);
                self.cand[i * BOUND_CANDIDATES..(i + 1) * BOUND_CANDIDATES]
                    .copy_from_slice(&cand[q * BOUND_CANDIDATES..(q + 1) * BOUND_CANDIDATES]);
            }
        }
        todo.len() as u64
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

/// New centroids from labels: per-cluster sums over rows in ascending
/// order (f64 accumulators), then mean (L2) or normalised mean (cosine);
/// empty clusters are filled by splitting the largest.
fn update(
    data: &[f32],
    dim: usize,
    k: usize,
    labels: &[u32],
    old: &Centroids,
    params: &KMeansParams,
) -> Result<(Centroids, usize)> {
    // Counting sort of row indices by cluster (stable: ascending rows).
    let mut counts = vec![0usize; k];
    for &l in labels {
        counts[l as usize] += 1;
    }
    let mut starts = vec![0usize; k + 1];
    for j in 0..k {
        starts[j + 1] = starts[j] + counts[j];
    }
    let mut order = vec![0u32; labels.len()];
    let mut fill = starts.clone();
    for (i, &l) in labels.iter().enumerate() {
        order[fill[l as usize]] = i as u32;
        fill[l as usize] += 1;
    }
    let mut next = vec![0f32; k * dim];
    next.par_chunks_mut(dim).enumerate().for_each(|(j, c)| {
        let members = &order[starts[j]..starts[j + 1]];
        if members.is_empty() {
            c.copy_from_slice(old.row(j));
            return;
        }
        let mut acc = vec![0f64; dim];
        for &i in members {
            let x = &data[i as usize * dim..(i as usize + 1) * dim];
            for (a, &v) in acc.iter_mut().zip(x) {
                *a += v as f64;
            }
        }
        let inv = 1.0 / members.len() as f64;
        for (o, a) in c.iter_mut().zip(&acc) {
            *o = (a * inv) as f32;
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
    let mut last = first;
    while chosen.len() < k {
        let c = &pts[last * dim..(last + 1) * dim];
        d2.par_chunks_mut(CHUNK_ROWS).enumerate().for_each(|(ci, d)| {
            let p0 = ci * CHUNK_ROWS;
            min_l2_update(&pts[p0 * dim..(p0 + d.len()) * dim], dim, c, d);
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
mod tests {
    use super::*;

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
    fn a_centroid_left_out_that_moves_closer_is_found() {
        // Row 30 scores slightly less on each of e1..e(M+4), so e(M+1).. are left out of its
        // M = BOUND_CANDIDATES candidates; the last centroid then moves 0.08 towards it and
        // becomes its nearest, while rows 0..30 (near e0) keep their cluster by the bound.
        // Alone, that centroid is one of the movers whose dots every row gets; when all
        // the others move almost as far (0.06), the grown bound must send row 30 to the
        // full search.
        let near = BOUND_CANDIDATES + 4;
        let dim = near + 8;
        let unit = |mut v: Vec<f32>| {
            normalize(&mut v);
            v
        };
        let e = |i: usize| (0..dim).map(|t| if t == i { 1.0 } else { 0.0 }).collect::<Vec<f32>>();
        let cents: Vec<f32> = (0..=near).flat_map(e).collect();
        let step = 0.26 / near as f32;
        let r = unit(
            (0..dim)
                .map(|t| {
                    if (1..=near).contains(&t) {
                        1.0 - step * t as f32
                    } else {
                        0.0
                    }
                })
                .collect(),
        );
        let mut data = Vec::new();
        for q in 0..30 {
            let mut v = e(0);
            v[dim - 1] = 0.01 * q as f32;
            data.extend(unit(v));
        }
        data.extend(&r);
        let n = 31;
        let old = Centroids::try_new(cents.clone(), dim, Distance::Cosine).unwrap();
        for others_move in [false, true] {
            let mut moved = cents.clone();
            if others_move {
                for j in 0..near {
                    moved[j * dim + dim - 1] = 0.06;
                    normalize(&mut moved[j * dim..(j + 1) * dim]);
                }
            }
            let last = unit(e(near).iter().zip(&r).map(|(a, b)| a + 0.08 * b).collect());
            moved[near * dim..(near + 1) * dim].copy_from_slice(&last);
            let new = Centroids::try_new(moved, dim, Distance::Cosine).unwrap();
            let mut b = DriftBounds::new(&data, dim, f64::INFINITY);
            let (mut l, mut d) = (vec![0u32; n], vec![0f32; n]);
            b.assign(&data, &old, &vec![u32::MAX; n], &mut l, &mut d);
            assert_eq!(l[30], 1);
            assert!(!b.cand[30 * BOUND_CANDIDATES..31 * BOUND_CANDIDATES].contains(&(near as u32)));
            b.moved(&old, &new);
            assert_eq!(b.explicit.contains(&(near as u32)), !others_move, "{:?}", b.explicit);
            assert!(b.max_drift < 0.1, "{}", b.max_drift);
            // `dots` comes in holding the last iteration's dots, as in the fit.
            let (mut l2, mut d2) = (vec![0u32; n], d.clone());
            let searched = b.assign(&data, &new, &l, &mut l2, &mut d2);
            let (mut l3, mut d3) = (vec![0u32; n], vec![0f32; n]);
            new.nearest(&data, &mut l3, &mut d3);
            assert_eq!(l3[30], near as u32, "the moved centroid is the nearest now");
            assert_eq!(l2, l3, "others move: {others_move}");
            assert_eq!(
                d2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                d3.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            assert!(searched < n as u64, "rows near e0 keep their cluster by the bound");
        }
    }

    #[test]
    fn the_bound_covers_every_centroid_left_out() {
        let (data, _) = blobs(25, 20, 40, 0.4, 31);
        let dim = 40;
        let n = data.len() / dim;
        let mut r = Rng::new(5);
        for k in [25, 12, 3] {
            let cents: Vec<f32> = (0..k * dim).map(|_| r.normal() as f32).collect();
            let c = Centroids::try_new(cents, dim, Distance::Cosine).unwrap();
            let mut all = vec![0f32; n * k];
            crate::distance::dot_batch(&data, c.as_slice(), dim, &mut all);
            type Search<'a> = &'a dyn Fn(&mut [u32], &mut [f32], &mut [u32], &mut [f64]);
            let searches: [Search; 2] = [&|l, d, cd, o| c.nearest_bounded(&data, l, d, cd, o), &|l, d, cd, o| {
                CertifiedSearch::build(&c).nearest_bounded(&data, l, d, cd, o)
            }];
            for search in searches {
                let m = BOUND_CANDIDATES;
                let (mut l, mut d, mut cd, mut o) = (vec![0u32; n], vec![0f32; n], vec![0u32; n * m], vec![0f64; n]);
                search(&mut l, &mut d, &mut cd, &mut o);
                let (mut l1, mut d1) = (vec![0u32; n], vec![0f32; n]);
                c.nearest(&data, &mut l1, &mut d1);
                assert_eq!(l, l1);
                for i in 0..n {
                    let cs = &cd[i * m..(i + 1) * m];
                    assert!(
                        cs.contains(&l[i]) && cs.windows(2).all(|w| w[0] < w[1] || w[1] == u32::MAX),
                        "row {i}: {cs:?}"
                    );
                    // The candidates' dots, as the k-means step computes them (the row against
                    // the candidates packed on their own), are the search's bits.
                    let used: Vec<u32> = cs.iter().copied().filter(|&j| j != u32::MAX).collect();
                    let rows: Vec<f32> = used.iter().flat_map(|&j| c.row(j as usize).to_vec()).collect();
                    let mut f = vec![0f32; used.len()];
                    dot_batch_packed(&data[i * dim..(i + 1) * dim], &PackedRows::new(&rows, dim), &mut f);
                    for (&j, &v) in used.iter().zip(&f) {
                        assert_eq!(v.to_bits(), all[i * k + j as usize].to_bits(), "row {i} centroid {j}");
                    }
                    let left: Vec<f32> = (0..k)
                        .filter(|j| !cs.contains(&(*j as u32)))
                        .map(|j| all[i * k + j])
                        .collect();
                    match left.iter().copied().reduce(f32::max) {
                        None => assert_eq!(o[i], f64::NEG_INFINITY, "k {k}: nothing left out"),
                        Some(best) => {
                            assert!(o[i] >= best as f64, "row {i}: bound {} < {best}", o[i]);
                            // Tight enough to be useful: near the best left out, or the window's edge.
                            let top = all[i * k..(i + 1) * k].iter().copied().fold(f32::MIN, f32::max);
                            let edge = best.max(top - 0.25) as f64;
                            assert!(o[i] - edge < 0.02, "row {i}: bound {} vs {edge}", o[i]);
                        }
                    }
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
