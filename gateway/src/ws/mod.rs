//! The WebSocket side: the HTTP upgrade, one task pair per connection (reader and writer), the
//! `connect` handshake, and the method handlers.

pub(crate) mod connection;
pub(crate) mod handshake;
pub(crate) mod io;
pub(crate) mod methods;
pub(crate) mod outbound;
pub(crate) mod ratelimit;
pub(crate) mod registry;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::Instrument;

use crate::http::openai_error;
use crate::server::Shared;
use crate::service::GatewayService;
use io::{BudgetedIo, PREAUTH_READ_BYTES_MAX, ReadBudget};

/// tungstenite's initial read buffer per connection, bytes (it grows for large frames); small
/// so that idle connections stay cheap.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Bytes tungstenite gathers before it writes to the socket. The connection's writer flushes
/// after each batch of queued frames, so this only lets a batch (a turn's burst of events) go
/// out in one write instead of one per frame; it never holds a frame back. At 0 every frame was
/// its own `sendto` (a tenth of a WebSocket turn's CPU).
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Whether a request asks for a WebSocket upgrade.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade")
}

/// Whether a browser `Origin` may open a socket: no origin (non-browser clients), the gateway's
/// own origin, or a configured one.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    if allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let own = |scheme: &str| origin.eq_ignore_ascii_case(&format!("{scheme}://{host}"));
    !host.is_empty() && (own("http") || own("https"))
}

/// Answers an upgrade request and starts the connection.
pub(crate) fn upgrade<S: GatewayService>(
    shared: Arc<Shared<S>>,
    remote: SocketAddr,
    mut request: Request<Body>,
) -> Response<Body> {
    let headers = request.headers();
    let version_ok = headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| version_ok) else {
        shared.metrics.refused("bad_upgrade");
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "WebSocket upgrade needs Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key",
        );
    };
    if !origin_allowed(headers, &shared.config.allowed_origins) {
        shared.metrics.refused("origin");
        return openai_error(
            StatusCode::FORBIDDEN,
            "permission_error",
            "this browser origin is not allowed; add it to gateway.controlUi.allowedOrigins",
        );
    }
    if shared.shutting_down.load(std::sync::atomic::Ordering::Acquire) {
        shared.metrics.refused("shutting_down");
        return openai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "gateway is shutting down",
        );
    }
    let Some(slot) = shared.connections.reserve() else {
        shared.metrics.refused("connections_max");
        return openai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &format!(
                "gateway holds its maximum of {} connections; retry later or another node",
                shared.config.limits.connections_max
            ),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut request);
    let span = tracing::info_span!("ws", %remote, conn = tracing::field::Empty);
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::debug!(error = %err, "upgrade did not complete");
                    return;
                }
            };
            let budget = ReadBudget::new(PREAUTH_READ_BYTES_MAX);
            let io = BudgetedIo::new(TokioIo::new(upgraded), budget.clone());
            let max = shared.config.limits.max_payload_bytes;
            let config = WebSocketConfig::default()
                .read_buffer_size(READ_BUFFER_BYTES)
                .write_buffer_size(WRITE_BUFFER_BYTES)
                .max_message_size(Some(max))
                .max_frame_size(Some(max));
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            connection::run(shared, socket, budget, remote, slot).await;
        }
        .instrument(span),
    );
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn upgrade_detection_accepts_token_lists() {
        assert!(is_upgrade(&headers(&[
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade")
        ])));
        assert!(!is_upgrade(&headers(&[("connection", "upgrade")])));
    }

    #[test]
    fn origins_are_checked_against_host_and_allow_list() {
        assert!(origin_allowed(&headers(&[]), &[]));
        let same = headers(&[("origin", "http://127.0.0.1:18789"), ("host", "127.0.0.1:18789")]);
        assert!(origin_allowed(&same, &[]));
        let other = headers(&[("origin", "https://evil.example"), ("host", "127.0.0.1:18789")]);
        assert!(!origin_allowed(&other, &[]));
        assert!(origin_allowed(&other, &["https://evil.example".to_owned()]));
    }
}
