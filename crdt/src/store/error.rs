//! The store's error type: every way a store call can fail, each naming what was wrong.

use std::path::PathBuf;
use std::sync::Arc;

use crate::doc::DocError;
use crate::types::{PartId, SessionKey};

/// Why a store operation failed.
///
/// `Clone` so that one failed group commit can hand the same error to every batch in it; the
/// underlying redb and I/O errors are shared behind an `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the store directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Arc<redb::DatabaseError>,
    },
    #[error(
        "the store at {path} is open in another process; stop that process or use another data directory"
    )]
    InUse { path: PathBuf },
    #[error(
        "the store's on-disk format is version {found}; this build reads version {supported} only"
    )]
    UnknownFormat { found: u32, supported: u32 },
    #[error("store database: {0}")]
    Database(#[source] Arc<redb::Error>),
    #[error(
        "the write queue is full ({queued_batches} batches, {queued_bytes} bytes queued; \
         limits {batches_max} batches and {bytes_max} bytes); retry after earlier writes are durable"
    )]
    Busy { queued_batches: usize, queued_bytes: usize, batches_max: usize, bytes_max: usize },
    #[error("{what} is {len}; at most {max} is allowed")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("{what} {name:?} is not allowed: it must be non-empty and contain no NUL character")]
    InvalidName { what: &'static str, name: String },
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("the store is shut down")]
    Closed,
    #[error("the store's writer thread failed: {reason}")]
    Writer { reason: String },
    #[error("session {key} is quarantined ({}): {reason}", part_label(.part))]
    Quarantined { key: SessionKey, part: Option<PartId>, reason: String },
    #[error("session {key} cannot be loaded: {source}")]
    Load {
        key: SessionKey,
        #[source]
        source: Arc<DocError>,
    },
    #[error("unreadable entry in table {table} under {entry}: {reason}")]
    CorruptEntry { table: &'static str, entry: String, reason: String },
}

fn part_label(part: &Option<PartId>) -> String {
    match part {
        Some(part) => format!("part {part}"),
        None => "no single part".to_owned(),
    }
}

impl StoreError {
    /// Wraps any redb error (transaction, table, storage, commit) as [`StoreError::Database`].
    pub(crate) fn db(error: impl Into<redb::Error>) -> Self {
        StoreError::Database(Arc::new(error.into()))
    }
}
