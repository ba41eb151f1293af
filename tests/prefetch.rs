//! The kept-row prefetch (`pipeline::prefetch`): with it (the default) and without
//! it (`DPRUNE_PREFETCH=0`) `filter` writes the same pruned shards, and the copies
//! leave nothing behind.

use std::path::Path;

use crate::util::*;

const MINI: &str = "laion_mini/*.parquet";
const SHARDS: [&str; 4] = [
    "part-00000.parquet",
    "part-00001.parquet",
    "part-00002.parquet",
    "part-00003.parquet",
];

fn run(out: &Path, spill: &Path, extra: &[&str], prefetch: bool) -> serde_json::Value {
    let mut cmd = dprune();
    cmd.args(["filter", "-q", "-o"])
        .arg(out)
        .arg(fixture(MINI))
        .arg("--spill-dir")
        .arg(spill)
        .args(extra);
    if !prefetch {
        cmd.env("DPRUNE_PREFETCH", "0");
    }
    cmd.assert().success();
    report(out)
}

#[test]
fn prefetched_rows_write_the_same_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let spill = tmp.path().join("spill");
    std::fs::create_dir(&spill).unwrap();
    for (i, extra) in [
        &["--keep", "0.3"][..],
        &["--keep-n", "123", "--with-scores"][..],
        &["--keep", "0.2", "--threads", "1", "--batch-rows", "100"][..],
    ]
    .iter()
    .enumerate()
    {
        let on = tmp.path().join(format!("on{i}"));
        let off = tmp.path().join(format!("off{i}"));
        let r_on = run(&on, &spill, extra, true);
        let r_off = run(&off, &spill, extra, false);
        // The 2,000 rows all trained k-means, so the sample places the threshold and the
        // copies hold every kept row, plus a margin.
        let kept = r_on["n_kept"].as_u64().unwrap();
        let copied = r_on["prefetch"]["rows"].as_u64().unwrap();
        assert_eq!(r_on["prefetch"]["used"], true, "{extra:?}");
        assert!(
            copied >= kept && copied < 2000 / 2,
            "{extra:?}: {copied} copied for {kept} kept"
        );
        assert!(r_off.get("prefetch").is_none(), "{extra:?}");
        assert_eq!(r_on["n_kept"], r_off["n_kept"]);
        let mut rows = 0;
        for s in SHARDS {
            let (schema_on, b_on) = read(&on.join(s));
            let (schema_off, b_off) = read(&off.join(s));
            assert_eq!(schema_on, schema_off, "{extra:?} {s}");
            assert_eq!(b_on, b_off, "{extra:?} {s}");
            rows += b_on.num_rows() as u64;
        }
        assert_eq!(rows, kept);
        assert_eq!(
            std::fs::read_dir(&spill).unwrap().count(),
            0,
            "{extra:?}: the copies are removed"
        );
    }
}

#[test]
fn no_prefetch_where_it_cannot_serve() {
    // A per-cluster budget, a scores table, keeping more than half the rows and
    // keeping the easiest (the training rows' scores run low, the wrong side for
    // the smallest scores) get no copies.
    let tmp = tempfile::tempdir().unwrap();
    let spill = tmp.path().join("spill");
    std::fs::create_dir(&spill).unwrap();
    for (i, extra) in [
        &["--keep", "0.3", "--balance", "clusters"][..],
        &["--keep", "0.3", "--scores-only"][..],
        &["--keep", "0.6"][..],
        &["--keep", "0.2", "--keep-easy"][..],
    ]
    .iter()
    .enumerate()
    {
        let out = tmp.path().join(format!("o{i}"));
        let r = run(&out, &spill, extra, true);
        assert!(r.get("prefetch").is_none(), "{extra:?}");
    }
}

#[test]
fn a_prefetch_that_cannot_write_warns_and_changes_nothing() {
    // The temporary folder cannot be made (its parent is a file): the run warns, reads
    // the shards again to write them, and writes what it writes without the prefetch.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    let bad = file.join("spill");
    let good = tmp.path().join("spill");
    std::fs::create_dir(&good).unwrap();
    let on = tmp.path().join("on");
    let off = tmp.path().join("off");
    let r = run(&on, &bad, &["--keep", "0.3"], true);
    run(&off, &good, &["--keep", "0.3"], false);
    assert!(r.get("prefetch").is_none());
    let warned = r["warnings"].as_array().unwrap();
    assert!(
        warned
            .iter()
            .any(|w| w.as_str().unwrap().contains("kept-row prefetch off")),
        "{warned:?}"
    );
    for s in SHARDS {
        assert_eq!(read(&on.join(s)), read(&off.join(s)), "{s}");
    }
}
