//! Writing a session as a pi transcript, the file OpenClaw reads (`<sessionId>.jsonl`).
//!
//! The header (`{"type":"session","version":3,"id","timestamp","cwd":""}`: the working
//! directory is not recorded in a session, and pi reads an empty one as "unknown"), then one
//! entry per message, each the child of the one before:
//!
//! - user: a `message` entry `{role:"user", content:[text|image], timestamp}`;
//! - assistant: `{role:"assistant", content:[text|thinking|toolCall], api?, provider?, model?,
//!   usage, stopReason, timestamp}`. `api` is derived from the provider (`anthropic` ->
//!   `anthropic-messages`, `openai` -> `openai-completions`) and left out for others, as are an
//!   unknown provider and model (an invented value would be worse for pi than none). Cost is
//!   not recorded and written as zeros. A partial checkpoint is written with stop reason
//!   `aborted`.
//! - toolResult: one `{role:"toolResult", toolCallId, toolName, content:[text, images...],
//!   isError}` entry per tool result part;
//! - system: a compaction summary (imported from a `compaction` entry) is written back as a
//!   `compaction` entry whose `firstKeptEntryId` is the entry after it (see the module doc of
//!   [`super`]); a branch summary as a `branch_summary`; any other as a `custom_message` with
//!   `customType` [`SYSTEM_CUSTOM_TYPE`], which pi puts in the model's context.
//!
//! Images are written inline when their reference is a base64 `data:` URL; any other reference
//! (a workspace path, a content hash) has no bytes to inline and is written as a text part
//! `[image <mimeType>: <reference>]`. A content part that a role cannot hold in pi (an image in
//! an assistant message, a tool call in a user message) is written as a text part describing it,
//! so nothing is dropped silently.

use super::TRANSCRIPT_VERSION;
use super::ids::{EntryIds, EntryKind, parse_message_id};
use beamclaw_crdt::{ContentPart, Message, Role, StopReason, Usage};
use serde::Serialize;
use serde_json::Value;
use std::borrow::Cow;
use std::io::{self, Write};

/// `customType` of the `custom_message` entries written for system messages.
pub const SYSTEM_CUSTOM_TYPE: &str = "beamclaw.system";

/// What an export needs of a session.
#[derive(Clone, Copy, Debug)]
pub struct ExportSession<'a> {
    /// The current transcript's id: the header's `id` (and the file name OpenClaw expects).
    pub session_id: &'a str,
    /// When the transcript started, milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// Its messages, oldest first.
    pub messages: &'a [Message],
}

/// What was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Entries after the header.
    pub entries: usize,
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Serialize)]
struct Header<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    version: u64,
    id: &'a str,
    timestamp: String,
    cwd: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a, B: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    parent_id: Option<&'a str>,
    timestamp: String,
    #[serde(flatten)]
    body: B,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Part<'a> {
    Text {
        text: Cow<'a, str>,
    },
    #[serde(rename_all = "camelCase")]
    Image {
        data: &'a str,
        mime_type: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    Thinking {
        thinking: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        thinking_signature: Option<&'a str>,
    },
    ToolCall {
        id: &'a str,
        name: &'a str,
        arguments: &'a Value,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Cost {
    input: f64,
    output: f64,
    cache_read: f64,
    cache_write: f64,
    total: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PiUsage {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    total_tokens: u64,
    cost: Cost,
}

impl From<Usage> for PiUsage {
    fn from(usage: Usage) -> Self {
        PiUsage {
            input: usage.input,
            output: usage.output,
            cache_read: usage.cache_read,
            cache_write: usage.cache_write,
            total_tokens: usage.total(),
            cost: Cost { input: 0.0, output: 0.0, cache_read: 0.0, cache_write: 0.0, total: 0.0 },
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "camelCase")]
enum PiMessage<'a> {
    User {
        content: Vec<Part<'a>>,
        timestamp: i64,
    },
    #[serde(rename_all = "camelCase")]
    Assistant {
        content: Vec<Part<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        api: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        provider: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<&'a str>,
        usage: PiUsage,
        stop_reason: &'static str,
        timestamp: i64,
    },
    #[serde(rename_all = "camelCase")]
    ToolResult {
        tool_call_id: &'a str,
        tool_name: &'a str,
        content: Vec<Part<'a>>,
        is_error: bool,
        timestamp: i64,
    },
}

#[derive(Serialize)]
struct MessageBody<'b, 'a> {
    message: &'b PiMessage<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CompactionBody<'b> {
    summary: &'b str,
    first_kept_entry_id: &'b str,
    tokens_before: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BranchSummaryBody<'b> {
    from_id: &'b str,
    summary: &'b str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CustomMessageBody<'b, 'a> {
    custom_type: &'static str,
    content: &'b [Part<'a>],
    display: bool,
}

/// What one entry of the output is, before the ids around it are known.
enum Planned<'a> {
    Message(PiMessage<'a>),
    Compaction(Cow<'a, str>),
    BranchSummary(Cow<'a, str>),
    Custom(Vec<Part<'a>>),
}

/// pi's name of a stop reason.
pub fn stop_reason_name(stop: StopReason) -> &'static str {
    match stop {
        StopReason::Stop => "stop",
        StopReason::Length => "length",
        StopReason::ToolUse => "toolUse",
        StopReason::Error => "error",
        StopReason::Aborted => "aborted",
    }
}

fn api_of(provider: Option<&str>) -> Option<&'static str> {
    match provider? {
        "anthropic" => Some("anthropic-messages"),
        "openai" => Some("openai-completions"),
        _ => None,
    }
}

/// The bytes of a base64 `data:` URL, with its media type.
fn data_url(reference: &str) -> Option<(&str, &str)> {
    let rest = reference.strip_prefix("data:")?;
    let (media, data) = rest.split_once(',')?;
    let mime = media.strip_suffix(";base64")?;
    Some((mime, data))
}

fn image<'a>(mime_type: &'a str, reference: &'a str) -> Part<'a> {
    match data_url(reference) {
        Some((mime, data)) => {
            Part::Image { data, mime_type: if mime.is_empty() { mime_type } else { mime } }
        }
        None => Part::Text { text: Cow::Owned(format!("[image {mime_type}: {reference}]")) },
    }
}

/// A part the role cannot hold in pi, as text that says what it was.
fn described(part: &ContentPart) -> Part<'_> {
    let text = match part {
        ContentPart::Text { text } => return Part::Text { text: Cow::Borrowed(text) },
        ContentPart::Image { mime_type, reference } => return image(mime_type, reference),
        ContentPart::Thinking { thinking, .. } => format!("[thinking] {thinking}"),
        ContentPart::ToolCall { name, arguments, .. } => format!("[tool call {name} {arguments}]"),
        ContentPart::ToolResult { tool_name, content, is_error, .. } => {
            let error = if *is_error { " (error)" } else { "" };
            format!("[tool result {tool_name}{error}] {content}")
        }
    };
    Part::Text { text: Cow::Owned(text) }
}

fn user_parts(message: &Message) -> Vec<Part<'_>> {
    message.content.iter().map(described).collect()
}

fn assistant_parts(message: &Message) -> Vec<Part<'_>> {
    message
        .content
        .iter()
        .map(|part| match part {
            ContentPart::Text { text } => Part::Text { text: Cow::Borrowed(text) },
            ContentPart::Thinking { thinking, signature } => {
                Part::Thinking { thinking, thinking_signature: signature.as_deref() }
            }
            ContentPart::ToolCall { id, name, arguments } => Part::ToolCall { id, name, arguments },
            ContentPart::Image { mime_type, reference } => Part::Text {
                text: Cow::Owned(format!("[image {mime_type}: {}]", short(reference))),
            },
            other => described(other),
        })
        .collect()
}

/// A reference as it is mentioned in text: a data URL is not repeated whole.
fn short(reference: &str) -> &str {
    if reference.starts_with("data:") { "inline data" } else { reference }
}

/// The entries one message becomes (one, except a tool result message with several results).
fn plan(message: &Message) -> Vec<Planned<'_>> {
    let ts = message.timestamp_ms;
    match message.role {
        Role::User => {
            vec![Planned::Message(PiMessage::User { content: user_parts(message), timestamp: ts })]
        }
        Role::Assistant => {
            let stop = match (message.stop_reason, message.partial) {
                (Some(stop), false) => stop_reason_name(stop),
                (_, true) => "aborted",
                (None, false) => "stop",
            };
            vec![Planned::Message(PiMessage::Assistant {
                content: assistant_parts(message),
                api: api_of(message.provider.as_deref()),
                provider: message.provider.as_deref(),
                model: message.model.as_deref(),
                usage: message.usage.unwrap_or_default().into(),
                stop_reason: stop,
                timestamp: ts,
            })]
        }
        Role::ToolResult => {
            let mut results: Vec<Planned<'_>> = Vec::new();
            let mut extra: Vec<Part<'_>> = Vec::new();
            for part in &message.content {
                match part {
                    ContentPart::ToolResult { tool_call_id, tool_name, content, is_error } => {
                        results.push(Planned::Message(PiMessage::ToolResult {
                            tool_call_id,
                            tool_name,
                            content: vec![Part::Text { text: Cow::Borrowed(content) }],
                            is_error: *is_error,
                            timestamp: ts,
                        }));
                    }
                    other => extra.push(described(other)),
                }
            }
            match results.first_mut() {
                Some(Planned::Message(PiMessage::ToolResult { content, .. })) => {
                    content.extend(extra)
                }
                // A tool result message without a tool result: keep its content in the context.
                _ => results.push(Planned::Custom(extra)),
            }
            results
        }
        Role::System => {
            let text = Cow::Owned(message.text_content());
            match parse_message_id(&message.id) {
                Some((EntryKind::Compaction, _)) => vec![Planned::Compaction(text)],
                Some((EntryKind::BranchSummary, _)) => vec![Planned::BranchSummary(text)],
                _ => vec![Planned::Custom(user_parts(message))],
            }
        }
    }
}

fn line(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(io::Error::other)?;
    out.write_all(b"\n")
}

/// Writes `session` as a pi transcript to `out`.
pub fn write_transcript(
    session: &ExportSession<'_>,
    out: &mut impl Write,
) -> io::Result<ExportStats> {
    let header = Header {
        kind: "session",
        version: TRANSCRIPT_VERSION,
        id: session.session_id,
        timestamp: iso(session.started_at_ms),
        cwd: "",
    };
    line(out, &header)?;

    let mut ids = EntryIds::default();
    ids.reserve(session.messages.iter().map(|m| m.id.as_str()));
    let mut planned: Vec<(String, i64, Planned<'_>)> = Vec::new();
    for message in session.messages {
        for (part, entry) in plan(message).into_iter().enumerate() {
            planned.push((ids.assign(&message.id, part), message.timestamp_ms, entry));
        }
    }

    let mut parent: Option<&str> = None;
    for (index, (id, ts, entry)) in planned.iter().enumerate() {
        let timestamp = iso(*ts);
        let parent_id = parent;
        match entry {
            Planned::Message(message) => {
                let body = MessageBody { message };
                line(out, &Entry { kind: "message", id, parent_id, timestamp, body })?;
            }
            Planned::Compaction(summary) => {
                // The entry after the summary is where pi's context resumes (see the module doc).
                let next = planned.get(index + 1).map_or(id.as_str(), |(next, ..)| next.as_str());
                let body = CompactionBody { summary, first_kept_entry_id: next, tokens_before: 0 };
                line(out, &Entry { kind: "compaction", id, parent_id, timestamp, body })?;
            }
            Planned::BranchSummary(summary) => {
                let body = BranchSummaryBody { from_id: parent.unwrap_or(id), summary };
                line(out, &Entry { kind: "branch_summary", id, parent_id, timestamp, body })?;
            }
            Planned::Custom(content) => {
                let body =
                    CustomMessageBody { custom_type: SYSTEM_CUSTOM_TYPE, content, display: false };
                line(out, &Entry { kind: "custom_message", id, parent_id, timestamp, body })?;
            }
        }
        parent = Some(id);
    }
    Ok(ExportStats { entries: planned.len() })
}
