//! Request parameters as typed Rust, decoded from a frame's `params`.
//!
//! Each struct names the properties BeamClaw uses; the property list of the official schema
//! (generated into `schema_tables`) decides which other properties are tolerated. A property
//! the schema does not know is refused, as OpenClaw's closed schemas do, and every refusal
//! names the field (`params.sessionKey: invalid type: ...`).

use beamclaw_crdt::{MESSAGE_BODY_BYTES_MAX, SessionKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::errors::WireError;
use super::frames::decode_path;

/// Longest idempotency key accepted, in bytes.
pub(crate) const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;
/// Longest run id accepted in a request, in bytes.
pub(crate) const RUN_ID_BYTES_MAX: usize = 256;
/// `chat.history` returns this many messages when `limit` is absent (OpenClaw's default).
pub(crate) const HISTORY_LIMIT_DEFAULT: usize = 200;
/// `chat.history` returns at most this many messages (OpenClaw's maximum).
pub(crate) const HISTORY_LIMIT_MAX: usize = 1000;
/// Longest `chat.inject` label, in bytes (the schema's limit).
pub(crate) const INJECT_LABEL_BYTES_MAX: usize = 100;
/// Longest session label, in bytes (the schema's limit).
pub(crate) const SESSION_LABEL_BYTES_MAX: usize = 512;
/// Longest short string field (model names, levels, agent ids, tool names), in bytes.
pub(crate) const SHORT_FIELD_BYTES_MAX: usize = 256;
/// Most attachments on one message.
pub(crate) const ATTACHMENTS_MAX: usize = 32;
/// Most scopes a client may name.
pub(crate) const SCOPES_MAX: usize = 32;

/// Decodes `params` (absent means `{}`) into `T`. `allowed` is the closed property list of the
/// official schema, when there is one; `context` prefixes error paths (`params`).
pub(crate) fn parse_closed<T: DeserializeOwned>(
    params: Value,
    allowed: Option<&[&str]>,
    context: &str,
    method: &str,
) -> Result<T, WireError> {
    let object = match params {
        Value::Null => Map::new(),
        Value::Object(object) => object,
        other => {
            return Err(WireError::invalid(format!(
                "{context} of {method} must be a JSON object, not {}",
                json_kind(&other)
            )));
        }
    };
    if let Some(allowed) = allowed
        && let Some(unknown) = object.keys().find(|key| !allowed.contains(&key.as_str()))
    {
        return Err(WireError::invalid(format!(
            "{context}.{unknown}: unknown property for {method}; allowed: {}",
            allowed.join(", ")
        )));
    }
    decode_path(Value::Object(object), context).map_err(WireError::invalid)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A session key from `field`, validated by the crdt crate's rules.
pub(crate) fn session_key(field: &str, raw: String) -> Result<SessionKey, WireError> {
    SessionKey::new(raw).map_err(|err| WireError::invalid(format!("params.{field}: {err}")))
}

/// Checks a string's length in bytes.
pub(crate) fn bounded(field: &str, value: &str, min: usize, max: usize) -> Result<(), WireError> {
    if value.len() < min {
        return Err(WireError::invalid(format!("params.{field} must not be empty")));
    }
    if value.len() > max {
        return Err(WireError::invalid(format!(
            "params.{field} is {} bytes; at most {max} are allowed",
            value.len()
        )));
    }
    Ok(())
}

pub(crate) fn message_body(field: &str, value: &str) -> Result<(), WireError> {
    bounded(field, value, 0, MESSAGE_BODY_BYTES_MAX)
}

/// Deserializes a present field (even `null`) as `Some(inner)`: `None` = absent,
/// `Some(None)` = `null` (clear), `Some(Some(v))` = set.
fn double_option<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AttachmentParam {
    #[serde(rename = "type", default)]
    pub(crate) kind: Option<String>,
    #[serde(default)]
    pub(crate) mime_type: Option<String>,
    #[serde(default)]
    pub(crate) file_name: Option<String>,
    #[serde(default)]
    pub(crate) content: Option<Value>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChatSendParams {
    pub(crate) session_key: String,
    pub(crate) message: String,
    pub(crate) idempotency_key: String,
    #[serde(default)]
    pub(crate) thinking: Option<String>,
    #[serde(default)]
    pub(crate) attachments: Option<Vec<AttachmentParam>>,
    #[serde(default)]
    pub(crate) timeout_ms: Option<u64>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChatHistoryParams {
    pub(crate) session_key: String,
    #[serde(default)]
    pub(crate) limit: Option<u64>,
    #[serde(default)]
    pub(crate) max_chars: Option<u64>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChatAbortParams {
    pub(crate) session_key: String,
    #[serde(default)]
    pub(crate) run_id: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChatInjectParams {
    pub(crate) session_key: String,
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) label: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentParams {
    pub(crate) message: String,
    pub(crate) idempotency_key: String,
    #[serde(default)]
    pub(crate) agent_id: Option<String>,
    #[serde(default)]
    pub(crate) session_key: Option<String>,
    #[serde(default)]
    pub(crate) thinking: Option<String>,
    /// Seconds, as in OpenClaw.
    #[serde(default)]
    pub(crate) timeout: Option<u64>,
    #[serde(default)]
    pub(crate) attachments: Option<Vec<AttachmentParam>>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentWaitParams {
    pub(crate) run_id: String,
    #[serde(default)]
    pub(crate) timeout_ms: Option<u64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionsListParams {
    #[serde(default)]
    pub(crate) limit: Option<u64>,
    #[serde(default)]
    pub(crate) agent_id: Option<String>,
    #[serde(default)]
    pub(crate) label: Option<String>,
    #[serde(default)]
    pub(crate) search: Option<String>,
    #[serde(default)]
    pub(crate) active_minutes: Option<u64>,
}

/// `skills.status`: whose skills (an agent, or the agent of a session; default: the default
/// agent).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SkillsStatusParams {
    #[serde(default)]
    pub(crate) agent_id: Option<String>,
    #[serde(default)]
    pub(crate) session_key: Option<String>,
}

/// `sessions.get`, `sessions.messages.subscribe|unsubscribe`: just a key.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionKeyParams {
    pub(crate) key: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionsCreateParams {
    #[serde(default)]
    pub(crate) key: Option<String>,
    #[serde(default)]
    pub(crate) agent_id: Option<String>,
    #[serde(default)]
    pub(crate) label: Option<String>,
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) thinking_level: Option<String>,
    /// A first message: the session is created and a run starts.
    #[serde(default)]
    pub(crate) message: Option<String>,
    #[serde(default)]
    pub(crate) idempotency_key: Option<String>,
}

/// `fastMode` on the wire: `true`, `false` or `"auto"`.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub(crate) enum FastModeParam {
    Flag(bool),
    Word(String),
}

/// The `sessions.patch` properties BeamClaw applies; the schema allows more, which are
/// refused by name rather than silently ignored.
pub(crate) const SESSIONS_PATCH_SUPPORTED: &[&str] = &[
    "key",
    "agentId",
    "label",
    "model",
    "thinkingLevel",
    "verboseLevel",
    "reasoningLevel",
    "elevatedLevel",
    "fastMode",
];

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionsPatchParams {
    pub(crate) key: String,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) label: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) model: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) thinking_level: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) verbose_level: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) reasoning_level: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) elevated_level: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) fast_mode: Option<Option<FastModeParam>>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ResetReasonParam {
    New,
    Reset,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionsResetParams {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) reason: Option<ResetReasonParam>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionsDeleteParams {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) delete_transcript: Option<bool>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionsSendParams {
    pub(crate) key: String,
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) thinking: Option<String>,
    #[serde(default)]
    pub(crate) attachments: Option<Vec<AttachmentParam>>,
    #[serde(default)]
    pub(crate) timeout_ms: Option<u64>,
    #[serde(default)]
    pub(crate) idempotency_key: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionsAbortParams {
    #[serde(default)]
    pub(crate) key: Option<String>,
    #[serde(default)]
    pub(crate) run_id: Option<String>,
}

/// `config.set` and `config.patch`.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConfigWriteParams {
    pub(crate) raw: String,
    #[serde(default)]
    pub(crate) base_hash: Option<String>,
}

/// `exec.approval.get`.
#[derive(Deserialize, Debug)]
pub(crate) struct ExecApprovalIdParams {
    pub(crate) id: String,
}

/// `exec.approval.resolve`. `reviewer` (a channel sender) and `grantExpiresInDays` are accepted
/// as OpenClaw's schema allows them (`grantExpiresInDays` is ignored: BeamClaw's allow-always
/// entries do not expire).
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExecApprovalResolveParams {
    pub(crate) id: String,
    pub(crate) decision: String,
    #[serde(default)]
    pub(crate) reviewer: Option<ExecApprovalReviewer>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExecApprovalReviewer {
    pub(crate) channel: String,
    pub(crate) account_id: String,
    pub(crate) sender_id: String,
}

/// `device.pair.approve` and `device.pair.reject`.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PairRequestParams {
    pub(crate) request_id: String,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceIdParams {
    pub(crate) device_id: String,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenRotateParams {
    pub(crate) device_id: String,
    pub(crate) role: String,
    #[serde(default)]
    pub(crate) scopes: Option<Vec<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenRevokeParams {
    pub(crate) device_id: String,
    pub(crate) role: String,
}

/// Params of methods that take none worth reading (`health`, `status`, `models.list`, ...).
#[derive(Deserialize, Debug, Default)]
pub(crate) struct IgnoredParams {}

// ---- connect ----

#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ClientInfoParam {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) display_name: Option<String>,
    pub(crate) version: String,
    /// Accepted (the schema allows it) but not used.
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) build_id: Option<String>,
    pub(crate) platform: String,
    #[serde(default)]
    pub(crate) device_family: Option<String>,
    #[serde(default)]
    pub(crate) model_identifier: Option<String>,
    #[serde(default)]
    pub(crate) time_zone: Option<String>,
    pub(crate) mode: String,
    #[serde(default)]
    pub(crate) instance_id: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DeviceProofParam {
    pub(crate) id: String,
    pub(crate) public_key: String,
    pub(crate) signature: String,
    pub(crate) signed_at: u64,
    pub(crate) nonce: String,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ConnectAuthParam {
    #[serde(default)]
    pub(crate) token: Option<String>,
    #[serde(default)]
    pub(crate) bootstrap_token: Option<String>,
    #[serde(default)]
    pub(crate) device_token: Option<String>,
    #[serde(default)]
    pub(crate) password: Option<String>,
    /// OpenClaw runtime credentials; accepted (the schema allows them) but BeamClaw has no
    /// such runtimes, so they never authenticate anything.
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) approval_runtime_token: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) agent_runtime_identity_token: Option<String>,
}

/// `ConnectParams`; its top-level properties are checked against the schema's list.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectParams {
    pub(crate) min_protocol: u32,
    pub(crate) max_protocol: u32,
    pub(crate) client: ClientInfoParam,
    /// Client capabilities; accepted but BeamClaw offers none that depend on them.
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) caps: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) role: Option<String>,
    #[serde(default)]
    pub(crate) scopes: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) device: Option<DeviceProofParam>,
    #[serde(default)]
    pub(crate) auth: Option<ConnectAuthParam>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::methods::Method;
    use serde_json::json;

    fn parse<T: DeserializeOwned>(method: Method, params: Value) -> Result<T, WireError> {
        parse_closed(params, method.allowed_params(), "params", method.name())
    }

    #[test]
    fn unknown_properties_are_named() {
        let err = parse::<ChatSendParams>(
            Method::ChatSend,
            json!({"sessionKey": "k", "message": "m", "idempotencyKey": "i", "nope": 1}),
        )
        .unwrap_err();
        assert!(err.message.starts_with("params.nope: unknown property"), "{}", err.message);
    }

    #[test]
    fn schema_properties_beamclaw_ignores_are_accepted() {
        let params: ChatSendParams = parse(
            Method::ChatSend,
            json!({"sessionKey": "k", "message": "m", "idempotencyKey": "i", "deliver": false}),
        )
        .unwrap();
        assert_eq!(params.message, "m");
    }

    #[test]
    fn wrong_types_name_the_path() {
        let err = parse::<ChatSendParams>(
            Method::ChatSend,
            json!({"sessionKey": 5, "message": "m", "idempotencyKey": "i"}),
        )
        .unwrap_err();
        assert!(err.message.starts_with("params.sessionKey: invalid type"), "{}", err.message);
        let err = parse::<ChatSendParams>(
            Method::ChatSend,
            json!({"sessionKey": "k", "message": "m", "idempotencyKey": "i",
                   "attachments": [{"mimeType": 3}]}),
        )
        .unwrap_err();
        assert!(err.message.starts_with("params.attachments[0].mimeType"), "{}", err.message);
    }

    #[test]
    fn missing_required_fields_are_named() {
        let err =
            parse::<ChatSendParams>(Method::ChatSend, json!({"sessionKey": "k"})).unwrap_err();
        assert!(err.message.contains("missing field `message`"), "{}", err.message);
    }

    #[test]
    fn non_object_params_are_refused() {
        let err = parse::<ChatSendParams>(Method::ChatSend, json!([1])).unwrap_err();
        assert!(err.message.contains("must be a JSON object, not an array"));
    }

    #[test]
    fn patch_distinguishes_absent_null_and_set() {
        let params: SessionsPatchParams = parse(
            Method::SessionsPatch,
            json!({"key": "agent:main:main", "label": null, "model": "m", "fastMode": "auto"}),
        )
        .unwrap();
        assert_eq!(params.label, Some(None));
        assert_eq!(params.model, Some(Some("m".into())));
        assert_eq!(params.thinking_level, None);
        assert_eq!(params.fast_mode, Some(Some(FastModeParam::Word("auto".into()))));
    }

    #[test]
    fn session_keys_are_validated() {
        let err = session_key("sessionKey", "a/b".into()).unwrap_err();
        assert!(err.message.starts_with("params.sessionKey:"));
    }
}
