//! The durable store: every session's Automerge chunks and snapshots, the session index, per-peer
//! sync states and node metadata, in one redb database.
//!
//! Owns the on-disk layout ([`tables`]), group commit ([`group_commit`]: one writer thread, one
//! durable transaction per group of batches, nothing acknowledged before it is durable),
//! compaction ([`compaction`]) and quarantine of sessions whose bytes no longer load.
//! Must not know: the mesh, sockets, tokio, what a message means. Reads are synchronous redb read
//! transactions; writes are [`WriteBatch`]es.

mod apply;
mod batch;
mod compaction;
mod error;
mod group_commit;
mod read;
mod tables;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use redb::backends::InMemoryBackend;
use redb::{Database, DatabaseError, Durability, ReadableTable};

pub use batch::{
    BATCH_BYTES_MAX, BATCH_OPS_MAX, CommitInfo, NODE_META_BYTES_MAX, NODE_META_NAME_BYTES_MAX,
    PEER_ID_BYTES_MAX, SYNC_STATE_BYTES_MAX, WriteBatch, WriteOp,
};
pub use error::StoreError;
pub use group_commit::{
    COMPACT_PENDING_PARTS_MAX, GROUP_COMMIT_BYTES_MAX, GROUP_COMMIT_OPS_MAX, OnDurable,
    WRITE_QUEUE_BATCHES_MAX, WRITE_QUEUE_BYTES_MAX,
};
pub use read::{LIST_PAGE_SESSIONS_MAX, ListedSession, SessionPage, UpdatedCursor};
pub use tables::QuarantineRecord;

use apply::CompactThreshold;
use compaction::Compactor;
use group_commit::{QueueGauge, WriteQueue, Writer};
use tables::{FORMAT, FORMAT_VERSION, FORMAT_VERSION_KEY};

use crate::types::{PartId, SessionKey};

/// Name of the database file inside the store directory.
pub const STORE_FILE_NAME: &str = "store.redb";
/// Default size of redb's page cache: the store's whole memory beyond what is in flight.
pub const STORE_CACHE_BYTES_DEFAULT: usize = 64 * 1024 * 1024;
/// A part is compacted once it holds more than this many incremental chunks...
pub const COMPACT_CHUNKS_MAX: u64 = 64;
/// ...or more than this many bytes of them.
pub const COMPACT_BYTES_MAX: u64 = 256 * 1024;

/// How a store is opened. Every field matters for memory or disk use; pass it explicitly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// redb's page cache, in bytes ([`STORE_CACHE_BYTES_DEFAULT`]).
    pub cache_bytes: usize,
    /// Compact a part above this many chunks ([`COMPACT_CHUNKS_MAX`]).
    pub compact_chunks_max: u64,
    /// Compact a part above this many chunk bytes ([`COMPACT_BYTES_MAX`]).
    pub compact_bytes_max: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_bytes: STORE_CACHE_BYTES_DEFAULT,
            compact_chunks_max: COMPACT_CHUNKS_MAX,
            compact_bytes_max: COMPACT_BYTES_MAX,
        }
    }
}

/// The durable store of one node. `Send + Sync`: share it behind an `Arc`; reads run on the
/// caller's thread, writes on the store's writer thread.
pub struct Store {
    db: Arc<Database>,
    queue: WriteQueue,
    writer: Option<JoinHandle<()>>,
    compactor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("running", &self.writer.is_some()).finish()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, recovering from a crash if the last process was
    /// killed: redb rolls back to the last durable commit.
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source: Arc::new(source),
        })?;
        let path = dir.join(STORE_FILE_NAME);
        let db = redb::Builder::new().set_cache_size(options.cache_bytes).create(&path).map_err(
            |source| match source {
                DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.clone() },
                source => StoreError::Open { path: path.clone(), source: Arc::new(source) },
            },
        )?;
        tracing::info!(path = %path.display(), "store opened");
        Self::start(db, options)
    }

    /// A store that lives in memory only (tests and tools; nothing survives the process).
    pub fn open_in_memory(options: &StoreOptions) -> Result<Self, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .create_with_backend(InMemoryBackend::new())
            .map_err(|source| StoreError::Open {
                path: PathBuf::from("(memory)"),
                source: Arc::new(source),
            })?;
        Self::start(db, options)
    }

    fn start(db: Database, options: &StoreOptions) -> Result<Self, StoreError> {
        init_tables(&db)?;
        let db = Arc::new(db);
        let (sender, receiver) = sync_channel(WRITE_QUEUE_BATCHES_MAX);
        let gauge = Arc::new(QueueGauge::default());
        let threshold = CompactThreshold {
            chunks_max: options.compact_chunks_max,
            bytes_max: options.compact_bytes_max,
        };
        let queue = WriteQueue::new(sender, Arc::clone(&gauge));
        let (compact_parts, compact_inbox) = sync_channel(COMPACT_PENDING_PARTS_MAX);
        let stopping = Arc::new(AtomicBool::new(false));
        let compactor = Compactor {
            db: Arc::clone(&db),
            parts: compact_inbox,
            replies: queue.replies(),
            stopping: Arc::clone(&stopping),
        };
        let compactor = std::thread::Builder::new()
            .name("store-compactor".to_owned())
            .spawn(move || compactor.run())
            .map_err(|error| StoreError::Writer { reason: error.to_string() })?;
        let writer =
            Writer::new(Arc::clone(&db), receiver, gauge, threshold, compact_parts, stopping);
        let writer = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|error| StoreError::Writer { reason: error.to_string() })?;
        Ok(Self { db, queue, writer: Some(writer), compactor: Some(compactor) })
    }

    /// Queues a batch for the next group commit without blocking. `on_durable` is called once,
    /// on the writer thread, after the batch's transaction is durable (or failed).
    ///
    /// Errors: `TooLarge`/`InvalidName` for a batch that could never commit, `Busy` when the
    /// queue is full (backpressure: retry after earlier writes complete), `Closed` after
    /// shutdown. On error `on_durable` is dropped without being called.
    pub fn submit(&self, batch: WriteBatch, on_durable: OnDurable) -> Result<(), StoreError> {
        batch.check_limits()?;
        self.queue.try_submit(batch, on_durable)
    }

    /// Commits a batch and waits until it is durable. Waits for room in the queue instead of
    /// answering `Busy`: the caller is blocking anyway.
    pub fn commit(&self, batch: WriteBatch) -> Result<CommitInfo, StoreError> {
        batch.check_limits()?;
        let (done, outcome) = mpsc::sync_channel(1);
        self.queue.submit_waiting(
            batch,
            Box::new(move |result| {
                // The receiver only goes away if the caller's thread is gone; nothing to tell.
                let _ = done.send(result);
            }),
        )?;
        outcome.recv().map_err(|_| StoreError::Writer {
            reason: "the writer stopped before the batch was committed".to_owned(),
        })?
    }

    /// Flushes every queued batch, makes the last compaction durable and joins the writer.
    pub fn shutdown(mut self) -> Result<(), StoreError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), StoreError> {
        let Some(writer) = self.writer.take() else { return Ok(()) };
        self.queue.shutdown()?;
        let writer = writer.join();
        // The writer stopped the compactor on its way out (and dropped the queue it answers on).
        let compactor = self.compactor.take().map(JoinHandle::join);
        writer
            .map_err(|_| StoreError::Writer { reason: "the writer thread panicked".to_owned() })?;
        match compactor {
            Some(Err(_)) => {
                Err(StoreError::Writer { reason: "the compactor thread panicked".to_owned() })
            }
            _ => Ok(()),
        }
    }

    /// Records that `key` does not load (so that every later read refuses it quickly) and
    /// returns the error naming it.
    fn quarantine(&self, key: &SessionKey, part: Option<PartId>, reason: String) -> StoreError {
        tracing::warn!(%key, ?part, %reason, "quarantining session");
        self.queue.quarantine(
            key.clone(),
            QuarantineRecord { part: part.clone(), reason: reason.clone() },
        );
        StoreError::Quarantined { key: key.clone(), part, reason }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::error!(%error, "store writer did not stop cleanly");
        }
    }
}

/// Creates every table on first open and checks the format version on every open.
fn init_tables(db: &Database) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(StoreError::db)?;
    txn.set_durability(Durability::Immediate).map_err(StoreError::db)?;
    {
        let mut format = txn.open_table(FORMAT).map_err(StoreError::db)?;
        let found = format.get(FORMAT_VERSION_KEY).map_err(StoreError::db)?.map(|row| row.value());
        match found {
            None => {
                format.insert(FORMAT_VERSION_KEY, FORMAT_VERSION).map_err(StoreError::db)?;
                tracing::info!(version = FORMAT_VERSION, "store format initialized");
            }
            Some(FORMAT_VERSION) => {}
            Some(found) => {
                return Err(StoreError::UnknownFormat { found, supported: FORMAT_VERSION });
            }
        }
        drop(apply::WriteTables::open(&txn)?);
    }
    txn.commit().map_err(StoreError::db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::IndexEntry;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// An in-memory disk that starts failing writes and syncs when told to.
    #[derive(Debug)]
    struct FailingDisk {
        inner: InMemoryBackend,
        failing: Arc<AtomicBool>,
    }

    impl FailingDisk {
        fn check(&self) -> Result<(), std::io::Error> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("disk failure injected by the test"));
            }
            Ok(())
        }
    }

    impl redb::StorageBackend for FailingDisk {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.check()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> Result<(), std::io::Error> {
            self.check()?;
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.check()?;
            self.inner.write(offset, data)
        }
    }

    fn put_index(n: usize) -> WriteBatch {
        let key = SessionKey::new(format!("agent:main:f{n}")).unwrap();
        WriteBatch::new(vec![WriteOp::PutIndex { key, entry: Box::new(IndexEntry::default()) }])
    }

    #[test]
    fn a_failed_commit_fails_every_batch_in_it_and_acknowledges_none() {
        let failing = Arc::new(AtomicBool::new(false));
        let disk = FailingDisk { inner: InMemoryBackend::new(), failing: Arc::clone(&failing) };
        let db = redb::Builder::new().create_with_backend(disk).unwrap();
        let store = Store::start(db, &StoreOptions::default()).unwrap();
        store.commit(put_index(0)).unwrap();

        failing.store(true, Ordering::SeqCst);
        let (done, outcomes) = mpsc::channel();
        for n in 1..=20 {
            let done = done.clone();
            store.submit(put_index(n), Box::new(move |result| done.send(result).unwrap())).unwrap();
        }
        drop(done);
        let outcomes: Vec<_> = outcomes.iter().take(20).collect();
        assert_eq!(outcomes.len(), 20);
        for outcome in outcomes {
            assert!(matches!(outcome, Err(StoreError::Database(_))), "{outcome:?}");
        }
        assert!(matches!(store.commit(put_index(99)), Err(StoreError::Database(_))));
    }

    #[test]
    fn a_full_queue_answers_busy_and_everything_accepted_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let (done, outcomes) = mpsc::channel();
        let mut accepted = 0;
        let mut busy = None;
        // Submitting takes microseconds and every group commit an fsync: the queue fills long
        // before this bound.
        for n in 0..WRITE_QUEUE_BATCHES_MAX * 16 {
            let done = done.clone();
            match store.submit(put_index(n), Box::new(move |r| done.send(r.is_ok()).unwrap())) {
                Ok(()) => accepted += 1,
                Err(error) => {
                    busy = Some(error);
                    break;
                }
            }
        }
        drop(done);
        let busy = busy.expect("the queue never filled");
        assert!(
            matches!(busy, StoreError::Busy { batches_max: WRITE_QUEUE_BATCHES_MAX, .. }),
            "{busy}"
        );
        assert_eq!(outcomes.iter().filter(|ok| *ok).count(), accepted);
        assert_eq!(store.session_count().unwrap(), accepted as u64);
    }
}
