//! `POST /tools/invoke`: runs one tool through the service, behind OpenClaw's HTTP policy
//! (a default deny list, adjusted by `gateway.tools.allow|deny`).

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use beamclaw_crdt::SessionKey;
use serde::Deserialize;
use serde_json::{Value, json};

use super::check_auth;
use crate::config::ToolPolicy;
use crate::server::Shared;
use crate::service::{GatewayService, ServiceError, ToolInvocation};

/// Largest `/tools/invoke` body, bytes (OpenClaw's 2 MB).
pub(crate) const TOOLS_INVOKE_BODY_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Longest tool or action name, bytes.
const TOOL_NAME_BYTES_MAX: usize = 128;

/// Tools OpenClaw never exposes over HTTP unless `gateway.tools.allow` names them.
pub(crate) const HTTP_TOOL_DENY_DEFAULT: &[&str] = &[
    "exec",
    "spawn",
    "shell",
    "fs_*",
    "apply_patch",
    "sessions_spawn",
    "sessions_send",
    "cron",
    "gateway",
    "nodes",
];

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct InvokeBody {
    #[serde(default)]
    tool: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default)]
    session_key: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

fn matches(pattern: &str, tool: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => tool.starts_with(prefix),
        None => pattern == tool,
    }
}

/// Why the policy refuses a tool.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// On the default HTTP deny list and not allowed: 404, as if the tool did not exist.
    NotExposed,
    /// Named by `gateway.tools.deny`: 403.
    Blocked,
}

pub(crate) fn policy(policy: &ToolPolicy, tool: &str) -> Result<(), Refused> {
    if policy.deny.iter().any(|p| matches(p, tool)) {
        return Err(Refused::Blocked);
    }
    let allowed = policy.allow.iter().any(|p| matches(p, tool));
    if !allowed && HTTP_TOOL_DENY_DEFAULT.iter().any(|p| matches(p, tool)) {
        return Err(Refused::NotExposed);
    }
    Ok(())
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn failure(status: StatusCode, kind: &str, message: &str) -> Response {
    reply(status, json!({"ok": false, "error": {"type": kind, "message": message}}))
}

pub(crate) async fn invoke<S: GatewayService>(
    State(shared): State<Arc<Shared<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(denied) = check_auth(&shared, &headers, false) {
        return denied.into_response();
    }
    let Ok(bytes) = to_bytes(body, TOOLS_INVOKE_BODY_BYTES_MAX).await else {
        return failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            &format!("body exceeds {TOOLS_INVOKE_BODY_BYTES_MAX} bytes"),
        );
    };
    let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
    let request: InvokeBody = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(request) => request,
        Err(err) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("invalid body at {}: {}", err.path(), err.inner()),
            );
        }
    };
    let Some(tool) =
        request.tool.or(request.name).map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
    else {
        return failure(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "name the tool in \"tool\" (or \"name\")",
        );
    };
    if tool.len() > TOOL_NAME_BYTES_MAX
        || request.action.as_ref().is_some_and(|a| a.len() > TOOL_NAME_BYTES_MAX)
    {
        return failure(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("tool and action names are at most {TOOL_NAME_BYTES_MAX} bytes"),
        );
    }
    match policy(&shared.config.tools, &tool) {
        Ok(()) => {}
        Err(Refused::NotExposed) => {
            return failure(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!(
                    "tool {tool:?} is not available over HTTP (OpenClaw's default HTTP deny list); \
                     add it to gateway.tools.allow to expose it"
                ),
            );
        }
        Err(Refused::Blocked) => {
            return failure(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!("tool {tool:?} is blocked by gateway.tools.deny"),
            );
        }
    }
    let args = match request.args {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(map)) => Value::Object(map),
        Some(_) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "args must be a JSON object",
            );
        }
    };
    let session =
        match request.session_key.filter(|k| !k.is_empty()).map(SessionKey::new).transpose() {
            Ok(session) => session,
            Err(err) => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &format!("sessionKey: {err}"),
                );
            }
        };
    tracing::info!(tool = %tool, "tools/invoke");
    let invocation = ToolInvocation {
        tool,
        action: request.action,
        args,
        session,
        agent_id: request.agent_id,
        idempotency_key: request.idempotency_key,
    };
    match shared.service.tools_invoke(invocation).await {
        Ok(result) => reply(StatusCode::OK, json!({"ok": true, "result": result})),
        Err(err) => {
            let (status, kind) = match &err {
                ServiceError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
                ServiceError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
                ServiceError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
                ServiceError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                ServiceError::Unavailable { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                }
            };
            failure(status, kind, &err.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(allow: &[&str], deny: &[&str]) -> ToolPolicy {
        ToolPolicy {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn default_deny_list_hides_dangerous_tools() {
        let p = tools(&[], &[]);
        assert_eq!(policy(&p, "exec"), Err(Refused::NotExposed));
        assert_eq!(policy(&p, "fs_write"), Err(Refused::NotExposed));
        assert_eq!(policy(&p, "web_fetch"), Ok(()));
    }

    #[test]
    fn allow_exposes_and_deny_blocks() {
        assert_eq!(policy(&tools(&["exec"], &[]), "exec"), Ok(()));
        assert_eq!(policy(&tools(&["exec"], &["exec"]), "exec"), Err(Refused::Blocked));
        assert_eq!(policy(&tools(&[], &["web_*"]), "web_fetch"), Err(Refused::Blocked));
    }
}
