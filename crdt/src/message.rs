//! One message of a session transcript, as the session document stores it.
//!
//! The shape follows pi's transcript (OpenClaw's format, OPENCLAW.md §3): roles user, assistant,
//! system and toolResult; content parts text, thinking, toolCall, toolResult and image. Field names
//! serialize in OpenClaw's camelCase so that the gateway and the JSONL export can pass them on.

use serde::{Deserialize, Serialize};

/// Longest message id, in bytes. Ids are UUIDs or derived from them (`r:<uuid>` for replies).
pub const MESSAGE_ID_BYTES_MAX: usize = 128;

/// Largest encoded message body the document accepts, in bytes (text, tool arguments, tool
/// results). A provider reply or tool output larger than this is truncated by the runtime before
/// it gets here; the document refuses it with a typed error rather than growing without bound.
pub const MESSAGE_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    User,
    Assistant,
    System,
    ToolResult,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
            Role::ToolResult => "toolResult",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" => Role::System,
            "toolResult" => Role::ToolResult,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ContentPart {
    Text {
        text: String,
    },
    Thinking {
        thinking: String,
        /// Provider signature that must be sent back with the thinking block (Anthropic).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    ToolCall {
        id: String,
        name: String,
        /// The tool arguments as the model produced them (a JSON object).
        arguments: serde_json::Value,
    },
    #[serde(rename_all = "camelCase")]
    ToolResult {
        tool_call_id: String,
        tool_name: String,
        content: String,
        is_error: bool,
    },
    #[serde(rename_all = "camelCase")]
    Image {
        mime_type: String,
        /// Where the bytes are: a data URL, a path in the workspace, or a content hash.
        reference: String,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    #[serde(default)]
    pub cache_read: u64,
    #[serde(default)]
    pub cache_write: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input + self.output + self.cache_read + self.cache_write
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StopReason {
    Stop,
    Length,
    ToolUse,
    Error,
    Aborted,
}

/// A message as appended to and read from a session document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Unique within the session; appending an id that is already present is a no-op.
    pub id: String,
    pub role: Role,
    pub content: Vec<ContentPart>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Node id (base58 PeerId) of the node that wrote the message.
    pub author: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
    /// The client's idempotency key for a user message (OpenClaw `idempotencyKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The run (OpenClaw `runId`) that produced or consumed this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// For the final assistant message of a turn: the user messages this turn answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<String>,
    /// True for a checkpoint of output still being generated; the final message of the turn
    /// replaces it (same id).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

impl Message {
    /// A user message with one text part.
    pub fn user_text(id: impl Into<String>, text: impl Into<String>, timestamp_ms: i64) -> Self {
        Self::text(id, Role::User, text, timestamp_ms)
    }

    pub fn text(id: impl Into<String>, role: Role, text: impl Into<String>, ts: i64) -> Self {
        Message {
            id: id.into(),
            role,
            content: vec![ContentPart::Text { text: text.into() }],
            timestamp_ms: ts,
            author: String::new(),
            model: None,
            provider: None,
            usage: None,
            stop_reason: None,
            idempotency_key: None,
            run_id: None,
            reply_to: Vec::new(),
            partial: false,
        }
    }

    /// Bytes of [`Self::text_content`], without building it.
    pub fn text_len(&self) -> usize {
        self.content
            .iter()
            .map(|part| match part {
                ContentPart::Text { text } => text.len(),
                _ => 0,
            })
            .sum()
    }

    /// The concatenated text parts (what a chat client shows).
    pub fn text_content(&self) -> String {
        let mut out = String::new();
        for part in &self.content {
            if let ContentPart::Text { text } = part {
                out.push_str(text);
            }
        }
        out
    }
}
