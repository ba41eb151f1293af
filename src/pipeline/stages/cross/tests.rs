//! Tests of the cross-cluster passes.

use std::sync::Arc;

use super::*;
use crate::cluster::{Centroids, Distance};
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
        let guests = Side {
            pos: &gpos,
            rows: (&gids, &gv),
            owners: (&oids, &ov),
            all_owners: false,
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
        for (name, f) in [
            ("bf16", LowFilter::bf16(owners, thr)),
            ("int8", LowFilter::int8(owners, thr)),
        ] {
            // Each tile twice: quantized afresh, then from the kept int8 operands.
            let (mut got, mut again) = (Vec::new(), Vec::new());
            for (a, a1) in [(0usize, 77usize), (77, m)] {
                let mut s = vec![0f32; (a1 - a) * k];
                let quantized = OnceCell::new();
                for out in [&mut got, &mut again] {
                    f.scan(guests.range(a..a1), &quantized, &mut s, |x, y, v| {
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
fn guests_only(c: &Centroids, rows: &[f32], labels: &[u32], dots: &[f32], second: &[u32], eps: f64) -> Vec<u32> {
    let d = c.dim();
    (0..labels.len())
        .map(|i| {
            let x = &rows[i * d..(i + 1) * d];
            let near = near_boundary(x, dots[i], c.row(labels[i] as usize), c.row(second[i] as usize), eps);
            if near { second[i] } else { u32::MAX }
        })
        .collect()
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
    let (d, eps) = (16, 0.05);
    let (c, rows, labels, dots, second) = boundary_rows(3, 400);
    let n = rows.len() / d;
    let eligible = vec![true; n];
    // Every pair the pass compares: a guest against the rows of its second cluster.
    let thr = similarity_threshold(eps);
    let mut want: Vec<Option<(f32, u32)>> = vec![None; n];
    for x in 0..n {
        for y in (0..n).filter(|&y| labels[y] == second[x]) {
            let mut v = [0f32];
            kernel_pair_dots(
                &rows[x * d..(x + 1) * d],
                &rows[y * d..(y + 1) * d],
                d,
                &[(0, 0)],
                &mut v,
            );
            let (row, other) = (x.max(y), x.min(y) as u32);
            if v[0] > thr && want[row].is_none_or(|(bv, bo)| v[0] > bv || (v[0] == bv && other < bo)) {
                want[row] = Some((v[0], other));
            }
        }
    }
    let want: Vec<Option<u32>> = want.iter().map(|w| w.map(|(_, o)| o)).collect();
    let second_near = guests_only(&c, &rows, &labels, &dots, &second, eps);
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
        let full =
            second_cluster_duplicates(&owners, &all_guests, labels, &second, &eligible, d, eps, &|_| {}).unwrap();
        let fast =
            second_cluster_duplicates(&owners, &few_guests, labels, &second_near, &eligible, d, eps, &|_| {}).unwrap();
        assert_eq!(full, want, "layout table {table}");
        assert_eq!(fast, want, "layout table {table}");
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
        found >= 10 && skipped >= n / 20,
        "found {found}, skipped {skipped} of {n}"
    );
}

#[test]
fn one_sweep_gives_what_the_within_and_cross_passes_give_in_turn() {
    let (d, eps) = (16, 0.05);
    let (c, rows, labels, dots, second) = boundary_rows(7, 1500);
    let n = rows.len() / d;
    let second = guests_only(&c, &rows, &labels, &dots, &second, eps);
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
        let cross = second_cluster_duplicates(&owners, &guests, &labels, &second, &left, d, eps, &|_| {}).unwrap();
        // In one sweep.
        let (sc, partners) =
            semdedup_second_cluster(&owners, &guests, &labels, &second, &eligible, &c, &params, eps, &|_| {}).unwrap();
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
