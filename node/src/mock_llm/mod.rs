//! `beamclaw mock-llm`: a scripted model server that speaks the Anthropic Messages and OpenAI
//! Chat Completions wire formats exactly, for tests and benchmarks.
//!
//! Owns: `POST /v1/messages` and `POST /v1/chat/completions` (streaming SSE, or one JSON body
//! when `stream` is false), driven by a script of responses consumed in order (text, thinking,
//! tool calls, usage, HTTP errors with `retry-after`, malformed events, a disconnect after N
//! events, latency, time to first token, tokens per second). With no script left it echoes the
//! last user message. Control endpoints for tests:
//! - `POST /_mock/script` loads a script (replacing what is left), `GET /_mock/script` counts it;
//! - `GET /_mock/requests` lists the requests received (path, headers, JSON body),
//!   `DELETE /_mock/requests` forgets them;
//! - `GET /_mock/health`.
//!
//! Must not know: the agent runtime (it is the other side of the wire).

pub mod script;
pub mod wire;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use script::ScriptResponse;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wire::{Api, Frame, Reply};

/// Largest request body accepted, in bytes.
pub const REQUEST_BODY_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Requests remembered for `GET /_mock/requests`; older ones are forgotten.
pub const RECORDED_REQUESTS_MAX: usize = 1000;
/// Longest wait a script may ask for (latency, time to first token), in ms.
pub const SCRIPT_DELAY_MS_MAX: u64 = 10 * 60 * 1000;
/// Pause before a scripted disconnect, so the events before it leave the server first.
pub const DISCONNECT_FLUSH_MS: u64 = 50;
/// Characters of the echoed message.
pub const ECHO_CHARS_MAX: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot read script {path}: {source}")]
    ReadScript { path: String, source: std::io::Error },
    #[error("script {path}: {source}")]
    Script { path: String, source: script::ScriptParseError },
    #[error("the mock server failed: {0}")]
    Serve(std::io::Error),
}

/// A request as the mock received it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecordedRequest {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

/// A request as stored: headers and body stay as received (reference-counted, not copied) until
/// someone asks for the list.
struct StoredRequest {
    path: &'static str,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Default)]
struct MockState {
    script: Mutex<VecDeque<ScriptResponse>>,
    requests: Mutex<VecDeque<StoredRequest>>,
    counter: AtomicU64,
}

impl MockState {
    fn next_response(&self) -> Option<ScriptResponse> {
        self.script.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    fn record(&self, request: StoredRequest) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if requests.len() == RECORDED_REQUESTS_MAX {
            requests.pop_front();
        }
        requests.push_back(request);
    }
}

/// The mock's routes over a script.
pub fn router(responses: Vec<ScriptResponse>) -> Router {
    let state =
        Arc::new(MockState { script: Mutex::new(responses.into()), ..MockState::default() });
    Router::new()
        .route("/v1/messages", post(anthropic))
        .route("/v1/chat/completions", post(openai))
        .route("/_mock/script", post(load_script).get(count_script))
        .route("/_mock/requests", get(list_requests).delete(clear_requests))
        .route("/_mock/health", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(state)
}

/// Binds `addr` and serves until the process ends. Returns the bound address once listening
/// (through `ready`), so `--listen 127.0.0.1:0` works.
pub async fn serve(
    addr: &str,
    responses: Vec<ScriptResponse>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), MockError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MockError::Bind { addr: addr.to_string(), source })?;
    let local = listener.local_addr().map_err(MockError::Serve)?;
    ready(local);
    axum::serve(listener, router(responses)).await.map_err(MockError::Serve)
}

/// Starts the mock on a free loopback port in this process (for tests and benches).
pub async fn spawn(responses: Vec<ScriptResponse>) -> Result<SocketAddr, MockError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| MockError::Bind { addr: "127.0.0.1:0".into(), source })?;
    let local = listener.local_addr().map_err(MockError::Serve)?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(responses)).await {
            tracing::error!(error = %e, "mock LLM server stopped");
        }
    });
    Ok(local)
}

/// Reads a script file.
pub fn read_script(path: &std::path::Path) -> Result<Vec<ScriptResponse>, MockError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|source| MockError::ReadScript { path: shown.clone(), source })?;
    script::parse(&text).map_err(|source| MockError::Script { path: shown, source })
}

async fn load_script(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body);
    match script::parse(&text) {
        Ok(responses) => {
            let count = responses.len();
            *state.script.lock().unwrap_or_else(|p| p.into_inner()) = responses.into();
            Json(json!({"loaded": count})).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"error": e.to_string()}))).into_response(),
    }
}

async fn count_script(State(state): State<Arc<MockState>>) -> Response {
    let left = state.script.lock().unwrap_or_else(|p| p.into_inner()).len();
    Json(json!({"remaining": left})).into_response()
}

async fn list_requests(State(state): State<Arc<MockState>>) -> Response {
    let requests: Vec<RecordedRequest> = state
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|r| RecordedRequest {
            path: r.path.to_string(),
            headers: r
                .headers
                .iter()
                .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
                .collect(),
            body: serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        })
        .collect();
    Json(json!(requests)).into_response()
}

async fn clear_requests(State(state): State<Arc<MockState>>) -> Response {
    state.requests.lock().unwrap_or_else(|p| p.into_inner()).clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn anthropic(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(Api::Anthropic, "/v1/messages", &state, &headers, body).await
}

async fn openai(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    respond(Api::OpenAi, "/v1/chat/completions", &state, &headers, body).await
}

fn bad_request(api: Api, message: String) -> Response {
    let error =
        script::ScriptError { status: 400, message: Some(message), body: None, retry_after: None };
    (StatusCode::BAD_REQUEST, Json(wire::error_body(api, &error))).into_response()
}

/// The fields of a request the mock reads. Each stays raw JSON (borrowed from the body, not
/// copied) until used and is read leniently: a field of an unexpected type counts as absent, as
/// when the whole body was read as a `serde_json::Value`.
#[derive(serde::Deserialize)]
struct RequestFields<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// A raw field as `T`, or `None` when it is absent or of another type.
fn read<'a, T: serde::Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<T> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

/// The last element of the `messages` array, the only message the echo reads.
fn last_message(messages: Option<&RawValue>) -> Value {
    let all: Option<Vec<&RawValue>> = read(messages);
    all.and_then(|m| m.last().and_then(|last| serde_json::from_str(last.get()).ok()))
        .unwrap_or(Value::Null)
}

async fn respond(
    api: Api,
    path: &'static str,
    state: &MockState,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    // Reading the fields also checks that the whole body is JSON.
    let request: RequestFields<'_> = match serde_json::from_slice(&body) {
        Ok(v) => v,
        // Valid JSON of another shape (not an object): no field is present.
        Err(e) if e.is_data() && serde_json::from_slice::<IgnoredAny>(&body).is_ok() => {
            RequestFields { model: None, stream: None, stream_options: None, messages: None }
        }
        Err(e) => return bad_request(api, format!("the request body is not JSON: {e}")),
    };
    state.record(StoredRequest { path, headers: headers.clone(), body: body.clone() });
    let n = state.counter.fetch_add(1, Ordering::Relaxed) + 1;
    let response = state.next_response().unwrap_or_else(|| ScriptResponse {
        text: Some(echo(api, &last_message(request.messages))),
        ..ScriptResponse::default()
    });
    let clamp = |ms: u64| Duration::from_millis(ms.min(SCRIPT_DELAY_MS_MAX));
    if response.latency_ms > 0 {
        tokio::time::sleep(clamp(response.latency_ms)).await;
    }
    if let Some(error) = &response.error {
        let status =
            StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut reply = (status, Json(wire::error_body(api, error))).into_response();
        if let Some(retry) =
            error.retry_after.as_deref().and_then(|r| header::HeaderValue::from_str(r).ok())
        {
            reply.headers_mut().insert(header::RETRY_AFTER, retry);
        }
        return reply;
    }
    let model: String = read(request.model).unwrap_or_else(|| "mock".into());
    let stream: bool = read(request.stream).unwrap_or(false);
    let include_usage = read::<StreamOptions>(request.stream_options)
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let input_chars = body.len();
    let reply = Reply::new(api, &response, &model, n, input_chars, include_usage || !stream);
    if !stream {
        let body = match api {
            Api::Anthropic => wire::anthropic_body(&reply),
            Api::OpenAi => wire::openai_body(&reply),
        };
        return Json(body).into_response();
    }
    let mut frames = match api {
        Api::Anthropic => wire::anthropic_frames(&reply),
        Api::OpenAi => wire::openai_frames(&reply),
    };
    if response.malformed {
        let at =
            frames.iter().position(|f| f.content).map(|i| i + 1).unwrap_or(frames.len().min(1));
        frames.truncate(at);
        frames.push(wire::malformed_frame(api));
    }
    let ttft = clamp(response.ttft_ms);
    let per_token = response.tokens_per_second.map(|t| Duration::from_secs_f64(1.0 / t));
    let disconnect = response.disconnect_after_chunks.filter(|n| *n < frames.len());
    let segments = segments(frames, ttft, per_token, disconnect);
    let body = Body::from_stream(futures::stream::unfold(
        (segments.into_iter(), disconnect.is_some()),
        |(mut segments, disconnect)| async move {
            match segments.next() {
                Some((delay, bytes)) => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Some((Ok(Bytes::from(bytes)), (segments, disconnect)))
                }
                None if disconnect => {
                    // Let the server flush what was sent before the connection drops, so the
                    // client really receives the first N events.
                    tokio::time::sleep(Duration::from_millis(DISCONNECT_FLUSH_MS)).await;
                    let cut = std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "scripted disconnect",
                    );
                    Some((Err(cut), (segments, false)))
                }
                None => None,
            }
        },
    ));
    let request_id = format!("req_mock_{n}");
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("request-id", &request_id)
        .header("x-request-id", &request_id)
        .body(body)
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

/// Groups frames into the pieces the server writes, each with the wait before it: frames with no
/// wait between them go out together (fewer writes and wake-ups, as a real server's buffered
/// writes), content frames are paced by `ttft` then `per_token`, and nothing after the scripted
/// disconnect point is sent.
fn segments(
    frames: Vec<Frame>,
    ttft: Duration,
    per_token: Option<Duration>,
    disconnect: Option<usize>,
) -> Vec<(Duration, String)> {
    let mut segments: Vec<(Duration, String)> = Vec::new();
    let mut started = false;
    for (i, frame) in frames.into_iter().enumerate() {
        if disconnect == Some(i) {
            break;
        }
        let delay = match (frame.content, started) {
            (false, _) => Duration::ZERO,
            (true, false) => {
                started = true;
                ttft
            }
            (true, true) => per_token.unwrap_or(Duration::ZERO),
        };
        match segments.last_mut() {
            Some((_, bytes)) if delay.is_zero() => bytes.push_str(&frame.bytes),
            _ => segments.push((delay, frame.bytes)),
        }
    }
    segments
}

/// `echo: <last user text>` (or the last tool result), deterministic, from the request's last
/// message.
fn echo(api: Api, last: &Value) -> String {
    let text = match (&last["content"], api) {
        (Value::String(s), _) if last["role"] == "tool" => format!("tool result: {s}"),
        (Value::String(s), _) => s.clone(),
        (Value::Array(parts), _) => parts
            .iter()
            .filter_map(|p| match p["type"].as_str() {
                Some("text") => p["text"].as_str().map(str::to_string),
                Some("tool_result") => match &p["content"] {
                    Value::String(s) => Some(format!("tool result: {s}")),
                    other => Some(format!("tool result: {other}")),
                },
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    let text: String = text.chars().take(ECHO_CHARS_MAX).collect();
    format!("echo: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str, content: bool) -> Frame {
        Frame { bytes: text.to_string(), content }
    }

    #[test]
    fn frames_without_a_wait_between_them_go_out_together() {
        let frames =
            || vec![frame("a", false), frame("b", true), frame("c", true), frame("d", false)];
        let ms = Duration::from_millis;
        assert_eq!(
            segments(frames(), ms(10), None, None),
            vec![(ms(0), "a".into()), (ms(10), "bcd".into())]
        );
        assert_eq!(
            segments(frames(), ms(0), Some(ms(5)), None),
            vec![(ms(0), "ab".into()), (ms(5), "cd".into())]
        );
        assert_eq!(segments(frames(), ms(0), None, Some(2)), vec![(ms(0), "ab".into())]);
    }

    #[test]
    fn echo_reads_both_apis_last_message() {
        let a =
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        assert_eq!(echo(Api::Anthropic, &a["messages"][0]), "echo: hi");
        let o = json!({"messages": [{"role": "user", "content": "yo"}, {"role": "tool", "tool_call_id": "c", "content": "42"}]});
        assert_eq!(echo(Api::OpenAi, &o["messages"][1]), "echo: tool result: 42");
    }
}
