//! Clients: user messages submitted to random live nodes across a set of sessions, retried with
//! the same idempotency key (at any node) until acknowledged, and occasional history reads.

use std::collections::BTreeMap;

use beamclaw_crdt::{Message, SessionKey};
use beamclaw_mesh::core::requests::message_id_for;
use beamclaw_mesh::core::{Command, Epoch, ReqId, RequestBody, RequestError, Response};

use crate::clock::{Micros, US_PER_MS};
use crate::rng::{SimRng, between, index};
use crate::runtime::WALL_CLOCK_BASE_MS;

/// Sessions the clients talk to (`agent:main:s0` ...).
pub const SESSIONS_DEFAULT: usize = 8;
/// The agent of every session.
pub const AGENT_ID: &str = "main";
/// Time between two new user messages (all clients together), in milliseconds.
pub const MESSAGE_INTERVAL_MS_MIN: u64 = 100;
pub const MESSAGE_INTERVAL_MS_MAX: u64 = 900;
/// New messages are sent from this time, in milliseconds.
pub const WORKLOAD_START_MS: u64 = 500;
/// New messages stop at this time, in milliseconds (retries go on).
pub const WORKLOAD_END_MS: u64 = 36_000;
/// A read accompanies a new message this often, per thousand.
pub const READ_PER_MILLE: u64 = 150;
/// Messages a read asks for.
pub const READ_LIMIT: usize = 50;
/// A client lists a node's sessions this often per new message, per thousand: the node first
/// applies the pushes it stored for the sessions pushed to most recently
/// (`Command::SettleStored`, what `sessions.list` sends).
pub const LIST_PER_MILLE: u64 = 100;
/// A client gives up waiting for an answer after this long and retries, in milliseconds
/// (the core answers within `request_attempts_max * request_attempt_ms`, 10 s by default).
pub const CLIENT_TIMEOUT_MS: u64 = 15_000;
/// Pause before a retry, in milliseconds.
pub const RETRY_BACKOFF_MS_MIN: u64 = 100;
pub const RETRY_BACKOFF_MS_MAX: u64 = 1_000;

/// One user message and what became of it.
#[derive(Clone, Debug)]
pub struct ClientMessage {
    pub session: SessionKey,
    pub idempotency_key: String,
    /// The id the core derives from the key (the same on every node).
    pub message_id: String,
    pub first_sent: Micros,
    pub attempts: u32,
    /// When, where and under which epoch it was first acknowledged.
    pub acked: Option<(Micros, usize, Epoch)>,
}

#[derive(Clone, Debug)]
pub enum ReqKind {
    Submit(usize),
    Read(SessionKey),
}

#[derive(Clone, Debug)]
pub struct Req {
    pub node: usize,
    pub inst: u64,
    pub kind: ReqKind,
}

/// A request to hand to a node.
pub struct Send {
    pub node: usize,
    pub req: ReqId,
    pub command: Command,
}

/// What an answer meant.
pub enum Outcome {
    /// A message was acknowledged (the first time, when `first`).
    Acked { msg: usize, first: bool },
    /// Submit failed: retry it later.
    Failed { msg: usize, error: RequestError },
    /// A read answered.
    History { session: SessionKey, messages: Vec<Message> },
    /// Nothing to do (a read failed, an unknown request).
    Ignored,
}

#[derive(Clone, Debug, Default)]
pub struct WorkloadStats {
    pub submits_sent: u64,
    pub retries: u64,
    pub acked: u64,
    pub errors: u64,
    pub reads: u64,
    pub lists: u64,
}

/// What the clients do at one step of the workload.
pub struct ClientStep {
    pub sends: Vec<Send>,
    /// Nodes whose sessions a client lists (the world sends them `Command::SettleStored`).
    pub lists: Vec<usize>,
    /// When the next message is due (`None` once the workload has ended).
    pub next: Option<Micros>,
}

pub struct Workload {
    rng: SimRng,
    sessions: Vec<SessionKey>,
    pub messages: Vec<ClientMessage>,
    by_message_id: BTreeMap<String, usize>,
    pending: BTreeMap<ReqId, Req>,
    next_req: ReqId,
    pub stats: WorkloadStats,
}

impl Workload {
    pub fn new(rng: SimRng, sessions: usize) -> Self {
        let sessions = (0..sessions.max(1))
            .filter_map(|i| SessionKey::new(format!("agent:{AGENT_ID}:s{i}")).ok())
            .collect();
        Workload {
            rng,
            sessions,
            messages: Vec::new(),
            by_message_id: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_req: 1,
            stats: WorkloadStats::default(),
        }
    }

    pub fn sessions(&self) -> &[SessionKey] {
        &self.sessions
    }

    /// When the first message is sent.
    pub fn first_at(&self) -> Micros {
        WORKLOAD_START_MS * US_PER_MS
    }

    /// A new user message (and maybe a read and a listing) to random live nodes.
    pub fn next(&mut self, now: Micros, live: &[(usize, u64)]) -> ClientStep {
        let mut out = Vec::new();
        let mut lists = Vec::new();
        let session = self.sessions[index(&mut self.rng, self.sessions.len())].clone();
        let n = self.messages.len();
        let idempotency_key = format!("m{n}");
        let message_id = message_id_for(&session, &idempotency_key);
        self.by_message_id.insert(message_id.clone(), n);
        self.messages.push(ClientMessage {
            session,
            idempotency_key,
            message_id,
            first_sent: now,
            attempts: 0,
            acked: None,
        });
        if let Some(send) = self.submit(n, now, live) {
            out.push(send);
        }
        if between(&mut self.rng, 0, 999) < READ_PER_MILLE && !live.is_empty() {
            let session = self.sessions[index(&mut self.rng, self.sessions.len())].clone();
            let (node, inst) = live[index(&mut self.rng, live.len())];
            let req = self.new_req(node, inst, ReqKind::Read(session.clone()));
            self.stats.reads += 1;
            let body = RequestBody::Read { limit: READ_LIMIT, before: None };
            out.push(Send { node, req, command: Command::Request { req, session, body } });
        }
        if between(&mut self.rng, 0, 999) < LIST_PER_MILLE && !live.is_empty() {
            let (node, _) = live[index(&mut self.rng, live.len())];
            self.stats.lists += 1;
            lists.push(node);
        }
        let next = now
            + between(&mut self.rng, MESSAGE_INTERVAL_MS_MIN, MESSAGE_INTERVAL_MS_MAX) * US_PER_MS;
        ClientStep { sends: out, lists, next: (next < WORKLOAD_END_MS * US_PER_MS).then_some(next) }
    }

    fn new_req(&mut self, node: usize, inst: u64, kind: ReqKind) -> ReqId {
        let req = self.next_req;
        self.next_req += 1;
        self.pending.insert(req, Req { node, inst, kind });
        req
    }

    /// Sends (or re-sends, same idempotency key) message `msg` to a random live node.
    pub fn submit(&mut self, msg: usize, now: Micros, live: &[(usize, u64)]) -> Option<Send> {
        if live.is_empty() {
            return None;
        }
        let m = self.messages.get(msg)?;
        if m.acked.is_some() {
            return None;
        }
        let (session, key) = (m.session.clone(), m.idempotency_key.clone());
        let (node, inst) = live[index(&mut self.rng, live.len())];
        let req = self.new_req(node, inst, ReqKind::Submit(msg));
        let attempts = {
            let m = &mut self.messages[msg];
            m.attempts += 1;
            m.attempts
        };
        if attempts > 1 {
            self.stats.retries += 1;
        }
        self.stats.submits_sent += 1;
        let text = format!("message {key}");
        let at_ms = WALL_CLOCK_BASE_MS + i64::try_from(now / US_PER_MS).unwrap_or(0);
        let message = Message::user_text(key.clone(), text, at_ms);
        let body = RequestBody::Submit {
            agent_id: AGENT_ID.to_string(),
            message: Box::new(message),
            idempotency_key: key,
        };
        Some(Send { node, req, command: Command::Request { req, session, body } })
    }

    /// A backoff before retrying.
    pub fn backoff(&mut self) -> Micros {
        between(&mut self.rng, RETRY_BACKOFF_MS_MIN, RETRY_BACKOFF_MS_MAX) * US_PER_MS
    }

    /// The request `req` sent to `node` is still waiting (for the client timeout).
    pub fn waiting(&self, req: ReqId) -> Option<&Req> {
        self.pending.get(&req)
    }

    /// The client gave up on `req`: the submit to retry, if it was one.
    pub fn give_up(&mut self, req: ReqId) -> Option<usize> {
        match self.pending.remove(&req)?.kind {
            ReqKind::Submit(msg) => Some(msg),
            ReqKind::Read(_) => None,
        }
    }

    /// The connections to `node` broke (crash, stop): the submits to retry.
    pub fn node_lost(&mut self, node: usize) -> Vec<usize> {
        let lost: Vec<ReqId> =
            self.pending.iter().filter(|(_, r)| r.node == node).map(|(k, _)| *k).collect();
        lost.into_iter().filter_map(|req| self.give_up(req)).collect()
    }

    /// An answer from `node` for `req`.
    pub fn answer(
        &mut self,
        node: usize,
        req: ReqId,
        result: Result<Response, RequestError>,
        now: Micros,
    ) -> Outcome {
        let Some(r) = self.pending.get(&req) else { return Outcome::Ignored };
        if r.node != node {
            return Outcome::Ignored;
        }
        let Some(r) = self.pending.remove(&req) else { return Outcome::Ignored };
        match (r.kind, result) {
            (ReqKind::Submit(msg), Ok(Response::Submitted { epoch, .. })) => {
                let Some(m) = self.messages.get_mut(msg) else { return Outcome::Ignored };
                let first = m.acked.is_none();
                if first {
                    m.acked = Some((now, node, epoch));
                    self.stats.acked += 1;
                }
                Outcome::Acked { msg, first }
            }
            (ReqKind::Submit(msg), Ok(other)) => Outcome::Failed {
                msg,
                error: RequestError::Invalid(format!("unexpected answer to a submit: {other:?}")),
            },
            (ReqKind::Submit(msg), Err(error)) => {
                self.stats.errors += 1;
                Outcome::Failed { msg, error }
            }
            (ReqKind::Read(session), Ok(Response::History { messages, .. })) => {
                let messages = messages.into_iter().map(std::sync::Arc::unwrap_or_clone).collect();
                Outcome::History { session, messages }
            }
            (ReqKind::Read(_), _) => Outcome::Ignored,
        }
    }

    /// The client message with the core's id `message_id`.
    pub fn find(&self, message_id: &str) -> Option<&ClientMessage> {
        self.by_message_id.get(message_id).and_then(|i| self.messages.get(*i))
    }

    /// Messages never acknowledged.
    pub fn unacked(&self) -> usize {
        self.messages.iter().filter(|m| m.acked.is_none()).count()
    }
}
