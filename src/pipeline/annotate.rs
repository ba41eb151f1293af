//! `annotate` and `demos`: choose the pool rows to annotate, then retrieve
//! demonstrations for queries from the annotated rows only.
//!
//! [`run_annotate`] reads the pool's embeddings (a Parquet column, or a
//! text/image column embedded on the fly with `encoder`, see the private `source` module), centres
//! them on the pool mean (optional, on by default as in both reference
//! repositories) and normalises them, selects rows
//! ([`crate::select::annotate`]), and writes the selected rows, all columns,
//! in selection order, plus `dprune_rank`, `dprune_gain` and
//! `dprune_method`. The file's schema metadata (key [`META_KEY`]) records
//! the centering mean and the encoder (description and identity), so
//! [`run_demos`] applies the pool's transform to queries and refuses
//! queries embedded by another encoder. A JSON report holds label-free coverage metrics.
//!
//! [`run_demos`] searches every query exactly over the annotated rows and
//! writes (query id, position, demo id, cosine), most similar last by
//! default, never pairing a query with a demo of the same id.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::{cast, concat, concat_batches, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::knn::prepare;
use crate::distance::dot_batch;
use crate::embed::EncoderSpec;
use crate::io::inputs::builder;
use crate::io::writer::{COPY_BATCH_ROWS, writer_properties};
use crate::io::{AtomicFile, Dataset, expand_inputs};
use crate::rng::Rng;
use crate::select::annotate::{AnnotateParams, Selection, TwoStageInfo, best_similarity, select_with};
use crate::{Error, Result};

mod demos;
mod source;
mod two_stage;

pub use demos::{DemoOrder, DemosConfig, DemosSummary, TokenBudget, run_demos, template_from_flag};
pub use source::{ENCODER_ID_KEY, ENCODER_KEY};
use source::{Embedded, Embedding, embed_rows};
pub use two_stage::{ConfidenceOrder, DEFAULT_CONFIDENCE_COLUMN, DEFAULT_LABEL_COLUMN, TwoStageFiles};

/// Schema-metadata key of the annotate record in written files.
pub const META_KEY: &str = "dprune.annotate";
/// Column added by `annotate`: 0-based selection rank.
pub const RANK_COLUMN: &str = "dprune_rank";
/// Column added by `annotate`: what the row added when selected.
pub const GAIN_COLUMN: &str = "dprune_gain";
/// Column added by `annotate`: the method.
pub const METHOD_COLUMN: &str = "dprune_method";
/// Column added by `annotate --row-index`: the row's position in the pool.
pub const ROW_COLUMN: &str = "dprune_row";
/// Column added by two-stage vote-k: the stage (1 or 2) that picked the row.
pub const STAGE_COLUMN: &str = "dprune_stage";
/// Id column when none is named.
pub const DEFAULT_ID_COLUMN: &str = "id";
/// Demonstrations per query when none is given.
pub const DEFAULT_DEMOS_K: usize = 8;
/// Pool rows whose nearest-neighbour cosine sets the τ quantiles.
pub const COVERAGE_SAMPLE: usize = 2_000;
/// Rows per embedding block read.
const READ_ROWS: usize = 8192;

/// An `annotate` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnotateConfig {
    /// Pool Parquet files or globs.
    pub inputs: Vec<String>,
    /// Embedding column (auto-detected when `None`).
    pub embedding_col: Option<String>,
    /// Id column; defaults to [`DEFAULT_ID_COLUMN`].
    pub id_col: String,
    /// Use row positions as ids (adds [`ROW_COLUMN`]) instead of an id column.
    pub row_index: bool,
    /// Centre embeddings on the pool mean before normalising (default on).
    pub center: bool,
    /// Selection parameters.
    pub params: AnnotateParams,
    /// Stage-2 files of two-stage vote-k.
    pub two_stage: TwoStageFiles,
    /// Selected rows (Parquet).
    pub output: PathBuf,
    /// JSON report; defaults to the output with extension `.report.json`.
    pub report: Option<PathBuf>,
    /// Replace existing outputs.
    pub overwrite: bool,
    /// Embed this column on the fly instead of reading `embedding_col`
    /// (`--model`, `--text-col`, ...; no model: the built-in hashed embedder).
    pub encoder: Option<EncoderSpec>,
}

impl Default for AnnotateConfig {
    fn default() -> Self {
        AnnotateConfig {
            inputs: Vec::new(),
            embedding_col: None,
            id_col: DEFAULT_ID_COLUMN.into(),
            row_index: false,
            center: true,
            params: AnnotateParams::default(),
            two_stage: TwoStageFiles::default(),
            output: PathBuf::new(),
            report: None,
            overwrite: false,
            encoder: None,
        }
    }
}

impl AnnotateConfig {
    /// The report path.
    pub fn report_path(&self) -> PathBuf {
        self.report
            .clone()
            .unwrap_or_else(|| self.output.with_extension("report.json"))
    }
}

/// What `annotate` records in its output's metadata, for `demos`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotateMeta {
    /// Method used.
    pub method: String,
    /// Embedding column, or the column embedded on the fly (`encoded_col`).
    pub embedding_col: String,
    /// Embedding dimension.
    pub dim: usize,
    /// The encoder (the column's `dprune.encoder` metadata, or the encoder
    /// run on the fly), if known.
    pub encoder: Option<String>,
    /// What decides the embeddings ([`crate::embed::EncoderInfo::identity`]:
    /// model and tokenizer SHA-256, output and pooling, truncation,
    /// normalisation), if known; `demos` compares it.
    #[serde(default)]
    pub encoder_id: Option<String>,
    /// The text or image column embedded on the fly, if any.
    #[serde(default)]
    pub encoded_col: Option<String>,
    /// Whether embeddings were centred.
    pub centered: bool,
    /// The pool mean subtracted before normalising.
    pub mean: Option<Vec<f32>>,
    /// Seed.
    pub seed: u64,
}

/// τ-coverage at one pool quantile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Coverage {
    /// Quantile q of the pool's nearest-neighbour cosines.
    pub q: f64,
    /// τ_q.
    pub tau: f64,
    /// Fraction of pool rows with a selected row at cosine ≥ τ_q.
    pub coverage: f64,
}

/// The k-center radius at one quantile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Radius {
    /// Quantile p over pool rows.
    pub p: f64,
    /// p-quantile of 1 − max cos to the selection.
    pub radius: f64,
}

/// Label-free coverage metrics of a selection on its pool (cosines after
/// the run's centering). Quantiles are nearest-rank.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoverageMetrics {
    /// Mean over pool rows of max(0, max cos to the selection).
    pub facility_location: f64,
    /// The same floored at −1 (the reference's objective / N).
    pub facility_location_floor_minus1: f64,
    /// τ-coverage for τ at pool quantiles 0.1, 0.25, 0.5 of nearest-neighbour
    /// cosines (measured on a seeded sample of [`COVERAGE_SAMPLE`] rows).
    pub coverage: Vec<Coverage>,
    /// Robust k-center radius at p = 0.9, 0.95, 1.
    pub kcenter_radius: Vec<Radius>,
    /// Mean pairwise cosine within the selection (`None` for one row).
    pub redundancy: Option<f64>,
}

/// The JSON report of `annotate`.
#[derive(Debug, Clone, Serialize)]
pub struct AnnotateReport {
    /// dprune version.
    pub version: String,
    /// Input files.
    pub inputs: Vec<PathBuf>,
    /// Pool rows.
    pub pool_rows: usize,
    /// Pool rows left out because they have no embedding (`--skip-bad`).
    pub excluded_rows: usize,
    /// The record also stored in the output's metadata.
    pub meta: AnnotateMeta,
    /// Budget.
    pub budget: usize,
    /// The selection's facts (without the row lists).
    pub nested: bool,
    /// Rows added at random after the method ran out of candidates.
    pub fallback: usize,
    /// kNN backend, for graph methods.
    pub knn_backend: Option<String>,
    /// Recall@k of an approximate graph on a sample.
    pub knn_recall: Option<f64>,
    /// IDEAL: σ̂ and its standard error.
    pub ideal_spread: Option<(f64, f64)>,
    /// Two-stage vote-k: stage, stage-1 rows, stratum width, confidence source.
    pub two_stage: Option<TwoStageInfo>,
    /// Coverage metrics.
    pub metrics: CoverageMetrics,
    /// Seconds: reading, kNN graph, selecting (without the graph), metrics, writing.
    pub seconds: HashMap<String, f64>,
    /// The selected rows file.
    pub output: PathBuf,
}

/// Reads `column` of every shard as one array.
fn read_column(data: &Dataset, column: &str) -> Result<ArrayRef> {
    let mut parts: Vec<ArrayRef> = Vec::new();
    for s in &data.shards {
        let b = builder(&s.path)?;
        let idx = b
            .parquet_schema()
            .root_schema()
            .get_fields()
            .iter()
            .position(|f| f.name() == column)
            .ok_or_else(|| Error::Internal(format!("column `{column}` vanished")))?;
        let mask = ProjectionMask::roots(b.parquet_schema(), [idx]);
        let r = b
            .with_projection(mask)
            .with_batch_size(READ_ROWS)
            .build()
            .map_err(|source| Error::Parquet {
                path: s.path.clone(),
                source,
            })?;
        for batch in r {
            let batch = batch.map_err(|source| Error::Arrow {
                path: s.path.clone(),
                source,
            })?;
            parts.push(batch.column(0).clone());
        }
    }
    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
    if refs.is_empty() {
        return Err(Error::Empty("no rows in the inputs".into()));
    }
    concat(&refs).map_err(|source| Error::Arrow {
        path: data.shards[0].path.clone(),
        source,
    })
}

/// Ids of a file as (original array, text form); checks presence, nulls
/// and uniqueness.
fn read_ids(data: &Dataset, column: &str, flag: &'static str) -> Result<(ArrayRef, Vec<String>)> {
    if let Some((path, cols)) = lacks_column(data, column) {
        return Err(Error::param(
            flag,
            format!(
                "{}: no id column `{column}`; columns are: {cols}. Name the id column with {flag}{}",
                path.display(),
                if flag == "--id-col" {
                    ", or pass --row-index to use row positions"
                } else {
                    ""
                }
            ),
        ));
    }
    let (arr, text) = column_text(data, column)?;
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(text.len());
    let mut strings = Vec::with_capacity(text.len());
    for (i, t) in text.iter().enumerate() {
        let Some(t) = t else {
            return Err(Error::param(flag, format!("id column `{column}` is null at row {i}")));
        };
        if let Some(first) = seen.insert(t.as_str(), i) {
            return Err(Error::param(
                flag,
                format!("id `{t}` of column `{column}` appears at rows {first} and {i}; ids must be unique"),
            ));
        }
        strings.push(t.clone());
    }
    Ok((arr, strings))
}

/// The first shard of `data` without `column`, with its column names.
fn lacks_column<'a>(data: &'a Dataset, column: &str) -> Option<(&'a Path, String)> {
    let s = data.shards.iter().find(|s| s.schema.field_with_name(column).is_err())?;
    let cols: Vec<&str> = s.schema.fields().iter().map(|f| f.name().as_str()).collect();
    Some((&s.path, cols.join(", ")))
}

/// Column `column` of every shard as (original array, text form; `None`
/// for nulls); an error names a column that cannot be shown as text.
fn column_text(data: &Dataset, column: &str) -> Result<(ArrayRef, Vec<Option<String>>)> {
    let arr = read_column(data, column)?;
    let text = cast(&arr, &DataType::Utf8).map_err(|e| Error::Column {
        path: data.shards[0].path.clone(),
        column: column.to_string(),
        reason: format!("type {} cannot be read as text: {e}", arr.data_type()),
    })?;
    let text = text
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| Error::Internal("cast to utf8".into()))?;
    let strings = (0..text.len())
        .map(|i| text.is_valid(i).then(|| text.value(i).to_string()))
        .collect();
    Ok((arr, strings))
}

fn check_output(path: &Path, overwrite: bool, inputs: &[PathBuf]) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::param("--output", "no output file given"));
    }
    if path.exists() && !overwrite {
        return Err(Error::OutputExists {
            path: path.to_path_buf(),
        });
    }
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if inputs.iter().any(|i| canon(i) == canon(path)) {
        return Err(Error::OutputIsInput {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Nearest-rank p-quantile of `v` (sorted ascending in place).
fn quantile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Coverage metrics of `order` on the pool `rows` (unit vectors).
pub fn coverage_metrics(rows: &[f32], dim: usize, order: &[u32], seed: u64) -> CoverageMetrics {
    let n = rows.len() / dim;
    let best = best_similarity(rows, dim, order);
    let fl = best.iter().map(|&b| b.max(0.0) as f64).sum::<f64>() / n as f64;
    let fl1 = best.iter().map(|&b| b.max(-1.0) as f64).sum::<f64>() / n as f64;
    // nearest-neighbour cosine of sampled pool rows
    let sample = Rng::for_stream(seed, 0xc0de).sample_indices(n as u64, COVERAGE_SAMPLE as u64);
    let mut nn1: Vec<f64> = sample
        .par_chunks(64)
        .flat_map_iter(|chunk| {
            let x: Vec<f32> = chunk
                .iter()
                .flat_map(|&i| rows[i as usize * dim..(i as usize + 1) * dim].iter().copied())
                .collect();
            let mut s = vec![0f32; chunk.len() * n];
            dot_batch(&x, rows, dim, &mut s);
            chunk
                .iter()
                .enumerate()
                .map(|(r, &i)| {
                    s[r * n..(r + 1) * n]
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j as u64 != i)
                        .map(|(_, &v)| v as f64)
                        .fold(f64::NEG_INFINITY, f64::max)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let coverage = [0.1, 0.25, 0.5]
        .iter()
        .map(|&q| {
            let tau = quantile(&mut nn1, q);
            let c = best.iter().filter(|&&b| b as f64 >= tau).count();
            Coverage {
                q,
                tau,
                coverage: c as f64 / n as f64,
            }
        })
        .collect();
    let mut dist: Vec<f64> = best.iter().map(|&b| 1.0 - b as f64).collect();
    let kcenter_radius = [0.9, 0.95, 1.0]
        .iter()
        .map(|&p| Radius {
            p,
            radius: quantile(&mut dist, p),
        })
        .collect();
    let b = order.len();
    let redundancy = (b > 1).then(|| {
        let l: Vec<f32> = order
            .iter()
            .flat_map(|&i| rows[i as usize * dim..(i as usize + 1) * dim].iter().copied())
            .collect();
        let mut s = vec![0f32; b * b];
        dot_batch(&l, &l, dim, &mut s);
        let mut sum = 0.0;
        for i in 0..b {
            for j in i + 1..b {
                sum += s[i * b + j] as f64;
            }
        }
        sum / (b * (b - 1) / 2) as f64
    });
    CoverageMetrics {
        facility_location: fl,
        facility_location_floor_minus1: fl1,
        coverage,
        kcenter_radius,
        redundancy,
    }
}

/// Writes the rows of `data` at `order` (global row ids), in that order,
/// with `extra` columns appended and `meta` added to the schema metadata.
fn write_rows(
    data: &Dataset,
    order: &[u32],
    extra: Vec<(Field, ArrayRef)>,
    meta: (&str, String),
    dest: &Path,
) -> Result<()> {
    let mut rank_of: HashMap<u64, usize> = HashMap::with_capacity(order.len());
    for (r, &i) in order.iter().enumerate() {
        rank_of.insert(i as u64, r);
    }
    let mut parts: Vec<RecordBatch> = Vec::new();
    let mut ranks: Vec<usize> = Vec::new();
    let mut schema: Option<SchemaRef> = None;
    for (si, s) in data.shards.iter().enumerate() {
        let r = builder(&s.path)?
            .with_batch_size(COPY_BATCH_ROWS)
            .build()
            .map_err(|source| Error::Parquet {
                path: s.path.clone(),
                source,
            })?;
        let mut row = data.offset(si);
        for batch in r {
            let batch = batch.map_err(|source| Error::Arrow {
                path: s.path.clone(),
                source,
            })?;
            let n = batch.num_rows() as u64;
            let local: Vec<u32> = (0..n as u32)
                .filter(|&j| rank_of.contains_key(&(row + j as u64)))
                .collect();
            if !local.is_empty() {
                ranks.extend(local.iter().map(|&j| rank_of[&(row + j as u64)]));
                let idx = UInt32Array::from(local);
                let cols = batch
                    .columns()
                    .iter()
                    .map(|c| take(c.as_ref(), &idx, None))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|source| Error::Arrow {
                        path: s.path.clone(),
                        source,
                    })?;
                let sc = schema.get_or_insert_with(|| batch.schema()).clone();
                let b = RecordBatch::try_new(sc, cols).map_err(|source| Error::Arrow {
                    path: s.path.clone(),
                    source,
                })?;
                parts.push(b);
            }
            row += n;
        }
    }
    let schema = schema.ok_or_else(|| Error::Internal("no selected row found".into()))?;
    let all = concat_batches(&schema, &parts).map_err(|source| Error::Arrow {
        path: dest.to_path_buf(),
        source,
    })?;
    // reorder by rank
    let mut pos = vec![0u32; ranks.len()];
    for (p, &r) in ranks.iter().enumerate() {
        pos[r] = p as u32;
    }
    let idx = UInt32Array::from(pos);
    let arrow_err = |source| Error::Arrow {
        path: dest.to_path_buf(),
        source,
    };
    let mut cols: Vec<ArrayRef> = Vec::new();
    let mut fields: Vec<Arc<Field>> = Vec::new();
    for (f, c) in schema.fields().iter().zip(all.columns()) {
        if extra.iter().any(|(e, _)| e.name() == f.name()) {
            continue;
        }
        fields.push(f.clone());
        cols.push(take(c.as_ref(), &idx, None).map_err(arrow_err)?);
    }
    for (f, c) in extra {
        fields.push(Arc::new(f));
        cols.push(c);
    }
    let mut md = schema.metadata().clone();
    md.insert(meta.0.to_string(), meta.1);
    let out_schema = Arc::new(Schema::new_with_metadata(fields, md));
    let out = RecordBatch::try_new(out_schema.clone(), cols).map_err(arrow_err)?;
    write_batch(&out, dest)
}

fn write_batch(batch: &RecordBatch, dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
    }
    let atomic = AtomicFile::new(dest)?;
    let file = File::create(atomic.tmp_path()).map_err(|e| Error::io("creating", atomic.tmp_path(), e))?;
    let wrap = |source| Error::Parquet {
        path: dest.to_path_buf(),
        source,
    };
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(writer_properties(&batch.schema()))).map_err(wrap)?;
    w.write(batch).map_err(wrap)?;
    let file = w.into_inner().map_err(wrap)?;
    file.sync_all().map_err(|e| Error::io("writing", dest, e))?;
    drop(file);
    atomic.commit()
}

fn write_json<T: Serialize>(value: &T, dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
    }
    let atomic = AtomicFile::new(dest)?;
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(atomic.tmp_path(), text + "\n").map_err(|e| Error::io("writing", atomic.tmp_path(), e))?;
    atomic.commit()
}

/// Runs `annotate` (see the module docs); returns the report, also written
/// as JSON.
pub fn run_annotate(cfg: &AnnotateConfig) -> Result<(AnnotateReport, Selection)> {
    cfg.params.validate()?;
    cfg.two_stage.validate(cfg.params.method)?;
    let t0 = Instant::now();
    let paths = expand_inputs(&cfg.inputs)?;
    let report_path = cfg.report_path();
    check_output(&cfg.output, cfg.overwrite, &paths)?;
    check_output(&report_path, cfg.overwrite, &paths)?;
    let data = Dataset::open(&paths)?;
    let n = data.num_rows() as usize;
    if n == 0 {
        return Err(Error::Empty("the pool has no rows".into()));
    }
    if n > u32::MAX as usize {
        return Err(Error::param("inputs", format!("{n} rows: at most 2^32 - 1 per run")));
    }
    let ids = if cfg.row_index {
        None
    } else {
        Some(read_ids(&data, &cfg.id_col, "--id-col")?.1)
    };
    let Embedded {
        mut rows,
        dim,
        index,
        excluded,
        column,
        encoded,
        encoder,
    } = embed_rows(&data, &pool_embedding(cfg)?)?;
    let mean = prepare(&mut rows, dim, cfg.center)?;
    let t_read = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    // Two-stage files name pool rows by id; the selectors see the usable rows only.
    let stage2_ids: Vec<String> = match (&ids, cfg.two_stage.stage2()) {
        (_, false) => Vec::new(),
        (Some(ids), true) => index.iter().map(|&r| ids[r as usize].clone()).collect(),
        (None, true) => index.iter().map(|r| r.to_string()).collect(),
    };
    let side_col = if ids.is_some() { cfg.id_col.as_str() } else { ROW_COLUMN };
    let stage2 = two_stage::stage2_source(&cfg.two_stage, side_col, &stage2_ids)?;
    let mut sel = select_with(&rows, dim, &cfg.params, stage2.as_deref())?;
    let t_select = t1.elapsed().as_secs_f64();

    let t2 = Instant::now();
    let metrics = coverage_metrics(&rows, dim, &sel.order, cfg.params.seed);
    let t_metrics = t2.elapsed().as_secs_f64();
    // From usable-row positions to pool rows (they differ when rows were excluded).
    sel.order.iter_mut().for_each(|i| *i = index[*i as usize]);

    let t3 = Instant::now();
    let meta = AnnotateMeta {
        method: sel.name(),
        embedding_col: column.clone(),
        dim,
        encoder: encoder.describe,
        encoder_id: encoder.id,
        encoded_col: encoded.then_some(column),
        centered: cfg.center,
        mean,
        seed: cfg.params.seed,
    };
    let b = sel.order.len();
    let mut extra: Vec<(Field, ArrayRef)> = vec![
        (
            Field::new(RANK_COLUMN, DataType::Int32, false),
            Arc::new(Int32Array::from_iter_values(0..b as i32)),
        ),
        (
            Field::new(GAIN_COLUMN, DataType::Float64, false),
            Arc::new(Float64Array::from(sel.gain.clone())),
        ),
        (
            Field::new(METHOD_COLUMN, DataType::Utf8, false),
            Arc::new(StringArray::from(vec![sel.name(); b])),
        ),
    ];
    if let Some(t) = &sel.two_stage {
        let stage = (0..b).map(|r| if r < t.stage1_rows { 1 } else { 2 });
        extra.push((
            Field::new(STAGE_COLUMN, DataType::Int32, false),
            Arc::new(Int32Array::from_iter_values(stage)),
        ));
    }
    if cfg.row_index {
        extra.push((
            Field::new(ROW_COLUMN, DataType::Int64, false),
            Arc::new(Int64Array::from_iter_values(sel.order.iter().map(|&i| i as i64))),
        ));
    }
    let meta_json = serde_json::to_string(&meta).map_err(|e| Error::Internal(e.to_string()))?;
    write_rows(&data, &sel.order, extra, (META_KEY, meta_json), &cfg.output)?;
    let t_write = t3.elapsed().as_secs_f64();

    let report = AnnotateReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        inputs: paths,
        pool_rows: n,
        excluded_rows: excluded,
        meta,
        budget: b,
        nested: sel.nested,
        fallback: sel.fallback,
        knn_backend: sel.knn_backend.map(|k| k.to_string()),
        knn_recall: sel.knn_recall,
        ideal_spread: sel.spread,
        two_stage: sel.two_stage.clone(),
        metrics,
        seconds: HashMap::from([
            ("read".to_string(), t_read),
            ("knn".to_string(), sel.knn_seconds),
            ("select".to_string(), t_select - sel.knn_seconds),
            ("metrics".to_string(), t_metrics),
            ("write".to_string(), t_write),
        ]),
        output: cfg.output.clone(),
    };
    write_json(&report, &report_path)?;
    Ok((report, sel))
}

/// The pool's embeddings: the column, or the encoder of `cfg.encoder`.
fn pool_embedding(cfg: &AnnotateConfig) -> Result<Embedding<'_>> {
    Ok(match &cfg.encoder {
        None => Embedding::Column(cfg.embedding_col.as_deref()),
        Some(spec) => {
            if cfg.embedding_col.is_some() {
                return Err(Error::param(
                    "--embedding-col",
                    "give either an embedding column or a column to embed (--text-col / --image-col), not both",
                ));
            }
            Embedding::Encode {
                encoder: spec.build()?,
                column: &spec.column,
                cache: spec.cache.clone(),
                skip_bad: spec.skip_bad,
            }
        }
    })
}

#[cfg(test)]
mod tests;
