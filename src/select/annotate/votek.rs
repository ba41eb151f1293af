//! Fast vote-k (Su et al. 2022, `two_steps.py::fast_votek` of
//! HKUNLP/icl-selective-annotation): every row votes for its `k` nearest
//! neighbours; a candidate's score is Σ ρ^(−s(u)) over its unselected
//! voters u, where s(u) counts the selected rows u voted for.
//!
//! Greedy steps are lazy ([`greedy`]): a pick only updates its voters'
//! discounts (O(in-degree)), and a candidate is rescored, exactly as the
//! reference sums it (over its voters in increasing id, from 0), only when
//! it reaches the top of a heap of stale scores, which bound the current
//! ones from above. Ties are broken as the reference's `max` over its
//! `votes` list does: higher in-degree first, then the order in which rows
//! first received a vote (voters in increasing id, each voting for its
//! neighbours from least to most similar, as `argsort(...)[-k-1:-1]` lists
//! them). Rows nobody votes
//! for are never candidates (the caller fills with a documented fallback).

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

/// Vote-k's state on a kNN graph: the voters of every row (in the
/// reference's order), which rows are selected and every voter's current
/// term ρ^(−s(u)) (0 once it is selected).
pub struct VoteState {
    /// Voters of `v`: `src[ptr[v]..ptr[v + 1]]`, ascending.
    ptr: Vec<usize>,
    src: Vec<u32>,
    /// Position in the reference's `votes` list (`u32::MAX`: no votes).
    pos: Vec<u32>,
    /// `pow[t]` = ρ^(−t), as Python's `rho ** -t` computes it.
    pow: Vec<f64>,
    selected: Vec<bool>,
    /// s(u): selected rows among u's neighbours.
    times: Vec<u32>,
    /// u's term in the score of every row it votes for: `pow[s(u)]`, or 0
    /// once u is selected (adding 0.0 to a sum of non-negative terms leaves
    /// it bit-identical, so a score is one gather-sum in voter order).
    weight: Vec<f64>,
    /// Rows committed so far.
    picks: usize,
}

impl VoteState {
    /// The state before any pick, with discount base `rho`.
    pub fn new(graph: &KnnGraph, rho: f64) -> Self {
        let (ptr, src, first) = voter_lists(graph);
        let n = graph.n();
        let indeg = |v: usize| ptr[v + 1] - ptr[v];
        let mut voted: Vec<u32> = (0..n as u32).filter(|&v| first[v as usize] != u64::MAX).collect();
        // first-vote positions are distinct, so the order is total (serial:
        // a few thousand comparisons' worth, below what a parallel sort gains)
        voted.sort_unstable_by_key(|&v| (std::cmp::Reverse(indeg(v as usize)), first[v as usize]));
        let mut pos = vec![u32::MAX; n];
        for (p, &v) in voted.iter().enumerate() {
            pos[v as usize] = p as u32;
        }
        // s(u) never exceeds k; one spare entry
        let pow: Vec<f64> = (0..graph.k() as i32 + 2).map(|t| rho.powf(-t as f64)).collect();
        VoteState {
            ptr,
            src,
            pos,
            weight: vec![pow[0]; n],
            pow,
            selected: vec![false; n],
            times: vec![0; n],
            picks: 0,
        }
    }

    fn voters(&self, v: u32) -> &[u32] {
        &self.src[self.ptr[v as usize]..self.ptr[v as usize + 1]]
    }

    /// Whether `v` receives votes (is ever a vote-k candidate).
    pub fn voted(&self, v: u32) -> bool {
        self.pos[v as usize] != u32::MAX
    }

    /// Whether `v` is selected.
    pub fn is_selected(&self, v: u32) -> bool {
        self.selected[v as usize]
    }

    /// `v`'s score exactly as the reference sums it: over its unselected
    /// voters in increasing id, from 0 (0 for rows without votes).
    pub fn score(&self, v: u32) -> f64 {
        let mut s = 0.0f64;
        for &u in self.voters(v) {
            s += self.weight[u as usize];
        }
        s
    }

    /// Selects `v`: it stops voting, and each of its voters has voted for
    /// one more selected row (its other votes are discounted by ρ). Scores
    /// are not kept: [`greedy`] rescores lazily.
    pub fn commit(&mut self, v: u32) {
        if std::mem::replace(&mut self.selected[v as usize], true) {
            return;
        }
        self.picks += 1;
        self.weight[v as usize] = 0.0;
        for i in self.ptr[v as usize]..self.ptr[v as usize + 1] {
            let u = self.src[i] as usize;
            self.times[u] += 1;
            if !self.selected[u] {
                self.weight[u] = self.pow[self.times[u] as usize];
            }
        }
    }
}

/// The voters of every row in increasing id (CSR of the in-edges:
/// `src[ptr[v]..ptr[v + 1]]`) and, per row, the position in the
/// reference's scan (voters in increasing id, each listing its neighbours
/// from least to most similar) of its first vote (`u64::MAX`: none).
///
/// A counting sort over fixed ranges of voters, in parallel: each range
/// counts its votes per target; a prefix sum over (target, range) gives
/// every range its own first slot in each target's list; then each range
/// writes its voters, in increasing id, straight into those slots. Lists
/// come out ascending, a row's first vote is the one that fills its list's
/// first slot, and no intermediate buckets are written (the edge array is
/// touched once). The slots are a function of the graph alone, so the
/// result does not depend on the threads.
fn voter_lists(graph: &KnnGraph) -> (Vec<usize>, Vec<u32>, Vec<u64>) {
    use rayon::prelude::*;
    let (n, k) = (graph.n(), graph.k());
    let parts = rayon::current_num_threads().clamp(1, 16).min(n.max(1));
    let cut = |p: usize| p * n / parts;
    // per range: votes per target, then turned into that range's next slot
    let mut next: Vec<Vec<usize>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let mut c = vec![0usize; n];
            for u in cut(p)..cut(p + 1) {
                graph.neighbors(u).iter().for_each(|&v| c[v as usize] += 1);
            }
            c
        })
        .collect();
    let mut ptr = vec![0usize; n + 1];
    for v in 0..n {
        let mut at = ptr[v];
        for c in next.iter_mut() {
            let votes = c[v];
            c[v] = at;
            at += votes;
        }
        ptr[v + 1] = at;
    }
    let mut src = vec![0u32; ptr[n]];
    let mut first = vec![u64::MAX; n];
    let (src_at, first_at) = (Slots(src.as_mut_ptr()), Slots(first.as_mut_ptr()));
    next.par_iter_mut().enumerate().for_each(|(p, slot)| {
        for u in cut(p)..cut(p + 1) {
            for (j, &v) in graph.neighbors(u).iter().rev().enumerate() {
                let (v, s) = (v as usize, &mut slot[v as usize]);
                // SAFETY: *s lies in ptr[v]..ptr[v + 1] and in this range's own
                // sub-slice of it (the prefix sum above), so no two writes, from
                // any thread, share a slot of `src`; first[v] is written only
                // by the write of slot ptr[v], which happens once.
                unsafe {
                    if *s == ptr[v] {
                        first_at.write(v, (u * k + j) as u64);
                    }
                    src_at.write(*s, u as u32);
                }
                *s += 1;
            }
        }
    });
    (ptr, src, first)
}

/// A buffer that threads write at disjoint positions (see [`voter_lists`]).
#[derive(Clone, Copy)]
struct Slots<T>(*mut T);

// SAFETY: only used for writes at positions no other thread writes.
unsafe impl<T: Send> Send for Slots<T> {}
unsafe impl<T: Send> Sync for Slots<T> {}

impl<T> Slots<T> {
    /// # Safety
    /// `i` is in bounds and no other thread accesses position `i`.
    unsafe fn write(self, i: usize, x: T) {
        unsafe { self.0.add(i).write(x) }
    }
}

/// Fast vote-k on `graph` (row u votes for its neighbours): up to `budget`
/// rows in greedy order with their scores when picked. Returns fewer rows
/// only when fewer rows receive votes.
pub fn fast_votek(graph: &KnnGraph, budget: usize, rho: f64) -> (Vec<u32>, Vec<f64>) {
    greedy(&mut VoteState::new(graph, rho), budget)
}

/// `budget` greedy vote-k picks from `st` (fewer when candidates run out),
/// with their scores; `st` is left with them committed.
///
/// Lazy greedy on the exact scores: a score is a left-to-right float sum
/// of non-negative terms that only shrink or become 0 as rows are picked,
/// and rounding is monotone, so a score computed earlier bounds every later
/// one from above. The heap's top, once rescored in the current round and
/// still on top, is therefore the reference's pick: the largest exact
/// score, ties to the earlier position in its `votes` list (the heap's
/// secondary key).
pub fn greedy(st: &mut VoteState, budget: usize) -> (Vec<u32>, Vec<f64>) {
    let n = st.selected.len();
    // before any pick a score is the in-degree, exactly
    let fresh = st.picks == 0;
    let cands: Vec<(u32, u64, f64)> = (0..n as u32)
        .filter(|&v| st.voted(v) && !st.is_selected(v))
        .map(|v| {
            let s = if fresh { st.voters(v).len() as f64 } else { st.score(v) };
            (v, st.pos[v as usize] as u64, s)
        })
        .collect();
    let st = std::cell::RefCell::new(st);
    lazy_greedy(cands, budget, |v| st.borrow().score(v), |v| st.borrow_mut().commit(v))
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
                        *s.get_or_insert(0.0) += rho.powf(-selected_times[one_support] as f64);
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
    fn incremental_vote_k_equals_the_reference_loop() {
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
    fn incremental_scores_match_the_reference_on_tie_heavy_graphs_and_other_rho() {
        // random neighbour lists (in-degrees tie often) and duplicate-free
        // targets; ρ other than 10 exercises non-decimal discounts
        for case in 0..24u64 {
            let mut r = crate::rng::Rng::new(900 + case);
            let n = 60 + (case as usize * 17) % 200;
            let k = 2 + (case as usize) % 6;
            let mut idx = Vec::with_capacity(n * k);
            for u in 0..n as u32 {
                let mut l: Vec<u32> = Vec::new();
                while l.len() < k {
                    // a small target range concentrates votes, so hubs and ties appear
                    let v = r.below((n as u64).min(20 + case * 5)) as u32;
                    if v != u && !l.contains(&v) {
                        l.push(v);
                    }
                }
                idx.extend(l);
            }
            let g = KnnGraph::from_lists(n, k, idx, vec![0.5; n * k]).unwrap();
            let rho = [10.0, 2.0, 1.5, 3.7][case as usize % 4];
            let m = 5 + (case as usize * 5) % 40;
            let (fast, _) = fast_votek(&g, m, rho);
            let slow = reference(&g, m, rho);
            assert_eq!(
                &fast[..slow.len()],
                &slow[..],
                "case {case}: n {n} k {k} m {m} rho {rho}"
            );
        }
    }

    #[test]
    fn voter_lists_do_not_depend_on_threads() {
        let rows = unit_rows(300, 6, 4);
        let g = exact_knn(&rows, 6, 12).unwrap();
        let many = voter_lists(&g);
        for t in [1, 3, 7] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            assert_eq!(pool.install(|| voter_lists(&g)), many, "{t} threads");
        }
        let (ptr, src, _) = many;
        let (p2, s2, _) = g.in_edges();
        assert_eq!((ptr, src), (p2, s2));
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
