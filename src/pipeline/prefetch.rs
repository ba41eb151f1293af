//! Kept-row prefetch: `filter` copies the embeddings of the rows it may keep
//! while it scores them, so that writing the pruned shards does not read and
//! decompress the embedding column a second time (for a LAION-style shard it
//! is most of the bytes; its zstd pages were a third of the write pass).
//!
//! Which rows to copy is decided before the selection exists, from the k-means
//! training sample, whose scores the fit already computed: a uniform sample of
//! n rows puts the score that a fraction q of the rows reach within
//! √(q(1−q)/n) (in rank) of its own quantile, so the rows at or beyond the
//! sample's quantile q + [`MARGIN_SIGMAS`]·√(q(1−q)/n) hold every kept row
//! unless the seed's sample is a six-sigma outlier (Hard: scores at or above
//! it; Easy: at or below). That is checked, not assumed: the writer uses the
//! copies only when every kept row is among them ([`KeptPrefetch::covers`])
//! and otherwise reads the shards as before, so the output never depends on
//! the estimate. `filter` prefetches only when keeping the largest scores: the
//! training rows pulled their centroids, so their scores run low, which errs
//! towards more copies there and towards misses for the smallest scores. A
//! failure to write the copies (a full disk) turns the prefetch off, not the run. The copies are the column's values bit for bit (before
//! normalisation), in row order, one file per shard in a temporary folder
//! (`--spill-dir`), removed when the run ends.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use crate::pipeline::spill::SpillDir;
use crate::select::Keep;
use crate::{Error, Result};

/// Standard deviations of margin between the sample's quantile and the
/// threshold (module doc).
pub const MARGIN_SIGMAS: f64 = 6.0;
/// Prefetch only when at most this fraction of the rows would be copied: the
/// copies cost disk space and a write while scoring, which pays when most
/// rows are dropped.
pub const MAX_PREFETCH_FRACTION: f64 = 0.5;
/// Smallest training sample the estimate is made from.
pub const MIN_SAMPLE: usize = 1000;
/// Fewest kept rows expected in the sample: below it the normal approximation of
/// the margin understates the chance of a miss.
pub const MIN_KEPT_IN_SAMPLE: f64 = 100.0;
/// Buffer of the copy files' writers and readers.
const IO_BUFFER_BYTES: usize = 1 << 20;

/// The score at or beyond which a row is copied (Hard: `score ≥ t`; Easy:
/// `score ≤ t`), from the `sample` scores (non-finite ones are ignored) when
/// a `fraction` of the rows is kept; `None` when the sample is too small or the
/// copies would exceed [`MAX_PREFETCH_FRACTION`] of the rows.
pub fn prefetch_threshold(sample: &[f32], fraction: f64, keep: Keep) -> Option<f32> {
    let mut s: Vec<f32> = sample.iter().copied().filter(|v| v.is_finite()).collect();
    let n = s.len();
    if n < MIN_SAMPLE || !(fraction > 0.0 && fraction <= 1.0) || fraction * (n as f64) < MIN_KEPT_IN_SAMPLE {
        return None;
    }
    let q = fraction;
    let reach = q + MARGIN_SIGMAS * (q * (1.0 - q) / n as f64).sqrt() + 1.0 / n as f64;
    if reach > MAX_PREFETCH_FRACTION {
        return None;
    }
    // The r-th most extreme sample score, r = ⌈reach·n⌉ (1-based).
    let r = ((reach * n as f64).ceil() as usize).clamp(1, n);
    match keep {
        Keep::Hard => s.select_nth_unstable_by(r - 1, |a, b| b.total_cmp(a)),
        Keep::Easy => s.select_nth_unstable_by(r - 1, |a, b| a.total_cmp(b)),
    };
    Some(s[r - 1])
}

/// The copies of one run (module doc).
pub struct KeptPrefetch {
    dir: SpillDir,
    column: String,
    dim: usize,
    threshold: f32,
    keep: Keep,
    /// Per shard: the rows copied (ascending), once its writer finished.
    rows: Vec<Mutex<Option<Vec<u32>>>>,
    /// The first error a writer met (the copies then serve no shard).
    failure: Mutex<Option<String>>,
}

impl KeptPrefetch {
    /// Copies of `column` (`dim` floats per row) for `shards` shards, in a new
    /// temporary folder under `parent`, for rows whose score is at or beyond
    /// `threshold` (see [`prefetch_threshold`]).
    pub fn create(
        parent: Option<&std::path::Path>,
        column: &str,
        dim: usize,
        threshold: f32,
        keep: Keep,
        shards: usize,
    ) -> Result<Self> {
        Ok(KeptPrefetch {
            dir: SpillDir::create(parent, "prefetch")?,
            column: column.to_string(),
            dim,
            threshold,
            keep,
            rows: (0..shards).map(|_| Mutex::new(None)).collect(),
            failure: Mutex::new(None),
        })
    }

    /// Records that copying failed (a full disk, say): the copies are then not
    /// used, and the run goes on reading the shards as without them.
    pub fn fail(&self, e: Error) {
        self.failure
            .lock()
            .expect("no panic holds it")
            .get_or_insert(e.to_string());
    }

    /// The first failure recorded, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("no panic holds it").clone()
    }

    /// The column copied.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// Whether a row with this score is copied (never a NaN score).
    pub fn wants(&self, score: f32) -> bool {
        match self.keep {
            Keep::Hard => score >= self.threshold,
            Keep::Easy => score <= self.threshold,
        }
    }

    fn path(&self, shard: usize) -> PathBuf {
        self.dir.path().join(format!("shard-{shard:05}.f32"))
    }

    /// A writer for shard `shard`'s copies.
    pub fn writer(&self, shard: usize) -> Result<PrefetchWriter<'_>> {
        let path = self.path(shard);
        let f = File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
        Ok(PrefetchWriter {
            owner: self,
            shard,
            out: BufWriter::with_capacity(IO_BUFFER_BYTES, f),
            rows: Vec::new(),
        })
    }

    /// Rows copied in all, once every writer finished.
    pub fn copied(&self) -> u64 {
        self.rows
            .iter()
            .map(|r| {
                r.lock()
                    .expect("no panic holds it")
                    .as_ref()
                    .map_or(0, |v| v.len() as u64)
            })
            .sum()
    }

    /// Whether every row flagged in `kept` (one flag per row of shard `s`,
    /// for each shard in order) was copied.
    pub fn covers(&self, kept_by_shard: &[&[bool]]) -> bool {
        if self.failure().is_some() {
            return false;
        }
        kept_by_shard.iter().enumerate().all(|(s, kept)| {
            let guard = self.rows.get(s).map(|m| m.lock().expect("no panic holds it"));
            let Some(Some(rows)) = guard.as_deref() else {
                return false;
            };
            let mut it = rows.iter().peekable();
            kept.iter().enumerate().filter(|(_, k)| **k).all(|(i, _)| {
                while it.next_if(|&&r| (r as usize) < i).is_some() {}
                it.peek().is_some_and(|&&r| r as usize == i)
            })
        })
    }

    /// The rows copied of shard `s` (ascending), once its writer finished.
    pub fn rows(&self, s: usize) -> Option<Vec<u32>> {
        self.rows.get(s)?.lock().expect("no panic holds it").clone()
    }

    /// Opens shard `s`'s copies: `dim` little-endian f32 per row of [`Self::rows`].
    pub fn open(&self, s: usize) -> Result<Box<dyn Read>> {
        let path = self.path(s);
        let f = File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
        Ok(Box::new(BufReader::with_capacity(IO_BUFFER_BYTES, f)))
    }
}

/// Appends one shard's copies, in row order.
pub struct PrefetchWriter<'a> {
    owner: &'a KeptPrefetch,
    shard: usize,
    out: BufWriter<File>,
    rows: Vec<u32>,
}

impl PrefetchWriter<'_> {
    /// Copies row `row` of the shard (rows must come in ascending order), with
    /// its raw values `x`.
    pub fn push(&mut self, row: u32, x: &[f32]) -> Result<()> {
        debug_assert!(self.rows.last().is_none_or(|&r| r < row));
        debug_assert_eq!(x.len(), self.owner.dim);
        crate::io::le::with_bytes(x, |b| self.out.write_all(b))
            .map_err(|e| Error::io("writing", self.owner.path(self.shard), e))?;
        self.rows.push(row);
        Ok(())
    }

    /// Flushes the file and records the rows copied.
    pub fn finish(mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::io("writing", self.owner.path(self.shard), e))?;
        *self.owner.rows[self.shard].lock().expect("no panic holds it") = Some(std::mem::take(&mut self.rows));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn the_threshold_reaches_a_little_past_the_sample_quantile() {
        // Scores 0..10000 in a shuffled order: the 30% largest are 7000.., the margin at
        // n = 10000 is 6·√(0.21/10000) + 1/10000 ≈ 0.0276, so the 3276th largest (6724).
        let mut s: Vec<f32> = (0..10_000).map(|v| v as f32).collect();
        let mut rng = Rng::new(1);
        for i in (1..s.len()).rev() {
            s.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let t = prefetch_threshold(&s, 0.3, Keep::Hard).unwrap();
        assert_eq!(t, 6724.0);
        let t = prefetch_threshold(&s, 0.3, Keep::Easy).unwrap();
        assert_eq!(t, 3275.0);
        // NaN scores (unusable rows) are left out, not ranked.
        let mut with_nan = s.clone();
        with_nan.extend([f32::NAN; 50]);
        assert_eq!(prefetch_threshold(&with_nan, 0.3, Keep::Hard), Some(6724.0));
    }

    #[test]
    fn no_threshold_for_small_samples_or_large_fractions() {
        let s: Vec<f32> = (0..10_000).map(|v| v as f32).collect();
        assert_eq!(prefetch_threshold(&s[..MIN_SAMPLE - 1], 0.3, Keep::Hard), None);
        assert!(prefetch_threshold(&s[..MIN_SAMPLE], 0.3, Keep::Hard).is_some());
        assert_eq!(prefetch_threshold(&s, 0.49, Keep::Hard), None);
        assert_eq!(prefetch_threshold(&s, 0.0, Keep::Hard), None);
        assert_eq!(prefetch_threshold(&s, f64::NAN, Keep::Hard), None);
        // Too few kept rows in the sample for the margin's normal approximation.
        assert_eq!(prefetch_threshold(&s, 0.0099, Keep::Hard), None);
        assert!(prefetch_threshold(&s, 0.01, Keep::Hard).is_some());
    }

    #[test]
    fn the_threshold_covers_the_kept_rows_of_the_population() {
        // Many seeds, each a uniform sample of 2000 from 40000 skewed scores: the rows
        // at or beyond the threshold always include the population's kept rows.
        let pop: Vec<f32> = (0..40_000u32).map(|i| ((i as f32) * 0.618).fract().powi(3)).collect();
        for (q, keep) in [(0.3, Keep::Hard), (0.1, Keep::Easy), (0.05, Keep::Hard)] {
            let m = (q * pop.len() as f64) as usize;
            let mut sorted = pop.clone();
            sorted.sort_by(|a, b| match keep {
                Keep::Hard => b.total_cmp(a),
                Keep::Easy => a.total_cmp(b),
            });
            let boundary = sorted[m - 1];
            for seed in 0..50 {
                let idx = Rng::new(seed).sample_indices(pop.len() as u64, 2000);
                let sample: Vec<f32> = idx.iter().map(|&i| pop[i as usize]).collect();
                let t = prefetch_threshold(&sample, q, keep).unwrap();
                let copied = pop
                    .iter()
                    .filter(|&&v| if keep == Keep::Hard { v >= t } else { v <= t })
                    .count();
                assert!(
                    match keep {
                        Keep::Hard => boundary >= t,
                        Keep::Easy => boundary <= t,
                    },
                    "q {q} seed {seed}: boundary {boundary} beyond t {t}"
                );
                // And not far beyond: the margin is a few percent of the rows.
                assert!(
                    copied as f64 <= (q + 0.1) * pop.len() as f64,
                    "q {q} seed {seed}: {copied}"
                );
            }
        }
    }

    #[test]
    fn copies_round_trip_and_cover_only_what_was_copied() {
        let dir = tempfile::tempdir().unwrap();
        let kp = KeptPrefetch::create(Some(dir.path()), "emb", 3, 0.5, Keep::Hard, 2).unwrap();
        assert!(kp.wants(0.5) && kp.wants(0.7) && !kp.wants(0.4) && !kp.wants(f32::NAN));
        let mut w = kp.writer(0).unwrap();
        w.push(1, &[1.0, -0.0, f32::MIN_POSITIVE]).unwrap();
        w.push(4, &[2.5, 3.5, -4.5]).unwrap();
        w.finish().unwrap();
        // Shard 1 not finished yet: nothing covers it.
        assert!(!kp.covers(&[&[false, true, false, false, true], &[false]]));
        kp.writer(1).unwrap().finish().unwrap();
        assert_eq!(kp.copied(), 2);
        assert_eq!(kp.rows(0), Some(vec![1, 4]));
        assert!(kp.covers(&[&[false, true, false, false, true], &[false, false]]));
        assert!(kp.covers(&[&[false, false, false, false, true], &[false]]));
        assert!(!kp.covers(&[&[true, true, false, false, true], &[false]]));
        assert!(!kp.covers(&[&[false, true, false, false, true, true], &[false]]));
        assert!(!kp.covers(&[&[false; 5], &[true]]));
        let mut bytes = Vec::new();
        kp.open(0).unwrap().read_to_end(&mut bytes).unwrap();
        let vals: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let want: Vec<u32> = [1.0f32, -0.0, f32::MIN_POSITIVE, 2.5, 3.5, -4.5]
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(vals, want);
        let folder = dir.path().read_dir().unwrap().next().unwrap().unwrap().path();
        drop(kp);
        assert!(!folder.exists(), "the copies are removed with the run");
    }
}
