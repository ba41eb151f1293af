//! Test helpers shared by the token-pruning modules.

//! Shared fixtures and invariant checks for the reducer tests.

use super::*;
use crate::tokens::rng::SplitMix64;

/// An owned input whose signals are derived from one seed.
pub struct Owned {
    pub tokens: Array2<f32>,
    pub cls: Array2<f32>,
    pub keys: Array2<f32>,
    pub text: Array2<f32>,
    pub vis: Array2<f32>,
    pub sizes: ndarray::Array1<f32>,
    pub grid: Option<(usize, usize)>,
}

fn softmax_rows(m: &mut Array2<f32>) {
    for mut row in m.rows_mut() {
        let mx = row.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        row.mapv_inplace(|v| (v - mx).exp());
        let s = row.sum();
        row.mapv_inplace(|v| v / s);
    }
}

impl Owned {
    pub fn new(rows: usize, cols: usize, d: usize, seed: u64) -> Self {
        let n = rows * cols;
        let mut rng = SplitMix64::new(seed);
        let mut g = |scale: f32| (rng.next_f32() * 2.0 - 1.0) * scale;
        let tokens = Array2::from_shape_fn((n, d), |_| g(1.0));
        let mut cls = Array2::from_shape_fn((2, n), |_| g(4.0));
        softmax_rows(&mut cls);
        let keys = Array2::from_shape_fn((n, 4), |_| g(1.0));
        let mut text = Array2::from_shape_fn((3, n), |_| g(3.0));
        softmax_rows(&mut text);
        let mut vis = Array2::from_shape_fn((n, n), |_| g(3.0));
        softmax_rows(&mut vis);
        let sizes = ndarray::Array1::from_shape_fn(n, |_| 1.0 + (g(1.0) + 1.0).floor());
        Owned {
            tokens,
            cls,
            keys,
            text,
            vis,
            sizes,
            grid: Some((rows, cols)),
        }
    }

    pub fn input(&self) -> VisualInput<'_> {
        let x = VisualInput::new(self.tokens.view());
        let x = match self.grid {
            Some((r, c)) => x.with_grid(r, c),
            None => x,
        };
        x.with_cls_attn(self.cls.view())
            .with_keys(self.keys.view())
            .with_text_attn(self.text.view())
            .with_vis_attn(self.vis.view())
            .with_sizes(self.sizes.view())
    }

    /// The same data with new token `i` = old token `perm[i]`; the grid is dropped (a
    /// permutation breaks the layout).
    pub fn permuted(&self, perm: &[usize]) -> Self {
        let ax = ndarray::Axis(0);
        let cols = ndarray::Axis(1);
        let vis = self.vis.select(ax, perm).select(cols, perm);
        Owned {
            tokens: self.tokens.select(ax, perm),
            cls: self.cls.select(cols, perm),
            keys: self.keys.select(ax, perm),
            text: self.text.select(cols, perm),
            vis,
            sizes: self.sizes.select(ax, perm),
            grid: None,
        }
    }
}

/// Checks the invariants every reduction must hold.
pub fn check_reduction(r: &Reduction, n: usize) {
    assert_eq!(r.k, r.tokens.nrows());
    assert_eq!(r.origin.len(), r.k);
    assert_eq!(r.sizes.len(), r.k);
    assert_eq!(r.assignment.len(), n);
    assert!(
        r.origin.windows(2).all(|w| w[0] < w[1]),
        "origin not ascending: {:?}",
        r.origin
    );
    assert!(r.origin.iter().all(|&o| o < n));
    for (row, &o) in r.origin.iter().enumerate() {
        assert_eq!(r.assignment[o], Some(row as u32), "representative maps to its row");
    }
    assert!(r.assignment.iter().flatten().all(|&a| (a as usize) < r.k));
    assert!(r.tokens.iter().all(|v| v.is_finite()));
}

/// A deterministic permutation of `0..n`.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.below(i + 1));
    }
    p
}

/// Checks that `b` (on permuted input, new `i` = old `perm[i]`) is `a` up to the indices.
pub fn check_permuted(a: &Reduction, b: &Reduction, perm: &[usize]) {
    assert_eq!(a.k, b.k);
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    for (old, &row) in a.assignment.iter().enumerate() {
        let new = inv[old];
        match (row, b.assignment[new]) {
            (None, None) => {}
            (Some(ra), Some(rb)) => {
                let (ra, rb) = (ra as usize, rb as usize);
                assert_eq!(perm[b.origin[rb]], a.origin[ra], "representative");
                assert!((a.sizes[ra] - b.sizes[rb]).abs() < 1e-4);
                for (x, y) in a.tokens.row(ra).iter().zip(b.tokens.row(rb)) {
                    assert!((x - y).abs() < 1e-4, "{x} vs {y}");
                }
            }
            other => panic!("token {old} assigned differently: {other:?}"),
        }
    }
}
