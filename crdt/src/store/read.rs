//! Reads: synchronous, each in its own redb read transaction, never blocked by the writer.
//!
//! Listing reads the index only; no read here loads an Automerge document except
//! [`Store::load_session`](super::Store::load_session), and a session whose bytes do not load is
//! quarantined rather than failing anything else.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{
    ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
};
use serde::{Deserialize, Serialize};

use super::compaction::load_part_strict;
use super::tables::{
    BY_UPDATED, CHUNKS, INDEX, NODE_META, QUARANTINE, QuarantineRecord, SNAPSHOTS, SYNC_STATES,
    decode_part, key_upper_bound,
};
use super::{Store, StoreError};
use crate::doc::{DocError, SessionDoc};
use crate::types::{Chunk, IndexEntry, PartId, SessionKey};

/// Most sessions in one listed page.
pub const LIST_PAGE_SESSIONS_MAX: usize = 1000;

/// A session as listed from the index.
#[derive(Clone, Debug, PartialEq)]
pub struct ListedSession {
    pub key: SessionKey,
    pub entry: IndexEntry,
}

/// Where a by-updatedAt listing stopped: the next page starts strictly after (older than) it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatedCursor {
    pub updated_at_ms: i64,
    pub key: SessionKey,
}

/// One page of sessions, most recently updated first.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionPage {
    pub sessions: Vec<ListedSession>,
    /// Present when the page is full: pass it back for the next page.
    pub next: Option<UpdatedCursor>,
}

/// The stored rows of one part, gathered by `load_chunks`.
#[derive(Default)]
struct StoredPart {
    snapshot: Option<Vec<u8>>,
    chunks: Vec<Vec<u8>>,
}

fn check_limit(limit: usize) -> Result<(), StoreError> {
    if limit > LIST_PAGE_SESSIONS_MAX {
        return Err(StoreError::TooLarge {
            what: "a listing page (sessions)",
            len: limit,
            max: LIST_PAGE_SESSIONS_MAX,
        });
    }
    Ok(())
}

fn decode_entry(key: &str, bytes: &[u8]) -> Result<IndexEntry, StoreError> {
    postcard::from_bytes(bytes).map_err(|error| StoreError::CorruptEntry {
        table: "index",
        entry: key.to_owned(),
        reason: error.to_string(),
    })
}

impl Store {
    fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.db.begin_read().map_err(StoreError::db)
    }

    /// Every stored chunk of the session: per part, its snapshot (if compacted) then its
    /// incremental chunks in sequence order. Empty when the session has no chunks.
    ///
    /// Refuses a quarantined session, and quarantines one whose rows do not decode.
    pub fn load_chunks(&self, key: &SessionKey) -> Result<Vec<Chunk>, StoreError> {
        let txn = self.read()?;
        if let Some(record) = quarantine_record(&txn, key)? {
            return Err(StoreError::Quarantined {
                key: key.clone(),
                part: record.part,
                reason: record.reason,
            });
        }
        let mut parts: BTreeMap<Vec<u8>, StoredPart> = BTreeMap::new();
        let upper = key_upper_bound(key.as_str());
        let none: &[u8] = &[];
        let snapshots = txn.open_table(SNAPSHOTS).map_err(StoreError::db)?;
        for row in
            snapshots.range((key.as_str(), none)..(upper.as_str(), none)).map_err(StoreError::db)?
        {
            let (row_key, value) = row.map_err(StoreError::db)?;
            parts.entry(row_key.value().1.to_vec()).or_default().snapshot =
                Some(value.value().to_vec());
        }
        let chunks = txn.open_table(CHUNKS).map_err(StoreError::db)?;
        for row in chunks
            .range((key.as_str(), none, 0)..(upper.as_str(), none, 0))
            .map_err(StoreError::db)?
        {
            let (row_key, value) = row.map_err(StoreError::db)?;
            parts
                .entry(row_key.value().1.to_vec())
                .or_default()
                .chunks
                .push(value.value().to_vec());
        }
        let mut loaded = Vec::new();
        for (part_bytes, StoredPart { snapshot, chunks }) in parts {
            let part = match decode_part(&part_bytes) {
                Ok(part) => part,
                Err(error) => {
                    return Err(self.quarantine(
                        key,
                        None,
                        format!("a part key does not decode: {error}"),
                    ));
                }
            };
            loaded.extend(snapshot.map(|bytes| Chunk { part: part.clone(), bytes }));
            loaded.extend(chunks.into_iter().map(|bytes| Chunk { part: part.clone(), bytes }));
        }
        Ok(loaded)
    }

    /// The session as a document, or `None` when it has no chunks. `actor` is the writer actor
    /// for changes made from now on (see `doc::writer_actor`).
    ///
    /// Every part is first loaded strictly: Automerge's incremental loading skips bytes it cannot
    /// decode, which would hydrate a silently shorter session. A part that fails quarantines the
    /// session: this call and every later one answer `Quarantined` naming the session and the
    /// part, and every other session keeps loading.
    pub fn load_session(
        &self,
        key: &SessionKey,
        actor: &[u8],
    ) -> Result<Option<SessionDoc>, StoreError> {
        let chunks = self.load_chunks(key)?;
        if chunks.is_empty() {
            return Ok(None);
        }
        for (part, range) in part_runs(&chunks) {
            let bytes = chunks[range].iter().map(|chunk| chunk.bytes.as_slice());
            match load_part_strict(None, bytes) {
                // Changes waiting on dependencies are not corruption: the document keeps them
                // queued until a replica supplies the missing changes.
                Ok(_) | Err(automerge::AutomergeError::MissingDeps) => {}
                Err(error) => {
                    return Err(self.quarantine(key, Some(part.clone()), error.to_string()));
                }
            }
        }
        match SessionDoc::load(key, actor, chunks) {
            Ok(doc) => Ok(Some(doc)),
            Err(error) => match corrupt_part(&error) {
                Some(part) => Err(self.quarantine(key, part, error.to_string())),
                None => Err(StoreError::Load { key: key.clone(), source: Arc::new(error) }),
            },
        }
    }

    /// The session's index entry.
    pub fn index_entry(&self, key: &SessionKey) -> Result<Option<IndexEntry>, StoreError> {
        let txn = self.read()?;
        let index = txn.open_table(INDEX).map_err(StoreError::db)?;
        let Some(row) = index.get(key.as_str()).map_err(StoreError::db)? else {
            return Ok(None);
        };
        decode_entry(key.as_str(), row.value().1).map(Some)
    }

    /// Up to `limit` sessions, most recently updated first, starting after `cursor`. A range
    /// scan of the by-updatedAt ordering plus one index lookup per session listed.
    ///
    /// An index entry that does not decode is skipped with a warning (the index is derived
    /// data: the session's next write rewrites it); it never fails the page.
    pub fn list_by_updated(
        &self,
        limit: usize,
        cursor: Option<&UpdatedCursor>,
    ) -> Result<SessionPage, StoreError> {
        check_limit(limit)?;
        let txn = self.read()?;
        let by_updated = txn.open_table(BY_UPDATED).map_err(StoreError::db)?;
        let index = txn.open_table(INDEX).map_err(StoreError::db)?;
        let rows = match cursor {
            Some(cursor) => by_updated
                .range(..(cursor.updated_at_ms, cursor.key.as_str()))
                .map_err(StoreError::db)?,
            None => by_updated.iter().map_err(StoreError::db)?,
        };
        let mut sessions = Vec::with_capacity(limit);
        for row in rows.rev() {
            if sessions.len() == limit {
                break;
            }
            let (row_key, _) = row.map_err(StoreError::db)?;
            let (updated_at_ms, key) = row_key.value();
            if let Some(listed) = listed_session(&index, key, Some(updated_at_ms))? {
                sessions.push(listed);
            }
        }
        let next =
            (sessions.len() == limit && limit > 0).then(|| sessions.last()).flatten().map(|last| {
                UpdatedCursor { updated_at_ms: last.entry.updated_at_ms, key: last.key.clone() }
            });
        Ok(SessionPage { sessions, next })
    }

    /// Up to `limit` sessions in key order, starting strictly after `after`: how the mesh pages
    /// through every session for anti-entropy.
    pub fn list_by_key(
        &self,
        after: Option<&SessionKey>,
        limit: usize,
    ) -> Result<Vec<ListedSession>, StoreError> {
        check_limit(limit)?;
        let txn = self.read()?;
        let index = txn.open_table(INDEX).map_err(StoreError::db)?;
        let start = after.map(|key| key_upper_bound(key.as_str())).unwrap_or_default();
        let mut sessions = Vec::with_capacity(limit);
        for row in index.range(start.as_str()..).map_err(StoreError::db)? {
            if sessions.len() == limit {
                break;
            }
            let (row_key, _) = row.map_err(StoreError::db)?;
            if let Some(listed) = listed_session(&index, row_key.value(), None)? {
                sessions.push(listed);
            }
        }
        Ok(sessions)
    }

    /// The sync state kept for `peer` on this session.
    pub fn sync_state(&self, peer: &str, key: &SessionKey) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(SYNC_STATES).map_err(StoreError::db)?;
        let row = table.get((peer, key.as_str())).map_err(StoreError::db)?;
        Ok(row.map(|row| row.value().to_vec()))
    }

    /// A node-level value (`PutNodeMeta`).
    pub fn node_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(NODE_META).map_err(StoreError::db)?;
        let row = table.get(name).map_err(StoreError::db)?;
        Ok(row.map(|row| row.value().to_vec()))
    }

    /// Number of sessions in the index.
    pub fn session_count(&self) -> Result<u64, StoreError> {
        let txn = self.read()?;
        let index = txn.open_table(INDEX).map_err(StoreError::db)?;
        index.len().map_err(StoreError::db)
    }

    /// Why the session is quarantined, if it is.
    pub fn quarantine_record(
        &self,
        key: &SessionKey,
    ) -> Result<Option<QuarantineRecord>, StoreError> {
        quarantine_record(&self.read()?, key)
    }

    /// Up to `limit` quarantined sessions in key order, starting strictly after `after`.
    pub fn quarantined(
        &self,
        after: Option<&SessionKey>,
        limit: usize,
    ) -> Result<Vec<(SessionKey, QuarantineRecord)>, StoreError> {
        check_limit(limit)?;
        let txn = self.read()?;
        let table = txn.open_table(QUARANTINE).map_err(StoreError::db)?;
        let start = after.map(|key| key_upper_bound(key.as_str())).unwrap_or_default();
        let mut records = Vec::with_capacity(limit);
        for row in table.range(start.as_str()..).map_err(StoreError::db)?.take(limit) {
            let (row_key, value) = row.map_err(StoreError::db)?;
            let corrupt = |reason: String| StoreError::CorruptEntry {
                table: "quarantine",
                entry: row_key.value().to_owned(),
                reason,
            };
            let key = SessionKey::new(row_key.value()).map_err(|e| corrupt(e.to_string()))?;
            let record = postcard::from_bytes(value.value()).map_err(|e| corrupt(e.to_string()))?;
            records.push((key, record));
        }
        Ok(records)
    }
}

/// Consecutive runs of chunks of the same part, as `load_chunks` returns them.
fn part_runs(chunks: &[Chunk]) -> Vec<(&PartId, std::ops::Range<usize>)> {
    let mut runs: Vec<(&PartId, std::ops::Range<usize>)> = Vec::new();
    for (at, chunk) in chunks.iter().enumerate() {
        match runs.last_mut() {
            Some((part, range)) if **part == chunk.part => range.end = at + 1,
            _ => runs.push((&chunk.part, at..at + 1)),
        }
    }
    runs
}

/// Whether a load error means the stored bytes are bad (`Some`, with the part when one is
/// named), as opposed to a caller error such as a malformed writer actor (`None`).
fn corrupt_part(error: &DocError) -> Option<Option<PartId>> {
    match error {
        DocError::ChunkDecode { part, .. }
        | DocError::Automerge { part, .. }
        | DocError::MalformedPart { part, .. } => Some(Some(part.clone())),
        DocError::TooManyParts { .. } | DocError::SessionId { .. } => Some(None),
        _ => None,
    }
}

fn quarantine_record(
    txn: &ReadTransaction,
    key: &SessionKey,
) -> Result<Option<QuarantineRecord>, StoreError> {
    let table = txn.open_table(QUARANTINE).map_err(StoreError::db)?;
    let Some(row) = table.get(key.as_str()).map_err(StoreError::db)? else {
        return Ok(None);
    };
    postcard::from_bytes(row.value()).map(Some).map_err(|error| StoreError::CorruptEntry {
        table: "quarantine",
        entry: key.to_string(),
        reason: error.to_string(),
    })
}

/// The listed form of one index row, or `None` (with a warning) when the row is unusable: a key
/// that is not a session key, an entry that does not decode, or an ordering row whose timestamp
/// no longer matches the entry.
fn listed_session(
    index: &ReadOnlyTable<&'static str, (i64, &'static [u8])>,
    key: &str,
    expect_updated_at_ms: Option<i64>,
) -> Result<Option<ListedSession>, StoreError> {
    let Some(row) = index.get(key).map_err(StoreError::db)? else {
        tracing::warn!(key, "ordering row without an index entry; skipped");
        return Ok(None);
    };
    let (updated_at_ms, bytes) = row.value();
    if expect_updated_at_ms.is_some_and(|expected| expected != updated_at_ms) {
        tracing::warn!(key, "stale ordering row; skipped");
        return Ok(None);
    }
    let session_key = match SessionKey::new(key) {
        Ok(session_key) => session_key,
        Err(error) => {
            tracing::warn!(key, %error, "index row under an invalid session key; skipped");
            return Ok(None);
        }
    };
    match decode_entry(key, bytes) {
        Ok(entry) => Ok(Some(ListedSession { key: session_key, entry })),
        Err(error) => {
            tracing::warn!(%error, "index entry skipped");
            Ok(None)
        }
    }
}
