//! The two execution plans of `filter`'s DataFusion engine (`--engine sql`
//! in this process, `--cluster` on Ballista executors), each with one
//! partition per input shard:
//!
//! * [`RowsExec`] streams a shard's embeddings with their identity
//!   (`dprune_file`, `dprune_row`), checked like `filter`'s score pass, for
//!   `dprune_nearest` and the rank windows above it; it reads through `io`'s
//!   page-level reader, not the generic Parquet scan;
//! * [`WriteExec`] writes one pruned shard (the rows flagged in a kept
//!   bitmap the driver left next to the outputs; with `--with-scores` their
//!   clusters and scores from a second file) and returns its counts.
//!
//! Both describe themselves as a [`RowsSpec`] / [`WriteSpec`] (plain data,
//! serialised by the distributed codec) and read files through `io`, so an
//! executor reads exactly what the local run reads.
//!
//! Which files a partition handles comes from a child: an in-memory scan
//! with one partition per file, each holding that file's index. Ballista's
//! scheduler gives each task only its slice of a stage's partitions by
//! rewriting the leaves it knows (file and memory scans) and would run an
//! unknown leaf whole in every task; with the memory scan as the leaf,
//! each task reads only its own files.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, UInt8Array, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, ReplaceChildrenOptions,
    SendableRecordBatchStream,
};
use serde::{Deserialize, Serialize};

use crate::io::embeddings::{ColumnSource, EmbeddingSource, NpySidecarSource};
use crate::io::writer::{CLUSTER_COLUMN, ExtraColumn, ExtraValues, SCORE_COLUMN, write_filtered};
use crate::io::{Dataset, Shard};
use crate::{Error, Result};

/// Column of [`RowsExec`]: index of the input file (in the run's order).
pub const FILE_COLUMN: &str = "dprune_file";
/// Column of [`RowsExec`]: row index within the file.
pub const ROW_COLUMN: &str = "dprune_row";
/// Column of [`RowsExec`]: 0 for a usable embedding, else why not
/// ([`INVALID_NULL`], [`INVALID_NOT_FINITE`], [`INVALID_ZERO`]); such rows
/// have a null embedding (only with `drop_invalid`: else they fail the task).
pub const INVALID_COLUMN: &str = "dprune_invalid";
/// [`INVALID_COLUMN`]: the embedding is null.
pub const INVALID_NULL: u8 = 1;
/// [`INVALID_COLUMN`]: an element is NaN or infinite.
pub const INVALID_NOT_FINITE: u8 = 2;
/// [`INVALID_COLUMN`]: all elements are zero.
pub const INVALID_ZERO: u8 = 3;
/// Column of [`RowsExec`]: the embedding, `FixedSizeList<Float32, dim>`.
pub const EMBEDDING_COLUMN: &str = "embedding";
/// Column of [`WriteExec`]: rows written to the pruned shard.
pub const WRITTEN_COLUMN: &str = "written";

/// What a [`RowsExec`] reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowsSpec {
    /// The input files (absolute paths: executors may run elsewhere).
    pub files: Vec<PathBuf>,
    /// The embedding column (unused with `sidecars`).
    pub column: String,
    /// LAION-style `.npy` sidecars, one per file in the same order
    /// (absolute paths); empty: the embeddings are in `column`.
    #[serde(default)]
    pub sidecars: Vec<PathBuf>,
    /// Its dimension.
    pub dim: usize,
    /// Skip unusable rows (null, not finite, all zeros) instead of failing.
    pub drop_invalid: bool,
    /// Rows per batch.
    pub batch_rows: usize,
}

/// What a [`WriteExec`] writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteSpec {
    /// The input files, in the run's order.
    pub files: Vec<PathBuf>,
    /// Global row id of the first row of each file (the bitmap's offsets).
    pub first_rows: Vec<u64>,
    /// The output folder (pruned shards keep their input's file name).
    pub out_dir: PathBuf,
    /// One bit per input row (file order, then row order), LSB first:
    /// set when the row is kept.
    pub kept_bitmap: PathBuf,
    /// With scores (`filter --with-scores`): the kept rows' cluster (u32)
    /// and score (f32), little endian, 8 bytes per kept row in file then
    /// row order; written as `dprune_cluster` and `dprune_score`.
    #[serde(default)]
    pub kept_scores: Option<PathBuf>,
    /// With `kept_scores`: kept rows before each file (where its records start).
    #[serde(default)]
    pub kept_before: Vec<u64>,
}

fn properties(schema: &SchemaRef, partitions: usize) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema.clone()),
        Partitioning::UnknownPartitioning(partitions),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ))
}

/// Marks dprune's own messages inside the engine's error text, so the
/// client can show them without the wrappers the cluster adds.
pub const ERROR_START: &str = "[dprune] ";
/// See [`ERROR_START`].
pub const ERROR_END: &str = " [/dprune]";

fn df_err(e: Error) -> DataFusionError {
    DataFusionError::Execution(format!("{ERROR_START}{e}{ERROR_END}"))
}

/// dprune's own message inside an engine error's text, when a plan of this
/// module failed with one (the engine wraps it in its own layers).
pub fn own_message(text: &str) -> Option<&str> {
    let i = text.find(ERROR_START)?;
    let rest = &text[i + ERROR_START.len()..];
    rest.find(ERROR_END).map(|j| &rest[..j])
}

/// The child of both plans: partition `i` holds one row, the index of file `i`.
pub fn file_indices(files: usize) -> DfResult<Arc<dyn ExecutionPlan>> {
    file_groups(files, files)
}

/// The child of both plans in one process: `partitions` partitions (at
/// most one per file), partition `j` holding files `j`, `j + partitions`,
/// ...; so at most `partitions` files are read or written at once however
/// many files there are.
pub fn file_groups(files: usize, partitions: usize) -> DfResult<Arc<dyn ExecutionPlan>> {
    let schema = Arc::new(Schema::new(vec![Field::new(FILE_COLUMN, DataType::UInt32, false)]));
    let parts_n = partitions.clamp(1, files.max(1));
    let parts: Vec<Vec<RecordBatch>> = (0..parts_n)
        .map(|j| {
            let idx: Vec<u32> = (j..files).step_by(parts_n).map(|i| i as u32).collect();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(UInt32Array::from(idx)) as ArrayRef]).map(|b| vec![b])
        })
        .collect::<std::result::Result<_, _>>()?;
    let source = datafusion::datasource::memory::MemorySourceConfig::try_new(&parts, schema, None)?;
    Ok(datafusion::datasource::source::DataSourceExec::from_data_source(source))
}

/// Streams what `work` sends for each file index that partition `p` of
/// `input` holds; `work` runs on a blocking thread.
fn per_file_stream(
    input: &Arc<dyn ExecutionPlan>,
    p: usize,
    ctx: Arc<TaskContext>,
    schema: SchemaRef,
    work: impl Fn(usize, &tokio::sync::mpsc::Sender<DfResult<RecordBatch>>) -> Result<()> + Send + 'static,
) -> DfResult<SendableRecordBatchStream> {
    use arrow::array::AsArray;
    use arrow::datatypes::UInt32Type;
    use futures::StreamExt;
    let mut child = input.execute(p, ctx)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(2);
    tokio::spawn(async move {
        let mut files = Vec::new();
        while let Some(b) = child.next().await {
            match b {
                Ok(b) => match b.column(0).as_primitive_opt::<UInt32Type>() {
                    Some(a) => files.extend(a.values().iter().map(|&v| v as usize)),
                    None => {
                        let _ = tx
                            .send(Err(DataFusionError::Internal("file index column is not UInt32".into())))
                            .await;
                        return;
                    }
                },
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        let _ = tokio::task::spawn_blocking(move || {
            for f in files {
                if let Err(e) = work(f, &tx) {
                    let _ = tx.blocking_send(Err(df_err(e)));
                    return;
                }
            }
        })
        .await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
}

/// The parts of [`ExecutionPlan`] both plans share: a name, cached
/// properties, the file-index child, no expressions.
macro_rules! one_child_plan {
    ($name:literal) => {
        fn name(&self) -> &'static str {
            $name
        }
        fn properties(&self) -> &Arc<PlanProperties> {
            &self.props
        }
        fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
            vec![&self.input]
        }
        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
        ) -> DfResult<TreeNodeRecursion> {
            Ok(TreeNodeRecursion::Continue)
        }
        fn replace_children(
            self: Arc<Self>,
            children: Vec<Arc<dyn ExecutionPlan>>,
            _options: ReplaceChildrenOptions,
        ) -> DfResult<Arc<dyn ExecutionPlan>> {
            Ok(Arc::new(Self::with_input(
                self.spec.clone(),
                one_child(children)?,
            )))
        }
        fn with_new_children(
            self: Arc<Self>,
            children: Vec<Arc<dyn ExecutionPlan>>,
        ) -> DfResult<Arc<dyn ExecutionPlan>> {
            Ok(Arc::new(Self::with_input(
                self.spec.clone(),
                one_child(children)?,
            )))
        }
    };
}

fn one_child(mut children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
    match children.len() {
        1 => Ok(children.swap_remove(0)),
        n => Err(DataFusionError::Internal(format!(
            "dprune plans take one child, got {n}"
        ))),
    }
}

/// Streams the embeddings of one shard per partition.
#[derive(Debug)]
pub struct RowsExec {
    spec: RowsSpec,
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

impl RowsExec {
    /// A scan of `spec.files`, one partition per file.
    pub fn new(spec: RowsSpec) -> DfResult<Self> {
        let input = file_indices(spec.files.len())?;
        Ok(Self::with_input(spec, input))
    }

    /// A scan of the files whose indices `input` yields (see [`file_indices`]).
    pub fn with_input(spec: RowsSpec, input: Arc<dyn ExecutionPlan>) -> Self {
        let schema = rows_schema(spec.dim);
        let props = properties(&schema, input.properties().partitioning.partition_count());
        RowsExec {
            spec,
            input,
            schema,
            props,
        }
    }

    /// What it reads.
    pub fn spec(&self) -> &RowsSpec {
        &self.spec
    }
}

/// The columns of [`RowsExec`] for embeddings of dimension `dim`.
fn rows_schema(dim: usize) -> SchemaRef {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    Arc::new(Schema::new(vec![
        Field::new(FILE_COLUMN, DataType::UInt32, false),
        Field::new(ROW_COLUMN, DataType::UInt64, false),
        Field::new(INVALID_COLUMN, DataType::UInt8, false),
        Field::new(EMBEDDING_COLUMN, DataType::FixedSizeList(item, dim as i32), true),
    ]))
}

/// Reads shard `index` and sends its batches to `tx` (runs on a blocking thread).
fn read_rows(
    spec: &RowsSpec,
    index: usize,
    schema: &SchemaRef,
    tx: &tokio::sync::mpsc::Sender<DfResult<RecordBatch>>,
) -> Result<()> {
    let path = &spec.files[index];
    // Index 0: the shard is the only one of the dataset its source is opened on.
    let shard = Shard::open(0, path)?;
    let data = Dataset::from_shards(vec![shard.clone()]);
    let source: Box<dyn EmbeddingSource> = match spec.sidecars.get(index) {
        Some(npy) => Box::new(NpySidecarSource::open(&data, std::slice::from_ref(npy))?),
        None if spec.sidecars.is_empty() => Box::new(ColumnSource::detect(&data, Some(&spec.column))?),
        None => return Err(Error::Internal(format!("no sidecar for file {index}"))),
    };
    if source.dim() != spec.dim {
        return Err(Error::Dimension {
            path: spec.sidecars.get(index).unwrap_or(path).clone(),
            row: None,
            expected: spec.dim,
            found: source.dim(),
        });
    }
    let dim = spec.dim;
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    for block in source.blocks(&shard, spec.batch_rows)? {
        let block = block?;
        let n = block.rows();
        let rows: Vec<u64> = (block.first_row..block.first_row + n as u64).collect();
        let mut values = block.values;
        let mut bad = vec![0u8; n];
        for (i, x) in values.chunks_exact_mut(dim).enumerate() {
            if let Some(what) = crate::io::embeddings::unusable(x, block.null[i]) {
                if !spec.drop_invalid {
                    return Err(Error::InvalidVector {
                        path: path.clone(),
                        row: block.first_row + i as u64,
                        what,
                    });
                }
                bad[i] = match what {
                    "null" => INVALID_NULL,
                    "all zeros" => INVALID_ZERO,
                    _ => INVALID_NOT_FINITE,
                };
                x.fill(0.0);
            }
        }
        let valid = arrow::buffer::NullBuffer::from(bad.iter().map(|&b| b == 0).collect::<Vec<bool>>());
        let list = FixedSizeListArray::try_new(
            item.clone(),
            dim as i32,
            Arc::new(Float32Array::from(values)),
            Some(valid),
        )
        .map_err(|source| Error::Arrow {
            path: path.clone(),
            source,
        })?;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(vec![index as u32; n])),
            Arc::new(UInt64Array::from(rows)),
            Arc::new(UInt8Array::from(bad)),
            Arc::new(list),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|source| Error::Arrow {
            path: path.clone(),
            source,
        })?;
        if tx.blocking_send(Ok(batch)).is_err() {
            return Ok(()); // the consumer stopped
        }
    }
    Ok(())
}

impl DisplayAs for RowsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match self.spec.sidecars.len() {
            0 => write!(
                f,
                "DpruneRowsExec: {} files, column {}",
                self.spec.files.len(),
                self.spec.column
            ),
            _ => write!(f, "DpruneRowsExec: {} files, .npy sidecars", self.spec.files.len()),
        }
    }
}

impl ExecutionPlan for RowsExec {
    one_child_plan!("DpruneRowsExec");
    fn execute(&self, partition: usize, ctx: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let spec = self.spec.clone();
        let schema = self.schema.clone();
        per_file_stream(&self.input, partition, ctx, self.schema.clone(), move |file, tx| {
            read_rows(&spec, file, &schema, tx)
        })
    }
}

/// Writes one pruned shard per partition.
#[derive(Debug)]
pub struct WriteExec {
    spec: WriteSpec,
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

impl WriteExec {
    /// Writes the shards of `spec`, one partition per file.
    pub fn new(spec: WriteSpec) -> DfResult<Self> {
        let input = file_indices(spec.files.len())?;
        Ok(Self::with_input(spec, input))
    }

    /// Writes the files whose indices `input` yields (see [`file_indices`]).
    pub fn with_input(spec: WriteSpec, input: Arc<dyn ExecutionPlan>) -> Self {
        let schema = Arc::new(Schema::new(vec![
            Field::new(FILE_COLUMN, DataType::UInt32, false),
            Field::new(WRITTEN_COLUMN, DataType::UInt64, false),
        ]));
        let props = properties(&schema, input.properties().partitioning.partition_count());
        WriteExec {
            spec,
            input,
            schema,
            props,
        }
    }

    /// What it writes.
    pub fn spec(&self) -> &WriteSpec {
        &self.spec
    }
}

/// The kept flags of rows `first .. first + n` of the bitmap file.
fn read_kept(path: &std::path::Path, first: u64, n: u64) -> Result<Vec<bool>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let (lo, hi) = (first / 8, (first + n).div_ceil(8));
    f.seek(SeekFrom::Start(lo)).map_err(|e| Error::io("reading", path, e))?;
    let mut bytes = vec![0u8; (hi - lo) as usize];
    f.read_exact(&mut bytes).map_err(|e| Error::io("reading", path, e))?;
    Ok((first..first + n)
        .map(|g| {
            let b = (g - lo * 8) as usize;
            bytes[b / 8] >> (b % 8) & 1 == 1
        })
        .collect())
}

/// Writes the pruned shard of input `index`.
fn write_shard(spec: &WriteSpec, index: usize) -> Result<(u64, u64)> {
    let shard = Shard::open(index, &spec.files[index])?;
    let first = *spec
        .first_rows
        .get(index)
        .ok_or_else(|| Error::Internal(format!("no first row for file {index}")))?;
    let kept = read_kept(&spec.kept_bitmap, first, shard.num_rows)?;
    let dest = spec.out_dir.join(shard.path.file_name().unwrap_or_default());
    let written = match &spec.kept_scores {
        None => write_filtered(&shard, &kept, &[], &dest, &|_| {}, None)?,
        Some(path) => {
            let before = *spec
                .kept_before
                .get(index)
                .ok_or_else(|| Error::Internal(format!("no kept count before file {index}")))?;
            let (cluster, score) = read_kept_scores(path, before, &kept)?;
            let extra = [
                ExtraColumn {
                    name: CLUSTER_COLUMN,
                    values: ExtraValues::I32(&cluster),
                    valid: Some(&kept),
                },
                ExtraColumn {
                    name: SCORE_COLUMN,
                    values: ExtraValues::F32(&score),
                    valid: Some(&kept),
                },
            ];
            write_filtered(&shard, &kept, &extra, &dest, &|_| {}, None)?
        }
    };
    Ok((index as u64, written))
}

/// One kept row's record in [`WriteSpec::kept_scores`]: cluster (u32) and
/// score (f32), little endian.
pub fn kept_score_record(cluster: u32, score: f32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&cluster.to_le_bytes());
    b[4..].copy_from_slice(&score.to_le_bytes());
    b
}

/// The clusters and scores of one file's kept rows, spread over the file's
/// rows (0 where not kept): records `before ..` of the kept-scores file.
fn read_kept_scores(path: &std::path::Path, before: u64, kept: &[bool]) -> Result<(Vec<i32>, Vec<f32>)> {
    use std::io::{Read, Seek, SeekFrom};
    let n = kept.iter().filter(|&&k| k).count();
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("reading", path, e))?;
    f.seek(SeekFrom::Start(before * 8))
        .map_err(|e| Error::io("reading", path, e))?;
    let mut bytes = vec![0u8; n * 8];
    f.read_exact(&mut bytes).map_err(|e| Error::io("reading", path, e))?;
    let (mut cluster, mut score) = (vec![0i32; kept.len()], vec![0f32; kept.len()]);
    let mut recs = bytes.chunks_exact(8);
    for (i, _) in kept.iter().enumerate().filter(|(_, k)| **k) {
        let r = recs.next().expect("one record per kept row");
        cluster[i] = u32::from_le_bytes(r[..4].try_into().expect("4 bytes")) as i32;
        score[i] = f32::from_le_bytes(r[4..].try_into().expect("4 bytes"));
    }
    Ok((cluster, score))
}

impl DisplayAs for WriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "DpruneWriteExec: {} files -> {}",
            self.spec.files.len(),
            self.spec.out_dir.display()
        )
    }
}

impl ExecutionPlan for WriteExec {
    one_child_plan!("DpruneWriteExec");
    fn execute(&self, partition: usize, ctx: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let spec = self.spec.clone();
        let schema = self.schema.clone();
        per_file_stream(&self.input, partition, ctx, self.schema.clone(), move |file, tx| {
            let (file, written) = write_shard(&spec, file)?;
            let cols: Vec<ArrayRef> = vec![
                Arc::new(UInt32Array::from(vec![file as u32])),
                Arc::new(UInt64Array::from(vec![written])),
            ];
            let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::Internal(e.to_string()))?;
            let _ = tx.blocking_send(Ok(batch));
            Ok(())
        })
    }
}

/// [`RowsExec`] as a table, so SQL (windows, sorts) can be planned over it.
#[derive(Debug)]
pub struct RowsTable {
    spec: RowsSpec,
    schema: SchemaRef,
    /// Partitions of the scan; `None`: one per file.
    partitions: Option<usize>,
}

impl RowsTable {
    /// The table of `spec`'s rows, scanned with one partition per file
    /// (what a cluster spreads over its executors).
    pub fn new(spec: RowsSpec) -> Self {
        Self::with_partitions(spec, None)
    }

    /// The table of `spec`'s rows, scanned with at most `partitions`
    /// partitions (see [`file_groups`]); `None`: one per file.
    pub fn with_partitions(spec: RowsSpec, partitions: Option<usize>) -> Self {
        let schema = RowsExec::with_input(
            spec.clone(),
            Arc::new(datafusion::physical_plan::empty::EmptyExec::new(Arc::new(
                Schema::empty(),
            ))),
        )
        .schema
        .clone();
        RowsTable {
            spec,
            schema,
            partitions,
        }
    }
}

#[async_trait::async_trait]
impl datafusion::catalog::TableProvider for RowsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> datafusion::logical_expr::TableType {
        datafusion::logical_expr::TableType::Base
    }
    async fn scan(
        &self,
        _state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        _filters: &[datafusion::logical_expr::Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files = self.spec.files.len();
        let input = file_groups(files, self.partitions.unwrap_or(files))?;
        let scan: Arc<dyn ExecutionPlan> = Arc::new(RowsExec::with_input(self.spec.clone(), input));
        match projection {
            Some(p) if *p != (0..self.schema.fields().len()).collect::<Vec<_>>() => {
                use datafusion::physical_expr::expressions::Column;
                let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = p
                    .iter()
                    .map(|&i| {
                        let name = self.schema.field(i).name().clone();
                        (Arc::new(Column::new(&name, i)) as Arc<dyn PhysicalExpr>, name)
                    })
                    .collect();
                Ok(Arc::new(
                    datafusion::physical_plan::projection::ProjectionExec::try_new(exprs, scan)?,
                ))
            }
            _ => Ok(scan),
        }
    }
}
