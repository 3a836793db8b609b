//! The session tools: `sessions_list`, `sessions_history`, `sessions_send`, `session_status`
//! and `sessions_spawn` (OpenClaw's names and argument names).
//!
//! Owns: the tools, their argument checks, what an agent may see ([`SessionVisibility`]), and
//! the [`SessionsApi`] port through which they reach sessions. The node implements the port over
//! the mesh (`serve::sessions_api`), so a session owned by any node of the cluster is reached the
//! same way; tests implement it in memory.
//! Must not know: the mesh, the wire.
//!
//! Visibility (documented in docs/skills.md): an agent sees its own agent's sessions; a
//! sub-agent sees only itself and sessions it spawned. Sending into a session marks the message
//! with the sender's session key, so the receiving agent never mistakes it for its user.

use super::{Tool, ToolContext, ToolOutput, ToolRegistry};
use crate::subagents::{Cleanup, RunEnd, SpawnRequest, Supervisor, follow_run};
use beamclaw_crdt::doc::SessionMeta;
use beamclaw_crdt::{ContentPart, IndexEntry, Message, Role, SessionKey};
use beamclaw_mesh::core::turn::{RunRef, TurnEvent};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// `sessions_list` returns this many sessions when the model names no `limit`...
pub const LIST_LIMIT_DEFAULT: usize = 50;
/// ...and at most this many.
pub const LIST_LIMIT_MAX: usize = 200;
/// `sessions_history` returns this many messages when the model names no `limit`...
pub const HISTORY_LIMIT_DEFAULT: usize = 20;
/// ...and at most this many.
pub const HISTORY_LIMIT_MAX: usize = 200;
/// Characters of one message's text shown by `sessions_history` / `sessions_list`.
pub const MESSAGE_CHARS_MAX: usize = 4_000;
/// Messages per session `sessions_list` may include (`messageLimit`).
pub const LIST_MESSAGES_MAX: usize = 20;
/// `sessions_send` waits this long for the reply when the model names no `timeoutSeconds`...
pub const SEND_WAIT_SECONDS_DEFAULT: u64 = 30;
/// ...and at most this long.
pub const SEND_WAIT_SECONDS_MAX: u64 = 600;
/// Longest message `sessions_send` / `sessions_spawn` accept, in bytes.
pub const SEND_MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Longest label, in characters.
pub const LABEL_CHARS_MAX: usize = 128;

/// A failure of the sessions port, in words the model can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionsError {
    #[error("session {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("sessions are unreachable right now: {0}")]
    Unavailable(String),
}

/// A session read through the port.
#[derive(Clone, Debug, Default)]
pub struct SessionRead {
    pub session_id: String,
    pub meta: SessionMeta,
    pub messages: Vec<Message>,
    pub more: bool,
}

/// A message accepted into a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub run_id: String,
    pub message_id: String,
    /// The node that owned the session when it accepted the message.
    pub owner: String,
    /// The same idempotency key was submitted before (nothing new was appended).
    pub duplicate: bool,
}

/// Metadata of a session created by `sessions_spawn`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewSession {
    pub spawned_by: Option<SessionKey>,
    pub spawn_depth: Option<u64>,
    pub label: Option<String>,
    pub model: Option<String>,
}

/// How the session tools and sub-agents reach sessions, wherever they are owned.
pub trait SessionsApi: Send + Sync {
    /// This node's id (as message authors and owner records name it).
    fn node_id(&self) -> String;
    /// The sessions this node holds (a replica or ownership), deleted ones left out; owners are
    /// named by node id (as [`SessionsApi::node_id`]).
    fn list(&self) -> BoxFuture<'_, Result<Vec<(SessionKey, IndexEntry)>, SessionsError>>;
    /// The last `limit` messages and the metadata, from the session's owner.
    fn read<'a>(
        &'a self,
        key: &'a SessionKey,
        limit: usize,
    ) -> BoxFuture<'a, Result<SessionRead, SessionsError>>;
    /// Appends a user message and starts a turn for it on the session's owner.
    fn submit<'a>(
        &'a self,
        key: &'a SessionKey,
        agent_id: &'a str,
        text: String,
        idempotency_key: String,
    ) -> BoxFuture<'a, Result<Submitted, SessionsError>>;
    /// Creates a session (idempotent) and sets its metadata.
    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        agent_id: &'a str,
        meta: NewSession,
    ) -> BoxFuture<'a, Result<(), SessionsError>>;
    /// Deletes a session (its transcript stays as an archive).
    fn delete<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<(), SessionsError>>;
    /// Aborts a run of a session.
    fn abort<'a>(
        &'a self,
        key: &'a SessionKey,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<(), SessionsError>>;
    /// The turn events of a session from now on, until the stream is dropped.
    fn follow<'a>(
        &'a self,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<BoxStream<'static, (RunRef, TurnEvent)>, SessionsError>>;
    /// Sessions this node has just become the owner of (takeover or handoff).
    fn owned_changes(&self) -> BoxStream<'static, SessionKey>;
}

/// Which sessions an agent's session tools may see and act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionVisibility {
    /// Only the calling session.
    OnlySelf,
    /// The calling session and the sessions it spawned.
    Tree,
    /// Every session of the calling session's agent (and the ones it spawned as other agents).
    #[default]
    Agent,
    /// Every session.
    All,
}

/// The agent id of a session key (`agent:<id>:...`), else `default`.
pub fn agent_of_key(key: &SessionKey, default: &str) -> String {
    let mut parts = key.as_str().splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("agent"), Some(agent), Some(_)) if !agent.is_empty() => agent.to_ascii_lowercase(),
        _ => default.to_string(),
    }
}

/// OpenClaw's session kinds, from the key.
pub fn kind_of_key(key: &SessionKey) -> &'static str {
    let k = key.as_str();
    if k.contains(":subagent:") {
        "subagent"
    } else if k.starts_with("cron:") || k.contains(":cron:") {
        "cron"
    } else if k.starts_with("hook:") || k.contains(":hook:") {
        "hook"
    } else if k.contains(":group:") || k.contains(":channel:") {
        "group"
    } else if k == "global" || k.split(':').count() == 3 {
        "main"
    } else {
        "other"
    }
}

/// What the session tools need from the config.
#[derive(Clone, Debug, Default)]
pub struct SessionToolsConfig {
    pub default_agent: String,
    /// Each agent's primary model (`provider/model`), for `session_status`.
    pub agent_models: BTreeMap<String, String>,
    pub visibility: SessionVisibility,
}

impl SessionToolsConfig {
    pub fn from_loaded(loaded: &crate::config::LoadedConfig) -> Self {
        let agent_models = loaded
            .agent_ids()
            .into_iter()
            .filter_map(|id| loaded.agent(&id).map(|a| (id, a.model.primary.to_string())))
            .collect();
        SessionToolsConfig {
            default_agent: loaded.default_agent_id(),
            agent_models,
            visibility: SessionVisibility::default(),
        }
    }
}

struct Shared {
    api: Arc<dyn SessionsApi>,
    config: SessionToolsConfig,
}

impl Shared {
    /// The visibility of the calling session: a sub-agent sees at most its own tree.
    fn visibility_for(&self, ctx: &ToolContext) -> SessionVisibility {
        if kind_of_key(&ctx.session) == "subagent" {
            match self.config.visibility {
                SessionVisibility::OnlySelf => SessionVisibility::OnlySelf,
                _ => SessionVisibility::Tree,
            }
        } else {
            self.config.visibility
        }
    }

    fn visible(
        &self,
        ctx: &ToolContext,
        key: &SessionKey,
        agent_id: &str,
        spawned_by: Option<&str>,
    ) -> bool {
        let own = *key == ctx.session;
        let child = spawned_by == Some(ctx.session.as_str());
        match self.visibility_for(ctx) {
            SessionVisibility::OnlySelf => own,
            SessionVisibility::Tree => own || child,
            SessionVisibility::Agent => own || child || agent_id == ctx.agent_id,
            SessionVisibility::All => true,
        }
    }

    /// `sessions_spawn`'s `model`: BeamClaw runs a session on its agent's model chain (it does
    /// not honour per-session model overrides yet), so a model other than the agent's own is
    /// refused rather than silently ignored. `provider/model` or the bare model id match.
    fn check_model(&self, agent: &str, model: &str) -> Result<(), ToolOutput> {
        let own = self.config.agent_models.get(agent);
        let same =
            own.is_some_and(|o| o == model || o.split_once('/').is_some_and(|(_, id)| id == model));
        if same {
            return Ok(());
        }
        let runs_on = own
            .map(|o| format!("agent {agent:?} runs on {o}"))
            .unwrap_or_else(|| format!("agent {agent:?} has no model configured here"));
        Err(ToolOutput::error(format!(
            "sessions_spawn refused: model {model:?} cannot be chosen per sub-agent in BeamClaw ({runs_on}); omit `model`, or spawn an agent configured with that model (agentId)"
        )))
    }

    fn refusal(&self, ctx: &ToolContext, key: &SessionKey) -> ToolOutput {
        let rule = match self.visibility_for(ctx) {
            SessionVisibility::OnlySelf => "only its own session",
            SessionVisibility::Tree => "only itself and the sub-agents it spawned",
            SessionVisibility::Agent => "only sessions of its own agent",
            SessionVisibility::All => "every session",
        };
        ToolOutput::error(format!(
            "session {key} is not visible to this session (it may see {rule})"
        ))
    }

    /// Reads a session the caller may see; the error output when it may not or it fails.
    async fn read_visible(
        &self,
        ctx: &ToolContext,
        key: &SessionKey,
        limit: usize,
    ) -> Result<SessionRead, ToolOutput> {
        let read = self.api.read(key, limit).await.map_err(|e| ToolOutput::error(e.to_string()))?;
        if read.meta.deleted_at.is_some() {
            return Err(ToolOutput::error(format!("session {key} was deleted")));
        }
        let agent = if read.meta.agent_id.is_empty() {
            agent_of_key(key, &self.config.default_agent)
        } else {
            read.meta.agent_id.clone()
        };
        if !self.visible(ctx, key, &agent, read.meta.spawned_by.as_deref()) {
            return Err(self.refusal(ctx, key));
        }
        Ok(read)
    }
}

fn cap_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max).collect();
    out.push_str(&format!("… [cut at {max} characters]"));
    out
}

/// A message as the session tools show it.
fn message_json(m: &Message, include_tools: bool) -> Option<Value> {
    let is_tool = m.role == Role::ToolResult
        || m.content.iter().any(|p| matches!(p, ContentPart::ToolCall { .. }));
    if is_tool && !include_tools {
        return None;
    }
    let mut v = json!({
        "role": m.role.as_str(),
        "text": cap_chars(&m.text_content(), MESSAGE_CHARS_MAX),
        "timestamp": m.timestamp_ms,
    });
    if include_tools {
        let calls: Vec<Value> = m
            .content
            .iter()
            .filter_map(|p| match p {
                ContentPart::ToolCall { name, arguments, .. } => {
                    Some(json!({"name": name, "arguments": cap_chars(&arguments.to_string(), MESSAGE_CHARS_MAX)}))
                }
                ContentPart::ToolResult { tool_name, content, is_error, .. } => Some(
                    json!({"toolName": tool_name, "result": cap_chars(content, MESSAGE_CHARS_MAX), "isError": is_error}),
                ),
                _ => None,
            })
            .collect();
        if !calls.is_empty()
            && let Some(o) = v.as_object_mut()
        {
            o.insert("tools".into(), Value::Array(calls));
        }
    }
    if m.partial
        && let Some(o) = v.as_object_mut()
    {
        o.insert("partial".into(), Value::Bool(true));
    }
    Some(v)
}

fn parse_key(args: &Value, field: &str) -> Result<Option<SessionKey>, ToolOutput> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => SessionKey::new(s.trim())
            .map(Some)
            .map_err(|e| ToolOutput::error(format!("{field} {s:?} is not a session key: {e}"))),
        Some(other) => Err(ToolOutput::error(format!("{field} must be a string, not {other}"))),
    }
}

fn opt_u64(args: &Value, field: &str, max: u64) -> Result<Option<u64>, ToolOutput> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(ToolOutput::error(format!("{field} must be an integer from 0 to {max}"))),
        },
    }
}

fn opt_str<'a>(args: &'a Value, field: &str) -> Result<Option<&'a str>, ToolOutput> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(ToolOutput::error(format!("{field} must be a string, not {other}"))),
    }
}

fn output(v: Value) -> ToolOutput {
    ToolOutput::ok(serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string()))
}

/// Registers the five session tools.
pub fn register(
    registry: &mut ToolRegistry,
    api: Arc<dyn SessionsApi>,
    supervisor: Arc<Supervisor>,
    config: SessionToolsConfig,
) -> Result<(), super::RegistryError> {
    let shared = Arc::new(Shared { api, config });
    registry.register(Arc::new(SessionsList(shared.clone())))?;
    registry.register(Arc::new(SessionsHistory(shared.clone())))?;
    registry.register(Arc::new(SessionsSend(shared.clone())))?;
    registry.register(Arc::new(SessionStatus(shared.clone())))?;
    registry.register(Arc::new(SessionsSpawn { shared, supervisor }))?;
    Ok(())
}

struct SessionsList(Arc<Shared>);

impl Tool for SessionsList {
    fn name(&self) -> &str {
        "sessions_list"
    }
    fn description(&self) -> &str {
        "List sessions you may see (your agent's sessions and the sub-agents you spawned), newest first, with their kind, label, model, token counts and owner node."
    }
    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "kinds": {"type": "array", "items": {"type": "string", "enum": ["main", "group", "cron", "hook", "subagent", "other"]}},
                "limit": {"type": "integer", "minimum": 1, "maximum": LIST_LIMIT_MAX},
                "activeMinutes": {"type": "integer", "minimum": 1},
                "messageLimit": {"type": "integer", "minimum": 0, "maximum": LIST_MESSAGES_MAX},
            },
            "additionalProperties": false
        })
    }
    fn run<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let s = &self.0;
            let limit = match opt_u64(&args, "limit", LIST_LIMIT_MAX as u64) {
                Ok(n) => n.map(|n| n.max(1) as usize).unwrap_or(LIST_LIMIT_DEFAULT),
                Err(e) => return e,
            };
            let active = match opt_u64(&args, "activeMinutes", u64::from(u32::MAX)) {
                Ok(n) => n,
                Err(e) => return e,
            };
            let message_limit = match opt_u64(&args, "messageLimit", LIST_MESSAGES_MAX as u64) {
                Ok(n) => n.unwrap_or(0) as usize,
                Err(e) => return e,
            };
            let kinds: Vec<String> = args
                .get("kinds")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default();
            let rows = match s.api.list().await {
                Ok(r) => r,
                Err(e) => return ToolOutput::error(e.to_string()),
            };
            let now = chrono::Utc::now().timestamp_millis();
            let mut rows: Vec<(SessionKey, IndexEntry)> = rows
                .into_iter()
                .filter(|(_, e)| e.deleted_at_ms.is_none() && !e.session_id.is_empty())
                .filter(|(k, e)| {
                    let agent = if e.agent_id.is_empty() {
                        agent_of_key(k, &s.config.default_agent)
                    } else {
                        e.agent_id.clone()
                    };
                    s.visible(ctx, k, &agent, e.spawned_by.as_deref())
                })
                .filter(|(k, _)| kinds.is_empty() || kinds.iter().any(|x| x == kind_of_key(k)))
                .filter(|(_, e)| {
                    active.is_none_or(|m| {
                        now - e.updated_at_ms
                            <= i64::try_from(m.saturating_mul(60_000)).unwrap_or(i64::MAX)
                    })
                })
                .collect();
            rows.sort_by(|a, b| b.1.updated_at_ms.cmp(&a.1.updated_at_ms).then(a.0.cmp(&b.0)));
            rows.truncate(limit);
            let mut sessions = Vec::with_capacity(rows.len());
            for (key, e) in rows {
                let mut row = json!({
                    "key": key.as_str(),
                    "kind": kind_of_key(&key),
                    "agentId": e.agent_id,
                    "sessionId": e.session_id,
                    "label": e.label,
                    "displayName": e.display_name,
                    "channel": e.channel,
                    "updatedAt": e.updated_at_ms,
                    "model": e.model,
                    "inputTokens": e.input_tokens,
                    "outputTokens": e.output_tokens,
                    "totalTokens": e.total_tokens,
                    "messageCount": e.message_count,
                    "spawnedBy": e.spawned_by,
                    "ownerNode": e.owner.as_ref().map(|o| o.node.clone()),
                });
                if message_limit > 0
                    && let Ok(read) = s.api.read(&key, message_limit).await
                    && let Some(o) = row.as_object_mut()
                {
                    let messages: Vec<Value> =
                        read.messages.iter().filter_map(|m| message_json(m, false)).collect();
                    o.insert("messages".into(), Value::Array(messages));
                }
                sessions.push(row);
            }
            output(json!({"count": sessions.len(), "sessions": sessions}))
        })
    }
}

struct SessionsHistory(Arc<Shared>);

impl Tool for SessionsHistory {
    fn name(&self) -> &str {
        "sessions_history"
    }
    fn description(&self) -> &str {
        "Read the latest messages of a session you may see (oldest first). Tool calls and results are left out unless includeTools is true."
    }
    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "sessionKey": {"type": "string"},
                "limit": {"type": "integer", "minimum": 1, "maximum": HISTORY_LIMIT_MAX},
                "includeTools": {"type": "boolean"},
            },
            "required": ["sessionKey"],
            "additionalProperties": false
        })
    }
    fn run<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let key = match parse_key(&args, "sessionKey") {
                Ok(Some(k)) => k,
                Ok(None) => return ToolOutput::error("sessionKey is required"),
                Err(e) => return e,
            };
            let limit = match opt_u64(&args, "limit", HISTORY_LIMIT_MAX as u64) {
                Ok(n) => n.map(|n| n.max(1) as usize).unwrap_or(HISTORY_LIMIT_DEFAULT),
                Err(e) => return e,
            };
            let include_tools = args.get("includeTools").and_then(Value::as_bool).unwrap_or(false);
            let read = match self.0.read_visible(ctx, &key, limit).await {
                Ok(r) => r,
                Err(e) => return e,
            };
            let messages: Vec<Value> =
                read.messages.iter().filter_map(|m| message_json(m, include_tools)).collect();
            output(json!({
                "sessionKey": key.as_str(),
                "sessionId": read.session_id,
                "messages": messages,
                "more": read.more,
            }))
        })
    }
}

struct SessionsSend(Arc<Shared>);

impl Tool for SessionsSend {
    fn name(&self) -> &str {
        "sessions_send"
    }
    fn description(&self) -> &str {
        "Send a message into another session you may see (by sessionKey or label); its agent runs a turn on it. Waits up to timeoutSeconds (default 30, 0 = do not wait) for the reply and returns it."
    }
    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "sessionKey": {"type": "string"},
                "label": {"type": "string"},
                "message": {"type": "string"},
                "timeoutSeconds": {"type": "integer", "minimum": 0, "maximum": SEND_WAIT_SECONDS_MAX},
            },
            "required": ["message"],
            "additionalProperties": false
        })
    }
    fn run<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let s = &self.0;
            let message = match opt_str(&args, "message") {
                Ok(Some(m)) if !m.trim().is_empty() => m,
                Ok(_) => return ToolOutput::error("message is required and must not be empty"),
                Err(e) => return e,
            };
            if message.len() > SEND_MESSAGE_BYTES_MAX {
                return ToolOutput::error(format!(
                    "message is {} bytes; at most {SEND_MESSAGE_BYTES_MAX} are allowed",
                    message.len()
                ));
            }
            let wait = match opt_u64(&args, "timeoutSeconds", SEND_WAIT_SECONDS_MAX) {
                Ok(n) => n.unwrap_or(SEND_WAIT_SECONDS_DEFAULT),
                Err(e) => return e,
            };
            let key = match (parse_key(&args, "sessionKey"), opt_str(&args, "label")) {
                (Err(e), _) | (_, Err(e)) => return e,
                (Ok(Some(k)), _) => k,
                (Ok(None), Ok(Some(label))) => {
                    let rows = match s.api.list().await {
                        Ok(r) => r,
                        Err(e) => return ToolOutput::error(e.to_string()),
                    };
                    let found: Vec<SessionKey> = rows
                        .into_iter()
                        .filter(|(_, e)| {
                            e.deleted_at_ms.is_none() && e.label.as_deref() == Some(label)
                        })
                        .map(|(k, _)| k)
                        .collect();
                    match found.as_slice() {
                        [one] => one.clone(),
                        [] => {
                            return ToolOutput::error(format!(
                                "no session has the label {label:?}"
                            ));
                        }
                        many => {
                            return ToolOutput::error(format!(
                                "{} sessions have the label {label:?}; use sessionKey",
                                many.len()
                            ));
                        }
                    }
                }
                (Ok(None), Ok(None)) => {
                    return ToolOutput::error("sessionKey or label is required");
                }
            };
            if key == ctx.session {
                return ToolOutput::error(
                    "sessions_send cannot send into the calling session itself (it would wait for its own turn)",
                );
            }
            let read = match s.read_visible(ctx, &key, 1).await {
                Ok(r) => r,
                Err(e) => return e,
            };
            let agent = if read.meta.agent_id.is_empty() {
                agent_of_key(&key, &s.config.default_agent)
            } else {
                read.meta.agent_id.clone()
            };
            let text = format!("[message from session {}]\n{message}", ctx.session);
            let idempotency = format!("send:{}", uuid::Uuid::new_v4().simple());
            let submitted = match s.api.submit(&key, &agent, text, idempotency).await {
                Ok(sub) => sub,
                Err(e) => return ToolOutput::error(e.to_string()),
            };
            if wait == 0 {
                return output(json!({
                    "status": "accepted",
                    "runId": submitted.run_id,
                    "sessionKey": key.as_str(),
                }));
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
            let (end, _) = follow_run(
                s.api.as_ref(),
                &key,
                &submitted.run_id,
                &submitted.message_id,
                deadline,
                Some(&ctx.cancel),
            )
            .await;
            let base = json!({"runId": submitted.run_id, "sessionKey": key.as_str()});
            let mut v = base;
            let o = v.as_object_mut();
            let Some(o) = o else { return ToolOutput::error("internal: not an object") };
            match end {
                RunEnd::Reply(m) => {
                    o.insert("status".into(), "ok".into());
                    o.insert(
                        "reply".into(),
                        cap_chars(&m.text_content(), MESSAGE_CHARS_MAX * 4).into(),
                    );
                }
                RunEnd::Failed { kind, message } => {
                    o.insert("status".into(), "error".into());
                    o.insert("error".into(), format!("{kind}: {message}").into());
                }
                RunEnd::Aborted => {
                    o.insert("status".into(), "aborted".into());
                }
                RunEnd::TimedOut | RunEnd::Cancelled => {
                    o.insert("status".into(), "timeout".into());
                    o.insert(
                        "note".into(),
                        format!("no reply within {wait} s; the turn may still finish (read it later with sessions_history)").into(),
                    );
                }
            }
            output(v)
        })
    }
}

struct SessionStatus(Arc<Shared>);

impl Tool for SessionStatus {
    fn name(&self) -> &str {
        "session_status"
    }
    fn description(&self) -> &str {
        "Show a session's status (default: this session): agent, model, token counts, message count, owner node, label, and who spawned it."
    }
    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"sessionKey": {"type": "string"}},
            "additionalProperties": false
        })
    }
    fn run<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let s = &self.0;
            if args.get("model").is_some() {
                return ToolOutput::error(
                    "session_status cannot change the model in BeamClaw; it only reports",
                );
            }
            let key = match parse_key(&args, "sessionKey") {
                Ok(k) => k.unwrap_or_else(|| ctx.session.clone()),
                Err(e) => return e,
            };
            let read = match s.read_visible(ctx, &key, 1).await {
                Ok(r) => r,
                Err(e) => return e,
            };
            let entry = s
                .api
                .list()
                .await
                .ok()
                .and_then(|rows| rows.into_iter().find(|(k, _)| *k == key).map(|(_, e)| e));
            let meta = &read.meta;
            let agent = if meta.agent_id.is_empty() {
                agent_of_key(&key, &s.config.default_agent)
            } else {
                meta.agent_id.clone()
            };
            let model =
                meta.model_override.clone().or_else(|| s.config.agent_models.get(&agent).cloned());
            output(json!({
                "sessionKey": key.as_str(),
                "sessionId": read.session_id,
                "kind": kind_of_key(&key),
                "agentId": agent,
                "model": model,
                "modelOverride": meta.model_override,
                "thinkingLevel": meta.thinking_level,
                "label": meta.label,
                "tokens": {
                    "input": meta.input_tokens,
                    "output": meta.output_tokens,
                    "total": meta.total_tokens,
                    "context": meta.context_tokens,
                },
                "compactionCount": meta.compaction_count,
                "createdAt": meta.created_at_ms,
                "messageCount": entry.as_ref().map(|e| e.message_count),
                "updatedAt": entry.as_ref().map(|e| e.updated_at_ms),
                "owner": entry.as_ref().and_then(|e| e.owner.as_ref()).map(|o| json!({"node": o.node, "epoch": o.epoch})),
                "thisNode": s.api.node_id(),
                "spawnedBy": meta.spawned_by,
                "spawnDepth": meta.spawn_depth.unwrap_or(0),
            }))
        })
    }
}

struct SessionsSpawn {
    shared: Arc<Shared>,
    supervisor: Arc<Supervisor>,
}

impl Tool for SessionsSpawn {
    fn name(&self) -> &str {
        "sessions_spawn"
    }
    fn description(&self) -> &str {
        "Spawn a sub-agent: a new session that works on `task` in the background. Returns at once with the child's session key; when the sub-agent finishes, its result is posted back into this session as a message starting with \"[sub-agent <label> finished]\". Sub-agents cannot spawn sub-agents of their own."
    }
    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "task": {"type": "string"},
                "label": {"type": "string"},
                "agentId": {"type": "string"},
                "model": {"type": "string"},
                "runTimeoutSeconds": {"type": "integer", "minimum": 0},
                "cleanup": {"type": "string", "enum": ["delete", "keep"]},
                "mode": {"type": "string", "enum": ["run"]},
            },
            "required": ["task"],
            "additionalProperties": false
        })
    }
    fn run<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let task = match opt_str(&args, "task") {
                Ok(Some(t)) if !t.trim().is_empty() => t.to_string(),
                Ok(_) => return ToolOutput::error("task is required and must not be empty"),
                Err(e) => return e,
            };
            if task.len() > SEND_MESSAGE_BYTES_MAX {
                return ToolOutput::error(format!(
                    "task is {} bytes; at most {SEND_MESSAGE_BYTES_MAX} are allowed",
                    task.len()
                ));
            }
            let label = match opt_str(&args, "label") {
                Ok(Some(l)) if l.chars().count() > LABEL_CHARS_MAX => {
                    return ToolOutput::error(format!(
                        "label is longer than {LABEL_CHARS_MAX} characters"
                    ));
                }
                Ok(l) => l.map(str::trim).filter(|l| !l.is_empty()).map(str::to_string),
                Err(e) => return e,
            };
            let agent_id = match opt_str(&args, "agentId") {
                Ok(a) => a.map(|a| a.trim().to_ascii_lowercase()).filter(|a| !a.is_empty()),
                Err(e) => return e,
            };
            let model = match opt_str(&args, "model") {
                Ok(m) => m.map(str::trim).filter(|m| !m.is_empty()).map(str::to_string),
                Err(e) => return e,
            };
            if let Some(m) = &model {
                let agent = agent_id.clone().unwrap_or_else(|| ctx.agent_id.clone());
                if let Err(e) = self.shared.check_model(&agent, m) {
                    return e;
                }
            }
            let run_timeout_seconds = match opt_u64(&args, "runTimeoutSeconds", 7 * 24 * 3600) {
                Ok(n) => n,
                Err(e) => return e,
            };
            let cleanup = match opt_str(&args, "cleanup") {
                Ok(None) | Ok(Some("keep")) => Cleanup::Keep,
                Ok(Some("delete")) => Cleanup::Delete,
                Ok(Some(other)) => {
                    return ToolOutput::error(format!(
                        "cleanup {other:?} is not \"delete\" or \"keep\""
                    ));
                }
                Err(e) => return e,
            };
            match opt_str(&args, "mode") {
                Ok(None) | Ok(Some("run")) => {}
                Ok(Some(other)) => {
                    return ToolOutput::error(format!(
                        "mode {other:?} is not supported by BeamClaw; only \"run\" (a one-shot sub-agent)"
                    ));
                }
                Err(e) => return e,
            }
            let request =
                SpawnRequest { task, label, agent_id, model, run_timeout_seconds, cleanup };
            match self.supervisor.spawn(&ctx.session, &ctx.agent_id, request).await {
                Ok(record) => output(record.to_json()),
                Err(e) => ToolOutput::error(e.to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_keys() {
        let k = |s: &str| SessionKey::new(s).unwrap();
        assert_eq!(kind_of_key(&k("agent:main:main")), "main");
        assert_eq!(kind_of_key(&k("agent:main:subagent:abc")), "subagent");
        assert_eq!(kind_of_key(&k("agent:main:telegram:group:1")), "group");
        assert_eq!(kind_of_key(&k("cron:job")), "cron");
        assert_eq!(kind_of_key(&k("agent:main:direct:bob")), "other");
        assert_eq!(agent_of_key(&k("agent:Ops:x"), "main"), "ops");
        assert_eq!(agent_of_key(&k("global"), "main"), "main");
    }

    use crate::subagents::memory::{MemorySessions, NODE};
    use crate::subagents::{SubagentPolicy, Supervisor};
    use tokio_util::sync::CancellationToken;

    fn setup() -> (Arc<MemorySessions>, ToolRegistry) {
        let api = Arc::new(MemorySessions::new());
        let policy = SubagentPolicy {
            agent_ids: vec!["main".into(), "ops".into()],
            default_agent: "main".into(),
            ..SubagentPolicy::default()
        };
        let supervisor = Supervisor::new(api.clone(), policy);
        let mut registry = ToolRegistry::new();
        let config = SessionToolsConfig {
            default_agent: "main".into(),
            agent_models: [("main".to_string(), "mock/m".to_string())].into(),
            ..SessionToolsConfig::default()
        };
        register(&mut registry, api.clone(), supervisor, config).unwrap();
        (api, registry)
    }

    fn ctx(session: &SessionKey, agent: &str) -> ToolContext {
        ToolContext {
            session: session.clone(),
            epoch: 1,
            run_id: "r".into(),
            agent_id: agent.into(),
            workspace: std::env::temp_dir(),
            cancel: CancellationToken::new(),
        }
    }

    async fn run(
        registry: &ToolRegistry,
        tool: &str,
        args: Value,
        ctx: &ToolContext,
    ) -> ToolOutput {
        registry.get(tool).unwrap().run(args, ctx).await
    }

    #[tokio::test(start_paused = true)]
    async fn list_history_and_status_show_only_what_the_session_may_see() {
        let (api, registry) = setup();
        let main = api.insert("agent:main:main", "main", None);
        let other = api.insert("agent:main:telegram:direct:bob", "main", None);
        let ops = api.insert("agent:ops:main", "ops", None);
        let child = api.insert("agent:main:subagent:1", "main", Some(1));
        api.sessions.lock().unwrap().get_mut(&child).unwrap().meta.spawned_by =
            Some(main.to_string());
        api.submit(&other, "main", "hello from bob".into(), "k1".into()).await.unwrap();

        let out = run(&registry, "sessions_list", json!({}), &ctx(&main, "main")).await;
        assert!(!out.is_error, "{out:?}");
        let v: Value = serde_json::from_str(&out.content).unwrap();
        let keys: Vec<&str> =
            v["sessions"].as_array().unwrap().iter().filter_map(|r| r["key"].as_str()).collect();
        assert!(keys.contains(&other.as_str()) && keys.contains(&child.as_str()), "{keys:?}");
        assert!(!keys.contains(&ops.as_str()), "another agent's session is hidden: {keys:?}");
        assert_eq!(v["sessions"][0]["ownerNode"], NODE);

        let out = run(
            &registry,
            "sessions_history",
            json!({"sessionKey": other.as_str()}),
            &ctx(&main, "main"),
        )
        .await;
        assert!(out.content.contains("hello from bob"), "{out:?}");
        let out = run(
            &registry,
            "sessions_history",
            json!({"sessionKey": ops.as_str()}),
            &ctx(&main, "main"),
        )
        .await;
        assert!(out.is_error && out.content.contains("not visible"), "{out:?}");
        // A sub-agent sees itself and its own children, not its parent's siblings.
        let out = run(
            &registry,
            "sessions_history",
            json!({"sessionKey": other.as_str()}),
            &ctx(&child, "main"),
        )
        .await;
        assert!(out.is_error && out.content.contains("only itself"), "{out:?}");
        let out = run(
            &registry,
            "sessions_history",
            json!({"sessionKey": "bad key\n"}),
            &ctx(&main, "main"),
        )
        .await;
        assert!(out.is_error, "{out:?}");

        let out = run(&registry, "session_status", json!({}), &ctx(&child, "main")).await;
        let v: Value = serde_json::from_str(&out.content).unwrap();
        assert_eq!(v["kind"], "subagent");
        assert_eq!(v["spawnDepth"], 1);
        assert_eq!(v["spawnedBy"], main.as_str());
        assert_eq!(v["model"], "mock/m");
        assert_eq!(v["owner"]["node"], NODE);
    }

    #[tokio::test(start_paused = true)]
    async fn send_posts_with_the_sender_and_waits_for_the_reply() {
        let (api, registry) = setup();
        let main = api.insert("agent:main:main", "main", None);
        let other = api.insert("agent:main:work", "main", None);
        let replier = {
            let api = api.clone();
            let other = other.clone();
            tokio::spawn(async move {
                while api.last_run(&other).is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
                api.reply(&other, "on it", NODE, 1);
            })
        };
        let out = run(
            &registry,
            "sessions_send",
            json!({"sessionKey": other.as_str(), "message": "status?"}),
            &ctx(&main, "main"),
        )
        .await;
        replier.await.unwrap();
        let v: Value = serde_json::from_str(&out.content).unwrap();
        assert_eq!(v["status"], "ok", "{out:?}");
        assert_eq!(v["reply"], "on it");
        let sent = api.messages(&other)[0].text_content();
        assert_eq!(sent, "[message from session agent:main:main]\nstatus?");
        // No wait, by label, to itself, empty.
        api.sessions.lock().unwrap().get_mut(&other).unwrap().meta.label = Some("work".into());
        let out = run(
            &registry,
            "sessions_send",
            json!({"label": "work", "message": "x", "timeoutSeconds": 0}),
            &ctx(&main, "main"),
        )
        .await;
        assert!(out.content.contains("\"accepted\""), "{out:?}");
        let out = run(
            &registry,
            "sessions_send",
            json!({"sessionKey": main.as_str(), "message": "x"}),
            &ctx(&main, "main"),
        )
        .await;
        assert!(out.is_error && out.content.contains("calling session itself"), "{out:?}");
        let out = run(
            &registry,
            "sessions_send",
            json!({"sessionKey": other.as_str(), "message": " "}),
            &ctx(&main, "main"),
        )
        .await;
        assert!(out.is_error, "{out:?}");
        // A reply that never comes: a timeout, not an error.
        let out = run(
            &registry,
            "sessions_send",
            json!({"sessionKey": other.as_str(), "message": "again", "timeoutSeconds": 5}),
            &ctx(&main, "main"),
        )
        .await;
        let v: Value = serde_json::from_str(&out.content).unwrap();
        assert_eq!(v["status"], "timeout", "{out:?}");
    }
}
