//! Cosine-similarity Gram matrices `G = U·Uᵀ` (`U` = rows scaled to unit L2 norm), the one
//! `O(N²D)` step of DivPrune.
//!
//! Every entry is the plain sequential fused dot product `fma(u_ik, u_jk, acc)` over
//! `k = 0..D`, which is symmetric in `i, j` and the same whichever tile computes it. The CPU
//! kernels below (AVX-512F, else AVX2 + FMA) only change how many entries run at once, so they
//! agree bit for bit with [`fma_dot`] and with each other. `U` is packed once into column
//! panels `[D][PANEL]`; a tile of `MR` rows × `NV` vectors broadcasts one value of each row and
//! multiplies it into the panel (the outer-product GEMM microkernel), and only tiles on or
//! above the diagonal are computed before the lower triangle is mirrored. CPUs without FMA
//! fall back to ndarray's GEMM ([`gram`]), whose summation order differs in the last bits.

use ndarray::{Array2, ArrayView2, s};

use crate::Result;

/// Tokens per packed panel: one tile row of the AVX-512 kernel (2 × 16 lanes).
const PANEL: usize = 32;

/// `x`'s rows scaled to unit norm (see [`super::unit_rows`]), then `U·Uᵀ`, `[N, N]`, exactly
/// symmetric.
///
/// # Errors
/// As [`super::unit_rows`]: a NaN or infinite row, named by `what`.
pub(crate) fn cosine_gram(x: ArrayView2<'_, f32>, what: &'static str) -> Result<Array2<f32>> {
    let norms = super::row_norms(x, what)?;
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = simd::Kernel::detect() {
        let (n, d) = x.dim();
        let packed = pack_unit_panels(x, &norms);
        let mut g = Array2::<f32>::zeros((n, n));
        let gs = g.as_slice_mut().expect("fresh array is contiguous");
        kernel.upper_tiles(&packed, n, d, gs);
        mirror_upper(gs, n);
        return Ok(g);
    }
    Ok(gram(super::scaled_rows(x, &norms).view()))
}

/// The sequential fused dot product every fast-path entry equals (the test oracle).
#[cfg(test)]
pub(crate) fn fma_dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |acc, (&x, &y)| x.mul_add(y, acc))
}

/// Packs the unit rows of `x` (row `i` divided by `norms[i]` unless 0, as
/// [`super::scaled_rows`]) into panels of [`PANEL`] tokens laid out `[D][PANEL]`, the last
/// panel zero-padded.
fn pack_unit_panels(x: ArrayView2<'_, f32>, norms: &[f32]) -> Vec<f32> {
    // Blocks of KB columns keep the panel slab being written in L1.
    const KB: usize = 64;
    let (n, d) = x.dim();
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let mut out = vec![0f32; n.div_ceil(PANEL) * d * PANEL];
    for (p, panel) in out.chunks_exact_mut(d * PANEL).enumerate() {
        let rows = p * PANEL..((p + 1) * PANEL).min(n);
        for k0 in (0..d).step_by(KB) {
            let k1 = (k0 + KB).min(d);
            for (c, i) in rows.clone().enumerate() {
                let norm = norms[i];
                let row = &xs[i * d + k0..i * d + k1];
                for (slot, &v) in panel[k0 * PANEL + c..].iter_mut().step_by(PANEL).zip(row) {
                    *slot = if norm > 0.0 { v / norm } else { v };
                }
            }
        }
    }
    out
}

/// Rows per GEMM in [`gram`] (measured: 64–144 are equally fast at N = 576, D = 1024).
const GRAM_BLOCK: usize = 96;

/// `x · xᵀ` by ndarray's GEMM (`[N, N]`), exactly symmetric: each block of rows is multiplied
/// only against itself and the rows after it (about half the FLOPs of the full product), then
/// the upper triangle is mirrored. The fallback of [`cosine_gram`] on CPUs without FMA.
pub(crate) fn gram(x: ArrayView2<'_, f32>) -> Array2<f32> {
    let n = x.nrows();
    let mut g = Array2::<f32>::zeros((n, n));
    let mut i0 = 0;
    while i0 < n {
        let i1 = (i0 + GRAM_BLOCK).min(n);
        let xi = x.slice(s![i0..i1, ..]);
        let xj = x.slice(s![i0.., ..]);
        let mut blk = g.slice_mut(s![i0..i1, i0..]);
        ndarray::linalg::general_mat_mul(1.0, &xi, &xj.t(), 0.0, &mut blk);
        i0 = i1;
    }
    mirror_upper(g.as_slice_mut().expect("fresh array is contiguous"), n);
    g
}

/// Copies the upper triangle of the row-major `n × n` matrix `a` onto the lower one, in
/// 32 × 32 tiles so both sides stay in L1.
fn mirror_upper(a: &mut [f32], n: usize) {
    const TILE: usize = 32;
    for i0 in (0..n).step_by(TILE) {
        for j0 in (0..=i0).step_by(TILE) {
            for i in i0..(i0 + TILE).min(n) {
                for j in j0..(j0 + TILE).min(i) {
                    a[i * n + j] = a[j * n + i];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! The x86-64 microkernels, chosen once per call by run-time feature detection.

    use std::arch::x86_64::{
        __m256, __m512, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
        _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };

    use super::PANEL;

    /// An available kernel.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Kernel {
        /// 8 rows × 32 columns (16 zmm accumulators).
        Avx512,
        /// 4 rows × 16 columns (8 ymm accumulators).
        Avx2Fma,
    }

    impl Kernel {
        /// The fastest kernel this CPU runs, if any.
        pub(crate) fn detect() -> Option<Kernel> {
            if std::arch::is_x86_feature_detected!("avx512f") {
                Some(Kernel::Avx512)
            } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                Some(Kernel::Avx2Fma)
            } else {
                None
            }
        }

        /// Every kernel this CPU runs (tests compare them bit for bit).
        #[cfg(test)]
        pub(crate) fn all_available() -> Vec<Kernel> {
            let mut v = Vec::new();
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Kernel::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                v.push(Kernel::Avx2Fma);
            }
            v
        }

        /// Writes `g[i·n + j]` for every `j` and every `i` up to the end of `j`'s tile (all of
        /// the upper triangle) from `packed` (see [`super::pack_unit_panels`]).
        pub(crate) fn upper_tiles(self, packed: &[f32], n: usize, d: usize, g: &mut [f32]) {
            assert_eq!(packed.len(), n.div_ceil(PANEL) * d * PANEL, "packed panels");
            assert_eq!(g.len(), n * n, "gram output");
            // SAFETY: `detect` / `all_available` only return kernels whose features this CPU has.
            match self {
                Kernel::Avx512 => unsafe { upper_tiles_avx512(packed, n, d, g) },
                Kernel::Avx2Fma => unsafe { upper_tiles_avx2(packed, n, d, g) },
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn upper_tiles_avx512(packed: &[f32], n: usize, d: usize, g: &mut [f32]) {
        // SAFETY: the caller checked avx512f.
        unsafe { upper_tiles::<Zmm, 8, 2>(packed, n, d, g) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn upper_tiles_avx2(packed: &[f32], n: usize, d: usize, g: &mut [f32]) {
        // SAFETY: the caller checked avx2 and fma.
        unsafe { upper_tiles::<Ymm, 4, 2>(packed, n, d, g) }
    }

    /// One SIMD register type: what the generic tile loop needs.
    trait Vector: Copy {
        const LANES: usize;
        /// # Safety
        /// The CPU has the register's features.
        unsafe fn zero() -> Self;
        /// # Safety
        /// As [`Vector::zero`], and `p` points at [`Vector::LANES`] readable floats.
        unsafe fn load(p: *const f32) -> Self;
        /// # Safety
        /// As [`Vector::zero`].
        unsafe fn splat(v: f32) -> Self;
        /// `a · b + self`, one rounding per lane.
        /// # Safety
        /// As [`Vector::zero`].
        unsafe fn fma(self, a: Self, b: Self) -> Self;
        /// # Safety
        /// As [`Vector::zero`], and `p` points at [`Vector::LANES`] writable floats.
        unsafe fn store(self, p: *mut f32);
    }

    /// Implements [`Vector`] for a one-register newtype from its five intrinsics.
    macro_rules! vector {
        ($name:ident($reg:ty), $lanes:literal, $zero:ident, $load:ident, $splat:ident, $fma:ident, $store:ident) => {
            #[derive(Clone, Copy)]
            struct $name($reg);

            impl Vector for $name {
                const LANES: usize = $lanes;
                #[inline(always)]
                unsafe fn zero() -> Self {
                    $name(unsafe { $zero() })
                }
                #[inline(always)]
                unsafe fn load(p: *const f32) -> Self {
                    $name(unsafe { $load(p) })
                }
                #[inline(always)]
                unsafe fn splat(v: f32) -> Self {
                    $name(unsafe { $splat(v) })
                }
                #[inline(always)]
                unsafe fn fma(self, a: Self, b: Self) -> Self {
                    $name(unsafe { $fma(a.0, b.0, self.0) })
                }
                #[inline(always)]
                unsafe fn store(self, p: *mut f32) {
                    unsafe { $store(p, self.0) }
                }
            }
        };
    }

    vector!(
        Zmm(__m512),
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps
    );
    vector!(
        Ymm(__m256),
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps
    );

    /// The tile loop: tiles of `MR` rows × `NV · V::LANES` columns; `MR` and the tile width
    /// divide [`PANEL`], so a tile's rows are a contiguous run inside one packed panel row.
    ///
    /// # Safety
    /// The CPU has `V`'s features; `packed` and `g` have the lengths [`Kernel::upper_tiles`]
    /// asserts.
    #[inline(always)]
    unsafe fn upper_tiles<V: Vector, const MR: usize, const NV: usize>(
        packed: &[f32],
        n: usize,
        d: usize,
        g: &mut [f32],
    ) {
        let width = NV * V::LANES;
        debug_assert!(PANEL.is_multiple_of(width) && PANEL.is_multiple_of(MR));
        let panel = |p: usize| &packed[p * d * PANEL..(p + 1) * d * PANEL];
        for j0 in (0..n).step_by(width) {
            let j1 = (j0 + width).min(n);
            // Column block `j0..j1` sits at offset `j0 % PANEL` of panel `j0 / PANEL`.
            let b = &panel(j0 / PANEL)[j0 % PANEL..];
            for i0 in (0..j1).step_by(MR) {
                let a = &panel(i0 / PANEL)[i0 % PANEL..];
                let mut acc = [[unsafe { V::zero() }; NV]; MR];
                for k in 0..d {
                    // In bounds: offsets below PANEL within row k of a d-row panel.
                    let ak = &a[k * PANEL..k * PANEL + MR];
                    let bk = &b[k * PANEL..k * PANEL + width];
                    let bv: [V; NV] = std::array::from_fn(|v| unsafe { V::load(bk[v * V::LANES..].as_ptr()) });
                    for (r, row) in acc.iter_mut().enumerate() {
                        let av = unsafe { V::splat(ak[r]) };
                        for (x, &bx) in row.iter_mut().zip(&bv) {
                            *x = unsafe { x.fma(av, bx) };
                        }
                    }
                }
                let mut tile = [0f32; PANEL];
                for (r, row) in acc.iter().enumerate().take(n - i0) {
                    for (v, x) in row.iter().enumerate() {
                        unsafe { x.store(tile[v * V::LANES..].as_mut_ptr()) };
                    }
                    let i = i0 + r;
                    g[i * n + j0..i * n + j1].copy_from_slice(&tile[..j1 - j0]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn data(n: usize, d: usize, seed: u64) -> Array2<f32> {
        let mut rng = crate::tokens::rng::SplitMix64::new(seed);
        Array2::from_shape_fn((n, d), |_| rng.next_f32() * 2.0 - 1.0)
    }

    #[test]
    fn blocked_gram_equals_plain_product() {
        let x = Array2::from_shape_fn((401, 7), |(i, j)| ((i * 31 + j * 17) % 13) as f32 - 6.0);
        let g = gram(x.view());
        let r = x.dot(&x.t());
        assert_eq!(g, r);
    }

    #[test]
    fn cosine_gram_is_symmetric_and_close_to_gemm() {
        for (n, d, seed) in [(1, 1, 1), (5, 3, 2), (33, 17, 3), (70, 64, 4), (97, 130, 5)] {
            let x = data(n, d, seed);
            let g = cosine_gram(x.view(), "tokens").unwrap();
            let u = crate::tokens::linalg::unit_rows(x.view(), "tokens").unwrap();
            let r = gram(u.view());
            for i in 0..n {
                for j in 0..n {
                    assert_eq!(g[[i, j]], g[[j, i]], "symmetric at ({i}, {j})");
                    assert!(
                        (g[[i, j]] - r[[i, j]]).abs() <= 1e-5,
                        "({i}, {j}): {} vs {}",
                        g[[i, j]],
                        r[[i, j]]
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_kernel_equals_the_sequential_fused_dot_bit_for_bit() {
        // Sizes straddle the tile widths (4, 8, 16, 32) and a zero row.
        for (n, d, seed) in [(1, 1, 1), (4, 5, 2), (31, 16, 3), (33, 17, 4), (65, 40, 5)] {
            let mut x = data(n, d, seed);
            if n > 2 {
                x.row_mut(2).fill(0.0);
            }
            let norms = crate::tokens::linalg::row_norms(x.view(), "tokens").unwrap();
            let u = crate::tokens::linalg::scaled_rows(x.view(), &norms);
            let packed = pack_unit_panels(x.view(), &norms);
            for kernel in simd::Kernel::all_available() {
                let mut g = vec![f32::NAN; n * n];
                kernel.upper_tiles(&packed, n, d, &mut g);
                for i in 0..n {
                    for j in i..n {
                        let want = fma_dot(u.row(i).as_slice().unwrap(), u.row(j).as_slice().unwrap());
                        assert_eq!(
                            g[i * n + j].to_bits(),
                            want.to_bits(),
                            "{kernel:?} n {n} d {d} ({i}, {j})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn cosine_gram_rejects_nan_naming_the_row() {
        let mut x = data(6, 3, 9);
        x[[4, 1]] = f32::NAN;
        let e = cosine_gram(x.view(), "keys").unwrap_err().to_string();
        assert!(e.contains("keys") && e.contains("row 4"), "{e}");
    }
}
