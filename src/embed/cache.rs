//! On-disk embeddings: a streaming `.npy` writer (sidecars and cache
//! files, rows appended as they are encoded, renamed into place only when
//! complete) and the per-shard cache of encoded columns.
//!
//! A cache entry is `KEY.npy` (`rows × dim` float32) plus `KEY.nulls` (one
//! byte per row, 1 = null text), where KEY hashes the shard's canonical
//! path, size and modification time, the column and the encoder's identity
//! (model and tokenizer SHA-256, output, truncation, normalisation), so a
//! changed file or model never reads a stale entry.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::io::AtomicFile;
use crate::io::Shard;
use crate::io::npy::{self, NpyDtype};
use crate::{Error, Result};

/// Element type written by [`NpyWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NpyOut {
    F32,
    F16,
}

/// Writes a `rows × cols` `.npy` matrix row block by row block.
pub(crate) struct NpyWriter {
    atomic: AtomicFile,
    w: BufWriter<File>,
    rows: u64,
    cols: usize,
    written: u64,
    dtype: NpyOut,
}

impl NpyWriter {
    /// Starts `path` (written under a temporary name) for `rows × cols` values.
    pub(crate) fn create(path: &Path, rows: u64, cols: usize, dtype: NpyOut) -> Result<Self> {
        let descr = match dtype {
            NpyOut::F32 => "<f4",
            NpyOut::F16 => "<f2",
        };
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
        let total = 6 + 4 + header.len() + 1;
        header.push_str(&" ".repeat((64 - total % 64) % 64));
        header.push('\n');
        let atomic = AtomicFile::new(path)?;
        let f = File::create(atomic.tmp_path()).map_err(|e| Error::io("creating", atomic.tmp_path(), e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let io = |e| Error::io("writing", path, e);
        w.write_all(b"\x93NUMPY").map_err(io)?;
        w.write_all(&[1, 0]).map_err(io)?;
        w.write_all(&(header.len() as u16).to_le_bytes()).map_err(io)?;
        w.write_all(header.as_bytes()).map_err(io)?;
        Ok(NpyWriter {
            atomic,
            w,
            rows,
            cols,
            written: 0,
            dtype,
        })
    }

    /// Appends whole rows.
    pub(crate) fn write_rows(&mut self, values: &[f32]) -> Result<()> {
        if self.cols == 0 || !values.len().is_multiple_of(self.cols) {
            return Err(Error::Internal(format!(
                "{} values for rows of {}",
                values.len(),
                self.cols
            )));
        }
        let path = self.atomic.dest().to_path_buf();
        let io = |e| Error::io("writing", &path, e);
        match self.dtype {
            NpyOut::F32 => crate::io::le::with_bytes(values, |b| self.w.write_all(b)),
            NpyOut::F16 => {
                let buf: Vec<u8> = values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect();
                self.w.write_all(&buf)
            }
        }
        .map_err(io)?;
        self.written += (values.len() / self.cols) as u64;
        Ok(())
    }

    /// Checks the row count, flushes and renames into place.
    pub(crate) fn finish(self) -> Result<()> {
        let dest = self.atomic.dest().to_path_buf();
        if self.written != self.rows {
            return Err(Error::Internal(format!(
                "{}: wrote {} rows, header says {}",
                dest.display(),
                self.written,
                self.rows
            )));
        }
        let f = self
            .w
            .into_inner()
            .map_err(|e| Error::io("writing", &dest, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io("writing", &dest, e))?;
        drop(f);
        self.atomic.commit()
    }
}

/// The cache files of one shard.
#[derive(Debug, Clone)]
pub(crate) struct CacheEntry {
    pub(crate) npy: PathBuf,
    pub(crate) nulls: PathBuf,
}

impl CacheEntry {
    /// The entry for `shard`'s `column` under `identity` in `dir`.
    pub(crate) fn for_shard(dir: &Path, shard: &Shard, column: &str, identity: &str) -> Result<Self> {
        let meta = std::fs::metadata(&shard.path).map_err(|e| Error::io("reading", &shard.path, e))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let canon = std::fs::canonicalize(&shard.path).unwrap_or_else(|_| shard.path.clone());
        let mut h = Sha256::new();
        h.update(format!(
            "dprune-cache-v1\n{}\n{}\n{mtime}\n{column}\n{identity}",
            canon.display(),
            meta.len()
        ));
        let key = format!("{:x}", h.finalize());
        let stem = shard
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let base = format!("{stem}-{}", &key[..24]);
        Ok(CacheEntry {
            npy: dir.join(format!("{base}.npy")),
            nulls: dir.join(format!("{base}.nulls")),
        })
    }

    /// Whether a complete entry of `rows × dim` exists.
    pub(crate) fn is_complete(&self, rows: u64, dim: usize) -> bool {
        let Ok(h) = npy::read_header(&self.npy) else {
            return false;
        };
        let nulls_ok = std::fs::metadata(&self.nulls).is_ok_and(|m| m.len() == rows);
        h.rows == rows && h.cols == dim && h.dtype == NpyDtype::F32 && nulls_ok
    }

    /// Reads the null flags.
    pub(crate) fn read_nulls(&self) -> Result<Vec<bool>> {
        let b = std::fs::read(&self.nulls).map_err(|e| Error::io("reading", &self.nulls, e))?;
        Ok(b.into_iter().map(|x| x != 0).collect())
    }

    /// Writes the null flags (before the `.npy`, which marks completion).
    pub(crate) fn write_nulls(&self, null: &[bool]) -> Result<()> {
        let a = AtomicFile::new(&self.nulls)?;
        let bytes: Vec<u8> = null.iter().map(|&n| n as u8).collect();
        std::fs::write(a.tmp_path(), bytes).map_err(|e| Error::io("writing", a.tmp_path(), e))?;
        a.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_npy_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.npy");
        let mut w = NpyWriter::create(&p, 3, 2, NpyOut::F32).unwrap();
        w.write_rows(&[1.0, 2.0]).unwrap();
        w.write_rows(&[3.0, 4.0, 5.0, 6.0]).unwrap();
        assert!(!p.exists(), "only complete files appear");
        w.finish().unwrap();
        let (v, r, c) = npy::read_matrix(&p).unwrap();
        assert_eq!((v, r, c), (vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2));

        let p16 = d.path().join("h.npy");
        let mut w = NpyWriter::create(&p16, 1, 2, NpyOut::F16).unwrap();
        w.write_rows(&[0.5, -1.0]).unwrap();
        w.finish().unwrap();
        assert_eq!(npy::read_matrix(&p16).unwrap().0, vec![0.5, -1.0]);
    }

    #[test]
    fn short_writes_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.npy");
        let mut w = NpyWriter::create(&p, 3, 2, NpyOut::F32).unwrap();
        w.write_rows(&[1.0, 2.0]).unwrap();
        assert!(w.finish().is_err());
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "temporary removed");
    }
}
