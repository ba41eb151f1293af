//! The streaming passes of `filter` over the embeddings: drawing the
//! k-means sample and scoring every row.
//!
//! Shards are processed in parallel (one rayon task per shard; inside a
//! shard a reader thread decodes the next batch while the current one is
//! scored). Every row's result depends only on the row and the centroids,
//! and per-shard results are merged in shard order, so the output does not
//! depend on the thread count or the batch size.

use std::path::Path;
use std::sync::mpsc::sync_channel;

use rayon::prelude::*;

use crate::cluster::{Centroids, CertifiedSearch, Distance};
use crate::distance::{normalize, normalize_into};
use crate::io::embeddings::{EmbeddingBlock, EmbeddingSource, unusable};
use crate::io::{Dataset, Shard};
use crate::pipeline::filter::FilterParams;
use crate::pipeline::prefetch::KeptPrefetch;
use crate::pipeline::progress::Progress;
use crate::pipeline::report::InvalidReport;
use crate::pipeline::spill::ClusterSpill;
use crate::pipeline::stages::boundary;
use crate::score::semdedup::hash_f32;
use crate::score::{prototypicality, prototypicality_given};
use crate::{Error, Result};

/// Per-row results of the score pass, a few bytes per row.
#[derive(Debug, Clone)]
pub struct Rows {
    /// Nearest centroid of every row (`u32::MAX` before scoring).
    pub labels: Vec<u32>,
    /// Score of every row (NaN for unusable rows).
    pub scores: Vec<f32>,
    /// Whether the row's embedding is usable.
    pub valid: Vec<bool>,
    /// A 128-bit hash of the raw embedding bits of every usable row, when
    /// the exact-duplicate stage asks for it (empty otherwise).
    pub hashes: Vec<Option<u128>>,
    /// Second-nearest centroid of every row, when the cross-cluster pass
    /// asks for it (empty otherwise).
    pub second: Vec<u32>,
    /// Each row's margin to that centroid, d1 − d2 (see [`boundary`]): with
    /// `second` from the nearest-centroid search, empty otherwise (given
    /// assignments).
    pub margin: Vec<f32>,
}

impl Rows {
    /// State for `n` rows, all valid.
    pub fn new(n: usize) -> Self {
        Rows {
            labels: vec![u32::MAX; n],
            scores: vec![0.0; n],
            valid: vec![true; n],
            hashes: Vec::new(),
            second: Vec::new(),
            margin: Vec::new(),
        }
    }
}

/// The "reason" of a row removed by `--where` before the pass.
const EXCLUDED: &str = "excluded";

/// An unusable row: an error naming file and row, or (with `drop_invalid`)
/// counted and excluded.
fn reject(p: &FilterParams, invalid: &mut InvalidReport, path: &Path, row: u64, what: &'static str) -> Result<()> {
    if !p.drop_invalid {
        return Err(Error::InvalidVector {
            path: path.to_path_buf(),
            row,
            what,
        });
    }
    match what {
        "null" => invalid.null += 1,
        "all zeros" => invalid.zero += 1,
        _ => invalid.not_finite += 1,
    }
    Ok(())
}

/// Streams the blocks of one shard from a reader thread through a bounded
/// channel, so decoding overlaps computing; `f` sees the blocks in order.
fn stream_shard(
    shard: &Shard,
    source: &dyn EmbeddingSource,
    batch_rows: usize,
    mut f: impl FnMut(EmbeddingBlock) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Result<EmbeddingBlock>>(2);
        let reader = scope.spawn(move || {
            let blocks = match source.blocks(shard, batch_rows) {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            for b in blocks {
                let stop = b.is_err();
                if tx.send(b).is_err() || stop {
                    return;
                }
            }
        });
        let mut result = Ok(());
        for item in rx.iter() {
            if let Err(e) = item.and_then(&mut f) {
                result = Err(e);
                break;
            }
        }
        drop(rx);
        reader
            .join()
            .map_err(|_| Error::Internal("reader thread panicked".into()))?;
        result
    })
}

/// Merges per-shard results in shard order: the first error (by shard)
/// wins, invalid counts add up.
fn merge<T>(parts: Vec<Result<(T, InvalidReport)>>, invalid: &mut InvalidReport) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let (t, inv) = p?;
        invalid.null += inv.null;
        invalid.not_finite += inv.not_finite;
        invalid.zero += inv.zero;
        out.push(t);
    }
    Ok(out)
}

/// [`unusable`], given the row's norm when it was computed anyway (cosine rows are
/// normalised): a finite, positive norm means every value is finite (a NaN or an
/// inf makes the sum of squares NaN or inf) and not all are zero, so only rows with
/// another norm get the full check, which says why (or finds a usable row whose
/// squares overflow or underflow). Same answer as `unusable(x, null)`.
fn unusable_given_norm(x: &[f32], null: bool, norm: Option<f32>) -> Option<&'static str> {
    if !null && norm.is_some_and(|n| n > 0.0 && n.is_finite()) {
        None
    } else {
        unusable(x, null)
    }
}

/// Sample pass: validates every row (of `only`, when given: the rows left
/// by `--where`, by global id) and collects the embeddings (unit vectors
/// for cosine) of the rows in `sample_ids` (sorted global ids), and the global
/// ids of the rows taken (unusable ones are left out).
pub fn read_sample(
    data: &Dataset,
    source: &dyn EmbeddingSource,
    sample_ids: &[u64],
    only: Option<&[bool]>,
    p: &FilterParams,
    invalid: &mut InvalidReport,
    progress: &dyn Progress,
) -> Result<(Vec<f32>, Vec<u64>)> {
    let d = source.dim();
    // Every shard fills its own slice of one buffer (as many rows as it has sample ids),
    // so the sample is never copied whole; rows left out as unusable leave gaps that are
    // closed afterwards.
    let counts: Vec<usize> = data
        .shards
        .iter()
        .map(|shard| {
            let (lo, hi) = (data.offset(shard.index), data.offset(shard.index + 1));
            sample_ids.partition_point(|&g| g < hi) - sample_ids.partition_point(|&g| g < lo)
        })
        .collect();
    let mut out = vec![0f32; sample_ids.len() * d];
    let mut slices = Vec::with_capacity(counts.len());
    let mut rest = out.as_mut_slice();
    for &c in &counts {
        let (head, tail) = rest.split_at_mut(c * d);
        slices.push(head);
        rest = tail;
    }
    let parts: Vec<Result<(Vec<u64>, InvalidReport)>> = data
        .shards
        .par_iter()
        .zip(slices)
        .map(|(shard, out)| {
            let (lo, hi) = (data.offset(shard.index), data.offset(shard.index + 1));
            let ids = &sample_ids[sample_ids.partition_point(|&g| g < lo)..sample_ids.partition_point(|&g| g < hi)];
            let mut taken = Vec::with_capacity(ids.len());
            let mut inv = InvalidReport::default();
            let mut next = 0usize;
            stream_shard(shard, source, p.batch_rows, |b| {
                let base = lo + b.first_row;
                for i in 0..b.rows() {
                    if only.is_some_and(|o| !o[(base + i as u64) as usize]) {
                        // Removed by `--where`: neither checked nor sampled.
                        continue;
                    }
                    let x = &b.values[i * d..(i + 1) * d];
                    let bad = unusable(x, b.null[i]);
                    if let Some(what) = bad {
                        reject(p, &mut inv, &shard.path, b.first_row + i as u64, what)?;
                    }
                    let g = base + i as u64;
                    while next < ids.len() && ids[next] < g {
                        next += 1;
                    }
                    if next < ids.len() && ids[next] == g {
                        if bad.is_none() {
                            let row = &mut out[taken.len() * d..(taken.len() + 1) * d];
                            taken.push(g);
                            row.copy_from_slice(x);
                            if p.kmeans.distance == Distance::Cosine {
                                normalize(row);
                            }
                        }
                        next += 1;
                    }
                }
                progress.advance(b.rows() as u64);
                Ok(())
            })?;
            Ok((taken, inv))
        })
        .collect();
    let parts = merge(parts, invalid)?;
    // Close the gaps: shard s's rows move down to just after shard s − 1's.
    let (mut at, mut start) = (0usize, 0usize);
    let mut ids = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for (taken, &c) in parts.iter().zip(&counts) {
        let n = taken.len() * d;
        if at != start {
            out.copy_within(start..start + n, at);
        }
        at += n;
        start += c * d;
        ids.extend_from_slice(taken);
    }
    out.truncate(at);
    Ok((out, ids))
}

/// A nearest-centroid search: rows (all, or those selected by index), then labels and
/// f32 dots out (one per row searched).
type Search<'a> = dyn Fn(&[f32], Option<&[u32]>, &mut [u32], &mut [f32]) + 'a;

/// The nearest centroid and f32 dot of every row of `x` (the batch from global
/// row `g0` on): rows k-means trained on take the fit's values (the same bits,
/// [`TrainedRows`]), the others go through `search`, which takes them by index
/// (each chunk copied by the thread that searches it, not gathered first).
fn nearest_or_trained(
    search: &Search,
    x: &[f32],
    g0: u64,
    trained: Option<&TrainedRows>,
    labels: &mut [u32],
    dots: &mut [f32],
) {
    let m = labels.len() as u64;
    let Some(t) = trained else {
        return search(x, None, labels, dots);
    };
    let (lo, hi) = (
        t.ids.partition_point(|&g| g < g0),
        t.ids.partition_point(|&g| g < g0 + m),
    );
    if lo == hi {
        return search(x, None, labels, dots);
    }
    let mut rest = Vec::with_capacity(labels.len() - (hi - lo));
    let mut q = lo;
    for i in 0..labels.len() {
        if q < hi && t.ids[q] == g0 + i as u64 {
            (labels[i], dots[i]) = (t.labels[q], t.dots[q]);
            q += 1;
        } else {
            rest.push(i as u32);
        }
    }
    if rest.is_empty() {
        return;
    }
    let (mut l, mut dd) = (vec![0u32; rest.len()], vec![0f32; rest.len()]);
    search(x, Some(&rest), &mut l, &mut dd);
    for (r, &i) in rest.iter().enumerate() {
        (labels[i as usize], dots[i as usize]) = (l[r], dd[r]);
    }
}

/// The k-means training rows' nearest centroid and f32 dot, by global row id
/// (ascending): the score pass's own values for those rows, so it copies them
/// instead of searching again (cosine, unless `DPRUNE_SAMPLE_LABELS=0`). Only
/// the plain nearest-centroid search uses them: with `--assignments` the labels
/// are given, and the cross pass (`--dedup-global`) also needs every row's
/// second-nearest centroid, which the fit does not keep.
#[derive(Debug, Clone, Default)]
pub struct TrainedRows {
    /// Global row ids, ascending.
    pub ids: Vec<u64>,
    /// Nearest centroid of each.
    pub labels: Vec<u32>,
    /// f32 dot with it.
    pub dots: Vec<f32>,
}

impl TrainedRows {
    /// Whether a score pass may use them (see the type's doc).
    pub fn enabled() -> bool {
        std::env::var("DPRUNE_SAMPLE_LABELS").map_or(true, |v| v != "0")
    }
}

/// Where the score pass groups rows by cluster (see [`crate::pipeline::spill`]).
#[derive(Default, Clone, Copy)]
pub struct Spills<'a> {
    /// Every usable row under its nearest centroid.
    pub owners: Option<&'a ClusterSpill>,
    /// Every usable row near the boundary to its second-nearest centroid
    /// (cosine only; fills `rows.second`), under that centroid, unless the
    /// owner spill puts both clusters in one partition.
    pub guests: Option<&'a ClusterSpill>,
    /// The raw embeddings of the rows whose score it wants (the plain
    /// nearest-centroid search only), for the write pass.
    pub kept: Option<&'a KeptPrefetch>,
}

/// Score pass: nearest centroid and prototypicality of every row; also
/// hashes the raw embeddings when `rows.hashes` is sized to the rows, and
/// appends every usable row's unit embedding to the `spills` given. Rows
/// already marked invalid in `rows.valid` (removed by `--where`) are
/// neither checked nor scored.
#[allow(clippy::too_many_arguments)]
pub fn score_rows(
    data: &Dataset,
    source: &dyn EmbeddingSource,
    c: &Centroids,
    p: &FilterParams,
    rows: &mut Rows,
    spills: Spills,
    trained: Option<&TrainedRows>,
    invalid: &mut InvalidReport,
    progress: &dyn Progress,
) -> Result<()> {
    let d = source.dim();
    if c.dim() != d {
        return Err(Error::Internal(format!(
            "centroid dim {} vs embedding dim {d}",
            c.dim()
        )));
    }
    // Disjoint per-shard views of the per-row state.
    let hashing = !rows.hashes.is_empty();
    // `--assignments` filled `rows.labels` already: the score pass keeps them.
    let fixed = p.assignments.is_some();
    if spills.guests.is_some() {
        if c.distance() != Distance::Cosine {
            return Err(Error::Internal("second-cluster spill needs cosine centroids".into()));
        }
        rows.second = vec![u32::MAX; rows.labels.len()];
        if !fixed {
            rows.margin = vec![f32::NAN; rows.labels.len()];
        }
    }
    let mut views = Vec::with_capacity(data.shards.len());
    let (mut l, mut s, mut v) = (&mut rows.labels[..], &mut rows.scores[..], &mut rows.valid[..]);
    let mut h = &mut rows.hashes[..];
    let mut sec = &mut rows.second[..];
    let mut mar = &mut rows.margin[..];
    for shard in &data.shards {
        let n = shard.num_rows as usize;
        let (l0, l1) = l.split_at_mut(n);
        let (s0, s1) = s.split_at_mut(n);
        let (v0, v1) = v.split_at_mut(n);
        let (h0, h1) = h.split_at_mut(if hashing { n } else { 0 });
        let (x0, x1) = sec.split_at_mut(if spills.guests.is_some() { n } else { 0 });
        let (m0, m1) = mar.split_at_mut(if mar.is_empty() { 0 } else { n });
        views.push((shard, l0, s0, v0, h0, (x0, m0)));
        (l, s, v, h, sec, mar) = (l1, s1, v1, h1, x1, m1);
    }
    // bf16 products with an exact f32 recheck: the same labels and dots, faster.
    let certified = CertifiedSearch::new(c);
    let parts: Vec<Result<((), InvalidReport)>> = views
        .into_par_iter()
        .map(|(shard, labels, scores, valid, hashes, (second, margin))| {
            let mut inv = InvalidReport::default();
            let mut buffer = spills.owners.map(|s| s.buffer());
            let mut guest_buffer = spills.guests.map(|s| s.buffer());
            // Copying is an optimisation: a failure (full disk) turns it off, not the run.
            let mut prefetch = spills
                .kept
                .and_then(|k| k.writer(shard.index).map_err(|e| k.fail(e)).ok());
            // With a prefetch (which copies raw rows), the rows are normalised into this
            // buffer and `b.values` stays raw: one pass over the block instead of a copy of
            // every row and an in-place pass.
            let mut normed: Vec<f32> = Vec::new();
            let first_id = data.offset(shard.index);
            stream_shard(shard, source, p.batch_rows, |mut b| {
                let base = b.first_row as usize;
                let m = b.rows();
                if hashing {
                    // Raw bits, before normalisation: "identical embedding" means identical input.
                    let hs: Vec<Option<u128>> = b
                        .values
                        .par_chunks(d)
                        .zip(b.null.par_iter())
                        .map(|(x, &null)| (!null).then(|| hash_f32(x)))
                        .collect();
                    hashes[base..base + m].copy_from_slice(&hs);
                }
                // Validate and (for cosine) normalise; bad rows become zeros.
                let cosine = c.distance() == Distance::Cosine;
                let out_of_place = prefetch.is_some();
                let bad: Vec<Option<&'static str>> = if out_of_place {
                    normed.resize(b.values.len(), 0.0);
                    b.values
                        .par_chunks(d)
                        .zip(normed.par_chunks_mut(d))
                        .zip(b.null.par_iter().zip(valid[base..base + m].par_iter()))
                        .map(|((x, y), (&null, &kept))| {
                            if !kept {
                                y.fill(0.0);
                                return Some(EXCLUDED);
                            }
                            let norm = if cosine {
                                Some(normalize_into(x, y))
                            } else {
                                y.copy_from_slice(x);
                                None
                            };
                            let why = unusable_given_norm(x, null, norm);
                            if why.is_some() {
                                y.fill(0.0);
                            }
                            why
                        })
                        .collect()
                } else {
                    b.values
                        .par_chunks_mut(d)
                        .zip(b.null.par_iter().zip(valid[base..base + m].par_iter()))
                        .map(|(x, (&null, &kept))| {
                            if !kept {
                                x.fill(0.0);
                                return Some(EXCLUDED);
                            }
                            // `normalize` leaves a row whose norm is not finite and positive as
                            // it is, so the full check sees the input values.
                            let norm = cosine.then(|| normalize(x));
                            let why = unusable_given_norm(x, null, norm);
                            if why.is_some() {
                                x.fill(0.0);
                            }
                            why
                        })
                        .collect()
                };
                // The rows to score and spill, and the raw rows the prefetch copies.
                let (xs, raw): (&[f32], &[f32]) = if out_of_place {
                    (&normed, &b.values)
                } else {
                    (&b.values, &[])
                };
                for (i, why) in bad.iter().enumerate() {
                    if let Some(what) = why.filter(|&w| w != EXCLUDED) {
                        reject(p, &mut inv, &shard.path, b.first_row + i as u64, what)?;
                        valid[base + i] = false;
                    }
                }
                let sc = &mut scores[base..base + m];
                if fixed {
                    // Given clusters: score against them; the second cluster (cross pass) is
                    // the nearest other one.
                    prototypicality_given(c, xs, &labels[base..base + m], sc);
                    if guest_buffer.is_some() {
                        let (mut near, mut dots) = (vec![0u32; m], vec![0f32; m]);
                        c.nearest_two(xs, &mut near, &mut dots, &mut second[base..base + m]);
                        for ((s2, &nl), &l) in second[base..base + m]
                            .iter_mut()
                            .zip(&near)
                            .zip(&labels[base..base + m])
                        {
                            if nl != l {
                                *s2 = nl;
                            }
                        }
                    }
                } else if guest_buffer.is_some() {
                    // Cosine (checked above): the score is 1 − the dot with the nearest centroid.
                    match &certified {
                        Some(cs) => cs.nearest_two(xs, &mut labels[base..base + m], sc, &mut second[base..base + m]),
                        None => c.nearest_two(xs, &mut labels[base..base + m], sc, &mut second[base..base + m]),
                    }
                    // Only rows near the boundary to their second cluster can have a
                    // duplicate there (exact test, see `near_boundary`): the rest stay home.
                    // Each row's margin to its second cluster bounds the cross pass's pairs.
                    let eps = p.dedup.eps.unwrap_or(0.0);
                    xs.par_chunks(d)
                        .zip(
                            second[base..base + m]
                                .par_iter_mut()
                                .zip(margin[base..base + m].par_iter_mut()),
                        )
                        .zip(labels[base..base + m].par_iter().zip(sc.par_iter()))
                        .for_each(|((x, (s2, mg)), (&l, &d1))| {
                            if *s2 != u32::MAX {
                                let (near, gap) = boundary(x, d1, c.row(l as usize), c.row(*s2 as usize), eps);
                                *mg = gap;
                                if !near {
                                    *s2 = u32::MAX;
                                }
                            }
                        });
                    sc.iter_mut().for_each(|s| *s = 1.0 - *s);
                } else if c.distance() == Distance::Cosine {
                    // The score is 1 − the dot, as `prototypicality` computes it.
                    let search =
                        |x: &[f32], sel: Option<&[u32]>, l: &mut [u32], dots: &mut [f32]| match (&certified, sel) {
                            (Some(cs), Some(sel)) => cs.nearest_rows(x, sel, l, dots),
                            (Some(cs), None) => cs.nearest(x, l, dots),
                            (None, Some(sel)) => {
                                let mut xs = Vec::with_capacity(sel.len() * d);
                                for &i in sel {
                                    xs.extend_from_slice(&x[i as usize * d..(i as usize + 1) * d]);
                                }
                                c.nearest(&xs, l, dots)
                            }
                            (None, None) => c.nearest(x, l, dots),
                        };
                    let g0 = first_id + b.first_row;
                    nearest_or_trained(&search, xs, g0, trained, &mut labels[base..base + m], sc);
                    sc.iter_mut().for_each(|s| *s = 1.0 - *s);
                } else {
                    prototypicality(c, xs, &mut labels[base..base + m], sc);
                }
                for (i, why) in bad.iter().enumerate() {
                    if why.is_some() {
                        sc[i] = f32::NAN;
                        if hashing {
                            hashes[base + i] = None;
                        }
                    }
                }
                if let (Some(w), Some(kp)) = (prefetch.as_mut(), spills.kept) {
                    let copied = bad
                        .iter()
                        .enumerate()
                        .filter(|&(i, why)| why.is_none() && kp.wants(sc[i]))
                        .try_for_each(|(i, _)| w.push((base + i) as u32, &raw[i * d..(i + 1) * d]));
                    if let Err(e) = copied {
                        kp.fail(e);
                        prefetch = None;
                    }
                }
                if let Some(buf) = buffer.as_mut() {
                    for (i, why) in bad.iter().enumerate() {
                        if why.is_none() {
                            let id = (first_id + b.first_row) as u32 + i as u32;
                            buf.push(labels[base + i], id, &xs[i * d..(i + 1) * d])?;
                        }
                    }
                }
                if let Some(buf) = guest_buffer.as_mut() {
                    for (i, why) in bad.iter().enumerate() {
                        let s2 = second[base + i];
                        // A row whose two clusters share a partition is already in the
                        // owner spill there (the cross pass takes it from that).
                        if why.is_some() || s2 == u32::MAX {
                            continue;
                        }
                        let internal = spills
                            .owners
                            .is_some_and(|o| o.partition_of(labels[base + i]) == o.partition_of(s2));
                        if !internal {
                            let id = (first_id + b.first_row) as u32 + i as u32;
                            buf.push(s2, id, &xs[i * d..(i + 1) * d])?;
                        }
                    }
                }
                progress.advance(m as u64);
                Ok(())
            })?;
            if let Some(buf) = buffer.as_mut() {
                buf.flush()?;
            }
            if let Some(buf) = guest_buffer.as_mut() {
                buf.flush()?;
            }
            if let (Some(w), Some(kp)) = (prefetch, spills.kept)
                && let Err(e) = w.finish()
            {
                kp.fail(e);
            }
            Ok(((), inv))
        })
        .collect();
    merge(parts, invalid).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_norm_shortcut_gives_the_full_checks_answer() {
        let rows: [(&[f32], bool); 10] = [
            (&[0.6, 0.8], false),
            (&[0.6, 0.8], true),
            (&[0.0, -0.0], false),
            (&[1.0, f32::NAN], false),
            (&[f32::INFINITY, 1.0], false),
            (&[f32::NEG_INFINITY, f32::INFINITY], false),
            // Finite values whose squares overflow (norm inf) or underflow (norm 0): usable.
            (&[1e30, 1e30], false),
            (&[1e-30, 0.0], false),
            (&[f32::MIN_POSITIVE / 4.0, 0.0], false),
            (&[3.0, 4.0], false),
        ];
        for (x, null) in rows {
            let mut y = x.to_vec();
            let norm = normalize(&mut y);
            assert_eq!(
                unusable_given_norm(x, null, Some(norm)),
                unusable(x, null),
                "{x:?} null {null}"
            );
            assert_eq!(
                unusable_given_norm(x, null, None),
                unusable(x, null),
                "{x:?} null {null}"
            );
        }
    }
}
