//! Output checks of `filter`: refuse a non-empty folder without
//! `overwrite`, colliding shard names, and writing over an input.

use std::path::{Path, PathBuf};

use crate::pipeline::filter::OutputSpec;
use crate::{Error, Result};

/// Refuses to write into a non-empty folder without `overwrite`, and to
/// replace an input file in any case.
pub(super) fn check_output(inputs: &[PathBuf], out: &OutputSpec) -> Result<()> {
    crate::io::atomic::check_output_dir(&out.dir, out.overwrite)?;
    if let Some(c) = &out.save_centroids
        && c.exists()
        && !out.overwrite
    {
        return Err(Error::OutputExists { path: c.clone() });
    }
    // Same file names from different folders would overwrite each other.
    let mut names = std::collections::HashMap::new();
    for p in inputs {
        let name = p.file_name().unwrap_or_default().to_os_string();
        if let Some(prev) = names.insert(name.clone(), p)
            && !out.scores_only
        {
            {
                return Err(Error::param(
                    "inputs",
                    format!(
                        "{} and {} have the same file name; their pruned shards would collide in one output folder",
                        prev.display(),
                        p.display()
                    ),
                ));
            }
        }
    }
    let out_dir = canonical_dir(&out.dir);
    for p in inputs {
        let input = std::fs::canonicalize(p).map_err(|e| Error::io("reading", p, e))?;
        let dest = out_dir.join(p.file_name().unwrap_or_default());
        if !out.scores_only && dest == input {
            return Err(Error::OutputIsInput { path: dest });
        }
    }
    Ok(())
}

/// The canonical form of a folder that may not exist yet.
fn canonical_dir(dir: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(dir) {
        return c;
    }
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => canonical_dir(parent).join(name),
        _ => std::env::current_dir()
            .map(|c| c.join(dir))
            .unwrap_or_else(|_| dir.to_path_buf()),
    }
}
