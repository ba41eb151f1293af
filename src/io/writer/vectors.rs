//! Writing a pruned shard whose embedding column is a top-level
//! `FixedSizeList<Float32>` without nulls (the column `filter` prefetches).
//!
//! Arrow's writer ([`ArrowWriter`]) computes a repetition and a definition level
//! for every value of a list column, then gathers the values through an index
//! per value: for 384-float vectors that was a quarter of writing a pruned
//! shard, more than the column's compression. Here that column's levels are the
//! same for every row and computed once (definition: every list and element
//! present; repetition: 0 at a row's first value, 1 after), and its values go
//! to Parquet's column writer as they lie in the array. Every other column goes
//! through Arrow's column writers exactly as [`ArrowWriter`] would, with the
//! same properties and the Arrow schema in the footer; row groups close at
//! [`DEFAULT_ROW_GROUP_ROWS`] rows or about [`DEFAULT_ROW_GROUP_BYTES`], like
//! Arrow's writer with [`writer_properties`](super::writer_properties). Parquet
//! levels: <https://parquet.apache.org/docs/file-format/nestedencoding/>.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowRowGroupWriterFactory, compute_leaves};
use parquet::data_type::FloatType;
use parquet::errors::{ParquetError, Result};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use super::{DEFAULT_ROW_GROUP_BYTES, DEFAULT_ROW_GROUP_ROWS};
use crate::io::direct::OutputFile;

/// Rows of vector values handed to Parquet's column writer at a time (the
/// length of the precomputed level buffers).
const LEVEL_ROWS: usize = 1024;

/// A Parquet writer with one vector column written from its values (module doc).
pub(super) struct VectorShardWriter {
    file: SerializedFileWriter<OutputFile>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// The vector column's index in `schema`, and its Parquet leaf.
    column: usize,
    leaf: usize,
    /// Parquet leaves of each field of `schema`.
    leaves: Vec<usize>,
    dim: usize,
    /// Levels of [`LEVEL_ROWS`] rows of the vector column.
    def: Vec<i16>,
    rep: Vec<i16>,
    /// Batches of the row group being gathered, their rows and estimated bytes.
    pending: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
}

impl VectorShardWriter {
    /// A writer of `schema` to `file` whose field `column`, a top-level
    /// `FixedSizeList<Float32>` of size > 0, is written from its values.
    pub(super) fn try_new(file: OutputFile, schema: SchemaRef, props: WriterProperties, column: usize) -> Result<Self> {
        let dim = match schema.field(column).data_type() {
            DataType::FixedSizeList(item, d) if item.data_type() == &DataType::Float32 && *d > 0 => *d as usize,
            other => return Err(ParquetError::General(format!("not a vector column: {other}"))),
        };
        let (file, factory) = ArrowWriter::try_new(file, schema.clone(), Some(props))?.into_serialized_writer()?;
        let descr = file.schema_descr();
        let mut leaves = vec![0usize; schema.fields().len()];
        for l in 0..descr.num_columns() {
            leaves[descr.get_column_root_idx(l)] += 1;
        }
        let leaf: usize = leaves[..column].iter().sum();
        let c = descr.column(leaf);
        if leaves[column] != 1 || c.max_rep_level() != 1 {
            return Err(ParquetError::General(format!(
                "vector column {column}: {} leaves, repetition level {}",
                leaves[column],
                c.max_rep_level()
            )));
        }
        let def = vec![c.max_def_level(); LEVEL_ROWS * dim];
        let rep: Vec<i16> = (0..LEVEL_ROWS * dim).map(|i| i16::from(i % dim != 0)).collect();
        Ok(VectorShardWriter {
            file,
            factory,
            schema,
            column,
            leaf,
            leaves,
            dim,
            def,
            rep,
            pending: Vec::new(),
            rows: 0,
            bytes: 0,
        })
    }

    /// Adds the rows of `batch` (of the writer's schema; the vector column without
    /// nulls), closing row groups as they fill.
    pub(super) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let row_bytes = (batch.get_array_memory_size() / n).max(1);
        let mut at = 0;
        while at < n {
            let room = (DEFAULT_ROW_GROUP_BYTES.saturating_sub(self.bytes) / row_bytes)
                .min(DEFAULT_ROW_GROUP_ROWS - self.rows);
            let take = match room.min(n - at) {
                0 if self.rows > 0 => {
                    self.flush()?;
                    continue;
                }
                0 => 1,
                t => t,
            };
            self.pending.push(batch.slice(at, take));
            self.rows += take;
            self.bytes += take * row_bytes;
            at += take;
            if self.rows >= DEFAULT_ROW_GROUP_ROWS || self.bytes >= DEFAULT_ROW_GROUP_BYTES {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Writes the gathered rows as one row group.
    fn flush(&mut self) -> Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.pending);
        (self.rows, self.bytes) = (0, 0);
        let mut writers = self
            .factory
            .create_column_writers(self.file.flushed_row_groups().len())?;
        let mut first = 0;
        for (f, field) in self.schema.fields().iter().enumerate() {
            if f != self.column {
                for b in &batches {
                    for (w, leaf) in writers[first..].iter_mut().zip(compute_leaves(field, b.column(f))?) {
                        w.write(&leaf)?;
                    }
                }
            }
            first += self.leaves[f];
        }
        let mut rg = self.file.next_row_group()?;
        for (leaf, w) in writers.into_iter().enumerate() {
            if leaf != self.leaf {
                w.close()?.append_to_row_group(&mut rg)?;
                continue;
            }
            let mut col = rg
                .next_column()?
                .ok_or_else(|| ParquetError::General("row group has no vector column".into()))?;
            let typed = col.typed::<FloatType>();
            for b in &batches {
                let list = b.column(self.column).as_fixed_size_list();
                let values = list.values().as_primitive::<Float32Type>();
                if list.null_count() > 0 || values.null_count() > 0 || values.len() != list.len() * self.dim {
                    return Err(ParquetError::General("vector column with nulls".into()));
                }
                for chunk in values.values().chunks(LEVEL_ROWS * self.dim) {
                    typed.write_batch(chunk, Some(&self.def[..chunk.len()]), Some(&self.rep[..chunk.len()]))?;
                }
            }
            col.close()?;
        }
        rg.close()?;
        Ok(())
    }

    /// Writes the last row group and the footer; returns the file.
    pub(super) fn into_inner(mut self) -> Result<OutputFile> {
        self.flush()?;
        self.file.into_inner()
    }
}
