//! Compaction: folding a part's incremental chunks into one snapshot, and the strict loader that
//! also tells a corrupt part from a healthy one.
//!
//! Runs on the writer thread between group commits, a bounded number of parts per round, in its
//! own transaction: the part's snapshot and chunks are loaded into an Automerge document, saved
//! whole, and the snapshot replaces exactly the chunks that were read (by sequence number) in the
//! same transaction. A part that fails to load is left untouched and its session quarantined; a
//! part whose changes wait on missing dependencies is left as chunks, since `save()` would drop
//! the waiting changes.

use automerge::{Automerge, AutomergeError, LoadOptions, OnPartialLoad, ReadDoc};
use redb::ReadableTable;

use super::StoreError;
use super::apply::{PartRef, WriteTables};
use super::tables::PartState;

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

/// What one part's compaction did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Compaction {
    /// `chunks` chunks (`chunk_bytes` bytes) were replaced by a snapshot of `snapshot_bytes`.
    Done { chunks: u64, chunk_bytes: u64, snapshot_bytes: usize },
    /// Nothing to fold (already compacted, or the session was deleted meanwhile).
    Nothing,
    /// Some changes wait on dependencies that are not stored yet; kept as chunks.
    MissingDeps,
    /// The part does not load; the caller quarantines the session.
    Corrupt { reason: String },
}

/// Compacts one part inside the caller's write transaction.
pub(crate) fn compact_part(
    tables: &mut WriteTables<'_>,
    target: &PartRef,
) -> Result<Compaction, StoreError> {
    let key = target.key.as_str();
    let part = target.part.as_slice();
    let state = tables.part_state(key, part)?;
    if state.chunk_count == 0 {
        return Ok(Compaction::Nothing);
    }
    let snapshot = tables.snapshots.get((key, part)).map_err(StoreError::db)?.map(|row| {
        let bytes: &[u8] = row.value();
        bytes.to_vec()
    });
    let mut chunks = Vec::new();
    let mut last_seq = None;
    for row in
        tables.chunks.range((key, part, 0)..=(key, part, u64::MAX)).map_err(StoreError::db)?
    {
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
    let saved = doc.save();
    let chunk_bytes: u64 = chunks.iter().map(|chunk| chunk.len() as u64).sum();
    tables.snapshots.insert((key, part), saved.as_slice()).map_err(StoreError::db)?;
    tables
        .chunks
        .retain_in((key, part, 0)..=(key, part, last_seq), |_, _| false)
        .map_err(StoreError::db)?;
    let folded = chunks.len() as u64;
    let after = PartState {
        next_seq: state.next_seq,
        chunk_count: state.chunk_count.saturating_sub(folded),
        chunk_bytes: state.chunk_bytes.saturating_sub(chunk_bytes),
    };
    tables.parts.insert((key, part), after.to_row()).map_err(StoreError::db)?;
    Ok(Compaction::Done { chunks: folded, chunk_bytes, snapshot_bytes: saved.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};

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
