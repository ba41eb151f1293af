//! Visual-token pruning benches (work in progress).
fn main() {}
