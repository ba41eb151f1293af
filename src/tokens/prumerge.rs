//! LLaVA-PruMerge (arXiv 2403.15388): adaptive selection by \[CLS\] attention plus a kNN merge of
//! the pruned tokens into the kept ones, by key similarity, weighted by attention.
//!
//! Selection: the top `k` by head-mean \[CLS\] attention, `k` from the [`Budget`] (PruMerge's own
//! rule is [`AdaptiveRule::IqrOutliers`](super::AdaptiveRule)). Merge (the paper's weighted
//! average, not the later code's un-normalised sum): every kept token `i` claims its `knn` most
//! similar pruned tokens (cosine of keys, else tokens); a pruned token claimed several times goes
//! to the most similar claimant (similarities tied with a row's `knn`-th value are all claimed);
//! each kept row becomes `Σ a_j x_j / Σ a_j` over itself and its claims (`a` = \[CLS\]
//! attention). With `extra_token`, one of the `k` rows is EViT's fused token: the
//! attention-weighted average of the unclaimed pruned tokens, so merge sizes sum to `N`.
//! Similarities run in [`Precision::Auto`] by default: bf16 products where the CPU has AVX-512
//! BF16, f32 products (AVX-512 FMA) elsewhere, the faster of the two on each CPU.

use serde::{Deserialize, Serialize};

use super::linalg::{cosine_between, top_k, top_k_of};
use super::{
    Budget, Metric, Precision, Reducer, Reduction, Signal, VisualInput, check_finite, check_input, gather, merge,
};
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
    /// Arithmetic of the similarities, [`Precision::Auto`] by default.
    pub precision: Precision,
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
            precision: Precision::Auto,
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

    /// Sets `precision`.
    #[must_use]
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
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
            let rows = input.metric_rows(self.params.metric, self.name())?;
            let sim = cosine_between(rows, &kept, &pruned, self.params.precision, what)?;
            // Per pruned column: the best claimant so far (rows in order, so ties keep the
            // lowest row) — flat arrays, so the scan vectorises.
            let mut best = vec![f32::NEG_INFINITY; pruned.len()];
            let mut claim = vec![u32::MAX; pruned.len()];
            let mut scratch = Vec::with_capacity(pruned.len());
            for (row, sims) in sim.rows().into_iter().enumerate() {
                let sims = sims.as_slice().expect("a fresh array is contiguous");
                // the knn-th largest similarity of this row: everything >= it is claimed
                let cut = kth_largest(sims, knn, &mut scratch);
                for ((&v, b), c) in sims.iter().zip(best.iter_mut()).zip(claim.iter_mut()) {
                    let take = v >= cut && v > *b;
                    *b = if take { v } else { *b };
                    *c = if take { row as u32 } else { *c };
                }
            }
            for (&j, &c) in pruned.iter().zip(&claim) {
                if c != u32::MAX {
                    assign[j] = Some(c as usize);
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

/// The `k`-th largest of `v` (`1 <= k <= v.len()`, no NaN), by introselect on a copy
/// holding the floats as order-preserving integers (cheaper comparisons): linear whatever
/// the order of `v` (a running top-`k` buffer, re-scanned or kept as a heap, was a third
/// of PruMerge's time when similarities grow along the row).
fn kth_largest(v: &[f32], k: usize, scratch: &mut Vec<i32>) -> f32 {
    debug_assert!(k >= 1 && k <= v.len());
    // IEEE-754 total order as i32: flip the magnitude bits of negatives (an involution).
    let key = |b: i32| b ^ ((b >> 31) & 0x7fff_ffff);
    scratch.clear();
    scratch.extend(v.iter().map(|x| key(x.to_bits() as i32)));
    let n = scratch.len();
    let kth = *scratch.select_nth_unstable(n - k).1;
    f32::from_bits(key(kth) as u32)
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
    fn kth_largest_matches_sorting() {
        let mut rng = crate::rng::Rng::new(5);
        for n in [1usize, 2, 15, 16, 17, 100, 433] {
            let v: Vec<f32> = (0..n).map(|_| (rng.below(50) as f32) - 25.0).collect();
            let mut sorted = v.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            for k in [1, 32.min(n), n / 2 + 1, n] {
                assert_eq!(kth_largest(&v, k, &mut Vec::new()), sorted[k - 1], "n {n} k {k}");
            }
        }
    }

    #[test]
    fn bf16_and_f32_similarities_agree_on_clear_cases() {
        // 60 tokens near 6 well-separated directions (cosines between groups ≈ 0, within a
        // group ≈ 0.99): bf16 rounding (≈ 2⁻⁸) cannot change which kept token is closest.
        let mut rng = crate::rng::Rng::new(9);
        let (n, d) = (60, 64);
        let x = ndarray::Array2::from_shape_fn((n, d), |(i, j)| {
            let centre = if j == (i % 6) * 10 { 10.0 } else { 0.0 };
            centre + rng.normal() as f32 * 0.1
        });
        // one kept token per group (the six highest attentions), plus the extra token
        let cls =
            ndarray::Array2::from_shape_fn((1, n), |(_, i)| if i < 6 { 1.0 } else { rng.next_f64() as f32 * 0.1 });
        let input = VisualInput::new(x.view()).with_cls_attn(cls.view());
        let f32_out = PruMerge::new(PruMergeParams::default().with_knn(9).with_precision(Precision::F32))
            .reduce(&input, &Budget::keep(7))
            .unwrap();
        let bf16_out = PruMerge::new(PruMergeParams::default().with_knn(9).with_precision(Precision::Bf16))
            .reduce(&input, &Budget::keep(7))
            .unwrap();
        check_reduction(&bf16_out, n);
        // every token joins its group's kept token, except the extra token's own (row 6)
        for (i, a) in f32_out.assignment.iter().enumerate() {
            assert!(*a == Some((i % 6) as u32) || *a == Some(6), "token {i}: {a:?}");
        }
        assert_eq!(f32_out.assignment, bf16_out.assignment);
        assert_eq!(f32_out.origin, bf16_out.origin);
        assert_eq!(f32_out.tokens, bf16_out.tokens);
    }

    #[test]
    fn auto_precision_is_the_cpus_fast_path_exactly() {
        // Auto gives the bits of the precision it resolves to, and that is bf16 exactly when
        // the CPU has the bf16 dot-product instruction.
        let data = Owned::new(8, 8, 48, 3);
        let has_bf16 = crate::distance::bf16_kernel() == crate::distance::Bf16Kernel::Avx512Bf16;
        let want = if has_bf16 { Precision::Bf16 } else { Precision::F32 };
        assert_eq!(Precision::Auto.resolve(), want);
        assert_eq!(Precision::F32.resolve(), Precision::F32);
        assert_eq!(Precision::Bf16.resolve(), Precision::Bf16);
        let run = |p: Precision| {
            PruMerge::new(PruMergeParams::default().with_knn(4).with_precision(p))
                .reduce(&data.input(), &Budget::keep(16))
                .unwrap()
        };
        assert_eq!(run(Precision::Auto), run(want));
        assert_eq!(PruMergeParams::default().precision, Precision::Auto);
    }

    #[test]
    fn f32_and_bf16_similarities_match_the_f64_reference() {
        // Both explicit paths run on every CPU (bf16 through its portable kernel where the
        // instruction is missing); each similarity is checked against f64 cosines.
        let (n, d) = (40, 96);
        let mut rng = crate::rng::Rng::new(21);
        let x: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
        let x = ndarray::Array2::from_shape_vec((n, d), x).unwrap();
        let (a, b): (Vec<usize>, Vec<usize>) = (0..n).partition(|j| j % 3 == 0);
        for (p, tol) in [(Precision::F32, 1e-5), (Precision::Bf16, 2e-2)] {
            let sim = cosine_between(x.view(), &a, &b, p, "tokens").unwrap();
            for (r, &i) in a.iter().enumerate() {
                for (c, &j) in b.iter().enumerate() {
                    let (u, v) = (x.row(i), x.row(j));
                    let dot: f64 = u.iter().zip(v.iter()).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum();
                    let nu: f64 = u.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
                    let nv: f64 = v.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
                    let want = dot / (nu * nv);
                    let got = f64::from(sim[[r, c]]);
                    assert!((got - want).abs() <= tol, "{p:?} ({i}, {j}): {got} vs {want}");
                }
            }
        }
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
