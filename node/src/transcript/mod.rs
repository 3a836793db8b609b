//! OpenClaw's session files as an import and export format: the pi transcript JSONL
//! (OPENCLAW.md §3) and the `sessions.json` SessionEntry, converted to and from the session
//! document's [`Message`](beamclaw_crdt::Message) and [`MetaPatch`](beamclaw_crdt::MetaPatch).
//!
//! Owns: reading a transcript (header, the entry tree, the active branch, message shapes),
//! writing one, the mapping of pi entry ids to message ids, and reading a SessionEntry.
//! Must not know: files, the store, the mesh. Everything here takes bytes or values and returns
//! values; `cli::sessions` does the I/O. Input is untrusted: every problem is an [`Issue`] naming
//! the file and the line, never a panic.
//!
//! # Import rules
//!
//! - **Active branch.** A transcript is a tree (`id`/`parentId`). What is imported is the path
//!   from the last entry of the file (pi's leaf) back to the root, in root-to-leaf order.
//!   Entries on other branches are not imported (a [`Severity::Note`] says how many).
//! - **Damaged lines.** A line that does not parse is skipped and reported. Its `id` and
//!   `parentId`, which pi writes at the start of the line, are salvaged when they can be read,
//!   so the tree keeps its shape and the walk passes through the damaged entry. When an entry's
//!   parent is missing all the same (its line is unreadable from the start, or the file was
//!   edited), the walk goes on from the entry on the line before it. Either way a damaged line
//!   loses only itself.
//! - **Message ids** are derived from the pi entry id, so importing twice appends nothing new
//!   ([`ids`]): `pi:<entryId>` for user, assistant and toolResult messages;
//!   `pi:compaction:<entryId>`, `pi:branch_summary:<entryId>`, `pi:custom_message:<entryId>` for
//!   the entries that become system messages; `pi:noreply:<entryId>` for a synthesized reply.
//! - **Compaction.** Every message of the active branch is kept (also those the summary
//!   replaced in the model's context). The summary becomes a system message placed just before
//!   the first kept message (`firstKeptEntryId`), so that the document's order is the order of
//!   pi's context: summary, kept messages, later messages. Exporting writes it back as a
//!   `compaction` entry whose `firstKeptEntryId` is the entry after it, which gives OpenClaw the
//!   same context. `tokensBefore` and `details` are not kept.
//! - **Branch summaries and custom messages** (`branch_summary`, `custom_message`, and messages
//!   with role `custom`/`hookMessage`) enter pi's context, so they become system messages;
//!   `customType`, `display` and `details` are not kept. `custom`, `label` and `model_change`
//!   entries carry no conversation and are not imported; the latest `session_info` name and
//!   `thinking_level_change` on the branch are used when sessions.json has no display name or
//!   thinking level. Other entry types and message roles (`bashExecution`) are skipped and
//!   reported.
//! - **Replies.** The session document restarts a turn for any user message that no assistant
//!   message lists in `reply_to` (failover). History is not a turn to run, so every imported
//!   user message is listed: by the first assistant message after it, or, when none follows
//!   (OpenClaw stopped mid-turn), by the last one before it; when there is none at all, an empty
//!   assistant message with stop reason `aborted` (what pi writes for an aborted turn) is
//!   synthesized after it.
//! - **Content.** Text, thinking (with `thinkingSignature`), tool calls, tool results and images
//!   (kept as `data:` URLs) map one to one. A tool result's text blocks are joined with a
//!   newline into the tool result part; its images follow as image parts. Tool result `details`
//!   and an assistant's `errorMessage`, `api` and cost are not kept.
//!
//! # Export rules
//!
//! One entry per message, each the child of the previous one (a single branch), the header's id
//! being the current session id. Imported messages get their pi entry id back; other messages an
//! id made of 8 hex digits of SHA-256 of the message id (collisions are resolved within the file).
//! See [`write`] for the per-role shapes.

pub mod entry;
pub mod ids;
pub mod read;
pub mod write;

use std::fmt;
use std::path::{Path, PathBuf};

pub use entry::{SessionSettings, patch_changes, read_session_entry};
pub use read::{Transcript, TranscriptHeader, parse_transcript};
pub use write::{ExportSession, write_transcript};

/// Largest transcript file read, in bytes. The file is held in memory while its active branch
/// is converted (about four times this at the peak, with the converted messages and the
/// document); a transcript this large is years of heavy use.
pub const TRANSCRIPT_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Longest transcript line parsed, in bytes. A stored message body is at most
/// `MESSAGE_BODY_BYTES_MAX` (4 MiB); JSON escaping of that can nearly double it.
pub const TRANSCRIPT_LINE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Most entries read from one transcript; the rest of the file is skipped and reported.
pub const TRANSCRIPT_ENTRIES_MAX: usize = 1_000_000;

/// Largest `sessions.json` read, in bytes (OpenClaw's maintenance keeps 500 entries).
pub const SESSIONS_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Longest pi entry id accepted, in bytes. pi writes 8 hex digits (a UUID on collision).
pub const ENTRY_ID_BYTES_MAX: usize = 64;

/// The transcript format version written, and the newest one read as is.
pub const TRANSCRIPT_VERSION: u64 = 3;

/// The oldest transcript version read: version 1 files have no entry ids (pi migrates them
/// when it opens them).
pub const TRANSCRIPT_VERSION_MIN: u64 = 2;

/// How much an issue matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Something was not imported: a line, a content part, a session. The import exits non-zero.
    Skipped,
    /// Imported, but worth knowing (a bridged parent, abandoned branches, a field ignored).
    Note,
}

/// One problem found in an input file: `file:line: reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Issue {
    pub file: PathBuf,
    /// 1-based line number, when the problem is on one line.
    pub line: Option<usize>,
    pub severity: Severity,
    pub reason: IssueReason,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

impl Issue {
    pub(crate) fn skipped(file: &Path, line: Option<usize>, reason: IssueReason) -> Issue {
        Issue { file: file.to_path_buf(), line, severity: Severity::Skipped, reason }
    }

    pub(crate) fn note(file: &Path, line: Option<usize>, reason: IssueReason) -> Issue {
        Issue { file: file.to_path_buf(), line, severity: Severity::Note, reason }
    }
}

/// What was wrong, and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssueReason {
    #[error("the file is {len} bytes; at most {max} are read")]
    FileTooLarge { len: u64, max: u64 },
    #[error("cannot read the file: {0}")]
    Unreadable(String),
    #[error("the file is empty (a transcript starts with a session header line)")]
    Empty,
    #[error("not a transcript header: {reason} (expected {{\"type\":\"session\",\"id\":...}})")]
    BadHeader { reason: String },
    #[error(
        "transcript version {version} is not supported (versions {TRANSCRIPT_VERSION_MIN} to \
         {TRANSCRIPT_VERSION}); open the session once with OpenClaw, which migrates it"
    )]
    UnsupportedVersion { version: u64 },
    #[error(
        "transcript version {version} is newer than {TRANSCRIPT_VERSION}; read as {TRANSCRIPT_VERSION}"
    )]
    NewerVersion { version: u64 },
    #[error("the header's id {header:?} is not the session id {expected:?} of sessions.json")]
    HeaderIdMismatch { header: String, expected: String },
    #[error("line is {len} bytes; at most {max} are read", max = TRANSCRIPT_LINE_BYTES_MAX)]
    LineTooLong { len: usize },
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("not a transcript entry: {0}")]
    BadEntry(String),
    #[error(
        "entry id {id:?} is not allowed: 1 to {max} characters of A-Z, a-z, 0-9, '-' and '_'",
        max = ENTRY_ID_BYTES_MAX
    )]
    BadEntryId { id: String },
    #[error("entry id {id:?} was already used on line {first_line}")]
    DuplicateEntryId { id: String, first_line: usize },
    #[error("more than {max} entries; the rest of the file is not read", max = TRANSCRIPT_ENTRIES_MAX)]
    TooManyEntries,
    #[error("parent {parent:?} is missing; linked to the entry on the line before")]
    ParentMissing { parent: String },
    #[error("parent {parent:?} is missing and no entry precedes this one; the branch starts here")]
    ParentMissingAtStart { parent: String },
    #[error("parent links loop back to entry {id:?}; the branch starts after it")]
    ParentCycle { id: String },
    #[error("{count} entries on other branches than the active one were not imported")]
    OffBranch { count: usize },
    #[error("entry type {kind:?} is not known")]
    UnknownEntryType { kind: String },
    #[error("message role {role:?} is not supported (user, assistant, toolResult, custom)")]
    UnsupportedRole { role: String },
    #[error("{field}: {problem}")]
    BadField { field: String, problem: String },
    #[error("content part type {kind:?} is not supported; the part was dropped")]
    UnsupportedPart { kind: String },
    #[error("stop reason {value:?} is not known; left out")]
    UnknownStopReason { value: String },
    #[error("{field} ignored: {problem}")]
    FieldIgnored { field: String, problem: String },
    #[error("session {key:?}: {problem}")]
    Session { key: String, problem: String },
    #[error(
        "messages from here on were added at the end of the session, after {present} messages \
         that follow them in the transcript and were imported before"
    )]
    OutOfPlace { present: usize },
    #[error("message not stored: {0}")]
    NotStored(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issue_reads_file_colon_line_colon_reason() {
        let issue =
            Issue::skipped(Path::new("a/b.jsonl"), Some(7), IssueReason::InvalidJson("eof".into()));
        assert_eq!(issue.to_string(), "a/b.jsonl:7: invalid JSON: eof");
        let issue = Issue::note(Path::new("s.json"), None, IssueReason::OffBranch { count: 2 });
        assert_eq!(
            issue.to_string(),
            "s.json: 2 entries on other branches than the active one were not imported"
        );
    }
}
