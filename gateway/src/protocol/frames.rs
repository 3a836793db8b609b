//! Frames: decoding what clients send (`req`, and `cancel` in v4) and encoding what the gateway
//! sends (`res`, `event`). The schema closes every frame object, so unknown properties are
//! refused, and the error names the offending field by its path.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::errors::WireError;

/// Longest request id accepted, in bytes (OpenClaw clients use `<n>:<uuid>`).
pub(crate) const REQUEST_ID_BYTES_MAX: usize = 256;
/// Longest method name accepted, in bytes (the longest official name is under 64).
pub(crate) const METHOD_NAME_BYTES_MAX: usize = 128;
/// Longest `traceparent` the schema allows, in bytes.
pub(crate) const TRACEPARENT_BYTES_MAX: usize = 128;
/// The id answered when a frame is too broken to carry a usable one (the schema requires a
/// non-empty id on every `res`).
pub(crate) const UNKNOWN_REQUEST_ID: &str = "invalid";

/// A decoded client frame.
#[derive(Debug, PartialEq)]
pub(crate) enum ClientFrame {
    Request(Request),
    /// v4: stop waiting for the request with this id.
    Cancel {
        id: String,
    },
}

#[derive(Debug, PartialEq)]
pub(crate) struct Request {
    pub(crate) id: String,
    pub(crate) method: String,
    /// `Value::Null` when the frame had no `params`.
    pub(crate) params: Value,
}

/// Why a frame was refused, and the request id to answer, when one could be read.
#[derive(Debug, PartialEq)]
pub(crate) struct FrameError {
    pub(crate) id: Option<String>,
    pub(crate) error: WireError,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestFrameWire {
    #[serde(rename = "type")]
    _kind: String,
    id: String,
    method: String,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    traceparent: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelFrameWire {
    #[serde(rename = "type")]
    _kind: String,
    id: String,
}

/// Decodes one text frame. `cancel_allowed` is true on v4 connections.
pub(crate) fn decode_client_frame(
    text: &str,
    cancel_allowed: bool,
) -> Result<ClientFrame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|err| FrameError {
        id: None,
        error: WireError::invalid(format!("malformed JSON frame: {err}")),
    })?;
    let Value::Object(object) = value else {
        return Err(FrameError {
            id: None,
            error: WireError::invalid("a frame must be a JSON object with a \"type\""),
        });
    };
    let id = readable_id(&object);
    let fail = |message: String| FrameError { id: id.clone(), error: WireError::invalid(message) };
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(_) => return Err(fail("frame.type must be a string".into())),
        None => return Err(fail("frame.type is missing; clients send \"req\" frames".into())),
    };
    match kind.as_str() {
        "req" => {
            let wire: RequestFrameWire = decode_path(Value::Object(object), "frame")
                .map_err(|message| fail(format!("invalid request frame: {message}")))?;
            check_len("frame.id", &wire.id, 1, REQUEST_ID_BYTES_MAX).map_err(&fail)?;
            check_len("frame.method", &wire.method, 1, METHOD_NAME_BYTES_MAX).map_err(&fail)?;
            if let Some(traceparent) = &wire.traceparent {
                check_len("frame.traceparent", traceparent, 0, TRACEPARENT_BYTES_MAX)
                    .map_err(&fail)?;
            }
            Ok(ClientFrame::Request(Request {
                id: wire.id,
                method: wire.method,
                params: wire.params.unwrap_or(Value::Null),
            }))
        }
        "cancel" if cancel_allowed => {
            let wire: CancelFrameWire = decode_path(Value::Object(object), "frame")
                .map_err(|message| fail(format!("invalid cancel frame: {message}")))?;
            check_len("frame.id", &wire.id, 1, REQUEST_ID_BYTES_MAX).map_err(&fail)?;
            Ok(ClientFrame::Cancel { id: wire.id })
        }
        "cancel" => Err(fail("cancel frames need protocol 4; this connection speaks 3".into())),
        other => Err(fail(format!(
            "clients send \"req\" frames (and \"cancel\" in protocol 4), not {other:?}"
        ))),
    }
}

fn readable_id(object: &Map<String, Value>) -> Option<String> {
    match object.get("id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= REQUEST_ID_BYTES_MAX => {
            Some(id.clone())
        }
        _ => None,
    }
}

fn check_len(field: &str, value: &str, min: usize, max: usize) -> Result<(), String> {
    if value.len() < min {
        return Err(format!("{field} must not be empty"));
    }
    if value.len() > max {
        return Err(format!("{field} is {} bytes; at most {max} are allowed", value.len()));
    }
    Ok(())
}

/// Deserializes `value` into `T`, naming the failing field as `<root>.<path>`.
pub(crate) fn decode_path<T: serde::de::DeserializeOwned>(
    value: Value,
    root: &str,
) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." || path.is_empty() {
            format!("{root}: {inner}")
        } else {
            format!("{root}.{path}: {inner}")
        }
    })
}

/// `{"type":"res","id":..,"ok":true,"payload":..}`
pub(crate) fn response_ok(id: &str, payload: Value) -> String {
    json!({"type": "res", "id": id, "ok": true, "payload": payload}).to_string()
}

/// `{"type":"res","id":..,"ok":false,"error":{..}}`
pub(crate) fn response_error(id: &str, error: &WireError) -> String {
    json!({"type": "res", "id": id, "ok": false, "error": error_value(error)}).to_string()
}

pub(crate) fn error_value(error: &WireError) -> Value {
    let mut object = Map::new();
    object.insert("code".into(), Value::from(error.code.as_str()));
    object.insert("message".into(), Value::from(error.message.clone()));
    if let Some(details) = &error.details {
        object.insert("details".into(), details.clone());
    }
    if let Some(retryable) = error.retryable {
        object.insert("retryable".into(), Value::from(retryable));
    }
    if let Some(retry_after_ms) = error.retry_after_ms {
        object.insert("retryAfterMs".into(), Value::from(retry_after_ms));
    }
    Value::Object(object)
}

/// Versions of the state a client mirrors (`stateVersion` on presence and health events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StateVersion {
    pub(crate) presence: u64,
    pub(crate) health: u64,
}

/// `{"type":"event","event":..,"payload":..,"seq":..}` from an already encoded payload.
///
/// `event` is one of the gateway's own constant event names (plain ASCII, no escaping
/// needed); `payload_json` is valid JSON produced by this crate.
pub(crate) fn event_frame(
    event: &'static str,
    payload_json: &str,
    seq: Option<u64>,
    state_version: Option<StateVersion>,
) -> String {
    debug_assert!(event.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
    let mut out = String::with_capacity(payload_json.len() + 96);
    out.push_str("{\"type\":\"event\",\"event\":\"");
    out.push_str(event);
    out.push_str("\",\"payload\":");
    out.push_str(payload_json);
    if let Some(seq) = seq {
        out.push_str(",\"seq\":");
        out.push_str(&seq.to_string());
    }
    if let Some(sv) = state_version {
        out.push_str(&format!(
            ",\"stateVersion\":{{\"presence\":{},\"health\":{}}}",
            sv.presence, sv.health
        ));
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(result: Result<ClientFrame, FrameError>) -> String {
        result.unwrap_err().error.message
    }

    #[test]
    fn decodes_a_request_with_params() {
        let frame = decode_client_frame(
            r#"{"type":"req","id":"1","method":"health","params":{"a":1}}"#,
            true,
        )
        .unwrap();
        assert_eq!(
            frame,
            ClientFrame::Request(Request {
                id: "1".into(),
                method: "health".into(),
                params: json!({"a": 1})
            })
        );
    }

    #[test]
    fn extra_properties_are_refused_and_named() {
        let err = decode_client_frame(r#"{"type":"req","id":"7","method":"x","bogus":1}"#, true)
            .unwrap_err();
        assert_eq!(err.id.as_deref(), Some("7"));
        assert!(err.error.message.contains("bogus"), "{}", err.error.message);
    }

    #[test]
    fn wrong_field_types_name_the_field() {
        let text = message(decode_client_frame(r#"{"type":"req","id":"7","method":5}"#, true));
        assert!(text.contains("frame.method"), "{text}");
    }

    #[test]
    fn malformed_json_is_refused_without_an_id() {
        let err = decode_client_frame("{\"type\":", true).unwrap_err();
        assert_eq!(err.id, None);
        assert!(err.error.message.starts_with("malformed JSON"));
    }

    #[test]
    fn cancel_needs_protocol_four() {
        assert_eq!(
            decode_client_frame(r#"{"type":"cancel","id":"3"}"#, true).unwrap(),
            ClientFrame::Cancel { id: "3".into() }
        );
        let text = message(decode_client_frame(r#"{"type":"cancel","id":"3"}"#, false));
        assert!(text.contains("protocol 4"));
    }

    #[test]
    fn server_frame_types_are_refused() {
        let text = message(decode_client_frame(r#"{"type":"res","id":"1","ok":true}"#, true));
        assert!(text.contains("\"res\""), "{text}");
    }

    #[test]
    fn event_frames_are_valid_json() {
        let frame = event_frame(
            "tick",
            r#"{"ts":1}"#,
            Some(4),
            Some(StateVersion { presence: 1, health: 2 }),
        );
        let v: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            v,
            json!({"type":"event","event":"tick","payload":{"ts":1},"seq":4,
            "stateVersion":{"presence":1,"health":2}})
        );
    }

    fn frame_like() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("type".to_owned()),
            Just("id".to_owned()),
            Just("method".to_owned()),
            Just("params".to_owned()),
            Just("traceparent".to_owned()),
            "[a-z]{1,6}",
        ];
        let leaf = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            prop_oneof![Just("req"), Just("cancel"), Just("res"), Just("")].prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
        ];
        let value = leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z]{1,5}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop::collection::btree_map(key, value, 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect()).to_string())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Nothing a client sends makes the decoder panic, and every refusal carries a
        /// non-empty message.
        #[test]
        fn decoder_never_panics_on_random_text(text in ".{0,200}", cancel in any::<bool>()) {
            if let Err(err) = decode_client_frame(&text, cancel) {
                prop_assert!(!err.error.message.is_empty());
            }
        }

        #[test]
        fn decoder_never_panics_on_frame_shaped_json(text in frame_like(), cancel in any::<bool>()) {
            match decode_client_frame(&text, cancel) {
                Ok(ClientFrame::Request(req)) => {
                    prop_assert!(!req.id.is_empty() && !req.method.is_empty());
                }
                Ok(ClientFrame::Cancel { id }) => prop_assert!(!id.is_empty()),
                Err(err) => prop_assert!(!err.error.message.is_empty()),
            }
        }

        #[test]
        fn decoder_never_panics_on_truncated_frames(cut in 0usize..80) {
            let full = r#"{"type":"req","id":"1:abc","method":"chat.send","params":{"sessionKey":"agent:main:main","message":"hi","idempotencyKey":"k"}}"#;
            let cut = cut.min(full.len());
            let _ = decode_client_frame(&full[..cut], true);
        }
    }
}
