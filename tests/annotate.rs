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

// ---------------------------------------------------------------------------
// Embedding on the fly (issue 4) and retrieval options (issue 5) on the text
// fixtures: 2 × 150 captions (`id`, `caption`, `topic` int32, 6 topics).

const CAPTIONS: &str = "text/captions-*.parquet";
const CAPTIONS_A: &str = "text/captions-00000.parquet"; // ids 0..150
const CAPTIONS_B: &str = "text/captions-00001.parquet"; // ids 150..300
const MINILM_SHA256: &str = "abe590837511c032d3cad5d1253017ee3e11e772cbad397d2c3784284681a801";

/// A file of `../shared/models` (beside the clone; see MODELS.md).
fn shared_model(file: &str) -> String {
    let p = root().join("..").join("shared").join("models").join(file);
    assert!(p.is_file(), "missing {}: shared/models beside the clone", p.display());
    p.display().to_string()
}

/// The `dprune.annotate` record of an annotate output.
fn annotate_meta(path: &Path) -> serde_json::Value {
    serde_json::from_str(&read(path).0.metadata()["dprune.annotate"]).unwrap()
}

fn strings(b: &RecordBatch, name: &str) -> Vec<String> {
    let c = b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
    let c = arrow::compute::cast(c, &DataType::Utf8).unwrap();
    let s = c.as_any().downcast_ref::<StringArray>().unwrap();
    (0..s.len()).map(|i| s.value(i).to_string()).collect()
}

/// id → (caption, topic) of the caption files.
fn caption_table(paths: &[&Path]) -> HashMap<i64, (String, String)> {
    let mut m = HashMap::new();
    for p in paths {
        let b = read(p).1;
        for ((id, c), t) in i64s(&b, "id")
            .into_iter()
            .zip(strings(&b, "caption"))
            .zip(strings(&b, "topic"))
        {
            m.insert(id, (c, t));
        }
    }
    m
}

/// Runs `dprune demos` (quiet) with `args`, returns the output.
fn demos(args: &[&str], out: &Path) -> RecordBatch {
    let mut all = vec!["demos"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", out.to_str().unwrap(), "-q"]);
    run_ok_stderr(&all);
    read(out).1
}

/// Demo ids per query (the output is grouped by query, in query order).
fn per_query(b: &RecordBatch) -> Vec<(i64, Vec<i64>)> {
    let mut v: Vec<(i64, Vec<i64>)> = Vec::new();
    for (q, d) in i64s(b, "query_id").into_iter().zip(i64s(b, "demo_id")) {
        match v.last_mut() {
            Some((lq, l)) if *lq == q => l.push(d),
            _ => v.push((q, vec![d])),
        }
    }
    v
}

#[test]
fn annotate_with_a_model_selects_like_annotate_on_embed_output() {
    let tmp = tempfile::tempdir().unwrap();
    let model = shared_model("minilm-l6-v2.onnx");
    let emb = tmp.path().join("emb");
    run_ok_stderr(&[
        "embed",
        "--model",
        &model,
        "--text-col",
        "caption",
        &fixture(CAPTIONS),
        "-o",
        emb.to_str().unwrap(),
        "-q",
    ]);
    let cache = tmp.path().join("cache");
    let fly = tmp.path().join("fly.parquet");
    let flags = ["--budget", "20", "--votek-k", "20", "--seed", "1"];
    let mut with_model = flags.to_vec();
    with_model.extend_from_slice(&[
        "--model",
        &model,
        "--text-col",
        "caption",
        "--cache",
        cache.to_str().unwrap(),
    ]);
    annotate(&fixture(CAPTIONS), &fly, &with_model);
    let pre = tmp.path().join("pre.parquet");
    annotate(&format!("{}/*.parquet", emb.display()), &pre, &flags);

    let (fs, fb) = read(&fly);
    let pb = read(&pre).1;
    assert_eq!(fb.num_rows(), 20);
    assert_eq!(i64s(&fb, "id"), i64s(&pb, "id"), "same embeddings, same selection");
    assert!(
        fs.field_with_name("embedding").is_err(),
        "only the pool's columns are copied"
    );
    let (mf, mp) = (annotate_meta(&fly), annotate_meta(&pre));
    let id = mf["encoder_id"].as_str().unwrap();
    assert!(id.contains(MINILM_SHA256) && id.contains("384"), "{id}");
    assert_eq!(mf["encoder_id"], mp["encoder_id"], "embed records the same identity");
    assert!(mf["encoder"].as_str().unwrap().contains("onnx model"));
    assert_eq!(mf["encoded_col"], "caption");
    assert_eq!(mf["dim"], 384);
    assert!(mp["encoded_col"].is_null());
    assert_eq!(mp["embedding_col"], "embedding");
    let (a, b) = (mf["mean"].as_array().unwrap(), mp["mean"].as_array().unwrap());
    assert_eq!(a.len(), 384);
    for (x, y) in a.iter().zip(b) {
        assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-6);
    }
    // A second run reads the cache (one entry per shard) and selects the same rows.
    with_model.push("--overwrite");
    annotate(&fixture(CAPTIONS), &fly, &with_model);
    assert_eq!(i64s(&read(&fly).1, "id"), i64s(&pb, "id"));
    let npy: Vec<String> = listing(&cache).into_iter().filter(|f| f.ends_with(".npy")).collect();
    assert_eq!(npy.len(), 2, "{npy:?}");
}

#[test]
fn annotate_with_the_hashed_embedder_needs_no_model() {
    let tmp = tempfile::tempdir().unwrap();
    let fly = tmp.path().join("fly.parquet");
    let flags = ["--budget", "15", "--votek-k", "20", "--method", "facility"];
    let mut hashed = flags.to_vec();
    hashed.extend_from_slice(&["--text-col", "caption"]);
    annotate(&fixture(CAPTIONS), &fly, &hashed);
    let emb = tmp.path().join("emb");
    run_ok_stderr(&[
        "embed",
        "--text-col",
        "caption",
        &fixture(CAPTIONS),
        "-o",
        emb.to_str().unwrap(),
        "-q",
    ]);
    let pre = tmp.path().join("pre.parquet");
    annotate(&format!("{}/*.parquet", emb.display()), &pre, &flags);
    assert_eq!(i64s(&read(&fly).1, "id"), i64s(&read(&pre).1, "id"));
    let m = annotate_meta(&fly);
    assert!(m["encoder"].as_str().unwrap().contains("hashed"), "{m}");
    assert!(m["encoder_id"].as_str().unwrap().starts_with("hashed|text|"), "{m}");
    assert_eq!(m["encoder_id"], annotate_meta(&pre)["encoder_id"]);
}

#[test]
fn demos_with_a_model_embed_both_files_like_embed_does() {
    let tmp = tempfile::tempdir().unwrap();
    let model = shared_model("minilm-l6-v2.onnx");
    let sel = tmp.path().join("sel.parquet");
    annotate(
        &fixture(CAPTIONS_A),
        &sel,
        &[
            "--method",
            "facility",
            "--budget",
            "24",
            "--model",
            &model,
            "--text-col",
            "caption",
        ],
    );
    let selected: HashSet<i64> = i64s(&read(&sel).1, "id").into_iter().collect();
    let out = tmp.path().join("d.parquet");
    let common = ["--k", "4", "--order", "descending"];
    let mut args = vec!["--annotated", sel.to_str().unwrap(), "--queries"];
    let q = fixture(CAPTIONS_B);
    args.push(&q);
    args.extend_from_slice(&common);
    args.extend_from_slice(&["--model", &model, "--text-col", "caption"]);
    let b = demos(&args, &out);
    assert_eq!(b.num_rows(), 150 * 4);
    let table = caption_table(&[&sel, Path::new(&q)]);
    let lists = per_query(&b);
    assert_eq!(lists.len(), 150);
    let mut same_topic = 0;
    for (qid, l) in &lists {
        assert!(
            l.iter().all(|d| selected.contains(d)),
            "demos from the annotated rows only"
        );
        same_topic += (table[qid].1 == table[&l[0]].1) as usize;
    }
    // The topic is one word of a templated caption; MiniLM still finds a demo of the
    // query's topic far more often than chance (6 topics: ~25 of 150; measured 99).
    assert!(
        same_topic >= 75,
        "nearest demo of the same topic for {same_topic} of 150 queries"
    );

    // The same as `demos` on copies of both files embedded by `dprune embed`.
    let (ea, eq) = (tmp.path().join("ea"), tmp.path().join("eq"));
    for (input, dir) in [(sel.to_str().unwrap(), &ea), (q.as_str(), &eq)] {
        run_ok_stderr(&[
            "embed",
            "--model",
            &model,
            "--text-col",
            "caption",
            input,
            "-o",
            dir.to_str().unwrap(),
            "-q",
        ]);
    }
    let (pa, pq) = (ea.join("sel.parquet"), eq.join("captions-00001.parquet"));
    let mut args = vec!["--annotated", pa.to_str().unwrap(), "--queries", pq.to_str().unwrap()];
    args.extend_from_slice(&common);
    let pre = demos(&args, &tmp.path().join("pre.parquet"));
    assert_eq!(i64s(&pre, "demo_id"), i64s(&b, "demo_id"));
    for (x, y) in f32s(&pre, "cosine").iter().zip(f32s(&b, "cosine")) {
        assert!((x.unwrap() - y.unwrap()).abs() < 1e-5);
    }
}

#[test]
fn demos_refuse_queries_of_another_encoder_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let (fp32, int8) = (
        shared_model("minilm-l6-v2.onnx"),
        shared_model("minilm-l6-v2-int8.onnx"),
    );
    let sel = tmp.path().join("sel.parquet");
    annotate(
        &fixture(CAPTIONS_A),
        &sel,
        &[
            "--method",
            "kcenter",
            "--budget",
            "10",
            "--model",
            &fp32,
            "--text-col",
            "caption",
        ],
    );
    let out = tmp.path().join("d.parquet");
    let o = out.to_str().unwrap();
    let q = fixture(CAPTIONS_B);
    let base = [
        "demos",
        "--annotated",
        sel.to_str().unwrap(),
        "--queries",
        q.as_str(),
        "--k",
        "2",
        "-o",
        o,
    ];
    let run = |extra: &[&str], ok: bool| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        if ok { run_ok_stderr(&v) } else { fails(&v) }
    };
    let err = run(&["--model", &int8, "--text-col", "caption"], false);
    assert!(
        err.contains("minilm-l6-v2-int8.onnx") && err.contains("minilm-l6-v2.onnx (") && err.contains("--force"),
        "{err}"
    );
    assert!(!out.exists());
    run(&["--model", &int8, "--text-col", "caption", "--force", "-q"], true);
    assert_eq!(read(&out).1.num_rows(), 300);
    // The hashed embedder is another encoder too (its dimension differs here).
    let err = run(&["--text-col", "caption", "--overwrite"], false);
    assert!(err.contains("dimension") || err.contains("--force"), "{err}");
    // Without encoder flags the annotated rows have no embeddings: say which flags to give.
    let err = run(&["--overwrite"], false);
    assert!(
        err.contains("embedded on the fly") && err.contains("--model") && err.contains("`caption`"),
        "{err}"
    );
}

#[test]
fn missing_models_and_bad_encoder_flags_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("s.parquet");
    let o = o.to_str().unwrap();
    let pool = fixture(CAPTIONS);
    let ann = |extra: &[&str]| {
        let mut v = vec![
            "annotate",
            pool.as_str(),
            "--budget",
            "5",
            "--method",
            "random",
            "-o",
            o,
        ];
        v.extend_from_slice(extra);
        fails(&v)
    };
    let err = ann(&["--model", "/nonexistent/enc.onnx", "--text-col", "caption"]);
    assert!(err.contains("/nonexistent/enc.onnx"), "{err}");
    let err = ann(&["--text-col", "captoin"]);
    assert!(
        err.contains("captoin") && err.contains("caption (") && err.contains("topic"),
        "{err}"
    );
    let err = ann(&["--model", &shared_model("minilm-l6-v2.onnx")]);
    assert!(err.contains("--model needs --text-col"), "{err}");
    let err = ann(&["--text-col", "caption", "--skip-bad"]);
    assert!(err.contains("--skip-bad needs --image-col"), "{err}");
    let err = ann(&["--text-col", "caption", "--embedding-col", "emb"]);
    assert!(err.contains("--embedding-col") && err.contains("not both"), "{err}");
    let err = ann(&["--text-col", "topic"]);
    assert!(err.contains("`topic`") && err.to_lowercase().contains("int32"), "{err}");
    // null texts: named with file and row
    let nulls = fixture("text/with_nulls.parquet");
    let err = fails(&[
        "annotate",
        &nulls,
        "--budget",
        "5",
        "--method",
        "random",
        "--text-col",
        "caption",
        "-o",
        o,
    ]);
    assert!(
        err.contains("with_nulls.parquet") && err.contains("row 3") && err.contains("null"),
        "{err}"
    );
    assert!(!Path::new(o).exists());

    let sel = tmp.path().join("sel.parquet");
    annotate(
        &fixture(CAPTIONS_A),
        &sel,
        &["--method", "random", "--budget", "8", "--text-col", "caption"],
    );
    let d = tmp.path().join("d.parquet");
    let err = fails(&[
        "demos",
        "--annotated",
        sel.to_str().unwrap(),
        "--queries",
        &fixture(CAPTIONS_B),
        "--model",
        "/nonexistent/enc.onnx",
        "--text-col",
        "caption",
        "-o",
        d.to_str().unwrap(),
    ]);
    assert!(err.contains("/nonexistent/enc.onnx"), "{err}");
    let err = fails(&[
        "demos",
        "--annotated",
        sel.to_str().unwrap(),
        "--queries",
        &fixture(CAPTIONS_B),
        "--text-col",
        "caption",
        "--query-text-col",
        "text",
        "-o",
        d.to_str().unwrap(),
    ]);
    assert!(
        err.contains("`text`") && err.contains("captions-00001.parquet"),
        "{err}"
    );
}

/// Annotates 40 captions of shard A with the hashed embedder; returns the file.
fn hashed_selection(dir: &Path) -> std::path::PathBuf {
    let sel = dir.join("sel.parquet");
    annotate(
        &fixture(CAPTIONS_A),
        &sel,
        &["--method", "facility", "--budget", "40", "--text-col", "caption"],
    );
    sel
}

#[test]
fn demos_fill_a_token_budget_with_the_users_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let sel = hashed_selection(tmp.path());
    let tok_path = shared_model("tokenizer.json");
    let mut tok = tokenizers::Tokenizer::from_file(&tok_path).unwrap();
    tok.with_truncation(None).unwrap();
    tok.with_padding(None);
    let count = |s: &str| tok.encode(s, false).unwrap().get_ids().len();
    let q = fixture(CAPTIONS_B);
    let table = caption_table(&[&sel, Path::new(&q)]);
    let s = sel.to_str().unwrap();
    let base = [
        "--annotated",
        s,
        "--queries",
        q.as_str(),
        "--text-col",
        "caption",
        "--order",
        "descending",
    ];
    let run = |extra: &[&str], name: &str| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        demos(&v, &tmp.path().join(name))
    };
    let ranking = per_query(&run(&["--k", "40"], "all.parquet")); // every annotated row, most similar first
    let budget = [
        "--k",
        "40",
        "--token-budget",
        "30",
        "--budget-tokenizer",
        tok_path.as_str(),
    ];
    let stop = run(&budget, "stop.parquet");
    let mut with_skip = budget.to_vec();
    with_skip.push("--budget-skip");
    let pack = per_query(&run(&with_skip, "pack.parquet"));
    // the tokens column is the tokenizer's count of the caption
    for (d, t) in i64s(&stop, "demo_id").iter().zip(i32s(&stop, "tokens")) {
        assert_eq!(count(&table[d].0), t as usize);
    }
    let cost = |l: &[i64]| l.iter().map(|d| count(&table[d].0)).sum::<usize>();
    let mut packed_more = 0;
    for ((full, stopped), packed) in ranking.iter().zip(per_query(&stop)).zip(&pack) {
        assert_eq!(full.0, stopped.0);
        let n = stopped.1.len();
        assert!(n >= 1 && cost(&stopped.1) <= 30);
        assert_eq!(&full.1[..n], &stopped.1[..], "the most similar demos, in order");
        assert!(cost(&full.1[..=n]) > 30, "stops only when the next demo does not fit");
        assert!(cost(&packed.1) <= 30 && packed.1[..n] == stopped.1[..]);
        packed_more += (packed.1.len() > n) as usize;
    }
    assert!(packed_more > 0, "packing finds shorter demos further down");
    // The query's own tokens come off the budget first; a per-demo cap skips long demos.
    let mut with_query = budget.to_vec();
    with_query.extend_from_slice(&["--budget-query-col", "caption", "--max-demo-tokens", "8"]);
    let qb = run(&with_query, "q.parquet");
    for (qid, l) in per_query(&qb) {
        assert!(cost(&l) + count(&table[&qid].0) <= 30, "query {qid}");
    }
    assert!(i32s(&qb, "tokens").iter().all(|&t| t <= 8));
    // --k still caps the count
    let mut capped = budget[2..].to_vec();
    capped.extend_from_slice(&["--k", "2"]);
    assert!(per_query(&run(&capped, "k2.parquet")).iter().all(|(_, l)| l.len() <= 2));

    let o = tmp.path().join("bad.parquet");
    let o = o.to_str().unwrap();
    let bad = |extra: &[&str]| {
        let mut v = vec![
            "demos",
            "--annotated",
            s,
            "--queries",
            &q,
            "--text-col",
            "caption",
            "-o",
            o,
        ];
        v.extend_from_slice(extra);
        fails(&v)
    };
    let err = bad(&["--token-budget", "30"]);
    assert!(err.contains("--budget-tokenizer"), "{err}");
    let err = bad(&["--token-budget", "30", "--budget-tokenizer", "/nonexistent/tok.json"]);
    assert!(err.contains("/nonexistent/tok.json"), "{err}");
    let err = bad(&["--token-budget", "0", "--budget-tokenizer", &tok_path]);
    assert!(err.contains("--token-budget") && err.contains('0'), "{err}");
    let err = bad(&[
        "--token-budget",
        "30",
        "--budget-tokenizer",
        &tok_path,
        "--budget-col",
        "label",
    ]);
    assert!(
        err.contains("--budget-col") && err.contains("no column `label`"),
        "{err}"
    );
}

#[test]
fn demos_render_one_prompt_per_query_from_a_template() {
    let tmp = tempfile::tempdir().unwrap();
    let sel = hashed_selection(tmp.path());
    let q = fixture(CAPTIONS_B);
    let table = caption_table(&[&sel, Path::new(&q)]);
    let s = sel.to_str().unwrap();
    let template = "{{#demos}}{{caption}} => {{ topic }}\\n{{/demos}}{{caption}} =>";
    let jsonl = tmp.path().join("p.jsonl");
    let base = [
        "--annotated",
        s,
        "--queries",
        q.as_str(),
        "--text-col",
        "caption",
        "--k",
        "3",
        "--template",
        template,
    ];
    let mut args = base.to_vec();
    args.extend_from_slice(&["--prompts", jsonl.to_str().unwrap()]);
    let b = demos(&args, &tmp.path().join("d.parquet"));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lists = per_query(&b);
    assert_eq!(lines.len(), 150);
    for ((qid, l), line) in lists.iter().zip(&lines) {
        let mut want = String::new();
        for d in l {
            want.push_str(&format!("{} => {}\n", table[d].0, table[d].1));
        }
        want.push_str(&format!("{} =>", table[qid].0));
        assert_eq!(line["query_id"], qid.to_string());
        assert_eq!(line["demos"], l.len());
        assert_eq!(line["prompt"], want.as_str());
    }
    // default: Parquet next to the output
    let out = tmp.path().join("e.parquet");
    demos(&base, &out);
    let p = read(&tmp.path().join("e.prompts.parquet")).1;
    assert_eq!(i64s(&p, "query_id"), lists.iter().map(|l| l.0).collect::<Vec<_>>());
    assert_eq!(strings(&p, "prompt")[7], lines[7]["prompt"].as_str().unwrap());

    let o = tmp.path().join("bad.parquet");
    let o = o.to_str().unwrap();
    let bad = |t: &str| {
        fails(&[
            "demos",
            "--annotated",
            s,
            "--queries",
            &q,
            "--text-col",
            "caption",
            "--template",
            t,
            "-o",
            o,
        ])
    };
    let err = bad("{{#demos}}{{captoin}} {{topic}}{{/demos}}{{query.lable}}{{caption}}");
    assert!(
        err.contains("{{captoin}}") && err.contains("{{query.lable}}") && !err.contains("{{topic}} ("),
        "{err}"
    );
    let err = bad("{{#demos}}{{caption}}");
    assert!(err.contains("--template") && err.contains("{{/demos}}"), "{err}");
    assert!(!Path::new(o).exists());
}

#[test]
fn demos_exclude_the_query_by_the_hash_of_a_column() {
    let tmp = tempfile::tempdir().unwrap();
    let sel = hashed_selection(tmp.path());
    // The annotated captions again as queries, under other ids.
    let b = read(&sel).1;
    let write_queries = |path: &Path, large: bool| {
        let caps = b.column_by_name("caption").unwrap().clone();
        let (caps, dt) = if large {
            (
                arrow::compute::cast(&caps, &DataType::LargeUtf8).unwrap(),
                DataType::LargeUtf8,
            )
        } else {
            (caps, DataType::Utf8)
        };
        let ids: Vec<i64> = i64s(&b, "id").iter().map(|i| i + 10_000).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("caption", dt, true),
        ]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids)) as ArrayRef, caps]).unwrap();
        let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    };
    let qp = tmp.path().join("q.parquet");
    write_queries(&qp, false);
    let table = caption_table(&[&sel]);
    let query_caption: HashMap<i64, String> = i64s(&b, "id")
        .iter()
        .zip(strings(&b, "caption"))
        .map(|(i, c)| (i + 10_000, c))
        .collect();
    let s = sel.to_str().unwrap();
    let base = [
        "--annotated",
        s,
        "--queries",
        qp.to_str().unwrap(),
        "--text-col",
        "caption",
        "--k",
        "3",
        "--order",
        "descending",
    ];
    let plain = demos(&base, &tmp.path().join("p.parquet"));
    let cos = f32s(&plain, "cosine");
    for (r, (qid, l)) in per_query(&plain).iter().enumerate() {
        assert_eq!(
            table[&l[0]].0, query_caption[qid],
            "a copy of the query is its nearest demo"
        );
        assert!((cos[r * 3].unwrap() - 1.0).abs() < 1e-5);
    }
    let xp = tmp.path().join("x.parquet");
    let mut args = base.to_vec();
    args.extend_from_slice(&["--exclude-same", "caption", "-o", xp.to_str().unwrap()]);
    let mut all = vec!["demos"];
    all.extend_from_slice(&args);
    let summary = run_ok_stderr(&all);
    assert!(summary.contains("same-value matches skipped"), "{summary}");
    let x = read(&xp).1;
    assert_eq!(x.num_rows(), 40 * 3);
    for (qid, l) in per_query(&x) {
        assert!(l.iter().all(|d| table[d].0 != query_caption[&qid]), "query {qid}");
    }
    let bad = tmp.path().join("large.parquet");
    write_queries(&bad, true);
    let o = tmp.path().join("bad.parquet");
    let err = fails(&[
        "demos",
        "--annotated",
        s,
        "--queries",
        bad.to_str().unwrap(),
        "--text-col",
        "caption",
        "--exclude-same",
        "caption",
        "-o",
        o.to_str().unwrap(),
    ]);
    assert!(
        err.contains("--exclude-same") && err.contains("`caption`") && err.contains("never match"),
        "{err}"
    );
    let err = fails(&[
        "demos",
        "--annotated",
        s,
        "--queries",
        qp.to_str().unwrap(),
        "--text-col",
        "caption",
        "--exclude-same",
        "topic",
        "-o",
        o.to_str().unwrap(),
    ]);
    assert!(err.contains("no column `topic` in the queries"), "{err}");
}

#[test]
fn demos_label_diverse_take_labels_in_turn() {
    let tmp = tempfile::tempdir().unwrap();
    let sel = hashed_selection(tmp.path());
    let q = fixture(CAPTIONS_B);
    let table = caption_table(&[&sel]);
    let s = sel.to_str().unwrap();
    let base = ["--annotated", s, "--queries", q.as_str(), "--text-col", "caption"];
    let run = |extra: &[&str], name: &str| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        per_query(&demos(&v, &tmp.path().join(name)))
    };
    let desc = ["--order", "descending"];
    let ranking = run(&[&desc[..], &["--k", "40"]].concat(), "all.parquet");
    let diverse = run(
        &[&desc[..], &["--k", "8", "--label-col", "topic"]].concat(),
        "l.parquet",
    );
    let plain = run(&[&desc[..], &["--k", "8"]].concat(), "p.parquet");
    let mut plain_repeats = 0;
    for ((full, got), p) in ranking.iter().zip(&diverse).zip(&plain) {
        // Round-robin over labels in order of their most similar demo, each taking its next best.
        let mut by_label: Vec<(String, Vec<i64>)> = Vec::new();
        for d in &full.1 {
            let t = &table[d].1;
            match by_label.iter_mut().find(|(l, _)| l == t) {
                Some((_, v)) => v.push(*d),
                None => by_label.push((t.clone(), vec![*d])),
            }
        }
        let mut want = Vec::new();
        for round in 0.. {
            let before = want.len();
            for (_, v) in &by_label {
                if want.len() < 8
                    && let Some(d) = v.get(round)
                {
                    want.push(*d);
                }
            }
            if want.len() == before || want.len() == 8 {
                break;
            }
        }
        assert_eq!(got.1, want, "query {}", got.0);
        let labels: HashSet<&String> = p.1.iter().map(|d| &table[d].1).collect();
        plain_repeats += (labels.len() < 6) as usize;
    }
    assert!(
        plain_repeats > 0,
        "plain nearest demos repeat labels, so the test can tell"
    );
    // labels with MMR inside each turn, ascending order: still 8 demos per query
    let mixed = run(
        &[
            "--k",
            "8",
            "--label-col",
            "topic",
            "--mmr",
            "0.5",
            "--order",
            "ascending",
        ],
        "m.parquet",
    );
    assert!(mixed.iter().all(|(_, l)| l.len() == 8));

    let o = tmp.path().join("bad.parquet");
    let err = fails(&[
        "demos",
        "--annotated",
        s,
        "--queries",
        &q,
        "--text-col",
        "caption",
        "--label-col",
        "label",
        "-o",
        o.to_str().unwrap(),
    ]);
    assert!(
        err.contains("--label-col") && err.contains("no column `label`"),
        "{err}"
    );
    // a null label is named with its row
    let pool = tmp.path().join("pool.parquet");
    let rows = random_rows(12, 4, 9);
    write_pool(&pool, Some(&(0..12).collect::<Vec<_>>()), &rows, None);
    let (schema, b) = read(&pool);
    let labels = StringArray::from(
        (0..12)
            .map(|i| (i != 5).then(|| format!("l{}", i % 3)))
            .collect::<Vec<_>>(),
    );
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("label", DataType::Utf8, true));
    let mut cols = b.columns().to_vec();
    cols.push(Arc::new(labels));
    let labelled = tmp.path().join("labelled.parquet");
    let schema = Arc::new(Schema::new(fields));
    let mut w = ArrowWriter::try_new(File::create(&labelled).unwrap(), schema.clone(), None).unwrap();
    w.write(&RecordBatch::try_new(schema, cols).unwrap()).unwrap();
    w.close().unwrap();
    let err = fails(&[
        "demos",
        "--annotated",
        labelled.to_str().unwrap(),
        "--queries",
        pool.to_str().unwrap(),
        "--label-col",
        "label",
        "--k",
        "3",
        "-o",
        o.to_str().unwrap(),
    ]);
    assert!(
        err.contains("`label`") && err.contains("null at annotated row 5"),
        "{err}"
    );
}

#[test]
fn images_embed_on_the_fly_and_undecodable_ones_are_left_out_with_skip_bad() {
    use arrow::array::BinaryArray;

    let tmp = tempfile::tempdir().unwrap();
    // 40 MNIST digits, the image of row 7 replaced by bytes that are no image.
    let (schema, b) = read(Path::new(&mnist()));
    let b = b.slice(0, 40);
    let png = b.column_by_name("image_png").unwrap();
    let png = png.as_any().downcast_ref::<BinaryArray>().unwrap();
    let bytes: Vec<&[u8]> = (0..40)
        .map(|i| if i == 7 { b"not a png".as_slice() } else { png.value(i) })
        .collect();
    let cols: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .zip(b.columns())
        .map(|(f, c)| {
            if f.name() == "image_png" {
                Arc::new(BinaryArray::from(bytes.clone())) as ArrayRef
            } else {
                c.clone()
            }
        })
        .collect();
    let digits = tmp.path().join("digits.parquet");
    let mut w = ArrowWriter::try_new(File::create(&digits).unwrap(), schema.clone(), None).unwrap();
    w.write(&RecordBatch::try_new(schema, cols).unwrap()).unwrap();
    w.close().unwrap();
    let vit = shared_model("toyvit-mnist.onnx");
    let d = digits.to_str().unwrap();
    let enc = [
        "--model",
        vit.as_str(),
        "--image-col",
        "image_png",
        "--mean",
        "0.1307",
        "--std",
        "0.3081",
    ];
    let sel = tmp.path().join("sel.parquet");
    let mut args = vec!["--method", "kcenter", "--budget", "8", "--skip-bad"];
    args.extend_from_slice(&enc);
    annotate(d, &sel, &args);
    let ids = i64s(&read(&sel).1, "id");
    let bad_id = i64s(&b, "id")[7];
    assert_eq!(ids.len(), 8);
    assert!(!ids.contains(&bad_id));
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("sel.report.json")).unwrap()).unwrap();
    assert_eq!(rep["excluded_rows"], 1);
    let m = annotate_meta(&sel);
    assert_eq!(m["encoded_col"], "image_png");
    assert_eq!(m["dim"], 64);
    // without --skip-bad: an error naming file and row
    let o = tmp.path().join("e.parquet");
    let mut args = vec![
        "annotate",
        d,
        "--method",
        "kcenter",
        "--budget",
        "8",
        "-o",
        o.to_str().unwrap(),
    ];
    args.extend_from_slice(&enc);
    let err = fails(&args);
    assert!(err.contains("digits.parquet") && err.contains("row 7"), "{err}");
    // demos on the same file: the bad row is neither a demo nor a query
    let out = tmp.path().join("d.parquet");
    let mut args = vec![
        "demos",
        "--annotated",
        sel.to_str().unwrap(),
        "--queries",
        d,
        "--k",
        "3",
        "--skip-bad",
    ];
    args.extend_from_slice(&enc);
    args.extend_from_slice(&["-o", out.to_str().unwrap()]);
    let summary = run_ok_stderr(&args);
    assert!(
        summary.contains("0 annotated rows and 1 queries without an embedding"),
        "{summary}"
    );
    let r = read(&out).1;
    assert_eq!(r.num_rows(), 39 * 3);
    assert!(!i64s(&r, "query_id").contains(&bad_id));
}
