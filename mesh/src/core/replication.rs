//! Replication: pushes of every change to the replicas, a write quorum, and anti-entropy.
//!
//! The writer of a session (its owner) pushes the chunks of each change to the other replicas at
//! once, unless the transport reports the peer congested (backpressure: the change then waits for
//! anti-entropy). Periodically each node sends one peer, in turn, a digest of the sessions both
//! should hold (heads digest and owner record); any session whose heads differ is brought level
//! with Automerge's sync protocol, and a stale owner record is answered with the newer one.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use beamclaw_crdt::doc::{PeerSyncState, SyncMessage};
use beamclaw_crdt::{Chunk, HeadsDigest, HeadsTracker, SessionKey};

use super::api::{Millis, RequestError};
use super::ids::{Epoch, NodeId};
use super::node::{AfterDurable, Node};
use super::placement;
use super::storage::{Disk, WriteOp, peer_name};
use super::timers::Timer;
use super::wire::{DIGEST_ENTRIES_MAX, DigestEntry, Msg};

/// Sessions looked at per anti-entropy round (bounds the work of one timer firing).
pub const AE_SCAN_SESSIONS_MAX: usize = 4096;

/// Sync exchanges started because of one digest, at most.
pub const SYNC_STARTS_PER_DIGEST_MAX: usize = 64;

/// Digest mismatches in a row about one session that may be put off because its copy here has
/// just changed (see [`Timing::ae_recent_ms`]); the next one starts a sync regardless, so a
/// session that changes all the time is still repaired.
///
/// [`Timing::ae_recent_ms`]: super::node::Timing::ae_recent_ms
pub const AE_DEFERRALS_MAX: u32 = 4;

/// Sync exchanges in progress (all peers), at most; the least recently active is dropped.
pub const SYNC_EXCHANGES_MAX: usize = 4096;

/// Sync messages received in a row that changed neither our copy nor the peer's heads, after
/// which the exchange ends without a reply. A sound exchange changes one side's heads every
/// round or two; one that does not is stuck (Automerge's sync state assumes no message is lost,
/// and two sides that disagree about what was sent answer each other with the same message
/// forever). Ending it persists the shared heads; the next digest mismatch starts afresh.
pub const SYNC_FRUITLESS_ROUNDS_MAX: u32 = 8;

/// How long a write quorum may wait for replica acknowledgements, in milliseconds.
pub const QUORUM_WAIT_MS: u64 = 5_000;

/// Pushes of one session a replica stores before applying them, at most; the next is applied
/// with them at once.
pub const DEFERRED_CHUNKS_MAX: usize = 64;

/// Bytes of pushes of one session a replica stores before applying them, at most.
pub const DEFERRED_BYTES_MAX: usize = 1024 * 1024;

/// Bytes of pushes stored before applying, all sessions of the node together, at most.
pub const DEFERRED_TOTAL_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Sessions whose stored pushes are applied before a listing of the node's index, most recently
/// pushed first: the listing is current for the sessions that changed last, and its pause stays
/// bounded (each is one Automerge call of at most [`DEFERRED_CHUNKS_MAX`] pushes).
pub const LIST_SETTLES_MAX: usize = 64;

/// Pushes of a session that this replica stored (they are on disk, or on their way with the
/// acknowledgement behind them) but has not applied to its copy yet: applying costs an
/// Automerge call per push, and a replica is read far less often than it is written, so it
/// applies them in one call when the session is next read or [`Timing::replica_settle_ms`]
/// later. The tracker knows the heads they lead to, so digests and handoff checks are exact
/// meanwhile.
///
/// [`Timing::replica_settle_ms`]: super::node::Timing::replica_settle_ms
#[derive(Debug, Default)]
pub(crate) struct StoredPushes {
    tracker: HeadsTracker,
    chunks: Vec<Chunk>,
    bytes: usize,
    /// When the last of them was stored.
    last_at: Millis,
}

/// A submit waiting for its write quorum.
#[derive(Debug)]
pub(crate) struct QuorumWait {
    pub needed: usize,
    pub acks: BTreeSet<NodeId>,
    pub local: bool,
    pub then: Vec<AfterDurable>,
}

struct Exchange {
    state: PeerSyncState,
    last: Millis,
    /// The heads the peer reported in its last message.
    their_heads: Option<HeadsDigest>,
    /// Messages received in a row that changed neither side's heads.
    fruitless: u32,
}

impl Exchange {
    fn new(state: PeerSyncState, now: Millis) -> Exchange {
        Exchange { state, last: now, their_heads: None, fruitless: 0 }
    }
}

/// Sync exchanges in progress, by (peer, session).
#[derive(Default)]
pub(crate) struct SyncTable {
    exchanges: BTreeMap<(NodeId, SessionKey), Exchange>,
}

impl SyncTable {
    fn busy(&self, peer: NodeId, session: &SessionKey, now: Millis, idle_ms: u64) -> bool {
        self.exchanges
            .get(&(peer, session.clone()))
            .is_some_and(|x| now.saturating_sub(x.last) < idle_ms)
    }

    pub fn forget_peer(&mut self, peer: &NodeId) {
        self.exchanges.retain(|(p, _), _| p != peer);
    }

    fn make_room(&mut self) {
        if self.exchanges.len() < SYNC_EXCHANGES_MAX {
            return;
        }
        if let Some(oldest) =
            self.exchanges.iter().min_by_key(|(_, x)| x.last).map(|(k, _)| k.clone())
        {
            self.exchanges.remove(&oldest);
        }
    }

    pub fn len(&self) -> usize {
        self.exchanges.len()
    }
}

impl<D: Disk> Node<D> {
    /// The replicas of `session` in our current view, us excluded.
    pub(crate) fn other_replicas(&self, session: &SessionKey) -> Vec<NodeId> {
        let me = self.cfg.node;
        placement::replicas(session, self.members.live_nodes(), self.cfg.replication_factor)
            .into_iter()
            .filter(|n| *n != me)
            .collect()
    }

    /// Pushes new chunks of `session` to its replicas. Returns the acknowledgement id when a
    /// write quorum is configured.
    pub(crate) fn push_changes(&mut self, session: &SessionKey, chunks: Vec<Chunk>) -> Option<u64> {
        let ack = (self.cfg.write_quorum > 1).then(|| {
            self.next_ack += 1;
            self.next_ack
        });
        let epoch = self.sessions.get(session).and_then(|s| s.epoch);
        for r in self.other_replicas(session) {
            if self.congested.contains(&r) {
                self.counters.changes_skipped_congested += 1;
                continue;
            }
            self.counters.changes_pushed += 1;
            self.send(
                r,
                Msg::Changes { session: session.clone(), chunks: chunks.clone(), epoch, ack },
            );
        }
        ack
    }

    /// Holds `then` until the change with acknowledgement `ack` is durable here and on enough
    /// replicas.
    pub(crate) fn wait_quorum(&mut self, session: &SessionKey, ack: u64, then: Vec<AfterDurable>) {
        let needed = self.cfg.write_quorum.saturating_sub(1);
        self.quorum.insert(ack, QuorumWait { needed, acks: BTreeSet::new(), local: false, then });
        self.when_durable(session, AfterDurable::QuorumLocal { ack });
        self.set_timer(self.now + QUORUM_WAIT_MS, Timer::Quorum(ack));
    }

    pub(crate) fn quorum_local(&mut self, ack: u64) {
        if let Some(q) = self.quorum.get_mut(&ack) {
            q.local = true;
        }
        self.check_quorum(ack);
    }

    pub(crate) fn quorum_ack(&mut self, from: NodeId, ack: u64) {
        if let Some(q) = self.quorum.get_mut(&ack) {
            q.acks.insert(from);
        }
        self.check_quorum(ack);
    }

    fn check_quorum(&mut self, ack: u64) {
        let done = self.quorum.get(&ack).is_some_and(|q| q.local && q.acks.len() >= q.needed);
        if done && let Some(q) = self.quorum.remove(&ack) {
            for w in q.then {
                self.run_quorum_action(w);
            }
        }
    }

    pub(crate) fn quorum_timed_out(&mut self, ack: u64) {
        let Some(q) = self.quorum.remove(&ack) else { return };
        let reason = format!(
            "write quorum of {} not reached: {} replica(s) acknowledged within {QUORUM_WAIT_MS} ms",
            self.cfg.write_quorum,
            q.acks.len()
        );
        for w in q.then {
            match w {
                AfterDurable::Respond { to, .. } => {
                    self.answer(to, Err(RequestError::Unavailable(reason.clone())))
                }
                // The message is stored here: its turn still runs; only the client is told the
                // write did not reach its quorum (a retry returns in_flight or ok).
                other => self.run_quorum_action(other),
            }
        }
    }

    fn run_quorum_action(&mut self, action: AfterDurable) {
        match action {
            AfterDurable::Respond { to, result } => self.answer(to, result),
            AfterDurable::StartTurn { session, message_id } => {
                self.start_turn(&session, &message_id)
            }
            other => tracing::error!(?other, "unexpected action behind a write quorum"),
        }
    }

    /// Chunks pushed to us by the writer of `session`.
    pub(crate) fn receive_changes(
        &mut self,
        from: NodeId,
        session: SessionKey,
        chunks: Vec<Chunk>,
        epoch: Option<Epoch>,
        ack: Option<u64>,
    ) {
        if let Some(e) = epoch {
            self.observe_epoch(&session, e);
        }
        if let Err(e) = self.hydrate_or_empty(&session) {
            tracing::warn!(%session, error = %e, "pushed changes not applied");
            return;
        }
        if self.store_unapplied(&session, &chunks) {
            if let Some(ack) = ack {
                self.when_durable(
                    &session,
                    AfterDurable::ChangesAck { session: session.clone(), to: from, ack },
                );
            }
            return;
        }
        let mut changed = false;
        let mut waiting = false;
        for chunk in &chunks {
            match self.with_doc(&session, |doc| doc.apply_chunk(chunk)) {
                Some(Ok(outcome)) => {
                    changed |= outcome.changed;
                    waiting |= outcome.waiting_for_dependencies;
                }
                Some(Err(e)) => {
                    tracing::warn!(%session, part = %chunk.part, error = %e, "pushed chunk refused");
                }
                None => {}
            }
        }
        if changed {
            self.commit_doc(&session, false);
            self.remote_changes_arrived(&session);
        }
        if waiting {
            // We missed earlier pushes: (some of) the changes just pushed wait in memory for
            // them, not on disk, so they are not acknowledged; a sync with the writer closes the
            // gap now rather than at the next anti-entropy round.
            tracing::debug!(%session, from = %from.short(), "pushed changes wait for missed ones");
            self.start_sync(from, &session, false);
            return;
        }
        if let Some(ack) = ack {
            self.when_durable(
                &session,
                AfterDurable::ChangesAck { session: session.clone(), to: from, ack },
            );
        }
    }

    /// Stores pushed `chunks` without applying them, when that is exact (see [`StoredPushes`]): we
    /// do not own the session, and every change follows on the heads we know. `false` when the
    /// caller must apply them (after applying what was stored before).
    fn store_unapplied(&mut self, session: &SessionKey, chunks: &[Chunk]) -> bool {
        if self.sessions.get(session).is_none_or(|s| s.role.is_some()) {
            return false;
        }
        let bytes: usize = chunks.iter().map(|c| c.bytes.len()).sum();
        if self.unapplied_bytes + bytes > DEFERRED_TOTAL_BYTES_MAX {
            return false;
        }
        let mut tracker = match self.unapplied.get(session) {
            Some(d) if d.chunks.len() + chunks.len() > DEFERRED_CHUNKS_MAX => return false,
            Some(d) if d.bytes + bytes > DEFERRED_BYTES_MAX => return false,
            Some(d) => d.tracker.clone(),
            None => match self.docs.update(session, |doc| doc.heads_tracker()) {
                Some(t) => t,
                None => return false,
            },
        };
        let mut new = false;
        for chunk in chunks {
            match tracker.advance(chunk) {
                Some(brought) => new |= brought,
                None => return false,
            }
        }
        if !new {
            return true; // all known: nothing to store, only to acknowledge
        }
        let first = !self.unapplied.contains_key(session);
        let stored = self.unapplied.entry(session.clone()).or_default();
        stored.tracker = tracker;
        stored.chunks.extend(chunks.iter().cloned());
        stored.bytes += bytes;
        stored.last_at = self.now;
        self.unapplied_bytes += bytes;
        let heads = stored.tracker.digest();
        self.counters.pushes_stored_unapplied += 1;
        let now = self.now;
        self.sessions.entry(session.clone()).or_default().set_heads(heads, now);
        self.write(
            Some(session),
            WriteOp::AppendChunks { key: session.clone(), chunks: chunks.to_vec() },
        );
        self.persist_index(session);
        if first {
            let at = self.now + self.cfg.timing.replica_settle_ms;
            self.set_timer(at, Timer::Settle(session.clone()));
        }
        true
    }

    /// Applies the pushes stored for `session` in one call and refreshes its index entry. The
    /// pushes are on disk already: when the copy is no longer hydrated they are simply dropped
    /// (the next hydration reads them).
    pub(crate) fn settle(&mut self, session: &SessionKey) {
        let Some(stored) = self.take_unapplied(session) else { return };
        self.counters.replica_settles += 1;
        match self.docs.update(session, |doc| doc.apply_persisted_chunks(&stored.chunks)) {
            Some(Ok(outcome)) => {
                if outcome.waiting_for_dependencies {
                    // Cannot happen by the tracker's rule; anti-entropy repairs it if it does.
                    tracing::warn!(%session, "stored pushes wait for dependencies");
                }
                self.commit_doc_with(session, false, true);
            }
            Some(Err(e)) => {
                tracing::warn!(%session, error = %e, "stored pushes refused; the copy is reloaded from disk");
                self.docs.remove(session);
            }
            None => {}
        }
    }

    /// Settles the `max` sessions with stored pushes that received one most recently.
    pub(crate) fn settle_recent(&mut self, max: usize) {
        let mut recent: Vec<(Millis, SessionKey)> =
            self.unapplied.iter().map(|(k, s)| (s.last_at, k.clone())).collect();
        if recent.len() > max {
            recent.select_nth_unstable_by(max, |a, b| b.cmp(a));
            recent.truncate(max);
        }
        for (_, session) in recent {
            self.settle(&session);
        }
    }

    /// Removes the pushes stored unapplied for `session` (applying them is the caller's).
    pub(crate) fn take_unapplied(&mut self, session: &SessionKey) -> Option<StoredPushes> {
        let stored = self.unapplied.remove(session)?;
        self.unapplied_bytes = self.unapplied_bytes.saturating_sub(stored.bytes);
        Some(stored)
    }

    /// If we own `session`, look for unanswered user messages once the dust settles.
    pub(crate) fn remote_changes_arrived(&mut self, session: &SessionKey) {
        if self.sessions.get(session).is_some_and(|s| s.role.is_some()) {
            let at = self.now + self.cfg.timing.unanswered_delay_ms;
            self.set_timer(at, Timer::Unanswered(session.clone()));
        }
    }

    // ---- anti-entropy -----------------------------------------------------------------------

    /// Sends the next peer a digest of the next range of sessions it should hold.
    pub(crate) fn anti_entropy_round(&mut self) {
        if self.cfg.planted.skip_anti_entropy || self.left {
            return; // PLANTED BUG (simulator only) when set: replicas never repair.
        }
        let peers: Vec<NodeId> = self.members.alive().keys().copied().collect();
        if peers.is_empty() {
            return;
        }
        let peer = match self.ae_peer_cursor {
            Some(prev) => peers.iter().copied().find(|p| *p > prev).unwrap_or(peers[0]),
            None => peers[0],
        };
        self.ae_peer_cursor = Some(peer);
        let from = self.ae_key_cursor.get(&peer).cloned();
        let lower = from.as_ref().map_or(Bound::Unbounded, |k| Bound::Excluded(k.clone()));
        let live: Vec<NodeId> = self.members.live_nodes().collect();
        let r = self.cfg.replication_factor;
        let mut entries = Vec::new();
        let mut last = None;
        let mut scanned = 0;
        let mut reached_end = true;
        let me = self.cfg.node;
        for (key, state) in self.sessions.range((lower, Bound::Unbounded)) {
            scanned += 1;
            last = Some(key.clone());
            let replicas = placement::replicas(key, live.iter().copied(), r);
            let holds = state.epoch.is_some_and(|e| e.node == peer) || replicas.contains(&peer);
            // A session we know only by its owner record (no copy here) is advertised only
            // when we should hold it: otherwise every node would be synced a full copy of
            // every session it has heard of, and kept level by anti-entropy alone.
            let wanted = state.heads != HeadsDigest::default()
                || state.epoch.is_some_and(|e| e.node == me)
                || replicas.contains(&me);
            if holds && wanted {
                entries.push(DigestEntry {
                    session: key.clone(),
                    heads: state.heads,
                    epoch: state.epoch,
                });
            }
            if entries.len() >= DIGEST_ENTRIES_MAX || scanned >= AE_SCAN_SESSIONS_MAX {
                reached_end = false;
                break;
            }
        }
        let to = if reached_end { None } else { last };
        match &to {
            Some(k) => {
                self.ae_key_cursor.insert(peer, k.clone());
            }
            None => {
                self.ae_key_cursor.remove(&peer);
            }
        }
        self.counters.digests_sent += 1;
        self.send(peer, Msg::Digest { entries, from, to });
    }

    pub(crate) fn receive_digest(
        &mut self,
        from: NodeId,
        entries: Vec<DigestEntry>,
        lo: Option<SessionKey>,
        hi: Option<SessionKey>,
    ) {
        let mut mentioned = BTreeSet::new();
        let mut starts = 0;
        for e in entries {
            mentioned.insert(e.session.clone());
            if let Some(epoch) = e.epoch {
                self.observe_epoch(&e.session, epoch);
            }
            let ours = self.sessions.get(&e.session).map(|s| (s.epoch, s.heads));
            if let Some((Some(our_epoch), _)) = ours
                && e.epoch.is_none_or(|theirs| theirs < our_epoch)
            {
                self.send(from, Msg::Owner { session: e.session.clone(), epoch: our_epoch });
            }
            let our_heads = ours.map(|(_, heads)| heads);
            if our_heads != Some(e.heads) && starts < SYNC_STARTS_PER_DIGEST_MAX {
                if self.defer_repair(&e.session) {
                    continue;
                }
                starts += 1;
                self.start_sync(from, &e.session, false);
            }
        }
        // Sessions in the digest's range that the sender should hold but did not mention: it
        // lacks them. The sender mentions only sessions it expects this node to hold (owner or
        // replica), so a copy this node keeps without being either (a former replica's) says
        // nothing about the sender: syncing it would find nothing, every round, forever.
        let lower = lo.map_or(Bound::Unbounded, Bound::Excluded);
        let upper = hi.map_or(Bound::Unbounded, Bound::Included);
        let live: Vec<NodeId> = self.members.live_nodes().collect();
        let r = self.cfg.replication_factor;
        let me = self.cfg.node;
        let missing: Vec<SessionKey> = self
            .sessions
            .range((lower, upper))
            .filter(|(k, s)| {
                if mentioned.contains(*k) || s.heads == HeadsDigest::default() {
                    return false;
                }
                let replicas = placement::replicas(k, live.iter().copied(), r);
                let mine = s.epoch.is_some_and(|e| e.node == me) || replicas.contains(&me);
                mine && replicas.contains(&from)
            })
            .take(SYNC_STARTS_PER_DIGEST_MAX.saturating_sub(starts))
            .map(|(k, _)| k.clone())
            .collect();
        for key in missing {
            self.start_sync(from, &key, false);
        }
    }

    /// Whether a digest mismatch about `session` is put off (and counted) because our copy
    /// changed within [`Timing::ae_recent_ms`]: a push is most likely still on its way, and a sync
    /// now would send what it carries a second time.
    ///
    /// [`Timing::ae_recent_ms`]: super::node::Timing::ae_recent_ms
    fn defer_repair(&mut self, session: &SessionKey) -> bool {
        let (now, recent_ms) = (self.now, self.cfg.timing.ae_recent_ms);
        let Some(state) = self.sessions.get_mut(session) else { return false };
        let recent = now.saturating_sub(state.heads_changed_at) < recent_ms;
        if recent && state.ae_deferred < AE_DEFERRALS_MAX {
            state.ae_deferred += 1;
            self.counters.sync_repairs_deferred += 1;
            return true;
        }
        state.ae_deferred = 0;
        false
    }

    /// Opens a sync exchange with `peer` for `session` (unless one is active; `force` restarts
    /// it). Starts from the persisted form of the sync state, so an exchange that lost messages
    /// earlier cannot stall this one.
    pub(crate) fn start_sync(&mut self, peer: NodeId, session: &SessionKey, force: bool) {
        if peer == self.cfg.node {
            return;
        }
        if !force && self.sync.busy(peer, session, self.now, self.cfg.timing.sync_idle_ms) {
            return;
        }
        if let Err(e) = self.hydrate_or_empty(session) {
            tracing::warn!(%session, error = %e, "sync not started");
            return;
        }
        let state = match self.sync.exchanges.get(&(peer, session.clone())) {
            Some(x) => PeerSyncState::decode(&x.state.encode()).unwrap_or_default(),
            None => self.persisted_sync_state(peer, session),
        };
        self.sync.make_room();
        self.sync.exchanges.insert((peer, session.clone()), Exchange::new(state, self.now));
        self.send_sync_round(peer, session, true);
    }

    /// The sync state with `peer` for `session` as last persisted (empty when none or unreadable).
    fn persisted_sync_state(&self, peer: NodeId, session: &SessionKey) -> PeerSyncState {
        let stored = self.disk.sync_state(&peer, session).ok().flatten();
        stored.and_then(|b| PeerSyncState::decode(&b).ok()).unwrap_or_default()
    }

    /// Ends an exchange: its state (the heads both sides share) is persisted for the next one.
    fn persist_sync_state(&mut self, peer: NodeId, session: &SessionKey, state: &PeerSyncState) {
        let bytes = state.encode();
        self.write(
            Some(session),
            WriteOp::PutSyncState { peer: peer_name(&peer), key: session.clone(), bytes },
        );
    }

    /// Generates and sends our next sync message to `peer`; when there is nothing to say and
    /// `report` is false, the exchange is over and its state is persisted.
    fn send_sync_round(&mut self, peer: NodeId, session: &SessionKey, report: bool) {
        let key = (peer, session.clone());
        let Some(mut x) = self.sync.exchanges.remove(&key) else { return };
        let message: Option<SyncMessage> = self
            .with_doc(session, |doc| doc.generate_sync_message(&mut x.state))
            .and_then(|r| {
                r.map_err(|e| tracing::warn!(%session, error = %e, "sync message not generated"))
                    .ok()
            })
            .flatten();
        if message.is_none() && !report {
            // Both sides have nothing more to say.
            return self.persist_sync_state(peer, session, &x.state);
        }
        x.last = self.now;
        self.sync.exchanges.insert(key, x);
        self.send_sync(peer, session, message);
    }

    /// Sends `peer` a sync message about `session`, with our heads digest and owner record.
    fn send_sync(&mut self, peer: NodeId, session: &SessionKey, message: Option<SyncMessage>) {
        let state = self.sessions.get(session);
        let heads = state.map(|s| s.heads).unwrap_or_default();
        let epoch = state.and_then(|s| s.epoch);
        self.counters.sync_rounds += 1;
        self.send(peer, Msg::Sync { session: session.clone(), message, heads, epoch });
    }

    pub(crate) fn receive_sync(
        &mut self,
        from: NodeId,
        session: SessionKey,
        message: Option<SyncMessage>,
        their_heads: HeadsDigest,
        epoch: Option<Epoch>,
    ) {
        if let Some(e) = epoch {
            self.observe_epoch(&session, e);
        }
        if let Err(e) = self.hydrate_or_empty(&session) {
            tracing::warn!(%session, error = %e, "sync message not applied");
            return;
        }
        if self.heads_equal(&session, their_heads) {
            // Equal digests are equal copies: nothing to send either way, and no Automerge call
            // to learn it (most exchanges of a handoff or a drain start level, or get there after
            // one message).
            self.end_level(from, &session, message.is_some());
            return self.handoff_sync_progress(from, &session, their_heads);
        }
        let key = (from, session.clone());
        let mut x = match self.sync.exchanges.remove(&key) {
            Some(x) => x,
            None => {
                let state = self.persisted_sync_state(from, &session);
                self.sync.make_room();
                Exchange::new(state, self.now)
            }
        };
        let had_message = message.is_some();
        let mut changed = false;
        if let Some(m) = message {
            match self.with_doc(&session, |doc| doc.receive_sync_message(&mut x.state, &m)) {
                Some(Ok(o)) => changed = o.changed,
                Some(Err(e)) => tracing::warn!(%session, error = %e, "sync message refused"),
                None => {}
            }
        }
        let progress = changed || x.their_heads != Some(their_heads);
        x.their_heads = Some(their_heads);
        x.fruitless = if progress { 0 } else { x.fruitless + 1 };
        x.last = self.now;
        let stuck = x.fruitless >= SYNC_FRUITLESS_ROUNDS_MAX;
        if stuck {
            tracing::warn!(%session, peer = %from.short(), rounds = x.fruitless, "sync exchange made no progress; ended");
            self.counters.sync_exchanges_stalled += 1;
            self.persist_sync_state(from, &session, &x.state);
        } else {
            self.sync.exchanges.insert(key, x);
        }
        if changed {
            self.commit_doc(&session, false);
            self.remote_changes_arrived(&session);
        }
        if !stuck {
            if self.heads_equal(&session, their_heads) {
                self.end_level(from, &session, had_message);
            } else {
                self.send_sync_round(from, &session, had_message);
            }
        }
        self.handoff_sync_progress(from, &session, their_heads);
    }

    /// Whether our copy of `session` has the heads digest `theirs` (a copy we do not have is
    /// level with nothing).
    fn heads_equal(&self, session: &SessionKey, theirs: HeadsDigest) -> bool {
        self.sessions.get(session).is_some_and(|s| s.heads == theirs)
    }

    /// Ends the exchange with `peer` about `session`, whose copies are level: its state is
    /// persisted as sharing our heads, and when the peer's message carried something
    /// (`answer`) it is told our heads with an empty message, which ends the exchange on its
    /// side too. An empty message is not answered, so two level nodes exchange at most one
    /// message each way.
    fn end_level(&mut self, peer: NodeId, session: &SessionKey, answer: bool) {
        let key = (peer, session.clone());
        let exchange = self.sync.exchanges.remove(&key);
        if exchange.is_some() || answer {
            self.counters.sync_exchanges_level += 1;
            let heads = match self.unapplied.get(session) {
                Some(stored) => Some(stored.tracker.part_heads()),
                None => self.docs.update(session, |doc| doc.part_heads()),
            };
            // Not hydrated: the state persisted last stays (older shared heads cost the next
            // exchange a larger first message, not correctness).
            if let Some(heads) = heads {
                let mut state = match exchange {
                    Some(x) => x.state,
                    None => self.persisted_sync_state(peer, session),
                };
                state.set_level(&heads);
                self.persist_sync_state(peer, session, &state);
            }
        }
        if answer {
            self.send_sync(peer, session, None);
        }
    }
}
