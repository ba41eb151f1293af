//! Grouping rows by cluster on disk, so per-cluster work (SemDeDup) never
//! holds the dataset: the score pass appends every row's id and unit
//! embedding to one of P temporary Arrow IPC stream files (cluster `c` goes
//! to partition `c mod P`), then partitions are read back one at a time.
//! P is chosen so a partition is about [`TARGET_PARTITION_BYTES`]; peak
//! memory is one partition plus the per-task write buffers, not N·dim.
//!
//! The spill folder is removed when the [`ClusterSpill`] /
//! [`SpilledClusters`] value is dropped, also on errors.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{FixedSizeListArray, Float32Array, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

use crate::{Error, Result};

mod ipc;
mod layout;
use ipc::{read_ipc_arrow, read_ipc_stream};
pub use layout::{CAP_SLACK, MAX_GRAPH_CLUSTERS, NEIGHBORS, cluster_layout};

/// Bytes of embeddings per partition file aimed at (and so the memory of
/// processing one partition).
pub const TARGET_PARTITION_BYTES: u64 = 64 << 20;
/// At most this many partition files (so per-task write buffers stay small).
pub const MAX_PARTITIONS: usize = 64;
/// A task's buffer for one partition is flushed at this many bytes.
const FLUSH_BYTES: usize = 512 << 10;
/// Buffer of the spill files' readers and writers: well below a flushed
/// batch, so batch bodies go straight between the file and their arrays
/// instead of through the buffer (one copy fewer each way).
const IO_BUFFER_BYTES: usize = 64 << 10;

/// Partition files being written by the score pass.
pub struct ClusterSpill {
    dir: SpillDir,
    dim: usize,
    schema: SchemaRef,
    writers: Vec<Mutex<StreamWriter<BufWriter<File>>>>,
    layout: Layout,
    rows: AtomicU64,
}

/// Partition of each cluster: `cluster mod partitions`, or a table
/// ([`cluster_layout`]).
#[derive(Debug, Clone)]
enum Layout {
    Modulo(usize),
    Table(Arc<[u32]>),
}

impl Layout {
    fn of(&self, cluster: u32) -> usize {
        match self {
            Layout::Modulo(p) => cluster as usize % p,
            Layout::Table(t) => t[cluster as usize] as usize,
        }
    }
}

/// Partition files once written, read back one at a time.
pub struct SpilledClusters {
    dir: SpillDir,
    dim: usize,
    paths: Vec<PathBuf>,
    layout: Layout,
    /// Rows spilled.
    pub rows: u64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// A temporary folder removed on drop.
pub(crate) struct SpillDir(PathBuf);

impl SpillDir {
    /// A new folder `dprune-{what}-{pid}-{nanos}` in `parent` (default: the
    /// system temporary folder).
    pub(crate) fn create(parent: Option<&Path>, what: &str) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let parent = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent).map_err(|e| Error::io("creating", &parent, e))?;
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = parent.join(format!("dprune-{what}-{}-{nanos}-{n}", std::process::id()));
            // `create_dir`, not `create_dir_all`: a folder that exists is someone else's.
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(SpillDir(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("creating", &path, e)),
            }
        }
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Drops a value (spilled partitions) on a thread of its own, and waits for that
/// when dropped itself. Removing a gigabyte of spill files frees their page-cache
/// pages, a tenth of a second the run can spend selecting and writing instead; the
/// files are still gone when the run returns (or fails).
pub(crate) struct DropBehind(Option<std::thread::JoinHandle<()>>);

impl DropBehind {
    /// Starts dropping `value`; if no thread can be started, `spawn` drops the
    /// closure, and `value` with it, right here.
    pub(crate) fn new<T: Send + 'static>(value: T) -> Self {
        let spawned = std::thread::Builder::new()
            .name("dprune-drop".into())
            .spawn(move || drop(value));
        DropBehind(spawned.ok())
    }
}

impl Drop for DropBehind {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// Runs `work(p, &part)` on partitions `p = 0..parts` in order, while partition
/// p + 1 is `read` on a thread of its own (so at most two are in memory). `read`
/// gets the part of p − 1 back, once `work` is done with it, to reuse its buffers:
/// a partition is tens of MB, and fresh memory costs a page fault and a zeroed
/// page every 4 KiB. The first error, of a read or of `work`, ends the run.
pub(crate) fn for_each_prefetched<P: Send>(
    parts: usize,
    read: impl Fn(usize, Option<P>) -> Result<P> + Sync,
    mut work: impl FnMut(usize, &P) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let read = &read;
        let start = |p: usize, spare: Option<P>| scope.spawn(move || read(p, spare));
        let mut next = (parts > 0).then(|| start(0, None));
        let mut spare = None;
        for p in 0..parts {
            let part = next
                .take()
                .ok_or_else(|| Error::Internal("spill reader missing".into()))?
                .join()
                .map_err(|_| Error::Internal(format!("reading spill partition {p} panicked")))??;
            next = (p + 1 < parts).then(|| start(p + 1, spare.take()));
            work(p, &part)?;
            spare = Some(part);
        }
        Ok(())
    })
}

/// The number of partitions for `rows` rows of `dim` floats in `k` clusters.
pub fn partitions_for(rows: u64, dim: usize, k: usize) -> usize {
    let bytes = rows * (dim as u64 * 4 + 4);
    let p = bytes.div_ceil(TARGET_PARTITION_BYTES).max(1) as usize;
    p.min(MAX_PARTITIONS).min(k.max(1))
}

impl ClusterSpill {
    /// Creates `partitions` empty files in a new folder under `parent`
    /// (the system temporary folder when `None`).
    pub fn create(parent: Option<&Path>, dim: usize, partitions: usize) -> Result<Self> {
        Self::create_in(parent, dim, partitions, Layout::Modulo(partitions.max(1)))
    }

    /// Like [`ClusterSpill::create`], cluster `c` going to partition `layout[c]`
    /// (from [`cluster_layout`]; every entry below `partitions`).
    ///
    /// # Errors
    /// An internal error when an entry is out of range.
    pub fn create_with_layout(
        parent: Option<&Path>,
        dim: usize,
        partitions: usize,
        layout: Arc<[u32]>,
    ) -> Result<Self> {
        if let Some(&bad) = layout.iter().find(|&&p| p as usize >= partitions.max(1)) {
            return Err(Error::Internal(format!(
                "spill layout names partition {bad} of {partitions}"
            )));
        }
        Self::create_in(parent, dim, partitions, Layout::Table(layout))
    }

    fn create_in(parent: Option<&Path>, dim: usize, partitions: usize, layout: Layout) -> Result<Self> {
        let dir = SpillDir::create(parent, "spill")?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("row", DataType::UInt32, false),
            Field::new(
                "emb",
                DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), dim as i32),
                false,
            ),
        ]));
        let mut writers = Vec::with_capacity(partitions);
        for p in 0..partitions.max(1) {
            let path = dir.0.join(format!("part-{p:03}.arrows"));
            let f = File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
            let w = StreamWriter::try_new(BufWriter::with_capacity(IO_BUFFER_BYTES, f), &schema)
                .map_err(|source| Error::Arrow { path, source })?;
            writers.push(Mutex::new(w));
        }
        Ok(ClusterSpill {
            dir,
            dim,
            schema,
            writers,
            layout,
            rows: AtomicU64::new(0),
        })
    }

    /// Number of partitions.
    pub fn partitions(&self) -> usize {
        self.writers.len()
    }

    /// The partition holding `cluster`.
    pub fn partition_of(&self, cluster: u32) -> usize {
        self.layout.of(cluster)
    }

    /// A per-task buffer; rows pushed to it reach the files on
    /// [`SpillBuffer::flush`] (also done when it fills).
    pub fn buffer(&self) -> SpillBuffer<'_> {
        let p = self.writers.len();
        SpillBuffer {
            spill: self,
            ids: vec![Vec::new(); p],
            values: vec![Vec::new(); p],
        }
    }

    fn write(&self, p: usize, ids: Vec<u32>, values: Vec<f32>) -> Result<()> {
        let n = ids.len();
        let path = self.dir.0.join(format!("part-{p:03}.arrows"));
        let arrow_err = |source| Error::Arrow {
            path: path.clone(),
            source,
        };
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let emb = FixedSizeListArray::try_new(item, self.dim as i32, Arc::new(Float32Array::from(values)), None)
            .map_err(arrow_err)?;
        let batch = RecordBatch::try_new(
            self.schema.clone(),
            vec![Arc::new(UInt32Array::from(ids)), Arc::new(emb)],
        )
        .map_err(arrow_err)?;
        self.writers[p]
            .lock()
            .map_err(|_| Error::Internal("spill writer lock poisoned".into()))?
            .write(&batch)
            .map_err(arrow_err)?;
        self.rows.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Closes the files.
    pub fn finish(self) -> Result<SpilledClusters> {
        let mut paths = Vec::with_capacity(self.writers.len());
        let mut bytes = 0;
        for (p, w) in self.writers.into_iter().enumerate() {
            let path = self.dir.0.join(format!("part-{p:03}.arrows"));
            let mut w = w
                .into_inner()
                .map_err(|_| Error::Internal("spill writer lock poisoned".into()))?;
            w.finish().map_err(|source| Error::Arrow {
                path: path.clone(),
                source,
            })?;
            drop(w);
            bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            paths.push(path);
        }
        Ok(SpilledClusters {
            dir: self.dir,
            dim: self.dim,
            paths,
            layout: self.layout,
            rows: self.rows.into_inner(),
            bytes,
        })
    }
}

/// Rows waiting to be written, per partition (one per task: no locking
/// until a buffer fills).
pub struct SpillBuffer<'a> {
    spill: &'a ClusterSpill,
    ids: Vec<Vec<u32>>,
    values: Vec<Vec<f32>>,
}

impl SpillBuffer<'_> {
    /// Adds row `row` of `cluster` with unit embedding `x`.
    pub fn push(&mut self, cluster: u32, row: u32, x: &[f32]) -> Result<()> {
        let p = self.spill.partition_of(cluster);
        self.ids[p].push(row);
        self.values[p].extend_from_slice(x);
        if self.values[p].len() * 4 >= FLUSH_BYTES {
            self.flush_one(p)?;
        }
        Ok(())
    }

    fn flush_one(&mut self, p: usize) -> Result<()> {
        if self.ids[p].is_empty() {
            return Ok(());
        }
        // The next batch gets its whole capacity at once, not by doubling (each doubling
        // copies what was pushed so far).
        let rows = self.ids[p].len();
        let ids = std::mem::replace(&mut self.ids[p], Vec::with_capacity(rows));
        let values = std::mem::replace(&mut self.values[p], Vec::with_capacity(rows * self.spill.dim));
        self.spill.write(p, ids, values)
    }

    /// Writes everything buffered.
    pub fn flush(&mut self) -> Result<()> {
        (0..self.ids.len()).try_for_each(|p| self.flush_one(p))
    }
}

impl SpilledClusters {
    /// Number of partitions.
    pub fn partitions(&self) -> usize {
        self.paths.len()
    }

    /// The partition holding `cluster` (as when written).
    pub fn partition_of(&self, cluster: u32) -> usize {
        self.layout.of(cluster)
    }

    /// The folder holding the files (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Row ids and embeddings (`ids.len() × dim`) of partition `p`, in the
    /// order written (callers sort by row id where order matters).
    pub fn read_partition(&self, p: usize) -> Result<(Vec<u32>, Vec<f32>)> {
        let (mut ids, mut values) = (Vec::new(), Vec::new());
        self.read_partition_into(p, &mut ids, &mut values)?;
        Ok((ids, values))
    }

    /// [`SpilledClusters::read_partition`] into buffers that are cleared first and
    /// reused: a partition is tens of MB, and fresh memory costs a page fault and a
    /// zeroed page every 4 KiB. Each batch's two buffers are read from the file
    /// straight into `ids` and `values`, not through Arrow's reader (`spill::ipc`).
    pub fn read_partition_into(&self, p: usize, ids: &mut Vec<u32>, values: &mut Vec<f32>) -> Result<()> {
        let path = &self.paths[p];
        // About the file's size in values up front: no doubling copies.
        let bytes = std::fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0);
        let rows = bytes / (4 * self.dim + 4);
        ids.clear();
        values.clear();
        ids.reserve(rows);
        values.reserve(rows * self.dim);
        if cfg!(target_endian = "little") {
            read_ipc_stream(path, self.dim, ids, values)
        } else {
            read_ipc_arrow(path, self.dim, ids, values)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spill_dropped_behind_is_gone_once_the_guard_is() {
        let parent = tempfile::tempdir().unwrap();
        let spill = ClusterSpill::create(Some(parent.path()), 3, 2).unwrap();
        {
            let mut b = spill.buffer();
            b.push(1, 7, &[1.0, 2.0, 3.0]).unwrap();
            b.flush().unwrap();
        }
        let done = spill.finish().unwrap();
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
        let guard = DropBehind::new(done);
        drop(guard);
        assert_eq!(
            std::fs::read_dir(parent.path()).unwrap().count(),
            0,
            "spill folder left behind"
        );
    }

    #[test]
    fn rows_come_back_in_their_cluster_partition_and_the_folder_is_removed() {
        let parent = tempfile::tempdir().unwrap();
        let spill = ClusterSpill::create(Some(parent.path()), 3, 4).unwrap();
        {
            let mut a = spill.buffer();
            let mut b = spill.buffer();
            for row in 0..1000u32 {
                let x = [row as f32, 1.0, -(row as f32)];
                let buf = if row % 2 == 0 { &mut a } else { &mut b };
                buf.push(row % 10, row, &x).unwrap();
            }
            a.flush().unwrap();
            b.flush().unwrap();
        }
        let done = spill.finish().unwrap();
        let dir = done.dir().to_path_buf();
        assert_eq!((done.rows, done.partitions()), (1000, 4));
        let mut seen = 0;
        // Reused buffers (holding other values first, and each partition's after it is
        // read: larger ones before smaller) hold exactly what a fresh read does.
        let (mut ri, mut rv) = (vec![7u32; 5000], vec![9.0f32; 5000]);
        for p in (0..4).rev() {
            let (ids, v) = done.read_partition(p).unwrap();
            for (i, &row) in ids.iter().enumerate() {
                assert_eq!((row % 10) as usize % 4, p);
                assert_eq!(&v[i * 3..i * 3 + 3], &[row as f32, 1.0, -(row as f32)]);
            }
            done.read_partition_into(p, &mut ri, &mut rv).unwrap();
            assert_eq!((&ri, &rv), (&ids, &v));
            seen += ids.len();
        }
        assert_eq!(seen, 1000);
        assert!(dir.exists());
        drop(done);
        assert!(!dir.exists());
    }

    #[test]
    fn prefetched_partitions_come_in_order_with_the_spare_buffers() {
        // Each part records its partition and the partition whose buffer it reused.
        let reads = Mutex::new(Vec::new());
        let mut seen = Vec::new();
        for_each_prefetched(
            5,
            |p, spare: Option<(usize, Vec<usize>)>| {
                reads.lock().unwrap().push((p, spare.as_ref().map(|s| s.0)));
                let mut buf = spare.map(|s| s.1).unwrap_or_default();
                buf.push(p);
                Ok((p, buf))
            },
            |p, part| {
                seen.push((p, part.0, part.1.clone()));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            seen.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
            (0..5).map(|p| (p, p)).collect::<Vec<_>>()
        );
        // Partition p ≥ 2 is read into the buffer of p − 2 (the part `work` is done with).
        assert_eq!(seen[4].2, vec![0, 2, 4]);
        assert_eq!(seen[3].2, vec![1, 3]);
        let mut r = reads.into_inner().unwrap();
        r.sort();
        assert_eq!(r, vec![(0, None), (1, None), (2, Some(0)), (3, Some(1)), (4, Some(2))]);
        for_each_prefetched(
            0,
            |_, _: Option<()>| panic!("nothing to read"),
            |_, _| panic!("nothing to do"),
        )
        .unwrap();
    }

    #[test]
    fn a_failed_read_or_step_ends_the_prefetched_run() {
        let mut done = Vec::new();
        let e = for_each_prefetched(
            4,
            |p, _: Option<()>| {
                if p == 2 {
                    Err(Error::Internal("cannot read 2".into()))
                } else {
                    Ok(())
                }
            },
            |p, _| {
                done.push(p);
                Ok(())
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot read 2"), "{e}");
        assert_eq!(done, vec![0, 1]);
        let e = for_each_prefetched(
            4,
            |_, _: Option<()>| Ok(()),
            |p, _| {
                if p == 1 {
                    Err(Error::Internal("step 1 failed".into()))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("step 1 failed"), "{e}");
    }

    #[test]
    fn partition_count_follows_the_data_size() {
        assert_eq!(partitions_for(1000, 32, 30), 1);
        assert_eq!(partitions_for(1_000_000, 384, 1000), 23);
        assert_eq!(partitions_for(100_000_000, 384, 1000), MAX_PARTITIONS);
        assert_eq!(partitions_for(1_000_000, 384, 5), 5);
    }
}
