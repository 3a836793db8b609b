//! The node behind the gateway: [`GatewayService`] over the mesh, the agent runtime and the
//! config file. Every chat turn is a request to the session's owner through the mesh, even when
//! the owner is this node; every read of a transcript goes to the owner too.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use beamclaw_crdt::doc::{FieldPatch as DocPatch, MetaPatch};
use beamclaw_crdt::{ContentPart, IndexEntry, Message, Role, SessionKey, StopReason};
use beamclaw_gateway::{
    AbortOutcome, AbortTarget, ChatAccepted, ChatHistory, ChatInject, ChatSend, ConfigWrite,
    ConfigWriteMode, ExecApproval, ExecApprovalResolution, FastMode, FieldPatch, GatewayService,
    HistoryQuery, Member, ModelInfo, NodeEvent, NodeHealth, NodeInfo, NodeStatus, Readiness,
    RecentSession, ResetReason, RunEvent, RunOutcome, RunStatus, SendStatus, ServiceError,
    SessionChange, SessionCreate, SessionPatch, SessionQuery, SessionSettings, SessionSummary,
    ToolInvocation,
};
use beamclaw_mesh::core::turn::{RunRef, TurnEvent};
use beamclaw_mesh::core::{
    Event, RequestBody, RequestError, Response, RunStatus as MeshRunStatus, SessionOp,
};
use beamclaw_mesh::driver::MeshHandle;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::config::{self, LoadedConfig};
use crate::provider::ProviderStats;
use crate::tools::{ToolContext, ToolRegistry};

/// Runs remembered for `agent.wait`, at most (the oldest are forgotten first).
pub const RUNS_TRACKED_MAX: usize = 10_000;
/// How long a run's session stays subscribed on this node after the run was submitted here,
/// when no end of the run was seen (a lost event, an owner that died).
pub const RUN_SUBSCRIPTION_MS: u64 = 10 * 60 * 1000;
/// Recent sessions reported by `health`.
pub const HEALTH_RECENT_SESSIONS: usize = 10;
/// Default and largest page of `sessions.list`.
pub const SESSIONS_LIST_DEFAULT: usize = 100;
pub const SESSIONS_LIST_MAX: usize = 1000;
/// Node-wide events buffered for the gateway.
pub const NODE_EVENTS_BUFFER: usize = 256;
/// A chat command's reply goes out this long after the command was accepted, in ms.
pub const COMMAND_REPLY_DELAY_MS: u64 = 50;
/// Turn events buffered per subscribed session for its feed (a feed further behind loses the
/// oldest and says so in the log).
pub const SESSION_EVENTS_BUFFER: usize = 1024;

/// Turn events routed by session: one channel per session with a subscriber here, so a feed
/// only ever sees its own session's events (not every session's, filtered).
type SessionRoutes = Arc<Mutex<HashMap<SessionKey, broadcast::Sender<RunEvent>>>>;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The agent id of a session key (`agent:<agentId>:<rest>`), else the default agent.
pub fn agent_of(key: &SessionKey, default_agent: &str) -> String {
    let mut parts = key.as_str().splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("agent"), Some(agent), Some(_)) if !agent.is_empty() => agent.to_ascii_lowercase(),
        _ => default_agent.to_string(),
    }
}

struct RunSlot {
    session: SessionKey,
    started_at_ms: Option<i64>,
    outcome: watch::Sender<Option<RunOutcome>>,
}

/// Runs submitted through this node, so `agent.wait` can answer and subscriptions end.
#[derive(Default)]
struct Runs {
    slots: HashMap<String, RunSlot>,
    order: VecDeque<String>,
}

pub struct NodeService {
    mesh: MeshHandle,
    info: NodeInfo,
    config: Mutex<LoadedConfig>,
    config_file: PathBuf,
    stats: Arc<ProviderStats>,
    tools: Arc<ToolRegistry>,
    default_agent: String,
    draining: AtomicBool,
    ready: AtomicBool,
    runs: Arc<Mutex<Runs>>,
    node_events: broadcast::Sender<NodeEvent>,
    /// Exec approvals, once `serve` set them (`exec.approval.*`, `/approve`).
    approvals: std::sync::OnceLock<Arc<crate::approvals::Approvals>>,
    /// Replies to chat commands answered here (`/approve`), as runs of their own.
    command_replies: broadcast::Sender<RunEvent>,
    routes: SessionRoutes,
}

impl NodeService {
    pub fn new(
        mesh: MeshHandle,
        info: NodeInfo,
        config: LoadedConfig,
        config_file: PathBuf,
        stats: Arc<ProviderStats>,
        tools: Arc<ToolRegistry>,
    ) -> Arc<Self> {
        let default_agent = config.default_agent_id();
        let service = Arc::new(NodeService {
            mesh: mesh.clone(),
            info,
            config: Mutex::new(config),
            config_file,
            stats,
            tools,
            default_agent,
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(true),
            runs: Arc::new(Mutex::new(Runs::default())),
            node_events: broadcast::channel(NODE_EVENTS_BUFFER).0,
            approvals: std::sync::OnceLock::new(),
            command_replies: broadcast::channel(NODE_EVENTS_BUFFER).0,
            routes: SessionRoutes::default(),
        });
        tokio::spawn(track_runs(Arc::downgrade(&service), mesh.events()));
        tokio::spawn(route_session_events(Arc::downgrade(&service.routes), mesh.events()));
        service
    }

    /// Serves exec approvals through `approvals` (method calls, events, `/approve`).
    pub fn set_approvals(&self, approvals: Arc<crate::approvals::Approvals>) {
        super::approvals::forward_notices(&approvals, self.node_events.clone());
        let _ = self.approvals.set(approvals);
    }

    fn approvals(&self) -> Result<&crate::approvals::Approvals, ServiceError> {
        self.approvals.get().map(|a| a.as_ref()).ok_or_else(|| ServiceError::Invalid {
            message: "exec approvals are not served by this node".into(),
        })
    }

    /// `/approve <id> <decision>` sent as a chat message: decided here, never queued behind
    /// the turn that waits for it; the reply is a run of its own on this node.
    fn approve_from_chat(
        &self,
        send: ChatSend,
        parsed: Result<(String, crate::approvals::log::Decision), String>,
    ) -> ChatAccepted {
        let approvals = self.approvals.get().cloned();
        let replies = self.command_replies.clone();
        let run_id = send.idempotency_key.clone();
        let resolved_by = format!("/approve in {}", send.session);
        let run = RunRef { session: send.session, run_id: run_id.clone(), epoch: 0 };
        tokio::spawn(async move {
            let text =
                super::approvals::chat_command(approvals.as_deref(), parsed, &resolved_by).await;
            // The client hears the accepted answer first.
            tokio::time::sleep(Duration::from_millis(COMMAND_REPLY_DELAY_MS)).await;
            let mut message =
                Message::text(format!("r:{}", run.run_id), Role::Assistant, text, now_ms());
            message.run_id = Some(run.run_id.clone());
            let event = TurnEvent::Final {
                message: Box::new(message),
                stop_reason: StopReason::Stop,
                usage: Default::default(),
            };
            let _ = replies.send(RunEvent { run, event });
        });
        ChatAccepted { run_id, status: SendStatus::Started }
    }

    /// The node is draining: not ready any more, and clients are told to reconnect elsewhere.
    pub fn begin_drain(&self, restart_expected_ms: Option<u64>) {
        self.draining.store(true, Ordering::SeqCst);
        self.ready.store(false, Ordering::SeqCst);
        let reason = "node draining: reconnect to another node".to_string();
        let _ = self.node_events.send(NodeEvent::Shutdown { reason, restart_expected_ms });
    }

    fn lock_runs(&self) -> std::sync::MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn loaded(&self) -> LoadedConfig {
        self.config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn agent_for(&self, session: &SessionKey) -> Result<String, ServiceError> {
        let agent = agent_of(session, &self.default_agent);
        let known = self.loaded().agent_ids();
        if known.contains(&agent) {
            Ok(agent)
        } else {
            Err(ServiceError::Invalid {
                message: format!(
                    "session {session} names agent {agent:?}, which is not configured (agents: {})",
                    known.join(", ")
                ),
            })
        }
    }

    async fn request(
        &self,
        session: &SessionKey,
        body: RequestBody,
    ) -> Result<Response, ServiceError> {
        self.mesh.request(session.clone(), body).await.map_err(service_error)
    }

    fn track_run(&self, run_id: &str, session: &SessionKey) -> bool {
        let mut runs = self.lock_runs();
        if runs.slots.contains_key(run_id) {
            return false;
        }
        if runs.order.len() >= RUNS_TRACKED_MAX
            && let Some(old) = runs.order.pop_front()
        {
            runs.slots.remove(&old);
        }
        runs.order.push_back(run_id.to_string());
        let (outcome, _) = watch::channel(None);
        runs.slots.insert(
            run_id.to_string(),
            RunSlot { session: session.clone(), started_at_ms: None, outcome },
        );
        true
    }

    async fn summary(&self, key: &SessionKey) -> Result<Option<SessionSummary>, ServiceError> {
        match self.request(key, RequestBody::Read { limit: 1, before: None }).await {
            Ok(Response::History { meta, messages, .. }) => {
                if meta.deleted_at.is_some() {
                    return Ok(None);
                }
                let local = self
                    .mesh
                    .local_sessions()
                    .await
                    .ok()
                    .and_then(|l| l.into_iter().find(|(k, _)| k == key).map(|(_, e)| e));
                let mut entry = local.unwrap_or_default();
                owner_as_node_id(&mut entry);
                entry.session_id = meta.session_id.clone();
                entry.agent_id = meta.agent_id.clone();
                entry.label = meta.label.clone();
                entry.display_name = meta.display_name.clone();
                entry.channel = meta.channel.clone();
                entry.model = meta.model_override.clone();
                entry.input_tokens = meta.input_tokens;
                entry.output_tokens = meta.output_tokens;
                entry.total_tokens = meta.total_tokens;
                entry.spawned_by = meta.spawned_by.clone();
                if let Some(last) = messages.last() {
                    entry.updated_at_ms = entry.updated_at_ms.max(last.timestamp_ms);
                }
                entry.updated_at_ms = entry.updated_at_ms.max(meta.created_at_ms);
                let settings = SessionSettings {
                    thinking_level: meta.thinking_level.clone(),
                    verbose_level: meta.verbose_level.clone(),
                    reasoning_level: meta.reasoning_level.clone(),
                    elevated_level: meta.elevated_level.clone(),
                    fast_mode: meta
                        .fast_mode
                        .map(|on| if on { FastMode::On } else { FastMode::Off }),
                };
                Ok(Some(SessionSummary { key: key.clone(), entry, settings }))
            }
            Ok(other) => Err(ServiceError::Unavailable {
                message: format!("unexpected answer {other:?}"),
                retry_after_ms: None,
            }),
            Err(ServiceError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn mutate(&self, key: &SessionKey, op: SessionOp) -> Result<Response, ServiceError> {
        self.request(key, RequestBody::Mutate(op)).await
    }
}

/// Refuses client writes to the session that holds the exec approval log.
fn refuse_reserved(key: &SessionKey) -> Result<(), ServiceError> {
    if key.as_str() == crate::approvals::APPROVALS_SESSION {
        return Err(ServiceError::Forbidden {
            message: format!("{key} is reserved for exec approvals; use exec.approval.resolve"),
        });
    }
    Ok(())
}

fn service_error(e: RequestError) -> ServiceError {
    match e {
        RequestError::NotFound => ServiceError::NotFound { what: "session".into() },
        RequestError::Invalid(message) => ServiceError::Invalid { message },
        RequestError::Timeout(ms) => ServiceError::Timeout {
            message: format!("no answer from the session's owner within {ms} ms"),
        },
        RequestError::Unavailable(message) => {
            ServiceError::Unavailable { message, retry_after_ms: Some(1_000) }
        }
        RequestError::Storage(message) => {
            ServiceError::Unavailable { message, retry_after_ms: Some(1_000) }
        }
        RequestError::StaleEpoch(message) => {
            ServiceError::Unavailable { message, retry_after_ms: Some(500) }
        }
    }
}

/// The store names a session's owner by the hex of its public key; clients see it as the node
/// id that `status` lists (the PeerId), so an owner can be matched with a member.
fn owner_as_node_id(entry: &mut IndexEntry) {
    if let Some(owner) = entry.owner.as_mut()
        && let Some(epoch) = beamclaw_mesh::core::Epoch::from_record(owner)
    {
        owner.node = epoch.node.to_string();
    }
}

fn doc_patch<T>(p: FieldPatch<T>) -> DocPatch<T> {
    match p {
        FieldPatch::Keep => DocPatch::Leave,
        FieldPatch::Clear => DocPatch::Clear,
        FieldPatch::Set(v) => DocPatch::Set(v),
    }
}

fn fast_mode_patch(p: FieldPatch<FastMode>) -> DocPatch<bool> {
    match p {
        FieldPatch::Keep => DocPatch::Leave,
        FieldPatch::Clear | FieldPatch::Set(FastMode::Auto) => DocPatch::Clear,
        FieldPatch::Set(FastMode::On) => DocPatch::Set(true),
        FieldPatch::Set(FastMode::Off) => DocPatch::Set(false),
    }
}

/// Hands each turn event to its session's channel, if that session has a subscriber here.
async fn route_session_events(
    routes: std::sync::Weak<Mutex<HashMap<SessionKey, broadcast::Sender<RunEvent>>>>,
    mut events: broadcast::Receiver<Event>,
) {
    loop {
        let (run, event) = match events.recv().await {
            Ok(Event::Turn { run, event }) => (run, event),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "session event router fell behind; turn events lost");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(routes) = routes.upgrade() else { return };
        let routes = routes.lock().unwrap_or_else(|e| e.into_inner());
        // A route has a receiver while it exists: the last one's guard removes it.
        if let Some(tx) = routes.get(&run.session) {
            let _ = tx.send(RunEvent { run, event });
        }
    }
}

/// Drops a session's route once its last subscriber has gone (the only place routes are
/// removed). Declared after the receiver in the stream's state, so it runs once that receiver
/// is dropped.
struct RouteGuard {
    routes: SessionRoutes,
    session: SessionKey,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes.get(&self.session).is_some_and(|tx| tx.receiver_count() == 0) {
            routes.remove(&self.session);
        }
    }
}

/// Follows every run submitted here to its end (for `agent.wait`), and ends the subscription
/// its submit took.
async fn track_runs(service: std::sync::Weak<NodeService>, mut events: broadcast::Receiver<Event>) {
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "run tracker fell behind; some runs will be reported by agent.wait timing out"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(service) = service.upgrade() else { return };
        let Event::Turn { run, event } = event else { continue };
        let ended = {
            let mut runs = service.lock_runs();
            let Some(slot) = runs.slots.get_mut(&run.run_id) else { continue };
            let outcome = match &event {
                TurnEvent::Started { at_ms } => {
                    slot.started_at_ms = Some(*at_ms);
                    None
                }
                TurnEvent::Final { message, .. } => Some(RunOutcome {
                    run_id: run.run_id.clone(),
                    status: RunStatus::Ok,
                    started_at_ms: slot.started_at_ms,
                    ended_at_ms: Some(now_ms()),
                    error: None,
                    message: Some((**message).clone()),
                }),
                TurnEvent::Error { message, .. } => Some(RunOutcome {
                    run_id: run.run_id.clone(),
                    status: RunStatus::Error,
                    started_at_ms: slot.started_at_ms,
                    ended_at_ms: Some(now_ms()),
                    error: Some(message.clone()),
                    message: None,
                }),
                TurnEvent::Aborted { .. } => Some(RunOutcome {
                    run_id: run.run_id.clone(),
                    status: RunStatus::Error,
                    started_at_ms: slot.started_at_ms,
                    ended_at_ms: Some(now_ms()),
                    error: Some("aborted".into()),
                    message: None,
                }),
                _ => None,
            };
            match outcome {
                Some(o) if slot.outcome.borrow().is_none() => {
                    // `send_replace`: `send` drops the value when no `agent.wait` is subscribed yet.
                    slot.outcome.send_replace(Some(o));
                    Some(slot.session.clone())
                }
                _ => None,
            }
        };
        if let Some(session) = ended {
            let _ = service.mesh.unsubscribe(session).await;
        }
    }
}

impl GatewayService for NodeService {
    fn node_info(&self) -> NodeInfo {
        self.info.clone()
    }

    fn readiness(&self) -> Readiness {
        if self.draining.load(Ordering::SeqCst) {
            return Readiness { ready: false, reason: Some("draining".into()) };
        }
        Readiness { ready: self.ready.load(Ordering::SeqCst), reason: None }
    }

    async fn status(&self) -> Result<NodeStatus, ServiceError> {
        let status = self.mesh.status().await.map_err(|e| ServiceError::Unavailable {
            message: e.to_string(),
            retry_after_ms: None,
        })?;
        let mut members = vec![Member {
            node_id: self.info.node_id.clone(),
            name: self.info.name.clone(),
            state: if self.draining.load(Ordering::SeqCst) {
                "draining".into()
            } else {
                "alive".into()
            },
            address: Some(self.mesh.mesh_addr().to_string()),
            version: Some(self.info.version.clone()),
            sessions_owned: Some(status.sessions_owned as u64),
        }];
        for m in &status.members {
            members.push(Member {
                node_id: m.node.to_string(),
                name: m.node.short(),
                state: if m.alive { "alive".into() } else { "down".into() },
                address: Some(m.addr.to_string()),
                version: None,
                sessions_owned: None,
            });
        }
        let providers = serde_json::to_value(self.stats.snapshot()).unwrap_or(Value::Null);
        Ok(NodeStatus {
            members,
            sessions_owned: status.sessions_owned as u64,
            sessions_replicated: status.sessions_known as u64,
            providers: json!({
                "models": providers,
                "mesh": {
                    "generation": status.node.map(|n| n.short()),
                    "hydrated": status.sessions_hydrated,
                    "hydratedBytes": status.hydrated_bytes,
                    "pendingRequests": status.pending_requests,
                    "pendingWrites": status.pending_writes,
                    "handoffs": status.handoffs_in_progress,
                    "syncExchanges": status.sync_exchanges,
                    "counters": status.counters,
                }
            }),
        })
    }

    async fn health(&self) -> Result<NodeHealth, ServiceError> {
        let mut sessions = self.mesh.local_sessions().await.map_err(|e| {
            ServiceError::Unavailable { message: e.to_string(), retry_after_ms: None }
        })?;
        sessions.retain(|(_, e)| e.deleted_at_ms.is_none());
        sessions.sort_by_key(|s| std::cmp::Reverse(s.1.updated_at_ms));
        let recent = sessions
            .iter()
            .take(HEALTH_RECENT_SESSIONS)
            .map(|(k, e)| RecentSession { key: k.clone(), updated_at_ms: e.updated_at_ms })
            .collect();
        Ok(NodeHealth {
            ok: !self.draining.load(Ordering::SeqCst),
            session_count: sessions.len() as u64,
            recent,
        })
    }

    async fn models(&self) -> Result<Vec<ModelInfo>, ServiceError> {
        let loaded = self.loaded();
        let mut out = vec![ModelInfo {
            id: format!("{}/offline", config::OFFLINE_PROVIDER_ID),
            name: "BeamClaw offline (no model configured)".into(),
            provider: config::OFFLINE_PROVIDER_ID.into(),
            context_window: None,
            reasoning: false,
            available: true,
        }];
        for (provider, p) in &loaded.config.models.providers {
            for m in &p.models {
                out.push(ModelInfo {
                    id: format!("{provider}/{}", m.id),
                    name: m.name.clone().unwrap_or_else(|| m.id.clone()),
                    provider: provider.clone(),
                    context_window: m.context_window.map(u64::from),
                    reasoning: m.reasoning.unwrap_or(false),
                    available: true,
                });
            }
        }
        Ok(out)
    }

    async fn config_get(&self) -> Result<Value, ServiceError> {
        let raw = std::fs::read_to_string(&self.config_file).unwrap_or_default();
        Ok(config_view(&self.config_file, &raw))
    }

    async fn config_write(&self, write: ConfigWrite) -> Result<Value, ServiceError> {
        let current = std::fs::read_to_string(&self.config_file).unwrap_or_default();
        if let Some(base) = &write.base_hash
            && *base != hash_of(&current)
        {
            return Err(ServiceError::Invalid {
                message: "the config changed since it was read (baseHash does not match): read it again and reapply".into(),
            });
        }
        let next = match write.mode {
            ConfigWriteMode::Set => write.raw.clone(),
            ConfigWriteMode::Patch => {
                let mut base: Value = if current.trim().is_empty() {
                    json!({})
                } else {
                    json5::from_str(&current).map_err(|e| ServiceError::Invalid {
                        message: format!("the current config does not parse: {e}"),
                    })?
                };
                let patch: Value = json5::from_str(&write.raw).map_err(|e| {
                    ServiceError::Invalid { message: format!("the patch does not parse: {e}") }
                })?;
                merge_patch(&mut base, patch);
                serde_json::to_string_pretty(&base)
                    .map_err(|e| ServiceError::Invalid { message: e.to_string() })?
            }
        };
        let origin = self.config_file.display().to_string();
        config::parse_str(&next, &origin, &config::process_env)
            .map_err(|e| ServiceError::Invalid { message: e.to_string() })?;
        write_atomically(&self.config_file, &next).map_err(|e| ServiceError::Unavailable {
            message: format!("cannot write {}: {e}", self.config_file.display()),
            retry_after_ms: None,
        })?;
        tracing::info!(path = %self.config_file.display(), "config written; restart the node to apply it");
        let mut view = config_view(&self.config_file, &next);
        if let Some(obj) = view.as_object_mut() {
            obj.insert("restartRequired".into(), Value::Bool(true));
        }
        Ok(view)
    }

    async fn chat_send(&self, send: ChatSend) -> Result<ChatAccepted, ServiceError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(ServiceError::Unavailable {
                message: "this node is draining; send to another node".into(),
                retry_after_ms: Some(500),
            });
        }
        refuse_reserved(&send.session)?;
        if let Some(parsed) = crate::approvals::parse_approve_command(&send.message) {
            return Ok(self.approve_from_chat(send, parsed));
        }
        let agent_id = self.agent_for(&send.session)?;
        let mut message = Message::user_text("", send.message.clone(), now_ms());
        for a in &send.attachments {
            if let (Some(mime), Value::String(content)) = (&a.mime_type, &a.content)
                && mime.starts_with("image/")
            {
                let reference = if content.starts_with("data:") {
                    content.clone()
                } else {
                    format!("data:{mime};base64,{content}")
                };
                message.content.push(ContentPart::Image { mime_type: mime.clone(), reference });
            }
        }
        // Subscribe before submitting, so the turn's first events are not missed.
        let fresh = self.track_run(&send.idempotency_key, &send.session);
        if fresh {
            let _ = self.mesh.subscribe(send.session.clone()).await;
            let (mesh, session) = (self.mesh.clone(), send.session.clone());
            let runs = self.runs.clone();
            let run_id = send.idempotency_key.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(RUN_SUBSCRIPTION_MS)).await;
                let still_open = runs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .slots
                    .get(&run_id)
                    .is_some_and(|s| s.outcome.borrow().is_none());
                if still_open {
                    let _ = mesh.unsubscribe(session).await;
                }
            });
        }
        let body = RequestBody::Submit {
            agent_id,
            message: Box::new(message),
            idempotency_key: send.idempotency_key.clone(),
        };
        match self.request(&send.session, body).await? {
            Response::Submitted { run_id, status, .. } => {
                let status = match status {
                    MeshRunStatus::Started => SendStatus::Started,
                    MeshRunStatus::InFlight => SendStatus::InFlight,
                    MeshRunStatus::Done => SendStatus::Ok,
                };
                Ok(ChatAccepted { run_id, status })
            }
            other => Err(ServiceError::Unavailable {
                message: format!("unexpected answer {other:?}"),
                retry_after_ms: None,
            }),
        }
    }

    async fn chat_history(&self, query: HistoryQuery) -> Result<ChatHistory, ServiceError> {
        let limit = query.limit.clamp(1, beamclaw_crdt::HISTORY_LIMIT_MAX);
        match self.request(&query.session, RequestBody::Read { limit, before: None }).await? {
            Response::History { session_id, messages, meta, .. } => Ok(ChatHistory {
                session_id,
                messages: messages.into_iter().map(Arc::unwrap_or_clone).collect(),
                thinking_level: meta.thinking_level.clone(),
            }),
            other => Err(ServiceError::Unavailable {
                message: format!("unexpected answer {other:?}"),
                retry_after_ms: None,
            }),
        }
    }

    async fn chat_abort(&self, target: AbortTarget) -> Result<AbortOutcome, ServiceError> {
        let session = match (&target.session, &target.run_id) {
            (Some(s), _) => s.clone(),
            (None, Some(run)) => match self.lock_runs().slots.get(run) {
                Some(slot) => slot.session.clone(),
                None => return Ok(AbortOutcome { aborted: false, run_ids: Vec::new() }),
            },
            (None, None) => {
                return Err(ServiceError::Invalid {
                    message: "chat.abort needs sessionKey or runId".into(),
                });
            }
        };
        match self.mutate(&session, SessionOp::Abort { run_id: target.run_id.clone() }).await {
            Ok(Response::Mutated { aborted_runs, .. }) => {
                Ok(AbortOutcome { aborted: !aborted_runs.is_empty(), run_ids: aborted_runs })
            }
            Ok(_) => Ok(AbortOutcome { aborted: false, run_ids: Vec::new() }),
            Err(ServiceError::NotFound { .. }) => {
                Ok(AbortOutcome { aborted: false, run_ids: Vec::new() })
            }
            Err(e) => Err(e),
        }
    }

    async fn chat_inject(&self, inject: ChatInject) -> Result<Message, ServiceError> {
        refuse_reserved(&inject.session)?;
        let id = format!("i:{}", uuid::Uuid::new_v4().simple());
        let mut message = Message::text(id, Role::Assistant, inject.text.clone(), now_ms());
        message.stop_reason = Some(StopReason::Stop);
        if let Some(label) = &inject.label {
            message.model = Some(format!("injected:{label}"));
        }
        self.mutate(&inject.session, SessionOp::Inject(Box::new(message.clone()))).await?;
        Ok(message)
    }

    async fn run_wait(&self, run_id: String, timeout_ms: u64) -> Result<RunOutcome, ServiceError> {
        let rx = self.lock_runs().slots.get(&run_id).map(|s| s.outcome.subscribe());
        let Some(mut rx) = rx else {
            return Err(ServiceError::NotFound {
                what: format!("run {run_id} (runs are tracked on the node they were sent to)"),
            });
        };
        let started = self.lock_runs().slots.get(&run_id).and_then(|s| s.started_at_ms);
        let wait = async {
            loop {
                if let Some(o) = rx.borrow().clone() {
                    return Some(o);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        match tokio::time::timeout(Duration::from_millis(timeout_ms), wait).await {
            Ok(Some(outcome)) => Ok(outcome),
            _ => Ok(RunOutcome {
                run_id,
                status: RunStatus::Timeout,
                started_at_ms: started,
                ended_at_ms: None,
                error: None,
                message: None,
            }),
        }
    }

    async fn sessions_list(
        &self,
        query: SessionQuery,
    ) -> Result<Vec<SessionSummary>, ServiceError> {
        let sessions = self.mesh.local_sessions().await.map_err(|e| ServiceError::Unavailable {
            message: e.to_string(),
            retry_after_ms: None,
        })?;
        let now = now_ms();
        let search = query.search.as_ref().map(|s| s.to_lowercase());
        let mut out: Vec<(SessionKey, IndexEntry)> = sessions
            .into_iter()
            .filter(|(_, e)| e.deleted_at_ms.is_none() && !e.session_id.is_empty())
            // The reserved exec-approvals log is the mesh's, not a conversation.
            .filter(|(k, _)| k.as_str() != crate::approvals::APPROVALS_SESSION)
            .filter(|(_, e)| query.agent_id.as_ref().is_none_or(|a| *a == e.agent_id))
            .filter(|(_, e)| query.label.as_ref().is_none_or(|l| e.label.as_ref() == Some(l)))
            .filter(|(_, e)| {
                query.active_minutes.is_none_or(|m| {
                    now - e.updated_at_ms <= i64::try_from(m).unwrap_or(i64::MAX / 120_000) * 60_000
                })
            })
            .filter(|(k, e)| {
                search.as_ref().is_none_or(|s| {
                    k.as_str().to_lowercase().contains(s)
                        || e.label.as_ref().is_some_and(|l| l.to_lowercase().contains(s))
                        || e.display_name.as_ref().is_some_and(|d| d.to_lowercase().contains(s))
                })
            })
            .collect();
        out.sort_by(|a, b| b.1.updated_at_ms.cmp(&a.1.updated_at_ms).then_with(|| a.0.cmp(&b.0)));
        out.truncate(query.limit.unwrap_or(SESSIONS_LIST_DEFAULT).min(SESSIONS_LIST_MAX));
        Ok(out
            .into_iter()
            .map(|(key, mut entry)| {
                owner_as_node_id(&mut entry);
                SessionSummary { key, entry, settings: SessionSettings::default() }
            })
            .collect())
    }

    async fn session_get(&self, key: SessionKey) -> Result<Option<SessionSummary>, ServiceError> {
        self.summary(&key).await
    }

    async fn session_create(&self, create: SessionCreate) -> Result<SessionSummary, ServiceError> {
        let agent = create.agent_id.clone().unwrap_or_else(|| self.default_agent.clone());
        let key = match create.key.clone() {
            Some(k) => k,
            None => {
                SessionKey::new(format!("agent:{agent}:session:{}", uuid::Uuid::new_v4().simple()))
                    .map_err(|e| ServiceError::Invalid { message: e.to_string() })?
            }
        };
        let agent_id = self.agent_for(&key)?;
        self.mutate(&key, SessionOp::Create { agent_id, at_ms: now_ms() }).await?;
        let patch = MetaPatch {
            label: create.label.clone().map_or(DocPatch::Leave, DocPatch::Set),
            model_override: create.model.clone().map_or(DocPatch::Leave, DocPatch::Set),
            thinking_level: create.thinking_level.clone().map_or(DocPatch::Leave, DocPatch::Set),
            ..MetaPatch::default()
        };
        if patch != MetaPatch::default() {
            self.mutate(&key, SessionOp::Patch(Box::new(patch))).await?;
        }
        self.summary(&key).await?.ok_or(ServiceError::NotFound { what: format!("session {key}") })
    }

    async fn session_patch(
        &self,
        key: SessionKey,
        patch: SessionPatch,
    ) -> Result<SessionSummary, ServiceError> {
        refuse_reserved(&key)?;
        let patch = MetaPatch {
            label: doc_patch(patch.label),
            model_override: doc_patch(patch.model),
            thinking_level: doc_patch(patch.thinking_level),
            verbose_level: doc_patch(patch.verbose_level),
            reasoning_level: doc_patch(patch.reasoning_level),
            elevated_level: doc_patch(patch.elevated_level),
            fast_mode: fast_mode_patch(patch.fast_mode),
            ..MetaPatch::default()
        };
        self.mutate(&key, SessionOp::Patch(Box::new(patch))).await?;
        self.summary(&key).await?.ok_or(ServiceError::NotFound { what: format!("session {key}") })
    }

    async fn session_reset(
        &self,
        key: SessionKey,
        reason: ResetReason,
    ) -> Result<SessionSummary, ServiceError> {
        refuse_reserved(&key)?;
        let reason = match reason {
            ResetReason::New => "new",
            ResetReason::Reset => "reset",
        };
        let session_id = uuid::Uuid::new_v4().to_string();
        self.mutate(&key, SessionOp::Reset { session_id, reason: reason.into(), at_ms: now_ms() })
            .await?;
        self.summary(&key).await?.ok_or(ServiceError::NotFound { what: format!("session {key}") })
    }

    async fn session_delete(
        &self,
        key: SessionKey,
        _delete_transcript: bool,
    ) -> Result<bool, ServiceError> {
        refuse_reserved(&key)?;
        // The transcript is always kept as an archive behind the tombstone: a replica that missed
        // the delete must not bring the session back, and data is never destroyed by a client.
        match self.mutate(&key, SessionOp::Delete { at_ms: now_ms() }).await {
            Ok(_) => {
                let _ = self
                    .node_events
                    .send(NodeEvent::SessionsChanged { key, change: SessionChange::Deleted });
                Ok(true)
            }
            Err(ServiceError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn tools_invoke(&self, invocation: ToolInvocation) -> Result<Value, ServiceError> {
        let Some(tool) = self.tools.get(&invocation.tool).cloned() else {
            return Err(ServiceError::NotFound { what: format!("tool {}", invocation.tool) });
        };
        let session = match invocation.session.clone() {
            Some(s) => s,
            None => SessionKey::new(format!(
                "agent:{}:main",
                invocation.agent_id.clone().unwrap_or_else(|| self.default_agent.clone())
            ))
            .map_err(|e| ServiceError::Invalid { message: e.to_string() })?,
        };
        let agent_id = agent_of(&session, &self.default_agent);
        let workspace = self
            .loaded()
            .agent(&agent_id)
            .map(|a| a.workspace)
            .unwrap_or_else(|| self.loaded().data_dir.join("workspace"));
        let ctx = ToolContext {
            session,
            epoch: 0,
            run_id: invocation
                .idempotency_key
                .clone()
                .unwrap_or_else(|| format!("http:{}", uuid::Uuid::new_v4().simple())),
            agent_id,
            workspace,
            cancel: tokio_util::sync::CancellationToken::new(),
        };
        let output = tool.run(invocation.args.clone(), &ctx).await;
        Ok(json!({ "content": output.content, "isError": output.is_error }))
    }

    async fn subscribe_session(
        &self,
        key: SessionKey,
    ) -> Result<BoxStream<'static, RunEvent>, ServiceError> {
        // Declared before the receiver so that, on an early return too, it drops after it.
        let route = RouteGuard { routes: self.routes.clone(), session: key.clone() };
        // The route exists before the mesh subscription, so no event of it is missed.
        let events = {
            let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            routes
                .entry(key.clone())
                .or_insert_with(|| broadcast::channel(SESSION_EVENTS_BUFFER).0)
                .subscribe()
        };
        self.mesh.subscribe(key.clone()).await.map_err(|e| ServiceError::Unavailable {
            message: e.to_string(),
            retry_after_ms: None,
        })?;
        let guard = Unsubscribe { mesh: self.mesh.clone(), session: Some(key.clone()) };
        let replies_key = key.clone();
        let stream = futures::stream::unfold((events, route, guard), move |state| {
            let key = key.clone();
            async move {
                let (mut events, route, guard) = state;
                loop {
                    match events.recv().await {
                        Ok(e) => return Some((e, (events, route, guard))),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(session = %key, missed = n, "session feed fell behind; turn events lost");
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        let replies = futures::stream::unfold(self.command_replies.subscribe(), move |mut rx| {
            let key = replies_key.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(e) if e.run.session == key => return Some((e, rx)),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(futures::stream::select(stream, replies).boxed())
    }

    async fn exec_approvals_list(&self) -> Result<Vec<ExecApproval>, ServiceError> {
        super::approvals::list(self.approvals()?).await
    }

    async fn exec_approval_get(&self, id: String) -> Result<ExecApproval, ServiceError> {
        super::approvals::get(self.approvals()?, &id).await
    }

    async fn exec_approval_resolve(
        &self,
        id: String,
        decision: String,
        resolved_by: String,
    ) -> Result<ExecApprovalResolution, ServiceError> {
        super::approvals::resolve(self.approvals()?, &id, &decision, &resolved_by).await
    }

    fn node_events(&self) -> BoxStream<'static, NodeEvent> {
        let own = tokio_stream_from(self.node_events.subscribe());
        let mesh = self.mesh.clone();
        let from_mesh = futures::stream::unfold(self.mesh.events(), move |mut events| {
            let mesh = mesh.clone();
            async move {
                loop {
                    let event = match events.recv().await {
                        Ok(e) => e,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    };
                    let out = match event {
                        Event::SessionChanged { session } => NodeEvent::SessionsChanged {
                            key: session,
                            change: SessionChange::Updated,
                        },
                        Event::MemberUp(_) | Event::MemberDown(_) => match mesh.status().await {
                            Ok(s) => NodeEvent::Members(
                                s.members
                                    .iter()
                                    .map(|m| Member {
                                        node_id: m.node.to_string(),
                                        name: m.node.short(),
                                        state: if m.alive { "alive".into() } else { "down".into() },
                                        address: Some(m.addr.to_string()),
                                        version: None,
                                        sessions_owned: None,
                                    })
                                    .collect(),
                            ),
                            Err(_) => return None,
                        },
                        _ => continue,
                    };
                    return Some((out, events));
                }
            }
        });
        futures::stream::select(own, from_mesh).boxed()
    }

    async fn skills_status(
        &self,
        agent_id: Option<String>,
        session: Option<SessionKey>,
    ) -> Result<Value, ServiceError> {
        let agent = agent_id
            .or_else(|| session.as_ref().map(|k| agent_of(k, &self.default_agent)))
            .unwrap_or_else(|| self.default_agent.clone());
        let loaded = self.config.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Reading skill folders is file I/O: off the async workers.
        tokio::task::spawn_blocking(move || crate::skills::status_for_agent(&loaded, &agent))
            .await
            .map_err(|e| ServiceError::Unavailable {
                message: format!("skills.status failed: {e}"),
                retry_after_ms: None,
            })?
            .map_err(|what| ServiceError::NotFound { what })
    }
}

fn tokio_stream_from(rx: broadcast::Receiver<NodeEvent>) -> BoxStream<'static, NodeEvent> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((e, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

/// Ends a session subscription when the stream that holds it is dropped (the gateway's event
/// streams here, the session tools' in `sessions_api.rs`).
pub(super) struct Unsubscribe {
    pub(super) mesh: MeshHandle,
    pub(super) session: Option<SessionKey>,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let mesh = self.mesh.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = mesh.unsubscribe(session).await;
                });
            }
        }
    }
}

fn hash_of(raw: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(raw.as_bytes()))
}

/// `config.get`'s answer: the file as written, its hash, and the parsed config with secrets
/// redacted.
fn config_view(path: &std::path::Path, raw: &str) -> Value {
    let parsed: Option<Value> =
        if raw.trim().is_empty() { Some(json!({})) } else { json5::from_str(raw).ok() };
    let redacted = parsed.map(|mut v| {
        redact(&mut v);
        v
    });
    json!({
        "path": path.display().to_string(),
        "exists": path.exists(),
        "raw": raw,
        "hash": hash_of(raw),
        "valid": redacted.is_some(),
        "config": redacted.unwrap_or(Value::Null),
    })
}

/// Secrets never leave the node through `config.get`.
fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let lower = k.to_lowercase();
                let secret = ["apikey", "token", "password", "secret", "clustersecret"]
                    .iter()
                    .any(|s| lower.contains(s));
                if secret && child.is_string() {
                    *child = Value::String("***".into());
                } else {
                    redact(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// RFC 7396 JSON merge patch.
fn merge_patch(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        merge_patch(t.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other,
    }
}

fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json5.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_come_from_session_keys() {
        let k = |s: &str| SessionKey::new(s).unwrap();
        assert_eq!(agent_of(&k("agent:ops:main"), "main"), "ops");
        assert_eq!(agent_of(&k("agent:Ops:direct:bob"), "main"), "ops");
        assert_eq!(agent_of(&k("global"), "main"), "main");
        assert_eq!(agent_of(&k("agent::x"), "main"), "main");
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut a = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut a, json!({"b": {"c": null, "e": 4}, "f": [1]}));
        assert_eq!(a, json!({"a": 1, "b": {"d": 3, "e": 4}, "f": [1]}));
    }

    #[test]
    fn config_view_redacts_secrets() {
        let v = config_view(
            std::path::Path::new("/x"),
            "{gateway: {auth: {token: 'abc'}}, models: {providers: {a: {apiKey: 'k'}}}}",
        );
        let text = v["config"].to_string();
        assert!(!text.contains("abc") && !text.contains("\"k\""), "{text}");
        assert_eq!(v["valid"], true);
    }
}
