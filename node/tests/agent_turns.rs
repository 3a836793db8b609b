//! The agent runtime against the mock LLM on a real socket: streaming, tool loops, failover,
//! broken streams, abort, stale epochs and every queue mode.

// Test code: a failed setup step should fail the test loudly (clippy.toml allows this in
// #[test] functions; these helpers are part of the tests too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use beamclaw::agent::{
    BroadcastEvents, MemorySessions, RuntimePorts, SessionActors, StartTurn, TurnOutcome,
};
use beamclaw::config::{EnvKeys, LoadedConfig, QueueSettings, parse_str};
use beamclaw::mock_llm;
use beamclaw::provider::RetryPolicy;
use beamclaw::runtime::AgentRuntime;
use beamclaw::tools::{Tool, ToolContext, ToolOutput, ToolRegistry};
use beamclaw_crdt::{ContentPart, Message, Role, SessionKey, StopReason};
use beamclaw_mesh::core::turn::{RunRef, TurnEvent};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Longest any test waits for an event before failing.
const EVENT_WAIT_MS: u64 = 20_000;

struct Harness {
    mock: SocketAddr,
    sessions: Arc<MemorySessions>,
    events: BroadcastEvents,
    runtime: AgentRuntime,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

struct Options {
    api: &'static str,
    queue: &'static str,
    fallback: bool,
    tools: Vec<Arc<dyn Tool>>,
    sessions: Option<Arc<MemorySessions>>,
    timeout_seconds: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            api: "anthropic-messages",
            queue: "followup",
            fallback: false,
            tools: Vec::new(),
            sessions: None,
            timeout_seconds: 30,
        }
    }
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        attempts_max: 3,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
    }
}

async fn harness(script: Value, options: Options) -> Harness {
    let responses = mock_llm::script::parse(&script.to_string()).unwrap();
    let mock = mock_llm::spawn(responses).await.unwrap();
    let base = match options.api {
        "anthropic-messages" => format!("http://{mock}"),
        _ => format!("http://{mock}/v1"),
    };
    let model = if options.fallback {
        r#"{ primary: "mock/model-a", fallbacks: ["mock2/model-b"] }"#.to_string()
    } else {
        r#""mock/model-a""#.to_string()
    };
    let text = format!(
        r#"{{
          models: {{ providers: {{
            mock: {{ baseUrl: "{base}", apiKey: "test-key", api: "{api}", models: [{{ id: "model-a" }}] }},
            mock2: {{ baseUrl: "{base}", apiKey: "test-key-2", api: "{api}", models: [{{ id: "model-b" }}] }},
          }} }},
          agents: {{ defaults: {{ model: {model}, timeoutSeconds: {timeout} }} }},
          messages: {{ queue: {{ mode: "{queue}", debounceMs: 0, cap: 2, drop: "new" }} }},
        }}"#,
        api = options.api,
        queue = options.queue,
        timeout = options.timeout_seconds,
    );
    let data = tempfile::tempdir().unwrap();
    let config = parse_str(&text, "test", &|_| None).unwrap();
    let loaded = LoadedConfig {
        config,
        data_dir: data.path().to_path_buf(),
        file: None,
        env_keys: EnvKeys::default(),
    };
    runtime_for(loaded, mock, options.tools, options.sessions, data)
}

fn runtime_for(
    loaded: LoadedConfig,
    mock: SocketAddr,
    tools: Vec<Arc<dyn Tool>>,
    sessions: Option<Arc<MemorySessions>>,
    data: tempfile::TempDir,
) -> Harness {
    let sessions = sessions.unwrap_or_default();
    let events = BroadcastEvents::new();
    let ports = RuntimePorts {
        history: sessions.clone(),
        output: sessions.clone(),
        events: Arc::new(events.clone()),
        epochs: sessions.clone(),
    };
    let mut registry = ToolRegistry::new();
    for t in tools {
        registry.register(t).unwrap();
    }
    let runtime =
        AgentRuntime::build(&loaded, registry, ports, "node-test".into(), None, fast_retries())
            .unwrap();
    Harness {
        mock,
        sessions,
        events,
        runtime,
        http: beamclaw::provider::http_client().unwrap(),
        _data: data,
    }
}

fn session(name: &str) -> SessionKey {
    SessionKey::new(format!("agent:main:{name}")).unwrap()
}

impl Harness {
    /// A turn request for one user message, appended to the session first (as the mesh does).
    fn user_turn(&self, session: &SessionKey, text: &str) -> StartTurn {
        let run_id = uuid::Uuid::new_v4().to_string();
        let message = Message::user_text(format!("u:{run_id}"), text, 0);
        self.sessions.append_user(session, std::slice::from_ref(&message));
        StartTurn { session: session.clone(), epoch: 0, run_id, messages: vec![message] }
    }

    async fn run(&self, session: &SessionKey, text: &str) -> (StartTurn, TurnOutcome) {
        let turn = self.user_turn(session, text);
        let outcome = self.runtime.runner.run(turn.clone(), CancellationToken::new()).await;
        (turn, outcome)
    }

    async fn requests(&self) -> Vec<Value> {
        let url = format!("http://{}/_mock/requests", self.mock);
        let body: Value = self.http.get(url).send().await.unwrap().json().await.unwrap();
        body.as_array().unwrap().clone()
    }
}

/// Turn events by run, read from the broadcast as needed: waiting for one run keeps the events
/// of the others.
struct EventLog {
    rx: broadcast::Receiver<(RunRef, TurnEvent)>,
    runs: HashMap<String, Vec<TurnEvent>>,
}

impl EventLog {
    fn new(events: &BroadcastEvents) -> Self {
        EventLog { rx: events.subscribe(), runs: HashMap::new() }
    }

    /// Waits until `run_id` has an event matching `pred`; returns the run's events so far.
    async fn until(&mut self, run_id: &str, pred: impl Fn(&TurnEvent) -> bool) -> Vec<TurnEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(EVENT_WAIT_MS);
        loop {
            if let Some(events) = self.runs.get(run_id)
                && events.iter().any(&pred)
            {
                return events.clone();
            }
            let (run, event) = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("timed out waiting for run {run_id}; seen {:?}", self.runs.get(run_id))
                })
                .unwrap();
            self.runs.entry(run.run_id).or_default().push(event);
        }
    }

    async fn terminal(&mut self, run_id: &str) -> Vec<TurnEvent> {
        self.until(run_id, TurnEvent::is_terminal).await
    }
}

fn deltas(events: &[TurnEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            TurnEvent::AssistantDelta { text } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn final_text(outcome: &TurnOutcome) -> String {
    match outcome {
        TurnOutcome::Final { message, .. } => message.text_content(),
        other => panic!("expected a final message, got {other:?}"),
    }
}

fn assistant_messages(messages: &[Message]) -> Vec<&Message> {
    messages.iter().filter(|m| m.role == Role::Assistant).collect()
}

/// A tool that returns its arguments, optionally after a pause.
struct EchoTool {
    delay: Duration,
}

impl Tool for EchoTool {
    fn name(&self) -> &str {
        "echo"
    }
    fn description(&self) -> &str {
        "Returns its arguments"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"value": {"type": "string"}}})
    }
    fn run<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            ToolOutput::ok(format!("echoed {args}"))
        })
    }
}

/// A tool that moves the session to a newer owner epoch, as a handoff would mid-turn.
struct HandoffTool {
    sessions: Arc<MemorySessions>,
}

impl Tool for HandoffTool {
    fn name(&self) -> &str {
        "handoff"
    }
    fn description(&self) -> &str {
        "Bumps the epoch"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object"})
    }
    fn run<'a>(&'a self, _args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            self.sessions.set_epoch(&ctx.session, ctx.epoch + 1);
            ToolOutput::ok("moved")
        })
    }
}

#[tokio::test]
async fn text_streams_in_deltas_and_the_final_message_is_persisted() {
    let h = harness(json!([{"text": "Hello there, friend!", "chunkChars": 4, "usage": {"input": 11, "output": 5}}]), Options::default()).await;
    let mut log = EventLog::new(&h.events);
    let s = session("text");
    let (turn, outcome) = h.run(&s, "hi").await;
    let events = log.terminal(&turn.run_id).await;
    assert_eq!(deltas(&events), vec!["Hell", "o th", "ere,", " fri", "end!"]);
    assert_eq!(final_text(&outcome), "Hello there, friend!");
    let messages = h.sessions.messages(&s);
    assert_eq!(messages.len(), 2);
    let reply = &messages[1];
    assert_eq!(reply.id, format!("r:{}", turn.run_id));
    assert_eq!(reply.reply_to, vec![turn.messages[0].id.clone()]);
    assert_eq!(reply.run_id.as_deref(), Some(turn.run_id.as_str()));
    assert_eq!(reply.stop_reason, Some(StopReason::Stop));
    assert_eq!(
        (reply.provider.as_deref(), reply.model.as_deref()),
        (Some("mock"), Some("model-a"))
    );
    assert_eq!(h.sessions.usage(&s).input, 11);
    assert_eq!(h.sessions.usage(&s).output, 5);
    let requests = h.requests().await;
    assert_eq!(requests[0]["headers"]["x-api-key"], "test-key");
    assert_eq!(requests[0]["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(requests[0]["body"]["messages"][0]["content"][0]["text"], "hi");
    let snapshot = h.runtime.stats.snapshot();
    assert_eq!((snapshot[0].requests, snapshot[0].tokens_out), (1, 5));
}

#[tokio::test]
async fn several_tool_steps_run_and_persist_calls_and_results() {
    let tools: Vec<Arc<dyn Tool>> = vec![Arc::new(EchoTool { delay: Duration::ZERO })];
    let script = json!([
        {"toolCalls": [{"name": "echo", "arguments": {"value": "one"}}]},
        {"text": "checking twice", "toolCalls": [{"name": "echo", "arguments": {"value": "two"}}, {"name": "missing", "arguments": {}}]},
        {"text": "all done"},
    ]);
    let h =
        harness(script, Options { api: "openai-completions", tools, ..Options::default() }).await;
    let mut log = EventLog::new(&h.events);
    let s = session("tools");
    let (turn, outcome) = h.run(&s, "use the tools").await;
    assert_eq!(final_text(&outcome), "all done");
    let events = log.terminal(&turn.run_id).await;
    let results: Vec<(String, bool)> = events
        .iter()
        .filter_map(|e| match e {
            TurnEvent::ToolResult { result, is_error, .. } => Some((result.clone(), *is_error)),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], ("echoed {\"value\":\"one\"}".to_string(), false));
    assert!(results[2].1 && results[2].0.contains("no tool named \"missing\""), "{results:?}");
    let ids: Vec<String> = h.sessions.messages(&s).iter().map(|m| m.id.clone()).collect();
    let run = &turn.run_id;
    assert_eq!(
        ids,
        vec![
            format!("u:{run}"),
            format!("t:{run}:0"),
            format!("t:{run}:0:0"),
            format!("t:{run}:1"),
            format!("t:{run}:1:0"),
            format!("t:{run}:1:1"),
            format!("r:{run}"),
        ]
    );
    let requests = h.requests().await;
    assert_eq!(requests.len(), 3);
    let last = requests[2]["body"]["messages"].as_array().unwrap();
    let roles: Vec<&str> = last.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, vec!["system", "user", "assistant", "tool", "assistant", "tool", "tool"]);
    assert_eq!(last[2]["tool_calls"][0]["function"]["name"], "echo");
    assert_eq!(last[3]["content"], "echoed {\"value\":\"one\"}");
    assert_eq!(requests[0]["body"]["tools"][0]["function"]["name"], "echo");
    assert_eq!(requests[0]["headers"]["authorization"], "Bearer test-key");
}

#[tokio::test]
async fn rate_limit_then_success_honours_retry_after() {
    let script = json!([
        {"error": {"status": 429, "message": "slow down", "retryAfter": "1"}},
        {"text": "after the wait"},
    ]);
    let h = harness(script, Options::default()).await;
    let started = std::time::Instant::now();
    let (_, outcome) = h.run(&session("429"), "hi").await;
    assert_eq!(final_text(&outcome), "after the wait");
    assert!(started.elapsed() >= Duration::from_secs(1), "retry-after of 1 s was not honoured");
    assert_eq!(h.requests().await.len(), 2);
    let stats = h.runtime.stats.snapshot();
    assert_eq!(stats[0].errors.get("rate_limit"), Some(&1));
}

#[tokio::test]
async fn server_errors_fall_back_to_the_next_model() {
    let script = json!([
        {"error": {"status": 500}}, {"error": {"status": 500}}, {"error": {"status": 500}},
        {"text": "from the fallback"},
    ]);
    let h = harness(script, Options { fallback: true, ..Options::default() }).await;
    let (_, outcome) = h.run(&session("fallback"), "hi").await;
    assert_eq!(final_text(&outcome), "from the fallback");
    let TurnOutcome::Final { message, .. } = outcome else { unreachable!() };
    assert_eq!(
        (message.provider.as_deref(), message.model.as_deref()),
        (Some("mock2"), Some("model-b"))
    );
    let models: Vec<String> = h
        .requests()
        .await
        .iter()
        .map(|r| r["body"]["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(models, vec!["model-a", "model-a", "model-a", "model-b"]);
}

#[tokio::test]
async fn non_retryable_errors_surface_the_provider_message_at_once() {
    let script =
        json!([{"error": {"status": 401, "message": "invalid x-api-key"}}, {"text": "never"}]);
    let h = harness(script, Options { fallback: true, ..Options::default() }).await;
    let (_, outcome) = h.run(&session("auth"), "hi").await;
    match outcome {
        TurnOutcome::Error { kind, message } => {
            assert_eq!(kind, "provider_auth");
            assert!(
                message.contains("invalid x-api-key") && message.contains("HTTP 401"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.requests().await.len(), 1);
}

#[tokio::test]
async fn malformed_sse_is_a_clear_error_and_the_session_stays_usable() {
    let script = json!([{"text": "partial answer", "chunkChars": 7, "malformed": true}, {"text": "second turn works"}]);
    let h = harness(script, Options::default()).await;
    let s = session("malformed");
    let (first, outcome) = h.run(&s, "one").await;
    match &outcome {
        TurnOutcome::Error { kind, message } => {
            assert_eq!(kind, "provider_malformed");
            assert!(message.contains("not JSON"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let (_, outcome) = h.run(&s, "two").await;
    assert_eq!(final_text(&outcome), "second turn works");
    let messages = h.sessions.messages(&s);
    let replies = assistant_messages(&messages);
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0].id, format!("r:{}", first.run_id));
    assert_eq!(replies[0].text_content(), "partial");
    assert_eq!(replies[0].stop_reason, Some(StopReason::Error));
}

#[tokio::test]
async fn disconnect_mid_stream_leaves_one_message_with_what_was_streamed() {
    let text = "abcdefghijklmnopqrstuvwxyz".repeat(4);
    let script = json!([{"text": text, "chunkChars": 2, "disconnectAfterChunks": 8}]);
    let h = harness(script, Options { api: "openai-completions", ..Options::default() }).await;
    let mut log = EventLog::new(&h.events);
    let s = session("disconnect");
    let (turn, outcome) = h.run(&s, "hi").await;
    let events = log.terminal(&turn.run_id).await;
    let TurnOutcome::Error { kind, .. } = &outcome else { panic!("{outcome:?}") };
    assert_eq!(kind, "provider_stream_cut");
    let streamed: String = deltas(&events).concat();
    assert!(!streamed.is_empty() && streamed.len() < text.len());
    let messages = h.sessions.messages(&s);
    let replies = assistant_messages(&messages);
    assert_eq!(replies.len(), 1, "exactly one assistant message: {replies:?}");
    assert_eq!(replies[0].text_content(), streamed);
    assert!(!replies[0].partial);
    assert_eq!(h.requests().await.len(), 1, "no retry once output was streamed");
}

#[tokio::test]
async fn abort_mid_stream_keeps_the_partial_text() {
    let script = json!([{"text": "x".repeat(400), "chunkChars": 1, "tokensPerSecond": 100.0}]);
    let h = harness(script, Options::default()).await;
    let mut log = EventLog::new(&h.events);
    let s = session("abort");
    let turn = h.user_turn(&s, "talk a lot");
    h.runtime.actors.submit(turn.clone()).unwrap();
    log.until(&turn.run_id, |e| matches!(e, TurnEvent::AssistantDelta { .. })).await;
    assert!(h.runtime.actors.abort(&s));
    let events = log.terminal(&turn.run_id).await;
    let Some(TurnEvent::Aborted { partial_text }) = events.last() else { panic!("{events:?}") };
    assert!(!partial_text.is_empty() && partial_text.len() < 400);
    let messages = h.sessions.messages(&s);
    let replies = assistant_messages(&messages);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].stop_reason, Some(StopReason::Aborted));
    assert_eq!(&replies[0].text_content(), partial_text);
}

#[tokio::test]
async fn stale_epoch_is_refused_before_the_provider_call_and_after_a_tool() {
    let h = harness(json!([{"text": "never"}]), Options::default()).await;
    let s = session("stale");
    h.sessions.set_epoch(&s, 5);
    let mut turn = h.user_turn(&s, "hi");
    turn.epoch = 4;
    let outcome = h.runtime.runner.run(turn, CancellationToken::new()).await;
    assert!(matches!(outcome, TurnOutcome::Aborted { .. }), "{outcome:?}");
    assert!(h.requests().await.is_empty(), "a stale epoch must not reach the provider");

    let sessions = Arc::new(MemorySessions::new());
    let script = json!([{"toolCalls": [{"name": "handoff"}]}, {"text": "never"}]);
    let tools: Vec<Arc<dyn Tool>> = vec![Arc::new(HandoffTool { sessions: sessions.clone() })];
    let h =
        harness(script, Options { tools, sessions: Some(sessions), ..Options::default() }).await;
    let outcome = h.run(&s, "hand it off").await.1;
    assert!(matches!(outcome, TurnOutcome::Aborted { .. }), "{outcome:?}");
    assert_eq!(h.requests().await.len(), 1, "the call after the handoff was refused");
}

/// Submits three messages to one session while the first turn is still running.
async fn three_while_busy(h: &Harness, s: &SessionKey) -> Vec<StartTurn> {
    let first = h.user_turn(s, "first");
    h.runtime.actors.submit(first.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut turns = vec![first];
    for text in ["second", "third"] {
        let turn = h.user_turn(s, text);
        h.runtime.actors.submit(turn.clone()).unwrap();
        turns.push(turn);
    }
    turns
}

fn last_user_texts(request: &Value, n: usize) -> Vec<String> {
    let messages = request["body"]["messages"].as_array().unwrap();
    let users: Vec<String> = messages
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| {
            m["content"]
                .as_array()
                .map(|parts| {
                    parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("|")
                })
                .unwrap_or_default()
        })
        .collect();
    users[users.len().saturating_sub(n)..].to_vec()
}

#[tokio::test]
async fn followup_runs_each_queued_message_as_its_own_turn() {
    let script = json!([{"text": "A", "ttftMs": 300}, {"text": "B"}, {"text": "C"}]);
    let h = harness(script, Options { queue: "followup", ..Options::default() }).await;
    let mut log = EventLog::new(&h.events);
    let s = session("followup");
    let turns = three_while_busy(&h, &s).await;
    for t in &turns {
        assert!(matches!(log.terminal(&t.run_id).await.last(), Some(TurnEvent::Final { .. })));
    }
    let requests = h.requests().await;
    assert_eq!(requests.len(), 3);
    let texts: Vec<String> =
        assistant_messages(&h.sessions.messages(&s)).iter().map(|m| m.text_content()).collect();
    assert_eq!(texts, vec!["A", "B", "C"]);
}

#[tokio::test]
async fn collect_merges_queued_messages_into_one_turn() {
    let script = json!([{"text": "A", "ttftMs": 300}, {"text": "B and C"}]);
    let h = harness(script, Options { queue: "collect", ..Options::default() }).await;
    let mut log = EventLog::new(&h.events);
    let s = session("collect");
    let turns = three_while_busy(&h, &s).await;
    for t in &turns {
        let events = log.terminal(&t.run_id).await;
        assert!(matches!(events.last(), Some(TurnEvent::Final { .. })), "{events:?}");
    }
    let requests = h.requests().await;
    assert_eq!(requests.len(), 2);
    assert_eq!(
        last_user_texts(&requests[1], 1),
        vec!["second|third"],
        "one user message holding both"
    );
    let replies = h.sessions.messages(&s);
    let merged = replies.iter().find(|m| m.text_content() == "B and C").unwrap();
    assert_eq!(
        merged.reply_to,
        vec![turns[1].messages[0].id.clone(), turns[2].messages[0].id.clone()]
    );
}

#[tokio::test]
async fn steer_injects_at_the_next_tool_boundary() {
    let tools: Vec<Arc<dyn Tool>> = vec![Arc::new(EchoTool { delay: Duration::from_millis(300) })];
    let script = json!([{"toolCalls": [{"name": "echo", "arguments": {"value": "x"}}]}, {"text": "saw both"}]);
    let h = harness(script, Options { queue: "steer", tools, ..Options::default() }).await;
    let mut log = EventLog::new(&h.events);
    let s = session("steer");
    let first = h.user_turn(&s, "first");
    h.runtime.actors.submit(first.clone()).unwrap();
    log.until(&first.run_id, |e| matches!(e, TurnEvent::ToolStart { .. })).await;
    let second = h.user_turn(&s, "second");
    h.runtime.actors.submit(second.clone()).unwrap();
    for t in [&first, &second] {
        assert!(matches!(log.terminal(&t.run_id).await.last(), Some(TurnEvent::Final { .. })));
    }
    let requests = h.requests().await;
    assert_eq!(requests.len(), 2, "the steered message joined the running turn");
    let last = requests[1]["body"]["messages"].as_array().unwrap().last().unwrap().clone();
    let texts: Vec<&str> =
        last["content"].as_array().unwrap().iter().filter_map(|p| p["text"].as_str()).collect();
    assert_eq!(texts, vec!["second"], "after the tool result: {last}");
    let reply = h
        .sessions
        .messages(&s)
        .into_iter()
        .find(|m| m.id == format!("r:{}", first.run_id))
        .unwrap();
    assert_eq!(reply.reply_to.len(), 2);
}

#[tokio::test]
async fn interrupt_aborts_the_running_turn_and_runs_the_new_message() {
    let script = json!([{"text": "y".repeat(300), "chunkChars": 1, "tokensPerSecond": 100.0}, {"text": "interrupted you"}]);
    let h = harness(script, Options { queue: "interrupt", ..Options::default() }).await;
    let mut log = EventLog::new(&h.events);
    let s = session("interrupt");
    let first = h.user_turn(&s, "long one");
    h.runtime.actors.submit(first.clone()).unwrap();
    log.until(&first.run_id, |e| matches!(e, TurnEvent::AssistantDelta { .. })).await;
    let second = h.user_turn(&s, "stop, new question");
    h.runtime.actors.submit(second.clone()).unwrap();
    assert!(matches!(log.terminal(&first.run_id).await.last(), Some(TurnEvent::Aborted { .. })));
    let events = log.terminal(&second.run_id).await;
    let Some(TurnEvent::Final { message, .. }) = events.last() else { panic!("{events:?}") };
    assert_eq!(message.text_content(), "interrupted you");
}

#[tokio::test]
async fn a_full_queue_drops_by_policy_and_says_so() {
    // cap 2, drop "new": with one turn running and two queued, the fourth request is dropped.
    let script = json!([{"text": "A", "ttftMs": 400}, {"text": "B"}, {"text": "C"}]);
    let h = harness(script, Options { queue: "followup", ..Options::default() }).await;
    let mut log = EventLog::new(&h.events);
    let s = session("cap");
    let mut turns = three_while_busy(&h, &s).await;
    let fourth = h.user_turn(&s, "fourth");
    h.runtime.actors.submit(fourth.clone()).unwrap();
    let events = log.terminal(&fourth.run_id).await;
    assert!(
        matches!(events.last(), Some(TurnEvent::Error { kind, .. }) if kind == "queue_dropped"),
        "{events:?}"
    );
    for t in turns.drain(..) {
        assert!(matches!(log.terminal(&t.run_id).await.last(), Some(TurnEvent::Final { .. })));
    }
    assert_eq!(h.requests().await.len(), 3);
}

#[tokio::test]
async fn offline_provider_runs_a_tool_turn_end_to_end_with_no_config() {
    let data = tempfile::tempdir().unwrap();
    let loaded = LoadedConfig::defaults(data.path().to_path_buf(), EnvKeys::default());
    let tools: Vec<Arc<dyn Tool>> = vec![Arc::new(EchoTool { delay: Duration::ZERO })];
    let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let h = runtime_for(loaded, unused, tools, None, data);
    let s = session("offline");
    let (turn, outcome) = h.run(&s, "/tool echo {\"value\": \"ping\"}").await;
    let text = final_text(&outcome);
    assert!(text.starts_with("The tool `echo` returned:\nechoed {\"value\":\"ping\"}"), "{text}");
    assert!(text.contains("offline provider") && text.contains("ANTHROPIC_API_KEY"), "{text}");
    let messages = h.sessions.messages(&s);
    let call = messages.iter().find(|m| m.id == format!("t:{}:0", turn.run_id)).unwrap();
    assert!(matches!(&call.content[0], ContentPart::ToolCall { name, .. } if name == "echo"));
    assert_eq!(call.provider.as_deref(), Some("beamclaw"));
    let (_, outcome) = h.run(&s, "hello").await;
    let text = final_text(&outcome);
    assert!(
        text.contains("You said: hello")
            && text.contains("agent:main:offline")
            && text.contains("node-test"),
        "{text}"
    );
}

#[tokio::test]
async fn long_output_is_checkpointed_and_the_final_message_replaces_the_checkpoints() {
    let text = "z".repeat(10_000);
    let h = harness(json!([{"text": text, "chunkChars": 500}]), Options::default()).await;
    let s = session("checkpoint");
    let (turn, outcome) = h.run(&s, "write a lot").await;
    assert_eq!(final_text(&outcome).len(), 10_000);
    // One checkpoint per CHECKPOINT_BYTES (4096) of new text; more only if the stream stalled
    // for CHECKPOINT_INTERVAL_MS.
    assert!(h.sessions.checkpoints(&s) >= 2, "{} checkpoints", h.sessions.checkpoints(&s));
    let messages = h.sessions.messages(&s);
    let replies = assistant_messages(&messages);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].id, format!("r:{}", turn.run_id));
    assert!(!replies[0].partial);
    assert_eq!(replies[0].text_content().len(), 10_000);
}

#[tokio::test]
async fn a_turn_longer_than_timeout_seconds_ends_with_a_timeout_error() {
    let script = json!([{"text": "too late", "ttftMs": 5000}]);
    let h = harness(script, Options { timeout_seconds: 1, ..Options::default() }).await;
    let s = session("timeout");
    let (_, outcome) = h.run(&s, "hi").await;
    match outcome {
        TurnOutcome::Error { kind, message } => {
            assert_eq!(kind, "timeout");
            assert!(message.contains("1 s"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        assistant_messages(&h.sessions.messages(&s)).is_empty(),
        "nothing was streamed, nothing is kept"
    );
}

#[tokio::test]
async fn idle_actors_stop_and_the_next_message_starts_a_new_one() {
    let h = harness(json!([]), Options::default()).await;
    let actors = SessionActors::with_idle(
        h.runtime.runner.clone(),
        QueueSettings::default(),
        Duration::from_millis(100),
    );
    let mut log = EventLog::new(&h.events);
    let s = session("idle");
    let first = h.user_turn(&s, "one");
    actors.submit(first.clone()).unwrap();
    assert!(matches!(log.terminal(&first.run_id).await.last(), Some(TurnEvent::Final { .. })));
    assert_eq!(actors.active(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(actors.active(), 0, "the idle actor stopped");
    let second = h.user_turn(&s, "two");
    actors.submit(second.clone()).unwrap();
    let events = log.terminal(&second.run_id).await;
    let Some(TurnEvent::Final { message, .. }) = events.last() else { panic!("{events:?}") };
    assert_eq!(message.text_content(), "echo: two");
}
