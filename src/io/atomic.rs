//! Outputs that appear only when complete: write to a hidden temporary
//! name in the destination folder, rename over the destination on
//! [`AtomicFile::commit`], delete the temporary file if dropped earlier.
//!
//! A crash can leave a `.NAME.dprune-tmp-*` file behind, never a file with
//! the final name and partial content.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A destination path and its temporary twin.
#[derive(Debug)]
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl AtomicFile {
    /// Prepares to write `dest`; the caller writes to [`Self::tmp_path`].
    pub fn new(dest: &Path) -> Result<Self> {
        let name = dest
            .file_name()
            .ok_or_else(|| Error::param("output", format!("{} has no file name", dest.display())))?
            .to_string_lossy();
        let tag = format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let tmp = dest.with_file_name(format!(".{name}.dprune-tmp-{tag}"));
        Ok(AtomicFile {
            tmp,
            dest: dest.to_path_buf(),
            done: false,
        })
    }

    /// Where to write.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// The final path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Renames the temporary file to the destination.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io("renaming into", &self.dest, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Checks an output folder before anything is written: a path is given,
/// it is a folder if it exists, and it is empty unless `overwrite`.
pub fn check_output_dir(dir: &Path, overwrite: bool) -> Result<()> {
    if dir.as_os_str().is_empty() {
        return Err(Error::param("--output", "no output folder given"));
    }
    if dir.exists() && !dir.is_dir() {
        return Err(Error::param(
            "--output",
            format!("{} exists and is not a folder", dir.display()),
        ));
    }
    let non_empty = dir.is_dir()
        && std::fs::read_dir(dir)
            .map_err(|e| Error::io("reading", dir, e))?
            .next()
            .is_some();
    if non_empty && !overwrite {
        return Err(Error::OutputExists {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_renames_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.txt");
        let a = AtomicFile::new(&dest).unwrap();
        std::fs::write(a.tmp_path(), b"x").unwrap();
        assert!(!dest.exists());
        a.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"x");

        let b = AtomicFile::new(&dir.path().join("b.txt")).unwrap();
        std::fs::write(b.tmp_path(), b"half").unwrap();
        let tmp = b.tmp_path().to_path_buf();
        drop(b);
        assert!(!tmp.exists());
        assert!(!dir.path().join("b.txt").exists());
    }
}
