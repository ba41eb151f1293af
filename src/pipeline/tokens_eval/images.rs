//! The evaluation images: `label` and raw `pixels` read from Parquet and
//! normalised for the toy ViT.

use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float32Type, Int32Type, Int64Type};

use super::{MNIST_MEAN, MNIST_STD};
use crate::{Error, Result};

/// Reads `label` and `pixels` (raw 0..255) and normalises the pixels for the toy ViT.
pub(super) fn read_images(
    path: &Path,
    shape: (usize, usize, usize),
    limit: Option<usize>,
) -> Result<(Vec<i64>, Vec<f32>)> {
    let per = shape.0 * shape.1 * shape.2;
    let reader = crate::io::inputs::builder(path)?
        .build()
        .map_err(|source| Error::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
    let col_err = |column: &str, reason: String| Error::Column {
        path: path.to_path_buf(),
        column: column.to_string(),
        reason,
    };
    let max = limit.unwrap_or(usize::MAX);
    let (mut labels, mut pixels) = (Vec::new(), Vec::new());
    for batch in reader {
        let batch = batch.map_err(|source| Error::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        let label = batch.column_by_name("label").ok_or_else(|| {
            col_err(
                "label",
                "no such column (the class of each image, int32 or int64)".into(),
            )
        })?;
        let px = batch.column_by_name("pixels").ok_or_else(|| {
            col_err(
                "pixels",
                format!("no such column (fixed_size_list<float32, {per}> of raw 0..255 values)"),
            )
        })?;
        let take = (max - labels.len()).min(batch.num_rows());
        let lab: Vec<i64> = match label.data_type() {
            DataType::Int32 => label
                .as_primitive::<Int32Type>()
                .values()
                .iter()
                .map(|&v| i64::from(v))
                .collect(),
            DataType::Int64 => label.as_primitive::<Int64Type>().values().to_vec(),
            t => return Err(col_err("label", format!("type {t}, expected int32 or int64"))),
        };
        let DataType::FixedSizeList(f, len) = px.data_type() else {
            return Err(col_err(
                "pixels",
                format!("type {}, expected fixed_size_list<float32, {per}>", px.data_type()),
            ));
        };
        if *len as usize != per || f.data_type() != &DataType::Float32 {
            return Err(col_err(
                "pixels",
                format!(
                    "type {}, but the model takes {}x{}x{} = {per} float32 values per image",
                    px.data_type(),
                    shape.0,
                    shape.1,
                    shape.2
                ),
            ));
        }
        if label.null_count() > 0 || px.null_count() > 0 {
            return Err(col_err("label", "null labels or images".into()));
        }
        let list = px.as_fixed_size_list();
        let vals = list.values().as_primitive::<Float32Type>();
        let off = list.offset() * per;
        labels.extend_from_slice(&lab[..take]);
        pixels.extend(
            vals.values()[off..off + take * per]
                .iter()
                .map(|&v| (v / 255.0 - MNIST_MEAN) / MNIST_STD),
        );
        if labels.len() >= max {
            break;
        }
    }
    if labels.is_empty() {
        return Err(Error::param("--images", format!("{}: no rows", path.display())));
    }
    Ok((labels, pixels))
}
