//! The agent runtime: session actors and the turns they run.
//!
//! Owns: [`SessionActors`] (one actor per active session, a bounded mailbox, OpenClaw's queue
//! modes), [`TurnRunner`] (one turn: prompt, streaming provider call, the tool-call loop, abort,
//! timeout, epoch fencing, checkpoints, the messages to persist), the system prompt from the
//! workspace files, and the ports the runtime talks through ([`HistoryReader`], [`TurnOutput`],
//! [`TurnEvents`], [`EpochGuard`]), which the mesh implements.
//! Must not know: sockets, the wire formats of providers, how sessions are stored or replicated.

mod actor;
mod ports;
mod prompt;
mod turn;

pub use actor::{ACTOR_IDLE_MS, MAILBOX_MESSAGES_MAX, SessionActors, SubmitError};
pub use ports::{
    BroadcastEvents, EVENTS_BUFFER_MAX, EpochGuard, HistoryReader, MemorySessions, PortError,
    RuntimePorts, StaleEpoch, TurnEvents, TurnOutput,
};
pub use prompt::{PromptBuilder, WORKSPACE_FILE_BYTES_MAX, WORKSPACE_FILES};
pub use turn::{
    CHECKPOINT_BYTES, CHECKPOINT_INTERVAL_MS, StartTurn, SteerInbox, StopKind, TOOL_ITERATIONS_MAX,
    TurnOutcome, TurnRunner,
};
