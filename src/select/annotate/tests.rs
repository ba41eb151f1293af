use super::*;
use crate::cluster::knn::prepare;
use proptest::prelude::*;

pub(crate) fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut r = crate::rng::Rng::new(seed);
    let mut v: Vec<f32> = (0..n * dim).map(|_| r.normal() as f32).collect();
    prepare(&mut v, dim, true).unwrap();
    v
}

fn small(method: Method, budget: usize, seed: u64) -> AnnotateParams {
    let mut p = AnnotateParams::default()
        .with_method(method)
        .with_budget(budget)
        .with_seed(seed);
    p.votek.k = 8;
    p.ideal.k = 5;
    p.ideal.realisations = 20;
    p.facility.sparse_k = 10;
    p
}

const ALL: [Method; 6] = [
    Method::FastVotek,
    Method::Ideal,
    Method::Facility,
    Method::KCenter,
    Method::KMeans,
    Method::Random,
];

#[test]
fn bad_budgets_and_small_pools_are_errors() {
    let rows = unit_rows(20, 4, 1);
    let e = select(&rows, 4, &small(Method::Random, 21, 0)).unwrap_err().to_string();
    assert!(e.contains("21 is more than the 20 rows"), "{e}");
    assert!(select(&rows, 4, &small(Method::Random, 0, 0)).is_err());
    let mut p = small(Method::FastVotek, 5, 0);
    p.votek.k = 20;
    let e = select(&rows, 4, &p).unwrap_err().to_string();
    assert!(e.contains("--votek-k") && e.contains("20 rows"), "{e}");
    assert!(
        "vote-k"
            .parse::<Method>()
            .unwrap_err()
            .to_string()
            .contains("fast-votek, votek,")
    );
    assert_eq!("votek-two-stage".parse::<Method>().unwrap(), Method::Votek);
    assert_eq!("mfl".parse::<Method>().unwrap(), Method::Facility);
}

#[test]
fn k_center_picks_the_far_row_second() {
    // a tight bundle around e0 and one row along e1
    let mut rows = Vec::new();
    for i in 0..10 {
        rows.extend([1.0, 0.01 * i as f32]);
    }
    rows.extend([0.0, 1.0]);
    prepare(&mut rows, 2, false).unwrap();
    let (o, g) = k_center(&rows, 2, 3, 3);
    assert_ne!(o[0], 10);
    assert_eq!(o[1], 10);
    assert!(g[0].is_infinite() && g[1] > g[2]);
}

#[test]
fn kmeans_closest_takes_one_row_per_blob() {
    let dim = 3;
    let mut rows = Vec::new();
    let mut r = crate::rng::Rng::new(2);
    for c in 0..3 {
        for _ in 0..20 {
            let mut v = [
                0.05 * r.normal() as f32,
                0.05 * r.normal() as f32,
                0.05 * r.normal() as f32,
            ];
            v[c] += 1.0;
            rows.extend(v);
        }
    }
    prepare(&mut rows, dim, false).unwrap();
    let s = select(&rows, dim, &small(Method::KMeans, 3, 1)).unwrap();
    let mut blobs: Vec<u32> = s.order.iter().map(|&i| i / 20).collect();
    blobs.sort();
    assert_eq!(blobs, vec![0, 1, 2]);
    assert!(!s.nested);
}

#[test]
fn vote_k_falls_back_when_few_rows_receive_votes() {
    // 3 identical rows and 3 others far away: with k = 1 the rows vote
    // inside their group, so some rows get no vote.
    let rows = vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0];
    let mut p = small(Method::FastVotek, 6, 4);
    p.votek.k = 1;
    let s = select(&rows, 2, &p).unwrap();
    assert_eq!(s.order.len(), 6);
    assert_eq!(s.fallback, 2, "rows 2 and 5 receive no vote");
    assert_eq!(&s.gain[4..], &[0.0, 0.0]);
}

#[test]
fn large_pools_use_sparse_facility_location() {
    let rows = unit_rows(80, 5, 8);
    let mut p = small(Method::Facility, 12, 0);
    p.facility.sparse_above = 50;
    p.facility.floor = 0.0;
    let sparse = select(&rows, 5, &p).unwrap();
    assert_eq!(sparse.knn_backend, Some(KnnBackend::Exact));
    p.facility.sparse_above = 100;
    let dense = select(&rows, 5, &p).unwrap();
    assert_eq!(dense.knn_backend, None);
    // with 10 of 79 neighbours the sparse objective differs, but stays close
    let f = |o: &[u32]| facility_value(&rows, 5, o, 0.0);
    assert!(
        f(&sparse.order) >= 0.9 * f(&dense.order),
        "{} vs {}",
        f(&sparse.order),
        f(&dense.order)
    );
}

#[test]
fn two_stage_votek_runs_stage1_alone_or_both_stages() {
    let (n, dim) = (90, 5);
    let rows = unit_rows(n, dim, 12);
    let p = small(Method::Votek, 25, 2);
    let s1 = select(&rows, dim, &p).unwrap();
    assert_eq!(s1.order.len(), 3, "ceil(25 / 10)");
    assert!(s1.nested && s1.name() == "votek-stage1");
    let fast = select(&rows, dim, &small(Method::FastVotek, 3, 2)).unwrap();
    assert_eq!(s1.order, fast.order);
    let conf: Vec<f64> = (0..n).map(|i| ((i * 37) % 89) as f64).collect();
    let seen = std::cell::RefCell::new(Vec::new());
    let given = |l1: &[u32]| {
        seen.borrow_mut().extend_from_slice(l1);
        Ok(Stage2Input::Confidence(conf.clone()))
    };
    let s2 = select_with(&rows, dim, &p, Some(&given)).unwrap();
    assert_eq!(*seen.borrow(), s1.order, "the source sees the stage-1 rows");
    assert_eq!(s2.order.len(), 25);
    assert_eq!(&s2.order[..3], &s1.order[..]);
    assert!(!s2.nested && s2.name() == "votek");
    let t = s2.two_stage.as_ref().unwrap();
    assert_eq!((t.stage, t.stage1_rows, t.stratum_width), (2, 3, Some(3))); // floor(81 / 22)
    let labels = |l1: &[u32]| Ok(Stage2Input::Labels(l1.iter().map(|&v| v % 2).collect()));
    let k = select_with(&rows, dim, &p, Some(&labels)).unwrap();
    assert_eq!(k.order.len(), 25);
    assert_eq!(k.name(), "votek-knnconf");
    let mut u = k.order.clone();
    u.sort();
    u.dedup();
    assert_eq!(u.len(), 25);
    // a source's error stops the run; non-finite confidences are refused
    let fail = |_: &[u32]| Err(Error::param("--stage1", "mismatch"));
    assert!(select_with(&rows, dim, &p, Some(&fail)).is_err());
    let mut nan = conf.clone();
    let victim = (0..n).find(|i| !s1.order.contains(&(*i as u32))).unwrap();
    nan[victim] = f64::NAN;
    let bad = |_: &[u32]| Ok(Stage2Input::Confidence(nan.clone()));
    let e = select_with(&rows, dim, &p, Some(&bad)).unwrap_err().to_string();
    assert!(e.contains(&format!("pool row {victim}")), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn two_stage_votek_gives_budget_distinct_rows(
        n in 20usize..80, frac in 0.05f64..1.0, seed in 0u64..1000, labelled in proptest::bool::ANY,
    ) {
        let dim = 4;
        let rows = unit_rows(n, dim, seed);
        let budget = ((frac * n as f64) as usize).max(1);
        let p = small(Method::Votek, budget, seed);
        let conf: Vec<f64> = (0..n).map(|i| mix(i as u64 ^ seed) as f64).collect();
        let given = |_: &[u32]| Ok(Stage2Input::Confidence(conf.clone()));
        let labels = |l1: &[u32]| Ok(Stage2Input::Labels(l1.iter().map(|&v| v % 3).collect()));
        let src: Stage2Source<'_> = if labelled { &labels } else { &given };
        let s = select_with(&rows, dim, &p, Some(src)).unwrap();
        prop_assert_eq!(s.order.len(), budget);
        let mut u = s.order.clone();
        u.sort();
        u.dedup();
        prop_assert_eq!(u.len(), budget);
        let s1 = select(&rows, dim, &p).unwrap();
        prop_assert_eq!(&s.order[..s1.order.len()], &s1.order[..]);
    }
}

fn mix(x: u64) -> u32 {
    (crate::rng::mix64(x) >> 40) as u32
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn every_method_gives_budget_distinct_rows_and_nested_prefixes(
        n in 12usize..60, dim in 2usize..6, frac in 0.05f64..1.0, seed in 0u64..1000, m in 0usize..6,
    ) {
        let rows = unit_rows(n, dim, seed);
        let method = ALL[m];
        let budget = ((frac * n as f64) as usize).max(1);
        let s = select(&rows, dim, &small(method, budget, seed)).unwrap();
        prop_assert_eq!(s.order.len(), budget);
        prop_assert_eq!(s.gain.len(), budget);
        let mut u = s.order.clone();
        u.sort();
        u.dedup();
        prop_assert_eq!(u.len(), budget);
        // deterministic under the seed
        let again = select(&rows, dim, &small(method, budget, seed)).unwrap();
        prop_assert_eq!(&again.order, &s.order);
        if s.nested {
            let half = (budget / 2).max(1);
            let p = select(&rows, dim, &small(method, half, seed)).unwrap();
            prop_assert_eq!(&p.order[..], &s.order[..half]);
        }
    }
}
