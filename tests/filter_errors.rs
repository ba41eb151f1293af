//! Bad input: every case gets a clear message naming what is wrong and a
//! non-zero exit, never a panic.

use crate::util::*;

fn out_dir(tmp: &tempfile::TempDir) -> String {
    tmp.path().join("out").display().to_string()
}

#[test]
fn no_file_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&[
        "filter",
        "--keep",
        "0.3",
        "fixtures/nothing-here/*.parquet",
        "-o",
        &out_dir(&tmp),
    ]);
    assert!(
        err.contains("no file matches `fixtures/nothing-here/*.parquet`"),
        "{err}"
    );
}

#[test]
fn corrupt_parquet_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&[
        "filter",
        "--keep",
        "0.3",
        &fixture("bad/corrupt.parquet"),
        "-o",
        &out_dir(&tmp),
    ]);
    assert!(
        err.contains("corrupt.parquet") && err.contains("not a readable Parquet file"),
        "{err}"
    );
    assert!(!tmp.path().join("out").exists(), "nothing written");
}

#[test]
fn missing_embedding_column_lists_the_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&[
        "filter",
        &fixture("laion_mini/part-00000.parquet"),
        "--embedding-col",
        "nope",
        "-o",
        &out_dir(&tmp),
    ]);
    assert!(err.contains("no column `nope`") && err.contains("clip_emb"), "{err}");
    let err = fails(&["filter", &fixture("bad/no_emb.parquet"), "-o", &out_dir(&tmp)]);
    assert!(
        err.contains("no embedding column found") && err.contains("--embedding-col"),
        "{err}"
    );
    let err = fails(&[
        "filter",
        &fixture("laion_mini/part-00000.parquet"),
        "--embedding-col",
        "caption",
        "-o",
        &out_dir(&tmp),
    ]);
    assert!(err.contains("column `caption` has type Utf8"), "{err}");
}

#[test]
fn ambiguous_embedding_column_lists_candidates() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&["filter", &fixture("bad/two_emb_cols.parquet"), "-o", &out_dir(&tmp)]);
    assert!(
        err.contains("several possible embedding columns: img_emb, text_embedding, other_vec"),
        "{err}"
    );
}

#[test]
fn dimensions_differing_across_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&[
        "filter",
        &fixture("laion_mini/part-00000.parquet"),
        &fixture("bad/dim48.parquet"),
        "-o",
        &out_dir(&tmp),
    ]);
    assert!(
        err.contains("dim48.parquet") && err.contains("embedding dimension 48, expected 32"),
        "{err}"
    );
    let err = fails(&["filter", &fixture("bad/ragged.parquet"), "-o", &out_dir(&tmp)]);
    assert!(
        err.contains("ragged.parquet row 5: embedding dimension 31, expected 32"),
        "{err}"
    );
}

#[test]
fn nan_zero_and_null_vectors_name_file_and_row() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&["filter", &fixture("bad/nan_rows.parquet"), "-o", &out_dir(&tmp)]);
    assert!(
        err.contains("nan_rows.parquet row 7: embedding is not finite") && err.contains("--drop-invalid"),
        "{err}"
    );
    let zero = tmp.path().join("zero.parquet");
    let mut rows = vectors(10, 4, 1);
    rows[3] = Some(vec![0.0; 4]);
    write_embeddings(&zero, &rows, 4);
    let err = fails(&["filter", zero.to_str().unwrap(), "-o", &out_dir(&tmp)]);
    assert!(err.contains("zero.parquet row 3: embedding is all zeros"), "{err}");
    let null = tmp.path().join("null.parquet");
    let mut rows = vectors(10, 4, 1);
    rows[8] = None;
    write_embeddings(&null, &rows, 4);
    let err = fails(&["filter", null.to_str().unwrap(), "-o", &out_dir(&tmp)]);
    assert!(err.contains("null.parquet row 8: embedding is null"), "{err}");
}

#[test]
fn zero_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&["filter", &fixture("bad/empty.parquet"), "-o", &out_dir(&tmp)]);
    assert!(err.contains("hold no rows"), "{err}");
}

#[test]
fn keep_outside_range() {
    let tmp = tempfile::tempdir().unwrap();
    for v in ["0", "1.5", "-0.2", "nan"] {
        let err = fails(&[
            "filter",
            "--keep",
            v,
            &fixture("laion_mini/*.parquet"),
            "-o",
            &out_dir(&tmp),
        ]);
        assert!(
            err.contains("invalid --keep") && err.contains("outside (0, 1]"),
            "{v}: {err}"
        );
    }
    let err = fails(&[
        "filter",
        "--keep-n",
        "5000",
        &fixture("laion_mini/*.parquet"),
        "-o",
        &out_dir(&tmp),
    ]);
    assert!(err.contains("5000 is more than the 2000 usable rows"), "{err}");
    let err = fails(&[
        "filter",
        "--keep",
        "0.3",
        "--keep-n",
        "5",
        &fixture("laion_mini/*.parquet"),
        "-o",
        &out_dir(&tmp),
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn non_empty_output_needs_overwrite_and_inputs_are_never_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("precious.txt"), b"x").unwrap();
    let err = fails(&["filter", &fixture("laion_mini/*.parquet"), "-o", out.to_str().unwrap()]);
    assert!(err.contains("is not empty; pass --overwrite"), "{err}");
    assert_eq!(listing(&out), vec!["precious.txt"]);
    // Writing into the input folder would replace the inputs: refused even with --overwrite.
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let f = input.join("a.parquet");
    write_embeddings(&f, &vectors(20, 4, 2), 4);
    let before = std::fs::read(&f).unwrap();
    let err = fails(&[
        "filter",
        f.to_str().unwrap(),
        "-o",
        input.to_str().unwrap(),
        "--overwrite",
    ]);
    assert!(err.contains("would replace an input file"), "{err}");
    assert_eq!(std::fs::read(&f).unwrap(), before);
}

#[test]
fn sidecar_mismatches() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&[
        "filter",
        &fixture("sidecar/metadata/*.parquet"),
        "--embeddings",
        &fixture("sidecar/img_emb/img_emb_0.npy"),
        "-o",
        &out_dir(&tmp),
    ]);
    assert!(err.contains("1 .npy files for 2 Parquet shards"), "{err}");
    // Swapped order: row counts no longer match.
    let err = fails(&[
        "filter",
        &fixture("sidecar/metadata/*.parquet"),
        "--embeddings",
        &fixture("sidecar/img_emb/img_emb_1.npy"),
        &fixture("sidecar/img_emb/img_emb_0.npy"),
        "-o",
        &out_dir(&tmp),
    ]);
    assert!(
        err.contains("img_emb_1.npy: 300 rows, but its shard") && err.contains("metadata_0.parquet has 250 rows"),
        "{err}"
    );
}

#[test]
fn centroids_of_the_wrong_dimension_and_k_too_large() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("c.npy");
    dprune::io::npy::write_matrix(&c, &[1.0; 12], 3, 4).unwrap();
    let err = fails(&[
        "filter",
        &fixture("laion_mini/*.parquet"),
        "--centroids",
        c.to_str().unwrap(),
        "-o",
        &out_dir(&tmp),
    ]);
    assert!(err.contains("c.npy: embedding dimension 4, expected 32"), "{err}");
    let err = fails(&[
        "filter",
        &fixture("bad/dim48.parquet"),
        "--k",
        "60",
        "-o",
        &out_dir(&tmp),
    ]);
    assert!(err.contains("cannot train 60 centroids with 50 usable rows"), "{err}");
}

#[test]
fn assignments_need_centroids_and_one_valid_cluster_per_row() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("c.npy");
    let l = tmp.path().join("l.npy");
    let mini = fixture("laion_mini/*.parquet");
    let out = out_dir(&tmp);
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = ["filter", "--keep", "0.3", mini.as_str(), "-o", out.as_str()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let fails_with = |a: &[String]| fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    write_labels_npy(&l, &[0; 2000]);
    let mut a = args(&["--assignments"]);
    a.push(l.display().to_string());
    let err = fails_with(&a);
    assert!(
        err.contains("--assignments") && err.contains("needs --centroids"),
        "{err}"
    );
    dprune::io::npy::write_matrix(&c, &[1.0; 96], 3, 32).unwrap();
    a.extend(["--centroids".to_string(), c.display().to_string()]);
    // One label short.
    write_labels_npy(&l, &[0; 1999]);
    let err = fails_with(&a);
    assert!(err.contains("l.npy: 1999 labels for 2000 input rows"), "{err}");
    // A cluster the centroids do not have, and a negative one.
    let mut v = vec![0i64; 2000];
    v[17] = 3;
    write_labels_npy(&l, &v);
    let err = fails_with(&a);
    assert!(
        err.contains("l.npy: row 17 has cluster 3, but the centroids have k = 3"),
        "{err}"
    );
    v[17] = -1;
    write_labels_npy(&l, &v);
    let err = fails_with(&a);
    assert!(err.contains("row 17 has cluster -1"), "{err}");
    // Valid labels run, and nothing was written by the failures before.
    v[17] = 2;
    write_labels_npy(&l, &v);
    run_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn failed_write_leaves_no_temporary_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(out.join("part-00001.parquet")).unwrap(); // a folder where a file must go
    let err = fails(&[
        "filter",
        &fixture("laion_mini/*.parquet"),
        "-o",
        out.to_str().unwrap(),
        "--overwrite",
        "--threads",
        "1",
    ]);
    assert!(err.contains("part-00001.parquet"), "{err}");
    assert!(
        listing(&out).iter().all(|f| !f.contains("dprune-tmp")),
        "{:?}",
        listing(&out)
    );
    assert!(!out.join("_dprune_report.json").exists(), "no report for a failed run");
}

#[test]
fn os_errors_are_reported_once() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("sub").display().to_string();
    let e = fails(&[
        "filter",
        "--keep",
        "0.3",
        &fixture("laion_mini/part-00000.parquet"),
        "-o",
        &out,
    ]);
    assert!(e.contains("plain-file"), "{e}");
    assert_eq!(e.matches("(os error").count(), 1, "the OS error is repeated: {e}");
}
