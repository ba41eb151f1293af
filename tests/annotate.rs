//! `dprune annotate` and `dprune demos` (issue 5): selections on the
//! fixtures, the written columns and metadata, retrieval, and every bad
//! input the issue lists (clear message naming the value, exit 2).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;

use crate::util::*;

const POOL: &str = "laion_mini/part-00000.parquet"; // 500 rows, clip_emb 32-d, id int64

fn annotate(pool: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["annotate", pool, "-o", out.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    dprune().args(&args).assert().success();
}

/// Writes `id` (optional, given values) and `emb` columns; `encoder` goes
/// into the embedding field's `dprune.encoder` metadata.
fn write_pool(path: &Path, ids: Option<&[i64]>, rows: &[Vec<f32>], encoder: Option<&str>) {
    let dim = rows[0].len();
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let mut emb_field = Field::new("emb", DataType::FixedSizeList(item.clone(), dim as i32), true);
    if let Some(e) = encoder {
        emb_field = emb_field.with_metadata(HashMap::from([("dprune.encoder".to_string(), e.to_string())]));
    }
    let vals: Vec<f32> = rows.iter().flatten().copied().collect();
    let emb = FixedSizeListArray::try_new(item, dim as i32, Arc::new(Float32Array::from(vals)), None).unwrap();
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    if let Some(ids) = ids {
        fields.push(Field::new("id", DataType::Int64, false));
        cols.push(Arc::new(Int64Array::from(ids.to_vec())));
    }
    fields.push(emb_field);
    cols.push(Arc::new(emb));
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn random_rows(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    vectors(n, dim, seed).into_iter().map(|r| r.unwrap()).collect()
}

fn i32s(b: &RecordBatch, name: &str) -> Vec<i32> {
    let c = b.column_by_name(name).unwrap();
    c.as_any().downcast_ref::<Int32Array>().unwrap().values().to_vec()
}

#[test]
fn fast_votek_writes_ranked_rows_with_all_columns_and_a_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sel.parquet");
    annotate(
        &fixture(POOL),
        &out,
        &["--budget", "25", "--votek-k", "20", "--seed", "3"],
    );
    let (schema, b) = read(&out);
    let (in_schema, input) = read(Path::new(&fixture(POOL)));
    for f in in_schema.fields() {
        assert!(schema.field_with_name(f.name()).is_ok(), "column {} kept", f.name());
    }
    assert_eq!(b.num_rows(), 25);
    assert_eq!(i32s(&b, "dprune_rank"), (0..25).collect::<Vec<_>>());
    let ids = i64s(&b, "id");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 25);
    // rows are copied intact: captions match the input row of the same id
    let in_ids = i64s(&input, "id");
    let cap = |batch: &RecordBatch, i: usize| {
        batch
            .column_by_name("caption")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(i)
            .to_string()
    };
    for (r, id) in ids.iter().enumerate() {
        let j = in_ids.iter().position(|x| x == id).unwrap();
        assert_eq!(cap(&b, r), cap(&input, j));
    }
    let gains = b
        .column_by_name("dprune_gain")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .values()
        .to_vec();
    assert!(
        gains.windows(2).all(|w| w[0] >= w[1]),
        "vote-k scores never increase: {gains:?}"
    );
    let methods = b
        .column_by_name("dprune_method")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .clone();
    assert!((0..25).all(|i| methods.value(i) == "fast-votek"));
    // the record for `demos`
    let meta: serde_json::Value = serde_json::from_str(&schema.metadata()["dprune.annotate"]).unwrap();
    assert_eq!(meta["centered"], true);
    assert_eq!(meta["mean"].as_array().unwrap().len(), 32);
    assert_eq!(meta["embedding_col"], "clip_emb");
    // the report
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("sel.report.json")).unwrap()).unwrap();
    assert_eq!(rep["budget"], 25);
    assert_eq!(rep["pool_rows"], 500);
    assert_eq!(rep["knn_backend"], "exact");
    let m = &rep["metrics"];
    let fl = m["facility_location"].as_f64().unwrap();
    assert!(fl > 0.0 && fl <= 1.0);
    assert_eq!(m["coverage"].as_array().unwrap().len(), 3);
    assert_eq!(m["kcenter_radius"].as_array().unwrap().len(), 3);
    assert!(m["redundancy"].as_f64().is_some());
}

#[test]
fn every_method_is_deterministic_and_greedy_ones_are_nested() {
    let tmp = tempfile::tempdir().unwrap();
    for method in ["fast-votek", "ideal", "facility", "kcenter", "kmeans", "random"] {
        let run = |budget: &str, name: &str| {
            let out = tmp.path().join(format!("{method}-{name}.parquet"));
            annotate(
                &fixture(POOL),
                &out,
                &["--method", method, "--budget", budget, "--seed", "7", "--votek-k", "30"],
            );
            i64s(&read(&out).1, "id")
        };
        let a = run("30", "a");
        let b = run("30", "b");
        assert_eq!(a, b, "{method}: same seed, same rows");
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 30, "{method}: distinct");
        if method != "kmeans" {
            let small = run("12", "small");
            assert_eq!(&a[..12], &small[..], "{method}: nested");
        }
    }
}

#[test]
fn hnsw_graph_reports_recall() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("h.parquet");
    annotate(
        &fixture(POOL),
        &out,
        &["--method", "ideal", "--budget", "10", "--knn", "hnsw"],
    );
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("h.report.json")).unwrap()).unwrap();
    assert_eq!(rep["knn_backend"], "hnsw");
    let r = rep["knn_recall"].as_f64().unwrap();
    assert!(r > 0.8 && r <= 1.0, "recall {r}");
    assert!(rep["ideal_spread"][0].as_f64().unwrap() >= 10.0);
}

#[test]
fn existing_output_needs_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sel.parquet");
    let o = out.to_str().unwrap();
    annotate(&fixture(POOL), &out, &["--method", "random", "--budget", "5"]);
    let err = fails(&[
        "annotate",
        &fixture(POOL),
        "--method",
        "random",
        "--budget",
        "6",
        "-o",
        o,
    ]);
    assert!(err.contains("sel.parquet") && err.contains("--overwrite"), "{err}");
    assert_eq!(read(&out).1.num_rows(), 5, "left alone");
    annotate(
        &fixture(POOL),
        &out,
        &["--method", "random", "--budget", "6", "--overwrite"],
    );
    assert_eq!(read(&out).1.num_rows(), 6);
}

#[test]
fn bad_budgets_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("s.parquet").display().to_string();
    let err = fails(&["annotate", &fixture(POOL), "--budget", "501", "-o", &o]);
    assert!(
        err.contains("--budget") && err.contains("501 is more than the 500 rows"),
        "{err}"
    );
    let err = fails(&["annotate", &fixture(POOL), "--budget", "0", "-o", &o]);
    assert!(err.contains("--budget") && err.contains('0'), "{err}");
    let err = fails(&["annotate", &fixture(POOL), "--budget", "-4", "-o", &o]);
    assert!(err.contains("--budget") && err.contains("-4"), "{err}");
    assert!(!tmp.path().join("s.parquet").exists());
}

#[test]
fn pool_smaller_than_k_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("small.parquet");
    write_pool(&pool, Some(&(0..40).collect::<Vec<_>>()), &random_rows(40, 8, 1), None);
    let o = tmp.path().join("s.parquet").display().to_string();
    let err = fails(&["annotate", pool.to_str().unwrap(), "--budget", "5", "-o", &o]);
    assert!(
        err.contains("--votek-k") && err.contains("40 rows") && err.contains("150"),
        "{err}"
    );
    let err = fails(&[
        "annotate",
        pool.to_str().unwrap(),
        "--method",
        "ideal",
        "--ideal-k",
        "40",
        "--budget",
        "5",
        "-o",
        &o,
    ]);
    assert!(err.contains("--ideal-k") && err.contains("40 rows"), "{err}");
}

#[test]
fn missing_id_column_is_an_error_that_offers_row_index() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("noid.parquet");
    write_pool(&pool, None, &random_rows(60, 8, 2), None);
    let o = tmp.path().join("s.parquet");
    let err = fails(&[
        "annotate",
        pool.to_str().unwrap(),
        "--budget",
        "5",
        "--votek-k",
        "10",
        "-o",
        o.to_str().unwrap(),
    ]);
    assert!(
        err.contains("no id column `id`") && err.contains("--row-index") && err.contains("emb"),
        "{err}"
    );
    let err = fails(&[
        "annotate",
        &fixture(POOL),
        "--id-col",
        "uid",
        "--budget",
        "5",
        "-o",
        o.to_str().unwrap(),
    ]);
    assert!(err.contains("no id column `uid`"), "{err}");
    annotate(
        pool.to_str().unwrap(),
        &o,
        &["--budget", "5", "--votek-k", "10", "--row-index"],
    );
    let rows = i64s(&read(&o).1, "dprune_row");
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|&r| (0..60).contains(&r)));
}

#[test]
fn duplicate_ids_are_an_error_naming_the_id() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("dup.parquet");
    let mut ids: Vec<i64> = (0..30).collect();
    ids[17] = 4;
    write_pool(&pool, Some(&ids), &random_rows(30, 8, 3), None);
    let o = tmp.path().join("s.parquet").display().to_string();
    let err = fails(&[
        "annotate",
        pool.to_str().unwrap(),
        "--budget",
        "5",
        "--votek-k",
        "10",
        "-o",
        &o,
    ]);
    assert!(err.contains("id `4`") && err.contains("rows 4 and 17"), "{err}");
}

#[test]
fn demos_retrieve_from_the_annotated_rows_most_similar_last() {
    let tmp = tempfile::tempdir().unwrap();
    let sel = tmp.path().join("sel.parquet");
    annotate(&fixture(POOL), &sel, &["--method", "facility", "--budget", "20"]);
    let selected: HashSet<i64> = i64s(&read(&sel).1, "id").into_iter().collect();
    let queries = fixture(POOL); // the pool itself: 20 queries are annotated rows
    let run = |order: &str, name: &str| {
        let out = tmp.path().join(name);
        dprune()
            .args([
                "demos",
                "--annotated",
                sel.to_str().unwrap(),
                "--queries",
                &queries,
                "--k",
                "4",
            ])
            .args(["--order", order, "-o", out.to_str().unwrap(), "--quiet"])
            .assert()
            .success();
        read(&out).1
    };
    let asc = run("ascending", "a.parquet");
    let desc = run("descending", "d.parquet");
    assert_eq!(asc.num_rows(), 500 * 4);
    let q = i64s(&asc, "query_id");
    let d = i64s(&asc, "demo_id");
    let pos = i32s(&asc, "position");
    let cos = f32s(&asc, "cosine");
    for (i, row) in (0..asc.num_rows()).enumerate() {
        assert!(selected.contains(&d[row]), "demo from the annotated rows only");
        assert_ne!(q[row], d[row], "the query itself is excluded by id");
        assert_eq!(pos[row], (i % 4) as i32);
        if i % 4 > 0 {
            assert!(cos[row - 1] <= cos[row], "most similar last");
        }
    }
    let dd = i64s(&desc, "demo_id");
    for qi in 0..500 {
        let a: Vec<i64> = d[qi * 4..qi * 4 + 4].to_vec();
        let mut b: Vec<i64> = dd[qi * 4..qi * 4 + 4].to_vec();
        b.reverse();
        assert_eq!(a, b);
    }
}

#[test]
fn demos_mmr_trades_similarity_for_diversity() {
    let tmp = tempfile::tempdir().unwrap();
    let sel = tmp.path().join("sel.parquet");
    annotate(&fixture(POOL), &sel, &["--method", "random", "--budget", "60"]);
    let queries = fixture("laion_mini/part-00001.parquet");
    let run = |extra: &[&str], name: &str| {
        let out = tmp.path().join(name);
        dprune()
            .args([
                "demos",
                "--annotated",
                sel.to_str().unwrap(),
                "--queries",
                &queries,
                "--k",
                "4",
            ])
            .args(extra)
            .args(["-o", out.to_str().unwrap(), "--quiet"])
            .assert()
            .success();
        read(&out).1
    };
    let plain = run(&[], "p.parquet");
    let one = run(&["--mmr", "1"], "one.parquet");
    assert_eq!(i64s(&plain, "demo_id"), i64s(&one, "demo_id"), "λ = 1 is plain nearest");
    let div = run(&["--mmr", "0.3"], "d.parquet");
    assert_eq!(div.num_rows(), 500 * 4);
    // Same total count, lower mean similarity to the query (more diverse), and some lists differ.
    let mean = |b: &arrow::array::RecordBatch| f32s(b, "cosine").iter().map(|c| c.unwrap() as f64).sum::<f64>();
    assert!(mean(&div) < mean(&plain));
    assert_ne!(i64s(&plain, "demo_id"), i64s(&div, "demo_id"));
    let o = tmp.path().join("bad.parquet").display().to_string();
    let e = fails(&[
        "demos",
        "--annotated",
        sel.to_str().unwrap(),
        "--queries",
        &queries,
        "--mmr",
        "1.5",
        "-o",
        &o,
    ]);
    assert!(e.contains("--mmr") && e.contains("1.5"), "{e}");
}

#[test]
fn demos_center_queries_with_the_pool_mean() {
    // Every vector is offset by a large constant: without the pool mean all
    // cosines would be ~1; centred, the nearest demo of a query equal to an
    // annotated row (other id) has cosine 1 and the rest are spread out.
    let tmp = tempfile::tempdir().unwrap();
    let mut rows = random_rows(50, 6, 4);
    rows.iter_mut().for_each(|r| r.iter_mut().for_each(|x| *x += 20.0));
    let pool = tmp.path().join("pool.parquet");
    write_pool(&pool, Some(&(0..50).collect::<Vec<_>>()), &rows, None);
    let sel = tmp.path().join("sel.parquet");
    annotate(pool.to_str().unwrap(), &sel, &["--method", "kcenter", "--budget", "10"]);
    let first = i64s(&read(&sel).1, "id")[0] as usize;
    let qpath = tmp.path().join("q.parquet");
    write_pool(&qpath, Some(&[1000]), &[rows[first].clone()], None);
    let out = tmp.path().join("d.parquet");
    dprune()
        .args([
            "demos",
            "--annotated",
            sel.to_str().unwrap(),
            "--queries",
            qpath.to_str().unwrap(),
        ])
        .args(["--k", "10", "--order", "descending", "-o", out.to_str().unwrap()])
        .assert()
        .success();
    let b = read(&out).1;
    assert_eq!(i64s(&b, "demo_id")[0], first as i64);
    let cos = f32s(&b, "cosine");
    assert!((cos[0].unwrap() - 1.0).abs() < 1e-5);
    assert!(cos[9].unwrap() < 0.5, "centred: far rows are not near 1 ({:?})", cos[9]);
}

#[test]
fn demos_dimension_and_encoder_mismatches_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let sel = tmp.path().join("sel.parquet");
    annotate(&fixture(POOL), &sel, &["--method", "random", "--budget", "10"]);
    let out = tmp.path().join("d.parquet").display().to_string();
    let err = fails(&[
        "demos",
        "--annotated",
        sel.to_str().unwrap(),
        "--queries",
        &fixture("bad/dim48.parquet"),
        "-o",
        &out,
    ]);
    assert!(
        err.contains("dim48.parquet") && err.contains("dimension 48, expected 32"),
        "{err}"
    );
    let err = fails(&[
        "demos",
        "--annotated",
        sel.to_str().unwrap(),
        "--queries",
        &fixture(POOL),
        "--k",
        "11",
        "-o",
        &out,
    ]);
    assert!(
        err.contains("--k") && err.contains("11 is more than the 10 annotated rows"),
        "{err}"
    );
    let err = fails(&[
        "demos",
        "--annotated",
        sel.to_str().unwrap(),
        "--queries",
        &fixture(POOL),
        "--k",
        "0",
        "-o",
        &out,
    ]);
    assert!(err.contains("--k"), "{err}");

    // recorded encoders differ
    let pool = tmp.path().join("pool.parquet");
    write_pool(
        &pool,
        Some(&(0..30).collect::<Vec<_>>()),
        &random_rows(30, 8, 5),
        Some("model-a"),
    );
    let q = tmp.path().join("q.parquet");
    write_pool(&q, Some(&[100, 101]), &random_rows(2, 8, 6), Some("model-b"));
    let sel2 = tmp.path().join("sel2.parquet");
    annotate(pool.to_str().unwrap(), &sel2, &["--method", "kcenter", "--budget", "5"]);
    let err = fails(&[
        "demos",
        "--annotated",
        sel2.to_str().unwrap(),
        "--queries",
        q.to_str().unwrap(),
        "--k",
        "2",
        "-o",
        &out,
    ]);
    assert!(
        err.contains("model-a") && err.contains("model-b") && err.contains("--force"),
        "{err}"
    );
    dprune()
        .args([
            "demos",
            "--annotated",
            sel2.to_str().unwrap(),
            "--queries",
            q.to_str().unwrap(),
        ])
        .args(["--k", "2", "--force", "-o", &out, "--quiet"])
        .assert()
        .success();
    // existing output
    let err = fails(&[
        "demos",
        "--annotated",
        sel2.to_str().unwrap(),
        "--queries",
        q.to_str().unwrap(),
        "--k",
        "2",
        "--force",
        "-o",
        &out,
    ]);
    assert!(err.contains("--overwrite"), "{err}");
}

#[test]
fn help_shows_examples() {
    for cmd in ["annotate", "demos"] {
        let out = dprune().args([cmd, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("Examples:"), "{text}");
    }
}
