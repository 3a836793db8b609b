//! The core's `Disk` over the redb store: synchronous reads (redb read transactions are cheap
//! and never wait for the writer).

use std::sync::Arc;

use beamclaw_crdt::doc::SessionDoc;
use beamclaw_crdt::store::{Store, StoreError};
use beamclaw_crdt::{IndexEntry, SessionKey};

use crate::core::NodeId;
use crate::core::storage::{Disk, DiskError, peer_name};

pub(crate) struct StoreDisk(pub Arc<Store>);

fn disk_error(e: StoreError) -> DiskError {
    match e {
        StoreError::Quarantined { key, reason, .. } => {
            DiskError::Quarantined { key: key.to_string(), reason }
        }
        other => DiskError::Io(other.to_string()),
    }
}

impl Disk for StoreDisk {
    fn load_session(
        &self,
        key: &SessionKey,
        actor: &[u8],
    ) -> Result<Option<SessionDoc>, DiskError> {
        self.0.load_session(key, actor).map_err(disk_error)
    }

    fn index_page(
        &self,
        after: Option<&SessionKey>,
        limit: usize,
    ) -> Result<Vec<(SessionKey, IndexEntry)>, DiskError> {
        let page = self.0.list_by_key(after, limit).map_err(disk_error)?;
        Ok(page.into_iter().map(|s| (s.key, s.entry)).collect())
    }

    fn sync_state(&self, peer: &NodeId, key: &SessionKey) -> Result<Option<Vec<u8>>, DiskError> {
        self.0.sync_state(&peer_name(peer), key).map_err(disk_error)
    }
}
