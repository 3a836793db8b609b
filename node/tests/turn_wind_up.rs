//! A client sends its next message as soon as it has a turn's final event. In the real node that
//! event leaves the mesh core when the final message is durable, in the same step that resolves
//! the turn's own write, so the next request can reach the session's actor before the actor has
//! polled the ended turn. It must still run at once, as a request to an idle session: only
//! requests sent *during* a turn wait for the queue's debounce.
//!
//! The output port here reproduces that order exactly: the test resolves the final write and
//! submits the next request without yielding in between (one-threaded runtime), so both are
//! ready when the actor next runs. Before the fix the actor took the request for a follow-up
//! about half the time and held it for the whole debounce.

// Test code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use beamclaw::agent::{
    BroadcastEvents, MemorySessions, PortError, RuntimePorts, StartTurn, TurnOutput,
};
use beamclaw::config::{EnvKeys, LoadedConfig, parse_str};
use beamclaw::provider::RetryPolicy;
use beamclaw::runtime::AgentRuntime;
use beamclaw::tools::ToolRegistry;
use beamclaw_crdt::{Message, SessionKey, Usage};
use beamclaw_mesh::core::turn::TurnEvent;
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// The queue's debounce in this test (the largest the config allows): longer than the test waits.
const DEBOUNCE_MS: u64 = 60_000;
/// How long the follow-up turn may take to end before the test fails (it takes milliseconds
/// when it starts at once; with the debounce it would take a minute).
const TURN_WAIT_MS: u64 = 30_000;
/// Rounds: an unordered choice between the ended turn and the new request went wrong about half
/// the time, so eight rounds catch it with probability 255/256.
const ROUNDS: usize = 8;

/// Writes into [`MemorySessions`]; a final write, while armed, tells the test it is durable and
/// resolves when the test lets it go.
struct HeldFinal {
    sessions: Arc<MemorySessions>,
    hold: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

impl TurnOutput for HeldFinal {
    fn append<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        self.sessions.append(session, epoch, messages)
    }

    fn checkpoint<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        partial: Message,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        self.sessions.checkpoint(session, epoch, partial)
    }

    fn add_usage<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        usage: Usage,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        self.sessions.add_usage(session, epoch, usage)
    }

    fn append_final<'a>(
        &'a self,
        session: &'a SessionKey,
        epoch: u64,
        message: Message,
        usage: Usage,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        let hold = self.hold.lock().unwrap().take();
        Box::pin(async move {
            self.sessions.append_final(session, epoch, message, usage).await?;
            if let Some((written, go)) = hold {
                let _ = written.send(());
                let _ = go.await;
            }
            Ok(())
        })
    }
}

fn user_turn(sessions: &MemorySessions, session: &SessionKey, text: &str) -> StartTurn {
    let run_id = uuid::Uuid::new_v4().to_string();
    let message = Message::user_text(format!("u:{run_id}"), text, 0);
    sessions.append_user(session, std::slice::from_ref(&message));
    StartTurn { session: session.clone(), epoch: 0, run_id, messages: vec![message] }
}

#[tokio::test]
async fn a_request_sent_after_the_final_event_starts_without_the_debounce() {
    let data = tempfile::tempdir().unwrap();
    // No provider configured: the offline provider answers.
    let text = format!(
        r#"{{ messages: {{ queue: {{ mode: "followup", debounceMs: {DEBOUNCE_MS}, cap: 8 }} }} }}"#
    );
    let loaded = LoadedConfig {
        config: parse_str(&text, "test", &|_| None).unwrap(),
        data_dir: data.path().to_path_buf(),
        file: None,
        env_keys: EnvKeys::default(),
    };
    let sessions = Arc::new(MemorySessions::new());
    let output = Arc::new(HeldFinal { sessions: sessions.clone(), hold: Mutex::new(None) });
    let events = BroadcastEvents::new();
    let ports = RuntimePorts {
        history: sessions.clone(),
        output: output.clone(),
        events: Arc::new(events.clone()),
        epochs: sessions.clone(),
    };
    let retries = RetryPolicy {
        attempts_max: 1,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(10),
    };
    let runtime =
        AgentRuntime::build(&loaded, ToolRegistry::new(), ports, "node-test".into(), None, retries)
            .unwrap();
    let mut rx = events.subscribe();

    for round in 0..ROUNDS {
        let session = SessionKey::new(format!("agent:main:wind-up-{round}")).unwrap();
        let (written_tx, written_rx) = oneshot::channel();
        let (go_tx, go_rx) = oneshot::channel();
        *output.hold.lock().unwrap() = Some((written_tx, go_rx));

        let first = user_turn(&sessions, &session, "first");
        runtime.actors.submit(first.clone()).unwrap();
        written_rx.await.unwrap();
        // The core resolves the turn's write, then sends the final event; the client answers it
        // with its next message. Nothing yields in between, so the actor has not run yet.
        go_tx.send(()).unwrap();
        let second = user_turn(&sessions, &session, "second");
        runtime.actors.submit(second.clone()).unwrap();

        let run_id = second.run_id.clone();
        let wait = async {
            loop {
                let (run, event) = rx.recv().await.unwrap();
                if run.run_id == run_id && event.is_terminal() {
                    return event;
                }
            }
        };
        let event = tokio::time::timeout(Duration::from_millis(TURN_WAIT_MS), wait)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "round {round}: the message sent after the final event waited for the \
                     {DEBOUNCE_MS} ms debounce (it was taken for a follow-up sent during the turn)"
                )
            });
        assert!(matches!(event, TurnEvent::Final { .. }), "round {round}: {event:?}");
    }
}
