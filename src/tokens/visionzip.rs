//! VisionZip (arXiv 2412.04467): dominant tokens by \[CLS\] attention plus contextual tokens that
//! merge the rest.
//!
//! Of the `k` output rows, `c = round(contextual_share·k)` (at least 1 when `k >= 2` and the
//! share is positive) are contextual and `k − c` dominant: the top `k − c` by head-mean \[CLS\]
//! attention. The remaining tokens `R` (in index order) supply `c` targets at a uniform index
//! stride `⌊|R|/c⌋`; every other token of `R` joins the target of highest cosine similarity
//! (keys, else tokens), and each contextual row is the size-weighted average of its target and
//! members (the paper's averaging), so merge sizes sum to `N`.

use serde::{Deserialize, Serialize};

use super::linalg::{argmax_first, cosine_between, top_k};
use super::{
    Budget, Metric, Precision, Reducer, Reduction, Signal, VisualInput, check_finite, check_input, gather, merge,
};
use crate::{Error, Result};

/// Default share of contextual rows (VisionZip's 10 of 64).
pub const DEFAULT_CONTEXTUAL_SHARE: f32 = 10.0 / 64.0;

/// Parameters of [`VisionZip`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VisionZipParams {
    /// Share of the `k` rows that are contextual, in `[0, 1]`; [`DEFAULT_CONTEXTUAL_SHARE`] by
    /// default.
    pub contextual_share: f32,
    /// Similarity rows for grouping, [`Metric::Auto`] by default.
    pub metric: Metric,
}

/// VisionZip: dominant + contextual tokens.
#[derive(Debug, Clone, Default)]
pub struct VisionZip {
    params: VisionZipParams,
}

impl Default for VisionZipParams {
    fn default() -> Self {
        VisionZipParams {
            contextual_share: DEFAULT_CONTEXTUAL_SHARE,
            metric: Metric::Auto,
        }
    }
}

impl VisionZipParams {
    /// Sets the contextual share.
    #[must_use]
    pub fn with_contextual_share(mut self, share: f32) -> Self {
        self.contextual_share = share;
        self
    }

    /// Checks ranges.
    ///
    /// # Errors
    /// [`Error::InvalidParam`] when the share is outside `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        if (0.0..=1.0).contains(&self.contextual_share) {
            Ok(())
        } else {
            Err(Error::param(
                "contextual_share",
                format!("{}; must lie in [0, 1]", self.contextual_share),
            ))
        }
    }
}

impl VisionZip {
    /// A reducer with `params` (validated on every call).
    pub fn new(params: VisionZipParams) -> Self {
        VisionZip { params }
    }

    /// A reducer with validated `params`.
    ///
    /// # Errors
    /// See [`VisionZipParams::validate`].
    pub fn try_new(params: VisionZipParams) -> Result<Self> {
        params.validate()?;
        Ok(Self::new(params))
    }
}

impl Reducer for VisionZip {
    fn name(&self) -> &'static str {
        "visionzip"
    }

    fn needs(&self) -> &'static [Signal] {
        &[Signal::ClsAttn]
    }

    fn scores(&self, input: &VisualInput<'_>) -> Result<Option<Vec<f32>>> {
        check_input(self, input)?;
        let s = super::head_mean(input.require(Signal::ClsAttn, self.name())?);
        check_finite(&s, "cls_attn")?;
        Ok(Some(s))
    }

    fn reduce(&self, input: &VisualInput<'_>, budget: &Budget) -> Result<Reduction> {
        self.params.validate()?;
        let s = self.scores(input)?.unwrap_or_default();
        let n = input.n();
        let k = budget.resolve(input, Some(&s))?;
        let share = self.params.contextual_share;
        let mut c = (share * k as f32).round() as usize;
        if share > 0.0 && k >= 2 {
            c = c.max(1);
        }
        let c = c.min(k);
        if k >= n || c == 0 {
            return Ok(gather(input, &top_k(&s, k), Some(s)));
        }
        let dominant = top_k(&s, k - c);
        let mut taken = vec![false; n];
        for &j in &dominant {
            taken[j] = true;
        }
        let rest: Vec<usize> = (0..n).filter(|&j| !taken[j]).collect();
        let step = rest.len() / c;
        let targets: Vec<usize> = (0..c).map(|t| rest[t * step]).collect();
        for &j in &targets {
            taken[j] = true;
        }
        let others: Vec<usize> = rest.iter().copied().filter(|&j| !taken[j]).collect();
        let mut assign: Vec<Option<usize>> = vec![None; n];
        let rep: Vec<usize> = dominant.iter().chain(&targets).copied().collect();
        for (row, &j) in rep.iter().enumerate() {
            assign[j] = Some(row);
        }
        if !others.is_empty() {
            let what = if self.params.metric == Metric::Tokens || input.keys.is_none() {
                "tokens"
            } else {
                "keys"
            };
            let rows = input.metric_rows(self.params.metric, self.name())?;
            let sim = cosine_between(rows, &others, &targets, Precision::F32, what)?;
            for (o, row) in others.iter().zip(sim.rows()) {
                let best = argmax_first(row.as_slice().expect("a fresh array is contiguous"));
                assign[*o] = Some(dominant.len() + best);
            }
        }
        let sizes: Vec<f32> = (0..n).map(|j| input.size(j)).collect();
        Ok(merge(input, &rep, &assign, &sizes, Some(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::testutil::*;
    use ndarray::array;
    use proptest::prelude::*;

    #[test]
    fn dominant_then_contextual_groups() {
        let t = array![
            [5.0f32, 0.0],
            [1.0, 0.0],
            [0.0, 1.0],
            [2.0, 0.1],
            [0.1, 3.0],
            [9.0, 9.0]
        ];
        let a = array![[0.1f32, 0.1, 0.1, 0.1, 0.1, 0.5]];
        let x = VisualInput::new(t.view()).with_cls_attn(a.view());
        let vz = VisionZip::new(VisionZipParams::default().with_contextual_share(0.67));
        let r = vz.reduce(&x, &Budget::keep(3)).unwrap();
        check_reduction(&r, 6);
        // dominant {5}; rest [0..5), step 2 → targets 0 and 2; 1,3 → 0; 4 → 2
        assert_eq!(r.origin, vec![0, 2, 5]);
        assert_eq!(r.assignment, vec![Some(0), Some(0), Some(1), Some(0), Some(1), Some(2)]);
        assert_eq!(r.sizes, vec![3.0, 2.0, 1.0]);
        assert!((r.tokens[[0, 0]] - 8.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn contextual_groups_match_f64_cosines_away_from_ties() {
        // Every merged token joins the target of highest f64 cosine, unless its best two
        // targets are within 1e-4 (then rounding may pick either).
        let (mut checked, mut total) = (0, 0);
        for seed in 0..12u64 {
            let data = Owned::new(8, 9, [5, 16, 70][seed as usize % 3], seed);
            let input = VisualInput::new(data.tokens.view()).with_cls_attn(data.cls.view());
            let r = VisionZip::new(VisionZipParams::default().with_contextual_share(0.5))
                .reduce(&input, &Budget::keep(12))
                .unwrap();
            check_reduction(&r, 72);
            let row_of: Vec<usize> = r.origin.clone();
            let f64_row = |j: usize| data.tokens.row(j).iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
            let cos = |i: usize, j: usize| {
                let (u, v) = (f64_row(i), f64_row(j));
                let dot: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
                dot / (u.iter().map(|a| a * a).sum::<f64>().sqrt() * v.iter().map(|a| a * a).sum::<f64>().sqrt())
            };
            // targets are the contextual rows' origins: the rows whose members are not all
            // themselves (dominant rows have size 1 here, as do lonely targets)
            let scores = r.scores.clone().unwrap();
            let dominant = crate::tokens::linalg::top_k(&scores, 6);
            let targets: Vec<usize> = row_of.iter().copied().filter(|j| !dominant.contains(j)).collect();
            for (j, a) in r.assignment.iter().enumerate() {
                let a = a.unwrap() as usize;
                if dominant.contains(&j) || targets.contains(&j) {
                    continue;
                }
                total += 1;
                let mut s: Vec<(f64, usize)> = targets.iter().map(|&t| (cos(j, t), t)).collect();
                s.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
                if s.len() > 1 && s[0].0 - s[1].0 < 1e-4 {
                    continue;
                }
                checked += 1;
                assert_eq!(row_of[a], s[0].1, "seed {seed} token {j}");
            }
        }
        assert!(checked * 10 >= total * 9, "{checked} of {total} away from ties");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn visionzip_invariants(seed in 0u64..10_000, rows in 1usize..7, cols in 1usize..7,
                                k in 1usize..40, share in 0.0f32..1.0) {
            let data = Owned::new(rows, cols, 3, seed);
            let n = rows * cols;
            let vz = VisionZip::new(VisionZipParams::default().with_contextual_share(share));
            let out = vz.reduce(&data.input(), &Budget::keep(k)).unwrap();
            check_reduction(&out, n);
            prop_assert_eq!(out.k, k.min(n));
            if k < n && share > 0.0 && k >= 2 {
                let total: f32 = data.sizes.sum();
                prop_assert!((out.sizes.iter().sum::<f32>() - total).abs() < 1e-3);
            }
        }
    }
}
