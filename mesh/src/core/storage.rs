//! The core's view of storage: writes are effects, reads are a synchronous trait.
//!
//! Writes leave the core as `Effect::Persist { batch, writes }` and come back as
//! `Input::Persisted { batch }` once durable, so the driver can group-commit them and the
//! simulator can lose the ones that were not yet durable when a node crashes. Reads (hydrating a
//! session, paging the index at start) go through [`Disk`], which the driver implements over the
//! redb store and the simulator over its simulated disk. Reads never see writes that are still in
//! flight: the core keeps every session with unpersisted changes hydrated (pinned) until its
//! batch is durable.

use beamclaw_crdt::doc::SessionDoc;
use beamclaw_crdt::{IndexEntry, SessionKey};

pub use beamclaw_crdt::store::{WriteBatch, WriteOp};

use super::ids::NodeId;

/// Sessions read per page when loading the index at start (the store's page limit).
pub const INDEX_PAGE_SESSIONS_MAX: usize = beamclaw_crdt::store::LIST_PAGE_SESSIONS_MAX;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    /// The session's stored bytes are damaged; the store has quarantined it.
    #[error("session {key} is quarantined: {reason}")]
    Quarantined { key: String, reason: String },
    #[error("storage read failed: {0}")]
    Io(String),
}

pub trait Disk {
    /// The stored session as a document writing as `actor`, or `None` for an unknown session.
    /// Loading is strict: damaged bytes quarantine the session (`DiskError::Quarantined`).
    fn load_session(&self, key: &SessionKey, actor: &[u8])
    -> Result<Option<SessionDoc>, DiskError>;
    /// Index entries in key order, strictly after `after`.
    fn index_page(
        &self,
        after: Option<&SessionKey>,
        limit: usize,
    ) -> Result<Vec<(SessionKey, IndexEntry)>, DiskError>;
    /// The persisted Automerge sync state we keep for `peer` on `key`.
    fn sync_state(&self, peer: &NodeId, key: &SessionKey) -> Result<Option<Vec<u8>>, DiskError>;
}

/// The peer name under which sync states are stored.
pub fn peer_name(node: &NodeId) -> String {
    hex::encode(node.0)
}
