//! Baselines: seeded random pruning and uniform spatial subsampling on the patch grid.
//!
//! [`grid_skeleton`] is also the spatial skeleton of the ATP-style reducer (SAP, ATP-LLaVA
//! arXiv 2412.00447): an evenly strided lattice of exactly `m` tokens, so every region of the
//! image keeps a token. Adaptive budgets read the \[CLS\] (else text) attention when present.

use serde::{Deserialize, Serialize};

use super::rng::SplitMix64;
use super::{Budget, Reducer, Reduction, Signal, VisualInput, budget_scores, check_input, fallback_scores, gather};
use crate::Result;

/// Default seed of [`RandomParams`].
pub const DEFAULT_SEED: u64 = 0;

/// Parameters of [`Random`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandomParams {
    /// Seed of the SplitMix64 generator, [`DEFAULT_SEED`] by default; the same seed and `N`
    /// always keep the same tokens.
    pub seed: u64,
}

/// Keeps a uniformly random subset (partial Fisher–Yates).
#[derive(Debug, Clone, Default)]
pub struct Random {
    params: RandomParams,
}

/// Keeps an evenly spread lattice of tokens ([`grid_skeleton`]); without a grid, evenly
/// spaced indices.
#[derive(Debug, Clone, Copy, Default)]
pub struct UniformGrid;

impl Default for RandomParams {
    fn default() -> Self {
        RandomParams { seed: DEFAULT_SEED }
    }
}

impl RandomParams {
    /// Sets the seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
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

impl Random {
    /// A reducer with `params`.
    pub fn new(params: RandomParams) -> Self {
        Random { params }
    }

    /// A reducer with validated `params`.
    ///
    /// # Errors
    /// Never (see [`RandomParams::validate`]).
    pub fn try_new(params: RandomParams) -> Result<Self> {
        params.validate()?;
        Ok(Self::new(params))
    }
}

impl Reducer for Random {
    fn name(&self) -> &'static str {
        "random"
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
        let mut rng = SplitMix64::new(self.params.seed);
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + rng.below(n - i);
            idx.swap(i, j);
        }
        idx.truncate(k);
        idx.sort_unstable();
        Ok(gather(input, &idx, scores))
    }
}

impl Reducer for UniformGrid {
    fn name(&self) -> &'static str {
        "uniform_grid"
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
        let k = budget.resolve(input, scores.as_deref())?;
        let (rows, cols) = input.grid.unwrap_or((1, input.n()));
        Ok(gather(input, &grid_skeleton(rows, cols, k), scores))
    }
}

/// Exactly `min(m, rows·cols)` row-major indices spread evenly over a `rows × cols` grid,
/// ascending.
///
/// Picks an `r × c` lattice with `r·c >= m` whose aspect follows the grid (`r ≈ √(m·rows/cols)`),
/// places lattice points at cell centres (`⌊(a + ½)·rows/r⌋`, likewise for columns), then keeps
/// `m` of the `r·c` points at evenly spaced lattice positions (fewer than one lattice row is
/// dropped). Every `⌈rows/r⌉ × ⌈cols/c⌉` block of the grid keeps roughly one token.
pub fn grid_skeleton(rows: usize, cols: usize, m: usize) -> Vec<usize> {
    let n = rows * cols;
    if m >= n {
        return (0..n).collect();
    }
    if m == 0 {
        return Vec::new();
    }
    let mut r = ((m as f64 * rows as f64 / cols as f64).sqrt().round() as usize).clamp(1, rows);
    let mut c = m.div_ceil(r);
    if c > cols {
        c = cols;
        r = m.div_ceil(c);
    }
    let row_at = |a: usize| ((a as f64 + 0.5) * rows as f64 / r as f64) as usize;
    let col_at = |b: usize| ((b as f64 + 0.5) * cols as f64 / c as f64) as usize;
    let lattice = r * c;
    (0..m)
        .map(|i| {
            let p = ((i as f64 + 0.5) * lattice as f64 / m as f64) as usize;
            row_at(p / c) * cols + col_at(p % c)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::testutil::*;
    use ndarray::Array2;
    use proptest::prelude::*;

    #[test]
    fn skeleton_on_24x24_is_a_centered_lattice() {
        let s = grid_skeleton(24, 24, 36);
        assert_eq!(s.len(), 36);
        // 6 x 6 lattice at rows/cols 2, 6, 10, ...
        assert_eq!(s[0], 2 * 24 + 2);
        assert_eq!(s[1], 2 * 24 + 6);
        assert_eq!(s[35], 22 * 24 + 22);
        assert_eq!(grid_skeleton(1, 10, 5), vec![1, 3, 5, 7, 9]);
        assert_eq!(grid_skeleton(3, 3, 9), (0..9).collect::<Vec<_>>());
    }

    #[test]
    fn random_is_deterministic_per_seed() {
        let t = Array2::<f32>::zeros((50, 2));
        let x = VisualInput::new(t.view());
        let a = Random::default().reduce(&x, &Budget::keep(10)).unwrap();
        let b = Random::default().reduce(&x, &Budget::keep(10)).unwrap();
        let c = Random::new(RandomParams::default().with_seed(9))
            .reduce(&x, &Budget::keep(10))
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a.origin, c.origin);
        check_reduction(&a, 50);
    }

    proptest! {
        #[test]
        fn skeleton_is_exact_unique_and_ascending(rows in 1usize..30, cols in 1usize..30, m in 0usize..900) {
            let s = grid_skeleton(rows, cols, m);
            prop_assert_eq!(s.len(), m.min(rows * cols));
            prop_assert!(s.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(s.iter().all(|&i| i < rows * cols));
        }

        #[test]
        fn baselines_meet_the_budget(seed in 0u64..1000, rows in 1usize..8, cols in 1usize..8, k in 1usize..70) {
            let data = Owned::new(rows, cols, 2, seed);
            for r in [&Random::default() as &dyn Reducer, &UniformGrid] {
                let out = r.reduce(&data.input(), &Budget::keep(k)).unwrap();
                check_reduction(&out, rows * cols);
                prop_assert_eq!(out.k, k.min(rows * cols));
            }
        }
    }
}
