//! SDK fidelity: the official `anthropic` and `openai` Python SDKs (pinned in
//! tests/conformance/python/requirements.txt) read the streams of the real `beamclaw mock-llm`
//! binary and must reconstruct exactly the scripted text, thinking, tool calls and usage.
//!
//! The SDKs are installed from PyPI into a venv under the target directory, keyed by the
//! requirements file's contents, and reused by later runs.

// Test code: a failed setup step should fail the test loudly (clippy.toml allows this in
// #[test] functions; these helpers are part of the tests too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Longest wait for `beamclaw mock-llm` to print its address.
const MOCK_START_LINES_MAX: usize = 50;

#[path = "../../tests/conformance/python/venv.rs"]
mod venv;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python with the pinned SDKs.
fn python_with_sdks() -> PathBuf {
    venv::python_with_sdks(&repo_root(), Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// `beamclaw mock-llm` as a child process, killed on drop.
struct Mock {
    child: Child,
    url: String,
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_mock(script: &Path) -> Mock {
    let mut child = Command::new(env!("CARGO_BIN_EXE_beamclaw"))
        .args(["mock-llm", "--listen", "127.0.0.1:0", "--script"])
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("beamclaw mock-llm starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    for _ in 0..MOCK_START_LINES_MAX {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(url) = line.strip_prefix("mock-llm listening on ") {
            return Mock { url: url.trim().to_string(), child };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("beamclaw mock-llm did not print its address");
}

fn text_of(response: &Value) -> &str {
    response["text"].as_str().unwrap_or_default()
}

/// The scripted tool calls as the SDK reports them: id, name and parsed arguments.
fn calls_of(response: &Value) -> Vec<Value> {
    response["toolCalls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| serde_json::json!({"id": c["id"], "name": c["name"], "arguments": c["arguments"]}))
                .collect()
        })
        .unwrap_or_default()
}

fn usage_of(response: &Value) -> Value {
    serde_json::json!({"input": response["usage"]["input"], "output": response["usage"]["output"]})
}

#[test]
fn official_sdks_reconstruct_the_scripted_streams() {
    let python = python_with_sdks();
    let dir = repo_root().join("tests/conformance/python");
    let script_path = dir.join("mock_script.json");
    let script: Value =
        serde_json::from_str(&std::fs::read_to_string(&script_path).unwrap()).unwrap();
    let responses = script["responses"].as_array().unwrap();
    let mock = start_mock(&script_path);

    let output =
        Command::new(&python).arg(dir.join("sdk_check.py")).arg(&mock.url).output().unwrap();
    assert!(
        output.status.success(),
        "sdk_check.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_slice(&output.stdout).unwrap();

    let a = &got["anthropic_stream"];
    assert_eq!(a["text"], text_of(&responses[0]));
    assert_eq!(a["streamed_text"], text_of(&responses[0]));
    assert_eq!(a["thinking"], responses[0]["thinking"]);
    assert!(!a["signature"].as_str().unwrap().is_empty(), "the thinking block carries a signature");
    assert_eq!(a["tool_calls"], Value::Array(calls_of(&responses[0])));
    assert_eq!(a["usage"], usage_of(&responses[0]));
    assert_eq!(a["stop_reason"], "tool_use");

    let o = &got["openai_stream"];
    assert_eq!(o["text"], text_of(&responses[1]));
    assert_eq!(o["streamed_text"], text_of(&responses[1]));
    assert_eq!(o["tool_calls"], Value::Array(calls_of(&responses[1])));
    assert_eq!(o["usage"], usage_of(&responses[1]));
    assert_eq!(o["stop_reason"], "tool_calls");

    let a = &got["anthropic_json"];
    assert_eq!(a["text"], text_of(&responses[2]));
    assert_eq!(a["tool_calls"], Value::Array(calls_of(&responses[2])));
    assert_eq!(a["usage"], usage_of(&responses[2]));

    let o = &got["openai_json"];
    assert_eq!(o["text"], text_of(&responses[3]));
    assert_eq!(o["tool_calls"], Value::Array(Vec::new()));
    assert_eq!(o["usage"], usage_of(&responses[3]));
    assert_eq!(o["stop_reason"], "stop");
}
