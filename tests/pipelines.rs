//! `dprune run` on every shipped `pipelines/*.toml`, and its errors.

use crate::util::*;

#[test]
fn every_shipped_pipeline_runs_on_the_fixtures() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(root().join("pipelines")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if std::fs::read_to_string(&p).unwrap().contains("command = \"annotate\"") {
            let out = tmp.path().join(&name).join("sel.parquet");
            let o = dprune()
                .args(["run", p.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
            let (_, b) = read(&out);
            assert_eq!(b.num_rows(), 20, "{name}: the budget");
            assert!(out.with_extension("report.json").exists());
            n += 1;
            continue;
        }
        let out = tmp.path().join(&name);
        let o = dprune()
            .args(["run", p.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let r = report(&out);
        assert_eq!(r["n_kept"], 600, "{name}: floor(0.3 * 2000)");
        n += 1;
    }
    assert!(n >= 6);
}

#[test]
fn pipeline_errors_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(
        &p,
        "inputs = [\"fixtures/laion_mini/*.parquet\"]\n[params]\nkeep = { fraction = 0.3 }\nmetrc = \"random\"\n",
    )
    .unwrap();
    let o = dprune()
        .args(["run", p.to_str().unwrap(), "-o", tmp.path().join("o").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("bad.toml") && err.contains("unknown field `metrc`"),
        "{err}"
    );
    let o = dprune()
        .args(["run", tmp.path().join("missing.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.toml"));
}

#[test]
fn pipeline_and_flags_give_the_same_selection() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let p = root().join("pipelines/random-baseline.toml");
    assert!(
        dprune()
            .args(["run", p.to_str().unwrap(), "-o", a.to_str().unwrap(), "-q"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let flags = [
        "filter",
        "--metric",
        "random",
        "--keep",
        "0.3",
        "--seed",
        "0",
        "-q",
        "-o",
        b.to_str().unwrap(),
    ];
    let mini = fixture("laion_mini/*.parquet");
    assert!(dprune().args(flags).arg(&mini).output().unwrap().status.success());
    for s in ["part-00000.parquet", "part-00003.parquet"] {
        assert_eq!(i64s(&read(&a.join(s)).1, "id"), i64s(&read(&b.join(s)).1, "id"));
    }
}
