//! Failover: the walk from one model call to a stream that has started producing output.
//!
//! For each model of the chain (primary, then `fallbacks` in order), for each usable auth profile
//! of its provider: try, and on a retryable failure (429, 5xx, 529, timeouts, refused
//! connections, a stream cut before any output) retry with exponential backoff that honours
//! `retry-after`, up to `attempts_max`. When a profile is exhausted by rate limiting it cools down
//! and the next profile is tried; other exhausted failures (the provider is down) move on to the
//! next model. A billing failure disables the profile and moves on. Non-retryable failures (400,
//! 401, 403, 404, a malformed stream) surface at once with the provider's message.
//!
//! Retries happen only before the first output event: [`ModelRouter::open`] returns as soon as a
//! text, thinking or tool-call delta arrives, and whatever fails after that is surfaced, never
//! retried, since the user has already seen part of the reply.

use super::profiles::{AuthProfile, ProfilePool};
use super::stats::ProviderStats;
use super::{ErrorKind, Provider, ProviderError, ProviderEvent, ProviderRequest, ProviderStream};
use crate::config::{ModelChain, ModelRef};
use beamclaw_crdt::Usage;
use futures::{Stream, StreamExt};
use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Tries per model and profile (the first try included).
pub const RETRY_ATTEMPTS_MAX: u32 = 3;
/// First backoff; each further retry doubles it.
pub const BACKOFF_INITIAL_MS: u64 = 500;
/// Longest backoff without a `retry-after`.
pub const BACKOFF_MAX_MS: u64 = 8_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts_max: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts_max: RETRY_ATTEMPTS_MAX,
            backoff_initial: Duration::from_millis(BACKOFF_INITIAL_MS),
            backoff_max: Duration::from_millis(BACKOFF_MAX_MS),
        }
    }
}

impl RetryPolicy {
    /// The wait before try `attempt + 1` (attempt counts from 1): the provider's `retry-after`
    /// when given (already capped), else exponential backoff.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        retry_after.unwrap_or_else(|| {
            let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
            self.backoff_initial.saturating_mul(factor).min(self.backoff_max)
        })
    }
}

/// Routes model calls to providers with retries, profile rotation and fallbacks.
pub struct ModelRouter {
    providers: BTreeMap<String, Arc<dyn Provider>>,
    profiles: Arc<ProfilePool>,
    policy: RetryPolicy,
    stats: Arc<ProviderStats>,
    /// `maxTokens` per `provider/model` from the config.
    max_tokens: BTreeMap<ModelRef, u32>,
}

impl ModelRouter {
    pub fn new(
        providers: BTreeMap<String, Arc<dyn Provider>>,
        profiles: Arc<ProfilePool>,
        policy: RetryPolicy,
        stats: Arc<ProviderStats>,
    ) -> Self {
        ModelRouter { providers, profiles, policy, stats, max_tokens: BTreeMap::new() }
    }

    /// Sets `maxTokens` for the models the config names.
    pub fn with_max_tokens(mut self, max_tokens: BTreeMap<ModelRef, u32>) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    pub fn stats(&self) -> &Arc<ProviderStats> {
        &self.stats
    }

    pub fn has_provider(&self, id: &str) -> bool {
        self.providers.contains_key(id)
    }

    /// Calls the chain's models until one starts streaming output (see the module doc).
    /// `request.model` is set per model tried.
    pub async fn open(
        &self,
        chain: &ModelChain,
        request: ProviderRequest<'_>,
        cancel: &CancellationToken,
    ) -> Result<OpenedStream, ProviderError> {
        let default_max_tokens = request.max_tokens;
        let mut last_error: Option<ProviderError> = None;
        let models = std::iter::once(&chain.primary).chain(chain.fallbacks.iter());
        for (position, model) in models.enumerate() {
            if position > 0 {
                tracing::warn!(model = %model, after = ?last_error.as_ref().map(|e| e.to_string()), "falling back to the next model");
            }
            let Some(provider) = self.providers.get(&model.provider) else {
                last_error = Some(ProviderError::new(
                    &model.provider,
                    ErrorKind::Config,
                    format!("no provider {:?} is configured (model {model})", model.provider),
                ));
                continue;
            };
            let request = ProviderRequest {
                model: &model.model,
                max_tokens: self.max_tokens.get(model).copied().unwrap_or(default_max_tokens),
                ..request
            };
            let profiles = self.profiles.profiles(&model.provider);
            let credentials: Vec<Option<&AuthProfile>> = if profiles.is_empty() {
                if provider.needs_credential() {
                    last_error = Some(ProviderError::new(
                        &model.provider,
                        ErrorKind::Config,
                        format!(
                            "no API key for provider {p:?}: set models.providers.{p}.apiKey, an auth profile, or the provider's API key environment variable",
                            p = model.provider
                        ),
                    ));
                    continue;
                }
                vec![None]
            } else {
                profiles.iter().map(Some).collect()
            };
            match self.try_profiles(provider.as_ref(), model, &request, &credentials, cancel).await
            {
                Ok(opened) => return Ok(opened),
                Err(Walk::Surface(e)) => return Err(e),
                Err(Walk::Next(e)) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            ProviderError::new("router", ErrorKind::Config, "the model chain is empty")
        }))
    }

    async fn try_profiles(
        &self,
        provider: &dyn Provider,
        model: &ModelRef,
        request: &ProviderRequest<'_>,
        credentials: &[Option<&AuthProfile>],
        cancel: &CancellationToken,
    ) -> Result<OpenedStream, Walk> {
        let mut last_error = None;
        for profile in credentials {
            if let Some(p) = profile
                && let Some(until) = self.profiles.unavailable_until(&p.id, Instant::now())
            {
                let wait_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64;
                tracing::debug!(profile = %p.id, wait_ms, "auth profile cooling down; skipped");
                continue;
            }
            let profile_id = profile.map(|p| p.id.as_str());
            let mut attempt = 0;
            loop {
                attempt += 1;
                let credential = profile.map(|p| &p.key);
                let result =
                    self.attempt(provider, model, request, credential, profile_id, cancel).await;
                let error = match result {
                    Ok(opened) => {
                        if let Some(p) = profile_id {
                            self.profiles.succeeded(p);
                        }
                        return Ok(opened);
                    }
                    Err(e) => e,
                };
                if error.kind == ErrorKind::Cancelled {
                    return Err(Walk::Surface(error));
                }
                if error.kind == ErrorKind::Billing {
                    if let Some(p) = profile_id {
                        tracing::warn!(profile = p, error = %error, "billing failure: auth profile disabled");
                        self.profiles.disable(p, Instant::now());
                    }
                    last_error = Some(error);
                    break;
                }
                if !error.kind.is_retryable() {
                    return Err(Walk::Surface(error));
                }
                if attempt < self.policy.attempts_max {
                    let wait = self.policy.delay(attempt, error.retry_after);
                    tracing::warn!(model = %model, profile = profile_id, attempt, wait_ms = wait.as_millis() as u64, error = %error, "provider call failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            return Err(Walk::Surface(ProviderError::new(&model.provider, ErrorKind::Cancelled, "cancelled while waiting to retry")));
                        }
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
                match profile_id {
                    Some(p) if error.kind == ErrorKind::RateLimit => {
                        let wait = self.profiles.cool_down(p, Instant::now());
                        tracing::warn!(
                            profile = p,
                            cooldown_ms = wait.as_millis() as u64,
                            "auth profile rate limited; rotating"
                        );
                        last_error = Some(error);
                        break;
                    }
                    // The provider itself is failing: another key will not help.
                    _ => return Err(Walk::Next(error)),
                }
            }
        }
        Err(Walk::Next(last_error.unwrap_or_else(|| {
            ProviderError::new(
                &model.provider,
                ErrorKind::RateLimit,
                format!("every auth profile of provider {:?} is cooling down", model.provider),
            )
        })))
    }

    /// One request: returns once the first output event arrived (or the stream ended without
    /// any), with everything read so far kept for the caller.
    async fn attempt(
        &self,
        provider: &dyn Provider,
        model: &ModelRef,
        request: &ProviderRequest<'_>,
        credential: Option<&crate::config::Secret>,
        profile: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<OpenedStream, ProviderError> {
        let span = tracing::debug_span!("provider_request", provider = %model.provider, model = %model.model, profile);
        let _enter = span.enter();
        self.stats.request(&model.provider, &model.model);
        let started = Instant::now();
        let mut stream = provider.stream(request, credential);
        let mut prefix = VecDeque::new();
        let mut usage = Usage::default();
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => {
                    return Err(ProviderError::new(&model.provider, ErrorKind::Cancelled, "cancelled"));
                }
                next = stream.next() => next,
            };
            match next {
                Some(Ok(event)) => {
                    if let ProviderEvent::Usage(u) = &event {
                        usage = *u;
                    }
                    let output = event.is_output();
                    prefix.push_back(event);
                    if output {
                        self.stats.first_token(&model.provider, &model.model, started.elapsed());
                        break;
                    }
                }
                Some(Err(e)) => {
                    self.stats.error(&model.provider, &model.model, e.kind);
                    return Err(e);
                }
                None => break,
            }
        }
        Ok(OpenedStream {
            model: model.clone(),
            profile: profile.map(str::to_string),
            prefix,
            rest: Some(stream),
            stats: self.stats.clone(),
            started,
            usage,
        })
    }
}

enum Walk {
    /// Stop and report this error to the user.
    Surface(ProviderError),
    /// Try the next model.
    Next(ProviderError),
}

/// A provider stream that has started (or ended without output). Yields the events read while
/// opening, then the rest; records latency and tokens when it ends.
pub struct OpenedStream {
    model: ModelRef,
    profile: Option<String>,
    prefix: VecDeque<ProviderEvent>,
    rest: Option<ProviderStream>,
    stats: Arc<ProviderStats>,
    started: Instant,
    usage: Usage,
}

impl OpenedStream {
    /// The model that answered (the primary or a fallback).
    pub fn model(&self) -> &ModelRef {
        &self.model
    }

    pub fn profile(&self) -> Option<&str> {
        self.profile.as_deref()
    }

    fn finish(&mut self, error: Option<ErrorKind>) {
        if self.rest.take().is_some() {
            if let Some(kind) = error {
                self.stats.error(&self.model.provider, &self.model.model, kind);
            }
            self.stats.finished(
                &self.model.provider,
                &self.model.model,
                self.started.elapsed(),
                self.usage,
            );
        }
    }
}

impl Stream for OpenedStream {
    type Item = Result<ProviderEvent, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(event) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(event)));
        }
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match rest.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(event))) => {
                if let ProviderEvent::Usage(u) = &event {
                    self.usage = *u;
                }
                Poll::Ready(Some(Ok(event)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish(Some(e.kind));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.finish(None);
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for OpenedStream {
    fn drop(&mut self) {
        // Dropped early (abort, timeout): still count the request's latency and tokens.
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, ThinkingLevel};
    use crate::provider::RequestContext;
    use beamclaw_crdt::StopReason;
    use std::sync::Mutex;

    /// A provider that plays back one scripted outcome per call and records which key it got.
    struct Scripted {
        id: String,
        outcomes: Mutex<VecDeque<Vec<Result<ProviderEvent, ProviderError>>>>,
        keys: Mutex<Vec<Option<String>>>,
    }

    impl Scripted {
        fn new(id: &str, outcomes: Vec<Vec<Result<ProviderEvent, ProviderError>>>) -> Arc<Self> {
            Arc::new(Scripted {
                id: id.into(),
                outcomes: Mutex::new(outcomes.into()),
                keys: Mutex::new(Vec::new()),
            })
        }
    }

    impl Provider for Scripted {
        fn id(&self) -> &str {
            &self.id
        }
        fn needs_credential(&self) -> bool {
            false
        }
        fn stream(&self, _: &ProviderRequest<'_>, credential: Option<&Secret>) -> ProviderStream {
            self.keys.lock().unwrap().push(credential.map(|k| k.expose().to_string()));
            let events = self.outcomes.lock().unwrap().pop_front().unwrap_or_default();
            Box::pin(futures::stream::iter(events))
        }
    }

    fn err(kind: ErrorKind, retry_after_ms: Option<u64>) -> Result<ProviderEvent, ProviderError> {
        let mut e = ProviderError::new("p", kind, format!("{kind} from script"));
        e.retry_after = retry_after_ms.map(Duration::from_millis);
        Err(e)
    }

    fn text(t: &str) -> Result<ProviderEvent, ProviderError> {
        Ok(ProviderEvent::TextDelta(t.into()))
    }

    fn request() -> ProviderRequest<'static> {
        static CONTEXT: std::sync::LazyLock<RequestContext> =
            std::sync::LazyLock::new(RequestContext::default);
        ProviderRequest {
            model: "",
            system: "",
            messages: &[],
            tools: &[],
            max_tokens: 16,
            thinking: ThinkingLevel::Off,
            context: &CONTEXT,
        }
    }

    fn chain(primary: &str, fallbacks: &[&str]) -> ModelChain {
        ModelChain {
            primary: ModelRef::parse(primary).unwrap(),
            fallbacks: fallbacks.iter().map(|f| ModelRef::parse(f).unwrap()).collect(),
        }
    }

    fn router(providers: Vec<Arc<Scripted>>, profiles: Vec<AuthProfile>) -> ModelRouter {
        let map = providers.into_iter().map(|p| (p.id.clone(), p as Arc<dyn Provider>)).collect();
        ModelRouter::new(
            map,
            Arc::new(ProfilePool::new(profiles)),
            RetryPolicy::default(),
            Arc::new(ProviderStats::new()),
        )
    }

    async fn collect(mut s: OpenedStream) -> Vec<Result<ProviderEvent, ProviderError>> {
        let mut out = Vec::new();
        while let Some(e) = s.next().await {
            out.push(e);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_then_success() {
        let p =
            Scripted::new("p", vec![vec![err(ErrorKind::RateLimit, Some(1500))], vec![text("hi")]]);
        let r = router(vec![p.clone()], vec![]);
        let started = Instant::now();
        let opened =
            r.open(&chain("p/m", &[]), request(), &CancellationToken::new()).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert_eq!(collect(opened).await, vec![text("hi")]);
        let snap = r.stats().snapshot();
        assert_eq!((snap[0].requests, snap[0].errors.get("rate_limit")), (2, Some(&1)));
    }

    #[tokio::test(start_paused = true)]
    async fn server_errors_exhaust_retries_then_fall_back() {
        let p = Scripted::new("p", vec![vec![err(ErrorKind::Server, None)]; 3]);
        let q = Scripted::new("q", vec![vec![text("from q")]]);
        let r = router(vec![p.clone(), q], vec![]);
        let started = Instant::now();
        let opened =
            r.open(&chain("p/m", &["q/n"]), request(), &CancellationToken::new()).await.unwrap();
        assert_eq!(opened.model().to_string(), "q/n");
        // Backoff 500 ms then 1000 ms between the three tries of p.
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert_eq!(p.keys.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_profile_cools_down_and_next_profile_is_used() {
        let p = Scripted::new(
            "p",
            vec![
                vec![err(ErrorKind::RateLimit, Some(0))],
                vec![err(ErrorKind::RateLimit, Some(0))],
                vec![err(ErrorKind::RateLimit, Some(0))],
                vec![text("ok")],
                vec![text("again")],
            ],
        );
        let key =
            |id: &str| AuthProfile { id: id.into(), provider: "p".into(), key: Secret::new(id) };
        let r = router(vec![p.clone()], vec![key("p:a"), key("p:b")]);
        let cancel = CancellationToken::new();
        let opened = r.open(&chain("p/m", &[]), request(), &cancel).await.unwrap();
        assert_eq!(opened.profile(), Some("p:b"));
        drop(opened);
        // p:a is cooling down: the next call goes straight to p:b.
        let opened = r.open(&chain("p/m", &[]), request(), &cancel).await.unwrap();
        assert_eq!(opened.profile(), Some("p:b"));
        let keys: Vec<Option<String>> = p.keys.lock().unwrap().clone();
        let a = Some("p:a".to_string());
        let b = Some("p:b".to_string());
        assert_eq!(keys, vec![a.clone(), a.clone(), a, b.clone(), b]);
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_errors_surface_at_once_without_fallback() {
        let p = Scripted::new("p", vec![vec![err(ErrorKind::Auth, None)]]);
        let q = Scripted::new("q", vec![vec![text("never")]]);
        let r = router(vec![p, q.clone()], vec![]);
        let e = r
            .open(&chain("p/m", &["q/n"]), request(), &CancellationToken::new())
            .await
            .err()
            .unwrap();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Auth, "auth from script"));
        assert!(q.keys.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn errors_after_output_are_surfaced_not_retried() {
        let p = Scripted::new(
            "p",
            vec![vec![text("par"), err(ErrorKind::StreamCut, None)], vec![text("dup")]],
        );
        let r = router(vec![p.clone()], vec![]);
        let opened =
            r.open(&chain("p/m", &[]), request(), &CancellationToken::new()).await.unwrap();
        let events = collect(opened).await;
        assert_eq!(events[0], text("par"));
        assert_eq!(events[1].as_ref().err().map(|e| e.kind), Some(ErrorKind::StreamCut));
        assert_eq!(p.keys.lock().unwrap().len(), 1, "no second request once output started");
    }

    #[tokio::test(start_paused = true)]
    async fn usage_before_output_of_a_failed_try_is_discarded() {
        let usage = Ok(ProviderEvent::Usage(Usage { input: 99, ..Usage::default() }));
        let p = Scripted::new(
            "p",
            vec![
                vec![usage, err(ErrorKind::StreamCut, None)],
                vec![text("a"), Ok(ProviderEvent::Stop(StopReason::Stop))],
            ],
        );
        let r = router(vec![p], vec![]);
        let opened =
            r.open(&chain("p/m", &[]), request(), &CancellationToken::new()).await.unwrap();
        assert_eq!(
            collect(opened).await,
            vec![text("a"), Ok(ProviderEvent::Stop(StopReason::Stop))]
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::default();
        let ms = |a| p.delay(a, None).as_millis();
        assert_eq!((ms(1), ms(2), ms(3), ms(10), ms(64)), (500, 1000, 2000, 8000, 8000));
        assert_eq!(p.delay(1, Some(Duration::from_secs(20))), Duration::from_secs(20));
    }
}
