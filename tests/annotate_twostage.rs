//! Two-stage vote-k (`dprune annotate --method votek`, issue 5): stage 1
//! writes ⌈M/10⌉ rows, stage 2 completes the budget from a confidence file
//! or from the kNN surrogate over the labelled stage-1 rows, and every bad
//! side file is a clear error naming the file, line or row, id and value.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use parquet::arrow::ArrowWriter;

use crate::util::*;

const POOL: &str = "laion_mini/part-00000.parquet"; // 500 rows, clip_emb 32-d, id int64
const COMMON: [&str; 6] = ["--method", "votek", "--budget", "30", "--votek-k", "20"];

fn annotate(extra: &[&str], out: &Path) -> String {
    let pool = fixture(POOL);
    let mut args = vec!["annotate", pool.as_str(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(&COMMON);
    args.extend_from_slice(extra);
    run_ok_stderr(&args)
}

fn annotate_fails(extra: &[&str], out: &Path) -> String {
    let pool = fixture(POOL);
    let mut args = vec!["annotate", pool.as_str(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(&COMMON);
    args.extend_from_slice(extra);
    fails(&args)
}

fn strings(b: &RecordBatch, name: &str) -> Vec<String> {
    let c = b.column_by_name(name).unwrap();
    let a = c.as_any().downcast_ref::<StringArray>().unwrap();
    (0..a.len()).map(|i| a.value(i).to_string()).collect()
}

fn i32s(b: &RecordBatch, name: &str) -> Vec<i32> {
    let c = b.column_by_name(name).unwrap();
    c.as_any().downcast_ref::<Int32Array>().unwrap().values().to_vec()
}

fn pool_ids() -> Vec<i64> {
    i64s(&read(Path::new(&fixture(POOL))).1, "id")
}

/// A confidence per pool id, deterministic and with few ties.
fn conf_of(id: i64) -> f64 {
    ((id * 7919) % 1009) as f64 / 1009.0
}

fn write_parquet(path: &Path, cols: Vec<(&str, ArrayRef)>) {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), cols.into_iter().map(|c| c.1).collect()).unwrap();
    let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Stage 1 of the common flags: (its output, its ids in order).
fn stage1(dir: &Path) -> (PathBuf, Vec<i64>) {
    let out = dir.join("stage1.parquet");
    let err = annotate(&[], &out);
    assert!(err.contains("stage 1 of two-stage vote-k (3 of 30 rows)"), "{err}");
    let ids = i64s(&read(&out).1, "id");
    (out, ids)
}

/// A CSV of `id,confidence` for every pool id not in `skip`.
fn conf_csv(path: &Path, skip: &[i64]) {
    let mut text = String::from("id,confidence\n");
    for id in pool_ids().into_iter().filter(|i| !skip.contains(i)) {
        text += &format!("{id},{}\n", conf_of(id));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn stage1_is_a_tenth_of_the_budget_by_vote_k() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, ids) = stage1(tmp.path());
    let (_, b) = read(&out);
    assert_eq!(ids.len(), 3, "ceil(30 / 10)");
    assert!(strings(&b, "dprune_method").iter().all(|m| m == "votek-stage1"));
    assert_eq!(i32s(&b, "dprune_stage"), vec![1, 1, 1]);
    // stage 1 is vote-k's greedy order: the prefix of fast vote-k
    let fast = tmp.path().join("fast.parquet");
    let pool = fixture(POOL);
    run_ok(&[
        "annotate",
        &pool,
        "-o",
        fast.to_str().unwrap(),
        "--budget",
        "30",
        "--votek-k",
        "20",
        "--quiet",
    ]);
    assert_eq!(&i64s(&read(&fast).1, "id")[..3], &ids[..]);
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("stage1.report.json")).unwrap()).unwrap();
    assert_eq!(rep["two_stage"]["stage"], 1);
    assert_eq!(rep["two_stage"]["stage1_rows"], 3);
    assert_eq!(rep["meta"]["method"], "votek-stage1");
    // an explicit stage-1 size
    let o = tmp.path().join("s5.parquet");
    annotate(&["--votek-stage1", "5", "--quiet"], &o);
    assert_eq!(i64s(&read(&o).1, "id").len(), 5);
}

#[test]
fn stage2_takes_one_row_per_confidence_stratum() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, l1) = stage1(tmp.path());
    let conf = tmp.path().join("conf.csv");
    conf_csv(&conf, &l1);
    let out = tmp.path().join("sel.parquet");
    annotate(&["--confidence", conf.to_str().unwrap(), "--quiet"], &out);
    let (_, b) = read(&out);
    let ids = i64s(&b, "id");
    assert_eq!(ids.len(), 30);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 30);
    assert_eq!(&ids[..3], &l1[..], "the stage-1 rows come first");
    let mut stage = vec![1; 3];
    stage.extend(vec![2; 27]);
    assert_eq!(i32s(&b, "dprune_stage"), stage);
    assert!(strings(&b, "dprune_method").iter().all(|m| m == "votek"));
    // the pool least confident first (ties to the lower row), stage-1 rows last
    let pool = pool_ids();
    let mut sorted: Vec<usize> = (0..pool.len()).collect();
    let key = |i: usize| {
        if l1.contains(&pool[i]) {
            f64::INFINITY
        } else {
            conf_of(pool[i])
        }
    };
    sorted.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));
    let pos = |id: i64| sorted.iter().position(|&i| pool[i] == id).unwrap();
    let width = (0.9 * 500.0 / 27.0f64).floor() as usize; // 16
    let strata: Vec<usize> = ids[3..].iter().map(|&id| pos(id) / width).collect();
    assert_eq!(strata, (0..27).collect::<Vec<_>>(), "one pick per stratum, in order");
    assert!(
        ids[3..].iter().all(|&id| pos(id) < 450),
        "the most confident 10% is never visited"
    );
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("sel.report.json")).unwrap()).unwrap();
    assert_eq!(rep["two_stage"]["stage"], 2);
    assert_eq!(rep["two_stage"]["stratum_width"], 16);
    assert_eq!(rep["two_stage"]["confidence"], "given");
    assert_eq!(rep["nested"], false);

    // the same confidences as an NLL in Parquet (higher = less confident), with
    // values for the stage-1 rows (ignored) and the annotated stage-1 file checked
    let nll = tmp.path().join("nll.parquet");
    write_parquet(
        &nll,
        vec![
            ("id", Arc::new(Int64Array::from(pool.clone())) as ArrayRef),
            (
                "nll",
                Arc::new(Float64Array::from_iter_values(pool.iter().map(|&i| -conf_of(i)))),
            ),
        ],
    );
    let again = tmp.path().join("again.parquet");
    annotate(
        &[
            "--confidence",
            nll.to_str().unwrap(),
            "--confidence-col",
            "nll",
            "--confidence-order",
            "higher-is-less-confident",
            "--stage1",
            tmp.path().join("stage1.parquet").to_str().unwrap(),
            "--quiet",
        ],
        &again,
    );
    assert_eq!(i64s(&read(&again).1, "id"), ids);
}

#[test]
fn the_knn_surrogate_reads_labels_of_the_stage1_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, l1) = stage1(tmp.path());
    let labelled = tmp.path().join("labelled.csv");
    let mut text = String::from("id,label\n");
    for (i, id) in l1.iter().enumerate() {
        text += &format!("{id},\"class {}\"\n", i % 2);
    }
    std::fs::write(&labelled, text).unwrap();
    let out = tmp.path().join("sel.parquet");
    let args = ["--knn-confidence", "--stage1", labelled.to_str().unwrap(), "--quiet"];
    annotate(&args, &out);
    let (_, b) = read(&out);
    let ids = i64s(&b, "id");
    assert_eq!(ids.len(), 30);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 30);
    assert_eq!(&ids[..3], &l1[..]);
    assert!(strings(&b, "dprune_method").iter().all(|m| m == "votek-knnconf"));
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("sel.report.json")).unwrap()).unwrap();
    assert_eq!(rep["two_stage"]["confidence"], "knn_surrogate");
    // deterministic, and the labels matter: one class for all gives every row
    // confidence 1, so the strata fall back to row order and the picks change
    let again = tmp.path().join("again.parquet");
    annotate(&args, &again);
    assert_eq!(i64s(&read(&again).1, "id"), ids);
    let one = tmp.path().join("one.csv");
    let text: String = std::iter::once("id,label\n".to_string())
        .chain(l1.iter().map(|id| format!("{id},x\n")))
        .collect();
    std::fs::write(&one, text).unwrap();
    let flat = tmp.path().join("flat.parquet");
    annotate(
        &["--knn-confidence", "--stage1", one.to_str().unwrap(), "--quiet"],
        &flat,
    );
    assert_ne!(i64s(&read(&flat).1, "id"), ids);
}

#[test]
fn bad_confidence_files_are_errors_naming_line_id_and_value() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, l1) = stage1(tmp.path());
    let out = tmp.path().join("sel.parquet");
    let conf = tmp.path().join("conf.csv");
    let run = |text: &str| {
        std::fs::write(&conf, text).unwrap();
        annotate_fails(&["--confidence", conf.to_str().unwrap()], &out)
    };
    let pool = pool_ids();
    let good: Vec<String> = pool
        .iter()
        .filter(|i| !l1.contains(i))
        .map(|id| format!("{id},{}", conf_of(*id)))
        .collect();
    let body = |lines: &[String]| format!("id,confidence\n{}\n", lines.join("\n"));

    // pool rows without a confidence
    let err = run(&body(&good[3..]));
    assert!(err.contains("no confidence for 3 pool rows"), "{err}");
    for id in &pool.iter().filter(|i| !l1.contains(i)).collect::<Vec<_>>()[..3] {
        assert!(err.contains(&id.to_string()), "{err}");
    }
    // a value that is not a number, then one that is not finite (line = header + 1 + index)
    let mut bad = good.clone();
    let id = bad[7].split(',').next().unwrap().to_string();
    bad[7] = format!("{id},abc");
    let err = run(&body(&bad));
    assert!(
        err.contains("conf.csv") && err.contains("line 9") && err.contains(&format!("id `{id}`")),
        "{err}"
    );
    assert!(err.contains("`abc`") && err.contains("not a number"), "{err}");
    bad[7] = format!("{id},NaN");
    let err = run(&body(&bad));
    assert!(
        err.contains("line 9") && err.contains("NaN") && err.contains("not finite"),
        "{err}"
    );
    bad[7] = format!("{id},");
    let err = run(&body(&bad));
    assert!(err.contains("line 9") && err.contains("no confidence"), "{err}");
    // an id that is not in the pool, and a repeated id
    let mut extra = good.clone();
    extra.push("99999,0.5".into());
    let err = run(&body(&extra));
    assert!(err.contains("id `99999` is not in the pool"), "{err}");
    let mut dup = good.clone();
    dup.push(good[0].clone());
    let err = run(&body(&dup));
    assert!(err.contains("repeats") || err.contains("also at line 2"), "{err}");
    // a missing column, a ragged line, an unknown extension
    let err = run("id,conf\n1,0.5\n");
    assert!(err.contains("column `confidence`") && err.contains("id, conf"), "{err}");
    let err = run("id,confidence\n1,0.5,7\n");
    assert!(
        err.contains("line 2") && err.contains("3 fields, the header has 2"),
        "{err}"
    );
    let json = tmp.path().join("conf.json");
    std::fs::write(&json, "{}").unwrap();
    let err = annotate_fails(&["--confidence", json.to_str().unwrap()], &out);
    assert!(
        err.contains("--confidence") && err.contains(".parquet, .csv or .tsv"),
        "{err}"
    );
    let err = annotate_fails(&["--confidence", tmp.path().join("none.csv").to_str().unwrap()], &out);
    assert!(err.contains("none.csv"), "{err}");
    assert!(!out.exists());
}

#[test]
fn bad_stage1_files_and_flag_combinations_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (stage1_out, l1) = stage1(tmp.path());
    let out = tmp.path().join("sel.parquet");
    let s1 = tmp.path().join("labelled.parquet");
    let write = |ids: Vec<i64>, labels: Vec<Option<&str>>| {
        write_parquet(
            &s1,
            vec![
                ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
                ("label", Arc::new(StringArray::from(labels))),
            ],
        )
    };
    let knn = ["--knn-confidence", "--stage1", s1.to_str().unwrap()];
    // a row that stage 1 did not select
    let other = pool_ids().into_iter().find(|i| !l1.contains(i)).unwrap();
    write(vec![l1[0], l1[1], other], vec![Some("a"), Some("b"), Some("a")]);
    let err = annotate_fails(&knn, &out);
    assert!(
        err.contains("labelled.parquet") && err.contains("row 2") && err.contains(&format!("id `{other}`")),
        "{err}"
    );
    assert!(
        err.contains("not one of the 3 stage-1 rows") && err.contains("--seed"),
        "{err}"
    );
    // a stage-1 row left out
    write(vec![l1[0], l1[1]], vec![Some("a"), Some("b")]);
    let err = annotate_fails(&knn, &out);
    assert!(
        err.contains("1 of the 3 stage-1 rows are missing") && err.contains(&l1[2].to_string()),
        "{err}"
    );
    // a missing label
    write(l1.clone(), vec![Some("a"), None, Some("b")]);
    let err = annotate_fails(&knn, &out);
    assert!(
        err.contains("row 1") && err.contains(&format!("id `{}` has no label", l1[1])),
        "{err}"
    );
    // no label column: the stage-1 output as written
    let err = annotate_fails(&["--knn-confidence", "--stage1", stage1_out.to_str().unwrap()], &out);
    assert!(
        err.contains("column `label`") && err.contains("no such column"),
        "{err}"
    );
    // flag combinations
    let err = annotate_fails(&["--knn-confidence"], &out);
    assert!(
        err.contains("--knn-confidence") && err.contains("needs --stage1"),
        "{err}"
    );
    let conf = tmp.path().join("c.csv");
    conf_csv(&conf, &l1);
    let err = annotate_fails(
        &[
            "--knn-confidence",
            "--stage1",
            s1.to_str().unwrap(),
            "--confidence",
            conf.to_str().unwrap(),
        ],
        &out,
    );
    assert!(err.contains("not both"), "{err}");
    let err = annotate_fails(&["--votek-stage1", "31"], &out);
    assert!(
        err.contains("--votek-stage1") && err.contains("31 is more than the budget of 30"),
        "{err}"
    );
    let err = annotate_fails(&["--confidence-order", "up"], &out);
    assert!(err.contains("--confidence-order") && err.contains("`up`"), "{err}");
    let pool = fixture(POOL);
    let err = fails(&[
        "annotate",
        &pool,
        "-o",
        out.to_str().unwrap(),
        "--budget",
        "30",
        "--votek-k",
        "20",
        "--confidence",
        conf.to_str().unwrap(),
    ]);
    assert!(err.contains("--method votek, not fast-votek"), "{err}");
    assert!(!out.exists());
}
