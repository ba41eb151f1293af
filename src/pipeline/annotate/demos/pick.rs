//! Which annotated rows become one query's demonstrations, given its
//! candidates sorted by similarity.
//!
//! One greedy loop serves every policy (research notes §6.1, §6.3, §10.3
//! rule 18):
//! * plain: the most similar first;
//! * MMR (Carbonell & Goldstein 1998): the candidate maximising
//!   λ·cos(q, d) − (1 − λ)·max_{s picked} cos(d, s), over the
//!   [`MMR_POOL`] most similar candidates (of each label);
//! * label-diverse (autolabel's round-robin): labels take turns, in the
//!   order their best candidate appears in similarity order; each turn
//!   takes that label's best remaining candidate (by similarity, or by MMR
//!   when λ is given); a label with no candidate left drops out;
//! * token budget (the reference's `prompt_retrieval`): a demo over
//!   `max_demo` tokens is skipped; a demo that would take the total over
//!   the limit stops the list (the reference's `break`) or, with `skip`,
//!   is passed over for the next candidate (better packing).
//!
//! Ties go to the lower annotated-row index.

use crate::distance::dot;

/// Candidates considered by MMR (per label): the most similar ones (MMR
/// never reaches far down the similarity list for useful λ).
pub(super) const MMR_POOL: usize = 256;

/// A token budget for one query.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limit<'a> {
    /// Tokens of every annotated row (by candidate index).
    pub(super) tokens: &'a [u32],
    /// Tokens the demos may use in all.
    pub(super) total: usize,
    /// Demos longer than this are skipped.
    pub(super) max_demo: Option<usize>,
    /// Pass over a demo that does not fit instead of stopping.
    pub(super) skip: bool,
}

/// How to pick.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy<'a> {
    /// At most this many demos.
    pub(super) k: usize,
    /// MMR's λ.
    pub(super) mmr: Option<f32>,
    /// Label id of every annotated row (by candidate index).
    pub(super) labels: Option<&'a [u32]>,
    /// Token budget.
    pub(super) limit: Option<Limit<'a>>,
}

/// Picks demos from `cand` (annotated row, cosine), sorted by cosine
/// descending then row ascending; returns them in pick order. `rows` are
/// the annotated rows' unit vectors (for MMR).
pub(super) fn pick(cand: &[(u32, f32)], rows: &[f32], dim: usize, p: &Policy) -> Vec<(u32, f32)> {
    // Groups of candidate positions: one per label in order of first
    // appearance, or one group of all.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    match p.labels {
        Some(labels) => {
            let mut group_of: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
            for (i, &(j, _)) in cand.iter().enumerate() {
                let next = groups.len();
                let g = *group_of.entry(labels[j as usize]).or_insert(next);
                if g == groups.len() {
                    groups.push(Vec::new());
                }
                groups[g].push(i);
            }
        }
        None => groups.push((0..cand.len()).collect()),
    }
    if p.mmr.is_some() {
        groups.iter_mut().for_each(|g| g.truncate(MMR_POOL.max(p.k)));
    }
    let row = |j: u32| &rows[j as usize * dim..(j as usize + 1) * dim];
    let mut taken = vec![false; cand.len()];
    let mut next = vec![0usize; groups.len()];
    let mut redundancy = vec![f32::NEG_INFINITY; if p.mmr.is_some() { cand.len() } else { 0 }];
    let mut live: Vec<usize> = (0..groups.len()).collect();
    let mut turn = 0usize;
    let mut used = 0usize;
    let mut out = Vec::with_capacity(p.k.min(cand.len()));
    while out.len() < p.k && !live.is_empty() {
        let g = live[turn % live.len()];
        let best = match p.mmr {
            None => {
                while next[g] < groups[g].len() && taken[groups[g][next[g]]] {
                    next[g] += 1;
                }
                groups[g].get(next[g]).copied()
            }
            Some(lambda) => {
                let mut best: Option<(usize, f32)> = None;
                for &i in groups[g].iter().filter(|&&i| !taken[i]) {
                    let r = if out.is_empty() { 0.0 } else { redundancy[i] };
                    let v = lambda * cand[i].1 - (1.0 - lambda) * r;
                    if best.is_none_or(|(bi, bv)| v > bv || (v == bv && cand[i].0 < cand[bi].0)) {
                        best = Some((i, v));
                    }
                }
                best.map(|b| b.0)
            }
        };
        let Some(i) = best else {
            // This label has no candidate left: it drops out of the rotation.
            let at = turn % live.len();
            live.remove(at);
            turn = at;
            continue;
        };
        taken[i] = true;
        let (j, _) = cand[i];
        if let Some(l) = &p.limit {
            let t = l.tokens[j as usize] as usize;
            if l.max_demo.is_some_and(|m| t > m) {
                continue;
            }
            if used + t > l.total {
                if l.skip {
                    continue;
                }
                break;
            }
            used += t;
        }
        out.push(cand[i]);
        if p.mmr.is_some() {
            let picked = row(j);
            for (x, &(jx, _)) in cand.iter().enumerate() {
                if !taken[x] {
                    redundancy[x] = redundancy[x].max(dot(row(jx), picked));
                }
            }
        }
        turn += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[(u32, f32)]) -> Vec<u32> {
        v.iter().map(|c| c.0).collect()
    }

    const PLAIN: Policy<'static> = Policy {
        k: 3,
        mmr: None,
        labels: None,
        limit: None,
    };

    #[test]
    fn mmr_trades_similarity_for_diversity() {
        // Rows 0 and 1 are the same direction, row 2 another; the query is closest to 0/1.
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let rows = [1.0, 0.0, 1.0, 0.0, s, s];
        let cand = [(0, 0.99), (1, 0.99), (2, 0.7)];
        let with = |l: f32| Policy {
            k: 2,
            mmr: Some(l),
            ..PLAIN
        };
        // λ = 1: plain similarity (0, then 1); λ = 0.5: the duplicate of 0 loses to row 2.
        assert_eq!(ids(&pick(&cand, &rows, 2, &with(1.0))), vec![0, 1]);
        assert_eq!(ids(&pick(&cand, &rows, 2, &with(0.5))), vec![0, 2]);
    }

    #[test]
    fn labels_take_turns_in_order_of_their_best_candidate() {
        // Labels by row: 0:a 1:a 2:b 3:a 4:c; similarity order 0,1,2,3,4.
        let labels = [0, 0, 1, 0, 2];
        let cand: Vec<(u32, f32)> = (0..5).map(|j| (j, 1.0 - j as f32 * 0.1)).collect();
        let p = Policy {
            k: 5,
            labels: Some(&labels),
            ..PLAIN
        };
        // Rounds: a(0) b(2) c(4), then a(1), then a(3) (b and c are used up).
        assert_eq!(ids(&pick(&cand, &[], 1, &p)), vec![0, 2, 4, 1, 3]);
        let p4 = Policy { k: 4, ..p };
        assert_eq!(ids(&pick(&cand, &[], 1, &p4)), vec![0, 2, 4, 1]);
    }

    #[test]
    fn token_budget_stops_at_the_first_overflow_or_packs() {
        let tokens = [4, 5, 2, 9, 1];
        let cand: Vec<(u32, f32)> = (0..5).map(|j| (j, 1.0 - j as f32 * 0.1)).collect();
        let with = |skip, max_demo| Policy {
            k: 5,
            limit: Some(Limit {
                tokens: &tokens,
                total: 10,
                max_demo,
                skip,
            }),
            ..PLAIN
        };
        // 4 + 5 = 9 fits, + 2 = 11 does not: stop.
        assert_eq!(ids(&pick(&cand, &[], 1, &with(false, None))), vec![0, 1]);
        // packing: 4 + 5, skip 2 and 9, then 1 fits (total 10).
        assert_eq!(ids(&pick(&cand, &[], 1, &with(true, None))), vec![0, 1, 4]);
        // a per-demo cap of 4 skips rows 1 and 3 even without packing: 4 + 2 + 1.
        assert_eq!(ids(&pick(&cand, &[], 1, &with(false, Some(4)))), vec![0, 2, 4]);
        // k still caps the count
        let mut p = with(true, None);
        p.k = 1;
        assert_eq!(ids(&pick(&cand, &[], 1, &p)), vec![0]);
    }
}
