//! Attention-score top-k pruning: \[CLS\] attention (FasterVLM, arXiv 2412.01818) and
//! text→visual attention rows of one LLM layer (FastV arXiv 2403.06764, SparseVLM arXiv
//! 2410.04417), clean-room from the papers.
//!
//! FasterVLM: `s_j = mean_h A_h[CLS, j]`, keep the top k before the projector. FastV/SparseVLM:
//! `s_j` = mean over the supplied text rows (SparseVLM: the caller passes the rater rows) or the
//! last row only (FastV's implementation). Ties go to the lower index.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::linalg::top_k;
use super::{Budget, Reducer, Reduction, Signal, VisualInput, check_finite, check_input, gather};
use crate::{Error, Result};

/// FasterVLM: keep the top-k tokens by head-mean \[CLS\] attention.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClsTopK;

/// Which text rows score the visual tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextRows {
    /// Mean over all supplied rows (FastV's paper; SparseVLM with rater rows).
    #[default]
    Mean,
    /// The last row only (the last prompt token, FastV's code path with a KV cache).
    Last,
}

/// Parameters of [`TextAttnTopK`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextAttnTopKParams {
    /// Rows to average, [`TextRows::Mean`] by default.
    pub rows: TextRows,
}

/// FastV / SparseVLM scoring: keep the top-k tokens by text→visual attention.
#[derive(Debug, Clone, Default)]
pub struct TextAttnTopK {
    params: TextAttnTopKParams,
}

impl Reducer for ClsTopK {
    fn name(&self) -> &'static str {
        "cls_topk"
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
        let k = budget.resolve(input, Some(&s))?;
        let kept = top_k(&s, k);
        Ok(gather(input, &kept, Some(s)))
    }
}

impl TextAttnTopKParams {
    /// Always valid; present for symmetry with the other parameter structs.
    ///
    /// # Errors
    /// Never.
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl TextAttnTopK {
    /// A reducer with `params`.
    pub fn new(params: TextAttnTopKParams) -> Self {
        TextAttnTopK { params }
    }

    /// A reducer with validated `params`.
    ///
    /// # Errors
    /// Never (see [`TextAttnTopKParams::validate`]).
    pub fn try_new(params: TextAttnTopKParams) -> Result<Self> {
        params.validate()?;
        Ok(Self::new(params))
    }
}

impl Reducer for TextAttnTopK {
    fn name(&self) -> &'static str {
        "text_attn_topk"
    }

    fn needs(&self) -> &'static [Signal] {
        &[Signal::TextAttn]
    }

    fn scores(&self, input: &VisualInput<'_>) -> Result<Option<Vec<f32>>> {
        check_input(self, input)?;
        let t = input.require(Signal::TextAttn, self.name())?;
        let s = match self.params.rows {
            TextRows::Mean => super::head_mean(t),
            TextRows::Last => t.row(t.nrows() - 1).to_vec(),
        };
        check_finite(&s, "text_attn")?;
        Ok(Some(s))
    }

    fn reduce(&self, input: &VisualInput<'_>, budget: &Budget) -> Result<Reduction> {
        let s = self.scores(input)?.unwrap_or_default();
        let k = budget.resolve(input, Some(&s))?;
        let kept = top_k(&s, k);
        Ok(gather(input, &kept, Some(s)))
    }
}

impl fmt::Display for TextRows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextRows::Mean => "mean",
            TextRows::Last => "last",
        })
    }
}

impl std::str::FromStr for TextRows {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(TextRows::Mean),
            "last" => Ok(TextRows::Last),
            _ => Err(Error::param("rows", format!("`{s}`; expected mean or last"))),
        }
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
    fn cls_topk_keeps_highest_attention_in_index_order() {
        let t = array![[0.0f32], [1.0], [2.0], [3.0]];
        let a = array![[0.1f32, 0.5, 0.1, 0.3], [0.1, 0.3, 0.1, 0.5]];
        let x = VisualInput::new(t.view()).with_cls_attn(a.view());
        let r = ClsTopK.reduce(&x, &Budget::keep(2)).unwrap();
        assert_eq!(r.origin, vec![1, 3]);
        assert_eq!(r.tokens, array![[1.0], [3.0]]);
        assert_eq!(r.assignment, vec![None, Some(0), None, Some(1)]);
        // tie between 0 and 2: lower index wins
        let r3 = ClsTopK.reduce(&x, &Budget::keep(3)).unwrap();
        assert_eq!(r3.origin, vec![0, 1, 3]);
    }

    #[test]
    fn text_rows_last_reads_only_the_last_row() {
        let t = array![[0.0f32], [1.0], [2.0]];
        let a = array![[0.8f32, 0.1, 0.1], [0.1, 0.1, 0.8]];
        let x = VisualInput::new(t.view()).with_text_attn(a.view());
        let last = TextAttnTopK::new(TextAttnTopKParams { rows: TextRows::Last });
        assert_eq!(last.reduce(&x, &Budget::keep(1)).unwrap().origin, vec![2]);
        let mean = TextAttnTopK::default();
        assert_eq!(mean.reduce(&x, &Budget::keep(1)).unwrap().origin, vec![0]);
        assert_eq!("last".parse::<TextRows>().unwrap(), TextRows::Last);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn topk_invariants_and_permutation(seed in 0u64..10_000, rows in 1usize..7, cols in 1usize..7,
                                           k in 1usize..40, pseed in 0u64..100) {
            let data = Owned::new(rows, cols, 3, seed);
            let n = rows * cols;
            let reducers: [&dyn Reducer; 2] = [&ClsTopK, &TextAttnTopK::default()];
            let budgets = [
                Budget::keep(k),
                Budget::adaptive(AdaptiveRule::mean_plus_std()).with_clamps(2.min(k), k),
            ];
            for r in reducers {
                for b in &budgets {
                    let out = r.reduce(&data.input(), b).unwrap();
                    check_reduction(&out, n);
                    match b {
                        Budget::Keep { k } => prop_assert_eq!(out.k, (*k).min(n)),
                        _ => prop_assert!(out.k >= 2.min(k).min(n) && out.k <= k.min(n)),
                    }
                    let perm = permutation(n, pseed);
                    let p = data.permuted(&perm);
                    let out_p = r.reduce(&p.input(), b).unwrap();
                    check_permuted(&out, &out_p, &perm);
                }
            }
        }
    }
}
