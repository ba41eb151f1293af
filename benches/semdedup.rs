//! Criterion benches of concept-aware pruning: SemDeDup's blocked
//! within-cluster max-similarity (one cluster, and a whole clustered
//! dataset), the exact-duplicate hash pass and DBP's quota allocation.
//! Names encode the sizes.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dprune::distance::normalize;
use dprune::rng::Rng;
use dprune::score::semdedup::{
    Assignment, ClusterMembers, SemDedupParams, dedup_cluster, dedup_clusters, exact_duplicates,
};
use dprune::select::dbp::{ShareRule, allocate, shares};

fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    let mut v: Vec<f32> = (0..n * dim).map(|_| r.normal() as f32).collect();
    v.chunks_exact_mut(dim).for_each(|x| {
        normalize(x);
    });
    v
}

fn one_cluster(c: &mut Criterion) {
    let mut g = c.benchmark_group("semdedup_cluster");
    g.sample_size(10);
    let dim = 384;
    for &n in &[1024usize, 8192] {
        let rows = unit_rows(n, dim, 1);
        let ids: Vec<u32> = (0..n as u32).collect();
        let mut r = Rng::new(2);
        let dist: Vec<f32> = (0..n).map(|_| r.next_f64() as f32).collect();
        let m = ClusterMembers::try_new(&rows, dim, &ids, &dist).unwrap();
        let p = SemDedupParams::default();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(format!("{n}x{dim}")), |b| {
            b.iter(|| dedup_cluster(black_box(&m), &p).unwrap())
        });
    }
    g.finish();
}

fn all_clusters(c: &mut Criterion) {
    let mut g = c.benchmark_group("semdedup_all");
    g.sample_size(10);
    let (n, dim, k) = (100_000usize, 384usize, 100usize);
    let rows = unit_rows(n, dim, 3);
    let mut r = Rng::new(4);
    let labels: Vec<u32> = (0..n).map(|_| r.below(k as u64) as u32).collect();
    let dist: Vec<f32> = (0..n).map(|_| r.next_f64() as f32).collect();
    let eligible = vec![true; n];
    let a = Assignment::try_new(&labels, &dist, &eligible, k).unwrap();
    let p = SemDedupParams::default();
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::from_parameter(format!("{n}x{dim}_k{k}")), |b| {
        b.iter(|| dedup_clusters(black_box(&rows), dim, &a, &p).unwrap())
    });
    g.finish();
}

fn exact(c: &mut Criterion) {
    let mut g = c.benchmark_group("exact_duplicates");
    g.sample_size(10);
    let (n, dim) = (100_000usize, 384usize);
    let rows = unit_rows(n, dim, 5);
    let eligible = vec![true; n];
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::from_parameter(format!("{n}x{dim}")), |b| {
        b.iter(|| exact_duplicates(black_box(&rows), dim, &eligible))
    });
    g.finish();
}

fn dbp(c: &mut Criterion) {
    let mut g = c.benchmark_group("dbp_allocate");
    let k = 50_000usize;
    let mut r = Rng::new(6);
    let sizes: Vec<u64> = (0..k).map(|_| 1 + r.below(20_000)).collect();
    let w: Vec<f64> = (0..k).map(|_| r.next_f64() * 0.3).collect();
    let p = shares(&w, ShareRule::Softmax, 0.5).unwrap();
    let budget = sizes.iter().sum::<u64>() * 3 / 10;
    g.throughput(Throughput::Elements(k as u64));
    g.bench_function(BenchmarkId::from_parameter(format!("k{k}")), |b| {
        b.iter(|| allocate(black_box(&p), &sizes, budget, 0.5).unwrap())
    });
    g.finish();
}

criterion_group!(benches, one_cluster, all_clusters, exact, dbp);
criterion_main!(benches);
