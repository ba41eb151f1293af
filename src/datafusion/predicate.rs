//! `filter --where`: a SQL predicate evaluated inside dprune's own scan.
//!
//! Row identity in dprune is (file, row in file) and outputs keep every
//! input's row order and schema, so the predicate is not run as a query:
//! per file it is parsed against the file's Arrow schema into a DataFusion
//! physical expression, a [`PruningPredicate`](datafusion::physical_optimizer::pruning::PruningPredicate) over the Parquet row-group
//! statistics (min, max, null count) skips the row groups that cannot hold
//! a match, and the expression is evaluated on the remaining row groups,
//! reading only the columns it names, to one flag per row (NULL counts as
//! false, as in SQL's `WHERE`).
//!
//! Identifiers are case-sensitive as written (`--where "Score > 3"` means
//! the column `Score`), unlike DataFusion's default of lower-casing them.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::file::metadata::RowGroupMetaData;
use parquet::schema::types::SchemaDescriptor;
use rayon::prelude::*;

use crate::io::inputs::builder;
use crate::io::{Dataset, Shard};
use crate::{Error, Result};

/// The rows a predicate keeps, over all shards.
#[derive(Debug, Clone, PartialEq)]
pub struct WhereMask {
    /// One flag per row over the inputs in order (global row id).
    pub keep: Vec<bool>,
    /// Rows kept.
    pub rows_out: u64,
    /// Row groups over all inputs.
    pub row_groups: u64,
    /// Row groups skipped by their statistics, without being read.
    pub row_groups_skipped: u64,
}

fn sql_error(predicate: &str, shard: &Shard, reason: impl std::fmt::Display) -> Error {
    Error::Sql {
        context: format!("--where `{predicate}` on {}", shard.path.display()),
        reason: reason.to_string(),
    }
}

/// A predicate compiled for one file's schema.
pub struct CompiledPredicate {
    /// The expression, over `schema`.
    expr: Arc<dyn PhysicalExpr>,
    /// The columns the predicate reads, in file order.
    schema: SchemaRef,
    /// Their indices among the file's top-level columns.
    indices: Vec<usize>,
}

impl CompiledPredicate {
    /// Parses `predicate` against `shard`'s schema; errors name the
    /// predicate, the file and the column at fault.
    pub fn compile(predicate: &str, shard: &Shard) -> Result<Self> {
        let file_schema = shard.schema.clone();
        let err = |e: datafusion::error::DataFusionError| sql_error(predicate, shard, e);
        let cfg = SessionConfig::new().set_bool("datafusion.sql_parser.enable_ident_normalization", false);
        let ctx = SessionContext::new_with_config(cfg);
        let full = DFSchema::try_from(file_schema.as_ref().clone()).map_err(err)?;
        let expr = ctx.parse_sql_expr(predicate, &full).map_err(err)?;
        let mut indices = Vec::new();
        for c in expr.column_refs() {
            match file_schema.index_of(&c.name) {
                Ok(i) => indices.push(i),
                Err(_) => {
                    let names: Vec<&str> = file_schema.fields().iter().map(|f| f.name().as_str()).collect();
                    return Err(sql_error(
                        predicate,
                        shard,
                        format!("no column `{}`; columns are: {}", c.name, names.join(", ")),
                    ));
                }
            }
        }
        indices.sort_unstable();
        indices.dedup();
        let schema = Arc::new(
            file_schema
                .project(&indices)
                .map_err(|e| sql_error(predicate, shard, e))?,
        );
        let df = DFSchema::try_from(schema.as_ref().clone()).map_err(err)?;
        // Coerce, then simplify (e.g. unwrap casts of columns), so that the
        // pruning predicate sees plain `column op literal` comparisons.
        let simplifier = ExprSimplifier::new(SimplifyContext::builder().with_schema(Arc::new(df.clone())).build());
        let expr = simplifier.coerce(expr, &df).map_err(err)?;
        let expr = simplifier.simplify(expr).map_err(err)?;
        let phys = ctx.create_physical_expr(expr, &df).map_err(err)?;
        let dt = phys.data_type(&schema).map_err(err)?;
        if dt != DataType::Boolean {
            return Err(sql_error(
                predicate,
                shard,
                format!("the predicate is of type {dt}, not a boolean (write a comparison such as `col > 3`)"),
            ));
        }
        Ok(CompiledPredicate {
            expr: phys,
            schema,
            indices,
        })
    }

    /// Evaluates on a batch of the predicate's columns: one flag per row,
    /// NULL as false.
    pub fn evaluate(&self, batch: &datafusion::arrow::array::RecordBatch) -> datafusion::common::Result<Vec<bool>> {
        let v = self.expr.evaluate(batch)?.into_array(batch.num_rows())?;
        let b: &BooleanArray = v.as_boolean();
        Ok((0..b.len()).map(|i| b.is_valid(i) && b.value(i)).collect())
    }
}

/// Row-group statistics of one Parquet file for the pruning predicate.
struct RowGroupStats<'a> {
    parquet_schema: &'a SchemaDescriptor,
    arrow_schema: &'a Schema,
    row_groups: &'a [RowGroupMetaData],
}

impl RowGroupStats<'_> {
    fn converter(&self, column: &Column) -> Option<StatisticsConverter<'_>> {
        StatisticsConverter::try_new(&column.name, self.arrow_schema, self.parquet_schema).ok()
    }
}

impl PruningStatistics for RowGroupStats<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.converter(column)?.row_group_mins(self.row_groups.iter()).ok()
    }
    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.converter(column)?.row_group_maxes(self.row_groups.iter()).ok()
    }
    fn num_containers(&self) -> usize {
        self.row_groups.len()
    }
    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let c = self.converter(column)?;
        c.row_group_null_counts(self.row_groups.iter())
            .ok()
            .map(|a| Arc::new(a) as ArrayRef)
    }
    fn row_counts(&self) -> Option<ArrayRef> {
        let counts: UInt64Array = self.row_groups.iter().map(|rg| Some(rg.num_rows() as u64)).collect();
        Some(Arc::new(counts))
    }
    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// Flags of one shard's rows and the number of row groups skipped.
fn shard_mask(predicate: &str, shard: &Shard, batch_rows: usize) -> Result<(Vec<bool>, u64)> {
    let p = CompiledPredicate::compile(predicate, shard)?;
    let b = builder(&shard.path)?;
    let md = b.metadata().clone();
    let groups = md.row_groups();
    let may_match = match PruningPredicateBuilder::new()
        .with_file_schema(p.schema.clone())
        .build(p.expr.clone())
    {
        Some(pp) => {
            let stats = RowGroupStats {
                parquet_schema: md.file_metadata().schema_descr(),
                arrow_schema: &shard.schema,
                row_groups: groups,
            };
            pp.prune(&stats).map_err(|e| sql_error(predicate, shard, e))?
        }
        None => vec![true; groups.len()],
    };
    let read: Vec<usize> = (0..groups.len()).filter(|&g| may_match[g]).collect();
    let skipped = (groups.len() - read.len()) as u64;
    let mut keep = Vec::with_capacity(shard.num_rows as usize);
    if read.is_empty() {
        keep.resize(shard.num_rows as usize, false);
        return Ok((keep, skipped));
    }
    let mask = ProjectionMask::roots(b.parquet_schema(), p.indices.iter().copied());
    let reader = b
        .with_projection(mask)
        .with_row_groups(read.clone())
        .with_batch_size(batch_rows.max(1))
        .build()
        .map_err(|source| Error::Parquet {
            path: shard.path.clone(),
            source,
        })?;
    let mut batches = reader.map(|r| {
        r.map_err(|source| Error::Arrow {
            path: shard.path.clone(),
            source,
        })
    });
    // Row groups come back in order; a skipped one contributes `false` rows,
    // a read one the predicate's value for each of its rows.
    let mut pending: Option<(Vec<bool>, usize)> = None;
    for (g, rg) in groups.iter().enumerate() {
        let n = rg.num_rows() as usize;
        if !may_match[g] {
            keep.resize(keep.len() + n, false);
            continue;
        }
        let mut need = n;
        while need > 0 {
            let (flags, at) = match pending.take() {
                Some(p) => p,
                None => {
                    let batch = batches.next().ok_or_else(|| {
                        Error::Internal(format!("{}: fewer rows than its footer says", shard.path.display()))
                    })??;
                    (p.evaluate(&batch).map_err(|e| sql_error(predicate, shard, e))?, 0)
                }
            };
            let take = need.min(flags.len() - at);
            keep.extend_from_slice(&flags[at..at + take]);
            need -= take;
            if at + take < flags.len() {
                pending = Some((flags, at + take));
            }
        }
    }
    Ok((keep, skipped))
}

/// Evaluates `predicate` on every row of `data` (see the module docs).
pub fn where_mask(data: &Dataset, predicate: &str, batch_rows: usize) -> Result<WhereMask> {
    let parts: Vec<Result<(Vec<bool>, u64)>> = data
        .shards
        .par_iter()
        .map(|s| shard_mask(predicate, s, batch_rows))
        .collect();
    let mut keep = Vec::with_capacity(data.num_rows() as usize);
    let mut skipped = 0;
    for part in parts {
        let (k, s) = part?;
        keep.extend_from_slice(&k);
        skipped += s;
    }
    let rows_out = keep.iter().filter(|&&k| k).count() as u64;
    Ok(WhereMask {
        keep,
        rows_out,
        row_groups: data.shards.iter().map(|s| s.num_row_groups as u64).sum(),
        row_groups_skipped: skipped,
    })
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::Field;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    use super::*;

    /// 1,000 rows in row groups of 100: `id` 0..1000 (sorted, so each
    /// group's statistics are tight), `x` = id % 7 with nulls every 10th
    /// row, `Tag` = "a"/"b".
    fn fixture(dir: &std::path::Path) -> Dataset {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
            Field::new("Tag", DataType::Utf8, false),
        ]));
        let n = 1000i64;
        let ids = Int64Array::from_iter_values(0..n);
        let xs = Float64Array::from_iter((0..n).map(|i| (i % 10 != 0).then_some((i % 7) as f64)));
        let tags = StringArray::from_iter_values((0..n).map(|i| if i % 3 == 0 { "a" } else { "b" }));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(xs), Arc::new(tags)]).unwrap();
        let path = dir.join("f.parquet");
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(100))
            .build();
        let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        Dataset::open(&[path]).unwrap()
    }

    #[test]
    fn mask_matches_a_direct_check_and_skips_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let data = fixture(dir.path());
        let m = where_mask(&data, "id >= 250 AND id < 420 AND x > 2", 64).unwrap();
        let want: Vec<bool> = (0..1000)
            .map(|i| (250..420).contains(&i) && i % 10 != 0 && (i % 7) > 2)
            .collect();
        assert_eq!(m.keep, want);
        assert_eq!(m.rows_out, want.iter().filter(|&&k| k).count() as u64);
        // Only row groups 2, 3 and 4 (ids 200..500) can match.
        assert_eq!((m.row_groups, m.row_groups_skipped), (10, 7));
        let m = where_mask(&data, "\"Tag\" = 'a' OR x IS NULL", 1000).unwrap();
        let want: Vec<bool> = (0..1000).map(|i| i % 3 == 0 || i % 10 == 0).collect();
        assert_eq!((m.keep, m.row_groups_skipped), (want, 0));
        let m = where_mask(&data, "Tag = 'b'", 7).unwrap();
        assert_eq!(m.rows_out, (0..1000).filter(|i| i % 3 != 0).count() as u64);
    }

    #[test]
    fn the_result_does_not_depend_on_batch_size() {
        let dir = tempfile::tempdir().unwrap();
        let data = fixture(dir.path());
        let a = where_mask(&data, "x * 2 > id % 5", 1).unwrap();
        let b = where_mask(&data, "x * 2 > id % 5", 333).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn errors_name_predicate_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let data = fixture(dir.path());
        let e = where_mask(&data, "nope > 3", 64).unwrap_err().to_string();
        assert!(e.contains("--where `nope > 3`") && e.contains("nope"), "{e}");
        let e = where_mask(&data, "id + 1", 64).unwrap_err().to_string();
        assert!(e.contains("not a boolean") && e.contains("Int64"), "{e}");
        let e = where_mask(&data, "id >>>= (", 64).unwrap_err().to_string();
        assert!(e.contains("--where `id >>>= (`"), "{e}");
    }
}
