//! Write batches: the serializable unit of work the store commits atomically, and its limits.
//!
//! The mesh core emits batches as storage effects; the driver submits them to the store; the
//! simulator carries the same values through its model of a disk. A batch is applied in one
//! transaction together with whatever else is queued (group commit), and acknowledged only after
//! that transaction is durable.

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::types::{Chunk, IndexEntry, SessionKey};

/// Most operations in one batch. A batch must fit in one group commit.
pub const BATCH_OPS_MAX: usize = 8192;
/// Most payload bytes (chunk, sync-state and metadata bytes) in one batch.
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest encoded Automerge sync state kept per (peer, session).
pub const SYNC_STATE_BYTES_MAX: usize = 1024 * 1024;
/// Longest peer id (a base58 PeerId is about 52 characters).
pub const PEER_ID_BYTES_MAX: usize = 128;
/// Longest node-metadata name.
pub const NODE_META_NAME_BYTES_MAX: usize = 128;
/// Largest node-metadata value (identity keys, counters: small by nature).
pub const NODE_META_BYTES_MAX: usize = 64 * 1024;

/// One change to the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Appends incremental chunks to the session's parts, in order. Empty chunks are skipped.
    AppendChunks { key: SessionKey, chunks: Vec<Chunk> },
    /// Sets the session's index entry (and its position in the by-updatedAt ordering). Boxed:
    /// an entry is several times larger than any other op.
    PutIndex { key: SessionKey, entry: Box<IndexEntry> },
    /// Sets the sync state kept for `peer` on this session.
    PutSyncState { peer: String, key: SessionKey, bytes: Vec<u8> },
    /// Removes everything of the session: chunks, snapshots, index entry, sync states and any
    /// quarantine record (so a quarantined session can be replaced by a replica's copy).
    DeleteSession { key: SessionKey },
    /// Sets a node-level value (node identity, incarnation counter...).
    PutNodeMeta { name: String, bytes: Vec<u8> },
}

impl WriteOp {
    /// The bytes this op carries, counted against the queue and group-commit byte limits.
    pub(crate) fn payload_bytes(&self) -> usize {
        match self {
            WriteOp::AppendChunks { key, chunks } => {
                key.as_str().len() + chunks.iter().map(|c| c.bytes.len()).sum::<usize>()
            }
            WriteOp::PutIndex { key, entry } => {
                key.as_str().len() + entry.session_id.len() + entry.agent_id.len()
            }
            WriteOp::PutSyncState { peer, key, bytes } => {
                peer.len() + key.as_str().len() + bytes.len()
            }
            WriteOp::DeleteSession { key } => key.as_str().len(),
            WriteOp::PutNodeMeta { name, bytes } => name.len() + bytes.len(),
        }
    }

    fn check_limits(&self) -> Result<(), StoreError> {
        let too_large = |what, len, max| {
            if len > max { Err(StoreError::TooLarge { what, len, max }) } else { Ok(()) }
        };
        match self {
            WriteOp::AppendChunks { .. } | WriteOp::PutIndex { .. } => Ok(()),
            WriteOp::DeleteSession { .. } => Ok(()),
            WriteOp::PutSyncState { peer, bytes, .. } => {
                check_name("peer id", peer)?;
                too_large("a peer id (bytes)", peer.len(), PEER_ID_BYTES_MAX)?;
                too_large("a sync state (bytes)", bytes.len(), SYNC_STATE_BYTES_MAX)
            }
            WriteOp::PutNodeMeta { name, bytes } => {
                check_name("node-metadata name", name)?;
                too_large("a node-metadata name (bytes)", name.len(), NODE_META_NAME_BYTES_MAX)?;
                too_large("a node-metadata value (bytes)", bytes.len(), NODE_META_BYTES_MAX)
            }
        }
    }
}

/// Peer ids and metadata names become parts of store keys, where NUL is the range separator.
fn check_name(what: &'static str, name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.contains('\0') {
        return Err(StoreError::InvalidName { what, name: name.to_owned() });
    }
    Ok(())
}

/// Operations applied atomically: all of them are durable, or none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    pub fn new(ops: Vec<WriteOp>) -> Self {
        Self { ops }
    }

    pub(crate) fn payload_bytes(&self) -> usize {
        self.ops.iter().map(WriteOp::payload_bytes).sum()
    }

    /// Refuses a batch that could never be committed: over [`BATCH_OPS_MAX`] ops or
    /// [`BATCH_BYTES_MAX`] bytes, or an op over its own limit.
    pub(crate) fn check_limits(&self) -> Result<(), StoreError> {
        if self.ops.len() > BATCH_OPS_MAX {
            return Err(StoreError::TooLarge {
                what: "a write batch (ops)",
                len: self.ops.len(),
                max: BATCH_OPS_MAX,
            });
        }
        let bytes = self.payload_bytes();
        if bytes > BATCH_BYTES_MAX {
            return Err(StoreError::TooLarge {
                what: "a write batch (bytes)",
                len: bytes,
                max: BATCH_BYTES_MAX,
            });
        }
        self.ops.iter().try_for_each(WriteOp::check_limits)
    }
}

/// What the store reports when a batch is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    /// Number of the group commit (the redb transaction) that made the batch durable; grows by
    /// one per group since the store was opened.
    pub group: u64,
    /// How many batches shared that transaction.
    pub group_batches: u32,
    /// How many ops that transaction applied.
    pub group_ops: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PartId;

    fn key() -> SessionKey {
        SessionKey::new("agent:main:main").unwrap()
    }

    #[test]
    fn batches_over_their_limits_are_refused_naming_the_limit() {
        let ops = vec![WriteOp::DeleteSession { key: key() }; BATCH_OPS_MAX + 1];
        let err = WriteBatch::new(ops).check_limits().unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { max: BATCH_OPS_MAX, .. }), "{err}");

        let chunk = Chunk { part: PartId::Manifest, bytes: vec![0; BATCH_BYTES_MAX] };
        let err = WriteBatch::new(vec![WriteOp::AppendChunks { key: key(), chunks: vec![chunk] }])
            .check_limits()
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { max: BATCH_BYTES_MAX, .. }), "{err}");

        let op = WriteOp::PutSyncState {
            peer: "p".into(),
            key: key(),
            bytes: vec![0; SYNC_STATE_BYTES_MAX + 1],
        };
        let err = WriteBatch::new(vec![op]).check_limits().unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { max: SYNC_STATE_BYTES_MAX, .. }), "{err}");

        let op = WriteOp::PutSyncState { peer: String::new(), key: key(), bytes: vec![] };
        let err = WriteBatch::new(vec![op]).check_limits().unwrap_err();
        assert!(matches!(err, StoreError::InvalidName { what: "peer id", .. }), "{err}");
    }

    #[test]
    fn batches_round_trip_through_postcard() {
        let batch = WriteBatch::new(vec![
            WriteOp::AppendChunks {
                key: key(),
                chunks: vec![Chunk { part: PartId::Manifest, bytes: vec![1, 2, 3] }],
            },
            WriteOp::PutIndex { key: key(), entry: Box::default() },
            WriteOp::PutSyncState { peer: "12D3".into(), key: key(), bytes: vec![4] },
            WriteOp::DeleteSession { key: key() },
            WriteOp::PutNodeMeta { name: "incarnation".into(), bytes: vec![5] },
        ]);
        let bytes = postcard::to_allocvec(&batch).unwrap();
        assert_eq!(postcard::from_bytes::<WriteBatch>(&bytes).unwrap(), batch);
    }
}
