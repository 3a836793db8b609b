//! A session whose stored bytes are corrupt is quarantined, named in the error, and recorded;
//! the store still opens and every other session loads in full.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use beamclaw_crdt::store::{STORE_FILE_NAME, Store, StoreError, StoreOptions, WriteBatch, WriteOp};
use beamclaw_crdt::{IndexEntry, Message, PartId, SessionDoc, SessionKey, writer_actor};
use redb::{ReadableTable, TableDefinition};

/// The store's chunk table, as laid out on disk (store/tables.rs).
const CHUNKS: TableDefinition<(&str, &[u8], u64), &[u8]> = TableDefinition::new("chunks");

const SESSIONS: usize = 5;
const MESSAGES: usize = 12;

fn key(n: usize) -> SessionKey {
    SessionKey::new(format!("agent:main:q{n}")).unwrap()
}

fn actor() -> [u8; 16] {
    writer_actor("node-a", 1)
}

/// Writes `SESSIONS` sessions of `MESSAGES` messages, one durable batch per message.
fn populate(store: &Store) {
    for n in 0..SESSIONS {
        let mut doc = SessionDoc::create(key(n), "main", &format!("sid-{n}"), &actor(), 1).unwrap();
        for m in 0..MESSAGES {
            doc.append(&Message::user_text(format!("m{n}-{m}"), "hello", m as i64)).unwrap();
            let entry = IndexEntry {
                session_id: doc.session_id().to_owned(),
                agent_id: "main".into(),
                updated_at_ms: m as i64,
                message_count: doc.message_count() as u64,
                heads: doc.heads_digest(),
                ..IndexEntry::default()
            };
            let ops = vec![
                WriteOp::AppendChunks { key: key(n), chunks: doc.take_chunks() },
                WriteOp::PutIndex { key: key(n), entry: Box::new(entry) },
            ];
            store.commit(WriteBatch::new(ops)).unwrap();
        }
    }
}

/// Replaces the value of the last chunk row of `key` (the newest change) through redb.
fn overwrite_last_chunk(dir: &std::path::Path, key: &SessionKey, garbage: &[u8]) -> Vec<u8> {
    let db = redb::Database::open(dir.join(STORE_FILE_NAME)).unwrap();
    let txn = db.begin_write().unwrap();
    let part;
    {
        let mut chunks = txn.open_table(CHUNKS).unwrap();
        let upper = format!("{key}\0");
        let last = {
            let mut rows =
                chunks.range((key.as_str(), &[][..], 0)..(upper.as_str(), &[][..], 0)).unwrap();
            let (row_key, _) = rows.next_back().unwrap().unwrap();
            let (_, part_bytes, seq) = row_key.value();
            (part_bytes.to_vec(), seq)
        };
        chunks.insert((key.as_str(), last.0.as_slice(), last.1), garbage).unwrap();
        part = last.0;
    }
    txn.commit().unwrap();
    part
}

fn assert_loads_in_full(store: &Store, n: usize) {
    let doc = store.load_session(&key(n), &actor()).unwrap().unwrap();
    assert_eq!(doc.message_count(), MESSAGES, "session {n}");
    let ids: Vec<String> =
        doc.history(MESSAGES, None).unwrap().iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids, (0..MESSAGES).map(|m| format!("m{n}-{m}")).collect::<Vec<_>>());
}

#[test]
fn a_garbage_chunk_quarantines_its_session_and_the_rest_load() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    populate(&store);
    store.shutdown().unwrap();

    overwrite_last_chunk(dir.path(), &key(2), b"\x85\x6f\x4a\x83garbage");

    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    match store.load_session(&key(2), &actor()) {
        Err(StoreError::Quarantined { key: named, part, reason }) => {
            assert_eq!(named, key(2));
            assert!(matches!(part, Some(PartId::Segment { .. })), "{part:?}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected quarantine of {}, got {other:?}", key(2)),
    }
    // The quarantine is recorded by the writer; an empty commit orders after it.
    store.commit(WriteBatch::default()).unwrap();
    let record = store.quarantine_record(&key(2)).unwrap().unwrap();
    assert!(matches!(record.part, Some(PartId::Segment { .. })));
    let listed = store.quarantined(None, 10).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, key(2));
    // Later loads are refused from the record, and the error names the session.
    let err = store.load_session(&key(2), &actor()).unwrap_err();
    assert!(err.to_string().contains("agent:main:q2"), "{err}");

    for n in (0..SESSIONS).filter(|n| *n != 2) {
        assert_loads_in_full(&store, n);
    }
    // Listing never loads a document: the quarantined session is still listed.
    assert_eq!(store.list_by_updated(100, None).unwrap().sessions.len(), SESSIONS);
    store.shutdown().unwrap();

    // The record survives a restart.
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    assert!(matches!(store.load_session(&key(2), &actor()), Err(StoreError::Quarantined { .. })));
    assert_loads_in_full(&store, 4);
}

#[test]
fn an_undecodable_part_key_quarantines_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    populate(&store);
    store.shutdown().unwrap();
    {
        let db = redb::Database::open(dir.path().join(STORE_FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(CHUNKS)
            .unwrap()
            .insert((key(1).as_str(), &[9u8, 9][..], 0), &[1u8][..])
            .unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    match store.load_session(&key(1), &actor()) {
        Err(StoreError::Quarantined { key: named, part: None, reason }) => {
            assert_eq!(named, key(1));
            assert!(reason.contains("part key"), "{reason}");
        }
        other => panic!("expected quarantine, got {other:?}"),
    }
    for n in (0..SESSIONS).filter(|n| *n != 1) {
        assert_loads_in_full(&store, n);
    }
}

#[test]
fn a_missing_session_loads_as_none_and_a_bad_actor_is_not_corruption() {
    let store = Store::open_in_memory(&StoreOptions::default()).unwrap();
    populate(&store);
    assert!(store.load_session(&key(99), &actor()).unwrap().is_none());
    let err = store.load_session(&key(0), &[1, 2, 3]).unwrap_err();
    assert!(matches!(err, StoreError::Load { .. }), "{err}");
    store.commit(WriteBatch::default()).unwrap();
    assert_eq!(store.quarantine_record(&key(0)).unwrap(), None);
    assert_loads_in_full(&store, 0);
}
