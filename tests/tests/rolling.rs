//! A rolling restart of all 3 nodes (SIGTERM, restart from the same data directory, wait for the
//! rejoin, next node) under a steady load of chat turns from several clients. Clients go to
//! another node when they receive `shutdown` or lose their connection, and send again with the
//! SAME idempotency key. Then: 0 acknowledged messages lost, 0 turns failed, 0 turns run twice
//! (the mock model saw exactly one request per user message, and every replica holds exactly one
//! final answer per user message).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use beamclaw_e2e::client::Persistent;
use beamclaw_e2e::node::{last_user_text, unique_key};
use beamclaw_e2e::{Cluster, ClusterOptions, poll_until};
use serde_json::json;

const CLIENTS: usize = 4;
/// Turns in all, at most: the mock remembers its last 1000 requests, and every one is counted.
const TURNS_MAX: usize = 800;
/// One turn may take this long, reconnections included, before it counts as failed.
const TURN_DEADLINE: Duration = Duration::from_secs(60);
const DRAIN_WAIT: Duration = Duration::from_secs(40);

#[derive(Default, Debug)]
struct Report {
    /// Text of every message a chat.send acknowledged.
    acked: Vec<String>,
    completed: usize,
    failed: Vec<String>,
    /// Error answers to chat.send (the client then tried another node).
    refusals: Vec<String>,
    shutdowns: usize,
    connection_losses: usize,
    slowest: Duration,
}

struct Load {
    urls: Vec<String>,
    token: Option<String>,
    stop: AtomicBool,
    turns: AtomicUsize,
}

/// One client: its own session, one turn at a time, through [`Persistent`] (next node on
/// `shutdown`, on a lost connection or a refusal; the same idempotency key again).
async fn client_loop(load: Arc<Load>, c: usize, session: String) -> Report {
    let mut report = Report::default();
    let mut client = Persistent::new(load.urls.clone(), load.token.clone(), c % load.urls.len());
    let mut n = 0;
    while !load.stop.load(Ordering::SeqCst) && load.turns.fetch_add(1, Ordering::SeqCst) < TURNS_MAX
    {
        n += 1;
        let text = format!("client {c} message {n} [{session}]");
        let key = format!("c{c}-m{n}-{}", uuid::Uuid::new_v4().simple());
        let turn = client.turn(&session, &text, &key, TURN_DEADLINE).await;
        if turn.accepted_after.is_some() {
            report.acked.push(text.clone());
        }
        report.slowest = report.slowest.max(turn.done_after.unwrap_or(TURN_DEADLINE));
        report.refusals.extend(turn.refusals);
        report.shutdowns += turn.shutdowns;
        report.connection_losses += turn.connection_losses;
        match turn.failure {
            None => report.completed += 1,
            Some(e) => report.failed.push(format!("{text}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.close().await;
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_loses_and_repeats_nothing() {
    let (mut cluster, _) =
        Cluster::start(&ClusterOptions::default(), Duration::from_secs(10)).await.unwrap();
    // Turns that stream for about 300 ms, so that drains meet turns in flight.
    let response =
        json!({"text": "a reply in six pieces...", "chunkChars": 4, "tokensPerSecond": 20.0});
    let script = json!({"responses": vec![response; TURNS_MAX + 100]});
    cluster.mock().unwrap().load_script(&script).await.unwrap();

    let load = Arc::new(Load {
        urls: cluster.nodes.iter().map(|n| n.ws_url()).collect(),
        token: cluster.node(0).opts.token.clone(),
        stop: AtomicBool::new(false),
        turns: AtomicUsize::new(0),
    });
    let sessions: Vec<String> =
        (0..CLIENTS).map(|c| unique_key(&format!("rolling-c{c}"))).collect();
    let tasks: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(c, s)| tokio::spawn(client_loop(load.clone(), c, s.clone())))
        .collect();

    let turns = || load.turns.load(Ordering::SeqCst);
    let progress = |from: usize, what: &'static str| {
        poll_until(what, Duration::from_secs(30), move || async move {
            let now = turns();
            anyhow::ensure!(
                now >= from + 2 * CLIENTS,
                "{now} turns started, waiting for {}",
                from + 2 * CLIENTS
            );
            Ok(())
        })
    };
    progress(0, "the load is running").await.unwrap();
    let rolling = Instant::now();
    for i in 0..cluster.nodes.len() {
        let t = Instant::now();
        let status = cluster.nodes[i].terminate(DRAIN_WAIT).await.unwrap();
        let drained = t.elapsed();
        assert!(status.success(), "{} exited with {status} after SIGTERM", cluster.nodes[i].name());
        cluster.nodes[i].start().await.unwrap();
        cluster.wait_formed(Duration::from_secs(15)).await.unwrap();
        println!(
            "{}: drained and exited in {} ms, back in the cluster {} ms after SIGTERM",
            cluster.nodes[i].name(),
            drained.as_millis(),
            t.elapsed().as_millis()
        );
        progress(turns(), "the load goes on after the restart").await.unwrap();
    }
    let rolled = rolling.elapsed();
    load.stop.store(true, Ordering::SeqCst);
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.unwrap());
    }

    let acked: Vec<&String> = reports.iter().flat_map(|r| &r.acked).collect();
    let failed: Vec<&String> = reports.iter().flat_map(|r| &r.failed).collect();
    let refusals: Vec<&String> = reports.iter().flat_map(|r| &r.refusals).collect();
    println!(
        "rolling restart of 3 nodes in {} ms: {} turns acknowledged, {} completed, {} failed; \
         {} shutdown events, {} connection losses, {} refusals {:?}; slowest turn {} ms",
        rolled.as_millis(),
        acked.len(),
        reports.iter().map(|r| r.completed).sum::<usize>(),
        failed.len(),
        reports.iter().map(|r| r.shutdowns).sum::<usize>(),
        reports.iter().map(|r| r.connection_losses).sum::<usize>(),
        refusals.len(),
        refusals,
        reports.iter().map(|r| r.slowest).max().unwrap_or_default().as_millis()
    );
    assert!(failed.is_empty(), "turns failed: {failed:#?}");

    // 0 turns run twice, 0 never run: one model request per acknowledged user message.
    let requests = cluster.mock().unwrap().requests().await.unwrap();
    assert!(
        requests.len() < 1000,
        "the mock forgot requests ({}); lower TURNS_MAX",
        requests.len()
    );
    let mut per_message: HashMap<String, usize> = HashMap::new();
    for r in &requests {
        if let Some(text) = last_user_text(r) {
            *per_message.entry(text).or_default() += 1;
        }
    }
    let twice: Vec<(&String, usize)> = acked
        .iter()
        .map(|t| (*t, per_message.get(*t).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(
        twice.is_empty(),
        "user messages whose turn ran other than once (text, runs): {twice:#?}"
    );

    // 0 acknowledged messages lost: in the transcript through every node, and in every replica,
    // each with exactly one final answer.
    for session in &sessions {
        for node in &cluster.nodes {
            let t = node.transcript(session).await.unwrap();
            for text in acked.iter().filter(|t| t.contains(session.as_str())) {
                assert!(
                    t.iter().any(|(r, x)| r == "user" && x == *text),
                    "{text:?} is missing through {}",
                    node.name()
                );
            }
        }
    }
    cluster.assert_no_panics().unwrap();
    let mut by_session: HashMap<&str, Vec<&String>> = HashMap::new();
    for text in &acked {
        let s = sessions.iter().find(|s| text.contains(s.as_str())).unwrap();
        by_session.entry(s.as_str()).or_default().push(*text);
    }
    let expected: Vec<(String, Vec<String>)> = by_session
        .into_iter()
        .map(|(s, texts)| (s.to_string(), texts.into_iter().cloned().collect()))
        .collect();
    // Replicas converge in the background: compare them once every node holds every message.
    for (session, texts) in &expected {
        let want = 2 * texts.len() as u64;
        cluster.wait_level(session, want, Duration::from_secs(20)).await.unwrap();
    }
    for (session, texts) in &expected {
        let replicas = cluster.kill_all_and_read(session).unwrap();
        for (i, r) in replicas.iter().enumerate() {
            assert_eq!(
                r,
                &replicas[0],
                "{session}: node {}'s replica differs from node 1's",
                i + 1
            );
            for text in texts {
                let id = r.user_id(text).unwrap_or_else(|| panic!("node {}: {text:?} lost", i + 1));
                assert_eq!(
                    r.answers(id).len(),
                    1,
                    "node {}: {text:?} answered {:?}",
                    i + 1,
                    r.answers(id)
                );
            }
        }
    }
}
