//! The disk model: each node's durable state survives its crashes; writes become durable in
//! order, after an fsync latency, and a crash loses every write not yet durable.
//!
//! The core hands writes out as `Effect::Persist { batch, writes }`. The simulator queues them
//! per node ([`WriteQueue`]); each batch completes no earlier than the one before it (FIFO, as
//! the store's group commit), at which point its ops are applied to the [`Durable`] state, and a
//! moment later the node hears `Input::Persisted`. A crash in between is the "durable but not
//! acknowledged" window; a crash before drops the batch. Reads ([`SimDisk`], the core's
//! [`Disk`]) see only durable state, as the store's reads do.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::rc::Rc;

use beamclaw_crdt::doc::SessionDoc;
use beamclaw_crdt::{Chunk, IndexEntry, SessionKey};
use beamclaw_mesh::core::ids::NodeId;
use beamclaw_mesh::core::storage::{Disk, DiskError, WriteBatch, WriteOp, peer_name};
use beamclaw_mesh::core::{BatchId, Epoch};

use crate::clock::Micros;
use crate::rng::{SimRng, between};

/// fsync latency of a local SSD: most group commits take
/// [`FSYNC_US_MIN`]..=[`FSYNC_US_MAX`], a few up to [`FSYNC_TAIL_US_MAX`].
pub const FSYNC_US_MIN: Micros = 500;
pub const FSYNC_US_MAX: Micros = 5_000;
pub const FSYNC_TAIL_PER_MILLE: u64 = 10;
pub const FSYNC_TAIL_US_MAX: Micros = 40_000;

/// Time between a batch becoming durable and the node hearing about it (the store's writer
/// thread waking the driver), in microseconds: a crash in this window keeps the write but loses
/// the acknowledgement.
pub const PERSISTED_NOTICE_US_MAX: Micros = 200;

/// Write batches a node may have queued and not yet durable. The core has no bound of its own
/// on in-flight batches; the store's queue does (it applies backpressure); exceeding this in
/// the simulator is a queue-bound violation.
pub const WRITE_QUEUE_BATCHES_MAX: usize = 4_096;

/// The actor of the checker's read-only copies of durable sessions (never writes).
const SHADOW_ACTOR: [u8; 16] = *b"beamclaw-checker";

/// Chunks of one session after which its durable chunks are compacted into a snapshot (the
/// store compacts too; this keeps hydration after a restart cheap).
const COMPACT_CHUNKS_MIN: usize = 256;

/// A change of a session's persisted owner record (for the epoch invariants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerWrite {
    pub session: SessionKey,
    pub before: Option<Epoch>,
    pub after: Option<Epoch>,
}

/// See [`Durable::recorded`].
#[derive(Default)]
struct Recorded {
    ids: HashSet<String>,
    scanned: usize,
    /// A chunk that is not a change (a snapshot) was among them: only the shadow can tell.
    opaque: bool,
}

/// What a node has on disk.
#[derive(Default)]
pub struct Durable {
    chunks: BTreeMap<SessionKey, Vec<Chunk>>,
    index: BTreeMap<SessionKey, IndexEntry>,
    sync_states: BTreeMap<(String, SessionKey), Vec<u8>>,
    node_meta: BTreeMap<String, Vec<u8>>,
    /// How many times the node process started on this disk.
    pub starts: u64,
    /// The checker's copies of durable sessions, with how many of the session's durable
    /// chunks each has applied: brought up to date when the checker looks, not as chunks land
    /// (most durable chunks are never looked at before the next compaction).
    shadows: BTreeMap<SessionKey, (SessionDoc, usize)>,
    /// Message ids that durable changes of each session wrote, read from the chunks themselves,
    /// with how many of the session's chunks were read: the acknowledgement check, which runs on
    /// every acknowledgement, reads a few new chunks instead of applying them to a shadow.
    recorded: BTreeMap<SessionKey, Recorded>,
    /// Bytes of chunks written, ever.
    pub bytes_written: u64,
}

impl Durable {
    /// Applies a durable batch; returns the owner records it changed.
    pub fn apply(&mut self, batch: &WriteBatch) -> Vec<OwnerWrite> {
        let mut owners = Vec::new();
        for op in &batch.ops {
            match op {
                WriteOp::AppendChunks { key, chunks } => {
                    let stored = self.chunks.entry(key.clone()).or_default();
                    for chunk in chunks.iter().filter(|c| !c.bytes.is_empty()) {
                        self.bytes_written += chunk.bytes.len() as u64;
                        stored.push(chunk.clone());
                    }
                    self.compact(key);
                }
                WriteOp::PutIndex { key, entry } => {
                    let before = self
                        .index
                        .get(key)
                        .and_then(|e| e.owner.as_ref())
                        .and_then(Epoch::from_record);
                    let after = entry.owner.as_ref().and_then(Epoch::from_record);
                    if before != after {
                        owners.push(OwnerWrite { session: key.clone(), before, after });
                    }
                    self.index.insert(key.clone(), (**entry).clone());
                }
                WriteOp::PutSyncState { peer, key, bytes } => {
                    self.sync_states.insert((peer.clone(), key.clone()), bytes.clone());
                }
                WriteOp::DeleteSession { key } => {
                    self.chunks.remove(key);
                    self.shadows.remove(key);
                    self.recorded.remove(key);
                    let before = self
                        .index
                        .remove(key)
                        .and_then(|e| e.owner)
                        .as_ref()
                        .and_then(Epoch::from_record);
                    if before.is_some() {
                        owners.push(OwnerWrite { session: key.clone(), before, after: None });
                    }
                    self.sync_states.retain(|(_, k), _| k != key);
                }
                WriteOp::PutNodeMeta { name, bytes } => {
                    self.node_meta.insert(name.clone(), bytes.clone());
                }
            }
        }
        owners
    }

    /// Folds a session's chunks into one snapshot per part once there are many.
    fn compact(&mut self, key: &SessionKey) {
        if self.chunks.get(key).is_none_or(|c| c.len() < COMPACT_CHUNKS_MIN) {
            return;
        }
        let Ok(Some(doc)) = self.shadow(key) else { return };
        let snapshot = doc.snapshot();
        // The shadow saw every chunk (it was rebuilt from them or fed each one), so its
        // snapshot holds everything; changes still waiting for dependencies are not in a
        // snapshot, so keep the raw chunks in that case.
        let reloaded = SessionDoc::load(key, &SHADOW_ACTOR, snapshot.clone()).ok();
        let complete = reloaded.is_some_and(|mut d| {
            self.shadows.get_mut(key).is_some_and(|(s, _)| s.heads_digest() == d.heads_digest())
        });
        if complete {
            if let Some((_, applied)) = self.shadows.get_mut(key) {
                *applied = snapshot.len();
            }
            // What the folded chunks recorded stays known; the snapshot is not read again.
            self.scan_recorded(key);
            if let Some(r) = self.recorded.get_mut(key) {
                r.scanned = snapshot.len();
            }
            self.chunks.insert(key.clone(), snapshot);
        }
    }

    /// The checker's copy of the durable session (built from the chunks on first use);
    /// `Ok(None)` when the session has no chunks here.
    pub fn shadow(&mut self, key: &SessionKey) -> Result<Option<&mut SessionDoc>, String> {
        let Some(chunks) = self.chunks.get(key) else {
            self.shadows.remove(key);
            return Ok(None);
        };
        // Feed the chunks that landed since the last look (each part's in one batch: they are
        // often many, and Automerge's cost per call is high); rebuild when that fails.
        let caught_up = match self.shadows.get_mut(key) {
            Some((doc, applied)) => {
                let fresh = chunks.get(*applied..).unwrap_or_default();
                let ok = fresh.is_empty() || doc.apply_chunks(fresh).is_ok();
                *applied = chunks.len();
                ok
            }
            None => false,
        };
        if !caught_up {
            let doc =
                SessionDoc::load(key, &SHADOW_ACTOR, chunks.clone()).map_err(|e| e.to_string())?;
            self.shadows.insert(key.clone(), (doc, chunks.len()));
        }
        Ok(self.shadows.get_mut(key).map(|(doc, _)| doc))
    }

    /// Whether a durable change of `session` here wrote message `id` (appended or replaced
    /// it), read from the chunks and not from a document; `None` when a chunk is not a change
    /// (then only [`Self::has_message`] can tell). Every chunk is read once.
    pub fn recorded(&mut self, session: &SessionKey, id: &str) -> Option<bool> {
        self.scan_recorded(session);
        match self.recorded.get(session) {
            Some(r) if r.opaque => None,
            Some(r) => Some(r.ids.contains(id)),
            None => Some(false),
        }
    }

    fn scan_recorded(&mut self, session: &SessionKey) {
        let Some(chunks) = self.chunks.get(session) else { return };
        let r = self.recorded.entry(session.clone()).or_default();
        for chunk in chunks.get(r.scanned..).unwrap_or_default() {
            match beamclaw_crdt::doc::recorded_message_ids(&chunk.bytes) {
                Ok(ids) => r.ids.extend(ids),
                Err(_) => r.opaque = true,
            }
        }
        r.scanned = chunks.len();
    }

    /// Whether message `id` of `session` is durable here, in the current transcript (an error
    /// when the durable chunks do not load).
    pub fn has_message(&mut self, session: &SessionKey, id: &str) -> Result<bool, String> {
        match self.shadow(session)? {
            Some(doc) => doc.get(id).map(|m| m.is_some()).map_err(|e| e.to_string()),
            None => Ok(false),
        }
    }

    /// The archived transcripts of `session` (`id (reason)`) that hold message `id`: a message
    /// there is stored but no longer in the conversation clients see.
    pub fn archived_with(&mut self, session: &SessionKey, id: &str) -> Vec<String> {
        let Ok(Some(doc)) = self.shadow(session) else { return Vec::new() };
        let Ok(archives) = doc.archives() else { return Vec::new() };
        archives
            .into_iter()
            .filter(|a| {
                doc.archived_history(&a.session_id, beamclaw_crdt::HISTORY_LIMIT_MAX, None)
                    .is_ok_and(|h| h.iter().any(|m| m.id == id))
            })
            .map(|a| format!("{} ({})", a.session_id, a.reason))
            .collect()
    }

    /// The durable owner record of `session`.
    pub fn owner(&self, session: &SessionKey) -> Option<Epoch> {
        self.index.get(session).and_then(|e| e.owner.as_ref()).and_then(Epoch::from_record)
    }

    /// How many chunks of `session` are durable.
    pub fn chunk_count(&self, session: &SessionKey) -> usize {
        self.chunks.get(session).map_or(0, Vec::len)
    }

    /// Sessions with durable chunks.
    pub fn sessions(&self) -> impl Iterator<Item = &SessionKey> {
        self.chunks.keys()
    }
}

/// The core's view of a node's disk: reads of the durable state.
pub struct SimDisk(pub Rc<RefCell<Durable>>);

impl Disk for SimDisk {
    fn load_session(
        &self,
        key: &SessionKey,
        actor: &[u8],
    ) -> Result<Option<SessionDoc>, DiskError> {
        let durable = self.0.borrow();
        let Some(chunks) = durable.chunks.get(key) else { return Ok(None) };
        if chunks.is_empty() {
            return Ok(None);
        }
        SessionDoc::load(key, actor, chunks.iter().cloned())
            .map(Some)
            .map_err(|e| DiskError::Io(format!("session {key} failed to load: {e}")))
    }

    fn index_page(
        &self,
        after: Option<&SessionKey>,
        limit: usize,
    ) -> Result<Vec<(SessionKey, IndexEntry)>, DiskError> {
        let durable = self.0.borrow();
        let iter: Box<dyn Iterator<Item = (&SessionKey, &IndexEntry)>> = match after {
            Some(k) => Box::new(durable.index.range::<SessionKey, _>((
                std::ops::Bound::Excluded(k),
                std::ops::Bound::Unbounded,
            ))),
            None => Box::new(durable.index.iter()),
        };
        Ok(iter.take(limit).map(|(k, e)| (k.clone(), e.clone())).collect())
    }

    fn sync_state(&self, peer: &NodeId, key: &SessionKey) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self.0.borrow().sync_states.get(&(peer_name(peer), key.clone())).cloned())
    }
}

/// One node's writes not yet durable, oldest first.
#[derive(Default)]
pub struct WriteQueue {
    pending: VecDeque<(BatchId, WriteBatch)>,
    /// When the newest queued batch completes.
    last_done: Micros,
}

impl WriteQueue {
    /// Queues a batch; returns when it will be durable (never before an earlier batch).
    pub fn push(
        &mut self,
        rng: &mut SimRng,
        batch: BatchId,
        writes: WriteBatch,
        now: Micros,
    ) -> Micros {
        let tail = between(rng, 0, 999) < FSYNC_TAIL_PER_MILLE;
        let fsync = if tail {
            between(rng, FSYNC_US_MAX, FSYNC_TAIL_US_MAX)
        } else {
            between(rng, FSYNC_US_MIN, FSYNC_US_MAX)
        };
        let done = (now + fsync).max(self.last_done);
        self.last_done = done;
        self.pending.push_back((batch, writes));
        done
    }

    /// The oldest pending batch, if it is `batch` (completions arrive in order).
    pub fn complete(&mut self, batch: BatchId) -> Option<WriteBatch> {
        match self.pending.front() {
            Some((b, _)) if *b == batch => self.pending.pop_front().map(|(_, w)| w),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// A crash: every write not yet durable is lost.
    pub fn lose_all(&mut self) -> usize {
        let n = self.pending.len();
        self.pending.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Stream, stream};

    #[test]
    fn batches_complete_in_order_and_a_crash_loses_the_pending_ones() {
        let mut rng = stream(3, Stream::Disk);
        let mut q = WriteQueue::default();
        let mut last = 0;
        for b in 1..=50 {
            let done = q.push(&mut rng, b, WriteBatch::default(), b * 10);
            assert!(done >= last && done >= b * 10 + FSYNC_US_MIN);
            last = done;
        }
        assert!(q.complete(2).is_none(), "batch 1 completes first");
        assert!(q.complete(1).is_some());
        assert_eq!(q.lose_all(), 49);
        assert!(q.is_empty());
    }
}
