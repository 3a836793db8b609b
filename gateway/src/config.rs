//! What the gateway is told at start: where to listen, how to authenticate, its limits and
//! policies. The node maps its config file (`gateway.*` in `beamclaw.json5`) and environment
//! into [`GatewayConfig`]; the gateway never reads files itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// OpenClaw's default gateway port, which BeamClaw keeps.
pub const DEFAULT_PORT: u16 = 18789;

/// Largest frame a client may send after authentication (`hello-ok.policy.maxPayload`), bytes.
pub const MAX_PAYLOAD_BYTES_DEFAULT: usize = 26_214_400;
/// Bytes queued towards one client before it is closed as a slow reader
/// (`hello-ok.policy.maxBufferedBytes`).
pub const MAX_BUFFERED_BYTES_DEFAULT: usize = 52_428_800;
/// Interval of the `tick` keepalive event (`hello-ok.policy.tickIntervalMs`).
pub const TICK_INTERVAL_MS_DEFAULT: u64 = 15_000;
/// Open WebSocket connections the gateway holds at most; the next one gets HTTP 503.
pub const CONNECTIONS_MAX_DEFAULT: usize = 16_384;
/// Sustained requests per second one connection may send (token bucket refill rate).
pub const REQUESTS_PER_SECOND_DEFAULT: u32 = 500;
/// Requests one connection may send in a burst (token bucket capacity).
pub const REQUESTS_BURST_DEFAULT: u32 = 1_000;
/// Time a new socket has to complete `connect` before it is closed (OpenClaw's pre-auth
/// handshake timeout).
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 15_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// No shared secret. Only allowed on a loopback bind.
    None,
    /// `connect.auth.token` / `Authorization: Bearer <token>`.
    Token,
    /// `connect.auth.password` / `Authorization: Bearer <password>`.
    Password,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Token => "token",
            AuthMode::Password => "password",
        }
    }
}

/// `gateway.auth` as OpenClaw spells it.
#[derive(Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub token: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for AuthConfig {
    // Secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl AuthConfig {
    pub fn none() -> Self {
        AuthConfig { mode: AuthMode::None, token: None, password: None }
    }

    pub fn token(token: impl Into<String>) -> Self {
        AuthConfig { mode: AuthMode::Token, token: Some(token.into()), password: None }
    }

    pub fn password(password: impl Into<String>) -> Self {
        AuthConfig { mode: AuthMode::Password, token: None, password: Some(password.into()) }
    }
}

/// Sizes, rates and timeouts. Every field has a `*_DEFAULT` constant above.
#[derive(Clone, Debug)]
pub struct GatewayLimits {
    pub connections_max: usize,
    pub max_payload_bytes: usize,
    pub max_buffered_bytes: usize,
    pub tick_interval_ms: u64,
    pub requests_per_second: u32,
    pub requests_burst: u32,
    pub handshake_timeout_ms: u64,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        GatewayLimits {
            connections_max: CONNECTIONS_MAX_DEFAULT,
            max_payload_bytes: MAX_PAYLOAD_BYTES_DEFAULT,
            max_buffered_bytes: MAX_BUFFERED_BYTES_DEFAULT,
            tick_interval_ms: TICK_INTERVAL_MS_DEFAULT,
            requests_per_second: REQUESTS_PER_SECOND_DEFAULT,
            requests_burst: REQUESTS_BURST_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
        }
    }
}

/// `gateway.tools.allow|deny` for `POST /tools/invoke`. Entries are tool names; a trailing `*`
/// matches a prefix (`fs_*`). `allow` removes names from OpenClaw's default HTTP deny list;
/// `deny` adds to it.
#[derive(Clone, Debug, Default)]
pub struct ToolPolicy {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// Device pairing policy (`gateway.nodes.pairing` in OpenClaw).
#[derive(Clone, Debug)]
pub struct PairingPolicy {
    /// Approve unknown devices that connect from a loopback address without asking.
    pub auto_approve_loopback: bool,
}

impl Default for PairingPolicy {
    fn default() -> Self {
        PairingPolicy { auto_approve_loopback: true }
    }
}

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Where to listen; port 0 picks a free port (see [`crate::BoundGateway::local_addr`]).
    pub bind: SocketAddr,
    pub auth: AuthConfig,
    pub limits: GatewayLimits,
    pub tools: ToolPolicy,
    /// Serve `POST /v1/chat/completions` and `GET /v1/models`. OpenClaw turns these off by
    /// default; BeamClaw turns them on so that the OpenAI SDKs work after `beamclaw up` (auth
    /// still applies).
    pub chat_completions_enabled: bool,
    /// Browser origins allowed to open the WebSocket besides the gateway's own origin
    /// (OpenClaw `controlUi.allowedOrigins`); `"*"` allows any.
    pub allowed_origins: Vec<String>,
    pub pairing: PairingPolicy,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT),
            auth: AuthConfig::none(),
            limits: GatewayLimits::default(),
            tools: ToolPolicy::default(),
            chat_completions_enabled: true,
            allowed_origins: Vec::new(),
            pairing: PairingPolicy::default(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "refusing to listen on {bind} without authentication: set gateway.auth.mode to \"token\" \
         and gateway.auth.token in beamclaw.json5 (or export BEAMCLAW_GATEWAY_TOKEN=<secret>), or \
         listen on a loopback address such as 127.0.0.1"
    )]
    NonLoopbackWithoutAuth { bind: SocketAddr },
    #[error(
        "gateway.auth.mode is \"token\" but no token is set: set gateway.auth.token or \
         BEAMCLAW_GATEWAY_TOKEN"
    )]
    TokenMissing,
    #[error(
        "gateway.auth.mode is \"password\" but no password is set: set gateway.auth.password or \
         BEAMCLAW_GATEWAY_PASSWORD"
    )]
    PasswordMissing,
    #[error("gateway limit {name} is {value}; it must be at least {min}")]
    LimitTooSmall { name: &'static str, value: u64, min: u64 },
}

impl GatewayConfig {
    /// Checks the rules that make a config unsafe or unusable; `serve` refuses to start on any.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.auth.mode {
            AuthMode::None if !self.bind.ip().is_loopback() => {
                return Err(ConfigError::NonLoopbackWithoutAuth { bind: self.bind });
            }
            AuthMode::Token if self.auth.token.as_deref().is_none_or(str::is_empty) => {
                return Err(ConfigError::TokenMissing);
            }
            AuthMode::Password if self.auth.password.as_deref().is_none_or(str::is_empty) => {
                return Err(ConfigError::PasswordMissing);
            }
            _ => {}
        }
        let l = &self.limits;
        let checks: [(&'static str, u64, u64); 6] = [
            ("connections_max", l.connections_max as u64, 1),
            // A connect frame must fit, whatever the payload limit.
            (
                "max_payload_bytes",
                l.max_payload_bytes as u64,
                crate::PREAUTH_FRAME_BYTES_MAX as u64,
            ),
            ("max_buffered_bytes", l.max_buffered_bytes as u64, l.max_payload_bytes as u64),
            ("tick_interval_ms", l.tick_interval_ms, 100),
            ("requests_per_second", u64::from(l.requests_per_second), 1),
            ("requests_burst", u64::from(l.requests_burst), 1),
        ];
        for (name, value, min) in checks {
            if value < min {
                return Err(ConfigError::LimitTooSmall { name, value, min });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_bind_without_auth_is_refused_with_a_hint() {
        let config = GatewayConfig { bind: "0.0.0.0:18789".parse().unwrap(), ..Default::default() };
        let err = config.validate().unwrap_err();
        assert!(matches!(err, ConfigError::NonLoopbackWithoutAuth { .. }));
        assert!(err.to_string().contains("gateway.auth.token"));
        assert!(err.to_string().contains("BEAMCLAW_GATEWAY_TOKEN"));
    }

    #[test]
    fn non_loopback_bind_with_token_is_accepted() {
        let config = GatewayConfig {
            bind: "0.0.0.0:18789".parse().unwrap(),
            auth: AuthConfig::token("s3cret"),
            ..Default::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn token_mode_without_token_is_refused() {
        let config = GatewayConfig {
            auth: AuthConfig { mode: AuthMode::Token, token: Some(String::new()), password: None },
            ..Default::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::TokenMissing));
    }

    #[test]
    fn buffered_bytes_below_payload_is_refused() {
        let mut config = GatewayConfig::default();
        config.limits.max_buffered_bytes = 10;
        assert!(matches!(config.validate(), Err(ConfigError::LimitTooSmall { .. })));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let text = format!("{:?}", AuthConfig::token("hunter2"));
        assert!(!text.contains("hunter2"));
    }
}
