//! Sub-agents end to end, with mock-llm scripting the `sessions_spawn` tool calls, and skills on
//! a real node:
//! - a parent spawns a sub-agent of another agent; the sub-agent's own spawn (depth 2) is refused
//!   with a clear tool error; its result is announced back into the parent, which runs a turn on
//!   it; `skills.status` and `beamclaw skills list` report ready, gated and invalid skills;
//! - in a 3-node cluster the node that owns a running sub-agent is killed (SIGKILL): the task
//!   restarts on the child's new owner and the parent is told that it did, with the result.
//!
//! The parent agent (`main`) and the sub-agent's agent (`worker`) use two mock models, so each
//! mock's script is consumed by one side only, whatever the order the turns run in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use beamclaw_e2e::node::{CALL_TIMEOUT_MS, Model, unique_key};
use beamclaw_e2e::{Cluster, ClusterOptions, MockLlm, beamclaw_bin, poll_until};
use serde_json::{Value, json};

const TURN_TIMEOUT_MS: u64 = 30_000;
/// From spawning to the announcement in the parent, when nothing fails.
const ANNOUNCE_WITHIN: Duration = Duration::from_secs(20);
/// From killing the child's owner to the announcement: failover (≤ 5 s), the task again, a
/// watch poll, the announce turn.
const ANNOUNCE_AFTER_KILL_WITHIN: Duration = Duration::from_secs(30);
const ANNOUNCE_PREFIX: &str = "[sub-agent ";

/// The nodes' config: `main` on the cluster's mock, `worker` on `worker_mock`, `main` may spawn
/// `worker`; skills from `workspace` when given.
fn config(base: &Value, worker_mock: &MockLlm, workspace: Option<&Path>) -> Value {
    let mut config = base.clone();
    config["models"]["providers"]["mock2"] = json!({
        "baseUrl": format!("{}/v1", worker_mock.url),
        "api": "openai-completions",
        "apiKey": "x",
        "models": [{"id": "m"}],
    });
    config["agents"]["defaults"]["subagents"] = json!({"allowAgents": ["worker"]});
    config["agents"]["list"] =
        json!([{"id": "main", "default": true}, {"id": "worker", "model": "mock2/m"}]);
    if let Some(ws) = workspace {
        config["agents"]["defaults"]["workspace"] = json!(ws.display().to_string());
    }
    config
}

async fn cluster_with_worker_mock(nodes: usize, workspace: Option<&Path>) -> (Cluster, MockLlm) {
    let opts = ClusterOptions { nodes, model: Model::Mock, ..ClusterOptions::default() };
    let mut cluster = Cluster::new(&opts).await.unwrap();
    let dir = cluster.dir.path().join("worker-mock");
    std::fs::create_dir_all(&dir).unwrap();
    let worker = MockLlm::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &dir).await.unwrap();
    for node in &mut cluster.nodes {
        node.opts.config = config(&node.opts.config, &worker, workspace);
    }
    for node in &mut cluster.nodes {
        node.start().await.unwrap();
    }
    cluster.wait_formed(Duration::from_secs(15)).await.unwrap();
    (cluster, worker)
}

fn spawn_call(args: Value) -> Value {
    json!({"toolCalls": [{"name": "sessions_spawn", "arguments": args}]})
}

/// The raw `chat.history` of `session` through node `via`.
async fn history(cluster: &Cluster, via: usize, session: &str) -> anyhow::Result<Value> {
    let mut c = cluster.node(via).client().await?;
    let h = c.history(session, CALL_TIMEOUT_MS).await;
    c.close().await;
    Ok(h?)
}

/// The child session key in the parent's `sessions_spawn` tool result.
fn child_key(history: &Value) -> Option<String> {
    let text = history.to_string();
    let at = text.find("agent:worker:subagent:")?;
    let key: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == ':' || *c == '-')
        .collect();
    Some(key)
}

/// The announcement in the parent's transcript and the assistant reply after it.
async fn announced(
    cluster: &Cluster,
    via: usize,
    session: &str,
) -> anyhow::Result<(String, String)> {
    let t = cluster.node(via).transcript(session).await?;
    let at = t
        .iter()
        .position(|(role, text)| role == "user" && text.starts_with(ANNOUNCE_PREFIX))
        .with_context(|| format!("no announcement yet in {t:?}"))?;
    let reply = t[at + 1..]
        .iter()
        .find(|(role, text)| role == "assistant" && !text.is_empty())
        .with_context(|| format!("the parent has not answered the announcement yet: {t:?}"))?;
    Ok((t[at].1.clone(), reply.1.clone()))
}

/// Every request a mock received, as one string (tool results included).
async fn requests_text(mock: &MockLlm) -> String {
    mock.requests().await.map(|r| Value::Array(r).to_string()).unwrap_or_default()
}

fn write_skill(root: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(root.join(name)).unwrap();
    std::fs::write(root.join(name).join("SKILL.md"), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_agent_result_is_announced_back_and_a_spawn_at_depth_two_is_refused() {
    let started = Instant::now();
    let ws = tempfile::tempdir().unwrap();
    let skills = ws.path().join("skills");
    write_skill(&skills, "ready-one", "---\nname: ready-one\ndescription: Always usable.\n---\n");
    write_skill(
        &skills,
        "needs-bin",
        "---\nname: needs-bin\ndescription: Needs a tool.\nmetadata:\n  {\n    \"openclaw\": { \"requires\": { \"bins\": [\"beamclaw-no-such-bin\"] }, },\n  }\n---\n",
    );
    write_skill(&skills, "broken", "---\nname: broken\n---\nno description\n");
    let (cluster, worker) = cluster_with_worker_mock(1, Some(ws.path())).await;
    let main = cluster.mock().unwrap();
    let session = unique_key("spawner");

    // The parent spawns a worker; the worker tries to spawn one of its own, is refused, and
    // answers.
    main.load_script(&json!({"responses": [
        spawn_call(json!({"task": "Compute 6*7", "agentId": "worker", "label": "calc"})),
        {"text": "A sub-agent is on it."},
    ]}))
    .await
    .unwrap();
    worker
        .load_script(&json!({"responses": [
            spawn_call(json!({"task": "go one level deeper"})),
            {"text": "worker result: 42"},
        ]}))
        .await
        .unwrap();
    let mut client = cluster.node(0).client().await.unwrap();
    let events =
        client.chat_turn(&session, "please compute 6*7", "k-spawn", TURN_TIMEOUT_MS).await.unwrap();
    println!("parent turn done in {} ms ({} events)", started.elapsed().as_millis(), events.len());

    let spawned_at = Instant::now();
    let (announcement, reply) =
        poll_until("the result is announced into the parent", ANNOUNCE_WITHIN, || {
            announced(&cluster, 0, &session)
        })
        .await
        .unwrap();
    println!(
        "announced {} ms after the parent's turn:\n{announcement}",
        spawned_at.elapsed().as_millis()
    );
    assert!(
        announcement.starts_with("[sub-agent calc finished] The sub-agent completed."),
        "{announcement}"
    );
    assert!(announcement.contains("worker result: 42"), "{announcement}");
    // mock-llm echoes the announcement: the parent ran a turn on it.
    assert!(reply.contains("worker result: 42"), "{reply}");

    // The spawn at depth 2 was refused with a clear tool error, which the worker's model saw.
    let worker_saw = requests_text(&worker).await;
    assert!(worker_saw.contains("maxSpawnDepth is 1"), "{worker_saw}");
    assert!(worker_saw.contains("cannot spawn sub-agents of its own"), "{worker_saw}");
    assert_eq!(worker.requests().await.unwrap().len(), 2);

    // The child session is kept (cleanup keep), names its parent and holds the task and reply.
    let parent_history = history(&cluster, 0, &session).await.unwrap();
    let child = child_key(&parent_history).expect("the spawn record names the child");
    let uuid = child.rsplit(':').next().unwrap();
    assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{child}");
    let row = cluster.node(0).local_row(&child).await.unwrap().expect("the child is listed");
    assert_eq!(row["spawnedBy"], session.as_str(), "{row}");
    let child_transcript = cluster.node(0).transcript(&child).await.unwrap();
    assert!(
        child_transcript.iter().any(|(r, t)| r == "user" && t.contains("Compute 6*7")),
        "{child_transcript:?}"
    );

    // skills.status on the node: ready, gated with what is missing, invalid with the reason.
    let status = client.call("skills.status", json!({}), CALL_TIMEOUT_MS).await.unwrap();
    let rows = status["skills"].as_array().unwrap();
    let row = |n: &str| rows.iter().find(|r| r["name"] == n).cloned().unwrap_or_default();
    assert_eq!(row("ready-one")["status"], "ready", "{status}");
    assert_eq!(row("needs-bin")["status"], "gated", "{status}");
    assert_eq!(row("needs-bin")["missing"]["bins"], json!(["beamclaw-no-such-bin"]));
    assert_eq!(row("broken")["status"], "invalid", "{status}");
    assert!(row("broken")["reason"].as_str().unwrap_or_default().contains("no description"));
    let e = client.call("skills.status", json!({"agentId": "nobody"}), CALL_TIMEOUT_MS).await;
    assert!(e.is_err(), "{e:?}");
    client.close().await;

    // The same through the CLI, on the folder.
    let out = std::process::Command::new(beamclaw_bin().unwrap())
        .args(["skills", "list", "--dir"])
        .arg(&skills)
        .env("BEAMCLAW_HOME", cluster.node(0).opts.data_dir.as_os_str())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("Skills (1/3 ready)"), "{text}");
    assert!(text.contains("missing bins: beamclaw-no-such-bin"), "{text}");
    cluster.assert_no_panics().unwrap();
    println!("total {} ms", started.elapsed().as_millis());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_agent_whose_node_is_killed_restarts_on_its_new_owner_and_the_parent_is_told() {
    let started = Instant::now();
    let (mut cluster, worker) = cluster_with_worker_mock(3, None).await;
    println!("formed in {} ms", started.elapsed().as_millis());
    let main = cluster.mock().unwrap();
    let session = cluster.session_owned_by(0, 0, "parent").await.unwrap();

    main.load_script(&json!({"responses": [
        spawn_call(json!({"task": "a long job", "agentId": "worker", "label": "slow"})),
        {"text": "Started a sub-agent."},
    ]}))
    .await
    .unwrap();
    // The first attempt hangs (its node dies meanwhile); the restarted one answers.
    worker
        .load_script(&json!({"responses": [
            {"text": "never delivered", "latencyMs": 25000},
            {"text": "finished after failover"},
        ]}))
        .await
        .unwrap();
    let mut client = cluster.node(0).client().await.unwrap();
    client.chat_turn(&session, "start the long job", "k-long", TURN_TIMEOUT_MS).await.unwrap();
    client.close().await;

    let child =
        poll_until("the spawn record is in the parent", Duration::from_secs(10), || async {
            child_key(&history(&cluster, 0, &session).await?).context("no spawn record yet")
        })
        .await
        .unwrap();
    poll_until("the child called its model", Duration::from_secs(10), || async {
        let n = worker.requests().await?.len();
        ensure!(n >= 1, "no request yet");
        Ok(())
    })
    .await
    .unwrap();
    let (victim, epoch) = cluster.owner_seen_by(0, &child).await.unwrap();
    // Watch from a node that survives.
    let via = (0..3).find(|i| *i != victim).unwrap();
    println!(
        "child {child} runs on node-{} (epoch {epoch}); the parent is owned by node-1; watching via node-{}",
        victim + 1,
        via + 1
    );

    let killed_at = Instant::now();
    cluster.nodes[victim].kill9().unwrap();

    let (announcement, reply) =
        poll_until("the parent is told about the sub-agent", ANNOUNCE_AFTER_KILL_WITHIN, || {
            announced(&cluster, via, &session)
        })
        .await
        .unwrap();
    println!("announced {} ms after kill -9:\n{announcement}", killed_at.elapsed().as_millis());
    assert!(announcement.starts_with("[sub-agent slow finished]"), "{announcement}");
    if announcement.contains("The sub-agent completed.") {
        assert!(announcement.contains("finished after failover"), "{announcement}");
        assert!(announcement.contains("became unreachable while it ran"), "{announcement}");
        assert!(announcement.contains("restarted the task on its new owner"), "{announcement}");
    } else {
        // Failing cleanly is allowed, if the parent is told so.
        assert!(announcement.contains("failed"), "{announcement}");
    }
    assert!(!announcement.contains("never delivered"), "{announcement}");
    assert!(reply.contains("[sub-agent slow finished]"), "the parent answered: {reply}");
    let (new_owner, new_epoch) = cluster.owner_seen_by(via, &child).await.unwrap();
    assert_ne!(new_owner, victim);
    assert!(new_epoch > epoch, "{epoch} -> {new_epoch}");
    let requests = worker.requests().await.unwrap().len();
    assert!(requests >= 2, "the task was not run again on the new owner ({requests} requests)");
    cluster.assert_no_panics().unwrap();
    println!("total {} ms", started.elapsed().as_millis());
}
