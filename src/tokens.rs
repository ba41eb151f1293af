//! Visual-token pruning and merging for VLM inference, one image (tile, frame) per call.
//!
//! An engine hands a [`VisualInput`] (the `[N, D]` patch tokens plus whatever optional signals
//! it has) and a [`Budget`] to a [`Reducer`], and gets a [`Reduction`]: the kept or merged
//! tokens, their original indices in ascending order (keep them as position ids), where every
//! input token went, merge sizes, the score used and the decided count. Text tokens never enter
//! this module, inputs are never mutated, and shape mismatches or non-finite scores are errors.
//! Methods follow their papers (FasterVLM, FastV/SparseVLM, LLaVA-PruMerge, VisionZip, DivPrune,
//! ToMe, ATP-LLaVA); ToMe, DivPrune and FastV are clean-room implementations from the papers.
//! This module does not run models: [`cls_attention_from_qk`] and friends only reshape signals.
//!
//! ```
//! # fn main() -> dprune::Result<()> {
//! use dprune::tokens::{AdaptivePruner, AdaptivePrunerParams, AdaptiveRule, Budget, Reducer, VisualInput};
//! use ndarray::Array2;
//!
//! let tokens = Array2::from_shape_fn((16, 8), |(i, j)| ((i * 7 + j * 3) % 11) as f32);
//! let cls = Array2::from_shape_fn((2, 16), |(_, j)| if j == 5 { 0.5 } else { 0.5 / 15.0 });
//! let input = VisualInput::new(tokens.view()).with_grid(4, 4).with_cls_attn(cls.view());
//! let budget = Budget::adaptive(AdaptiveRule::default()).with_clamps(4, 12);
//! let out = AdaptivePruner::new(AdaptivePrunerParams::default()).reduce(&input, &budget)?;
//! assert!((4..=12).contains(&out.k));
//! assert!(out.origin.windows(2).all(|w| w[0] < w[1]));
//! # Ok(())
//! # }
//! ```

use std::fmt;

use ndarray::{Array2, ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

mod accounting;
mod atp;
mod baseline;
mod budget;
mod divprune;
mod linalg;
mod prumerge;
mod rng;
mod scoring;
mod signals;
mod tome;
mod visionzip;

pub use accounting::{FlopsReport, LayerDims, equivalent_tokens, layer_flops, prefill_flops};
pub use atp::{AdaptivePruner, AdaptivePrunerParams, DEFAULT_CROSS_WEIGHT, DEFAULT_SELF_WEIGHT, DEFAULT_SPATIAL_SHARE};
pub use baseline::{DEFAULT_SEED, Random, RandomParams, UniformGrid, grid_skeleton};
pub use budget::{
    AdaptiveRule, Budget, CalibrationSample, DEFAULT_CUMULATIVE_MASS, DEFAULT_IQR_WHISKER, DEFAULT_MIN_KEEP,
    DEFAULT_RANK_BIAS, DEFAULT_RANK_SCALE, DEFAULT_STD_ALPHA, calibrate, mean_kept, numerical_rank,
};
pub use divprune::{DivPrune, DivPruneParams};
pub use prumerge::{DEFAULT_PRUMERGE_KNN, PruMerge, PruMergeParams};
pub use scoring::{ClsTopK, TextAttnTopK, TextAttnTopKParams, TextRows};
pub use signals::{attention_received, cls_attention_from_qk, head_mean};
pub use tome::{ToMe, ToMeParams};
pub use visionzip::{DEFAULT_CONTEXTUAL_SHARE, VisionZip, VisionZipParams};

/// One visual span (image, tile or frame). Only `tokens` is required.
///
/// Attention inputs are post-softmax unless a field says otherwise; head-averaging is done by
/// the reducers (`[H, N]` with `H = 1` is fine). Build with [`VisualInput::new`] and the
/// `with_*` setters; [`VisualInput::validate`] checks every shape against `N`.
#[derive(Debug, Clone, Copy)]
pub struct VisualInput<'a> {
    /// `[N, D]` patch tokens (no \[CLS\] row), row-major on the grid when a grid is given.
    pub tokens: ArrayView2<'a, f32>,
    /// `(rows, cols)` of the patch grid, `rows * cols == N`.
    pub grid: Option<(usize, usize)>,
    /// `[H, N]` \[CLS\]→patch attention of a vision-encoder layer, per head.
    pub cls_attn: Option<ArrayView2<'a, f32>>,
    /// `[N, d]` head-mean keys of a vision-encoder layer (similarity metric for merges).
    pub keys: Option<ArrayView2<'a, f32>>,
    /// `[T, N]` text→visual attention rows of one LLM layer (head mean), softmax over all keys.
    pub text_attn: Option<ArrayView2<'a, f32>>,
    /// `[N, N]` visual→visual attention block of one LLM layer (rows are queries), probabilities
    /// or logits (ATP's `S_self` reads column means).
    pub vis_attn: Option<ArrayView2<'a, f32>>,
    /// `[N]` token sizes from earlier merges (each original patch counts 1); defaults to ones.
    pub sizes: Option<ArrayView1<'a, f32>>,
}

/// A signal a reducer reads from a [`VisualInput`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// [`VisualInput::grid`].
    Grid,
    /// [`VisualInput::cls_attn`].
    ClsAttn,
    /// [`VisualInput::keys`].
    Keys,
    /// [`VisualInput::text_attn`].
    TextAttn,
    /// [`VisualInput::vis_attn`].
    VisAttn,
    /// [`VisualInput::sizes`].
    Sizes,
}

/// The result of one reduction; all per-token vectors refer to the input order.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduction {
    /// `[k, D]` output tokens: gathered rows, or size/attention-weighted averages for merges.
    pub tokens: Array2<f32>,
    /// Per output row, the original index it stands for (for merged rows, the representative:
    /// the destination token); strictly ascending, so use it for position ids.
    pub origin: Vec<usize>,
    /// Per input token, the output row it went into (`None` = dropped).
    pub assignment: Vec<Option<u32>>,
    /// Per output row, the summed input sizes it aggregates (1 per original patch).
    pub sizes: Vec<f32>,
    /// Per input token, the score the budget and selection used, when there was one.
    pub scores: Option<Vec<f32>>,
    /// The decided count, equal to `tokens.nrows()`.
    pub k: usize,
}

/// A visual-token reducer: decides what to keep (and merge) for one image.
///
/// Implementations are stateless apart from their parameters, so one instance can serve many
/// threads.
pub trait Reducer: Send + Sync {
    /// Short stable name, e.g. `"cls_topk"`.
    fn name(&self) -> &'static str;

    /// Signals that must be present in the input (others are used when present).
    fn needs(&self) -> &'static [Signal];

    /// The per-token score an adaptive [`Budget`] reads for this reducer (higher = keep), or
    /// `None` when the reducer has none and the input offers no fallback. Used by
    /// [`CalibrationSample::from_input`].
    ///
    /// # Errors
    /// Shape mismatches, missing signals and non-finite scores.
    fn scores(&self, input: &VisualInput<'_>) -> Result<Option<Vec<f32>>>;

    /// Reduces one image to the budget.
    ///
    /// # Errors
    /// Shape mismatches, missing signals, non-finite scores and invalid budgets or parameters.
    fn reduce(&self, input: &VisualInput<'_>, budget: &Budget) -> Result<Reduction>;
}

/// Which rows measure token similarity for merges and diversity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Keys when the input has them, else the tokens.
    #[default]
    Auto,
    /// The tokens themselves.
    Tokens,
    /// The keys (an error when absent).
    Keys,
}

/// Arithmetic of the similarity products behind a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// The fastest of the two below on this CPU, decided once per process
    /// ([`Precision::resolve`]): [`Precision::Bf16`] where the CPU has AVX-512 BF16
    /// (`vdpbf16ps`, about 3× the f32 throughput), else [`Precision::F32`], because without
    /// the instruction bf16 products can only be emulated with more f32 operations than the
    /// f32 product itself. Deterministic for a given CPU (and `DPRUNE_KERNEL`), not across
    /// CPUs with and without AVX-512 BF16; pick `Bf16` or `F32` explicitly for bits that
    /// agree everywhere.
    #[default]
    Auto,
    /// Unit rows rounded to bfloat16, products summed in f32 (`distance::dot_batch_bf16`):
    /// the precision VLMs run their tokens in, and bit-identical on every CPU (a portable
    /// kernel does the same operations where the instruction is missing, several times slower
    /// than f32). Similarities are within about 2⁻⁷ of the f32 ones.
    Bf16,
    /// Unit rows and products in f32 (the AVX-512 FMA kernel where the CPU has AVX-512F).
    F32,
}

impl Precision {
    /// What this precision runs as here: [`Precision::Auto`] becomes [`Precision::Bf16`] when
    /// [`crate::distance::bf16_kernel`] is the AVX-512 BF16 one, else [`Precision::F32`];
    /// the explicit precisions stay as they are.
    pub fn resolve(self) -> Precision {
        match self {
            Precision::Auto if crate::distance::bf16_kernel() == crate::distance::Bf16Kernel::Avx512Bf16 => {
                Precision::Bf16
            }
            Precision::Auto => Precision::F32,
            p => p,
        }
    }
}

/// A reducer by name and parameters, for configuration files and the CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReducerConfig {
    /// [`Random`].
    Random(RandomParams),
    /// [`UniformGrid`].
    UniformGrid,
    /// [`ClsTopK`].
    ClsTopK,
    /// [`TextAttnTopK`].
    TextAttnTopK(TextAttnTopKParams),
    /// [`PruMerge`].
    PruMerge(PruMergeParams),
    /// [`VisionZip`].
    VisionZip(VisionZipParams),
    /// [`DivPrune`].
    DivPrune(DivPruneParams),
    /// [`ToMe`].
    ToMe(ToMeParams),
    /// [`AdaptivePruner`].
    Adaptive(AdaptivePrunerParams),
}

impl<'a> VisualInput<'a> {
    /// An input with only the `[N, D]` tokens.
    pub fn new(tokens: ArrayView2<'a, f32>) -> Self {
        VisualInput {
            tokens,
            grid: None,
            cls_attn: None,
            keys: None,
            text_attn: None,
            vis_attn: None,
            sizes: None,
        }
    }

    /// Sets the `(rows, cols)` patch grid.
    #[must_use]
    pub fn with_grid(mut self, rows: usize, cols: usize) -> Self {
        self.grid = Some((rows, cols));
        self
    }

    /// Sets the `[H, N]` \[CLS\]→patch attention.
    #[must_use]
    pub fn with_cls_attn(mut self, attn: ArrayView2<'a, f32>) -> Self {
        self.cls_attn = Some(attn);
        self
    }

    /// Sets the `[N, d]` head-mean keys.
    #[must_use]
    pub fn with_keys(mut self, keys: ArrayView2<'a, f32>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Sets the `[T, N]` text→visual attention rows.
    #[must_use]
    pub fn with_text_attn(mut self, attn: ArrayView2<'a, f32>) -> Self {
        self.text_attn = Some(attn);
        self
    }

    /// Sets the `[N, N]` visual→visual attention block.
    #[must_use]
    pub fn with_vis_attn(mut self, attn: ArrayView2<'a, f32>) -> Self {
        self.vis_attn = Some(attn);
        self
    }

    /// Sets the `[N]` token sizes.
    #[must_use]
    pub fn with_sizes(mut self, sizes: ArrayView1<'a, f32>) -> Self {
        self.sizes = Some(sizes);
        self
    }

    /// Number of tokens `N`.
    pub fn n(&self) -> usize {
        self.tokens.nrows()
    }

    /// Token width `D`.
    pub fn dim(&self) -> usize {
        self.tokens.ncols()
    }

    /// Whether the signal is present.
    pub fn has(&self, signal: Signal) -> bool {
        match signal {
            Signal::Grid => self.grid.is_some(),
            Signal::ClsAttn => self.cls_attn.is_some(),
            Signal::Keys => self.keys.is_some(),
            Signal::TextAttn => self.text_attn.is_some(),
            Signal::VisAttn => self.vis_attn.is_some(),
            Signal::Sizes => self.sizes.is_some(),
        }
    }

    /// Checks every present signal against `N` (and sizes for being finite and positive).
    ///
    /// Attention values are checked for NaN where a reducer turns them into scores.
    ///
    /// # Errors
    /// [`Error::Shape`] for a mismatch or `N == 0`, [`Error::InvalidParam`] for bad sizes.
    pub fn validate(&self) -> Result<()> {
        let n = self.n();
        if n == 0 || self.dim() == 0 {
            return Err(shape_err("tokens", "[N >= 1, D >= 1]", self.tokens.shape()));
        }
        if let Some((r, c)) = self.grid
            && r.checked_mul(c) != Some(n)
        {
            return Err(Error::Shape {
                op: "grid",
                expected: format!("rows * cols == {n}"),
                got: format!("{r} x {c}"),
            });
        }
        let wide = |name: &'static str, a: Option<ArrayView2<'_, f32>>| match a {
            Some(a) if a.ncols() != n || a.nrows() == 0 => Err(shape_err(name, &format!("[>= 1, {n}]"), a.shape())),
            _ => Ok(()),
        };
        wide("cls_attn", self.cls_attn)?;
        wide("text_attn", self.text_attn)?;
        wide("vis_attn", self.vis_attn)?;
        if let Some(v) = self.vis_attn
            && v.nrows() != n
        {
            return Err(shape_err("vis_attn", &format!("[{n}, {n}]"), v.shape()));
        }
        if let Some(k) = self.keys
            && (k.nrows() != n || k.ncols() == 0)
        {
            return Err(shape_err("keys", &format!("[{n}, >= 1]"), k.shape()));
        }
        if let Some(s) = self.sizes {
            if s.len() != n {
                return Err(shape_err("sizes", &format!("[{n}]"), s.shape()));
            }
            if let Some(j) = s.iter().position(|&v| !(v.is_finite() && v > 0.0)) {
                return Err(Error::param(
                    "sizes",
                    format!("token {j} has size {}; sizes must be finite and > 0", s[j]),
                ));
            }
        }
        Ok(())
    }

    /// The signal as a 2-D view, or an error naming the reducer that needs it.
    pub(crate) fn require(&self, signal: Signal, who: &str) -> Result<ArrayView2<'a, f32>> {
        let v = match signal {
            Signal::ClsAttn => self.cls_attn,
            Signal::Keys => self.keys,
            Signal::TextAttn => self.text_attn,
            Signal::VisAttn => self.vis_attn,
            Signal::Grid | Signal::Sizes => None,
        };
        v.ok_or_else(|| missing(signal, who))
    }

    /// Size of token `j` (1 without sizes).
    pub(crate) fn size(&self, j: usize) -> f32 {
        self.sizes.map_or(1.0, |s| s[j])
    }

    /// The similarity rows chosen by `metric`.
    pub(crate) fn metric_rows(&self, metric: Metric, who: &str) -> Result<ArrayView2<'a, f32>> {
        match (metric, self.keys) {
            (Metric::Tokens, _) | (Metric::Auto, None) => Ok(self.tokens),
            (Metric::Auto | Metric::Keys, Some(k)) => Ok(k),
            (Metric::Keys, None) => Err(missing(Signal::Keys, who)),
        }
    }
}

impl Signal {
    /// The field name in [`VisualInput`].
    pub fn name(self) -> &'static str {
        match self {
            Signal::Grid => "grid",
            Signal::ClsAttn => "cls_attn",
            Signal::Keys => "keys",
            Signal::TextAttn => "text_attn",
            Signal::VisAttn => "vis_attn",
            Signal::Sizes => "sizes",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Metric::Auto => "auto",
            Metric::Tokens => "tokens",
            Metric::Keys => "keys",
        })
    }
}

impl std::str::FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Metric::Auto),
            "tokens" => Ok(Metric::Tokens),
            "keys" => Ok(Metric::Keys),
            _ => Err(Error::param("metric", format!("`{s}`; expected auto, tokens or keys"))),
        }
    }
}

impl Reduction {
    /// Number of output tokens.
    pub fn len(&self) -> usize {
        self.k
    }

    /// Whether nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.k == 0
    }
}

impl ReducerConfig {
    /// Validates the parameters and builds the reducer.
    ///
    /// # Errors
    /// [`Error::InvalidParam`] from the parameters' `validate()`.
    pub fn build(&self) -> Result<Box<dyn Reducer>> {
        Ok(match self {
            ReducerConfig::Random(p) => Box::new(Random::try_new(p.clone())?),
            ReducerConfig::UniformGrid => Box::new(UniformGrid),
            ReducerConfig::ClsTopK => Box::new(ClsTopK),
            ReducerConfig::TextAttnTopK(p) => Box::new(TextAttnTopK::try_new(p.clone())?),
            ReducerConfig::PruMerge(p) => Box::new(PruMerge::try_new(p.clone())?),
            ReducerConfig::VisionZip(p) => Box::new(VisionZip::try_new(p.clone())?),
            ReducerConfig::DivPrune(p) => Box::new(DivPrune::try_new(p.clone())?),
            ReducerConfig::ToMe(p) => Box::new(ToMe::try_new(p.clone())?),
            ReducerConfig::Adaptive(p) => Box::new(AdaptivePruner::try_new(p.clone())?),
        })
    }
}

fn shape_err(op: &'static str, expected: &str, got: &[usize]) -> Error {
    Error::Shape {
        op,
        expected: expected.to_owned(),
        got: format!("{got:?}"),
    }
}

fn missing(signal: Signal, who: &str) -> Error {
    Error::param(
        signal.name(),
        format!("{who} needs `{signal}` in the input; supply it with VisualInput::with_{signal}"),
    )
}

/// The scores a budget needs: computed for an adaptive budget, which decides
/// its count from them; otherwise only the input is checked.
pub(crate) fn budget_scores(
    reducer: &dyn Reducer,
    input: &VisualInput<'_>,
    budget: &Budget,
) -> Result<Option<Vec<f32>>> {
    match budget {
        Budget::Adaptive { .. } => reducer.scores(input),
        _ => {
            check_input(reducer, input)?;
            Ok(None)
        }
    }
}

/// Validates the input and checks that `reducer`'s required signals are present.
pub(crate) fn check_input(reducer: &dyn Reducer, input: &VisualInput<'_>) -> Result<()> {
    input.validate()?;
    for &s in reducer.needs() {
        if !input.has(s) {
            return Err(missing(s, reducer.name()));
        }
    }
    Ok(())
}

/// Errors on the first non-finite score, naming the signal it came from.
pub(crate) fn check_finite(scores: &[f32], source: &'static str) -> Result<()> {
    match scores.iter().position(|v| !v.is_finite()) {
        Some(j) => Err(Error::param(
            source,
            format!("score of token {j} is {}; attention must be finite", scores[j]),
        )),
        None => Ok(()),
    }
}

/// The score a reducer without its own score offers adaptive budgets: head-mean \[CLS\]
/// attention, else the mean text attention, else none.
pub(crate) fn fallback_scores(input: &VisualInput<'_>) -> Result<Option<Vec<f32>>> {
    if let Some(a) = input.cls_attn {
        let s = head_mean(a);
        check_finite(&s, "cls_attn")?;
        Ok(Some(s))
    } else if let Some(a) = input.text_attn {
        let s = head_mean(a);
        check_finite(&s, "text_attn")?;
        Ok(Some(s))
    } else {
        Ok(None)
    }
}

/// Builds a pruning [`Reduction`] by gathering `kept` (ascending) rows.
pub(crate) fn gather(input: &VisualInput<'_>, kept: &[usize], scores: Option<Vec<f32>>) -> Reduction {
    debug_assert!(kept.windows(2).all(|w| w[0] < w[1]));
    let tokens = input.tokens.select(ndarray::Axis(0), kept);
    let mut assignment = vec![None; input.n()];
    for (row, &j) in kept.iter().enumerate() {
        assignment[j] = Some(row as u32);
    }
    Reduction {
        tokens,
        origin: kept.to_vec(),
        assignment,
        sizes: kept.iter().map(|&j| input.size(j)).collect(),
        scores,
        k: kept.len(),
    }
}

/// Builds a merging [`Reduction`].
///
/// `rep[r]` is the representative original index of provisional row `r` (all distinct),
/// `assign[j]` the provisional row of input `j`, `weight[j] >= 0` its averaging weight. Rows are
/// renumbered so that `origin` ascends; a row whose weights sum to 0 is size-weighted instead.
pub(crate) fn merge(
    input: &VisualInput<'_>,
    rep: &[usize],
    assign: &[Option<usize>],
    weight: &[f32],
    scores: Option<Vec<f32>>,
) -> Reduction {
    let k = rep.len();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_unstable_by_key(|&r| rep[r]);
    let mut new_row = vec![0usize; k];
    for (new, &old) in order.iter().enumerate() {
        new_row[old] = new;
    }
    let mut wsum = vec![0.0f64; k];
    let mut ssum = vec![0.0f64; k];
    for (j, a) in assign.iter().enumerate() {
        if let Some(r) = *a {
            wsum[new_row[r]] += f64::from(weight[j]);
            ssum[new_row[r]] += f64::from(input.size(j));
        }
    }
    let mut tokens = Array2::<f32>::zeros((k, input.dim()));
    let mut assignment = vec![None; input.n()];
    for (j, a) in assign.iter().enumerate() {
        if let Some(r) = *a {
            let r = new_row[r];
            assignment[j] = Some(r as u32);
            let w = if wsum[r] > 0.0 && wsum[r].is_finite() {
                f64::from(weight[j]) / wsum[r]
            } else {
                f64::from(input.size(j)) / ssum[r]
            };
            let src = input.tokens.row(j);
            let mut dst = tokens.row_mut(r);
            if let (Some(y), Some(x)) = (dst.as_slice_mut(), src.as_slice()) {
                crate::distance::axpy(y, w as f32, x);
            } else {
                dst.scaled_add(w as f32, &src);
            }
        }
    }
    Reduction {
        tokens,
        origin: order.iter().map(|&r| rep[r]).collect(),
        assignment,
        sizes: ssum.iter().map(|&s| s as f32).collect(),
        scores,
        k,
    }
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;
