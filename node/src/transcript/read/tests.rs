use super::*;
use crate::transcript::write::{ExportSession, write_transcript};
use proptest::prelude::*;
use serde_json::json;

const HEADER: &str = r#"{"type":"session","version":3,"id":"6c1f0000-0000-4000-8000-000000000001","timestamp":"2026-01-02T03:04:05.000Z","cwd":"/w"}"#;

fn file() -> &'static Path {
    Path::new("s.jsonl")
}

/// A transcript from entries given as JSON values (one line each), after the header.
fn transcript(entries: &[Value]) -> String {
    let mut text = String::from(HEADER);
    for entry in entries {
        text.push('\n');
        text.push_str(&entry.to_string());
    }
    text.push('\n');
    text
}

fn parse(text: &str) -> Transcript {
    parse_transcript(file(), text.as_bytes()).unwrap()
}

fn message(id: &str, parent: Option<&str>, message: Value) -> Value {
    json!({"type": "message", "id": id, "parentId": parent, "timestamp": "2026-01-02T03:04:06.000Z", "message": message})
}

fn user(id: &str, parent: Option<&str>, text: &str) -> Value {
    message(id, parent, json!({"role": "user", "content": text, "timestamp": 1000}))
}

fn assistant(id: &str, parent: Option<&str>, text: &str) -> Value {
    message(
        id,
        parent,
        json!({"role": "assistant", "content": [{"type": "text", "text": text}], "provider": "anthropic",
               "model": "claude-sonnet-4-5", "stopReason": "stop", "timestamp": 2000,
               "usage": {"input": 10, "output": 5, "cacheRead": 1, "cacheWrite": 0, "totalTokens": 16,
                         "cost": {"input": 0.1, "output": 0.2, "cacheRead": 0, "cacheWrite": 0, "total": 0.3}}}),
    )
}

fn ids(t: &Transcript) -> Vec<&str> {
    t.messages.iter().map(|m| m.message.id.as_str()).collect()
}

fn reasons(t: &Transcript) -> Vec<String> {
    t.issues.iter().map(ToString::to_string).collect()
}

#[test]
fn every_message_shape_converts() {
    let t = parse(&transcript(&[
        message(
            "u1",
            None,
            json!({"role": "user", "timestamp": 1000, "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "data": "aGk=", "mimeType": "image/png"}]}),
        ),
        message(
            "a1",
            Some("u1"),
            json!({"role": "assistant", "api": "anthropic-messages", "provider": "anthropic",
                   "model": "claude-sonnet-4-5", "stopReason": "toolUse", "timestamp": 2000,
                   "usage": {"input": 100, "output": 20, "cacheRead": 5, "cacheWrite": 2, "totalTokens": 127},
                   "content": [
                       {"type": "thinking", "thinking": "hmm", "thinkingSignature": "sig"},
                       {"type": "text", "text": "running"},
                       {"type": "toolCall", "id": "call_1", "name": "exec", "arguments": {"cmd": "ls"}}]}),
        ),
        message(
            "t1",
            Some("a1"),
            json!({"role": "toolResult", "toolCallId": "call_1", "toolName": "exec", "isError": true,
                   "details": {"exitCode": 1}, "timestamp": 3000,
                   "content": [{"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"},
                               {"type": "image", "data": "AAA=", "mimeType": "image/jpeg"}]}),
        ),
    ]));
    assert!(t.issues.is_empty(), "{:?}", reasons(&t));
    assert_eq!(t.header.id, "6c1f0000-0000-4000-8000-000000000001");
    assert_eq!(t.header.timestamp_ms, Some(1_767_323_045_000));
    assert_eq!(ids(&t), ["pi:u1", "pi:a1", "pi:t1"]);

    let u = &t.messages[0].message;
    assert_eq!(u.role, Role::User);
    assert_eq!(u.timestamp_ms, 1000);
    assert_eq!(u.author, IMPORT_AUTHOR);
    assert_eq!(
        u.content,
        vec![
            ContentPart::Text { text: "look".into() },
            ContentPart::Image {
                mime_type: "image/png".into(),
                reference: "data:image/png;base64,aGk=".into()
            },
        ]
    );

    let a = &t.messages[1].message;
    assert_eq!(a.role, Role::Assistant);
    assert_eq!(a.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(a.provider.as_deref(), Some("anthropic"));
    assert_eq!(a.stop_reason, Some(StopReason::ToolUse));
    assert_eq!(a.usage, Some(Usage { input: 100, output: 20, cache_read: 5, cache_write: 2 }));
    assert_eq!(a.reply_to, vec!["pi:u1".to_owned()]);
    assert_eq!(
        a.content,
        vec![
            ContentPart::Thinking { thinking: "hmm".into(), signature: Some("sig".into()) },
            ContentPart::Text { text: "running".into() },
            ContentPart::ToolCall {
                id: "call_1".into(),
                name: "exec".into(),
                arguments: json!({"cmd": "ls"})
            },
        ]
    );

    let r = &t.messages[2].message;
    assert_eq!(r.role, Role::ToolResult);
    assert_eq!(
        r.content,
        vec![
            ContentPart::ToolResult {
                tool_call_id: "call_1".into(),
                tool_name: "exec".into(),
                content: "line 1\nline 2".into(),
                is_error: true,
            },
            ContentPart::Image {
                mime_type: "image/jpeg".into(),
                reference: "data:image/jpeg;base64,AAA=".into()
            },
        ]
    );
    assert_eq!(t.messages[2].line, 4);
}

#[test]
fn only_the_active_branch_is_imported() {
    // u1 -> a1 -> u2 -> a2 (abandoned), and u1 -> a1 -> u3 -> a3 (the leaf: the last line).
    let t = parse(&transcript(&[
        user("u1", None, "hi"),
        assistant("a1", Some("u1"), "hello"),
        user("u2", Some("a1"), "abandoned question"),
        assistant("a2", Some("u2"), "abandoned answer"),
        json!({"type": "branch_summary", "id": "b1", "parentId": "a1", "timestamp": "2026-01-02T03:05:00.000Z",
               "fromId": "a2", "summary": "we tried another way"}),
        user("u3", Some("b1"), "second try"),
        assistant("a3", Some("u3"), "better"),
    ]));
    assert_eq!(ids(&t), ["pi:u1", "pi:a1", "pi:branch_summary:b1", "pi:u3", "pi:a3"]);
    assert_eq!(t.messages[2].message.role, Role::System);
    assert_eq!(t.messages[2].message.text_content(), "we tried another way");
    assert_eq!(
        reasons(&t),
        ["s.jsonl: 2 entries on other branches than the active one were not imported"]
    );
    assert_eq!(t.skipped(), 0);
}

#[test]
fn a_compaction_summary_goes_before_its_first_kept_message_and_nothing_is_dropped() {
    let t = parse(&transcript(&[
        user("u1", None, "old question"),
        assistant("a1", Some("u1"), "old answer"),
        user("u2", Some("a1"), "kept question"),
        assistant("a2", Some("u2"), "kept answer"),
        json!({"type": "compaction", "id": "c1", "parentId": "a2", "timestamp": "2026-01-02T04:00:00.000Z",
               "summary": "the user asked old things", "firstKeptEntryId": "u2", "tokensBefore": 50000}),
        user("u3", Some("c1"), "new question"),
        assistant("a3", Some("u3"), "new answer"),
    ]));
    assert!(t.issues.is_empty(), "{:?}", reasons(&t));
    assert_eq!(ids(&t), ["pi:u1", "pi:a1", "pi:compaction:c1", "pi:u2", "pi:a2", "pi:u3", "pi:a3"]);
    let summary = &t.messages[2].message;
    assert_eq!(summary.role, Role::System);
    assert_eq!(summary.text_content(), "the user asked old things");
    assert_eq!(t.compactions, 1);
}

#[test]
fn a_compaction_whose_first_kept_entry_is_unknown_stays_where_it_is() {
    let t = parse(&transcript(&[
        user("u1", None, "q"),
        json!({"type": "compaction", "id": "c1", "parentId": "u1", "summary": "s", "firstKeptEntryId": "zz"}),
        assistant("a1", Some("c1"), "a"),
    ]));
    assert_eq!(ids(&t), ["pi:u1", "pi:compaction:c1", "pi:a1"]);
}

#[test]
fn a_malformed_line_is_reported_and_skipped_and_the_rest_is_imported() {
    let mut text = transcript(&[user("u1", None, "first")]);
    text.push_str(
        "{\"type\":\"message\",\"id\":\"a1\",\"parentId\":\"u1\",\"message\":{\"role\":\n",
    );
    text.push_str(&user("u2", Some("a1"), "after the damage").to_string());
    text.push('\n');
    text.push_str(&assistant("a2", Some("u2"), "answer").to_string());
    text.push('\n');
    let t = parse(&text);
    assert_eq!(ids(&t), ["pi:u1", "pi:u2", "pi:a2"]);
    let issues = reasons(&t);
    // The damaged entry's links were salvaged: u2 finds its parent, no bridging is needed.
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(issues[0].starts_with("s.jsonl:3: invalid JSON: "), "{issues:?}");
    assert_eq!(t.skipped(), 1);
    // Both user messages are answered by the only reply after them.
    assert_eq!(t.messages[2].message.reply_to, ["pi:u1", "pi:u2"]);
}

#[test]
fn a_damaged_branch_point_keeps_the_abandoned_branch_out() {
    // a1 is where the user went back to; its line is cut short. The active branch (b1, a3)
    // hangs off it, after an abandoned branch (u2, a2) that also hangs off it.
    let mut text = transcript(&[user("u1", None, "q")]);
    // As pi writes it: type, id, parentId, timestamp, then the message (json! sorts keys).
    text.push_str(r#"{"type":"message","id":"a1","parentId":"u1","timestamp":"2026-01-02T03:04:06.000Z","message":{"role":"assi"#);
    text.push('\n');
    for entry in [
        user("u2", Some("a1"), "abandoned"),
        assistant("a2", Some("u2"), "abandoned answer"),
        user("b1", Some("a1"), "the other way"),
        assistant("a3", Some("b1"), "kept"),
    ] {
        text.push_str(&entry.to_string());
        text.push('\n');
    }
    let t = parse(&text);
    assert_eq!(ids(&t), ["pi:u1", "pi:b1", "pi:a3"]);
    let issues = reasons(&t);
    assert_eq!(issues.len(), 2, "{issues:?}");
    assert!(issues[0].starts_with("s.jsonl:3: "), "{issues:?}");
    assert!(issues[1].contains("2 entries on other branches"), "{issues:?}");
    assert_eq!(t.skipped(), 1);
}

#[test]
fn an_unreadable_parent_line_is_bridged_to_the_line_before() {
    let mut text = transcript(&[user("u1", None, "q")]);
    text.push_str("\u{1}garbage\n");
    text.push_str(&assistant("a1", Some("lost"), "a").to_string());
    text.push('\n');
    let t = parse(&text);
    assert_eq!(ids(&t), ["pi:u1", "pi:a1"]);
    let issues = reasons(&t);
    assert!(issues[0].starts_with("s.jsonl:3: invalid JSON: "), "{issues:?}");
    assert_eq!(
        issues[1],
        "s.jsonl:4: parent \"lost\" is missing; linked to the entry on the line before"
    );
}

#[test]
fn links_are_salvaged_only_when_they_are_plain_entry_ids() {
    assert_eq!(
        salvage_links(br#"{"type":"message","id":"a1","parentId":null,"message":{"#),
        Some(("a1".to_owned(), None))
    );
    assert_eq!(
        salvage_links(br#"{"type":"message","id":"a1","parentId":"u1","mess"#),
        Some(("a1".to_owned(), Some("u1".to_owned())))
    );
    assert_eq!(salvage_links(br#"{"type":"message","id":"a1""#), None, "no parentId yet");
    assert_eq!(salvage_links(br#"{"type":"message","id":"a\"1","parentId":null"#), None);
    assert_eq!(salvage_links(br#"{"type":"message","id":"a:1","parentId":null"#), None);
    assert_eq!(salvage_links(b"\xff\xfe"), None);
}

#[test]
fn entries_that_do_not_fit_their_shape_are_skipped_with_the_reason() {
    let t = parse(&transcript(&[
        user("u1", None, "q"),
        message(
            "a1",
            Some("u1"),
            json!({"role": "assistant", "content": [{"type": "toolCall", "name": "x"}]}),
        ),
        message("b1", Some("a1"), json!({"role": "bashExecution", "command": "ls", "output": ""})),
        json!({"type": "mystery", "id": "m1", "parentId": "b1"}),
        json!({"type": "message", "id": "bad id!", "parentId": "m1"}),
        json!({"type": "message", "parentId": "m1"}),
        user("u1", Some("m1"), "duplicate id"),
        message(
            "a2",
            Some("m1"),
            json!({"role": "assistant", "stopReason": "eaten", "content": [
            {"type": "text", "text": "ok"}, {"type": "hologram"}]}),
        ),
    ]));
    assert_eq!(ids(&t), ["pi:u1", "pi:a2"]);
    let issues = reasons(&t);
    assert_eq!(
        issues,
        [
            "s.jsonl:3: message.content[0].id: must be a string",
            "s.jsonl:4: message role \"bashExecution\" is not supported (user, assistant, toolResult, custom)",
            "s.jsonl:5: entry type \"mystery\" is not known",
            "s.jsonl:6: entry id \"bad id!\" is not allowed: 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'",
            "s.jsonl:7: not a transcript entry: a \"message\" entry without an id",
            "s.jsonl:8: entry id \"u1\" was already used on line 2",
            "s.jsonl:9: content part type \"hologram\" is not supported; the part was dropped",
            "s.jsonl:9: stop reason \"eaten\" is not known; left out",
        ]
    );
    assert_eq!(t.messages[1].message.content, vec![ContentPart::Text { text: "ok".into() }]);
    assert_eq!(t.skipped(), 7);
}

#[test]
fn files_that_are_not_transcripts_are_refused_whole() {
    let error = |text: &str| parse_transcript(file(), text.as_bytes()).unwrap_err().to_string();
    assert_eq!(
        error(""),
        "s.jsonl: the file is empty (a transcript starts with a session header line)"
    );
    assert_eq!(
        error("\n  \n"),
        "s.jsonl: the file is empty (a transcript starts with a session header line)"
    );
    assert!(error("{nope").starts_with("s.jsonl:1: not a transcript header: "));
    assert!(error(&user("u1", None, "x").to_string()).contains("its type is not \"session\""));
    assert_eq!(
        error(r#"{"type":"session","id":"s"}"#),
        "s.jsonl:1: transcript version 1 is not supported (versions 2 to 3); open the session once \
         with OpenClaw, which migrates it"
    );
}

#[test]
fn a_newer_version_is_read_with_a_note_and_version_2_hook_messages_are_custom() {
    let text = format!(
        "{}\n{}\n",
        r#"{"type":"session","version":2,"id":"s"}"#,
        message(
            "h1",
            None,
            json!({"role": "hookMessage", "content": "injected", "customType": "x"})
        )
    );
    let t = parse(&text);
    assert_eq!(ids(&t), ["pi:custom_message:h1"]);
    assert_eq!(t.messages[0].message.role, Role::System);

    let t = parse(&format!(
        "{}\n{}\n",
        r#"{"type":"session","version":4,"id":"s"}"#,
        user("u1", None, "x")
    ));
    assert_eq!(reasons(&t)[0], "s.jsonl:1: transcript version 4 is newer than 3; read as 3");
    assert_eq!(t.skipped(), 0);
}

#[test]
fn session_info_and_thinking_level_changes_are_kept_as_fallbacks() {
    let t = parse(&transcript(&[
        json!({"type": "session_info", "id": "i1", "parentId": null, "name": "first name"}),
        json!({"type": "thinking_level_change", "id": "k1", "parentId": "i1", "thinkingLevel": "high"}),
        json!({"type": "model_change", "id": "m1", "parentId": "k1", "provider": "openai", "modelId": "gpt-4o"}),
        json!({"type": "label", "id": "l1", "parentId": "m1", "targetId": "i1", "label": "x"}),
        json!({"type": "custom", "id": "x1", "parentId": "l1", "customType": "ext", "data": {}}),
        json!({"type": "session_info", "id": "i2", "parentId": "x1", "name": "second name"}),
    ]));
    assert!(t.messages.is_empty());
    assert!(t.issues.is_empty(), "{:?}", reasons(&t));
    assert_eq!(t.session_name.as_deref(), Some("second name"));
    assert_eq!(t.thinking_level.as_deref(), Some("high"));
}

#[test]
fn a_trailing_unanswered_question_is_listed_by_the_reply_before_it() {
    let t = parse(&transcript(&[
        user("u1", None, "q1"),
        assistant("a1", Some("u1"), "a1"),
        user("u2", Some("a1"), "q2 that never got an answer"),
    ]));
    assert_eq!(ids(&t), ["pi:u1", "pi:a1", "pi:u2"]);
    assert_eq!(t.messages[1].message.reply_to, ["pi:u1", "pi:u2"]);
}

#[test]
fn questions_without_any_reply_get_a_synthesized_aborted_one() {
    let t = parse(&transcript(&[user("u1", None, "q1"), user("u2", Some("u1"), "q2")]));
    assert_eq!(ids(&t), ["pi:u1", "pi:u2", "pi:noreply:u1"]);
    let reply = &t.messages[2].message;
    assert_eq!(reply.role, Role::Assistant);
    assert!(reply.content.is_empty());
    assert_eq!(reply.stop_reason, Some(StopReason::Aborted));
    assert_eq!(reply.reply_to, ["pi:u1", "pi:u2"]);
}

#[test]
fn a_reply_never_lists_more_user_messages_than_allowed() {
    let count = REPLY_TO_COUNT_MAX + 10;
    let mut entries = Vec::new();
    let mut parent: Option<String> = None;
    for n in 0..count {
        let id = format!("u{n}");
        entries.push(user(&id, parent.as_deref(), "q"));
        parent = Some(id);
    }
    entries.push(assistant("a1", parent.as_deref(), "finally"));
    let t = parse(&transcript(&entries));
    let mut answered = 0;
    for m in &t.messages {
        assert!(m.message.reply_to.len() <= REPLY_TO_COUNT_MAX);
        answered += m.message.reply_to.len();
    }
    assert_eq!(answered, count);
    assert_eq!(t.messages.len(), count + 2, "one synthesized reply for the overflow");
}

#[test]
fn a_parent_cycle_ends_the_branch_instead_of_looping() {
    let t = parse(&transcript(&[user("u1", Some("a1"), "q"), assistant("a1", Some("u1"), "a")]));
    assert_eq!(ids(&t), ["pi:u1", "pi:a1"]);
    assert!(reasons(&t)[0].contains("parent links loop back"), "{:?}", reasons(&t));
}

#[test]
fn crlf_line_ends_and_blank_lines_are_accepted() {
    let text = transcript(&[user("u1", None, "q"), assistant("a1", Some("u1"), "a")])
        .replace('\n', "\r\n\r\n");
    let t = parse(&text);
    assert_eq!(ids(&t), ["pi:u1", "pi:a1"]);
    assert_eq!(t.messages[1].line, 5);
}

#[test]
fn an_overlong_line_is_skipped_without_being_parsed() {
    let long = user("u2", Some("u1"), &"x".repeat(TRANSCRIPT_LINE_BYTES_MAX));
    let t = parse(&transcript(&[user("u1", None, "q"), long, assistant("a1", Some("u2"), "a")]));
    assert_eq!(ids(&t), ["pi:u1", "pi:a1"]);
    assert!(reasons(&t)[0].starts_with("s.jsonl:3: line is "), "{:?}", reasons(&t));
}

/// What must survive an export and a re-import: everything but the bookkeeping fields the
/// import derives (author, reply_to) and usage where there was none (pi always has one).
type Comparable = (
    String,
    Role,
    Vec<ContentPart>,
    i64,
    Option<String>,
    Option<String>,
    Usage,
    Option<StopReason>,
);

fn comparable(m: &Message) -> Comparable {
    (
        m.id.clone(),
        m.role,
        m.content.clone(),
        m.timestamp_ms,
        m.model.clone(),
        m.provider.clone(),
        m.usage.unwrap_or_default(),
        m.stop_reason,
    )
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z ]{0,12}", "\\PC{0,8}", Just(String::from("line\nbreak \"quoted\" \\ tab\t"))]
}

fn arb_part(role: Role) -> BoxedStrategy<ContentPart> {
    let text = arb_text().prop_map(|text| ContentPart::Text { text });
    let image = ("[a-z]{1,5}", "[A-Za-z0-9+/]{0,16}").prop_map(|(sub, data)| ContentPart::Image {
        mime_type: format!("image/{sub}"),
        reference: format!("data:image/{sub};base64,{data}"),
    });
    match role {
        Role::User | Role::System => prop_oneof![text, image].boxed(),
        _ => {
            let thinking = (arb_text(), proptest::option::of("[a-z0-9]{1,8}"))
                .prop_map(|(thinking, signature)| ContentPart::Thinking { thinking, signature });
            let call = ("[a-z_0-9]{1,10}", "[a-z]{1,6}", arb_text()).prop_map(|(id, name, arg)| {
                ContentPart::ToolCall { id, name, arguments: json!({"arg": arg, "n": [1, 2]}) }
            });
            prop_oneof![text, thinking, call].boxed()
        }
    }
}

fn arb_message(n: usize) -> BoxedStrategy<Message> {
    let id = format!("pi:{n:08x}");
    prop_oneof![Just(Role::User), Just(Role::Assistant), Just(Role::ToolResult)]
        .prop_flat_map(move |role| {
            let id = id.clone();
            let parts = proptest::collection::vec(arb_part(role), 0..4);
            let usage =
                (0u64..1_000_000, 0u64..1000, 0u64..1000, 0u64..1000).prop_map(|(i, o, r, w)| {
                    Usage { input: i, output: o, cache_read: r, cache_write: w }
                });
            let stop = prop_oneof![
                Just(StopReason::Stop),
                Just(StopReason::Length),
                Just(StopReason::ToolUse),
                Just(StopReason::Error),
                Just(StopReason::Aborted)
            ];
            let result = ("[a-z_0-9]{1,10}", "[a-z]{0,6}", arb_text(), any::<bool>());
            (
                parts,
                usage,
                stop,
                result,
                0i64..4_000_000_000_000,
                proptest::option::of("[a-z0-9-]{1,12}"),
            )
                .prop_map(
                    move |(parts, usage, stop, (call, tool, output, is_error), ts, model)| {
                        let mut m = Message::text(id.clone(), role, "", ts);
                        m.content = parts;
                        match role {
                            Role::Assistant => {
                                m.usage = Some(usage);
                                m.stop_reason = Some(stop);
                                m.model = model.clone();
                                m.provider = model.map(|_| "anthropic".to_owned());
                            }
                            Role::ToolResult => {
                                let images: Vec<ContentPart> = m
                                    .content
                                    .drain(..)
                                    .filter(|p| matches!(p, ContentPart::Image { .. }))
                                    .collect();
                                m.content = std::iter::once(ContentPart::ToolResult {
                                    tool_call_id: call,
                                    tool_name: tool,
                                    content: output,
                                    is_error,
                                })
                                .chain(images)
                                .collect();
                            }
                            _ => {}
                        }
                        m
                    },
                )
        })
        .boxed()
}

fn arb_messages() -> impl Strategy<Value = Vec<Message>> {
    (0usize..12).prop_flat_map(|len| (0..len).map(arb_message).collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Export then import gives back every message: id, role, content parts, timestamp, model,
    /// provider, usage and stop reason.
    #[test]
    fn export_then_import_keeps_every_message(messages in arb_messages()) {
        let session = ExportSession { session_id: "6c1f0000-0000-4000-8000-000000000009", started_at_ms: 5, messages: &messages };
        let mut bytes = Vec::new();
        write_transcript(&session, &mut bytes).unwrap();
        let t = parse_transcript(file(), &bytes).unwrap();
        prop_assert!(t.issues.is_empty(), "{:?}", t.issues);
        prop_assert_eq!(&t.header.id, "6c1f0000-0000-4000-8000-000000000009");
        // The import may add a synthesized reply (when no assistant message exists); the
        // exported messages come back in order, unchanged.
        let back: Vec<_> = t.messages.iter().map(|m| &m.message)
            .filter(|m| !m.id.starts_with("pi:noreply:")).map(comparable).collect();
        let sent: Vec<_> = messages.iter().map(comparable).collect();
        prop_assert_eq!(back, sent);
    }
}

#[test]
fn system_messages_round_trip_as_the_entries_they_came_from() {
    let t = parse(&transcript(&[
        user("u1", None, "old"),
        assistant("a1", Some("u1"), "old answer"),
        user("u2", Some("a1"), "kept"),
        json!({"type": "compaction", "id": "c1", "parentId": "u2", "summary": "sum", "firstKeptEntryId": "u2"}),
        json!({"type": "custom_message", "id": "x1", "parentId": "c1", "customType": "ext", "content": "note", "display": true}),
        json!({"type": "branch_summary", "id": "b1", "parentId": "x1", "fromId": "zz", "summary": "branch"}),
        assistant("a2", Some("b1"), "new"),
    ]));
    let messages: Vec<Message> = t.messages.iter().map(|m| m.message.clone()).collect();
    let mut bytes = Vec::new();
    write_transcript(
        &ExportSession { session_id: "s", started_at_ms: 0, messages: &messages },
        &mut bytes,
    )
    .unwrap();
    let lines: Vec<Value> = String::from_utf8(bytes.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "session",
            "message",
            "message",
            "compaction",
            "message",
            "custom_message",
            "branch_summary",
            "message"
        ]
    );
    // The compaction resumes the context at the entry after it, which was its first kept one.
    assert_eq!(lines[3]["id"], "c1");
    assert_eq!(lines[3]["firstKeptEntryId"], "u2");
    assert_eq!(lines[4]["id"], "u2");
    assert_eq!(lines[5]["customType"], crate::transcript::write::SYSTEM_CUSTOM_TYPE);
    // Every entry is the child of the one before.
    for pair in lines[1..].windows(2) {
        assert_eq!(pair[1]["parentId"], pair[0]["id"]);
    }
    assert_eq!(lines[1]["parentId"], Value::Null);

    let again = parse_transcript(file(), &bytes).unwrap();
    let again: Vec<&str> = again.messages.iter().map(|m| m.message.id.as_str()).collect();
    assert_eq!(again, ids(&t));
}
