//! Turns: starting them for acknowledged user messages, taking their output, relaying events.
//!
//! The owner starts one turn per acknowledged user message (`Effect::StartTurn`), never twice
//! under one epoch, and only once its claim is durable and no handoff or drain is under way.
//! The runtime streams events (relayed to every node with subscribers) and reports output: the
//! messages to write, fenced by epoch, and at the end the final message, whose `Final` event is
//! sent only once it is durable.

use beamclaw_crdt::{Role, SessionKey, StopReason, Usage};

use super::api::{AbortReason, Effect, Event, RequestError, Response, TurnInput};
use super::node::{AfterDurable, Node};
use super::storage::Disk;
use super::turn::{RunRef, TurnEvent};
use super::wire::Msg;

impl<D: Disk> Node<D> {
    /// Whether turns of `session` may start here now.
    fn may_start_turns(&self, session: &SessionKey) -> bool {
        if self.drain.is_some() || self.left {
            return false;
        }
        self.sessions.get(session).and_then(|s| s.role.as_ref()).is_some_and(|r| {
            r.durable && !r.deferred && r.handoff.is_none() && r.resume_after.is_none()
        })
    }

    /// Starts the turn for user message `message_id` unless one was started under this epoch.
    pub(crate) fn start_turn(&mut self, session: &SessionKey, message_id: &str) {
        if !self.may_start_turns(session) {
            return;
        }
        let Some(epoch) = self.sessions.get(session).and_then(|s| s.epoch) else { return };
        if self
            .sessions
            .get(session)
            .and_then(|s| s.role.as_ref())
            .is_some_and(|r| r.started.contains(message_id))
        {
            return;
        }
        let found = self.with_doc(session, |doc| {
            let message = doc.get(message_id).ok().flatten()?;
            Some((message, doc.agent_id().ok()?))
        });
        let Some(Some((message, agent_id))) = found else { return };
        if message.role != Role::User {
            return;
        }
        let run_id = message.run_id.clone().unwrap_or_else(|| message.id.clone());
        if let Some(role) = self.sessions.get_mut(session).and_then(|s| s.role.as_mut()) {
            role.started.insert(message_id.to_string());
            role.running.insert(run_id.clone(), message_id.to_string());
        }
        self.docs.pin(session);
        self.counters.turns_started += 1;
        let run = RunRef { session: session.clone(), run_id, epoch: epoch.term };
        tracing::debug!(%session, run = %run.run_id, term = epoch.term, "turn started");
        self.out.push(Effect::StartTurn { run, agent_id, input: Box::new(message) });
    }

    /// Starts turns for every acknowledged user message that has no reply yet.
    pub(crate) fn start_unanswered(&mut self, session: &SessionKey) {
        if !self.may_start_turns(session) {
            return;
        }
        if self.hydrate(session).ok() != Some(true) {
            return;
        }
        let ids: Vec<String> = self
            .with_doc(session, |doc| doc.unanswered_user_messages().unwrap_or_default())
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.id)
            .collect();
        for id in ids {
            self.start_turn(session, &id);
        }
    }

    /// After a restart, once joined: let the sessions we still own resume their turns after the
    /// grace period (by then a newer owner, if the cluster moved on, has told us).
    pub(crate) fn arm_resume(&mut self) {
        let at = self.now + self.cfg.timing.resume_grace_ms;
        let mut any = false;
        for state in self.sessions.values_mut() {
            if let Some(role) = state.role.as_mut()
                && role.resume_after == Some(u64::MAX)
            {
                role.resume_after = Some(at);
                any = true;
            }
        }
        if any {
            self.set_timer(at, super::timers::Timer::Resume);
        }
    }

    pub(crate) fn resume_owned(&mut self) {
        let now = self.now;
        let ready: Vec<SessionKey> = self
            .sessions
            .iter_mut()
            .filter_map(|(k, s)| {
                let role = s.role.as_mut()?;
                if role.resume_after.is_some_and(|t| t <= now) {
                    role.resume_after = None;
                    Some(k.clone())
                } else {
                    None
                }
            })
            .collect();
        for s in ready {
            self.start_unanswered(&s);
        }
    }

    pub(crate) fn on_turn_input(&mut self, input: TurnInput) {
        match input {
            TurnInput::Event { run, event } => {
                if !self.check_epoch(&run.session, run.epoch) {
                    self.counters.turn_outputs_stale += 1;
                    return;
                }
                if matches!(event, TurnEvent::Final { .. }) {
                    // The final event is the core's to send, once the final message is durable.
                    return;
                }
                if event.is_terminal() {
                    // Aborted or failed without a final message: the run is over.
                    self.end_runs(&run.session, std::slice::from_ref(&run.run_id), &[]);
                }
                self.fan_out_turn_event(run, event);
            }
            TurnInput::Output { run, messages, usage, done, reply } => {
                self.turn_output(run, messages, usage, done, reply)
            }
            TurnInput::Idle { session } => {
                let runs: Vec<String> = self
                    .sessions
                    .get(&session)
                    .and_then(|s| s.role.as_ref())
                    .map(|r| r.running.keys().cloned().collect())
                    .unwrap_or_default();
                self.end_runs(&session, &runs, &[]);
            }
        }
    }

    /// Ends `runs`, and every run whose user message is in `answered`; lets a handoff waiting
    /// for the session to go quiet proceed.
    fn end_runs(&mut self, session: &SessionKey, runs: &[String], answered: &[String]) {
        let ended = match self.sessions.get_mut(session).and_then(|s| s.role.as_mut()) {
            Some(role) => {
                let before = role.running.len();
                role.running.retain(|run, input| !runs.contains(run) && !answered.contains(input));
                before - role.running.len()
            }
            None => 0,
        };
        for _ in 0..ended {
            self.docs.unpin(session);
        }
        let idle = self
            .sessions
            .get(session)
            .and_then(|s| s.role.as_ref())
            .is_some_and(|r| r.running.is_empty());
        if ended > 0 && idle {
            self.handoff_quiesced(session);
        }
    }

    fn turn_output(
        &mut self,
        run: RunRef,
        messages: Vec<beamclaw_crdt::Message>,
        usage: Usage,
        done: bool,
        reply: Option<super::api::ReqId>,
    ) {
        let session = run.session.clone();
        if !self.check_epoch(&session, run.epoch) {
            // A turn of an epoch we no longer own: refuse its output (the new owner re-runs it).
            self.counters.turn_outputs_stale += 1;
            tracing::info!(%session, run = %run.run_id, term = run.epoch, "stale turn output refused");
            let current = self.epoch_of(&session).map(|e| format!("{e:?}")).unwrap_or_default();
            if let Some(req) = reply {
                let result = Err(RequestError::StaleEpoch(format!(
                    "term {} is stale; the owner is now {current}",
                    run.epoch
                )));
                self.deliver(Event::Response { req, result });
            }
            self.out.push(Effect::AbortTurns {
                session,
                run_id: Some(run.run_id),
                reason: AbortReason::StaleEpoch,
            });
            return;
        }
        match self.hydrate(&session) {
            Ok(true) => {}
            other => {
                if let Some(req) = reply {
                    let reason = match other {
                        Err(e) => e.to_string(),
                        _ => "the session is not stored on its owner".into(),
                    };
                    self.deliver(Event::Response {
                        req,
                        result: Err(RequestError::Storage(reason)),
                    });
                }
                return;
            }
        }
        let author = self.author.clone();
        let mut final_message = None;
        let mut refused = None;
        // The usage goes in the same change as the last message (a turn's final message and
        // its usage are one write); on its own only when there is no message to carry it.
        let mut usage_left = (usage != Usage::default()).then_some(usage);
        let count = messages.len();
        for (n, mut m) in messages.into_iter().enumerate() {
            m.author = author.clone();
            if m.role == Role::Assistant && !m.partial && !m.reply_to.is_empty() {
                final_message = Some(m.clone());
            }
            let id = m.id.clone();
            let with = if n + 1 == count { usage_left.take() } else { None };
            let written = self.with_doc(&session, |doc| match &with {
                // A usage the counters refuse (an overflow) must not cost the message: write
                // the message alone, and report the usage below.
                Some(u) => doc.upsert_with_usage(&m, u).or_else(|_| {
                    usage_left = with;
                    doc.upsert(&m)
                }),
                None => doc.upsert(&m),
            });
            if let Some(Err(e)) = written {
                tracing::warn!(%session, message = %id, error = %e, "turn output message refused");
                refused = Some(format!("message {id}: {e}"));
            }
        }
        if let Some(usage) = usage_left
            && let Some(Err(e)) = self.with_doc(&session, |doc| doc.add_usage(&usage))
        {
            tracing::warn!(%session, error = %e, "usage not recorded");
        }
        self.commit_doc(&session, true);
        if let Some(req) = reply {
            let result = match refused {
                Some(reason) => Err(RequestError::Invalid(reason)),
                None => Ok(Response::Written),
            };
            self.when_durable(&session, AfterDurable::Reply { req, result });
        }
        if let Some(message) = final_message {
            let answered = message.reply_to.clone();
            self.end_runs(&session, std::slice::from_ref(&run.run_id), &answered);
            let stop_reason = message.stop_reason.unwrap_or(StopReason::Stop);
            let usage = message.usage.unwrap_or(usage);
            let event = TurnEvent::Final { message: Box::new(message), stop_reason, usage };
            self.when_durable(&session, AfterDurable::FinalEvent { run, event });
        } else if done {
            self.end_runs(&session, std::slice::from_ref(&run.run_id), &[]);
        }
    }

    /// Sends a turn event to local subscribers and to every node subscribed to the session.
    pub(crate) fn fan_out_turn_event(&mut self, run: RunRef, event: TurnEvent) {
        if self.local_subs.contains_key(&run.session) {
            self.deliver(Event::Turn { run: run.clone(), event: event.clone() });
        }
        let now = self.now;
        let targets: Vec<_> = self
            .remote_subs
            .get(&run.session)
            .map(|subs| subs.iter().filter(|(_, exp)| **exp > now).map(|(n, _)| *n).collect())
            .unwrap_or_default();
        for node in targets {
            if node != self.cfg.node {
                self.send(node, Msg::Turn { run: run.clone(), event: event.clone() });
            }
        }
    }

    pub(crate) fn remote_turn_event(&mut self, run: RunRef, event: TurnEvent) {
        if self.local_subs.contains_key(&run.session) {
            self.deliver(Event::Turn { run, event });
        }
    }
}
