//! The input batches a pruned shard is copied from: every column of the
//! shard, in order, [`COPY_BATCH_ROWS`] rows per batch. `FixedSizeList<Float32>`
//! columns (embeddings, most of the bytes) are read by the page-level reader
//! of [`crate::io::embeddings`] instead of Arrow's level decoding; the other
//! columns by Arrow's reader. That reader keeps only a per-row null flag, so
//! when a list column turns out to hold a null (list or element) the batches
//! stop and `Input::fell_back` tells the caller to copy the shard with Arrow's
//! reader alone — the output is the same either way. One column can be left out
//! (`skip`): its values come from elsewhere ([`super::Prefetched`]).

use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, FieldRef, SchemaRef};
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
    /// The shard column left out, if any.
    skip: Option<usize>,
    /// The schema of the batches: the shard's, less the skipped column.
    schema: SchemaRef,
    /// Rows not yet handed out, for a shard whose only column is skipped.
    bare_rows: Option<u64>,
}

impl<'a> Input<'a> {
    /// Opens `shard`; `fast` = false reads everything with Arrow's reader.
    /// Column `skip`, if any, is not read: the batches hold the other columns.
    pub(super) fn open(shard: &'a Shard, fast: bool, skip: Option<usize>) -> Result<Self> {
        let perr = |source| Error::Parquet {
            path: shard.path.clone(),
            source,
        };
        let mut lists = Vec::new();
        if fast {
            for (i, f) in shard.schema.fields().iter().enumerate() {
                if Some(i) != skip
                    && let DataType::FixedSizeList(item, d) = f.data_type()
                    && item.data_type() == &DataType::Float32
                    && let Some(b) = FslBlocks::open(shard, f.name(), *d as usize, COPY_BATCH_ROWS)?
                {
                    lists.push((i, item.clone(), *d, b));
                }
            }
        }
        let n = shard.schema.fields().len();
        let arrow_cols: Vec<usize> = (0..n)
            .filter(|i| Some(*i) != skip && !lists.iter().any(|l| l.0 == *i))
            .collect();
        let read: Vec<usize> = (0..n).filter(|&i| Some(i) != skip).collect();
        let schema = match skip {
            Some(_) => Arc::new(shard.schema.project(&read).map_err(|source| Error::Arrow {
                path: shard.path.clone(),
                source,
            })?),
            None => shard.schema.clone(),
        };
        let arrow = if lists.is_empty() && skip.is_none() {
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
            skip,
            schema,
            bare_rows: read.is_empty().then_some(shard.num_rows),
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
        if let Some(left) = self.bare_rows.as_mut() {
            // Nothing to read but the row count.
            let n = (*left).min(super::COPY_BATCH_ROWS as u64) as usize;
            *left -= n as u64;
            let opts = RecordBatchOptions::new().with_row_count(Some(n));
            return match n {
                0 => Ok(None),
                _ => RecordBatch::try_new_with_options(self.schema.clone(), vec![], &opts)
                    .map(Some)
                    .map_err(aerr),
            };
        }
        if self.lists.is_empty() {
            return Ok(other);
        }
        // Column c of the shard is column `at(c)` of the batch (the skipped one left out).
        let skip = self.skip;
        let at = move |c: usize| c - usize::from(skip.is_some_and(|s| s < c));
        let mut cols: Vec<Option<ArrayRef>> = vec![None; self.schema.fields().len()];
        let mut rows = other.as_ref().map(RecordBatch::num_rows);
        if let Some(o) = &other {
            for (c, a) in self.arrow_cols.iter().zip(o.columns()) {
                cols[at(*c)] = Some(a.clone());
            }
        }
        let mut lists = std::mem::take(&mut self.lists);
        let done = self.read_lists(&mut lists, &mut cols, &mut rows, &at);
        self.lists = lists;
        if !done? {
            return Ok(None);
        }
        let cols: Vec<ArrayRef> = cols.into_iter().map(|c| c.expect("every column read")).collect();
        RecordBatch::try_new(self.schema.clone(), cols).map(Some).map_err(aerr)
    }

    /// Reads the next block of every list column into `cols`; false when the batches
    /// stop (end of the shard, or a fallback).
    fn read_lists(
        &mut self,
        lists: &mut [(usize, FieldRef, i32, FslBlocks<'a>)],
        cols: &mut [Option<ArrayRef>],
        rows: &mut Option<usize>,
        at: &dyn Fn(usize) -> usize,
    ) -> Result<bool> {
        let shard = self.shard;
        let aerr = |source| Error::Arrow {
            path: shard.path.clone(),
            source,
        };
        for (c, item, d, blocks) in lists.iter_mut() {
            let Some(b) = blocks.next().transpose()? else {
                self.fell_back = rows.is_some_and(|r| r > 0);
                return Ok(false);
            };
            if b.null.iter().any(|&x| x) || *rows.get_or_insert(b.rows()) != b.rows() {
                self.fell_back = true;
                return Ok(false);
            }
            let values = Arc::new(Float32Array::from(b.values));
            let a = FixedSizeListArray::try_new(item.clone(), *d, values, None).map_err(aerr)?;
            cols[at(*c)] = Some(Arc::new(a));
        }
        Ok(true)
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
            let slow: Vec<RecordBatch> = Input::open(&shard, false, None).unwrap().map(|b| b.unwrap()).collect();
            let mut fast_in = Input::open(&shard, true, None).unwrap();
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
            let written = super::super::write_filtered(&shard, &keep, &[], &dest, &count, None).unwrap();
            assert_eq!(written as usize, keep.iter().filter(|&&k| k).count());
            // Progress counts every input row once, also when the fast reader fell back.
            assert_eq!(reported.into_inner(), n as u64, "{name}");
            let out = Shard::open(0, &dest).unwrap();
            let got: Vec<RecordBatch> = Input::open(&out, false, None).unwrap().map(|b| b.unwrap()).collect();
            let all = arrow::compute::concat_batches(&shard.schema, &slow).unwrap();
            let mask = arrow::array::BooleanArray::from(keep);
            let want = arrow::compute::filter_record_batch(&all, &mask).unwrap();
            assert_eq!(arrow::compute::concat_batches(&out.schema, &got).unwrap(), want);
        }
    }

    /// A shard `text, emb, aux, id` (`emb` and `aux` 3-float lists; `aux` null at
    /// `aux_null`), or `emb` alone.
    fn write_wide(path: &std::path::Path, n: usize, aux_null: Option<usize>, emb_only: bool) {
        use arrow::array::Int64Array;
        let item = Arc::new(Field::new("item", DataType::Float32, true));
        let list = |scale: f32, null: Option<usize>| {
            let vals = Float32Array::from_iter_values((0..n * 3).map(|v| (v as f32 * scale).sin()));
            let valid = null.map(|r| NullBuffer::from((0..n).map(|i| i != r).collect::<Vec<_>>()));
            Arc::new(FixedSizeListArray::try_new(item.clone(), 3, Arc::new(vals), valid).unwrap()) as ArrayRef
        };
        let emb_field = Field::new("emb", DataType::FixedSizeList(item.clone(), 3), true);
        let (fields, cols) = if emb_only {
            (vec![emb_field], vec![list(0.37, None)])
        } else {
            (
                vec![
                    Field::new("text", DataType::Utf8, true),
                    emb_field,
                    Field::new("aux", DataType::FixedSizeList(item.clone(), 3), true),
                    Field::new("id", DataType::Int64, false),
                ],
                vec![
                    Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("row {i}")))) as ArrayRef,
                    list(0.37, None),
                    list(1.1, aux_null),
                    Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i * 7))) as ArrayRef,
                ],
            )
        };
        let schema = Arc::new(Schema::new(fields));
        let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema.clone(), None).unwrap();
        w.write(&RecordBatch::try_new(schema, cols).unwrap()).unwrap();
        w.close().unwrap();
    }

    fn read_all(path: &std::path::Path) -> RecordBatch {
        let shard = Shard::open(0, path).unwrap();
        let got: Vec<RecordBatch> = Input::open(&shard, false, None).unwrap().map(|b| b.unwrap()).collect();
        arrow::compute::concat_batches(&shard.schema, &got).unwrap()
    }

    #[test]
    fn a_prefetched_column_writes_the_same_shard() {
        use crate::io::writer::{ExtraColumn, ExtraValues, Prefetched, write_filtered};
        let dir = tempfile::tempdir().unwrap();
        let n = COPY_BATCH_ROWS * 2 + 17;
        let keep: Vec<bool> = (0..n).map(|i| i % 3 == 1 || i == n - 1).collect();
        let score: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let extra = [ExtraColumn {
            name: "dprune_score",
            values: ExtraValues::F32(&score),
            valid: None,
        }];
        // Clean shards (fast path), one whose other list column holds a null (the copy
        // falls back to Arrow's reader and reopens the stream), and one of `emb` alone.
        for (name, aux_null, emb_only) in [
            ("clean", None, false),
            ("aux_null", Some(COPY_BATCH_ROWS + 3), false),
            ("emb_only", None, true),
        ] {
            let path = dir.path().join(format!("{name}.parquet"));
            write_wide(&path, n, aux_null, emb_only);
            let shard = Shard::open(0, &path).unwrap();
            // The copies hold every kept row and some others (every 5th), as the score
            // pass's would; the values are the column's, as little-endian bytes.
            let all = read_all(&path);
            let emb = all.column_by_name("emb").unwrap();
            let emb = emb.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
            let vals = emb.values().as_any().downcast_ref::<Float32Array>().unwrap();
            let rows: Vec<u32> = (0..n as u32).filter(|&i| keep[i as usize] || i % 5 == 0).collect();
            let bytes: Vec<u8> = rows
                .iter()
                .flat_map(|&r| vals.values()[r as usize * 3..r as usize * 3 + 3].to_vec())
                .flat_map(f32::to_le_bytes)
                .collect();
            let opened = std::sync::atomic::AtomicU64::new(0);
            let open = || -> Result<Box<dyn std::io::Read>> {
                opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(Box::new(std::io::Cursor::new(bytes.clone())))
            };
            let pre = Prefetched {
                column: "emb",
                rows: &rows,
                open: &open,
            };
            let want_path = dir.path().join(format!("{name}.want.parquet"));
            let got_path = dir.path().join(format!("{name}.got.parquet"));
            let a = write_filtered(&shard, &keep, &extra, &want_path, &|_| {}, None).unwrap();
            let b = write_filtered(&shard, &keep, &extra, &got_path, &|_| {}, Some(&pre)).unwrap();
            assert_eq!(a, b);
            assert_eq!(read_all(&got_path), read_all(&want_path), "{name}");
            // The fallback copy reads the stream again from its start.
            let want_opens = if aux_null.is_some() { 2 } else { 1 };
            assert_eq!(opened.into_inner(), want_opens, "{name}");

            // A kept row missing from the copies is an error, and no file is left.
            let short: Vec<u32> = rows.iter().copied().filter(|&r| r != 4).collect();
            let bytes_short: Vec<u8> = short
                .iter()
                .flat_map(|&r| vals.values()[r as usize * 3..r as usize * 3 + 3].to_vec())
                .flat_map(f32::to_le_bytes)
                .collect();
            let open_short =
                || -> Result<Box<dyn std::io::Read>> { Ok(Box::new(std::io::Cursor::new(bytes_short.clone()))) };
            let pre = Prefetched {
                column: "emb",
                rows: &short,
                open: &open_short,
            };
            let bad = dir.path().join(format!("{name}.bad.parquet"));
            let err = write_filtered(&shard, &keep, &extra, &bad, &|_| {}, Some(&pre)).unwrap_err();
            assert!(err.to_string().contains("kept row 4 was not prefetched"), "{err}");
            assert!(!bad.exists());
            // A truncated stream is an error naming the shard.
            let open_cut = || -> Result<Box<dyn std::io::Read>> {
                Ok(Box::new(std::io::Cursor::new(bytes[..bytes.len() / 2].to_vec())))
            };
            let pre = Prefetched {
                column: "emb",
                rows: &rows,
                open: &open_cut,
            };
            let err = write_filtered(&shard, &keep, &extra, &bad, &|_| {}, Some(&pre)).unwrap_err();
            assert!(err.to_string().contains(&format!("{name}.parquet")), "{err}");
            assert!(!bad.exists());
        }
    }

    #[test]
    fn vector_elements_get_no_statistics_and_top_level_columns_do() {
        use crate::io::writer::{ExtraColumn, ExtraValues, write_filtered};
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        let n = 50;
        let path = dir.path().join("in.parquet");
        write_wide(&path, n, None, false);
        let shard = Shard::open(0, &path).unwrap();
        let score: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let extra = [ExtraColumn {
            name: "dprune_score",
            values: ExtraValues::F32(&score),
            valid: None,
        }];
        let dest = dir.path().join("out.parquet");
        write_filtered(&shard, &vec![true; n], &extra, &dest, &|_| {}, None).unwrap();
        let file = SerializedFileReader::new(std::fs::File::open(&dest).unwrap()).unwrap();
        let rg = file.metadata().row_group(0);
        let stats = |name: &str| {
            let c = (0..rg.num_columns())
                .find(|&c| rg.column(c).column_path().parts()[0] == name)
                .unwrap_or_else(|| panic!("no column {name}"));
            rg.column(c).statistics().is_some()
        };
        assert!(!stats("emb") && !stats("aux"));
        assert!(stats("dprune_score") && stats("id") && stats("text"));
    }

    #[test]
    fn a_prefetched_shard_has_arrows_row_groups_and_pages_the_fast_reader_takes() {
        use crate::io::writer::{DEFAULT_ROW_GROUP_ROWS, Prefetched, write_filtered};
        use arrow::array::AsArray;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        // Two full row groups and a partial third once pruned, batches split across them.
        let n = DEFAULT_ROW_GROUP_ROWS * 2 + DEFAULT_ROW_GROUP_ROWS / 2 + 7;
        let path = dir.path().join("in.parquet");
        write_wide(&path, n, None, false);
        let shard = Shard::open(0, &path).unwrap();
        let keep: Vec<bool> = (0..n).map(|i| i % 17 != 3).collect();
        let all = read_all(&path);
        let emb = all.column_by_name("emb").unwrap().as_fixed_size_list().clone();
        let vals = emb
            .values()
            .as_primitive::<arrow::datatypes::Float32Type>()
            .values()
            .to_vec();
        let rows: Vec<u32> = (0..n as u32).filter(|&i| keep[i as usize]).collect();
        let bytes: Vec<u8> = rows
            .iter()
            .flat_map(|&r| vals[r as usize * 3..r as usize * 3 + 3].to_vec())
            .flat_map(f32::to_le_bytes)
            .collect();
        let open = || -> Result<Box<dyn std::io::Read>> { Ok(Box::new(std::io::Cursor::new(bytes.clone()))) };
        let pre = Prefetched {
            column: "emb",
            rows: &rows,
            open: &open,
        };
        let (want, got) = (dir.path().join("want.parquet"), dir.path().join("got.parquet"));
        write_filtered(&shard, &keep, &[], &want, &|_| {}, None).unwrap();
        write_filtered(&shard, &keep, &[], &got, &|_| {}, Some(&pre)).unwrap();
        assert_eq!(read_all(&got), read_all(&want));
        let layout = |p: &std::path::Path| {
            let f = SerializedFileReader::new(std::fs::File::open(p).unwrap()).unwrap();
            let m = f.metadata();
            let kv = m.file_metadata().key_value_metadata().cloned();
            let groups: Vec<i64> = m.row_groups().iter().map(|g| g.num_rows()).collect();
            let enc: Vec<_> = m
                .row_groups()
                .iter()
                .map(|g| g.column(1).encodings().collect::<Vec<_>>())
                .collect();
            (groups, enc, kv)
        };
        let (g_got, enc_got, kv_got) = layout(&got);
        assert_eq!(g_got.len(), 3);
        assert_eq!((g_got.clone(), enc_got, kv_got), layout(&want));
        assert_eq!(g_got.iter().sum::<i64>() as usize, rows.len());
        // The written vectors take the page-level float path when read back.
        let out = Shard::open(0, &got).unwrap();
        let mut fast = Input::open(&out, true, None).unwrap();
        let n_fast: usize = (&mut fast).map(|b| b.unwrap().num_rows()).sum();
        assert!(!fast.fell_back());
        assert_eq!(n_fast, rows.len());
    }
}
