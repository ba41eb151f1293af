//! Criterion benches of the hot kernels behind `dprune filter`: the f32 matrix
//! product (wide, and narrow as k-means' mover products), nearest-centroid search
//! (one GEMM per row chunk), the exact dots of chosen (row, centroid) pairs (rows in cache,
//! and rows read for the first time, as k-means' drift steps read them), a k-means fit, and
//! exact top-k selection. Names encode the sizes. Side-by-side comparisons with
//! the Python references (faiss, numpy) live in `benches/compare.py`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dprune::cluster::{Centroids, Distance, KMeans, KMeansParams};
use dprune::distance::{PackedRows, dot_batch_packed, fast_pair_dots, kernel_pair_dots, normalize};
use dprune::rng::Rng;
use dprune::select::{Keep, select_top};

fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    let mut v: Vec<f32> = (0..n * dim).map(|_| r.normal() as f32).collect();
    v.chunks_exact_mut(dim).for_each(|x| {
        normalize(x);
    });
    v
}

fn nearest(c: &mut Criterion) {
    let mut g = c.benchmark_group("nearest");
    g.sample_size(10);
    for &(n, dim, k) in &[(8192usize, 384usize, 1000usize), (8192, 384, 100)] {
        let rows = unit_rows(n, dim, 1);
        let cents = Centroids::try_new(unit_rows(k, dim, 2), dim, Distance::Cosine).unwrap();
        let (mut labels, mut dots) = (vec![0u32; n], vec![0f32; n]);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(format!("{n}x{dim}_k{k}")), |b| {
            b.iter(|| cents.nearest(black_box(&rows), &mut labels, &mut dots))
        });
    }
    g.finish();
}

/// The kernel's bits and the vectorized dot, one pair per row against a random
/// centroid: 256 rows stay in cache, 262144 rows (384 MiB) come from memory on
/// every pass.
fn pair_dots(c: &mut Criterion) {
    let mut g = c.benchmark_group("pair_dots");
    g.sample_size(10);
    let (dim, k) = (384usize, 1000usize);
    let cents = unit_rows(k, dim, 2);
    for &m in &[256usize, 262_144] {
        let rows = unit_rows(m, dim, 1);
        let mut r = Rng::new(3);
        let pairs: Vec<(u32, u32)> = (0..m).map(|i| (i as u32, r.below(k as u64) as u32)).collect();
        let mut out = vec![0f32; m];
        g.throughput(Throughput::Elements(m as u64));
        g.bench_function(BenchmarkId::new("kernel", format!("{m}x{dim}_k{k}")), |b| {
            b.iter(|| kernel_pair_dots(black_box(&rows), &cents, dim, &pairs, &mut out))
        });
        g.bench_function(BenchmarkId::new("fast", format!("{m}x{dim}_k{k}")), |b| {
            b.iter(|| fast_pair_dots(black_box(&rows), &cents, dim, &pairs, &mut out))
        });
    }
    g.finish();
}

fn products(c: &mut Criterion) {
    let mut g = c.benchmark_group("dot_batch_packed");
    let (m, dim) = (256usize, 384usize);
    let rows = unit_rows(m, dim, 5);
    // k <= 32 is one packed block: the left rows are broadcast without packing.
    for k in [8usize, 32, 1000] {
        let packed = PackedRows::new(&unit_rows(k, dim, 6), dim);
        let mut out = vec![0f32; m * k];
        g.throughput(Throughput::Elements((m * k) as u64));
        g.bench_function(BenchmarkId::from_parameter(format!("{m}x{dim}_k{k}")), |b| {
            b.iter(|| dot_batch_packed(black_box(&rows), &packed, &mut out))
        });
    }
    g.finish();
}

fn fit(c: &mut Criterion) {
    let mut g = c.benchmark_group("kmeans_fit");
    g.sample_size(10);
    let (n, dim, k) = (20_000usize, 384usize, 100usize);
    let rows = unit_rows(n, dim, 3);
    let p = KMeansParams {
        tolerance: 0.0,
        max_iters: 5,
        ..KMeansParams::default().with_k(k)
    };
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::from_parameter(format!("{n}x{dim}_k{k}_5it")), |b| {
        b.iter(|| KMeans::fit(black_box(&rows), dim, &p, &mut |_| {}).unwrap())
    });
    g.finish();
}

fn select(c: &mut Criterion) {
    let mut g = c.benchmark_group("select_top");
    g.sample_size(10);
    let n = 1_000_000usize;
    let mut r = Rng::new(4);
    let scores: Vec<f32> = (0..n).map(|_| r.next_f64() as f32).collect();
    let eligible = vec![true; n];
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::from_parameter(format!("{n}_keep30")), |b| {
        b.iter(|| select_top(black_box(&scores), &eligible, (n as u64 * 3) / 10, Keep::Hard))
    });
    g.finish();
}

criterion_group!(benches, products, nearest, pair_dots, fit, select);
criterion_main!(benches);
