//! Encoders (issue 4): the MiniLM ONNX model against its reference
//! embeddings, batch-size and thread invariance, `dprune embed`, and
//! `dprune filter --model/--text-col`, plus every bad input promised.
//!
//! The model lives in `../shared/models/` (beside the clone, as in CI);
//! ONNX Runtime comes from `pip install onnxruntime` (see `.ci/run`). A
//! missing model or runtime fails these tests with a message saying so.

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, FixedSizeListArray};
use arrow::datatypes::{DataType, Float32Type};
use dprune::embed::{Device, Encoder, OnnxTextEncoder, OnnxTextParams};

use crate::util::*;

const CAPTIONS: &str = "text/captions-*.parquet";
const MODEL_SHA256: &str = "abe590837511c032d3cad5d1253017ee3e11e772cbad397d2c3784284681a801";

fn models() -> PathBuf {
    let d = root().join("..").join("shared").join("models");
    assert!(
        d.join("minilm-l6-v2.onnx").is_file(),
        "the MiniLM model is missing: expected {}/minilm-l6-v2.onnx (shared/ beside the clone)",
        d.display()
    );
    d
}

fn minilm() -> String {
    models().join("minilm-l6-v2.onnx").display().to_string()
}

fn params(batch_size: usize, threads: Option<usize>) -> OnnxTextParams {
    OnnxTextParams {
        model: models().join("minilm-l6-v2.onnx"),
        tokenizer: None,
        device: Device::Cpu,
        batch_size,
        max_length: 256,
        threads,
        normalize: true,
        sort_window: dprune::embed::DEFAULT_SORT_WINDOW,
        output: None,
    }
}

fn open(batch_size: usize, threads: Option<usize>) -> OnnxTextEncoder {
    OnnxTextEncoder::open(&params(batch_size, threads)).unwrap_or_else(|e| panic!("opening MiniLM: {e}"))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Texts of the caption fixtures plus a few long and odd ones.
fn sample_texts() -> Vec<String> {
    let (_, b) = read(Path::new(&fixture("text/captions-00000.parquet")));
    let caps = b.column_by_name("caption").unwrap().as_string::<i32>().clone();
    let mut v: Vec<String> = (0..100).map(|i| caps.value(i).to_string()).collect();
    v.push(String::new());
    v.push("word ".repeat(400)); // truncated to 256 tokens
    v.push("Café crème, naïve résumé — ÜBER straße!".into());
    v
}

fn fsl_rows(b: &arrow::array::RecordBatch, name: &str) -> (usize, Vec<f32>, Vec<bool>) {
    let c = b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
    let l: &FixedSizeListArray = c.as_fixed_size_list();
    let d = l.value_length() as usize;
    let vals = l.values().as_primitive::<Float32Type>().values().to_vec();
    let valid = (0..l.len()).map(|i| l.is_valid(i)).collect();
    (d, vals, valid)
}

#[test]
fn minilm_matches_the_reference_embeddings() {
    let text = std::fs::read_to_string(models().join("minilm-l6-v2-reference.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let items = r["items"].as_array().unwrap();
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    let enc = open(64, Some(2));
    assert_eq!(enc.info().dim, 384);
    assert_eq!(enc.info().output, "sentence_embedding");
    assert_eq!(enc.info().model_sha256.as_deref(), Some(MODEL_SHA256));
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(*t)).collect();
    let got = enc.encode(&refs).unwrap();
    for (i, item) in items.iter().enumerate() {
        let row = &got[i * 384..(i + 1) * 384];
        for key in ["sentence_transformers_fp32", "onnx_fp32"] {
            let want: Vec<f32> = item[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let c = cosine(row, &want);
            assert!(c >= 1.0 - 1e-4, "{:?} vs {key}: cosine {c}", texts[i]);
            assert!(max_abs_diff(row, &want) < 1e-4, "{:?} vs {key}", texts[i]);
        }
    }
}

#[test]
fn masked_mean_pooling_of_last_hidden_state_equals_sentence_embedding() {
    // The model exposes both; pooling `last_hidden_state` ourselves over
    // padded batches must give the model's own `sentence_embedding`.
    let texts = sample_texts();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let model = open(64, Some(2)).encode(&refs).unwrap();
    let pooled = OnnxTextEncoder::open(&OnnxTextParams {
        output: Some("last_hidden_state".into()),
        ..params(16, Some(2))
    })
    .unwrap();
    assert_eq!(pooled.info().output, "last_hidden_state + masked mean pooling");
    let ours = pooled.encode(&refs).unwrap();
    let d = max_abs_diff(&model, &ours);
    assert!(d < 1e-5, "max diff {d}");
    let err = OnnxTextEncoder::open(&OnnxTextParams {
        output: Some("nope".into()),
        ..params(16, Some(1))
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no output `nope`") && err.contains("sentence_embedding"),
        "{err}"
    );
}

#[test]
fn results_do_not_depend_on_batch_size_or_threads() {
    let texts = sample_texts();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let base = open(64, Some(2)).encode(&refs).unwrap();
    for (bs, th) in [(7, Some(1)), (1000, Some(2)), (16, None)] {
        let other = open(bs, th).encode(&refs).unwrap();
        let d = max_abs_diff(&base, &other);
        assert!(d < 1e-5, "batch {bs} threads {th:?}: max diff {d}");
    }
    // Rows are unit vectors in input order: the duplicate captions of the
    // fixture (rows 0 and 7) embed identically.
    let n: f32 = base[..384].iter().map(|v| v * v).sum();
    assert!((n - 1.0).abs() < 1e-5);
    assert!(max_abs_diff(&base[..384], &base[7 * 384..8 * 384]) < 1e-6);
}

#[test]
fn null_texts_give_zero_rows() {
    let enc = open(8, Some(1));
    let got = enc.encode(&[Some("a dog"), None, Some("a cat")]).unwrap();
    assert!(got[384..768].iter().all(|&v| v == 0.0));
    let alone = enc.encode(&[Some("a cat")]).unwrap();
    assert!(max_abs_diff(&got[768..], &alone) < 1e-6);
}

#[test]
fn embed_writes_shards_with_an_embedding_column_and_a_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emb");
    let model = minilm();
    run_ok_stderr(&[
        "embed",
        "--model",
        &model,
        "--text-col",
        "caption",
        &fixture(CAPTIONS),
        "-o",
        out.to_str().unwrap(),
        "--threads",
        "2",
        "-q",
    ]);
    let enc = open(64, Some(2));
    for s in ["captions-00000.parquet", "captions-00001.parquet"] {
        let (in_schema, input) = read(Path::new(&fixture(&format!("text/{s}"))));
        let (schema, b) = read(&out.join(s));
        assert_eq!(b.num_rows(), input.num_rows());
        assert_eq!(schema.metadata(), in_schema.metadata(), "file metadata kept");
        assert_eq!(i64s(&b, "id"), i64s(&input, "id"), "row order kept");
        let f = schema.field_with_name("embedding").unwrap();
        assert!(matches!(f.data_type(), DataType::FixedSizeList(_, 384)), "{f:?}");
        let (d, vals, valid) = fsl_rows(&b, "embedding");
        assert_eq!(d, 384);
        assert!(valid.iter().all(|&v| v));
        let caps = input.column_by_name("caption").unwrap().as_string::<i32>().clone();
        let refs: Vec<Option<&str>> = (0..5).map(|i| Some(caps.value(i))).collect();
        let want = enc.encode(&refs).unwrap();
        assert!(max_abs_diff(&vals[..5 * 384], &want) < 1e-5);
    }
    let r = report(&out);
    assert_eq!(r["command"], "embed");
    assert_eq!(r["n_rows"], 300);
    assert_eq!(r["encoder"]["model_sha256"], MODEL_SHA256);
    assert_eq!(r["encoder"]["provider"], "CPUExecutionProvider");
    assert_eq!(r["encoder"]["batch_size"], 64);
    assert!(r["samples_per_s"].as_f64().unwrap() > 0.0);
    let mut names = listing(&out);
    names.retain(|n| n.starts_with('.'));
    assert!(names.is_empty(), "no temporary files left: {names:?}");
}

#[test]
fn embed_sidecars_f16_and_hashed_default() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("side");
    run_ok_stderr(&[
        "embed",
        "--text-col",
        "caption",
        "--sidecar",
        "--f16",
        &fixture(CAPTIONS),
        "-o",
        out.to_str().unwrap(),
        "-q",
    ]);
    for s in ["captions-00000", "captions-00001"] {
        let h = dprune::io::npy::read_header(&out.join(format!("{s}.npy"))).unwrap();
        assert_eq!((h.rows, h.cols), (150, dprune::embed::DEFAULT_HASHED_DIM));
        assert_eq!(h.dtype, dprune::io::npy::NpyDtype::F16);
    }
    let r = report(&out);
    assert_eq!(r["encoder"]["kind"], "hashed");

    // The hashed embedder is deterministic: a second run gives the same bytes.
    let out2 = tmp.path().join("side2");
    run_ok_stderr(&[
        "embed",
        "--text-col",
        "caption",
        "--sidecar",
        "--f16",
        &fixture(CAPTIONS),
        "-o",
        out2.to_str().unwrap(),
        "-q",
    ]);
    for s in ["captions-00000.npy", "captions-00001.npy"] {
        assert_eq!(
            std::fs::read(out.join(s)).unwrap(),
            std::fs::read(out2.join(s)).unwrap()
        );
    }
}

#[test]
fn embed_nulls_are_errors_or_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let input = fixture("text/with_nulls.parquet");
    let err = fails(&["embed", "--text-col", "caption", &input, "-o", out.to_str().unwrap()]);
    assert!(
        err.contains("with_nulls.parquet") && err.contains("row 3") && err.contains("--skip-nulls"),
        "{err}"
    );
    let out2 = tmp.path().join("o2");
    run_ok_stderr(&[
        "embed",
        "--text-col",
        "caption",
        &input,
        "-o",
        out2.to_str().unwrap(),
        "--skip-nulls",
        "-q",
    ]);
    let (_, b) = read(&out2.join("with_nulls.parquet"));
    let (_, _, valid) = fsl_rows(&b, "embedding");
    let nulls: Vec<usize> = (0..valid.len()).filter(|&i| !valid[i]).collect();
    assert_eq!(nulls, [3, 11]);
    assert_eq!(report(&out2)["n_null"], 2);
}

#[test]
fn filter_with_a_model_encodes_each_row_once_and_reuses_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let model = minilm();
    let mut kept = Vec::new();
    for run in 0..2 {
        let out = tmp.path().join(format!("out{run}"));
        run_ok_stderr(&[
            "filter",
            "--keep",
            "0.5",
            "--model",
            &model,
            "--text-col",
            "caption",
            "--cache",
            cache.to_str().unwrap(),
            "--k",
            "6",
            &fixture(CAPTIONS),
            "-o",
            out.to_str().unwrap(),
            "--scores-only",
            "-q",
        ]);
        let r = report(&out);
        assert_eq!(r["n_rows"], 300);
        assert_eq!(r["n_kept"], 150);
        assert_eq!(r["dim"], 384);
        let src = r["embedding_source"].as_str().unwrap();
        assert!(src.contains("onnx model") && src.contains("caption"), "{src}");
        let (_, b) = read(&out.join("scores.parquet"));
        let k = b.column_by_name("kept").unwrap().as_boolean().clone();
        kept.push((0..k.len()).map(|i| k.value(i)).collect::<Vec<bool>>());
    }
    assert_eq!(kept[0], kept[1], "cached embeddings give the same selection");
    let mut files = listing(&cache);
    files.retain(|f| f.ends_with(".npy"));
    assert_eq!(files.len(), 2, "one cache entry per shard: {files:?}");
}

#[test]
fn filter_with_the_hashed_embedder_needs_no_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    run_ok_stderr(&[
        "filter",
        "--keep",
        "0.3",
        "--text-col",
        "caption",
        &fixture(CAPTIONS),
        "-o",
        out.to_str().unwrap(),
        "-q",
    ]);
    let r = report(&out);
    assert_eq!(r["n_kept"], 90);
    assert!(r["embedding_source"].as_str().unwrap().contains("hashed"));
    // no private cache left behind in the output
    assert_eq!(
        listing(&out),
        [
            "_dprune_report.json",
            "_dprune_report.png",
            "captions-00000.parquet",
            "captions-00001.parquet"
        ]
    );
}

#[test]
fn bad_models_and_tokenizers_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap();
    let caps = fixture(CAPTIONS);

    let err = fails(&[
        "embed",
        "--model",
        "nope/missing.onnx",
        "--text-col",
        "caption",
        &caps,
        "-o",
        o,
    ]);
    assert!(
        err.contains("missing.onnx") && err.contains("no such model file"),
        "{err}"
    );

    // Not ONNX: a text file with a tokenizer beside it.
    let fake = tmp.path().join("fake.onnx");
    std::fs::write(&fake, b"this is not a model").unwrap();
    std::fs::copy(models().join("tokenizer.json"), tmp.path().join("tokenizer.json")).unwrap();
    let err = fails(&[
        "embed",
        "--model",
        fake.to_str().unwrap(),
        "--text-col",
        "caption",
        &caps,
        "-o",
        o,
    ]);
    assert!(
        err.contains("fake.onnx") && err.contains("cannot load as an ONNX model"),
        "{err}"
    );

    // An image model: its input cannot be fed by the text encoder.
    let vit = models().join("toyvit-mnist.onnx").display().to_string();
    let err = fails(&["embed", "--model", &vit, "--text-col", "caption", &caps, "-o", o]);
    assert!(err.contains("pixel_values") && err.contains("cannot feed"), "{err}");

    // Tokenizer missing.
    let err = fails(&[
        "embed",
        "--model",
        &minilm(),
        "--tokenizer",
        "nope/tokenizer.json",
        "--text-col",
        "caption",
        &caps,
        "-o",
        o,
    ]);
    assert!(
        err.contains("nope/tokenizer.json") && err.contains("not found"),
        "{err}"
    );
    let lonely = tmp.path().join("lonely");
    std::fs::create_dir(&lonely).unwrap();
    std::fs::write(lonely.join("m.onnx"), b"x").unwrap();
    let err = fails(&[
        "embed",
        "--model",
        lonely.join("m.onnx").to_str().unwrap(),
        "--text-col",
        "caption",
        &caps,
        "-o",
        o,
    ]);
    assert!(err.contains("tokenizer.json") && err.contains("--tokenizer"), "{err}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn bad_text_columns_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("o").display().to_string();
    let err = fails(&["embed", "--text-col", "title", &fixture(CAPTIONS), "-o", &o]);
    assert!(
        err.contains("no text column `title`") && err.contains("caption (Utf8)"),
        "{err}"
    );
    let err = fails(&[
        "embed",
        "--text-col",
        "caption",
        &fixture("text/int_caption.parquet"),
        "-o",
        &o,
    ]);
    assert!(
        err.contains("int_caption.parquet") && err.contains("Int64") && err.contains("string"),
        "{err}"
    );
    let err = fails(&[
        "filter",
        "--text-col",
        "caption",
        &fixture("text/int_caption.parquet"),
        "-o",
        &o,
    ]);
    assert!(err.contains("expected a string column"), "{err}");
    // filter: null texts follow --drop-invalid like null embeddings
    let err = fails(&[
        "filter",
        "--text-col",
        "caption",
        &fixture("text/with_nulls.parquet"),
        "-o",
        &o,
    ]);
    assert!(err.contains("row 3") && err.contains("null"), "{err}");
    run_ok_stderr(&[
        "filter",
        "--keep",
        "0.5",
        "--k",
        "2",
        "--text-col",
        "caption",
        "--drop-invalid",
        &fixture("text/with_nulls.parquet"),
        "-o",
        &o,
        "-q",
    ]);
    let r = report(Path::new(&o));
    assert_eq!(r["invalid"]["null"], 2);
    assert_eq!(r["n_kept"], 9);
}

#[test]
fn centroids_of_another_dimension_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("c.npy");
    dprune::io::npy::write_matrix(&c, &[0.5; 4 * 32], 4, 32).unwrap();
    let o = tmp.path().join("o").display().to_string();
    let err = fails(&[
        "filter",
        "--model",
        &minilm(),
        "--text-col",
        "caption",
        "--centroids",
        c.to_str().unwrap(),
        &fixture(CAPTIONS),
        "-o",
        &o,
    ]);
    assert!(
        err.contains("c.npy") && err.contains("32") && err.contains("384"),
        "{err}"
    );
}

#[test]
fn model_without_a_column_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("o").display().to_string();
    let err = fails(&["filter", "--model", &minilm(), &fixture(CAPTIONS), "-o", &o]);
    assert!(err.contains("--model needs --text-col"), "{err}");
}

#[test]
fn image_preprocessing_matches_the_raw_pixels() {
    // 28x28 greyscale PNGs need no resize: (pixel / 255 - mean) / std exactly.
    let (_, b) = read(Path::new(&mnist()));
    let png = b.column_by_name("image_png").unwrap().as_binary::<i32>().clone();
    let (d, pixels, _) = fsl_rows(&b, "pixels");
    assert_eq!(d, 784);
    let pre = dprune::embed::ImagePreprocess {
        size: 28,
        channels: 1,
        mean: [0.1307; 3],
        std: [0.3081; 3],
    };
    let mut out = vec![0f32; 784];
    for i in [0usize, 1, 500, 999] {
        let img = image::load_from_memory(png.value(i)).unwrap();
        pre.apply(&img, &mut out);
        let want: Vec<f32> = pixels[i * 784..(i + 1) * 784]
            .iter()
            .map(|p| (p / 255.0 - 0.1307) / 0.3081)
            .collect();
        assert!(max_abs_diff(&out, &want) < 1e-6, "digit {i}");
    }
}

#[test]
fn image_encoder_embeds_png_bytes_usefully() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let vit = models().join("toyvit-mnist.onnx").display().to_string();
    run_ok_stderr(&[
        "embed",
        "--model",
        &vit,
        "--image-col",
        "image_png",
        "--mean",
        "0.1307",
        "--std",
        "0.3081",
        &mnist(),
        "-o",
        out.to_str().unwrap(),
        "--threads",
        "2",
        "-q",
    ]);
    let (_, b) = read(&out.join("mnist-test-1k.parquet"));
    let (d, emb, valid) = fsl_rows(&b, "embedding");
    assert_eq!((d, b.num_rows()), (64, 1000));
    assert!(valid.iter().all(|&v| v));
    let r = report(&out);
    let desc = r["encoder"]["output"].as_str().unwrap();
    assert!(desc.contains("pooled") && desc.contains("28x28x1"), "{desc}");
    // The embeddings carry the digit: leave-one-out 1-NN accuracy on the
    // 1,000 test digits (the toy model's head gets 0.895).
    let labels = b
        .column_by_name("label")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int32Type>()
        .values()
        .to_vec();
    let mut hits = 0;
    for i in 0..1000 {
        let q = &emb[i * 64..(i + 1) * 64];
        let best = (0..1000)
            .filter(|&j| j != i)
            .max_by(|&a, &c| {
                let da: f32 = q.iter().zip(&emb[a * 64..(a + 1) * 64]).map(|(x, y)| x * y).sum();
                let dc: f32 = q.iter().zip(&emb[c * 64..(c + 1) * 64]).map(|(x, y)| x * y).sum();
                da.total_cmp(&dc)
            })
            .unwrap();
        hits += (labels[best] == labels[i]) as usize;
    }
    assert!(hits > 800, "1-NN accuracy {hits}/1000");
}

#[test]
fn image_paths_and_bad_images() {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};

    let tmp = tempfile::tempdir().unwrap();
    let img = image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 9 + y * 3) % 256) as u8]));
    img.save(tmp.path().join("good.png")).unwrap();
    std::fs::write(tmp.path().join("bad.png"), b"not a png").unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("path", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![0, 1, 2])),
            Arc::new(StringArray::from(vec![
                Some("good.png"),
                Some("bad.png"),
                Some("good.png"),
            ])),
        ],
    )
    .unwrap();
    let shard = tmp.path().join("paths.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&shard).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let vit = models().join("toyvit-mnist.onnx").display().to_string();
    let o1 = tmp.path().join("o1").display().to_string();
    let err = fails(&[
        "embed",
        "--model",
        &vit,
        "--image-col",
        "path",
        shard.to_str().unwrap(),
        "-o",
        &o1,
    ]);
    assert!(
        err.contains("paths.parquet") && err.contains("row 1") && err.contains("--skip-bad"),
        "{err}"
    );
    let o2 = tmp.path().join("o2");
    run_ok_stderr(&[
        "embed",
        "--model",
        &vit,
        "--image-col",
        "path",
        "--skip-bad",
        shard.to_str().unwrap(),
        "-o",
        o2.to_str().unwrap(),
        "-q",
    ]);
    let (_, b) = read(&o2.join("paths.parquet"));
    let (_, emb, valid) = fsl_rows(&b, "embedding");
    assert_eq!(valid, [true, false, true]);
    assert!(
        max_abs_diff(&emb[..64], &emb[128..]) < 1e-6,
        "same image, same embedding"
    );
    assert_eq!(report(&o2)["n_null"], 1);

    // A text model on an image column, an image column without a model.
    let err = fails(&["embed", "--image-col", "path", shard.to_str().unwrap(), "-o", &o1]);
    assert!(err.contains("--image-col") && err.contains("needs --model"), "{err}");
    let err = fails(&[
        "embed",
        "--model",
        &minilm(),
        "--image-col",
        "path",
        shard.to_str().unwrap(),
        "-o",
        &o1,
    ]);
    assert!(err.contains("input_ids") && err.contains("image encoder"), "{err}");

    // `filter` encodes images on the fly with the same options: --skip-bad excludes and
    // counts the undecodable row.
    let o3 = tmp.path().join("o3");
    run_ok_stderr(&[
        "filter",
        "--model",
        &vit,
        "--image-col",
        "path",
        "--skip-bad",
        "--mean",
        "0.1307",
        "--std",
        "0.3081",
        "--k",
        "1",
        "--keep-n",
        "1",
        shard.to_str().unwrap(),
        "-o",
        o3.to_str().unwrap(),
        "-q",
    ]);
    let r = report(&o3);
    assert_eq!(
        (r["invalid"]["null"].as_u64(), r["n_eligible"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(r["n_kept"], 1);
    let err = fails(&["filter", "--mean", "0.5", shard.to_str().unwrap(), "-o", &o1]);
    assert!(err.contains("--mean needs --image-col"), "{err}");
}

#[test]
fn device_and_runtime_choices_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("o").display().to_string();
    let caps = fixture(CAPTIONS);
    let model = minilm();
    let base = ["embed", "--model", &model, "--text-col", "caption", &caps, "-o", &o];
    if !cfg!(feature = "cuda") {
        let mut args = base.to_vec();
        args.extend(["--device", "cuda:1"]);
        let err = fails(&args);
        assert!(
            err.contains("without CUDA support") && err.contains("--features cuda"),
            "{err}"
        );
    }
    // A runtime that is not there: the message says how to install one.
    let out = dprune()
        .args(base)
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.32.0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ORT_DYLIB_PATH") && err.contains("pip install onnxruntime") && !err.contains("panicked"),
        "{err}"
    );
    // auto says which provider it chose and why.
    let mut args = base.to_vec();
    args.extend(["--device", "auto"]);
    let err = run_ok_stderr(&args);
    assert!(err.contains("device: CPUExecutionProvider ("), "{err}");
}
