//! The session document on one replica: messages, ids, history, segments, metadata, reset, fork,
//! and reload from chunks.

// Helpers outside #[test] functions unwrap too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used)]

use beamclaw_crdt::{
    AppendOutcome, ContentPart, DocError, FieldPatch, HISTORY_LIMIT_MAX, Message, MetaPatch, Role,
    SegmentLimits, SessionDoc, SessionKey, Usage, writer_actor,
};

fn key(s: &str) -> SessionKey {
    SessionKey::new(s).unwrap()
}

fn new_doc() -> SessionDoc {
    SessionDoc::create(key("agent:main:main"), "main", "s1", &writer_actor("node-a", 1), 1_000)
        .unwrap()
}

fn user(id: &str, text: &str) -> Message {
    Message::user_text(id, text, 1_700_000_000_000)
}

fn reply(id: &str, to: &[&str], partial: bool) -> Message {
    let mut m = Message::text(id, Role::Assistant, format!("answer {id}"), 1_700_000_000_001);
    m.reply_to = to.iter().map(|s| s.to_string()).collect();
    m.partial = partial;
    m
}

fn ids<M: std::borrow::Borrow<Message>>(messages: &[M]) -> Vec<String> {
    messages.iter().map(|m| m.borrow().id.clone()).collect()
}

fn reload(doc: &mut SessionDoc, incarnation: u64) -> SessionDoc {
    let snapshot = doc.snapshot();
    SessionDoc::load(doc.key(), &writer_actor("node-a", incarnation), snapshot).unwrap()
}

#[test]
fn appended_message_reads_back_with_every_field() {
    let mut doc = new_doc();
    let message = Message {
        id: "m1".into(),
        role: Role::Assistant,
        content: vec![
            ContentPart::Thinking { thinking: "hmm".into(), signature: Some("sig".into()) },
            ContentPart::Text { text: "hello".into() },
            ContentPart::ToolCall {
                id: "t1".into(),
                name: "exec".into(),
                arguments: serde_json::json!({"cmd": "ls"}),
            },
            ContentPart::Image { mime_type: "image/png".into(), reference: "sha256:ab".into() },
        ],
        timestamp_ms: 42,
        author: "node-a".into(),
        model: Some("claude".into()),
        provider: Some("anthropic".into()),
        usage: Some(Usage { input: 1, output: 2, cache_read: 3, cache_write: 4 }),
        stop_reason: Some(beamclaw_crdt::StopReason::ToolUse),
        idempotency_key: Some("idem".into()),
        run_id: Some("run".into()),
        reply_to: vec!["u1".into()],
        partial: false,
    };
    assert_eq!(doc.append(&message).unwrap(), AppendOutcome::Appended);
    assert_eq!(doc.get("m1").unwrap(), Some(message.clone()));
    let mut reloaded = reload(&mut doc, 2);
    assert_eq!(reloaded.get("m1").unwrap(), Some(message));
    assert_eq!(reloaded.heads_digest(), doc.heads_digest());
}

#[test]
fn appending_an_existing_id_is_a_duplicate_no_op() {
    let mut doc = new_doc();
    assert_eq!(doc.append(&user("u1", "hi")).unwrap(), AppendOutcome::Appended);
    doc.take_chunks();
    assert_eq!(doc.append(&user("u1", "different")).unwrap(), AppendOutcome::Duplicate);
    assert!(doc.take_chunks().is_empty(), "a duplicate must not write a change");
    assert_eq!(doc.message_count(), 1);
    assert_eq!(doc.get("u1").unwrap().unwrap().text_content(), "hi");
}

#[test]
fn invalid_messages_are_refused_with_what_was_wrong() {
    let mut doc = new_doc();
    assert!(matches!(doc.append(&user("", "x")), Err(DocError::MessageIdEmpty)));
    let long_id = "x".repeat(beamclaw_crdt::MESSAGE_ID_BYTES_MAX + 1);
    assert!(matches!(doc.append(&user(&long_id, "x")), Err(DocError::MessageIdTooLong { .. })));
    let huge = "y".repeat(beamclaw_crdt::MESSAGE_BODY_BYTES_MAX);
    assert!(matches!(doc.append(&user("big", &huge)), Err(DocError::BodyTooLarge { .. })));
    assert_eq!(doc.message_count(), 0);
}

#[test]
fn idempotency_key_finds_the_message() {
    let mut doc = new_doc();
    let mut m = user("u1", "hi");
    m.idempotency_key = Some("k1".into());
    doc.append(&m).unwrap();
    assert_eq!(doc.find_by_idempotency_key("k1"), Some("u1"));
    assert_eq!(doc.find_by_idempotency_key("k2"), None);
    let reloaded = reload(&mut doc, 2);
    assert_eq!(reloaded.find_by_idempotency_key("k1"), Some("u1"));
}

#[test]
fn partial_checkpoint_is_replaced_by_the_final_message() {
    let mut doc = new_doc();
    doc.append(&user("u1", "question")).unwrap();
    doc.append(&reply("r1", &["u1"], true)).unwrap();
    assert_eq!(
        ids(&doc.unanswered_user_messages().unwrap()),
        ["u1"],
        "a checkpoint answers nothing"
    );
    let mut last = reply("r1", &["u1"], false);
    last.content = vec![ContentPart::Text { text: "the full answer".into() }];
    assert_eq!(doc.upsert(&last).unwrap(), AppendOutcome::Replaced);
    assert_eq!(doc.message_count(), 2);
    assert_eq!(doc.get("r1").unwrap(), Some(last.clone()));
    assert!(doc.unanswered_user_messages().unwrap().is_empty());
    let reloaded = reload(&mut doc, 2);
    assert_eq!(reloaded.get("r1").unwrap(), Some(last));
    assert!(reloaded.unanswered_user_messages().unwrap().is_empty());
}

#[test]
fn replace_of_an_unknown_id_is_an_error_and_upsert_appends() {
    let mut doc = new_doc();
    assert!(matches!(doc.replace(&user("nope", "x")), Err(DocError::UnknownMessage { .. })));
    assert_eq!(doc.upsert(&user("u1", "x")).unwrap(), AppendOutcome::Appended);
    assert_eq!(doc.message_count(), 1);
}

#[test]
fn unanswered_user_messages_are_those_no_final_reply_lists() {
    let mut doc = new_doc();
    for id in ["u1", "u2", "u3"] {
        doc.append(&user(id, id)).unwrap();
    }
    doc.append(&reply("r1", &["u1", "u2"], false)).unwrap();
    let mut tool = Message::text("t1", Role::ToolResult, "out", 5);
    tool.reply_to = vec!["u3".into()]; // only assistant replies answer
    doc.append(&tool).unwrap();
    assert_eq!(ids(&doc.unanswered_user_messages().unwrap()), ["u3"]);
}

#[test]
fn history_pages_backwards_with_a_before_cursor() {
    let mut doc = new_doc();
    doc.set_segment_limits(SegmentLimits { messages_max: 4, bytes_max: 1 << 20 });
    for i in 0..10 {
        doc.append(&user(&format!("m{i}"), "x")).unwrap();
    }
    assert_eq!(ids(&doc.history(3, None).unwrap()), ["m7", "m8", "m9"]);
    assert_eq!(ids(&doc.history(3, Some("m7")).unwrap()), ["m4", "m5", "m6"]);
    assert_eq!(ids(&doc.history(3, Some("m4")).unwrap()), ["m1", "m2", "m3"]);
    assert_eq!(ids(&doc.history(3, Some("m1")).unwrap()), ["m0"]);
    assert!(doc.history(3, Some("m0")).unwrap().is_empty());
    assert_eq!(doc.history(100, None).unwrap().len(), 10);
    assert!(doc.history(0, None).unwrap().is_empty());
    assert!(matches!(doc.history(3, Some("zz")), Err(DocError::UnknownMessage { .. })));
}

#[test]
fn history_limit_is_capped() {
    let mut doc = new_doc();
    for i in 0..(HISTORY_LIMIT_MAX + 5) {
        doc.append(&user(&format!("m{i}"), "x")).unwrap();
    }
    let page = doc.history(usize::MAX, None).unwrap();
    assert_eq!(page.len(), HISTORY_LIMIT_MAX);
    assert_eq!(page.last().unwrap().id, format!("m{}", HISTORY_LIMIT_MAX + 4));
}

#[test]
fn segments_roll_over_by_count_and_by_bytes_and_keep_order() {
    let mut doc = new_doc();
    doc.set_segment_limits(SegmentLimits { messages_max: 3, bytes_max: 350 });
    for i in 0..7 {
        doc.append(&user(&format!("c{i}"), "x")).unwrap();
    }
    let segments = |doc: &mut SessionDoc| doc.part_heads().len() - 1;
    assert_eq!(segments(&mut doc), 3, "7 messages at 3 per segment");
    doc.append(&user("big1", &"b".repeat(300))).unwrap();
    doc.append(&user("big2", &"b".repeat(300))).unwrap();
    assert_eq!(segments(&mut doc), 5, "each 300-byte message crosses the 350-byte limit");
    let all = ids(&doc.history(100, None).unwrap());
    assert_eq!(all, ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "big1", "big2"]);
    let reloaded = reload(&mut doc, 2);
    assert_eq!(ids(&reloaded.history(100, None).unwrap()), all);
    assert_eq!(reloaded.message_count(), 9);
}

#[test]
fn appends_touch_only_the_newest_segment() {
    let mut doc = new_doc();
    doc.set_segment_limits(SegmentLimits { messages_max: 2, bytes_max: 1 << 20 });
    for i in 0..6 {
        doc.append(&user(&format!("m{i}"), "x")).unwrap();
    }
    doc.take_chunks();
    doc.append(&user("m6", "x")).unwrap();
    let chunks = doc.take_chunks();
    assert_eq!(chunks.len(), 1);
    assert_eq!(
        chunks[0].part,
        beamclaw_crdt::PartId::Segment { session_id: "s1".into(), index: 3 }
    );
}

#[test]
fn metadata_fields_are_set_cleared_and_left() {
    let mut doc = new_doc();
    let meta = doc.meta().unwrap();
    assert_eq!((meta.session_id.as_str(), meta.agent_id.as_str()), ("s1", "main"));
    assert_eq!(meta.session_key, "agent:main:main");
    assert_eq!(meta.created_at_ms, 1_000);
    let patch = MetaPatch {
        label: FieldPatch::Set("work".into()),
        model_override: FieldPatch::Set("gpt".into()),
        fast_mode: FieldPatch::Set(true),
        spawn_depth: FieldPatch::Set(1),
        ..MetaPatch::default()
    };
    assert!(doc.patch_meta(&patch).unwrap());
    assert!(!doc.patch_meta(&MetaPatch::default()).unwrap(), "all Leave writes nothing");
    let clear = MetaPatch { label: FieldPatch::Clear, ..MetaPatch::default() };
    assert!(doc.patch_meta(&clear).unwrap());
    let meta = doc.meta().unwrap();
    assert_eq!(meta.label, None);
    assert_eq!(meta.model_override.as_deref(), Some("gpt"));
    assert_eq!(meta.fast_mode, Some(true));
    assert_eq!(meta.spawn_depth, Some(1));
    let too_long = MetaPatch {
        label: FieldPatch::Set("l".repeat(2000)),
        display_name: FieldPatch::Set("ok".into()),
        ..MetaPatch::default()
    };
    assert!(matches!(doc.patch_meta(&too_long), Err(DocError::MetaValueTooLong { .. })));
    assert_eq!(doc.meta().unwrap().display_name, None, "a refused patch writes nothing");
    let reloaded = reload(&mut doc, 2);
    assert_eq!(reloaded.meta().unwrap(), doc.meta().unwrap());
}

#[test]
fn usage_adds_to_the_token_counters() {
    let mut doc = new_doc();
    doc.add_usage(&Usage { input: 10, output: 5, cache_read: 1, cache_write: 0 }).unwrap();
    doc.add_usage(&Usage { input: 1, output: 1, cache_read: 0, cache_write: 0 }).unwrap();
    doc.record_compaction().unwrap();
    let meta = doc.meta().unwrap();
    assert_eq!((meta.input_tokens, meta.output_tokens, meta.total_tokens), (11, 6, 18));
    assert_eq!(meta.compaction_count, 1);
    let overflow = Usage { input: u64::MAX, output: 0, cache_read: 0, cache_write: 0 };
    assert!(matches!(doc.add_usage(&overflow), Err(DocError::CounterOverflow { .. })));
}

#[test]
fn a_final_message_and_its_usage_are_one_change_of_one_segment() {
    let mut doc = new_doc();
    doc.set_segment_limits(SegmentLimits { messages_max: 2, bytes_max: 1 << 20 });
    doc.append(&user("u1", "hi")).unwrap();
    doc.upsert(&reply("r1", &["u1"], true)).unwrap();
    doc.take_chunks();
    let usage = Usage { input: 7, output: 3, cache_read: 0, cache_write: 0 };
    let outcome = doc.upsert_with_usage(&reply("r1", &["u1"], false), &usage).unwrap();
    assert_eq!(outcome, AppendOutcome::Replaced);
    let chunks = doc.take_chunks();
    assert_eq!(chunks.len(), 1, "no manifest change: {chunks:?}");
    assert_eq!(
        chunks[0].part,
        beamclaw_crdt::PartId::Segment { session_id: "s1".into(), index: 0 }
    );
    // The next turn's output lands in a new segment; the totals are the sums over both.
    doc.append(&user("u2", "again")).unwrap();
    doc.upsert_with_usage(&reply("r2", &["u2"], false), &usage).unwrap();
    // A checkpoint that arrives after the final one is not written; its usage still counts.
    let late = doc.upsert_with_usage(&reply("r2", &["u2"], true), &usage).unwrap();
    assert_eq!(late, AppendOutcome::Duplicate);
    let meta = doc.meta().unwrap();
    assert_eq!((meta.input_tokens, meta.output_tokens, meta.total_tokens), (21, 9, 30));
    assert_eq!(doc.token_counts(), [21, 9, 30]);
    let reloaded = reload(&mut doc, 2);
    assert_eq!(reloaded.token_counts(), [21, 9, 30]);
    assert_eq!(ids(&reloaded.history(10, None).unwrap()), ["u1", "r1", "u2", "r2"]);
    let overflow = Usage { input: u64::MAX, output: 0, cache_read: 0, cache_write: 0 };
    let refused = doc.upsert_with_usage(&reply("r3", &["u2"], false), &overflow);
    assert!(matches!(refused, Err(DocError::CounterOverflow { .. })));
    assert!(doc.get("r3").unwrap().is_none(), "a refused write writes nothing");
}

#[test]
fn reset_archives_the_transcript_and_starts_a_new_one() {
    let mut doc = new_doc();
    doc.append(&user("u1", "old")).unwrap();
    doc.add_usage(&Usage { input: 3, output: 4, cache_read: 0, cache_write: 0 }).unwrap();
    doc.reset("s2", "new", 5_000).unwrap();
    assert_eq!(doc.session_id(), "s2");
    assert_eq!(doc.message_count(), 0);
    assert!(doc.history(10, None).unwrap().is_empty());
    assert_eq!(doc.meta().unwrap().total_tokens, 0);
    assert_eq!(doc.meta().unwrap().session_started_at_ms, 5_000);
    let archives = doc.archives().unwrap();
    assert_eq!(archives.len(), 1);
    assert_eq!((archives[0].session_id.as_str(), archives[0].reason.as_str()), ("s1", "new"));
    assert_eq!(ids(&doc.archived_history("s1", 10, None).unwrap()), ["u1"]);
    doc.append(&user("u1", "same id, new transcript")).unwrap();
    assert_eq!(doc.message_count(), 1);
    assert!(matches!(doc.reset("s1", "again", 6_000), Err(DocError::SessionId { .. })));
    assert!(matches!(
        doc.archived_history("nope", 1, None),
        Err(DocError::UnknownTranscript { .. })
    ));
    let reloaded = reload(&mut doc, 2);
    assert_eq!(reloaded.session_id(), "s2");
    assert_eq!(ids(&reloaded.archived_history("s1", 10, None).unwrap()), ["u1"]);
    assert_eq!(reloaded.get("u1").unwrap().unwrap().text_content(), "same id, new transcript");
}

#[test]
fn fork_copies_settings_and_messages_up_to_a_message() {
    let mut doc = new_doc();
    let patch = MetaPatch { model_override: FieldPatch::Set("m".into()), ..MetaPatch::default() };
    doc.patch_meta(&patch).unwrap();
    for i in 0..5 {
        doc.append(&user(&format!("m{i}"), "x")).unwrap();
    }
    let fork =
        doc.fork(key("agent:main:fork"), "f1", &writer_actor("node-a", 1), Some("m2"), 9).unwrap();
    assert_eq!(ids(&fork.history(10, None).unwrap()), ["m0", "m1", "m2"]);
    assert_eq!(fork.meta().unwrap().model_override.as_deref(), Some("m"));
    assert_eq!(fork.meta().unwrap().session_id, "f1");
    let all = doc.fork(key("agent:main:f2"), "f2", &writer_actor("n", 1), None, 9).unwrap();
    assert_eq!(all.message_count(), 5);
    let missing = doc.fork(key("agent:main:f3"), "f3", &writer_actor("n", 1), Some("zz"), 9);
    assert!(matches!(missing, Err(DocError::UnknownMessage { .. })));
}

#[test]
fn load_from_increments_in_any_order_equals_the_original() {
    let mut doc = new_doc();
    doc.set_segment_limits(SegmentLimits { messages_max: 2, bytes_max: 1 << 20 });
    let mut chunks = doc.take_chunks();
    for i in 0..7 {
        doc.append(&user(&format!("m{i}"), "x")).unwrap();
        chunks.extend(doc.take_chunks());
    }
    doc.patch_meta(&MetaPatch { label: FieldPatch::Set("l".into()), ..MetaPatch::default() })
        .unwrap();
    chunks.extend(doc.take_chunks());
    chunks.reverse();
    let mut loaded = SessionDoc::load(doc.key(), &writer_actor("node-a", 2), chunks).unwrap();
    assert_eq!(loaded.heads_digest(), doc.heads_digest());
    assert_eq!(loaded.history(10, None).unwrap(), doc.history(10, None).unwrap());
    assert!(loaded.take_chunks().is_empty(), "loaded chunks count as persisted");
}

#[test]
fn load_names_the_part_of_a_corrupt_chunk() {
    let mut doc = new_doc();
    doc.append(&user("m0", "some text")).unwrap();
    let increments = doc.take_chunks();
    let snapshot = doc.snapshot();
    let is_segment = |c: &beamclaw_crdt::Chunk| c.part != beamclaw_crdt::PartId::Manifest;
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 3] = [
        ("truncated", |b| b.truncate(b.len() - 3)),
        ("bit flip", |b| {
            let middle = b.len() / 2;
            b[middle] ^= 0x10;
        }),
        ("garbage appended", |b| b.extend_from_slice(b"garbage")),
    ];
    for chunks in [&increments, &snapshot] {
        for (what, damage) in damages {
            let mut chunks = chunks.clone();
            damage(&mut chunks.iter_mut().find(|c| is_segment(c)).unwrap().bytes);
            let err = SessionDoc::load(doc.key(), &writer_actor("n", 2), chunks).unwrap_err();
            assert!(matches!(err, DocError::ChunkDecode { .. }), "{what}: {err}");
            assert!(err.to_string().contains("segment s1#0"), "{what}: {err}");
        }
    }
}

#[test]
fn load_without_a_manifest_is_an_error() {
    let mut doc = new_doc();
    doc.append(&user("m0", "x")).unwrap();
    let chunks: Vec<_> = doc
        .take_chunks()
        .into_iter()
        .filter(|c| c.part != beamclaw_crdt::PartId::Manifest)
        .collect();
    let err = SessionDoc::load(doc.key(), &writer_actor("n", 2), chunks).unwrap_err();
    assert!(matches!(err, DocError::MissingManifest { .. }), "{err}");
}

#[test]
fn load_refuses_the_chunks_of_another_session() {
    let mut doc = new_doc();
    let chunks = doc.take_chunks();
    let err =
        SessionDoc::load(&key("agent:main:other"), &writer_actor("n", 2), chunks).unwrap_err();
    // The manifest's genesis is derived from the key: another key's chunks bring a second one.
    assert!(matches!(err, DocError::MalformedPart { .. }), "{err}");
    assert!(err.to_string().contains("2 genesis changes"), "{err}");
}

#[test]
fn a_chunk_of_another_segment_is_refused() {
    let mut doc = new_doc();
    doc.append(&user("m0", "x")).unwrap();
    let mut chunks = doc.take_chunks();
    for chunk in &mut chunks {
        if let beamclaw_crdt::PartId::Segment { index, .. } = &mut chunk.part {
            *index = 7;
        }
    }
    let err = SessionDoc::load(doc.key(), &writer_actor("n", 2), chunks).unwrap_err();
    assert!(err.to_string().contains("segment s1#7"), "{err}");
    assert!(err.to_string().contains("2 genesis changes"), "{err}");
}

#[test]
fn writer_actor_length_is_checked() {
    let err = SessionDoc::create(key("agent:main:x"), "main", "s", &[1, 2, 3], 0).unwrap_err();
    assert!(matches!(err, DocError::ActorLength { len: 3 }));
    let mut doc = new_doc();
    assert!(doc.set_actor(&[0; 8]).is_err());
    doc.set_actor(&writer_actor("node-a", 7)).unwrap();
    doc.append(&user("m", "x")).unwrap();
}

#[test]
fn approx_bytes_grows_with_messages() {
    let mut doc = new_doc();
    let empty = doc.approx_bytes();
    for i in 0..20 {
        doc.append(&user(&format!("m{i}"), &"x".repeat(100))).unwrap();
    }
    assert!(doc.approx_bytes() > empty + 20 * 100);
}
