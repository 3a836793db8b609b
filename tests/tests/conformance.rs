//! Conformance against a real `beamclaw up` (not the gateway's fake service):
//! - OpenClaw's reference client (tests/conformance/node/run.sh: `@openclaw/gateway-client`,
//!   pinned) with the gateway token and as a paired device, every server frame validated against
//!   `protocol.schema.json`;
//! - the official `openai` Python SDK (pinned in tests/conformance/python/requirements.txt, in a
//!   venv as node/tests/mock_llm_sdk.rs makes it) lists models and asks for chat completions,
//!   streamed and not.
//!
//! Both need the network on first use (npm, PyPI). Without npm or python3 the test says so and
//! passes; `BEAMCLAW_CONFORMANCE=require` makes that a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use beamclaw_e2e::node::{Model, TOKEN};
use beamclaw_e2e::{Cluster, ClusterOptions};
use serde_json::{Value, json};

/// npm install and the run together stay under this.
const HARNESS_TIMEOUT: Duration = Duration::from_secs(600);

#[path = "../conformance/python/venv.rs"]
mod venv;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn required() -> bool {
    std::env::var("BEAMCLAW_CONFORMANCE").as_deref() == Ok("require")
}

fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Skips (or, when required, fails) without `program`.
fn skip_without(program: &str) -> bool {
    if available(program) {
        return false;
    }
    assert!(!required(), "BEAMCLAW_CONFORMANCE=require but {program} is not on PATH");
    println!("SKIPPED: {program} is not on PATH");
    eprintln!("SKIPPED: {program} is not on PATH");
    true
}

async fn one_node(model: Model) -> Cluster {
    let opts = ClusterOptions { nodes: 1, model, ..ClusterOptions::default() };
    Cluster::start(&opts, Duration::from_secs(10)).await.unwrap().0
}

/// Runs OpenClaw's reference client harness against `cluster`'s first node; its stdout.
async fn reference_client(cluster: &Cluster) -> String {
    let script = repo_root().join("tests/conformance/node/run.sh");
    let run = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(cluster.node(0).ws_url())
        .arg(TOKEN)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(HARNESS_TIMEOUT, run)
        .await
        .expect("the conformance harness finished in time")
        .expect("the conformance harness started");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "conformance failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    assert!(stdout.contains("server frames validated"), "{stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_client_conforms_against_beamclaw_up() {
    if skip_without("npm") {
        return;
    }
    let cluster = one_node(Model::Mock).await;
    reference_client(&cluster).await;
    cluster.assert_no_panics().unwrap();
}

/// With `gateway.nodes.pairing.autoApproveLocal: false` a new device gets PAIRING_REQUIRED even
/// on loopback; the harness approves it with `device.pair.approve` (the `device.pair.*` events
/// it receives are validated against the schema too) and connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_client_pairs_a_device_through_approval() {
    if skip_without("npm") {
        return;
    }
    let opts = ClusterOptions { nodes: 1, model: Model::Mock, ..ClusterOptions::default() };
    let mut cluster = Cluster::new(&opts).await.unwrap();
    cluster.nodes[0].opts.config["gateway"] =
        json!({"nodes": {"pairing": {"autoApproveLocal": false}}});
    cluster.nodes[0].start().await.unwrap();
    let stdout = reference_client(&cluster).await;
    assert!(stdout.contains("device pairing approved through device.pair.approve"), "{stdout}");
    cluster.assert_no_panics().unwrap();
}

/// The venv's python with the pinned SDKs.
fn python_with_sdks() -> PathBuf {
    venv::python_with_sdks(&repo_root(), Path::new(env!("CARGO_TARGET_TMPDIR")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_streams_from_beamclaw_up() {
    if skip_without("python3") {
        return;
    }
    let python = python_with_sdks();
    let cluster = one_node(Model::Mock).await;
    let first = "The first answer, streamed to the SDK in small pieces.";
    let second = "The second answer, rebuilt by the stream helper.";
    let third = "The third answer, in one piece.";
    cluster
        .mock()
        .unwrap()
        .load_script(&json!({"responses": [
            {"text": first, "chunkChars": 6, "usage": {"input": 11, "output": 9}},
            {"text": second, "chunkChars": 5},
            {"text": third, "usage": {"input": 7, "output": 5}},
        ]}))
        .await
        .unwrap();
    let node = cluster.node(0);
    let script = repo_root().join("tests/conformance/python/beamclaw_up_check.py");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(node.http_url())
        .arg(TOKEN)
        .arg("e2e-sdk")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output).await.unwrap().unwrap();
    assert!(
        output.status.success(),
        "beamclaw_up_check.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_slice(&output.stdout).unwrap();
    println!("{got}");

    let models: Vec<&str> =
        got["models"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(models.contains(&"beamclaw") && models.contains(&"beamclaw/main"), "{models:?}");

    let raw = &got["raw_stream"];
    assert_eq!(raw["text"], first);
    assert!(raw["content_chunks"].as_u64().unwrap() >= 2, "streamed in several chunks: {raw}");
    assert_eq!(raw["ids"], 1, "one completion id across the chunks: {raw}");
    assert_eq!(raw["finish_reason"], "stop");
    assert!(
        raw["usage"]["completion"].as_u64().is_some(),
        "include_usage gives a usage chunk: {raw}"
    );

    let helper = &got["helper_stream"];
    assert_eq!(helper["streamed_text"], second);
    assert_eq!(helper["text"], second);
    assert_eq!(helper["finish_reason"], "stop");

    let plain = &got["non_stream"];
    assert_eq!(plain["object"], "chat.completion", "{plain}");
    assert_eq!(plain["text"], third);
    assert_eq!(plain["role"], "assistant");
    assert_eq!(plain["finish_reason"], "stop");
    assert!(
        plain["usage"]["completion"].as_u64().is_some(),
        "usage of a plain completion: {plain}"
    );

    // Every completion went to the session of OpenAI `user`, through the node's real runtime.
    let t = node.transcript("agent:main:openai-user:e2e-sdk").await.unwrap();
    let roles_texts: Vec<(&str, &str)> = t.iter().map(|(r, x)| (r.as_str(), x.as_str())).collect();
    assert_eq!(
        roles_texts,
        vec![
            ("user", "first question, streamed"),
            ("assistant", first),
            ("user", "second question, through the stream helper"),
            ("assistant", second),
            ("user", "third question, not streamed"),
            ("assistant", third),
        ]
    );
    cluster.assert_no_panics().unwrap();
}
