//! How many tokens to keep: fixed counts, ratios, and instance-adaptive rules with clamps.
//!
//! Adaptive rules read one score per token (higher = keep): PruMerge's IQR outlier count
//! (`#{s > Q3 + w·IQR}`, arXiv 2403.15388), cumulative score mass, mean + α·std, a fixed
//! threshold (ATP-LLaVA's instance threshold, training-free), and SparseVLM v1's
//! `k = ⌊rank(P)·scale + bias⌋` on the text→visual attention rows (arXiv 2410.04417).
//! [`calibrate`] fits a rule's free parameter by bisection so the *mean* clamped count over a
//! calibration set hits a target while each image keeps its own count (DyMU's batch-calibrated
//! thresholds, arXiv 2504.17040, applied to scores). Percentiles are per image, never per batch.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::linalg::{percentile_sorted, symmetric_eigenvalues};
use super::{Reducer, VisualInput};
use crate::{Error, Result};

/// Default lower clamp of an adaptive budget.
pub const DEFAULT_MIN_KEEP: usize = 1;
/// Default IQR whisker `w` (Tukey's fence, as PruMerge).
pub const DEFAULT_IQR_WHISKER: f32 = 1.5;
/// Default score-mass fraction for [`AdaptiveRule::CumulativeMass`].
pub const DEFAULT_CUMULATIVE_MASS: f32 = 0.9;
/// Default `α` for [`AdaptiveRule::MeanPlusStd`].
pub const DEFAULT_STD_ALPHA: f32 = 1.0;
/// Default `scale` for [`AdaptiveRule::MatrixRank`].
pub const DEFAULT_RANK_SCALE: f32 = 1.0;
/// Default `bias` for [`AdaptiveRule::MatrixRank`].
pub const DEFAULT_RANK_BIAS: f32 = 0.0;

/// How many tokens a reducer outputs for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Budget {
    /// Exactly `min(k, N)` tokens.
    Keep {
        /// The count, `>= 1`.
        k: usize,
    },
    /// `round(ratio·N)` tokens, at least 1.
    Ratio {
        /// Kept fraction in `(0, 1]`.
        ratio: f32,
    },
    /// A per-image count from the reducer's scores, clamped to `[min_keep, max_keep]` and `N`.
    Adaptive {
        /// The rule.
        rule: AdaptiveRule,
        /// Lower clamp (sparse \[CLS\] attention makes IQR pick very few tokens: set this).
        #[serde(default = "default_min_keep")]
        min_keep: usize,
        /// Upper clamp.
        #[serde(default = "default_max_keep")]
        max_keep: usize,
    },
}

/// An instance-adaptive count rule over one score vector `s` of length `N`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdaptiveRule {
    /// PruMerge: `k = #{j : s_j > Q3 + whisker·(Q3 − Q1)}` (numpy-linear quartiles).
    IqrOutliers {
        /// Fence multiplier, [`DEFAULT_IQR_WHISKER`] by default.
        whisker: f32,
    },
    /// Smallest `k` whose top-`k` scores hold at least `mass` of the total (scores `>= 0`).
    CumulativeMass {
        /// Fraction in `[0, 1]`.
        mass: f32,
    },
    /// `k = #{j : s_j > mean + alpha·std}` (population std).
    MeanPlusStd {
        /// Multiplier of the standard deviation.
        alpha: f32,
    },
    /// `k = #{j : s_j > tau}`.
    Threshold {
        /// The threshold, in score units (fit it with [`calibrate`]).
        tau: f32,
    },
    /// SparseVLM v1: `k = ⌊rank(text_attn)·scale + bias⌋`; needs [`VisualInput::text_attn`].
    ///
    /// The numerical rank comes from [`numerical_rank`].
    MatrixRank {
        /// Tokens per unit of rank.
        scale: f32,
        /// Offset.
        bias: f32,
    },
}

/// What [`calibrate`] needs of one calibration image: its scores and, for
/// [`AdaptiveRule::MatrixRank`], the rank of its text attention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSample {
    /// Per-token scores as the reducer computes them (length `N` of that image).
    pub scores: Vec<f32>,
    /// `numerical_rank(text_attn)`, when the image has text attention.
    #[serde(default)]
    pub text_rank: Option<usize>,
}

fn default_min_keep() -> usize {
    DEFAULT_MIN_KEEP
}

fn default_max_keep() -> usize {
    usize::MAX
}

impl Default for AdaptiveRule {
    /// PruMerge's IQR rule with [`DEFAULT_IQR_WHISKER`].
    fn default() -> Self {
        AdaptiveRule::IqrOutliers {
            whisker: DEFAULT_IQR_WHISKER,
        }
    }
}

impl AdaptiveRule {
    /// [`AdaptiveRule::CumulativeMass`] with [`DEFAULT_CUMULATIVE_MASS`].
    pub fn cumulative_mass() -> Self {
        AdaptiveRule::CumulativeMass {
            mass: DEFAULT_CUMULATIVE_MASS,
        }
    }

    /// [`AdaptiveRule::MeanPlusStd`] with [`DEFAULT_STD_ALPHA`].
    pub fn mean_plus_std() -> Self {
        AdaptiveRule::MeanPlusStd {
            alpha: DEFAULT_STD_ALPHA,
        }
    }

    /// [`AdaptiveRule::MatrixRank`] with [`DEFAULT_RANK_SCALE`] and [`DEFAULT_RANK_BIAS`].
    pub fn matrix_rank() -> Self {
        AdaptiveRule::MatrixRank {
            scale: DEFAULT_RANK_SCALE,
            bias: DEFAULT_RANK_BIAS,
        }
    }

    /// Checks the parameter's range.
    ///
    /// # Errors
    /// [`Error::InvalidParam`] for a non-finite value, `mass` outside `[0, 1]` or `scale < 0`.
    pub fn validate(&self) -> Result<()> {
        let finite = |name: &'static str, v: f32| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(Error::param(name, format!("{v}; must be finite")))
            }
        };
        match *self {
            AdaptiveRule::IqrOutliers { whisker } => finite("whisker", whisker),
            AdaptiveRule::CumulativeMass { mass } => {
                if (0.0..=1.0).contains(&mass) {
                    Ok(())
                } else {
                    Err(Error::param("mass", format!("{mass}; must lie in [0, 1]")))
                }
            }
            AdaptiveRule::MeanPlusStd { alpha } => finite("alpha", alpha),
            AdaptiveRule::Threshold { tau } => finite("tau", tau),
            AdaptiveRule::MatrixRank { scale, bias } => {
                finite("bias", bias)?;
                if scale.is_finite() && scale >= 0.0 {
                    Ok(())
                } else {
                    Err(Error::param("scale", format!("{scale}; must be finite and >= 0")))
                }
            }
        }
    }

    fn with_param(self, p: f32) -> Self {
        match self {
            AdaptiveRule::IqrOutliers { .. } => AdaptiveRule::IqrOutliers { whisker: p },
            AdaptiveRule::CumulativeMass { .. } => AdaptiveRule::CumulativeMass { mass: p },
            AdaptiveRule::MeanPlusStd { .. } => AdaptiveRule::MeanPlusStd { alpha: p },
            AdaptiveRule::Threshold { .. } => AdaptiveRule::Threshold { tau: p },
            AdaptiveRule::MatrixRank { bias, .. } => AdaptiveRule::MatrixRank { scale: p, bias },
        }
    }

    /// Unclamped count for one image.
    fn raw_count(&self, st: &Stats) -> Result<usize> {
        let n = st.desc.len();
        Ok(match *self {
            AdaptiveRule::IqrOutliers { whisker } => st.count_above(st.q3 + f64::from(whisker) * (st.q3 - st.q1)),
            AdaptiveRule::CumulativeMass { mass } => {
                if let Some(&v) = st.desc.last().filter(|&&v| v < 0.0) {
                    return Err(Error::param(
                        "scores",
                        format!("cumulative mass needs scores >= 0; found {v}"),
                    ));
                }
                let target = f64::from(mass) * st.prefix[n];
                st.prefix.partition_point(|&c| c < target).min(n)
            }
            AdaptiveRule::MeanPlusStd { alpha } => st.count_above(st.mean + f64::from(alpha) * st.std),
            AdaptiveRule::Threshold { tau } => st.count_above(f64::from(tau)),
            AdaptiveRule::MatrixRank { scale, bias } => {
                let rank = st.rank.ok_or_else(|| {
                    Error::param(
                        "text_attn",
                        "the matrix-rank rule needs the text attention rows (VisualInput::with_text_attn)",
                    )
                })?;
                let k = (rank as f64 * f64::from(scale) + f64::from(bias)).floor();
                if k <= 0.0 { 0 } else { (k as usize).min(n) }
            }
        })
    }
}

impl Budget {
    /// [`Budget::Keep`].
    pub fn keep(k: usize) -> Self {
        Budget::Keep { k }
    }

    /// [`Budget::Ratio`].
    pub fn ratio(ratio: f32) -> Self {
        Budget::Ratio { ratio }
    }

    /// [`Budget::Adaptive`] clamped to `[DEFAULT_MIN_KEEP, usize::MAX]`.
    pub fn adaptive(rule: AdaptiveRule) -> Self {
        Budget::Adaptive {
            rule,
            min_keep: DEFAULT_MIN_KEEP,
            max_keep: usize::MAX,
        }
    }

    /// Sets the clamps of an adaptive budget (no effect on fixed budgets).
    #[must_use]
    pub fn with_clamps(self, min: usize, max: usize) -> Self {
        match self {
            Budget::Adaptive { rule, .. } => Budget::Adaptive {
                rule,
                min_keep: min,
                max_keep: max,
            },
            other => other,
        }
    }

    /// Checks ranges.
    ///
    /// # Errors
    /// [`Error::InvalidParam`] for `k == 0`, a ratio outside `(0, 1]`, `min_keep > max_keep`,
    /// `max_keep == 0` or an invalid rule.
    pub fn validate(&self) -> Result<()> {
        match self {
            Budget::Keep { k: 0 } => Err(Error::param("k", "0; keep at least 1 token")),
            Budget::Keep { .. } => Ok(()),
            Budget::Ratio { ratio } if !(*ratio > 0.0 && *ratio <= 1.0) => {
                Err(Error::param("ratio", format!("{ratio}; must lie in (0, 1]")))
            }
            Budget::Ratio { .. } => Ok(()),
            Budget::Adaptive {
                rule,
                min_keep,
                max_keep,
            } => {
                if min_keep > max_keep || *max_keep == 0 {
                    return Err(Error::param(
                        "max_keep",
                        format!("clamps [{min_keep}, {max_keep}]; need 1 <= max and min <= max"),
                    ));
                }
                rule.validate()
            }
        }
    }

    /// The count for one image of `input.n()` tokens.
    ///
    /// `scores` (one per token, higher = keep) are needed by adaptive budgets only.
    ///
    /// # Errors
    /// Invalid budget, an adaptive budget without scores, scores of the wrong length or with
    /// NaN, and [`AdaptiveRule::MatrixRank`] without text attention.
    pub fn resolve(&self, input: &VisualInput<'_>, scores: Option<&[f32]>) -> Result<usize> {
        self.validate()?;
        let n = input.n();
        match self {
            Budget::Keep { k } => Ok((*k).min(n)),
            Budget::Ratio { ratio } => Ok(ratio_count(*ratio, n)),
            Budget::Adaptive { rule, .. } => {
                let scores = scores.ok_or_else(|| {
                    Error::param(
                        "budget",
                        "an adaptive budget needs a score: supply cls_attn or text_attn, or use a fixed count or ratio",
                    )
                })?;
                if scores.len() != n {
                    return Err(Error::Shape {
                        op: "budget scores",
                        expected: format!("[{n}]"),
                        got: format!("[{}]", scores.len()),
                    });
                }
                let rank = match (rule, input.text_attn) {
                    (AdaptiveRule::MatrixRank { .. }, Some(t)) => Some(numerical_rank(t)?),
                    _ => None,
                };
                self.count(&Stats::new(scores, rank)?)
            }
        }
    }

    fn count(&self, st: &Stats) -> Result<usize> {
        let n = st.desc.len();
        match self {
            Budget::Keep { k } => Ok((*k).min(n)),
            Budget::Ratio { ratio } => Ok(ratio_count(*ratio, n)),
            Budget::Adaptive {
                rule,
                min_keep,
                max_keep,
            } => Ok(rule.raw_count(st)?.max(*min_keep).min(*max_keep).min(n)),
        }
    }
}

fn ratio_count(ratio: f32, n: usize) -> usize {
    ((f64::from(ratio) * n as f64).round() as usize).clamp(1.min(n), n)
}

impl CalibrationSample {
    /// The sample `reducer` would score `input` with.
    ///
    /// # Errors
    /// The reducer's scoring errors, or [`Error::InvalidParam`] when it has no score.
    pub fn from_input(reducer: &dyn Reducer, input: &VisualInput<'_>) -> Result<Self> {
        let scores = reducer.scores(input)?.ok_or_else(|| {
            Error::param(
                "budget",
                format!("{} has no score for this input to calibrate on", reducer.name()),
            )
        })?;
        let text_rank = input.text_attn.map(numerical_rank).transpose()?;
        Ok(CalibrationSample { scores, text_rank })
    }
}

/// Numerical rank of a `[T, N]` matrix without an SVD.
///
/// Forms the Gram matrix of the smaller side in f64 (`M·Mᵀ`, `T×T`, when `T <= N`), takes its
/// eigenvalues by cyclic Jacobi, and counts singular values `σ_i = √λ_i` above
/// `σ_max · max(T, N) · ε_f32` (numpy's `matrix_rank` default for f32 data). The f64 Gram keeps
/// `σ` accurate to about `1e-8·σ_max`, well below that tolerance. Cost `O(T²N + T³)`.
///
/// # Errors
/// [`Error::InvalidParam`] when an entry is not finite.
pub fn numerical_rank(m: ArrayView2<'_, f32>) -> Result<usize> {
    if let Some(v) = m.iter().find(|v| !v.is_finite()) {
        return Err(Error::param(
            "text_attn",
            format!("holds {v}; attention must be finite"),
        ));
    }
    let (t, n) = m.dim();
    if t == 0 || n == 0 {
        return Ok(0);
    }
    let m64 = m.mapv(f64::from);
    let g = if t <= n { m64.dot(&m64.t()) } else { m64.t().dot(&m64) };
    let sig: Vec<f64> = symmetric_eigenvalues(g)
        .into_iter()
        .map(|l| l.max(0.0).sqrt())
        .collect();
    let smax = sig.iter().copied().fold(0.0, f64::max);
    let tol = smax * t.max(n) as f64 * f64::from(f32::EPSILON);
    Ok(sig.iter().filter(|&&s| s > tol && s > 0.0).count())
}

/// Mean count `budget` gives over `samples`.
///
/// # Errors
/// Invalid budget, NaN scores, or missing ranks for [`AdaptiveRule::MatrixRank`].
pub fn mean_kept(budget: &Budget, samples: &[CalibrationSample]) -> Result<f64> {
    budget.validate()?;
    let stats = all_stats(samples)?;
    mean_count(budget, &stats)
}

/// Fits the free parameter of an adaptive budget's rule (whisker, mass, α, τ or rank scale) so
/// the mean clamped count over `samples` is as close as possible to `target_mean_k`.
///
/// The clamps are part of the fit: a clamped image counts with its clamped value. Counts are
/// monotone in the parameter, so bisection (at most 200 steps) converges; the mean is a step
/// function, so the result is within half the largest single-image jump of the target when the
/// target is reachable. The rank rule fits `scale` with `bias` fixed.
///
/// # Errors
/// [`Error::InvalidParam`] for a non-adaptive budget, no samples, a target outside what the
/// clamps and rule can reach (the message gives the range), or sample errors as [`mean_kept`].
pub fn calibrate(budget: &Budget, samples: &[CalibrationSample], target_mean_k: f64) -> Result<Budget> {
    budget.validate()?;
    let Budget::Adaptive {
        rule,
        min_keep,
        max_keep,
    } = budget
    else {
        return Err(Error::param("budget", "calibrate needs an adaptive budget"));
    };
    if samples.is_empty() {
        return Err(Error::param("samples", "calibration needs at least one sample"));
    }
    if !target_mean_k.is_finite() || target_mean_k < 0.0 {
        return Err(Error::param("target_mean_k", format!("{target_mean_k}; must be >= 0")));
    }
    let stats = all_stats(samples)?;
    let (mut lo, mut hi) = bracket(rule, &stats)?; // f(lo) = fewest, f(hi) = most
    let with = |p: f64| Budget::Adaptive {
        rule: rule.with_param(p as f32),
        min_keep: *min_keep,
        max_keep: *max_keep,
    };
    let f = |p: f64| mean_count(&with(p), &stats);
    let (f_lo, f_hi) = (f(lo)?, f(hi)?);
    if target_mean_k < f_lo - 0.5 || target_mean_k > f_hi + 0.5 {
        return Err(Error::param(
            "target_mean_k",
            format!(
                "{target_mean_k} is out of reach: this rule and clamps give a mean between {f_lo:.2} and {f_hi:.2}"
            ),
        ));
    }
    let (mut flo, mut fhi) = (f_lo, f_hi);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid as f32 == lo as f32 || mid as f32 == hi as f32 {
            break;
        }
        let fm = f(mid)?;
        if fm <= target_mean_k {
            (lo, flo) = (mid, fm);
        } else {
            (hi, fhi) = (mid, fm);
        }
        if fm == target_mean_k {
            break;
        }
    }
    let best = if (target_mean_k - flo).abs() <= (fhi - target_mean_k).abs() {
        lo
    } else {
        hi
    };
    Ok(with(best))
}

/// Parameter values giving the fewest and the most tokens (for every sample at once).
fn bracket(rule: &AdaptiveRule, stats: &[Stats]) -> Result<(f64, f64)> {
    let fold = |f: &dyn Fn(&Stats) -> Option<(f64, f64)>| {
        let (mut a, mut b) = (f64::INFINITY, f64::NEG_INFINITY);
        for st in stats {
            if let Some((lo, hi)) = f(st) {
                a = a.min(lo);
                b = b.max(hi);
            }
        }
        if a.is_finite() { (a - 1.0, b + 1.0) } else { (-1.0, 1.0) }
    };
    let span = |st: &Stats, centre: f64, unit: f64| {
        (unit > 0.0).then(|| {
            (
                (st.desc[st.desc.len() - 1] - centre) / unit,
                (st.desc[0] - centre) / unit,
            )
        })
    };
    Ok(match rule {
        AdaptiveRule::IqrOutliers { .. } => {
            let (a, b) = fold(&|st| span(st, st.q3, st.q3 - st.q1));
            (b, a)
        }
        AdaptiveRule::MeanPlusStd { .. } => {
            let (a, b) = fold(&|st| span(st, st.mean, st.std));
            (b, a)
        }
        AdaptiveRule::Threshold { .. } => {
            let (a, b) = fold(&|st| span(st, 0.0, 1.0));
            (b, a)
        }
        AdaptiveRule::CumulativeMass { .. } => (0.0, 1.0),
        AdaptiveRule::MatrixRank { bias, .. } => {
            let n = stats.iter().map(|s| s.desc.len()).max().unwrap_or(1);
            (0.0, n as f64 + f64::from(bias.abs()) + 1.0)
        }
    })
}

fn all_stats(samples: &[CalibrationSample]) -> Result<Vec<Stats>> {
    samples.iter().map(|s| Stats::new(&s.scores, s.text_rank)).collect()
}

fn mean_count(budget: &Budget, stats: &[Stats]) -> Result<f64> {
    let mut sum = 0.0;
    for st in stats {
        sum += budget.count(st)? as f64;
    }
    Ok(sum / stats.len().max(1) as f64)
}

/// Per-image summary every rule counts from.
struct Stats {
    /// Scores sorted descending (f64).
    desc: Vec<f64>,
    /// `prefix[k]` = sum of the top `k` scores.
    prefix: Vec<f64>,
    q1: f64,
    q3: f64,
    mean: f64,
    std: f64,
    rank: Option<usize>,
}

impl Stats {
    fn new(scores: &[f32], rank: Option<usize>) -> Result<Self> {
        if scores.is_empty() {
            return Err(Error::param("scores", "empty score vector"));
        }
        super::check_finite(scores, "scores")?;
        let mut asc: Vec<f64> = scores.iter().map(|&v| f64::from(v)).collect();
        asc.sort_unstable_by(f64::total_cmp);
        let q1 = percentile_sorted(&asc, 0.25);
        let q3 = percentile_sorted(&asc, 0.75);
        let n = asc.len() as f64;
        let mean = asc.iter().sum::<f64>() / n;
        let std = (asc.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
        asc.reverse();
        let mut prefix = Vec::with_capacity(asc.len() + 1);
        prefix.push(0.0);
        let mut acc = 0.0;
        for &v in &asc {
            acc += v;
            prefix.push(acc);
        }
        Ok(Stats {
            desc: asc,
            prefix,
            q1,
            q3,
            mean,
            std,
            rank,
        })
    }

    fn count_above(&self, thr: f64) -> usize {
        self.desc.partition_point(|&v| v > thr)
    }
}

#[cfg(test)]
mod tests;
