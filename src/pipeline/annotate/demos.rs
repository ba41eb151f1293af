//! `demos`: for every query, the most similar annotated rows (exact
//! search over the annotated set only), in prompt order, optionally
//! diversified by maximal marginal relevance.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{Float32Array, Int32Array, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    AnnotateMeta, DEFAULT_DEMOS_K, DEFAULT_ID_COLUMN, META_KEY, check_output, read_embeddings, read_ids, write_batch,
};
use crate::cluster::knn::apply_transform;
use crate::distance::{dot, dot_batch};
use crate::io::embeddings::EmbeddingSource;
use crate::io::{Dataset, expand_inputs};
use crate::{Error, Result};

/// Order of demonstrations in a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoOrder {
    /// Least similar first, most similar right before the query (the
    /// reference's order).
    #[default]
    Ascending,
    /// Most similar first.
    Descending,
}

impl FromStr for DemoOrder {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ascending" => Ok(DemoOrder::Ascending),
            "descending" => Ok(DemoOrder::Descending),
            _ => Err(Error::param(
                "--order",
                format!("`{s}`: expected ascending or descending"),
            )),
        }
    }
}

/// A `demos` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemosConfig {
    /// The annotated rows (usually `annotate`'s output with labels added).
    pub annotated: Vec<String>,
    /// The queries.
    pub queries: Vec<String>,
    /// Embedding column of both files (auto-detected when `None`).
    pub embedding_col: Option<String>,
    /// Id column of the annotated rows; defaults to [`DEFAULT_ID_COLUMN`].
    pub id_col: String,
    /// Id column of the queries; defaults to `id_col`.
    pub query_id_col: Option<String>,
    /// Demonstrations per query; defaults to [`DEFAULT_DEMOS_K`].
    pub k: usize,
    /// Order in the output; defaults to [`DemoOrder::Ascending`].
    pub order: DemoOrder,
    /// Keep a demo whose id equals the query's (off: such pairs are skipped).
    pub keep_self: bool,
    /// Maximal marginal relevance: pick demos greedily by
    /// λ·cos(query, d) − (1 − λ)·max cos(d, picked), for diverse demos;
    /// `None` picks the k most similar.
    pub mmr: Option<f32>,
    /// Proceed although the recorded encoders differ.
    pub force: bool,
    /// Output Parquet file.
    pub output: PathBuf,
    /// Replace an existing output.
    pub overwrite: bool,
}

impl Default for DemosConfig {
    fn default() -> Self {
        DemosConfig {
            annotated: Vec::new(),
            queries: Vec::new(),
            embedding_col: None,
            id_col: DEFAULT_ID_COLUMN.into(),
            query_id_col: None,
            k: DEFAULT_DEMOS_K,
            order: DemoOrder::default(),
            keep_self: false,
            mmr: None,
            force: false,
            output: PathBuf::new(),
            overwrite: false,
        }
    }
}

/// What `demos` did.
#[derive(Debug, Clone, Serialize)]
pub struct DemosSummary {
    /// Queries.
    pub queries: usize,
    /// Annotated rows searched.
    pub annotated: usize,
    /// Rows written.
    pub rows: usize,
    /// Pairs skipped because query and demo share an id.
    pub self_skipped: usize,
    /// Whether the pool mean recorded by `annotate` was applied.
    pub centered: bool,
    /// Notes for the user (e.g. no `annotate` record found).
    pub notes: Vec<String>,
}

/// Runs `demos` (see the module docs).
pub fn run_demos(cfg: &DemosConfig) -> Result<DemosSummary> {
    if cfg.k == 0 {
        return Err(Error::param("--k", "0: must be at least 1"));
    }
    if let Some(l) = cfg.mmr
        && !(0.0..=1.0).contains(&l)
    {
        return Err(Error::param("--mmr", format!("{l} is outside [0, 1]")));
    }
    let ann_paths = expand_inputs(&cfg.annotated)?;
    let q_paths = expand_inputs(&cfg.queries)?;
    let mut all_inputs = ann_paths.clone();
    all_inputs.extend(q_paths.iter().cloned());
    check_output(&cfg.output, cfg.overwrite, &all_inputs)?;
    let ann = Dataset::open(&ann_paths)?;
    let qs = Dataset::open(&q_paths)?;
    let m = ann.num_rows() as usize;
    if m == 0 {
        return Err(Error::Empty("the annotated file has no rows".into()));
    }
    if cfg.k > m {
        return Err(Error::param(
            "--k",
            format!("{} is more than the {m} annotated rows; lower --k", cfg.k),
        ));
    }
    let (ann_ids, ann_text) = read_ids(&ann, &cfg.id_col, "--id-col")?;
    let qcol = cfg.query_id_col.as_deref().unwrap_or(&cfg.id_col);
    let (q_ids, q_text) = read_ids(&qs, qcol, "--query-id-col")?;
    let (mut a_rows, a_src, a_enc) = read_embeddings(&ann, cfg.embedding_col.as_deref())?;
    let (mut q_rows, q_src, q_enc) = read_embeddings(&qs, cfg.embedding_col.as_deref())?;
    let dim = a_src.dim();
    if q_src.dim() != dim {
        return Err(Error::Dimension {
            path: qs.shards[0].path.clone(),
            row: None,
            expected: dim,
            found: q_src.dim(),
        });
    }
    let mut notes = Vec::new();
    let meta: Option<AnnotateMeta> = ann.shards[0]
        .schema
        .metadata()
        .get(META_KEY)
        .map(|s| serde_json::from_str(s))
        .transpose()
        .map_err(|e| Error::param("--annotated", format!("unreadable `{META_KEY}` metadata: {e}")))?;
    let recorded_encoder = meta.as_ref().and_then(|m| m.encoder.clone()).or(a_enc);
    if let (Some(a), Some(q)) = (&recorded_encoder, &q_enc)
        && a != q
        && !cfg.force
    {
        return Err(Error::param(
            "--queries",
            format!("queries were embedded with `{q}` but the annotated rows with `{a}`; re-embed, or pass --force"),
        ));
    }
    let mean = match &meta {
        Some(m) => {
            if m.dim != dim {
                return Err(Error::Dimension {
                    path: ann.shards[0].path.clone(),
                    row: None,
                    expected: m.dim,
                    found: dim,
                });
            }
            m.mean.clone()
        }
        None => {
            notes.push(format!(
                "the annotated file has no `{META_KEY}` record: embeddings are only L2-normalised, not centred"
            ));
            None
        }
    };
    // Annotated rows were centred on the pool mean by `annotate`; queries get the same.
    apply_transform(&mut a_rows, dim, mean.as_deref());
    apply_transform(&mut q_rows, dim, mean.as_deref());

    let nq = q_text.len();
    let k = cfg.k;
    let lists: Vec<(Vec<(u32, f32)>, usize)> = (0..nq)
        .into_par_iter()
        .chunks(64)
        .flat_map_iter(|chunk| {
            let x: Vec<f32> = chunk
                .iter()
                .flat_map(|&i| q_rows[i * dim..(i + 1) * dim].iter().copied())
                .collect();
            let mut s = vec![0f32; chunk.len() * m];
            dot_batch(&x, &a_rows, dim, &mut s);
            chunk
                .iter()
                .enumerate()
                .map(|(r, &qi)| {
                    let mut skipped = 0;
                    let mut cand: Vec<(u32, f32)> = Vec::with_capacity(m);
                    for (j, &v) in s[r * m..(r + 1) * m].iter().enumerate() {
                        if !cfg.keep_self && ann_text[j] == q_text[qi] {
                            skipped += 1;
                        } else {
                            cand.push((j as u32, v));
                        }
                    }
                    let by_sim = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
                    if let Some(lambda) = cfg.mmr {
                        cand = mmr_pick(cand, &a_rows, dim, k, lambda);
                    } else if cand.len() > k {
                        cand.select_nth_unstable_by(k - 1, by_sim);
                        cand.truncate(k);
                    }
                    cand.sort_by(by_sim);
                    if cfg.order == DemoOrder::Ascending {
                        cand.reverse();
                    }
                    (cand, skipped)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let total: usize = lists.iter().map(|l| l.0.len()).sum();
    let mut q_idx = Vec::with_capacity(total);
    let mut pos = Vec::with_capacity(total);
    let mut d_idx = Vec::with_capacity(total);
    let mut cos = Vec::with_capacity(total);
    for (qi, (l, _)) in lists.iter().enumerate() {
        for (p, &(j, c)) in l.iter().enumerate() {
            q_idx.push(qi as u32);
            pos.push(p as i32);
            d_idx.push(j);
            cos.push(c);
        }
    }
    let arrow_err = |source| Error::Arrow {
        path: cfg.output.clone(),
        source,
    };
    let qid = take(q_ids.as_ref(), &UInt32Array::from(q_idx), None).map_err(arrow_err)?;
    let did = take(ann_ids.as_ref(), &UInt32Array::from(d_idx), None).map_err(arrow_err)?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("query_id", qid.data_type().clone(), false),
        Field::new("position", DataType::Int32, false),
        Field::new("demo_id", did.data_type().clone(), false),
        Field::new("cosine", DataType::Float32, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            qid,
            Arc::new(Int32Array::from(pos)),
            did,
            Arc::new(Float32Array::from(cos)),
        ],
    )
    .map_err(arrow_err)?;
    write_batch(&batch, &cfg.output)?;
    Ok(DemosSummary {
        queries: nq,
        annotated: m,
        rows: total,
        self_skipped: lists.iter().map(|l| l.1).sum(),
        centered: mean.is_some(),
        notes,
    })
}

/// Candidates considered by MMR per query: the most similar ones (MMR
/// never reaches far down the similarity list for useful λ).
const MMR_POOL: usize = 256;

/// Maximal marginal relevance (Carbonell & Goldstein 1998) over the
/// `MMR_POOL` most similar candidates: greedily the candidate maximising
/// λ·sim(q, d) − (1 − λ)·max_{s picked} cos(d, s); ties to the lower index.
fn mmr_pick(mut cand: Vec<(u32, f32)>, rows: &[f32], dim: usize, k: usize, lambda: f32) -> Vec<(u32, f32)> {
    let by_sim = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let pool = MMR_POOL.max(k);
    if cand.len() > pool {
        cand.select_nth_unstable_by(pool - 1, by_sim);
        cand.truncate(pool);
    }
    cand.sort_by(by_sim);
    let row = |j: u32| &rows[j as usize * dim..(j as usize + 1) * dim];
    let mut redundancy = vec![f32::NEG_INFINITY; cand.len()];
    let mut taken = vec![false; cand.len()];
    let mut out = Vec::with_capacity(k.min(cand.len()));
    while out.len() < k.min(cand.len()) {
        let mut best: Option<(usize, f32)> = None;
        for (i, &(j, s)) in cand.iter().enumerate() {
            if taken[i] {
                continue;
            }
            let r = if out.is_empty() { 0.0 } else { redundancy[i] };
            let v = lambda * s - (1.0 - lambda) * r;
            let better = match best {
                None => true,
                Some((bi, bv)) => v > bv || (v == bv && j < cand[bi].0),
            };
            if better {
                best = Some((i, v));
            }
        }
        let (bi, _) = best.expect("a candidate is left");
        taken[bi] = true;
        out.push(cand[bi]);
        let picked = row(cand[bi].0);
        for (i, &(j, _)) in cand.iter().enumerate() {
            if !taken[i] {
                redundancy[i] = redundancy[i].max(dot(row(j), picked));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmr_trades_similarity_for_diversity() {
        // Rows 0 and 1 are the same direction, row 2 another; the query is closest to 0/1.
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let rows = [1.0, 0.0, 1.0, 0.0, s, s];
        let cand = vec![(0, 0.99), (1, 0.99), (2, 0.7)];
        // λ = 1: plain similarity (0, then 1); λ = 0.5: the duplicate of 0 loses to row 2.
        let p: Vec<u32> = mmr_pick(cand.clone(), &rows, 2, 2, 1.0).iter().map(|c| c.0).collect();
        assert_eq!(p, vec![0, 1]);
        let p: Vec<u32> = mmr_pick(cand, &rows, 2, 2, 0.5).iter().map(|c| c.0).collect();
        assert_eq!(p, vec![0, 2]);
    }
}
