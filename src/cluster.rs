//! Clustering: k-means (spherical or Euclidean) and nearest-centroid search.
//!
//! Later: HNSW indexes and kNN graphs for de-duplication and annotation.

pub mod centroids;
pub mod certified;
mod drift;
pub mod hnsw;
pub mod kmeans;
pub mod knn;

pub use centroids::{Centroids, Distance};
pub use certified::CertifiedSearch;
pub use hnsw::{Hnsw, HnswParams};
pub use kmeans::{KMeans, KMeansParams};
