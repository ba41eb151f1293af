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
//!   lazy greedy ([`ideal()`](ideal::ideal)).
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
pub(crate) mod tests;
