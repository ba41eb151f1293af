//! `dprune tokens ...`: visual-token pruning tools; `eval` turns flags into a
//! [`TokensEvalConfig`] and calls [`run_tokens_eval`].

use std::path::PathBuf;

use clap::{Args, Subcommand};
use dprune::pipeline::tokens_eval::{
    DEFAULT_EVAL_BATCH, DEFAULT_EVAL_SEED, JSON_FILE, PART1_FILE, PART2_FILE, PNG_FILE, TokensEvalConfig,
    run_tokens_eval,
};

const EVAL_EXAMPLES: &str = "\
Examples:
  # every reducer at kept fractions 1, 0.5, 0.25, 0.125 on the toy ViT, 1,000 MNIST digits
  dprune tokens eval --models ../shared/models \\
      --images ../shared/data/mnist-test-1k.parquet -o tokens-eval/

  # a quick look at 100 images, another random-baseline seed, replace earlier outputs
  dprune tokens eval --models ../shared/models --images mnist.parquet --limit 100 --seed 7 \\
      -o tokens-eval/ --overwrite

The model is split in two ONNX graphs in --models: toyvit-mnist-part1.onnx (pixels -> hidden
states + [CLS] attention) and toyvit-mnist-part2.onnx (any number of tokens -> pooled, logits).
Part 1 runs once per image; every reducer keeps (or merges) a share of the patch tokens, the
[CLS] token is always kept, and part 2 runs on the result. Adaptive (instance-wise) rules are
calibrated on the evaluated images so that their average count equals the fixed count.
Images: Parquet with `label` (int) and `pixels` (fixed_size_list<float32, 784>, raw 0..255).
Outputs in the output folder: tokens_eval.json (every number) and tokens_eval.png (accuracy and
cosine to the unpruned embedding against the mean kept fraction). ONNX Runtime is found through
ORT_DYLIB_PATH or a pip-installed onnxruntime.";

/// Flags of `dprune tokens`.
#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Accuracy and embedding fidelity of every token reducer on a split ViT (JSON + PNG).
    Eval(EvalArgs),
}

/// Flags of `dprune tokens eval`.
#[derive(Debug, Args)]
#[command(after_help = EVAL_EXAMPLES)]
pub struct EvalArgs {
    /// Folder with toyvit-mnist-part1.onnx and toyvit-mnist-part2.onnx.
    #[arg(long, value_name = "DIR")]
    models: PathBuf,

    /// Parquet file of images (`label`, `pixels`).
    #[arg(long, value_name = "FILE")]
    images: PathBuf,

    /// Evaluate the first N images only.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,

    /// Seed of the random baseline.
    #[arg(long, default_value_t = DEFAULT_EVAL_SEED, value_name = "S")]
    seed: u64,

    /// Images per part-1 call and token sets per part-2 call (results do not depend on it).
    #[arg(long, default_value_t = DEFAULT_EVAL_BATCH, value_name = "N")]
    batch_size: usize,

    /// ONNX Runtime threads [default: one per core].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Output folder (created if missing).
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,

    /// Replace existing outputs.
    #[arg(long)]
    overwrite: bool,

    /// No progress or table (errors still print).
    #[arg(short, long)]
    quiet: bool,
}

/// Runs `dprune tokens ...`.
pub fn run(args: TokensArgs) -> anyhow::Result<()> {
    match args.command {
        TokensCommand::Eval(a) => eval(a),
    }
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.threads != Some(0), "invalid --threads: must be at least 1");
    let mut cfg = TokensEvalConfig::new(&args.models, &args.images, &args.output);
    debug_assert!(cfg.part1.ends_with(PART1_FILE) && cfg.part2.ends_with(PART2_FILE));
    cfg.limit = args.limit;
    cfg.seed = args.seed;
    cfg.batch_size = args.batch_size;
    cfg.threads = args.threads;
    cfg.overwrite = args.overwrite;
    let quiet = args.quiet;
    let mut progress = |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    let r = run_tokens_eval(&cfg, &mut progress)?;
    for s in &r.skipped {
        eprintln!("warning: skipped {s}");
    }
    if !quiet {
        for c in r.comparisons.iter().filter(|c| c.fraction == 0.25) {
            eprintln!(
                "at 25% kept: {:<22} mean k {:.2} accuracy {:.4} vs cls_topk (k {}) {:.4}: {:+.4}",
                c.series, c.mean_k, c.accuracy, c.cls_topk_k, c.cls_topk_accuracy, c.delta
            );
        }
        eprintln!(
            "{} images, unpruned accuracy {:.4} -> {}, {}",
            r.n_images,
            r.unpruned_accuracy,
            cfg.output_dir.join(JSON_FILE).display(),
            cfg.output_dir.join(PNG_FILE).display()
        );
    }
    Ok(())
}
