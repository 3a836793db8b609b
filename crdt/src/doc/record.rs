//! How one message is stored in a segment: a map element of the `messages` list with a few scalar
//! fields, so that the index can be rebuilt without parsing message bodies.
//!
//! | key | value | when |
//! |-----|-------|------|
//! | `i` | message id: str, or bytes for an id ending in a UUID (see [`encode_id`]) | always |
//! | `r` | role code (uint: 0 user, 1 assistant, 2 system, 3 toolResult) | always |
//! | `t` | timestamp, ms since the Unix epoch (int) | always |
//! | `b` | the compact JSON of the rest of the message (str) | always |
//! | `p` | partial checkpoint (bool) | appended only when true; always written by a replace |
//! | `k` | idempotency key (str) | appended only when present; always written by a replace |
//! | `a` | reply_to ids as a JSON array (str) | appended only when non-empty; always written by a replace |
//!
//! Keys are one letter because every key string is stored in every change: per-message sync
//! bytes are a target (150 B + 1.2 x body). A replace writes every key, in this fixed order, so
//! that two concurrent replaces of the same message resolve every key to the same writer (the
//! op counters of the two changes differ by the same amount on each key) and never mix fields.

use super::error::DocError;
use super::{IDEMPOTENCY_KEY_BYTES_MAX, REPLY_TO_COUNT_MAX};
use crate::message::{
    ContentPart, MESSAGE_BODY_BYTES_MAX, MESSAGE_ID_BYTES_MAX, Message, Role, StopReason, Usage,
};
use automerge::hydrate;
use automerge::transaction::Transactable;
use automerge::{AutoCommit, AutomergeError, ObjId, ObjType, ScalarValue};
use serde::{Deserialize, Serialize};

const KEY_ID: &str = "i";
const KEY_ROLE: &str = "r";
pub(crate) const KEY_TIMESTAMP: &str = "t";
const KEY_BODY: &str = "b";
const KEY_PARTIAL: &str = "p";
const KEY_IDEMPOTENCY: &str = "k";
const KEY_REPLY_TO: &str = "a";

/// Characters of a canonical UUID (lowercase hex, hyphenated 8-4-4-4-12).
const UUID_CHARS: usize = 36;
/// Bytes of a UUID.
const UUID_BYTES: usize = 16;
const UUID_HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// The stored form of a message id. Ids are UUIDs or a short prefix and a UUID (`r:<uuid>`); such
/// an id is stored as bytes, the prefix followed by the 16 UUID bytes, which saves 20 bytes per
/// message against the 36-character text. Any other id is stored as a string. Decoding a byte id
/// always takes the last 16 bytes as the UUID, so the round trip is exact.
fn encode_id(id: &str) -> ScalarValue {
    let Some(split) = id.len().checked_sub(UUID_CHARS) else {
        return ScalarValue::from(id);
    };
    let Some((prefix, uuid)) = id.split_at_checked(split) else {
        return ScalarValue::from(id);
    };
    let canonical = uuid.bytes().enumerate().all(|(i, c)| {
        if UUID_HYPHENS.contains(&i) { c == b'-' } else { matches!(c, b'0'..=b'9' | b'a'..=b'f') }
    });
    let hex_digits: String = uuid.chars().filter(|c| *c != '-').collect();
    match hex::decode(&hex_digits) {
        Ok(bytes) if canonical && bytes.len() == UUID_BYTES => {
            let mut out = Vec::with_capacity(prefix.len() + UUID_BYTES);
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(&bytes);
            ScalarValue::Bytes(out)
        }
        _ => ScalarValue::from(id),
    }
}

fn decode_id(value: &ScalarValue) -> Option<String> {
    match value {
        ScalarValue::Str(s) => Some(s.to_string()),
        ScalarValue::Bytes(bytes) => {
            let split = bytes.len().checked_sub(UUID_BYTES)?;
            let prefix = std::str::from_utf8(&bytes[..split]).ok()?;
            let hex = hex::encode(&bytes[split..]);
            let mut id = String::with_capacity(prefix.len() + UUID_CHARS);
            id.push_str(prefix);
            for (i, part) in [&hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]]
                .into_iter()
                .enumerate()
            {
                if i > 0 {
                    id.push('-');
                }
                id.push_str(part);
            }
            Some(id)
        }
        _ => None,
    }
}

fn role_code(role: Role) -> u64 {
    match role {
        Role::User => 0,
        Role::Assistant => 1,
        Role::System => 2,
        Role::ToolResult => 3,
    }
}

fn role_from_code(code: u64) -> Option<Role> {
    Some(match code {
        0 => Role::User,
        1 => Role::Assistant,
        2 => Role::System,
        3 => Role::ToolResult,
        _ => return None,
    })
}

/// The part of a message stored as one JSON string (field `b`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BodyRef<'a> {
    content: &'a [ContentPart],
    #[serde(skip_serializing_if = "str::is_empty")]
    author: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_reason: Option<StopReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    content: Vec<ContentPart>,
    #[serde(default)]
    author: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    stop_reason: Option<StopReason>,
    #[serde(default)]
    run_id: Option<String>,
}

/// A message validated and encoded into the scalar fields it is stored as.
#[derive(Debug)]
pub(crate) struct Encoded<'a> {
    pub(crate) message: &'a Message,
    body: String,
    reply_to: Option<String>,
}

impl<'a> Encoded<'a> {
    pub(crate) fn new(message: &'a Message) -> Result<Encoded<'a>, DocError> {
        check_message_id(&message.id)?;
        let id = || message.id.clone();
        if let Some(key) = &message.idempotency_key
            && key.len() > IDEMPOTENCY_KEY_BYTES_MAX
        {
            return Err(DocError::IdempotencyKeyTooLong { id: id(), len: key.len() });
        }
        if message.reply_to.len() > REPLY_TO_COUNT_MAX {
            return Err(DocError::TooManyReplyTo { id: id(), count: message.reply_to.len() });
        }
        for reply in &message.reply_to {
            check_message_id(reply)?;
        }
        let body = serde_json::to_string(&BodyRef {
            content: &message.content,
            author: &message.author,
            model: message.model.as_deref(),
            provider: message.provider.as_deref(),
            usage: message.usage.as_ref(),
            stop_reason: message.stop_reason,
            run_id: message.run_id.as_deref(),
        })
        .map_err(|source| DocError::BodyEncode { id: id(), source })?;
        if body.len() > MESSAGE_BODY_BYTES_MAX {
            return Err(DocError::BodyTooLarge { id: id(), len: body.len() });
        }
        let reply_to = if message.reply_to.is_empty() {
            None
        } else {
            Some(
                serde_json::to_string(&message.reply_to)
                    .map_err(|source| DocError::BodyEncode { id: id(), source })?,
            )
        };
        Ok(Encoded { message, body, reply_to })
    }

    /// Bytes of the scalar values stored for this message (what a segment's size counts).
    pub(crate) fn stored_bytes(&self) -> usize {
        self.message.id.len()
            + self.body.len()
            + self.message.idempotency_key.as_ref().map_or(0, String::len)
            + self.reply_to.as_ref().map_or(0, String::len)
    }

    /// The index view of this message.
    pub(crate) fn entry(&self) -> Entry {
        Entry {
            id: self.message.id.as_str().into(),
            role: self.message.role,
            partial: self.message.partial,
            idempotency_key: self.message.idempotency_key.as_deref().map(Into::into),
            reply_to: self.message.reply_to.iter().map(|r| r.as_str().into()).collect(),
            bytes: u32::try_from(self.stored_bytes()).unwrap_or(u32::MAX),
        }
    }

    /// Inserts the message as a new map element at `pos` of `list`; returns the element.
    pub(crate) fn insert(
        &self,
        doc: &mut AutoCommit,
        list: &ObjId,
        pos: usize,
    ) -> Result<ObjId, AutomergeError> {
        let m = self.message;
        let obj = doc.insert_object(list, pos, ObjType::Map)?;
        doc.put(&obj, KEY_ID, encode_id(&m.id))?;
        doc.put(&obj, KEY_ROLE, role_code(m.role))?;
        doc.put(&obj, KEY_TIMESTAMP, m.timestamp_ms)?;
        doc.put(&obj, KEY_BODY, self.body.as_str())?;
        if m.partial {
            doc.put(&obj, KEY_PARTIAL, true)?;
        }
        if let Some(key) = &m.idempotency_key {
            doc.put(&obj, KEY_IDEMPOTENCY, key.as_str())?;
        }
        if let Some(reply_to) = &self.reply_to {
            doc.put(&obj, KEY_REPLY_TO, reply_to.as_str())?;
        }
        Ok(obj)
    }

    /// Overwrites the element `obj` with this message: every key, in a fixed order.
    pub(crate) fn overwrite(
        &self,
        doc: &mut AutoCommit,
        obj: &ObjId,
    ) -> Result<(), AutomergeError> {
        let m = self.message;
        let or_null = |s: Option<&str>| s.map_or(ScalarValue::Null, ScalarValue::from);
        doc.put(obj, KEY_ID, encode_id(&m.id))?;
        doc.put(obj, KEY_ROLE, role_code(m.role))?;
        doc.put(obj, KEY_TIMESTAMP, m.timestamp_ms)?;
        doc.put(obj, KEY_BODY, self.body.as_str())?;
        doc.put(obj, KEY_PARTIAL, m.partial)?;
        doc.put(obj, KEY_IDEMPOTENCY, or_null(m.idempotency_key.as_deref()))?;
        doc.put(obj, KEY_REPLY_TO, or_null(self.reply_to.as_deref()))?;
        Ok(())
    }
}

fn check_message_id(id: &str) -> Result<(), DocError> {
    if id.is_empty() {
        return Err(DocError::MessageIdEmpty);
    }
    if id.len() > MESSAGE_ID_BYTES_MAX {
        return Err(DocError::MessageIdTooLong { len: id.len() });
    }
    Ok(())
}

/// What the index keeps about one stored message (no body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) id: Box<str>,
    pub(crate) role: Role,
    pub(crate) partial: bool,
    pub(crate) idempotency_key: Option<Box<str>>,
    pub(crate) reply_to: Box<[Box<str>]>,
    /// Stored bytes of the message's scalar values.
    pub(crate) bytes: u32,
}

fn field<'m>(map: &'m hydrate::Map, key: &str) -> Option<&'m ScalarValue> {
    match map.get(key) {
        Some(hydrate::Value::Scalar(s)) => Some(s),
        _ => None,
    }
}

fn str_field<'m>(map: &'m hydrate::Map, key: &str) -> Option<&'m str> {
    field(map, key).and_then(ScalarValue::as_str)
}

fn parse_reply_to(map: &hydrate::Map) -> Result<Vec<String>, String> {
    match str_field(map, KEY_REPLY_TO) {
        None => Ok(Vec::new()),
        Some(json) => serde_json::from_str(json).map_err(|e| format!("reply_to: {e}")),
    }
}

impl Entry {
    /// Reads the index view of a stored element; `Err` says what is malformed.
    pub(crate) fn from_map(map: &hydrate::Map) -> Result<Entry, String> {
        let id = field(map, KEY_ID).and_then(decode_id).ok_or("no id")?;
        let role = field(map, KEY_ROLE)
            .and_then(ScalarValue::as_u64)
            .and_then(role_from_code)
            .ok_or("no valid role")?;
        let partial = field(map, KEY_PARTIAL).and_then(ScalarValue::as_bool).unwrap_or(false);
        let idempotency_key = str_field(map, KEY_IDEMPOTENCY).map(Into::into);
        let reply_to = parse_reply_to(map)?;
        let bytes = id.len()
            + str_field(map, KEY_BODY).map_or(0, str::len)
            + str_field(map, KEY_IDEMPOTENCY).map_or(0, str::len)
            + str_field(map, KEY_REPLY_TO).map_or(0, str::len);
        Ok(Entry {
            id: id.as_str().into(),
            role,
            partial,
            idempotency_key,
            reply_to: reply_to.into_iter().map(Into::into).collect(),
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
        })
    }
}

/// Reads a whole stored message; `Err` says what is malformed.
pub(crate) fn message_from_map(map: &hydrate::Map) -> Result<Message, String> {
    let entry = Entry::from_map(map)?;
    let timestamp_ms =
        field(map, KEY_TIMESTAMP).and_then(ScalarValue::as_i64).ok_or("no timestamp")?;
    let body = str_field(map, KEY_BODY).ok_or("no body")?;
    let body: Body = serde_json::from_str(body).map_err(|e| format!("body: {e}"))?;
    Ok(Message {
        id: entry.id.into(),
        role: entry.role,
        content: body.content,
        timestamp_ms,
        author: body.author,
        model: body.model,
        provider: body.provider,
        usage: body.usage,
        stop_reason: body.stop_reason,
        idempotency_key: entry.idempotency_key.map(Into::into),
        run_id: body.run_id,
        reply_to: entry.reply_to.iter().map(|r| r.to_string()).collect(),
        partial: entry.partial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_ids_are_stored_as_bytes_and_read_back_exactly() {
        for id in [
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "r:0f8fad5b-d9cb-469f-a165-70867728950e",
            "prefix with ünïcode:0f8fad5b-d9cb-469f-a165-70867728950e",
        ] {
            let stored = encode_id(id);
            assert!(matches!(&stored, ScalarValue::Bytes(b) if b.len() == id.len() - 20), "{id}");
            assert_eq!(decode_id(&stored).as_deref(), Some(id));
        }
        for id in [
            "0F8FAD5B-D9CB-469F-A165-70867728950E",
            "0f8fad5b-d9cb-469f-a165-70867728950",
            "0f8fad5bxd9cb-469f-a165-70867728950e",
            "0f8fad5b-d9cb-469f-a165-70867728950g",
            "m1",
            "ü",
        ] {
            assert_eq!(encode_id(id), ScalarValue::from(id), "{id}");
            assert_eq!(decode_id(&encode_id(id)).as_deref(), Some(id));
        }
    }
}
