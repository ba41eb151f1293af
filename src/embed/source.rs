//! Encoding a column of the shards: the pipelined stream (a helper thread
//! reads and tokenises the next batch while the model runs on the current
//! one) and [`TextSource`], the [`EmbeddingSource`] that `filter` uses with
//! `--model` / `--text-col`, backed by the per-shard cache.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;

use crate::embed::cache::{CacheEntry, NpyOut, NpyWriter};
use crate::embed::{Encoder, EncoderSpec, InputKind, Prepared};
use crate::io::embeddings::column_reader;
use crate::io::embeddings::{BlockIter, EmbeddingBlock, EmbeddingSource};
use crate::io::npy::{self, RowReader};
use crate::io::{Dataset, Shard};
use crate::{Error, Result};

/// Whether `dt` can be read as text.
fn is_text(dt: &DataType) -> bool {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => matches!(**v, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
        _ => false,
    }
}

/// Whether `dt` can hold images: encoded bytes, or file paths as strings.
fn is_image(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_)
    ) || is_text(dt)
}

/// Checks that `column` exists in every shard with a type `kind` can read.
pub(crate) fn check_column(data: &Dataset, column: &str, kind: InputKind) -> Result<()> {
    let (ok, want, what): (fn(&DataType) -> bool, &str, &str) = match kind {
        InputKind::Text => (is_text, "a string column (utf8)", "text"),
        InputKind::Image => (
            is_image,
            "a binary column of encoded images or a string column of paths",
            "image",
        ),
    };
    for s in &data.shards {
        let f = s.schema.field_with_name(column).map_err(|_| Error::EmbeddingColumn {
            path: s.path.clone(),
            reason: format!(
                "no {what} column `{column}`; columns are: {}",
                s.schema
                    .fields()
                    .iter()
                    .map(|f| format!("{} ({})", f.name(), f.data_type()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
        if !ok(f.data_type()) {
            return Err(Error::EmbeddingColumn {
                path: s.path.clone(),
                reason: format!(
                    "column `{column}` has type {}, expected {want} to embed as {what}",
                    f.data_type()
                ),
            });
        }
    }
    Ok(())
}

/// The texts of a string column (`None` for nulls).
pub(crate) fn texts_of(col: &ArrayRef) -> Result<Vec<Option<String>>> {
    let owned;
    let col = match col.data_type() {
        DataType::Utf8 => col,
        _ => {
            owned = arrow::compute::cast(col, &DataType::Utf8).map_err(|e| Error::Internal(e.to_string()))?;
            &owned
        }
    };
    let s = col.as_string::<i32>();
    Ok((0..s.len())
        .map(|i| s.is_valid(i).then(|| s.value(i).to_string()))
        .collect())
}

/// One encoded batch of a shard.
pub(crate) struct Encoded {
    /// The rows read (only the text column unless all columns were asked for).
    pub(crate) batch: RecordBatch,
    /// `rows × dim` embeddings; null texts give zeros.
    pub(crate) values: Vec<f32>,
    /// Per row: the text was null.
    pub(crate) null: Vec<bool>,
    /// Seconds spent in the model for this batch.
    pub(crate) infer_s: f64,
}

/// Streams a shard's rows with their embeddings, in order. A helper
/// thread reads and prepares (tokenises) batch `i + 1` while the caller's
/// thread runs the model on batch `i`.
pub(crate) struct EncodeStream {
    encoder: Arc<dyn Encoder>,
    rx: Option<Receiver<Result<(RecordBatch, Prepared)>>>,
    handle: Option<JoinHandle<()>>,
}

impl EncodeStream {
    /// Starts reading `shard` in batches of `batch_rows` rows.
    pub(crate) fn start(
        encoder: Arc<dyn Encoder>,
        shard: &Shard,
        column: &str,
        all_columns: bool,
        batch_rows: usize,
    ) -> Result<Self> {
        let reader = column_reader(shard, column, batch_rows, !all_columns)?;
        let (tx, rx) = sync_channel::<Result<(RecordBatch, Prepared)>>(1);
        let enc = encoder.clone();
        let path = shard.path.clone();
        let column = column.to_string();
        let handle = std::thread::Builder::new()
            .name("dprune-tokenize".into())
            .spawn(move || {
                let mut first_row = 0u64;
                for batch in reader {
                    let item = batch
                        .map_err(|source| Error::Arrow {
                            path: path.clone(),
                            source,
                        })
                        .and_then(|batch| {
                            let col = batch.column_by_name(&column).ok_or_else(|| Error::EmbeddingColumn {
                                path: path.clone(),
                                reason: format!("no column `{column}`"),
                            })?;
                            let prepared = enc.prepare_column(col, &path, first_row)?;
                            first_row += batch.num_rows() as u64;
                            Ok((batch, prepared))
                        });
                    let stop = item.is_err();
                    if tx.send(item).is_err() || stop {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("starting a thread for", &shard.path, e))?;
        Ok(EncodeStream {
            encoder,
            rx: Some(rx),
            handle: Some(handle),
        })
    }
}

impl Iterator for EncodeStream {
    type Item = Result<Encoded>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.rx.as_ref()?.recv().ok()?;
        Some(item.and_then(|(batch, prepared)| {
            let null = prepared.null().to_vec();
            let t = std::time::Instant::now();
            let values = self.encoder.infer(prepared)?;
            Ok(Encoded {
                batch,
                values,
                null,
                infer_s: t.elapsed().as_secs_f64(),
            })
        }))
    }
}

impl Drop for EncodeStream {
    fn drop(&mut self) {
        // Closing the channel stops the helper at its next send.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Embeddings computed from a text column by an encoder, each shard
/// encoded once and then served from the cache (`--cache DIR`, or a
/// private temporary folder removed when the source is dropped).
pub struct TextSource {
    encoder: Arc<dyn Encoder>,
    column: String,
    cache_dir: PathBuf,
    private_cache: bool,
    encoded_rows: AtomicU64,
}

impl std::fmt::Debug for TextSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextSource")
            .field("encoder", self.encoder.info())
            .field("column", &self.column)
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

impl TextSource {
    /// Checks the column and builds the encoder of `spec`.
    pub fn open(data: &Dataset, spec: &EncoderSpec) -> Result<Self> {
        spec.validate()?;
        check_column(data, &spec.column, spec.kind)?;
        let encoder = spec.build()?;
        Self::with_encoder(data, &spec.column, encoder, spec.cache.clone())
    }

    /// Uses an already built encoder.
    pub fn with_encoder(
        data: &Dataset,
        column: &str,
        encoder: Arc<dyn Encoder>,
        cache: Option<PathBuf>,
    ) -> Result<Self> {
        check_column(data, column, encoder.info().input)?;
        let (cache_dir, private_cache) = match cache {
            Some(d) => (d, false),
            None => (
                std::env::temp_dir().join(format!(
                    "dprune-cache-{}-{}",
                    std::process::id(),
                    TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
                )),
                true,
            ),
        };
        std::fs::create_dir_all(&cache_dir).map_err(|e| Error::io("creating", &cache_dir, e))?;
        Ok(TextSource {
            encoder,
            column: column.to_string(),
            cache_dir,
            private_cache,
            encoded_rows: AtomicU64::new(0),
        })
    }

    /// The encoder.
    pub fn encoder(&self) -> &Arc<dyn Encoder> {
        &self.encoder
    }

    /// Rows encoded so far (cache hits are not counted).
    pub fn encoded_rows(&self) -> u64 {
        self.encoded_rows.load(Ordering::Relaxed)
    }

    fn entry(&self, shard: &Shard) -> Result<CacheEntry> {
        CacheEntry::for_shard(&self.cache_dir, shard, &self.column, &self.encoder.info().identity())
    }
}

impl Drop for TextSource {
    fn drop(&mut self) {
        if self.private_cache {
            let _ = std::fs::remove_dir_all(&self.cache_dir);
        }
    }
}

impl EmbeddingSource for TextSource {
    fn describe(&self) -> String {
        format!("{} on column `{}`", self.encoder.info().describe(), self.column)
    }

    fn dim(&self) -> usize {
        self.encoder.info().dim
    }

    fn blocks<'a>(&'a self, shard: &'a Shard, batch_rows: usize) -> Result<BlockIter<'a>> {
        let dim = self.dim();
        let entry = self.entry(shard)?;
        if entry.is_complete(shard.num_rows, dim) {
            let nulls = entry.read_nulls()?;
            let h = npy::read_header(&entry.npy)?;
            let mut r = RowReader::open(&h, 0)?;
            let mut next = 0u64;
            let batch = batch_rows.max(1) as u64;
            return Ok(Box::new(std::iter::from_fn(move || {
                if next >= h.rows {
                    return None;
                }
                let rows = batch.min(h.rows - next) as usize;
                let mut block = EmbeddingBlock {
                    first_row: next,
                    values: Vec::with_capacity(rows * dim),
                    null: nulls[next as usize..next as usize + rows].to_vec(),
                };
                next += rows as u64;
                Some(r.read_rows(rows, &mut block.values).map(|_| block))
            })));
        }
        let mut stream = EncodeStream::start(self.encoder.clone(), shard, &self.column, false, batch_rows)?;
        let mut writer = Some(NpyWriter::create(&entry.npy, shard.num_rows, dim, NpyOut::F32)?);
        let mut nulls: Vec<bool> = Vec::with_capacity(shard.num_rows as usize);
        let mut next = 0u64;
        Ok(Box::new(std::iter::from_fn(move || {
            let item = match stream.next() {
                Some(item) => item,
                None => {
                    // End of the shard: complete the cache entry.
                    let w = writer.take()?;
                    let done = entry.write_nulls(&nulls).and_then(|_| w.finish());
                    return done.err().map(Err);
                }
            };
            Some(item.and_then(|e| {
                let rows = e.null.len() as u64;
                if let Some(w) = writer.as_mut() {
                    w.write_rows(&e.values)?;
                }
                nulls.extend_from_slice(&e.null);
                self.encoded_rows.fetch_add(rows, Ordering::Relaxed);
                let block = EmbeddingBlock {
                    first_row: next,
                    values: e.values,
                    null: e.null,
                };
                next += rows;
                Ok(block)
            }))
        })))
    }
}
