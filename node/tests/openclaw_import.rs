//! `beamclaw import openclaw` and `beamclaw sessions list|show|export` on a realistic OpenClaw
//! state directory (tests/fixtures/openclaw: two agents, tool calls and results, thinking,
//! an image, an abandoned branch with a branch summary, a compaction, a session without a
//! transcript), through the library and through the real binary as a child process.

// Test code: a failed setup step should fail the test loudly (clippy.toml allows this in
// #[test] functions; these helpers are part of the tests too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use beamclaw::cli::sessions::{ExportFormat, ImportSummary, export, import_openclaw};
use beamclaw_crdt::{SessionKey, Store, StoreOptions};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MAIN_KEY: &str = "agent:main:main";
const MAIN_ID: &str = "0b6e1c2a-6a3f-4d7e-9a51-3f0c2d4e5a61";
const TELEGRAM_KEY: &str = "agent:main:telegram:direct:12345";
const TELEGRAM_ID: &str = "5e0f9d21-2c4b-4e8a-b7d3-91a0c6f4e2b8";
const OPS_KEY: &str = "agent:ops:main";
const OPS_ID: &str = "9c8b7a65-4321-4fed-8cba-0987654321fe";
const SUBAGENT_KEY: &str = "agent:main:subagent:3f1d2c4b-5a69-4788-9abc-def012345678";

/// The sessions of the fixture that have a transcript: (key, agent, session id).
const TRANSCRIPTS: [(&str, &str, &str); 3] =
    [(MAIN_KEY, "main", MAIN_ID), (TELEGRAM_KEY, "main", TELEGRAM_ID), (OPS_KEY, "ops", OPS_ID)];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openclaw")
}

fn transcript_of(state: &Path, agent: &str, id: &str) -> PathBuf {
    state.join("agents").join(agent).join("sessions").join(format!("{id}.jsonl"))
}

fn import(data: &Path, state: &Path) -> (ImportSummary, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let summary = import_openclaw(data, state, None, &mut out, &mut err).unwrap();
    (summary, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

fn export_bytes(data: &Path, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    export(data, key, ExportFormat::Jsonl, None, &mut out).unwrap();
    out
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The entries of a transcript's active branch (leaf = the last entry), root first, computed
/// here independently of the importer.
fn active_branch(entries: &[Value]) -> Vec<Value> {
    let by_id: HashMap<&str, &Value> =
        entries[1..].iter().map(|e| (e["id"].as_str().unwrap(), e)).collect();
    let mut branch = Vec::new();
    let mut current = entries.last();
    while let Some(entry) = current.filter(|e| e["type"] != "session") {
        branch.push(entry.clone());
        current = entry["parentId"].as_str().map(|p| by_id[p]);
    }
    branch.reverse();
    branch
}

/// What of a message must survive import and export: role, text, thinking, tool calls, tool
/// results, images, and the assistant's model, usage and stop reason.
fn essence(message: &Value) -> Value {
    let parts: Vec<Value> = match &message["content"] {
        Value::String(text) => vec![json!({"type": "text", "text": text})],
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p["type"].as_str().unwrap() {
                "text" => json!({"type": "text", "text": p["text"]}),
                "thinking" => json!({"type": "thinking", "thinking": p["thinking"],
                                     "signature": p["thinkingSignature"]}),
                "toolCall" => json!({"type": "toolCall", "id": p["id"], "name": p["name"],
                                     "arguments": p["arguments"]}),
                "image" => json!({"type": "image", "data": p["data"], "mimeType": p["mimeType"]}),
                other => panic!("unexpected part {other}"),
            })
            .collect(),
        other => panic!("unexpected content {other}"),
    };
    let usage = &message["usage"];
    json!({
        "role": message["role"],
        "content": parts,
        "timestamp": message["timestamp"],
        "toolCallId": message["toolCallId"],
        "toolName": message["toolName"],
        "isError": message["isError"],
        "model": message["model"],
        "provider": message["provider"],
        "stopReason": message["stopReason"],
        "usage": if usage.is_null() { Value::Null } else {
            json!([usage["input"], usage["output"], usage["cacheRead"], usage["cacheWrite"]])
        },
    })
}

/// The `message` entries of a list of entries: (entry id, essence).
fn messages_of(entries: &[Value]) -> Vec<(String, Value)> {
    entries
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| (e["id"].as_str().unwrap().to_owned(), essence(&e["message"])))
        .collect()
}

#[test]
fn import_then_export_keeps_every_message_of_the_active_branch() {
    let data = tempfile::tempdir().unwrap();
    let (summary, out, err) = import(data.path(), &fixture());
    assert_eq!(summary.skipped, 0, "{err}");
    assert_eq!(summary.sessions_new, 4, "{out}");
    assert!(out.contains(&format!("{MAIN_KEY}: new, ")), "{out}");
    // The abandoned branch and the session without a transcript are notes, not failures.
    assert!(
        err.contains("3 entries on other branches than the active one were not imported"),
        "{err}"
    );
    assert!(err.contains("its settings are imported without messages"), "{err}");

    for (key, agent, id) in TRANSCRIPTS {
        let original = lines(&std::fs::read(transcript_of(&fixture(), agent, id)).unwrap());
        let exported = lines(&export_bytes(data.path(), key));
        assert_eq!(exported[0]["type"], "session");
        assert_eq!(exported[0]["id"], id, "{key}: the header names the session id");
        assert_eq!(exported[0]["version"], 3);

        let branch = active_branch(&original);
        let want = messages_of(&branch);
        let got = messages_of(&exported[1..]);
        assert!(!want.is_empty());
        assert_eq!(got.len(), want.len(), "{key}: {got:#?}");
        for ((want_id, want), (got_id, got)) in want.iter().zip(&got) {
            assert_eq!(got_id, want_id, "{key}: entry ids come back");
            assert_eq!(got, want, "{key}: entry {want_id}");
        }
        // A single chain: every entry is the child of the one before.
        assert_eq!(exported[1]["parentId"], Value::Null);
        for pair in exported[1..].windows(2) {
            assert_eq!(pair[1]["parentId"], pair[0]["id"], "{key}");
        }
    }

    // The abandoned branch (delete notes.md) is not part of the session.
    let main = String::from_utf8(export_bytes(data.path(), MAIN_KEY)).unwrap();
    for abandoned in ["6e7f8091", "7f8091a2", "8091a2b3", "rm notes.md"] {
        assert!(!main.contains(abandoned), "{abandoned} was on an abandoned branch");
    }
    // Its summary, and the telegram session's compaction, come back as what they were.
    let kinds = |bytes: &[u8]| -> Vec<String> {
        lines(bytes)[1..].iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
    };
    assert!(kinds(main.as_bytes()).contains(&"branch_summary".to_owned()));
    let telegram = export_bytes(data.path(), TELEGRAM_KEY);
    let compaction = lines(&telegram).into_iter().find(|e| e["type"] == "compaction").unwrap();
    assert_eq!(compaction["firstKeptEntryId"], "33cc44dd", "the context resumes where it did");
}

#[test]
fn a_second_round_trip_exports_the_same_bytes() {
    let data = tempfile::tempdir().unwrap();
    import(data.path(), &fixture());
    let first = export_bytes(data.path(), MAIN_KEY);

    // The export, laid out as an OpenClaw state directory, imported into a fresh data dir.
    let state = tempfile::tempdir().unwrap();
    let sessions = state.path().join("agents/main/sessions");
    std::fs::create_dir_all(&sessions).unwrap();
    std::fs::write(sessions.join(format!("{MAIN_ID}.jsonl")), &first).unwrap();
    let entry =
        json!({MAIN_KEY: {"sessionId": MAIN_ID, "sessionStartedAt": 1_772_355_600_000_i64}});
    std::fs::write(sessions.join("sessions.json"), entry.to_string()).unwrap();
    let again = tempfile::tempdir().unwrap();
    let (summary, _, err) = import(again.path(), state.path());
    assert_eq!(summary.skipped, 0, "{err}");
    assert_eq!(export_bytes(again.path(), MAIN_KEY), first);
}

#[test]
fn importing_twice_adds_nothing() {
    let data = tempfile::tempdir().unwrap();
    let (first, ..) = import(data.path(), &fixture());
    assert!(first.messages_added > 0);
    let before: Vec<Vec<u8>> =
        TRANSCRIPTS.iter().map(|(k, ..)| export_bytes(data.path(), k)).collect();

    let (second, out, err) = import(data.path(), &fixture());
    assert_eq!(second.skipped, 0, "{err}");
    assert_eq!(second.messages_added, 0, "{out}");
    assert_eq!(second.messages_present, first.messages_added);
    assert_eq!(
        (second.sessions_new, second.sessions_updated, second.sessions_unchanged),
        (0, 0, 4),
        "{out}"
    );
    let after: Vec<Vec<u8>> =
        TRANSCRIPTS.iter().map(|(k, ..)| export_bytes(data.path(), k)).collect();
    assert_eq!(after, before);

    let store = Store::open(&data.path().join("store"), &StoreOptions::default()).unwrap();
    let entry = store.index_entry(&SessionKey::new(MAIN_KEY).unwrap()).unwrap().unwrap();
    let branch =
        active_branch(&lines(&std::fs::read(transcript_of(&fixture(), "main", MAIN_ID)).unwrap()));
    // Every message entry of the branch, plus its branch summary; no duplicates.
    let expected = messages_of(&branch).len() + 1;
    assert_eq!(entry.message_count, expected as u64);
    // Settings from sessions.json came along.
    let sub = store.index_entry(&SessionKey::new(SUBAGENT_KEY).unwrap()).unwrap().unwrap();
    assert_eq!(sub.spawned_by.as_deref(), Some(MAIN_KEY));
    assert_eq!(sub.label.as_deref(), Some("research"));
    store.shutdown().unwrap();
}

// ---- the real binary ---------------------------------------------------------------------------

fn beamclaw(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_beamclaw"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("BEAMCLAW_HOME")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A copy of the fixture whose files a test may damage.
fn fixture_copy() -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for agent in ["main", "ops"] {
        let from = fixture().join("agents").join(agent).join("sessions");
        let to = copy.path().join("agents").join(agent).join("sessions");
        std::fs::create_dir_all(&to).unwrap();
        for file in std::fs::read_dir(&from).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
        }
    }
    copy
}

#[test]
fn the_binary_reports_a_malformed_line_imports_the_rest_and_exits_non_zero() {
    let state = fixture_copy();
    let path = transcript_of(state.path(), "main", MAIN_ID);
    let original = std::fs::read_to_string(&path).unwrap();
    let mut damaged: Vec<&str> = original.lines().collect();
    // Line 7 is the second tool result (read TODO.md); cut it in half.
    let half = &damaged[6][..damaged[6].len() / 2];
    damaged[6] = half;
    std::fs::write(&path, damaged.join("\n") + "\n").unwrap();

    let data = tempfile::tempdir().unwrap();
    let run = beamclaw(data.path(), &["import", "openclaw", state.path().to_str().unwrap()]);
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert!(!run.status.success(), "exits non-zero when a line was skipped\n{stderr}");
    assert_eq!(run.status.code(), Some(1));
    let location = format!("{}:7: invalid JSON: ", path.display());
    assert!(stderr.contains(&location), "names file:line and the reason:\n{stderr}");
    assert!(stderr.contains("1 lines, parts or sessions were skipped"), "{stderr}");
    assert!(stdout.contains("4 sessions (4 new"), "{stdout}");

    // Everything else is there.
    let list = beamclaw(data.path(), &["sessions", "list"]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let listed = text(&list.stdout);
    for key in [MAIN_KEY, TELEGRAM_KEY, OPS_KEY, SUBAGENT_KEY] {
        assert!(listed.contains(key), "{key} in\n{listed}");
    }
    let show = beamclaw(data.path(), &["sessions", "show", MAIN_KEY, "--limit", "100"]);
    assert!(show.status.success(), "{}", text(&show.stderr));
    let shown = text(&show.stdout);
    assert!(shown.contains("-> exec {\"command\":\"ls -la\"} [toolu_01A]"), "{shown}");
    assert!(shown.contains("<- exec (error) [toolu_03A]"), "{shown}");
    assert!(shown.contains("(thinking) A 1x1 PNG. Now the file."), "{shown}");
    assert!(!shown.contains("renew passport"), "the damaged line is not imported:\n{shown}");
    assert!(shown.contains("display name Workspace tour"), "{shown}");

    // The repaired file completes the session on a second import, which then succeeds.
    std::fs::write(&path, &original).unwrap();
    let again = beamclaw(data.path(), &["import", "openclaw", state.path().to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains(&format!(
            "{}:7: messages from here on were added at the end of the session, after 6 messages",
            path.display()
        )),
        "a late message's place is reported: {}",
        text(&again.stderr)
    );
    assert!(
        text(&again.stdout).contains(&format!("{MAIN_KEY}: updated, 1 messages added")),
        "{}",
        text(&again.stdout)
    );
}

#[test]
fn the_binary_exports_jsonl_to_stdout_and_to_a_file() {
    let data = tempfile::tempdir().unwrap();
    let run = beamclaw(data.path(), &["import", "openclaw", fixture().to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));

    let stdout = beamclaw(data.path(), &["sessions", "export", OPS_KEY, "--format", "jsonl"]);
    assert!(stdout.status.success(), "{}", text(&stdout.stderr));
    let file = data.path().join("out.jsonl");
    let to_file = beamclaw(
        data.path(),
        &["sessions", "export", OPS_KEY, "--format", "jsonl", "--out", file.to_str().unwrap()],
    );
    assert!(to_file.status.success(), "{}", text(&to_file.stderr));
    assert_eq!(std::fs::read(&file).unwrap(), stdout.stdout);
    let original = lines(&std::fs::read(transcript_of(&fixture(), "ops", OPS_ID)).unwrap());
    assert_eq!(messages_of(&lines(&stdout.stdout)[1..]), messages_of(&original[1..]));

    let unknown = beamclaw(data.path(), &["sessions", "export", "agent:main:nope"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains("no session \"agent:main:nope\""),
        "{}",
        text(&unknown.stderr)
    );
}

#[test]
fn beamclaw_home_names_the_data_directory_when_no_flag_does() {
    let home = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_beamclaw"))
        .args(["import", "openclaw", fixture().to_str().unwrap()])
        .env("BEAMCLAW_HOME", home.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(home.path().join("store").is_dir(), "the store lives in <data>/store");
    let list = Command::new(env!("CARGO_BIN_EXE_beamclaw"))
        .args(["sessions", "list", "--agent", "ops"])
        .env("BEAMCLAW_HOME", home.path())
        .output()
        .unwrap();
    let listed = text(&list.stdout);
    assert!(listed.contains(OPS_KEY) && !listed.contains(MAIN_KEY), "{listed}");
}

#[test]
fn a_data_directory_without_a_store_says_so() {
    let data = tempfile::tempdir().unwrap();
    let run = beamclaw(data.path(), &["sessions", "list"]);
    assert!(!run.status.success());
    let stderr = text(&run.stderr);
    assert!(stderr.contains(&format!("no sessions in {}", data.path().display())), "{stderr}");
    assert!(!data.path().join("store").exists(), "listing creates no store");
}

#[test]
fn a_running_node_holding_the_store_is_named_with_its_directory_and_process() {
    let data = tempfile::tempdir().unwrap();
    // This test process plays the node: it holds the store open, as `beamclaw up` does.
    let store = Store::open(&data.path().join("store"), &StoreOptions::default()).unwrap();
    let pid = std::process::id();
    for args in [
        vec!["sessions", "list"],
        vec!["sessions", "show", MAIN_KEY],
        vec!["sessions", "export", MAIN_KEY],
        vec!["import", "openclaw", fixture().to_str().unwrap()],
    ] {
        let run = beamclaw(data.path(), &args);
        let stderr = text(&run.stderr);
        assert!(!run.status.success(), "{args:?}");
        assert!(
            stderr.contains(&format!("the data directory {} is in use", data.path().display())),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains(&format!("process {pid}")), "{args:?} names the holder: {stderr}");
        assert!(stderr.contains("stop the node first"), "{args:?}: {stderr}");
    }
    store.shutdown().unwrap();
    let run = beamclaw(data.path(), &["sessions", "list"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
}
