//! Where `filter` gets embeddings and centroids from.

use std::path::Path;

use crate::cluster::{Centroids, Distance};
use crate::embed::TextSource;
use crate::io::embeddings::{ColumnSource, EmbeddingSource, NpySidecarSource};
use crate::io::{Dataset, expand_inputs, npy};
use crate::pipeline::filter::EmbeddingSpec;
use crate::pipeline::report::KMeansReport;
use crate::{Error, Result};

pub(super) fn open_source(data: &Dataset, spec: &EmbeddingSpec) -> Result<Box<dyn EmbeddingSource>> {
    Ok(match spec {
        EmbeddingSpec::Auto => Box::new(ColumnSource::detect(data, None)?),
        EmbeddingSpec::Column(c) => Box::new(ColumnSource::detect(data, Some(c))?),
        EmbeddingSpec::Sidecars(pats) => {
            let files = expand_inputs(pats)?;
            Box::new(NpySidecarSource::open(data, &files)?)
        }
        EmbeddingSpec::Encode(spec) => Box::new(TextSource::open(data, spec)?),
    })
}

pub(super) fn load_centroids(path: &Path, dim: usize, distance: Distance) -> Result<(Centroids, KMeansReport)> {
    let (data, k, d) = npy::read_matrix(path)?;
    if d != dim {
        return Err(Error::Dimension {
            path: path.to_path_buf(),
            row: None,
            expected: dim,
            found: d,
        });
    }
    let c = Centroids::try_new(data, d, distance).map_err(|e| Error::Npy {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let kr = KMeansReport {
        k,
        source: path.display().to_string(),
        train_rows: 0,
        iterations: 0,
        converged: false,
        inertia: None,
        inertia_history: vec![],
        searched_history: vec![],
        reseeded_empty: 0,
        saved_to: None,
    };
    Ok((c, kr))
}
