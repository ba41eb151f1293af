//! The input batches a pruned shard is copied from: every column of the
//! shard, in order, [`COPY_BATCH_ROWS`] rows per batch. `FixedSizeList<Float32>`
//! columns (embeddings, most of the bytes) are read by the page-level reader
//! of [`crate::io::embeddings`] instead of Arrow's level decoding; the other
//! columns by Arrow's reader. That reader keeps only a per-row null flag, so
//! when a list column turns out to hold a null (list or element) the batches
//! stop and `Input::fell_back` tells the caller to copy the shard with Arrow's
//! reader alone — the output is the same either way.

use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, FieldRef};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReader;

use super::COPY_BATCH_ROWS;
use crate::io::Shard;
use crate::io::embeddings::fast::FslBlocks;
use crate::io::inputs::builder;
use crate::{Error, Result};

/// Batches of one shard (module doc).
pub(super) struct Input<'a> {
    shard: &'a Shard,
    /// Arrow's reader: every column, or (fast) the non-list columns.
    arrow: Option<ParquetRecordBatchReader>,
    /// Shard column of each column `arrow` yields (fast only).
    arrow_cols: Vec<usize>,
    /// The list columns read page by page: shard column, item field, size, blocks.
    lists: Vec<(usize, FieldRef, i32, FslBlocks<'a>)>,
    fell_back: bool,
}

impl<'a> Input<'a> {
    /// Opens `shard`; `fast` = false reads everything with Arrow's reader.
    pub(super) fn open(shard: &'a Shard, fast: bool) -> Result<Self> {
        let perr = |source| Error::Parquet {
            path: shard.path.clone(),
            source,
        };
        let mut lists = Vec::new();
        if fast {
            for (i, f) in shard.schema.fields().iter().enumerate() {
                if let DataType::FixedSizeList(item, d) = f.data_type()
                    && item.data_type() == &DataType::Float32
                    && let Some(b) = FslBlocks::open(shard, f.name(), *d as usize, COPY_BATCH_ROWS)?
                {
                    lists.push((i, item.clone(), *d, b));
                }
            }
        }
        let n = shard.schema.fields().len();
        let arrow_cols: Vec<usize> = (0..n).filter(|i| !lists.iter().any(|l| l.0 == *i)).collect();
        let arrow = if lists.is_empty() {
            Some(
                builder(&shard.path)?
                    .with_batch_size(COPY_BATCH_ROWS)
                    .build()
                    .map_err(perr)?,
            )
        } else if arrow_cols.is_empty() {
            None
        } else {
            let b = builder(&shard.path)?;
            let mask = ProjectionMask::roots(b.parquet_schema(), arrow_cols.iter().copied());
            Some(
                b.with_projection(mask)
                    .with_batch_size(COPY_BATCH_ROWS)
                    .build()
                    .map_err(perr)?,
            )
        };
        Ok(Input {
            shard,
            arrow,
            arrow_cols,
            lists,
            fell_back: false,
        })
    }

    /// Whether the batches stopped early (a null in a list column, or batches of
    /// the two readers that do not line up): copy with Arrow's reader alone.
    pub(super) fn fell_back(&self) -> bool {
        self.fell_back
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let shard = self.shard;
        let aerr = |source| Error::Arrow {
            path: shard.path.clone(),
            source,
        };
        let other = match self.arrow.as_mut().map(|r| r.next()) {
            Some(Some(b)) => Some(b.map_err(aerr)?),
            Some(None) => None,
            None => None,
        };
        if self.lists.is_empty() {
            return Ok(other);
        }
        let n = shard.schema.fields().len();
        let mut cols: Vec<Option<ArrayRef>> = vec![None; n];
        let mut rows = other.as_ref().map(RecordBatch::num_rows);
        if let Some(o) = &other {
            for (c, a) in self.arrow_cols.iter().zip(o.columns()) {
                cols[*c] = Some(a.clone());
            }
        }
        for (c, item, d, blocks) in &mut self.lists {
            let Some(b) = blocks.next().transpose()? else {
                self.fell_back = rows.is_some_and(|r| r > 0);
                return Ok(None);
            };
            if b.null.iter().any(|&x| x) || *rows.get_or_insert(b.rows()) != b.rows() {
                self.fell_back = true;
                return Ok(None);
            }
            let values = Arc::new(Float32Array::from(b.values));
            let a = FixedSizeListArray::try_new(item.clone(), *d, values, None).map_err(aerr)?;
            cols[*c] = Some(Arc::new(a));
        }
        let cols: Vec<ArrayRef> = cols.into_iter().map(|c| c.expect("every column read")).collect();
        RecordBatch::try_new(shard.schema.clone(), cols).map(Some).map_err(aerr)
    }
}

impl Iterator for Input<'_> {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::buffer::NullBuffer;
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::ArrowWriter;

    fn write(path: &std::path::Path, n: usize, null_row: Option<usize>) {
        let item = Arc::new(Field::new("item", DataType::Float32, true));
        let schema = Arc::new(Schema::new(vec![
            Field::new("text", DataType::Utf8, true),
            Field::new("emb", DataType::FixedSizeList(item.clone(), 3), true),
        ]));
        let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema.clone(), None).unwrap();
        let text = StringArray::from_iter_values((0..n).map(|i| format!("row {i}")));
        let vals = Float32Array::from_iter_values((0..n * 3).map(|v| v as f32 * 0.25));
        let valid = NullBuffer::from((0..n).map(|i| Some(i) != null_row).collect::<Vec<_>>());
        let emb = FixedSizeListArray::try_new(item, 3, Arc::new(vals), Some(valid)).unwrap();
        let b = RecordBatch::try_new(schema, vec![Arc::new(text), Arc::new(emb)]).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn fast_batches_equal_arrows_or_fall_back() {
        let dir = tempfile::tempdir().unwrap();
        for (name, null_row) in [("clean", None), ("null", Some(COPY_BATCH_ROWS + 5))] {
            let path = dir.path().join(format!("{name}.parquet"));
            let n = COPY_BATCH_ROWS * 2 + 17;
            write(&path, n, null_row);
            let shard = Shard::open(0, &path).unwrap();
            let slow: Vec<RecordBatch> = Input::open(&shard, false).unwrap().map(|b| b.unwrap()).collect();
            let mut fast_in = Input::open(&shard, true).unwrap();
            assert_eq!(fast_in.lists.len(), 1);
            let fast: Vec<RecordBatch> = (&mut fast_in).map(|b| b.unwrap()).collect();
            if null_row.is_some() {
                assert!(fast_in.fell_back());
            } else {
                assert!(!fast_in.fell_back());
                assert_eq!(fast, slow);
            }
            // And the written shard is the same either way.
            let keep: Vec<bool> = (0..n).map(|i| i % 3 != 1).collect();
            let dest = dir.path().join(format!("{name}.out.parquet"));
            let reported = std::sync::atomic::AtomicU64::new(0);
            let count = |r: u64| {
                reported.fetch_add(r, std::sync::atomic::Ordering::Relaxed);
            };
            let written = super::super::write_filtered(&shard, &keep, &[], &dest, &count).unwrap();
            assert_eq!(written as usize, keep.iter().filter(|&&k| k).count());
            // Progress counts every input row once, also when the fast reader fell back.
            assert_eq!(reported.into_inner(), n as u64, "{name}");
            let out = Shard::open(0, &dest).unwrap();
            let got: Vec<RecordBatch> = Input::open(&out, false).unwrap().map(|b| b.unwrap()).collect();
            let all = arrow::compute::concat_batches(&shard.schema, &slow).unwrap();
            let mask = arrow::array::BooleanArray::from(keep);
            let want = arrow::compute::filter_record_batch(&all, &mask).unwrap();
            assert_eq!(arrow::compute::concat_batches(&out.schema, &got).unwrap(), want);
        }
    }
}
