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

#[cfg(test)]
pub(crate) mod memory;

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
/// A followed session whose owner cannot be reached this long (no node took it over) ends the
/// watch as failed, so the parent hears of it instead of waiting for the run timeout.
pub const UNREACHABLE_MS_MAX: u64 = 60_000;
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

/// `maxSpawnDepth` may be set from 1 up to this (OpenClaw's range).
pub const MAX_SPAWN_DEPTH_MAX: u32 = 5;

/// Checks every `subagents` block of the config (`maxSpawnDepth` 1-5, counts at least 1).
pub fn config_issues(config: &crate::config::Config) -> Vec<crate::config::ConfigIssue> {
    let agents = &config.agents;
    let blocks =
        std::iter::once(("agents.defaults.subagents".to_string(), &agents.defaults.subagents))
            .chain(
                agents
                    .entries
                    .iter()
                    .map(|(id, e)| (format!("agents.entries.{id}.subagents"), &e.subagents)),
            )
            .chain(
                agents
                    .list
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (format!("agents.list[{i}].subagents"), &e.subagents)),
            );
    let mut issues = Vec::new();
    let mut issue = |path: String, message: String| {
        let message = format!("{path}: {message}");
        issues.push(crate::config::ConfigIssue { path, message });
    };
    for (path, block) in blocks {
        let Some(s) = block else { continue };
        if s.max_spawn_depth.is_some_and(|d| !(1..=MAX_SPAWN_DEPTH_MAX).contains(&d)) {
            issue(
                format!("{path}.maxSpawnDepth"),
                format!("must be from 1 to {MAX_SPAWN_DEPTH_MAX}"),
            );
        }
        if s.max_children_per_agent == Some(0) {
            issue(format!("{path}.maxChildrenPerAgent"), "must be at least 1".into());
        }
        if s.max_concurrent == Some(0) {
            issue(format!("{path}.maxConcurrent"), "must be at least 1".into());
        }
    }
    issues
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
    let mut unreachable_since: Option<Instant> = None;
    let mut check = true;
    loop {
        if check {
            check = false;
            match find_reply(api, key, message_id).await {
                Ok(Some(reply)) => return (RunEnd::Reply(Box::new(reply)), trace),
                Ok(None) => unreachable_since = None,
                Err(SessionsError::NotFound(_)) => {
                    let end = RunEnd::Failed {
                        kind: "not_found".into(),
                        message: format!("session {key} no longer exists"),
                    };
                    return (end, trace);
                }
                Err(e) => {
                    tracing::debug!(%key, error = %e, "cannot read the session; will retry");
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_millis(UNREACHABLE_MS_MAX) {
                        let end = RunEnd::Failed {
                            kind: "unreachable".into(),
                            message: format!(
                                "session {key} could not be reached for {} s (its node was lost and no other node took it over): {e}",
                                UNREACHABLE_MS_MAX / 1000
                            ),
                        };
                        return (end, trace);
                    }
                }
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

    use crate::tools::sessions::{SessionToolsConfig, register};
    use crate::tools::{ToolContext, ToolRegistry};
    use memory::{MemorySessions, NODE};

    fn policy() -> SubagentPolicy {
        SubagentPolicy {
            agent_ids: vec!["main".into(), "ops".into()],
            default_agent: "main".into(),
            ..SubagentPolicy::default()
        }
    }

    fn request(task: &str) -> SpawnRequest {
        SpawnRequest {
            task: task.into(),
            label: Some("research".into()),
            agent_id: None,
            model: None,
            run_timeout_seconds: None,
            cleanup: Cleanup::Keep,
        }
    }

    fn tools(api: Arc<MemorySessions>, supervisor: Arc<Supervisor>) -> ToolRegistry {
        let mut registry = ToolRegistry::new();
        let config = SessionToolsConfig {
            default_agent: "main".into(),
            agent_models: [("main".to_string(), "mock/m".to_string())].into(),
            ..SessionToolsConfig::default()
        };
        register(&mut registry, api, supervisor, config).unwrap();
        registry
    }

    fn ctx(session: &SessionKey) -> ToolContext {
        ToolContext {
            session: session.clone(),
            epoch: 1,
            run_id: "r".into(),
            agent_id: "main".into(),
            workspace: std::env::temp_dir(),
            cancel: CancellationToken::new(),
        }
    }

    /// Waits (in paused tokio time) until `f` holds.
    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..2_000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: never happened");
    }

    fn announcement(api: &MemorySessions, parent: &SessionKey) -> Option<Message> {
        api.messages(parent).into_iter().find(|m| {
            m.idempotency_key.as_deref().is_some_and(|k| k.starts_with(ANNOUNCE_KEY_PREFIX))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_spawn_at_depth_two_is_refused_with_a_clear_tool_error() {
        let api = Arc::new(MemorySessions::new());
        let supervisor = Supervisor::new(api.clone(), policy());
        let registry = tools(api.clone(), supervisor.clone());
        let child = api.insert("agent:main:subagent:1111", "main", Some(1));
        let tool = registry.get(SPAWN_TOOL).unwrap();
        let out = tool.run(json!({"task": "go deeper"}), &ctx(&child)).await;
        assert!(out.is_error, "{out:?}");
        assert!(out.content.contains("spawn depth 1"), "{}", out.content);
        assert!(out.content.contains("maxSpawnDepth is 1"), "{}", out.content);
        // Nothing was created.
        assert_eq!(api.sessions.lock().unwrap().len(), 1);
        // A sub-agent key without a recorded depth is still a sub-agent.
        let unrecorded = api.insert("agent:main:subagent:2222", "main", None);
        let out = tool.run(json!({"task": "x"}), &ctx(&unrecorded)).await;
        assert!(out.is_error && out.content.contains("maxSpawnDepth"), "{out:?}");
        // With maxSpawnDepth 2 the depth-1 session may spawn, its depth-2 child may not.
        let mut deeper = policy();
        deeper.defaults.max_spawn_depth = Some(2);
        let supervisor = Supervisor::new(api.clone(), deeper);
        let record = supervisor.spawn(&child, "main", request("one more level")).await.unwrap();
        let grandchild = api.session(&record.child).unwrap();
        assert_eq!(grandchild.meta.spawn_depth, Some(2));
        let refused = supervisor.spawn(&record.child, "main", request("too deep")).await;
        assert_eq!(refused.unwrap_err(), SpawnError::DepthExceeded { depth: 2, max: 2 });
    }

    #[tokio::test(start_paused = true)]
    async fn the_result_is_announced_into_the_parent_and_the_child_deleted() {
        let api = Arc::new(MemorySessions::new());
        let supervisor = Supervisor::new(api.clone(), policy());
        let registry = tools(api.clone(), supervisor.clone());
        let parent = api.insert("agent:main:main", "main", None);
        let out = registry
            .get(SPAWN_TOOL)
            .unwrap()
            .run(
                json!({"task": "find the answer", "label": "finder", "cleanup": "delete"}),
                &ctx(&parent),
            )
            .await;
        assert!(!out.is_error, "{out:?}");
        let record = SpawnRecord::from_json(&out.content).unwrap();
        assert!(record.child.as_str().starts_with("agent:main:subagent:"), "{}", record.child);
        let uuid = record.child.as_str().rsplit(':').next().unwrap();
        assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{uuid}");
        let child = api.session(&record.child).unwrap();
        assert_eq!(child.meta.spawned_by.as_deref(), Some("agent:main:main"));
        assert_eq!(child.meta.spawn_depth, Some(1));
        let task = &child.messages[0].text_content();
        assert!(task.contains("find the answer") && task.contains("cannot spawn"), "{task}");
        // The tool returned at once: nothing is announced before the child replies.
        assert_eq!(supervisor.running().len(), 1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(announcement(&api, &parent).is_none());

        api.reply(&record.child, "the answer is 42", NODE, 1);
        until("the announcement", || announcement(&api, &parent).is_some()).await;
        let text = announcement(&api, &parent).unwrap().text_content();
        assert!(text.starts_with("[sub-agent finder finished] The sub-agent completed."), "{text}");
        assert!(text.contains("Result:\nthe answer is 42"), "{text}");
        assert!(text.contains(&format!("It ran on node {NODE}")), "{text}");
        until("the child is deleted", || api.session(&record.child).is_some_and(|s| s.deleted))
            .await;
        until("the watch ends", || supervisor.running().is_empty()).await;
        // Resuming later finds it announced and does not announce twice.
        supervisor.resume(None).await;
        assert_eq!(api.messages(&parent).iter().filter(|m| m.idempotency_key.is_some()).count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_restarted_on_another_node_is_reported_as_moved() {
        let api = Arc::new(MemorySessions::new());
        let supervisor = Supervisor::new(api.clone(), policy());
        let parent = api.insert("agent:main:main", "main", None);
        let record = supervisor.spawn(&parent, "main", request("t")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        api.event(&record.child, 1, TurnEvent::Started { at_ms: 1 });
        // Its node died; the new owner (node-b, epoch 2) ran the task again.
        api.event(&record.child, 2, TurnEvent::Started { at_ms: 2 });
        api.reply(&record.child, "done on b", "node-b", 2);
        until("the announcement", || announcement(&api, &parent).is_some()).await;
        let text = announcement(&api, &parent).unwrap().text_content();
        assert!(text.contains("Its node (node-a) became unreachable"), "{text}");
        assert!(text.contains("new owner (node-b), which finished it"), "{text}");
        assert!(text.contains("done on b"), "{text}");
        // cleanup keep: the child stays.
        assert!(!api.session(&record.child).unwrap().deleted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_that_fails_or_times_out_is_reported_and_stopped() {
        let api = Arc::new(MemorySessions::new());
        let supervisor = Supervisor::new(api.clone(), policy());
        let parent = api.insert("agent:main:main", "main", None);
        let failing = supervisor.spawn(&parent, "main", request("a")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        api.event(
            &failing.child,
            1,
            TurnEvent::Error { message: "model down".into(), kind: "provider_error".into() },
        );
        until("the failure is announced", || announcement(&api, &parent).is_some()).await;
        let text = announcement(&api, &parent).unwrap().text_content();
        assert!(text.contains("failed (provider_error): model down"), "{text}");

        let parent2 = api.insert("agent:main:other", "main", None);
        let mut slow = request("b");
        slow.run_timeout_seconds = Some(30);
        let slow = supervisor.spawn(&parent2, "main", slow).await.unwrap();
        until("the timeout is announced", || announcement(&api, &parent2).is_some()).await;
        let text = announcement(&api, &parent2).unwrap().text_content();
        assert!(text.contains("timed out: no reply within runTimeoutSeconds = 30 s"), "{text}");
        let aborted = api.aborted.lock().unwrap().clone();
        assert_eq!(aborted, vec![(slow.child.clone(), slow.run_id.clone())]);
    }

    #[tokio::test(start_paused = true)]
    async fn children_per_session_and_concurrency_are_limited() {
        let api = Arc::new(MemorySessions::new());
        let mut p = policy();
        p.defaults.max_concurrent = Some(7);
        let supervisor = Supervisor::new(api.clone(), p);
        let parent = api.insert("agent:main:main", "main", None);
        for i in 0..5 {
            supervisor.spawn(&parent, "main", request(&format!("t{i}"))).await.unwrap();
        }
        let refused = supervisor.spawn(&parent, "main", request("sixth")).await.unwrap_err();
        assert_eq!(refused, SpawnError::TooManyChildren { running: 5, max: 5 });
        assert!(refused.to_string().contains("maxChildrenPerAgent is 5"));
        let other = api.insert("agent:main:second", "main", None);
        for i in 0..2 {
            supervisor.spawn(&other, "main", request(&format!("o{i}"))).await.unwrap();
        }
        let refused = supervisor.spawn(&other, "main", request("eighth")).await.unwrap_err();
        assert_eq!(refused, SpawnError::TooManyConcurrent { running: 7, max: 7 });
        // Another agent needs allowAgents; an unknown one is named.
        let e = supervisor
            .spawn(&other, "main", SpawnRequest { agent_id: Some("ops".into()), ..request("x") })
            .await
            .unwrap_err();
        assert!(matches!(e, SpawnError::AgentNotAllowed { .. }), "{e}");
        let e = supervisor
            .spawn(&other, "main", SpawnRequest { agent_id: Some("nope".into()), ..request("x") })
            .await
            .unwrap_err();
        assert!(matches!(e, SpawnError::UnknownAgent { .. }), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_spawn_tool_checks_its_arguments() {
        let api = Arc::new(MemorySessions::new());
        let supervisor = Supervisor::new(api.clone(), policy());
        let registry = tools(api.clone(), supervisor);
        let parent = api.insert("agent:main:main", "main", None);
        let tool = registry.get(SPAWN_TOOL).unwrap();
        for (args, expect) in [
            (json!({}), "task is required"),
            (json!({"task": "  "}), "task is required"),
            (json!({"task": "x", "cleanup": "archive"}), "cleanup"),
            (json!({"task": "x", "mode": "session"}), "only \"run\""),
            (json!({"task": "x", "model": "other/big"}), "cannot be chosen per sub-agent"),
            (json!({"task": 5}), "task must be a string"),
        ] {
            let out = tool.run(args.clone(), &ctx(&parent)).await;
            assert!(out.is_error && out.content.contains(expect), "{args}: {out:?}");
        }
        // The agent's own model (with or without the provider) is accepted.
        for model in ["mock/m", "m"] {
            let out = tool.run(json!({"task": "x", "model": model}), &ctx(&parent)).await;
            assert!(!out.is_error, "{model}: {out:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_parent_owner_resumes_watching_unannounced_children() {
        let api = Arc::new(MemorySessions::new());
        let first = Supervisor::new(api.clone(), policy());
        let parent = api.insert("agent:main:main", "main", None);
        let record = first.spawn(&parent, "main", request("t")).await.unwrap();
        // The spawn record as the parent's turn writes it.
        let mut result = Message::text("t:1", Role::ToolResult, "", 1);
        result.content = vec![ContentPart::ToolResult {
            tool_call_id: "c".into(),
            tool_name: SPAWN_TOOL.into(),
            content: serde_json::to_string(&record.to_json()).unwrap(),
            is_error: false,
        }];
        api.sessions.lock().unwrap().get_mut(&parent).unwrap().messages.push(result);
        // Another node's supervisor (the parent's new owner) picks the watch up.
        let second = Supervisor::new(api.clone(), policy());
        second.resume(Some(HashSet::from([parent.clone()]))).await;
        assert_eq!(second.running(), vec![(record.child.clone(), parent.clone())]);
        api.reply(&record.child, "late result", NODE, 1);
        until("the announcement", || announcement(&api, &parent).is_some()).await;
        until("both watches end", || first.running().is_empty() && second.running().is_empty())
            .await;
        // Both watched it; the idempotency key made it one message.
        let announced = api
            .messages(&parent)
            .iter()
            .filter(|m| {
                m.idempotency_key.as_deref().is_some_and(|k| k.starts_with(ANNOUNCE_KEY_PREFIX))
            })
            .count();
        assert_eq!(announced, 1);
    }

    #[test]
    fn config_limits_are_checked() {
        let mut config = crate::config::Config::default();
        config.agents.defaults.subagents = Some(SubagentsConfig {
            max_spawn_depth: Some(6),
            max_concurrent: Some(0),
            ..Default::default()
        });
        let issues = config_issues(&config);
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            ["agents.defaults.subagents.maxSpawnDepth", "agents.defaults.subagents.maxConcurrent"]
        );
        config.agents.defaults.subagents =
            Some(SubagentsConfig { max_spawn_depth: Some(5), ..Default::default() });
        assert!(config_issues(&config).is_empty());
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
