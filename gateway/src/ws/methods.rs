//! The handlers of the methods BeamClaw implements: decode params, call the service (or the
//! pairing store), shape the answer as OpenClaw does.

use std::sync::Arc;

use beamclaw_crdt::SessionKey;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::handshake::pairing_call;
use super::registry::{Connection, SUBSCRIPTIONS_PER_CONNECTION_MAX};
use crate::feeds::Subscriber;
use crate::pairing::{PairedDevice, PendingPairing};
use crate::protocol::errors::{ErrorCode, WireError};
use crate::protocol::frames::response_ok;
use crate::protocol::methods::Method;
use crate::protocol::params::{
    self, AgentParams, AgentWaitParams, AttachmentParam, ChatAbortParams, ChatHistoryParams,
    ChatInjectParams, ChatSendParams, ConfigWriteParams, DeviceIdParams, ExecApprovalIdParams,
    ExecApprovalResolveParams, FastModeParam, HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX,
    IDEMPOTENCY_KEY_BYTES_MAX, INJECT_LABEL_BYTES_MAX, IgnoredParams, PairRequestParams,
    RUN_ID_BYTES_MAX, ResetReasonParam, SESSION_LABEL_BYTES_MAX, SESSIONS_PATCH_SUPPORTED,
    SHORT_FIELD_BYTES_MAX, SessionKeyParams, SessionsAbortParams, SessionsCreateParams,
    SessionsDeleteParams, SessionsListParams, SessionsPatchParams, SessionsResetParams,
    SessionsSendParams, TokenRevokeParams, TokenRotateParams,
};
use crate::protocol::wire;
use crate::server::Shared;
use crate::service::{
    AbortTarget, Attachment, ChatInject, ChatSend, ConfigWrite, ConfigWriteMode, FastMode,
    FieldPatch, GatewayService, HistoryQuery, ResetReason, SessionCreate, SessionPatch,
    SessionQuery,
};
use crate::util::{now_ms, truncate_chars};

/// The decisions `exec.approval.resolve` accepts (OpenClaw's `ApprovalDecision`).
pub(crate) const EXEC_APPROVAL_DECISIONS: &[&str] = &["allow-once", "allow-always", "deny"];
/// `agent.wait` waits this long when the client names no `timeoutMs`.
pub(crate) const AGENT_WAIT_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Longest wait for a run (`agent.wait`, the final `agent` answer), milliseconds.
pub(crate) const RUN_WAIT_TIMEOUT_MS_MAX: u64 = 30 * 60 * 1000;
/// The final `agent` answer waits this long when the client names no `timeout`.
pub(crate) const AGENT_RUN_TIMEOUT_MS_DEFAULT: u64 = 10 * 60 * 1000;
/// `sessions.list` returns this many rows when the client names no `limit`.
pub(crate) const SESSIONS_LIST_LIMIT_DEFAULT: usize = 200;
/// `sessions.list` returns at most this many rows.
pub(crate) const SESSIONS_LIST_LIMIT_MAX: usize = 1000;

fn decode<T: DeserializeOwned>(method: Method, params: Value) -> Result<T, WireError> {
    params::parse_closed(params, method.allowed_params(), "params", method.name())
}

/// OpenClaw agent ids: `[a-z0-9][a-z0-9_-]{0,63}`.
pub(crate) fn valid_agent_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

fn agent_id(field: &str, raw: Option<String>, default: &str) -> Result<String, WireError> {
    match raw {
        None => Ok(default.to_owned()),
        Some(id) => {
            let id = id.trim().to_ascii_lowercase();
            if valid_agent_id(&id) {
                Ok(id)
            } else {
                Err(WireError::invalid(format!(
                    "params.{field} must match [a-z0-9][a-z0-9_-]{{0,63}}"
                )))
            }
        }
    }
}

fn attachments(raw: Option<Vec<AttachmentParam>>) -> Result<Vec<Attachment>, WireError> {
    let raw = raw.unwrap_or_default();
    if raw.len() > params::ATTACHMENTS_MAX {
        return Err(WireError::invalid(format!(
            "params.attachments has {} items; at most {} are allowed",
            raw.len(),
            params::ATTACHMENTS_MAX
        )));
    }
    Ok(raw
        .into_iter()
        .map(|a| Attachment {
            kind: a.kind,
            mime_type: a.mime_type,
            file_name: a.file_name,
            content: a.content.unwrap_or(Value::Null),
        })
        .collect())
}

fn short(field: &str, value: &Option<String>) -> Result<(), WireError> {
    match value {
        Some(v) => params::bounded(field, v, 1, SHORT_FIELD_BYTES_MAX),
        None => Ok(()),
    }
}

/// Makes sure the connection receives the session's `chat`/`agent` events.
pub(crate) async fn follow<S: GatewayService>(
    shared: &Shared<S>,
    connection: &Arc<Connection>,
    key: &SessionKey,
) -> Result<(), WireError> {
    let _serial = connection.follow_lock.lock().await;
    {
        let joined = connection.joined.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if joined.contains_key(key) {
            return Ok(());
        }
        if joined.len() >= SUBSCRIPTIONS_PER_CONNECTION_MAX {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                format!(
                    "this connection follows {SUBSCRIPTIONS_PER_CONNECTION_MAX} sessions, the \
                     maximum; call sessions.messages.unsubscribe first"
                ),
            ));
        }
    }
    let id = shared.feeds.join(key, Subscriber::Socket(connection.clone())).await?;
    connection
        .joined
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key.clone(), id);
    Ok(())
}

fn unfollow<S: GatewayService>(
    shared: &Shared<S>,
    connection: &Connection,
    key: &SessionKey,
) -> bool {
    let id =
        connection.joined.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
    match id {
        Some(id) => {
            shared.feeds.leave(key, id);
            true
        }
        None => false,
    }
}

pub(crate) async fn handle<S: GatewayService>(
    shared: &Arc<Shared<S>>,
    connection: &Arc<Connection>,
    method: Method,
    request_id: &str,
    raw: Value,
) -> Result<Value, WireError> {
    let service = &shared.service;
    match method {
        Method::Health => {
            let _: IgnoredParams = decode(method, raw)?;
            let health = service.health().await?;
            Ok(wire::health(&shared.node, &health, now_ms(), false))
        }
        Method::Status => {
            let _: IgnoredParams = decode(method, raw)?;
            status(shared).await
        }
        Method::SystemPresence => {
            let _: IgnoredParams = decode(method, raw)?;
            Ok(Value::Array(shared.presence()))
        }
        Method::ModelsList => {
            let _: IgnoredParams = decode(method, raw)?;
            let models = service.models().await?;
            Ok(json!({"models": models.iter().map(wire::model_choice).collect::<Vec<_>>()}))
        }
        Method::ConfigGet => {
            let _: IgnoredParams = decode(method, raw)?;
            Ok(service.config_get().await?)
        }
        Method::ConfigSet | Method::ConfigPatch => {
            let p: ConfigWriteParams = decode(method, raw)?;
            params::bounded("raw", &p.raw, 1, shared.config.limits.max_payload_bytes)?;
            let mode = if method == Method::ConfigSet {
                ConfigWriteMode::Set
            } else {
                ConfigWriteMode::Patch
            };
            Ok(service
                .config_write(ConfigWrite { mode, raw: p.raw, base_hash: p.base_hash })
                .await?)
        }
        Method::ChatSend => {
            let p: ChatSendParams = decode(method, raw)?;
            params::message_body("message", &p.message)?;
            params::bounded("idempotencyKey", &p.idempotency_key, 1, IDEMPOTENCY_KEY_BYTES_MAX)?;
            short("thinking", &p.thinking)?;
            let key = params::session_key("sessionKey", p.session_key)?;
            send(
                shared,
                connection,
                ChatSend {
                    session: key,
                    message: p.message,
                    idempotency_key: p.idempotency_key,
                    thinking: p.thinking,
                    attachments: attachments(p.attachments)?,
                    timeout_ms: p.timeout_ms,
                },
            )
            .await
        }
        Method::SessionsSend => {
            let p: SessionsSendParams = decode(method, raw)?;
            params::message_body("message", &p.message)?;
            short("thinking", &p.thinking)?;
            let idempotency_key = match p.idempotency_key {
                Some(k) => {
                    params::bounded("idempotencyKey", &k, 1, IDEMPOTENCY_KEY_BYTES_MAX)?;
                    k
                }
                None => uuid::Uuid::new_v4().to_string(),
            };
            let key = params::session_key("key", p.key)?;
            send(
                shared,
                connection,
                ChatSend {
                    session: key,
                    message: p.message,
                    idempotency_key,
                    thinking: p.thinking,
                    attachments: attachments(p.attachments)?,
                    timeout_ms: p.timeout_ms,
                },
            )
            .await
        }
        Method::ChatHistory => {
            let p: ChatHistoryParams = decode(method, raw)?;
            let key = params::session_key("sessionKey", p.session_key)?;
            let limit = match p.limit {
                None => HISTORY_LIMIT_DEFAULT,
                Some(n) if n >= 1 && n <= HISTORY_LIMIT_MAX as u64 => n as usize,
                Some(n) => {
                    return Err(WireError::invalid(format!(
                        "params.limit is {n}; it must be 1..={HISTORY_LIMIT_MAX}"
                    )));
                }
            };
            let history =
                service.chat_history(HistoryQuery { session: key.clone(), limit }).await?;
            let max_chars = p.max_chars.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            let messages: Vec<Value> = history
                .messages
                .iter()
                .map(|m| {
                    let mut value = wire::message(m);
                    if let Some(max) = max_chars {
                        clip_text_parts(&mut value, max);
                    }
                    value
                })
                .collect();
            let mut out = json!({
                "sessionKey": key.as_str(),
                "sessionId": history.session_id,
                "messages": messages,
            });
            if let Some(level) = history.thinking_level {
                out["thinkingLevel"] = level.into();
            }
            Ok(out)
        }
        Method::ChatAbort => {
            let p: ChatAbortParams = decode(method, raw)?;
            let key = params::session_key("sessionKey", p.session_key)?;
            if let Some(run) = &p.run_id {
                params::bounded("runId", run, 1, RUN_ID_BYTES_MAX)?;
            }
            abort(shared, AbortTarget { session: Some(key), run_id: p.run_id }).await
        }
        Method::SessionsAbort => {
            let p: SessionsAbortParams = decode(method, raw)?;
            if p.key.is_none() && p.run_id.is_none() {
                return Err(WireError::invalid("sessions.abort needs params.key or params.runId"));
            }
            let key = p.key.map(|k| params::session_key("key", k)).transpose()?;
            if let Some(run) = &p.run_id {
                params::bounded("runId", run, 1, RUN_ID_BYTES_MAX)?;
            }
            abort(shared, AbortTarget { session: key, run_id: p.run_id }).await
        }
        Method::ChatInject => {
            let p: ChatInjectParams = decode(method, raw)?;
            params::bounded("message", &p.message, 1, beamclaw_crdt::MESSAGE_BODY_BYTES_MAX)?;
            if let Some(label) = &p.label {
                params::bounded("label", label, 0, INJECT_LABEL_BYTES_MAX)?;
            }
            let key = params::session_key("sessionKey", p.session_key)?;
            let message = service
                .chat_inject(ChatInject { session: key, text: p.message, label: p.label })
                .await?;
            Ok(json!({"ok": true, "messageId": message.id, "message": wire::message(&message)}))
        }
        Method::Agent => agent(shared, connection, request_id, raw).await,
        Method::AgentWait => {
            let p: AgentWaitParams = decode(method, raw)?;
            params::bounded("runId", &p.run_id, 1, RUN_ID_BYTES_MAX)?;
            let timeout =
                p.timeout_ms.unwrap_or(AGENT_WAIT_TIMEOUT_MS_DEFAULT).min(RUN_WAIT_TIMEOUT_MS_MAX);
            let outcome = service.run_wait(p.run_id.clone(), timeout).await?;
            let mut out = json!({"runId": p.run_id, "status": outcome.status.as_str()});
            if let Some(at) = outcome.started_at_ms {
                out["startedAt"] = at.into();
            }
            if let Some(at) = outcome.ended_at_ms {
                out["endedAt"] = at.into();
            }
            if let Some(error) = outcome.error {
                out["error"] = error.into();
            }
            Ok(out)
        }
        Method::SessionsList => {
            let p: SessionsListParams = decode(method, raw)?;
            let limit = match p.limit {
                None => SESSIONS_LIST_LIMIT_DEFAULT,
                Some(n) => {
                    usize::try_from(n).unwrap_or(usize::MAX).clamp(1, SESSIONS_LIST_LIMIT_MAX)
                }
            };
            short("agentId", &p.agent_id)?;
            if let Some(label) = &p.label {
                params::bounded("label", label, 1, SESSION_LABEL_BYTES_MAX)?;
            }
            if let Some(search) = &p.search {
                params::bounded("search", search, 0, SHORT_FIELD_BYTES_MAX)?;
            }
            let sessions = service
                .sessions_list(SessionQuery {
                    limit: Some(limit),
                    agent_id: p.agent_id,
                    label: p.label,
                    search: p.search,
                    active_minutes: p.active_minutes,
                })
                .await?;
            let rows: Vec<Value> = sessions.iter().take(limit).map(wire::session_row).collect();
            Ok(json!({"ts": now_ms().max(0), "count": rows.len(), "sessions": rows}))
        }
        Method::SessionsGet => {
            let p: SessionKeyParams = decode(method, raw)?;
            let key = params::session_key("key", p.key)?;
            match service.session_get(key.clone()).await? {
                Some(summary) => {
                    Ok(json!({"key": key.as_str(), "session": wire::session_row(&summary)}))
                }
                None => Err(WireError::invalid(format!("session {key} not found"))),
            }
        }
        Method::SessionsCreate => sessions_create(shared, connection, raw).await,
        Method::SessionsPatch => {
            if let Value::Object(object) = &raw
                && let Some(unsupported) =
                    object.keys().find(|k| !SESSIONS_PATCH_SUPPORTED.contains(&k.as_str()))
                && method.allowed_params().is_some_and(|a| a.contains(&unsupported.as_str()))
            {
                return Err(WireError::invalid(format!(
                    "params.{unsupported} is part of OpenClaw's sessions.patch but not supported \
                     by BeamClaw; supported: {}",
                    SESSIONS_PATCH_SUPPORTED.join(", ")
                )));
            }
            let p: SessionsPatchParams = decode(method, raw)?;
            let key = params::session_key("key", p.key)?;
            let patch = SessionPatch {
                label: text_patch("label", p.label, SESSION_LABEL_BYTES_MAX)?,
                model: text_patch("model", p.model, SHORT_FIELD_BYTES_MAX)?,
                thinking_level: text_patch(
                    "thinkingLevel",
                    p.thinking_level,
                    SHORT_FIELD_BYTES_MAX,
                )?,
                verbose_level: text_patch("verboseLevel", p.verbose_level, SHORT_FIELD_BYTES_MAX)?,
                reasoning_level: text_patch(
                    "reasoningLevel",
                    p.reasoning_level,
                    SHORT_FIELD_BYTES_MAX,
                )?,
                elevated_level: text_patch(
                    "elevatedLevel",
                    p.elevated_level,
                    SHORT_FIELD_BYTES_MAX,
                )?,
                fast_mode: match p.fast_mode {
                    None => FieldPatch::Keep,
                    Some(None) => FieldPatch::Clear,
                    Some(Some(FastModeParam::Flag(true))) => FieldPatch::Set(FastMode::On),
                    Some(Some(FastModeParam::Flag(false))) => FieldPatch::Set(FastMode::Off),
                    Some(Some(FastModeParam::Word(w))) if w == "auto" => {
                        FieldPatch::Set(FastMode::Auto)
                    }
                    Some(Some(FastModeParam::Word(_))) => {
                        return Err(WireError::invalid(
                            "params.fastMode must be true, false, \"auto\" or null",
                        ));
                    }
                },
            };
            let summary = service.session_patch(key.clone(), patch).await?;
            Ok(json!({"ok": true, "key": key.as_str(), "entry": wire::session_row(&summary)}))
        }
        Method::SessionsReset => {
            let p: SessionsResetParams = decode(method, raw)?;
            let key = params::session_key("key", p.key)?;
            let reason = match p.reason {
                Some(ResetReasonParam::New) => ResetReason::New,
                Some(ResetReasonParam::Reset) | None => ResetReason::Reset,
            };
            let summary = service.session_reset(key.clone(), reason).await?;
            Ok(json!({"ok": true, "key": key.as_str(), "entry": wire::session_row(&summary)}))
        }
        Method::SessionsDelete => {
            let p: SessionsDeleteParams = decode(method, raw)?;
            let key = params::session_key("key", p.key)?;
            let deleted =
                service.session_delete(key.clone(), p.delete_transcript.unwrap_or(true)).await?;
            unfollow(shared, connection, &key);
            Ok(json!({"ok": true, "key": key.as_str(), "deleted": deleted, "archived": []}))
        }
        Method::SessionsSubscribe => {
            let _: IgnoredParams = decode(method, raw)?;
            connection.sessions_changed.store(true, std::sync::atomic::Ordering::Release);
            Ok(json!({"subscribed": true}))
        }
        Method::SessionsMessagesSubscribe => {
            let p: SessionKeyParams = decode(method, raw)?;
            let key = params::session_key("key", p.key)?;
            follow(shared, connection, &key).await?;
            Ok(json!({"subscribed": true, "key": key.as_str()}))
        }
        Method::SessionsMessagesUnsubscribe => {
            let p: SessionKeyParams = decode(method, raw)?;
            let key = params::session_key("key", p.key)?;
            let was = unfollow(shared, connection, &key);
            Ok(json!({"subscribed": false, "key": key.as_str(), "wasSubscribed": was}))
        }
        Method::ExecApprovalList => {
            let _: IgnoredParams = decode(method, raw)?;
            let approvals = service.exec_approvals_list().await?;
            let rows: Vec<Value> = approvals.iter().map(wire::exec_approval).collect();
            Ok(json!({"ts": now_ms().max(0), "approvals": rows}))
        }
        Method::ExecApprovalGet => {
            let p: ExecApprovalIdParams = decode(method, raw)?;
            params::bounded("id", &p.id, 1, SHORT_FIELD_BYTES_MAX)?;
            let approval = service.exec_approval_get(p.id).await?;
            Ok(wire::exec_approval(&approval))
        }
        Method::ExecApprovalResolve => {
            let p: ExecApprovalResolveParams = decode(method, raw)?;
            params::bounded("id", &p.id, 1, SHORT_FIELD_BYTES_MAX)?;
            if !EXEC_APPROVAL_DECISIONS.contains(&p.decision.as_str()) {
                return Err(WireError::invalid(format!(
                    "params.decision must be one of {}",
                    EXEC_APPROVAL_DECISIONS.join(", ")
                )));
            }
            let client = &connection.client;
            let who = client.display_name.as_deref().unwrap_or(&client.id);
            let resolved_by = match (&p.reviewer, &connection.device_id) {
                (Some(r), _) => {
                    format!("{}:{}:{} via {who}", r.channel, r.account_id, r.sender_id)
                }
                (None, Some(device)) => format!("{who} (device {})", truncate_chars(device, 16)),
                (None, None) => format!("{who} (connection {})", connection.conn_id),
            };
            let resolution = service
                .exec_approval_resolve(
                    p.id,
                    p.decision,
                    truncate_chars(&resolved_by, SHORT_FIELD_BYTES_MAX).to_string(),
                )
                .await?;
            Ok(wire::exec_approval_resolved(&resolution))
        }
        Method::DevicePairList => {
            let _: IgnoredParams = decode(method, raw)?;
            let snapshot = pairing_call(&shared.pairing, |s| s.snapshot(now_ms())).await?;
            Ok(json!({
                "pending": snapshot.pending.iter().map(pending_value).collect::<Vec<_>>(),
                "paired": snapshot.paired.iter().map(device_value).collect::<Vec<_>>(),
            }))
        }
        Method::DevicePairApprove => {
            let p: PairRequestParams = decode(method, raw)?;
            let request_id = p.request_id.clone();
            let device =
                pairing_call(&shared.pairing, move |s| s.approve(&request_id, now_ms())).await?;
            announce_resolved(shared, &p.request_id, &device.device_id, "approved");
            tracing::info!(device = %device.device_id, request = %p.request_id, "device pairing approved");
            Ok(json!({"requestId": p.request_id, "device": device_value(&device)}))
        }
        Method::DevicePairReject => {
            let p: PairRequestParams = decode(method, raw)?;
            let request_id = p.request_id.clone();
            let pending =
                pairing_call(&shared.pairing, move |s| s.reject(&request_id, now_ms())).await?;
            announce_resolved(shared, &p.request_id, &pending.request.device_id, "rejected");
            Ok(json!({"requestId": p.request_id, "deviceId": pending.request.device_id}))
        }
        Method::DevicePairRemove => {
            let p: DeviceIdParams = decode(method, raw)?;
            let device_id = p.device_id.clone();
            pairing_call(&shared.pairing, move |s| s.remove(&device_id)).await?;
            let closed = shared.connections.close_device(&p.device_id, "device removed");
            tracing::info!(device = %p.device_id, closed, "device removed");
            Ok(json!({"deviceId": p.device_id, "removedAtMs": now_ms().max(0)}))
        }
        Method::DeviceTokenRotate => {
            let p: TokenRotateParams = decode(method, raw)?;
            let (device_id, role, scopes) = (p.device_id.clone(), p.role.clone(), p.scopes.clone());
            let issued = pairing_call(&shared.pairing, move |s| {
                s.issue_token(&device_id, &role, scopes, now_ms())
            })
            .await?;
            Ok(json!({
                "deviceId": p.device_id,
                "role": issued.role,
                "token": issued.token,
                "scopes": issued.scopes,
                "rotatedAtMs": issued.issued_at_ms.max(0),
                "tokenDelivery": "in-band",
            }))
        }
        Method::DeviceTokenRevoke => {
            let p: TokenRevokeParams = decode(method, raw)?;
            let (device_id, role) = (p.device_id.clone(), p.role.clone());
            let now = now_ms();
            pairing_call(&shared.pairing, move |s| s.revoke_token(&device_id, &role, now)).await?;
            shared.connections.close_device(&p.device_id, "device token revoked");
            Ok(json!({"deviceId": p.device_id, "role": p.role, "revokedAtMs": now.max(0)}))
        }
        Method::SkillsStatus => {
            let p: params::SkillsStatusParams = decode(method, raw)?;
            if let Some(id) = &p.agent_id
                && !valid_agent_id(id)
            {
                return Err(WireError::invalid(format!("agentId {id:?} is not an agent id")));
            }
            let session = match p.session_key {
                Some(k) => Some(params::session_key("sessionKey", k)?),
                None => None,
            };
            Ok(service.skills_status(p.agent_id, session).await?)
        }
    }
}

fn text_patch(
    field: &str,
    value: Option<Option<String>>,
    max: usize,
) -> Result<FieldPatch<String>, WireError> {
    match value {
        None => Ok(FieldPatch::Keep),
        Some(None) => Ok(FieldPatch::Clear),
        Some(Some(v)) => {
            params::bounded(field, &v, 1, max)?;
            Ok(FieldPatch::Set(v))
        }
    }
}

fn clip_text_parts(message: &mut Value, max_chars: usize) {
    if let Some(parts) = message.get_mut("content").and_then(Value::as_array_mut) {
        for part in parts {
            for field in ["text", "thinking"] {
                if let Some(Value::String(text)) = part.get_mut(field)
                    && text.chars().count() > max_chars
                {
                    *text = truncate_chars(text, max_chars).to_owned();
                }
            }
        }
    }
}

async fn status<S: GatewayService>(shared: &Arc<Shared<S>>) -> Result<Value, WireError> {
    let status = shared.service.status().await?;
    let node = &shared.node;
    let members: Vec<Value> = status
        .members
        .iter()
        .map(|m| {
            json!({
                "nodeId": m.node_id, "name": m.name, "state": m.state,
                "address": m.address, "version": m.version, "sessionsOwned": m.sessions_owned,
            })
        })
        .collect();
    Ok(json!({
        "node": {
            "id": node.node_id, "name": node.name, "version": node.version,
            "startedAt": node.started_at_ms, "uptimeMs": shared.uptime_ms(),
        },
        "members": members,
        "sessions": {
            "owned": status.sessions_owned,
            "replicated": status.sessions_replicated,
            "followedHere": shared.feeds.active(),
        },
        "providers": status.providers,
        "gateway": {
            "connections": shared.connections.open_count(),
            "authMode": shared.config.auth.mode.as_str(),
            "listen": shared.local_addr.to_string(),
        },
    }))
}

async fn send<S: GatewayService>(
    shared: &Arc<Shared<S>>,
    connection: &Arc<Connection>,
    send: ChatSend,
) -> Result<Value, WireError> {
    follow(shared, connection, &send.session).await?;
    let accepted = shared.service.chat_send(send).await?;
    Ok(json!({"runId": accepted.run_id, "status": accepted.status.as_str()}))
}

async fn abort<S: GatewayService>(
    shared: &Arc<Shared<S>>,
    target: AbortTarget,
) -> Result<Value, WireError> {
    let outcome = shared.service.chat_abort(target).await?;
    Ok(json!({"ok": true, "aborted": outcome.aborted, "runIds": outcome.run_ids}))
}

/// `agent`: answers twice on one request id, `accepted` at once and the outcome at the end.
async fn agent<S: GatewayService>(
    shared: &Arc<Shared<S>>,
    connection: &Arc<Connection>,
    request_id: &str,
    raw: Value,
) -> Result<Value, WireError> {
    let p: AgentParams = decode(Method::Agent, raw)?;
    params::bounded("message", &p.message, 1, beamclaw_crdt::MESSAGE_BODY_BYTES_MAX)?;
    params::bounded("idempotencyKey", &p.idempotency_key, 1, IDEMPOTENCY_KEY_BYTES_MAX)?;
    short("thinking", &p.thinking)?;
    let node = &shared.node;
    let agent = agent_id("agentId", p.agent_id, &node.default_agent_id)?;
    let key = match p.session_key.filter(|k| !k.is_empty()) {
        Some(k) => params::session_key("sessionKey", k)?,
        None => params::session_key("sessionKey", format!("agent:{agent}:{}", node.main_key))?,
    };
    let timeout_ms = p.timeout.map(|s| s.saturating_mul(1000));
    let run_timeout =
        timeout_ms.unwrap_or(AGENT_RUN_TIMEOUT_MS_DEFAULT).min(RUN_WAIT_TIMEOUT_MS_MAX);
    follow(shared, connection, &key).await?;
    let accepted = shared
        .service
        .chat_send(ChatSend {
            session: key,
            message: p.message,
            idempotency_key: p.idempotency_key,
            thinking: p.thinking,
            attachments: attachments(p.attachments)?,
            timeout_ms,
        })
        .await?;
    connection.send_frame(response_ok(
        request_id,
        json!({"runId": accepted.run_id, "status": "accepted", "acceptedAt": now_ms().max(0)}),
    ));
    let outcome = shared.service.run_wait(accepted.run_id.clone(), run_timeout).await?;
    let text = outcome.message.as_ref().map(|m| m.text_content()).unwrap_or_default();
    let summary = match (&outcome.error, outcome.status.as_str()) {
        (Some(error), _) => error.clone(),
        (None, "ok") => "completed".to_owned(),
        (None, other) => other.to_owned(),
    };
    let mut out = json!({
        "runId": accepted.run_id,
        "status": outcome.status.as_str(),
        "summary": summary,
        "result": {"payloads": [{"text": text}]},
    });
    if let Some(error) = outcome.error {
        out["error"] = error.into();
    }
    Ok(out)
}

async fn sessions_create<S: GatewayService>(
    shared: &Arc<Shared<S>>,
    connection: &Arc<Connection>,
    raw: Value,
) -> Result<Value, WireError> {
    let p: SessionsCreateParams = decode(Method::SessionsCreate, raw)?;
    let key = p.key.map(|k| params::session_key("key", k)).transpose()?;
    let agent = p.agent_id.map(|a| agent_id("agentId", Some(a), "")).transpose()?;
    if let Some(label) = &p.label {
        params::bounded("label", label, 1, SESSION_LABEL_BYTES_MAX)?;
    }
    short("model", &p.model)?;
    short("thinkingLevel", &p.thinking_level)?;
    if let Some(message) = &p.message {
        params::message_body("message", message)?;
    }
    let summary = shared
        .service
        .session_create(SessionCreate {
            key,
            agent_id: agent,
            label: p.label,
            model: p.model,
            thinking_level: p.thinking_level,
        })
        .await?;
    let mut out =
        json!({"ok": true, "key": summary.key.as_str(), "entry": wire::session_row(&summary)});
    if !summary.entry.session_id.is_empty() {
        out["sessionId"] = summary.entry.session_id.clone().into();
    }
    if let Some(message) = p.message.filter(|m| !m.is_empty()) {
        let idempotency_key = p.idempotency_key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        params::bounded("idempotencyKey", &idempotency_key, 1, IDEMPOTENCY_KEY_BYTES_MAX)?;
        follow(shared, connection, &summary.key).await?;
        let accepted = shared
            .service
            .chat_send(ChatSend {
                session: summary.key.clone(),
                message,
                idempotency_key,
                thinking: None,
                attachments: Vec::new(),
                timeout_ms: None,
            })
            .await?;
        out["runStarted"] = true.into();
        out["runId"] = accepted.run_id.into();
    }
    Ok(out)
}

fn announce_resolved<S: GatewayService>(
    shared: &Shared<S>,
    request_id: &str,
    device_id: &str,
    decision: &str,
) {
    let payload = json!({
        "requestId": request_id, "deviceId": device_id, "decision": decision, "ts": now_ms().max(0),
    });
    shared.connections.broadcast("device.pair.resolved", &payload.to_string(), None);
}

/// The `device.pair.requested` payload (schema `DevicePairRequestedEvent`).
pub(crate) fn pair_requested_payload(pending: &PendingPairing) -> String {
    pending_value(pending).to_string()
}

fn pending_value(pending: &PendingPairing) -> Value {
    let r = &pending.request;
    let mut v = json!({
        "requestId": pending.request_id,
        "deviceId": r.device_id,
        "publicKey": r.public_key,
        "role": r.role,
        "roles": [r.role],
        "scopes": r.scopes,
        "isRepair": pending.is_repair,
        "ts": pending.created_at_ms.max(0),
    });
    for (name, value) in [
        ("displayName", &r.display_name),
        ("platform", &r.platform),
        ("deviceFamily", &r.device_family),
        ("clientId", &r.client_id),
        ("clientMode", &r.client_mode),
        ("remoteIp", &r.remote_ip),
    ] {
        if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
            v[name] = value.clone().into();
        }
    }
    v
}

fn device_value(device: &PairedDevice) -> Value {
    let tokens: Vec<Value> = device
        .tokens
        .iter()
        .map(|t| {
            json!({
                "role": t.role, "scopes": t.scopes, "createdAtMs": t.issued_at_ms,
                "revokedAtMs": t.revoked_at_ms,
            })
        })
        .collect();
    json!({
        "deviceId": device.device_id,
        "publicKey": device.public_key,
        "displayName": device.display_name,
        "platform": device.platform,
        "deviceFamily": device.device_family,
        "clientId": device.client_id,
        "clientMode": device.client_mode,
        "roles": device.roles,
        "scopes": device.scopes,
        "approvedAtMs": device.approved_at_ms,
        "tokens": tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_follow_openclaw_rules() {
        assert!(valid_agent_id("main"));
        assert!(valid_agent_id("a-b_c9"));
        assert!(!valid_agent_id(""));
        assert!(!valid_agent_id("-x"));
        assert!(!valid_agent_id("Main"));
        assert!(!valid_agent_id(&"a".repeat(65)));
    }

    #[test]
    fn clipping_respects_max_chars() {
        let mut message = json!({"content": [{"type": "text", "text": "héllo"}]});
        clip_text_parts(&mut message, 2);
        assert_eq!(message["content"][0]["text"], "hé");
    }
}
