//! Reading the spill files back: Arrow IPC streams of `(id: u32, embedding:
//! f32 × dim)` batches, as [`ClusterSpill`](super::ClusterSpill) writes them
//! (Arrow columnar format, <https://arrow.apache.org/docs/format/Columnar.html#ipc-streaming-format>).
//! [`read_ipc_stream`] walks the messages itself and reads each batch's two
//! buffers from the file straight into the caller's vectors; Arrow's own reader
//! ([`read_ipc_arrow`]) allocates every batch's buffers first and was a copy and
//! a zeroed allocation per batch more (0.3 CPU-s of the 1M benchmark's 1.5 GB).

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, FixedSizeListArray, Float32Array, UInt32Array};
use arrow::ipc::reader::StreamReader;

use super::IO_BUFFER_BYTES;
use crate::{Error, Result};

/// Reads a spill file with Arrow's IPC reader, which allocates every batch's
/// buffers before they are copied out (the reference for [`read_ipc_stream`], and
/// the path on big-endian machines).
pub(super) fn read_ipc_arrow(path: &Path, dim: usize, ids: &mut Vec<u32>, values: &mut Vec<f32>) -> Result<()> {
    let arrow_err = |source| Error::Arrow {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let reader =
        StreamReader::try_new(std::io::BufReader::with_capacity(IO_BUFFER_BYTES, f), None).map_err(arrow_err)?;
    for batch in reader {
        let batch = batch.map_err(arrow_err)?;
        let bad = || layout_err(path);
        let r = batch.column(0).as_any().downcast_ref::<UInt32Array>().ok_or_else(bad)?;
        let e = batch
            .column(1)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .ok_or_else(bad)?;
        let v = e.values().as_any().downcast_ref::<Float32Array>().ok_or_else(bad)?;
        if e.value_length() as usize != dim || v.len() != r.len() * dim {
            return Err(bad());
        }
        ids.extend_from_slice(r.values());
        values.extend_from_slice(v.values());
    }
    Ok(())
}

fn layout_err(path: &Path) -> Error {
    Error::Internal(format!("{}: unexpected spill layout", path.display()))
}

/// Reads a spill file (an Arrow IPC stream of `(id: u32, embedding: f32 × dim)`
/// batches without nulls or compression, as [`ClusterSpill`] writes them) by its
/// message headers: each batch's id and value buffers go from the file straight
/// into the end of `ids` and `values`, instead of into fresh Arrow buffers first
/// (a copy and a zeroed allocation per batch). Little-endian only, like the file.
pub(super) fn read_ipc_stream(path: &Path, dim: usize, ids: &mut Vec<u32>, values: &mut Vec<f32>) -> Result<()> {
    use arrow::ipc::{MessageHeader, root_as_message};
    use std::io::Read;
    let io_err = |e| Error::io("reading", path, e);
    let bad = || layout_err(path);
    let mut f = File::open(path).map_err(io_err)?;
    let mut meta = Vec::new();
    loop {
        // Message prefix: 0xFFFFFFFF then the metadata length; 0 ends the stream.
        let mut word = [0u8; 4];
        f.read_exact(&mut word).map_err(io_err)?;
        if word == [0xFF; 4] {
            f.read_exact(&mut word).map_err(io_err)?;
        }
        let len = usize::try_from(i32::from_le_bytes(word)).map_err(|_| bad())?;
        if len == 0 {
            return Ok(());
        }
        meta.resize(len, 0);
        f.read_exact(&mut meta).map_err(io_err)?;
        let msg = root_as_message(&meta).map_err(|_| bad())?;
        let body = u64::try_from(msg.bodyLength()).map_err(|_| bad())?;
        let mut at = 0u64;
        match msg.header_type() {
            MessageHeader::Schema => {}
            MessageHeader::RecordBatch => {
                let rb = msg.header_as_record_batch().ok_or_else(bad)?;
                let n = usize::try_from(rb.length()).map_err(|_| bad())?;
                let bufs = rb.buffers().ok_or_else(bad)?;
                // Validity of the ids, the ids, validity of the list, of its values, the values.
                if rb.compression().is_some() || bufs.len() != 5 {
                    return Err(bad());
                }
                for (k, b) in bufs.iter().enumerate() {
                    let (off, blen) = (
                        u64::try_from(b.offset()).map_err(|_| bad())?,
                        usize::try_from(b.length()).map_err(|_| bad())?,
                    );
                    if off < at || off + blen as u64 > body {
                        return Err(bad());
                    }
                    discard(&mut f, off - at).map_err(io_err)?;
                    match k {
                        1 if blen == 4 * n => read_append(&mut f, ids, n).map_err(io_err)?,
                        4 if blen == 4 * n * dim => read_append(&mut f, values, n * dim).map_err(io_err)?,
                        1 | 4 => return Err(bad()),
                        // Validity bitmaps of a batch without nulls: read past.
                        _ => discard(&mut f, blen as u64).map_err(io_err)?,
                    }
                    at = off + blen as u64;
                }
            }
            _ => return Err(bad()),
        }
        discard(&mut f, body - at).map_err(io_err)?;
    }
}

/// Moves past `n` bytes of `f` (padding, or a batch's empty validity bitmaps).
fn discard(f: &mut File, n: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    if n > 0 {
        let n = i64::try_from(n).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        f.seek(SeekFrom::Current(n))?;
    }
    Ok(())
}

/// Plain 32-bit values that any bit pattern is valid for.
trait Word: Copy + Default {}
impl Word for u32 {}
impl Word for f32 {}

/// Appends `n` values read from `f` (little-endian, as in memory here) to `v`, read
/// into its spare capacity directly: the memory is written once, by the kernel.
#[cfg(unix)]
fn read_append<T: Word>(f: &mut File, v: &mut Vec<T>, n: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    v.reserve(n);
    let want = n * std::mem::size_of::<T>();
    let dst = v.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    let mut done = 0;
    while done < want {
        // SAFETY: `dst .. dst + want` is spare capacity of `v` (reserved above); the
        // kernel writes into it and no reference to the uninitialised bytes is made.
        let r = unsafe { libc::read(f.as_raw_fd(), dst.add(done).cast(), want - done) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        done += r as usize;
    }
    // SAFETY: all `n` values after the length were written, and any bit pattern is a
    // valid `Word`.
    unsafe { v.set_len(v.len() + n) };
    Ok(())
}

#[cfg(not(unix))]
fn read_append<T: Word>(f: &mut File, v: &mut Vec<T>, n: usize) -> std::io::Result<()> {
    use std::io::Read;
    let at = v.len();
    v.resize(at + n, T::default());
    // SAFETY: the `n` values were just initialised; any bytes written are valid values.
    let bytes = unsafe { std::slice::from_raw_parts_mut(v[at..].as_mut_ptr().cast::<u8>(), n * 4) };
    f.read_exact(bytes)
}

#[cfg(test)]
mod tests {
    use super::super::ClusterSpill;
    use super::*;

    #[test]
    fn the_direct_reader_reads_what_arrows_does_and_rejects_damaged_files() {
        let parent = tempfile::tempdir().unwrap();
        let dim = 5;
        let spill = ClusterSpill::create(Some(parent.path()), dim, 3).unwrap();
        {
            let mut b = spill.buffer();
            // Several flushes per partition (FLUSH_BYTES), and partition 2 left empty.
            for row in 0..60_000u32 {
                let x: Vec<f32> = (0..dim).map(|j| row as f32 * 0.5 - j as f32).collect();
                b.push([0, 1, 3][row as usize % 3], row, &x).unwrap();
            }
            b.flush().unwrap();
        }
        let done = spill.finish().unwrap();
        for p in 0..3 {
            let path = &done.paths[p];
            let (mut ai, mut av, mut di, mut dv) = (Vec::new(), Vec::new(), vec![1u32; 3], vec![2.0f32; 7]);
            read_ipc_arrow(path, dim, &mut ai, &mut av).unwrap();
            di.clear();
            dv.clear();
            read_ipc_stream(path, dim, &mut di, &mut dv).unwrap();
            assert_eq!((&di, &dv), (&ai, &av), "partition {p}");
            assert_eq!(ai.len(), [40_000, 20_000, 0][p]);
            assert_eq!(av.len(), ai.len() * dim);
        }
        // A truncated file, and one read with the wrong dimension, are errors.
        let path = done.paths[0].clone();
        let bytes = std::fs::read(&path).unwrap();
        let cut = parent.path().join("cut.arrows");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let (mut i, mut v) = (Vec::new(), Vec::new());
        assert!(read_ipc_stream(&cut, dim, &mut i, &mut v).is_err());
        let (mut i, mut v) = (Vec::new(), Vec::new());
        let e = read_ipc_stream(&path, dim + 1, &mut i, &mut v).unwrap_err();
        assert!(e.to_string().contains("unexpected spill layout"), "{e}");
    }
}
