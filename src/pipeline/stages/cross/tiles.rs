//! The cross pass's products for one cluster of a partition: its guests against
//! one tile of its owners at a time, each tile a task of its own (see
//! [`super::cross_hits`]), in low precision where a filter runs, with the pairs
//! [`Pruning`](super::Pruning) rules out left out tile by tile.

use std::cell::OnceCell;
use std::ops::Range;
use std::sync::OnceLock;

use super::{Filter, Hit, Ordered, Pruning, Rows, Side};
use crate::distance::{I8Rows, dot_batch, fill_skipped_tiles};

/// Rows per tile of the cross pass's products, on each side.
pub(super) const CROSS_TILE: usize = 1024;

/// One cluster of [`super::cross_hits`]: its guests and owners in the order [`Pruning`]
/// wants, and each guest tile's int8 operands, quantized by the first owner tile
/// that needs them and reused by the others (the same bits as quantizing afresh).
pub(super) struct Prepared<'a> {
    pub(super) guests: Side<'a>,
    pub(super) owners: Side<'a>,
    order: Ordered,
    quantized: Vec<OnceLock<I8Rows>>,
}

impl<'a> Prepared<'a> {
    pub(super) fn new(c: u32, g: &'a [u32], o: &'a [u32], rows: Rows<'a>, dim: usize, prune: &Pruning) -> Self {
        let guests = Side {
            pos: g,
            rows: rows.guests,
            owners: rows.owners,
            all_owners: false,
            quantized: rows.quantized,
            dim,
        };
        let owners = Side {
            rows: rows.owners,
            pos: o,
            all_owners: true,
            ..guests
        };
        let order = prune.order(c, &guests, &owners);
        Prepared {
            guests,
            owners,
            quantized: (0..g.len().div_ceil(CROSS_TILE)).map(|_| OnceLock::new()).collect(),
            order,
        }
    }

    /// The hits of the guests against the owner tile from `b` (in pruning order); `s`
    /// is scratch for a tile's products.
    pub(super) fn tile_hits(&self, b: usize, thr: f32, low: Option<Filter>, s: &mut Vec<f32>) -> Vec<Hit> {
        let order = &self.order;
        let guests = Side {
            pos: &order.guests,
            ..self.guests
        };
        let owners = Side {
            pos: &order.owners,
            ..self.owners
        };
        let (g, o) = (guests.len(), owners.len());
        let dim = guests.dim;
        let mut hits = Vec::new();
        let mut push = |x: usize, y: usize, v: f32| {
            if v > thr {
                let (u, w) = (guests.id(x), owners.id(y));
                hits.push((u.max(w), v, u.min(w)));
            }
        };
        let b1 = (b + CROSS_TILE).min(o);
        let tile = owners.range(b..b1);
        let filter = low.map(|f| f.make(tile, thr));
        // Without a filter the f32 products want the owners contiguous: copied once
        // per owner tile, on the first guest tile.
        let plain = OnceCell::new();
        for a in (0..g).step_by(CROSS_TILE) {
            let a1 = (a + CROSS_TILE).min(g);
            let n = (a1 - a) * (b1 - b);
            if s.len() < n {
                s.resize(n, 0.0);
            }
            let s = &mut s[..n];
            let skip = |i: Range<usize>, j: Range<usize>| order.skips(a + i.start..a + i.end, b + j.start..b + j.end);
            match &filter {
                Some(f) => f.scan(
                    guests.range(a..a1),
                    &self.quantized[a / CROSS_TILE],
                    s,
                    &skip,
                    |x, y, v| push(a + x, b + y, v),
                ),
                None => {
                    dot_batch(
                        &guests.range(a..a1).gather(),
                        plain.get_or_init(|| tile.gather()),
                        dim,
                        s,
                    );
                    // The pairs left out, as the int8 kernel leaves them out.
                    fill_skipped_tiles(s, a1 - a, b1 - b, &skip);
                    for (x, line) in s.chunks_exact(b1 - b).enumerate() {
                        for (y, &v) in line.iter().enumerate() {
                            push(a + x, b + y, v);
                        }
                    }
                }
            }
        }
        hits
    }
}
