//! The approval log over the mesh: records are messages of the reserved session
//! [`APPROVALS_SESSION`], written and read through its owner with `MeshHandle::request`, and
//! the doorbell is `MeshHandle::broadcast(NOTICE_TOPIC, ..)`.

use super::Approvals;
use super::log::{
    APPROVALS_SESSION, ApprovalLog, FIRST_PAGE_RECORDS, LogError, NOTICE_TOPIC, Notice,
    PAGE_RECORDS, RECORDS_READ_MAX, Record,
};
use beamclaw_crdt::{Message, Role, SessionKey};
use beamclaw_mesh::core::{Event, RequestBody, RequestError, Response, SessionOp};
use beamclaw_mesh::driver::MeshHandle;
use futures::future::BoxFuture;
use std::sync::Weak;
use tokio::sync::broadcast;

/// The agent id the approvals session is created under (it never runs turns).
pub const APPROVALS_AGENT_ID: &str = "system";

pub struct MeshLog {
    mesh: MeshHandle,
    session: SessionKey,
    node_id: String,
}

impl MeshLog {
    pub fn new(mesh: MeshHandle) -> Result<Self, LogError> {
        let session = SessionKey::new(APPROVALS_SESSION)
            .map_err(|e| LogError::Unavailable(format!("bad approvals session key: {e}")))?;
        let node_id = mesh.node_id().to_string();
        Ok(MeshLog { mesh, session, node_id })
    }

    async fn request(&self, body: RequestBody) -> Result<Response, RequestError> {
        self.mesh.request(self.session.clone(), body).await
    }

    fn message(&self, record: &Record) -> Result<Message, LogError> {
        let text = serde_json::to_string(record).map_err(|e| LogError::Corrupt(e.to_string()))?;
        let at = match record {
            Record::Request(r) => r.created_at_ms,
            Record::Decision(d) => d.at_ms,
        };
        let mut m = Message::text(record.message_id(), Role::System, text, at);
        m.author = self.node_id.clone();
        Ok(m)
    }
}

fn unavailable(e: RequestError) -> LogError {
    LogError::Unavailable(e.to_string())
}

fn record_of(m: &Message) -> Option<Record> {
    if !(m.id.starts_with("req:") || m.id.starts_with("dec:")) {
        return None;
    }
    serde_json::from_str(&m.text_content()).ok()
}

impl ApprovalLog for MeshLog {
    fn append(&self, record: Record) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            let message = self.message(&record)?;
            let inject = || RequestBody::Mutate(SessionOp::Inject(Box::new(message.clone())));
            match self.request(inject()).await {
                Ok(_) => Ok(()),
                Err(RequestError::NotFound) => {
                    // First record ever: create the session (idempotent), then append.
                    let create = SessionOp::Create {
                        agent_id: APPROVALS_AGENT_ID.into(),
                        at_ms: chrono::Utc::now().timestamp_millis(),
                    };
                    self.request(RequestBody::Mutate(create)).await.map_err(unavailable)?;
                    self.request(inject()).await.map(|_| ()).map_err(unavailable)
                }
                Err(e) => Err(unavailable(e)),
            }
        })
    }

    fn read(&self, stop_at: Option<String>) -> BoxFuture<'_, Result<Vec<Record>, LogError>> {
        Box::pin(async move {
            let mut pages: Vec<Vec<Message>> = Vec::new();
            let mut before: Option<String> = None;
            let mut read = 0usize;
            let mut limit = if stop_at.is_some() { FIRST_PAGE_RECORDS } else { PAGE_RECORDS };
            loop {
                let body = RequestBody::Read { limit, before: before.clone() };
                let (messages, more) = match self.request(body).await {
                    Ok(Response::History { messages, more, .. }) => (messages, more),
                    Ok(other) => {
                        return Err(LogError::Unavailable(format!("unexpected answer {other:?}")));
                    }
                    Err(RequestError::NotFound) => (Vec::new(), false),
                    Err(e) => return Err(unavailable(e)),
                };
                read += messages.len();
                let found = stop_at.as_ref().is_some_and(|s| messages.iter().any(|m| &m.id == s));
                before = messages.first().map(|m| m.id.clone());
                pages.push(messages.into_iter().map(std::sync::Arc::unwrap_or_clone).collect());
                if found || !more || before.is_none() || read >= RECORDS_READ_MAX {
                    break;
                }
                limit = PAGE_RECORDS;
            }
            Ok(pages.into_iter().rev().flatten().filter_map(|m| record_of(&m)).collect())
        })
    }

    fn ring(&self, notice: Notice) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.mesh.broadcast(NOTICE_TOPIC, notice.encode()).await.is_err() {
                tracing::warn!(id = notice.id(), "approval notice not broadcast: the mesh stopped");
            }
        })
    }
}

/// Feeds approval notices broadcast in the mesh to `approvals` until the mesh or the service
/// goes away.
pub async fn listen(approvals: Weak<Approvals>, mut events: broadcast::Receiver<Event>) {
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(
                    missed = n,
                    "approval listener lagged; waiting tools re-read the log"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Event::Broadcast { topic, payload, from } = event else { continue };
        if topic != NOTICE_TOPIC {
            continue;
        }
        let Some(approvals) = approvals.upgrade() else { return };
        match Notice::decode(&payload) {
            Some(notice) => approvals.on_notice(notice),
            None => tracing::warn!(%from, "unreadable approval notice ignored"),
        }
    }
}
