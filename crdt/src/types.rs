//! Types shared by the session document (`doc`) and the durable store (`store`).
//!
//! These are the contract between the two halves of the crate and with the mesh: the mesh moves
//! `Chunk`s between nodes and asks the store to persist them; it never looks inside.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest session key accepted, in bytes. OpenClaw keys are `agent:<id>:<rest>`; ids are at
/// most 64 characters, and channel/peer/thread suffixes stay well under this.
pub const SESSION_KEY_BYTES_MAX: usize = 512;

/// A session key as OpenClaw spells it (`agent:main:main`, `agent:main:openai-user:bob`, ...).
///
/// Validated on construction: non-empty, at most [`SESSION_KEY_BYTES_MAX`] bytes, no control
/// characters and no `/` or `\0` (keys become parts of store keys and file names).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionKeyError {
    #[error("session key is empty")]
    Empty,
    #[error("session key is {len} bytes; at most {max} are allowed", max = SESSION_KEY_BYTES_MAX)]
    TooLong { len: usize },
    #[error("session key contains {found:?}; control characters, '/' and '\\' are not allowed")]
    BadChar { found: char },
}

impl SessionKey {
    pub fn new(key: impl Into<String>) -> Result<Self, SessionKeyError> {
        let key = key.into();
        if key.is_empty() {
            return Err(SessionKeyError::Empty);
        }
        if key.len() > SESSION_KEY_BYTES_MAX {
            return Err(SessionKeyError::TooLong { len: key.len() });
        }
        if let Some(found) = key.chars().find(|c| c.is_control() || *c == '/' || *c == '\\') {
            return Err(SessionKeyError::BadChar { found });
        }
        Ok(Self(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SessionKey {
    type Error = SessionKeyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<SessionKey> for String {
    fn from(value: SessionKey) -> Self {
        value.0
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One Automerge document of a session. A session is a manifest (metadata, archives, the list of
/// session ids) plus segments of messages; every part is its own Automerge document with its own
/// sync state, so that appends touch only the newest segment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PartId {
    Manifest,
    /// Messages `[index * SEGMENT_MESSAGES_MAX, ...)` of the transcript `session_id`.
    Segment {
        session_id: String,
        index: u32,
    },
}

impl fmt::Display for PartId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartId::Manifest => f.write_str("manifest"),
            PartId::Segment { session_id, index } => write!(f, "segment {session_id}#{index}"),
        }
    }
}

/// Bytes of Automerge changes for one part (the output of `save_incremental`/`save_after`, or a
/// whole `save()` snapshot): the unit written to disk and pushed to replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub part: PartId,
    pub bytes: Vec<u8>,
}

/// A digest of the heads of every part of a session: equal digests mean equal documents.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HeadsDigest(pub [u8; 32]);

impl fmt::Debug for HeadsDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HeadsDigest({})", &hex::encode(self.0)[..12])
    }
}

/// Who owns a session and since which epoch. Records are ordered by `(epoch, node)`: the larger
/// record wins everywhere, so two claims of the same epoch by different nodes still order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnerRecord {
    pub epoch: u64,
    /// The owner's node id: hex of its 32-byte Ed25519 public key.
    pub node: String,
}

/// What the store keeps about every session so that listing never loads a document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub session_id: String,
    pub agent_id: String,
    /// Milliseconds since the Unix epoch of the last change.
    pub updated_at_ms: i64,
    pub message_count: u64,
    pub owner: Option<OwnerRecord>,
    pub heads: HeadsDigest,
    pub label: Option<String>,
    pub display_name: Option<String>,
    pub channel: Option<String>,
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub spawned_by: Option<String>,
    /// Set when the session was deleted (milliseconds since the Unix epoch): listings skip it,
    /// and the tombstone keeps anti-entropy from bringing it back.
    pub deleted_at_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_key_rejects_empty_long_and_control() {
        assert_eq!(SessionKey::new(""), Err(SessionKeyError::Empty));
        assert!(matches!(SessionKey::new("a".repeat(513)), Err(SessionKeyError::TooLong { .. })));
        assert!(matches!(SessionKey::new("agent:main/x"), Err(SessionKeyError::BadChar { .. })));
        assert!(matches!(SessionKey::new("a\nb"), Err(SessionKeyError::BadChar { .. })));
        assert_eq!(SessionKey::new("agent:main:main").unwrap().as_str(), "agent:main:main");
    }

    #[test]
    fn owner_records_order_by_epoch_then_node() {
        let a = OwnerRecord { epoch: 2, node: "b".into() };
        let b = OwnerRecord { epoch: 3, node: "a".into() };
        let c = OwnerRecord { epoch: 3, node: "c".into() };
        assert!(a < b && b < c);
    }
}
