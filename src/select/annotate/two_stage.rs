//! Two-stage vote-k (Su et al. 2022, `two_steps.py::iterative_selection`;
//! selective_annotation.md §3.4 and §10.3 rules 4–7). Stage 1 picks
//! ⌈M/10⌉ rows by vote-k: the rows annotated first. Stage 2 takes a
//! confidence for every pool row (the reference's LM, prompted with
//! demonstrations from the stage-1 rows), sorts the pool least confident
//! first (stage-1 rows last), cuts it into R = M − |L1| strata of width
//! w = ⌊0.9·N / R⌋ and takes the row of largest vote-k score in each, so
//! picks spread over confidence levels and the most confident 10% of the
//! pool is never visited. Rows still missing are drawn at random (seeded).
//!
//! Deliberate differences from the reference code: the vote-k discount is
//! updated after every stage-2 pick too (the reference's string/int key
//! mismatch skips it, §3.8-b); stage 1 has ⌈M/10⌉ rows, not a fixed 10;
//! w is at least 1. Within a stratum ties go to the less confident row (the
//! first maximum in stratum order, as Python's `max` takes it).
//!
//! [`knn_confidence`] is an LM-free surrogate for the confidence: the
//! top-class share (or the margin between the two largest shares) of a
//! similarity-weighted kNN vote among the labelled stage-1 rows (§8.1,
//! `votek-knnconf`). It is not vote-k's LM confidence and is reported
//! under its own name.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::knn::KnnGraph;
use crate::distance::dot_batch;
use crate::select::annotate::votek::{VoteState, greedy};
use crate::select::annotate::{AnnotateParams, Selection, fill_random};
use crate::{Error, Result};

/// Stage 1 gets ⌈budget / STAGE1_DIVISOR⌉ rows (the paper's M/10).
pub const STAGE1_DIVISOR: usize = 10;
/// Fraction of the pool, least confident first, that the strata cover.
pub const DEFAULT_COVERAGE: f64 = 0.9;
/// Labelled neighbours of the kNN confidence surrogate.
pub const DEFAULT_KNN_CONFIDENCE_K: usize = 8;

/// What the kNN surrogate reports as a row's confidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnnScore {
    /// The largest class share of the weighted vote, in (0, 1].
    #[default]
    Probability,
    /// The largest share minus the second largest, in [0, 1].
    Margin,
}

impl fmt::Display for KnnScore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KnnScore::Probability => "probability",
            KnnScore::Margin => "margin",
        })
    }
}

impl FromStr for KnnScore {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "probability" | "prob" => Ok(KnnScore::Probability),
            "margin" => Ok(KnnScore::Margin),
            _ => Err(Error::param(
                "--knn-confidence-score",
                format!("`{s}`: expected probability or margin"),
            )),
        }
    }
}

/// Two-stage vote-k settings (the graph's k and ρ are [`super::VotekParams`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TwoStageParams {
    /// Stage-1 rows; `None` means ⌈budget / [`STAGE1_DIVISOR`]⌉.
    pub stage1: Option<usize>,
    /// Fraction of the pool the strata cover; defaults to [`DEFAULT_COVERAGE`].
    pub coverage: f64,
    /// Neighbours of the kNN surrogate; defaults to [`DEFAULT_KNN_CONFIDENCE_K`]
    /// (at most the stage-1 rows are used).
    pub knn_k: usize,
    /// The surrogate's confidence; defaults to [`KnnScore::Probability`].
    pub knn_score: KnnScore,
}

impl Default for TwoStageParams {
    fn default() -> Self {
        TwoStageParams {
            stage1: None,
            coverage: DEFAULT_COVERAGE,
            knn_k: DEFAULT_KNN_CONFIDENCE_K,
            knn_score: KnnScore::Probability,
        }
    }
}

impl TwoStageParams {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if self.stage1 == Some(0) {
            return Err(Error::param("--votek-stage1", "0: must be at least 1"));
        }
        if !(self.coverage > 0.0 && self.coverage <= 1.0) {
            return Err(Error::param(
                "coverage",
                format!("{}: must be in (0, 1]", self.coverage),
            ));
        }
        if self.knn_k == 0 {
            return Err(Error::param("--knn-confidence-k", "must be at least 1"));
        }
        Ok(())
    }

    /// Stage-1 rows for a total budget of `budget` rows.
    pub fn stage1_rows(&self, budget: usize) -> Result<usize> {
        let m1 = self.stage1.unwrap_or(budget.div_ceil(STAGE1_DIVISOR));
        if m1 > budget {
            return Err(Error::param(
                "--votek-stage1",
                format!("{m1} is more than the budget of {budget} rows"),
            ));
        }
        Ok(m1)
    }
}

/// What stage 2 is given once the stage-1 rows are known.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage2Input {
    /// A confidence per pool row, higher meaning more confident. Values of
    /// stage-1 rows are ignored (they sort last); every other value must
    /// be finite.
    Confidence(Vec<f64>),
    /// The class of every stage-1 row, in stage-1 order: confidence from
    /// the kNN surrogate ([`knn_confidence`]).
    Labels(Vec<u32>),
}

/// Called with the stage-1 rows (pool row ids, in pick order); returns
/// stage 2's input or an error (e.g. a file that does not fit them).
pub type Stage2Source<'a> = &'a dyn Fn(&[u32]) -> Result<Stage2Input>;

/// Where stage 2's confidences came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfidenceKind {
    /// Given per row (an LM's, from a file).
    Given,
    /// The kNN surrogate over the labelled stage-1 rows.
    KnnSurrogate,
}

/// Facts of a two-stage run, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TwoStageInfo {
    /// 1: only the stage-1 rows were selected; 2: the whole budget.
    pub stage: u8,
    /// The total budget M.
    pub budget: usize,
    /// Stage-1 rows |L1| (the first rows of the order).
    pub stage1_rows: usize,
    /// Stage 2: the stratum width w.
    pub stratum_width: Option<usize>,
    /// Stage 2: where confidences came from.
    pub confidence: Option<ConfidenceKind>,
}

impl TwoStageInfo {
    /// The method's name in outputs: `votek-stage1`, `votek` (given
    /// confidences) or `votek-knnconf` (the surrogate).
    pub fn method_name(&self) -> &'static str {
        match self.confidence {
            None => "votek-stage1",
            Some(ConfidenceKind::Given) => "votek",
            Some(ConfidenceKind::KnnSurrogate) => "votek-knnconf",
        }
    }
}

/// Two-stage vote-k for [`super::select_with`] on `graph` (built over
/// `rows`): stage 1, then stage 2 when `stage2` is given. Fills `sel`'s
/// order, gains, nesting, fallback count and two-stage facts; stage 2's
/// missing rows are left to the caller's random fill.
pub(crate) fn run(
    graph: &KnnGraph,
    rows: &[f32],
    dim: usize,
    params: &AnnotateParams,
    stage2: Option<Stage2Source<'_>>,
    sel: &mut Selection,
) -> Result<()> {
    let n = graph.n();
    let (budget, tp) = (params.budget, &params.two_stage);
    let m1 = tp.stage1_rows(budget)?;
    let mut st = VoteState::new(graph, params.votek.rho);
    let (mut order, mut gain) = greedy(&mut st, m1);
    // rows nobody votes for complete a short stage 1; they count as selected
    let filled = fill_random(&mut order, &mut gain, n, m1, params.seed, 0xfa12);
    filled.iter().for_each(|&v| st.commit(v));
    sel.fallback = filled.len();
    sel.nested = true;
    let mut info = TwoStageInfo {
        stage: 1,
        budget,
        stage1_rows: m1,
        stratum_width: None,
        confidence: None,
    };
    if let Some(source) = stage2 {
        let l1 = order.clone();
        let (conf, kind) = match source(&l1)? {
            Stage2Input::Confidence(c) => {
                if c.len() != n {
                    return Err(Error::Internal(format!("{} confidences for {n} rows", c.len())));
                }
                if let Some(i) = (0..n).find(|&i| !st.is_selected(i as u32) && !c[i].is_finite()) {
                    return Err(Error::param(
                        "--confidence",
                        format!("pool row {i}: confidence {} is not a finite number", c[i]),
                    ));
                }
                (c, ConfidenceKind::Given)
            }
            Stage2Input::Labels(y) => (
                knn_confidence(rows, dim, &l1, &y, tp.knn_k, tp.knn_score)?,
                ConfidenceKind::KnnSurrogate,
            ),
        };
        let (o2, g2, width) = stratified(&mut st, &conf, budget - m1, tp.coverage);
        order.extend(o2);
        gain.extend(g2);
        info.stage = 2;
        info.stratum_width = Some(width);
        info.confidence = Some(kind);
        sel.nested = false;
    }
    sel.order = order;
    sel.gain = gain;
    sel.two_stage = Some(info);
    Ok(())
}

/// Stage 2 on `st` (stage-1 rows committed): one pick per stratum of the
/// pool sorted least confident first by `conf` (higher = more confident;
/// selected rows sort last), at most `remaining` picks. Returns the picks,
/// their vote-k scores and the stratum width.
pub fn stratified(st: &mut VoteState, conf: &[f64], remaining: usize, coverage: f64) -> (Vec<u32>, Vec<f64>, usize) {
    let n = conf.len();
    let (mut order, mut gains) = (Vec::with_capacity(remaining), Vec::with_capacity(remaining));
    if remaining == 0 || n == 0 {
        return (order, gains, 0);
    }
    let key = |v: usize| {
        if st.is_selected(v as u32) {
            f64::INFINITY
        } else {
            conf[v]
        }
    };
    let mut sorted: Vec<usize> = (0..n).collect();
    sorted.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));
    let width = ((coverage * n as f64 / remaining as f64).floor() as usize).max(1);
    for t in 0..remaining {
        let lo = t * width;
        if lo >= n {
            break;
        }
        let mut best: Option<(u32, f64)> = None;
        for &v in &sorted[lo..(lo + width).min(n)] {
            let v = v as u32;
            if st.is_selected(v) {
                continue;
            }
            let s = st.score(v);
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((v, s));
            }
        }
        if let Some((v, s)) = best {
            st.commit(v);
            order.push(v);
            gains.push(s);
        }
    }
    (order, gains, width)
}

/// The kNN surrogate's confidence of every row of `rows` (`n × dim`, unit
/// vectors): among the `k` stage-1 rows `l1` most similar to it (ties to
/// the earlier stage-1 row), each votes for its class in `labels` with
/// weight max(cos, 0) (all weights 1 when they are all 0); the confidence
/// is the largest class share or the margin between the two largest.
pub fn knn_confidence(
    rows: &[f32],
    dim: usize,
    l1: &[u32],
    labels: &[u32],
    k: usize,
    score: KnnScore,
) -> Result<Vec<f64>> {
    if l1.is_empty() || l1.len() != labels.len() {
        return Err(Error::Internal(format!(
            "knn confidence: {} stage-1 rows, {} labels",
            l1.len(),
            labels.len()
        )));
    }
    let m = l1.len();
    let k = k.min(m);
    let anchors: Vec<f32> = l1
        .iter()
        .flat_map(|&i| rows[i as usize * dim..(i as usize + 1) * dim].iter().copied())
        .collect();
    const BLOCK: usize = 1024;
    let out = rows
        .par_chunks(BLOCK * dim)
        .flat_map_iter(|block| {
            let b = block.len() / dim;
            let mut sims = vec![0f32; b * m];
            dot_batch(block, &anchors, dim, &mut sims);
            let mut near: Vec<(f32, usize)> = Vec::with_capacity(m);
            let mut share: Vec<(u32, f64)> = Vec::with_capacity(k);
            (0..b)
                .map(|r| {
                    near.clear();
                    near.extend(sims[r * m..(r + 1) * m].iter().copied().zip(0..m));
                    near.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                    let top = &near[..k];
                    let all_zero = top.iter().all(|&(s, _)| s <= 0.0);
                    share.clear();
                    for &(s, j) in top {
                        let w = if all_zero { 1.0 } else { (s as f64).max(0.0) };
                        match share.iter_mut().find(|(c, _)| *c == labels[j]) {
                            Some(e) => e.1 += w,
                            None => share.push((labels[j], w)),
                        }
                    }
                    let total: f64 = share.iter().map(|e| e.1).sum();
                    share.sort_by(|a, b| b.1.total_cmp(&a.1));
                    let p1 = share[0].1 / total;
                    match score {
                        KnnScore::Probability => p1,
                        KnnScore::Margin => p1 - share.get(1).map_or(0.0, |e| e.1 / total),
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::knn::prepare;

    /// Row u votes for the rows listed in `lists[u]` (k each).
    fn graph(lists: &[&[u32]]) -> KnnGraph {
        let k = lists[0].len();
        let idx = lists.iter().flat_map(|l| l.iter().copied()).collect();
        KnnGraph::from_lists(lists.len(), k, idx, vec![0.5; lists.len() * k]).unwrap()
    }

    #[test]
    fn stage1_size_is_a_tenth_rounded_up() {
        let p = TwoStageParams::default();
        assert_eq!(p.stage1_rows(100).unwrap(), 10);
        assert_eq!(p.stage1_rows(18).unwrap(), 2);
        assert_eq!(p.stage1_rows(1).unwrap(), 1);
        let p = TwoStageParams {
            stage1: Some(30),
            ..TwoStageParams::default()
        };
        assert!(
            p.stage1_rows(20)
                .unwrap_err()
                .to_string()
                .contains("30 is more than the budget of 20")
        );
        assert!(TwoStageParams { stage1: Some(0), ..p }.validate().is_err());
    }

    #[test]
    fn one_pick_per_stratum_least_confident_first_and_discounts_update() {
        // 8 rows in a ring, each voting for both neighbours: every score is 2
        // until picks discount it.
        let lists: Vec<[u32; 2]> = (0..8u32).map(|i| [(i + 1) % 8, (i + 7) % 8]).collect();
        let refs: Vec<&[u32]> = lists.iter().map(|l| &l[..]).collect();
        let g = graph(&refs);
        let mut st = VoteState::new(&g, 10.0);
        st.commit(0); // stage 1
        // confidence order (least first): 3, 1, 2, 6, 4, 5, 7 (0 is stage 1, last)
        let conf = [0.0, 0.2, 0.3, 0.1, 0.5, 0.6, 0.4, 0.9];
        let (o, s, w) = stratified(&mut st, &conf, 3, 0.9);
        // w = floor(0.9 * 8 / 3) = 2: strata {3, 1}, {2, 6}, {4, 5}
        assert_eq!(w, 2);
        // stratum 1: 3's voters 2 and 4 have voted for no selected row -> 2;
        // 1's voters are 0 (selected) and 2 -> 1: pick 3.
        assert_eq!(o[0], 3);
        assert_eq!(s[0], 2.0);
        // stratum 2: voters of 2 are 1 and 3 (3 selected; 1 voted for 0, s = 1) -> 0.1;
        // voters of 6 are 5 and 7 (7 voted for 0, s = 1) -> 1.1: pick 6.
        assert_eq!(o[1], 6);
        assert!((s[1] - 1.1).abs() < 1e-12);
        // stratum 3: 4's voters 3 (selected) and 5 (voted for 6, s = 1 after
        // the update) -> 0.1; 5's voters 4 (voted for 3, s = 1) and 6
        // (selected) -> 0.1. A tie: the less confident row, 4, wins. Without
        // the update after the pick of 6, 4 would score 1.0 and 5 0.1.
        assert_eq!(o[2], 4);
        assert!((s[2] - 0.1).abs() < 1e-12);
    }

    #[test]
    fn the_most_confident_tenth_is_never_visited() {
        let n = 40;
        let lists: Vec<[u32; 1]> = (0..n as u32).map(|i| [(i + 1) % n as u32]).collect();
        let refs: Vec<&[u32]> = lists.iter().map(|l| &l[..]).collect();
        let g = graph(&refs);
        let mut st = VoteState::new(&g, 10.0);
        // confidence = row id: rows 36..40 are the most confident 10%
        let conf: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let (o, _, w) = stratified(&mut st, &conf, 36, 0.9);
        assert_eq!(w, 1);
        assert_eq!(o, (0..36).collect::<Vec<u32>>());
        let mut st = VoteState::new(&g, 10.0);
        let (o, _, w) = stratified(&mut st, &conf, 4, 0.9);
        assert_eq!(w, 9);
        assert!(o.iter().all(|&v| v < 36), "{o:?}");
        // strata [0, 9), [9, 18), ...: one pick in each
        let strata: Vec<u32> = o.iter().map(|&v| v / 9).collect();
        assert_eq!(strata, vec![0, 1, 2, 3]);
    }

    #[test]
    fn knn_confidence_is_the_weighted_class_share() {
        let dim = 2;
        // anchors: two of class 0 near e0, one of class 1 near e1
        let mut rows = vec![1.0, 0.0, 0.9, 0.1, 0.0, 1.0, 0.8, 0.2, 0.1, 0.9];
        prepare(&mut rows, dim, false).unwrap();
        let l1 = [0, 1, 2];
        let labels = [0, 0, 1];
        let c = knn_confidence(&rows, dim, &l1, &labels, 3, KnnScore::Probability).unwrap();
        let cos = |a: usize, b: usize| (rows[a * 2] * rows[b * 2] + rows[a * 2 + 1] * rows[b * 2 + 1]) as f64;
        let (w0, w1, w2) = (cos(3, 0), cos(3, 1), cos(3, 2));
        assert!((c[3] - (w0 + w1) / (w0 + w1 + w2)).abs() < 1e-6, "{c:?}");
        // row 4 is near e1: class 1 leads
        let (v0, v1, v2) = (cos(4, 0), cos(4, 1), cos(4, 2));
        assert!((c[4] - v2 / (v0 + v1 + v2)).abs() < 1e-6);
        let m = knn_confidence(&rows, dim, &l1, &labels, 3, KnnScore::Margin).unwrap();
        assert!((m[3] - (w0 + w1 - w2) / (w0 + w1 + w2)).abs() < 1e-6);
        // k = 1: the nearest anchor alone, confidence 1
        let one = knn_confidence(&rows, dim, &l1, &labels, 1, KnnScore::Probability).unwrap();
        assert!(one.iter().all(|&x| x == 1.0));
    }
}
