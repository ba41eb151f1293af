//! Tests of the drift bounds: the same labels and dots as the full search, step by step.
use super::*;
use crate::cluster::centroids::Distance;
use crate::cluster::kmeans::tests::blobs;
use crate::distance::{LowPrecision, normalize};
use crate::distance::{PackedRows, dot_batch_packed};
use crate::rng::Rng;

#[test]
fn a_centroid_left_out_that_moves_closer_is_found() {
    // Row 30 scores slightly less on each of e1..e(M+4), so e(M+1).. are left out of its
    // M = BOUND_CANDIDATES candidates; the last centroid then moves 0.08 towards it and
    // becomes its nearest, while rows 0..30 (near e0) keep their cluster by the bound.
    // Alone, that centroid is one of the movers whose dots every row gets; when all
    // the others move almost as far (0.06), the grown bound must send row 30 to the
    // full search.
    let near = BOUND_CANDIDATES + 4;
    let dim = near + 8;
    let unit = |mut v: Vec<f32>| {
        normalize(&mut v);
        v
    };
    let e = |i: usize| (0..dim).map(|t| if t == i { 1.0 } else { 0.0 }).collect::<Vec<f32>>();
    let cents: Vec<f32> = (0..=near).flat_map(e).collect();
    let step = 0.26 / near as f32;
    let r = unit(
        (0..dim)
            .map(|t| {
                if (1..=near).contains(&t) {
                    1.0 - step * t as f32
                } else {
                    0.0
                }
            })
            .collect(),
    );
    let mut data = Vec::new();
    for q in 0..30 {
        let mut v = e(0);
        v[dim - 1] = 0.01 * q as f32;
        data.extend(unit(v));
    }
    data.extend(&r);
    let n = 31;
    let old = Centroids::try_new(cents.clone(), dim, Distance::Cosine).unwrap();
    for others_move in [false, true] {
        let mut moved = cents.clone();
        if others_move {
            for j in 0..near {
                moved[j * dim + dim - 1] = 0.06;
                normalize(&mut moved[j * dim..(j + 1) * dim]);
            }
        }
        let last = unit(e(near).iter().zip(&r).map(|(a, b)| a + 0.08 * b).collect());
        moved[near * dim..(near + 1) * dim].copy_from_slice(&last);
        let new = Centroids::try_new(moved, dim, Distance::Cosine).unwrap();
        let mut b = DriftBounds::new(&data, dim, f64::INFINITY);
        let (mut l, mut d) = (vec![0u32; n], vec![0f32; n]);
        b.assign(&data, &old, &mut l, &mut d);
        assert_eq!(l[30], 1);
        assert!(!b.cand[30 * BOUND_CANDIDATES..31 * BOUND_CANDIDATES].contains(&(near as u32)));
        b.moved(&old, &new);
        assert_eq!(b.explicit.contains(&(near as u32)), !others_move, "{:?}", b.explicit);
        assert!(b.max_drift < 0.1, "{}", b.max_drift);
        // `dots` comes in holding the last iteration's dots, as in the fit.
        let (mut l2, mut d2) = (vec![0u32; n], d.clone());
        let searched = b.assign(&data, &new, &mut l2, &mut d2);
        let (mut l3, mut d3) = (vec![0u32; n], vec![0f32; n]);
        new.nearest(&data, &mut l3, &mut d3);
        assert_eq!(l3[30], near as u32, "the moved centroid is the nearest now");
        assert_eq!(l2, l3, "others move: {others_move}");
        assert_eq!(
            d2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            d3.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(searched < n as u64, "rows near e0 keep their cluster by the bound");
    }
}

#[test]
fn one_far_mover_is_computed_rather_than_growing_every_bound() {
    // One centroid moves 0.25 (a full candidate window), the rest stay: grown by that
    // drift, no row's bound would hold, so the mover's dots are computed for every
    // row instead and the rows keep their clusters by the others' drift (zero).
    let (k, dim) = (40, 32);
    let (data, truth) = blobs(k, 50, dim, 0.05, 5);
    let n = truth.len();
    let mut cents = vec![0f32; k * dim];
    for (i, &t) in truth.iter().enumerate() {
        for q in 0..dim {
            cents[t as usize * dim + q] += data[i * dim + q];
        }
    }
    for c in cents.chunks_exact_mut(dim) {
        normalize(c);
    }
    let old = Centroids::try_new(cents.clone(), dim, Distance::Cosine).unwrap();
    let mut rng = Rng::new(9);
    let step: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
    let norm = step.iter().map(|v| v * v).sum::<f32>().sqrt();
    for q in 0..dim {
        cents[q] += 0.25 * step[q] / norm;
    }
    normalize(&mut cents[..dim]);
    let new = Centroids::try_new(cents, dim, Distance::Cosine).unwrap();
    let mut b = DriftBounds::new(&data, dim, f64::INFINITY);
    let (mut l, mut d) = (vec![0u32; n], vec![0f32; n]);
    b.assign(&data, &old, &mut l, &mut d);
    b.moved(&old, &new);
    let (mut l2, mut d2) = (vec![0u32; n], d.clone());
    let searched = b.assign(&data, &new, &mut l2, &mut d2);
    assert_eq!(b.explicit, vec![0], "the one centroid that moved");
    assert!(searched < n as u64 / 10, "{searched} of {n} rows searched");
    assert_full_search(&new, &data, &l2, &d2);
}

#[test]
fn near_ties_get_the_kernels_choice_through_the_bounds() {
    // Rows midway between two centroids score within rounding of both: the fast dots
    // may order them either way, and the kernel's chain must decide. The centroids then
    // move a hair, so every row goes through the bounds, not the full search.
    let (k, dim) = (50, 48);
    let mut rng = Rng::new(21);
    let unit = |rng: &mut Rng| {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
        normalize(&mut v);
        v
    };
    let cents: Vec<f32> = (0..k).flat_map(|_| unit(&mut rng)).collect();
    let mut data = Vec::new();
    for i in 0..2000 {
        let (a, b) = (i % k, (i * 7 + 1) % k);
        let mut v: Vec<f32> = (0..dim).map(|t| cents[a * dim + t] + cents[b * dim + t]).collect();
        normalize(&mut v);
        data.extend(v);
    }
    let n = data.len() / dim;
    let old = Centroids::try_new(cents.clone(), dim, Distance::Cosine).unwrap();
    let moved: Vec<f32> = cents.iter().map(|&v| v * (1.0 + 1e-6 * rng.normal() as f32)).collect();
    let new = Centroids::try_new(moved, dim, Distance::Cosine).unwrap();
    let mut b = DriftBounds::new(&data, dim, f64::INFINITY);
    let (mut l, mut d) = (vec![0u32; n], vec![0f32; n]);
    b.assign(&data, &old, &mut l, &mut d);
    b.moved(&old, &new);
    let searched = b.assign(&data, &new, &mut l, &mut d);
    assert!(searched < n as u64 / 10, "{searched} of {n} rows searched");
    assert_full_search(&new, &data, &l, &d);
}

/// `labels` and `dots` are the f32 full search's, bit for bit.
fn assert_full_search(c: &Centroids, data: &[f32], labels: &[u32], dots: &[f32]) {
    let n = labels.len();
    let (mut l, mut d) = (vec![0u32; n], vec![0f32; n]);
    c.nearest(data, &mut l, &mut d);
    assert_eq!(labels, l);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(dots), bits(&d));
}

#[test]
fn the_bound_covers_every_centroid_left_out() {
    let (data, _) = blobs(25, 20, 40, 0.4, 31);
    let dim = 40;
    let n = data.len() / dim;
    let mut r = Rng::new(5);
    for k in [25, 12, 3] {
        let cents: Vec<f32> = (0..k * dim).map(|_| r.normal() as f32).collect();
        let c = Centroids::try_new(cents, dim, Distance::Cosine).unwrap();
        let mut all = vec![0f32; n * k];
        crate::distance::dot_batch(&data, c.as_slice(), dim, &mut all);
        type Search<'a> = &'a dyn Fn(&mut [u32], &mut [f32], &mut [u32], &mut [f64]);
        let searches: [Search; 3] = [
            &|l, d, cd, o| c.nearest_bounded(&data, l, d, cd, o),
            &|l, d, cd, o| CertifiedSearch::build(&c, LowPrecision::Bf16).nearest_bounded(&data, l, d, cd, o),
            &|l, d, cd, o| CertifiedSearch::build(&c, LowPrecision::Int8).nearest_bounded(&data, l, d, cd, o),
        ];
        for search in searches {
            let m = BOUND_CANDIDATES;
            let (mut l, mut d, mut cd, mut o) = (vec![0u32; n], vec![0f32; n], vec![0u32; n * m], vec![0f64; n]);
            search(&mut l, &mut d, &mut cd, &mut o);
            let (mut l1, mut d1) = (vec![0u32; n], vec![0f32; n]);
            c.nearest(&data, &mut l1, &mut d1);
            assert_eq!(l, l1);
            for i in 0..n {
                let cs = &cd[i * m..(i + 1) * m];
                assert!(
                    cs.contains(&l[i]) && cs.windows(2).all(|w| w[0] < w[1] || w[1] == u32::MAX),
                    "row {i}: {cs:?}"
                );
                // The candidates' dots, as the k-means step computes them (the row against
                // the candidates packed on their own), are the search's bits.
                let used: Vec<u32> = cs.iter().copied().filter(|&j| j != u32::MAX).collect();
                let rows: Vec<f32> = used.iter().flat_map(|&j| c.row(j as usize).to_vec()).collect();
                let mut f = vec![0f32; used.len()];
                dot_batch_packed(&data[i * dim..(i + 1) * dim], &PackedRows::new(&rows, dim), &mut f);
                for (&j, &v) in used.iter().zip(&f) {
                    assert_eq!(v.to_bits(), all[i * k + j as usize].to_bits(), "row {i} centroid {j}");
                }
                let left: Vec<f32> = (0..k)
                    .filter(|j| !cs.contains(&(*j as u32)))
                    .map(|j| all[i * k + j])
                    .collect();
                match left.iter().copied().reduce(f32::max) {
                    None => assert_eq!(o[i], f64::NEG_INFINITY, "k {k}: nothing left out"),
                    Some(best) => {
                        assert!(o[i] >= best as f64, "row {i}: bound {} < {best}", o[i]);
                        // Tight enough to be useful: near the best left out, or the window's edge.
                        let top = all[i * k..(i + 1) * k].iter().copied().fold(f32::MIN, f32::max);
                        let edge = best.max(top - 0.25) as f64;
                        assert!(o[i] - edge < 0.02, "row {i}: bound {} vs {edge}", o[i]);
                    }
                }
            }
        }
    }
}
