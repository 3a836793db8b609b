//! A minimal OpenClaw gateway client for the command line (`beamclaw chat`, `beamclaw status`):
//! challenge, connect with the shared token or password, requests and events.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long the handshake may take.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Largest frame the client accepts (the gateway's own policy maximum).
pub const FRAME_BYTES_MAX: usize = 25 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {reason} (is a node running? start one with `beamclaw up`)")]
    Connect { url: String, reason: String },
    #[error("the gateway refused the connection: {0}")]
    Refused(String),
    #[error("the gateway closed the connection: {0}")]
    Closed(String),
    #[error("the gateway sent something unexpected: {0}")]
    Protocol(String),
    #[error("{method} failed: {code}: {message}")]
    Method { method: String, code: String, message: String },
    #[error("timed out after {0} ms")]
    Timeout(u64),
}

/// Credentials for the gateway's shared-secret auth.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub token: Option<String>,
    pub password: Option<String>,
}

pub struct GatewayClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Events received while waiting for a response, in order.
    pending_events: std::collections::VecDeque<Value>,
}

impl GatewayClient {
    /// Connects and completes the OpenClaw handshake as an operator CLI client.
    pub async fn connect(
        url: &str,
        creds: &Credentials,
        scopes: &[&str],
    ) -> Result<GatewayClient, ClientError> {
        let connect = tokio_tungstenite::connect_async(url);
        let (ws, _) = tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), connect)
            .await
            .map_err(|_| ClientError::Timeout(HANDSHAKE_TIMEOUT_MS))?
            .map_err(|e| ClientError::Connect { url: url.to_string(), reason: e.to_string() })?;
        let mut client = GatewayClient { ws, next_id: 1, pending_events: Default::default() };
        let challenge = client.next_frame(HANDSHAKE_TIMEOUT_MS).await?;
        if challenge["type"] != "event" || challenge["event"] != "connect.challenge" {
            return Err(ClientError::Protocol(format!(
                "expected connect.challenge, got {challenge}"
            )));
        }
        let mut auth = serde_json::Map::new();
        if let Some(t) = &creds.token {
            auth.insert("token".into(), json!(t));
        }
        if let Some(p) = &creds.password {
            auth.insert("password".into(), json!(p));
        }
        let params = json!({
            "minProtocol": 3,
            "maxProtocol": 4,
            "client": {
                "id": "cli",
                "displayName": "beamclaw cli",
                "version": env!("CARGO_PKG_VERSION"),
                "platform": std::env::consts::OS,
                "mode": "cli",
            },
            "role": "operator",
            "scopes": scopes,
            "auth": auth,
        });
        let id = client.send_request("connect", params).await?;
        loop {
            let frame = client.next_frame(HANDSHAKE_TIMEOUT_MS).await?;
            if frame["type"] == "res" && frame["id"] == id {
                if frame["ok"] == true {
                    return Ok(client);
                }
                return Err(ClientError::Refused(error_text(&frame["error"])));
            }
            if frame["type"] == "hello-ok" {
                return Ok(client);
            }
        }
    }

    async fn send_request(&mut self, method: &str, params: Value) -> Result<String, ClientError> {
        let id = format!("cli-{}", self.next_id);
        self.next_id += 1;
        let frame = json!({"type": "req", "id": id, "method": method, "params": params});
        self.ws
            .send(WsMessage::Text(frame.to_string().into()))
            .await
            .map_err(|e| ClientError::Closed(e.to_string()))?;
        Ok(id)
    }

    /// The next frame from the gateway, as JSON.
    async fn next_frame(&mut self, timeout_ms: u64) -> Result<Value, ClientError> {
        loop {
            let next = tokio::time::timeout(Duration::from_millis(timeout_ms), self.ws.next())
                .await
                .map_err(|_| ClientError::Timeout(timeout_ms))?;
            match next {
                Some(Ok(WsMessage::Text(text))) => {
                    if text.len() > FRAME_BYTES_MAX {
                        return Err(ClientError::Protocol(format!(
                            "frame of {} bytes",
                            text.len()
                        )));
                    }
                    return serde_json::from_str(&text)
                        .map_err(|e| ClientError::Protocol(e.to_string()));
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

    /// Calls `method` and returns its payload; events that arrive meanwhile are kept for
    /// [`GatewayClient::next_event`].
    pub async fn call(
        &mut self,
        method: &str,
        params: Value,
        timeout_ms: u64,
    ) -> Result<Value, ClientError> {
        let id = self.send_request(method, params).await?;
        loop {
            let frame = self.next_frame(timeout_ms).await?;
            match frame["type"].as_str() {
                Some("res") if frame["id"] == id => {
                    if frame["ok"] == true {
                        return Ok(frame["payload"].clone());
                    }
                    let e = &frame["error"];
                    return Err(ClientError::Method {
                        method: method.to_string(),
                        code: e["code"].as_str().unwrap_or("ERROR").to_string(),
                        message: e["message"].as_str().unwrap_or_default().to_string(),
                    });
                }
                Some("event") => self.pending_events.push_back(frame),
                _ => {}
            }
        }
    }

    /// The next event frame.
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
}

fn error_text(e: &Value) -> String {
    let code = e["code"].as_str().unwrap_or("ERROR");
    let message = e["message"].as_str().unwrap_or_default();
    format!("{code}: {message}")
}
