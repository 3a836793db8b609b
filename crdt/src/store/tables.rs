//! The on-disk layout: every redb table of the store, how its keys are encoded, and the format
//! version checked at open.
//!
//! Keys are redb tuples, compared element by element, so every row of one session is contiguous
//! and a session (or one part of it) is a single range scan:
//!
//! | table | key | value |
//! |---|---|---|
//! | `format` | `"version"` | `u32` ([`FORMAT_VERSION`]) |
//! | `chunks` | (session key, part, sequence) | incremental Automerge bytes |
//! | `snapshots` | (session key, part) | a whole-part `save()` |
//! | `parts` | (session key, part) | (last sequence in the snapshot, chunk count, chunk bytes) |
//! | `counters` | `"chunk_seq_next"` | the next chunk sequence number (unique store-wide) |
//! | `index` | session key | (updatedAt ms, postcard `IndexEntry`) |
//! | `index_by_updated` | (updatedAt ms, session key) | `()` |
//! | `sync_states` | (peer id, session key) | encoded Automerge sync state |
//! | `node_meta` | name | bytes |
//! | `quarantine` | session key | postcard `QuarantineRecord` |
//!
//! A part is encoded as one tag byte (0 manifest, 1 segment), then for a segment the session id
//! (u32 big-endian length, then its UTF-8 bytes) and the segment index (u32 big-endian), so the
//! segments of one transcript sort by index. A part that fails to decode is corruption and
//! quarantines its session.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::types::PartId;

/// The on-disk format this build reads and writes. Bump it when a table's key or value encoding
/// changes; a store written by another version is refused at open with a typed error.
/// 2: documents of format 2 (a message is one record value); a store of format 1 is refused.
/// 3: documents of format 3 (token counters per segment).
pub(crate) const FORMAT_VERSION: u32 = 3;
pub(crate) const FORMAT_VERSION_KEY: &str = "version";

pub(crate) const FORMAT: TableDefinition<&str, u32> = TableDefinition::new("format");
pub(crate) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
pub(crate) const CHUNK_SEQ_NEXT_KEY: &str = "chunk_seq_next";
pub(crate) const CHUNKS: TableDefinition<(&str, &[u8], u64), &[u8]> =
    TableDefinition::new("chunks");
pub(crate) const SNAPSHOTS: TableDefinition<(&str, &[u8]), &[u8]> =
    TableDefinition::new("snapshots");
pub(crate) const PARTS: TableDefinition<(&str, &[u8]), (u64, u64, u64)> =
    TableDefinition::new("parts");
pub(crate) const INDEX: TableDefinition<&str, (i64, &[u8])> = TableDefinition::new("index");
pub(crate) const BY_UPDATED: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("index_by_updated");
pub(crate) const SYNC_STATES: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("sync_states");
pub(crate) const NODE_META: TableDefinition<&str, &[u8]> = TableDefinition::new("node_meta");
pub(crate) const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");

/// Bookkeeping of one part: which chunks its snapshot already holds, and how many chunks (and
/// bytes) wait to be compacted. Chunk sequence numbers come from one store-wide counter and are
/// never reused, so a compaction deletes exactly the chunks it folded even if more arrived, or
/// the session was deleted and re-created, meanwhile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PartState {
    /// Sequence number of the last chunk folded into the snapshot; 0 when there is none.
    pub(crate) snapshot_through: u64,
    pub(crate) chunk_count: u64,
    pub(crate) chunk_bytes: u64,
}

impl PartState {
    pub(crate) fn from_row(row: (u64, u64, u64)) -> Self {
        let (snapshot_through, chunk_count, chunk_bytes) = row;
        Self { snapshot_through, chunk_count, chunk_bytes }
    }

    pub(crate) fn to_row(self) -> (u64, u64, u64) {
        (self.snapshot_through, self.chunk_count, self.chunk_bytes)
    }
}

/// Why a session was quarantined, as recorded in the `quarantine` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    /// The part that failed to load, when one part could be named.
    pub part: Option<PartId>,
    pub reason: String,
}

const PART_TAG_MANIFEST: u8 = 0;
const PART_TAG_SEGMENT: u8 = 1;

/// Why the bytes of a part key are not a part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PartDecodeError {
    #[error("part key is empty")]
    Empty,
    #[error("part key has unknown tag {0}")]
    UnknownTag(u8),
    #[error("part key is {len} bytes, which does not match its layout")]
    BadLength { len: usize },
    #[error("segment session id is not UTF-8")]
    NotUtf8,
}

pub(crate) fn encode_part(part: &PartId) -> Vec<u8> {
    match part {
        PartId::Manifest => vec![PART_TAG_MANIFEST],
        PartId::Segment { session_id, index } => {
            let mut bytes = Vec::with_capacity(1 + 4 + session_id.len() + 4);
            bytes.push(PART_TAG_SEGMENT);
            // Session ids are bounded far below 4 GiB by the session document; saturating keeps
            // the encoding total, and the decoder then refuses the mismatched length.
            let len = u32::try_from(session_id.len()).unwrap_or(u32::MAX);
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(session_id.as_bytes());
            bytes.extend_from_slice(&index.to_be_bytes());
            bytes
        }
    }
}

pub(crate) fn decode_part(bytes: &[u8]) -> Result<PartId, PartDecodeError> {
    let bad_length = || PartDecodeError::BadLength { len: bytes.len() };
    let (&tag, rest) = bytes.split_first().ok_or(PartDecodeError::Empty)?;
    match tag {
        PART_TAG_MANIFEST if rest.is_empty() => Ok(PartId::Manifest),
        PART_TAG_MANIFEST => Err(bad_length()),
        PART_TAG_SEGMENT => {
            let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(bad_length)?;
            let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| bad_length())?;
            if rest.len() != len.saturating_add(4) {
                return Err(bad_length());
            }
            let (id, index) = rest.split_at(len);
            let index: [u8; 4] = index.try_into().map_err(|_| bad_length())?;
            let session_id = std::str::from_utf8(id).map_err(|_| PartDecodeError::NotUtf8)?;
            Ok(PartId::Segment {
                session_id: session_id.to_owned(),
                index: u32::from_be_bytes(index),
            })
        }
        other => Err(PartDecodeError::UnknownTag(other)),
    }
}

/// The smallest string greater than `key` and every `key`-prefixed string: session keys never
/// contain NUL (control characters are refused), so `key + "\0"` is an exclusive upper bound
/// for the rows of exactly this session.
pub(crate) fn key_upper_bound(key: &str) -> String {
    let mut upper = String::with_capacity(key.len() + 1);
    upper.push_str(key);
    upper.push('\0');
    upper
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_through_their_key_encoding() {
        for part in [PartId::Manifest, PartId::Segment { session_id: "0b6f".into(), index: 7 }] {
            assert_eq!(decode_part(&encode_part(&part)), Ok(part));
        }
    }

    #[test]
    fn malformed_part_keys_are_refused_with_the_reason() {
        assert_eq!(decode_part(&[]), Err(PartDecodeError::Empty));
        assert_eq!(decode_part(&[9]), Err(PartDecodeError::UnknownTag(9)));
        assert_eq!(decode_part(&[0, 0]), Err(PartDecodeError::BadLength { len: 2 }));
        assert_eq!(decode_part(&[1, 0, 0, 0, 5, b'a']), Err(PartDecodeError::BadLength { len: 6 }));
        assert_eq!(decode_part(&[1, 0, 0, 0, 1, 0xff, 0, 0, 0, 0]), Err(PartDecodeError::NotUtf8));
    }

    #[test]
    fn segments_of_one_transcript_sort_by_index() {
        let segment = |index| encode_part(&PartId::Segment { session_id: "s".into(), index });
        assert!(encode_part(&PartId::Manifest) < segment(0));
        assert!(segment(1) < segment(2) && segment(2) < segment(256));
    }

    #[test]
    fn key_upper_bound_separates_a_key_from_its_extensions() {
        let upper = key_upper_bound("agent:main:a");
        assert!("agent:main:a" < upper.as_str());
        assert!(upper.as_str() < "agent:main:a:thread");
        assert!(upper.as_str() < "agent:main:ab");
    }
}
