//! beamclaw: the node. Configuration, the agent runtime, model providers, tools, the mock LLM
//! server and the command line.
//!
//! Code map:
//! - `config`: `beamclaw.json5`, the data directory, resolved agents and queue settings.
//! - `provider`: the `Provider` trait, Anthropic/OpenAI streaming over HTTP, the offline
//!   provider, failover (`ModelRouter`) and statistics.
//! - `agent`: session actors and the turn loop, with the ports the mesh implements.
//! - `tools`: the `Tool` trait and registry.
//! - `mock_llm`: `beamclaw mock-llm`, a scripted Anthropic/OpenAI server for tests and benches.
//! - `runtime`: wiring a config into a ready runtime (router, runner, actors).
//!
//! Must not know: the mesh's internals (it talks to the agent runtime through `agent` ports),
//! the gateway's wire protocol.

pub mod agent;
pub mod config;
pub mod mock_llm;
pub mod provider;
pub mod runtime;
pub mod tools;
