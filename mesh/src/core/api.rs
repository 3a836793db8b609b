//! What goes into the core and what comes out of it.
//!
//! The core is driven by `Node::handle(now, input) -> effects`. Inputs are datagrams and frames
//! from peers, timer firings, completions of storage writes, local commands (from the gateway)
//! and the output of turns (from the runtime). Effects are what the driver must do: send bytes,
//! arm timers, persist write batches, start/abort turns, and deliver events to local clients.

use std::net::SocketAddr;

use beamclaw_crdt::{Message, SessionKey, Usage};
use serde::{Deserialize, Serialize};

use super::ids::{Epoch, Member, NodeId};
use super::storage::WriteBatch;
use super::timers::Timer;
use super::turn::{RunRef, TurnEvent};

/// Virtual or real milliseconds on the node's monotonic clock. The core never reads a clock; the
/// driver (or the simulator) passes `now` into every call.
pub type Millis = u64;

/// A local request id chosen by the caller of `Command::Request`; echoed in `Event::Response`.
pub type ReqId = u64;

/// Identifies one storage write batch; echoed in `Input::Persisted`.
pub type BatchId = u64;

#[derive(Debug)]
pub enum Input {
    /// A datagram from `from` (SWIM).
    Datagram {
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    /// A frame from an authenticated peer (the transport proved it is `from`).
    Frame {
        from: NodeId,
        bytes: Vec<u8>,
    },
    Timer(Timer),
    /// The write batch `batch` is durable (or failed).
    Persisted {
        batch: BatchId,
        result: Result<(), String>,
    },
    /// The transport's queue towards `node` is full (or drained again): while congested the core
    /// stops pushing changes to it and leaves the repair to anti-entropy.
    Congestion {
        node: NodeId,
        congested: bool,
    },
    Command(Command),
    Turn(TurnInput),
}

#[derive(Debug)]
pub enum Command {
    /// Join the cluster through these addresses (seeds). Also re-sent when alone.
    Join {
        seeds: Vec<SocketAddr>,
    },
    /// A client request for a session; answered by `Event::Response { req }`.
    Request {
        req: ReqId,
        session: SessionKey,
        body: RequestBody,
    },
    /// Local subscribers want turn events of `session` (refreshed while they exist).
    Subscribe {
        session: SessionKey,
    },
    Unsubscribe {
        session: SessionKey,
    },
    /// Hand every owned session to its successor, then leave the cluster, before `deadline`.
    Drain {
        deadline: Millis,
    },
    /// Tell every live node (this one included) something small and ephemeral: delivered as
    /// `Event::Broadcast` on each, best effort (a node down at the time misses it; durable state
    /// belongs in a session document).
    Broadcast {
        topic: String,
        payload: Vec<u8>,
    },
    /// Apply the pushes stored unapplied for the `max` sessions pushed to most recently, so that
    /// their index entries (read next, e.g. for `sessions.list`) are current.
    SettleStored {
        max: usize,
    },
}

/// What the runtime reports about turns the core started.
#[derive(Debug)]
pub enum TurnInput {
    /// A streaming event; relayed to subscribers if `run.epoch` is still current.
    Event { run: RunRef, event: TurnEvent },
    /// Messages to write (tool calls, tool results, checkpoints, the final message) and usage to
    /// add. The final assistant message (non-partial, with `reply_to`) ends the run and every
    /// run it answers; `done` ends the run without one. Refused (and the run aborted) when the
    /// epoch is stale. With `reply`, the core answers `Event::Response { req: reply }` once the
    /// write is durable (`Response::Written`), or at once with `RequestError::StaleEpoch`.
    Output { run: RunRef, messages: Vec<Message>, usage: Usage, done: bool, reply: Option<ReqId> },
    /// The runtime has no running turn for `session` any more (after `DrainTurns`/`AbortTurns`).
    Idle { session: SessionKey },
}

#[derive(Debug, PartialEq)]
pub enum Effect {
    /// Send a datagram (SWIM). `node` is known except when announcing to a seed address.
    SendDatagram { to: SocketAddr, node: Option<NodeId>, bytes: Vec<u8> },
    /// Send a frame on a reliable stream to `to` (at `addr`, when known).
    SendFrame { to: NodeId, addr: Option<SocketAddr>, bytes: Vec<u8> },
    /// Fire `timer` at `at` (same clock as `now`).
    SetTimer { at: Millis, timer: Timer },
    /// Make `writes` durable, then answer `Input::Persisted { batch }`. Batches complete in order.
    Persist { batch: BatchId, writes: WriteBatch },
    /// Run a turn for `input` under `run.epoch`.
    StartTurn { run: RunRef, agent_id: String, input: Box<Message> },
    /// Finish the running turn of `session` or checkpoint and stop it before `deadline`.
    DrainTurns { session: SessionKey, deadline: Millis },
    /// Stop every turn of `session` now (the node lost ownership, or a client aborted).
    AbortTurns { session: SessionKey, run_id: Option<String>, reason: AbortReason },
    /// Something for local clients (the gateway).
    Deliver(Event),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortReason {
    /// Another node owns the session now (higher epoch).
    StaleEpoch,
    /// A client asked (`chat.abort`, `sessions.abort`).
    Client,
    /// The drain deadline passed.
    Drain,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Response {
        req: ReqId,
        result: Result<Response, RequestError>,
    },
    Turn {
        run: RunRef,
        event: TurnEvent,
    },
    /// A session's document or metadata changed on this node (for `sessions.changed`).
    SessionChanged {
        session: SessionKey,
    },
    OwnerChanged {
        session: SessionKey,
        epoch: Epoch,
    },
    MemberUp(Member),
    MemberDown(Member),
    /// Foca's view: we are part of a cluster (Active) or alone (Idle).
    Membership {
        active: bool,
    },
    /// Drain finished: every owned session was handed over (or the deadline passed) and the
    /// node left the cluster.
    Drained {
        handed_over: usize,
        left_behind: usize,
    },
    /// A broadcast from `from` (see `Command::Broadcast`).
    Broadcast {
        from: NodeId,
        topic: String,
        payload: Vec<u8>,
    },
}

/// A request routed to the owner of a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RequestBody {
    /// Append a user message and start a turn for it. The message id is derived from the
    /// idempotency key, so a retry (or the same request on both sides of a partition) appends
    /// the same id once.
    Submit {
        agent_id: String,
        #[serde(with = "super::wire::as_json")]
        message: Box<Message>,
        idempotency_key: String,
    },
    /// Read history.
    Read { limit: usize, before: Option<String> },
    /// Change the session.
    Mutate(SessionOp),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SessionOp {
    /// Create the session if it does not exist (idempotent). `at_ms` is the client's wall clock.
    Create { agent_id: String, at_ms: i64 },
    /// Patch the metadata (OpenClaw `sessions.patch`; null clears).
    Patch(Box<beamclaw_crdt::doc::MetaPatch>),
    /// Start a new transcript `session_id` (chosen by the origin, so a retried reset is applied
    /// once); the old one is archived.
    Reset { session_id: String, reason: String, at_ms: i64 },
    /// Delete the session (its transcript is archived and it disappears from listings).
    Delete { at_ms: i64 },
    /// Append a message without running a turn (OpenClaw `chat.inject`).
    Inject(#[serde(with = "super::wire::as_json")] Box<Message>),
    /// Abort the running turn(s) (OpenClaw `chat.abort`).
    Abort { run_id: Option<String> },
}

/// Status of a submitted message's run (OpenClaw `chat.send` statuses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    /// Newly appended and durable; the turn starts now.
    Started,
    /// Already submitted (same idempotency key); its turn has not finished.
    InFlight,
    /// Already submitted and answered.
    Done,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Submitted {
        run_id: String,
        message_id: String,
        status: RunStatus,
        epoch: Epoch,
    },
    History {
        session_id: String,
        /// Shared with the owner's decoded copies when read locally (a turn reads its history).
        #[serde(with = "super::wire::as_json")]
        messages: Vec<std::sync::Arc<Message>>,
        meta: Box<beamclaw_crdt::doc::SessionMeta>,
        /// More messages exist before the first one returned.
        more: bool,
    },
    Mutated {
        session_id: String,
        aborted_runs: Vec<String>,
    },
    /// A turn's write is durable.
    Written,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RequestError {
    #[error("no owner is reachable for this session: {0}")]
    Unavailable(String),
    #[error("the request timed out after {0} ms")]
    Timeout(u64),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("session not found")]
    NotFound,
    #[error("storage failed: {0}")]
    Storage(String),
    #[error("this node no longer owns the session under that epoch: {0}")]
    StaleEpoch(String),
}

/// What a node reports about itself (for `status`, health and the simulator's checker).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: Option<NodeId>,
    pub members: Vec<MemberStatus>,
    pub sessions_known: usize,
    pub sessions_owned: usize,
    pub sessions_hydrated: usize,
    pub hydrated_bytes: usize,
    pub pending_requests: usize,
    pub pending_writes: usize,
    pub handoffs_in_progress: usize,
    /// Sync exchanges with peers in progress.
    pub sync_exchanges: usize,
    /// Membership updates foca still has to disseminate.
    pub swim_backlog: usize,
    pub draining: bool,
    pub counters: Counters,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub generation: u64,
    pub alive: bool,
}

/// Monotonic counters, exported as metrics by the driver (`beamclaw_mesh_<name>_total`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub frames_in: u64,
    pub frames_out: u64,
    pub frames_dropped_decode: u64,
    pub frames_dropped_version: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub requests_forwarded: u64,
    pub submits_accepted: u64,
    pub submits_duplicate: u64,
    pub turns_started: u64,
    pub turn_outputs_stale: u64,
    pub changes_pushed: u64,
    pub changes_skipped_congested: u64,
    pub pushes_stored_unapplied: u64,
    pub replica_settles: u64,
    pub sync_rounds: u64,
    pub sync_exchanges_stalled: u64,
    pub sync_exchanges_level: u64,
    pub sync_repairs_deferred: u64,
    pub digests_sent: u64,
    pub claims: u64,
    pub step_downs: u64,
    pub handoffs_completed: u64,
    pub handoffs_refused: u64,
    pub owner_overlaps: u64,
    pub store_errors: u64,
}
