//! Randomness: every random choice of a run comes from one ChaCha generator seeded by the run's
//! seed. Each purpose (network, disk, workload...) reads its own ChaCha stream of that generator
//! (`set_stream`), so adding a draw in one model never shifts the choices of another, and a seed
//! keeps meaning the same scenario as the models grow.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The generator type of every stream.
pub type SimRng = ChaCha8Rng;

/// What a stream is used for. The discriminant is the ChaCha stream number: never reorder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Node count, node keys and core RNG seeds.
    Topology = 1,
    /// Latency, loss, duplication.
    Network = 2,
    /// fsync latency.
    Disk = 3,
    /// The simulated provider: turn shapes and durations.
    Runtime = 4,
    /// Clients: sessions, target nodes, retries.
    Workload = 5,
    /// The fault schedule.
    Faults = 6,
    /// Clock drift and offsets.
    Clock = 7,
}

/// The generator for `purpose` in the run seeded by `seed`.
pub fn stream(seed: u64, purpose: Stream) -> SimRng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(purpose as u64);
    rng
}

/// A uniform draw in `lo..=hi` (returns `lo` when the range is empty).
pub fn between(rng: &mut SimRng, lo: u64, hi: u64) -> u64 {
    if hi <= lo { lo } else { rng.random_range(lo..=hi) }
}

/// True with probability `p` (clamped to 0..=1).
pub fn chance(rng: &mut SimRng, p: f64) -> bool {
    if p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.random_bool(p)
    }
}

/// A uniform index below `len` (0 when `len` is 0).
pub fn index(rng: &mut SimRng, len: usize) -> usize {
    if len <= 1 { 0 } else { rng.random_range(0..len) }
}

/// 32 random bytes (node keys, core RNG seeds).
pub fn bytes32(rng: &mut SimRng) -> [u8; 32] {
    rng.random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let draw = |seed, purpose| {
            let mut s = stream(seed, purpose);
            (0..8).map(|_| between(&mut s, 0, u64::MAX)).collect::<Vec<u64>>()
        };
        assert_eq!(draw(7, Stream::Network), draw(7, Stream::Network));
        assert_ne!(draw(7, Stream::Network), draw(7, Stream::Disk));
        assert_ne!(draw(7, Stream::Network), draw(8, Stream::Network));
    }
}
