//! `filter --engine sql` and `filter --cluster df://host:port`: the same
//! prune as the native driver, run as DataFusion plans, in this process or
//! on a Ballista cluster (`dprune cluster scheduler|executor`).
//!
//! 1. **fit** here, on the seeded sample, with the native driver's code
//!    ([`super::driver::fit_or_load`]), so the centroids equal a native
//!    run's;
//! 2. **score and select**, as one DataFusion plan: a scan of every
//!    shard's embeddings with their (file, row) identity ([`RowsExec`]),
//!    `dprune_nearest` (on a cluster the centroids travel inside the
//!    plan), and `row_number()` windows: over all rows by score (ties by
//!    file, then row: `filter`'s order) for the budget, and per cluster
//!    for the report. Only the rows within the budget, one row per cluster
//!    and unusable rows come back;
//! 3. **write**: one task per shard writes its pruned shard
//!    ([`WriteExec`]), reading which rows to keep from a bitmap left in
//!    the output folder (removed afterwards), so plans stay small;
//! 4. the report and plot are written here.
//!
//! The kept set is exactly the native run's (same fit, same kernel, same
//! order; `tests/cluster.rs` compares the outputs row for row). The global
//! top of `--metric proto` is ranked in the plan; the rules that need every
//! row's cluster and score (`--balance clusters`, DBP, CCS, Moderate) and
//! `--scores-only` bring them all back and run the native selection
//! ([`choose`]) and report here. Other stages (SemDeDup, kNN, random,
//! exact dedup, quality, `--where`, encoders) are refused with a message
//! naming the flag. Embeddings come from a column or LAION-style `.npy`
//! sidecars; `--with-scores` works with every rule.
//! On a cluster every executor must see the inputs and the output folder
//! at the same absolute paths.
//!
//! [`RowsExec`]: crate::datafusion::plans::RowsExec

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::datafusion::prelude::{SessionConfig, SessionContext};
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::UInt64Type;

mod selected;

use selected::{KeptRow, collect_selected, gathers_all_rows, kept_rows, ranked_report, select_here, select_sql};

use super::checks::check_output;
use super::driver::{Timings, fit_or_load, write_report_files};
use super::{EmbeddingSpec, FilterConfig, SCORES_TABLE};
use crate::datafusion::plans::{
    RowsSpec, RowsTable, WriteExec, WriteSpec, file_groups, kept_score_record, own_message,
};
use crate::datafusion::{FunctionOptions, register};
use crate::io::embeddings::{ColumnSource, EmbeddingSource, NpySidecarSource};
use crate::io::writer::{ScoreColumns, write_scores_table};
use crate::io::{Dataset, expand_inputs, npy};
use crate::pipeline::progress::Progress;
use crate::pipeline::report::{InvalidReport, Report};
use crate::pipeline::stages::StageReport;
use crate::score::Metric;
use crate::select::Budget;
use crate::{Error, Result};
use ::datafusion::physical_plan::ExecutionPlan;

/// The flag that chose this path, for messages.
fn engine_flag(cfg: &FilterConfig) -> &'static str {
    if cfg.cluster.is_some() {
        "--cluster"
    } else {
        "--engine sql"
    }
}

/// Refuses what the SQL engine does not run (yet), naming the flag.
fn check_supported(cfg: &FilterConfig) -> Result<()> {
    let p = &cfg.params;
    let via = engine_flag(cfg);
    let refuse = |flag: &str| {
        Err(Error::param(
            via,
            format!(
                "{flag} is not supported by the DataFusion engine yet (it runs --metric proto, dbp, ccs or \
                 moderate with --keep/--keep-n, --keep-easy, --balance, --k/--sample/--seed or --centroids, \
                 --drop-invalid, --with-scores, --scores-only, embeddings in a column or --embeddings sidecars); \
                 run without {via}"
            ),
        ))
    };
    if !matches!(p.metric, Metric::Proto | Metric::Dbp | Metric::Ccs | Metric::Moderate) {
        return refuse(&format!("--metric {}", p.metric));
    }
    if p.exact_dedup {
        return refuse("--exact-dedup");
    }
    if p.dedup.eps.is_some() {
        return refuse("--dedup");
    }
    if p.quality.is_some() {
        return refuse("--quality-col");
    }
    if p.score_col.is_some() {
        return refuse("--score-col");
    }
    if p.where_sql.is_some() {
        return refuse("--where");
    }
    if p.assignments.is_some() {
        return refuse("--assignments");
    }
    if matches!(cfg.embeddings, EmbeddingSpec::Encode(_)) {
        return refuse("an encoder (--model/--text-col)");
    }
    Ok(())
}

/// The kept bitmap over all input rows (file order, then row order), LSB first.
fn write_bitmap(path: &Path, kept: &[KeptRow], offsets: &[u64], n: u64) -> Result<()> {
    let mut bits = vec![0u8; n.div_ceil(8) as usize];
    for &(f, r, _, _) in kept {
        let g = offsets[f as usize] + r;
        bits[(g / 8) as usize] |= 1 << (g % 8);
    }
    std::fs::write(path, &bits).map_err(|e| Error::io("writing", path, e))
}

/// `--with-scores`: the kept rows' (cluster, score) records in file then
/// row order ([`kept_score_record`]); returns the kept rows before each file.
fn write_kept_scores(path: &Path, kept: &[KeptRow], files: usize) -> Result<Vec<u64>> {
    let mut rows: Vec<KeptRow> = kept.to_vec();
    rows.sort_unstable_by_key(|x| (x.0, x.1));
    let mut counts = vec![0u64; files];
    let mut bytes = Vec::with_capacity(rows.len() * 8);
    for &(f, _, c, d) in &rows {
        counts[f as usize] += 1;
        bytes.extend_from_slice(&kept_score_record(c, d));
    }
    std::fs::write(path, &bytes).map_err(|e| Error::io("writing", path, e))?;
    let before = counts
        .iter()
        .scan(0u64, |acc, &c| {
            let b = *acc;
            *acc += c;
            Some(b)
        })
        .collect();
    Ok(before)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(rayon::current_num_threads())
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the async runtime: {e}")))
}

/// Runs `plan` where the job runs: in this process (`cluster` is `None`)
/// or on the Ballista cluster at `cluster`, and collects its output.
async fn run_plan(
    cluster: Option<&str>,
    ctx: &SessionContext,
    plan: Arc<dyn ExecutionPlan>,
) -> Result<Vec<RecordBatch>> {
    match cluster {
        None => ::datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .map_err(|e| {
                let text = e.to_string();
                Error::Sql {
                    context: "filter --engine sql".into(),
                    reason: own_message(&text).map_or_else(|| text.clone(), str::to_string),
                }
            }),
        #[cfg(feature = "ballista")]
        Some(url) => crate::datafusion::distributed::execute(url, plan).await,
        #[cfg(not(feature = "ballista"))]
        Some(url) => Err(Error::param(
            "--cluster",
            format!("`{url}`: this dprune was built without the `ballista` feature"),
        )),
    }
}

/// Runs `cfg` as DataFusion plans, on the Ballista cluster `cfg.cluster`
/// or else in this process; returns its report (also written unless
/// `dry_run`).
pub fn run_filter_sql(cfg: &FilterConfig, progress: &dyn Progress) -> Result<Report> {
    let mut t = Timings::new();
    let p = &cfg.params;
    p.validate()?;
    check_supported(cfg)?;
    let cluster = cfg.cluster.as_deref();
    #[cfg(feature = "ballista")]
    if let Some(url) = cluster {
        crate::datafusion::distributed::parse_url(url)?;
    }
    let out = &cfg.output;
    let given = expand_inputs(&cfg.inputs)?;
    if !out.dry_run {
        check_output(&given, out)?;
    }
    // Executors may run in other folders: they get absolute paths.
    let paths: Vec<PathBuf> = given
        .iter()
        .map(|p| std::fs::canonicalize(p).map_err(|e| Error::io("reading", p, e)))
        .collect::<Result<_>>()?;
    let data = Dataset::open(&paths)?;
    let n = data.num_rows();
    if n == 0 {
        return Err(Error::Empty(format!("the {} input file(s) hold no rows", paths.len())));
    }
    // The source the sample is read from here, and what the scan tasks read:
    // the column's name, or the sidecars' absolute paths.
    let (source, column, sidecars): (Box<dyn EmbeddingSource>, String, Vec<PathBuf>) = match &cfg.embeddings {
        EmbeddingSpec::Auto | EmbeddingSpec::Column(_) => {
            let name = match &cfg.embeddings {
                EmbeddingSpec::Column(c) => Some(c.as_str()),
                _ => None,
            };
            let c = ColumnSource::detect(&data, name)?;
            let column = c.name().to_string();
            (Box::new(c), column, Vec::new())
        }
        EmbeddingSpec::Sidecars(patterns) => {
            let files = expand_inputs(patterns)?;
            let npy = NpySidecarSource::open(&data, &files)?;
            let files = files
                .iter()
                .map(|p| std::fs::canonicalize(p).map_err(|e| Error::io("reading", p, e)))
                .collect::<Result<_>>()?;
            (Box::new(npy), String::new(), files)
        }
        EmbeddingSpec::Encode(_) => return Err(Error::Internal("encoders are refused above".into())),
    };
    t.mark("plan");

    let mut invalid_sample = InvalidReport::default();
    let (centroids, kreport, _) = fit_or_load(
        &data,
        source.as_ref(),
        p,
        None,
        n,
        &mut invalid_sample,
        progress,
        &mut t,
    )?;
    let centroids = Arc::new(centroids);
    let k = centroids.k();

    // Score and select.
    // Every row comes back when the rule runs here (or for the scores table).
    let gathered = gathers_all_rows(cfg);
    let bmax = match p.keep {
        _ if gathered => n,
        Budget::Fraction(_) => p.keep.resolve(n)?,
        Budget::Count(c) => c.min(n),
    };
    let spec = RowsSpec {
        files: paths.clone(),
        column,
        sidecars,
        dim: source.dim(),
        drop_invalid: p.drop_invalid,
        batch_rows: p.batch_rows,
    };
    let rt = runtime()?;
    // In this process: as many partitions as worker threads (files are
    // grouped, so memory does not grow with the number of files); on a
    // cluster: one per file, spread over the executors.
    let threads = rayon::current_num_threads();
    let local_parts = cluster.is_none().then_some(threads);
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(threads));
    register(
        &ctx,
        &FunctionOptions {
            centroids: Some(centroids.clone()),
            encoder: None,
        },
    );
    let sql = select_sql(p.prefer, bmax);
    let batches = rt.block_on(async {
        let sql_err = |e: ::datafusion::error::DataFusionError| Error::Sql {
            context: "filter select plan".into(),
            reason: e.to_string(),
        };
        ctx.register_table("rows", Arc::new(RowsTable::with_partitions(spec, local_parts)))
            .map_err(sql_err)?;
        let plan = ctx
            .sql(&sql)
            .await
            .map_err(sql_err)?
            .create_physical_plan()
            .await
            .map_err(sql_err)?;
        run_plan(cluster, &ctx, plan).await
    })?;
    t.mark("score_select");
    let sel = collect_selected(&batches, paths.len())?;
    let mut invalid = InvalidReport::default();
    for i in &sel.invalid {
        invalid.null += i.null;
        invalid.not_finite += i.not_finite;
        invalid.zero += i.zero;
    }
    let n_usable = n - invalid.total();
    if n_usable == 0 {
        return Err(Error::Empty(format!(
            "all {n} rows have unusable embeddings; nothing to select from"
        )));
    }
    let budget = p.keep.resolve(n_usable)?;
    // Files as given (the report and scores table name them so, like a native run's).
    let mut shown = data.clone();
    for (s, g) in shown.shards.iter_mut().zip(&given) {
        s.path = g.clone();
    }

    // The selection: the global top came back ranked; any other rule runs here,
    // with the native code, on every row's cluster and score.
    let mut warnings = Vec::new();
    let (kept, mut report, table) = if gathered {
        let (report, rows, kept_flags) = select_here(cfg, &shown, &sel, &centroids, invalid.clone(), kreport, budget)?;
        let kept: Vec<KeptRow> = kept_rows(&shown, &rows, &kept_flags);
        (kept, report, Some((rows, kept_flags)))
    } else {
        let kept: Vec<KeptRow> = sel
            .ranked
            .iter()
            .take(budget as usize)
            .map(|x| (x.1, x.2, x.3, x.4))
            .collect();
        if (kept.len() as u64) < budget {
            return Err(Error::Internal(format!(
                "the select plan returned {} ranked rows for a budget of {budget}",
                kept.len()
            )));
        }
        let report = ranked_report(cfg, &shown, &sel, invalid.clone(), kreport, k, budget);
        (kept, report, None)
    };
    report.command = match cluster {
        Some(url) => format!("filter --cluster {url}"),
        None => "filter --engine sql".into(),
    };
    report.embedding_source = Some(source.describe());
    report.dim = Some(source.dim());
    report.n_eligible = n_usable;
    report.n_kept = budget;
    report.stages = vec![StageReport {
        name: p.metric.to_string(),
        rows_in: n_usable,
        removed: n_usable - budget,
        rows_out: budget,
    }];
    if invalid.total() > 0 {
        warnings.push(format!(
            "{} rows with unusable embeddings were excluded ({} null, {} not finite, {} all zeros)",
            invalid.total(),
            invalid.null,
            invalid.not_finite,
            invalid.zero
        ));
    }
    if budget == 0 {
        warnings.push(format!(
            "the budget rounds to 0 rows of {n_usable}; nothing will be kept"
        ));
    }
    for w in &warnings {
        progress.warn(w);
    }
    report.warnings = warnings;

    if !out.dry_run && out.scores_only {
        std::fs::create_dir_all(&out.dir).map_err(|e| Error::io("creating", &out.dir, e))?;
        let (rows, kept_flags) = table
            .as_ref()
            .ok_or_else(|| Error::Internal("scores-only without rows".into()))?;
        let cluster: Vec<i32> = rows.labels.iter().map(|&l| l as i32).collect();
        let dest = out.dir.join(SCORES_TABLE);
        write_scores_table(
            &shown,
            &ScoreColumns {
                cluster: Some(&cluster),
                score: &rows.scores,
                kept: kept_flags,
                valid: &rows.valid,
                max_sim: None,
                dup_of: None,
            },
            &dest,
        )?;
        report.outputs.push(dest.display().to_string());
    } else if !out.dry_run {
        std::fs::create_dir_all(&out.dir).map_err(|e| Error::io("creating", &out.dir, e))?;
        let out_dir = std::fs::canonicalize(&out.dir).map_err(|e| Error::io("reading", &out.dir, e))?;
        let offsets: Vec<u64> = (0..=paths.len()).map(|i| data.offset(i)).collect();
        let bitmap = out_dir.join(format!(".dprune-kept-{}.bin", std::process::id()));
        write_bitmap(&bitmap, &kept, &offsets, n)?;
        let scores_file = out_dir.join(format!(".dprune-kept-scores-{}.bin", std::process::id()));
        let kept_before = match out.with_scores {
            true => write_kept_scores(&scores_file, &kept, paths.len()),
            false => Ok(Vec::new()),
        };
        let written = kept_before.and_then(|kept_before| {
            let files = file_groups(paths.len(), local_parts.unwrap_or(paths.len()))
                .map_err(|e| Error::Internal(e.to_string()))?;
            let plan = WriteExec::with_input(
                WriteSpec {
                    files: paths.clone(),
                    first_rows: offsets[..paths.len()].to_vec(),
                    out_dir: out_dir.clone(),
                    kept_bitmap: bitmap.clone(),
                    kept_scores: out.with_scores.then(|| scores_file.clone()),
                    kept_before,
                },
                files,
            );
            rt.block_on(run_plan(cluster, &ctx, Arc::new(plan)))
        });
        let _ = std::fs::remove_file(&bitmap);
        let _ = std::fs::remove_file(&scores_file);
        let written = written?;
        let mut rows_written = 0u64;
        for b in &written {
            if let Some(w) = b.column(1).as_primitive_opt::<UInt64Type>() {
                rows_written += w.values().iter().sum::<u64>();
            }
        }
        if rows_written != budget {
            return Err(Error::Internal(format!(
                "the write plan wrote {rows_written} rows, {budget} were kept"
            )));
        }
        for (s, input) in data.shards.iter().zip(report.inputs.iter_mut()) {
            let dest = out.dir.join(s.path.file_name().unwrap_or_default());
            input.output = Some(dest.display().to_string());
            report.outputs.push(dest.display().to_string());
        }
    }
    if !out.dry_run {
        if let Some(path) = &out.save_centroids {
            npy::write_matrix(path, centroids.as_slice(), k, centroids.dim())?;
            if let Some(kr) = report.kmeans.as_mut() {
                kr.saved_to = Some(path.display().to_string());
            }
        }
        t.mark("write");
    }
    report.timings_s = t.finish();
    write_report_files(out, &mut report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::filter::Balance;

    #[test]
    fn bitmap_sets_exactly_the_kept_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.bin");
        // Two files of 5 and 7 rows.
        let offsets = [0u64, 5, 12];
        write_bitmap(
            &path,
            &[(0, 0, 0, 0.0), (0, 4, 0, 0.0), (1, 0, 0, 0.0), (1, 6, 0, 0.0)],
            &offsets,
            12,
        )
        .unwrap();
        let bits = std::fs::read(&path).unwrap();
        assert_eq!(bits.len(), 2);
        let set: Vec<u64> = (0..12).filter(|&g| bits[g as usize / 8] >> (g % 8) & 1 == 1).collect();
        assert_eq!(set, vec![0, 4, 5, 11]);
    }

    #[test]
    fn kept_scores_are_in_file_then_row_order_with_offsets_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.bin");
        // (file, row, cluster, score), in rank order over three files (file 1 keeps none).
        let ranked = [(2, 5, 7, 0.9), (0, 3, 1, 0.8), (2, 0, 4, 0.7), (0, 1, 2, 0.6)];
        let before = write_kept_scores(&path, &ranked, 3).unwrap();
        assert_eq!(before, vec![0, 2, 2]);
        let bytes = std::fs::read(&path).unwrap();
        let want: Vec<u8> = [(2, 0.6f32), (1, 0.8), (4, 0.7), (7, 0.9)]
            .iter()
            .flat_map(|&(c, d)| kept_score_record(c, d))
            .collect();
        assert_eq!(bytes, want);
    }

    #[test]
    fn unsupported_flags_are_named() {
        let mut cfg = FilterConfig::default();
        cfg.params.metric = Metric::Semdedup;
        let e = check_supported(&cfg).unwrap_err().to_string();
        assert!(e.contains("--metric semdedup") && e.contains("--engine sql"), "{e}");
        cfg.cluster = Some("df://127.0.0.1:1".into());
        let e = check_supported(&cfg).unwrap_err().to_string();
        assert!(e.contains("--metric semdedup") && e.contains("--cluster"), "{e}");
        let mut cfg = FilterConfig::default();
        cfg.params.where_sql = Some("a > 1".into());
        assert!(check_supported(&cfg).unwrap_err().to_string().contains("--where"));
        for m in [Metric::Dbp, Metric::Ccs, Metric::Moderate] {
            let mut cfg = FilterConfig::default();
            cfg.params.metric = m;
            assert!(check_supported(&cfg).is_ok() && gathers_all_rows(&cfg));
        }
        let mut cfg = FilterConfig::default();
        cfg.params.balance = Balance::Clusters;
        assert!(check_supported(&cfg).is_ok() && gathers_all_rows(&cfg));
        assert!(!gathers_all_rows(&FilterConfig::default()));
        assert!(check_supported(&FilterConfig::default()).is_ok());
    }
}
