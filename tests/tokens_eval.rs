//! `dprune tokens eval` (issue 6) on the real toy ViT split graphs in `../shared/models/`
//! (see MODELS.md, "Toy ViT") and the MNIST test images in `../shared/data/`. ONNX Runtime
//! comes from `pip install onnxruntime` or ORT_DYLIB_PATH, as for the encoder tests.

use std::path::PathBuf;

use serde_json::Value;

use crate::util::*;

fn models() -> PathBuf {
    let d = root().join("..").join("shared").join("models");
    assert!(
        d.join("toyvit-mnist-part1.onnx").is_file() && d.join("toyvit-mnist-part2.onnx").is_file(),
        "the toy ViT is missing: expected {}/toyvit-mnist-part{{1,2}}.onnx (shared/ beside the clone)",
        d.display()
    );
    d
}

fn eval(out: &std::path::Path, limit: &str, extra: &[&str]) -> Value {
    let m = models().display().to_string();
    let im = mnist();
    let o = out.display().to_string();
    let mut args = vec![
        "tokens", "eval", "--models", &m, "--images", &im, "--limit", limit, "-o", &o, "-q",
    ];
    args.extend_from_slice(extra);
    run_ok(&args);
    let text = std::fs::read_to_string(out.join("tokens_eval.json")).unwrap();
    serde_json::from_str(&text).expect("tokens_eval.json parses")
}

fn points(r: &Value) -> &Vec<Value> {
    r["points"].as_array().unwrap()
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn tokens_eval_on_the_toy_vit() {
    let d = tempfile::tempdir().unwrap();
    let r = eval(d.path(), "40", &[]);
    assert_eq!(r["n_images"], 40);
    assert_eq!(r["n_patches"], 49);
    assert_eq!(r["grid"], serde_json::json!([7, 7]));
    let unpruned = f(&r, "unpruned_accuracy");
    assert!(unpruned > 0.7, "the toy ViT should know MNIST: {unpruned}");
    let pts = points(&r);
    let series: std::collections::BTreeSet<&str> = pts.iter().map(|p| p["series"].as_str().unwrap()).collect();
    for s in [
        "cls_topk",
        "random",
        "uniform_grid",
        "divprune",
        "tome",
        "visionzip",
        "prumerge",
        "adaptive",
        "cls_topk@iqr",
        "adaptive@threshold",
    ] {
        assert!(series.contains(s), "series {s} missing: {series:?}");
    }
    assert!(r["skipped"].as_array().unwrap().is_empty(), "{}", r["skipped"]);
    for p in pts {
        let frac = f(p, "target_fraction");
        let target_k = p["target_k"].as_u64().unwrap() as f64;
        assert_eq!(target_k, (frac * 49.0).round(), "{p}");
        assert_eq!(p["count_matches_budget"], true, "count differs from the budget: {p}");
        if p["adaptive"] == true {
            // Calibrated to the same average, each image its own count within the clamps.
            assert!((f(p, "mean_k") - target_k).abs() <= 0.5, "{p}");
            assert!(
                p["min_k"].as_u64().unwrap() >= 1 && p["max_k"].as_u64().unwrap() <= 49,
                "{p}"
            );
        } else {
            assert_eq!(p["min_k"].as_u64().unwrap() as f64, target_k, "{p}");
            assert_eq!(p["max_k"].as_u64().unwrap() as f64, target_k, "{p}");
        }
        if frac == 1.0 {
            // Every reducer keeps all tokens: the unpruned model exactly.
            assert_eq!(f(p, "accuracy"), unpruned, "{p}");
            assert_eq!(f(p, "agreement"), 1.0, "{p}");
            assert!(f(p, "cosine_min") > 1.0 - 1e-9, "{p}");
        } else {
            assert!(f(p, "cosine_mean") < 1.0 - 1e-6, "pruning changed nothing: {p}");
        }
        let c = f(p, "cosine_mean");
        assert!(c > 0.0 && c <= 1.0 + 1e-9, "{p}");
    }
    let at = |s: &str, frac: f64| {
        pts.iter()
            .find(|p| p["series"] == s && f(p, "target_fraction") == frac)
            .unwrap_or_else(|| panic!("{s} at {frac} missing"))
    };
    assert!(f(at("cls_topk", 1.0), "accuracy") >= f(at("cls_topk", 0.125), "accuracy"));
    assert!(f(at("cls_topk", 1.0), "cosine_mean") > f(at("cls_topk", 0.125), "cosine_mean"));
    // Comparisons at 25%: every adaptive series against fixed [CLS] top-k at k = 12.
    let comps = r["comparisons"].as_array().unwrap();
    let c25: Vec<&Value> = comps.iter().filter(|c| f(c, "fraction") == 0.25).collect();
    assert!(c25.len() >= 4, "{comps:?}");
    for c in c25 {
        assert_eq!(c["cls_topk_k"], 12);
        assert!((f(c, "delta") - (f(c, "accuracy") - f(c, "cls_topk_accuracy"))).abs() < 1e-12);
    }
    let png = std::fs::read(d.path().join("tokens_eval.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "not a PNG plot");
}

#[test]
fn tokens_eval_does_not_depend_on_batch_size_and_refuses_to_overwrite() {
    let d = tempfile::tempdir().unwrap();
    let a = eval(&d.path().join("a"), "16", &[]);
    let b = eval(&d.path().join("b"), "16", &["--batch-size", "3"]);
    assert_eq!(a["n_images"], 16);
    for (p, q) in points(&a).iter().zip(points(&b)) {
        assert_eq!(p["series"], q["series"]);
        assert_eq!(p["accuracy"], q["accuracy"], "{p} vs {q}");
        assert!((f(p, "cosine_mean") - f(q, "cosine_mean")).abs() < 1e-6, "{p} vs {q}");
    }
    // Existing outputs are refused without --overwrite, and kept as they were.
    let m = models().display().to_string();
    let im = mnist();
    let o = d.path().join("a").display().to_string();
    let before = std::fs::read(d.path().join("a").join("tokens_eval.json")).unwrap();
    let err = fails(&[
        "tokens", "eval", "--models", &m, "--images", &im, "--limit", "5", "-o", &o,
    ]);
    assert!(err.contains("tokens_eval.json") && err.contains("--overwrite"), "{err}");
    assert_eq!(
        std::fs::read(d.path().join("a").join("tokens_eval.json")).unwrap(),
        before
    );
}

#[test]
fn tokens_eval_missing_model_is_named() {
    let d = tempfile::tempdir().unwrap();
    let empty = d.path().join("models");
    std::fs::create_dir(&empty).unwrap();
    let im = mnist();
    let o = d.path().join("out").display().to_string();
    let dir = empty.display().to_string();
    let run_fail = || fails(&["tokens", "eval", "--models", &dir, "--images", &im, "-o", &o]);
    let err = run_fail();
    assert!(
        err.contains("toyvit-mnist-part1.onnx") && err.contains("no such model file"),
        "{err}"
    );
    assert!(!d.path().join("out").join("tokens_eval.json").exists());

    // A graph that is not part 1 (part 2 under part 1's name): the missing tensor is named.
    for name in ["toyvit-mnist-part1.onnx", "toyvit-mnist-part2.onnx"] {
        std::fs::copy(models().join("toyvit-mnist-part2.onnx"), empty.join(name)).unwrap();
    }
    let err = run_fail();
    assert!(
        err.contains("pixel_values") && err.contains("toyvit-mnist-part1.onnx"),
        "{err}"
    );
}

#[test]
fn tokens_eval_wrong_image_shape_is_named() {
    // An image file whose `pixels` are not the 784 values the model takes.
    let d = tempfile::tempdir().unwrap();
    let m = models().display().to_string();
    let o = d.path().join("out").display().to_string();
    let bad = fixture("laion_mini/part-00000.parquet");
    let err = fails(&["tokens", "eval", "--models", &m, "--images", &bad, "-o", &o]);
    assert!(err.contains("label") || err.contains("pixels"), "{err}");
}
