//! Tests of the kNN graphs: exact search against slow references, HNSW recall, transforms.

use super::exact::*;
use super::*;

fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    let mut v: Vec<f32> = (0..n * dim).map(|_| r.normal() as f32).collect();
    prepare(&mut v, dim, false).unwrap();
    v
}

fn brute(rows: &[f32], dim: usize, k: usize) -> Vec<Vec<u32>> {
    let n = rows.len() / dim;
    (0..n)
        .map(|i| {
            let mut c: Vec<(u32, f64)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let s = crate::distance::dot_reference(&rows[i * dim..][..dim], &rows[j * dim..][..dim]);
                    (j as u32, s)
                })
                .collect();
            c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            c.truncate(k);
            c.into_iter().map(|x| x.0).collect()
        })
        .collect()
}

#[test]
fn exact_matches_brute_force_and_excludes_self() {
    let (n, dim, k) = (157, 9, 6);
    let rows = unit_rows(n, dim, 4);
    let g = exact_knn(&rows, dim, k).unwrap();
    let b = brute(&rows, dim, k);
    for (i, bi) in b.iter().enumerate() {
        assert!(!g.neighbors(i).contains(&(i as u32)));
        assert_eq!(g.neighbors(i), &bi[..], "row {i}");
        assert!(g.sims(i).windows(2).all(|w| w[0] >= w[1]));
    }
}

/// The graph the way it was built before the bounded top-k: every
/// similarity of a row from one full product, sorted by [`by_sim`].
fn materialised(rows: &[f32], dim: usize, k: usize) -> KnnGraph {
    let n = rows.len() / dim;
    let mut s = vec![0f32; n * n];
    crate::distance::dot_batch(rows, rows, dim, &mut s);
    let (mut idx, mut sim) = (Vec::new(), Vec::new());
    for i in 0..n {
        let mut c: Vec<(u32, f32)> = (0..n).filter(|&j| j != i).map(|j| (j as u32, s[i * n + j])).collect();
        c.sort_by(by_sim);
        c.truncate(k);
        idx.extend(c.iter().map(|x| x.0));
        sim.extend(c.iter().map(|x| x.1));
    }
    KnnGraph { n, k, idx, sim }
}

#[test]
fn exact_graph_does_not_depend_on_blocks_or_threads() {
    // Rows drawn from 7 distinct vectors: every similarity ties with
    // many others, across tile borders, so only the lower-id rule decides.
    let (n, dim) = (613, 19);
    let base = unit_rows(7, dim, 11);
    let mut r = Rng::new(12);
    let mut rows = Vec::with_capacity(n * dim);
    for i in 0..n {
        let b = if i % 5 == 0 { r.below(7) as usize } else { i % 7 };
        rows.extend_from_slice(&base[b * dim..(b + 1) * dim]);
    }
    let mixed = unit_rows(n, dim, 13);
    for (rows, k) in [(&rows, 150), (&rows, 3), (&mixed, 10), (&mixed, 150)] {
        let want = materialised(rows, dim, k);
        for (qb, cb) in [(1, 32), (7, 64), (13, 96), (120, 1024), (1000, 32)] {
            assert_eq!(
                exact_knn_blocked(rows, dim, k, qb, cb).unwrap(),
                want,
                "k {k} qb {qb} cb {cb}"
            );
        }
        for t in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            assert_eq!(pool.install(|| exact_knn(rows, dim, k)).unwrap(), want, "{t} threads");
        }
        for i in [0, 1, 312, n - 1] {
            let e = exact_row(rows, dim, i, k);
            assert_eq!(e.iter().map(|x| x.0).collect::<Vec<_>>(), want.neighbors(i), "row {i}");
        }
    }
    // ties: row 0's neighbours are the rows equal to it, in id order
    let g = exact_knn(&rows, dim, 3).unwrap();
    let same: Vec<u32> = (1..n as u32)
        .filter(|&j| rows[j as usize * dim..][..dim] == rows[..dim])
        .take(3)
        .collect();
    assert_eq!(g.neighbors(0), &same[..]);
}

#[test]
fn top_k_keeps_the_best_whatever_the_offer_order() {
    let mut r = Rng::new(2);
    // few distinct values (ties), a NaN and both zeros
    let mut vals: Vec<f32> = (0..500).map(|_| (r.below(9) as f32) / 8.0 - 0.5).collect();
    vals[17] = f32::NAN;
    vals[40] = -0.0;
    vals[41] = 0.0;
    for k in [1, 5, 64, 200, 499] {
        let mut want: Vec<(u32, f32)> = vals.iter().enumerate().map(|(j, &v)| (j as u32, v)).collect();
        want.retain(|x| x.0 != 3);
        want.sort_by(by_sim);
        want.truncate(k);
        // offered in one go, in chunks of 7, and back to front in chunks of 64
        let mut a = TopK::new(k);
        a.scan(&vals, 0, 3);
        let a: Vec<_> = a.finish().collect();
        let mut b = TopK::new(k);
        for (c, ch) in vals.chunks(7).enumerate() {
            b.scan(ch, (c * 7) as u32, 3);
        }
        let b: Vec<_> = b.finish().collect();
        let mut c = TopK::new(k);
        for (p, ch) in vals.chunks(64).enumerate().rev() {
            c.scan(ch, (p * 64) as u32, 3);
        }
        let c: Vec<_> = c.finish().collect();
        for got in [&a, &b, &c] {
            assert_eq!(got.len(), want.len(), "k {k}");
            for (x, y) in got.iter().zip(&want) {
                assert!(x.0 == y.0 && x.1.to_bits() == y.1.to_bits(), "k {k}: {x:?} vs {y:?}");
            }
        }
    }
}

#[test]
fn duplicates_are_neighbours_and_ties_go_to_lower_id() {
    // rows 0, 1, 2 identical; 3 orthogonal; 4 equal to 3
    let rows = vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
    let g = exact_knn(&rows, 2, 2).unwrap();
    assert_eq!(g.neighbors(0), &[1, 2]);
    assert_eq!(g.neighbors(1), &[0, 2]);
    assert_eq!(g.neighbors(2), &[0, 1]);
    assert_eq!(g.neighbors(3), &[4, 0]);
    assert_eq!(g.neighbors(4), &[3, 0]);
    let (ptr, src, _) = g.in_edges();
    assert_eq!(&src[ptr[0]..ptr[1]], &[1, 2, 3, 4]);
    assert_eq!(ptr[5], 10);
}

#[test]
fn centering_subtracts_the_mean() {
    let mut rows = vec![2.0, 1.0, 4.0, 1.0, 3.0, 4.0];
    let mean = prepare(&mut rows, 2, true).unwrap().unwrap();
    assert_eq!(mean, vec![3.0, 2.0]);
    assert_eq!(
        rows,
        vec![
            -1.0 / 2f32.sqrt(),
            -1.0 / 2f32.sqrt(),
            1.0 / 2f32.sqrt(),
            -1.0 / 2f32.sqrt(),
            0.0,
            1.0
        ]
    );
}

#[test]
fn hnsw_recall_is_measured_and_high_on_small_pools() {
    let (n, dim, k) = (600, 16, 10);
    let rows = unit_rows(n, dim, 5);
    let params = KnnParams {
        backend: KnnBackend::Hnsw,
        recall_sample: 200,
        ..KnnParams::default()
    };
    let b = build_knn(&rows, dim, k, &params).unwrap();
    assert_eq!(b.backend, KnnBackend::Hnsw);
    let r = b.recall.unwrap();
    assert!(r > 0.9, "recall {r}");
    for i in 0..n {
        assert_eq!(b.graph.neighbors(i).len(), k);
        assert!(!b.graph.neighbors(i).contains(&(i as u32)));
    }
    let exact = build_knn(&rows, dim, k, &KnnParams::default()).unwrap();
    assert_eq!(exact.backend, KnnBackend::Exact);
    assert_eq!(recall_at_k(&exact.graph, &rows, dim, 50, 1).unwrap(), 1.0);
}

#[test]
fn graph_from_index_checks_the_index_and_matches_hnsw_knn() {
    let (n, dim, k) = (300, 8, 5);
    let rows = unit_rows(n, dim, 6);
    let params = HnswParams::default();
    let index = Hnsw::build(&rows, dim, &vec![true; n], &params).unwrap();
    // a serial build is deterministic, so both routes give the same graph
    assert_eq!(
        graph_from_index(&index, &rows, dim, k).unwrap(),
        hnsw_knn(&rows, dim, k, &params).unwrap()
    );
    let e = graph_from_index(&index, &rows[..(n - 1) * dim], dim, k)
        .unwrap_err()
        .to_string();
    assert!(e.contains("an index over 299 x 8 rows") && e.contains("300 x 8"), "{e}");
    let other = unit_rows(n, dim + 1, 6);
    assert!(graph_from_index(&index, &other, dim + 1, k).is_err());
}

#[test]
fn bad_k_is_an_error() {
    let rows = unit_rows(5, 3, 1);
    let e = exact_knn(&rows, 3, 5).unwrap_err().to_string();
    assert!(e.contains("5 rows") && e.contains("k = 5"), "{e}");
    assert!(exact_knn(&rows, 3, 0).is_err());
    assert!(exact_knn(&rows[..7], 3, 1).is_err());
    assert!("fast".parse::<KnnBackend>().is_err());
}
