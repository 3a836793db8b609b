//! What a run measured, and the summary over many runs.

use crate::checker::Violation;

/// The measurements of one run.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub seed: u64,
    pub nodes: usize,
    pub violations: Vec<Violation>,
    /// From an owner's crash to another node's durable claim of each session it owned, in ms.
    pub failover_ms: Vec<u64>,
    /// From a handoff offer to the offering node hearing the acceptance, in ms (requests for the
    /// session are parked meanwhile).
    pub handoff_pause_ms: Vec<u64>,
    /// From the end of the last fault until membership and replicas agree again, in ms.
    pub convergence_ms: Option<u64>,
    pub messages_submitted: u64,
    pub messages_acked: u64,
    pub messages_unacked: u64,
    /// Extra executions of turns (an input whose turn made side effects more than once).
    pub duplicate_turns: u64,
    pub side_effects: u64,
    pub owner_overlaps: u64,
    pub handoffs_completed: u64,
    pub claims: u64,
    /// Pushes replicas stored before applying, and the batches they applied them in.
    pub pushes_stored_unapplied: u64,
    pub replica_settles: u64,
    /// Sync messages sent, exchanges ended because they stopped making progress, and exchanges
    /// ended on finding both copies level.
    pub sync_rounds: u64,
    pub sync_exchanges_stalled: u64,
    pub sync_exchanges_level: u64,
    /// Datagrams and frames delivered.
    pub network_messages: u64,
    pub events: u64,
    pub virtual_ms: u64,
    /// Trace hash and line count, when the trace was hashed.
    pub trace_digest: Option<(u64, u64)>,
}

/// The `p`-th percentile (0..=100) of `samples`, nearest rank.
pub fn percentile(samples: &[u64], p: u64) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (p.min(100) as usize * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Totals over many runs.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    pub failing_seeds: Vec<u64>,
    pub violations: u64,
    pub failover_ms: Vec<u64>,
    pub handoff_pause_ms: Vec<u64>,
    pub convergence_ms: Vec<u64>,
    pub messages_submitted: u64,
    pub messages_acked: u64,
    pub messages_unacked: u64,
    pub duplicate_turns: u64,
    pub side_effects: u64,
    pub owner_overlaps: u64,
    pub handoffs_completed: u64,
    pub claims: u64,
    pub pushes_stored_unapplied: u64,
    pub replica_settles: u64,
    pub sync_rounds: u64,
    /// The seed that sent the most sync messages, and how many: an outlier here is how a sync
    /// exchange that never ends shows itself.
    pub sync_rounds_max: Option<(u64, u64)>,
    pub sync_exchanges_stalled: u64,
    pub sync_exchanges_level: u64,
    pub network_messages: u64,
    pub events: u64,
    pub virtual_ms: u64,
}

impl Summary {
    pub fn add(&mut self, r: &RunReport) {
        self.seeds += 1;
        if !r.violations.is_empty() {
            self.failing_seeds.push(r.seed);
        }
        self.violations += r.violations.len() as u64;
        self.failover_ms.extend(&r.failover_ms);
        self.handoff_pause_ms.extend(&r.handoff_pause_ms);
        self.convergence_ms.extend(r.convergence_ms);
        self.messages_submitted += r.messages_submitted;
        self.messages_acked += r.messages_acked;
        self.messages_unacked += r.messages_unacked;
        self.duplicate_turns += r.duplicate_turns;
        self.side_effects += r.side_effects;
        self.owner_overlaps += r.owner_overlaps;
        self.handoffs_completed += r.handoffs_completed;
        self.claims += r.claims;
        self.pushes_stored_unapplied += r.pushes_stored_unapplied;
        self.replica_settles += r.replica_settles;
        self.sync_rounds += r.sync_rounds;
        if self.sync_rounds_max.is_none_or(|(_, most)| r.sync_rounds > most) {
            self.sync_rounds_max = Some((r.seed, r.sync_rounds));
        }
        self.sync_exchanges_stalled += r.sync_exchanges_stalled;
        self.sync_exchanges_level += r.sync_exchanges_level;
        self.network_messages += r.network_messages;
        self.events += r.events;
        self.virtual_ms += r.virtual_ms;
    }

    /// The summary table, as aligned text.
    pub fn table(&self, wall_secs: f64) -> String {
        let ms = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format!("{v} ms"));
        let pair = |s: &[u64]| format!("{} / {}", ms(percentile(s, 50)), ms(percentile(s, 99)));
        let per_sec = |n: u64| {
            if wall_secs > 0.0 { format!("{:.0}", n as f64 / wall_secs) } else { "-".into() }
        };
        let rows = [
            ("seeds", self.seeds.to_string()),
            ("violations", format!("{} (in {} seeds)", self.violations, self.failing_seeds.len())),
            (
                "failover time p50 / p99",
                format!("{} ({} samples)", pair(&self.failover_ms), self.failover_ms.len()),
            ),
            (
                "handoff pause p50 / p99",
                format!(
                    "{} ({} samples)",
                    pair(&self.handoff_pause_ms),
                    self.handoff_pause_ms.len()
                ),
            ),
            (
                "convergence after heal p50 / p99",
                format!("{} ({} samples)", pair(&self.convergence_ms), self.convergence_ms.len()),
            ),
            (
                "user messages acked / sent",
                format!(
                    "{} / {} ({} never acked)",
                    self.messages_acked, self.messages_submitted, self.messages_unacked
                ),
            ),
            ("turns run twice (counted)", self.duplicate_turns.to_string()),
            ("owner overlaps (counted)", self.owner_overlaps.to_string()),
            ("claims / handoffs", format!("{} / {}", self.claims, self.handoffs_completed)),
            (
                "replica pushes stored / batches applied",
                format!("{} / {}", self.pushes_stored_unapplied, self.replica_settles),
            ),
            (
                "sync messages / exchanges stuck / level",
                format!(
                    "{} ({}) / {} / {}",
                    self.sync_rounds,
                    self.sync_rounds_max
                        .map_or_else(|| "-".into(), |(seed, n)| format!("most: {n}, seed {seed}")),
                    self.sync_exchanges_stalled,
                    self.sync_exchanges_level
                ),
            ),
            ("simulated messages / s (wall)", per_sec(self.network_messages)),
            ("simulated events / s (wall)", per_sec(self.events)),
            (
                "virtual time / wall time",
                if wall_secs > 0.0 {
                    format!("{:.0}x", self.virtual_ms as f64 / 1_000.0 / wall_secs)
                } else {
                    "-".into()
                },
            ),
            ("wall time", format!("{wall_secs:.1} s")),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&s, 50), Some(50));
        assert_eq!(percentile(&s, 99), Some(99));
        assert_eq!(percentile(&s, 100), Some(100));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[], 50), None);
    }
}
