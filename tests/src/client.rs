//! An OpenClaw gateway client over WebSocket, as `beamclaw chat` does it (node/src/cli/client.rs):
//! the challenge, `connect` with the shared token, requests, and the events that arrive between
//! answers, kept in order.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long the WebSocket upgrade and the handshake may take.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Events kept while waiting for answers, at most (older ones are dropped first: a test that
/// does not read its events does not care about them).
pub const PENDING_EVENTS_MAX: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the gateway refused the connection: {0}")]
    Refused(String),
    #[error("the connection closed: {0}")]
    Closed(String),
    #[error("the gateway sent something unexpected: {0}")]
    Protocol(String),
    #[error("{method} failed: {code}: {message}")]
    Method { method: String, code: String, message: String, retryable: bool },
    #[error("timed out after {0} ms")]
    Timeout(u64),
}

impl ClientError {
    /// The connection is gone (closed, refused, never opened): reconnect.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::Closed(_))
    }
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    url: String,
    next_id: u64,
    pending_events: VecDeque<Value>,
}

impl Client {
    /// Connects to `url` (`ws://host:port`) as a test client with every operator scope.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
        let (ws, _) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| ClientError::Timeout(HANDSHAKE_TIMEOUT_MS))?
            .map_err(|e| ClientError::Connect { url: url.to_string(), reason: e.to_string() })?;
        let mut client =
            Client { ws, url: url.to_string(), next_id: 1, pending_events: VecDeque::new() };
        let challenge = client.next_frame(HANDSHAKE_TIMEOUT_MS).await?;
        if challenge["event"] != "connect.challenge" {
            return Err(ClientError::Protocol(format!("expected connect.challenge: {challenge}")));
        }
        let mut auth = serde_json::Map::new();
        if let Some(t) = token {
            auth.insert("token".into(), json!(t));
        }
        let params = json!({
            "minProtocol": 3,
            "maxProtocol": 4,
            "client": {
                "id": "test",
                "displayName": "beamclaw e2e",
                "version": env!("CARGO_PKG_VERSION"),
                "platform": std::env::consts::OS,
                "mode": "test",
            },
            "role": "operator",
            "scopes": ["operator.admin", "operator.read", "operator.write"],
            "auth": auth,
        });
        match client.call("connect", params, HANDSHAKE_TIMEOUT_MS).await {
            Ok(_) => Ok(client),
            Err(ClientError::Method { code, message, .. }) => {
                Err(ClientError::Refused(format!("{code}: {message}")))
            }
            Err(e) => Err(e),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn next_frame(&mut self, timeout_ms: u64) -> Result<Value, ClientError> {
        loop {
            let next = tokio::time::timeout(Duration::from_millis(timeout_ms), self.ws.next())
                .await
                .map_err(|_| ClientError::Timeout(timeout_ms))?;
            match next {
                Some(Ok(WsMessage::Text(text))) => {
                    return serde_json::from_str(&text)
                        .map_err(|e| ClientError::Protocol(format!("{e}: {text}")));
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    let reason =
                        frame.map(|f| format!("{} {}", f.code, f.reason)).unwrap_or_default();
                    return Err(ClientError::Closed(reason));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ClientError::Closed(e.to_string())),
                None => return Err(ClientError::Closed("end of stream".into())),
            }
        }
    }

    fn keep_event(&mut self, event: Value) {
        if self.pending_events.len() >= PENDING_EVENTS_MAX {
            self.pending_events.pop_front();
        }
        self.pending_events.push_back(event);
    }

    /// Calls `method` and returns its payload; events that arrive meanwhile are kept for
    /// [`Client::next_event`].
    pub async fn call(
        &mut self,
        method: &str,
        params: Value,
        timeout_ms: u64,
    ) -> Result<Value, ClientError> {
        let id = format!("e2e-{}", self.next_id);
        self.next_id += 1;
        let frame = json!({"type": "req", "id": id, "method": method, "params": params});
        self.ws
            .send(WsMessage::Text(frame.to_string().into()))
            .await
            .map_err(|e| ClientError::Closed(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            let frame = match self.next_frame(left_ms.max(1)).await {
                Err(ClientError::Timeout(_)) => return Err(ClientError::Timeout(timeout_ms)),
                other => other?,
            };
            match frame["type"].as_str() {
                Some("res") if frame["id"] == id.as_str() => {
                    if frame["ok"] == true {
                        return Ok(frame["payload"].clone());
                    }
                    let e = &frame["error"];
                    return Err(ClientError::Method {
                        method: method.to_string(),
                        code: e["code"].as_str().unwrap_or("ERROR").to_string(),
                        message: e["message"].as_str().unwrap_or_default().to_string(),
                        retryable: e["retryable"] == true,
                    });
                }
                Some("event") => self.keep_event(frame),
                _ => {}
            }
        }
    }

    /// The next event, waiting at most `timeout_ms`.
    pub async fn next_event(&mut self, timeout_ms: u64) -> Result<Value, ClientError> {
        if let Some(e) = self.pending_events.pop_front() {
            return Ok(e);
        }
        loop {
            let frame = self.next_frame(timeout_ms).await?;
            if frame["type"] == "event" {
                return Ok(frame);
            }
        }
    }

    /// `chat.send`: returns the answer (`{runId, status}`).
    pub async fn chat_send(
        &mut self,
        session: &str,
        message: &str,
        idempotency_key: &str,
        timeout_ms: u64,
    ) -> Result<Value, ClientError> {
        let params =
            json!({"sessionKey": session, "message": message, "idempotencyKey": idempotency_key});
        self.call("chat.send", params, timeout_ms).await
    }

    /// Waits for the `final` chat event of `run_id`, returning every chat event of the run in
    /// order (deltas, then the final). An `error` or `aborted` event ends the wait with an error.
    pub async fn wait_final(
        &mut self,
        run_id: &str,
        timeout_ms: u64,
    ) -> Result<Vec<Value>, ClientError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            if left_ms == 0 {
                return Err(ClientError::Timeout(timeout_ms));
            }
            let event = self.next_event(left_ms).await?;
            if event["event"] != "chat" || event["payload"]["runId"] != run_id {
                continue;
            }
            let state = event["payload"]["state"].as_str().unwrap_or_default().to_string();
            events.push(event);
            match state.as_str() {
                "final" => return Ok(events),
                "error" | "aborted" => {
                    return Err(ClientError::Method {
                        method: "chat".into(),
                        code: state,
                        message: events
                            .last()
                            .map(|e| e["payload"].to_string())
                            .unwrap_or_default(),
                        retryable: false,
                    });
                }
                _ => {}
            }
        }
    }

    /// `chat.send` then the run's events up to its final.
    pub async fn chat_turn(
        &mut self,
        session: &str,
        message: &str,
        idempotency_key: &str,
        timeout_ms: u64,
    ) -> Result<Vec<Value>, ClientError> {
        let accepted = self.chat_send(session, message, idempotency_key, timeout_ms).await?;
        let run_id = accepted["runId"].as_str().unwrap_or(idempotency_key).to_string();
        self.wait_final(&run_id, timeout_ms).await
    }

    /// `chat.history` (up to 1000 messages).
    pub async fn history(&mut self, session: &str, timeout_ms: u64) -> Result<Value, ClientError> {
        self.call("chat.history", json!({"sessionKey": session, "limit": 1000}), timeout_ms).await
    }

    pub async fn status(&mut self, timeout_ms: u64) -> Result<Value, ClientError> {
        self.call("status", json!({}), timeout_ms).await
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// How long one `chat.send` attempt of [`Persistent::turn`] may take.
pub const ATTEMPT_TIMEOUT_MS: u64 = 2_000;
/// Silence on a connection, while a turn runs, before [`Persistent::turn`] asks again (same
/// idempotency key) where the turn is.
pub const QUIET_MS: u64 = 2_000;
/// Pause before trying another node.
pub const RETRY_PAUSE_MS: u64 = 50;

/// What happened to one turn sent by [`Persistent::turn`].
#[derive(Clone, Debug, Default)]
pub struct TurnReport {
    /// When the first `chat.send` was acknowledged (the message is durable), from the start.
    pub accepted_after: Option<Duration>,
    /// When the final event (or an `ok` answer to a repeated send) arrived, from the start.
    pub done_after: Option<Duration>,
    /// Why the turn did not complete (an `error`/`aborted` event, or the deadline).
    pub failure: Option<String>,
    /// Error answers to `chat.send` (after each the client tried the next node).
    pub refusals: Vec<String>,
    pub shutdowns: usize,
    pub connection_losses: usize,
}

/// A client that behaves as the issue asks of real ones: on `shutdown`, on a lost connection,
/// or when a node refuses, it moves to the next node and sends the same message again with the
/// SAME idempotency key (which answers `in_flight` or `ok` for a message already acknowledged).
pub struct Persistent {
    pub urls: Vec<String>,
    pub token: Option<String>,
    /// The node (index in `urls`) it talks to now.
    pub node: usize,
    conn: Option<Client>,
}

impl Persistent {
    pub fn new(urls: Vec<String>, token: Option<String>, first: usize) -> Self {
        Persistent { urls, token, node: first, conn: None }
    }

    fn next_node(&mut self) {
        self.conn = None;
        self.node = (self.node + 1) % self.urls.len().max(1);
    }

    /// One message, until its final event or `within`.
    pub async fn turn(
        &mut self,
        session: &str,
        text: &str,
        key: &str,
        within: Duration,
    ) -> TurnReport {
        let started = tokio::time::Instant::now();
        let mut report = TurnReport::default();
        // None: send (again); Some(run): waiting for the run's events.
        let mut run: Option<String> = None;
        loop {
            if started.elapsed() > within {
                let last = report.refusals.last().cloned().unwrap_or_default();
                report.failure = Some(format!(
                    "not done within {} ms (acknowledged: {}; last refusal: {last})",
                    within.as_millis(),
                    report.accepted_after.is_some()
                ));
                return report;
            }
            let url = self.urls[self.node].clone();
            let conn = match self.conn.as_mut() {
                Some(c) => c,
                None => match Client::connect(&url, self.token.as_deref()).await {
                    Ok(c) => self.conn.insert(c),
                    Err(_) => {
                        self.next_node();
                        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                        continue;
                    }
                },
            };
            let Some(run_id) = run.clone() else {
                match conn.chat_send(session, text, key, ATTEMPT_TIMEOUT_MS).await {
                    Ok(answer) => {
                        if report.accepted_after.is_none() {
                            report.accepted_after = Some(started.elapsed());
                        }
                        if answer["status"] == "ok" {
                            report.done_after = Some(started.elapsed());
                            return report;
                        }
                        run = Some(answer["runId"].as_str().unwrap_or(key).to_string());
                    }
                    Err(ClientError::Method { message, .. }) => {
                        report.refusals.push(format!("{url}: {message}"));
                        self.next_node();
                        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                    }
                    Err(_) => {
                        report.connection_losses += 1;
                        self.next_node();
                    }
                }
                continue;
            };
            match conn.next_event(QUIET_MS).await {
                Ok(e) if e["event"] == "shutdown" => {
                    report.shutdowns += 1;
                    self.next_node();
                    run = None;
                }
                Ok(e) if e["event"] == "chat" && e["payload"]["runId"] == run_id.as_str() => {
                    match e["payload"]["state"].as_str() {
                        Some("final") => {
                            report.done_after = Some(started.elapsed());
                            return report;
                        }
                        Some(state @ ("error" | "aborted")) => {
                            report.failure = Some(format!("{state}: {}", e["payload"]));
                            return report;
                        }
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(ClientError::Timeout(_)) => run = None,
                Err(_) => {
                    report.connection_losses += 1;
                    self.next_node();
                    run = None;
                }
            }
        }
    }

    pub async fn close(mut self) {
        if let Some(c) = self.conn.take() {
            c.close().await;
        }
    }
}

/// The concatenated text parts of a transcript or chat-event message.
pub fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect(),
        _ => String::new(),
    }
}

/// `(role, text)` of every message of a `chat.history` answer, in order.
pub fn transcript(history: &Value) -> Vec<(String, String)> {
    history["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .map(|m| (m["role"].as_str().unwrap_or_default().to_string(), text_of(m)))
                .collect()
        })
        .unwrap_or_default()
}
