//! `--where`: the SQL pre-filter of `filter`, evaluated by
//! [`crate::datafusion::where_mask`] (feature `datafusion`).

use crate::Result;
use crate::io::Dataset;
use crate::pipeline::report::WhereReport;

/// One flag per row (global id) and the report of the pre-filter.
#[cfg(feature = "datafusion")]
pub(super) fn apply(data: &Dataset, predicate: &str, batch_rows: usize) -> Result<(Vec<bool>, WhereReport)> {
    let m = crate::datafusion::where_mask(data, predicate, batch_rows)?;
    let r = WhereReport {
        predicate: predicate.to_string(),
        rows_in: data.num_rows(),
        rows_out: m.rows_out,
        row_groups: m.row_groups,
        row_groups_skipped: m.row_groups_skipped,
    };
    Ok((m.keep, r))
}

/// Without the SQL engine there is no pre-filter ([`FilterParams::validate`]
/// already refuses `--where`).
///
/// [`FilterParams::validate`]: crate::pipeline::FilterParams::validate
#[cfg(not(feature = "datafusion"))]
pub(super) fn apply(_data: &Dataset, _predicate: &str, _batch_rows: usize) -> Result<(Vec<bool>, WhereReport)> {
    Err(crate::Error::param(
        "--where",
        "this dprune was built without SQL support; rebuild with `--features datafusion`",
    ))
}
