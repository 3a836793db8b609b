//! Exec approvals across the mesh.
//!
//! Owns: the approval policy ([`policy`]: security, ask, askFallback, allowlist globs on
//! resolved binaries, the conservative shell analysis), the approval log ([`log`]: requests and
//! decisions as durable records in the reserved session `system:exec-approvals`, replicated by
//! the mesh like any session, [`mesh::MeshLog`]) and [`Approvals`], which implements the exec
//! tool's [`ExecGate`]: it evaluates a command, asks operators when the policy says so, waits
//! for a decision made on ANY node, and applies `askFallback` when nobody answers in time.
//!
//! How a decision made on node B reaches a command waiting on node A within a second: the
//! decider writes `dec:<id>` to the log (through the session's owner) and rings the doorbell
//! (`exec.approval` broadcast); A's waiter, woken by the doorbell, re-reads the log and acts on
//! what is written there. A lost doorbell costs at most [`APPROVAL_POLL_MS`]: the waiter also
//! re-reads the log on that period. Allow-always entries live in the same log, so every node
//! applies them; a node re-reads the log before asking about a command its cached allowlist
//! misses.
//!
//! Must not know: the gateway's wire format (the node's service maps [`Notice`]s to
//! `exec.approval.requested` / `exec.approval.resolved` events).

pub mod cli;
pub mod log;
pub mod mesh;
pub mod policy;

use crate::config::tools::ExecSecurity;
use crate::tools::exec::{ExecGate, ExecRequest, GateVerdict};
use futures::future::BoxFuture;
use log::{
    ApprovalLog, ApprovalRequest, Decision, DecisionRecord, DecisionSource, LogError, Notice,
    Record, request_message_id,
};
use policy::{ApprovalPolicy, Evaluation};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use log::{APPROVALS_SESSION, NOTICE_TOPIC};

/// A waiting command re-reads the log this often even without a doorbell, in ms.
pub const APPROVAL_POLL_MS: u64 = 500;
/// Notices buffered for local listeners (waiters, the gateway).
pub const NOTICES_BUFFER: usize = 256;
/// Allow-always patterns kept per agent.
pub const ALLOW_ALWAYS_PATTERNS_MAX: usize = 4096;
/// Time a cancelled or timed-out waiter gives its final write, in ms.
pub const FINAL_WRITE_TIMEOUT_MS: u64 = 5_000;
/// Longest `resolved_by` kept, in characters.
pub const RESOLVED_BY_CHARS_MAX: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("no exec approval {id:?} (see `beamclaw approvals list`)")]
    NotFound { id: String },
    #[error("exec approval {id} was already resolved: {decision} ({source_name})")]
    AlreadyResolved { id: String, decision: String, source_name: String },
    #[error("exec approval {id} expired; its command already fell back to tools.exec.askFallback")]
    Expired { id: String },
    #[error("{0}")]
    Log(#[from] LogError),
}

/// A request with its decision, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalEntry {
    pub request: ApprovalRequest,
    pub decision: Option<DecisionRecord>,
}

/// The folded state of the log.
#[derive(Debug, Default)]
struct Folded {
    entries: BTreeMap<String, ApprovalEntry>,
    allow_always: BTreeMap<String, BTreeSet<String>>,
}

fn fold(records: Vec<Record>) -> Folded {
    let mut out = Folded::default();
    let mut decisions = Vec::new();
    for r in records {
        match r {
            Record::Request(req) => {
                out.entries.insert(req.id.clone(), ApprovalEntry { request: req, decision: None });
            }
            Record::Decision(d) => decisions.push(d),
        }
    }
    for d in decisions {
        if d.decision == Decision::AllowAlways {
            let set = out.allow_always.entry(d.agent_id.clone()).or_default();
            for p in &d.patterns {
                if set.len() < ALLOW_ALWAYS_PATTERNS_MAX {
                    set.insert(p.clone());
                }
            }
        }
        if let Some(e) = out.entries.get_mut(&d.id)
            && e.decision.is_none()
        {
            e.decision = Some(d);
        }
    }
    out
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The node's approvals: the gate of its exec tool, and what its gateway service asks.
pub struct Approvals {
    policy: ApprovalPolicy,
    node_id: String,
    log: Arc<dyn ApprovalLog>,
    /// Allow-always patterns per agent, as last read (a miss re-reads the log).
    allow_always: Mutex<BTreeMap<String, BTreeSet<String>>>,
    notices: broadcast::Sender<Notice>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals").field("policy", &self.policy).finish_non_exhaustive()
    }
}

/// What `approve`-style callers get back.
pub type Resolution = DecisionRecord;

impl Approvals {
    pub fn new(policy: ApprovalPolicy, node_id: String, log: Arc<dyn ApprovalLog>) -> Arc<Self> {
        Arc::new(Approvals {
            policy,
            node_id,
            log,
            allow_always: Mutex::new(BTreeMap::new()),
            notices: broadcast::channel(NOTICES_BUFFER).0,
        })
    }

    pub fn policy(&self) -> &ApprovalPolicy {
        &self.policy
    }

    /// A notice from the doorbell (any node's, this one's included).
    pub fn on_notice(&self, notice: Notice) {
        if let Notice::Resolved { decision } = &notice
            && decision.decision == Decision::AllowAlways
        {
            self.learn(&decision.agent_id, &decision.patterns);
        }
        let _ = self.notices.send(notice);
    }

    /// Requests and decisions as they happen anywhere in the mesh (best effort).
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    fn learn(&self, agent: &str, patterns: &[String]) {
        let mut allow = self.allow_always.lock().unwrap_or_else(|p| p.into_inner());
        let set = allow.entry(agent.to_string()).or_default();
        for p in patterns {
            if set.len() < ALLOW_ALWAYS_PATTERNS_MAX {
                set.insert(p.clone());
            }
        }
    }

    fn cached_patterns(&self, agent: &str) -> Vec<String> {
        let allow = self.allow_always.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = self.policy.allowlist.clone();
        out.extend(allow.get(agent).into_iter().flatten().cloned());
        out
    }

    /// Re-reads the whole log; refreshes the allow-always cache.
    async fn reload(&self) -> Result<Folded, LogError> {
        let folded = fold(self.log.read(None).await?);
        *self.allow_always.lock().unwrap_or_else(|p| p.into_inner()) = folded.allow_always.clone();
        Ok(folded)
    }

    /// Every request with its decision (newest last).
    pub async fn entries(&self) -> Result<Vec<ApprovalEntry>, ApprovalError> {
        let folded = self.reload().await?;
        let mut out: Vec<ApprovalEntry> = folded.entries.into_values().collect();
        out.sort_by_key(|e| e.request.created_at_ms);
        Ok(out)
    }

    /// Undecided requests that have not expired.
    pub async fn pending(&self) -> Result<Vec<ApprovalRequest>, ApprovalError> {
        let now = now_ms();
        Ok(self
            .entries()
            .await?
            .into_iter()
            .filter(|e| e.decision.is_none() && e.request.expires_at_ms > now)
            .map(|e| e.request)
            .collect())
    }

    /// One request and its decision.
    pub async fn get(&self, id: &str) -> Result<ApprovalEntry, ApprovalError> {
        let records = self.log.read(Some(request_message_id(id))).await?;
        fold(records)
            .entries
            .remove(id)
            .ok_or_else(|| ApprovalError::NotFound { id: id.to_string() })
    }

    /// The allowlist of every agent: configured patterns and allow-always entries.
    pub async fn allowlists(&self) -> Result<BTreeMap<String, BTreeSet<String>>, ApprovalError> {
        Ok(self.reload().await?.allow_always)
    }

    /// An operator's decision on request `id`, from any node.
    pub async fn resolve(
        &self,
        id: &str,
        decision: Decision,
        resolved_by: &str,
    ) -> Result<Resolution, ApprovalError> {
        let entry = self.get(id).await?;
        if let Some(d) = entry.decision {
            return Err(already(d));
        }
        if entry.request.expires_at_ms <= now_ms() {
            return Err(ApprovalError::Expired { id: id.to_string() });
        }
        let record = DecisionRecord {
            id: id.to_string(),
            decision,
            source: DecisionSource::Operator,
            resolved_by: resolved_by.chars().take(RESOLVED_BY_CHARS_MAX).collect(),
            agent_id: entry.request.agent_id.clone(),
            patterns: if decision == Decision::AllowAlways {
                entry.request.resolved_paths.clone()
            } else {
                Vec::new()
            },
            at_ms: now_ms(),
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        };
        let (won, ours) = self.decide(record).await?;
        if !ours {
            return Err(already(won));
        }
        tracing::info!(id, decision = won.decision.as_str(), by = %won.resolved_by, "exec approval resolved");
        Ok(won)
    }

    /// Writes a decision (the first one written wins), reads back the winner and, when it is
    /// this one, rings the doorbell. Returns the winner and whether it is this one.
    async fn decide(
        &self,
        record: DecisionRecord,
    ) -> Result<(DecisionRecord, bool), ApprovalError> {
        let nonce = record.nonce.clone();
        self.log.append(Record::Decision(record.clone())).await?;
        let winner = self.get(&record.id).await?.decision.unwrap_or(record);
        if winner.decision == Decision::AllowAlways {
            self.learn(&winner.agent_id, &winner.patterns);
        }
        let ours = winner.nonce == nonce;
        if ours {
            self.log.ring(Notice::Resolved { decision: winner.clone() }).await;
        }
        Ok((winner, ours))
    }

    /// Waits for the decision on `request` (already in the log).
    async fn wait(
        &self,
        request: &ApprovalRequest,
        mut notices: broadcast::Receiver<Notice>,
        cancel: &CancellationToken,
        allowlisted: bool,
    ) -> GateVerdict {
        let id = request.id.clone();
        let deadline = tokio::time::Instant::now() + self.policy.timeout;
        let mut poll = tokio::time::interval(Duration::from_millis(APPROVAL_POLL_MS));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let look = tokio::select! {
                _ = cancel.cancelled() => {
                    let record = self.own_decision(request, Decision::Deny, DecisionSource::Cancelled, "turn aborted");
                    return match self.finish(record).await {
                        Some(d) if d.source != DecisionSource::Cancelled => verdict(&d, &self.policy),
                        _ => GateVerdict::Deny { reason: "the turn was aborted while the command waited for approval".into() },
                    };
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let allow = policy::fallback(&self.policy, allowlisted);
                    let decision = if allow { Decision::AllowOnce } else { Decision::Deny };
                    let record = self.own_decision(request, decision, DecisionSource::Timeout, "askFallback");
                    return match self.finish(record).await {
                        Some(d) => verdict(&d, &self.policy),
                        None if allow => GateVerdict::Allow,
                        None => GateVerdict::Deny { reason: timeout_reason(&self.policy) },
                    };
                }
                notice = notices.recv() => match notice {
                    Ok(n) => n.id() == id && matches!(n, Notice::Resolved { .. }),
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => false,
                },
                _ = poll.tick() => true,
            };
            if !look {
                continue;
            }
            match self.get(&id).await {
                Ok(ApprovalEntry { decision: Some(d), .. }) => {
                    if d.decision == Decision::AllowAlways {
                        self.learn(&d.agent_id, &d.patterns);
                    }
                    return verdict(&d, &self.policy);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "approval log not readable; retrying"),
            }
        }
    }

    fn own_decision(
        &self,
        request: &ApprovalRequest,
        decision: Decision,
        source: DecisionSource,
        by: &str,
    ) -> DecisionRecord {
        DecisionRecord {
            id: request.id.clone(),
            decision,
            source,
            resolved_by: by.to_string(),
            agent_id: request.agent_id.clone(),
            patterns: Vec::new(),
            at_ms: now_ms(),
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Writes the waiter's own final decision; returns the decision that stands (an operator's
    /// that got there first, or this one), or `None` when the log could not be written.
    async fn finish(&self, record: DecisionRecord) -> Option<DecisionRecord> {
        let write = async {
            match self.decide(record).await {
                Ok((d, _)) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the end of an approval wait");
                    None
                }
            }
        };
        tokio::time::timeout(Duration::from_millis(FINAL_WRITE_TIMEOUT_MS), write)
            .await
            .ok()
            .flatten()
    }

    async fn check_inner(&self, request: ExecRequest, cancel: &CancellationToken) -> GateVerdict {
        let analysis =
            policy::analyze(&request.command, &request.workdir, request.path_env.as_deref());
        let mut patterns = self.cached_patterns(&request.agent_id);
        let mut covered = policy::allowlisted(&analysis, patterns.iter());
        let mut evaluation = policy::evaluate(&self.policy, &analysis, covered);
        if matches!(evaluation, Evaluation::Ask { allowlisted: false })
            || matches!(evaluation, Evaluation::Deny(_))
                && self.policy.security == ExecSecurity::Allowlist
        {
            // Another node may have granted allow-always since the cache was filled.
            if self.reload().await.is_ok() {
                patterns = self.cached_patterns(&request.agent_id);
                covered = policy::allowlisted(&analysis, patterns.iter());
                evaluation = policy::evaluate(&self.policy, &analysis, covered);
            }
        }
        match evaluation {
            Evaluation::Allow => GateVerdict::Allow,
            Evaluation::Deny(reason) => GateVerdict::Deny { reason },
            Evaluation::Ask { allowlisted } => {
                self.ask(request, &analysis, cancel, allowlisted).await
            }
        }
    }

    async fn ask(
        &self,
        request: ExecRequest,
        analysis: &policy::Analysis,
        cancel: &CancellationToken,
        allowlisted: bool,
    ) -> GateVerdict {
        let created = now_ms();
        let timeout_ms = i64::try_from(self.policy.timeout.as_millis()).unwrap_or(i64::MAX);
        let approval = ApprovalRequest {
            id: uuid::Uuid::new_v4().to_string(),
            command: request.command.clone(),
            cwd: request.workdir.display().to_string(),
            agent_id: request.agent_id.clone(),
            session_key: request.session.to_string(),
            node_id: self.node_id.clone(),
            resolved_paths: analysis.resolved_paths(),
            miss: (!allowlisted).then(|| policy::miss_reason(analysis)),
            security: self.policy.security,
            ask: self.policy.ask,
            created_at_ms: created,
            expires_at_ms: created.saturating_add(timeout_ms),
        };
        let span =
            tracing::info_span!("exec_approval", id = %approval.id, session = %request.session);
        async {
            // Subscribe before the request is visible anywhere, so no decision is missed.
            let notices = self.subscribe();
            if let Err(e) = self.log.append(Record::Request(approval.clone())).await {
                tracing::warn!(error = %e, "cannot record the approval request; askFallback applies");
                return if policy::fallback(&self.policy, allowlisted) {
                    GateVerdict::Allow
                } else {
                    GateVerdict::Deny {
                        reason: format!("the approval request could not be recorded ({e}); tools.exec.askFallback denies the command"),
                    }
                };
            }
            tracing::info!(command = %approval.command, timeout_s = self.policy.timeout.as_secs(), "exec waits for approval");
            self.log.ring(Notice::Requested { request: approval.clone() }).await;
            let verdict = self.wait(&approval, notices, cancel, allowlisted).await;
            tracing::info!(allowed = matches!(verdict, GateVerdict::Allow), "exec approval ended");
            verdict
        }
        .instrument(span)
        .await
    }
}

fn already(d: DecisionRecord) -> ApprovalError {
    let source_name = match d.source {
        DecisionSource::Operator => format!("by {}", d.resolved_by),
        DecisionSource::Timeout => "nobody answered in time; askFallback applied".into(),
        DecisionSource::Cancelled => "the turn was aborted".into(),
    };
    ApprovalError::AlreadyResolved { id: d.id, decision: d.decision.as_str().into(), source_name }
}

fn timeout_reason(policy: &ApprovalPolicy) -> String {
    format!(
        "no operator decided within {} s; tools.exec.askFallback ({}) denies the command",
        policy.timeout.as_secs(),
        policy.ask_fallback.as_str()
    )
}

fn verdict(d: &DecisionRecord, policy: &ApprovalPolicy) -> GateVerdict {
    match (d.source, d.decision.allows()) {
        (_, true) => GateVerdict::Allow,
        (DecisionSource::Operator, false) => GateVerdict::Deny {
            reason: format!("an operator ({}) denied the command", d.resolved_by),
        },
        (DecisionSource::Timeout, false) => GateVerdict::Deny { reason: timeout_reason(policy) },
        (DecisionSource::Cancelled, false) => GateVerdict::Deny {
            reason: "the turn was aborted while the command waited for approval".into(),
        },
    }
}

impl ExecGate for Approvals {
    fn check<'a>(
        &'a self,
        request: ExecRequest,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, GateVerdict> {
        Box::pin(self.check_inner(request, cancel))
    }
}

/// Parses the chat command `/approve <id> allow-once|allow-always|deny`: `None` when the text
/// is not that command, `Some(Err)` when it is but malformed.
pub fn parse_approve_command(text: &str) -> Option<Result<(String, Decision), String>> {
    let mut words = text.split_whitespace();
    if words.next()? != "/approve" {
        return None;
    }
    let usage = "usage: /approve <id> allow-once|allow-always|deny";
    let Some(id) = words.next() else { return Some(Err(usage.into())) };
    let decision = match words.next().map(Decision::parse) {
        Some(Some(d)) => d,
        _ => return Some(Err(usage.into())),
    };
    if words.next().is_some() {
        return Some(Err(usage.into()));
    }
    Some(Ok((id.to_string(), decision)))
}

/// Whether a message is the `/approve` chat command (for callers that must refuse it, e.g. a
/// tool that sends messages on a model's behalf: a model must never approve its own commands).
pub fn is_approve_command(text: &str) -> bool {
    parse_approve_command(text).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tools::ExecAsk;
    use log::MemoryLog;
    use std::path::PathBuf;

    /// Two nodes' approvals over one log, each ringing both doorbells (as the mesh does).
    fn two_nodes(policy: ApprovalPolicy) -> (Arc<Approvals>, Arc<Approvals>, Arc<MemoryLog>) {
        let log = Arc::new(MemoryLog::new());
        let a = Approvals::new(policy.clone(), "node-a".into(), log.clone());
        let b = Approvals::new(policy, "node-b".into(), log.clone());
        let (wa, wb) = (Arc::downgrade(&a), Arc::downgrade(&b));
        log.on_ring(move |n| {
            for node in [wa.upgrade(), wb.upgrade()].into_iter().flatten() {
                node.on_notice(n.clone());
            }
        });
        (a, b, log)
    }

    fn policy(security: ExecSecurity, ask: ExecAsk, timeout_ms: u64) -> ApprovalPolicy {
        ApprovalPolicy {
            security,
            ask,
            timeout: Duration::from_millis(timeout_ms),
            ..ApprovalPolicy::default()
        }
    }

    fn request(command: &str) -> ExecRequest {
        ExecRequest {
            command: command.into(),
            workdir: PathBuf::from("/"),
            path_env: Some("/usr/bin:/bin".into()),
            session: beamclaw_crdt::SessionKey::new("agent:main:main").unwrap(),
            agent_id: "main".into(),
            run_id: "run".into(),
        }
    }

    /// Waits until `node` lists one pending request; returns it.
    async fn pending_one(node: &Approvals) -> ApprovalRequest {
        for _ in 0..200 {
            if let Some(r) = node.pending().await.unwrap().into_iter().next() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no pending approval appeared");
    }

    #[tokio::test]
    async fn a_command_waiting_on_one_node_is_approved_from_another_within_a_second() {
        let (a, b, _) = two_nodes(policy(ExecSecurity::Allowlist, ExecAsk::OnMiss, 60_000));
        let mut events = b.subscribe();
        let cancel = CancellationToken::new();
        let waiter = a.check(request("ls -la"), &cancel);
        let approve = async {
            let pending = pending_one(&b).await;
            assert_eq!(pending.node_id, "node-a");
            assert!(pending.resolved_paths.iter().any(|p| p.ends_with("/ls")), "{pending:?}");
            let Ok(Notice::Requested { request }) = events.recv().await else { panic!() };
            assert_eq!(request.id, pending.id, "operators on node B hear of it");
            let at = tokio::time::Instant::now();
            b.resolve(&pending.id, Decision::AllowOnce, "op@b").await.unwrap();
            at
        };
        let (verdict, approved_at) = tokio::join!(waiter, approve);
        assert_eq!(verdict, GateVerdict::Allow);
        assert!(approved_at.elapsed() < Duration::from_secs(1), "{:?}", approved_at.elapsed());
        // allow-once adds nothing: the next run asks again.
        assert!(a.allowlists().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn allow_always_covers_the_binary_on_every_node_from_then_on() {
        let (a, b, log) = two_nodes(policy(ExecSecurity::Allowlist, ExecAsk::OnMiss, 60_000));
        let cancel = CancellationToken::new();
        let (verdict, _) = tokio::join!(a.check(request("ls"), &cancel), async {
            let p = pending_one(&b).await;
            b.resolve(&p.id, Decision::AllowAlways, "op").await.unwrap();
        });
        assert_eq!(verdict, GateVerdict::Allow);
        let records = log.records().len();
        // Both nodes now run `ls` (with other arguments) without asking: no new record.
        assert_eq!(a.check(request("ls /tmp"), &cancel).await, GateVerdict::Allow);
        assert_eq!(b.check(request("ls -l | ls"), &cancel).await, GateVerdict::Allow);
        assert_eq!(log.records().len(), records);
        // A fresh node (restarted, empty cache) reads the grant from the log.
        let c = Approvals::new(a.policy().clone(), "node-c".into(), log.clone());
        assert_eq!(c.check(request("ls"), &cancel).await, GateVerdict::Allow);
        // Another binary, or something the analysis cannot see through, still asks (and here
        // falls back to deny, unanswered).
        let short = Approvals::new(
            policy(ExecSecurity::Allowlist, ExecAsk::OnMiss, 50),
            "node-d".into(),
            log.clone(),
        );
        assert!(matches!(
            short.check(request("ls $(id)"), &cancel).await,
            GateVerdict::Deny { .. }
        ));
    }

    #[tokio::test]
    async fn unanswered_requests_fall_back_to_ask_fallback() {
        let cancel = CancellationToken::new();
        let (a, _, log) = two_nodes(policy(ExecSecurity::Allowlist, ExecAsk::OnMiss, 100));
        let GateVerdict::Deny { reason } = a.check(request("ls"), &cancel).await else {
            panic!("askFallback defaults to deny")
        };
        assert!(reason.contains("askFallback"), "{reason}");
        let id = pending_id(&log);
        let late = a.resolve(&id, Decision::AllowOnce, "late op").await.unwrap_err();
        assert!(
            matches!(late, ApprovalError::AlreadyResolved { .. } | ApprovalError::Expired { .. }),
            "{late}"
        );

        let mut full = policy(ExecSecurity::Allowlist, ExecAsk::Always, 50);
        full.ask_fallback = ExecSecurity::Full;
        let (a, _, _) = two_nodes(full);
        assert_eq!(a.check(request("ls"), &cancel).await, GateVerdict::Allow);

        let mut listed = policy(ExecSecurity::Allowlist, ExecAsk::Always, 50);
        listed.ask_fallback = ExecSecurity::Allowlist;
        listed.allowlist = vec!["/**/ls".into()];
        let (a, _, _) = two_nodes(listed);
        assert_eq!(a.check(request("ls"), &cancel).await, GateVerdict::Allow);
        assert!(matches!(a.check(request("cat x"), &cancel).await, GateVerdict::Deny { .. }));
    }

    fn pending_id(log: &MemoryLog) -> String {
        log.records()
            .iter()
            .find_map(|r| match r {
                Record::Request(r) => Some(r.id.clone()),
                _ => None,
            })
            .unwrap()
    }

    #[tokio::test]
    async fn deny_security_and_ask_off_never_ask() {
        let cancel = CancellationToken::new();
        let (a, _, log) = two_nodes(policy(ExecSecurity::Deny, ExecAsk::Always, 60_000));
        let GateVerdict::Deny { reason } = a.check(request("ls"), &cancel).await else { panic!() };
        assert!(reason.contains("security"), "{reason}");
        let (b, _, _) = two_nodes(policy(ExecSecurity::Allowlist, ExecAsk::Off, 60_000));
        let GateVerdict::Deny { reason } = b.check(request("ls"), &cancel).await else { panic!() };
        assert!(reason.contains("allowlist"), "{reason}");
        let (c, _, _) = two_nodes(policy(ExecSecurity::Full, ExecAsk::OnMiss, 60_000));
        assert_eq!(c.check(request("anything at all $(x)"), &cancel).await, GateVerdict::Allow);
        assert!(log.records().is_empty(), "nobody was asked");
    }

    #[tokio::test]
    async fn an_operator_deny_and_an_aborted_turn_refuse_the_command() {
        let (a, b, log) = two_nodes(policy(ExecSecurity::Full, ExecAsk::Always, 60_000));
        let cancel = CancellationToken::new();
        let (verdict, _) = tokio::join!(a.check(request("ls"), &cancel), async {
            let p = pending_one(&b).await;
            b.resolve(&p.id, Decision::Deny, "op").await.unwrap();
            let again = b.resolve(&p.id, Decision::AllowOnce, "op2").await.unwrap_err();
            assert!(matches!(again, ApprovalError::AlreadyResolved { .. }), "{again}");
        });
        let GateVerdict::Deny { reason } = verdict else { panic!() };
        assert!(reason.contains("op") && reason.contains("denied"), "{reason}");

        let (verdict, _) = tokio::join!(a.check(request("ls"), &cancel), async {
            pending_one(&b).await;
            cancel.cancel();
        });
        let GateVerdict::Deny { reason } = verdict else { panic!() };
        assert!(reason.contains("aborted"), "{reason}");
        let cancelled = log
            .records()
            .into_iter()
            .any(|r| matches!(r, Record::Decision(d) if d.source == DecisionSource::Cancelled));
        assert!(cancelled, "the abort is recorded, so operators see it is over");
        assert!(matches!(
            b.resolve("nope", Decision::Deny, "op").await,
            Err(ApprovalError::NotFound { .. })
        ));
    }

    #[test]
    fn approve_command_parses() {
        assert_eq!(
            parse_approve_command("/approve abc allow-always"),
            Some(Ok(("abc".into(), Decision::AllowAlways)))
        );
        assert_eq!(
            parse_approve_command(" /approve x deny "),
            Some(Ok(("x".into(), Decision::Deny)))
        );
        assert!(matches!(parse_approve_command("/approve x maybe"), Some(Err(_))));
        assert!(matches!(parse_approve_command("/approve"), Some(Err(_))));
        assert_eq!(parse_approve_command("please /approve x deny"), None);
        assert_eq!(parse_approve_command("/approved x deny"), None);
    }
}
