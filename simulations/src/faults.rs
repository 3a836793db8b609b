//! Faults: which kinds a run injects (`--faults`), the schedule drawn from the seed, and the
//! planted bugs (`--plant`).
//!
//! Every fault happens inside the fault window ([`FAULT_WINDOW_START_MS`] to
//! [`FAULT_WINDOW_END_MS`]), and every fault ends: partitions heal, crashed nodes restart, loss
//! stops, a rolling deploy runs to its end. The rest of the run is quiet, so the cluster can
//! reach quiescence and the checker can ask for convergence.

use std::fmt;

use beamclaw_mesh::core::PlantedBugs;

use crate::clock::{Micros, US_PER_MS};
use crate::net::LossRates;
use crate::rng::{SimRng, between, chance, index};

/// Faults start no earlier than this, in milliseconds from the start of the run (the cluster
/// forms first).
pub const FAULT_WINDOW_START_MS: u64 = 3_000;
/// Every fault other than a rolling deploy has ended by this time, in milliseconds.
pub const FAULT_WINDOW_END_MS: u64 = 32_000;
/// A rolling deploy starts in this window, in milliseconds.
pub const DEPLOY_START_MS_MIN: u64 = 4_000;
pub const DEPLOY_START_MS_MAX: u64 = 10_000;

/// Partitions per run, and how long each lasts (milliseconds).
pub const PARTITIONS_MAX: u64 = 3;
pub const PARTITION_MS_MIN: u64 = 1_000;
pub const PARTITION_MS_MAX: u64 = 10_000;
/// A flapping link toggles at this period (milliseconds).
pub const FLAP_PERIOD_MS_MIN: u64 = 50;
pub const FLAP_PERIOD_MS_MAX: u64 = 800;

/// Crashes per run, and how long a crashed node stays down (milliseconds).
pub const CRASHES_MAX: u64 = 3;
pub const CRASH_DOWN_MS_MIN: u64 = 300;
pub const CRASH_DOWN_MS_MAX: u64 = 8_000;

/// Loss episodes per run, how long each lasts (milliseconds) and their rates.
pub const LOSS_EPISODES_MAX: u64 = 2;
pub const LOSS_MS_MIN: u64 = 2_000;
pub const LOSS_MS_MAX: u64 = 10_000;
/// Datagram loss during an episode: up to this many per thousand.
pub const LOSS_DATAGRAM_PER_MILLE_MAX: u64 = 100;
/// Datagram duplication during an episode, per thousand.
pub const LOSS_DUP_PER_MILLE: u64 = 10;
/// Frame loss (connection resets) during an episode: up to this many per ten thousand.
pub const LOSS_FRAME_PER_10K_MAX: u64 = 20;

/// Which kinds of fault a run injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultSet {
    pub partition: bool,
    pub crash: bool,
    pub deploy: bool,
    pub loss: bool,
    pub drift: bool,
}

/// The fault names `--faults` accepts.
pub const FAULT_NAMES: [&str; 5] = ["partition", "crash", "deploy", "loss", "drift"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("unknown fault {0:?}; allowed: {allowed} (comma-separated), or none", allowed = FAULT_NAMES.join(","))]
    Fault(String),
    #[error("unknown planted bug {0:?}; allowed: {allowed}", allowed = Plant::ALL.map(Plant::name).join(", "))]
    Plant(String),
}

impl FaultSet {
    pub fn all() -> Self {
        FaultSet { partition: true, crash: true, deploy: true, loss: true, drift: true }
    }

    /// Parses `partition,crash,...` (or `none`, or an empty string).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut set = FaultSet::default();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "partition" => set.partition = true,
                "crash" => set.crash = true,
                "deploy" => set.deploy = true,
                "loss" => set.loss = true,
                "drift" => set.drift = true,
                "none" => {}
                other => return Err(ParseError::Fault(other.to_string())),
            }
        }
        Ok(set)
    }

    /// A cluster that stays connected: no partition, no crash, no loss (deploys and drift
    /// allowed). Exactly-once turns are an invariant only there.
    pub fn connected(&self) -> bool {
        !self.partition && !self.crash && !self.loss
    }

    pub fn is_empty(&self) -> bool {
        *self == FaultSet::default()
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = [self.partition, self.crash, self.deploy, self.loss, self.drift];
        let names: Vec<&str> =
            FAULT_NAMES.iter().zip(on).filter(|(_, on)| *on).map(|(n, _)| *n).collect();
        if names.is_empty() { f.write_str("none") } else { f.write_str(&names.join(",")) }
    }
}

/// The bugs `--plant` switches on (see `PlantedBugs` in the mesh core).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    AckBeforeDurable,
    TakeoverWithoutRaise,
    SkipAntiEntropy,
    HandoffWithoutEqualHeads,
}

impl Plant {
    pub const ALL: [Plant; 4] = [
        Plant::AckBeforeDurable,
        Plant::TakeoverWithoutRaise,
        Plant::SkipAntiEntropy,
        Plant::HandoffWithoutEqualHeads,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Plant::AckBeforeDurable => "ack-before-durable",
            Plant::TakeoverWithoutRaise => "takeover-without-raise",
            Plant::SkipAntiEntropy => "skip-anti-entropy",
            Plant::HandoffWithoutEqualHeads => "handoff-without-equal-heads",
        }
    }

    pub fn parse(text: &str) -> Result<Self, ParseError> {
        Plant::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| ParseError::Plant(text.to_string()))
    }

    pub fn bugs(plant: Option<Plant>) -> PlantedBugs {
        let mut bugs = PlantedBugs::default();
        match plant {
            Some(Plant::AckBeforeDurable) => bugs.ack_before_durable = true,
            Some(Plant::TakeoverWithoutRaise) => bugs.takeover_without_raise = true,
            Some(Plant::SkipAntiEntropy) => bugs.skip_anti_entropy = true,
            Some(Plant::HandoffWithoutEqualHeads) => bugs.handoff_without_equal_heads = true,
            None => {}
        }
        bugs
    }
}

impl fmt::Display for Plant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault of the schedule.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Cut every link between `side` and the other nodes, both ways.
    Split { side: Vec<usize>, for_us: Micros },
    /// Cut `from -> to` only.
    OneWay { from: usize, to: usize, for_us: Micros },
    /// Cut and restore `a <-> b` every `period_us`.
    Flap { a: usize, b: usize, period_us: Micros, for_us: Micros },
    /// Kill a node (chosen when the fault fires, by `pick`) and restart it from its disk later.
    Crash { pick: u64, down_us: Micros },
    /// Raise loss rates.
    Loss { rates: LossRates, for_us: Micros },
    /// Roll a new version over every node, one at a time.
    Deploy,
}

/// A fault and when it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Scheduled {
    pub at: Micros,
    pub fault: Fault,
}

fn window(rng: &mut SimRng, for_ms: u64) -> Micros {
    let latest = FAULT_WINDOW_END_MS.saturating_sub(for_ms).max(FAULT_WINDOW_START_MS);
    between(rng, FAULT_WINDOW_START_MS, latest) * US_PER_MS
}

/// The faults of a run of `nodes` nodes, in start order.
pub fn schedule(rng: &mut SimRng, set: FaultSet, nodes: usize) -> Vec<Scheduled> {
    let mut out = Vec::new();
    if set.partition && nodes >= 2 {
        for _ in 0..between(rng, 1, PARTITIONS_MAX) {
            let for_ms = between(rng, PARTITION_MS_MIN, PARTITION_MS_MAX);
            let at = window(rng, for_ms);
            let for_us = for_ms * US_PER_MS;
            let fault = match between(rng, 0, 2) {
                0 => {
                    // A random proper, non-empty side.
                    let mut side: Vec<usize> = (0..nodes).filter(|_| chance(rng, 0.5)).collect();
                    if side.is_empty() || side.len() == nodes {
                        side = vec![index(rng, nodes)];
                    }
                    Fault::Split { side, for_us }
                }
                1 => {
                    let (from, to) = two_nodes(rng, nodes);
                    Fault::OneWay { from, to, for_us }
                }
                _ => {
                    let (a, b) = two_nodes(rng, nodes);
                    let period_us =
                        between(rng, FLAP_PERIOD_MS_MIN, FLAP_PERIOD_MS_MAX) * US_PER_MS;
                    Fault::Flap { a, b, period_us, for_us }
                }
            };
            out.push(Scheduled { at, fault });
        }
    }
    if set.crash {
        for _ in 0..between(rng, 1, CRASHES_MAX) {
            let down_ms = between(rng, CRASH_DOWN_MS_MIN, CRASH_DOWN_MS_MAX);
            let at = window(rng, down_ms);
            out.push(Scheduled {
                at,
                fault: Fault::Crash {
                    pick: between(rng, 0, u64::MAX),
                    down_us: down_ms * US_PER_MS,
                },
            });
        }
    }
    if set.loss {
        for _ in 0..between(rng, 1, LOSS_EPISODES_MAX) {
            let for_ms = between(rng, LOSS_MS_MIN, LOSS_MS_MAX);
            let at = window(rng, for_ms);
            let rates = LossRates {
                datagram_loss: between(rng, 1, LOSS_DATAGRAM_PER_MILLE_MAX) as f64 / 1_000.0,
                datagram_dup: LOSS_DUP_PER_MILLE as f64 / 1_000.0,
                frame_loss: between(rng, 1, LOSS_FRAME_PER_10K_MAX) as f64 / 10_000.0,
            };
            out.push(Scheduled { at, fault: Fault::Loss { rates, for_us: for_ms * US_PER_MS } });
        }
    }
    if set.deploy {
        let at = between(rng, DEPLOY_START_MS_MIN, DEPLOY_START_MS_MAX) * US_PER_MS;
        out.push(Scheduled { at, fault: Fault::Deploy });
    }
    out.sort_by_key(|s| s.at);
    out
}

fn two_nodes(rng: &mut SimRng, nodes: usize) -> (usize, usize) {
    let a = index(rng, nodes);
    let b = (a + 1 + index(rng, nodes - 1)) % nodes;
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Stream, stream};

    #[test]
    fn fault_names_parse_and_print_back() {
        let set = FaultSet::parse("crash, drift,partition").unwrap();
        assert_eq!(set.to_string(), "partition,crash,drift");
        assert_eq!(FaultSet::parse("none").unwrap(), FaultSet::default());
        assert_eq!(FaultSet::parse("").unwrap().to_string(), "none");
        let err = FaultSet::parse("crash,meteor").unwrap_err();
        assert!(
            err.to_string().contains("meteor") && err.to_string().contains("partition"),
            "{err}"
        );
        for p in Plant::ALL {
            assert_eq!(Plant::parse(p.name()), Ok(p));
        }
        assert!(Plant::parse("nope").is_err());
    }

    #[test]
    fn every_fault_ends_inside_the_window() {
        for seed in 0..200 {
            let nodes = 3 + (seed as usize % 7);
            for s in schedule(&mut stream(seed, Stream::Faults), FaultSet::all(), nodes) {
                let end = match &s.fault {
                    Fault::Split { side, for_us } => {
                        assert!(!side.is_empty() && side.len() < nodes);
                        s.at + for_us
                    }
                    Fault::OneWay { from, to, for_us } => {
                        assert_ne!(from, to);
                        s.at + for_us
                    }
                    Fault::Flap { a, b, for_us, .. } => {
                        assert_ne!(a, b);
                        s.at + for_us
                    }
                    Fault::Crash { down_us, .. } => s.at + down_us,
                    Fault::Loss { for_us, .. } => s.at + for_us,
                    Fault::Deploy => s.at,
                };
                assert!(s.at >= FAULT_WINDOW_START_MS * US_PER_MS);
                assert!(end <= FAULT_WINDOW_END_MS * US_PER_MS, "seed {seed}: {s:?}");
            }
        }
    }
}
