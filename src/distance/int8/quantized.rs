//! Rows quantized once and packed as either operand of the int8 kernel. A row's
//! integers q_t, scale, Σq_t and norms do not depend on the side it is packed for;
//! only its bytes do: q_t for the signed right operand, q_t + 128 for the unsigned
//! left one, which is the signed byte with its top bit flipped (q_t ∈ [−127, 127]).
//! So [`Quantized`] rows packed by [`PackedI8::from_sources`](super::PackedI8::from_sources)
//! or [`I8Rows::from_sources`](super::I8Rows::from_sources) are the same bits as rows
//! quantized afresh (tested). The cross pass quantizes each partition's rows once
//! although many of them meet the kernel on both sides (as owners of their cluster
//! and as guests of their second one).

use rayon::prelude::*;

use super::{I8Norms, MAX_INT8_DIM, quantize_row};
use crate::distance::prefetch_row;

/// The signed bytes of a row, four to a word, to its unsigned (+128) bytes.
const FLIP: u32 = 0x8080_8080;

/// Rows quantized for the int8 kernel, unpacked (see the module doc).
#[derive(Debug, Clone)]
pub struct Quantized {
    /// `rows × quads` words of signed bytes (padding 0).
    words: Vec<u32>,
    scale: Vec<f32>,
    sum: Vec<i32>,
    norms: Vec<I8Norms>,
    dim: usize,
}

impl Quantized {
    /// Quantizes every row of the row-major `x` (`dim` columns), rows in parallel.
    ///
    /// # Panics
    /// If `x` is not a multiple of `dim`, or `dim` is 0 or above [`MAX_INT8_DIM`].
    pub fn new(x: &[f32], dim: usize) -> Self {
        assert!(
            dim > 0 && dim <= MAX_INT8_DIM && x.len().is_multiple_of(dim),
            "Quantized: x is not n x dim"
        );
        let quads = dim.div_ceil(4);
        let mut words = vec![0u32; x.len() / dim * quads];
        let per: Vec<(f32, i32, I8Norms)> = x
            .par_chunks_exact(dim)
            .zip(words.par_chunks_exact_mut(quads))
            .map(|(row, w)| quantize_row(row, w, 0))
            .collect();
        let mut q = Quantized {
            words,
            scale: Vec::with_capacity(per.len()),
            sum: Vec::with_capacity(per.len()),
            norms: Vec::with_capacity(per.len()),
            dim,
        };
        for (s, sum, n) in per {
            q.scale.push(s);
            q.sum.push(sum);
            q.norms.push(n);
        }
        q
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.scale.len()
    }
}

/// One row to pack for the int8 kernel: quantized now, or taken from a [`Quantized`].
#[derive(Debug, Clone, Copy)]
pub enum RowSource<'a> {
    /// A row of `dim` values.
    Raw(&'a [f32]),
    /// Row `i` of these.
    Quantized(&'a Quantized, usize),
}

impl RowSource<'_> {
    /// Asks for the row's memory ahead of its use (a hint).
    pub(super) fn prefetch(&self) {
        match *self {
            RowSource::Raw(r) => prefetch_row(r),
            RowSource::Quantized(q, i) => {
                let quads = q.dim.div_ceil(4);
                if let Some(w) = q.words.get(i * quads..(i + 1) * quads) {
                    // Words are 4 bytes, as f32: the same lines.
                    // SAFETY: u32 and f32 have one size and alignment, and every bit
                    // pattern is a valid f32 (only read as a prefetch hint anyway).
                    prefetch_row(unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<f32>(), w.len()) });
                }
            }
        }
    }

    /// The row's `words` (bytes + `offset`, 0 or 128), scale, Σq and norms, as
    /// [`quantize_row`] gives them.
    ///
    /// # Panics
    /// If the row is not `dim` long, or `offset` is neither 0 nor 128.
    pub(super) fn quantize(&self, dim: usize, words: &mut [u32], offset: i32) -> (f32, i32, I8Norms) {
        match *self {
            RowSource::Raw(r) => {
                assert_eq!(r.len(), dim, "int8: a row is not dim long");
                quantize_row(r, words, offset)
            }
            RowSource::Quantized(q, i) => {
                assert_eq!(q.dim, dim, "int8: quantized rows of another dim");
                let src = &q.words[i * words.len()..(i + 1) * words.len()];
                match offset {
                    0 => words.copy_from_slice(src),
                    128 => words.iter_mut().zip(src).for_each(|(w, &s)| *w = s ^ FLIP),
                    _ => panic!("int8: offset {offset}"),
                }
                (q.scale[i], q.sum[i], q.norms[i])
            }
        }
    }
}
