//! Virtual time. The simulator keeps one global clock in microseconds (LAN latencies are
//! fractions of a millisecond); each node reads its own monotonic clock in milliseconds, which
//! may run fast or slow (fault `drift`) and start at an offset.

use beamclaw_mesh::core::Millis;

/// Global virtual time, in microseconds since the start of the run.
pub type Micros = u64;

/// Microseconds per millisecond.
pub const US_PER_MS: u64 = 1_000;

/// Parts per million.
const PPM: i128 = 1_000_000;

/// Largest drift a node clock may have, in parts per million (fault `drift`). Quartz drifts by
/// about 100 ppm; 5,000 ppm (0.5 %) models a VM whose clock is badly steered, well beyond what
/// any timer in the core should be sensitive to.
pub const DRIFT_PPM_MAX: i64 = 5_000;

/// Largest offset of a node's monotonic clock from the global clock, in milliseconds (fault
/// `drift`): nodes boot at different times, so their monotonic clocks never agree.
pub const CLOCK_OFFSET_MS_MAX: u64 = 3_600_000;

/// A node's clock: `node_us = offset + global * (1 + ppm / 10^6)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    pub ppm: i64,
    pub offset_us: u64,
}

impl Clock {
    fn node_us(&self, global: Micros) -> i128 {
        let g = i128::from(global);
        i128::from(self.offset_us) + g * (PPM + i128::from(self.ppm)) / PPM
    }

    /// The node's clock, in milliseconds, at global time `global`.
    pub fn node_ms(&self, global: Micros) -> Millis {
        u64::try_from(self.node_us(global) / i128::from(US_PER_MS)).unwrap_or(0)
    }

    /// The first global time at or after `now` at which the node's clock reads `at_ms` or
    /// later (when a timer the node set for `at_ms` fires). Saturates far in the future.
    pub fn global_at(&self, at_ms: Millis, now: Micros) -> Micros {
        if self.node_ms(now) >= at_ms {
            return now;
        }
        let target = i128::from(at_ms) * i128::from(US_PER_MS) - i128::from(self.offset_us);
        let rate = PPM + i128::from(self.ppm);
        // Smallest g with g * rate / PPM >= target (rate > 0 because |ppm| < 10^6).
        let g = (target * PPM + rate - 1) / rate;
        u64::try_from(g.max(i128::from(now))).unwrap_or(u64::MAX / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_at_the_first_global_instant_the_node_clock_reaches_them() {
        for clock in [
            Clock::default(),
            Clock { ppm: DRIFT_PPM_MAX, offset_us: 1_234_567 },
            Clock { ppm: -DRIFT_PPM_MAX, offset_us: 999 },
            Clock { ppm: 37, offset_us: 0 },
        ] {
            for now in [0u64, 1, 999, 12_345_678] {
                for delta in [0u64, 1, 2, 500, 1_000, 60_000] {
                    let at = clock.node_ms(now) + delta;
                    let g = clock.global_at(at, now);
                    assert!(g >= now);
                    assert!(clock.node_ms(g) >= at, "{clock:?} now {now} at {at} g {g}");
                    if g > now {
                        assert!(clock.node_ms(g - 1) < at, "{clock:?} now {now} at {at} g {g}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_fast_clock_fires_timers_early_in_global_time() {
        let fast = Clock { ppm: DRIFT_PPM_MAX, offset_us: 0 };
        let g = fast.global_at(10_000, 0);
        assert!(g < 10_000 * US_PER_MS && g > 9_900 * US_PER_MS, "{g}");
    }
}
