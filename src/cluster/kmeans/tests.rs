//! Tests of the parent module (`blobs` is shared with the drift-bound tests).
use super::*;

#[test]
fn incremental_updates_give_the_bits_of_a_fresh_one() {
    // Warm updates (sums brought along by the rows that moved) give the bits of a cold
    // one: after a few rows move, after two rows swap clusters, and after a cluster
    // empties (split from the largest) and refills.
    let (k, dim) = (12, 16);
    let (data, truth) = blobs(k, 30, dim, 0.3, 4);
    let n = truth.len();
    for distance in [Distance::Cosine, Distance::L2] {
        let params = KMeansParams {
            distance,
            ..KMeansParams::default()
        };
        let init: Vec<f32> = (0..k)
            .flat_map(|j| data[j * 30 * dim..(j * 30 + 1) * dim].to_vec())
            .collect();
        let mut c = Centroids::try_new(init, dim, distance).unwrap();
        let mut labels = truth.clone();
        let mut warm = None;
        for t in 0..5 {
            let (cold, cold_filled) = update(&data, dim, k, &labels, &c, &params, &mut None).unwrap();
            let (hot, hot_filled) = update(&data, dim, k, &labels, &c, &params, &mut warm).unwrap();
            let bits = |x: &Centroids| x.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&hot), bits(&cold), "{distance:?} step {t}");
            assert_eq!(hot_filled, cold_filled);
            c = hot;
            match t {
                0 => labels[3] = 5,
                1 => labels.swap(0, 40),
                2 => labels.iter_mut().filter(|v| **v == 7).for_each(|v| *v = 8),
                3 => labels[2] = 7,
                _ => {}
            }
            assert_eq!(labels.len(), n);
        }
    }
}

/// `k` well-separated unit-norm blobs of `per` rows in `dim` dims.
pub(crate) fn blobs(k: usize, per: usize, dim: usize, spread: f32, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let centres: Vec<Vec<f32>> = (0..k)
        .map(|_| {
            let mut c: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
            normalize(&mut c);
            c
        })
        .collect();
    let mut data = Vec::new();
    let mut truth = Vec::new();
    for i in 0..k * per {
        let c = i % k;
        let mut x: Vec<f32> = centres[c].iter().map(|&v| v + spread * rng.normal() as f32).collect();
        normalize(&mut x);
        data.extend(x);
        truth.push(c as u32);
    }
    (data, truth)
}

fn purity(labels: &[u32], truth: &[u32], k: usize) -> f64 {
    let mut best = 0;
    for c in 0..k {
        let mut counts = vec![0usize; k];
        for (l, t) in labels.iter().zip(truth) {
            if *t as usize == c {
                counts[*l as usize] += 1;
            }
        }
        best += counts.iter().max().unwrap();
    }
    best as f64 / labels.len() as f64
}

#[test]
fn recovers_planted_clusters_cosine_and_l2() {
    let (data, truth) = blobs(8, 50, 16, 0.05, 1);
    for distance in [Distance::Cosine, Distance::L2] {
        let p = KMeansParams::default().with_k(8).with_distance(distance).with_seed(3);
        let km = KMeans::fit(&data, 16, &p, &mut |_| {}).unwrap();
        let mut labels = vec![0; truth.len()];
        let mut dots = vec![0.0; truth.len()];
        km.centroids.nearest(&data, &mut labels, &mut dots);
        assert!(purity(&labels, &truth, 8) > 0.99, "{distance}");
        assert!(km.converged);
    }
}

#[test]
fn inertia_never_increases() {
    let (data, _) = blobs(10, 40, 8, 0.4, 2);
    let p = KMeansParams {
        tolerance: 0.0,
        max_iters: 15,
        ..KMeansParams::default().with_k(10)
    };
    let km = KMeans::fit(&data, 8, &p, &mut |_| {}).unwrap();
    for w in km.inertia_history.windows(2) {
        assert!(w[1] <= w[0] * (1.0 + 1e-6), "{:?}", km.inertia_history);
    }
}

#[test]
fn same_result_for_one_and_two_threads() {
    let (data, _) = blobs(12, 60, 24, 0.3, 5);
    let p = KMeansParams::default().with_k(12).with_seed(9);
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| KMeans::fit(&data, 24, &p, &mut |_| {}).unwrap())
    };
    let (a, b) = (run(1), run(2));
    assert_eq!(a.centroids.as_slice(), b.centroids.as_slice());
    assert_eq!(a.inertia_history, b.inertia_history);
}

#[test]
fn empty_clusters_are_reseeded() {
    // 3 distinct points repeated, k = 5: at most 3 clusters can be non-empty
    // after assignment, so the update must split to fill the rest.
    let mut data = Vec::new();
    for i in 0..30 {
        let mut v = vec![0.0f32; 4];
        v[i % 3] = 1.0;
        data.extend(v);
    }
    let p = KMeansParams {
        tolerance: 0.0,
        max_iters: 5,
        ..KMeansParams::default().with_k(5)
    };
    let km = KMeans::fit(&data, 4, &p, &mut |_| {}).unwrap();
    assert_eq!(km.centroids.k(), 5);
    assert!(km.centroids.as_slice().iter().all(|v| v.is_finite()));
}

#[test]
fn drift_bounds_give_the_same_fit_bit_for_bit() {
    // Tight blobs (most rows keep their cluster by the bound), overlapping ones (many
    // near-ties get the full search), and a case that re-seeds empty clusters.
    let mut cases = vec![
        (blobs(20, 40, 32, 0.05, 21), 20, 32),
        (blobs(15, 60, 24, 0.6, 22), 15, 24),
        (blobs(30, 30, 48, 0.25, 23), 30, 48),
    ];
    let mut dup = Vec::new();
    for i in 0..40 {
        let mut v = vec![0.0f32; 4];
        v[i % 3] = 1.0;
        dup.extend(v);
    }
    cases.push(((dup, vec![]), 5, 4));
    for (((data, _), k, dim), case) in cases.into_iter().zip(0..) {
        let p = KMeansParams {
            tolerance: 0.0,
            max_iters: 12,
            ..KMeansParams::default().with_k(k).with_seed(case)
        };
        let plain = KMeans::fit_with(&data, dim, &p, &mut |_| {}, None).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // The default, and bounds kept from the first search on (large drifts too).
        for track in [TRACK_BELOW_DRIFT, f64::INFINITY] {
            let bounded = KMeans::fit_with(&data, dim, &p, &mut |_| {}, Some(track)).unwrap();
            let same = bits(bounded.centroids.as_slice()) == bits(plain.centroids.as_slice());
            assert!(same, "case {case}: centroids differ");
            assert_eq!(bounded.inertia_history, plain.inertia_history, "case {case}");
            assert_eq!(bounded.iterations, plain.iterations, "case {case}");
            let n = (data.len() / dim) as u64;
            assert!(plain.searched_history.iter().all(|&s| s == n));
            assert_eq!(bounded.searched_history[0], n, "the first iteration searches every row");
            if case == 0 || track == f64::INFINITY {
                // The bound must actually spare rows.
                let spared = bounded.searched_history.iter().skip(1).filter(|&&s| s < n).count();
                assert!(spared > 0, "case {case}: {:?}", bounded.searched_history);
            }
        }
    }
}

#[test]
fn too_few_rows_is_an_error() {
    let data = vec![1.0f32; 4 * 3];
    let err = KMeans::fit(&data, 4, &KMeansParams::default().with_k(5), &mut |_| {}).unwrap_err();
    assert!(
        err.to_string().contains("cannot train 5 centroids with 3 rows"),
        "{err}"
    );
}

#[test]
fn default_k_grows_then_caps() {
    assert_eq!(default_k(1), 1);
    assert_eq!(default_k(100), 10);
    assert_eq!(default_k(10_000_000), MAX_AUTO_K);
}
