//! `dprune cluster scheduler|executor`: the Ballista processes that run
//! `filter --cluster` (they know dprune's plans and functions; stock
//! Ballista binaries do not).

use anyhow::Context;
use clap::{Args, Subcommand};
use dprune::datafusion::distributed::{ExecutorOptions, run_executor, run_scheduler};

const EXAMPLES: &str = "\
Examples:
  # one scheduler and two executors on this machine, then a distributed prune
  dprune cluster scheduler --bind 127.0.0.1:50050 &
  dprune cluster executor --scheduler df://127.0.0.1:50050 --flight-port 50051 --grpc-port 50052 &
  dprune cluster executor --scheduler df://127.0.0.1:50050 --flight-port 50061 --grpc-port 50062 &
  dprune filter --keep 0.3 --cluster df://127.0.0.1:50050 '/data/laion/*.parquet' -o /data/pruned/

Executors read the inputs and write the outputs themselves: every executor must see
them at the same absolute paths as the client (one machine or a shared file system).";

/// Flags of `dprune cluster`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct ClusterArgs {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Accept jobs from `filter --cluster` and hand their tasks to executors.
    Scheduler {
        /// Address to listen on (port 0: a free port, printed on stdout).
        #[arg(long, default_value = "127.0.0.1:50050", value_name = "HOST:PORT")]
        bind: String,
    },
    /// Run tasks for a scheduler.
    Executor {
        /// The scheduler.
        #[arg(long, default_value = "df://127.0.0.1:50050", value_name = "URL")]
        scheduler: String,
        /// Address to listen on (the scheduler and other executors connect to it).
        #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
        bind_host: String,
        /// Arrow Flight port (shuffle data and results).
        #[arg(long, default_value_t = 50051)]
        flight_port: u16,
        /// gRPC port (tasks from the scheduler).
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Tasks run at once [default: one per core].
        #[arg(long, default_value_t = 0)]
        concurrent_tasks: usize,
        /// Folder for shuffle files [default: a temporary folder].
        #[arg(long)]
        work_dir: Option<String>,
    },
}

/// Runs `dprune cluster`.
pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match args.role {
        Role::Scheduler { bind } => rt.block_on(run_scheduler(&bind, |addr| {
            // Scripts and tests read the address from this line.
            println!("dprune scheduler listening on df://{addr}");
        }))?,
        Role::Executor {
            scheduler,
            bind_host,
            flight_port,
            grpc_port,
            concurrent_tasks,
            work_dir,
        } => {
            println!("dprune executor on {bind_host}:{flight_port} (grpc {grpc_port}) joining {scheduler}");
            rt.block_on(run_executor(&ExecutorOptions {
                scheduler,
                bind_host,
                flight_port,
                grpc_port,
                concurrent_tasks,
                work_dir,
            }))?
        }
    }
    Ok(())
}
