//! dprune inside a query engine: scalar functions for DataFusion SQL and
//! DataFrames, and the `filter --where` predicate.
//!
//! [`register`] adds to a [`SessionContext`]:
//!
//! | function | returns |
//! |---|---|
//! | `dprune_nearest(embedding)` | `struct {cluster: UInt32, distance: Float32}`: nearest centroid and 1 − cos to it (the `proto` score of `dprune filter`) |
//! | `dprune_cosine(a, b)` | `Float32` |
//! | `dprune_normalize(embedding)` | the same list type, unit L2 norm |
//! | `dprune_embed(text)` | `FixedSizeList<Float32, dim>` from the encoder given |
//!
//! Embeddings are `FixedSizeList` or `List`/`LargeList` of `Float32`,
//! `Float16` or `Float64`. Null in, null out; wrong types and dimensions
//! are plan or execution errors naming the function and argument. The
//! selection steps of a prune are plain SQL over these (`row_number()`
//! windows, global or `PARTITION BY cluster`); see the README's "SQL"
//! section for a complete prune that keeps exactly the rows
//! `dprune filter` keeps.
//!
//! ```no_run
//! # async fn demo() -> datafusion::error::Result<()> {
//! use datafusion::prelude::*;
//! use dprune::datafusion::{FunctionParams, register};
//!
//! let ctx = SessionContext::new();
//! let opts = FunctionParams { centroids: Some("centroids.npy".into()), ..Default::default() }
//!     .load()
//!     .expect("centroids");
//! register(&ctx, &opts);
//! ctx.register_parquet("t", "shards/", ParquetReadOptions::default()).await?;
//! let df = ctx.sql("SELECT id, dprune_nearest(clip_emb)['distance'] AS d FROM t").await?;
//! # Ok(()) }
//! ```
//!
//! Only `pipeline` and the CLI use this module; it uses `io`, `embed`,
//! `cluster` and `score`, never the other way round.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use crate::cluster::{Centroids, Distance};
use crate::embed::{Encoder, EncoderSpec};
use crate::io::npy;
use crate::{Error, Result};

#[cfg(feature = "ballista")]
pub mod distributed;
pub mod functions;
pub mod plans;
pub mod predicate;
mod vectors;

pub use functions::{COSINE, Cosine, EMBED, Embed, NEAREST, NORMALIZE, Nearest, Normalize};
pub use predicate::{WhereMask, where_mask};

/// What the functions need, as paths and flags (`dprune sql --centroids
/// --distance --model ...`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionParams {
    /// Centroids for `dprune_nearest` (`.npy`, `k × dim`).
    pub centroids: Option<PathBuf>,
    /// How `dprune_nearest` compares rows with centroids (cosine: the
    /// nearest by cosine; l2: the nearest by Euclidean distance). The
    /// distance returned is 1 − cos either way, as in `dprune filter`.
    pub distance: Distance,
    /// The encoder of `dprune_embed` (`column` is unused).
    pub encoder: Option<EncoderSpec>,
}

impl FunctionParams {
    /// Loads the centroids and builds the encoder.
    pub fn load(&self) -> Result<FunctionOptions> {
        let centroids = match &self.centroids {
            Some(path) => {
                let (data, _, dim) = npy::read_matrix(path)?;
                let c = Centroids::try_new(data, dim, self.distance).map_err(|e| Error::Npy {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                Some(Arc::new(c))
            }
            None => None,
        };
        let encoder = match &self.encoder {
            Some(spec) => {
                let spec = EncoderSpec {
                    column: if spec.column.is_empty() {
                        "dprune_embed".into()
                    } else {
                        spec.column.clone()
                    },
                    ..spec.clone()
                };
                Some(spec.build()?)
            }
            None => None,
        };
        Ok(FunctionOptions { centroids, encoder })
    }
}

/// What the functions use, loaded.
#[derive(Clone, Default)]
pub struct FunctionOptions {
    /// Centroids of `dprune_nearest` (without, it is a plan error that says
    /// how to give them).
    pub centroids: Option<Arc<Centroids>>,
    /// Encoder of `dprune_embed` (without, it is a plan error that says how
    /// to give one).
    pub encoder: Option<Arc<dyn Encoder>>,
}

impl std::fmt::Debug for FunctionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionOptions")
            .field(
                "centroids",
                &self.centroids.as_ref().map(|c| (c.k(), c.dim(), c.distance())),
            )
            .field("encoder", &self.encoder.as_ref().map(|e| e.info().describe()))
            .finish()
    }
}

/// The dprune functions as DataFusion UDFs (for the DataFrame API:
/// `udf.call(vec![col("emb")])`).
pub fn functions(opts: &FunctionOptions) -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(Nearest::new(opts.centroids.clone())),
        ScalarUDF::from(Cosine::default()),
        ScalarUDF::from(Normalize::default()),
        ScalarUDF::from(Embed::new(opts.encoder.clone())),
    ]
}

/// Registers [`functions()`] in `ctx`, for SQL and the DataFrame API.
pub fn register(ctx: &SessionContext, opts: &FunctionOptions) {
    for f in functions(opts) {
        ctx.register_udf(f);
    }
}
