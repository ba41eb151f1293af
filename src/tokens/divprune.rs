//! DivPrune (arXiv 2503.02175), clean-room from the paper: keep a maximally diverse subset by
//! the greedy max–min (farthest-point) rule on cosine distance.
//!
//! `dist(i, j) = 1 − cos(x_i, x_j)` over the tokens (or keys). The first pick is the most
//! isolated token (largest distance to its nearest neighbour; a mutual nearest pair ties, and
//! the tie goes to the token less similar to the others on average, then to the smaller row
//! in value order, so that the pick never depends on where a token sits); each next pick maximises its
//! distance to the nearest already-picked token (the 2-approximation of max–min diversity).
//! Ties go to the lower index. Cost: one cosine Gram matrix (`N²D/2` multiply-adds, SIMD
//! microkernels in `linalg`) plus `O(kN)`.
//! The budget's count is independent of the selection; adaptive budgets read the \[CLS\] (else
//! text) attention.

use serde::{Deserialize, Serialize};

use super::linalg::{cosine_gram, max_lanes, sum_lanes};
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
        let rows = input.metric_rows(self.params.metric, self.name())?;
        let g = cosine_gram(rows, what)?;
        Ok(gather(input, &max_min_picks(&g, rows, k), scores))
    }
}

/// The greedy max–min picks on the cosine Gram matrix `g` of `rows`, `1 <= k < N`, ascending.
fn max_min_picks(g: &ndarray::Array2<f32>, rows: ndarray::ArrayView2<f32>, k: usize) -> Vec<usize> {
    let n = g.nrows();
    let first = most_isolated(g, rows);
    let mut picked = vec![false; n];
    // near[j]: similarity of j to its most similar picked token; +inf marks picked tokens.
    let gs = g.as_slice().expect("gram is contiguous");
    let mut near: Vec<f32> = vec![f32::NEG_INFINITY; n];
    let mut next = first;
    for step in 0..k {
        picked[next] = true;
        if step + 1 == k {
            break;
        }
        near[next] = f32::INFINITY;
        next = raise_and_argmin(&mut near, &gs[next * n..(next + 1) * n]);
    }
    (0..n).filter(|&j| picked[j]).collect()
}

/// Lanes of [`raise_and_argmin`] (16 f32 = one AVX-512 register).
const LANES: usize = 16;

/// `near[j] = max(near[j], row[j])`, then the first index of the smallest `near` (the next
/// farthest token), in one pass with [`LANES`] independent minima so it vectorises.
fn raise_and_argmin(near: &mut [f32], row: &[f32]) -> usize {
    let mut best = [f32::INFINITY; LANES];
    let mut at = [u32::MAX; LANES];
    let mut j0 = 0u32;
    let (nc, nr) = near.as_chunks_mut::<LANES>();
    let (rc, rr) = row.as_chunks::<LANES>();
    for (nv, rv) in nc.iter_mut().zip(rc) {
        for l in 0..LANES {
            let v = nv[l].max(rv[l]);
            nv[l] = v;
            // strict: a lane keeps its first minimum
            if v < best[l] {
                best[l] = v;
                at[l] = j0 + l as u32;
            }
        }
        j0 += LANES as u32;
    }
    let mut pick = (f32::INFINITY, u32::MAX);
    for (l, (nv, &rv)) in nr.iter_mut().zip(rr).enumerate() {
        *nv = nv.max(rv);
        if *nv < pick.0 {
            pick = (*nv, j0 + l as u32);
        }
    }
    for (&v, &j) in best.iter().zip(&at) {
        if v < pick.0 || (v == pick.0 && j < pick.1) {
            pick = (v, j);
        }
    }
    pick.1 as usize
}

/// Near-equal nearest-neighbour similarities count as tied (a mutual nearest pair always ties).
const TIE_EPS: f32 = 1e-6;

/// The token whose nearest neighbour is least similar; ties (within [`TIE_EPS`]) go to the
/// lower mean similarity to the other tokens, then to the row of `rows` that is smaller in
/// value order ([`value_order`]: two tokens alone always tie on both, and the lower index
/// would make the pick depend on the token order), then the lower index (equal rows). The
/// diagonal (1 up to rounding) stays out of the mean so that rounding cannot decide an
/// exact tie.
fn most_isolated(g: &ndarray::Array2<f32>, rows: ndarray::ArrayView2<f32>) -> usize {
    let n = g.nrows();
    let gs = g.as_slice().expect("gram is contiguous");
    let mut nn = vec![f32::NEG_INFINITY; n];
    let mut mean = vec![0f32; n];
    for (i, row) in gs.chunks_exact(n).enumerate() {
        let (before, after) = (&row[..i], &row[i + 1..]);
        nn[i] = max_lanes(before).max(max_lanes(after));
        mean[i] = (sum_lanes(before) + sum_lanes(after)) / (n - 1).max(1) as f32;
    }
    let lo = nn.iter().copied().fold(f32::INFINITY, f32::min);
    (0..n)
        .filter(|&i| nn[i] <= lo + TIE_EPS)
        .min_by(|&a, &b| {
            mean[a]
                .total_cmp(&mean[b])
                .then_with(|| value_order(rows.row(a), rows.row(b)))
                .then(a.cmp(&b))
        })
        .unwrap_or(0)
}

/// Two rows compared value by value (`total_cmp`), the first difference deciding.
fn value_order(a: ndarray::ArrayView1<f32>, b: ndarray::ArrayView1<f32>) -> std::cmp::Ordering {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| x.total_cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
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

    #[test]
    fn raise_and_argmin_takes_the_first_minimum() {
        // lengths around the lane count; minima tied across lanes and in the remainder
        for n in [1usize, 5, 16, 17, 37, 64] {
            for tie in [0usize, 3, 16, 20, 35] {
                let mut near: Vec<f32> = (0..n).map(|j| ((j * 7) % 5) as f32).collect();
                let row: Vec<f32> = (0..n).map(|j| if j % 4 == 0 { 9.0 } else { 0.5 }).collect();
                for j in (tie..n).step_by(13) {
                    near[j] = -1.0;
                }
                let want: Vec<f32> = near.iter().zip(&row).map(|(a, b)| a.max(*b)).collect();
                let lo = want.iter().copied().fold(f32::INFINITY, f32::min);
                let first = want.iter().position(|&v| v == lo).unwrap();
                assert_eq!(raise_and_argmin(&mut near, &row), first, "n {n} tie {tie}");
                assert_eq!(near, want);
            }
        }
    }

    /// The paper's rule written out over f64 cosine distances, pair by pair: the slow oracle.
    fn reference_picks(t: &Array2<f32>, k: usize) -> Vec<usize> {
        let n = t.nrows();
        let u: Vec<Vec<f64>> = t
            .rows()
            .into_iter()
            .map(|r| {
                let v: Vec<f64> = r.iter().map(|&x| f64::from(x)).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.iter().map(|x| if norm > 0.0 { x / norm } else { *x }).collect()
            })
            .collect();
        let dist = |i: usize, j: usize| 1.0 - u[i].iter().zip(&u[j]).map(|(a, b)| a * b).sum::<f64>();
        // First: the largest nearest-neighbour distance; near-ties go to the larger mean
        // distance to the others, then the row smaller in value order, then the lower index.
        let nn: Vec<f64> = (0..n)
            .map(|i| {
                (0..n)
                    .filter(|&j| j != i)
                    .map(|j| dist(i, j))
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        let hi = nn.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = |i: usize| (0..n).filter(|&j| j != i).map(|j| dist(i, j)).sum::<f64>() / (n - 1) as f64;
        let first = (0..n)
            .filter(|&i| nn[i] >= hi - f64::from(TIE_EPS))
            .max_by(|&a, &b| {
                mean(a)
                    .total_cmp(&mean(b))
                    .then_with(|| value_order(t.row(b), t.row(a)))
                    .then(b.cmp(&a))
            })
            .unwrap();
        let mut picked = vec![first];
        while picked.len() < k {
            // The unpicked token farthest from its nearest picked one; ties: lower index.
            let mut best = (usize::MAX, f64::NEG_INFINITY);
            for j in (0..n).filter(|j| !picked.contains(j)) {
                let d = picked.iter().map(|&p| dist(p, j)).fold(f64::INFINITY, f64::min);
                if d > best.1 {
                    best = (j, d);
                }
            }
            picked.push(best.0);
        }
        picked.sort_unstable();
        picked
    }

    #[test]
    fn matches_the_slow_f64_reference() {
        // Fixed seeds (no near-ties by construction of the check: exact duplicates tie exactly
        // in both precisions); sizes straddle the kernels' tile widths.
        for seed in 0..24u64 {
            let mut rng = crate::tokens::rng::SplitMix64::new(seed);
            let n = 2 + (seed as usize * 7) % 70;
            let d = [2, 3, 8, 17, 40][seed as usize % 5];
            let mut t = Array2::from_shape_fn((n, d), |_| rng.next_f32() * 2.0 - 1.0);
            if seed % 3 == 0 && n > 4 {
                // exact duplicates and a zero row exercise the tie rules
                let r = t.row(1).to_owned();
                t.row_mut(n - 1).assign(&r);
                t.row_mut(2).fill(0.0);
            }
            let x = VisualInput::new(t.view());
            for k in [1, n / 4, n / 2, n - 1].into_iter().filter(|&k| k >= 1 && k < n) {
                let got = DivPrune::default().reduce(&x, &Budget::keep(k)).unwrap().origin;
                assert_eq!(got, reference_picks(&t, k), "seed {seed} n {n} d {d} k {k}");
            }
        }
    }

    #[test]
    fn two_tokens_pick_the_same_one_in_either_order() {
        // A mutual nearest pair ties on both the nearest-neighbour and the mean similarity:
        // the pick must follow the rows, not their positions (proptest found it: seed 0,
        // two rows, k = 1, swapped).
        let a = array![[0.3f32, -0.2, 0.9], [0.1, 0.8, -0.4]];
        let b = array![[0.1f32, 0.8, -0.4], [0.3, -0.2, 0.9]];
        let keep = |t: &Array2<f32>| {
            let r = DivPrune::default()
                .reduce(&VisualInput::new(t.view()), &Budget::keep(1))
                .unwrap();
            t.row(r.origin[0]).to_vec()
        };
        assert_eq!(keep(&a), keep(&b));
        assert_eq!(keep(&a), vec![0.1, 0.8, -0.4], "the smaller row in value order");
    }

    #[test]
    fn fused_kernel_picks_what_the_gemm_path_picks() {
        // The SIMD Gram and the portable GEMM Gram differ in the last bits only; at bench-like
        // shapes (scaled down for debug builds) the selections are the same.
        use crate::tokens::linalg::{cosine_gram, gram, unit_rows};
        for seed in 0..4u64 {
            let data = Owned::new(12, 12, 96, seed);
            let g_fast = cosine_gram(data.tokens.view(), "tokens").unwrap();
            let g_gemm = gram(unit_rows(data.tokens.view(), "tokens").unwrap().view());
            for k in [36, 72] {
                assert_eq!(
                    max_min_picks(&g_fast, data.tokens.view(), k),
                    max_min_picks(&g_gemm, data.tokens.view(), k),
                    "seed {seed} k {k}"
                );
            }
        }
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
