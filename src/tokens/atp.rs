//! ATP-style adaptive pruning (ATP-LLaVA, arXiv 2412.00447), training-free.
//!
//! Score `S = (w_s·Ŝ_self + w_c·Ŝ_cross) / (w_s + w_c)` with each part min–max scaled to
//! `[0, 1]`. `S_self`: attention each visual token receives from the visual tokens (column mean
//! of the `[N, N]` block); without that block, distinctiveness `1 − mean_i cos(x_i, x_j)` over
//! keys (else tokens), computed in `O(N·d)` from the mean unit vector, so redundant tokens score
//! low. `S_cross`: mean text→visual attention, else head-mean \[CLS\] attention, else left out.
//! The instance-wise threshold is the [`Budget`] (an adaptive rule on `S`, fit by
//! [`calibrate`](super::calibrate) instead of ATP's learned heads). Spatial augmented pruning
//! (SAP): with a grid, `⌊spatial_share·k⌋` of the `k` tokens form a uniform-stride skeleton
//! ([`grid_skeleton`]) so every region keeps coverage; the rest are the best-scored others.

use ndarray::Axis;
use serde::{Deserialize, Serialize};

use super::baseline::grid_skeleton;
use super::linalg::top_k_of;
use super::{Budget, Metric, Reducer, Reduction, Signal, VisualInput, check_finite, check_input, gather};
use crate::{Error, Result};

/// Default weight of the self-modality (redundancy) score.
pub const DEFAULT_SELF_WEIGHT: f32 = 0.5;
/// Default weight of the cross-modality (relevance) score.
pub const DEFAULT_CROSS_WEIGHT: f32 = 0.5;
/// Default share of the kept tokens reserved for the spatial skeleton.
pub const DEFAULT_SPATIAL_SHARE: f32 = 0.25;

/// Parameters of [`AdaptivePruner`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptivePrunerParams {
    /// Weight of `S_self`, [`DEFAULT_SELF_WEIGHT`] by default.
    pub self_weight: f32,
    /// Weight of `S_cross`, [`DEFAULT_CROSS_WEIGHT`] by default.
    pub cross_weight: f32,
    /// Fraction of `k` taken by the grid skeleton when a grid is given, in `[0, 1]`;
    /// [`DEFAULT_SPATIAL_SHARE`] by default.
    pub spatial_share: f32,
}

/// The ATP-style reducer: redundancy + relevance scores, instance-wise budget, grid skeleton.
#[derive(Debug, Clone, Default)]
pub struct AdaptivePruner {
    params: AdaptivePrunerParams,
}

impl Default for AdaptivePrunerParams {
    fn default() -> Self {
        AdaptivePrunerParams {
            self_weight: DEFAULT_SELF_WEIGHT,
            cross_weight: DEFAULT_CROSS_WEIGHT,
            spatial_share: DEFAULT_SPATIAL_SHARE,
        }
    }
}

impl AdaptivePrunerParams {
    /// Sets the two score weights.
    #[must_use]
    pub fn with_weights(mut self, self_weight: f32, cross_weight: f32) -> Self {
        self.self_weight = self_weight;
        self.cross_weight = cross_weight;
        self
    }

    /// Sets the skeleton share.
    #[must_use]
    pub fn with_spatial_share(mut self, share: f32) -> Self {
        self.spatial_share = share;
        self
    }

    /// Checks ranges.
    ///
    /// # Errors
    /// [`Error::InvalidParam`] for negative or non-finite weights, both weights 0, or a share
    /// outside `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        for (name, w) in [("self_weight", self.self_weight), ("cross_weight", self.cross_weight)] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(Error::param(name, format!("{w}; must be finite and >= 0")));
            }
        }
        if self.self_weight + self.cross_weight <= 0.0 {
            return Err(Error::param("self_weight", "both score weights are 0"));
        }
        if !(0.0..=1.0).contains(&self.spatial_share) {
            return Err(Error::param(
                "spatial_share",
                format!("{}; must lie in [0, 1]", self.spatial_share),
            ));
        }
        Ok(())
    }
}

impl AdaptivePruner {
    /// A reducer with `params` (validated on every call).
    pub fn new(params: AdaptivePrunerParams) -> Self {
        AdaptivePruner { params }
    }

    /// A reducer with validated `params`.
    ///
    /// # Errors
    /// See [`AdaptivePrunerParams::validate`].
    pub fn try_new(params: AdaptivePrunerParams) -> Result<Self> {
        params.validate()?;
        Ok(Self::new(params))
    }
}

impl Reducer for AdaptivePruner {
    fn name(&self) -> &'static str {
        "adaptive"
    }

    fn needs(&self) -> &'static [Signal] {
        &[]
    }

    fn scores(&self, input: &VisualInput<'_>) -> Result<Option<Vec<f32>>> {
        self.params.validate()?;
        check_input(self, input)?;
        let n = input.n();
        let s_self = match input.vis_attn {
            Some(v) => {
                let s = v.mean_axis(Axis(0)).map(|a| a.to_vec()).unwrap_or_default();
                check_finite(&s, "vis_attn")?;
                s
            }
            None => distinctiveness(input)?,
        };
        let s_cross = match (input.text_attn, input.cls_attn) {
            (Some(t), _) => Some((super::head_mean(t), "text_attn")),
            (None, Some(c)) => Some((super::head_mean(c), "cls_attn")),
            (None, None) => None,
        };
        let (ws, mut wc) = (self.params.self_weight, self.params.cross_weight);
        let mut cross = vec![0.0; n];
        if let Some((c, src)) = s_cross {
            check_finite(&c, src)?;
            cross = min_max(&c);
        } else {
            wc = 0.0;
        }
        let own = min_max(&s_self);
        let wsum = if ws + wc > 0.0 { ws + wc } else { 1.0 };
        let ws = if ws + wc > 0.0 { ws } else { 1.0 };
        Ok(Some(
            own.iter().zip(&cross).map(|(a, b)| (ws * a + wc * b) / wsum).collect(),
        ))
    }

    fn reduce(&self, input: &VisualInput<'_>, budget: &Budget) -> Result<Reduction> {
        let s = self.scores(input)?.unwrap_or_default();
        let k = budget.resolve(input, Some(&s))?;
        let mut kept = match input.grid {
            Some((rows, cols)) => {
                let m = ((self.params.spatial_share * k as f32).floor() as usize).min(k);
                grid_skeleton(rows, cols, m)
            }
            None => Vec::new(),
        };
        let mut taken = vec![false; input.n()];
        for &j in &kept {
            taken[j] = true;
        }
        let rest: Vec<usize> = (0..input.n()).filter(|&j| !taken[j]).collect();
        kept.extend(top_k_of(rest, &s, k - kept.len()));
        kept.sort_unstable();
        Ok(gather(input, &kept, Some(s)))
    }
}

/// `1 − mean_{i≠j} cos(x_i, x_j)` per token over keys (else tokens), in `O(N·d)`: with unit
/// rows `u_j`, `Σ_{i≠j} cos = u_j·(Σ_i u_i) − 1`, so two passes and no `N×N` matrix.
fn distinctiveness(input: &VisualInput<'_>) -> Result<Vec<f32>> {
    let m = input.metric_rows(Metric::Auto, "adaptive")?;
    let what = if input.keys.is_some() { "keys" } else { "tokens" };
    let n = m.nrows();
    if n == 1 {
        return Ok(vec![1.0]);
    }
    let mut inv_norm = Vec::with_capacity(n);
    let mut total = ndarray::Array1::<f32>::zeros(m.ncols());
    for (j, row) in m.rows().into_iter().enumerate() {
        let norm = row.dot(&row).sqrt();
        if !norm.is_finite() {
            return Err(Error::param(what, format!("row {j} holds a NaN or infinite value")));
        }
        let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        total.scaled_add(inv, &row);
        inv_norm.push(inv);
    }
    Ok(m.rows()
        .into_iter()
        .zip(inv_norm)
        .map(|(row, inv)| {
            let self_cos = if inv > 0.0 { 1.0 } else { 0.0 };
            1.0 - (row.dot(&total) * inv - self_cos) / (n - 1) as f32
        })
        .collect())
}

/// Scales to `[0, 1]`; a constant vector maps to zeros.
fn min_max(v: &[f32]) -> Vec<f32> {
    let (lo, hi) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let span = hi - lo;
    if span > 0.0 && span.is_finite() {
        v.iter().map(|x| (x - lo) / span).collect()
    } else {
        vec![0.0; v.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::testutil::*;
    use crate::tokens::{AdaptiveRule, CalibrationSample, calibrate, mean_kept};
    use ndarray::{Array2, array};
    use proptest::prelude::*;

    #[test]
    fn distinctiveness_ranks_the_odd_token_first() {
        let t = array![[1.0f32, 0.0], [1.0, 0.01], [0.99, 0.0], [0.0, 1.0]];
        let x = VisualInput::new(t.view());
        let r = AdaptivePruner::default().reduce(&x, &Budget::keep(1)).unwrap();
        assert_eq!(r.origin, vec![3]);
    }

    #[test]
    fn skeleton_covers_every_quadrant() {
        // all attention on the top-left corner: the skeleton still spreads tokens out
        let t = Array2::from_shape_fn((64, 4), |(i, j)| ((i * 5 + j) % 7) as f32);
        let mut cls = Array2::<f32>::from_elem((1, 64), 1e-4);
        for r in 0..4 {
            for c in 0..4 {
                cls[[0, r * 8 + c]] = 1.0;
            }
        }
        let x = VisualInput::new(t.view()).with_grid(8, 8).with_cls_attn(cls.view());
        let p = AdaptivePruner::new(AdaptivePrunerParams::default().with_weights(0.0, 1.0));
        let out = p.reduce(&x, &Budget::keep(20)).unwrap();
        check_reduction(&out, 64);
        assert_eq!(out.k, 20);
        for (qr, qc) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            assert!(
                out.origin.iter().any(|&j| (j / 8) / 4 == qr && (j % 8) / 4 == qc),
                "quadrant {qr},{qc} uncovered: {:?}",
                out.origin
            );
        }
        let no_sap = AdaptivePruner::new(
            AdaptivePrunerParams::default()
                .with_weights(0.0, 1.0)
                .with_spatial_share(0.0),
        );
        let out = no_sap.reduce(&x, &Budget::keep(16)).unwrap();
        assert!(out.origin.iter().all(|&j| j / 8 < 4 && j % 8 < 4));
    }

    #[test]
    fn calibrated_adaptive_pruner_hits_mean() {
        let set: Vec<Owned> = (0..30).map(|s| Owned::new(6, 6, 8, s)).collect();
        let p = AdaptivePruner::default();
        let samples: Vec<CalibrationSample> = set
            .iter()
            .map(|d| CalibrationSample::from_input(&p, &d.input()).unwrap())
            .collect();
        let b = calibrate(
            &Budget::adaptive(AdaptiveRule::mean_plus_std()).with_clamps(2, 30),
            &samples,
            9.0,
        )
        .unwrap();
        assert!((mean_kept(&b, &samples).unwrap() - 9.0).abs() <= 1.0);
        let mean: f64 = set
            .iter()
            .map(|d| p.reduce(&d.input(), &b).unwrap().k as f64)
            .sum::<f64>()
            / 30.0;
        assert!((mean - 9.0).abs() <= 1.0, "{mean}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn adaptive_invariants(seed in 0u64..10_000, rows in 1usize..7, cols in 1usize..7,
                               lo in 1usize..10, span in 0usize..20, pseed in 0u64..50) {
            let data = Owned::new(rows, cols, 3, seed);
            let n = rows * cols;
            let b = Budget::adaptive(AdaptiveRule::default()).with_clamps(lo, lo + span);
            let out = AdaptivePruner::default().reduce(&data.input(), &b).unwrap();
            check_reduction(&out, n);
            prop_assert!(out.k >= lo.min(n) && out.k <= (lo + span).min(n));
            // without the grid the reducer is permutation-equivariant
            let p = AdaptivePruner::default();
            let flat = data.permuted(&(0..n).collect::<Vec<_>>());
            let a = p.reduce(&flat.input(), &b).unwrap();
            // Equivariance holds up to float rounding: scores summed in another order can
            // swap a near-tie at the cut, so only cases with a clear margin are checked.
            if let Some(s) = &a.scores {
                let mut v = s.clone();
                v.sort_by(|x, y| y.total_cmp(x));
                let scale = v.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
                prop_assume!(a.k >= n || (v[a.k - 1] - v[a.k]).abs() > 1e-4 * scale);
            }
            let perm = permutation(n, pseed);
            let q = data.permuted(&perm);
            let c = p.reduce(&q.input(), &b).unwrap();
            check_permuted(&a, &c, &perm);
        }
    }
}
