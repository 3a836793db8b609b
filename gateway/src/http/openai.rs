//! The OpenAI-compatible API: `POST /v1/chat/completions` (streaming and not) and
//! `GET /v1/models`, where a "model" names a BeamClaw agent and a turn runs in a session like
//! any other (OpenClaw's rules for picking the session).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use beamclaw_crdt::{SessionKey, StopReason};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{check_auth, openai_error};
use crate::feeds::{CHANNEL_SUBSCRIBER_UPDATES_MAX, Feeds, RunUpdate, Subscriber, UpdateKind};
use crate::server::Shared;
use crate::service::{Attachment, ChatSend, GatewayService, RunStatus, SendStatus, ServiceError};
use crate::util::now_ms;
use crate::ws::methods::valid_agent_id;

/// Longest time a completion may take, milliseconds.
pub(crate) const COMPLETION_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// Header that names the session explicitly (OpenClaw's).
const SESSION_KEY_HEADER: &str = "x-openclaw-session-key";
/// Session key prefixes a client may not name over HTTP (OpenClaw rejects them with 400).
const FORBIDDEN_SESSION_PREFIXES: &[&str] = &["subagent:", "cron:", "acp:"];
/// Messages in one request at most.
const REQUEST_MESSAGES_MAX: usize = 4096;
/// Longest `user` value, bytes.
const USER_BYTES_MAX: usize = 256;

#[derive(Deserialize, Debug)]
struct CompletionRequest {
    model: String,
    messages: Vec<RequestMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize, Debug, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize, Debug)]
struct RequestMessage {
    role: String,
    #[serde(default)]
    content: Option<RequestContent>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum RequestContent {
    Text(String),
    Parts(Vec<RequestPart>),
}

#[derive(Deserialize, Debug)]
struct RequestPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    image_url: Option<ImageUrl>,
}

#[derive(Deserialize, Debug)]
struct ImageUrl {
    url: String,
}

/// The agent a `model` names: `beamclaw`, `openclaw` (the default agent), `beamclaw/<id>`,
/// `openclaw/<id>` (`default` too), or `agent:<id>`.
pub(crate) fn agent_for_model(model: &str, default_agent: &str) -> Option<String> {
    let model = model.trim();
    if model == "beamclaw" || model == "openclaw" {
        return Some(default_agent.to_owned());
    }
    let rest = model
        .strip_prefix("beamclaw/")
        .or_else(|| model.strip_prefix("openclaw/"))
        .or_else(|| model.strip_prefix("agent:"))?;
    let id = rest.trim().to_ascii_lowercase();
    if id == "default" {
        return Some(default_agent.to_owned());
    }
    valid_agent_id(&id).then_some(id)
}

/// OpenClaw's session choice: the header, else `agent:<agent>:openai-user:<user>`, else a
/// fresh session per request.
pub(crate) fn session_for(
    header_key: Option<&str>,
    user: Option<&str>,
    agent: &str,
) -> Result<SessionKey, String> {
    if let Some(key) = header_key.map(str::trim).filter(|k| !k.is_empty()) {
        if let Some(prefix) = FORBIDDEN_SESSION_PREFIXES.iter().find(|p| key.starts_with(*p)) {
            return Err(format!("{SESSION_KEY_HEADER} may not name a {prefix} session"));
        }
        return SessionKey::new(key).map_err(|err| format!("{SESSION_KEY_HEADER}: {err}"));
    }
    if let Some(user) = user.map(str::trim).filter(|u| !u.is_empty()) {
        if user.len() > USER_BYTES_MAX {
            return Err(format!(
                "user is {} bytes; at most {USER_BYTES_MAX} are allowed",
                user.len()
            ));
        }
        return SessionKey::new(format!("agent:{agent}:openai-user:{user}"))
            .map_err(|err| format!("user cannot name a session: {err}"));
    }
    SessionKey::new(format!("agent:{agent}:openai:{}", uuid::Uuid::new_v4()))
        .map_err(|err| err.to_string())
}

fn service_error(err: ServiceError) -> Response {
    let (status, kind) = match &err {
        ServiceError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found_error"),
        ServiceError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        ServiceError::Forbidden { .. } => (StatusCode::FORBIDDEN, "permission_error"),
        ServiceError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        ServiceError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    openai_error(status, kind, &err.to_string())
}

fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::Length => "length",
        StopReason::Stop | StopReason::ToolUse | StopReason::Error | StopReason::Aborted => "stop",
    }
}

/// Leaves the session feed when the response (or its stream) is dropped.
struct FeedGuard<S: GatewayService> {
    feeds: Feeds<S>,
    key: SessionKey,
    id: u64,
}

impl<S: GatewayService> Drop for FeedGuard<S> {
    fn drop(&mut self) {
        self.feeds.leave(&self.key, self.id);
    }
}

pub(crate) async fn chat_completions<S: GatewayService>(
    State(shared): State<Arc<Shared<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !shared.config.chat_completions_enabled {
        return openai_error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "chat completions are disabled on this gateway (gateway.http.endpoints.chatCompletions.enabled)",
        );
    }
    if let Err(denied) = check_auth(&shared, &headers, false) {
        return denied.into_response();
    }
    let limit = shared.config.limits.max_payload_bytes;
    let Ok(bytes) = to_bytes(body, limit).await else {
        return openai_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            &format!("request body exceeds {limit} bytes"),
        );
    };
    let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
    let request: CompletionRequest = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(request) => request,
        Err(err) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("invalid request body at {}: {}", err.path(), err.inner()),
            );
        }
    };
    let Some(agent) = agent_for_model(&request.model, &shared.node.default_agent_id) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "model must name an agent: beamclaw, beamclaw/<agentId>, openclaw, openclaw/<agentId> \
             or agent:<agentId>",
        );
    };
    if request.messages.len() > REQUEST_MESSAGES_MAX {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("at most {REQUEST_MESSAGES_MAX} messages per request"),
        );
    }
    let header_key = headers.get(SESSION_KEY_HEADER).and_then(|v| v.to_str().ok());
    let session = match session_for(header_key, request.user.as_deref(), &agent) {
        Ok(session) => session,
        Err(message) => {
            return openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", &message);
        }
    };
    let Some((text, attachments)) = last_user_message(&request.messages) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "messages must contain a user message with text",
        );
    };
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= crate::protocol::params::IDEMPOTENCY_KEY_BYTES_MAX)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let send = ChatSend {
        session: session.clone(),
        message: text,
        idempotency_key,
        thinking: None,
        attachments,
        timeout_ms: Some(COMPLETION_TIMEOUT_MS),
    };
    tracing::info!(session = %session, stream = request.stream, "chat completion");
    let created = now_ms().max(0) / 1000;
    let model = request.model.clone();

    if !request.stream {
        let accepted = match shared.service.chat_send(send).await {
            Ok(accepted) => accepted,
            Err(err) => return service_error(err),
        };
        return complete(&shared, &accepted.run_id, &model, created).await;
    }

    // Streaming: follow the session before the turn starts, so no delta is missed.
    let (tx, rx) = mpsc::channel(CHANNEL_SUBSCRIBER_UPDATES_MAX);
    let id = match shared.feeds.join(&session, Subscriber::Channel(tx)).await {
        Ok(id) => id,
        Err(err) => return service_error(err),
    };
    let guard = FeedGuard { feeds: shared.feeds.clone(), key: session.clone(), id };
    let accepted = match shared.service.chat_send(send).await {
        Ok(accepted) => accepted,
        Err(err) => return service_error(err),
    };
    if accepted.status != SendStatus::Started {
        // A repeated idempotency key: the run's events are past; answer from its outcome.
        drop(guard);
        return complete(&shared, &accepted.run_id, &model, created).await;
    }
    let include_usage = request.stream_options.unwrap_or_default().include_usage;
    let state = StreamState {
        rx,
        _guard: guard,
        run_id: accepted.run_id,
        model,
        created,
        include_usage,
        phase: Phase::Start,
        deadline: Instant::now() + Duration::from_millis(COMPLETION_TIMEOUT_MS),
    };
    let stream = futures::stream::unfold(state, next_chunk);
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    response
}

/// The text (and images) of the last user message.
fn last_user_message(messages: &[RequestMessage]) -> Option<(String, Vec<Attachment>)> {
    let message = messages.iter().rev().find(|m| m.role == "user")?;
    let mut attachments = Vec::new();
    let text = match message.content.as_ref()? {
        RequestContent::Text(text) => text.clone(),
        RequestContent::Parts(parts) => {
            let mut text = String::new();
            for part in parts {
                match (part.kind.as_str(), &part.text, &part.image_url) {
                    ("text", Some(t), _) => {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(t);
                    }
                    ("image_url", _, Some(image)) => attachments.push(Attachment {
                        kind: Some("image".into()),
                        mime_type: None,
                        file_name: None,
                        content: Value::String(image.url.clone()),
                    }),
                    _ => {}
                }
            }
            text
        }
    };
    (!text.trim().is_empty()).then_some((text, attachments))
}

/// A non-streaming completion: waits for the run's outcome.
async fn complete<S: GatewayService>(
    shared: &Shared<S>,
    run_id: &str,
    model: &str,
    created: i64,
) -> Response {
    let outcome = match shared.service.run_wait(run_id.to_owned(), COMPLETION_TIMEOUT_MS).await {
        Ok(outcome) => outcome,
        Err(err) => return service_error(err),
    };
    match outcome.status {
        RunStatus::Ok => {
            let message = outcome.message;
            let text = message.as_ref().map(|m| m.text_content()).unwrap_or_default();
            let usage = message.as_ref().and_then(|m| m.usage).unwrap_or_default();
            let finish =
                message.as_ref().and_then(|m| m.stop_reason).map(finish_reason).unwrap_or("stop");
            let body = json!({
                "id": format!("chatcmpl-{run_id}"),
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": null},
                    "logprobs": null,
                    "finish_reason": finish,
                }],
                "usage": {
                    "prompt_tokens": usage.input,
                    "completion_tokens": usage.output,
                    "total_tokens": usage.input + usage.output,
                },
            });
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string())
                .into_response()
        }
        RunStatus::Timeout => openai_error(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            &format!("the agent did not finish within {COMPLETION_TIMEOUT_MS} ms"),
        ),
        RunStatus::Error => openai_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            outcome.error.as_deref().unwrap_or("the agent run failed"),
        ),
    }
}

enum Phase {
    Start,
    Streaming,
    Done,
}

struct StreamState<S: GatewayService> {
    rx: mpsc::Receiver<Arc<RunUpdate>>,
    _guard: FeedGuard<S>,
    run_id: String,
    model: String,
    created: i64,
    include_usage: bool,
    phase: Phase,
    deadline: Instant,
}

impl<S: GatewayService> StreamState<S> {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": format!("chatcmpl-{}", self.run_id),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    }
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

const DONE: &str = "data: [DONE]\n\n";

async fn next_chunk<S: GatewayService>(
    mut state: StreamState<S>,
) -> Option<(Result<Bytes, Infallible>, StreamState<S>)> {
    match state.phase {
        Phase::Done => return None,
        Phase::Start => {
            state.phase = Phase::Streaming;
            let chunk = state.chunk(json!({"role": "assistant", "content": ""}), None);
            return Some((Ok(sse(&chunk)), state));
        }
        Phase::Streaming => {}
    }
    loop {
        let update = tokio::time::timeout_at(state.deadline, state.rx.recv()).await;
        let update = match update {
            Ok(Some(update)) => update,
            Ok(None) => {
                state.phase = Phase::Done;
                let error = json!({"error": {"message": "the session stream ended before the run finished", "type": "api_error"}});
                return Some((Ok(Bytes::from(format!("data: {error}\n\n{DONE}"))), state));
            }
            Err(_) => {
                state.phase = Phase::Done;
                let error = json!({"error": {"message": format!("the agent did not finish within {COMPLETION_TIMEOUT_MS} ms"), "type": "timeout"}});
                return Some((Ok(Bytes::from(format!("data: {error}\n\n{DONE}"))), state));
            }
        };
        if update.run_id != state.run_id {
            continue;
        }
        match &update.kind {
            UpdateKind::AssistantDelta(text) => {
                let chunk = state.chunk(json!({"content": text}), None);
                return Some((Ok(sse(&chunk)), state));
            }
            UpdateKind::Final { usage, stop_reason, .. } => {
                state.phase = Phase::Done;
                let mut out = String::from_utf8_lossy(&sse(
                    &state.chunk(json!({}), Some(finish_reason(*stop_reason)))
                ))
                .into_owned();
                if state.include_usage {
                    let mut usage_chunk = state.chunk(json!({}), None);
                    usage_chunk["choices"] = json!([]);
                    usage_chunk["usage"] = json!({
                        "prompt_tokens": usage.input,
                        "completion_tokens": usage.output,
                        "total_tokens": usage.input + usage.output,
                    });
                    out.push_str(&format!("data: {usage_chunk}\n\n"));
                }
                out.push_str(DONE);
                return Some((Ok(Bytes::from(out)), state));
            }
            UpdateKind::Aborted => {
                state.phase = Phase::Done;
                let chunk = state.chunk(json!({}), Some("stop"));
                return Some((Ok(Bytes::from(format!("data: {chunk}\n\n{DONE}"))), state));
            }
            UpdateKind::Error { message } => {
                state.phase = Phase::Done;
                let error = json!({"error": {"message": message, "type": "api_error"}});
                return Some((Ok(Bytes::from(format!("data: {error}\n\n{DONE}"))), state));
            }
            UpdateKind::Other => continue,
        }
    }
}

/// `GET /v1/models`: the agents, named as `model` accepts them.
pub(crate) async fn models<S: GatewayService>(
    State(shared): State<Arc<Shared<S>>>,
    headers: HeaderMap,
) -> Response {
    if !shared.config.chat_completions_enabled {
        return openai_error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "the OpenAI API is disabled on this gateway",
        );
    }
    if let Err(denied) = check_auth(&shared, &headers, false) {
        return denied.into_response();
    }
    let created = shared.node.started_at_ms.max(0) / 1000;
    let mut ids = vec!["beamclaw".to_owned(), "openclaw".to_owned()];
    let mut agents = shared.node.agent_ids.clone();
    if agents.is_empty() {
        agents.push(shared.node.default_agent_id.clone());
    }
    for agent in &agents {
        ids.push(format!("beamclaw/{agent}"));
        ids.push(format!("openclaw/{agent}"));
    }
    let data: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "beamclaw"}))
        .collect();
    let body = json!({"object": "list", "data": data});
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_name_agents() {
        assert_eq!(agent_for_model("beamclaw", "main").as_deref(), Some("main"));
        assert_eq!(agent_for_model("openclaw/default", "main").as_deref(), Some("main"));
        assert_eq!(agent_for_model("beamclaw/ops", "main").as_deref(), Some("ops"));
        assert_eq!(agent_for_model("openclaw/Ops", "main").as_deref(), Some("ops"));
        assert_eq!(agent_for_model("agent:work", "main").as_deref(), Some("work"));
        assert_eq!(agent_for_model("gpt-4o", "main"), None);
        assert_eq!(agent_for_model("beamclaw/bad id", "main"), None);
    }

    #[test]
    fn sessions_follow_openclaw_rules() {
        assert_eq!(
            session_for(None, Some("bob"), "main").unwrap().as_str(),
            "agent:main:openai-user:bob"
        );
        assert_eq!(
            session_for(Some("agent:main:x"), Some("bob"), "main").unwrap().as_str(),
            "agent:main:x"
        );
        for key in ["subagent:1", "cron:job", "acp:x"] {
            assert!(session_for(Some(key), None, "main").unwrap_err().contains("may not name"));
        }
        let a = session_for(None, None, "main").unwrap();
        let b = session_for(None, None, "main").unwrap();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("agent:main:openai:"));
        assert!(session_for(None, Some("a/b"), "main").is_err());
    }

    #[test]
    fn the_last_user_message_is_the_prompt() {
        let messages: Vec<RequestMessage> = serde_json::from_value(json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second"},
                                          {"type": "image_url", "image_url": {"url": "data:x"}}]},
        ]))
        .unwrap();
        let (text, attachments) = last_user_message(&messages).unwrap();
        assert_eq!(text, "second");
        assert_eq!(attachments.len(), 1);
    }
}
