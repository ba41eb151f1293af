//! Clustering: k-means (spherical or Euclidean) and nearest-centroid search.
//!
//! Later: HNSW indexes and kNN graphs for de-duplication and annotation.

pub mod kmeans;

pub use kmeans::{Centroids, Distance, KMeans, KMeansParams};
