//! `filter --cluster` and `filter --engine sql` (issue 7): a Ballista
//! scheduler and two executors started here on 127.0.0.1 (`dprune cluster
//! ...`, free ports, killed at the end); distributed prunes and the same
//! plans run in-process compared row for row with native runs of the same
//! flags; plus the errors both paths promise.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::util::{fails, fixture, listing, read, report, run_ok_stderr};

/// The processes of the test cluster; killed when the test binary ends.
struct TestCluster {
    url: String,
    children: Vec<Child>,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn bin() -> Command {
    Command::new(assert_cmd::cargo::cargo_bin!("dprune"))
}

fn start() -> TestCluster {
    let mut sched = bin()
        .args(["cluster", "scheduler", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the scheduler");
    let mut line = String::new();
    BufReader::new(sched.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("dprune scheduler listening on ")
        .unwrap_or_else(|| panic!("unexpected scheduler output: {line:?}"))
        .to_string();
    let mut cluster = TestCluster {
        url: url.clone(),
        children: vec![sched],
    };
    for _ in 0..2 {
        let (flight, grpc) = (free_port(), free_port());
        let ex = bin()
            .args(["cluster", "executor", "--scheduler", &url])
            .args(["--flight-port", &flight.to_string(), "--grpc-port", &grpc.to_string()])
            .args(["--concurrent-tasks", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting an executor");
        cluster.children.push(ex);
    }
    // Executors register within a second or two; a job submitted before
    // waits for them, but give them a moment so the first test is not slow.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster
}

/// The test cluster, shared by the tests of this module (they run concurrently).
static CLUSTER: Mutex<Option<TestCluster>> = Mutex::new(None);

/// Statics are not dropped: kill the processes when the test binary exits.
extern "C" fn stop_cluster() {
    if let Ok(mut g) = CLUSTER.lock() {
        g.take();
    }
}

unsafe extern "C" {
    fn atexit(f: extern "C" fn()) -> i32;
}

fn cluster() -> String {
    let mut g = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(start());
        // SAFETY: registers a plain function with the C runtime, once.
        unsafe {
            atexit(stop_cluster);
        }
    }
    g.as_ref().unwrap().url.clone()
}

/// Every output Parquet file of `a` equals the one of the same name in `b`, row for row.
fn same_outputs(a: &Path, b: &Path) {
    let parquet = |d: &Path| -> Vec<String> { listing(d).into_iter().filter(|f| f.ends_with(".parquet")).collect() };
    let (fa, fb) = (parquet(a), parquet(b));
    assert_eq!(fa, fb, "output files differ");
    assert!(!fa.is_empty());
    for f in fa {
        let (sa, ba) = read(&a.join(&f));
        let (sb, bb) = read(&b.join(&f));
        assert_eq!(sa, sb, "{f}: schema");
        assert_eq!(ba, bb, "{f}: rows");
    }
}

fn shards() -> String {
    fixture("laion_mini/*.parquet")
}

/// The native run, the SQL engine in this process (one thread: all files
/// in one partition) and the distributed run give the same outputs.
fn compare(flags: &[&str], inputs: &[String]) {
    let url = cluster();
    let tmp = tempfile::tempdir().unwrap();
    let (local, sql, dist) = (
        tmp.path().join("local"),
        tmp.path().join("sql"),
        tmp.path().join("dist"),
    );
    // Inputs first: `--embeddings` takes several values.
    let mut l: Vec<&str> = vec!["filter", "--quiet"];
    l.extend(inputs.iter().map(String::as_str));
    l.extend(flags);
    let (mut q, mut d) = (l.clone(), l.clone());
    let (ls, qs, ds) = (
        local.display().to_string(),
        sql.display().to_string(),
        dist.display().to_string(),
    );
    l.extend(["-o", &ls]);
    q.extend(["--engine", "sql", "--threads", "1", "-o", &qs]);
    d.extend(["--cluster", &url, "-o", &ds]);
    run_ok_stderr(&l);
    run_ok_stderr(&q);
    run_ok_stderr(&d);
    same_outputs(&local, &sql);
    same_outputs(&local, &dist);
    let rq = report(&sql);
    assert_eq!(rq["command"], "filter --engine sql");
    assert!(listing(&sql).iter().all(|f| !f.starts_with(".dprune-kept")));
    if flags.contains(&"--with-scores") {
        let f = listing(&sql).into_iter().find(|f| f.ends_with(".parquet")).unwrap();
        let (schema, _) = read(&sql.join(f));
        assert!(schema.field_with_name("dprune_score").is_ok() && schema.field_with_name("dprune_cluster").is_ok());
    }
    let (rl, rd) = (report(&local), report(&dist));
    if !rq["scores"].is_null() {
        // Every score came back (rules that run in the client, --scores-only): the same
        // summary (quantiles, histogram, threshold) and per-cluster plan (DBP's quotas).
        assert_eq!(rl["scores"], rq["scores"]);
        assert_eq!(rl["scores"], rd["scores"]);
        assert_eq!(rl["clusters"], rd["clusters"]);
    }
    assert_eq!(rl["n_kept"], rq["n_kept"]);
    assert_eq!(
        rl["clusters"], rq["clusters"],
        "per-cluster sizes, kept counts, mean scores"
    );
    assert_eq!(rl["n_kept"], rd["n_kept"]);
    assert_eq!(rl["n_rows"], rd["n_rows"]);
    for (cl, cd) in rl["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .zip(rd["clusters"].as_array().unwrap())
    {
        assert_eq!(cl["size"], cd["size"], "cluster sizes");
        assert_eq!(cl["kept"], cd["kept"], "cluster kept counts");
    }
    assert_eq!(rl["kmeans"]["inertia"], rd["kmeans"]["inertia"], "same fit");
    // The kept bitmap left for the executors is gone.
    assert!(listing(&dist).iter().all(|f| !f.starts_with(".dprune-kept")));
}

#[test]
fn distributed_prune_equals_local_keep_hard() {
    compare(&["--keep", "0.3", "--k", "8", "--seed", "3"], &[shards()]);
}

#[test]
fn distributed_prune_equals_local_keep_easy_count() {
    compare(
        &["--keep-n", "777", "--keep-easy", "--k", "5", "--seed", "11"],
        &[shards()],
    );
}

#[test]
fn distributed_prune_equals_local_with_scores() {
    // dprune_cluster and dprune_score of every kept row, bit for bit.
    compare(
        &["--keep", "0.25", "--k", "6", "--seed", "2", "--with-scores"],
        &[shards()],
    );
}

#[test]
fn distributed_scores_table_equals_local() {
    // scores.parquet: every row's file, row, cluster, score and kept flag.
    compare(
        &["--keep-n", "300", "--k", "4", "--seed", "8", "--scores-only"],
        &[shards()],
    );
}

#[test]
fn distributed_rules_that_need_every_score_equal_local() {
    // Selected in the client with the native code on every row's cluster and score.
    compare(
        &["--keep", "0.3", "--k", "6", "--seed", "4", "--balance", "clusters"],
        &[shards()],
    );
    compare(
        &[
            "--metric",
            "dbp",
            "--keep",
            "0.4",
            "--k",
            "6",
            "--seed",
            "4",
            "--with-scores",
        ],
        &[shards()],
    );
    compare(
        &["--metric", "moderate", "--keep-n", "500", "--k", "5", "--with-scores"],
        &[shards()],
    );
    compare(
        &["--metric", "ccs", "--keep", "0.5", "--k", "5", "--keep-easy"],
        &[shards()],
    );
}

#[test]
fn distributed_prune_equals_local_with_npy_sidecars() {
    let npy = fixture("sidecar/img_emb/*.npy");
    compare(
        &["--keep", "0.4", "--k", "3", "--seed", "5", "--embeddings", &npy],
        &[fixture("sidecar/metadata/*.parquet")],
    );
}

/// Centroids fitted on the good shards, saved in `dir`; returns their path.
fn fit_centroids(dir: &Path) -> String {
    let cs = dir.join("c.npy").display().to_string();
    let fit = dir.join("fit").display().to_string();
    run_ok_stderr(&[
        "filter",
        "--quiet",
        "--k",
        "4",
        "--save-centroids",
        &cs,
        &shards(),
        "-o",
        &fit,
    ]);
    cs
}

#[test]
fn distributed_prune_equals_local_with_invalid_rows_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    // Centroids from the good shards, applied to a file with NaN and zero rows.
    let cs = fit_centroids(tmp.path());
    compare(
        &["--keep", "0.5", "--centroids", &cs, "--drop-invalid"],
        &[fixture("bad/nan_rows.parquet")],
    );
}

/// A file with NaN rows, run with `engine` flags and no `--drop-invalid`:
/// the error names file and row (dprune's message, not the engine's
/// wrappers) and no pruned shard appears.
fn invalid_rows_fail(engine: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let cs = fit_centroids(tmp.path());
    let out = tmp.path().join("out");
    let o = out.display().to_string();
    let nan = fixture("bad/nan_rows.parquet");
    let mut args = vec!["filter", "--keep", "0.5", "--centroids", &cs];
    args.extend(engine);
    args.extend([nan.as_str(), "-o", &o]);
    let err = fails(&args);
    assert!(
        err.contains("nan_rows.parquet row") && err.contains("--drop-invalid") && !err.contains("[dprune]"),
        "{err}"
    );
    let written: Vec<String> = if out.exists() { listing(&out) } else { vec![] };
    assert!(written.iter().all(|f| !f.ends_with(".parquet")), "{written:?}");
}

#[test]
fn invalid_rows_without_drop_invalid_fail_naming_file_and_row() {
    let url = cluster();
    invalid_rows_fail(&["--cluster", &url]);
    invalid_rows_fail(&["--engine", "sql"]);
}

#[test]
fn sql_engine_refuses_what_it_does_not_run_and_unknown_engines() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out").display().to_string();
    let err = fails(&["filter", "--dedup", "0.05", "--engine", "sql", &shards(), "-o", &out]);
    assert!(err.contains("--dedup") && err.contains("--engine sql"), "{err}");
    let err = fails(&[
        "filter",
        "--text-col",
        "caption",
        "--engine",
        "sql",
        &shards(),
        "-o",
        &out,
    ]);
    assert!(err.contains("an encoder") && err.contains("--engine sql"), "{err}");
    let err = fails(&["filter", "--engine", "spark", &shards(), "-o", &out]);
    assert!(err.contains("`spark`") && err.contains("native or sql"), "{err}");
    assert!(!Path::new(&out).exists());
}

#[test]
fn unsupported_stage_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out").display().to_string();
    // No cluster needed: the flags are checked first.
    let err = fails(&[
        "filter",
        "--metric",
        "semdedup",
        "--keep",
        "0.3",
        "--cluster",
        "df://127.0.0.1:9",
        &shards(),
        "-o",
        &out,
    ]);
    assert!(err.contains("--metric semdedup") && err.contains("--cluster"), "{err}");
    let err = fails(&[
        "filter",
        "--keep",
        "0.3",
        "--cluster",
        "df://nowhere",
        &shards(),
        "-o",
        &out,
    ]);
    assert!(err.contains("df://HOST:PORT"), "{err}");
}

#[test]
fn unreachable_scheduler_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out").display().to_string();
    let url = format!("df://127.0.0.1:{}", free_port());
    let err = fails(&[
        "filter",
        "--keep",
        "0.3",
        "--k",
        "4",
        "--cluster",
        &url,
        &shards(),
        "-o",
        &out,
    ]);
    assert!(err.contains(&format!("cluster {url}")), "{err}");
}
