//! The session document: one session as a set of Automerge documents ("parts"), its in-memory
//! index, and the primitives the store and the mesh build on (chunks and sync).
//!
//! Owns: the part layout (a manifest with the metadata map and archives, plus segments of
//! messages), the genesis rule that lets replicas create the same part independently, message
//! ids and their de-duplication, segment rollover, and the chunk/sync contract.
//! Must not know: disks, sockets, clocks (callers pass `now_ms`), the mesh, the OpenClaw wire.
//!
//! Layout: `PartId::Manifest` holds `meta` (OpenClaw's SessionEntry: settings and counters) and
//! `archives` (transcripts set aside by a reset). `PartId::Segment { session_id, index }` holds a
//! `messages` list; a transcript is its segments read in (index, list order). Appends touch only
//! the newest segment of the current transcript, which rolls over to a new one when it holds
//! [`SEGMENT_MESSAGES_MAX`] messages or [`SEGMENT_BYTES_MAX`] bytes, so append cost does not grow
//! with the session.
//!
//! Contract with the store and the mesh: every change is a [`Chunk`] from [`SessionDoc::take_chunks`],
//! written to disk and pushed to replicas as is; [`SessionDoc::load`] and
//! [`SessionDoc::apply_chunk`] take chunks of any part in any order; [`SessionDoc::snapshot`]
//! compacts; anti-entropy runs Automerge's sync protocol per part ([`SyncMessage`]).

mod error;
mod meta;
mod part;
mod pushed;
mod record;
mod segment;
mod sync;
mod transcript;

pub use error::DocError;
pub use meta::{ARCHIVE_REASON_CONCURRENT, ArchiveEntry, FieldPatch, MetaPatch, SessionMeta};
pub use part::recorded_message_ids;
pub use pushed::HeadsTracker;
pub use sync::{PeerSyncState, SyncMessage};

use crate::message::{Message, Usage};
use crate::types::{Chunk, HeadsDigest, PartId, SessionKey};
use automerge::ActorId;
use automerge::sync::SyncDoc;
use meta::UsageIncrements;
use part::Part;
use segment::{Refresh, Segment};
use std::collections::{BTreeMap, btree_map};
use std::sync::Arc;
use transcript::{Loc, Segments, Transcript, part_id};

/// Messages after which the newest segment rolls over. Measured (docs/benchmarks.md, "Session
/// document"): append cost barely depends on the length of the list (p50 155 µs at 100 elements,
/// 175 µs at 20,000, on a loaded 2-core machine), so the size is set by the costs that do grow
/// with a segment: re-reading it whole (tens of µs per element) when a replica's change inserts
/// before existing elements, reading it at load, and the whole-part message a fresh peer is
/// sent. At 1,000 these stay in the tens of milliseconds and the hundreds of KB, and a
/// 50,000-message session is 50 parts (about 1 MiB of per-part overhead against some 45 MiB of
/// messages when hydrated).
pub const SEGMENT_MESSAGES_MAX: usize = 1_000;

/// Stored bytes (ids, bodies, keys) after which the newest segment rolls over. A message that
/// would cross it starts a new segment, so one writer never makes a segment larger than this
/// plus one message; see [`SYNC_MESSAGE_BYTES_MAX`] for why that matters.
pub const SEGMENT_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Largest sync message generated or accepted. One part must always fit: a segment is at most
/// `SEGMENT_BYTES_MAX` plus one message per concurrent writer, and Automerge's encoding of it is
/// no larger than the stored bytes plus per-change overhead; the constant assertion below keeps
/// room for two concurrent writers (the two sides of a partition).
pub const SYNC_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

const _: () = assert!(
    2 * (SEGMENT_BYTES_MAX + crate::message::MESSAGE_BODY_BYTES_MAX) <= SYNC_MESSAGE_BYTES_MAX
);

/// Messages `history` returns when the caller does not say (OpenClaw `chat.history`).
pub const HISTORY_LIMIT_DEFAULT: usize = 200;
/// Most messages `history` returns at once (OpenClaw caps `chat.history` at 1000).
pub const HISTORY_LIMIT_MAX: usize = 1_000;

/// Longest session id (transcript id), in bytes. OpenClaw uses UUIDs.
pub const SESSION_ID_BYTES_MAX: usize = 128;
/// Longest agent id, in bytes (OpenClaw: `[a-z0-9][a-z0-9_-]{0,63}`).
pub const AGENT_ID_BYTES_MAX: usize = 64;
/// Longest metadata string value (label, display name, model, channel...), in bytes.
pub const META_VALUE_BYTES_MAX: usize = 1024;
/// Longest reset reason, in bytes.
pub const ARCHIVE_REASON_BYTES_MAX: usize = 256;
/// Longest idempotency key, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;
/// Most user messages one assistant message may answer.
pub const REPLY_TO_COUNT_MAX: usize = 256;
/// Most archived transcripts a session keeps (a daily reset for more than ten years).
pub const ARCHIVES_MAX: usize = 4_096;
/// Most parts (manifest plus segments of every transcript) a session may have.
pub const PARTS_MAX: usize = 16_384;

/// Bytes of a genesis actor. Shorter than any writer actor, so the two can never collide; short
/// because every change into a list created at genesis names that actor (a part has one genesis
/// actor and its genesis ops are never concurrent with each other, so 4 bytes are plenty).
pub const GENESIS_ACTOR_BYTES: usize = 4;
/// Bytes of the writer actor that [`writer_actor`] derives.
pub const WRITER_ACTOR_BYTES: usize = 16;
/// Shortest writer actor accepted.
pub const WRITER_ACTOR_BYTES_MIN: usize = 16;
/// Longest writer actor accepted.
pub const WRITER_ACTOR_BYTES_MAX: usize = 32;

/// Version of the document layout, stored at the root of every part by its genesis. 2: a message
/// is one record value (`doc/record.rs`) instead of one key per field. 3: token counters live in
/// each segment (written with the turn's final message), not in the manifest.
const FORMAT_VERSION: u64 = 3;

/// Estimated resident bytes of one hydrated part before any message: an Automerge 0.12 document
/// costs about 18 KiB of heap even when it holds a single op (its columnar op set preallocates),
/// plus the part's bookkeeping. Calibrated against RSS, see docs/benchmarks.md.
const PART_RESIDENT_BYTES: usize = 21 * 1024;
/// Estimated resident bytes per stored message besides its stored bytes: the Automerge ops of
/// its fields, the index slot, the element id and the id -> element entry. Calibrated against
/// RSS at 1, 20 and 200 messages per session (docs/benchmarks.md).
const MESSAGE_RESIDENT_BYTES: usize = 800;

/// The writer actor for a node incarnation: blake3 of the node id and the incarnation number
/// (new on every process start, so that sequence numbers of changes lost in a crash are never
/// reused).
pub fn writer_actor(node_id: &str, incarnation: u64) -> [u8; WRITER_ACTOR_BYTES] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"beamclaw/writer-actor\0");
    hasher.update(node_id.as_bytes());
    hasher.update(&incarnation.to_le_bytes());
    let mut out = [0; WRITER_ACTOR_BYTES];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..WRITER_ACTOR_BYTES]);
    out
}

/// When the newest segment rolls over. Production uses the defaults; tests and benchmarks use
/// small limits to exercise rollover. Replicas with different limits still converge (reading
/// order is (segment index, list order) whatever made the segments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentLimits {
    pub messages_max: usize,
    pub bytes_max: usize,
}

impl Default for SegmentLimits {
    fn default() -> Self {
        SegmentLimits { messages_max: SEGMENT_MESSAGES_MAX, bytes_max: SEGMENT_BYTES_MAX }
    }
}

/// What `append`/`upsert` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended,
    /// `upsert` overwrote the message with the same id.
    Replaced,
    /// `append` found the id already present and changed nothing.
    Duplicate,
}

/// What applying a replica's chunk or sync message did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Whether any part's heads moved.
    pub changed: bool,
    /// Whether changes wait for dependencies that have not arrived (ask for a sync): for a
    /// chunk, some of its own changes (so they are in memory, not in the document, and must not
    /// be acknowledged as stored); for a sync message, any change of the parts it touched.
    pub waiting_for_dependencies: bool,
}

impl ApplyOutcome {
    fn merge(&mut self, other: ApplyOutcome) {
        self.changed |= other.changed;
        self.waiting_for_dependencies |= other.waiting_for_dependencies;
    }
}

fn check_session_id(id: &str) -> Result<(), DocError> {
    let reason = if id.is_empty() {
        "empty"
    } else if id.len() > SESSION_ID_BYTES_MAX {
        "too long"
    } else if id.chars().any(|c| c.is_control() || c == '/' || c == '\\') {
        "bad character"
    } else {
        return Ok(());
    };
    Err(DocError::SessionId { id: id.to_owned(), reason })
}

fn check_part_id(part: &PartId) -> Result<(), DocError> {
    match part {
        PartId::Manifest => Ok(()),
        PartId::Segment { session_id, .. } => check_session_id(session_id),
    }
}

/// One session: its manifest, the segments of every transcript it has had, and the index of
/// the current transcript.
#[derive(Debug)]
pub struct SessionDoc {
    key: SessionKey,
    actor: ActorId,
    limits: SegmentLimits,
    manifest: Part,
    /// Segments by session id, then by segment index.
    transcripts: BTreeMap<String, Segments>,
    /// The current transcript (the resolved value of the manifest's `sessionId`).
    session_id: String,
    index: Transcript,
}

/// Segment `index` of a transcript, started (its genesis) when it does not exist yet.
fn open_segment<'s>(
    segments: &'s mut Segments,
    index: u32,
    id: &PartId,
    key: &SessionKey,
    actor: &ActorId,
    part_count: usize,
) -> Result<&'s mut Segment, DocError> {
    match segments.entry(index) {
        btree_map::Entry::Occupied(entry) => Ok(entry.into_mut()),
        btree_map::Entry::Vacant(entry) => {
            if part_count >= PARTS_MAX {
                return Err(DocError::TooManyParts { count: part_count + 1 });
            }
            let part = Part::genesis(key, id, actor)?;
            tracing::info!(session = %key, part = %id, "segment started");
            Ok(entry.insert(Segment::new(part, id)?))
        }
    }
}

impl SessionDoc {
    /// A new session. `actor` is the writer's actor (see [`writer_actor`]); `now_ms` becomes
    /// `createdAt` and `sessionStartedAt`.
    pub fn create(
        key: SessionKey,
        agent_id: &str,
        session_id: &str,
        actor: &[u8],
        now_ms: i64,
    ) -> Result<SessionDoc, DocError> {
        let actor = part::writer_actor_id(actor)?;
        if agent_id.is_empty() || agent_id.len() > AGENT_ID_BYTES_MAX {
            return Err(DocError::AgentId { id: agent_id.to_owned() });
        }
        check_session_id(session_id)?;
        let mut manifest = Part::genesis(&key, &PartId::Manifest, &actor)?;
        meta::init(&mut manifest, key.as_str(), agent_id, session_id, now_ms)?;
        tracing::info!(session = %key, session_id, "session created");
        Ok(SessionDoc {
            key,
            actor,
            limits: SegmentLimits::default(),
            manifest,
            transcripts: BTreeMap::new(),
            session_id: session_id.to_owned(),
            index: Transcript::default(),
        })
    }

    /// Rebuilds a session from its chunks: any parts, any order (typically a snapshot followed by
    /// increments per part). Everything loaded counts as already persisted.
    pub fn load(
        key: &SessionKey,
        actor: &[u8],
        chunks: impl IntoIterator<Item = Chunk>,
    ) -> Result<SessionDoc, DocError> {
        let actor = part::writer_actor_id(actor)?;
        let mut manifest = Part::empty(&actor);
        let mut manifest_changes = Vec::new();
        let mut parts: BTreeMap<(String, u32), (Part, Vec<automerge::Change>)> = BTreeMap::new();
        for chunk in chunks {
            check_part_id(&chunk.part)?;
            let (part, changes) = match &chunk.part {
                PartId::Manifest => (&mut manifest, &mut manifest_changes),
                PartId::Segment { session_id, index } => {
                    let slot = (session_id.clone(), *index);
                    if !parts.contains_key(&slot) && parts.len() + 1 >= PARTS_MAX {
                        return Err(DocError::TooManyParts { count: parts.len() + 2 });
                    }
                    let (part, changes) = match parts.entry(slot) {
                        btree_map::Entry::Occupied(e) => e.into_mut(),
                        btree_map::Entry::Vacant(e) => e.insert((Part::empty(&actor), Vec::new())),
                    };
                    (part, changes)
                }
            };
            part.ingest(&chunk.part, &chunk.bytes, changes)?;
        }
        manifest.apply_changes(&PartId::Manifest, manifest_changes)?;
        manifest.ensure_genesis(key, &PartId::Manifest)?;
        manifest.mark_saved();
        let session_id = meta::session_ids(&manifest)?
            .into_iter()
            .next()
            .ok_or_else(|| DocError::MissingManifest { key: key.clone() })?;
        if manifest.waiting_for_dependencies() {
            tracing::warn!(session = %key, part = %PartId::Manifest, "loaded with missing changes");
        }
        let mut transcripts: BTreeMap<String, Segments> = BTreeMap::new();
        for ((sid, index), (mut part, changes)) in parts {
            let id = part_id(&sid, index);
            part.apply_changes(&id, changes)?;
            part.ensure_genesis(key, &id)?;
            part.mark_saved();
            if part.waiting_for_dependencies() {
                tracing::warn!(session = %key, part = %id, "loaded with missing changes");
            }
            transcripts.entry(sid).or_default().insert(index, Segment::new(part, &id)?);
        }
        let index = transcripts.get(&session_id).map(Transcript::build).unwrap_or_default();
        tracing::info!(
            session = %key,
            session_id,
            messages = index.message_count(),
            "session loaded"
        );
        Ok(SessionDoc {
            key: key.clone(),
            actor,
            limits: SegmentLimits::default(),
            manifest,
            transcripts,
            session_id,
            index,
        })
    }

    /// A replica's placeholder for a session it has not received yet: the manifest's genesis
    /// only, no transcript. Pushed chunks and sync messages fill it in (the manifest brings the
    /// session id); [`Self::is_initialized`] tells when that happened.
    pub fn empty(key: SessionKey, actor: &[u8]) -> Result<SessionDoc, DocError> {
        let actor = part::writer_actor_id(actor)?;
        let manifest = Part::genesis(&key, &PartId::Manifest, &actor)?;
        Ok(SessionDoc {
            key,
            actor,
            limits: SegmentLimits::default(),
            manifest,
            transcripts: BTreeMap::new(),
            session_id: String::new(),
            index: Transcript::default(),
        })
    }

    /// Whether the manifest (with its session id) has arrived; false only for [`Self::empty`]
    /// placeholders.
    pub fn is_initialized(&self) -> bool {
        !self.session_id.is_empty()
    }

    /// Turns an [`Self::empty`] placeholder into a new session (the owner found nothing of it
    /// anywhere). Refuses an initialized document.
    pub fn initialize(
        &mut self,
        agent_id: &str,
        session_id: &str,
        now_ms: i64,
    ) -> Result<(), DocError> {
        if self.is_initialized() {
            return Err(DocError::SessionId {
                id: session_id.to_owned(),
                reason: "the session already exists",
            });
        }
        if agent_id.is_empty() || agent_id.len() > AGENT_ID_BYTES_MAX {
            return Err(DocError::AgentId { id: agent_id.to_owned() });
        }
        check_session_id(session_id)?;
        meta::init(&mut self.manifest, self.key.as_str(), agent_id, session_id, now_ms)?;
        self.session_id = session_id.to_owned();
        self.rebuild_index();
        Ok(())
    }

    /// Marks the session deleted at `now_ms` (a tombstone that replicates; see
    /// `SessionMeta::deleted_at`). Idempotent.
    pub fn mark_deleted(&mut self, now_ms: i64) -> Result<(), DocError> {
        if self.meta()?.deleted_at.is_some() {
            return Ok(());
        }
        let at = u64::try_from(now_ms).unwrap_or(0);
        let patch = MetaPatch { deleted_at: FieldPatch::Set(at), ..MetaPatch::default() };
        self.patch_meta(&patch)?;
        Ok(())
    }

    pub fn key(&self) -> &SessionKey {
        &self.key
    }

    /// The current transcript's id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Changes the writer actor of every part (a new process incarnation took the session over).
    pub fn set_actor(&mut self, actor: &[u8]) -> Result<(), DocError> {
        let actor = part::writer_actor_id(actor)?;
        self.manifest.doc.set_actor(actor.clone());
        for segment in self.transcripts.values_mut().flat_map(|s| s.values_mut()) {
            segment.part.doc.set_actor(actor.clone());
        }
        self.actor = actor;
        Ok(())
    }

    pub fn set_segment_limits(&mut self, limits: SegmentLimits) {
        self.limits = limits;
    }

    fn part_count(&self) -> usize {
        1 + self.transcripts.values().map(BTreeMap::len).sum::<usize>()
    }

    fn rebuild_index(&mut self) {
        self.index =
            self.transcripts.get(&self.session_id).map(Transcript::build).unwrap_or_default();
    }

    /// The current transcript's segments (empty before the first message).
    fn segments(&self) -> Option<&Segments> {
        self.transcripts.get(&self.session_id)
    }

    /// Appends a message to the current transcript. An id already present is a no-op.
    pub fn append(&mut self, message: &Message) -> Result<AppendOutcome, DocError> {
        let encoded = record::Encoded::new(message)?;
        if self.index.contains(&message.id) {
            tracing::debug!(session = %self.key, id = message.id, "duplicate append ignored");
            return Ok(AppendOutcome::Duplicate);
        }
        self.append_encoded(&encoded, &UsageIncrements::default())?;
        Ok(AppendOutcome::Appended)
    }

    /// Appends the message, or overwrites the one with the same id (a partial checkpoint
    /// replaced by the next checkpoint or the final message). A checkpoint never replaces a final
    /// message: a stale owner that already received the new owner's reply may still checkpoint
    /// its own run of the turn, and that must not hide the reply (`Duplicate`, nothing written).
    pub fn upsert(&mut self, message: &Message) -> Result<AppendOutcome, DocError> {
        self.upsert_with_usage(message, &Usage::default())
    }

    /// [`Self::upsert`], adding a turn's `usage` to the token counters in the same change (a
    /// turn's final message and its usage are one write). The usage is recorded even when the
    /// message is not written (`Duplicate`): then in a change of its own.
    pub fn upsert_with_usage(
        &mut self,
        message: &Message,
        usage: &Usage,
    ) -> Result<AppendOutcome, DocError> {
        let encoded = record::Encoded::new(message)?;
        let usage = UsageIncrements::new(usage)?;
        if message.partial && self.shown_entry(&message.id).is_some_and(|e| !e.partial) {
            self.add_increments(&usage)?;
            return Ok(AppendOutcome::Duplicate);
        }
        if self.index.contains(&message.id) {
            self.overwrite_shown(&encoded, &usage)?;
            Ok(AppendOutcome::Replaced)
        } else {
            self.append_encoded(&encoded, &usage)?;
            Ok(AppendOutcome::Appended)
        }
    }

    /// The index view of the element shown for `id`.
    fn shown_entry(&self, id: &str) -> Option<&record::Entry> {
        let loc = self.index.locate(id)?;
        self.segments()?.get(&loc.segment)?.slots.get(loc.pos as usize)?.as_ref()
    }

    /// Overwrites the message with the same id; an unknown id is an error.
    pub fn replace(&mut self, message: &Message) -> Result<(), DocError> {
        let encoded = record::Encoded::new(message)?;
        self.overwrite_shown(&encoded, &UsageIncrements::default())
    }

    fn append_encoded(
        &mut self,
        encoded: &record::Encoded<'_>,
        usage: &UsageIncrements,
    ) -> Result<(), DocError> {
        let part_count = self.part_count();
        let segments = self.transcripts.entry(self.session_id.clone()).or_default();
        let index = match segments.last_key_value() {
            None => 0,
            Some((&index, newest)) => {
                let full = newest.len() >= self.limits.messages_max
                    || newest.bytes + encoded.stored_bytes() > self.limits.bytes_max;
                if newest.len() > 0 && full {
                    index.checked_add(1).ok_or(DocError::TooManyParts { count: part_count + 1 })?
                } else {
                    index
                }
            }
        };
        let id = part_id(&self.session_id, index);
        let segment = open_segment(segments, index, &id, &self.key, &self.actor, part_count)?;
        let pos = segment.len();
        segment.append(&id, encoded, usage)?;
        tracing::debug!(session = %self.key, part = %id, pos, id = encoded.message.id, "appended");
        let added = match (u32::try_from(pos), segment.slots.last()) {
            (Ok(pos), Some(Some(entry))) => self.index.add(entry, Loc { segment: index, pos }),
            _ => false,
        };
        if !added {
            self.rebuild_index();
        }
        Ok(())
    }

    fn overwrite_shown(
        &mut self,
        encoded: &record::Encoded<'_>,
        usage: &UsageIncrements,
    ) -> Result<(), DocError> {
        let id = &encoded.message.id;
        let unknown =
            || DocError::UnknownMessage { id: id.clone(), session_id: self.session_id.clone() };
        let loc = self.index.locate(id).ok_or_else(unknown)?;
        let part = part_id(&self.session_id, loc.segment);
        let segment = self
            .transcripts
            .get_mut(&self.session_id)
            .and_then(|s| s.get_mut(&loc.segment))
            .ok_or_else(unknown)?;
        let pos = loc.pos as usize;
        let old = segment.slots.get(pos).cloned().flatten();
        segment.overwrite(&part, pos, encoded, usage)?;
        tracing::debug!(session = %self.key, %part, pos, id, "replaced");
        let updated = match (old, segment.slots.get(pos)) {
            (Some(old), Some(Some(new))) => self.index.replaced(loc, &old, new),
            _ => false,
        };
        if !updated {
            self.rebuild_index();
        }
        Ok(())
    }

    /// The message shown for `id` in the current transcript.
    pub fn get(&self, id: &str) -> Result<Option<Message>, DocError> {
        match (self.index.locate(id), self.segments()) {
            (Some(loc), Some(segments)) => {
                Ok(Transcript::read(segments, &self.session_id, loc)?.map(Arc::unwrap_or_clone))
            }
            _ => Ok(None),
        }
    }

    /// The id of the message that carried this idempotency key in the current transcript (the
    /// first in reading order if concurrent writers used it twice).
    pub fn find_by_idempotency_key(&self, key: &str) -> Option<&str> {
        self.index.find_by_idempotency_key(self.segments()?, key)
    }

    /// Messages shown in the current transcript (each id once).
    pub fn message_count(&self) -> usize {
        self.index.message_count()
    }

    /// Up to `limit` (at most [`HISTORY_LIMIT_MAX`]) newest messages of the current transcript
    /// strictly before message `before` (or the newest when `None`), oldest first, each id once.
    /// The messages are shared with the document's decoded copies (every turn reads its history,
    /// and copying hundreds of messages was a large part of a turn's cost).
    pub fn history(
        &self,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<Arc<Message>>, DocError> {
        let limit = limit.min(HISTORY_LIMIT_MAX);
        match self.segments() {
            Some(segments) => self.index.history(segments, &self.session_id, limit, before),
            None => match before {
                None => Ok(Vec::new()),
                Some(id) => Err(DocError::UnknownMessage {
                    id: id.to_owned(),
                    session_id: self.session_id.clone(),
                }),
            },
        }
    }

    /// [`Self::history`] of another transcript of this session (one archived by a reset, or one
    /// that lost a concurrent create).
    pub fn archived_history(
        &self,
        session_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<Arc<Message>>, DocError> {
        if session_id == self.session_id {
            return self.history(limit, before);
        }
        let limit = limit.min(HISTORY_LIMIT_MAX);
        match self.transcripts.get(session_id) {
            Some(segments) => {
                Transcript::build(segments).history(segments, session_id, limit, before)
            }
            None if self.archives()?.iter().any(|a| a.session_id == session_id) => {
                // Archived before its first message.
                self.history_of_empty(session_id, before)
            }
            None => Err(DocError::UnknownTranscript { session_id: session_id.to_owned() }),
        }
    }

    fn history_of_empty(
        &self,
        session_id: &str,
        before: Option<&str>,
    ) -> Result<Vec<Arc<Message>>, DocError> {
        match before {
            None => Ok(Vec::new()),
            Some(id) => Err(DocError::UnknownMessage {
                id: id.to_owned(),
                session_id: session_id.to_owned(),
            }),
        }
    }

    /// User messages of the current transcript that no final assistant message lists in
    /// `reply_to`, oldest first: the turns to restart after a failover.
    pub fn unanswered_user_messages(&self) -> Result<Vec<Message>, DocError> {
        match self.segments() {
            Some(segments) => self.index.unanswered_user_messages(segments, &self.session_id),
            None => Ok(Vec::new()),
        }
    }

    pub fn meta(&self) -> Result<SessionMeta, DocError> {
        let mut meta = meta::read(&self.manifest, self.key.as_str())?;
        [meta.input_tokens, meta.output_tokens, meta.total_tokens] = self.token_counts();
        Ok(meta)
    }

    /// The token counters of the current transcript, (input, output, total): the sums over its
    /// segments (a handful of counter reads; the manifest is not read).
    pub fn token_counts(&self) -> [u64; 3] {
        let mut sums = [0u64; 3];
        for segment in self.segments().into_iter().flat_map(|s| s.values()) {
            for (sum, value) in sums.iter_mut().zip(segment.usage()) {
                *sum = sum.saturating_add(value);
            }
        }
        sums
    }

    /// The agent of the session (`meta().agent_id`, without reading the other fields).
    pub fn agent_id(&self) -> Result<String, DocError> {
        meta::agent_id(&self.manifest)
    }

    /// The timestamp of the newest message of the current transcript (the one
    /// `history(1, None)` returns), without reading the rest of it; `None` when there is none.
    pub fn last_message_timestamp_ms(&self) -> Result<Option<i64>, DocError> {
        let Some(segments) = self.segments() else { return Ok(None) };
        let Some(loc) = self.index.last_shown(segments) else { return Ok(None) };
        match segments.get(&loc.segment).and_then(|s| s.read_timestamp(loc.pos as usize)) {
            Some(at) => Ok(Some(at)),
            // Malformed: let the full read decide, as `history` does.
            None => Ok(self.history(1, None)?.last().map(|m| m.timestamp_ms)),
        }
    }

    /// Applies a patch to the settings; returns whether anything was written.
    pub fn patch_meta(&mut self, patch: &MetaPatch) -> Result<bool, DocError> {
        let changed = meta::patch(&mut self.manifest, patch)?;
        if changed {
            tracing::debug!(session = %self.key, "metadata patched");
        }
        Ok(changed)
    }

    /// Adds a turn's usage to the token counters (concurrent additions on replicas add up).
    pub fn add_usage(&mut self, usage: &Usage) -> Result<(), DocError> {
        self.add_increments(&UsageIncrements::new(usage)?)
    }

    /// Adds usage to the newest segment of the current transcript (started if there is none).
    fn add_increments(&mut self, usage: &UsageIncrements) -> Result<(), DocError> {
        if usage.is_empty() {
            return Ok(());
        }
        let part_count = self.part_count();
        let segments = self.transcripts.entry(self.session_id.clone()).or_default();
        let index = segments.last_key_value().map_or(0, |(&index, _)| index);
        let id = part_id(&self.session_id, index);
        open_segment(segments, index, &id, &self.key, &self.actor, part_count)?
            .add_usage(&id, usage)
    }

    /// Counts one compaction of the transcript.
    pub fn record_compaction(&mut self) -> Result<(), DocError> {
        meta::record_compaction(&mut self.manifest)
    }

    /// Transcripts set aside: by resets, and any that lost a concurrent write of the session id
    /// (reason [`ARCHIVE_REASON_CONCURRENT`]). Each once, never the current one.
    pub fn archives(&self) -> Result<Vec<ArchiveEntry>, DocError> {
        let mut out = meta::archives(&self.manifest)?;
        for id in meta::session_ids(&self.manifest)?.into_iter().skip(1) {
            if !out.iter().any(|a| a.session_id == id) {
                out.push(ArchiveEntry {
                    session_id: id,
                    archived_at_ms: 0,
                    reason: ARCHIVE_REASON_CONCURRENT.to_owned(),
                });
            }
        }
        out.retain(|a| a.session_id != self.session_id);
        Ok(out)
    }

    /// Archives the current transcript (its segments stay, see [`Self::archived_history`]) and
    /// starts `new_session_id`, with token counters back at zero.
    pub fn reset(
        &mut self,
        new_session_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), DocError> {
        check_session_id(new_session_id)?;
        let archives = self.archives()?;
        let used = new_session_id == self.session_id
            || self.transcripts.contains_key(new_session_id)
            || archives.iter().any(|a| a.session_id == new_session_id);
        if used {
            return Err(DocError::SessionId {
                id: new_session_id.to_owned(),
                reason: "already used by this session",
            });
        }
        if archives.len() >= ARCHIVES_MAX {
            return Err(DocError::TooManyArchives { count: archives.len() + 1 });
        }
        meta::reset(&mut self.manifest, new_session_id, reason, now_ms)?;
        tracing::info!(
            session = %self.key,
            old = self.session_id,
            new = new_session_id,
            reason,
            "transcript reset"
        );
        self.session_id = new_session_id.to_owned();
        self.rebuild_index();
        Ok(())
    }

    /// A new session `new_key` with this one's settings and a copy of the current transcript's
    /// messages (up to and including `up_to`, or all).
    pub fn fork(
        &self,
        new_key: SessionKey,
        new_session_id: &str,
        actor: &[u8],
        up_to: Option<&str>,
        now_ms: i64,
    ) -> Result<SessionDoc, DocError> {
        let meta = self.meta()?;
        if let Some(id) = up_to
            && !self.index.contains(id)
        {
            return Err(DocError::UnknownMessage {
                id: id.to_owned(),
                session_id: self.session_id.clone(),
            });
        }
        let mut fork = SessionDoc::create(new_key, &meta.agent_id, new_session_id, actor, now_ms)?;
        fork.limits = self.limits;
        fork.patch_meta(&MetaPatch::from_settings(&meta))?;
        if let Some(segments) = self.segments() {
            for (loc, entry) in self.index.shown_locs(segments) {
                if let Some(message) = Transcript::read(segments, &self.session_id, loc)? {
                    fork.append(&message)?;
                }
                if up_to == Some(&*entry.id) {
                    break;
                }
            }
        }
        tracing::info!(
            session = %self.key,
            fork = %fork.key,
            messages = fork.message_count(),
            "session forked"
        );
        Ok(fork)
    }

    /// For each part changed since the last call (locally or by applied chunks and sync), the
    /// Automerge changes since then. Each chunk is written to disk and pushed to replicas as is.
    pub fn take_chunks(&mut self) -> Vec<Chunk> {
        let mut out = Vec::new();
        if let Some(bytes) = self.manifest.take_chunk() {
            out.push(Chunk { part: PartId::Manifest, bytes });
        }
        for (session_id, segments) in &mut self.transcripts {
            for (&index, segment) in segments {
                if let Some(bytes) = segment.part.take_chunk() {
                    out.push(Chunk { part: part_id(session_id, index), bytes });
                }
            }
        }
        out
    }

    /// Every part saved whole and compacted; replaces all earlier chunks of the session.
    pub fn snapshot(&mut self) -> Vec<Chunk> {
        let mut out = vec![Chunk { part: PartId::Manifest, bytes: self.manifest.snapshot() }];
        for (session_id, segments) in &mut self.transcripts {
            for (&index, segment) in segments {
                out.push(Chunk {
                    part: part_id(session_id, index),
                    bytes: segment.part.snapshot(),
                });
            }
        }
        out
    }

    /// The part `id`, created by its genesis when it is a segment this replica does not have.
    fn part_or_create(&mut self, id: &PartId) -> Result<&mut Part, DocError> {
        check_part_id(id)?;
        let PartId::Segment { session_id, index } = id else {
            return Ok(&mut self.manifest);
        };
        let exists = self.transcripts.get(session_id).is_some_and(|s| s.contains_key(index));
        if !exists {
            let count = self.part_count();
            if count >= PARTS_MAX {
                return Err(DocError::TooManyParts { count: count + 1 });
            }
            let segment = Segment::new(Part::genesis(&self.key, id, &self.actor)?, id)?;
            tracing::debug!(session = %self.key, part = %id, "part created for a replica");
            self.transcripts.entry(session_id.clone()).or_default().insert(*index, segment);
        }
        match self.transcripts.get_mut(session_id).and_then(|s| s.get_mut(index)) {
            Some(segment) => Ok(&mut segment.part),
            None => Err(DocError::MalformedPart { part: id.clone(), reason: "vanished".into() }),
        }
    }

    /// Brings the in-memory view up to date after part `id` changed under us from heads `before`.
    /// `hint`: changes just given to Automerge, if known (see [`Segment::refresh_since`]).
    fn part_changed(
        &mut self,
        id: &PartId,
        before: &[automerge::ChangeHash],
        hint: &[automerge::Change],
    ) -> Result<(), DocError> {
        match id {
            PartId::Manifest => {
                let current = meta::session_ids(&self.manifest)?.into_iter().next();
                if let Some(current) = current
                    && current != self.session_id
                {
                    tracing::info!(
                        session = %self.key,
                        old = self.session_id,
                        new = current,
                        "current transcript changed by a replica"
                    );
                    self.session_id = current;
                    self.rebuild_index();
                }
            }
            PartId::Segment { session_id, index } => {
                let Some(segment) =
                    self.transcripts.get_mut(session_id).and_then(|s| s.get_mut(index))
                else {
                    return Ok(());
                };
                let refresh = segment.refresh_since(id, before, hint)?;
                if *session_id != self.session_id {
                    return Ok(());
                }
                let added = match refresh {
                    Refresh::Rewritten => false,
                    Refresh::Appended { from } => {
                        segment.slots.iter().enumerate().skip(from).all(|(pos, slot)| {
                            match (slot, u32::try_from(pos)) {
                                (None, _) => true,
                                (Some(entry), Ok(pos)) => {
                                    self.index.add(entry, Loc { segment: *index, pos })
                                }
                                (Some(_), Err(_)) => false,
                            }
                        })
                    }
                };
                if !added {
                    self.rebuild_index();
                }
            }
        }
        Ok(())
    }

    /// Applies changes pushed by a replica (a chunk from its `take_chunks`). Unknown segments are
    /// created on the fly; changes whose dependencies are missing wait inside Automerge.
    pub fn apply_chunk(&mut self, chunk: &Chunk) -> Result<ApplyOutcome, DocError> {
        self.apply_part(&chunk.part, &[&chunk.bytes])
    }

    /// Applies many chunks at once, each part's in one Automerge call: the same end state as
    /// [`Self::apply_chunk`] on each in turn, for much less work when a part has several (a
    /// copy catching up on the chunks written since it last looked). Stops at the first part
    /// that fails.
    pub fn apply_chunks<'c>(
        &mut self,
        chunks: impl IntoIterator<Item = &'c Chunk>,
    ) -> Result<ApplyOutcome, DocError> {
        let mut by_part: BTreeMap<&PartId, Vec<&[u8]>> = BTreeMap::new();
        for chunk in chunks {
            by_part.entry(&chunk.part).or_default().push(&chunk.bytes);
        }
        let mut outcome = ApplyOutcome::default();
        for (id, pieces) in by_part {
            outcome.merge(self.apply_part(id, &pieces)?);
        }
        Ok(outcome)
    }

    fn apply_part(&mut self, id: &PartId, pieces: &[&[u8]]) -> Result<ApplyOutcome, DocError> {
        let part = self.part_or_create(id)?;
        let before = part.heads();
        let (changed, parsed) = part.apply_many(id, pieces)?;
        // These changes' own state, not the part's: a change queued earlier whose dependencies
        // never come must not make every later push look unstored.
        let waiting_for_dependencies =
            parsed.iter().any(|c| part.doc.get_change_meta_by_hash(&c.hash()).is_none());
        if changed {
            self.part_changed(id, &before, &parsed)?;
        }
        Ok(ApplyOutcome { changed, waiting_for_dependencies })
    }

    /// Heads of every part, sorted by part.
    pub fn part_heads(&mut self) -> Vec<(PartId, Vec<[u8; 32]>)> {
        let hashes = |heads: Vec<automerge::ChangeHash>| heads.into_iter().map(|h| h.0).collect();
        let mut out = vec![(PartId::Manifest, hashes(self.manifest.heads()))];
        for (session_id, segments) in &mut self.transcripts {
            for (&index, segment) in segments {
                out.push((part_id(session_id, index), hashes(segment.part.heads())));
            }
        }
        out
    }

    /// blake3 over the sorted (part, heads) list: equal digests mean equal sessions.
    pub fn heads_digest(&mut self) -> HeadsDigest {
        let parts = self.part_heads();
        pushed::digest_of(parts.iter().map(|(id, heads)| (id, heads.as_slice())))
    }

    /// The heads of every part, for a replica that takes pushes without applying them
    /// ([`HeadsTracker::advance`]) until it applies them with [`Self::apply_persisted_chunks`].
    pub fn heads_tracker(&mut self) -> HeadsTracker {
        let mut parts = Vec::new();
        for (id, heads) in self.part_heads() {
            // A part with a change waiting for dependencies is not tracked: a new change could
            // release it, which the tracker would not see.
            let deferrable = self.part_mut(&id).is_some_and(|p| !p.waiting_for_dependencies());
            parts.push((id, heads, deferrable));
        }
        HeadsTracker::new(parts)
    }

    /// [`Self::apply_chunks`] for chunks that are already on disk (pushes a replica stored
    /// before applying them): a part that had nothing unsaved before stays saved, so the next
    /// [`Self::take_chunks`] does not write the same changes again.
    pub fn apply_persisted_chunks(&mut self, chunks: &[Chunk]) -> Result<ApplyOutcome, DocError> {
        let mut saved: Vec<&PartId> = Vec::new();
        for chunk in chunks {
            if !saved.contains(&&chunk.part)
                && self.part_mut(&chunk.part).is_some_and(|p| p.is_saved())
            {
                saved.push(&chunk.part);
            }
        }
        let outcome = self.apply_chunks(chunks)?;
        for id in saved {
            if let Some(part) = self.part_mut(id) {
                part.mark_saved();
            }
        }
        Ok(outcome)
    }

    /// The part `id`, if this copy has it.
    fn part_mut(&mut self, id: &PartId) -> Option<&mut Part> {
        match id {
            PartId::Manifest => Some(&mut self.manifest),
            PartId::Segment { session_id, index } => {
                self.transcripts.get_mut(session_id)?.get_mut(index).map(|s| &mut s.part)
            }
        }
    }

    /// Estimated resident bytes of this hydrated session, for the cache's memory budget:
    /// [`PART_RESIDENT_BYTES`] per part, plus per stored message its stored bytes (id, body,
    /// keys) and [`MESSAGE_RESIDENT_BYTES`], plus the stored bytes of the messages kept decoded
    /// for history reads. The constants are calibrated against the RSS of many hydrated
    /// sessions (docs/benchmarks.md); it does not walk Automerge's internals.
    pub fn approx_bytes(&self) -> usize {
        let mut bytes = PART_RESIDENT_BYTES;
        for segment in self.transcripts.values().flat_map(BTreeMap::values) {
            bytes += PART_RESIDENT_BYTES
                + segment.bytes
                + segment.decoded_bytes()
                + segment.slots.len() * MESSAGE_RESIDENT_BYTES;
        }
        bytes
    }

    /// The next sync message for `peer`, or `None` when there is nothing to say. Parts are added
    /// until the next would cross [`SYNC_MESSAGE_BYTES_MAX`]; the rest go in later messages.
    pub fn generate_sync_message(
        &mut self,
        peer: &mut PeerSyncState,
    ) -> Result<Option<SyncMessage>, DocError> {
        let mut out = SyncMessage::default();
        let mut total = sync::MESSAGE_WIRE_BYTES;
        let mut too_large = None;
        let mut parts: Vec<(PartId, &mut Part)> = vec![(PartId::Manifest, &mut self.manifest)];
        for (session_id, segments) in &mut self.transcripts {
            for (&index, segment) in segments {
                parts.push((part_id(session_id, index), &mut segment.part));
            }
        }
        for (id, part) in parts {
            let state = peer.parts.entry(id.clone()).or_default();
            let before = state.clone();
            sync::resend_needed(state);
            let Some(mut message) = part.doc.sync().generate_sync_message(state) else {
                continue;
            };
            sync::offer_have(&mut part.doc, state, &mut message);
            let bytes = message.encode();
            let size = sync::part_wire_bytes(&id, bytes.len());
            if size + sync::MESSAGE_WIRE_BYTES > SYNC_MESSAGE_BYTES_MAX {
                // Forget we generated it, so it is tried again rather than awaited.
                *state = before;
                tracing::error!(session = %self.key, part = %id, size, "part too large to sync");
                too_large = Some((id, size));
                continue;
            }
            if total + size > SYNC_MESSAGE_BYTES_MAX {
                *state = before;
                continue;
            }
            total += size;
            out.parts.push((id, bytes));
        }
        match too_large {
            Some((part, bytes)) if out.is_empty() => Err(DocError::PartTooLarge { part, bytes }),
            _ if out.is_empty() => Ok(None),
            _ => Ok(Some(out)),
        }
    }

    /// Applies a peer's sync message. Parts this replica does not have are created.
    pub fn receive_sync_message(
        &mut self,
        peer: &mut PeerSyncState,
        message: &SyncMessage,
    ) -> Result<ApplyOutcome, DocError> {
        sync::check_received(message)?;
        if message.parts.len() > PARTS_MAX {
            return Err(DocError::TooManyParts { count: message.parts.len() });
        }
        let mut decoded = Vec::with_capacity(message.parts.len());
        for (id, bytes) in &message.parts {
            check_part_id(id)?;
            decoded.push((id, sync::decode_part_message(id, bytes)?));
        }
        let mut outcome = ApplyOutcome::default();
        let mut result = Ok(());
        for (id, part_message) in decoded {
            let hint = part::parse_changes(part_message.changes.iter());
            let state = peer.parts.entry(id.clone()).or_default();
            let part = match self.part_or_create(id) {
                Ok(part) => part,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            };
            let before = part.heads();
            if let Err(source) = part.doc.sync().receive_sync_message(state, part_message) {
                result = Err(DocError::Automerge { part: id.clone(), source: Box::new(source) });
                break;
            }
            let changed = part.heads() != before;
            outcome.merge(ApplyOutcome {
                changed,
                waiting_for_dependencies: part.waiting_for_dependencies(),
            });
            if changed {
                self.part_changed(id, &before, &hint)?;
            }
        }
        result.map(|()| outcome)
    }
}
