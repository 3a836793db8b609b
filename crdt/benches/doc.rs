//! Session document benchmarks (`cargo bench -p beamclaw-crdt --bench doc`).
//!
//! Criterion timings: append in memory at 100 and at 50,000 existing messages (plus append with
//! `take_chunks`, what an owner does per message), and load of a 2,000- and a 50,000-message
//! session from its snapshot chunks. Printed figures (not timings): per-append latency
//! percentiles at both sizes and inside one unsegmented list (the measurement behind
//! `SEGMENT_MESSAGES_MAX`), sync bytes per appended message with a 110-byte body, and the memory
//! of a hydrated 20-message session (`approx_bytes` and the RSS delta of 10,000 of them).
//!
//! Without `--bench` (as under `cargo test --benches`) every scenario runs at a tiny size as a
//! smoke test.

// A benchmark that cannot set up has failed; unwrapping says where.
#![allow(clippy::unwrap_used)]

use beamclaw_crdt::{
    Message, PeerSyncState, SegmentLimits, SessionDoc, SessionKey, SyncMessage, writer_actor,
};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Compact JSON framing of a one-text-part body: `{"content":[{"type":"text","text":""}]}`.
const BODY_FRAMING_BYTES: usize = 38;
/// Stored body of the benchmark messages, as the sync figure specifies.
const BODY_BYTES: usize = 110;
/// Sessions hydrated at once for the RSS measurement.
const RSS_SESSIONS: usize = 10_000;
/// Messages of a hydrated session in the memory figure.
const HYDRATED_MESSAGES: usize = 20;
/// Individually timed appends per size for the percentiles.
const PERCENTILE_APPENDS: usize = 2_000;
/// At the small size, the document is rebuilt after this many timed appends so that it stays
/// near its nominal size.
const SMALL_DOC_APPENDS_PER_BUILD: usize = 50;

fn full_run() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

fn key(n: usize) -> SessionKey {
    SessionKey::new(format!("agent:main:bench-{n}")).unwrap()
}

/// A user message with a UUID-sized id whose stored body is `BODY_BYTES` bytes.
fn message(i: usize) -> Message {
    let text: String = (0..BODY_BYTES - BODY_FRAMING_BYTES)
        .map(|k| char::from(b'a' + ((i + k) % 26) as u8))
        .collect();
    Message::user_text(format!("{i:08x}-0000-4000-8000-000000000000"), text, 1_700_000_000_000)
}

fn doc_with(n: usize, limits: SegmentLimits) -> SessionDoc {
    let mut doc = SessionDoc::create(key(n), "main", "s1", &writer_actor("bench", 1), 0).unwrap();
    doc.set_segment_limits(limits);
    for i in 0..n {
        doc.append(&message(i)).unwrap();
    }
    doc.take_chunks();
    doc
}

fn append_sizes() -> [usize; 2] {
    if full_run() { [100, 50_000] } else { [100, 2_000] }
}

/// Appends in memory, timed by criterion. Each iteration appends a new message, so the 50,000
/// document grows while measured (to 50,000 + iterations, crossing every segment fill level);
/// the 100 document is rebuilt every `SMALL_DOC_APPENDS_PER_BUILD` appends, outside the timing.
fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    for with_chunks in [false, true] {
        let name = if with_chunks { "append+take_chunks" } else { "append" };
        for n in append_sizes() {
            let mut doc = doc_with(n, SegmentLimits::default());
            let mut next = n;
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        if n < 1_000 && next >= n + SMALL_DOC_APPENDS_PER_BUILD {
                            doc = doc_with(n, SegmentLimits::default());
                            next = n;
                        }
                        let m = message(next);
                        next += 1;
                        let start = Instant::now();
                        doc.append(&m).unwrap();
                        if with_chunks {
                            black_box(doc.take_chunks());
                        }
                        total += start.elapsed();
                    }
                    total
                });
            });
        }
    }
    group.finish();
}

/// A replica applying the chunk of one appended message (what every replica does per message).
fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_chunk");
    for n in append_sizes() {
        let mut owner = doc_with(n, SegmentLimits::default());
        let snapshot = owner.snapshot();
        let mut replica =
            SessionDoc::load(owner.key(), &writer_actor("replica", 1), snapshot).unwrap();
        let mut next = n;
        group.bench_function(BenchmarkId::new("append", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    owner.append(&message(next)).unwrap();
                    next += 1;
                    let chunks = owner.take_chunks();
                    let start = Instant::now();
                    for chunk in &chunks {
                        black_box(replica.apply_chunk(chunk).unwrap());
                    }
                    total += start.elapsed();
                }
                total
            });
        });
    }
    group.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

fn timed_appends(
    build: impl Fn() -> SessionDoc,
    start_at: usize,
    rebuild_every: Option<usize>,
) -> Vec<Duration> {
    let appends = if full_run() { PERCENTILE_APPENDS } else { 50 };
    let mut doc = build();
    let mut next = start_at;
    let mut times = Vec::with_capacity(appends);
    for k in 0..appends {
        if rebuild_every.is_some_and(|every| k > 0 && k % every == 0) {
            doc = build();
            next = start_at;
        }
        let m = message(next);
        next += 1;
        let start = Instant::now();
        doc.append(&m).unwrap();
        times.push(start.elapsed());
    }
    times.sort();
    times
}

fn print_percentiles(label: &str, times: &[Duration]) {
    println!(
        "| {label} | {:.1} | {:.1} | {:.1} |",
        percentile(times, 0.5).as_secs_f64() * 1e6,
        percentile(times, 0.9).as_secs_f64() * 1e6,
        percentile(times, 0.99).as_secs_f64() * 1e6,
    );
}

/// Per-append latency percentiles (the target is on the p50), and append cost inside one
/// unsegmented list at several lengths: what the segment size is chosen from.
fn append_percentiles(_: &mut Criterion) {
    let [small, large] = append_sizes();
    println!();
    println!("append latency, one message per call, µs");
    println!("| existing messages | p50 | p90 | p99 |");
    println!("|---|---|---|---|");
    // The two sizes are timed alternately, one append each in turn, so that whatever else runs
    // on the machine slows both alike.
    let appends = if full_run() { PERCENTILE_APPENDS } else { 50 };
    let mut small_doc = doc_with(small, SegmentLimits::default());
    let mut large_doc = doc_with(large, SegmentLimits::default());
    let (mut small_times, mut large_times) = (Vec::new(), Vec::new());
    let (mut small_next, mut large_next) = (small, large);
    for _ in 0..appends {
        if small_next == small + SMALL_DOC_APPENDS_PER_BUILD {
            small_doc = doc_with(small, SegmentLimits::default());
            small_next = small;
        }
        for (doc, next, times) in [
            (&mut small_doc, &mut small_next, &mut small_times),
            (&mut large_doc, &mut large_next, &mut large_times),
        ] {
            let m = message(*next);
            *next += 1;
            let start = Instant::now();
            doc.append(&m).unwrap();
            times.push(start.elapsed());
        }
    }
    small_times.sort();
    large_times.sort();
    print_percentiles(
        &format!("{small} (rebuilt every {SMALL_DOC_APPENDS_PER_BUILD})"),
        &small_times,
    );
    print_percentiles(&format!("{large} (growing by {appends})"), &large_times);
    println!(
        "p50 ratio {large} / {small}: {:.2}",
        percentile(&large_times, 0.5).as_secs_f64() / percentile(&small_times, 0.5).as_secs_f64()
    );

    println!();
    println!("append latency inside one list (no rollover), µs");
    println!("| messages in the list | p50 | p90 | p99 |");
    println!("|---|---|---|---|");
    let unsegmented = SegmentLimits { messages_max: usize::MAX, bytes_max: usize::MAX };
    let lengths: &[usize] =
        if full_run() { &[100, 1_000, 2_000, 5_000, 20_000] } else { &[100, 500] };
    for &n in lengths {
        let times = timed_appends(|| doc_with(n, unsegmented), n, Some(200));
        print_percentiles(&format!("{n}"), &times);
    }
}

/// Load from the snapshot chunks (what the store holds after compaction) and from one chunk per
/// append (an uncompacted session).
fn load(c: &mut Criterion) {
    let sizes: &[usize] = if full_run() { &[2_000, 50_000] } else { &[200] };
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    for &n in sizes {
        let mut doc = doc_with(n, SegmentLimits::default());
        let snapshot = doc.snapshot();
        let bytes: usize = snapshot.iter().map(|c| c.bytes.len()).sum();
        println!("load/{n}: {} snapshot chunks, {bytes} bytes", snapshot.len());
        let actor = writer_actor("bench", 2);
        group.bench_function(BenchmarkId::new("snapshot", n), |b| {
            b.iter_batched(
                || snapshot.clone(),
                |chunks| black_box(SessionDoc::load(doc.key(), &actor, chunks).unwrap()),
                BatchSize::LargeInput,
            );
        });
    }
    let n = sizes[0];
    let mut doc = SessionDoc::create(key(n), "main", "s1", &writer_actor("bench", 1), 0).unwrap();
    let mut increments = doc.take_chunks();
    for i in 0..n {
        doc.append(&message(i)).unwrap();
        increments.extend(doc.take_chunks());
    }
    let actor = writer_actor("bench", 2);
    group.bench_function(BenchmarkId::new("increments", n), |b| {
        b.iter_batched(
            || increments.clone(),
            |chunks| black_box(SessionDoc::load(doc.key(), &actor, chunks).unwrap()),
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

fn sync_pair(
    a: &mut SessionDoc,
    a_state: &mut PeerSyncState,
    b: &mut SessionDoc,
    b_state: &mut PeerSyncState,
) -> usize {
    let mut bytes = 0;
    loop {
        let a_to_b: Option<SyncMessage> = a.generate_sync_message(a_state).unwrap();
        if let Some(m) = &a_to_b {
            bytes += m.wire_bytes();
            b.receive_sync_message(b_state, m).unwrap();
        }
        let b_to_a = b.generate_sync_message(b_state).unwrap();
        if let Some(m) = &b_to_a {
            bytes += m.wire_bytes();
            a.receive_sync_message(a_state, m).unwrap();
        }
        if a_to_b.is_none() && b_to_a.is_none() {
            return bytes;
        }
    }
}

/// Bytes that replicate one appended message with a 110-byte body: the chunk pushed per append,
/// a sync round per append, and the sync protocol catching up a 40-message gap.
fn sync_bytes(_: &mut Criterion) {
    let count = if full_run() { 1_000 } else { 50 };
    let gap = 40;
    let mut a = doc_with(100, SegmentLimits::default());
    let snapshot = a.snapshot();
    let mut b = SessionDoc::load(a.key(), &writer_actor("bench-b", 1), snapshot).unwrap();
    let (mut a_state, mut b_state) = (PeerSyncState::new(), PeerSyncState::new());
    sync_pair(&mut a, &mut a_state, &mut b, &mut b_state);
    a.take_chunks();
    let (mut chunk_bytes, mut round_bytes) = (0, 0);
    for i in 0..count {
        a.append(&message(1_000_000 + i)).unwrap();
        chunk_bytes += a.take_chunks().iter().map(|c| c.bytes.len()).sum::<usize>();
        round_bytes += sync_pair(&mut a, &mut a_state, &mut b, &mut b_state);
    }
    for i in 0..gap {
        a.append(&message(2_000_000 + i)).unwrap();
    }
    let gap_bytes = sync_pair(&mut a, &mut a_state, &mut b, &mut b_state);
    let budget = 150.0 + 1.2 * BODY_BYTES as f64;
    println!();
    println!("sync bytes per appended message, body {BODY_BYTES} B (budget {budget} B)");
    println!("| path | bytes per message |");
    println!("|---|---|");
    println!(
        "| chunk pushed per append ({count} appends) | {:.1} |",
        chunk_bytes as f64 / count as f64
    );
    println!("| sync protocol, one round per append | {:.1} |", round_bytes as f64 / count as f64);
    println!(
        "| sync protocol, catching up a {gap}-message gap | {:.1} |",
        gap_bytes as f64 / gap as f64
    );
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Memory of hydrated sessions: `approx_bytes()` against the growth of the process's resident
/// set while many sessions of one size are loaded from their snapshot chunks and kept, divided by
/// their count. Three sizes separate the fixed cost of a session from the cost per message. Runs
/// first, before other benchmarks have grown and freed the heap; every loaded session is kept to
/// the end so that no measurement reuses memory freed by an earlier one.
fn hydrated_memory(_: &mut Criterion) {
    let scale = if full_run() { 1 } else { 100 };
    let cases = [(1, RSS_SESSIONS), (HYDRATED_MESSAGES, RSS_SESSIONS), (200, RSS_SESSIONS / 10)];
    let actor = writer_actor("bench", 3);
    let mut kept = Vec::new();
    println!();
    println!("hydrated sessions, bytes per session");
    println!("| messages | sessions | snapshot bytes | approx_bytes() | RSS delta / sessions |");
    println!("|---|---|---|---|---|");
    for (messages, sessions) in cases {
        let sessions = (sessions / scale).max(1);
        let mut template = doc_with(messages, SegmentLimits::default());
        let chunks = template.snapshot();
        let chunk_bytes: usize = chunks.iter().map(|c| c.bytes.len()).sum();
        let mut hydrated = Vec::with_capacity(sessions);
        let before = rss_bytes();
        for _ in 0..sessions {
            hydrated.push(SessionDoc::load(template.key(), &actor, chunks.clone()).unwrap());
        }
        let after = rss_bytes();
        let per_session = after.saturating_sub(before) as f64 / sessions as f64;
        let approx = hydrated.first().map_or(0, SessionDoc::approx_bytes);
        println!("| {messages} | {sessions} | {chunk_bytes} | {approx} | {per_session:.0} |");
        kept.push(hydrated);
    }
    black_box(kept);
}

criterion_group!(memory, hydrated_memory);
criterion_group!(timings, append, apply, load);
criterion_group!(figures, append_percentiles, sync_bytes);
criterion_main!(memory, figures, timings);
