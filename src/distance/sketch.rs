//! An int8 sketch of a set of points that rules out most of k-means++'s distance
//! updates without reading the points, with the same values bit for bit.
//!
//! k-means++ (Arthur & Vassilvitskii 2007) keeps, for every point, its smallest squared
//! distance d² to a chosen centre, and after each pick sets d² = min(d², ‖p − c‖²)
//! ([`min_l2_update`](super::min_l2_update)): a thousand passes over the same points,
//! bound by memory. Each point p is kept here as integers q and a scale s (p̃ = s·q,
//! max|p| / 127 per point) with r_p ≥ ‖p − p̃‖. Then, by the triangle inequality,
//!
//! ‖p − c‖ ≥ ‖p̃ − c̃‖ − r_p − r_c,  ‖p̃ − c̃‖² = s_p²·Σq_p² + s_c²·Σq_c² − 2·s_p·s_c·Σq_p·q_c,
//!
//! where the integer sums are exact. The f32 value [`l2_squared`](super::l2_squared)
//! computes is at least (1 − γ) times the exact squared distance (nonnegative terms;
//! [`l2_rel_error`]), so when that lower bound, less γ, reaches d², the update would leave
//! d² as it is and is skipped. Every f64 step carries its own margin.

use rayon::prelude::*;

use super::{Kernel, kernel, l2_squared};

/// Points as int8 integers with per-point scales and error radii.
pub struct I8Sketch {
    dim: usize,
    q: Vec<i8>,
    /// s_p.
    scale: Vec<f64>,
    /// s_p²·Σq², the exact ‖p̃‖² up to f64 rounding.
    sq: Vec<f64>,
    /// An upper bound on ‖p − p̃‖ (+∞ for a point that cannot be scaled).
    resid: Vec<f64>,
}

/// How far [`l2_squared`](super::l2_squared)'s value can be from the exact squared
/// distance, relative to it, in `dim` dimensions: the terms are nonnegative, so the
/// subtraction, the square and the at most `dim + 2·LANES` additions along any path give at
/// most γ of `dim + 64` roundings.
pub fn l2_rel_error(dim: usize) -> f64 {
    super::f32_error_per_norm(dim + 64)
}

impl I8Sketch {
    /// Sketches the rows of the row-major `pts` (`dim` columns).
    pub fn new(pts: &[f32], dim: usize) -> Self {
        assert!(dim > 0 && pts.len().is_multiple_of(dim), "I8Sketch: pts is not n x dim");
        let n = pts.len() / dim;
        let mut q = vec![0i8; n * dim];
        // Rows are independent: sketched in parallel, the same values on any thread count.
        let per_row: Vec<(f64, f64, f64)> = pts
            .par_chunks_exact(dim)
            .zip(q.par_chunks_exact_mut(dim))
            .map(|(p, q)| sketch_row(p, q))
            .collect();
        I8Sketch {
            dim,
            q,
            scale: per_row.iter().map(|r| r.0).collect(),
            sq: per_row.iter().map(|r| r.1).collect(),
            resid: per_row.iter().map(|r| r.2).collect(),
        }
    }

    /// `d2[p] = min(d2[p], l2_squared(pts_p, pts_c))` for the rows `p = first..` of the
    /// sketched points (`pts` holds them, `d2` one value each) against point `c`: the same
    /// values as [`min_l2_update`](super::min_l2_update), skipping the rows whose
    /// distance is ruled out (module doc).
    pub fn min_update(&self, pts: &[f32], first: usize, c: usize, d2: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if kernel() == Kernel::Avx512 {
            // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
            return unsafe { self.min_update_avx512(pts, first, c, d2) };
        }
        self.min_update_body(pts, first, c, d2)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn min_update_avx512(&self, pts: &[f32], first: usize, c: usize, d2: &mut [f32]) {
        self.min_update_body(pts, first, c, d2)
    }

    #[inline(always)]
    fn min_update_body(&self, pts: &[f32], first: usize, c: usize, d2: &mut [f32]) {
        let dim = self.dim;
        let cp = &pts[c * dim..(c + 1) * dim];
        let mut ips = vec![0i32; d2.len()];
        self.int_dots(first, c, &mut ips);
        for (o, v) in d2.iter_mut().enumerate() {
            let p = first + o;
            if self.rules_out(p, c, ips[o], *v) {
                continue;
            }
            let dist = l2_squared(&pts[p * dim..(p + 1) * dim], cp);
            if dist < *v {
                *v = dist;
            }
        }
    }

    /// `out[o]` = Σ q_p·q_c for the points `p = first + o`, exactly (i32: at most
    /// 127²·dim, far below 2³¹ for any dim the certified searches take).
    fn int_dots(&self, first: usize, c: usize, out: &mut [i32]) {
        let dim = self.dim;
        let cq = &self.q[c * dim..(c + 1) * dim];
        #[cfg(target_arch = "x86_64")]
        if super::int8_kernel() == super::Int8Kernel::Avx512Vnni {
            // SAFETY: this kernel is chosen only when the CPU has AVX-512F/BW/VNNI.
            return unsafe { int_dots_vnni(&self.q[first * dim..(first + out.len()) * dim], cq, out) };
        }
        for (o, p) in out.iter_mut().zip(self.q[first * dim..].chunks_exact(dim)) {
            *o = p.iter().zip(cq).map(|(&a, &b)| a as i32 * b as i32).sum();
        }
    }

    /// Whether `l2_squared` of points `p` and `c` is certainly at least `d2` (module doc),
    /// given `ip` = Σ q_p·q_c. NaN or +∞ in `d2`, or a point that could not be scaled,
    /// never is.
    #[inline(always)]
    fn rules_out(&self, p: usize, c: usize, ip: i32, d2: f32) -> bool {
        let dim = self.dim;
        let x = self.scale[p] * self.scale[c] * ip as f64;
        let a = self.sq[p] + self.sq[c] - 2.0 * x;
        // Each product and sum above is within a few f64 roundings of its value.
        let a_lo = a - 1e-14 * (self.sq[p] + self.sq[c] + 2.0 * x.abs());
        if a_lo.is_nan() || a_lo <= 0.0 {
            return false;
        }
        let root = a_lo.sqrt();
        let r = self.resid[p] + self.resid[c];
        let low = root - r - 1e-12 * (root + r);
        let keep = (1.0 - l2_rel_error(dim)) * (1.0 - 1e-12);
        low > 0.0 && low * low * keep >= d2 as f64
    }
}

/// One point's integers into `q`; returns its scale s, s²·Σq² and the bound on
/// ‖p − s·q‖ (q = 0 and an infinite bound for a point with NaN or ∞).
fn sketch_row(p: &[f32], q: &mut [i8]) -> (f64, f64, f64) {
    let m = p.iter().fold(0f64, |a, &v| a.max((v as f64).abs()));
    if !m.is_finite() {
        return (0.0, 0.0, f64::INFINITY); // never ruled out
    }
    let scale = m / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let (mut qq, mut rr) = (0i64, 0f64);
    for (t, &v) in p.iter().enumerate() {
        // Any integers would do: the bound below is of the ones chosen.
        let k = (v as f64 * inv).round_ties_even().clamp(-127.0, 127.0);
        q[t] = k as i8;
        qq += (k as i64) * (k as i64);
        let e = v as f64 - scale * k;
        rr += e * e;
    }
    // The f64 sum of dim squares is within dim·2⁻⁵³ of its value; the margin covers it.
    (scale, scale * scale * qq as f64, rr.sqrt() * (1.0 + 1e-12) + 1e-300)
}

/// [`I8Sketch::int_dots`] with `vpdpbusd`: each row's bytes flipped to q + 128
/// (unsigned) against the signed centre, less 128·Σq_c; integer arithmetic, so
/// the same values as the plain loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn int_dots_vnni(rows: &[i8], c: &[i8], out: &mut [i32]) {
    use std::arch::x86_64::*;
    let dim = c.len();
    let (full, rest) = (dim / 64, dim % 64);
    let tail: __mmask64 = if rest == 0 { 0 } else { (1u64 << rest) - 1 };
    let flip = _mm512_set1_epi8(-128);
    let corr = 128 * c.iter().map(|&v| v as i32).sum::<i32>();
    // SAFETY (loads): chunk j < dim.div_ceil(64) of a dim-long row; the last one is
    // read through the mask of its `rest` live bytes.
    let load = |p: *const i8, j: usize| unsafe {
        if j < full {
            _mm512_loadu_si512(p.add(64 * j).cast())
        } else {
            _mm512_maskz_loadu_epi8(tail, p.add(64 * j))
        }
    };
    let chunks = full + usize::from(rest > 0);
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(dim)) {
        let mut acc = _mm512_setzero_si512();
        for j in 0..chunks {
            // A masked-off byte of the row flips to 128, against a zero of the centre.
            let a = _mm512_xor_si512(load(row.as_ptr(), j), flip);
            acc = _mm512_dpbusd_epi32(acc, a, load(c.as_ptr(), j));
        }
        *o = _mm512_reduce_add_epi32(acc) - corr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::min_l2_update;
    use crate::rng::Rng;

    /// Clustered points (plus zero, tiny, huge and duplicate rows) updated against every
    /// point in turn give the same d² bits with and without the sketch, and the sketch
    /// skips most rows.
    #[test]
    fn same_values_as_the_plain_update_and_most_rows_skipped() {
        let (dim, n) = (48, 400);
        let mut rng = Rng::new(3);
        let centres: Vec<Vec<f32>> = (0..8)
            .map(|_| (0..dim).map(|_| rng.normal() as f32).collect())
            .collect();
        let mut pts: Vec<f32> = (0..n)
            .flat_map(|i| {
                let c = &centres[i % 8];
                let jitter = 0.02 * (1 + i % 3) as f32;
                c.iter().map(|&v| v + jitter * rng.normal() as f32).collect::<Vec<_>>()
            })
            .collect();
        pts[..dim].fill(0.0);
        pts[dim..2 * dim].iter_mut().for_each(|v| *v *= 1e-20);
        pts[2 * dim..3 * dim].iter_mut().for_each(|v| *v *= 1e15);
        let dup = pts[5 * dim..6 * dim].to_vec();
        pts[6 * dim..7 * dim].copy_from_slice(&dup);
        let sketch = I8Sketch::new(&pts, dim);
        let (mut plain, mut fast) = (vec![f32::INFINITY; n], vec![f32::INFINITY; n]);
        let mut skipped = 0;
        for c in 0..n {
            let mut ips = vec![0i32; n];
            sketch.int_dots(0, c, &mut ips);
            skipped += (0..n).filter(|&p| sketch.rules_out(p, c, ips[p], plain[p])).count();
            min_l2_update(&pts, dim, &pts[c * dim..(c + 1) * dim], &mut plain);
            // Split in two calls: `first` offsets the rows.
            let (a, b) = fast.split_at_mut(n / 3);
            sketch.min_update(&pts, 0, c, a);
            sketch.min_update(&pts, n / 3, c, b);
            assert_eq!(
                plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "after centre {c}"
            );
        }
        assert!(skipped > n * n / 2, "{skipped} of {} updates ruled out", n * n);
    }

    /// The rule never skips a row whose value is below d² by one ulp: pairs at every
    /// distance, from near duplicates (where the quantization radii dominate) to opposite
    /// points, at scales from 1e-15 to 1e15.
    #[test]
    fn never_rules_out_a_value_just_below_d2() {
        let dim = 64;
        let mut rng = Rng::new(11);
        let mut pts = Vec::new();
        for i in 0..300 {
            let base: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
            let step = [0.0, 1e-6, 1e-3, 0.05, 0.3, 1.0, 3.0][i % 7];
            let scale = [1.0, 1e-15, 1e15, 0.5][i % 4];
            let other: Vec<f32> = base.iter().map(|&v| v + step * rng.normal() as f32).collect();
            pts.extend(base.iter().map(|v| v * scale));
            pts.extend(other.iter().map(|v| v * scale));
        }
        let sketch = I8Sketch::new(&pts, dim);
        let n = pts.len() / dim;
        let mut checked = 0;
        for p in 0..n {
            for c in [p ^ 1, (p * 7 + 3) % n] {
                let v = l2_squared(&pts[p * dim..(p + 1) * dim], &pts[c * dim..(c + 1) * dim]);
                if v.is_finite() && v > 0.0 {
                    let mut ip = [0i32];
                    sketch.int_dots(p, c, &mut ip);
                    assert!(!sketch.rules_out(p, c, ip[0], v.next_up()), "pair {p}, {c}: {v}");
                    checked += 1;
                }
            }
        }
        assert!(checked > n, "{checked}");
    }

    /// The VNNI and plain integer dots agree, at dims with and without a partial
    /// 64-byte tail, including ±127 extremes.
    #[test]
    fn integer_dots_agree_across_kernels() {
        for dim in [1, 63, 64, 65, 200, 384] {
            let mut rng = Rng::new(dim as u64);
            let mut pts: Vec<f32> = (0..50 * dim).map(|_| rng.normal() as f32).collect();
            pts[..dim].fill(1.0);
            pts[dim..2 * dim].fill(-1.0);
            let sketch = I8Sketch::new(&pts, dim);
            for c in [0, 1, 7] {
                let mut got = vec![0i32; 50];
                sketch.int_dots(0, c, &mut got);
                let q = |p: usize| &sketch.q[p * dim..(p + 1) * dim];
                let want: Vec<i32> = (0..50)
                    .map(|p| q(p).iter().zip(q(c)).map(|(&a, &b)| a as i32 * b as i32).sum())
                    .collect();
                assert_eq!(got, want, "dim {dim}, centre {c}");
            }
        }
    }
}
