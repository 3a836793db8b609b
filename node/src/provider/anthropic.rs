//! The Anthropic Messages API wire format: the request body and the SSE stream decoder.
//!
//! Sans-IO: `request_body` turns a [`ProviderRequest`] into JSON; [`Decoder`] turns SSE events
//! (message_start, content_block_start/delta/stop, message_delta, message_stop, ping, error) into
//! [`ProviderEvent`]s. `http` does the I/O.

use super::sse::SseEvent;
use super::{ErrorKind, ProviderError, ProviderEvent, ProviderRequest};
use crate::config::ThinkingLevel;
use beamclaw_crdt::{ContentPart, Message, Role, StopReason, Usage};
use serde_json::{Value, json};
use std::collections::BTreeMap;

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

/// The JSON body of a streaming `POST /v1/messages`.
pub fn request_body(request: &ProviderRequest) -> Value {
    let mut system = request.system.clone();
    let mut messages: Vec<Value> = Vec::new();
    for message in &request.messages {
        let (role, blocks) = match message.role {
            Role::System => {
                let text = message.text_content();
                if !text.is_empty() {
                    if !system.is_empty() {
                        system.push_str("\n\n");
                    }
                    system.push_str(&text);
                }
                continue;
            }
            Role::User | Role::ToolResult => ("user", user_blocks(message)),
            Role::Assistant => ("assistant", assistant_blocks(message)),
        };
        if blocks.is_empty() {
            continue;
        }
        // Consecutive messages of one role become one message (tool results after a tool call
        // must all be in the next user message).
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(content) = last["content"].as_array_mut() {
                    content.extend(blocks);
                }
            }
            _ => messages.push(json!({ "role": role, "content": blocks })),
        }
    }
    let mut max_tokens = request.max_tokens;
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "stream": true,
    });
    if !system.is_empty() {
        body["system"] = json!(system);
    }
    if !request.tools.is_empty() {
        body["tools"] = Value::Array(
            request
                .tools
                .iter()
                .map(|t| {
                    json!({"name": t.name, "description": t.description, "input_schema": t.parameters})
                })
                .collect(),
        );
    }
    if let Some(budget) = thinking_budget_tokens(request.thinking) {
        // The budget counts towards max_tokens, which must exceed it.
        max_tokens = max_tokens.max(budget.saturating_add(1024));
        body["thinking"] = json!({"type": "enabled", "budget_tokens": budget});
    }
    body["max_tokens"] = json!(max_tokens);
    body
}

fn user_blocks(message: &Message) -> Vec<Value> {
    message
        .content
        .iter()
        .filter_map(|part| match part {
            ContentPart::Text { text } if !text.is_empty() => {
                Some(json!({"type": "text", "text": text}))
            }
            ContentPart::ToolResult { tool_call_id, content, is_error, .. } => Some(json!({
                "type": "tool_result",
                "tool_use_id": tool_call_id,
                "content": content,
                "is_error": is_error,
            })),
            ContentPart::Image { mime_type, reference } => Some(image_block(mime_type, reference)),
            _ => None,
        })
        .collect()
}

fn image_block(mime_type: &str, reference: &str) -> Value {
    match reference.strip_prefix("data:").and_then(|r| r.split_once(";base64,")) {
        Some((_, data)) => json!({
            "type": "image",
            "source": {"type": "base64", "media_type": mime_type, "data": data},
        }),
        None if reference.starts_with("https://") || reference.starts_with("http://") => {
            json!({"type": "image", "source": {"type": "url", "url": reference}})
        }
        None => json!({"type": "text", "text": format!("[image {mime_type}: {reference}]")}),
    }
}

fn assistant_blocks(message: &Message) -> Vec<Value> {
    message
        .content
        .iter()
        .filter_map(|part| match part {
            ContentPart::Text { text } if !text.is_empty() => {
                Some(json!({"type": "text", "text": text}))
            }
            // A thinking block is only accepted back with its signature.
            ContentPart::Thinking { thinking, signature: Some(signature) } => {
                Some(json!({"type": "thinking", "thinking": thinking, "signature": signature}))
            }
            ContentPart::ToolCall { id, name, arguments } => Some(json!({
                "type": "tool_use", "id": id, "name": name, "input": arguments,
            })),
            _ => None,
        })
        .collect()
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
        event: &SseEvent,
        out: &mut Vec<ProviderEvent>,
    ) -> Result<(), ProviderError> {
        let value: Value = serde_json::from_str(&event.data)
            .map_err(|e| self.malformed(&format!("event data is not JSON ({e})"), &event.data))?;
        let kind = value["type"].as_str().or(event.event.as_deref()).unwrap_or_default();
        match kind {
            "message_start" => {
                self.read_usage(&value["message"]["usage"]);
                out.push(ProviderEvent::Usage(self.usage));
            }
            "content_block_start" => {
                let index = self.index(&value, &event.data)?;
                let block = &value["content_block"];
                let kind = match block["type"].as_str() {
                    Some("text") => {
                        if let Some(text) = block["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(ProviderEvent::TextDelta(text.to_string()));
                        }
                        Block::Text
                    }
                    Some("thinking") => Block::Thinking,
                    Some("tool_use") => {
                        let (Some(id), Some(name)) = (block["id"].as_str(), block["name"].as_str())
                        else {
                            return Err(
                                self.malformed("tool_use block without id or name", &event.data)
                            );
                        };
                        let tool_index = self.tool_calls;
                        self.tool_calls += 1;
                        out.push(ProviderEvent::ToolCallStart {
                            index: tool_index,
                            id: id.to_string(),
                            name: name.to_string(),
                        });
                        Block::ToolUse { index: tool_index }
                    }
                    _ => Block::Other,
                };
                self.blocks.insert(index, kind);
            }
            "content_block_delta" => {
                let index = self.index(&value, &event.data)?;
                let block = self.blocks.get(&index).copied();
                let delta = &value["delta"];
                let text = |field: &str| delta[field].as_str().map(str::to_string);
                match (delta["type"].as_str(), block) {
                    (Some("text_delta"), Some(Block::Text)) => {
                        if let Some(t) = text("text") {
                            out.push(ProviderEvent::TextDelta(t));
                        }
                    }
                    (Some("thinking_delta"), Some(Block::Thinking)) => {
                        if let Some(t) = text("thinking") {
                            out.push(ProviderEvent::ThinkingDelta(t));
                        }
                    }
                    (Some("signature_delta"), Some(Block::Thinking)) => {
                        if let Some(s) = text("signature") {
                            out.push(ProviderEvent::ThinkingSignature(s));
                        }
                    }
                    (Some("input_json_delta"), Some(Block::ToolUse { index })) => {
                        if let Some(json) = text("partial_json") {
                            out.push(ProviderEvent::ToolCallArgsDelta { index, json });
                        }
                    }
                    (_, None) => {
                        return Err(
                            self.malformed("delta for a block that was not started", &event.data)
                        );
                    }
                    // Deltas of kinds we do not use (citations, redacted thinking...).
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = self.index(&value, &event.data)?;
                if let Some(Block::ToolUse { index }) = self.blocks.get(&index).copied() {
                    out.push(ProviderEvent::ToolCallEnd { index });
                }
            }
            "message_delta" => {
                self.read_usage(&value["usage"]);
                out.push(ProviderEvent::Usage(self.usage));
                if let Some(reason) = value["delta"]["stop_reason"].as_str() {
                    out.push(ProviderEvent::Stop(stop_reason(reason)));
                }
            }
            "message_stop" => self.finished = true,
            "ping" => {}
            "error" => {
                let error = &value["error"];
                let message = error["message"].as_str().unwrap_or("unknown error").to_string();
                let kind = match error["type"].as_str() {
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
                return Err(self.malformed(&format!("unknown event type {other:?}"), &event.data));
            }
        }
        Ok(())
    }

    fn index(&self, value: &Value, data: &str) -> Result<u64, ProviderError> {
        value["index"].as_u64().ok_or_else(|| self.malformed("event without an index", data))
    }

    fn read_usage(&mut self, usage: &Value) {
        let get = |field: &str| usage[field].as_u64();
        if let Some(n) = get("input_tokens") {
            self.usage.input = n;
        }
        if let Some(n) = get("output_tokens") {
            self.usage.output = n;
        }
        if let Some(n) = get("cache_read_input_tokens") {
            self.usage.cache_read = n;
        }
        if let Some(n) = get("cache_creation_input_tokens") {
            self.usage.cache_write = n;
        }
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
    use crate::provider::{RequestContext, ToolDefinition};

    fn decode(events: &[(&str, &str)]) -> Result<Vec<ProviderEvent>, ProviderError> {
        let mut decoder = Decoder::new("anthropic");
        let mut out = Vec::new();
        for (name, data) in events {
            let event = SseEvent { event: Some(name.to_string()), data: data.to_string() };
            decoder.on_event(&event, &mut out)?;
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
        let request = ProviderRequest {
            model: "claude-x".into(),
            system: "be brief".into(),
            messages: vec![
                Message::user_text("u1", "hi", 0),
                call,
                result("toolu_1"),
                result("toolu_2"),
            ],
            tools: vec![ToolDefinition {
                name: "read".into(),
                description: "reads".into(),
                parameters: json!({"type": "object"}),
            }],
            max_tokens: 100,
            thinking: ThinkingLevel::Minimal,
            context: RequestContext::default(),
        };
        let body = request_body(&request);
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
