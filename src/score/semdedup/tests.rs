//! Tests of the parent module.

use super::*;
use crate::rng::Rng;
use proptest::prelude::*;

fn unit(v: &mut [f32]) {
    crate::distance::normalize(v);
}

/// The literal reference: S = X Xᵀ in f64, T = triu(S, 1), M_j = max(0, max_i T[i, j]).
fn reference(rows: &[f32], dim: usize) -> Vec<f64> {
    let m = rows.len() / dim;
    let mut out = vec![0f64; m];
    for j in 0..m {
        for i in 0..j {
            let s = crate::distance::dot_reference(&rows[i * dim..(i + 1) * dim], &rows[j * dim..(j + 1) * dim]);
            out[j] = out[j].max(s);
        }
    }
    out
}

/// Every row of `data`, in order, as a [`RowSet`] (with its index buffer).
fn all_rows(data: &[f32], dim: usize) -> Vec<usize> {
    (0..data.len() / dim).collect()
}

fn view<'a>(data: &'a [f32], idx: &'a [usize], dim: usize) -> RowSet<'a> {
    RowSet { data, idx, dim }
}

fn random_unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    let mut v: Vec<f32> = (0..n * dim).map(|_| r.normal() as f32).collect();
    v.chunks_exact_mut(dim).for_each(unit);
    v
}

/// Rows in rank order already: ids 0..n, dist descending.
fn ranked_members(n: usize) -> (Vec<u32>, Vec<f32>) {
    (
        (0..n as u32).collect(),
        (0..n).map(|i| 1.0 - i as f32 / (n as f32 + 1.0)).collect(),
    )
}

#[test]
fn hand_checked_cluster() {
    // Four 2-d rows; ranking by dist (hard = farthest first): ids 12, 10, 13, 11.
    let s = std::f32::consts::FRAC_1_SQRT_2;
    let rows = [
        1.0, 0.0, /* 10 */ 0.0, 1.0, /* 11 */ s, s, /* 12 */ 1.0, 0.0, /* 13 */
    ];
    let ids = [10, 11, 12, 13];
    let dist = [0.3, 0.1, 0.5, 0.2];
    let m = ClusterMembers::try_new(&rows, 2, &ids, &dist).unwrap();
    let r = dedup_cluster(&m, &SemDedupParams::default()).unwrap();
    assert_eq!(r.rank, vec![1, 3, 0, 2]);
    // 12 first: M 0. 10 vs {12}: s. 13 vs {12, 10}: 1 (equal to 10). 11 vs {12,10,13}: s (from 12).
    assert_eq!(r.dup_of, vec![Some(12), Some(12), None, Some(10)]);
    assert!((r.max_sim[0] - s).abs() < 1e-6);
    assert!((r.max_sim[1] - s).abs() < 1e-6);
    assert_eq!(r.max_sim[2], 0.0);
    assert!((r.max_sim[3] - 1.0).abs() < 1e-6);
    // Easy reverses the ranking: 11, 13, 10, 12.
    let e = dedup_cluster(&m, &SemDedupParams::default().with_keep(DedupKeep::Easy)).unwrap();
    assert_eq!(e.rank, vec![2, 0, 3, 1]);
    // 13 vs {11}: cosine 0, no dup_of; 10 vs {11, 13}: 1.0 from 13; 12: s from all three, 11 earliest.
    assert_eq!(e.dup_of, vec![Some(13), None, Some(11), None]);
}

/// Golden values from `ref_semdedup.py::max_sim_to_earlier` on the same
/// rows (its stable sort by −dist, then `M > np.float32(1 − eps)`).
#[test]
fn golden_against_ref_semdedup() {
    let mut rows: Vec<f32> = vec![
        1.0, 0.0, 0.0, 0.0, /**/ 1.0, 0.01, 0.0, 0.0, /**/ 0.0, 1.0, 0.0, 0.0, /**/ 0.0, 1.0, 0.0, 0.0,
        /**/ 1.0, 1.0, 0.0, 0.0, /**/ 0.0, 0.0, 1.0, 0.0, /**/ 0.0, 0.0, 1.0, 0.1, /**/ 0.0, 0.0,
        0.0, 1.0, /**/ 1.0, 1.0, 1.0, 1.0, /**/ -1.0, 0.0, 0.0, 0.0,
    ];
    rows.chunks_exact_mut(4).for_each(unit);
    let dist = [0.5, 0.5, 0.3, 0.3, 0.7, 0.2, 0.25, 0.9, 0.1, 0.6];
    let ids: Vec<u32> = (0..10).collect();
    let m = ClusterMembers::try_new(&rows, 4, &ids, &dist).unwrap();
    let r = dedup_cluster(&m, &SemDedupParams::default().with_block_rows(3)).unwrap();
    let order: Vec<u32> = (0..10u32)
        .map(|k| r.rank.iter().position(|&x| x == k).unwrap() as u32)
        .collect();
    assert_eq!(order, vec![7, 4, 9, 0, 1, 2, 3, 6, 5, 8]);
    let want = [
        0.7071067690849304,
        0.9999500513076782,
        0.7071067690849304,
        1.0,
        0.0,
        0.9950371384620667,
        0.09950371831655502,
        0.0,
        0.7071067690849304,
        0.0,
    ];
    for (j, (&g, &w)) in r.max_sim.iter().zip(&want).enumerate() {
        assert!((g as f64 - w).abs() < 1e-6, "row {j}: {g} vs {w}");
    }
    let kept = |eps| {
        kept_at_eps(&r.max_sim, &[true; 10], eps)
            .unwrap()
            .iter()
            .map(|&k| k as u8)
            .collect::<Vec<_>>()
    };
    assert_eq!(kept(0.001), vec![1, 0, 1, 0, 1, 1, 1, 1, 1, 1]);
    assert_eq!(kept(0.01), vec![1, 0, 1, 0, 1, 0, 1, 1, 1, 1]);
    assert_eq!(kept(0.05), vec![1, 0, 1, 0, 1, 0, 1, 1, 1, 1]);
    assert_eq!(kept(0.3), vec![0, 0, 0, 0, 1, 0, 1, 1, 0, 1]);
    assert_eq!(kept(0.4), vec![0, 0, 0, 0, 1, 0, 1, 1, 0, 1]);
    assert_eq!(r.dup_of[3], Some(2));
    assert_eq!(r.dup_of[1], Some(0));
}

#[test]
fn ties_in_distance_go_to_lower_row_id() {
    // Identical rows with identical distances: the lower id survives in every mode.
    let rows = [0.6, 0.8, 0.6, 0.8, 0.6, 0.8];
    let ids = [7, 3, 5];
    let dist = [0.25, 0.25, 0.25];
    let m = ClusterMembers::try_new(&rows, 2, &ids, &dist).unwrap();
    for keep in [DedupKeep::Hard, DedupKeep::Easy] {
        let r = dedup_cluster(&m, &SemDedupParams::default().with_keep(keep)).unwrap();
        assert_eq!(r.rank, vec![2, 0, 1], "{keep}");
        assert_eq!(r.dup_of, vec![Some(3), None, Some(3)], "{keep}");
    }
}

#[test]
fn singleton_empty_and_orthogonal_clusters() {
    let p = SemDedupParams::default();
    let one = dedup_cluster(&ClusterMembers::try_new(&[1.0, 0.0], 2, &[4], &[0.0]).unwrap(), &p).unwrap();
    assert_eq!((one.max_sim, one.dup_of, one.rank), (vec![0.0], vec![None], vec![0]));
    let none = dedup_cluster(&ClusterMembers::try_new(&[], 2, &[], &[]).unwrap(), &p).unwrap();
    assert!(none.max_sim.is_empty());
    // Opposite and orthogonal rows: negative / zero cosines floor to M = 0, no dup_of;
    // a zero vector has cosine 0 with everything.
    let rows = [1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
    let r = dedup_cluster(
        &ClusterMembers::try_new(&rows, 2, &[0, 1, 2, 3], &[0.9, 0.8, 0.7, 0.6]).unwrap(),
        &p,
    )
    .unwrap();
    assert_eq!(r.max_sim, vec![0.0; 4]);
    assert_eq!(r.dup_of, vec![None; 4]);
}

#[test]
fn unnormalised_centroid_gives_the_same_distances() {
    let rows = random_unit_rows(20, 5, 1);
    let c = [0.3f32, -1.0, 2.0, 0.5, 0.1];
    let c10: Vec<f32> = c.iter().map(|v| v * 10.0).collect();
    let a = dist_to_centroid(&rows, &c);
    let b = dist_to_centroid(&rows, &c10);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-6);
    }
    let ids: Vec<u32> = (0..20).collect();
    assert_eq!(
        rank_members(&ids, &a, DedupKeep::Hard),
        rank_members(&ids, &b, DedupKeep::Hard)
    );
}

#[test]
fn random_order_is_seeded_and_independent_of_member_order() {
    let ids = [5u32, 9, 2, 40, 11];
    let dist = [0.0; 5];
    let a = rank_members(&ids, &dist, DedupKeep::Random { seed: 3 });
    let rev: Vec<u32> = ids.iter().rev().copied().collect();
    let b = rank_members(&rev, &dist, DedupKeep::Random { seed: 3 });
    let ids_a: Vec<u32> = a.iter().map(|&p| ids[p as usize]).collect();
    let ids_b: Vec<u32> = b.iter().map(|&p| rev[p as usize]).collect();
    assert_eq!(ids_a, ids_b);
    let c = rank_members(&ids, &dist, DedupKeep::Random { seed: 4 });
    assert_ne!(a, c);
}

#[test]
fn all_clusters_match_per_cluster() {
    let (n, dim) = (300, 8);
    let rows = random_unit_rows(n, dim, 5);
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7) % 5).collect();
    let dist: Vec<f32> = (0..n).map(|i| ((i * 31) % 17) as f32 / 17.0).collect();
    let mut eligible = vec![true; n];
    eligible[17] = false;
    let assign = Assignment::try_new(&labels, &dist, &eligible, 6).unwrap();
    let p = SemDedupParams::default().with_block_rows(16);
    let all = dedup_clusters(&rows, dim, &assign, &p).unwrap();
    assert!(all.max_sim[17].is_nan() && all.dup_of[17].is_none());
    for (c, ids) in assign.members().iter().enumerate() {
        let sub: Vec<f32> = ids
            .iter()
            .flat_map(|&i| rows[i as usize * dim..][..dim].to_vec())
            .collect();
        let d: Vec<f32> = ids.iter().map(|&i| dist[i as usize]).collect();
        let one = dedup_cluster(&ClusterMembers::try_new(&sub, dim, ids, &d).unwrap(), &p).unwrap();
        for (pos, &i) in ids.iter().enumerate() {
            assert_eq!(all.max_sim[i as usize], one.max_sim[pos], "cluster {c} row {i}");
            assert_eq!(all.dup_of[i as usize], one.dup_of[pos], "cluster {c} row {i}");
        }
    }
}

#[test]
fn identical_results_for_any_thread_count() {
    let (n, dim) = (400, 16);
    let mut rows = random_unit_rows(n, dim, 11);
    // exact copies make ties in the arg-max, which must resolve the same way
    for t in 0..40 {
        let (src, dst) = (t * 3, n - 1 - t);
        let v = rows[src * dim..(src + 1) * dim].to_vec();
        rows[dst * dim..(dst + 1) * dim].copy_from_slice(&v);
    }
    let (ids, dist) = ranked_members(n);
    let m = ClusterMembers::try_new(&rows, dim, &ids, &dist).unwrap();
    let p = SemDedupParams::default().with_block_rows(7);
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| dedup_cluster(&m, &p).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(4));
    assert_eq!(one, run(3));
}

#[test]
fn eps_threshold_is_strict_and_curve_matches_masks() {
    assert!(!is_duplicate(0.95, 0.05));
    assert!(is_duplicate(0.950_001, 0.05));
    assert!(!is_duplicate(f32::NAN, 0.5));
    let m = [0.0, 0.95, 0.96, 0.99, 1.0, 0.5, f32::NAN];
    let e = [true, true, true, true, true, true, false];
    let eps = [0.0, 0.01, 0.05, 0.5, 1.0];
    let curve = eps_curve(&m, &e, &eps).unwrap();
    for (pt, &x) in curve.iter().zip(&eps) {
        let kept = kept_at_eps(&m, &e, x).unwrap().iter().filter(|&&k| k).count() as u64;
        assert_eq!(pt.kept, kept, "eps {x}");
        assert_eq!(pt.kept + pt.removed, 6);
    }
    assert_eq!(curve[0].kept, 6);
    assert_eq!(curve[2].kept, 3); // 0.0, 0.95, 0.5
    assert_eq!(curve[4].kept, 1); // only M = 0
    assert!(kept_at_eps(&m, &e, 1.5).is_err());
    assert!(eps_curve(&m, &e, &[-0.1]).is_err());
}

#[test]
fn exact_keep_is_a_quantile_with_row_id_ties() {
    let m = [0.5, 0.2, 0.5, 0.9, 0.2, 0.5];
    let e = [true; 6];
    let k = keep_least_redundant(&m, &e, 3).unwrap();
    // 0.2 (1), 0.2 (4), then the first 0.5 by row id (0).
    assert_eq!(k.kept, vec![true, true, false, false, true, false]);
    assert_eq!((k.max_kept, k.min_removed, k.eps), (Some(0.5), Some(0.5), None));
    let k = keep_least_redundant(&m, &e, 5).unwrap();
    assert_eq!(k.kept, vec![true, true, true, false, true, true]);
    assert!((k.eps.unwrap() - 0.5).abs() < 1e-9);
    assert_eq!(
        kept_at_eps(&m, &e, k.eps.unwrap()).unwrap(),
        k.kept,
        "the reported eps reproduces the set"
    );
    assert!(keep_least_redundant(&m, &e, 7).is_err());
    assert_eq!(keep_least_redundant(&m, &e, 0).unwrap().kept, vec![false; 6]);
}

#[test]
fn exact_duplicates_first_row_wins() {
    let rows = [
        1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.5, 1.0, 2.0, 3.0, -0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    let e = [true, false, true, true, true, true];
    // row 1 is ineligible: row 3 matches row 0; -0.0 differs from 0.0.
    assert_eq!(
        exact_duplicates(&rows, 3, &e),
        vec![None, None, None, Some(0), None, None]
    );
    let mut d = ExactDuplicates::new();
    assert_eq!(d.push_block(&rows[..6], 3, 0, &[true, true]), vec![None, Some(0)]);
    assert_eq!(d.push_block(&rows[6..12], 3, 2, &[true, true]), vec![None, Some(0)]);
    assert_eq!(d.distinct(), 2);
    assert_eq!(d.push_bytes(9, b"abc"), None);
    assert_eq!(d.push_bytes(10, b"abc"), Some(9));
    assert_eq!(d.push_bytes(11, b"abc\0"), None);
    let mut s = DedupScores {
        max_sim: vec![0.0, f32::NAN],
        dup_of: vec![None, None],
    };
    s.mark_exact(&[None, Some(0)]);
    assert_eq!((s.max_sim, s.dup_of), (vec![0.0, 1.0], vec![None, Some(0)]));
}

#[test]
fn pairwise_cost_and_quantiles() {
    let c = PairwiseCost::new(&[3, 0, 4]);
    assert_eq!((c.sum_sq, c.largest), (25, 4));
    assert_eq!(c.flops(10), 250.0);
    let q = quantiles(
        &[0.1, 0.4, 0.2, 0.3, f32::NAN],
        &[true, true, true, true, true],
        &[0.0, 0.5, 1.0],
    );
    assert_eq!(q, vec![0.1, 0.3, 0.4]);
}

proptest! {
    #[test]
    fn blocked_max_sim_matches_the_literal_reference(
        n in 0usize..70, dim in 1usize..12, block in 1usize..20, seed in 0u64..1000, dups in 0usize..10,
    ) {
        let mut rows = random_unit_rows(n, dim, seed);
        // plant exact and near copies of earlier rows
        for t in 0..dups.min(n / 2) {
            let (src, dst) = (t, n - 1 - t);
            for d in 0..dim {
                rows[dst * dim + d] = rows[src * dim + d] + if t % 2 == 0 { 0.0 } else { 1e-3 };
            }
            unit(&mut rows[dst * dim..(dst + 1) * dim]);
        }
        let (ids, dist) = ranked_members(n);
        let m = ClusterMembers::try_new(&rows, dim, &ids, &dist).unwrap();
        let got = dedup_cluster(&m, &SemDedupParams::default().with_block_rows(block)).unwrap();
        let want = reference(&rows, dim);
        for j in 0..n {
            prop_assert!((got.max_sim[j] as f64 - want[j]).abs() <= 1e-5, "row {j}: {} vs {}", got.max_sim[j], want[j]);
            match got.dup_of[j] {
                None => prop_assert!(want[j] <= 1e-5),
                Some(i) => {
                    prop_assert!(i < j as u32, "dup_of must be ranked earlier");
                    let s = crate::distance::dot_reference(&rows[i as usize * dim..][..dim], &rows[j * dim..][..dim]);
                    prop_assert!((s - want[j]).abs() <= 1e-5);
                }
            }
        }
        // the result does not depend on the block size beyond rounding of M
        let one = dedup_cluster(&m, &SemDedupParams::default().with_block_rows(1024)).unwrap();
        for j in 0..n {
            prop_assert!((one.max_sim[j] - got.max_sim[j]).abs() <= 1e-6);
        }
    }
}

/// Brute force over one full `X·Xᵀ` from the same kernel: for each rank j the
/// largest product with an earlier rank (earliest on ties).
fn full_matrix_max(rows: &[f32], dim: usize) -> (Vec<f32>, Vec<u32>) {
    let m = rows.len() / dim;
    let mut s = vec![0f32; m * m];
    crate::distance::dot_batch(rows, rows, dim, &mut s);
    let mut best = vec![f32::NEG_INFINITY; m];
    let mut arg = vec![u32::MAX; m];
    for j in 0..m {
        for i in 0..j {
            if s[i * m + j] > best[j] {
                best[j] = s[i * m + j];
                arg[j] = i as u32;
            }
        }
    }
    (best, arg)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Tiles, diagonal bands and threads change which call computes a product, never its
    /// value: M and the arg-max are bit-identical to one full product, for clusters that
    /// span several bands and blocks (including ragged last bands and blocks), with exact
    /// copies (ties go to the earliest rank).
    #[test]
    fn banded_tiles_are_bit_identical_to_one_full_product(
        n in 90usize..420, dim in 1usize..40, block in prop::sample::select(vec![7usize, 64, 96, 100, 250, 1024]),
        seed in 0u64..1000, dups in 0usize..160,
    ) {
        let mut rows = random_unit_rows(n, dim, seed);
        // exact copies: every other one of row 0, so some columns tie with many rows
        for t in 0..dups.min(n / 2) {
            let (src, dst) = (if t % 2 == 0 { 0 } else { t * 3 % n }, n - 1 - t);
            for d in 0..dim {
                rows[dst * dim + d] = rows[src * dim + d];
            }
        }
        let order: Vec<u32> = (0..n as u32).collect();
        let (want_best, want_arg) = full_matrix_max(&rows, dim);
        let (best, arg) = max_sim_ranked(&rows, dim, &order, block);
        for j in 0..n {
            prop_assert_eq!(best[j].to_bits(), want_best[j].to_bits(), "rank {}", j);
            prop_assert_eq!(arg[j], want_arg[j], "rank {}", j);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// The certified bf16 tiles (forced, so CPUs without AVX-512 BF16 run them through
    /// the portable bf16 kernel) give M and the arg-max of one full f32 product bit for
    /// bit: near copies, exact copies (ties, and tiles left to f32), opposite rows.
    #[test]
    fn certified_tiles_are_bit_identical_to_one_full_product(
        n in 2usize..400, dim in prop::sample::select(vec![1usize, 5, 33, 96, 384]),
        block in prop::sample::select(vec![7usize, 64, 100, 250, 1024]),
        seed in 0u64..1000, near in 0usize..60, exact in 0usize..40,
    ) {
        let mut rows = random_unit_rows(n, dim, seed);
        let mut r = Rng::new(seed ^ 0xC0FFEE);
        for t in 0..near.min(n / 3) {
            let (src, dst) = (r.below(n as u64) as usize, n - 1 - t);
            for d in 0..dim {
                rows[dst * dim + d] = rows[src * dim + d] + (r.normal() * 0.002) as f32;
            }
            unit(&mut rows[dst * dim..(dst + 1) * dim]);
        }
        for t in 0..exact.min(n / 3) {
            let dst = t + n / 3;
            for d in 0..dim {
                rows[dst * dim + d] = if t % 5 == 4 { -rows[d] } else { rows[d] };
            }
        }
        let order: Vec<u32> = (0..n as u32).collect();
        let (want_best, want_arg) = full_matrix_max(&rows, dim);
        let (best, arg) = max_sim_ranked_with(&rows, dim, &order, block, true);
        for j in 0..n {
            prop_assert_eq!(best[j].to_bits(), want_best[j].to_bits(), "rank {}", j);
            prop_assert_eq!(arg[j], want_arg[j], "rank {}", j);
        }
    }
}

#[test]
fn random_rows_take_the_bf16_path_and_copies_fall_back_untouched() {
    let dim = 64;
    let cols = random_unit_rows(200, dim, 1);
    let ci = all_rows(&cols, dim);
    let block = Bf16Block::new(view(&cols, &ci, dim));
    let packed = crate::distance::PackedRows::new(&cols, dim);
    let mut s = CertScratch::default();
    // An off-diagonal tile of random rows: certified, and the maxima are the f32 ones.
    let x = random_unit_rows(50, dim, 2);
    let mut t = TileMax::empty(200);
    let none = vec![f32::NEG_INFINITY; 200];
    let xi = all_rows(&x, dim);
    assert!(absorb_certified(
        &block,
        view(&cols, &ci, dim),
        view(&x, &xi, dim),
        &row_norms(view(&x, &xi, dim)),
        0,
        &none,
        &mut t,
        &mut s
    ));
    let mut f = vec![0f32; 50 * 200];
    crate::distance::dot_batch_packed(&x, &packed, &mut f);
    let mut want = TileMax::empty(200);
    for (ii, line) in f.chunks_exact(200).enumerate() {
        want.absorb(line, 0, ii as u32);
    }
    assert_eq!(t.best, want.best);
    assert_eq!(t.arg, want.arg);
    // Rows that all equal one column tie everywhere: the candidates would cost more
    // than the f32 tile, so it says so and leaves `t` alone.
    let same: Vec<f32> = (0..50).flat_map(|_| cols[..dim].iter().copied()).collect();
    let copies: Vec<f32> = (0..200).flat_map(|_| cols[..dim].iter().copied()).collect();
    let block = Bf16Block::new(view(&copies, &ci, dim));
    let mut t = TileMax::empty(200);
    let si = all_rows(&same, dim);
    assert!(!absorb_certified(
        &block,
        view(&copies, &ci, dim),
        view(&same, &si, dim),
        &row_norms(view(&same, &si, dim)),
        0,
        &none,
        &mut t,
        &mut s
    ));
    assert!(t.best.iter().all(|&b| b == f32::NEG_INFINITY));
}

/// Rows whose products with a later row tie to within far less than the f32 error: a
/// base row, copies nudged by one ulp-sized step in one coordinate, and a near copy
/// ranked after them. The vectorized dots cannot order such rows, the kernel's chains can.
fn near_tie_rows(groups: usize, copies: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    let mut rows = Vec::new();
    for _ in 0..groups {
        let base = random_unit_rows(1, dim, r.below(1 << 30));
        for c in 0..copies {
            let mut v = base.clone();
            let t = r.below(dim as u64) as usize;
            v[t] += (c as f32) * 3e-7 * if r.below(2) == 0 { 1.0 } else { -1.0 };
            rows.extend(v);
        }
        let mut near = base.clone();
        for x in near.iter_mut() {
            *x += (r.normal() * 0.01) as f32;
        }
        unit(&mut near);
        rows.extend(near);
    }
    rows
}

#[test]
fn the_bf16_diagonal_is_certified_and_keeps_the_kernels_choice_of_near_ties() {
    let dim = 96;
    for (n, seed) in [(200usize, 1u64), (500, 2), (97, 3)] {
        // Random rows: the bf16 triangle runs (no fallback) and gives the f32 bands' bits.
        let cols = random_unit_rows(n, dim, seed);
        let ci = all_rows(&cols, dim);
        let block = Bf16Block::new(view(&cols, &ci, dim));
        let mut t = TileMax::empty(n);
        assert!(diagonal_certified(
            &block,
            view(&cols, &ci, dim),
            0,
            DIAGONAL_BAND_ROWS,
            &mut t,
            &mut CertScratch::default()
        ));
        let (want_best, want_arg) = full_matrix_max(&cols, dim);
        assert_eq!(
            t.best.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want_best.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(t.arg, want_arg);
    }
    // Near ties, on the diagonal and across blocks: M and the arg-max stay the kernel's.
    // The ranked rows lie scattered in a larger buffer (rank r at position perm[r]), as
    // the rows of a spill partition do.
    for seed in 0..6 {
        let ranked = near_tie_rows(40, 5, 384, seed);
        let m = ranked.len() / 384;
        let mut perm: Vec<u32> = (0..2 * m as u32).collect();
        let mut r = Rng::new(seed + 100);
        for i in (1..perm.len()).rev() {
            perm.swap(i, r.below(i as u64 + 1) as usize);
        }
        let order = perm[..m].to_vec();
        let mut rows = random_unit_rows(2 * m, 384, seed + 200);
        for (rank, &p) in order.iter().enumerate() {
            rows[p as usize * 384..(p as usize + 1) * 384].copy_from_slice(&ranked[rank * 384..(rank + 1) * 384]);
        }
        let (want_best, want_arg) = full_matrix_max(&ranked, 384);
        for block in [64usize, 1024] {
            let (best, arg) = max_sim_ranked_with(&rows, 384, &order, block, true);
            assert_eq!(
                best.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want_best.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "seed {seed} block {block}"
            );
            assert_eq!(arg, want_arg, "seed {seed} block {block}");
        }
    }
}

#[test]
fn a_cluster_in_place_matches_its_copy_and_checks_its_positions() {
    let dim = 48;
    let all = random_unit_rows(300, dim, 11);
    let pos: Vec<u32> = (0..300u32).filter(|p| p % 3 != 1).rev().collect();
    let ids: Vec<u32> = pos.iter().map(|&p| 1000 + p).collect();
    let mut copy = Vec::new();
    for &p in &pos {
        copy.extend_from_slice(&all[p as usize * dim..(p as usize + 1) * dim]);
    }
    let centroid: Vec<f32> = (0..dim).map(|t| 1.0 + t as f32 * 0.01).collect();
    let dist = dist_to_centroid(&copy, &centroid);
    // The distances are the kernel's bits: 1 − one full product with the unit centroid.
    let mut unit_c = centroid.clone();
    unit(&mut unit_c);
    let mut dots = vec![0f32; pos.len()];
    crate::distance::dot_batch(&copy, &unit_c, dim, &mut dots);
    assert!(dist.iter().zip(&dots).all(|(d, x)| d.to_bits() == (1.0 - x).to_bits()));
    let params = SemDedupParams::default().with_block_rows(64);
    let want = dedup_cluster(&ClusterMembers::try_new(&copy, dim, &ids, &dist).unwrap(), &params).unwrap();
    let got = dedup_cluster_at(&all, dim, &pos, &ids, &centroid, &params).unwrap();
    assert_eq!(got, want);
    let bad = [0u32, 300];
    let e = dedup_cluster_at(&all, dim, &bad, &ids[..2], &centroid, &params).unwrap_err();
    assert!(e.to_string().contains("positions"), "{e}");
    assert!(dedup_cluster_at(&all, dim, &pos, &ids[..3], &centroid, &params).is_err());
    assert!(dedup_cluster_at(&all, dim, &pos, &ids, &centroid[..5], &params).is_err());
}
