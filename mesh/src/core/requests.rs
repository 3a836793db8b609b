//! Client requests: routed to the session's owner from any node, served there, answered back.
//!
//! A request enters at the node where the client is connected (`Command::Request`). That node
//! routes it to the owner it knows (or to the node that should take ownership), retries on
//! timeouts and when the owner goes down, and delivers the answer as `Event::Response`. The owner
//! serves it: a submit is appended and acknowledged only once durable (on W copies when a write
//! quorum is configured), then its turn starts.

use std::collections::BTreeMap;

use beamclaw_crdt::doc::SessionDoc;
use beamclaw_crdt::{MESSAGE_ID_BYTES_MAX, Message, Role, SessionKey};

use super::api::{ReqId, RequestBody, RequestError, Response, RunStatus, SessionOp};
use super::ids::NodeId;
use super::node::{AfterDurable, Node, Origin, PendingRequest};
use super::storage::Disk;
use super::timers::Timer;
use super::wire::{FORWARD_HOPS_MAX, Msg};

/// Longest idempotency key accepted, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

/// Longest agent id accepted, in bytes (OpenClaw ids are at most 64 characters).
pub const AGENT_ID_BYTES_MAX: usize = 64;

/// Requests a node may have outstanding as origin; beyond this, new ones are refused.
pub const PENDING_REQUESTS_MAX: usize = 65_536;

/// Nodes subscribed to one session's events, at most.
pub const SUBSCRIBERS_PER_SESSION_MAX: usize = 64;

/// Where a request for a session should go from here.
pub(crate) enum Route {
    Local,
    Remote(NodeId),
    Unavailable(String),
}

/// The id of the user message submitted under `idempotency_key`: the same on every node, so a
/// retry, or the same request accepted on both sides of a partition, is one message.
pub fn message_id_for(session: &SessionKey, idempotency_key: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"beamclaw.message.v1\0");
    h.update(session.as_str().as_bytes());
    h.update(b"\0");
    h.update(idempotency_key.as_bytes());
    format!("u:{}", &h.finalize().to_hex()[..32])
}

/// The id of a session's first transcript: derived from the key, so that two nodes creating
/// the same session concurrently (one on each side of a partition, or a node whose view of the
/// owner was stale) create the same transcript, and their messages merge into one
/// conversation. With ids drawn at random, the two transcripts conflicted and the loser was
/// archived, taking acknowledged messages out of the conversation. Later transcripts (reset)
/// get the id the client chose.
pub fn initial_session_id(session: &SessionKey) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"beamclaw.session-id.v1\0");
    h.update(session.as_str().as_bytes());
    h.finalize().to_hex()[..32].to_string()
}

fn validate(body: &RequestBody) -> Result<(), RequestError> {
    let invalid = |s: String| Err(RequestError::Invalid(s));
    match body {
        RequestBody::Submit { agent_id, message, idempotency_key } => {
            if idempotency_key.is_empty() || idempotency_key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
                return invalid(format!(
                    "idempotencyKey must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes, got {}",
                    idempotency_key.len()
                ));
            }
            if agent_id.is_empty() || agent_id.len() > AGENT_ID_BYTES_MAX {
                return invalid(format!("agent id must be 1 to {AGENT_ID_BYTES_MAX} bytes"));
            }
            if message.role != Role::User {
                return invalid(format!(
                    "a submitted message must have role user, not {}",
                    message.role.as_str()
                ));
            }
        }
        RequestBody::Read { limit, .. } => {
            if *limit == 0 {
                return invalid("limit must be at least 1".into());
            }
        }
        RequestBody::Mutate(SessionOp::Inject(m)) => {
            if m.id.is_empty() || m.id.len() > MESSAGE_ID_BYTES_MAX {
                return invalid(format!("message id must be 1 to {MESSAGE_ID_BYTES_MAX} bytes"));
            }
        }
        RequestBody::Mutate(_) => {}
    }
    Ok(())
}

impl<D: Disk> Node<D> {
    /// A request from a local client.
    pub(crate) fn request(&mut self, req: ReqId, session: SessionKey, body: RequestBody) {
        if let Err(e) = validate(&body) {
            self.deliver(super::api::Event::Response { req, result: Err(e) });
            return;
        }
        if self.requests.len() >= PENDING_REQUESTS_MAX {
            let e = RequestError::Unavailable(format!(
                "{PENDING_REQUESTS_MAX} requests already in flight on this node"
            ));
            self.deliver(super::api::Event::Response { req, result: Err(e) });
            return;
        }
        self.requests
            .insert(req, PendingRequest { session, body, attempts: 0, sent_to: None, deadline: 0 });
        self.route_pending(req);
    }

    /// Sends (or serves) a pending local request once more.
    fn route_pending(&mut self, req: ReqId) {
        let Some(p) = self.requests.get(&req) else { return };
        let (session, body) = (p.session.clone(), p.body.clone());
        let attempt_ms = self.cfg.timing.request_attempt_ms;
        match self.route(&session) {
            Route::Local => {
                if let Some(p) = self.requests.get_mut(&req) {
                    p.sent_to = None;
                    p.attempts += 1;
                    p.deadline = self.now + attempt_ms;
                }
                self.set_timer(self.now + attempt_ms, Timer::RequestTimeout(req));
                self.serve(Origin::Local(req), session, body);
            }
            Route::Remote(node) => {
                if let Some(p) = self.requests.get_mut(&req) {
                    p.sent_to = Some(node);
                    p.attempts += 1;
                    p.deadline = self.now + attempt_ms;
                }
                self.counters.requests_forwarded += 1;
                let origin = self.cfg.node;
                self.send(node, Msg::Request { id: req, origin, session, hops: 0, body });
                self.set_timer(self.now + attempt_ms, Timer::RequestTimeout(req));
            }
            Route::Unavailable(reason) => {
                tracing::debug!(%session, %reason, "no owner reachable yet; will retry");
                if let Some(p) = self.requests.get_mut(&req) {
                    p.sent_to = None;
                    p.attempts += 1;
                    p.deadline = self.now + attempt_ms;
                }
                self.set_timer(self.now + attempt_ms, Timer::RequestTimeout(req));
            }
        }
    }

    pub(crate) fn request_timed_out(&mut self, req: ReqId) {
        let Some(p) = self.requests.get(&req) else { return };
        if p.deadline > self.now {
            return; // a timer from an earlier attempt
        }
        if p.attempts >= self.cfg.timing.request_attempts_max {
            let waited = u64::from(p.attempts) * self.cfg.timing.request_attempt_ms;
            self.requests.remove(&req);
            self.deliver(super::api::Event::Response {
                req,
                result: Err(RequestError::Timeout(waited)),
            });
            return;
        }
        self.route_pending(req);
    }

    /// Routes again every request we sent to `node`, which went down or restarted.
    pub(crate) fn reroute_requests_sent_to(&mut self, node: NodeId) {
        let reqs: Vec<ReqId> = self
            .requests
            .iter()
            .filter(|(_, p)| p.sent_to == Some(node))
            .map(|(r, _)| *r)
            .collect();
        for req in reqs {
            if let Some(p) = self.requests.get(&req)
                && p.attempts >= self.cfg.timing.request_attempts_max
            {
                continue; // its timer answers it
            }
            self.route_pending(req);
        }
    }

    /// Where a request for `session` goes from this node. May claim the session.
    pub(crate) fn route(&mut self, session: &SessionKey) -> Route {
        let me = self.cfg.node;
        let known = self.sessions.get(session).and_then(|s| s.epoch);
        if let Some(e) = known {
            if e.node == me {
                if self.sessions.get(session).is_some_and(|s| s.role.is_some()) {
                    return Route::Local;
                }
            } else if self.members.is_alive(&e.node) {
                return Route::Remote(e.node);
            } else if !self.owner_down(&e.node) {
                // An owner we do not know yet (we just joined, or it did): not down, so not
                // ours to take; the request is retried once our view has settled.
                return Route::Unavailable(format!("owner {} not known yet", e.node.short()));
            }
        }
        match self.candidate_owner(session) {
            Some(n) if n == me => {
                self.claim(session);
                Route::Local
            }
            Some(n) => Route::Remote(n),
            None => Route::Unavailable("no live node may own this session".into()),
        }
    }

    /// A request forwarded to us by another node.
    pub(crate) fn remote_request(
        &mut self,
        origin: NodeId,
        id: u64,
        session: SessionKey,
        hops: u8,
        body: RequestBody,
    ) {
        if let Err(e) = validate(&body) {
            self.send(origin, Msg::Response { id, result: Err(e) });
            return;
        }
        match self.route(&session) {
            Route::Local => {
                if matches!(body, RequestBody::Submit { .. }) && origin != self.cfg.node {
                    let ttl = 3 * self.cfg.timing.subscribe_refresh_ms;
                    self.remote_subscribe(origin, session.clone(), ttl);
                }
                self.serve(Origin::Remote { node: origin, id }, session, body)
            }
            Route::Remote(next) if hops < FORWARD_HOPS_MAX && next != origin => {
                self.counters.requests_forwarded += 1;
                self.send(next, Msg::Request { id, origin, session, hops: hops + 1, body });
            }
            Route::Remote(_) | Route::Unavailable(_) => {
                let e = RequestError::Unavailable(format!("owner of {session} not settled; retry"));
                self.answer(Origin::Remote { node: origin, id }, Err(e));
            }
        }
    }

    /// Answers a request.
    pub(crate) fn answer(&mut self, to: Origin, result: Result<Response, RequestError>) {
        match to {
            Origin::Local(req) => {
                if self.requests.remove(&req).is_some() {
                    self.deliver(super::api::Event::Response { req, result });
                }
            }
            Origin::Remote { node, id } => {
                if node == self.cfg.node {
                    self.response(node, id, result);
                } else {
                    self.send(node, Msg::Response { id, result });
                }
            }
        }
    }

    /// The owner's answer to a request we originated.
    pub(crate) fn response(
        &mut self,
        _from: NodeId,
        id: u64,
        result: Result<Response, RequestError>,
    ) {
        let Some(p) = self.requests.get(&id) else { return }; // answered already, or a late duplicate
        if matches!(result, Err(RequestError::Unavailable(_)))
            && p.attempts < self.cfg.timing.request_attempts_max
        {
            // The owner is moving: try again after a short pause.
            let at = self.now + self.cfg.timing.request_attempt_ms / 4;
            if let Some(p) = self.requests.get_mut(&id) {
                p.deadline = at;
            }
            self.set_timer(at, Timer::RequestTimeout(id));
            return;
        }
        self.requests.remove(&id);
        self.deliver(super::api::Event::Response { req: id, result });
    }

    /// Serves a request as the session's owner.
    pub(crate) fn serve(&mut self, origin: Origin, session: SessionKey, body: RequestBody) {
        if let Some(role) = self.sessions.get_mut(&session).and_then(|s| s.role.as_mut())
            && role.handoff.as_ref().is_some_and(|h| h.is_offered())
        {
            // The session is being handed over: hold the request until we know who owns it.
            role.parked.push((origin, body));
            return;
        }
        let result = match body {
            RequestBody::Submit { agent_id, message, idempotency_key } => {
                return self.serve_submit(origin, &session, &agent_id, message, &idempotency_key);
            }
            RequestBody::Read { limit, before } => {
                self.serve_read(&session, limit, before.as_deref())
            }
            RequestBody::Mutate(op) => return self.serve_mutate(origin, &session, op),
        };
        self.answer(origin, result);
    }

    /// Hydrates `session`, creating it (as `agent_id`) when it does not exist anywhere we know.
    fn hydrate_or_create(
        &mut self,
        session: &SessionKey,
        agent_id: &str,
        at_ms: i64,
    ) -> Result<(), RequestError> {
        let session_id = initial_session_id(session);
        if self.hydrate(session)? {
            // A placeholder made for a replica's changes that never brought the manifest: this
            // node owns the session now and found nothing, so it starts it.
            let initialized = self.with_doc(session, |d| {
                if d.is_initialized() { Ok(()) } else { d.initialize(agent_id, &session_id, at_ms) }
            });
            return match initialized {
                Some(Ok(())) | None => Ok(()),
                Some(Err(e)) => Err(RequestError::Invalid(e.to_string())),
            };
        }
        let doc = SessionDoc::create(session.clone(), agent_id, &session_id, &self.actor, at_ms)
            .map_err(|e| RequestError::Invalid(e.to_string()))?;
        self.docs.insert(session.clone(), doc);
        self.sessions.entry(session.clone()).or_default();
        tracing::info!(%session, agent = agent_id, "session created");
        Ok(())
    }

    fn serve_submit(
        &mut self,
        origin: Origin,
        session: &SessionKey,
        agent_id: &str,
        mut message: Box<Message>,
        idempotency_key: &str,
    ) {
        if let Err(e) = self.hydrate_or_create(session, agent_id, message.timestamp_ms) {
            return self.answer(origin, Err(e));
        }
        let id = message_id_for(session, idempotency_key);
        let run_id = idempotency_key.to_string();
        let Some(epoch) = self.sessions.get(session).and_then(|s| s.epoch) else {
            return self
                .answer(origin, Err(RequestError::Unavailable("ownership not settled".into())));
        };
        let existing = self.with_doc(session, |doc| {
            let present = doc.get(&id).ok().flatten().is_some()
                || doc.find_by_idempotency_key(idempotency_key).is_some();
            present.then(|| {
                doc.unanswered_user_messages().unwrap_or_default().iter().any(|m| m.id == id)
            })
        });
        if let Some(Some(unanswered)) = existing {
            self.counters.submits_duplicate += 1;
            let status = if unanswered { RunStatus::InFlight } else { RunStatus::Done };
            let result = Ok(Response::Submitted { run_id, message_id: id, status, epoch });
            self.when_durable(session, AfterDurable::Respond { to: origin, result });
            return;
        }
        message.id = id.clone();
        message.role = Role::User;
        message.author = self.author.clone();
        message.idempotency_key = Some(idempotency_key.to_string());
        message.run_id = Some(run_id.clone());
        message.partial = false;
        match self.with_doc(session, |doc| doc.append(&message)) {
            Some(Ok(_)) => {}
            Some(Err(e)) => return self.answer(origin, Err(RequestError::Invalid(e.to_string()))),
            None => {
                return self
                    .answer(origin, Err(RequestError::Storage("session not hydrated".into())));
            }
        }
        self.counters.submits_accepted += 1;
        let ack = self.commit_doc(session, true);
        let respond = AfterDurable::Respond {
            to: origin.clone(),
            result: Ok(Response::Submitted {
                run_id,
                message_id: id.clone(),
                status: RunStatus::Started,
                epoch,
            }),
        };
        let start = AfterDurable::StartTurn { session: session.clone(), message_id: id };
        if self.cfg.planted.ack_before_durable {
            // PLANTED BUG (simulator only): the client hears "stored" before the disk does.
            self.run_after_durable_now(respond);
            self.when_durable(session, start);
            return;
        }
        match ack {
            Some(ack) => self.wait_quorum(session, ack, vec![respond, start]),
            None => {
                self.when_durable(session, respond);
                self.when_durable(session, start);
            }
        }
    }

    fn serve_read(
        &mut self,
        session: &SessionKey,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Response, RequestError> {
        if !self.hydrate(session)? {
            return Err(RequestError::NotFound);
        }
        let limit = limit.min(beamclaw_crdt::HISTORY_LIMIT_MAX);
        let read = self.with_doc(session, |doc| -> Result<Response, beamclaw_crdt::DocError> {
            // One more than asked tells whether older messages exist.
            let mut messages = doc.history(limit + 1, before)?;
            let more = messages.len() > limit;
            if more {
                messages.remove(0);
            }
            let meta = doc.meta()?;
            Ok(Response::History {
                session_id: meta.session_id.clone(),
                more,
                messages,
                meta: Box::new(meta),
            })
        });
        match read {
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => Err(RequestError::Invalid(e.to_string())),
            None => Err(RequestError::NotFound),
        }
    }

    fn serve_mutate(&mut self, origin: Origin, session: &SessionKey, op: SessionOp) {
        let mut aborted_runs = Vec::new();
        let outcome: Result<(), RequestError> = match op {
            SessionOp::Create { agent_id, at_ms } => {
                self.hydrate_or_create(session, &agent_id, at_ms)
            }
            SessionOp::Abort { run_id } => {
                if let Some(role) = self.sessions.get_mut(session).and_then(|s| s.role.as_mut()) {
                    aborted_runs = role
                        .running
                        .keys()
                        .filter(|r| run_id.as_ref().is_none_or(|want| want == *r))
                        .cloned()
                        .collect();
                }
                self.out.push(super::api::Effect::AbortTurns {
                    session: session.clone(),
                    run_id,
                    reason: super::api::AbortReason::Client,
                });
                if !self.hydrate(session).unwrap_or(false) {
                    return self.answer(origin, Err(RequestError::NotFound));
                }
                Ok(())
            }
            other => match self.hydrate(session) {
                Ok(false) => Err(RequestError::NotFound),
                Err(e) => Err(e),
                Ok(true) => self
                    .with_doc(session, |doc| apply_op(doc, other))
                    .unwrap_or(Err(RequestError::NotFound)),
            },
        };
        if let Err(e) = outcome {
            return self.answer(origin, Err(e));
        }
        self.commit_doc(session, true);
        let session_id = self.with_doc(session, |d| d.session_id().to_string()).unwrap_or_default();
        let result = Ok(Response::Mutated { session_id, aborted_runs });
        self.when_durable(session, AfterDurable::Respond { to: origin, result });
    }

    fn run_after_durable_now(&mut self, action: AfterDurable) {
        if let AfterDurable::Respond { to, result } = action {
            self.answer(to, result);
        }
    }

    // ---- subscriptions ----------------------------------------------------------------------

    pub(crate) fn subscribe_local(&mut self, session: SessionKey) {
        *self.local_subs.entry(session.clone()).or_default() += 1;
        self.send_subscription(&session);
    }

    /// Tells the owner of `session` (if remote) that we want its turn events.
    pub(crate) fn send_subscription(&mut self, session: &SessionKey) {
        let owner = self.sessions.get(session).and_then(|s| s.epoch).map(|e| e.node);
        let target = match owner {
            Some(n) if self.members.is_alive(&n) => Some(n),
            _ => self.candidate_owner(session),
        };
        if let Some(n) = target.filter(|n| *n != self.cfg.node) {
            let ttl_ms = 3 * self.cfg.timing.subscribe_refresh_ms;
            self.send(n, Msg::Subscribe { session: session.clone(), ttl_ms });
        }
    }

    pub(crate) fn refresh_subscriptions(&mut self) {
        let sessions: Vec<SessionKey> = self.local_subs.keys().cloned().collect();
        for s in &sessions {
            self.send_subscription(s);
        }
        let now = self.now;
        self.remote_subs.retain(|_, subs| {
            subs.retain(|_, expires| *expires > now);
            !subs.is_empty()
        });
    }

    pub(crate) fn remote_subscribe(&mut self, from: NodeId, session: SessionKey, ttl_ms: u64) {
        let ttl = ttl_ms.min(10 * self.cfg.timing.subscribe_refresh_ms);
        let subs: &mut BTreeMap<NodeId, u64> = self.remote_subs.entry(session).or_default();
        if subs.len() >= SUBSCRIBERS_PER_SESSION_MAX && !subs.contains_key(&from) {
            return;
        }
        subs.insert(from, self.now + ttl);
    }
}

/// Applies a metadata operation to a hydrated document.
fn apply_op(doc: &mut SessionDoc, op: SessionOp) -> Result<(), RequestError> {
    let invalid = |e: beamclaw_crdt::doc::DocError| RequestError::Invalid(e.to_string());
    match op {
        SessionOp::Patch(patch) => doc.patch_meta(&patch).map(|_| ()).map_err(invalid),
        SessionOp::Reset { session_id, reason, at_ms } => {
            if doc.session_id() == session_id {
                return Ok(()); // a retry of a reset that already happened
            }
            doc.reset(&session_id, &reason, at_ms).map_err(invalid)
        }
        SessionOp::Delete { at_ms } => doc.mark_deleted(at_ms).map_err(invalid),
        SessionOp::Inject(message) => doc.append(&message).map(|_| ()).map_err(invalid),
        SessionOp::Create { .. } | SessionOp::Abort { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_transcript_ids_are_the_same_on_every_node_and_distinct_per_session() {
        let a = SessionKey::new("agent:main:a").unwrap();
        let b = SessionKey::new("agent:main:b").unwrap();
        assert_eq!(initial_session_id(&a), initial_session_id(&a));
        assert_ne!(initial_session_id(&a), initial_session_id(&b));
        assert_eq!(initial_session_id(&a).len(), 32);
    }

    #[test]
    fn message_ids_are_stable_and_distinct_per_session_and_key() {
        let a = SessionKey::new("agent:main:a").unwrap();
        let b = SessionKey::new("agent:main:b").unwrap();
        assert_eq!(message_id_for(&a, "k1"), message_id_for(&a, "k1"));
        assert_ne!(message_id_for(&a, "k1"), message_id_for(&a, "k2"));
        assert_ne!(message_id_for(&a, "k1"), message_id_for(&b, "k1"));
        assert!(message_id_for(&a, "k1").len() <= MESSAGE_ID_BYTES_MAX);
    }
}
