//! The final stage: turning the rows left by the removal stages into
//! exactly `budget` kept rows with the chosen metric's rule.
//!
//! | metric | rule |
//! |---|---|
//! | `proto`, `random` | global top (or the same fraction per cluster with `balance`) |
//! | `semdedup` | the rows with the smallest M (least redundant) |
//! | `dbp` | DBP quotas per cluster, filled by score ([`crate::select::dbp`]) |
//! | `ccs` | CCS strata and water-filling ([`crate::select::robust`]) |
//! | `moderate` | rows nearest their cluster's median distance |
//! | `knn` | kNN density within the cluster, hardest after an outlier cap |
//!
//! Scores are "higher = harder"; `prefer = easy` flips the rules that
//! rank by score.

use crate::cluster::Centroids;
use crate::io::npy;
use crate::pipeline::filter::{Balance, FilterParams};
use crate::score::Metric;
use crate::score::semdedup::{Assignment, keep_least_redundant};
use crate::select::dbp::{self, DbpPlan};
use crate::select::robust::{ccs_per_cluster, ccs_select, moderate_scores, moderate_select};
use crate::select::{Keep, floor_fraction, proportional_quotas, select_per_cluster, select_top};
use crate::{Error, Result};

/// What the final stage ranks and groups by.
pub struct Ranking<'a> {
    /// Ranking score per row (higher = harder).
    pub scores: &'a [f32],
    /// Cluster of every row (when clustered).
    pub labels: &'a [u32],
    /// Distance of every row to its centroid (the prototypicality score).
    pub dist: &'a [f32],
    /// Rows that may be kept.
    pub eligible: &'a [bool],
    /// The centroids, when clustered.
    pub centroids: Option<&'a Centroids>,
    /// SemDeDup's M, when computed.
    pub max_sim: Option<&'a [f32]>,
    /// kNN density, when computed.
    pub knn: Option<&'a [f32]>,
}

/// The kept rows and what the report shows about the rule.
pub struct Chosen {
    /// One flag per row.
    pub kept: Vec<bool>,
    /// The DBP allocation.
    pub dbp: Option<DbpPlan>,
    /// The score the rule ranked by, when it is not `Ranking::scores`.
    pub shown_scores: Option<Vec<f32>>,
}

fn need<T>(v: Option<T>, metric: Metric) -> Result<T> {
    v.ok_or_else(|| Error::Internal(format!("metric {metric} needs clusters")))
}

/// Applies the final rule of `p.metric` for exactly `budget` rows
/// (`budget` ≤ eligible rows).
pub fn choose(p: &FilterParams, r: &Ranking, budget: u64) -> Result<Chosen> {
    let quotas_for = |c: &Centroids, eligible: &[bool]| {
        let mut sizes = vec![0u64; c.k()];
        for (&l, &e) in r.labels.iter().zip(eligible) {
            if e {
                sizes[l as usize] += 1;
            }
        }
        proportional_quotas(&sizes, budget)
    };
    let per_cluster_quotas = |c: &Centroids| quotas_for(c, r.eligible);
    let assignment = |c: &'_ Centroids| Assignment::try_new(r.labels, r.dist, r.eligible, c.k());
    let mut out = Chosen {
        kept: Vec::new(),
        dbp: None,
        shown_scores: None,
    };
    out.kept = match p.metric {
        Metric::Proto | Metric::Random => match (p.balance, r.centroids) {
            (Balance::Clusters, Some(c)) => {
                select_per_cluster(r.scores, r.labels, r.eligible, &per_cluster_quotas(c), p.prefer)
            }
            _ => select_top(r.scores, r.eligible, budget, p.prefer),
        },
        Metric::Semdedup => {
            let m = need(r.max_sim, p.metric)?;
            match (p.balance, r.centroids) {
                (Balance::Clusters, Some(c)) => {
                    select_per_cluster(m, r.labels, r.eligible, &per_cluster_quotas(c), Keep::Easy)
                }
                _ => keep_least_redundant(m, r.eligible, budget)?.kept,
            }
        }
        Metric::Dbp => {
            let c = need(r.centroids, p.metric)?;
            let a = assignment(c)?;
            let plan = match &p.cluster_weights {
                Some(path) => {
                    let w: Vec<f64> = npy::read_vector(path)?.into_iter().map(f64::from).collect();
                    if w.len() != c.k() {
                        return Err(Error::param(
                            "--cluster-weights",
                            format!("{}: {} weights for {} clusters", path.display(), w.len(), c.k()),
                        ));
                    }
                    dbp::plan_with_weights(&a.sizes(), &w, budget, &p.dbp)?
                }
                None => dbp::plan(&a, c, budget, &p.dbp)?,
            };
            let kept = select_per_cluster(r.scores, r.labels, r.eligible, &plan.allocation.quotas, p.prefer);
            out.dbp = Some(plan);
            kept
        }
        Metric::Ccs => {
            let ccs = p.ccs.clone().with_seed(p.seed);
            // CCS drops the hardest β first; `prefer = easy` ranks by the negated score.
            let neg: Vec<f32>;
            let s = match p.prefer {
                Keep::Hard => r.scores,
                Keep::Easy => {
                    neg = r.scores.iter().map(|v| -v).collect();
                    &neg
                }
            };
            match (p.balance, r.centroids) {
                (Balance::Clusters, Some(c)) => ccs_per_cluster(s, r.labels, r.eligible, &per_cluster_quotas(c), &ccs)?,
                _ => ccs_select(s, r.eligible, budget, &ccs)?.kept,
            }
        }
        Metric::Knn => {
            let d = need(r.knn, p.metric)?;
            // Keep-hard keeps the most isolated rows; the outlier cap first sets aside the
            // most isolated ones of all (likely noise), as far as the budget allows.
            let eligible: Vec<bool> = match p.prefer {
                Keep::Hard => {
                    let n = r.eligible.iter().filter(|&&e| e).count() as u64;
                    let cap = floor_fraction(p.knn.outlier_cap, n).min(n - budget);
                    let out = select_top(d, r.eligible, cap, Keep::Hard);
                    r.eligible.iter().zip(&out).map(|(&e, &o)| e && !o).collect()
                }
                Keep::Easy => r.eligible.to_vec(),
            };
            out.shown_scores = Some(d.to_vec());
            match (p.balance, r.centroids) {
                (Balance::Clusters, Some(c)) => {
                    select_per_cluster(d, r.labels, &eligible, &quotas_for(c, &eligible), p.prefer)
                }
                _ => select_top(d, &eligible, budget, p.prefer),
            }
        }
        Metric::Moderate => {
            let c = need(r.centroids, p.metric)?;
            let a = assignment(c)?;
            out.shown_scores = Some(moderate_scores(&a));
            moderate_select(&a, budget)?
        }
    };
    Ok(out)
}
