//! ToMe bipartite soft matching (Bolya et al., "Token Merging: Your ViT But Faster", arXiv
//! 2210.09461), clean-room from the paper, with size-weighted averaging.
//!
//! One round: split the current tokens (in position order) into A = even and B = odd
//! positions; for each `a ∈ A` find its most similar `b` (cosine of keys, else tokens); merge the
//! `r` pairs with the highest similarity, `a` into `b`, as `Σ size·x / Σ size`, sizes adding up;
//! unmerged A and all of B stay. A round removes at most `⌈n/2⌉` tokens, so the reducer repeats
//! rounds (each on the size-weighted mean metric of the merged groups) until the budget is met;
//! pass a budget of at least `N/2` for the paper's single per-layer step. Merged rows keep B's
//! index as their origin. Downstream attention should add `log(size)` to the logits
//! (proportional attention) to count merged tokens correctly.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::linalg::{argmax_first, cosine_between, desc_by_score};
use super::{
    Budget, Metric, Precision, Reducer, Reduction, Signal, VisualInput, budget_scores, check_input, fallback_scores,
    merge,
};
use crate::Result;

/// Parameters of [`ToMe`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToMeParams {
    /// Similarity rows, [`Metric::Auto`] (keys when present, as in the paper) by default.
    pub metric: Metric,
}

/// ToMe: repeated bipartite soft-matching merges down to the budget.
#[derive(Debug, Clone, Default)]
pub struct ToMe {
    params: ToMeParams,
}

impl Default for ToMeParams {
    fn default() -> Self {
        ToMeParams { metric: Metric::Auto }
    }
}

impl ToMeParams {
    /// Sets the metric.
    #[must_use]
    pub fn with_metric(mut self, metric: Metric) -> Self {
        self.metric = metric;
        self
    }

    /// Always valid.
    ///
    /// # Errors
    /// Never.
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl ToMe {
    /// A reducer with `params`.
    pub fn new(params: ToMeParams) -> Self {
        ToMe { params }
    }

    /// A reducer with validated `params`.
    ///
    /// # Errors
    /// Never (see [`ToMeParams::validate`]).
    pub fn try_new(params: ToMeParams) -> Result<Self> {
        params.validate()?;
        Ok(Self::new(params))
    }
}

impl Reducer for ToMe {
    fn name(&self) -> &'static str {
        "tome"
    }

    fn needs(&self) -> &'static [Signal] {
        &[]
    }

    fn scores(&self, input: &VisualInput<'_>) -> Result<Option<Vec<f32>>> {
        check_input(self, input)?;
        fallback_scores(input)
    }

    fn reduce(&self, input: &VisualInput<'_>, budget: &Budget) -> Result<Reduction> {
        let scores = budget_scores(self, input, budget)?;
        let n = input.n();
        let k = budget.resolve(input, scores.as_deref())?.max(1);
        let what = if self.params.metric == Metric::Tokens || input.keys.is_none() {
            "tokens"
        } else {
            "keys"
        };
        let rows = input.metric_rows(self.params.metric, self.name())?;
        let d = rows.ncols();
        // The current tokens' metric rows, row-major, compacted in place after each round.
        let mut metric: Vec<f32> = rows.as_standard_layout().iter().copied().collect();
        let mut size: Vec<f32> = (0..n).map(|j| input.size(j)).collect();
        let mut rep: Vec<usize> = (0..n).collect();
        let mut row_of: Vec<usize> = (0..n).collect();
        while rep.len() > k {
            let m = rep.len();
            let a: Vec<usize> = (0..m).step_by(2).collect();
            let b: Vec<usize> = (1..m).step_by(2).collect();
            let r = (m - k).min(a.len());
            // One product of the unit A rows against the unit B rows, then a row arg-max.
            let view = ArrayView2::from_shape((m, d), &metric[..m * d]).expect("m x d rows");
            let sim = cosine_between(view, &a, &b, Precision::F32, what)?;
            let sim = sim.as_slice().expect("a fresh array is contiguous");
            let mut best = vec![0usize; a.len()];
            let mut val = vec![0f32; a.len()];
            for (ai, row) in sim.chunks_exact(b.len().max(1)).enumerate().take(a.len()) {
                let bi = argmax_first(row);
                best[ai] = bi;
                val[ai] = row.get(bi).copied().unwrap_or(f32::NEG_INFINITY);
            }
            let mut order: Vec<usize> = (0..a.len()).collect();
            order.sort_unstable_by(|&x, &y| desc_by_score(&val, x, y));
            // dst_pos[p] = position p merges into (itself when it stays)
            let mut dst_pos: Vec<usize> = (0..m).collect();
            for &ai in &order[..r] {
                let (src, dst) = (a[ai], b[best[ai]]);
                dst_pos[src] = dst;
                // size-weighted metric of the merged group: (x_s·w_s + x_d·w_d) / (w_s + w_d)
                let (ws, wd) = (size[src], size[dst]);
                let wt = ws + wd;
                let (x, y) = if src < dst {
                    let (lo, hi) = metric.split_at_mut(dst * d);
                    (&lo[src * d..(src + 1) * d], &mut hi[..d])
                } else {
                    let (lo, hi) = metric.split_at_mut(src * d);
                    (&hi[..d], &mut lo[dst * d..(dst + 1) * d])
                };
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = (x * ws + *y * wd) / wt;
                }
                size[dst] += ws;
            }
            let survivors: Vec<usize> = (0..m).filter(|&p| dst_pos[p] == p).collect();
            let mut new_index = vec![0usize; m];
            for (i, &p) in survivors.iter().enumerate() {
                new_index[p] = i;
                // survivors ascend, so row p moves down (or stays) over rows already moved
                metric.copy_within(p * d..(p + 1) * d, i * d);
            }
            metric.truncate(survivors.len() * d);
            for r in &mut row_of {
                *r = new_index[dst_pos[*r]];
            }
            size = survivors.iter().map(|&p| size[p]).collect();
            rep = survivors.iter().map(|&p| rep[p]).collect();
        }
        let assign: Vec<Option<usize>> = row_of.into_iter().map(Some).collect();
        let weights: Vec<f32> = (0..n).map(|j| input.size(j)).collect();
        Ok(merge(input, &rep, &assign, &weights, scores))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::testutil::*;
    use ndarray::{Array1, array};
    use proptest::prelude::*;

    #[test]
    fn hand_checked_matching() {
        // A = {0, 2, 4}, B = {1, 3, 5}. Best matches: 0→1 (0.99), 2→5 (0.9), 4→3 (0.0).
        let t = array![
            [1.0f32, 0.0, 0.0],
            [0.99, 0.141, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
            [-1.0, 0.0, 0.0],
            [0.0, 0.9, 0.436],
        ];
        let sizes = Array1::from(vec![1.0f32, 1.0, 1.0, 1.0, 1.0, 3.0]);
        let x = VisualInput::new(t.view()).with_sizes(sizes.view());
        let r = ToMe::default().reduce(&x, &Budget::keep(4)).unwrap();
        check_reduction(&r, 6);
        assert_eq!(r.origin, vec![1, 3, 4, 5]);
        assert_eq!(r.assignment, vec![Some(0), Some(0), Some(3), Some(1), Some(2), Some(3)]);
        assert_eq!(r.sizes, vec![2.0, 1.0, 1.0, 4.0]);
        let want = (&t.row(2) + &(&t.row(5) * 3.0)) / 4.0;
        for (g, w) in r.tokens.row(3).iter().zip(want.iter()) {
            assert!((g - w).abs() < 1e-6);
        }
        // one more merge: the weakest pair (4→3) goes last
        let r5 = ToMe::default().reduce(&x, &Budget::keep(5)).unwrap();
        assert_eq!(r5.origin, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn merging_conserves_size_weighted_sum() {
        let data = Owned::new(5, 5, 6, 9);
        let r = ToMe::default().reduce(&data.input(), &Budget::keep(3)).unwrap();
        check_reduction(&r, 25);
        assert_eq!(r.k, 3);
        let want = data.tokens.t().dot(&data.sizes);
        let got = r.tokens.t().dot(&Array1::from(r.sizes.clone()));
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((g - w).abs() < 1e-3, "{g} vs {w}");
        }
    }

    /// ToMe written out in f64, similarity by similarity: the slow oracle. `None` when one of
    /// its decisions (a row's best match, the cut after the `r` best pairs) is within `eps`
    /// of a tie, where rounding may decide either way.
    fn reference(t: &ndarray::Array2<f32>, k: usize, eps: f64) -> Option<(Vec<usize>, Vec<usize>)> {
        let n = t.nrows();
        let mut metric: Vec<Vec<f64>> = t
            .rows()
            .into_iter()
            .map(|r| r.iter().map(|&v| f64::from(v)).collect())
            .collect();
        let mut size = vec![1f64; n];
        let mut rep: Vec<usize> = (0..n).collect();
        let mut row_of: Vec<usize> = (0..n).collect();
        let cos = |u: &[f64], v: &[f64]| {
            let norm = |w: &[f64]| w.iter().map(|x| x * x).sum::<f64>().sqrt();
            let (nu, nv) = (norm(u), norm(v));
            let dot: f64 = u.iter().zip(v).map(|(x, y)| x * y).sum();
            dot / (if nu > 0.0 { nu } else { 1.0 } * if nv > 0.0 { nv } else { 1.0 })
        };
        while rep.len() > k {
            let m = rep.len();
            let a: Vec<usize> = (0..m).step_by(2).collect();
            let b: Vec<usize> = (1..m).step_by(2).collect();
            let r = (m - k).min(a.len());
            let mut best = Vec::new();
            let mut val = Vec::new();
            for &p in &a {
                let mut s: Vec<(f64, usize)> = b
                    .iter()
                    .enumerate()
                    .map(|(bi, &q)| (cos(&metric[p], &metric[q]), bi))
                    .collect();
                s.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
                if s.len() > 1 && s[0].0 - s[1].0 < eps {
                    return None;
                }
                best.push(s[0].1);
                val.push(s[0].0);
            }
            let mut order: Vec<usize> = (0..a.len()).collect();
            order.sort_by(|&x, &y| val[y].total_cmp(&val[x]).then(x.cmp(&y)));
            if r < a.len() && val[order[r - 1]] - val[order[r]] < eps {
                return None;
            }
            let mut dst_pos: Vec<usize> = (0..m).collect();
            for &ai in &order[..r] {
                let (src, dst) = (a[ai], b[best[ai]]);
                dst_pos[src] = dst;
                let (ws, wd) = (size[src], size[dst]);
                metric[dst] = metric[src]
                    .iter()
                    .zip(&metric[dst])
                    .map(|(x, y)| (x * ws + y * wd) / (ws + wd))
                    .collect();
                size[dst] += ws;
            }
            let survivors: Vec<usize> = (0..m).filter(|&p| dst_pos[p] == p).collect();
            let mut new_index = vec![0usize; m];
            for (i, &p) in survivors.iter().enumerate() {
                new_index[p] = i;
            }
            for r in &mut row_of {
                *r = new_index[dst_pos[*r]];
            }
            metric = survivors.iter().map(|&p| metric[p].clone()).collect();
            size = survivors.iter().map(|&p| size[p]).collect();
            rep = survivors.iter().map(|&p| rep[p]).collect();
        }
        Some((rep, row_of))
    }

    #[test]
    fn matches_the_slow_f64_reference_away_from_ties() {
        let (mut checked, mut total) = (0, 0);
        for seed in 0..30u64 {
            let mut rng = crate::tokens::rng::SplitMix64::new(seed);
            let n = 3 + (seed as usize * 11) % 90;
            let d = [3, 8, 17, 64, 130][seed as usize % 5];
            let t = ndarray::Array2::from_shape_fn((n, d), |_| rng.next_f32() * 2.0 - 1.0);
            let x = VisualInput::new(t.view());
            for k in [1, n / 4, n / 2, n - 1].into_iter().filter(|&k| k >= 1 && k < n) {
                total += 1;
                let Some((rep, row_of)) = reference(&t, k, 1e-4) else {
                    continue;
                };
                checked += 1;
                let got = ToMe::default().reduce(&x, &Budget::keep(k)).unwrap();
                assert_eq!(got.origin, rep, "seed {seed} n {n} d {d} k {k}");
                let want: Vec<Option<u32>> = row_of.iter().map(|&r| Some(r as u32)).collect();
                assert_eq!(got.assignment, want, "seed {seed} n {n} d {d} k {k}");
            }
        }
        assert!(
            checked * 10 >= total * 7,
            "only {checked} of {total} cases were away from ties"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn tome_invariants(seed in 0u64..10_000, rows in 1usize..7, cols in 1usize..7, k in 1usize..40) {
            let data = Owned::new(rows, cols, 3, seed);
            let n = rows * cols;
            let out = ToMe::default().reduce(&data.input(), &Budget::keep(k)).unwrap();
            check_reduction(&out, n);
            prop_assert_eq!(out.k, k.min(n));
            let total: f32 = data.sizes.sum();
            prop_assert!((out.sizes.iter().sum::<f32>() - total).abs() < 1e-3);
        }
    }
}
