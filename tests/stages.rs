//! The removal stages and final rules of issue 3 through `dprune filter`:
//! exact de-duplication, SemDeDup (within and across clusters), the quality
//! stage, DBP / CCS / Moderate, and how they compose, on `fixtures/dups`
//! (made by `fixtures/make_dup_fixtures.py`, with planted duplicates).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use arrow::array::{Array, BooleanArray, Float64Array};

use crate::util::*;

const DUPS: &str = "dups/*.parquet";

/// (copy, original) row pairs.
type Pairs = Vec<(usize, usize)>;

/// Planted pairs from `fixtures/dups/truth.json`: exact and near.
fn truth() -> (Pairs, Pairs) {
    let text = std::fs::read_to_string(root().join("fixtures/dups/truth.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let pairs = |k: &str| {
        let mut p: Vec<(usize, usize)> = v[k]
            .as_object()
            .unwrap()
            .iter()
            .map(|(a, b)| (a.parse().unwrap(), b.as_u64().unwrap() as usize))
            .collect();
        p.sort();
        p
    };
    (pairs("exact"), pairs("near"))
}

/// The scores table as global rows: (kept, score, max_sim, dup_of).
struct Table {
    kept: Vec<bool>,
    score: Vec<Option<f32>>,
    max_sim: Vec<Option<f32>>,
    dup_of: Vec<Option<i64>>,
}

fn table(dir: &Path) -> Table {
    let (_, b) = read(&dir.join("scores.parquet"));
    let kept = b
        .column_by_name("kept")
        .unwrap()
        .as_any()
        .downcast_ref::<BooleanArray>()
        .unwrap();
    let dup_of = b.column_by_name("dup_of").map(|c| {
        let a = c.as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
        (0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))).collect()
    });
    Table {
        kept: (0..kept.len()).map(|i| kept.value(i)).collect(),
        score: f32s(&b, "score"),
        max_sim: b
            .column_by_name("max_sim")
            .map(|_| f32s(&b, "max_sim"))
            .unwrap_or_default(),
        dup_of: dup_of.unwrap_or_default(),
    }
}

fn stages(r: &serde_json::Value) -> Vec<(String, u64, u64)> {
    r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["rows_in"].as_u64().unwrap(),
                s["rows_out"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Runs `dprune filter ARGS -q -o OUT fixtures/dups/*.parquet`; returns the
/// temporary folder (kept alive by the caller) and OUT.
fn filter_dups(args: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let f = fixture(DUPS);
    let mut a = vec!["filter"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-q", "-o", out.to_str().unwrap(), &f]);
    run_ok(&a);
    (tmp, out)
}

#[test]
fn exact_then_semdedup_remove_exactly_the_planted_duplicates() {
    let (_tmp, out) = filter_dups(&["--exact-dedup", "--dedup", "0.01", "--k", "8", "--scores-only"]);
    let t = table(&out);
    let (exact, near) = truth();
    let mut removed: BTreeSet<usize> = (0..600).filter(|&i| !t.kept[i]).collect();
    for &(copy, orig) in &exact {
        assert!(t.kept[orig] && !t.kept[copy], "exact pair {copy} -> {orig}");
        assert_eq!(t.dup_of[copy], Some(orig as i64));
        assert_eq!(t.max_sim[copy], Some(1.0));
        removed.remove(&copy);
    }
    for &(copy, orig) in &near {
        assert!(
            t.kept[orig] ^ t.kept[copy],
            "near pair {copy} ~ {orig}: exactly one survives"
        );
        let (gone, kept) = if t.kept[orig] { (copy, orig) } else { (orig, copy) };
        assert_eq!(t.dup_of[gone], Some(kept as i64));
        assert!(t.max_sim[gone].unwrap() > 0.99);
        removed.remove(&gone);
    }
    assert!(
        removed.is_empty(),
        "rows removed that are not planted duplicates: {removed:?}"
    );
    let r = report(&out);
    assert_eq!(
        stages(&r),
        vec![
            ("exact_dedup".into(), 600, 560),
            ("semdedup".into(), 560, 520),
            ("proto".into(), 520, 520)
        ]
    );
    let sd = &r["semdedup"];
    assert_eq!(sd["removed_within"], 40);
    let curve = sd["eps_curve"].as_array().unwrap();
    assert!(
        curve.windows(2).all(|w| w[0]["kept"].as_u64() >= w[1]["kept"].as_u64()),
        "kept falls with eps"
    );
    assert!(curve.iter().any(|p| p["eps"] == 0.01 && p["kept"] == 520));
}

#[test]
fn dedup_alone_with_scores_keeps_every_other_row_and_adds_columns() {
    let (_tmp, out) = filter_dups(&["--dedup", "0.01", "--k", "8", "--with-scores"]);
    let r = report(&out);
    // The 40 exact copies are SemDeDup duplicates too (cosine 1).
    assert_eq!(r["n_kept"], 520);
    let (schema, b) = read(&out.join("part-00001.parquet"));
    for c in ["dprune_cluster", "dprune_score", "dprune_max_sim", "dprune_dup_of"] {
        assert!(schema.field_with_name(c).is_ok(), "missing {c}");
    }
    assert!(f32s(&b, "dprune_max_sim").iter().all(|m| m.unwrap() <= 0.99));
}

#[test]
fn exact_dedup_on_a_key_column_needs_no_embeddings() {
    let (_tmp, out) = filter_dups(&["--exact-dedup", "--exact-key", "caption", "--metric", "random"]);
    let r = report(&out);
    assert!(r["embedding_source"].is_null());
    assert_eq!(stages(&r)[0], ("exact_dedup".into(), 600, 560));
    let ids: Vec<i64> = ["part-00000.parquet", "part-00001.parquet"]
        .iter()
        .flat_map(|s| i64s(&read(&out.join(s)).1, "id"))
        .collect();
    assert_eq!(ids.len(), 560);
    assert!(ids.iter().all(|&i| !(500..540).contains(&i)));
}

#[test]
fn semdedup_metric_keeps_an_exact_fraction_of_the_least_redundant() {
    let (_tmp, out) = filter_dups(&["--metric", "semdedup", "--keep", "0.5", "--k", "8", "--scores-only"]);
    let t = table(&out);
    assert_eq!(t.kept.iter().filter(|&&k| k).count(), 300);
    let max_kept = (0..600)
        .filter(|&i| t.kept[i])
        .map(|i| t.score[i].unwrap())
        .fold(f32::MIN, f32::max);
    let min_removed = (0..600)
        .filter(|&i| !t.kept[i])
        .map(|i| t.score[i].unwrap())
        .fold(f32::MAX, f32::min);
    assert!(max_kept <= min_removed, "{max_kept} > {min_removed}");
    assert_eq!(t.score, t.max_sim, "the score of the semdedup metric is M");
}

#[test]
fn cross_cluster_pass_finds_pairs_split_by_the_clustering() {
    // Two centroids at ±45° in the xy plane; rows 0 and 1 straddle the boundary
    // (cosine 1 − 5e-7) so they land in different clusters.
    let tmp = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for i in 0..20 {
        let a = -1.2 + 2.4 * i as f32 / 19.0 + 0.031;
        rows.push(Some(vec![a.cos(), a.sin(), 0.3]));
    }
    rows[0] = Some(vec![1.0, -0.0005, 0.0]);
    rows[1] = Some(vec![1.0, 0.0005, 0.0]);
    let input = tmp.path().join("in.parquet");
    write_embeddings(&input, &rows, 3);
    let c = tmp.path().join("c.npy");
    let h = std::f32::consts::FRAC_1_SQRT_2;
    dprune::io::npy::write_matrix(&c, &[h, -h, 0.0, h, h, 0.0], 2, 3).unwrap();
    let run = |extra: &[&str], name: &str| {
        let out = tmp.path().join(name);
        let mut args = vec![
            "filter",
            "--dedup",
            "0.001",
            "--centroids",
            c.to_str().unwrap(),
            "--scores-only",
            "-q",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", out.to_str().unwrap(), input.to_str().unwrap()]);
        run_ok(&args);
        (table(&out), report(&out))
    };
    let (t, _) = run(&[], "within");
    assert!(t.kept[0] && t.kept[1], "a within-cluster pass cannot see the pair");
    for (how, name) in [
        (None, "second"),
        (Some("hnsw"), "hnsw"),
        (Some("second-cluster"), "second2"),
    ] {
        let mut extra = vec!["--dedup-global"];
        extra.extend(how);
        let (t, r) = run(&extra, name);
        assert!(t.kept[0] && !t.kept[1], "{name}: the later row of the pair goes");
        assert_eq!(t.dup_of[1], Some(0));
        assert_eq!(r["semdedup"]["removed_global"], 1);
        assert_eq!(t.kept.iter().filter(|&&k| k).count(), 19);
    }
}

#[test]
fn quality_stage_drops_the_lowest_percentile_and_nulls() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap();
    let err = run_ok_stderr(&[
        "filter",
        "--quality-col",
        "clip_score",
        "--quality-drop",
        "20",
        "--metric",
        "random",
        "-o",
        o,
        &fixture(DUPS),
    ]);
    assert!(err.contains("10 rows have a null or NaN `clip_score`"), "{err}");
    let r = report(&out);
    assert_eq!(stages(&r)[0], ("quality".into(), 600, 480));
    assert_eq!(r["n_kept"], 480);
    let mut kept_scores = Vec::new();
    for s in ["part-00000.parquet", "part-00001.parquet"] {
        let (_, b) = read(&out.join(s));
        let a = b
            .column_by_name("clip_score")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(a.null_count(), 0);
        kept_scores.extend(a.values().iter().copied());
    }
    // floor(0.2 * 600) = 120 dropped: the 10 nulls and the 110 lowest values.
    let all: Vec<f64> = (0..590).map(|i| (i * 37 % 600) as f64 / 600.0).collect();
    let mut sorted = all.clone();
    sorted.sort_by(f64::total_cmp);
    let cut = sorted[110];
    assert!(kept_scores.iter().all(|&v| v >= cut));
}

#[test]
fn keep_refers_to_the_input_unless_keep_of_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        "filter",
        "--exact-dedup",
        "--dedup",
        "0.01",
        "--k",
        "8",
        "--keep",
        "0.5",
        "--dry-run",
        "-q",
    ];
    let out = tmp.path().join("o");
    let f = fixture(DUPS);
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        a.extend_from_slice(&["-o", out.to_str().unwrap(), &f]);
        serde_json::from_str(&run_ok(&a)).unwrap()
    };
    assert_eq!(run(&[])["n_kept"], 300);
    assert_eq!(run(&["--keep-of", "stage"])["n_kept"], 260);
    // More than the stages leave: all 520 are kept, with a warning.
    let mut a = base.to_vec();
    a[7] = "0.9";
    a.extend_from_slice(&["-o", out.to_str().unwrap(), &f]);
    let r: serde_json::Value = serde_json::from_str(&run_ok(&a)).unwrap();
    assert_eq!(r["n_kept"], 520);
    assert!(r["warnings"].to_string().contains("more than the 520 rows left"));
}

#[test]
fn dbp_ccs_and_moderate_keep_exact_budgets() {
    for metric in ["dbp", "ccs", "moderate"] {
        let (_tmp, out) = filter_dups(&["--metric", metric, "--keep", "0.3", "--k", "8", "--scores-only"]);
        let t = table(&out);
        assert_eq!(t.kept.iter().filter(|&&k| k).count(), 180, "{metric}");
        let r = report(&out);
        assert_eq!(r["n_kept"], 180, "{metric}");
        if metric == "dbp" {
            let cl = r["clusters"].as_array().unwrap();
            let quotas: u64 = cl.iter().map(|c| c["quota"].as_u64().unwrap()).sum();
            assert_eq!(quotas, 180);
            for c in cl {
                assert_eq!(c["kept"], c["quota"]);
                assert!(c["complexity"].as_f64().unwrap().is_finite());
            }
        }
    }
}

#[test]
fn stage_results_do_not_depend_on_threads_or_batch_size() {
    let tmp = tempfile::tempdir().unwrap();
    let mut seen = BTreeMap::new();
    for (name, extra) in [
        ("a", vec!["--threads", "1"]),
        ("b", vec!["--threads", "2", "--batch-rows", "37"]),
    ] {
        let out = tmp.path().join(name);
        let mut a = vec![
            "filter",
            "--exact-dedup",
            "--dedup",
            "0.02",
            "--dedup-global",
            "--metric",
            "dbp",
            "--keep",
            "0.4",
            "--k",
            "8",
        ];
        a.extend(extra);
        a.extend(["--scores-only", "-q", "-o", out.to_str().unwrap()]);
        let f = fixture(DUPS);
        a.push(&f);
        run_ok(&a);
        let t = table(&out);
        seen.insert(name, (t.kept, t.max_sim, t.dup_of));
    }
    assert_eq!(seen["a"], seen["b"]);
}

#[test]
fn stage_errors_name_the_flag_column_or_file() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("o").display().to_string();
    let f = fixture(DUPS);
    let e = fails(&["filter", "--dedup", "1.5", "-o", &o, &f]);
    assert!(e.contains("--dedup") && e.contains("1.5"), "{e}");
    let e = fails(&["filter", "--dedup-global", "-o", &o, &f]);
    assert!(e.contains("--dedup EPS"), "{e}");
    let e = fails(&["filter", "--dedup", "0.1", "--dedup-global", "faiss", "-o", &o, &f]);
    assert!(
        e.contains("`faiss`") && e.contains("second-cluster, hnsw or off"),
        "{e}"
    );
    let e = fails(&["filter", "--exact-key", "caption", "-o", &o, &f]);
    assert!(e.contains("--exact-dedup"), "{e}");
    let e = fails(&["filter", "--dedup", "0.05", "--distance", "l2", "-o", &o, &f]);
    assert!(e.contains("cosine"), "{e}");
    let e = fails(&["filter", "--quality-col", "nope", "--quality-drop", "10", "-o", &o, &f]);
    assert!(
        e.contains("part-00000.parquet") && e.contains("`nope`") && e.contains("no such column"),
        "{e}"
    );
    let e = fails(&["filter", "--score-col", "caption", "-o", &o, &f]);
    assert!(e.contains("`caption`") && e.contains("not numeric"), "{e}");
    let e = fails(&[
        "filter",
        "--quality-col",
        "clip_score",
        "--quality-drop",
        "100",
        "-o",
        &o,
        &f,
    ]);
    assert!(e.contains("--quality-drop"), "{e}");
    let e = fails(&["filter", "--metric", "nope", "-o", &o, &f]);
    assert!(e.contains("semdedup, dbp, ccs, moderate or knn"), "{e}");
    let e = fails(&["filter", "--metric", "semdedup", "--keep-easy", "-o", &o, &f]);
    assert!(e.contains("--keep-easy") && e.contains("least redundant"), "{e}");
    let e = fails(&["filter", "--metric", "dbp", "--balance", "clusters", "-o", &o, &f]);
    assert!(e.contains("--balance") && e.contains("own per-cluster quotas"), "{e}");
    assert!(!Path::new(&o).exists(), "failed runs write nothing");
}

#[test]
fn knn_keeps_the_most_isolated_after_the_outlier_cap() {
    let (_tmp, out) = filter_dups(&["--metric", "knn", "--keep", "0.3", "--k", "8", "--scores-only"]);
    let t = table(&out);
    let mut order: Vec<usize> = (0..600).collect();
    order.sort_by(|&a, &b| t.score[b].unwrap().total_cmp(&t.score[a].unwrap()).then(a.cmp(&b)));
    // floor(0.01 * 600) = 6 set aside, then the next 180 kept.
    assert!(order[..6].iter().all(|&i| !t.kept[i]));
    assert!(order[6..186].iter().all(|&i| t.kept[i]));
    assert_eq!(t.kept.iter().filter(|&&k| k).count(), 180);
    // With one neighbour, an exact copy and its original are at distance 0: the densest
    // rows, which keep-easy keeps first.
    let (_tmp2, easy) = filter_dups(&[
        "--metric",
        "knn",
        "--knn",
        "1",
        "--keep",
        "0.1",
        "--keep-easy",
        "--k",
        "8",
        "--scores-only",
    ]);
    let t = table(&easy);
    let (exact, _) = truth();
    for &(c, o) in &exact {
        assert!(t.score[c].unwrap().abs() < 1e-6 && t.score[o].unwrap().abs() < 1e-6);
    }
    let kept: Vec<usize> = (0..600).filter(|&i| t.kept[i]).collect();
    assert_eq!(kept.len(), 60);
    assert!(
        kept.iter().all(|&i| t.score[i].unwrap().abs() < 1e-6),
        "only zero-distance rows"
    );
}

#[test]
fn dbp_takes_external_cluster_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w.npy");
    dprune::io::npy::write_matrix(&w, &[8.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 8, 1).unwrap();
    let (_t, out) = filter_dups(&[
        "--metric",
        "dbp",
        "--keep",
        "0.3",
        "--k",
        "8",
        "--cluster-weights",
        w.to_str().unwrap(),
        "--shares",
        "proportional",
        "--scores-only",
    ]);
    let r = report(&out);
    let cl = r["clusters"].as_array().unwrap();
    assert_eq!(cl.iter().map(|c| c["quota"].as_u64().unwrap()).sum::<u64>(), 180);
    let share0 = cl[0]["share"].as_f64().unwrap();
    assert!((share0 - 8.0 / 15.0).abs() < 1e-9, "{share0}");
    let q0 = cl[0]["quota"].as_u64().unwrap();
    assert!(cl[1..].iter().all(|c| c["quota"].as_u64().unwrap() < q0));
    // The wrong number of weights is an error naming the file and the counts.
    dprune::io::npy::write_matrix(&w, &[1.0, 2.0, 3.0], 3, 1).unwrap();
    let o = tmp.path().join("o2").display().to_string();
    let e = fails(&[
        "filter",
        "--metric",
        "dbp",
        "--k",
        "8",
        "--cluster-weights",
        w.to_str().unwrap(),
        "-o",
        &o,
        &fixture(DUPS),
    ]);
    assert!(e.contains("w.npy") && e.contains("3 weights for 8 clusters"), "{e}");
    let e = fails(&[
        "filter",
        "--cluster-weights",
        w.to_str().unwrap(),
        "-o",
        &o,
        &fixture(DUPS),
    ]);
    assert!(e.contains("--metric dbp"), "{e}");
}
