//! `dprune run PIPELINE.toml`: the same machinery as `dprune filter`, with
//! the job described in a file (see `pipelines/`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dprune::pipeline::annotate::run_annotate;
use dprune::pipeline::config::{Job, load_job};
use dprune::pipeline::run_filter;

use crate::cli::annotate::print_annotate_summary;
use crate::cli::filter::print_summary;
use crate::cli::progress::Bars;

const EXAMPLES: &str = "\
Examples:
  dprune run pipelines/ssl-prototypes.toml
  dprune run pipelines/random-baseline.toml -o /tmp/random --overwrite
  dprune run pipelines/ssl-prototypes.toml --dry-run
  dprune run pipelines/icl-annotate.toml -o /tmp/to_annotate.parquet --overwrite";

/// Flags of `dprune run`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct RunArgs {
    /// The pipeline file (TOML; unknown keys are errors).
    #[arg(value_name = "PIPELINE")]
    file: PathBuf,

    /// Output folder (overrides `output.dir`); for an annotate pipeline, the output file.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,

    /// Replace files in a non-empty output folder (overrides `output.overwrite`).
    #[arg(long)]
    overwrite: bool,

    /// Compute everything, print the report as JSON, write nothing.
    #[arg(long)]
    dry_run: bool,

    /// Worker threads [default: all cores].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// No progress bars or summary.
    #[arg(short, long)]
    quiet: bool,
}

/// Runs `dprune run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Some(t) = args.threads {
        anyhow::ensure!(t >= 1, "invalid --threads: must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("starting the thread pool")?;
    }
    let mut cfg = match load_job(&args.file)? {
        Job::Filter(cfg) => *cfg,
        Job::Annotate(mut cfg) => {
            anyhow::ensure!(!args.dry_run, "--dry-run applies to filter pipelines only");
            if let Some(o) = args.output {
                cfg.output = o;
            }
            cfg.overwrite |= args.overwrite;
            anyhow::ensure!(
                !cfg.output.as_os_str().is_empty(),
                "{}: no output file: set `output` or pass -o",
                args.file.display()
            );
            let (report, _) = run_annotate(&cfg)?;
            print_annotate_summary(&report, &cfg, args.quiet);
            return Ok(());
        }
    };
    if let Some(o) = args.output {
        cfg.output.dir = o;
    }
    cfg.output.overwrite |= args.overwrite;
    cfg.output.dry_run |= args.dry_run;
    anyhow::ensure!(
        !cfg.output.dir.as_os_str().is_empty(),
        "{}: no output folder: set `output.dir` or pass -o",
        args.file.display()
    );
    let report = run_filter(&cfg, &Bars::new(args.quiet))?;
    print_summary(&report, &cfg, args.quiet)
}
