//! Exec approvals behind the gateway: the node's [`Approvals`] seen through the gateway's
//! protocol-neutral types (`exec.approval.list|get|resolve`, the `exec.approval.requested` and
//! `exec.approval.resolved` events), and the chat command `/approve <id> <decision>`.

use std::sync::Arc;

use beamclaw_gateway::{ExecApproval, ExecApprovalResolution, NodeEvent, ServiceError};
use tokio::sync::broadcast;

use crate::approvals::log::{ApprovalRequest, Decision, DecisionRecord, DecisionSource, Notice};
use crate::approvals::{ApprovalEntry, ApprovalError, Approvals};

/// Decided approvals `exec.approval.list` returns after the pending ones (the newest).
pub const DECIDED_LISTED_MAX: usize = 100;

fn source_name(source: DecisionSource) -> &'static str {
    match source {
        DecisionSource::Operator => "operator",
        DecisionSource::Timeout => "timeout",
        DecisionSource::Cancelled => "cancelled",
    }
}

pub fn resolution_view(d: &DecisionRecord) -> ExecApprovalResolution {
    ExecApprovalResolution {
        id: d.id.clone(),
        decision: d.decision.as_str().to_string(),
        resolved_by: d.resolved_by.clone(),
        source: source_name(d.source).to_string(),
        at_ms: d.at_ms,
    }
}

pub fn request_view(r: &ApprovalRequest, decision: Option<&DecisionRecord>) -> ExecApproval {
    ExecApproval {
        id: r.id.clone(),
        command: r.command.clone(),
        cwd: r.cwd.clone(),
        agent_id: r.agent_id.clone(),
        session_key: r.session_key.clone(),
        node_id: r.node_id.clone(),
        resolved_paths: r.resolved_paths.clone(),
        security: r.security.as_str().to_string(),
        ask: r.ask.as_str().to_string(),
        created_at_ms: r.created_at_ms,
        expires_at_ms: r.expires_at_ms,
        resolution: decision.map(resolution_view),
    }
}

fn entry_view(e: &ApprovalEntry) -> ExecApproval {
    request_view(&e.request, e.decision.as_ref())
}

pub fn service_error(e: ApprovalError) -> ServiceError {
    match e {
        ApprovalError::NotFound { .. } => ServiceError::NotFound { what: e.to_string() },
        ApprovalError::AlreadyResolved { .. } | ApprovalError::Expired { .. } => {
            ServiceError::Invalid { message: e.to_string() }
        }
        ApprovalError::Log(_) => {
            ServiceError::Unavailable { message: e.to_string(), retry_after_ms: Some(1_000) }
        }
    }
}

/// Pending approvals (oldest first), then the newest decided ones.
pub async fn list(approvals: &Approvals) -> Result<Vec<ExecApproval>, ServiceError> {
    let entries = approvals.entries().await.map_err(service_error)?;
    let now = chrono::Utc::now().timestamp_millis();
    let (pending, decided): (Vec<&ApprovalEntry>, Vec<&ApprovalEntry>) =
        entries.iter().partition(|e| e.decision.is_none() && e.request.expires_at_ms > now);
    let mut out: Vec<ExecApproval> = pending.into_iter().map(entry_view).collect();
    out.extend(decided.iter().rev().take(DECIDED_LISTED_MAX).map(|e| entry_view(e)));
    Ok(out)
}

pub async fn get(approvals: &Approvals, id: &str) -> Result<ExecApproval, ServiceError> {
    approvals.get(id).await.map(|e| entry_view(&e)).map_err(service_error)
}

pub async fn resolve(
    approvals: &Approvals,
    id: &str,
    decision: &str,
    resolved_by: &str,
) -> Result<ExecApprovalResolution, ServiceError> {
    let decision = Decision::parse(decision).ok_or_else(|| ServiceError::Invalid {
        message: format!("decision {decision:?} is not allow-once, allow-always or deny"),
    })?;
    approvals
        .resolve(id, decision, resolved_by)
        .await
        .map(|d| resolution_view(&d))
        .map_err(service_error)
}

/// Turns approval notices (from every node, through the mesh doorbell) into gateway events,
/// until the node's event channel closes.
pub fn forward_notices(approvals: &Arc<Approvals>, events: broadcast::Sender<NodeEvent>) {
    let mut notices = approvals.subscribe();
    tokio::spawn(async move {
        loop {
            let notice = match notices.recv().await {
                Ok(n) => n,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "approval notices lagged; operators may re-list");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let event = match &notice {
                Notice::Requested { request } => {
                    NodeEvent::ExecApprovalRequested(Box::new(request_view(request, None)))
                }
                Notice::Resolved { decision } => {
                    NodeEvent::ExecApprovalResolved(resolution_view(decision))
                }
            };
            // No receiver means no gateway listens (yet, or any more): nothing to tell.
            let _ = events.send(event);
        }
    });
}

/// The reply to a `/approve` chat command (already parsed), after deciding it.
pub async fn chat_command(
    approvals: Option<&Approvals>,
    parsed: Result<(String, Decision), String>,
    resolved_by: &str,
) -> String {
    let (id, decision) = match parsed {
        Ok(p) => p,
        Err(usage) => return usage,
    };
    let Some(approvals) = approvals else {
        return "exec approvals are not served by this node".into();
    };
    match approvals.resolve(&id, decision, resolved_by).await {
        Ok(d) => match d.decision {
            Decision::AllowOnce => format!("Approved {id} once: the command runs."),
            Decision::AllowAlways => format!(
                "Approved {id}: the command runs, and {} is now allowed for agent {} without asking.",
                if d.patterns.is_empty() {
                    "nothing more".to_string()
                } else {
                    d.patterns.join(", ")
                },
                d.agent_id
            ),
            Decision::Deny => format!("Denied {id}: the command does not run."),
        },
        Err(e) => format!("/approve failed: {e}"),
    }
}
