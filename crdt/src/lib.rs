//! beamclaw-crdt: the session document and its durable store.
//!
//! Owns: `SessionDoc` (one Automerge document set per session: a manifest with the metadata map,
//! and segments of messages), its sync with peers, and `Store` (redb: incremental chunks,
//! snapshots, the session index, per-peer sync states, group commit).
//! Must not know: sockets, tokio, providers, the mesh, the OpenClaw wire.

pub mod types;

pub use types::{
    Chunk, HeadsDigest, IndexEntry, OwnerRecord, PartId, SESSION_KEY_BYTES_MAX, SessionKey,
    SessionKeyError,
};
pub mod message;

pub use message::{
    ContentPart, MESSAGE_BODY_BYTES_MAX, MESSAGE_ID_BYTES_MAX, Message, Role, StopReason, Usage,
};

pub mod doc;

pub use doc::{
    AppendOutcome, ApplyOutcome, ArchiveEntry, DocError, FieldPatch, HISTORY_LIMIT_DEFAULT,
    HISTORY_LIMIT_MAX, HeadsTracker, MetaPatch, PeerSyncState, SEGMENT_BYTES_MAX,
    SEGMENT_MESSAGES_MAX, SYNC_MESSAGE_BYTES_MAX, SegmentLimits, SessionDoc, SessionMeta,
    SyncMessage, writer_actor,
};

pub mod cache;
pub mod store;

pub use cache::{CacheStats, HYDRATED_BYTES_BUDGET, HydratedDoc, SessionCache};
pub use store::{
    CommitInfo, ListedSession, OnDurable, QuarantineRecord, SessionPage, Store, StoreError,
    StoreOptions, UpdatedCursor, WriteBatch, WriteOp,
};
