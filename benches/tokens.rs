//! Per-image cost of every token reducer at LLaVA-1.5 size: N = 576 (24×24) tokens, D = 1024.
//!
//! Signals: 16-head \[CLS\] attention, head-mean keys of width 64 (CLIP ViT-L head width), 32
//! text rows, a 576×576 visual block. Names encode the size (`cls_topk_576x1024`); one core
//! (ndarray's matrixmultiply is single-threaded). Targets: < 1 ms, DivPrune / ToMe < 5 ms.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dprune::tokens::{
    AdaptivePruner, AdaptiveRule, Budget, ClsTopK, DivPrune, DivPruneParams, Metric, PruMerge, Random, Reducer,
    TextAttnTopK, ToMe, UniformGrid, VisionZip, VisualInput, cls_attention_from_qk, numerical_rank,
};
use ndarray::{Array2, Array3};

const ROWS: usize = 24;
const N: usize = ROWS * ROWS;
const D: usize = 1024;
const KEY_DIM: usize = 64;
const HEADS: usize = 16;
const TEXT: usize = 32;

/// Deterministic pseudo-random values in [-0.5, 0.5) (a 64-bit mix of the index).
fn noise(i: u64) -> f32 {
    let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5
}

fn softmax_rows(mut m: Array2<f32>) -> Array2<f32> {
    for mut row in m.rows_mut() {
        let mx = row.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        row.mapv_inplace(|v| (v - mx).exp());
        let s = row.sum();
        row.mapv_inplace(|v| v / s);
    }
    m
}

struct Data {
    tokens: Array2<f32>,
    cls: Array2<f32>,
    keys: Array2<f32>,
    text: Array2<f32>,
    vis: Array2<f32>,
}

impl Data {
    fn new() -> Self {
        let f = |salt: u64, cols: usize| move |(i, j): (usize, usize)| noise(salt + (i * cols + j) as u64);
        // sparse [CLS] attention: a few dozen strong tokens, as in CLIP's late layers
        let cls = Array2::from_shape_fn((HEADS, N), |(h, j)| {
            let spike = if (j * 7 + h) % 23 == 0 { 6.0 } else { 0.0 };
            spike + 2.0 * noise(1_000_000 + (h * N + j) as u64)
        });
        Data {
            tokens: Array2::from_shape_fn((N, D), f(0, D)),
            cls: softmax_rows(cls),
            keys: Array2::from_shape_fn((N, KEY_DIM), f(5_000_000, KEY_DIM)),
            text: softmax_rows(Array2::from_shape_fn((TEXT, N), f(7_000_000, N)) * 4.0),
            vis: softmax_rows(Array2::from_shape_fn((N, N), f(9_000_000, N)) * 4.0),
        }
    }

    fn input(&self) -> VisualInput<'_> {
        VisualInput::new(self.tokens.view())
            .with_grid(ROWS, ROWS)
            .with_cls_attn(self.cls.view())
            .with_keys(self.keys.view())
            .with_text_attn(self.text.view())
            .with_vis_attn(self.vis.view())
    }
}

fn reducers(c: &mut Criterion) {
    let data = Data::new();
    let input = data.input();
    let quarter = Budget::ratio(0.25);
    let iqr = Budget::adaptive(AdaptiveRule::default()).with_clamps(32, 288);
    let std = Budget::adaptive(AdaptiveRule::mean_plus_std()).with_clamps(32, 288);
    let tokens_only = VisualInput::new(data.tokens.view()).with_grid(ROWS, ROWS);
    let tokens_cls = tokens_only.with_cls_attn(data.cls.view());
    let cases: Vec<(&str, Box<dyn Reducer>, VisualInput<'_>, Budget)> = vec![
        ("random_576x1024", Box::new(Random::default()), input, quarter.clone()),
        ("uniform_grid_576x1024", Box::new(UniformGrid), input, quarter.clone()),
        ("cls_topk_576x1024", Box::new(ClsTopK), input, quarter.clone()),
        ("cls_topk_iqr_576x1024", Box::new(ClsTopK), input, iqr.clone()),
        (
            "text_attn_topk_576x1024",
            Box::new(TextAttnTopK::default()),
            input,
            quarter.clone(),
        ),
        (
            "prumerge_iqr_576x1024_keys64",
            Box::new(PruMerge::default()),
            input,
            iqr.clone(),
        ),
        (
            "prumerge_576x1024_keys64",
            Box::new(PruMerge::default()),
            input,
            quarter.clone(),
        ),
        (
            "visionzip_576x1024_keys64",
            Box::new(VisionZip::default()),
            input,
            quarter.clone(),
        ),
        (
            "adaptive_576x1024_vis_text",
            Box::new(AdaptivePruner::default()),
            input,
            std.clone(),
        ),
        (
            "adaptive_576x1024_tokens_only",
            Box::new(AdaptivePruner::default()),
            tokens_only,
            std.clone(),
        ),
        (
            "divprune_576x1024",
            Box::new(DivPrune::default()),
            input,
            quarter.clone(),
        ),
        (
            "divprune_576x1024_to288",
            Box::new(DivPrune::default()),
            input,
            Budget::ratio(0.5),
        ),
        (
            "divprune_576x1024_keys64",
            Box::new(DivPrune::new(DivPruneParams::default().with_metric(Metric::Keys))),
            input,
            quarter.clone(),
        ),
        (
            "tome_576x1024_keys64_to288",
            Box::new(ToMe::default()),
            input,
            Budget::ratio(0.5),
        ),
        (
            "tome_576x1024_keys64_to144",
            Box::new(ToMe::default()),
            input,
            quarter.clone(),
        ),
        // Without keys, ToMe, PruMerge and VisionZip fall back to the D = 1024 tokens.
        (
            "tome_576x1024_tokens_to144",
            Box::new(ToMe::default()),
            tokens_only,
            quarter.clone(),
        ),
        (
            "prumerge_576x1024_tokens",
            Box::new(PruMerge::default()),
            tokens_cls,
            quarter.clone(),
        ),
        (
            "visionzip_576x1024_tokens",
            Box::new(VisionZip::default()),
            tokens_cls,
            quarter.clone(),
        ),
    ];
    let mut g = c.benchmark_group("tokens");
    g.throughput(Throughput::Elements(N as u64));
    for (name, reducer, x, budget) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| reducer.reduce(black_box(x), black_box(budget)).unwrap())
        });
    }
    g.finish();
}

fn helpers(c: &mut Criterion) {
    let q = Array2::from_shape_fn((HEADS, KEY_DIM), |(h, d)| noise(11_000_000 + (h * KEY_DIM + d) as u64));
    let k = Array3::from_shape_fn((HEADS, N, KEY_DIM), |(h, j, d)| {
        noise(12_000_000 + ((h * N + j) * KEY_DIM + d) as u64)
    });
    let text = Data::new().text;
    let mut g = c.benchmark_group("tokens_helpers");
    g.bench_function("cls_attention_from_qk_16x576x64", |b| {
        b.iter(|| cls_attention_from_qk(black_box(q.view()), black_box(k.view())).unwrap())
    });
    g.bench_function("numerical_rank_32x576", |b| {
        b.iter(|| numerical_rank(black_box(text.view())).unwrap())
    });
    g.finish();
}

criterion_group!(benches, reducers, helpers);
criterion_main!(benches);
