//! Scenario tests of the mesh core, one behaviour each, on the small deterministic harness.

mod support;

use beamclaw_crdt::doc::{PeerSyncState, SyncMessage};
use beamclaw_crdt::{Message, SessionDoc, SessionKey, WriteOp, writer_actor};
use beamclaw_mesh::core::NodeId;
use beamclaw_mesh::core::wire::{self, Envelope, FRAME_BYTES_MAX, Msg, PROTOCOL_VERSION};
use beamclaw_mesh::core::{
    Command, Effect, Input, LIST_SETTLES_MAX, RequestBody, Response, RunStatus, Timing,
    generation_for_start,
};
use support::{Harness, key};

fn submitted(h: &Harness, req: u64) -> (String, RunStatus, u64) {
    match h.response(req) {
        Some(Ok(Response::Submitted { message_id, status, epoch, .. })) => {
            (message_id.clone(), *status, epoch.term)
        }
        other => panic!("request {req}: expected a submit answer, got {other:?}"),
    }
}

fn owner_index(h: &mut Harness, session: &beamclaw_crdt::SessionKey) -> usize {
    let owners: Vec<usize> = (0..h.nodes.len())
        .filter(|i| h.nodes[*i].as_ref().is_some_and(|n| n.owned_sessions().contains(session)))
        .collect();
    assert_eq!(owners.len(), 1, "expected exactly one owner, got {owners:?}");
    owners[0]
}

/// Hands node `to` a frame carrying `msg` from node `from` (outside the harness's network, at
/// the harness's time) and counts the sync messages it sends `from` in answer.
fn sync_answers(h: &mut Harness, to: usize, from: usize, msg: Msg) -> usize {
    sync_replies(h, to, from, msg).len()
}

/// The sync messages node `to` answers with when node `from` sends it `msg` (`None` for an
/// answer that only reports heads).
fn sync_replies(h: &mut Harness, to: usize, from: usize, msg: Msg) -> Vec<Option<SyncMessage>> {
    let effects = frame_effects(h, to, from, msg);
    replies_in(&effects, h.ids[from])
}

/// Hands node `to` the frame `msg` from node `from`; the effects are the caller's (nothing is
/// sent or written).
fn frame_effects(h: &mut Harness, to: usize, from: usize, msg: Msg) -> Vec<Effect> {
    let peer = h.ids[from];
    let env = Envelope {
        version: PROTOCOL_VERSION,
        from: peer,
        generation: generation_for_start(1),
        msg,
    };
    let Ok(bytes) = wire::encode(&env, FRAME_BYTES_MAX) else { panic!("frame does not encode") };
    let now = h.now;
    h.node(to).handle(now, Input::Frame { from: peer, bytes })
}

fn replies_in(effects: &[Effect], peer: NodeId) -> Vec<Option<SyncMessage>> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::SendFrame { to, bytes, .. } if *to == peer => {
                match wire::decode(bytes, FRAME_BYTES_MAX) {
                    Ok(Envelope { msg: Msg::Sync { message, .. }, .. }) => Some(message),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

/// Two joined nodes and session `name` after one acknowledged exchange submitted through node
/// 0, `wait_ms` after the submit.
fn two_nodes_after_one_exchange(name: &str, wait_ms: u64) -> (Harness, SessionKey) {
    let mut h = Harness::new(2);
    h.run_for(3_000);
    let s = key(name);
    let first = h.submit(0, &s, "first", "k1");
    h.run_for(wait_ms);
    submitted(&h, first);
    (h, s)
}

/// A copy of `session` loaded from node `i`'s disk, written to as a peer would.
fn copy_from_disk(h: &Harness, i: usize, session: &SessionKey) -> SessionDoc {
    let Some(chunks) = h.disks[i].0.borrow().chunks.get(session).cloned() else {
        panic!("node {i} has no chunks of {session}")
    };
    match SessionDoc::load(session, &writer_actor("peer", 1), chunks) {
        Ok(doc) => doc,
        Err(e) => panic!("node {i}'s copy of {session} does not load: {e}"),
    }
}

#[test]
fn single_node_acknowledges_after_durable_and_answers_once() {
    let mut h = Harness::new(1);
    let s = key("solo");
    let req = h.submit(0, &s, "hello", "k1");
    // Nothing is acknowledged before the write batch is durable (fsync takes 1 ms here).
    assert!(h.response(req).is_none());
    h.run_for(200);
    let (id, status, _) = submitted(&h, req);
    assert_eq!(status, RunStatus::Started);
    assert_eq!(h.started.len(), 1);
    let history = h.history(0, &s);
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0].id, id);
    assert_eq!(history[1].reply_to, vec![id]);
}

#[test]
fn a_repeated_idempotency_key_never_starts_a_second_turn() {
    let mut h = Harness::new(1);
    let s = key("idem");
    let a = h.submit(0, &s, "hello", "same");
    h.run_for(5);
    let b = h.submit(0, &s, "hello again", "same");
    h.run_for(5);
    assert_eq!(submitted(&h, b).1, RunStatus::InFlight);
    h.run_for(200);
    let c = h.submit(0, &s, "hello a third time", "same");
    h.run_for(50);
    assert_eq!(submitted(&h, a).0, submitted(&h, c).0);
    assert_eq!(submitted(&h, c).1, RunStatus::Done);
    assert_eq!(h.started.len(), 1);
    assert_eq!(h.history(0, &s).len(), 2);
}

#[test]
fn three_nodes_form_a_cluster_and_any_node_serves_any_session() {
    let mut h = Harness::new(3);
    h.run_for(3_000);
    for i in 0..3 {
        assert_eq!(
            h.node(i).live_members().len(),
            3,
            "node {i} sees {:?}",
            h.node(i).live_members()
        );
    }
    let s = key("shared");
    let req = h.submit(2, &s, "from node 2", "k1");
    h.run_for(500);
    let (id, status, _) = submitted(&h, req);
    assert_eq!(status, RunStatus::Started);
    // Every replica converges on the user message and its reply.
    h.run_for(3_000);
    for i in 0..3 {
        let history = h.history(i, &s);
        assert_eq!(history.len(), 2, "node {i}: {history:?}");
        assert_eq!(history[0].id, id);
    }
    let read = h.request(1, &s, RequestBody::Read { limit: 10, before: None });
    h.run_for(100);
    match h.response(read) {
        Some(Ok(Response::History { messages, .. })) => assert_eq!(messages.len(), 2),
        other => panic!("read: {other:?}"),
    }
}

#[test]
fn a_crashed_owner_is_replaced_and_nothing_acknowledged_is_lost() {
    let mut h = Harness::new(3);
    h.run_for(3_000);
    let s = key("failover");
    let first = h.submit(0, &s, "before the crash", "k1");
    h.run_for(1_000);
    let (first_id, _, term) = submitted(&h, first);
    let owner = owner_index(&mut h, &s);
    h.crash(owner);
    // SWIM notices within a few seconds; the next node of the preference list takes over.
    h.run_for(10_000);
    let other = (0..3).find(|i| *i != owner).unwrap();
    let second = h.submit(other, &s, "after the crash", "k2");
    h.run_for(1_000);
    let (_, status, new_term) = submitted(&h, second);
    assert_eq!(status, RunStatus::Started);
    assert!(new_term > term, "epoch must grow on takeover: {term} -> {new_term}");
    let history = h.history(other, &s);
    assert!(history.iter().any(|m| m.id == first_id), "acknowledged message lost: {history:?}");
    // The restarted node rejoins and catches up.
    h.start(owner);
    h.run_for(10_000);
    let history = h.history(owner, &s);
    assert_eq!(history.len(), 4, "{history:?}");
}

#[test]
fn drain_hands_sessions_over_without_running_a_turn_twice() {
    let mut h = Harness::new(3);
    h.run_for(3_000);
    let sessions: Vec<_> = (0..6).map(|i| key(&format!("d{i}"))).collect();
    for (n, s) in sessions.iter().enumerate() {
        h.submit(n % 3, s, "hi", &format!("k{n}"));
    }
    h.run_for(2_000);
    let starts_before = h.started.len();
    assert_eq!(starts_before, sessions.len());
    let victim = 0;
    let owned = h.node(victim).owned_sessions();
    h.drain(victim, 5_000);
    h.run_for(6_000);
    assert!(h.drained(victim), "node {victim} did not finish draining");
    for s in &owned {
        let owner = owner_index(&mut h, s);
        assert_ne!(owner, victim);
    }
    // No turn ran twice, and new messages to moved sessions are served by their new owners.
    assert_eq!(h.started.len(), starts_before);
    for (n, s) in owned.iter().enumerate() {
        let req = h.submit(1, s, "after drain", &format!("after{n}"));
        h.run_for(500);
        assert_eq!(submitted(&h, req).1, RunStatus::Started);
    }
}

#[test]
fn both_sides_of_a_partition_keep_working_and_merge_when_it_heals() {
    let mut h = Harness::new(3);
    h.run_for(3_000);
    let s = key("split");
    let before = h.submit(0, &s, "before", "k0");
    h.run_for(500);
    submitted(&h, before);
    let owner = owner_index(&mut h, &s);
    let minority = [owner];
    let majority: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    h.partition(&minority, &majority);
    let a = h.submit(owner, &s, "minority side", "ka");
    h.run_for(10_000);
    let b = h.submit(majority[0], &s, "majority side", "kb");
    h.run_for(2_000);
    let (a_id, _, _) = submitted(&h, a);
    let (b_id, _, _) = submitted(&h, b);
    h.heal();
    h.run_for(15_000);
    for i in 0..3 {
        let history = h.history(i, &s);
        assert!(history.iter().any(|m| m.id == a_id), "node {i} lacks the minority's message");
        assert!(history.iter().any(|m| m.id == b_id), "node {i} lacks the majority's message");
        let mut ids: Vec<_> = history.iter().map(|m| m.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), history.len(), "duplicate ids on node {i}");
    }
    let heads: Vec<_> = (0..3).map(|i| h.node(i).heads_of(&s)).collect();
    assert!(heads.windows(2).all(|w| w[0] == w[1]), "replicas did not converge: {heads:?}");
    // After the heal exactly one owner remains.
    owner_index(&mut h, &s);
}

#[test]
fn a_broadcast_reaches_every_live_node_once() {
    let mut h = Harness::new(3);
    h.run_for(3_000);
    h.broadcast(1, "approvals", b"hello".to_vec());
    h.run_for(100);
    for i in 0..3 {
        let got: Vec<_> = h
            .delivered
            .iter()
            .filter(|(n, e)| *n == i && matches!(e, beamclaw_mesh::core::Event::Broadcast { topic, payload, .. } if topic == "approvals" && payload == b"hello"))
            .collect();
        assert_eq!(got.len(), 1, "node {i} got {} copies", got.len());
    }
}

/// A replica stores the writer's pushes and acknowledges them without applying each one: it
/// applies them in one batch `replica_settle_ms` later, or at once when the session is read.
/// Its heads digest is exact all along.
#[test]
fn a_replica_applies_stored_pushes_in_one_batch_later_or_when_read() {
    let mut h = Harness::new(3);
    h.run_for(3_000);
    let s = key("batched");
    let first = h.submit(0, &s, "the first creates the segment", "k1");
    h.run_for(Timing::default().replica_settle_ms + 1_000);
    submitted(&h, first);
    let owner = owner_index(&mut h, &s);
    let replica = (0..3).find(|i| *i != owner).unwrap();
    let count = |h: &mut Harness| {
        h.node(replica).index_entries().find(|(k, _)| **k == s).map(|(_, e)| e.message_count)
    };
    assert_eq!(count(&mut h), Some(2));
    let stored_before = h.node(replica).counters().pushes_stored_unapplied;
    let settles_before = h.node(replica).counters().replica_settles;

    // A second exchange: stored, acknowledged, digest level with the owner's, not applied yet.
    let second = h.submit(0, &s, "the second", "k2");
    h.run_for(300);
    submitted(&h, second);
    assert!(h.node(replica).counters().pushes_stored_unapplied >= stored_before + 2);
    assert_eq!(h.node(replica).counters().replica_settles, settles_before);
    assert_eq!(h.node(replica).heads_of(&s), h.node(owner).heads_of(&s));
    assert_eq!(count(&mut h), Some(2), "the replica's own index lags until it applies");
    // The settle delay later, in one batch.
    h.run_for(Timing::default().replica_settle_ms + 500);
    assert_eq!(h.node(replica).counters().replica_settles, settles_before + 1);
    assert_eq!(count(&mut h), Some(4));

    // A listing of the replica's index applies what is stored first.
    let third = h.submit(0, &s, "the third", "k3");
    h.run_for(300);
    submitted(&h, third);
    assert_eq!(count(&mut h), Some(4), "stored, not applied");
    let now = h.now;
    h.node(replica).handle(now, Input::Command(Command::SettleStored { max: LIST_SETTLES_MAX }));
    assert_eq!(h.node(replica).counters().replica_settles, settles_before + 2);
    assert_eq!(count(&mut h), Some(6), "current for the listing");

    // A read applies what is stored at once.
    let fourth = h.submit(0, &s, "the fourth", "k4");
    h.run_for(300);
    submitted(&h, fourth);
    assert_eq!(h.history(replica, &s).len(), 8);
    assert_eq!(h.node(replica).heads_of(&s), h.node(owner).heads_of(&s));
}

/// A sync exchange in which neither side's heads move (here: a peer that stays behind because
/// our answers never reach it) is ended after `SYNC_FRUITLESS_ROUNDS_MAX` messages rather than
/// answered for as long as the peer keeps talking.
#[test]
fn a_sync_exchange_that_changes_nothing_is_ended() {
    use beamclaw_mesh::core::SYNC_FRUITLESS_ROUNDS_MAX;

    let (mut h, s) = two_nodes_after_one_exchange("stuck", 1_000);
    let mut behind = copy_from_disk(&h, 1, &s);
    let second = h.submit(0, &s, "second", "k2");
    h.run_for(1_000);
    submitted(&h, second);
    assert_ne!(Some(behind.heads_digest()), h.node(0).heads_of(&s));

    let mut answered = Vec::new();
    for _ in 0..SYNC_FRUITLESS_ROUNDS_MAX + 3 {
        let message = behind.generate_sync_message(&mut PeerSyncState::new()).unwrap();
        let heads = behind.heads_digest();
        let msg = Msg::Sync { session: s.clone(), message, heads, epoch: None };
        answered.push(sync_answers(&mut h, 0, 1, msg));
    }
    // The first message brings the peer's heads (progress); the next ones change nothing.
    let rounds = SYNC_FRUITLESS_ROUNDS_MAX as usize;
    assert!(answered[..rounds].iter().all(|n| *n == 1), "{answered:?}");
    assert_eq!(answered[rounds], 0, "{answered:?}");
    assert_eq!(h.node(0).counters().sync_exchanges_stalled, 1);
    // The next message starts a new exchange, answered again.
    assert_eq!(answered[rounds + 1], 1, "{answered:?}");
}

/// A digest that disagrees about a session whose copy changed a moment ago starts no sync (the
/// push carrying the change is most likely on its way), at most `AE_DEFERRALS_MAX` times in a
/// row; once the session has been quiet for `ae_recent_ms`, the same digest starts one at once.
#[test]
fn a_digest_mismatch_right_after_a_change_is_repaired_later() {
    use beamclaw_mesh::core::AE_DEFERRALS_MAX;
    use beamclaw_mesh::core::wire::DigestEntry;

    let (mut h, s) = two_nodes_after_one_exchange("recent", 3_000);
    let owner = owner_index(&mut h, &s);
    let other = 1 - owner;
    let old = h.node(owner).heads_of(&s).unwrap();
    let second = h.submit(owner, &s, "second", "k2");
    h.run_for(500);
    submitted(&h, second);
    assert_ne!(h.node(owner).heads_of(&s), Some(old), "the second exchange changed the heads");

    // The other node claims the old heads, as a digest sent just before our push reached it.
    let digest = |h: &mut Harness| {
        let epoch = h.node(owner).epoch_of(&s);
        let entries = vec![DigestEntry { session: s.clone(), heads: old, epoch }];
        sync_answers(h, owner, other, Msg::Digest { entries, from: None, to: None })
    };
    for round in 0..AE_DEFERRALS_MAX {
        assert_eq!(digest(&mut h), 0, "digest {round} right after the change");
    }
    assert_eq!(h.node(owner).counters().sync_repairs_deferred, u64::from(AE_DEFERRALS_MAX));
    assert_eq!(digest(&mut h), 1, "put off at most AE_DEFERRALS_MAX times in a row");

    // Quiet for longer than ae_recent_ms (and than the idle time of the exchange just opened,
    // whose answers this test kept): the first mismatch is synced at once.
    h.run_for(6_000);
    let deferred = h.node(owner).counters().sync_repairs_deferred;
    assert_eq!(digest(&mut h), 1);
    assert_eq!(h.node(owner).counters().sync_repairs_deferred, deferred);
}

/// Copies with equal heads end an exchange without an Automerge round: a level peer's message is
/// answered with an empty one (which ends the exchange on its side), an empty one is not
/// answered, and the state kept for the next exchange shares the current heads. An exchange
/// that brings the receiver level ends the same way, without a last round to learn it.
#[test]
fn a_sync_between_level_copies_ends_after_one_message_each_way() {
    let (mut h, s) = two_nodes_after_one_exchange("level", 3_000);
    assert_eq!(h.node(0).heads_of(&s), h.node(1).heads_of(&s), "both copies are level");
    let mut copy = copy_from_disk(&h, 1, &s);
    let level = h.node(0).counters().sync_exchanges_level;
    let sync = |copy: &mut SessionDoc, state: &mut PeerSyncState| {
        let message = copy.generate_sync_message(state).unwrap();
        Msg::Sync { session: s.clone(), message, heads: copy.heads_digest(), epoch: None }
    };

    let msg = sync(&mut copy, &mut PeerSyncState::new());
    assert!(matches!(&msg, Msg::Sync { message: Some(_), .. }), "a fresh state says something");
    let effects = frame_effects(&mut h, 0, 1, msg);
    assert_eq!(replies_in(&effects, h.ids[1]), vec![None]);
    assert_eq!(h.node(0).counters().sync_exchanges_level, level + 1);
    let persisted: Vec<&[u8]> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Persist { writes, .. } => Some(&writes.ops),
            _ => None,
        })
        .flatten()
        .filter_map(|op| match op {
            WriteOp::PutSyncState { bytes, .. } => Some(bytes.as_slice()),
            _ => None,
        })
        .collect();
    let mut shared = PeerSyncState::new();
    shared.set_level(&copy.part_heads());
    assert_eq!(persisted, vec![shared.encode().as_slice()], "the next exchange starts level");
    let empty =
        Msg::Sync { session: s.clone(), message: None, heads: copy.heads_digest(), epoch: None };
    assert_eq!(sync_replies(&mut h, 0, 1, empty), vec![]);

    // The peer's copy gets a message node 0 lacks; the exchange that brings it over ends with
    // node 0's empty answer once it applied it.
    copy.append(&Message::user_text("u:peer-only", "from the peer", 1)).unwrap();
    let mut state = PeerSyncState::new();
    let mut answers = Vec::new();
    for _ in 0..8 {
        let msg = sync(&mut copy, &mut state);
        let replies = sync_replies(&mut h, 0, 1, msg);
        answers.push(replies.iter().map(Option::is_some).collect::<Vec<_>>());
        match replies.as_slice() {
            [Some(reply)] => {
                copy.receive_sync_message(&mut state, reply).unwrap();
            }
            _ => break,
        }
    }
    assert_eq!(h.node(0).heads_of(&s), Some(copy.heads_digest()), "{answers:?}");
    assert_eq!(answers.last(), Some(&vec![false]), "ended by an empty answer: {answers:?}");
    assert_eq!(h.node(0).counters().sync_exchanges_level, level + 2);
}
