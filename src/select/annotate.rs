//! Selective annotation: which `budget` rows of an unlabelled pool to send
//! to annotators, so that retrieved demonstrations cover the pool well.
//!
//! Every method takes unit vectors (centre and normalise them first with
//! [`crate::cluster::knn::prepare`]) and returns exactly `budget` distinct
//! row ids, in the order chosen, deterministically for a given seed:
//!
//! * [`Method::FastVotek`]: fast vote-k (Su et al. 2022), incremental but
//!   with the reference loop's selections ([`votek`]).
//! * [`Method::Votek`]: two-stage vote-k: ⌈M/10⌉ rows by vote-k, then, given
//!   per-row confidences (an LM's, or the labelled kNN surrogate), one row
//!   per confidence stratum ([`two_stage`]; [`select_with`]).
//! * [`Method::Ideal`]: IDEAL (Zhang et al. 2024), influence under the
//!   independent cascade over a fixed set of live-edge realisations, CELF
//!   lazy greedy ([`ideal`]).
//! * [`Method::Facility`]: facility location (MFL), lazy greedy ([`facility`]).
//! * [`Method::KCenter`]: k-center greedy (max-min cosine distance).
//! * [`Method::KMeans`]: the row closest to each k-means centroid (not nested).
//! * [`Method::Random`]: a seeded random order.
//!
//! Greedy methods return a nested order: the first `b` rows are what the
//! method would select with budget `b` (not k-means, not vote-k stage 2).

pub mod facility;
pub mod ideal;
pub mod two_stage;
pub mod votek;

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cluster::knn::{KnnBackend, KnnParams, build_knn};
use crate::cluster::{Distance, KMeans, KMeansParams};
use crate::distance::{dot, dot_batch};
use crate::rng::Rng;
use crate::{Error, Result};

pub use facility::{FacilityParams, best_similarity, facility_location, facility_value};
pub use ideal::{Cascade, FirstSeed, IdealParams, ideal};
pub use two_stage::{Stage2Input, Stage2Source, TwoStageInfo, TwoStageParams};
pub use votek::{VotekParams, fast_votek};

/// Selection methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Fast vote-k: greedy on discounted kNN votes.
    #[default]
    FastVotek,
    /// Two-stage vote-k: stage 1 by vote-k, stage 2 stratified by confidence.
    Votek,
    /// IDEAL: greedy influence maximisation on the kNN graph.
    Ideal,
    /// Facility location (MFL).
    Facility,
    /// k-center greedy.
    KCenter,
    /// The row closest to each of `budget` k-means centroids.
    KMeans,
    /// Uniformly random rows.
    Random,
}

impl Method {
    /// Whether every prefix of the order is the selection for its size.
    pub fn nested(self) -> bool {
        !matches!(self, Method::KMeans | Method::Votek)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::FastVotek => "fast-votek",
            Method::Votek => "votek",
            Method::Ideal => "ideal",
            Method::Facility => "facility",
            Method::KCenter => "kcenter",
            Method::KMeans => "kmeans",
            Method::Random => "random",
        })
    }
}

impl FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fast-votek" | "fast_votek" => Ok(Method::FastVotek),
            "ideal" => Ok(Method::Ideal),
            "facility" | "mfl" => Ok(Method::Facility),
            "kcenter" | "k-center" => Ok(Method::KCenter),
            "kmeans" | "k-means" => Ok(Method::KMeans),
            "random" => Ok(Method::Random),
            "votek" | "votek-two-stage" | "two-stage-votek" => Ok(Method::Votek),
            _ => Err(Error::param(
                "--method",
                format!("`{s}`: expected fast-votek, votek, ideal, facility, kcenter, kmeans or random"),
            )),
        }
    }
}

/// Everything a selection needs besides the rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnotateParams {
    /// The method; defaults to [`Method::FastVotek`].
    pub method: Method,
    /// Rows to select (at least 1, at most the pool).
    pub budget: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// How kNN graphs are built (vote-k, IDEAL, sparse facility location).
    pub knn: KnnParams,
    /// Vote-k settings.
    pub votek: VotekParams,
    /// Two-stage vote-k settings.
    pub two_stage: TwoStageParams,
    /// IDEAL settings.
    pub ideal: IdealParams,
    /// Facility-location settings.
    pub facility: FacilityParams,
    /// Lloyd iterations of [`Method::KMeans`]; defaults to k-means' own default.
    pub kmeans_max_iters: usize,
}

impl Default for AnnotateParams {
    fn default() -> Self {
        AnnotateParams {
            method: Method::default(),
            budget: DEFAULT_BUDGET,
            seed: 0,
            knn: KnnParams::default(),
            votek: VotekParams::default(),
            two_stage: TwoStageParams::default(),
            ideal: IdealParams::default(),
            facility: FacilityParams::default(),
            kmeans_max_iters: crate::cluster::kmeans::DEFAULT_MAX_ITERS,
        }
    }
}

/// Budget when none is given (the reference repositories' default).
pub const DEFAULT_BUDGET: usize = 100;

impl AnnotateParams {
    /// Sets the method.
    pub fn with_method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }

    /// Sets the budget.
    pub fn with_budget(mut self, b: usize) -> Self {
        self.budget = b;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, s: u64) -> Self {
        self.seed = s;
        self
    }

    /// Checks what does not depend on the pool.
    pub fn validate(&self) -> Result<()> {
        if self.budget == 0 {
            return Err(Error::param("--budget", "0: must be at least 1"));
        }
        if self.kmeans_max_iters == 0 {
            return Err(Error::param("--kmeans-max-iters", "must be at least 1"));
        }
        self.knn.validate()?;
        self.votek.validate()?;
        self.two_stage.validate()?;
        self.two_stage.stage1_rows(self.budget)?;
        self.ideal.validate()?;
        self.facility.validate()
    }

    /// Checks the parameters against a pool of `n` rows.
    pub fn validate_for(&self, n: usize) -> Result<()> {
        self.validate()?;
        if self.budget > n {
            return Err(Error::param(
                "--budget",
                format!("{} is more than the {n} rows of the pool", self.budget),
            ));
        }
        let (flag, k) = match self.method {
            Method::FastVotek | Method::Votek => ("--votek-k", self.votek.k),
            Method::Ideal => ("--ideal-k", self.ideal.k),
            _ => return Ok(()),
        };
        if n <= k {
            return Err(Error::param(
                flag,
                format!(
                    "the pool has {n} rows, fewer than k + 1 = {} that a kNN graph with k = {k} needs; lower {flag}",
                    k + 1
                ),
            ));
        }
        Ok(())
    }
}

/// The outcome of a selection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selection {
    /// The method.
    pub method: Method,
    /// Selected row ids, in the order chosen; exactly `budget`, distinct.
    pub order: Vec<u32>,
    /// Per selected row, what it added when chosen: the vote-k score, the
    /// IDEAL marginal spread, the facility-location gain, the k-center
    /// distance (+∞ for the first pick), the cosine to its k-means centroid,
    /// 0 for random and for fallback picks.
    pub gain: Vec<f64>,
    /// Whether the order is nested (prefixes are smaller selections).
    pub nested: bool,
    /// Rows added at random (seeded) after the method ran out of candidates
    /// (vote-k: rows nobody votes for).
    pub fallback: usize,
    /// kNN backend of the graph, for graph-based methods.
    pub knn_backend: Option<KnnBackend>,
    /// Recall@k of an approximate graph against exact search on a sample.
    pub knn_recall: Option<f64>,
    /// IDEAL: σ̂ of the whole selection and its standard error over realisations.
    pub spread: Option<(f64, f64)>,
    /// Seconds spent building the kNN graph (included in the caller's total).
    pub knn_seconds: f64,
    /// Two-stage vote-k: which stage ran, and how.
    pub two_stage: Option<TwoStageInfo>,
}

impl Selection {
    /// The method's name in outputs (two-stage vote-k names its stage and
    /// confidence source: `votek-stage1`, `votek`, `votek-knnconf`).
    pub fn name(&self) -> String {
        match &self.two_stage {
            Some(t) => t.method_name().to_string(),
            None => self.method.to_string(),
        }
    }
}

/// Selects `params.budget` rows of `rows` (`n × dim`, unit vectors); for
/// [`Method::Votek`] only stage 1 (see [`select_with`]).
pub fn select(rows: &[f32], dim: usize, params: &AnnotateParams) -> Result<Selection> {
    select_with(rows, dim, params, None)
}

/// [`select`], and for [`Method::Votek`] with `stage2` given, both stages:
/// `stage2` is called with the stage-1 rows and returns their labels or
/// every row's confidence. Without it, two-stage vote-k returns the
/// ⌈M/10⌉ stage-1 rows only (nested), to be annotated first.
pub fn select_with(
    rows: &[f32],
    dim: usize,
    params: &AnnotateParams,
    stage2: Option<Stage2Source<'_>>,
) -> Result<Selection> {
    if dim == 0 || !rows.len().is_multiple_of(dim) {
        return Err(Error::Shape {
            op: "annotate",
            expected: format!("n x {dim}"),
            got: format!("{} values", rows.len()),
        });
    }
    let n = rows.len() / dim;
    params.validate_for(n)?;
    let budget = params.budget;
    let knn = KnnParams {
        seed: params.seed,
        ..params.knn.clone()
    };
    let mut sel = Selection {
        method: params.method,
        order: Vec::new(),
        gain: Vec::new(),
        nested: params.method.nested(),
        fallback: 0,
        knn_backend: None,
        knn_recall: None,
        spread: None,
        knn_seconds: 0.0,
        two_stage: None,
    };
    let timed_knn = |k: usize, sel: &mut Selection| -> Result<crate::cluster::knn::KnnBuild> {
        let t = std::time::Instant::now();
        let b = build_knn(rows, dim, k, &knn)?;
        (sel.knn_backend, sel.knn_recall, sel.knn_seconds) = (Some(b.backend), b.recall, t.elapsed().as_secs_f64());
        Ok(b)
    };
    match params.method {
        Method::FastVotek => {
            let b = timed_knn(params.votek.k, &mut sel)?;
            (sel.order, sel.gain) = fast_votek(&b.graph, budget, params.votek.rho);
        }
        Method::Votek => {
            let b = timed_knn(params.votek.k, &mut sel)?;
            two_stage::run(&b.graph, rows, dim, params, stage2, &mut sel)?;
        }
        Method::Ideal => {
            let b = timed_knn(params.ideal.k, &mut sel)?;
            let out = ideal(&b.graph, budget, &params.ideal, params.seed)?;
            (sel.order, sel.gain, sel.spread) = (out.order, out.gain, Some((out.spread, out.std_err)));
        }
        Method::Facility => {
            let f = &params.facility;
            if n > f.sparse_above {
                let b = timed_knn(f.sparse_k.min(n - 1), &mut sel)?;
                (sel.order, sel.gain) = facility::facility_sparse(&b.graph, budget, f.floor);
            } else {
                (sel.order, sel.gain) = facility_location(rows, dim, budget, f.floor);
            }
        }
        Method::KCenter => (sel.order, sel.gain) = k_center(rows, dim, budget, params.seed),
        Method::KMeans => (sel.order, sel.gain) = kmeans_closest(rows, dim, budget, params)?,
        Method::Random => {
            sel.order = random_order(n, budget, &mut Rng::for_stream(params.seed, 0x5e1ec7));
            sel.gain = vec![0.0; budget];
        }
    }
    let target = sel
        .two_stage
        .as_ref()
        .map_or(budget, |t| if t.stage == 1 { t.stage1_rows } else { t.budget });
    sel.fallback += fill_random(&mut sel.order, &mut sel.gain, n, target, params.seed, 0xfa11).len();
    check_selection(&sel.order, n, target)?;
    Ok(sel)
}

/// Appends seeded random rows not yet in `order` (gain 0) until it has
/// `target` rows; returns them.
fn fill_random(order: &mut Vec<u32>, gain: &mut Vec<f64>, n: usize, target: usize, seed: u64, stream: u64) -> Vec<u32> {
    if order.len() >= target {
        return Vec::new();
    }
    let mut taken = vec![false; n];
    order.iter().for_each(|&i| taken[i as usize] = true);
    let rest: Vec<u32> = (0..n as u32).filter(|&i| !taken[i as usize]).collect();
    let mut rng = Rng::for_stream(seed, stream);
    let added: Vec<u32> = random_order(rest.len(), target - order.len(), &mut rng)
        .into_iter()
        .map(|p| rest[p as usize])
        .collect();
    order.extend(&added);
    gain.extend(std::iter::repeat_n(0.0, added.len()));
    added
}

/// Errors (as a bug) unless `order` is `budget` distinct ids below `n`.
fn check_selection(order: &[u32], n: usize, budget: usize) -> Result<()> {
    let mut seen = vec![false; n];
    for &i in order {
        if i as usize >= n || std::mem::replace(&mut seen[i as usize], true) {
            return Err(Error::Internal(format!("selection repeats or overflows at row {i}")));
        }
    }
    if order.len() != budget {
        return Err(Error::Internal(format!(
            "selected {} rows, budget {budget}",
            order.len()
        )));
    }
    Ok(())
}

/// The first `m` entries of a seeded random permutation of `0..n`.
fn random_order(n: usize, m: usize, rng: &mut Rng) -> Vec<u32> {
    let mut all: Vec<u32> = (0..n as u32).collect();
    for i in 0..m.min(n) {
        let j = i + rng.below((n - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(m.min(n));
    all
}

/// One entry of the lazy-greedy heap: largest gain first, then smallest
/// `prio`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    gain: f64,
    prio: u64,
    v: u32,
    round: usize,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        self.gain
            .total_cmp(&o.gain)
            .then(o.prio.cmp(&self.prio))
            .then(o.v.cmp(&self.v))
    }
}

/// Lazy greedy (CELF, Leskovec et al. 2007) over candidates `(v, prio,
/// initial gain)`: picks the largest current gain, ties to the smallest
/// `prio`, until `budget` picks or no candidate is left. Exact (the same
/// picks as re-evaluating everything every round) when `eval` never
/// increases between rounds and is computed the same way each time.
/// `commit(v)` adds `v` to the solution.
pub(crate) fn lazy_greedy(
    cands: Vec<(u32, u64, f64)>,
    budget: usize,
    mut eval: impl FnMut(u32) -> f64,
    mut commit: impl FnMut(u32),
) -> (Vec<u32>, Vec<f64>) {
    let mut heap: BinaryHeap<Entry> = cands
        .into_iter()
        .map(|(v, prio, gain)| Entry {
            gain,
            prio,
            v,
            round: 0,
        })
        .collect();
    let (mut order, mut gains) = (Vec::with_capacity(budget), Vec::with_capacity(budget));
    while order.len() < budget {
        let Some(mut top) = heap.pop() else { break };
        if top.round == order.len() {
            order.push(top.v);
            gains.push(top.gain);
            commit(top.v);
        } else {
            top.gain = eval(top.v);
            top.round = order.len();
            heap.push(top);
        }
    }
    (order, gains)
}

/// k-center greedy (Gonzalez 1985; the core-set rule of Sener & Savarese
/// 2018): a seeded random first row, then each time the row farthest (in
/// cosine distance 1 − cos) from every selected row, ties to the lower id.
/// Gains are those distances (+∞ for the first row).
pub fn k_center(rows: &[f32], dim: usize, budget: usize, seed: u64) -> (Vec<u32>, Vec<f64>) {
    use rayon::prelude::*;
    let n = rows.len() / dim;
    let mut order = Vec::with_capacity(budget);
    let mut gains = Vec::with_capacity(budget);
    if n == 0 || budget == 0 {
        return (order, gains);
    }
    let mut far = vec![f32::INFINITY; n];
    let mut taken = vec![false; n];
    let mut next = Rng::for_stream(seed, 0xc3e7).below(n as u64) as usize;
    let mut gain = f64::INFINITY;
    for _ in 0..budget.min(n) {
        order.push(next as u32);
        gains.push(gain);
        taken[next] = true;
        let c = &rows[next * dim..(next + 1) * dim];
        far.par_chunks_mut(4096).enumerate().for_each(|(b, f)| {
            for (t, d) in f.iter_mut().enumerate() {
                let j = b * 4096 + t;
                *d = d.min(1.0 - dot(c, &rows[j * dim..(j + 1) * dim]));
            }
        });
        let best = (0..n)
            .filter(|&j| !taken[j])
            .max_by(|&a, &b| far[a].total_cmp(&far[b]).then(b.cmp(&a)));
        match best {
            Some(j) => (next, gain) = (j, far[j] as f64),
            None => break,
        }
    }
    (order, gains)
}

/// k-means (spherical, `budget` clusters, seeded) then, cluster by cluster
/// from the largest (ties to the lower cluster id), the unselected row most
/// similar to the centroid. Gains are those cosines. Not nested.
pub fn kmeans_closest(
    rows: &[f32],
    dim: usize,
    budget: usize,
    params: &AnnotateParams,
) -> Result<(Vec<u32>, Vec<f64>)> {
    let n = rows.len() / dim;
    let kp = KMeansParams {
        max_iters: params.kmeans_max_iters,
        ..KMeansParams::default()
            .with_k(budget)
            .with_distance(Distance::Cosine)
            .with_seed(params.seed)
    };
    let km = KMeans::fit(rows, dim, &kp, &mut |_| {})?;
    let c = &km.centroids;
    let (mut labels, mut dots) = (vec![0u32; n], vec![0f32; n]);
    c.nearest(rows, &mut labels, &mut dots);
    let mut sizes = vec![0usize; c.k()];
    labels.iter().for_each(|&l| sizes[l as usize] += 1);
    let mut clusters: Vec<usize> = (0..c.k()).collect();
    clusters.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(a.cmp(&b)));
    let mut taken = vec![false; n];
    let (mut order, mut gains) = (Vec::with_capacity(budget), Vec::with_capacity(budget));
    let mut sims = vec![0f32; n];
    for j in clusters {
        dot_batch(c.row(j), rows, dim, &mut sims);
        let best = (0..n)
            .filter(|&i| !taken[i])
            .max_by(|&a, &b| sims[a].total_cmp(&sims[b]).then(b.cmp(&a)));
        if let Some(i) = best {
            taken[i] = true;
            order.push(i as u32);
            gains.push(sims[i] as f64);
        }
    }
    Ok((order, gains))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster::knn::prepare;
    use proptest::prelude::*;

    pub(crate) fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        let mut v: Vec<f32> = (0..n * dim).map(|_| r.normal() as f32).collect();
        prepare(&mut v, dim, true).unwrap();
        v
    }

    fn small(method: Method, budget: usize, seed: u64) -> AnnotateParams {
        let mut p = AnnotateParams::default()
            .with_method(method)
            .with_budget(budget)
            .with_seed(seed);
        p.votek.k = 8;
        p.ideal.k = 5;
        p.ideal.realisations = 20;
        p.facility.sparse_k = 10;
        p
    }

    const ALL: [Method; 6] = [
        Method::FastVotek,
        Method::Ideal,
        Method::Facility,
        Method::KCenter,
        Method::KMeans,
        Method::Random,
    ];

    #[test]
    fn bad_budgets_and_small_pools_are_errors() {
        let rows = unit_rows(20, 4, 1);
        let e = select(&rows, 4, &small(Method::Random, 21, 0)).unwrap_err().to_string();
        assert!(e.contains("21 is more than the 20 rows"), "{e}");
        assert!(select(&rows, 4, &small(Method::Random, 0, 0)).is_err());
        let mut p = small(Method::FastVotek, 5, 0);
        p.votek.k = 20;
        let e = select(&rows, 4, &p).unwrap_err().to_string();
        assert!(e.contains("--votek-k") && e.contains("20 rows"), "{e}");
        assert!(
            "vote-k"
                .parse::<Method>()
                .unwrap_err()
                .to_string()
                .contains("fast-votek, votek,")
        );
        assert_eq!("votek-two-stage".parse::<Method>().unwrap(), Method::Votek);
        assert_eq!("mfl".parse::<Method>().unwrap(), Method::Facility);
    }

    #[test]
    fn k_center_picks_the_far_row_second() {
        // a tight bundle around e0 and one row along e1
        let mut rows = Vec::new();
        for i in 0..10 {
            rows.extend([1.0, 0.01 * i as f32]);
        }
        rows.extend([0.0, 1.0]);
        prepare(&mut rows, 2, false).unwrap();
        let (o, g) = k_center(&rows, 2, 3, 3);
        assert_ne!(o[0], 10);
        assert_eq!(o[1], 10);
        assert!(g[0].is_infinite() && g[1] > g[2]);
    }

    #[test]
    fn kmeans_closest_takes_one_row_per_blob() {
        let dim = 3;
        let mut rows = Vec::new();
        let mut r = crate::rng::Rng::new(2);
        for c in 0..3 {
            for _ in 0..20 {
                let mut v = [
                    0.05 * r.normal() as f32,
                    0.05 * r.normal() as f32,
                    0.05 * r.normal() as f32,
                ];
                v[c] += 1.0;
                rows.extend(v);
            }
        }
        prepare(&mut rows, dim, false).unwrap();
        let s = select(&rows, dim, &small(Method::KMeans, 3, 1)).unwrap();
        let mut blobs: Vec<u32> = s.order.iter().map(|&i| i / 20).collect();
        blobs.sort();
        assert_eq!(blobs, vec![0, 1, 2]);
        assert!(!s.nested);
    }

    #[test]
    fn vote_k_falls_back_when_few_rows_receive_votes() {
        // 3 identical rows and 3 others far away: with k = 1 the rows vote
        // inside their group, so some rows get no vote.
        let rows = vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0];
        let mut p = small(Method::FastVotek, 6, 4);
        p.votek.k = 1;
        let s = select(&rows, 2, &p).unwrap();
        assert_eq!(s.order.len(), 6);
        assert_eq!(s.fallback, 2, "rows 2 and 5 receive no vote");
        assert_eq!(&s.gain[4..], &[0.0, 0.0]);
    }

    #[test]
    fn large_pools_use_sparse_facility_location() {
        let rows = unit_rows(80, 5, 8);
        let mut p = small(Method::Facility, 12, 0);
        p.facility.sparse_above = 50;
        p.facility.floor = 0.0;
        let sparse = select(&rows, 5, &p).unwrap();
        assert_eq!(sparse.knn_backend, Some(KnnBackend::Exact));
        p.facility.sparse_above = 100;
        let dense = select(&rows, 5, &p).unwrap();
        assert_eq!(dense.knn_backend, None);
        // with 10 of 79 neighbours the sparse objective differs, but stays close
        let f = |o: &[u32]| facility_value(&rows, 5, o, 0.0);
        assert!(
            f(&sparse.order) >= 0.9 * f(&dense.order),
            "{} vs {}",
            f(&sparse.order),
            f(&dense.order)
        );
    }

    #[test]
    fn two_stage_votek_runs_stage1_alone_or_both_stages() {
        let (n, dim) = (90, 5);
        let rows = unit_rows(n, dim, 12);
        let p = small(Method::Votek, 25, 2);
        let s1 = select(&rows, dim, &p).unwrap();
        assert_eq!(s1.order.len(), 3, "ceil(25 / 10)");
        assert!(s1.nested && s1.name() == "votek-stage1");
        let fast = select(&rows, dim, &small(Method::FastVotek, 3, 2)).unwrap();
        assert_eq!(s1.order, fast.order);
        let conf: Vec<f64> = (0..n).map(|i| ((i * 37) % 89) as f64).collect();
        let seen = std::cell::RefCell::new(Vec::new());
        let given = |l1: &[u32]| {
            seen.borrow_mut().extend_from_slice(l1);
            Ok(Stage2Input::Confidence(conf.clone()))
        };
        let s2 = select_with(&rows, dim, &p, Some(&given)).unwrap();
        assert_eq!(*seen.borrow(), s1.order, "the source sees the stage-1 rows");
        assert_eq!(s2.order.len(), 25);
        assert_eq!(&s2.order[..3], &s1.order[..]);
        assert!(!s2.nested && s2.name() == "votek");
        let t = s2.two_stage.as_ref().unwrap();
        assert_eq!((t.stage, t.stage1_rows, t.stratum_width), (2, 3, Some(3))); // floor(81 / 22)
        let labels = |l1: &[u32]| Ok(Stage2Input::Labels(l1.iter().map(|&v| v % 2).collect()));
        let k = select_with(&rows, dim, &p, Some(&labels)).unwrap();
        assert_eq!(k.order.len(), 25);
        assert_eq!(k.name(), "votek-knnconf");
        let mut u = k.order.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), 25);
        // a source's error stops the run; non-finite confidences are refused
        let fail = |_: &[u32]| Err(Error::param("--stage1", "mismatch"));
        assert!(select_with(&rows, dim, &p, Some(&fail)).is_err());
        let mut nan = conf.clone();
        let victim = (0..n).find(|i| !s1.order.contains(&(*i as u32))).unwrap();
        nan[victim] = f64::NAN;
        let bad = |_: &[u32]| Ok(Stage2Input::Confidence(nan.clone()));
        let e = select_with(&rows, dim, &p, Some(&bad)).unwrap_err().to_string();
        assert!(e.contains(&format!("pool row {victim}")), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn two_stage_votek_gives_budget_distinct_rows(
            n in 20usize..80, frac in 0.05f64..1.0, seed in 0u64..1000, labelled in proptest::bool::ANY,
        ) {
            let dim = 4;
            let rows = unit_rows(n, dim, seed);
            let budget = ((frac * n as f64) as usize).max(1);
            let p = small(Method::Votek, budget, seed);
            let conf: Vec<f64> = (0..n).map(|i| mix(i as u64 ^ seed) as f64).collect();
            let given = |_: &[u32]| Ok(Stage2Input::Confidence(conf.clone()));
            let labels = |l1: &[u32]| Ok(Stage2Input::Labels(l1.iter().map(|&v| v % 3).collect()));
            let src: Stage2Source<'_> = if labelled { &labels } else { &given };
            let s = select_with(&rows, dim, &p, Some(src)).unwrap();
            prop_assert_eq!(s.order.len(), budget);
            let mut u = s.order.clone();
            u.sort();
            u.dedup();
            prop_assert_eq!(u.len(), budget);
            let s1 = select(&rows, dim, &p).unwrap();
            prop_assert_eq!(&s.order[..s1.order.len()], &s1.order[..]);
        }
    }

    fn mix(x: u64) -> u32 {
        (crate::rng::mix64(x) >> 40) as u32
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn every_method_gives_budget_distinct_rows_and_nested_prefixes(
            n in 12usize..60, dim in 2usize..6, frac in 0.05f64..1.0, seed in 0u64..1000, m in 0usize..6,
        ) {
            let rows = unit_rows(n, dim, seed);
            let method = ALL[m];
            let budget = ((frac * n as f64) as usize).max(1);
            let s = select(&rows, dim, &small(method, budget, seed)).unwrap();
            prop_assert_eq!(s.order.len(), budget);
            prop_assert_eq!(s.gain.len(), budget);
            let mut u = s.order.clone();
            u.sort();
            u.dedup();
            prop_assert_eq!(u.len(), budget);
            // deterministic under the seed
            let again = select(&rows, dim, &small(method, budget, seed)).unwrap();
            prop_assert_eq!(&again.order, &s.order);
            if s.nested {
                let half = (budget / 2).max(1);
                let p = select(&rows, dim, &small(method, half, seed)).unwrap();
                prop_assert_eq!(&p.order[..], &s.order[..half]);
            }
        }
    }
}
