//! Crash safety: a child process appends messages to many sessions through group commit and
//! prints each message id only after its `on_durable` callback fired; the parent SIGKILLs it at a
//! random moment, reopens the store and finds every acknowledged message. Twenty kills on the same
//! data directory, so recovery of a store that was killed many times is covered too.
//!
//! The child is this test binary re-executed with `--exact crash_child` and `BEAMCLAW_CRASH_DIR`
//! set; without that variable `crash_child` returns at once.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use beamclaw_crdt::store::{Store, StoreError, StoreOptions, WriteBatch, WriteOp};
use beamclaw_crdt::{IndexEntry, Message, SessionDoc, SessionKey, writer_actor};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const KILLS: u64 = 20;
const SESSIONS: usize = 32;
/// Small, so that compaction runs (and is killed) often.
const COMPACT_CHUNKS_MAX: u64 = 8;
/// The child is killed this long after its first acknowledgement, at most.
const KILL_AFTER_FIRST_ACK_MS_MAX: u64 = 300;
/// Give-up point for a child that never acknowledges anything (a failure, not a timing claim).
const CHILD_ACK_WAIT_MS: u64 = 30_000;
const DIR_ENV: &str = "BEAMCLAW_CRASH_DIR";
const RUN_ENV: &str = "BEAMCLAW_CRASH_RUN";
const SEED_ENV: &str = "BEAMCLAW_CRASH_SEED";

fn key(n: usize) -> SessionKey {
    SessionKey::new(format!("agent:main:crash-{n:02}")).unwrap()
}

fn options() -> StoreOptions {
    StoreOptions { compact_chunks_max: COMPACT_CHUNKS_MAX, ..StoreOptions::default() }
}

/// xorshift64*: enough randomness for kill moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

enum Line {
    Ack { session: usize, id: String },
    Eof,
}

#[test]
fn acknowledged_appends_survive_twenty_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::env::var(SEED_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("store_crash seed {seed} (set {SEED_ENV} to replay the kill moments)");
    let mut rng = Rng(seed);
    let mut acked: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut total = 0usize;

    for run in 1..=KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(DIR_ENV, dir.path())
            .env(RUN_ENV, run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines, received) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match stdout.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                // A line cut by the kill has no newline: it was never fully acknowledged.
                let Some(text) = line.strip_suffix(b"\n") else { break };
                let text = String::from_utf8_lossy(text);
                let mut words = text.split_whitespace();
                if let (Some("ACK"), Some(session), Some(id)) =
                    (words.next(), words.next(), words.next())
                {
                    let session = session.parse().unwrap();
                    lines.send(Line::Ack { session, id: id.to_owned() }).unwrap();
                }
            }
            let _ = lines.send(Line::Eof);
        });

        let mut run_acks = Vec::new();
        match received.recv_timeout(Duration::from_millis(CHILD_ACK_WAIT_MS)) {
            Ok(Line::Ack { session, id }) => run_acks.push((session, id)),
            Ok(Line::Eof) => panic!("run {run}: the child exited before acknowledging anything"),
            Err(error) => panic!("run {run}: no acknowledgement from the child: {error}"),
        }
        std::thread::sleep(Duration::from_millis(rng.below(KILL_AFTER_FIRST_ACK_MS_MAX)));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "run {run}: the child was killed");
        for line in received.iter() {
            match line {
                Line::Ack { session, id } => run_acks.push((session, id)),
                Line::Eof => break,
            }
        }
        reader.join().unwrap();
        total += run_acks.len();
        for (session, id) in run_acks {
            acked.entry(session).or_default().push(id);
        }
        verify(dir.path(), run, &acked);
    }
    eprintln!("store_crash: {total} acknowledged appends over {KILLS} kills, all found");
}

/// Reopens the store (recovering it) and checks every message acknowledged so far.
fn verify(dir: &Path, run: u64, acked: &BTreeMap<usize, Vec<String>>) {
    let store = Store::open(dir, &options()).unwrap();
    let actor = writer_actor("crash-parent", run);
    for (session, ids) in acked {
        let doc = store.load_session(&key(*session), &actor).unwrap().unwrap_or_else(|| {
            panic!("run {run}: session {session} with acknowledged messages is missing")
        });
        for id in ids {
            assert!(
                doc.get(id).unwrap().is_some(),
                "run {run}: acknowledged message {id} of session {session} is lost"
            );
        }
    }
    store.shutdown().unwrap();
}

/// The child: appends until killed. Not a test on its own (it returns at once without
/// `BEAMCLAW_CRASH_DIR`); the parent runs it.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else { return };
    let run: u64 = std::env::var(RUN_ENV).unwrap().parse().unwrap();
    let store = Store::open(Path::new(&dir), &options()).unwrap();
    // A new actor per process start: sequence numbers of changes lost in a crash are not reused.
    let actor = writer_actor("crash-node", run);
    let mut docs: Vec<SessionDoc> = (0..SESSIONS)
        .map(|n| match store.load_session(&key(n), &actor).unwrap() {
            Some(doc) => doc,
            None => SessionDoc::create(key(n), "main", &format!("sid-{n}"), &actor, 0).unwrap(),
        })
        .collect();
    let started = Instant::now();
    for i in 0u64.. {
        for (n, doc) in docs.iter_mut().enumerate() {
            let id = format!("r{run}-s{n}-{i}");
            let now_ms = started.elapsed().as_millis() as i64;
            doc.append(&Message::user_text(id.clone(), "a message that must survive", now_ms))
                .unwrap();
            let entry = IndexEntry {
                session_id: doc.session_id().to_owned(),
                agent_id: "main".into(),
                updated_at_ms: now_ms,
                message_count: doc.message_count() as u64,
                heads: doc.heads_digest(),
                ..IndexEntry::default()
            };
            let batch = WriteBatch::new(vec![
                WriteOp::AppendChunks { key: key(n), chunks: doc.take_chunks() },
                WriteOp::PutIndex { key: key(n), entry: Box::new(entry) },
            ]);
            submit_until_queued(&store, batch, n, id);
        }
    }
}

fn submit_until_queued(store: &Store, batch: WriteBatch, session: usize, id: String) {
    loop {
        let id = id.clone();
        let on_durable = Box::new(move |result: Result<_, StoreError>| {
            if result.is_ok() {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "ACK {session} {id}");
                let _ = out.flush();
            }
        });
        match store.submit(batch.clone(), on_durable) {
            Ok(()) => return,
            Err(StoreError::Busy { .. }) => std::thread::sleep(Duration::from_millis(1)),
            Err(error) => panic!("{error}"),
        }
    }
}
