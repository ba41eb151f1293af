//! The HNSW kNN-graph stage on its own, for `benches/compare_hnsw.py`: reads
//! an `n × dim` matrix of unit vectors (raw little-endian f32, row-major, as
//! the script writes it), builds the index and the graph with the given
//! M / ef on a pool of `threads` threads, and prints one JSON line with the
//! build and query times and the recall@k against exact search on a sample.
//! The neighbour ids (`n × k` u32, nearest first) go to `out` when given.
//!
//! ```text
//! cargo run --release --example hnsw_graph -- ROWS.f32 DIM K M EF_C EF THREADS [OUT.u32]
//! ```

use std::time::Instant;

use dprune::cluster::knn::{graph_from_index, recall_at_k};
use dprune::cluster::{Hnsw, HnswParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 7 {
        return Err("usage: hnsw_graph ROWS.f32 DIM K M EF_C EF THREADS [OUT.u32]".into());
    }
    let num = |i: usize| -> Result<usize, Box<dyn std::error::Error>> {
        args[i]
            .parse::<usize>()
            .map_err(|e| format!("argument {}: `{}`: {e}", i + 1, args[i]).into())
    };
    let (dim, k, m, ef_c, ef, threads) = (num(1)?, num(2)?, num(3)?, num(4)?, num(5)?, num(6)?);
    let bytes = std::fs::read(&args[0])?;
    if dim == 0 || bytes.len() % (4 * dim) != 0 {
        return Err(format!(
            "{}: {} bytes is not a whole number of {dim}-d f32 rows",
            args[0],
            bytes.len()
        )
        .into());
    }
    let rows: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let n = rows.len() / dim;
    let params = HnswParams {
        m,
        ef_construction: ef_c,
        ef_search: ef,
        parallel_build: threads > 1,
        ..HnswParams::default()
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let (index, build_s) = pool.install(|| {
        let t = Instant::now();
        Hnsw::build(&rows, dim, &vec![true; n], &params).map(|h| (h, t.elapsed().as_secs_f64()))
    })?;
    let (graph, query_s) = pool.install(|| {
        let t = Instant::now();
        graph_from_index(&index, &rows, dim, k).map(|g| (g, t.elapsed().as_secs_f64()))
    })?;
    let recall = pool.install(|| recall_at_k(&graph, &rows, dim, 1000, 0))?;
    if let Some(out) = args.get(7) {
        let ids: Vec<u8> = (0..n)
            .flat_map(|i| graph.neighbors(i).iter().flat_map(|j| j.to_le_bytes()))
            .collect();
        std::fs::write(out, ids)?;
    }
    println!(
        "{{\"n\": {n}, \"d\": {dim}, \"k\": {k}, \"M\": {m}, \"ef_construction\": {ef_c}, \"ef\": {ef}, \
         \"threads\": {threads}, \"build_s\": {build_s:.3}, \"query_s\": {query_s:.3}, \"recall_sample_1000\": {recall:.5}}}"
    );
    Ok(())
}
