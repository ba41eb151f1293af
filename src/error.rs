//! The one error type of the library.
//!
//! Every variant carries what a user needs to act on it: the file, column,
//! row or value at fault, and, where there is one, the flag that fixes it.
//! Bad input is an error, never a panic; `Internal` is reserved for bugs.

use std::path::PathBuf;

/// Errors returned by dprune's library functions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read, written, created or renamed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What dprune was doing ("reading", "creating", "renaming", ...).
        action: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// An input pattern matched no file.
    #[error("no file matches `{pattern}`")]
    NoMatch {
        /// The path or glob as given.
        pattern: String,
    },

    /// A Parquet file could not be opened or decoded.
    #[error("{path}: not a readable Parquet file: {source}")]
    Parquet {
        /// The file at fault.
        path: PathBuf,
        /// The decoder's error.
        source: parquet::errors::ParquetError,
    },

    /// Arrow failed while handling data of a file.
    #[error("{path}: {source}")]
    Arrow {
        /// The file whose data was being handled.
        path: PathBuf,
        /// Arrow's error.
        source: arrow::error::ArrowError,
    },

    /// The embedding column is missing, ambiguous or of an unusable type.
    #[error("{path}: {reason}")]
    EmbeddingColumn {
        /// The file whose schema was inspected.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// A scalar column (quality or score column) is missing or unusable.
    #[error("{path}: column `{column}`: {reason}")]
    Column {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// What is wrong.
        reason: String,
    },

    /// Embeddings of different dimensions were found.
    #[error("{path}{}: embedding dimension {found}, expected {expected}", row_suffix(*.row))]
    Dimension {
        /// The file at fault.
        path: PathBuf,
        /// The row at fault, when the dimension is per row (lists).
        row: Option<u64>,
        /// The dimension seen first (or required by centroids).
        expected: usize,
        /// The dimension found here.
        found: usize,
    },

    /// An embedding is null, not finite, or all zeros.
    #[error("{path} row {row}: embedding is {what}; fix the data or pass --drop-invalid to exclude such rows")]
    InvalidVector {
        /// The file at fault.
        path: PathBuf,
        /// Row index within the file (0-based).
        row: u64,
        /// "null", "not finite (NaN or inf)", "all zeros".
        what: &'static str,
    },

    /// A `.npy` file is malformed or does not fit the shards it belongs to.
    #[error("{path}: {reason}")]
    Npy {
        /// The `.npy` file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The inputs hold no usable rows.
    #[error("{0}")]
    Empty(String),

    /// A parameter is out of range or inconsistent with the data.
    #[error("invalid {name}: {reason}")]
    InvalidParam {
        /// The parameter (as the CLI spells it, e.g. `--keep`).
        name: &'static str,
        /// Why, with the value.
        reason: String,
    },

    /// The output location is not empty and `overwrite` was not asked for.
    #[error("output {path} exists and is not empty; pass --overwrite to replace its files")]
    OutputExists {
        /// The output folder or file.
        path: PathBuf,
    },

    /// Writing an output would replace one of the inputs.
    #[error("output {path} would replace an input file; choose another output folder")]
    OutputIsInput {
        /// The clashing path.
        path: PathBuf,
    },

    /// A pipeline description could not be parsed.
    #[error("{path}: {reason}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// The parser's message (names the unknown key or bad value).
        reason: String,
    },

    /// A shape does not match what the operation needs.
    #[error("shape mismatch in {op}: expected {expected}, got {got}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What was expected.
        expected: String,
        /// What was given.
        got: String,
    },

    /// A SQL query or predicate failed to parse, plan or run.
    #[error("{context}: {reason}")]
    Sql {
        /// What was run (`--where `…` on FILE`, `query`, ...).
        context: String,
        /// The engine's message (names the column, function or syntax at fault).
        reason: String,
    },

    /// A distributed run failed: the cluster could not be reached, or a
    /// task failed there (the reason carries the executor's message).
    #[error("cluster {url}: {reason}")]
    Cluster {
        /// The scheduler (`df://host:port`) or the address served.
        url: String,
        /// What happened.
        reason: String,
    },

    /// A bug in dprune.
    #[error("internal error (please report): {0}")]
    Internal(String),
}

fn row_suffix(row: Option<u64>) -> String {
    row.map(|r| format!(" row {r}")).unwrap_or_default()
}

/// `Result` with dprune's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::Io`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::InvalidParam`].
    pub fn param(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParam {
            name,
            reason: reason.into(),
        }
    }
}
