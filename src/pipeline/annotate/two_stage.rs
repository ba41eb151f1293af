//! The files of two-stage vote-k's second stage
//! ([`crate::select::annotate::two_stage`]), read into what the selector
//! needs once the stage-1 rows are known.
//!
//! * `--confidence FILE`: a Parquet or CSV/TSV table with the pool's id
//!   column and a confidence column (e.g. an LM's probability of its own
//!   prediction, or its NLL with `--confidence-order
//!   higher-is-less-confident`), one row per pool row; stage-1 rows may be
//!   left out and their values are ignored (they sort last).
//! * `--stage1 FILE`: the annotated stage-1 rows (the file stage 1 wrote,
//!   with a label column added). Its ids must be exactly the stage-1 rows,
//!   which checks that stage 2 runs on the pool, flags and seed of stage 1;
//!   with `--knn-confidence` its labels feed the kNN surrogate.
//!
//! Ids are compared as text (as the pool's id column is read); with
//! `--row-index` the id column is `dprune_row`. Every problem is an error
//! naming the file, the row (Parquet, from 0) or line (CSV, from 1), the id
//! and the value.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use arrow::array::{Array, Float64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use super::read_column;
use crate::io::Dataset;
use crate::select::annotate::{Method, Stage2Input};
use crate::{Error, Result};

/// Confidence column when none is named.
pub const DEFAULT_CONFIDENCE_COLUMN: &str = "confidence";
/// Label column of the stage-1 file when none is named.
pub const DEFAULT_LABEL_COLUMN: &str = "label";
/// Ids listed in an error about missing rows.
const LIST_IDS: usize = 5;

/// Which way a confidence column points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfidenceOrder {
    /// Larger values are more confident (a probability, a log-probability).
    #[default]
    HigherIsMoreConfident,
    /// Larger values are less confident (an NLL, as the reference's MetaICL score).
    HigherIsLessConfident,
}

impl fmt::Display for ConfidenceOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfidenceOrder::HigherIsMoreConfident => "higher-is-more-confident",
            ConfidenceOrder::HigherIsLessConfident => "higher-is-less-confident",
        })
    }
}

impl FromStr for ConfidenceOrder {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "higher-is-more-confident" | "more" => Ok(ConfidenceOrder::HigherIsMoreConfident),
            "higher-is-less-confident" | "less" | "nll" => Ok(ConfidenceOrder::HigherIsLessConfident),
            _ => Err(Error::param(
                "--confidence-order",
                format!("`{s}`: expected higher-is-more-confident or higher-is-less-confident"),
            )),
        }
    }
}

/// Stage-2 inputs of two-stage vote-k (`--method votek`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TwoStageFiles {
    /// Per-row confidences (Parquet, or CSV/TSV by extension).
    pub confidence: Option<PathBuf>,
    /// Confidence column; defaults to [`DEFAULT_CONFIDENCE_COLUMN`].
    pub confidence_col: String,
    /// Direction of the confidence column.
    pub confidence_order: ConfidenceOrder,
    /// The annotated stage-1 rows (Parquet, or CSV/TSV).
    pub stage1: Option<PathBuf>,
    /// Label column of `stage1`; defaults to [`DEFAULT_LABEL_COLUMN`].
    pub label_col: String,
    /// Confidence from the kNN surrogate over `stage1`'s labels.
    pub knn_confidence: bool,
}

impl Default for TwoStageFiles {
    fn default() -> Self {
        TwoStageFiles {
            confidence: None,
            confidence_col: DEFAULT_CONFIDENCE_COLUMN.into(),
            confidence_order: ConfidenceOrder::default(),
            stage1: None,
            label_col: DEFAULT_LABEL_COLUMN.into(),
            knn_confidence: false,
        }
    }
}

impl TwoStageFiles {
    /// Whether stage 2 runs (a confidence source is given).
    pub fn stage2(&self) -> bool {
        self.confidence.is_some() || self.knn_confidence
    }

    /// Checks the combination against the method.
    pub fn validate(&self, method: Method) -> Result<()> {
        let any = self.stage2() || self.stage1.is_some();
        if any && method != Method::Votek {
            return Err(Error::param(
                "--method",
                format!("--confidence, --knn-confidence and --stage1 are for --method votek, not {method}"),
            ));
        }
        if self.confidence.is_some() && self.knn_confidence {
            return Err(Error::param(
                "--knn-confidence",
                "give either --confidence FILE (confidences you computed) or --knn-confidence (the kNN surrogate), not both",
            ));
        }
        if self.knn_confidence && self.stage1.is_none() {
            return Err(Error::param(
                "--knn-confidence",
                "needs --stage1 FILE: the annotated stage-1 rows with a label column",
            ));
        }
        if self.stage1.is_some() && !self.stage2() {
            return Err(Error::param(
                "--stage1",
                "is read by stage 2: add --confidence FILE or --knn-confidence",
            ));
        }
        Ok(())
    }
}

/// One cell of a side table.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Text(String),
    Number(f64),
}

/// A small table read whole: the columns asked for, from Parquet or CSV.
struct Table {
    path: PathBuf,
    /// CSV: the 0-based line of every row.
    lines: Option<Vec<usize>>,
    columns: HashMap<String, Vec<Cell>>,
    rows: usize,
}

impl Table {
    /// Where row `r` is, for messages.
    fn at(&self, r: usize) -> String {
        match &self.lines {
            Some(l) => format!("line {}", l[r] + 1),
            None => format!("row {r}"),
        }
    }

    fn bad(&self, r: usize, reason: String) -> Error {
        Error::Config {
            path: self.path.clone(),
            reason: format!("{}: {reason}", self.at(r)),
        }
    }

    fn col(&self, name: &str) -> &[Cell] {
        &self.columns[name]
    }

    /// Reads `wanted` columns of `path`; `numeric` columns of Parquet files
    /// are read as numbers, everything else as text.
    fn read(path: &Path, flag: &'static str, wanted: &[(&str, bool)]) -> Result<Table> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "parquet" | "pq" => Self::read_parquet(path, wanted),
            "csv" => Self::read_csv(path, b',', wanted),
            "tsv" | "tab" => Self::read_csv(path, b'\t', wanted),
            _ => Err(Error::param(
                flag,
                format!("{}: expected a .parquet, .csv or .tsv file", path.display()),
            )),
        }
    }

    fn missing(path: &Path, name: &str, have: &[String]) -> Error {
        Error::Column {
            path: path.to_path_buf(),
            column: name.to_string(),
            reason: format!("no such column (columns: {})", have.join(", ")),
        }
    }

    fn read_parquet(path: &Path, wanted: &[(&str, bool)]) -> Result<Table> {
        let data = Dataset::open(&[path.to_path_buf()])?;
        let have: Vec<String> = data.shards[0]
            .schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let arrow_err = |source| Error::Arrow {
            path: path.to_path_buf(),
            source,
        };
        let mut columns = HashMap::new();
        let rows = data.num_rows() as usize;
        for &(name, numeric) in wanted {
            if !have.iter().any(|h| h == name) {
                return Err(Self::missing(path, name, &have));
            }
            if rows == 0 {
                columns.insert(name.to_string(), Vec::new());
                continue;
            }
            let arr = read_column(&data, name)?;
            let dt = arr.data_type().clone();
            let cells: Vec<Cell> = if numeric && dt.is_numeric() {
                let f = cast(&arr, &DataType::Float64).map_err(arrow_err)?;
                let f = f
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .ok_or_else(|| Error::Internal("cast".into()))?;
                (0..f.len())
                    .map(|i| {
                        if f.is_null(i) {
                            Cell::Null
                        } else {
                            Cell::Number(f.value(i))
                        }
                    })
                    .collect()
            } else {
                let t = cast(&arr, &DataType::Utf8).map_err(|_| Error::Column {
                    path: path.to_path_buf(),
                    column: name.to_string(),
                    reason: format!(
                        "type {dt} cannot be read as {}",
                        if numeric { "numbers" } else { "text" }
                    ),
                })?;
                let t = t
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| Error::Internal("cast".into()))?;
                (0..t.len())
                    .map(|i| {
                        if t.is_null(i) {
                            Cell::Null
                        } else {
                            Cell::Text(t.value(i).to_string())
                        }
                    })
                    .collect()
            };
            columns.insert(name.to_string(), cells);
        }
        Ok(Table {
            path: path.to_path_buf(),
            lines: None,
            columns,
            rows,
        })
    }

    fn read_csv(path: &Path, sep: u8, wanted: &[(&str, bool)]) -> Result<Table> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let bad = |line: usize, reason: String| Error::Config {
            path: path.to_path_buf(),
            reason: format!("line {}: {reason}", line + 1),
        };
        let Some((hl, header)) = lines.next() else {
            return Err(Error::Empty(format!("{}: no header line", path.display())));
        };
        let header = split_csv(header, sep).map_err(|r| bad(hl, r))?;
        let mut idx = Vec::new();
        for &(name, _) in wanted {
            let i = header
                .iter()
                .position(|h| h.trim() == name)
                .ok_or_else(|| Self::missing(path, name, &header))?;
            idx.push(i);
        }
        let mut cols: Vec<Vec<Cell>> = vec![Vec::new(); wanted.len()];
        let mut at = Vec::new();
        for (l, line) in lines {
            let f = split_csv(line, sep).map_err(|r| bad(l, r))?;
            if f.len() != header.len() {
                return Err(bad(l, format!("{} fields, the header has {}", f.len(), header.len())));
            }
            for (c, &i) in cols.iter_mut().zip(&idx) {
                let v = f[i].trim();
                c.push(if v.is_empty() {
                    Cell::Null
                } else {
                    Cell::Text(v.to_string())
                });
            }
            at.push(l);
        }
        let columns = wanted.iter().map(|&(n, _)| n.to_string()).zip(cols).collect();
        Ok(Table {
            path: path.to_path_buf(),
            rows: at.len(),
            lines: Some(at),
            columns,
        })
    }

    /// The id column as text, checked: no empty id, no repeats, every id
    /// in `pool`. Returns the pool row of every table row.
    fn pool_rows(&self, id_col: &str, pool: &HashMap<&str, usize>) -> Result<Vec<usize>> {
        let mut first: HashMap<&str, usize> = HashMap::with_capacity(self.rows);
        let mut out = Vec::with_capacity(self.rows);
        for (r, c) in self.col(id_col).iter().enumerate() {
            let id = match c {
                Cell::Text(t) => t.as_str(),
                _ => return Err(self.bad(r, format!("id column `{id_col}` is empty"))),
            };
            if let Some(f) = first.insert(id, r) {
                return Err(self.bad(r, format!("id `{id}` also at {}", self.at(f))));
            }
            match pool.get(id) {
                Some(&p) => out.push(p),
                None => return Err(self.bad(r, format!("id `{id}` is not in the pool"))),
            }
        }
        Ok(out)
    }
}

/// Splits one CSV line on `sep`; fields may be double-quoted (`""` is a
/// quote inside). Quoted line breaks are not supported.
fn split_csv(line: &str, sep: u8) -> std::result::Result<Vec<String>, String> {
    let sep = sep as char;
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                cur.push(c);
            }
        } else if c == '"' && cur.trim().is_empty() && !was_quoted {
            cur.clear();
            quoted = true;
            was_quoted = true;
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
            was_quoted = false;
        } else if was_quoted && !c.is_whitespace() {
            return Err(format!("text after a closing quote in field {}", out.len() + 1));
        } else {
            cur.push(c);
        }
    }
    if quoted {
        return Err(format!("unclosed quote in field {}", out.len() + 1));
    }
    out.push(cur);
    Ok(out)
}

/// What [`stage2_source`] returns: called with the stage-1 rows.
pub type Source<'a> = Box<dyn Fn(&[u32]) -> Result<Stage2Input> + 'a>;

/// Stage 2's input source for a pool with ids `pool_ids` (row positions
/// as text with `--row-index`), or `None` for a stage-1 run. Files are read
/// and checked for shape here, before the kNN graph is built; ids are
/// matched to the stage-1 rows when the selector calls the source.
pub fn stage2_source<'a>(
    files: &'a TwoStageFiles,
    id_col: &'a str,
    pool_ids: &'a [String],
) -> Result<Option<Source<'a>>> {
    if !files.stage2() {
        return Ok(None);
    }
    let conf = match &files.confidence {
        Some(p) => Some(Table::read(
            p,
            "--confidence",
            &[(id_col, false), (files.confidence_col.as_str(), true)],
        )?),
        None => None,
    };
    let stage1 = match &files.stage1 {
        Some(p) => {
            let mut cols = vec![(id_col, false)];
            if files.knn_confidence {
                cols.push((files.label_col.as_str(), false));
            }
            Some(Table::read(p, "--stage1", &cols)?)
        }
        None => None,
    };
    let pool: HashMap<&str, usize> = pool_ids.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
    let conf_rows = conf.as_ref().map(|t| t.pool_rows(id_col, &pool)).transpose()?;
    let stage1_rows = stage1.as_ref().map(|t| t.pool_rows(id_col, &pool)).transpose()?;
    Ok(Some(Box::new(move |l1: &[u32]| {
        let labels = match (&stage1, &stage1_rows) {
            (Some(t), Some(rows)) => Some(check_stage1(t, rows, l1, pool_ids, files)?),
            _ => None,
        };
        match (&conf, &conf_rows) {
            (Some(t), Some(rows)) => confidences(t, rows, l1, pool_ids, files).map(Stage2Input::Confidence),
            _ => labels
                .map(Stage2Input::Labels)
                .ok_or_else(|| Error::Internal("stage 2 without a confidence source".into())),
        }
    })))
}

/// Checks that `t` holds exactly the stage-1 rows `l1`; returns their
/// class ids (by first appearance, in `l1` order) when the surrogate needs
/// labels, else an empty list.
fn check_stage1(t: &Table, rows: &[usize], l1: &[u32], ids: &[String], files: &TwoStageFiles) -> Result<Vec<u32>> {
    let mut rank: HashMap<usize, usize> = l1.iter().enumerate().map(|(r, &v)| (v as usize, r)).collect();
    let mut at = vec![usize::MAX; l1.len()];
    let again = "run stage 2 on the pool, --budget, --votek-* flags and --seed of stage 1";
    for (r, &p) in rows.iter().enumerate() {
        match rank.remove(&p) {
            Some(k) => at[k] = r,
            None => {
                return Err(t.bad(
                    r,
                    format!("id `{}` is not one of the {} stage-1 rows; {again}", ids[p], l1.len()),
                ));
            }
        }
    }
    if !rank.is_empty() {
        let mut miss: Vec<usize> = rank.into_values().collect();
        miss.sort();
        let list: Vec<&str> = miss
            .iter()
            .take(LIST_IDS)
            .map(|&k| ids[l1[k] as usize].as_str())
            .collect();
        return Err(Error::Config {
            path: t.path.clone(),
            reason: format!(
                "{} of the {} stage-1 rows are missing (ids {}{}); {again}",
                miss.len(),
                l1.len(),
                list.join(", "),
                if miss.len() > LIST_IDS { ", ..." } else { "" }
            ),
        });
    }
    if !files.knn_confidence {
        return Ok(Vec::new());
    }
    let col = t.col(&files.label_col);
    let mut class: HashMap<&str, u32> = HashMap::new();
    at.iter()
        .zip(l1)
        .map(|(&r, &v)| match &col[r] {
            Cell::Text(s) => {
                let next = class.len() as u32;
                Ok(*class.entry(s.as_str()).or_insert(next))
            }
            _ => Err(t.bad(
                r,
                format!("id `{}` has no label in column `{}`", ids[v as usize], files.label_col),
            )),
        })
        .collect()
}

/// Every pool row's confidence, higher = more confident (stage-1 rows
/// get +∞ whatever the file says).
fn confidences(t: &Table, rows: &[usize], l1: &[u32], ids: &[String], files: &TwoStageFiles) -> Result<Vec<f64>> {
    let n = ids.len();
    let mut conf = vec![f64::NAN; n];
    l1.iter().for_each(|&v| conf[v as usize] = f64::INFINITY);
    let col = t.col(&files.confidence_col);
    let name = &files.confidence_col;
    for (r, &p) in rows.iter().enumerate() {
        if conf[p] == f64::INFINITY {
            continue;
        }
        let x = match &col[r] {
            Cell::Number(x) => *x,
            Cell::Text(s) => s.parse::<f64>().map_err(|_| {
                t.bad(
                    r,
                    format!("id `{}`: confidence `{s}` in column `{name}` is not a number", ids[p]),
                )
            })?,
            Cell::Null => return Err(t.bad(r, format!("id `{}`: no confidence in column `{name}`", ids[p]))),
        };
        if !x.is_finite() {
            return Err(t.bad(
                r,
                format!("id `{}`: confidence {x} in column `{name}` is not finite", ids[p]),
            ));
        }
        conf[p] = match files.confidence_order {
            ConfidenceOrder::HigherIsMoreConfident => x,
            ConfidenceOrder::HigherIsLessConfident => -x,
        };
    }
    let miss: Vec<usize> = (0..n).filter(|&i| conf[i].is_nan()).collect();
    if !miss.is_empty() {
        let list: Vec<&str> = miss.iter().take(LIST_IDS).map(|&i| ids[i].as_str()).collect();
        return Err(Error::Config {
            path: t.path.clone(),
            reason: format!(
                "no confidence for {} pool rows (ids {}{}); every pool row needs one except the {} stage-1 rows",
                miss.len(),
                list.join(", "),
                if miss.len() > LIST_IDS { ", ..." } else { "" },
                l1.len()
            ),
        });
    }
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_split_with_quotes() {
        assert_eq!(split_csv("a,b,,c", b',').unwrap(), vec!["a", "b", "", "c"]);
        assert_eq!(
            split_csv("\"x, y\",\"say \"\"hi\"\"\"", b',').unwrap(),
            vec!["x, y", "say \"hi\""]
        );
        assert_eq!(split_csv("1\t0.5\r", b'\t').unwrap(), vec!["1", "0.5"]);
        assert!(
            split_csv("\"open,1", b',')
                .unwrap_err()
                .contains("unclosed quote in field 1")
        );
        assert!(
            split_csv("\"a\"b,1", b',')
                .unwrap_err()
                .contains("after a closing quote")
        );
    }

    #[test]
    fn orders_parse_and_combinations_are_checked() {
        assert_eq!(
            "nll".parse::<ConfidenceOrder>().unwrap(),
            ConfidenceOrder::HigherIsLessConfident
        );
        assert!("up".parse::<ConfidenceOrder>().is_err());
        let mut f = TwoStageFiles {
            knn_confidence: true,
            ..TwoStageFiles::default()
        };
        assert!(
            f.validate(Method::Votek)
                .unwrap_err()
                .to_string()
                .contains("needs --stage1")
        );
        f.stage1 = Some("s.parquet".into());
        assert!(f.validate(Method::Votek).is_ok());
        assert!(
            f.validate(Method::FastVotek)
                .unwrap_err()
                .to_string()
                .contains("not fast-votek")
        );
        f.confidence = Some("c.csv".into());
        assert!(f.validate(Method::Votek).unwrap_err().to_string().contains("not both"));
        let only = TwoStageFiles {
            stage1: Some("s.parquet".into()),
            ..TwoStageFiles::default()
        };
        assert!(
            only.validate(Method::Votek)
                .unwrap_err()
                .to_string()
                .contains("add --confidence")
        );
    }
}
