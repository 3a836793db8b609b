//! Statistics per provider and model: requests, errors by kind, time to first token, total
//! latency, tokens in and out. Kept twice: as Prometheus metrics in the registry passed in
//! (names prefixed `beamclaw_provider_`), and as counters that `status` reads via [`snapshot`].
//!
//! Metrics (labels `provider`, `model`):
//! - `beamclaw_provider_requests_total`: attempts sent to the provider (retries count).
//! - `beamclaw_provider_errors_total{kind}`: failed attempts by `ErrorKind` name.
//! - `beamclaw_provider_time_to_first_token_seconds`: request sent -> first text, thinking or
//!   tool-call delta (histogram).
//! - `beamclaw_provider_latency_seconds`: request sent -> stream ended (histogram).
//! - `beamclaw_provider_tokens_total{direction="input"|"output"}`: tokens the provider reported.
//!
//! [`snapshot`]: ProviderStats::snapshot

use super::ErrorKind;
use beamclaw_crdt::Usage;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket upper bounds, in milliseconds (the last bucket is everything above).
pub const LATENCY_BUCKETS_MS: [u64; 16] =
    [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    provider: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    provider: String,
    model: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    provider: String,
    model: String,
    direction: String,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS.iter().map(|ms| *ms as f64 / 1000.0))
}

type HistogramFamily = Family<ModelLabels, Histogram, fn() -> Histogram>;

struct Metrics {
    requests: Family<ModelLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    ttft: HistogramFamily,
    latency: HistogramFamily,
    tokens: Family<TokenLabels, Counter>,
}

/// A latency histogram over [`LATENCY_BUCKETS_MS`] for `status`.
#[derive(Clone, Debug, Default)]
struct Buckets {
    counts: [u64; LATENCY_BUCKETS_MS.len() + 1],
    total: u64,
}

impl Buckets {
    fn observe(&mut self, elapsed: Duration) {
        let ms = elapsed.as_millis();
        let slot = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= u128::from(*b))
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.counts[slot] += 1;
        self.total += 1;
    }

    /// The upper bound of the bucket holding quantile `q`, in ms (`None` when empty; `u64::MAX`
    /// when it falls in the open last bucket).
    fn quantile_ms(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(LATENCY_BUCKETS_MS.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

#[derive(Clone, Debug)]
struct ModelCounters {
    requests: u64,
    errors: BTreeMap<&'static str, u64>,
    ttft: Buckets,
    latency: Buckets,
    tokens_in: u64,
    tokens_out: u64,
    /// This pair's metrics, looked up once: updating them then takes no label allocation.
    metrics: ModelMetrics,
}

/// Handles to one provider/model pair's metrics (they share their values with the families).
#[derive(Clone, Debug)]
struct ModelMetrics {
    requests: Counter,
    ttft: Histogram,
    latency: Histogram,
    tokens_in: Counter,
    tokens_out: Counter,
}

/// What `status` shows for one provider/model pair (serialized in camelCase for JSON status).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatsSnapshot {
    pub provider: String,
    pub model: String,
    pub requests: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// Bucket upper bounds (ms) of the median and 99th percentile; `None` before any sample.
    pub ttft_p50_ms: Option<u64>,
    pub ttft_p99_ms: Option<u64>,
    pub latency_p50_ms: Option<u64>,
    pub latency_p99_ms: Option<u64>,
    pub tokens_in: u64,
    pub tokens_out: u64,
}

pub struct ProviderStats {
    /// provider -> model -> counters; nested so that an update looks up by `&str`.
    models: Mutex<BTreeMap<String, BTreeMap<String, ModelCounters>>>,
    metrics: Metrics,
}

impl Default for ProviderStats {
    fn default() -> Self {
        Self::new()
    }
}

impl ProviderStats {
    /// Statistics not exported as metrics (tests, tools).
    pub fn new() -> Self {
        ProviderStats {
            models: Mutex::new(BTreeMap::new()),
            metrics: Metrics {
                requests: Family::default(),
                errors: Family::default(),
                ttft: Family::new_with_constructor(seconds_histogram),
                latency: Family::new_with_constructor(seconds_histogram),
                tokens: Family::default(),
            },
        }
    }

    /// Statistics whose metrics are registered in `registry` under `beamclaw_provider_`.
    pub fn registered(registry: &mut Registry) -> Self {
        let stats = Self::new();
        let sub = registry.sub_registry_with_prefix("beamclaw_provider");
        let m = &stats.metrics;
        sub.register(
            "requests",
            "Requests sent to model providers, retries included",
            m.requests.clone(),
        );
        sub.register("errors", "Failed provider requests by error kind", m.errors.clone());
        sub.register_with_unit(
            "time_to_first_token",
            "Time from sending a request to the first streamed output",
            Unit::Seconds,
            m.ttft.clone(),
        );
        sub.register_with_unit(
            "latency",
            "Time from sending a request to the end of its stream",
            Unit::Seconds,
            m.latency.clone(),
        );
        sub.register("tokens", "Tokens reported by providers, by direction", m.tokens.clone());
        stats
    }

    fn with<R>(&self, provider: &str, model: &str, f: impl FnOnce(&mut ModelCounters) -> R) -> R {
        // A poisoned lock only means a panic elsewhere mid-update of plain counters.
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if !models.get(provider).is_some_and(|m| m.contains_key(model)) {
            let counters = self.new_counters(provider, model);
            models.entry(provider.to_string()).or_default().insert(model.to_string(), counters);
        }
        match models.get_mut(provider).and_then(|m| m.get_mut(model)) {
            Some(counters) => f(counters),
            None => unreachable!("the entry was inserted above"),
        }
    }

    fn new_counters(&self, provider: &str, model: &str) -> ModelCounters {
        let labels = Self::labels(provider, model);
        let tokens = |direction: &str| {
            let labels = TokenLabels {
                provider: provider.to_string(),
                model: model.to_string(),
                direction: direction.to_string(),
            };
            self.metrics.tokens.get_or_create(&labels).clone()
        };
        ModelCounters {
            requests: 0,
            errors: BTreeMap::new(),
            ttft: Buckets::default(),
            latency: Buckets::default(),
            tokens_in: 0,
            tokens_out: 0,
            metrics: ModelMetrics {
                requests: self.metrics.requests.get_or_create(&labels).clone(),
                ttft: self.metrics.ttft.get_or_create(&labels).clone(),
                latency: self.metrics.latency.get_or_create(&labels).clone(),
                tokens_in: tokens("input"),
                tokens_out: tokens("output"),
            },
        }
    }

    fn labels(provider: &str, model: &str) -> ModelLabels {
        ModelLabels { provider: provider.to_string(), model: model.to_string() }
    }

    pub(crate) fn request(&self, provider: &str, model: &str) {
        self.with(provider, model, |c| {
            c.requests += 1;
            c.metrics.requests.inc();
        });
    }

    pub(crate) fn error(&self, provider: &str, model: &str, kind: ErrorKind) {
        self.with(provider, model, |c| *c.errors.entry(kind.as_str()).or_default() += 1);
        let labels = ErrorLabels {
            provider: provider.to_string(),
            model: model.to_string(),
            kind: kind.as_str().to_string(),
        };
        self.metrics.errors.get_or_create(&labels).inc();
    }

    pub(crate) fn first_token(&self, provider: &str, model: &str, elapsed: Duration) {
        self.with(provider, model, |c| {
            c.ttft.observe(elapsed);
            c.metrics.ttft.observe(elapsed.as_secs_f64());
        });
    }

    pub(crate) fn finished(&self, provider: &str, model: &str, elapsed: Duration, usage: Usage) {
        let input = usage.input + usage.cache_read + usage.cache_write;
        self.with(provider, model, |c| {
            c.latency.observe(elapsed);
            c.tokens_in += input;
            c.tokens_out += usage.output;
            c.metrics.latency.observe(elapsed.as_secs_f64());
            c.metrics.tokens_in.inc_by(input);
            c.metrics.tokens_out.inc_by(usage.output);
        });
    }

    /// Every provider/model pair seen so far, sorted.
    pub fn snapshot(&self) -> Vec<ModelStatsSnapshot> {
        let models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        models
            .iter()
            .flat_map(|(provider, models)| {
                models.iter().map(move |(model, c)| (provider, model, c))
            })
            .map(|(provider, model, c)| ModelStatsSnapshot {
                provider: provider.clone(),
                model: model.clone(),
                requests: c.requests,
                errors: c.errors.clone(),
                ttft_p50_ms: c.ttft.quantile_ms(0.5),
                ttft_p99_ms: c.ttft.quantile_ms(0.99),
                latency_p50_ms: c.latency.quantile_ms(0.5),
                latency_p99_ms: c.latency.quantile_ms(0.99),
                tokens_in: c.tokens_in,
                tokens_out: c.tokens_out,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_metrics_agree() {
        let mut registry = Registry::default();
        let stats = ProviderStats::registered(&mut registry);
        stats.request("anthropic", "m");
        stats.request("anthropic", "m");
        stats.error("anthropic", "m", ErrorKind::RateLimit);
        stats.first_token("anthropic", "m", Duration::from_millis(3));
        stats.finished(
            "anthropic",
            "m",
            Duration::from_millis(40),
            Usage { input: 10, output: 4, ..Usage::default() },
        );
        let snap = stats.snapshot();
        assert_eq!(snap.len(), 1);
        let s = &snap[0];
        assert_eq!((s.requests, s.tokens_in, s.tokens_out), (2, 10, 4));
        assert_eq!(s.errors.get("rate_limit"), Some(&1));
        assert_eq!((s.ttft_p50_ms, s.latency_p99_ms), (Some(5), Some(50)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for needle in [
            "beamclaw_provider_requests_total{provider=\"anthropic\",model=\"m\"} 2",
            "beamclaw_provider_errors_total{provider=\"anthropic\",model=\"m\",kind=\"rate_limit\"} 1",
            "beamclaw_provider_time_to_first_token_seconds_count{provider=\"anthropic\",model=\"m\"} 1",
            "beamclaw_provider_latency_seconds_count{provider=\"anthropic\",model=\"m\"} 1",
            "beamclaw_provider_tokens_total{provider=\"anthropic\",model=\"m\",direction=\"output\"} 4",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn quantiles_pick_bucket_bounds() {
        let mut b = Buckets::default();
        assert_eq!(b.quantile_ms(0.5), None);
        for _ in 0..99 {
            b.observe(Duration::from_micros(500));
        }
        b.observe(Duration::from_secs(200));
        assert_eq!(b.quantile_ms(0.5), Some(1));
        assert_eq!(b.quantile_ms(0.99), Some(1));
        assert_eq!(b.quantile_ms(1.0), Some(u64::MAX));
    }
}
