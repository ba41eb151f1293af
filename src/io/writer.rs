//! Writing pruned shards and score tables as Parquet.
//!
//! A pruned shard keeps the input's schema (fields, types, metadata) and
//! row order; only rows flagged in `keep` are written, optionally with
//! extra columns appended. Files are zstd-compressed, with row groups of at
//! most [`DEFAULT_ROW_GROUP_ROWS`] rows and about [`DEFAULT_ROW_GROUP_BYTES`]
//! bytes, and are written under a temporary name, renamed when complete.
//! Shards are read with the page-level reader for float-vector columns
//! where it applies (`input`).

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Int32Array, Int64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, compute_leaves};
use parquet::basic::{Compression, Type as PhysicalType, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use rayon::prelude::*;

use crate::io::direct::OutputFile;
use crate::io::{AtomicFile, Dataset, Shard};
use crate::{Error, Result};
use vectors::VectorShardWriter;

mod input;
mod vectors;

/// Largest row group, in rows.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 64 * 1024;
/// Row groups are closed once they hold about this many bytes (rows with
/// images can be large).
pub const DEFAULT_ROW_GROUP_BYTES: usize = 128 << 20;
/// zstd level of written files.
pub const ZSTD_LEVEL: i32 = 3;
/// zstd level of floating-point columns (embeddings): their mantissas are
/// nearly incompressible, so level 3 costs twice the time of level 1 for
/// about the same size (Arrow C++, hence pyarrow, writes level 1 too).
pub const FLOAT_ZSTD_LEVEL: i32 = 1;
/// Rows per batch when copying shards (small: rows may carry images).
pub const COPY_BATCH_ROWS: usize = 4096;

/// Writer settings for every Parquet file dprune writes, for files of
/// `schema`: zstd at [`ZSTD_LEVEL`], row groups of at most
/// [`DEFAULT_ROW_GROUP_ROWS`] rows and about [`DEFAULT_ROW_GROUP_BYTES`];
/// floating-point leaf columns (embeddings, scores) without a dictionary and
/// at [`FLOAT_ZSTD_LEVEL`]. Distinct floats make a dictionary useless: the
/// writer would hash a megabyte of values per row group before giving up,
/// and a dictionary page would keep readers off the page-level float path.
/// Floats inside lists (the elements of embedding vectors) get no min/max
/// statistics: no query prunes on an element of a vector, and computing them
/// was a tenth of writing a pruned shard. Top-level floats (scores) keep them.
pub fn writer_properties(schema: &Schema) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(ZSTD_LEVEL).expect("valid zstd level"),
        ))
        .set_max_row_group_row_count(Some(DEFAULT_ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(DEFAULT_ROW_GROUP_BYTES))
        .set_created_by(format!("dprune {}", env!("CARGO_PKG_VERSION")));
    // A schema Parquet cannot hold gets no per-column settings: the writer reports it.
    if let Ok(desc) = parquet::arrow::ArrowSchemaConverter::new().convert(schema) {
        let float_level = Compression::ZSTD(ZstdLevel::try_new(FLOAT_ZSTD_LEVEL).expect("valid zstd level"));
        for col in desc.columns() {
            if matches!(col.physical_type(), PhysicalType::FLOAT | PhysicalType::DOUBLE) {
                b = b
                    .set_column_dictionary_enabled(col.path().clone(), false)
                    .set_column_compression(col.path().clone(), float_level);
                if col.max_rep_level() > 0 {
                    b = b.set_column_statistics_enabled(col.path().clone(), EnabledStatistics::None);
                }
            }
        }
    }
    b.build()
}

/// Column added by `filter --with-scores`: the row's cluster.
pub const CLUSTER_COLUMN: &str = "dprune_cluster";
/// Column added by `filter --with-scores`: the row's score.
pub const SCORE_COLUMN: &str = "dprune_score";

/// Values of an extra per-row column, one per row of the shard.
#[derive(Debug, Clone, Copy)]
pub enum ExtraValues<'a> {
    /// Written as `int32` (cluster ids).
    I32(&'a [i32]),
    /// Written as `float32` (scores).
    F32(&'a [f32]),
    /// Written as `int64` (row ids).
    I64(&'a [i64]),
}

/// A column appended to written shards (e.g. `dprune_score`).
#[derive(Debug, Clone, Copy)]
pub struct ExtraColumn<'a> {
    /// Column name; an input column of the same name is replaced.
    pub name: &'a str,
    /// One value per row of the shard.
    pub values: ExtraValues<'a>,
    /// Rows whose value is null (`false`), if any.
    pub valid: Option<&'a [bool]>,
}

impl ExtraColumn<'_> {
    fn data_type(&self) -> DataType {
        match self.values {
            ExtraValues::I32(_) => DataType::Int32,
            ExtraValues::F32(_) => DataType::Float32,
            ExtraValues::I64(_) => DataType::Int64,
        }
    }

    /// The values at `rows` (shard row indices).
    fn gather(&self, rows: &[usize]) -> ArrayRef {
        let ok = |i: usize| self.valid.is_none_or(|v| v[i]);
        match self.values {
            ExtraValues::I32(v) => Arc::new(rows.iter().map(|&i| ok(i).then(|| v[i])).collect::<Int32Array>()),
            ExtraValues::F32(v) => Arc::new(rows.iter().map(|&i| ok(i).then(|| v[i])).collect::<Float32Array>()),
            ExtraValues::I64(v) => Arc::new(rows.iter().map(|&i| ok(i).then(|| v[i])).collect::<Int64Array>()),
        }
    }
}

/// The values of one `FixedSizeList<Float32>` column for some rows of a shard,
/// kept elsewhere: `filter` copies the rows it may keep while it scores them, so
/// that writing the pruned shard need not decompress that column (most of its
/// bytes) a second time ([`write_filtered`]).
pub struct Prefetched<'a> {
    /// The column's name in the shard.
    pub column: &'a str,
    /// The shard rows whose values the stream holds, ascending. Every kept row must
    /// be one of them (others are skipped).
    pub rows: &'a [u32],
    /// Opens the stream: for each of `rows` in order, its `dim` values as
    /// little-endian f32 (the column's values bit for bit).
    pub open: &'a (dyn Fn() -> Result<Box<dyn Read>> + Sync),
}

/// The prefetched column of a copy: its index in the shard, item field, size, values.
type PrefetchedColumn<'p, 'a> = (usize, FieldRef, i32, &'p Prefetched<'a>);

/// Reads the values of the kept `rows` (ascending shard rows) from the prefetched
/// stream, skipping the rows it holds that are not kept; `next` is the index in
/// `p.rows` of the stream's next row.
fn read_prefetched(
    p: &Prefetched<'_>,
    dim: usize,
    rows: &[usize],
    stream: &mut dyn Read,
    next: &mut usize,
    shard: &Path,
) -> Result<Vec<f32>> {
    let width = dim * 4;
    let mut values = vec![0f32; rows.len() * dim];
    let mut skip = vec![0u8; width];
    let err = |e| Error::io("reading the prefetched rows of", shard, e);
    crate::io::le::read_into(&mut values, |bytes| -> Result<()> {
        for (out, &r) in bytes.chunks_exact_mut(width).zip(rows) {
            while p.rows.get(*next).is_some_and(|&q| (q as usize) < r) {
                stream.read_exact(&mut skip).map_err(err)?;
                *next += 1;
            }
            if p.rows.get(*next).is_none_or(|&q| q as usize != r) {
                return Err(Error::Internal(format!(
                    "{}: kept row {r} was not prefetched",
                    shard.display()
                )));
            }
            stream.read_exact(out).map_err(err)?;
            *next += 1;
        }
        Ok(())
    })?;
    Ok(values)
}

/// Copies the rows of `shard` flagged in `keep` (one flag per row) to
/// `dest`, appending `extra` columns; calls `on_rows` with the number of
/// input rows processed after every batch. The values of one column may come
/// from `prefetched` instead of the shard (the same output). Returns the rows
/// written, once the file is on disk under its final name.
pub fn write_filtered(
    shard: &Shard,
    keep: &[bool],
    extra: &[ExtraColumn<'_>],
    dest: &Path,
    on_rows: &(dyn Fn(u64) + Sync),
    prefetched: Option<&Prefetched<'_>>,
) -> Result<u64> {
    let (n, file) = write_filtered_unsynced(shard, keep, extra, dest, on_rows, prefetched)?;
    file.commit()?;
    Ok(n)
}

/// A written file not yet on disk for sure, under its temporary name:
/// [`Unsynced::commit`] syncs it and renames it to its destination; dropped
/// instead, it is deleted. Lets a caller overlap the sync's wait with more work.
pub struct Unsynced {
    file: File,
    atomic: AtomicFile,
}

impl Unsynced {
    /// Waits until the file is on disk, then gives it its final name.
    pub fn commit(self) -> Result<()> {
        let Unsynced { file, atomic } = self;
        file.sync_all().map_err(|e| Error::io("writing", atomic.dest(), e))?;
        drop(file);
        atomic.commit()
    }
}

/// [`write_filtered`], leaving the sync and rename to the caller.
pub fn write_filtered_unsynced(
    shard: &Shard,
    keep: &[bool],
    extra: &[ExtraColumn<'_>],
    dest: &Path,
    on_rows: &(dyn Fn(u64) + Sync),
    prefetched: Option<&Prefetched<'_>>,
) -> Result<(u64, Unsynced)> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let pre: Option<PrefetchedColumn> = match prefetched {
        None => None,
        Some(p) => {
            let c = shard.schema.index_of(p.column).ok();
            match c.map(|c| (c, shard.schema.field(c).data_type())) {
                // An extra column of that name replaces it: nothing of it is written.
                Some(_) if extra.iter().any(|e| e.name == p.column) => None,
                Some((c, DataType::FixedSizeList(item, d))) if item.data_type() == &DataType::Float32 => {
                    Some((c, item.clone(), *d, p))
                }
                _ => {
                    return Err(Error::Internal(format!(
                        "{}: `{}` is not a FixedSizeList<Float32> column to prefetch",
                        shard.path.display(),
                        p.column
                    )));
                }
            }
        }
    };
    let seen = AtomicU64::new(0);
    let counted = |n: u64| {
        seen.fetch_add(n, Relaxed);
        on_rows(n);
    };
    match copy_rows(shard, keep, extra, dest, &counted, true, pre.clone())? {
        Some(done) => Ok(done),
        // A null in a list column: copy again with Arrow's reader alone (same output). The
        // first attempt already reported `seen` rows, so the retry reports only the rest.
        None => {
            let skip = AtomicU64::new(seen.load(Relaxed));
            let rest = |n: u64| {
                // fetch_update: the retry may report from several threads at once.
                let prev = skip.fetch_update(Relaxed, Relaxed, |s| Some(s - s.min(n))).unwrap_or(0);
                let t = prev.min(n);
                if n > t {
                    on_rows(n - t);
                }
            };
            copy_rows(shard, keep, extra, dest, &rest, false, pre)?
                .ok_or_else(|| Error::Internal("Arrow's reader fell back".into()))
        }
    }
}

/// [`write_filtered_unsynced`] reading with [`input::Input`]; `None` when its
/// fast reader fell back (nothing written then).
fn copy_rows(
    shard: &Shard,
    keep: &[bool],
    extra: &[ExtraColumn<'_>],
    dest: &Path,
    on_rows: &(dyn Fn(u64) + Sync),
    fast: bool,
    pre: Option<PrefetchedColumn>,
) -> Result<Option<(u64, Unsynced)>> {
    if keep.len() as u64 != shard.num_rows {
        return Err(Error::Internal(format!(
            "keep mask has {} flags for {} rows",
            keep.len(),
            shard.num_rows
        )));
    }
    let in_schema = shard.schema.clone();
    let replaced: Vec<usize> = in_schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| extra.iter().any(|e| e.name == f.name()))
        .map(|(i, _)| i)
        .collect();
    let kept_fields: Vec<usize> = (0..in_schema.fields().len())
        .filter(|i| !replaced.contains(i))
        .collect();
    let mut fields: Vec<Arc<Field>> = kept_fields.iter().map(|&i| in_schema.fields()[i].clone()).collect();
    fields.extend(extra.iter().map(|e| Arc::new(Field::new(e.name, e.data_type(), true))));
    let out_schema: SchemaRef = Arc::new(Schema::new_with_metadata(fields, in_schema.metadata().clone()));

    // The batches lack the prefetched column: shard column f is batch column `at(f)`.
    let skip = pre.as_ref().map(|p| p.0);
    let at = |f: usize| f - usize::from(skip.is_some_and(|s| s < f));
    let batch_fields: Vec<usize> = kept_fields
        .iter()
        .filter(|&&f| Some(f) != skip)
        .map(|&f| at(f))
        .collect();
    let mut stream = pre.as_ref().map(|p| (p.3.open)()).transpose()?;
    let mut next_prefetched = 0usize;
    let mut input = input::Input::open(shard, fast, skip)?;
    let atomic = AtomicFile::new(dest)?;
    let file = OutputFile::create(atomic.tmp_path()).map_err(|e| Error::io("creating", atomic.tmp_path(), e))?;
    let wrap = |source| Error::Parquet {
        path: dest.to_path_buf(),
        source,
    };
    // The prefetched column's position in the output.
    let pre_at = pre.as_ref().map(|p| {
        kept_fields
            .iter()
            .position(|&f| f == p.0)
            .expect("the prefetched column is kept")
    });
    let props = writer_properties(&out_schema);
    let mut w = match pre_at {
        Some(at) if pre.as_ref().is_some_and(|p| p.2 > 0) => {
            ShardWriter::Vectors(VectorShardWriter::try_new(file, out_schema.clone(), props, at).map_err(wrap)?)
        }
        _ => ShardWriter::Arrow(ArrowWriter::try_new(file, out_schema.clone(), Some(props)).map_err(wrap)?),
    };
    let mut row = 0usize;
    let mut written = 0u64;
    for batch in &mut input {
        let batch = batch?;
        let n = batch.num_rows();
        let flags = &keep[row..row + n];
        let rows: Vec<usize> = (row..row + n).filter(|&i| keep[i]).collect();
        if !rows.is_empty() {
            let mask = BooleanArray::from(flags.to_vec());
            let proj = batch.project(&batch_fields).map_err(|source| Error::Arrow {
                path: shard.path.clone(),
                source,
            })?;
            let filtered = filter_record_batch(&proj, &mask).map_err(|source| Error::Arrow {
                path: shard.path.clone(),
                source,
            })?;
            let mut cols: Vec<ArrayRef> = filtered.columns().to_vec();
            if let (Some((_, item, d, p)), Some(s)) = (&pre, stream.as_mut()) {
                let values = read_prefetched(p, *d as usize, &rows, s.as_mut(), &mut next_prefetched, &shard.path)?;
                let a = FixedSizeListArray::try_new(item.clone(), *d, Arc::new(Float32Array::from(values)), None)
                    .map_err(|source| Error::Arrow {
                        path: shard.path.clone(),
                        source,
                    })?;
                cols.insert(pre_at.expect("set with `pre`"), Arc::new(a));
            }
            cols.extend(extra.iter().map(|e| e.gather(&rows)));
            let out = RecordBatch::try_new(out_schema.clone(), cols).map_err(|source| Error::Arrow {
                path: dest.to_path_buf(),
                source,
            })?;
            w.write(&out).map_err(wrap)?;
            written += rows.len() as u64;
        }
        row += n;
        on_rows(n as u64);
    }
    if input.fell_back() {
        return Ok(None);
    }
    if row as u64 != shard.num_rows {
        return Err(Error::Internal(format!(
            "{}: read {row} rows, footer says {}",
            shard.path.display(),
            shard.num_rows
        )));
    }
    let file = w.into_inner().map_err(wrap)?;
    let file = file.finish().map_err(|e| Error::io("writing", atomic.tmp_path(), e))?;
    Ok(Some((written, Unsynced { file, atomic })))
}

/// The writer of a pruned shard: Arrow's, or [`VectorShardWriter`] when the
/// embedding column comes prefetched (a `FixedSizeList<Float32>` without nulls).
enum ShardWriter {
    Arrow(ArrowWriter<OutputFile>),
    Vectors(VectorShardWriter),
}

impl ShardWriter {
    fn write(&mut self, batch: &RecordBatch) -> parquet::errors::Result<()> {
        match self {
            ShardWriter::Arrow(w) => w.write(batch),
            ShardWriter::Vectors(w) => w.write(batch),
        }
    }

    fn into_inner(self) -> parquet::errors::Result<OutputFile> {
        match self {
            ShardWriter::Arrow(w) => w.into_inner(),
            ShardWriter::Vectors(w) => w.into_inner(),
        }
    }
}

/// Per-row results for a scores table, indexed by global row.
#[derive(Debug, Clone, Copy)]
pub struct ScoreColumns<'a> {
    /// Cluster of each row, if clustering ran.
    pub cluster: Option<&'a [i32]>,
    /// Score of each row.
    pub score: &'a [f32],
    /// Whether each row is kept.
    pub kept: &'a [bool],
    /// Whether each row had a usable embedding (others get null score and cluster).
    pub valid: &'a [bool],
    /// SemDeDup's M per row (NaN → null), when computed: adds `max_sim`.
    pub max_sim: Option<&'a [f32]>,
    /// Global row id of the row each row duplicates, when a de-duplication
    /// stage ran: adds `dup_of`.
    pub dup_of: Option<&'a [Option<u32>]>,
}

/// Row groups of a scores table encoded at once, per thread: they are built and
/// compressed in parallel, then written in order (memory: that many row groups).
const SCORE_GROUPS_PER_THREAD: usize = 2;

/// Writes one table `(file, row, cluster, score, kept[, max_sim][, dup_of])`
/// for every input row.
///
/// Row groups are the global row ranges of [`DEFAULT_ROW_GROUP_ROWS`] rows (what
/// [`ArrowWriter`] makes of these batches: a group can span two shards); they are
/// built and encoded in parallel and appended in order, so the file is the same
/// bytes whatever the thread count.
pub fn write_scores_table(data: &Dataset, cols: &ScoreColumns<'_>, dest: &Path) -> Result<()> {
    let mut fields = vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("row", DataType::Int64, false),
        Field::new("cluster", DataType::Int32, true),
        Field::new("score", DataType::Float32, true),
        Field::new("kept", DataType::Boolean, false),
    ];
    if cols.max_sim.is_some() {
        fields.push(Field::new("max_sim", DataType::Float32, true));
    }
    if cols.dup_of.is_some() {
        fields.push(Field::new("dup_of", DataType::Int64, true));
    }
    let schema = Arc::new(Schema::new(fields));
    let atomic = AtomicFile::new(dest)?;
    let file = File::create(atomic.tmp_path()).map_err(|e| Error::io("creating", atomic.tmp_path(), e))?;
    let wrap = |source| Error::Parquet {
        path: dest.to_path_buf(),
        source,
    };
    let w = ArrowWriter::try_new(file, schema.clone(), Some(writer_properties(&schema))).map_err(wrap)?;
    let (mut fw, factory) = w.into_serialized_writer().map_err(wrap)?;
    let n = data.num_rows() as usize;
    let groups: Vec<std::ops::Range<usize>> = (0..n)
        .step_by(DEFAULT_ROW_GROUP_ROWS)
        .map(|a| a..(a + DEFAULT_ROW_GROUP_ROWS).min(n))
        .collect();
    let wave = rayon::current_num_threads().max(1) * SCORE_GROUPS_PER_THREAD;
    for (w0, part) in groups.chunks(wave).enumerate() {
        let encoded: Vec<Result<Vec<ArrowColumnChunk>>> = part
            .par_iter()
            .enumerate()
            .map(|(j, g)| {
                let batch = scores_batch(data, cols, &schema, g.clone(), dest)?;
                let mut writers = factory.create_column_writers(w0 * wave + j).map_err(wrap)?;
                for ((cw, field), col) in writers.iter_mut().zip(schema.fields()).zip(batch.columns()) {
                    for leaf in compute_leaves(field, col).map_err(wrap)? {
                        cw.write(&leaf).map_err(wrap)?;
                    }
                }
                writers.into_iter().map(|cw| cw.close().map_err(wrap)).collect()
            })
            .collect();
        for chunks in encoded {
            let mut rg = fw.next_row_group().map_err(wrap)?;
            for c in chunks? {
                c.append_to_row_group(&mut rg).map_err(wrap)?;
            }
            rg.close().map_err(wrap)?;
        }
    }
    let file = fw.into_inner().map_err(wrap)?;
    file.sync_all().map_err(|e| Error::io("writing", dest, e))?;
    drop(file);
    atomic.commit()
}

/// The scores table's rows `g` (global ids), which may span shards.
fn scores_batch(
    data: &Dataset,
    cols: &ScoreColumns<'_>,
    schema: &SchemaRef,
    g: std::ops::Range<usize>,
    dest: &Path,
) -> Result<RecordBatch> {
    let m = g.len();
    let longest = data.shards.iter().map(|s| s.path.as_os_str().len()).max().unwrap_or(0);
    let mut file_col = arrow::array::StringBuilder::with_capacity(m, m * longest);
    let mut row_col = Vec::with_capacity(m);
    for s in &data.shards {
        let (lo, hi) = (data.offset(s.index) as usize, data.offset(s.index + 1) as usize);
        let (a, b) = (lo.max(g.start), hi.min(g.end));
        if a >= b {
            continue;
        }
        let name = s.path.display().to_string();
        for _ in a..b {
            file_col.append_value(&name);
        }
        row_col.extend(((a - lo) as i64)..((b - lo) as i64));
    }
    let valid = &cols.valid[g.clone()];
    let cluster_col: Int32Array = match cols.cluster {
        Some(c) => c[g.clone()].iter().zip(valid).map(|(&c, &v)| v.then_some(c)).collect(),
        None => std::iter::repeat_n(None::<i32>, m).collect(),
    };
    let score_col: Float32Array = cols.score[g.clone()]
        .iter()
        .zip(valid)
        .map(|(&s, &v)| v.then_some(s))
        .collect();
    let kept_col = BooleanArray::from(cols.kept[g.clone()].to_vec());
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(file_col.finish()),
        Arc::new(Int64Array::from(row_col)),
        Arc::new(cluster_col),
        Arc::new(score_col),
        Arc::new(kept_col),
    ];
    if let Some(ms) = cols.max_sim {
        let c: Float32Array = ms[g.clone()].iter().map(|&v| (!v.is_nan()).then_some(v)).collect();
        columns.push(Arc::new(c));
    }
    if let Some(d) = cols.dup_of {
        let c: Int64Array = d[g].iter().map(|v| v.map(i64::from)).collect();
        columns.push(Arc::new(c));
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|source| Error::Arrow {
        path: dest.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;
