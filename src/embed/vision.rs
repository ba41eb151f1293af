//! ONNX image encoders: decode (PNG, JPEG, WebP) from a binary column of
//! encoded bytes or from file paths in a string column, resize the
//! shortest side to the model's input size (bicubic), centre-crop,
//! scale to `[0, 1]` and normalise with per-channel mean/std (CLIP's by
//! default), laid out `[batch, channels, height, width]`.
//!
//! The model must have one float input of rank 4 with 1 or 3 channels; its
//! spatial size is read from the model when static (else `image_size`).
//! The output is the first of `image_embeds`, `pooled`, `pooler_output`,
//! `sentence_embedding` that exists, else the first rank-2 output, else the
//! CLS token (position 0) of a rank-3 output.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView};
use ort::session::Session;
use ort::value::{Tensor, ValueType};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::embed::runtime::{model_err, runtime};
use crate::embed::{Device, Encoder, EncoderInfo, InputKind, Prepared, l2_normalize, private_pool, sha256_file};
use crate::{Error, Result};

/// CLIP's per-channel mean (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation (RGB).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// Input size used when the model's is dynamic.
pub const DEFAULT_IMAGE_SIZE: u32 = 224;

/// Resize, crop and normalisation of images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagePreprocess {
    /// Output height and width (square).
    pub size: u32,
    /// 1 (greyscale) or 3 (RGB).
    pub channels: usize,
    /// Per-channel mean after scaling to `[0, 1]` (channel 0 only for greyscale).
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

impl Default for ImagePreprocess {
    fn default() -> Self {
        ImagePreprocess {
            size: DEFAULT_IMAGE_SIZE,
            channels: 3,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }
}

impl ImagePreprocess {
    /// Values per image.
    pub fn len(&self) -> usize {
        self.channels * (self.size as usize) * (self.size as usize)
    }

    /// Whether an image has no values (size 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resizes the shortest side to `size` (bicubic; untouched when it
    /// already is), centre-crops to `size × size`, writes `[C, H, W]` values
    /// `(pixel / 255 - mean) / std` to `out`.
    pub fn apply(&self, img: &DynamicImage, out: &mut [f32]) {
        let s = self.size;
        let (w, h) = img.dimensions();
        let short = w.min(h).max(1);
        let (nw, nh) = if short == s {
            (w, h)
        } else {
            let scale = s as f64 / short as f64;
            (
                ((w as f64 * scale).round() as u32).max(s),
                ((h as f64 * scale).round() as u32).max(s),
            )
        };
        let resized = if (nw, nh) == (w, h) {
            img.clone()
        } else {
            img.resize_exact(nw, nh, FilterType::CatmullRom)
        };
        let (x0, y0) = ((nw - s) / 2, (nh - s) / 2);
        let crop = resized.crop_imm(x0, y0, s, s);
        let plane = (s * s) as usize;
        if self.channels == 1 {
            let g = crop.to_luma8();
            for (i, p) in g.pixels().enumerate() {
                out[i] = (p.0[0] as f32 / 255.0 - self.mean[0]) / self.std[0];
            }
        } else {
            let rgb = crop.to_rgb8();
            for (i, p) in rgb.pixels().enumerate() {
                for c in 0..3 {
                    out[c * plane + i] = (p.0[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
                }
            }
        }
    }
}

/// Options of [`OnnxImageEncoder::open`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnnxImageParams {
    /// The `.onnx` file.
    pub model: PathBuf,
    /// Where inference runs.
    pub device: Device,
    /// Images per inference call.
    pub batch_size: usize,
    /// Intra-op threads; `None` lets ONNX Runtime choose.
    pub threads: Option<usize>,
    /// L2-normalise outputs.
    pub normalize: bool,
    /// Size when the model's is dynamic.
    pub image_size: u32,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
    /// Undecodable images get a null embedding instead of an error.
    pub skip_bad: bool,
}

/// An ONNX image encoder (see the module docs).
pub struct OnnxImageEncoder {
    session: Mutex<Session>,
    pool: Arc<rayon::ThreadPool>,
    input: String,
    output: String,
    cls: bool,
    pre: ImagePreprocess,
    batch_size: usize,
    skip_bad: bool,
    info: EncoderInfo,
}

impl std::fmt::Debug for OnnxImageEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxImageEncoder").field("info", &self.info).finish()
    }
}

impl OnnxImageEncoder {
    /// Loads the model, checks its input and output, learns the dimension.
    pub fn open(p: &OnnxImageParams) -> Result<Self> {
        if p.batch_size == 0 {
            return Err(Error::param("--batch-size", "must be at least 1"));
        }
        if !p.model.is_file() {
            return Err(model_err(&p.model, "no such model file"));
        }
        let rt = runtime()?;
        let text = super::onnx::OnnxTextParams {
            model: p.model.clone(),
            tokenizer: None,
            device: p.device,
            batch_size: p.batch_size,
            max_length: 2,
            threads: p.threads,
            normalize: p.normalize,
            sort_window: 0,
            output: None,
        };
        let (session, provider, provider_reason) = super::onnx::build_session(&rt.env, &text)?;
        let inputs: Vec<(String, ValueType)> = session
            .inputs()
            .iter()
            .map(|i| (i.name().to_string(), i.dtype().clone()))
            .collect();
        let [(input, ty)] = inputs.as_slice() else {
            let names: Vec<String> = inputs.iter().map(|i| format!("`{}` ({})", i.0, i.1)).collect();
            return Err(model_err(
                &p.model,
                format!(
                    "the image encoder feeds exactly one image tensor [batch, channels, height, width]; \
                     the model has input(s) {}",
                    names.join(", ")
                ),
            ));
        };
        let ValueType::Tensor { shape, .. } = ty else {
            return Err(model_err(&p.model, format!("input `{input}` is not a tensor")));
        };
        let dims: Vec<i64> = shape.iter().copied().collect();
        let ok_type = matches!(
            ty,
            ValueType::Tensor {
                ty: ort::value::TensorElementType::Float32,
                ..
            }
        );
        if dims.len() != 4 || !ok_type || !(dims[1] == 1 || dims[1] == 3) {
            return Err(model_err(
                &p.model,
                format!(
                    "the image encoder cannot feed input `{input}` ({ty}); it feeds float32 [batch, 1 or 3, height, width]"
                ),
            ));
        }
        let size = if dims[2] > 0 && dims[2] == dims[3] {
            dims[2] as u32
        } else {
            p.image_size
        };
        let outs: Vec<(String, usize)> = session
            .outputs()
            .iter()
            .map(|o| {
                let rank = match o.dtype() {
                    ValueType::Tensor { shape, .. } => shape.len(),
                    _ => 0,
                };
                (o.name().to_string(), rank)
            })
            .collect();
        let pick = ["image_embeds", "pooled", "pooler_output", "sentence_embedding"]
            .iter()
            .find_map(|n| outs.iter().find(|o| o.0 == *n && o.1 == 2))
            .or_else(|| outs.iter().find(|o| o.1 == 2))
            .or_else(|| outs.iter().find(|o| o.1 == 3))
            .cloned()
            .ok_or_else(|| model_err(&p.model, "no output of rank 2 or 3 to take an embedding from"))?;
        let cls = pick.1 == 3;
        let pre = ImagePreprocess {
            size,
            channels: dims[1] as usize,
            mean: p.mean,
            std: p.std,
        };
        let mut enc = OnnxImageEncoder {
            session: Mutex::new(session),
            pool: private_pool(p.threads)?,
            input: input.clone(),
            output: pick.0.clone(),
            cls,
            pre,
            batch_size: p.batch_size,
            skip_bad: p.skip_bad,
            info: EncoderInfo {
                kind: "onnx".into(),
                input: InputKind::Image,
                model: Some(p.model.display().to_string()),
                model_sha256: Some(sha256_file(&p.model)?),
                tokenizer: None,
                tokenizer_sha256: None,
                runtime: Some(rt.path.display().to_string()),
                provider,
                provider_reason,
                output: if cls {
                    format!("{} token 0 (CLS)", pick.0)
                } else {
                    pick.0.clone()
                },
                dim: 0,
                batch_size: p.batch_size,
                max_length: 0,
                normalize: p.normalize,
                threads: p.threads,
            },
        };
        enc.info.output = format!(
            "{} (input {size}x{size}x{}, mean {:?}, std {:?})",
            enc.info.output, enc.pre.channels, enc.pre.mean, enc.pre.std
        );
        let probe = vec![0f32; enc.pre.len()];
        let (_, dim) = enc.run(&probe, 1)?;
        enc.info.dim = dim;
        Ok(enc)
    }

    /// The preprocessing in use.
    pub fn preprocess(&self) -> &ImagePreprocess {
        &self.pre
    }

    /// Runs `n` preprocessed images: `(n × dim values, dim)`.
    fn run(&self, pixels: &[f32], n: usize) -> Result<(Vec<f32>, usize)> {
        let s = self.pre.size as usize;
        let fail = |e: ort::Error| Error::param("--model", format!("inference failed: {e}"));
        let t = Tensor::from_array(([n, self.pre.channels, s, s], pixels.to_vec())).map_err(fail)?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| Error::Internal("session lock poisoned".into()))?;
        let outputs = session.run(vec![(self.input.clone(), t.into_dyn())]).map_err(fail)?;
        let (shape, data) = outputs[self.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| Error::param("--model", format!("output `{}` is not float32: {e}", self.output)))?;
        let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        let mut out = match dims.as_slice() {
            [b, d] if *b == n => data[..n * d].to_vec(),
            [b, t, d] if *b == n && self.cls => (0..n).flat_map(|r| data[r * t * d..r * t * d + d].to_vec()).collect(),
            _ => {
                return Err(Error::Shape {
                    op: "model output",
                    expected: format!("[{n}, dim]"),
                    got: format!("{dims:?}"),
                });
            }
        };
        let dim = *dims.last().unwrap_or(&0);
        if self.info.normalize && dim > 0 {
            out.chunks_mut(dim).for_each(l2_normalize);
        }
        Ok((out, dim))
    }

    /// Decodes and preprocesses `items` (bytes or paths); undecodable ones
    /// are errors naming the file and row, or nulls with `skip_bad`.
    fn prepare_items(&self, items: Vec<Option<ImageItem<'_>>>, shard: &Path, first_row: u64) -> Result<Prepared> {
        let len = self.pre.len();
        let mut pixels = vec![0f32; items.len() * len];
        let results: Vec<std::result::Result<bool, String>> = self.pool.install(|| {
            pixels
                .par_chunks_mut(len)
                .zip(items.par_iter())
                .map(|(out, item)| {
                    let Some(item) = item else { return Ok(false) };
                    let img = match item {
                        ImageItem::Bytes(b) => image::load_from_memory(b).map_err(|e| e.to_string())?,
                        ImageItem::Path(p) => {
                            let path = resolve(p, shard);
                            image::open(&path).map_err(|e| format!("{}: {e}", path.display()))?
                        }
                    };
                    self.pre.apply(&img, out);
                    Ok(true)
                })
                .collect()
        });
        let mut null = Vec::with_capacity(items.len());
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(ok) => null.push(!ok),
                Err(e) if self.skip_bad => {
                    let _ = e;
                    null.push(true);
                }
                Err(e) => {
                    return Err(Error::EmbeddingColumn {
                        path: shard.to_path_buf(),
                        reason: format!(
                            "row {}: cannot decode the image ({e}); pass --skip-bad to give such rows a null embedding",
                            first_row + i as u64
                        ),
                    });
                }
            }
        }
        Ok(Prepared {
            rows: items.len(),
            null,
            batches: vec![],
            ready: None,
            pixels: Some(pixels),
        })
    }
}

enum ImageItem<'a> {
    Bytes(&'a [u8]),
    Path(&'a str),
}

/// A relative image path: as given if it exists, else next to the shard.
fn resolve(p: &str, shard: &Path) -> PathBuf {
    let path = PathBuf::from(p);
    if path.is_absolute() || path.exists() {
        return path;
    }
    shard.parent().map_or(path.clone(), |d| d.join(&path))
}

impl Encoder for OnnxImageEncoder {
    fn info(&self) -> &EncoderInfo {
        &self.info
    }

    /// `texts` are image file paths.
    fn prepare(&self, texts: &[Option<&str>]) -> Result<Prepared> {
        let items = texts.iter().map(|t| t.map(ImageItem::Path)).collect();
        self.prepare_items(items, Path::new("."), 0)
    }

    fn prepare_column(&self, col: &ArrayRef, shard: &Path, first_row: u64) -> Result<Prepared> {
        let owned;
        let col = match col.data_type() {
            DataType::Binary | DataType::Utf8 => col,
            DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
                owned = arrow::compute::cast(col, &DataType::Binary).map_err(|e| Error::Internal(e.to_string()))?;
                &owned
            }
            _ => {
                owned = arrow::compute::cast(col, &DataType::Utf8).map_err(|e| Error::Internal(e.to_string()))?;
                &owned
            }
        };
        let items: Vec<Option<ImageItem<'_>>> = match col.data_type() {
            DataType::Binary => {
                let b = col.as_binary::<i32>();
                (0..b.len())
                    .map(|i| b.is_valid(i).then(|| ImageItem::Bytes(b.value(i))))
                    .collect()
            }
            _ => {
                let s = col.as_string::<i32>();
                (0..s.len())
                    .map(|i| s.is_valid(i).then(|| ImageItem::Path(s.value(i))))
                    .collect()
            }
        };
        self.prepare_items(items, shard, first_row)
    }

    fn infer(&self, prepared: Prepared) -> Result<Vec<f32>> {
        let d = self.info.dim;
        let len = self.pre.len();
        let pixels = prepared
            .pixels
            .ok_or_else(|| Error::Internal("image encoder got a window prepared by another encoder".into()))?;
        let live: Vec<usize> = (0..prepared.rows).filter(|&i| !prepared.null[i]).collect();
        let mut out = vec![0f32; prepared.rows * d];
        for chunk in live.chunks(self.batch_size) {
            let mut batch = Vec::with_capacity(chunk.len() * len);
            for &i in chunk {
                batch.extend_from_slice(&pixels[i * len..(i + 1) * len]);
            }
            let (v, dim) = self.run(&batch, chunk.len())?;
            if dim != d {
                return Err(Error::Internal(format!(
                    "model output dimension changed from {d} to {dim}"
                )));
            }
            for (j, &i) in chunk.iter().enumerate() {
                out[i * d..(i + 1) * d].copy_from_slice(&v[j * d..(j + 1) * d]);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    #[test]
    fn crop_without_resize_is_exact() {
        // 4 x 2 image, size 2: no resize (the short side is 2), the centre
        // 2 x 2 block is columns 1..3.
        let mut img = RgbImage::new(4, 2);
        for x in 0..4u32 {
            for y in 0..2u32 {
                img.put_pixel(x, y, Rgb([(10 * x + y) as u8, 100, 255]));
            }
        }
        let pre = ImagePreprocess {
            size: 2,
            channels: 3,
            mean: [0.5, 0.0, 1.0],
            std: [0.25, 1.0, 0.5],
        };
        let mut out = vec![0f32; pre.len()];
        pre.apply(&DynamicImage::ImageRgb8(img), &mut out);
        // channel 0, row-major over the crop: pixels (1,0) (2,0) (1,1) (2,1)
        let r = |v: u8| (v as f32 / 255.0 - 0.5) / 0.25;
        assert_eq!(&out[..4], &[r(10), r(20), r(11), r(21)]);
        assert!(out[4..8].iter().all(|&v| (v - 100.0 / 255.0).abs() < 1e-6));
        assert!(out[8..].iter().all(|&v| v.abs() < 1e-6), "(1 - 1) / 0.5 = 0");
    }

    #[test]
    fn constant_images_stay_constant_after_resize() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(3, 5, Rgb([51, 102, 204])));
        let pre = ImagePreprocess::default();
        let mut out = vec![0f32; pre.len()];
        pre.apply(&img, &mut out);
        let plane = 224 * 224;
        for c in 0..3 {
            let want = ([51.0f32, 102.0, 204.0][c] / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
            assert!(out[c * plane..(c + 1) * plane].iter().all(|&v| (v - want).abs() < 1e-5));
        }
    }

    #[test]
    fn greyscale_uses_the_first_mean_and_std() {
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(28, 28, image::Luma([255])));
        let pre = ImagePreprocess {
            size: 28,
            channels: 1,
            mean: [0.1307, 0.0, 0.0],
            std: [0.3081, 1.0, 1.0],
        };
        let mut out = vec![0f32; pre.len()];
        pre.apply(&img, &mut out);
        let want = (1.0 - 0.1307) / 0.3081;
        assert!(out.iter().all(|&v| (v - want).abs() < 1e-6));
    }
}
