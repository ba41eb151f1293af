//! The cross-cluster SemDeDup passes (`--dedup-global`): near-duplicates that k-means
//! put in different clusters, which SemDeDup's within-cluster search (Abbas et al. 2023)
//! cannot see. The second-cluster pass compares rows near a cluster boundary with the
//! rows of their second-nearest cluster (exact geometric test, [`near_boundary`]), with
//! bf16 or int8 products as a certified filter where the CPU runs them faster than f32
//! (only pairs that could pass the threshold get their f32 product); the HNSW pass
//! searches all rows left.

use std::cell::OnceCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::Result;
use crate::cluster::Centroids;
use crate::cluster::centroids::scan_at_least;
use crate::cluster::hnsw::{Hnsw, HnswParams};
use crate::distance::{
    Bf16Bound, Bf16Norms, I8Rows, Int8Kernel, MAX_INT8_DIM, PackedBf16, PackedI8, PackedRows, Quantized, RowSource,
    TileSkip, certified_bf16_pays, dot_batch_bf16, dot_batch_packed, fill_skipped_tiles, int8_kernel, kernel_pair_dots,
};
use crate::pipeline::spill::{SpilledClusters, for_each_prefetched};
use crate::pipeline::stages::{Grouped, check_spilled, largest_first, map_grouped, read_grouped, scatter};
use crate::score::semdedup::{DedupScores, SemDedupParams, dedup_cluster_at, is_duplicate, similarity_threshold};

mod bounds;
mod tiles;
use bounds::Ordered;
#[cfg(all(test, target_arch = "x86_64"))]
use bounds::dot_and_gap_avx512;
pub use bounds::{Pruning, boundary, near_boundary};
#[cfg(test)]
use bounds::{SLACK, dot_and_gap};
use tiles::{CROSS_TILE, Prepared};

/// Groups the rows of one spill partition by `key` (then row id), leaving out
/// the rows it maps to `None`: (cluster, positions into the partition).
fn group_partition(ids: &[u32], key: impl Fn(usize) -> Option<u32>) -> Vec<(u32, Vec<u32>)> {
    let mut pos: Vec<(u32, u32)> = (0..ids.len() as u32)
        .filter_map(|i| key(ids[i as usize] as usize).map(|c| (c, i)))
        .collect();
    // Tens of thousands of rows per partition, between two parallel steps: sorted in parallel.
    pos.par_sort_unstable_by_key(|&(c, i)| (c, ids[i as usize]));
    let mut out: Vec<(u32, Vec<u32>)> = Vec::new();
    for (c, i) in pos {
        match out.last_mut() {
            Some((lc, v)) if *lc == c => v.push(i),
            _ => out.push((c, vec![i])),
        }
    }
    out
}

/// Marks a guest position as one into the owner rows of the partition (a row
/// whose two clusters share it) rather than into the guest spill.
const IN_OWNERS: u32 = 1 << 31;

/// The guests of each cluster of a partition: those of the guest spill
/// (`spilled`) and those among the partition's own rows (`internal`, marked
/// [`IN_OWNERS`]), by cluster.
fn merge_guests(spilled: Groups, internal: Groups) -> Groups {
    let mut out: Groups = Vec::with_capacity(spilled.len().max(internal.len()));
    let (mut a, mut b) = (spilled.into_iter().peekable(), internal.into_iter().peekable());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(x), Some(y)) => x.0 <= y.0,
        };
        let (c, mut pos, internal) = if take_a {
            let (c, p) = a.next().unwrap_or_default();
            (c, p, false)
        } else {
            let (c, p) = b.next().unwrap_or_default();
            (c, p, true)
        };
        if internal {
            pos.iter_mut().for_each(|i| *i |= IN_OWNERS);
        }
        match out.last_mut() {
            Some((lc, v)) if *lc == c => v.extend(pos),
            _ => out.push((c, pos)),
        }
    }
    out
}

/// The second-cluster cross pass
/// ([`GlobalPass::SecondCluster`](crate::pipeline::stages::GlobalPass::SecondCluster)): for every
/// cluster, the rows whose second-nearest centroid it is against its own rows
/// (`owners`), in tiles of matrix products. Those guests are the rows of `guests`
/// and the rows of the owner spill whose `second` cluster lies in their own
/// partition (the score pass does not spill those again); `second` is `u32::MAX`
/// for rows that are no guests; `margin` each row's margin to its second-nearest
/// centroid ([`boundary`]), or empty. Returns, per row, the most similar lower-id row
/// of another cluster above 1 − eps (lower id on ties); both rows `eligible`.
#[allow(clippy::too_many_arguments)]
pub fn second_cluster_duplicates(
    owners: &SpilledClusters,
    guests: &SpilledClusters,
    labels: &[u32],
    second: &[u32],
    margin: &[f32],
    eligible: &[bool],
    centroids: &Centroids,
    eps: f64,
    on_partition: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Option<u32>>> {
    let dim = centroids.dim();
    let thr = similarity_threshold(eps);
    let low = low_filter(dim);
    let prune = Pruning::new(labels, second, margin, centroids, eps);
    let mut hits = Vec::new();
    // Partition p + 1 is read (and grouped) while p is compared.
    for_each_prefetched(
        owners.partitions(),
        |p, spare: Option<(Buffers, Groups, Groups)>| {
            let mut b = spare.map(|s| s.0).unwrap_or_default();
            owners.read_partition_into(p, &mut b.0, &mut b.1)?;
            guests.read_partition_into(p, &mut b.2, &mut b.3)?;
            let og = group_partition(&b.0, |i| eligible[i].then(|| labels[i]));
            let spilled = group_partition(&b.2, |i| eligible[i].then(|| second[i]));
            let internal = internal_guests(owners, p, &b.0, second, eligible)?;
            Ok((b, og, merge_guests(spilled, internal)))
        },
        |_, (b, og, gg)| {
            hits.extend(cross_hits((&b.0, &b.1), (&b.2, &b.3), og, gg, dim, thr, low, &prune));
            on_partition(b.0.len() as u64);
            Ok(())
        },
    )?;
    Ok(best_partners(hits, labels.len(), |_| true))
}

/// SemDeDup within clusters and the second-cluster cross pass in one sweep over
/// the owner spill, so each partition is read once: M and `dup_of` of every
/// `eligible` row, as [`semdedup_spilled`](super::semdedup_spilled) gives them,
/// and each row's cross-pass partner among the rows the within-cluster pass
/// leaves at `eps`, as [`second_cluster_duplicates`] gives it given those rows.
///
/// A partition's own rows are settled (within clusters) before its guests are
/// compared. A guest from a partition not read yet is compared before its own
/// outcome is known; its hits are kept, and dropped at the end if it went.
#[allow(clippy::too_many_arguments)]
pub fn semdedup_second_cluster(
    owners: &SpilledClusters,
    guests: &SpilledClusters,
    labels: &[u32],
    second: &[u32],
    margin: &[f32],
    eligible: &[bool],
    centroids: &Centroids,
    params: &SemDedupParams,
    eps: f64,
    on_partition: &(dyn Fn(u64) + Sync),
) -> Result<(DedupScores, Vec<Option<u32>>)> {
    let (n, dim) = (labels.len(), centroids.dim());
    let (thr, low) = (similarity_threshold(eps), low_filter(dim));
    let prune = Pruning::new(labels, second, margin, centroids, eps);
    let mut out = DedupScores {
        max_sim: vec![f32::NAN; n],
        dup_of: vec![None; n],
    };
    // The rows not (yet) removed within their cluster.
    let mut left = eligible.to_vec();
    let mut hits = Vec::new();
    for_each_prefetched(
        owners.partitions(),
        |p, spare: Option<SweepPart>| {
            let (bufs, mut g) = spare.map_or((None, Default::default()), |s| (Some((s.0.ids, s.0.values)), s.1));
            let part = read_grouped(owners, p, labels, eligible, bufs)?;
            guests.read_partition_into(p, &mut g.0, &mut g.1)?;
            let spilled = group_partition(&g.0, |i| eligible[i].then(|| second[i]));
            Ok((part, g, spilled))
        },
        |p, (part, g, spilled)| {
            let within = map_grouped(part, &|c, row_ids: &[u32], values: &[f32], pos: &[u32]| {
                dedup_cluster_at(values, dim, pos, row_ids, centroids.row(c as usize), params)
            })?;
            for (row_ids, r) in within {
                for (&id, &m) in row_ids.iter().zip(&r.max_sim) {
                    left[id as usize] &= !is_duplicate(m, eps);
                }
                scatter(&mut out, &row_ids, r);
            }
            let kept = |pos: &[u32], ids: &[u32]| -> Vec<u32> {
                pos.iter()
                    .copied()
                    .filter(|&i| left[ids[i as usize] as usize])
                    .collect()
            };
            let og: Groups = part
                .groups
                .iter()
                .map(|&(c, a, b)| (c, kept(&part.pos[a..b], &part.ids)))
                .collect();
            let spilled: Groups = spilled.iter().map(|(c, pos)| (*c, kept(pos, &g.0))).collect();
            let internal = internal_guests(owners, p, &part.ids, second, &left)?;
            let gg = merge_guests(spilled, internal);
            hits.extend(cross_hits(
                (&part.ids, &part.values),
                (&g.0, &g.1),
                &og,
                &gg,
                dim,
                thr,
                low,
                &prune,
            ));
            on_partition(part.ids.len() as u64);
            Ok(())
        },
    )?;
    check_spilled(&out, eligible)?;
    let partners = best_partners(hits, n, |i| left[i]);
    Ok((out, partners))
}

/// The guests among partition `p`'s own rows `ids` (their second cluster is in
/// `p` too), by that cluster; only rows `keep` says.
///
/// # Errors
/// When the partition holds 2³¹ rows or more: its positions could not be marked
/// [`IN_OWNERS`].
fn internal_guests(owners: &SpilledClusters, p: usize, ids: &[u32], second: &[u32], keep: &[bool]) -> Result<Groups> {
    if ids.len() >= IN_OWNERS as usize {
        return Err(crate::Error::Internal(format!(
            "spill partition {p} holds {} rows; the cross pass takes fewer than 2^31",
            ids.len()
        )));
    }
    Ok(group_partition(ids, |i| {
        let s = second[i];
        (keep[i] && s != u32::MAX && owners.partition_of(s) == p).then_some(s)
    }))
}

/// The low-precision filter for the cross pass: int8 where `vpdpbusd` runs, else bf16
/// where it outpaces f32, else none (f32 products; the same hits). int8 comes first:
/// `vpdpbusd` does twice the multiply-adds of `vdpbf16ps` per instruction wherever both
/// run, and at the threshold its wider bound adds hardly any candidates (on the 1M
/// benchmark the pass's products took 1.6 CPU-s in int8 against 3.1 in bf16).
fn low_filter(dim: usize) -> Option<Filter> {
    if int8_filter_pays(dim) {
        Some(Filter::Int8)
    } else if certified_bf16_pays() {
        Some(Filter::Bf16)
    } else {
        None
    }
}

/// A pair the cross pass found above the threshold: (the higher row id, the exact
/// product, the lower row id).
type Hit = (u32, f32, u32);

/// Each row's most similar lower-id partner among `hits` whose two rows `keep`
/// holds (the lower id on ties), whatever order the hits come in.
fn best_partners(hits: Vec<Hit>, n: usize, keep: impl Fn(usize) -> bool) -> Vec<Option<u32>> {
    let mut best: Vec<(f32, u32)> = vec![(f32::NEG_INFINITY, u32::MAX); n];
    for (row, v, other) in hits {
        if !keep(row as usize) || !keep(other as usize) {
            continue;
        }
        let b = &mut best[row as usize];
        if v > b.0 || (v == b.0 && other < b.1) {
            *b = (v, other);
        }
    }
    best.into_iter().map(|(_, o)| (o != u32::MAX).then_some(o)).collect()
}

/// One partition of the sweep: its owner rows grouped by cluster, its spilled
/// guests' ids and rows, and those guests by cluster.
type SweepPart = (Grouped, (Vec<u32>, Vec<f32>), Groups);
/// Owner ids and rows, guest ids and rows of one spill partition.
type Buffers = (Vec<u32>, Vec<f32>, Vec<u32>, Vec<f32>);
/// Rows of a partition by cluster ([`group_partition`]).
type Groups = Vec<(u32, Vec<u32>)>;
/// The low-precision filter of a run ([`low_filter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filter {
    /// [`LowFilter::bf16`].
    Bf16,
    /// [`LowFilter::int8`].
    Int8,
}

impl Filter {
    /// Packs a tile of owners for this filter.
    fn make<'a>(self, owners: Side<'a>, thr: f32) -> LowFilter<'a> {
        match self {
            Filter::Bf16 => LowFilter::bf16(owners, thr),
            Filter::Int8 => LowFilter::int8(owners, thr),
        }
    }
}

/// The hits of one partition: each cluster's guests `gg` (positions into the
/// guest rows, or into the owner rows where marked [`IN_OWNERS`]) against its
/// owners `og` (positions into the owner rows), leaving out the pairs `prune` rules
/// out. Owners and guests are (ids, rows) of the partition's two spills.
#[allow(clippy::too_many_arguments)]
fn cross_hits(
    (oids, ovals): (&[u32], &[f32]),
    (gids, gvals): (&[u32], &[f32]),
    og: &Groups,
    gg: &Groups,
    dim: usize,
    thr: f32,
    low: Option<Filter>,
    prune: &Pruning,
) -> Vec<Hit> {
    let pairs: Vec<(u32, &Vec<u32>, &Vec<u32>)> = gg
        .iter()
        .filter_map(|(c, g)| {
            og.binary_search_by_key(c, |(oc, _)| *oc)
                .ok()
                .map(|k| (*c, g, &og[k].1))
        })
        .collect();
    // Each owner row quantized once for the int8 filter: as an owner of its cluster and
    // as a guest of its second (the same bits as quantizing each time).
    let quantized = matches!(low, Some(Filter::Int8)).then(|| Quantized::new(ovals, dim));
    let rows = Rows {
        owners: (oids, ovals),
        guests: (gids, gvals),
        quantized: quantized.as_ref(),
    };
    // Each cluster's rows in the order the pruning wants (in parallel), then one task
    // per tile of its owners: a large cluster is several tasks, so the partition does
    // not end with one thread on it while the other waits. The largest tasks first
    // (see `largest_first`); a hit does not depend on the task that finds it.
    let prepared: Vec<Prepared> = pairs
        .par_iter()
        .with_max_len(1)
        .map(|&(c, g, o)| Prepared::new(c, g, o, rows, dim, prune))
        .collect();
    let tasks: Vec<(usize, usize)> = prepared
        .iter()
        .enumerate()
        .flat_map(|(i, p)| (0..p.owners.len()).step_by(CROSS_TILE).map(move |b| (i, b)))
        .collect();
    let cost = |t: usize| {
        let (i, b) = tasks[t];
        let p = &prepared[i];
        (p.guests.len() * (p.owners.len() - b).min(CROSS_TILE)) as u64
    };
    let found: Vec<Vec<Hit>> = largest_first(tasks.len(), cost)
        .par_iter()
        .with_max_len(1)
        .map(|&t| {
            // The tile's scratch products are reused from task to task, per thread:
            // fresh, each was megabytes of zeroed pages.
            thread_local! {
                static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
            }
            let (i, b) = tasks[t];
            SCRATCH.with_borrow_mut(|s| prepared[i].tile_hits(b, thr, low, s))
        })
        .collect();
    found.into_iter().flatten().collect()
}

/// A partition's two spills (ids and row-major values) and its owner rows quantized
/// for the int8 filter.
#[derive(Clone, Copy)]
struct Rows<'a> {
    owners: (&'a [u32], &'a [f32]),
    guests: (&'a [u32], &'a [f32]),
    quantized: Option<&'a Quantized>,
}

/// Rows of one cluster's guests or owners, read where they lie in the partition's
/// two spills rather than gathered (copying them was a tenth of the pass): row x is
/// row `pos[x]` of `rows`, or of `owners` where marked [`IN_OWNERS`] (for a side of
/// owners, both are the owner rows).
#[derive(Clone, Copy)]
struct Side<'a> {
    pos: &'a [u32],
    /// Ids and row-major values of the spill `pos` points into.
    rows: (&'a [u32], &'a [f32]),
    /// The same of the owner spill.
    owners: (&'a [u32], &'a [f32]),
    /// Whether `rows` are the owner rows (a side of owners).
    all_owners: bool,
    /// The owner rows quantized for the int8 filter, once per partition: owners and
    /// the guests that lie in the owner rows are packed from these.
    quantized: Option<&'a Quantized>,
    dim: usize,
}

impl<'a> Side<'a> {
    fn len(&self) -> usize {
        self.pos.len()
    }

    /// The spill row x lies in (`true`: the owner rows) and its position there.
    fn at(&self, x: usize) -> (bool, usize) {
        let p = self.pos[x];
        if p & IN_OWNERS != 0 {
            (true, (p & !IN_OWNERS) as usize)
        } else {
            (self.all_owners, p as usize)
        }
    }

    fn row(&self, x: usize) -> &'a [f32] {
        let (own, i) = self.at(x);
        let vals = if own { self.owners.1 } else { self.rows.1 };
        &vals[i * self.dim..(i + 1) * self.dim]
    }

    fn id(&self, x: usize) -> u32 {
        let (own, i) = self.at(x);
        if own { self.owners.0[i] } else { self.rows.0[i] }
    }

    /// Rows `r` of this side, as a side.
    fn range(&self, r: std::ops::Range<usize>) -> Side<'a> {
        Side {
            pos: &self.pos[r],
            ..*self
        }
    }

    fn rows_iter(&self) -> impl ExactSizeIterator<Item = &'a [f32]> + '_ {
        (0..self.len()).map(|x| self.row(x))
    }

    /// The rows for the int8 kernel: quantized already where they lie in the owner rows.
    fn sources_iter(&self) -> impl ExactSizeIterator<Item = RowSource<'a>> + '_ {
        (0..self.len()).map(|x| match (self.at(x), self.quantized) {
            ((true, i), Some(q)) => RowSource::Quantized(q, i),
            _ => RowSource::Raw(self.row(x)),
        })
    }

    /// The rows copied out, row-major (the paths that want them contiguous).
    fn gather(&self) -> Vec<f32> {
        let mut v = Vec::with_capacity(self.len() * self.dim);
        for x in 0..self.len() {
            v.extend_from_slice(self.row(x));
        }
        v
    }
}

/// Whether the second-cluster pass filters with int8 products: where `vpdpbusd` runs
/// (the portable int8 kernel is slower than f32) and the dimension fits its i32 sums,
/// unless `DPRUNE_CERTIFIED=0` asks for f32 products everywhere.
fn int8_filter_pays(dim: usize) -> bool {
    int8_kernel() == Int8Kernel::Avx512Vnni
        && dim <= MAX_INT8_DIM
        && std::env::var("DPRUNE_CERTIFIED").as_deref() != Ok("0")
}

/// The owners of a tile in low precision, with the bound of their products.
enum LowPrecision {
    /// bf16 ([`Bf16Bound`]: B + E of a guest row).
    Bf16(PackedBf16, Bf16Bound),
    /// int8 ([`I8Rows::dot_batch`] gives B + E of each guest row).
    Int8(PackedI8),
}

/// A tile of owners in low precision (bf16 or int8) for the second-cluster pass,
/// which only wants the pairs above a threshold: a pair whose low-precision product
/// is below the threshold minus its bound (B + E ≥ |low − f32|) cannot have an f32
/// product above it, so only the few pairs left are recomputed with the f32 kernel.
/// The hits, and their values, are exactly those of the f32 products. The threshold
/// (0.95 at the default eps) is far above most pairs, so int8's wider bound (about
/// 0.018 against bf16's 0.0035 at d = 384) leaves hardly more candidates, at twice
/// the rate of bf16 products where `vpdpbusd` runs.
struct LowFilter<'a> {
    low: LowPrecision,
    owners: Side<'a>,
    /// The owners packed for the f32 kernel, made on the first guest line with too many
    /// candidates (copies of copies), so those lines do not repack the owners each.
    packed_f32: OnceCell<PackedRows>,
    thr: f32,
}

impl<'a> LowFilter<'a> {
    /// Guests with more candidates than this in one tile get their whole line in f32.
    const MAX_CANDIDATES: usize = 32;

    fn bf16(owners: Side<'a>, thr: f32) -> Self {
        let low = LowPrecision::Bf16(
            {
                // Owners all lie in the owner rows: packed from there by position.
                let idx: Vec<usize> = (0..owners.len()).map(|y| owners.at(y).1).collect();
                PackedBf16::new(owners.owners.1, owners.dim, &idx, &vec![1.0; idx.len()])
            },
            Bf16Bound::from_norms(owners.rows_iter().map(Bf16Norms::of), owners.dim),
        );
        LowFilter::with(low, owners, thr)
    }

    fn int8(owners: Side<'a>, thr: f32) -> Self {
        LowFilter::with(
            LowPrecision::Int8(PackedI8::from_sources(owners.sources_iter(), owners.dim)),
            owners,
            thr,
        )
    }

    fn with(low: LowPrecision, owners: Side<'a>, thr: f32) -> Self {
        LowFilter {
            low,
            owners,
            packed_f32: OnceCell::new(),
            thr,
        }
    }

    /// Calls `hit(x, y, v)` with the exact f32 product `v` of guest `x` and owner `y`
    /// for every pair that can exceed the threshold (and a few that do not); `s` is
    /// scratch of `guests.len() × owners` values. `quantized` keeps those guest rows'
    /// int8 operands for the next tile of owners.
    fn scan(
        &self,
        guests: Side,
        quantized: &OnceLock<I8Rows>,
        s: &mut [f32],
        skip: &TileSkip<'_>,
        mut hit: impl FnMut(usize, usize, f32),
    ) {
        let (dim, w) = (guests.dim, self.owners.len());
        let mut err = vec![0f64; guests.len()];
        match &self.low {
            LowPrecision::Bf16(packed, bound) => {
                let rows = guests.gather();
                let idx: Vec<usize> = (0..guests.len()).collect();
                dot_batch_bf16(&rows, &idx, &vec![1.0; idx.len()], packed, s);
                fill_skipped_tiles(s, guests.len(), w, skip);
                for (x, e) in err.iter_mut().enumerate() {
                    *e = bound.row_error(guests.row(x));
                }
            }
            LowPrecision::Int8(packed) => quantized
                .get_or_init(|| I8Rows::from_sources(guests.sources_iter(), dim))
                .dot_batch_where(packed, s, &mut err, Some(skip)),
        }
        // The candidates, by the spill each guest lies in: (guest, owner) positions in
        // the spills for the kernel, and (x, y) in the tile for `hit`.
        let mut pairs: [Vec<(u32, u32)>; 2] = Default::default();
        let mut tile: [Vec<(u32, u32)>; 2] = Default::default();
        let owner_at = |y: u32| self.owners.at(y as usize).1 as u32;
        for ((x, line), &e) in s.chunks_exact_mut(w).enumerate().zip(&err) {
            // Rounded down: a larger candidate set is still exact. A bound that is not a
            // number (a row that cannot be rounded) sends the line to f32.
            let cut = ((self.thr as f64 - e) as f32).next_down();
            let (own, gx) = guests.at(x);
            let side = usize::from(own);
            let start = tile[side].len();
            if !cut.is_nan() {
                scan_at_least(line, cut, |y, _| tile[side].push((x as u32, y)));
            }
            if cut.is_nan() || tile[side].len() - start > Self::MAX_CANDIDATES {
                tile[side].truncate(start);
                let packed = self
                    .packed_f32
                    .get_or_init(|| PackedRows::new(&self.owners.gather(), dim));
                dot_batch_packed(guests.row(x), packed, line);
                for (y, &v) in line.iter().enumerate() {
                    hit(x, y, v);
                }
            } else {
                pairs[side].extend(tile[side][start..].iter().map(|&(_, y)| (gx as u32, owner_at(y))));
            }
        }
        // The f32 kernel's value for each pair, whatever shape it is computed in.
        let spills = [guests.rows.1, guests.owners.1];
        for side in 0..2 {
            let mut exact = vec![0f32; pairs[side].len()];
            kernel_pair_dots(spills[side], self.owners.owners.1, dim, &pairs[side], &mut exact);
            for (&(x, y), &v) in tile[side].iter().zip(&exact) {
                hit(x as usize, y as usize, v);
            }
        }
    }
}

/// The cross-cluster pass: an HNSW index over the `eligible` rows (read
/// back from the spill, in row-id order) finds rows with a more similar
/// than 1 − eps row of lower id in another cluster. Memory: the eligible
/// rows' embeddings.
pub fn global_duplicates(
    spilled: &SpilledClusters,
    labels: &[u32],
    eligible: &[bool],
    dim: usize,
    eps: f64,
    params: &HnswParams,
) -> Result<Vec<Option<u32>>> {
    let mut chunks: Vec<(u32, Vec<f32>)> = Vec::new();
    let (mut ids, mut values) = (Vec::new(), Vec::new());
    for p in 0..spilled.partitions() {
        spilled.read_partition_into(p, &mut ids, &mut values)?;
        for (i, &id) in ids.iter().enumerate() {
            if eligible[id as usize] {
                chunks.push((id, values[i * dim..(i + 1) * dim].to_vec()));
            }
        }
    }
    chunks.sort_unstable_by_key(|c| c.0);
    let ids: Vec<u32> = chunks.iter().map(|c| c.0).collect();
    let mut rows = Vec::with_capacity(ids.len() * dim);
    for (_, v) in chunks {
        rows.extend_from_slice(&v);
    }
    let local_labels: Vec<u32> = ids.iter().map(|&i| labels[i as usize]).collect();
    let index = Hnsw::build(&rows, dim, &vec![true; ids.len()], params)?;
    let local = index.cross_cluster_duplicates(&rows, &local_labels, eps)?;
    let mut out = vec![None; labels.len()];
    for (j, dup) in local.into_iter().enumerate() {
        out[ids[j] as usize] = dup.map(|q| ids[q as usize]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
