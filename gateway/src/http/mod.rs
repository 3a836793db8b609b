//! HTTP on the gateway port: probes, metrics, the status page, the OpenAI-compatible API and
//! `/tools/invoke`, plus the WebSocket upgrade on `/`. Bearer auth (the gateway token or
//! password) guards everything but the probes.

pub(crate) mod openai;
pub(crate) mod status_page;
pub(crate) mod tools;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::json;
use tracing::Instrument;

use crate::config::AuthMode;
use crate::server::Shared;
use crate::service::GatewayService;
use crate::util::secret_eq;

pub(crate) fn router<S: GatewayService>(shared: Arc<Shared<S>>) -> Router {
    Router::new()
        .route("/", get(root::<S>))
        .route("/health", get(live))
        .route("/healthz", get(live))
        .route("/readyz", get(ready::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/v1/chat/completions", post(openai::chat_completions::<S>))
        .route("/v1/models", get(openai::models::<S>))
        .route("/tools/invoke", post(tools::invoke::<S>))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), track::<S>))
        .with_state(shared)
}

/// An error body in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
pub(crate) fn openai_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A refused `Authorization`: 401 with an OpenAI error body and a challenge.
pub(crate) struct Unauthorized {
    mode: AuthMode,
    /// Ask for Basic credentials so that a browser shows a login prompt.
    browser: bool,
}

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let mut response = openai_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            &format!(
                "missing or wrong credentials: send Authorization: Bearer <gateway {}>",
                self.mode.as_str()
            ),
        );
        let challenge = if self.browser {
            "Basic realm=\"BeamClaw\", charset=\"UTF-8\""
        } else {
            "Bearer realm=\"BeamClaw\""
        };
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        response
    }
}

/// Checks `Authorization` against the gateway secret. `Bearer <secret>` as OpenClaw; `Basic`
/// with the secret as password too, so that a browser can open the status page.
pub(crate) fn check_auth<S: GatewayService>(
    shared: &Shared<S>,
    headers: &HeaderMap,
    browser: bool,
) -> Result<(), Unauthorized> {
    let auth = &shared.config.auth;
    let secret = match auth.mode {
        AuthMode::None => return Ok(()),
        AuthMode::Token => auth.token.as_deref(),
        AuthMode::Password => auth.password.as_deref(),
    };
    let presented =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|value| {
            let (scheme, rest) = value.split_once(' ')?;
            if scheme.eq_ignore_ascii_case("bearer") {
                Some(rest.trim().to_owned())
            } else if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
                let text = String::from_utf8(decoded).ok()?;
                text.split_once(':').map(|(_, password)| password.to_owned())
            } else {
                None
            }
        });
    match (presented, secret) {
        (Some(presented), Some(secret)) if secret_eq(&presented, secret) => Ok(()),
        _ => Err(Unauthorized { mode: auth.mode, browser }),
    }
}

/// A span and a metric for every HTTP request.
async fn track<S: GatewayService>(
    State(shared): State<Arc<Shared<S>>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!("http", method = %request.method(), route = %route);
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.in_scope(|| tracing::debug!(status, "http request"));
    shared.metrics.http_requests.get_or_create(&crate::metrics::RouteLabel { route, status }).inc();
    response
}

/// `/`: the WebSocket upgrade, or the status page.
async fn root<S: GatewayService>(
    State(shared): State<Arc<Shared<S>>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    if crate::ws::is_upgrade(request.headers()) {
        return crate::ws::upgrade(shared, remote, request);
    }
    if let Err(denied) = check_auth(&shared, request.headers(), true) {
        return denied.into_response();
    }
    status_page::render(&shared).await
}

async fn live() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], r#"{"ok":true,"status":"live"}"#)
        .into_response()
}

async fn ready<S: GatewayService>(State(shared): State<Arc<Shared<S>>>) -> Response {
    let readiness = shared.service.readiness();
    let shutting_down = shared.shutting_down.load(std::sync::atomic::Ordering::Acquire);
    let (status, body) = if readiness.ready && !shutting_down {
        (StatusCode::OK, json!({"ready": true}))
    } else {
        let reason = if shutting_down {
            "shutting down".to_owned()
        } else {
            readiness.reason.unwrap_or_else(|| "not ready".to_owned())
        };
        (StatusCode::SERVICE_UNAVAILABLE, json!({"ready": false, "reason": reason}))
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn metrics<S: GatewayService>(
    State(shared): State<Arc<Shared<S>>>,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = check_auth(&shared, &headers, false) {
        return denied.into_response();
    }
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &shared.registry) {
        tracing::error!(error = %err, "metrics encoding failed");
        return openai_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "metrics encoding failed",
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn not_found(request: Request<Body>) -> Response {
    openai_error(
        StatusCode::NOT_FOUND,
        "not_found_error",
        &format!("no route for {} {}", request.method(), request.uri().path()),
    )
}
