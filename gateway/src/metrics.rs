//! The gateway's Prometheus metrics (`beamclaw_gateway_*`), registered in the registry the node
//! hands to `serve` (the node registers its own metrics in the same registry).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Smallest method latency bucket, seconds (50 µs).
const LATENCY_BUCKET_START_SECONDS: f64 = 0.000_05;
/// Each bucket is this many times the previous one.
const LATENCY_BUCKET_FACTOR: f64 = 2.0;
/// Number of latency buckets (50 µs .. ~26 s).
const LATENCY_BUCKETS: u16 = 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabel {
    pub(crate) method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CodeLabel {
    pub(crate) code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabel {
    pub(crate) route: String,
    pub(crate) status: u16,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        LATENCY_BUCKET_START_SECONDS,
        LATENCY_BUCKET_FACTOR,
        LATENCY_BUCKETS,
    ))
}

/// Handles to every gateway metric; cheap to clone (each is an `Arc` inside).
#[derive(Clone, Debug)]
pub(crate) struct GatewayMetrics {
    /// Open WebSocket connections (authenticated or not).
    pub(crate) connections: Gauge,
    pub(crate) connections_accepted: Counter,
    /// Upgrades refused or sockets closed before `hello-ok`, by reason.
    pub(crate) connections_refused: Family<CodeLabel, Counter>,
    pub(crate) frames_in: Counter,
    pub(crate) frames_out: Counter,
    pub(crate) method_duration: Family<MethodLabel, Histogram, fn() -> Histogram>,
    /// Error answers by OpenClaw error code.
    pub(crate) errors: Family<CodeLabel, Counter>,
    pub(crate) http_requests: Family<RouteLabel, Counter>,
    /// Connections closed because their outbound queue passed `maxBufferedBytes`.
    pub(crate) slow_consumers: Counter,
}

impl GatewayMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = GatewayMetrics {
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Family::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            method_duration: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            http_requests: Family::default(),
            slow_consumers: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("beamclaw_gateway");
        r.register("connections", "Open WebSocket connections", metrics.connections.clone());
        r.register(
            "connections_accepted",
            "WebSocket connections accepted",
            metrics.connections_accepted.clone(),
        );
        r.register(
            "connections_refused",
            "WebSocket connections refused or closed before hello-ok, by reason",
            metrics.connections_refused.clone(),
        );
        r.register("frames_in", "WebSocket frames received", metrics.frames_in.clone());
        r.register("frames_out", "WebSocket frames queued for sending", metrics.frames_out.clone());
        r.register(
            "method_duration_seconds",
            "Time to answer a WebSocket method, by method",
            metrics.method_duration.clone(),
        );
        r.register("errors", "Error answers by OpenClaw error code", metrics.errors.clone());
        r.register(
            "http_requests",
            "HTTP requests by route and status",
            metrics.http_requests.clone(),
        );
        r.register(
            "slow_consumers",
            "Connections closed for exceeding maxBufferedBytes",
            metrics.slow_consumers.clone(),
        );
        metrics
    }

    pub(crate) fn error(&self, code: &str) {
        self.errors.get_or_create(&CodeLabel { code: code.to_owned() }).inc();
    }

    pub(crate) fn refused(&self, reason: &str) {
        self.connections_refused.get_or_create(&CodeLabel { code: reason.to_owned() }).inc();
    }
}
