//! The OpenAI Chat Completions wire format (also spoken by Ollama, vLLM, LM Studio, OpenRouter):
//! the request body and the SSE chunk decoder.
//!
//! Sans-IO. Tool calls arrive as `tool_calls` deltas keyed by `index`; the id and name come in the
//! first delta of a call and the arguments in pieces after. Usage arrives in a last chunk with no
//! choices when `stream_options.include_usage` is set; `data: [DONE]` ends the stream.

use super::sse::SseEventRef;
use super::{ErrorKind, ProviderError, ProviderEvent, ProviderRequest};
use crate::config::ThinkingLevel;
use beamclaw_crdt::{ContentPart, Role, StopReason, Usage};
use serde::Serialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Which field carries the output-token limit: OpenAI's own API wants `max_completion_tokens`,
/// most compatible servers only know `max_tokens`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenLimitField {
    MaxCompletionTokens,
    MaxTokens,
}

fn reasoning_effort(level: ThinkingLevel) -> Option<&'static str> {
    match level {
        ThinkingLevel::Off => None,
        ThinkingLevel::Minimal => Some("minimal"),
        ThinkingLevel::Low => Some("low"),
        ThinkingLevel::Medium => Some("medium"),
        ThinkingLevel::High | ThinkingLevel::Xhigh => Some("high"),
    }
}

/// The JSON body of a streaming `POST <baseUrl>/chat/completions`, serialized straight from the
/// borrowed request (no `serde_json::Value` in between).
pub fn request_body(
    request: &ProviderRequest<'_>,
    limit_field: TokenLimitField,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if !request.system.is_empty() {
        messages.push(WireMessage::System { content: Cow::Borrowed(request.system) });
    }
    for message in request.messages {
        match message.role {
            Role::System => {
                messages.push(WireMessage::System { content: Cow::Owned(message.text_content()) })
            }
            Role::User => {
                let has_image =
                    message.content.iter().any(|p| matches!(p, ContentPart::Image { .. }));
                let content = if has_image {
                    WireUserContent::Parts(
                        message
                            .content
                            .iter()
                            .filter_map(|part| match part {
                                ContentPart::Text { text } => Some(WirePart::Text { text }),
                                ContentPart::Image { reference, .. } => Some(WirePart::ImageUrl {
                                    image_url: WireUrl { url: reference },
                                }),
                                _ => None,
                            })
                            .collect(),
                    )
                } else {
                    WireUserContent::Text(message.text_content())
                };
                messages.push(WireMessage::User { content });
            }
            Role::Assistant => {
                let text = message.text_content();
                let tool_calls: Vec<WireToolCall<'_>> = message
                    .content
                    .iter()
                    .filter_map(|part| match part {
                        ContentPart::ToolCall { id, name, arguments } => Some(WireToolCall {
                            id,
                            kind: "function",
                            function: WireFunction { name, arguments: arguments.to_string() },
                        }),
                        _ => None,
                    })
                    .collect();
                if text.is_empty() && tool_calls.is_empty() {
                    continue;
                }
                let content = (!text.is_empty()).then_some(text);
                messages.push(WireMessage::Assistant { content, tool_calls });
            }
            Role::ToolResult => {
                for part in &message.content {
                    if let ContentPart::ToolResult { tool_call_id, content, .. } = part {
                        messages.push(WireMessage::Tool { tool_call_id, content });
                    }
                }
            }
        }
    }
    let (max_completion_tokens, max_tokens) = match limit_field {
        TokenLimitField::MaxCompletionTokens => (Some(request.max_tokens), None),
        TokenLimitField::MaxTokens => (None, Some(request.max_tokens)),
    };
    let body = WireRequest {
        model: request.model,
        messages,
        stream: true,
        stream_options: WireStreamOptions { include_usage: true },
        max_completion_tokens,
        max_tokens,
        tools: request
            .tools
            .iter()
            .map(|t| WireTool {
                kind: "function",
                function: WireToolFunction {
                    name: &t.name,
                    description: &t.description,
                    parameters: &t.parameters,
                },
            })
            .collect(),
        reasoning_effort: reasoning_effort(request.thinking),
    };
    serde_json::to_vec(&body)
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    stream_options: WireStreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'static str>,
}

#[derive(Serialize)]
struct WireStreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum WireMessage<'a> {
    System {
        content: Cow<'a, str>,
    },
    User {
        content: WireUserContent<'a>,
    },
    Assistant {
        /// `null` when the message is only tool calls.
        content: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<WireToolCall<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: &'a str,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireUserContent<'a> {
    Text(String),
    Parts(Vec<WirePart<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WirePart<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: WireUrl<'a> },
}

#[derive(Serialize)]
struct WireUrl<'a> {
    url: &'a str,
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    /// The arguments as JSON text, as the API wants them.
    arguments: String,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireToolFunction<'a>,
}

#[derive(Serialize)]
struct WireToolFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

#[derive(Debug, Default)]
struct CallState {
    started: bool,
    ended: bool,
    id: Option<String>,
    name: Option<String>,
    /// Arguments that arrived before the id and name (some servers send them in any order).
    pending_args: String,
}

/// Turns OpenAI chunks into provider events.
#[derive(Debug)]
pub struct Decoder {
    provider: String,
    calls: BTreeMap<u64, CallState>,
    /// Our dense tool index for each wire index, in order of appearance.
    order: BTreeMap<u64, u32>,
    done: bool,
    stopped: bool,
}

impl Decoder {
    pub fn new(provider: &str) -> Self {
        Decoder {
            provider: provider.to_string(),
            calls: BTreeMap::new(),
            order: BTreeMap::new(),
            done: false,
            stopped: false,
        }
    }

    /// `[DONE]` was seen, or a finish reason (servers that omit `[DONE]` still end cleanly).
    pub fn finished(&self) -> bool {
        self.done || self.stopped
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
        let data = event.data.trim();
        if data == "[DONE]" {
            self.end_calls(out);
            self.done = true;
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| self.malformed(&format!("chunk is not JSON ({e})"), data))?;
        if let Some(error) = chunk.get("error") {
            let message = error["message"].as_str().unwrap_or("unknown error").to_string();
            let kind = match error["code"]
                .as_u64()
                .or_else(|| error["code"].as_str().and_then(|c| c.parse().ok()))
            {
                Some(status) => ErrorKind::from_status(status as u16, &message),
                None => ErrorKind::Provider,
            };
            return Err(ProviderError::new(&self.provider, kind, message));
        }
        if let Some(choices) = chunk["choices"].as_array() {
            for choice in choices.iter().filter(|c| c["index"].as_u64().unwrap_or(0) == 0) {
                self.on_choice(choice, data, out)?;
            }
        } else if chunk.get("usage").is_none() {
            return Err(self.malformed("chunk has neither choices nor usage", data));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            let get = |v: &Value| v.as_u64().unwrap_or(0);
            let cached = get(&usage["prompt_tokens_details"]["cached_tokens"]);
            out.push(ProviderEvent::Usage(Usage {
                input: get(&usage["prompt_tokens"]).saturating_sub(cached),
                output: get(&usage["completion_tokens"]),
                cache_read: cached,
                cache_write: 0,
            }));
        }
        Ok(())
    }

    fn on_choice(
        &mut self,
        choice: &Value,
        data: &str,
        out: &mut Vec<ProviderEvent>,
    ) -> Result<(), ProviderError> {
        let delta = &choice["delta"];
        for field in ["reasoning_content", "reasoning"] {
            if let Some(t) = delta[field].as_str().filter(|t| !t.is_empty()) {
                out.push(ProviderEvent::ThinkingDelta(t.to_string()));
            }
        }
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            out.push(ProviderEvent::TextDelta(t.to_string()));
        }
        if let Some(calls) = delta["tool_calls"].as_array() {
            for call in calls {
                let wire = call["index"]
                    .as_u64()
                    .ok_or_else(|| self.malformed("tool_calls delta without index", data))?;
                let next = self.order.len() as u32;
                let index = *self.order.entry(wire).or_insert(next);
                let state = self.calls.entry(wire).or_default();
                if state.ended {
                    return Err(self.malformed("tool call delta after the call ended", data));
                }
                if let Some(id) = call["id"].as_str().filter(|s| !s.is_empty()) {
                    state.id = Some(id.to_string());
                }
                if let Some(name) = call["function"]["name"].as_str().filter(|s| !s.is_empty()) {
                    state.name = Some(name.to_string());
                }
                let args = call["function"]["arguments"].as_str().unwrap_or_default();
                if !state.started {
                    state.pending_args.push_str(args);
                    if let (Some(id), Some(name)) = (&state.id, &state.name) {
                        state.started = true;
                        out.push(ProviderEvent::ToolCallStart {
                            index,
                            id: id.clone(),
                            name: name.clone(),
                        });
                        if !state.pending_args.is_empty() {
                            let json = std::mem::take(&mut state.pending_args);
                            out.push(ProviderEvent::ToolCallArgsDelta { index, json });
                        }
                    }
                } else if !args.is_empty() {
                    out.push(ProviderEvent::ToolCallArgsDelta { index, json: args.to_string() });
                }
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            if let Some((_, unstarted)) = self.calls.iter().find(|(_, c)| !c.started) {
                let what = if unstarted.id.is_none() { "an id" } else { "a name" };
                return Err(self.malformed(&format!("a tool call ended without {what}"), data));
            }
            self.end_calls(out);
            self.stopped = true;
            out.push(ProviderEvent::Stop(match reason {
                "tool_calls" | "function_call" => StopReason::ToolUse,
                "length" => StopReason::Length,
                "content_filter" => StopReason::Error,
                _ => StopReason::Stop,
            }));
        }
        Ok(())
    }

    fn end_calls(&mut self, out: &mut Vec<ProviderEvent>) {
        for (wire, state) in self.calls.iter_mut() {
            if state.started && !state.ended {
                state.ended = true;
                if let Some(index) = self.order.get(wire) {
                    out.push(ProviderEvent::ToolCallEnd { index: *index });
                }
            }
        }
    }
}

/// The provider's own error message from an error body (`{"error":{"message":...}}`).
pub fn error_message(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    match &value["error"] {
        Value::String(s) => Some(s.clone()),
        e => e["message"].as_str().map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{RequestContext, ToolDefinition};
    use beamclaw_crdt::Message;
    use serde_json::json;

    fn decode(chunks: &[&str]) -> Result<(Vec<ProviderEvent>, bool), ProviderError> {
        let mut decoder = Decoder::new("openai");
        let mut out = Vec::new();
        for data in chunks {
            decoder.on_event(SseEventRef { event: None, data }, &mut out)?;
        }
        Ok((out, decoder.finished()))
    }

    #[test]
    fn accumulates_tool_calls_by_index_and_reads_usage() {
        let (out, finished) = decode(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"read","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"exec","arguments":"{\"c"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"p\":1}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"\":2}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#,
            "[DONE]",
        ])
        .unwrap();
        assert!(finished);
        assert_eq!(
            out,
            vec![
                ProviderEvent::TextDelta("Hel".into()),
                ProviderEvent::TextDelta("lo".into()),
                ProviderEvent::ToolCallStart { index: 0, id: "call_a".into(), name: "read".into() },
                ProviderEvent::ToolCallStart { index: 1, id: "call_b".into(), name: "exec".into() },
                ProviderEvent::ToolCallArgsDelta { index: 1, json: "{\"c".into() },
                ProviderEvent::ToolCallArgsDelta { index: 0, json: "{\"p\":1}".into() },
                ProviderEvent::ToolCallArgsDelta { index: 1, json: "\":2}".into() },
                ProviderEvent::ToolCallEnd { index: 0 },
                ProviderEvent::ToolCallEnd { index: 1 },
                ProviderEvent::Stop(StopReason::ToolUse),
                ProviderEvent::Usage(Usage { input: 10, output: 5, ..Usage::default() }),
            ]
        );
    }

    #[test]
    fn reasoning_content_is_thinking() {
        let (out, _) =
            decode(&[r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}"#]).unwrap();
        assert_eq!(out, vec![ProviderEvent::ThinkingDelta("hm".into())]);
    }

    #[test]
    fn error_chunk_and_garbage_are_typed_errors() {
        let err = decode(&[r#"{"error":{"message":"slow down","code":429}}"#]).unwrap_err();
        assert_eq!((err.kind, err.message.as_str()), (ErrorKind::RateLimit, "slow down"));
        assert_eq!(decode(&["{oops"]).unwrap_err().kind, ErrorKind::Malformed);
        assert_eq!(decode(&[r#"{"id":"x"}"#]).unwrap_err().kind, ErrorKind::Malformed);
    }

    #[test]
    fn request_has_tool_role_and_tool_calls() {
        let mut call = Message::text("a", Role::Assistant, "", 1);
        call.content = vec![ContentPart::ToolCall {
            id: "call_1".into(),
            name: "read".into(),
            arguments: json!({"p": 1}),
        }];
        let mut result = Message::text("r", Role::ToolResult, "", 2);
        result.content = vec![ContentPart::ToolResult {
            tool_call_id: "call_1".into(),
            tool_name: "read".into(),
            content: "data".into(),
            is_error: false,
        }];
        let messages = vec![Message::user_text("u", "hi", 0), call, result];
        let tools = vec![ToolDefinition {
            name: "read".into(),
            description: "d".into(),
            parameters: json!({"type": "object"}),
        }];
        let request = ProviderRequest {
            model: "gpt-x",
            system: "sys",
            messages: &messages.into_iter().map(std::sync::Arc::new).collect::<Vec<_>>(),
            tools: &tools,
            max_tokens: 50,
            thinking: ThinkingLevel::Off,
            context: &RequestContext::default(),
        };
        let body: Value =
            serde_json::from_slice(&request_body(&request, TokenLimitField::MaxTokens).unwrap())
                .unwrap();
        let m = body["messages"].as_array().unwrap();
        assert_eq!(m[0]["role"], "system");
        assert_eq!(m[1]["content"], "hi");
        assert_eq!(m[2]["content"], Value::Null);
        assert_eq!(m[2]["tool_calls"][0]["function"]["arguments"], "{\"p\":1}");
        assert_eq!(m[3]["role"], "tool");
        assert_eq!(m[3]["tool_call_id"], "call_1");
        assert_eq!(body["max_tokens"], 50);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert!(body.get("reasoning_effort").is_none());
    }
}
