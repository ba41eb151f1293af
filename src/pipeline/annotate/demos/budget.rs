//! Token counts for `demos --token-budget`, with the tokenizer of the LM
//! that will read the prompts (a HF `tokenizer.json`), as the reference's
//! `prompt_retrieval` counts demos with GPT-2's tokenizer (research notes
//! §6.1): a demo costs the tokens of its counted columns (e.g. input and
//! label), each tokenised alone without special tokens, with the file's
//! own truncation and padding switched off.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// A per-query token budget for the demonstrations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenBudget {
    /// Tokens the demos of one query may use in all (minus the query's own
    /// tokens when `query_column` is given).
    pub tokens: usize,
    /// The LM's `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Annotated columns whose tokens a demo costs.
    pub columns: Vec<String>,
    /// A query column whose tokens are taken from the budget first.
    pub query_column: Option<String>,
    /// Demos longer than this are never used (the reference: 250).
    pub max_demo_tokens: Option<usize>,
    /// Pass over a demo that does not fit and try less similar ones,
    /// instead of stopping at the first that does not (the reference).
    pub skip: bool,
}

impl Default for TokenBudget {
    fn default() -> Self {
        TokenBudget {
            tokens: 0,
            tokenizer: PathBuf::new(),
            columns: Vec::new(),
            query_column: None,
            max_demo_tokens: None,
            skip: false,
        }
    }
}

impl TokenBudget {
    /// Checks values that do not depend on the data.
    pub fn validate(&self) -> Result<()> {
        if self.tokens == 0 {
            return Err(Error::param("--token-budget", "0: must be at least 1"));
        }
        if self.columns.is_empty() {
            return Err(Error::param(
                "--budget-col",
                "no column to count: name the demo columns a demo costs (or give --text-col)",
            ));
        }
        if self.max_demo_tokens == Some(0) {
            return Err(Error::param("--max-demo-tokens", "0: must be at least 1"));
        }
        if self.tokenizer.as_os_str().is_empty() {
            return Err(Error::param(
                "--budget-tokenizer",
                "no tokenizer given: the tokenizer.json of the LM that reads the prompts",
            ));
        }
        Ok(())
    }
}

/// Counts tokens with one tokenizer.
pub(super) struct Counter {
    tok: Tokenizer,
}

impl Counter {
    /// Loads `path`, without truncation or padding (they would cap or
    /// inflate counts).
    pub(super) fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::param(
                "--budget-tokenizer",
                format!("{}: no such file (expected a HF tokenizer.json)", path.display()),
            ));
        }
        let mut tok = Tokenizer::from_file(path).map_err(|e| {
            Error::param(
                "--budget-tokenizer",
                format!("{}: not a HF tokenizer.json: {e}", path.display()),
            )
        })?;
        tok.with_padding(None);
        tok.with_truncation(None)
            .map_err(|e| Error::param("--budget-tokenizer", format!("{}: {e}", path.display())))?;
        Ok(Counter { tok })
    }

    /// Tokens of every text (0 for null).
    pub(super) fn count(&self, texts: &[Option<String>]) -> Result<Vec<u32>> {
        let inputs: Vec<&str> = texts.iter().map(|t| t.as_deref().unwrap_or("")).collect();
        let enc = self
            .tok
            .encode_batch(inputs, false)
            .map_err(|e| Error::param("--budget-tokenizer", format!("tokenising failed: {e}")))?;
        Ok(enc.iter().map(|e| e.get_ids().len() as u32).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_not_capped_by_the_files_truncation() {
        // The MiniLM tokenizer.json ships with truncation and padding at 128.
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/tokenizer.json");
        let c = Counter::open(&p).unwrap();
        let long = "word ".repeat(300);
        let n = c.count(&[Some("a dog".into()), None, Some(long)]).unwrap();
        // no [CLS]/[SEP], no padding; 300 words are 300 tokens
        assert_eq!(n, vec![2, 0, 300]);
        let e = Counter::open(Path::new("/nonexistent/t.json"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("--budget-tokenizer") && e.contains("/nonexistent/t.json"),
            "{e}"
        );
    }
}
