//! The CI check: 200 seeds with every fault kind, clusters of 3 to 7 nodes, and no invariant
//! violated. `beamclaw-sim run --seeds 200 --nodes 3..7` runs the same seeds.

use beamclaw_sim::faults::FaultSet;
use beamclaw_sim::runner::{RunSpec, replay_command, run_seeds};

/// Seeds CI runs.
const CI_SEEDS: u64 = 200;

#[test]
fn two_hundred_seeds_with_every_fault_violate_nothing() {
    let spec = RunSpec::new(CI_SEEDS, 3..=7, FaultSet::all(), None);
    let (summary, failures) = run_seeds(&spec, None);
    let report: Vec<String> = failures
        .iter()
        .map(|r| {
            let first = r.violations.first().map(|v| v.describe(r.seed)).unwrap_or_default();
            format!(
                "{first}\n    replay: {}",
                replay_command(r.seed, r.nodes, spec.faults, None, spec.run_ms)
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {CI_SEEDS} seeds failed:\n{}",
        failures.len(),
        report.join("\n")
    );
    assert_eq!(summary.seeds, CI_SEEDS);
    // The runs did real work: messages were acknowledged, owners failed over and handed off.
    assert!(summary.messages_acked > CI_SEEDS * 20, "{} messages acked", summary.messages_acked);
    assert!(!summary.failover_ms.is_empty(), "no failover measured");
    assert!(!summary.handoff_pause_ms.is_empty(), "no handoff measured");
}
