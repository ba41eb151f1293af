//! Where `annotate` and `demos` get embeddings: a Parquet column, or a
//! text/image column embedded on the fly by an encoder (`--model`,
//! `--text-col`, ...), through the same [`TextSource`] as `filter --model`
//! (cached per shard with `--cache`). Also reads and compares the encoder
//! identity that every output records (research notes §10.3 rule 9:
//! results are not comparable across encoders).

use std::path::PathBuf;
use std::sync::Arc;

use super::READ_ROWS;
use crate::embed::{Encoder, TextSource};
use crate::io::Dataset;
use crate::io::embeddings::{ColumnSource, EmbeddingSource};
use crate::{Error, Result};

/// Column-metadata key of the encoder's description (written by `embed`).
pub const ENCODER_KEY: &str = "dprune.encoder";
/// Column-metadata key of the encoder's identity (written by `embed`).
pub const ENCODER_ID_KEY: &str = "dprune.encoder_id";

/// Which encoder made some embeddings, as far as the files say.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct EncoderRecord {
    /// Human-readable ([`crate::embed::EncoderInfo::describe`]).
    pub(super) describe: Option<String>,
    /// What decides the embeddings ([`crate::embed::EncoderInfo::identity`]).
    pub(super) id: Option<String>,
}

impl EncoderRecord {
    /// The record of a running encoder.
    pub(super) fn of(encoder: &dyn Encoder) -> Self {
        EncoderRecord {
            describe: Some(encoder.info().describe()),
            id: Some(encoder.info().identity()),
        }
    }

    /// Whether anything is known.
    pub(super) fn is_known(&self) -> bool {
        self.describe.is_some() || self.id.is_some()
    }

    /// `Some((a, b))` (descriptions for the message) when both records are
    /// known and differ: by identity when both have one, else by description.
    pub(super) fn mismatch(&self, other: &EncoderRecord) -> Option<(String, String)> {
        let differ = match (&self.id, &other.id) {
            (Some(a), Some(b)) => a != b,
            _ => match (&self.describe, &other.describe) {
                (Some(a), Some(b)) => a != b,
                _ => false,
            },
        };
        let name = |r: &EncoderRecord| r.describe.clone().or_else(|| r.id.clone()).unwrap_or_default();
        differ.then(|| (name(self), name(other)))
    }
}

/// How a file's rows get their embeddings.
pub(super) enum Embedding<'a> {
    /// A list-of-floats column (auto-detected when `None`).
    Column(Option<&'a str>),
    /// This column embedded by `encoder`; with `skip_bad`, rows without an
    /// embedding (undecodable images) are excluded instead of an error.
    Encode {
        /// The encoder, built once for every file of the run.
        encoder: Arc<dyn Encoder>,
        /// The text or image column.
        column: &'a str,
        /// `--cache DIR`.
        cache: Option<PathBuf>,
        /// `--skip-bad`.
        skip_bad: bool,
    },
}

/// The usable embeddings of a file.
pub(super) struct Embedded {
    /// `rows.len() / dim` rows: the usable ones, in file order.
    pub(super) rows: Vec<f32>,
    /// Embedding dimension.
    pub(super) dim: usize,
    /// Global row index of every usable row (all rows unless excluded).
    pub(super) index: Vec<u32>,
    /// Rows excluded (no embedding, with `skip_bad`).
    pub(super) excluded: usize,
    /// The embedding column, or the column embedded on the fly.
    pub(super) column: String,
    /// Whether the rows were embedded on the fly.
    pub(super) encoded: bool,
    /// The encoder, if known.
    pub(super) encoder: EncoderRecord,
}

/// Reads (or computes) the embeddings of every row of `data`: a null,
/// non-finite or zero embedding is an error naming file and row, except
/// that with [`Embedding::Encode`] and `skip_bad` rows without an
/// embedding are excluded and counted.
pub(super) fn embed_rows(data: &Dataset, how: &Embedding) -> Result<Embedded> {
    let (src, column, encoder, skip_bad): (Box<dyn EmbeddingSource>, String, EncoderRecord, bool) = match how {
        Embedding::Column(name) => {
            let src = ColumnSource::detect(data, *name)?;
            let field = data.shards[0].schema.field_with_name(src.name()).ok();
            let get = |k: &str| field.and_then(|f| f.metadata().get(k).cloned());
            let record = EncoderRecord {
                describe: get(ENCODER_KEY),
                id: get(ENCODER_ID_KEY),
            };
            let column = src.name().to_string();
            (Box::new(src), column, record, false)
        }
        Embedding::Encode {
            encoder,
            column,
            cache,
            skip_bad,
        } => {
            let src = TextSource::with_encoder(data, column, encoder.clone(), cache.clone())?;
            let record = EncoderRecord::of(encoder.as_ref());
            (Box::new(src), column.to_string(), record, *skip_bad)
        }
    };
    let encoded = matches!(how, Embedding::Encode { .. });
    let dim = src.dim();
    let mut rows = Vec::with_capacity(data.num_rows() as usize * dim);
    let mut index = Vec::with_capacity(data.num_rows() as usize);
    let mut excluded = 0;
    for (si, s) in data.shards.iter().enumerate() {
        for block in src.blocks(s, READ_ROWS)? {
            let block = block?;
            for r in 0..block.rows() {
                let v = &block.values[r * dim..(r + 1) * dim];
                let row = block.first_row + r as u64;
                let what = if block.null[r] {
                    Some("null")
                } else if v.iter().any(|x| !x.is_finite()) {
                    Some("not finite (NaN or inf)")
                } else if v.iter().all(|&x| x == 0.0) {
                    Some("all zeros")
                } else {
                    None
                };
                match what {
                    None => {
                        rows.extend_from_slice(v);
                        index.push((data.offset(si) + row) as u32);
                    }
                    Some("null") if skip_bad => excluded += 1,
                    Some(what) if encoded => {
                        return Err(Error::Column {
                            path: s.path.clone(),
                            column: column.clone(),
                            reason: format!(
                                "row {row}: its embedding is {what}{}",
                                if what == "null" {
                                    " (a null value has nothing to embed; fill it or drop the row)"
                                } else {
                                    ""
                                }
                            ),
                        });
                    }
                    Some(what) => {
                        return Err(Error::InvalidVector {
                            path: s.path.clone(),
                            row,
                            what,
                        });
                    }
                }
            }
        }
    }
    if index.is_empty() {
        return Err(Error::Empty(format!(
            "{}: no row has a usable embedding ({excluded} excluded)",
            data.shards[0].path.display()
        )));
    }
    Ok(Embedded {
        rows,
        dim,
        index,
        excluded,
        column,
        encoded,
        encoder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(describe: Option<&str>, id: Option<&str>) -> EncoderRecord {
        EncoderRecord {
            describe: describe.map(String::from),
            id: id.map(String::from),
        }
    }

    #[test]
    fn identities_decide_when_both_sides_have_one() {
        // Same identity, other path or provider in the description: the same encoder.
        let cpu = rec(Some("onnx model a.onnx (CPU)"), Some("onnx|text|abc"));
        let gpu = rec(Some("onnx model /x/a.onnx (CUDA)"), Some("onnx|text|abc"));
        assert_eq!(cpu.mismatch(&gpu), None);
        let other = rec(Some("onnx model b.onnx"), Some("onnx|text|def"));
        assert_eq!(
            cpu.mismatch(&other),
            Some(("onnx model a.onnx (CPU)".into(), "onnx model b.onnx".into()))
        );
        // Only descriptions (files written before identities were recorded).
        assert!(
            rec(Some("model-a"), None)
                .mismatch(&rec(Some("model-b"), Some("x")))
                .is_some()
        );
        assert_eq!(rec(Some("m"), None).mismatch(&rec(Some("m"), None)), None);
        // Unknown on either side: nothing to compare.
        assert_eq!(rec(None, None).mismatch(&other), None);
        assert!(!rec(None, None).is_known());
    }
}
