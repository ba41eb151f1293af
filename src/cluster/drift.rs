//! k-means' drift bounds: cosine Lloyd iterations that skip most of the
//! assignment work once the centroids settle, with the same labels and dots
//! bit for bit (Hamerly 2010's idea in dot-product form, with a short
//! candidate list per row; see [`super::KMeans::fit`]).
//!
//! A full search also keeps each row's candidates (the centroids scoring
//! within [`CANDIDATE_WINDOW`] of its best, at most [`BOUND_CANDIDATES`]) and
//! an upper bound on its exact dot with every other centroid. When the
//! centroids move by δ_j, an exact dot moves by at most ‖x‖·δ_j (Cauchy–
//! Schwarz), so the bound grows by ‖x‖·max δ_j; a row whose best candidate
//! (the f32 kernel's bits) beats the grown bound plus the f32 error E keeps
//! the full search's answer without it.
//!
//! Each candidate also keeps its own bound (a vectorized dot plus its error,
//! grown by that centroid's drift): a drift step first computes the last
//! winner's dot alone, and only the candidates whose bound still reaches it
//! get theirs (Hamerly's per-centre bounds, on the short list).

use rayon::prelude::*;

use crate::cluster::centroids::CHUNK_ROWS;
use crate::cluster::centroids::{BOUND_CANDIDATES, CANDIDATE_WINDOW, Centroids};
use crate::cluster::certified::{CertifiedSearch, RowCache};
use crate::distance::{
    PackedRows, contender_cut, dot_batch_packed, fast_pair_dots, kernel_pair_dots, norm_upper_bound,
};

/// The nearest centroid of every row (and, with `bounds`, the candidates
/// and bound of [`Centroids::nearest_bounded`]): bf16 products with an exact
/// f32 recheck where the CPU has them, the same labels and dots as the f32
/// search, so the fit is bit-identical either way.
pub(crate) fn full_search(
    c: &Centroids,
    rows: &[f32],
    labels: &mut [u32],
    dots: &mut [f32],
    bounds: Option<(&mut [u32], &mut [f64])>,
) {
    full_search_cached(c, rows, None, labels, dots, bounds)
}

/// [`full_search`] of rows whose int8 operands `cache` keeps.
pub(crate) fn full_search_cached(
    c: &Centroids,
    rows: &[f32],
    cache: Option<&RowCache>,
    labels: &mut [u32],
    dots: &mut [f32],
    bounds: Option<(&mut [u32], &mut [f64])>,
) {
    match (CertifiedSearch::new(c), bounds) {
        (Some(cs), Some((cand, rest))) => cs.nearest_bounded_cached(rows, cache, labels, dots, cand, rest),
        (Some(cs), None) => cs.nearest_cached(rows, cache, labels, dots),
        (None, Some((cand, rest))) => c.nearest_bounded(rows, labels, dots, cand, rest),
        (None, None) => c.nearest(rows, labels, dots),
    }
}

/// Centroids whose dots every row gets computed when they moved much more
/// than the rest ([`DriftBounds::moved`]), at most, while the bounds are not kept.
const EXPLICIT_MOVERS: usize = 32;

/// The numbers of explicit movers [`DriftBounds::assign`] weighs once the
/// bounds are kept.
const MOVER_CHOICES: [usize; 7] = [0, 1, 2, 4, 8, 16, 32];

/// A full search's cost per centroid, in candidate products: its products
/// are low precision and GEMM-shaped, a candidate's is one f32 dot with a
/// centroid read from cache (a rough ratio: on 1M × 384 every weight from
/// 1/25 to 1/3 makes the same choices).
const FULL_SEARCH_WEIGHT: f64 = 1.0 / 6.0;

/// Full searches keep candidates and bounds only once the largest centroid
/// drift of the last update is at most this. Rows keep their cluster by the
/// bound while the drift stays under half the candidate window, and once the
/// clusters form each drift is a third or less of the last (0.25 then 0.077
/// on 1M × 384): a full search after a drift of 1.5 windows keeps bounds that
/// the next iteration most likely uses, and keeping them costs little.
pub(crate) const TRACK_BELOW_DRIFT: f64 = CANDIDATE_WINDOW as f64 * 1.5;

/// [`DriftBounds::assign`] searches every row at once when fewer than
/// 1/this of them could keep their cluster by the bound.
const MIN_HOPEFUL_DIVISOR: usize = 4;

/// Rows searched in one batch by [`DriftBounds::assign`] (bounds the copy).
const SEARCH_BATCH_ROWS: usize = 8192;

/// The per-row state of the drift bounds (see [`KMeans::fit`]).
pub(crate) struct DriftBounds {
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
    /// Every centroid's drift in the last update, largest first (ties by index).
    by_drift: Vec<(f64, u32)>,
    /// Full searches keep bounds when `max_drift` is at most this.
    track_below: f64,
    flags: Vec<bool>,
    batch: Vec<f32>,
    /// The rows' int8 operands, kept from one full search to the next.
    left: RowCache,
    /// Per candidate slot of each row: an upper bound on its exact dot with that
    /// candidate (a vectorized dot plus its error, grown by the centroid's drift at
    /// each update, rounded up to f32); ∞ until a drift step computes one.
    cand_bound: Vec<f32>,
    /// Each row's label from the last assignment.
    last: Vec<u32>,
    /// Every centroid's drift in the last update (by index).
    drift_of: Vec<f64>,
}

impl DriftBounds {
    pub(crate) fn new(data: &[f32], dim: usize, track_below: f64) -> Self {
        let norms: Vec<f64> = data.par_chunks(dim).map(norm_upper_bound).collect();
        let n = norms.len();
        DriftBounds {
            norms,
            cand: vec![0; n * BOUND_CANDIDATES],
            rest: vec![f64::INFINITY; n],
            valid: false,
            max_drift: f64::INFINITY, // the first search starts from k-means++ seeds
            explicit: Vec::new(),
            by_drift: Vec::new(),
            track_below,
            flags: vec![false; n],
            batch: Vec::new(),
            left: RowCache::new(n),
            // Tens of MB: filled by every thread (one thread's page faults and writes
            // held the other up).
            cand_bound: {
                let mut v = Vec::with_capacity(n * BOUND_CANDIDATES);
                v.par_extend(rayon::iter::repeat_n(f32::INFINITY, n * BOUND_CANDIDATES));
                v
            },
            last: vec![u32::MAX; n],
            drift_of: Vec::new(),
        }
    }

    /// Records the move from `old` to `new` centroids: every bound on the
    /// centroids left out grows by ‖x‖ times the largest drift — among the
    /// centroids other than the [`EXPLICIT_MOVERS`] that moved most, when
    /// leaving those out halves it (their dots are then computed for every row).
    /// With the bounds kept, [`DriftBounds::assign`] then weighs how many movers
    /// to take ([`MOVER_CHOICES`]).
    pub(crate) fn moved(&mut self, old: &Centroids, new: &Centroids) {
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
        self.drift_of.clear();
        self.drift_of.extend(d.iter().map(|p| p.0));
        d.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let h = EXPLICIT_MOVERS.min(d.len() - 1);
        let h = if d[h].0 <= d[0].0 / 2.0 { h } else { 0 };
        self.by_drift = d;
        self.set_movers(h);
    }

    /// Makes the `h` centroids that moved most the explicit movers, whose
    /// dots every row gets; the bounds then grow by the largest drift of the others.
    fn set_movers(&mut self, h: usize) {
        let d = &self.by_drift;
        let h = h.min(d.len() - 1);
        self.explicit.clear();
        self.explicit.extend(d[..h].iter().map(|p| p.1));
        self.explicit.sort_unstable();
        self.max_drift = d[h].0;
    }

    /// How many rows could keep their cluster by the bound if the bounds grew by
    /// `drift`: their last dot, less the most it can drop, above the grown bound.
    fn hopeful(&self, dots: &[f32], drift: f64) -> usize {
        dots.par_iter()
            .zip(self.rest.par_iter().zip(self.norms.par_iter()))
            .filter(|&(&d, (&r, &norm))| d as f64 - 2.0 * norm * drift > r)
            .count()
    }

    /// Labels and dots for this iteration (the full search's bits), with
    /// `dots` holding the last iteration's; returns how many rows were
    /// searched against every centroid.
    pub(crate) fn assign(&mut self, data: &[f32], c: &Centroids, new_labels: &mut [u32], dots: &mut [f32]) -> u64 {
        let n = self.norms.len();
        let dim = c.dim();
        let drift = self.max_drift;
        if !self.valid {
            // Candidates and bounds cost a little on every full search: keep them only
            // once the centroids move little enough for rows to keep their cluster.
            let left = Some(&self.left);
            if drift <= self.track_below {
                full_search_cached(c, data, left, new_labels, dots, Some((&mut self.cand, &mut self.rest)));
                self.valid = true;
                self.cand_bound.fill(f32::INFINITY);
            } else {
                full_search_cached(c, data, left, new_labels, dots, None);
            }
            self.last.copy_from_slice(new_labels);
            return n as u64;
        }
        // Rows that can still keep their cluster by the bound: their last dot, less the most
        // it can drop, above the grown bound. When few can (the centroids moved far, as in
        // the first iterations), every row gets the full search at once: no candidate dots,
        // no copies.
        // How many movers: each costs every row one product; leaving it out grows every
        // bound by its drift, and each row that then fails gets a full search (one
        // low-precision product with every centroid, about FULL_SEARCH_WEIGHT of one
        // candidate product). The hopeful rows of each choice stand in for those kept.
        let k = c.k();
        let (mut h, mut hopeful, mut best) = (0, 0, f64::INFINITY);
        for cand_h in MOVER_CHOICES.into_iter().filter(|&h| h < k) {
            let hp = self.hopeful(dots, self.by_drift[cand_h].0);
            let cost = (cand_h * n) as f64 + ((n - hp) * k) as f64 * FULL_SEARCH_WEIGHT;
            if cost < best {
                (h, hopeful, best) = (cand_h, hp, cost);
            }
        }
        self.set_movers(h);
        let drift = self.max_drift;
        if hopeful < n / MIN_HOPEFUL_DIVISOR {
            self.valid = false;
            return self.assign(data, c, new_labels, dots);
        }
        self.rest
            .par_iter_mut()
            .zip(self.norms.par_iter())
            .for_each(|(r, &norm)| {
                let b = *r + norm * drift;
                // Rounded up: a relative slack far above the f64 rounding of the sum.
                *r = b + b.abs() * 1e-15 + 1e-300;
            });
        // Every row's dots with the movers come from the kernel itself, as one matrix
        // product per chunk of rows (its own bits: no recheck needed). The dots with its
        // candidates (all different, row by row) are vectorized f32 dots first, then the
        // kernel's own chain only for those within 4E of the row's best (usually the
        // winner alone). Both values are within E of the exact dot, so a centroid further
        // below can neither win nor tie (`contender_cut`, as in `CertifiedSearch`). Row by
        // row, in place: no copies (row order: a cluster at a time, reading its rows from
        // all over the sample, was slower). The movers left out are bounded by their dots
        // plus E.
        let e_norm = c.f32_error();
        let (cand, explicit, norms) = (&self.cand, &self.explicit[..], &self.norms);
        let (last, drift_of) = (&self.last[..], &self.drift_of[..]);
        let h = explicit.len();
        let movers = (h > 0).then(|| {
            let rows: Vec<f32> = explicit
                .iter()
                .flat_map(|&j| c.row(j as usize).iter().copied())
                .collect();
            PackedRows::new(&rows, dim)
        });
        // An upper bound on an exact dot, rounded up to f32.
        let up = |v: f64| {
            let f = v as f32;
            if (f as f64) < v { f.next_up() } else { f }
        };
        let best: Vec<(u32, f32, f32)> = data
            .par_chunks(CHUNK_ROWS * dim)
            .zip(self.cand_bound.par_chunks_mut(CHUNK_ROWS * BOUND_CANDIDATES))
            .enumerate()
            .flat_map_iter(|(ci, (x, ub))| {
                let rows = x.len() / dim;
                let mut exact_m = vec![0f32; rows * h];
                if let Some(m) = &movers {
                    dot_batch_packed(x, m, &mut exact_m);
                }
                // Per row: its candidates that are not movers (pairs, with their slots), and
                // which movers are not among its candidates (only those bound the centroids
                // left out); the slot of each mover that is one.
                let (mut pairs, mut slots, mut spans) = (Vec::new(), Vec::new(), vec![0usize]);
                let mut outside = vec![true; rows * h];
                let mut mover_slot = vec![usize::MAX; rows * h];
                for r in 0..rows {
                    let i = ci * CHUNK_ROWS + r;
                    // Candidates are ascending, unused slots (u32::MAX) last, and so are the
                    // movers: one merge walk.
                    let mut m = explicit.iter().enumerate().peekable();
                    for (slot, &j) in cand[i * BOUND_CANDIDATES..(i + 1) * BOUND_CANDIDATES]
                        .iter()
                        .enumerate()
                        .take_while(|p| *p.1 != u32::MAX)
                    {
                        while m.next_if(|&(_, &mj)| mj < j).is_some() {}
                        match m.peek() {
                            Some(&(q, &mj)) if mj == j => {
                                outside[r * h + q] = false;
                                mover_slot[r * h + q] = slot;
                            }
                            _ => {
                                pairs.push((r as u32, j));
                                slots.push(slot);
                            }
                        }
                    }
                    spans.push(pairs.len());
                }
                let mut out = vec![(u32::MAX, f32::NEG_INFINITY, f32::NEG_INFINITY); rows];
                for (r, o) in out.iter_mut().enumerate() {
                    o.2 = exact_m[r * h..(r + 1) * h]
                        .iter()
                        .zip(&outside[r * h..(r + 1) * h])
                        .filter(|p| *p.1)
                        .fold(f32::NEG_INFINITY, |a, p| a.max(*p.0));
                }
                // First, the last winner alone: its kernel value v against the movers' values
                // and the other candidates' bounds grown by their drift (k_q ≤ exact_q + E ≤
                // bound + E). A row whose last winner wins again that way needs no other dot;
                // otherwise only the candidates whose bound reaches v get theirs (all of them
                // where the last winner is not computed here).
                let mut grown = vec![f32::INFINITY; pairs.len()];
                let (mut first, mut first_at) = (Vec::new(), Vec::new());
                let mut full = vec![true; rows];
                for r in 0..rows {
                    let i = ci * CHUNK_ROWS + r;
                    let (b, norm) = (last[i], norms[i]);
                    let mut top = f64::NEG_INFINITY;
                    let mut own = None;
                    for p in spans[r]..spans[r + 1] {
                        let j = pairs[p].1;
                        let g = up(ub[r * BOUND_CANDIDATES + slots[p]] as f64 + norm * drift_of[j as usize]);
                        grown[p] = g;
                        if j == b {
                            own = Some(p);
                        } else {
                            top = top.max(g as f64);
                        }
                    }
                    let is_mover = explicit.binary_search(&b).ok();
                    if own.is_none() && is_mover.is_none() {
                        continue;
                    }
                    match is_mover {
                        Some(q) => first_at.push((r, top, Some(exact_m[r * h + q]), own)),
                        None => {
                            first.push((r as u32, b));
                            first_at.push((r, top, None, own));
                        }
                    }
                }
                let mut first_v = vec![0f32; first.len()];
                kernel_pair_dots(x, c.as_slice(), dim, &first, &mut first_v);
                // Per row, the candidates whose vectorized dots are needed (positions in
                // `pairs`), and the last winner's kernel value where it was computed.
                let (mut sub_pos, mut sub_span) = (Vec::new(), vec![(0usize, 0usize); rows]);
                let mut own_val: Vec<Option<(u32, f32)>> = vec![None; rows];
                let mut fv = first_v.iter();
                let mut tried = vec![false; rows];
                for &(r, top, mv, own) in &first_at {
                    tried[r] = true;
                    let i = ci * CHUNK_ROWS + r;
                    let b = last[i];
                    let v = mv.unwrap_or_else(|| *fv.next().expect("one value per chain"));
                    let e = e_norm * norms[i];
                    if let Some(p) = own {
                        grown[p] = up(v as f64 + e);
                    }
                    let beats_movers = explicit
                        .iter()
                        .zip(&exact_m[r * h..(r + 1) * h])
                        .all(|(&j, &w)| j == b || w < v || (w == v && b < j));
                    if (v as f64) > top + e && beats_movers {
                        full[r] = false;
                        (out[r].0, out[r].1) = (b, v);
                        continue;
                    }
                    // Only the candidates whose bound lets them reach v can beat it.
                    let start = sub_pos.len();
                    sub_pos.extend(
                        (spans[r]..spans[r + 1]).filter(|&p| Some(p) != own && (grown[p] as f64) + e >= v as f64),
                    );
                    sub_span[r] = (start, sub_pos.len());
                    own_val[r] = Some((b, v));
                }
                for r in (0..rows).filter(|&r| full[r] && !tried[r]) {
                    let start = sub_pos.len();
                    sub_pos.extend(spans[r]..spans[r + 1]);
                    sub_span[r] = (start, sub_pos.len());
                }
                let sub: Vec<(u32, u32)> = sub_pos.iter().map(|&p| pairs[p]).collect();
                let mut fast = vec![0f32; sub.len()];
                fast_pair_dots(x, c.as_slice(), dim, &sub, &mut fast);
                let mut near = Vec::new();
                let mut row_vals = Vec::new();
                for r in (0..rows).filter(|&r| full[r]) {
                    let (a, z) = sub_span[r];
                    let (f, xm) = (&fast[a..z], &exact_m[r * h..(r + 1) * h]);
                    let e = e_norm * norms[ci * CHUNK_ROWS + r];
                    row_vals.clear();
                    row_vals.extend_from_slice(f);
                    row_vals.extend_from_slice(xm);
                    row_vals.extend(own_val[r].map(|o| o.1));
                    let cut = contender_cut(&row_vals, e);
                    for (q, &v) in f.iter().enumerate() {
                        let p = sub_pos[a + q];
                        if cut.is_none_or(|cut| v as f64 >= cut) {
                            near.push(pairs[p]);
                        }
                        // The exact dot is within E of the vectorized one.
                        grown[p] = up(v as f64 + e);
                    }
                    // The movers' and the last winner's values are the kernel's: they
                    // compete as they are.
                    let o = &mut out[r];
                    for (j, v) in explicit.iter().copied().zip(xm.iter().copied()).chain(own_val[r]) {
                        if v > o.1 || (v == o.1 && j < o.0) {
                            (o.0, o.1) = (j, v);
                        }
                    }
                }
                let mut exact = vec![0f32; near.len()];
                kernel_pair_dots(x, c.as_slice(), dim, &near, &mut exact);
                // The first largest: the largest value, ties to the lowest centroid.
                for (&(r, j), &v) in near.iter().zip(&exact) {
                    let o = &mut out[r as usize];
                    if v > o.1 || (v == o.1 && j < o.0) {
                        (o.0, o.1) = (j, v);
                    }
                }
                // Bounds for the next step: the candidates' (grown, or fresh), and the movers'
                // among them from their exact values.
                for r in 0..rows {
                    let i = ci * CHUNK_ROWS + r;
                    let e = e_norm * norms[i];
                    for p in spans[r]..spans[r + 1] {
                        ub[r * BOUND_CANDIDATES + slots[p]] = grown[p];
                    }
                    for q in 0..h {
                        let slot = mover_slot[r * h + q];
                        if slot != usize::MAX {
                            ub[r * BOUND_CANDIDATES + slot] = up(exact_m[r * h + q] as f64 + e);
                        }
                    }
                }
                out
            })
            .collect();
        for (i, &(bj, bv, xv)) in best.iter().enumerate() {
            // Strictly above every other centroid's possible f32 dot: the full search
            // (first largest dot over all centroids) picks it too. Anything else (NaN
            // included) gets the full search.
            let e = e_norm * self.norms[i];
            let kept = (bv as f64) > self.rest[i] + e;
            self.flags[i] = !kept;
            (new_labels[i], dots[i]) = (bj, bv);
            // The movers left out are bounded by their exact dots from now on.
            if xv > f32::NEG_INFINITY {
                self.rest[i] = self.rest[i].max(xv as f64 + e);
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
                self.cand_bound[i * BOUND_CANDIDATES..(i + 1) * BOUND_CANDIDATES].fill(f32::INFINITY);
            }
        }
        self.last.copy_from_slice(new_labels);
        todo.len() as u64
    }
}

#[cfg(test)]
mod tests;
