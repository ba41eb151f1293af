//! Turning scores into a kept set with an exact budget.
//!
//! * [`Budget`]: `--keep F` means exactly ⌊F·N⌋ rows, `--keep-n N` exactly N.
//! * [`select_top`]: the global rule of Sorscher et al. (2022): keep the
//!   rows with the largest scores (hardest) or the smallest (easiest).
//! * [`proportional_quotas`] + [`select_per_cluster`]: the same fraction in
//!   every cluster (largest-remainder rounding in exact integer arithmetic,
//!   so quotas sum to the budget).
//!
//! Ties are always broken by row id (lower first), so selections do not
//! depend on thread count, batch size or sort algorithm. Row ids are `u32`:
//! one run handles at most 2³²−1 rows.

pub mod annotate;
pub mod dbp;
pub mod robust;

pub use dbp::{DbpParams, DbpPlan};
pub use robust::{CcsParams, ccs_select, moderate_select};

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How many rows to keep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// A fraction F in (0, 1] of the eligible rows: keeps ⌊F·N⌋.
    Fraction(f64),
    /// An absolute number of rows.
    Count(u64),
}

impl Default for Budget {
    fn default() -> Self {
        Budget::Fraction(DEFAULT_KEEP)
    }
}

/// Kept fraction when none is given.
pub const DEFAULT_KEEP: f64 = 0.5;

/// ⌊F·N⌋, where a product within 1e-9 (relative) of an integer counts as
/// that integer: f64 rounding makes 0.29 × 100 = 28.999…, which would
/// otherwise keep 28 rows instead of 29.
pub fn floor_fraction(f: f64, n: u64) -> u64 {
    let x = f * n as f64;
    let r = x.round();
    if (x - r).abs() <= 1e-9 * r.max(1.0) {
        r as u64
    } else {
        x.floor() as u64
    }
}

impl Budget {
    /// Checks the value alone.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Budget::Fraction(f) if !(f > 0.0 && f <= 1.0) => Err(Error::param(
                "--keep",
                format!("{f} is outside (0, 1]; give the fraction of rows to keep"),
            )),
            Budget::Count(0) => Err(Error::param("--keep-n", "must be at least 1")),
            _ => Ok(()),
        }
    }

    /// The number of rows to keep out of `n`.
    pub fn resolve(&self, n: u64) -> Result<u64> {
        self.validate()?;
        match *self {
            Budget::Fraction(f) => Ok(floor_fraction(f, n)),
            Budget::Count(c) if c > n => Err(Error::param(
                "--keep-n",
                format!("{c} is more than the {n} usable rows"),
            )),
            Budget::Count(c) => Ok(c),
        }
    }
}

/// Which end of the score order to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// Keep the largest scores (least prototypical: abundant data).
    #[default]
    Hard,
    /// Keep the smallest scores (most prototypical: scarce data).
    Easy,
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Keep::Hard => "hard",
            Keep::Easy => "easy",
        })
    }
}

impl FromStr for Keep {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "hard" => Ok(Keep::Hard),
            "easy" => Ok(Keep::Easy),
            _ => Err(Error::param("keep", format!("`{s}`: expected hard or easy"))),
        }
    }
}

/// The rank order: preferred rows first, ties by lower row id.
#[inline]
fn rank(scores: &[f32], keep: Keep) -> impl Fn(&u32, &u32) -> Ordering + Sync + '_ {
    move |&a, &b| {
        let (sa, sb) = (scores[a as usize], scores[b as usize]);
        let o = match keep {
            Keep::Hard => sb.total_cmp(&sa),
            Keep::Easy => sa.total_cmp(&sb),
        };
        o.then(a.cmp(&b))
    }
}

/// Keeps the `budget` best eligible rows by `scores` (see [`Keep`]).
/// Returns one flag per row.
///
/// # Panics
/// If `budget` exceeds the number of eligible rows or lengths differ.
pub fn select_top(scores: &[f32], eligible: &[bool], budget: u64, keep: Keep) -> Vec<bool> {
    assert_eq!(scores.len(), eligible.len());
    let mut idx: Vec<u32> = (0..scores.len() as u32).filter(|&i| eligible[i as usize]).collect();
    assert!(budget as usize <= idx.len(), "budget larger than eligible rows");
    let mut out = vec![false; scores.len()];
    let b = budget as usize;
    if b == 0 {
        return out;
    }
    if b < idx.len() {
        idx.select_nth_unstable_by(b - 1, rank(scores, keep));
    }
    for &i in &idx[..b] {
        out[i as usize] = true;
    }
    out
}

/// Splits `budget` over clusters in proportion to their `sizes` (the same
/// fraction everywhere): ⌊B·n_j/N⌋, then the leftover rows one each to
/// the clusters with the largest remainders (ties: lower cluster index).
/// Exact integer arithmetic; the quotas sum to `budget` and never exceed
/// a cluster's size.
pub fn proportional_quotas(sizes: &[u64], budget: u64) -> Vec<u64> {
    let total: u64 = sizes.iter().sum();
    assert!(budget <= total, "budget larger than the rows");
    if total == 0 {
        return vec![0; sizes.len()];
    }
    let (b, t) = (budget as u128, total as u128);
    let mut q: Vec<u64> = sizes.iter().map(|&n| (b * n as u128 / t) as u64).collect();
    let mut left = budget - q.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    let rem = |j: usize| b * sizes[j] as u128 % t;
    order.sort_by(|&a, &c| rem(c).cmp(&rem(a)).then(a.cmp(&c)));
    for j in order {
        if left == 0 {
            break;
        }
        if q[j] < sizes[j] {
            q[j] += 1;
            left -= 1;
        }
    }
    q
}

/// Keeps `quotas[c]` best eligible rows of every cluster `c`.
///
/// # Panics
/// If lengths differ, a cluster id is out of range or a quota exceeds its
/// cluster's eligible rows.
pub fn select_per_cluster(
    scores: &[f32],
    clusters: &[u32],
    eligible: &[bool],
    quotas: &[u64],
    keep: Keep,
) -> Vec<bool> {
    let members = group_by_cluster(clusters, eligible, quotas.len());
    let chosen: Vec<Vec<u32>> = members
        .into_par_iter()
        .zip(quotas.par_iter())
        .map(|(mut m, &q)| {
            let q = q as usize;
            assert!(q <= m.len(), "quota larger than cluster");
            if q > 0 && q < m.len() {
                m.select_nth_unstable_by(q - 1, rank(scores, keep));
            }
            m.truncate(q);
            m
        })
        .collect();
    let mut out = vec![false; scores.len()];
    for c in chosen {
        for i in c {
            out[i as usize] = true;
        }
    }
    out
}

/// Eligible row ids of every cluster, ascending.
pub fn group_by_cluster(clusters: &[u32], eligible: &[bool], k: usize) -> Vec<Vec<u32>> {
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); k];
    for (i, (&c, &e)) in clusters.iter().zip(eligible).enumerate() {
        if e {
            members[c as usize].push(i as u32);
        }
    }
    members
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn floor_fraction_is_exact_for_decimal_inputs() {
        assert_eq!(floor_fraction(0.29, 100), 29);
        assert_eq!(floor_fraction(0.3, 10), 3);
        assert_eq!(floor_fraction(0.3, 1_000_000), 300_000);
        assert_eq!(floor_fraction(0.5, 3), 1);
        assert_eq!(floor_fraction(1.0, 7), 7);
        assert_eq!(floor_fraction(0.999, 100), 99);
    }

    #[test]
    fn budget_errors() {
        assert!(Budget::Fraction(0.0).validate().is_err());
        assert!(Budget::Fraction(1.5).validate().is_err());
        assert!(Budget::Fraction(f64::NAN).validate().is_err());
        assert!(Budget::Count(0).validate().is_err());
        assert!(
            Budget::Count(11)
                .resolve(10)
                .unwrap_err()
                .to_string()
                .contains("more than the 10")
        );
        assert_eq!(Budget::Fraction(1.0).resolve(10).unwrap(), 10);
    }

    #[test]
    fn top_breaks_ties_by_row_id() {
        let s = [0.5, 0.9, 0.5, 0.5, 0.1];
        let e = [true; 5];
        assert_eq!(select_top(&s, &e, 2, Keep::Hard), vec![true, true, false, false, false]);
        assert_eq!(select_top(&s, &e, 2, Keep::Easy), vec![true, false, false, false, true]);
        let e2 = [false, true, true, true, true];
        assert_eq!(select_top(&s, &e2, 3, Keep::Hard), vec![false, true, true, true, false]);
    }

    /// Slow reference: full sort.
    fn top_reference(s: &[f32], e: &[bool], b: usize, keep: Keep) -> Vec<bool> {
        let mut idx: Vec<u32> = (0..s.len() as u32).filter(|&i| e[i as usize]).collect();
        idx.sort_by(rank(s, keep));
        let mut out = vec![false; s.len()];
        for &i in &idx[..b] {
            out[i as usize] = true;
        }
        out
    }

    proptest! {
        #[test]
        fn top_equals_full_sort(
            s in proptest::collection::vec(0u8..5, 1..200),
            frac in 0.0f64..1.0,
            easy in any::<bool>(),
        ) {
            let scores: Vec<f32> = s.iter().map(|&v| v as f32 / 4.0).collect();
            let eligible: Vec<bool> = s.iter().enumerate().map(|(i, _)| i % 7 != 3).collect();
            let n = eligible.iter().filter(|&&e| e).count();
            let b = (frac * n as f64) as usize;
            let keep = if easy { Keep::Easy } else { Keep::Hard };
            let got = select_top(&scores, &eligible, b as u64, keep);
            prop_assert_eq!(got.iter().filter(|&&k| k).count(), b);
            prop_assert_eq!(got, top_reference(&scores, &eligible, b, keep));
        }

        #[test]
        fn quotas_sum_exactly_and_are_bounded(
            sizes in proptest::collection::vec(0u64..50, 1..40),
            frac in 0.0f64..=1.0,
        ) {
            let total: u64 = sizes.iter().sum();
            let b = (frac * total as f64).floor() as u64;
            let q = proportional_quotas(&sizes, b);
            prop_assert_eq!(q.iter().sum::<u64>(), b);
            for (qj, nj) in q.iter().zip(&sizes) {
                prop_assert!(qj <= nj);
                // within one row of the exact share
                let exact = b as f64 * *nj as f64 / total.max(1) as f64;
                prop_assert!((*qj as f64 - exact).abs() < 1.0 + 1e-9);
            }
        }

        #[test]
        fn per_cluster_keeps_quota_in_each(
            data in proptest::collection::vec((0u32..4, 0u8..10), 1..150),
            frac in 0.0f64..=1.0,
        ) {
            let clusters: Vec<u32> = data.iter().map(|d| d.0).collect();
            let scores: Vec<f32> = data.iter().map(|d| d.1 as f32).collect();
            let eligible = vec![true; data.len()];
            let mut sizes = vec![0u64; 4];
            for &c in &clusters { sizes[c as usize] += 1; }
            let b = floor_fraction(frac, data.len() as u64);
            let q = proportional_quotas(&sizes, b);
            let kept = select_per_cluster(&scores, &clusters, &eligible, &q, Keep::Hard);
            for c in 0..4u32 {
                let got = kept.iter().zip(&clusters).filter(|(k, cl)| **k && **cl == c).count() as u64;
                prop_assert_eq!(got, q[c as usize]);
                // every kept row of c scores at least as high as every dropped row of c
                let min_kept = kept.iter().zip(&clusters).zip(&scores).filter(|((k, cl), _)| **k && **cl == c).map(|(_, s)| *s).fold(f32::INFINITY, f32::min);
                let max_drop = kept.iter().zip(&clusters).zip(&scores).filter(|((k, cl), _)| !**k && **cl == c).map(|(_, s)| *s).fold(f32::NEG_INFINITY, f32::max);
                prop_assert!(min_kept >= max_drop);
            }
        }
    }
}
