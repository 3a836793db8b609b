//! beamclaw-mesh: the node core and its driver.
//!
//! `core` is a sans-IO state machine (`handle(now, input) -> effects`): membership (foca),
//! placement (rendezvous hashing), ownership (node, epoch), replication (Automerge sync),
//! requests and handoff. `driver` executes its effects with tokio, quinn and the store.
//! The core must not know: tokio, clocks, sockets, threads, OS entropy.

pub mod core;
pub mod driver;
