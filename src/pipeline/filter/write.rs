//! Step 5 of `filter`: writing the outputs — one pruned shard per input
//! (same file name, schema and row order, optionally with the score
//! columns), or one scores table — and the saved centroids. Every file goes
//! to a temporary name first and is renamed when complete
//! ([`crate::io::atomic`]).

use std::path::PathBuf;

use rayon::prelude::*;

use crate::cluster::Centroids;
use crate::io::writer::{
    ExtraColumn, ExtraValues, Prefetched, ScoreColumns, write_filtered_unsynced, write_scores_table,
};
use crate::io::{Dataset, npy};
use crate::pipeline::filter::{CLUSTER_COLUMN, DUP_OF_COLUMN, MAX_SIM_COLUMN, OutputSpec, SCORE_COLUMN, SCORES_TABLE};
use crate::pipeline::passes::Rows;
use crate::pipeline::prefetch::KeptPrefetch;
use crate::pipeline::progress::{Pass, Progress};
use crate::pipeline::report::Report;
use crate::{Error, Result};

/// A shard's sync and rename, running on a thread of its own.
type SyncHandle<'scope> = std::thread::ScopedJoinHandle<'scope, Result<()>>;

/// What the write step needs of a finished selection.
pub(super) struct Selection<'a> {
    /// Per-row results of the score pass (scores already the ones to show).
    pub rows: &'a Rows,
    /// Whether each row is kept.
    pub kept: &'a [bool],
    /// The centroids, when the run clustered.
    pub centroids: Option<&'a Centroids>,
    /// SemDeDup's M of every row, when it ran.
    pub max_sim: Option<&'a [f32]>,
    /// The row each duplicate duplicates (empty when no dedup stage ran).
    pub dup_of: &'a [Option<u32>],
    /// Copies of the embedding column holding every kept row, if the score
    /// pass made them ([`crate::pipeline::prefetch`]).
    pub prefetch: Option<&'a KeptPrefetch>,
}

/// Writes the outputs of `sel` into `out.dir` and records their paths (and
/// the saved centroids) in `report`.
pub(super) fn write_outputs(
    data: &Dataset,
    out: &OutputSpec,
    sel: &Selection,
    report: &mut Report,
    progress: &dyn Progress,
) -> Result<()> {
    let Selection {
        rows,
        kept,
        centroids,
        max_sim,
        dup_of,
        prefetch,
    } = *sel;
    let n = data.num_rows();
    std::fs::create_dir_all(&out.dir).map_err(|e| Error::io("creating", &out.dir, e))?;
    progress.begin(Pass::Write, n);
    if out.scores_only {
        let cl: Option<Vec<i32>> = centroids
            .as_ref()
            .map(|_| rows.labels.iter().map(|&l| l as i32).collect());
        let dest = out.dir.join(SCORES_TABLE);
        write_scores_table(
            data,
            &ScoreColumns {
                cluster: cl.as_deref(),
                score: &rows.scores,
                kept,
                valid: &rows.valid,
                max_sim,
                dup_of: (!dup_of.is_empty()).then_some(dup_of),
            },
            &dest,
        )?;
        progress.advance(n);
        report.outputs.push(dest.display().to_string());
    } else {
        let labels_i32: Option<Vec<i32>> =
            (out.with_scores && centroids.is_some()).then(|| rows.labels.iter().map(|&l| l as i32).collect());
        let dup_i64: Option<(Vec<i64>, Vec<bool>)> = (out.with_scores && !dup_of.is_empty()).then(|| {
            (
                dup_of.iter().map(|d| d.map_or(-1, |v| v as i64)).collect(),
                dup_of.iter().map(Option::is_some).collect(),
            )
        });
        let sim_valid: Option<Vec<bool>> = max_sim
            .as_ref()
            .map(|m| m.iter().zip(&rows.valid).map(|(v, &ok)| ok && !v.is_nan()).collect());
        // Each shard's sync (tens of milliseconds, more on slow disks) waits on a thread of
        // its own while the pool writes the next shard.
        std::thread::scope(|syncs| {
            let written: Vec<Result<(usize, PathBuf, SyncHandle<'_>)>> = data
                .shards
                .par_iter()
                .map(|s| {
                    let r = data.offset(s.index) as usize..data.offset(s.index + 1) as usize;
                    let mut extra = Vec::new();
                    if out.with_scores {
                        if let Some(l) = &labels_i32 {
                            extra.push(ExtraColumn {
                                name: CLUSTER_COLUMN,
                                values: ExtraValues::I32(&l[r.clone()]),
                                valid: Some(&rows.valid[r.clone()]),
                            });
                        }
                        extra.push(ExtraColumn {
                            name: SCORE_COLUMN,
                            values: ExtraValues::F32(&rows.scores[r.clone()]),
                            valid: Some(&rows.valid[r.clone()]),
                        });
                        if let (Some(m), Some(v)) = (&max_sim, &sim_valid) {
                            extra.push(ExtraColumn {
                                name: MAX_SIM_COLUMN,
                                values: ExtraValues::F32(&m[r.clone()]),
                                valid: Some(&v[r.clone()]),
                            });
                        }
                        if let Some((d, v)) = &dup_i64 {
                            extra.push(ExtraColumn {
                                name: DUP_OF_COLUMN,
                                values: ExtraValues::I64(&d[r.clone()]),
                                valid: Some(&v[r.clone()]),
                            });
                        }
                    }
                    let dest = out.dir.join(s.path.file_name().expect("input files have names"));
                    let on_rows = |m| progress.advance(m);
                    let (_, file) = match prefetch {
                        Some(kp) => {
                            let rows = kp.rows(s.index).ok_or_else(|| {
                                Error::Internal(format!("no prefetched rows for {}", s.path.display()))
                            })?;
                            let open = || kp.open(s.index);
                            let pre = Prefetched {
                                column: kp.column(),
                                rows: &rows,
                                open: &open,
                            };
                            write_filtered_unsynced(s, &kept[r], &extra, &dest, &on_rows, Some(&pre))?
                        }
                        None => write_filtered_unsynced(s, &kept[r], &extra, &dest, &on_rows, None)?,
                    };
                    Ok((s.index, dest, syncs.spawn(move || file.commit())))
                })
                .collect();
            // Every sync is joined (the scope would anyway) before the first error is returned.
            let mut first_err = None;
            for w in written {
                match w.and_then(|(i, dest, h)| {
                    h.join().map_err(|_| Error::Internal("sync thread panicked".into()))??;
                    Ok((i, dest))
                }) {
                    Ok((i, dest)) => {
                        report.inputs[i].output = Some(dest.display().to_string());
                        report.outputs.push(dest.display().to_string());
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            first_err.map_or(Ok(()), Err)
        })?;
    }
    progress.end();
    if let (Some(path), Some(c)) = (&out.save_centroids, &centroids) {
        npy::write_matrix(path, c.as_slice(), c.k(), c.dim())?;
        if let Some(kr) = report.kmeans.as_mut() {
            kr.saved_to = Some(path.display().to_string());
        }
    }
    Ok(())
}
