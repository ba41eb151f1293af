//! Tests of the certified search: the same labels, dots and second nearest as the
//! f32 search, bit for bit, on every path and on near ties.

use super::*;
use crate::cluster::centroids::argmax_row;
use crate::distance::normalize;
use crate::rng::Rng;

fn unit(n: usize, dim: usize, r: &mut Rng) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n * dim).map(|_| r.normal() as f32).collect();
    x.chunks_exact_mut(dim).for_each(|v| {
        normalize(v);
    });
    x
}

#[test]
fn same_labels_and_dots_as_the_f32_search() {
    let mut r = Rng::new(11);
    for &(n, dim, k) in &[(600, 48, 70), (300, 16, 1100), (200, 33, 1)] {
        let mut cents = unit(k, dim, &mut r);
        if k > 5 {
            // An exact copy: rows near centroid 0 tie between 0 and 5 (first 0, second 5).
            let c0 = cents[..dim].to_vec();
            cents[5 * dim..6 * dim].copy_from_slice(&c0);
        }
        // Rows near centroids (few candidates), plus near-ties and exact copies of centroids.
        let mut x = Vec::new();
        for i in 0..n {
            let j = i % k;
            let noise = if i % 3 == 0 { 0.02 } else { 0.3 };
            let mut v: Vec<f32> = cents[j * dim..(j + 1) * dim]
                .iter()
                .map(|&c| c + noise * r.normal() as f32 / (dim as f32).sqrt())
                .collect();
            if i % 7 == 0 && k > 1 {
                // Midway between two centroids: a near-tie.
                let j2 = (j + 1) % k;
                v = (0..dim).map(|t| cents[j * dim + t] + cents[j2 * dim + t]).collect();
            }
            if i % 11 == 0 {
                v = cents[j * dim..(j + 1) * dim].to_vec();
            }
            normalize(&mut v);
            x.extend(v);
        }
        x[..dim].iter_mut().for_each(|v| *v = 0.0); // an unusable row: every centroid ties
        let c = Centroids::try_new(cents, dim, Distance::Cosine).unwrap();
        for p in [LowPrecision::Bf16, LowPrecision::Int8] {
            let s = CertifiedSearch::build(&c, p);
            let (mut l, mut d) = (vec![0; n], vec![0.0; n]);
            s.nearest(&x, &mut l, &mut d);
            let (mut l1, mut d1) = (vec![0; n], vec![0.0; n]);
            c.nearest(&x, &mut l1, &mut d1);
            assert_eq!(l, l1, "{p:?} n {n} dim {dim} k {k}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&d), bits(&d1));
            let (mut l2, mut d2, mut s2) = (vec![0; n], vec![0.0; n], vec![0; n]);
            s.nearest_two(&x, &mut l2, &mut d2, &mut s2);
            let (mut l3, mut d3, mut s3) = (vec![0; n], vec![0.0; n], vec![0; n]);
            c.nearest_two(&x, &mut l3, &mut d3, &mut s3);
            assert_eq!(l2, l3, "nearest_two labels, n {n} dim {dim} k {k}");
            assert_eq!(bits(&d2), bits(&d3));
            assert_eq!(s2, s3, "second nearest, n {n} dim {dim} k {k}");
        }
    }
}

/// The int8 operands kept in a [`RowCache`] give what quantizing afresh gives, against
/// each of several centroid sets (the first search fills the cache, the others use it),
/// with and without bounds; the chunks straddle `CHUNK_ROWS`.
#[test]
fn cached_rows_give_the_same_bits_for_every_set_of_centroids() {
    let mut r = Rng::new(23);
    let (n, dim, k) = (CHUNK_ROWS + 77, 40, 90);
    let x = unit(n, dim, &mut r);
    let cache = RowCache::new(n);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for round in 0..3 {
        let c = Centroids::try_new(unit(k, dim, &mut r), dim, Distance::Cosine).unwrap();
        let s = CertifiedSearch::build(&c, LowPrecision::Int8);
        let (mut l, mut d) = (vec![0; n], vec![0.0; n]);
        s.nearest(&x, &mut l, &mut d);
        let (mut l1, mut d1) = (vec![0; n], vec![0.0; n]);
        s.nearest_cached(&x, Some(&cache), &mut l1, &mut d1);
        assert_eq!((&l, bits(&d)), (&l1, bits(&d1)), "round {round}");
        let (mut cb, mut rb) = (vec![0; n * BOUND_CANDIDATES], vec![0.0; n]);
        let (mut l2, mut d2) = (vec![0; n], vec![0.0; n]);
        s.nearest_bounded(&x, &mut l2, &mut d2, &mut cb, &mut rb);
        let (mut cc, mut rc) = (vec![0; n * BOUND_CANDIDATES], vec![0.0; n]);
        let (mut l3, mut d3) = (vec![0; n], vec![0.0; n]);
        s.nearest_bounded_cached(&x, Some(&cache), &mut l3, &mut d3, &mut cc, &mut rc);
        assert_eq!((&l2, bits(&d2), &cb), (&l3, bits(&d3), &cc), "bounded, round {round}");
        assert_eq!(
            rb.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            rc.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(l, l2);
    }
    assert!(cache.chunks.iter().all(|c| c.get().is_some()), "every chunk was cached");
}

/// Rows searched by index give what the same rows gathered first give, for a
/// selection out of order and spanning several chunks.
#[test]
fn rows_by_index_equal_the_gathered_rows() {
    let mut r = Rng::new(5);
    let (n, dim, k) = (2 * CHUNK_ROWS + 50, 24, 60);
    let x = unit(n, dim, &mut r);
    let c = Centroids::try_new(unit(k, dim, &mut r), dim, Distance::Cosine).unwrap();
    let sel: Vec<u32> = (0..n as u32).rev().filter(|i| i % 3 != 0).collect();
    let gathered: Vec<f32> = sel
        .iter()
        .flat_map(|&i| x[i as usize * dim..(i as usize + 1) * dim].iter().copied())
        .collect();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for p in [LowPrecision::Bf16, LowPrecision::Int8] {
        let s = CertifiedSearch::build(&c, p);
        let (mut l, mut d) = (vec![0; sel.len()], vec![0.0; sel.len()]);
        s.nearest_rows(&x, &sel, &mut l, &mut d);
        let (mut l1, mut d1) = (vec![0; sel.len()], vec![0.0; sel.len()]);
        s.nearest(&gathered, &mut l1, &mut d1);
        assert_eq!((l, bits(&d)), (l1, bits(&d1)), "{p:?}");
    }
}

#[test]
fn narrowing_keeps_the_near_ties_and_drops_the_rest() {
    // Centroid 0 is the row itself; 1..=20 score 0.995, 0.994, ... (all inside the
    // int8 window, far outside the f32 one); 21 is centroid 0 nudged by 1e-4 (a near
    // tie the f32 dots cannot order without the kernel's chain).
    let dim = 64;
    let e = |t: usize| {
        (0..dim)
            .map(|q| if q == t { 1.0f32 } else { 0.0 })
            .collect::<Vec<f32>>()
    };
    let mut cents = e(0);
    for j in 1..=20 {
        let cos = 0.995 - 0.001 * (j - 1) as f32;
        let mut v: Vec<f32> = e(0)
            .iter()
            .zip(e(j))
            .map(|(a, b)| cos * a + (1.0 - cos * cos).sqrt() * b)
            .collect();
        normalize(&mut v);
        cents.extend(v);
    }
    let mut near: Vec<f32> = e(0).iter().zip(e(30)).map(|(a, b)| a + 1e-4 * b).collect();
    normalize(&mut near);
    cents.extend(near);
    let c = Centroids::try_new(cents, dim, Distance::Cosine).unwrap();
    let search = CertifiedSearch::build(&c, LowPrecision::Int8);
    let x = e(0);
    let mut s = Scratch {
        pairs: (0..22).map(|j| (0u32, j)).collect(),
        ..Default::default()
    };
    search.narrow(&x, &mut s, false);
    assert_eq!(s.pairs, vec![(0, 0), (0, 21)]);
    // For the two nearest, the second place is the near tie 21 too: nothing else stays.
    s.pairs = (0..22).map(|j| (0u32, j)).collect();
    search.narrow(&x, &mut s, true);
    assert_eq!(s.pairs, vec![(0, 0), (0, 21)]);
    // Without 21, the second place is contested by 1 (0.995) alone; 2 (0.994) is
    // 0.001 below it, far outside 4e, and goes.
    s.pairs = (0..21).map(|j| (0u32, j)).collect();
    search.narrow(&x, &mut s, true);
    assert_eq!(s.pairs, vec![(0, 0), (0, 1)]);
    // A row alone with one candidate is left as it is, and with two for two places.
    s.pairs = vec![(0, 7)];
    search.narrow(&x, &mut s, false);
    assert_eq!(s.pairs, vec![(0, 7)]);
    s.pairs = vec![(0, 7), (0, 9)];
    search.narrow(&x, &mut s, true);
    assert_eq!(s.pairs, vec![(0, 7), (0, 9)]);
}

/// Rows whose second place is a near tie between two centroids (which the fast dots
/// cannot order) keep both contenders, and `nearest_two` matches the f32 search bit
/// for bit on them.
#[test]
fn second_place_near_ties_are_settled_by_the_kernel() {
    let dim = 48;
    let mut r = Rng::new(41);
    let base = unit(6, dim, &mut r);
    let mut cents = base[..dim].to_vec(); // 0: the rows' centre
    for j in 1..6 {
        // 1..5: at cosine about 0.6 from centre 0, 2 a hair's breadth from 1.
        let src = if j == 2 { 1 } else { j };
        let mut v: Vec<f32> = (0..dim)
            .map(|t| 0.6 * base[t] + 0.8 * base[src * dim + t] + if j == 2 { 1e-6 } else { 0.0 })
            .collect();
        normalize(&mut v);
        cents.extend(v);
    }
    let c = Centroids::try_new(cents, dim, Distance::Cosine).unwrap();
    let n = 300;
    let mut x = Vec::with_capacity(n * dim);
    for i in 0..n {
        let mut v: Vec<f32> = (0..dim)
            .map(|t| base[t] + 0.3 * c.row(1)[t] + 1e-3 * (((i * 31 + t * 7) % 13) as f32 - 6.0))
            .collect();
        normalize(&mut v);
        x.extend(v);
    }
    for p in [LowPrecision::Bf16, LowPrecision::Int8] {
        let s = CertifiedSearch::build(&c, p);
        let (mut l, mut d, mut s2) = (vec![0; n], vec![0.0; n], vec![0; n]);
        s.nearest_two(&x, &mut l, &mut d, &mut s2);
        let (mut l1, mut d1, mut s1) = (vec![0; n], vec![0.0; n], vec![0; n]);
        c.nearest_two(&x, &mut l1, &mut d1, &mut s1);
        assert_eq!((&l, &s2), (&l1, &s1), "{p:?}");
        assert_eq!(
            d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            d1.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(s1.iter().all(|&j| j == 1 || j == 2), "the second place is 1 or 2");
    }
}

/// Score rows with ties, NaN, ±∞, signed zeros and every tail length.
fn awkward_rows(r: &mut Rng) -> Vec<Vec<f32>> {
    let mut rows = Vec::new();
    for n in [0, 1, 5, 15, 16, 17, 63, 64, 65, 100, 1000, 1001] {
        for kind in 0..6 {
            let row: Vec<f32> = (0..n)
                .map(|_| match (kind, r.below(12)) {
                    (1, 0) => f32::NAN,
                    (2, _) => f32::NAN,
                    (3, 0) => f32::NEG_INFINITY,
                    (3, _) => f32::NAN,
                    (4, 0) => 0.0,
                    (4, 1) => -0.0,
                    (5, 0) => f32::INFINITY,
                    // Few distinct values: many exact ties.
                    (_, _) if kind == 0 => (r.below(5) as f32) * 0.25,
                    _ => r.normal() as f32,
                })
                .collect();
            rows.push(row);
        }
    }
    rows
}

/// The same score value (±0 count as one: they give the same cut), or both NaN.
fn assert_same_score(got: f32, want: f32, row: &[f32]) {
    assert!(
        got == want || (got.is_nan() && want.is_nan()),
        "{got} vs {want} for {row:?}"
    );
}

#[test]
fn max_score_is_the_value_of_argmax_row() {
    let mut r = Rng::new(11);
    for row in awkward_rows(&mut r) {
        let want = argmax_row(&row, None).1;
        for got in [max_score(&row), candidates::max_score_plain(&row)] {
            assert_same_score(got, want, &row);
        }
    }
}

#[test]
fn top_two_is_the_largest_and_the_largest_of_the_others() {
    let mut r = Rng::new(13);
    for row in awkward_rows(&mut r) {
        let (jt, top) = argmax_row(&row, None);
        let second = row
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != jt)
            .fold(f32::NEG_INFINITY, |a, (_, &v)| a.max(v));
        for got in [top_two(&row), candidates::top_two_plain(&row)] {
            assert_same_score(got.0, top, &row);
            assert_same_score(got.1, second, &row);
        }
    }
}

#[test]
fn candidate_scans_agree_with_the_plain_loop() {
    let mut r = Rng::new(12);
    for row in awkward_rows(&mut r) {
        for cut in [
            f32::NEG_INFINITY,
            -1.0,
            -0.0,
            0.0,
            0.25,
            0.5,
            1.0,
            f32::INFINITY,
            f32::NAN,
        ] {
            let want: Vec<u32> = (0..row.len() as u32).filter(|&j| row[j as usize] >= cut).collect();
            let (mut fast, mut plain) = (Vec::new(), Vec::new());
            candidates(&row, cut, &mut fast);
            candidates::candidates_plain(&row, cut, &mut plain);
            assert_eq!(fast, want, "cut {cut}, row {row:?}");
            assert_eq!(plain, want, "cut {cut}, row {row:?}");
        }
    }
}
