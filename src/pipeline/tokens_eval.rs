//! `dprune tokens eval`: visual-token reducers on a real split ViT.
//!
//! Part 1 of the model ([`SplitModel`]) runs once per image and gives the hidden states after
//! its first blocks (\[CLS\] first, then the patch tokens) and the \[CLS\] attention of its last
//! block. For every reducer and kept fraction the patch tokens are reduced (the \[CLS\] row is
//! always kept and prepended), part 2 runs on the result, and top-1 accuracy against the label,
//! agreement with the unpruned prediction and the cosine of `pooled` to the unpruned `pooled`
//! are recorded. Fixed-ratio reducers get `round(f·N)` tokens per image; the adaptive
//! (instance-wise) rules are fitted with [`calibrate`] on the evaluated images so that their
//! *average* count equals the same `round(f·N)`, each image getting its own count.
//!
//! Token sets with the same count are batched together for part 2; every image is computed
//! independently, so the numbers do not depend on the batch size. Merging reducers (ToMe,
//! PruMerge, VisionZip) hand part 2 averaged rows without ToMe's proportional attention, which
//! an ONNX graph cannot be given.
//!
//! Outputs in the output folder: `tokens_eval.json` ([`TokensEvalReport`]) and
//! `tokens_eval.png` (accuracy and cosine against the mean kept fraction, one line per series).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayView2, s};
use serde::{Deserialize, Serialize};

use crate::embed::split::SplitModel;
use crate::io::AtomicFile;
use crate::tokens::{
    AdaptivePruner, AdaptivePrunerParams, AdaptiveRule, Budget, CalibrationSample, ClsTopK, DivPrune, DivPruneParams,
    PruMerge, PruMergeParams, Random, RandomParams, Reducer, ToMe, ToMeParams, UniformGrid, VisionZip, VisionZipParams,
    VisualInput, calibrate,
};
use crate::{Error, Result};

mod images;
mod plot;

use images::read_images;
use plot::write_png;

/// Kept fractions evaluated by default.
pub const DEFAULT_FRACTIONS: [f64; 4] = [1.0, 0.5, 0.25, 0.125];
/// Token sets per part-2 call (and images per part-1 call).
pub const DEFAULT_EVAL_BATCH: usize = 256;
/// Default seed of the random baseline.
pub const DEFAULT_EVAL_SEED: u64 = 0;
/// Part-1 file name inside `--models`.
pub const PART1_FILE: &str = "toyvit-mnist-part1.onnx";
/// Part-2 file name inside `--models`.
pub const PART2_FILE: &str = "toyvit-mnist-part2.onnx";
/// The JSON report's file name in the output folder.
pub const JSON_FILE: &str = "tokens_eval.json";
/// The plot's file name in the output folder.
pub const PNG_FILE: &str = "tokens_eval.png";
/// MNIST normalisation of the toy ViT: `(pixel/255 − mean) / std`.
pub const MNIST_MEAN: f32 = 0.1307;
/// See [`MNIST_MEAN`].
pub const MNIST_STD: f32 = 0.3081;

/// What [`run_tokens_eval`] does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokensEvalConfig {
    /// Part 1 of the split model.
    pub part1: PathBuf,
    /// Part 2 of the split model.
    pub part2: PathBuf,
    /// Parquet file with `label` (int) and `pixels` (fixed-size list of float32, raw 0..255).
    pub images: PathBuf,
    /// Evaluate the first `limit` images only.
    pub limit: Option<usize>,
    /// Seed of the random baseline (each image gets its own stream).
    pub seed: u64,
    /// Images per part-1 call and token sets per part-2 call.
    pub batch_size: usize,
    /// ONNX Runtime intra-op threads (`None`: its default).
    pub threads: Option<usize>,
    /// Kept fractions, each in `(0, 1]`.
    pub fractions: Vec<f64>,
    /// Output folder (created when missing).
    pub output_dir: PathBuf,
    /// Replace existing outputs.
    pub overwrite: bool,
}

impl TokensEvalConfig {
    /// A config for the toy ViT in `models` (see [`PART1_FILE`], [`PART2_FILE`]).
    pub fn new(models: &Path, images: &Path, output_dir: &Path) -> Self {
        TokensEvalConfig {
            part1: models.join(PART1_FILE),
            part2: models.join(PART2_FILE),
            images: images.to_path_buf(),
            limit: None,
            seed: DEFAULT_EVAL_SEED,
            batch_size: DEFAULT_EVAL_BATCH,
            threads: None,
            fractions: DEFAULT_FRACTIONS.to_vec(),
            output_dir: output_dir.to_path_buf(),
            overwrite: false,
        }
    }
}

/// The whole evaluation, as written to `tokens_eval.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokensEvalReport {
    /// Part 1 of the model.
    pub part1: String,
    /// Part 2 of the model.
    pub part2: String,
    /// The image file.
    pub images: String,
    /// Images evaluated.
    pub n_images: usize,
    /// Patch tokens per image (without \[CLS\]).
    pub n_patches: usize,
    /// Patch grid `(rows, cols)`, when the patch count is a square.
    pub grid: Option<(usize, usize)>,
    /// Token width.
    pub dim: usize,
    /// Random-baseline seed.
    pub seed: u64,
    /// Kept fractions.
    pub fractions: Vec<f64>,
    /// Accuracy with all tokens.
    pub unpruned_accuracy: f64,
    /// Every (series, fraction) point.
    pub points: Vec<EvalPoint>,
    /// Adaptive series against same-average fixed-ratio \[CLS\] top-k, per fraction below 1.
    pub comparisons: Vec<Comparison>,
    /// Points that could not be computed (e.g. a calibration target out of reach), with why.
    pub skipped: Vec<String>,
}

/// One series at one kept fraction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    /// Series name: the reducer (fixed ratio) or `reducer@rule` (adaptive, calibrated).
    pub series: String,
    /// The reducer's name.
    pub reducer: String,
    /// Whether the count is instance-adaptive.
    pub adaptive: bool,
    /// The budget used (for adaptive series, the calibrated rule with its clamps).
    pub budget: Budget,
    /// The kept fraction this point targets.
    pub target_fraction: f64,
    /// The (mean) count it targets: `round(fraction·N)`.
    pub target_k: usize,
    /// Mean kept patch tokens per image.
    pub mean_k: f64,
    /// Fewest kept.
    pub min_k: usize,
    /// Most kept.
    pub max_k: usize,
    /// `mean_k / N`.
    pub mean_kept_fraction: f64,
    /// Top-1 accuracy against the labels.
    pub accuracy: f64,
    /// Share of images whose prediction equals the unpruned prediction.
    pub agreement: f64,
    /// Mean cosine of `pooled` to the unpruned `pooled`.
    pub cosine_mean: f64,
    /// Lowest cosine.
    pub cosine_min: f64,
    /// Every image's count equals what its budget resolves to (fixed: `target_k`).
    pub count_matches_budget: bool,
}

/// An adaptive series against fixed-ratio \[CLS\] top-k at the same fraction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The kept fraction.
    pub fraction: f64,
    /// The adaptive series.
    pub series: String,
    /// Its mean count.
    pub mean_k: f64,
    /// \[CLS\] top-k's count.
    pub cls_topk_k: usize,
    /// The adaptive series' accuracy.
    pub accuracy: f64,
    /// \[CLS\] top-k's accuracy.
    pub cls_topk_accuracy: f64,
    /// `accuracy − cls_topk_accuracy` (positive: the adaptive rule wins).
    pub delta: f64,
    /// The same reducer with a fixed ratio at this fraction, when it was evaluated.
    pub fixed_same_reducer_accuracy: Option<f64>,
}

/// The evaluated images and part 1's outputs for them.
struct Encoded {
    labels: Vec<i64>,
    tokens: usize,
    dim: usize,
    heads: usize,
    hidden: Vec<f32>,
    cls_attn: Vec<f32>,
}

impl Encoded {
    fn n(&self) -> usize {
        self.labels.len()
    }

    fn patches(&self) -> usize {
        self.tokens - 1
    }

    fn hidden_of(&self, i: usize) -> ArrayView2<'_, f32> {
        let t = self.tokens * self.dim;
        ArrayView2::from_shape((self.tokens, self.dim), &self.hidden[i * t..(i + 1) * t]).expect("shape checked")
    }

    fn input(&self, i: usize, grid: Option<(usize, usize)>) -> VisualInput<'_> {
        let t = self.heads * self.tokens;
        let attn = ArrayView2::from_shape((self.heads, self.tokens), &self.cls_attn[i * t..(i + 1) * t])
            .expect("shape checked");
        let mut v =
            VisualInput::new(self.hidden_of(i).slice_move(s![1.., ..])).with_cls_attn(attn.slice_move(s![.., 1..]));
        if let Some((r, c)) = grid {
            v = v.with_grid(r, c);
        }
        v
    }
}

/// A reducer of the evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Random,
    UniformGrid,
    ClsTopK,
    DivPrune,
    ToMe,
    VisionZip,
    PruMerge,
    Adaptive,
}

impl Kind {
    fn build(self, seed: u64, image: usize) -> Box<dyn Reducer> {
        match self {
            Kind::Random => Box::new(Random::new(RandomParams {
                seed: image_seed(seed, image),
            })),
            Kind::UniformGrid => Box::new(UniformGrid),
            Kind::ClsTopK => Box::new(ClsTopK),
            Kind::DivPrune => Box::new(DivPrune::new(DivPruneParams::default())),
            Kind::ToMe => Box::new(ToMe::new(ToMeParams::default())),
            Kind::VisionZip => Box::new(VisionZip::new(VisionZipParams::default())),
            Kind::PruMerge => Box::new(PruMerge::new(PruMergeParams::default())),
            Kind::Adaptive => Box::new(AdaptivePruner::new(AdaptivePrunerParams::default())),
        }
    }
}

/// SplitMix64-style mix so every image gets an independent random stream.
fn image_seed(seed: u64, image: usize) -> u64 {
    let mut z = seed.wrapping_add((image as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const FIXED: [Kind; 8] = [
    Kind::ClsTopK,
    Kind::Random,
    Kind::UniformGrid,
    Kind::DivPrune,
    Kind::ToMe,
    Kind::VisionZip,
    Kind::PruMerge,
    Kind::Adaptive,
];

/// Adaptive series: reducer, rule (its free parameter is calibrated), suffix.
fn adaptive_series() -> Vec<(Kind, AdaptiveRule, &'static str)> {
    vec![
        (Kind::ClsTopK, AdaptiveRule::default(), "iqr"),
        (Kind::ClsTopK, AdaptiveRule::cumulative_mass(), "mass"),
        (Kind::ClsTopK, AdaptiveRule::mean_plus_std(), "mean_std"),
        (Kind::ClsTopK, AdaptiveRule::Threshold { tau: 0.0 }, "threshold"),
        (Kind::PruMerge, AdaptiveRule::default(), "iqr"),
        (Kind::Adaptive, AdaptiveRule::Threshold { tau: 0.0 }, "threshold"),
    ]
}

/// Runs the evaluation and writes the JSON and the PNG (see the module docs).
///
/// `progress` receives one line per finished step.
///
/// # Errors
/// Existing outputs without `overwrite`, a missing model file (named), no ONNX Runtime, an
/// unreadable image file or one without `label` / `pixels` of the model's size, model outputs
/// of the wrong shape (named), invalid fractions.
pub fn run_tokens_eval(cfg: &TokensEvalConfig, progress: &mut dyn FnMut(&str)) -> Result<TokensEvalReport> {
    if cfg.batch_size == 0 {
        return Err(Error::param("--batch-size", "must be at least 1"));
    }
    if cfg.limit == Some(0) {
        return Err(Error::param("--limit", "must be at least 1"));
    }
    if cfg.fractions.is_empty() {
        return Err(Error::param("fractions", "no kept fraction given"));
    }
    if let Some(f) = cfg.fractions.iter().find(|f| !(**f > 0.0 && **f <= 1.0)) {
        return Err(Error::param("fractions", format!("{f}; each must lie in (0, 1]")));
    }
    let json_path = cfg.output_dir.join(JSON_FILE);
    let png_path = cfg.output_dir.join(PNG_FILE);
    for p in [&json_path, &png_path] {
        if p.exists() && !cfg.overwrite {
            return Err(Error::OutputExists { path: p.clone() });
        }
    }
    let mut model = SplitModel::open(&cfg.part1, &cfg.part2, cfg.threads)?;
    let (labels, pixels) = read_images(&cfg.images, model.image_shape(), cfg.limit)?;
    progress(&format!("read {} images from {}", labels.len(), cfg.images.display()));
    let enc = encode(&mut model, labels, &pixels, cfg.batch_size)?;
    let n_p = enc.patches();
    let side = (n_p as f64).sqrt().round() as usize;
    let grid = (side * side == n_p).then_some((side, side));

    // Unpruned reference.
    let full: Vec<(usize, Vec<f32>)> = (0..enc.n())
        .map(|i| (i, enc.hidden_of(i).iter().copied().collect()))
        .collect();
    let reference = run_part2(&mut model, &enc, full, enc.tokens, cfg.batch_size)?;
    let ref_pred: Vec<usize> = reference.iter().map(|r| argmax(&r.1)).collect();
    let unpruned_accuracy = accuracy(&ref_pred, &enc.labels);
    progress(&format!(
        "unpruned accuracy {unpruned_accuracy:.4} on {} images",
        enc.n()
    ));

    let mut points = Vec::new();
    let mut skipped = Vec::new();
    for &f in &cfg.fractions {
        let target_k = ((f * n_p as f64).round() as usize).clamp(1, n_p);
        for kind in FIXED {
            let budget = Budget::ratio(f as f32);
            let p = eval_point(
                &mut model, &enc, grid, cfg, kind, &budget, f, target_k, &reference, &ref_pred,
            )?;
            progress(&format!(
                "{:<22} f={f:<6} k={:<6.2} acc={:.4} cos={:.4}",
                p.series, p.mean_k, p.accuracy, p.cosine_mean
            ));
            points.push(p);
        }
    }
    for (kind, rule, suffix) in adaptive_series() {
        let reducer = kind.build(cfg.seed, 0);
        let samples = (0..enc.n())
            .map(|i| CalibrationSample::from_input(reducer.as_ref(), &enc.input(i, grid)))
            .collect::<Result<Vec<_>>>()?;
        let base = Budget::adaptive(rule).with_clamps(1, n_p);
        for &f in &cfg.fractions {
            let target_k = ((f * n_p as f64).round() as usize).clamp(1, n_p);
            let series = format!("{}@{suffix}", reducer.name());
            let budget = match calibrate(&base, &samples, target_k as f64) {
                Ok(b) => b,
                Err(e) => {
                    skipped.push(format!("{series} at fraction {f}: {e}"));
                    continue;
                }
            };
            let mut p = eval_point(
                &mut model, &enc, grid, cfg, kind, &budget, f, target_k, &reference, &ref_pred,
            )?;
            p.series = series;
            progress(&format!(
                "{:<22} f={f:<6} k={:<6.2} acc={:.4} cos={:.4}",
                p.series, p.mean_k, p.accuracy, p.cosine_mean
            ));
            points.push(p);
        }
    }
    let comparisons = compare(&points, &cfg.fractions);
    let report = TokensEvalReport {
        part1: cfg.part1.display().to_string(),
        part2: cfg.part2.display().to_string(),
        images: cfg.images.display().to_string(),
        n_images: enc.n(),
        n_patches: n_p,
        grid,
        dim: enc.dim,
        seed: cfg.seed,
        fractions: cfg.fractions.clone(),
        unpruned_accuracy,
        points,
        comparisons,
        skipped,
    };
    std::fs::create_dir_all(&cfg.output_dir).map_err(|e| Error::io("creating", &cfg.output_dir, e))?;
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Internal(format!("serialising: {e}")))?;
    let atomic = AtomicFile::new(&json_path)?;
    std::fs::write(atomic.tmp_path(), json).map_err(|e| Error::io("writing", &json_path, e))?;
    atomic.commit()?;
    write_png(&report, &png_path)?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn eval_point(
    model: &mut SplitModel,
    enc: &Encoded,
    grid: Option<(usize, usize)>,
    cfg: &TokensEvalConfig,
    kind: Kind,
    budget: &Budget,
    fraction: f64,
    target_k: usize,
    reference: &[(Vec<f32>, Vec<f32>)],
    ref_pred: &[usize],
) -> Result<EvalPoint> {
    let n_p = enc.patches();
    let mut groups: BTreeMap<usize, Vec<(usize, Vec<f32>)>> = BTreeMap::new();
    let mut ks = Vec::with_capacity(enc.n());
    let mut matches = true;
    let mut name = "";
    for i in 0..enc.n() {
        let reducer = kind.build(cfg.seed, i);
        name = reducer.name();
        let input = enc.input(i, grid);
        let out = reducer.reduce(&input, budget)?;
        let expected = match budget {
            Budget::Adaptive { .. } => budget.resolve(&input, reducer.scores(&input)?.as_deref())?,
            _ => target_k,
        };
        matches &= out.k == expected && out.tokens.nrows() == out.k && out.origin.len() == out.k;
        let mut rows = Vec::with_capacity((out.k + 1) * enc.dim);
        rows.extend(enc.hidden_of(i).row(0).iter().copied());
        rows.extend(out.tokens.iter().copied());
        ks.push(out.k);
        groups.entry(out.k + 1).or_default().push((i, rows));
    }
    let mut pooled_logits: Vec<Option<(Vec<f32>, Vec<f32>)>> = vec![None; enc.n()];
    for (tokens, sets) in groups {
        let idx: Vec<usize> = sets.iter().map(|s| s.0).collect();
        let out = run_part2(model, enc, sets, tokens, cfg.batch_size)?;
        for (i, r) in idx.into_iter().zip(out) {
            pooled_logits[i] = Some(r);
        }
    }
    let (mut correct, mut agree, mut cos_sum, mut cos_min) = (0usize, 0usize, 0.0f64, f64::INFINITY);
    for (i, r) in pooled_logits.iter().enumerate() {
        let (pooled, logits) = r.as_ref().expect("every image was run");
        let pred = argmax(logits);
        correct += (pred as i64 == enc.labels[i]) as usize;
        agree += (pred == ref_pred[i]) as usize;
        let c = cosine(pooled, &reference[i].0);
        cos_sum += c;
        cos_min = cos_min.min(c);
    }
    let n = enc.n() as f64;
    let mean_k = ks.iter().sum::<usize>() as f64 / n;
    Ok(EvalPoint {
        series: name.to_string(),
        reducer: name.to_string(),
        adaptive: matches!(budget, Budget::Adaptive { .. }),
        budget: budget.clone(),
        target_fraction: fraction,
        target_k,
        mean_k,
        min_k: ks.iter().copied().min().unwrap_or(0),
        max_k: ks.iter().copied().max().unwrap_or(0),
        mean_kept_fraction: mean_k / n_p as f64,
        accuracy: correct as f64 / n,
        agreement: agree as f64 / n,
        cosine_mean: cos_sum / n,
        cosine_min: cos_min,
        count_matches_budget: matches,
    })
}

/// Runs part 2 on token sets of `tokens` rows each, in chunks; returns `(pooled, logits)` per
/// set in the given order.
fn run_part2(
    model: &mut SplitModel,
    enc: &Encoded,
    sets: Vec<(usize, Vec<f32>)>,
    tokens: usize,
    batch_size: usize,
) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
    let mut out = Vec::with_capacity(sets.len());
    for chunk in sets.chunks(batch_size) {
        let data: Vec<f32> = chunk.iter().flat_map(|s| s.1.iter().copied()).collect();
        let r = model.run_part2(&data, chunk.len(), tokens, enc.dim)?;
        for b in 0..chunk.len() {
            out.push((
                r.pooled[b * r.dim..(b + 1) * r.dim].to_vec(),
                r.logits[b * r.classes..(b + 1) * r.classes].to_vec(),
            ));
        }
    }
    Ok(out)
}

fn encode(model: &mut SplitModel, labels: Vec<i64>, pixels: &[f32], batch_size: usize) -> Result<Encoded> {
    let (c, h, w) = model.image_shape();
    let per = c * h * w;
    let mut enc: Option<Encoded> = None;
    for (start, chunk) in pixels.chunks(per * batch_size).enumerate() {
        let b = chunk.len() / per;
        let o = model.run_part1(chunk, b)?;
        match &mut enc {
            None => {
                enc = Some(Encoded {
                    labels: Vec::new(),
                    tokens: o.tokens,
                    dim: o.dim,
                    heads: o.heads,
                    hidden: o.hidden_states,
                    cls_attn: o.cls_attention,
                });
            }
            Some(e) => {
                if (o.tokens, o.dim, o.heads) != (e.tokens, e.dim, e.heads) {
                    return Err(Error::Shape {
                        op: "hidden_states",
                        expected: format!("[batch, {}, {}] in every batch", e.tokens, e.dim),
                        got: format!("[{b}, {}, {}] in batch {start}", o.tokens, o.dim),
                    });
                }
                e.hidden.extend(o.hidden_states);
                e.cls_attn.extend(o.cls_attention);
            }
        }
    }
    let mut enc = enc.ok_or_else(|| Error::param("--images", "no images to evaluate"))?;
    enc.labels = labels;
    Ok(enc)
}

fn compare(points: &[EvalPoint], fractions: &[f64]) -> Vec<Comparison> {
    let mut out = Vec::new();
    for &f in fractions.iter().filter(|&&f| f < 1.0) {
        let Some(base) = points
            .iter()
            .find(|p| p.series == "cls_topk" && !p.adaptive && p.target_fraction == f)
        else {
            continue;
        };
        for p in points.iter().filter(|p| p.adaptive && p.target_fraction == f) {
            let same = points
                .iter()
                .find(|q| !q.adaptive && q.reducer == p.reducer && q.target_fraction == f)
                .map(|q| q.accuracy);
            out.push(Comparison {
                fraction: f,
                series: p.series.clone(),
                mean_k: p.mean_k,
                cls_topk_k: base.target_k,
                accuracy: p.accuracy,
                cls_topk_accuracy: base.accuracy,
                delta: p.accuracy - base.accuracy,
                fixed_same_reducer_accuracy: same,
            });
        }
    }
    out
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

fn accuracy(pred: &[usize], labels: &[i64]) -> f64 {
    let ok = pred.iter().zip(labels).filter(|(p, l)| **p as i64 == **l).count();
    ok as f64 / labels.len().max(1) as f64
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        d += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    d / (na.sqrt() * nb.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_seeds_differ() {
        let a: Vec<u64> = (0..100).map(|i| image_seed(7, i)).collect();
        let mut b = a.clone();
        b.sort_unstable();
        b.dedup();
        assert_eq!(b.len(), 100);
    }

    #[test]
    fn cosine_and_argmax() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-12);
        assert_eq!(argmax(&[0.1, 0.5, 0.5, -1.0]), 1);
    }
}
