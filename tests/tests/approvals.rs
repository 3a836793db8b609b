//! Exec approvals across a 3-node cluster: the mock model asks for `exec` in a session owned by
//! node 1; an operator connected to node 2 hears `exec.approval.requested`, `beamclaw approvals
//! list` through node 3 shows it, the operator approves through node 2's gateway, and the
//! command on node 1 runs within a second. A second command is denied with the chat command
//! `/approve <id> deny` sent through node 3.

// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use beamclaw_e2e::client::Client;
use beamclaw_e2e::node::{CALL_TIMEOUT_MS, TOKEN};
use beamclaw_e2e::{Cluster, ClusterOptions, beamclaw_bin};
use serde_json::{Value, json};

const FORM_WITHIN: Duration = Duration::from_secs(10);
const EVENT_TIMEOUT_MS: u64 = 20_000;
/// The bound: an approval made on another node reaches the waiting tool within 1 s.
const DECISION_SEEN_WITHIN: Duration = Duration::from_secs(1);

/// The next event named `name` (others are skipped).
async fn next_named(client: &mut Client, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_millis(EVENT_TIMEOUT_MS);
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
        assert!(left > 0, "no {name} event within {EVENT_TIMEOUT_MS} ms");
        let event = client.next_event(left.max(1)).await.unwrap();
        if event["event"] == name && pred(&event["payload"]) {
            return event["payload"].clone();
        }
    }
}

fn is_exec_result(payload: &Value) -> bool {
    payload["stream"] == "tool"
        && payload["data"]["phase"] == "result"
        && payload["data"]["name"] == "exec"
}

/// `beamclaw approvals <args>` against the gateway at `url`.
fn approvals_cli(url: &str, args: &[&str]) -> (bool, String) {
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(beamclaw_bin().unwrap())
        .arg("--data-dir")
        .arg(home.path())
        .arg("approvals")
        .args(args)
        .arg("--url")
        .arg(url)
        .env("BEAMCLAW_GATEWAY_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_on_another_node_approves_a_command_and_the_tool_sees_it_within_a_second() {
    let mut cluster = Cluster::new(&ClusterOptions::default()).await.unwrap();
    for node in &mut cluster.nodes {
        // BeamClaw's defaults, explicit: an empty allowlist, ask on a miss, deny unanswered.
        node.opts.config["tools"] = json!({"exec": {
            "security": "allowlist", "ask": "on-miss", "askFallback": "deny",
            "approvalTimeoutSeconds": 60,
        }});
    }
    for node in &mut cluster.nodes {
        node.start().await.unwrap();
    }
    cluster.wait_formed(FORM_WITHIN).await.unwrap();
    let session = cluster.session_owned_by(0, 0, "approvals").await.unwrap();
    cluster
        .mock()
        .unwrap()
        .load_script(&json!({"responses": [
            {"toolCalls": [{"name": "exec", "arguments": {"command": "echo approved-on-node-2"}}]},
            {"text": "first done"},
            {"toolCalls": [{"name": "exec", "arguments": {"command": "echo must-not-run"}}]},
            {"text": "second done"},
        ]}))
        .await
        .unwrap();

    let mut operator = cluster.node(1).client().await.unwrap();
    let mut chat = cluster.node(0).client().await.unwrap();
    let accepted =
        chat.chat_send(&session, "run the command", "approvals-1", CALL_TIMEOUT_MS).await.unwrap();
    let run_id = accepted["runId"].as_str().unwrap().to_string();

    // Node 2's operator hears of the command waiting on node 1.
    let requested = next_named(&mut operator, "exec.approval.requested", |_| true).await;
    let id = requested["id"].as_str().unwrap().to_string();
    assert_eq!(requested["request"]["command"], "echo approved-on-node-2");
    assert_eq!(requested["request"]["sessionKey"], session.as_str());
    assert_eq!(requested["nodeId"], cluster.node(0).id.as_str());

    // The CLI, through node 3, lists it.
    let url3 = cluster.node(2).ws_url();
    let (ok, listed) = approvals_cli(&url3, &["list"]);
    assert!(ok && listed.contains(&id) && listed.contains("echo approved-on-node-2"), "{listed}");

    // Approved through node 2's gateway: the tool on node 1 runs it within a second.
    let resolved = operator
        .call("exec.approval.resolve", json!({"id": id, "decision": "allow-once"}), CALL_TIMEOUT_MS)
        .await
        .unwrap();
    let approved_at = Instant::now();
    assert_eq!(resolved["decision"], "allow-once");
    let result = next_named(&mut chat, "agent", is_exec_result).await;
    let seen_after = approved_at.elapsed();
    println!("the tool on node 1 saw node 2's approval after {} ms", seen_after.as_millis());
    assert!(seen_after < DECISION_SEEN_WITHIN, "{seen_after:?}");
    assert_eq!(result["data"]["isError"], false, "{result}");
    assert!(result["data"]["result"].as_str().unwrap().contains("approved-on-node-2"), "{result}");
    chat.wait_final(&run_id, EVENT_TIMEOUT_MS).await.unwrap();
    // `agent.wait` on a run that ended before anyone waited answers with its outcome at once.
    let waited = chat
        .call("agent.wait", json!({"runId": run_id, "timeoutMs": 5000}), CALL_TIMEOUT_MS)
        .await
        .unwrap();
    assert_eq!(waited["status"], "ok", "{waited}");
    let resolved_event =
        next_named(&mut operator, "exec.approval.resolved", |p| p["id"] == id.as_str()).await;
    assert_eq!(resolved_event["decision"], "allow-once");
    // Deciding twice is refused.
    let again = operator
        .call("exec.approval.resolve", json!({"id": id, "decision": "deny"}), CALL_TIMEOUT_MS)
        .await
        .unwrap_err();
    assert!(again.to_string().contains("already resolved"), "{again}");

    // The next command is denied with the chat command, sent through node 3.
    let accepted =
        chat.chat_send(&session, "run another", "approvals-2", CALL_TIMEOUT_MS).await.unwrap();
    let run_id = accepted["runId"].as_str().unwrap().to_string();
    let requested =
        next_named(&mut operator, "exec.approval.requested", |p| p["id"] != id.as_str()).await;
    let second = requested["id"].as_str().unwrap().to_string();
    let mut third = cluster.node(2).client().await.unwrap();
    let reply = third
        .chat_turn(&session, &format!("/approve {second} deny"), "approve-cmd", EVENT_TIMEOUT_MS)
        .await
        .unwrap();
    let text = beamclaw_e2e::client::text_of(&reply.last().unwrap()["payload"]["message"]);
    assert!(text.contains("Denied"), "{text}");
    let result = next_named(&mut chat, "agent", is_exec_result).await;
    assert_eq!(result["data"]["isError"], true, "{result}");
    assert!(result["data"]["result"].as_str().unwrap().contains("denied"), "{result}");
    chat.wait_final(&run_id, EVENT_TIMEOUT_MS).await.unwrap();
    let history = cluster.node(2).transcript(&session).await.unwrap();
    assert!(
        !history.iter().any(|(role, t)| role == "user" && t.contains("/approve")),
        "the command is not a message: {history:?}"
    );
    for node in &cluster.nodes {
        let row = node.local_row("system:exec-approvals").await.unwrap();
        assert!(row.is_none(), "the approvals log is listed as a session by {}", node.name());
    }

    cluster.assert_no_panics().unwrap();
}
