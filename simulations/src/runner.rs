//! Running many seeds on all cores, and the one-line command that replays one of them.

use std::ops::RangeInclusive;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use indicatif::ProgressBar;

use crate::checker::{Invariant, Violation};
use crate::faults::{FaultSet, Plant};
use crate::metrics::{RunReport, Summary};
use crate::trace::Trace;
use crate::world::{RUN_MS_DEFAULT, SimConfig, World};

/// Smallest and largest cluster a run may have.
pub const NODES_MIN: usize = 1;
pub const NODES_RUN_MAX: usize = 64;

/// What `run` does.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub seeds: u64,
    pub seed_start: u64,
    pub nodes: RangeInclusive<usize>,
    pub faults: FaultSet,
    pub plant: Option<Plant>,
    pub threads: usize,
    pub run_ms: u64,
    /// Stop handing out seeds after the first violation.
    pub stop_at_first_failure: bool,
}

impl RunSpec {
    pub fn new(
        seeds: u64,
        nodes: RangeInclusive<usize>,
        faults: FaultSet,
        plant: Option<Plant>,
    ) -> Self {
        RunSpec {
            seeds,
            seed_start: 0,
            nodes,
            faults,
            plant,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            run_ms: RUN_MS_DEFAULT,
            stop_at_first_failure: false,
        }
    }
}

/// The cluster size of `seed` within `range` (a pure function of the seed, so a run over a
/// range and the replay of one seed agree).
pub fn nodes_for(seed: u64, range: &RangeInclusive<usize>) -> usize {
    let (lo, hi) = (*range.start(), (*range.end()).max(*range.start()));
    let span = (hi - lo + 1) as u64;
    // splitmix64: a fixed, well-mixed function of the seed.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    lo + usize::try_from(z % span).unwrap_or(0)
}

/// The command that replays one run.
pub fn replay_command(
    seed: u64,
    nodes: usize,
    faults: FaultSet,
    plant: Option<Plant>,
    run_ms: u64,
) -> String {
    let mut cmd = format!("beamclaw-sim replay --seed {seed} --nodes {nodes} --faults {faults}");
    if let Some(p) = plant {
        cmd.push_str(&format!(" --plant {p}"));
    }
    if run_ms != RUN_MS_DEFAULT {
        cmd.push_str(&format!(" --run-ms {run_ms}"));
    }
    cmd
}

/// Runs one seed (a panic of the simulator itself is reported as a violation).
pub fn run_one(
    seed: u64,
    nodes: usize,
    faults: FaultSet,
    plant: Option<Plant>,
    run_ms: u64,
    trace: Trace,
) -> RunReport {
    crate::install_panic_hook();
    let mut cfg = SimConfig::new(seed, nodes, faults, plant);
    cfg.run_ms = run_ms;
    match catch_unwind(AssertUnwindSafe(|| World::new(cfg, trace).run())) {
        Ok(report) => report,
        Err(panic) => RunReport {
            seed,
            nodes,
            violations: vec![Violation {
                invariant: Invariant::Bounds,
                at: 0,
                node: None,
                session: None,
                message: None,
                detail: format!("the simulator panicked: {}", crate::panic_text(panic.as_ref())),
            }],
            ..RunReport::default()
        },
    }
}

/// Runs `spec.seeds` seeds on `spec.threads` threads. Returns the summary and the reports of
/// the failing seeds, in seed order.
pub fn run_seeds(spec: &RunSpec, progress: Option<&ProgressBar>) -> (Summary, Vec<RunReport>) {
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let summary = Mutex::new(Summary::default());
    let failures = Mutex::new(Vec::new());
    let threads = spec.threads.clamp(1, 256);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= spec.seeds {
                        break;
                    }
                    let seed = spec.seed_start + k;
                    let nodes = nodes_for(seed, &spec.nodes);
                    let report =
                        run_one(seed, nodes, spec.faults, spec.plant, spec.run_ms, Trace::Off);
                    if !report.violations.is_empty() {
                        if spec.stop_at_first_failure {
                            stop.store(true, Ordering::Relaxed);
                        }
                        failures.lock().unwrap_or_else(|e| e.into_inner()).push(report.clone());
                    }
                    summary.lock().unwrap_or_else(|e| e.into_inner()).add(&report);
                    if let Some(bar) = progress {
                        bar.inc(1);
                    }
                }
            });
        }
    });
    let summary = summary.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_by_key(|r| r.seed);
    (summary, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_counts_cover_the_range_and_depend_only_on_the_seed() {
        let range = 3..=9;
        let counts: std::collections::BTreeSet<usize> =
            (0..500).map(|s| nodes_for(s, &range)).collect();
        assert_eq!(counts, (3..=9).collect());
        assert_eq!(nodes_for(42, &range), nodes_for(42, &range));
        assert_eq!(nodes_for(42, &(5..=5)), 5);
    }

    #[test]
    fn the_replay_command_names_everything_that_shapes_the_run() {
        let faults = FaultSet::parse("crash,deploy").unwrap_or_default();
        assert_eq!(
            replay_command(17, 5, faults, Some(Plant::SkipAntiEntropy), RUN_MS_DEFAULT),
            "beamclaw-sim replay --seed 17 --nodes 5 --faults crash,deploy --plant skip-anti-entropy"
        );
    }
}
