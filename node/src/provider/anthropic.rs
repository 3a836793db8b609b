//! The Anthropic Messages API wire format: the request body and the SSE stream decoder.
//!
//! Sans-IO: `request_body` turns a [`ProviderRequest`] into JSON bytes; [`Decoder`] turns SSE events
//! (message_start, content_block_start/delta/stop, message_delta, message_stop, ping, error) into
//! [`ProviderEvent`]s. `http` does the I/O.

use super::sse::SseEventRef;
use super::{ErrorKind, ProviderError, ProviderEvent, ProviderRequest, ToolDefinition};
use crate::config::ThinkingLevel;
use beamclaw_crdt::{ContentPart, Message, Role, StopReason, Usage};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The `anthropic-version` header value.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Thinking budget in tokens for each level (Anthropic requires at least 1024).
pub fn thinking_budget_tokens(level: ThinkingLevel) -> Option<u32> {
    match level {
        ThinkingLevel::Off => None,
        ThinkingLevel::Minimal => Some(1024),
        ThinkingLevel::Low => Some(4096),
        ThinkingLevel::Medium => Some(10_000),
        ThinkingLevel::High => Some(32_000),
        ThinkingLevel::Xhigh => Some(64_000),
    }
}

/// The JSON body of a streaming `POST /v1/messages`, serialized straight from the borrowed
/// request: no copy of the history and no `serde_json::Value` in between.
pub fn request_body(request: &ProviderRequest<'_>) -> Result<Vec<u8>, serde_json::Error> {
    let mut system = Cow::Borrowed(request.system);
    for message in request.messages.iter().filter(|m| m.role == Role::System) {
        let text = message.text_content();
        if !text.is_empty() {
            let system = system.to_mut();
            if !system.is_empty() {
                system.push_str("\n\n");
            }
            system.push_str(&text);
        }
    }
    let mut max_tokens = request.max_tokens;
    let thinking = thinking_budget_tokens(request.thinking).map(|budget_tokens| {
        // The budget counts towards max_tokens, which must exceed it.
        max_tokens = max_tokens.max(budget_tokens.saturating_add(1024));
        WireThinking { kind: "enabled", budget_tokens }
    });
    let body = WireRequest {
        model: request.model,
        messages: WireMessages(request.messages),
        stream: true,
        system: (!system.is_empty()).then_some(system),
        tools: WireTools(request.tools),
        thinking,
        max_tokens,
    };
    serde_json::to_vec(&body)
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: WireMessages<'a>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "WireTools::is_empty")]
    tools: WireTools<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<WireThinking>,
    max_tokens: u32,
}

#[derive(Serialize)]
struct WireThinking {
    #[serde(rename = "type")]
    kind: &'static str,
    budget_tokens: u32,
}

struct WireTools<'a>(&'a [ToolDefinition]);

impl WireTools<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for WireTools<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Tool<'a> {
            name: &'a str,
            description: &'a str,
            input_schema: &'a Value,
        }
        serializer.collect_seq(self.0.iter().map(|t| Tool {
            name: &t.name,
            description: &t.description,
            input_schema: &t.parameters,
        }))
    }
}

/// The transcript as API messages. Consecutive messages of one role become one message (tool
/// results after a tool call must all be in the next user message); system messages went into
/// `system` and messages with nothing to send are left out, without splitting a run.
struct WireMessages<'a>(&'a [Arc<Message>]);

/// The API role a message is sent under, or `None` when it is not sent as a message.
fn wire_role(message: &Message) -> Option<&'static str> {
    match message.role {
        Role::System => None,
        Role::User | Role::ToolResult => {
            message.content.iter().any(|p| user_block(p).is_some()).then_some("user")
        }
        Role::Assistant => {
            message.content.iter().any(|p| assistant_block(p).is_some()).then_some("assistant")
        }
    }
}

impl Serialize for WireMessages<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let messages = self.0;
        let mut seq = serializer.serialize_seq(None)?;
        let mut start = 0;
        while start < messages.len() {
            let Some(role) = wire_role(&messages[start]) else {
                start += 1;
                continue;
            };
            let mut end = start + 1;
            while end < messages.len() {
                match wire_role(&messages[end]) {
                    Some(r) if r != role => break,
                    _ => end += 1,
                }
            }
            seq.serialize_element(&WireMessage { role, messages: &messages[start..end] })?;
            start = end;
        }
        seq.end()
    }
}

/// One API message: the blocks of a run of transcript messages of one role.
struct WireMessage<'a> {
    role: &'static str,
    messages: &'a [Arc<Message>],
}

impl Serialize for WireMessage<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Blocks<'a>(&'a WireMessage<'a>);
        impl Serialize for Blocks<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let role = self.0.role;
                let parts =
                    self.0.messages.iter().filter(|m| wire_role(m) == Some(role)).flat_map(|m| {
                        m.content.iter().filter_map(move |p| match m.role {
                            Role::Assistant => assistant_block(p),
                            _ => user_block(p),
                        })
                    });
                serializer.collect_seq(parts)
            }
        }
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("role", self.role)?;
        map.serialize_entry("content", &Blocks(self))?;
        map.end()
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock<'a> {
    Text { text: Cow<'a, str> },
    Image { source: WireImageSource<'a> },
    ToolResult { tool_use_id: &'a str, content: &'a str, is_error: bool },
    Thinking { thinking: &'a str, signature: &'a str },
    ToolUse { id: &'a str, name: &'a str, input: &'a Value },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireImageSource<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

fn user_block(part: &ContentPart) -> Option<WireBlock<'_>> {
    match part {
        ContentPart::Text { text } if !text.is_empty() => {
            Some(WireBlock::Text { text: Cow::Borrowed(text) })
        }
        ContentPart::ToolResult { tool_call_id, content, is_error, .. } => {
            Some(WireBlock::ToolResult { tool_use_id: tool_call_id, content, is_error: *is_error })
        }
        ContentPart::Image { mime_type, reference } => Some(image_block(mime_type, reference)),
        _ => None,
    }
}

fn image_block<'a>(mime_type: &'a str, reference: &'a str) -> WireBlock<'a> {
    match reference.strip_prefix("data:").and_then(|r| r.split_once(";base64,")) {
        Some((_, data)) => {
            WireBlock::Image { source: WireImageSource::Base64 { media_type: mime_type, data } }
        }
        None if reference.starts_with("https://") || reference.starts_with("http://") => {
            WireBlock::Image { source: WireImageSource::Url { url: reference } }
        }
        None => WireBlock::Text { text: Cow::Owned(format!("[image {mime_type}: {reference}]")) },
    }
}

fn assistant_block(part: &ContentPart) -> Option<WireBlock<'_>> {
    match part {
        ContentPart::Text { text } if !text.is_empty() => {
            Some(WireBlock::Text { text: Cow::Borrowed(text) })
        }
        // A thinking block is only accepted back with its signature.
        ContentPart::Thinking { thinking, signature: Some(signature) } => {
            Some(WireBlock::Thinking { thinking, signature })
        }
        ContentPart::ToolCall { id, name, arguments } => {
            Some(WireBlock::ToolUse { id, name, input: arguments })
        }
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Block {
    Text,
    Thinking,
    ToolUse { index: u32 },
    Other,
}

/// Turns Anthropic SSE events into provider events.
#[derive(Debug)]
pub struct Decoder {
    provider: String,
    blocks: BTreeMap<u64, Block>,
    tool_calls: u32,
    usage: Usage,
    finished: bool,
}

impl Decoder {
    pub fn new(provider: &str) -> Self {
        Decoder {
            provider: provider.to_string(),
            blocks: BTreeMap::new(),
            tool_calls: 0,
            usage: Usage::default(),
            finished: false,
        }
    }

    /// Whether `message_stop` was seen.
    pub fn finished(&self) -> bool {
        self.finished
    }

    fn malformed(&self, what: &str, data: &str) -> ProviderError {
        let shown: String = data.chars().take(200).collect();
        ProviderError::new(&self.provider, ErrorKind::Malformed, format!("{what}: {shown}"))
    }

    pub fn on_event(
        &mut self,
        event: SseEventRef<'_>,
        out: &mut Vec<ProviderEvent>,
    ) -> Result<(), ProviderError> {
        let value: WireEvent<'_> = serde_json::from_str(event.data).map_err(|e| {
            let what = if e.is_data() {
                "event data has an unexpected shape"
            } else {
                "event data is not JSON"
            };
            self.malformed(&format!("{what} ({e})"), event.data)
        })?;
        let kind = value.kind.as_ref().map(|k| k.as_str()).or(event.event).unwrap_or_default();
        match kind {
            "message_start" => {
                if let Some(usage) = value.message.and_then(|m| m.usage) {
                    self.read_usage(&usage);
                }
                out.push(ProviderEvent::Usage(self.usage));
            }
            "content_block_start" => {
                let index = self.index(value.index, event.data)?;
                let block = value.content_block.unwrap_or_default();
                let kind = match block.kind.as_ref().map(|k| k.as_str()) {
                    Some("text") => {
                        if let Some(text) = block.text.filter(|t| !t.is_empty()) {
                            out.push(ProviderEvent::TextDelta(text.into_string()));
                        }
                        Block::Text
                    }
                    Some("thinking") => Block::Thinking,
                    Some("tool_use") => {
                        let (Some(id), Some(name)) = (block.id, block.name) else {
                            return Err(
                                self.malformed("tool_use block without id or name", event.data)
                            );
                        };
                        let tool_index = self.tool_calls;
                        self.tool_calls += 1;
                        out.push(ProviderEvent::ToolCallStart {
                            index: tool_index,
                            id: id.into_string(),
                            name: name.into_string(),
                        });
                        Block::ToolUse { index: tool_index }
                    }
                    _ => Block::Other,
                };
                self.blocks.insert(index, kind);
            }
            "content_block_delta" => {
                let index = self.index(value.index, event.data)?;
                let block = self.blocks.get(&index).copied();
                let delta = value.delta.unwrap_or_default();
                match (delta.kind.as_ref().map(|k| k.as_str()), block) {
                    (Some("text_delta"), Some(Block::Text)) => {
                        if let Some(t) = delta.text {
                            out.push(ProviderEvent::TextDelta(t.into_string()));
                        }
                    }
                    (Some("thinking_delta"), Some(Block::Thinking)) => {
                        if let Some(t) = delta.thinking {
                            out.push(ProviderEvent::ThinkingDelta(t.into_string()));
                        }
                    }
                    (Some("signature_delta"), Some(Block::Thinking)) => {
                        if let Some(s) = delta.signature {
                            out.push(ProviderEvent::ThinkingSignature(s.into_string()));
                        }
                    }
                    (Some("input_json_delta"), Some(Block::ToolUse { index })) => {
                        if let Some(json) = delta.partial_json {
                            out.push(ProviderEvent::ToolCallArgsDelta {
                                index,
                                json: json.into_string(),
                            });
                        }
                    }
                    (_, None) => {
                        return Err(
                            self.malformed("delta for a block that was not started", event.data)
                        );
                    }
                    // Deltas of kinds we do not use (citations, redacted thinking...).
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = self.index(value.index, event.data)?;
                if let Some(Block::ToolUse { index }) = self.blocks.get(&index).copied() {
                    out.push(ProviderEvent::ToolCallEnd { index });
                }
            }
            "message_delta" => {
                if let Some(usage) = &value.usage {
                    self.read_usage(usage);
                }
                out.push(ProviderEvent::Usage(self.usage));
                if let Some(reason) = value.delta.and_then(|d| d.stop_reason) {
                    out.push(ProviderEvent::Stop(stop_reason(reason.as_str())));
                }
            }
            "message_stop" => self.finished = true,
            "ping" => {}
            "error" => {
                let error = value.error.unwrap_or_default();
                let message = error
                    .message
                    .map(WireStr::into_string)
                    .unwrap_or_else(|| "unknown error".into());
                let kind = match error.kind.as_ref().map(|k| k.as_str()) {
                    Some("overloaded_error") => ErrorKind::Overloaded,
                    Some("rate_limit_error") => ErrorKind::RateLimit,
                    Some("api_error") => ErrorKind::Server,
                    Some("authentication_error") | Some("permission_error") => ErrorKind::Auth,
                    Some("billing_error") => ErrorKind::Billing,
                    Some("not_found_error") => ErrorKind::NotFound,
                    Some("invalid_request_error") => ErrorKind::BadRequest,
                    _ => ErrorKind::Provider,
                };
                return Err(ProviderError::new(&self.provider, kind, message));
            }
            other => {
                return Err(self.malformed(&format!("unknown event type {other:?}"), event.data));
            }
        }
        Ok(())
    }

    fn index(&self, index: Option<u64>, data: &str) -> Result<u64, ProviderError> {
        index.ok_or_else(|| self.malformed("event without an index", data))
    }

    fn read_usage(&mut self, usage: &WireUsage) {
        if let Some(n) = usage.input_tokens {
            self.usage.input = n;
        }
        if let Some(n) = usage.output_tokens {
            self.usage.output = n;
        }
        if let Some(n) = usage.cache_read_input_tokens {
            self.usage.cache_read = n;
        }
        if let Some(n) = usage.cache_creation_input_tokens {
            self.usage.cache_write = n;
        }
    }
}

/// One streamed event, read in place: strings borrow from the event's data unless they contain
/// escapes. Fields the decoder does not use are skipped.
#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<WireStr<'a>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    content_block: Option<WireStartBlock<'a>>,
    #[serde(borrow, default)]
    delta: Option<WireDelta<'a>>,
    #[serde(default)]
    message: Option<WireMessageStart>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    error: Option<WireError<'a>>,
}

#[derive(Default, Deserialize)]
struct WireStartBlock<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<WireStr<'a>>,
    #[serde(borrow, default)]
    text: Option<WireStr<'a>>,
    #[serde(borrow, default)]
    id: Option<WireStr<'a>>,
    #[serde(borrow, default)]
    name: Option<WireStr<'a>>,
}

#[derive(Default, Deserialize)]
struct WireDelta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<WireStr<'a>>,
    #[serde(borrow, default)]
    text: Option<WireStr<'a>>,
    #[serde(borrow, default)]
    thinking: Option<WireStr<'a>>,
    #[serde(borrow, default)]
    signature: Option<WireStr<'a>>,
    #[serde(borrow, default)]
    partial_json: Option<WireStr<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<WireStr<'a>>,
}

#[derive(Deserialize)]
struct WireMessageStart {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Default, Deserialize)]
struct WireError<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<WireStr<'a>>,
    #[serde(borrow, default)]
    message: Option<WireStr<'a>>,
}

/// A JSON string borrowed from the input when it has no escapes, else decoded into an owned one.
/// (`Cow<str>` alone always allocates when it sits inside an `Option`.)
#[derive(Debug, PartialEq)]
pub(crate) struct WireStr<'a>(Cow<'a, str>);

impl WireStr<'_> {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_string(self) -> String {
        self.0.into_owned()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for WireStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = WireStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

fn stop_reason(reason: &str) -> StopReason {
    match reason {
        "tool_use" => StopReason::ToolUse,
        "max_tokens" | "model_context_window_exceeded" => StopReason::Length,
        "refusal" => StopReason::Error,
        _ => StopReason::Stop,
    }
}

/// The provider's own error message from an error body (`{"type":"error","error":{...}}`).
pub fn error_message(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    value["error"]["message"].as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::RequestContext;
    use serde_json::json;

    fn decode(events: &[(&str, &str)]) -> Result<Vec<ProviderEvent>, ProviderError> {
        let mut decoder = Decoder::new("anthropic");
        let mut out = Vec::new();
        for (name, data) in events {
            decoder.on_event(SseEventRef { event: Some(name), data }, &mut out)?;
        }
        assert_eq!(decoder.finished(), events.iter().any(|e| e.0 == "message_stop"));
        Ok(out)
    }

    #[test]
    fn decodes_text_thinking_and_tool_use() {
        let out = decode(&[
            ("message_start", r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":12,"output_tokens":1}}}"#),
            ("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#),
            ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#),
            ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"sig"}}"#),
            ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            ("ping", r#"{"type":"ping"}"#),
            ("content_block_start", r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#),
            ("content_block_delta", r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hi"}}"#),
            ("content_block_stop", r#"{"type":"content_block_stop","index":1}"#),
            ("content_block_start", r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_1","name":"read","input":{}}}"#),
            ("content_block_delta", r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"path\":"}}"#),
            ("content_block_delta", r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"\"a\"}"}}"#),
            ("content_block_stop", r#"{"type":"content_block_stop","index":2}"#),
            ("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":30}}"#),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ])
        .unwrap();
        let usage =
            |input, output| ProviderEvent::Usage(Usage { input, output, ..Usage::default() });
        assert_eq!(
            out,
            vec![
                usage(12, 1),
                ProviderEvent::ThinkingDelta("hmm".into()),
                ProviderEvent::ThinkingSignature("sig".into()),
                ProviderEvent::TextDelta("Hi".into()),
                ProviderEvent::ToolCallStart {
                    index: 0,
                    id: "toolu_1".into(),
                    name: "read".into()
                },
                ProviderEvent::ToolCallArgsDelta { index: 0, json: "{\"path\":".into() },
                ProviderEvent::ToolCallArgsDelta { index: 0, json: "\"a\"}".into() },
                ProviderEvent::ToolCallEnd { index: 0 },
                usage(12, 30),
                ProviderEvent::Stop(StopReason::ToolUse),
            ]
        );
    }

    #[test]
    fn error_event_keeps_the_provider_message_and_kind() {
        let err = decode(&[(
            "error",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )])
        .unwrap_err();
        assert_eq!((err.kind, err.message.as_str()), (ErrorKind::Overloaded, "Overloaded"));
    }

    #[test]
    fn non_json_data_is_malformed() {
        let err = decode(&[("content_block_delta", "{not json")]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Malformed);
    }

    #[test]
    fn system_and_empty_messages_go_out_of_the_way_without_splitting_a_run() {
        let messages = vec![
            Message::user_text("u1", "first", 0),
            Message::text("s1", Role::System, "a note", 1),
            Message::text("a0", Role::Assistant, "", 2),
            Message::user_text("u2", "second", 3),
            Message::text("a1", Role::Assistant, "answer", 4),
        ];
        let request = ProviderRequest {
            model: "claude-x",
            system: "be brief",
            messages: &messages.into_iter().map(std::sync::Arc::new).collect::<Vec<_>>(),
            tools: &[],
            max_tokens: 100,
            thinking: ThinkingLevel::Off,
            context: &RequestContext::default(),
        };
        let body: Value = serde_json::from_slice(&request_body(&request).unwrap()).unwrap();
        assert_eq!(body["system"], "be brief\n\na note");
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "first"},
                    {"type": "text", "text": "second"},
                ]},
                {"role": "assistant", "content": [{"type": "text", "text": "answer"}]},
            ])
        );
        assert!(body.get("tools").is_none() && body.get("thinking").is_none());
        assert_eq!(
            (body["stream"].as_bool(), body["max_tokens"].as_u64()),
            (Some(true), Some(100))
        );
    }

    #[test]
    fn request_merges_tool_results_and_keeps_signatures() {
        let mut call = Message::text("a1", Role::Assistant, "let me look", 1);
        call.content
            .push(ContentPart::Thinking { thinking: "t".into(), signature: Some("s".into()) });
        call.content.push(ContentPart::ToolCall {
            id: "toolu_1".into(),
            name: "read".into(),
            arguments: json!({"path": "a"}),
        });
        let result = |id: &str| Message {
            content: vec![ContentPart::ToolResult {
                tool_call_id: id.into(),
                tool_name: "read".into(),
                content: "ok".into(),
                is_error: false,
            }],
            ..Message::text(id, Role::ToolResult, "", 2)
        };
        let messages =
            vec![Message::user_text("u1", "hi", 0), call, result("toolu_1"), result("toolu_2")];
        let tools = vec![ToolDefinition {
            name: "read".into(),
            description: "reads".into(),
            parameters: json!({"type": "object"}),
        }];
        let request = ProviderRequest {
            model: "claude-x",
            system: "be brief",
            messages: &messages.into_iter().map(std::sync::Arc::new).collect::<Vec<_>>(),
            tools: &tools,
            max_tokens: 100,
            thinking: ThinkingLevel::Minimal,
            context: &RequestContext::default(),
        };
        let body: Value = serde_json::from_slice(&request_body(&request).unwrap()).unwrap();
        assert_eq!(body["system"], "be brief");
        assert_eq!(body["thinking"]["budget_tokens"], 1024);
        assert_eq!(body["max_tokens"], 2048);
        assert_eq!(body["tools"][0]["input_schema"]["type"], "object");
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[1]["content"][1]["signature"], "s");
        assert_eq!(messages[1]["content"][2]["type"], "tool_use");
        assert_eq!(messages[2]["role"], "user");
        assert_eq!(messages[2]["content"].as_array().unwrap().len(), 2);
        assert_eq!(messages[2]["content"][1]["tool_use_id"], "toolu_2");
    }
}
