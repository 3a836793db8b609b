//! The world: N real mesh cores over the simulated network, disks, runtimes and clients, with
//! the fault schedule, driven by one event queue in virtual time.
//!
//! Events are ordered by (time, sequence number): the sequence number is given when an event is
//! scheduled, so ties break in scheduling order and a seed always replays the same way. Every
//! event aimed at a node carries the node's instance number; a crash or restart raises it, so
//! whatever was in flight for the dead process (timers, write completions, turn steps, frames)
//! is discarded.

use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;

use beamclaw_crdt::{HISTORY_LIMIT_MAX, HeadsDigest, Message, Role, SessionKey};
use beamclaw_mesh::core::placement::{self, REPLICATION_FACTOR_DEFAULT};
use beamclaw_mesh::core::requests::PENDING_REQUESTS_MAX;
use beamclaw_mesh::core::wire::Msg;
use beamclaw_mesh::core::{
    BatchId, Command, Counters, Effect, Epoch, Event, Input, LIST_SETTLES_MAX, Node, NodeConfig,
    NodeId, ReqId, RequestError, Response, Timer, TurnInput, generation_for_start,
};

use crate::checker::{Checker, Invariant, SideEffect, first_duplicate};
use crate::clock::{CLOCK_OFFSET_MS_MAX, Clock, DRIFT_PPM_MAX, Micros, US_PER_MS};
use crate::disk::{Durable, PERSISTED_NOTICE_US_MAX, SimDisk, WRITE_QUEUE_BATCHES_MAX, WriteQueue};
use crate::faults::{Fault, FaultSet, Plant, Scheduled, schedule};
use crate::frames::{self, KIND_HANDOFF_ACCEPT, KIND_HANDOFF_OFFER, KIND_RESPONSE};
use crate::metrics::RunReport;
use crate::net::{Loss, LossRates, Network};
use crate::rng::{SimRng, Stream, between, bytes32, stream};
use crate::runtime::{self, RUNTIME_NOTICE_US_MAX, Runtime, Step, WALL_CLOCK_BASE_MS};
use crate::trace::Trace;
use crate::workload::{CLIENT_TIMEOUT_MS, ClientStep, Outcome, Send, Workload};

/// Length of a run, in milliseconds of virtual time (extended when faults end late).
pub const RUN_MS_DEFAULT: u64 = 60_000;
/// Quiet time after the last fault ends before the run may end, in milliseconds: long enough
/// for membership to converge ([`MEMBERSHIP_CONVERGENCE_MS_MAX`]), for anti-entropy to repair
/// every replica, and for the turns of the last messages to finish.
pub const QUIET_MS_MIN: u64 = 25_000;
/// How far past its planned end a run may go while faults (a rolling deploy) still go on, in
/// milliseconds.
pub const FAULTS_OVERRUN_MS_MAX: u64 = 120_000;
/// Clients stop retrying this long before the end, in milliseconds, so that the last turns
/// finish before the quiescence checks.
pub const RETRY_STOP_BEFORE_END_MS: u64 = 15_000;
/// After the last fault ends, every live node must see exactly the live nodes within this
/// many milliseconds (invariant 6).
pub const MEMBERSHIP_CONVERGENCE_MS_MAX: u64 = 20_000;
/// Period of the checker's polls (bounds, convergence), in milliseconds.
pub const TICK_MS: u64 = 250;
/// Drain deadline given to a node in a rolling deploy, in milliseconds.
pub const DRAIN_DEADLINE_MS: u64 = 10_000;
/// A drain must report `Drained` at most this long after its deadline, in milliseconds.
pub const DRAIN_LATE_MS_MAX: u64 = 2_000;
/// Time between stopping a node and starting its new version, in milliseconds.
pub const DEPLOY_RESTART_MS_MIN: u64 = 200;
pub const DEPLOY_RESTART_MS_MAX: u64 = 1_000;
/// A restarted node must be a live member everywhere within this many milliseconds.
pub const DEPLOY_JOIN_MS_MAX: u64 = 30_000;
/// Period of the deploy controller's polls, in milliseconds.
pub const DEPLOY_TICK_MS: u64 = 100;
/// Seed addresses each node joins through.
pub const SEEDS_MAX: usize = 3;
/// The port every node listens on.
pub const NODE_PORT: u16 = 7000;
/// Largest cluster the simulator addresses (10.0.0.1 upwards).
pub const NODES_MAX: usize = 60_000;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub faults: FaultSet,
    pub plant: Option<Plant>,
    pub run_ms: u64,
    pub sessions: usize,
    /// Clients submit messages (off for membership-only experiments).
    pub workload: bool,
    /// Stop the run at the first violation.
    pub stop_at_first_violation: bool,
    /// Record membership notifications (`Event::MemberUp/Down`) for the SWIM experiment.
    pub record_members: bool,
}

impl SimConfig {
    pub fn new(seed: u64, nodes: usize, faults: FaultSet, plant: Option<Plant>) -> Self {
        SimConfig {
            seed,
            nodes,
            faults,
            plant,
            run_ms: RUN_MS_DEFAULT,
            sessions: crate::workload::SESSIONS_DEFAULT,
            workload: true,
            stop_at_first_violation: true,
            record_members: false,
        }
    }
}

/// The address of node `i`: 10.0.0.1:7000 for node 0, and so on.
pub fn node_addr(i: usize) -> SocketAddr {
    let host = u32::try_from(i + 1).unwrap_or(u32::MAX) & 0x00ff_ffff;
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 | host), NODE_PORT))
}

/// The deterministic identity of node `i` of a run: an Ed25519 key from seeded bytes.
fn node_identity(rng: &mut SimRng) -> NodeId {
    loop {
        let bytes = bytes32(rng);
        if let Ok(secret) = libp2p_identity::ed25519::SecretKey::try_from_bytes(bytes) {
            let pair = libp2p_identity::ed25519::Keypair::from(secret);
            return NodeId(pair.public().to_bytes());
        }
    }
}

/// A membership notification seen by a node (SWIM experiment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberNote {
    pub at: Micros,
    pub observer: usize,
    pub up: bool,
    pub subject: NodeId,
    pub generation: u64,
}

enum Ev {
    Datagram { to: usize, inst: u64, from: SocketAddr, bytes: Vec<u8> },
    Frame { to: usize, inst: u64, from: usize, from_inst: u64, bytes: Vec<u8> },
    Congestion { node: usize, inst: u64, peer: usize, congested: bool },
    CongestionCheck { from: usize, inst: u64, to: usize },
    Timer { node: usize, inst: u64, timer: Timer },
    Durable { node: usize, inst: u64, batch: BatchId },
    Persisted { node: usize, inst: u64, batch: BatchId },
    TurnStep { node: usize, inst: u64, key: u64, step: u64 },
    TurnInput { node: usize, inst: u64, input: TurnInput },
    ClientNext,
    ClientRetry { msg: usize },
    ClientTimeout { req: ReqId },
    FaultStart { index: usize },
    Heal { links: Vec<(usize, usize)> },
    Flap { a: usize, b: usize, until: Micros, period: Micros, cut: bool },
    LossEnd { id: u64 },
    Restart { node: usize, deploy: bool },
    DeployTick,
    Tick,
}

struct Queued {
    at: Micros,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest: the earliest time, then the lowest sequence number.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// Draining for a deploy: clients were sent away.
    Draining,
    Down,
}

struct Slot {
    id: NodeId,
    addr: SocketAddr,
    core_seed: [u8; 32],
    node: Option<Node<SimDisk>>,
    /// Raised at every crash, stop and start.
    inst: u64,
    phase: Phase,
    /// Joined a cluster since it started (what a readiness probe reports): clients use only
    /// ready nodes.
    ready: bool,
    durable: Rc<RefCell<Durable>>,
    writes: WriteQueue,
    clock: Clock,
    runtime: Runtime,
    /// The process is paused (GC, VM steal) until then: its events wait.
    stalled_until: Micros,
}

impl Slot {
    fn running(&self) -> bool {
        self.phase != Phase::Down && self.node.as_ref().is_some_and(|n| !n.has_left())
    }
}

#[derive(Clone, Copy, Debug)]
enum DeployPhase {
    Pick,
    Draining { node: usize, since: Micros },
    Flushing { node: usize },
    Restarting { node: usize },
    Joining { node: usize, since: Micros },
}

struct Deploy {
    order: Vec<usize>,
    next: usize,
    phase: DeployPhase,
}

pub struct World {
    cfg: SimConfig,
    now: Micros,
    end: Micros,
    seq: u64,
    queue: BinaryHeap<Queued>,
    slots: Vec<Slot>,
    by_addr: BTreeMap<SocketAddr, usize>,
    by_id: BTreeMap<NodeId, usize>,
    net: Network,
    disk_rng: SimRng,
    runtime_rng: SimRng,
    fault_rng: SimRng,
    workload: Option<Workload>,
    pub checker: Checker,
    pub trace: Trace,
    schedule: Vec<Scheduled>,
    faults_pending: usize,
    faults_active: usize,
    heal_at: Option<Micros>,
    membership_reported: bool,
    loss_episodes: BTreeMap<u64, LossRates>,
    next_loss: u64,
    deploy: Option<Deploy>,
    next_exec: u64,
    failover_pending: BTreeMap<SessionKey, (Micros, Epoch, usize)>,
    failover_ms: Vec<u64>,
    offers: BTreeMap<(SessionKey, Epoch), Micros>,
    handoff_pause_ms: Vec<u64>,
    convergence_ms: Option<u64>,
    delivered: u64,
    events: u64,
    ticks: u64,
    /// Counters of node processes that ended (crashed or stopped).
    counters_gone: Counters,
    pub member_notes: Vec<MemberNote>,
    /// Where the next `membership_converged` poll starts (see there).
    converged_from: Cell<usize>,
}

impl World {
    pub fn new(cfg: SimConfig, trace: Trace) -> Self {
        let nodes = cfg.nodes.clamp(1, NODES_MAX);
        let mut topo = stream(cfg.seed, Stream::Topology);
        let mut clock_rng = stream(cfg.seed, Stream::Clock);
        let mut slots = Vec::with_capacity(nodes);
        for i in 0..nodes {
            let id = node_identity(&mut topo);
            let core_seed = bytes32(&mut topo);
            let clock = if cfg.faults.drift {
                let span = u64::try_from(2 * DRIFT_PPM_MAX).unwrap_or(0);
                let ppm =
                    i64::try_from(between(&mut clock_rng, 0, span)).unwrap_or(0) - DRIFT_PPM_MAX;
                Clock {
                    ppm,
                    offset_us: between(&mut clock_rng, 0, CLOCK_OFFSET_MS_MAX) * US_PER_MS,
                }
            } else {
                Clock::default()
            };
            slots.push(Slot {
                id,
                addr: node_addr(i),
                core_seed,
                node: None,
                inst: 0,
                phase: Phase::Down,
                ready: false,
                durable: Rc::default(),
                writes: WriteQueue::default(),
                clock,
                runtime: Runtime::default(),
                stalled_until: 0,
            });
        }
        let by_addr = slots.iter().enumerate().map(|(i, s)| (s.addr, i)).collect();
        let by_id = slots.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
        let ids = slots.iter().map(|s| s.id).collect();
        let mut fault_rng = stream(cfg.seed, Stream::Faults);
        let schedule = schedule(&mut fault_rng, cfg.faults, nodes);
        let workload =
            cfg.workload.then(|| Workload::new(stream(cfg.seed, Stream::Workload), cfg.sessions));
        let checker = Checker::new(ids, cfg.faults.connected());
        let end = cfg.run_ms * US_PER_MS;
        let mut world = World {
            now: 0,
            end,
            seq: 0,
            queue: BinaryHeap::new(),
            slots,
            by_addr,
            by_id,
            net: Network::new(stream(cfg.seed, Stream::Network)),
            disk_rng: stream(cfg.seed, Stream::Disk),
            runtime_rng: stream(cfg.seed, Stream::Runtime),
            fault_rng,
            workload,
            checker,
            trace,
            faults_pending: schedule.len(),
            schedule,
            faults_active: 0,
            heal_at: None,
            membership_reported: false,
            loss_episodes: BTreeMap::new(),
            next_loss: 0,
            deploy: None,
            next_exec: 0,
            failover_pending: BTreeMap::new(),
            failover_ms: Vec::new(),
            offers: BTreeMap::new(),
            handoff_pause_ms: Vec::new(),
            convergence_ms: None,
            delivered: 0,
            events: 0,
            ticks: 0,
            counters_gone: Counters::default(),
            member_notes: Vec::new(),
            converged_from: Cell::new(0),
            cfg,
        };
        for i in 0..world.schedule.len() {
            let at = world.schedule[i].at;
            world.push(at, Ev::FaultStart { index: i });
        }
        if let Some(w) = &world.workload {
            let at = w.first_at();
            world.push(at, Ev::ClientNext);
        }
        world.push(TICK_MS * US_PER_MS, Ev::Tick);
        world
    }

    fn push(&mut self, at: Micros, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued { at, seq: self.seq, ev });
    }

    pub fn now(&self) -> Micros {
        self.now
    }

    pub fn node_count(&self) -> usize {
        self.slots.len()
    }

    pub fn node_id(&self, i: usize) -> Option<NodeId> {
        self.slots.get(i).map(|s| s.id)
    }

    /// Starts every node now.
    pub fn start_all(&mut self) {
        for i in 0..self.slots.len() {
            self.start_node(i);
        }
    }

    /// Runs the whole scenario and the quiescence checks.
    pub fn run(mut self) -> RunReport {
        self.start_all();
        self.run_until(Micros::MAX);
        let stopped_early = self.cfg.stop_at_first_violation && !self.checker.violations.is_empty();
        if !stopped_early {
            self.final_checks();
        }
        self.report()
    }

    /// Processes events up to `until` (or the end of the run).
    pub fn run_until(&mut self, until: Micros) {
        while let Some(top) = self.queue.peek() {
            if top.at > self.end && (self.faults_active > 0 || self.faults_pending > 0) {
                // A fault is still going on (a slow rolling deploy): the quiet period has not
                // begun, so the run goes on, up to a hard limit.
                let limit = (self.cfg.run_ms + FAULTS_OVERRUN_MS_MAX) * US_PER_MS;
                if top.at > limit {
                    let detail = format!(
                        "faults still going on {FAULTS_OVERRUN_MS_MAX} ms after the run's planned end"
                    );
                    self.checker.fail(Invariant::Bounds, self.now, None, None, None, detail);
                    break;
                }
                self.end = top.at;
            }
            if top.at > until.min(self.end) {
                break;
            }
            let Some(q) = self.queue.pop() else { break };
            self.now = q.at;
            self.events += 1;
            self.dispatch(q.ev);
            if self.cfg.stop_at_first_violation && !self.checker.violations.is_empty() {
                break;
            }
        }
        if until != Micros::MAX {
            self.now = self.now.max(until.min(self.end));
        }
    }

    fn report(&mut self) -> RunReport {
        self.trace.flush();
        let mut counters = self.counters_gone.clone();
        for s in &self.slots {
            if let Some(n) = &s.node {
                add_counters(&mut counters, n.counters());
            }
        }
        let (submitted, acked, unacked) = self
            .workload
            .as_ref()
            .map_or((0, 0, 0), |w| (w.messages.len() as u64, w.stats.acked, w.unacked() as u64));
        RunReport {
            seed: self.cfg.seed,
            nodes: self.slots.len(),
            violations: self.checker.violations.clone(),
            failover_ms: self.failover_ms.clone(),
            handoff_pause_ms: self.handoff_pause_ms.clone(),
            convergence_ms: self.convergence_ms,
            messages_submitted: submitted,
            messages_acked: acked,
            messages_unacked: unacked,
            duplicate_turns: self.checker.duplicate_turns(),
            side_effects: self.checker.side_effects,
            owner_overlaps: counters.owner_overlaps,
            handoffs_completed: counters.handoffs_completed,
            claims: counters.claims,
            pushes_stored_unapplied: counters.pushes_stored_unapplied,
            replica_settles: counters.replica_settles,
            sync_rounds: counters.sync_rounds,
            sync_exchanges_stalled: counters.sync_exchanges_stalled,
            sync_exchanges_level: counters.sync_exchanges_level,
            network_messages: self.delivered,
            events: self.events,
            virtual_ms: self.now / US_PER_MS,
            trace_digest: self.trace.digest(),
        }
    }

    // ---- nodes ------------------------------------------------------------------------------

    fn seeds_of(&self, i: usize) -> Vec<SocketAddr> {
        (0..self.slots.len())
            .filter(|j| *j != i)
            .take(SEEDS_MAX)
            .map(|j| self.slots[j].addr)
            .collect()
    }

    /// Starts (or restarts) node `i` from its disk, as the next generation of the process.
    pub fn start_node(&mut self, i: usize) {
        let seeds = self.seeds_of(i);
        let planted = Plant::bugs(self.cfg.plant);
        let now = self.now;
        let Some(slot) = self.slots.get_mut(i) else { return };
        if slot.node.is_some() {
            return;
        }
        let starts = {
            let mut d = slot.durable.borrow_mut();
            d.starts += 1;
            d.starts
        };
        slot.inst += 1;
        let mut core_seed = slot.core_seed;
        for (b, s) in core_seed.iter_mut().zip(starts.to_le_bytes()) {
            *b ^= s;
        }
        let mut cfg = NodeConfig::new(slot.id, slot.addr, generation_for_start(starts), core_seed);
        cfg.seeds = seeds;
        cfg.planted = planted;
        slot.node = Some(Node::new(cfg, SimDisk(slot.durable.clone())));
        slot.phase = Phase::Running;
        slot.ready = false;
        slot.runtime = Runtime::default();
        slot.stalled_until = 0;
        let owners: Vec<(SessionKey, Epoch)> = {
            let d = slot.durable.borrow();
            let keys: Vec<SessionKey> = d.sessions().cloned().collect();
            keys.into_iter().filter_map(|k| d.owner(&k).map(|e| (k, e))).collect()
        };
        self.checker.node_started(i, owners.into_iter());
        self.failover_pending.retain(|_, (_, _, n)| *n != i);
        let now_ms = slot.clock.node_ms(now);
        let inst = slot.inst;
        self.trace.line(now, || format!("n{i} start #{starts} (instance {inst})"));
        let Some(node) = self.slots[i].node.as_mut() else { return };
        match catch_unwind(AssertUnwindSafe(|| node.start(now_ms))) {
            Ok(Ok(effects)) => self.effects(i, effects),
            Ok(Err(e)) => {
                self.checker.fail(
                    Invariant::Bounds,
                    now,
                    Some(i),
                    None,
                    None,
                    format!("node failed to start from its disk: {e}"),
                );
            }
            Err(panic) => self.panicked(i, "start", &panic),
        }
    }

    /// Kills node `i`: its memory and unsynced writes are lost, its disk stays.
    pub fn kill(&mut self, i: usize, why: &str) {
        let now = self.now;
        let Some(slot) = self.slots.get_mut(i) else { return };
        let Some(node) = slot.node.take() else { return };
        for s in node.owned_sessions() {
            if let Some(e) = node.epoch_of(&s) {
                self.failover_pending.insert(s, (now, e, i));
            }
        }
        add_counters(&mut self.counters_gone, node.counters());
        slot.inst += 1;
        slot.phase = Phase::Down;
        slot.ready = false;
        let lost = slot.writes.lose_all();
        slot.runtime = Runtime::default();
        self.net.reset_node(i);
        self.trace
            .line(now, || format!("n{i} {why}: killed, {lost} unsynced write batch(es) lost"));
        self.client_node_lost(i);
    }

    /// Pauses node `i` until `until`: its inputs wait (SWIM experiment).
    pub fn stall(&mut self, i: usize, until: Micros) {
        if let Some(s) = self.slots.get_mut(i) {
            s.stalled_until = until;
        }
    }

    fn panicked(
        &mut self,
        i: usize,
        during: &str,
        panic: &Box<dyn std::any::Any + std::marker::Send>,
    ) {
        let text = crate::panic_text(panic.as_ref());
        let now = self.now;
        self.checker.fail(
            Invariant::Bounds,
            now,
            Some(i),
            None,
            None,
            format!("node panicked during {during}: {text}"),
        );
        self.kill(i, "panic");
    }

    /// Feeds one input to node `i` and executes what it asks for.
    fn feed(&mut self, i: usize, input: Input) {
        let now = self.now;
        let Some(slot) = self.slots.get_mut(i) else { return };
        let now_ms = slot.clock.node_ms(now);
        let Some(node) = slot.node.as_mut() else { return };
        match catch_unwind(AssertUnwindSafe(|| node.handle(now_ms, input))) {
            Ok(effects) => self.effects(i, effects),
            Err(panic) => self.panicked(i, "handle", &panic),
        }
    }

    fn effects(&mut self, i: usize, effects: Vec<Effect>) {
        for effect in effects {
            self.effect(i, effect);
        }
    }

    fn effect(&mut self, i: usize, effect: Effect) {
        let now = self.now;
        let inst = self.slots[i].inst;
        match effect {
            Effect::SendDatagram { to, node: _, bytes } => {
                let Some(&j) = self.by_addr.get(&to) else {
                    self.trace.line(now, || format!("  n{i} => datagram to unknown {to} dropped"));
                    return;
                };
                if !self.slots[j].running() && self.slots[j].node.is_none() {
                    return;
                }
                let arrivals = self.net.send_datagram(i, j, now);
                self.trace.line(now, || {
                    format!("  n{i} => datagram n{j} {}B copies {}", bytes.len(), arrivals.len())
                });
                let from = self.slots[i].addr;
                let to_inst = self.slots[j].inst;
                for at in arrivals {
                    self.push(
                        at,
                        Ev::Datagram { to: j, inst: to_inst, from, bytes: bytes.clone() },
                    );
                }
            }
            Effect::SendFrame { to, addr: _, bytes } => self.send_frame(i, to, bytes),
            Effect::SetTimer { at, timer } => {
                let when = self.slots[i].clock.global_at(at, now);
                if when <= self.end {
                    self.trace.line(now, || format!("  n{i} => timer @{at} {timer:?}"));
                    self.push(when, Ev::Timer { node: i, inst, timer });
                }
            }
            Effect::Persist { batch, writes } => {
                self.checker.persist_emitted(now, i, &writes);
                let ops = writes.ops.len();
                let done = self.slots[i].writes.push(&mut self.disk_rng, batch, writes, now);
                self.trace.line(now, || {
                    format!("  n{i} => persist batch {batch} ({ops} ops) durable at {done}")
                });
                if self.slots[i].writes.len() > WRITE_QUEUE_BATCHES_MAX {
                    let n = self.slots[i].writes.len();
                    self.checker.fail(
                        Invariant::Bounds,
                        now,
                        Some(i),
                        None,
                        None,
                        format!("{n} write batches queued (bound {WRITE_QUEUE_BATCHES_MAX})"),
                    );
                }
                self.push(done, Ev::Durable { node: i, inst, batch });
            }
            Effect::StartTurn { run, agent_id: _, input } => {
                let exec = self.next_exec;
                self.next_exec += 1;
                self.trace.line(now, || {
                    format!(
                        "  n{i} => start turn {} of {} term {} for {} (exec {exec})",
                        run.run_id, run.session, run.epoch, input.id
                    )
                });
                let (key, delay) =
                    self.slots[i].runtime.start(&mut self.runtime_rng, run, input.id.clone(), exec);
                self.push(now + delay, Ev::TurnStep { node: i, inst, key, step: 0 });
            }
            Effect::DrainTurns { session, deadline } => {
                let node_ms = self.slots[i].clock.node_ms(now);
                let steps =
                    self.slots[i].runtime.drain(&mut self.runtime_rng, &session, deadline, node_ms);
                self.trace.line(now, || {
                    format!(
                        "  n{i} => drain turns of {session} by {deadline} ({} running)",
                        steps.len()
                    )
                });
                for (key, step, delay) in steps {
                    self.push(now + delay, Ev::TurnStep { node: i, inst, key, step });
                }
            }
            Effect::AbortTurns { session, run_id, reason } => {
                let keys = self.slots[i].runtime.keys_of(&session, run_id.as_deref());
                self.trace.line(now, || {
                    format!(
                        "  n{i} => abort turns of {session} ({reason:?}): {} cancelled",
                        keys.len()
                    )
                });
                for k in keys {
                    self.slots[i].runtime.remove(k);
                }
                if !self.slots[i].runtime.runs_session(&session) {
                    let at = now + between(&mut self.runtime_rng, 0, RUNTIME_NOTICE_US_MAX);
                    self.push(
                        at,
                        Ev::TurnInput { node: i, inst, input: TurnInput::Idle { session } },
                    );
                }
            }
            Effect::Deliver(event) => self.deliver(i, event),
        }
    }

    fn send_frame(&mut self, i: usize, to: NodeId, bytes: Vec<u8>) {
        let now = self.now;
        let Some(&j) = self.by_id.get(&to) else {
            self.trace
                .line(now, || format!("  n{i} => frame to unknown node {} dropped", to.short()));
            return;
        };
        let kind = frames::peek_kind(&bytes);
        if kind == Some(KIND_RESPONSE) || kind == Some(KIND_HANDOFF_OFFER) {
            self.inspect_sent_frame(i, &bytes);
        }
        if self.slots[j].node.is_none() {
            self.trace.line(now, || {
                format!("  n{i} => frame n{j} {} lost: n{j} is down", frames::kind_name(&bytes))
            });
            return;
        }
        let sent = self.net.send_frame(i, j, bytes.len(), now);
        self.trace.line(now, || {
            format!(
                "  n{i} => frame n{j} {} {}B #{:016x} {:?}",
                frames::kind_name(&bytes),
                bytes.len(),
                frames::fingerprint(&bytes),
                sent.arrive
            )
        });
        let from_inst = self.slots[i].inst;
        let to_inst = self.slots[j].inst;
        match sent.arrive {
            Ok(at) => self.push(at, Ev::Frame { to: j, inst: to_inst, from: i, from_inst, bytes }),
            Err(Loss::QueueFull) => {
                let detail = format!(
                    "link queue n{i} -> n{j} over its bound of {} bytes",
                    crate::net::LINK_QUEUE_BYTES_MAX
                );
                self.checker.fail(Invariant::Bounds, now, Some(i), None, None, detail);
            }
            Err(_) => {}
        }
        if let Some(check_at) = sent.congested_until {
            self.push(now, Ev::Congestion { node: i, inst: from_inst, peer: j, congested: true });
            self.push(check_at, Ev::CongestionCheck { from: i, inst: from_inst, to: j });
        }
    }

    /// Looks into acknowledgements and handoff offers a node sends.
    fn inspect_sent_frame(&mut self, i: usize, bytes: &[u8]) {
        let Some(env) = frames::decode(bytes) else { return };
        match env.msg {
            Msg::Response { result: Ok(Response::Submitted { message_id, .. }), .. } => {
                self.check_ack_durable(i, &message_id)
            }
            Msg::HandoffOffer { session, epoch, .. } => {
                self.offers.entry((session, epoch)).or_insert(self.now);
            }
            _ => {}
        }
    }

    /// Node `i` acknowledges `message_id`: it must be on its disk.
    fn check_ack_durable(&mut self, i: usize, message_id: &str) {
        let Some(session) =
            self.workload.as_ref().and_then(|w| w.find(message_id)).map(|m| m.session.clone())
        else {
            return;
        };
        let durable = {
            let mut disk = self.slots[i].durable.borrow_mut();
            match disk.recorded(&session, message_id) {
                Some(found) => Ok(found),
                None => disk.has_message(&session, message_id),
            }
        };
        match durable {
            Ok(durable) => self.checker.acknowledged(self.now, i, &session, message_id, durable),
            Err(e) => {
                let detail = format!("the acknowledging node's durable copy does not load: {e}");
                self.checker.fail(
                    Invariant::AckedLost,
                    self.now,
                    Some(i),
                    Some(&session),
                    Some(message_id),
                    detail,
                );
            }
        }
    }

    fn deliver(&mut self, i: usize, event: Event) {
        let now = self.now;
        match event {
            Event::Response { req, result } => {
                self.trace.line(now, || {
                    format!("  n{i} => response req {req}: {}", short_result(&result))
                });
                if let Ok(Response::Submitted { message_id, epoch, .. }) = &result
                    && epoch.node == self.slots[i].id
                {
                    self.check_ack_durable(i, message_id);
                }
                self.client_answer(i, req, result);
            }
            Event::Drained { handed_over, left_behind } => {
                self.trace.line(now, || {
                    format!(
                        "  n{i} => drained: {handed_over} handed over, {left_behind} left behind"
                    )
                });
                if let Some(d) = self.deploy.as_mut()
                    && let DeployPhase::Draining { node, .. } = d.phase
                    && node == i
                {
                    d.phase = DeployPhase::Flushing { node };
                }
            }
            Event::Membership { active } => {
                self.trace.line(now, || format!("  n{i} => membership active={active}"));
                self.slots[i].ready = active;
            }
            Event::MemberUp(m) => {
                self.trace.line(now, || format!("  n{i} => member up {m:?}"));
                if self.cfg.record_members {
                    self.member_notes.push(MemberNote {
                        at: now,
                        observer: i,
                        up: true,
                        subject: m.node,
                        generation: m.generation,
                    });
                }
            }
            Event::MemberDown(m) => {
                self.trace.line(now, || format!("  n{i} => member down {m:?}"));
                if self.cfg.record_members {
                    self.member_notes.push(MemberNote {
                        at: now,
                        observer: i,
                        up: false,
                        subject: m.node,
                        generation: m.generation,
                    });
                }
            }
            Event::OwnerChanged { session, epoch } => {
                self.trace.line(now, || format!("  n{i} => owner of {session} is {epoch:?}"));
            }
            Event::Turn { run, event } => {
                self.trace.line(now, || {
                    format!(
                        "  n{i} => turn event {} {:?}",
                        run.run_id,
                        std::mem::discriminant(&event)
                    )
                });
            }
            Event::SessionChanged { .. } | Event::Broadcast { .. } => {}
        }
    }

    // ---- events -----------------------------------------------------------------------------

    fn alive(&self, node: usize, inst: u64) -> bool {
        self.slots.get(node).is_some_and(|s| s.inst == inst && s.node.is_some())
    }

    fn dispatch(&mut self, ev: Ev) {
        // A stalled process handles nothing until it resumes: its inputs wait.
        if let Some(node) = target_of(&ev) {
            let until = self.slots.get(node).map_or(0, |s| s.stalled_until);
            if until > self.now {
                self.push(until, ev);
                return;
            }
        }
        let now = self.now;
        match ev {
            Ev::Datagram { to, inst, from, bytes } => {
                if !self.alive(to, inst) {
                    return;
                }
                self.delivered += 1;
                self.trace.line(now, || {
                    format!(
                        "n{to} datagram from {from} {}B #{:016x}",
                        bytes.len(),
                        frames::fingerprint(&bytes)
                    )
                });
                self.feed(to, Input::Datagram { from, bytes });
            }
            Ev::Frame { to, inst, from, from_inst, bytes } => {
                if !self.alive(to, inst) || self.slots[from].inst != from_inst {
                    self.trace
                        .line(now, || format!("n{to} frame from n{from} lost: an end restarted"));
                    return;
                }
                if self.net.is_cut(from, to) {
                    self.trace.line(now, || format!("n{to} frame from n{from} lost: link cut"));
                    return;
                }
                self.delivered += 1;
                let kind = frames::peek_kind(&bytes);
                self.trace.line(now, || {
                    format!(
                        "n{to} frame from n{from} {} {}B #{:016x}",
                        frames::kind_name(&bytes),
                        bytes.len(),
                        frames::fingerprint(&bytes)
                    )
                });
                if kind == Some(KIND_HANDOFF_ACCEPT)
                    && let Some(Msg::HandoffAccept { session, epoch }) =
                        frames::decode(&bytes).map(|e| e.msg)
                    && let Some(t0) = self.offers.remove(&(session, epoch))
                {
                    self.handoff_pause_ms.push((now - t0) / US_PER_MS);
                }
                let from_id = self.slots[from].id;
                self.feed(to, Input::Frame { from: from_id, bytes });
            }
            Ev::Congestion { node, inst, peer, congested } => {
                if self.alive(node, inst) {
                    self.trace
                        .line(now, || format!("n{node} congestion towards n{peer}: {congested}"));
                    let peer_id = self.slots[peer].id;
                    self.feed(node, Input::Congestion { node: peer_id, congested });
                }
            }
            Ev::CongestionCheck { from, inst, to } => {
                if !self.alive(from, inst) {
                    return;
                }
                match self.net.check_congestion(from, to, now) {
                    Ok(()) => self
                        .push(now, Ev::Congestion { node: from, inst, peer: to, congested: false }),
                    Err(at) => self.push(at, Ev::CongestionCheck { from, inst, to }),
                }
            }
            Ev::Timer { node, inst, timer } => {
                if self.alive(node, inst) {
                    self.trace.line(now, || format!("n{node} timer {timer:?}"));
                    self.feed(node, Input::Timer(timer));
                }
            }
            Ev::Durable { node, inst, batch } => self.durable(node, inst, batch),
            Ev::Persisted { node, inst, batch } => {
                if self.alive(node, inst) {
                    self.trace.line(now, || format!("n{node} persisted batch {batch}"));
                    self.feed(node, Input::Persisted { batch, result: Ok(()) });
                }
            }
            Ev::TurnStep { node, inst, key, step } => {
                if self.alive(node, inst) {
                    self.turn_step(node, inst, key, step);
                }
            }
            Ev::TurnInput { node, inst, input } => {
                if self.alive(node, inst) {
                    self.trace
                        .line(now, || format!("n{node} turn input {}", short_turn_input(&input)));
                    self.feed(node, Input::Turn(input));
                }
            }
            Ev::ClientNext => self.client_next(),
            Ev::ClientRetry { msg } => self.client_retry(msg),
            Ev::ClientTimeout { req } => {
                let waiting = self.workload.as_ref().is_some_and(|w| w.waiting(req).is_some());
                if waiting {
                    self.trace.line(now, || format!("client req {req} timed out"));
                    if let Some(msg) = self.workload.as_mut().and_then(|w| w.give_up(req)) {
                        self.schedule_retry(msg);
                    }
                }
            }
            Ev::FaultStart { index } => self.fault_start(index),
            Ev::Heal { links } => {
                self.trace.line(now, || format!("heal {} link(s)", links.len()));
                for (a, b) in links {
                    self.net.heal_link(a, b);
                }
                self.fault_ended();
            }
            Ev::Flap { a, b, until, period, cut } => {
                if cut {
                    self.net.heal_link(a, b);
                    self.net.heal_link(b, a);
                } else if now < until {
                    self.net.cut_link(a, b);
                    self.net.cut_link(b, a);
                }
                self.trace.line(now, || {
                    format!(
                        "flap n{a} <-> n{b}: {}",
                        if cut || now >= until { "up" } else { "down" }
                    )
                });
                if now < until {
                    self.push(now + period, Ev::Flap { a, b, until, period, cut: !cut });
                } else {
                    self.fault_ended();
                }
            }
            Ev::LossEnd { id } => {
                self.loss_episodes.remove(&id);
                self.net.rates = max_rates(self.loss_episodes.values());
                self.trace.line(now, || format!("loss episode {id} ends"));
                self.fault_ended();
            }
            Ev::Restart { node, deploy } => {
                self.start_node(node);
                if deploy {
                    if let Some(d) = self.deploy.as_mut() {
                        d.phase = DeployPhase::Joining { node, since: now };
                    }
                } else {
                    self.fault_ended();
                }
            }
            Ev::DeployTick => self.deploy_tick(),
            Ev::Tick => self.tick(),
        }
    }

    fn durable(&mut self, node: usize, inst: u64, batch: BatchId) {
        if !self.alive(node, inst) {
            return;
        }
        let now = self.now;
        let Some(writes) = self.slots[node].writes.complete(batch) else {
            let detail = format!("write batch {batch} completed out of order (simulator bug)");
            self.checker.fail(Invariant::Bounds, now, Some(node), None, None, detail);
            return;
        };
        let owners = self.slots[node].durable.borrow_mut().apply(&writes);
        self.trace.line(now, || {
            format!("n{node} durable batch {batch} ({} owner change(s))", owners.len())
        });
        for w in &owners {
            let Some(after) = w.after else { continue };
            let done = self.failover_pending.get(&w.session).is_some_and(|(_, old, crashed)| {
                after > *old && after.node != self.slots[*crashed].id
            });
            if done && let Some((t0, _, _)) = self.failover_pending.remove(&w.session) {
                self.failover_ms.push((now - t0) / US_PER_MS);
            }
        }
        self.checker.durable_owner_writes(now, node, owners);
        let at = now + between(&mut self.disk_rng, 0, PERSISTED_NOTICE_US_MAX);
        self.push(at, Ev::Persisted { node, inst, batch });
    }

    // ---- runtime ----------------------------------------------------------------------------

    fn turn_step(&mut self, i: usize, inst: u64, key: u64, step: u64) {
        let now = self.now;
        let node_ms = self.slots[i].clock.node_ms(now);
        let at_ms = WALL_CLOCK_BASE_MS + i64::try_from(now / US_PER_MS).unwrap_or(0);
        let Some(turn) = self.slots[i].runtime.get(key).cloned() else { return };
        if turn.step != step {
            return;
        }
        let Some(next) = self.slots[i].runtime.next_step(&mut self.runtime_rng, key, node_ms)
        else {
            return;
        };
        let mut inputs = Vec::new();
        if turn.calls_done > 0 {
            inputs.push(runtime::delta(&turn, turn.calls_done));
        }
        match next {
            Step::Call { after_us } => {
                if turn.calls_done > 0 {
                    inputs.push(runtime::checkpoint(&turn, at_ms));
                }
                let session = turn.run.session.clone();
                let fenced = self.slots[i]
                    .node
                    .as_ref()
                    .is_some_and(|n| n.check_epoch(&session, turn.run.epoch));
                if fenced {
                    self.trace.line(now, || {
                        format!(
                            "n{i} provider call {} of {} term {} (exec {})",
                            turn.calls_done + 1,
                            turn.input_id,
                            turn.run.epoch,
                            turn.exec
                        )
                    });
                    self.checker.side_effect(SideEffect {
                        node: i,
                        exec: turn.exec,
                        session,
                        term: turn.run.epoch,
                        run_id: turn.run.run_id.clone(),
                        input_id: turn.input_id.clone(),
                        at: now,
                    });
                    if let Some(t) = self.slots[i].runtime.get_mut(key) {
                        t.calls_left -= 1;
                        t.calls_done += 1;
                        t.step += 1;
                        let step = t.step;
                        self.push(now + after_us, Ev::TurnStep { node: i, inst, key, step });
                    }
                } else {
                    self.trace.line(now, || {
                        format!("n{i} fence refused {} term {}", turn.input_id, turn.run.epoch)
                    });
                    self.slots[i].runtime.remove(key);
                    if !self.slots[i].runtime.runs_session(&session) {
                        inputs.push(TurnInput::Idle { session });
                    }
                }
            }
            Step::Finish if turn.calls_done > 0 => {
                let early = turn.calls_left > 0;
                if early {
                    inputs.push(runtime::checkpoint(&turn, at_ms));
                }
                inputs.push(runtime::final_output(&turn, at_ms, early));
                self.slots[i].runtime.remove(key);
                self.trace.line(now, || {
                    format!(
                        "n{i} turn of {} finishes (exec {}, early {early})",
                        turn.input_id, turn.exec
                    )
                });
            }
            Step::Finish | Step::Abort => {
                // Nothing useful to write (or no time left): give the turn up.
                self.slots[i].runtime.remove(key);
                self.trace.line(now, || {
                    format!("n{i} turn of {} given up (exec {})", turn.input_id, turn.exec)
                });
                let session = turn.run.session.clone();
                if !self.slots[i].runtime.runs_session(&session) {
                    inputs.push(TurnInput::Idle { session });
                }
            }
        }
        let at = now + between(&mut self.runtime_rng, 0, RUNTIME_NOTICE_US_MAX);
        for input in inputs {
            self.push(at, Ev::TurnInput { node: i, inst, input });
        }
    }

    // ---- clients ----------------------------------------------------------------------------

    /// Nodes clients may talk to: running, ready, not draining.
    fn client_nodes(&self) -> Vec<(usize, u64)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.phase == Phase::Running && s.ready && s.running())
            .map(|(i, s)| (i, s.inst))
            .collect()
    }

    fn retry_until(&self) -> Micros {
        self.end.saturating_sub(RETRY_STOP_BEFORE_END_MS * US_PER_MS)
    }

    fn client_next(&mut self) {
        let live = self.client_nodes();
        let Some(w) = self.workload.as_mut() else { return };
        let ClientStep { sends, lists, next } = w.next(self.now, &live);
        for send in sends {
            self.client_send(send);
        }
        for node in lists {
            self.trace.line(self.now, || format!("client lists the sessions of n{node}"));
            self.feed(node, Input::Command(Command::SettleStored { max: LIST_SETTLES_MAX }));
        }
        if let Some(at) = next {
            self.push(at, Ev::ClientNext);
        }
        // A message that found no live node is retried later.
        let n = self.workload.as_ref().map_or(0, |w| w.messages.len());
        if n > 0 && self.workload.as_ref().is_some_and(|w| w.messages[n - 1].attempts == 0) {
            self.schedule_retry(n - 1);
        }
    }

    fn client_retry(&mut self, msg: usize) {
        if self.now > self.retry_until() {
            return;
        }
        let live = self.client_nodes();
        let now = self.now;
        let Some(w) = self.workload.as_mut() else { return };
        if w.messages.get(msg).is_none_or(|m| m.acked.is_some()) {
            return;
        }
        match w.submit(msg, now, &live) {
            Some(send) => self.client_send(send),
            None => self.schedule_retry(msg),
        }
    }

    fn schedule_retry(&mut self, msg: usize) {
        let Some(w) = self.workload.as_mut() else { return };
        let at = self.now + w.backoff();
        if at <= self.retry_until() {
            self.push(at, Ev::ClientRetry { msg });
        }
    }

    fn client_send(&mut self, send: Send) {
        let Send { node, req, command } = send;
        self.trace
            .line(self.now, || format!("client req {req} -> n{node}: {}", short_command(&command)));
        self.push(self.now + CLIENT_TIMEOUT_MS * US_PER_MS, Ev::ClientTimeout { req });
        self.feed(node, Input::Command(command));
    }

    fn client_answer(&mut self, i: usize, req: ReqId, result: Result<Response, RequestError>) {
        let now = self.now;
        let expected = match &result {
            Ok(Response::Submitted { message_id, .. }) => Some(message_id.clone()),
            _ => None,
        };
        let Some(w) = self.workload.as_mut() else { return };
        match w.answer(i, req, result, now) {
            Outcome::Acked { msg, first: _ } => {
                let m = &w.messages[msg];
                if expected.as_deref() != Some(m.message_id.as_str()) {
                    let (session, id) = (m.session.clone(), m.message_id.clone());
                    let detail = format!(
                        "acknowledged as {expected:?}, not the id derived from its idempotency key"
                    );
                    self.checker.fail(
                        Invariant::Duplicate,
                        now,
                        Some(i),
                        Some(&session),
                        Some(&id),
                        detail,
                    );
                }
            }
            Outcome::Failed { msg, error } => {
                self.trace.line(now, || format!("client message {msg} failed at n{i}: {error}"));
                self.schedule_retry(msg);
            }
            Outcome::History { session, messages } => {
                self.checker.history_read(now, i, &session, &messages)
            }
            Outcome::Ignored => {}
        }
    }

    fn client_node_lost(&mut self, i: usize) {
        let lost = self.workload.as_mut().map(|w| w.node_lost(i)).unwrap_or_default();
        for msg in lost {
            self.schedule_retry(msg);
        }
    }

    // ---- faults -----------------------------------------------------------------------------

    fn fault_start(&mut self, index: usize) {
        let Some(s) = self.schedule.get(index).cloned() else { return };
        self.faults_pending = self.faults_pending.saturating_sub(1);
        self.faults_active += 1;
        let now = self.now;
        self.trace.line(now, || format!("fault {:?}", s.fault));
        match s.fault {
            Fault::Split { side, for_us } => {
                let n = self.slots.len();
                let mut links = Vec::new();
                for a in side.iter().copied() {
                    for b in (0..n).filter(|b| !side.contains(b)) {
                        links.push((a, b));
                        links.push((b, a));
                    }
                }
                for (a, b) in &links {
                    self.net.cut_link(*a, *b);
                }
                self.push(now + for_us, Ev::Heal { links });
            }
            Fault::OneWay { from, to, for_us } => {
                self.net.cut_link(from, to);
                self.push(now + for_us, Ev::Heal { links: vec![(from, to)] });
            }
            Fault::Flap { a, b, period_us, for_us } => {
                self.net.cut_link(a, b);
                self.net.cut_link(b, a);
                self.push(
                    now + period_us,
                    Ev::Flap { a, b, until: now + for_us, period: period_us, cut: true },
                );
            }
            Fault::Crash { pick, down_us } => {
                let deploying = self.deploy_node();
                let down = self.slots.iter().filter(|s| s.node.is_none()).count();
                let max_down = (self.slots.len().saturating_sub(1)) / 2;
                let eligible: Vec<usize> = (0..self.slots.len())
                    .filter(|i| self.slots[*i].node.is_some() && Some(*i) != deploying)
                    .collect();
                if eligible.is_empty() || down >= max_down {
                    self.trace.line(now, || "crash skipped: too many nodes down".to_string());
                    self.fault_ended();
                    return;
                }
                let victim = eligible[usize::try_from(pick % eligible.len() as u64).unwrap_or(0)];
                self.kill(victim, "crash");
                self.push(now + down_us, Ev::Restart { node: victim, deploy: false });
            }
            Fault::Loss { rates, for_us } => {
                let id = self.next_loss;
                self.next_loss += 1;
                self.loss_episodes.insert(id, rates);
                self.net.rates = max_rates(self.loss_episodes.values());
                self.push(now + for_us, Ev::LossEnd { id });
            }
            Fault::Deploy => {
                let mut order: Vec<usize> = (0..self.slots.len()).collect();
                // A random order: a deploy tool walks hosts in its own order.
                for k in (1..order.len()).rev() {
                    let j = crate::rng::index(&mut self.fault_rng, k + 1);
                    order.swap(k, j);
                }
                self.deploy = Some(Deploy { order, next: 0, phase: DeployPhase::Pick });
                self.push(now, Ev::DeployTick);
            }
        }
    }

    fn fault_ended(&mut self) {
        self.faults_active = self.faults_active.saturating_sub(1);
        if self.faults_active == 0 && self.faults_pending == 0 {
            self.heal_at = Some(self.now);
            self.end = self.end.max(self.now + QUIET_MS_MIN * US_PER_MS);
            self.trace.line(self.now, || "all faults over".to_string());
        }
    }

    fn deploy_node(&self) -> Option<usize> {
        match self.deploy.as_ref()?.phase {
            DeployPhase::Pick => None,
            DeployPhase::Draining { node, .. }
            | DeployPhase::Flushing { node }
            | DeployPhase::Restarting { node }
            | DeployPhase::Joining { node, .. } => Some(node),
        }
    }

    fn deploy_tick(&mut self) {
        let now = self.now;
        let Some(d) = self.deploy.as_ref() else { return };
        let (phase, next, order_len) = (d.phase, d.next, d.order.len());
        let next_node = d.order.get(next).copied();
        let mut new_phase = phase;
        match phase {
            DeployPhase::Pick => {
                let Some(node) = next_node.filter(|_| next < order_len) else {
                    self.trace.line(now, || "deploy finished".to_string());
                    self.deploy = None;
                    self.fault_ended();
                    return;
                };
                if self.slots[node].running() {
                    let deadline = self.slots[node].clock.node_ms(now) + DRAIN_DEADLINE_MS;
                    self.trace.line(now, || format!("deploy: drain n{node}"));
                    self.slots[node].phase = Phase::Draining;
                    self.client_node_lost(node);
                    new_phase = DeployPhase::Draining { node, since: now };
                    self.set_deploy_phase(new_phase);
                    self.feed(node, Input::Command(Command::Drain { deadline }));
                    new_phase = self.deploy.as_ref().map_or(new_phase, |d| d.phase);
                }
            }
            DeployPhase::Draining { node, since } => {
                if now > since + (DRAIN_DEADLINE_MS + DRAIN_LATE_MS_MAX) * US_PER_MS {
                    let detail = format!(
                        "drain not finished {DRAIN_LATE_MS_MAX} ms after its deadline of {DRAIN_DEADLINE_MS} ms"
                    );
                    self.checker.fail(Invariant::Bounds, now, Some(node), None, None, detail);
                    new_phase = DeployPhase::Flushing { node };
                }
            }
            DeployPhase::Flushing { node } => {
                if self.slots[node].writes.is_empty() {
                    self.check_acked_durable_elsewhere(node);
                    self.kill(node, "deploy stop");
                    let gap =
                        between(&mut self.fault_rng, DEPLOY_RESTART_MS_MIN, DEPLOY_RESTART_MS_MAX)
                            * US_PER_MS;
                    self.push(now + gap, Ev::Restart { node, deploy: true });
                    new_phase = DeployPhase::Restarting { node };
                }
            }
            DeployPhase::Restarting { .. } => {}
            DeployPhase::Joining { node, since } => {
                if self.rejoined(node) {
                    self.trace.line(now, || format!("deploy: n{node} is a live member everywhere"));
                    if let Some(d) = self.deploy.as_mut() {
                        d.next += 1;
                    }
                    new_phase = DeployPhase::Pick;
                } else if now > since + DEPLOY_JOIN_MS_MAX * US_PER_MS {
                    let detail = format!(
                        "restarted node is not a live member everywhere after {DEPLOY_JOIN_MS_MAX} ms"
                    );
                    self.checker.fail(Invariant::Membership, now, Some(node), None, None, detail);
                    if let Some(d) = self.deploy.as_mut() {
                        d.next += 1;
                    }
                    new_phase = DeployPhase::Pick;
                }
            }
        }
        self.set_deploy_phase(new_phase);
        if self.deploy.is_some() {
            self.push(now + DEPLOY_TICK_MS * US_PER_MS, Ev::DeployTick);
        }
    }

    fn set_deploy_phase(&mut self, phase: DeployPhase) {
        if let Some(d) = self.deploy.as_mut() {
            d.phase = phase;
        }
    }

    /// Whether node `i`'s current generation is a live member in every running node's view,
    /// and it sees every running node.
    fn rejoined(&self, i: usize) -> bool {
        let Some(generation) = self.slots[i].node.as_ref().map(|n| n.config().generation) else {
            return false;
        };
        let id = self.slots[i].id;
        let running: BTreeSet<NodeId> = self.running_ids().into_iter().collect();
        let sees_all = self.slots[i]
            .node
            .as_ref()
            .is_some_and(|n| n.live_members().into_iter().collect::<BTreeSet<_>>() == running);
        sees_all
            && self.slots.iter().enumerate().filter(|(j, s)| *j != i && s.running()).all(
                |(_, s)| {
                    s.node.as_ref().is_some_and(|n| {
                        n.status()
                            .members
                            .iter()
                            .any(|m| m.node == id && m.alive && m.generation >= generation)
                    })
                },
            )
    }

    /// Invariant 1 after a drained node stopped: every acknowledged message is durable on
    /// some other node.
    fn check_acked_durable_elsewhere(&mut self, stopped: usize) {
        let Some(w) = self.workload.as_ref() else { return };
        let acked: Vec<(SessionKey, String)> = w
            .messages
            .iter()
            .filter(|m| m.acked.is_some())
            .map(|m| (m.session.clone(), m.message_id.clone()))
            .collect();
        for (session, id) in acked {
            let mut unreadable = Vec::new();
            let mut somewhere = false;
            for (j, s) in self.slots.iter().enumerate().filter(|(j, _)| *j != stopped) {
                let mut durable = s.durable.borrow_mut();
                // No durable change there ever wrote it: nothing to load to know it is absent.
                if durable.recorded(&session, &id) == Some(false) {
                    continue;
                }
                match durable.has_message(&session, &id) {
                    Ok(true) => {
                        somewhere = true;
                        break;
                    }
                    Ok(false) => {}
                    Err(e) => unreadable.push(format!("n{j}: {e}")),
                }
            }
            if !somewhere {
                let mut detail = format!(
                    "after n{stopped} drained and stopped, the acknowledged message is durable in the current transcript of no other node"
                );
                if !unreadable.is_empty() {
                    detail.push_str(&format!(
                        " (durable copies that do not load: {})",
                        unreadable.join("; ")
                    ));
                }
                let archived: Vec<String> = self
                    .slots
                    .iter()
                    .enumerate()
                    .filter_map(|(j, s)| {
                        let found = s.durable.borrow_mut().archived_with(&session, &id);
                        (!found.is_empty()).then(|| format!("n{j}: {}", found.join(", ")))
                    })
                    .collect();
                if !archived.is_empty() {
                    detail.push_str(&format!(
                        "; it is only in archived transcripts: {}",
                        archived.join("; ")
                    ));
                }
                self.checker.fail(
                    Invariant::AckedLost,
                    self.now,
                    Some(stopped),
                    Some(&session),
                    Some(&id),
                    detail,
                );
            }
        }
    }

    // ---- polls and final checks -------------------------------------------------------------

    fn running_ids(&self) -> Vec<NodeId> {
        self.slots.iter().filter(|s| s.running()).map(|s| s.id).collect()
    }

    /// Whether every running node sees exactly the running nodes as live.
    pub fn membership_converged(&self) -> bool {
        let running: BTreeSet<NodeId> = self.running_ids().into_iter().collect();
        // Polls start at the node the last poll found behind: it usually still is, so a poll
        // while a large cluster forms costs one view, not one per node that already caught up.
        let count = self.slots.len();
        let start = self.converged_from.get().min(count);
        for i in (start..count).chain(0..start) {
            let slot = &self.slots[i];
            if !slot.running() {
                continue;
            }
            let sees_all = slot.node.as_ref().is_some_and(|n| {
                let live = n.live_members();
                // A view shorter than the running set cannot cover it.
                live.len() >= running.len() && live.into_iter().collect::<BTreeSet<_>>() == running
            });
            if !sees_all {
                self.converged_from.set(i);
                return false;
            }
        }
        true
    }

    fn replicas_converged(&self) -> bool {
        let Some(w) = self.workload.as_ref() else { return true };
        let running = self.running_ids();
        w.sessions().iter().all(|s| {
            let heads: BTreeSet<Option<HeadsDigest>> =
                placement::replicas(s, running.iter().copied(), REPLICATION_FACTOR_DEFAULT)
                    .into_iter()
                    .filter_map(|id| self.by_id.get(&id))
                    .map(|j| self.slots[*j].node.as_ref().and_then(|n| n.heads_of(s)))
                    .collect();
            heads.len() <= 1
        })
    }

    fn tick(&mut self) {
        let now = self.now;
        self.ticks += 1;
        if self.ticks.is_multiple_of(4) {
            self.check_bounds();
        }
        if let Some(heal) = self.heal_at {
            if self.convergence_ms.is_none()
                && self.membership_converged()
                && self.replicas_converged()
            {
                self.convergence_ms = Some((now - heal) / US_PER_MS);
                self.trace
                    .line(now, || format!("converged {} ms after heal", (now - heal) / US_PER_MS));
            }
            if !self.membership_reported
                && now > heal + MEMBERSHIP_CONVERGENCE_MS_MAX * US_PER_MS
                && !self.membership_converged()
            {
                self.membership_reported = true;
                let detail = format!(
                    "membership not converged {MEMBERSHIP_CONVERGENCE_MS_MAX} ms after the last fault: {}",
                    self.membership_views()
                );
                self.checker.fail(Invariant::Membership, now, None, None, None, detail);
            }
        }
        if now + TICK_MS * US_PER_MS <= self.end
            || self.faults_active > 0
            || self.faults_pending > 0
        {
            self.push(now + TICK_MS * US_PER_MS, Ev::Tick);
        }
    }

    /// Who sees whom, for membership violations.
    fn membership_views(&self) -> String {
        let name = |id: &NodeId| self.by_id.get(id).map_or_else(|| id.short(), |j| format!("n{j}"));
        let views: Vec<String> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.running())
            .filter_map(|(i, s)| {
                let live: Vec<String> = s.node.as_ref()?.live_members().iter().map(name).collect();
                Some(format!("n{i} sees [{}]", live.join(" ")))
            })
            .collect();
        views.join("; ")
    }

    fn check_bounds(&mut self) {
        let now = self.now;
        let mut failures = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            let Some(n) = s.node.as_ref() else { continue };
            let st = n.status();
            if st.pending_requests > PENDING_REQUESTS_MAX {
                failures.push((
                    i,
                    format!(
                        "{} pending requests (bound {PENDING_REQUESTS_MAX})",
                        st.pending_requests
                    ),
                ));
            }
            if st.pending_writes > WRITE_QUEUE_BATCHES_MAX {
                failures.push((
                    i,
                    format!(
                        "{} write batches in flight (bound {WRITE_QUEUE_BATCHES_MAX})",
                        st.pending_writes
                    ),
                ));
            }
        }
        for (i, detail) in failures {
            self.checker.fail(Invariant::Bounds, now, Some(i), None, None, detail);
        }
    }

    /// The quiescence checks: after every fault has ended and the cluster had time to settle.
    pub fn final_checks(&mut self) {
        let now = self.now;
        if !self.membership_converged() && !self.membership_reported {
            let detail = format!(
                "membership not converged at the end of the run: {}",
                self.membership_views()
            );
            self.checker.fail(Invariant::Membership, now, None, None, None, detail);
        }
        let Some(w) = self.workload.as_ref() else { return };
        let sessions: Vec<SessionKey> = w.sessions().to_vec();
        let mut acked_by_session: BTreeMap<SessionKey, Vec<String>> = BTreeMap::new();
        for m in w.messages.iter().filter(|m| m.acked.is_some()) {
            acked_by_session.entry(m.session.clone()).or_default().push(m.message_id.clone());
        }
        let running = self.running_ids();
        for session in sessions {
            let acked = acked_by_session.remove(&session).unwrap_or_default();
            let replicas: Vec<usize> =
                placement::replicas(&session, running.iter().copied(), REPLICATION_FACTOR_DEFAULT)
                    .into_iter()
                    .filter_map(|id| self.by_id.get(&id).copied())
                    .collect();
            // Every running node holding a copy, replicas first.
            let mut holders = replicas.clone();
            for (j, s) in self.slots.iter().enumerate() {
                let holds = s.running()
                    && s.node
                        .as_ref()
                        .and_then(|n| n.heads_of(&session))
                        .is_some_and(|h| h != HeadsDigest::default());
                if holds && !holders.contains(&j) {
                    holders.push(j);
                }
            }
            let mut copies: Vec<(usize, HeadsDigest, Vec<Message>)> = Vec::new();
            for &j in &holders {
                let copy = self.slots[j].node.as_mut().and_then(|n| {
                    n.read_doc(&session, |doc| {
                        (doc.heads_digest(), doc.history(HISTORY_LIMIT_MAX, None))
                    })
                });
                match copy {
                    Some((heads, Ok(history))) => copies.push((
                        j,
                        heads,
                        history.into_iter().map(std::sync::Arc::unwrap_or_clone).collect(),
                    )),
                    Some((_, Err(e))) => {
                        let detail = format!("history of n{j}'s copy unreadable: {e}");
                        self.checker.fail(
                            Invariant::Convergence,
                            now,
                            Some(j),
                            Some(&session),
                            None,
                            detail,
                        );
                    }
                    None if !acked.is_empty() && replicas.contains(&j) => {
                        let detail = format!(
                            "replica n{j} has no copy of a session with {} acknowledged message(s)",
                            acked.len()
                        );
                        self.checker.fail(
                            Invariant::AckedLost,
                            now,
                            Some(j),
                            Some(&session),
                            acked.first().map(String::as_str),
                            detail,
                        );
                    }
                    None => {}
                }
            }
            self.check_copies(&session, &acked, &replicas, &copies);
        }
    }

    fn check_copies(
        &mut self,
        session: &SessionKey,
        acked: &[String],
        replicas: &[usize],
        copies: &[(usize, HeadsDigest, Vec<Message>)],
    ) {
        let now = self.now;
        for (j, _, history) in copies {
            if let Some(dup) = first_duplicate(history) {
                self.checker.fail(
                    Invariant::Duplicate,
                    now,
                    Some(*j),
                    Some(session),
                    Some(&dup),
                    "the message id appears twice in the history".into(),
                );
            }
            if replicas.contains(j) {
                let ids: BTreeSet<&str> = history.iter().map(|m| m.id.as_str()).collect();
                if let Some(missing) = acked.iter().find(|id| !ids.contains(id.as_str())) {
                    let archived = self.slots[*j]
                        .node
                        .as_mut()
                        .and_then(|n| n.read_doc(session, |doc| archived_in(doc, missing)));
                    let mut detail = format!(
                        "acknowledged message missing from the history of replica n{j} at quiescence"
                    );
                    if let Some(found) = archived.filter(|a| !a.is_empty()) {
                        detail.push_str(&format!(
                            "; it is only in archived transcript(s) {}",
                            found.join(", ")
                        ));
                    }
                    self.checker.fail(
                        Invariant::AckedLost,
                        now,
                        Some(*j),
                        Some(session),
                        Some(missing),
                        detail,
                    );
                }
            }
        }
        if let Some((first, heads, history)) = copies.first() {
            for (j, h, hist) in &copies[1..] {
                if h != heads {
                    let detail = format!(
                        "heads differ after heal: n{first} {heads:?} ({} messages), n{j} {h:?} ({} messages)",
                        history.len(),
                        hist.len()
                    );
                    self.checker.fail(
                        Invariant::Convergence,
                        now,
                        Some(*j),
                        Some(session),
                        None,
                        detail,
                    );
                } else if hist != history {
                    let detail =
                        format!("equal heads but different histories on n{first} and n{j}");
                    self.checker.fail(
                        Invariant::Convergence,
                        now,
                        Some(*j),
                        Some(session),
                        None,
                        detail,
                    );
                }
            }
            // Replies, on the first replica's copy.
            for id in acked {
                let replies: Vec<&Message> = history
                    .iter()
                    .filter(|m| {
                        m.role == Role::Assistant
                            && !m.partial
                            && m.reply_to.iter().any(|r| r == id)
                    })
                    .collect();
                let (node, runs) = (*first, self.checker.executions_of(id));
                if replies.is_empty() {
                    let detail = format!(
                        "acknowledged message has no reply at quiescence ({runs} turn execution(s) made side effects)"
                    );
                    self.checker.fail(
                        Invariant::ExactlyOnce,
                        now,
                        Some(node),
                        Some(session),
                        Some(id),
                        detail,
                    );
                } else if replies.len() > 1 {
                    let detail = format!("{} replies to one message", replies.len());
                    self.checker.fail(
                        Invariant::ExactlyOnce,
                        now,
                        Some(node),
                        Some(session),
                        Some(id),
                        detail,
                    );
                }
                if runs > 1 && self.checker.connected() {
                    let detail = format!("the turn ran {runs} times in a connected cluster");
                    self.checker.fail(
                        Invariant::ExactlyOnce,
                        now,
                        Some(node),
                        Some(session),
                        Some(id),
                        detail,
                    );
                }
            }
        }
    }
}

/// The archived transcripts of `doc` (`id (reason)`) holding message `id`.
fn archived_in(doc: &beamclaw_crdt::SessionDoc, id: &str) -> Vec<String> {
    doc.archives()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| {
            doc.archived_history(&a.session_id, HISTORY_LIMIT_MAX, None)
                .is_ok_and(|h| h.iter().any(|m| m.id == id))
        })
        .map(|a| format!("{} ({})", a.session_id, a.reason))
        .collect()
}

/// The node an event is for (stalled nodes hold theirs back).
fn target_of(ev: &Ev) -> Option<usize> {
    match ev {
        Ev::Datagram { to, .. } | Ev::Frame { to, .. } => Some(*to),
        Ev::Congestion { node, .. }
        | Ev::Timer { node, .. }
        | Ev::Persisted { node, .. }
        | Ev::TurnStep { node, .. }
        | Ev::TurnInput { node, .. } => Some(*node),
        _ => None,
    }
}

fn max_rates<'a>(episodes: impl Iterator<Item = &'a LossRates>) -> LossRates {
    episodes.fold(LossRates::default(), |a, b| LossRates {
        datagram_loss: a.datagram_loss.max(b.datagram_loss),
        datagram_dup: a.datagram_dup.max(b.datagram_dup),
        frame_loss: a.frame_loss.max(b.frame_loss),
    })
}

fn add_counters(total: &mut Counters, c: &Counters) {
    total.owner_overlaps += c.owner_overlaps;
    total.handoffs_completed += c.handoffs_completed;
    total.claims += c.claims;
    total.pushes_stored_unapplied += c.pushes_stored_unapplied;
    total.replica_settles += c.replica_settles;
    total.turns_started += c.turns_started;
    total.step_downs += c.step_downs;
    total.sync_rounds += c.sync_rounds;
    total.sync_exchanges_stalled += c.sync_exchanges_stalled;
    total.sync_exchanges_level += c.sync_exchanges_level;
}

fn short_result(r: &Result<Response, RequestError>) -> String {
    match r {
        Ok(Response::Submitted { message_id, status, epoch, .. }) => {
            format!("submitted {message_id} {status:?} {epoch:?}")
        }
        Ok(Response::History { messages, .. }) => format!("history of {} messages", messages.len()),
        Ok(Response::Mutated { .. }) => "mutated".into(),
        Ok(Response::Written) => "written".into(),
        Err(e) => format!("error: {e}"),
    }
}

fn short_turn_input(t: &TurnInput) -> String {
    match t {
        TurnInput::Event { run, .. } => format!("event of {}", run.run_id),
        TurnInput::Output { run, messages, done, .. } => {
            let ids: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
            format!("output of {} term {} {ids:?} done={done}", run.run_id, run.epoch)
        }
        TurnInput::Idle { session } => format!("idle {session}"),
    }
}

fn short_command(c: &Command) -> String {
    match c {
        Command::Request { session, body, .. } => match body {
            beamclaw_mesh::core::RequestBody::Submit { idempotency_key, .. } => {
                format!("submit {idempotency_key} to {session}")
            }
            beamclaw_mesh::core::RequestBody::Read { limit, .. } => {
                format!("read {limit} of {session}")
            }
            beamclaw_mesh::core::RequestBody::Mutate(_) => format!("mutate {session}"),
        },
        other => format!("{other:?}"),
    }
}

impl World {
    /// Debugging aid: what node `i`'s disk holds of `session` (message ids), and its chunks.
    pub fn durable_ids(
        &self,
        i: usize,
        session: &SessionKey,
    ) -> Result<(usize, Vec<String>), String> {
        let mut d = self.slots[i].durable.borrow_mut();
        let n = d.chunk_count(session);
        let ids = match d.shadow(session)? {
            Some(doc) => {
                let mut ids: Vec<String> = doc
                    .history(HISTORY_LIMIT_MAX, None)
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(|m| m.id.clone())
                    .collect();
                ids.push(format!("current={}", doc.session_id()));
                for a in doc.archives().map_err(|e| e.to_string())? {
                    let old = doc
                        .archived_history(&a.session_id, HISTORY_LIMIT_MAX, None)
                        .map_err(|e| e.to_string())?;
                    ids.push(format!(
                        "archived {} ({}): {:?}",
                        a.session_id,
                        a.reason,
                        old.iter().map(|m| m.id.clone()).collect::<Vec<_>>()
                    ));
                }
                ids
            }
            None => Vec::new(),
        };
        Ok((n, ids))
    }
}
