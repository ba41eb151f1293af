use super::*;

#[test]
fn nearest_rank_quantiles() {
    let mut v = vec![5.0, 1.0, 4.0, 2.0, 3.0];
    assert_eq!(quantile(&mut v, 0.1), 1.0);
    assert_eq!(quantile(&mut v, 0.5), 3.0);
    assert_eq!(quantile(&mut v, 1.0), 5.0);
}

#[test]
fn coverage_metrics_of_the_whole_pool_are_perfect() {
    let dim = 3;
    let mut rows: Vec<f32> = (0..30).map(|i| ((i * 7) % 11) as f32 + 1.0).collect();
    prepare(&mut rows, dim, false).unwrap();
    let all: Vec<u32> = (0..10).collect();
    let m = coverage_metrics(&rows, dim, &all, 1);
    assert!((m.facility_location - 1.0).abs() < 1e-5);
    assert!(m.coverage.iter().all(|c| c.coverage == 1.0));
    assert!(m.kcenter_radius.iter().all(|r| r.radius.abs() < 1e-5));
    let one = coverage_metrics(&rows, dim, &[0], 1);
    assert!(one.redundancy.is_none() && one.facility_location < 1.0);
}
