//! The cross-cluster SemDeDup passes (`--dedup-global`): near-duplicates that k-means
//! put in different clusters, which SemDeDup's within-cluster search (Abbas et al. 2023)
//! cannot see. The second-cluster pass compares rows near a cluster boundary with the
//! rows of their second-nearest cluster (exact geometric test, [`near_boundary`]), with
//! bf16 or int8 products as a certified filter where the CPU runs them faster than f32
//! (only pairs that could pass the threshold get their f32 product); the HNSW pass
//! searches all rows left.

use std::cell::OnceCell;

use rayon::prelude::*;

use crate::Result;
use crate::cluster::centroids::scan_at_least;
use crate::cluster::hnsw::{Hnsw, HnswParams};
use crate::distance::{
    Bf16Bound, I8Rows, Int8Kernel, MAX_INT8_DIM, PackedBf16, PackedI8, PackedRows, certified_bf16_pays, dot_batch,
    dot_batch_bf16, dot_batch_packed, int8_kernel, kernel_pair_dots,
};
use crate::pipeline::spill::{SpilledClusters, for_each_prefetched};
use crate::score::semdedup::similarity_threshold;

/// Groups the eligible rows of one spill partition by `cluster_of` (then
/// row id): (cluster, positions into the partition).
fn group_partition(ids: &[u32], eligible: &[bool], cluster_of: &[u32]) -> Vec<(u32, Vec<u32>)> {
    let mut pos: Vec<u32> = (0..ids.len() as u32)
        .filter(|&i| eligible[ids[i as usize] as usize])
        .collect();
    pos.sort_unstable_by_key(|&i| (cluster_of[ids[i as usize] as usize], ids[i as usize]));
    let mut out: Vec<(u32, Vec<u32>)> = Vec::new();
    for i in pos {
        let c = cluster_of[ids[i as usize] as usize];
        match out.last_mut() {
            Some((lc, v)) if *lc == c => v.push(i),
            _ => out.push((c, vec![i])),
        }
    }
    out
}

/// Whether a unit row `x` nearest to centroid `c1` (dot `d1`) can have a
/// more similar than 1 − eps row among the rows nearest to `c2`, so that the
/// second-cluster pass must compare it with them. Unit centroids (cosine).
///
/// Exact, not a heuristic: for such a row y (label c2, so y·c2 ≥ y·c1),
/// (x·c1 − x·c2) + (y·c2 − y·c1) = (x − y)·(c1 − c2) ≤ ‖x − y‖·‖c1 − c2‖,
/// and x·y > 1 − eps means ‖x − y‖ < √(2·eps). Both gaps are ≥ 0, so
/// x·c1 − x·c2 < √(2·eps)·‖c1 − c2‖. Rows farther from the boundary are
/// skipped; the small slack covers f32 rounding of the dots (|error| ≲ 1e-5
/// at these dimensions) and of `x`'s and y's norms.
pub fn near_boundary(x: &[f32], d1: f32, c1: &[f32], c2: &[f32], eps: f64) -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::distance::kernel() == crate::distance::Kernel::Avx512 {
        // SAFETY: the AVX-512 kernel is chosen only when the CPU has AVX-512F.
        return unsafe { near_boundary_avx512(x, d1, c1, c2, eps) };
    }
    near_boundary_body(x, d1, c1, c2, eps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn near_boundary_avx512(x: &[f32], d1: f32, c1: &[f32], c2: &[f32], eps: f64) -> bool {
    near_boundary_body(x, d1, c1, c2, eps)
}

#[inline(always)]
fn near_boundary_body(x: &[f32], d1: f32, c1: &[f32], c2: &[f32], eps: f64) -> bool {
    const SLACK: f64 = 1e-4;
    // Eight sums per quantity (one AVX-512 register each), added in a fixed order at
    // the end: the adds overlap instead of waiting on one chain (which, over 2·dim
    // dependent f64 adds per row, was a tenth of `--dedup-global`'s score pass). The
    // same value on every path.
    const W: usize = 8;
    let (mut d2, mut gap2) = ([0f64; W], [0f64; W]);
    let whole = x.len().min(c1.len()).min(c2.len()) / W * W;
    for ((a, u), v) in x[..whole]
        .chunks_exact(W)
        .zip(c1[..whole].chunks_exact(W))
        .zip(c2[..whole].chunks_exact(W))
    {
        for l in 0..W {
            d2[l] += f64::from(a[l]) * f64::from(v[l]);
            let t = f64::from(u[l]) - f64::from(v[l]);
            gap2[l] += t * t;
        }
    }
    let (mut d2, mut gap2) = (d2.iter().sum::<f64>(), gap2.iter().sum::<f64>());
    for ((&a, &u), &v) in x[whole..].iter().zip(&c1[whole..]).zip(&c2[whole..]) {
        d2 += f64::from(a) * f64::from(v);
        let t = f64::from(u) - f64::from(v);
        gap2 += t * t;
    }
    f64::from(d1) - d2 <= (2.0 * eps.max(0.0) + SLACK).sqrt() * gap2.sqrt() + SLACK
}

/// The second-cluster cross pass
/// ([`GlobalPass::SecondCluster`](crate::pipeline::stages::GlobalPass::SecondCluster)): for every
/// cluster, the rows whose second-nearest centroid it is (`guests`) against
/// its own rows (`owners`), in tiles of matrix products. Returns, per row,
/// the most similar lower-id row of another cluster above 1 − eps (lower
/// id on ties).
#[allow(clippy::too_many_arguments)]
pub fn second_cluster_duplicates(
    owners: &SpilledClusters,
    guests: &SpilledClusters,
    labels: &[u32],
    second: &[u32],
    eligible: &[bool],
    dim: usize,
    eps: f64,
    on_partition: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Option<u32>>> {
    let thr = similarity_threshold(eps);
    // bf16 where it outpaces f32, else int8 where `vpdpbusd` runs, else f32 (same hits).
    let low = if certified_bf16_pays() {
        Some(LowFilter::bf16 as MakeFilter)
    } else if int8_filter_pays(dim) {
        Some(LowFilter::int8 as MakeFilter)
    } else {
        None
    };
    let mut best: Vec<(f32, u32)> = vec![(f32::NEG_INFINITY, u32::MAX); labels.len()];
    // Partition p + 1 is read (and grouped) while p is compared.
    for_each_prefetched(
        owners.partitions(),
        |p, spare: Option<(Buffers, Groups, Groups)>| {
            let mut b = spare.map(|s| s.0).unwrap_or_default();
            owners.read_partition_into(p, &mut b.0, &mut b.1)?;
            guests.read_partition_into(p, &mut b.2, &mut b.3)?;
            let og = group_partition(&b.0, eligible, labels);
            let gg = group_partition(&b.2, eligible, second);
            Ok((b, og, gg))
        },
        |_, (b, og, gg)| {
            second_cluster_partition(&b.0, &b.1, &b.2, &b.3, og, gg, dim, thr, low, &mut best);
            on_partition(b.0.len() as u64);
            Ok(())
        },
    )?;
    Ok(best.into_iter().map(|(_, o)| (o != u32::MAX).then_some(o)).collect())
}

/// Owner ids and rows, guest ids and rows of one spill partition.
type Buffers = (Vec<u32>, Vec<f32>, Vec<u32>, Vec<f32>);
/// Rows of a partition by cluster ([`group_partition`]).
type Groups = Vec<(u32, Vec<u32>)>;
/// Packs a tile of owners for the low-precision filter ([`LowFilter::bf16`] or
/// [`LowFilter::int8`]).
type MakeFilter = fn(&[f32], usize, f32) -> LowFilter;

/// [`second_cluster_duplicates`] on one partition, into `best`.
#[allow(clippy::too_many_arguments)]
fn second_cluster_partition(
    oids: &[u32],
    ovals: &[f32],
    gids: &[u32],
    gvals: &[f32],
    og: &Groups,
    gg: &Groups,
    dim: usize,
    thr: f32,
    low: Option<MakeFilter>,
    best: &mut [(f32, u32)],
) {
    const TILE: usize = 1024;
    let pairs: Vec<(&Vec<u32>, &Vec<u32>)> = gg
        .iter()
        .filter_map(|(c, g)| og.binary_search_by_key(c, |(oc, _)| *oc).ok().map(|k| (g, &og[k].1)))
        .collect();
    let found: Vec<Vec<(u32, f32, u32)>> = pairs
        .par_iter()
        .map(|&(g, o)| {
            let gather = |ids: &[u32], vals: &[f32], pos: &[u32]| {
                let mut r = Vec::with_capacity(pos.len() * dim);
                for &i in pos {
                    r.extend_from_slice(&vals[i as usize * dim..(i as usize + 1) * dim]);
                }
                let id: Vec<u32> = pos.iter().map(|&i| ids[i as usize]).collect();
                (id, r)
            };
            let (gi, gr) = gather(gids, gvals, g);
            let (oi, or) = gather(oids, ovals, o);
            let mut hits = Vec::new();
            let mut push = |x: usize, y: usize, v: f32| {
                if v > thr {
                    let (u, w) = (gi[x], oi[y]);
                    hits.push((u.max(w), v, u.min(w)));
                }
            };
            let mut s = Vec::new();
            // Each guest tile's int8 operands, quantized on its first owner tile and
            // reused by the others (the same bits as quantizing afresh).
            let quantized: Vec<OnceCell<I8Rows>> = (0..gi.len().div_ceil(TILE)).map(|_| OnceCell::new()).collect();
            for b in (0..oi.len()).step_by(TILE) {
                let b1 = (b + TILE).min(oi.len());
                let owners = &or[b * dim..b1 * dim];
                let filter = low.map(|make| make(owners, dim, thr));
                for a in (0..gi.len()).step_by(TILE) {
                    let a1 = (a + TILE).min(gi.len());
                    s.resize((a1 - a) * (b1 - b), 0.0);
                    match &filter {
                        Some(f) => f.scan(&gr, a..a1, &quantized[a / TILE], owners, &mut s, |x, y, v| {
                            push(x, b + y, v)
                        }),
                        None => {
                            dot_batch(&gr[a * dim..a1 * dim], owners, dim, &mut s);
                            for (x, line) in s.chunks_exact(b1 - b).enumerate() {
                                for (y, &v) in line.iter().enumerate() {
                                    push(a + x, b + y, v);
                                }
                            }
                        }
                    }
                }
            }
            hits
        })
        .collect();
    for (row, v, other) in found.into_iter().flatten() {
        let b = &mut best[row as usize];
        if v > b.0 || (v == b.0 && other < b.1) {
            *b = (v, other);
        }
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
/// the rate of f32 products where `vpdpbusd` runs.
struct LowFilter {
    low: LowPrecision,
    /// The owners packed for the f32 kernel, made on the first guest line with too many
    /// candidates (copies of copies), so those lines do not repack the owners each.
    packed_f32: OnceCell<PackedRows>,
    thr: f32,
    dim: usize,
}

impl LowFilter {
    /// Guests with more candidates than this in one tile get their whole line in f32.
    const MAX_CANDIDATES: usize = 32;

    fn bf16(owners: &[f32], dim: usize, thr: f32) -> Self {
        let k = owners.len() / dim;
        let idx: Vec<usize> = (0..k).collect();
        let low = LowPrecision::Bf16(
            PackedBf16::new(owners, dim, &idx, &vec![1.0; k]),
            Bf16Bound::new(owners, dim),
        );
        LowFilter::with(low, dim, thr)
    }

    fn int8(owners: &[f32], dim: usize, thr: f32) -> Self {
        LowFilter::with(LowPrecision::Int8(PackedI8::new(owners, dim)), dim, thr)
    }

    fn with(low: LowPrecision, dim: usize, thr: f32) -> Self {
        LowFilter {
            low,
            packed_f32: OnceCell::new(),
            thr,
            dim,
        }
    }

    /// Calls `hit(x, y, v)` with the exact f32 product `v` of guest row `x` (of `guests`,
    /// rows `rows`) and owner `y` for every pair that can exceed the threshold (and a few
    /// that do not); `s` is scratch of `rows.len() × owners` values. `quantized` keeps
    /// those guest rows' int8 operands for the next tile of owners.
    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        guests: &[f32],
        rows: std::ops::Range<usize>,
        quantized: &OnceCell<I8Rows>,
        owners: &[f32],
        s: &mut [f32],
        mut hit: impl FnMut(usize, usize, f32),
    ) {
        let dim = self.dim;
        let w = owners.len() / dim;
        let mut err = vec![0f64; rows.len()];
        match &self.low {
            LowPrecision::Bf16(packed, bound) => {
                let idx: Vec<usize> = rows.clone().collect();
                dot_batch_bf16(guests, &idx, &vec![1.0; idx.len()], packed, s);
                for (e, x) in err.iter_mut().zip(rows.clone()) {
                    *e = bound.row_error(&guests[x * dim..(x + 1) * dim]);
                }
            }
            LowPrecision::Int8(packed) => quantized
                .get_or_init(|| I8Rows::new(&guests[rows.start * dim..rows.end * dim], dim))
                .dot_batch(packed, s, &mut err),
        }
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        for ((line, x), &e) in s.chunks_exact_mut(w).zip(rows).zip(&err) {
            // Rounded down: a larger candidate set is still exact. A bound that is not a
            // number (a row that cannot be rounded) sends the line to f32.
            let cut = ((self.thr as f64 - e) as f32).next_down();
            let start = pairs.len();
            if !cut.is_nan() {
                scan_at_least(line, cut, |y, _| pairs.push((x as u32, y)));
            }
            if cut.is_nan() || pairs.len() - start > Self::MAX_CANDIDATES {
                pairs.truncate(start);
                let packed = self.packed_f32.get_or_init(|| PackedRows::new(owners, dim));
                dot_batch_packed(&guests[x * dim..(x + 1) * dim], packed, line);
                for (y, &v) in line.iter().enumerate() {
                    hit(x, y, v);
                }
            }
        }
        // The f32 kernel's value for each pair, whatever shape it is computed in.
        let mut exact = vec![0f32; pairs.len()];
        kernel_pair_dots(guests, owners, dim, &pairs, &mut exact);
        for (&(x, y), &v) in pairs.iter().zip(&exact) {
            hit(x as usize, y as usize, v);
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
mod tests {
    use super::*;
    use crate::cluster::{Centroids, Distance};

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.into_iter().map(|a| a / n).collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Every pair above the threshold, with its f32 kernel value, by brute force.
    fn f32_hits(g: &[f32], o: &[f32], dim: usize, thr: f32) -> Vec<(usize, usize, u32)> {
        let (m, k) = (g.len() / dim, o.len() / dim);
        let mut s = vec![0f32; m * k];
        dot_batch(g, o, dim, &mut s);
        let mut out = Vec::new();
        for x in 0..m {
            for y in 0..k {
                if s[x * k + y] > thr {
                    out.push((x, y, s[x * k + y].to_bits()));
                }
            }
        }
        out
    }

    #[test]
    fn low_precision_filters_find_exactly_the_f32_hits() {
        // Guests that are noisy copies of owners at similarities spread around the
        // threshold (the band where bf16 rounding could flip a pair), plus unrelated rows
        // and a guest equal to many owners (the whole-line fallback). Both filters, on
        // whichever bf16 and int8 kernels the CPU has: each kernel gives the same bits.
        let mut rng = crate::rng::Rng::new(21);
        for (dim, eps) in [(384usize, 0.05f64), (37, 0.01), (8, 0.2)] {
            let thr = similarity_threshold(eps);
            let (k, m) = (300usize, 200usize);
            let mut o: Vec<f32> = Vec::new();
            for _ in 0..k {
                o.extend(unit((0..dim).map(|_| rng.normal() as f32).collect()));
            }
            // 40 owners are copies of owner 0, so guest 0 (owner 0 itself) has 41 candidates.
            for y in 1..41 {
                let (head, tail) = o.split_at_mut(y * dim);
                tail[..dim].copy_from_slice(&head[..dim]);
            }
            let mut g: Vec<f32> = Vec::new();
            for x in 0..m {
                let src = (x * 7) % k;
                let noise = if x % 3 == 2 {
                    2.0
                } else {
                    (eps * (x % 11) as f64 / 4.0).sqrt() / (dim as f64).sqrt()
                };
                let row: Vec<f32> = o[src * dim..(src + 1) * dim]
                    .iter()
                    .map(|&a| a + (rng.normal() * noise) as f32)
                    .collect();
                g.extend(unit(row));
            }
            let want = f32_hits(&g, &o, dim, thr);
            assert!(want.len() > 40, "dim {dim}: only {} hits drawn", want.len());
            for (name, f) in [
                ("bf16", LowFilter::bf16(&o, dim, thr)),
                ("int8", LowFilter::int8(&o, dim, thr)),
            ] {
                // Each tile twice: quantized afresh, then from the kept int8 operands.
                let (mut got, mut again) = (Vec::new(), Vec::new());
                for (a, a1) in [(0usize, 77usize), (77, m)] {
                    let mut s = vec![0f32; (a1 - a) * k];
                    let quantized = OnceCell::new();
                    for out in [&mut got, &mut again] {
                        f.scan(&g, a..a1, &quantized, &o, &mut s, |x, y, v| {
                            if v > thr {
                                out.push((x, y, v.to_bits()));
                            }
                        });
                    }
                }
                got.sort_unstable();
                again.sort_unstable();
                assert_eq!(got, want, "{name}, dim {dim}");
                assert_eq!(again, want, "{name}, dim {dim}, kept operands");
            }
        }
    }

    #[test]
    fn near_boundary_never_skips_a_split_duplicate() {
        // Random pairs straddling the boundary between two centroids: every pair more
        // similar than 1 − eps, with x nearer c1 and y nearer c2, must be flagged.
        let mut rng = crate::rng::Rng::new(11);
        let mut checked = 0;
        for case in 0..40_000 {
            let eps: f64 = [0.003, 0.01, 0.05, 0.2][case % 4];
            // Whole groups of eight sums and a tail.
            let d = if case % 3 == 0 { 19 } else { 16 };
            let mut g = |s: f64| (0..d).map(|_| (rng.normal() * s) as f32).collect::<Vec<f32>>();
            let c1 = unit(g(1.0));
            let c2 = unit(c1.iter().zip(g(0.6)).map(|(a, b)| a + b).collect());
            let mid: Vec<f32> = c1.iter().zip(&c2).zip(g(0.3)).map(|((a, b), n)| a + b + n).collect();
            let x = unit(mid.clone());
            let y = unit(x.iter().zip(g(0.2 * eps.sqrt())).map(|(a, n)| a + n).collect());
            let (xy, x1, x2, y1, y2) = (dot(&x, &y), dot(&x, &c1), dot(&x, &c2), dot(&y, &c1), dot(&y, &c2));
            if f64::from(xy) > 1.0 - eps && x1 >= x2 && y2 >= y1 {
                checked += 1;
                assert!(near_boundary(&x, x1, &c1, &c2, eps), "case {case}: x·y {xy}, eps {eps}");
            }
        }
        assert!(checked > 1000, "only {checked} straddling pairs drawn");
    }

    #[test]
    fn near_boundary_skips_rows_deep_inside_their_cluster() {
        let mut rng = crate::rng::Rng::new(5);
        let mut g = || unit((0..16).map(|_| rng.normal() as f32).collect());
        let (c1, c2) = (g(), g());
        // A row at its own centroid is ‖c1 − c2‖²/2 from the boundary, more than √(2·eps)·‖c1 − c2‖.
        assert!(!near_boundary(&c1, dot(&c1, &c1), &c1, &c2, 0.05));
        // Halfway between the two it is on the boundary.
        let m = unit(c1.iter().zip(&c2).map(|(a, b)| a + b).collect());
        assert!(near_boundary(&m, dot(&m, &c1), &c1, &c2, 0.0));
    }

    #[test]
    fn guests_far_from_the_boundary_are_never_missed() {
        use crate::pipeline::spill::ClusterSpill;
        let (k, d, eps) = (12, 16, 0.05);
        let mut rng = crate::rng::Rng::new(3);
        let mut g = |s: f64| (0..d).map(|_| (rng.normal() * s) as f32).collect::<Vec<f32>>();
        let cv: Vec<f32> = (0..k).flat_map(|_| unit(g(1.0))).collect();
        let c = Centroids::try_new(cv, d, Distance::Cosine).unwrap();
        // Rows near a centroid or between two, each with a close copy (cos ≈ 0.97-0.999).
        let mut rows: Vec<f32> = Vec::new();
        for i in 0..400 {
            let (a, b) = (i % k, (i * 5 + 1) % k);
            let w = if i % 3 == 0 { 1.0 } else { 0.0 };
            let base: Vec<f32> = c
                .row(a)
                .iter()
                .zip(c.row(b))
                .zip(g(0.5))
                .map(|((x, y), n)| x + w * y + n)
                .collect();
            let x = unit(base);
            let y = unit(
                x.iter()
                    .zip(g(0.03 + 0.03 * (i % 4) as f64))
                    .map(|(a, n)| a + n)
                    .collect(),
            );
            rows.extend(x);
            rows.extend(y);
        }
        let n = rows.len() / d;
        let (mut labels, mut dots, mut second) = (vec![0u32; n], vec![0f32; n], vec![0u32; n]);
        c.nearest_two(&rows, &mut labels, &mut dots, &mut second);
        let eligible = vec![true; n];
        let spill = |cluster: &dyn Fn(usize) -> Option<u32>| {
            let sp = ClusterSpill::create(None, d, 3).unwrap();
            let mut buf = sp.buffer();
            for i in 0..n {
                if let Some(cl) = cluster(i) {
                    buf.push(cl, i as u32, &rows[i * d..(i + 1) * d]).unwrap();
                }
            }
            buf.flush().unwrap();
            drop(buf);
            sp.finish().unwrap()
        };
        let owners = spill(&|i| Some(labels[i]));
        let all_guests = spill(&|i| Some(second[i]));
        let near = |i: usize| {
            near_boundary(
                &rows[i * d..(i + 1) * d],
                dots[i],
                c.row(labels[i] as usize),
                c.row(second[i] as usize),
                eps,
            )
        };
        let few_guests = spill(&|i| near(i).then_some(second[i]));
        let skipped = (0..n).filter(|&i| !near(i)).count();
        let full =
            second_cluster_duplicates(&owners, &all_guests, &labels, &second, &eligible, d, eps, &|_| {}).unwrap();
        let fast =
            second_cluster_duplicates(&owners, &few_guests, &labels, &second, &eligible, d, eps, &|_| {}).unwrap();
        assert_eq!(fast, full);
        let found = full.iter().filter(|f| f.is_some()).count();
        assert!(
            found >= 10 && skipped >= n / 20,
            "found {found}, skipped {skipped} of {n}"
        );
    }
}
