//! Exact duplicates: bit-identical embeddings (or key bytes), found by a
//! streaming 128-bit hash; the first row id wins.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use rayon::prelude::*;

use crate::rng::mix64;

/// Bit-identical duplicates, streaming: push rows in row-id order; every
/// row whose bits were seen before gets the row id that first had them.
/// Memory: one 128-bit hash and a row id per distinct row.
///
/// Rows are compared by a 128-bit hash of their bits, not the bits
/// themselves (a false match needs a 2⁻¹²⁸-scale collision). `0.0` and
/// `-0.0` differ, as do NaNs with different payloads.
#[derive(Debug, Default, Clone)]
pub struct ExactDuplicates {
    first: HashMap<u128, u32>,
}

impl ExactDuplicates {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Distinct rows seen so far.
    pub fn distinct(&self) -> usize {
        self.first.len()
    }

    /// Records one row (or key) by its bytes; returns the first row id with
    /// the same bytes, or `None` if it is new.
    pub fn push_bytes(&mut self, row_id: u32, bytes: &[u8]) -> Option<u32> {
        self.insert(row_id, hash_bytes(bytes))
    }

    /// Records the rows of a block (`block.len() / dim` rows, ids from
    /// `first_row_id`), skipping those not `eligible`; returns, per row, the
    /// first earlier row with identical bits. Hashing runs in parallel.
    ///
    /// # Panics
    /// If `block` is not `eligible.len() × dim` values.
    pub fn push_block(&mut self, block: &[f32], dim: usize, first_row_id: u32, eligible: &[bool]) -> Vec<Option<u32>> {
        assert_eq!(block.len(), eligible.len() * dim, "push_block: block is not rows x dim");
        let hashes: Vec<u128> = block.par_chunks(dim.max(1)).map(hash_f32).collect();
        hashes
            .iter()
            .zip(eligible)
            .enumerate()
            .map(|(i, (&h, &e))| {
                if e {
                    self.insert(first_row_id + i as u32, h)
                } else {
                    None
                }
            })
            .collect()
    }

    fn insert(&mut self, row_id: u32, h: u128) -> Option<u32> {
        match self.first.entry(h) {
            Entry::Occupied(o) => Some(*o.get()),
            Entry::Vacant(v) => {
                v.insert(row_id);
                None
            }
        }
    }
}

/// `dup_of` for bit-identical rows of an in-memory matrix (first row id
/// wins; ineligible rows get `None` and are not matched against).
pub fn exact_duplicates(rows: &[f32], dim: usize, eligible: &[bool]) -> Vec<Option<u32>> {
    ExactDuplicates::new().push_block(rows, dim, 0, eligible)
}

/// Two independent 64-bit lanes over 64-bit words, then the length.
fn hash_words(words: impl Iterator<Item = u64>, len: usize) -> u128 {
    let (mut h1, mut h2) = (0x243F_6A88_85A3_08D3u64, 0x1319_8A2E_0370_7344u64);
    for w in words {
        h1 = mix64(h1 ^ w);
        h2 = mix64(h2.rotate_left(29).wrapping_add(w ^ 0xA409_3822_299F_31D0));
    }
    h1 = mix64(h1 ^ len as u64);
    h2 = mix64(h2 ^ (len as u64).rotate_left(32));
    ((h1 as u128) << 64) | h2 as u128
}

pub(crate) fn hash_f32(row: &[f32]) -> u128 {
    let pairs = row.chunks(2).map(|p| {
        let lo = p[0].to_bits() as u64;
        let hi = p.get(1).map_or(0, |v| v.to_bits() as u64);
        lo | (hi << 32)
    });
    hash_words(pairs, row.len() * 4)
}

pub(crate) fn hash_bytes(bytes: &[u8]) -> u128 {
    let words = bytes.chunks(8).map(|c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(w)
    });
    hash_words(words, bytes.len())
}
