//! The per-cluster sums of k-means' update step (Lloyd 1982), kept exact so
//! that an update only adds and subtracts the rows that changed cluster.
//!
//! Every coordinate is summed in fixed point: row value `v` in dimension `d`
//! counts as the integer `trunc(v · 2^s_d)`, with `s_d` chosen so that no sum
//! of the training rows can leave an `i64` ([`scale_exponent`]). Integer sums
//! do not depend on the order of their terms, so a cluster's sum is a
//! function of its members alone: the sums left by the last update, minus the
//! rows that left and plus the rows that came, are exactly the sums of the
//! new members. Once the clusters form, a few thousand of 256k training rows
//! move per iteration, so most of the update's reading of the sample (it was
//! a tenth of the fit) is skipped, and the means, one rounding of the exact
//! sum, no longer depend on the order the rows lie in.
//!
//! Precision: with `|v| ≤ 1` (unit rows) and 256k rows, `s_d = 43`: every f32
//! of magnitude ≥ 2⁻²⁰ is taken exactly, smaller ones within 2⁻⁴³ — far below
//! an f32 ulp of any mean they can move.

use rayon::prelude::*;

use crate::distance::add_rows_fixed;
use crate::{Error, Result};

use super::rows_by_cluster;

/// Exact per-cluster sums of rows and the labels they are the sums for (module doc).
pub(super) struct ExactSums {
    dim: usize,
    /// `2^s_d` per dimension (exact in f32) and its inverse.
    scale: Vec<f32>,
    unscale: Vec<f64>,
    /// `k × dim` fixed-point sums.
    sums: Vec<i64>,
    counts: Vec<usize>,
    /// The labels `sums` and `counts` are of; empty before the first update.
    labels: Vec<u32>,
}

/// The largest `s` with `n · max · 2^s < 2^62`, so that the fixed-point sum of
/// any subset of `n` values of magnitude at most `max` fits an `i64` with room
/// to spare; clamped to the exponents an f32 power of two can hold.
fn scale_exponent(max: f32, n: usize) -> i32 {
    // ceil(log2 n) bits for the count.
    let count_bits = (usize::BITS - n.max(1).saturating_sub(1).leading_zeros()) as i32;
    // max < 2^e: the unbiased exponent of `max` plus one (0 for max = 0).
    let e = if max > 0.0 {
        ((max.to_bits() >> 23) & 0xff) as i32 - 126
    } else {
        0
    };
    (62 - count_bits - e).clamp(-126, 126)
}

impl ExactSums {
    /// Sums for `data` (`n × dim`, finite values) in `k` clusters; computed on
    /// the first [`ExactSums::update_to`].
    pub(super) fn new(data: &[f32], dim: usize, k: usize) -> Result<Self> {
        let n = data.len() / dim;
        // The largest magnitude per dimension, as bits: for finite values the order of
        // the bits with the sign masked off is the order of the magnitudes, and any
        // NaN or inf is larger than every finite value.
        let bits = data
            .par_chunks(dim * 1024)
            .map(|block| {
                let mut m = vec![0u32; dim];
                for row in block.chunks_exact(dim) {
                    for (a, &v) in m.iter_mut().zip(row) {
                        *a = (*a).max(v.to_bits() & 0x7fff_ffff);
                    }
                }
                m
            })
            .reduce(
                || vec![0u32; dim],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x = (*x).max(y));
                    a
                },
            );
        let max: Vec<f32> = bits.into_iter().map(f32::from_bits).collect();
        if let Some(d) = max.iter().position(|m| !m.is_finite()) {
            // Only on this error path: the first such row, to name it.
            let row = data.chunks_exact(dim).position(|r| !r[d].is_finite()).unwrap_or(0);
            return Err(Error::param(
                "k-means rows",
                format!("row {row}, dimension {d}: {} is not finite", data[row * dim + d]),
            ));
        }
        let s: Vec<i32> = max.iter().map(|&m| scale_exponent(m, n)).collect();
        Ok(ExactSums {
            dim,
            scale: s.iter().map(|&s| 2f32.powi(s)).collect(),
            unscale: s.iter().map(|&s| 2f64.powi(-s)).collect(),
            sums: vec![0; k * dim],
            counts: vec![0; k],
            labels: Vec::new(),
        })
    }

    /// Brings the sums to `labels`: the rows whose label changed are taken out
    /// of their old cluster and added to their new one, or, when that is most
    /// of the rows (or on the first call), every sum is made again. Both give
    /// the same integers.
    pub(super) fn update_to(&mut self, data: &[f32], labels: &[u32]) {
        let (dim, k) = (self.dim, self.counts.len());
        let first = self.labels.len() != labels.len();
        let movers: Vec<u32> = if first {
            Vec::new()
        } else {
            (0..labels.len() as u32)
                .filter(|&i| self.labels[i as usize] != labels[i as usize])
                .collect()
        };
        if first || 2 * movers.len() >= labels.len() {
            let (starts, order) = rows_by_cluster(labels, k);
            let scale = &self.scale;
            self.sums.par_chunks_mut(dim).enumerate().for_each(|(j, acc)| {
                acc.fill(0);
                add_rows_fixed(acc, data, &order[starts[j]..starts[j + 1]], scale, false);
            });
            for (c, w) in self.counts.iter_mut().zip(starts.windows(2)) {
                *c = w[1] - w[0];
            }
        } else {
            // Each cluster's arrivals and departures, in row order.
            let to: Vec<u32> = movers.iter().map(|&i| labels[i as usize]).collect();
            let from: Vec<u32> = movers.iter().map(|&i| self.labels[i as usize]).collect();
            let (in_starts, ins) = rows_by_cluster(&to, k);
            let (out_starts, outs) = rows_by_cluster(&from, k);
            let ins: Vec<u32> = ins.iter().map(|&m| movers[m as usize]).collect();
            let outs: Vec<u32> = outs.iter().map(|&m| movers[m as usize]).collect();
            let scale = &self.scale;
            self.sums
                .par_chunks_mut(dim)
                .zip(self.counts.par_iter_mut())
                .enumerate()
                .for_each(|(j, (acc, count))| {
                    let (a, b) = (
                        &ins[in_starts[j]..in_starts[j + 1]],
                        &outs[out_starts[j]..out_starts[j + 1]],
                    );
                    if a.is_empty() && b.is_empty() {
                        return;
                    }
                    add_rows_fixed(acc, data, a, scale, false);
                    add_rows_fixed(acc, data, b, scale, true);
                    *count = *count + a.len() - b.len();
                });
        }
        self.labels.clear();
        self.labels.extend_from_slice(labels);
    }

    /// Rows in cluster `j`.
    pub(super) fn count(&self, j: usize) -> usize {
        self.counts[j]
    }

    /// The mean of cluster `j` (not empty): its exact sum rounded to f64,
    /// divided by the count, rounded to f32.
    pub(super) fn mean_into(&self, j: usize, out: &mut [f32]) {
        let inv = 1.0 / self.counts[j] as f64;
        let acc = &self.sums[j * self.dim..(j + 1) * self.dim];
        for ((o, &a), &u) in out.iter_mut().zip(acc).zip(&self.unscale) {
            *o = (a as f64 * u * inv) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The mean computed the slow way: exact rationals are out of reach, but
    /// f64 sums of these few rows are within 1e-12 of the exact ones.
    fn slow_mean(data: &[f32], dim: usize, labels: &[u32], j: u32) -> Vec<f64> {
        let mut acc = vec![0f64; dim];
        let mut n = 0;
        for (row, &l) in data.chunks_exact(dim).zip(labels) {
            if l == j {
                n += 1;
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += f64::from(v);
                }
            }
        }
        acc.iter().map(|a| a / n as f64).collect()
    }

    #[test]
    fn incremental_sums_equal_sums_made_again_and_the_means() {
        let (n, dim, k) = (500usize, 19usize, 7usize);
        let mut rng = Rng::new(3);
        // Mixed magnitudes, including tiny and zero values and a dimension of zeros.
        let data: Vec<f32> = (0..n * dim)
            .map(|i| match i % dim {
                0 => 0.0,
                1 => (rng.normal() * 1e-9) as f32,
                _ => (rng.normal() * 3.0) as f32,
            })
            .collect();
        let mut labels: Vec<u32> = (0..n).map(|_| (rng.next_u64() % k as u64) as u32).collect();
        let mut inc = ExactSums::new(&data, dim, k).unwrap();
        inc.update_to(&data, &labels);
        for step in 0..6 {
            // Move a few rows (the incremental path), or most of them (the full one).
            let moves = if step == 3 { n } else { 1 + step * 7 };
            for _ in 0..moves {
                let i = (rng.next_u64() % n as u64) as usize;
                labels[i] = (rng.next_u64() % k as u64) as u32;
            }
            inc.update_to(&data, &labels);
            let mut fresh = ExactSums::new(&data, dim, k).unwrap();
            fresh.update_to(&data, &labels);
            assert_eq!(inc.sums, fresh.sums, "step {step}");
            assert_eq!(inc.counts, fresh.counts, "step {step}");
            for j in 0..k {
                if inc.count(j) == 0 {
                    continue;
                }
                let mut m = vec![0f32; dim];
                inc.mean_into(j, &mut m);
                for (d, (&got, want)) in m.iter().zip(slow_mean(&data, dim, &labels, j as u32)).enumerate() {
                    let tol = want.abs() * 1e-6 + 1e-12;
                    assert!(
                        (f64::from(got) - want).abs() <= tol,
                        "cluster {j} dim {d}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn sums_of_every_row_stay_in_range() {
        // The largest magnitudes f32 holds, and counts up to 2^32: no overflow.
        for (max, n) in [
            (f32::MAX, 1usize << 32),
            (1.0, 1),
            (1.0, 1 << 18),
            (1e-40, 3),
            (0.0, 10),
        ] {
            let s = scale_exponent(max, n);
            let bound = f64::from(max) * 2f64.powi(s) * n as f64;
            assert!(bound < 2f64.powi(63), "max {max} n {n}: s {s}");
            assert!(2f32.powi(s).is_normal(), "max {max} n {n}: s {s}");
        }
        assert_eq!(scale_exponent(1.0, 1 << 18), 43);
    }

    #[test]
    fn non_finite_rows_are_refused() {
        let data = [1.0f32, 0.5, 0.5, f32::NAN];
        let e = ExactSums::new(&data, 2, 1).err().expect("NaN refused").to_string();
        assert!(e.contains("row 1, dimension 1: NaN"), "{e}");
        assert!(ExactSums::new(&[f32::INFINITY, 0.0], 2, 1).is_err());
    }
}
