//! The OpenClaw gateway protocol on the wire: frames, error shapes, method names and scopes,
//! request parameters, and the JSON shapes of payloads. Pure data and codecs: no sockets, no
//! service calls. Everything that crosses the socket is built or parsed here.

pub(crate) mod errors;
pub(crate) mod frames;
pub(crate) mod methods;
pub(crate) mod params;
pub(crate) mod schema_tables;
pub(crate) mod wire;

/// The newest protocol version BeamClaw speaks.
pub(crate) const PROTOCOL_VERSION: u32 = 4;
/// The oldest protocol version BeamClaw accepts (early-2026 clients, OpenClaw nodes and
/// probes).
pub(crate) const PROTOCOL_VERSION_MIN: u32 = 3;
