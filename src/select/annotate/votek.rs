//! Fast vote-k (Su et al. 2022, `two_steps.py::fast_votek` of
//! HKUNLP/icl-selective-annotation): every row votes for its `k` nearest
//! neighbours; a candidate's score is Σ ρ^(−s(u)) over its unselected
//! voters u, where s(u) counts the selected rows u voted for.
//!
//! Scores never increase between picks, so a lazy max-heap with exact
//! re-evaluation gives the reference loop's selections in about
//! O(N·k + M·(evaluations · in-degree)) instead of O(M·N·k). Ties are broken
//! as the reference's `max` over its `votes` list does: higher in-degree
//! first, then the order in which rows first received a vote (voters in
//! increasing id, each voting for its neighbours from least to most
//! similar, as `argsort(...)[-k-1:-1]` lists them). Rows nobody votes for
//! are never candidates (the caller fills with a documented fallback).

use serde::{Deserialize, Serialize};

use crate::cluster::knn::KnnGraph;
use crate::select::annotate::lazy_greedy;
use crate::{Error, Result};

/// Neighbours each row votes for (the reference's k).
pub const DEFAULT_VOTEK_K: usize = 150;
/// Discount base ρ (the reference's `10 ** -selected_times`).
pub const DEFAULT_VOTEK_RHO: f64 = 10.0;

/// Vote-k settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VotekParams {
    /// Votes per row; defaults to [`DEFAULT_VOTEK_K`].
    pub k: usize,
    /// Discount base; defaults to [`DEFAULT_VOTEK_RHO`].
    pub rho: f64,
}

impl Default for VotekParams {
    fn default() -> Self {
        VotekParams {
            k: DEFAULT_VOTEK_K,
            rho: DEFAULT_VOTEK_RHO,
        }
    }
}

impl VotekParams {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 {
            return Err(Error::param("--votek-k", "must be at least 1"));
        }
        if !(self.rho > 1.0 && self.rho.is_finite()) {
            return Err(Error::param(
                "--votek-rho",
                format!("{} must be a finite number > 1", self.rho),
            ));
        }
        Ok(())
    }
}

/// The rows that vote for each row, in the reference's order (CSR: the
/// voters of `v` are `src[ptr[v]..ptr[v + 1]]`, ascending), and every row's
/// position in the reference's `votes` list (`u64::MAX` for rows without
/// votes).
pub(crate) fn votes(graph: &KnnGraph) -> (Vec<usize>, Vec<u32>, Vec<u64>) {
    let (ptr, src, _) = graph.in_edges();
    let n = graph.n();
    let mut first = vec![u64::MAX; n];
    let mut t = 0u64;
    for u in 0..n {
        for &v in graph.neighbors(u).iter().rev() {
            if first[v as usize] == u64::MAX {
                first[v as usize] = t;
                t += 1;
            }
        }
    }
    let mut voted: Vec<usize> = (0..n).filter(|&v| first[v] != u64::MAX).collect();
    voted.sort_by(|&a, &b| {
        (ptr[b + 1] - ptr[b])
            .cmp(&(ptr[a + 1] - ptr[a]))
            .then(first[a].cmp(&first[b]))
    });
    let mut pos = vec![u64::MAX; n];
    for (p, &v) in voted.iter().enumerate() {
        pos[v] = p as u64;
    }
    (ptr, src, pos)
}

/// Fast vote-k on `graph` (row u votes for its neighbours): up to `budget`
/// rows in greedy order with their scores when picked. Returns fewer rows
/// only when fewer rows receive votes.
pub fn fast_votek(graph: &KnnGraph, budget: usize, rho: f64) -> (Vec<u32>, Vec<f64>) {
    let n = graph.n();
    let (ptr, src, pos) = votes(graph);
    let selected = std::cell::RefCell::new(vec![false; n]);
    let times = std::cell::RefCell::new(vec![0i32; n]);
    // Summed in voter order from 0, as the reference's `cur_scores[idx] += ...`.
    let score = |v: u32| -> f64 {
        let (sel, t) = (selected.borrow(), times.borrow());
        let mut s = 0.0f64;
        for &u in &src[ptr[v as usize]..ptr[v as usize + 1]] {
            if !sel[u as usize] {
                s += rho.powi(-t[u as usize]);
            }
        }
        s
    };
    let cands: Vec<(u32, u64, f64)> = (0..n as u32)
        .filter(|&v| pos[v as usize] != u64::MAX)
        .map(|v| (v, pos[v as usize], score(v)))
        .collect();
    lazy_greedy(cands, budget, score, |v| {
        selected.borrow_mut()[v as usize] = true;
        let mut t = times.borrow_mut();
        for &u in &src[ptr[v as usize]..ptr[v as usize + 1]] {
            t[u as usize] += 1;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::knn::exact_knn;
    use crate::select::annotate::tests::unit_rows;

    /// A line-by-line port of the reference loop (`fast_votek`, L118–134),
    /// with integer keys (no cache reload), on the same graph: `votes` is
    /// `vote_stat` sorted by in-degree (stable), `max` takes the first
    /// maximum in that list, selected rows score −100.
    fn reference(graph: &KnnGraph, select_num: usize, rho: f64) -> Vec<u32> {
        let n = graph.n();
        // vote_stat = defaultdict(list), filled in the reference's order
        let mut keys: Vec<usize> = Vec::new();
        let mut vote_stat: Vec<Vec<usize>> = vec![Vec::new(); n];
        for i in 0..n {
            for &idx in graph.neighbors(i).iter().rev() {
                let idx = idx as usize;
                if idx != i {
                    if vote_stat[idx].is_empty() {
                        keys.push(idx);
                    }
                    vote_stat[idx].push(i);
                }
            }
        }
        let mut votes: Vec<(usize, &Vec<usize>)> = keys.iter().map(|&k| (k, &vote_stat[k])).collect();
        votes.sort_by_key(|v| std::cmp::Reverse(v.1.len())); // stable, like Python's sorted
        let mut selected: Vec<usize> = Vec::new();
        let mut selected_times = vec![0i32; n];
        while selected.len() < select_num {
            let mut cur_scores: Vec<(usize, f64)> = Vec::new();
            for &(idx, candidates) in &votes {
                if selected.contains(&idx) {
                    cur_scores.push((idx, -100.0));
                    continue;
                }
                // `cur_scores[idx] += ...` creates the key only when a voter is unselected
                let mut s: Option<f64> = None;
                for &one_support in candidates {
                    if !selected.contains(&one_support) {
                        *s.get_or_insert(0.0) += rho.powi(-selected_times[one_support]);
                    }
                }
                if let Some(s) = s {
                    cur_scores.push((idx, s));
                }
            }
            // Python's max returns the first maximal item
            let mut best = cur_scores[0];
            for &c in &cur_scores[1..] {
                if c.1 > best.1 {
                    best = c;
                }
            }
            if best.1 < 0.0 {
                break; // the reference would repeat a selected row here (bug 3.8-d)
            }
            selected.push(best.0);
            for &u in &vote_stat[best.0] {
                selected_times[u] += 1;
            }
        }
        selected.into_iter().map(|v| v as u32).collect()
    }

    #[test]
    fn lazy_vote_k_equals_the_reference_loop() {
        // 20 fixed random instances, as in the research notes (N, k, M varied).
        for case in 0..20u64 {
            let n = 120 + 37 * case as usize;
            let k = 5 + (case as usize * 7) % 26;
            let m = 10 + (case as usize * 3) % 31;
            let dim = 4 + (case as usize % 5);
            let rows = unit_rows(n, dim, 100 + case);
            let g = exact_knn(&rows, dim, k).unwrap();
            let (fast, scores) = fast_votek(&g, m, 10.0);
            let slow = reference(&g, m, 10.0);
            assert_eq!(slow.len(), m, "case {case}: the reference stops early");
            assert_eq!(fast, slow, "case {case}: n {n} k {k} m {m}");
            assert!(scores.windows(2).all(|w| w[0] >= w[1]), "case {case}");
        }
    }

    #[test]
    fn ties_follow_the_reference_on_a_symmetric_graph() {
        // A ring where everyone has in-degree 2: many exact ties.
        let n = 12;
        let mut idx = Vec::new();
        for i in 0..n as u32 {
            idx.extend([(i + 1) % n as u32, (i + n as u32 - 1) % n as u32]);
        }
        let g = KnnGraph::from_lists(n, 2, idx, vec![0.5; 2 * n]).unwrap();
        let (fast, _) = fast_votek(&g, 12, 10.0);
        let slow = reference(&g, 12, 10.0);
        assert!(slow.len() >= 4, "{slow:?}");
        assert_eq!(&fast[..slow.len()], &slow[..]);
    }

    #[test]
    fn first_pick_is_the_largest_in_degree_and_scores_discount() {
        // 0, 1, 2 all vote for 3; 3 votes for 0; 4 votes for 3.
        let idx = vec![3, 3, 3, 0, 3];
        let g = KnnGraph::from_lists(5, 1, idx, vec![1.0; 5]).unwrap();
        let (o, s) = fast_votek(&g, 2, 10.0);
        assert_eq!(o, vec![3, 0]);
        assert_eq!(s[0], 4.0);
        // 0's only voter (3) is selected: score 0
        assert_eq!(s[1], 0.0);
    }
}
