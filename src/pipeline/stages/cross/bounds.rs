//! The exact bounds of the cross-cluster pass: which rows can have a near-duplicate in
//! their second cluster ([`near_boundary`], from (x − y)·(c1 − c2) ≤ ‖x − y‖·‖c1 − c2‖),
//! and which guest–owner pairs the pass can leave out ([`Pruning`]: the other side's turn
//! compares them, or the two rows' margins rule them out by the same inequality). Each
//! allows for the f32 roundings of its dots (Higham, *Accuracy and Stability of
//! Numerical Algorithms*, 2002, §3.1).

use std::ops::Range;

use crate::cluster::Centroids;

use super::Side;

/// Whether a unit row `x` nearest to centroid `c1` (dot `d1`) can have a
/// more similar than 1 − eps row among the rows nearest to `c2`, so that the
/// second-cluster pass must compare it with them. Unit centroids (cosine).
///
/// Exact, not a heuristic: for such a row y (label c2, so y·c2 ≥ y·c1),
/// (x·c1 − x·c2) + (y·c2 − y·c1) = (x − y)·(c1 − c2) ≤ ‖x − y‖·‖c1 − c2‖,
/// and x·y > 1 − eps means ‖x − y‖ < √(2·eps). Both gaps are ≥ 0, so
/// x·c1 − x·c2 < √(2·eps)·‖c1 − c2‖. Rows farther from the boundary are
/// skipped. x·c2 and ‖c1 − c2‖² are f32 sums, in whatever order: each is within
/// γ_d·Σ|aᵢbᵢ| of its exact value (Higham §3.1), so with `d1` (an f32 dot too)
/// the test allows 2γ, and γ of ‖c1 − c2‖² (γ = γ_{d+2}, counting the rounding of
/// each c1 − c2 and its square); a small slack covers the norms
/// of x and y, which are 1 only up to rounding.
pub fn near_boundary(x: &[f32], d1: f32, c1: &[f32], c2: &[f32], eps: f64) -> bool {
    boundary(x, d1, c1, c2, eps).0
}

/// Slack of the boundary tests for the norms of unit rows (1 only up to rounding) and
/// the rounding of the threshold: ‖x − y‖² < 2·eps + `SLACK` when x·y passes it.
pub(super) const SLACK: f64 = 1e-4;

/// γ_{d+2} of f32 sums of `d` products (Higham §3.1), with two more roundings (a
/// difference and its square).
fn gamma(d: usize) -> f64 {
    let n = (d + 2) as f64;
    let u = f64::from(f32::EPSILON) / 2.0;
    n * u / (1.0 - n * u)
}

/// An upper bound on ‖c1 − c2‖ from its f32 sum of squares `gap2` (each within γ).
fn gap_bound(gap2: f32, d: usize) -> f64 {
    (f64::from(gap2) / (1.0 - gamma(d))).sqrt()
}

/// What lets the cross pass leave guest–owner pairs out without losing a hit. For
/// owner cluster B, a guest x of cluster A and an owner y:
///
/// * **the other direction**: when y is a guest of A (its second cluster) and A > B,
///   the pair is compared in A's turn too (y a guest, x an owner), so B's turn leaves
///   it out. Both turns see the pair under the same conditions (both rows kept), and
///   its product is the same bits either way (an f32 chain of x·y or y·x, FMA being
///   commutative), so the hits are those of comparing every pair.
/// * **margins**: as in [`near_boundary`], x·y > 1 − eps needs
///   (x·a − x·b) + (y·b − y·a) ≤ ‖x − y‖·‖a − b‖ < √(2·eps)·‖a − b‖. The first gap is
///   x's margin m_x (b is x's second cluster); y·a is at most y's dot with its own
///   second-nearest centroid, so the second gap is at least y's margin m_y. Pairs with
///   m_x + m_y beyond that bound cannot be hits. The bound allows the slack (1e-4) that
///   [`near_boundary`] does, and 8γ for the margins' f32 dots: each of the four is
///   within γ of exact, and y's second cluster is the argmax of f32 dots, so y·a
///   exceeds its dot with it by at most 2γ.
///
/// The cross pass orders each cluster's guests and owners so that both rules leave
/// whole register tiles out
/// ([`I8Rows::dot_batch_where`](crate::distance::I8Rows::dot_batch_where)); on the 1M
/// benchmark they remove about a third of the guest–owner products.
#[derive(Clone, Copy)]
pub struct Pruning<'a> {
    labels: &'a [u32],
    second: &'a [u32],
    /// Each row's margin to its second-nearest centroid ([`boundary`]); empty where
    /// unknown (given assignments), and then only the first rule applies.
    margin: &'a [f32],
    centroids: &'a Centroids,
    eps: f64,
}

/// The order key of rows the first rule does not group ([`Pruning`]): after all others.
const POOL: u32 = u32::MAX;

/// One cluster's guests and owners in the order [`Pruning`] wants, with what its tile
/// test reads: per guest its group (source cluster, or [`POOL`]) and bound u_x on the
/// owners' margins; per owner its group (second cluster, or [`POOL`]) and margin.
pub(super) struct Ordered {
    pub(super) guests: Vec<u32>,
    pub(super) owners: Vec<u32>,
    gkey: Vec<u32>,
    gmax: Vec<f32>,
    okey: Vec<u32>,
    omargin: Vec<f32>,
}

impl<'a> Pruning<'a> {
    /// Pruning for rows with these `labels`, `second` clusters and `margin`s (empty:
    /// unknown) at `eps`.
    pub fn new(labels: &'a [u32], second: &'a [u32], margin: &'a [f32], centroids: &'a Centroids, eps: f64) -> Self {
        Pruning {
            labels,
            second,
            margin,
            centroids,
            eps,
        }
    }

    /// Row `id`'s margin, −∞ where unknown (never rules a pair out).
    fn margin(&self, id: u32) -> f32 {
        match self.margin.get(id as usize) {
            Some(&m) if !m.is_nan() => m,
            _ => f32::NEG_INFINITY,
        }
    }

    /// Orders cluster `b`'s guests (grouped by source cluster where it is above `b`,
    /// the largest bound first) and owners (grouped by second cluster where it is above
    /// `b`, the smallest margin first), so that the pairs [`Pruning`] leaves out fill
    /// whole tiles.
    pub(super) fn order(&self, b: u32, guests: &Side, owners: &Side) -> Ordered {
        let d = self.centroids.dim();
        let cb = self.centroids.row(b as usize);
        let radius = (2.0 * self.eps.max(0.0) + SLACK).sqrt();
        let slack = SLACK + 8.0 * gamma(d);
        // ‖a − b‖'s bound per source cluster a (a few per cluster).
        let mut gaps: Vec<(u32, f64)> = Vec::new();
        let mut g: Vec<(u32, f32, u32)> = (0..guests.len())
            .map(|x| {
                let id = guests.id(x);
                let a = self.labels[id as usize];
                let gap = match gaps.iter().find(|(c, _)| *c == a) {
                    Some(&(_, v)) => v,
                    None => {
                        let ca = self.centroids.row(a as usize);
                        let g2: f32 = ca.iter().zip(cb).map(|(u, v)| (u - v) * (u - v)).sum();
                        let v = gap_bound(g2, d);
                        gaps.push((a, v));
                        v
                    }
                };
                let m = f64::from(self.margin(id));
                // Rounded up: a larger bound rules out fewer pairs.
                let u = ((radius * gap + slack - m) as f32).next_up();
                let u = if u.is_nan() { f32::INFINITY } else { u };
                (if a > b { a } else { POOL }, u, guests.pos[x])
            })
            .collect();
        g.sort_unstable_by(|p, q| p.0.cmp(&q.0).then(q.1.total_cmp(&p.1)).then(p.2.cmp(&q.2)));
        let mut o: Vec<(u32, f32, u32)> = (0..owners.len())
            .map(|y| {
                let id = owners.id(y);
                let s = self.second[id as usize];
                (
                    if s != u32::MAX && s > b { s } else { POOL },
                    self.margin(id),
                    owners.pos[y],
                )
            })
            .collect();
        o.sort_unstable_by(|p, q| p.0.cmp(&q.0).then(p.1.total_cmp(&q.1)).then(p.2.cmp(&q.2)));
        Ordered {
            guests: g.iter().map(|t| t.2).collect(),
            gkey: g.iter().map(|t| t.0).collect(),
            gmax: g.iter().map(|t| t.1).collect(),
            owners: o.iter().map(|t| t.2).collect(),
            okey: o.iter().map(|t| t.0).collect(),
            omargin: o.iter().map(|t| t.1).collect(),
        }
    }
}

impl Ordered {
    /// Whether every pair of guests `gi` and owners `oj` (positions in this order) is
    /// one [`Pruning`] leaves out.
    pub(super) fn skips(&self, gi: Range<usize>, oj: Range<usize>) -> bool {
        let (gk, ok) = (&self.gkey[gi.clone()], &self.okey[oj.clone()]);
        // Sorted by key: one key throughout when the first and last agree.
        let k = gk[0];
        if k != POOL && gk[gk.len() - 1] == k && ok[0] == k && ok[ok.len() - 1] == k {
            return true;
        }
        let most = self.gmax[gi].iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let least = self.omargin[oj].iter().fold(f32::INFINITY, |a, &v| a.min(v));
        least > most
    }
}

/// [`near_boundary`], and the row's margin d1 − x·c2 (rounded to f32): for a row
/// whose `c2` is its second-nearest centroid, what [`Pruning`] bounds pairs with.
pub fn boundary(x: &[f32], d1: f32, c1: &[f32], c2: &[f32], eps: f64) -> (bool, f32) {
    let (d2, gap2) = {
        #[cfg(target_arch = "x86_64")]
        if crate::distance::kernel() == crate::distance::Kernel::Avx512 {
            // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
            unsafe { dot_and_gap_avx512(x, c1, c2) }
        } else {
            dot_and_gap(x, c1, c2)
        }
        #[cfg(not(target_arch = "x86_64"))]
        dot_and_gap(x, c1, c2)
    };
    let d = x.len().min(c1.len()).min(c2.len());
    let margin = f64::from(d1) - f64::from(d2);
    let near = margin <= (2.0 * eps.max(0.0) + SLACK).sqrt() * gap_bound(gap2, d) + SLACK + 2.0 * gamma(d);
    (near, margin as f32)
}

/// x·c2 and ‖c1 − c2‖², f32 sums in sixteen lanes.
pub(super) fn dot_and_gap(x: &[f32], c1: &[f32], c2: &[f32]) -> (f32, f32) {
    const W: usize = 16;
    let n = x.len().min(c1.len()).min(c2.len());
    let (mut d, mut g) = ([0f32; W], [0f32; W]);
    for (i, ((&a, &u), &v)) in x[..n].iter().zip(&c1[..n]).zip(&c2[..n]).enumerate() {
        d[i % W] += a * v;
        let t = u - v;
        g[i % W] += t * t;
    }
    (d.iter().sum(), g.iter().sum())
}

/// [`dot_and_gap`] in AVX-512 registers (the tail masked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot_and_gap_avx512(x: &[f32], c1: &[f32], c2: &[f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let n = x.len().min(c1.len()).min(c2.len());
    let (mut d, mut g) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    while i < n {
        let m: __mmask16 = if n - i >= 16 {
            0xFFFF
        } else {
            ((1u32 << (n - i)) - 1) as u16
        };
        // SAFETY: lanes at or past n are masked off, so every read is inside the slices.
        unsafe {
            let a = _mm512_maskz_loadu_ps(m, x.as_ptr().add(i));
            let u = _mm512_maskz_loadu_ps(m, c1.as_ptr().add(i));
            let v = _mm512_maskz_loadu_ps(m, c2.as_ptr().add(i));
            d = _mm512_fmadd_ps(a, v, d);
            let t = _mm512_sub_ps(u, v);
            g = _mm512_fmadd_ps(t, t, g);
        }
        i += 16;
    }
    (_mm512_reduce_add_ps(d), _mm512_reduce_add_ps(g))
}
