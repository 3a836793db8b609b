//! Sub-agents: `sessions_spawn` creates a child session, gives it the task, watches it, and
//! announces its result back into the requester's (parent's) session.
//!
//! Design (also in docs/skills.md):
//! - The child is `agent:<agentId>:subagent:<uuid>`, created through the mesh with `spawnedBy`
//!   and `spawnDepth` set; its owner is whichever node the placement picks. The task is
//!   submitted like any user message, so the mesh makes it durable before the turn starts and
//!   restarts it on a new owner if the child's owner dies mid-run.
//! - The node that owns the parent session watches the child (the tool runs there). The watch
//!   follows the child's turn events and, as the source of truth, polls the child's transcript
//!   for the final reply, so lost events and owner changes do not matter.
//! - The result is announced by submitting a user message `[sub-agent <label> finished] ...`
//!   into the parent session through the mesh, with the idempotency key
//!   `subagent-announce:<child uuid>`: the parent runs a turn on it (as OpenClaw announces),
//!   and two watchers announcing the same child produce one message.
//! - The watch survives the spawning node dying: the spawn record is the `sessions_spawn` tool
//!   result in the parent's transcript (replicated like any message). When a node becomes the
//!   owner of a session (takeover, handoff, restart), it looks for children of that session in
//!   its index, finds their spawn records in the parent's transcript, and resumes watching the
//!   ones not announced yet.
//! - The announcement says whether the child ran on the node it started on, was restarted on
//!   a new owner after its node was lost, timed out (`runTimeoutSeconds`; the child is aborted)
//!   or failed.

use crate::config::{LoadedConfig, SubagentsConfig};
use crate::tools::sessions::{NewSession, SessionsApi, SessionsError, agent_of_key};
use beamclaw_crdt::{ContentPart, Message, Role, SessionKey, StopReason};
use beamclaw_mesh::core::turn::TurnEvent;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// OpenClaw's defaults for `agents.defaults.subagents`.
pub const MAX_SPAWN_DEPTH_DEFAULT: u32 = 1;
pub const MAX_CHILDREN_PER_AGENT_DEFAULT: u32 = 5;
pub const MAX_CONCURRENT_DEFAULT: u32 = 8;
/// A child with no `runTimeoutSeconds` is still watched at most this long (OpenClaw has no
/// limit; an unbounded watch would hold memory forever if a child never answers).
pub const WATCH_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// How often a watch reads the child's transcript, whatever the events say.
pub const WATCH_POLL_MS: u64 = 2_000;
/// Messages of a transcript read when looking for a reply.
pub const REPLY_SCAN_MESSAGES: usize = 50;
/// After an `Aborted` event, how long a watch waits for the run to start again on another
/// owner (a handoff aborts and restarts) before reporting it aborted.
pub const ABORT_GRACE_MS: u64 = 5_000;
/// How long announcing into the parent is retried (OpenClaw's `announceTimeoutMs`).
pub const ANNOUNCE_TIMEOUT_MS: u64 = 120_000;
/// Pause between announce attempts.
pub const ANNOUNCE_RETRY_MS: u64 = 1_000;
/// Bytes of the child's reply put in the announcement.
pub const ANNOUNCE_RESULT_BYTES_MAX: usize = 32 * 1024;
/// Messages of the parent's transcript searched for spawn records when resuming.
pub const RESUME_SCAN_MESSAGES: usize = 200;
/// Children spawned longer ago than this are not resumed (they were announced or abandoned).
pub const RESUME_AGE_MS_MAX: i64 = 24 * 60 * 60 * 1000;
/// Ownership changes are collected this long before one resume scan.
pub const RESUME_DEBOUNCE_MS: u64 = 500;
/// Wait after start before the first resume scan (the mesh joins and settles ownership).
pub const RESUME_STARTUP_DELAY_MS: u64 = 5_000;
/// Finished children remembered so a later scan does not look at them again.
pub const DONE_REMEMBERED_MAX: usize = 10_000;
/// The tool whose results are spawn records.
pub const SPAWN_TOOL: &str = "sessions_spawn";
/// Idempotency key prefix of announcements.
pub const ANNOUNCE_KEY_PREFIX: &str = "subagent-announce:";

/// What to do with the child session once announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleanup {
    Keep,
    Delete,
}

impl Cleanup {
    pub fn as_str(self) -> &'static str {
        match self {
            Cleanup::Keep => "keep",
            Cleanup::Delete => "delete",
        }
    }
}

/// The limits that apply to one requester agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubagentLimits {
    pub max_spawn_depth: u32,
    pub max_children_per_agent: u32,
    pub max_concurrent: u32,
    /// 0: no per-run limit (the watch still ends after [`WATCH_MS_MAX`]).
    pub run_timeout_seconds: u64,
    /// Agent ids this agent may spawn as; empty: only its own; `*`: any.
    pub allow_agents: Vec<String>,
}

/// `agents.defaults.subagents` and each agent's override, resolved.
#[derive(Clone, Debug, Default)]
pub struct SubagentPolicy {
    pub defaults: SubagentsConfig,
    pub per_agent: BTreeMap<String, SubagentsConfig>,
    pub agent_ids: Vec<String>,
    pub default_agent: String,
}

impl SubagentPolicy {
    pub fn from_loaded(loaded: &LoadedConfig) -> Self {
        let agents = &loaded.config.agents;
        let mut per_agent = BTreeMap::new();
        for (id, e) in &agents.entries {
            if let Some(s) = &e.subagents {
                per_agent.insert(id.clone(), s.clone());
            }
        }
        for e in &agents.list {
            if let (Some(id), Some(s)) = (&e.id, &e.subagents) {
                per_agent.insert(id.clone(), s.clone());
            }
        }
        SubagentPolicy {
            defaults: agents.defaults.subagents.clone().unwrap_or_default(),
            per_agent,
            agent_ids: loaded.agent_ids(),
            default_agent: loaded.default_agent_id(),
        }
    }

    pub fn limits_for(&self, agent: &str) -> SubagentLimits {
        let own = self.per_agent.get(agent);
        let d = &self.defaults;
        SubagentLimits {
            max_spawn_depth: own
                .and_then(|o| o.max_spawn_depth)
                .or(d.max_spawn_depth)
                .unwrap_or(MAX_SPAWN_DEPTH_DEFAULT),
            max_children_per_agent: own
                .and_then(|o| o.max_children_per_agent)
                .or(d.max_children_per_agent)
                .unwrap_or(MAX_CHILDREN_PER_AGENT_DEFAULT),
            max_concurrent: own
                .and_then(|o| o.max_concurrent)
                .or(d.max_concurrent)
                .unwrap_or(MAX_CONCURRENT_DEFAULT),
            run_timeout_seconds: own
                .and_then(|o| o.run_timeout_seconds)
                .or(d.run_timeout_seconds)
                .unwrap_or(0),
            allow_agents: own
                .and_then(|o| o.allow_agents.clone())
                .or_else(|| d.allow_agents.clone())
                .unwrap_or_default(),
        }
    }
}

/// Why `sessions_spawn` refused; the message is what the model sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    #[error(
        "sessions_spawn refused: this session is at spawn depth {depth} and maxSpawnDepth is {max} (agents.defaults.subagents.maxSpawnDepth); a sub-agent cannot spawn sub-agents of its own. Do the work yourself and reply."
    )]
    DepthExceeded { depth: u64, max: u32 },
    #[error(
        "sessions_spawn refused: this session already has {running} sub-agents running (maxChildrenPerAgent is {max}); wait for one to finish"
    )]
    TooManyChildren { running: usize, max: u32 },
    #[error(
        "sessions_spawn refused: {running} sub-agents are running on this node (maxConcurrent is {max}); wait for one to finish"
    )]
    TooManyConcurrent { running: usize, max: u32 },
    #[error(
        "sessions_spawn refused: agent {agent:?} may not be spawned from agent {from:?} (allowed: {allowed}; set subagents.allowAgents)"
    )]
    AgentNotAllowed { agent: String, from: String, allowed: String },
    #[error("sessions_spawn refused: there is no agent {agent:?} (agents: {known})")]
    UnknownAgent { agent: String, known: String },
    #[error("sessions_spawn failed: {0}")]
    Sessions(#[from] SessionsError),
}

/// What `sessions_spawn` asks for.
#[derive(Clone, Debug)]
pub struct SpawnRequest {
    pub task: String,
    pub label: Option<String>,
    pub agent_id: Option<String>,
    pub model: Option<String>,
    pub run_timeout_seconds: Option<u64>,
    pub cleanup: Cleanup,
}

/// The spawn record: the tool result the parent's transcript keeps, and what a watch needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpawnRecord {
    pub child: SessionKey,
    pub run_id: String,
    pub message_id: String,
    pub agent_id: String,
    pub label: Option<String>,
    pub cleanup: Cleanup,
    pub run_timeout_seconds: u64,
    pub spawned_at_ms: i64,
    /// The node that owned the child when it accepted the task.
    pub child_owner: String,
}

impl SpawnRecord {
    pub fn to_json(&self) -> Value {
        json!({
            "status": "accepted",
            "childSessionKey": self.child.as_str(),
            "runId": self.run_id,
            "messageId": self.message_id,
            "agentId": self.agent_id,
            "label": self.label,
            "cleanup": self.cleanup.as_str(),
            "runTimeoutSeconds": self.run_timeout_seconds,
            "spawnedAtMs": self.spawned_at_ms,
            "childOwner": self.child_owner,
            "note": "The sub-agent runs in the background. Its result will be posted into this session as a message starting with \"[sub-agent ... finished]\"; do not poll for it.",
        })
    }

    /// Reads a record back from a `sessions_spawn` tool result.
    pub fn from_json(text: &str) -> Option<SpawnRecord> {
        let v: Value = serde_json::from_str(text).ok()?;
        if v.get("status")?.as_str()? != "accepted" {
            return None;
        }
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(SpawnRecord {
            child: SessionKey::new(s("childSessionKey")?).ok()?,
            run_id: s("runId")?,
            message_id: s("messageId")?,
            agent_id: s("agentId")?,
            label: s("label"),
            cleanup: if s("cleanup").as_deref() == Some("delete") {
                Cleanup::Delete
            } else {
                Cleanup::Keep
            },
            run_timeout_seconds: v.get("runTimeoutSeconds").and_then(Value::as_u64).unwrap_or(0),
            spawned_at_ms: v.get("spawnedAtMs").and_then(Value::as_i64).unwrap_or(0),
            child_owner: s("childOwner").unwrap_or_default(),
        })
    }

    fn display_label(&self) -> String {
        self.label.clone().unwrap_or_else(|| self.child.to_string())
    }
}

/// How a followed run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunEnd {
    Reply(Box<Message>),
    Failed { kind: String, message: String },
    Aborted,
    TimedOut,
    Cancelled,
}

/// What was seen while following a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunTrace {
    /// Owner epochs the run was started under (more than one: it was restarted elsewhere).
    pub epochs: BTreeSet<u64>,
}

/// The final reply to `message_id` in the session's latest messages, if written.
async fn find_reply(
    api: &dyn SessionsApi,
    key: &SessionKey,
    message_id: &str,
) -> Result<Option<Message>, SessionsError> {
    let read = api.read(key, REPLY_SCAN_MESSAGES).await?;
    Ok(read.messages.into_iter().rev().find(|m| {
        m.role == Role::Assistant && !m.partial && m.reply_to.iter().any(|r| r == message_id)
    }))
}

/// Follows run `run_id` (answering user message `message_id`) of session `key` until it ends,
/// `deadline` passes or `cancel` fires. Turn events make it react at once; the transcript is
/// read every [`WATCH_POLL_MS`] regardless, so missed events and owner changes do not matter.
pub async fn follow_run(
    api: &dyn SessionsApi,
    key: &SessionKey,
    run_id: &str,
    message_id: &str,
    deadline: Instant,
    cancel: Option<&CancellationToken>,
) -> (RunEnd, RunTrace) {
    let mut trace = RunTrace::default();
    let mut events = match api.follow(key).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(%key, error = %e, "cannot follow events; polling only");
            None
        }
    };
    let never = CancellationToken::new();
    let cancel = cancel.unwrap_or(&never);
    let mut aborted_at: Option<Instant> = None;
    let mut check = true;
    loop {
        if check {
            check = false;
            match find_reply(api, key, message_id).await {
                Ok(Some(reply)) => return (RunEnd::Reply(Box::new(reply)), trace),
                Ok(None) => {}
                Err(SessionsError::NotFound(_)) => {
                    let end = RunEnd::Failed {
                        kind: "not_found".into(),
                        message: format!("session {key} no longer exists"),
                    };
                    return (end, trace);
                }
                Err(e) => tracing::debug!(%key, error = %e, "cannot read the session; will retry"),
            }
            if aborted_at.is_some_and(|t| t.elapsed() >= Duration::from_millis(ABORT_GRACE_MS)) {
                return (RunEnd::Aborted, trace);
            }
        }
        let next_event = async {
            match events.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return (RunEnd::TimedOut, trace),
            _ = cancel.cancelled() => return (RunEnd::Cancelled, trace),
            _ = tokio::time::sleep(Duration::from_millis(WATCH_POLL_MS)) => check = true,
            event = next_event => match event {
                None => {
                    events = None;
                    check = true;
                }
                Some((run, event)) if run.run_id == run_id => match event {
                    TurnEvent::Started { .. } => {
                        trace.epochs.insert(run.epoch);
                        aborted_at = None;
                    }
                    TurnEvent::Final { message, .. } => {
                        trace.epochs.insert(run.epoch);
                        if message.reply_to.iter().any(|r| r == message_id) {
                            return (RunEnd::Reply(message), trace);
                        }
                        check = true;
                    }
                    // The core could not queue the turn; it starts again later.
                    TurnEvent::Error { kind, .. } if kind == "queue_full" => check = true,
                    TurnEvent::Error { kind, message } => {
                        return (RunEnd::Failed { kind, message }, trace);
                    }
                    TurnEvent::Aborted { .. } => {
                        aborted_at = Some(Instant::now());
                        check = true;
                    }
                    _ => {}
                },
                Some(_) => {}
            },
        }
    }
}

struct Active {
    parent: SessionKey,
}

/// Spawns, watches and announces sub-agents on this node.
pub struct Supervisor {
    api: Arc<dyn SessionsApi>,
    policy: SubagentPolicy,
    active: Mutex<BTreeMap<SessionKey, Active>>,
    done: Mutex<(HashSet<SessionKey>, std::collections::VecDeque<SessionKey>)>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn cap_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}\n[... {} bytes; the first {cut} are shown. Read the rest with sessions_history.]",
        &text[..cut],
        text.len()
    )
}

impl Supervisor {
    pub fn new(api: Arc<dyn SessionsApi>, policy: SubagentPolicy) -> Arc<Self> {
        Arc::new(Supervisor {
            api,
            policy,
            active: Mutex::new(BTreeMap::new()),
            done: Mutex::new(Default::default()),
        })
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, BTreeMap<SessionKey, Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_done(&self, child: &SessionKey) -> bool {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).0.contains(child)
    }

    fn mark_done(&self, child: &SessionKey) {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        if done.0.insert(child.clone()) {
            done.1.push_back(child.clone());
            if done.1.len() > DONE_REMEMBERED_MAX
                && let Some(old) = done.1.pop_front()
            {
                done.0.remove(&old);
            }
        }
    }

    /// Sub-agents watched on this node: (child, parent).
    pub fn running(&self) -> Vec<(SessionKey, SessionKey)> {
        self.lock_active().iter().map(|(c, a)| (c.clone(), a.parent.clone())).collect()
    }

    /// `sessions_spawn`: checks the limits, creates the child, gives it the task, starts the
    /// watch, and returns the spawn record at once.
    pub async fn spawn(
        self: &Arc<Self>,
        requester: &SessionKey,
        requester_agent: &str,
        req: SpawnRequest,
    ) -> Result<SpawnRecord, SpawnError> {
        let limits = self.policy.limits_for(requester_agent);
        let parent = self.api.read(requester, 1).await;
        let depth = match &parent {
            Ok(read) => read.meta.spawn_depth.unwrap_or(0),
            Err(_) => 0,
        };
        // A sub-agent key with no depth recorded is still treated as a sub-agent (safer).
        let depth = if requester.as_str().contains(":subagent:") { depth.max(1) } else { depth };
        if depth + 1 > u64::from(limits.max_spawn_depth) {
            tracing::info!(%requester, depth, max = limits.max_spawn_depth, "sub-agent spawn refused: depth");
            return Err(SpawnError::DepthExceeded { depth, max: limits.max_spawn_depth });
        }
        let agent = req.agent_id.clone().unwrap_or_else(|| requester_agent.to_string());
        if !self.policy.agent_ids.contains(&agent) {
            return Err(SpawnError::UnknownAgent {
                agent,
                known: self.policy.agent_ids.join(", "),
            });
        }
        let allowed = agent == requester_agent
            || limits.allow_agents.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(&agent));
        if !allowed {
            let allowed = if limits.allow_agents.is_empty() {
                format!("only {requester_agent:?}")
            } else {
                limits.allow_agents.join(", ")
            };
            return Err(SpawnError::AgentNotAllowed {
                agent,
                from: requester_agent.to_string(),
                allowed,
            });
        }
        let uuid = uuid::Uuid::new_v4();
        let child = SessionKey::new(format!("agent:{agent}:subagent:{uuid}"))
            .map_err(|e| SessionsError::Invalid(e.to_string()))?;
        {
            let mut active = self.lock_active();
            let running = active.values().filter(|a| a.parent == *requester).count();
            if running >= limits.max_children_per_agent as usize {
                return Err(SpawnError::TooManyChildren {
                    running,
                    max: limits.max_children_per_agent,
                });
            }
            if active.len() >= limits.max_concurrent as usize {
                return Err(SpawnError::TooManyConcurrent {
                    running: active.len(),
                    max: limits.max_concurrent,
                });
            }
            // Counted from now on, so the limits hold under concurrent spawns.
            active.insert(child.clone(), Active { parent: requester.clone() });
        }
        let created = self
            .api
            .create(
                &child,
                &agent,
                NewSession {
                    spawned_by: Some(requester.clone()),
                    spawn_depth: Some(depth + 1),
                    label: req.label.clone(),
                    model: req.model.clone(),
                },
            )
            .await;
        if let Err(e) = created {
            self.lock_active().remove(&child);
            return Err(e.into());
        }
        let can_spawn = depth + 2 <= u64::from(limits.max_spawn_depth);
        let text = format!(
            "[sub-agent task] You are a sub-agent spawned by session {requester}. Do the task below and end with a reply that holds the result: your final reply is posted back to that session automatically.{}\n\n{}",
            if can_spawn { "" } else { " You cannot spawn sub-agents yourself." },
            req.task
        );
        let run_id = format!("subagent:{}", uuid.simple());
        let submitted = match self.api.submit(&child, &agent, text, run_id.clone()).await {
            Ok(s) => s,
            Err(e) => {
                self.lock_active().remove(&child);
                return Err(e.into());
            }
        };
        let record = SpawnRecord {
            child: child.clone(),
            run_id: submitted.run_id,
            message_id: submitted.message_id,
            agent_id: agent.clone(),
            label: req.label,
            cleanup: req.cleanup,
            run_timeout_seconds: req.run_timeout_seconds.unwrap_or(limits.run_timeout_seconds),
            spawned_at_ms: now_ms(),
            child_owner: submitted.owner,
        };
        tracing::info!(parent = %requester, %child, agent = %agent, owner = %record.child_owner, "sub-agent spawned");
        self.watch(requester.clone(), record.clone());
        Ok(record)
    }

    /// Watches a child until it ends, then announces and cleans up. Runs in its own task.
    fn watch(self: &Arc<Self>, parent: SessionKey, record: SpawnRecord) {
        self.lock_active().insert(record.child.clone(), Active { parent: parent.clone() });
        let this = self.clone();
        tokio::spawn(async move {
            let child = record.child.clone();
            this.watch_inner(&parent, &record).await;
            this.lock_active().remove(&child);
            this.mark_done(&child);
        });
    }

    async fn watch_inner(&self, parent: &SessionKey, record: &SpawnRecord) {
        let elapsed_ms = u64::try_from(now_ms().saturating_sub(record.spawned_at_ms)).unwrap_or(0);
        let limit_ms = match record.run_timeout_seconds {
            0 => WATCH_MS_MAX,
            s => s.saturating_mul(1000).min(WATCH_MS_MAX),
        };
        let deadline = Instant::now() + Duration::from_millis(limit_ms.saturating_sub(elapsed_ms));
        let (end, trace) = follow_run(
            self.api.as_ref(),
            &record.child,
            &record.run_id,
            &record.message_id,
            deadline,
            None,
        )
        .await;
        if end == RunEnd::TimedOut
            && let Err(e) = self.api.abort(&record.child, &record.run_id).await
        {
            tracing::info!(child = %record.child, error = %e, "could not abort the timed-out sub-agent");
        }
        let text = self.announcement(record, &end, &trace);
        tracing::info!(%parent, child = %record.child, outcome = end_name(&end), "sub-agent ended; announcing");
        self.announce(parent, record, text).await;
        if record.cleanup == Cleanup::Delete
            && let Err(e) = self.api.delete(&record.child).await
        {
            tracing::warn!(child = %record.child, error = %e, "could not delete the finished sub-agent");
        }
    }

    fn announcement(&self, record: &SpawnRecord, end: &RunEnd, trace: &RunTrace) -> String {
        let label = record.display_label();
        let (status, result) = match end {
            RunEnd::Reply(m) if m.stop_reason == Some(StopReason::Error) => {
                ("failed (the reply ended with an error)".to_string(), Some(m.text_content()))
            }
            RunEnd::Reply(m) if m.stop_reason == Some(StopReason::Aborted) => {
                ("was aborted".to_string(), Some(m.text_content()))
            }
            RunEnd::Reply(m) => ("completed".to_string(), Some(m.text_content())),
            RunEnd::Failed { kind, message } => (format!("failed ({kind}): {message}"), None),
            RunEnd::Aborted => ("was aborted before it replied".to_string(), None),
            RunEnd::TimedOut | RunEnd::Cancelled if record.run_timeout_seconds > 0 => (
                format!(
                    "timed out: no reply within runTimeoutSeconds = {} s; it was stopped",
                    record.run_timeout_seconds
                ),
                None,
            ),
            RunEnd::TimedOut | RunEnd::Cancelled => (
                format!(
                    "gave no reply within {} h; it is no longer watched",
                    WATCH_MS_MAX / 3_600_000
                ),
                None,
            ),
        };
        let mut text = format!("[sub-agent {label} finished] The sub-agent {status}.\n");
        let author = match end {
            RunEnd::Reply(m) => Some(m.author.clone()),
            _ => None,
        };
        let moved = author.as_ref().is_some_and(|a| !a.is_empty() && *a != record.child_owner);
        if moved || trace.epochs.len() > 1 {
            text.push_str(&format!(
                "Its node ({}) became unreachable while it ran; the mesh restarted the task on its new owner ({}), which {}.\n",
                record.child_owner,
                author.clone().filter(|a| !a.is_empty()).unwrap_or_else(|| "another node".into()),
                if matches!(end, RunEnd::Reply(_)) { "finished it" } else { "did not finish it either" }
            ));
        } else if !record.child_owner.is_empty() {
            text.push_str(&format!("It ran on node {}.\n", record.child_owner));
        }
        text.push_str(&format!(
            "Child session: {} ({}).\n",
            record.child,
            match record.cleanup {
                Cleanup::Keep => "kept; read it with sessions_history",
                Cleanup::Delete => "deleted now that it is reported",
            }
        ));
        match result {
            Some(r) if !r.trim().is_empty() => {
                text.push_str("\nResult:\n");
                text.push_str(&cap_bytes(&r, ANNOUNCE_RESULT_BYTES_MAX));
            }
            Some(_) => text.push_str("\nThe sub-agent's reply was empty.\n"),
            None => text.push_str("\nThere is no result.\n"),
        }
        text.push_str("\n\nTell the user what matters from this, in your own words.");
        text
    }

    async fn announce(&self, parent: &SessionKey, record: &SpawnRecord, text: String) {
        let parent_agent = agent_of_key(parent, &self.policy.default_agent);
        let key = format!("{ANNOUNCE_KEY_PREFIX}{}", record.run_id);
        let until = Instant::now() + Duration::from_millis(ANNOUNCE_TIMEOUT_MS);
        loop {
            match self.api.submit(parent, &parent_agent, text.clone(), key.clone()).await {
                Ok(s) => {
                    tracing::info!(%parent, child = %record.child, duplicate = s.duplicate, "sub-agent result announced");
                    return;
                }
                Err(e) if Instant::now() < until => {
                    tracing::info!(%parent, error = %e, "announce failed; retrying");
                    tokio::time::sleep(Duration::from_millis(ANNOUNCE_RETRY_MS)).await;
                }
                Err(e) => {
                    tracing::warn!(%parent, child = %record.child, error = %e, "sub-agent result could not be announced");
                    return;
                }
            }
        }
    }

    /// Resumes watching the children of sessions this node owns: once after start, then each
    /// time this node becomes the owner of sessions. Runs until the node stops.
    pub fn start_resume(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut changes = this.api.owned_changes();
            tokio::time::sleep(Duration::from_millis(RESUME_STARTUP_DELAY_MS)).await;
            this.resume(None).await;
            loop {
                let Some(first) = changes.next().await else { return };
                let mut parents: HashSet<SessionKey> = HashSet::from([first]);
                let window = tokio::time::sleep(Duration::from_millis(RESUME_DEBOUNCE_MS));
                tokio::pin!(window);
                loop {
                    tokio::select! {
                        _ = &mut window => break,
                        next = changes.next() => match next {
                            Some(k) => { parents.insert(k); }
                            None => break,
                        },
                    }
                }
                this.resume(Some(parents)).await;
            }
        });
    }

    /// Finds children of `parents` (or of every session this node owns) that are neither
    /// watched nor finished here, and watches the ones whose spawn record is in the parent's
    /// transcript and that were not announced yet.
    pub async fn resume(self: &Arc<Self>, parents: Option<HashSet<SessionKey>>) {
        let rows = match self.api.list().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "resume scan: cannot list sessions");
                return;
            }
        };
        let me = self.api.node_id();
        let owned: HashSet<SessionKey> = rows
            .iter()
            .filter(|(_, e)| e.owner.as_ref().is_some_and(|o| o.node == me))
            .map(|(k, _)| k.clone())
            .collect();
        let now = now_ms();
        let mut by_parent: BTreeMap<SessionKey, Vec<SessionKey>> = BTreeMap::new();
        for (key, e) in &rows {
            let Some(parent) = e.spawned_by.as_deref().and_then(|p| SessionKey::new(p).ok()) else {
                continue;
            };
            let wanted = match &parents {
                Some(set) => set.contains(&parent),
                None => owned.contains(&parent),
            };
            if !wanted
                || e.deleted_at_ms.is_some()
                || now - e.updated_at_ms > RESUME_AGE_MS_MAX
                || self.is_done(key)
                || self.lock_active().contains_key(key)
            {
                continue;
            }
            by_parent.entry(parent).or_default().push(key.clone());
        }
        for (parent, children) in by_parent {
            let read = match self.api.read(&parent, RESUME_SCAN_MESSAGES).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(%parent, error = %e, "resume scan: cannot read the parent");
                    continue;
                }
            };
            let records = spawn_records(&read.messages);
            let announced: HashSet<String> = read
                .messages
                .iter()
                .filter_map(|m| m.idempotency_key.clone())
                .filter(|k| k.starts_with(ANNOUNCE_KEY_PREFIX))
                .collect();
            for child in children {
                let Some(record) = records.get(&child) else {
                    tracing::info!(%parent, %child, "sub-agent has no spawn record in its parent's transcript; not resumed");
                    self.mark_done(&child);
                    continue;
                };
                if announced.contains(&format!("{ANNOUNCE_KEY_PREFIX}{}", record.run_id)) {
                    self.mark_done(&child);
                    continue;
                }
                tracing::info!(%parent, %child, "resuming the watch of a sub-agent (this node owns its parent now)");
                self.watch(parent.clone(), record.clone());
            }
        }
    }
}

/// Spawn records (successful `sessions_spawn` results) in a transcript, by child.
pub fn spawn_records(messages: &[Message]) -> BTreeMap<SessionKey, SpawnRecord> {
    let mut out = BTreeMap::new();
    for m in messages {
        for part in &m.content {
            if let ContentPart::ToolResult { tool_name, content, is_error: false, .. } = part
                && tool_name == SPAWN_TOOL
                && let Some(record) = SpawnRecord::from_json(content)
            {
                out.insert(record.child.clone(), record);
            }
        }
    }
    out
}

fn end_name(end: &RunEnd) -> &'static str {
    match end {
        RunEnd::Reply(_) => "reply",
        RunEnd::Failed { .. } => "failed",
        RunEnd::Aborted => "aborted",
        RunEnd::TimedOut => "timed_out",
        RunEnd::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_records_round_trip_through_the_tool_result() {
        let record = SpawnRecord {
            child: SessionKey::new("agent:main:subagent:1").unwrap(),
            run_id: "subagent:1".into(),
            message_id: "u:1".into(),
            agent_id: "main".into(),
            label: Some("research".into()),
            cleanup: Cleanup::Delete,
            run_timeout_seconds: 30,
            spawned_at_ms: 5,
            child_owner: "node-a".into(),
        };
        let text = serde_json::to_string(&record.to_json()).unwrap();
        assert_eq!(SpawnRecord::from_json(&text), Some(record.clone()));
        let mut m = Message::text("t:1", Role::ToolResult, "", 0);
        m.content = vec![ContentPart::ToolResult {
            tool_call_id: "c".into(),
            tool_name: SPAWN_TOOL.into(),
            content: text,
            is_error: false,
        }];
        assert_eq!(spawn_records(&[m]).get(&record.child), Some(&record));
    }

    #[test]
    fn limits_default_to_openclaw_and_agents_override() {
        let mut policy = SubagentPolicy::default();
        assert_eq!(policy.limits_for("main").max_spawn_depth, 1);
        assert_eq!(policy.limits_for("main").max_children_per_agent, 5);
        assert_eq!(policy.limits_for("main").max_concurrent, 8);
        policy.defaults.max_concurrent = Some(2);
        policy.per_agent.insert(
            "ops".into(),
            SubagentsConfig { max_spawn_depth: Some(2), ..SubagentsConfig::default() },
        );
        assert_eq!(policy.limits_for("ops").max_spawn_depth, 2);
        assert_eq!(policy.limits_for("ops").max_concurrent, 2);
    }
}
