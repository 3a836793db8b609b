//! beamclaw-gateway: axum HTTP and WebSocket on one port.
//!
//! Owns: the OpenClaw gateway protocol (v4 and v3: challenge, connect, hello-ok, req/res/event
//! frames, auth, device identity and pairing, scopes, events), the OpenAI-compatible HTTP API,
//! `/tools/invoke`, health and readiness probes, `/metrics` and the status page.
//! Must not know: providers, tools, sessions or the mesh. Everything behind the wire is a call
//! on [`GatewayService`], which the node implements (it submits every chat turn to the
//! session's owner through the mesh).
//!
//! Start with [`serve`] (or [`bind`] then [`BoundGateway::serve`] to learn the port first).
//! Module map: `config` (what the node passes in), `service` (the trait), `protocol` (frames,
//! params, payload shapes: pure), `ws` (sockets, handshake, methods), `feeds` (session event
//! fan-out), `http` (HTTP routes), `pairing` and `device` (device identity), `server` (binding,
//! shared state, background tasks).

mod config;
mod device;
mod feeds;
mod http;
mod metrics;
mod pairing;
mod protocol;
mod server;
mod service;
mod util;
mod ws;

pub use config::{
    AuthConfig, AuthMode, ConfigError, DEFAULT_PORT, GatewayConfig, GatewayLimits, PairingPolicy,
    ToolPolicy,
};
pub use pairing::{
    DeviceTokenInfo, FilePairingStore, IssuedToken, PENDING_TTL_MS, PairedDevice, PairingError,
    PairingRequest, PairingSnapshot, PairingStore, PendingPairing,
};
pub use prometheus_client::registry::Registry;
pub use server::{BoundGateway, GatewayError, bind, serve};
pub use service::{
    AbortOutcome, AbortTarget, Attachment, ChatAccepted, ChatHistory, ChatInject, ChatSend,
    ConfigWrite, ConfigWriteMode, ExecApproval, ExecApprovalResolution, FastMode, FieldPatch,
    GatewayService, HistoryQuery, Member, ModelInfo, NodeEvent, NodeHealth, NodeInfo, NodeStatus,
    Readiness, RecentSession, ResetReason, RunEvent, RunOutcome, RunStatus, SendStatus,
    ServiceError, SessionChange, SessionCreate, SessionPatch, SessionQuery, SessionSettings,
    SessionSummary, ToolInvocation,
};
pub use ws::io::PREAUTH_FRAME_BYTES_MAX;
