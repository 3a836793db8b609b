//! OpenClaw's error shape (`{code, message, details?, retryable?, retryAfterMs?}`) and its
//! codes, and how service errors map onto them.

use serde::Serialize;
use serde_json::{Value, json};

use crate::service::ServiceError;

/// The codes of OpenClaw's `error-codes.ts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum ErrorCode {
    #[allow(dead_code)] // kept for completeness; OpenClaw no longer emits it either
    NotLinked,
    NotPaired,
    AgentTimeout,
    Forbidden,
    InvalidRequest,
    Unavailable,
}

impl ErrorCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotLinked => "NOT_LINKED",
            ErrorCode::NotPaired => "NOT_PAIRED",
            ErrorCode::AgentTimeout => "AGENT_TIMEOUT",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}

/// The `error` of a `res` frame. `message` is never empty (the schema requires it).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) details: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retryable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retry_after_ms: Option<u64>,
}

impl WireError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.is_empty() {
            message = code.as_str().to_owned();
        }
        WireError { code, message, details: None, retryable: None, retry_after_ms: None }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        WireError::new(ErrorCode::InvalidRequest, message)
    }

    pub(crate) fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub(crate) fn retry_after(mut self, retry_after_ms: u64) -> Self {
        self.retryable = Some(true);
        self.retry_after_ms = Some(retry_after_ms);
        self
    }

    /// A method BeamClaw does not implement: known to OpenClaw or not, the answer says so and
    /// the connection stays up.
    pub(crate) fn unsupported_method(method: &str, official: bool) -> Self {
        let message = if official {
            format!(
                "method {method:?} is part of the OpenClaw protocol but is not supported by \
                 BeamClaw; hello-ok.features.methods lists the supported methods"
            )
        } else {
            format!(
                "unknown method {method:?}: not supported by BeamClaw; \
                 hello-ok.features.methods lists the supported methods"
            )
        };
        WireError::invalid(message).with_details(json!({
            "code": "METHOD_NOT_SUPPORTED",
            "method": method,
            "schema": super::schema_tables::SCHEMA_PACKAGE,
        }))
    }

    /// FORBIDDEN with OpenClaw's `MISSING_SCOPE` details.
    pub(crate) fn missing_scope(method: &str, missing: &str) -> Self {
        WireError::new(
            ErrorCode::Forbidden,
            format!("missing scope: {missing} (method {method} requires it)"),
        )
        .with_details(json!({
            "code": "MISSING_SCOPE",
            "missingScope": missing,
            "requiredScopes": [missing],
        }))
    }
}

impl From<ServiceError> for WireError {
    fn from(err: ServiceError) -> Self {
        let message = err.to_string();
        match err {
            ServiceError::NotFound { .. } | ServiceError::Invalid { .. } => {
                WireError::new(ErrorCode::InvalidRequest, message)
            }
            ServiceError::Forbidden { .. } => WireError::new(ErrorCode::Forbidden, message),
            ServiceError::Timeout { .. } => WireError::new(ErrorCode::AgentTimeout, message),
            ServiceError::Unavailable { retry_after_ms, .. } => {
                let mut wire = WireError::new(ErrorCode::Unavailable, message);
                wire.retryable = Some(true);
                wire.retry_after_ms = retry_after_ms;
                wire
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_messages_are_replaced_by_the_code() {
        let err = WireError::invalid("");
        assert_eq!(err.message, "INVALID_REQUEST");
    }

    #[test]
    fn missing_scope_has_openclaw_details() {
        let err = WireError::missing_scope("config.get", "operator.admin");
        let v = serde_json::to_value(&err).unwrap();
        assert_eq!(v["code"], "FORBIDDEN");
        assert_eq!(v["details"]["code"], "MISSING_SCOPE");
        assert_eq!(v["details"]["missingScope"], "operator.admin");
        assert_eq!(v["details"]["requiredScopes"][0], "operator.admin");
    }

    #[test]
    fn unavailable_service_errors_are_retryable() {
        let err: WireError =
            ServiceError::Unavailable { message: "draining".into(), retry_after_ms: Some(500) }
                .into();
        let v = serde_json::to_value(&err).unwrap();
        assert_eq!(v["code"], "UNAVAILABLE");
        assert_eq!(v["retryable"], true);
        assert_eq!(v["retryAfterMs"], 500);
    }
}
