//! Reading a pi transcript: the header, the entry tree, the active branch, and each entry on it
//! converted to a [`Message`]. The import rules are in the module doc of [`super`].
//!
//! Two passes over the bytes keep memory flat in the number of entries: the first reads only
//! `type`, `id` and `parentId` of every line to build the tree; the second parses in full only
//! the lines on the active branch.

use super::ids::{EntryKind, is_valid_entry_id, message_id};
use super::{
    Issue, IssueReason, Severity, TRANSCRIPT_ENTRIES_MAX, TRANSCRIPT_LINE_BYTES_MAX,
    TRANSCRIPT_VERSION, TRANSCRIPT_VERSION_MIN,
};
use beamclaw_crdt::doc::REPLY_TO_COUNT_MAX;
use beamclaw_crdt::{ContentPart, Message, Role, StopReason, Usage};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

/// The author recorded on imported messages (the document otherwise records a node id).
pub const IMPORT_AUTHOR: &str = "openclaw-import";

/// The first line of a transcript.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranscriptHeader {
    /// The session id (a UUID); the file is named after it.
    pub id: String,
    pub version: u64,
    /// Milliseconds since the Unix epoch, when the header has a valid `timestamp`.
    pub timestamp_ms: Option<i64>,
}

/// One message of the active branch, with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedMessage {
    pub message: Message,
    /// The 1-based line of its entry.
    pub line: usize,
    /// Bytes of its entry's line: what the import counts to split very large sessions into
    /// several commits.
    pub source_bytes: usize,
}

/// A transcript as imported: its active branch as messages, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Transcript {
    pub header: TranscriptHeader,
    pub messages: Vec<ImportedMessage>,
    /// The latest `session_info` name on the branch.
    pub session_name: Option<String>,
    /// The latest `thinking_level_change` on the branch.
    pub thinking_level: Option<String>,
    /// `compaction` entries on the branch.
    pub compactions: u64,
    /// Everything skipped or worth a note, in line order.
    pub issues: Vec<Issue>,
}

impl Transcript {
    /// Whether anything of the file was not imported.
    pub fn skipped(&self) -> usize {
        self.issues.iter().filter(|i| i.severity == Severity::Skipped).count()
    }
}

/// The tree facts of one entry (the first pass).
#[derive(Debug)]
struct Node {
    line: usize,
    bytes: Range<usize>,
    id: String,
    parent: Option<String>,
    /// A line that could not be read, whose `id` and `parentId` were salvaged
    /// ([`salvage_links`]): the walk passes through it, nothing of it is imported (it was
    /// reported as skipped).
    damaged: bool,
}

/// Bytes at the start of a damaged line searched for its `id` and `parentId`; pi writes them
/// right after `type`, before the message.
pub const SALVAGE_SCAN_BYTES: usize = 512;

/// The quoted string value of `"field":"..."` at its first occurrence in `text`, or `None` for
/// `"field":null`; the outer `None` when the field is not there (or its value is not a plain
/// string without escapes).
fn raw_field<'t>(text: &'t str, field: &str) -> Option<Option<&'t str>> {
    let needle = format!("\"{field}\":");
    let at = text.find(&needle)? + needle.len();
    let rest = text[at..].trim_start();
    if rest.starts_with("null") {
        return Some(None);
    }
    let value = rest.strip_prefix('"')?;
    let end = value.find(['"', '\\'])?;
    (value.as_bytes()[end] == b'"').then_some(Some(&value[..end]))
}

/// The `id` and `parentId` of a line that does not parse (cut short, a bad byte in its message),
/// when they can still be read from its start: so that a damaged entry on the active branch does
/// not cut the branch (its children name it as their parent).
fn salvage_links(bytes: &[u8]) -> Option<(String, Option<String>)> {
    let head = &bytes[..bytes.len().min(SALVAGE_SCAN_BYTES)];
    let text = match std::str::from_utf8(head) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).ok()?,
    };
    let id = raw_field(text, "id")??;
    if !is_valid_entry_id(id) {
        return None;
    }
    let parent = raw_field(text, "parentId")?;
    if parent.is_some_and(|p| !is_valid_entry_id(p)) {
        return None;
    }
    Some((id.to_owned(), parent.map(str::to_owned)))
}

#[derive(Deserialize)]
struct EntryHead {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "parentId")]
    parent_id: Option<String>,
}

/// Lines of `bytes` as (1-based number, byte range without the line break), empty lines left out.
fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, Range<usize>)> + '_ {
    let mut start = 0;
    let mut number = 0;
    std::iter::from_fn(move || {
        while start < bytes.len() {
            number += 1;
            let end =
                bytes[start..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| start + p);
            let mut range = start..end;
            start = end + 1;
            if bytes[range.clone()].last() == Some(&b'\r') {
                range.end -= 1;
            }
            if !bytes[range.clone()].iter().all(u8::is_ascii_whitespace) {
                return Some((number, range));
            }
        }
        None
    })
}

/// A serde_json error without its "at line 1 column N" (the line is ours to name).
pub(crate) fn json_problem(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    match text.strip_suffix(&suffix) {
        Some(message) if error.column() > 0 => format!("{message} (column {})", error.column()),
        Some(message) => message.to_owned(),
        None => text,
    }
}

fn iso_ms(value: Option<&Value>) -> Option<i64> {
    let text = value?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
}

fn number_ms(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f.round() as i64)),
        Value::String(_) => iso_ms(value),
        _ => None,
    }
}

fn parse_header(file: &Path, bytes: &[u8], line: usize) -> Result<TranscriptHeader, Issue> {
    let bad = |reason: String| Issue::skipped(file, Some(line), IssueReason::BadHeader { reason });
    if bytes.len() > TRANSCRIPT_LINE_BYTES_MAX {
        return Err(bad(format!("the line is {} bytes", bytes.len())));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(json_problem(&e)))?;
    let Some(header) = value.as_object() else {
        return Err(bad("not a JSON object".to_owned()));
    };
    if header.get("type").and_then(Value::as_str) != Some("session") {
        return Err(bad("its type is not \"session\"".to_owned()));
    }
    let id = match header.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => return Err(bad("it has no id".to_owned())),
    };
    // pi wrote no version before version 2.
    let version = header.get("version").and_then(Value::as_u64).unwrap_or(1);
    if version < TRANSCRIPT_VERSION_MIN {
        return Err(Issue::skipped(file, Some(line), IssueReason::UnsupportedVersion { version }));
    }
    Ok(TranscriptHeader { id, version, timestamp_ms: iso_ms(header.get("timestamp")) })
}

/// Reads a transcript. `file` only names the file in issues. A file that cannot be read as a
/// transcript at all (no header, an unsupported version) is an `Err`; anything less is an issue
/// in the result and the rest is imported.
pub fn parse_transcript(file: &Path, bytes: &[u8]) -> Result<Transcript, Issue> {
    let mut all = lines(bytes);
    let Some((header_line, header_bytes)) = all.next() else {
        return Err(Issue::skipped(file, None, IssueReason::Empty));
    };
    let header = parse_header(file, &bytes[header_bytes], header_line)?;
    let mut issues = Vec::new();
    if header.version > TRANSCRIPT_VERSION {
        issues.push(Issue::note(
            file,
            Some(header_line),
            IssueReason::NewerVersion { version: header.version },
        ));
    }

    // First pass: the tree.
    let mut nodes: Vec<Node> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for (line, range) in all {
        let skip = |reason| Issue::skipped(file, Some(line), reason);
        if nodes.len() == TRANSCRIPT_ENTRIES_MAX {
            issues.push(skip(IssueReason::TooManyEntries));
            break;
        }
        // A line that cannot be read keeps its place in the tree when its links can be read.
        let mut damaged = |reason, nodes: &mut Vec<Node>| {
            issues.push(skip(reason));
            if let Some((id, parent)) = salvage_links(&bytes[range.clone()])
                && !by_id.contains_key(&id)
            {
                by_id.insert(id.clone(), nodes.len());
                nodes.push(Node { line, bytes: range.clone(), id, parent, damaged: true });
            }
        };
        if range.len() > TRANSCRIPT_LINE_BYTES_MAX {
            damaged(IssueReason::LineTooLong { len: range.len() }, &mut nodes);
            continue;
        }
        let head: EntryHead = match serde_json::from_slice(&bytes[range.clone()]) {
            Ok(head) => head,
            Err(e) if e.is_data() => {
                damaged(IssueReason::BadEntry(json_problem(&e)), &mut nodes);
                continue;
            }
            Err(e) => {
                damaged(IssueReason::InvalidJson(json_problem(&e)), &mut nodes);
                continue;
            }
        };
        let Some(id) = head.id else {
            let problem = format!("a {:?} entry without an id", head.kind);
            issues.push(skip(IssueReason::BadEntry(problem)));
            continue;
        };
        if head.kind == "session" {
            issues.push(skip(IssueReason::BadEntry("a second session header".to_owned())));
            continue;
        }
        if !is_valid_entry_id(&id) {
            issues.push(skip(IssueReason::BadEntryId { id }));
            continue;
        }
        if let Some(&first) = by_id.get(&id) {
            let first_line = nodes[first].line;
            issues.push(skip(IssueReason::DuplicateEntryId { id, first_line }));
            continue;
        }
        by_id.insert(id.clone(), nodes.len());
        nodes.push(Node { line, bytes: range, id, parent: head.parent_id, damaged: false });
    }

    let path = active_branch(file, &nodes, &by_id, &mut issues);
    let damaged = nodes.iter().filter(|n| n.damaged).count();
    let damaged_on_path = path.iter().filter(|&&i| nodes[i].damaged).count();
    let off_branch = (nodes.len() - damaged) - (path.len() - damaged_on_path);
    if off_branch > 0 {
        issues.push(Issue::note(file, None, IssueReason::OffBranch { count: off_branch }));
    }

    // Second pass: the entries on the branch.
    let mut convert = Converter::new(file, &header, &mut issues);
    for (pos, &index) in path.iter().enumerate() {
        let node = &nodes[index];
        if !node.damaged {
            convert.entry(pos, node, &bytes[node.bytes.clone()]);
        }
    }
    let Converter { pieces, session_name, thinking_level, compactions, .. } = convert;
    let path_pos: HashMap<&str, usize> =
        path.iter().enumerate().map(|(pos, &i)| (nodes[i].id.as_str(), pos)).collect();
    let messages = attribute_replies(order(pieces, &path_pos));

    issues.sort_by_key(|issue| issue.line.unwrap_or(usize::MAX));
    Ok(Transcript { header, messages, session_name, thinking_level, compactions, issues })
}

/// The path from the last entry (pi's leaf) to the root, root first.
fn active_branch(
    file: &Path,
    nodes: &[Node],
    by_id: &HashMap<String, usize>,
    issues: &mut Vec<Issue>,
) -> Vec<usize> {
    let mut path = Vec::new();
    let mut seen = vec![false; nodes.len()];
    let mut current = nodes.len().checked_sub(1);
    while let Some(index) = current {
        let node = &nodes[index];
        if seen[index] {
            let reason = IssueReason::ParentCycle { id: node.id.clone() };
            issues.push(Issue::note(file, Some(node.line), reason));
            break;
        }
        seen[index] = true;
        path.push(index);
        current = match &node.parent {
            None => None,
            Some(parent) => match by_id.get(parent) {
                Some(&parent_index) => Some(parent_index),
                // The parent's line was damaged (or the file edited): bridge to the entry on
                // the line before, so that one bad line loses only itself.
                None if index > 0 => {
                    let reason = IssueReason::ParentMissing { parent: parent.clone() };
                    issues.push(Issue::note(file, Some(node.line), reason));
                    Some(index - 1)
                }
                None => {
                    let reason = IssueReason::ParentMissingAtStart { parent: parent.clone() };
                    issues.push(Issue::note(file, Some(node.line), reason));
                    None
                }
            },
        };
    }
    path.reverse();
    path
}

/// A converted entry and its place on the branch.
struct Piece {
    imported: ImportedMessage,
    /// Position of its entry on the branch.
    pos: usize,
    /// For a compaction summary: the entry its kept messages start at.
    first_kept: Option<String>,
}

/// Orders the pieces as the document holds them: branch order, except that each compaction
/// summary goes just before its first kept message (the order of pi's context).
fn order(pieces: Vec<Piece>, path_pos: &HashMap<&str, usize>) -> Vec<ImportedMessage> {
    let mut keyed: Vec<((usize, u8, usize), ImportedMessage)> = pieces
        .into_iter()
        .map(|piece| {
            let key = match &piece.first_kept {
                None if piece.imported.message.role != Role::System => (piece.pos, 1, piece.pos),
                None => (piece.pos, 0, piece.pos),
                Some(kept) => {
                    let target = path_pos.get(kept.as_str()).copied().filter(|&p| p < piece.pos);
                    (target.unwrap_or(piece.pos), 0, piece.pos)
                }
            };
            (key, piece.imported)
        })
        .collect();
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().map(|(_, imported)| imported).collect()
}

/// Makes every user message answered (see the module doc): sets `reply_to` on assistant
/// messages and synthesizes an empty aborted reply where no assistant message can carry it.
fn attribute_replies(messages: Vec<ImportedMessage>) -> Vec<ImportedMessage> {
    let mut replies: Vec<Vec<usize>> = vec![Vec::new(); messages.len()];
    let mut pending: Vec<usize> = Vec::new();
    let mut last_assistant = None;
    for (index, imported) in messages.iter().enumerate() {
        match imported.message.role {
            Role::User => pending.push(index),
            Role::Assistant => {
                replies[index].append(&mut pending);
                last_assistant = Some(index);
            }
            Role::System | Role::ToolResult => {}
        }
    }
    if let Some(index) = last_assistant {
        replies[index].append(&mut pending);
    }
    // Groups of user messages that need a synthesized reply: all of them when there is no
    // assistant message at all (`pending` is left non-empty only then), and any overflow of a
    // reply that would list more than it may.
    let mut unanswered: Vec<Vec<usize>> = Vec::new();
    for users in &mut replies {
        if users.len() > REPLY_TO_COUNT_MAX {
            let overflow = users.split_off(REPLY_TO_COUNT_MAX);
            unanswered.extend(overflow.chunks(REPLY_TO_COUNT_MAX).map(<[usize]>::to_vec));
        }
    }
    unanswered.extend(pending.chunks(REPLY_TO_COUNT_MAX).map(<[usize]>::to_vec));

    let ids: Vec<String> = messages.iter().map(|m| m.message.id.clone()).collect();
    let mut after: HashMap<usize, Vec<ImportedMessage>> = HashMap::new();
    for users in unanswered {
        // Each synthesized reply goes right after the last user message it answers.
        let Some(&at) = users.last() else { continue };
        let user = &messages[at];
        let first = &ids[users[0]];
        let entry_id = super::ids::parse_message_id(first).map_or(first.as_str(), |(_, id)| id);
        let mut reply = Message::text(
            message_id(EntryKind::NoReply, entry_id),
            Role::Assistant,
            "",
            user.message.timestamp_ms,
        );
        reply.content.clear();
        reply.author = IMPORT_AUTHOR.to_owned();
        reply.stop_reason = Some(StopReason::Aborted);
        reply.reply_to = users.iter().map(|&u| ids[u].clone()).collect();
        after.entry(at).or_default().push(ImportedMessage {
            message: reply,
            line: user.line,
            source_bytes: 0,
        });
    }
    let mut out = Vec::with_capacity(messages.len() + after.len());
    for (index, mut imported) in messages.into_iter().enumerate() {
        imported.message.reply_to.extend(replies[index].iter().map(|&u| ids[u].clone()));
        out.push(imported);
        if let Some(extra) = after.remove(&index) {
            out.extend(extra);
        }
    }
    out
}

/// Converts the entries of the branch, one at a time.
struct Converter<'a> {
    file: &'a Path,
    version: u64,
    issues: &'a mut Vec<Issue>,
    /// Timestamp used for an entry that has none: the previous entry's, else the header's.
    last_ms: i64,
    pieces: Vec<Piece>,
    session_name: Option<String>,
    thinking_level: Option<String>,
    compactions: u64,
}

/// Why an entry on the branch was not converted.
type Skip = IssueReason;

fn bad(field: impl Into<String>, problem: impl Into<String>) -> Skip {
    IssueReason::BadField { field: field.into(), problem: problem.into() }
}

fn string_field<'v>(
    object: &'v Map<String, Value>,
    field: &str,
    at: &str,
) -> Result<&'v str, Skip> {
    object
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{at}{field}"), "must be a string"))
}

fn optional_string(object: &Map<String, Value>, field: &str) -> Option<String> {
    object.get(field).and_then(Value::as_str).map(str::to_owned)
}

impl<'a> Converter<'a> {
    fn new(file: &'a Path, header: &TranscriptHeader, issues: &'a mut Vec<Issue>) -> Self {
        Converter {
            file,
            version: header.version,
            issues,
            last_ms: header.timestamp_ms.unwrap_or(0),
            pieces: Vec::new(),
            session_name: None,
            thinking_level: None,
            compactions: 0,
        }
    }

    fn issue(&mut self, line: usize, severity: Severity, reason: IssueReason) {
        self.issues.push(Issue {
            file: self.file.to_path_buf(),
            line: Some(line),
            severity,
            reason,
        });
    }

    fn entry(&mut self, pos: usize, node: &Node, bytes: &[u8]) {
        let value: Value = match serde_json::from_slice(bytes) {
            Ok(value) => value,
            Err(e) => {
                // The first pass parsed this line; only memory could fail here.
                self.issue(
                    node.line,
                    Severity::Skipped,
                    IssueReason::InvalidJson(json_problem(&e)),
                );
                return;
            }
        };
        let Some(object) = value.as_object() else {
            self.issue(node.line, Severity::Skipped, IssueReason::BadEntry("not an object".into()));
            return;
        };
        let entry_ms = iso_ms(object.get("timestamp"));
        if let Err(reason) = self.convert(pos, node, object, entry_ms, bytes.len()) {
            self.issue(node.line, Severity::Skipped, reason);
        }
    }

    fn convert(
        &mut self,
        pos: usize,
        node: &Node,
        entry: &Map<String, Value>,
        entry_ms: Option<i64>,
        source_bytes: usize,
    ) -> Result<(), Skip> {
        let kind = entry.get("type").and_then(Value::as_str).unwrap_or_default();
        let system = |this: &mut Self, kind: EntryKind, content: Vec<ContentPart>, first_kept| {
            let ts = entry_ms.unwrap_or(this.last_ms);
            this.push(
                pos,
                node,
                Role::System,
                message_id(kind, &node.id),
                content,
                ts,
                source_bytes,
                first_kept,
            );
        };
        match kind {
            "message" => {
                let Some(message) = entry.get("message").and_then(Value::as_object) else {
                    return Err(bad("message", "must be an object"));
                };
                self.message(pos, node, message, entry_ms, source_bytes)?;
            }
            "compaction" => {
                let summary = string_field(entry, "summary", "")?;
                let first_kept = optional_string(entry, "firstKeptEntryId");
                self.compactions += 1;
                let content = vec![ContentPart::Text { text: summary.to_owned() }];
                system(self, EntryKind::Compaction, content, first_kept);
            }
            "branch_summary" => {
                let summary = string_field(entry, "summary", "")?;
                // pi leaves an empty summary out of the context.
                if !summary.is_empty() {
                    let content = vec![ContentPart::Text { text: summary.to_owned() }];
                    system(self, EntryKind::BranchSummary, content, None);
                }
            }
            "custom_message" => {
                let content = self.user_content(node.line, entry.get("content"), "content")?;
                system(self, EntryKind::CustomMessage, content, None);
            }
            "session_info" => {
                if let Some(name) = optional_string(entry, "name") {
                    self.session_name = Some(name);
                }
            }
            "thinking_level_change" => {
                if let Some(level) = optional_string(entry, "thinkingLevel") {
                    self.thinking_level = Some(level);
                }
            }
            // Extension state, bookmarks and model switches carry no conversation; the model
            // of every assistant message is on the message itself.
            "custom" | "label" | "model_change" => {}
            other => return Err(IssueReason::UnknownEntryType { kind: other.to_owned() }),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        pos: usize,
        node: &Node,
        role: Role,
        id: String,
        content: Vec<ContentPart>,
        timestamp_ms: i64,
        source_bytes: usize,
        first_kept: Option<String>,
    ) -> &mut Message {
        self.last_ms = timestamp_ms;
        let mut message = Message::text(id, role, "", timestamp_ms);
        message.content = content;
        message.author = IMPORT_AUTHOR.to_owned();
        self.pieces.push(Piece {
            imported: ImportedMessage { message, line: node.line, source_bytes },
            pos,
            first_kept,
        });
        let last = self.pieces.len() - 1;
        &mut self.pieces[last].imported.message
    }

    fn message(
        &mut self,
        pos: usize,
        node: &Node,
        message: &Map<String, Value>,
        entry_ms: Option<i64>,
        source_bytes: usize,
    ) -> Result<(), Skip> {
        let role = string_field(message, "role", "message.")?;
        let ts = number_ms(message.get("timestamp")).or(entry_ms).unwrap_or(self.last_ms);
        let id = message_id(EntryKind::Message, &node.id);
        match role {
            "user" => {
                let content =
                    self.user_content(node.line, message.get("content"), "message.content")?;
                self.push(pos, node, Role::User, id, content, ts, source_bytes, None);
            }
            "assistant" => {
                let content = self.assistant_content(node.line, message.get("content"))?;
                let usage = self.usage(node.line, message.get("usage"));
                let stop_reason = match message.get("stopReason").and_then(Value::as_str) {
                    None => None,
                    Some(value) => {
                        let parsed = stop_reason(value);
                        if parsed.is_none() {
                            let reason = IssueReason::UnknownStopReason { value: value.to_owned() };
                            self.issue(node.line, Severity::Note, reason);
                        }
                        parsed
                    }
                };
                let pushed =
                    self.push(pos, node, Role::Assistant, id, content, ts, source_bytes, None);
                pushed.model = optional_string(message, "model");
                pushed.provider = optional_string(message, "provider");
                pushed.usage = usage;
                pushed.stop_reason = stop_reason;
            }
            "toolResult" => {
                let tool_call_id = string_field(message, "toolCallId", "message.")?.to_owned();
                let tool_name = optional_string(message, "toolName").unwrap_or_default();
                let is_error = match message.get("isError") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(bad("message.isError", "must be true or false")),
                };
                let parts =
                    self.user_content(node.line, message.get("content"), "message.content")?;
                let mut texts = Vec::new();
                let mut others = Vec::new();
                for part in parts {
                    match part {
                        ContentPart::Text { text } => texts.push(text),
                        other => others.push(other),
                    }
                }
                let result = ContentPart::ToolResult {
                    tool_call_id,
                    tool_name,
                    content: texts.join("\n"),
                    is_error,
                };
                let content = std::iter::once(result).chain(others).collect();
                self.push(pos, node, Role::ToolResult, id, content, ts, source_bytes, None);
            }
            // `hookMessage` is the version 2 name of `custom`.
            "custom" | "hookMessage" if role == "custom" || self.version <= 2 => {
                let content =
                    self.user_content(node.line, message.get("content"), "message.content")?;
                let id = message_id(EntryKind::CustomMessage, &node.id);
                self.push(pos, node, Role::System, id, content, ts, source_bytes, None);
            }
            "branchSummary" | "compactionSummary" => {
                let summary = string_field(message, "summary", "message.")?;
                let kind = if role == "branchSummary" {
                    EntryKind::BranchSummary
                } else {
                    EntryKind::Compaction
                };
                let content = vec![ContentPart::Text { text: summary.to_owned() }];
                self.push(
                    pos,
                    node,
                    Role::System,
                    message_id(kind, &node.id),
                    content,
                    ts,
                    source_bytes,
                    None,
                );
            }
            other => return Err(IssueReason::UnsupportedRole { role: other.to_owned() }),
        }
        Ok(())
    }

    /// A user-shaped content: a string, or an array of parts.
    fn user_content(
        &mut self,
        line: usize,
        content: Option<&Value>,
        field: &str,
    ) -> Result<Vec<ContentPart>, Skip> {
        match content {
            Some(Value::String(text)) => Ok(vec![ContentPart::Text { text: text.clone() }]),
            Some(Value::Array(parts)) => self.parts(line, parts, field),
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(_) => Err(bad(field, "must be a string or an array of content parts")),
        }
    }

    fn assistant_content(
        &mut self,
        line: usize,
        content: Option<&Value>,
    ) -> Result<Vec<ContentPart>, Skip> {
        match content {
            Some(Value::Array(parts)) => self.parts(line, parts, "message.content"),
            // Lenient: a bare string is one text part.
            Some(Value::String(text)) => Ok(vec![ContentPart::Text { text: text.clone() }]),
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(_) => Err(bad("message.content", "must be an array of content parts")),
        }
    }

    fn parts(
        &mut self,
        line: usize,
        parts: &[Value],
        field: &str,
    ) -> Result<Vec<ContentPart>, Skip> {
        let mut out = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let at = format!("{field}[{index}].");
            let Some(part) = part.as_object() else {
                return Err(bad(format!("{field}[{index}]"), "must be an object"));
            };
            let kind = string_field(part, "type", &at)?;
            let converted = match kind {
                "text" => ContentPart::Text { text: string_field(part, "text", &at)?.to_owned() },
                "thinking" => ContentPart::Thinking {
                    thinking: string_field(part, "thinking", &at)?.to_owned(),
                    signature: optional_string(part, "thinkingSignature"),
                },
                "toolCall" => ContentPart::ToolCall {
                    id: string_field(part, "id", &at)?.to_owned(),
                    name: string_field(part, "name", &at)?.to_owned(),
                    arguments: match part.get("arguments") {
                        None | Some(Value::Null) => Value::Object(Map::new()),
                        Some(arguments) => arguments.clone(),
                    },
                },
                "image" => {
                    let mime_type = string_field(part, "mimeType", &at)?;
                    let data = string_field(part, "data", &at)?;
                    ContentPart::Image {
                        mime_type: mime_type.to_owned(),
                        reference: format!("data:{mime_type};base64,{data}"),
                    }
                }
                other => {
                    let reason = IssueReason::UnsupportedPart { kind: other.to_owned() };
                    self.issue(line, Severity::Skipped, reason);
                    continue;
                }
            };
            out.push(converted);
        }
        Ok(out)
    }

    fn usage(&mut self, line: usize, usage: Option<&Value>) -> Option<Usage> {
        let usage = match usage? {
            Value::Object(usage) => usage,
            Value::Null => return None,
            _ => {
                let reason = IssueReason::FieldIgnored {
                    field: "message.usage".into(),
                    problem: "not an object".into(),
                };
                self.issue(line, Severity::Note, reason);
                return None;
            }
        };
        let count = |field: &str| -> Result<u64, String> {
            match usage.get(field) {
                None | Some(Value::Null) => Ok(0),
                Some(Value::Number(n)) => n
                    .as_u64()
                    .or_else(|| {
                        n.as_f64().filter(|f| *f >= 0.0 && f.is_finite()).map(|f| f.round() as u64)
                    })
                    .ok_or_else(|| format!("{field} must be a count of tokens")),
                Some(_) => Err(format!("{field} must be a number")),
            }
        };
        let parsed = (|| {
            Ok::<_, String>(Usage {
                input: count("input")?,
                output: count("output")?,
                cache_read: count("cacheRead")?,
                cache_write: count("cacheWrite")?,
            })
        })();
        match parsed {
            Ok(usage) => Some(usage),
            Err(problem) => {
                let reason = IssueReason::FieldIgnored { field: "message.usage".into(), problem };
                self.issue(line, Severity::Note, reason);
                None
            }
        }
    }
}

/// pi's stop reason as the document's.
pub fn stop_reason(value: &str) -> Option<StopReason> {
    Some(match value {
        "stop" => StopReason::Stop,
        "length" => StopReason::Length,
        "toolUse" => StopReason::ToolUse,
        "error" => StopReason::Error,
        "aborted" => StopReason::Aborted,
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
