//! The dprune scalar functions (DataFusion [`ScalarUDFImpl`]s).
//!
//! Each works on a whole RecordBatch: `dprune_nearest` runs the same GEMM
//! nearest-centroid search as `dprune filter` ([`prototypicality`]) on the
//! batch's rows at once, `dprune_embed` one encoder call per batch. Null
//! in, null out; a row that cannot be scored (not finite, all zeros) is
//! null too, which is `filter --drop-invalid`'s choice, so a query keeps
//! control with `WHERE ... IS NOT NULL`.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, LargeListArray, ListArray, StructArray, UInt32Array,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use rayon::prelude::*;

use crate::cluster::{Centroids, CertifiedSearch, Distance};
use crate::datafusion::vectors::{Vectors, check_type, float_item, to_vectors};
use crate::distance::{dot, norm2, normalize};
use crate::embed::{Encoder, InputKind};
use crate::score::prototypicality;

/// Name of the nearest-centroid function.
pub const NEAREST: &str = "dprune_nearest";
/// Name of the cosine function.
pub const COSINE: &str = "dprune_cosine";
/// Name of the normalising function.
pub const NORMALIZE: &str = "dprune_normalize";
/// Name of the embedding function.
pub const EMBED: &str = "dprune_embed";
/// Field of `dprune_nearest`'s struct: the nearest centroid.
pub const CLUSTER_FIELD: &str = "cluster";
/// Field of `dprune_nearest`'s struct: 1 − cos to the nearest centroid.
pub const DISTANCE_FIELD: &str = "distance";

fn one_arg(func: &str, types: &[DataType]) -> Result<()> {
    if types.len() != 1 {
        return plan_err!("{func} takes 1 argument, got {}", types.len());
    }
    Ok(())
}

/// Marks rows that cannot be scored (not finite, all zeros) invalid and
/// zeroes them, so the GEMM never sees NaN.
fn drop_unusable(v: &mut Vectors) {
    let d = v.dim;
    v.values
        .par_chunks_mut(d.max(1))
        .zip(v.valid.par_iter_mut())
        .for_each(|(x, ok)| {
            if *ok && (x.iter().any(|a| !a.is_finite()) || x.iter().all(|&a| a == 0.0)) {
                *ok = false;
                x.iter_mut().for_each(|a| *a = 0.0);
            }
        });
}

fn nulls(valid: &[bool]) -> Option<NullBuffer> {
    (!valid.iter().all(|&v| v)).then(|| NullBuffer::from(valid.to_vec()))
}

/// `dprune_nearest(embedding)` → `struct {cluster: UInt32, distance: Float32}`:
/// the nearest centroid and the prototypicality score (1 − cos to it),
/// exactly as `dprune filter` computes them.
#[derive(Debug)]
pub struct Nearest {
    signature: Signature,
    centroids: Option<Arc<Centroids>>,
}

impl Nearest {
    /// Against `centroids`; without, every call is a plan error saying how
    /// to give them.
    pub fn new(centroids: Option<Arc<Centroids>>) -> Self {
        Nearest {
            signature: Signature::any(1, Volatility::Immutable),
            centroids,
        }
    }

    /// The centroids searched, when loaded.
    pub fn loaded(&self) -> Option<&Arc<Centroids>> {
        self.centroids.as_ref()
    }

    /// The struct type returned.
    pub fn return_fields() -> Fields {
        Fields::from(vec![
            Field::new(CLUSTER_FIELD, DataType::UInt32, true),
            Field::new(DISTANCE_FIELD, DataType::Float32, true),
        ])
    }

    fn centroids(&self) -> Result<&Arc<Centroids>> {
        match &self.centroids {
            Some(c) => Ok(c),
            None => plan_err!(
                "{NEAREST}: no centroids loaded; pass --centroids FILE.npy (e.g. saved by `dprune filter --save-centroids`)"
            ),
        }
    }
}

// DataFusion compares functions to deduplicate expressions; two instances are
// the same function when they search the same centroids.
impl PartialEq for Nearest {
    fn eq(&self, o: &Self) -> bool {
        match (&self.centroids, &o.centroids) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}
impl Eq for Nearest {}
impl Hash for Nearest {
    fn hash<H: Hasher>(&self, h: &mut H) {
        NEAREST.hash(h);
        self.centroids.as_ref().map(|c| Arc::as_ptr(c) as usize).hash(h);
    }
}

impl ScalarUDFImpl for Nearest {
    fn name(&self) -> &str {
        NEAREST
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        one_arg(NEAREST, arg_types)?;
        let c = self.centroids()?;
        check_type(NEAREST, 1, &arg_types[0], Some(c.dim()))?;
        Ok(DataType::Struct(Self::return_fields()))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let c = self.centroids()?;
        let col = args.args[0].to_array(args.number_rows)?;
        let mut v = to_vectors(NEAREST, 1, &col, Some(c.dim()))?;
        drop_unusable(&mut v);
        if c.distance() == Distance::Cosine {
            // The score pass of `filter` normalises every row before the search.
            v.values.par_chunks_mut(c.dim()).for_each(|x| {
                normalize(x);
            });
        }
        let n = v.len();
        let (mut labels, mut scores) = (vec![0u32; n], vec![0f32; n]);
        match CertifiedSearch::new(c) {
            // Cosine on a CPU with bf16 products: the same labels and bits, faster
            // (as `filter`'s score pass does).
            Some(cs) => {
                cs.nearest(&v.values, &mut labels, &mut scores);
                scores.iter_mut().for_each(|s| *s = 1.0 - *s);
            }
            None => prototypicality(c, &v.values, &mut labels, &mut scores),
        }
        let nb = nulls(&v.valid);
        let cluster: ArrayRef = Arc::new(UInt32Array::new(labels.into(), nb.clone()));
        let distance: ArrayRef = Arc::new(Float32Array::new(scores.into(), nb.clone()));
        let s = StructArray::try_new(Self::return_fields(), vec![cluster, distance], nb)?;
        Ok(ColumnarValue::Array(Arc::new(s)))
    }
}

/// `dprune_cosine(a, b)` → Float32: the cosine of two embeddings of the
/// same dimension (null when either is null or all zeros).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Cosine {
    signature: Signature,
}

impl Default for Cosine {
    fn default() -> Self {
        Cosine {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Cosine {
    fn name(&self) -> &str {
        COSINE
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if arg_types.len() != 2 {
            return plan_err!("{COSINE} takes 2 arguments, got {}", arg_types.len());
        }
        check_type(COSINE, 1, &arg_types[0], None)?;
        check_type(COSINE, 2, &arg_types[1], None)?;
        if let (DataType::FixedSizeList(_, a), DataType::FixedSizeList(_, b)) = (&arg_types[0], &arg_types[1])
            && a != b
        {
            return plan_err!("{COSINE}: argument 1 has dimension {a} but argument 2 has dimension {b}");
        }
        Ok(DataType::Float32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = to_vectors(COSINE, 1, &args.args[0].to_array(args.number_rows)?, None)?;
        let b = to_vectors(COSINE, 2, &args.args[1].to_array(args.number_rows)?, None)?;
        let n = a.len();
        let dim_of = |v: &Vectors| v.valid.iter().any(|&ok| ok).then_some(v.dim);
        if let (Some(da), Some(db)) = (dim_of(&a), dim_of(&b))
            && da != db
        {
            return exec_err!("{COSINE}: argument 1 has dimension {da} but argument 2 has dimension {db}");
        }
        let out: Vec<Option<f32>> = (0..n)
            .into_par_iter()
            .map(|i| {
                if !(a.valid[i] && b.valid[i]) {
                    return None;
                }
                let (x, y) = (a.row(i), b.row(i));
                let nn = norm2(x) * norm2(y);
                (nn > 0.0 && nn.is_finite()).then(|| dot(x, y) / nn.sqrt())
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(Float32Array::from(out))))
    }
}

/// `dprune_normalize(embedding)` → the same list type, scaled to unit L2
/// norm (null when null, not finite or all zeros).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Normalize {
    signature: Signature,
}

impl Default for Normalize {
    fn default() -> Self {
        Normalize {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Normalize {
    fn name(&self) -> &str {
        NORMALIZE
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        one_arg(NORMALIZE, arg_types)?;
        check_type(NORMALIZE, 1, &arg_types[0], None)?;
        Ok(arg_types[0].clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let col = args.args[0].to_array(args.number_rows)?;
        let mut v = to_vectors(NORMALIZE, 1, &col, None)?;
        drop_unusable(&mut v);
        let d = v.dim;
        if d > 0 {
            v.values.par_chunks_mut(d).for_each(|x| {
                normalize(x);
            });
        }
        let item_type = float_item(col.data_type()).expect("checked by to_vectors").clone();
        let values: ArrayRef = Arc::new(Float32Array::from(std::mem::take(&mut v.values)));
        let values = datafusion::arrow::compute::cast(&values, &item_type)?;
        let nb = nulls(&v.valid);
        let out: ArrayRef = match col.data_type() {
            DataType::FixedSizeList(f, n) => Arc::new(FixedSizeListArray::try_new(f.clone(), *n, values, nb)?),
            DataType::List(f) => Arc::new(ListArray::try_new(
                f.clone(),
                OffsetBuffer::from_lengths(std::iter::repeat_n(d, v.len())),
                values,
                nb,
            )?),
            DataType::LargeList(f) => Arc::new(LargeListArray::try_new(
                f.clone(),
                OffsetBuffer::from_lengths(std::iter::repeat_n(d, v.len())),
                values,
                nb,
            )?),
            _ => unreachable!("checked by to_vectors"),
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// `dprune_embed(text)` → `FixedSizeList<Float32, dim>`: the encoder's
/// embedding of every row, one encoder call per batch (null text, null
/// embedding). Image encoders take a column of encoded images or paths.
pub struct Embed {
    signature: Signature,
    encoder: Option<Arc<dyn Encoder>>,
}

impl std::fmt::Debug for Embed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embed")
            .field("encoder", &self.encoder.as_ref().map(|e| e.info().describe()))
            .finish()
    }
}

impl Embed {
    /// With `encoder`; without, every call is a plan error saying how to
    /// give one.
    pub fn new(encoder: Option<Arc<dyn Encoder>>) -> Self {
        Embed {
            signature: Signature::any(1, Volatility::Immutable),
            encoder,
        }
    }

    fn encoder(&self) -> Result<&Arc<dyn Encoder>> {
        match &self.encoder {
            Some(e) => Ok(e),
            None => plan_err!("{EMBED}: no encoder given; pass --model FILE.onnx (and --tokenizer if needed)"),
        }
    }
}

impl PartialEq for Embed {
    fn eq(&self, o: &Self) -> bool {
        match (&self.encoder, &o.encoder) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}
impl Eq for Embed {}
impl Hash for Embed {
    fn hash<H: Hasher>(&self, h: &mut H) {
        EMBED.hash(h);
        self.encoder
            .as_ref()
            .map(|e| Arc::as_ptr(e) as *const () as usize)
            .hash(h);
    }
}

fn item32() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float32, true))
}

impl ScalarUDFImpl for Embed {
    fn name(&self) -> &str {
        EMBED
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        one_arg(EMBED, arg_types)?;
        let e = self.encoder()?;
        let info = e.info();
        let ok = match info.input {
            InputKind::Text => matches!(arg_types[0], DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
            InputKind::Image => matches!(
                arg_types[0],
                DataType::Binary
                    | DataType::LargeBinary
                    | DataType::BinaryView
                    | DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
            ),
        };
        if !ok {
            return plan_err!(
                "{EMBED}: argument 1 has type {}; the {} encoder expects {}",
                arg_types[0],
                info.input,
                match info.input {
                    InputKind::Text => "a string column",
                    InputKind::Image => "a column of encoded images (binary) or image paths (string)",
                }
            );
        }
        Ok(DataType::FixedSizeList(item32(), info.dim as i32))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let e = self.encoder()?;
        let col = args.args[0].to_array(args.number_rows)?;
        // The encoders read Utf8 / Binary; views are cast once per batch.
        let col = match col.data_type() {
            DataType::Utf8View => datafusion::arrow::compute::cast(&col, &DataType::Utf8)?,
            DataType::BinaryView => datafusion::arrow::compute::cast(&col, &DataType::Binary)?,
            _ => col,
        };
        let dim = e.info().dim;
        let run = || -> crate::Result<(Vec<f32>, Vec<bool>)> {
            let prepared = e.prepare_column(&col, Path::new(EMBED), 0)?;
            let null = prepared.null().to_vec();
            Ok((e.infer(prepared)?, null))
        };
        let (values, null) = match run() {
            Ok(r) => r,
            Err(err) => return exec_err!("{EMBED}: {err}"),
        };
        if values.len() != null.len() * dim || null.len() != col.len() {
            return exec_err!(
                "{EMBED}: the encoder returned {} values for {} rows of dimension {dim}",
                values.len(),
                col.len()
            );
        }
        let valid: Vec<bool> = null.iter().map(|&n| !n).collect();
        let out = FixedSizeListArray::try_new(
            item32(),
            dim as i32,
            Arc::new(Float32Array::from(values)),
            nulls(&valid),
        )?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Float32Type, Schema, UInt32Type};
    use datafusion::logical_expr::ScalarUDF;
    use datafusion::prelude::*;

    use super::*;
    use crate::embed::{HashedParams, HashedTextEncoder};
    use crate::rng::Rng;

    fn fsl(rows: &[Option<Vec<f32>>], dim: usize) -> ArrayRef {
        let mut vals = Vec::new();
        for r in rows {
            vals.extend_from_slice(r.as_deref().unwrap_or(&vec![0.0; dim]));
        }
        let valid: Vec<bool> = rows.iter().map(Option::is_some).collect();
        Arc::new(
            FixedSizeListArray::try_new(item32(), dim as i32, Arc::new(Float32Array::from(vals)), nulls(&valid))
                .unwrap(),
        )
    }

    /// Runs `sql` over a one-table context holding `cols`.
    fn query(sql: &str, cols: Vec<(&str, ArrayRef)>, udfs: Vec<ScalarUDF>) -> datafusion::common::Result<RecordBatch> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let ctx = SessionContext::new();
            for u in udfs {
                ctx.register_udf(u);
            }
            let fields: Vec<Field> = cols
                .iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect();
            let batch = RecordBatch::try_new(
                Arc::new(Schema::new(fields)),
                cols.into_iter().map(|(_, a)| a).collect(),
            )?;
            ctx.register_batch("t", batch)?;
            let out = ctx.sql(sql).await?.collect().await?;
            let schema = out
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| Arc::new(Schema::empty()));
            Ok(datafusion::arrow::compute::concat_batches(&schema, &out)?)
        })
    }

    fn random_rows(n: usize, dim: usize, seed: u64) -> Vec<Option<Vec<f32>>> {
        let mut r = Rng::new(seed);
        (0..n)
            .map(|_| Some((0..dim).map(|_| r.normal() as f32).collect()))
            .collect()
    }

    #[test]
    fn nearest_matches_a_slow_reference_and_nulls_stay_null() {
        let (dim, k) = (8, 5);
        let cents: Vec<f32> = random_rows(k, dim, 1).into_iter().flatten().flatten().collect();
        let c = Arc::new(Centroids::try_new(cents.clone(), dim, Distance::Cosine).unwrap());
        let mut rows = random_rows(300, dim, 2);
        rows[3] = None;
        rows[7] = Some(vec![0.0; dim]);
        let udf = ScalarUDF::from(Nearest::new(Some(c)));
        let b = query(
            "SELECT n['cluster'] AS c, n['distance'] AS d FROM (SELECT dprune_nearest(emb) AS n FROM t)",
            vec![("emb", fsl(&rows, dim))],
            vec![udf],
        )
        .unwrap();
        let (cl, d) = (
            b.column(0).as_primitive::<UInt32Type>(),
            b.column(1).as_primitive::<Float32Type>(),
        );
        assert_eq!(b.num_rows(), 300);
        for (i, r) in rows.iter().enumerate() {
            let Some(x) = r.as_ref().filter(|x| x.iter().any(|&v| v != 0.0)) else {
                assert!(cl.is_null(i) && d.is_null(i), "row {i} should be null");
                continue;
            };
            // Slow f64 reference: the centroid of largest cosine.
            let cos = |j: usize| {
                let cj = &cents[j * dim..(j + 1) * dim];
                let dotp: f64 = x.iter().zip(cj).map(|(&a, &b)| a as f64 * b as f64).sum();
                let na: f64 = x.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
                let nb: f64 = cj.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
                dotp / (na * nb)
            };
            let best = (0..k).max_by(|&a, &b| cos(a).total_cmp(&cos(b))).unwrap();
            assert_eq!(cl.value(i) as usize, best, "row {i}");
            assert!((d.value(i) as f64 - (1.0 - cos(best))).abs() < 1e-5, "row {i}");
        }
    }

    #[test]
    fn nearest_errors_name_function_argument_and_dimensions() {
        let c = Arc::new(Centroids::try_new(vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0], 3, Distance::Cosine).unwrap());
        let e = query(
            "SELECT dprune_nearest(emb) FROM t",
            vec![("emb", fsl(&[Some(vec![1.0, 2.0])], 2))],
            vec![ScalarUDF::from(Nearest::new(Some(c.clone())))],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("dprune_nearest: argument 1 has dimension 2; expected dimension 3"),
            "{e}"
        );
        let e = query(
            "SELECT dprune_nearest(x) FROM t",
            vec![("x", Arc::new(StringArray::from(vec!["a"])) as ArrayRef)],
            vec![ScalarUDF::from(Nearest::new(Some(c)))],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("dprune_nearest: argument 1 has type Utf8"), "{e}");
        let e = query(
            "SELECT dprune_nearest(emb) FROM t",
            vec![("emb", fsl(&[Some(vec![1.0, 2.0])], 2))],
            vec![ScalarUDF::from(Nearest::new(None))],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no centroids loaded; pass --centroids"), "{e}");
    }

    #[test]
    fn cosine_and_normalize_against_f64_reference() {
        let dim = 5;
        let mut a = random_rows(50, dim, 3);
        let b = random_rows(50, dim, 4);
        a[10] = None;
        let out = query(
            "SELECT dprune_cosine(a, b) AS c, dprune_normalize(a) AS u FROM t",
            vec![("a", fsl(&a, dim)), ("b", fsl(&b, dim))],
            vec![
                ScalarUDF::from(Cosine::default()),
                ScalarUDF::from(Normalize::default()),
            ],
        )
        .unwrap();
        let c = out.column(0).as_primitive::<Float32Type>();
        let u = out.column(1).as_fixed_size_list();
        assert_eq!(u.data_type(), &DataType::FixedSizeList(item32(), dim as i32));
        for i in 0..50 {
            let Some(x) = &a[i] else {
                assert!(c.is_null(i) && u.is_null(i));
                continue;
            };
            let y = b[i].as_ref().unwrap();
            let f = |v: &[f32]| v.iter().map(|&q| q as f64).collect::<Vec<f64>>();
            let (x64, y64) = (f(x), f(y));
            let nx = x64.iter().map(|q| q * q).sum::<f64>().sqrt();
            let ny = y64.iter().map(|q| q * q).sum::<f64>().sqrt();
            let want = x64.iter().zip(&y64).map(|(p, q)| p * q).sum::<f64>() / (nx * ny);
            assert!((c.value(i) as f64 - want).abs() < 1e-5, "row {i}");
            let ui = u.value(i);
            let ui = ui.as_primitive::<Float32Type>();
            for (j, xj) in x64.iter().enumerate().take(dim) {
                assert!((ui.value(j) as f64 - xj / nx).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn normalize_keeps_list_types_and_cosine_checks_dimensions() {
        let list: ArrayRef = Arc::new(ListArray::new(
            Arc::new(Field::new("item", DataType::Float64, true)),
            OffsetBuffer::from_lengths([2, 2]),
            Arc::new(datafusion::arrow::array::Float64Array::from(vec![3.0, 4.0, 0.0, 0.0])),
            None,
        ));
        let out = query(
            "SELECT dprune_normalize(a) AS u FROM t",
            vec![("a", list.clone())],
            vec![ScalarUDF::from(Normalize::default())],
        )
        .unwrap();
        assert_eq!(out.column(0).data_type(), list.data_type());
        let l = out.column(0).as_list::<i32>();
        let v0 = l.value(0);
        let got = v0.as_primitive::<datafusion::arrow::datatypes::Float64Type>().values();
        // Computed in f32, like every dprune kernel, then cast back to f64.
        assert!((got[0] - 0.6).abs() < 1e-6 && (got[1] - 0.8).abs() < 1e-6, "{got:?}");
        assert!(l.is_null(1), "a zero vector has no direction");
        let e = query(
            "SELECT dprune_cosine(a, b) FROM t",
            vec![
                ("a", fsl(&[Some(vec![1.0, 2.0])], 2)),
                ("b", fsl(&[Some(vec![1.0, 2.0, 3.0])], 3)),
            ],
            vec![ScalarUDF::from(Cosine::default())],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("dprune_cosine: argument 1 has dimension 2 but argument 2 has dimension 3"),
            "{e}"
        );
    }

    #[test]
    fn embed_matches_the_encoder_and_is_null_for_null_text() {
        let enc: Arc<dyn Encoder> = Arc::new(HashedTextEncoder::new(
            HashedParams {
                dim: 16,
                ..HashedParams::default()
            },
            true,
        ));
        let texts = vec![Some("a red car"), None, Some("a blue boat")];
        let out = query(
            "SELECT dprune_embed(s) AS e FROM t",
            vec![("s", Arc::new(StringArray::from(texts.clone())) as ArrayRef)],
            vec![ScalarUDF::from(Embed::new(Some(enc.clone())))],
        )
        .unwrap();
        let e = out.column(0).as_fixed_size_list();
        assert_eq!(e.value_length(), 16);
        assert!(e.is_null(1));
        let want = enc.encode(&texts).unwrap();
        for i in [0, 2] {
            let got = e.value(i);
            assert_eq!(got.as_primitive::<Float32Type>().values(), &want[i * 16..(i + 1) * 16]);
        }
        let err = query(
            "SELECT dprune_embed(s) FROM t",
            vec![("s", Arc::new(UInt32Array::from(vec![1])) as ArrayRef)],
            vec![ScalarUDF::from(Embed::new(Some(enc)))],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("dprune_embed: argument 1 has type UInt32"), "{err}");
    }
}
