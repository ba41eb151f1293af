//! Centroids and nearest-centroid search: the assignment step of k-means
//! and of every scoring pass.
//!
//! A block of rows against all centroids is one GEMM (x·c for every pair,
//! [`crate::distance::dot_batch`]); cosine takes the largest dot product of
//! unit vectors, L2 the smallest ‖c‖² − 2x·c (‖x‖² is constant per row).
//! Rows are split into fixed-size chunks processed in parallel, centroids
//! into tiles that bound scratch memory for very large k.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::distance::{
    PackedRows, dot_batch_packed, f32_error_per_norm, kernel_pair_dots, norm_upper_bound, norm2, normalize,
};
use crate::{Error, Result};

/// Rows per parallel task: fixed, so sums have a fixed order.
pub(crate) const CHUNK_ROWS: usize = 256;
/// Centroids per GEMM tile: bounds scratch memory for very large k.
pub(crate) const TILE_K: usize = 1024;

/// How rows are compared with centroids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distance {
    /// Spherical k-means on L2-normalised rows: nearest = largest cosine.
    #[default]
    Cosine,
    /// Euclidean k-means on raw rows: nearest = smallest squared distance.
    L2,
}

impl fmt::Display for Distance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Distance::Cosine => "cosine",
            Distance::L2 => "l2",
        })
    }
}

impl FromStr for Distance {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cosine" | "spherical" => Ok(Distance::Cosine),
            "l2" | "euclidean" => Ok(Distance::L2),
            _ => Err(Error::param("--distance", format!("`{s}`: expected cosine or l2"))),
        }
    }
}

/// A set of centroids, ready for nearest-centroid search.
#[derive(Debug, Clone)]
pub struct Centroids {
    data: Vec<f32>,
    norms2: Vec<f32>,
    /// The centroids packed for the GEMM kernel, one entry per tile of
    /// [`TILE_K`]: packed once, searched by every chunk of every pass.
    tiles: Vec<PackedRows>,
    k: usize,
    dim: usize,
    distance: Distance,
    /// The bf16 and int8 packings of the certified search ([`super::CertifiedSearch`]),
    /// made on first use and shared by every search after it (the
    /// `dprune_nearest` function searches once per batch).
    pub(crate) certified: super::certified::Packing,
}

impl Centroids {
    /// Wraps `k × dim` row-major centroids. With [`Distance::Cosine`] they
    /// are L2-normalised here, so unnormalised centroids (from Euclidean
    /// k-means, cuML, ...) still give true cosines.
    pub fn try_new(mut data: Vec<f32>, dim: usize, distance: Distance) -> Result<Self> {
        if dim == 0 || data.is_empty() || !data.len().is_multiple_of(dim) {
            return Err(Error::Shape {
                op: "centroids",
                expected: "k x dim with k, dim >= 1".into(),
                got: format!("{} values for dim {dim}", data.len()),
            });
        }
        let k = data.len() / dim;
        for (j, c) in data.chunks_exact_mut(dim).enumerate() {
            if c.iter().any(|v| !v.is_finite()) {
                return Err(Error::param("centroids", format!("centroid {j} is not finite")));
            }
            if distance == Distance::Cosine {
                let n2 = norm2(c);
                if n2 == 0.0 {
                    return Err(Error::param("centroids", format!("centroid {j} is all zeros")));
                }
                // Already unit up to rounding (e.g. saved by an earlier run): keep the
                // exact values, so reloaded centroids reproduce the same scores.
                if (n2 - 1.0).abs() > 4.0 * f32::EPSILON {
                    normalize(c);
                }
            }
        }
        let norms2 = data.chunks_exact(dim).map(norm2).collect();
        let tiles = data.chunks(TILE_K * dim).map(|t| PackedRows::new(t, dim)).collect();
        Ok(Centroids {
            data,
            norms2,
            tiles,
            k,
            dim,
            distance,
            certified: Default::default(),
        })
    }

    /// Number of centroids.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The distance used for search.
    pub fn distance(&self) -> Distance {
        self.distance
    }

    /// The centroids, row-major `k × dim`.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Centroid `j`.
    pub fn row(&self, j: usize) -> &[f32] {
        &self.data[j * self.dim..(j + 1) * self.dim]
    }

    /// For every row of `rows` (row-major, `dim` columns): the nearest
    /// centroid into `labels` and the row's dot product with it into
    /// `dots`. Ties go to the lower centroid index. Parallel over fixed
    /// chunks of rows, so the result does not depend on the thread count.
    ///
    /// # Panics
    /// If the lengths of `rows`, `labels` and `dots` disagree.
    pub fn nearest(&self, rows: &[f32], labels: &mut [u32], dots: &mut [f32]) {
        let n = rows.len() / self.dim;
        assert_eq!(rows.len(), n * self.dim, "nearest: rows not a multiple of dim");
        assert_eq!(labels.len(), n, "nearest: labels length");
        assert_eq!(dots.len(), n, "nearest: dots length");
        rows.par_chunks(CHUNK_ROWS * self.dim)
            .zip(labels.par_chunks_mut(CHUNK_ROWS))
            .zip(dots.par_chunks_mut(CHUNK_ROWS))
            .for_each_init(Vec::new, |scratch, ((x, l), d)| {
                self.nearest_chunk(x, l, d, None, None, scratch)
            });
    }

    /// The dot of every row with its given centroid `labels[i]`, bit-identical
    /// to the dot [`Centroids::nearest`] reports when that centroid is the
    /// nearest (the same packed kernel, on the aligned block of columns that
    /// holds it).
    ///
    /// # Panics
    /// If the lengths disagree or a label is not below k.
    pub fn dots_to(&self, rows: &[f32], labels: &[u32], dots: &mut [f32]) {
        let d = self.dim;
        assert!(
            rows.len() == labels.len() * d && dots.len() == labels.len(),
            "dots_to: lengths disagree"
        );
        // Each row's own fused chain: the bits the kernel gives in any tile.
        rows.par_chunks(CHUNK_ROWS * d)
            .zip(labels.par_chunks(CHUNK_ROWS))
            .zip(dots.par_chunks_mut(CHUNK_ROWS))
            .for_each_init(Vec::new, |pairs, ((x, l), out)| {
                pairs.clear();
                pairs.extend(l.iter().enumerate().map(|(i, &l)| {
                    assert!((l as usize) < self.k, "dots_to: label {l} not below k = {}", self.k);
                    (i as u32, l)
                }));
                kernel_pair_dots(x, &self.data, d, pairs, out);
            });
    }

    /// [`Centroids::nearest`], and also the second-nearest centroid of
    /// every row into `second` (`u32::MAX` when k = 1; ties to the lower
    /// index). Used to find near-duplicates split by a cluster boundary.
    ///
    /// # Panics
    /// If the lengths disagree.
    pub fn nearest_two(&self, rows: &[f32], labels: &mut [u32], dots: &mut [f32], second: &mut [u32]) {
        let n = rows.len() / self.dim;
        assert!(
            rows.len() == n * self.dim && labels.len() == n && dots.len() == n && second.len() == n,
            "nearest_two: lengths disagree"
        );
        rows.par_chunks(CHUNK_ROWS * self.dim)
            .zip(labels.par_chunks_mut(CHUNK_ROWS))
            .zip(dots.par_chunks_mut(CHUNK_ROWS))
            .zip(second.par_chunks_mut(CHUNK_ROWS))
            .for_each_init(Vec::new, |scratch, (((x, l), d), s2)| {
                self.nearest_chunk(x, l, d, Some(s2), None, scratch)
            });
    }

    /// [`Centroids::nearest`] for cosine centroids, and for every row what
    /// k-means' drift bounds need ([`super::drift`]): its candidates (the
    /// centroids scoring within [`CANDIDATE_WINDOW`] of its best, at most
    /// [`BOUND_CANDIDATES`] of them, the label among them), ascending into
    /// `cand` (`n × BOUND_CANDIDATES`, `u32::MAX` in unused slots), and into
    /// `rest` an upper bound on both the exact dot and the f32 dot the search
    /// computes with any other centroid: the best score left out (or the
    /// window's edge) plus twice the f32 summation error (each computed dot is
    /// within E = γ_d·‖x‖·max‖c‖ of the exact one). After the centroids move
    /// by δ_j each, `rest + ‖x‖·max δ_j` bounds the exact dots again, and
    /// E more the f32 ones.
    ///
    /// # Panics
    /// If the lengths disagree or the distance is not cosine.
    pub(crate) fn nearest_bounded(
        &self,
        rows: &[f32],
        labels: &mut [u32],
        dots: &mut [f32],
        cand: &mut [u32],
        rest: &mut [f64],
    ) {
        let n = rows.len() / self.dim;
        assert!(
            self.distance == Distance::Cosine
                && rows.len() == n * self.dim
                && labels.len() == n
                && dots.len() == n
                && cand.len() == n * BOUND_CANDIDATES
                && rest.len() == n,
            "nearest_bounded: cosine, lengths"
        );
        let per_norm = 2.0 * self.f32_error();
        rows.par_chunks(CHUNK_ROWS * self.dim)
            .zip(labels.par_chunks_mut(CHUNK_ROWS))
            .zip(dots.par_chunks_mut(CHUNK_ROWS))
            .zip(cand.par_chunks_mut(CHUNK_ROWS * BOUND_CANDIDATES))
            .zip(rest.par_chunks_mut(CHUNK_ROWS))
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(scratch, tops), ((((x, l), d), cd), r)| {
                    tops.resize_with(l.len(), TopScores::default);
                    tops.iter_mut().for_each(TopScores::reset);
                    self.nearest_chunk(x, l, d, None, Some(tops), scratch);
                    for (i, t) in tops.iter_mut().enumerate() {
                        let norm = norm_upper_bound(&x[i * self.dim..(i + 1) * self.dim]);
                        r[i] = t.finish(
                            l[i],
                            per_norm * norm,
                            &mut cd[i * BOUND_CANDIDATES..(i + 1) * BOUND_CANDIDATES],
                        );
                    }
                },
            );
    }

    /// E per unit of ‖x‖: how far an f32 dot of a row with any centroid, summed
    /// in any order (the kernel's or a vectorized one), can be from the exact
    /// dot, γ_d·max‖c‖. Computed once per set of centroids.
    pub(crate) fn f32_error(&self) -> f64 {
        *self
            .certified
            .f32_err
            .get_or_init(|| f32_error_per_norm(self.dim) * self.max_norm())
    }

    /// An upper bound on max‖c_j‖ (1 up to rounding for cosine centroids).
    pub(crate) fn max_norm(&self) -> f64 {
        let m2 = (0..self.k)
            .map(|j| self.row(j).iter().map(|&v| v as f64 * v as f64).sum::<f64>())
            .fold(0.0, f64::max);
        m2.sqrt() * (1.0 + 1e-12)
    }

    /// Single-threaded nearest search for one chunk, tiling the centroids.
    fn nearest_chunk(
        &self,
        x: &[f32],
        labels: &mut [u32],
        dots: &mut [f32],
        mut second: Option<&mut [u32]>,
        mut tops: Option<&mut [TopScores]>,
        scratch: &mut Vec<f32>,
    ) {
        let m = labels.len();
        let mut best = vec![f32::NEG_INFINITY; m];
        let mut best2 = vec![f32::NEG_INFINITY; if second.is_some() { m } else { 0 }];
        if let Some(s2) = second.as_deref_mut() {
            s2.fill(u32::MAX);
        }
        for t0 in (0..self.k).step_by(TILE_K) {
            let t1 = (t0 + TILE_K).min(self.k);
            let kt = t1 - t0;
            scratch.resize(m * kt, 0.0);
            dot_batch_packed(x, &self.tiles[t0 / TILE_K], scratch);
            for i in 0..m {
                let row = &scratch[i * kt..(i + 1) * kt];
                let (mut bj, mut bv, mut bd) = (labels[i], best[i], dots[i]);
                let (j, v) = match self.distance {
                    Distance::Cosine => argmax_row(row, None),
                    // argmin ‖c‖² − 2x·c  ==  argmax 2x·c − ‖c‖²
                    Distance::L2 => argmax_row(row, Some(&self.norms2[t0..t1])),
                };
                if v > bv {
                    (bj, bv, bd) = ((t0 + j) as u32, v, row[j]);
                }
                if t0 == 0 && bv == f32::NEG_INFINITY {
                    // All NaN (cannot happen for validated rows): pick 0 deterministically.
                    (bj, bd) = (0, f32::NAN);
                }
                if let Some(t) = tops.as_deref_mut() {
                    let top = match self.distance {
                        Distance::Cosine => bv,
                        Distance::L2 => f32::NEG_INFINITY, // bounded searches are cosine only
                    };
                    t[i].offer(row, t0, top);
                }
                if let Some(s2) = second.as_deref_mut() {
                    // Second best over the tile, then merged with the running one; the
                    // running best moves to second place when this tile beat it.
                    let (mut sj, mut sv) = (s2[i], best2[i]);
                    if bj != labels[i] && best[i] > f32::NEG_INFINITY {
                        (sj, sv) = (labels[i], best[i]);
                    }
                    for (j, &v) in row.iter().enumerate() {
                        let jj = (t0 + j) as u32;
                        let v = match self.distance {
                            Distance::Cosine => v,
                            Distance::L2 => 2.0 * v - self.norms2[t0 + j],
                        };
                        if jj != bj && (v > sv || (v == sv && jj < sj)) {
                            (sj, sv) = (jj, v);
                        }
                    }
                    s2[i] = sj;
                    best2[i] = sv;
                }
                labels[i] = bj;
                best[i] = bv;
                dots[i] = bd;
            }
        }
    }

    /// Squared Euclidean distance of a row to centroid `j` from their dot
    /// product (clamped at 0 against rounding).
    #[inline]
    pub fn sq_dist_from_dot(&self, row_norm2: f32, j: usize, dot: f32) -> f32 {
        (row_norm2 - 2.0 * dot + self.norms2[j]).max(0.0)
    }
}

/// Candidates kept per row for k-means' drift bounds, at most
/// ([`Centroids::nearest_bounded`]; unused slots hold `u32::MAX`).
pub(crate) const BOUND_CANDIDATES: usize = 64;
/// Centroids scoring within this of a row's best are its candidates (up to
/// [`BOUND_CANDIDATES`]): the wider, the more the centroids may move before
/// the row needs a full search again, and the more dots each step computes.
pub(crate) const CANDIDATE_WINDOW: f32 = 0.25;

/// The centroids scoring within [`CANDIDATE_WINDOW`] of a row's best, with
/// their scores; every other centroid offered scored below `cut`.
#[derive(Debug, Clone)]
pub(crate) struct TopScores {
    found: Vec<(f32, u32)>,
    cut: f32,
    offered: usize,
}

impl Default for TopScores {
    fn default() -> Self {
        TopScores {
            found: Vec::new(),
            cut: f32::NEG_INFINITY,
            offered: 0,
        }
    }
}

impl TopScores {
    /// Empties it for another row.
    pub(crate) fn reset(&mut self) {
        self.found.clear();
        self.cut = f32::NEG_INFINITY;
        self.offered = 0;
    }

    /// Offers the scores of centroids `offset..offset + scores.len()`, when
    /// the best score seen so far (these included) is `top`.
    #[inline]
    pub(crate) fn offer(&mut self, scores: &[f32], offset: usize, top: f32) {
        let cut = top - CANDIDATE_WINDOW;
        if cut > self.cut {
            self.cut = cut;
            self.found.retain(|p| p.0 >= cut);
        }
        let found = &mut self.found;
        scan_at_least(scores, self.cut, |j, v| found.push((v, offset as u32 + j)));
        self.offered += scores.len();
    }

    /// Writes the candidates (the best [`BOUND_CANDIDATES`] found, with
    /// `label` among them) ascending into `cand`, `u32::MAX` in unused slots,
    /// and returns the bound on every other centroid's f32 and exact dot: the best
    /// score left out plus `err` (the distance from a score to any f32 dot of
    /// the same pair); −∞ when none is left out.
    pub(crate) fn finish(&mut self, label: u32, err: f64, cand: &mut [u32]) -> f64 {
        let f = &mut self.found;
        let mut left = if self.offered > f.len() {
            self.cut
        } else {
            f32::NEG_INFINITY
        };
        let by_score = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if f.len() > BOUND_CANDIDATES {
            f.select_nth_unstable_by(BOUND_CANDIDATES, by_score);
            left = left.max(f[BOUND_CANDIDATES..].iter().fold(f32::NEG_INFINITY, |a, p| a.max(p.0)));
            f.truncate(BOUND_CANDIDATES);
        }
        if !f.iter().any(|p| p.1 == label) {
            // The label scored below the candidates kept (possible with bf16 scores): it
            // takes the place of the lowest, which joins the rest.
            if f.len() == BOUND_CANDIDATES {
                let (pos, low) = f
                    .iter()
                    .enumerate()
                    .fold((0, f32::INFINITY), |a, (q, p)| if p.0 < a.1 { (q, p.0) } else { a });
                left = left.max(low);
                f[pos] = (f32::NAN, label);
            } else {
                f.push((f32::NAN, label));
            }
        }
        cand.fill(u32::MAX);
        for (c, p) in cand.iter_mut().zip(f.iter()) {
            *c = p.1;
        }
        cand.sort_unstable();
        if left == f32::NEG_INFINITY {
            f64::NEG_INFINITY
        } else {
            left as f64 + err + 1e-30
        }
    }
}

/// Calls `f(j, b[j])` for every `j` with `b[j] >= cut`, ascending; compiled
/// for AVX-512 where the f32 kernel is (same calls on every path).
#[inline]
pub(crate) fn scan_at_least(b: &[f32], cut: f32, f: impl FnMut(u32, f32)) {
    #[cfg(target_arch = "x86_64")]
    if crate::distance::kernel() == crate::distance::Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
        return unsafe { scan_at_least_avx512(b, cut, f) };
    }
    scan_at_least_body(b, cut, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scan_at_least_avx512(b: &[f32], cut: f32, mut f: impl FnMut(u32, f32)) {
    use std::arch::x86_64::*;
    // One mask compare per sixteen scores; most masks are empty, and the set bits of
    // the others come out in ascending order. `_CMP_GE_OQ` is false for NaN, like
    // `v >= cut`.
    let (n, p) = (b.len(), b.as_ptr());
    let c = _mm512_set1_ps(cut);
    let mut j = 0;
    while j < n {
        let live: __mmask16 = if n - j >= 16 { !0 } else { (1u16 << (n - j)) - 1 };
        // SAFETY: `live` covers only indices below `n`.
        let v = unsafe { _mm512_maskz_loadu_ps(live, p.add(j)) };
        let mut m = _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(live, v, c);
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            f((j + l) as u32, b[j + l]);
            m &= m - 1;
        }
        j += 16;
    }
}

#[inline(always)]
fn scan_at_least_body(b: &[f32], cut: f32, mut f: impl FnMut(u32, f32)) {
    // Most 16-blocks hold no candidate: test them with one vector compare first.
    for (c, ch) in b.chunks(16).enumerate() {
        if ch.iter().fold(false, |a, &v| a | (v >= cut)) {
            for (l, &v) in ch.iter().enumerate() {
                if v >= cut {
                    f((c * 16 + l) as u32, v);
                }
            }
        }
    }
}

/// The portable [`scan_at_least`], for tests of the vector one.
#[cfg(test)]
pub(crate) fn scan_at_least_plain(b: &[f32], cut: f32, f: impl FnMut(u32, f32)) {
    scan_at_least_body(b, cut, f)
}

/// [`argmax`] of a tile row (`2·v − bias[j]` with a bias), compiled for the
/// widest vectors this CPU has: every path returns the same result (only
/// comparisons and selects), the AVX-512 one four times the lanes of the
/// baseline target's SSE2.
#[inline]
pub(crate) fn argmax_row(row: &[f32], bias: Option<&[f32]>) -> (usize, f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::distance::kernel() == crate::distance::Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
        return unsafe { argmax_row_avx512(row, bias) };
    }
    argmax_row_body(row, bias)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn argmax_row_avx512(row: &[f32], bias: Option<&[f32]>) -> (usize, f32) {
    argmax_row_body(row, bias)
}

#[inline(always)]
fn argmax_row_body(row: &[f32], bias: Option<&[f32]>) -> (usize, f32) {
    match bias {
        None => argmax(row, |_, v| v),
        Some(b) => argmax(row, |j, v| 2.0 * v - b[j]),
    }
}

/// Lanes of the vectorised arg-max scan.
const ARGMAX_LANES: usize = 16;

/// The first index of the largest `f(j, row[j])` and that value
/// (`(0, -inf)` when none is larger than -inf; NaN never wins). Lane-wise
/// running maxima with strict `>` keep each lane's first index; the lanes are
/// then merged by value and lowest index, which is the first occurrence
/// overall. Written so LLVM vectorises it (compare + blend per lane); a lane
/// keeps the 32-bit number of its best block, not a 64-bit index, so its
/// indices fill one vector.
#[inline(always)]
fn argmax(row: &[f32], f: impl Fn(usize, f32) -> f32) -> (usize, f32) {
    let mut bv = [f32::NEG_INFINITY; ARGMAX_LANES];
    let mut bc = [0u32; ARGMAX_LANES];
    let chunks = row.chunks_exact(ARGMAX_LANES);
    let rest = chunks.remainder();
    for (c, ch) in chunks.enumerate() {
        let base = c * ARGMAX_LANES;
        for l in 0..ARGMAX_LANES {
            let v = f(base + l, ch[l]);
            let better = v > bv[l];
            bv[l] = if better { v } else { bv[l] };
            bc[l] = if better { c as u32 } else { bc[l] };
        }
    }
    let (mut j, mut best) = (0usize, f32::NEG_INFINITY);
    for l in 0..ARGMAX_LANES {
        let i = bc[l] as usize * ARGMAX_LANES + l;
        if bv[l] > best || (bv[l] == best && bv[l] > f32::NEG_INFINITY && i < j) {
            (j, best) = (i, bv[l]);
        }
    }
    let base = row.len() - rest.len();
    for (l, &x) in rest.iter().enumerate() {
        let v = f(base + l, x);
        if v > best {
            (j, best) = (base + l, v);
        }
    }
    (j, best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_nearest_matches_a_sort() {
        let mut r = crate::rng::Rng::new(5);
        let (k, dim, n) = (2500, 6, 300); // k > TILE_K: the merge across tiles is exercised
        let c: Vec<f32> = (0..k * dim).map(|_| r.normal() as f32).collect();
        let cs = Centroids::try_new(c, dim, Distance::Cosine).unwrap();
        let mut rows: Vec<f32> = (0..n * dim).map(|_| r.normal() as f32).collect();
        rows.chunks_exact_mut(dim).for_each(|x| {
            crate::distance::normalize(x);
        });
        let (mut l, mut d, mut s2) = (vec![0; n], vec![0.0; n], vec![0; n]);
        cs.nearest_two(&rows, &mut l, &mut d, &mut s2);
        let (mut l1, mut d1) = (vec![0; n], vec![0.0; n]);
        cs.nearest(&rows, &mut l1, &mut d1);
        assert_eq!(l, l1);
        for i in 0..n {
            let x = &rows[i * dim..(i + 1) * dim];
            let mut sims: Vec<(f32, u32)> = (0..k).map(|j| (crate::distance::dot(x, cs.row(j)), j as u32)).collect();
            sims.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            assert_eq!((l[i], s2[i]), (sims[0].1, sims[1].1), "row {i}");
        }
    }

    #[test]
    fn dots_to_the_nearest_are_the_nearest_search_bits() {
        let mut r = crate::rng::Rng::new(9);
        let (k, dim, n) = (1100, 40, 500); // two tiles, the last block partial
        let c: Vec<f32> = (0..k * dim).map(|_| r.normal() as f32).collect();
        let cs = Centroids::try_new(c, dim, Distance::Cosine).unwrap();
        let rows: Vec<f32> = (0..n * dim).map(|_| r.normal() as f32).collect();
        let (mut l, mut d) = (vec![0; n], vec![0.0; n]);
        cs.nearest(&rows, &mut l, &mut d);
        let mut got = vec![0.0; n];
        cs.dots_to(&rows, &l, &mut got);
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            d.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        // Any other centroid: its dot, to rounding.
        let other: Vec<u32> = (0..n as u32).map(|i| (i * 7) % k as u32).collect();
        cs.dots_to(&rows, &other, &mut got);
        for i in 0..n {
            let want = crate::distance::dot_reference(&rows[i * dim..(i + 1) * dim], cs.row(other[i] as usize));
            assert!((f64::from(got[i]) - want).abs() < 1e-4, "row {i}");
        }
    }

    proptest::proptest! {
        #[test]
        fn argmax_is_the_first_largest(v in proptest::collection::vec(-3i8..3, 0..70)) {
            // Small integers make ties common.
            let row: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            let want = row
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |(bj, bv), (j, &x)| if x > bv { (j, x) } else { (bj, bv) });
            proptest::prop_assert_eq!(argmax(&row, |_, x| x), want);
            let neg = argmax(&row, |j, x| x - j as f32 * 0.25);
            let want_neg = row.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |(bj, bv), (j, &x)| {
                let y = x - j as f32 * 0.25;
                if y > bv { (j, y) } else { (bj, bv) }
            });
            proptest::prop_assert_eq!(neg, want_neg);
        }
    }

    #[test]
    fn nearest_ties_go_to_lowest_index() {
        let c = Centroids::try_new(vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0], 2, Distance::Cosine).unwrap();
        let mut l = [9u32];
        let mut d = [0f32];
        c.nearest(&[1.0, 0.0], &mut l, &mut d);
        assert_eq!((l[0], d[0]), (0, 1.0));
    }

    #[test]
    fn unnormalised_centroids_give_true_cosines() {
        let c = Centroids::try_new(vec![10.0, 0.0, 0.0, 0.5], 2, Distance::Cosine).unwrap();
        let mut l = [0u32];
        let mut d = [0f32];
        let x = [0.6f32, 0.8];
        c.nearest(&x, &mut l, &mut d);
        assert_eq!(l[0], 1);
        assert!((d[0] - 0.8).abs() < 1e-6);
    }
}
