//! One agent turn: history + the new user messages -> provider (streaming) -> tool calls -> tool
//! results -> ... -> the final assistant message.
//!
//! Owns the tool-call loop (at most [`TOOL_ITERATIONS_MAX`] model calls per turn), abort and the
//! per-turn timeout, epoch fencing before every provider call and tool run, steering (messages
//! injected at a tool boundary), checkpoints of long partial output, and the messages a turn
//! persists:
//! - per tool round, the assistant message with its tool calls (`t:<run>:<round>`) and one
//!   toolResult message per call (`t:<run>:<round>:<n>`);
//! - the final assistant message `r:<run>` with usage, `run_id` and `reply_to`. Checkpoints use
//!   the same id with `partial: true`, so the final message replaces them and a failed or aborted
//!   turn leaves one message with what was streamed, never a duplicate.

use super::ports::{PortError, RuntimePorts, StaleEpoch};
use super::prompt::PromptBuilder;
use crate::config::{ModelRef, ResolvedAgent};
use crate::provider::{
    MAX_TOKENS_DEFAULT, ModelRouter, ProviderError, ProviderEvent, ProviderRequest, RequestContext,
};
use crate::tools::{ToolContext, ToolOutput, ToolRegistry};
use beamclaw_crdt::{
    ContentPart, MESSAGE_BODY_BYTES_MAX, Message, Role, SessionKey, StopReason, Usage,
};
use beamclaw_mesh::core::turn::{RunRef, TurnEvent};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Model calls per turn; a model still asking for tools after this many is stopped.
pub const TOOL_ITERATIONS_MAX: usize = 24;
/// Messages of history sent to the model.
pub const HISTORY_MESSAGES_MAX: usize = 400;
/// A checkpoint of partial output is written when this much time passed since the last one...
pub const CHECKPOINT_INTERVAL_MS: u64 = 2_000;
/// ...or when this many new bytes of text arrived since the last one.
pub const CHECKPOINT_BYTES: usize = 4_096;
/// Longest a single tool run may take (tools have their own, usually shorter, limits).
pub const TOOL_RUN_TIMEOUT_MS: u64 = 30 * 60 * 1000;
/// Largest tool result kept, in bytes; longer output is cut with a note.
pub const TOOL_RESULT_BYTES_MAX: usize = 256 * 1024;
/// Largest tool-call arguments accepted from a model, in bytes.
pub const TOOL_ARGS_BYTES_MAX: usize = 1024 * 1024;

/// Start a turn for these user messages under (session, epoch): what the mesh core emits.
#[derive(Clone, Debug, PartialEq)]
pub struct StartTurn {
    pub session: SessionKey,
    pub epoch: u64,
    pub run_id: String,
    /// The user messages this turn answers (already durable in the session).
    pub messages: Vec<Message>,
}

impl StartTurn {
    pub fn run_ref(&self) -> RunRef {
        RunRef { session: self.session.clone(), run_id: self.run_id.clone(), epoch: self.epoch }
    }
}

/// How a turn ended.
#[derive(Clone, Debug, PartialEq)]
pub enum TurnOutcome {
    Final { message: Box<Message>, stop_reason: StopReason, usage: Usage },
    Aborted { partial_text: String },
    Error { kind: String, message: String },
}

/// Messages that arrived while a turn runs, to be injected at its next tool boundary (queue
/// mode `steer`). Whatever is left when the turn ends runs as a follow-up.
pub type SteerInbox = Arc<Mutex<Vec<StartTurn>>>;

/// A turn as the session actor hands it over: the turn, runs merged into it (queue mode
/// `collect`, steering) that get the same ending, and a note about dropped queued messages.
#[derive(Clone, Debug)]
pub(crate) struct TurnJob {
    pub(crate) turn: StartTurn,
    pub(crate) absorbed: Vec<RunRef>,
    pub(crate) note: Option<String>,
    /// Set before the cancel when the session is being handed to another node: the turn then
    /// keeps what it streamed as a checkpoint instead of ending it as an aborted answer, so the
    /// next owner's run replaces it.
    pub(crate) handoff: Arc<std::sync::atomic::AtomicBool>,
}

/// Why a running turn is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    /// A client aborted it: what was streamed is kept as the (aborted) answer.
    Client,
    /// The session moves to another node (handoff, drain, stale epoch): what was streamed is kept
    /// as a checkpoint and the next owner runs the turn again.
    Handoff,
}

/// Runs turns. One per node, shared by every session actor.
pub struct TurnRunner {
    router: Arc<ModelRouter>,
    tools: Arc<ToolRegistry>,
    agents: BTreeMap<String, ResolvedAgent>,
    default_agent: String,
    ports: RuntimePorts,
    node: String,
    prompts: PromptBuilder,
}

enum Ending {
    Final(StopReason),
    Aborted,
    Handoff,
    Timeout,
    Stale(StaleEpoch),
    Provider(ProviderError),
    Output(PortError),
    TooManyIterations,
}

#[derive(Default)]
struct PendingCall {
    id: String,
    name: String,
    args: String,
}

/// What a turn has produced so far; kept outside the turn's future so that an abort or a
/// timeout still knows the partial output.
struct TurnState {
    final_id: String,
    context: Vec<Arc<Message>>,
    reply_to: Vec<String>,
    absorbed: Vec<RunRef>,
    model: Option<ModelRef>,
    text: String,
    thinking: String,
    signature: String,
    calls: BTreeMap<u32, PendingCall>,
    response_usage: Usage,
    usage: Usage,
    stop: Option<StopReason>,
    checkpoint_bytes: usize,
    checkpoint_at: Instant,
}

impl TurnRunner {
    pub fn new(
        router: Arc<ModelRouter>,
        tools: Arc<ToolRegistry>,
        agents: Vec<ResolvedAgent>,
        default_agent: String,
        ports: RuntimePorts,
        node: String,
    ) -> Self {
        TurnRunner {
            router,
            tools,
            agents: agents.into_iter().map(|a| (a.id.clone(), a)).collect(),
            default_agent,
            ports,
            node,
            prompts: PromptBuilder::new(),
        }
    }

    /// Lists the ready skills of each agent's workspace in the system prompt.
    pub fn with_skills(mut self, settings: crate::skills::SkillSettings) -> Self {
        self.prompts = PromptBuilder::new().with_skills(settings);
        self
    }

    pub fn ports(&self) -> &RuntimePorts {
        &self.ports
    }

    pub fn router(&self) -> &Arc<ModelRouter> {
        &self.router
    }

    /// The agent of a session key (`agent:<id>:...`), else the default agent.
    pub fn agent_for(&self, session: &SessionKey) -> Option<&ResolvedAgent> {
        let id = session
            .as_str()
            .strip_prefix("agent:")
            .and_then(|rest| rest.split(':').next())
            .unwrap_or(&self.default_agent);
        self.agents.get(id)
    }

    /// Runs one turn to its end (no steering).
    pub async fn run(&self, turn: StartTurn, cancel: CancellationToken) -> TurnOutcome {
        let job = TurnJob { turn, absorbed: Vec::new(), note: None, handoff: Arc::default() };
        self.run_job(job, SteerInbox::default(), cancel).await
    }

    pub(crate) async fn run_job(
        &self,
        job: TurnJob,
        steer: SteerInbox,
        cancel: CancellationToken,
    ) -> TurnOutcome {
        let span = tracing::info_span!("turn", session = %job.turn.session, run_id = %job.turn.run_id, epoch = job.turn.epoch);
        self.run_inner(job, steer, cancel).instrument(span).await
    }

    async fn run_inner(
        &self,
        job: TurnJob,
        steer: SteerInbox,
        cancel: CancellationToken,
    ) -> TurnOutcome {
        let TurnJob { turn, absorbed, note, handoff } = job;
        let run = turn.run_ref();
        self.emit_all(&run, &absorbed, TurnEvent::Started { at_ms: now_ms() });
        let Some(agent) = self.agent_for(&turn.session).cloned() else {
            let message = format!("no agent for session {}", turn.session);
            return self.fail(&run, &absorbed, "unknown_agent", message);
        };
        let history = match self.ports.history.history(&turn.session, HISTORY_MESSAGES_MAX).await {
            Ok(h) => h,
            Err(e) => return self.fail(&run, &absorbed, "history", e.to_string()),
        };
        let final_id = format!("r:{}", turn.run_id);
        let mut context = conversation(history, &turn.messages, &final_id);
        if let Some(note) = note {
            let note = Message::text(format!("n:{}", turn.run_id), Role::System, note, now_ms());
            context.push(Arc::new(note));
        }
        context.extend(turn.messages.iter().cloned().map(Arc::new));
        let mut state = TurnState {
            final_id,
            context,
            reply_to: turn.messages.iter().map(|m| m.id.clone()).collect(),
            absorbed,
            model: None,
            text: String::new(),
            thinking: String::new(),
            signature: String::new(),
            calls: BTreeMap::new(),
            response_usage: Usage::default(),
            usage: Usage::default(),
            stop: None,
            checkpoint_bytes: 0,
            checkpoint_at: Instant::now(),
        };
        tracing::debug!(agent = %agent.id, model = %agent.model.primary, "turn started");
        let tool_cancel = cancel.child_token();
        let ending = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                if handoff.load(std::sync::atomic::Ordering::SeqCst) { Ending::Handoff } else { Ending::Aborted }
            }
            _ = tokio::time::sleep(agent.timeout) => Ending::Timeout,
            ending = self.body(&turn, &agent, &mut state, &steer, &tool_cancel) => ending,
        };
        tool_cancel.cancel();
        self.finish(&turn, &agent, state, ending).await
    }

    async fn body(
        &self,
        turn: &StartTurn,
        agent: &ResolvedAgent,
        state: &mut TurnState,
        steer: &SteerInbox,
        cancel: &CancellationToken,
    ) -> Ending {
        let tools = self.tools.definitions_for(&agent.id);
        let system = self.prompts.build(agent, &tools);
        let context = RequestContext {
            session: turn.session.to_string(),
            agent_id: agent.id.clone(),
            node: self.node.clone(),
            run_id: turn.run_id.clone(),
        };
        let run = turn.run_ref();
        for round in 0..TOOL_ITERATIONS_MAX {
            if round > 0 {
                self.absorb_steering(steer, state);
            }
            if let Err(stale) = self.ports.epochs.check(&turn.session, turn.epoch) {
                return Ending::Stale(stale);
            }
            // The request borrows the context: the provider serializes it straight into the
            // request body, and the borrow ends once the stream has opened.
            let request = ProviderRequest {
                model: "",
                system: &system,
                messages: &state.context,
                tools: &tools,
                max_tokens: MAX_TOKENS_DEFAULT,
                thinking: agent.thinking,
                context: &context,
            };
            let mut stream = match self.router.open(&agent.model, request, cancel).await {
                Ok(stream) => stream,
                Err(e) => return Ending::Provider(e),
            };
            state.model = Some(stream.model().clone());
            state.text.clear();
            state.thinking.clear();
            state.signature.clear();
            state.calls.clear();
            state.response_usage = Usage::default();
            state.stop = None;
            state.checkpoint_bytes = 0;
            state.checkpoint_at = Instant::now();
            while let Some(item) = stream.next().await {
                let event = match item {
                    Ok(event) => event,
                    Err(e) => return Ending::Provider(e),
                };
                if let Err(ending) = self.on_event(turn, &run, state, event).await {
                    return ending;
                }
            }
            add_usage(&mut state.usage, state.response_usage);
            if state.calls.is_empty() {
                return Ending::Final(state.stop.unwrap_or(StopReason::Stop));
            }
            if let Err(ending) = self.tool_round(turn, agent, state, round, cancel).await {
                return ending;
            }
        }
        Ending::TooManyIterations
    }

    async fn on_event(
        &self,
        turn: &StartTurn,
        run: &RunRef,
        state: &mut TurnState,
        event: ProviderEvent,
    ) -> Result<(), Ending> {
        match event {
            ProviderEvent::TextDelta(text) => {
                state.text.push_str(&text);
                self.emit_all(run, &state.absorbed, TurnEvent::AssistantDelta { text });
                let grown = state.text.len() - state.checkpoint_bytes;
                let due = grown >= CHECKPOINT_BYTES
                    || (grown > 0
                        && state.checkpoint_at.elapsed()
                            >= Duration::from_millis(CHECKPOINT_INTERVAL_MS));
                if due {
                    let mut partial = self.assistant_message(turn, state, StopReason::Stop);
                    partial.partial = true;
                    partial.stop_reason = None;
                    state.checkpoint_bytes = state.text.len();
                    state.checkpoint_at = Instant::now();
                    tracing::debug!(bytes = state.text.len(), "checkpoint of partial output");
                    self.ports
                        .output
                        .checkpoint(&turn.session, turn.epoch, partial)
                        .await
                        .map_err(output_ending)?;
                }
            }
            ProviderEvent::ThinkingDelta(text) => {
                state.thinking.push_str(&text);
                self.emit_all(run, &state.absorbed, TurnEvent::ThinkingDelta { text });
            }
            ProviderEvent::ThinkingSignature(s) => state.signature.push_str(&s),
            ProviderEvent::ToolCallStart { index, id, name } => {
                state.calls.insert(index, PendingCall { id, name, args: String::new() });
            }
            ProviderEvent::ToolCallArgsDelta { index, json } => {
                let call = state.calls.entry(index).or_default();
                if call.args.len() + json.len() > TOOL_ARGS_BYTES_MAX {
                    let message = format!("tool call arguments exceed {TOOL_ARGS_BYTES_MAX} bytes");
                    let provider =
                        state.model.as_ref().map(|m| m.provider.clone()).unwrap_or_default();
                    return Err(Ending::Provider(ProviderError::new(
                        &provider,
                        crate::provider::ErrorKind::Malformed,
                        message,
                    )));
                }
                call.args.push_str(&json);
            }
            ProviderEvent::ToolCallEnd { .. } => {}
            ProviderEvent::Usage(usage) => state.response_usage = usage,
            ProviderEvent::Stop(reason) => state.stop = Some(reason),
        }
        Ok(())
    }

    /// Persists the assistant's tool calls, runs each tool, persists and appends the results.
    async fn tool_round(
        &self,
        turn: &StartTurn,
        agent: &ResolvedAgent,
        state: &mut TurnState,
        round: usize,
        cancel: &CancellationToken,
    ) -> Result<(), Ending> {
        let run = turn.run_ref();
        let calls: Vec<(String, String, Result<serde_json::Value, String>)> =
            std::mem::take(&mut state.calls)
                .into_values()
                .map(|c| {
                    let args = if c.args.trim().is_empty() {
                        Ok(serde_json::json!({}))
                    } else {
                        serde_json::from_str::<serde_json::Value>(&c.args).map_err(|e| {
                            format!(
                                "the arguments are not valid JSON ({e}): {}",
                                c.args.chars().take(200).collect::<String>()
                            )
                        })
                    };
                    (c.id, c.name, args)
                })
                .collect();
        let mut call_message = self.assistant_message(turn, state, StopReason::ToolUse);
        call_message.id = format!("t:{}:{round}", turn.run_id);
        for (id, name, args) in &calls {
            call_message.content.push(ContentPart::ToolCall {
                id: id.clone(),
                name: name.clone(),
                arguments: args.clone().unwrap_or(serde_json::Value::Null),
            });
        }
        call_message.usage = Some(state.response_usage);
        self.ports
            .output
            .append(&turn.session, turn.epoch, vec![call_message.clone()])
            .await
            .map_err(output_ending)?;
        state.context.push(Arc::new(call_message));
        state.text.clear();
        state.thinking.clear();
        let ctx = ToolContext {
            session: turn.session.clone(),
            epoch: turn.epoch,
            run_id: turn.run_id.clone(),
            agent_id: agent.id.clone(),
            workspace: agent.workspace.clone(),
            cancel: cancel.clone(),
        };
        for (n, (id, name, args)) in calls.into_iter().enumerate() {
            if let Err(stale) = self.ports.epochs.check(&turn.session, turn.epoch) {
                return Err(Ending::Stale(stale));
            }
            let args_text = args.as_ref().map(|a| a.to_string()).unwrap_or_else(|e| e.clone());
            self.emit_all(
                &run,
                &state.absorbed,
                TurnEvent::ToolStart {
                    tool_call_id: id.clone(),
                    name: name.clone(),
                    args: args_text,
                },
            );
            let output = match (args, self.tools.get_for(&agent.id, &name)) {
                (Err(problem), _) => ToolOutput::error(problem),
                (Ok(_), None) => ToolOutput::error(format!(
                    "there is no tool named {name:?}; available tools: {}",
                    self.tools.names_for(&agent.id).join(", ")
                )),
                (Ok(args), Some(tool)) => {
                    let span = tracing::info_span!("tool", tool = %name, tool_call_id = %id);
                    let timeout = Duration::from_millis(TOOL_RUN_TIMEOUT_MS);
                    match tokio::time::timeout(timeout, tool.run(args, &ctx)).instrument(span).await
                    {
                        Ok(output) => output,
                        Err(_) => ToolOutput::error(format!(
                            "the tool did not finish within {TOOL_RUN_TIMEOUT_MS} ms"
                        )),
                    }
                }
            };
            let content = cap_text(output.content, TOOL_RESULT_BYTES_MAX);
            tracing::debug!(tool = %name, is_error = output.is_error, bytes = content.len(), "tool finished");
            self.emit_all(
                &run,
                &state.absorbed,
                TurnEvent::ToolResult {
                    tool_call_id: id.clone(),
                    name: name.clone(),
                    result: content.clone(),
                    is_error: output.is_error,
                },
            );
            let mut result = Message::text(
                format!("t:{}:{round}:{n}", turn.run_id),
                Role::ToolResult,
                "",
                now_ms(),
            );
            result.content = vec![ContentPart::ToolResult {
                tool_call_id: id,
                tool_name: name,
                content,
                is_error: output.is_error,
            }];
            result.author = self.node.clone();
            result.run_id = Some(turn.run_id.clone());
            self.ports
                .output
                .append(&turn.session, turn.epoch, vec![result.clone()])
                .await
                .map_err(output_ending)?;
            state.context.push(Arc::new(result));
        }
        Ok(())
    }

    /// Moves steered messages into the running turn's context.
    fn absorb_steering(&self, steer: &SteerInbox, state: &mut TurnState) {
        let steered: Vec<StartTurn> =
            std::mem::take(&mut *steer.lock().unwrap_or_else(|p| p.into_inner()));
        for s in steered {
            tracing::debug!(run_id = %s.run_id, "steering message injected at a tool boundary");
            for m in s.messages.iter() {
                if !state.context.iter().any(|c| c.id == m.id) {
                    state.context.push(Arc::new(m.clone()));
                }
                state.reply_to.push(m.id.clone());
            }
            state.absorbed.push(s.run_ref());
        }
    }

    /// The assistant message for what the current response produced so far.
    fn assistant_message(&self, turn: &StartTurn, state: &TurnState, stop: StopReason) -> Message {
        let mut content = Vec::new();
        if !state.thinking.is_empty() {
            let signature = (!state.signature.is_empty()).then(|| state.signature.clone());
            content.push(ContentPart::Thinking {
                thinking: cap_text(state.thinking.clone(), MESSAGE_BODY_BYTES_MAX / 4),
                signature,
            });
        }
        if !state.text.is_empty() {
            content.push(ContentPart::Text {
                text: cap_text(state.text.clone(), MESSAGE_BODY_BYTES_MAX / 2),
            });
        }
        Message {
            id: state.final_id.clone(),
            role: Role::Assistant,
            content,
            timestamp_ms: now_ms(),
            author: self.node.clone(),
            model: state.model.as_ref().map(|m| m.model.clone()),
            provider: state.model.as_ref().map(|m| m.provider.clone()),
            usage: None,
            stop_reason: Some(stop),
            idempotency_key: None,
            run_id: Some(turn.run_id.clone()),
            reply_to: Vec::new(),
            partial: false,
        }
    }

    async fn finish(
        &self,
        turn: &StartTurn,
        agent: &ResolvedAgent,
        mut state: TurnState,
        ending: Ending,
    ) -> TurnOutcome {
        let run = turn.run_ref();
        let absorbed = std::mem::take(&mut state.absorbed);
        let (stop, error) = match ending {
            Ending::Final(stop) => (stop, None),
            Ending::Aborted => (StopReason::Aborted, None),
            Ending::Timeout => (
                StopReason::Error,
                Some((
                    "timeout".to_string(),
                    format!("the turn did not finish within {} s", agent.timeout.as_secs()),
                )),
            ),
            Ending::Handoff => {
                // Another node takes the session over: keep what was streamed as a checkpoint
                // (the successor's run of this turn replaces it) and answer nothing.
                let partial_text = state.text.clone();
                if !partial_text.is_empty() {
                    let mut partial = self.assistant_message(turn, &state, StopReason::Aborted);
                    partial.partial = true;
                    partial.reply_to = Vec::new();
                    if let Err(e) =
                        self.ports.output.checkpoint(&turn.session, turn.epoch, partial).await
                    {
                        tracing::info!(error = %e, "handoff checkpoint not written");
                    }
                }
                tracing::info!("turn stopped for a handoff");
                self.emit_all(
                    &run,
                    &absorbed,
                    TurnEvent::Aborted { partial_text: partial_text.clone() },
                );
                return TurnOutcome::Aborted { partial_text };
            }
            Ending::Stale(stale) => {
                // Not the owner any more: write nothing, the new owner carries on.
                tracing::warn!(error = %stale, "turn stopped: stale epoch");
                let partial_text = state.text.clone();
                self.emit_all(
                    &run,
                    &absorbed,
                    TurnEvent::Aborted { partial_text: partial_text.clone() },
                );
                return TurnOutcome::Aborted { partial_text };
            }
            Ending::Provider(e) => {
                tracing::warn!(error = %e, "turn failed: provider error");
                (StopReason::Error, Some((format!("provider_{}", e.kind.as_str()), e.to_string())))
            }
            Ending::Output(e) => {
                tracing::warn!(error = %e, "turn failed: cannot write output");
                return self.fail(&run, &absorbed, "output", e.to_string());
            }
            Ending::TooManyIterations => (
                StopReason::Error,
                Some((
                    "tool_iterations".to_string(),
                    format!(
                        "the model asked for tools {TOOL_ITERATIONS_MAX} times in a row; the turn was stopped"
                    ),
                )),
            ),
        };
        let mut message = self.assistant_message(turn, &state, stop);
        message.usage = Some(state.usage);
        message.reply_to = std::mem::take(&mut state.reply_to);
        let has_output = !message.content.is_empty();
        // A turn that produced nothing leaves nothing behind; anything streamed is kept once.
        // The final message and the turn's usage are one durable write, and nothing after it
        // waits: the clients have the final event as soon as it is durable, and the session's
        // actor must see this turn ended before it sees their next message (see actor.rs).
        if has_output || (error.is_none() && stop != StopReason::Aborted) {
            let output = &self.ports.output;
            if let Err(e) =
                output.append_final(&turn.session, turn.epoch, message.clone(), state.usage).await
            {
                return self.fail(&run, &absorbed, "output", e.to_string());
            }
        } else if state.usage.total() > 0
            && let Err(e) =
                self.ports.output.add_usage(&turn.session, turn.epoch, state.usage).await
        {
            tracing::warn!(error = %e, "cannot add usage to the session");
        }
        match (error, stop) {
            (Some((kind, text)), _) => self.fail(&run, &absorbed, &kind, text),
            (None, StopReason::Aborted) => {
                tracing::info!("turn aborted");
                let partial_text = message.text_content();
                self.emit_all(
                    &run,
                    &absorbed,
                    TurnEvent::Aborted { partial_text: partial_text.clone() },
                );
                TurnOutcome::Aborted { partial_text }
            }
            (None, stop) => {
                tracing::info!(model = ?state.model.as_ref().map(|m| m.to_string()), input = state.usage.input, output = state.usage.output, "turn finished");
                let usage = state.usage;
                self.emit_all(
                    &run,
                    &absorbed,
                    TurnEvent::Final {
                        message: Box::new(message.clone()),
                        stop_reason: stop,
                        usage,
                    },
                );
                TurnOutcome::Final { message: Box::new(message), stop_reason: stop, usage }
            }
        }
    }

    fn fail(&self, run: &RunRef, absorbed: &[RunRef], kind: &str, message: String) -> TurnOutcome {
        tracing::warn!(kind, error = %message, "turn ended with an error");
        self.emit_all(
            run,
            absorbed,
            TurnEvent::Error { message: message.clone(), kind: kind.to_string() },
        );
        TurnOutcome::Error { kind: kind.to_string(), message }
    }

    fn emit_all(&self, run: &RunRef, absorbed: &[RunRef], event: TurnEvent) {
        for other in absorbed {
            self.ports.events.emit(other, event.clone());
        }
        self.ports.events.emit(run, event);
    }
}

/// Orders a session's history as the conversation the model should see, then leaves room for
/// this turn's own user messages (the caller appends them last).
///
/// The mesh makes every user message durable when it arrives, so while a turn runs, messages
/// queued behind it land in the transcript before its reply. Here each answered user message is
/// moved to just before the first message of the run that answered it (`reply_to`, `run_id`);
/// unanswered user messages that arrived after this turn's own belong to turns still queued and
/// are left out; this turn's own messages and a checkpoint of its own reply are taken out.
///
/// Runs once per turn over the whole history, so it decides the order on indices and borrowed
/// ids, then moves each message once (no copy of the transcript).
fn conversation(history: Vec<Arc<Message>>, own: &[Message], final_id: &str) -> Vec<Arc<Message>> {
    // A turn's own messages are few (one, or the requests a `collect` merged).
    let is_own = |m: &Message| own.iter().any(|o| o.id == m.id);
    let first_own = history.iter().position(|m| is_own(m));
    let mut answered_by: HashMap<&str, &str> = HashMap::new();
    for m in &history {
        if let Some(run) = &m.run_id {
            for id in &m.reply_to {
                answered_by.insert(id, run);
            }
        }
    }
    // (index of a user message, the run that answered it), waiting for that run's first message.
    let mut deferred: Vec<(usize, &str)> = Vec::new();
    let mut order: Vec<usize> = Vec::with_capacity(history.len());
    for (i, m) in history.iter().enumerate() {
        if is_own(m) || (m.partial && m.id == final_id) {
            continue;
        }
        if m.role == Role::User {
            match answered_by.get(m.id.as_str()) {
                Some(run) => deferred.push((i, run)),
                None if first_own.is_some_and(|first| i > first) => {}
                None => order.push(i),
            }
            continue;
        }
        if let Some(run) = m.run_id.as_deref() {
            deferred.retain(|(user, answered)| {
                let mine = *answered == run;
                if mine {
                    order.push(*user);
                }
                !mine
            });
        }
        order.push(i);
    }
    order.extend(deferred.iter().map(|(user, _)| *user));
    drop(answered_by);
    drop(deferred);
    let mut slots: Vec<Option<Arc<Message>>> = history.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// A refused write because the epoch moved on is a stale-epoch ending, not a store failure.
fn output_ending(error: PortError) -> Ending {
    match error {
        PortError::Stale(stale) => Ending::Stale(stale),
        other => Ending::Output(other),
    }
}

fn add_usage(total: &mut Usage, add: Usage) {
    total.input += add.input;
    total.output += add.output;
    total.cache_read += add.cache_read;
    total.cache_write += add.cache_write;
}

/// Cuts `text` to at most `max` bytes at a character boundary, saying so.
fn cap_text(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let total = text.len();
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!("\n[... cut: {total} bytes, the first {cut} kept]"));
    text
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> Message {
        Message::user_text(id, id, 0)
    }

    fn reply(run: &str, answers: &[&str]) -> Message {
        let mut m = Message::text(format!("r:{run}"), Role::Assistant, run, 0);
        m.run_id = Some(run.into());
        m.reply_to = answers.iter().map(|a| a.to_string()).collect();
        m
    }

    fn ids(messages: &[Arc<Message>]) -> Vec<&str> {
        messages.iter().map(|m| m.id.as_str()).collect()
    }

    fn shared(messages: Vec<Message>) -> Vec<Arc<Message>> {
        messages.into_iter().map(Arc::new).collect()
    }

    #[test]
    fn queued_messages_are_ordered_before_their_replies_and_later_ones_left_out() {
        // Arrival order in the transcript: u1, u2 and u3 arrived while A (answering u1) ran.
        let history = shared(vec![user("u1"), user("u2"), user("u3"), reply("A", &["u1"])]);
        // Turn B answers u2: u3 is still queued behind it.
        let context = conversation(history.clone(), &[user("u2")], "r:B");
        assert_eq!(ids(&context), vec!["u1", "r:A"]);
        let mut history = history;
        history.push(Arc::new(reply("B", &["u2"])));
        let context = conversation(history, &[user("u3")], "r:C");
        assert_eq!(ids(&context), vec!["u1", "r:A", "u2", "r:B"]);
    }

    #[test]
    fn unanswered_earlier_messages_stay_and_own_checkpoint_is_dropped() {
        let mut checkpoint = Message::text("r:T", Role::Assistant, "par", 0);
        checkpoint.partial = true;
        let history = shared(vec![user("lost"), user("u"), checkpoint]);
        let context = conversation(history, &[user("u")], "r:T");
        assert_eq!(ids(&context), vec!["lost"]);
    }

    #[test]
    fn cap_text_cuts_at_a_char_boundary_and_says_so() {
        assert_eq!(cap_text("short".into(), 10), "short");
        let cut = cap_text("ééééé".into(), 3);
        assert!(cut.starts_with("é\n[... cut: 10 bytes, the first 2 kept]"), "{cut}");
    }
}
