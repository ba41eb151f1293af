//! A small seeded random number generator (SplitMix64, Steele et al. 2014).
//!
//! dprune's random choices must not change between releases of a
//! dependency, so the generator lives here: the same seed gives the same
//! stream forever. Parallel code derives one generator per fixed chunk with
//! [`Rng::for_stream`], never per thread, so results do not depend on the
//! thread count.

/// SplitMix64: 64 bits of state, passes BigCrush, more than enough for
/// sampling rows and seeding k-means.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function, usable as a stateless 64-bit hash.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `f64` in `[0, 1)` that [`Rng::next_f64`] makes of 64 random bits.
#[inline]
pub fn bits_to_f64(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng {
            state: mix64(seed ^ 0x6A09_E667_F3BC_C908),
        }
    }

    /// An independent generator for stream `stream` of `seed` (e.g. a chunk
    /// index or a purpose tag).
    pub fn for_stream(seed: u64, stream: u64) -> Self {
        Rng::new(mix64(seed).wrapping_add(mix64(stream.wrapping_add(GOLDEN))))
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// A uniform `f64` in `[0, 1)` (53 random bits).
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        bits_to_f64(self.next_u64())
    }

    /// The output that the `i + 1`-th call of [`Self::next_u64`] from the
    /// current state would return, without advancing: SplitMix64's state is
    /// a counter, so a stream can be drawn in any order (in parallel chunks,
    /// or interleaved with other streams) and still equal the sequential one.
    #[inline]
    pub fn peek_u64(&self, i: u64) -> u64 {
        mix64(self.state.wrapping_add(GOLDEN.wrapping_mul(i.wrapping_add(1))))
    }

    /// A uniform integer in `0..n` (Lemire's nearly-divisionless method).
    ///
    /// # Panics
    /// If `n == 0`.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            let lo = m as u64;
            if lo >= n || lo >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    /// A standard normal sample (Box-Muller; one of the pair is discarded).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// `m` distinct indices from `0..n`, ascending (Floyd's algorithm for
    /// small `m`, a partial shuffle otherwise). Returns all of `0..n` when
    /// `m >= n`.
    pub fn sample_indices(&mut self, n: u64, m: u64) -> Vec<u64> {
        if m >= n {
            return (0..n).collect();
        }
        let mut out: Vec<u64> = if m * 4 < n {
            // Floyd: m iterations, each O(1) expected with a hash set.
            let mut set = std::collections::HashSet::with_capacity(m as usize * 2);
            for j in (n - m)..n {
                let t = self.below(j + 1);
                if !set.insert(t) {
                    set.insert(j);
                }
            }
            set.into_iter().collect()
        } else {
            let mut all: Vec<u64> = (0..n).collect();
            for i in 0..m as usize {
                let j = i + self.below(n - i as u64) as usize;
                all.swap(i, j);
            }
            all.truncate(m as usize);
            all
        };
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_streams_differ() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(Rng::for_stream(7, 0).next_u64(), Rng::for_stream(7, 1).next_u64());
    }

    #[test]
    fn peek_equals_the_sequential_stream() {
        let mut r = Rng::for_stream(11, 3);
        let at = r.clone();
        for i in 0..100u64 {
            assert_eq!(at.peek_u64(i), r.next_u64(), "draw {i}");
        }
        let mut r = at.clone();
        r.next_u64();
        assert_eq!(at.peek_u64(1), r.peek_u64(0));
    }

    #[test]
    fn sample_indices_distinct_sorted_in_range() {
        for &(n, m) in &[(10u64, 3u64), (100, 90), (1000, 10), (5, 5), (5, 9), (1, 1)] {
            let s = Rng::new(3).sample_indices(n, m);
            assert_eq!(s.len() as u64, m.min(n));
            assert!(s.windows(2).all(|w| w[0] < w[1]));
            assert!(s.iter().all(|&i| i < n));
        }
    }

    #[test]
    fn below_is_roughly_uniform() {
        let mut r = Rng::new(1);
        let mut counts = [0u32; 6];
        for _ in 0..60_000 {
            counts[r.below(6) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }
}
