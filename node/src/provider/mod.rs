//! Model providers: one streaming trait, the HTTP wire formats behind it, failover and statistics.
//!
//! Owns: [`Provider`] (a streaming request -> a stream of [`ProviderEvent`]s), the SSE parser,
//! the Anthropic Messages and OpenAI Chat Completions codecs (any OpenAI-compatible base URL uses
//! the latter), the offline provider `beamclaw/offline`, auth profiles with cooldowns, the
//! failover walk (retry with backoff -> rotate profiles -> `model.fallbacks`) in [`ModelRouter`],
//! and per provider/model statistics.
//! Must not know: sessions, tools' implementations, the mesh, the gateway.

pub(crate) mod anthropic;
mod failover;
mod http;
pub(crate) mod offline;
pub(crate) mod openai;
mod profiles;
pub(crate) mod sse;
mod stats;

pub use failover::{ModelRouter, OpenedStream, RetryPolicy};
pub use http::{client as http_client, install_crypto_provider};
pub use profiles::{AuthProfile, ProfilePool};
pub use stats::{ModelStatsSnapshot, ProviderStats};

use crate::config::{
    ANTHROPIC_PROVIDER_ID, ApiKind, LoadedConfig, OFFLINE_PROVIDER_ID, OPENAI_BASE_URL_DEFAULT,
    OPENAI_PROVIDER_ID, Secret, ThinkingLevel,
};
use beamclaw_crdt::{Message, StopReason, Usage};
use futures::Stream;
use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Output tokens requested when the model entry names no `maxTokens`.
pub const MAX_TOKENS_DEFAULT: u32 = 8192;

/// A tool the model may call: its name, what it does and its arguments' JSON schema.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolDefinition {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// Facts about the caller that some providers use (the offline provider reports them; OpenAI's
/// `user` field could carry the session).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestContext {
    pub session: String,
    pub agent_id: String,
    pub node: String,
    pub run_id: String,
}

/// One model call. It borrows the turn's history, prompt and tools: a provider serializes them
/// straight into its request body, so a turn never copies its transcript to call a model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProviderRequest<'a> {
    /// The model id without its provider prefix (`claude-sonnet-4-5`, not `anthropic/...`).
    pub model: &'a str,
    pub system: &'a str,
    pub messages: &'a [Arc<Message>],
    pub tools: &'a [ToolDefinition],
    pub max_tokens: u32,
    pub thinking: ThinkingLevel,
    pub context: &'a RequestContext,
}

/// What a provider stream yields, in order. Tool calls are identified by `index` within one
/// response; their arguments arrive as JSON text in pieces.
#[derive(Clone, Debug, PartialEq)]
pub enum ProviderEvent {
    TextDelta(String),
    ThinkingDelta(String),
    /// The signature that must accompany the thinking block when it is sent back (Anthropic).
    ThinkingSignature(String),
    ToolCallStart {
        index: u32,
        id: String,
        name: String,
    },
    ToolCallArgsDelta {
        index: u32,
        json: String,
    },
    ToolCallEnd {
        index: u32,
    },
    /// Cumulative usage of this response so far (a later one replaces an earlier one).
    Usage(Usage),
    Stop(StopReason),
}

impl ProviderEvent {
    /// Whether the event is output a user could see (text, thinking or a tool call). Failover
    /// never retries once such an event was delivered: that would duplicate it.
    pub fn is_output(&self) -> bool {
        !matches!(self, ProviderEvent::Usage(_) | ProviderEvent::Stop(_))
    }
}

/// A stream of provider events; an `Err` ends it.
pub type ProviderStream = Pin<Box<dyn Stream<Item = Result<ProviderEvent, ProviderError>> + Send>>;

/// A model provider. `stream` returns at once; the request happens as the stream is polled.
pub trait Provider: Send + Sync {
    fn id(&self) -> &str;
    /// Whether calls need a credential (an API key); providers that need none are called with
    /// `None` and skip auth-profile rotation.
    fn needs_credential(&self) -> bool;
    fn stream(&self, request: &ProviderRequest<'_>, credential: Option<&Secret>) -> ProviderStream;
}

/// Stable names for what went wrong; used in metrics labels, logs and `TurnEvent::Error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    RateLimit,
    Overloaded,
    Server,
    Timeout,
    Connect,
    /// The response ended before the provider said it was complete.
    StreamCut,
    /// The response was not the wire format it claimed to be.
    Malformed,
    Auth,
    Billing,
    BadRequest,
    NotFound,
    /// An error the provider reported inside the stream, of no retryable kind.
    Provider,
    /// No provider or no usable credential for the model.
    Config,
    Cancelled,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::RateLimit => "rate_limit",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Server => "server",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::StreamCut => "stream_cut",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Auth => "auth",
            ErrorKind::Billing => "billing",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Provider => "provider",
            ErrorKind::Config => "config",
            ErrorKind::Cancelled => "cancelled",
        }
    }

    /// Worth trying again with the same model (before any output was delivered).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimit
                | ErrorKind::Overloaded
                | ErrorKind::Server
                | ErrorKind::Timeout
                | ErrorKind::Connect
                | ErrorKind::StreamCut
        )
    }

    /// Classifies an HTTP status (and the provider's error body, for billing).
    pub fn from_status(status: u16, body: &str) -> Self {
        let lower = body.to_ascii_lowercase();
        let billing = ["billing", "credit balance", "insufficient_quota", "payment"];
        match status {
            402 => ErrorKind::Billing,
            400 | 403 | 429 if billing.iter().any(|b| lower.contains(b)) => ErrorKind::Billing,
            401 | 403 => ErrorKind::Auth,
            404 => ErrorKind::NotFound,
            408 => ErrorKind::Timeout,
            429 => ErrorKind::RateLimit,
            503 | 529 => ErrorKind::Overloaded,
            500..=599 => ErrorKind::Server,
            _ => ErrorKind::BadRequest,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed provider call. `message` is the provider's own words where it gave any.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{provider}: {kind}{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
pub struct ProviderError {
    pub provider: String,
    pub kind: ErrorKind,
    pub status: Option<u16>,
    pub message: String,
    /// How long the provider asked us to wait (`retry-after`), already capped.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(provider: &str, kind: ErrorKind, message: impl Into<String>) -> Self {
        ProviderError {
            provider: provider.to_string(),
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// Every provider the config makes available, by id: `beamclaw` (offline) always; each
/// `models.providers.<id>`; `anthropic` / `openai` when their key is in the environment.
pub fn providers_from_config(
    config: &LoadedConfig,
) -> Result<BTreeMap<String, Arc<dyn Provider>>, ProviderError> {
    let mut providers: BTreeMap<String, Arc<dyn Provider>> = BTreeMap::new();
    providers.insert(OFFLINE_PROVIDER_ID.into(), Arc::new(offline::OfflineProvider::new()));
    let client = http::client()?;
    for (id, p) in &config.config.models.providers {
        let api = p.api.unwrap_or(if id == ANTHROPIC_PROVIDER_ID {
            ApiKind::AnthropicMessages
        } else {
            ApiKind::OpenAiCompletions
        });
        let provider =
            http::HttpProvider::new(id, api, p.base_url.as_deref(), &p.headers, &client)?;
        providers.insert(id.clone(), Arc::new(provider));
    }
    let empty = BTreeMap::new();
    if config.env_keys.anthropic.is_some() && !providers.contains_key(ANTHROPIC_PROVIDER_ID) {
        let p = http::HttpProvider::new(
            ANTHROPIC_PROVIDER_ID,
            ApiKind::AnthropicMessages,
            None,
            &empty,
            &client,
        )?;
        providers.insert(ANTHROPIC_PROVIDER_ID.into(), Arc::new(p));
    }
    if config.env_keys.openai.is_some() && !providers.contains_key(OPENAI_PROVIDER_ID) {
        let p = http::HttpProvider::new(
            OPENAI_PROVIDER_ID,
            ApiKind::OpenAiCompletions,
            Some(OPENAI_BASE_URL_DEFAULT),
            &empty,
            &client,
        )?;
        providers.insert(OPENAI_PROVIDER_ID.into(), Arc::new(p));
    }
    Ok(providers)
}

/// `maxTokens` of the configured model entry, else [`MAX_TOKENS_DEFAULT`].
pub fn max_tokens_for(config: &LoadedConfig, provider: &str, model: &str) -> u32 {
    config
        .config
        .models
        .providers
        .get(provider)
        .and_then(|p| p.models.iter().find(|m| m.id == model))
        .and_then(|m| m.max_tokens)
        .unwrap_or(MAX_TOKENS_DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_as_documented() {
        assert_eq!(ErrorKind::from_status(429, "{}"), ErrorKind::RateLimit);
        assert_eq!(ErrorKind::from_status(529, "overloaded"), ErrorKind::Overloaded);
        assert_eq!(ErrorKind::from_status(500, ""), ErrorKind::Server);
        assert_eq!(ErrorKind::from_status(400, "bad"), ErrorKind::BadRequest);
        assert_eq!(
            ErrorKind::from_status(400, "Your credit balance is too low"),
            ErrorKind::Billing
        );
        assert_eq!(ErrorKind::from_status(401, ""), ErrorKind::Auth);
        assert_eq!(ErrorKind::from_status(404, ""), ErrorKind::NotFound);
        assert!(ErrorKind::RateLimit.is_retryable() && ErrorKind::Server.is_retryable());
        assert!(!ErrorKind::Auth.is_retryable() && !ErrorKind::BadRequest.is_retryable());
    }

    #[test]
    fn error_display_carries_status_and_provider_message() {
        let mut e = ProviderError::new("anthropic", ErrorKind::Auth, "invalid x-api-key");
        e.status = Some(401);
        assert_eq!(e.to_string(), "anthropic: auth (HTTP 401): invalid x-api-key");
    }
}
