//! A ViT split into two ONNX graphs, for pruning tokens between the halves.
//!
//! Part 1 takes `pixel_values` `[batch, C, H, W]` (float32, already normalised) and returns
//! `hidden_states` `[batch, tokens, dim]` (\[CLS\] first, position embeddings added) and
//! `cls_attention` `[batch, heads, tokens]` (the softmax row of the \[CLS\] query of its last
//! block). Part 2 takes `hidden_states` `[batch, any tokens, dim]` (\[CLS\] first) and returns
//! `pooled` `[batch, dim]` and `logits` `[batch, classes]`. The toy ViT of
//! `shared/models/MODELS.md` (`toyvit-mnist-part1.onnx`, `toyvit-mnist-part2.onnx`) has this
//! form. Runs on CPU; every output shape is checked and a mismatch names the tensor.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::Tensor;

use crate::embed::Device;
use crate::embed::runtime::runtime;
use crate::{Error, Result};

/// Output of part 1 for a batch of `b` images.
#[derive(Debug, Clone, PartialEq)]
pub struct Part1Output {
    /// Images in the batch.
    pub batch: usize,
    /// Tokens per image (\[CLS\] included).
    pub tokens: usize,
    /// Token width.
    pub dim: usize,
    /// Attention heads of `cls_attention`.
    pub heads: usize,
    /// `[batch, tokens, dim]`, row-major.
    pub hidden_states: Vec<f32>,
    /// `[batch, heads, tokens]`, row-major.
    pub cls_attention: Vec<f32>,
}

/// Output of part 2 for a batch of `b` token sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Part2Output {
    /// Token sets in the batch.
    pub batch: usize,
    /// Width of `pooled`.
    pub dim: usize,
    /// Number of classes.
    pub classes: usize,
    /// `[batch, dim]`, row-major.
    pub pooled: Vec<f32>,
    /// `[batch, classes]`, row-major.
    pub logits: Vec<f32>,
}

/// The two halves of a split ViT (see the module docs).
pub struct SplitModel {
    part1: Session,
    part2: Session,
    part1_path: PathBuf,
    part2_path: PathBuf,
    /// `(channels, height, width)` of `pixel_values`.
    image_shape: (usize, usize, usize),
}

impl std::fmt::Debug for SplitModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitModel")
            .field("part1", &self.part1_path)
            .field("part2", &self.part2_path)
            .field("image_shape", &self.image_shape)
            .finish()
    }
}

fn part_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::param("--models", format!("{}: {reason}", path.display()))
}

fn open_session(path: &Path, threads: Option<usize>) -> Result<Session> {
    if !path.is_file() {
        return Err(part_err(path, "no such model file"));
    }
    let rt = runtime()?;
    let p = super::onnx::OnnxTextParams {
        model: path.to_path_buf(),
        tokenizer: None,
        device: Device::Cpu,
        batch_size: 1,
        max_length: 2,
        threads,
        normalize: false,
        sort_window: 0,
        output: None,
    };
    let (s, _, _) = super::onnx::build_session(&rt.env, &p)?;
    Ok(s)
}

/// The names of a session's inputs and outputs.
fn names(s: &Session) -> (Vec<String>, Vec<String>) {
    (
        s.inputs().iter().map(|i| i.name().to_string()).collect(),
        s.outputs().iter().map(|o| o.name().to_string()).collect(),
    )
}

fn require(path: &Path, kind: &str, have: &[String], want: &[&str]) -> Result<()> {
    for w in want {
        if !have.iter().any(|h| h == w) {
            return Err(part_err(
                path,
                format!("the split model needs {kind} `{w}`; this graph has {kind}s {have:?}"),
            ));
        }
    }
    Ok(())
}

fn dims_of(shape: &ort::value::Shape) -> Vec<usize> {
    shape.iter().map(|&d| d.max(0) as usize).collect()
}

impl SplitModel {
    /// Opens both graphs (CPU) and checks their input and output names.
    ///
    /// # Errors
    /// A missing file (named), no ONNX Runtime, or a graph without the tensors of the module
    /// docs.
    pub fn open(part1: &Path, part2: &Path, threads: Option<usize>) -> Result<Self> {
        // Both files are checked before the runtime is loaded, so a missing one is named first.
        for p in [part1, part2] {
            if !p.is_file() {
                return Err(part_err(p, "no such model file"));
            }
        }
        let s1 = open_session(part1, threads)?;
        let s2 = open_session(part2, threads)?;
        let (i1, o1) = names(&s1);
        require(part1, "input", &i1, &["pixel_values"])?;
        require(part1, "output", &o1, &["hidden_states", "cls_attention"])?;
        let (i2, o2) = names(&s2);
        require(part2, "input", &i2, &["hidden_states"])?;
        require(part2, "output", &o2, &["pooled", "logits"])?;
        let image_shape = s1
            .inputs()
            .iter()
            .find(|i| i.name() == "pixel_values")
            .and_then(|i| match i.dtype() {
                ort::value::ValueType::Tensor { shape, .. } if shape.len() == 4 => {
                    let d: Vec<i64> = shape.iter().copied().collect();
                    (d[1] > 0 && d[2] > 0 && d[3] > 0).then(|| (d[1] as usize, d[2] as usize, d[3] as usize))
                }
                _ => None,
            })
            .ok_or_else(|| {
                part_err(
                    part1,
                    "input `pixel_values` must be float32 [batch, channels, height, width] with fixed C, H, W",
                )
            })?;
        Ok(SplitModel {
            part1: s1,
            part2: s2,
            part1_path: part1.to_path_buf(),
            part2_path: part2.to_path_buf(),
            image_shape,
        })
    }

    /// `(channels, height, width)` that part 1 expects.
    pub fn image_shape(&self) -> (usize, usize, usize) {
        self.image_shape
    }

    /// Runs part 1 on `batch` images (`pixels`: `batch·C·H·W` normalised values).
    ///
    /// # Errors
    /// [`Error::Shape`] for a `pixels` length that is not `batch·C·H·W` or an output of the
    /// wrong shape (named); inference failures.
    pub fn run_part1(&mut self, pixels: &[f32], batch: usize) -> Result<Part1Output> {
        let (c, h, w) = self.image_shape;
        if batch == 0 || pixels.len() != batch * c * h * w {
            return Err(Error::Shape {
                op: "pixel_values",
                expected: format!("[{batch}, {c}, {h}, {w}] ({} values)", batch * c * h * w),
                got: format!("{} values", pixels.len()),
            });
        }
        let path = self.part1_path.clone();
        let fail = |e: ort::Error| part_err(&path, format!("inference failed: {e}"));
        let t = Tensor::from_array(([batch, c, h, w], pixels.to_vec())).map_err(fail)?;
        let outputs = self
            .part1
            .run(vec![("pixel_values".to_string(), t.into_dyn())])
            .map_err(fail)?;
        let (hs_shape, hs) = outputs["hidden_states"]
            .try_extract_tensor::<f32>()
            .map_err(|e| part_err(&path, format!("output `hidden_states` is not float32: {e}")))?;
        let hd = dims_of(hs_shape);
        let [b, tokens, dim] = hd[..] else {
            return Err(shape("hidden_states", "[batch, tokens, dim]", &hd));
        };
        if b != batch || tokens < 2 || dim == 0 {
            return Err(shape("hidden_states", &format!("[{batch}, >= 2, >= 1]"), &hd));
        }
        let (ca_shape, ca) = outputs["cls_attention"]
            .try_extract_tensor::<f32>()
            .map_err(|e| part_err(&path, format!("output `cls_attention` is not float32: {e}")))?;
        let cd = dims_of(ca_shape);
        let [b2, heads, t2] = cd[..] else {
            return Err(shape("cls_attention", "[batch, heads, tokens]", &cd));
        };
        if b2 != batch || t2 != tokens || heads == 0 {
            return Err(shape("cls_attention", &format!("[{batch}, >= 1, {tokens}]"), &cd));
        }
        Ok(Part1Output {
            batch,
            tokens,
            dim,
            heads,
            hidden_states: hs.to_vec(),
            cls_attention: ca.to_vec(),
        })
    }

    /// Runs part 2 on `batch` token sets of `tokens` rows of width `dim` each (\[CLS\] first).
    ///
    /// # Errors
    /// [`Error::Shape`] for a wrong input length or an output of the wrong shape (named);
    /// inference failures.
    pub fn run_part2(&mut self, hidden: &[f32], batch: usize, tokens: usize, dim: usize) -> Result<Part2Output> {
        if batch == 0 || tokens == 0 || hidden.len() != batch * tokens * dim {
            return Err(Error::Shape {
                op: "hidden_states (part 2 input)",
                expected: format!("[{batch}, {tokens}, {dim}] ({} values)", batch * tokens * dim),
                got: format!("{} values", hidden.len()),
            });
        }
        let path = self.part2_path.clone();
        let fail = |e: ort::Error| part_err(&path, format!("inference failed: {e}"));
        let t = Tensor::from_array(([batch, tokens, dim], hidden.to_vec())).map_err(fail)?;
        let outputs = self
            .part2
            .run(vec![("hidden_states".to_string(), t.into_dyn())])
            .map_err(fail)?;
        let (ps, pooled) = outputs["pooled"]
            .try_extract_tensor::<f32>()
            .map_err(|e| part_err(&path, format!("output `pooled` is not float32: {e}")))?;
        let pd = dims_of(ps);
        let [b, pdim] = pd[..] else {
            return Err(shape("pooled", "[batch, dim]", &pd));
        };
        if b != batch || pdim == 0 {
            return Err(shape("pooled", &format!("[{batch}, >= 1]"), &pd));
        }
        let (ls, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(|e| part_err(&path, format!("output `logits` is not float32: {e}")))?;
        let ld = dims_of(ls);
        let [b, classes] = ld[..] else {
            return Err(shape("logits", "[batch, classes]", &ld));
        };
        if b != batch || classes == 0 {
            return Err(shape("logits", &format!("[{batch}, >= 1]"), &ld));
        }
        Ok(Part2Output {
            batch,
            dim: pdim,
            classes,
            pooled: pooled.to_vec(),
            logits: logits.to_vec(),
        })
    }
}

fn shape(op: &'static str, expected: &str, got: &[usize]) -> Error {
    Error::Shape {
        op,
        expected: expected.to_owned(),
        got: format!("{got:?}"),
    }
}
