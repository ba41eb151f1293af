//! Tests of the int8 kernels, quantizer and bound (`super`).

use super::*;
use crate::rng::Rng;

fn rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n * dim).map(|_| rng.normal() as f32).collect()
}

/// Awkward rows: a spike (one large value, the rest rounding to zero), tiny and
/// denormal rows, zeros, a huge row and a constant one.
fn awkward(dim: usize) -> Vec<f32> {
    let mut x = rows(6, dim, 3);
    x[0] = 1e3;
    x[dim..2 * dim].iter_mut().for_each(|v| *v *= 1e-33);
    x[2 * dim..3 * dim].iter_mut().for_each(|v| *v *= 1e-41);
    x[3 * dim..4 * dim].fill(0.0);
    x[4 * dim..5 * dim].iter_mut().for_each(|v| *v *= 1e15);
    x[5 * dim..6 * dim].fill(0.7);
    x
}

#[test]
fn simd_and_portable_kernels_give_the_same_bits() {
    if !simd::available() {
        eprintln!("no AVX-512 VNNI here: the SIMD kernel is not exercised");
        return;
    }
    for (m, k, dim) in [
        (1usize, 1usize, 1usize),
        (13, 35, 67),
        (25, 70, 384),
        (12, 32, 4),
        (7, 3, 1030),
    ] {
        let mut x = rows(m, dim, 10 + m as u64);
        if m > 6 {
            x[..6 * dim].copy_from_slice(&awkward(dim));
        }
        let c = PackedI8::new(&rows(k, dim, 20 + k as u64), dim);
        let quads = dim.div_ceil(4);
        let mut words = vec![0u32; m * quads];
        let mut scale = vec![0f32; m.div_ceil(MR) * MR];
        for (i, (row, w)) in x.chunks_exact(dim).zip(words.chunks_exact_mut(quads)).enumerate() {
            scale[i] = quantize_row(row, w, 128).0;
        }
        let mut a = Vec::new();
        pack_words_scatter(&words, quads, MR, &mut a);
        let (mut fast, mut slow) = (vec![0f32; m * k], vec![1f32; m * k]);
        simd::dot_batch_checked(&a, &scale, &c, m, quads, &mut fast, None);
        portable(&a, &scale, &c, m, quads, &mut slow);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fast), bits(&slow), "m {m} k {k} dim {dim}");
    }
}

#[test]
fn simd_and_portable_quantization_agree_bit_for_bit() {
    if crate::distance::kernel() != crate::distance::Kernel::Avx512 {
        eprintln!("no AVX-512 here: the SIMD quantizer is not exercised");
        return;
    }
    for dim in [1usize, 5, 16, 17, 67, 384, 1030] {
        let mut x = rows(8, dim, 50 + dim as u64);
        x[..6 * dim].copy_from_slice(&awkward(dim));
        x[6 * dim] = f32::NAN;
        for (i, row) in x.chunks_exact(dim).enumerate() {
            for offset in [0, 128] {
                let words = dim.div_ceil(4);
                let (mut a, mut b) = (vec![1u32; words], vec![2u32; words]);
                let ra = quantize_row(row, &mut a, offset);
                let fill = |w: &mut [u32]| -> Vec<u8> { w.iter().flat_map(|v| v.to_le_bytes()).collect() };
                // The portable body on the same byte view (padding filled as quantize_row does).
                let mut bytes = fill(&mut b);
                bytes[dim..].fill(offset as u8);
                let rb = quantize_body(row, &mut bytes, offset);
                let key = |r: (f32, i32, I8Norms)| {
                    (
                        r.0.to_bits(),
                        r.1,
                        r.2.norm.to_bits(),
                        r.2.rounded.to_bits(),
                        r.2.residual.to_bits(),
                    )
                };
                assert_eq!(key(ra), key(rb), "dim {dim} row {i} offset {offset}");
                assert_eq!(fill(&mut a), bytes, "dim {dim} row {i} offset {offset}");
            }
        }
    }
}

#[test]
fn packing_equals_the_word_scatter() {
    for (n, cols) in [(1usize, 1usize), (13, 17), (40, 96), (33, 257)] {
        let words: Vec<u32> = (0..n * cols).map(|v| (v as u32).wrapping_mul(2_654_435_761)).collect();
        for width in [MR, NR] {
            let (mut fast, mut slow) = (vec![5u32; 3], Vec::new());
            pack_words(&words, cols, width, &mut fast);
            pack_words_scatter(&words, cols, width, &mut slow);
            assert_eq!(fast, slow, "n {n} cols {cols} width {width}");
        }
    }
}

#[test]
fn the_bound_covers_the_exact_and_the_f32_products() {
    // Products against the exact dot (f64) and the f32 kernel's: both within the bound,
    // which must also be tight enough to be useful (under 2% of ‖x‖·‖c‖ for random
    // rows at d = 384).
    for dim in [1usize, 5, 67, 384, 1030] {
        let (m, k) = (20, 40);
        let mut x = rows(m, dim, 7 + dim as u64);
        x[..6 * dim].copy_from_slice(&awkward(dim));
        let mut c = rows(k, dim, 8 + dim as u64);
        c[..dim].copy_from_slice(&x[5 * dim..6 * dim]); // the constant row: exact integers
        let p = PackedI8::new(&c, dim);
        let (mut out, mut err) = (vec![0f32; m * k], vec![0f64; m]);
        dot_batch_i8(&x, &p, &mut out, &mut err);
        let mut f = vec![0f32; m * k];
        crate::distance::dot_batch(&x, &c, dim, &mut f);
        for i in 0..m {
            let xi = &x[i * dim..(i + 1) * dim];
            assert!(err[i].is_finite() && err[i] > 0.0, "row {i}: {}", err[i]);
            for j in 0..k {
                let cj = &c[j * dim..(j + 1) * dim];
                let exact = crate::distance::dot_reference(xi, cj);
                let v = f64::from(out[i * k + j]);
                assert!(
                    (v - exact).abs() <= err[i],
                    "dim {dim} ({i},{j}): {v} vs exact {exact}, bound {}",
                    err[i]
                );
                let fv = f64::from(f[i * k + j]);
                assert!((v - fv).abs() <= 2.0 * err[i], "dim {dim} ({i},{j}) vs f32");
            }
            if dim == 384 && i >= 6 {
                let scale = crate::distance::norm2(xi).sqrt() as f64 * p.bound.right.norm;
                assert!(err[i] < 0.02 * scale, "row {i}: bound {} of {scale}", err[i]);
            }
        }
    }
}

#[test]
fn an_aligned_residual_nearly_reaches_the_bound() {
    // c = the signs of x's rounding residual (±1, exact in int8): (x − x̃)·c = ‖x − x̃‖₁,
    // about 0.87·‖x − x̃‖·‖c‖ for a uniform residual, so the bound is nearly attained,
    // and a bound without its residual term would not cover it.
    let dim = 384;
    let x = rows(1, dim, 77);
    let mut w = vec![0u32; dim / 4];
    let (s, _, _) = quantize_row(&x, &mut w, 0);
    let c: Vec<f32> = x
        .iter()
        .map(|&v| {
            if f64::from(v) >= f64::from(s) * f64::from((v / s).round_ties_even()) {
                1.0
            } else {
                -1.0
            }
        })
        .collect();
    let p = PackedI8::new(&c, dim);
    let (mut out, mut err) = (vec![0f32; 1], vec![0f64; 1]);
    dot_batch_i8(&x, &p, &mut out, &mut err);
    let exact = crate::distance::dot_reference(&x, &c);
    let miss = (f64::from(out[0]) - exact).abs();
    assert!(miss <= err[0] && miss >= 0.7 * err[0], "error {miss}, bound {}", err[0]);
}

#[test]
fn rows_that_cannot_be_scaled_give_nan_or_zero() {
    let dim = 9;
    let c = PackedI8::new(&rows(3, dim, 1), dim);
    let mut x = rows(3, dim, 2);
    x[1] = f32::NAN;
    x[dim + 2] = f32::INFINITY;
    x[2 * dim..].fill(0.0);
    x.extend((0..dim).map(|t| t as f32 * 1e19)); // squares overflow f32: treated as ∞
    let (mut out, mut err) = (vec![0f32; 12], vec![0f64; 4]);
    dot_batch_i8(&x, &c, &mut out, &mut err);
    assert!(out[..6].iter().all(|v| v.is_nan()) && err[0].is_nan() && err[1].is_nan());
    assert!(out[6..9].iter().all(|&v| v == 0.0) && err[2] > 0.0 && err[2] < 1e-20);
    assert!(out[9..].iter().all(|v| v.is_nan()) && err[3].is_nan());
    // A right-hand row that cannot be scaled makes every row's bound NaN.
    let mut c = rows(3, dim, 1);
    c[dim + 4] = f32::NAN;
    dot_batch_i8(&rows(2, dim, 5), &PackedI8::new(&c, dim), &mut out[..6], &mut err[..2]);
    assert!(err[..2].iter().all(|e| e.is_nan()));
}

#[test]
fn skipped_tiles_are_minus_infinity_and_the_others_unchanged() {
    for (m, k, dim) in [(1usize, 1usize, 5usize), (13, 35, 67), (40, 100, 384), (12, 64, 8)] {
        let x = rows(m, dim, 70 + m as u64);
        let c = PackedI8::new(&rows(k, dim, 80 + k as u64), dim);
        let left = I8Rows::new(&x, dim);
        let mut full = vec![0f32; m * k];
        let mut err = vec![0f64; m];
        left.dot_batch(&c, &mut full, &mut err);
        // Every third tile by position, recorded as the kernel asks.
        let asked = std::sync::Mutex::new(Vec::new());
        let skip = |i: Range<usize>, j: Range<usize>| {
            asked.lock().unwrap().push((i.clone(), j.clone()));
            (i.start / MR + j.start / NR) % 3 == 1
        };
        let mut where_ = vec![0f32; m * k];
        left.dot_batch_where(&c, &mut where_, &mut err, Some(&skip));
        let tiles = std::mem::take(&mut *asked.lock().unwrap());
        // The tiles tile the product: each output in exactly one, none larger than MR x NR.
        let mut seen = vec![0u8; m * k];
        for (i, j) in &tiles {
            assert!(i.len() <= MR && j.len() <= NR && !i.is_empty() && !j.is_empty());
            for r in i.clone() {
                for col in j.clone() {
                    seen[r * k + col] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&s| s == 1), "m {m} k {k}");
        let mut skipped = 0;
        for (i, j) in &tiles {
            let gone = (i.start / MR + j.start / NR) % 3 == 1;
            skipped += usize::from(gone);
            for r in i.clone() {
                for col in j.clone() {
                    let (a, b) = (where_[r * k + col], full[r * k + col]);
                    if gone {
                        assert_eq!(a, f32::NEG_INFINITY);
                    } else {
                        assert_eq!(a.to_bits(), b.to_bits());
                    }
                }
            }
        }
        assert_eq!(skipped > 0, tiles.len() > 1, "m {m} k {k}");
        // The portable kernel leaves out the same tiles (the SIMD one, where it runs).
        let quads = dim.div_ceil(4);
        let mut slow = vec![0f32; m * k];
        portable_where(&left.a, &left.scale, &c, m, quads, &mut slow, Some(&skip));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&slow), bits(&where_), "m {m} k {k}");
        if simd::available() {
            let mut fast = vec![0f32; m * k];
            simd::dot_batch_checked(&left.a, &left.scale, &c, m, quads, &mut fast, Some(&skip));
            assert_eq!(bits(&fast), bits(&where_), "m {m} k {k}");
        }
    }
}

#[test]
fn rows_quantized_once_pack_to_the_same_bits_on_either_side() {
    // Awkward rows too (NaN, zeros, denormals, a spike), and a dim that pads its last word.
    for dim in [7, 16, 384] {
        let mut x = rows(40, dim, 9);
        x.extend(awkward(dim));
        x[5 * dim + 1] = f32::NAN;
        let q = Quantized::new(&x, dim);
        assert_eq!(q.rows(), x.len() / dim);
        // Rows in a scrambled order, half from the quantized copy and half afresh.
        let order: Vec<usize> = (0..q.rows()).map(|i| (i * 17) % q.rows()).collect();
        let mixed = || {
            order.iter().map(|&i| {
                if i % 2 == 0 {
                    RowSource::Quantized(&q, i)
                } else {
                    RowSource::Raw(&x[i * dim..(i + 1) * dim])
                }
            })
        };
        let fresh = || order.iter().map(|&i| &x[i * dim..(i + 1) * dim]);
        let (a, b) = (PackedI8::from_sources(mixed(), dim), PackedI8::from_rows(fresh(), dim));
        assert_eq!((&a.data, a.k, a.dim), (&b.data, b.k, b.dim), "dim {dim}");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!((bits(&a.scale), &a.corr), (bits(&b.scale), &b.corr));
        assert_eq!(format!("{:?}", a.bound), format!("{:?}", b.bound));
        let (l, r) = (I8Rows::from_sources(mixed(), dim), I8Rows::from_rows(fresh(), dim));
        assert_eq!(
            (&l.a, bits(&l.scale), l.dim),
            (&r.a, bits(&r.scale), r.dim),
            "dim {dim}"
        );
        assert_eq!(format!("{:?}", l.norms), format!("{:?}", r.norms));
    }
}
