//! Benchmarks of real `beamclaw` processes on loopback (docs/benchmarks.md, "Real mesh" and
//! "Gateway"). Not a test: `cargo run --release -p beamclaw-e2e --bin e2e-bench [-- NAME...]`
//! (it uses the release `beamclaw` beside it, building it when missing, or `$BEAMCLAW_BIN`).
//! Names: ready, rss, join, detect, serial, sync, forward, handoff, ws-turns, completions, ttft, idle-ws
//! (default: all). Prints one line per figure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use beamclaw_e2e::client::Client;
use beamclaw_e2e::node::{CALL_TIMEOUT_MS, Model, TOKEN, unique_key};
use beamclaw_e2e::{Cluster, ClusterOptions};
use futures::StreamExt;
use serde_json::json;

/// Starts measured for the ready time.
const READY_RUNS: usize = 10;
/// Joins measured.
const JOIN_RUNS: usize = 5;
/// Nodes of the failure-detection cluster (the figure is on 5 real nodes).
const DETECT_NODES: usize = 5;
/// Kills measured.
const DETECT_RUNS: usize = 8;
/// Turns per path (owner, non-owner) for the forwarding latency.
const FORWARD_TURNS: usize = 300;
/// Sessions moved by one measured drain.
const HANDOFF_SESSIONS: usize = 8;
/// Concurrent clients of the throughput runs.
const CONCURRENCY: usize = 32;
/// Length of each throughput run.
const THROUGHPUT_RUN: Duration = Duration::from_secs(10);
/// Streams measured for time to first token, directly and through the gateway.
const TTFT_RUNS: usize = 200;
/// Idle WebSocket connections held.
const IDLE_CONNECTIONS: usize = 10_000;
/// How long a status poll may wait between attempts.
const STATUS_POLL: Duration = Duration::from_millis(10);

fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (s.len() as f64 - 1.0)).round() as usize;
    s[rank.min(s.len() - 1)]
}

fn report(name: &str, samples_ms: &[f64]) {
    println!(
        "{name}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        percentile(samples_ms, 50.0),
        percentile(samples_ms, 99.0),
        percentile(samples_ms, 100.0),
        samples_ms.len()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Resident set size of a process, in KiB (`VmRSS`).
fn rss_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat` (10 ms ticks).
fn cpu_time(pid: i32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("bad stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(Duration::from_millis((ticks(11) + ticks(12)) * 10))
}

fn opts(nodes: usize, model: Model) -> ClusterOptions {
    ClusterOptions { nodes, model, ..ClusterOptions::default() }
}

async fn ready() -> Result<()> {
    let mut printed = Vec::new();
    let mut observed = Vec::new();
    for _ in 0..READY_RUNS {
        let mut cluster = Cluster::new(&opts(1, Model::Offline)).await?;
        let spawned_to_ready = cluster.nodes[0].start().await?;
        let node = cluster.node(0);
        let out = node.opts.data_dir.join(format!("{}.1.stdout", node.name()));
        let text = std::fs::read_to_string(out)?;
        let ready_ms: f64 = text
            .lines()
            .find_map(|l| l.split(" ready in ").nth(1))
            .and_then(|r| r.trim_end_matches(" ms").parse().ok())
            .ok_or_else(|| anyhow!("no ready line in {text}"))?;
        printed.push(ready_ms);
        observed.push(ms(spawned_to_ready));
        drop(cluster);
    }
    report("ready (as printed, start of main to listening)", &printed);
    report("ready (spawn until the ready lines were seen, 10 ms polling)", &observed);
    Ok(())
}

async fn rss() -> Result<()> {
    let (cluster, _) = Cluster::start(&opts(3, Model::Offline), Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    for node in &cluster.nodes {
        let pid = node.pid().ok_or_else(|| anyhow!("{} is not running", node.name()))?;
        println!("idle RSS of {} in a 3-node cluster: {} KiB", node.name(), rss_kib(pid)?);
    }
    Ok(())
}

async fn all_see(cluster: &Cluster, id: &str, alive: bool, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut done = true;
        for node in cluster.nodes.iter().filter(|n| n.id != id) {
            let seen = node.alive_members().await?.iter().any(|m| m == id);
            if seen != alive {
                done = false;
                break;
            }
        }
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not every node sees {id} alive={alive} within {timeout:?}");
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
}

async fn join() -> Result<()> {
    let mut samples = Vec::new();
    for _ in 0..JOIN_RUNS {
        let mut cluster = Cluster::new(&opts(4, Model::Offline)).await?;
        for node in &mut cluster.nodes[..3] {
            node.start().await?;
        }
        cluster.wait_formed(Duration::from_secs(10)).await?;
        let started = Instant::now();
        cluster.nodes[3].start().await?;
        let id = cluster.nodes[3].id.clone();
        all_see(&cluster, &id, true, Duration::from_secs(20)).await?;
        samples.push(ms(started.elapsed()));
    }
    report("join (spawn of a 4th node until all 3 members see it alive)", &samples);
    Ok(())
}

async fn detect() -> Result<()> {
    let (mut cluster, _) =
        Cluster::start(&opts(DETECT_NODES, Model::Offline), Duration::from_secs(20)).await?;
    let mut samples = Vec::new();
    for run in 0..DETECT_RUNS {
        let victim = 1 + run % (DETECT_NODES - 1);
        let id = cluster.nodes[victim].id.clone();
        let killed = Instant::now();
        cluster.nodes[victim].kill9()?;
        all_see(&cluster, &id, false, Duration::from_secs(30)).await?;
        samples.push(ms(killed.elapsed()));
        cluster.nodes[victim].start().await?;
        cluster.wait_formed(Duration::from_secs(20)).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    report(
        &format!(
            "failure detection ({DETECT_NODES} nodes, kill -9 until every node marks it down)"
        ),
        &samples,
    );
    Ok(())
}

async fn turn_latencies(client: &mut Client, session: &str, turns: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(turns);
    for n in 0..turns {
        let key = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let started = Instant::now();
        client.chat_turn(session, &format!("turn {n}"), &key, CALL_TIMEOUT_MS).await?;
        out.push(ms(started.elapsed()));
    }
    Ok(out)
}

/// Sessions written while the second node is down, for the sync throughput.
const SYNC_SESSIONS: usize = 200;
/// Messages injected into each of them (110-byte bodies).
const SYNC_MESSAGES: usize = 50;
/// Clients writing those at once.
const SYNC_WRITERS: usize = 8;

/// A counter from a node's `/metrics` (0 when absent).
async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Result<f64> {
    let text = http.get(format!("{base}/metrics")).bearer_auth(TOKEN).send().await?.text().await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Sync throughput between two nodes: node 2 is stopped, node 1 takes SYNC_SESSIONS sessions of
/// SYNC_MESSAGES messages each, node 2 restarts, and the clock runs from its ready line until its
/// own index (`sessions.list` reads the local one) holds every message of every session.
async fn sync() -> Result<()> {
    let (mut cluster, _) =
        Cluster::start(&opts(2, Model::Offline), Duration::from_secs(10)).await?;
    cluster.nodes[1].terminate(Duration::from_secs(30)).await?;
    let body = "x".repeat(110);
    let url = cluster.node(0).ws_url();
    let sessions: Vec<String> =
        (0..SYNC_SESSIONS).map(|i| unique_key(&format!("sync-{i}"))).collect();
    let mut writes = futures::stream::iter(sessions.clone())
        .map(|session| {
            let (url, body) = (url.clone(), body.clone());
            async move {
                let mut c = Client::connect(&url, Some(TOKEN)).await?;
                let key = uuid::Uuid::new_v4().simple().to_string();
                c.chat_turn(&session, "create", &key, CALL_TIMEOUT_MS).await?;
                for _ in 0..SYNC_MESSAGES {
                    let params = json!({"sessionKey": session, "message": body});
                    c.call("chat.inject", params, CALL_TIMEOUT_MS).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SYNC_WRITERS);
    while let Some(r) = writes.next().await {
        r?;
    }
    // A turn adds a user message and a reply before the injected ones.
    let expected = SYNC_MESSAGES + 2;
    let http = beamclaw_e2e::node::http()?;
    let started = Instant::now();
    let ready = cluster.nodes[1].start().await?;
    let base = cluster.node(1).http_url();
    let deadline = started + Duration::from_secs(120);
    loop {
        let mut c = cluster.node(1).client().await?;
        let list = c.call("sessions.list", json!({"limit": 1000}), CALL_TIMEOUT_MS).await?;
        c.close().await;
        let complete = list["sessions"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|r| {
                        sessions.iter().any(|s| r["key"] == s.as_str())
                            && r["messageCount"].as_u64().unwrap_or(0) >= expected as u64
                    })
                    .count()
            })
            .unwrap_or(0);
        if complete == SYNC_SESSIONS {
            break;
        }
        if Instant::now() > deadline {
            bail!("node 2 holds {complete} of {SYNC_SESSIONS} sessions complete after 120 s");
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
    let elapsed = started.elapsed();
    let caught_up = elapsed.saturating_sub(ready);
    // Give the metrics task (1 s period) time to copy the transport's byte counter.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let bytes = metric(&http, &base, "beamclaw_mesh_frame_bytes_in_total").await?;
    let messages = (SYNC_SESSIONS * expected) as f64;
    let secs = caught_up.as_secs_f64();
    println!(
        "sync catch-up: {SYNC_SESSIONS} sessions, {messages} messages ({:.2} MB of frames in, \
         metrics read after) in {:.0} ms after ready ({:.0} ms from spawn): {:.0} messages/s, \
         {:.2} MB/s",
        bytes / 1e6,
        ms(caught_up),
        ms(elapsed),
        messages / secs,
        bytes / 1e6 / secs
    );
    Ok(())
}

/// One node, one client, turns one after another: the turn path without the mesh's network.
async fn serial() -> Result<()> {
    let (cluster, _) = Cluster::start(&opts(1, Model::Offline), Duration::from_secs(10)).await?;
    let session = unique_key("serial");
    let mut client = cluster.node(0).client().await?;
    turn_latencies(&mut client, &session, 20).await?;
    let samples = turn_latencies(&mut client, &session, FORWARD_TURNS).await?;
    report("turn on a single node (chat.send to final, offline model, one client)", &samples);
    Ok(())
}

async fn forward() -> Result<()> {
    let (cluster, _) = Cluster::start(&opts(3, Model::Offline), Duration::from_secs(10)).await?;
    let session = cluster.session_owned_by(0, 0, "forward").await?;
    let mut owner = cluster.node(0).client().await?;
    let mut other = cluster.node(1).client().await?;
    // Warm both paths (connections, hydration), then alternate.
    turn_latencies(&mut owner, &session, 20).await?;
    turn_latencies(&mut other, &session, 20).await?;
    let (mut via_owner, mut via_other) = (Vec::new(), Vec::new());
    for _ in 0..FORWARD_TURNS / 10 {
        via_owner.extend(turn_latencies(&mut owner, &session, 10).await?);
        via_other.extend(turn_latencies(&mut other, &session, 10).await?);
    }
    report("turn through the owner (chat.send to final, offline model)", &via_owner);
    report("turn through a non-owner", &via_other);
    println!(
        "forwarding adds: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&via_other, 50.0) - percentile(&via_owner, 50.0),
        percentile(&via_other, 99.0) - percentile(&via_owner, 99.0)
    );
    Ok(())
}

async fn handoff() -> Result<()> {
    let (mut cluster, _) =
        Cluster::start(&opts(3, Model::Offline), Duration::from_secs(10)).await?;
    let mut sessions = Vec::new();
    for _ in 0..HANDOFF_SESSIONS {
        sessions.push(cluster.session_owned_by(2, 0, "handoff").await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let url = cluster.node(0).ws_url();
    let mut tasks = Vec::new();
    for session in sessions {
        let (stop, url) = (stop.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&url, Some(TOKEN)).await?;
            let mut samples: Vec<(Instant, f64)> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let key = format!("h-{}", uuid::Uuid::new_v4().simple());
                let started = Instant::now();
                client.chat_turn(&session, "during the drain", &key, 30_000).await?;
                samples.push((started, ms(started.elapsed())));
            }
            anyhow::Ok(samples)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let drain_started = Instant::now();
    cluster.nodes[2].terminate(Duration::from_secs(30)).await?;
    let drained = drain_started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let mut pauses = Vec::new();
    for t in tasks {
        let samples = t.await??;
        let baseline: Vec<f64> =
            samples.iter().filter(|(at, _)| *at < drain_started).map(|(_, l)| *l).collect();
        // Turns that overlapped the drain: started before it ended, ended after it began.
        let drain_ended = drain_started + drained;
        let during = samples
            .iter()
            .filter(|(at, l)| {
                *at < drain_ended && *at + Duration::from_secs_f64(l / 1000.0) >= drain_started
            })
            .map(|(_, l)| *l)
            .fold(0.0, f64::max);
        pauses.push((during - percentile(&baseline, 50.0)).max(0.0));
    }
    println!("drain of {HANDOFF_SESSIONS} owned sessions took {:.0} ms", ms(drained));
    report(
        "handoff pause per session (slowest turn during the drain minus the median before)",
        &pauses,
    );
    Ok(())
}

async fn ws_turns() -> Result<()> {
    let (cluster, _) = Cluster::start(&opts(1, Model::Offline), Duration::from_secs(10)).await?;
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let url = cluster.node(0).ws_url();
    let mut tasks = Vec::new();
    for c in 0..CONCURRENCY {
        let (done, stop, url) = (done.clone(), stop.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&url, Some(TOKEN)).await?;
            let session = unique_key(&format!("ws-bench-{c}"));
            while !stop.load(Ordering::SeqCst) {
                let key = uuid::Uuid::new_v4().simple().to_string();
                client.chat_turn(&session, "hello", &key, 30_000).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = cluster.node(0).pid().ok_or_else(|| anyhow!("node not running"))?;
    let (from, started, cpu_from) = (done.load(Ordering::SeqCst), Instant::now(), cpu_time(pid)?);
    tokio::time::sleep(THROUGHPUT_RUN).await;
    let turns = done.load(Ordering::SeqCst) - from;
    let (elapsed, cpu) = (started.elapsed(), cpu_time(pid)?.saturating_sub(cpu_from));
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await??;
    }
    let per_turn = cpu.as_secs_f64() / turns.max(1) as f64;
    println!(
        "WebSocket chat turns (chat.send to final, {CONCURRENCY} clients, offline model): {:.0} turns/s; \
         node CPU {:.0} us per turn ({:.0} turns/s on 2 fully used cores at that cost)",
        turns as f64 / elapsed.as_secs_f64(),
        per_turn * 1e6,
        2.0 / per_turn
    );
    Ok(())
}

async fn completions() -> Result<()> {
    let (cluster, _) = Cluster::start(&opts(1, Model::Offline), Duration::from_secs(10)).await?;
    let url = format!("{}/v1/chat/completions", cluster.node(0).http_url());
    let http = beamclaw_e2e::node::http()?;
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CONCURRENCY {
        let (done, stop, url, http) = (done.clone(), stop.clone(), url.clone(), http.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let body = json!({"model": "beamclaw", "user": format!("bench-{c}"),
                    "messages": [{"role": "user", "content": "hello"}]});
                let r = http.post(&url).bearer_auth(TOKEN).json(&body).send().await?;
                if !r.status().is_success() {
                    bail!("{}: {}", r.status(), r.text().await.unwrap_or_default());
                }
                r.bytes().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (from, started) = (done.load(Ordering::SeqCst), Instant::now());
    tokio::time::sleep(THROUGHPUT_RUN).await;
    let n = done.load(Ordering::SeqCst) - from;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await??;
    }
    println!(
        "/v1/chat/completions (not streamed, {CONCURRENCY} clients, offline model): {:.0} requests/s",
        n as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

/// Time from sending a streaming request until the first content chunk arrives.
async fn ttft_once(http: &reqwest::Client, url: &str, model: &str, user: &str) -> Result<f64> {
    let body = json!({"model": model, "stream": true, "user": user,
        "messages": [{"role": "user", "content": "hello"}]});
    let started = Instant::now();
    let response = http.post(url).bearer_auth(TOKEN).json(&body).send().await?;
    if !response.status().is_success() {
        bail!("{url}: {}", response.status());
    }
    let mut stream = response.bytes_stream();
    let mut buffered = String::new();
    let mut first = None;
    while let Some(chunk) = stream.next().await {
        buffered.push_str(&String::from_utf8_lossy(&chunk?));
        if first.is_none() && buffered.contains("\"content\":\"") {
            first = Some(ms(started.elapsed()));
        }
    }
    first.ok_or_else(|| anyhow!("no content chunk from {url}"))
}

async fn ttft() -> Result<()> {
    let (cluster, _) = Cluster::start(&opts(1, Model::Mock), Duration::from_secs(10)).await?;
    let mock = cluster.mock()?;
    let response = json!({"text": "a short streamed answer", "chunkChars": 4});
    mock.load_script(&json!({"responses": vec![response; 4 * TTFT_RUNS + 100]})).await?;
    let http = beamclaw_e2e::node::http()?;
    let direct_url = format!("{}/v1/chat/completions", mock.url);
    let gateway_url = format!("{}/v1/chat/completions", cluster.node(0).http_url());
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for i in 0..TTFT_RUNS + 20 {
        let d = ttft_once(&http, &direct_url, "m", "x").await?;
        let g = ttft_once(&http, &gateway_url, "beamclaw", &format!("ttft-{i}")).await?;
        if i >= 20 {
            direct.push(d);
            through.push(g);
        }
    }
    report("time to first token, straight from mock-llm", &direct);
    report("time to first token, through beamclaw up (fresh session each)", &through);
    println!(
        "gateway and turn add to time to first token: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&through, 50.0) - percentile(&direct, 50.0),
        percentile(&through, 99.0) - percentile(&direct, 99.0)
    );
    Ok(())
}

async fn idle_ws() -> Result<()> {
    // 10k sockets on each side: the open-file limit must allow it (the node inherits ours).
    let want = (IDLE_CONNECTIONS + 1024) as u64;
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if soft < want {
        bail!("the open-file limit is {soft}; run with `ulimit -n {want}` or more");
    }
    let (cluster, _) = Cluster::start(&opts(1, Model::Offline), Duration::from_secs(10)).await?;
    let node = cluster.node(0);
    let pid = node.pid().ok_or_else(|| anyhow!("not running"))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(pid)?;
    let url = node.ws_url();
    let mut clients = Vec::with_capacity(IDLE_CONNECTIONS);
    let mut pending = futures::stream::iter(0..IDLE_CONNECTIONS)
        .map(|_| Client::connect(&url, Some(TOKEN)))
        .buffer_unordered(64);
    while let Some(c) = pending.next().await {
        clients.push(c.map_err(|e| anyhow!("connection {}: {e}", clients.len()))?);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_kib(pid)?;
    let per = (after.saturating_sub(before) as f64 * 1024.0) / IDLE_CONNECTIONS as f64;
    println!(
        "idle WebSocket connections: {} held; node RSS {before} KiB -> {after} KiB: {:.0} bytes \
         ({:.1} KiB) per connection",
        clients.len(),
        per,
        per / 1024.0
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let all = [
        "ready",
        "rss",
        "join",
        "detect",
        "serial",
        "sync",
        "forward",
        "handoff",
        "ws-turns",
        "completions",
        "ttft",
        "idle-ws",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names: Vec<&str> =
        if args.is_empty() { all.to_vec() } else { args.iter().map(String::as_str).collect() };
    println!("beamclaw: {}", beamclaw_e2e::beamclaw_bin()?.display());
    for name in names {
        let run = match name {
            "ready" => ready().await,
            "rss" => rss().await,
            "join" => join().await,
            "detect" => detect().await,
            "serial" => serial().await,
            "sync" => sync().await,
            "forward" => forward().await,
            "handoff" => handoff().await,
            "ws-turns" => ws_turns().await,
            "completions" => completions().await,
            "ttft" => ttft().await,
            "idle-ws" => idle_ws().await,
            other => bail!("unknown benchmark {other}; known: {}", all.join(", ")),
        };
        if let Err(e) = run {
            println!("{name}: FAILED: {e:#}");
        }
    }
    Ok(())
}
