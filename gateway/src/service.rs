//! The one seam between the gateway and the rest of the node.
//!
//! The gateway owns the wire (OpenClaw frames, HTTP, auth, limits); the node owns everything
//! behind it (sessions, turns, providers, tools, config, the mesh) and implements
//! [`GatewayService`]. Every chat turn goes through [`GatewayService::chat_send`], which the
//! node submits to the session's owner through the mesh, even when the owner is this node.
//!
//! Types here are protocol-neutral Rust: the gateway turns them into OpenClaw's JSON. Session
//! keys, messages and index entries are the crdt crate's; turn events are the mesh core's.

use std::future::Future;

use beamclaw_crdt::{IndexEntry, Message, SessionKey};
use beamclaw_mesh::core::turn::{RunRef, TurnEvent};
use futures::stream::BoxStream;
use serde_json::Value;

/// What the node behind the gateway does. Implemented by the node crate; tests use a fake.
///
/// Methods return `Send` futures so the gateway can drive them from any task. Every fallible
/// method returns a [`ServiceError`], which the gateway maps to an OpenClaw error code.
pub trait GatewayService: Send + Sync + 'static {
    /// Static facts about this node, cheap enough to call on every connect.
    fn node_info(&self) -> NodeInfo;

    /// Whether this node should receive traffic (`/readyz`). Cheap; called per probe.
    fn readiness(&self) -> Readiness;

    /// Members, session counts and provider statistics (`status`, the status page).
    fn status(&self) -> impl Future<Output = Result<NodeStatus, ServiceError>> + Send;

    /// Session counts and recent sessions (`health`, `hello-ok.snapshot.health`).
    fn health(&self) -> impl Future<Output = Result<NodeHealth, ServiceError>> + Send;

    /// Models the node can run (`models.list`, `GET /v1/models` lists agents instead).
    fn models(&self) -> impl Future<Output = Result<Vec<ModelInfo>, ServiceError>> + Send;

    /// The node's config as OpenClaw's `config.get` returns it (`{raw, hash, config, ...}`).
    fn config_get(&self) -> impl Future<Output = Result<Value, ServiceError>> + Send;

    /// Replaces (`config.set`) or merge-patches (`config.patch`) the node's config file.
    fn config_write(
        &self,
        write: ConfigWrite,
    ) -> impl Future<Output = Result<Value, ServiceError>> + Send;

    /// Submits a user message to the session's owner and starts (or joins) its run.
    ///
    /// A repeated `idempotency_key` must not start a second run: the answer is the first run's
    /// id with [`SendStatus::InFlight`] while it runs and [`SendStatus::Ok`] once it finished.
    fn chat_send(
        &self,
        send: ChatSend,
    ) -> impl Future<Output = Result<ChatAccepted, ServiceError>> + Send;

    /// The newest messages of a session, oldest first.
    fn chat_history(
        &self,
        query: HistoryQuery,
    ) -> impl Future<Output = Result<ChatHistory, ServiceError>> + Send;

    /// Aborts the running turn of a session (or one run by id).
    fn chat_abort(
        &self,
        target: AbortTarget,
    ) -> impl Future<Output = Result<AbortOutcome, ServiceError>> + Send;

    /// Appends an assistant note to a session without running a turn; returns it as stored.
    fn chat_inject(
        &self,
        inject: ChatInject,
    ) -> impl Future<Output = Result<Message, ServiceError>> + Send;

    /// Waits up to `timeout_ms` for a run to finish (`agent.wait`, the second `agent` answer).
    /// A run still going when the time is up gives [`RunStatus::Timeout`], not an error.
    fn run_wait(
        &self,
        run_id: String,
        timeout_ms: u64,
    ) -> impl Future<Output = Result<RunOutcome, ServiceError>> + Send;

    fn sessions_list(
        &self,
        query: SessionQuery,
    ) -> impl Future<Output = Result<Vec<SessionSummary>, ServiceError>> + Send;

    fn session_get(
        &self,
        key: SessionKey,
    ) -> impl Future<Output = Result<Option<SessionSummary>, ServiceError>> + Send;

    /// Creates a session (a fresh key when `create.key` is `None`); an existing key is adopted.
    fn session_create(
        &self,
        create: SessionCreate,
    ) -> impl Future<Output = Result<SessionSummary, ServiceError>> + Send;

    fn session_patch(
        &self,
        key: SessionKey,
        patch: SessionPatch,
    ) -> impl Future<Output = Result<SessionSummary, ServiceError>> + Send;

    /// Starts a new transcript (new session id) under the same key.
    fn session_reset(
        &self,
        key: SessionKey,
        reason: ResetReason,
    ) -> impl Future<Output = Result<SessionSummary, ServiceError>> + Send;

    /// Removes a session; `Ok(false)` when there was none.
    fn session_delete(
        &self,
        key: SessionKey,
        delete_transcript: bool,
    ) -> impl Future<Output = Result<bool, ServiceError>> + Send;

    /// Runs one tool (`POST /tools/invoke`) after the gateway's HTTP policy allowed it.
    /// An unknown tool is [`ServiceError::NotFound`].
    fn tools_invoke(
        &self,
        invocation: ToolInvocation,
    ) -> impl Future<Output = Result<Value, ServiceError>> + Send;

    /// Exec approvals of the whole mesh, pending first then the most recent decided ones
    /// (`exec.approval.list`). A node without exec approvals says so.
    fn exec_approvals_list(
        &self,
    ) -> impl Future<Output = Result<Vec<ExecApproval>, ServiceError>> + Send {
        async { Err(no_exec_approvals()) }
    }

    /// One exec approval (`exec.approval.get`); an unknown id is [`ServiceError::NotFound`].
    fn exec_approval_get(
        &self,
        id: String,
    ) -> impl Future<Output = Result<ExecApproval, ServiceError>> + Send {
        let _ = id;
        async { Err(no_exec_approvals()) }
    }

    /// An operator's decision on a pending exec approval (`exec.approval.resolve`), whichever
    /// node's command waits for it. `decision` is `allow-once`, `allow-always` or `deny`;
    /// `resolved_by` names the operator for the record.
    fn exec_approval_resolve(
        &self,
        id: String,
        decision: String,
        resolved_by: String,
    ) -> impl Future<Output = Result<ExecApprovalResolution, ServiceError>> + Send {
        let _ = (id, decision, resolved_by);
        async { Err(no_exec_approvals()) }
    }

    /// Turn events of every run of one session, from now on, wherever its owner runs.
    ///
    /// The gateway holds at most one subscription per session and fans it out to its clients;
    /// dropping the stream ends the subscription. The stream ending means the node stopped
    /// delivering (for instance on shutdown).
    fn subscribe_session(
        &self,
        key: SessionKey,
    ) -> impl Future<Output = Result<BoxStream<'static, RunEvent>, ServiceError>> + Send;

    /// Node-wide events. Called once by `serve`.
    fn node_events(&self) -> BoxStream<'static, NodeEvent>;

    /// The skills of one agent on this node (`skills.status`), as OpenClaw's report:
    /// `{workspaceDir, managedSkillsDir, skills: [...]}`. `agent_id` wins over `session`; with
    /// neither, the default agent. Skills are per node (binaries, environment), so this node
    /// answers for itself. A node without skills support says so.
    fn skills_status(
        &self,
        agent_id: Option<String>,
        session: Option<SessionKey>,
    ) -> impl Future<Output = Result<Value, ServiceError>> + Send {
        let _ = (agent_id, session);
        async {
            Err(ServiceError::Invalid {
                message: "skills.status is not served by this node".into(),
            })
        }
    }
}

/// Facts about this node that do not change while it runs.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The node id (base58 PeerId).
    pub node_id: String,
    /// A human name (host name or configured name).
    pub name: String,
    /// The BeamClaw version.
    pub version: String,
    /// Milliseconds since the Unix epoch when the node started.
    pub started_at_ms: i64,
    /// OpenClaw `sessionDefaults.defaultAgentId` (`main`).
    pub default_agent_id: String,
    /// OpenClaw `sessionDefaults.mainKey` (`main`).
    pub main_key: String,
    /// The configured agents (`GET /v1/models` lists them); empty means just the default.
    pub agent_ids: Vec<String>,
    pub config_path: Option<String>,
    pub state_dir: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, when not ready (`starting`, `draining`, ...).
    pub reason: Option<String>,
}

/// One node of the mesh as this node sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub node_id: String,
    pub name: String,
    /// `alive`, `suspect` or `down`.
    pub state: String,
    pub address: Option<String>,
    pub version: Option<String>,
    /// Sessions this member owns, when known.
    pub sessions_owned: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeStatus {
    /// Every member, this node included.
    pub members: Vec<Member>,
    pub sessions_owned: u64,
    pub sessions_replicated: u64,
    /// Per-provider statistics, as the node chooses to present them (opaque to the gateway).
    pub providers: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RecentSession {
    pub key: SessionKey,
    pub updated_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeHealth {
    pub ok: bool,
    pub session_count: u64,
    /// The most recently updated sessions, newest first.
    pub recent: Vec<RecentSession>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// `provider/model` as the config names it.
    pub id: String,
    pub name: String,
    pub provider: String,
    pub context_window: Option<u64>,
    pub reasoning: bool,
    pub available: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigWriteMode {
    /// `config.set`: replace the whole file.
    Set,
    /// `config.patch`: JSON merge-patch onto the current file.
    Patch,
}

/// A config change as the client sent it: `raw` is JSON5 text, `base_hash` the hash from
/// `config.get` the change was made against (a mismatch must be refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWrite {
    pub mode: ConfigWriteMode,
    pub raw: String,
    pub base_hash: Option<String>,
}

/// An attachment of a user message, as the client sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct Attachment {
    /// `image`, `file`, ... (OpenClaw `type`).
    pub kind: Option<String>,
    pub mime_type: Option<String>,
    pub file_name: Option<String>,
    /// Usually a base64 string or a data URL.
    pub content: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatSend {
    pub session: SessionKey,
    pub message: String,
    pub idempotency_key: String,
    pub thinking: Option<String>,
    pub attachments: Vec<Attachment>,
    pub timeout_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendStatus {
    /// A new run started for this message.
    Started,
    /// The idempotency key was seen before and its run is still going.
    InFlight,
    /// The idempotency key was seen before and its run finished.
    Ok,
}

impl SendStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SendStatus::Started => "started",
            SendStatus::InFlight => "in_flight",
            SendStatus::Ok => "ok",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatAccepted {
    pub run_id: String,
    pub status: SendStatus,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    pub session: SessionKey,
    /// At most this many of the newest messages.
    pub limit: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatHistory {
    pub session_id: String,
    pub messages: Vec<Message>,
    pub thinking_level: Option<String>,
}

/// Which run to abort: the running turn of `session`, or the run `run_id`, or both must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbortTarget {
    pub session: Option<SessionKey>,
    pub run_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbortOutcome {
    pub aborted: bool,
    pub run_ids: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatInject {
    pub session: SessionKey,
    pub text: String,
    pub label: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    Ok,
    Error,
    Timeout,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Error => "error",
            RunStatus::Timeout => "timeout",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunOutcome {
    pub run_id: String,
    pub status: RunStatus,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    pub error: Option<String>,
    /// The final assistant message, when the run produced one.
    pub message: Option<Message>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionQuery {
    pub limit: Option<usize>,
    pub agent_id: Option<String>,
    pub label: Option<String>,
    /// Case-insensitive substring of key, label or display name.
    pub search: Option<String>,
    /// Only sessions updated within this many minutes.
    pub active_minutes: Option<u64>,
}

/// Per-session settings that `sessions.patch` changes (OpenClaw SessionEntry fields).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionSettings {
    pub thinking_level: Option<String>,
    pub verbose_level: Option<String>,
    pub reasoning_level: Option<String>,
    pub elevated_level: Option<String>,
    pub fast_mode: Option<FastMode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastMode {
    On,
    Off,
    Auto,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SessionSummary {
    pub key: SessionKey,
    pub entry: IndexEntry,
    pub settings: SessionSettings,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionCreate {
    pub key: Option<SessionKey>,
    pub agent_id: Option<String>,
    pub label: Option<String>,
    pub model: Option<String>,
    pub thinking_level: Option<String>,
}

/// One field of a patch: leave it, clear it (`null` on the wire) or set it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FieldPatch<T> {
    #[default]
    Keep,
    Clear,
    Set(T),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionPatch {
    pub label: FieldPatch<String>,
    pub model: FieldPatch<String>,
    pub thinking_level: FieldPatch<String>,
    pub verbose_level: FieldPatch<String>,
    pub reasoning_level: FieldPatch<String>,
    pub elevated_level: FieldPatch<String>,
    pub fast_mode: FieldPatch<FastMode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    New,
    Reset,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ToolInvocation {
    pub tool: String,
    pub action: Option<String>,
    /// A JSON object.
    pub args: Value,
    pub session: Option<SessionKey>,
    pub agent_id: Option<String>,
    pub idempotency_key: Option<String>,
}

/// One event of one run, as the session's owner produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunEvent {
    pub run: RunRef,
    pub event: TurnEvent,
}

/// A command waiting for (or decided by) an operator: `exec.approval.requested`, and the rows of
/// `exec.approval.list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecApproval {
    pub id: String,
    pub command: String,
    pub cwd: String,
    pub agent_id: String,
    pub session_key: String,
    /// The node whose command waits.
    pub node_id: String,
    /// The binaries the command resolves to (what `allow-always` adds to the allowlist).
    pub resolved_paths: Vec<String>,
    /// `deny`, `allowlist` or `full`.
    pub security: String,
    /// `off`, `on-miss` or `always`.
    pub ask: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// The decision, once there is one.
    pub resolution: Option<ExecApprovalResolution>,
}

/// The decision on an exec approval (`exec.approval.resolved`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecApprovalResolution {
    pub id: String,
    /// `allow-once`, `allow-always` or `deny`.
    pub decision: String,
    /// The operator, or why nobody did (`askFallback`, `turn aborted`).
    pub resolved_by: String,
    /// `operator`, `timeout` or `cancelled`.
    pub source: String,
    pub at_ms: i64,
}

fn no_exec_approvals() -> ServiceError {
    ServiceError::Invalid { message: "exec approvals are not served by this node".into() }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionChange {
    Created,
    Updated,
    Patched,
    Reset,
    Deleted,
}

impl SessionChange {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionChange::Created => "created",
            SessionChange::Updated => "updated",
            SessionChange::Patched => "patched",
            SessionChange::Reset => "reset",
            SessionChange::Deleted => "deleted",
        }
    }
}

/// Node-wide events the gateway relays to its clients.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeEvent {
    /// A session was created, changed or removed anywhere in the mesh (`sessions.changed`).
    SessionsChanged { key: SessionKey, change: SessionChange },
    /// Mesh membership changed (`presence`).
    Members(Vec<Member>),
    /// Health changed (`health`).
    Health(NodeHealth),
    /// The node is draining: clients should reconnect elsewhere (`shutdown`).
    Shutdown { reason: String, restart_expected_ms: Option<u64> },
    /// A command on some node of the mesh waits for an operator (`exec.approval.requested`).
    ExecApprovalRequested(Box<ExecApproval>),
    /// An exec approval was decided, anywhere in the mesh (`exec.approval.resolved`).
    ExecApprovalResolved(ExecApprovalResolution),
}

/// Why a service call failed; each maps to one OpenClaw error code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// `INVALID_REQUEST`; HTTP 404.
    #[error("{what} not found")]
    NotFound { what: String },
    /// `INVALID_REQUEST`; HTTP 400.
    #[error("{message}")]
    Invalid { message: String },
    /// `FORBIDDEN`; HTTP 403.
    #[error("{message}")]
    Forbidden { message: String },
    /// `AGENT_TIMEOUT`; HTTP 504.
    #[error("{message}")]
    Timeout { message: String },
    /// `UNAVAILABLE`, retryable; HTTP 503.
    #[error("{message}")]
    Unavailable { message: String, retry_after_ms: Option<u64> },
}
