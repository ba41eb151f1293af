//! Tests of the parent module.

use super::*;
use crate::cluster::Distance;
use crate::select::floor_fraction;
use proptest::prelude::*;

/// `ref_dbp.py::solve_quotas` (exact projection, lb = min(m, n − 1),
/// empty clusters 0), then `np.rint`.
fn reference_quotas(shares: &[f64], sizes: &[u64], n_keep: u64, ratio: f64) -> Vec<i64> {
    let k = sizes.len();
    let m = if ratio > 0.0 {
        ((n_keep as f64 / k as f64) * ratio) as i64
    } else {
        1
    };
    let lb: Vec<f64> = sizes
        .iter()
        .map(|&n| if n == 0 { 0.0 } else { m.min(n as i64 - 1) as f64 })
        .collect();
    let ub: Vec<f64> = sizes.iter().map(|&n| n as f64).collect();
    let t: Vec<f64> = shares.iter().map(|p| p * n_keep as f64).collect();
    // project_capped_simplex, literally
    let mut lo = (0..k).map(|j| lb[j] - t[j]).fold(f64::INFINITY, f64::min) - 1.0;
    let mut hi = (0..k).map(|j| ub[j] - t[j]).fold(f64::NEG_INFINITY, f64::max) + 1.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        let s: f64 = (0..k).map(|j| (t[j] + mid).clamp(lb[j], ub[j])).sum();
        if s < n_keep as f64 {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-12 {
            break;
        }
    }
    let mid = 0.5 * (lo + hi);
    (0..k)
        .map(|j| (t[j] + mid).clamp(lb[j], ub[j]).round_ties_even() as i64)
        .collect()
}

#[test]
fn hand_computed_allocations() {
    // Interior: λ = 0, x = [6, 3.6, 2.4] → floors [6, 3, 2], +1 to the largest remainder.
    let a = allocate(&[0.5, 0.3, 0.2], &[10, 10, 10], 12, 0.5).unwrap();
    assert_eq!(a.floor, 2);
    assert!(a.lambda.abs() < 1e-9);
    assert_eq!(a.quotas, vec![6, 4, 2]);
    // Cap: cluster 0 holds 2 rows; the surplus is shared by an equal shift (λ = −2.6).
    let a = allocate(&[0.6, 0.2, 0.2], &[2, 10, 10], 12, 0.5).unwrap();
    assert!((a.lambda + 2.6).abs() < 1e-9);
    assert_eq!(a.quotas, vec![2, 5, 5]);
    // Floor: clusters 1 and 2 get ⌊0.5·12/3⌋ = 2, cluster 0 the rest (λ = 2.8).
    let a = allocate(&[0.9, 0.05, 0.05], &[10, 10, 10], 12, 0.5).unwrap();
    assert!((a.lambda - 2.8).abs() < 1e-9);
    assert_eq!(a.quotas, vec![8, 2, 2]);
    // Empty clusters get nothing; a floor larger than a cluster is its size.
    let a = allocate(&[0.25, 0.25, 0.25, 0.25], &[0, 1, 40, 40], 40, 1.0).unwrap();
    assert_eq!(a.floor, 10);
    assert_eq!(a.quotas[..2], [0, 1]);
    assert_eq!(a.quotas.iter().sum::<u64>(), 40);
    assert!(allocate(&[1.0], &[3], 4, 0.5).is_err());
    assert!(allocate(&[1.0], &[3], 2, 1.5).is_err());
}

/// Golden values from `ref_dbp.py::solve_quotas` (exact projection, then
/// `rint`): same continuous solution; its rounding keeps 190 rows for a
/// budget of 189, dprune's keeps 189 and differs by one in one cluster.
#[test]
fn golden_against_ref_dbp() {
    // softmax_f32(d / 0.5) for d = [0.1, 0.3, 0.05, 0.2, 0.2, 0.4, 0.15], as printed by the reference.
    let p = [
        0.11406725645065308,
        0.17016837000846863,
        0.10321231931447983,
        0.13932207226753235,
        0.13932207226753235,
        0.2078441083431244,
        0.12606382369995117,
    ];
    let sizes = [50, 3, 120, 0, 80, 2, 60];
    let a = allocate(&p, &sizes, 189, 0.5).unwrap();
    assert_eq!(a.floor, 13);
    let x_ref = [44.752768, 3.0, 42.701185, 0.0, 49.525928, 2.0, 47.020119];
    for (j, (&x, &w)) in a.continuous.iter().zip(&x_ref).enumerate() {
        assert!((x - w).abs() < 1e-5, "cluster {j}: {x} vs {w}");
    }
    assert_eq!(a.quotas, vec![45, 3, 43, 0, 49, 2, 47]);
    let reference = [45, 3, 43, 0, 50, 2, 47];
    assert_eq!(reference_quotas(&p, &sizes, 189, 0.5), reference);
    for (q, r) in a.quotas.iter().zip(reference) {
        assert!((*q as i64 - r).abs() <= 1);
    }
    let d = [0.1, 0.3, 0.05, 0.2, 0.2, 0.4, 0.15];
    let ours = shares(&d, ShareRule::Softmax, 0.5).unwrap();
    for (a, b) in ours.iter().zip(&p) {
        assert!((a - b).abs() < 1e-7);
    }
}

#[test]
fn softmax_is_stable_and_hand_checked() {
    let p = shares(&[0.0, 0.5 * 2f64.ln()], ShareRule::Softmax, 0.5).unwrap();
    assert!((p[0] - 1.0 / 3.0).abs() < 1e-12 && (p[1] - 2.0 / 3.0).abs() < 1e-12);
    let p = shares(&[1000.0, 1000.0, 0.0], ShareRule::Softmax, 0.001).unwrap();
    assert!((p[0] - 0.5).abs() < 1e-12 && p[2] == 0.0);
    let p = shares(&[1.0, 3.0], ShareRule::Proportional, 0.5).unwrap();
    assert_eq!(p, vec![0.25, 0.75]);
    assert!(shares(&[f64::NAN], ShareRule::Softmax, 0.5).is_err());
    assert!(shares(&[-1.0, 2.0], ShareRule::Proportional, 0.5).is_err());
    assert!(shares(&[1.0], ShareRule::Softmax, 0.0).is_err());
}

#[test]
fn empty_clusters_get_the_mean_complexity_small_ones_their_own() {
    let sizes = [1, 2, 5, 5, 0];
    let di = [0.0, 0.1, 0.2, 0.4, f64::NAN];
    let de = [0.5; 5];
    let c = complexity(&di, &de, &sizes);
    assert_eq!(c.imputed, vec![false, false, false, false, true]);
    for (j, &v) in c.value.iter().enumerate() {
        let want = [0.0, 0.05, 0.1, 0.2, 0.0875][j];
        assert!((v - want).abs() < 1e-12, "cluster {j}: {v}");
    }
    // k = 1: d_inter is NaN, every cluster falls back to 1.
    let c = complexity(&[0.3], &[f64::NAN], &[10]);
    assert_eq!((c.value, c.imputed), (vec![1.0], vec![true]));
}

#[test]
fn d_intra_and_d_inter_by_hand() {
    let labels = [0, 1, 0, 1, 1];
    let dist = [0.1, 0.2, 0.3, 0.4, 9.0];
    let eligible = [true, true, true, true, false];
    let a = Assignment::try_new(&labels, &dist, &eligible, 3).unwrap();
    let di = d_intra(&a);
    assert!((di[0] - 0.2).abs() < 1e-7 && (di[1] - 0.3).abs() < 1e-7 && di[2].is_nan());
    // Unnormalised centroids (2,0), (0,3), (5,5): cosines 0, s, s.
    let s = std::f64::consts::FRAC_1_SQRT_2;
    let c = [2.0, 0.0, 0.0, 3.0, 5.0, 5.0];
    let d1 = d_inter(&c, 2, 1).unwrap();
    for v in &d1 {
        assert!((v - (1.0 - s)).abs() < 1e-6, "{d1:?}");
    }
    let d2 = d_inter(&c, 2, DEFAULT_NEIGHBORS).unwrap(); // capped at k − 1 = 2
    assert!((d2[0] - (1.0 - s + 1.0) / 2.0).abs() < 1e-6);
    assert!((d2[2] - (1.0 - s)).abs() < 1e-6);
    assert!(d_inter(&[1.0, 0.0], 2, 20).unwrap()[0].is_nan());
    assert!(d_inter(&[0.0, 0.0, 1.0, 0.0], 2, 1).is_err());
}

#[test]
fn plan_runs_end_to_end_without_nan() {
    // Clusters of 1, 2 and 6 rows.
    let labels = [0, 1, 1, 2, 2, 2, 2, 2, 2];
    let dist = [0.0, 0.05, 0.05, 0.1, 0.2, 0.3, 0.1, 0.2, 0.3];
    let eligible = [true; 9];
    let a = Assignment::try_new(&labels, &dist, &eligible, 3).unwrap();
    let c = Centroids::try_new(vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8], 2, Distance::Cosine).unwrap();
    let p = plan(&a, &c, 5, &DbpParams::default()).unwrap();
    assert_eq!(p.sizes, vec![1, 2, 6]);
    assert!(p.shares.iter().all(|s| s.is_finite()));
    assert_eq!(p.allocation.quotas.iter().sum::<u64>(), 5);
    let cx = p.complexity.unwrap();
    assert_eq!(cx.imputed, vec![false, false, false]);
    let wrong_k = Assignment::try_new(&labels, &dist, &eligible, 4).unwrap();
    assert!(plan(&wrong_k, &c, 5, &DbpParams::default()).is_err());
    assert!(DbpParams::default().with_temperature(0.0).validate().is_err());
    assert!(DbpParams::default().with_floor_ratio(-0.1).validate().is_err());
    assert!(DbpParams::default().with_neighbors(0).validate().is_err());
    let p: DbpParams = serde_json::from_str(r#"{"temperature": 0.1}"#).unwrap();
    assert_eq!(p, DbpParams::default().with_temperature(0.1));
    assert!(serde_json::from_str::<DbpParams>(r#"{"temprature": 0.1}"#).is_err());
}

#[test]
fn the_floor_makes_quotas_non_monotone_in_the_budget() {
    // DBP's semantics, not a rounding artefact: when ⌊0.5·B/k⌋ steps up, three
    // clusters pinned at the floor each gain a row and the free cluster gives two back.
    let p = [0.97, 0.01, 0.01, 0.01];
    let s = [100, 100, 100, 100];
    let a = allocate(&p, &s, 79, 0.5).unwrap();
    let b = allocate(&p, &s, 80, 0.5).unwrap();
    assert_eq!(a.quotas, vec![52, 9, 9, 9]);
    assert_eq!(b.quotas, vec![50, 10, 10, 10]);
}

fn arb_problem() -> impl Strategy<Value = (Vec<f64>, Vec<u64>, f64)> {
    (1usize..40).prop_flat_map(|k| {
        (
            proptest::collection::vec(0.0f64..2.0, k),
            proptest::collection::vec(0u64..300, k),
            0.0f64..=1.0,
        )
    })
}

proptest! {
    #[test]
    fn quotas_sum_exactly_and_stay_in_bounds(
        (w, sizes, frac) in arb_problem(), ratio in 0.0f64..=1.0, tau in 0.05f64..2.0,
    ) {
        let total: u64 = sizes.iter().sum();
        let b = floor_fraction(frac, total);
        let p = shares(&w, ShareRule::Softmax, tau).unwrap();
        let a = allocate(&p, &sizes, b, ratio).unwrap();
        prop_assert_eq!(a.quotas.iter().sum::<u64>(), b);
        let cont_sum: f64 = a.continuous.iter().sum();
        prop_assert!((cont_sum - b as f64).abs() <= 1e-6 * (b as f64 + 1.0), "Σx = {cont_sum}, B = {b}");
        for (j, (&n, (&q, &x))) in sizes.iter().zip(a.quotas.iter().zip(&a.continuous)).enumerate() {
            let floor = a.floor.min(n);
            prop_assert!(q >= floor && q <= n, "cluster {j}: {q} not in [{floor}, {n}]");
            prop_assert!((q as f64 - x).abs() < 1.0 + 1e-6);
        }
    }

    #[test]
    fn monotone_in_the_budget_with_a_fixed_floor(
        (w, sizes, frac) in arb_problem(), tau in 0.05f64..2.0, step in 1u64..20,
    ) {
        // floor_ratio = 0 keeps the floor fixed; then x(B) is monotone exactly and
        // the rounded quotas lose at most one row (largest remainder's Alabama paradox).
        let total: u64 = sizes.iter().sum();
        let b = floor_fraction(frac, total);
        let b2 = (b + step).min(total);
        let p = shares(&w, ShareRule::Softmax, tau).unwrap();
        let a = allocate(&p, &sizes, b, 0.0).unwrap();
        let c = allocate(&p, &sizes, b2, 0.0).unwrap();
        for j in 0..sizes.len() {
            prop_assert!(c.continuous[j] >= a.continuous[j] - 1e-6, "cluster {j}: {} -> {}", a.continuous[j], c.continuous[j]);
            prop_assert!(c.quotas[j] + 1 >= a.quotas[j]);
        }
    }

    #[test]
    fn within_one_of_the_reference_rint(
        k in 1usize..60, base in 20u64..400, seed in 0u64..10_000, frac in 0.01f64..=1.0,
        ratio in 0.001f64..=0.5, tau in 0.1f64..1.0,
    ) {
        // Sizes within ±25 % of a base and a floor of at most half the uniform share, so
        // no cluster is at or below the floor m (where the reference's min(m, n − 1)
        // differs from dprune's min(m, n)); some clusters empty. ratio > 0: at 0 the
        // reference uses a floor of 1.
        let mut r = crate::rng::Rng::new(seed);
        let sizes: Vec<u64> = (0..k)
            .map(|_| if r.below(10) == 0 { 0 } else { base * 3 / 4 + r.below(base / 2 + 1) })
            .collect();
        let w: Vec<f64> = (0..k).map(|_| r.next_f64() * 0.5).collect();
        let total: u64 = sizes.iter().sum();
        let b = floor_fraction(frac, total);
        let p = shares(&w, ShareRule::Softmax, tau).unwrap();
        let ours = allocate(&p, &sizes, b, ratio).unwrap();
        let theirs = reference_quotas(&p, &sizes, b, ratio);
        for (j, (&q, &t)) in ours.quotas.iter().zip(&theirs).enumerate() {
            prop_assert!((q as i64 - t).abs() <= 1, "cluster {j}: {q} vs {t}");
        }
        prop_assert_eq!(ours.quotas.iter().sum::<u64>(), b);
    }
}
