//! `beamclaw up`: one node — store, mesh, agent runtime and gateway — and its orderly shutdown.
//!
//! Start order: data directory and node identity, the store, the mesh (joins its seeds), the
//! agent runtime over the mesh's ports, the gateway over [`NodeService`]. On the first SIGTERM
//! or SIGINT the node drains: readiness goes false and clients get `shutdown` with
//! `restartExpectedMs`, every owned session is handed to its successor, the node leaves the
//! cluster, the gateway closes; a second signal exits at once.

mod approvals;
mod discovery;
mod metrics;
mod ports;
mod service;
mod sessions_api;
mod turns;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beamclaw_crdt::store::{Store, StoreOptions};
use beamclaw_gateway::{AuthConfig, AuthMode, FilePairingStore, GatewayConfig, NodeInfo, Registry};
use beamclaw_mesh::core::SwimPreset;
use beamclaw_mesh::driver::{self, MeshConfig};

use crate::config::{LoadedConfig, OFFLINE_PROVIDER_ID};
use crate::provider::RetryPolicy;
use crate::runtime::AgentRuntime;
use crate::tools::ToolRegistry;

pub use ports::MeshPorts;
pub use service::{NodeService, agent_of};

/// The gateway's default port (OpenClaw's).
pub const GATEWAY_PORT_DEFAULT: u16 = 18789;
/// How long a drain may take before the node leaves with whatever it still owns (its sessions
/// then fail over as after a crash).
pub const DRAIN_TIMEOUT_MS: u64 = 20_000;
/// What clients are told to expect before this node is back (`shutdown.restartExpectedMs`).
pub const RESTART_EXPECTED_MS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{0}")]
    Config(String),
    #[error("cannot use the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("node identity: {0}")]
    Identity(#[from] driver::identity::IdentityError),
    #[error("store: {0}")]
    Store(#[from] beamclaw_crdt::store::StoreError),
    #[error("mesh: {0}")]
    Mesh(#[from] driver::DriverError),
    #[error("agent runtime: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("gateway: {0}")]
    Gateway(#[from] beamclaw_gateway::GatewayError),
    #[error("device pairing store: {0}")]
    Pairing(#[from] beamclaw_gateway::PairingError),
}

/// Command-line overrides of the config file.
#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    /// Gateway address (`--listen`).
    pub listen: Option<String>,
    /// Mesh address (`--mesh-listen`).
    pub mesh_listen: Option<String>,
    /// Mesh address peers dial (`--mesh-advertise`).
    pub mesh_advertise: Option<String>,
    /// Addresses to join (`--join a,b`).
    pub join: Vec<String>,
    pub node_name: Option<String>,
    /// `--discover mdns`.
    pub discover_mdns: bool,
}

fn parse_addr(what: &str, value: &str) -> Result<SocketAddr, UpError> {
    value.parse().map_err(|_| {
        UpError::Config(format!("{what} {value:?} is not an address like 127.0.0.1:18789"))
    })
}

/// Resolves `host:port` join addresses (names are looked up).
async fn resolve(addrs: &[String]) -> Result<Vec<SocketAddr>, UpError> {
    let mut out = Vec::new();
    for a in addrs.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
        let found = tokio::net::lookup_host(a)
            .await
            .map_err(|e| UpError::Config(format!("cannot resolve join address {a:?}: {e}")))?;
        out.extend(found);
    }
    Ok(out)
}

/// The gateway's config from the file, the environment and the command line.
pub fn gateway_config(
    loaded: &LoadedConfig,
    listen: Option<&str>,
) -> Result<GatewayConfig, UpError> {
    let g = &loaded.config.gateway;
    let bind = match listen {
        Some(l) => parse_addr("--listen", l)?,
        None => {
            let ip: IpAddr = match g.bind.as_deref() {
                None | Some("loopback") => IpAddr::V4(Ipv4Addr::LOCALHOST),
                Some("lan") | Some("auto") => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Some("custom") => g
                    .custom_bind_host
                    .as_deref()
                    .and_then(|h| h.parse().ok())
                    .ok_or_else(|| UpError::Config("gateway.bind is \"custom\" but gateway.customBindHost is not an IP address".into()))?,
                Some(other) => other.parse().map_err(|_| UpError::Config(format!("gateway.bind {other:?} is not loopback, lan, auto, custom or an IP address")))?,
            };
            SocketAddr::new(ip, g.port.unwrap_or(GATEWAY_PORT_DEFAULT))
        }
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let token = g
        .auth
        .token
        .as_ref()
        .map(|s| s.expose().to_string())
        .or_else(|| env("BEAMCLAW_GATEWAY_TOKEN"))
        .or_else(|| env("OPENCLAW_GATEWAY_TOKEN"));
    let password = g
        .auth
        .password
        .as_ref()
        .map(|s| s.expose().to_string())
        .or_else(|| env("BEAMCLAW_GATEWAY_PASSWORD"))
        .or_else(|| env("OPENCLAW_GATEWAY_PASSWORD"));
    let mode = match g.auth.mode.as_deref() {
        Some("none") => AuthMode::None,
        Some("token") => AuthMode::Token,
        Some("password") => AuthMode::Password,
        Some(other) => {
            return Err(UpError::Config(format!(
                "gateway.auth.mode {other:?} is not none, token or password"
            )));
        }
        None if token.is_some() => AuthMode::Token,
        None if password.is_some() => AuthMode::Password,
        None => AuthMode::None,
    };
    let auth = match mode {
        AuthMode::None => AuthConfig::none(),
        AuthMode::Token => AuthConfig { token, ..AuthConfig::token(String::new()) },
        AuthMode::Password => AuthConfig { password, ..AuthConfig::password(String::new()) },
        #[allow(unreachable_patterns)]
        _ => AuthConfig::none(),
    };
    let mut cfg = GatewayConfig { bind, auth, ..GatewayConfig::default() };
    if let Some(enabled) = g.http.endpoints.chat_completions.enabled {
        cfg.chat_completions_enabled = enabled;
    }
    if let Some(auto) = g.nodes.pairing.auto_approve_local {
        cfg.pairing.auto_approve_loopback = auto;
    }
    cfg.tools.allow = g.tools.allow.clone();
    cfg.tools.deny = g.tools.deny.clone();
    cfg.validate().map_err(|e| UpError::Config(e.to_string()))?;
    Ok(cfg)
}

/// The mesh's config: the same keys in the file, the environment and on the command line.
async fn mesh_config(
    loaded: &LoadedConfig,
    opts: &UpOptions,
    gateway: SocketAddr,
    key: driver::NodeKey,
) -> Result<MeshConfig, UpError> {
    let m = &loaded.config.mesh;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let listen = match opts.mesh_listen.clone().or_else(|| m.listen.clone()) {
        Some(l) => parse_addr("mesh listen address", &l)?,
        // Next to the gateway: one port up, or any free port when the gateway picks its own.
        None => SocketAddr::new(
            gateway.ip(),
            if gateway.port() == 0 { 0 } else { gateway.port().saturating_add(1) },
        ),
    };
    let join: Vec<String> = if opts.join.is_empty() { m.join.clone() } else { opts.join.clone() };
    let mut cfg = MeshConfig::new(key, listen);
    cfg.advertise = match opts.mesh_advertise.clone().or_else(|| m.advertise.clone()) {
        Some(a) => Some(parse_addr("mesh advertise address", &a)?),
        None if listen.ip().is_unspecified() => {
            let ip = routable_local_ip().ok_or_else(|| {
                UpError::Config(format!("the mesh listens on {listen} and no routable local address was found: set mesh.advertise (or --mesh-advertise) to the address peers should dial"))
            })?;
            Some(SocketAddr::new(ip, listen.port()))
        }
        None => None,
    };
    cfg.seeds = resolve(&join).await?;
    cfg.cluster_secret = m
        .cluster_secret
        .as_ref()
        .map(|s| s.expose().to_string())
        .or_else(|| env("BEAMCLAW_CLUSTER_SECRET"));
    if let Some(r) = m.replication_factor {
        cfg.replication_factor = usize::try_from(r)
            .unwrap_or(1)
            .clamp(1, beamclaw_mesh::core::placement::REPLICATION_FACTOR_MAX);
    }
    cfg.swim = SwimPreset::Lan;
    Ok(cfg)
}

/// The local address of the default route: what peers on other machines can reach when the
/// mesh listens on every interface. (Connecting a UDP socket sends nothing.)
fn routable_local_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

fn ensure_dir(path: &Path) -> Result<(), UpError> {
    std::fs::create_dir_all(path)
        .map_err(|source| UpError::DataDir { path: path.to_path_buf(), source })
}

/// Runs a node until it is told to stop; returns once it drained (or on the second signal).
pub async fn up(loaded: LoadedConfig, opts: UpOptions) -> Result<(), UpError> {
    let started = Instant::now();
    let data_dir = loaded.data_dir.clone();
    ensure_dir(&data_dir)?;
    let key = driver::load_or_create_node_key(&data_dir.join("identity").join("node.key"))?;
    let store = Arc::new(Store::open(&data_dir.join("store"), &StoreOptions::default())?);

    let gateway_cfg = gateway_config(&loaded, opts.listen.as_deref())?;
    let bound = beamclaw_gateway::bind(gateway_cfg).await?;
    let gateway_addr = bound.local_addr();

    let mesh_cfg = mesh_config(&loaded, &opts, gateway_addr, key.clone()).await?;
    let (mesh, turn_commands) = driver::start(mesh_cfg, store.clone()).await?;
    let node_id = mesh.node_id().to_string();
    let _discovery = if opts.discover_mdns || loaded.config.mesh.discover == Some(true) {
        match discovery::Discovery::start(mesh.clone()) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "mDNS discovery is off");
                None
            }
        }
    } else {
        None
    };
    let node_name = opts
        .node_name
        .clone()
        .or_else(|| loaded.config.mesh.node_name.clone())
        .or_else(|| nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()))
        .unwrap_or_else(|| mesh.node_id().short());

    let mut registry = Registry::default();
    metrics::export(mesh.clone(), &mut registry);
    // Exec approvals: the log in the mesh, the doorbell's listener, and the gate of `exec`.
    let approvals_log = crate::approvals::mesh::MeshLog::new(mesh.clone())
        .map_err(|e| UpError::Config(format!("exec approvals: {e}")))?;
    let approvals = crate::approvals::Approvals::new(
        crate::approvals::policy::ApprovalPolicy::from_config(&loaded.config.tools.exec),
        node_id.clone(),
        Arc::new(approvals_log),
    );
    tokio::spawn(crate::approvals::mesh::listen(Arc::downgrade(&approvals), mesh.events()));
    let builtin = crate::tools::builtin_registry(&loaded, approvals.clone())
        .map_err(|e| UpError::Config(e.to_string()))?;
    let processes = builtin.processes.clone();
    let mut tools: ToolRegistry = builtin.registry;
    let sessions_api: Arc<dyn crate::tools::sessions::SessionsApi> =
        Arc::new(sessions_api::MeshSessions::new(mesh.clone()));
    let subagents = crate::subagents::Supervisor::new(
        sessions_api.clone(),
        crate::subagents::SubagentPolicy::from_loaded(&loaded),
    );
    crate::tools::sessions::register(
        &mut tools,
        sessions_api,
        subagents.clone(),
        crate::tools::sessions::SessionToolsConfig::from_loaded(&loaded),
    )
    .map_err(|e| UpError::Config(format!("session tools: {e}")))?;
    subagents.start_resume();
    let runtime = AgentRuntime::build(
        &loaded,
        tools.clone(),
        MeshPorts::new(mesh.clone()).ports(),
        node_id.clone(),
        Some(&mut registry),
        RetryPolicy::default(),
    )?;
    tokio::spawn(turns::dispatch(turn_commands, runtime.actors.clone(), mesh.clone()));

    let info = NodeInfo {
        node_id: node_id.clone(),
        name: node_name,
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at_ms: chrono::Utc::now().timestamp_millis(),
        default_agent_id: loaded.default_agent_id(),
        main_key: "main".into(),
        agent_ids: loaded.agent_ids(),
        config_path: loaded.file.as_ref().map(|p| p.display().to_string()),
        state_dir: Some(data_dir.display().to_string()),
    };
    let config_file =
        loaded.file.clone().unwrap_or_else(|| data_dir.join(crate::config::CONFIG_FILE_NAME));
    let service = NodeService::new(
        mesh.clone(),
        info,
        loaded.clone(),
        config_file,
        runtime.stats.clone(),
        Arc::new(tools),
    );
    service.set_approvals(approvals);
    let pairing = Arc::new(FilePairingStore::open(data_dir.join("devices"))?);

    let (stop_gateway, gateway_stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway_task = tokio::spawn(bound.serve(service.clone(), pairing, registry, async move {
        let _ = gateway_stopped.await;
    }));

    let default_model = loaded.default_model_chain().primary.to_string();
    let provider_note = if default_model.starts_with(OFFLINE_PROVIDER_ID) {
        " (offline: no model configured; set ANTHROPIC_API_KEY or OPENAI_API_KEY, or see docs/configuration.md)"
    } else {
        ""
    };
    println!(
        "beamclaw {} ready in {} ms",
        env!("CARGO_PKG_VERSION"),
        started.elapsed().as_millis()
    );
    println!("  node     {node_id}");
    println!("  gateway  http://{gateway_addr}  (WebSocket ws://{gateway_addr})");
    println!("  mesh     {}", mesh.mesh_addr());
    println!("  data     {}", data_dir.display());
    println!("  model    {default_model}{provider_note}");
    tracing::info!(%gateway_addr, mesh = %mesh.mesh_addr(), node = %node_id, ready_ms = started.elapsed().as_millis() as u64, "node ready");

    wait_for_signal().await;
    tracing::info!("stop requested: draining (a second signal exits at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without finishing the drain");
        std::process::exit(130);
    });
    service.begin_drain(Some(RESTART_EXPECTED_MS));
    match mesh.drain(Duration::from_millis(DRAIN_TIMEOUT_MS)).await {
        Ok((handed_over, left_behind)) => tracing::info!(handed_over, left_behind, "drained"),
        Err(e) => tracing::warn!(error = %e, "drain did not complete"),
    }
    // Background commands die with the node (their process groups).
    processes.kill_all();
    let _ = stop_gateway.send(());
    match tokio::time::timeout(Duration::from_secs(5), gateway_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gateway stopped with an error"),
        Err(_) => tracing::warn!("gateway did not stop within 5 s"),
        _ => {}
    }
    tracing::info!("node stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
