//! Helpers that turn what an engine can cheaply produce into the signals reducers read.
//!
//! Engines with fused attention (FlashAttention, SDPA) never materialise attention weights;
//! recomputing only the \[CLS\] row, `softmax(q_cls · K_hᵀ / √d_h)` per head (as LLaVA-PruMerge and
//! FasterVLM do with hooks), costs `O(H·N·d_h)`. These functions do not run any model.

use ndarray::{Array2, ArrayView2, ArrayView3, Axis};

use crate::{Error, Result};

/// Mean over the rows of `[H, N]` (or `[T, N]`) attention: one score per token.
pub fn head_mean(attn: ArrayView2<'_, f32>) -> Vec<f32> {
    let h = attn.nrows().max(1) as f32;
    attn.sum_axis(Axis(0)).iter().map(|v| v / h).collect()
}

/// \[CLS\]→patch attention `[H, N]` from the \[CLS\] query `[H, d_h]` and the patch keys
/// `[H, N, d_h]` of one layer: per head, `softmax_j(q_h · k_{h,j} / √d_h)`.
///
/// The softmax runs over the `N` patch keys only (the \[CLS\] key itself is excluded), so each
/// row sums to 1 over patches; RoPE or biases must already be applied to `q` and `k`.
///
/// # Errors
/// [`Error::Shape`] when the head counts or widths disagree or `N == 0`; [`Error::InvalidParam`]
/// when a logit is not finite.
pub fn cls_attention_from_qk(q_cls: ArrayView2<'_, f32>, keys: ArrayView3<'_, f32>) -> Result<Array2<f32>> {
    let (h, n, dh) = keys.dim();
    if q_cls.dim() != (h, dh) || n == 0 || dh == 0 {
        return Err(Error::Shape {
            op: "cls_attention_from_qk",
            expected: format!("q_cls [H, d_h] = [{h}, {dh}] with keys [H, N >= 1, d_h >= 1]"),
            got: format!("q_cls {:?}, keys {:?}", q_cls.shape(), keys.shape()),
        });
    }
    let scale = 1.0 / (dh as f32).sqrt();
    let mut out = Array2::<f32>::zeros((h, n));
    for (hi, mut row) in out.rows_mut().into_iter().enumerate() {
        let logits = keys.index_axis(Axis(0), hi).dot(&q_cls.row(hi));
        let mx = logits.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        if !mx.is_finite() || logits.iter().any(|v| v.is_nan()) {
            return Err(Error::param("keys", format!("head {hi}: a [CLS] logit is not finite")));
        }
        let mut sum = 0.0f32;
        for (o, &l) in row.iter_mut().zip(logits.iter()) {
            *o = ((l - mx) * scale).exp();
            sum += *o;
        }
        row.mapv_inplace(|v| v / sum);
    }
    Ok(out)
}

/// Attention received per key, the mean over heads and queries of `[H, Q, N]` attention: the
/// no-\[CLS\] score used for SigLIP / Qwen-ViT encoders (also ATP's `S_self` on a visual block).
///
/// # Errors
/// [`Error::Shape`] when a dimension is 0.
pub fn attention_received(attn: ArrayView3<'_, f32>) -> Result<Vec<f32>> {
    let (h, q, n) = attn.dim();
    if h == 0 || q == 0 || n == 0 {
        return Err(Error::Shape {
            op: "attention_received",
            expected: "[H >= 1, Q >= 1, N >= 1]".into(),
            got: format!("{:?}", attn.shape()),
        });
    }
    let sum = attn.sum_axis(Axis(0)).sum_axis(Axis(0));
    let d = (h * q) as f32;
    Ok(sum.iter().map(|v| v / d).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, array};

    #[test]
    fn cls_attention_is_a_softmax_per_head() {
        let q = array![[1.0f32, 0.0], [0.0, 0.0]];
        let k = Array3::from_shape_fn((2, 3, 2), |(_, j, c)| if c == 0 { j as f32 } else { 0.0 });
        let a = cls_attention_from_qk(q.view(), k.view()).unwrap();
        let s = 1.0 / 2f32.sqrt();
        let e: Vec<f32> = (0..3).map(|j| (j as f32 * s).exp()).collect();
        let z: f32 = e.iter().sum();
        for j in 0..3 {
            assert!((a[[0, j]] - e[j] / z).abs() < 1e-6);
            assert!((a[[1, j]] - 1.0 / 3.0).abs() < 1e-6);
        }
        assert!(cls_attention_from_qk(q.view(), Array3::zeros((3, 3, 2)).view()).is_err());
    }

    #[test]
    fn attention_received_averages_heads_and_queries() {
        let a = Array3::from_shape_fn((2, 2, 3), |(h, q, n)| (h + q + n) as f32);
        assert_eq!(attention_received(a.view()).unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(head_mean(array![[1.0f32, 2.0], [3.0, 6.0]].view()), vec![2.0, 4.0]);
    }
}
