//! The node state machine: `Node::handle(now, input) -> effects`.
//!
//! This file holds the state, the dispatch of inputs and the helpers every part uses (sending,
//! writing, hydrating). The behaviours live beside it: `requests` (routing and serving client
//! requests), `replication` (pushes, anti-entropy, sync), `ownership` (epochs, claims, takeover,
//! handoff and drain) and `turns` (starting turns, their output and events).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use beamclaw_crdt::cache::SessionCache;
use beamclaw_crdt::doc::{SessionDoc, SessionMeta};
use beamclaw_crdt::{HeadsDigest, IndexEntry, SessionKey};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::api::{
    BatchId, Command, Counters, Effect, Event, Input, MemberStatus, Millis, NodeStatus, ReqId,
    RequestBody, RequestError, Response,
};
use super::ids::{Epoch, Generation, Member, NodeId};
use super::membership::{Membership, MembershipChange, SwimOutput, SwimPreset};
use super::placement;
use super::storage::{Disk, INDEX_PAGE_SESSIONS_MAX, WriteBatch, WriteOp};
use super::timers::Timer;
use super::wire::{self, DATAGRAM_BYTES_MAX, Envelope, FRAME_BYTES_MAX, Msg, PROTOCOL_VERSION};

/// Timing of the core's periodic work, in milliseconds. Defaults suit a LAN.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// How long a request waits for its owner's answer before it is re-routed.
    pub request_attempt_ms: u64,
    /// How many times a request is routed before the client gets an error.
    pub request_attempts_max: u32,
    /// Period of anti-entropy digests (one peer per round, in turn).
    pub anti_entropy_ms: u64,
    /// Period of the placement check (takeover of sessions whose owner is down, rebalancing).
    pub placement_ms: u64,
    /// Subscriptions are refreshed at this period and expire after three periods.
    pub subscribe_refresh_ms: u64,
    /// A handoff step (sync round or offer) is retried after this long without progress.
    pub handoff_step_ms: u64,
    /// A handoff that has not completed after this long is abandoned.
    pub handoff_timeout_ms: u64,
    /// During a rebalance, how long a running turn may take to finish before it is checkpointed.
    pub rebalance_turn_wait_ms: u64,
    /// Delay after remote changes before looking for unanswered user messages (lets the replies
    /// that travel with them arrive first).
    pub unanswered_delay_ms: u64,
    /// Re-announce to seeds at this period while no live member is known.
    pub reannounce_ms: u64,
    /// After a restart, owned sessions resume their turns this long after joining.
    pub resume_grace_ms: u64,
    /// A sync exchange with no message for this long is considered finished or lost.
    pub sync_idle_ms: u64,
    /// A replica applies the pushes it stored without applying them at most this long after the
    /// first of them; sooner when the session is read, and before a listing of this node's
    /// index for the [`super::replication::LIST_SETTLES_MAX`] sessions pushed to most recently
    /// (`Command::SettleStored`). Longer batches cost less (one Automerge call per batch); the
    /// stored index entry of a session no listing touched lags the writer by up to this much.
    pub replica_settle_ms: u64,
    /// A digest that disagrees about a session whose copy here changed within this long starts
    /// no sync: the changes in question are most likely still on their way (a push to or from
    /// this node). Anti-entropy repairs what is really missing once the session has been quiet
    /// this long, or at the latest after [`super::replication::AE_DEFERRALS_MAX`] digests.
    pub ae_recent_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            request_attempt_ms: 2_000,
            request_attempts_max: 5,
            anti_entropy_ms: 1_000,
            placement_ms: 500,
            subscribe_refresh_ms: 5_000,
            handoff_step_ms: 300,
            handoff_timeout_ms: 10_000,
            rebalance_turn_wait_ms: 30_000,
            unanswered_delay_ms: 500,
            reannounce_ms: 2_000,
            resume_grace_ms: 1_500,
            sync_idle_ms: 5_000,
            replica_settle_ms: 30_000,
            ae_recent_ms: 2_000,
        }
    }
}

/// Bugs the simulator can switch on to prove that its checker catches them. Never set outside
/// the simulator and its tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlantedBugs {
    /// Acknowledge a submitted message before its write is durable.
    pub ack_before_durable: bool,
    /// Take over a session without raising the epoch.
    pub takeover_without_raise: bool,
    /// Never send anti-entropy digests.
    pub skip_anti_entropy: bool,
    /// Hand a session over without waiting until the successor's copy equals ours.
    pub handoff_without_equal_heads: bool,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub generation: Generation,
    /// Seeds to join through (may be empty: a standalone node).
    pub seeds: Vec<SocketAddr>,
    /// Replicas per session (R).
    pub replication_factor: usize,
    /// Copies durable before a submit is acknowledged (W, counting the owner).
    pub write_quorum: usize,
    pub swim: SwimPreset,
    /// Seed of the core's RNG (foca's probes, anti-entropy jitter, session ids).
    pub rng_seed: [u8; 32],
    /// Memory budget for hydrated session documents.
    pub hydrated_bytes_budget: usize,
    pub timing: Timing,
    pub planted: PlantedBugs,
}

impl NodeConfig {
    pub fn new(node: NodeId, addr: SocketAddr, generation: Generation, rng_seed: [u8; 32]) -> Self {
        NodeConfig {
            node,
            addr,
            generation,
            seeds: Vec::new(),
            replication_factor: placement::REPLICATION_FACTOR_DEFAULT,
            write_quorum: 1,
            swim: SwimPreset::Lan,
            rng_seed,
            hydrated_bytes_budget: beamclaw_crdt::cache::HYDRATED_BYTES_BUDGET,
            timing: Timing::default(),
            planted: PlantedBugs::default(),
        }
    }

    /// The Automerge actor of this process: new for every start, so that changes lost in a
    /// crash can never be re-issued with the same (actor, seq) and different content.
    pub fn actor(&self) -> Vec<u8> {
        let starts = self.generation >> super::ids::GENERATION_RENEW_BITS;
        beamclaw_crdt::doc::writer_actor(&hex::encode(self.node.0), starts).to_vec()
    }
}

/// Where an answer goes: a local caller or the node that originated a remote request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Local(ReqId),
    Remote { node: NodeId, id: u64 },
}

/// Work that may only happen once a write batch is durable.
#[derive(Debug)]
pub(crate) enum AfterDurable {
    Respond {
        to: Origin,
        result: Result<Response, RequestError>,
    },
    StartTurn {
        session: SessionKey,
        message_id: String,
    },
    ClaimDurable {
        session: SessionKey,
        epoch: Epoch,
    },
    AcceptHandoff {
        session: SessionKey,
        epoch: Epoch,
        to: NodeId,
    },
    FinalEvent {
        run: super::turn::RunRef,
        event: super::turn::TurnEvent,
    },
    ChangesAck {
        session: SessionKey,
        to: NodeId,
        ack: u64,
    },
    QuorumLocal {
        ack: u64,
    },
    /// Answer a local caller that is not a routed request (a turn's write).
    Reply {
        req: ReqId,
        result: Result<Response, RequestError>,
    },
}

/// What we own of a session (present only while we are its owner).
#[derive(Debug, Default)]
pub(crate) struct OwnerRole {
    /// The claim (or accepted handoff) is durable: turns may start.
    pub durable: bool,
    /// After a restart: turns resume once the node has joined and the grace period passed.
    pub resume_after: Option<Millis>,
    /// User messages a turn was started for under this epoch.
    pub started: BTreeSet<String>,
    /// Runs started and not yet done: run id -> the user message it answers.
    pub running: BTreeMap<String, String>,
    /// Messages accepted while turns may not start (handoff, drain): the successor starts them.
    pub deferred: bool,
    pub handoff: Option<super::ownership::Handoff>,
    /// Requests that arrived while a handoff offer was outstanding.
    pub parked: Vec<(Origin, RequestBody)>,
}

/// Everything the node knows about one session, hydrated or not.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// The index entry as last written (owner, counts, labels).
    pub entry: IndexEntry,
    /// The highest owner record known.
    pub epoch: Option<Epoch>,
    pub heads: HeadsDigest,
    /// When `heads` last changed (see [`Timing::ae_recent_ms`]).
    pub heads_changed_at: Millis,
    /// Digest mismatches in a row that started no sync because `heads` had just changed.
    pub ae_deferred: u32,
    /// Present while we own the session.
    pub role: Option<OwnerRole>,
    /// The last write batch holding changes of this session, while in flight.
    pub inflight_batch: Option<BatchId>,
    /// The metadata read at the last commit, with the manifest heads it was read at: reading
    /// it again is skipped while the manifest is unchanged (most commits add messages only).
    pub meta: Option<(Vec<[u8; 32]>, SessionMeta)>,
}

impl SessionState {
    pub(crate) fn set_heads(&mut self, heads: HeadsDigest, now: Millis) {
        if self.heads != heads {
            self.heads = heads;
            self.heads_changed_at = now;
        }
    }
}

/// A request this node originated and waits on.
#[derive(Debug)]
pub(crate) struct PendingRequest {
    pub session: SessionKey,
    pub body: RequestBody,
    pub attempts: u32,
    pub sent_to: Option<NodeId>,
    /// When the current attempt times out (timers for earlier attempts are ignored).
    pub deadline: Millis,
}

pub struct Node<D: Disk> {
    pub(crate) cfg: NodeConfig,
    pub(crate) actor: Vec<u8>,
    /// The node id as messages carry it in `author` (formatting it decodes a public key, so it
    /// is done once).
    pub(crate) author: String,
    pub(crate) disk: D,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) members: Membership,
    pub(crate) now: Millis,
    pub(crate) sessions: BTreeMap<SessionKey, SessionState>,
    /// Sessions by owner node (our view), for takeover when a node goes down.
    pub(crate) by_owner: BTreeMap<NodeId, BTreeSet<SessionKey>>,
    pub(crate) docs: SessionCache<SessionDoc>,
    /// Pushes stored (written to disk) but not yet applied to the hydrated copy, per session
    /// (replicas only; see [`super::replication::StoredPushes`]), and their bytes in all.
    pub(crate) unapplied: BTreeMap<SessionKey, super::replication::StoredPushes>,
    pub(crate) unapplied_bytes: usize,
    pub(crate) requests: BTreeMap<ReqId, PendingRequest>,
    /// Local subscribers per session (reference counts).
    pub(crate) local_subs: BTreeMap<SessionKey, u32>,
    /// Remote nodes subscribed to sessions we own, and when each subscription expires.
    pub(crate) remote_subs: BTreeMap<SessionKey, BTreeMap<NodeId, Millis>>,
    pub(crate) next_batch: BatchId,
    pub(crate) step_ops: Vec<WriteOp>,
    pub(crate) step_waiters: Vec<AfterDurable>,
    pub(crate) step_sessions: BTreeSet<SessionKey>,
    pub(crate) inflight: BTreeMap<BatchId, (Vec<AfterDurable>, Vec<SessionKey>)>,
    pub(crate) quorum: BTreeMap<u64, super::replication::QuorumWait>,
    pub(crate) next_ack: u64,
    pub(crate) congested: BTreeSet<NodeId>,
    pub(crate) sync: super::replication::SyncTable,
    pub(crate) ae_peer_cursor: Option<NodeId>,
    pub(crate) ae_key_cursor: BTreeMap<NodeId, SessionKey>,
    pub(crate) drain: Option<super::ownership::DrainState>,
    pub(crate) joined_at: Option<Millis>,
    pub(crate) left: bool,
    pub(crate) counters: Counters,
    pub(crate) out: Vec<Effect>,
}

impl<D: Disk> Node<D> {
    /// A node over `disk`. Call [`Node::start`] next: it loads the index and arms the timers.
    pub fn new(cfg: NodeConfig, disk: D) -> Self {
        let me = Member { node: cfg.node, addr: cfg.addr, generation: cfg.generation };
        let mut rng = ChaCha8Rng::from_seed(cfg.rng_seed);
        let swim_rng = ChaCha8Rng::from_rng(&mut rng);
        let members = Membership::new(me, cfg.swim, swim_rng);
        let actor = cfg.actor();
        let docs = SessionCache::new(cfg.hydrated_bytes_budget);
        let author = cfg.node.to_string();
        Node {
            cfg,
            actor,
            author,
            disk,
            rng,
            members,
            now: 0,
            sessions: BTreeMap::new(),
            by_owner: BTreeMap::new(),
            docs,
            unapplied: BTreeMap::new(),
            unapplied_bytes: 0,
            requests: BTreeMap::new(),
            local_subs: BTreeMap::new(),
            remote_subs: BTreeMap::new(),
            next_batch: 1,
            step_ops: Vec::new(),
            step_waiters: Vec::new(),
            step_sessions: BTreeSet::new(),
            inflight: BTreeMap::new(),
            quorum: BTreeMap::new(),
            next_ack: 1,
            congested: BTreeSet::new(),
            sync: super::replication::SyncTable::default(),
            ae_peer_cursor: None,
            ae_key_cursor: BTreeMap::new(),
            drain: None,
            joined_at: None,
            left: false,
            counters: Counters::default(),
            out: Vec::new(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.cfg.node
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Loads the session index from disk and arms the periodic timers; joins the seeds if any.
    pub fn start(&mut self, now: Millis) -> Result<Vec<Effect>, super::storage::DiskError> {
        self.now = now;
        let mut after: Option<SessionKey> = None;
        loop {
            let page = self.disk.index_page(after.as_ref(), INDEX_PAGE_SESSIONS_MAX)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let full = page.len() == INDEX_PAGE_SESSIONS_MAX;
            for (key, entry) in page {
                self.load_index_entry(key, entry);
            }
            if !full {
                break;
            }
        }
        tracing::info!(
            node = %self.cfg.node.short(),
            sessions = self.sessions.len(),
            owned = self.by_owner.get(&self.cfg.node).map_or(0, BTreeSet::len),
            "mesh core started"
        );
        let t = &self.cfg.timing;
        let (ae, placement, subs) = (t.anti_entropy_ms, t.placement_ms, t.subscribe_refresh_ms);
        self.set_timer(now + ae, Timer::AntiEntropy);
        self.set_timer(now + placement, Timer::Placement);
        self.set_timer(now + subs, Timer::Subscriptions);
        if self.cfg.seeds.is_empty() {
            // Standalone: there is no cluster to wait for.
            self.joined_at = Some(now);
        } else {
            let seeds = self.cfg.seeds.clone();
            self.join(seeds);
        }
        Ok(std::mem::take(&mut self.out))
    }

    fn load_index_entry(&mut self, key: SessionKey, entry: IndexEntry) {
        let epoch = entry.owner.as_ref().and_then(Epoch::from_record);
        let mut state = SessionState { heads: entry.heads, entry, epoch, ..Default::default() };
        if let Some(e) = epoch {
            if e.node == self.cfg.node {
                // We owned it when we stopped. Resume as owner; turns restart after the grace
                // period, by which time a newer owner (if the cluster moved on) is known.
                state.role = Some(OwnerRole {
                    durable: true,
                    resume_after: Some(u64::MAX),
                    ..Default::default()
                });
            }
            self.by_owner.entry(e.node).or_default().insert(key.clone());
        }
        self.sessions.insert(key, state);
    }

    /// Feeds one input to the node and returns what the driver must do.
    pub fn handle(&mut self, now: Millis, input: Input) -> Vec<Effect> {
        self.now = self.now.max(now);
        match input {
            Input::Datagram { from, bytes } => self.on_datagram(from, &bytes),
            Input::Frame { from, bytes } => self.on_frame(from, &bytes),
            Input::Timer(timer) => self.on_timer(timer),
            Input::Persisted { batch, result } => self.on_persisted(batch, result),
            Input::Congestion { node, congested } => {
                if congested {
                    self.congested.insert(node);
                } else {
                    self.congested.remove(&node);
                }
            }
            Input::Command(cmd) => self.on_command(cmd),
            Input::Turn(t) => self.on_turn_input(t),
        }
        self.take_owner_broadcasts();
        self.flush_step();
        std::mem::take(&mut self.out)
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Join { seeds } => self.join(seeds),
            Command::Request { req, session, body } => self.request(req, session, body),
            Command::Subscribe { session } => self.subscribe_local(session),
            Command::Unsubscribe { session } => {
                if let Some(n) = self.local_subs.get_mut(&session) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.local_subs.remove(&session);
                    }
                }
            }
            Command::Drain { deadline } => self.begin_drain(deadline),
            Command::Broadcast { topic, payload } => self.broadcast(topic, payload),
            Command::SettleStored { max } => self.settle_recent(max),
        }
    }

    fn join(&mut self, seeds: Vec<SocketAddr>) {
        for seed in seeds.iter().copied() {
            if seed == self.cfg.addr {
                continue;
            }
            if !self.cfg.seeds.contains(&seed) {
                self.cfg.seeds.push(seed);
            }
            // We do not know the seed's node id, and foca only accepts an announce addressed to
            // its own id: send the seed our identity; it announces itself back to us.
            let env = self.envelope(Msg::Hello { member: self.members.me().clone() });
            match wire::encode(&env, DATAGRAM_BYTES_MAX) {
                Ok(bytes) => {
                    self.counters.datagrams_out += 1;
                    self.out.push(Effect::SendDatagram { to: seed, node: None, bytes });
                }
                Err(e) => tracing::error!(error = %e, "hello not sent"),
            }
        }
        let at = self.now + self.cfg.timing.reannounce_ms;
        self.set_timer(at, Timer::Reannounce);
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Swim(t) => match self.members.handle_timer(t) {
                Ok(out) => self.apply_swim(out),
                Err(e) => tracing::debug!(error = %e, "swim timer"),
            },
            Timer::Reannounce => {
                if self.members.alive().is_empty() && !self.cfg.seeds.is_empty() && !self.left {
                    let seeds = self.cfg.seeds.clone();
                    self.join(seeds);
                }
            }
            Timer::AntiEntropy => {
                self.anti_entropy_round();
                let jitter = self.jitter(self.cfg.timing.anti_entropy_ms / 4);
                let at = self.now + self.cfg.timing.anti_entropy_ms + jitter;
                self.set_timer(at, Timer::AntiEntropy);
            }
            Timer::RequestTimeout(req) => self.request_timed_out(req),
            Timer::Subscriptions => {
                self.refresh_subscriptions();
                let at = self.now + self.cfg.timing.subscribe_refresh_ms;
                self.set_timer(at, Timer::Subscriptions);
            }
            Timer::Placement => {
                self.placement_round();
                let at = self.now + self.cfg.timing.placement_ms;
                self.set_timer(at, Timer::Placement);
            }
            Timer::Handoff(session) => self.handoff_tick(&session),
            Timer::Unanswered(session) => self.start_unanswered(&session),
            Timer::Settle(session) => self.settle(&session),
            Timer::DrainDeadline => self.drain_deadline(),
            Timer::DrainRetry => self.drain_retry(),
            Timer::Quorum(ack) => self.quorum_timed_out(ack),
            Timer::Resume => self.resume_owned(),
        }
    }

    fn on_datagram(&mut self, _from: SocketAddr, bytes: &[u8]) {
        self.counters.datagrams_in += 1;
        let env = match wire::decode(bytes, DATAGRAM_BYTES_MAX) {
            Ok(env) => env,
            Err(e) => return self.count_bad_frame(&e),
        };
        match env.msg {
            Msg::Swim(data) => match self.members.handle_data(&data) {
                Ok(out) => self.apply_swim(out),
                Err(e) => tracing::debug!(error = %e, "swim packet refused"),
            },
            Msg::Hello { member } => self.hello(member),
            other => {
                tracing::debug!(kind = other.kind(), "non-SWIM message in a datagram dropped");
                self.counters.frames_dropped_decode += 1;
            }
        }
    }

    fn on_frame(&mut self, from: NodeId, bytes: &[u8]) {
        self.counters.frames_in += 1;
        let env = match wire::decode(bytes, FRAME_BYTES_MAX) {
            Ok(env) => env,
            Err(e) => return self.count_bad_frame(&e),
        };
        if env.from != from {
            // The transport authenticated `from`; a frame claiming another sender is forged.
            tracing::warn!(claimed = %env.from.short(), actual = %from.short(), "frame with a forged sender dropped");
            self.counters.frames_dropped_decode += 1;
            return;
        }
        if self.left {
            return;
        }
        self.dispatch(from, env.msg);
    }

    fn count_bad_frame(&mut self, e: &wire::WireError) {
        match e {
            wire::WireError::Version { .. } => self.counters.frames_dropped_version += 1,
            _ => self.counters.frames_dropped_decode += 1,
        }
        tracing::debug!(error = %e, "frame dropped");
    }

    fn dispatch(&mut self, from: NodeId, msg: Msg) {
        match msg {
            Msg::Swim(data) => match self.members.handle_data(&data) {
                Ok(out) => self.apply_swim(out),
                Err(e) => tracing::debug!(error = %e, "swim frame refused"),
            },
            Msg::Request { id, session, hops, body, origin } => {
                self.remote_request(origin, id, session, hops, body)
            }
            Msg::Response { id, result } => self.response(from, id, result),
            Msg::Turn { run, event } => self.remote_turn_event(run, event),
            Msg::Subscribe { session, ttl_ms } => self.remote_subscribe(from, session, ttl_ms),
            Msg::Changes { session, chunks, epoch, ack } => {
                self.receive_changes(from, session, chunks, epoch, ack)
            }
            Msg::ChangesAck { session: _, ack } => self.quorum_ack(from, ack),
            Msg::Sync { session, message, heads, epoch } => {
                self.receive_sync(from, session, message, heads, epoch)
            }
            Msg::Digest { entries, from: lo, to: hi } => self.receive_digest(from, entries, lo, hi),
            Msg::Owner { session, epoch } => self.observe_epoch(&session, epoch),
            Msg::HandoffOffer { session, epoch, heads } => {
                self.handoff_offered(from, session, epoch, heads)
            }
            Msg::HandoffAccept { session, epoch } => self.handoff_accepted(from, session, epoch),
            Msg::HandoffRefuse { session, epoch, reason } => {
                self.handoff_refused(from, session, epoch, reason)
            }
            Msg::Hello { member } => self.hello(member),
            Msg::Broadcast { topic, payload } => {
                if topic.len() <= wire::BROADCAST_TOPIC_BYTES_MAX
                    && payload.len() <= wire::BROADCAST_PAYLOAD_BYTES_MAX
                {
                    self.deliver(Event::Broadcast { from, topic, payload });
                }
            }
        }
    }

    /// Sends a broadcast to every live member and delivers it here too.
    fn broadcast(&mut self, topic: String, payload: Vec<u8>) {
        if topic.len() > wire::BROADCAST_TOPIC_BYTES_MAX
            || payload.len() > wire::BROADCAST_PAYLOAD_BYTES_MAX
        {
            tracing::warn!(bytes = payload.len(), "broadcast over its limit dropped");
            return;
        }
        let peers: Vec<NodeId> = self.members.alive().keys().copied().collect();
        for peer in peers {
            self.send(peer, Msg::Broadcast { topic: topic.clone(), payload: payload.clone() });
        }
        let from = self.cfg.node;
        self.deliver(Event::Broadcast { from, topic, payload });
    }

    /// A node joining through us: announce ourselves to it, so both learn each other.
    fn hello(&mut self, member: Member) {
        if member.node == self.cfg.node || self.left {
            return;
        }
        match self.members.announce(member) {
            Ok(out) => self.apply_swim(out),
            Err(e) => tracing::debug!(error = %e, "announce to a joining node failed"),
        }
    }

    // ---- membership -------------------------------------------------------------------------

    /// Owner records that arrived piggybacked on SWIM packets.
    fn take_owner_broadcasts(&mut self) {
        for (session, epoch) in self.members.take_owner_records() {
            self.observe_epoch(&session, epoch);
        }
    }

    pub(crate) fn apply_swim(&mut self, out: SwimOutput) {
        for (to, data) in out.sends {
            let env = self.envelope(Msg::Swim(data));
            match wire::encode(&env, DATAGRAM_BYTES_MAX) {
                Ok(bytes) => {
                    self.counters.datagrams_out += 1;
                    let node = (to.node != NodeId([0; 32])).then_some(to.node);
                    self.out.push(Effect::SendDatagram { to: to.addr, node, bytes });
                }
                Err(e) => tracing::warn!(error = %e, "swim packet over the datagram limit dropped"),
            }
        }
        for (after, timer) in out.timers {
            let at = self.now + u64::try_from(after.as_millis()).unwrap_or(u64::MAX / 2);
            self.set_timer(at, timer);
        }
        for change in out.changes {
            self.membership_changed(change);
        }
    }

    fn membership_changed(&mut self, change: MembershipChange) {
        match change {
            MembershipChange::Up(m) => {
                tracing::info!(member = ?m, "member up");
                self.out.push(Effect::Deliver(Event::MemberUp(m.clone())));
                if self.cfg.seeds.contains(&m.addr) {
                    // A seed answered our hello by announcing itself, so we only know the seed.
                    // Now that we know its identity, announce to it: its feed tells us the
                    // other members at once, instead of one at a time as each happens to probe
                    // us (seconds per member), while placement runs on an incomplete view.
                    match self.members.announce(m.clone()) {
                        Ok(out) => self.apply_swim(out),
                        Err(e) => tracing::debug!(error = %e, "announce to a seed failed"),
                    }
                }
                self.placement_round();
            }
            MembershipChange::Down(m) => {
                tracing::info!(member = ?m, "member down");
                if self.members.is_alive(&m.node) {
                    // An older generation of a member that is alive again.
                    return;
                }
                self.out.push(Effect::Deliver(Event::MemberDown(m.clone())));
                self.congested.remove(&m.node);
                self.sync.forget_peer(&m.node);
                self.peer_lost(m.node);
                self.placement_round();
            }
            MembershipChange::Renamed { from, to } => {
                tracing::info!(from = ?from, to = ?to, "member renamed");
                if from.generation >> super::ids::GENERATION_RENEW_BITS
                    != to.generation >> super::ids::GENERATION_RENEW_BITS
                {
                    // The process restarted: whatever it had in memory (requests in progress,
                    // sync exchanges, subscriptions) is gone.
                    self.sync.forget_peer(&to.node);
                    self.peer_lost(to.node);
                }
            }
            MembershipChange::Active => {
                if self.joined_at.is_none() {
                    self.joined_at = Some(self.now);
                    self.arm_resume();
                }
                self.out.push(Effect::Deliver(Event::Membership { active: true }));
            }
            MembershipChange::Idle => {
                self.out.push(Effect::Deliver(Event::Membership { active: false }));
                let at = self.now + self.cfg.timing.reannounce_ms;
                self.set_timer(at, Timer::Reannounce);
            }
            MembershipChange::Defunct if self.left => {
                tracing::info!("left the cluster");
            }
            MembershipChange::Defunct => {
                tracing::error!("this node was declared down and could not renew its identity");
            }
        }
    }

    // ---- effects helpers --------------------------------------------------------------------

    pub(crate) fn envelope(&self, msg: Msg) -> Envelope {
        Envelope {
            version: PROTOCOL_VERSION,
            from: self.cfg.node,
            generation: self.members.me().generation,
            msg,
        }
    }

    /// Sends `msg` to `to` on a reliable stream. Sending to ourselves is a bug and is dropped.
    pub(crate) fn send(&mut self, to: NodeId, msg: Msg) {
        if to == self.cfg.node {
            tracing::error!(kind = msg.kind(), "refusing to send a frame to ourselves");
            return;
        }
        let kind = msg.kind();
        let env = self.envelope(msg);
        match wire::encode(&env, FRAME_BYTES_MAX) {
            Ok(bytes) => {
                self.counters.frames_out += 1;
                let addr = self.members.member(&to).map(|m| m.addr);
                self.out.push(Effect::SendFrame { to, addr, bytes });
            }
            Err(e) => tracing::error!(kind, error = %e, "frame not sent"),
        }
    }

    pub(crate) fn set_timer(&mut self, at: Millis, timer: Timer) {
        self.out.push(Effect::SetTimer { at, timer });
    }

    pub(crate) fn deliver(&mut self, event: Event) {
        self.out.push(Effect::Deliver(event));
    }

    pub(crate) fn jitter(&mut self, max: u64) -> u64 {
        use rand::RngExt;
        if max == 0 { 0 } else { self.rng.random_range(0..max) }
    }

    // ---- storage ----------------------------------------------------------------------------

    /// Adds a write to this step's batch.
    pub(crate) fn write(&mut self, session: Option<&SessionKey>, op: WriteOp) {
        if let Some(s) = session {
            self.step_sessions.insert(s.clone());
        }
        self.step_ops.push(op);
    }

    /// Runs `action` once everything written so far for `session` is durable (now, if nothing
    /// is pending).
    pub(crate) fn when_durable(&mut self, session: &SessionKey, action: AfterDurable) {
        if self.step_sessions.contains(session) {
            self.step_waiters.push(action);
            return;
        }
        let batch = self.sessions.get(session).and_then(|s| s.inflight_batch);
        match batch.and_then(|b| self.inflight.get_mut(&b)) {
            Some((waiters, _)) => waiters.push(action),
            None => self.run_after_durable(action),
        }
    }

    /// Emits this step's writes as one batch.
    fn flush_step(&mut self) {
        if self.step_ops.is_empty() {
            let waiters = std::mem::take(&mut self.step_waiters);
            for w in waiters {
                self.run_after_durable(w);
            }
            return;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        let sessions: Vec<SessionKey> =
            std::mem::take(&mut self.step_sessions).into_iter().collect();
        for s in &sessions {
            if let Some(state) = self.sessions.get_mut(s) {
                state.inflight_batch = Some(batch);
            }
            self.docs.mark_dirty(s);
        }
        let waiters = std::mem::take(&mut self.step_waiters);
        let writes = WriteBatch::new(std::mem::take(&mut self.step_ops));
        self.inflight.insert(batch, (waiters, sessions));
        self.out.push(Effect::Persist { batch, writes });
    }

    fn on_persisted(&mut self, batch: BatchId, result: Result<(), String>) {
        let Some((waiters, sessions)) = self.inflight.remove(&batch) else {
            tracing::warn!(batch, "completion of an unknown write batch");
            return;
        };
        for s in &sessions {
            if let Some(state) = self.sessions.get_mut(s)
                && state.inflight_batch == Some(batch)
            {
                state.inflight_batch = None;
                self.docs.mark_clean(s);
            }
        }
        match result {
            Ok(()) => {
                for w in waiters {
                    self.run_after_durable(w);
                }
            }
            Err(reason) => {
                self.counters.store_errors += 1;
                tracing::error!(batch, %reason, "write batch failed; its sessions are reloaded from disk");
                for s in &sessions {
                    // What memory holds of these sessions is ahead of the disk: drop it, so that
                    // nothing not durable is ever reported as stored.
                    self.docs.remove(s);
                    self.take_unapplied(s);
                }
                for w in waiters {
                    self.fail_after_durable(w, &reason);
                }
            }
        }
    }

    fn fail_after_durable(&mut self, action: AfterDurable, reason: &str) {
        match action {
            AfterDurable::Respond { to, .. } => {
                self.answer(to, Err(RequestError::Storage(reason.to_string())))
            }
            AfterDurable::Reply { req, .. } => {
                let result = Err(RequestError::Storage(reason.to_string()));
                self.deliver(Event::Response { req, result });
            }
            AfterDurable::ClaimDurable { session, epoch } => {
                // The claim is not durable: give it up rather than act on it.
                if let Some(state) = self.sessions.get_mut(&session)
                    && state.epoch == Some(epoch)
                {
                    state.role = None;
                }
            }
            AfterDurable::QuorumLocal { ack } => {
                if let Some(q) = self.quorum.remove(&ack) {
                    for w in q.then {
                        self.fail_after_durable(w, reason);
                    }
                }
            }
            // A turn that cannot start now starts after the next takeover or scan; events and
            // acks are best effort.
            AfterDurable::StartTurn { .. }
            | AfterDurable::AcceptHandoff { .. }
            | AfterDurable::FinalEvent { .. }
            | AfterDurable::ChangesAck { .. } => {}
        }
    }

    fn run_after_durable(&mut self, action: AfterDurable) {
        match action {
            AfterDurable::Respond { to, result } => self.answer(to, result),
            AfterDurable::StartTurn { session, message_id } => {
                self.start_turn(&session, &message_id)
            }
            AfterDurable::ClaimDurable { session, epoch } => self.claim_durable(&session, epoch),
            AfterDurable::AcceptHandoff { session, epoch, to } => {
                self.send(to, Msg::HandoffAccept { session: session.clone(), epoch });
                self.claim_durable(&session, epoch);
            }
            AfterDurable::FinalEvent { run, event } => self.fan_out_turn_event(run, event),
            AfterDurable::ChangesAck { session, to, ack } => {
                self.send(to, Msg::ChangesAck { session, ack })
            }
            AfterDurable::QuorumLocal { ack } => self.quorum_local(ack),
            AfterDurable::Reply { req, result } => self.deliver(Event::Response { req, result }),
        }
    }

    // ---- documents --------------------------------------------------------------------------

    /// Hydrates `session` from disk if needed. `Ok(false)` when the node has no copy.
    pub(crate) fn hydrate(&mut self, session: &SessionKey) -> Result<bool, RequestError> {
        if self.docs.contains(session) {
            return Ok(true);
        }
        let doc = match self.disk.load_session(session, &self.actor) {
            Ok(Some(doc)) => doc,
            Ok(None) => return Ok(false),
            Err(super::storage::DiskError::Quarantined { key, reason }) => {
                // Our copy is damaged. Drop it; a replica's copy comes back through sync.
                tracing::error!(session = %key, %reason, "quarantined session dropped; it will be re-synced from replicas");
                self.write(Some(session), WriteOp::DeleteSession { key: session.clone() });
                self.take_unapplied(session);
                if let Some(state) = self.sessions.get_mut(session) {
                    state.heads = HeadsDigest::default();
                }
                return Ok(false);
            }
            Err(e) => return Err(RequestError::Storage(e.to_string())),
        };
        self.docs.insert(session.clone(), doc);
        Ok(true)
    }

    /// Hydrates `session`, creating an empty copy (deterministic genesis only) if we have none,
    /// so that pushed or synced changes of a session new to us have somewhere to go.
    pub(crate) fn hydrate_or_empty(&mut self, session: &SessionKey) -> Result<(), RequestError> {
        if self.hydrate(session)? {
            return Ok(());
        }
        let doc = SessionDoc::empty(session.clone(), &self.actor)
            .map_err(|e| RequestError::Storage(e.to_string()))?;
        self.docs.insert(session.clone(), doc);
        self.sessions.entry(session.clone()).or_default();
        Ok(())
    }

    /// Runs `f` on the hydrated document of `session`, with every push stored for it applied
    /// first.
    pub(crate) fn with_doc<R>(
        &mut self,
        session: &SessionKey,
        f: impl FnOnce(&mut SessionDoc) -> R,
    ) -> Option<R> {
        if self.unapplied.contains_key(session) {
            self.settle(session);
        }
        self.docs.update(session, f)
    }

    /// After a change to `session`'s document: persist its new chunks, refresh the index entry,
    /// and (when `push`) send the chunks to the replicas.
    pub(crate) fn commit_doc(&mut self, session: &SessionKey, push: bool) -> Option<u64> {
        self.commit_doc_with(session, push, false)
    }

    /// [`Self::commit_doc`]; with `refresh`, the index entry is rewritten even when there are no
    /// new chunks (changes applied that were already on disk).
    pub(crate) fn commit_doc_with(
        &mut self,
        session: &SessionKey,
        push: bool,
        refresh: bool,
    ) -> Option<u64> {
        let cached = self.sessions.get_mut(session).and_then(|s| s.meta.take());
        let (chunks, heads, entry, meta) = self.with_doc(session, |doc| {
            let chunks = doc.take_chunks();
            let heads = doc.heads_digest();
            let manifest = doc.part_heads().into_iter().next().map(|(_, h)| h).unwrap_or_default();
            // The manifest rarely changes (settings, resets); the token counts are the
            // segments' and change with every turn.
            let meta = match cached {
                Some((at, mut meta)) if at == manifest => {
                    [meta.input_tokens, meta.output_tokens, meta.total_tokens] = doc.token_counts();
                    meta
                }
                _ => doc.meta().unwrap_or_default(),
            };
            let entry = index_entry_with(doc, &meta);
            (chunks, heads, entry, (manifest, meta))
        })?;
        if chunks.is_empty() && !refresh {
            if let Some(state) = self.sessions.get_mut(session) {
                state.meta = Some(meta);
            }
            return None;
        }
        let state = self.sessions.entry(session.clone()).or_default();
        state.meta = Some(meta);
        state.set_heads(heads, self.now);
        let mut entry = entry;
        entry.owner = state.epoch.map(Into::into);
        entry.heads = heads;
        state.entry = entry.clone();
        if !chunks.is_empty() {
            self.write(
                Some(session),
                WriteOp::AppendChunks { key: session.clone(), chunks: chunks.clone() },
            );
        }
        self.write(
            Some(session),
            WriteOp::PutIndex { key: session.clone(), entry: Box::new(entry) },
        );
        self.deliver(Event::SessionChanged { session: session.clone() });
        if push && !chunks.is_empty() { self.push_changes(session, chunks) } else { None }
    }

    /// Persists the index entry of `session` as it is in memory (after an epoch change, or new
    /// heads).
    pub(crate) fn persist_index(&mut self, session: &SessionKey) {
        let Some(state) = self.sessions.get_mut(session) else { return };
        state.entry.owner = state.epoch.map(Into::into);
        state.entry.heads = state.heads;
        let entry = state.entry.clone();
        self.write(
            Some(session),
            WriteOp::PutIndex { key: session.clone(), entry: Box::new(entry) },
        );
    }

    // ---- inspection -------------------------------------------------------------------------

    /// The node's view for `status`, health and the simulator.
    pub fn status(&self) -> NodeStatus {
        let mut members: Vec<MemberStatus> = self
            .members
            .alive()
            .values()
            .map(|m| MemberStatus {
                node: m.node,
                addr: m.addr,
                generation: m.generation,
                alive: true,
            })
            .collect();
        members.extend(
            self.members
                .down()
                .values()
                .filter(|m| !self.members.alive().contains_key(&m.node))
                .map(|m| MemberStatus {
                    node: m.node,
                    addr: m.addr,
                    generation: m.generation,
                    alive: false,
                }),
        );
        NodeStatus {
            node: Some(self.cfg.node),
            members,
            sessions_known: self.sessions.len(),
            sessions_owned: self.sessions.values().filter(|s| s.role.is_some()).count(),
            sessions_hydrated: self.docs.hydrated_count(),
            hydrated_bytes: self.docs.hydrated_bytes(),
            pending_requests: self.requests.len(),
            pending_writes: self.inflight.len(),
            handoffs_in_progress: self
                .sessions
                .values()
                .filter(|s| s.role.as_ref().is_some_and(|r| r.handoff.is_some()))
                .count(),
            sync_exchanges: self.sync.len(),
            swim_backlog: self.members.updates_backlog(),
            draining: self.drain.is_some(),
            counters: self.counters.clone(),
        }
    }

    /// Live members as this node sees them (us included).
    pub fn live_members(&self) -> Vec<NodeId> {
        self.members.live_nodes().collect()
    }

    /// The highest owner record this node knows for `session`.
    pub fn epoch_of(&self, session: &SessionKey) -> Option<Epoch> {
        self.sessions.get(session).and_then(|s| s.epoch)
    }

    /// Whether this node owns `session` under `term` right now: the epoch fence every side
    /// effect of a turn (provider call, tool run) passes before it happens.
    pub fn check_epoch(&self, session: &SessionKey, term: u64) -> bool {
        self.sessions.get(session).is_some_and(|s| {
            s.role.is_some() && s.epoch.is_some_and(|e| e.node == self.cfg.node && e.term == term)
        })
    }

    /// Sessions this node owns.
    pub fn owned_sessions(&self) -> Vec<SessionKey> {
        self.sessions.iter().filter(|(_, s)| s.role.is_some()).map(|(k, _)| k.clone()).collect()
    }

    /// Sessions this node holds or knows of.
    pub fn known_sessions(&self) -> Vec<SessionKey> {
        self.sessions.keys().cloned().collect()
    }

    /// The heads digest of our copy of `session`.
    pub fn heads_of(&self, session: &SessionKey) -> Option<HeadsDigest> {
        self.sessions.get(session).map(|s| s.heads)
    }

    /// Read access to our copy of a session (hydrating it); for the simulator's checker and the
    /// node's local reads.
    pub fn read_doc<R>(
        &mut self,
        session: &SessionKey,
        f: impl FnOnce(&mut SessionDoc) -> R,
    ) -> Option<R> {
        if !self.hydrate(session).ok()? {
            return None;
        }
        self.with_doc(session, f)
    }

    /// Index entries of the sessions this node holds (for `sessions.list` on this node).
    pub fn index_entries(&self) -> impl Iterator<Item = (&SessionKey, &IndexEntry)> {
        self.sessions.iter().map(|(k, s)| (k, &s.entry))
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Whether this node left the cluster after a drain.
    pub fn has_left(&self) -> bool {
        self.left
    }
}

/// The index entry of a hydrated document whose metadata is `meta` (the owner record and heads
/// are filled by the caller).
fn index_entry_with(doc: &SessionDoc, meta: &SessionMeta) -> IndexEntry {
    let meta = meta.clone();
    let updated_at_ms = doc
        .last_message_timestamp_ms()
        .ok()
        .flatten()
        .unwrap_or(meta.session_started_at_ms)
        .max(meta.created_at_ms);
    IndexEntry {
        session_id: doc.session_id().to_string(),
        agent_id: meta.agent_id,
        updated_at_ms,
        message_count: doc.message_count() as u64,
        owner: None,
        heads: HeadsDigest::default(),
        label: meta.label,
        display_name: meta.display_name,
        channel: meta.channel,
        model: meta.model_override,
        input_tokens: meta.input_tokens,
        output_tokens: meta.output_tokens,
        total_tokens: meta.total_tokens,
        spawned_by: meta.spawned_by,
        deleted_at_ms: meta.deleted_at.and_then(|t| i64::try_from(t).ok()),
    }
}
