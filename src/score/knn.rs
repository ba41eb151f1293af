//! kNN density (`data_pruning.md` §6): the mean cosine distance of a row
//! to its k nearest other rows. Large = isolated (hard, or noise); small =
//! dense. Exact, by blocked matrix products over unit rows, parallel over
//! row blocks; used per k-means cluster, so neighbours are searched among
//! the row's cluster (the rows a keep-hard rule competes with), and memory
//! is one cluster plus a tile per thread.

use rayon::prelude::*;

use crate::distance::dot_batch;

/// Neighbours averaged per row.
pub const DEFAULT_KNN: usize = 10;
/// Rows per tile of the similarity product.
const BLOCK: usize = 512;

/// Mean cosine distance of every row of `rows` (`n × dim`, unit vectors)
/// to its `min(k, n − 1)` most similar other rows (self excluded by index;
/// equal similarities are interchangeable, so ties do not matter). A lone
/// row gets 1 (orthogonal to everything).
pub fn knn_distance(rows: &[f32], dim: usize, k: usize) -> Vec<f32> {
    let n = rows.len() / dim.max(1);
    let k = k.min(n.saturating_sub(1));
    if k == 0 {
        return vec![1.0; n];
    }
    (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .flat_map_iter(|bi| {
            let r0 = bi * BLOCK;
            let r1 = (r0 + BLOCK).min(n);
            let tr = r1 - r0;
            // top[i]: the k largest similarities of row r0 + i, descending.
            let mut top = vec![f32::NEG_INFINITY; tr * k];
            let mut out = Vec::new();
            for c0 in (0..n).step_by(BLOCK) {
                let c1 = (c0 + BLOCK).min(n);
                let tc = c1 - c0;
                out.resize(tr * tc, 0.0);
                dot_batch(&rows[r0 * dim..r1 * dim], &rows[c0 * dim..c1 * dim], dim, &mut out);
                for i in 0..tr {
                    let t = &mut top[i * k..(i + 1) * k];
                    for (j, &s) in out[i * tc..(i + 1) * tc].iter().enumerate() {
                        if c0 + j != r0 + i && s > t[k - 1] {
                            let mut p = k - 1;
                            while p > 0 && t[p - 1] < s {
                                t[p] = t[p - 1];
                                p -= 1;
                            }
                            t[p] = s;
                        }
                    }
                }
            }
            top.chunks_exact(k)
                .map(|t| 1.0 - (t.iter().map(|&v| v as f64).sum::<f64>() / k as f64) as f32)
                .collect::<Vec<f32>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::{dot, normalize};
    use crate::rng::Rng;
    use proptest::prelude::*;

    fn slow(rows: &[f32], dim: usize, k: usize) -> Vec<f32> {
        let n = rows.len() / dim;
        (0..n)
            .map(|i| {
                let mut s: Vec<f32> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| dot(&rows[i * dim..(i + 1) * dim], &rows[j * dim..(j + 1) * dim]))
                    .collect();
                s.sort_by(|a, b| b.total_cmp(a));
                let kk = k.min(s.len());
                if kk == 0 {
                    return 1.0;
                }
                1.0 - s[..kk].iter().map(|&v| v as f64).sum::<f64>() as f32 / kk as f32
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn matches_brute_force(n in 1usize..1200, dim in 1usize..9, k in 1usize..12, seed in any::<u64>()) {
            let mut r = Rng::new(seed);
            let mut rows: Vec<f32> = (0..n * dim).map(|_| r.normal() as f32).collect();
            rows.chunks_exact_mut(dim).for_each(|x| { normalize(x); });
            let fast = knn_distance(&rows, dim, k);
            let want = slow(&rows, dim, k);
            for (a, b) in fast.iter().zip(&want) {
                prop_assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn isolated_rows_score_higher() {
        // Five copies of one direction and one row far away.
        let rows = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let d = knn_distance(&rows, 2, 2);
        assert!(d[..5].iter().all(|&v| v.abs() < 1e-6));
        assert!((d[5] - 1.0).abs() < 1e-6);
        assert_eq!(knn_distance(&[1.0, 0.0], 2, 10), vec![1.0]);
    }
}
