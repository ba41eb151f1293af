//! The encoder flags of `annotate` and `demos` (the names and meaning of
//! `filter`'s): the column to embed on the fly and how, turned into an
//! [`EncoderSpec`].

use std::path::PathBuf;

use clap::Args;
use dprune::embed::{Device, EncoderSpec, InputKind};

use crate::cli::embed::triple;

/// Embedding on the fly (`--model`, `--text-col`, ...).
#[derive(Debug, Args)]
#[command(next_help_heading = "Embedding on the fly (instead of an embedding column)")]
pub struct EncoderFlags {
    /// Embed this text column on the fly (with --model, or the built-in hashed embedder).
    #[arg(long, value_name = "NAME", conflicts_with = "image_col")]
    pub text_col: Option<String>,

    /// Embed this image column on the fly (encoded bytes or file paths; needs --model).
    #[arg(long, value_name = "NAME")]
    pub image_col: Option<String>,

    /// ONNX encoder for --text-col / --image-col [default: the built-in hashed word/character
    /// n-gram embedder, text only].
    #[arg(long, value_name = "FILE.onnx")]
    pub model: Option<PathBuf>,

    /// HF tokenizer.json of the model [default: tokenizer.json next to the model].
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    /// Where the model runs: auto (CUDA if available, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: String,

    /// Keep encoded embeddings here so later runs reuse them [default: a temporary folder
    /// removed at the end].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Texts per model call.
    #[arg(long, default_value_t = dprune::embed::DEFAULT_BATCH_SIZE, value_name = "N")]
    pub batch_size: usize,

    /// Tokens kept per text (longer texts are truncated).
    #[arg(long, default_value_t = dprune::embed::DEFAULT_MAX_LENGTH, value_name = "TOKENS")]
    pub max_length: usize,

    /// --image-col: input size when the model's is dynamic (shortest side resized, centre crop).
    #[arg(long, default_value_t = dprune::embed::DEFAULT_IMAGE_SIZE, value_name = "PIXELS")]
    pub image_size: u32,

    /// --image-col: per-channel mean after scaling to [0, 1], one value or R,G,B [default: CLIP's].
    #[arg(long, value_name = "M")]
    pub mean: Option<String>,

    /// --image-col: per-channel standard deviation, one value or R,G,B [default: CLIP's].
    #[arg(long, value_name = "S")]
    pub std: Option<String>,

    /// --image-col: rows whose image cannot be decoded are left out (counted) instead of
    /// stopping the run.
    #[arg(long)]
    pub skip_bad: bool,
}

impl EncoderFlags {
    /// The encoder to run, if a column to embed is given; flags that would
    /// be ignored are errors.
    pub fn spec(&self, threads: Option<usize>) -> anyhow::Result<Option<EncoderSpec>> {
        if self.image_col.is_none() {
            for (flag, set) in [
                ("--mean", self.mean.is_some()),
                ("--std", self.std.is_some()),
                ("--skip-bad", self.skip_bad),
                ("--image-size", self.image_size != dprune::embed::DEFAULT_IMAGE_SIZE),
            ] {
                anyhow::ensure!(!set, "{flag} needs --image-col: it sets how images are decoded");
            }
        }
        let (column, kind) = match (&self.text_col, &self.image_col) {
            (Some(c), _) => (c.clone(), InputKind::Text),
            (None, Some(c)) => (c.clone(), InputKind::Image),
            (None, None) => {
                for (flag, set) in [
                    ("--model", self.model.is_some()),
                    ("--tokenizer", self.tokenizer.is_some()),
                    ("--cache", self.cache.is_some()),
                ] {
                    anyhow::ensure!(!set, "{flag} needs --text-col (or --image-col): the column to embed");
                }
                return Ok(None);
            }
        };
        Ok(Some(EncoderSpec {
            column,
            kind,
            model: self.model.clone(),
            tokenizer: self.tokenizer.clone(),
            device: self.device.parse::<Device>()?,
            batch_size: self.batch_size,
            max_length: self.max_length,
            threads,
            cache: self.cache.clone(),
            image_size: self.image_size,
            mean: triple("--mean", self.mean.as_deref(), dprune::embed::CLIP_MEAN)?,
            std: triple("--std", self.std.as_deref(), dprune::embed::CLIP_STD)?,
            skip_bad: self.skip_bad,
            ..EncoderSpec::default()
        }))
    }
}
