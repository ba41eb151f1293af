//! Finding the input shards and reading their footers.
//!
//! Patterns are paths or globs; each glob's matches are taken in sorted
//! order, patterns in the order given, duplicates dropped. A row's identity
//! is (shard index, row index within the shard), so ids survive re-runs as
//! long as the same inputs are given in the same order.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::{Error, Result};

/// Expands paths and globs into a list of files (see the module docs).
pub fn expand_inputs<S: AsRef<str>>(patterns: &[S]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in patterns {
        let p = p.as_ref();
        let direct = Path::new(p);
        let mut hits: Vec<PathBuf> = if direct.is_file() {
            vec![direct.to_path_buf()]
        } else if direct.is_dir() {
            return Err(Error::param(
                "inputs",
                format!(
                    "`{p}` is a folder; give its files, e.g. '{}/*.parquet'",
                    p.trim_end_matches('/')
                ),
            ));
        } else {
            let paths = glob::glob(p).map_err(|e| Error::param("inputs", format!("bad glob `{p}`: {e}")))?;
            paths.filter_map(|r| r.ok()).filter(|q| q.is_file()).collect()
        };
        if hits.is_empty() {
            return Err(Error::NoMatch { pattern: p.to_string() });
        }
        hits.sort();
        for h in hits {
            if !out.contains(&h) {
                out.push(h);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::param("inputs", "no input files given"));
    }
    Ok(out)
}

/// One input Parquet file, as described by its footer.
#[derive(Debug, Clone)]
pub struct Shard {
    /// Position in the input list (the first half of a row id).
    pub index: usize,
    /// The file.
    pub path: PathBuf,
    /// Rows in the file.
    pub num_rows: u64,
    /// Row groups in the file.
    pub num_row_groups: usize,
    /// The Arrow schema the file decodes to (with its metadata).
    pub schema: SchemaRef,
}

impl Shard {
    /// Reads the footer of `path`.
    pub fn open(index: usize, path: &Path) -> Result<Self> {
        let b = builder(path)?;
        let md = b.metadata();
        Ok(Shard {
            index,
            path: path.to_path_buf(),
            num_rows: md.file_metadata().num_rows().max(0) as u64,
            num_row_groups: md.num_row_groups(),
            schema: b.schema().clone(),
        })
    }
}

/// A reader builder for `path`, with errors that name the file.
pub fn builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let f = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(f).map_err(|source| Error::Parquet {
        path: path.to_path_buf(),
        source,
    })
}

/// The input shards, in order, with their global row offsets.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The shards in input order.
    pub shards: Vec<Shard>,
    offsets: Vec<u64>,
}

impl Dataset {
    /// Reads the footers of `paths`.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let shards = paths
            .iter()
            .enumerate()
            .map(|(i, p)| Shard::open(i, p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::from_shards(shards))
    }

    /// Wraps already opened shards.
    pub fn from_shards(shards: Vec<Shard>) -> Self {
        let mut offsets = Vec::with_capacity(shards.len() + 1);
        let mut acc = 0;
        offsets.push(0);
        for s in &shards {
            acc += s.num_rows;
            offsets.push(acc);
        }
        Dataset { shards, offsets }
    }

    /// Total rows over all shards.
    pub fn num_rows(&self) -> u64 {
        *self.offsets.last().unwrap_or(&0)
    }

    /// Global index of the first row of shard `i`.
    pub fn offset(&self, i: usize) -> u64 {
        self.offsets[i]
    }
}
