//! Compaction folds a part's chunks into one snapshot without losing a change, including changes
//! that arrive while compaction runs; it leaves alone what it cannot fold safely.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, Automerge, ROOT, ReadDoc};
use beamclaw_crdt::store::{Store, StoreError, StoreOptions, WriteBatch, WriteOp};
use beamclaw_crdt::{Chunk, PartId, SessionKey};

/// Waiting for the writer's idle-time compaction is a wait for an event, not a performance
/// assertion: this is only the give-up point.
const COMPACTION_WAIT_MS: u64 = 20_000;

fn options() -> StoreOptions {
    StoreOptions { compact_chunks_max: 4, ..StoreOptions::default() }
}

fn key(n: usize) -> SessionKey {
    SessionKey::new(format!("agent:main:c{n}")).unwrap()
}

fn append(store: &Store, key: &SessionKey, part: PartId, bytes: Vec<u8>) {
    let op = WriteOp::AppendChunks { key: key.clone(), chunks: vec![Chunk { part, bytes }] };
    store.commit(WriteBatch::new(vec![op])).unwrap();
}

fn load(store: &Store, key: &SessionKey) -> Automerge {
    let mut doc = Automerge::new();
    for chunk in store.load_chunks(key).unwrap() {
        doc.load_incremental(&chunk.bytes).unwrap();
    }
    doc
}

/// Polls until `done` holds; panics after [`COMPACTION_WAIT_MS`].
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(COMPACTION_WAIT_MS);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn chunks_over_the_threshold_become_one_snapshot_with_the_same_document() {
    let store = Store::open_in_memory(&options()).unwrap();
    let mut doc = AutoCommit::new();
    let chunks = (0..10)
        .map(|i| {
            doc.put(ROOT, format!("k{i}"), i).unwrap();
            Chunk { part: PartId::Manifest, bytes: doc.save_incremental() }
        })
        .collect();
    // One batch of 10 chunks: over the threshold of 4 in one commit, so the idle writer folds
    // all of them into the snapshot.
    let op = WriteOp::AppendChunks { key: key(1), chunks };
    store.commit(WriteBatch::new(vec![op])).unwrap();
    wait_for("compaction", || store.load_chunks(&key(1)).unwrap().len() == 1);
    let chunks = store.load_chunks(&key(1)).unwrap();
    let snapshot = Automerge::load(&chunks[0].bytes).unwrap();
    assert_eq!(snapshot.get_heads(), doc.get_heads());
    assert_eq!(load(&store, &key(1)).get_heads(), doc.get_heads());
}

#[test]
fn appends_interleaved_with_compaction_are_all_kept() {
    let store = Store::open_in_memory(&options()).unwrap();
    let sessions = 8;
    let mut docs: Vec<AutoCommit> = (0..sessions).map(|_| AutoCommit::new()).collect();
    let (acks, acked) = std::sync::mpsc::channel();
    let mut submitted = 0;
    for round in 0..60 {
        for (n, doc) in docs.iter_mut().enumerate() {
            doc.put(ROOT, format!("k{round}"), round).unwrap();
            let part = PartId::Segment { session_id: "s".into(), index: 0 };
            let op = WriteOp::AppendChunks {
                key: key(n),
                chunks: vec![Chunk { part, bytes: doc.save_incremental() }],
            };
            let acks = acks.clone();
            store
                .submit(WriteBatch::new(vec![op]), Box::new(move |r| acks.send(r.is_ok()).unwrap()))
                .unwrap();
            submitted += 1;
        }
        if round % 10 == 0 {
            // Give the writer idle moments so that compaction rounds run between groups.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    drop(acks);
    assert_eq!(acked.iter().filter(|ok| *ok).count(), submitted);
    wait_for("compaction of every session", || {
        (0..sessions).all(|n| store.load_chunks(&key(n)).unwrap().len() <= 5)
    });
    for (n, doc) in docs.iter_mut().enumerate() {
        let loaded = load(&store, &key(n));
        assert_eq!(loaded.get_heads(), doc.get_heads(), "session {n}");
        assert_eq!(loaded.keys(ROOT).count(), 60);
    }
}

#[test]
fn a_part_with_missing_dependencies_is_left_as_chunks() {
    let store = Store::open_in_memory(&options()).unwrap();
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "first", 0).unwrap();
    let _withheld = doc.save_incremental();
    let mut stored = 0;
    for i in 0..8 {
        doc.put(ROOT, format!("k{i}"), i).unwrap();
        append(&store, &key(2), PartId::Manifest, doc.save_incremental());
        stored += 1;
    }
    // A healthy session next to it is compacted: the writer did run a round.
    let mut other = AutoCommit::new();
    for i in 0..8 {
        other.put(ROOT, format!("k{i}"), i).unwrap();
        append(&store, &key(3), PartId::Manifest, other.save_incremental());
    }
    wait_for("compaction of the healthy session", || store.load_chunks(&key(3)).unwrap().len() < 8);
    assert_eq!(store.load_chunks(&key(2)).unwrap().len(), stored);
}

#[test]
fn a_garbage_chunk_found_by_compaction_quarantines_only_its_session() {
    let store = Store::open_in_memory(&options()).unwrap();
    let mut bad = AutoCommit::new();
    let mut good = AutoCommit::new();
    for i in 0..8 {
        bad.put(ROOT, format!("k{i}"), i).unwrap();
        good.put(ROOT, format!("k{i}"), i).unwrap();
        let bytes =
            if i == 3 { b"\x85\x6f\x4a\x83 not a change".to_vec() } else { bad.save_incremental() };
        append(&store, &key(4), PartId::Manifest, bytes);
        append(&store, &key(5), PartId::Manifest, good.save_incremental());
    }
    wait_for("the quarantine record", || store.quarantine_record(&key(4)).unwrap().is_some());
    let record = store.quarantine_record(&key(4)).unwrap().unwrap();
    assert_eq!(record.part, Some(PartId::Manifest));
    match store.load_chunks(&key(4)) {
        Err(StoreError::Quarantined { key: named, part, .. }) => {
            assert_eq!(named, key(4));
            assert_eq!(part, Some(PartId::Manifest));
        }
        other => panic!("expected quarantine, got {other:?}"),
    }
    wait_for("compaction of the good session", || store.load_chunks(&key(5)).unwrap().len() < 8);
    assert_eq!(load(&store, &key(5)).get_heads(), good.get_heads());

    // Deleting the quarantined session clears the record, so a replica's copy can replace it.
    store.commit(WriteBatch::new(vec![WriteOp::DeleteSession { key: key(4) }])).unwrap();
    assert_eq!(store.quarantine_record(&key(4)).unwrap(), None);
    assert!(store.load_chunks(&key(4)).unwrap().is_empty());
}

#[test]
fn a_part_left_over_the_threshold_by_a_restart_is_compacted_on_its_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = AutoCommit::new();
    // With compaction effectively off, 10 chunks pile up.
    let off = StoreOptions { compact_chunks_max: u64::MAX, ..StoreOptions::default() };
    let store = Store::open(dir.path(), &off).unwrap();
    for i in 0..10 {
        doc.put(ROOT, format!("k{i}"), i).unwrap();
        append(&store, &key(6), PartId::Manifest, doc.save_incremental());
    }
    store.shutdown().unwrap();

    let store = Store::open(dir.path(), &options()).unwrap();
    assert_eq!(store.load_chunks(&key(6)).unwrap().len(), 10);
    doc.put(ROOT, "after-restart", 1).unwrap();
    append(&store, &key(6), PartId::Manifest, doc.save_incremental());
    wait_for("compaction after restart", || store.load_chunks(&key(6)).unwrap().len() == 1);
    assert_eq!(load(&store, &key(6)).get_heads(), doc.get_heads());
    store.shutdown().unwrap();

    // The compaction (committed without fsync) was made durable by the shutdown.
    let store = Store::open(dir.path(), &options()).unwrap();
    assert_eq!(store.load_chunks(&key(6)).unwrap().len(), 1);
}
