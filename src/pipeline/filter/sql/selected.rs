//! What the select plan returns and what is kept from it: the query
//! (global rank and per-cluster windows), the rows that came back, and
//! either the ranked global top or, for rules that need every row's
//! cluster and score, the native selection and report run here.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, PrimitiveArray, RecordBatch};
use arrow::datatypes::{ArrowPrimitiveType, Float32Type, Float64Type, Int64Type, UInt8Type, UInt32Type, UInt64Type};

use super::super::summary::build_report;
use super::super::{Balance, FilterConfig};
use crate::cluster::Centroids;
use crate::datafusion::plans::{INVALID_NOT_FINITE, INVALID_NULL, INVALID_ZERO};
use crate::io::Dataset;
use crate::pipeline::budget::{Ranking, choose};
use crate::pipeline::passes::Rows;
use crate::pipeline::report::{ClusterReport, InputReport, InvalidReport, KMeansReport, Report};
use crate::score::Metric;
use crate::select::Keep;
use crate::{Error, Result};

/// The score-and-select query over table `rows`; `bmax` bounds the budget
/// (the exact one depends on how many rows are usable, known at the end).
pub(super) fn select_sql(prefer: Keep, bmax: u64) -> String {
    let dir = match prefer {
        Keep::Hard => "DESC",
        Keep::Easy => "ASC",
    };
    format!(
        "WITH s AS (SELECT dprune_file AS f, dprune_row AS r, dprune_invalid AS bad, dprune_nearest(embedding) AS n FROM rows),
              t AS (SELECT f, r, bad, n['cluster'] AS c, n['distance'] AS d FROM s),
              w AS (SELECT f, r, bad, c, d,
                      row_number() OVER (ORDER BY d {dir} NULLS LAST, f, r) AS rk,
                      row_number() OVER (PARTITION BY c ORDER BY f, r) AS crk,
                      count(*) OVER (PARTITION BY c) AS cn,
                      sum(CAST(d AS DOUBLE)) OVER (PARTITION BY c) AS cs
                    FROM t)
         SELECT f, r, bad, c, d, rk, crk, cn, cs FROM w WHERE rk <= {bmax} OR crk = 1 OR bad <> 0"
    )
}

/// What came back from the select job.
#[derive(Debug, Default)]
pub(super) struct Selected {
    /// Usable rows by rank: (rank, file, row, cluster, score), rank ≤ bmax.
    pub(super) ranked: Vec<(u64, u32, u64, u32, f32)>,
    /// Per cluster: (size, sum of scores).
    pub(super) clusters: BTreeMap<u32, (u64, f64)>,
    /// Unusable rows per file, by kind.
    pub(super) invalid: Vec<InvalidReport>,
}

pub(super) fn collect_selected(batches: &[RecordBatch], files: usize) -> Result<Selected> {
    let mut out = Selected {
        invalid: vec![InvalidReport::default(); files],
        ..Default::default()
    };
    let bad_schema = |e: String| Error::Internal(format!("select plan output: {e}"));
    for b in batches {
        if b.num_columns() != 9 {
            return Err(bad_schema(format!("{} columns", b.num_columns())));
        }
        // Column `i` (named `name` in the query) as `T`.
        fn col<'a, T: ArrowPrimitiveType>(b: &'a RecordBatch, i: usize, name: &str) -> Result<&'a PrimitiveArray<T>> {
            b.column(i)
                .as_primitive_opt::<T>()
                .ok_or_else(|| Error::Internal(format!("select plan output: column {name}")))
        }
        let (f, r) = (col::<UInt32Type>(b, 0, "f")?, col::<UInt64Type>(b, 1, "r")?);
        let (bad, c) = (col::<UInt8Type>(b, 2, "bad")?, col::<UInt32Type>(b, 3, "c")?);
        let (d, rk) = (col::<Float32Type>(b, 4, "d")?, col::<UInt64Type>(b, 5, "rk")?);
        let (crk, cn) = (col::<UInt64Type>(b, 6, "crk")?, col::<Int64Type>(b, 7, "cn")?);
        let cs = col::<Float64Type>(b, 8, "cs")?;
        for i in 0..b.num_rows() {
            let file = f.value(i);
            match bad.value(i) {
                0 => {}
                kind => {
                    let inv = out
                        .invalid
                        .get_mut(file as usize)
                        .ok_or_else(|| bad_schema(format!("file {file}")))?;
                    match kind {
                        INVALID_NULL => inv.null += 1,
                        INVALID_NOT_FINITE => inv.not_finite += 1,
                        INVALID_ZERO => inv.zero += 1,
                        k => return Err(bad_schema(format!("invalid kind {k}"))),
                    }
                    continue;
                }
            }
            if c.is_null(i) || d.is_null(i) {
                return Err(bad_schema(format!("file {file} row {}: no score", r.value(i))));
            }
            if crk.value(i) == 1 {
                out.clusters.insert(c.value(i), (cn.value(i) as u64, cs.value(i)));
            }
            out.ranked.push((rk.value(i), file, r.value(i), c.value(i), d.value(i)));
        }
    }
    out.ranked.sort_unstable_by_key(|x| x.0);
    Ok(out)
}

/// A kept row: (file, row, cluster, score shown with `--with-scores`).
pub(super) type KeptRow = (u32, u64, u32, f32);

/// Whether the rule needs every row's cluster and score (it runs in this
/// process, with the native code) rather than the global top the select
/// plan ranks.
pub(super) fn gathers_all_rows(cfg: &FilterConfig) -> bool {
    cfg.output.scores_only
        || cfg.params.balance != Balance::None
        || matches!(cfg.params.metric, Metric::Dbp | Metric::Ccs | Metric::Moderate)
}

/// The native final stage ([`choose`]) and report ([`build_report`]) on
/// every row the select plan returned; returns the report, the per-row
/// results (scores as shown) and the kept flags.
pub(super) fn select_here(
    cfg: &FilterConfig,
    data: &Dataset,
    sel: &Selected,
    centroids: &Centroids,
    invalid: InvalidReport,
    kreport: KMeansReport,
    budget: u64,
) -> Result<(Report, Rows, Vec<bool>)> {
    let p = &cfg.params;
    let mut rows = Rows::new(data.num_rows() as usize);
    rows.valid.fill(false);
    rows.scores.fill(f32::NAN);
    for &(_, f, r, c, d) in &sel.ranked {
        let g = (data.offset(f as usize) + r) as usize;
        rows.labels[g] = c;
        rows.scores[g] = d;
        rows.valid[g] = true;
    }
    // The prototypicality score doubles as the distance to the centroid (DBP, Moderate).
    let dist = rows.scores.clone();
    let chosen = choose(
        p,
        &Ranking {
            scores: &rows.scores,
            labels: &rows.labels,
            dist: &dist,
            eligible: &rows.valid,
            centroids: Some(centroids),
            max_sim: None,
            knn: None,
        },
        budget,
    )?;
    if let Some(sh) = chosen.shown_scores {
        rows.scores = sh;
    }
    let mut report = build_report(cfg, data, &rows, &chosen.kept, invalid, Some(kreport), centroids.k());
    if let Some(plan) = &chosen.dbp {
        for (j, c) in report.clusters.iter_mut().enumerate() {
            c.complexity = plan.complexity.as_ref().map(|cx| cx.value[j]);
            c.share = Some(plan.shares[j]);
            c.quota = Some(plan.allocation.quotas[j]);
        }
    }
    Ok((report, rows, chosen.kept))
}

/// The kept rows of `kept` (global flags) with their cluster and shown score.
pub(super) fn kept_rows(data: &Dataset, rows: &Rows, kept: &[bool]) -> Vec<KeptRow> {
    let mut out = Vec::new();
    for s in &data.shards {
        let first = data.offset(s.index);
        for r in 0..s.num_rows {
            let g = (first + r) as usize;
            if kept[g] {
                out.push((s.index as u32, r, rows.labels[g], rows.scores[g]));
            }
        }
    }
    out
}

/// The report of a global-top run from what the select plan returned: the
/// kept rows ranked, per-cluster sizes and score sums (no score summary:
/// the other rows' scores stayed in the plan).
pub(super) fn ranked_report(
    cfg: &FilterConfig,
    data: &Dataset,
    sel: &Selected,
    invalid: InvalidReport,
    kreport: KMeansReport,
    k: usize,
    budget: u64,
) -> Report {
    let p = &cfg.params;
    let mut inputs: Vec<InputReport> = data
        .shards
        .iter()
        .map(|s| InputReport {
            path: s.path.display().to_string(),
            rows: s.num_rows,
            kept: 0,
            invalid: sel.invalid[s.index].total(),
            output: None,
        })
        .collect();
    let mut clusters: Vec<ClusterReport> = (0..k as u32)
        .map(|id| {
            let (size, sum) = sel.clusters.get(&id).copied().unwrap_or((0, 0.0));
            ClusterReport {
                id,
                size,
                kept: 0,
                mean_score: if size > 0 { (sum / size as f64) as f32 } else { f32::NAN },
                complexity: None,
                share: None,
                quota: None,
            }
        })
        .collect();
    for x in sel.ranked.iter().take(budget as usize) {
        inputs[x.1 as usize].kept += 1;
        clusters[x.3 as usize].kept += 1;
    }
    Report {
        dprune_version: env!("CARGO_PKG_VERSION").into(),
        command: String::new(),
        dry_run: cfg.output.dry_run,
        inputs,
        embedding_source: None,
        dim: None,
        n_rows: data.num_rows(),
        n_eligible: 0,
        prefilter: None,
        invalid,
        n_kept: budget,
        params: p.clone(),
        seed: p.seed,
        kmeans: Some(kreport),
        clusters,
        scores: None,
        stages: vec![],
        semdedup: None,
        prefetch: None,
        outputs: vec![],
        timings_s: BTreeMap::new(),
        warnings: vec![],
    }
}
