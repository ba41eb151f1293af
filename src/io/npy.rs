//! `.npy` files (NumPy format versions 1–3): 2-D float matrices in C
//! order, read whole (centroids) or streamed by rows (LAION-style
//! embedding sidecars, which can be larger than memory).
//!
//! Supported element types: little-endian `f2`, `f4`, `f8`. Written files
//! are format 1.0 `<f4`, the layout `numpy.save` and faiss users have.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::io::AtomicFile;
use crate::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Element type of a `.npy` matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    /// `<f2`
    F16,
    /// `<f4`
    F32,
    /// `<f8`
    F64,
}

impl NpyDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            NpyDtype::F16 => 2,
            NpyDtype::F32 => 4,
            NpyDtype::F64 => 8,
        }
    }
}

/// The header of a 2-D `.npy` file.
#[derive(Debug, Clone)]
pub struct NpyHeader {
    /// The file.
    pub path: PathBuf,
    /// Element type.
    pub dtype: NpyDtype,
    /// Rows (first axis).
    pub rows: u64,
    /// Columns (second axis).
    pub cols: usize,
    /// Byte offset of the data.
    pub data_offset: u64,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Npy {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads and checks the header of a 2-D float `.npy` file.
pub fn read_header(path: &Path) -> Result<NpyHeader> {
    parse_header(path, false)
}

/// Reads a 1-D float `.npy` vector (or an `n × 1` matrix) as f32.
pub fn read_vector(path: &Path) -> Result<Vec<f32>> {
    let h = parse_header(path, true)?;
    if h.cols != 1 {
        return Err(bad(path, format!("expected a vector, found {} x {}", h.rows, h.cols)));
    }
    let mut out = Vec::with_capacity(h.rows as usize);
    RowReader::open(&h, 0)?.read_rows(h.rows as usize, &mut out)?;
    Ok(out)
}

/// The format-level header of a `.npy` file: element type string, shape,
/// data offset and file length (checks the magic, version and C order).
fn parse_layout(path: &Path) -> Result<(String, Vec<u64>, u64, u64)> {
    let mut f = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut pre = [0u8; 10];
    f.read_exact(&mut pre)
        .map_err(|_| bad(path, "too short to be a .npy file"))?;
    if &pre[..6] != MAGIC {
        return Err(bad(path, "not a .npy file (bad magic bytes)"));
    }
    let (hlen, start) = match pre[6] {
        1 => (u16::from_le_bytes([pre[8], pre[9]]) as usize, 10u64),
        2 | 3 => {
            let mut more = [0u8; 2];
            f.read_exact(&mut more).map_err(|_| bad(path, "truncated header"))?;
            (u32::from_le_bytes([pre[8], pre[9], more[0], more[1]]) as usize, 12u64)
        }
        v => return Err(bad(path, format!("unsupported .npy format version {v}"))),
    };
    let mut h = vec![0u8; hlen];
    f.read_exact(&mut h).map_err(|_| bad(path, "truncated header"))?;
    let h = String::from_utf8_lossy(&h);
    let descr = dict_value(&h, "descr").ok_or_else(|| bad(path, "header has no 'descr'"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"').to_string();
    let fortran = dict_value(&h, "fortran_order").ok_or_else(|| bad(path, "header has no 'fortran_order'"))?;
    if fortran.trim() != "False" {
        return Err(bad(
            path,
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    let shape = dict_value(&h, "shape").ok_or_else(|| bad(path, "header has no 'shape'"))?;
    let dims: Vec<u64> = shape
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().map_err(|_| bad(path, format!("bad shape {shape}"))))
        .collect::<Result<_>>()?;
    let len = f.metadata().map_err(|e| Error::io("reading", path, e))?.len();
    Ok((descr, dims, start + hlen as u64, len))
}

fn parse_header(path: &Path, allow_1d: bool) -> Result<NpyHeader> {
    let (descr, dims, data_offset, len) = parse_layout(path)?;
    let shape = shape_text(&dims);
    let dtype = match descr.as_str() {
        "<f2" => NpyDtype::F16,
        "<f4" => NpyDtype::F32,
        "<f8" => NpyDtype::F64,
        other => {
            return Err(bad(
                path,
                format!("element type `{other}` is not supported; use little-endian float16/32/64"),
            ));
        }
    };
    let dims = if allow_1d && dims.len() == 1 {
        vec![dims[0], 1]
    } else {
        dims
    };
    if dims.len() != 2 {
        return Err(bad(
            path,
            format!("expected a 2-D array (rows, dim), found shape {shape}"),
        ));
    }
    let need = data_offset + dims[0] * dims[1] * dtype.size() as u64;
    if len < need {
        return Err(bad(path, format!("truncated: {len} bytes, the header promises {need}")));
    }
    Ok(NpyHeader {
        path: path.to_path_buf(),
        dtype,
        rows: dims[0],
        cols: dims[1] as usize,
        data_offset,
    })
}

/// A shape as NumPy prints it: `(3,)`, `(2, 384)`.
fn shape_text(dims: &[u64]) -> String {
    match dims {
        [a] => format!("({a},)"),
        _ => format!("({})", dims.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// Reads a 1-D integer `.npy` vector (or an `n × 1` matrix) of cluster
/// labels: little-endian `i1/i2/i4/i8/u1/u2/u4/u8`, as `numpy.save` writes
/// the output of faiss's `index.search` or scikit-learn's `labels_`.
/// Negative values are kept (as `-1`-style "no cluster" markers) for the
/// caller to reject with the row that holds them.
pub fn read_labels(path: &Path) -> Result<Vec<i64>> {
    let (descr, dims, data_offset, len) = parse_layout(path)?;
    let rows = match dims[..] {
        [n] | [n, 1] => n,
        _ => {
            return Err(bad(
                path,
                format!("expected a vector of labels, found shape {}", shape_text(&dims)),
            ));
        }
    };
    let (size, signed) = match descr.as_str() {
        "|i1" | "<i1" => (1, true),
        "|u1" | "<u1" => (1, false),
        "<i2" => (2, true),
        "<u2" => (2, false),
        "<i4" => (4, true),
        "<u4" => (4, false),
        "<i8" => (8, true),
        "<u8" => (8, false),
        other => {
            return Err(bad(
                path,
                format!("element type `{other}` is not supported for labels; use little-endian integers"),
            ));
        }
    };
    let need = data_offset + rows * size as u64;
    if len < need {
        return Err(bad(path, format!("truncated: {len} bytes, the header promises {need}")));
    }
    let mut f = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    f.seek(SeekFrom::Start(data_offset))
        .map_err(|e| Error::io("reading", path, e))?;
    let mut bytes = vec![0u8; rows as usize * size];
    f.read_exact(&mut bytes).map_err(|e| Error::io("reading", path, e))?;
    Ok(bytes
        .chunks_exact(size)
        .map(|b| {
            let mut w = [0u8; 8];
            w[..size].copy_from_slice(b);
            if signed && b[size - 1] & 0x80 != 0 {
                w[size..].fill(0xff); // sign extension
            }
            let v = u64::from_le_bytes(w);
            if signed {
                v as i64
            } else {
                v.min(i64::MAX as u64) as i64
            }
        })
        .collect())
}

/// The text after `'key':` up to the next top-level comma of the header dict.
fn dict_value<'a>(h: &'a str, key: &str) -> Option<&'a str> {
    let pat_a = format!("'{key}':");
    let pat_b = format!("\"{key}\":");
    let i = h
        .find(&pat_a)
        .map(|i| i + pat_a.len())
        .or_else(|| h.find(&pat_b).map(|i| i + pat_b.len()))?;
    let rest = &h[i..];
    let mut depth = 0;
    for (j, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..j].trim()),
            _ => {}
        }
    }
    Some(rest.trim())
}

/// Converts little-endian bytes of `dtype` into f32, appending to `out`.
pub fn decode_into(dtype: NpyDtype, bytes: &[u8], out: &mut Vec<f32>) {
    match dtype {
        NpyDtype::F32 => crate::io::le::extend_f32(out, bytes),
        NpyDtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        NpyDtype::F64 => out.extend(
            bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32),
        ),
    }
}

/// Reads a whole 2-D float matrix as f32: `(values, rows, cols)`.
pub fn read_matrix(path: &Path) -> Result<(Vec<f32>, usize, usize)> {
    let h = read_header(path)?;
    let mut r = RowReader::open(&h, 0)?;
    let mut out = Vec::with_capacity(h.rows as usize * h.cols);
    r.read_rows(h.rows as usize, &mut out)?;
    Ok((out, h.rows as usize, h.cols))
}

/// Streams rows of a `.npy` matrix.
pub struct RowReader {
    header: NpyHeader,
    inner: BufReader<File>,
    buf: Vec<u8>,
}

impl RowReader {
    /// Opens the file positioned at row `first_row`.
    pub fn open(header: &NpyHeader, first_row: u64) -> Result<Self> {
        let path = &header.path;
        let mut f = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let row_bytes = (header.cols * header.dtype.size()) as u64;
        f.seek(SeekFrom::Start(header.data_offset + first_row * row_bytes))
            .map_err(|e| Error::io("reading", path, e))?;
        Ok(RowReader {
            header: header.clone(),
            inner: BufReader::with_capacity(1 << 20, f),
            buf: Vec::new(),
        })
    }

    /// Appends the next `rows` rows (as f32) to `out`.
    pub fn read_rows(&mut self, rows: usize, out: &mut Vec<f32>) -> Result<()> {
        let n = rows * self.header.cols * self.header.dtype.size();
        self.buf.resize(n, 0);
        self.inner
            .read_exact(&mut self.buf)
            .map_err(|e| Error::io("reading", &self.header.path, e))?;
        decode_into(self.header.dtype, &self.buf, out);
        Ok(())
    }
}

/// Writes a `rows × cols` f32 matrix as a format-1.0 `.npy` file (atomic:
/// temporary name, then rename).
pub fn write_matrix(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    if data.len() != rows * cols {
        return Err(Error::Internal(format!(
            "write_matrix: {} values for {rows} x {cols}",
            data.len()
        )));
    }
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Pad so that data starts on a multiple of 64 bytes, ending with '\n'.
    let total = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let atomic = AtomicFile::new(path)?;
    let f = File::create(atomic.tmp_path()).map_err(|e| Error::io("creating", atomic.tmp_path(), e))?;
    let mut w = std::io::BufWriter::new(f);
    let io = |e| Error::io("writing", path, e);
    w.write_all(MAGIC).map_err(io)?;
    w.write_all(&[1, 0]).map_err(io)?;
    w.write_all(&(header.len() as u16).to_le_bytes()).map_err(io)?;
    w.write_all(header.as_bytes()).map_err(io)?;
    super::le::with_bytes(data, |b| w.write_all(b)).map_err(io)?;
    w.into_inner().map_err(|e| Error::io("writing", path, e.into_error()))?;
    atomic.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_streaming() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        write_matrix(&p, &data, 4, 3).unwrap();
        let (back, r, c) = read_matrix(&p).unwrap();
        assert_eq!((back, r, c), (data.clone(), 4, 3));
        let h = read_header(&p).unwrap();
        assert_eq!(h.data_offset % 64, 0);
        let mut rr = RowReader::open(&h, 2).unwrap();
        let mut out = Vec::new();
        rr.read_rows(2, &mut out).unwrap();
        assert_eq!(out, data[6..].to_vec());
    }

    #[test]
    fn rejects_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        std::fs::write(&p, b"hello world").unwrap();
        assert!(read_header(&p).unwrap_err().to_string().contains("bad magic"));
        let mut v = MAGIC.to_vec();
        let h = "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }\n";
        v.extend([1, 0]);
        v.extend((h.len() as u16).to_le_bytes());
        v.extend(h.as_bytes());
        v.extend([0u8; 32]);
        std::fs::write(&p, &v).unwrap();
        assert!(
            read_header(&p)
                .unwrap_err()
                .to_string()
                .contains("`<i8` is not supported")
        );
    }

    #[test]
    fn parses_numpy_style_headers() {
        let h = "{'descr': '<f2', 'fortran_order': False, 'shape': (10, 4), }";
        assert_eq!(dict_value(h, "shape"), Some("(10, 4)"));
        assert_eq!(dict_value(h, "descr"), Some("'<f2'"));
        assert_eq!(dict_value(h, "fortran_order"), Some("False"));
    }

    fn raw_npy(path: &Path, descr: &str, shape: &str, data: &[u8]) {
        let mut v = MAGIC.to_vec();
        let h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
        v.extend([1, 0]);
        v.extend((h.len() as u16).to_le_bytes());
        v.extend(h.as_bytes());
        v.extend(data);
        std::fs::write(path, &v).unwrap();
    }

    #[test]
    fn reads_integer_labels_of_every_width() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.npy");
        let want = [3i64, 0, -1, 7];
        let le = |f: &dyn Fn(i64) -> Vec<u8>| want.iter().flat_map(|&v| f(v)).collect::<Vec<u8>>();
        for (descr, bytes) in [
            ("|i1", le(&|v| (v as i8).to_le_bytes().to_vec())),
            ("<i2", le(&|v| (v as i16).to_le_bytes().to_vec())),
            ("<i4", le(&|v| (v as i32).to_le_bytes().to_vec())),
            ("<i8", le(&|v| v.to_le_bytes().to_vec())),
        ] {
            raw_npy(&p, descr, "(4,)", &bytes);
            assert_eq!(read_labels(&p).unwrap(), want, "{descr}");
        }
        raw_npy(&p, "<u4", "(4, 1)", &le(&|v| (v as u32).to_le_bytes().to_vec()));
        assert_eq!(read_labels(&p).unwrap(), [3, 0, u32::MAX as i64, 7]);
        // Floats, matrices and short files are errors naming what is wrong.
        raw_npy(&p, "<f4", "(4,)", &[0u8; 16]);
        assert!(
            read_labels(&p)
                .unwrap_err()
                .to_string()
                .contains("`<f4` is not supported for labels")
        );
        raw_npy(&p, "<i4", "(2, 2)", &[0u8; 16]);
        assert!(read_labels(&p).unwrap_err().to_string().contains("found shape (2, 2)"));
        raw_npy(&p, "<i8", "(4,)", &[0u8; 16]);
        assert!(read_labels(&p).unwrap_err().to_string().contains("truncated"));
    }
}
