//! [`SessionsApi`] over the mesh: what the session tools and sub-agents use to reach any
//! session of the cluster. Every read and write is a request to the session's owner
//! (`MeshHandle::request`), wherever it is; events come from a mesh subscription.

use beamclaw_crdt::doc::{FieldPatch, MetaPatch};
use beamclaw_crdt::{IndexEntry, Message, SessionKey};
use beamclaw_mesh::core::turn::{RunRef, TurnEvent};
use beamclaw_mesh::core::{
    Epoch, Event, RequestBody, RequestError, Response, RunStatus, SessionOp,
};
use beamclaw_mesh::driver::MeshHandle;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

use crate::tools::sessions::{NewSession, SessionRead, SessionsApi, SessionsError, Submitted};

/// The mesh as the session tools see it.
#[derive(Clone)]
pub struct MeshSessions {
    mesh: MeshHandle,
}

impl MeshSessions {
    pub fn new(mesh: MeshHandle) -> Self {
        MeshSessions { mesh }
    }

    async fn request(
        &self,
        key: &SessionKey,
        body: RequestBody,
    ) -> Result<Response, SessionsError> {
        self.mesh.request(key.clone(), body).await.map_err(|e| match e {
            RequestError::NotFound => SessionsError::NotFound(key.to_string()),
            RequestError::Invalid(m) => SessionsError::Invalid(m),
            other => SessionsError::Unavailable(other.to_string()),
        })
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn unexpected(r: Response) -> SessionsError {
    SessionsError::Unavailable(format!("unexpected answer from the owner: {r:?}"))
}

impl SessionsApi for MeshSessions {
    fn node_id(&self) -> String {
        self.mesh.node_id().to_string()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(SessionKey, IndexEntry)>, SessionsError>> {
        Box::pin(async move {
            let rows = self
                .mesh
                .local_sessions()
                .await
                .map_err(|e| SessionsError::Unavailable(e.to_string()))?;
            Ok(rows
                .into_iter()
                .filter(|(_, e)| e.deleted_at_ms.is_none())
                .map(|(key, mut entry)| {
                    // The store names owners by the hex of their key; everything the session
                    // tools compare them with (this node, message authors) uses the node id.
                    if let Some(owner) = entry.owner.as_mut()
                        && let Some(epoch) = Epoch::from_record(owner)
                    {
                        owner.node = epoch.node.to_string();
                    }
                    (key, entry)
                })
                .collect())
        })
    }

    fn read<'a>(
        &'a self,
        key: &'a SessionKey,
        limit: usize,
    ) -> BoxFuture<'a, Result<SessionRead, SessionsError>> {
        Box::pin(async move {
            let limit = limit.clamp(1, beamclaw_crdt::HISTORY_LIMIT_MAX);
            match self.request(key, RequestBody::Read { limit, before: None }).await? {
                Response::History { session_id, messages, meta, more } => {
                    let messages =
                        messages.into_iter().map(std::sync::Arc::unwrap_or_clone).collect();
                    Ok(SessionRead { session_id, meta: *meta, messages, more })
                }
                other => Err(unexpected(other)),
            }
        })
    }

    fn submit<'a>(
        &'a self,
        key: &'a SessionKey,
        agent_id: &'a str,
        text: String,
        idempotency_key: String,
    ) -> BoxFuture<'a, Result<Submitted, SessionsError>> {
        Box::pin(async move {
            let message = Message::user_text("", text, now_ms());
            let body = RequestBody::Submit {
                agent_id: agent_id.to_string(),
                message: Box::new(message),
                idempotency_key,
            };
            match self.request(key, body).await? {
                Response::Submitted { run_id, message_id, status, epoch } => Ok(Submitted {
                    run_id,
                    message_id,
                    owner: epoch.node.to_string(),
                    duplicate: status != RunStatus::Started,
                }),
                other => Err(unexpected(other)),
            }
        })
    }

    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        agent_id: &'a str,
        meta: NewSession,
    ) -> BoxFuture<'a, Result<(), SessionsError>> {
        Box::pin(async move {
            let op = SessionOp::Create { agent_id: agent_id.to_string(), at_ms: now_ms() };
            self.request(key, RequestBody::Mutate(op)).await?;
            let set = |v: Option<String>| v.map_or(FieldPatch::Leave, FieldPatch::Set);
            let patch = MetaPatch {
                spawned_by: set(meta.spawned_by.map(|k| k.to_string())),
                spawn_depth: meta.spawn_depth.map_or(FieldPatch::Leave, FieldPatch::Set),
                label: set(meta.label),
                model_override: set(meta.model),
                ..MetaPatch::default()
            };
            if patch != MetaPatch::default() {
                self.request(key, RequestBody::Mutate(SessionOp::Patch(Box::new(patch)))).await?;
            }
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<(), SessionsError>> {
        Box::pin(async move {
            let op = SessionOp::Delete { at_ms: now_ms() };
            self.request(key, RequestBody::Mutate(op)).await.map(|_| ())
        })
    }

    fn abort<'a>(
        &'a self,
        key: &'a SessionKey,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<(), SessionsError>> {
        Box::pin(async move {
            let op = SessionOp::Abort { run_id: Some(run_id.to_string()) };
            self.request(key, RequestBody::Mutate(op)).await.map(|_| ())
        })
    }

    fn follow<'a>(
        &'a self,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<BoxStream<'static, (RunRef, TurnEvent)>, SessionsError>> {
        Box::pin(async move {
            // Listen before subscribing, so no event between the two is missed.
            let events = self.mesh.events();
            self.mesh
                .subscribe(key.clone())
                .await
                .map_err(|e| SessionsError::Unavailable(e.to_string()))?;
            let guard =
                super::service::Unsubscribe { mesh: self.mesh.clone(), session: Some(key.clone()) };
            let key = key.clone();
            let stream = futures::stream::unfold((events, guard), move |(mut events, guard)| {
                let key = key.clone();
                async move {
                    loop {
                        match events.recv().await {
                            Ok(Event::Turn { run, event }) if run.session == key => {
                                return Some(((run, event), (events, guard)));
                            }
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            });
            Ok(stream.boxed())
        })
    }

    fn owned_changes(&self) -> BoxStream<'static, SessionKey> {
        let me = self.mesh.node_id();
        futures::stream::unfold(self.mesh.events(), move |mut events| async move {
            loop {
                match events.recv().await {
                    Ok(Event::OwnerChanged { session, epoch }) if epoch.node == me => {
                        return Some((session, events));
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }
}
