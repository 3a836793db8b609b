//! The runtime's edges: what it reads (history), writes (messages, checkpoints, usage), emits
//! (turn events) and asks before every side effect (is this epoch still ours?).
//!
//! The mesh implements these over the session document and the owner record; [`MemorySessions`]
//! implements them in memory for tests, benchmarks and a node without a store.

use beamclaw_crdt::{Message, SessionKey, Usage};
use beamclaw_mesh::core::turn::{RunRef, TurnEvent};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// The epoch a side effect was started under is no longer the session's owner epoch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("session {session} epoch {epoch} is stale (the owner epoch is now {current})")]
pub struct StaleEpoch {
    pub session: SessionKey,
    pub epoch: u64,
    pub current: u64,
}

/// Asked before every provider call and every tool run.
pub trait EpochGuard: Send + Sync {
    fn check(&self, session: &SessionKey, epoch: u64) -> Result<(), StaleEpoch>;
}

/// A failure to read history or write output, in the words of the store or mesh that failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("{0}")]
    Stale(#[from] StaleEpoch),
    #[error("session store: {0}")]
    Store(String),
}

/// Reads a session's transcript.
pub trait HistoryReader: Send + Sync {
    /// The last `limit` messages, oldest first.
    fn history<'a>(
        &'a self,
        session: &'a SessionKey,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Arc<Message>>, PortError>>;
}

/// Where a turn's results go. Every write carries the epoch; the implementation refuses stale
/// ones. A message id that is already present is not appended twice; a final message replaces
/// a checkpoint with the same id.
pub trait TurnOutput: Send + Sync {
    /// Appends messages durably (resolves once durable).
    fn append<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PortError>>;
    /// Stores a partial assistant message (`partial: true`) that the final one will replace.
    fn checkpoint<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        partial: Message,
    ) -> BoxFuture<'a, Result<(), PortError>>;
    /// Adds a turn's usage to the session's token counters.
    fn add_usage<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        usage: Usage,
    ) -> BoxFuture<'a, Result<(), PortError>>;
    /// Appends a turn's final message and adds its usage (resolves once both are durable).
    /// Implementations that can should make this one write: it is on every turn's path.
    fn append_final<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        message: Message,
        usage: Usage,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.append(session, epoch, vec![message]).await?;
            if usage.total() > 0
                && let Err(e) = self.add_usage(session, epoch, usage).await
            {
                tracing::warn!(error = %e, "cannot add usage to the session");
            }
            Ok(())
        })
    }
}

/// Receives the ephemeral events of running turns (deltas, tool progress, the end).
pub trait TurnEvents: Send + Sync {
    fn emit(&self, run: &RunRef, event: TurnEvent);
}

/// The four edges together.
#[derive(Clone)]
pub struct RuntimePorts {
    pub history: Arc<dyn HistoryReader>,
    pub output: Arc<dyn TurnOutput>,
    pub events: Arc<dyn TurnEvents>,
    pub epochs: Arc<dyn EpochGuard>,
}

/// Events buffered per subscriber of [`BroadcastEvents`]; a slower subscriber misses the oldest.
pub const EVENTS_BUFFER_MAX: usize = 4096;

/// Turn events fanned out to any number of subscribers.
#[derive(Clone)]
pub struct BroadcastEvents {
    tx: broadcast::Sender<(RunRef, TurnEvent)>,
}

impl Default for BroadcastEvents {
    fn default() -> Self {
        Self::new()
    }
}

impl BroadcastEvents {
    pub fn new() -> Self {
        BroadcastEvents { tx: broadcast::channel(EVENTS_BUFFER_MAX).0 }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<(RunRef, TurnEvent)> {
        self.tx.subscribe()
    }
}

impl TurnEvents for BroadcastEvents {
    fn emit(&self, run: &RunRef, event: TurnEvent) {
        // No subscriber is not an error: the events are ephemeral.
        let _ = self.tx.send((run.clone(), event));
    }
}

#[derive(Debug, Default)]
struct SessionLog {
    messages: Vec<Message>,
    usage: Usage,
    epoch: u64,
    checkpoints: u64,
}

/// Sessions kept in memory: history, output and epochs for one process.
#[derive(Debug, Default)]
pub struct MemorySessions {
    sessions: Mutex<HashMap<SessionKey, SessionLog>>,
}

impl MemorySessions {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, SessionLog>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `epoch` the session's owner epoch. Epochs only grow.
    pub fn set_epoch(&self, session: &SessionKey, epoch: u64) {
        let mut sessions = self.lock();
        let log = sessions.entry(session.clone()).or_default();
        assert!(epoch >= log.epoch, "epochs only grow: {} -> {epoch}", log.epoch);
        log.epoch = epoch;
    }

    /// Appends user messages as the mesh does before it starts a turn.
    pub fn append_user(&self, session: &SessionKey, messages: &[Message]) {
        let mut sessions = self.lock();
        let log = sessions.entry(session.clone()).or_default();
        for m in messages {
            insert(&mut log.messages, m.clone());
        }
    }

    /// Every message of the session, oldest first.
    pub fn messages(&self, session: &SessionKey) -> Vec<Message> {
        self.lock().get(session).map(|l| l.messages.clone()).unwrap_or_default()
    }

    /// How many checkpoints of partial output the session received.
    pub fn checkpoints(&self, session: &SessionKey) -> u64 {
        self.lock().get(session).map(|l| l.checkpoints).unwrap_or(0)
    }

    pub fn usage(&self, session: &SessionKey) -> Usage {
        self.lock().get(session).map(|l| l.usage).unwrap_or_default()
    }

    fn checked<R>(
        &self,
        session: &SessionKey,
        epoch: u64,
        f: impl FnOnce(&mut SessionLog) -> R,
    ) -> Result<R, PortError> {
        let mut sessions = self.lock();
        let log = sessions.entry(session.clone()).or_default();
        if epoch < log.epoch {
            return Err(StaleEpoch { session: session.clone(), epoch, current: log.epoch }.into());
        }
        Ok(f(log))
    }
}

/// Inserts `message` unless a final message with its id exists; replaces a partial one.
fn insert(messages: &mut Vec<Message>, message: Message) {
    match messages.iter_mut().find(|m| m.id == message.id) {
        Some(existing) if existing.partial => *existing = message,
        Some(_) => {}
        None => messages.push(message),
    }
}

impl EpochGuard for MemorySessions {
    fn check(&self, session: &SessionKey, epoch: u64) -> Result<(), StaleEpoch> {
        let current = self.lock().get(session).map(|l| l.epoch).unwrap_or(0);
        if epoch < current {
            return Err(StaleEpoch { session: session.clone(), epoch, current });
        }
        Ok(())
    }
}

impl HistoryReader for MemorySessions {
    fn history<'a>(
        &'a self,
        session: &'a SessionKey,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Arc<Message>>, PortError>> {
        let sessions = self.lock();
        let messages = match sessions.get(session) {
            Some(log) => log.messages[log.messages.len().saturating_sub(limit)..]
                .iter()
                .cloned()
                .map(Arc::new)
                .collect(),
            None => Vec::new(),
        };
        Box::pin(async move { Ok(messages) })
    }
}

impl TurnOutput for MemorySessions {
    fn append<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        let result = self.checked(session, epoch, |log| {
            for m in messages {
                insert(&mut log.messages, m);
            }
        });
        Box::pin(async move { result })
    }

    fn checkpoint<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        partial: Message,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        let result = self.checked(session, epoch, |log| {
            log.checkpoints += 1;
            insert(&mut log.messages, partial);
        });
        Box::pin(async move { result })
    }

    fn add_usage<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        usage: Usage,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        let result = self.checked(session, epoch, |log| {
            log.usage.input += usage.input;
            log.usage.output += usage.output;
            log.usage.cache_read += usage.cache_read;
            log.usage.cache_write += usage.cache_write;
        });
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamclaw_crdt::Role;

    #[tokio::test]
    async fn final_replaces_partial_and_duplicates_are_ignored() {
        let s = MemorySessions::new();
        let key = SessionKey::new("agent:main:main").unwrap();
        let mut partial = Message::text("r:1", Role::Assistant, "Hel", 1);
        partial.partial = true;
        s.checkpoint(&key, 0, partial).await.unwrap();
        s.append(&key, 0, vec![Message::text("r:1", Role::Assistant, "Hello", 2)]).await.unwrap();
        s.append(&key, 0, vec![Message::text("r:1", Role::Assistant, "again", 3)]).await.unwrap();
        let mut late = Message::text("r:1", Role::Assistant, "He", 4);
        late.partial = true;
        s.checkpoint(&key, 0, late).await.unwrap();
        let messages = s.messages(&key);
        assert_eq!(messages.len(), 1);
        assert_eq!((messages[0].text_content().as_str(), messages[0].partial), ("Hello", false));
    }

    #[tokio::test]
    async fn stale_epochs_are_refused() {
        let s = MemorySessions::new();
        let key = SessionKey::new("agent:main:main").unwrap();
        s.set_epoch(&key, 3);
        assert!(s.check(&key, 3).is_ok());
        assert_eq!(
            s.check(&key, 2),
            Err(StaleEpoch { session: key.clone(), epoch: 2, current: 3 })
        );
        let err = s.append(&key, 2, vec![Message::user_text("u", "x", 0)]).await.unwrap_err();
        assert!(matches!(err, PortError::Stale(_)));
        assert!(s.messages(&key).is_empty());
    }
}
