//! Whole runs: streaming passes over the shards, from inputs to written
//! outputs and a report.

pub mod annotate;
pub mod budget;
pub mod config;
pub mod filter;
pub mod passes;
pub mod plot;
pub mod prefetch;
pub mod progress;
pub mod report;
pub mod spill;
#[cfg(feature = "datafusion")]
pub mod sql;
pub mod stages;
pub mod tokens_eval;

pub use filter::{EmbeddingSpec, Engine, FilterConfig, FilterParams, OutputSpec, run_filter};
pub use progress::{NoProgress, Pass, Progress};
pub use report::Report;
