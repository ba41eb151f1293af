//! Scalar columns read whole as `f64` per row: a quality score (CLIP
//! score, aesthetics) for the quality stage, or an external per-row score
//! (`--score-col`) to rank by. Memory: 8 bytes per row, like the other
//! per-row state of a run.

use arrow::array::{Array, ArrayRef, Float64Array};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use parquet::arrow::ProjectionMask;
use rayon::prelude::*;

use crate::io::inputs::builder;
use crate::io::{Dataset, Shard};
use crate::{Error, Result};

/// Rows per batch when reading a scalar column.
const BATCH_ROWS: usize = 65_536;

/// Reads the numeric column `name` of every shard, in row order; nulls
/// and NaN become `f64::NAN` (the caller decides what they mean). A
/// missing or non-numeric column is an error naming the file.
pub fn read_f64_column(data: &Dataset, name: &str) -> Result<Vec<f64>> {
    let parts: Vec<Result<Vec<f64>>> = data.shards.par_iter().map(|s| read_shard(s, name)).collect();
    let mut out = Vec::with_capacity(data.num_rows() as usize);
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// Applies `f` to the bytes of every row's value of column `name` (any
/// type, in Arrow's row format, so equal values give equal bytes); `None`
/// for nulls. Used for exact de-duplication on a key column.
pub fn map_keys<T: Send>(data: &Dataset, name: &str, f: impl Fn(&[u8]) -> T + Sync) -> Result<Vec<Option<T>>> {
    let parts: Vec<Result<Vec<Option<T>>>> = data.shards.par_iter().map(|s| keys_of_shard(s, name, &f)).collect();
    let mut out = Vec::with_capacity(data.num_rows() as usize);
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

fn keys_of_shard<T>(s: &Shard, name: &str, f: &(impl Fn(&[u8]) -> T + Sync)) -> Result<Vec<Option<T>>> {
    let mut out = Vec::with_capacity(s.num_rows as usize);
    for_each_batch(s, name, |col| {
        let conv = RowConverter::new(vec![SortField::new(col.data_type().clone())]).map_err(|source| Error::Arrow {
            path: s.path.clone(),
            source,
        })?;
        let rows = conv
            .convert_columns(std::slice::from_ref(col))
            .map_err(|source| Error::Arrow {
                path: s.path.clone(),
                source,
            })?;
        out.extend((0..col.len()).map(|i| (!col.is_null(i)).then(|| f(rows.row(i).as_ref()))));
        Ok(())
    })?;
    Ok(out)
}

/// Streams column `name` of shard `s` batch by batch.
fn for_each_batch(s: &Shard, name: &str, mut f: impl FnMut(&ArrayRef) -> Result<()>) -> Result<()> {
    let b = builder(&s.path)?;
    let fields = b.schema().fields().clone();
    let idx = fields.iter().position(|fl| fl.name() == name).ok_or_else(|| {
        let names: Vec<&str> = fields.iter().map(|fl| fl.name().as_str()).collect();
        Error::Column {
            path: s.path.clone(),
            column: name.to_string(),
            reason: format!("no such column (columns: {})", names.join(", ")),
        }
    })?;
    let mask = ProjectionMask::roots(b.parquet_schema(), [idx]);
    let reader = b
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|source| Error::Parquet {
            path: s.path.clone(),
            source,
        })?;
    for batch in reader {
        let batch = batch.map_err(|source| Error::Arrow {
            path: s.path.clone(),
            source,
        })?;
        f(batch.column(0))?;
    }
    Ok(())
}

fn read_shard(s: &Shard, name: &str) -> Result<Vec<f64>> {
    let err = |reason: String| Error::Column {
        path: s.path.clone(),
        column: name.to_string(),
        reason,
    };
    let mut out = Vec::with_capacity(s.num_rows as usize);
    for_each_batch(s, name, |col| {
        let ty = col.data_type();
        if !(ty.is_numeric() || *ty == DataType::Boolean) {
            return Err(err(format!("type {ty} is not numeric")));
        }
        let col = cast(col, &DataType::Float64).map_err(|source| Error::Arrow {
            path: s.path.clone(),
            source,
        })?;
        let col = col
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| err("cast to float64 failed".into()))?;
        out.extend((0..col.len()).map(|i| if col.is_null(i) { f64::NAN } else { col.value(i) }));
        Ok(())
    })?;
    if out.len() as u64 != s.num_rows {
        return Err(err(format!("read {} values for {} rows", out.len(), s.num_rows)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    fn write(path: &std::path::Path) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("q", DataType::Int32, true),
            Field::new("s", DataType::Utf8, false),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from(vec![Some(3), None, Some(-1)])),
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
            ],
        )
        .unwrap();
        let f = std::fs::File::create(path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn reads_numbers_nulls_as_nan_and_names_bad_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.parquet");
        write(&p);
        let data = Dataset::open(&[p.clone(), p.clone()]).unwrap();
        let v = read_f64_column(&data, "q").unwrap();
        assert_eq!(v.len(), 6);
        assert_eq!((v[0], v[2], v[3]), (3.0, -1.0, 3.0));
        assert!(v[1].is_nan() && v[4].is_nan());
        let e = read_f64_column(&data, "s").unwrap_err().to_string();
        assert!(
            e.contains("a.parquet") && e.contains("`s`") && e.contains("not numeric"),
            "{e}"
        );
        let e = read_f64_column(&data, "nope").unwrap_err().to_string();
        assert!(e.contains("no such column") && e.contains("q, s"), "{e}");
        let k = map_keys(&data, "s", |b| b.to_vec()).unwrap();
        assert_eq!(k[0], k[3]);
        assert_ne!(k[0], k[1]);
        let k = map_keys(&data, "q", |b| b.to_vec()).unwrap();
        assert!(k[1].is_none() && k[0].is_some() && k[0] == k[3]);
    }
}
