//! Input and output: Parquet shards, embeddings, `.npy` files, and outputs
//! that are written to a temporary name and renamed only when complete.

pub mod atomic;
pub mod columns;
pub mod direct;
pub mod embeddings;
pub mod inputs;
pub mod le;
pub mod npy;
pub mod writer;

pub use atomic::AtomicFile;
pub use embeddings::{ColumnSource, EmbeddingBlock, EmbeddingSource, NpySidecarSource};
pub use inputs::{Dataset, Shard, expand_inputs};
