//! Events of a running agent turn.
//!
//! The owner's runtime produces them; the core carries them to every node with a subscriber
//! (the node where the client sent the message, nodes with `sessions.subscribe`), and each node's
//! gateway turns them into OpenClaw `chat` and `agent` events. They are ephemeral: only the final
//! message (and checkpoints of long output) reach the session document.

use beamclaw_crdt::{Message, SessionKey, StopReason, Usage};
use serde::{Deserialize, Serialize};

/// Identifies one run (OpenClaw `runId`) of a session under one owner epoch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunRef {
    pub session: SessionKey,
    pub run_id: String,
    /// The owner epoch the run was started under; events from a stale epoch are dropped.
    pub epoch: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TurnEvent {
    /// The run started (OpenClaw `agent` lifecycle `start`).
    Started { at_ms: i64 },
    /// New assistant text; the gateway accumulates it into cumulative `chat` deltas.
    AssistantDelta { text: String },
    /// New thinking text.
    ThinkingDelta { text: String },
    /// A tool call begins (`agent` tool stream, phase `start`). `args` is the JSON arguments.
    ToolStart { tool_call_id: String, name: String, args: String },
    /// Partial output of a running tool (phase `update`).
    ToolUpdate { tool_call_id: String, name: String, partial: String },
    /// A tool finished (phase `result`).
    ToolResult { tool_call_id: String, name: String, result: String, is_error: bool },
    /// The run finished; `message` is the final assistant message as written to the document.
    Final {
        #[serde(with = "super::wire::as_json")]
        message: Box<Message>,
        stop_reason: StopReason,
        usage: Usage,
    },
    /// The run was aborted (by `chat.abort`, an interrupting message, or a stale epoch).
    Aborted { partial_text: String },
    /// The run failed; `kind` is a stable machine name (`provider_error`, `timeout`, ...).
    Error { message: String, kind: String },
}

impl TurnEvent {
    /// Whether this event ends the run.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            TurnEvent::Final { .. } | TurnEvent::Aborted { .. } | TurnEvent::Error { .. }
        )
    }
}
