//! The driver: runs the core on tokio, quinn and the redb store.
//!
//! One task owns the `Node` and feeds it every input (frames and datagrams from the transport,
//! timer firings from tokio time, completions from the store's group commit, commands from the
//! gateway, turn output from the runtime) and executes the effects it returns. The driver holds
//! no protocol decision: those stay in the core, where the simulator tests them. Every channel is
//! bounded.

pub mod identity;
pub mod tls;
pub mod transport;

mod disk;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use beamclaw_crdt::store::{Store, StoreError, WriteBatch};
use beamclaw_crdt::{IndexEntry, SessionKey};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use crate::core::storage::WriteOp;
use crate::core::{
    AbortReason, BatchId, Command, Effect, Event, Input, LIST_SETTLES_MAX, Millis, Node,
    NodeConfig, NodeId, NodeStatus, RequestBody, RequestError, Response, RunRef, SwimPreset, Timer,
    Timing, TurnInput, generation_for_start,
};

pub use identity::load_or_create_node_key;
pub use tls::{ClusterKey, LOOPBACK_DEV_SECRET, NodeKey};
pub use transport::{Transport, TransportStats};

/// Inputs queued for the core task, at most (network readers wait when it is full).
pub const CORE_INPUT_QUEUE_MAX: usize = 16_384;
/// Turn commands queued for the runtime, at most.
pub const TURN_COMMANDS_QUEUE_MAX: usize = 65_536;
/// Events buffered for gateway subscribers; a subscriber that falls further behind misses some
/// (it is told so and re-reads history).
pub const EVENTS_BUFFER_MAX: usize = 8_192;
/// Write batches held while the store's queue is full, at most; beyond this the driver waits.
pub const UNSUBMITTED_BATCHES_MAX: usize = 1_024;
/// How often held write batches are offered to the store again.
pub const STORE_RETRY_MS: u64 = 5;
/// How long a stopping node waits for its last writes to become durable.
pub const FLUSH_WAIT_MS: u64 = 5_000;
/// Name of the node-meta entry counting process starts.
pub const STARTS_META: &str = "mesh.starts";

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(
        "the mesh listens on {listen}, which is not loopback, and no cluster secret is set: set \
         mesh.clusterSecret in beamclaw.json5 or the BEAMCLAW_CLUSTER_SECRET environment variable \
         (the same value on every node)"
    )]
    SecretRequired { listen: SocketAddr },
    #[error("mesh transport: {0}")]
    Transport(#[from] transport::TransportError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("loading the session index: {0}")]
    Disk(#[from] crate::core::DiskError),
}

/// How the mesh of this node is set up.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub key: NodeKey,
    /// Where the mesh endpoint listens (UDP).
    pub listen: SocketAddr,
    /// The address peers should use (defaults to `listen`).
    pub advertise: Option<SocketAddr>,
    pub seeds: Vec<SocketAddr>,
    /// The cluster secret; required unless the mesh listens on loopback.
    pub cluster_secret: Option<String>,
    pub replication_factor: usize,
    pub write_quorum: usize,
    pub swim: SwimPreset,
    pub timing: Timing,
    pub hydrated_bytes_budget: usize,
}

impl MeshConfig {
    pub fn new(key: NodeKey, listen: SocketAddr) -> Self {
        MeshConfig {
            key,
            listen,
            advertise: None,
            seeds: Vec::new(),
            cluster_secret: None,
            replication_factor: crate::core::placement::REPLICATION_FACTOR_DEFAULT,
            write_quorum: 1,
            swim: SwimPreset::Lan,
            timing: Timing::default(),
            hydrated_bytes_budget: beamclaw_crdt::cache::HYDRATED_BYTES_BUDGET,
        }
    }
}

/// What the runtime must do about turns.
#[derive(Debug)]
pub enum TurnCommand {
    Start {
        run: RunRef,
        agent_id: String,
        input: Box<beamclaw_crdt::Message>,
    },
    /// Finish or checkpoint the running turn of `session` before `deadline`.
    Drain {
        session: SessionKey,
        deadline: Instant,
    },
    Abort {
        session: SessionKey,
        run_id: Option<String>,
        reason: AbortReason,
    },
}

pub(crate) enum CoreMsg {
    Input(Input),
    TurnWrite {
        run: RunRef,
        messages: Vec<beamclaw_crdt::Message>,
        usage: beamclaw_crdt::Usage,
        reply: oneshot::Sender<Result<Response, RequestError>>,
    },
    Request {
        session: SessionKey,
        body: RequestBody,
        reply: oneshot::Sender<Result<Response, RequestError>>,
    },
    Status(oneshot::Sender<NodeStatus>),
    CheckEpoch {
        session: SessionKey,
        term: u64,
        reply: oneshot::Sender<bool>,
    },
    Sessions(oneshot::Sender<Vec<(SessionKey, IndexEntry)>>),
    Drain {
        deadline: Duration,
        reply: oneshot::Sender<(usize, usize)>,
    },
}

/// The handle the node and the gateway use to talk to the mesh.
#[derive(Clone)]
pub struct MeshHandle {
    tx: mpsc::Sender<CoreMsg>,
    events: broadcast::Sender<Event>,
    node: NodeId,
    advertise: SocketAddr,
    transport: Transport,
    fence: EpochFence,
}

/// The sessions this node owns and their terms, kept current by the core task from ownership
/// changes: the synchronous epoch fence the runtime consults before every side effect.
#[derive(Clone, Default)]
pub struct EpochFence(Arc<std::sync::RwLock<HashMap<SessionKey, u64>>>);

impl EpochFence {
    /// Whether this node owns `session` under `term` right now.
    pub fn check(&self, session: &SessionKey, term: u64) -> Result<(), u64> {
        let owned = self.0.read().unwrap_or_else(|e| e.into_inner());
        match owned.get(session) {
            Some(current) if *current == term => Ok(()),
            Some(current) => Err(*current),
            None => Err(0),
        }
    }

    fn set(&self, session: &SessionKey, term: Option<u64>) {
        let mut owned = self.0.write().unwrap_or_else(|e| e.into_inner());
        match term {
            Some(t) => owned.insert(session.clone(), t),
            None => owned.remove(session),
        };
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the mesh core has stopped")]
pub struct CoreStopped;

impl MeshHandle {
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The mesh address peers reach this node at.
    pub fn mesh_addr(&self) -> SocketAddr {
        self.advertise
    }

    pub fn transport_stats(&self) -> &TransportStats {
        self.transport.stats()
    }

    /// Sends a request to the session's owner (wherever it is) and waits for its answer.
    pub async fn request(
        &self,
        session: SessionKey,
        body: RequestBody,
    ) -> Result<Response, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(CoreMsg::Request { session, body, reply })
            .await
            .map_err(|_| RequestError::Unavailable("the mesh core has stopped".into()))?;
        rx.await.map_err(|_| RequestError::Unavailable("the mesh core has stopped".into()))?
    }

    /// Every event of this node (turn events of subscribed sessions, membership, ownership).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub async fn subscribe(&self, session: SessionKey) -> Result<(), CoreStopped> {
        self.input(Input::Command(Command::Subscribe { session })).await
    }

    pub async fn unsubscribe(&self, session: SessionKey) -> Result<(), CoreStopped> {
        self.input(Input::Command(Command::Unsubscribe { session })).await
    }

    /// Output and events of a running turn.
    pub async fn turn(&self, input: TurnInput) -> Result<(), CoreStopped> {
        self.input(Input::Turn(input)).await
    }

    /// Writes a turn's messages and usage; resolves once durable, or refuses a stale epoch.
    pub async fn turn_write(
        &self,
        run: RunRef,
        messages: Vec<beamclaw_crdt::Message>,
        usage: beamclaw_crdt::Usage,
    ) -> Result<(), RequestError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(CoreMsg::TurnWrite { run, messages, usage, reply })
            .await
            .map_err(|_| RequestError::Unavailable("the mesh core has stopped".into()))?;
        match rx.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RequestError::Unavailable("the mesh core has stopped".into())),
        }
    }

    /// A streaming event of a running turn, without waiting: events are ephemeral, so when the
    /// core's queue is full the event is dropped (the final message is written, not streamed).
    pub fn turn_event(&self, run: RunRef, event: crate::core::TurnEvent) {
        if self.tx.try_send(CoreMsg::Input(Input::Turn(TurnInput::Event { run, event }))).is_err() {
            tracing::debug!("turn event dropped: mesh core queue full");
        }
    }

    /// Joins (or re-joins) the cluster through these mesh addresses.
    pub async fn join(&self, seeds: Vec<SocketAddr>) -> Result<(), CoreStopped> {
        self.input(Input::Command(Command::Join { seeds })).await
    }

    /// Tells every live node (this one included) something small and ephemeral; each delivers
    /// it as `Event::Broadcast`.
    pub async fn broadcast(
        &self,
        topic: impl Into<String>,
        payload: Vec<u8>,
    ) -> Result<(), CoreStopped> {
        self.input(Input::Command(Command::Broadcast { topic: topic.into(), payload })).await
    }

    /// The synchronous epoch fence.
    pub fn fence(&self) -> &EpochFence {
        &self.fence
    }

    async fn input(&self, input: Input) -> Result<(), CoreStopped> {
        self.tx.send(CoreMsg::Input(input)).await.map_err(|_| CoreStopped)
    }

    pub async fn status(&self) -> Result<NodeStatus, CoreStopped> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(CoreMsg::Status(reply)).await.map_err(|_| CoreStopped)?;
        rx.await.map_err(|_| CoreStopped)
    }

    /// The epoch fence: whether this node still owns `session` under `term`.
    pub async fn check_epoch(&self, session: &SessionKey, term: u64) -> bool {
        let (reply, rx) = oneshot::channel();
        let msg = CoreMsg::CheckEpoch { session: session.clone(), term, reply };
        if self.tx.send(msg).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// The index entries of the sessions this node holds.
    pub async fn local_sessions(&self) -> Result<Vec<(SessionKey, IndexEntry)>, CoreStopped> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(CoreMsg::Sessions(reply)).await.map_err(|_| CoreStopped)?;
        rx.await.map_err(|_| CoreStopped)
    }

    /// Hands every owned session over and leaves the cluster, within `deadline`; then waits for
    /// the last writes to be durable and closes the transport. Returns (handed over, left).
    pub async fn drain(&self, deadline: Duration) -> Result<(usize, usize), CoreStopped> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(CoreMsg::Drain { deadline, reply }).await.map_err(|_| CoreStopped)?;
        let outcome = rx.await.map_err(|_| CoreStopped)?;
        let flush_until = Instant::now() + Duration::from_millis(FLUSH_WAIT_MS);
        while Instant::now() < flush_until {
            match self.status().await {
                Ok(s) if s.pending_writes == 0 => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(_) => break,
            }
        }
        self.transport.close().await;
        Ok(outcome)
    }
}

/// Starts the mesh of this node: binds the endpoint, loads the core from the store, joins the
/// seeds. Returns the handle and the stream of turn commands for the runtime.
pub async fn start(
    cfg: MeshConfig,
    store: Arc<Store>,
) -> Result<(MeshHandle, mpsc::Receiver<TurnCommand>), DriverError> {
    let secret = match (&cfg.cluster_secret, cfg.listen.ip().is_loopback()) {
        (Some(s), _) => s.clone(),
        (None, true) => LOOPBACK_DEV_SECRET.to_string(),
        (None, false) => return Err(DriverError::SecretRequired { listen: cfg.listen }),
    };
    let cluster = ClusterKey::from_secret(&secret);
    let starts = store
        .node_meta(STARTS_META)?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_le_bytes)
        + 1;
    store.commit(WriteBatch::new(vec![WriteOp::PutNodeMeta {
        name: STARTS_META.into(),
        bytes: starts.to_le_bytes().to_vec(),
    }]))?;

    let (tx, rx) = mpsc::channel(CORE_INPUT_QUEUE_MAX);
    let transport = Transport::bind(cfg.listen, &cfg.key, &cluster, tx.clone())?;
    let bound = transport.local_addr().unwrap_or(cfg.listen);
    let advertise = cfg.advertise.unwrap_or(bound);

    let mut seed = [0u8; 32];
    if getrandom::fill(&mut seed).is_err() {
        // No OS entropy: fall back to something unique per process; the seed only spreads probes.
        seed[..8].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
        seed[8..16].copy_from_slice(&starts.to_le_bytes());
    }
    let mut node_cfg =
        NodeConfig::new(cfg.key.node_id(), advertise, generation_for_start(starts), seed);
    node_cfg.seeds = cfg.seeds.clone();
    node_cfg.replication_factor = cfg.replication_factor;
    node_cfg.write_quorum = cfg.write_quorum;
    node_cfg.swim = cfg.swim;
    node_cfg.timing = cfg.timing.clone();
    node_cfg.hydrated_bytes_budget = cfg.hydrated_bytes_budget;

    let mut node = Node::new(node_cfg, disk::StoreDisk(store.clone()));
    let clock = Instant::now();
    let effects = node.start(0)?;
    let fence = EpochFence::default();
    for session in node.owned_sessions() {
        fence.set(&session, node.epoch_of(&session).map(|e| e.term));
    }
    let (events, _) = broadcast::channel(EVENTS_BUFFER_MAX);
    let (turn_tx, turn_rx) = mpsc::channel(TURN_COMMANDS_QUEUE_MAX);
    tracing::info!(
        node = %cfg.key.node_id(),
        mesh = %advertise,
        generation = starts,
        seeds = cfg.seeds.len(),
        "mesh started"
    );
    let mut task = CoreTask {
        node,
        clock,
        rx,
        tx: tx.clone(),
        store,
        transport: transport.clone(),
        timers: BinaryHeap::new(),
        timer_seq: 0,
        pending: HashMap::new(),
        next_req: Arc::new(AtomicU64::new(1)),
        events: events.clone(),
        turns: turn_tx,
        unsubmitted: VecDeque::new(),
        drain_waiters: Vec::new(),
        fence: fence.clone(),
    };
    task.execute(effects);
    tokio::spawn(task.run());
    let handle = MeshHandle { tx, events, node: cfg.key.node_id(), advertise, transport, fence };
    Ok((handle, turn_rx))
}

struct CoreTask {
    node: Node<disk::StoreDisk>,
    clock: Instant,
    rx: mpsc::Receiver<CoreMsg>,
    tx: mpsc::Sender<CoreMsg>,
    store: Arc<Store>,
    transport: Transport,
    timers: BinaryHeap<Reverse<(Millis, u64, TimerSlot)>>,
    timer_seq: u64,
    pending: HashMap<u64, oneshot::Sender<Result<Response, RequestError>>>,
    next_req: Arc<AtomicU64>,
    events: broadcast::Sender<Event>,
    turns: mpsc::Sender<TurnCommand>,
    unsubmitted: VecDeque<(BatchId, WriteBatch)>,
    drain_waiters: Vec<oneshot::Sender<(usize, usize)>>,
    fence: EpochFence,
}

/// A timer in the heap; ordered only by (time, sequence), never by the value.
struct TimerSlot(Timer);

impl PartialEq for TimerSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for TimerSlot {}
impl PartialOrd for TimerSlot {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerSlot {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl CoreTask {
    fn now(&self) -> Millis {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run(mut self) {
        let mut retry = tokio::time::interval(Duration::from_millis(STORE_RETRY_MS));
        loop {
            let next = self
                .timers
                .peek()
                .map(|Reverse((at, _, _))| self.clock + Duration::from_millis(*at));
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.on_msg(msg),
                    None => break,
                },
                () = sleep_until(next), if next.is_some() => self.fire_timers(),
                _ = retry.tick(), if !self.unsubmitted.is_empty() => self.resubmit(),
            }
        }
        tracing::info!("mesh core task stopped");
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        let effects = self.node.handle(now, input);
        self.execute(effects);
    }

    fn on_msg(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Input(input) => self.handle(input),
            CoreMsg::TurnWrite { run, messages, usage, reply } => {
                let req = self.next_req.fetch_add(1, Ordering::Relaxed);
                self.pending.insert(req, reply);
                let output =
                    TurnInput::Output { run, messages, usage, done: false, reply: Some(req) };
                self.handle(Input::Turn(output));
            }
            CoreMsg::Request { session, body, reply } => {
                let req = self.next_req.fetch_add(1, Ordering::Relaxed);
                self.pending.insert(req, reply);
                self.handle(Input::Command(Command::Request { req, session, body }));
            }
            CoreMsg::Status(reply) => {
                let _ = reply.send(self.node.status());
            }
            CoreMsg::CheckEpoch { session, term, reply } => {
                let _ = reply.send(self.node.check_epoch(&session, term));
            }
            CoreMsg::Sessions(reply) => {
                // Replicas apply pushes in batches: bring the sessions that changed last up to
                // date first (the rest lag by at most `Timing::replica_settle_ms`).
                self.handle(Input::Command(Command::SettleStored { max: LIST_SETTLES_MAX }));
                let list = self.node.index_entries().map(|(k, e)| (k.clone(), e.clone())).collect();
                let _ = reply.send(list);
            }
            CoreMsg::Drain { deadline, reply } => {
                self.drain_waiters.push(reply);
                let at = self.now() + u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX / 2);
                self.handle(Input::Command(Command::Drain { deadline: at }));
                if self.node.has_left() {
                    // Nothing to hand over (or drained before): answer at once.
                    for w in self.drain_waiters.drain(..) {
                        let _ = w.send((0, 0));
                    }
                }
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now();
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, _, TimerSlot(timer)))) = self.timers.pop() {
                self.handle(Input::Timer(timer));
            }
        }
    }

    fn resubmit(&mut self) {
        while let Some((batch, writes)) = self.unsubmitted.pop_front() {
            if let Err(w) = self.submit(batch, writes) {
                self.unsubmitted.push_front((batch, w));
                return;
            }
        }
    }

    /// Offers a batch to the store; gives it back when the store's queue is full.
    fn submit(&mut self, batch: BatchId, writes: WriteBatch) -> Result<(), WriteBatch> {
        let tx = self.tx.clone();
        let kept = writes.clone();
        let on_durable =
            Box::new(move |result: Result<beamclaw_crdt::store::CommitInfo, StoreError>| {
                let result = result.map(|_| ()).map_err(|e| e.to_string());
                // Runs on the store's writer thread (not a tokio thread): blocking is fine.
                let _ = tx.blocking_send(CoreMsg::Input(Input::Persisted { batch, result }));
            });
        match self.store.submit(writes, on_durable) {
            Ok(()) => Ok(()),
            Err(StoreError::Busy { .. }) => Err(kept),
            Err(e) => {
                let result = Err(e.to_string());
                self.handle(Input::Persisted { batch, result });
                Ok(())
            }
        }
    }

    fn execute(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::SendDatagram { to, node, bytes } => {
                    self.transport.send_datagram(to, node, bytes)
                }
                Effect::SendFrame { to, addr, bytes } => self.transport.send_frame(to, addr, bytes),
                Effect::SetTimer { at, timer } => {
                    self.timer_seq += 1;
                    self.timers.push(Reverse((at, self.timer_seq, TimerSlot(timer))));
                }
                Effect::Persist { batch, writes } => {
                    if !self.unsubmitted.is_empty() {
                        // Keep batches in order behind those the store could not take yet.
                        self.unsubmitted.push_back((batch, writes));
                    } else if let Err(w) = self.submit(batch, writes) {
                        self.unsubmitted.push_back((batch, w));
                    }
                    if self.unsubmitted.len() > UNSUBMITTED_BATCHES_MAX {
                        tracing::warn!(
                            held = self.unsubmitted.len(),
                            "store queue full; write batches held"
                        );
                    }
                }
                Effect::StartTurn { run, agent_id, input } => {
                    self.turn_command(TurnCommand::Start { run, agent_id, input })
                }
                Effect::DrainTurns { session, deadline } => {
                    let deadline = self.clock + Duration::from_millis(deadline);
                    self.turn_command(TurnCommand::Drain { session, deadline })
                }
                Effect::AbortTurns { session, run_id, reason } => {
                    self.turn_command(TurnCommand::Abort { session, run_id, reason })
                }
                Effect::Deliver(Event::Response { req, result }) => {
                    if let Some(reply) = self.pending.remove(&req) {
                        let _ = reply.send(result);
                    }
                }
                Effect::Deliver(event) => {
                    if let Event::OwnerChanged { session, epoch } = &event {
                        let ours = epoch.node == self.node.id()
                            && self.node.check_epoch(session, epoch.term);
                        self.fence.set(session, ours.then_some(epoch.term));
                    }
                    if let Event::Drained { handed_over, left_behind } = &event {
                        for w in self.drain_waiters.drain(..) {
                            let _ = w.send((*handed_over, *left_behind));
                        }
                    }
                    let _ = self.events.send(event);
                }
            }
        }
    }

    fn turn_command(&mut self, cmd: TurnCommand) {
        if let Err(e) = self.turns.try_send(cmd) {
            // The runtime is far behind (or gone). A dropped start is not lost: the message
            // stays unanswered and is started again by the next scan or owner.
            tracing::error!(error = %e, "turn command dropped: runtime queue full");
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
