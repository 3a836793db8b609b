//! Message ids derived from pi entry ids, and back.
//!
//! An imported message's id names the entry it came from, so that a second import of the same
//! transcript finds every message already present (the document ignores an id it holds), and an
//! export gives each message its original entry id back.

use super::ENTRY_ID_BYTES_MAX;
use sha2::{Digest, Sha256};
use std::collections::HashSet;

/// Prefix of every message id derived from a pi entry.
pub const MESSAGE_ID_PREFIX: &str = "pi:";

/// Hex digits of an entry id made for a message that did not come from pi (as pi makes them).
pub const EXPORT_ENTRY_ID_HEX_CHARS: usize = 8;

/// Which pi entry a message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A `message` entry (user, assistant, toolResult): `pi:<entryId>`.
    Message,
    /// A `compaction` entry's summary: `pi:compaction:<entryId>`.
    Compaction,
    /// A `branch_summary` entry: `pi:branch_summary:<entryId>`.
    BranchSummary,
    /// A `custom_message` entry, or a message with role `custom`: `pi:custom_message:<entryId>`.
    CustomMessage,
    /// An empty assistant reply synthesized for a user message that had none:
    /// `pi:noreply:<entryId of the user message>`. Not an entry of the transcript.
    NoReply,
}

impl EntryKind {
    fn tag(self) -> Option<&'static str> {
        match self {
            EntryKind::Message => None,
            EntryKind::Compaction => Some("compaction"),
            EntryKind::BranchSummary => Some("branch_summary"),
            EntryKind::CustomMessage => Some("custom_message"),
            EntryKind::NoReply => Some("noreply"),
        }
    }

    const TAGGED: [EntryKind; 4] = [
        EntryKind::Compaction,
        EntryKind::BranchSummary,
        EntryKind::CustomMessage,
        EntryKind::NoReply,
    ];
}

/// Whether `id` can be a pi entry id here: 1 to [`ENTRY_ID_BYTES_MAX`] characters of
/// `[A-Za-z0-9_-]` (pi writes 8 hex digits, or a UUID). Keeping `:` out is what makes the
/// derived message ids unambiguous.
pub fn is_valid_entry_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ENTRY_ID_BYTES_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The message id for the entry `entry_id` (which must satisfy [`is_valid_entry_id`]).
pub fn message_id(kind: EntryKind, entry_id: &str) -> String {
    match kind.tag() {
        None => format!("{MESSAGE_ID_PREFIX}{entry_id}"),
        Some(tag) => format!("{MESSAGE_ID_PREFIX}{tag}:{entry_id}"),
    }
}

/// The entry a message id was derived from, if it was.
pub fn parse_message_id(id: &str) -> Option<(EntryKind, &str)> {
    let rest = id.strip_prefix(MESSAGE_ID_PREFIX)?;
    if is_valid_entry_id(rest) {
        return Some((EntryKind::Message, rest));
    }
    let (tag, entry_id) = rest.split_once(':')?;
    let kind = EntryKind::TAGGED.into_iter().find(|k| k.tag() == Some(tag))?;
    is_valid_entry_id(entry_id).then_some((kind, entry_id))
}

/// Entry ids for an exported file: the original id for every message imported from pi, and a
/// short hash for the others, never the same id twice in one file.
#[derive(Debug, Default)]
pub struct EntryIds {
    used: HashSet<String>,
}

impl EntryIds {
    /// Claims the original entry ids first, so that a made-up id never takes one.
    pub fn reserve<'a>(&mut self, message_ids: impl IntoIterator<Item = &'a str>) {
        for id in message_ids {
            if let Some((kind, entry_id)) = parse_message_id(id)
                && kind != EntryKind::NoReply
            {
                self.used.insert(entry_id.to_owned());
            }
        }
    }

    /// The entry id for the message `message_id`; `part` tells apart the several entries one
    /// message may become (0 for the first).
    pub fn assign(&mut self, message_id: &str, part: usize) -> String {
        if part == 0
            && let Some((kind, entry_id)) = parse_message_id(message_id)
            && kind != EntryKind::NoReply
        {
            // Reserved by `reserve`; a message id appears once per document.
            return entry_id.to_owned();
        }
        let mut attempt = 0u64;
        loop {
            let mut hasher = Sha256::new();
            hasher.update(message_id.as_bytes());
            hasher.update(part.to_le_bytes());
            hasher.update(attempt.to_le_bytes());
            let digest = hex::encode(hasher.finalize());
            let id = digest[..EXPORT_ENTRY_ID_HEX_CHARS].to_owned();
            if self.used.insert(id.clone()) {
                return id;
            }
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_round_trip_for_every_kind() {
        for kind in [EntryKind::Message].into_iter().chain(EntryKind::TAGGED) {
            let id = message_id(kind, "a1b2c3d4");
            assert_eq!(parse_message_id(&id), Some((kind, "a1b2c3d4")), "{id}");
        }
        assert_eq!(message_id(EntryKind::Compaction, "x"), "pi:compaction:x");
    }

    #[test]
    fn ids_not_derived_from_pi_are_not_parsed() {
        for id in
            ["r:0f1e", "6c1f0000-0000-4000-8000-000000000000", "pi:", "pi:nope:ab", "pi:a:b:c"]
        {
            assert_eq!(parse_message_id(id), None, "{id}");
        }
    }

    #[test]
    fn entry_ids_allow_pi_ids_and_refuse_separators_and_long_ids() {
        assert!(is_valid_entry_id("a1b2c3d4"));
        assert!(is_valid_entry_id("6c1f0000-0000-4000-8000-000000000000"));
        assert!(!is_valid_entry_id(""));
        assert!(!is_valid_entry_id("a:b"));
        assert!(!is_valid_entry_id("a b"));
        assert!(!is_valid_entry_id(&"a".repeat(ENTRY_ID_BYTES_MAX + 1)));
    }

    #[test]
    fn exported_ids_keep_pi_ids_and_never_collide() {
        let messages = ["pi:aaaaaaaa", "r:run-1", "pi:noreply:aaaaaaaa", "u-2"];
        let mut ids = EntryIds::default();
        ids.reserve(messages);
        let assigned: Vec<String> = messages.iter().map(|m| ids.assign(m, 0)).collect();
        assert_eq!(assigned[0], "aaaaaaaa");
        let unique: HashSet<&String> = assigned.iter().collect();
        assert_eq!(unique.len(), assigned.len());
        for id in &assigned[1..] {
            assert_eq!(id.len(), EXPORT_ENTRY_ID_HEX_CHARS);
        }
        // Deterministic: the same messages get the same ids.
        let mut again = EntryIds::default();
        again.reserve(messages);
        assert_eq!(again.assign("r:run-1", 0), assigned[1]);
    }

    #[test]
    fn a_hash_that_hits_a_reserved_id_moves_on() {
        let mut ids = EntryIds::default();
        let first = ids.assign("m", 0);
        let mut other = EntryIds::default();
        other.reserve([format!("pi:{first}").as_str()]);
        let second = other.assign("m", 0);
        assert_ne!(first, second);
    }
}
