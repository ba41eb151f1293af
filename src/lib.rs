//! # dprune: data and token pruning
//!
//! dprune decides which samples of a large dataset are worth keeping, and
//! which visual tokens a VLM can skip.
//!
//! ## Overview
//!
//! * [`pipeline::run_filter`] runs a whole `dprune filter` job: Parquet
//!   shards in ([`io`]), embeddings from a column or `.npy` sidecars
//!   ([`io::EmbeddingSource`]), k-means ([`cluster::KMeans`]), scores
//!   ([`score`]), an exact budget ([`select`]), pruned Parquet and a report
//!   out.
//! * The pieces are usable alone: [`cluster::KMeans::fit`] on a slice,
//!   [`score::prototypicality`] for any centroids, [`select::select_top`]
//!   for any scores.
//! * Removal stages and rules of `filter` ([`pipeline::stages`],
//!   [`pipeline::budget`]): exact dedup, SemDeDup over clusters spilled to
//!   Arrow IPC ([`pipeline::spill`]), quality percentiles, DBP, CCS,
//!   Moderate, kNN density.
//! * [`pipeline::annotate`] runs `dprune annotate` / `dprune demos`:
//!   selective annotation for in-context learning ([`select::annotate`]:
//!   vote-k, IDEAL, facility location, k-center) over a kNN graph
//!   ([`cluster::knn`]), and demonstration retrieval.
//! * [`tokens`] prunes visual tokens at VLM inference.
//! * `datafusion` (feature `datafusion`, on by default): the dprune
//!   functions for DataFusion SQL (`dprune_nearest`, `dprune_embed`, ...),
//!   used by `dprune sql` and `filter --where`; with feature `ballista`
//!   (on by default) `datafusion::distributed` holds the Ballista
//!   scheduler/executor processes, the plan codec and the scan/write plans
//!   behind `filter --cluster` (driven by `pipeline::filter`).
//!
//! ## Example
//!
//! ```
//! use dprune::cluster::{KMeans, KMeansParams};
//! use dprune::score::prototypicality;
//! use dprune::select::{select_top, Keep};
//!
//! // Two tight groups of unit vectors (around x and y), each with one
//! // straggler leaning towards z (rows 3 and 7).
//! let rows: Vec<f32> = vec![
//!     1.0, 0.0, 0.0,   0.995, 0.0998, 0.0,   0.995, -0.0998, 0.0,   0.894, 0.0, 0.447,
//!     0.0, 1.0, 0.0,   0.0998, 0.995, 0.0,   -0.0998, 0.995, 0.0,   0.0, 0.894, 0.447,
//! ];
//! let km = KMeans::fit(&rows, 3, &KMeansParams::default().with_k(2).with_seed(1), &mut |_| {})?;
//! let (mut labels, mut scores) = (vec![0; 8], vec![0.0; 8]);
//! prototypicality(&km.centroids, &rows, &mut labels, &mut scores);
//! // Keep the two least prototypical rows: the stragglers.
//! let kept = select_top(&scores, &[true; 8], 2, Keep::Hard);
//! assert_eq!(kept, vec![false, false, false, true, false, false, false, true]);
//! # Ok::<(), dprune::Error>(())
//! ```
//!
//! ## Glossary
//!
//! `N` rows, `d` or `dim` embedding dimension, `k` clusters, `B` budget
//! (rows kept), SSP self-supervised prototypes (Sorscher et al. 2022).

#![warn(missing_docs)]

mod background;
pub mod cluster;
#[cfg(feature = "datafusion")]
pub mod datafusion;
pub mod distance;
pub mod embed;
pub mod error;
pub mod io;
pub mod pipeline;
pub mod rng;
pub mod score;
pub mod select;
pub mod tokens;

pub use error::{Error, Result};
