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
//! Parts over the compaction threshold are handed to the compactor thread (at most
//! [`COMPACT_PENDING_PARTS_MAX`] at a time); its results come back through the same queue and are
//! applied in the next transaction. A transaction holding only compaction results (nothing to
//! acknowledge) commits with `Durability::None`: it rewrites data that is already durable, so a
//! crash before the next durable commit (or shutdown) loses nothing.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Instant;

use redb::{Database, Durability};

use super::StoreError;
use super::apply::{CompactThreshold, PartRef, WriteTables};
use super::batch::{CommitInfo, WriteBatch};
use super::compaction::{Compaction, CompactionReply, apply_fold};
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
/// Most parts handed to the compactor and not yet answered; beyond it a part is reported again
/// by its next append.
pub const COMPACT_PENDING_PARTS_MAX: usize = 4096;

/// Called once with the outcome of a submitted batch, on the writer thread: keep it short (send
/// on a channel, wake a task). A panic in it is caught and logged.
pub type OnDurable = Box<dyn FnOnce(Result<CommitInfo, StoreError>) + Send>;

pub(crate) enum Job {
    Batch { batch: WriteBatch, bytes: usize, on_durable: OnDurable },
    Quarantine { key: SessionKey, record: QuarantineRecord },
    Compaction(Box<CompactionReply>),
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

    /// A sender for the compactor's replies.
    pub(crate) fn replies(&self) -> SyncSender<Job> {
        self.sender.clone()
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    db: Arc<Database>,
    jobs: Receiver<Job>,
    gauge: Arc<QueueGauge>,
    threshold: CompactThreshold,
    /// Parts for the compactor; `None` once stopping.
    compactor: Option<SyncSender<PartRef>>,
    compactor_stopping: Arc<AtomicBool>,
    /// Parts handed to the compactor and not answered yet.
    compacting: HashSet<PartRef>,
    next_group: u64,
    /// A transaction committed with `Durability::None` that no durable commit has followed yet.
    unsynced: bool,
}

/// One group commit being assembled.
#[derive(Default)]
struct Group {
    batches: Vec<(WriteBatch, OnDurable)>,
    quarantines: Vec<(SessionKey, QuarantineRecord)>,
    compactions: Vec<CompactionReply>,
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
            Job::Quarantine { .. } | Job::Compaction(_) | Job::Shutdown => true,
        }
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.quarantines.is_empty() && self.compactions.is_empty()
    }
}

/// What committing a group changed, for the log.
#[derive(Default)]
struct Applied {
    folds: usize,
    stale_folds: usize,
}

impl Writer {
    pub(crate) fn new(
        db: Arc<Database>,
        jobs: Receiver<Job>,
        gauge: Arc<QueueGauge>,
        threshold: CompactThreshold,
        compactor: SyncSender<PartRef>,
        compactor_stopping: Arc<AtomicBool>,
    ) -> Self {
        Self {
            db,
            jobs,
            gauge,
            threshold,
            compactor: Some(compactor),
            compactor_stopping,
            compacting: HashSet::new(),
            next_group: 1,
            unsynced: false,
        }
    }

    /// Runs until `Shutdown` (or until every sender is gone), then makes any compaction durable.
    pub(crate) fn run(mut self) {
        let mut carried: Option<Job> = None;
        loop {
            let Some(first) = carried.take().or_else(|| self.jobs.recv().ok()) else { break };
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
        }
        self.finish();
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
            Job::Compaction(reply) => {
                self.compacting.remove(&reply.target);
                group.compactions.push(*reply);
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
        // Nothing waits for a transaction without batches: it need not be durable by itself.
        let durable = !group.batches.is_empty();
        let span = tracing::debug_span!(
            "group_commit",
            group = info.group,
            batches = info.group_batches,
            ops = info.group_ops,
            bytes = group.bytes,
            compactions = group.compactions.len(),
        );
        let _entered = span.enter();
        let started = Instant::now();
        let mut crossed = Vec::new();
        let result = self.write_group(&group, durable, &mut crossed);
        match &result {
            Ok(applied) => {
                self.unsynced = !durable;
                for (key, record) in &group.quarantines {
                    tracing::warn!(%key, part = ?record.part, reason = %record.reason, "session quarantined");
                }
                tracing::debug!(
                    elapsed_us = started.elapsed().as_micros() as u64,
                    durable,
                    folds = applied.folds,
                    stale_folds = applied.stale_folds,
                    "group committed"
                );
                for part in crossed {
                    self.request_compaction(part);
                }
            }
            Err(error) => tracing::error!(%error, "group commit failed; failing every batch in it"),
        }
        let result = result.map(|_| info);
        for (_, on_durable) in group.batches {
            let outcome = result.clone();
            if catch_unwind(AssertUnwindSafe(move || on_durable(outcome))).is_err() {
                tracing::error!(group = info.group, "an on_durable callback panicked");
            }
        }
    }

    fn write_group(
        &self,
        group: &Group,
        durable: bool,
        crossed: &mut Vec<PartRef>,
    ) -> Result<Applied, StoreError> {
        let mut txn = self.db.begin_write().map_err(StoreError::db)?;
        let durability = if durable { Durability::Immediate } else { Durability::None };
        txn.set_durability(durability).map_err(StoreError::db)?;
        let mut applied = Applied::default();
        {
            let mut tables = WriteTables::open(&txn)?;
            // Compaction results first: a delete later in this group then removes the snapshot
            // too (a fold applied after a delete would find its chunks gone and be dropped).
            for reply in &group.compactions {
                self.apply_compaction(&mut tables, reply, &mut applied, crossed)?;
            }
            for (key, record) in &group.quarantines {
                tables.put_quarantine(key.as_str(), record)?;
            }
            for (batch, _) in &group.batches {
                for op in &batch.ops {
                    tables.apply(op, self.threshold, crossed)?;
                }
            }
            tables.finish()?;
        }
        txn.commit().map_err(StoreError::db)?;
        Ok(applied)
    }

    /// Applies a compactor's answer. A part still over the threshold after its fold (chunks
    /// appended while the compactor worked were not reported: the part was still in
    /// `compacting`) goes into `crossed`, to be folded again; otherwise it would stay over the
    /// threshold until its next append.
    fn apply_compaction(
        &self,
        tables: &mut WriteTables<'_>,
        reply: &CompactionReply,
        applied: &mut Applied,
        crossed: &mut Vec<PartRef>,
    ) -> Result<(), StoreError> {
        let target = &reply.target;
        let part = decode_part(&target.part).ok();
        match &reply.outcome {
            Ok(Compaction::Folded(folded)) => {
                let folded_now = apply_fold(tables, target, folded)?;
                let state = tables.part_state(&target.key, &target.part)?;
                if state.is_some_and(|state| self.threshold.exceeded_by(state)) {
                    crossed.push(target.clone());
                }
                if folded_now {
                    applied.folds += 1;
                    tracing::debug!(
                        key = %target.key, ?part, chunks = folded.chunks,
                        chunk_bytes = folded.chunk_bytes, snapshot_bytes = folded.snapshot.len(),
                        "part compacted"
                    );
                } else {
                    applied.stale_folds += 1;
                }
            }
            Ok(Compaction::Nothing) => {}
            Ok(Compaction::MissingDeps) => tracing::info!(
                key = %target.key, ?part,
                "part not compacted: changes wait on missing dependencies"
            ),
            Ok(Compaction::Corrupt { reason }) => {
                tracing::warn!(key = %target.key, ?part, %reason, "session quarantined");
                let record = QuarantineRecord { part, reason: reason.clone() };
                tables.put_quarantine(&target.key, &record)?;
            }
            // The part is reported again by its next append.
            Err(error) => tracing::warn!(key = %target.key, %error, "compaction read failed"),
        }
        Ok(())
    }

    fn request_compaction(&mut self, part: PartRef) {
        if self.compacting.len() >= COMPACT_PENDING_PARTS_MAX || self.compacting.contains(&part) {
            return;
        }
        let Some(compactor) = &self.compactor else { return };
        // A full compactor queue is not an error: the part is reported again by its next append.
        if compactor.try_send(part.clone()).is_ok() {
            self.compacting.insert(part);
        }
    }

    /// Stops the compactor, fails what was queued behind `Shutdown`, and makes the last
    /// non-durable transaction durable.
    fn finish(mut self) {
        self.compactor_stopping.store(true, Ordering::Release);
        self.compactor = None;
        while let Ok(job) = self.jobs.try_recv() {
            if let Job::Batch { bytes, on_durable, .. } = job {
                self.gauge.release(bytes);
                let closed = move || on_durable(Err(StoreError::Closed));
                if catch_unwind(AssertUnwindSafe(closed)).is_err() {
                    tracing::error!("an on_durable callback panicked");
                }
            }
        }
        if self.unsynced {
            let synced = self.db.begin_write().map_err(StoreError::db).and_then(|mut txn| {
                txn.set_durability(Durability::Immediate).map_err(StoreError::db)?;
                txn.commit().map_err(StoreError::db)
            });
            if let Err(error) = synced {
                tracing::warn!(%error, "last compaction not made durable; it is redone later");
            }
        }
        tracing::debug!(groups = self.next_group - 1, "store writer stopped");
    }
}
