//! Ownership: owner records (epochs), claims, takeover, handoff and drain.
//!
//! Rules, as built:
//! - Every node keeps the highest owner record it has seen per session; records only grow.
//! - A node claims a session (term above every term it has seen) when a request or a takeover
//!   finds no live owner and the node is the first live node of the session's preference list.
//!   The claim is durable before the node acts as owner (answers, starts turns).
//! - A node that learns a higher record for a session it owns steps down at once: its running
//!   turns are aborted and its parked requests are forwarded to the new owner.
//! - Handoff (drain, or rebalancing after a join): stop starting turns; let the running turn
//!   finish or checkpoint; sync the successor until its heads equal ours; offer epoch+1; the
//!   successor makes it durable and accepts; requests that arrived meanwhile are forwarded.

use std::collections::{BTreeMap, VecDeque};

use beamclaw_crdt::{HeadsDigest, SessionKey};

use super::api::{AbortReason, Effect, Event, Millis};
use super::ids::{Epoch, NodeId};
use super::node::{AfterDurable, Node, Origin, OwnerRole};
use super::placement;
use super::storage::Disk;
use super::timers::Timer;
use super::wire::{HandoffRefusal, Msg};

/// Handoffs in progress at once during a drain or rebalance.
pub const HANDOFF_CONCURRENT_MAX: usize = 64;

/// Takeovers started per placement round.
pub const TAKEOVERS_PER_ROUND_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandoffReason {
    Drain,
    Rebalance,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the running turn to finish or checkpoint.
    Quiesce,
    /// Syncing the successor until its heads equal ours.
    Syncing,
    /// Offered; new requests are parked until the successor answers.
    Offered(Epoch),
}

#[derive(Debug)]
pub(crate) struct Handoff {
    pub target: NodeId,
    pub reason: HandoffReason,
    pub phase: Phase,
    pub started: Millis,
}

impl Handoff {
    pub fn is_offered(&self) -> bool {
        matches!(self.phase, Phase::Offered(_))
    }
}

#[derive(Debug)]
pub(crate) struct DrainState {
    pub deadline: Millis,
    pub queue: VecDeque<SessionKey>,
    pub active: usize,
    pub handed_over: usize,
    pub left_behind: usize,
    /// Sessions with no live successor yet (a partition, or we are still joining): retried
    /// every `handoff_step_ms` until one appears or the deadline leaves them behind.
    pub stranded: Vec<SessionKey>,
    /// Copies we hold of sessions we do not own, and the node each is synced to until its heads
    /// equal ours: after a partition our copy may hold acknowledged messages (written while we
    /// owned it on our side) that nobody else has yet, and leaving would take them away.
    pub flush: BTreeMap<SessionKey, Option<NodeId>>,
    /// A `DrainRetry` timer is pending.
    pub retry_armed: bool,
}

impl<D: Disk> Node<D> {
    /// The node that should own `session` now: the first live node of its preference list
    /// (skipping us while we drain).
    pub(crate) fn candidate_owner(&self, session: &SessionKey) -> Option<NodeId> {
        let me = self.cfg.node;
        let excluded = self.drain.is_some() || self.left;
        placement::preference_list(session, self.members.live_nodes())
            .into_iter()
            .find(|n| !(excluded && *n == me))
    }

    fn set_epoch(&mut self, session: &SessionKey, epoch: Epoch) -> Option<Epoch> {
        let state = self.sessions.entry(session.clone()).or_default();
        let old = state.epoch.replace(epoch);
        if let Some(o) = old
            && let Some(set) = self.by_owner.get_mut(&o.node)
        {
            set.remove(session);
            if set.is_empty() {
                self.by_owner.remove(&o.node);
            }
        }
        self.by_owner.entry(epoch.node).or_default().insert(session.clone());
        old
    }

    /// A record from a peer (broadcast, digest, push, sync, direct): keep it if it is newer.
    pub(crate) fn observe_epoch(&mut self, session: &SessionKey, epoch: Epoch) {
        let known = self.sessions.get(session).and_then(|s| s.epoch);
        if known.is_some_and(|k| k >= epoch) {
            return;
        }
        self.set_epoch(session, epoch);
        let me = self.cfg.node;
        let had_role = self.sessions.get(session).is_some_and(|s| s.role.is_some());
        if epoch.node != me && had_role {
            self.step_down(session, epoch);
        } else if epoch.node == me && !had_role {
            // A record naming us that this process did not make (written by our previous run and
            // lost from our disk, or re-learned after a restart): make it durable, then own.
            if let Some(state) = self.sessions.get_mut(session) {
                state.role = Some(OwnerRole::default());
            }
            self.when_durable(
                session,
                AfterDurable::ClaimDurable { session: session.clone(), epoch },
            );
        }
        self.persist_index(session);
        if self.local_subs.contains_key(session) {
            self.send_subscription(session);
        }
        self.deliver(Event::OwnerChanged { session: session.clone(), epoch });
    }

    /// Another node owns `session` under `epoch`: stop acting as its owner.
    fn step_down(&mut self, session: &SessionKey, epoch: Epoch) {
        let Some(role) = self.sessions.get_mut(session).and_then(|s| s.role.take()) else { return };
        self.counters.step_downs += 1;
        if role.durable && role.handoff.is_none() {
            // We were acting as owner while another node claimed the session: two owners
            // overlapped (a partition, or a false suspicion). Their writes merge; count it.
            self.counters.owner_overlaps += 1;
        }
        tracing::info!(%session, new_owner = ?epoch, "stepping down as owner");
        if !role.running.is_empty() || role.durable {
            self.out.push(Effect::AbortTurns {
                session: session.clone(),
                run_id: None,
                reason: AbortReason::StaleEpoch,
            });
        }
        for _ in role.running.keys() {
            self.docs.unpin(session);
        }
        let holds_copy =
            self.sessions.get(session).is_some_and(|s| s.heads != HeadsDigest::default());
        if holds_copy && let Some(d) = self.drain.as_mut() {
            // Draining: what we wrote as owner may be on no other node yet; sync it to the new
            // owner before leaving, like every other copy we hold.
            d.flush.insert(session.clone(), None);
            self.arm_drain_retry();
        }
        if role.handoff.is_some() {
            self.handoff_finished(session);
        }
        self.forward_parked(session, role.parked, epoch.node);
    }

    fn forward_parked(
        &mut self,
        session: &SessionKey,
        parked: Vec<(Origin, super::api::RequestBody)>,
        to: NodeId,
    ) {
        for (origin, body) in parked {
            match origin {
                Origin::Local(req) => {
                    let _ = body;
                    self.reroute_local(req);
                }
                Origin::Remote { node, id } => {
                    if to == self.cfg.node {
                        self.serve(Origin::Remote { node, id }, session.clone(), body);
                    } else {
                        self.send(
                            to,
                            Msg::Request {
                                id,
                                origin: node,
                                session: session.clone(),
                                hops: 1,
                                body,
                            },
                        );
                    }
                }
            }
        }
    }

    fn reroute_local(&mut self, req: super::api::ReqId) {
        if let Some(p) = self.requests.get_mut(&req) {
            p.deadline = self.now;
        }
        self.request_timed_out(req);
    }

    /// Claims `session`: a term above every term we know, durable before we act on it.
    pub(crate) fn claim(&mut self, session: &SessionKey) {
        let me = self.cfg.node;
        let known = self.sessions.get(session).and_then(|s| s.epoch);
        let epoch = match known {
            // PLANTED BUG (simulator only): take over under the same term.
            Some(k) if self.cfg.planted.takeover_without_raise => Epoch { term: k.term, node: me },
            _ => Epoch::claim_after(known, me),
        };
        self.set_epoch(session, epoch);
        if let Some(state) = self.sessions.get_mut(session) {
            state.role = Some(OwnerRole::default());
        }
        self.counters.claims += 1;
        tracing::info!(%session, epoch = ?epoch, previous = ?known, "claiming session");
        self.persist_index(session);
        self.when_durable(session, AfterDurable::ClaimDurable { session: session.clone(), epoch });
    }

    /// Our claim (or an accepted handoff) is durable: act as owner.
    pub(crate) fn claim_durable(&mut self, session: &SessionKey, epoch: Epoch) {
        let Some(state) = self.sessions.get_mut(session) else { return };
        if state.epoch != Some(epoch) {
            return; // superseded while the write was in flight
        }
        let Some(role) = state.role.as_mut() else { return };
        role.durable = true;
        self.members.broadcast_owner(session, epoch);
        for r in self.other_replicas(session) {
            self.send(r, Msg::Owner { session: session.clone(), epoch });
        }
        self.deliver(Event::OwnerChanged { session: session.clone(), epoch });
        if self.local_subs.contains_key(session) {
            self.send_subscription(session);
        }
        self.start_unanswered(session);
    }

    /// Whether `owner` counts as down, so that its sessions may be taken over: SWIM declared it
    /// down, or it is an owner this process has never seen alive and we have been a member
    /// for `resume_grace_ms` (by then the cluster we joined has told us every live member).
    /// An owner we merely do not know yet is not down: right after a (re)start, or right
    /// after it joined, our view of the members is incomplete, and claiming its sessions would
    /// abort its running turns for nothing.
    pub(crate) fn owner_down(&self, owner: &NodeId) -> bool {
        if *owner == self.cfg.node || self.members.is_alive(owner) {
            return false;
        }
        if self.members.down().contains_key(owner) {
            return true;
        }
        let grace = self.cfg.timing.resume_grace_ms;
        self.joined_at.is_some_and(|t| self.now >= t + grace)
    }

    /// Takeover of sessions whose owner is down, and rebalancing of ours.
    pub(crate) fn placement_round(&mut self) {
        if self.left {
            return;
        }
        let me = self.cfg.node;
        let down_owners: Vec<NodeId> =
            self.by_owner.keys().copied().filter(|n| self.owner_down(n)).collect();
        let mut takeovers = 0;
        for owner in down_owners {
            let sessions: Vec<SessionKey> =
                self.by_owner.get(&owner).map(|s| s.iter().cloned().collect()).unwrap_or_default();
            for s in sessions {
                if takeovers >= TAKEOVERS_PER_ROUND_MAX {
                    return;
                }
                if self.candidate_owner(&s) == Some(me) {
                    takeovers += 1;
                    self.claim(&s);
                    let _ = self.hydrate(&s);
                }
            }
        }
        if self.drain.is_some() || self.joined_at.is_none() {
            return;
        }
        let owned: Vec<SessionKey> =
            self.by_owner.get(&me).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        let mut active = self.handoffs_in_progress();
        for s in owned {
            if active >= HANDOFF_CONCURRENT_MAX {
                break;
            }
            let ready = self
                .sessions
                .get(&s)
                .and_then(|st| st.role.as_ref())
                .is_some_and(|r| r.durable && r.handoff.is_none() && r.resume_after.is_none());
            if !ready {
                continue;
            }
            if let Some(target) = self.candidate_owner(&s).filter(|t| *t != me) {
                active += 1;
                self.start_handoff(&s, target, super::ownership::HandoffReason::Rebalance);
            }
        }
    }

    fn handoffs_in_progress(&self) -> usize {
        self.by_owner
            .get(&self.cfg.node)
            .map(|set| {
                set.iter()
                    .filter(|s| {
                        self.sessions
                            .get(*s)
                            .and_then(|st| st.role.as_ref())
                            .is_some_and(|r| r.handoff.is_some())
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    // ---- handoff ----------------------------------------------------------------------------

    pub(crate) fn start_handoff(
        &mut self,
        session: &SessionKey,
        target: NodeId,
        reason: HandoffReason,
    ) {
        if self.hydrate(session).is_err() {
            return;
        }
        let now = self.now;
        let Some(role) = self.sessions.get_mut(session).and_then(|s| s.role.as_mut()) else {
            return;
        };
        role.deferred = true;
        role.handoff = Some(Handoff { target, reason, phase: Phase::Quiesce, started: now });
        let running = !role.running.is_empty();
        self.docs.pin(session);
        tracing::info!(%session, target = %target.short(), ?reason, "handoff started");
        if running {
            let deadline = match (&self.drain, reason) {
                (Some(d), HandoffReason::Drain) => now + d.deadline.saturating_sub(now) / 2,
                _ => now + self.cfg.timing.rebalance_turn_wait_ms,
            };
            self.out.push(Effect::DrainTurns { session: session.clone(), deadline });
        } else {
            self.enter_syncing(session);
        }
        let at = now + self.cfg.timing.handoff_step_ms;
        self.set_timer(at, Timer::Handoff(session.clone()));
    }

    fn handoff_target(&self, session: &SessionKey) -> Option<(NodeId, Phase)> {
        let h = self.sessions.get(session)?.role.as_ref()?.handoff.as_ref()?;
        Some((h.target, h.phase))
    }

    /// The running turn is done: sync the successor.
    pub(crate) fn handoff_quiesced(&mut self, session: &SessionKey) {
        if let Some((_, Phase::Quiesce)) = self.handoff_target(session) {
            self.enter_syncing(session);
        }
    }

    fn enter_syncing(&mut self, session: &SessionKey) {
        let Some(role) = self.sessions.get_mut(session).and_then(|s| s.role.as_mut()) else {
            return;
        };
        let Some(h) = role.handoff.as_mut() else { return };
        h.phase = Phase::Syncing;
        let target = h.target;
        if self.cfg.planted.handoff_without_equal_heads {
            // PLANTED BUG (simulator only): offer before the successor has our changes.
            return self.offer(session);
        }
        self.start_sync(target, session, true);
    }

    /// A sync message from `from` reported its heads: if it is our handoff target and its copy
    /// equals ours, offer the session.
    pub(crate) fn handoff_sync_progress(
        &mut self,
        from: NodeId,
        session: &SessionKey,
        their_heads: HeadsDigest,
    ) {
        if let Some((target, Phase::Syncing)) = self.handoff_target(session) {
            let ours = self.sessions.get(session).map(|s| s.heads);
            if target == from && ours == Some(their_heads) {
                self.offer(session);
            }
        }
        self.drain_flush_progress(from, session, their_heads);
    }

    fn offer(&mut self, session: &SessionKey) {
        let Some(state) = self.sessions.get_mut(session) else { return };
        let Some(current) = state.epoch else { return };
        let heads = state.heads;
        let Some(h) = state.role.as_mut().and_then(|r| r.handoff.as_mut()) else { return };
        let epoch = Epoch { term: current.term + 1, node: h.target };
        h.phase = Phase::Offered(epoch);
        let target = h.target;
        self.send(target, Msg::HandoffOffer { session: session.clone(), epoch, heads });
    }

    pub(crate) fn handoff_tick(&mut self, session: &SessionKey) {
        let Some((target, phase)) = self.handoff_target(session) else { return };
        let started = self
            .sessions
            .get(session)
            .and_then(|s| s.role.as_ref())
            .and_then(|r| r.handoff.as_ref())
            .map_or(0, |h| h.started);
        if self.now.saturating_sub(started) > self.cfg.timing.handoff_timeout_ms
            || !self.members.is_alive(&target)
        {
            let reason = self
                .sessions
                .get(session)
                .and_then(|s| s.role.as_ref())
                .and_then(|r| r.handoff.as_ref())
                .map(|h| h.reason);
            tracing::warn!(%session, target = %target.short(), ?phase, ?reason, "handoff abandoned");
            self.abandon_handoff(session);
            return;
        }
        match phase {
            Phase::Quiesce => {
                let running = self
                    .sessions
                    .get(session)
                    .and_then(|s| s.role.as_ref())
                    .is_some_and(|r| !r.running.is_empty());
                let past_drain = self
                    .drain
                    .as_ref()
                    .is_some_and(|d| self.now + self.cfg.timing.handoff_step_ms * 4 >= d.deadline);
                if past_drain && running {
                    self.out.push(Effect::AbortTurns {
                        session: session.clone(),
                        run_id: None,
                        reason: AbortReason::Drain,
                    });
                }
                if !running {
                    self.enter_syncing(session);
                }
            }
            Phase::Syncing => self.start_sync(target, session, true),
            Phase::Offered(_) => self.offer(session),
        }
        let at = self.now + self.cfg.timing.handoff_step_ms;
        self.set_timer(at, Timer::Handoff(session.clone()));
    }

    /// Gives up a handoff: we stay owner and carry on.
    fn abandon_handoff(&mut self, session: &SessionKey) {
        let parked = match self.sessions.get_mut(session).and_then(|s| s.role.as_mut()) {
            Some(role) => {
                role.handoff = None;
                role.deferred = false;
                std::mem::take(&mut role.parked)
            }
            None => return,
        };
        self.counters.handoffs_refused += 1;
        if let Some(d) = self.drain.as_mut() {
            // Still ours and still draining: try again (the deadline bounds the attempts).
            d.queue.push_back(session.clone());
        }
        self.handoff_finished(session);
        let me = self.cfg.node;
        self.forward_parked(session, parked, me);
        self.start_unanswered(session);
    }

    /// Bookkeeping when a handoff ends (completed, abandoned or superseded).
    fn handoff_finished(&mut self, session: &SessionKey) {
        self.docs.unpin(session);
        let Some(d) = self.drain.as_mut() else { return };
        d.active = d.active.saturating_sub(1);
        self.pump_drain();
    }

    /// The owner offers us `session` under `epoch`.
    pub(crate) fn handoff_offered(
        &mut self,
        from: NodeId,
        session: SessionKey,
        epoch: Epoch,
        heads: HeadsDigest,
    ) {
        let refuse = |reason| Msg::HandoffRefuse { session: session.clone(), epoch, reason };
        if self.drain.is_some() || self.left || epoch.node != self.cfg.node {
            return self.send(from, refuse(HandoffRefusal::Unwilling));
        }
        // A node owns only under a term above every term it has seen: an offer made with a
        // stale view (the offerer missed a claim from the other side of a partition) may name
        // a term someone else already holds, under a lower node id.
        if self.sessions.get(&session).and_then(|s| s.epoch).is_some_and(|k| k.term >= epoch.term) {
            return self.send(from, refuse(HandoffRefusal::StaleEpoch));
        }
        let ours = self.sessions.get(&session).map(|s| s.heads).unwrap_or_default();
        if ours != heads && !self.cfg.planted.handoff_without_equal_heads {
            return self.send(from, refuse(HandoffRefusal::HeadsDiffer));
        }
        self.set_epoch(&session, epoch);
        if let Some(state) = self.sessions.get_mut(&session) {
            state.role = Some(OwnerRole::default());
        }
        self.persist_index(&session);
        tracing::info!(%session, epoch = ?epoch, from = %from.short(), "handoff accepted");
        self.when_durable(
            &session,
            AfterDurable::AcceptHandoff { session: session.clone(), epoch, to: from },
        );
    }

    /// The successor owns `session` now.
    pub(crate) fn handoff_accepted(&mut self, from: NodeId, session: SessionKey, epoch: Epoch) {
        let offered = matches!(self.handoff_target(&session), Some((t, Phase::Offered(e))) if t == from && e == epoch);
        if !offered {
            // Not our offer (or already settled): just learn the record.
            return self.observe_epoch(&session, epoch);
        }
        let Some(role) = self.sessions.get_mut(&session).and_then(|s| s.role.take()) else {
            return;
        };
        self.set_epoch(&session, epoch);
        self.persist_index(&session);
        self.counters.handoffs_completed += 1;
        if let Some(d) = self.drain.as_mut() {
            d.handed_over += 1;
        }
        tracing::info!(%session, to = %from.short(), epoch = ?epoch, "handoff completed");
        self.deliver(Event::OwnerChanged { session: session.clone(), epoch });
        if self.local_subs.contains_key(&session) {
            self.send_subscription(&session);
        }
        self.forward_parked(&session, role.parked, from);
        self.handoff_finished(&session);
    }

    pub(crate) fn handoff_refused(
        &mut self,
        from: NodeId,
        session: SessionKey,
        epoch: Epoch,
        reason: HandoffRefusal,
    ) {
        let ours = matches!(self.handoff_target(&session), Some((t, Phase::Offered(e))) if t == from && e == epoch);
        if !ours {
            return;
        }
        tracing::debug!(%session, ?reason, "handoff offer refused");
        match reason {
            HandoffRefusal::HeadsDiffer => {
                // Reopen for requests parked meanwhile, and sync again.
                let parked = self
                    .sessions
                    .get_mut(&session)
                    .and_then(|s| s.role.as_mut())
                    .map(|r| std::mem::take(&mut r.parked))
                    .unwrap_or_default();
                let me = self.cfg.node;
                self.forward_parked(&session, parked, me);
                self.enter_syncing(&session);
            }
            HandoffRefusal::StaleEpoch | HandoffRefusal::Unwilling => {
                self.abandon_handoff(&session)
            }
        }
    }

    // ---- drain ------------------------------------------------------------------------------

    pub(crate) fn begin_drain(&mut self, deadline: Millis) {
        if self.drain.is_some() || self.left {
            return;
        }
        let me = self.cfg.node;
        let queue: VecDeque<SessionKey> =
            self.by_owner.get(&me).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        // Every other copy we hold is synced to its owner (or successor) before we leave.
        let flush: BTreeMap<SessionKey, Option<NodeId>> = self
            .sessions
            .iter()
            .filter(|(_, st)| {
                st.heads != HeadsDigest::default() && st.epoch.is_none_or(|e| e.node != me)
            })
            .map(|(k, _)| (k.clone(), None))
            .collect();
        tracing::info!(sessions = queue.len(), copies = flush.len(), deadline, "drain started");
        // Handoffs already in progress (rebalancing) continue and count as drain handoffs.
        let active = self.handoffs_in_progress();
        self.drain = Some(DrainState {
            deadline,
            queue,
            active,
            handed_over: 0,
            left_behind: 0,
            stranded: Vec::new(),
            flush,
            retry_armed: false,
        });
        self.set_timer(deadline, Timer::DrainDeadline);
        self.flush_copies();
        self.pump_drain();
    }

    /// Syncs each copy still to flush with its owner if alive, else its first live candidate.
    fn flush_copies(&mut self) {
        let Some(d) = self.drain.as_ref() else { return };
        let keys: Vec<SessionKey> = d.flush.keys().cloned().collect();
        let me = self.cfg.node;
        for key in keys {
            let owner = self
                .sessions
                .get(&key)
                .and_then(|s| s.epoch)
                .map(|e| e.node)
                .filter(|n| *n != me && self.members.is_alive(n));
            let target = owner.or_else(|| self.candidate_owner(&key));
            if let Some(slot) = self.drain.as_mut().and_then(|d| d.flush.get_mut(&key)) {
                *slot = target;
            }
            if let Some(t) = target {
                self.start_sync(t, &key, true);
            }
        }
        if self.drain.as_ref().is_some_and(|d| !d.flush.is_empty()) {
            self.arm_drain_retry();
        }
    }

    /// A sync message from `from` reported its heads: a copy being flushed to it is done when
    /// they equal ours.
    pub(crate) fn drain_flush_progress(
        &mut self,
        from: NodeId,
        session: &SessionKey,
        their_heads: HeadsDigest,
    ) {
        let Some(d) = self.drain.as_ref() else { return };
        if d.flush.get(session) != Some(&Some(from)) {
            return;
        }
        if self.sessions.get(session).map(|s| s.heads) != Some(their_heads) {
            return;
        }
        if let Some(d) = self.drain.as_mut() {
            d.flush.remove(session);
        }
        self.pump_drain();
    }

    fn arm_drain_retry(&mut self) {
        let Some(d) = self.drain.as_mut() else { return };
        if d.retry_armed {
            return;
        }
        d.retry_armed = true;
        let at = self.now + self.cfg.timing.handoff_step_ms;
        self.set_timer(at, Timer::DrainRetry);
    }

    pub(crate) fn pump_drain(&mut self) {
        loop {
            let Some(d) = self.drain.as_mut() else { return };
            if d.active >= HANDOFF_CONCURRENT_MAX {
                return;
            }
            let Some(session) = d.queue.pop_front() else { break };
            let already = self
                .sessions
                .get(&session)
                .and_then(|s| s.role.as_ref())
                .map(|r| r.handoff.is_some());
            match already {
                None => continue,       // no longer ours
                Some(true) => continue, // counted in `active` already
                Some(false) => {}
            }
            match self.candidate_owner(&session) {
                Some(target) => {
                    if let Some(d) = self.drain.as_mut() {
                        d.active += 1;
                    }
                    self.start_handoff(&session, target, HandoffReason::Drain);
                }
                None if self.standalone() => {
                    // No other node was ever known: nobody to hand over to, now or later.
                    if let Some(d) = self.drain.as_mut() {
                        d.left_behind += 1;
                    }
                }
                None => {
                    // No live successor now; one may appear (a partition heals, we finish
                    // joining) before the deadline, which leaves the session behind otherwise.
                    if let Some(d) = self.drain.as_mut() {
                        d.stranded.push(session);
                    }
                    self.arm_drain_retry();
                }
            }
        }
        if self.drain.as_ref().is_some_and(|d| {
            d.active == 0 && d.queue.is_empty() && d.stranded.is_empty() && d.flush.is_empty()
        }) {
            self.finish_drain();
        }
    }

    /// Sessions that had no live successor go back into the drain queue.
    pub(crate) fn drain_retry(&mut self) {
        if self.left {
            return;
        }
        let Some(d) = self.drain.as_mut() else { return };
        d.retry_armed = false;
        let stranded = std::mem::take(&mut d.stranded);
        d.queue.extend(stranded);
        self.flush_copies();
        self.pump_drain();
    }

    /// Whether this node has never known another member and has no seeds: a cluster of one.
    fn standalone(&self) -> bool {
        self.cfg.seeds.is_empty()
            && self.members.alive().keys().all(|n| *n == self.cfg.node)
            && self.members.down().is_empty()
    }

    pub(crate) fn drain_deadline(&mut self) {
        if self.drain.is_none() || self.left {
            return;
        }
        let me = self.cfg.node;
        let owned: Vec<SessionKey> =
            self.by_owner.get(&me).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        for s in &owned {
            self.out.push(Effect::AbortTurns {
                session: s.clone(),
                run_id: None,
                reason: AbortReason::Drain,
            });
        }
        if let Some(d) = self.drain.as_mut() {
            d.left_behind += owned.len();
        }
        self.finish_drain();
    }

    fn finish_drain(&mut self) {
        if self.left {
            return;
        }
        let Some(d) = self.drain.as_ref() else { return };
        let (handed_over, left_behind) = (d.handed_over, d.left_behind);
        tracing::info!(handed_over, left_behind, "drain finished; leaving the cluster");
        self.left = true;
        match self.members.leave() {
            Ok(out) => self.apply_swim(out),
            Err(e) => tracing::warn!(error = %e, "leave failed"),
        }
        self.deliver(Event::Drained { handed_over, left_behind });
    }

    /// `node` went down or restarted: re-route what we sent it, drop its subscriptions, give up
    /// handoffs to it.
    pub(crate) fn peer_lost(&mut self, node: NodeId) {
        self.reroute_requests_sent_to(node);
        for subs in self.remote_subs.values_mut() {
            subs.remove(&node);
        }
        let handing: Vec<SessionKey> = self
            .by_owner
            .get(&self.cfg.node)
            .map(|set| {
                set.iter()
                    .filter(|s| matches!(self.handoff_target(s), Some((t, _)) if t == node))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for s in handing {
            self.abandon_handoff(&s);
        }
    }
}
