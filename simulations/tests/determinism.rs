//! The same seed replays byte for byte: two runs of one seed produce the same trace (every
//! event, every payload's fingerprint), and another seed does not.

use beamclaw_sim::faults::FaultSet;
use beamclaw_sim::runner::run_one;
use beamclaw_sim::trace::Trace;

/// Virtual length of these runs: enough for every fault kind to happen.
const RUN_MS: u64 = 40_000;

#[test]
fn the_same_seed_gives_a_byte_identical_trace() {
    let faults = FaultSet::all();
    let a = run_one(5, 4, faults, None, RUN_MS, Trace::hashing());
    let b = run_one(5, 4, faults, None, RUN_MS, Trace::hashing());
    let (hash_a, lines_a) = a.trace_digest.expect("hashed trace");
    let (hash_b, lines_b) = b.trace_digest.expect("hashed trace");
    assert!(lines_a > 10_000, "a run of {RUN_MS} ms should be busy, got {lines_a} trace lines");
    assert_eq!((hash_a, lines_a), (hash_b, lines_b), "seed 5 replayed differently");
    assert_eq!(a.messages_acked, b.messages_acked);
    assert_eq!(a.violations, b.violations);

    let c = run_one(6, 4, faults, None, RUN_MS, Trace::hashing());
    assert_ne!(c.trace_digest, a.trace_digest, "another seed must be another scenario");
}
