//! Encoders: turn a text or image column into embeddings, so that every
//! command can start from raw data.
//!
//! * [`OnnxTextEncoder`]: any ONNX sentence encoder (BERT-style inputs
//!   `input_ids`, `attention_mask`, optional `token_type_ids`) with its HF
//!   `tokenizer.json`, run by ONNX Runtime, which is found at run time
//!   ([`runtime`]); nothing is downloaded, ever.
//! * [`OnnxImageEncoder`]: an ONNX image encoder (one `[batch, C, H, W]`
//!   float input) on encoded images or image paths, with CLIP-style
//!   resize, centre crop and normalisation ([`ImagePreprocess`]).
//! * [`HashedTextEncoder`]: a built-in model-free embedder (hashed word and
//!   character n-grams, seeded sparse random projection), the default when
//!   a text column is given without a model.
//! * [`TextSource`]: an [`EmbeddingSource`](crate::io::EmbeddingSource)
//!   that encodes a column of every shard, with an on-disk cache so that a
//!   multi-pass run (`filter`) encodes each row once.
//! * [`run_embed`]: the `dprune embed` job (shards with an added embedding
//!   column, or `.npy` sidecars, plus a report).
//!
//! `ort` is used only inside this module.

mod cache;
mod hashed;
mod job;
mod onnx;
pub mod runtime;
mod source;
pub mod split;
mod vision;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::ArrayRef;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub use hashed::{DEFAULT_HASHED_DIM, HashedParams, HashedTextEncoder};
pub use job::{DEFAULT_OUTPUT_COLUMN, EmbedConfig, EmbedInputReport, EmbedOutput, EmbedReport, run_embed};
pub use onnx::{OnnxTextEncoder, OnnxTextParams};
pub use source::TextSource;
pub use vision::{CLIP_MEAN, CLIP_STD, DEFAULT_IMAGE_SIZE, ImagePreprocess, OnnxImageEncoder, OnnxImageParams};

/// Tokens per text after truncation (sentence-transformers' limit for MiniLM).
pub const DEFAULT_MAX_LENGTH: usize = 256;
/// Texts per inference call.
pub const DEFAULT_BATCH_SIZE: usize = 64;
/// Texts tokenised together and sorted by length before batching (less
/// padding); outputs keep the input order.
pub const DEFAULT_SORT_WINDOW: usize = 1024;

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// CUDA when this build and the runtime support it and a GPU answers, else CPU.
    #[default]
    Auto,
    /// CPU only.
    Cpu,
    /// This CUDA device; an error when it cannot be used.
    Cuda(i32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(0) => f.write_str("cuda"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::param("--device", format!("`{s}`: expected auto, cpu, cuda or cuda:N"));
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                let n: i32 = n.parse().map_err(|_| bad())?;
                if n < 0 {
                    return Err(bad());
                }
                Ok(Device::Cuda(n))
            }
        }
    }
}

/// What an encoder is, for reports and cache keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderInfo {
    /// `onnx` or `hashed`.
    pub kind: String,
    /// What it embeds.
    pub input: InputKind,
    /// The model file (ONNX encoders).
    pub model: Option<String>,
    /// SHA-256 of the model file.
    pub model_sha256: Option<String>,
    /// The tokenizer file.
    pub tokenizer: Option<String>,
    /// SHA-256 of the tokenizer file.
    pub tokenizer_sha256: Option<String>,
    /// The ONNX Runtime library used.
    pub runtime: Option<String>,
    /// Execution provider (`CPUExecutionProvider`, `CUDAExecutionProvider`).
    pub provider: String,
    /// Why this provider was chosen.
    pub provider_reason: String,
    /// The model output used and how it was pooled.
    pub output: String,
    /// Embedding dimension.
    pub dim: usize,
    /// Texts per inference call.
    pub batch_size: usize,
    /// Truncation length in tokens.
    pub max_length: usize,
    /// Whether embeddings are L2-normalised.
    pub normalize: bool,
    /// Intra-op threads (ONNX) or `None` for all cores.
    pub threads: Option<usize>,
}

impl EncoderInfo {
    /// A one-line description ("onnx model m.onnx (sha256 ab12…) on CPUExecutionProvider").
    pub fn describe(&self) -> String {
        match (&self.model, &self.model_sha256) {
            (Some(m), Some(h)) => format!(
                "{} model {m} (sha256 {}, {}, {}-d)",
                self.kind,
                &h[..h.len().min(12)],
                self.provider,
                self.dim
            ),
            _ => format!("{} {} embedder ({}-d)", self.kind, self.input, self.dim),
        }
    }

    /// A string that changes whenever the embeddings would (cache keys).
    pub fn identity(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{}|{}",
            self.kind,
            self.input,
            self.model_sha256.as_deref().unwrap_or(""),
            self.tokenizer_sha256.as_deref().unwrap_or(""),
            self.output,
            self.dim,
            self.max_length,
            self.normalize
        )
    }
}

/// Texts prepared for inference (tokenised and batched, or, for encoders
/// without a model, already embedded). Made by [`Encoder::prepare`],
/// consumed by [`Encoder::infer`]; preparing the next window on another
/// thread overlaps it with inference.
#[derive(Debug, Default)]
pub struct Prepared {
    rows: usize,
    null: Vec<bool>,
    batches: Vec<onnx::PaddedBatch>,
    ready: Option<Vec<f32>>,
    pixels: Option<Vec<f32>>,
}

impl Prepared {
    /// Texts in the window.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Per text: it was null (its embedding is all zeros).
    pub fn null(&self) -> &[bool] {
        &self.null
    }
}

/// An embedder of texts or images. `prepare` may run on any thread,
/// concurrently with `infer` of an earlier window.
pub trait Encoder: Send + Sync {
    /// What the encoder is.
    fn info(&self) -> &EncoderInfo;

    /// Tokenises (or fully embeds) a window of texts; `None` is a null text.
    fn prepare(&self, texts: &[Option<&str>]) -> Result<Prepared>;

    /// Prepares one Arrow column holding rows `first_row..` of `shard`
    /// (for messages). The default reads strings and calls [`Self::prepare`];
    /// image encoders decode bytes or files.
    fn prepare_column(&self, col: &ArrayRef, shard: &Path, first_row: u64) -> Result<Prepared> {
        let _ = (shard, first_row);
        let texts = source::texts_of(col)?;
        let refs: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
        self.prepare(&refs)
    }

    /// Runs the model: `rows × dim` values in input order (null texts give zeros).
    fn infer(&self, prepared: Prepared) -> Result<Vec<f32>>;

    /// `prepare` then `infer`.
    fn encode(&self, texts: &[Option<&str>]) -> Result<Vec<f32>> {
        let p = self.prepare(texts)?;
        self.infer(p)
    }
}

/// What is embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// A string column.
    #[default]
    Text,
    /// A column of encoded images (bytes) or image file paths.
    Image,
}

impl fmt::Display for InputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InputKind::Text => "text",
            InputKind::Image => "image",
        })
    }
}

/// Which encoder to build and how to run it (the `--model`, `--text-col`,
/// `--tokenizer`, `--device`, ... flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncoderSpec {
    /// The column to embed.
    pub column: String,
    /// Text or image.
    pub kind: InputKind,
    /// ONNX model; `None` selects the built-in [`HashedTextEncoder`].
    pub model: Option<PathBuf>,
    /// `tokenizer.json`; defaults to the one next to the model.
    pub tokenizer: Option<PathBuf>,
    /// Where inference runs.
    pub device: Device,
    /// Texts per inference call; defaults to [`DEFAULT_BATCH_SIZE`].
    pub batch_size: usize,
    /// Truncation in tokens; defaults to [`DEFAULT_MAX_LENGTH`].
    pub max_length: usize,
    /// Intra-op threads [default: all cores].
    pub threads: Option<usize>,
    /// L2-normalise the embeddings.
    pub normalize: bool,
    /// Folder of cached embeddings (kept between runs); `None` uses a
    /// private temporary folder removed at the end of the run.
    pub cache: Option<PathBuf>,
    /// Texts sorted by length together before batching (0 or 1: keep the
    /// input order); defaults to [`DEFAULT_SORT_WINDOW`].
    pub sort_window: usize,
    /// The model output to use [default: `sentence_embedding` if present, else
    /// `last_hidden_state` with masked mean pooling].
    pub model_output: Option<String>,
    /// Options of the built-in hashed embedder.
    pub hashed: HashedParams,
    /// Images: size when the model's input size is dynamic.
    pub image_size: u32,
    /// Images: per-channel mean (RGB, or channel 0 for greyscale models).
    pub mean: [f32; 3],
    /// Images: per-channel standard deviation.
    pub std: [f32; 3],
    /// Images: undecodable images get a null embedding instead of an error.
    pub skip_bad: bool,
}

impl Default for EncoderSpec {
    fn default() -> Self {
        EncoderSpec {
            column: String::new(),
            kind: InputKind::Text,
            model: None,
            tokenizer: None,
            device: Device::Auto,
            batch_size: DEFAULT_BATCH_SIZE,
            max_length: DEFAULT_MAX_LENGTH,
            threads: None,
            normalize: true,
            cache: None,
            sort_window: DEFAULT_SORT_WINDOW,
            model_output: None,
            hashed: HashedParams::default(),
            image_size: vision::DEFAULT_IMAGE_SIZE,
            mean: vision::CLIP_MEAN,
            std: vision::CLIP_STD,
            skip_bad: false,
        }
    }
}

impl EncoderSpec {
    /// Checks values that do not depend on the data.
    pub fn validate(&self) -> Result<()> {
        if self.column.is_empty() {
            return Err(Error::param("--text-col", "no column given"));
        }
        if self.batch_size == 0 {
            return Err(Error::param("--batch-size", "must be at least 1"));
        }
        if self.max_length < 2 {
            return Err(Error::param(
                "--max-length",
                format!("{}: must be at least 2 (room for the special tokens)", self.max_length),
            ));
        }
        if self.threads == Some(0) {
            return Err(Error::param("--threads", "must be at least 1"));
        }
        if self.kind == InputKind::Image {
            if self.model.is_none() {
                return Err(Error::param(
                    "--image-col",
                    "needs --model: an ONNX image encoder (the built-in embedder is for text)",
                ));
            }
            if self.std.iter().any(|&v| v <= 0.0 || !v.is_finite()) || self.mean.iter().any(|v| !v.is_finite()) {
                return Err(Error::param(
                    "--std",
                    format!(
                        "{:?}: standard deviations must be positive (mean {:?})",
                        self.std, self.mean
                    ),
                ));
            }
            if self.image_size == 0 {
                return Err(Error::param("--image-size", "must be at least 1"));
            }
        }
        if self.model.is_none() && self.tokenizer.is_some() {
            return Err(Error::param("--tokenizer", "only used with --model"));
        }
        self.hashed.validate()
    }

    /// Builds the encoder.
    pub fn build(&self) -> Result<Arc<dyn Encoder>> {
        self.validate()?;
        Ok(match &self.model {
            None => Arc::new(HashedTextEncoder::new(self.hashed.clone(), self.normalize).with_threads(self.threads)?),
            Some(m) if self.kind == InputKind::Image => Arc::new(OnnxImageEncoder::open(&OnnxImageParams {
                model: m.clone(),
                device: self.device,
                batch_size: self.batch_size,
                threads: self.threads,
                normalize: self.normalize,
                image_size: self.image_size,
                mean: self.mean,
                std: self.std,
                skip_bad: self.skip_bad,
            })?),
            Some(m) => Arc::new(OnnxTextEncoder::open(&OnnxTextParams {
                model: m.clone(),
                tokenizer: self.tokenizer.clone(),
                device: self.device,
                batch_size: self.batch_size,
                max_length: self.max_length,
                threads: self.threads,
                normalize: self.normalize,
                sort_window: self.sort_window,
                output: self.model_output.clone(),
            })?),
        })
    }
}

/// A private thread pool for an encoder's data-parallel work (tokenising,
/// decoding). Encoders never use rayon's global pool: their `prepare` and
/// `infer` run inside streaming passes whose global-pool tasks may be
/// blocked waiting for exactly this work.
pub(crate) fn private_pool(threads: Option<usize>) -> Result<Arc<rayon::ThreadPool>> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::ThreadPoolBuilder::new()
        .num_threads(n.max(1))
        .thread_name(|i| format!("dprune-encode-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Internal(format!("starting the encoder thread pool: {e}")))
}

/// L2-normalises `x` in place (left as is when its norm is 0).
pub(crate) fn l2_normalize(x: &mut [f32]) {
    let n = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt();
    if n > 0.0 {
        let inv = (1.0 / n.max(1e-12)) as f32;
        x.iter_mut().for_each(|v| *v *= inv);
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &std::path::Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io("reading", path, e))?;
    Ok(format!("{:x}", h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_parses_and_prints() {
        for (s, d) in [
            ("auto", Device::Auto),
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:2", Device::Cuda(2)),
        ] {
            assert_eq!(s.parse::<Device>().unwrap(), d);
            assert_eq!(d.to_string().parse::<Device>().unwrap(), d);
        }
        for bad in ["", "tpu", "cuda:", "cuda:-1", "cuda:x"] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }

    #[test]
    fn normalize_handles_zero() {
        let mut z = [0.0f32; 3];
        l2_normalize(&mut z);
        assert_eq!(z, [0.0; 3]);
        let mut x = [3.0f32, 4.0];
        l2_normalize(&mut x);
        assert!((x[0] - 0.6).abs() < 1e-7 && (x[1] - 0.8).abs() < 1e-7);
    }
}
