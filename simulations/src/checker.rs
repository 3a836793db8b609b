//! The invariants, and what the checker remembers to decide them.
//!
//! Continuous checks run as events happen (a write is emitted, a batch becomes durable, a side
//! effect passes the fence, an acknowledgement leaves a node, a read answers); the quiescence
//! checks run at the end of a run, after every fault has ended and the cluster has had time to
//! settle (see `World::final_checks`). Each violation names the invariant, the seed, the time,
//! the node, the session and the message it is about.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use beamclaw_crdt::{Message, SessionKey};
use beamclaw_mesh::core::storage::{WriteBatch, WriteOp};
use beamclaw_mesh::core::{Epoch, NodeId};

use crate::clock::{Micros, US_PER_MS};
use crate::disk::OwnerWrite;

/// The invariants of DESIGN.md ("The simulator"), numbered as in the issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// No acknowledged message is lost (nor acknowledged before it is durable).
    AckedLost = 1,
    /// Replicas converge to equal heads and histories after heal.
    Convergence = 2,
    /// No message id twice in a history.
    Duplicate = 3,
    /// Epochs only grow; one owner per (session, epoch); claims raise the term.
    Epochs = 4,
    /// No side effect under a stale epoch.
    StaleEpoch = 5,
    /// Membership converges within a bound after heal.
    Membership = 6,
    /// Exactly one reply per acknowledged message, no turn twice (connected cluster).
    ExactlyOnce = 7,
    /// No panic; every queue under its bound.
    Bounds = 8,
}

impl Invariant {
    pub fn name(self) -> &'static str {
        match self {
            Invariant::AckedLost => "no acknowledged message lost",
            Invariant::Convergence => "replicas converge",
            Invariant::Duplicate => "no duplicate message ids",
            Invariant::Epochs => "epochs only grow, one owner per epoch",
            Invariant::StaleEpoch => "no side effect under a stale epoch",
            Invariant::Membership => "membership converges",
            Invariant::ExactlyOnce => "exactly one reply, no turn twice",
            Invariant::Bounds => "no panic, queues bounded",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub invariant: Invariant,
    pub at: Micros,
    /// The node (index; its name is `n<index>`).
    pub node: Option<usize>,
    pub session: Option<SessionKey>,
    pub message: Option<String>,
    pub detail: String,
}

impl Violation {
    /// One line naming everything needed to find it again.
    pub fn describe(&self, seed: u64) -> String {
        let mut s = format!(
            "invariant {} ({}) violated: seed {seed}, t={}.{:03} s",
            self.invariant as u8,
            self.invariant.name(),
            self.at / (1_000 * US_PER_MS),
            (self.at / US_PER_MS) % 1_000
        );
        if let Some(n) = self.node {
            s.push_str(&format!(", node n{n}"));
        }
        if let Some(k) = &self.session {
            s.push_str(&format!(", session {k}"));
        }
        if let Some(m) = &self.message {
            s.push_str(&format!(", message {m}"));
        }
        s.push_str(": ");
        s.push_str(&self.detail);
        s
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(0))
    }
}

/// A provider call that passed the epoch fence.
#[derive(Clone, Debug)]
pub struct SideEffect {
    pub node: usize,
    pub exec: u64,
    pub session: SessionKey,
    pub term: u64,
    pub run_id: String,
    pub input_id: String,
    pub at: Micros,
}

pub struct Checker {
    /// Exactly-once and single-owner checks apply (no partition, crash or loss in the run).
    connected: bool,
    /// Node ids by index.
    ids: Vec<NodeId>,
    pub violations: Vec<Violation>,
    /// Per node: the highest owner record this process has written per session (its
    /// knowledge: the core persists every record it learns).
    known: Vec<BTreeMap<SessionKey, Epoch>>,
    /// The highest owner record durable on any node, per session.
    durable_max: BTreeMap<SessionKey, (Epoch, usize)>,
    /// Executions of a turn that made side effects, per input message.
    executions: BTreeMap<String, BTreeSet<u64>>,
    /// Nodes that made side effects under each (session, term).
    term_owners: BTreeMap<(SessionKey, u64), BTreeSet<usize>>,
    pub side_effects: u64,
}

impl Checker {
    pub fn new(ids: Vec<NodeId>, connected: bool) -> Self {
        let nodes = ids.len();
        Checker {
            ids,
            connected,
            violations: Vec::new(),
            known: vec![BTreeMap::new(); nodes],
            durable_max: BTreeMap::new(),
            executions: BTreeMap::new(),
            term_owners: BTreeMap::new(),
            side_effects: 0,
        }
    }

    pub fn connected(&self) -> bool {
        self.connected
    }

    pub fn fail(
        &mut self,
        invariant: Invariant,
        at: Micros,
        node: Option<usize>,
        session: Option<&SessionKey>,
        message: Option<&str>,
        detail: String,
    ) {
        self.violations.push(Violation {
            invariant,
            at,
            node,
            session: session.cloned(),
            message: message.map(str::to_string),
            detail,
        });
    }

    /// A node process started: it knows what its disk holds.
    pub fn node_started(&mut self, node: usize, owners: impl Iterator<Item = (SessionKey, Epoch)>) {
        if let Some(k) = self.known.get_mut(node) {
            *k = owners.collect();
        }
    }

    /// A node emitted a write batch (not yet durable).
    pub fn persist_emitted(&mut self, now: Micros, node: usize, writes: &WriteBatch) {
        let Some(me) = self.ids.get(node).copied() else { return };
        for op in &writes.ops {
            let WriteOp::PutIndex { key, entry } = op else { continue };
            let Some(record) = entry.owner.as_ref().and_then(Epoch::from_record) else { continue };
            let known = self.known.get(node).and_then(|k| k.get(key)).copied();
            if let Some(k) = known {
                if record < k {
                    let detail = format!("owner record went down: wrote {record:?} after {k:?}");
                    self.fail(Invariant::Epochs, now, Some(node), Some(key), None, detail);
                } else if record != k && record.node == me && record.term <= k.term {
                    let detail = format!(
                        "took the session over as {record:?} without raising the term above the known {k:?}"
                    );
                    self.fail(Invariant::Epochs, now, Some(node), Some(key), None, detail);
                }
            }
            if known.is_none_or(|k| record > k)
                && let Some(map) = self.known.get_mut(node)
            {
                map.insert(key.clone(), record);
            }
        }
    }

    /// Owner records a node's durable batch changed.
    pub fn durable_owner_writes(&mut self, now: Micros, node: usize, writes: Vec<OwnerWrite>) {
        for w in writes {
            if let (Some(before), Some(after)) = (w.before, w.after)
                && after < before
            {
                self.fail(
                    Invariant::Epochs,
                    now,
                    Some(node),
                    Some(&w.session),
                    None,
                    format!("durable owner record went down: {after:?} replaced {before:?}"),
                );
            }
            if let Some(after) = w.after {
                let higher = self.durable_max.get(&w.session).is_none_or(|(e, _)| after > *e);
                if higher {
                    self.durable_max.insert(w.session.clone(), (after, node));
                }
            }
        }
    }

    /// A provider call passed the fence on `se.node`.
    pub fn side_effect(&mut self, se: SideEffect) {
        self.side_effects += 1;
        let Some(me) = self.ids.get(se.node).copied() else { return };
        let mine = Epoch { term: se.term, node: me };
        if let Some(k) = self.known.get(se.node).and_then(|k| k.get(&se.session))
            && *k > mine
        {
            let detail = format!(
                "provider call of run {} under term {} after the node had learned {k:?}",
                se.run_id, se.term
            );
            self.fail(
                Invariant::StaleEpoch,
                se.at,
                Some(se.node),
                Some(&se.session),
                Some(&se.input_id),
                detail,
            );
        }
        if self.connected {
            if let Some((durable, holder)) = self.durable_max.get(&se.session)
                && *durable > mine
            {
                let detail = format!(
                    "provider call of run {} under {mine:?} while {durable:?} was already durable on n{holder} (connected cluster)",
                    se.run_id
                );
                self.fail(
                    Invariant::StaleEpoch,
                    se.at,
                    Some(se.node),
                    Some(&se.session),
                    Some(&se.input_id),
                    detail,
                );
            }
            let owners = self.term_owners.entry((se.session.clone(), se.term)).or_default();
            owners.insert(se.node);
            if owners.len() > 1 {
                let detail = format!(
                    "nodes {:?} both acted as owner under term {} (connected cluster)",
                    owners, se.term
                );
                self.fail(
                    Invariant::Epochs,
                    se.at,
                    Some(se.node),
                    Some(&se.session),
                    Some(&se.input_id),
                    detail,
                );
            }
        }
        self.executions.entry(se.input_id).or_default().insert(se.exec);
    }

    /// An acknowledgement left `node` for `message` of `session`; `durable` says whether the
    /// message was on the node's disk at that moment.
    pub fn acknowledged(
        &mut self,
        now: Micros,
        node: usize,
        session: &SessionKey,
        message: &str,
        durable: bool,
    ) {
        if !durable {
            self.fail(
                Invariant::AckedLost,
                now,
                Some(node),
                Some(session),
                Some(message),
                "acknowledged to the client before the message was durable on the acknowledging owner".into(),
            );
        }
    }

    /// A read answered with `messages`.
    pub fn history_read(
        &mut self,
        now: Micros,
        node: usize,
        session: &SessionKey,
        messages: &[Message],
    ) {
        if let Some(dup) = first_duplicate(messages) {
            self.fail(
                Invariant::Duplicate,
                now,
                Some(node),
                Some(session),
                Some(&dup),
                "the message id appears twice in a read".into(),
            );
        }
    }

    /// How many executions of a turn made side effects for `input`.
    pub fn executions_of(&self, input: &str) -> usize {
        self.executions.get(input).map_or(0, BTreeSet::len)
    }

    /// Inputs whose turn ran (made side effects) more than once, and how many extra runs.
    pub fn duplicate_turns(&self) -> u64 {
        self.executions.values().map(|e| e.len().saturating_sub(1) as u64).sum()
    }
}

/// The first id that appears twice in `messages`.
pub fn first_duplicate(messages: &[Message]) -> Option<String> {
    let mut seen = BTreeSet::new();
    messages.iter().find(|m| !seen.insert(m.id.as_str())).map(|m| m.id.clone())
}
