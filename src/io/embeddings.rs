//! Where embeddings come from: the [`EmbeddingSource`] trait and its two
//! file-based implementations, a Parquet column ([`ColumnSource`]) and
//! LAION-style `.npy` sidecars ([`NpySidecarSource`]). Encoders (ONNX) plug
//! in as further implementations.
//!
//! A source yields, per shard and in row order, blocks of rows as one
//! contiguous `rows × dim` f32 buffer, plus which rows were null. Checking
//! values (NaN, zero vectors) is the caller's job, because the caller
//! decides between an error and dropping the row.
//!
//! `FixedSizeList<Float32>` columns stored PLAIN are read page by page
//! without the generic level decoding (`fast`, same rows and values;
//! `DPRUNE_PARQUET_FAST=0` turns it off for comparisons).

use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, GenericListArray, OffsetSizeTrait};
use arrow::datatypes::{DataType, Float16Type, Float32Type, Float64Type, Schema};
use parquet::arrow::ProjectionMask;

use crate::io::inputs::builder;
use crate::io::npy::{self, NpyHeader, RowReader};
use crate::io::{Dataset, Shard};
use crate::{Error, Result};

pub(crate) mod fast;

/// Column names taken as the embedding when several float-list columns exist.
pub const KNOWN_EMBEDDING_NAMES: &[&str] = &[
    "embedding",
    "emb",
    "clip_emb",
    "img_emb",
    "image_embedding",
    "text_embedding",
];

/// Rows of one shard's embeddings.
#[derive(Debug, Clone, Default)]
pub struct EmbeddingBlock {
    /// Row index (within the shard) of the first row.
    pub first_row: u64,
    /// `rows × dim` values, row-major; null rows hold zeros.
    pub values: Vec<f32>,
    /// Per row: the embedding (or one of its elements) was null.
    pub null: Vec<bool>,
}

impl EmbeddingBlock {
    /// Rows in the block.
    pub fn rows(&self) -> usize {
        self.null.len()
    }
}

/// Why an embedding cannot be scored, if it cannot: null, not finite, or
/// all zeros (no direction). `filter` fails on such rows or, with
/// `--drop-invalid`, excludes them.
pub fn unusable(x: &[f32], null: bool) -> Option<&'static str> {
    if null {
        return Some("null");
    }
    // One branch-free pass over the bits (it vectorizes; `any`/`all` stop early
    // and do not, which cost 10% of a read pass): with the sign masked off, a
    // value is not finite iff its bits are ≥ the exponent-all-ones pattern,
    // and it is ±0 iff they are 0, so the maximum answers both questions.
    let max = max_abs_bits(x);
    if max >= 0x7f80_0000 {
        Some("not finite (NaN or inf)")
    } else if max == 0 {
        Some("all zeros")
    } else {
        None
    }
}

/// The largest of the values' bits with the sign masked off ([`unusable`]).
#[inline]
fn max_abs_bits(x: &[f32]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { max_abs_bits_avx2(x) };
    }
    max_abs_bits_body(x)
}

#[inline(always)]
fn max_abs_bits_body(x: &[f32]) -> u32 {
    x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff))
}

/// The same fold with AVX2's unsigned maximum: the baseline x86-64 target has no
/// unsigned 32-bit `max` instruction (SSE4.1), and its emulation made the check a
/// tenth of the sample pass.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_abs_bits_avx2(x: &[f32]) -> u32 {
    max_abs_bits_body(x)
}

/// An iterator of embedding blocks.
pub type BlockIter<'a> = Box<dyn Iterator<Item = Result<EmbeddingBlock>> + Send + 'a>;

/// Something that yields one embedding per row of every shard.
pub trait EmbeddingSource: Send + Sync {
    /// A short description for reports ("column `emb`", "sidecars a.npy, ...").
    fn describe(&self) -> String;
    /// Embedding dimension.
    fn dim(&self) -> usize;
    /// The embeddings of `shard`, in row order, in blocks of at most
    /// `batch_rows` rows.
    fn blocks<'a>(&'a self, shard: &'a Shard, batch_rows: usize) -> Result<BlockIter<'a>>;
    /// The shards' column the embeddings are read from, if any (not a
    /// sidecar, not an encoder's output).
    fn column(&self) -> Option<&str> {
        None
    }
}

/// Embeddings stored in a column of the shards: `FixedSizeList` or
/// `List`/`LargeList` of `Float16`, `Float32` or `Float64`.
#[derive(Debug, Clone)]
pub struct ColumnSource {
    name: String,
    dim: usize,
}

fn float_list_item(dt: &DataType) -> Option<&DataType> {
    let item = match dt {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => f.data_type(),
        _ => return None,
    };
    matches!(item, DataType::Float16 | DataType::Float32 | DataType::Float64).then_some(item)
}

fn list_candidates(schema: &Schema) -> Vec<String> {
    schema
        .fields()
        .iter()
        .filter(|f| float_list_item(f.data_type()).is_some())
        .map(|f| f.name().clone())
        .collect()
}

impl ColumnSource {
    /// Finds the embedding column in every shard: `name` if given, else the
    /// only float-list column, else the only one with a
    /// [known name](KNOWN_EMBEDDING_NAMES). Checks that it exists with the
    /// same type in every shard and determines the dimension.
    pub fn detect(data: &Dataset, name: Option<&str>) -> Result<Self> {
        let first = data
            .shards
            .first()
            .ok_or_else(|| Error::Empty("no input shards".into()))?;
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                let cands = list_candidates(&first.schema);
                let known: Vec<&String> = cands
                    .iter()
                    .filter(|c| KNOWN_EMBEDDING_NAMES.contains(&c.as_str()))
                    .collect();
                match (cands.len(), known.len()) {
                    (1, _) => cands[0].clone(),
                    (_, 1) => known[0].clone(), // e.g. `clip_emb` next to an unrelated vector column
                    (0, _) => {
                        let all: Vec<_> = first
                            .schema
                            .fields()
                            .iter()
                            .map(|f| format!("{} ({})", f.name(), f.data_type()))
                            .collect();
                        return Err(Error::EmbeddingColumn {
                            path: first.path.clone(),
                            reason: format!(
                                "no embedding column found (a list of floats); columns are: {}. \
                                 Name one with --embedding-col or give sidecars with --embeddings",
                                all.join(", ")
                            ),
                        });
                    }
                    _ => {
                        return Err(Error::EmbeddingColumn {
                            path: first.path.clone(),
                            reason: format!(
                                "several possible embedding columns: {}; choose one with --embedding-col",
                                cands.join(", ")
                            ),
                        });
                    }
                }
            }
        };
        let mut dim: Option<(usize, PathBuf)> = None;
        for s in &data.shards {
            let f = s.schema.field_with_name(&name).map_err(|_| Error::EmbeddingColumn {
                path: s.path.clone(),
                reason: format!(
                    "no column `{name}`; columns are: {}",
                    s.schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
            if float_list_item(f.data_type()).is_none() {
                return Err(Error::EmbeddingColumn {
                    path: s.path.clone(),
                    reason: format!(
                        "column `{name}` has type {}, expected a list of float16/float32/float64",
                        f.data_type()
                    ),
                });
            }
            if let DataType::FixedSizeList(_, d) = f.data_type() {
                let d = *d as usize;
                match &dim {
                    None => dim = Some((d, s.path.clone())),
                    Some((e, _)) if *e != d => {
                        return Err(Error::Dimension {
                            path: s.path.clone(),
                            row: None,
                            expected: *e,
                            found: d,
                        });
                    }
                    _ => {}
                }
            }
        }
        let mut src = ColumnSource {
            name,
            dim: dim.as_ref().map_or(0, |d| d.0),
        };
        if src.dim == 0 {
            src.dim = src.peek_dim(data)?;
        }
        Ok(src)
    }

    /// The column name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Variable-length lists: the dimension is the length of the first
    /// non-null row of the first shard that has one.
    fn peek_dim(&self, data: &Dataset) -> Result<usize> {
        for s in &data.shards {
            let mut r = reader(s, &self.name, 1024)?;
            for b in r.by_ref() {
                let b = b.map_err(|source| Error::Arrow {
                    path: s.path.clone(),
                    source,
                })?;
                let col = b.column(0);
                for i in 0..col.len() {
                    if col.is_valid(i) {
                        let len = match col.data_type() {
                            DataType::List(_) => col.as_list::<i32>().value_length(i) as usize,
                            DataType::LargeList(_) => col.as_list::<i64>().value_length(i) as usize,
                            _ => 0,
                        };
                        if len == 0 {
                            return Err(Error::Dimension {
                                path: s.path.clone(),
                                row: Some(i as u64),
                                expected: 1,
                                found: 0,
                            });
                        }
                        return Ok(len);
                    }
                }
            }
        }
        Err(Error::Empty(format!(
            "column `{}` holds no non-null embedding in any input",
            self.name
        )))
    }
}

fn reader(
    s: &Shard,
    column: &str,
    batch_rows: usize,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    column_reader(s, column, batch_rows, true)
}

/// A batch reader over shard `s` that checks `column` exists (an
/// [`Error::EmbeddingColumn`] naming the file otherwise) and reads only that
/// column when `project_only`, else every column.
pub(crate) fn column_reader(
    s: &Shard,
    column: &str,
    batch_rows: usize,
    project_only: bool,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    let b = builder(&s.path)?;
    let idx = b
        .parquet_schema()
        .root_schema()
        .get_fields()
        .iter()
        .position(|f| f.name() == column)
        .ok_or_else(|| Error::EmbeddingColumn {
            path: s.path.clone(),
            reason: format!("no column `{column}`"),
        })?;
    let b = if project_only {
        let mask = ProjectionMask::roots(b.parquet_schema(), [idx]);
        b.with_projection(mask)
    } else {
        b
    };
    b.with_batch_size(batch_rows.max(1))
        .build()
        .map_err(|source| Error::Parquet {
            path: s.path.clone(),
            source,
        })
}

impl EmbeddingSource for ColumnSource {
    fn describe(&self) -> String {
        format!("column `{}`", self.name)
    }

    fn column(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn blocks<'a>(&'a self, shard: &'a Shard, batch_rows: usize) -> Result<BlockIter<'a>> {
        if std::env::var("DPRUNE_PARQUET_FAST").map_or(true, |v| v != "0")
            && let Some(fast) = fast::FslBlocks::open(shard, &self.name, self.dim, batch_rows)?
        {
            return Ok(Box::new(fast));
        }
        let r = reader(shard, &self.name, batch_rows)?;
        let mut next_row = 0u64;
        Ok(Box::new(r.map(move |b| {
            let b = b.map_err(|source| Error::Arrow {
                path: shard.path.clone(),
                source,
            })?;
            let mut block = EmbeddingBlock {
                first_row: next_row,
                ..Default::default()
            };
            append_rows(b.column(0), self.dim, &shard.path, next_row, &mut block)?;
            next_row += b.num_rows() as u64;
            Ok(block)
        })))
    }
}

/// Converts one Arrow list column into rows of f32.
fn append_rows(col: &ArrayRef, dim: usize, path: &Path, first_row: u64, out: &mut EmbeddingBlock) -> Result<()> {
    match col.data_type() {
        DataType::FixedSizeList(_, d) => {
            if *d as usize != dim {
                return Err(Error::Dimension {
                    path: path.to_path_buf(),
                    row: None,
                    expected: dim,
                    found: *d as usize,
                });
            }
            append_fsl(col.as_fixed_size_list(), dim, out);
            Ok(())
        }
        DataType::List(_) => append_list(col.as_list::<i32>(), dim, path, first_row, out),
        DataType::LargeList(_) => append_list(col.as_list::<i64>(), dim, path, first_row, out),
        other => Err(Error::EmbeddingColumn {
            path: path.to_path_buf(),
            reason: format!("embedding column has type {other}, expected a list of floats"),
        }),
    }
}

/// Appends child values `[start, start + len)` as f32; returns whether any was null.
pub(crate) fn push_values(child: &ArrayRef, start: usize, len: usize, out: &mut Vec<f32>) -> bool {
    let has_null = child.null_count() > 0 && (start..start + len).any(|i| child.is_null(i));
    match child.data_type() {
        DataType::Float32 => out.extend_from_slice(&child.as_primitive::<Float32Type>().values()[start..start + len]),
        DataType::Float16 => out.extend(
            child.as_primitive::<Float16Type>().values()[start..start + len]
                .iter()
                .map(|v| v.to_f32()),
        ),
        DataType::Float64 => out.extend(
            child.as_primitive::<Float64Type>().values()[start..start + len]
                .iter()
                .map(|&v| v as f32),
        ),
        _ => unreachable!("callers check the child is Float16/32/64"),
    }
    has_null
}

fn append_fsl(a: &FixedSizeListArray, dim: usize, out: &mut EmbeddingBlock) {
    let child = a.values();
    let n = a.len();
    out.values.reserve(n * dim);
    if a.null_count() == 0 && child.null_count() == 0 {
        // Fast path: one contiguous copy for the whole batch.
        let start = a.value_offset(0).max(0) as usize;
        push_values(child, start, n * dim, &mut out.values);
        out.null.extend(std::iter::repeat_n(false, n));
        return;
    }
    for i in 0..n {
        if a.is_null(i) {
            out.values.extend(std::iter::repeat_n(0.0, dim));
            out.null.push(true);
        } else {
            let had_null = push_values(child, a.value_offset(i) as usize, dim, &mut out.values);
            out.null.push(had_null);
        }
    }
}

fn append_list<O: OffsetSizeTrait>(
    a: &GenericListArray<O>,
    dim: usize,
    path: &Path,
    first_row: u64,
    out: &mut EmbeddingBlock,
) -> Result<()> {
    let child = a.values();
    let offs = a.value_offsets();
    out.values.reserve(a.len() * dim);
    for i in 0..a.len() {
        if a.is_null(i) {
            out.values.extend(std::iter::repeat_n(0.0, dim));
            out.null.push(true);
            continue;
        }
        let (s, e) = (offs[i].as_usize(), offs[i + 1].as_usize());
        if e - s != dim {
            return Err(Error::Dimension {
                path: path.to_path_buf(),
                row: Some(first_row + i as u64),
                expected: dim,
                found: e - s,
            });
        }
        let had_null = push_values(child, s, dim, &mut out.values);
        out.null.push(had_null);
    }
    Ok(())
}

/// LAION-style embedding sidecars: one 2-D `.npy` per shard, matched in
/// order (the i-th sidecar belongs to the i-th shard), row counts checked.
#[derive(Debug, Clone)]
pub struct NpySidecarSource {
    headers: Vec<NpyHeader>,
    dim: usize,
}

impl NpySidecarSource {
    /// Pairs `files` (already expanded and sorted) with the shards.
    pub fn open(data: &Dataset, files: &[PathBuf]) -> Result<Self> {
        if files.len() != data.shards.len() {
            return Err(Error::param(
                "--embeddings",
                format!(
                    "{} .npy files for {} Parquet shards; give exactly one per shard",
                    files.len(),
                    data.shards.len()
                ),
            ));
        }
        let mut headers = Vec::with_capacity(files.len());
        let mut dim = None;
        for (f, s) in files.iter().zip(&data.shards) {
            let h = npy::read_header(f)?;
            if h.rows != s.num_rows {
                return Err(Error::Npy {
                    path: f.clone(),
                    reason: format!(
                        "{} rows, but its shard {} has {} rows",
                        h.rows,
                        s.path.display(),
                        s.num_rows
                    ),
                });
            }
            match dim {
                None => dim = Some(h.cols),
                Some(d) if d != h.cols => {
                    return Err(Error::Dimension {
                        path: f.clone(),
                        row: None,
                        expected: d,
                        found: h.cols,
                    });
                }
                _ => {}
            }
            headers.push(h);
        }
        Ok(NpySidecarSource {
            headers,
            dim: dim.unwrap_or(0),
        })
    }
}

impl EmbeddingSource for NpySidecarSource {
    fn describe(&self) -> String {
        let names: Vec<_> = self.headers.iter().map(|h| h.path.display().to_string()).collect();
        format!("sidecars {}", names.join(", "))
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn blocks<'a>(&'a self, shard: &'a Shard, batch_rows: usize) -> Result<BlockIter<'a>> {
        let h = &self.headers[shard.index];
        let mut r = RowReader::open(h, 0)?;
        let mut next = 0u64;
        let batch = batch_rows.max(1) as u64;
        Ok(Box::new(std::iter::from_fn(move || {
            if next >= h.rows {
                return None;
            }
            let rows = batch.min(h.rows - next) as usize;
            let mut block = EmbeddingBlock {
                first_row: next,
                values: Vec::with_capacity(rows * h.cols),
                null: vec![false; rows],
            };
            next += rows as u64;
            Some(r.read_rows(rows, &mut block.values).map(|_| block))
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::unusable;
    use proptest::prelude::*;

    /// The obvious definition the bit trick must agree with.
    fn slow(x: &[f32], null: bool) -> Option<&'static str> {
        if null {
            Some("null")
        } else if x.iter().any(|v| !v.is_finite()) {
            Some("not finite (NaN or inf)")
        } else if x.iter().all(|&v| v == 0.0) {
            Some("all zeros")
        } else {
            None
        }
    }

    #[test]
    fn unusable_names_each_kind_of_bad_vector() {
        let special = [
            0.0,
            -0.0,
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            -1e-45,
            1.0,
        ];
        assert_eq!(unusable(&[0.0, -0.0, 0.0], false), Some("all zeros"));
        assert_eq!(unusable(&[1e-45, 0.0], false), None);
        assert_eq!(unusable(&[1.0, f32::NAN], false), Some("not finite (NaN or inf)"));
        assert_eq!(
            unusable(&[0.0, f32::NEG_INFINITY], false),
            Some("not finite (NaN or inf)")
        );
        assert_eq!(unusable(&[f32::MAX, -f32::MAX], false), None);
        assert_eq!(unusable(&[1.0], true), Some("null"));
        for &a in &special {
            for &b in &special {
                let x = [0.5, a, 0.0, b];
                assert_eq!(unusable(&x, false), slow(&x, false), "{x:?}");
                let z = [a, b];
                assert_eq!(unusable(&z, false), slow(&z, false), "{z:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn unusable_matches_the_obvious_definition(
            bits in proptest::collection::vec(any::<u32>(), 0..40),
            zeros in proptest::collection::vec(any::<bool>(), 0..40),
        ) {
            // Raw bit patterns cover NaN payloads, infinities and subnormals;
            // the zero mask makes all-zero vectors common.
            let x: Vec<f32> = bits
                .iter()
                .zip(zeros.iter().chain(std::iter::repeat(&false)))
                .map(|(&b, &z)| if z { 0.0 } else { f32::from_bits(b) })
                .collect();
            prop_assert_eq!(unusable(&x, false), slow(&x, false));
        }
    }
}
