//! Tests of the scores table writer.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, Int32Type, Int64Type, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;
use crate::io::Shard;

fn shard(index: usize, name: &str, num_rows: u64) -> Shard {
    Shard {
        index,
        path: PathBuf::from(name),
        num_rows,
        num_row_groups: 1,
        schema: Arc::new(Schema::empty()),
    }
}

/// Writes the table on a pool of `threads` threads; returns the file's bytes.
fn write_with(threads: usize, data: &Dataset, cols: &ScoreColumns<'_>, dest: &Path) -> Vec<u8> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| write_scores_table(data, cols, dest)).unwrap();
    std::fs::read(dest).unwrap()
}

#[test]
fn scores_table_row_groups_span_shards_and_the_bytes_do_not_depend_on_threads() {
    // Row groups are global ranges of DEFAULT_ROW_GROUP_ROWS rows, so the second one
    // spans both shards; the table is encoded a few groups at a time in parallel.
    let sizes = [70_000u64, 100_003];
    let data = Dataset::from_shards(vec![shard(0, "a.parquet", sizes[0]), shard(1, "b/c.parquet", sizes[1])]);
    let n = data.num_rows() as usize;
    let valid: Vec<bool> = (0..n).map(|i| i % 97 != 3).collect();
    let cluster: Vec<i32> = (0..n).map(|i| (i % 1000) as i32).collect();
    let score: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let kept: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
    let max_sim: Vec<f32> = (0..n)
        .map(|i| if i % 5 == 0 { f32::NAN } else { 1.0 / (i as f32 + 1.0) })
        .collect();
    let dup_of: Vec<Option<u32>> = (0..n).map(|i| (i % 7 == 1).then_some(i as u32 / 2)).collect();
    let cols = ScoreColumns {
        cluster: Some(&cluster),
        score: &score,
        kept: &kept,
        valid: &valid,
        max_sim: Some(&max_sim),
        dup_of: Some(&dup_of),
    };
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("scores.parquet");
    let one = write_with(1, &data, &cols, &dest);
    let three = write_with(3, &data, &cols, &dest);
    assert!(one == three, "the file depends on the thread count");

    let b = ParquetRecordBatchReaderBuilder::try_new(File::open(&dest).unwrap()).unwrap();
    let groups: Vec<i64> = b.metadata().row_groups().iter().map(|g| g.num_rows()).collect();
    let mut want = vec![DEFAULT_ROW_GROUP_ROWS as i64; n / DEFAULT_ROW_GROUP_ROWS];
    want.push((n % DEFAULT_ROW_GROUP_ROWS) as i64);
    assert_eq!(groups, want);
    let mut at = 0usize;
    for batch in b.build().unwrap() {
        let batch = batch.unwrap();
        let file = batch.column(0).as_string::<i32>();
        let row = batch.column(1).as_primitive::<Int64Type>();
        let cl = batch.column(2).as_primitive::<Int32Type>();
        let sc = batch.column(3).as_primitive::<Float32Type>();
        let kp = batch.column(4).as_boolean();
        let ms = batch.column(5).as_primitive::<Float32Type>();
        let dp = batch.column(6).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            let g = at + i;
            let (name, local) = if g < sizes[0] as usize {
                ("a.parquet", g)
            } else {
                ("b/c.parquet", g - sizes[0] as usize)
            };
            assert_eq!(file.value(i), name, "row {g}");
            assert_eq!(row.value(i), local as i64, "row {g}");
            assert_eq!(cl.is_valid(i), valid[g], "row {g}");
            assert_eq!(sc.is_valid(i), valid[g], "row {g}");
            if valid[g] {
                assert_eq!(cl.value(i), cluster[g]);
                assert_eq!(sc.value(i), score[g]);
            }
            assert_eq!(kp.value(i), kept[g]);
            assert_eq!(ms.is_valid(i), !max_sim[g].is_nan());
            if ms.is_valid(i) {
                assert_eq!(ms.value(i), max_sim[g]);
            }
            assert_eq!(dp.is_valid(i), dup_of[g].is_some());
            if let Some(d) = dup_of[g] {
                assert_eq!(dp.value(i), i64::from(d));
            }
        }
        at += batch.num_rows();
    }
    assert_eq!(at, n);
}
