//! Binding the port, the state every request shares, the background tasks (tick, presence,
//! node events) and shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::{ConfigError, GatewayConfig};
use crate::feeds::Feeds;
use crate::metrics::GatewayMetrics;
use crate::pairing::PairingStore;
use crate::protocol::errors::WireError;
use crate::protocol::frames::StateVersion;
use crate::protocol::wire;
use crate::service::{GatewayService, Member, NodeEvent, NodeHealth, NodeInfo};
use crate::util::now_ms;
use crate::ws::registry::Connections;

/// How long cached health stays fresh for `hello-ok` snapshots, milliseconds.
const HEALTH_CACHE_MS: u64 = 1_000;
/// Presence changes are coalesced and broadcast at most this often, milliseconds.
const PRESENCE_DEBOUNCE_MS: u64 = 250;
/// Entries in a presence list at most.
pub(crate) const PRESENCE_ENTRIES_MAX: usize = 64;
/// Time given to open WebSocket connections to close after shutdown, milliseconds.
const DRAIN_TIMEOUT_MS: u64 = 5_000;
/// Poll interval while waiting for connections to close, milliseconds.
const DRAIN_POLL_MS: u64 = 20;
/// Close code sent to clients when the gateway stops (RFC 6455 "service restart").
const CLOSE_SERVICE_RESTART: u16 = 1012;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Everything request handlers and connections share.
pub(crate) struct Shared<S> {
    pub(crate) config: GatewayConfig,
    pub(crate) local_addr: SocketAddr,
    pub(crate) service: Arc<S>,
    pub(crate) pairing: Arc<dyn PairingStore>,
    pub(crate) metrics: GatewayMetrics,
    pub(crate) registry: Registry,
    pub(crate) connections: Connections,
    pub(crate) feeds: Feeds<S>,
    pub(crate) node: NodeInfo,
    presence_version: AtomicU64,
    health_version: AtomicU64,
    members: Mutex<Vec<Member>>,
    health_cache: Mutex<Option<(Instant, NodeHealth)>>,
    presence_dirty: Notify,
    pub(crate) shutting_down: AtomicBool,
    /// The node sent `NodeEvent::Shutdown`; clients already heard why.
    shutdown_announced: AtomicBool,
}

impl<S: GatewayService> Shared<S> {
    pub(crate) fn state_version(&self) -> StateVersion {
        StateVersion {
            presence: self.presence_version.load(Ordering::Acquire),
            health: self.health_version.load(Ordering::Acquire),
        }
    }

    /// The presence list: this gateway's interactive clients, then the mesh members.
    pub(crate) fn presence(&self) -> Vec<Value> {
        let now = now_ms();
        let mut entries = self.connections.presence_entries(PRESENCE_ENTRIES_MAX);
        let members =
            self.members.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if members.is_empty() {
            entries.push(wire::member_presence(
                &Member {
                    node_id: self.node.node_id.clone(),
                    name: self.node.name.clone(),
                    state: "alive".into(),
                    address: Some(self.local_addr.to_string()),
                    version: Some(self.node.version.clone()),
                    sessions_owned: None,
                },
                &self.node.node_id,
                now,
            ));
        }
        for member in members.iter() {
            if entries.len() >= PRESENCE_ENTRIES_MAX {
                break;
            }
            entries.push(wire::member_presence(member, &self.node.node_id, now));
        }
        entries
    }

    pub(crate) fn presence_changed(&self) {
        self.presence_dirty.notify_one();
    }

    /// Node health, from a cache refreshed at most every [`HEALTH_CACHE_MS`].
    pub(crate) async fn health(&self) -> Result<NodeHealth, WireError> {
        {
            let cache = self.health_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, health)) = cache.as_ref()
                && at.elapsed() < Duration::from_millis(HEALTH_CACHE_MS)
            {
                return Ok(health.clone());
            }
        }
        let health = self.service.health().await?;
        *self.health_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), health.clone()));
        Ok(health)
    }

    pub(crate) fn uptime_ms(&self) -> i64 {
        (now_ms() - self.node.started_at_ms).max(0)
    }

    async fn handle_node_event(&self, event: NodeEvent) {
        match event {
            NodeEvent::SessionsChanged { key, change } => {
                let payload = json!({
                    "sessionKey": key.as_str(),
                    "reason": change.as_str(),
                    "ts": now_ms().max(0),
                });
                self.connections.broadcast_sessions_changed(&payload.to_string());
            }
            NodeEvent::Members(members) => {
                *self.members.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = members;
                self.presence_changed();
            }
            NodeEvent::Health(health) => {
                let payload = wire::health(&self.node, &health, now_ms(), false);
                *self.health_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((Instant::now(), health));
                self.health_version.fetch_add(1, Ordering::AcqRel);
                self.connections.broadcast(
                    "health",
                    &payload.to_string(),
                    Some(self.state_version()),
                );
            }
            NodeEvent::Shutdown { reason, restart_expected_ms } => {
                let mut payload = json!({"reason": if reason.is_empty() { "shutdown".to_owned() } else { reason }});
                if let Some(ms) = restart_expected_ms {
                    payload["restartExpectedMs"] = ms.into();
                }
                tracing::info!(%payload, "announcing shutdown to clients");
                self.shutdown_announced.store(true, Ordering::Release);
                self.connections.broadcast("shutdown", &payload.to_string(), None);
            }
            NodeEvent::ExecApprovalRequested(approval) => {
                let payload = wire::exec_approval(&approval);
                self.connections.broadcast("exec.approval.requested", &payload.to_string(), None);
            }
            NodeEvent::ExecApprovalResolved(resolution) => {
                let payload = wire::exec_approval_resolved(&resolution);
                self.connections.broadcast("exec.approval.resolved", &payload.to_string(), None);
            }
        }
    }

    fn begin_shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        // Clients hear it before the close, unless the node already announced its drain.
        if !self.shutdown_announced.load(Ordering::Acquire) {
            let payload = json!({"reason": "gateway stopping"}).to_string();
            self.connections.broadcast("shutdown", &payload, None);
        }
        self.connections.close_all(CLOSE_SERVICE_RESTART, "gateway shutting down");
    }
}

/// A gateway whose port is bound but which does not serve yet; [`BoundGateway::local_addr`]
/// tells where it listens (useful with port 0).
#[derive(Debug)]
pub struct BoundGateway {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: GatewayConfig,
}

/// Checks the config and binds its address.
pub async fn bind(config: GatewayConfig) -> Result<BoundGateway, GatewayError> {
    config.validate()?;
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| GatewayError::Bind { addr: config.bind, source })?;
    let local_addr =
        listener.local_addr().map_err(|source| GatewayError::Bind { addr: config.bind, source })?;
    Ok(BoundGateway { listener, local_addr, config })
}

/// Binds and serves until `shutdown` resolves. See [`BoundGateway::serve`].
pub async fn serve<S: GatewayService>(
    config: GatewayConfig,
    service: Arc<S>,
    pairing: Arc<dyn PairingStore>,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    bind(config).await?.serve(service, pairing, registry, shutdown).await
}

impl BoundGateway {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves HTTP and WebSocket until `shutdown` resolves, then closes every WebSocket with
    /// 1012 and waits (bounded) for them to go.
    ///
    /// `registry` is the Prometheus registry `/metrics` exposes: the gateway adds its
    /// `beamclaw_gateway_*` metrics to whatever the node registered before.
    pub async fn serve<S: GatewayService>(
        self,
        service: Arc<S>,
        pairing: Arc<dyn PairingStore>,
        mut registry: Registry,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let metrics = GatewayMetrics::register(&mut registry);
        let node = service.node_info();
        let shared = Arc::new(Shared {
            connections: Connections::new(self.config.limits.connections_max, metrics.clone()),
            feeds: Feeds::new(service.clone()),
            config: self.config,
            local_addr: self.local_addr,
            service: service.clone(),
            pairing,
            metrics,
            registry,
            node,
            presence_version: AtomicU64::new(1),
            health_version: AtomicU64::new(1),
            members: Mutex::new(Vec::new()),
            health_cache: Mutex::new(None),
            presence_dirty: Notify::new(),
            shutting_down: AtomicBool::new(false),
            shutdown_announced: AtomicBool::new(false),
        });
        tracing::info!(addr = %self.local_addr, auth = shared.config.auth.mode.as_str(),
            node = %shared.node.node_id, "gateway listening");

        let background = vec![
            tokio::spawn(tick_loop(shared.clone()).instrument(tracing::info_span!("tick"))),
            tokio::spawn(presence_loop(shared.clone()).instrument(tracing::info_span!("presence"))),
            tokio::spawn(
                node_event_loop(shared.clone()).instrument(tracing::info_span!("node_events")),
            ),
        ];

        let app = crate::http::router(shared.clone());
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            // Small frames (chat deltas) must not wait for Nagle.
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(error = %err, "could not set TCP_NODELAY");
            }
        });
        let stopping = shared.clone();
        let result = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("gateway shutting down");
                stopping.begin_shutdown();
            })
            .await
            .map_err(GatewayError::Serve);

        // Upgraded sockets are not tracked by the HTTP server: wait for them here.
        shared.begin_shutdown();
        let deadline = Instant::now() + Duration::from_millis(DRAIN_TIMEOUT_MS);
        while shared.connections.open_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
        }
        if shared.connections.open_count() > 0 {
            tracing::warn!(
                open = shared.connections.open_count(),
                "connections still open at shutdown"
            );
        }
        for task in background {
            task.abort();
        }
        result
    }
}

async fn tick_loop<S: GatewayService>(shared: Arc<Shared<S>>) {
    let period = Duration::from_millis(shared.config.limits.tick_interval_ms);
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let payload = json!({"ts": now_ms().max(0)}).to_string();
        shared.connections.broadcast("tick", &payload, None);
    }
}

async fn presence_loop<S: GatewayService>(shared: Arc<Shared<S>>) {
    loop {
        shared.presence_dirty.notified().await;
        tokio::time::sleep(Duration::from_millis(PRESENCE_DEBOUNCE_MS)).await;
        shared.presence_version.fetch_add(1, Ordering::AcqRel);
        let payload = json!({"presence": shared.presence()}).to_string();
        shared.connections.broadcast("presence", &payload, Some(shared.state_version()));
    }
}

async fn node_event_loop<S: GatewayService>(shared: Arc<Shared<S>>) {
    let mut events = shared.service.node_events();
    while let Some(event) = events.next().await {
        shared.handle_node_event(event).await;
    }
    tracing::debug!("node event stream ended");
}
