//! One WebSocket connection: challenge, `connect`, then the request loop.
//!
//! The reader (this task) decodes frames, checks scope and rate, and spawns one task per request
//! so a slow method never blocks the others; a writer task drains the connection's
//! [`Outbound`] queue into the socket. Either side ending ends the connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::AbortHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::Instrument;

use super::handshake::{self, Authenticated};
use super::io::{PREAUTH_FRAME_BYTES_MAX, ReadBudget};
use super::methods;
use super::outbound::{CLOSE_POLICY, Frame, Outbound};
use super::ratelimit::TokenBucket;
use super::registry::{ClientSummary, Connection, Slot};
use crate::device::Challenge;
use crate::protocol::errors::{ErrorCode, WireError};
use crate::protocol::frames::{
    ClientFrame, Request, UNKNOWN_REQUEST_ID, decode_client_frame, event_frame, response_error,
    response_ok,
};
use crate::protocol::methods::{Method, authorize, is_official};
use crate::protocol::wire;
use crate::server::Shared;
use crate::service::GatewayService;
use crate::util::now_ms;

/// Requests one connection may have running at once.
pub(crate) const IN_FLIGHT_REQUESTS_MAX: usize = 64;
/// `retryAfterMs` suggested when a connection has too many requests running.
const IN_FLIGHT_RETRY_AFTER_MS: u64 = 100;
/// Time the writer gets to deliver a close frame to a client that may not be reading, ms.
const CLOSE_WRITE_TIMEOUT_MS: u64 = 1_000;
/// Frames the writer hands to the socket with one flush at most (latency of the first one stays
/// bounded by this many frame encodings).
const WRITE_BATCH_FRAMES_MAX: usize = 64;
/// Time the reader waits for the writer to flush after the connection ended, ms.
const WRITER_DRAIN_TIMEOUT_MS: u64 = 2_000;
/// A close reason is at most 123 bytes (RFC 6455: 125 minus the 2-byte code).
const CLOSE_REASON_BYTES_MAX: usize = 123;
/// Close code for a frame larger than allowed (RFC 6455 "message too big").
const CLOSE_TOO_BIG: u16 = 1009;

type InFlight = Arc<Mutex<HashMap<String, AbortHandle>>>;

fn lock(in_flight: &InFlight) -> std::sync::MutexGuard<'_, HashMap<String, AbortHandle>> {
    in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(CLOSE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

fn random_nonce() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(crate) async fn run<S, T>(
    shared: Arc<Shared<S>>,
    socket: WebSocketStream<T>,
    budget: Arc<ReadBudget>,
    remote: SocketAddr,
    slot: Slot,
) where
    S: GatewayService,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    shared.metrics.connections_accepted.inc();
    let (mut sink, mut stream) = socket.split();
    let outbound = Arc::new(Outbound::new(shared.config.limits.max_buffered_bytes));

    let writer_queue = outbound.clone();
    let mut writer = tokio::spawn(
        async move {
            while let Some(frame) = writer_queue.pop().await {
                match frame {
                    Frame::Text(text) => {
                        // Frames queued meanwhile (a turn's events come in bursts) go out with
                        // this one in one flush: one write instead of one per frame.
                        let mut batch = 1;
                        let mut written = sink.feed(Message::text(text)).await;
                        while written.is_ok() && batch < WRITE_BATCH_FRAMES_MAX {
                            let Some(text) = writer_queue.try_pop_text() else { break };
                            written = sink.feed(Message::text(text)).await;
                            batch += 1;
                        }
                        if let Err(err) = match written {
                            Ok(()) => sink.flush().await,
                            Err(err) => Err(err),
                        } {
                            tracing::debug!(error = %err, "write failed");
                            writer_queue.close(1006, "write failed");
                            break;
                        }
                    }
                    Frame::Close { code, reason } => {
                        let frame = CloseFrame {
                            code: CloseCode::from(code),
                            reason: close_reason(&reason).into(),
                        };
                        let send = sink.send(Message::Close(Some(frame)));
                        let _ = tokio::time::timeout(
                            Duration::from_millis(CLOSE_WRITE_TIMEOUT_MS),
                            send,
                        )
                        .await;
                        break;
                    }
                }
            }
        }
        .in_current_span(),
    );

    let ts = u64::try_from(now_ms()).unwrap_or(0);
    let challenge = Challenge { nonce: random_nonce(), ts_ms: ts };
    let payload = json!({"nonce": challenge.nonce, "ts": challenge.ts_ms}).to_string();
    // The challenge precedes hello-ok and carries no seq.
    let _ = outbound.push(event_frame("connect.challenge", &payload, None, None));

    let handshake_deadline =
        tokio::time::sleep(Duration::from_millis(shared.config.limits.handshake_timeout_ms));
    tokio::pin!(handshake_deadline);
    let first = loop {
        tokio::select! {
            biased;
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => break Some(text),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => {
                    refuse(&shared, &outbound, "binary", CLOSE_POLICY, "first frame must be a connect request (JSON text)");
                    break None;
                }
                Some(Ok(Message::Close(_))) | None => break None,
                Some(Err(err)) => {
                    if let WsError::Capacity(_) = err {
                        refuse(&shared, &outbound, "preauth_size", CLOSE_TOO_BIG,
                            &format!("frame before authentication exceeds {PREAUTH_FRAME_BYTES_MAX} bytes"));
                    }
                    break None;
                }
            },
            () = budget.exhausted() => {
                refuse(&shared, &outbound, "preauth_size", CLOSE_TOO_BIG,
                    &format!("frame before authentication exceeds {PREAUTH_FRAME_BYTES_MAX} bytes"));
                break None;
            }
            () = &mut handshake_deadline => {
                refuse(&shared, &outbound, "handshake_timeout", CLOSE_POLICY, "connect timeout: no connect request in time");
                break None;
            }
        }
    };

    let connection = match first {
        Some(text) if text.len() > PREAUTH_FRAME_BYTES_MAX => {
            refuse(
                &shared,
                &outbound,
                "preauth_size",
                CLOSE_TOO_BIG,
                &format!("frame before authentication exceeds {PREAUTH_FRAME_BYTES_MAX} bytes"),
            );
            None
        }
        Some(text) => connect(&shared, &outbound, text.as_str(), &challenge, remote).await,
        None => None,
    };
    let Some(connection) = connection else {
        finish(&outbound, &mut writer).await;
        drop(slot);
        return;
    };
    budget.lift();
    tracing::Span::current().record("conn", connection.conn_id.as_str());

    let in_flight: InFlight = Arc::new(Mutex::new(HashMap::new()));
    let limits = &shared.config.limits;
    let mut bucket = TokenBucket::new(
        limits.requests_per_second,
        limits.requests_burst,
        std::time::Instant::now(),
    );
    let mut writer_done = false;
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            _ = &mut writer => {
                // The server closed the connection (shutdown, overflow, revocation) or the
                // socket failed under the writer.
                writer_done = true;
                break;
            }
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                shared.metrics.frames_in.inc();
                handle_text(&shared, &connection, &in_flight, &mut bucket, text.as_str());
            }
            Some(Ok(Message::Binary(_))) => {
                shared.metrics.frames_in.inc();
                let err =
                    WireError::invalid("binary frames are not supported; send JSON text frames");
                send_error(&shared, &connection, UNKNOWN_REQUEST_ID, &err);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(_))) | None => break,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                connection.outbound.close(
                    CLOSE_TOO_BIG,
                    format!("frame of {size} bytes exceeds maxPayload {max_size}"),
                );
                break;
            }
            Some(Err(err)) => {
                tracing::debug!(error = %err, "read failed");
                break;
            }
        }
    }

    // Cleanup: stop requests, leave feeds, unlist.
    for (_, task) in lock(&in_flight).drain() {
        task.abort();
    }
    let joined: Vec<_> = connection
        .joined
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .drain()
        .collect();
    for (key, id) in joined {
        shared.feeds.leave(&key, id);
    }
    shared.connections.remove(connection.serial);
    if connection.in_presence() {
        shared.presence_changed();
    }
    if !writer_done {
        finish(&connection.outbound, &mut writer).await;
    }
    tracing::info!(conn = %connection.conn_id, "connection closed");
    drop(slot);
}

/// Closes the queue (1000 unless a close is already queued) and gives the writer time to send
/// what is queued. `writer` must not have completed yet.
async fn finish(outbound: &Outbound, writer: &mut tokio::task::JoinHandle<()>) {
    outbound.close(1000, "");
    if tokio::time::timeout(Duration::from_millis(WRITER_DRAIN_TIMEOUT_MS), &mut *writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

fn refuse<S: GatewayService>(
    shared: &Shared<S>,
    outbound: &Outbound,
    metric: &str,
    code: u16,
    reason: &str,
) {
    tracing::info!(reason, "closing connection before hello-ok");
    shared.metrics.refused(metric);
    outbound.close(code, reason);
}

/// Handles the first frame; returns the listed connection on success.
async fn connect<S: GatewayService>(
    shared: &Arc<Shared<S>>,
    outbound: &Arc<Outbound>,
    text: &str,
    challenge: &Challenge,
    remote: SocketAddr,
) -> Option<Arc<Connection>> {
    shared.metrics.frames_in.inc();
    let request = match decode_client_frame(text, false) {
        Ok(ClientFrame::Request(request)) if request.method == "connect" => request,
        Ok(ClientFrame::Request(request)) => {
            let err = WireError::invalid(format!(
                "the first request must be connect, not {:?}",
                crate::util::truncate_chars(&request.method, 64)
            ));
            let _ = outbound.push(response_error(&request.id, &err));
            refuse(
                shared,
                outbound,
                "not_connect",
                CLOSE_POLICY,
                "first frame must be a connect request",
            );
            return None;
        }
        Ok(ClientFrame::Cancel { .. }) => {
            refuse(
                shared,
                outbound,
                "not_connect",
                CLOSE_POLICY,
                "first frame must be a connect request",
            );
            return None;
        }
        Err(err) => {
            let id = err.id.as_deref().unwrap_or(UNKNOWN_REQUEST_ID);
            let _ = outbound.push(response_error(id, &err.error));
            refuse(
                shared,
                outbound,
                "not_connect",
                CLOSE_POLICY,
                "first frame must be a connect request",
            );
            return None;
        }
    };
    let Request { id, params, .. } = request;
    let span = tracing::info_span!("connect", request = %id);
    let outcome =
        handshake::authenticate(&shared.config, &shared.pairing, params, challenge, remote)
            .instrument(span)
            .await;
    let auth = match outcome {
        Ok(auth) => auth,
        Err(refusal) => {
            shared.metrics.error(refusal.error.code.as_str());
            let _ = outbound.push(response_error(&id, &refusal.error));
            if let Some(pending) = &refusal.pending {
                let payload = methods::pair_requested_payload(pending);
                shared.connections.broadcast("device.pair.requested", &payload, None);
            }
            refuse(shared, outbound, "auth", CLOSE_POLICY, &refusal.close_reason);
            return None;
        }
    };
    let connection = Arc::new(listed_connection(shared, outbound.clone(), &auth, remote));
    let hello = hello_ok(shared, &connection, &auth).await;
    if !connection.send_frame(response_ok(&id, hello)) {
        return None;
    }
    shared.connections.insert(connection.clone());
    if connection.in_presence() {
        shared.presence_changed();
    }
    tracing::info!(conn = %connection.conn_id, client = %auth.params.client.id,
        mode = %auth.params.client.mode, role = %auth.role, protocol = auth.protocol,
        device = auth.device_id.as_deref().unwrap_or("-"), "connected");
    Some(connection)
}

fn listed_connection<S: GatewayService>(
    shared: &Shared<S>,
    outbound: Arc<Outbound>,
    auth: &Authenticated,
    remote: SocketAddr,
) -> Connection {
    let client = &auth.params.client;
    Connection {
        serial: shared.connections.next_serial(),
        conn_id: uuid::Uuid::new_v4().to_string(),
        outbound,
        protocol: auth.protocol,
        role: auth.role.clone(),
        scopes: auth.scopes.clone(),
        device_id: auth.device_id.clone(),
        client: ClientSummary {
            id: client.id.clone(),
            mode: client.mode.clone(),
            version: client.version.clone(),
            platform: client.platform.clone(),
            device_family: client.device_family.clone().filter(|f| !f.is_empty()),
            model_identifier: client.model_identifier.clone().filter(|m| !m.is_empty()),
            time_zone: client.time_zone.clone().filter(|z| !z.is_empty()),
            display_name: client.display_name.clone().filter(|n| !n.is_empty()),
            instance_id: client.instance_id.clone().filter(|i| !i.is_empty()),
        },
        remote,
        connected_at_ms: now_ms(),
        sessions_changed: Default::default(),
        joined: Mutex::new(HashMap::new()),
        follow_lock: tokio::sync::Mutex::new(()),
        metrics: shared.metrics.clone(),
    }
}

/// The events BeamClaw may send (`hello-ok.features.events`).
pub(crate) const EVENTS: &[&str] = &[
    "connect.challenge",
    "tick",
    "presence",
    "health",
    "shutdown",
    "chat",
    "agent",
    "sessions.changed",
    "device.pair.requested",
    "device.pair.resolved",
    "exec.approval.requested",
    "exec.approval.resolved",
];

async fn hello_ok<S: GatewayService>(
    shared: &Arc<Shared<S>>,
    connection: &Connection,
    auth: &Authenticated,
) -> serde_json::Value {
    let node = &shared.node;
    let health = match shared.health().await {
        Ok(health) => wire::health(node, &health, now_ms(), true),
        Err(err) => {
            tracing::warn!(error = %err.message, "health unavailable for hello-ok");
            json!({"ts": now_ms().max(0)})
        }
    };
    let sv = shared.state_version();
    let mut snapshot = json!({
        "presence": shared.presence(),
        "health": health,
        "stateVersion": {"presence": sv.presence, "health": sv.health},
        "uptimeMs": shared.uptime_ms(),
        "sessionDefaults": {
            "defaultAgentId": node.default_agent_id,
            "mainKey": node.main_key,
            "mainSessionKey": format!("agent:{}:{}", node.default_agent_id, node.main_key),
        },
        "authMode": shared.config.auth.mode.as_str(),
    });
    if let Some(path) = node.config_path.as_ref().filter(|p| !p.is_empty()) {
        snapshot["configPath"] = path.clone().into();
    }
    if let Some(dir) = node.state_dir.as_ref().filter(|d| !d.is_empty()) {
        snapshot["stateDir"] = dir.clone().into();
    }
    let mut auth_block = json!({"role": auth.role, "scopes": auth.scopes});
    if let Some(issued) = &auth.issued {
        auth_block["deviceToken"] = issued.token.clone().into();
        auth_block["issuedAtMs"] = issued.issued_at_ms.max(0).into();
    }
    let methods: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
    json!({
        "type": "hello-ok",
        "protocol": auth.protocol,
        "server": {"version": node.version, "connId": connection.conn_id},
        "features": {"methods": methods, "events": EVENTS},
        "snapshot": snapshot,
        "auth": auth_block,
        "policy": {
            "maxPayload": shared.config.limits.max_payload_bytes,
            "maxBufferedBytes": shared.config.limits.max_buffered_bytes,
            "tickIntervalMs": shared.config.limits.tick_interval_ms,
        },
    })
}

fn send_error<S: GatewayService>(
    shared: &Shared<S>,
    connection: &Connection,
    id: &str,
    err: &WireError,
) {
    shared.metrics.error(err.code.as_str());
    connection.send_frame(response_error(id, err));
}

fn handle_text<S: GatewayService>(
    shared: &Arc<Shared<S>>,
    connection: &Arc<Connection>,
    in_flight: &InFlight,
    bucket: &mut TokenBucket,
    text: &str,
) {
    let decoded = decode_client_frame(text, connection.protocol >= 4);
    // Every frame costs a token, malformed ones too: answering them is work as well.
    if let Err(retry_after_ms) = bucket.try_take(std::time::Instant::now()) {
        let id = match &decoded {
            Ok(ClientFrame::Request(request)) => request.id.as_str(),
            Ok(ClientFrame::Cancel { id }) => id.as_str(),
            Err(err) => err.id.as_deref().unwrap_or(UNKNOWN_REQUEST_ID),
        };
        let err = WireError::new(
            ErrorCode::Unavailable,
            format!(
                "rate limit: more than {} frames per second on this connection",
                shared.config.limits.requests_per_second
            ),
        )
        .retry_after(retry_after_ms)
        .with_details(json!({"code": "RATE_LIMITED"}));
        send_error(shared, connection, id, &err);
        return;
    }
    let frame = match decoded {
        Ok(frame) => frame,
        Err(err) => {
            let id = err.id.as_deref().unwrap_or(UNKNOWN_REQUEST_ID);
            send_error(shared, connection, id, &err.error);
            return;
        }
    };
    let request = match frame {
        ClientFrame::Cancel { id } => {
            let task = lock(in_flight).remove(&id);
            if let Some(task) = task {
                task.abort();
                let err = WireError::invalid(format!("request {id} was cancelled by the client"))
                    .with_details(json!({"code": "REQUEST_CANCELLED"}));
                send_error(shared, connection, &id, &err);
            }
            return;
        }
        ClientFrame::Request(request) => request,
    };
    if request.method == "connect" {
        let err = WireError::invalid(
            "already connected: connect is only valid as the first frame of a connection",
        );
        send_error(shared, connection, &request.id, &err);
        return;
    }
    let Some(method) = Method::parse(&request.method) else {
        let err = WireError::unsupported_method(&request.method, is_official(&request.method));
        send_error(shared, connection, &request.id, &err);
        return;
    };
    if let Err(missing) = authorize(&connection.scopes, method.scope()) {
        let err = WireError::missing_scope(method.name(), missing);
        send_error(shared, connection, &request.id, &err);
        return;
    }
    if lock(in_flight).len() >= IN_FLIGHT_REQUESTS_MAX {
        let err = WireError::new(
            ErrorCode::Unavailable,
            format!("{IN_FLIGHT_REQUESTS_MAX} requests are already running on this connection"),
        )
        .retry_after(IN_FLIGHT_RETRY_AFTER_MS);
        send_error(shared, connection, &request.id, &err);
        return;
    }

    let Request { id, params, .. } = request;
    if lock(in_flight).contains_key(&id) {
        let err = WireError::invalid(format!(
            "request id {id:?} is already in flight on this connection"
        ));
        send_error(shared, connection, &id, &err);
        return;
    }
    let span = tracing::info_span!("request", method = method.name(), id = %id);
    let task_shared = shared.clone();
    let task_connection = connection.clone();
    let task_in_flight = in_flight.clone();
    let task_id = id.clone();
    // The task starts once it is listed, so that its own unlisting can tell "finished" from
    // "cancelled" (a cancel unlists and answers for it).
    let (listed_tx, listed_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(
        async move {
            if listed_rx.await.is_err() {
                return;
            }
            let started = std::time::Instant::now();
            let result =
                methods::handle(&task_shared, &task_connection, method, &task_id, params).await;
            task_shared
                .metrics
                .method_duration
                .get_or_create(&crate::metrics::MethodLabel { method: method.name().to_owned() })
                .observe(started.elapsed().as_secs_f64());
            if lock(&task_in_flight).remove(&task_id).is_none() {
                return;
            }
            match result {
                Ok(payload) => {
                    task_connection.send_frame(response_ok(&task_id, payload));
                }
                Err(err) => {
                    tracing::debug!(code = err.code.as_str(), message = %err.message, "request failed");
                    send_error(&task_shared, &task_connection, &task_id, &err);
                }
            }
        }
        .instrument(span),
    );
    lock(in_flight).insert(id, handle.abort_handle());
    let _ = listed_tx.send(());
}
