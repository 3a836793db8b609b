//! Each planted bug is caught within 200 seeds, by the invariant it breaks. A checker that
//! catches nothing planted is not a checker.

use beamclaw_sim::checker::Invariant;
use beamclaw_sim::faults::{FaultSet, Plant};
use beamclaw_sim::runner::{RunSpec, run_seeds};

/// Seeds each planted bug may take to be caught.
const SEEDS_MAX: u64 = 200;

fn caught(
    plant: Plant,
    faults: &str,
    nodes: std::ops::RangeInclusive<usize>,
    run_ms: u64,
    expected: &[Invariant],
) {
    let set = match FaultSet::parse(faults) {
        Ok(set) => set,
        Err(e) => panic!("{e}"),
    };
    let mut spec = RunSpec::new(SEEDS_MAX, nodes, set, Some(plant));
    spec.stop_at_first_failure = true;
    spec.run_ms = run_ms;
    let (summary, failures) = run_seeds(&spec, None);
    let first = failures
        .first()
        .unwrap_or_else(|| panic!("{plant} survived {} seeds with faults {faults}", summary.seeds));
    let v = &first.violations[0];
    assert!(
        expected.contains(&v.invariant),
        "{plant} was caught by the wrong invariant: {}",
        v.describe(first.seed)
    );
    eprintln!("{plant}: caught at seed {}: {}", first.seed, v.describe(first.seed));
}

#[test]
fn acknowledging_before_durable_is_caught() {
    caught(Plant::AckBeforeDurable, "none", 3..=3, 20_000, &[Invariant::AckedLost]);
}

#[test]
fn taking_over_without_raising_the_epoch_is_caught() {
    caught(
        Plant::TakeoverWithoutRaise,
        "crash",
        3..=5,
        40_000,
        &[Invariant::Epochs, Invariant::StaleEpoch],
    );
}

#[test]
fn skipping_anti_entropy_is_caught() {
    caught(
        Plant::SkipAntiEntropy,
        "partition,loss",
        3..=5,
        40_000,
        &[Invariant::Convergence, Invariant::AckedLost],
    );
}

#[test]
fn handing_off_without_equal_heads_is_caught() {
    caught(
        Plant::HandoffWithoutEqualHeads,
        "deploy",
        3..=5,
        60_000,
        &[
            Invariant::ExactlyOnce,
            Invariant::AckedLost,
            Invariant::Convergence,
            Invariant::StaleEpoch,
        ],
    );
}
