//! Shared helpers for the integration tests.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use assert_cmd::Command;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture path as a string.
pub fn fixture(rel: &str) -> String {
    root().join("fixtures").join(rel).display().to_string()
}

/// The `dprune` binary, run from the repository root.
pub fn dprune() -> Command {
    let mut c = assert_cmd::cargo::cargo_bin_cmd!("dprune");
    c.current_dir(root());
    c
}

/// The 1,000 MNIST test digits in `../shared/data` (the toy ViT's evaluation images).
pub fn mnist() -> String {
    let p = root()
        .join("..")
        .join("shared")
        .join("data")
        .join("mnist-test-1k.parquet");
    assert!(
        p.is_file(),
        "the MNIST test digits are missing: expected {}",
        p.display()
    );
    p.display().to_string()
}

/// Runs dprune expecting success; returns stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = dprune().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "dprune {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs dprune expecting success; returns stderr (summaries, warnings).
pub fn run_ok_stderr(args: &[&str]) -> String {
    let out = dprune().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "dprune {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs dprune expecting failure with exit code 2 and no panic; returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = dprune().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "dprune {args:?} should fail with exit 2; stderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    err
}

/// Reads a whole Parquet file: (schema, all rows as one batch).
pub fn read(path: &Path) -> (SchemaRef, RecordBatch) {
    let f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let b = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    let schema = b.schema().clone();
    let batches: Vec<RecordBatch> = b.build().unwrap().map(|b| b.unwrap()).collect();
    let all = concat_batches(&schema, &batches).unwrap();
    (schema, all)
}

/// An int64 column as a Vec.
pub fn i64s(b: &RecordBatch, name: &str) -> Vec<i64> {
    let c = b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
    c.as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec()
}

/// A float32 column as a Vec of options.
pub fn f32s(b: &RecordBatch, name: &str) -> Vec<Option<f32>> {
    let c = b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
    let a = c.as_any().downcast_ref::<Float32Array>().unwrap();
    (0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))).collect()
}

/// Writes `id` + `emb` (fixed_size_list<float32, dim>) with the given rows;
/// `None` rows are null.
pub fn write_embeddings(path: &Path, rows: &[Option<Vec<f32>>], dim: usize) {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("emb", DataType::FixedSizeList(item.clone(), dim as i32), true),
    ]));
    let mut vals = Vec::new();
    let mut valid = Vec::new();
    for r in rows {
        match r {
            Some(v) => {
                assert_eq!(v.len(), dim);
                vals.extend_from_slice(v);
                valid.push(true);
            }
            None => {
                vals.extend(std::iter::repeat_n(0.0, dim));
                valid.push(false);
            }
        }
    }
    let emb =
        FixedSizeListArray::try_new(item, dim as i32, Arc::new(Float32Array::from(vals)), Some(valid.into())).unwrap();
    let ids = Int64Array::from_iter_values(0..rows.len() as i64);
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids) as ArrayRef, Arc::new(emb)]).unwrap();
    let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Writes a 1-D `<i8` `.npy` vector, as `numpy.save` does for int64 labels.
pub fn write_labels_npy(path: &Path, labels: &[i64]) {
    let h = format!(
        "{{'descr': '<i8', 'fortran_order': False, 'shape': ({},), }}",
        labels.len()
    );
    let pad = 64 - (10 + h.len() + 1) % 64;
    let h = format!("{h}{}\n", " ".repeat(pad % 64));
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend((h.len() as u16).to_le_bytes());
    v.extend(h.as_bytes());
    v.extend(labels.iter().flat_map(|l| l.to_le_bytes()));
    std::fs::write(path, v).unwrap();
}

/// Deterministic pseudo-random unit-ish vectors.
pub fn vectors(n: usize, dim: usize, seed: u64) -> Vec<Option<Vec<f32>>> {
    let mut r = dprune::rng::Rng::new(seed);
    (0..n)
        .map(|_| Some((0..dim).map(|_| r.normal() as f32).collect()))
        .collect()
}

/// Files in a folder, sorted by name (hidden files included).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The JSON report of an output folder.
pub fn report(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("_dprune_report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}
