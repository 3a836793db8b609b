//! JSON shapes of payloads: transcript messages, session rows, models, health and presence,
//! as OpenClaw clients read them (and as `protocol.schema.json` describes them where it does).

use beamclaw_crdt::{ContentPart, Message, Role, SessionKey, StopReason, Usage};
use serde_json::{Map, Value, json};

use crate::service::{
    ExecApproval, ExecApprovalResolution, FastMode, Member, ModelInfo, NodeHealth, NodeInfo,
    SessionSummary,
};

/// A transcript message in pi's shape (OPENCLAW.md §3): `{role, content[], timestamp, ...}`.
pub(crate) fn message(message: &Message) -> Value {
    let mut object = Map::new();
    if message.role == Role::ToolResult {
        // pi keeps tool results as their own message role with the call id at the top.
        object.insert("role".into(), "toolResult".into());
        let mut content = Vec::new();
        for part in &message.content {
            match part {
                ContentPart::ToolResult { tool_call_id, tool_name, content: text, is_error } => {
                    object.insert("toolCallId".into(), tool_call_id.clone().into());
                    object.insert("toolName".into(), tool_name.clone().into());
                    object.insert("isError".into(), (*is_error).into());
                    content.push(json!({"type": "text", "text": text}));
                }
                other => content.push(content_part(other)),
            }
        }
        object.insert("content".into(), Value::Array(content));
    } else {
        object.insert("role".into(), message.role.as_str().into());
        object.insert(
            "content".into(),
            Value::Array(message.content.iter().map(content_part).collect()),
        );
    }
    object.insert("timestamp".into(), message.timestamp_ms.into());
    object.insert("id".into(), message.id.clone().into());
    if let Some(model) = &message.model {
        object.insert("model".into(), model.clone().into());
    }
    if let Some(provider) = &message.provider {
        object.insert("provider".into(), provider.clone().into());
    }
    if let Some(usage) = &message.usage {
        object.insert("usage".into(), usage_value(usage));
    }
    if let Some(stop) = message.stop_reason {
        object.insert("stopReason".into(), stop_reason(stop).into());
    }
    Value::Object(object)
}

fn content_part(part: &ContentPart) -> Value {
    match part {
        ContentPart::Text { text } => json!({"type": "text", "text": text}),
        ContentPart::Thinking { thinking, signature } => match signature {
            Some(signature) => {
                json!({"type": "thinking", "thinking": thinking, "thinkingSignature": signature})
            }
            None => json!({"type": "thinking", "thinking": thinking}),
        },
        ContentPart::ToolCall { id, name, arguments } => {
            json!({"type": "toolCall", "id": id, "name": name, "arguments": arguments})
        }
        ContentPart::ToolResult { tool_call_id, tool_name, content, is_error } => json!({
            "type": "toolResult", "toolCallId": tool_call_id, "toolName": tool_name,
            "content": content, "isError": is_error,
        }),
        ContentPart::Image { mime_type, reference } => {
            json!({"type": "image", "mimeType": mime_type, "url": reference})
        }
    }
}

/// pi's usage: `{input, output, cacheRead, cacheWrite, totalTokens}`.
/// An exec approval as OpenClaw's `exec.approval.requested` payload (`{id, request, createdAtMs,
/// expiresAtMs}`), with BeamClaw's `nodeId` and every resolved binary; a decided one carries
/// `status`, `decision` and `resolvedBy` too (`exec.approval.list`, `exec.approval.get`).
pub(crate) fn exec_approval(approval: &ExecApproval) -> Value {
    let mut out = json!({
        "id": approval.id,
        "request": {
            "command": approval.command,
            "cwd": approval.cwd,
            "host": "gateway",
            "security": approval.security,
            "ask": approval.ask,
            "agentId": approval.agent_id,
            "resolvedPath": approval.resolved_paths.first(),
            "resolvedPaths": approval.resolved_paths,
            "sessionKey": approval.session_key,
            "nodeId": approval.node_id,
        },
        "nodeId": approval.node_id,
        "createdAtMs": approval.created_at_ms,
        "expiresAtMs": approval.expires_at_ms,
        "status": "pending",
    });
    if let Some(r) = &approval.resolution {
        out["status"] = json!(if r.decision == "deny" { "denied" } else { "allowed" });
        out["decision"] = json!(r.decision);
        out["resolvedBy"] = json!(r.resolved_by);
        out["resolvedAtMs"] = json!(r.at_ms);
        out["source"] = json!(r.source);
    }
    out
}

/// OpenClaw's `exec.approval.resolved` payload (`{id, decision, resolvedBy, ts}`), plus the
/// decision's `source`.
pub(crate) fn exec_approval_resolved(r: &ExecApprovalResolution) -> Value {
    json!({
        "id": r.id,
        "decision": r.decision,
        "resolvedBy": r.resolved_by,
        "ts": r.at_ms,
        "source": r.source,
    })
}

pub(crate) fn usage_value(usage: &Usage) -> Value {
    json!({
        "input": usage.input,
        "output": usage.output,
        "cacheRead": usage.cache_read,
        "cacheWrite": usage.cache_write,
        "totalTokens": usage.total(),
    })
}

pub(crate) fn stop_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::Stop => "stop",
        StopReason::Length => "length",
        StopReason::ToolUse => "toolUse",
        StopReason::Error => "error",
        StopReason::Aborted => "aborted",
    }
}

/// OpenClaw's session kind from the key's shape.
pub(crate) fn session_kind(key: &SessionKey) -> &'static str {
    let key = key.as_str();
    if key == "global" {
        "global"
    } else if key.contains(":group:") || key.contains(":channel:") {
        "group"
    } else if key.starts_with("agent:") {
        "direct"
    } else {
        "unknown"
    }
}

/// A `SessionRow` (schema `SessionRow`, open object: BeamClaw adds its owner fields).
pub(crate) fn session_row(summary: &SessionSummary) -> Value {
    let entry = &summary.entry;
    let mut row = Map::new();
    row.insert("key".into(), summary.key.as_str().into());
    row.insert("kind".into(), session_kind(&summary.key).into());
    if !entry.session_id.is_empty() {
        row.insert("sessionId".into(), entry.session_id.clone().into());
    }
    if !entry.agent_id.is_empty() {
        row.insert("agentId".into(), entry.agent_id.clone().into());
    }
    row.insert("updatedAt".into(), entry.updated_at_ms.into());
    let optional = [
        ("label", &entry.label),
        ("displayName", &entry.display_name),
        ("channel", &entry.channel),
        ("model", &entry.model),
        ("spawnedBy", &entry.spawned_by),
        ("thinkingLevel", &summary.settings.thinking_level),
        ("verboseLevel", &summary.settings.verbose_level),
        ("reasoningLevel", &summary.settings.reasoning_level),
        ("elevatedLevel", &summary.settings.elevated_level),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            row.insert(name.into(), value.clone().into());
        }
    }
    if let Some(fast) = summary.settings.fast_mode {
        row.insert("fastMode".into(), fast_mode(fast));
    }
    row.insert("inputTokens".into(), entry.input_tokens.into());
    row.insert("outputTokens".into(), entry.output_tokens.into());
    row.insert("totalTokens".into(), entry.total_tokens.into());
    row.insert("messageCount".into(), entry.message_count.into());
    if let Some(owner) = &entry.owner {
        row.insert("ownerNode".into(), owner.node.clone().into());
        row.insert("ownerEpoch".into(), owner.epoch.into());
    }
    Value::Object(row)
}

pub(crate) fn fast_mode(mode: FastMode) -> Value {
    match mode {
        FastMode::On => Value::Bool(true),
        FastMode::Off => Value::Bool(false),
        FastMode::Auto => Value::from("auto"),
    }
}

/// A `ModelChoice`.
pub(crate) fn model_choice(model: &ModelInfo) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), model.id.clone().into());
    object.insert("name".into(), model.name.clone().into());
    object.insert("provider".into(), model.provider.clone().into());
    object.insert("available".into(), model.available.into());
    object.insert("reasoning".into(), model.reasoning.into());
    if let Some(window) = model.context_window.filter(|w| *w > 0) {
        object.insert("contextWindow".into(), window.into());
    }
    Value::Object(object)
}

/// The `health` payload; it satisfies `Snapshot.health` (a closed object whose `ok` may only
/// be `true`, so an unhealthy node omits it there and says `ok: false` only in the `health`
/// method's answer, which is not schema-bound).
pub(crate) fn health(
    info: &NodeInfo,
    health: &NodeHealth,
    now_ms: i64,
    for_snapshot: bool,
) -> Value {
    let recent: Vec<Value> = health
        .recent
        .iter()
        .map(|r| {
            json!({
                "key": r.key.as_str(),
                "updatedAt": r.updated_at_ms.max(0),
                "age": (now_ms - r.updated_at_ms).max(0),
            })
        })
        .collect();
    let mut object = Map::new();
    if health.ok || !for_snapshot {
        object.insert("ok".into(), health.ok.into());
    }
    object.insert("ts".into(), now_ms.max(0).into());
    object.insert("durationMs".into(), 0.into());
    object.insert("defaultAgentId".into(), info.default_agent_id.clone().into());
    object.insert(
        "sessions".into(),
        json!({
            "path": info.state_dir.clone().unwrap_or_default(),
            "count": health.session_count,
            "recent": recent,
        }),
    );
    Value::Object(object)
}

/// A `PresenceEntry` for one mesh member (BeamClaw's nodes show up as gateways).
pub(crate) fn member_presence(member: &Member, self_id: &str, now_ms: i64) -> Value {
    let mut object = Map::new();
    if !member.name.is_empty() {
        object.insert("host".into(), member.name.clone().into());
    }
    if let Some(version) = member.version.as_ref().filter(|v| !v.is_empty()) {
        object.insert("version".into(), version.clone().into());
    }
    if let Some(address) = member.address.as_ref().filter(|a| !a.is_empty()) {
        object.insert("ip".into(), address.clone().into());
    }
    object.insert("mode".into(), "gateway".into());
    let reason = if member.node_id == self_id { "self" } else { "mesh" };
    object.insert("reason".into(), reason.into());
    object.insert("text".into(), format!("node {} ({})", member.node_id, member.state).into());
    if !member.node_id.is_empty() {
        object.insert("instanceId".into(), member.node_id.clone().into());
    }
    object.insert("ts".into(), now_ms.max(0).into());
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamclaw_crdt::IndexEntry;

    #[test]
    fn assistant_messages_keep_pi_field_names() {
        let mut msg = Message::text("m1", Role::Assistant, "hello", 42);
        msg.usage = Some(Usage { input: 3, output: 4, cache_read: 0, cache_write: 0 });
        msg.stop_reason = Some(StopReason::Stop);
        let v = message(&msg);
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["content"][0], json!({"type": "text", "text": "hello"}));
        assert_eq!(v["timestamp"], 42);
        assert_eq!(v["usage"]["totalTokens"], 7);
        assert_eq!(v["stopReason"], "stop");
    }

    #[test]
    fn tool_results_are_their_own_role() {
        let msg = Message {
            content: vec![ContentPart::ToolResult {
                tool_call_id: "c1".into(),
                tool_name: "read".into(),
                content: "data".into(),
                is_error: false,
            }],
            ..Message::text("m2", Role::ToolResult, "", 1)
        };
        let v = message(&msg);
        assert_eq!(v["role"], "toolResult");
        assert_eq!(v["toolCallId"], "c1");
        assert_eq!(v["content"][0]["text"], "data");
    }

    #[test]
    fn session_kinds_follow_the_key() {
        let kind = |k: &str| session_kind(&SessionKey::new(k).unwrap());
        assert_eq!(kind("agent:main:main"), "direct");
        assert_eq!(kind("agent:main:telegram:group:42"), "group");
        assert_eq!(kind("global"), "global");
        assert_eq!(kind("cron:job"), "unknown");
    }

    #[test]
    fn rows_carry_required_fields() {
        let summary = SessionSummary {
            key: SessionKey::new("agent:main:main").unwrap(),
            entry: IndexEntry { session_id: "s1".into(), ..Default::default() },
            settings: Default::default(),
        };
        let row = session_row(&summary);
        assert_eq!(row["key"], "agent:main:main");
        assert_eq!(row["kind"], "direct");
        assert_eq!(row["sessionId"], "s1");
        assert!(row.get("label").is_none());
    }
}
