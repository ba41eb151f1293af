//! IDEAL (Zhang et al. 2024, `core_method.py` of skzhang1/IDEAL): choose
//! the rows whose influence, spread over the kNN graph by the independent
//! cascade model, reaches the most of the pool.
//!
//! Edge u→v (v among u's `k` nearest) carries p(u→v) = cos(u,v) / Σ cos
//! over u's neighbours. Cosines ≤ 0 (possible after centering) are dropped
//! from the edge set and from the sum, so probabilities lie in (0, 1] and
//! sum to 1 per row with a positive neighbour (a row whose cosines are all
//! ≤ 0 spreads nowhere).
//!
//! Unlike the reference (fresh Monte-Carlo runs per evaluation, nodes
//! counted once per parent that activates them, first seed = row 0), the
//! spread σ̂(S) is the mean number of rows reached from S over one fixed set
//! of R live-edge realisations (common random numbers). σ̂ is then monotone
//! and submodular, so CELF lazy greedy is exact; each row counts once per
//! realisation; the first seed is the greedy argmax of σ̂({v}).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::knn::KnnGraph;
use crate::rng::Rng;
use crate::select::annotate::lazy_greedy;
use crate::{Error, Result};

/// Neighbours per row of IDEAL's graph (the reference's k).
pub const DEFAULT_IDEAL_K: usize = 10;
/// Live-edge realisations (the reference uses 10 fresh runs per evaluation).
pub const DEFAULT_REALISATIONS: usize = 100;

/// How the first seed is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirstSeed {
    /// The row of largest σ̂({v}) (ties to the lower id).
    #[default]
    Greedy,
    /// Row 0, what the reference's "largest out-degree" amounts to.
    Index0,
}

impl std::str::FromStr for FirstSeed {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "greedy" => Ok(FirstSeed::Greedy),
            "index0" => Ok(FirstSeed::Index0),
            _ => Err(Error::param(
                "--ideal-first",
                format!("`{s}`: expected greedy or index0"),
            )),
        }
    }
}

/// IDEAL settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdealParams {
    /// Neighbours per row; defaults to [`DEFAULT_IDEAL_K`].
    pub k: usize,
    /// Live-edge realisations R; defaults to [`DEFAULT_REALISATIONS`].
    pub realisations: usize,
    /// First seed; defaults to [`FirstSeed::Greedy`].
    pub first: FirstSeed,
}

impl Default for IdealParams {
    fn default() -> Self {
        IdealParams {
            k: DEFAULT_IDEAL_K,
            realisations: DEFAULT_REALISATIONS,
            first: FirstSeed::Greedy,
        }
    }
}

impl IdealParams {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 {
            return Err(Error::param("--ideal-k", "must be at least 1"));
        }
        if self.realisations == 0 {
            return Err(Error::param("--ideal-realisations", "must be at least 1"));
        }
        Ok(())
    }
}

/// R live-edge graphs of an independent-cascade model: in realisation r,
/// edge u→v is live with probability p(u→v), drawn once from stream r of
/// the seed (so results do not depend on the thread count).
#[derive(Debug, Clone)]
pub struct Cascade {
    n: usize,
    /// Per realisation: CSR offsets (n + 1) and live targets.
    live: Vec<(Vec<u32>, Vec<u32>)>,
}

/// What [`ideal`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct IdealOutcome {
    /// Selected rows in greedy order.
    pub order: Vec<u32>,
    /// Marginal spread of each pick (rows, averaged over realisations).
    pub gain: Vec<f64>,
    /// σ̂ of the whole selection.
    pub spread: f64,
    /// Standard error of σ̂ over the realisations.
    pub std_err: f64,
}

/// IDEAL's edge probabilities on `graph` (see the module docs).
pub fn edge_probabilities(graph: &KnnGraph) -> Vec<Vec<(u32, f64)>> {
    (0..graph.n())
        .map(|u| {
            let z: f64 = graph.sims(u).iter().map(|&s| (s as f64).max(0.0)).sum();
            graph
                .neighbors(u)
                .iter()
                .zip(graph.sims(u))
                .filter(|&(_, &s)| s > 0.0 && z > 0.0)
                .map(|(&v, &s)| (v, (s as f64 / z).min(1.0)))
                .collect()
        })
        .collect()
}

/// Scratch space of one traversal: visit stamps and a stack.
struct Walk {
    stamp: Vec<u32>,
    now: u32,
    stack: Vec<u32>,
    seen: Vec<u32>,
}

impl Walk {
    fn new(n: usize) -> Self {
        Walk {
            stamp: vec![0; n],
            now: 0,
            stack: Vec::new(),
            seen: Vec::new(),
        }
    }
}

impl Cascade {
    /// Samples `realisations` live-edge graphs of the model whose edges
    /// are `out[u] = [(v, p(u→v)), ...]`.
    pub fn from_edges(out: &[Vec<(u32, f64)>], realisations: usize, seed: u64) -> Self {
        let n = out.len();
        let live = (0..realisations)
            .into_par_iter()
            .map(|r| {
                let mut rng = Rng::for_stream(seed, r as u64);
                let mut ptr = Vec::with_capacity(n + 1);
                let mut dst = Vec::new();
                ptr.push(0u32);
                for edges in out {
                    for &(v, p) in edges {
                        if rng.next_f64() < p {
                            dst.push(v);
                        }
                    }
                    ptr.push(dst.len() as u32);
                }
                (ptr, dst)
            })
            .collect();
        Cascade { n, live }
    }

    /// Realisations.
    pub fn realisations(&self) -> usize {
        self.live.len()
    }

    /// Rows reached from `v` in realisation `r` that are not `covered`,
    /// each counted once; they are left in `w.seen`.
    fn reach(&self, r: usize, v: u32, covered: &[bool], w: &mut Walk) -> u64 {
        w.seen.clear();
        if covered[v as usize] {
            return 0;
        }
        let (ptr, dst) = &self.live[r];
        w.now = w.now.wrapping_add(1);
        if w.now == 0 {
            w.stamp.iter_mut().for_each(|s| *s = 0);
            w.now = 1;
        }
        w.stack.clear();
        w.stack.push(v);
        w.stamp[v as usize] = w.now;
        while let Some(x) = w.stack.pop() {
            w.seen.push(x);
            for &y in &dst[ptr[x as usize] as usize..ptr[x as usize + 1] as usize] {
                if w.stamp[y as usize] != w.now && !covered[y as usize] {
                    w.stamp[y as usize] = w.now;
                    w.stack.push(y);
                }
            }
        }
        w.seen.len() as u64
    }

    /// [`Self::reach`], then marks the rows reached as covered.
    fn cover(&self, r: usize, v: u32, covered: &mut [bool], w: &mut Walk) -> u64 {
        let c = self.reach(r, v, covered, w);
        for &x in &w.seen {
            covered[x as usize] = true;
        }
        c
    }

    /// Rows reached from `seeds` in each realisation (seeds included,
    /// every row counted once).
    pub fn reached(&self, seeds: &[u32]) -> Vec<u64> {
        let mut w = Walk::new(self.n);
        (0..self.realisations())
            .map(|r| {
                let mut covered = vec![false; self.n];
                seeds.iter().map(|&s| self.cover(r, s, &mut covered, &mut w)).sum()
            })
            .collect()
    }

    /// σ̂(seeds): the mean of [`Self::reached`] over realisations.
    pub fn spread(&self, seeds: &[u32]) -> f64 {
        let c = self.reached(seeds);
        c.iter().sum::<u64>() as f64 / c.len().max(1) as f64
    }
}

/// IDEAL on `graph`: `budget` rows by CELF lazy greedy on σ̂ (see the module
/// docs). `budget` must not exceed the rows of the graph.
pub fn ideal(graph: &KnnGraph, budget: usize, params: &IdealParams, seed: u64) -> Result<IdealOutcome> {
    params.validate()?;
    let n = graph.n();
    if budget > n {
        return Err(Error::param(
            "--budget",
            format!("{budget} is more than the {n} rows of the pool"),
        ));
    }
    let cascade = Cascade::from_edges(&edge_probabilities(graph), params.realisations, seed);
    Ok(ideal_on(&cascade, budget, params.first))
}

/// CELF lazy greedy on the realisations of `cascade`.
pub fn ideal_on(cascade: &Cascade, budget: usize, first: FirstSeed) -> IdealOutcome {
    let n = cascade.n;
    let r_count = cascade.realisations();
    let covered = std::cell::RefCell::new(vec![vec![false; n]; r_count]);
    let walk = std::cell::RefCell::new(Walk::new(n));
    let gain_of = |v: u32, mark: bool| -> u64 {
        let mut cov = covered.borrow_mut();
        let mut w = walk.borrow_mut();
        (0..r_count)
            .map(|r| {
                if mark {
                    cascade.cover(r, v, &mut cov[r], &mut w)
                } else {
                    cascade.reach(r, v, &cov[r], &mut w)
                }
            })
            .sum()
    };
    let mut order = Vec::with_capacity(budget);
    let mut gain = Vec::with_capacity(budget);
    if first == FirstSeed::Index0 && budget > 0 && n > 0 {
        order.push(0);
        gain.push(gain_of(0, true) as f64);
    }
    let cands: Vec<(u32, u64, f64)> = {
        let guard = covered.borrow();
        let cov: &[Vec<bool>] = &guard;
        (0..n as u32)
            .into_par_iter()
            .map_init(
                || Walk::new(n),
                |w, v| {
                    let c: u64 = cov.iter().enumerate().map(|(r, row)| cascade.reach(r, v, row, w)).sum();
                    (v, v as u64, c as f64)
                },
            )
            .filter(|&(v, _, _)| !order.contains(&v))
            .collect()
    };
    let (rest, rest_gain) = lazy_greedy(
        cands,
        budget - order.len(),
        |v| gain_of(v, false) as f64,
        |v| {
            gain_of(v, true);
        },
    );
    order.extend(rest);
    gain.extend(rest_gain);
    gain.iter_mut().for_each(|g| *g /= r_count as f64);
    let reached = cascade.reached(&order);
    let mean = reached.iter().sum::<u64>() as f64 / r_count as f64;
    let var = reached.iter().map(|&c| (c as f64 - mean).powi(2)).sum::<f64>() / (r_count.max(2) - 1) as f64;
    IdealOutcome {
        order,
        gain,
        spread: mean,
        std_err: (var / r_count as f64).sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::knn::exact_knn;
    use crate::select::annotate::tests::unit_rows;

    #[test]
    fn toy_cascade_spread_is_four_not_six() {
        // 0→2, 1→2, 2→3, every p = 1: σ({0, 1}) = |{0, 1, 2, 3}| = 4 (the reference gives 6).
        let out = vec![vec![(2, 1.0)], vec![(2, 1.0)], vec![(3, 1.0)], vec![]];
        let c = Cascade::from_edges(&out, 12, 7);
        assert_eq!(c.spread(&[0, 1]), 4.0);
        assert_eq!(c.spread(&[0]), 3.0);
        assert_eq!(c.spread(&[3]), 1.0);
        let o = ideal_on(&c, 2, FirstSeed::Greedy);
        assert_eq!(o.order, vec![0, 1]);
        assert_eq!(o.gain, vec![3.0, 1.0]);
        assert_eq!((o.spread, o.std_err), (4.0, 0.0));
        let o = ideal_on(&c, 2, FirstSeed::Index0);
        assert_eq!(o.order, vec![0, 1]);
        let o = ideal_on(&c, 4, FirstSeed::Greedy);
        assert_eq!(o.order, vec![0, 1, 2, 3], "zero-gain picks go by lower id");
    }

    #[test]
    fn probabilities_drop_non_positive_cosines_and_sum_to_one() {
        let g = KnnGraph::from_lists(3, 2, vec![1, 2, 0, 2, 0, 1], vec![0.6, -0.2, 0.5, 0.5, -0.1, -0.3]).unwrap();
        let p = edge_probabilities(&g);
        assert_eq!(p[0], vec![(1, 1.0)]);
        assert_eq!(p[1], vec![(0, 0.5), (2, 0.5)]);
        assert!(p[2].is_empty());
    }

    /// Plain greedy on the same realisations: every candidate re-evaluated
    /// from scratch every round, ties to the lower id.
    fn brute_greedy(c: &Cascade, n: usize, budget: usize) -> Vec<u32> {
        let mut s: Vec<u32> = Vec::new();
        for _ in 0..budget {
            let mut best: Option<(u64, u32)> = None;
            for v in 0..n as u32 {
                if s.contains(&v) {
                    continue;
                }
                let mut t = s.clone();
                t.push(v);
                let total: u64 = c.reached(&t).iter().sum();
                if best.is_none_or(|(b, _)| total > b) {
                    best = Some((total, v));
                }
            }
            s.push(best.unwrap().1);
        }
        s
    }

    #[test]
    fn celf_equals_brute_force_greedy_on_the_same_realisations() {
        for case in 0..6u64 {
            let (n, dim) = (60 + 20 * case as usize, 5);
            let rows = unit_rows(n, dim, 40 + case);
            let g = exact_knn(&rows, dim, 6).unwrap();
            let c = Cascade::from_edges(&edge_probabilities(&g), 16, case);
            let budget = 12;
            let fast = ideal_on(&c, budget, FirstSeed::Greedy);
            assert_eq!(fast.order, brute_greedy(&c, n, budget), "case {case}");
            assert!((fast.gain.iter().sum::<f64>() - fast.spread).abs() < 1e-9);
            assert!((c.spread(&fast.order) - fast.spread).abs() < 1e-12);
        }
    }

    #[test]
    fn realisations_do_not_depend_on_threads() {
        let rows = unit_rows(80, 4, 9);
        let g = exact_knn(&rows, 4, 5).unwrap();
        let p = IdealParams::default();
        let a = ideal(&g, 10, &p, 3).unwrap();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let b = pool.install(|| ideal(&g, 10, &p, 3).unwrap());
        assert_eq!(a, b);
        assert!(a.std_err > 0.0 && a.spread >= 10.0);
    }
}
