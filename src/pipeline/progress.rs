//! Progress reporting hooks. The library never prints: a front end (the
//! CLI's progress bars, a notebook, a log) implements [`Progress`].

/// A long pass of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Reading rows to draw the k-means training sample.
    Sample,
    /// Lloyd iterations (counted in iterations).
    KMeans,
    /// Assigning and scoring every row.
    Score,
    /// SemDeDup over the spilled clusters.
    Dedup,
    /// kNN density over the spilled clusters.
    Knn,
    /// Writing outputs.
    Write,
}

impl Pass {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Sample => "sample",
            Pass::KMeans => "k-means",
            Pass::Score => "score",
            Pass::Dedup => "semdedup",
            Pass::Knn => "knn",
            Pass::Write => "write",
        }
    }

    /// What `advance` counts.
    pub fn unit(self) -> &'static str {
        match self {
            Pass::KMeans => "iterations",
            _ => "rows",
        }
    }
}

/// Receives progress of a run. Calls come from worker threads.
pub trait Progress: Sync {
    /// A pass starts; `total` units are expected.
    fn begin(&self, pass: Pass, total: u64);
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// The current pass ended.
    fn end(&self);
    /// A warning a user should see (also recorded in the report).
    fn warn(&self, message: &str);
}

/// Ignores all progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _: Pass, _: u64) {}
    fn advance(&self, _: u64) {}
    fn end(&self) {}
    fn warn(&self, _: &str) {}
}
