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
//!
//! Scores are "higher = harder"; `prefer = easy` flips the rules that
//! rank by score.

use crate::cluster::Centroids;
use crate::pipeline::filter::{Balance, FilterParams};
use crate::score::Metric;
use crate::score::semdedup::{Assignment, keep_least_redundant};
use crate::select::dbp::{self, DbpPlan};
use crate::select::robust::{ccs_per_cluster, ccs_select, moderate_scores, moderate_select};
use crate::select::{Keep, proportional_quotas, select_per_cluster, select_top};
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
    let per_cluster_quotas = |c: &Centroids| {
        let mut sizes = vec![0u64; c.k()];
        for (&l, &e) in r.labels.iter().zip(r.eligible) {
            if e {
                sizes[l as usize] += 1;
            }
        }
        proportional_quotas(&sizes, budget)
    };
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
            let plan = dbp::plan(&assignment(c)?, c, budget, &p.dbp)?;
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
        Metric::Moderate => {
            let c = need(r.centroids, p.metric)?;
            let a = assignment(c)?;
            out.shown_scores = Some(moderate_scores(&a));
            moderate_select(&a, budget)?
        }
    };
    Ok(out)
}
