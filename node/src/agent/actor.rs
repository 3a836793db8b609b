//! Session actors: one task per active session, one turn at a time.
//!
//! A turn request ([`StartTurn`]) goes to the session's actor through a bounded mailbox
//! ([`MAILBOX_MESSAGES_MAX`]). While a turn runs, new requests are handled by the queue mode
//! (OpenClaw `messages.queue`):
//! - `steer`: injected into the running turn at its next tool boundary (a follow-up if the turn
//!   ends first);
//! - `followup`: each runs as its own turn afterwards, in order;
//! - `collect`: everything queued runs as one merged turn afterwards;
//! - `interrupt`: the running turn is aborted and the new request runs next.
//!
//! The queue holds at most `cap` requests; beyond that `drop` decides: `old` drops the oldest,
//! `new` refuses the newest, `summarize` drops the oldest but tells the next turn what was
//! dropped. A dropped request's run gets a `queue_dropped` error event. Queued turns start once
//! no request arrived for `debounce`; a request to an idle actor starts at once. An actor with
//! nothing to do for [`ACTOR_IDLE_MS`] stops and the next request starts a new one.

use super::turn::{StartTurn, SteerInbox, StopKind, TurnJob, TurnOutcome, TurnRunner};
use crate::config::{QueueDrop, QueueMode, QueueSettings};
use beamclaw_crdt::SessionKey;
use beamclaw_mesh::core::turn::TurnEvent;
use futures::FutureExt;
use futures::future::BoxFuture;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Requests waiting in one session actor's mailbox.
pub const MAILBOX_MESSAGES_MAX: usize = 256;
/// An actor with no turn and no request for this long stops.
pub const ACTOR_IDLE_MS: u64 = 5 * 60 * 1000;
/// Characters of a dropped message kept in the `summarize` note.
pub const DROP_SUMMARY_CHARS_MAX: usize = 160;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error(
        "the mailbox of session {session} is full ({MAILBOX_MESSAGES_MAX} requests); try again shortly"
    )]
    MailboxFull { session: SessionKey },
}

struct ActorHandle {
    tx: mpsc::Sender<StartTurn>,
    generation: u64,
    /// The running turn's cancellation, for `abort`.
    running: RunningSlot,
    /// Set while the session is being handed to another node: the running turn stops as a
    /// checkpoint and queued requests are dropped (the next owner starts them).
    handoff: Arc<AtomicBool>,
}

type RunningSlot = Arc<Mutex<Option<CancellationToken>>>;

/// Every session actor of this node.
pub struct SessionActors {
    runner: Arc<TurnRunner>,
    settings: QueueSettings,
    idle: Duration,
    actors: Mutex<HashMap<SessionKey, ActorHandle>>,
    generation: std::sync::atomic::AtomicU64,
}

impl SessionActors {
    pub fn new(runner: Arc<TurnRunner>, settings: QueueSettings) -> Arc<Self> {
        Self::with_idle(runner, settings, Duration::from_millis(ACTOR_IDLE_MS))
    }

    pub fn with_idle(
        runner: Arc<TurnRunner>,
        settings: QueueSettings,
        idle: Duration,
    ) -> Arc<Self> {
        Arc::new(SessionActors {
            runner,
            settings,
            idle,
            actors: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, ActorHandle>> {
        self.actors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a turn request to its session's actor, starting the actor if needed.
    pub fn submit(self: &Arc<Self>, turn: StartTurn) -> Result<(), SubmitError> {
        let session = turn.session.clone();
        let mut actors = self.lock();
        let mut turn = turn;
        if let Some(handle) = actors.get(&session) {
            // A new turn means this node owns the session (again).
            handle.handoff.store(false, Ordering::SeqCst);
            match handle.tx.try_send(turn) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(SubmitError::MailboxFull { session });
                }
                // The actor retired; start a new one.
                Err(mpsc::error::TrySendError::Closed(back)) => turn = back,
            }
        }
        let (tx, rx) = mpsc::channel(MAILBOX_MESSAGES_MAX);
        let generation = self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let running = RunningSlot::default();
        let handoff = Arc::new(AtomicBool::new(false));
        let actor = Actor {
            handoff: handoff.clone(),
            session: session.clone(),
            generation,
            owner: Arc::downgrade(self),
            runner: self.runner.clone(),
            settings: self.settings,
            idle: self.idle,
            rx,
            running: running.clone(),
            pending: VecDeque::new(),
            dropped: Vec::new(),
            steer: SteerInbox::default(),
            last_arrival: Instant::now(),
        };
        if tx.try_send(turn).is_err() {
            return Err(SubmitError::MailboxFull { session });
        }
        actors.insert(session.clone(), ActorHandle { tx, generation, running, handoff });
        tracing::debug!(session = %session, "session actor started");
        tokio::spawn(actor.run());
        Ok(())
    }

    /// Aborts the session's running turn (OpenClaw `chat.abort`). False when none runs.
    pub fn abort(&self, session: &SessionKey) -> bool {
        self.stop(session, StopKind::Client)
    }

    /// Whether a turn of `session` is running on this node.
    pub fn is_running(&self, session: &SessionKey) -> bool {
        self.lock()
            .get(session)
            .is_some_and(|h| h.running.lock().unwrap_or_else(|p| p.into_inner()).is_some())
    }

    /// Stops the session's running turn. For a handoff, what it streamed stays as a checkpoint
    /// and requests queued behind it are dropped (the next owner starts them). False when no
    /// turn runs.
    pub fn stop(&self, session: &SessionKey, kind: StopKind) -> bool {
        let actors = self.lock();
        let Some(handle) = actors.get(session) else { return false };
        if kind == StopKind::Handoff {
            handle.handoff.store(true, Ordering::SeqCst);
        }
        let running = handle.running.lock().unwrap_or_else(|p| p.into_inner());
        match running.as_ref() {
            Some(cancel) => {
                cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Sessions with a live actor.
    pub fn active(&self) -> usize {
        self.lock().len()
    }
}

struct Actor {
    session: SessionKey,
    generation: u64,
    owner: std::sync::Weak<SessionActors>,
    runner: Arc<TurnRunner>,
    settings: QueueSettings,
    idle: Duration,
    rx: mpsc::Receiver<StartTurn>,
    running: RunningSlot,
    handoff: Arc<AtomicBool>,
    pending: VecDeque<StartTurn>,
    /// One line per request dropped by `summarize`, for the next turn.
    dropped: Vec<String>,
    steer: SteerInbox,
    last_arrival: Instant,
}

struct Running {
    future: BoxFuture<'static, TurnOutcome>,
    cancel: CancellationToken,
}

impl Actor {
    async fn run(mut self) {
        let mut running: Option<Running> = None;
        loop {
            match running.as_mut() {
                Some(turn) => {
                    tokio::select! {
                        outcome = &mut turn.future => {
                            self.ended(&outcome);
                            running = None;
                        }
                        input = self.rx.recv() => match input {
                            // A client sends its next message once it has the final event, which
                            // the core sends when the final message is durable, right after it
                            // resolved the turn's write: the turn may have ended without having
                            // been polled since. Such a request came after the turn, not during
                            // it, and must not wait for the queue's debounce.
                            Some(t) => match (&mut turn.future).now_or_never() {
                                Some(outcome) => {
                                    self.ended(&outcome);
                                    running = None;
                                    if self.pending.is_empty() {
                                        running = Some(self.start_arrived(t));
                                    } else {
                                        self.enqueue(t);
                                    }
                                }
                                None => self.arrived_while_running(t, turn),
                            },
                            None => return,
                        },
                    }
                }
                None if !self.pending.is_empty() && self.handoff.load(Ordering::SeqCst) => {
                    tracing::info!(session = %self.session, dropped = self.pending.len(), "session handed over: queued requests left to the next owner");
                    self.pending.clear();
                }
                None if !self.pending.is_empty() => {
                    // An interrupting message has already waited for the turn it stopped.
                    let start_at = match self.settings.mode {
                        QueueMode::Interrupt => Instant::now(),
                        _ => self.last_arrival + self.settings.debounce,
                    };
                    tokio::select! {
                        _ = tokio::time::sleep_until(start_at) => running = Some(self.start_next()),
                        input = self.rx.recv() => match input {
                            Some(t) => self.enqueue(t),
                            None => return,
                        },
                    }
                }
                None => {
                    tokio::select! {
                        input = self.rx.recv() => match input {
                            Some(t) => running = Some(self.start_arrived(t)),
                            None => return,
                        },
                        _ = tokio::time::sleep(self.idle) => {
                            if self.retire() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The running turn has ended: its steering leftovers become queued requests.
    fn ended(&mut self, outcome: &TurnOutcome) {
        tracing::debug!(session = %self.session, outcome = outcome_name(outcome), "turn ended");
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let leftover = std::mem::take(&mut *self.steer.lock().unwrap_or_else(|p| p.into_inner()));
        self.pending.extend(leftover);
    }

    /// Leaves the registry if no request is waiting. The registry lock is held while checking,
    /// so no request can slip in between the check and the removal.
    fn retire(&mut self) -> bool {
        let Some(owner) = self.owner.upgrade() else { return true };
        let mut actors = owner.lock();
        if !self.rx.is_empty() {
            return false;
        }
        if actors.get(&self.session).is_some_and(|h| h.generation == self.generation) {
            actors.remove(&self.session);
        }
        self.rx.close();
        tracing::debug!(session = %self.session, "session actor stopped after being idle");
        true
    }

    fn arrived_while_running(&mut self, turn: StartTurn, running: &mut Running) {
        self.last_arrival = Instant::now();
        match self.settings.mode {
            QueueMode::Steer => self.steer.lock().unwrap_or_else(|p| p.into_inner()).push(turn),
            QueueMode::Followup | QueueMode::Collect => self.enqueue(turn),
            QueueMode::Interrupt => {
                tracing::info!(session = %self.session, run_id = %turn.run_id, "interrupting the running turn");
                running.cancel.cancel();
                self.pending.push_front(turn);
            }
        }
    }

    fn enqueue(&mut self, turn: StartTurn) {
        self.last_arrival = Instant::now();
        if self.pending.len() < self.settings.cap {
            self.pending.push_back(turn);
            return;
        }
        let dropped = match self.settings.drop {
            QueueDrop::New => turn,
            QueueDrop::Old | QueueDrop::Summarize => {
                let oldest = self.pending.pop_front();
                self.pending.push_back(turn);
                match oldest {
                    Some(oldest) => oldest,
                    None => return,
                }
            }
        };
        if self.settings.drop == QueueDrop::Summarize {
            let text: String =
                dropped.messages.iter().map(|m| m.text_content()).collect::<Vec<_>>().join(" ");
            let mut line: String = text.chars().take(DROP_SUMMARY_CHARS_MAX).collect();
            if text.chars().count() > DROP_SUMMARY_CHARS_MAX {
                line.push_str("...");
            }
            self.dropped.push(line);
        }
        tracing::warn!(session = %self.session, run_id = %dropped.run_id, cap = self.settings.cap, "queue full: request dropped");
        self.runner.ports().events.emit(
            &dropped.run_ref(),
            TurnEvent::Error {
                message: format!(
                    "the session's queue is full ({} requests); this message was dropped",
                    self.settings.cap
                ),
                kind: "queue_dropped".into(),
            },
        );
    }

    fn start_next(&mut self) -> Running {
        let note = (!self.dropped.is_empty()).then(|| {
            let lines: Vec<String> = self.dropped.drain(..).map(|l| format!("- {l}")).collect();
            format!(
                "[{} queued message(s) were dropped because the queue was full. They said:\n{}]",
                lines.len(),
                lines.join("\n")
            )
        });
        let job = match self.settings.mode {
            QueueMode::Collect if self.pending.len() > 1 => {
                let mut all = self.pending.drain(..);
                let Some(mut first) = all.next() else {
                    unreachable!("pending has more than one request")
                };
                let mut absorbed = Vec::new();
                for other in all {
                    absorbed.push(other.run_ref());
                    first.epoch = first.epoch.max(other.epoch);
                    first.messages.extend(other.messages);
                }
                TurnJob { turn: first, absorbed, note, handoff: Arc::default() }
            }
            _ => match self.pending.pop_front() {
                Some(turn) => TurnJob { turn, absorbed: Vec::new(), note, handoff: Arc::default() },
                None => unreachable!("start_next is only called with requests pending"),
            },
        };
        self.start(job)
    }

    /// Starts a request that found the actor idle, at once.
    fn start_arrived(&mut self, turn: StartTurn) -> Running {
        self.last_arrival = Instant::now();
        self.start(TurnJob { turn, absorbed: Vec::new(), note: None, handoff: Arc::default() })
    }

    fn start(&mut self, mut job: TurnJob) -> Running {
        job.handoff = self.handoff.clone();
        let cancel = CancellationToken::new();
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(cancel.clone());
        let runner = self.runner.clone();
        let steer = self.steer.clone();
        let token = cancel.clone();
        Running { future: Box::pin(async move { runner.run_job(job, steer, token).await }), cancel }
    }
}

fn outcome_name(outcome: &TurnOutcome) -> &'static str {
    match outcome {
        TurnOutcome::Final { .. } => "final",
        TurnOutcome::Aborted { .. } => "aborted",
        TurnOutcome::Error { .. } => "error",
    }
}
