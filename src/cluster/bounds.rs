//! Exact spherical k-means assignment that skips the work whose outcome is
//! already known: group bounds in the style of Yinyang k-means (Ding et al.,
//! "Yinyang K-Means: A Drop-In Replacement of the Classic K-Means with
//! Consistent Speedup", ICML 2015), in inner-product form, in GEMM shape, and
//! made rigorous against floating-point rounding.
//!
//! Centroids are split into groups of whole packed blocks (32 centroids, so a
//! group is one slice of the packed GEMM operand). For a row `x` (‖x‖ ≤ r),
//! when the centroids move by δ_j = ‖c'_j − c_j‖, Cauchy–Schwarz gives
//! |x·c'_j − x·c_j| ≤ r·δ_j. Every row keeps, per group g, an upper bound
//! u_g on the exact max x·c_j over the group's centroids other than its own
//! `a`; after an update u_g grows by r·max_{j∈g} δ_j. The row's own dot
//! x·c'_a is computed by the same kernel as the full search
//! ([`dot_batch_packed_cols`] is bit-identical to [`dot_batch_packed`]), and
//! a computed dot is within E = γ_d·r·max‖c_j‖ of the exact one, γ_d =
//! d·u/(1 − d·u), u = 2⁻²⁴ (Higham, *Accuracy and Stability of Numerical
//! Algorithms*, 2002, §3.1). A group with own > u_g + E cannot hold a
//! centroid whose computed dot reaches the own one, so only the other groups
//! are multiplied (rows gathered per group, one small GEMM per group and
//! chunk); a row whose groups all pass keeps its label and its own dot.
//! The new label is the first largest computed dot among the own centroid and
//! the groups computed — exactly the full search's first largest over all k
//! — and the computed groups' bounds are reset to their best (or second best,
//! for the label's group) computed dot plus E.
//!
//! Labels and dots are therefore bit-identical to [`Centroids::nearest`] at
//! every iteration — and so are the centroids, the inertia history and the
//! iteration count of a fit; only the amount of work changes. Bounds are
//! computed in f64 and stored as f32 rounded up. Work is split into fixed
//! chunks and merged in row order: nothing depends on the thread count.

use rayon::prelude::*;

use crate::cluster::centroids::{CHUNK_ROWS, Centroids, TILE_K};
use crate::distance::{PACKED_COL_ALIGN, dot_batch_packed, dot_batch_packed_cols};

/// Unit roundoff of f32.
const UNIT_ROUNDOFF: f64 = 1.0 / (1u64 << 24) as f64;
/// At most this many groups per row (bounds memory: n × groups × 4 bytes).
const MAX_GROUPS: usize = 64;

/// Per-row group bounds of a spherical k-means fit (see the module doc).
#[derive(Debug, Clone)]
pub(crate) struct Bounds {
    dim: usize,
    /// The largest row norm, rounded up.
    r: f64,
    /// Centroids per group (a multiple of the packed block width).
    width: usize,
    /// Groups (set by the first search).
    groups: usize,
    /// `n × groups`: upper bounds on the exact dots of each group but the own centroid.
    upper: Vec<f32>,
    /// Row-group products computed by the last call, in units of one row
    /// against one group (a full search is `n × groups`).
    pub computed: usize,
}

/// The smallest f32 ≥ `v`.
#[inline]
fn up(v: f64) -> f32 {
    let f = v as f32;
    if (f as f64) < v { f.next_up() } else { f }
}

/// First largest value of `v` (index, value) and the largest of the others
/// (`-inf` when none). NaN never wins.
#[inline]
fn top_two(v: &[f32]) -> (usize, f32, f32) {
    let (mut j, mut b, mut s) = (0usize, f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (i, &x) in v.iter().enumerate() {
        if x > b {
            (j, s, b) = (i, b, x);
        } else if x > s {
            s = x;
        }
    }
    (j, b, s)
}

impl Bounds {
    /// Bounds for the rows of `data` (`n × dim`, row-major); nothing is known yet.
    pub fn new(data: &[f32], dim: usize) -> Self {
        let r2 = data
            .par_chunks(dim)
            .map(|x| x.iter().map(|&v| v as f64 * v as f64).sum::<f64>())
            .reduce(|| 0.0, f64::max);
        Bounds {
            dim,
            r: r2.sqrt() * (1.0 + 1e-9),
            width: PACKED_COL_ALIGN,
            groups: 0,
            upper: Vec::new(),
            computed: 0,
        }
    }

    /// E: the most a computed dot of a row with a centroid of `c` can differ
    /// from the exact one (with 1% slack).
    fn err(&self, c: &Centroids) -> f64 {
        let cmax = (0..c.k())
            .map(|j| c.row(j).iter().map(|&v| v as f64 * v as f64).sum::<f64>())
            .fold(0.0, f64::max)
            .sqrt();
        let d = self.dim as f64;
        let gamma = d * UNIT_ROUNDOFF / (1.0 - d * UNIT_ROUNDOFF);
        gamma * self.r * cmax * 1.01 + 1e-30
    }

    /// Searches every row in full: `labels`/`dots` as [`Centroids::nearest`]
    /// gives them, and every bound set.
    pub fn full(&mut self, c: &Centroids, data: &[f32], labels: &mut [u32], dots: &mut [f32]) {
        let (k, dim, n) = (c.k(), self.dim, labels.len());
        assert!(data.len() == n * dim && dots.len() == n, "Bounds::full: lengths");
        let blocks = k.div_ceil(PACKED_COL_ALIGN);
        // A power-of-two number of blocks, so groups never straddle a TILE_K tile.
        self.width = (blocks.div_ceil(MAX_GROUPS).next_power_of_two() * PACKED_COL_ALIGN).min(TILE_K);
        self.groups = k.div_ceil(self.width);
        let (w, g) = (self.width, self.groups);
        let e = self.err(c);
        self.upper = vec![0f32; n * g];
        data.par_chunks(CHUNK_ROWS * dim)
            .zip(labels.par_chunks_mut(CHUNK_ROWS))
            .zip(dots.par_chunks_mut(CHUNK_ROWS))
            .zip(self.upper.par_chunks_mut(CHUNK_ROWS * g))
            .for_each_init(Vec::new, |scratch, (((x, l), d), u)| {
                let m = l.len();
                // (label, its dot) per row, merged across tiles as `Centroids::nearest_chunk` does.
                let mut best = vec![(0u32, f32::NEG_INFINITY); m];
                let mut tops = vec![(0usize, f32::NEG_INFINITY, f32::NEG_INFINITY); m * g];
                for t0 in (0..k).step_by(TILE_K) {
                    let kt = (t0 + TILE_K).min(k) - t0;
                    scratch.resize(m * kt, 0.0);
                    dot_batch_packed(x, c.tile(t0 / TILE_K), scratch);
                    for i in 0..m {
                        let row = &scratch[i * kt..(i + 1) * kt];
                        // Groups never straddle tiles: TILE_K is a multiple of the group width.
                        for (gi, gr) in row.chunks(w).enumerate() {
                            let gg = t0 / w + gi;
                            let (j, v1, v2) = top_two(gr);
                            tops[i * g + gg] = (t0 + gi * w + j, v1, v2);
                            if v1 > best[i].1 {
                                best[i] = ((t0 + gi * w + j) as u32, v1);
                            }
                        }
                    }
                }
                for i in 0..m {
                    let (lab, v) = best[i];
                    // All NaN (cannot happen for validated rows): label 0 and a NaN dot, like `nearest`.
                    (l[i], d[i]) = if v == f32::NEG_INFINITY {
                        (0, f32::NAN)
                    } else {
                        (lab, v)
                    };
                    for gg in 0..g {
                        let (j, v1, v2) = tops[i * g + gg];
                        let b = if j == l[i] as usize { v2 } else { v1 };
                        u[i * g + gg] = up(b as f64 + e);
                    }
                }
            });
        self.computed = n * g;
    }

    /// One assignment after the centroids moved from `old` to `c`: `prev` are
    /// the labels found against `old` (by [`Bounds::full`] or this). Writes
    /// `labels`/`dots` exactly as [`Centroids::nearest`] against `c` would.
    ///
    /// # Panics
    /// If `old` and `c` differ in k or dim, [`Bounds::full`] has not run, or
    /// the lengths disagree.
    pub fn step(
        &mut self,
        old: &Centroids,
        c: &Centroids,
        data: &[f32],
        prev: &[u32],
        labels: &mut [u32],
        dots: &mut [f32],
    ) {
        let (k, dim, n, g, w) = (c.k(), self.dim, prev.len(), self.groups, self.width);
        assert!(
            old.k() == k && old.dim() == dim && c.dim() == dim,
            "Bounds::step: centroid shapes"
        );
        assert!(
            g > 0 && data.len() == n * dim && labels.len() == n && dots.len() == n && self.upper.len() == n * g,
            "Bounds::step: lengths"
        );
        // How far each group's centroids moved at most, times the largest row norm.
        let drift: Vec<f64> = (0..g)
            .into_par_iter()
            .map(|gg| {
                (gg * w..((gg + 1) * w).min(k))
                    .map(|j| {
                        let s: f64 = old
                            .row(j)
                            .iter()
                            .zip(c.row(j))
                            .map(|(&p, &q)| {
                                let t = q as f64 - p as f64;
                                t * t
                            })
                            .sum();
                        s.sqrt()
                    })
                    .fold(0.0, f64::max)
                    * (1.0 + 1e-9)
                    * self.r
            })
            .collect();
        let e = self.err(c);
        let own = own_dots(c, data, prev);
        // Grow the bounds; list the (row, group) pairs that must be computed, in row order.
        let parts: Vec<(Vec<u32>, Vec<u32>)> = self
            .upper
            .par_chunks_mut(CHUNK_ROWS * g)
            .enumerate()
            .map(|(ci, u)| {
                let (mut rows, mut grps) = (Vec::new(), Vec::new());
                for (r, ur) in u.chunks_exact_mut(g).enumerate() {
                    let i = ci * CHUNK_ROWS + r;
                    let o = own[i] as f64;
                    for (gg, b) in ur.iter_mut().enumerate() {
                        *b = up(*b as f64 + drift[gg]);
                        if o.partial_cmp(&(*b as f64 + e)) != Some(std::cmp::Ordering::Greater) {
                            rows.push(i as u32);
                            grps.push(gg as u32);
                        }
                    }
                }
                (rows, grps)
            })
            .collect();
        let pair_row: Vec<u32> = parts.iter().flat_map(|p| p.0.iter().copied()).collect();
        let pair_grp: Vec<u32> = parts.iter().flat_map(|p| p.1.iter().copied()).collect();
        drop(parts);
        let tops = group_tops(c, data, w, &pair_row, &pair_grp);
        self.computed = pair_row.len();
        // Per row: the first largest of the own dot and the computed groups' bests.
        let starts: Vec<usize> = {
            let mut s = vec![0usize; n + 1];
            for &i in &pair_row {
                s[i as usize + 1] += 1;
            }
            for i in 0..n {
                s[i + 1] += s[i];
            }
            s
        };
        self.upper
            .par_chunks_mut(CHUNK_ROWS * g)
            .zip(labels.par_chunks_mut(CHUNK_ROWS))
            .zip(dots.par_chunks_mut(CHUNK_ROWS))
            .enumerate()
            .for_each(|(ci, ((u, l), d))| {
                for r in 0..l.len() {
                    let i = ci * CHUNK_ROWS + r;
                    let (a, o) = (prev[i] as usize, own[i]);
                    let ps = starts[i]..starts[i + 1];
                    let (mut lab, mut best) = if o.is_nan() { (0, f32::NEG_INFINITY) } else { (a, o) };
                    for p in ps.clone() {
                        let (j, v1, _) = tops[p];
                        let j = j as usize;
                        if v1 > best || (v1 == best && j < lab) {
                            (lab, best) = (j, v1);
                        }
                    }
                    // All NaN (cannot happen for validated rows): label 0 and a NaN dot, like `nearest`.
                    (l[r], d[r]) = if best == f32::NEG_INFINITY {
                        (0, f32::NAN)
                    } else {
                        (lab as u32, best)
                    };
                    let lab = l[r] as usize;
                    let ur = &mut u[r * g..(r + 1) * g];
                    for p in ps {
                        let (j, v1, v2) = tops[p];
                        let gg = pair_grp[p] as usize;
                        ur[gg] = up(if j as usize == lab { v2 } else { v1 } as f64 + e);
                    }
                    if lab != a {
                        // The old label's group now has `a` among its others (if that group
                        // was computed its bound already counts it).
                        let ga = a / w;
                        ur[ga] = ur[ga].max(up(o as f64 + e));
                    }
                }
            });
    }
}

/// Copies the rows `rows` of `data` into `x`, contiguous.
fn gather(data: &[f32], dim: usize, rows: &[u32], x: &mut Vec<f32>) {
    x.clear();
    for &i in rows {
        x.extend_from_slice(&data[i as usize * dim..(i as usize + 1) * dim]);
    }
}

/// For every pair p (row `rows[p]`, group `groups[p]` of `w` centroids):
/// `pick(p, dots, col0)` of the row's computed dots with the group's
/// centroids (`col0` = the group's first centroid). Pairs are bucketed by
/// group and each bucket multiplied in chunks by that group's slice of the
/// packed centroids only, bit-identical to the full search's dots.
fn per_group<T: Send + Default + Clone>(
    c: &Centroids,
    data: &[f32],
    w: usize,
    rows: &[u32],
    groups: &[u32],
    pick: impl Fn(usize, &[f32], usize) -> T + Sync,
) -> Vec<T> {
    let (k, dim) = (c.k(), c.dim());
    let g = k.div_ceil(w);
    // Counting sort of the pairs by group (stable: ascending rows in a group).
    let mut starts = vec![0usize; g + 1];
    for &gg in groups {
        starts[gg as usize + 1] += 1;
    }
    for i in 0..g {
        starts[i + 1] += starts[i];
    }
    let mut order = vec![0u32; rows.len()];
    let mut fill = starts.clone();
    for (p, &gg) in groups.iter().enumerate() {
        order[fill[gg as usize]] = p as u32;
        fill[gg as usize] += 1;
    }
    let tasks: Vec<(usize, &[u32])> = (0..g)
        .flat_map(|gg| {
            order[starts[gg]..starts[gg + 1]]
                .chunks(CHUNK_ROWS)
                .map(move |ch| (gg, ch))
        })
        .collect();
    let parts: Vec<Vec<T>> = tasks
        .par_iter()
        .map_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(x, out, idx): &mut (Vec<f32>, Vec<f32>, Vec<u32>), &(gg, pairs)| {
                idx.clear();
                idx.extend(pairs.iter().map(|&p| rows[p as usize]));
                gather(data, dim, idx, x);
                let col0 = gg * w;
                let t0 = col0 / TILE_K * TILE_K;
                let cols = col0 - t0..(col0 + w).min(k) - t0;
                let cw = cols.len();
                out.resize(pairs.len() * cw, 0.0);
                dot_batch_packed_cols(x, c.tile(t0 / TILE_K), cols, out);
                pairs
                    .iter()
                    .zip(out.chunks_exact(cw))
                    .map(|(&p, o)| pick(p as usize, o, col0))
                    .collect()
            },
        )
        .collect();
    let mut res = vec![T::default(); rows.len()];
    for ((_, pairs), vals) in tasks.iter().zip(parts) {
        for (&p, v) in pairs.iter().zip(vals) {
            res[p as usize] = v;
        }
    }
    res
}

/// For every pair (row, group): the group's first largest computed dot
/// (centroid, value) and its second largest value.
fn group_tops(c: &Centroids, data: &[f32], w: usize, rows: &[u32], groups: &[u32]) -> Vec<(u32, f32, f32)> {
    per_group(c, data, w, rows, groups, |_, o, col0| {
        let (j, v1, v2) = top_two(o);
        ((col0 + j) as u32, v1, v2)
    })
}

/// Every row's computed dot with centroid `labels[i]`, bit-identical to the
/// full search's: each row is multiplied by its centroid's packed block only
/// (32/k of a full search).
fn own_dots(c: &Centroids, data: &[f32], labels: &[u32]) -> Vec<f32> {
    let blocks: Vec<u32> = labels.iter().map(|&l| l / PACKED_COL_ALIGN as u32).collect();
    let rows: Vec<u32> = (0..labels.len() as u32).collect();
    per_group(c, data, PACKED_COL_ALIGN, &rows, &blocks, |p, o, col0| {
        o[labels[p] as usize - col0]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Distance;
    use crate::distance::normalize;
    use crate::rng::Rng;

    /// `n` random unit rows.
    fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n)
            .flat_map(|_| {
                let mut v: Vec<f32> = (0..dim).map(|_| r.normal() as f32).collect();
                normalize(&mut v);
                v
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn steps_match_the_full_search_bit_for_bit() {
        // k > TILE_K exercises tiles; k not a multiple of 32 a short block; k > 64·32 wide groups.
        for &(n, dim, k) in &[(700, 24, 37), (300, 8, 1100), (500, 16, 1), (200, 6, 2100)] {
            let data = unit_rows(n, dim, 3);
            let mut cents = unit_rows(k, dim, 4);
            let mut b = Bounds::new(&data, dim);
            let c0 = Centroids::try_new(cents.clone(), dim, Distance::Cosine).unwrap();
            let (mut l, mut d) = (vec![0; n], vec![0.0; n]);
            b.full(&c0, &data, &mut l, &mut d);
            let (mut l1, mut d1) = (vec![0; n], vec![0.0; n]);
            c0.nearest(&data, &mut l1, &mut d1);
            assert_eq!(l, l1);
            assert_eq!(bits(&d), bits(&d1));
            let mut old = c0;
            let mut r = Rng::new(9);
            for step in 0..6 {
                // Small moves (much skipped), one large move (little).
                let scale = if step == 3 { 0.5 } else { 0.001 };
                cents.iter_mut().for_each(|v| *v += scale * r.normal() as f32);
                let c = Centroids::try_new(cents.clone(), dim, Distance::Cosine).unwrap();
                let prev = l.clone();
                b.step(&old, &c, &data, &prev, &mut l, &mut d);
                c.nearest(&data, &mut l1, &mut d1);
                assert_eq!(l, l1, "n {n} k {k} step {step}");
                assert_eq!(bits(&d), bits(&d1), "n {n} k {k} step {step}");
                if k > 1 && step != 3 {
                    assert!(b.computed < n * b.groups, "nothing skipped at step {step}");
                }
                old = c;
            }
        }
    }
}
