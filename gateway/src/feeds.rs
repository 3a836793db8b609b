//! Session feeds: at most one service subscription per session on this node, fanned out to
//! every client that follows the session (WebSocket connections and HTTP completions).
//!
//! A feed turns the mesh's turn events into OpenClaw `agent` and `chat` event payloads once,
//! for all its subscribers: cumulative chat deltas throttled to one per
//! [`CHAT_DELTA_INTERVAL_MS`] per run (v4 payloads add `deltaText`, the text since the previous
//! delta), finals, aborts and errors, and the agent lifecycle/assistant/thinking/tool streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use beamclaw_crdt::{MESSAGE_BODY_BYTES_MAX, SessionKey, StopReason, Usage};
use beamclaw_mesh::core::turn::TurnEvent;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Map, Value, json};
use tokio::sync::{OnceCell, mpsc};
use tokio::time::Instant;
use tracing::Instrument;

use crate::protocol::wire;
use crate::service::{GatewayService, RunEvent, ServiceError};
use crate::util::now_ms;
use crate::ws::registry::Connection;

/// OpenClaw throttles chat deltas to one per 150 ms per run.
pub(crate) const CHAT_DELTA_INTERVAL_MS: u64 = 150;
/// Runs of one session tracked at once; the oldest is forgotten past this.
pub(crate) const RUNS_PER_FEED_MAX: usize = 64;
/// Cumulative text kept per run; deltas beyond it are still forwarded, but the cumulative
/// `text` stops growing.
pub(crate) const RUN_TEXT_BYTES_MAX: usize = MESSAGE_BODY_BYTES_MAX;
/// Updates queued for one HTTP subscriber before it is dropped as too slow.
pub(crate) const CHANNEL_SUBSCRIBER_UPDATES_MAX: usize = 4096;

/// Who receives a feed's updates.
#[derive(Clone, Debug)]
pub(crate) enum Subscriber {
    Socket(Arc<Connection>),
    Channel(mpsc::Sender<Arc<RunUpdate>>),
}

/// What an update means, for subscribers that do not speak the OpenClaw wire (HTTP).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum UpdateKind {
    /// New assistant text (from the agent assistant stream, unthrottled).
    AssistantDelta(String),
    Final {
        text: String,
        usage: Usage,
        stop_reason: StopReason,
    },
    Aborted,
    Error {
        message: String,
    },
    Other,
}

/// One event for all subscribers of a session, encoded once.
#[derive(Clone, Debug)]
pub(crate) struct RunUpdate {
    pub(crate) run_id: String,
    /// `chat` or `agent`.
    pub(crate) event: &'static str,
    /// The payload for protocol 4.
    pub(crate) payload: String,
    /// The payload for protocol 3 when it differs (chat deltas have no `deltaText` there).
    pub(crate) payload_v3: Option<String>,
    pub(crate) kind: UpdateKind,
}

impl RunUpdate {
    pub(crate) fn payload_for(&self, protocol: u32) -> &str {
        match (&self.payload_v3, protocol) {
            (Some(v3), p) if p < 4 => v3,
            _ => &self.payload,
        }
    }
}

type Subscribers = Arc<Mutex<HashMap<u64, Subscriber>>>;

fn lock_subs(subs: &Subscribers) -> std::sync::MutexGuard<'_, HashMap<u64, Subscriber>> {
    subs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct FeedEntry {
    subscribers: Subscribers,
    started: Arc<OnceCell<Result<(), ServiceError>>>,
    task: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
}

struct FeedsInner<S> {
    service: Arc<S>,
    feeds: Mutex<HashMap<SessionKey, FeedEntry>>,
    next_id: AtomicU64,
}

/// All session feeds of this gateway.
pub(crate) struct Feeds<S> {
    inner: Arc<FeedsInner<S>>,
}

impl<S> Clone for Feeds<S> {
    fn clone(&self) -> Self {
        Feeds { inner: self.inner.clone() }
    }
}

impl<S: GatewayService> Feeds<S> {
    pub(crate) fn new(service: Arc<S>) -> Self {
        Feeds {
            inner: Arc::new(FeedsInner {
                service,
                feeds: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Adds a subscriber to the session's feed, starting the feed if needed. Returns once the
    /// service subscription is live, so that a turn started afterwards is seen from its start.
    pub(crate) async fn join(
        &self,
        key: &SessionKey,
        subscriber: Subscriber,
    ) -> Result<u64, ServiceError> {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (subscribers, started, task) = {
            let mut feeds = inner.lock();
            let entry = feeds.entry(key.clone()).or_insert_with(|| FeedEntry {
                subscribers: Arc::new(Mutex::new(HashMap::new())),
                started: Arc::new(OnceCell::new()),
                task: Arc::new(Mutex::new(None)),
            });
            lock_subs(&entry.subscribers).insert(id, subscriber);
            (entry.subscribers.clone(), entry.started.clone(), entry.task.clone())
        };
        let outcome = started
            .get_or_init(|| {
                let weak = Arc::downgrade(inner);
                let service = inner.service.clone();
                let subscribers = subscribers.clone();
                let key = key.clone();
                async move {
                    let stream = service.subscribe_session(key.clone()).await?;
                    let span = tracing::info_span!("session_feed", session = %key);
                    let handle =
                        tokio::spawn(run_feed(key, stream, subscribers, weak).instrument(span));
                    *task.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(handle.abort_handle());
                    Ok(())
                }
            })
            .await;
        match outcome {
            Ok(()) => Ok(id),
            Err(err) => {
                let err = err.clone();
                let mut feeds = inner.lock();
                if let Some(entry) = feeds.get(key)
                    && Arc::ptr_eq(&entry.subscribers, &subscribers)
                {
                    lock_subs(&subscribers).remove(&id);
                    // A failed start is not cached: the next join tries again.
                    feeds.remove(key);
                }
                Err(err)
            }
        }
    }

    /// Removes a subscriber; the feed (and its service subscription) ends with its last one.
    pub(crate) fn leave(&self, key: &SessionKey, id: u64) {
        let mut feeds = self.inner.lock();
        let Some(entry) = feeds.get(key) else { return };
        let empty = {
            let mut subs = lock_subs(&entry.subscribers);
            subs.remove(&id);
            subs.is_empty()
        };
        if empty && let Some(entry) = feeds.remove(key) {
            let task = entry.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            if let Some(task) = task {
                task.abort();
            }
        }
    }

    /// Sessions with a live feed on this node.
    pub(crate) fn active(&self) -> usize {
        self.inner.lock().len()
    }
}

impl<S> FeedsInner<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, FeedEntry>> {
        self.feeds.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn run_feed<S>(
    key: SessionKey,
    mut stream: BoxStream<'static, RunEvent>,
    subscribers: Subscribers,
    feeds: Weak<FeedsInner<S>>,
) {
    let mut runs = RunTracker::new(key.clone());
    loop {
        let flush_at = runs.next_flush();
        let event = tokio::select! {
            event = stream.next() => event,
            () = sleep_until_opt(flush_at) => {
                let updates = runs.flush_due(Instant::now());
                deliver(&subscribers, &updates);
                continue;
            }
        };
        let Some(event) = event else { break };
        if event.run.session != key {
            tracing::warn!(run = %event.run.run_id, other = %event.run.session,
                "dropping a turn event for another session");
            continue;
        }
        let updates = runs.apply(&event.run.run_id, event.event, Instant::now());
        deliver(&subscribers, &updates);
    }
    tracing::debug!("session feed ended by the service");
    if let Some(feeds) = feeds.upgrade() {
        let mut map = feeds.lock();
        if map.get(&key).is_some_and(|entry| Arc::ptr_eq(&entry.subscribers, &subscribers)) {
            map.remove(&key);
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn deliver(subscribers: &Subscribers, updates: &[Arc<RunUpdate>]) {
    if updates.is_empty() {
        return;
    }
    let targets: Vec<(u64, Subscriber)> =
        lock_subs(subscribers).iter().map(|(id, s)| (*id, s.clone())).collect();
    let mut dropped = Vec::new();
    for (id, target) in targets {
        for update in updates {
            match &target {
                Subscriber::Socket(connection) => {
                    let payload = update.payload_for(connection.protocol);
                    if !connection.send_event(update.event, payload, None) {
                        break;
                    }
                }
                Subscriber::Channel(tx) => {
                    if tx.try_send(update.clone()).is_err() {
                        // Closed, or too slow: either way it stops receiving; the receiver
                        // sees its channel end.
                        dropped.push(id);
                        break;
                    }
                }
            }
        }
    }
    if !dropped.is_empty() {
        let mut subs = lock_subs(subscribers);
        for id in dropped {
            subs.remove(&id);
        }
    }
}

/// Per-run state of one feed.
#[derive(Debug, Default)]
struct RunState {
    text: String,
    thinking: String,
    /// Text received since the last chat delta was sent.
    pending: String,
    last_delta_at: Option<Instant>,
    flush_at: Option<Instant>,
    chat_seq: u64,
    agent_seq: u64,
    touched: u64,
}

/// Turns turn events into update payloads; pure apart from the clock passed in.
pub(crate) struct RunTracker {
    session: SessionKey,
    runs: HashMap<String, RunState>,
    clock: u64,
}

impl RunTracker {
    pub(crate) fn new(session: SessionKey) -> Self {
        RunTracker { session, runs: HashMap::new(), clock: 0 }
    }

    fn state(&mut self, run_id: &str) -> &mut RunState {
        self.clock += 1;
        if !self.runs.contains_key(run_id) && self.runs.len() >= RUNS_PER_FEED_MAX {
            // Forget the least recently touched run (a run whose end was never seen).
            if let Some(oldest) =
                self.runs.iter().min_by_key(|(_, s)| s.touched).map(|(id, _)| id.clone())
            {
                self.runs.remove(&oldest);
            }
        }
        let clock = self.clock;
        let state = self.runs.entry(run_id.to_owned()).or_default();
        state.touched = clock;
        state
    }

    /// The earliest pending chat-delta flush.
    pub(crate) fn next_flush(&self) -> Option<Instant> {
        self.runs.values().filter_map(|s| s.flush_at).min()
    }

    /// Chat deltas whose throttle window has passed.
    pub(crate) fn flush_due(&mut self, now: Instant) -> Vec<Arc<RunUpdate>> {
        let due: Vec<String> = self
            .runs
            .iter()
            .filter(|(_, s)| s.flush_at.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = Vec::new();
        for run_id in due {
            if let Some(update) = self.chat_delta(&run_id, now) {
                out.push(update);
            }
        }
        out
    }

    pub(crate) fn apply(
        &mut self,
        run_id: &str,
        event: TurnEvent,
        now: Instant,
    ) -> Vec<Arc<RunUpdate>> {
        let mut out = Vec::new();
        match event {
            TurnEvent::Started { at_ms } => {
                out.push(self.agent(
                    run_id,
                    "lifecycle",
                    json!({"phase": "start", "startedAt": at_ms}),
                    UpdateKind::Other,
                ));
            }
            TurnEvent::AssistantDelta { text } => {
                let state = self.state(run_id);
                if state.text.len() + text.len() <= RUN_TEXT_BYTES_MAX {
                    state.text.push_str(&text);
                }
                if state.pending.len() + text.len() <= RUN_TEXT_BYTES_MAX {
                    state.pending.push_str(&text);
                }
                let cumulative = state.text.clone();
                let throttled = state
                    .last_delta_at
                    .is_some_and(|last| now < last + Duration::from_millis(CHAT_DELTA_INTERVAL_MS));
                if throttled && state.flush_at.is_none() {
                    state.flush_at = state
                        .last_delta_at
                        .map(|last| last + Duration::from_millis(CHAT_DELTA_INTERVAL_MS));
                }
                out.push(self.agent(
                    run_id,
                    "assistant",
                    json!({"text": cumulative, "delta": text}),
                    UpdateKind::AssistantDelta(text),
                ));
                if !throttled && let Some(update) = self.chat_delta(run_id, now) {
                    out.push(update);
                }
            }
            TurnEvent::ThinkingDelta { text } => {
                let state = self.state(run_id);
                if state.thinking.len() + text.len() <= RUN_TEXT_BYTES_MAX {
                    state.thinking.push_str(&text);
                }
                let cumulative = state.thinking.clone();
                out.push(self.agent(
                    run_id,
                    "thinking",
                    json!({"text": cumulative, "delta": text}),
                    UpdateKind::Other,
                ));
            }
            TurnEvent::ToolStart { tool_call_id, name, args } => {
                let args = serde_json::from_str::<Value>(&args).unwrap_or(Value::String(args));
                out.push(self.agent(
                    run_id,
                    "tool",
                    json!({"phase": "start", "name": name, "toolCallId": tool_call_id, "args": args}),
                    UpdateKind::Other,
                ));
            }
            TurnEvent::ToolUpdate { tool_call_id, name, partial } => {
                out.push(self.agent(
                    run_id,
                    "tool",
                    json!({"phase": "update", "name": name, "toolCallId": tool_call_id,
                           "partialResult": partial}),
                    UpdateKind::Other,
                ));
            }
            TurnEvent::ToolResult { tool_call_id, name, result, is_error } => {
                out.push(self.agent(
                    run_id,
                    "tool",
                    json!({"phase": "result", "name": name, "toolCallId": tool_call_id,
                           "isError": is_error, "result": result}),
                    UpdateKind::Other,
                ));
            }
            TurnEvent::Final { message, stop_reason, usage } => {
                // The last throttled text goes out first, so that a client adding up deltaText
                // has the whole reply before the final.
                if let Some(update) = self.chat_delta(run_id, now) {
                    out.push(update);
                }
                let stop = wire::stop_reason(stop_reason);
                out.push(self.agent(
                    run_id,
                    "lifecycle",
                    json!({"phase": "end", "stopReason": stop}),
                    UpdateKind::Other,
                ));
                let mut payload = self.chat_base(run_id, "final");
                payload.insert("message".into(), wire::message(&message));
                payload.insert("stopReason".into(), stop.into());
                payload.insert("usage".into(), wire::usage_value(&usage));
                let text = message.text_content();
                out.push(self.chat(
                    run_id,
                    payload,
                    None,
                    UpdateKind::Final { text, usage, stop_reason },
                ));
                self.runs.remove(run_id);
            }
            TurnEvent::Aborted { partial_text } => {
                out.push(self.agent(
                    run_id,
                    "lifecycle",
                    json!({"phase": "end", "aborted": true, "stopReason": "aborted"}),
                    UpdateKind::Other,
                ));
                let mut payload = self.chat_base(run_id, "aborted");
                if !partial_text.is_empty() {
                    payload.insert("message".into(), assistant_text_message(&partial_text));
                }
                payload.insert("stopReason".into(), "aborted".into());
                out.push(self.chat(run_id, payload, None, UpdateKind::Aborted));
                self.runs.remove(run_id);
            }
            TurnEvent::Error { message, kind } => {
                out.push(self.agent(
                    run_id,
                    "lifecycle",
                    json!({"phase": "error", "error": message}),
                    UpdateKind::Other,
                ));
                let mut payload = self.chat_base(run_id, "error");
                payload.insert("errorMessage".into(), message.clone().into());
                payload.insert("errorKind".into(), error_kind(&kind).into());
                out.push(self.chat(run_id, payload, None, UpdateKind::Error { message }));
                self.runs.remove(run_id);
            }
        }
        out
    }

    /// The pending chat delta of a run, if it has new text.
    fn chat_delta(&mut self, run_id: &str, now: Instant) -> Option<Arc<RunUpdate>> {
        let state = self.runs.get_mut(run_id)?;
        state.flush_at = None;
        if state.pending.is_empty() {
            return None;
        }
        let delta = std::mem::take(&mut state.pending);
        state.last_delta_at = Some(now);
        let message = assistant_text_message(&state.text);
        let mut payload = self.chat_base(run_id, "delta");
        payload.insert("message".into(), message);
        let v3 = Value::Object(payload.clone()).to_string();
        payload.insert("deltaText".into(), delta.into());
        Some(self.chat(run_id, payload, Some(v3), UpdateKind::Other))
    }

    fn chat_base(&mut self, run_id: &str, state_name: &str) -> Map<String, Value> {
        let session = self.session.as_str().to_owned();
        let state = self.state(run_id);
        state.chat_seq += 1;
        let mut payload = Map::new();
        payload.insert("runId".into(), run_id.into());
        payload.insert("sessionKey".into(), session.into());
        payload.insert("seq".into(), state.chat_seq.into());
        payload.insert("state".into(), state_name.into());
        payload
    }

    fn chat(
        &mut self,
        run_id: &str,
        payload: Map<String, Value>,
        payload_v3: Option<String>,
        kind: UpdateKind,
    ) -> Arc<RunUpdate> {
        Arc::new(RunUpdate {
            run_id: run_id.to_owned(),
            event: "chat",
            payload: Value::Object(payload).to_string(),
            payload_v3,
            kind,
        })
    }

    fn agent(
        &mut self,
        run_id: &str,
        stream: &str,
        data: Value,
        kind: UpdateKind,
    ) -> Arc<RunUpdate> {
        let state = self.state(run_id);
        state.agent_seq += 1;
        let payload =
            AgentPayload { data: &data, run_id, seq: state.agent_seq, stream, ts: now_ms().max(0) };
        Arc::new(RunUpdate {
            run_id: run_id.to_owned(),
            event: "agent",
            // Serializing borrowed strings, numbers and a Value cannot fail.
            payload: serde_json::to_string(&payload).unwrap_or_default(),
            payload_v3: None,
            kind,
        })
    }
}

/// The payload of an `agent` event, serialized straight from borrowed fields: building a `json!`
/// tree first (a map, and a copy of `data`) was a tenth of the gateway's share of a turn. Fields
/// are in the order `json!` printed them (sorted keys).
#[derive(serde::Serialize)]
struct AgentPayload<'a> {
    data: &'a Value,
    #[serde(rename = "runId")]
    run_id: &'a str,
    seq: u64,
    stream: &'a str,
    ts: i64,
}

fn assistant_text_message(text: &str) -> Value {
    json!({
        "role": "assistant",
        "content": [{"type": "text", "text": text}],
        "timestamp": now_ms().max(0),
    })
}

/// Maps the runtime's error kind onto the schema's closed `errorKind` enum.
fn error_kind(kind: &str) -> &'static str {
    match kind {
        "timeout" => "timeout",
        "rate_limit" | "rate_limited" => "rate_limit",
        "context_length" | "context_overflow" => "context_length",
        "refusal" => "refusal",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamclaw_crdt::{Message, Role};

    fn tracker() -> RunTracker {
        RunTracker::new(SessionKey::new("agent:main:main").unwrap())
    }

    fn delta(text: &str) -> TurnEvent {
        TurnEvent::AssistantDelta { text: text.into() }
    }

    fn chats(updates: &[Arc<RunUpdate>]) -> Vec<Value> {
        updates
            .iter()
            .filter(|u| u.event == "chat")
            .map(|u| serde_json::from_str(&u.payload).unwrap())
            .collect()
    }

    #[test]
    fn chat_deltas_are_cumulative_and_throttled_to_150ms() {
        let mut t = tracker();
        let start = Instant::now();
        let first = chats(&t.apply("r", delta("Hel"), start));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0]["message"]["content"][0]["text"], "Hel");
        assert_eq!(first[0]["deltaText"], "Hel");

        // Within the window: held back, flush scheduled at +150 ms.
        let at = start + Duration::from_millis(10);
        assert!(chats(&t.apply("r", delta("lo"), at)).is_empty());
        assert!(chats(&t.apply("r", delta(" wo"), at)).is_empty());
        assert_eq!(t.next_flush(), Some(start + Duration::from_millis(CHAT_DELTA_INTERVAL_MS)));
        assert!(t.flush_due(start + Duration::from_millis(149)).is_empty());

        let flushed = chats(&t.flush_due(start + Duration::from_millis(150)));
        assert_eq!(flushed.len(), 1);
        assert_eq!(flushed[0]["message"]["content"][0]["text"], "Hello wo");
        assert_eq!(flushed[0]["deltaText"], "lo wo");
        assert_eq!(flushed[0]["seq"], 2);
    }

    #[test]
    fn v3_deltas_have_no_delta_text() {
        let mut t = tracker();
        let updates = t.apply("r", delta("hi"), Instant::now());
        let chat = updates.iter().find(|u| u.event == "chat").unwrap();
        let v3: Value = serde_json::from_str(chat.payload_for(3)).unwrap();
        assert!(v3.get("deltaText").is_none());
        let v4: Value = serde_json::from_str(chat.payload_for(4)).unwrap();
        assert_eq!(v4["deltaText"], "hi");
    }

    #[test]
    fn final_flushes_pending_text_first() {
        let mut t = tracker();
        let start = Instant::now();
        t.apply("r", delta("a"), start);
        t.apply("r", delta("b"), start + Duration::from_millis(1));
        let message = Message::text("m", Role::Assistant, "ab", 5);
        let updates = t.apply(
            "r",
            TurnEvent::Final {
                message: Box::new(message),
                stop_reason: StopReason::Stop,
                usage: Usage::default(),
            },
            start + Duration::from_millis(2),
        );
        let chat = chats(&updates);
        assert_eq!(chat.len(), 2);
        assert_eq!(chat[0]["state"], "delta");
        assert_eq!(chat[0]["deltaText"], "b");
        assert_eq!(chat[1]["state"], "final");
        assert_eq!(chat[1]["message"]["content"][0]["text"], "ab");
        assert_eq!(t.next_flush(), None);
    }

    #[test]
    fn errors_map_to_the_closed_error_kind_enum() {
        let mut t = tracker();
        let updates = t.apply(
            "r",
            TurnEvent::Error { message: "boom".into(), kind: "provider_error".into() },
            Instant::now(),
        );
        let chat = chats(&updates);
        assert_eq!(chat[0]["state"], "error");
        assert_eq!(chat[0]["errorMessage"], "boom");
        assert_eq!(chat[0]["errorKind"], "unknown");
        let agent: Value = serde_json::from_str(&updates[0].payload).unwrap();
        assert_eq!(agent["stream"], "lifecycle");
        assert_eq!(agent["data"]["phase"], "error");
    }

    #[test]
    fn tool_events_carry_openclaw_fields() {
        let mut t = tracker();
        let updates = t.apply(
            "r",
            TurnEvent::ToolStart {
                tool_call_id: "c".into(),
                name: "read".into(),
                args: "{\"path\":\"a\"}".into(),
            },
            Instant::now(),
        );
        let agent: Value = serde_json::from_str(&updates[0].payload).unwrap();
        assert_eq!(agent["stream"], "tool");
        assert_eq!(agent["data"]["phase"], "start");
        assert_eq!(agent["data"]["args"]["path"], "a");
        assert_eq!(agent["data"]["toolCallId"], "c");
    }

    #[test]
    fn tracked_runs_are_bounded() {
        let mut t = tracker();
        let now = Instant::now();
        for i in 0..(RUNS_PER_FEED_MAX + 10) {
            t.apply(&format!("r{i}"), delta("x"), now);
        }
        assert!(t.runs.len() <= RUNS_PER_FEED_MAX);
    }
}
