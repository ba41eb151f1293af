//! `dprune embed`: flags → [`EmbedConfig`] → [`run_embed`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args};
use dprune::embed::{
    DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH, Device, EmbedConfig, EmbedOutput, EncoderSpec, HashedParams, InputKind,
    run_embed,
};
use dprune::pipeline::{Pass, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const EXAMPLES: &str = "\
Examples:
  # add a 384-d `embedding` column from an ONNX sentence encoder (tokenizer.json next to it)
  dprune embed --model minilm.onnx --text-col caption 'shards/*.parquet' -o embedded/

  # LAION-style .npy sidecars instead (one <shard>.npy per shard), float16
  dprune embed --model minilm.onnx --text-col caption --sidecar --f16 'shards/*.parquet' -o emb/

  # no model: the built-in hashed word/character n-gram embedder
  dprune embed --text-col caption 'shards/*.parquet' -o embedded/

  # images (PNG/JPEG/WebP bytes or file paths) with an ONNX image encoder, CLIP normalisation
  dprune embed --model clip-vision.onnx --image-col jpg 'shards/*.parquet' -o embedded/

ONNX Runtime is found at run time: ORT_DYLIB_PATH, else the library inside an installed
`onnxruntime` (or `onnxruntime-gpu`) Python package, else the system library folders.
Install it with `pip install onnxruntime`.

Outputs: one Parquet file per input (same name, schema and row order, plus the embedding
column) or one .npy per input, and _dprune_report.json (model, sha256, provider, throughput).";

/// Flags of `dprune embed`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES, group(ArgGroup::new("col").args(["text_col", "image_col"]).required(true)))]
pub struct EmbedArgs {
    /// Parquet files or quoted globs ('dir/*.parquet').
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,

    /// Output folder (created if missing; must be empty unless --overwrite).
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,

    /// The text column to embed.
    #[arg(long, value_name = "NAME")]
    text_col: Option<String>,

    /// The image column to embed (encoded bytes or file paths).
    #[arg(long, value_name = "NAME")]
    image_col: Option<String>,

    /// ONNX encoder [default: the built-in hashed word/character n-gram embedder].
    #[arg(long, value_name = "FILE.onnx")]
    model: Option<PathBuf>,

    /// HF tokenizer.json of the model [default: tokenizer.json next to the model].
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,

    /// Where the model runs: auto (CUDA if available, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: String,

    /// Texts per model call.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_name = "N")]
    batch_size: usize,

    /// Tokens kept per text (longer texts are truncated).
    #[arg(long, default_value_t = DEFAULT_MAX_LENGTH, value_name = "TOKENS")]
    max_length: usize,

    /// Texts sorted by length together before batching, to cut padding (0: input order).
    #[arg(long, default_value_t = dprune::embed::DEFAULT_SORT_WINDOW, value_name = "N")]
    sort_window: usize,

    /// Model output to use [default: sentence_embedding if present, else last_hidden_state
    /// with masked mean pooling].
    #[arg(long, value_name = "NAME")]
    model_output: Option<String>,

    /// Keep the model's raw output (no L2 normalisation).
    #[arg(long)]
    no_normalize: bool,

    /// Dimension of the built-in hashed embedder (without --model).
    #[arg(long, default_value_t = dprune::embed::DEFAULT_HASHED_DIM, value_name = "D")]
    hashed_dim: usize,

    /// Seed of the built-in hashed embedder.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Images: input size when the model's is dynamic (shortest side resized, centre crop).
    #[arg(long, default_value_t = dprune::embed::DEFAULT_IMAGE_SIZE, value_name = "PIXELS")]
    image_size: u32,

    /// Images: per-channel mean after scaling to [0, 1], one value or R,G,B [default: CLIP's].
    #[arg(long, value_name = "M")]
    mean: Option<String>,

    /// Images: per-channel standard deviation, one value or R,G,B [default: CLIP's].
    #[arg(long, value_name = "S")]
    std: Option<String>,

    /// Images: undecodable images get a null embedding (counted) instead of an error.
    #[arg(long)]
    skip_bad: bool,

    /// Name of the added column.
    #[arg(long, default_value = dprune::embed::DEFAULT_OUTPUT_COLUMN, value_name = "NAME")]
    output_col: String,

    /// Store float16 instead of float32.
    #[arg(long)]
    f16: bool,

    /// Write only .npy sidecars (<shard>.npy), not shards.
    #[arg(long)]
    sidecar: bool,

    /// Rows with a null text get a null embedding (counted) instead of an error.
    #[arg(long)]
    skip_nulls: bool,

    /// Replace files in a non-empty output folder.
    #[arg(long)]
    overwrite: bool,

    /// Threads for the model and tokenisation [default: all cores].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// No progress bar or summary (warnings and errors still print).
    #[arg(short, long)]
    quiet: bool,
}

impl EmbedArgs {
    fn config(&self) -> anyhow::Result<EmbedConfig> {
        let (column, kind) = match (&self.text_col, &self.image_col) {
            (Some(c), _) => (c.clone(), InputKind::Text),
            (None, Some(c)) => (c.clone(), InputKind::Image),
            (None, None) => anyhow::bail!("give the column to embed with --text-col or --image-col"),
        };
        Ok(EmbedConfig {
            inputs: self.inputs.clone(),
            encoder: EncoderSpec {
                column,
                kind,
                model: self.model.clone(),
                tokenizer: self.tokenizer.clone(),
                device: self.device.parse::<Device>()?,
                batch_size: self.batch_size,
                max_length: self.max_length,
                threads: self.threads,
                normalize: !self.no_normalize,
                cache: None,
                sort_window: self.sort_window,
                model_output: self.model_output.clone(),
                hashed: HashedParams {
                    dim: self.hashed_dim,
                    seed: self.seed,
                },
                image_size: self.image_size,
                mean: triple("--mean", self.mean.as_deref(), dprune::embed::CLIP_MEAN)?,
                std: triple("--std", self.std.as_deref(), dprune::embed::CLIP_STD)?,
                skip_bad: self.skip_bad,
            },
            output: EmbedOutput {
                dir: self.output.clone(),
                overwrite: self.overwrite,
                column: self.output_col.clone(),
                f16: self.f16,
                sidecar: self.sidecar,
            },
            skip_nulls: self.skip_nulls || self.skip_bad,
            batch_rows: None,
        })
    }
}

/// `"v"` or `"r,g,b"` as three values (one value is repeated).
pub(crate) fn triple(flag: &str, v: Option<&str>, default: [f32; 3]) -> anyhow::Result<[f32; 3]> {
    let Some(v) = v else { return Ok(default) };
    let parts: Vec<f32> = v
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid {flag} `{v}`: expected one number or three separated by commas"))?;
    match parts.as_slice() {
        [x] => Ok([*x; 3]),
        [r, g, b] => Ok([*r, *g, *b]),
        _ => anyhow::bail!("invalid {flag} `{v}`: expected one number or three separated by commas"),
    }
}

/// One bar with samples/s, drawn only on a terminal.
struct Bar {
    show: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bar {
    fn begin(&self, _: Pass, total: u64) {
        let b = if self.show {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>8} [{bar:40.cyan/blue}] {human_pos}/{human_len} rows {per_sec} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix("embed");
            b.enable_steady_tick(Duration::from_millis(200));
            b
        } else {
            ProgressBar::hidden()
        };
        *self.bar.lock().expect("progress lock") = Some(b);
    }

    fn advance(&self, n: u64) {
        if let Some(b) = self.bar.lock().expect("progress lock").as_ref() {
            b.inc(n);
        }
    }

    fn end(&self) {
        if let Some(b) = self.bar.lock().expect("progress lock").take() {
            b.finish();
        }
    }

    fn warn(&self, message: &str) {
        let guard = self.bar.lock().expect("progress lock");
        match guard.as_ref() {
            Some(b) if self.show => b.suspend(|| eprintln!("warning: {message}")),
            _ => eprintln!("warning: {message}"),
        }
    }
}

/// Runs `dprune embed`.
pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    if let Some(t) = args.threads {
        anyhow::ensure!(t >= 1, "invalid --threads: must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("starting the thread pool")?;
    }
    let cfg = args.config()?;
    let bar = Bar {
        show: !args.quiet && std::io::stderr().is_terminal(),
        bar: Mutex::new(None),
    };
    let report = run_embed(&cfg, &bar)?;
    if !args.quiet {
        let e = &report.encoder;
        eprintln!(
            "embedded {} rows of `{}` with {} in {:.1}s ({:.1} rows/s) -> {}\n  device: {} ({})",
            report.n_rows,
            report.column,
            e.describe(),
            report.encode_s,
            report.samples_per_s,
            cfg.output.dir.display(),
            e.provider,
            e.provider_reason
        );
    }
    Ok(())
}
