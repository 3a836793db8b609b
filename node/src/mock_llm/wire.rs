//! What the mock sends: a scripted response rendered in the Anthropic Messages or OpenAI Chat
//! Completions wire format, streaming (SSE events) or not (one JSON body).

use super::script::{CHUNK_CHARS_DEFAULT, ScriptError, ScriptResponse};
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::{Value, json};

/// Which API a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Anthropic,
    OpenAi,
}

/// One SSE event of a streamed response. `content` marks text, thinking and argument deltas:
/// the ones paced by `ttftMs` and `tokensPerSecond`.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub bytes: String,
    pub content: bool,
}

/// A response with every optional part filled in.
#[derive(Clone, Debug)]
pub struct Reply {
    pub id: String,
    pub model: String,
    pub text: String,
    pub thinking: String,
    pub tool_calls: Vec<(String, String, String)>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub stop_reason: Option<String>,
    pub chunk_chars: usize,
    pub include_usage: bool,
}

impl Reply {
    /// Fills in ids and usage. `n` numbers the request (for ids); `input_chars` sizes the
    /// default input usage.
    pub fn new(
        api: Api,
        response: &ScriptResponse,
        model: &str,
        n: u64,
        input_chars: usize,
        include_usage: bool,
    ) -> Self {
        let text = response.text.clone().unwrap_or_default();
        let thinking = response.thinking.clone().unwrap_or_default();
        let tool_calls = response
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let id = c.id.clone().unwrap_or_else(|| match api {
                    Api::Anthropic => format!("toolu_mock_{n}_{i}"),
                    Api::OpenAi => format!("call_mock_{n}_{i}"),
                });
                (id, c.name.clone(), c.arguments.to_string())
            })
            .collect::<Vec<_>>();
        let produced: usize = text.chars().count()
            + thinking.chars().count()
            + tool_calls.iter().map(|(_, name, args)| name.len() + args.len()).sum::<usize>();
        let usage = response.usage;
        Reply {
            id: match api {
                Api::Anthropic => format!("msg_mock_{n}"),
                Api::OpenAi => format!("chatcmpl-mock-{n}"),
            },
            model: model.to_string(),
            text,
            thinking,
            tool_calls,
            input_tokens: usage.map(|u| u.input).unwrap_or((input_chars / 4).max(1) as u64),
            output_tokens: usage.map(|u| u.output).unwrap_or((produced / 4).max(1) as u64),
            stop_reason: response.stop_reason.clone(),
            chunk_chars: response.chunk_chars.unwrap_or(CHUNK_CHARS_DEFAULT),
            include_usage,
        }
    }

    fn anthropic_stop(&self) -> String {
        self.stop_reason.clone().unwrap_or_else(|| {
            if self.tool_calls.is_empty() { "end_turn".into() } else { "tool_use".into() }
        })
    }

    fn openai_stop(&self) -> String {
        self.stop_reason.clone().unwrap_or_else(|| {
            if self.tool_calls.is_empty() { "stop".into() } else { "tool_calls".into() }
        })
    }
}

/// Splits `text` into pieces of `size` characters (borrowed, no copy).
pub fn chunks(text: &str, size: usize) -> impl Iterator<Item = &str> {
    let size = size.max(1);
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.char_indices().nth(size).map(|(at, _)| at).unwrap_or(rest.len());
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

fn sse(event: Option<&str>, data: &impl Serialize) -> String {
    let json = serde_json::to_string(data).unwrap_or_else(|e| {
        // Not reachable with these event types (string keys only); say so on the wire if it is.
        format!(
            r#"{{"type":"error","error":{{"type":"api_error","message":{:?}}}}}"#,
            e.to_string()
        )
    });
    match event {
        Some(name) => format!("event: {name}\ndata: {json}\n\n"),
        None => format!("data: {json}\n\n"),
    }
}

/// The Anthropic stream events, in the API's field order (`type` first).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnthropicEvent<'a> {
    MessageStart { message: MessageStart<'a> },
    Ping,
    ContentBlockStart { index: u32, content_block: StartBlock<'a> },
    ContentBlockDelta { index: u32, delta: Delta<'a> },
    ContentBlockStop { index: u32 },
    MessageDelta { delta: StopDelta, usage: OutputUsage },
    MessageStop,
}

impl AnthropicEvent<'_> {
    fn name(&self) -> &'static str {
        match self {
            AnthropicEvent::MessageStart { .. } => "message_start",
            AnthropicEvent::Ping => "ping",
            AnthropicEvent::ContentBlockStart { .. } => "content_block_start",
            AnthropicEvent::ContentBlockDelta { .. } => "content_block_delta",
            AnthropicEvent::ContentBlockStop { .. } => "content_block_stop",
            AnthropicEvent::MessageDelta { .. } => "message_delta",
            AnthropicEvent::MessageStop => "message_stop",
        }
    }
}

#[derive(Serialize)]
struct MessageStart<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: [(); 0],
    stop_reason: Option<()>,
    stop_sequence: Option<()>,
    usage: StartUsage,
}

#[derive(Serialize)]
struct StartUsage {
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock<'a> {
    Thinking { thinking: &'static str, signature: &'static str },
    Text { text: &'static str },
    ToolUse { id: &'a str, name: &'a str, input: EmptyObject },
}

/// `{}`.
struct EmptyObject;

impl Serialize for EmptyObject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_map(Some(0))?.end()
    }
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum Delta<'a> {
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: String,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u64,
}

/// The streamed events of an Anthropic Messages response.
pub fn anthropic_frames(reply: &Reply) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut push = |event: AnthropicEvent<'_>, content: bool| {
        frames.push(Frame { bytes: sse(Some(event.name()), &event), content });
    };
    push(
        AnthropicEvent::MessageStart {
            message: MessageStart {
                id: &reply.id,
                kind: "message",
                role: "assistant",
                model: &reply.model,
                content: [],
                stop_reason: None,
                stop_sequence: None,
                usage: StartUsage { input_tokens: reply.input_tokens, output_tokens: 1 },
            },
        },
        false,
    );
    push(AnthropicEvent::Ping, false);
    let mut index = 0;
    if !reply.thinking.is_empty() {
        let content_block = StartBlock::Thinking { thinking: "", signature: "" };
        push(AnthropicEvent::ContentBlockStart { index, content_block }, false);
        for thinking in chunks(&reply.thinking, reply.chunk_chars) {
            let delta = Delta::Thinking { thinking };
            push(AnthropicEvent::ContentBlockDelta { index, delta }, true);
        }
        let signature = format!("sig_{}", reply.id);
        let delta = Delta::Signature { signature: &signature };
        push(AnthropicEvent::ContentBlockDelta { index, delta }, false);
        push(AnthropicEvent::ContentBlockStop { index }, false);
        index += 1;
    }
    if !reply.text.is_empty() || reply.tool_calls.is_empty() {
        let content_block = StartBlock::Text { text: "" };
        push(AnthropicEvent::ContentBlockStart { index, content_block }, false);
        for text in chunks(&reply.text, reply.chunk_chars) {
            push(AnthropicEvent::ContentBlockDelta { index, delta: Delta::Text { text } }, true);
        }
        push(AnthropicEvent::ContentBlockStop { index }, false);
        index += 1;
    }
    for (id, name, args) in &reply.tool_calls {
        let content_block = StartBlock::ToolUse { id, name, input: EmptyObject };
        push(AnthropicEvent::ContentBlockStart { index, content_block }, false);
        for partial_json in chunks(args, reply.chunk_chars) {
            let delta = Delta::InputJson { partial_json };
            push(AnthropicEvent::ContentBlockDelta { index, delta }, true);
        }
        push(AnthropicEvent::ContentBlockStop { index }, false);
        index += 1;
    }
    push(
        AnthropicEvent::MessageDelta {
            delta: StopDelta { stop_reason: reply.anthropic_stop(), stop_sequence: None },
            usage: OutputUsage { output_tokens: reply.output_tokens },
        },
        false,
    );
    push(AnthropicEvent::MessageStop, false);
    frames
}

/// The non-streaming Anthropic Messages body.
pub fn anthropic_body(reply: &Reply) -> Value {
    let mut content = Vec::new();
    if !reply.thinking.is_empty() {
        content.push(json!({"type": "thinking", "thinking": reply.thinking, "signature": format!("sig_{}", reply.id)}));
    }
    if !reply.text.is_empty() || reply.tool_calls.is_empty() {
        content.push(json!({"type": "text", "text": reply.text}));
    }
    for (id, name, args) in &reply.tool_calls {
        let input: Value = serde_json::from_str(args).unwrap_or(Value::Null);
        content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    json!({
        "id": reply.id, "type": "message", "role": "assistant", "model": reply.model,
        "content": content, "stop_reason": reply.anthropic_stop(), "stop_sequence": null,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
    })
}

const CREATED_S: u64 = 1_700_000_000;

fn openai_chunk(reply: &Reply, delta: Value, finish: Option<&str>) -> Value {
    let mut chunk = json!({
        "id": reply.id, "object": "chat.completion.chunk", "created": CREATED_S, "model": reply.model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    if reply.include_usage {
        chunk["usage"] = Value::Null;
    }
    chunk
}

/// The streamed chunks of an OpenAI Chat Completions response.
pub fn openai_frames(reply: &Reply) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut push =
        |data: Value, content: bool| frames.push(Frame { bytes: sse(None, &data), content });
    push(openai_chunk(reply, json!({"role": "assistant", "content": ""}), None), false);
    for piece in chunks(&reply.thinking, reply.chunk_chars) {
        push(openai_chunk(reply, json!({"reasoning_content": piece}), None), true);
    }
    for piece in chunks(&reply.text, reply.chunk_chars) {
        push(openai_chunk(reply, json!({"content": piece}), None), true);
    }
    for (i, (id, name, args)) in reply.tool_calls.iter().enumerate() {
        push(
            openai_chunk(
                reply,
                json!({"tool_calls": [{"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                None,
            ),
            false,
        );
        for piece in chunks(args, reply.chunk_chars) {
            push(
                openai_chunk(
                    reply,
                    json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                    None,
                ),
                true,
            );
        }
    }
    push(openai_chunk(reply, json!({}), Some(&reply.openai_stop())), false);
    if reply.include_usage {
        push(
            json!({
                "id": reply.id, "object": "chat.completion.chunk", "created": CREATED_S, "model": reply.model,
                "system_fingerprint": null, "choices": [],
                "usage": {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                          "total_tokens": reply.input_tokens + reply.output_tokens},
            }),
            false,
        );
    }
    frames.push(Frame { bytes: "data: [DONE]\n\n".into(), content: false });
    frames
}

/// The non-streaming OpenAI Chat Completions body.
pub fn openai_body(reply: &Reply) -> Value {
    let mut message = json!({"role": "assistant", "content": if reply.text.is_empty() && !reply.tool_calls.is_empty() { Value::Null } else { json!(reply.text) }});
    if !reply.thinking.is_empty() {
        message["reasoning_content"] = json!(reply.thinking);
    }
    if !reply.tool_calls.is_empty() {
        message["tool_calls"] = reply
            .tool_calls
            .iter()
            .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
            .collect();
    }
    json!({
        "id": reply.id, "object": "chat.completion", "created": CREATED_S, "model": reply.model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": reply.openai_stop()}],
        "usage": {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                  "total_tokens": reply.input_tokens + reply.output_tokens},
    })
}

/// The error body the real API would send for `status`.
pub fn error_body(api: Api, error: &ScriptError) -> Value {
    if let Some(body) = &error.body {
        return body.clone();
    }
    let (anthropic_type, openai_type) = match error.status {
        400 => ("invalid_request_error", "invalid_request_error"),
        401 => ("authentication_error", "invalid_request_error"),
        402 => ("billing_error", "insufficient_quota"),
        403 => ("permission_error", "invalid_request_error"),
        404 => ("not_found_error", "invalid_request_error"),
        413 => ("request_too_large", "invalid_request_error"),
        429 => ("rate_limit_error", "rate_limit_exceeded"),
        529 => ("overloaded_error", "server_error"),
        _ => ("api_error", "server_error"),
    };
    let message = error
        .message
        .clone()
        .unwrap_or_else(|| format!("mock error {} ({anthropic_type})", error.status));
    match api {
        Api::Anthropic => {
            json!({"type": "error", "error": {"type": anthropic_type, "message": message}})
        }
        Api::OpenAi => {
            json!({"error": {"message": message, "type": openai_type, "param": null, "code": error.status.to_string()}})
        }
    }
}

/// A broken event: the stream claims an event but its data is not JSON.
pub fn malformed_frame(api: Api) -> Frame {
    let bytes = match api {
        Api::Anthropic => {
            "event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\"\n\n"
        }
        Api::OpenAi => "data: {\"id\": \"chatcmpl-broken\", \"choices\": [\n\n",
    };
    Frame { bytes: bytes.into(), content: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_llm::script::ScriptToolCall;
    use crate::provider::sse::SseParser;
    use crate::provider::{ProviderEvent, anthropic, openai};

    fn response() -> ScriptResponse {
        ScriptResponse {
            text: Some("Hello, world".into()),
            thinking: Some("pondering".into()),
            tool_calls: vec![ScriptToolCall {
                id: None,
                name: "read".into(),
                arguments: json!({"path": "a"}),
            }],
            chunk_chars: Some(3),
            ..ScriptResponse::default()
        }
    }

    /// The mock's frames, decoded by the runtime's own decoders, give back the script.
    fn roundtrip(api: Api) -> Vec<ProviderEvent> {
        let reply = Reply::new(api, &response(), "m", 1, 40, true);
        let frames = match api {
            Api::Anthropic => anthropic_frames(&reply),
            Api::OpenAi => openai_frames(&reply),
        };
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for f in &frames {
            parser.feed(f.bytes.as_bytes(), &mut events).unwrap();
        }
        let mut out = Vec::new();
        match api {
            Api::Anthropic => {
                let mut d = anthropic::Decoder::new("mock");
                for e in &events {
                    d.on_event(e.as_ref(), &mut out).unwrap();
                }
                assert!(d.finished());
            }
            Api::OpenAi => {
                let mut d = openai::Decoder::new("mock");
                for e in &events {
                    d.on_event(e.as_ref(), &mut out).unwrap();
                }
                assert!(d.finished());
            }
        }
        out
    }

    fn summarize(events: &[ProviderEvent]) -> (String, String, String, Vec<String>) {
        let mut text = String::new();
        let mut thinking = String::new();
        let mut args = String::new();
        let mut names = Vec::new();
        for e in events {
            match e {
                ProviderEvent::TextDelta(t) => text.push_str(t),
                ProviderEvent::ThinkingDelta(t) => thinking.push_str(t),
                ProviderEvent::ToolCallArgsDelta { json, .. } => args.push_str(json),
                ProviderEvent::ToolCallStart { name, .. } => names.push(name.clone()),
                _ => {}
            }
        }
        (text, thinking, args, names)
    }

    #[test]
    fn anthropic_and_openai_frames_decode_to_the_script() {
        for api in [Api::Anthropic, Api::OpenAi] {
            let (text, thinking, args, names) = summarize(&roundtrip(api));
            assert_eq!(text, "Hello, world", "{api:?}");
            assert_eq!(thinking, "pondering", "{api:?}");
            assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"path": "a"}));
            assert_eq!(names, vec!["read"]);
        }
    }

    #[test]
    fn chunks_split_by_characters() {
        assert_eq!(chunks("héllo", 2).collect::<Vec<_>>(), vec!["hé", "ll", "o"]);
        assert_eq!(chunks("", 3).count(), 0);
    }
}
