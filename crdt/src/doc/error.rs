//! The errors of the session document: each names what was wrong and what is allowed.

use super::{
    AGENT_ID_BYTES_MAX, ARCHIVES_MAX, IDEMPOTENCY_KEY_BYTES_MAX, META_VALUE_BYTES_MAX, PARTS_MAX,
    REPLY_TO_COUNT_MAX, SESSION_ID_BYTES_MAX, SYNC_MESSAGE_BYTES_MAX, WRITER_ACTOR_BYTES_MAX,
    WRITER_ACTOR_BYTES_MIN,
};
use crate::message::{MESSAGE_BODY_BYTES_MAX, MESSAGE_ID_BYTES_MAX};
use crate::types::{PartId, SessionKey};
use automerge::AutomergeError;

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error(
        "writer actor is {len} bytes; {min} to {max} bytes are allowed",
        min = WRITER_ACTOR_BYTES_MIN,
        max = WRITER_ACTOR_BYTES_MAX
    )]
    ActorLength { len: usize },

    #[error(
        "session id {id:?} is not allowed: {reason} (1 to {max} bytes without control \
         characters, '/' or '\\')",
        max = SESSION_ID_BYTES_MAX
    )]
    SessionId { id: String, reason: &'static str },

    #[error("agent id {id:?} is not allowed: 1 to {max} bytes", max = AGENT_ID_BYTES_MAX)]
    AgentId { id: String },

    #[error("message id is empty")]
    MessageIdEmpty,

    #[error("message id is {len} bytes; at most {max} are allowed", max = MESSAGE_ID_BYTES_MAX)]
    MessageIdTooLong { len: usize },

    #[error(
        "message {id:?} has a body of {len} bytes; at most {max} are allowed",
        max = MESSAGE_BODY_BYTES_MAX
    )]
    BodyTooLarge { id: String, len: usize },

    #[error(
        "message {id:?} has an idempotency key of {len} bytes; at most {max} are allowed",
        max = IDEMPOTENCY_KEY_BYTES_MAX
    )]
    IdempotencyKeyTooLong { id: String, len: usize },

    #[error(
        "message {id:?} replies to {count} messages; at most {max} are allowed",
        max = REPLY_TO_COUNT_MAX
    )]
    TooManyReplyTo { id: String, count: usize },

    #[error("body of message {id:?} does not encode as JSON: {source}")]
    BodyEncode {
        id: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("message {id:?} does not encode as a record: {reason}")]
    RecordEncode { id: String, reason: String },

    #[error("{field} is {len} bytes; at most {max} are allowed", max = META_VALUE_BYTES_MAX)]
    MetaValueTooLong { field: &'static str, len: usize },

    #[error("{field} is {value}; at most {max} is allowed", max = i64::MAX)]
    CounterOverflow { field: &'static str, value: u64 },

    #[error("no message {id:?} in transcript {session_id:?}")]
    UnknownMessage { id: String, session_id: String },

    #[error("no transcript {session_id:?} in this session")]
    UnknownTranscript { session_id: String },

    #[error("session has {count} archived transcripts; at most {max} are kept", max = ARCHIVES_MAX)]
    TooManyArchives { count: usize },

    #[error("session would have {count} parts; at most {max} are allowed", max = PARTS_MAX)]
    TooManyParts { count: usize },

    #[error("chunk for {part} does not decode: {reason}")]
    ChunkDecode { part: PartId, reason: String },

    #[error("{part}: {source}")]
    Automerge {
        part: PartId,
        /// Boxed: Automerge's error is large and errors are the rare path.
        #[source]
        source: Box<AutomergeError>,
    },

    #[error("{part} is malformed: {reason}")]
    MalformedPart { part: PartId, reason: String },

    #[error("no manifest for session {key}: its chunks are missing or carry no session id")]
    MissingManifest { key: SessionKey },

    #[error(
        "sync message is {bytes} bytes; at most {max} are accepted",
        max = SYNC_MESSAGE_BYTES_MAX
    )]
    SyncMessageTooLarge { bytes: usize },

    #[error(
        "{part} needs a sync message of {bytes} bytes; at most {max} fit in one",
        max = SYNC_MESSAGE_BYTES_MAX
    )]
    PartTooLarge { part: PartId, bytes: usize },

    #[error("sync message for {part} does not decode: {reason}")]
    SyncMessageDecode { part: PartId, reason: String },

    #[error("persisted sync state does not decode: {reason}")]
    SyncStateDecode { reason: String },
}

impl DocError {
    /// Wraps an Automerge error with the part it happened in.
    pub(crate) fn automerge(part: &PartId) -> impl FnOnce(AutomergeError) -> DocError + '_ {
        move |source| DocError::Automerge { part: part.clone(), source: Box::new(source) }
    }
}
