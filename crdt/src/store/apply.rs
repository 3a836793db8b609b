//! Applying write ops inside one redb write transaction: the only code that mutates the tables.
//!
//! Used by the writer thread for group commits and for applying compaction results; it never
//! commits, so the caller decides what one transaction holds and how durable it is.

use redb::{ReadableTable, Table, WriteTransaction};

use super::StoreError;
use super::batch::WriteOp;
use super::tables::{
    BY_UPDATED, CHUNK_SEQ_NEXT_KEY, CHUNKS, COUNTERS, INDEX, NODE_META, PARTS, PartState,
    QUARANTINE, QuarantineRecord, SNAPSHOTS, SYNC_STATES, encode_part, key_upper_bound,
};
use crate::types::{Chunk, IndexEntry, SessionKey};

type ChunkKey = (&'static str, &'static [u8], u64);

/// Sequence numbers start at 1: 0 in `PartState::snapshot_through` means "no snapshot".
const FIRST_CHUNK_SEQ: u64 = 1;
type PartKey = (&'static str, &'static [u8]);

/// When a part's pending chunks should be folded into its snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CompactThreshold {
    pub(crate) chunks_max: u64,
    pub(crate) bytes_max: u64,
}

impl CompactThreshold {
    pub(crate) fn exceeded_by(self, state: PartState) -> bool {
        state.chunk_count > self.chunks_max || state.chunk_bytes > self.bytes_max
    }
}

/// A part whose chunks are over the [`CompactThreshold`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PartRef {
    pub(crate) key: String,
    pub(crate) part: Vec<u8>,
}

/// Every table, opened once for the life of one write transaction (redb refuses to open a table
/// twice in one transaction), and the store-wide chunk sequence counter.
pub(crate) struct WriteTables<'txn> {
    counters: Table<'txn, &'static str, u64>,
    /// The sequence number the next chunk gets; written back by [`WriteTables::finish`].
    chunk_seq_next: u64,
    pub(crate) chunks: Table<'txn, ChunkKey, &'static [u8]>,
    pub(crate) snapshots: Table<'txn, PartKey, &'static [u8]>,
    pub(crate) parts: Table<'txn, PartKey, (u64, u64, u64)>,
    index: Table<'txn, &'static str, (i64, &'static [u8])>,
    by_updated: Table<'txn, (i64, &'static str), ()>,
    sync_states: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    node_meta: Table<'txn, &'static str, &'static [u8]>,
    quarantine: Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> WriteTables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        let counters = txn.open_table(COUNTERS).map_err(StoreError::db)?;
        let chunk_seq_next = counters
            .get(CHUNK_SEQ_NEXT_KEY)
            .map_err(StoreError::db)?
            .map_or(FIRST_CHUNK_SEQ, |row| row.value());
        Ok(Self {
            counters,
            chunk_seq_next,
            chunks: txn.open_table(CHUNKS).map_err(StoreError::db)?,
            snapshots: txn.open_table(SNAPSHOTS).map_err(StoreError::db)?,
            parts: txn.open_table(PARTS).map_err(StoreError::db)?,
            index: txn.open_table(INDEX).map_err(StoreError::db)?,
            by_updated: txn.open_table(BY_UPDATED).map_err(StoreError::db)?,
            sync_states: txn.open_table(SYNC_STATES).map_err(StoreError::db)?,
            node_meta: txn.open_table(NODE_META).map_err(StoreError::db)?,
            quarantine: txn.open_table(QUARANTINE).map_err(StoreError::db)?,
        })
    }

    /// Writes back the chunk sequence counter; call before committing.
    pub(crate) fn finish(mut self) -> Result<(), StoreError> {
        self.counters.insert(CHUNK_SEQ_NEXT_KEY, self.chunk_seq_next).map_err(StoreError::db)?;
        Ok(())
    }

    /// Applies one op; parts that now need compaction are pushed onto `compact`.
    pub(crate) fn apply(
        &mut self,
        op: &WriteOp,
        threshold: CompactThreshold,
        compact: &mut Vec<PartRef>,
    ) -> Result<(), StoreError> {
        match op {
            WriteOp::AppendChunks { key, chunks } => {
                self.append_chunks(key, chunks, threshold, compact)
            }
            WriteOp::PutIndex { key, entry } => self.put_index(key, entry),
            WriteOp::PutSyncState { peer, key, bytes } => {
                self.sync_states
                    .insert((peer.as_str(), key.as_str()), bytes.as_slice())
                    .map_err(StoreError::db)?;
                Ok(())
            }
            WriteOp::DeleteSession { key } => self.delete_session(key),
            WriteOp::PutNodeMeta { name, bytes } => {
                self.node_meta.insert(name.as_str(), bytes.as_slice()).map_err(StoreError::db)?;
                Ok(())
            }
        }
    }

    fn append_chunks(
        &mut self,
        key: &SessionKey,
        chunks: &[Chunk],
        threshold: CompactThreshold,
        compact: &mut Vec<PartRef>,
    ) -> Result<(), StoreError> {
        let key = key.as_str();
        for chunk in chunks.iter().filter(|chunk| !chunk.bytes.is_empty()) {
            let part = encode_part(&chunk.part);
            let mut state = self.part_state(key, &part)?.unwrap_or_default();
            let seq = self.chunk_seq_next;
            self.chunk_seq_next += 1;
            self.chunks
                .insert((key, part.as_slice(), seq), chunk.bytes.as_slice())
                .map_err(StoreError::db)?;
            state.chunk_count += 1;
            state.chunk_bytes += chunk.bytes.len() as u64;
            self.parts.insert((key, part.as_slice()), state.to_row()).map_err(StoreError::db)?;
            // Reported on every append while over the threshold (the writer keeps each part
            // once): a part left over it by a crash is picked up by its next append.
            if threshold.exceeded_by(state) {
                compact.push(PartRef { key: key.to_owned(), part });
            }
        }
        Ok(())
    }

    pub(crate) fn part_state(
        &self,
        key: &str,
        part: &[u8],
    ) -> Result<Option<PartState>, StoreError> {
        let row = self.parts.get((key, part)).map_err(StoreError::db)?;
        Ok(row.map(|row| PartState::from_row(row.value())))
    }

    fn put_index(&mut self, key: &SessionKey, entry: &IndexEntry) -> Result<(), StoreError> {
        let key = key.as_str();
        let encoded = postcard::to_allocvec(entry).map_err(|error| StoreError::Encode {
            what: "an index entry",
            reason: error.to_string(),
        })?;
        let updated = entry.updated_at_ms;
        let previous = self.index.get(key).map_err(StoreError::db)?.map(|row| row.value().0);
        if let Some(previous) = previous.filter(|previous| *previous != updated) {
            self.by_updated.remove((previous, key)).map_err(StoreError::db)?;
        }
        self.index.insert(key, (updated, encoded.as_slice())).map_err(StoreError::db)?;
        self.by_updated.insert((updated, key), ()).map_err(StoreError::db)?;
        Ok(())
    }

    fn delete_session(&mut self, key: &SessionKey) -> Result<(), StoreError> {
        let key = key.as_str();
        let upper = key_upper_bound(key);
        let none: &[u8] = &[];
        self.chunks
            .retain_in((key, none, 0)..(upper.as_str(), none, 0), |_, _| false)
            .map_err(StoreError::db)?;
        self.snapshots
            .retain_in((key, none)..(upper.as_str(), none), |_, _| false)
            .map_err(StoreError::db)?;
        self.parts
            .retain_in((key, none)..(upper.as_str(), none), |_, _| false)
            .map_err(StoreError::db)?;
        let updated = self.index.remove(key).map_err(StoreError::db)?.map(|row| row.value().0);
        if let Some(updated) = updated {
            self.by_updated.remove((updated, key)).map_err(StoreError::db)?;
        }
        // Sync states are keyed (peer, session): visit each distinct peer by seeking past the
        // previous one, so the cost is one lookup per peer, not a scan of every session.
        let mut from = String::new();
        loop {
            let peer = {
                let mut rows =
                    self.sync_states.range((from.as_str(), "")..).map_err(StoreError::db)?;
                match rows.next() {
                    Some(row) => row.map_err(StoreError::db)?.0.value().0.to_owned(),
                    None => break,
                }
            };
            self.sync_states.remove((peer.as_str(), key)).map_err(StoreError::db)?;
            from = key_upper_bound(&peer);
        }
        self.quarantine.remove(key).map_err(StoreError::db)?;
        Ok(())
    }

    pub(crate) fn put_quarantine(
        &mut self,
        key: &str,
        record: &QuarantineRecord,
    ) -> Result<(), StoreError> {
        let encoded = postcard::to_allocvec(record).map_err(|error| StoreError::Encode {
            what: "a quarantine record",
            reason: error.to_string(),
        })?;
        self.quarantine.insert(key, encoded.as_slice()).map_err(StoreError::db)?;
        Ok(())
    }
}
