//! Fast path for the commonest embedding column: `FixedSizeList<Float32>`
//! stored PLAIN (what pyarrow, Spark and dprune itself write for float
//! vectors). The generic Arrow reader decodes a repetition and a definition
//! level into 16-bit buffers for every one of the N·d floats, builds validity
//! bitmaps and then list offsets; here the decompressed data pages are read
//! directly: the definition levels are only *checked* to be all at their
//! maximum (no null list, no null element — a few RLE runs per page) and the
//! PLAIN values are copied straight into the block. Repetition levels are not
//! needed: with every list present and every element defined, a fixed-size
//! list holds exactly d values per row, which is checked per row group.
//!
//! Anything else — a dictionary page, another encoding, a null anywhere —
//! hands the rest of that row group to the generic Arrow reader (a
//! [`RowSelection`] skips the rows already produced), so the blocks are the
//! same rows with the same values either way; the next row group tries the
//! fast path again. Parquet format: <https://parquet.apache.org/docs/file-format/data-pages/>.

use std::fs::File;
use std::sync::Arc;

use arrow::datatypes::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, RowSelection, RowSelector};
use parquet::basic::{Encoding, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::{EmbeddingBlock, append_rows};
use crate::io::Shard;
use crate::io::inputs::builder;
use crate::{Error, Result};

/// Values of slack in a batch buffer beyond a whole batch: one data page of the usual
/// 1 MiB (larger pages make one more allocation).
const PAGE_SLACK_VALUES: usize = 1 << 18;

/// Blocks of a `FixedSizeList<Float32>` column read page by page (module doc).
pub(crate) struct FslBlocks<'a> {
    shard: &'a Shard,
    file: Arc<SerializedFileReader<File>>,
    /// Index of the embedding's root field (for the fallback's projection).
    root: usize,
    /// Index of its leaf column.
    leaf: usize,
    dim: usize,
    batch_rows: usize,
    max_def: i16,
    max_rep: i16,
    /// Next row group to open.
    next_rg: usize,
    /// Pages of the current row group, when read on the fast path.
    pages: Option<Box<dyn PageReader>>,
    /// Rows of the current row group and values read of it so far.
    rg_rows: usize,
    rg_values: usize,
    /// The generic reader finishing the current row group, after a fallback.
    fallback: Option<ParquetRecordBatchReader>,
    /// Rows read but not yet handed out; `values` may end in a partial row.
    pending: EmbeddingBlock,
    done: bool,
}

impl<'a> FslBlocks<'a> {
    /// The fast reader for `column` of `shard`, or `None` when the column is
    /// not a `FixedSizeList<Float32>` of `dim` stored as one FLOAT leaf.
    pub(crate) fn open(shard: &'a Shard, column: &str, dim: usize, batch_rows: usize) -> Result<Option<Self>> {
        let Some(root) = shard.schema.fields().iter().position(|f| f.name() == column) else {
            return Ok(None);
        };
        match shard.schema.field(root).data_type() {
            DataType::FixedSizeList(item, d) if *d as usize == dim && item.data_type() == &DataType::Float32 => {}
            _ => return Ok(None),
        }
        let f = File::open(&shard.path).map_err(|e| Error::io("opening", &shard.path, e))?;
        let file = SerializedFileReader::new(f).map_err(|source| Error::Parquet {
            path: shard.path.clone(),
            source,
        })?;
        let schema = file.metadata().file_metadata().schema_descr_ptr();
        let leaves: Vec<usize> = (0..schema.num_columns())
            .filter(|&i| schema.get_column_root_idx(i) == root)
            .collect();
        let [leaf] = leaves[..] else {
            return Ok(None);
        };
        let col = schema.column(leaf);
        if col.physical_type() != PhysicalType::FLOAT {
            return Ok(None);
        }
        Ok(Some(FslBlocks {
            shard,
            file: Arc::new(file),
            root,
            leaf,
            dim,
            batch_rows: batch_rows.max(1),
            max_def: col.max_def_level(),
            max_rep: col.max_rep_level(),
            next_rg: 0,
            pages: None,
            rg_rows: 0,
            rg_values: 0,
            fallback: None,
            pending: EmbeddingBlock::default(),
            done: false,
        }))
    }

    fn parquet_err(&self, source: parquet::errors::ParquetError) -> Error {
        perr(self.shard, source)
    }

    /// Reads more rows into `pending`; false at the end of the shard.
    fn fill(&mut self) -> Result<bool> {
        if let Some(r) = self.fallback.as_mut() {
            match r.next() {
                Some(b) => {
                    let b = b.map_err(|source| Error::Arrow {
                        path: self.shard.path.clone(),
                        source,
                    })?;
                    let first = self.pending.first_row + self.pending.rows() as u64;
                    append_rows(b.column(0), self.dim, &self.shard.path, first, &mut self.pending)?;
                    return Ok(true);
                }
                None => self.fallback = None,
            }
        }
        if let Some(pages) = self.pages.as_mut() {
            let shard = self.shard;
            match pages.get_next_page().map_err(|e| perr(shard, e))? {
                Some(page) => {
                    if !self.take_page(&page) {
                        self.fall_back()?;
                    }
                    return Ok(true);
                }
                None => {
                    if self.rg_values != self.rg_rows * self.dim {
                        return Err(Error::Parquet {
                            path: self.shard.path.clone(),
                            source: parquet::errors::ParquetError::General(format!(
                                "row group {} holds {} embedding values for {} rows of dimension {}",
                                self.next_rg - 1,
                                self.rg_values,
                                self.rg_rows,
                                self.dim
                            )),
                        });
                    }
                    self.pages = None;
                }
            }
        }
        if self.next_rg == self.file.num_row_groups() {
            return Ok(false);
        }
        let rg = self.file.get_row_group(self.next_rg).map_err(|e| self.parquet_err(e))?;
        self.rg_rows = rg.metadata().num_rows().max(0) as usize;
        self.rg_values = 0;
        let chunk = rg.metadata().column(self.leaf);
        let plain = chunk.dictionary_page_offset().is_none()
            && chunk.encodings().all(|e| matches!(e, Encoding::PLAIN | Encoding::RLE));
        let pages = rg.get_column_page_reader(self.leaf).map_err(|e| self.parquet_err(e))?;
        drop(rg);
        self.next_rg += 1;
        if plain {
            self.pages = Some(pages);
        } else {
            self.fall_back()?;
        }
        Ok(true)
    }

    /// Appends the values of one page; false when the page is not a PLAIN
    /// page with every level at its maximum (nothing appended then).
    fn take_page(&mut self, page: &Page) -> bool {
        let (buf, n, values) = match page {
            Page::DataPage {
                buf,
                num_values,
                encoding: Encoding::PLAIN,
                def_level_encoding,
                rep_level_encoding,
                ..
            } => {
                let n = *num_values as usize;
                let mut at = 0;
                let mut level = |max: i16, enc: &Encoding, check: bool| -> Option<()> {
                    if max == 0 {
                        return Some(());
                    }
                    if *enc != Encoding::RLE {
                        return None;
                    }
                    let len = u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?) as usize;
                    let data = buf.get(at + 4..at + 4 + len)?;
                    at += 4 + len;
                    if check { all_at(data, max, n) } else { Some(()) }
                };
                if level(self.max_rep, rep_level_encoding, false).is_none()
                    || level(self.max_def, def_level_encoding, true).is_none()
                {
                    return false;
                }
                (buf, n, at)
            }
            Page::DataPageV2 {
                buf,
                num_values,
                encoding: Encoding::PLAIN,
                num_nulls: 0,
                def_levels_byte_len,
                rep_levels_byte_len,
                ..
            } => {
                let n = *num_values as usize;
                let (r, d) = (*rep_levels_byte_len as usize, *def_levels_byte_len as usize);
                if self.max_def > 0 && buf.get(r..r + d).and_then(|l| all_at(l, self.max_def, n)).is_none() {
                    return false;
                }
                (buf, n, r + d)
            }
            _ => return false,
        };
        let Some(bytes) = buf.get(values..values + 4 * n) else {
            return false;
        };
        let v = &mut self.pending.values;
        crate::io::le::extend_f32(v, bytes);
        self.rg_values += n;
        let whole = v.len() / self.dim;
        let rows = self.pending.null.len();
        self.pending.null.extend(std::iter::repeat_n(false, whole - rows));
        true
    }

    /// Hands the rest of the current row group to the generic reader: drops a
    /// partial row, skips the rows already read.
    fn fall_back(&mut self) -> Result<()> {
        let d = self.dim;
        let whole = self.rg_values / d;
        // Values of the current row group past its last whole row.
        let partial = self.rg_values - whole * d;
        let keep = self.pending.values.len() - partial;
        self.pending.values.truncate(keep);
        self.pages = None;
        let rg = self.next_rg - 1;
        let b = builder(&self.shard.path)?;
        let mask = ProjectionMask::roots(b.parquet_schema(), [self.root]);
        let selection = RowSelection::from(vec![
            RowSelector::skip(whole),
            RowSelector::select(self.rg_rows - whole),
        ]);
        let r = b
            .with_row_groups(vec![rg])
            .with_projection(mask)
            .with_row_selection(selection)
            .with_batch_size(self.batch_rows)
            .build()
            .map_err(|e| self.parquet_err(e))?;
        self.fallback = Some(r);
        Ok(())
    }
}

impl Iterator for FslBlocks<'_> {
    type Item = Result<EmbeddingBlock>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        while self.pending.rows() < self.batch_rows {
            match self.fill() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        let rows = self.pending.rows().min(self.batch_rows);
        if rows == 0 {
            self.done = true;
            return None;
        }
        let first = self.pending.first_row;
        // The next batch's buffer holds this batch's size and a page of slack from the start:
        // grown page by page from the leftover's size, it would be copied by each doubling.
        let mut values = Vec::with_capacity(rows * self.dim + PAGE_SLACK_VALUES);
        values.extend_from_slice(&self.pending.values[rows * self.dim..]);
        self.pending.values.truncate(rows * self.dim);
        let null = self.pending.null.split_off(rows);
        let block = EmbeddingBlock {
            first_row: first,
            values: std::mem::replace(&mut self.pending.values, values),
            null: std::mem::replace(&mut self.pending.null, null),
        };
        self.pending.first_row = first + rows as u64;
        Some(Ok(block))
    }
}

fn perr(shard: &Shard, source: parquet::errors::ParquetError) -> Error {
    Error::Parquet {
        path: shard.path.clone(),
        source,
    }
}

/// Whether the RLE/bit-packed hybrid levels in `data` (bit width of `max`)
/// hold `n` values all equal to `max`; `None` otherwise or when malformed.
fn all_at(data: &[u8], max: i16, n: usize) -> Option<()> {
    let bw = (16 - (max as u16).leading_zeros()) as usize;
    let want = max as u64;
    let (mut at, mut left) = (0usize, n);
    while left > 0 {
        // ULEB128 run header.
        let mut header = 0u64;
        let mut shift = 0;
        loop {
            let b = *data.get(at)?;
            at += 1;
            header |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 56 {
                return None;
            }
        }
        let count = (header >> 1) as usize;
        if header & 1 == 0 {
            // RLE run: the value in ceil(bw / 8) little-endian bytes.
            let w = bw.div_ceil(8);
            let mut v = 0u64;
            for (i, &b) in data.get(at..at + w)?.iter().enumerate() {
                v |= u64::from(b) << (8 * i);
            }
            at += w;
            if count == 0 || v != want {
                return None;
            }
            left -= count.min(left);
        } else {
            // Bit-packed groups of 8 values, LSB first.
            let bytes = data.get(at..at + count * bw)?;
            at += count * bw;
            let vals = (count * 8).min(left);
            if count == 0 {
                return None;
            }
            for i in 0..vals {
                let mut v = 0u64;
                for b in 0..bw {
                    let bit = i * bw + b;
                    v |= u64::from((bytes[bit / 8] >> (bit % 8)) & 1) << b;
                }
                if v != want {
                    return None;
                }
            }
            left -= vals;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::embeddings::{ColumnSource, EmbeddingSource};
    use arrow::array::{FixedSizeListArray, Float32Array, RecordBatch};
    use arrow::buffer::NullBuffer;
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    /// Writes `n` rows of `dim` floats in row groups of `rg` rows; rows in
    /// `null_rows` are null lists, values at `null_vals` null elements.
    fn write(
        path: &std::path::Path,
        n: usize,
        dim: usize,
        rg: usize,
        props: WriterProperties,
        nulls: (&[usize], &[usize]),
    ) {
        let item = Arc::new(Field::new("item", DataType::Float32, true));
        let schema = Arc::new(Schema::new(vec![Field::new(
            "emb",
            DataType::FixedSizeList(item.clone(), dim as i32),
            true,
        )]));
        let f = File::create(path).unwrap();
        let mut w = ArrowWriter::try_new(f, schema.clone(), Some(props)).unwrap();
        for start in (0..n).step_by(rg) {
            let m = rg.min(n - start);
            let vals: Vec<Option<f32>> = (0..m * dim)
                .map(|i| {
                    let g = start * dim + i;
                    (!nulls.1.contains(&g)).then_some(g as f32 * 0.5 - 3.0)
                })
                .collect();
            let valid: Vec<bool> = (start..start + m).map(|r| !nulls.0.contains(&r)).collect();
            let a = FixedSizeListArray::try_new(
                item.clone(),
                dim as i32,
                Arc::new(Float32Array::from(vals)),
                Some(NullBuffer::from(valid)),
            )
            .unwrap();
            w.write(&RecordBatch::try_new(schema.clone(), vec![Arc::new(a)]).unwrap())
                .unwrap();
            w.flush().unwrap();
        }
        w.close().unwrap();
    }

    fn collect(it: impl Iterator<Item = Result<EmbeddingBlock>>) -> (Vec<u64>, Vec<f32>, Vec<bool>) {
        let (mut firsts, mut v, mut nl) = (Vec::new(), Vec::new(), Vec::new());
        for b in it {
            let b = b.unwrap();
            firsts.push(b.first_row);
            v.extend(b.values);
            nl.extend(b.null);
        }
        (firsts, v, nl)
    }

    /// Name, writer settings, (null rows, null values).
    type Case<'a> = (&'a str, WriterProperties, (&'a [usize], &'a [usize]));

    #[test]
    fn same_blocks_as_the_generic_reader() {
        let dir = tempfile::tempdir().unwrap();
        let small_pages = || {
            WriterProperties::builder()
                .set_dictionary_enabled(false)
                .set_data_page_size_limit(512)
                .set_write_batch_size(7)
        };
        let cases: Vec<Case> = vec![
            ("plain", small_pages().build(), (&[], &[])),
            (
                "v2",
                small_pages()
                    .set_writer_version(parquet::file::properties::WriterVersion::PARQUET_2_0)
                    .build(),
                (&[], &[]),
            ),
            ("dict", WriterProperties::builder().build(), (&[], &[])),
            // A null list in the second row group and a null element in the third.
            ("nulls", small_pages().build(), (&[45], &[81 * 5 + 2])),
        ];
        for (name, props, nulls) in cases {
            let path = dir.path().join(format!("{name}.parquet"));
            let (n, dim) = (100, 5);
            write(&path, n, dim, 30, props, nulls);
            let shard = Shard::open(0, &path).unwrap();
            let src = ColumnSource::detect(
                &crate::io::Dataset::open(std::slice::from_ref(&path)).unwrap(),
                Some("emb"),
            )
            .unwrap();
            for batch in [1, 7, 30, 64, 1000] {
                let fast = FslBlocks::open(&shard, "emb", dim, batch).unwrap().expect("eligible");
                let generic = super::super::reader(&shard, "emb", batch).unwrap();
                let mut next_row = 0u64;
                let slow = generic.map(|b| {
                    let b = b.unwrap();
                    let mut block = EmbeddingBlock {
                        first_row: next_row,
                        ..Default::default()
                    };
                    append_rows(b.column(0), dim, &path, next_row, &mut block).unwrap();
                    next_row += b.num_rows() as u64;
                    Ok(block)
                });
                let (f1, v1, n1) = collect(fast);
                let (_, v2, n2) = collect(slow);
                assert_eq!(v1.len(), n * dim, "{name} batch {batch}");
                assert_eq!((&v1, &n1), (&v2, &n2), "{name} batch {batch}");
                let want: Vec<u64> = (0..n as u64).step_by(batch).collect();
                assert_eq!(f1, want, "{name} batch {batch}");
                // And through the source (the path the passes take).
                let (_, v3, _) = collect(src.blocks(&shard, batch).unwrap());
                assert_eq!(v3, v1);
            }
            assert_eq!(n1_nulls(&path, dim), nulls.0.len() + usize::from(!nulls.1.is_empty()));
        }
    }

    /// Null rows as the fast reader reports them.
    fn n1_nulls(path: &std::path::Path, dim: usize) -> usize {
        let shard = Shard::open(0, path).unwrap();
        let (_, _, n) = collect(FslBlocks::open(&shard, "emb", dim, 16).unwrap().unwrap());
        n.iter().filter(|&&x| x).count()
    }

    #[test]
    fn level_runs_are_checked() {
        // max 3 (2 bits): an RLE run of 10 threes.
        assert!(all_at(&[20, 3], 3, 10).is_some());
        assert!(all_at(&[20, 2], 3, 10).is_none());
        // Too short a run for n.
        assert!(all_at(&[20, 3], 3, 11).is_none());
        // Bit-packed: one group of 8 values of 3 (0b11 × 8 = 0xFF 0xFF).
        assert!(all_at(&[3, 0xFF, 0xFF], 3, 8).is_some());
        assert!(all_at(&[3, 0xFF, 0xFE], 3, 8).is_none());
        // Padding past n is ignored.
        assert!(all_at(&[3, 0xFF, 0x0F], 3, 6).is_some());
    }
}
