//! Convergence of the session document over 3 replicas: random interleavings of appends (with
//! duplicate ids and idempotency keys, partial checkpoints then finals), pairwise syncs (complete
//! and interrupted), chunk pushes (reordered, duplicated) and reloads from each replica's own
//! chunks. After a full sync every replica must show the same transcript, each id once, with
//! every appended id present.

// Helpers outside #[test] functions unwrap too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used)]

use beamclaw_crdt::{
    AppendOutcome, Chunk, HISTORY_LIMIT_MAX, Message, PeerSyncState, Role, SegmentLimits,
    SessionDoc, SessionKey, writer_actor,
};
use proptest::prelude::*;
use std::collections::BTreeSet;

const REPLICAS: usize = 3;
const ID_POOL: u8 = 14;
const IDEMPOTENCY_POOL: u8 = 4;

#[derive(Clone, Debug)]
enum Op {
    /// Append message `id` (even ids are user messages, odd ids assistant replies to `id - 1`),
    /// with or without its idempotency key (several ids share a key).
    Append { replica: usize, id: u8, idempotency: bool, partial: bool },
    /// Upsert the final version of message `id` (a user message with its idempotency key).
    Finalize { replica: usize, id: u8 },
    /// Run the sync protocol between two replicas until both are quiet.
    Sync { a: usize, b: usize },
    /// Send one sync message from `a` to `b` and stop (a connection that drops mid-sync).
    SyncStep { a: usize, b: usize },
    /// Deliver `from`'s pending chunks to `to`, shuffled and partly duplicated.
    Push { from: usize, to: usize, seed: u64 },
    /// Restart a replica from its own chunks, with a new writer actor.
    Reload { replica: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let replica = 0..REPLICAS;
    prop_oneof![
        5 => (replica.clone(), 0..ID_POOL, any::<bool>(), any::<bool>())
            .prop_map(|(replica, id, idempotency, partial)| Op::Append { replica, id, idempotency, partial }),
        2 => (replica.clone(), 0..ID_POOL).prop_map(|(replica, id)| Op::Finalize { replica, id }),
        2 => (replica.clone(), replica.clone()).prop_map(|(a, b)| Op::Sync { a, b }),
        1 => (replica.clone(), replica.clone()).prop_map(|(a, b)| Op::SyncStep { a, b }),
        2 => (replica.clone(), replica.clone(), any::<u64>()).prop_map(|(from, to, seed)| Op::Push { from, to, seed }),
        1 => replica.prop_map(|replica| Op::Reload { replica }),
    ]
}

fn key() -> SessionKey {
    SessionKey::new("agent:main:prop").unwrap()
}

const LIMITS: SegmentLimits = SegmentLimits { messages_max: 3, bytes_max: 1 << 20 };

struct Replica {
    doc: SessionDoc,
    /// Every chunk this replica has taken: its disk.
    disk: Vec<Chunk>,
    /// Chunks not yet pushed, per destination replica.
    outbox: Vec<Vec<Chunk>>,
    /// Sync state towards each other replica.
    states: Vec<PeerSyncState>,
    incarnation: u64,
    node: String,
}

impl Replica {
    fn new(index: usize) -> Replica {
        let node = format!("node-{index}");
        let mut doc = SessionDoc::create(key(), "main", "s1", &writer_actor(&node, 1), 0).unwrap();
        doc.set_segment_limits(LIMITS);
        let mut replica = Replica {
            doc,
            disk: Vec::new(),
            outbox: vec![Vec::new(); REPLICAS],
            states: (0..REPLICAS).map(|_| PeerSyncState::new()).collect(),
            incarnation: 1,
            node,
        };
        replica.flush();
        replica
    }

    /// Takes the chunks of everything that changed: to disk, and to every other replica.
    fn flush(&mut self) {
        let chunks = self.doc.take_chunks();
        self.disk.extend(chunks.iter().cloned());
        for outbox in &mut self.outbox {
            outbox.extend(chunks.iter().cloned());
        }
    }
}

fn message(id: u8, idempotency: bool, partial: bool) -> Message {
    let role = if id.is_multiple_of(2) { Role::User } else { Role::Assistant };
    let mut m = Message::text(format!("m{id}"), role, format!("text of {id}"), i64::from(id));
    m.partial = partial;
    if role == Role::User {
        if idempotency {
            m.idempotency_key = Some(format!("k{}", id / 2 % IDEMPOTENCY_POOL));
        }
    } else {
        m.reply_to = vec![format!("m{}", id - 1)];
    }
    m
}

fn pair(replicas: &mut [Replica], a: usize, b: usize) -> (&mut Replica, &mut Replica) {
    assert_ne!(a, b);
    if a < b {
        let (left, right) = replicas.split_at_mut(b);
        (&mut left[a], &mut right[0])
    } else {
        let (left, right) = replicas.split_at_mut(a);
        (&mut right[0], &mut left[b])
    }
}

/// One message from `a` to `b`; returns whether there was one.
fn sync_step(replicas: &mut [Replica], a: usize, b: usize) -> bool {
    let (ra, rb) = pair(replicas, a, b);
    let Some(message) = ra.doc.generate_sync_message(&mut ra.states[b]).unwrap() else {
        return false;
    };
    rb.doc.receive_sync_message(&mut rb.states[a], &message).unwrap();
    ra.flush();
    rb.flush();
    true
}

fn sync(replicas: &mut [Replica], a: usize, b: usize) {
    for _round in 0..200 {
        let sent = sync_step(replicas, a, b);
        let returned = sync_step(replicas, b, a);
        if !sent && !returned {
            return;
        }
    }
    panic!("sync between {a} and {b} did not terminate");
}

fn push(replicas: &mut [Replica], from: usize, to: usize, seed: u64) {
    let mut chunks = std::mem::take(&mut replicas[from].outbox[to]);
    let mut state = seed | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in (1..chunks.len()).rev() {
        chunks.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    if let Some(first) = chunks.first().cloned()
        && next() % 2 == 0
    {
        chunks.push(first);
    }
    let target = &mut replicas[to];
    for chunk in &chunks {
        target.doc.apply_chunk(chunk).unwrap();
    }
    target.flush();
}

fn reload(replicas: &mut [Replica], index: usize) {
    let replica = &mut replicas[index];
    replica.flush();
    replica.incarnation += 1;
    let actor = writer_actor(&replica.node, replica.incarnation);
    replica.doc = SessionDoc::load(&key(), &actor, replica.disk.clone()).unwrap();
    replica.doc.set_segment_limits(LIMITS);
    // Connections drop: both ends keep only what they persisted of their sync states.
    for peer in 0..REPLICAS {
        let persisted = replicas[index].states[peer].encode();
        replicas[index].states[peer] = PeerSyncState::decode(&persisted).unwrap();
        let persisted = replicas[peer].states[index].encode();
        replicas[peer].states[index] = PeerSyncState::decode(&persisted).unwrap();
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut replicas: Vec<Replica> = (0..REPLICAS).map(Replica::new).collect();
    let mut appended = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for op in ops {
        match *op {
            Op::Append { replica, id, idempotency, partial } => {
                let m = message(id, idempotency, partial);
                let outcome = replicas[replica].doc.append(&m).unwrap();
                appended.insert(m.id.clone());
                // A duplicate append stores nothing, its key included.
                if outcome == AppendOutcome::Appended {
                    keys.extend(m.idempotency_key.clone());
                }
                replicas[replica].flush();
            }
            Op::Finalize { replica, id } => {
                let m = message(id, true, false);
                replicas[replica].doc.upsert(&m).unwrap();
                keys.extend(m.idempotency_key.clone());
                appended.insert(m.id);
                replicas[replica].flush();
            }
            Op::Sync { a, b } if a != b => sync(&mut replicas, a, b),
            Op::SyncStep { a, b } if a != b => {
                sync_step(&mut replicas, a, b);
            }
            Op::Push { from, to, seed } if from != to => push(&mut replicas, from, to, seed),
            Op::Reload { replica } => reload(&mut replicas, replica),
            Op::Sync { .. } | Op::SyncStep { .. } | Op::Push { .. } => {}
        }
    }
    for _pass in 0..2 {
        for (a, b) in [(0, 1), (1, 2), (0, 2)] {
            sync(&mut replicas, a, b);
        }
    }

    let digests: Vec<_> = replicas.iter_mut().map(|r| r.doc.heads_digest()).collect();
    prop_assert!(digests.iter().all(|d| *d == digests[0]), "digests differ: {digests:?}");
    let histories: Vec<Vec<std::sync::Arc<Message>>> =
        replicas.iter().map(|r| r.doc.history(HISTORY_LIMIT_MAX, None).unwrap()).collect();
    for history in &histories[1..] {
        prop_assert_eq!(history, &histories[0]);
    }
    let shown: Vec<&str> = histories[0].iter().map(|m| m.id.as_str()).collect();
    let unique: BTreeSet<&str> = shown.iter().copied().collect();
    prop_assert_eq!(unique.len(), shown.len(), "an id is shown twice: {:?}", shown);
    let appended: BTreeSet<&str> = appended.iter().map(String::as_str).collect();
    prop_assert_eq!(&unique, &appended);
    for replica in &replicas {
        prop_assert_eq!(replica.doc.message_count(), shown.len());
        for id in &shown {
            prop_assert!(replica.doc.get(id).unwrap().is_some());
        }
    }
    for key in &keys {
        let found = replicas[0].doc.find_by_idempotency_key(key);
        prop_assert!(found.is_some(), "idempotency key {} lost", key);
        for replica in &replicas[1..] {
            prop_assert_eq!(replica.doc.find_by_idempotency_key(key), found);
        }
    }
    let unanswered: Vec<Vec<Message>> =
        replicas.iter().map(|r| r.doc.unanswered_user_messages().unwrap()).collect();
    prop_assert_eq!(&unanswered[1], &unanswered[0]);
    prop_assert_eq!(&unanswered[2], &unanswered[0]);
    // Whatever chunks are still in flight are already known everywhere.
    for from in 0..REPLICAS {
        for to in 0..REPLICAS {
            if from != to {
                push(&mut replicas, from, to, 7);
            }
        }
    }
    let after: Vec<_> = replicas.iter_mut().map(|r| r.doc.heads_digest()).collect();
    prop_assert_eq!(after, digests);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn three_replicas_converge_to_one_transcript(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops)?;
    }
}
