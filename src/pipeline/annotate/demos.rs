//! `demos`: for every query, demonstrations from the annotated rows only
//! (exact search), in prompt order: the `k` most similar, or as many of
//! them as fit a token budget ([`TokenBudget`]), optionally diversified by
//! maximal marginal relevance or label-diverse (labels take turns), never
//! the query itself (same id, or the same value of a chosen column);
//! optionally one rendered prompt per query (`template`). The policies are
//! in [`pick`], the template syntax in [`template`].
//!
//! Embeddings come from a column of both files, or from a text/image
//! column of both embedded by one encoder (`encoder`: the annotated rows
//! of `annotate --model` carry no embedding column). The encoder recorded
//! by `annotate` must be the queries' unless `force`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int32Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::source::{Embedded, Embedding, EncoderRecord, embed_rows};
use super::{
    AnnotateMeta, DEFAULT_DEMOS_K, DEFAULT_ID_COLUMN, META_KEY, check_output, column_text, lacks_column, read_ids,
    write_batch,
};
use crate::cluster::knn::apply_transform;
use crate::distance::dot_batch;
use crate::embed::EncoderSpec;
use crate::io::{AtomicFile, Dataset, columns, expand_inputs};
use crate::score::semdedup::hash_bytes;
use crate::{Error, Result};

mod budget;
mod pick;
mod template;

use budget::Counter;
pub use budget::TokenBudget;
use pick::{Limit, Policy};
use template::{Template, Values, unescape};

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
    /// Demonstrations per query (at most, with a token budget); defaults
    /// to [`DEFAULT_DEMOS_K`].
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
    /// Embed both files on the fly with this encoder (its `column` in the
    /// annotated rows), instead of reading `embedding_col`.
    pub encoder: Option<EncoderSpec>,
    /// The queries' column to embed; defaults to the encoder's column.
    pub query_text_col: Option<String>,
    /// Take the most similar demos while their tokens fit (at most `k`).
    pub token_budget: Option<TokenBudget>,
    /// Label column of the annotated rows: labels take turns, each turn
    /// taking that label's best remaining demo; the prompt keeps this order.
    pub label_col: Option<String>,
    /// Also skip demos whose value in this column (of both files, compared
    /// by a 128-bit hash) equals the query's: the query under another id.
    pub exclude_same: Option<String>,
    /// Prompt template (syntax in the `template` module docs): one
    /// rendered prompt per query.
    pub template: Option<String>,
    /// Where the prompts go; defaults to the output with extension
    /// `.prompts.parquet`. A `.jsonl` name writes JSON lines.
    pub prompts: Option<PathBuf>,
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
            encoder: None,
            query_text_col: None,
            token_budget: None,
            label_col: None,
            exclude_same: None,
            template: None,
            prompts: None,
        }
    }
}

impl DemosConfig {
    /// The prompts file, when a template is given.
    pub fn prompts_path(&self) -> Option<PathBuf> {
        self.template.as_ref().map(|_| {
            self.prompts
                .clone()
                .unwrap_or_else(|| self.output.with_extension("prompts.parquet"))
        })
    }

    fn validate(&self) -> Result<()> {
        if self.k == 0 {
            return Err(Error::param("--k", "0: must be at least 1"));
        }
        if let Some(l) = self.mmr
            && !(0.0..=1.0).contains(&l)
        {
            return Err(Error::param("--mmr", format!("{l} is outside [0, 1]")));
        }
        if let Some(b) = &self.token_budget {
            b.validate()?;
        }
        if let Some(e) = &self.encoder {
            e.validate()?;
            if self.embedding_col.is_some() {
                return Err(Error::param(
                    "--embedding-col",
                    "give either an embedding column or a column to embed (--text-col / --image-col), not both",
                ));
            }
        } else if self.query_text_col.is_some() {
            return Err(Error::param("--query-text-col", "needs --text-col or --image-col"));
        }
        Ok(())
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
    /// Pairs skipped because query and demo share the `exclude_same` value.
    pub same_skipped: usize,
    /// Annotated rows and queries left out for lack of an embedding (`skip_bad`).
    pub excluded: (usize, usize),
    /// Queries that got no demo (a token budget too small for any).
    pub without_demos: usize,
    /// Whether the pool mean recorded by `annotate` was applied.
    pub centered: bool,
    /// The prompts file written.
    pub prompts: Option<PathBuf>,
    /// Notes for the user (e.g. no `annotate` record found).
    pub notes: Vec<String>,
}

/// Checks that `column` exists in every shard of `data`.
fn require_column(data: &Dataset, column: &str, flag: &'static str, what: &str) -> Result<()> {
    match lacks_column(data, column) {
        None => Ok(()),
        Some((path, cols)) => Err(Error::param(
            flag,
            format!(
                "{}: no column `{column}` in the {what}; columns are: {cols}",
                path.display()
            ),
        )),
    }
}

/// Column names of a file (its first shard).
fn column_names(data: &Dataset) -> Vec<String> {
    data.shards[0]
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// Where both files' embeddings come from, and the encoder (built once).
fn embeddings(cfg: &DemosConfig) -> Result<(Embedding<'_>, Embedding<'_>)> {
    let Some(spec) = &cfg.encoder else {
        let how = || Embedding::Column(cfg.embedding_col.as_deref());
        return Ok((how(), how()));
    };
    let encoder = spec.build()?;
    let how = |column| Embedding::Encode {
        encoder: encoder.clone(),
        column,
        cache: spec.cache.clone(),
        skip_bad: spec.skip_bad,
    };
    Ok((
        how(&spec.column),
        how(cfg.query_text_col.as_deref().unwrap_or(&spec.column)),
    ))
}

/// The annotated rows' embeddings, with a hint when `annotate` embedded
/// them on the fly and no encoder was given now.
fn annotated_rows(ann: &Dataset, how: &Embedding, meta: Option<&AnnotateMeta>) -> Result<Embedded> {
    match (embed_rows(ann, how), meta) {
        (Err(e), Some(m)) if matches!(how, Embedding::Column(_)) && m.encoded_col.is_some() => Err(Error::param(
            "--model",
            format!(
                "the annotated rows were embedded on the fly by `annotate` ({}, column `{}`) and this file has \
                 no embedding column: pass the same encoder flags (--model, --text-col, ...) so that demos \
                 embeds them and the queries ({e})",
                m.encoder.as_deref().unwrap_or("unknown encoder"),
                m.encoded_col.as_deref().unwrap_or_default()
            ),
        )),
        (r, _) => r,
    }
}

/// Label id of every usable annotated row (in order of first appearance).
fn label_ids(ann: &Dataset, column: &str, index: &[u32]) -> Result<Vec<u32>> {
    require_column(ann, column, "--label-col", "annotated rows")?;
    let (_, text) = column_text(ann, column)?;
    let mut ids: HashMap<&str, u32> = HashMap::new();
    index
        .iter()
        .map(|&g| {
            let t = text[g as usize].as_deref().ok_or_else(|| {
                Error::param(
                    "--label-col",
                    format!("label column `{column}` is null at annotated row {g}; label every demo"),
                )
            })?;
            let next = ids.len() as u32;
            Ok(*ids.entry(t).or_insert(next))
        })
        .collect()
}

/// Tokens of every row of `data` in `columns` (summed).
fn token_counts(
    counter: &Counter,
    data: &Dataset,
    columns: &[String],
    flag: &'static str,
    what: &str,
) -> Result<Vec<u32>> {
    let mut total = vec![0u32; data.num_rows() as usize];
    for c in columns {
        require_column(data, c, flag, what)?;
        let (_, text) = column_text(data, c)?;
        for (t, n) in total.iter_mut().zip(counter.count(&text)?) {
            *t += n;
        }
    }
    Ok(total)
}

/// 128-bit hashes of a column's values (`None` for nulls).
type Hashes = Vec<Option<u128>>;

/// Per usable query: its demos as (usable annotated row, cosine) in prompt
/// order, pairs skipped for the same id, pairs skipped for the same value.
type Picked = (Vec<(u32, f32)>, usize, usize);

/// Hashes of `column` in both files; the column must have the same type
/// in both, since the hash is of Arrow's row bytes.
fn same_value_hashes(ann: &Dataset, qs: &Dataset, column: &str) -> Result<(Hashes, Hashes)> {
    require_column(ann, column, "--exclude-same", "annotated rows")?;
    require_column(qs, column, "--exclude-same", "queries")?;
    let ta = ann.shards[0]
        .schema
        .field_with_name(column)
        .map(|f| f.data_type().clone());
    let tq = qs.shards[0]
        .schema
        .field_with_name(column)
        .map(|f| f.data_type().clone());
    if let (Ok(a), Ok(q)) = (&ta, &tq)
        && a != q
    {
        return Err(Error::param(
            "--exclude-same",
            format!(
                "column `{column}` is {a} in the annotated rows but {q} in the queries; values of different types never match"
            ),
        ));
    }
    Ok((
        columns::map_keys(ann, column, hash_bytes)?,
        columns::map_keys(qs, column, hash_bytes)?,
    ))
}

/// Runs `demos` (see the module docs).
pub fn run_demos(cfg: &DemosConfig) -> Result<DemosSummary> {
    cfg.validate()?;
    let template = cfg.template.as_deref().map(Template::parse).transpose()?;
    let ann_paths = expand_inputs(&cfg.annotated)?;
    let q_paths = expand_inputs(&cfg.queries)?;
    let mut all_inputs = ann_paths.clone();
    all_inputs.extend(q_paths.iter().cloned());
    check_output(&cfg.output, cfg.overwrite, &all_inputs)?;
    let prompts_path = cfg.prompts_path();
    if let Some(p) = &prompts_path {
        check_output(p, cfg.overwrite, &all_inputs)?;
        if *p == cfg.output {
            return Err(Error::param("--prompts", "must differ from --output"));
        }
    }
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
    if let Some(t) = &template {
        t.check(&column_names(&qs), &column_names(&ann))?;
    }
    let (ann_ids, ann_text) = read_ids(&ann, &cfg.id_col, "--id-col")?;
    let qcol = cfg.query_id_col.as_deref().unwrap_or(&cfg.id_col);
    let (q_ids, q_text) = read_ids(&qs, qcol, "--query-id-col")?;
    let meta: Option<AnnotateMeta> = ann.shards[0]
        .schema
        .metadata()
        .get(META_KEY)
        .map(|s| serde_json::from_str(s))
        .transpose()
        .map_err(|e| Error::param("--annotated", format!("unreadable `{META_KEY}` metadata: {e}")))?;
    let (a_how, q_how) = embeddings(cfg)?;
    let mut a = annotated_rows(&ann, &a_how, meta.as_ref())?;
    let mut q = embed_rows(&qs, &q_how)?;
    let dim = a.dim;
    if q.dim != dim {
        return Err(Error::Dimension {
            path: qs.shards[0].path.clone(),
            row: None,
            expected: dim,
            found: q.dim,
        });
    }
    let mut notes = Vec::new();
    // What the pool was embedded with: `annotate`'s record, else the
    // annotated column's metadata (not the encoder run now).
    let recorded = meta
        .as_ref()
        .map(|m| EncoderRecord {
            describe: m.encoder.clone(),
            id: m.encoder_id.clone(),
        })
        .filter(EncoderRecord::is_known)
        .or_else(|| (!a.encoded).then(|| a.encoder.clone()))
        .unwrap_or_default();
    if let Some((pool, query)) = recorded.mismatch(&q.encoder)
        && !cfg.force
    {
        return Err(Error::param(
            "--queries",
            format!(
                "queries were embedded with `{query}` but the annotated rows with `{pool}`; re-embed (or give the \
                 encoder flags the pool was embedded with), or pass --force"
            ),
        ));
    }
    if a.encoded && !recorded.is_known() && meta.as_ref().is_some_and(|m| m.mean.is_some()) {
        notes.push(
            "the annotated file records no encoder: cannot check that the pool mean it stores comes from this encoder"
                .to_string(),
        );
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
    apply_transform(&mut a.rows, dim, mean.as_deref());
    apply_transform(&mut q.rows, dim, mean.as_deref());

    let labels = cfg
        .label_col
        .as_deref()
        .map(|c| label_ids(&ann, c, &a.index))
        .transpose()?;
    let same = cfg
        .exclude_same
        .as_deref()
        .map(|c| same_value_hashes(&ann, &qs, c))
        .transpose()?;
    let tokens = match &cfg.token_budget {
        Some(b) => {
            let counter = Counter::open(&b.tokenizer)?;
            let all = token_counts(&counter, &ann, &b.columns, "--budget-col", "annotated rows")?;
            let demo: Vec<u32> = a.index.iter().map(|&g| all[g as usize]).collect();
            let query = match &b.query_column {
                Some(c) => token_counts(&counter, &qs, std::slice::from_ref(c), "--budget-query-col", "queries")?,
                None => vec![0; qs.num_rows() as usize],
            };
            Some((demo, query))
        }
        None => None,
    };

    let ma = a.index.len();
    let nq = q.index.len();
    let k = cfg.k;
    let plain = cfg.mmr.is_none() && labels.is_none() && tokens.is_none();
    let by_sim = |x: &(u32, f32), y: &(u32, f32)| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0));
    let lists: Vec<Picked> = (0..nq)
        .into_par_iter()
        .chunks(64)
        .flat_map_iter(|chunk| {
            let x: Vec<f32> = chunk
                .iter()
                .flat_map(|&i| q.rows[i * dim..(i + 1) * dim].iter().copied())
                .collect();
            let mut s = vec![0f32; chunk.len() * ma];
            dot_batch(&x, &a.rows, dim, &mut s);
            chunk
                .iter()
                .enumerate()
                .map(|(r, &qi)| {
                    let qg = q.index[qi] as usize;
                    let (mut self_skipped, mut same_skipped) = (0, 0);
                    let mut cand: Vec<(u32, f32)> = Vec::with_capacity(ma);
                    for (j, &v) in s[r * ma..(r + 1) * ma].iter().enumerate() {
                        let ag = a.index[j] as usize;
                        if !cfg.keep_self && ann_text[ag] == q_text[qg] {
                            self_skipped += 1;
                        } else if let Some((ha, hq)) = &same
                            && ha[ag].is_some()
                            && ha[ag] == hq[qg]
                        {
                            same_skipped += 1;
                        } else {
                            cand.push((j as u32, v));
                        }
                    }
                    if plain {
                        if cand.len() > k {
                            cand.select_nth_unstable_by(k - 1, by_sim);
                            cand.truncate(k);
                        }
                        cand.sort_by(by_sim);
                    } else {
                        cand.sort_by(by_sim);
                        let policy = Policy {
                            k,
                            mmr: cfg.mmr,
                            labels: labels.as_deref(),
                            limit: tokens
                                .as_ref()
                                .zip(cfg.token_budget.as_ref())
                                .map(|((demo, query), b)| Limit {
                                    tokens: demo,
                                    total: b.tokens.saturating_sub(query[qg] as usize),
                                    max_demo: b.max_demo_tokens,
                                    skip: b.skip,
                                }),
                        };
                        cand = pick::pick(&cand, &a.rows, dim, &policy);
                        // Label turns are the prompt order; otherwise most similar first.
                        if labels.is_none() {
                            cand.sort_by(by_sim);
                        }
                    }
                    if cfg.order == DemoOrder::Ascending {
                        cand.reverse();
                    }
                    (cand, self_skipped, same_skipped)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let total: usize = lists.iter().map(|l| l.0.len()).sum();
    let mut q_idx = Vec::with_capacity(total);
    let mut pos = Vec::with_capacity(total);
    let mut d_idx = Vec::with_capacity(total);
    let mut cos = Vec::with_capacity(total);
    let mut toks = Vec::with_capacity(total);
    for (qi, (l, _, _)) in lists.iter().enumerate() {
        for (p, &(j, c)) in l.iter().enumerate() {
            q_idx.push(q.index[qi]);
            pos.push(p as i32);
            d_idx.push(a.index[j as usize]);
            cos.push(c);
            if let Some((demo, _)) = &tokens {
                toks.push(demo[j as usize] as i32);
            }
        }
    }
    let arrow_err = |source| Error::Arrow {
        path: cfg.output.clone(),
        source,
    };
    let qid = take(q_ids.as_ref(), &UInt32Array::from(q_idx), None).map_err(arrow_err)?;
    let did = take(ann_ids.as_ref(), &UInt32Array::from(d_idx.clone()), None).map_err(arrow_err)?;
    let mut fields = vec![
        Field::new("query_id", qid.data_type().clone(), false),
        Field::new("position", DataType::Int32, false),
        Field::new("demo_id", did.data_type().clone(), false),
        Field::new("cosine", DataType::Float32, false),
    ];
    let mut cols: Vec<ArrayRef> = vec![
        qid,
        Arc::new(Int32Array::from(pos)),
        did,
        Arc::new(Float32Array::from(cos)),
    ];
    if tokens.is_some() {
        fields.push(Field::new("tokens", DataType::Int32, false));
        cols.push(Arc::new(Int32Array::from(toks)));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(arrow_err)?;
    write_batch(&batch, &cfg.output)?;

    if let (Some(t), Some(path)) = (&template, &prompts_path) {
        let (qc, dc) = t.columns();
        let read = |data: &Dataset, cols: &std::collections::BTreeSet<String>| -> Result<Values> {
            cols.iter().map(|c| Ok((c.clone(), column_text(data, c)?.1))).collect()
        };
        let (qv, dv) = (read(&qs, &qc)?, read(&ann, &dc)?);
        let mut demo_rows = d_idx.into_iter();
        let prompts: Vec<String> = lists
            .iter()
            .enumerate()
            .map(|(qi, (l, _, _))| {
                let rows: Vec<usize> = demo_rows.by_ref().take(l.len()).map(|g| g as usize).collect();
                t.render(q.index[qi] as usize, &rows, &qv, &dv)
            })
            .collect();
        write_prompts(path, &q_ids, &q_text, &q.index, &lists, prompts)?;
    }
    Ok(DemosSummary {
        queries: nq,
        annotated: ma,
        rows: total,
        self_skipped: lists.iter().map(|l| l.1).sum(),
        same_skipped: lists.iter().map(|l| l.2).sum(),
        excluded: (a.excluded, q.excluded),
        without_demos: lists.iter().filter(|l| l.0.is_empty()).count(),
        centered: mean.is_some(),
        prompts: prompts_path,
        notes,
    })
}

/// Writes one prompt per query: Parquet (query_id, demos, prompt), or
/// JSON lines for a `.jsonl` path (query ids as text).
fn write_prompts(
    path: &Path,
    q_ids: &ArrayRef,
    q_text: &[String],
    index: &[u32],
    lists: &[Picked],
    prompts: Vec<String>,
) -> Result<()> {
    let counts: Vec<i32> = lists.iter().map(|l| l.0.len() as i32).collect();
    if path.extension().is_some_and(|e| e == "jsonl") {
        let atomic = AtomicFile::new(path)?;
        let file = std::fs::File::create(atomic.tmp_path()).map_err(|e| Error::io("creating", atomic.tmp_path(), e))?;
        let mut w = std::io::BufWriter::new(file);
        for ((&g, n), p) in index.iter().zip(&counts).zip(&prompts) {
            let line = serde_json::json!({"query_id": q_text[g as usize], "demos": n, "prompt": p});
            writeln!(w, "{line}").map_err(|e| Error::io("writing", path, e))?;
        }
        w.flush().map_err(|e| Error::io("writing", path, e))?;
        drop(w);
        return atomic.commit();
    }
    let arrow_err = |source| Error::Arrow {
        path: path.to_path_buf(),
        source,
    };
    let qid = take(q_ids.as_ref(), &UInt32Array::from(index.to_vec()), None).map_err(arrow_err)?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("query_id", qid.data_type().clone(), false),
        Field::new("demos", DataType::Int32, false),
        Field::new("prompt", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            qid,
            Arc::new(Int32Array::from(counts)),
            Arc::new(StringArray::from(prompts)),
        ],
    )
    .map_err(arrow_err)?;
    write_batch(&batch, path)
}

/// A template given on the command line (`\n`, `\t`, `\\` escapes).
pub fn template_from_flag(s: &str) -> String {
    unescape(s)
}
