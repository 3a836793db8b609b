//! Agent runtime benchmark (a bench binary, `harness = false`):
//!
//! 1. Turns per second: session actors on one node run turns against an in-process mock LLM
//!    (real loopback socket, Anthropic wire format, zero latency), many sessions at once.
//! 2. Time to first token added by the runtime: submit -> first `AssistantDelta` event, compared
//!    with a bare HTTP client's request -> first text delta on the same mock, one at a time.
//!
//! Run: `cargo bench -p beamclaw --bench runtime [-- throughput|ttft]` (figures in
//! docs/benchmarks.md).

use anyhow::Context;
use beamclaw::agent::{MemorySessions, RuntimePorts, StartTurn, TurnEvents};
use beamclaw::config::{EnvKeys, LoadedConfig, QueueMode, parse_str};
use beamclaw::mock_llm;
use beamclaw::provider::RetryPolicy;
use beamclaw::runtime::AgentRuntime;
use beamclaw::tools::ToolRegistry;
use beamclaw_crdt::{Message, SessionKey};
use beamclaw_mesh::core::turn::{RunRef, TurnEvent};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Sessions driven at once in the throughput run.
const SESSIONS: usize = 128;
/// Turns per session in the throughput run (each waits for the previous one).
const TURNS_PER_SESSION: usize = 40;
/// Turns run before measuring, to warm connections and caches.
const WARMUP_TURNS: usize = 500;
/// Samples of each kind in the time-to-first-token run.
const TTFT_SAMPLES: usize = 2000;

/// Signals the first delta and the end of each run.
#[derive(Default)]
struct Signals {
    first: Mutex<HashMap<String, oneshot::Sender<Instant>>>,
    done: Mutex<HashMap<String, oneshot::Sender<bool>>>,
}

impl TurnEvents for Signals {
    fn emit(&self, run: &RunRef, event: TurnEvent) {
        match &event {
            TurnEvent::AssistantDelta { .. } => {
                if let Some(tx) =
                    self.first.lock().unwrap_or_else(|p| p.into_inner()).remove(&run.run_id)
                {
                    let _ = tx.send(Instant::now());
                }
            }
            e if e.is_terminal() => {
                if let Some(tx) =
                    self.done.lock().unwrap_or_else(|p| p.into_inner()).remove(&run.run_id)
                {
                    let _ = tx.send(matches!(e, TurnEvent::Final { .. }));
                }
            }
            _ => {}
        }
    }
}

struct Bench {
    runtime: AgentRuntime,
    sessions: Arc<MemorySessions>,
    signals: Arc<Signals>,
    mock: std::net::SocketAddr,
    _data: tempfile::TempDir,
}

impl Bench {
    async fn new() -> anyhow::Result<Self> {
        let mock = mock_llm::spawn(Vec::new()).await?;
        let text = format!(
            r#"{{ models: {{ providers: {{ mock: {{ baseUrl: "http://{mock}", apiKey: "k", api: "anthropic-messages" }} }} }},
                 agents: {{ defaults: {{ model: "mock/bench" }} }},
                 messages: {{ queue: {{ mode: "followup", debounceMs: 0 }} }} }}"#
        );
        let data = tempfile::tempdir()?;
        let loaded = LoadedConfig {
            config: parse_str(&text, "bench", &|_| None)?,
            data_dir: data.path().to_path_buf(),
            file: None,
            env_keys: EnvKeys::default(),
        };
        assert_eq!(loaded.queue_settings().mode, QueueMode::Followup);
        let sessions = Arc::new(MemorySessions::new());
        let signals = Arc::new(Signals::default());
        let ports = RuntimePorts {
            history: sessions.clone(),
            output: sessions.clone(),
            events: signals.clone(),
            epochs: sessions.clone(),
        };
        let runtime = AgentRuntime::build(
            &loaded,
            ToolRegistry::new(),
            ports,
            "bench".into(),
            None,
            RetryPolicy::default(),
        )?;
        Ok(Bench { runtime, sessions, signals, mock, _data: data })
    }

    /// Runs one turn; returns (submit time, first delta, success).
    async fn turn(
        &self,
        session: &SessionKey,
        n: usize,
    ) -> anyhow::Result<(Instant, Instant, bool)> {
        let run_id = format!("{session}-{n}");
        let message = Message::user_text(format!("u:{run_id}"), format!("hello number {n}"), 0);
        self.sessions.append_user(session, std::slice::from_ref(&message));
        let (first_tx, first_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        self.signals
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id.clone(), first_tx);
        self.signals.done.lock().unwrap_or_else(|p| p.into_inner()).insert(run_id.clone(), done_tx);
        let started = Instant::now();
        self.runtime.actors.submit(StartTurn {
            session: session.clone(),
            epoch: 0,
            run_id,
            messages: vec![message],
        })?;
        let ok = done_rx.await.unwrap_or(false);
        let first = first_rx.await.unwrap_or(started);
        Ok((started, first, ok))
    }
}

/// CPU time (user + system) this process used so far, from /proc/self/stat (Linux; clock ticks
/// of 10 ms). On a shared machine, CPU per turn is a steadier figure than wall-clock turns/s.
fn process_cpu() -> anyhow::Result<Duration> {
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_name = stat.rsplit_once(')').context("unexpected /proc/self/stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3 of the file, utime field 14, stime field 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(Duration::from_millis((utime + stime) * 1000 / TICKS_PER_SECOND))
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs SESSIONS x TURNS_PER_SESSION turns, SESSIONS at once. `conversation`: each driver keeps
/// one session, so requests carry a growing history (up to 2 x TURNS_PER_SESSION messages);
/// otherwise every turn is the first of a new session (history: one message).
async fn throughput(bench: Arc<Bench>, conversation: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let cpu_before = process_cpu()?;
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let bench = bench.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for n in 0..TURNS_PER_SESSION {
                let name = if conversation {
                    format!("agent:main:conversation-{s}")
                } else {
                    format!("agent:main:fresh-{s}-{n}")
                };
                ok += usize::from(bench.turn(&SessionKey::new(name)?, n).await?.2);
            }
            anyhow::Ok(ok)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await??;
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu()? - cpu_before;
    let total = SESSIONS * TURNS_PER_SESSION;
    assert_eq!(ok, total, "every turn must end with a final message");
    let shape = if conversation {
        format!("{SESSIONS} sessions x {TURNS_PER_SESSION} turns, growing history")
    } else {
        format!("{total} new sessions, {SESSIONS} at once")
    };
    let cpu_per_turn = cpu / total as u32;
    println!(
        "throughput ({shape}): {total} turns in {:.2} s = {:.0} turns/s; cpu {:.2} s = {:.0} us \
         per turn (runtime, mock and both HTTP ends), so 2 fully used cores run {:.0} turns/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64(),
        us(cpu_per_turn),
        2.0 / cpu_per_turn.as_secs_f64()
    );
    Ok(())
}

async fn warm_up(bench: &Bench) -> anyhow::Result<()> {
    for n in 0..WARMUP_TURNS {
        let session = SessionKey::new(format!("agent:main:warmup-{n}"))?;
        assert!(bench.turn(&session, n).await?.2);
    }
    Ok(())
}

/// Request -> first text delta with a bare HTTP client (no runtime).
async fn direct_first_token(
    client: &reqwest::Client,
    url: &str,
    n: usize,
) -> anyhow::Result<Duration> {
    let body = serde_json::json!({
        "model": "bench", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": format!("hello number {n}")}],
    })
    .to_string();
    let started = Instant::now();
    let mut response = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-api-key", "k")
        .body(body)
        .send()
        .await?;
    let mut seen = Vec::new();
    let mut first = None;
    while let Some(chunk) = response.chunk().await? {
        seen.extend_from_slice(&chunk);
        if first.is_none() && seen.windows(10).any(|w| w == b"text_delta") {
            first = Some(started.elapsed());
        }
    }
    first.context("the mock streamed no text delta")
}

async fn added_ttft(bench: Arc<Bench>) -> anyhow::Result<()> {
    let client = beamclaw::provider::http_client()?;
    let url = format!("http://{}/v1/messages", bench.mock);
    let session = SessionKey::new("agent:main:ttft")?;
    let mut direct = Vec::with_capacity(TTFT_SAMPLES);
    let mut runtime = Vec::with_capacity(TTFT_SAMPLES);
    for n in 0..WARMUP_TURNS {
        direct_first_token(&client, &url, n).await?;
    }
    for n in 0..TTFT_SAMPLES {
        direct.push(direct_first_token(&client, &url, n).await?);
        // A fresh session per sample keeps the history (and so the request) the same size.
        let session = SessionKey::new(format!("{session}-{n}"))?;
        let (started, first, ok) = bench.turn(&session, n).await?;
        assert!(ok);
        runtime.push(first - started);
    }
    direct.sort();
    runtime.sort();
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let d = percentile(&direct, q);
        let r = percentile(&runtime, q);
        println!(
            "time to first token {name}: direct {:.0} us, through the runtime {:.0} us, added {:.0} us",
            us(d),
            us(r),
            us(r.saturating_sub(d))
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this binary too, without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("runtime bench: skipped (run with `cargo bench -p beamclaw --bench runtime`)");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let only = |part: &str| {
        let named: Vec<String> =
            std::env::args().filter(|a| a == "throughput" || a == "ttft").collect();
        named.is_empty() || named.iter().any(|a| a == part)
    };
    rt.block_on(async {
        let bench = Arc::new(Bench::new().await?);
        warm_up(&bench).await?;
        if only("throughput") {
            throughput(bench.clone(), false).await?;
            throughput(bench.clone(), true).await?;
        }
        if only("ttft") {
            added_ttft(bench).await?;
        }
        Ok(())
    })
}
