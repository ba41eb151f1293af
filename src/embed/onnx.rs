//! ONNX sentence encoders: HF `tokenizers` + ONNX Runtime (through `ort`).
//!
//! The model's inputs are read from the session: `input_ids` (required),
//! `attention_mask` and `token_type_ids` (optional), int64 or int32; any
//! other input is an error naming it. The output is `sentence_embedding`
//! when the model has it, else `last_hidden_state` (or the first output)
//! with masked mean pooling; rank-2 outputs are used as they are.
//! Texts are truncated to `max_length` tokens, sorted by length inside a
//! window and padded per batch to the longest text of the batch; results
//! come back in input order.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::session::Session;
use ort::value::{Tensor, ValueType};
use serde::{Deserialize, Serialize};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::embed::runtime::{model_err, runtime};
use crate::embed::{Device, Encoder, EncoderInfo, Prepared, l2_normalize, private_pool, sha256_file};
use crate::{Error, Result};

/// Options of [`OnnxTextEncoder::open`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnnxTextParams {
    /// The `.onnx` file.
    pub model: PathBuf,
    /// `tokenizer.json`; `None`: the one next to the model.
    pub tokenizer: Option<PathBuf>,
    /// Where inference runs.
    pub device: Device,
    /// Texts per inference call.
    pub batch_size: usize,
    /// Truncation in tokens.
    pub max_length: usize,
    /// Intra-op threads; `None` lets ONNX Runtime choose (one per core).
    pub threads: Option<usize>,
    /// L2-normalise outputs.
    pub normalize: bool,
    /// Texts sorted by length together (0 or 1: no sorting).
    pub sort_window: usize,
    /// The model output to use; `None` picks one (see the module docs).
    pub output: Option<String>,
}

/// Integer type of the id inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdType {
    I64,
    I32,
}

/// How the model output becomes one vector per text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pooling {
    /// The output is `[batch, dim]` already.
    None,
    /// `[batch, seq, dim]`: mean over positions where the mask is 1.
    MaskedMean,
}

/// One padded batch, ready for the model.
#[derive(Debug, Default)]
pub(crate) struct PaddedBatch {
    /// Window positions of the texts, in batch order.
    rows: Vec<usize>,
    /// Padded sequence length.
    seq: usize,
    ids: Vec<i64>,
    mask: Vec<i64>,
    types: Vec<i64>,
}

/// An ONNX text encoder (see the module docs).
pub struct OnnxTextEncoder {
    session: Mutex<Session>,
    pool: Arc<rayon::ThreadPool>,
    tokenizer: Tokenizer,
    pad_id: i64,
    id_type: IdType,
    input_ids: String,
    attention_mask: Option<String>,
    token_type_ids: Option<String>,
    output: String,
    pooling: Pooling,
    batch_size: usize,
    sort_window: usize,
    info: EncoderInfo,
}

impl std::fmt::Debug for OnnxTextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxTextEncoder").field("info", &self.info).finish()
    }
}

impl OnnxTextEncoder {
    /// Loads the tokenizer and the model, picks the device, checks the
    /// model's inputs and outputs and runs it once to learn the dimension.
    pub fn open(p: &OnnxTextParams) -> Result<Self> {
        if p.batch_size == 0 {
            return Err(Error::param("--batch-size", "must be at least 1"));
        }
        if !p.model.is_file() {
            return Err(model_err(&p.model, "no such model file"));
        }
        let tok_path = match &p.tokenizer {
            Some(t) => t.clone(),
            None => p.model.parent().unwrap_or(Path::new(".")).join("tokenizer.json"),
        };
        if !tok_path.is_file() {
            return Err(Error::param(
                "--tokenizer",
                format!(
                    "{} not found; the model needs its HF tokenizer.json (pass --tokenizer FILE{})",
                    tok_path.display(),
                    if p.tokenizer.is_none() {
                        ", default: tokenizer.json next to the model"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| {
            Error::param(
                "--tokenizer",
                format!("{}: not a HF tokenizer.json: {e}", tok_path.display()),
            )
        })?;
        let pad_id = tokenizer.get_padding().map_or(0, |pp| pp.pad_id as i64);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: p.max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| Error::param("--max-length", format!("{}: {e}", p.max_length)))?;
        tokenizer.with_padding(None);

        let rt = runtime()?;
        let (session, provider, provider_reason) = build_session(&rt.env, p)?;

        // Inputs.
        let mut input_ids = None;
        let mut attention_mask = None;
        let mut token_type_ids = None;
        let mut unknown = Vec::new();
        let mut id_type = IdType::I64;
        for input in session.inputs() {
            let name = input.name().to_string();
            let ty = match input.dtype() {
                ValueType::Tensor { ty, .. } => Some(*ty),
                _ => None,
            };
            let this_type = match ty {
                Some(ort::value::TensorElementType::Int64) => Some(IdType::I64),
                Some(ort::value::TensorElementType::Int32) => Some(IdType::I32),
                _ => None,
            };
            let slot = match name.as_str() {
                "input_ids" => &mut input_ids,
                "attention_mask" => &mut attention_mask,
                "token_type_ids" => &mut token_type_ids,
                _ => {
                    unknown.push(format!("`{name}` ({})", input.dtype()));
                    continue;
                }
            };
            let Some(t) = this_type else {
                return Err(model_err(
                    &p.model,
                    format!(
                        "input `{name}` has type {}, expected an int64 or int32 tensor",
                        input.dtype()
                    ),
                ));
            };
            id_type = t;
            *slot = Some(name);
        }
        if !unknown.is_empty() || input_ids.is_none() {
            return Err(model_err(
                &p.model,
                format!(
                    "the text encoder cannot feed model input(s) {}; it feeds input_ids (required), \
                     attention_mask and token_type_ids{}",
                    if unknown.is_empty() {
                        "(none named input_ids)".to_string()
                    } else {
                        unknown.join(", ")
                    },
                    if unknown.iter().any(|u| u.contains("pixel")) {
                        " (this looks like an image model)"
                    } else {
                        ""
                    }
                ),
            ));
        }

        // Output.
        let outs: Vec<(String, usize)> = session
            .outputs()
            .iter()
            .map(|o| {
                let rank = match o.dtype() {
                    ValueType::Tensor { shape, .. } => shape.len(),
                    _ => 0,
                };
                (o.name().to_string(), rank)
            })
            .collect();
        if let Some(want) = &p.output
            && !outs.iter().any(|o| &o.0 == want)
        {
            let names: Vec<&str> = outs.iter().map(|o| o.0.as_str()).collect();
            return Err(Error::param(
                "--model-output",
                format!("{}: no output `{want}`; it has {}", p.model.display(), names.join(", ")),
            ));
        }
        let pick = outs
            .iter()
            .find(|o| Some(&o.0) == p.output.as_ref())
            .or_else(|| outs.iter().find(|o| o.0 == "sentence_embedding"))
            .or_else(|| outs.iter().find(|o| o.0 == "last_hidden_state"))
            .or_else(|| outs.first())
            .cloned()
            .ok_or_else(|| model_err(&p.model, "the model has no outputs"))?;
        let pooling = match pick.1 {
            2 => Pooling::None,
            3 => Pooling::MaskedMean,
            r => {
                return Err(model_err(
                    &p.model,
                    format!(
                        "output `{}` has rank {r}; expected [batch, dim] or [batch, seq, dim]",
                        pick.0
                    ),
                ));
            }
        };
        let output_desc = match pooling {
            Pooling::None => pick.0.clone(),
            Pooling::MaskedMean => format!("{} + masked mean pooling", pick.0),
        };

        let model_sha = sha256_file(&p.model)?;
        let tok_sha = sha256_file(&tok_path)?;
        let mut enc = OnnxTextEncoder {
            session: Mutex::new(session),
            pool: private_pool(p.threads)?,
            tokenizer,
            pad_id,
            id_type,
            input_ids: input_ids.expect("checked above"),
            attention_mask,
            token_type_ids,
            output: pick.0,
            pooling,
            batch_size: p.batch_size,
            sort_window: p.sort_window,
            info: EncoderInfo {
                kind: "onnx".into(),
                input: crate::embed::InputKind::Text,
                model: Some(p.model.display().to_string()),
                model_sha256: Some(model_sha),
                tokenizer: Some(tok_path.display().to_string()),
                tokenizer_sha256: Some(tok_sha),
                runtime: Some(rt.path.display().to_string()),
                provider,
                provider_reason,
                output: output_desc,
                dim: 0,
                batch_size: p.batch_size,
                max_length: p.max_length,
                normalize: p.normalize,
                threads: p.threads,
            },
        };
        // One probe run: checks that the model runs and gives the dimension.
        let probe = enc.prepare(&[Some("dprune")])?;
        let batch = probe
            .batches
            .first()
            .ok_or_else(|| Error::Internal("probe produced no batch".into()))?;
        let (_, dim) = enc.run_batch(batch)?;
        if dim == 0 {
            return Err(model_err(&p.model, "the model output has dimension 0"));
        }
        enc.info.dim = dim;
        Ok(enc)
    }

    /// Tokenises one window: sorted by length, padded per batch.
    fn batches(&self, texts: &[Option<&str>], base: usize, out: &mut Vec<PaddedBatch>) -> Result<()> {
        let live: Vec<usize> = (0..texts.len()).filter(|&i| texts[i].is_some()).collect();
        if live.is_empty() {
            return Ok(());
        }
        let inputs: Vec<&str> = live.iter().map(|&i| texts[i].expect("live")).collect();
        let encs = self
            .pool
            .install(|| self.tokenizer.encode_batch(inputs, true))
            .map_err(|e| Error::param("--tokenizer", format!("tokenising failed: {e}")))?;
        let mut order: Vec<usize> = (0..encs.len()).collect();
        if self.sort_window > 1 {
            order.sort_by_key(|&j| encs[j].get_ids().len());
        }
        for chunk in order.chunks(self.batch_size) {
            let seq = chunk.iter().map(|&j| encs[j].get_ids().len()).max().unwrap_or(0).max(1);
            let n = chunk.len();
            let mut b = PaddedBatch {
                rows: chunk.iter().map(|&j| base + live[j]).collect(),
                seq,
                ids: vec![self.pad_id; n * seq],
                mask: vec![0; n * seq],
                types: vec![0; n * seq],
            };
            for (r, &j) in chunk.iter().enumerate() {
                let e = &encs[j];
                let row = r * seq;
                for (t, ((&id, &m), &ty)) in e
                    .get_ids()
                    .iter()
                    .zip(e.get_attention_mask())
                    .zip(e.get_type_ids())
                    .enumerate()
                {
                    b.ids[row + t] = id as i64;
                    b.mask[row + t] = m as i64;
                    b.types[row + t] = ty as i64;
                }
            }
            out.push(b);
        }
        Ok(())
    }

    /// Runs one batch: `(rows × dim values in batch order, dim)`.
    fn run_batch(&self, b: &PaddedBatch) -> Result<(Vec<f32>, usize)> {
        let n = b.rows.len();
        let shape = [n, b.seq];
        let fail = |e: ort::Error| Error::param("--model", format!("inference failed: {e}"));
        let tensor = |v: &[i64]| -> Result<ort::value::DynValue> {
            Ok(match self.id_type {
                IdType::I64 => Tensor::from_array((shape, v.to_vec())).map_err(fail)?.into_dyn(),
                IdType::I32 => Tensor::from_array((shape, v.iter().map(|&x| x as i32).collect::<Vec<i32>>()))
                    .map_err(fail)?
                    .into_dyn(),
            })
        };
        let mut feed: Vec<(String, ort::value::DynValue)> = vec![(self.input_ids.clone(), tensor(&b.ids)?)];
        if let Some(m) = &self.attention_mask {
            feed.push((m.clone(), tensor(&b.mask)?));
        }
        if let Some(t) = &self.token_type_ids {
            feed.push((t.clone(), tensor(&b.types)?));
        }
        let mut session = self
            .session
            .lock()
            .map_err(|_| Error::Internal("session lock poisoned".into()))?;
        let outputs = session.run(feed).map_err(fail)?;
        let (oshape, data) = outputs[self.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| Error::param("--model", format!("output `{}` is not float32: {e}", self.output)))?;
        let dims: Vec<usize> = oshape.iter().map(|&d| d.max(0) as usize).collect();
        let mut out = match (&self.pooling, dims.as_slice()) {
            (Pooling::None, [bn, d]) if *bn == n => data[..n * d].to_vec(),
            (Pooling::MaskedMean, [bn, s, d]) if *bn == n && *s == b.seq => {
                let d = *d;
                let s = *s;
                let mut v = vec![0f32; n * d];
                v.chunks_mut(d).enumerate().for_each(|(r, acc)| {
                    let mut count = 0f32;
                    for t in 0..s {
                        if b.mask[r * s + t] != 0 {
                            count += 1.0;
                            let h = &data[(r * s + t) * d..(r * s + t + 1) * d];
                            acc.iter_mut().zip(h).for_each(|(a, x)| *a += x);
                        }
                    }
                    let inv = 1.0 / count.max(1e-9);
                    acc.iter_mut().for_each(|a| *a *= inv);
                });
                v
            }
            _ => {
                return Err(Error::Shape {
                    op: "model output",
                    expected: match self.pooling {
                        Pooling::None => format!("[{n}, dim]"),
                        Pooling::MaskedMean => format!("[{n}, {}, dim]", b.seq),
                    },
                    got: format!("{dims:?}"),
                });
            }
        };
        let dim = *dims.last().unwrap_or(&0);
        if self.info.normalize && dim > 0 {
            out.chunks_mut(dim).for_each(l2_normalize);
        }
        Ok((out, dim))
    }
}

impl Encoder for OnnxTextEncoder {
    fn info(&self) -> &EncoderInfo {
        &self.info
    }

    fn prepare(&self, texts: &[Option<&str>]) -> Result<Prepared> {
        let mut batches = Vec::new();
        let window = self.sort_window.max(self.batch_size).max(1);
        for (w, chunk) in texts.chunks(window).enumerate() {
            self.batches(chunk, w * window, &mut batches)?;
        }
        Ok(Prepared {
            rows: texts.len(),
            null: texts.iter().map(Option::is_none).collect(),
            batches,
            ready: None,
            pixels: None,
        })
    }

    fn infer(&self, prepared: Prepared) -> Result<Vec<f32>> {
        let d = self.info.dim;
        let mut out = vec![0f32; prepared.rows * d];
        for b in &prepared.batches {
            let (v, dim) = self.run_batch(b)?;
            if dim != d {
                return Err(Error::Dimension {
                    path: PathBuf::from(self.info.model.clone().unwrap_or_default()),
                    row: None,
                    expected: d,
                    found: dim,
                });
            }
            for (i, &r) in b.rows.iter().enumerate() {
                out[r * d..(r + 1) * d].copy_from_slice(&v[i * d..(i + 1) * d]);
            }
        }
        Ok(out)
    }
}

/// Opens the session on the requested device: `(session, provider, why)`.
pub(super) fn build_session(
    env: &ort::environment::Environment,
    p: &OnnxTextParams,
) -> Result<(Session, String, String)> {
    let cpu = |reason: String| -> Result<(Session, String, String)> {
        let s = open_cpu(env, &p.model, p.threads).map_err(|e| load_err(&p.model, e))?;
        Ok((s, "CPUExecutionProvider".into(), reason))
    };
    match p.device {
        Device::Cpu => cpu("--device cpu".into()),
        #[cfg(not(feature = "cuda"))]
        Device::Auto => cpu("this dprune was built without the `cuda` feature".into()),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(Error::param(
            "--device",
            "this dprune was built without CUDA support; rebuild with `cargo build --release --features cuda` \
             and install onnxruntime-gpu, or use --device cpu",
        )),
        #[cfg(feature = "cuda")]
        Device::Auto | Device::Cuda(_) => {
            let id = match p.device {
                Device::Cuda(n) => n,
                _ => 0,
            };
            match cuda::open(env, p, id) {
                Ok(s) => Ok((s, "CUDAExecutionProvider".into(), format!("CUDA device {id}"))),
                Err(why) if p.device == Device::Auto => cpu(format!("CUDA not usable ({why}); using CPU")),
                Err(why) => Err(Error::param("--device", format!("{}: {why}", p.device))),
            }
        }
    }
}

fn load_err(model: &Path, e: ort::Error) -> Error {
    model_err(model, format!("cannot load as an ONNX model: {e}"))
}

fn open_cpu(env: &ort::environment::Environment, model: &Path, threads: Option<usize>) -> ort::Result<Session> {
    let mut b = Session::builder(env)?
        .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)?
        .with_inter_threads(1)?;
    if let Some(t) = threads {
        b = b.with_intra_threads(t)?;
    }
    b.commit_from_file(model)
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The CUDA execution provider: the CUDA and cuDNN libraries of the
    //! `nvidia-*` Python packages are preloaded when present, then the
    //! provider is registered with `error_on_failure` so that a missing GPU
    //! or library is reported instead of silently running on CPU.

    use ort::ep::{self, ExecutionProvider};
    use ort::session::Session;

    use super::OnnxTextParams;

    pub(super) fn open(env: &ort::environment::Environment, p: &OnnxTextParams, id: i32) -> Result<Session, String> {
        if !ep::CUDA::is_available().unwrap_or(false) {
            return Err(
                "the ONNX Runtime library has no CUDA execution provider; `pip install onnxruntime-gpu`".into(),
            );
        }
        preload();
        let go = || -> ort::Result<Session> {
            let mut b = Session::builder(env)?
                .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)?
                .with_execution_providers([ep::CUDA::default().with_device_id(id).build().error_on_failure()])?;
            if let Some(t) = p.threads {
                b = b.with_intra_threads(t)?;
            }
            b.commit_from_file(&p.model)
        };
        go().map_err(|e| e.to_string())
    }

    /// Preloads the CUDA and cuDNN libraries the provider needs from the
    /// `nvidia-*` Python packages (`site-packages/nvidia/*/lib`), when present.
    fn preload() {
        let names: Vec<&str> = ep::cuda::CUDA_DYLIBS
            .iter()
            .chain(ep::cuda::CUDNN_DYLIBS)
            .copied()
            .collect();
        let mut done = std::collections::HashSet::new();
        for sp in super::super::runtime::python_paths() {
            let Ok(rd) = std::fs::read_dir(sp.join("nvidia")) else {
                continue;
            };
            for pkg in rd.filter_map(|e| e.ok()) {
                let lib = pkg.path().join("lib");
                for n in &names {
                    let f = lib.join(n);
                    if !done.contains(n) && f.is_file() && ort::util::preload_dylib(&f).is_ok() {
                        done.insert(*n);
                    }
                }
            }
        }
    }
}
