//! Noise-robust selectors with exact budgets: keep-hard enriches label noise
//! and garbage, and random is a strong baseline, so these sit between.
//!
//! * CCS, coverage-centric coreset selection (Zheng et al., ICLR 2023):
//!   drop the hardest β fraction, split the rest into equal-width score
//!   strata, give strata their budget by water-filling and sample uniformly
//!   (seeded) inside each ([`ccs_select`], [`ccs_per_cluster`]).
//! * Moderate coreset (Xia et al., ICLR 2023, label-free variant): keep the
//!   rows whose distance to their cluster centre is closest to the
//!   cluster's median distance ([`moderate_scores`], [`moderate_select`]).
//!
//! * [`cap_outliers`]: drop the top fraction of a score (e.g. kNN distance
//!   from [`crate::cluster::Hnsw::knn_distance`]) before a keep-hard rule.
//!
//! All work with any per-row score; ties go to the lower row id.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Keep, floor_fraction, group_by_cluster, proportional_quotas, select_per_cluster};
use crate::rng::Rng;
use crate::score::semdedup::Assignment;
use crate::{Error, Result};

/// Fraction of the hardest rows CCS drops first (its `--mis-ratio`; the
/// CCS README uses 0.3 at 90 % pruning and 0.2 at 80 % on ImageNet, less
/// for milder pruning).
pub const DEFAULT_CCS_BETA: f64 = 0.1;
/// Equal-width score strata (the CCS code's default).
pub const DEFAULT_CCS_STRATA: usize = 50;

/// Fraction of the highest kNN-distance rows treated as outliers by
/// [`cap_outliers`] before a keep-hard rule.
pub const DEFAULT_OUTLIER_CAP: f64 = 0.01;

/// Parameters of CCS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CcsParams {
    /// Fraction of the (eligible) rows to drop as hardest, in [0, 1);
    /// defaults to [`DEFAULT_CCS_BETA`]. Capped so the budget stays reachable.
    pub beta: f64,
    /// Number of strata; defaults to [`DEFAULT_CCS_STRATA`].
    pub strata: usize,
    /// Seed of the sampling inside strata.
    #[serde(skip)]
    pub seed: u64,
}

impl Default for CcsParams {
    fn default() -> Self {
        CcsParams {
            beta: DEFAULT_CCS_BETA,
            strata: DEFAULT_CCS_STRATA,
            seed: 0,
        }
    }
}

impl CcsParams {
    /// Sets β.
    pub fn with_beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// Sets the number of strata.
    pub fn with_strata(mut self, strata: usize) -> Self {
        self.strata = strata;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.beta) {
            return Err(Error::param("--ccs-beta", format!("{} is outside [0, 1)", self.beta)));
        }
        if self.strata == 0 {
            return Err(Error::param("--ccs-strata", "must be at least 1"));
        }
        Ok(())
    }
}

/// One score stratum of a CCS selection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stratum {
    /// Lower score bound (inclusive).
    pub lo: f64,
    /// Upper score bound (exclusive, except for the last stratum).
    pub hi: f64,
    /// Rows in the stratum.
    pub size: u64,
    /// Rows kept from it.
    pub taken: u64,
}

/// The result of [`ccs_select`].
#[derive(Debug, Clone, PartialEq)]
pub struct CcsSelection {
    /// One flag per row; exactly `budget` are set.
    pub kept: Vec<bool>,
    /// Hardest rows dropped before stratifying: ⌊β·N⌋, or fewer when the
    /// budget needs them.
    pub dropped_hard: u64,
    /// The strata, lowest scores first.
    pub strata: Vec<Stratum>,
}

/// CCS over all eligible rows: keeps exactly `budget` rows. Scores of
/// eligible rows must be finite; higher = harder.
///
/// # Panics
/// If the lengths differ.
pub fn ccs_select(scores: &[f32], eligible: &[bool], budget: u64, params: &CcsParams) -> Result<CcsSelection> {
    params.validate()?;
    assert_eq!(scores.len(), eligible.len(), "ccs_select: lengths differ");
    let rows: Vec<u32> = (0..scores.len() as u32).filter(|&i| eligible[i as usize]).collect();
    check_scores(scores, &rows)?;
    if budget > rows.len() as u64 {
        return Err(Error::param(
            "--keep",
            format!("budget {budget} is more than the {} eligible rows", rows.len()),
        ));
    }
    let r = ccs_rows(scores, rows, budget, params, 0);
    let mut kept = vec![false; scores.len()];
    for i in r.chosen {
        kept[i as usize] = true;
    }
    Ok(CcsSelection {
        kept,
        dropped_hard: r.dropped,
        strata: r.strata,
    })
}

/// CCS inside every cluster, keeping `quotas[c]` rows of cluster `c`
/// (from [`proportional_quotas`] or DBP). β applies per cluster; each
/// cluster samples from its own seeded stream.
///
/// # Panics
/// If the lengths differ or a cluster id is not below `quotas.len()`.
pub fn ccs_per_cluster(
    scores: &[f32],
    clusters: &[u32],
    eligible: &[bool],
    quotas: &[u64],
    params: &CcsParams,
) -> Result<Vec<bool>> {
    params.validate()?;
    assert!(
        scores.len() == clusters.len() && scores.len() == eligible.len(),
        "ccs_per_cluster: lengths differ"
    );
    let members = group_by_cluster(clusters, eligible, quotas.len());
    for (c, m) in members.iter().enumerate() {
        check_scores(scores, m)?;
        if quotas[c] > m.len() as u64 {
            return Err(Error::param(
                "quotas",
                format!("cluster {c}: quota {} is more than its {} rows", quotas[c], m.len()),
            ));
        }
    }
    let chosen: Vec<Vec<u32>> = members
        .into_par_iter()
        .zip(quotas.par_iter())
        .enumerate()
        .map(|(c, (m, &q))| ccs_rows(scores, m, q, params, c as u64).chosen)
        .collect();
    let mut kept = vec![false; scores.len()];
    for i in chosen.into_iter().flatten() {
        kept[i as usize] = true;
    }
    Ok(kept)
}

/// Water-filling (CCS's `bin_allocate`): strata in ascending size (ties by
/// index) each take min(size, ⌊left / strata left⌋), so small strata are
/// kept whole and the rest is spread evenly. Sums to `budget` when
/// `budget ≤ Σ sizes`.
pub fn water_fill(sizes: &[u64], budget: u64) -> Vec<u64> {
    let k = sizes.len();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| sizes[a].cmp(&sizes[b]).then(a.cmp(&b)));
    let mut take = vec![0u64; k];
    let mut left = budget;
    for (i, &t) in order.iter().enumerate() {
        let avg = left / (k - i) as u64;
        take[t] = sizes[t].min(avg);
        left -= take[t];
    }
    // Integer division can leave a few rows when sizes are tight; any
    // stratum with room takes them, lowest index first.
    for t in 0..k {
        let add = (sizes[t] - take[t]).min(left);
        take[t] += add;
        left -= add;
    }
    take
}

/// The outlier cap for keep-hard rules: the eligibility mask without the
/// ⌊`fraction`·N⌋ highest-scoring eligible rows (e.g. the largest kNN
/// distances, likely noise), ties to the lower row id as in
/// [`super::select_top`]. Pass the result as `eligible` to the selector.
///
/// # Panics
/// If the lengths differ.
pub fn cap_outliers(scores: &[f32], eligible: &[bool], fraction: f64) -> Result<Vec<bool>> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::param("--outlier-cap", format!("{fraction} is outside [0, 1)")));
    }
    assert_eq!(scores.len(), eligible.len(), "cap_outliers: lengths differ");
    let n = eligible.iter().filter(|&&e| e).count() as u64;
    let capped = super::select_top(scores, eligible, floor_fraction(fraction, n), Keep::Hard);
    Ok(eligible.iter().zip(&capped).map(|(&e, &c)| e && !c).collect())
}

/// Moderate-coreset scores: |d − median of d over the row's cluster| for
/// d = `assign.dist()`; NaN for ineligible rows. The median of an even
/// count is the mean of the two middle values.
pub fn moderate_scores(assign: &Assignment) -> Vec<f32> {
    let dist = assign.dist();
    let medians: Vec<f64> = assign
        .members()
        .into_par_iter()
        .map(|m| {
            let mut d: Vec<f32> = m.iter().map(|&i| dist[i as usize]).collect();
            d.sort_unstable_by(f32::total_cmp);
            match d.len() {
                0 => f64::NAN,
                n if n % 2 == 1 => d[n / 2] as f64,
                n => (d[n / 2 - 1] as f64 + d[n / 2] as f64) / 2.0,
            }
        })
        .collect();
    (0..assign.n_rows())
        .map(|i| {
            if assign.eligible()[i] {
                (dist[i] as f64 - medians[assign.labels()[i] as usize]).abs() as f32
            } else {
                f32::NAN
            }
        })
        .collect()
}

/// Moderate coreset with an exact budget: the same fraction of every
/// cluster ([`proportional_quotas`]), filled with the rows closest to the
/// cluster's median distance, ties to the lower row id. For other quotas
/// (e.g. DBP's), pass [`moderate_scores`] to [`select_per_cluster`] with
/// [`Keep::Easy`].
pub fn moderate_select(assign: &Assignment, budget: u64) -> Result<Vec<bool>> {
    let sizes = assign.sizes();
    let total: u64 = sizes.iter().sum();
    if budget > total {
        return Err(Error::param(
            "--keep",
            format!("budget {budget} is more than the {total} eligible rows"),
        ));
    }
    let scores = moderate_scores(assign);
    let quotas = proportional_quotas(&sizes, budget);
    Ok(select_per_cluster(
        &scores,
        assign.labels(),
        assign.eligible(),
        &quotas,
        Keep::Easy,
    ))
}

struct CcsRows {
    chosen: Vec<u32>,
    dropped: u64,
    strata: Vec<Stratum>,
}

fn check_scores(scores: &[f32], rows: &[u32]) -> Result<()> {
    match rows.iter().find(|&&i| !scores[i as usize].is_finite()) {
        Some(&i) => Err(Error::param(
            "scores",
            format!("row {i} has score {}; CCS needs finite scores", scores[i as usize]),
        )),
        None => Ok(()),
    }
}

/// CCS on `rows` (finite scores, `budget ≤ rows.len()`); `stream` separates
/// the random streams of independent calls (e.g. clusters).
fn ccs_rows(scores: &[f32], mut rows: Vec<u32>, budget: u64, params: &CcsParams, stream: u64) -> CcsRows {
    let n = rows.len() as u64;
    // Hardest first, ties to the lower row id (dropped first).
    rows.sort_unstable_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b)));
    let dropped = floor_fraction(params.beta, n).min(n - budget);
    let rest = &rows[dropped as usize..];
    let k = params.strata;
    let (lo, hi) = rest.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &i| {
        let s = scores[i as usize] as f64;
        (l.min(s), h.max(s))
    });
    let width = if rest.is_empty() { 0.0 } else { (hi - lo) / k as f64 };
    let mut groups: Vec<Vec<u32>> = vec![Vec::new(); k];
    for &i in rest {
        let t = if width > 0.0 {
            (((scores[i as usize] as f64 - lo) / width).floor() as usize).min(k - 1)
        } else {
            0
        };
        groups[t].push(i);
    }
    let sizes: Vec<u64> = groups.iter().map(|g| g.len() as u64).collect();
    let take = water_fill(&sizes, budget);
    let base = Rng::for_stream(params.seed, stream).next_u64();
    let mut chosen = Vec::with_capacity(budget as usize);
    let mut strata = Vec::with_capacity(k);
    for (t, mut g) in groups.into_iter().enumerate() {
        g.sort_unstable();
        let picks = Rng::for_stream(base, t as u64).sample_indices(g.len() as u64, take[t]);
        chosen.extend(picks.iter().map(|&p| g[p as usize]));
        strata.push(Stratum {
            lo: if rest.is_empty() { 0.0 } else { lo + t as f64 * width },
            hi: if rest.is_empty() {
                0.0
            } else {
                lo + (t + 1) as f64 * width
            },
            size: sizes[t],
            taken: take[t],
        });
    }
    CcsRows {
        chosen,
        dropped,
        strata,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn count(k: &[bool]) -> usize {
        k.iter().filter(|&&b| b).count()
    }

    #[test]
    fn water_fill_by_hand() {
        // ascending sizes 0, 2, 3, 10 take 0, 2, 3 (avg 2, 3, 3), then the last 4.
        assert_eq!(water_fill(&[3, 0, 10, 2], 9), vec![3, 0, 4, 2]);
        assert_eq!(water_fill(&[10, 10], 3), vec![1, 2]);
        assert_eq!(water_fill(&[5, 5], 10), vec![5, 5]);
        assert_eq!(water_fill(&[], 0), Vec::<u64>::new());
    }

    #[test]
    fn ccs_by_hand() {
        // Scores 0..9: β = 0.2 drops 9 and 8; 0..7 in 4 strata of width 1.75:
        // {0,1} {2,3} {4,5} {6,7}; a budget of 4 takes one row of each.
        let scores: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let e = vec![true; 10];
        let p = CcsParams::default().with_beta(0.2).with_strata(4).with_seed(7);
        let r = ccs_select(&scores, &e, 4, &p).unwrap();
        assert_eq!(r.dropped_hard, 2);
        assert_eq!(count(&r.kept), 4);
        assert!(!r.kept[8] && !r.kept[9]);
        for pair in [[0, 1], [2, 3], [4, 5], [6, 7]] {
            assert_eq!(r.kept[pair[0]] as u8 + r.kept[pair[1]] as u8, 1, "{pair:?}");
        }
        assert_eq!(r.strata.iter().map(|s| s.size).collect::<Vec<_>>(), vec![2, 2, 2, 2]);
        assert_eq!((r.strata[0].lo, r.strata[3].hi), (0.0, 7.0));
        // Same seed, same rows; the budget caps β: keeping 9 drops only 1.
        assert_eq!(ccs_select(&scores, &e, 4, &p).unwrap().kept, r.kept);
        let r9 = ccs_select(&scores, &e, 9, &p).unwrap();
        assert_eq!((r9.dropped_hard, r9.kept[9], count(&r9.kept)), (1, false, 9));
        // Equal scores: one stratum; ties in the hard cut go to the lower row id.
        let flat = [1.0f32; 5];
        let r = ccs_select(&flat, &[true; 5], 2, &CcsParams::default().with_beta(0.2)).unwrap();
        assert!(!r.kept[0] && count(&r.kept) == 2);
        assert!(ccs_select(&[f32::NAN, 1.0], &[true, true], 1, &p).is_err());
        assert!(ccs_select(&scores, &e, 11, &p).is_err());
        assert!(CcsParams::default().with_beta(1.0).validate().is_err());
        assert!(CcsParams::default().with_strata(0).validate().is_err());
    }

    #[test]
    fn ccs_per_cluster_keeps_each_quota() {
        let scores: Vec<f32> = (0..40).map(|i| ((i * 13) % 17) as f32).collect();
        let clusters: Vec<u32> = (0..40).map(|i| (i % 3) as u32).collect();
        let mut e = vec![true; 40];
        e[5] = false;
        let quotas = [4, 7, 0];
        let p = CcsParams::default().with_strata(3).with_seed(1);
        let kept = ccs_per_cluster(&scores, &clusters, &e, &quotas, &p).unwrap();
        for c in 0..3u32 {
            let got = (0..40).filter(|&i| kept[i] && clusters[i] == c).count() as u64;
            assert_eq!(got, quotas[c as usize]);
        }
        assert!(!kept[5]);
        assert_eq!(ccs_per_cluster(&scores, &clusters, &e, &quotas, &p).unwrap(), kept);
        assert!(ccs_per_cluster(&scores, &clusters, &e, &[20, 0, 0], &p).is_err());
    }

    #[test]
    fn moderate_by_hand() {
        // Cluster 0: distances 0.25 0.375 0.5 1.0 0.75, median 0.5 → |d − m| = .25 .125 0 .5 .25.
        // Cluster 1: 0.25 0.5 0.75 1.0, median 0.625 → .375 .125 .125 .375.
        let labels = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1];
        let dist = [0.25, 0.375, 0.5, 1.0, 0.75, 0.25, 0.5, 0.75, 1.0, 7.0];
        let mut e = [true; 10];
        e[9] = false;
        let a = Assignment::try_new(&labels, &dist, &e, 2).unwrap();
        let s = moderate_scores(&a);
        assert_eq!(s[..9], [0.25, 0.125, 0.0, 0.5, 0.25, 0.375, 0.125, 0.125, 0.375]);
        assert!(s[9].is_nan());
        // Budget 4 → quotas [2, 2]: rows 2, 1 and 6, 7.
        let k = moderate_select(&a, 4).unwrap();
        let kept: Vec<usize> = (0..10).filter(|&i| k[i]).collect();
        assert_eq!(kept, vec![1, 2, 6, 7]);
        // Budget 6 → quotas [3, 3]: the tie between rows 0 and 4 goes to 0; cluster 1 ties 5 vs 8 → 5.
        let k = moderate_select(&a, 6).unwrap();
        let kept: Vec<usize> = (0..10).filter(|&i| k[i]).collect();
        assert_eq!(kept, vec![0, 1, 2, 5, 6, 7]);
        assert!(moderate_select(&a, 10).is_err());
    }

    #[test]
    fn outlier_cap_drops_the_top_fraction() {
        let s = [0.1, 0.9, 0.5, 0.9, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8];
        let mut e = [true; 10];
        e[1] = false;
        // 9 eligible, 0.25 → ⌊2.25⌋ = 2 capped: 0.9 (row 3) and 0.8 (row 9).
        let m = cap_outliers(&s, &e, 0.25).unwrap();
        assert_eq!(m, vec![true, false, true, false, true, true, true, true, true, false]);
        assert_eq!(cap_outliers(&s, &e, 0.0).unwrap(), e.to_vec());
        assert!(cap_outliers(&s, &e, 1.0).is_err());
    }

    proptest! {
        #[test]
        fn ccs_keeps_exactly_the_budget(
            s in proptest::collection::vec(0u16..1000, 0..300), frac in 0.0f64..=1.0,
            beta in 0.0f64..0.9, strata in 1usize..60, seed in 0u64..100,
        ) {
            let scores: Vec<f32> = s.iter().map(|&v| v as f32 / 7.0).collect();
            let e: Vec<bool> = (0..scores.len()).map(|i| i % 5 != 2).collect();
            let n = count(&e) as u64;
            let b = floor_fraction(frac, n);
            let p = CcsParams { beta, strata, seed };
            let r = ccs_select(&scores, &e, b, &p).unwrap();
            prop_assert_eq!(count(&r.kept) as u64, b);
            prop_assert!(r.kept.iter().zip(&e).all(|(k, e)| !k || *e));
            prop_assert_eq!(r.strata.iter().map(|t| t.taken).sum::<u64>(), b);
            prop_assert_eq!(r.strata.iter().map(|t| t.size).sum::<u64>() + r.dropped_hard, n);
            // nothing kept is harder than every dropped-hard row's score
            if r.dropped_hard > 0 {
                let mut sorted: Vec<f32> = (0..scores.len()).filter(|&i| e[i]).map(|i| scores[i]).collect();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let cut = sorted[r.dropped_hard as usize - 1];
                prop_assert!((0..scores.len()).all(|i| !r.kept[i] || scores[i] <= cut));
            }
            prop_assert_eq!(ccs_select(&scores, &e, b, &p).unwrap().kept, r.kept);
        }

        #[test]
        fn water_fill_sums_and_is_capped(sizes in proptest::collection::vec(0u64..50, 0..60), frac in 0.0f64..=1.0) {
            let total: u64 = sizes.iter().sum();
            let b = floor_fraction(frac, total);
            let t = water_fill(&sizes, b);
            prop_assert_eq!(t.iter().sum::<u64>(), b);
            prop_assert!(t.iter().zip(&sizes).all(|(a, s)| a <= s));
        }
    }
}
