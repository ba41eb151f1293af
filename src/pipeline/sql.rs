//! `dprune sql`: a DataFusion query over Parquet tables with the dprune
//! functions ([`crate::datafusion`]) registered; the result streams into
//! one Parquet file (written atomically) or its first rows come back for
//! printing.

use std::fs::File;
use std::path::PathBuf;

use ::datafusion::error::DataFusionError;
use ::datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use crate::datafusion::{FunctionParams, register};
use crate::io::writer::writer_properties;
use crate::io::{AtomicFile, expand_inputs};
use crate::{Error, Result};

/// Rows returned for printing when no output file is given.
pub const DEFAULT_MAX_ROWS: usize = 20;

/// One table of the query: a name and the Parquet files (paths or globs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// The name the query uses.
    pub name: String,
    /// Paths or globs.
    pub files: Vec<String>,
}

impl std::str::FromStr for TableSpec {
    type Err = Error;
    /// `name=GLOB`.
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once('=') {
            Some((n, g)) if !n.trim().is_empty() && !g.is_empty() => Ok(TableSpec {
                name: n.trim().to_string(),
                files: vec![g.to_string()],
            }),
            _ => Err(Error::param(
                "--table",
                format!("`{s}`: expected NAME=GLOB, e.g. t='shards/*.parquet'"),
            )),
        }
    }
}

/// A complete `sql` job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlConfig {
    /// The query (one statement).
    pub query: String,
    /// The tables it reads.
    pub tables: Vec<TableSpec>,
    /// Centroids and encoder of the dprune functions.
    pub functions: FunctionParams,
    /// Write the result to this Parquet file instead of returning rows.
    pub output: Option<PathBuf>,
    /// Replace an existing output file.
    pub overwrite: bool,
    /// Rows returned for printing (without `output`).
    pub max_rows: usize,
    /// Worker threads of the engine [default: all cores].
    pub threads: Option<usize>,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            query: String::new(),
            tables: Vec::new(),
            functions: FunctionParams::default(),
            output: None,
            overwrite: false,
            max_rows: DEFAULT_MAX_ROWS,
            threads: None,
        }
    }
}

impl SqlConfig {
    /// Checks values that do not depend on the data.
    pub fn validate(&self) -> Result<()> {
        if self.query.trim().is_empty() {
            return Err(Error::param("query", "the query is empty"));
        }
        if self.threads == Some(0) {
            return Err(Error::param("--threads", "must be at least 1"));
        }
        for (i, t) in self.tables.iter().enumerate() {
            if self.tables[..i].iter().any(|u| u.name == t.name) {
                return Err(Error::param("--table", format!("table `{}` is given twice", t.name)));
            }
        }
        Ok(())
    }
}

/// What a query returned.
#[derive(Debug, Clone)]
pub struct SqlOutcome {
    /// The result's schema.
    pub schema: SchemaRef,
    /// Without `output`: the first `max_rows` rows.
    pub head: Vec<RecordBatch>,
    /// Rows in the result.
    pub rows: u64,
    /// The file written, if any.
    pub output: Option<PathBuf>,
}

fn query_error(e: DataFusionError) -> Error {
    Error::Sql {
        context: "query".into(),
        reason: e.to_string(),
    }
}

/// Runs a `sql` job.
pub fn run_sql(cfg: &SqlConfig) -> Result<SqlOutcome> {
    cfg.validate()?;
    let opts = cfg.functions.load()?;
    let mut inputs = Vec::new();
    let mut tables = Vec::new();
    for t in &cfg.tables {
        let paths = expand_inputs(&t.files)?;
        inputs.extend(paths.iter().cloned());
        tables.push((t.name.clone(), paths));
    }
    if let Some(out) = &cfg.output {
        if inputs.iter().any(|p| same_file(p, out)) {
            return Err(Error::OutputIsInput { path: out.clone() });
        }
        if out.exists() && !cfg.overwrite {
            return Err(Error::OutputExists { path: out.clone() });
        }
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = cfg.threads {
        rt.worker_threads(t);
    }
    let rt = rt
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the query runtime: {e}")))?;
    rt.block_on(async {
        // DATAFUSION_* environment variables tune the engine (DataFusion's own convention).
        let mut sc = SessionConfig::from_env().map_err(|e| Error::Sql {
            context: "DATAFUSION_* environment variables".into(),
            reason: e.to_string(),
        })?;
        if let Some(t) = cfg.threads {
            sc = sc.with_target_partitions(t);
        }
        let ctx = SessionContext::new_with_config(sc);
        register(&ctx, &opts);
        for (name, paths) in &tables {
            let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            let df = ctx
                .read_parquet(files, ParquetReadOptions::default())
                .await
                .map_err(|e| Error::Sql {
                    context: format!("table `{name}`"),
                    reason: e.to_string(),
                })?;
            ctx.register_table(name.as_str(), df.into_view()).map_err(query_error)?;
        }
        let df = ctx.sql(&cfg.query).await.map_err(query_error)?;
        let mut stream = df.execute_stream().await.map_err(query_error)?;
        let schema = stream.schema();
        let mut rows = 0u64;
        match &cfg.output {
            Some(out) => {
                let atomic = AtomicFile::new(out)?;
                let f = File::create(atomic.tmp_path()).map_err(|e| Error::io("creating", atomic.tmp_path(), e))?;
                let werr = |source| Error::Parquet {
                    path: out.clone(),
                    source,
                };
                let mut w = ArrowWriter::try_new(f, schema.clone(), Some(writer_properties(&schema))).map_err(werr)?;
                while let Some(b) = stream.next().await {
                    let b = b.map_err(query_error)?;
                    rows += b.num_rows() as u64;
                    w.write(&b).map_err(werr)?;
                }
                w.close().map_err(werr)?;
                atomic.commit()?;
                Ok(SqlOutcome {
                    schema,
                    head: Vec::new(),
                    rows,
                    output: Some(out.clone()),
                })
            }
            None => {
                let mut head = Vec::new();
                let mut kept = 0usize;
                while let Some(b) = stream.next().await {
                    let b = b.map_err(query_error)?;
                    rows += b.num_rows() as u64;
                    if kept < cfg.max_rows {
                        let take = b.num_rows().min(cfg.max_rows - kept);
                        kept += take;
                        head.push(b.slice(0, take));
                    }
                }
                Ok(SqlOutcome {
                    schema,
                    head,
                    rows,
                    output: None,
                })
            }
        }
    })
}

fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
