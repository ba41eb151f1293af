//! `dprune embed`: encode a column of every shard and write the shards back
//! with an added `fixed_size_list<float32, dim>` column (or float16 with
//! `f16`), or only LAION-style `.npy` sidecars, plus a JSON report with the
//! model, its SHA-256, the provider, batch size and throughput.
//!
//! Shards are written one after the other (the encoder is the bottleneck
//! and already uses every core), each under a temporary name renamed when
//! complete.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float16Array, Float32Array, RecordBatch};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use crate::embed::cache::{NpyOut, NpyWriter};
use crate::embed::source::{EncodeStream, check_column};
use crate::embed::{EncoderInfo, EncoderSpec};
use crate::io::writer::{COPY_BATCH_ROWS, writer_properties};
use crate::io::{AtomicFile, Dataset, expand_inputs};
use crate::pipeline::progress::{Pass, Progress};
use crate::pipeline::report::REPORT_JSON;
use crate::{Error, Result};

/// Default name of the added column.
pub const DEFAULT_OUTPUT_COLUMN: &str = "embedding";

/// Where and how `embed` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedOutput {
    /// Output folder (created if missing).
    pub dir: PathBuf,
    /// Replace files in a non-empty folder.
    pub overwrite: bool,
    /// Name of the added column; defaults to [`DEFAULT_OUTPUT_COLUMN`].
    pub column: String,
    /// Store float16 instead of float32.
    pub f16: bool,
    /// Write only `.npy` sidecars (`<shard stem>.npy`), not shards.
    pub sidecar: bool,
}

impl Default for EmbedOutput {
    fn default() -> Self {
        EmbedOutput {
            dir: PathBuf::new(),
            overwrite: false,
            column: DEFAULT_OUTPUT_COLUMN.into(),
            f16: false,
            sidecar: false,
        }
    }
}

/// A complete `embed` job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedConfig {
    /// Input paths or globs.
    pub inputs: Vec<String>,
    /// The encoder and column.
    pub encoder: EncoderSpec,
    /// Output.
    pub output: EmbedOutput,
    /// Null texts get a null embedding (counted) instead of an error.
    pub skip_nulls: bool,
    /// Rows read per batch; defaults to the copy batch size of pruned shards.
    pub batch_rows: Option<usize>,
}

/// One input of an `embed` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedInputReport {
    /// The file.
    pub path: String,
    /// Rows.
    pub rows: u64,
    /// Rows whose text was null (null embedding).
    pub null: u64,
    /// The written file.
    pub output: Option<String>,
}

/// The report of an `embed` run (`_dprune_report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedReport {
    /// dprune's version.
    pub dprune_version: String,
    /// `embed`.
    pub command: String,
    /// The embedded column.
    pub column: String,
    /// The encoder (model path, SHA-256, provider, batch size, ...).
    pub encoder: EncoderInfo,
    /// Per input.
    pub inputs: Vec<EmbedInputReport>,
    /// All rows.
    pub n_rows: u64,
    /// Rows with a null text.
    pub n_null: u64,
    /// Written files.
    pub outputs: Vec<String>,
    /// Wall-clock seconds of the whole run (model loading included).
    pub total_s: f64,
    /// Seconds spent reading, encoding and writing the shards.
    pub encode_s: f64,
    /// Seconds spent inside the model.
    pub inference_s: f64,
    /// Rows per second over `encode_s` (read + tokenise + infer + write).
    pub samples_per_s: f64,
    /// Rows per second of the model alone.
    pub inference_samples_per_s: f64,
    /// Warnings.
    pub warnings: Vec<String>,
}

/// Runs an `embed` job; returns its report (also written to the output folder).
pub fn run_embed(cfg: &EmbedConfig, progress: &dyn Progress) -> Result<EmbedReport> {
    let t0 = Instant::now();
    cfg.encoder.validate()?;
    let out = &cfg.output;
    if out.column.is_empty() {
        return Err(Error::param("--output-col", "empty column name"));
    }
    let paths = expand_inputs(&cfg.inputs)?;
    check_output(&paths, out)?;
    let data = Dataset::open(&paths)?;
    check_column(&data, &cfg.encoder.column, cfg.encoder.kind)?;
    let encoder = cfg.encoder.build()?;
    let info = encoder.info().clone();
    let dim = info.dim;
    std::fs::create_dir_all(&out.dir).map_err(|e| Error::io("creating", &out.dir, e))?;
    let mut warnings = Vec::new();
    if !out.sidecar
        && data
            .shards
            .iter()
            .any(|s| s.schema.field_with_name(&out.column).is_ok())
    {
        let m = format!(
            "the inputs already have a column `{}`; it is replaced (choose another name with --output-col)",
            out.column
        );
        progress.warn(&m);
        warnings.push(m);
    }

    let batch_rows = cfg.batch_rows.unwrap_or(COPY_BATCH_ROWS).max(1);
    let n = data.num_rows();
    let t_enc = Instant::now();
    let mut inference_s = 0.0;
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    progress.begin(Pass::Score, n);
    for s in &data.shards {
        let mut stream = EncodeStream::start(encoder.clone(), s, &cfg.encoder.column, !out.sidecar, batch_rows)?;
        let name = s.path.file_name().expect("input files have names");
        let mut nulls = 0u64;
        let mut row = 0u64;
        let mut on_batch = |e: &crate::embed::source::Encoded| -> Result<()> {
            if let Some(i) = e.null.iter().position(|&x| x) {
                if !cfg.skip_nulls {
                    return Err(Error::EmbeddingColumn {
                        path: s.path.clone(),
                        reason: format!(
                            "row {}: column `{}` is null; pass --skip-nulls to give such rows a null embedding \
                             (counted in the report)",
                            row + i as u64,
                            cfg.encoder.column
                        ),
                    });
                }
                nulls += e.null.iter().filter(|&&x| x).count() as u64;
            }
            row += e.null.len() as u64;
            inference_s += e.infer_s;
            progress.advance(e.null.len() as u64);
            Ok(())
        };
        let dest = if out.sidecar {
            let stem = Path::new(name)
                .file_stem()
                .unwrap_or(name)
                .to_string_lossy()
                .into_owned();
            let dest = out.dir.join(format!("{stem}.npy"));
            let dtype = if out.f16 { NpyOut::F16 } else { NpyOut::F32 };
            let mut w = NpyWriter::create(&dest, s.num_rows, dim, dtype)?;
            for e in stream.by_ref() {
                let e = e?;
                on_batch(&e)?;
                w.write_rows(&e.values)?;
            }
            w.finish()?;
            dest
        } else {
            let dest = out.dir.join(name);
            let schema = output_schema(&s.schema, &out.column, dim, out.f16, &info);
            let atomic = AtomicFile::new(&dest)?;
            let file = File::create(atomic.tmp_path()).map_err(|e| Error::io("creating", atomic.tmp_path(), e))?;
            let wrap = |source| Error::Parquet {
                path: dest.clone(),
                source,
            };
            let mut w = ArrowWriter::try_new(file, schema.clone(), Some(writer_properties(&schema))).map_err(wrap)?;
            for e in stream.by_ref() {
                let e = e?;
                on_batch(&e)?;
                let batch = append_column(&e.batch, &schema, &out.column, &e.values, &e.null, dim, out.f16).map_err(
                    |source| Error::Arrow {
                        path: dest.clone(),
                        source,
                    },
                )?;
                w.write(&batch).map_err(wrap)?;
            }
            let file = w.into_inner().map_err(wrap)?;
            file.sync_all().map_err(|e| Error::io("writing", &dest, e))?;
            drop(file);
            atomic.commit()?;
            dest
        };
        if row != s.num_rows {
            return Err(Error::Internal(format!(
                "{}: encoded {row} rows, footer says {}",
                s.path.display(),
                s.num_rows
            )));
        }
        inputs.push(EmbedInputReport {
            path: s.path.display().to_string(),
            rows: s.num_rows,
            null: nulls,
            output: Some(dest.display().to_string()),
        });
        outputs.push(dest.display().to_string());
    }
    progress.end();
    let encode_s = t_enc.elapsed().as_secs_f64();
    let n_null = inputs.iter().map(|i| i.null).sum::<u64>();
    if n_null > 0 {
        let m = format!(
            "{n_null} rows have a null `{}` and got a null embedding",
            cfg.encoder.column
        );
        progress.warn(&m);
        warnings.push(m);
    }
    let json = out.dir.join(REPORT_JSON);
    outputs.push(json.display().to_string());
    let rate = |s: f64| if s > 0.0 { round1(n as f64 / s) } else { 0.0 };
    let report = EmbedReport {
        dprune_version: env!("CARGO_PKG_VERSION").into(),
        command: "embed".into(),
        column: cfg.encoder.column.clone(),
        encoder: info,
        inputs,
        n_rows: n,
        n_null,
        outputs,
        total_s: round3(t0.elapsed().as_secs_f64()),
        encode_s: round3(encode_s),
        inference_s: round3(inference_s),
        samples_per_s: rate(encode_s),
        inference_samples_per_s: rate(inference_s),
        warnings,
    };
    let a = AtomicFile::new(&json)?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(a.tmp_path(), text).map_err(|e| Error::io("writing", a.tmp_path(), e))?;
    a.commit()?;
    Ok(report)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The input schema with `column` (replaced or appended) as
/// `fixed_size_list<float32|float16, dim>`, carrying the model in its metadata.
fn output_schema(input: &SchemaRef, column: &str, dim: usize, f16: bool, info: &EncoderInfo) -> SchemaRef {
    let item = Arc::new(Field::new(
        "item",
        if f16 { DataType::Float16 } else { DataType::Float32 },
        true,
    ));
    let mut meta = std::collections::HashMap::new();
    meta.insert("dprune.encoder".to_string(), info.describe());
    // What `annotate` and `demos` compare (the description names the path and provider).
    meta.insert("dprune.encoder_id".to_string(), info.identity());
    if let Some(h) = &info.model_sha256 {
        meta.insert("dprune.model_sha256".to_string(), h.clone());
    }
    let emb = Arc::new(Field::new(column, DataType::FixedSizeList(item, dim as i32), true).with_metadata(meta));
    let mut fields: Vec<Arc<Field>> = input.fields().iter().filter(|f| f.name() != column).cloned().collect();
    fields.push(emb);
    Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()))
}

fn append_column(
    batch: &RecordBatch,
    schema: &SchemaRef,
    column: &str,
    values: &[f32],
    null: &[bool],
    dim: usize,
    f16: bool,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let DataType::FixedSizeList(item, _) = schema.field_with_name(column)?.data_type().clone() else {
        unreachable!("output_schema made a fixed-size list")
    };
    let child: ArrayRef = if f16 {
        Arc::new(Float16Array::from_iter_values(
            values.iter().map(|&v| half::f16::from_f32(v)),
        ))
    } else {
        Arc::new(Float32Array::from(values.to_vec()))
    };
    let nulls = null
        .iter()
        .any(|&x| x)
        .then(|| NullBuffer::from_iter(null.iter().map(|&x| !x)));
    let emb = FixedSizeListArray::try_new(item, dim as i32, child, nulls)?;
    let mut cols: Vec<ArrayRef> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| f.name() != column)
        .map(|(_, c)| c.clone())
        .collect();
    cols.push(Arc::new(emb));
    debug_assert_eq!(cols.last().map(|c| c.len()), Some(batch.num_rows()));
    RecordBatch::try_new(schema.clone(), cols)
}

/// Refuses a non-empty output folder without `overwrite` and writing over an input.
fn check_output(inputs: &[PathBuf], out: &EmbedOutput) -> Result<()> {
    crate::io::atomic::check_output_dir(&out.dir, out.overwrite)?;
    let mut names = std::collections::HashSet::new();
    for p in inputs {
        let name = p.file_name().unwrap_or_default().to_os_string();
        if !names.insert(name) {
            return Err(Error::param(
                "inputs",
                format!(
                    "two inputs are named {}; their outputs would collide in one folder",
                    p.file_name().unwrap_or_default().to_string_lossy()
                ),
            ));
        }
        if out.dir.is_dir() && !out.sidecar {
            let input = std::fs::canonicalize(p).map_err(|e| Error::io("reading", p, e))?;
            let dest = std::fs::canonicalize(&out.dir)
                .map_err(|e| Error::io("reading", &out.dir, e))?
                .join(p.file_name().unwrap_or_default());
            if dest == input {
                return Err(Error::OutputIsInput { path: dest });
            }
        }
    }
    Ok(())
}
