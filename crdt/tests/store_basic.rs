//! The store's tables and group commit, through its public API: what is written is read back,
//! listings page correctly without loading documents, deletes remove every trace of a session,
//! and the on-disk format version is enforced.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::sync::mpsc;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use beamclaw_crdt::store::{
    LIST_PAGE_SESSIONS_MAX, STORE_FILE_NAME, Store, StoreError, StoreOptions, UpdatedCursor,
    WriteBatch, WriteOp,
};
use beamclaw_crdt::{Chunk, IndexEntry, PartId, SessionKey};

fn key(n: usize) -> SessionKey {
    SessionKey::new(format!("agent:main:s{n:05}")).unwrap()
}

fn entry(n: usize, updated_at_ms: i64) -> IndexEntry {
    IndexEntry {
        session_id: format!("sid-{n}"),
        agent_id: "main".into(),
        updated_at_ms,
        message_count: n as u64,
        ..IndexEntry::default()
    }
}

fn segment(index: u32) -> PartId {
    PartId::Segment { session_id: "sid".into(), index }
}

/// A real Automerge change for `part`'s document.
fn change(doc: &mut AutoCommit, value: i64) -> Vec<u8> {
    doc.put(ROOT, format!("k{value}"), value).unwrap();
    doc.save_incremental()
}

#[test]
fn chunks_come_back_per_part_in_append_order() {
    let store = Store::open_in_memory(&StoreOptions::default()).unwrap();
    let mut manifest = AutoCommit::new();
    let mut seg = AutoCommit::new();
    let written: Vec<Chunk> = (0..6)
        .map(|i| {
            if i % 2 == 0 {
                Chunk { part: PartId::Manifest, bytes: change(&mut manifest, i) }
            } else {
                Chunk { part: segment(0), bytes: change(&mut seg, i) }
            }
        })
        .collect();
    for chunk in &written {
        let op = WriteOp::AppendChunks { key: key(1), chunks: vec![chunk.clone()] };
        store.commit(WriteBatch::new(vec![op])).unwrap();
    }
    // An empty chunk is not stored.
    let empty = Chunk { part: segment(0), bytes: Vec::new() };
    store
        .commit(WriteBatch::new(vec![WriteOp::AppendChunks { key: key(1), chunks: vec![empty] }]))
        .unwrap();

    let loaded = store.load_chunks(&key(1)).unwrap();
    let manifest_chunks: Vec<_> = written.iter().filter(|c| c.part == PartId::Manifest).collect();
    let segment_chunks: Vec<_> = written.iter().filter(|c| c.part == segment(0)).collect();
    let expected: Vec<Chunk> = manifest_chunks.into_iter().chain(segment_chunks).cloned().collect();
    assert_eq!(loaded, expected);
    assert!(store.load_chunks(&key(2)).unwrap().is_empty());
    // A session whose key extends another's is not mixed in.
    let longer = SessionKey::new("agent:main:s00001:thread").unwrap();
    store
        .commit(WriteBatch::new(vec![WriteOp::AppendChunks {
            key: longer.clone(),
            chunks: vec![Chunk { part: PartId::Manifest, bytes: vec![1] }],
        }]))
        .unwrap();
    assert_eq!(store.load_chunks(&key(1)).unwrap(), expected);
    assert_eq!(store.load_chunks(&longer).unwrap().len(), 1);
}

#[test]
fn list_by_updated_pages_newest_first_and_follows_updates() {
    let store = Store::open_in_memory(&StoreOptions::default()).unwrap();
    let ops = (0..25)
        .map(|n| WriteOp::PutIndex { key: key(n), entry: Box::new(entry(n, 1000 + n as i64)) });
    store.commit(WriteBatch::new(ops.collect())).unwrap();
    // Session 3 is updated: it moves to the front, and its old position is gone.
    store
        .commit(WriteBatch::new(vec![WriteOp::PutIndex {
            key: key(3),
            entry: Box::new(entry(3, 5000)),
        }]))
        .unwrap();
    assert_eq!(store.session_count().unwrap(), 25);

    let mut seen = Vec::new();
    let mut cursor: Option<UpdatedCursor> = None;
    loop {
        let page = store.list_by_updated(10, cursor.as_ref()).unwrap();
        assert!(page.sessions.len() <= 10);
        seen.extend(page.sessions.iter().map(|s| (s.key.clone(), s.entry.updated_at_ms)));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<(SessionKey, i64)> =
        (0..25).filter(|n| *n != 3).map(|n| (key(n), 1000 + n as i64)).collect();
    expected.push((key(3), 5000));
    expected.sort_by_key(|(_, updated_at_ms)| std::cmp::Reverse(*updated_at_ms));
    assert_eq!(seen, expected);

    let err = store.list_by_updated(LIST_PAGE_SESSIONS_MAX + 1, None).unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
}

#[test]
fn list_by_key_pages_every_session_once() {
    let store = Store::open_in_memory(&StoreOptions::default()).unwrap();
    let ops = (0..23)
        .rev()
        .map(|n| WriteOp::PutIndex { key: key(n), entry: Box::new(entry(n, n as i64)) });
    store.commit(WriteBatch::new(ops.collect())).unwrap();
    let mut after: Option<SessionKey> = None;
    let mut seen = Vec::new();
    loop {
        let page = store.list_by_key(after.as_ref(), 7).unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|s| s.key.clone());
        seen.extend(page.into_iter().map(|s| s.key));
    }
    assert_eq!(seen, (0..23).map(key).collect::<Vec<_>>());
    assert_eq!(store.index_entry(&key(4)).unwrap(), Some(entry(4, 4)));
    assert_eq!(store.index_entry(&key(99)).unwrap(), None);
}

#[test]
fn delete_session_removes_chunks_index_and_sync_states_of_that_session_only() {
    let store = Store::open_in_memory(&StoreOptions::default()).unwrap();
    let mut ops = Vec::new();
    for n in 0..3 {
        let mut doc = AutoCommit::new();
        ops.push(WriteOp::AppendChunks {
            key: key(n),
            chunks: vec![Chunk { part: PartId::Manifest, bytes: change(&mut doc, n as i64) }],
        });
        ops.push(WriteOp::PutIndex { key: key(n), entry: Box::new(entry(n, n as i64)) });
        for peer in ["peer-a", "peer-b", "peer-c"] {
            ops.push(WriteOp::PutSyncState {
                peer: peer.into(),
                key: key(n),
                bytes: vec![n as u8],
            });
        }
    }
    store.commit(WriteBatch::new(ops)).unwrap();
    store.commit(WriteBatch::new(vec![WriteOp::DeleteSession { key: key(1) }])).unwrap();

    assert!(store.load_chunks(&key(1)).unwrap().is_empty());
    assert_eq!(store.index_entry(&key(1)).unwrap(), None);
    for peer in ["peer-a", "peer-b", "peer-c"] {
        assert_eq!(store.sync_state(peer, &key(1)).unwrap(), None);
        assert_eq!(store.sync_state(peer, &key(0)).unwrap(), Some(vec![0]));
        assert_eq!(store.sync_state(peer, &key(2)).unwrap(), Some(vec![2]));
    }
    assert_eq!(store.session_count().unwrap(), 2);
    let listed: Vec<_> =
        store.list_by_updated(10, None).unwrap().sessions.into_iter().map(|s| s.key).collect();
    assert_eq!(listed, vec![key(2), key(0)]);
    assert_eq!(store.load_chunks(&key(0)).unwrap().len(), 1);
}

#[test]
fn node_meta_and_sync_states_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    store
        .commit(WriteBatch::new(vec![
            WriteOp::PutNodeMeta { name: "incarnation".into(), bytes: 7u64.to_be_bytes().to_vec() },
            WriteOp::PutSyncState { peer: "12D3KooW".into(), key: key(1), bytes: vec![9, 9] },
            WriteOp::PutIndex { key: key(1), entry: Box::new(entry(1, 42)) },
        ]))
        .unwrap();
    store.shutdown().unwrap();

    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    assert_eq!(store.node_meta("incarnation").unwrap(), Some(7u64.to_be_bytes().to_vec()));
    assert_eq!(store.node_meta("identity").unwrap(), None);
    assert_eq!(store.sync_state("12D3KooW", &key(1)).unwrap(), Some(vec![9, 9]));
    assert_eq!(store.index_entry(&key(1)).unwrap(), Some(entry(1, 42)));
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_as_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let err = Store::open(dir.path(), &StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
}

#[test]
fn an_unknown_format_version_is_refused_at_open() {
    // 1 is the layout before a message became one record value, 2 the one before token counters
    // moved into the segments; 99 is from the future.
    for found in [1, 2, 99] {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path(), &StoreOptions::default()).unwrap().shutdown().unwrap();
        {
            let db = redb::Database::open(dir.path().join(STORE_FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let table: redb::TableDefinition<&str, u32> = redb::TableDefinition::new("format");
                txn.open_table(table).unwrap().insert("version", found).unwrap();
            }
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path(), &StoreOptions::default()).unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownFormat { found: f, supported: 3 } if f == found),
            "{err}"
        );
    }
}

#[test]
fn group_commit_acknowledges_every_batch_once_after_commit() {
    let store = Store::open_in_memory(&StoreOptions::default()).unwrap();
    let (acks, acked) = mpsc::channel();
    let batches = 500;
    for n in 0..batches {
        let acks = acks.clone();
        let batch =
            WriteBatch::new(vec![WriteOp::PutIndex { key: key(n), entry: Box::new(entry(n, 1)) }]);
        let mut pending = Some(batch);
        while let Some(batch) = pending.take() {
            let acks = acks.clone();
            match store
                .submit(batch.clone(), Box::new(move |result| acks.send((n, result)).unwrap()))
            {
                Ok(()) => {}
                Err(StoreError::Busy { .. }) => {
                    std::thread::sleep(Duration::from_millis(1));
                    pending = Some(batch);
                }
                Err(error) => panic!("{error}"),
            }
        }
    }
    drop(acks);
    let mut seen = vec![0u32; batches];
    let mut groups = std::collections::BTreeMap::new();
    for (n, result) in acked.iter().take(batches) {
        let info = result.unwrap();
        seen[n] += 1;
        // Every batch of a group is visible once any of them is acknowledged.
        assert!(store.index_entry(&key(n)).unwrap().is_some());
        groups.insert(info.group, info.group_batches);
    }
    assert!(seen.iter().all(|count| *count == 1));
    assert_eq!(groups.values().map(|b| *b as usize).sum::<usize>(), batches);
    store.shutdown().unwrap();
}

#[test]
fn shutdown_flushes_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let (acks, acked) = mpsc::channel();
    for n in 0..100 {
        let acks = acks.clone();
        let batch =
            WriteBatch::new(vec![WriteOp::PutIndex { key: key(n), entry: Box::new(entry(n, 1)) }]);
        store.submit(batch, Box::new(move |result| acks.send(result.is_ok()).unwrap())).unwrap();
    }
    store.shutdown().unwrap();
    drop(acks);
    assert_eq!(acked.iter().filter(|ok| *ok).count(), 100);
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    assert_eq!(store.session_count().unwrap(), 100);
}
