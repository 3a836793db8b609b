//! A stopped node's copy of a session, read straight from its store: what that replica holds,
//! not what the session's owner answers through the gateway.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use beamclaw_crdt::store::{Store, StoreOptions};
use beamclaw_crdt::{HISTORY_LIMIT_MAX, HeadsDigest, SessionKey};

/// One replica of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// Equal digests mean equal documents.
    pub heads: HeadsDigest,
    /// The current transcript, oldest first.
    pub messages: Vec<ReplicaMessage>,
}

/// What the tests compare of a stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaMessage {
    pub id: String,
    pub role: String,
    pub text: String,
    /// For a final assistant message: the user messages it answers.
    pub reply_to: Vec<String>,
    pub run_id: Option<String>,
    pub partial: bool,
}

impl Replica {
    /// The id of the user message with this text.
    pub fn user_id(&self, text: &str) -> Option<&str> {
        self.messages.iter().find(|m| m.role == "user" && m.text == text).map(|m| m.id.as_str())
    }

    /// The final (not partial) assistant messages that answer user message `id`.
    pub fn answers(&self, id: &str) -> Vec<&ReplicaMessage> {
        self.messages
            .iter()
            .filter(|m| m.role == "assistant" && !m.partial && m.reply_to.iter().any(|r| r == id))
            .collect()
    }
}

/// Reads `session` from the store of the node whose data directory is `data_dir`. The node must
/// not be running (the store is opened exclusively). `None` when it holds no copy.
pub fn read(data_dir: &Path, session: &str) -> Result<Option<Replica>> {
    let key = SessionKey::new(session).map_err(|e| anyhow!("session key {session:?}: {e}"))?;
    let store = Store::open(&data_dir.join("store"), &StoreOptions::default())
        .with_context(|| format!("opening the store of {}", data_dir.display()))?;
    let actor = beamclaw_crdt::doc::writer_actor("e2e-replica-reader", 0);
    let Some(mut doc) = store.load_session(&key, &actor)? else {
        return Ok(None);
    };
    let messages = doc
        .history(HISTORY_LIMIT_MAX, None)?
        .into_iter()
        .map(|m| {
            let m = std::sync::Arc::unwrap_or_clone(m);
            let text = m
                .content
                .iter()
                .filter_map(|p| match p {
                    beamclaw_crdt::ContentPart::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect::<String>();
            ReplicaMessage {
                id: m.id,
                role: m.role.as_str().to_string(),
                text,
                reply_to: m.reply_to,
                run_id: m.run_id,
                partial: m.partial,
            }
        })
        .collect();
    let replica = Replica { heads: doc.heads_digest(), messages };
    drop(doc);
    store.shutdown()?;
    Ok(Some(replica))
}
