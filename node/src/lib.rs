//! beamclaw: the node. Configuration, the agent runtime, model providers, tools, the mock LLM
//! server and the command line.
//!
//! Code map:
//! - `config`: `beamclaw.json5`, the data directory, resolved agents and queue settings.
//! - `provider`: the `Provider` trait, Anthropic/OpenAI streaming over HTTP, the offline
//!   provider, failover (`ModelRouter`) and statistics.
//! - `agent`: session actors and the turn loop, with the ports the mesh implements.
//! - `tools`: the `Tool` trait and registry; `tools::sessions` the session tools and
//!   `sessions_spawn` over the [`tools::sessions::SessionsApi`] port.
//! - `skills`: SKILL.md folders, gating, the prompt's skills list and `skills.status`.
//! - `subagents`: spawned child sessions, watched by the parent's owner and announced back.
//! - `mock_llm`: `beamclaw mock-llm`, a scripted Anthropic/OpenAI server for tests and benches.
//! - `runtime`: wiring a config into a ready runtime (router, runner, actors).
//! - `transcript`: OpenClaw's session files (pi transcript JSONL, `sessions.json`) converted to
//!   and from the session document, for `beamclaw import openclaw` and `sessions export`.
//! - `serve`: `beamclaw up`: store, mesh, runtime and gateway of one node, the gateway service
//!   over the mesh, and the orderly drain on SIGTERM.
//!
//! Must not know: the mesh core's internals (`serve` talks to it through the driver's handle and
//! the runtime through `agent` ports), the gateway's wire protocol.

pub mod agent;
pub mod approvals;
pub mod cli;
pub mod config;
pub mod mock_llm;
pub mod provider;
pub mod runtime;
pub mod serve;
pub mod skills;
pub mod subagents;
pub mod tools;
pub mod transcript;
