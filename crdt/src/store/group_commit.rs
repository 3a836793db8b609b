//! Group commit: one writer thread turns every queued batch into as few durable transactions as
//! possible, and runs compaction in between.
//!
//! Callers put batches on a bounded queue ([`WRITE_QUEUE_BATCHES_MAX`] batches and
//! [`WRITE_QUEUE_BYTES_MAX`] bytes; beyond either, `submit` answers `Busy`). The writer takes the
//! first batch, then everything else already queued up to [`GROUP_COMMIT_OPS_MAX`] ops and
//! [`GROUP_COMMIT_BYTES_MAX`] bytes, applies them all in ONE redb write transaction committed
//! with `Durability::Immediate`, and only after that commit returned calls each batch's
//! completion. Nothing is acknowledged before it is durable; a failed commit fails every batch
//! in it with the same error.
//!
//! Compaction rounds run when the queue is empty, and at least every
//! [`COMPACT_EVERY_GROUPS`] groups under sustained load, in their own transaction with
//! `Durability::None`: a compaction is a rewrite of data that is already durable, so losing it
//! in a crash loses nothing; the next group commit (or shutdown) makes it durable.

use std::collections::{HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Instant;

use redb::{Database, Durability};

use super::StoreError;
use super::apply::{CompactThreshold, PartRef, WriteTables};
use super::batch::{CommitInfo, WriteBatch};
use super::compaction::{Compaction, compact_part};
use super::tables::{QuarantineRecord, decode_part};
use crate::types::SessionKey;

/// Most batches waiting in the write queue.
pub const WRITE_QUEUE_BATCHES_MAX: usize = 4096;
/// Most payload bytes waiting in the write queue.
pub const WRITE_QUEUE_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Most ops applied in one group-commit transaction (a lone larger batch still commits alone).
pub const GROUP_COMMIT_OPS_MAX: usize = 16_384;
/// Most payload bytes applied in one group-commit transaction.
pub const GROUP_COMMIT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most parts compacted in one compaction round.
pub const COMPACT_PARTS_PER_ROUND_MAX: usize = 16;
/// Under sustained load, a compaction round runs at least once every this many group commits.
pub const COMPACT_EVERY_GROUPS: u64 = 8;
/// Most parts remembered as waiting for compaction; beyond it a part is reported again by its
/// next append.
pub const COMPACT_PENDING_PARTS_MAX: usize = 65_536;

/// Called once with the outcome of a submitted batch, on the writer thread: keep it short (send
/// on a channel, wake a task). A panic in it is caught and logged.
pub type OnDurable = Box<dyn FnOnce(Result<CommitInfo, StoreError>) + Send>;

pub(crate) enum Job {
    Batch { batch: WriteBatch, bytes: usize, on_durable: OnDurable },
    Quarantine { key: SessionKey, record: QuarantineRecord },
    Shutdown,
}

/// What is waiting in the queue, for the `Busy` decision (the channel cannot report its length).
#[derive(Default)]
pub(crate) struct QueueGauge {
    batches: AtomicUsize,
    bytes: AtomicUsize,
}

impl QueueGauge {
    fn release(&self, bytes: usize) {
        self.batches.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// The sending half: what `Store::submit` uses.
pub(crate) struct WriteQueue {
    sender: SyncSender<Job>,
    gauge: Arc<QueueGauge>,
}

impl WriteQueue {
    pub(crate) fn new(sender: SyncSender<Job>, gauge: Arc<QueueGauge>) -> Self {
        Self { sender, gauge }
    }

    /// Queues a checked batch without blocking.
    pub(crate) fn try_submit(
        &self,
        batch: WriteBatch,
        on_durable: OnDurable,
    ) -> Result<(), StoreError> {
        let bytes = batch.payload_bytes();
        let queued_batches = self.gauge.batches.fetch_add(1, Ordering::AcqRel) + 1;
        let queued_bytes = self.gauge.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let busy = StoreError::Busy {
            queued_batches,
            queued_bytes,
            batches_max: WRITE_QUEUE_BATCHES_MAX,
            bytes_max: WRITE_QUEUE_BYTES_MAX,
        };
        // A batch that alone exceeds the byte budget is still accepted into an empty queue;
        // `check_limits` already bounds it to one group commit.
        if queued_bytes > WRITE_QUEUE_BYTES_MAX && queued_bytes != bytes {
            self.gauge.release(bytes);
            return Err(busy);
        }
        match self.sender.try_send(Job::Batch { batch, bytes, on_durable }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.gauge.release(bytes);
                Err(busy)
            }
            Err(TrySendError::Disconnected(_)) => {
                self.gauge.release(bytes);
                Err(StoreError::Closed)
            }
        }
    }

    /// Queues a checked batch, waiting for room in the queue.
    pub(crate) fn submit_waiting(
        &self,
        batch: WriteBatch,
        on_durable: OnDurable,
    ) -> Result<(), StoreError> {
        let bytes = batch.payload_bytes();
        self.gauge.batches.fetch_add(1, Ordering::AcqRel);
        self.gauge.bytes.fetch_add(bytes, Ordering::AcqRel);
        self.sender.send(Job::Batch { batch, bytes, on_durable }).map_err(|_| {
            self.gauge.release(bytes);
            StoreError::Closed
        })
    }

    /// Records a quarantine without waiting; when the queue is full the record is dropped (the
    /// next load of the session finds the corruption again and retries).
    pub(crate) fn quarantine(&self, key: SessionKey, record: QuarantineRecord) {
        if let Err(error) = self.sender.try_send(Job::Quarantine { key: key.clone(), record }) {
            let reason = match error {
                TrySendError::Full(_) => "write queue full",
                TrySendError::Disconnected(_) => "store shut down",
            };
            tracing::warn!(%key, reason, "quarantine record not queued");
        }
    }

    pub(crate) fn shutdown(&self) -> Result<(), StoreError> {
        self.sender.send(Job::Shutdown).map_err(|_| StoreError::Closed)
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    db: Arc<Database>,
    jobs: Receiver<Job>,
    gauge: Arc<QueueGauge>,
    threshold: CompactThreshold,
    pending: VecDeque<PartRef>,
    pending_set: HashSet<PartRef>,
    next_group: u64,
    groups_since_compaction: u64,
    /// A compaction committed with `Durability::None` that no durable commit has followed yet.
    unsynced_compaction: bool,
}

/// One group commit being assembled.
#[derive(Default)]
struct Group {
    batches: Vec<(WriteBatch, OnDurable)>,
    quarantines: Vec<(SessionKey, QuarantineRecord)>,
    ops: usize,
    bytes: usize,
}

impl Group {
    fn fits(&self, job: &Job) -> bool {
        match job {
            Job::Batch { batch, bytes, .. } => {
                self.ops == 0
                    || (self.ops + batch.ops.len() <= GROUP_COMMIT_OPS_MAX
                        && self.bytes + bytes <= GROUP_COMMIT_BYTES_MAX)
            }
            Job::Quarantine { .. } | Job::Shutdown => true,
        }
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.quarantines.is_empty()
    }
}

impl Writer {
    pub(crate) fn new(
        db: Arc<Database>,
        jobs: Receiver<Job>,
        gauge: Arc<QueueGauge>,
        threshold: CompactThreshold,
    ) -> Self {
        Self {
            db,
            jobs,
            gauge,
            threshold,
            pending: VecDeque::new(),
            pending_set: HashSet::new(),
            next_group: 1,
            groups_since_compaction: 0,
            unsynced_compaction: false,
        }
    }

    /// Runs until `Shutdown` (or until every sender is gone), then makes any compaction durable.
    pub(crate) fn run(mut self) {
        let mut carried: Option<Job> = None;
        loop {
            let Some(first) = carried.take().or_else(|| self.next_job()) else { break };
            let mut group = Group::default();
            let mut shutdown = self.add(&mut group, first);
            while !shutdown {
                let job = match self.jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                };
                if !group.fits(&job) {
                    carried = Some(job);
                    break;
                }
                shutdown = self.add(&mut group, job);
            }
            if !group.is_empty() {
                self.commit_group(group);
            }
            if shutdown {
                break;
            }
            if self.groups_since_compaction >= COMPACT_EVERY_GROUPS && !self.pending.is_empty() {
                self.compact_round();
            }
        }
        self.finish();
    }

    /// The next job, running compaction rounds while the queue is idle. `None` once every
    /// sender is gone.
    fn next_job(&mut self) -> Option<Job> {
        loop {
            if self.pending.is_empty() {
                return self.jobs.recv().ok();
            }
            match self.jobs.try_recv() {
                Ok(job) => return Some(job),
                Err(TryRecvError::Empty) => self.compact_round(),
                Err(TryRecvError::Disconnected) => return None,
            }
        }
    }

    /// Adds a job to the group; true when it was `Shutdown`.
    fn add(&mut self, group: &mut Group, job: Job) -> bool {
        match job {
            Job::Batch { batch, bytes, on_durable } => {
                self.gauge.release(bytes);
                group.ops += batch.ops.len();
                group.bytes += bytes;
                group.batches.push((batch, on_durable));
                false
            }
            Job::Quarantine { key, record } => {
                group.quarantines.push((key, record));
                false
            }
            Job::Shutdown => true,
        }
    }

    fn commit_group(&mut self, group: Group) {
        let info = CommitInfo {
            group: self.next_group,
            group_batches: u32::try_from(group.batches.len()).unwrap_or(u32::MAX),
            group_ops: u32::try_from(group.ops).unwrap_or(u32::MAX),
        };
        self.next_group += 1;
        self.groups_since_compaction += 1;
        let span = tracing::debug_span!(
            "group_commit",
            group = info.group,
            batches = info.group_batches,
            ops = info.group_ops,
            bytes = group.bytes,
        );
        let _entered = span.enter();
        let started = Instant::now();
        let mut crossed = Vec::new();
        let result = self.write_group(&group, &mut crossed);
        match &result {
            Ok(()) => {
                self.unsynced_compaction = false;
                for part in crossed {
                    self.remember_for_compaction(part);
                }
                for (key, record) in &group.quarantines {
                    tracing::warn!(%key, part = ?record.part, reason = %record.reason, "session quarantined");
                }
                tracing::debug!(elapsed_us = started.elapsed().as_micros() as u64, "group durable");
            }
            Err(error) => tracing::error!(%error, "group commit failed; failing every batch in it"),
        }
        for (_, on_durable) in group.batches {
            let outcome = result.clone().map(|()| info);
            if catch_unwind(AssertUnwindSafe(move || on_durable(outcome))).is_err() {
                tracing::error!(group = info.group, "an on_durable callback panicked");
            }
        }
    }

    fn write_group(&self, group: &Group, crossed: &mut Vec<PartRef>) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(StoreError::db)?;
        txn.set_durability(Durability::Immediate).map_err(StoreError::db)?;
        {
            let mut tables = WriteTables::open(&txn)?;
            for (key, record) in &group.quarantines {
                tables.put_quarantine(key.as_str(), record)?;
            }
            for (batch, _) in &group.batches {
                for op in &batch.ops {
                    tables.apply(op, self.threshold, crossed)?;
                }
            }
        }
        txn.commit().map_err(StoreError::db)
    }

    fn remember_for_compaction(&mut self, part: PartRef) {
        if self.pending.len() >= COMPACT_PENDING_PARTS_MAX || self.pending_set.contains(&part) {
            return;
        }
        self.pending_set.insert(part.clone());
        self.pending.push_back(part);
    }

    /// Compacts up to [`COMPACT_PARTS_PER_ROUND_MAX`] waiting parts in one transaction.
    fn compact_round(&mut self) {
        self.groups_since_compaction = 0;
        let count = self.pending.len().min(COMPACT_PARTS_PER_ROUND_MAX);
        let round: Vec<PartRef> = self.pending.drain(..count).collect();
        for part in &round {
            self.pending_set.remove(part);
        }
        let span = tracing::debug_span!("compaction_round", parts = round.len());
        let _entered = span.enter();
        match self.write_compaction(&round) {
            Ok(()) => self.unsynced_compaction = true,
            // The chunks are untouched (the transaction was dropped); the parts are reported
            // again by their next append.
            Err(error) => tracing::error!(%error, "compaction round failed"),
        }
    }

    fn write_compaction(&self, round: &[PartRef]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(StoreError::db)?;
        txn.set_durability(Durability::None).map_err(StoreError::db)?;
        {
            let mut tables = WriteTables::open(&txn)?;
            for target in round {
                let part = decode_part(&target.part).ok();
                match compact_part(&mut tables, target)? {
                    Compaction::Done { chunks, chunk_bytes, snapshot_bytes } => tracing::debug!(
                        key = %target.key, ?part, chunks, chunk_bytes, snapshot_bytes,
                        "part compacted"
                    ),
                    Compaction::Nothing => {}
                    Compaction::MissingDeps => tracing::info!(
                        key = %target.key, ?part,
                        "part not compacted: changes wait on missing dependencies"
                    ),
                    Compaction::Corrupt { reason } => {
                        tracing::warn!(key = %target.key, ?part, %reason, "session quarantined");
                        tables.put_quarantine(&target.key, &QuarantineRecord { part, reason })?;
                    }
                }
            }
        }
        txn.commit().map_err(StoreError::db)
    }

    /// Fails what was queued behind `Shutdown` and makes the last compaction durable.
    fn finish(mut self) {
        while let Ok(job) = self.jobs.try_recv() {
            if let Job::Batch { bytes, on_durable, .. } = job {
                self.gauge.release(bytes);
                if catch_unwind(AssertUnwindSafe(move || on_durable(Err(StoreError::Closed))))
                    .is_err()
                {
                    tracing::error!("an on_durable callback panicked");
                }
            }
        }
        if self.unsynced_compaction {
            let synced = self.db.begin_write().map_err(StoreError::db).and_then(|mut txn| {
                txn.set_durability(Durability::Immediate).map_err(StoreError::db)?;
                txn.commit().map_err(StoreError::db)
            });
            match synced {
                Ok(()) => self.unsynced_compaction = false,
                Err(error) => {
                    tracing::warn!(%error, "last compaction not made durable; it is redone later")
                }
            }
        }
        tracing::debug!(groups = self.next_group - 1, "store writer stopped");
    }
}
