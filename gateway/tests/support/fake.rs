//! A fake node behind the gateway, for tests only: in-memory sessions, scripted turns.
//!
//! Turns reply `echo: <message>` word by word. Messages steer the script:
//! - `fail` ends the run with an error,
//! - `slow` waits between words long enough to abort it,
//! - `tool` emits a tool call before the reply,
//! - `flood <n>` emits `n` deltas of 1 KiB back to back (for slow-reader tests).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use beamclaw_crdt::{IndexEntry, Message, OwnerRecord, Role, SessionKey, StopReason, Usage};
use beamclaw_gateway::{
    AbortOutcome, AbortTarget, ChatAccepted, ChatHistory, ChatInject, ChatSend, ConfigWrite,
    ConfigWriteMode, FieldPatch, GatewayService, HistoryQuery, Member, ModelInfo, NodeEvent,
    NodeHealth, NodeInfo, NodeStatus, Readiness, RecentSession, ResetReason, RunEvent, RunOutcome,
    RunStatus, SendStatus, ServiceError, SessionChange, SessionCreate, SessionPatch, SessionQuery,
    SessionSettings, SessionSummary, ToolInvocation,
};
use beamclaw_mesh::core::turn::{RunRef, TurnEvent};
use futures::stream::BoxStream;
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

/// Events buffered per session channel before a slow test subscriber lags.
const FAKE_CHANNEL_EVENTS: usize = 16_384;
/// Delay between words of a normal reply.
const WORD_DELAY_MS: u64 = 5;
/// Delay between words of a `slow` reply.
const SLOW_WORD_DELAY_MS: u64 = 300;

pub const NODE_ID: &str = "12D3KooWFakeNodeId";

struct Run {
    session: SessionKey,
    status: Option<RunStatus>,
    started_at_ms: i64,
    ended_at_ms: Option<i64>,
    message: Option<Message>,
    error: Option<String>,
    abort: Arc<AtomicBool>,
    done: Arc<Notify>,
}

struct Session {
    summary: SessionSummary,
    messages: Vec<Message>,
}

#[derive(Default)]
struct State {
    sessions: BTreeMap<SessionKey, Session>,
    runs: HashMap<String, Run>,
    idempotency: HashMap<(SessionKey, String), String>,
    channels: HashMap<SessionKey, broadcast::Sender<RunEvent>>,
    config: Value,
    config_hash: u64,
    tool_calls: Vec<ToolInvocation>,
}

pub struct FakeService {
    state: Mutex<State>,
    node_events: broadcast::Sender<NodeEvent>,
    pub ready: AtomicBool,
    /// Sessions currently subscribed by the gateway (to check feeds end).
    pub subscriptions: Arc<Mutex<HashMap<SessionKey, usize>>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl FakeService {
    pub fn new() -> Arc<Self> {
        let (node_events, _) = broadcast::channel(1024);
        Arc::new(FakeService {
            state: Mutex::new(State {
                config: json!({"gateway": {"port": 18789}}),
                ..Default::default()
            }),
            node_events,
            ready: AtomicBool::new(true),
            subscriptions: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn emit(&self, event: NodeEvent) {
        let _ = self.node_events.send(event);
    }

    pub fn tool_calls(&self) -> Vec<ToolInvocation> {
        self.state().tool_calls.clone()
    }

    pub fn subscription_count(&self, key: &str) -> usize {
        let key = SessionKey::new(key).unwrap();
        self.subscriptions.lock().unwrap().get(&key).copied().unwrap_or(0)
    }

    fn summary_for(key: &SessionKey, agent: Option<&str>) -> SessionSummary {
        let agent = agent
            .map(str::to_owned)
            .or_else(|| {
                key.as_str()
                    .strip_prefix("agent:")
                    .and_then(|r| r.split(':').next())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "main".into());
        SessionSummary {
            key: key.clone(),
            entry: IndexEntry {
                session_id: uuid::Uuid::new_v4().to_string(),
                agent_id: agent,
                updated_at_ms: now_ms(),
                owner: Some(OwnerRecord { epoch: 1, node: NODE_ID.into() }),
                ..Default::default()
            },
            settings: SessionSettings::default(),
        }
    }

    fn ensure_session<'a>(state: &'a mut State, key: &SessionKey) -> (&'a mut Session, bool) {
        let created = !state.sessions.contains_key(key);
        let session = state.sessions.entry(key.clone()).or_insert_with(|| Session {
            summary: Self::summary_for(key, None),
            messages: Vec::new(),
        });
        (session, created)
    }

    fn channel(state: &mut State, key: &SessionKey) -> broadcast::Sender<RunEvent> {
        state
            .channels
            .entry(key.clone())
            .or_insert_with(|| broadcast::channel(FAKE_CHANNEL_EVENTS).0)
            .clone()
    }
}

async fn run_turn(
    service: Arc<FakeService>,
    run: RunRef,
    text: String,
    abort: Arc<AtomicBool>,
    done: Arc<Notify>,
    tx: broadcast::Sender<RunEvent>,
) {
    let emit = |event: TurnEvent| {
        let _ = tx.send(RunEvent { run: run.clone(), event });
    };
    emit(TurnEvent::Started { at_ms: now_ms() });
    let finish = |status: RunStatus, message: Option<Message>, error: Option<String>| {
        let mut state = service.state();
        if let Some(record) = state.runs.get_mut(&run.run_id) {
            record.status = Some(status);
            record.ended_at_ms = Some(now_ms());
            record.message = message.clone();
            record.error = error;
        }
        if let Some(message) = message
            && let Some(session) = state.sessions.get_mut(&run.session)
        {
            session.messages.push(message);
            session.summary.entry.message_count = session.messages.len() as u64;
            session.summary.entry.updated_at_ms = now_ms();
        }
        drop(state);
        done.notify_waiters();
    };

    if text == "fail" {
        emit(TurnEvent::Error {
            message: "the fake provider failed".into(),
            kind: "provider_error".into(),
        });
        finish(RunStatus::Error, None, Some("the fake provider failed".into()));
        return;
    }
    if let Some(n) = text.strip_prefix("flood ").and_then(|n| n.parse::<usize>().ok()) {
        let chunk = "x".repeat(1024);
        for _ in 0..n {
            emit(TurnEvent::AssistantDelta { text: chunk.clone() });
            tokio::task::yield_now().await;
        }
    }
    if text == "tool" {
        emit(TurnEvent::ToolStart {
            tool_call_id: "call-1".into(),
            name: "read".into(),
            args: "{\"path\":\"a.txt\"}".into(),
        });
        emit(TurnEvent::ToolUpdate {
            tool_call_id: "call-1".into(),
            name: "read".into(),
            partial: "par".into(),
        });
        emit(TurnEvent::ToolResult {
            tool_call_id: "call-1".into(),
            name: "read".into(),
            result: "contents".into(),
            is_error: false,
        });
    }
    let delay = if text == "slow" { SLOW_WORD_DELAY_MS } else { WORD_DELAY_MS };
    let reply = format!("echo: {text}");
    let mut sent = String::new();
    for (i, word) in reply.split(' ').enumerate() {
        if abort.load(Ordering::Acquire) {
            emit(TurnEvent::Aborted { partial_text: sent.clone() });
            finish(RunStatus::Error, None, Some("aborted".into()));
            return;
        }
        let piece = if i == 0 { word.to_owned() } else { format!(" {word}") };
        sent.push_str(&piece);
        emit(TurnEvent::AssistantDelta { text: piece });
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if abort.load(Ordering::Acquire) {
        emit(TurnEvent::Aborted { partial_text: sent.clone() });
        finish(RunStatus::Error, None, Some("aborted".into()));
        return;
    }
    let usage = Usage { input: 3, output: 5, cache_read: 0, cache_write: 0 };
    let mut message = Message::text(format!("r:{}", run.run_id), Role::Assistant, reply, now_ms());
    message.author = NODE_ID.into();
    message.usage = Some(usage);
    message.stop_reason = Some(StopReason::Stop);
    message.run_id = Some(run.run_id.clone());
    emit(TurnEvent::Final {
        message: Box::new(message.clone()),
        stop_reason: StopReason::Stop,
        usage,
    });
    finish(RunStatus::Ok, Some(message), None);
}

/// The gateway needs an `Arc<S>`; this wrapper lets turns reach the service's own `Arc`.
pub struct Fake(pub Arc<FakeService>);

impl std::ops::Deref for Fake {
    type Target = FakeService;
    fn deref(&self) -> &FakeService {
        &self.0
    }
}

fn broadcast_stream<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
) -> BoxStream<'static, T> {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(item) => return Some((item, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }))
}

/// Decrements the subscription count when the gateway drops the stream.
struct Counted {
    counts: Arc<Mutex<HashMap<SessionKey, usize>>>,
    key: SessionKey,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap();
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
        }
    }
}

impl GatewayService for Fake {
    fn node_info(&self) -> NodeInfo {
        NodeInfo {
            node_id: NODE_ID.into(),
            name: "fake-node".into(),
            version: "0.1.0-test".into(),
            started_at_ms: now_ms() - 1_000,
            default_agent_id: "main".into(),
            main_key: "main".into(),
            agent_ids: vec!["main".into(), "ops".into()],
            config_path: Some("/tmp/beamclaw.json5".into()),
            state_dir: Some("/tmp/beamclaw".into()),
        }
    }

    fn readiness(&self) -> Readiness {
        if self.ready.load(Ordering::Acquire) {
            Readiness { ready: true, reason: None }
        } else {
            Readiness { ready: false, reason: Some("starting".into()) }
        }
    }

    async fn status(&self) -> Result<NodeStatus, ServiceError> {
        let owned = self.state().sessions.len() as u64;
        Ok(NodeStatus {
            members: vec![
                Member {
                    node_id: NODE_ID.into(),
                    name: "fake-node".into(),
                    state: "alive".into(),
                    address: Some("127.0.0.1:7000".into()),
                    version: Some("0.1.0-test".into()),
                    sessions_owned: Some(owned),
                },
                Member {
                    node_id: "12D3KooWPeer<script>".into(),
                    name: "peer".into(),
                    state: "suspect".into(),
                    address: None,
                    version: None,
                    sessions_owned: None,
                },
            ],
            sessions_owned: owned,
            sessions_replicated: 0,
            providers: json!({"offline": {"requests": 3, "errors": 0, "note": "<b>offline</b>"}}),
        })
    }

    async fn health(&self) -> Result<NodeHealth, ServiceError> {
        let state = self.state();
        Ok(NodeHealth {
            ok: true,
            session_count: state.sessions.len() as u64,
            recent: state
                .sessions
                .values()
                .take(5)
                .map(|s| RecentSession {
                    key: s.summary.key.clone(),
                    updated_at_ms: s.summary.entry.updated_at_ms,
                })
                .collect(),
        })
    }

    async fn models(&self) -> Result<Vec<ModelInfo>, ServiceError> {
        Ok(vec![ModelInfo {
            id: "offline/echo".into(),
            name: "Offline echo".into(),
            provider: "offline".into(),
            context_window: Some(8192),
            reasoning: false,
            available: true,
        }])
    }

    async fn config_get(&self) -> Result<Value, ServiceError> {
        let state = self.state();
        Ok(json!({"config": state.config, "hash": state.config_hash.to_string(), "valid": true}))
    }

    async fn config_write(&self, write: ConfigWrite) -> Result<Value, ServiceError> {
        let mut state = self.state();
        if let Some(base) = &write.base_hash
            && *base != state.config_hash.to_string()
        {
            return Err(ServiceError::Invalid {
                message: "config changed since baseHash; re-read it".into(),
            });
        }
        let parsed: Value = serde_json::from_str(&write.raw)
            .map_err(|err| ServiceError::Invalid { message: format!("raw is not JSON: {err}") })?;
        match write.mode {
            ConfigWriteMode::Set => state.config = parsed,
            ConfigWriteMode::Patch => {
                if let (Value::Object(target), Value::Object(patch)) = (&mut state.config, parsed) {
                    for (k, v) in patch {
                        target.insert(k, v);
                    }
                }
            }
        }
        state.config_hash += 1;
        Ok(json!({"ok": true, "hash": state.config_hash.to_string()}))
    }

    async fn chat_send(&self, send: ChatSend) -> Result<ChatAccepted, ServiceError> {
        let (run, text, abort, done, tx, created) = {
            let mut state = self.state();
            let dedup = (send.session.clone(), send.idempotency_key.clone());
            if let Some(run_id) = state.idempotency.get(&dedup).cloned() {
                let finished = state.runs.get(&run_id).is_some_and(|r| r.status.is_some());
                let status = if finished { SendStatus::Ok } else { SendStatus::InFlight };
                return Ok(ChatAccepted { run_id, status });
            }
            let run_id = uuid::Uuid::new_v4().to_string();
            state.idempotency.insert(dedup, run_id.clone());
            let (session, created) = FakeService::ensure_session(&mut state, &send.session);
            let mut user = Message::user_text(
                format!("u:{}", send.idempotency_key),
                send.message.clone(),
                now_ms(),
            );
            user.idempotency_key = Some(send.idempotency_key.clone());
            user.run_id = Some(run_id.clone());
            session.messages.push(user);
            session.summary.entry.message_count = session.messages.len() as u64;
            let abort = Arc::new(AtomicBool::new(false));
            let done = Arc::new(Notify::new());
            state.runs.insert(
                run_id.clone(),
                Run {
                    session: send.session.clone(),
                    status: None,
                    started_at_ms: now_ms(),
                    ended_at_ms: None,
                    message: None,
                    error: None,
                    abort: abort.clone(),
                    done: done.clone(),
                },
            );
            let tx = FakeService::channel(&mut state, &send.session);
            let run = RunRef { session: send.session.clone(), run_id, epoch: 1 };
            (run, send.message, abort, done, tx, created)
        };
        if created {
            self.emit(NodeEvent::SessionsChanged {
                key: run.session.clone(),
                change: SessionChange::Created,
            });
        }
        let run_id = run.run_id.clone();
        tokio::spawn(run_turn(self.0.clone(), run, text, abort, done, tx));
        Ok(ChatAccepted { run_id, status: SendStatus::Started })
    }

    async fn chat_history(&self, query: HistoryQuery) -> Result<ChatHistory, ServiceError> {
        let state = self.state();
        let session = state
            .sessions
            .get(&query.session)
            .ok_or_else(|| ServiceError::NotFound { what: format!("session {}", query.session) })?;
        let skip = session.messages.len().saturating_sub(query.limit);
        Ok(ChatHistory {
            session_id: session.summary.entry.session_id.clone(),
            messages: session.messages[skip..].to_vec(),
            thinking_level: session.summary.settings.thinking_level.clone(),
        })
    }

    async fn chat_abort(&self, target: AbortTarget) -> Result<AbortOutcome, ServiceError> {
        let state = self.state();
        let mut run_ids = Vec::new();
        for (id, run) in &state.runs {
            let session_match = target.session.as_ref().is_none_or(|s| *s == run.session);
            let run_match = target.run_id.as_ref().is_none_or(|r| r == id);
            if session_match && run_match && run.status.is_none() {
                run.abort.store(true, Ordering::Release);
                run_ids.push(id.clone());
            }
        }
        Ok(AbortOutcome { aborted: !run_ids.is_empty(), run_ids })
    }

    async fn chat_inject(&self, inject: ChatInject) -> Result<Message, ServiceError> {
        let mut state = self.state();
        let (session, _) = FakeService::ensure_session(&mut state, &inject.session);
        let message =
            Message::text(uuid::Uuid::new_v4().to_string(), Role::Assistant, inject.text, now_ms());
        session.messages.push(message.clone());
        Ok(message)
    }

    async fn run_wait(&self, run_id: String, timeout_ms: u64) -> Result<RunOutcome, ServiceError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let done = {
                let state = self.state();
                let run = state
                    .runs
                    .get(&run_id)
                    .ok_or_else(|| ServiceError::NotFound { what: format!("run {run_id}") })?;
                if let Some(status) = run.status {
                    return Ok(RunOutcome {
                        run_id: run_id.clone(),
                        status,
                        started_at_ms: Some(run.started_at_ms),
                        ended_at_ms: run.ended_at_ms,
                        error: run.error.clone(),
                        message: run.message.clone(),
                    });
                }
                run.done.clone()
            };
            let notified = done.notified();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(RunOutcome {
                    run_id,
                    status: RunStatus::Timeout,
                    started_at_ms: None,
                    ended_at_ms: None,
                    error: None,
                    message: None,
                });
            }
        }
    }

    async fn sessions_list(
        &self,
        query: SessionQuery,
    ) -> Result<Vec<SessionSummary>, ServiceError> {
        let state = self.state();
        let mut out: Vec<SessionSummary> = state
            .sessions
            .values()
            .map(|s| s.summary.clone())
            .filter(|s| query.label.as_ref().is_none_or(|l| s.entry.label.as_ref() == Some(l)))
            .filter(|s| query.search.as_ref().is_none_or(|q| s.key.as_str().contains(q.as_str())))
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.entry.updated_at_ms));
        out.truncate(query.limit.unwrap_or(usize::MAX));
        Ok(out)
    }

    async fn session_get(&self, key: SessionKey) -> Result<Option<SessionSummary>, ServiceError> {
        Ok(self.state().sessions.get(&key).map(|s| s.summary.clone()))
    }

    async fn session_create(&self, create: SessionCreate) -> Result<SessionSummary, ServiceError> {
        let key = match create.key {
            Some(key) => key,
            None => SessionKey::new(format!(
                "agent:{}:session:{}",
                create.agent_id.as_deref().unwrap_or("main"),
                uuid::Uuid::new_v4()
            ))
            .map_err(|err| ServiceError::Invalid { message: err.to_string() })?,
        };
        let summary = {
            let mut state = self.state();
            let (session, _) = FakeService::ensure_session(&mut state, &key);
            if create.label.is_some() {
                session.summary.entry.label = create.label;
            }
            if create.model.is_some() {
                session.summary.entry.model = create.model;
            }
            if create.thinking_level.is_some() {
                session.summary.settings.thinking_level = create.thinking_level;
            }
            session.summary.clone()
        };
        self.emit(NodeEvent::SessionsChanged { key, change: SessionChange::Created });
        Ok(summary)
    }

    async fn session_patch(
        &self,
        key: SessionKey,
        patch: SessionPatch,
    ) -> Result<SessionSummary, ServiceError> {
        fn apply<T>(field: &mut Option<T>, patch: FieldPatch<T>) {
            match patch {
                FieldPatch::Keep => {}
                FieldPatch::Clear => *field = None,
                FieldPatch::Set(v) => *field = Some(v),
            }
        }
        let summary = {
            let mut state = self.state();
            let session = state
                .sessions
                .get_mut(&key)
                .ok_or_else(|| ServiceError::NotFound { what: format!("session {key}") })?;
            let s = &mut session.summary;
            apply(&mut s.entry.label, patch.label);
            apply(&mut s.entry.model, patch.model);
            apply(&mut s.settings.thinking_level, patch.thinking_level);
            apply(&mut s.settings.verbose_level, patch.verbose_level);
            apply(&mut s.settings.reasoning_level, patch.reasoning_level);
            apply(&mut s.settings.elevated_level, patch.elevated_level);
            apply(&mut s.settings.fast_mode, patch.fast_mode);
            s.clone()
        };
        self.emit(NodeEvent::SessionsChanged { key, change: SessionChange::Patched });
        Ok(summary)
    }

    async fn session_reset(
        &self,
        key: SessionKey,
        _reason: ResetReason,
    ) -> Result<SessionSummary, ServiceError> {
        let summary = {
            let mut state = self.state();
            let session = state
                .sessions
                .get_mut(&key)
                .ok_or_else(|| ServiceError::NotFound { what: format!("session {key}") })?;
            session.messages.clear();
            session.summary.entry.session_id = uuid::Uuid::new_v4().to_string();
            session.summary.entry.message_count = 0;
            session.summary.clone()
        };
        self.emit(NodeEvent::SessionsChanged { key, change: SessionChange::Reset });
        Ok(summary)
    }

    async fn session_delete(
        &self,
        key: SessionKey,
        _delete_transcript: bool,
    ) -> Result<bool, ServiceError> {
        let deleted = self.state().sessions.remove(&key).is_some();
        if deleted {
            self.emit(NodeEvent::SessionsChanged { key, change: SessionChange::Deleted });
        }
        Ok(deleted)
    }

    async fn tools_invoke(&self, invocation: ToolInvocation) -> Result<Value, ServiceError> {
        self.state().tool_calls.push(invocation.clone());
        match invocation.tool.as_str() {
            "missing" => Err(ServiceError::NotFound { what: "tool missing".into() }),
            "owner_only" => Err(ServiceError::Forbidden { message: "owner only".into() }),
            _ => Ok(json!({"tool": invocation.tool, "echo": invocation.args})),
        }
    }

    async fn subscribe_session(
        &self,
        key: SessionKey,
    ) -> Result<BoxStream<'static, RunEvent>, ServiceError> {
        if key.as_str().contains("unsubscribable") {
            return Err(ServiceError::Unavailable {
                message: "owner unreachable".into(),
                retry_after_ms: Some(50),
            });
        }
        let rx = {
            let mut state = self.state();
            FakeService::channel(&mut state, &key).subscribe()
        };
        *self.subscriptions.lock().unwrap().entry(key.clone()).or_default() += 1;
        let guard = Counted { counts: self.subscriptions.clone(), key };
        let stream = broadcast_stream(rx);
        Ok(Box::pin(futures::stream::unfold((stream, guard), |(mut stream, guard)| async move {
            use futures::StreamExt;
            stream.next().await.map(|item| (item, (stream, guard)))
        })))
    }

    fn node_events(&self) -> BoxStream<'static, NodeEvent> {
        broadcast_stream(self.node_events.subscribe())
    }
}
