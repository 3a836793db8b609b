//! End-to-end test support: start real `beamclaw` processes and drive them through the gateway.
//!
//! - [`process`]: the `beamclaw` binary, child processes that die with the test (kill -9 on
//!   drop, and `PR_SET_PDEATHSIG` through `setpriv` when the test process itself dies), free
//!   ports, deadlines.
//! - [`node`]: one node (`beamclaw up` with its own data directory, restartable with the same
//!   identity) and a [`node::Cluster`] of them, with `beamclaw mock-llm` as their model.
//! - [`client`]: an OpenClaw WebSocket client (challenge, connect with a token, requests,
//!   events), as `beamclaw chat` does it.
//! - [`netns`]: network namespaces joined by a bridge, and partitions between them.
//! - [`replica`]: reads a stopped node's store directly, to compare replicas byte for byte.
//!
//! The binary: `cargo test --workspace` builds it (the workspace's `beamclaw` package has
//! integration tests, so cargo builds its binary before running any test); when it is missing or
//! older than its sources (`cargo test -p beamclaw-e2e` alone), [`process::beamclaw_bin`] builds
//! it with `cargo build -p beamclaw` into the same target directory and profile.

pub mod client;
pub mod netns;
pub mod node;
pub mod process;
pub mod replica;

pub use client::{Client, ClientError};
pub use node::{Cluster, ClusterOptions, MockLlm, Node, NodeOptions};
pub use process::{Deadline, beamclaw_bin, poll_until};
