//! The agent runtime's edges over the mesh: history is read from the session's owner (this
//! node, while it runs the turn), output is written through the core (durable, epoch-fenced),
//! events are relayed to every node with subscribers, and the epoch fence is the core's.

use std::sync::Arc;

use beamclaw_crdt::{HISTORY_LIMIT_MAX, Message, SessionKey, Usage};
use beamclaw_mesh::core::turn::{RunRef, TurnEvent};
use beamclaw_mesh::core::{RequestBody, RequestError, Response};
use beamclaw_mesh::driver::MeshHandle;
use futures::future::BoxFuture;

use crate::agent::{
    EpochGuard, HistoryReader, PortError, RuntimePorts, StaleEpoch, TurnEvents, TurnOutput,
};

/// The four ports over one mesh handle.
#[derive(Clone)]
pub struct MeshPorts {
    mesh: MeshHandle,
}

impl MeshPorts {
    pub fn new(mesh: MeshHandle) -> Self {
        MeshPorts { mesh }
    }

    pub fn ports(&self) -> RuntimePorts {
        let me = Arc::new(self.clone());
        RuntimePorts { history: me.clone(), output: me.clone(), events: me.clone(), epochs: me }
    }

    async fn write(
        &self,
        session: &SessionKey,
        epoch: u64,
        messages: Vec<Message>,
        usage: Usage,
    ) -> Result<(), PortError> {
        // Every message of a turn carries its run id; usage-only writes name no run.
        let run_id = messages.iter().find_map(|m| m.run_id.clone()).unwrap_or_default();
        let run = RunRef { session: session.clone(), run_id, epoch };
        self.mesh.turn_write(run, messages, usage).await.map_err(|e| port_error(session, epoch, e))
    }
}

fn port_error(session: &SessionKey, epoch: u64, e: RequestError) -> PortError {
    match e {
        RequestError::StaleEpoch(_) => {
            PortError::Stale(StaleEpoch { session: session.clone(), epoch, current: 0 })
        }
        other => PortError::Store(other.to_string()),
    }
}

impl HistoryReader for MeshPorts {
    fn history<'a>(
        &'a self,
        session: &'a SessionKey,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Arc<Message>>, PortError>> {
        Box::pin(async move {
            let body = RequestBody::Read { limit: limit.clamp(1, HISTORY_LIMIT_MAX), before: None };
            match self.mesh.request(session.clone(), body).await {
                Ok(Response::History { messages, .. }) => Ok(messages),
                Ok(other) => {
                    Err(PortError::Store(format!("unexpected answer to a history read: {other:?}")))
                }
                Err(RequestError::NotFound) => Ok(Vec::new()),
                Err(e) => Err(PortError::Store(e.to_string())),
            }
        })
    }
}

impl TurnOutput for MeshPorts {
    fn append<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(self.write(session, epoch, messages, Usage::default()))
    }

    fn checkpoint<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        partial: Message,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(self.write(session, epoch, vec![partial], Usage::default()))
    }

    fn add_usage<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        usage: Usage,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(self.write(session, epoch, Vec::new(), usage))
    }

    fn append_final<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        message: Message,
        usage: Usage,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        // One core write, so one group commit, for the answer and its token counts.
        Box::pin(self.write(session, epoch, vec![message], usage))
    }
}

impl TurnEvents for MeshPorts {
    fn emit(&self, run: &RunRef, event: TurnEvent) {
        self.mesh.turn_event(run.clone(), event);
    }
}

impl EpochGuard for MeshPorts {
    fn check(&self, session: &SessionKey, epoch: u64) -> Result<(), StaleEpoch> {
        self.mesh.fence().check(session, epoch).map_err(|current| StaleEpoch {
            session: session.clone(),
            epoch,
            current,
        })
    }
}
