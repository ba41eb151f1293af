//! Cost accounting for token schedules: equivalent tokens and prefill FLOPs per layer.
//!
//! FastV's per-layer FLOPs model `4nd² + 2n²d + 2ndm` (attention projections, attention
//! scores/values, a two-matrix FFN; arXiv 2403.06764), with `3ndm` for SwiGLU FFNs as in
//! SparseVLM's code, and "equivalent tokens" `Σ_l n_l / L` for layer-varying schedules (e.g.
//! keep 576 for 2 layers then 144 for 30: `(2·576 + 30·144)/32 = 171`). Theoretical counts
//! only: report wall-clock prefill and decode separately.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Widths of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayerDims {
    /// Hidden width `d` (LLaMA-7B: 4096).
    pub hidden: usize,
    /// FFN inner width `m` (LLaMA-7B: 11008).
    pub ffn: usize,
    /// Whether the FFN is gated (SwiGLU: three matrices instead of two).
    pub swiglu: bool,
}

/// Per-layer and total prefill FLOPs of a token schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlopsReport {
    /// FLOPs of each layer.
    pub per_layer: Vec<f64>,
    /// Their sum.
    pub total: f64,
    /// [`equivalent_tokens`] of the schedule.
    pub equivalent_tokens: f64,
}

impl Default for LayerDims {
    /// LLaMA-7B / Vicuna-7B (LLaVA-1.5-7B's language model).
    fn default() -> Self {
        LayerDims {
            hidden: 4096,
            ffn: 11008,
            swiglu: true,
        }
    }
}

impl LayerDims {
    /// Checks that both widths are positive.
    ///
    /// # Errors
    /// [`Error::InvalidParam`] for a zero width.
    pub fn validate(&self) -> Result<()> {
        if self.hidden == 0 || self.ffn == 0 {
            return Err(Error::param("hidden", "layer widths must be > 0"));
        }
        Ok(())
    }
}

/// Mean tokens per layer, `Σ_l n_l / L` (0 for an empty schedule).
pub fn equivalent_tokens(tokens_per_layer: &[usize]) -> f64 {
    if tokens_per_layer.is_empty() {
        return 0.0;
    }
    tokens_per_layer.iter().map(|&n| n as f64).sum::<f64>() / tokens_per_layer.len() as f64
}

/// FLOPs of one layer over `n` tokens: `4nd² + 2n²d + c·ndm`, `c = 3` for SwiGLU else 2.
pub fn layer_flops(n: usize, dims: &LayerDims) -> f64 {
    let (n, d, m) = (n as f64, dims.hidden as f64, dims.ffn as f64);
    let c = if dims.swiglu { 3.0 } else { 2.0 };
    4.0 * n * d * d + 2.0 * n * n * d + c * n * d * m
}

/// Prefill FLOPs of a schedule giving the token count entering each layer.
///
/// # Errors
/// [`Error::InvalidParam`] for invalid `dims`.
pub fn prefill_flops(tokens_per_layer: &[usize], dims: &LayerDims) -> Result<FlopsReport> {
    dims.validate()?;
    let per_layer: Vec<f64> = tokens_per_layer.iter().map(|&n| layer_flops(n, dims)).collect();
    Ok(FlopsReport {
        total: per_layer.iter().sum(),
        per_layer,
        equivalent_tokens: equivalent_tokens(tokens_per_layer),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparsevlm_equivalent_token_example() {
        let mut sched = vec![576; 2];
        sched.extend([144; 30]);
        assert!((equivalent_tokens(&sched) - 171.0).abs() < 1e-12);
        assert_eq!(equivalent_tokens(&[]), 0.0);
    }

    #[test]
    fn flops_formula() {
        let d = LayerDims {
            hidden: 2,
            ffn: 3,
            swiglu: false,
        };
        // 4·1·4 + 2·1·2 + 2·1·2·3 = 16 + 4 + 12
        assert_eq!(layer_flops(1, &d), 32.0);
        let r = prefill_flops(&[1, 2], &LayerDims { swiglu: true, ..d }).unwrap();
        // n=1: 16 + 4 + 18 = 38; n=2: 32 + 16 + 36 = 84
        assert_eq!(r.per_layer, vec![38.0, 84.0]);
        assert_eq!(r.total, 122.0);
        assert!(prefill_flops(&[1], &LayerDims { hidden: 0, ..d }).is_err());
    }
}
