//! Command-line parsing (clap) and dispatch. No algorithm lives here: each
//! subcommand builds a library config and calls one library function.

mod annotate;
#[cfg(feature = "ballista")]
mod cluster;
mod demos;
mod embed;
mod encode_flags;
mod filter;
mod progress;
mod run;
#[cfg(feature = "datafusion")]
mod sql;
mod tokens;

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
    /// Add an embedding column (or .npy sidecars) computed by an encoder from a text column.
    Embed(Box<embed::EmbedArgs>),
    /// Run a pipeline described in a TOML file (see pipelines/).
    Run(run::RunArgs),
    /// Choose which pool rows to annotate for in-context learning (vote-k, IDEAL, ...).
    Annotate(Box<annotate::AnnotateArgs>),
    /// Retrieve demonstrations for queries from annotated rows.
    Demos(Box<demos::DemosArgs>),
    /// Visual-token pruning for VLM inference: `tokens eval` measures reducers on a split ViT.
    Tokens(tokens::TokensArgs),
    /// Run a SQL query over Parquet tables with the dprune functions (dprune_nearest, ...).
    #[cfg(feature = "datafusion")]
    Sql(Box<sql::SqlArgs>),
    /// Ballista scheduler and executor processes for `filter --cluster`.
    #[cfg(feature = "ballista")]
    Cluster(cluster::ClusterArgs),
}

/// Parses the command line and runs the subcommand.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Filter(args) => filter::run(*args),
        Command::Embed(args) => embed::run(*args),
        Command::Run(args) => run::run(args),
        Command::Annotate(args) => annotate::run(*args),
        Command::Demos(args) => demos::run(*args),
        Command::Tokens(args) => tokens::run(args),
        #[cfg(feature = "datafusion")]
        Command::Sql(args) => sql::run(*args),
        #[cfg(feature = "ballista")]
        Command::Cluster(args) => cluster::run(args),
    }
}
