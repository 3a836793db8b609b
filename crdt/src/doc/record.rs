//! How one message is stored in a segment: a map element of the `messages` list holding one
//! bytes value under the key `m`, the message's record:
//!
//! | bytes | what |
//! |-------|------|
//! | 1 | [`RECORD_VERSION`] |
//! | rest | postcard of [`StoredRecord`]: role code, partial flag, timestamp (ms since the Unix epoch), id, idempotency key, reply_to ids, then the compact JSON of the rest of the message (content, author, model, usage...) |
//!
//! One value per message because Automerge's cost is per op: a message used to be seven keys
//! (seven ops to write, to apply on every replica and to store), and a turn's writes were most of
//! a node's Automerge time. Ids ending in a UUID are stored as their prefix and the 16 UUID bytes
//! (see [`StoredId`]). The body is the record's last field and is decoded borrowed, so the index
//! view (everything but the body) is read without copying or parsing it. A replace overwrites the
//! one value, so two concurrent replaces resolve to one writer's whole message, never a mix.

use super::error::DocError;
use super::{IDEMPOTENCY_KEY_BYTES_MAX, REPLY_TO_COUNT_MAX};
use crate::message::{
    ContentPart, MESSAGE_BODY_BYTES_MAX, MESSAGE_ID_BYTES_MAX, Message, Role, StopReason, Usage,
};
use automerge::hydrate;
use automerge::transaction::Transactable;
use automerge::{AutoCommit, AutomergeError, ObjId, ObjType, ScalarValue};
use serde::{Deserialize, Serialize};

/// The element key of the record.
pub(crate) const KEY_RECORD: &str = "m";
/// First byte of every record: the layout of what follows.
const RECORD_VERSION: u8 = 1;

/// Characters of a canonical UUID (lowercase hex, hyphenated 8-4-4-4-12).
const UUID_CHARS: usize = 36;
/// Bytes of a UUID.
const UUID_BYTES: usize = 16;
const UUID_HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// The stored form of a message id. Ids are UUIDs or a short prefix and a UUID (`r:<uuid>`); such
/// an id is stored as the prefix and the 16 UUID bytes, which saves 20 bytes per id against the
/// 36-character text. Any other id is stored as text; the round trip is exact either way.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
enum StoredId<'a> {
    Text(&'a str),
    Uuid(&'a str, [u8; UUID_BYTES]),
}

impl<'a> StoredId<'a> {
    fn new(id: &'a str) -> StoredId<'a> {
        let Some(split) = id.len().checked_sub(UUID_CHARS) else {
            return StoredId::Text(id);
        };
        let Some((prefix, uuid)) = id.split_at_checked(split) else {
            return StoredId::Text(id);
        };
        let canonical = uuid.bytes().enumerate().all(|(i, c)| {
            if UUID_HYPHENS.contains(&i) {
                c == b'-'
            } else {
                matches!(c, b'0'..=b'9' | b'a'..=b'f')
            }
        });
        if !canonical {
            return StoredId::Text(id);
        }
        let hex_digits: String = uuid.chars().filter(|c| *c != '-').collect();
        let mut bytes = [0u8; UUID_BYTES];
        match hex::decode_to_slice(&hex_digits, &mut bytes) {
            Ok(()) => StoredId::Uuid(prefix, bytes),
            Err(_) => StoredId::Text(id),
        }
    }

    fn to_id(&self) -> String {
        match self {
            StoredId::Text(id) => (*id).to_owned(),
            StoredId::Uuid(prefix, bytes) => {
                let hex = hex::encode(bytes);
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
                id
            }
        }
    }
}

/// The record after its version byte. The body comes last and is borrowed when decoding, so the
/// index view costs no copy of it.
#[derive(Debug, Serialize, Deserialize)]
struct StoredRecord<'a> {
    role: u8,
    partial: bool,
    timestamp_ms: i64,
    #[serde(borrow)]
    id: StoredId<'a>,
    idempotency_key: Option<&'a str>,
    #[serde(borrow)]
    reply_to: Vec<StoredId<'a>>,
    body: &'a str,
}

impl<'a> StoredRecord<'a> {
    fn decode(bytes: &'a [u8]) -> Result<StoredRecord<'a>, String> {
        match bytes.split_first() {
            Some((&RECORD_VERSION, rest)) => {
                postcard::from_bytes(rest).map_err(|e| format!("record does not decode: {e}"))
            }
            Some((version, _)) => Err(format!("record version {version} is not supported")),
            None => Err("empty record".to_owned()),
        }
    }
}

fn role_code(role: Role) -> u8 {
    match role {
        Role::User => 0,
        Role::Assistant => 1,
        Role::System => 2,
        Role::ToolResult => 3,
    }
}

fn role_from_code(code: u8) -> Option<Role> {
    Some(match code {
        0 => Role::User,
        1 => Role::Assistant,
        2 => Role::System,
        3 => Role::ToolResult,
        _ => return None,
    })
}

/// The part of a message stored as compact JSON (the record's body).
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

/// A message validated and encoded into the record it is stored as.
#[derive(Debug)]
pub(crate) struct Encoded<'a> {
    pub(crate) message: &'a Message,
    record: Vec<u8>,
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
        let stored = StoredRecord {
            role: role_code(message.role),
            partial: message.partial,
            timestamp_ms: message.timestamp_ms,
            id: StoredId::new(&message.id),
            idempotency_key: message.idempotency_key.as_deref(),
            reply_to: message.reply_to.iter().map(|r| StoredId::new(r)).collect(),
            body: &body,
        };
        let mut record = Vec::with_capacity(body.len() + RECORD_OVERHEAD_BYTES);
        record.push(RECORD_VERSION);
        let record = postcard::to_extend(&stored, record)
            .map_err(|e| DocError::RecordEncode { id: id(), reason: e.to_string() })?;
        Ok(Encoded { message, record })
    }

    /// Bytes of the stored record (what a segment's size counts).
    pub(crate) fn stored_bytes(&self) -> usize {
        self.record.len()
    }

    /// The index view of this message.
    pub(crate) fn entry(&self) -> Entry {
        Entry {
            id: self.message.id.as_str().into(),
            role: self.message.role,
            partial: self.message.partial,
            idempotency_key: self.message.idempotency_key.as_deref().map(Into::into),
            reply_to: self.message.reply_to.iter().map(|r| r.as_str().into()).collect(),
            timestamp_ms: self.message.timestamp_ms,
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
        let obj = doc.insert_object(list, pos, ObjType::Map)?;
        doc.put(&obj, KEY_RECORD, ScalarValue::Bytes(self.record.clone()))?;
        Ok(obj)
    }

    /// Overwrites the element `obj` with this message (its one value).
    pub(crate) fn overwrite(
        &self,
        doc: &mut AutoCommit,
        obj: &ObjId,
    ) -> Result<(), AutomergeError> {
        doc.put(obj, KEY_RECORD, ScalarValue::Bytes(self.record.clone()))
    }
}

/// Room reserved in a record's buffer besides the body (version, role, flags, timestamp, ids).
const RECORD_OVERHEAD_BYTES: usize = 128;

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
    /// Kept for the session index's `updatedAt`, written on every commit.
    pub(crate) timestamp_ms: i64,
    /// Bytes of the stored record.
    pub(crate) bytes: u32,
}

/// The record bytes of an element and whether concurrent writers left several values (then
/// the caller resolves them with [`pick_record`]); `Err` says what is malformed.
pub(crate) fn record_of(map: &hydrate::Map) -> Result<(&[u8], bool), String> {
    match map.iter().find(|(key, _)| key.as_str() == KEY_RECORD) {
        Some((_, v)) => match &v.value {
            hydrate::Value::Scalar(ScalarValue::Bytes(bytes)) => Ok((bytes, v.conflict)),
            _ => Err("record is not bytes".to_owned()),
        },
        None => Err("no record".to_owned()),
    }
}

/// The record shown for an element whose key holds several concurrent values (two replaces of
/// one message that did not see each other, e.g. a stale owner's checkpoint and the new owner's
/// final reply across a partition): a final message wins over a partial checkpoint, so a
/// checkpoint can never hide the reply that replaced it; among equals, the last value (the one
/// Automerge itself shows). Every replica holds the same values in the same order, so every
/// replica shows the same record. `None` when no value is a record.
pub(crate) fn pick_record<'v>(values: &[&'v [u8]]) -> Option<&'v [u8]> {
    let is_final = |bytes: &[u8]| StoredRecord::decode(bytes).is_ok_and(|r| !r.partial);
    values
        .iter()
        .rev()
        .find(|v| is_final(v))
        .or_else(|| values.iter().rev().find(|v| StoredRecord::decode(v).is_ok()))
        .or(values.last())
        .copied()
}

impl Entry {
    fn from_record(record: &StoredRecord<'_>, bytes: usize) -> Result<Entry, String> {
        Ok(Entry {
            id: record.id.to_id().into(),
            role: role_from_code(record.role).ok_or("no valid role")?,
            partial: record.partial,
            idempotency_key: record.idempotency_key.map(Into::into),
            reply_to: record.reply_to.iter().map(|r| r.to_id().into()).collect(),
            timestamp_ms: record.timestamp_ms,
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
        })
    }

    /// Reads the index view of a stored record; `Err` says what is malformed.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Entry, String> {
        Entry::from_record(&StoredRecord::decode(bytes)?, bytes.len())
    }
}

/// Reads a whole stored message from its record; `Err` says what is malformed.
pub(crate) fn message_from_bytes(bytes: &[u8]) -> Result<Message, String> {
    let record = StoredRecord::decode(bytes)?;
    let entry = Entry::from_record(&record, bytes.len())?;
    let body: Body = serde_json::from_str(record.body).map_err(|e| format!("body: {e}"))?;
    Ok(Message {
        id: entry.id.into(),
        role: entry.role,
        content: body.content,
        timestamp_ms: record.timestamp_ms,
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

    fn element(record: ScalarValue) -> hydrate::Map {
        hydrate::Map::from(std::collections::HashMap::from([(
            KEY_RECORD,
            hydrate::Value::Scalar(record),
        )]))
    }

    #[test]
    fn uuid_ids_are_stored_as_bytes_and_read_back_exactly() {
        for id in [
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "r:0f8fad5b-d9cb-469f-a165-70867728950e",
            "prefix with ünïcode:0f8fad5b-d9cb-469f-a165-70867728950e",
        ] {
            let stored = StoredId::new(id);
            assert!(matches!(&stored, StoredId::Uuid(p, _) if p.len() == id.len() - UUID_CHARS));
            assert_eq!(stored.to_id(), id);
        }
        for id in [
            "0F8FAD5B-D9CB-469F-A165-70867728950E",
            "0f8fad5b-d9cb-469f-a165-70867728950",
            "0f8fad5bxd9cb-469f-a165-70867728950e",
            "0f8fad5b-d9cb-469f-a165-70867728950g",
            "m1",
            "ü",
        ] {
            assert_eq!(StoredId::new(id), StoredId::Text(id), "{id}");
            assert_eq!(StoredId::new(id).to_id(), id);
        }
    }

    #[test]
    fn a_record_round_trips_and_its_index_view_skips_the_body() {
        let mut m = Message::user_text("0f8fad5b-d9cb-469f-a165-70867728950e", "hello", 1_700);
        m.idempotency_key = Some("key-1".into());
        m.reply_to = vec!["u1".into(), "r:0f8fad5b-d9cb-469f-a165-70867728950e".into()];
        m.partial = true;
        let encoded = Encoded::new(&m).unwrap_or_else(|e| panic!("{e}"));
        let map = element(ScalarValue::Bytes(encoded.record.clone()));
        let (bytes, conflict) = record_of(&map).unwrap_or_else(|e| panic!("{e}"));
        assert!(!conflict);
        assert_eq!(message_from_bytes(bytes), Ok(m.clone()));
        assert_eq!(Entry::from_bytes(bytes), Ok(encoded.entry()));
        assert_eq!(Entry::from_bytes(bytes).map(|e| e.timestamp_ms), Ok(1_700));
    }

    #[test]
    fn concurrent_records_resolve_to_the_final_message_then_the_last_value() {
        let mut partial = Message::text("r:1", Role::Assistant, "part", 1);
        partial.partial = true;
        let final_reply = Message::text("r:1", Role::Assistant, "whole", 2);
        let enc = |m: &Message| Encoded::new(m).unwrap_or_else(|e| panic!("{e}")).record;
        let (p, f) = (enc(&partial), enc(&final_reply));
        let junk: &[u8] = &[9, 9];
        assert_eq!(pick_record(&[&f, &p]), Some(f.as_slice()));
        assert_eq!(pick_record(&[&p, &f]), Some(f.as_slice()));
        assert_eq!(pick_record(&[&p, junk]), Some(p.as_slice()));
        assert_eq!(pick_record(&[junk]), Some(junk));
        assert_eq!(pick_record(&[]), None);
    }

    #[test]
    fn malformed_records_are_named_not_panicked_on() {
        let cases: [(&[u8], &str); 3] = [
            (&[], "empty record"),
            (&[9, 1, 2], "record version 9 is not supported"),
            (&[RECORD_VERSION, 0xff, 0xff], "record does not decode"),
        ];
        for (bytes, expected) in cases {
            let map = element(ScalarValue::Bytes(bytes.to_vec()));
            let err = record_of(&map)
                .and_then(|(bytes, _)| Entry::from_bytes(bytes))
                .expect_err("malformed");
            assert!(err.starts_with(expected), "{err}");
        }
        let map = hydrate::Map::from(std::collections::HashMap::from([(
            "i",
            hydrate::Value::Scalar(ScalarValue::from("old layout")),
        )]));
        assert_eq!(record_of(&map).err(), Some("no record".to_owned()));
    }
}
