//! Turn commands from the mesh core to the session actors.
//!
//! The core decides when a turn starts (an acknowledged user message on the session's owner),
//! when it must wind down (handoff or drain: finish or checkpoint before a deadline) and when it
//! must stop (a client abort, or another node owning the session now). This task only carries
//! those decisions to the actors and reports back when a session has no turn left.

use std::sync::Arc;
use std::time::Duration;

use beamclaw_mesh::core::turn::TurnEvent;
use beamclaw_mesh::core::{AbortReason, TurnInput};
use beamclaw_mesh::driver::{MeshHandle, TurnCommand};
use tokio::sync::mpsc;

use crate::agent::{SessionActors, StartTurn, StopKind};

/// How often a winding-down session is checked for its turn to have ended.
const QUIET_POLL_MS: u64 = 20;

/// Runs until the mesh stops sending commands.
pub async fn dispatch(
    mut commands: mpsc::Receiver<TurnCommand>,
    actors: Arc<SessionActors>,
    mesh: MeshHandle,
) {
    while let Some(cmd) = commands.recv().await {
        match cmd {
            TurnCommand::Start { run, input, .. } => {
                let turn = StartTurn {
                    session: run.session.clone(),
                    epoch: run.epoch,
                    run_id: run.run_id.clone(),
                    messages: vec![*input],
                };
                if let Err(e) = actors.submit(turn) {
                    tracing::warn!(session = %run.session, run = %run.run_id, error = %e, "turn not started");
                    // Ends the run in the core; the message stays unanswered and is started
                    // again by the next owner or restart.
                    let event =
                        TurnEvent::Error { message: e.to_string(), kind: "queue_full".into() };
                    mesh.turn_event(run, event);
                }
            }
            TurnCommand::Drain { session, deadline } => {
                let (actors, mesh) = (actors.clone(), mesh.clone());
                tokio::spawn(async move {
                    // Let the turn finish; at the deadline stop it, keeping what it streamed as a
                    // checkpoint that the next owner's run replaces.
                    while actors.is_running(&session) && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(QUIET_POLL_MS)).await;
                    }
                    if actors.is_running(&session) {
                        tracing::info!(%session, "drain deadline: checkpointing the running turn");
                        actors.stop(&session, StopKind::Handoff);
                    }
                    wait_quiet(&actors, &session).await;
                    let _ = mesh.turn(TurnInput::Idle { session }).await;
                });
            }
            TurnCommand::Abort { session, run_id, reason } => {
                let kind = match reason {
                    AbortReason::Client => StopKind::Client,
                    AbortReason::StaleEpoch | AbortReason::Drain => StopKind::Handoff,
                };
                let stopped = actors.stop(&session, kind);
                tracing::info!(%session, run = ?run_id, ?reason, stopped, "turn stop requested");
                let (actors, mesh) = (actors.clone(), mesh.clone());
                tokio::spawn(async move {
                    wait_quiet(&actors, &session).await;
                    let _ = mesh.turn(TurnInput::Idle { session }).await;
                });
            }
        }
    }
}

/// Bounded wait for a session's actor to have no running turn.
async fn wait_quiet(actors: &SessionActors, session: &beamclaw_crdt::SessionKey) {
    for _ in 0..(30_000 / QUIET_POLL_MS) {
        if !actors.is_running(session) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(QUIET_POLL_MS)).await;
    }
    tracing::warn!(%session, "turn did not stop within 30 s");
}
