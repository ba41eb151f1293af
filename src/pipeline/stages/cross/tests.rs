//! Tests of the cross-cluster passes.

use std::sync::Arc;

use super::*;
use crate::cluster::{Centroids, Distance};
use crate::distance::dot_batch;
use crate::pipeline::spill::{ClusterSpill, SpilledClusters, cluster_layout};
use crate::pipeline::stages::{remove, semdedup_spilled};
use crate::score::semdedup::SemDedupParams;

fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.into_iter().map(|a| a / n).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The f32 kernel's product of rows `x` and `y` of the row-major `rows`.
fn pair_dot(rows: &[f32], d: usize, x: usize, y: usize) -> f32 {
    let mut v = [0f32];
    kernel_pair_dots(rows, rows, d, &[(x as u32, y as u32)], &mut v);
    v[0]
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
        // The rows where the pass finds them: owners scattered through the owner spill,
        // every fourth guest among them (marked IN_OWNERS), the rest in the guest spill
        // in reverse order.
        let (mut ov, mut gv) = (Vec::new(), Vec::new());
        let (mut opos, mut gpos) = (vec![0u32; k], vec![0u32; m]);
        for y in (0..k).rev() {
            opos[y] = (ov.len() / dim) as u32;
            ov.extend_from_slice(&o[y * dim..(y + 1) * dim]);
            if y < m && y % 4 == 1 {
                gpos[y] = (ov.len() / dim) as u32 | IN_OWNERS;
                ov.extend_from_slice(&g[y * dim..(y + 1) * dim]);
            }
        }
        for x in (0..m).rev().filter(|x| x % 4 != 1 || *x >= k) {
            gpos[x] = (gv.len() / dim) as u32;
            gv.extend_from_slice(&g[x * dim..(x + 1) * dim]);
        }
        let (oids, gids) = (vec![0u32; ov.len() / dim], vec![0u32; gv.len() / dim]);
        // The owner rows quantized once (both sides packed from them where they lie
        // there), or every tile quantized afresh.
        let once = Quantized::new(&ov, dim);
        for quantized in [None, Some(&once)] {
            let guests = Side {
                pos: &gpos,
                rows: (&gids, &gv),
                owners: (&oids, &ov),
                all_owners: false,
                quantized,
                dim,
            };
            let owners = Side {
                pos: &opos,
                rows: (&oids, &ov),
                all_owners: true,
                ..guests
            };
            assert_eq!(guests.range(0..m).gather(), g);
            assert_eq!(owners.gather(), o);
            let filters = match quantized {
                None => vec![
                    ("bf16", LowFilter::bf16(owners, thr)),
                    ("int8", LowFilter::int8(owners, thr)),
                ],
                Some(_) => vec![("int8, quantized once", LowFilter::int8(owners, thr))],
            };
            for (name, f) in filters {
                // Each tile twice: quantized afresh, then from the kept int8 operands.
                let (mut got, mut again) = (Vec::new(), Vec::new());
                for (a, a1) in [(0usize, 77usize), (77, m)] {
                    let mut s = vec![0f32; (a1 - a) * k];
                    let quantized = std::sync::OnceLock::new();
                    for out in [&mut got, &mut again] {
                        f.scan(guests.range(a..a1), &quantized, &mut s, &|_, _| false, |x, y, v| {
                            if v > thr {
                                out.push((a + x, y, v.to_bits()));
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
fn dot_and_gap_stay_within_their_error_bound_on_every_path() {
    let mut rng = crate::rng::Rng::new(17);
    for n in 1..70 {
        let mut g = || unit((0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>());
        let (x, c1, c2) = (g(), g(), g());
        let exact_d: f64 = x.iter().zip(&c2).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        let exact_g: f64 = c1
            .iter()
            .zip(&c2)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        let u = f64::from(f32::EPSILON) / 2.0;
        let gamma = n as f64 * u / (1.0 - n as f64 * u);
        let mut paths = vec![dot_and_gap(&x, &c1, &c2)];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just checked.
            paths.push(unsafe { dot_and_gap_avx512(&x, &c1, &c2) });
        }
        for (d, gap) in paths {
            // ‖x‖·‖c2‖ = 1 up to rounding; every term of the gap is ≥ 0.
            assert!(
                (f64::from(d) - exact_d).abs() <= gamma * 1.001,
                "n {n}: {d} vs {exact_d}"
            );
            assert!(
                (f64::from(gap) - exact_g).abs() <= gamma * exact_g + 1e-12,
                "n {n}: {gap} vs {exact_g}"
            );
        }
    }
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

/// Unit rows near a centroid or between two, each with a close copy (cos ≈ 0.97–0.999),
/// some with two, `pairs` groups over 12 centroids in 16 dimensions; with their nearest and
/// second-nearest centroids and the dot with the nearest.
fn boundary_rows(seed: u64, pairs: usize) -> (Centroids, Vec<f32>, Vec<u32>, Vec<f32>, Vec<u32>) {
    let (k, d) = (12, 16);
    let mut rng = crate::rng::Rng::new(seed);
    let mut g = |s: f64| (0..d).map(|_| (rng.normal() * s) as f32).collect::<Vec<f32>>();
    let cv: Vec<f32> = (0..k).flat_map(|_| unit(g(1.0))).collect();
    let c = Centroids::try_new(cv, d, Distance::Cosine).unwrap();
    let mut rows: Vec<f32> = Vec::new();
    for i in 0..pairs {
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
        // Every third pair near a boundary gets a third copy, which may land on either side.
        let z = (i % 3 == 0).then(|| unit(x.iter().zip(g(0.04)).map(|(a, n)| a + n).collect()));
        rows.extend(x);
        rows.extend(y);
        rows.extend(z.unwrap_or_default());
    }
    let n = rows.len() / d;
    let (mut labels, mut dots, mut second) = (vec![0u32; n], vec![0f32; n], vec![0u32; n]);
    c.nearest_two(&rows, &mut labels, &mut dots, &mut second);
    (c, rows, labels, dots, second)
}

/// `second` with `u32::MAX` for the rows [`near_boundary`] leaves home, as the score
/// pass leaves it.
/// With each row's margin to its second cluster, as the score pass keeps it.
fn guests_only(
    c: &Centroids,
    rows: &[f32],
    labels: &[u32],
    dots: &[f32],
    second: &[u32],
    eps: f64,
) -> (Vec<u32>, Vec<f32>) {
    let d = c.dim();
    (0..labels.len())
        .map(|i| {
            let x = &rows[i * d..(i + 1) * d];
            let (near, margin) = boundary(x, dots[i], c.row(labels[i] as usize), c.row(second[i] as usize), eps);
            assert_eq!(
                near,
                near_boundary(x, dots[i], c.row(labels[i] as usize), c.row(second[i] as usize), eps)
            );
            (if near { second[i] } else { u32::MAX }, margin)
        })
        .unzip()
}

/// Spills row i under `cluster(i)` (none for `None`).
fn spill_rows(sp: ClusterSpill, rows: &[f32], d: usize, cluster: &dyn Fn(usize) -> Option<u32>) -> SpilledClusters {
    let mut buf = sp.buffer();
    for i in 0..rows.len() / d {
        if let Some(cl) = cluster(i) {
            buf.push(cl, i as u32, &rows[i * d..(i + 1) * d]).unwrap();
        }
    }
    buf.flush().unwrap();
    drop(buf);
    sp.finish().unwrap()
}

#[test]
fn guests_far_from_the_boundary_are_never_missed() {
    never_missed(3, 400, 20);
}

/// Clusters of more owners than a tile of the cross pass: each is several tasks
/// (one per owner tile), whose hits together are every pair's.
#[test]
fn clusters_split_into_owner_tiles_miss_no_hit() {
    let largest = never_missed(11, 7000, 40);
    assert!(largest > CROSS_TILE, "largest cluster {largest}");
}

/// The cross pass against every pair of a guest and its second cluster's rows, on
/// [`boundary_rows`]`(seed, pairs)`, of whose rows at least 1/`skip_divisor` lie far
/// from their boundary; returns the largest cluster's size.
fn never_missed(seed: u64, pairs: usize, skip_divisor: usize) -> usize {
    let (d, eps) = (16, 0.05);
    let (c, rows, labels, dots, second) = boundary_rows(seed, pairs);
    let n = rows.len() / d;
    let eligible = vec![true; n];
    // Every pair the pass compares: a guest against the rows of its second cluster.
    let thr = similarity_threshold(eps);
    let mut want: Vec<Option<(f32, u32)>> = vec![None; n];
    for (x, &sx) in second.iter().enumerate() {
        for y in (0..n).filter(|&y| labels[y] == sx) {
            let v = pair_dot(&rows, d, x, y);
            let (row, other) = (x.max(y), x.min(y) as u32);
            if v > thr && want[row].is_none_or(|(bv, bo)| v > bv || (v == bv && other < bo)) {
                want[row] = Some((v, other));
            }
        }
    }
    let want: Vec<Option<u32>> = want.iter().map(|w| w.map(|(_, o)| o)).collect();
    let (second_near, margin) = guests_only(&c, &rows, &labels, &dots, &second, eps);
    let skipped = second_near.iter().filter(|&&s| s == u32::MAX).count();
    let layout: Arc<[u32]> = cluster_layout(&c, None, 3).into();
    for table in [false, true] {
        let make = || match table {
            true => ClusterSpill::create_with_layout(None, d, 3, layout.clone()).unwrap(),
            false => ClusterSpill::create(None, d, 3).unwrap(),
        };
        let spill = |cluster: &dyn Fn(usize) -> Option<u32>| spill_rows(make(), &rows, d, cluster);
        let owners = spill(&|i| Some(labels[i]));
        // As the score pass writes them: only guests whose second cluster is in
        // another partition go to the guest spill.
        let labels = &labels;
        let external = |s: &[u32]| {
            let s = s.to_vec();
            let owners = &owners;
            move |i: usize| {
                (s[i] != u32::MAX && owners.partition_of(s[i]) != owners.partition_of(labels[i])).then_some(s[i])
            }
        };
        let all_guests = spill(&external(&second));
        let few_guests = spill(&external(&second_near));
        // With margins and without (given assignments), every guest or only those
        // near the boundary: the same hits.
        for m in [&margin[..], &[]] {
            let full = second_cluster_duplicates(&owners, &all_guests, labels, &second, m, &eligible, &c, eps, &|_| {})
                .unwrap();
            let fast = second_cluster_duplicates(
                &owners,
                &few_guests,
                labels,
                &second_near,
                m,
                &eligible,
                &c,
                eps,
                &|_| {},
            )
            .unwrap();
            assert_eq!(full, want, "layout table {table}, margins {}", m.len());
            assert_eq!(fast, want, "layout table {table}, margins {}", m.len());
        }
        let internal = (0..n)
            .filter(|&i| owners.partition_of(second[i]) == owners.partition_of(labels[i]))
            .count();
        assert!(
            internal > 0 && all_guests.rows > 0,
            "table {table}: internal {internal}"
        );
    }
    let found = want.iter().filter(|f| f.is_some()).count();
    assert!(
        found >= 10 && skipped >= n / skip_divisor,
        "found {found}, skipped {skipped} of {n}"
    );
    (0..c.k() as u32)
        .map(|j| labels.iter().filter(|&&l| l == j).count())
        .max()
        .unwrap_or(0)
}

#[test]
fn one_sweep_gives_what_the_within_and_cross_passes_give_in_turn() {
    let (d, eps) = (16, 0.05);
    let (c, rows, labels, dots, second) = boundary_rows(7, 1500);
    let n = rows.len() / d;
    let (second, margin) = guests_only(&c, &rows, &labels, &dots, &second, eps);
    // Some rows already gone (exact duplicates, `--where`).
    let eligible: Vec<bool> = (0..n).map(|i| i % 17 != 5).collect();
    let params = SemDedupParams::default();
    let layout: Arc<[u32]> = cluster_layout(&c, None, 3).into();
    for table in [false, true] {
        let make = || match table {
            true => ClusterSpill::create_with_layout(None, d, 3, layout.clone()).unwrap(),
            false => ClusterSpill::create(None, d, 3).unwrap(),
        };
        let owners = spill_rows(make(), &rows, d, &|i| Some(labels[i]));
        let external = |i: usize| {
            let s = second[i];
            (s != u32::MAX && owners.partition_of(s) != owners.partition_of(labels[i])).then_some(s)
        };
        let guests = spill_rows(make(), &rows, d, &external);
        // In turn: within clusters, remove, then the cross pass over the rows left.
        let within = semdedup_spilled(&owners, &labels, &eligible, &c, &params, &|_| {}).unwrap();
        let mut left = eligible.clone();
        let removed = remove(&mut left, |i| is_duplicate(within.max_sim[i], eps));
        let cross =
            second_cluster_duplicates(&owners, &guests, &labels, &second, &margin, &left, &c, eps, &|_| {}).unwrap();
        // In one sweep.
        let (sc, partners) = semdedup_second_cluster(
            &owners,
            &guests,
            &labels,
            &second,
            &margin,
            &eligible,
            &c,
            &params,
            eps,
            &|_| {},
        )
        .unwrap();
        let bits = |m: &[f32]| m.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&sc.max_sim), bits(&within.max_sim), "table {table}");
        assert_eq!(sc.dup_of, within.dup_of, "table {table}");
        assert_eq!(partners, cross, "table {table}");
        // The case the sweep defers: spilled guests that their own cluster removes.
        let deferred = (0..n)
            .filter(|&i| external(i).is_some() && eligible[i] && !left[i])
            .count();
        let found = cross.iter().filter(|p| p.is_some()).count();
        assert!(
            removed > 20 && found > 5 && deferred > 5,
            "table {table}: removed {removed}, found {found}, deferred {deferred}"
        );
    }
}

#[test]
fn pruning_leaves_out_only_pairs_the_other_direction_compares_or_below_the_threshold() {
    let (d, eps) = (16, 0.05);
    let (c, rows, labels, dots, second) = boundary_rows(5, 600);
    let (second, margin) = guests_only(&c, &rows, &labels, &dots, &second, eps);
    let n = rows.len() / d;
    let ids: Vec<u32> = (0..n as u32).collect();
    let prune = Pruning::new(&labels, &second, &margin, &c, eps);
    let thr = similarity_threshold(eps);
    let (mut by_symmetry, mut by_margin, mut tiles_left_out, mut hits) = (0, 0, 0, 0);
    for b in 0..c.k() as u32 {
        let g: Vec<u32> = ids.iter().copied().filter(|&i| second[i as usize] == b).collect();
        let o: Vec<u32> = ids.iter().copied().filter(|&i| labels[i as usize] == b).collect();
        let side = |pos, all_owners| Side {
            pos,
            rows: (&ids, &rows),
            owners: (&ids, &rows),
            all_owners,
            quantized: None,
            dim: d,
        };
        let order = prune.order(b, &side(&g, false), &side(&o, true));
        let (gs, os) = (side(&order.guests, false), side(&order.owners, true));
        // The same rows, reordered.
        let sorted = |mut v: Vec<u32>| {
            v.sort_unstable();
            v
        };
        assert_eq!(sorted(order.guests.clone()), g);
        assert_eq!(sorted(order.owners.clone()), o);
        for x in 0..gs.len() {
            for y in 0..os.len() {
                let (gx, oy) = (gs.id(x) as usize, os.id(y) as usize);
                let v = pair_dot(&rows, d, gx, oy);
                hits += usize::from(v > thr);
                if !order.skips(x..x + 1, y..y + 1) {
                    continue;
                }
                let a = labels[gx];
                if a > b && second[oy] == a {
                    // Compared the other way round, and not left out there by symmetry.
                    assert!(second[gx] == b && labels[oy] == b);
                    by_symmetry += 1;
                } else {
                    assert!(v <= thr, "pair ({gx}, {oy}) left out at {} > {thr}", v);
                    by_margin += 1;
                }
            }
        }
        // A tile is left out only when each of its pairs is.
        for x0 in (0..gs.len()).step_by(12) {
            for y0 in (0..os.len()).step_by(32) {
                let (x1, y1) = ((x0 + 12).min(gs.len()), (y0 + 32).min(os.len()));
                if order.skips(x0..x1, y0..y1) {
                    tiles_left_out += 1;
                    for x in x0..x1 {
                        for y in y0..y1 {
                            assert!(order.skips(x..x + 1, y..y + 1), "tile ({x0}, {y0})");
                        }
                    }
                }
            }
        }
    }
    assert!(
        by_symmetry > 100 && by_margin > 100 && tiles_left_out > 10 && hits > 10,
        "symmetry {by_symmetry}, margin {by_margin}, tiles {tiles_left_out}, hits {hits}"
    );
}

/// Pairs built to sit on the margin bound: x and y on either side of the boundary
/// between two orthogonal centroids, x − y parallel to a − b and x·y just above
/// 1 − eps, so m_x + m_y = ‖x − y‖·‖a − b‖ falls short of the bound by rounding only.
#[test]
fn pairs_on_the_margin_bound_are_found() {
    let (k, d, eps) = (6usize, 16usize, 0.05);
    let mut cv = vec![0f32; k * d];
    for i in 0..k {
        cv[i * d + i] = 1.0;
    }
    let c = Centroids::try_new(cv, d, Distance::Cosine).unwrap();
    // x·y = (1 − 2t²) / (1 + 2t²) = 1 − eps + 1e-4.
    let target: f64 = 1.0 - eps + 1e-4;
    let t = ((1.0 - target) / (2.0 * (1.0 + target))).sqrt();
    let mut rng = crate::rng::Rng::new(9);
    let mut rows: Vec<f32> = Vec::new();
    let mut pairs = Vec::new();
    for (a, b) in [(0usize, 1usize), (2, 4), (5, 3), (1, 2), (4, 0)] {
        let (p, q) = (std::f64::consts::FRAC_1_SQRT_2 + t, std::f64::consts::FRAC_1_SQRT_2 - t);
        let mut x = vec![0f32; d];
        let mut y = vec![0f32; d];
        (x[a], x[b], y[a], y[b]) = (p as f32, q as f32, q as f32, p as f32);
        pairs.push((rows.len() / d, rows.len() / d + 1));
        rows.extend(unit(x));
        rows.extend(unit(y));
        // Rows of each cluster that are no one's duplicate.
        for j in [a, b] {
            let mut z: Vec<f32> = (0..d).map(|_| (rng.normal() * 0.3) as f32).collect();
            z[j] += 1.5;
            rows.extend(unit(z));
        }
    }
    let n = rows.len() / d;
    let (mut labels, mut dots, mut second) = (vec![0u32; n], vec![0f32; n], vec![0u32; n]);
    c.nearest_two(&rows, &mut labels, &mut dots, &mut second);
    let (second, margin) = guests_only(&c, &rows, &labels, &dots, &second, eps);
    let thr = similarity_threshold(eps);
    let radius = (2.0 * eps + SLACK).sqrt() * std::f64::consts::SQRT_2;
    for &(x, y) in &pairs {
        let v = pair_dot(&rows, d, x, y);
        assert!(v > thr, "pair ({x}, {y}) at {}", v);
        assert!(
            second[x] == labels[y] && second[y] == labels[x],
            "pair ({x}, {y}) not guests"
        );
        // Within two thousandths of the bound.
        let sum = f64::from(margin[x]) + f64::from(margin[y]);
        assert!(
            sum > 0.998 * radius && sum < radius,
            "pair ({x}, {y}): {sum} against {radius}"
        );
    }
    let eligible = vec![true; n];
    let owners = spill_rows(ClusterSpill::create(None, d, 2).unwrap(), &rows, d, &|i| {
        Some(labels[i])
    });
    let guests = spill_rows(ClusterSpill::create(None, d, 2).unwrap(), &rows, d, &|i| {
        let s = second[i];
        (s != u32::MAX && owners.partition_of(s) != owners.partition_of(labels[i])).then_some(s)
    });
    let found =
        second_cluster_duplicates(&owners, &guests, &labels, &second, &margin, &eligible, &c, eps, &|_| {}).unwrap();
    for &(x, y) in &pairs {
        assert_eq!(found[y], Some(x as u32), "pair ({x}, {y})");
    }
    assert_eq!(found.iter().filter(|f| f.is_some()).count(), pairs.len());
}
