//! Store benchmarks (`cargo bench -p beamclaw-crdt --bench store`): durable group-commit
//! throughput at 1, 64 and 1024 concurrent sessions, RAM per hibernated session, and the first
//! page of a 1,000,000-session index. Prints a table; docs/benchmarks.md records the figures.
//!
//! A custom harness rather than criterion: these are closed-loop throughput and RSS figures, not
//! repeated timings of one call. Without `--bench` (as under `cargo test --benches`) it runs
//! every scenario at a tiny size as a smoke test.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use beamclaw_crdt::store::{Store, StoreError, StoreOptions, WriteBatch, WriteOp};
use beamclaw_crdt::{
    HydratedDoc, IndexEntry, Message, SessionCache, SessionDoc, SessionKey, writer_actor,
};

/// A 110-byte message body, the size the sync figure uses.
const BODY: &str = "The quick brown fox jumps over the lazy dog while the mesh keeps every session durable, replicated and close.";
/// redb page cache for the hibernation measurement: the store's fixed memory.
const HIBERNATE_STORE_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Budget of the hydrated-session cache while hydrating every session once.
const HIBERNATE_CACHE_BUDGET_BYTES: usize = 4 * 1024 * 1024;
/// Sessions per durable batch when populating stores.
const POPULATE_SESSIONS_PER_BATCH: usize = 512;
const INDEX_OPS_PER_BATCH: usize = 8192;
const FIRST_PAGE_SESSIONS: usize = 100;
const FIRST_PAGE_REPEATS: usize = 200;

struct Sizes {
    /// (concurrent sessions, appends measured)
    group_commit: [(usize, usize); 3],
    hibernate: [usize; 2],
    index_sessions: usize,
}

const FULL: Sizes = Sizes {
    group_commit: [(1, 500), (64, 20_000), (1024, 60_000)],
    hibernate: [20_000, 100_000],
    index_sessions: 1_000_000,
};

const SMOKE: Sizes = Sizes {
    group_commit: [(1, 10), (64, 128), (1024, 1024)],
    hibernate: [100, 200],
    index_sessions: 2_000,
};

/// Set (to the store directory) in the child process that measures hibernated RAM.
const HIBERNATE_CHILD_ENV: &str = "BEAMCLAW_BENCH_HIBERNATE_DIR";

fn main() {
    if let Ok(dir) = std::env::var(HIBERNATE_CHILD_ENV) {
        hibernate_child(Path::new(&dir));
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|arg| arg == "--bench");
    // Positional arguments (as `cargo bench --bench store -- first_page`) pick scenarios.
    let filters: Vec<&str> =
        args.iter().filter(|arg| !arg.starts_with("--")).map(String::as_str).collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    let sizes = if full { FULL } else { SMOKE };
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
    println!("beamclaw-crdt store benchmarks ({})", if full { "full" } else { "smoke" });
    println!("load average before: {}", load_average());
    if wanted("group_commit") {
        println!();
        println!("durable appends, group commit, Durability::Immediate, one writer thread");
        println!(
            "| concurrent sessions | appends | appends/s | batches per commit | ack p50 | ack p99 \
             | writer CPU per append | compactor CPU per append | load average after |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for (sessions, appends) in sizes.group_commit {
            group_commit(scratch, sessions, appends);
        }
    }
    if wanted("hibernate") {
        println!();
        hibernated_ram(scratch, sizes.hibernate);
    }
    if wanted("first_page") {
        println!();
        first_page(scratch, sizes.index_sessions);
    }
}

fn key(prefix: &str, n: usize) -> SessionKey {
    match SessionKey::new(format!("agent:main:{prefix}-{n:07}")) {
        Ok(key) => key,
        Err(error) => panic!("bench key: {error}"),
    }
}

fn entry(doc: &mut SessionDoc, updated_at_ms: i64) -> Box<IndexEntry> {
    Box::new(IndexEntry {
        session_id: doc.session_id().to_owned(),
        agent_id: "main".into(),
        updated_at_ms,
        message_count: doc.message_count() as u64,
        heads: doc.heads_digest(),
        label: Some("bench session".into()),
        channel: Some("webchat".into()),
        model: Some("anthropic/claude-sonnet-4".into()),
        ..IndexEntry::default()
    })
}

/// The batch one append produces: the session's new chunks and its index entry.
fn append_batch(doc: &mut SessionDoc, key: &SessionKey, id: String, ts: i64) -> WriteBatch {
    let message = Message::user_text(id, BODY, ts);
    if let Err(error) = doc.append(&message) {
        panic!("append: {error}");
    }
    WriteBatch::new(vec![
        WriteOp::AppendChunks { key: key.clone(), chunks: doc.take_chunks() },
        WriteOp::PutIndex { key: key.clone(), entry: entry(doc, ts) },
    ])
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at]
}

/// Closed loop: every session has exactly one append in flight; its next append is submitted
/// when the previous one is durable. The batches are made beforehand (real SessionDoc appends
/// of a 110-byte message), so the timed loop measures the store, not the document.
fn group_commit(scratch: &Path, sessions: usize, appends: usize) {
    let dir = tempfile::tempdir_in(scratch).unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store =
        Store::open(dir.path(), &StoreOptions::default()).unwrap_or_else(|e| panic!("open: {e}"));
    let actor = writer_actor("bench-node", 1);
    let per_session = appends.div_ceil(sessions);
    let mut queues: Vec<VecDeque<WriteBatch>> = (0..sessions)
        .map(|n| {
            let key = key("gc", n);
            let mut doc = SessionDoc::create(key.clone(), "main", &format!("sid-{n}"), &actor, 0)
                .unwrap_or_else(|e| panic!("create: {e}"));
            (0..per_session)
                .map(|i| append_batch(&mut doc, &key, format!("m{n}-{i}"), i as i64))
                .collect()
        })
        .collect();

    let writer_cpu = thread_cpu("store-writer");
    let compactor_cpu = thread_cpu("store-compactor");
    let (acks, acked) = mpsc::channel::<(usize, Instant, Result<u32, StoreError>)>();
    let submit = |queues: &mut Vec<VecDeque<WriteBatch>>, n: usize| -> bool {
        let Some(batch) = queues[n].pop_front() else { return false };
        let acks = acks.clone();
        let sent = Instant::now();
        let on_durable = Box::new(move |result: Result<beamclaw_crdt::CommitInfo, StoreError>| {
            let _ = acks.send((n, sent, result.map(|info| info.group_batches)));
        });
        store.submit(batch, on_durable).unwrap_or_else(|e| panic!("submit: {e}"));
        true
    };
    let started = Instant::now();
    let mut in_flight = 0;
    for n in 0..sessions {
        if submit(&mut queues, n) {
            in_flight += 1;
        }
    }
    let mut latencies = Vec::with_capacity(appends);
    let mut group_sizes = 0u64;
    while in_flight > 0 {
        let (n, sent, result) = acked.recv().unwrap_or_else(|e| panic!("ack: {e}"));
        let batches = result.unwrap_or_else(|e| panic!("commit: {e}"));
        latencies.push(sent.elapsed());
        group_sizes += u64::from(batches);
        in_flight -= 1;
        if submit(&mut queues, n) {
            in_flight += 1;
        }
    }
    let elapsed = started.elapsed();
    let writer_cpu = thread_cpu("store-writer").saturating_sub(writer_cpu);
    let compactor_cpu = thread_cpu("store-compactor").saturating_sub(compactor_cpu);
    latencies.sort();
    let done = latencies.len();
    println!(
        "| {sessions} | {done} | {:.0} | {:.1} | {:.2} ms | {:.2} ms | {:.1} µs | {:.1} µs | {} |",
        done as f64 / elapsed.as_secs_f64(),
        group_sizes as f64 / done as f64,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        writer_cpu.as_secs_f64() * 1e6 / done as f64,
        compactor_cpu.as_secs_f64() * 1e6 / done as f64,
        load_average(),
    );
    store.shutdown().unwrap_or_else(|e| panic!("shutdown: {e}"));
}

/// The 1-, 5- and 15-minute load averages: this is a shared 2-core machine, so every figure is
/// printed with the load it was measured under.
fn load_average() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// CPU time (user + system) used so far by this process's thread named `name`, from
/// /proc/self/task/*/stat (clock ticks of 10 ms).
fn thread_cpu(name: &str) -> Duration {
    const TICK_MS: u64 = 10;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Duration::ZERO };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesized name: state is field 3; utime and stime are 14 and 15.
        let Some((_, after_name)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |at: usize| fields.get(at).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        return Duration::from_millis((ticks(11) + ticks(12)) * TICK_MS);
    }
    Duration::ZERO
}

/// Resident set size of this process, from /proc/self/status (VmRSS, kB).
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Sessions of 2 messages written to a store, in durable batches.
fn populate_sessions(store: &Store, prefix: &str, from: usize, to: usize) {
    let actor = writer_actor("bench-node", 1);
    let mut ops = Vec::new();
    for n in from..to {
        let key = key(prefix, n);
        let mut doc = SessionDoc::create(key.clone(), "main", &format!("sid-{n}"), &actor, 0)
            .unwrap_or_else(|e| panic!("create: {e}"));
        for i in 0..2 {
            if let Err(error) = doc.append(&Message::user_text(format!("m{i}"), BODY, i)) {
                panic!("append: {error}");
            }
        }
        ops.push(WriteOp::AppendChunks { key: key.clone(), chunks: doc.take_chunks() });
        ops.push(WriteOp::PutIndex { key, entry: entry(&mut doc, n as i64) });
        if ops.len() >= 2 * POPULATE_SESSIONS_PER_BATCH {
            store
                .commit(WriteBatch::new(std::mem::take(&mut ops)))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    store.commit(WriteBatch::new(ops)).unwrap_or_else(|e| panic!("{e}"));
}

/// Populates a store, then measures in a fresh child process (so that the baseline RSS holds
/// nothing left over from populating or from the other benchmarks).
fn hibernated_ram(scratch: &Path, counts: [usize; 2]) {
    let dir = tempfile::tempdir_in(scratch).unwrap_or_else(|e| panic!("tempdir: {e}"));
    {
        let store =
            Store::open(dir.path(), &hibernate_options()).unwrap_or_else(|e| panic!("open: {e}"));
        populate_sessions(&store, "hb", 0, counts[1]);
        store.shutdown().unwrap_or_else(|e| panic!("shutdown: {e}"));
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let output = std::process::Command::new(exe)
        .env(HIBERNATE_CHILD_ENV, dir.path())
        .env("BEAMCLAW_BENCH_HIBERNATE_COUNTS", format!("{} {}", counts[0], counts[1]))
        .output()
        .unwrap_or_else(|e| panic!("hibernate child: {e}"));
    if !output.status.success() {
        panic!("hibernate child failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    print!("{}", String::from_utf8_lossy(&output.stdout));
}

fn hibernate_options() -> StoreOptions {
    StoreOptions { cache_bytes: HIBERNATE_STORE_CACHE_BYTES, ..StoreOptions::default() }
}

/// The child: opens the store, hydrates every session once through a `SessionCache` with a small
/// budget (so all but the last few are hibernated as it goes), hibernates the rest, and reports
/// RSS growth per session, overall and between the two counts.
fn hibernate_child(dir: &Path) {
    let counts: Vec<usize> = std::env::var("BEAMCLAW_BENCH_HIBERNATE_COUNTS")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let [first, total] = counts[..] else { panic!("BEAMCLAW_BENCH_HIBERNATE_COUNTS: two counts") };
    let store = Store::open(dir, &hibernate_options()).unwrap_or_else(|e| panic!("open: {e}"));
    let actor = writer_actor("bench-node", 2);
    let mut cache: SessionCache<SessionDoc> = SessionCache::new(HIBERNATE_CACHE_BUDGET_BYTES);
    let baseline = rss_bytes();
    let hydrate = |range: std::ops::Range<usize>, cache: &mut SessionCache<SessionDoc>| {
        for n in range {
            let key = key("hb", n);
            let loaded = cache.get_or_hydrate(&key, |key| match store.load_session(key, &actor) {
                Ok(Some(doc)) => Ok(doc),
                Ok(None) => Err(format!("{key} missing")),
                Err(error) => Err(error.to_string()),
            });
            if let Err(error) = loaded {
                panic!("hydrate: {error}");
            }
        }
    };
    let started = Instant::now();
    hydrate(0..first, &mut cache);
    let hydrate_first = started.elapsed();
    cache.set_budget(0);
    cache.set_budget(HIBERNATE_CACHE_BUDGET_BYTES);
    let mid = rss_bytes();
    hydrate(first..total, &mut cache);
    let sample_bytes = cache.get(&key("hb", total - 1)).map_or(0, HydratedDoc::approx_bytes);
    let stats = cache.stats();
    cache.set_budget(0);
    let after = rss_bytes();
    let grown = after.saturating_sub(baseline);
    println!(
        "RAM per hibernated session (2-message sessions, fresh process; redb page cache {} MiB; \
         hydrated-cache budget {} MiB)",
        HIBERNATE_STORE_CACHE_BYTES >> 20,
        HIBERNATE_CACHE_BUDGET_BYTES >> 20
    );
    println!(
        "| sessions hydrated then hibernated | RSS growth | per session | per session from {first} \
         to {total} | hydrations/s | approx_bytes of one hydrated | load average after |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {total} | {:.1} MiB | {:.0} B | {:.0} B | {:.0} | {} B | {} |",
        grown as f64 / (1 << 20) as f64,
        grown as f64 / total as f64,
        after.saturating_sub(mid) as f64 / (total - first) as f64,
        first as f64 / hydrate_first.as_secs_f64(),
        sample_bytes,
        load_average(),
    );
    println!(
        "(cache: {} hydrations, {} hibernations, {} still hydrated before the final hibernation)",
        stats.hydrations, stats.hibernations, stats.hydrated
    );
    store.shutdown().unwrap_or_else(|e| panic!("shutdown: {e}"));
}

/// Builds an index of `sessions` entries (no documents: listing never loads one), reopens the
/// store, and times the first page by updatedAt.
fn first_page(scratch: &Path, sessions: usize) {
    let dir = tempfile::tempdir_in(scratch).unwrap_or_else(|e| panic!("tempdir: {e}"));
    let options = StoreOptions::default();
    let build_started = Instant::now();
    {
        let store = Store::open(dir.path(), &options).unwrap_or_else(|e| panic!("open: {e}"));
        let mut ops = Vec::with_capacity(INDEX_OPS_PER_BATCH);
        for n in 0..sessions {
            // Spread updatedAt over a year, in a shuffled order (multiplicative hash).
            let updated_at_ms = 1_700_000_000_000 + ((n as i64 * 2_654_435_761) % 31_536_000_000);
            let entry = IndexEntry {
                session_id: format!("{:08x}-0000-4000-8000-{:012x}", n, n),
                agent_id: "main".into(),
                updated_at_ms,
                message_count: (n % 500) as u64,
                label: Some(format!("session {n}")),
                channel: Some("webchat".into()),
                model: Some("anthropic/claude-sonnet-4".into()),
                ..IndexEntry::default()
            };
            ops.push(WriteOp::PutIndex { key: key("ix", n), entry: Box::new(entry) });
            if ops.len() == INDEX_OPS_PER_BATCH {
                let batch = WriteBatch::new(std::mem::replace(
                    &mut ops,
                    Vec::with_capacity(INDEX_OPS_PER_BATCH),
                ));
                store.commit(batch).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        store.commit(WriteBatch::new(ops)).unwrap_or_else(|e| panic!("{e}"));
        store.shutdown().unwrap_or_else(|e| panic!("shutdown: {e}"));
    }
    let build = build_started.elapsed();
    let store = Store::open(dir.path(), &options).unwrap_or_else(|e| panic!("open: {e}"));
    let count = store.session_count().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count as usize, sessions);
    let first_started = Instant::now();
    let page = store.list_by_updated(FIRST_PAGE_SESSIONS, None).unwrap_or_else(|e| panic!("{e}"));
    let first_call = first_started.elapsed();
    assert_eq!(page.sessions.len(), FIRST_PAGE_SESSIONS);
    assert!(page.sessions.windows(2).all(|w| w[0].entry.updated_at_ms >= w[1].entry.updated_at_ms));
    let mut timings = Vec::with_capacity(FIRST_PAGE_REPEATS);
    for _ in 0..FIRST_PAGE_REPEATS {
        let started = Instant::now();
        let page =
            store.list_by_updated(FIRST_PAGE_SESSIONS, None).unwrap_or_else(|e| panic!("{e}"));
        timings.push(started.elapsed());
        assert_eq!(page.sessions.len(), FIRST_PAGE_SESSIONS);
    }
    timings.sort();
    let file_bytes = std::fs::metadata(dir.path().join(beamclaw_crdt::store::STORE_FILE_NAME))
        .map_or(0, |m| m.len());
    println!(
        "first page ({FIRST_PAGE_SESSIONS} sessions by updatedAt) of an index of {sessions} sessions"
    );
    println!(
        "| index | build | file | first call after reopen | p50 | p99 | max | load average after |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {sessions} | {:.1} s | {:.0} MiB | {:.2} ms | {:.3} ms | {:.3} ms | {:.3} ms | {} |",
        build.as_secs_f64(),
        file_bytes as f64 / (1 << 20) as f64,
        first_call.as_secs_f64() * 1e3,
        percentile(&timings, 0.5).as_secs_f64() * 1e3,
        percentile(&timings, 0.99).as_secs_f64() * 1e3,
        timings.last().map_or(0.0, |t| t.as_secs_f64() * 1e3),
        load_average(),
    );
    store.shutdown().unwrap_or_else(|e| panic!("shutdown: {e}"));
}
