//! DivPrune (arXiv 2503.02175), clean-room from the paper: keep a maximally diverse subset by
//! the greedy max–min (farthest-point) rule on cosine distance.
//!
//! `dist(i, j) = 1 − cos(x_i, x_j)` over the tokens (or keys). The first pick is the most
//! isolated token (largest distance to its nearest neighbour; a mutual nearest pair ties, and
//! the tie goes to the token less similar to all others on average); each next pick maximises its
//! distance to the nearest already-picked token (the 2-approximation of max–min diversity).
//! Ties go to the lower index. Cost: one Gram GEMM (`O(N²D)`, block-symmetric) plus `O(kN)`.
//! The budget's count is independent of the selection; adaptive budgets read the \[CLS\] (else
//! text) attention.

use serde::{Deserialize, Serialize};

use super::linalg::{gram, max_lanes, sum_lanes, unit_rows};
use super::{
    Budget, Metric, Reducer, Reduction, Signal, VisualInput, budget_scores, check_input, fallback_scores, gather,
};
use crate::Result;

/// Parameters of [`DivPrune`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DivPruneParams {
    /// Rows the distances are taken over; [`Metric::Tokens`] (the paper) by default.
    pub metric: Metric,
}

/// DivPrune: max–min diversity selection.
#[derive(Debug, Clone, Default)]
pub struct DivPrune {
    params: DivPruneParams,
}

impl Default for DivPruneParams {
    fn default() -> Self {
        DivPruneParams { metric: Metric::Tokens }
    }
}

impl DivPruneParams {
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

impl DivPrune {
    /// A reducer with `params`.
    pub fn new(params: DivPruneParams) -> Self {
        DivPrune { params }
    }

    /// A reducer with validated `params`.
    ///
    /// # Errors
    /// Never (see [`DivPruneParams::validate`]).
    pub fn try_new(params: DivPruneParams) -> Result<Self> {
        params.validate()?;
        Ok(Self::new(params))
    }
}

impl Reducer for DivPrune {
    fn name(&self) -> &'static str {
        "divprune"
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
        let k = budget.resolve(input, scores.as_deref())?;
        if k >= n {
            return Ok(gather(input, &(0..n).collect::<Vec<_>>(), scores));
        }
        if k == 0 {
            return Ok(gather(input, &[], scores));
        }
        let what = if self.params.metric == Metric::Tokens || input.keys.is_none() {
            "tokens"
        } else {
            "keys"
        };
        let u = unit_rows(input.metric_rows(self.params.metric, self.name())?, what)?;
        let g = gram(u.view());
        let first = most_isolated(&g);
        let mut picked = vec![false; n];
        picked[first] = true;
        // near[j]: similarity of j to its most similar picked token; +inf marks picked tokens.
        let gs = g.as_slice().expect("gram is contiguous");
        let mut near: Vec<f32> = gs[first * n..(first + 1) * n].to_vec();
        near[first] = f32::INFINITY;
        for _ in 1..k {
            let mut next = usize::MAX;
            let mut next_sim = f32::INFINITY;
            for (j, &v) in near.iter().enumerate() {
                if v < next_sim {
                    next_sim = v;
                    next = j;
                }
            }
            picked[next] = true;
            for (nv, &gv) in near.iter_mut().zip(&gs[next * n..(next + 1) * n]) {
                *nv = nv.max(gv);
            }
            near[next] = f32::INFINITY;
        }
        let kept: Vec<usize> = (0..n).filter(|&j| picked[j]).collect();
        Ok(gather(input, &kept, scores))
    }
}

/// Near-equal nearest-neighbour similarities count as tied (a mutual nearest pair always ties).
const TIE_EPS: f32 = 1e-6;

/// The token whose nearest neighbour is least similar; ties (within [`TIE_EPS`]) go to the
/// lower mean similarity to all tokens, then the lower index.
fn most_isolated(g: &ndarray::Array2<f32>) -> usize {
    let n = g.nrows();
    let gs = g.as_slice().expect("gram is contiguous");
    let mut nn = vec![f32::NEG_INFINITY; n];
    let mut mean = vec![0f32; n];
    for (i, row) in gs.chunks_exact(n).enumerate() {
        nn[i] = max_lanes(&row[..i]).max(max_lanes(&row[i + 1..]));
        mean[i] = sum_lanes(row) / n as f32;
    }
    let lo = nn.iter().copied().fold(f32::INFINITY, f32::min);
    (0..n)
        .filter(|&i| nn[i] <= lo + TIE_EPS)
        .min_by(|&a, &b| mean[a].total_cmp(&mean[b]).then(a.cmp(&b)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::testutil::*;
    use ndarray::{Array2, array};
    use proptest::prelude::*;

    #[test]
    fn hand_checked_picks() {
        // a=[1,0], b≈a (5.7°), c=[0,1], d=[-1,0]. Nearest-neighbour similarities: a,b 0.995,
        // c 0.0998, d 0.0 → first d; then a (cos −1 to d), then c, then b.
        let t = array![[1.0f32, 0.0], [0.995, 0.0998], [0.0, 1.0], [-1.0, 0.0]];
        let x = VisualInput::new(t.view());
        let dp = DivPrune::default();
        assert_eq!(dp.reduce(&x, &Budget::keep(1)).unwrap().origin, vec![3]);
        assert_eq!(dp.reduce(&x, &Budget::keep(2)).unwrap().origin, vec![0, 3]);
        assert_eq!(dp.reduce(&x, &Budget::keep(3)).unwrap().origin, vec![0, 2, 3]);
    }

    #[test]
    fn one_pick_per_cluster_before_any_second() {
        // 5 tight clusters of 8 tokens in 16-d; 5 picks hit 5 different clusters
        let centres = Array2::from_shape_fn((5, 16), |(c, j)| if j % 5 == c { 1.0f32 } else { 0.0 });
        let mut rng = crate::tokens::rng::SplitMix64::new(4);
        let t = Array2::from_shape_fn((40, 16), |(i, j)| centres[[i % 5, j]] + 0.01 * rng.next_f32());
        let x = VisualInput::new(t.view());
        let r = DivPrune::default().reduce(&x, &Budget::keep(5)).unwrap();
        let mut clusters: Vec<usize> = r.origin.iter().map(|i| i % 5).collect();
        clusters.sort_unstable();
        assert_eq!(clusters, vec![0, 1, 2, 3, 4]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn divprune_invariants(seed in 0u64..10_000, rows in 1usize..7, cols in 1usize..7,
                               k in 1usize..40, pseed in 0u64..50) {
            let data = Owned::new(rows, cols, 5, seed);
            let n = rows * cols;
            let dp = DivPrune::default();
            let out = dp.reduce(&data.input(), &Budget::keep(k)).unwrap();
            check_reduction(&out, n);
            prop_assert_eq!(out.k, k.min(n));
            let perm = permutation(n, pseed);
            let q = data.permuted(&perm);
            check_permuted(&out, &dp.reduce(&q.input(), &Budget::keep(k)).unwrap(), &perm);
        }
    }
}
