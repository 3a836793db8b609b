//! Compaction: folding a part's incremental chunks into one snapshot, off the commit path, and
//! the strict loader that also tells a corrupt part from a healthy one.
//!
//! The writer hands parts over the threshold to the compactor thread. The compactor reads the
//! part in a read transaction, loads its snapshot and chunks into an Automerge document and saves
//! it whole: the expensive part, done without holding up any commit. It sends the result back to
//! the writer, which applies it in its next transaction only if the part is still as it was read
//! (same snapshot, last folded chunk still there): the snapshot replaces exactly the chunks that
//! were read, by sequence number, so chunks that arrived meanwhile stay. Sequence numbers are
//! unique across the whole store, so a session deleted and re-created meanwhile cannot be
//! mistaken for the one that was read.
//!
//! A part that fails to load is left untouched and its session quarantined; a part whose changes
//! wait on missing dependencies is left as chunks, since `save()` would drop the waiting changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use automerge::{Automerge, AutomergeError, LoadOptions, OnPartialLoad, ReadDoc};
use redb::{Database, ReadableDatabase, ReadableTable};

use super::StoreError;
use super::apply::{PartRef, WriteTables};
use super::group_commit::Job;
use super::tables::{CHUNKS, PARTS, PartState, SNAPSHOTS};

/// Loads one part from its snapshot and chunks, refusing anything that does not parse: Automerge's
/// `load_incremental` skips a bad chunk with a warning, which would hide corruption, so the bytes
/// are concatenated and loaded in one strict pass instead.
pub(crate) fn load_part_strict<'a>(
    snapshot: Option<&'a [u8]>,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Automerge, AutomergeError> {
    let mut bytes = snapshot.map(<[u8]>::to_vec).unwrap_or_default();
    for chunk in chunks {
        bytes.extend_from_slice(chunk);
    }
    Automerge::load_with_options(&bytes, LoadOptions::new().on_partial_load(OnPartialLoad::Error))
}

/// A snapshot made from what a read transaction saw of one part.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Folded {
    /// The part's `snapshot_through` when it was read: the result applies only if unchanged.
    pub(crate) snapshot_through: u64,
    /// Sequence number of the last chunk folded; every chunk up to it is replaced.
    pub(crate) last_seq: u64,
    pub(crate) chunks: u64,
    pub(crate) chunk_bytes: u64,
    pub(crate) snapshot: Vec<u8>,
}

/// What the compactor found for one part.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Compaction {
    Folded(Folded),
    /// Nothing to fold (already compacted, or the session was deleted).
    Nothing,
    /// Some changes wait on dependencies that are not stored yet; kept as chunks.
    MissingDeps,
    /// The part does not load; the writer quarantines the session.
    Corrupt {
        reason: String,
    },
}

/// The compactor's answer for one part, sent back to the writer.
#[derive(Debug)]
pub(crate) struct CompactionReply {
    pub(crate) target: PartRef,
    pub(crate) outcome: Result<Compaction, StoreError>,
}

/// Reads one part and folds it, without writing anything.
pub(crate) fn fold_part(db: &Database, target: &PartRef) -> Result<Compaction, StoreError> {
    let key = target.key.as_str();
    let part = target.part.as_slice();
    let txn = db.begin_read().map_err(StoreError::db)?;
    let parts = txn.open_table(PARTS).map_err(StoreError::db)?;
    let Some(state) = parts.get((key, part)).map_err(StoreError::db)? else {
        return Ok(Compaction::Nothing);
    };
    let state = PartState::from_row(state.value());
    let snapshots = txn.open_table(SNAPSHOTS).map_err(StoreError::db)?;
    let snapshot = snapshots.get((key, part)).map_err(StoreError::db)?.map(|row| {
        let bytes: &[u8] = row.value();
        bytes.to_vec()
    });
    let chunk_table = txn.open_table(CHUNKS).map_err(StoreError::db)?;
    let mut chunks = Vec::new();
    let mut last_seq = None;
    for row in chunk_table.range((key, part, 0)..=(key, part, u64::MAX)).map_err(StoreError::db)? {
        let (row_key, value) = row.map_err(StoreError::db)?;
        last_seq = Some(row_key.value().2);
        chunks.push(value.value().to_vec());
    }
    let Some(last_seq) = last_seq else {
        return Ok(Compaction::Nothing);
    };
    let doc = match load_part_strict(snapshot.as_deref(), chunks.iter().map(Vec::as_slice)) {
        Ok(doc) => doc,
        Err(AutomergeError::MissingDeps) => return Ok(Compaction::MissingDeps),
        Err(error) => return Ok(Compaction::Corrupt { reason: error.to_string() }),
    };
    // After a snapshot, Automerge queues changes with missing dependencies instead of failing.
    if !doc.get_missing_deps(&[]).is_empty() {
        return Ok(Compaction::MissingDeps);
    }
    Ok(Compaction::Folded(Folded {
        snapshot_through: state.snapshot_through,
        last_seq,
        chunks: chunks.len() as u64,
        chunk_bytes: chunks.iter().map(|chunk| chunk.len() as u64).sum(),
        snapshot: doc.save(),
    }))
}

/// Applies a fold inside the writer's transaction. False when the part changed since it was read
/// (compacted or deleted meanwhile): the fold is dropped and the chunks stay.
pub(crate) fn apply_fold(
    tables: &mut WriteTables<'_>,
    target: &PartRef,
    folded: &Folded,
) -> Result<bool, StoreError> {
    let key = target.key.as_str();
    let part = target.part.as_slice();
    let Some(state) = tables.part_state(key, part)? else { return Ok(false) };
    let last_present =
        tables.chunks.get((key, part, folded.last_seq)).map_err(StoreError::db)?.is_some();
    if state.snapshot_through != folded.snapshot_through || !last_present {
        return Ok(false);
    }
    tables.snapshots.insert((key, part), folded.snapshot.as_slice()).map_err(StoreError::db)?;
    tables
        .chunks
        .retain_in((key, part, 0)..=(key, part, folded.last_seq), |_, _| false)
        .map_err(StoreError::db)?;
    let after = PartState {
        snapshot_through: folded.last_seq,
        chunk_count: state.chunk_count.saturating_sub(folded.chunks),
        chunk_bytes: state.chunk_bytes.saturating_sub(folded.chunk_bytes),
    };
    tables.parts.insert((key, part), after.to_row()).map_err(StoreError::db)?;
    Ok(true)
}

/// The compactor thread: folds the parts the writer sends, one at a time, and answers each.
pub(crate) struct Compactor {
    pub(crate) db: Arc<Database>,
    pub(crate) parts: Receiver<PartRef>,
    pub(crate) replies: SyncSender<Job>,
    pub(crate) stopping: Arc<AtomicBool>,
}

impl Compactor {
    pub(crate) fn run(self) {
        while let Ok(target) = self.parts.recv() {
            if self.stopping.load(Ordering::Acquire) {
                break;
            }
            let span = tracing::debug_span!("compaction", key = %target.key);
            let _entered = span.enter();
            let outcome = fold_part(&self.db, &target);
            let reply = Box::new(CompactionReply { target, outcome });
            if self.replies.send(Job::Compaction(reply)).is_err() {
                break;
            }
        }
        tracing::debug!("store compactor stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::apply::CompactThreshold;
    use crate::store::batch::WriteOp;
    use crate::store::tables::encode_part;
    use crate::types::{Chunk, PartId, SessionKey};
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};
    use redb::backends::InMemoryBackend;

    const NEVER: CompactThreshold = CompactThreshold { chunks_max: u64::MAX, bytes_max: u64::MAX };

    fn key() -> SessionKey {
        SessionKey::new("agent:main:fold").unwrap()
    }

    fn target() -> PartRef {
        PartRef { key: key().to_string(), part: encode_part(&PartId::Manifest) }
    }

    fn write(db: &Database, f: impl FnOnce(&mut WriteTables<'_>)) {
        let txn = db.begin_write().unwrap();
        {
            let mut tables = WriteTables::open(&txn).unwrap();
            f(&mut tables);
            tables.finish().unwrap();
        }
        txn.commit().unwrap();
    }

    fn append(db: &Database, doc: &mut AutoCommit, value: i64) {
        doc.put(ROOT, format!("k{value}"), value).unwrap();
        let chunk = Chunk { part: PartId::Manifest, bytes: doc.save_incremental() };
        let op = WriteOp::AppendChunks { key: key(), chunks: vec![chunk] };
        write(db, |tables| tables.apply(&op, NEVER, &mut Vec::new()).unwrap());
    }

    fn stored(db: &Database) -> (bool, usize) {
        let txn = db.begin_read().unwrap();
        let snapshot =
            txn.open_table(SNAPSHOTS).unwrap().get((key().as_str(), &[0u8][..])).unwrap();
        let chunks = txn.open_table(CHUNKS).unwrap().iter().unwrap().count();
        (snapshot.is_some(), chunks)
    }

    fn memory_db() -> Database {
        let db = redb::Builder::new().create_with_backend(InMemoryBackend::new()).unwrap();
        write(&db, |_| {});
        db
    }

    #[test]
    fn a_fold_keeps_chunks_that_arrived_after_it_was_read() {
        let db = memory_db();
        let mut doc = AutoCommit::new();
        for i in 0..5 {
            append(&db, &mut doc, i);
        }
        let Compaction::Folded(folded) = fold_part(&db, &target()).unwrap() else {
            panic!("expected a fold")
        };
        append(&db, &mut doc, 5);
        append(&db, &mut doc, 6);
        let mut applied = false;
        write(&db, |tables| applied = apply_fold(tables, &target(), &folded).unwrap());
        assert!(applied);
        assert_eq!(stored(&db), (true, 2), "snapshot plus the two late chunks");
        // A second, stale fold of the same first read is refused.
        let mut again = true;
        write(&db, |tables| again = apply_fold(tables, &target(), &folded).unwrap());
        assert!(!again);
    }

    #[test]
    fn a_fold_of_a_session_deleted_and_recreated_meanwhile_is_dropped() {
        let db = memory_db();
        let mut doc = AutoCommit::new();
        for i in 0..5 {
            append(&db, &mut doc, i);
        }
        let Compaction::Folded(folded) = fold_part(&db, &target()).unwrap() else {
            panic!("expected a fold")
        };
        let delete = WriteOp::DeleteSession { key: key() };
        write(&db, |tables| tables.apply(&delete, NEVER, &mut Vec::new()).unwrap());
        let mut fresh = AutoCommit::new();
        for i in 0..6 {
            append(&db, &mut fresh, 100 + i);
        }
        let mut applied = true;
        write(&db, |tables| applied = apply_fold(tables, &target(), &folded).unwrap());
        assert!(!applied, "the deleted session's snapshot must not come back");
        assert_eq!(stored(&db), (false, 6));
    }

    #[test]
    fn strict_load_refuses_a_garbage_chunk_that_load_incremental_would_skip() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "a", 1).unwrap();
        let first = doc.save_incremental();
        let garbage = b"not an automerge chunk".to_vec();

        let mut lenient = Automerge::new();
        lenient.load_incremental(&first).unwrap();
        assert!(lenient.load_incremental(&garbage).is_ok(), "automerge skips bad chunks");

        assert!(load_part_strict(None, [first.as_slice()]).is_ok());
        assert!(load_part_strict(None, [first.as_slice(), garbage.as_slice()]).is_err());
        assert!(load_part_strict(Some(garbage.as_slice()), [first.as_slice()]).is_err());
    }

    #[test]
    fn strict_load_reads_a_snapshot_followed_by_chunks() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "a", 1).unwrap();
        let snapshot = doc.save();
        doc.put(ROOT, "b", 2).unwrap();
        let chunk = doc.save_incremental();
        let loaded = load_part_strict(Some(&snapshot), [chunk.as_slice()]).unwrap();
        assert_eq!(loaded.get_heads(), doc.get_heads());
    }
}
