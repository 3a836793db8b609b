//! The HTTP side of the providers: one reqwest client (rustls with the ring provider), the
//! streaming request, status classification, `retry-after`, and bytes -> SSE -> provider events.

use super::sse::{FeedError, SseEventRef, SseParser};
use super::{
    ErrorKind, Provider, ProviderError, ProviderEvent, ProviderRequest, ProviderStream, anthropic,
    openai,
};
use crate::config::{ANTHROPIC_BASE_URL_DEFAULT, ApiKind, OPENAI_BASE_URL_DEFAULT, Secret};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Once;
use std::time::{Duration, SystemTime};

/// Time allowed to open a TCP/TLS connection to a provider.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Time allowed from sending a request to receiving the response headers.
pub const RESPONSE_HEADERS_TIMEOUT_MS: u64 = 120_000;
/// Longest silence allowed between two pieces of a streaming body.
pub const STREAM_IDLE_TIMEOUT_MS: u64 = 120_000;
/// Longest error body read (to quote the provider's message), in bytes.
pub const ERROR_BODY_BYTES_MAX: usize = 64 * 1024;
/// Longest `retry-after` honoured; a longer one is capped to this.
pub const RETRY_AFTER_MS_MAX: u64 = 60_000;
/// Idle pooled connections kept per provider host.
pub const POOL_IDLE_PER_HOST_MAX: usize = 256;

static CRYPTO_PROVIDER: Once = Once::new();

/// Installs rustls' ring crypto provider as the process default, once. Both reqwest (built
/// without a bundled provider) and quinn use it.
pub fn install_crypto_provider() {
    CRYPTO_PROVIDER.call_once(|| {
        // Err means another part of the process installed one first; that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The HTTP client all providers share (connection pool, timeouts, TLS).
pub fn client() -> Result<reqwest::Client, ProviderError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .read_timeout(Duration::from_millis(STREAM_IDLE_TIMEOUT_MS))
        .pool_max_idle_per_host(POOL_IDLE_PER_HOST_MAX)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| {
            ProviderError::new(
                "http",
                ErrorKind::Config,
                format!("cannot build the HTTP client: {e}"),
            )
        })
}

/// A provider reached over HTTP: Anthropic Messages or OpenAI Chat Completions (any base URL).
pub struct HttpProvider {
    id: String,
    api: ApiKind,
    url: String,
    headers: HeaderMap,
    limit_field: openai::TokenLimitField,
    client: reqwest::Client,
}

impl HttpProvider {
    pub fn new(
        id: &str,
        api: ApiKind,
        base_url: Option<&str>,
        headers: &BTreeMap<String, String>,
        client: &reqwest::Client,
    ) -> Result<Self, ProviderError> {
        let config_error = |m: String| ProviderError::new(id, ErrorKind::Config, m);
        let base = base_url
            .unwrap_or(match api {
                ApiKind::AnthropicMessages => ANTHROPIC_BASE_URL_DEFAULT,
                ApiKind::OpenAiCompletions => OPENAI_BASE_URL_DEFAULT,
            })
            .trim_end_matches('/');
        let url = match api {
            ApiKind::AnthropicMessages if base.ends_with("/v1") => format!("{base}/messages"),
            ApiKind::AnthropicMessages => format!("{base}/v1/messages"),
            ApiKind::OpenAiCompletions => format!("{base}/chat/completions"),
        };
        reqwest::Url::parse(&url).map_err(|e| config_error(format!("base URL {base:?}: {e}")))?;
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|e| config_error(format!("header name {name:?}: {e}")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|e| config_error(format!("header {name}: {e}")))?;
            map.insert(name, value);
        }
        let limit_field = if base.contains("api.openai.com") {
            openai::TokenLimitField::MaxCompletionTokens
        } else {
            openai::TokenLimitField::MaxTokens
        };
        Ok(HttpProvider {
            id: id.to_string(),
            api,
            url,
            headers: map,
            limit_field,
            client: client.clone(),
        })
    }
}

impl Provider for HttpProvider {
    fn id(&self) -> &str {
        &self.id
    }

    fn needs_credential(&self) -> bool {
        // Local OpenAI-compatible servers (Ollama, vLLM) take no key; Anthropic always does.
        self.api == ApiKind::AnthropicMessages
    }

    fn stream(&self, request: &ProviderRequest<'_>, credential: Option<&Secret>) -> ProviderStream {
        let body = match self.api {
            ApiKind::AnthropicMessages => anthropic::request_body(request),
            ApiKind::OpenAiCompletions => openai::request_body(request, self.limit_field),
        };
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                let e = ProviderError::new(
                    &self.id,
                    ErrorKind::BadRequest,
                    format!("cannot serialize the request: {e}"),
                );
                return Box::pin(futures::stream::iter([Err(e)]));
            }
        };
        let mut builder = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .body(body);
        builder = match (self.api, credential) {
            (ApiKind::AnthropicMessages, Some(key)) => builder
                .header("x-api-key", key.expose())
                .header("anthropic-version", anthropic::ANTHROPIC_VERSION),
            (ApiKind::AnthropicMessages, None) => {
                builder.header("anthropic-version", anthropic::ANTHROPIC_VERSION)
            }
            (ApiKind::OpenAiCompletions, Some(key)) => builder.bearer_auth(key.expose()),
            (ApiKind::OpenAiCompletions, None) => builder,
        };
        let decoder = match self.api {
            ApiKind::AnthropicMessages => WireDecoder::Anthropic(anthropic::Decoder::new(&self.id)),
            ApiKind::OpenAiCompletions => WireDecoder::OpenAi(openai::Decoder::new(&self.id)),
        };
        let state = StreamState {
            provider: self.id.clone(),
            phase: Phase::Start(builder),
            parser: SseParser::new(),
            decoder,
            queue: VecDeque::new(),
            events: Vec::new(),
        };
        Box::pin(futures::stream::unfold(state, StreamState::next))
    }
}

enum WireDecoder {
    Anthropic(anthropic::Decoder),
    OpenAi(openai::Decoder),
}

impl WireDecoder {
    fn on_event(
        &mut self,
        event: SseEventRef<'_>,
        out: &mut Vec<ProviderEvent>,
    ) -> Result<(), ProviderError> {
        match self {
            WireDecoder::Anthropic(d) => d.on_event(event, out),
            WireDecoder::OpenAi(d) => d.on_event(event, out),
        }
    }

    fn finished(&self) -> bool {
        match self {
            WireDecoder::Anthropic(d) => d.finished(),
            WireDecoder::OpenAi(d) => d.finished(),
        }
    }
}

enum Phase {
    Start(reqwest::RequestBuilder),
    Body(reqwest::Response),
    Done,
}

struct StreamState {
    provider: String,
    phase: Phase,
    parser: SseParser,
    decoder: WireDecoder,
    queue: VecDeque<Result<ProviderEvent, ProviderError>>,
    /// Scratch space for the events one SSE event decodes to.
    events: Vec<ProviderEvent>,
}

type Item = Result<ProviderEvent, ProviderError>;

impl StreamState {
    async fn next(mut self) -> Option<(Item, Self)> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some((item, self));
            }
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return None,
                Phase::Start(builder) => match self.send(builder).await {
                    Ok(response) => self.phase = Phase::Body(response),
                    Err(e) => return Some((Err(e), self)),
                },
                Phase::Body(mut response) => match response.chunk().await {
                    Ok(Some(bytes)) => {
                        self.on_bytes(&bytes);
                        if !matches!(self.queue.back(), Some(Err(_))) {
                            self.phase = Phase::Body(response);
                        }
                    }
                    Ok(None) if self.decoder.finished() => return None,
                    Ok(None) => {
                        let e = self.error(
                            ErrorKind::StreamCut,
                            "the stream ended before the response was complete",
                        );
                        return Some((Err(e), self));
                    }
                    Err(e) => {
                        let kind =
                            if e.is_timeout() { ErrorKind::Timeout } else { ErrorKind::StreamCut };
                        let e = self
                            .error(kind, format!("reading the stream failed: {}", error_chain(&e)));
                        return Some((Err(e), self));
                    }
                },
            }
        }
    }

    fn error(&self, kind: ErrorKind, message: impl Into<String>) -> ProviderError {
        ProviderError::new(&self.provider, kind, message)
    }

    /// Parses and decodes a piece of the body into `queue`, reusing the parser's and `events`'
    /// buffers (no allocation per SSE event beyond the text the events carry).
    fn on_bytes(&mut self, bytes: &[u8]) {
        let StreamState { parser, decoder, queue, events, .. } = self;
        let fed = parser.feed_with(bytes, |event| {
            let decoded = decoder.on_event(event, events);
            queue.extend(events.drain(..).map(Ok));
            decoded
        });
        // Events completed before a bad line or event still count.
        match fed {
            Ok(()) => {}
            Err(FeedError::Sse(e)) => {
                let e = self.error(ErrorKind::Malformed, e.to_string());
                self.queue.push_back(Err(e));
            }
            Err(FeedError::Handler(e)) => self.queue.push_back(Err(e)),
        }
    }

    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        let sent = tokio::time::timeout(
            Duration::from_millis(RESPONSE_HEADERS_TIMEOUT_MS),
            builder.send(),
        )
        .await;
        let response = match sent {
            Err(_) => {
                return Err(self.error(
                    ErrorKind::Timeout,
                    format!("no response headers within {RESPONSE_HEADERS_TIMEOUT_MS} ms"),
                ));
            }
            Ok(Err(e)) => {
                let kind = if e.is_timeout() { ErrorKind::Timeout } else { ErrorKind::Connect };
                return Err(self.error(kind, format!("request failed: {}", error_chain(&e))));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers(), SystemTime::now());
            let body = read_capped(response).await;
            let message = anthropic::error_message(&body)
                .or_else(|| openai::error_message(&body))
                .unwrap_or_else(|| body.chars().take(500).collect());
            let mut e = self.error(ErrorKind::from_status(status.as_u16(), &body), message);
            e.status = Some(status.as_u16());
            e.retry_after = retry_after;
            return Err(e);
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if !content_type.starts_with("text/event-stream") {
            let body = read_capped(response).await;
            let shown: String = body.chars().take(200).collect();
            return Err(self.error(
                ErrorKind::Malformed,
                format!("expected an event stream, got content-type {content_type:?}: {shown}"),
            ));
        }
        Ok(response)
    }
}

/// The error and its sources, joined: reqwest's top-level message alone rarely says what failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn read_capped(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = ERROR_BODY_BYTES_MAX - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= ERROR_BODY_BYTES_MAX {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// `retry-after-ms`, else `retry-after` in seconds or as an HTTP date; capped at
/// [`RETRY_AFTER_MS_MAX`].
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let wait = if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        Duration::from_secs_f64(ms.max(0.0) / 1000.0)
    } else {
        let value = get("retry-after")?;
        match value.parse::<f64>() {
            Ok(seconds) if seconds.is_finite() => Duration::from_secs_f64(seconds.max(0.0)),
            _ => {
                let at = httpdate::parse_http_date(value).ok()?;
                at.duration_since(now).unwrap_or(Duration::ZERO)
            }
        }
    };
    Some(wait.min(Duration::from_millis(RETRY_AFTER_MS_MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_seconds_date_ms_and_cap() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")]), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "150"), ("retry-after", "9")]), now),
            Some(Duration::from_millis(150))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(5));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &date)]), now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "86400")]), now),
            Some(Duration::from_millis(RETRY_AFTER_MS_MAX))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn urls_follow_the_api_kind() {
        let client = client().unwrap();
        let none = BTreeMap::new();
        let a = HttpProvider::new("anthropic", ApiKind::AnthropicMessages, None, &none, &client)
            .unwrap();
        assert_eq!(a.url, "https://api.anthropic.com/v1/messages");
        let o = HttpProvider::new(
            "local",
            ApiKind::OpenAiCompletions,
            Some("http://h:1/v1/"),
            &none,
            &client,
        )
        .unwrap();
        assert_eq!(o.url, "http://h:1/v1/chat/completions");
        assert_eq!(o.limit_field, openai::TokenLimitField::MaxTokens);
        assert!(
            HttpProvider::new("x", ApiKind::OpenAiCompletions, Some("not a url"), &none, &client)
                .is_err()
        );
    }
}
