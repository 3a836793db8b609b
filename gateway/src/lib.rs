//! beamclaw-gateway: axum HTTP and WebSocket on one port.
//!
//! Will own: the OpenClaw gateway protocol (v4 and v3: challenge, connect, hello-ok, req/res/event
//! frames, auth, device identity and pairing, scopes), the OpenAI-compatible HTTP API, health,
//! metrics and the status page. Must not know: providers or tools (it calls a service trait that
//! the node implements) or how the mesh moves bytes.
