//! The built-in text embedder that needs no model: hashed word and
//! character n-gram features, projected by a seeded sparse random ±1
//! projection, L2-normalised.
//!
//! Text is lowercased and split into words at every character that is not
//! alphanumeric. Features are the words (weight 1), adjacent word pairs
//! (weight 0.5) and the character 3-grams of each word padded with spaces
//! (weight 0.5 / number of 3-grams of the word), with counts
//! damped as `1 + ln(count)`. Each feature adds `±w/√S` to `S` coordinates
//! chosen by a 64-bit hash of the feature and the seed (a sparse
//! Johnson–Lindenstrauss projection of the hashed bag of n-grams), so the
//! cosine of two embeddings approximates the cosine of their n-gram count
//! vectors.
//!
//! Limits: it is lexical. Texts that share words or spellings are close;
//! paraphrases with different words, synonyms and translations are not;
//! word order matters only through word pairs. Use it for near-duplicate
//! and lexical/topic structure, and a neural encoder (`--model`) for
//! semantics. A text with no alphanumeric character gets the embedding of
//! a fixed "empty" feature. The hash and projection are fixed: the same
//! text, seed and dimension give the same embedding on every platform and
//! release.

use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::embed::{Encoder, EncoderInfo, Prepared, l2_normalize, private_pool};
use crate::rng::mix64;
use crate::{Error, Result};

/// Dimension of the hashed embeddings.
pub const DEFAULT_HASHED_DIM: usize = 256;
/// Coordinates each feature touches.
pub const HASHED_NONZEROS: usize = 8;

/// Options of [`HashedTextEncoder`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashedParams {
    /// Embedding dimension; defaults to [`DEFAULT_HASHED_DIM`].
    pub dim: usize,
    /// Seed of the hash and the projection.
    pub seed: u64,
}

impl Default for HashedParams {
    fn default() -> Self {
        HashedParams {
            dim: DEFAULT_HASHED_DIM,
            seed: 0,
        }
    }
}

impl HashedParams {
    /// Checks the dimension.
    pub fn validate(&self) -> Result<()> {
        if self.dim < HASHED_NONZEROS {
            return Err(Error::param(
                "--hashed-dim",
                format!("{}: must be at least {HASHED_NONZEROS}", self.dim),
            ));
        }
        Ok(())
    }
}

/// The model-free text embedder (see the module docs).
#[derive(Debug, Clone)]
pub struct HashedTextEncoder {
    params: HashedParams,
    info: EncoderInfo,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl HashedTextEncoder {
    /// An embedder with these parameters; `normalize` as for every encoder.
    pub fn new(params: HashedParams, normalize: bool) -> Self {
        let info = EncoderInfo {
            kind: "hashed".into(),
            input: crate::embed::InputKind::Text,
            model: None,
            model_sha256: None,
            tokenizer: None,
            tokenizer_sha256: None,
            runtime: None,
            provider: "built-in".into(),
            provider_reason: "no --model given: hashed word and character n-grams".into(),
            output: format!("hashed-v1 seed={} nnz={HASHED_NONZEROS}", params.seed),
            dim: params.dim,
            batch_size: 0,
            max_length: 0,
            normalize,
            threads: None,
        };
        HashedTextEncoder {
            params,
            info,
            pool: None,
        }
    }

    /// Embeds windows on a private pool of `threads` threads (all cores
    /// when `None`) instead of one thread.
    pub fn with_threads(mut self, threads: Option<usize>) -> Result<Self> {
        self.pool = Some(private_pool(threads)?);
        Ok(self)
    }

    /// The embedding of one text (`dim` values).
    pub fn embed_one(&self, text: &str, out: &mut [f32]) {
        out.iter_mut().for_each(|v| *v = 0.0);
        let mut feats: HashMap<u64, f32> = HashMap::new();
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        for (i, w) in words.iter().enumerate() {
            *feats.entry(fnv(1, w.as_bytes())).or_default() += 1.0;
            if i + 1 < words.len() {
                let mut pair = Vec::with_capacity(w.len() + words[i + 1].len() + 1);
                pair.extend_from_slice(w.as_bytes());
                pair.push(b' ');
                pair.extend_from_slice(words[i + 1].as_bytes());
                *feats.entry(fnv(2, &pair)).or_default() += 0.5;
            }
            let chars: Vec<char> = std::iter::once(' ')
                .chain(w.chars())
                .chain(std::iter::once(' '))
                .collect();
            let grams = chars.len().saturating_sub(2).max(1);
            let wt = 0.5 / grams as f32;
            let mut buf = [0u8; 12];
            for g in chars.windows(3) {
                let mut n = 0;
                for c in g {
                    n += c.encode_utf8(&mut buf[n..]).len();
                }
                *feats.entry(fnv(3, &buf[..n])).or_default() += wt;
            }
        }
        if feats.is_empty() {
            feats.insert(fnv(0, b"<empty>"), 1.0);
        }
        // Sum in a fixed order so the result does not depend on HashMap order.
        let mut feats: Vec<(u64, f32)> = feats.into_iter().collect();
        feats.sort_unstable_by_key(|f| f.0);
        let d = self.params.dim as u64;
        let scale = 1.0 / (HASHED_NONZEROS as f32).sqrt();
        for (h, c) in feats {
            let w = damp(c) * scale;
            let mut state = mix64(h ^ mix64(self.params.seed));
            for _ in 0..HASHED_NONZEROS {
                state = mix64(state.wrapping_add(0x9E37_79B9_7F4A_7C15));
                let idx = ((state >> 1) % d) as usize;
                out[idx] += if state & 1 == 0 { w } else { -w };
            }
        }
        if self.info.normalize {
            l2_normalize(out);
        }
    }
}

/// Damped count: `c` for c ≤ 1, `1 + ln c` above.
fn damp(c: f32) -> f32 {
    if c <= 1.0 { c } else { 1.0 + c.ln() }
}

/// FNV-1a, 64-bit, with the feature family mixed in.
fn fnv(family: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ mix64(family);
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Encoder for HashedTextEncoder {
    fn info(&self) -> &EncoderInfo {
        &self.info
    }

    fn prepare(&self, texts: &[Option<&str>]) -> Result<Prepared> {
        let d = self.params.dim;
        let mut values = vec![0f32; texts.len() * d];
        let run = |values: &mut Vec<f32>| {
            values.par_chunks_mut(d).zip(texts.par_iter()).for_each(|(out, t)| {
                if let Some(t) = t {
                    self.embed_one(t, out);
                }
            })
        };
        match &self.pool {
            Some(pool) => pool.install(|| run(&mut values)),
            None => values.chunks_mut(d).zip(texts).for_each(|(out, t)| {
                if let Some(t) = t {
                    self.embed_one(t, out);
                }
            }),
        }
        Ok(Prepared {
            rows: texts.len(),
            null: texts.iter().map(Option::is_none).collect(),
            batches: vec![],
            ready: Some(values),
            pixels: None,
        })
    }

    fn infer(&self, prepared: Prepared) -> Result<Vec<f32>> {
        prepared
            .ready
            .ok_or_else(|| Error::Internal("hashed encoder got a window prepared by another encoder".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc() -> HashedTextEncoder {
        HashedTextEncoder::new(HashedParams::default(), true)
    }

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn deterministic_unit_norm_and_lexical() {
        let e = enc();
        let texts = [
            Some("a red car parked on the street"),
            Some("A red car, parked on the street!"),
            Some("quarterly earnings beat expectations"),
            Some(""),
            None,
        ];
        let a = e.encode(&texts).unwrap();
        let b = e.encode(&texts).unwrap();
        assert_eq!(a, b);
        let d = DEFAULT_HASHED_DIM;
        for r in 0..4 {
            let n: f32 = a[r * d..(r + 1) * d].iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-5, "row {r} norm {n}");
        }
        assert!(a[4 * d..].iter().all(|&v| v == 0.0), "null row is zeros");
        let (r0, r1, r2) = (&a[..d], &a[d..2 * d], &a[2 * d..3 * d]);
        assert!(cos(r0, r1) > 0.99, "case and punctuation do not matter");
        assert!(cos(r0, r2) < 0.5);
    }

    #[test]
    fn seed_and_dim_change_the_projection() {
        let t = [Some("hello world")];
        let a = enc().encode(&t).unwrap();
        let b = HashedTextEncoder::new(HashedParams { dim: 256, seed: 1 }, true)
            .encode(&t)
            .unwrap();
        assert_ne!(a, b);
        let c = HashedTextEncoder::new(HashedParams { dim: 64, seed: 0 }, true)
            .encode(&t)
            .unwrap();
        assert_eq!(c.len(), 64);
    }

    #[test]
    fn golden_values_do_not_drift() {
        // The embedding of a fixed text must never change between releases
        // (caches and saved centroids depend on it): pinned values.
        let a = enc().encode(&[Some("hello world")]).unwrap();
        let nz: Vec<usize> = a
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0.0)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(nz.len(), 85);
        assert_eq!(nz[..6], [1, 6, 7, 8, 11, 18]);
        let want = [
            0.021_329_772,
            0.213_297_7,
            -0.213_297_7,
            0.213_297_7,
            0.021_329_772,
            0.021_329_772,
        ];
        for (i, w) in nz[..6].iter().zip(want) {
            assert!((a[*i] - w).abs() < 1e-6, "coordinate {i}: {} vs {w}", a[*i]);
        }
    }
}
