//! The simulated agent runtime and provider of one node.
//!
//! On `Effect::StartTurn` a turn is planned: a few provider calls of sampled duration, each
//! preceded by the epoch fence (`Node::check_epoch`, the `EpochGuard` of the real runtime) and,
//! only when the fence passes, recorded as a side effect. Between calls the turn streams deltas
//! and writes a partial checkpoint; at the end it writes the final assistant message
//! (`"r:" + input id`, replying to the input). `DrainTurns` makes the turn finish early;
//! `AbortTurns` cancels it. The world ([`crate::world`]) schedules the steps and feeds what a
//! step produces back to the core as `Input::Turn`.

use std::collections::BTreeMap;

use beamclaw_crdt::{Message, Role, SessionKey, StopReason, Usage};
use beamclaw_mesh::core::{RunRef, TurnEvent, TurnInput};

use crate::clock::{Micros, US_PER_MS};
use crate::rng::{SimRng, between};

/// Provider calls per turn (tool use makes a turn call the model more than once).
pub const TURN_CALLS_MIN: u64 = 1;
pub const TURN_CALLS_MAX: u64 = 3;
/// Duration of one provider call, in milliseconds.
pub const CALL_MS_MIN: u64 = 100;
pub const CALL_MS_MAX: u64 = 1_500;
/// Time from `StartTurn` to the first provider call, in milliseconds (prompt assembly).
pub const START_MS_MAX: u64 = 50;
/// Time a draining turn needs to wrap up (stop the stream, write what it has), in
/// milliseconds; with less time left before the drain deadline it is aborted instead.
pub const DRAIN_FINISH_MS_MIN: u64 = 5;
pub const DRAIN_FINISH_MS_MAX: u64 = 50;
/// Delay between the runtime producing an input and the core receiving it, in microseconds.
pub const RUNTIME_NOTICE_US_MAX: Micros = 500;
/// Wall-clock milliseconds of the simulation's time zero (message timestamps).
pub const WALL_CLOCK_BASE_MS: i64 = 1_767_225_600_000;

/// One turn in progress.
#[derive(Clone, Debug)]
pub struct Turn {
    pub run: RunRef,
    pub input_id: String,
    /// Global id of this execution of a turn (the checker counts executions per input).
    pub exec: u64,
    pub calls_left: u64,
    pub calls_done: u64,
    /// Sequence number of the step event this turn waits for (older ones are stale).
    pub step: u64,
    /// The drain deadline, on the node's clock, once `DrainTurns` arrived.
    pub drain_deadline: Option<u64>,
    /// Cut short by a drain: the next step writes what the turn has.
    pub wrapping_up: bool,
}

/// The turns running on one node process.
#[derive(Default)]
pub struct Runtime {
    turns: BTreeMap<u64, Turn>,
    next: u64,
}

/// What a step of a turn does next.
pub enum Step {
    /// Pass the fence, then call the provider; the call returns after `after_us`.
    Call { after_us: Micros },
    /// Write the output and finish.
    Finish,
    /// Too late to finish: give up (the successor runs the turn again).
    Abort,
}

impl Runtime {
    /// Plans a turn; returns its key and when its first step runs.
    pub fn start(
        &mut self,
        rng: &mut SimRng,
        run: RunRef,
        input_id: String,
        exec: u64,
    ) -> (u64, Micros) {
        let key = self.next;
        self.next += 1;
        let calls = between(rng, TURN_CALLS_MIN, TURN_CALLS_MAX);
        self.turns.insert(
            key,
            Turn {
                run,
                input_id,
                exec,
                calls_left: calls,
                calls_done: 0,
                step: 0,
                drain_deadline: None,
                wrapping_up: false,
            },
        );
        (key, between(rng, 0, START_MS_MAX * US_PER_MS))
    }

    pub fn get(&self, key: u64) -> Option<&Turn> {
        self.turns.get(&key)
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut Turn> {
        self.turns.get_mut(&key)
    }

    pub fn remove(&mut self, key: u64) -> Option<Turn> {
        self.turns.remove(&key)
    }

    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// Whether any turn of `session` is running.
    pub fn runs_session(&self, session: &SessionKey) -> bool {
        self.turns.values().any(|t| t.run.session == *session)
    }

    /// Turns of `session` (matching `run_id` when given).
    pub fn keys_of(&self, session: &SessionKey, run_id: Option<&str>) -> Vec<u64> {
        self.turns
            .iter()
            .filter(|(_, t)| t.run.session == *session && run_id.is_none_or(|r| r == t.run.run_id))
            .map(|(k, _)| *k)
            .collect()
    }

    /// What the turn's next step is, at node time `node_ms`. A draining turn makes another
    /// provider call only if the slowest call would still end before the drain deadline;
    /// otherwise it wraps up with what it has.
    pub fn next_step(&self, rng: &mut SimRng, key: u64, node_ms: u64) -> Option<Step> {
        let t = self.turns.get(&key)?;
        if let Some(deadline) = t.drain_deadline
            && (t.wrapping_up || node_ms + CALL_MS_MAX > deadline)
        {
            return Some(if node_ms <= deadline { Step::Finish } else { Step::Abort });
        }
        if t.calls_left == 0 {
            return Some(Step::Finish);
        }
        Some(Step::Call { after_us: between(rng, CALL_MS_MIN, CALL_MS_MAX) * US_PER_MS })
    }

    /// `DrainTurns` for `session` with `deadline` (node clock; now is `node_ms`). A turn whose
    /// remaining calls fit before the deadline runs on; one that cannot finish in time wraps
    /// up now (after [`DRAIN_FINISH_MS_MIN`]..[`DRAIN_FINISH_MS_MAX`]). Returns the turns to
    /// wrap up: key, step number and delay.
    pub fn drain(
        &mut self,
        rng: &mut SimRng,
        session: &SessionKey,
        deadline: u64,
        node_ms: u64,
    ) -> Vec<(u64, u64, Micros)> {
        let left_ms = deadline.saturating_sub(node_ms);
        let mut out = Vec::new();
        for (key, t) in self.turns.iter_mut().filter(|(_, t)| t.run.session == *session) {
            if t.drain_deadline.is_some_and(|d| d <= deadline) {
                continue;
            }
            t.drain_deadline = Some(deadline);
            let needs_ms = t.calls_left * CALL_MS_MAX + DRAIN_FINISH_MS_MAX;
            if needs_ms <= left_ms {
                continue; // finishes normally, checking the deadline before each call
            }
            t.wrapping_up = true;
            t.step += 1;
            let finish_ms = between(rng, DRAIN_FINISH_MS_MIN, DRAIN_FINISH_MS_MAX).min(left_ms);
            out.push((*key, t.step, finish_ms * US_PER_MS));
        }
        out
    }
}

/// The id of the assistant reply to user message `input_id`.
pub fn reply_id(input_id: &str) -> String {
    format!("r:{input_id}")
}

/// The streamed text of call `n` of a turn.
pub fn delta(turn: &Turn, n: u64) -> TurnInput {
    TurnInput::Event {
        run: turn.run.clone(),
        event: TurnEvent::AssistantDelta { text: format!("part {n} of {}. ", turn.input_id) },
    }
}

fn reply(turn: &Turn, at_ms: i64, partial: bool, stop: StopReason) -> Message {
    let text = format!("reply to {} ({} call(s))", turn.input_id, turn.calls_done);
    let mut m = Message::text(reply_id(&turn.input_id), Role::Assistant, text, at_ms);
    m.run_id = Some(turn.run.run_id.clone());
    m.reply_to = vec![turn.input_id.clone()];
    m.partial = partial;
    if !partial {
        m.stop_reason = Some(stop);
        m.usage = Some(usage(turn));
        m.model = Some("sim-model".into());
        m.provider = Some("sim".into());
    }
    m
}

fn usage(turn: &Turn) -> Usage {
    Usage {
        input: 100 * turn.calls_done,
        output: 20 * turn.calls_done,
        cache_read: 0,
        cache_write: 0,
    }
}

/// A partial checkpoint of the reply so far.
pub fn checkpoint(turn: &Turn, at_ms: i64) -> TurnInput {
    TurnInput::Output {
        run: turn.run.clone(),
        messages: vec![reply(turn, at_ms, true, StopReason::Stop)],
        usage: Usage::default(),
        done: false,
        reply: None,
    }
}

/// The final reply; `early` when a drain cut the turn short.
pub fn final_output(turn: &Turn, at_ms: i64, early: bool) -> TurnInput {
    let stop = if early { StopReason::Length } else { StopReason::Stop };
    TurnInput::Output {
        run: turn.run.clone(),
        messages: vec![reply(turn, at_ms, false, stop)],
        usage: usage(turn),
        done: true,
        reply: None,
    }
}
