//! The dot product of the HNSW hot loop, on rows zero-padded to a multiple
//! of 16 floats: an AVX-512 kernel (four FMA accumulators, one horizontal
//! sum) where the CPU has it, else the portable [`crate::distance::dot`].
//!
//! The choice is made once per index ([`crate::distance::kernel`], so
//! `DPRUNE_KERNEL=portable` applies here too) and the graph code is compiled
//! once per kernel, so the kernel inlines into the search loop instead of
//! being a call per distance.

/// Floats per padded block (one AVX-512 register).
pub(super) const BLOCK: usize = 16;

/// A dot-product kernel on padded rows (lengths a multiple of [`BLOCK`]).
pub(super) trait Dot: Copy + Send + Sync {
    /// `a · b`.
    fn dot(self, a: &[f32], b: &[f32]) -> f32;
}

/// [`crate::distance::dot`] (16 independent lanes, vectorised by LLVM).
#[derive(Debug, Clone, Copy)]
pub(super) struct Portable;

impl Dot for Portable {
    #[inline(always)]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        crate::distance::dot(a, b)
    }
}

/// The AVX-512 kernel; a value exists only where the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub(super) struct Avx512(());

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    /// The kernel, when this process uses AVX-512 kernels.
    pub(super) fn detect() -> Option<Self> {
        (crate::distance::kernel() == crate::distance::Kernel::Avx512 && is_x86_feature_detected!("avx512f"))
            .then_some(Avx512(()))
    }
}

#[cfg(target_arch = "x86_64")]
impl Dot for Avx512 {
    #[inline(always)]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        assert!(
            a.len() == b.len() && a.len().is_multiple_of(BLOCK),
            "hnsw kernel: unpadded rows"
        );
        // SAFETY: a value of `Avx512` is only made after detecting AVX-512F;
        // the lengths are equal multiples of 16 (checked above).
        unsafe { dot_avx512(a, b) }
    }
}

/// `a · b` for equal lengths that are multiples of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 16 floats at offset i + 16 j < n (n is a
    // multiple of 16, the loop bounds keep i + 64 <= n and i + 16 <= n).
    unsafe {
        while i + 4 * BLOCK <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                let o = i + j * BLOCK;
                *s = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(o)), _mm512_loadu_ps(pb.add(o)), *s);
            }
            i += 4 * BLOCK;
        }
        while i < n {
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc[0]);
            i += BLOCK;
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(acc[0], acc[1]),
        _mm512_add_ps(acc[2], acc[3]),
    ))
}

/// Asks for the cache lines of `row` (a padded row, 64-byte aligned) ahead
/// of use; the caller's memory traffic is the build's bottleneck.
#[inline(always)]
pub(super) fn prefetch_row(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(BLOCK) {
        // SAFETY: prefetching is a hint and never faults; the pointer is in bounds.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn kernels_agree_with_the_f64_reference() {
        let mut r = Rng::new(5);
        for len in [16usize, 48, 64, 80, 384, 400] {
            let a: Vec<f32> = (0..len).map(|_| r.normal() as f32).collect();
            let b: Vec<f32> = (0..len).map(|_| r.normal() as f32).collect();
            let slow = crate::distance::dot_reference(&a, &b);
            let tol = 1e-5 * a.iter().zip(&b).map(|(x, y)| (x * y).abs() as f64).sum::<f64>();
            assert!((Portable.dot(&a, &b) as f64 - slow).abs() <= tol);
            #[cfg(target_arch = "x86_64")]
            if let Some(k) = Avx512::detect() {
                assert!((k.dot(&a, &b) as f64 - slow).abs() <= tol, "len {len}");
            }
        }
    }
}
