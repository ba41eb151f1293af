//! Dot products of chosen (row, centroid) pairs, for the certified searches'
//! rechecks: the f32 kernel's own bits pair by pair ([`kernel_pair_dots`]), a
//! faster vectorized dot within γ_d·‖x‖·‖c‖ of the exact one ([`fast_pair_dots`],
//! Higham 2002 §3.1), and the cut that tells which candidates those vectorized
//! dots rule out ([`contender_cut`]).

use super::{Kernel, LANES, dot_batch, kernel};

/// `out[p] = x_i · c_j` for each pair `(i, j)` of `pairs` (rows of the row-major `x` and
/// `c`, `dim` columns), bit-identical to the same entries of [`dot_batch`]: with the
/// AVX-512 kernel, whose every product is one fused multiply-add chain in ascending
/// coordinate order, the same chains run as scalar FMAs, eight pairs interleaved; with the
/// portable kernel, each pair is a 1 × 1 [`dot_batch`] (its values do not depend on the
/// shape either). For the few pairs a certified bf16 search leaves to f32.
///
/// # Panics
/// If a row index is out of range or `out` is not one value per pair.
pub fn kernel_pair_dots(x: &[f32], c: &[f32], dim: usize, pairs: &[(u32, u32)], out: &mut [f32]) {
    assert_eq!(out.len(), pairs.len(), "kernel_pair_dots: one output per pair");
    let row = |m: &'_ [f32], i: u32| -> std::ops::Range<usize> {
        let r = i as usize * dim..(i as usize + 1) * dim;
        assert!(r.end <= m.len(), "kernel_pair_dots: row {i} out of range");
        r
    };
    #[cfg(target_arch = "x86_64")]
    if kernel() == Kernel::Avx512 {
        for (ps, os) in pairs.chunks(8).zip(out.chunks_mut(8)) {
            let mut xs = [&x[..0]; 8];
            let mut cs = [&c[..0]; 8];
            for (q, &(i, j)) in ps.iter().enumerate() {
                xs[q] = &x[row(x, i)];
                cs[q] = &c[row(c, j)];
            }
            // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F; each
            // of the first ps.len() slices is a whole row of dim values.
            let v = unsafe { fma_chains8(&xs, &cs, ps.len(), dim) };
            os.copy_from_slice(&v[..ps.len()]);
        }
        return;
    }
    let mut one = [0f32];
    for (&(i, j), o) in pairs.iter().zip(out.iter_mut()) {
        dot_batch(&x[row(x, i)], &c[row(c, j)], dim, &mut one);
        *o = one[0];
    }
}

/// `out[p] = x_i · c_j` for each pair `(i, j)` of `pairs` (as [`kernel_pair_dots`]), summed
/// in whatever order vectorizes best: within γ_d·‖x_i‖·‖c_j‖ of the exact dot
/// ([`f32_error_per_norm`], which holds for any order), as the kernel's value is, but
/// not its bits. For certified searches that only rule candidates out.
///
/// # Panics
/// If a row index is out of range or `out` is not one value per pair.
pub fn fast_pair_dots(x: &[f32], c: &[f32], dim: usize, pairs: &[(u32, u32)], out: &mut [f32]) {
    assert_eq!(out.len(), pairs.len(), "fast_pair_dots: one output per pair");
    #[cfg(target_arch = "x86_64")]
    if kernel() == Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
        return unsafe { fast_pair_dots_avx512(x, c, dim, pairs, out) };
    }
    fast_pair_dots_body(x, c, dim, pairs, out)
}

/// The cut below which a candidate's [`fast_pair_dots`] value cannot win or tie against
/// the best of `fast` (one row's candidates) in the kernel's values: a fast value and
/// the kernel's value of the same pair are each within `e` (γ_d·‖x‖·max‖c‖) of the exact
/// dot, so within 2e of each other, and f_j < max f − 4e gives k_j < f_j + 2e < max f − 2e
/// ≤ k_top. (Values in `fast` that are the kernel's own may sit among them.) Rounded
/// down (keeping more is still exact); `None` when every candidate must be kept (NaN, ∞).
pub fn contender_cut(fast: &[f32], e: f64) -> Option<f64> {
    let top = fast.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let cut = top as f64 - 4.0 * e;
    let cut = cut - cut.abs() * 1e-12 - 1e-30;
    (cut.is_finite() && fast.iter().all(|v| !v.is_nan())).then_some(cut)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fast_pair_dots_avx512(x: &[f32], c: &[f32], dim: usize, pairs: &[(u32, u32)], out: &mut [f32]) {
    fast_pair_dots_body(x, c, dim, pairs, out)
}

#[inline(always)]
fn fast_pair_dots_body(x: &[f32], c: &[f32], dim: usize, pairs: &[(u32, u32)], out: &mut [f32]) {
    // Four registers of independent sums: the adds overlap instead of waiting on one chain.
    const W: usize = 4 * LANES;
    for (&(i, j), o) in pairs.iter().zip(out.iter_mut()) {
        let a = &x[i as usize * dim..(i as usize + 1) * dim];
        let b = &c[j as usize * dim..(j as usize + 1) * dim];
        let mut acc = [0f32; W];
        let (ca, cb) = (a.chunks_exact(W), b.chunks_exact(W));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(p, q)| p * q).sum();
        for (p, q) in ca.zip(cb) {
            for l in 0..W {
                acc[l] += p[l] * q[l];
            }
        }
        // Halving folds: every term passes at most dim/W + log2(W) + 2 roundings (or the
        // tail's), never more than dim, which γ_d assumes.
        let mut h = W;
        while h > 1 {
            h /= 2;
            for l in 0..h {
                acc[l] += acc[l + h];
            }
        }
        *o = acc[0] + tail;
    }
}

/// `acc_q = fma(x_q[t], c_q[t], acc_q)` for t ascending, for the first `n` of eight pairs
/// (eight independent chains hide the FMA latency).
///
/// # Safety
/// The CPU has AVX-512F; the first `n` slices of `xs` and `cs` hold at least `dim` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains8(xs: &[&[f32]; 8], cs: &[&[f32]; 8], n: usize, dim: usize) -> [f32; 8] {
    let mut acc = [0f32; 8];
    if n == 8 {
        let xp: [*const f32; 8] = std::array::from_fn(|q| xs[q].as_ptr());
        let cp: [*const f32; 8] = std::array::from_fn(|q| cs[q].as_ptr());
        for t in 0..dim {
            for q in 0..8 {
                // SAFETY: t < dim ≤ the length of every slice (caller).
                unsafe { acc[q] = (*xp[q].add(t)).mul_add(*cp[q].add(t), acc[q]) };
            }
        }
    } else {
        for q in 0..n {
            for (a, b) in xs[q][..dim].iter().zip(&cs[q][..dim]) {
                acc[q] = a.mul_add(*b, acc[q]);
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::{dot_reference, f32_error_per_norm, norm2};
    use proptest::prelude::*;

    /// A fast value and the kernel's are each within e of the exact dot, so 2e apart at
    /// most: a candidate 3e below the top fast value may still have the larger kernel
    /// value (exact dots 2e apart, the top's kernel value e low, the other's e high) and
    /// must stay; 4e below, it cannot.
    #[test]
    fn the_contender_cut_keeps_everything_within_four_errors() {
        let e = 1e-3;
        let cut = contender_cut(&[0.5, 0.5 - 3.0 * e as f32, 0.4], e).unwrap();
        assert!((0.5 - 3.0 * e as f32) as f64 >= cut);
        assert!(0.4 < cut);
        assert!(cut <= 0.5 - 4.0 * e && cut > 0.5 - 4.0 * e - 1e-9);
        assert_eq!(contender_cut(&[0.5, f32::NAN], e), None);
        assert_eq!(contender_cut(&[f32::INFINITY, 0.5], e), None);
    }

    proptest! {
        #[test]
        fn pair_dots_are_the_kernel_entries_bit_for_bit(
            m in 1usize..30, k in 1usize..30, dim in 1usize..400, seed in 0u64..1000, np in 0usize..40
        ) {
            let mut rng = crate::rng::Rng::new(seed);
            let x: Vec<f32> = (0..m * dim).map(|_| rng.normal() as f32).collect();
            let c: Vec<f32> = (0..k * dim).map(|_| rng.normal() as f32).collect();
            let mut full = vec![0f32; m * k];
            dot_batch(&x, &c, dim, &mut full);
            let pairs: Vec<(u32, u32)> =
                (0..np).map(|_| (rng.below(m as u64) as u32, rng.below(k as u64) as u32)).collect();
            let mut got = vec![0f32; np];
            kernel_pair_dots(&x, &c, dim, &pairs, &mut got);
            for (&(i, j), v) in pairs.iter().zip(&got) {
                prop_assert_eq!(v.to_bits(), full[i as usize * k + j as usize].to_bits());
            }
        }
    }

    proptest! {
        #[test]
        fn fast_pair_dots_are_within_gamma_d_of_the_exact_dot(
            dim in 1usize..400, seed in 0u64..1000, np in 1usize..20, big in 0u32..3
        ) {
            // γ_d·‖x‖·‖c‖ is what the certified search allows them (and the kernel's value).
            let mut rng = crate::rng::Rng::new(seed);
            let scale = [1.0f32, 1e-18, 1e15][big as usize];
            let x: Vec<f32> = (0..4 * dim).map(|_| scale * rng.normal() as f32).collect();
            let c: Vec<f32> = (0..5 * dim).map(|_| rng.normal() as f32).collect();
            let pairs: Vec<(u32, u32)> = (0..np).map(|_| (rng.below(4) as u32, rng.below(5) as u32)).collect();
            let mut got = vec![0f32; np];
            fast_pair_dots(&x, &c, dim, &pairs, &mut got);
            for (&(i, j), &v) in pairs.iter().zip(&got) {
                let (a, b) = (&x[i as usize * dim..][..dim], &c[j as usize * dim..][..dim]);
                let exact = dot_reference(a, b);
                let norms = (norm2(a) as f64).sqrt() * (norm2(b) as f64).sqrt();
                prop_assert!(
                    (v as f64 - exact).abs() <= f32_error_per_norm(dim) * norms,
                    "dim {dim}: {v} against {exact}"
                );
            }
        }
    }
}
