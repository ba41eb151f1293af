//! Command-line parsing (clap) and dispatch. No algorithm lives here: each
//! subcommand builds a library config and calls one library function.

mod filter;
mod progress;

use clap::{Parser, Subcommand};

/// dprune: decide which samples are worth keeping, fast.
#[derive(Debug, Parser)]
#[command(name = "dprune", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Score every row of Parquet shards and write the rows worth keeping.
    Filter(Box<filter::FilterArgs>),
}

/// Parses the command line and runs the subcommand.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Filter(args) => filter::run(*args),
    }
}
