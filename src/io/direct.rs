//! Output files written around the page cache: `O_DIRECT` on Linux, in
//! aligned chunks handed to a writer thread.
//!
//! Why: a pruned shard is synced to disk before its rename anyway
//! ([`super::writer::Unsynced::commit`]), so a buffered write pays twice, once
//! copying every byte into freshly allocated page-cache pages, once writing
//! them back. With `O_DIRECT` the device reads the bytes straight from our
//! buffer. On the 2-core VM of the benchmarks, 800 MB took 2.4 s of system
//! time buffered (the page-cache copy) and 0.06 s direct, for 0.5 s of device
//! time that overlaps the compression of the next chunk here.
//!
//! `O_DIRECT` wants the buffer, the length and the file offset aligned to the
//! device's logical block; [`ALIGN`] = 4096 covers the usual 512 and 4096.
//! Full chunks go direct; the unaligned tail is written buffered (the flag is
//! cleared with `fcntl`) at close. A filesystem that refuses the flag
//! (tmpfs: `EINVAL` at open or at the first write) gets buffered writes
//! through the same thread; so does every other OS. `DPRUNE_DIRECT_IO=0`
//! turns it off (for comparisons).
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Alignment of buffers, lengths and offsets of direct writes.
pub const ALIGN: usize = 4096;

/// Bytes per write handed to the writer thread (two chunks per file in memory).
pub const CHUNK_BYTES: usize = 8 << 20;

/// One page of an aligned buffer.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u8; ALIGN]);

/// A buffer aligned to [`ALIGN`], a whole number of pages long.
struct Chunk(Vec<Page>);

impl Chunk {
    fn new(bytes: usize) -> Self {
        Chunk(vec![Page([0; ALIGN]); bytes.div_ceil(ALIGN)])
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `Page` is `repr(C)` plain bytes; the pages are contiguous.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), self.0.len() * ALIGN) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), self.0.len() * ALIGN) }
    }
}

/// A file being written front to back; see the module doc. Call
/// [`OutputFile::finish`]: dropped unfinished, it loses the last chunk (the
/// caller deletes such a file anyway) and its thread ends after the chunk
/// in flight.
pub struct OutputFile {
    file: Arc<File>,
    /// Bytes per chunk (a multiple of [`ALIGN`]).
    size: usize,
    chunk: Chunk,
    filled: usize,
    /// File offset of `chunk[0]`.
    offset: u64,
    /// The chunk the writer thread is not holding, once made.
    spare: Option<Chunk>,
    in_flight: bool,
    /// Chunks to write (and where); written chunks come back.
    to_writer: Option<SyncSender<(Chunk, u64)>>,
    from_writer: Receiver<io::Result<Chunk>>,
    writer: Option<JoinHandle<()>>,
}

impl OutputFile {
    /// Creates (truncates) `path` for writing in [`CHUNK_BYTES`] chunks.
    pub fn create(path: &Path) -> io::Result<Self> {
        Self::open_with(path, CHUNK_BYTES, direct_wanted())
    }

    /// Chunks of `bytes`, rounded up to [`ALIGN`]; direct where `direct` and the
    /// filesystem allow it.
    fn open_with(path: &Path, bytes: usize, direct: bool) -> io::Result<Self> {
        let size = bytes.max(1).div_ceil(ALIGN) * ALIGN;
        let file = Arc::new(open(path, direct)?);
        let (to_writer, jobs) = sync_channel::<(Chunk, u64)>(1);
        let (done, from_writer) = sync_channel(1);
        let f = file.clone();
        let writer = std::thread::Builder::new()
            .name("dprune-writer".into())
            .spawn(move || {
                for (chunk, at) in jobs {
                    let r = write_at(&f, chunk.bytes(), at).map(|()| chunk);
                    if done.send(r).is_err() {
                        break;
                    }
                }
            })?;
        Ok(OutputFile {
            file,
            size,
            chunk: Chunk::new(size),
            filled: 0,
            offset: 0,
            spare: None,
            in_flight: false,
            to_writer: Some(to_writer),
            from_writer,
            writer: Some(writer),
        })
    }

    /// Waits for the chunk in flight; its error, if any.
    fn wait(&mut self) -> io::Result<()> {
        if self.in_flight {
            self.in_flight = false;
            let back = self.from_writer.recv().map_err(|_| writer_gone())??;
            self.spare = Some(back);
        }
        Ok(())
    }

    /// Hands the full chunk to the writer thread.
    fn send(&mut self) -> io::Result<()> {
        self.wait()?;
        let next = self.spare.take().unwrap_or_else(|| Chunk::new(self.size));
        let full = std::mem::replace(&mut self.chunk, next);
        let tx = self.to_writer.as_ref().ok_or_else(writer_gone)?;
        tx.send((full, self.offset)).map_err(|_| writer_gone())?;
        self.in_flight = true;
        self.offset += self.size as u64;
        self.filled = 0;
        Ok(())
    }

    /// Writes what is left and returns the file (not yet synced).
    pub fn finish(mut self) -> io::Result<File> {
        self.wait()?;
        self.to_writer = None;
        if let Some(h) = self.writer.take() {
            h.join().map_err(|_| writer_gone())?;
        }
        let aligned = self.filled / ALIGN * ALIGN;
        write_at(&self.file, &self.chunk.bytes()[..aligned], self.offset)?;
        if aligned < self.filled {
            set_direct(&self.file, false)?;
            write_at(
                &self.file,
                &self.chunk.bytes()[aligned..self.filled],
                self.offset + aligned as u64,
            )?;
        }
        // The thread is joined: this is the only handle left.
        Arc::try_unwrap(self.file).map_err(|_| writer_gone())
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.size - self.filled);
        self.chunk.bytes_mut()[self.filled..self.filled + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        if self.filled == self.size {
            self.send()?;
        }
        Ok(n)
    }

    /// Only reports the last failed chunk: partial chunks cannot be written
    /// direct, so they wait for [`OutputFile::finish`].
    fn flush(&mut self) -> io::Result<()> {
        self.wait()
    }
}

fn writer_gone() -> io::Error {
    io::Error::other("the output writer thread stopped")
}

/// Whether direct writes are wanted (`DPRUNE_DIRECT_IO=0` says no).
fn direct_wanted() -> bool {
    std::env::var("DPRUNE_DIRECT_IO").map_or(true, |v| v != "0")
}

#[cfg(target_os = "linux")]
fn open(path: &Path, direct: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if direct {
        // tmpfs and some others refuse the flag: buffered then.
        if let Ok(f) = o.clone().custom_flags(libc::O_DIRECT).open(path) {
            return Ok(f);
        }
    }
    o.open(path)
}

#[cfg(not(target_os = "linux"))]
fn open(path: &Path, _direct: bool) -> io::Result<File> {
    File::create(path)
}

/// Sets or clears `O_DIRECT` on `f`.
#[cfg(target_os = "linux")]
fn set_direct(f: &File, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on an open descriptor we own; F_GETFL/F_SETFL touch only its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let want = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if want != flags && unsafe { libc::fcntl(fd, libc::F_SETFL, want) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_: &File, _: bool) -> io::Result<()> {
    Ok(())
}

/// Writes all of `buf` at `at`; if the file refuses a direct write
/// (`EINVAL`: the device wants a larger alignment), clears the flag and
/// writes buffered from then on.
fn write_at(f: &File, buf: &[u8], at: u64) -> io::Result<()> {
    match write_all_at(f, buf, at) {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            set_direct(f, false)?;
            write_all_at(f, buf, at)
        }
        r => r,
    }
}

#[cfg(unix)]
fn write_all_at(f: &File, buf: &[u8], at: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, at)
}

#[cfg(not(unix))]
fn write_all_at(mut f: &File, buf: &[u8], at: u64) -> io::Result<()> {
    use std::io::Seek;
    f.seek(io::SeekFrom::Start(at))?;
    f.write_all(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lengths around the chunk and page edges, each read back whole, direct and buffered.
    #[test]
    fn every_length_reads_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let lens = [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 7,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            2 * CHUNK_BYTES + 5000,
        ];
        for (len, direct) in lens.into_iter().flat_map(|l| [(l, true), (l, false)]) {
            let path = dir.path().join(format!("f{len}-{direct}"));
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut w = OutputFile::open_with(&path, CHUNK_BYTES, direct).unwrap();
            // Uneven pieces, as Parquet's writer hands them over.
            for piece in data.chunks(3000 + len % 7) {
                w.write_all(piece).unwrap();
            }
            let f = w.finish().unwrap();
            f.sync_all().unwrap();
            drop(f);
            assert_eq!(std::fs::read(&path).unwrap(), data, "length {len}, direct {direct}");
        }
    }

    #[test]
    fn small_chunks_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for len in [3 * CHUNK_BYTES / 2 + 3, ALIGN * 5, 10_000, ALIGN, 1, 0] {
            let path = dir.path().join(format!("s{len}"));
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
            let mut w = OutputFile::open_with(&path, 5000, true).unwrap();
            w.write_all(&data).unwrap();
            drop(w.finish().unwrap());
            assert_eq!(std::fs::read(&path).unwrap(), data, "length {len}");
        }
    }

    #[test]
    fn an_existing_file_is_replaced_not_overlaid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 3 * ALIGN]).unwrap();
        let mut w = OutputFile::create(&path).unwrap();
        w.write_all(b"short").unwrap();
        drop(w.finish().unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
    }
}
