//! The manifest part: the metadata map (a mirror of OpenClaw's SessionEntry) and the archives
//! list (transcripts set aside by a reset).
//!
//! Metadata keys are OpenClaw's camelCase names. Settings are last-writer-wins scalars; the
//! compaction count is an Automerge counter created at genesis, so concurrent increments on two
//! replicas add up. Token counts are counters too, kept per segment (see [`UsageIncrements`]) and
//! summed by the document.

use super::error::DocError;
use super::part::{KEY_ARCHIVES, KEY_META, Part, genesis_object, scalar_str};
use super::{ARCHIVE_REASON_BYTES_MAX, META_VALUE_BYTES_MAX};
use crate::message::Usage;
use crate::types::PartId;
use automerge::transaction::Transactable;
use automerge::{AutoCommit, AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, Value};

const KEY_SESSION_ID: &str = "sessionId";
const KEY_AGENT_ID: &str = "agentId";
const KEY_SESSION_KEY: &str = "sessionKey";
const KEY_CREATED_AT: &str = "createdAt";
const KEY_SESSION_STARTED_AT: &str = "sessionStartedAt";
pub(crate) const KEY_INPUT_TOKENS: &str = "inputTokens";
pub(crate) const KEY_OUTPUT_TOKENS: &str = "outputTokens";
pub(crate) const KEY_TOTAL_TOKENS: &str = "totalTokens";
const KEY_COMPACTION_COUNT: &str = "compactionCount";
const KEY_ARCHIVED_AT: &str = "archivedAt";
const KEY_REASON: &str = "reason";

/// One change to a metadata setting. OpenClaw's `sessions.patch` sends `null` to clear a field
/// and leaves absent fields alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FieldPatch<T> {
    #[default]
    Leave,
    Set(T),
    Clear,
}

/// A value type of a metadata setting.
trait MetaValue: Sized {
    fn read(value: &ScalarValue) -> Option<Self>;
    fn check(&self, field: &'static str) -> Result<(), DocError>;
    fn scalar(&self) -> Result<ScalarValue, DocError>;
}

impl MetaValue for String {
    fn read(value: &ScalarValue) -> Option<Self> {
        value.as_str().map(str::to_owned)
    }
    fn check(&self, field: &'static str) -> Result<(), DocError> {
        if self.len() > META_VALUE_BYTES_MAX {
            return Err(DocError::MetaValueTooLong { field, len: self.len() });
        }
        Ok(())
    }
    fn scalar(&self) -> Result<ScalarValue, DocError> {
        Ok(ScalarValue::from(self.as_str()))
    }
}

impl MetaValue for bool {
    fn read(value: &ScalarValue) -> Option<Self> {
        value.as_bool()
    }
    fn check(&self, _: &'static str) -> Result<(), DocError> {
        Ok(())
    }
    fn scalar(&self) -> Result<ScalarValue, DocError> {
        Ok(ScalarValue::Boolean(*self))
    }
}

impl MetaValue for u64 {
    fn read(value: &ScalarValue) -> Option<Self> {
        match value {
            ScalarValue::Uint(n) => Some(*n),
            ScalarValue::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    }
    fn check(&self, _: &'static str) -> Result<(), DocError> {
        Ok(())
    }
    fn scalar(&self) -> Result<ScalarValue, DocError> {
        Ok(ScalarValue::Uint(*self))
    }
}

fn read_scalar(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<ScalarValue> {
    match doc.get(obj, key) {
        Ok(Some((Value::Scalar(s), _))) => Some(s.into_owned()),
        _ => None,
    }
}

fn write_field<T: MetaValue>(
    doc: &mut AutoCommit,
    obj: &ObjId,
    key: &'static str,
    patch: &FieldPatch<T>,
) -> Result<bool, DocError> {
    match patch {
        FieldPatch::Leave => Ok(false),
        FieldPatch::Set(value) => {
            value.check(key)?;
            doc.put(obj, key, value.scalar()?).map_err(am)?;
            Ok(true)
        }
        FieldPatch::Clear => {
            doc.delete(obj, key).map_err(am)?;
            Ok(true)
        }
    }
}

macro_rules! settings {
    ($($(#[$doc:meta])* $field:ident: $ty:ty => $key:literal,)*) => {
        /// A session's metadata as the manifest holds it: OpenClaw's SessionEntry fields.
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub struct SessionMeta {
            /// The current transcript.
            pub session_id: String,
            pub agent_id: String,
            pub session_key: String,
            /// Milliseconds since the Unix epoch when the session was created.
            pub created_at_ms: i64,
            /// Milliseconds since the Unix epoch when the current transcript started.
            pub session_started_at_ms: i64,
            pub input_tokens: u64,
            pub output_tokens: u64,
            pub total_tokens: u64,
            pub compaction_count: u64,
            $($(#[$doc])* pub $field: Option<$ty>,)*
        }

        /// A change to the settings of [`SessionMeta`]: each field is left, set or cleared.
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub struct MetaPatch {
            $($(#[$doc])* pub $field: FieldPatch<$ty>,)*
        }

        impl MetaPatch {
            /// A patch that sets every setting of `meta` (what a fork copies).
            pub(crate) fn from_settings(meta: &SessionMeta) -> MetaPatch {
                MetaPatch {
                    $($field: match &meta.$field {
                        Some(value) => FieldPatch::Set(value.clone()),
                        None => FieldPatch::Leave,
                    },)*
                }
            }
        }

        fn read_settings(fields: &Fields, out: &mut SessionMeta) {
            $(out.$field = fields.get($key).and_then(|v| <$ty>::read(v));)*
        }

        fn write_settings(
            doc: &mut AutoCommit,
            obj: &ObjId,
            patch: &MetaPatch,
        ) -> Result<bool, DocError> {
            let mut changed = false;
            $(changed |= write_field(doc, obj, $key, &patch.$field)?;)*
            Ok(changed)
        }
    };
}

settings! {
    label: String => "label",
    display_name: String => "displayName",
    /// Model chosen for this session (`/model`), overriding the agent's default.
    model_override: String => "modelOverride",
    provider_override: String => "providerOverride",
    thinking_level: String => "thinkingLevel",
    fast_mode: bool => "fastMode",
    verbose_level: String => "verboseLevel",
    reasoning_level: String => "reasoningLevel",
    elevated_level: String => "elevatedLevel",
    queue_mode: String => "queueMode",
    send_policy: String => "sendPolicy",
    /// The channel the session came from (OpenClaw `channel`/`origin`).
    channel: String => "channel",
    chat_type: String => "chatType",
    last_channel: String => "lastChannel",
    last_to: String => "lastTo",
    last_account_id: String => "lastAccountId",
    last_thread_id: String => "lastThreadId",
    /// Key of the session that spawned this one (sub-agents).
    spawned_by: String => "spawnedBy",
    spawn_depth: u64 => "spawnDepth",
    /// Size of the context of the last turn, in tokens. A snapshot, not a sum: it is a
    /// last-writer-wins value, unlike the token counters.
    context_tokens: u64 => "contextTokens",
    /// When the session was deleted (milliseconds since the Unix epoch): a tombstone, so that a
    /// replica that missed the delete cannot bring the session back. Hidden from listings.
    deleted_at: u64 => "deletedAt",
}

/// A transcript set aside by a reset; its segments stay readable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveEntry {
    pub session_id: String,
    /// Milliseconds since the Unix epoch.
    pub archived_at_ms: i64,
    pub reason: String,
}

/// Reason recorded for a transcript that lost a concurrent write of the session id (two replicas
/// created or reset the session at the same time); it is shown as archived so nothing is hidden.
pub const ARCHIVE_REASON_CONCURRENT: &str = "concurrent";

fn object(doc: &AutoCommit, key: &str, ty: ObjType) -> Result<ObjId, DocError> {
    genesis_object(doc, &PartId::Manifest, key, ty)
}

/// The scalar values of a map, by key (the winning value of each, as `get` returns).
type Fields = std::collections::HashMap<String, ScalarValue>;

/// Reads every scalar of the map `obj` in one pass: one `get` per field costs a seek each, and
/// the metadata map has some thirty fields.
fn read_fields(doc: &AutoCommit, obj: &ObjId) -> Fields {
    doc.map_range(obj, ..)
        .filter_map(|item| match item.value.into_value() {
            Value::Scalar(s) => Some((item.key.into_owned(), s.into_owned())),
            Value::Object(_) => None,
        })
        .collect()
}

fn counter(fields: &Fields, key: &str) -> u64 {
    counter_value(fields.get(key))
}

/// A counter's value (0 when absent, not a counter, or below zero).
fn counter_value(value: Option<&ScalarValue>) -> u64 {
    match value {
        Some(ScalarValue::Counter(c)) => u64::try_from(i64::from(c)).unwrap_or(0),
        _ => 0,
    }
}

fn to_increment(field: &'static str, value: u64) -> Result<i64, DocError> {
    i64::try_from(value).map_err(|_| DocError::CounterOverflow { field, value })
}

fn am(source: AutomergeError) -> DocError {
    DocError::Automerge { part: PartId::Manifest, source: Box::new(source) }
}

/// Every value of the session id: one, or several after concurrent creates or resets. The first
/// is the value Automerge resolves the conflict to on every replica (the current transcript).
pub(crate) fn session_ids(part: &Part) -> Result<Vec<String>, DocError> {
    let doc = &part.doc;
    let meta = object(doc, KEY_META, ObjType::Map)?;
    let winner = doc.get(&meta, KEY_SESSION_ID).map_err(am)?.and_then(|(v, _)| scalar_str(&v));
    let mut ids: Vec<String> = winner.into_iter().collect();
    for (value, _) in doc.get_all(&meta, KEY_SESSION_ID).map_err(am)? {
        if let Some(id) = scalar_str(&value)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Writes the identity of a new session (one change).
pub(crate) fn init(
    part: &mut Part,
    session_key: &str,
    agent_id: &str,
    session_id: &str,
    now_ms: i64,
) -> Result<(), DocError> {
    let meta = object(&part.doc, KEY_META, ObjType::Map)?;
    part.transact(|doc| {
        doc.put(&meta, KEY_SESSION_KEY, session_key).map_err(am)?;
        doc.put(&meta, KEY_AGENT_ID, agent_id).map_err(am)?;
        doc.put(&meta, KEY_SESSION_ID, session_id).map_err(am)?;
        doc.put(&meta, KEY_CREATED_AT, now_ms).map_err(am)?;
        doc.put(&meta, KEY_SESSION_STARTED_AT, now_ms).map_err(am)?;
        Ok(())
    })
}

pub(crate) fn read(part: &Part, session_key: &str) -> Result<SessionMeta, DocError> {
    let doc = &part.doc;
    let meta = object(doc, KEY_META, ObjType::Map)?;
    let fields = read_fields(doc, &meta);
    let text = |key| fields.get(key).and_then(|v| v.as_str().map(str::to_owned));
    let int = |key| fields.get(key).and_then(|v| v.as_i64()).unwrap_or(0);
    let mut out = SessionMeta {
        session_id: session_ids(part)?.into_iter().next().unwrap_or_default(),
        agent_id: text(KEY_AGENT_ID).unwrap_or_default(),
        session_key: session_key.to_owned(),
        created_at_ms: int(KEY_CREATED_AT),
        session_started_at_ms: int(KEY_SESSION_STARTED_AT),
        compaction_count: counter(&fields, KEY_COMPACTION_COUNT),
        ..SessionMeta::default()
    };
    read_settings(&fields, &mut out);
    Ok(out)
}

/// The agent id alone (one `get` instead of reading every field).
pub(crate) fn agent_id(part: &Part) -> Result<String, DocError> {
    let meta = object(&part.doc, KEY_META, ObjType::Map)?;
    Ok(read_scalar(&part.doc, &meta, KEY_AGENT_ID)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default())
}

/// Applies a patch (one change when anything is written). Returns whether anything was.
pub(crate) fn patch(part: &mut Part, patch: &MetaPatch) -> Result<bool, DocError> {
    let meta = object(&part.doc, KEY_META, ObjType::Map)?;
    part.transact(|doc| write_settings(doc, &meta, patch))
}

/// A turn's usage as increments of a segment's token counters, checked to fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct UsageIncrements([(&'static str, i64); 3]);

impl UsageIncrements {
    pub(crate) fn new(usage: &Usage) -> Result<UsageIncrements, DocError> {
        Ok(UsageIncrements([
            (KEY_INPUT_TOKENS, to_increment(KEY_INPUT_TOKENS, usage.input)?),
            (KEY_OUTPUT_TOKENS, to_increment(KEY_OUTPUT_TOKENS, usage.output)?),
            (KEY_TOTAL_TOKENS, to_increment(KEY_TOTAL_TOKENS, usage.total())?),
        ]))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(|(_, by)| *by == 0)
    }

    /// Adds the increments to counter values read earlier, in (input, output, total) order.
    pub(crate) fn add_to(&self, counts: &mut [u64; 3]) {
        for (count, (_, by)) in counts.iter_mut().zip(self.0) {
            *count = count.saturating_add_signed(by);
        }
    }

    /// Writes the increments into the counters map `obj` (inside the caller's transaction).
    pub(crate) fn write(&self, doc: &mut AutoCommit, obj: &ObjId) -> Result<(), AutomergeError> {
        for &(key, by) in &self.0 {
            if by != 0 {
                doc.increment(obj, key, by)?;
            }
        }
        Ok(())
    }
}

/// The value of counter `key` in map `obj` (0 when absent or not a counter).
pub(crate) fn read_counter(doc: &AutoCommit, obj: &ObjId, key: &str) -> u64 {
    counter_value(read_scalar(doc, obj, key).as_ref())
}

pub(crate) fn record_compaction(part: &mut Part) -> Result<(), DocError> {
    increment(part, &[(KEY_COMPACTION_COUNT, 1)])
}

fn increment(part: &mut Part, increments: &[(&'static str, i64)]) -> Result<(), DocError> {
    let meta = object(&part.doc, KEY_META, ObjType::Map)?;
    part.transact(|doc| {
        for &(key, by) in increments {
            if by != 0 {
                doc.increment(&meta, key, by).map_err(am)?;
            }
        }
        Ok(())
    })
}

/// The archives list, one entry per transcript (two replicas that reset concurrently both
/// archive the old transcript; the first entry is kept).
pub(crate) fn archives(part: &Part) -> Result<Vec<ArchiveEntry>, DocError> {
    let doc = &part.doc;
    let archives = object(doc, KEY_ARCHIVES, ObjType::List)?;
    let mut out: Vec<ArchiveEntry> = Vec::new();
    for item in doc.list_range(&archives, ..) {
        let obj = item.id();
        let text = |key| read_scalar(doc, &obj, key).and_then(|v| v.as_str().map(str::to_owned));
        let Some(session_id) = text(KEY_SESSION_ID) else {
            tracing::warn!(index = item.index, "skipping malformed archive entry");
            continue;
        };
        if out.iter().any(|a| a.session_id == session_id) {
            continue;
        }
        out.push(ArchiveEntry {
            session_id,
            archived_at_ms: read_scalar(doc, &obj, KEY_ARCHIVED_AT)
                .and_then(|v| v.as_i64())
                .unwrap_or(0),
            reason: text(KEY_REASON).unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Archives every current value of the session id, starts `new_session_id` and brings the
/// compaction count back to zero (one change). The token counts start at zero by themselves:
/// they are the new transcript's segments'.
pub(crate) fn reset(
    part: &mut Part,
    new_session_id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<(), DocError> {
    if reason.len() > ARCHIVE_REASON_BYTES_MAX {
        return Err(DocError::MetaValueTooLong { field: "reason", len: reason.len() });
    }
    let old_ids = session_ids(part)?;
    let meta = object(&part.doc, KEY_META, ObjType::Map)?;
    let archives = object(&part.doc, KEY_ARCHIVES, ObjType::List)?;
    let fields = read_fields(&part.doc, &meta);
    let compactions = counter(&fields, KEY_COMPACTION_COUNT);
    let compactions = to_increment(KEY_COMPACTION_COUNT, compactions)?;
    part.transact(|doc| {
        for old in &old_ids {
            let at = doc.length(&archives);
            let entry = doc.insert_object(&archives, at, ObjType::Map).map_err(am)?;
            doc.put(&entry, KEY_SESSION_ID, old.as_str()).map_err(am)?;
            doc.put(&entry, KEY_ARCHIVED_AT, now_ms).map_err(am)?;
            doc.put(&entry, KEY_REASON, reason).map_err(am)?;
        }
        doc.put(&meta, KEY_SESSION_ID, new_session_id).map_err(am)?;
        doc.put(&meta, KEY_SESSION_STARTED_AT, now_ms).map_err(am)?;
        // Counters cannot be set; subtract what is there. An increment made concurrently on
        // another replica survives the reset, which is what a sum should do.
        if compactions > 0 {
            doc.increment(&meta, KEY_COMPACTION_COUNT, -compactions).map_err(am)?;
        }
        Ok(())
    })
}
