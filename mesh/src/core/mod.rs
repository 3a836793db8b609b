//! The node core: a sans-IO state machine. No tokio, clock, sockets, threads or OS entropy here
//! (`tests/sans_io.rs` fails the build if any appears).
//!
//! `Node::handle(now, input) -> Vec<Effect>` is the whole interface: see `api` for inputs and
//! effects, `node` for the state, and `requests`, `replication`, `ownership` and `turns` for the
//! behaviours. `wire` is the peer protocol, `membership` wraps foca, `placement` is rendezvous
//! hashing, `storage` is the core's view of the disk.

pub mod api;
pub mod ids;
mod membership;
pub mod node;
mod ownership;
pub mod placement;
mod replication;
pub mod requests;
pub mod storage;
pub mod timers;
pub mod turn;
mod turns;
pub mod wire;

pub use api::{
    AbortReason, BatchId, Command, Counters, Effect, Event, Input, MemberStatus, Millis,
    NodeStatus, ReqId, RequestBody, RequestError, Response, RunStatus, SessionOp, TurnInput,
};
pub use ids::{Epoch, Generation, Member, NodeId, generation_for_start};
pub use membership::SwimPreset;
pub use node::{Node, NodeConfig, PlantedBugs, Timing};
pub use replication::{AE_DEFERRALS_MAX, LIST_SETTLES_MAX, SYNC_FRUITLESS_ROUNDS_MAX};
pub use storage::{Disk, DiskError};
pub use timers::Timer;
pub use turn::{RunRef, TurnEvent};
