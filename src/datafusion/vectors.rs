//! Embedding arguments of the SQL functions: an Arrow list column
//! (`FixedSizeList` or `List`/`LargeList` of `Float16`, `Float32` or
//! `Float64`, the same types `dprune filter` accepts) turned into one
//! contiguous `rows × dim` f32 buffer and a validity flag per row.
//!
//! Errors name the function, the argument and what was expected, because
//! they surface in the middle of a user's query.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, GenericListArray, OffsetSizeTrait};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err, plan_err};

use crate::io::embeddings::push_values;

/// Rows of an embedding argument, converted to f32.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Vectors {
    /// `rows × dim` values, row-major; invalid rows hold zeros.
    pub values: Vec<f32>,
    /// Per row: the row is non-null and none of its elements is null.
    pub valid: Vec<bool>,
    /// The dimension.
    pub dim: usize,
}

impl Vectors {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.valid.len()
    }
}

/// The element type of a float list type, if `dt` is one.
pub(crate) fn float_item(dt: &DataType) -> Option<&DataType> {
    let item = match dt {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => f.data_type(),
        _ => return None,
    };
    matches!(item, DataType::Float16 | DataType::Float32 | DataType::Float64).then_some(item)
}

/// Plan-time check of an embedding argument's type; `dim` is the required
/// dimension, checked here for fixed-size lists (lists are checked per row).
pub(crate) fn check_type(func: &str, arg: usize, dt: &DataType, dim: Option<usize>) -> Result<()> {
    if float_item(dt).is_none() {
        return plan_err!(
            "{func}: argument {arg} has type {dt}; expected an embedding: FixedSizeList or List of Float32 (or Float16, Float64)"
        );
    }
    if let (DataType::FixedSizeList(_, d), Some(want)) = (dt, dim)
        && *d as usize != want
    {
        return plan_err!("{func}: argument {arg} has dimension {d}; expected dimension {want} (the centroids')");
    }
    Ok(())
}

/// Converts an embedding argument. With `dim = None` the dimension is that
/// of the fixed-size list, or of the first valid list row; every other
/// row must have it (an error naming the row otherwise).
pub(crate) fn to_vectors(func: &str, arg: usize, col: &ArrayRef, dim: Option<usize>) -> Result<Vectors> {
    check_type(func, arg, col.data_type(), dim)?;
    match col.data_type() {
        DataType::FixedSizeList(_, d) => {
            let a = col.as_fixed_size_list();
            let d = *d as usize;
            let mut out = Vectors {
                values: Vec::with_capacity(a.len() * d),
                valid: Vec::with_capacity(a.len()),
                dim: d,
            };
            let child = a.values();
            if a.null_count() == 0 && child.null_count() == 0 && !a.is_empty() {
                // One contiguous copy for the whole batch.
                let start = a.value_offset(0) as usize;
                // No nulls were checked above, so the returned flag is false.
                push_values(child, start, a.len() * d, &mut out.values);
                out.valid.resize(a.len(), true);
                return Ok(out);
            }
            for i in 0..a.len() {
                push_row(child, a.is_valid(i), a.value_offset(i) as usize, d, &mut out);
            }
            Ok(out)
        }
        DataType::List(_) => from_list(func, arg, col.as_list::<i32>(), dim),
        DataType::LargeList(_) => from_list(func, arg, col.as_list::<i64>(), dim),
        _ => unreachable!("check_type accepted only list types"),
    }
}

fn from_list<O: OffsetSizeTrait>(
    func: &str,
    arg: usize,
    a: &GenericListArray<O>,
    dim: Option<usize>,
) -> Result<Vectors> {
    let offs = a.value_offsets();
    let len = |i: usize| offs[i + 1].as_usize() - offs[i].as_usize();
    let d = match dim {
        Some(d) => d,
        None => (0..a.len()).find(|&i| a.is_valid(i)).map_or(0, len),
    };
    let mut out = Vectors {
        values: Vec::with_capacity(a.len() * d),
        valid: Vec::with_capacity(a.len()),
        dim: d,
    };
    let child = a.values();
    for (i, off) in offs.iter().take(a.len()).enumerate() {
        if a.is_valid(i) && len(i) != d {
            return exec_err!(
                "{func}: argument {arg} row {i} of the batch has {} values; expected dimension {d}",
                len(i)
            );
        }
        push_row(child, a.is_valid(i), off.as_usize(), d, &mut out);
    }
    Ok(out)
}

fn push_row(child: &ArrayRef, valid: bool, start: usize, dim: usize, out: &mut Vectors) {
    if !valid {
        out.values.resize(out.values.len() + dim, 0.0);
        out.valid.push(false);
        return;
    }
    let at = out.values.len();
    let has_null = push_values(child, start, dim, &mut out.values);
    if has_null {
        out.values[at..].iter_mut().for_each(|v| *v = 0.0);
    }
    out.valid.push(!has_null);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        FixedSizeListArray, Float16Array, Float32Array, Float64Array, LargeListArray, ListArray,
    };
    use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
    use datafusion::arrow::datatypes::Field;
    use half::f16;

    use super::*;

    fn item(dt: DataType) -> Arc<Field> {
        Arc::new(Field::new("item", dt, true))
    }

    #[test]
    fn every_list_and_float_type_gives_the_same_rows() {
        let v = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let fsl32: ArrayRef = Arc::new(
            FixedSizeListArray::try_new(
                item(DataType::Float32),
                3,
                Arc::new(Float32Array::from(v.to_vec())),
                None,
            )
            .unwrap(),
        );
        let list16: ArrayRef = Arc::new(ListArray::new(
            item(DataType::Float16),
            OffsetBuffer::from_lengths([3, 3]),
            Arc::new(Float16Array::from(
                v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(),
            )),
            None,
        ));
        let large64: ArrayRef = Arc::new(LargeListArray::new(
            item(DataType::Float64),
            OffsetBuffer::from_lengths([3, 3]),
            Arc::new(Float64Array::from(v.iter().map(|&x| x as f64).collect::<Vec<_>>())),
            None,
        ));
        for col in [fsl32, list16, large64] {
            let got = to_vectors("f", 1, &col, None).unwrap();
            assert_eq!(
                (got.values.as_slice(), got.valid.as_slice(), got.dim),
                (&v[..], &[true, true][..], 3)
            );
        }
    }

    #[test]
    fn null_rows_and_null_elements_are_invalid() {
        let vals = Float32Array::from(vec![Some(1.0), Some(2.0), Some(3.0), None, Some(5.0), Some(6.0)]);
        let a: ArrayRef = Arc::new(
            FixedSizeListArray::try_new(
                item(DataType::Float32),
                2,
                Arc::new(vals),
                Some(NullBuffer::from(vec![false, true, true])),
            )
            .unwrap(),
        );
        let got = to_vectors("f", 1, &a, Some(2)).unwrap();
        assert_eq!(got.valid, [false, false, true]);
        assert_eq!(got.values, [0.0, 0.0, 0.0, 0.0, 5.0, 6.0]);
    }

    #[test]
    fn wrong_types_and_dimensions_are_named() {
        let ints: ArrayRef = Arc::new(datafusion::arrow::array::Int32Array::from(vec![1, 2]));
        let e = to_vectors("dprune_x", 2, &ints, None).unwrap_err().to_string();
        assert!(e.contains("dprune_x: argument 2 has type Int32"), "{e}");
        let fsl: ArrayRef = Arc::new(
            FixedSizeListArray::try_new(
                item(DataType::Float32),
                2,
                Arc::new(Float32Array::from(vec![0.0; 4])),
                None,
            )
            .unwrap(),
        );
        let e = to_vectors("dprune_x", 1, &fsl, Some(3)).unwrap_err().to_string();
        assert!(e.contains("argument 1 has dimension 2; expected dimension 3"), "{e}");
        let ragged: ArrayRef = Arc::new(ListArray::new(
            item(DataType::Float32),
            OffsetBuffer::from_lengths([2, 3]),
            Arc::new(Float32Array::from(vec![0.0; 5])),
            None,
        ));
        let e = to_vectors("dprune_x", 1, &ragged, None).unwrap_err().to_string();
        assert!(
            e.contains("row 1 of the batch has 3 values; expected dimension 2"),
            "{e}"
        );
    }
}
