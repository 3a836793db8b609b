//! The session document across replicas: deterministic genesis, concurrent appends and
//! duplicates, chunk pushes, the sync protocol and its size limits, and per-message bytes.

// Helpers outside #[test] functions unwrap too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used)]

use beamclaw_crdt::{
    Chunk, DocError, FieldPatch, MESSAGE_BODY_BYTES_MAX, Message, MetaPatch, PartId, PeerSyncState,
    Role, SYNC_MESSAGE_BYTES_MAX, SegmentLimits, SessionDoc, SessionKey, SyncMessage, Usage,
    writer_actor,
};

fn key() -> SessionKey {
    SessionKey::new("agent:main:main").unwrap()
}

fn replica(node: &str, session_id: &str) -> SessionDoc {
    SessionDoc::create(key(), "main", session_id, &writer_actor(node, 1), 1_000).unwrap()
}

fn user(id: &str, text: &str) -> Message {
    Message::user_text(id, text, 1_700_000_000_000)
}

fn ids(messages: &[std::sync::Arc<Message>]) -> Vec<String> {
    messages.iter().map(|m| m.id.clone()).collect()
}

fn push(from: &mut SessionDoc, to: &mut SessionDoc) {
    for chunk in from.take_chunks() {
        to.apply_chunk(&chunk).unwrap();
    }
}

/// Runs the sync protocol between two replicas until neither has anything to send; returns the
/// number of bytes exchanged.
fn sync_pair(
    a: &mut SessionDoc,
    a_state: &mut PeerSyncState,
    b: &mut SessionDoc,
    b_state: &mut PeerSyncState,
) -> usize {
    run_sync(a, a_state, b, b_state).bytes
}

/// What one run of the sync protocol exchanged.
struct Exchanged {
    bytes: usize,
    messages: usize,
}

/// Runs the sync protocol, `a` speaking first, until neither side has anything to send.
fn run_sync(
    a: &mut SessionDoc,
    a_state: &mut PeerSyncState,
    b: &mut SessionDoc,
    b_state: &mut PeerSyncState,
) -> Exchanged {
    let mut exchanged = Exchanged { bytes: 0, messages: 0 };
    for _round in 0..100 {
        let a_to_b = a.generate_sync_message(a_state).unwrap();
        if let Some(message) = &a_to_b {
            exchanged.bytes += message.wire_bytes();
            exchanged.messages += 1;
            b.receive_sync_message(b_state, message).unwrap();
        }
        let b_to_a = b.generate_sync_message(b_state).unwrap();
        if let Some(message) = &b_to_a {
            exchanged.bytes += message.wire_bytes();
            exchanged.messages += 1;
            a.receive_sync_message(a_state, message).unwrap();
        }
        if a_to_b.is_none() && b_to_a.is_none() {
            return exchanged;
        }
    }
    panic!("sync did not terminate in 100 rounds");
}

fn full_sync(a: &mut SessionDoc, b: &mut SessionDoc) -> usize {
    sync_pair(a, &mut PeerSyncState::new(), b, &mut PeerSyncState::new())
}

#[test]
fn replicas_that_create_the_same_session_independently_keep_both_messages() {
    let mut a = replica("node-a", "s1");
    let mut b = replica("node-b", "s1");
    a.append(&user("from-a", "hello from a")).unwrap();
    b.append(&user("from-b", "hello from b")).unwrap();
    let a_chunks = a.take_chunks();
    let b_chunks = b.take_chunks();
    for chunk in &b_chunks {
        a.apply_chunk(chunk).unwrap();
    }
    for chunk in &a_chunks {
        b.apply_chunk(chunk).unwrap();
    }
    assert_eq!(a.heads_digest(), b.heads_digest());
    assert_eq!(a.message_count(), 2);
    let history = a.history(10, None).unwrap();
    assert_eq!(history, b.history(10, None).unwrap());
    let mut shown = ids(&history);
    shown.sort();
    assert_eq!(shown, ["from-a", "from-b"]);
}

#[test]
fn replicas_that_roll_over_independently_share_the_new_segment() {
    let limits = SegmentLimits { messages_max: 2, bytes_max: 1 << 20 };
    let mut a = replica("node-a", "s1");
    let mut b = replica("node-b", "s1");
    a.set_segment_limits(limits);
    b.set_segment_limits(limits);
    a.append(&user("m0", "x")).unwrap();
    a.append(&user("m1", "x")).unwrap();
    push(&mut a, &mut b);
    // Partition: both fill segment 0 and roll over to segment 1 on their own.
    a.append(&user("a2", "x")).unwrap();
    b.append(&user("b2", "x")).unwrap();
    // The manifest, segment 0 and segment 1.
    assert_eq!(a.part_heads().len(), 3);
    assert_eq!(b.part_heads().len(), 3);
    full_sync(&mut a, &mut b);
    assert_eq!(a.heads_digest(), b.heads_digest());
    assert_eq!(a.part_heads().len(), 3, "one segment 1, not two");
    assert_eq!(a.message_count(), 4);
    assert_eq!(a.history(10, None).unwrap(), b.history(10, None).unwrap());
}

#[test]
fn concurrent_creates_with_different_session_ids_hide_nothing() {
    let mut a = replica("node-a", "sa");
    let mut b = replica("node-b", "sb");
    a.append(&user("a1", "x")).unwrap();
    b.append(&user("b1", "x")).unwrap();
    full_sync(&mut a, &mut b);
    assert_eq!(a.heads_digest(), b.heads_digest());
    assert_eq!(a.session_id(), b.session_id());
    let (current, other) = if a.session_id() == "sa" { ("sa", "sb") } else { ("sb", "sa") };
    assert_eq!(a.message_count(), 1);
    let archives = a.archives().unwrap();
    assert_eq!(archives.len(), 1);
    assert_eq!(archives[0].session_id, other);
    assert_eq!(archives[0].reason, beamclaw_crdt::doc::ARCHIVE_REASON_CONCURRENT);
    assert_eq!(a.archived_history(other, 10, None).unwrap().len(), 1);
    assert_eq!(a.history(10, None).unwrap()[0].id, if current == "sa" { "a1" } else { "b1" });
}

#[test]
fn the_same_id_appended_on_two_replicas_is_shown_once_preferring_the_final() {
    let mut a = replica("node-a", "s1");
    let mut b = replica("node-b", "s1");
    a.append(&user("u1", "q")).unwrap();
    full_sync(&mut a, &mut b);
    let mut checkpoint = Message::text("r1", Role::Assistant, "partial", 2);
    checkpoint.partial = true;
    checkpoint.reply_to = vec!["u1".into()];
    let mut last = Message::text("r1", Role::Assistant, "final", 3);
    last.reply_to = vec!["u1".into()];
    a.append(&checkpoint).unwrap();
    b.append(&last).unwrap();
    full_sync(&mut a, &mut b);
    for doc in [&mut a, &mut b] {
        assert_eq!(doc.message_count(), 2);
        let history = doc.history(10, None).unwrap();
        assert_eq!(ids(&history), ["u1", "r1"]);
        assert_eq!(history[1].text_content(), "final");
        assert!(doc.unanswered_user_messages().unwrap().is_empty());
    }
}

#[test]
fn the_same_idempotency_key_on_two_replicas_resolves_to_one_message() {
    let mut a = replica("node-a", "s1");
    let mut b = replica("node-b", "s1");
    full_sync(&mut a, &mut b);
    let mut ma = user("ua", "q");
    ma.idempotency_key = Some("k".into());
    let mut mb = user("ub", "q");
    mb.idempotency_key = Some("k".into());
    a.append(&ma).unwrap();
    b.append(&mb).unwrap();
    full_sync(&mut a, &mut b);
    let found = a.find_by_idempotency_key("k").map(str::to_owned);
    assert!(found.is_some());
    assert_eq!(found.as_deref(), b.find_by_idempotency_key("k"));
    assert_eq!(found.as_deref(), Some(a.history(10, None).unwrap()[0].id.as_str()));
}

#[test]
fn concurrent_usage_on_two_replicas_adds_up() {
    let mut a = replica("node-a", "s1");
    let mut b = replica("node-b", "s1");
    let usage = Usage { input: 10, output: 1, cache_read: 0, cache_write: 0 };
    a.add_usage(&usage).unwrap();
    b.add_usage(&usage).unwrap();
    b.add_usage(&usage).unwrap();
    full_sync(&mut a, &mut b);
    assert_eq!(a.meta().unwrap().input_tokens, 30);
    assert_eq!(b.meta().unwrap().total_tokens, 33);
}

#[test]
fn a_chunk_before_its_dependency_waits_then_applies() {
    let mut a = replica("node-a", "s1");
    let mut b = SessionDoc::load(&key(), &writer_actor("node-b", 1), a.take_chunks()).unwrap();
    a.append(&user("m0", "x")).unwrap();
    let first = a.take_chunks();
    a.append(&user("m1", "x")).unwrap();
    let second = a.take_chunks();
    let outcome = b.apply_chunk(&second[0]).unwrap();
    assert!(!outcome.changed && outcome.waiting_for_dependencies);
    let outcome = b.apply_chunk(&first[0]).unwrap();
    assert!(outcome.changed && !outcome.waiting_for_dependencies);
    assert_eq!(ids(&b.history(10, None).unwrap()), ["m0", "m1"]);
    let again = b.apply_chunk(&first[0]).unwrap();
    assert!(!again.changed, "a duplicated chunk changes nothing");
}

#[test]
fn a_replica_that_missed_pushes_catches_up_in_one_exchange_not_one_change_per_round() {
    let mut a = replica("node-a", "s1");
    let mut b = SessionDoc::load(&key(), &writer_actor("node-b", 1), a.take_chunks()).unwrap();
    let (mut a_state, mut b_state) = (PeerSyncState::new(), PeerSyncState::new());
    a.append(&user("m0", "x")).unwrap();
    sync_pair(&mut a, &mut a_state, &mut b, &mut b_state);
    // b misses twelve pushes (it was down), then receives the thirteenth: a change whose
    // dependencies it lacks, which Automerge keeps waiting.
    for i in 1..=12 {
        a.append(&user(&format!("m{i}"), "x")).unwrap();
        a.take_chunks();
    }
    a.append(&user("m13", "x")).unwrap();
    for chunk in a.take_chunks() {
        assert!(b.apply_chunk(&chunk).unwrap().waiting_for_dependencies);
    }
    // Anti-entropy then starts from the persisted states.
    let mut a_state = PeerSyncState::decode(&a_state.encode()).unwrap();
    let mut b_state = PeerSyncState::decode(&b_state.encode()).unwrap();
    let messages = run_sync(&mut a, &mut a_state, &mut b, &mut b_state).messages;
    assert_eq!(a.heads_digest(), b.heads_digest());
    assert_eq!(b.message_count(), 14);
    // Fetching the gap one change per round trip took 26 messages here.
    assert!(messages <= 6, "{messages} sync messages");
}

#[test]
fn an_old_orphan_does_not_make_a_later_push_look_unstored() {
    let mut a = replica("node-a", "s1");
    let mut b = SessionDoc::load(&key(), &writer_actor("node-b", 1), a.take_chunks()).unwrap();
    let mut c = SessionDoc::load(&key(), &writer_actor("node-c", 1), b.snapshot()).unwrap();
    c.append(&user("c1", "x")).unwrap();
    c.take_chunks();
    c.append(&user("c2", "x")).unwrap();
    // c's second change reaches b without its first: it waits.
    for chunk in c.take_chunks() {
        assert!(b.apply_chunk(&chunk).unwrap().waiting_for_dependencies);
    }
    // a's push does not depend on c's changes: it is applied (and stored) in full.
    a.append(&user("a1", "x")).unwrap();
    for chunk in a.take_chunks() {
        let outcome = b.apply_chunk(&chunk).unwrap();
        assert!(outcome.changed && !outcome.waiting_for_dependencies, "{outcome:?}");
    }
    assert!(b.get("a1").unwrap().is_some());
}

#[test]
fn heads_tracked_from_pushed_changes_match_the_applied_document() {
    let mut a = replica("node-a", "s1");
    let mut b = SessionDoc::load(&key(), &writer_actor("node-b", 1), a.take_chunks()).unwrap();
    a.append(&user("m0", "x")).unwrap();
    push(&mut a, &mut b);
    b.take_chunks(); // what a replica persists after applying
    let mut tracker = b.heads_tracker();
    assert_eq!(tracker.digest(), b.heads_digest());
    // Three pushes taken without applying them; one repeated.
    let mut taken = Vec::new();
    for i in 1..=3 {
        a.append(&user(&format!("m{i}"), "x")).unwrap();
        for chunk in a.take_chunks() {
            assert_eq!(tracker.advance(&chunk), Some(true), "push {i}");
            taken.push(chunk);
        }
    }
    assert_eq!(tracker.advance(&taken[2]), Some(false), "a head again brings nothing");
    assert_eq!(tracker.digest(), a.heads_digest());
    assert_ne!(tracker.digest(), b.heads_digest());
    // Applied at once, as already persisted: the digests agree and nothing is written twice.
    let outcome = b.apply_persisted_chunks(&taken).unwrap();
    assert!(outcome.changed && !outcome.waiting_for_dependencies);
    assert_eq!(b.heads_digest(), tracker.digest());
    assert!(b.take_chunks().is_empty(), "the pushes are on disk already");
    assert_eq!(ids(&b.history(10, None).unwrap()), ["m0", "m1", "m2", "m3"]);
}

#[test]
fn a_tracker_refuses_what_it_cannot_account_for_without_applying() {
    let mut a = replica("node-a", "s1");
    let mut b = SessionDoc::load(&key(), &writer_actor("node-b", 1), a.take_chunks()).unwrap();
    // A segment b does not have yet.
    a.append(&user("m0", "x")).unwrap();
    let started = a.take_chunks();
    assert_eq!(b.heads_tracker().advance(&started[0]), None);
    for chunk in &started {
        b.apply_chunk(chunk).unwrap();
    }
    b.take_chunks();
    let mut tracker = b.heads_tracker();
    let before = tracker.digest();
    // A gap: the second push before the first.
    a.append(&user("m1", "x")).unwrap();
    let first = a.take_chunks();
    a.append(&user("m2", "x")).unwrap();
    let second = a.take_chunks();
    assert_eq!(tracker.advance(&second[0]), None);
    // The manifest (a reset or a settings change may switch the transcript).
    let label = MetaPatch { label: FieldPatch::Set("x".into()), ..MetaPatch::default() };
    assert!(a.patch_meta(&label).unwrap());
    let manifest = a.take_chunks();
    assert_eq!(manifest.len(), 1);
    assert_eq!(manifest[0].part, PartId::Manifest);
    assert_eq!(tracker.advance(&manifest[0]), None);
    // Bytes that do not parse, and a whole document.
    let mut garbled = first[0].clone();
    let last = garbled.bytes.len() - 1;
    garbled.bytes[last] ^= 0xff;
    assert_eq!(tracker.advance(&garbled), None);
    let snapshot = a.snapshot();
    assert_eq!(tracker.advance(&snapshot[1]), None);
    // Another writer's first push to the segment starts with its genesis, which has no
    // dependencies: refused, though b holds the same genesis.
    let mut c = replica("node-c", "s1");
    c.append(&user("c0", "x")).unwrap();
    let theirs = c.take_chunks();
    let segment = theirs.iter().find(|ch| ch.part != PartId::Manifest).unwrap();
    assert_eq!(tracker.advance(segment), None);
    assert_eq!(tracker.digest(), before, "a refusal moves nothing");
    // A part that holds a change waiting for a missing one is not tracked until applied.
    b.apply_chunk(&second[0]).unwrap();
    assert_eq!(b.heads_tracker().advance(&first[0]), None);
}

#[test]
fn sync_converges_after_a_partition_where_both_sides_appended() {
    let limits = SegmentLimits { messages_max: 5, bytes_max: 1 << 20 };
    let mut a = replica("node-a", "s1");
    let mut b = replica("node-b", "s1");
    a.set_segment_limits(limits);
    b.set_segment_limits(limits);
    let (mut a_state, mut b_state) = (PeerSyncState::new(), PeerSyncState::new());
    for i in 0..7 {
        a.append(&user(&format!("m{i}"), "x")).unwrap();
    }
    sync_pair(&mut a, &mut a_state, &mut b, &mut b_state);
    assert_eq!(a.heads_digest(), b.heads_digest());
    for i in 0..6 {
        a.append(&user(&format!("a{i}"), "x")).unwrap();
        b.append(&user(&format!("b{i}"), "x")).unwrap();
    }
    b.reset("s2", "new", 9).unwrap();
    b.append(&user("after-reset", "x")).unwrap();
    sync_pair(&mut a, &mut a_state, &mut b, &mut b_state);
    assert_eq!(a.heads_digest(), b.heads_digest());
    assert_eq!(a.session_id(), "s2");
    assert_eq!(a.history(100, None).unwrap(), b.history(100, None).unwrap());
    assert_eq!(a.archived_history("s1", 100, None).unwrap().len(), 19);
    assert_eq!(
        a.archived_history("s1", 100, None).unwrap(),
        b.archived_history("s1", 100, None).unwrap()
    );
}

#[test]
fn a_change_whose_message_was_lost_is_sent_again_when_the_peer_asks_for_it() {
    let mut a = replica("node-a", "s1");
    let mut b = replica("node-b", "s1");
    let (mut a_state, mut b_state) = (PeerSyncState::new(), PeerSyncState::new());
    a.append(&user("m0", "x")).unwrap();
    sync_pair(&mut a, &mut a_state, &mut b, &mut b_state);
    a.append(&user("from-a", "x")).unwrap();
    b.append(&user("from-b", "x")).unwrap();
    // The message carrying a's change is lost; b's goes through, so a's next message names the
    // lost change among its heads without carrying it, and b asks for it.
    let lost = a.generate_sync_message(&mut a_state).unwrap();
    assert!(lost.is_some());
    // Before, the two sides answered each other with the same message forever (`run_sync`
    // gives up after 100 rounds).
    let exchanged = run_sync(&mut b, &mut b_state, &mut a, &mut a_state);
    assert!(exchanged.messages <= 20, "{} messages to converge", exchanged.messages);
    assert_eq!(a.heads_digest(), b.heads_digest());
    assert_eq!(ids(&b.history(10, None).unwrap()).len(), 3);
}

#[test]
fn persisted_sync_state_resumes_with_less_traffic() {
    let mut a = replica("node-a", "s1");
    let mut b = replica("node-b", "s1");
    for i in 0..50 {
        a.append(&user(&format!("m{i}"), "some text of a message")).unwrap();
    }
    let (mut a_state, mut b_state) = (PeerSyncState::new(), PeerSyncState::new());
    sync_pair(&mut a, &mut a_state, &mut b, &mut b_state);
    a.append(&user("late", "x")).unwrap();
    let mut a_state = PeerSyncState::decode(&a_state.encode()).unwrap();
    let mut b_state = PeerSyncState::decode(&b_state.encode()).unwrap();
    let resumed = sync_pair(&mut a, &mut a_state, &mut b, &mut b_state);
    assert_eq!(a.heads_digest(), b.heads_digest());
    let mut fresh_b = replica("node-b", "s1");
    let fresh = full_sync(&mut a, &mut fresh_b);
    assert!(resumed < fresh, "resumed {resumed} B, from scratch {fresh} B");
    assert!(matches!(PeerSyncState::decode(&[9, 9]), Err(DocError::SyncStateDecode { .. })));
    assert!(matches!(PeerSyncState::decode(&[]), Err(DocError::SyncStateDecode { .. })));
}

#[test]
fn an_oversized_sync_message_is_refused() {
    let mut a = replica("node-a", "s1");
    let message = SyncMessage { parts: vec![(PartId::Manifest, vec![0; SYNC_MESSAGE_BYTES_MAX])] };
    let err = a.receive_sync_message(&mut PeerSyncState::new(), &message).unwrap_err();
    assert!(matches!(err, DocError::SyncMessageTooLarge { .. }), "{err}");
}

#[test]
fn a_malformed_sync_message_names_its_part() {
    let mut a = replica("node-a", "s1");
    let part = PartId::Segment { session_id: "s1".into(), index: 4 };
    let message = SyncMessage { parts: vec![(part, vec![0x42, 0xff, 0xff])] };
    let err = a.receive_sync_message(&mut PeerSyncState::new(), &message).unwrap_err();
    assert!(matches!(err, DocError::SyncMessageDecode { .. }), "{err}");
    assert!(err.to_string().contains("segment s1#4"), "{err}");
    let bad_id = PartId::Segment { session_id: "a/b".into(), index: 0 };
    let chunk = Chunk { part: bad_id, bytes: vec![] };
    assert!(matches!(a.apply_chunk(&chunk), Err(DocError::SessionId { .. })));
}

/// Text that does not compress (so that Automerge's DEFLATE cannot shrink the parts) and that
/// JSON does not escape.
fn noise(len: usize, seed: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            char::from(ALPHABET[((state >> 33) % 64) as usize])
        })
        .collect()
}

#[test]
fn sync_splits_parts_across_messages_under_the_size_limit() {
    let mut a = replica("node-a", "s1");
    let mut b = replica("node-b", "s1");
    let text_bytes = MESSAGE_BODY_BYTES_MAX - 1024;
    // Each message is larger than SEGMENT_BYTES_MAX, so each gets its own segment.
    // 7 x 4 MiB of text that compresses to 6 bits a byte: about 21 MiB to send.
    for i in 0..7 {
        a.append(&user(&format!("big{i}"), &noise(text_bytes, i))).unwrap();
    }
    assert_eq!(a.part_heads().len(), 8);
    let (mut a_state, mut b_state) = (PeerSyncState::new(), PeerSyncState::new());
    let mut sizes = Vec::new();
    for _round in 0..50 {
        let a_to_b = a.generate_sync_message(&mut a_state).unwrap();
        if let Some(message) = &a_to_b {
            sizes.push(message.wire_bytes());
            b.receive_sync_message(&mut b_state, message).unwrap();
        }
        let b_to_a = b.generate_sync_message(&mut b_state).unwrap();
        if let Some(message) = &b_to_a {
            a.receive_sync_message(&mut a_state, message).unwrap();
        }
        if a_to_b.is_none() && b_to_a.is_none() {
            break;
        }
    }
    assert_eq!(a.heads_digest(), b.heads_digest());
    assert_eq!(b.message_count(), 7);
    assert!(sizes.iter().all(|&s| s <= SYNC_MESSAGE_BYTES_MAX), "{sizes:?}");
    let carrying_data = sizes.iter().filter(|&&s| s > 1 << 20).count();
    assert!(carrying_data >= 2, "7 x 4 MiB must take more than one message: {sizes:?}");
}

/// A user message whose stored body (the compact JSON besides id, role and timestamp) is
/// `body_bytes` long, with a UUID-sized id.
fn message_with_body(i: usize, body_bytes: usize) -> Message {
    const FRAMING_BYTES: usize = r#"{"content":[{"type":"text","text":""}]}"#.len();
    let id = format!("{i:08}-0000-4000-8000-000000000000");
    Message::user_text(
        id,
        noise(body_bytes - FRAMING_BYTES, i as u64),
        1_700_000_000_000 + i as i64,
    )
}

fn stored_body_bytes(message: &Message) -> usize {
    serde_json::to_string(&serde_json::json!({"content": message.content})).unwrap().len()
}

#[test]
fn per_message_chunk_and_sync_bytes_stay_within_150_plus_1_2_body() {
    for body in [110, 300, 1000] {
        let budget = 150.0 + 1.2 * body as f64;
        let mut a = replica("node-a", "s1");
        let mut b = replica("node-b", "s1");
        let (mut a_state, mut b_state) = (PeerSyncState::new(), PeerSyncState::new());
        for i in 0..20 {
            a.append(&message_with_body(i, body)).unwrap();
        }
        push(&mut a, &mut b);
        sync_pair(&mut a, &mut a_state, &mut b, &mut b_state);
        a.take_chunks(); // b's own manifest change, received by the sync
        let count = 100;
        let (mut chunk_bytes, mut sync_bytes) = (0, 0);
        for i in 20..20 + count {
            let message = message_with_body(i, body);
            assert_eq!(stored_body_bytes(&message), body);
            a.append(&message).unwrap();
            let chunks = a.take_chunks();
            assert_eq!(chunks.len(), 1);
            chunk_bytes += chunks[0].bytes.len();
            sync_bytes += sync_pair(&mut a, &mut a_state, &mut b, &mut b_state);
        }
        assert_eq!(a.heads_digest(), b.heads_digest());
        let per_chunk = chunk_bytes as f64 / count as f64;
        assert!(per_chunk <= budget, "body {body}: {per_chunk} B per chunk > {budget}");
        // A gap caught up by the sync protocol (anti-entropy after missed pushes). The gap is
        // under a third of the part: above that Automerge sends the whole part instead.
        let mut c = replica("node-c", "s1");
        let (mut ac_state, mut c_state) = (PeerSyncState::new(), PeerSyncState::new());
        sync_pair(&mut a, &mut ac_state, &mut c, &mut c_state);
        let gap = 40;
        for i in 200..200 + gap {
            a.append(&message_with_body(i, body)).unwrap();
        }
        let batch = sync_pair(&mut a, &mut ac_state, &mut c, &mut c_state) as f64 / gap as f64;
        assert!(batch <= budget, "body {body}: {batch} sync B per message > {budget}");
        eprintln!(
            "body {body} B: chunk {per_chunk:.1} B/msg, sync round per message {:.1} B/msg, \
             sync of a {gap}-message gap {batch:.1} B/msg, budget {budget}",
            sync_bytes as f64 / count as f64
        );
    }
}

#[test]
fn an_empty_placeholder_fills_in_from_chunks_and_from_sync() {
    let mut owner = replica("node-a", "s1");
    owner.set_segment_limits(SegmentLimits { messages_max: 2, bytes_max: 1 << 20 });
    for i in 0..5 {
        owner.append(&user(&format!("m{i}"), "x")).unwrap();
    }
    let mut pushed = SessionDoc::empty(key(), &writer_actor("node-b", 1)).unwrap();
    assert!(!pushed.is_initialized());
    for chunk in owner.take_chunks() {
        pushed.apply_chunk(&chunk).unwrap();
    }
    let mut synced = SessionDoc::empty(key(), &writer_actor("node-c", 1)).unwrap();
    full_sync(&mut owner, &mut synced);
    for doc in [&mut pushed, &mut synced] {
        assert!(doc.is_initialized());
        assert_eq!(doc.heads_digest(), owner.heads_digest());
        assert_eq!(doc.history(10, None).unwrap(), owner.history(10, None).unwrap());
        assert_eq!(doc.message_count(), 5);
    }
}

fn texts(messages: &[std::sync::Arc<Message>]) -> Vec<String> {
    messages.iter().map(|m| m.text_content()).collect()
}

/// Across a partition a stale owner may write a checkpoint of a reply while the new owner writes
/// the final reply over the same element. Whichever of the two Automerge shows as the winner,
/// every replica must show the final reply: a checkpoint never hides the reply that replaced it.
#[test]
fn a_concurrent_checkpoint_never_hides_the_final_reply() {
    for stale_is_a in [true, false] {
        let (mut a, mut b) = (replica("a", "s1"), replica("b", "s1"));
        let mut partial = Message::text("r:1", Role::Assistant, "partial", 1_700_000_000_001);
        partial.partial = true;
        a.upsert(&user("u:1", "question")).unwrap();
        a.upsert(&partial).unwrap();
        push(&mut a, &mut b);
        // Partition: the stale owner checkpoints again, the new owner finishes the reply.
        let (stale, owner) = if stale_is_a { (&mut a, &mut b) } else { (&mut b, &mut a) };
        let mut later = Message::text("r:1", Role::Assistant, "longer partial", 1_700_000_000_003);
        later.partial = true;
        stale.upsert(&later).unwrap();
        owner.upsert(&Message::text("r:1", Role::Assistant, "final", 1_700_000_000_002)).unwrap();
        // Heal.
        push(&mut a, &mut b);
        push(&mut b, &mut a);
        for doc in [&a, &b] {
            let history = doc.history(100, None).unwrap();
            assert_eq!(texts(&history), ["question", "final"], "stale_is_a={stale_is_a}");
            assert!(!history[1].partial);
            assert_eq!(doc.get("r:1").unwrap().map(|m| m.text_content()).as_deref(), Some("final"));
        }
        assert_eq!(a.heads_digest(), b.heads_digest());
        // A checkpoint arriving after the final reply (a stale owner that has the reply but not
        // yet the new owner record) changes nothing.
        let outcome = a.upsert(&later).unwrap();
        assert_eq!(outcome, beamclaw_crdt::AppendOutcome::Duplicate);
        assert_eq!(texts(&a.history(100, None).unwrap()), ["question", "final"]);
    }
}

/// History reads keep decoded copies of the messages; every later change, local or remote, must
/// show in the next read exactly as a fresh replica would show it.
#[test]
fn history_reads_see_every_change_made_after_an_earlier_read() {
    let (mut a, mut b) = (replica("a", "s1"), replica("b", "s1"));
    let mut partial = Message::text("r:1", Role::Assistant, "partial answer", 1_700_000_000_001);
    partial.partial = true;
    a.upsert(&user("u:1", "question")).unwrap();
    a.upsert(&partial).unwrap();
    push(&mut a, &mut b);
    for doc in [&a, &b] {
        assert_eq!(texts(&doc.history(100, None).unwrap()), ["question", "partial answer"]);
    }

    // The final message replaces the checkpoint in place: locally, then on the replica.
    let done = Message::text("r:1", Role::Assistant, "final answer", 1_700_000_000_002);
    a.upsert(&done).unwrap();
    assert_eq!(texts(&a.history(100, None).unwrap()), ["question", "final answer"]);
    push(&mut a, &mut b);
    let on_b = b.history(100, None).unwrap();
    assert_eq!(texts(&on_b), ["question", "final answer"]);
    assert!(!on_b[1].partial);

    // A remote append after a read.
    b.upsert(&user("u:2", "and then?")).unwrap();
    push(&mut b, &mut a);
    assert_eq!(texts(&a.history(100, None).unwrap()), ["question", "final answer", "and then?"]);

    // Both agree with a replica that never read anything before.
    let mut fresh = replica("c", "s1");
    full_sync(&mut a, &mut fresh);
    let expected = fresh.history(100, None).unwrap();
    assert_eq!(a.history(100, None).unwrap(), expected);
    assert_eq!(b.history(100, None).unwrap(), expected);
}

#[test]
fn the_messages_a_chunk_records_are_read_without_a_document() {
    let mut a = replica("node-a", "s1");
    a.append(&user("m1", "hello")).unwrap();
    let mut reply = Message::text("r1", Role::Assistant, "partial", 1_700_000_000_000);
    reply.partial = true;
    a.upsert(&reply).unwrap();
    reply.partial = false;
    a.upsert(&reply).unwrap();
    let ids: Vec<String> = a
        .take_chunks()
        .iter()
        .flat_map(|c| beamclaw_crdt::doc::recorded_message_ids(&c.bytes).unwrap())
        .collect();
    assert_eq!(ids, ["m1", "r1", "r1"]);
    // A snapshot is a document, not changes: the caller must load it.
    let snapshot = a.snapshot();
    assert!(snapshot.iter().any(|c| beamclaw_crdt::doc::recorded_message_ids(&c.bytes).is_err()));
    assert!(beamclaw_crdt::doc::recorded_message_ids(b"not automerge").is_err());
}
