//! Finding and loading ONNX Runtime at run time (`ort` with
//! `load-dynamic`): nothing is linked or downloaded at build time.
//!
//! Search order: `ORT_DYLIB_PATH`; the versioned `libonnxruntime.so.*` of
//! an installed `onnxruntime` / `onnxruntime-gpu` Python package (the wheel
//! ships no unversioned name); the system library folders. The library is
//! loaded once per process; a failure is an error that says how to
//! install one, never a panic.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::{Error, Result};

/// Environment variable naming the ONNX Runtime shared library.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// How to get a runtime, appended to every "not found" error.
pub const INSTALL_HINT: &str = "install ONNX Runtime >= 1.24 with `pip install onnxruntime` (or `onnxruntime-gpu` \
     for CUDA) and dprune finds it in the Python package, or point ORT_DYLIB_PATH at the library: \
     export ORT_DYLIB_PATH=$(python3 -c \"import onnxruntime,os,glob; print(glob.glob(os.path.join(\
     os.path.dirname(onnxruntime.__file__),'capi','libonnxruntime.so.*'))[0])\")";

/// The loaded runtime.
#[derive(Debug)]
pub struct Runtime {
    /// The library file.
    pub path: PathBuf,
    /// How it was found ("ORT_DYLIB_PATH", "python package", "system").
    pub found_by: &'static str,
    pub(crate) env: ort::environment::Environment,
}

static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();

/// An error about the model file at `path`, reported against `--model`.
pub(crate) fn model_err(path: &std::path::Path, reason: impl std::fmt::Display) -> Error {
    Error::param("--model", format!("{}: {reason}", path.display()))
}

/// Loads ONNX Runtime (once per process) and returns it.
pub fn runtime() -> Result<&'static Runtime> {
    RUNTIME
        .get_or_init(|| load().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::param("ONNX Runtime", e.clone()))
}

fn load() -> Result<Runtime> {
    let (path, found_by) = find_library()?;
    let builder = ort::init_from(&path).map_err(|e| {
        Error::param(
            "ONNX Runtime",
            format!(
                "cannot load {} (found by {found_by}): {e}; {INSTALL_HINT}",
                path.display()
            ),
        )
    })?;
    let env = builder.with_name("dprune").build().map_err(|e| {
        Error::param(
            "ONNX Runtime",
            format!("{}: cannot create the environment: {e}", path.display()),
        )
    })?;
    Ok(Runtime { path, found_by, env })
}

/// Locates the ONNX Runtime library without loading it (see the module docs).
pub fn find_library() -> Result<(PathBuf, &'static str)> {
    if let Some(p) = std::env::var_os(ORT_DYLIB_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(Error::param(
                "ONNX Runtime",
                format!(
                    "{ORT_DYLIB_ENV}={} is not a file; unset it or point it at libonnxruntime.so.*; {INSTALL_HINT}",
                    p.display()
                ),
            ));
        }
        let p = std::fs::canonicalize(&p).unwrap_or(p);
        return Ok((p, ORT_DYLIB_ENV));
    }
    if let Some(p) = newest(
        python_paths()
            .iter()
            .flat_map(|sp| lib_files(&sp.join("onnxruntime").join("capi"))),
    ) {
        return Ok((p, "python package"));
    }
    if let Some(p) = newest(system_dirs().iter().flat_map(|d| lib_files(d))) {
        return Ok((p, "system"));
    }
    Err(Error::param(
        "ONNX Runtime",
        format!(
            "no ONNX Runtime library found (looked at {ORT_DYLIB_ENV}, Python packages, system folders); {INSTALL_HINT}"
        ),
    ))
}

/// Library files in `dir`: `libonnxruntime.so`, `libonnxruntime.so.1.x.y`,
/// `libonnxruntime.dylib`, `libonnxruntime.1.x.y.dylib`, `onnxruntime.dll`.
fn lib_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let so = name == "libonnxruntime.so" || name.starts_with("libonnxruntime.so.");
            let dylib = name.starts_with("libonnxruntime") && name.ends_with(".dylib") && !name.contains("providers");
            let dll = name == "onnxruntime.dll";
            (so || dylib || dll) && p.is_file()
        })
        .collect()
}

/// The candidate with the highest version in its name (ties: first seen).
fn newest(cands: impl Iterator<Item = PathBuf>) -> Option<PathBuf> {
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    for p in cands {
        let v = version_of(&p);
        if best.as_ref().is_none_or(|(bv, _)| v > *bv) {
            best = Some((v, p));
        }
    }
    best.map(|(_, p)| p)
}

fn version_of(p: &Path) -> Vec<u64> {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.split('.').filter_map(|s| s.parse::<u64>().ok()).collect()
}

/// Python `site-packages` folders: those the interpreter reports (asked
/// with `python3 -c`, which does not import onnxruntime), then the usual
/// locations of virtual environments and system installs.
pub(crate) fn python_paths() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for py in ["python3", "python"] {
        let r = std::process::Command::new(py)
            .args(["-c", "import sys; print('\\n'.join(p for p in sys.path if p))"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output();
        if let Ok(o) = r
            && o.status.success()
        {
            out.extend(String::from_utf8_lossy(&o.stdout).lines().map(PathBuf::from));
            break;
        }
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(v).join("lib"));
    }
    if let Some(v) = std::env::var_os("CONDA_PREFIX") {
        roots.push(PathBuf::from(v).join("lib"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(h).join(".local").join("lib"));
    }
    roots.extend(["/usr/local/lib", "/usr/lib"].map(PathBuf::from));
    for r in roots {
        let Ok(rd) = std::fs::read_dir(&r) else { continue };
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("python3") {
                out.push(e.path().join("site-packages"));
                out.push(e.path().join("dist-packages"));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

fn system_dirs() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    out.extend(
        [
            "/usr/local/lib",
            "/usr/lib",
            "/usr/lib64",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/opt/onnxruntime/lib",
            "/opt/homebrew/lib",
        ]
        .map(PathBuf::from),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_highest_version() {
        let p = newest(
            [
                "/a/libonnxruntime.so.1.9.0",
                "/b/libonnxruntime.so.1.32.0",
                "/c/libonnxruntime.so.1.24.1",
            ]
            .map(PathBuf::from)
            .into_iter(),
        );
        assert_eq!(p, Some(PathBuf::from("/b/libonnxruntime.so.1.32.0")));
    }

    #[test]
    fn finds_versioned_libraries_only() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "libonnxruntime.so.1.32.0",
            "libonnxruntime_providers_shared.so",
            "onnxruntime_pybind11_state.so",
        ] {
            std::fs::write(d.path().join(n), b"").unwrap();
        }
        let names: Vec<_> = lib_files(d.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["libonnxruntime.so.1.32.0"]);
    }
}
