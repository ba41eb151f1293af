//! Integration tests: the `dprune` binary run as a user runs it, on the
//! Parquet fixtures in `fixtures/` (made by `fixtures/make_fixtures.py`)
//! and on small files the tests write themselves.

// Helpers: temp dirs, running the binary, reading Parquet back.
mod util;

// `dprune filter` on good inputs: counts, schema, order, report, determinism.
mod filter;

// Every bad input `dprune filter` promises a clear error for.
mod filter_errors;

// The kept-row prefetch: the score pass's copies of the embedding column write
// the same pruned shards.
mod prefetch;

// Encoders: ONNX text models against reference embeddings, `dprune embed`,
// `filter --model/--text-col`, and their bad inputs.
mod embed;

// Exact dedup, SemDeDup, quality, DBP/CCS/Moderate and their composition.
mod stages;

// `dprune run` on every shipped pipeline file.
mod pipelines;

// `dprune annotate` and `dprune demos` (issue 5), with their bad inputs.
mod annotate;

// Two-stage vote-k (`annotate --method votek`): stages, side files and their bad inputs.
mod annotate_twostage;

// `dprune sql` and `filter --where` (issue 7): SQL functions, a prune written as SQL.
#[cfg(feature = "datafusion")]
mod sql;

// `filter --cluster` on a Ballista scheduler and two executors started by the test (issue 7).
#[cfg(feature = "ballista")]
mod cluster;

// `dprune tokens eval` (issue 6) on the toy ViT split graphs, with its bad inputs.
mod tokens_eval;
