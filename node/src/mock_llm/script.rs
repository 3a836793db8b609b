//! The mock's script: a list of responses consumed in order, one per model request.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most responses one script may hold.
pub const SCRIPT_RESPONSES_MAX: usize = 100_000;
/// Characters per streamed text delta when a response names no `chunkChars`.
pub const CHUNK_CHARS_DEFAULT: usize = 8;

/// One scripted answer. Everything is optional: an empty response is an empty reply.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ScriptResponse {
    pub text: Option<String>,
    pub thinking: Option<String>,
    pub tool_calls: Vec<ScriptToolCall>,
    pub usage: Option<ScriptUsage>,
    /// Overrides the stop reason (wire value, e.g. `max_tokens` / `length`).
    pub stop_reason: Option<String>,
    /// Characters per text, thinking or argument delta.
    pub chunk_chars: Option<usize>,
    /// Answer with this HTTP error instead of a reply.
    pub error: Option<ScriptError>,
    /// Send a broken event after the first content delta.
    pub malformed: bool,
    /// Close the connection after this many events of the stream.
    pub disconnect_after_chunks: Option<usize>,
    /// Wait before sending the response headers.
    pub latency_ms: u64,
    /// Wait between the headers and the first content delta.
    pub ttft_ms: u64,
    /// Pace content deltas at this many per second (each delta counts as one token).
    pub tokens_per_second: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScriptToolCall {
    /// Defaults to `toolu_mock_<n>` (Anthropic) or `call_mock_<n>` (OpenAI).
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default = "empty_object")]
    pub arguments: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScriptUsage {
    pub input: u64,
    pub output: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScriptError {
    pub status: u16,
    /// The error message inside the provider's error body.
    #[serde(default)]
    pub message: Option<String>,
    /// A whole body to send instead of the provider-shaped one.
    #[serde(default)]
    pub body: Option<Value>,
    /// The `retry-after` header value (seconds or an HTTP date).
    #[serde(default)]
    pub retry_after: Option<String>,
}

/// A script file: `[response, ...]` or `{"responses": [response, ...]}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ScriptFile {
    List(Vec<ScriptResponse>),
    Object { responses: Vec<ScriptResponse> },
}

impl ScriptFile {
    pub fn into_responses(self) -> Vec<ScriptResponse> {
        match self {
            ScriptFile::List(r) | ScriptFile::Object { responses: r } => r,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptParseError {
    #[error("the script is not valid: {0}")]
    Invalid(String),
    #[error("the script has {count} responses; at most {SCRIPT_RESPONSES_MAX} are allowed")]
    TooLong { count: usize },
}

/// Parses script JSON.
pub fn parse(text: &str) -> Result<Vec<ScriptResponse>, ScriptParseError> {
    let file: ScriptFile =
        serde_json::from_str(text).map_err(|e| ScriptParseError::Invalid(e.to_string()))?;
    let responses = file.into_responses();
    if responses.len() > SCRIPT_RESPONSES_MAX {
        return Err(ScriptParseError::TooLong { count: responses.len() });
    }
    for (i, r) in responses.iter().enumerate() {
        if r.chunk_chars == Some(0) {
            return Err(ScriptParseError::Invalid(format!(
                "responses[{i}].chunkChars must be at least 1"
            )));
        }
        if let Some(e) = &r.error
            && !(400..=599).contains(&e.status)
        {
            return Err(ScriptParseError::Invalid(format!(
                "responses[{i}].error.status {} is not an HTTP error status",
                e.status
            )));
        }
        if r.tokens_per_second.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
            return Err(ScriptParseError::Invalid(format!(
                "responses[{i}].tokensPerSecond must be a positive number"
            )));
        }
    }
    Ok(responses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_object_forms_parse() {
        let a =
            parse(r#"[{"text": "hi"}, {"error": {"status": 429, "retryAfter": "1"}}]"#).unwrap();
        let b = parse(
            r#"{"responses": [{"text": "hi"}, {"error": {"status": 429, "retryAfter": "1"}}]}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a[1].error.as_ref().unwrap().retry_after.as_deref(), Some("1"));
    }

    #[test]
    fn bad_scripts_are_refused_with_the_reason() {
        assert!(parse(r#"[{"txt": "hi"}]"#).is_err());
        let e = parse(r#"[{"error": {"status": 200}}]"#).unwrap_err().to_string();
        assert!(e.contains("responses[0].error.status 200"), "{e}");
        assert!(parse(r#"[{"chunkChars": 0}]"#).is_err());
    }
}
