//! An in-memory [`SessionsApi`] for the tests of the session tools and sub-agents: sessions are
//! maps of messages, turns do not run by themselves (a test answers with [`MemorySessions::reply`]),
//! events go out on a broadcast channel.

use crate::tools::sessions::{NewSession, SessionRead, SessionsApi, SessionsError, Submitted};
use beamclaw_crdt::doc::SessionMeta;
use beamclaw_crdt::{IndexEntry, Message, OwnerRecord, Role, SessionKey};
use beamclaw_mesh::core::turn::{RunRef, TurnEvent};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::sync::broadcast;

pub const NODE: &str = "node-a";

#[derive(Clone, Debug, Default)]
pub struct MemSession {
    pub meta: SessionMeta,
    pub messages: Vec<Message>,
    pub deleted: bool,
    /// Run ids by user message id.
    pub runs: BTreeMap<String, String>,
}

pub struct MemorySessions {
    pub sessions: Mutex<BTreeMap<SessionKey, MemSession>>,
    events: broadcast::Sender<(RunRef, TurnEvent)>,
    pub aborted: Mutex<Vec<(SessionKey, String)>>,
    next: Mutex<u64>,
}

impl MemorySessions {
    pub fn new() -> Self {
        MemorySessions {
            sessions: Mutex::new(BTreeMap::new()),
            events: broadcast::channel(64).0,
            aborted: Mutex::new(Vec::new()),
            next: Mutex::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SessionKey, MemSession>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a session as if it existed already.
    pub fn insert(&self, key: &str, agent: &str, spawn_depth: Option<u64>) -> SessionKey {
        let key = SessionKey::new(key).unwrap_or_else(|e| panic!("{e}"));
        let mut s = MemSession::default();
        s.meta.session_id = format!("sid-{key}");
        s.meta.agent_id = agent.into();
        s.meta.spawn_depth = spawn_depth;
        self.lock().insert(key.clone(), s);
        key
    }

    pub fn messages(&self, key: &SessionKey) -> Vec<Message> {
        self.lock().get(key).map(|s| s.messages.clone()).unwrap_or_default()
    }

    pub fn session(&self, key: &SessionKey) -> Option<MemSession> {
        self.lock().get(key).cloned()
    }

    /// The latest run of `key`: (run id, user message id).
    pub fn last_run(&self, key: &SessionKey) -> Option<(String, String)> {
        let s = self.lock();
        let session = s.get(key)?;
        let m = session.messages.iter().rev().find(|m| m.role == Role::User)?;
        Some((session.runs.get(&m.id)?.clone(), m.id.clone()))
    }

    /// Writes the final reply of the latest run of `key`, authored by `node`, and sends `Final`.
    pub fn reply(&self, key: &SessionKey, text: &str, node: &str, epoch: u64) {
        let Some((run_id, message_id)) = self.last_run(key) else { panic!("no run in {key}") };
        let mut reply = Message::text(format!("a:{message_id}"), Role::Assistant, text, 1);
        reply.reply_to = vec![message_id];
        reply.author = node.into();
        if let Some(s) = self.lock().get_mut(key) {
            s.messages.push(reply.clone());
        }
        let run = RunRef { session: key.clone(), run_id, epoch };
        let _ = self.events.send((
            run,
            TurnEvent::Final {
                message: Box::new(reply),
                stop_reason: beamclaw_crdt::StopReason::Stop,
                usage: Default::default(),
            },
        ));
    }

    /// Sends a turn event for the latest run of `key`.
    pub fn event(&self, key: &SessionKey, epoch: u64, event: TurnEvent) {
        let Some((run_id, _)) = self.last_run(key) else { panic!("no run in {key}") };
        let _ = self.events.send((RunRef { session: key.clone(), run_id, epoch }, event));
    }
}

impl SessionsApi for MemorySessions {
    fn node_id(&self) -> String {
        NODE.into()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(SessionKey, IndexEntry)>, SessionsError>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .iter()
                .filter(|(_, s)| !s.deleted)
                .map(|(k, s)| {
                    let entry = IndexEntry {
                        session_id: s.meta.session_id.clone(),
                        agent_id: s.meta.agent_id.clone(),
                        message_count: s.messages.len() as u64,
                        label: s.meta.label.clone(),
                        spawned_by: s.meta.spawned_by.clone(),
                        updated_at_ms: chrono::Utc::now().timestamp_millis(),
                        owner: Some(OwnerRecord { epoch: 1, node: NODE.into() }),
                        ..IndexEntry::default()
                    };
                    (k.clone(), entry)
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
            let s = self.lock();
            let session = s.get(key).ok_or_else(|| SessionsError::NotFound(key.to_string()))?;
            let skip = session.messages.len().saturating_sub(limit);
            Ok(SessionRead {
                session_id: session.meta.session_id.clone(),
                meta: session.meta.clone(),
                messages: session.messages[skip..].to_vec(),
                more: skip > 0,
            })
        })
    }

    fn submit<'a>(
        &'a self,
        key: &'a SessionKey,
        _agent_id: &'a str,
        text: String,
        idempotency_key: String,
    ) -> BoxFuture<'a, Result<Submitted, SessionsError>> {
        Box::pin(async move {
            let n = {
                let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
                *next += 1;
                *next
            };
            let mut s = self.lock();
            let session = s.get_mut(key).ok_or_else(|| SessionsError::NotFound(key.to_string()))?;
            if let Some(m) = session
                .messages
                .iter()
                .find(|m| m.idempotency_key.as_deref() == Some(&idempotency_key))
            {
                let run_id = session.runs.get(&m.id).cloned().unwrap_or_default();
                return Ok(Submitted {
                    run_id,
                    message_id: m.id.clone(),
                    owner: NODE.into(),
                    duplicate: true,
                });
            }
            let mut m = Message::user_text(format!("u:{n}"), text, 1);
            m.idempotency_key = Some(idempotency_key);
            let run_id = format!("run-{n}");
            session.runs.insert(m.id.clone(), run_id.clone());
            let message_id = m.id.clone();
            session.messages.push(m);
            Ok(Submitted { run_id, message_id, owner: NODE.into(), duplicate: false })
        })
    }

    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        agent_id: &'a str,
        meta: NewSession,
    ) -> BoxFuture<'a, Result<(), SessionsError>> {
        Box::pin(async move {
            let mut s = self.lock();
            let session = s.entry(key.clone()).or_default();
            session.meta.session_id = format!("sid-{key}");
            session.meta.agent_id = agent_id.into();
            session.meta.spawned_by = meta.spawned_by.map(|k| k.to_string());
            session.meta.spawn_depth = meta.spawn_depth;
            session.meta.label = meta.label;
            session.meta.model_override = meta.model;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<(), SessionsError>> {
        Box::pin(async move {
            let mut s = self.lock();
            let session = s.get_mut(key).ok_or_else(|| SessionsError::NotFound(key.to_string()))?;
            session.deleted = true;
            session.meta.deleted_at = Some(1);
            Ok(())
        })
    }

    fn abort<'a>(
        &'a self,
        key: &'a SessionKey,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<(), SessionsError>> {
        Box::pin(async move {
            self.aborted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((key.clone(), run_id.to_string()));
            Ok(())
        })
    }

    fn follow<'a>(
        &'a self,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<BoxStream<'static, (RunRef, TurnEvent)>, SessionsError>> {
        Box::pin(async move {
            let key = key.clone();
            let rx = self.events.subscribe();
            let stream = futures::stream::unfold(rx, move |mut rx| {
                let key = key.clone();
                async move {
                    loop {
                        match rx.recv().await {
                            Ok((run, event)) if run.session == key => {
                                return Some(((run, event), rx));
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
        futures::stream::pending().boxed()
    }
}
