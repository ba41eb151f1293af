//! The HNSW graph (Malkov & Yashunin 2018, as hnswlib 0.8 codes it) and its
//! deterministic parallel build.
//!
//! Per node: a level drawn as ⌊−ln(u)·mL⌋ with mL = 1/ln(M); on every layer
//! up to it, a link list of at most M ids (2·M on layer 0). Insertion is
//! greedy descent on the layers above the node's level, then an ef-search
//! on each of its layers, neighbour selection by the heuristic (the paper's
//! Algorithm 4 = hnswlib's `getNeighborsByHeuristic2`) and reverse links,
//! re-pruned by the same heuristic when a list overflows.
//!
//! Parallel and still deterministic: rows are inserted in batches of
//! consecutive ids whose size depends only on the graph size. Every node of
//! a batch searches the graph as frozen at the batch start (in parallel) and
//! also sees its lower-id batch mates exactly (one Gram matrix per batch),
//! so it picks the links a serial insertion would have seen candidates for.
//! Reverse links are then grouped by target and merged in source-id order,
//! in parallel over targets. Nothing depends on the thread count or timing.
//!
//! Similarity is the dot product of (unit) rows; larger is nearer.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::kernel::Avx512;
use super::kernel::{BLOCK, Dot, Portable, prefetch_row};
use crate::rng::Rng;

/// Highest level a node may get (P(level ≥ 16) = M⁻¹⁶: never in practice).
const MAX_LEVEL: usize = 16;
/// The first batch sizes are 1 (a serial build) until the graph has this
/// many nodes times one; then a batch is 1/`BATCH_DIVISOR` of the graph.
const BATCH_DIVISOR: usize = 32;
/// Largest batch (bounds the per-batch Gram matrix to 4 MiB).
const MAX_BATCH: usize = 1024;
/// Rows per Gram-matrix block (one task).
const GRAM_ROWS: usize = 64;

/// A 64-byte aligned block of 16 floats, so padded rows start on a cache line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Block([f32; BLOCK]);

/// Build settings the graph needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct BuildParams {
    pub m: usize,
    pub ef_construction: usize,
    pub seed: u64,
}

/// Candidate key: similarity in the high 32 bits (as an order-preserving
/// integer), `u32::MAX − id` in the low ones, so one `u64` comparison orders
/// by similarity, then by lower id; keys are unique per id.
#[inline(always)]
fn key(sim: f32, id: u32) -> u64 {
    let b = sim.to_bits();
    let o = if b & 0x8000_0000 != 0 { !b } else { b | 0x8000_0000 };
    ((o as u64) << 32) | (u32::MAX - id) as u64
}

#[inline(always)]
fn key_id(k: u64) -> u32 {
    u32::MAX - k as u32
}

#[inline(always)]
fn key_sim(k: u64) -> f32 {
    let o = (k >> 32) as u32;
    f32::from_bits(if o & 0x8000_0000 != 0 { o & 0x7FFF_FFFF } else { !o })
}

/// Per-thread search state, reused across searches.
pub(super) struct Scratch {
    /// `visited[i] == epoch` marks node i as seen by the current search.
    visited: Vec<u32>,
    epoch: u32,
    cand: BinaryHeap<u64>,
    top: BinaryHeap<Reverse<u64>>,
    /// Unvisited neighbours of the node being expanded.
    fresh: Vec<u32>,
    /// The last search's results, best first.
    res: Vec<u64>,
    merged: Vec<u64>,
    chosen: Vec<u32>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Scratch {
            visited: vec![0; n],
            epoch: 0,
            cand: BinaryHeap::new(),
            top: BinaryHeap::new(),
            fresh: Vec::new(),
            res: Vec::new(),
            merged: Vec::new(),
            chosen: Vec::new(),
        }
    }

    fn next_epoch(&mut self) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.visited.fill(0);
            self.epoch = 1;
        }
        self.epoch
    }
}

/// Scratch states shared by the tasks of a parallel loop (one per task at
/// a time; which one a task gets changes nothing in its result).
pub(super) struct ScratchPool {
    n: usize,
    free: Mutex<Vec<Scratch>>,
}

impl ScratchPool {
    pub(super) fn new(n: usize) -> Self {
        ScratchPool {
            n,
            free: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn with<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        let taken = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut s = taken.unwrap_or_else(|| Scratch::new(self.n));
        let r = f(&mut s);
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(s);
        r
    }
}

/// Defines `$name` (a method running `$with` with the kernel this CPU
/// allows) and `$avx` (`$with` compiled for AVX-512), so the kernel inlines
/// into the whole search instead of being a call per distance.
macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident / $avx:ident => $with:ident ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        $(#[$doc])*
        $vis fn $name(&self, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if let Some(k) = self.avx512 {
                // SAFETY: a kernel value exists only where the CPU has AVX-512F.
                return unsafe { self.$avx(k, $($arg),*) };
            }
            self.$with(Portable, $($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx(&self, k: Avx512, $($arg: $ty),*) -> $ret {
            self.$with(k, $($arg),*)
        }
    };
}

/// The graph over `n` padded rows (internal ids `0..n`).
pub(super) struct Graph {
    /// Padded row length (a multiple of [`BLOCK`]).
    dim: usize,
    data: Vec<Block>,
    levels: Vec<u8>,
    m: usize,
    m0: usize,
    /// Layer-0 lists: `n × (1 + m0)`, a length then the ids.
    links0: Vec<u32>,
    /// Upper-layer lists of node i: `levels[i] × (1 + m)`, layer 1 first.
    upper: Vec<Vec<u32>>,
    /// Entry point and the top layer, `None` while empty.
    entry: Option<(u32, usize)>,
    #[cfg(target_arch = "x86_64")]
    avx512: Option<Avx512>,
}

/// The batches of a build over `n` nodes: consecutive id ranges whose size
/// depends only on how many nodes precede them.
pub(super) fn batches(n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let end = (start + (start / BATCH_DIVISOR).clamp(1, MAX_BATCH)).min(n);
        out.push((start, end));
        start = end;
    }
    out
}

/// Levels for `n` nodes: ⌊−ln(1 − u)·mL⌋, u uniform in [0, 1) from one seeded stream.
pub(super) fn draw_levels(n: usize, m: usize, seed: u64) -> Vec<u8> {
    let ml = 1.0 / (m as f64).ln();
    let mut rng = Rng::for_stream(seed, 0x686E_7377);
    (0..n)
        .map(|_| {
            let u = rng.next_f64();
            ((-(1.0 - u).ln() * ml) as usize).min(MAX_LEVEL) as u8
        })
        .collect()
}

impl Graph {
    /// Builds the graph over the rows `ids` of `rows` (`dim` columns), in
    /// that order.
    pub(super) fn build(rows: &[f32], dim: usize, ids: &[u32], p: BuildParams) -> Graph {
        let pdim = dim.div_ceil(BLOCK) * BLOCK;
        let n = ids.len();
        let mut data = vec![Block::default(); n * pdim / BLOCK];
        {
            // SAFETY: `Block` is `repr(C)` of 16 f32, so the buffer is n × pdim floats.
            let flat = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<f32>(), n * pdim) };
            for (dst, &i) in flat.chunks_exact_mut(pdim).zip(ids) {
                dst[..dim].copy_from_slice(&rows[i as usize * dim..(i as usize + 1) * dim]);
            }
        }
        let levels = draw_levels(n, p.m, p.seed);
        let m0 = 2 * p.m;
        let upper = levels.iter().map(|&l| vec![0u32; l as usize * (1 + p.m)]).collect();
        let mut g = Graph {
            dim: pdim,
            data,
            levels,
            m: p.m,
            m0,
            links0: vec![0; n * (1 + m0)],
            upper,
            entry: None,
            #[cfg(target_arch = "x86_64")]
            avx512: Avx512::detect(),
        };
        if n == 0 {
            return g;
        }
        g.entry = Some((0, g.levels[0] as usize));
        let pool = ScratchPool::new(n);
        for (b0, b1) in batches(n).into_iter().skip(1) {
            g.insert_batch(b0, b1, p.ef_construction, &pool);
        }
        g
    }

    /// Number of nodes.
    pub(super) fn len(&self) -> usize {
        self.levels.len()
    }

    /// Padded row length.
    pub(super) fn padded_dim(&self) -> usize {
        self.dim
    }

    #[inline(always)]
    fn flat(&self) -> &[f32] {
        // SAFETY: `Block` is `repr(C)` of 16 f32.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().cast::<f32>(), self.data.len() * BLOCK) }
    }

    #[inline(always)]
    fn row(&self, i: u32) -> &[f32] {
        let d = self.dim;
        &self.flat()[i as usize * d..(i as usize + 1) * d]
    }

    #[inline(always)]
    fn links(&self, i: u32, layer: usize) -> &[u32] {
        let s = if layer == 0 {
            &self.links0[i as usize * (1 + self.m0)..(i as usize + 1) * (1 + self.m0)]
        } else {
            &self.upper[i as usize][(layer - 1) * (1 + self.m)..layer * (1 + self.m)]
        };
        &s[1..1 + s[0] as usize]
    }

    fn set_links(&mut self, i: u32, layer: usize, ids: &[u32]) {
        let s = if layer == 0 {
            &mut self.links0[i as usize * (1 + self.m0)..(i as usize + 1) * (1 + self.m0)]
        } else {
            &mut self.upper[i as usize][(layer - 1) * (1 + self.m)..layer * (1 + self.m)]
        };
        s[0] = ids.len() as u32;
        s[1..1 + ids.len()].copy_from_slice(ids);
    }

    /// All link lists and the entry point in one vector, for tests comparing builds.
    #[cfg(test)]
    pub(super) fn fingerprint(&self) -> Vec<u32> {
        let mut v = self.links0.clone();
        self.upper.iter().for_each(|u| v.extend(u));
        let (e, top) = self.entry.unwrap_or((u32::MAX, 0));
        v.extend([e, top as u32]);
        v
    }

    /// Inserts nodes `b0..b1` (all of higher id than the graph's nodes).
    fn insert_batch(&mut self, b0: usize, b1: usize, ef: usize, pool: &ScratchPool) {
        let (entry, top) = self.entry.expect("the first node is inserted alone");
        let gram = self.gram(b0, b1);
        let g = &*self;
        // Each node's chosen links per layer (layer 0 first).
        let plans: Vec<Vec<Vec<u32>>> = (b0..b1)
            .into_par_iter()
            .map(|q| {
                let mates = Mates {
                    b0,
                    sims: gram.row(q - b0),
                    levels: &g.levels[b0..q],
                };
                pool.with(|sc| g.plan(q as u32, entry, top, ef, &mates, sc))
            })
            .collect();
        let mut edges: Vec<(u32, u8, u32)> = Vec::new();
        for (off, plan) in plans.iter().enumerate() {
            let q = (b0 + off) as u32;
            for (layer, list) in plan.iter().enumerate() {
                self.set_links(q, layer, list);
                edges.extend(list.iter().map(|&t| (t, layer as u8, q)));
            }
        }
        edges.sort_unstable();
        let groups: Vec<&[(u32, u8, u32)]> = edges.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1).collect();
        let g = &*self;
        let merged: Vec<Vec<u32>> = groups
            .par_iter()
            .map(|grp| {
                let (t, layer) = (grp[0].0, grp[0].1 as usize);
                let sources: Vec<u32> = grp.iter().map(|e| e.2).collect();
                pool.with(|sc| g.merge_incoming(t, layer, &sources, sc))
            })
            .collect();
        for (grp, list) in groups.iter().zip(&merged) {
            self.set_links(grp[0].0, grp[0].1 as usize, list);
        }
        // The entry point moves to the first node of the highest new level.
        let (best, lvl) = (b0..b1)
            .map(|i| (i, self.levels[i] as usize))
            .fold((entry as usize, top), |a, b| if b.1 > a.1 { b } else { a });
        self.entry = Some((best as u32, lvl));
    }

    /// Similarities among batch `b0..b1`: row `r` holds node b0 + r against
    /// nodes `b0..b0 + r` (its lower-id mates), computed by the crate's
    /// matrix-product kernel in fixed blocks.
    fn gram(&self, b0: usize, b1: usize) -> Gram {
        let d = self.dim;
        let flat = self.flat();
        let blocks: Vec<(usize, Vec<f32>)> = (b0..b1)
            .step_by(GRAM_ROWS)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|r0| {
                let r1 = (r0 + GRAM_ROWS).min(b1);
                let w = r1 - b0;
                let mut out = vec![0f32; (r1 - r0) * w];
                crate::distance::dot_batch(&flat[r0 * d..r1 * d], &flat[b0 * d..r1 * d], d, &mut out);
                (w, out)
            })
            .collect();
        Gram { blocks }
    }

    dispatch! {
        /// Greedy descent from the entry `(entry, top)`, then an
        /// `ef`-search per layer: the links node `q` chooses on each of its layers.
        fn plan / plan_avx512 => plan_with(q: u32, entry: u32, top: usize, ef: usize, mates: &Mates, sc: &mut Scratch)
            -> Vec<Vec<u32>>
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn plan_with<K: Dot>(
        &self,
        k: K,
        q: u32,
        entry: u32,
        top: usize,
        ef: usize,
        mates: &Mates,
        sc: &mut Scratch,
    ) -> Vec<Vec<u32>> {
        let lq = self.levels[q as usize] as usize;
        let qv = self.row(q);
        let mut cur = (entry, k.dot(qv, self.row(entry)));
        for layer in (lq + 1..=top).rev() {
            cur = self.greedy(k, qv, cur, layer);
        }
        let mut plan = vec![Vec::new(); lq + 1];
        for layer in (0..=lq).rev() {
            sc.merged.clear();
            if layer <= top {
                self.search_layer(k, qv, cur, ef, layer, sc);
                cur = (key_id(sc.res[0]), key_sim(sc.res[0]));
                sc.merged.extend_from_slice(&sc.res);
            }
            // Mates that would beat the worst kept candidate.
            let floor = if sc.merged.len() >= ef { sc.merged[ef - 1] } else { 0 };
            let before = sc.merged.len();
            for (j, (&s, &l)) in mates.sims.iter().zip(mates.levels).enumerate() {
                if l as usize >= layer {
                    let kk = key(s, (mates.b0 + j) as u32);
                    if kk > floor {
                        sc.merged.push(kk);
                    }
                }
            }
            if sc.merged.len() > before {
                sc.merged.sort_unstable_by(|a, b| b.cmp(a));
                sc.merged.truncate(ef);
            }
            let mut chosen = std::mem::take(&mut sc.chosen);
            self.select(k, &sc.merged, self.m, &mut chosen);
            plan[layer] = chosen.clone();
            sc.chosen = chosen;
        }
        plan
    }

    dispatch! {
        /// The links of `target` on `layer` once `sources` (ascending) link to
        /// it: appended while there is room, else re-pruned by the heuristic
        /// over the old links and the new one, as each arrives.
        fn merge_incoming / merge_avx512 => merge_with(target: u32, layer: usize, sources: &[u32], sc: &mut Scratch)
            -> Vec<u32>
    }

    #[inline(always)]
    fn merge_with<K: Dot>(&self, k: K, target: u32, layer: usize, sources: &[u32], sc: &mut Scratch) -> Vec<u32> {
        let cap = if layer == 0 { self.m0 } else { self.m };
        let tv = self.row(target);
        let mut list: Vec<u32> = self.links(target, layer).to_vec();
        for &s in sources {
            if list.contains(&s) {
                continue;
            }
            if list.len() < cap {
                list.push(s);
                continue;
            }
            sc.merged.clear();
            sc.merged.extend(list.iter().map(|&j| key(k.dot(tv, self.row(j)), j)));
            sc.merged.push(key(k.dot(tv, self.row(s)), s));
            sc.merged.sort_unstable_by(|a, b| b.cmp(a));
            let merged = std::mem::take(&mut sc.merged);
            self.select(k, &merged, cap, &mut list);
            sc.merged = merged;
        }
        list
    }

    /// Neighbour selection by the heuristic (Algorithm 4 without extension
    /// or kept pruned links, as hnswlib's `getNeighborsByHeuristic2`): walk
    /// the candidates nearest first and keep one unless it is nearer to an
    /// already kept one than to the query. `cands` are keys, best first.
    #[inline(always)]
    fn select<K: Dot>(&self, k: K, cands: &[u64], m: usize, out: &mut Vec<u32>) {
        out.clear();
        if cands.len() < m {
            out.extend(cands.iter().map(|&c| key_id(c)));
            return;
        }
        for &c in cands {
            if out.len() >= m {
                break;
            }
            let (s, id) = (key_sim(c), key_id(c));
            let cv = self.row(id);
            if out.iter().all(|&r| k.dot(cv, self.row(r)) <= s) {
                out.push(id);
            }
        }
    }

    /// Greedy walk on `layer` to a local maximum of similarity to `q`.
    #[inline(always)]
    fn greedy<K: Dot>(&self, k: K, q: &[f32], mut cur: (u32, f32), layer: usize) -> (u32, f32) {
        let mut changed = true;
        while changed {
            changed = false;
            for &n in self.links(cur.0, layer) {
                let s = k.dot(q, self.row(n));
                if s > cur.1 {
                    cur = (n, s);
                    changed = true;
                }
            }
        }
        cur
    }

    /// The ef-search on one layer from entry `ep`: the `ef` best nodes found,
    /// left in `sc.res` best first.
    #[inline(always)]
    fn search_layer<K: Dot>(&self, k: K, q: &[f32], ep: (u32, f32), ef: usize, layer: usize, sc: &mut Scratch) {
        let epoch = sc.next_epoch();
        sc.cand.clear();
        sc.top.clear();
        sc.visited[ep.0 as usize] = epoch;
        let k0 = key(ep.1, ep.0);
        sc.cand.push(k0);
        sc.top.push(Reverse(k0));
        let mut lower = k0;
        while let Some(c) = sc.cand.pop() {
            if c < lower && sc.top.len() >= ef {
                break;
            }
            sc.fresh.clear();
            for &n in self.links(key_id(c), layer) {
                let v = &mut sc.visited[n as usize];
                if *v != epoch {
                    *v = epoch;
                    sc.fresh.push(n);
                }
            }
            if let Some(&first) = sc.fresh.first() {
                prefetch_row(self.row(first));
            }
            for (i, &n) in sc.fresh.iter().enumerate() {
                if let Some(&next) = sc.fresh.get(i + 1) {
                    prefetch_row(self.row(next));
                }
                let kk = key(k.dot(q, self.row(n)), n);
                if sc.top.len() < ef || kk > lower {
                    sc.cand.push(kk);
                    sc.top.push(Reverse(kk));
                    if sc.top.len() > ef {
                        sc.top.pop();
                    }
                    lower = sc.top.peek().expect("not empty").0;
                }
            }
        }
        sc.res.clear();
        sc.res.extend(sc.top.drain().map(|r| r.0));
        sc.res.sort_unstable_by(|a, b| b.cmp(a));
    }

    dispatch! {
        /// The `n` nearest nodes to the padded query `q` (greedy descent, then
        /// an ef-search on layer 0), as (id, similarity), best first.
        pub(super) fn query / query_avx512 => query_with(q: &[f32], n: usize, ef: usize, sc: &mut Scratch)
            -> Vec<(u32, f32)>
    }

    #[inline(always)]
    fn query_with<K: Dot>(&self, kern: K, q: &[f32], n: usize, ef: usize, sc: &mut Scratch) -> Vec<(u32, f32)> {
        let Some((entry, top)) = self.entry else {
            return Vec::new();
        };
        let mut cur = (entry, kern.dot(q, self.row(entry)));
        for layer in (1..=top).rev() {
            cur = self.greedy(kern, q, cur, layer);
        }
        self.search_layer(kern, q, cur, ef.max(n), 0, sc);
        sc.res.iter().take(n).map(|&c| (key_id(c), key_sim(c))).collect()
    }
}

/// A batch node's lower-id mates: their similarities and levels.
struct Mates<'a> {
    b0: usize,
    sims: &'a [f32],
    levels: &'a [u8],
}

/// The lower triangle of a batch's Gram matrix, in blocks of [`GRAM_ROWS`]
/// rows: block `b` holds rows `b·G .. b·G + h` against mates `0 .. b·G + h`.
struct Gram {
    blocks: Vec<(usize, Vec<f32>)>,
}

impl Gram {
    /// Row `r` (batch node r) against the `r` mates before it.
    fn row(&self, r: usize) -> &[f32] {
        let (width, block) = &self.blocks[r / GRAM_ROWS];
        let off = (r % GRAM_ROWS) * width;
        &block[off..off + r]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_by_similarity_then_lower_id() {
        let sims = [-1.0f32, -0.5, -0.0, 0.0, 1e-9, 0.3, 1.0];
        for w in sims.windows(2) {
            assert!(key(w[0], 7) <= key(w[1], 7), "{w:?}");
        }
        assert!(key(0.5, 3) > key(0.5, 4));
        for &s in &sims {
            assert_eq!(key_sim(key(s, 9)).to_bits(), s.to_bits());
            assert_eq!(key_id(key(s, 9)), 9);
        }
    }

    #[test]
    fn batches_cover_every_node_once_and_start_serial() {
        for n in [0usize, 1, 5, 100, 5000, 100_000] {
            let b = batches(n);
            let mut next = 0;
            for &(s, e) in &b {
                assert_eq!(s, next);
                assert!(e > s && e - s <= MAX_BATCH);
                next = e;
            }
            assert_eq!(next, n);
            assert!(b.iter().take(BATCH_DIVISOR).all(|&(s, e)| e - s == 1));
        }
    }

    #[test]
    fn levels_are_geometric_with_ratio_one_over_m() {
        let l = draw_levels(200_000, 16, 1);
        let at_least = |k: u8| l.iter().filter(|&&x| x >= k).count() as f64 / l.len() as f64;
        assert!((at_least(1) - 1.0 / 16.0).abs() < 0.003, "{}", at_least(1));
        assert!((at_least(2) - 1.0 / 256.0).abs() < 0.001, "{}", at_least(2));
        assert_eq!(draw_levels(1000, 16, 1), draw_levels(1000, 16, 1));
        assert_ne!(draw_levels(1000, 16, 1), draw_levels(1000, 16, 2));
    }
}
