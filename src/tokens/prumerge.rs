//! LLaVA-PruMerge (arXiv 2403.15388): adaptive selection by \[CLS\] attention plus a kNN merge of
//! the pruned tokens into the kept ones, by key similarity, weighted by attention.
//!
//! Selection: the top `k` by head-mean \[CLS\] attention, `k` from the [`Budget`] (PruMerge's own
//! rule is [`AdaptiveRule::IqrOutliers`](super::AdaptiveRule)). Merge (the paper's weighted
//! average, not the later code's un-normalised sum): every kept token `i` claims its `knn` most
//! similar pruned tokens (cosine of keys, else tokens); a pruned token claimed several times goes
//! to the most similar claimant (similarities tied with a row's `knn`-th value are all claimed); each kept row becomes `Σ a_j x_j / Σ a_j` over itself and its
//! claims (`a` = \[CLS\] attention). With `extra_token`, one of the `k` rows is EViT's fused token:
//! the attention-weighted average of the unclaimed pruned tokens, so merge sizes sum to `N`.

use serde::{Deserialize, Serialize};

use super::linalg::{top_k, top_k_of, unit_rows};
use super::{Budget, Metric, Reducer, Reduction, Signal, VisualInput, check_finite, check_input, gather, merge};
use crate::Result;

/// Default neighbours each kept token claims (PruMerge's 32).
pub const DEFAULT_PRUMERGE_KNN: usize = 32;

/// Parameters of [`PruMerge`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruMergeParams {
    /// Pruned tokens each kept token claims, [`DEFAULT_PRUMERGE_KNN`] by default (0 = no merge).
    pub knn: usize,
    /// Spend one of the `k` rows on the fused unclaimed tokens (default true).
    pub extra_token: bool,
    /// Similarity rows for the kNN, [`Metric::Auto`] (keys when present) by default.
    pub metric: Metric,
}

/// PruMerge: \[CLS\]-attention selection + attention-weighted kNN merge.
#[derive(Debug, Clone, Default)]
pub struct PruMerge {
    params: PruMergeParams,
}

impl Default for PruMergeParams {
    fn default() -> Self {
        PruMergeParams {
            knn: DEFAULT_PRUMERGE_KNN,
            extra_token: true,
            metric: Metric::Auto,
        }
    }
}

impl PruMergeParams {
    /// Sets `knn`.
    #[must_use]
    pub fn with_knn(mut self, knn: usize) -> Self {
        self.knn = knn;
        self
    }

    /// Sets `extra_token`.
    #[must_use]
    pub fn with_extra_token(mut self, extra: bool) -> Self {
        self.extra_token = extra;
        self
    }

    /// Always valid (every `knn` works; it is capped at the pruned count).
    ///
    /// # Errors
    /// Never.
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl PruMerge {
    /// A reducer with `params`.
    pub fn new(params: PruMergeParams) -> Self {
        PruMerge { params }
    }

    /// A reducer with validated `params`.
    ///
    /// # Errors
    /// See [`PruMergeParams::validate`].
    pub fn try_new(params: PruMergeParams) -> Result<Self> {
        params.validate()?;
        Ok(Self::new(params))
    }
}

impl Reducer for PruMerge {
    fn name(&self) -> &'static str {
        "prumerge"
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
        let s = self.scores(input)?.unwrap_or_default();
        let n = input.n();
        let k = budget.resolve(input, Some(&s))?;
        if k >= n || k == 0 {
            return Ok(gather(input, &top_k(&s, k), Some(s)));
        }
        let extra = self.params.extra_token && k >= 2;
        let kept = top_k(&s, k - usize::from(extra));
        let mut is_kept = vec![false; n];
        for &j in &kept {
            is_kept[j] = true;
        }
        let pruned: Vec<usize> = (0..n).filter(|&j| !is_kept[j]).collect();
        let mut assign: Vec<Option<usize>> = vec![None; n];
        for (row, &j) in kept.iter().enumerate() {
            assign[j] = Some(row);
        }
        let knn = self.params.knn.min(pruned.len());
        if knn > 0 {
            let what = if self.params.metric == Metric::Tokens || input.keys.is_none() {
                "tokens"
            } else {
                "keys"
            };
            let u = unit_rows(input.metric_rows(self.params.metric, self.name())?, what)?;
            let ax = ndarray::Axis(0);
            let sim = u.select(ax, &kept).dot(&u.select(ax, &pruned).t());
            let mut best = vec![f32::NEG_INFINITY; pruned.len()];
            let mut scratch = Vec::with_capacity(pruned.len());
            for (row, sims) in sim.rows().into_iter().enumerate() {
                // the knn-th largest similarity of this row: everything >= it is claimed
                scratch.clear();
                scratch.extend(sims.iter().copied());
                let (_, &mut cut, _) = scratch.select_nth_unstable_by(knn - 1, |a, b| b.total_cmp(a));
                for (p, &v) in sims.iter().enumerate() {
                    if v >= cut && v > best[p] {
                        best[p] = v;
                        assign[pruned[p]] = Some(row);
                    }
                }
            }
        }
        let mut rep = kept.clone();
        if extra {
            let mut left: Vec<usize> = pruned.iter().copied().filter(|&j| assign[j].is_none()).collect();
            if left.is_empty() {
                // every pruned token was claimed: the best-scored one stands alone
                left = top_k_of(pruned.clone(), &s, 1);
            }
            let row = rep.len();
            rep.push(top_k_of(left.clone(), &s, 1)[0]);
            for j in left {
                assign[j] = Some(row);
            }
        }
        Ok(merge(input, &rep, &assign, &s, Some(s.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::AdaptiveRule;
    use crate::tokens::testutil::*;
    use ndarray::array;
    use proptest::prelude::*;

    #[test]
    fn merges_pruned_tokens_into_most_similar_kept() {
        // tokens 0 and 3 are kept (high attention); 1 is like 0, 2 like 3, 4 like nothing kept
        let t = array![[1.0f32, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 1.0], [-1.0, -1.0]];
        let a = array![[0.4f32, 0.1, 0.1, 0.3, 0.1]];
        let x = VisualInput::new(t.view()).with_cls_attn(a.view());
        let p = PruMerge::new(PruMergeParams::default().with_knn(1));
        let r = p.reduce(&x, &Budget::keep(3)).unwrap();
        check_reduction(&r, 5);
        assert_eq!(r.origin, vec![0, 3, 4]); // token 4, unclaimed, becomes the extra token
        assert_eq!(r.assignment, vec![Some(0), Some(0), Some(1), Some(1), Some(2)]);
        // row 0 = (0.4·[1,0] + 0.1·[2,0]) / 0.5
        assert!((r.tokens[[0, 0]] - 1.2).abs() < 1e-6);
        assert_eq!(r.sizes.iter().sum::<f32>(), 5.0);
        assert_eq!(r.tokens.row(2).to_vec(), vec![-1.0, -1.0]);
    }

    #[test]
    fn iqr_budget_with_clamps() {
        let data = Owned::new(6, 6, 4, 5);
        let b = Budget::adaptive(AdaptiveRule::default()).with_clamps(4, 10);
        let r = PruMerge::default().reduce(&data.input(), &b).unwrap();
        check_reduction(&r, 36);
        assert!((4..=10).contains(&r.k));
        let total: f32 = data.sizes.sum();
        assert!((r.sizes.iter().sum::<f32>() - total).abs() < 1e-4);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn prumerge_invariants(seed in 0u64..10_000, rows in 1usize..7, cols in 1usize..7,
                               k in 1usize..40, knn in 0usize..6, pseed in 0u64..50) {
            let data = Owned::new(rows, cols, 3, seed);
            let n = rows * cols;
            let p = PruMerge::new(PruMergeParams::default().with_knn(knn));
            let out = p.reduce(&data.input(), &Budget::keep(k)).unwrap();
            check_reduction(&out, n);
            prop_assert_eq!(out.k, k.min(n));
            if k >= 2 {
                // the extra token collects every unclaimed pruned token
                let total: f32 = data.sizes.sum();
                prop_assert!((out.sizes.iter().sum::<f32>() - total).abs() < 1e-3);
            }
            let perm = permutation(n, pseed);
            let q = data.permuted(&perm);
            check_permuted(&out, &p.reduce(&q.input(), &Budget::keep(k)).unwrap(), &perm);
        }
    }
}
