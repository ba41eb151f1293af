//! `dprune sql` and `filter --where` (issue 7): table output, Parquet
//! output, refusals and errors, a complete prune written as SQL that keeps
//! exactly the rows `filter` keeps, and the pre-filter's counts and row
//! groups skipped against a direct check.

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::util::{dprune, fails, fixture, i64s, read, report, run_ok, run_ok_stderr};

const SHARDS: usize = 4;

fn shards() -> Vec<String> {
    (0..SHARDS)
        .map(|i| fixture(&format!("laion_mini/part-0000{i}.parquet")))
        .collect()
}

fn table() -> String {
    format!("t={}", fixture("laion_mini/*.parquet"))
}

/// `id` and `similarity` (as f64) of every input row, in input order.
fn ids_and_similarity() -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    for s in shards() {
        let (_, b) = read(Path::new(&s));
        let sim = arrow::compute::cast(b.column_by_name("similarity").unwrap(), &DataType::Float64).unwrap();
        let sim = sim.as_primitive::<Float64Type>();
        for (i, id) in i64s(&b, "id").into_iter().enumerate() {
            out.push((id, if sim.is_valid(i) { sim.value(i) } else { f64::NAN }));
        }
    }
    out
}

/// The ids of the rows written to the pruned shards of `dir`, in order.
fn kept_ids(dir: &Path) -> Vec<i64> {
    let mut ids = Vec::new();
    for s in shards() {
        let name = Path::new(&s).file_name().unwrap();
        let (_, b) = read(&dir.join(name));
        ids.extend(i64s(&b, "id"));
    }
    ids
}

fn sql_ids(path: &Path) -> Vec<i64> {
    let (_, b) = read(path);
    b.column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

#[test]
fn prints_a_table_and_says_how_many_rows_were_omitted() {
    let out = dprune()
        .args([
            "sql",
            "--table",
            &table(),
            "--max-rows",
            "3",
            "SELECT id, dprune_cosine(clip_emb, clip_emb) AS self_cos FROM t ORDER BY id",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ids: Vec<i64> = ids_and_similarity().iter().map(|r| r.0).collect();
    assert!(
        stdout.contains("self_cos") && stdout.contains(&ids[2].to_string()),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&format!("| {} ", ids[3])),
        "only 3 rows printed: {stdout}"
    );
    assert!(
        stderr.contains(&format!("{} rows (3 shown, {} omitted", ids.len(), ids.len() - 3)),
        "{stderr}"
    );
    // cos(x, x) = 1 for every (non-zero) row.
    assert!(
        stdout.matches("| 1.0").count() + stdout.matches("| 0.99999").count() >= 3,
        "{stdout}"
    );
}

#[test]
fn writes_parquet_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.parquet");
    let q = "SELECT id, dprune_normalize(clip_emb) AS u FROM t WHERE similarity > 0.3 ORDER BY id";
    let args = ["sql", "--table", &table(), q, "-o", out.to_str().unwrap()];
    let err = run_ok_stderr(&args);
    let want: Vec<i64> = ids_and_similarity()
        .into_iter()
        .filter(|r| r.1 > 0.3)
        .map(|r| r.0)
        .collect();
    assert!(err.contains(&format!("wrote {} rows", want.len())), "{err}");
    let (schema, b) = read(&out);
    assert_eq!(sql_ids(&out), want);
    assert!(matches!(
        schema.field_with_name("u").unwrap().data_type(),
        DataType::FixedSizeList(_, 32)
    ));
    let u = b.column_by_name("u").unwrap().as_fixed_size_list();
    let v = u.value(0);
    let n2: f32 = v
        .as_primitive::<arrow::datatypes::Float32Type>()
        .values()
        .iter()
        .map(|x| x * x)
        .sum();
    assert!((n2 - 1.0).abs() < 1e-5, "unit norm, got {n2}");
    // zstd, like every file dprune writes.
    let md = ParquetRecordBatchReaderBuilder::try_new(File::open(&out).unwrap()).unwrap();
    assert!(matches!(
        md.metadata().row_group(0).column(0).compression(),
        parquet::basic::Compression::ZSTD(_)
    ));
    let before = std::fs::read(&out).unwrap();
    let e = fails(&args);
    assert!(e.contains("exists") && e.contains("--overwrite"), "{e}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "a refused run leaves the file alone"
    );
    let mut again = args.to_vec();
    again.push("--overwrite");
    run_ok(&again);
    assert_eq!(sql_ids(&out), want);
    // No temporary file left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["r.parquet"]);
}

#[test]
fn bad_queries_give_clear_errors() {
    let e = fails(&["sql", "--table", &table(), "SELEC id FROM t"]);
    assert!(e.contains("query:") && e.contains("SELEC"), "{e}");
    let e = fails(&["sql", "--table", &table(), "SELECT nope FROM t"]);
    assert!(e.contains("nope"), "{e}");
    let e = fails(&["sql", "--table", &table(), "SELECT id FROM missing_table"]);
    assert!(e.contains("missing_table"), "{e}");
    let e = fails(&["sql", "--table", &table(), "SELECT dprune_nearest(clip_emb) FROM t"]);
    assert!(e.contains("no centroids loaded; pass --centroids"), "{e}");
    let e = fails(&[
        "sql",
        "--table",
        &table(),
        "SELECT dprune_cosine(caption, clip_emb) FROM t",
    ]);
    assert!(e.contains("dprune_cosine: argument 1 has type"), "{e}");
    let e = fails(&["sql", "--table", "t", "SELECT 1"]);
    assert!(e.contains("NAME=GLOB"), "{e}");
    let e = fails(&["sql", "--table", "t=fixtures/nothing-*.parquet", "SELECT 1"]);
    assert!(e.contains("no file matches"), "{e}");
}

#[test]
fn datafusion_options_come_from_the_environment() {
    let q = "SELECT COUNT(*) AS Rows FROM t";
    // Identifiers are lower-cased by default; the option keeps them as written.
    let out = run_ok(&["sql", "--table", &table(), q]);
    assert!(out.contains("| rows ") && !out.contains("Rows"), "{out}");
    let out = dprune()
        .env("DATAFUSION_SQL_PARSER_ENABLE_IDENT_NORMALIZATION", "false")
        .args(["sql", "--table", &table(), q])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("| Rows "), "{text}");
    // A value the option cannot take is an error naming where it came from.
    let out = dprune()
        .env("DATAFUSION_EXECUTION_BATCH_SIZE", "many")
        .args(["sql", "--table", &table(), q])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("DATAFUSION_") && err.contains("many"), "{err}");
}

/// Saves centroids fitted by `filter` and returns their path.
fn centroids(dir: &Path) -> String {
    let c = dir.join("c.npy");
    let mut args: Vec<String> = vec!["filter".into(), "--keep".into(), "0.3".into(), "-q".into()];
    args.extend(["--save-centroids".into(), c.display().to_string()]);
    args.extend(shards());
    args.extend(["-o".into(), dir.join("fit").display().to_string()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(&a);
    c.display().to_string()
}

fn filter_kept(dir: &Path, name: &str, c: &str, extra: &[&str]) -> Vec<i64> {
    let out = dir.join(name);
    let mut args: Vec<String> = vec!["filter".into(), "--keep".into(), "0.3".into(), "-q".into()];
    args.extend(["--centroids".into(), c.into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(shards());
    args.extend(["-o".into(), out.display().to_string()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(&a);
    kept_ids(&out)
}

const GLOBAL_PRUNE: &str = "
WITH s AS (SELECT id, dprune_nearest(clip_emb)['distance'] AS d FROM t),
     r AS (SELECT id, row_number() OVER (ORDER BY d DESC, id) AS rk FROM s)
SELECT id FROM r WHERE rk <= (SELECT (COUNT(*) * 3) / 10 FROM t) ORDER BY id";

// Per-cluster quotas as `filter --balance clusters` sets them: floor(B·n_c/N),
// then one more row to the clusters with the largest remainders (ties: lower id).
const PER_CLUSTER_PRUNE: &str = "
WITH s AS (SELECT id, dprune_nearest(clip_emb) AS n FROM t),
     f AS (SELECT id, n['cluster'] AS cluster, n['distance'] AS d FROM s),
     sizes AS (SELECT cluster, COUNT(*) AS size FROM f GROUP BY cluster),
     tot AS (SELECT SUM(size) AS total, (SUM(size) * 3) / 10 AS budget FROM sizes),
     q AS (SELECT cluster, (budget * size) / total AS q0, (budget * size) % total AS rem, budget
           FROM sizes CROSS JOIN tot),
     r AS (SELECT cluster, q0, budget, SUM(q0) OVER () AS assigned,
                  row_number() OVER (ORDER BY rem DESC, cluster) AS rrk FROM q),
     quota AS (SELECT cluster, q0 + CASE WHEN rrk <= budget - assigned THEN 1 ELSE 0 END AS quota FROM r),
     ranked AS (SELECT id, f.cluster AS cluster, row_number() OVER (PARTITION BY f.cluster ORDER BY d DESC, id) AS rk FROM f)
SELECT ranked.id FROM ranked JOIN quota ON ranked.cluster = quota.cluster
WHERE ranked.rk <= quota.quota ORDER BY ranked.id";

#[test]
fn a_prune_written_as_sql_keeps_exactly_the_rows_filter_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let c = centroids(dir.path());
    for (name, query, extra) in [
        ("global", GLOBAL_PRUNE, &[][..]),
        ("per_cluster", PER_CLUSTER_PRUNE, &["--balance", "clusters"][..]),
    ] {
        let want = filter_kept(dir.path(), name, &c, extra);
        assert_eq!(want.len(), 600, "{name}: floor(0.3 x 2000)");
        let out = dir.path().join(format!("{name}.parquet"));
        run_ok(&[
            "sql",
            "--table",
            &table(),
            "--centroids",
            &c,
            "-o",
            out.to_str().unwrap(),
            query,
        ]);
        assert_eq!(sql_ids(&out), want, "{name}: SQL and filter keep different rows");
    }
}

#[test]
fn where_prefilter_counts_match_a_direct_check() {
    let dir = tempfile::tempdir().unwrap();
    let rows = ids_and_similarity();
    let pred = "similarity > 0.3 AND id % 2 = 0";
    let want: Vec<i64> = rows.iter().filter(|r| r.1 > 0.3 && r.0 % 2 == 0).map(|r| r.0).collect();
    assert!(!want.is_empty() && want.len() < rows.len());
    let out = dir.path().join("o");
    let mut args = vec!["filter", "--where", pred, "--keep", "1.0", "--metric", "random", "-q"];
    let sh = shards();
    args.extend(sh.iter().map(String::as_str));
    args.extend(["-o", out.to_str().unwrap()]);
    run_ok(&args);
    assert_eq!(
        kept_ids(&out),
        want,
        "keep 1.0 keeps exactly the rows the predicate holds for"
    );
    let r = report(&out);
    assert_eq!(r["stages"][0]["name"], "where");
    assert_eq!(r["stages"][0]["removed"], (rows.len() - want.len()) as u64);
    assert_eq!(r["prefilter"]["rows_out"], want.len() as u64);
    assert_eq!(r["n_eligible"], want.len() as u64);
    assert_eq!(
        r["inputs"][0]["invalid"], 0,
        "rows removed by --where are not invalid rows"
    );
    // --keep is a fraction of the rows the predicate keeps.
    let out2 = dir.path().join("o2");
    let mut a2 = vec!["filter", "--where", pred, "--keep", "0.5", "--dry-run", "-q"];
    a2.extend(sh.iter().map(String::as_str));
    a2.extend(["-o", out2.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_str(&run_ok(&a2)).unwrap();
    assert_eq!(json["n_kept"], (want.len() / 2) as u64);
    assert_eq!(json["stages"][0]["rows_out"], want.len() as u64);
}

#[test]
fn where_skips_row_groups_that_cannot_match() {
    let rows = ids_and_similarity();
    let cut = rows[rows.len() / 10].0;
    // Expected: row groups whose ids are all >= cut, computed from the data.
    let (mut groups, mut skippable) = (0u64, 0u64);
    for s in shards() {
        let b = ParquetRecordBatchReaderBuilder::try_new(File::open(&s).unwrap()).unwrap();
        let n = b.metadata().num_row_groups();
        for g in 0..n {
            let r = ParquetRecordBatchReaderBuilder::try_new(File::open(&s).unwrap())
                .unwrap()
                .with_row_groups(vec![g])
                .build()
                .unwrap();
            let ids: Vec<i64> = r.flat_map(|b| i64s(&b.unwrap(), "id")).collect();
            groups += 1;
            skippable += ids.iter().all(|&i| i >= cut) as u64;
        }
    }
    assert!(groups > SHARDS as u64, "the fixture needs several row groups per file");
    let pred = format!("id < {cut}");
    let mut args = vec![
        "filter",
        "--where",
        &pred,
        "--keep",
        "1.0",
        "--metric",
        "random",
        "--dry-run",
        "-q",
    ];
    let sh = shards();
    args.extend(sh.iter().map(String::as_str));
    args.extend(["-o", "/tmp/unused-dprune-where"]);
    let json: serde_json::Value = serde_json::from_str(&run_ok(&args)).unwrap();
    assert_eq!(json["prefilter"]["row_groups"], groups);
    assert_eq!(json["prefilter"]["row_groups_skipped"], skippable);
    assert!(skippable > 0);
    assert_eq!(json["n_kept"], rows.iter().filter(|r| r.0 < cut).count() as u64);
}

#[test]
fn where_errors_name_the_predicate_and_column() {
    let sh = shards();
    let run = |pred: &str| {
        let mut a = vec!["filter", "--where", pred, "--dry-run"];
        a.extend(sh.iter().map(String::as_str));
        a.extend(["-o", "/tmp/unused-dprune-where"]);
        fails(&a)
    };
    let e = run("nope > 1");
    assert!(e.contains("--where `nope > 1`") && e.contains("nope"), "{e}");
    let e = run("id + 1");
    assert!(e.contains("not a boolean"), "{e}");
    let e = run("id >>= (");
    assert!(e.contains("--where `id >>= (`"), "{e}");
    let e = run("id < 0");
    assert!(e.contains("holds for none"), "{e}");
}
