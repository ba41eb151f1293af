//! `dprune filter` on good inputs.

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, BooleanArray, Int32Array, StringArray};

use crate::util::*;

const MINI: &str = "laion_mini/*.parquet";
/// Stands for the `MINI` fixture path in argument lists built before it is resolved.
const MINI_ARG: &str = "<mini>";
const SHARDS: [&str; 4] = [
    "part-00000.parquet",
    "part-00001.parquet",
    "part-00002.parquet",
    "part-00003.parquet",
];

/// One row of a scores table: (file, row, cluster, score, kept).
type ScoreRow = (String, i64, Option<i32>, Option<f32>, bool);

/// A scores table, row by row.
fn scores_table(dir: &Path) -> Vec<ScoreRow> {
    let (_, b) = read(&dir.join("scores.parquet"));
    let file = b
        .column_by_name("file")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .clone();
    let row = i64s(&b, "row");
    let cl = b
        .column_by_name("cluster")
        .unwrap()
        .as_any()
        .downcast_ref::<Int32Array>()
        .unwrap()
        .clone();
    let score = f32s(&b, "score");
    let kept = b
        .column_by_name("kept")
        .unwrap()
        .as_any()
        .downcast_ref::<BooleanArray>()
        .unwrap()
        .clone();
    (0..b.num_rows())
        .map(|i| {
            (
                file.value(i).to_string(),
                row[i],
                cl.is_valid(i).then(|| cl.value(i)),
                score[i],
                kept.value(i),
            )
        })
        .collect()
}

#[test]
fn keeps_exact_count_with_schema_order_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pruned");
    let inputs_before: Vec<Vec<u8>> = SHARDS
        .iter()
        .map(|s| std::fs::read(fixture(&format!("laion_mini/{s}"))).unwrap())
        .collect();
    run_ok(&[
        "filter",
        "--keep",
        "0.3",
        &fixture(MINI),
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ]);

    let mut expected = SHARDS.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    expected.extend(["_dprune_report.json".into(), "_dprune_report.png".into()]);
    expected.sort();
    assert_eq!(listing(&out), expected, "no temporary or extra files");

    let mut total = 0;
    for s in SHARDS {
        let (in_schema, input) = read(Path::new(&fixture(&format!("laion_mini/{s}"))));
        let (out_schema, output) = read(&out.join(s));
        assert_eq!(in_schema, out_schema, "{s}: schema and metadata preserved");
        // Rows are a subset of the input, in the original order.
        let in_ids = i64s(&input, "id");
        let out_ids = i64s(&output, "id");
        let mut it = in_ids.iter();
        for id in &out_ids {
            assert!(it.any(|x| x == id), "{s}: id {id} not in input order");
        }
        total += output.num_rows();
    }
    assert_eq!(total, 600, "floor(0.3 * 2000)");

    let r = report(&out);
    assert_eq!(r["n_rows"], 2000);
    assert_eq!(r["n_kept"], 600);
    assert_eq!(
        r["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["kept"].as_u64().unwrap())
            .sum::<u64>(),
        600
    );
    let k = r["kmeans"]["k"].as_u64().unwrap();
    assert_eq!(k, 44, "default k = floor(sqrt(2000))");
    let sizes: u64 = r["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["size"].as_u64().unwrap())
        .sum();
    assert_eq!(sizes, 2000);
    assert!(r["kmeans"]["iterations"].as_u64().unwrap() >= 1);
    assert!(r["timings_s"]["total"].as_f64().unwrap() >= 0.0);
    let png = std::fs::read(out.join("_dprune_report.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    for (s, before) in SHARDS.iter().zip(inputs_before) {
        assert_eq!(
            std::fs::read(fixture(&format!("laion_mini/{s}"))).unwrap(),
            before,
            "input {s} untouched"
        );
    }
}

#[test]
fn keeps_the_hardest_by_default_and_the_easiest_on_request() {
    for (flag, hard) in [(None, true), (Some("--keep-easy"), false)] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("s");
        let mut args = vec![
            "filter",
            "--keep",
            "0.25",
            MINI,
            "-o",
            out.to_str().unwrap(),
            "--scores-only",
            "-q",
        ];
        let mini = fixture(MINI);
        args[3] = &mini;
        args.extend(flag);
        run_ok(&args);
        let t = scores_table(&out);
        assert_eq!(t.len(), 2000);
        assert_eq!(t.iter().filter(|r| r.4).count(), 500);
        let kept: Vec<f32> = t.iter().filter(|r| r.4).map(|r| r.3.unwrap()).collect();
        let dropped: Vec<f32> = t.iter().filter(|r| !r.4).map(|r| r.3.unwrap()).collect();
        if hard {
            let min_kept = kept.iter().cloned().fold(f32::INFINITY, f32::min);
            assert!(dropped.iter().all(|&d| d <= min_kept));
        } else {
            let max_kept = kept.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert!(dropped.iter().all(|&d| d >= max_kept));
        }
        // score is 1 - cos, so it lies in [0, 2]
        assert!(t.iter().all(|r| (0.0..=2.0).contains(&r.3.unwrap())));
    }
}

#[test]
fn with_scores_appends_columns_to_kept_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    run_ok(&[
        "filter",
        "--keep-n",
        "123",
        &fixture(MINI),
        "-o",
        out.to_str().unwrap(),
        "--with-scores",
        "-q",
    ]);
    let mut total = 0;
    for s in SHARDS {
        let (schema, b) = read(&out.join(s));
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(
            names[names.len() - 2..],
            ["dprune_cluster".to_string(), "dprune_score".to_string()]
        );
        assert!(f32s(&b, "dprune_score").iter().all(|s| s.is_some()));
        total += b.num_rows();
    }
    assert_eq!(total, 123);
}

#[test]
fn balance_clusters_keeps_the_same_fraction_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s");
    run_ok(&[
        "filter",
        "--keep",
        "0.4",
        &fixture(MINI),
        "-o",
        out.to_str().unwrap(),
        "--balance",
        "clusters",
        "--scores-only",
        "-q",
    ]);
    let t = scores_table(&out);
    let mut per: HashMap<i32, (u64, u64)> = HashMap::new();
    for r in &t {
        let e = per.entry(r.2.unwrap()).or_default();
        e.0 += 1;
        e.1 += r.4 as u64;
    }
    assert_eq!(per.values().map(|v| v.1).sum::<u64>(), 800);
    for (c, (n, k)) in per {
        let exact = 0.4 * n as f64;
        assert!((k as f64 - exact).abs() < 1.0, "cluster {c}: kept {k} of {n}");
    }
}

#[test]
fn results_do_not_depend_on_threads_or_batch_size() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tables = Vec::new();
    for (i, extra) in [["--threads", "1"], ["--threads", "2"], ["--batch-rows", "7"]]
        .iter()
        .enumerate()
    {
        let out = tmp.path().join(format!("s{i}"));
        let mut args = vec![
            "filter",
            "--keep",
            "0.3",
            "--scores-only",
            "-q",
            "-o",
            out.to_str().unwrap(),
        ];
        let mini = fixture(MINI);
        args.push(&mini);
        args.extend(extra.iter());
        run_ok(&args);
        let r = report(&out);
        tables.push((scores_table(&out), r["kmeans"].clone()));
    }
    assert_eq!(tables[0], tables[1], "threads 1 vs 2");
    assert_eq!(tables[0], tables[2], "default batch vs 7");
}

#[test]
fn random_metric_is_seeded_exact_and_needs_no_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let kept = |seed: &str, name: &str| {
        let out = tmp.path().join(name);
        run_ok(&[
            "filter",
            "--metric",
            "random",
            "--keep",
            "0.1",
            "--seed",
            seed,
            &fixture("bad/no_emb.parquet"),
            "-o",
            out.to_str().unwrap(),
            "-q",
        ]);
        let r = report(&out);
        assert!(r["kmeans"].is_null());
        i64s(&read(&out.join("no_emb.parquet")).1, "id")
    };
    let a = kept("1", "a");
    assert_eq!(a.len(), 5);
    assert_eq!(a, kept("1", "b"));
    assert_ne!(a, kept("2", "c"));
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let stdout = run_ok(&[
        "filter",
        "--keep",
        "0.3",
        &fixture(MINI),
        "-o",
        out.to_str().unwrap(),
        "--dry-run",
        "--save-centroids",
        tmp.path().join("c.npy").to_str().unwrap(),
    ]);
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["n_kept"], 600);
    assert_eq!(plan["dry_run"], true);
    assert!(!out.exists());
    assert!(!tmp.path().join("c.npy").exists());
}

#[test]
fn saved_centroids_reproduce_the_selection() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("c.npy");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    run_ok(&[
        "filter",
        "--keep",
        "0.3",
        "--k",
        "10",
        &fixture(MINI),
        "-o",
        a.to_str().unwrap(),
        "--scores-only",
        "--save-centroids",
        c.to_str().unwrap(),
        "-q",
    ]);
    run_ok(&[
        "filter",
        "--keep",
        "0.3",
        &fixture(MINI),
        "-o",
        b.to_str().unwrap(),
        "--scores-only",
        "--centroids",
        c.to_str().unwrap(),
        "-q",
    ]);
    let (cm, k, d) = dprune::io::npy::read_matrix(&c).unwrap();
    assert_eq!((k, d, cm.len()), (10, 32, 320));
    assert_eq!(scores_table(&a), scores_table(&b));
    assert_eq!(report(&b)["kmeans"]["source"], c.display().to_string());
}

/// The score pass copies the k-means training rows' cluster and dot from the fit
/// instead of searching again: the scores must be those of a full search, whether
/// all rows trained (2,000 rows, sample 2,560) or a quarter did (`--sample 500`).
#[test]
fn training_rows_keep_the_values_a_full_search_gives() {
    let tmp = tempfile::tempdir().unwrap();
    for sample in ["2560", "500"] {
        let c = tmp.path().join(format!("c{sample}.npy"));
        let run = |name: &str, extra: &[&str], reuse: bool| {
            let out = tmp.path().join(format!("{name}{sample}"));
            let mut cmd = dprune();
            cmd.args(["filter", "--keep", "0.3", "--k", "10", "--scores-only", "-q", "-o"])
                .arg(&out)
                .arg(fixture(MINI))
                .args(extra);
            if !reuse {
                cmd.env("DPRUNE_SAMPLE_LABELS", "0");
            }
            cmd.assert().success();
            scores_table(&out)
        };
        let reused = run(
            "a",
            &["--sample", sample, "--save-centroids", c.to_str().unwrap()],
            true,
        );
        let searched = run("b", &["--sample", sample], false);
        let given = run("c", &["--centroids", c.to_str().unwrap()], true);
        assert_eq!(reused, searched, "sample {sample}: reuse on vs off");
        assert_eq!(reused, given, "sample {sample}: fit vs saved centroids");
    }
}

#[test]
fn certified_low_precision_searches_change_no_output() {
    // int8 (where VNNI runs), bf16 and the plain f32 search: the same fit and scores,
    // for the prototypicality scores and for SemDeDup with the cross pass (nearest two).
    let tmp = tempfile::tempdir().unwrap();
    for extra in [&["--keep", "0.3"][..], &["--dedup", "0.1", "--dedup-global"][..]] {
        let run = |name: &str, certified: &str| {
            let out = tmp.path().join(format!("{name}{}", extra.len()));
            dprune()
                .args(["filter", "--k", "12", "--scores-only", "-q", "-o"])
                .arg(&out)
                .arg(fixture(MINI))
                .args(extra)
                .env("DPRUNE_CERTIFIED", certified)
                .assert()
                .success();
            scores_table(&out)
        };
        let plain = run("off", "0");
        assert_eq!(run("bf16", "bf16"), plain, "{extra:?}: bf16 vs f32");
        assert_eq!(
            run("default", "1"),
            plain,
            "{extra:?}: default (int8 where it runs) vs f32"
        );
    }
}

#[test]
fn given_assignments_replace_the_nearest_centroid() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("c.npy");
    let l = tmp.path().join("l.npy");
    let run = |dir: &Path, extra: &[&str]| {
        let mut args = vec!["filter", "--keep", "0.3", "--k", "10", MINI_ARG, "--scores-only", "-q"];
        args.extend_from_slice(extra);
        args.extend(["-o", dir.to_str().unwrap()]);
        let fx = fixture(MINI);
        let args: Vec<&str> = args
            .into_iter()
            .map(|a| if a == MINI_ARG { fx.as_str() } else { a })
            .collect();
        run_ok(&args);
        scores_table(dir)
    };
    let a = run(&tmp.path().join("a"), &["--save-centroids", c.to_str().unwrap()]);
    // The run's own clusters, given back: the same table.
    let labels: Vec<i64> = a.iter().map(|r| i64::from(r.2.unwrap())).collect();
    write_labels_npy(&l, &labels);
    let cs = c.to_str().unwrap();
    let b = run(
        &tmp.path().join("b"),
        &["--centroids", cs, "--assignments", l.to_str().unwrap()],
    );
    assert_eq!(a, b);
    // Other clusters: each row is scored against the centroid it was given.
    let shifted: Vec<i64> = labels.iter().map(|&x| (x + 1) % 10).collect();
    write_labels_npy(&l, &shifted);
    let s = run(
        &tmp.path().join("s"),
        &["--centroids", cs, "--assignments", l.to_str().unwrap()],
    );
    let got: Vec<i64> = s.iter().map(|r| i64::from(r.2.unwrap())).collect();
    assert_eq!(got, shifted);
    // Farther from a centroid that is not its nearest: every score grows.
    assert!(a.iter().zip(&s).all(|(x, y)| y.3.unwrap() >= x.3.unwrap()));
    assert!(a.iter().zip(&s).any(|(x, y)| y.3.unwrap() > x.3.unwrap() + 0.01));
}

#[test]
fn npy_sidecars_pair_with_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    run_ok(&[
        "filter",
        "--keep",
        "0.5",
        &fixture("sidecar/metadata/*.parquet"),
        "--embeddings",
        &fixture("sidecar/img_emb/*.npy"),
        "-o",
        out.to_str().unwrap(),
        "-q",
    ]);
    let n0 = read(&out.join("metadata_0.parquet")).1.num_rows();
    let n1 = read(&out.join("metadata_1.parquet")).1.num_rows();
    assert_eq!(n0 + n1, 275, "floor(0.5 * (250 + 300))");
    assert!(
        report(&out)["embedding_source"]
            .as_str()
            .unwrap()
            .starts_with("sidecars")
    );
}

#[test]
fn list_columns_of_f16_and_f64_work_and_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kept = Vec::new();
    for v in ["list_f16", "list_f64"] {
        let out = tmp.path().join(v);
        run_ok(&[
            "filter",
            "--keep",
            "0.5",
            "--k",
            "5",
            &fixture(&format!("variants/{v}.parquet")),
            "-o",
            out.to_str().unwrap(),
            "-q",
        ]);
        let (schema, b) = read(&out.join(format!("{v}.parquet")));
        assert_eq!(b.num_rows(), 150);
        assert_eq!(schema, read(Path::new(&fixture(&format!("variants/{v}.parquet")))).0);
        kept.push(i64s(&b, "id"));
    }
    // The same vectors (f16 vs f64 storage of f16-rounded values) give the same selection.
    assert_eq!(kept[0], kept[1]);
}

#[test]
fn drop_invalid_excludes_and_counts_bad_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    run_ok(&[
        "filter",
        "--keep",
        "0.5",
        "--k",
        "4",
        &fixture("bad/nan_rows.parquet"),
        "-o",
        out.to_str().unwrap(),
        "--drop-invalid",
        "--with-scores",
        "-q",
    ]);
    let r = report(&out);
    assert_eq!(r["invalid"], serde_json::json!({"null": 1, "not_finite": 1, "zero": 1}));
    assert_eq!(r["n_eligible"], 97);
    assert_eq!(r["n_kept"], 48);
    let ids = i64s(&read(&out.join("nan_rows.parquet")).1, "id");
    assert_eq!(ids.len(), 48);
    assert!(!ids.iter().any(|i| [7, 12, 20].contains(i)));
    assert!(
        r["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("3 rows with unusable"))
    );
}

#[test]
fn dropped_rows_leave_no_gap_in_the_sample() {
    // Shards sampled whole, unusable rows dropped from the first: the fit must see exactly
    // the usable rows, in order, as it does when the bad rows were never there.
    let tmp = tempfile::tempdir().unwrap();
    let (dirty, clean) = (tmp.path().join("dirty"), tmp.path().join("clean"));
    std::fs::create_dir_all(&dirty).unwrap();
    std::fs::create_dir_all(&clean).unwrap();
    let mut a = vectors(60, 8, 1);
    let b = vectors(50, 8, 2);
    let kept: Vec<Option<Vec<f32>>> = a
        .iter()
        .enumerate()
        .filter(|(i, _)| ![3, 10, 20].contains(i))
        .map(|(_, r)| r.clone())
        .collect();
    a[3] = None;
    a[10] = None;
    a[20].as_mut().unwrap()[5] = f32::NAN;
    write_embeddings(&dirty.join("a.parquet"), &a, 8);
    write_embeddings(&dirty.join("b.parquet"), &b, 8);
    write_embeddings(&clean.join("a.parquet"), &kept, 8);
    write_embeddings(&clean.join("b.parquet"), &b, 8);
    let fit = |dir: &Path, extra: &[&str]| {
        let c = dir.join("c.npy");
        dprune()
            .args([
                "filter",
                "--keep",
                "0.5",
                "--k",
                "4",
                "--sample",
                "1000",
                "--scores-only",
                "-q",
                "-o",
            ])
            .arg(dir.join("out"))
            .arg(dir.join("*.parquet"))
            .arg("--save-centroids")
            .arg(&c)
            .args(extra)
            .assert()
            .success();
        std::fs::read(c).unwrap()
    };
    assert_eq!(fit(&dirty, &["--drop-invalid"]), fit(&clean, &[]));
}

#[test]
fn shell_expanded_lists_and_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let files: Vec<String> = SHARDS.iter().map(|s| fixture(&format!("laion_mini/{s}"))).collect();
    let mut args = vec![
        "filter".to_string(),
        "--keep".into(),
        "0.3".into(),
        "-o".into(),
        out.display().to_string(),
        "-q".into(),
    ];
    args.extend(files.clone());
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // A second run into the now non-empty folder needs --overwrite.
    let again = dprune().args(&args).output().unwrap();
    assert!(!again.status.success());
    args.push("--overwrite".into());
    args[2] = "0.5".into();
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(report(&out)["n_kept"], 1000);
}

#[test]
fn l2_distance_and_explicit_k_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    run_ok(&[
        "filter",
        "--keep",
        "0.3",
        "--distance",
        "l2",
        "--k",
        "20",
        "--max-iters",
        "5",
        "--tolerance",
        "0",
        &fixture(MINI),
        "-o",
        out.to_str().unwrap(),
        "-q",
    ]);
    let r = report(&out);
    assert_eq!(r["kmeans"]["k"], 20);
    assert_eq!(r["kmeans"]["iterations"], 5);
    assert_eq!(r["params"]["kmeans"]["distance"], "l2");
}

#[test]
fn help_shows_examples() {
    let out = dprune().args(["filter", "--help"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Examples:") && text.contains("--keep"));
}

#[test]
fn a_known_column_name_settles_several_candidates() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    run_ok(&[
        "filter",
        "--keep",
        "0.5",
        "--k",
        "3",
        &fixture("variants/named.parquet"),
        "-o",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(report(&out)["embedding_source"], "column `clip_emb`");
}

#[test]
fn pruned_shards_write_floats_without_a_dictionary() {
    // Embedding values are distinct: a dictionary would only cost time, and its page
    // would keep readers (dprune's page-level float reader among them) off plain pages.
    // Other columns keep their dictionaries; everything stays zstd. The scores table too.
    let tmp = tempfile::tempdir().unwrap();
    for (dir, extra, file) in [
        ("pruned", None, SHARDS[0]),
        ("scores", Some("--scores-only"), "scores.parquet"),
    ] {
        let out = tmp.path().join(dir);
        let mut args = vec![
            "filter",
            "--keep",
            "0.5",
            MINI_ARG,
            "-o",
            out.to_str().unwrap(),
            "--quiet",
        ];
        args.extend(extra);
        let mini = fixture(MINI);
        let args: Vec<&str> = args
            .iter()
            .map(|&a| if a == MINI_ARG { mini.as_str() } else { a })
            .collect();
        run_ok(&args);
        assert_float_layout(&out.join(file));
    }
}

/// Every column of `path` is zstd, float columns have no dictionary page, and some other
/// column has one.
fn assert_float_layout(path: &Path) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).unwrap();
    let meta = SerializedFileReader::new(file).unwrap().metadata().clone();
    let (mut seen_float, mut seen_dict) = (false, false);
    for rg in meta.row_groups() {
        for col in rg.columns() {
            assert!(
                matches!(col.compression(), parquet::basic::Compression::ZSTD(_)),
                "{}: {:?}",
                col.column_path(),
                col.compression()
            );
            if matches!(
                col.column_type(),
                parquet::basic::Type::FLOAT | parquet::basic::Type::DOUBLE
            ) {
                seen_float = true;
                assert!(
                    col.dictionary_page_offset().is_none(),
                    "{} has a dictionary",
                    col.column_path()
                );
            } else if col.dictionary_page_offset().is_some() {
                seen_dict = true;
            }
        }
    }
    assert!(seen_float, "{} has a float column", path.display());
    assert!(seen_dict, "non-float columns keep their dictionaries");
}
