//! The built-in tools driven by a model (the mock LLM scripts the tool calls) through the real
//! agent runtime: every escape attempt of the file tools is refused with a clear tool error,
//! exec's timeout and abort kill the whole process group (grandchildren included), web_fetch
//! refuses loopback, and every result is recorded in the session as a toolResult message.

// Test code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use beamclaw::agent::{BroadcastEvents, MemorySessions, RuntimePorts, StartTurn};
use beamclaw::approvals::Approvals;
use beamclaw::approvals::log::MemoryLog;
use beamclaw::approvals::policy::ApprovalPolicy;
use beamclaw::config::{EnvKeys, LoadedConfig, parse_str};
use beamclaw::mock_llm;
use beamclaw::provider::RetryPolicy;
use beamclaw::runtime::AgentRuntime;
use beamclaw_crdt::{ContentPart, Message, Role, SessionKey};
use serde_json::{Value, json};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Harness {
    sessions: Arc<MemorySessions>,
    runtime: AgentRuntime,
    workspace: PathBuf,
    outside: PathBuf,
    _data: tempfile::TempDir,
}

/// A runtime whose model is the mock playing `script`, with the node's built-in tools.
async fn harness(script: Value, tools_config: &str) -> Harness {
    let responses = mock_llm::script::parse(&script.to_string()).unwrap();
    let mock = mock_llm::spawn(responses).await.unwrap();
    let text = format!(
        r#"{{
          models: {{ providers: {{ mock: {{ baseUrl: "http://{mock}/v1", apiKey: "k", api: "openai-completions", models: [{{ id: "m" }}] }} }} }},
          agents: {{ defaults: {{ model: "mock/m", timeoutSeconds: 60 }} }},
          tools: {tools_config},
        }}"#
    );
    let data = tempfile::tempdir().unwrap();
    let config = parse_str(&text, "test", &|_| None).unwrap();
    let loaded = LoadedConfig {
        config,
        data_dir: data.path().to_path_buf(),
        file: None,
        env_keys: EnvKeys::default(),
    };
    let workspace = loaded.agent("main").unwrap().workspace;
    std::fs::create_dir_all(&workspace).unwrap();
    let outside = data.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "top secret\n").unwrap();
    symlink(&outside, workspace.join("link_out")).unwrap();
    let gate = Approvals::new(
        ApprovalPolicy::from_config(&loaded.config.tools.exec),
        "node-test".into(),
        Arc::new(MemoryLog::new()),
    );
    let builtin = beamclaw::tools::builtin_registry(&loaded, gate).unwrap();
    let sessions = Arc::new(MemorySessions::default());
    let ports = RuntimePorts {
        history: sessions.clone(),
        output: sessions.clone(),
        events: Arc::new(BroadcastEvents::new()),
        epochs: sessions.clone(),
    };
    let retries = RetryPolicy {
        attempts_max: 1,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(10),
    };
    let runtime =
        AgentRuntime::build(&loaded, builtin.registry, ports, "node-test".into(), None, retries)
            .unwrap();
    Harness { sessions, runtime, workspace, outside, _data: data }
}

impl Harness {
    fn turn(&self, session: &SessionKey, text: &str) -> StartTurn {
        let run_id = uuid::Uuid::new_v4().to_string();
        let message = Message::user_text(format!("u:{run_id}"), text, 0);
        self.sessions.append_user(session, std::slice::from_ref(&message));
        StartTurn { session: session.clone(), epoch: 0, run_id, messages: vec![message] }
    }

    /// The toolResult messages of the session: (tool name, content, is_error).
    fn tool_results(&self, session: &SessionKey) -> Vec<(String, String, bool)> {
        self.sessions
            .messages(session)
            .iter()
            .filter(|m| m.role == Role::ToolResult)
            .flat_map(|m| m.content.clone())
            .filter_map(|p| match p {
                ContentPart::ToolResult { tool_name, content, is_error, .. } => {
                    Some((tool_name, content, is_error))
                }
                _ => None,
            })
            .collect()
    }
}

fn session(name: &str) -> SessionKey {
    SessionKey::new(format!("agent:main:{name}")).unwrap()
}

const TREE: &str = "sh -c 'sleep 1000 & echo $! > grandchild.pid; sleep 1000'";

fn grandchild(workspace: &Path) -> Option<i32> {
    std::fs::read_to_string(workspace.join("grandchild.pid")).ok()?.trim().parse().ok()
}

/// Whether `pid` runs (a zombie waiting for its reaper does not count).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z")
    })
}

async fn assert_gone(pid: i32) {
    for _ in 0..300 {
        if !running(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("process {pid} survived its group being killed");
}

#[tokio::test]
async fn file_tool_escapes_are_refused_and_recorded_as_tool_errors() {
    let escapes = [
        ("read", json!({"path": "../outside/secret.txt"})),
        ("read", json!({"path": "link_out/secret.txt"})),
        ("write", json!({"path": "/tmp/beamclaw-escape.txt", "content": "x"})),
        ("write", json!({"path": "link_out/new.txt", "content": "x"})),
        ("edit", json!({"path": "link_out/secret.txt", "oldText": "top", "newText": "no"})),
        ("edit", json!({"path": "../outside/secret.txt", "oldText": "top", "newText": "no"})),
        (
            "apply_patch",
            json!({"input": "*** Begin Patch\n*** Add File: link_out/p.txt\n+x\n*** End Patch"}),
        ),
        (
            "apply_patch",
            json!({"input": "*** Begin Patch\n*** Delete File: ../outside/secret.txt\n*** End Patch"}),
        ),
    ];
    let calls: Vec<Value> =
        escapes.iter().map(|(name, args)| json!({"name": name, "arguments": args})).collect();
    let script = json!([
        {"toolCalls": calls},
        {"toolCalls": [{"name": "write", "arguments": {"path": "notes/ok.txt", "content": "fine"}}]},
        {"text": "done"},
    ]);
    let h = harness(script, "{}").await;
    let s = session("escapes");
    let outcome = h.runtime.runner.run(h.turn(&s, "try to escape"), CancellationToken::new()).await;
    assert!(format!("{outcome:?}").contains("done"), "{outcome:?}");
    let results = h.tool_results(&s);
    assert_eq!(results.len(), escapes.len() + 1, "{results:?}");
    for ((name, content, is_error), (expected, args)) in results.iter().zip(escapes.iter()) {
        assert_eq!(name, expected);
        assert!(*is_error, "{name} {args}: {content}");
        assert!(
            content.contains("outside the workspace") || content.contains("is refused"),
            "{name} {args}: the error says why: {content}"
        );
    }
    let (name, content, is_error) = results.last().unwrap();
    assert!(name == "write" && !is_error, "{content}");
    assert_eq!(std::fs::read_to_string(h.workspace.join("notes/ok.txt")).unwrap(), "fine");
    assert_eq!(std::fs::read_to_string(h.outside.join("secret.txt")).unwrap(), "top secret\n");
    assert_eq!(std::fs::read_dir(&h.outside).unwrap().count(), 1, "nothing new outside");
    assert!(!Path::new("/tmp/beamclaw-escape.txt").exists());
}

#[tokio::test]
async fn exec_timeout_kills_grandchildren_and_web_fetch_refuses_loopback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = json!([
        {"toolCalls": [
            {"name": "exec", "arguments": {"command": TREE, "timeoutSeconds": 1, "yieldMs": 30000}},
            {"name": "web_fetch", "arguments": {"url": format!("http://127.0.0.1:{port}/admin")}},
            {"name": "web_fetch", "arguments": {"url": "file:///etc/passwd"}},
        ]},
        {"text": "done"},
    ]);
    let h = harness(script, r#"{ exec: { security: "full", ask: "off" } }"#).await;
    let s = session("exec-timeout");
    h.runtime.runner.run(h.turn(&s, "run it"), CancellationToken::new()).await;
    let results = h.tool_results(&s);
    assert_eq!(results.len(), 3, "{results:?}");
    let (_, exec, is_error) = &results[0];
    assert!(*is_error && exec.contains("timed out after 1 s"), "{exec}");
    assert_gone(grandchild(&h.workspace).expect("the grandchild started")).await;
    let (_, fetch, is_error) = &results[1];
    assert!(*is_error && fetch.contains("loopback"), "{fetch}");
    let (_, file, is_error) = &results[2];
    assert!(*is_error && file.contains("only http and https"), "{file}");
    drop(listener);
}

#[tokio::test]
async fn aborting_the_turn_kills_the_running_command_and_its_grandchildren() {
    let script = json!([
        {"toolCalls": [{"name": "exec", "arguments": {"command": TREE, "yieldMs": 30000}}]},
        {"text": "never reached"},
    ]);
    let h = harness(script, r#"{ exec: { security: "full", ask: "off" } }"#).await;
    let s = session("exec-abort");
    let cancel = CancellationToken::new();
    let turn = h.turn(&s, "run it");
    let abort = async {
        let pid = loop {
            if let Some(pid) = grandchild(&h.workspace) {
                break pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        cancel.cancel();
        pid
    };
    let (outcome, pid) = tokio::join!(h.runtime.runner.run(turn, cancel.clone()), abort);
    assert!(format!("{outcome:?}").to_lowercase().contains("abort"), "{outcome:?}");
    assert_gone(pid).await;
}

#[tokio::test]
async fn the_default_policy_asks_and_falls_back_to_deny() {
    let script = json!([
        {"toolCalls": [{"name": "exec", "arguments": {"command": "touch ran"}}]},
        {"text": "done"},
    ]);
    let h = harness(script, r#"{ exec: { approvalTimeoutSeconds: 1 } }"#).await;
    let s = session("exec-ask");
    h.runtime.runner.run(h.turn(&s, "run it"), CancellationToken::new()).await;
    let results = h.tool_results(&s);
    let (_, content, is_error) = &results[0];
    assert!(*is_error && content.contains("askFallback"), "{content}");
    assert!(!h.workspace.join("ran").exists());
}
