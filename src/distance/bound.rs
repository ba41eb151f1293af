//! Rounding-error bounds of the products: how far a bf16 product
//! ([`dot_batch_bf16`](crate::distance::dot_batch_bf16)) and the f32 kernel's product of the same two rows can be
//! from each other and from the exact dot — what makes the certified bf16 searches
//! (`cluster::certified`, SemDeDup's bf16 tiles, the cross pass) exact. Higham,
//! *Accuracy and Stability of Numerical Algorithms* (2002), §3.1, with the rounding
//! each row actually undergoes instead of its worst case.

#[cfg(test)]
use super::bf16::{PackedBf16, bf16_to_f32, dot_batch_bf16, to_bf16};

/// Unit roundoff of f32.
const U32: f64 = 1.0 / (1u64 << 24) as f64;

/// Upper bounds on ‖x‖, on ‖x̃‖ (x rounded to bf16 as the kernels round it, [`to_bf16`](crate::distance::to_bf16))
/// and on ‖x − x̃‖: what [`Bf16Bound`] needs of a row. NaN in gives NaN; a value that
/// rounds to ±∞ gives an infinite or NaN residual.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bf16Norms {
    /// ‖x‖.
    pub norm: f64,
    /// ‖x̃‖.
    pub rounded: f64,
    /// ‖x − x̃‖: the rounding error actually made, typically 40% of its worst case u_b·‖x‖.
    pub residual: f64,
}

impl Bf16Norms {
    /// The norms of `x` (scale 1).
    pub fn of(x: &[f32]) -> Self {
        #[cfg(target_arch = "x86_64")]
        if super::kernel() == super::Kernel::Avx512 {
            // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
            return unsafe { norms_avx512(x) };
        }
        norms_body(x)
    }

    /// The larger of each norm (bounds for a set of rows).
    fn max(self, o: Self) -> Self {
        Bf16Norms {
            norm: self.norm.max(o.norm),
            rounded: self.rounded.max(o.rounded),
            residual: self.residual.max(o.residual),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn norms_avx512(x: &[f32]) -> Bf16Norms {
    norms_body(x)
}

/// [`to_bf16`](crate::distance::to_bf16) as an f32, branch-free so it vectorises (NaN needs no care here: its
/// square is NaN whatever its rounding).
#[inline(always)]
fn round_bf16(v: f32) -> f32 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000;
    f32::from_bits(if bits & 0x7F80_0000 == 0 {
        bits & 0x8000_0000
    } else {
        rounded
    })
}

#[inline(always)]
fn norms_body(x: &[f32]) -> Bf16Norms {
    // Sums of squares in 16 f32 lanes (x − x̃ is exact in f32), as in
    // [`norm_upper_bound`], whose slack they share.
    const L: usize = 16;
    let (mut a, mut r, mut e) = ([0f32; L], [0f32; L], [0f32; L]);
    let chunks = x.chunks_exact(L);
    let rest = chunks.remainder();
    for ch in chunks {
        for l in 0..L {
            let (v, t) = (ch[l], round_bf16(ch[l]));
            a[l] += v * v;
            r[l] += t * t;
            e[l] += (v - t) * (v - t);
        }
    }
    let (mut ra, mut rr, mut re) = (0f64, 0f64, 0f64);
    for &v in rest {
        let (v, t) = (v as f64, round_bf16(v) as f64);
        ra += v * v;
        rr += t * t;
        re += (v - t) * (v - t);
    }
    let up = |s: [f32; L], rest: f64| sum_sq_upper(s.iter().map(|&v| v as f64).sum::<f64>() + rest, x.len());
    Bf16Norms {
        norm: up(a, ra),
        rounded: up(r, rr),
        residual: up(e, re),
    }
}

/// An upper bound on √S from the sum `s` of `len` squares computed in 16 f32 lanes of
/// ⌈len/16⌉ terms each (within γ_{n+1} of S, Higham 2002, §3.1), plus len·2⁻¹²⁶ for
/// squares that underflow; slack covers the f64 sum of the lanes and the sqrt.
#[inline]
fn sum_sq_upper(s: f64, len: usize) -> f64 {
    let n = len.div_ceil(16) as f64 + 1.0;
    let gamma = n * U32 / (1.0 - n * U32);
    let tiny = len as f64 * f32::MIN_POSITIVE as f64;
    ((s + tiny) * (1.0 + gamma) * (1.0 + 1e-12)).sqrt() * (1.0 + 1e-12)
}

/// How far apart a bf16 product ([`dot_batch_bf16`](crate::distance::dot_batch_bf16), b) and the f32 kernel's product
/// ([`crate::distance::dot_batch`], f) of a row x and any of a set of rows c can be.
///
/// With x̃, c̃ the bf16 roundings, x·c − x̃·c̃ = (x − x̃)·c + x̃·(c − c̃) exactly, so by
/// Cauchy–Schwarz the rounding moves the dot by at most ‖x − x̃‖·max‖c‖ + ‖x̃‖·max‖c − c̃‖;
/// the bf16 products are exact in f32 and their d f32 additions err by at most
/// γ_d·‖x̃‖·max‖c̃‖, and the f32 kernel's by γ_d·‖x‖·max‖c‖, γ_d = d·u/(1 − d·u), u = 2⁻²⁴
/// (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, §3.1). The sum, with
/// 1% slack and 1e-30 for flushed denormals, is B + E of `cluster::certified`'s module
/// doc. It uses the rounding errors actually made, not their worst case u_b = 2⁻⁸ per
/// value, which makes it about 0.0033 instead of 0.0079 for random unit rows at d = 384.
#[derive(Debug, Clone, Copy)]
pub struct Bf16Bound {
    /// The largest of each norm over the right-hand rows.
    right: Bf16Norms,
    gamma: f64,
}

impl Bf16Bound {
    /// The bound against any of the rows of the row-major `c` (`dim` columns).
    ///
    /// # Panics
    /// If `dim` is 0.
    pub fn new(c: &[f32], dim: usize) -> Self {
        assert!(dim > 0, "Bf16Bound: dim is 0");
        Self::from_norms(c.chunks(dim).map(Bf16Norms::of), dim)
    }

    /// The bound against any of a set of `dim`-d rows given by their norms
    /// ([`Bf16Norms::of`] of each).
    ///
    /// # Panics
    /// If `dim` is 0.
    pub fn from_norms(norms: impl IntoIterator<Item = Bf16Norms>, dim: usize) -> Self {
        assert!(dim > 0, "Bf16Bound: dim is 0");
        let zero = Bf16Norms {
            norm: 0.0,
            rounded: 0.0,
            residual: 0.0,
        };
        let right = norms.into_iter().fold(zero, Bf16Norms::max);
        let d = dim as f64;
        Bf16Bound {
            right,
            gamma: d * U32 / (1.0 - d * U32),
        }
    }

    /// An upper bound on |b − f| for a row with norms `x` against any of the rows.
    #[inline]
    pub fn error(&self, x: &Bf16Norms) -> f64 {
        let c = &self.right;
        let rounding = x.residual * c.norm + x.rounded * c.residual;
        let sums = self.gamma * (x.rounded * c.rounded + x.norm * c.norm);
        (rounding + sums) * 1.01 + 1e-30
    }

    /// An upper bound on |b|, the bf16 product of a row with norms `x` and any of the
    /// rows: Σ|x̃_t c̃_t|·(1 + γ_d) ≤ ‖x̃‖·max‖c̃‖·(1 + γ_d), with slack.
    #[inline]
    pub fn magnitude(&self, x: &Bf16Norms) -> f64 {
        x.rounded * self.right.rounded * (1.0 + 2.0 * self.gamma) * 1.01 + 1e-30
    }

    /// [`Bf16Bound::error`] of the row `x`.
    #[inline]
    pub fn row_error(&self, x: &[f32]) -> f64 {
        self.error(&Bf16Norms::of(x))
    }
}

/// How far the f32 kernel's product of two rows can be from the exact dot, per unit
/// of ‖x‖·‖c‖, in `dim` dimensions, with 1% slack: γ_d (Higham 2002, §3.1; any order of
/// the d roundings, fused or not).
pub fn f32_error_per_norm(dim: usize) -> f64 {
    let d = dim as f64;
    d * U32 / (1.0 - d * U32) * 1.01
}

/// An upper bound on ‖x‖ (sums of squares in 16 f32 lanes, see `sum_sq_upper`).
#[inline]
pub fn norm_upper_bound(x: &[f32]) -> f64 {
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for ch in chunks {
        for l in 0..16 {
            lanes[l] += ch[l] * ch[l];
        }
    }
    let s: f64 = lanes.iter().map(|&v| v as f64).sum::<f64>() + rest.iter().map(|&v| v as f64 * v as f64).sum::<f64>();
    sum_sq_upper(s, x.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n * dim).map(|_| rng.normal() as f32).collect()
    }

    /// Rows of mixed scales, with tiny values, exact bf16 values and values just off a
    /// rounding tie, so both rounding terms and the denormal flush are exercised.
    fn awkward_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n * dim)
            .map(|t| {
                let v = rng.normal() as f32;
                match (t / dim + t) % 6 {
                    0 => v * 1e-3,
                    1 => bf16_to_f32(to_bf16(v)),
                    2 => bf16_to_f32(to_bf16(v)) * (1.0 + 2f32.powi(-9) - 2f32.powi(-20)),
                    3 => v * 1e-39,
                    _ => v,
                }
            })
            .collect()
    }

    fn exact_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    #[test]
    fn norms_are_upper_bounds_of_the_rounding_actually_made() {
        for (dim, seed) in [(1usize, 1u64), (7, 2), (384, 3), (1000, 4)] {
            let x = awkward_rows(4, dim, seed);
            for row in x.chunks(dim) {
                let n = Bf16Norms::of(row);
                assert_eq!(n, norms_body(row), "the AVX-512 build is the same sums");
                let r: Vec<f64> = row.iter().map(|&v| bf16_to_f32(to_bf16(v)) as f64).collect();
                let norm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
                let rounded = r.iter().map(|v| v * v).sum::<f64>().sqrt();
                let residual = row
                    .iter()
                    .zip(&r)
                    .map(|(&v, t)| (v as f64 - t).powi(2))
                    .sum::<f64>()
                    .sqrt();
                for (got, want) in [(n.norm, norm), (n.rounded, rounded), (n.residual, residual)] {
                    assert!(
                        got >= want && got <= want * (1.0 + 1e-5) + 1e-17,
                        "dim {dim}: {got} vs {want}"
                    );
                }
                // The rounding made is within its worst case u_b·‖x‖.
                assert!(residual <= norm / 256.0 + 1e-30);
            }
        }
    }

    #[test]
    fn bound_covers_bf16_and_f32_products() {
        for (m, k, dim, seed) in [(9usize, 40usize, 384usize, 5u64), (13, 33, 67, 6), (5, 20, 1, 7)] {
            let (x, c) = (awkward_rows(m, dim, seed), awkward_rows(k, dim, seed + 100));
            let bound = Bf16Bound::new(&c, dim);
            let idx: Vec<usize> = (0..m).collect();
            let mut b = vec![0f32; m * k];
            dot_batch_bf16(
                &x,
                &idx,
                &vec![1.0; m],
                &PackedBf16::new(&c, dim, &(0..k).collect::<Vec<_>>(), &vec![1.0; k]),
                &mut b,
            );
            let mut f = vec![0f32; m * k];
            crate::distance::dot_batch(&x, &c, dim, &mut f);
            for i in 0..m {
                let xi = &x[i * dim..(i + 1) * dim];
                let err = bound.row_error(xi);
                for j in 0..k {
                    let e = exact_dot(xi, &c[j * dim..(j + 1) * dim]);
                    let (bv, fv) = (b[i * k + j] as f64, f[i * k + j] as f64);
                    assert!((bv - fv).abs() <= err, "({i}, {j}): |{bv} - {fv}| > {err}");
                    assert!((bv - e).abs() <= err && (fv - e).abs() <= err);
                }
            }
        }
    }

    #[test]
    fn bound_is_nearly_attained_and_below_the_worst_case() {
        // Every coordinate of c rounds down by almost u_b/2 relative, in the direction of
        // x (exact in bf16): the whole residual ‖c − c̃‖ lines up with x, so the bf16
        // product misses by ‖x‖·‖c − c̃‖; the bound must not drop that term.
        let dim = 384;
        let x: Vec<f32> = (0..dim).map(|t| if t % 3 == 0 { -1.0 } else { 1.0 }).collect();
        let c: Vec<f32> = x.iter().map(|&v| v * (1.0 + 2f32.powi(-9) - 2f32.powi(-22))).collect();
        let bound = Bf16Bound::new(&c, dim);
        let mut b = [0f32];
        dot_batch_bf16(&x, &[0], &[1.0], &PackedBf16::new(&c, dim, &[0], &[1.0]), &mut b);
        let missed = exact_dot(&x, &c) - b[0] as f64;
        let err = bound.row_error(&x);
        assert!(missed <= err && missed > 0.95 * err, "missed {missed}, bound {err}");
        // For random unit rows the rounding actually made is well below its worst case
        // (2u_b + u_b²)·‖x‖·‖c‖ ≈ 0.0079.
        let mut r = rows(20, dim, 8);
        for row in r.chunks_mut(dim) {
            let n = exact_dot(row, row).sqrt() as f32;
            row.iter_mut().for_each(|v| *v /= n);
        }
        let bound = Bf16Bound::new(&r[dim..], dim);
        let err = bound.row_error(&r[..dim]);
        assert!(err < 0.0045 && err > 0.002, "random unit rows: {err}");
    }
}
