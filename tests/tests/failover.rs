//! kill -9 of a session's owner, mid-turn: another node owns the session and accepts turns within
//! 5 s; no acknowledged message is lost; the killed node restarts from the same data directory
//! (same identity), rejoins, and its copy of the session becomes complete.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use beamclaw_e2e::client::Persistent;
use beamclaw_e2e::node::last_user_text;
use beamclaw_e2e::{Cluster, ClusterOptions, poll_until};
use serde_json::json;

/// The bound on owner failover.
const FAILOVER_WITHIN: Duration = Duration::from_secs(5);
const TURN_TIMEOUT_MS: u64 = 30_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_killed_mid_turn_fails_over_and_catches_up() {
    let (mut cluster, formed) =
        Cluster::start(&ClusterOptions::default(), Duration::from_secs(10)).await.unwrap();
    println!("formed in {} ms", formed.as_millis());

    // Drive the session through node 1 and make node 2 its owner, so the killed node is not the
    // one the client talks to.
    let (via, victim) = (0usize, 1usize);
    let session = cluster.session_owned_by(victim, via, "failover").await.unwrap();
    let mut client = Some(cluster.node(via).client().await.unwrap());
    let mut acked: Vec<String> = Vec::new();
    for n in 1..=3 {
        let text = format!("before the crash {n}");
        let c = client.as_mut().unwrap();
        c.chat_turn(&session, &text, &format!("k-before-{n}"), TURN_TIMEOUT_MS).await.unwrap();
        acked.push(text);
    }

    // A turn in flight on the owner when it dies: acknowledged (durable), its model call slow.
    let mock = cluster.mock().unwrap();
    mock.load_script(&json!({"responses": [{"text": "never finished", "latencyMs": 20000}]}))
        .await
        .unwrap();
    let in_flight = "in flight when the owner died".to_string();
    let accepted = client
        .as_mut()
        .unwrap()
        .chat_send(&session, &in_flight, "k-in-flight", TURN_TIMEOUT_MS)
        .await
        .unwrap();
    assert_eq!(accepted["status"], "started");
    acked.push(in_flight.clone());
    poll_until(
        "the owner called the model for the in-flight turn",
        Duration::from_secs(10),
        || async {
            let requests = mock.requests().await?;
            if requests.iter().any(|r| last_user_text(r).as_deref() == Some(in_flight.as_str())) {
                Ok(())
            } else {
                anyhow::bail!("{} requests, none for it yet", requests.len())
            }
        },
    )
    .await
    .unwrap();
    let (_, epoch_before) = cluster.owner_seen_by(via, &session).await.unwrap();

    let killed_at = Instant::now();
    cluster.nodes[victim].kill9().unwrap();

    // Another node owns the session and accepts a turn within 5 s (asked through node 1 until
    // it does, with the same idempotency key).
    let mut persistent =
        Persistent::new(vec![cluster.node(via).ws_url()], cluster.node(via).opts.token.clone(), 0);
    let after = "the first message after the crash".to_string();
    let since_kill = killed_at.elapsed();
    let turn = persistent.turn(&session, &after, "k-after-1", Duration::from_secs(30)).await;
    assert!(turn.failure.is_none(), "{turn:?}");
    let failover = since_kill + turn.accepted_after.unwrap();
    let answered = since_kill + turn.done_after.unwrap();
    acked.push(after.clone());
    println!(
        "failover: turn accepted {} ms and answered {} ms after kill -9 of the owner ({} refusals: {:?})",
        failover.as_millis(),
        answered.as_millis(),
        turn.refusals.len(),
        turn.refusals
    );
    assert!(failover <= FAILOVER_WITHIN, "a turn was accepted only after {failover:?}");
    persistent.close().await;
    let (owner, epoch) = cluster.owner_seen_by(via, &session).await.unwrap();
    assert_ne!(owner, victim, "the killed node still owns the session");
    assert!(epoch > epoch_before, "the new owner took a higher epoch ({epoch_before} -> {epoch})");

    // More turns through the other survivor.
    let other = 3 - via - victim;
    let mut c_other = cluster.node(other).client().await.unwrap();
    for n in 2..=3 {
        let text = format!("after the crash {n}");
        c_other.chat_turn(&session, &text, &format!("k-after-{n}"), TURN_TIMEOUT_MS).await.unwrap();
        acked.push(text);
    }

    // Restart from the same data directory: same identity; it rejoins.
    let restarted_at = Instant::now();
    cluster.nodes[victim].start().await.unwrap();
    cluster.wait_formed(Duration::from_secs(10)).await.unwrap();
    println!("restart: rejoined {} ms after the restart began", restarted_at.elapsed().as_millis());

    // Every acknowledged message is in the session, read through every node; the in-flight one
    // too (it was durable on the killed owner), and every one of them is answered.
    let reference =
        poll_until("every acknowledged message is answered", Duration::from_secs(20), || async {
            let t = cluster.node(via).transcript(&session).await?;
            let missing: Vec<&String> =
                acked.iter().filter(|m| !t.iter().any(|(r, x)| r == "user" && x == *m)).collect();
            anyhow::ensure!(missing.is_empty(), "missing {missing:?} from {t:?}");
            let unanswered: Vec<&String> = acked
                .iter()
                .filter(|m| {
                    let at = t.iter().position(|(r, x)| r == "user" && x == *m).unwrap_or(0);
                    !t[at + 1..].iter().any(|(r, _)| r == "assistant")
                })
                .collect();
            anyhow::ensure!(unanswered.is_empty(), "unanswered {unanswered:?} in {t:?}");
            Ok(t)
        })
        .await
        .unwrap();
    let caught_up =
        poll_until("the restarted node's copy is complete", Duration::from_secs(20), || async {
            let row = cluster.node(victim).local_row(&session).await?;
            let count = row.as_ref().and_then(|r| r["messageCount"].as_u64());
            anyhow::ensure!(
                count == Some(reference.len() as u64),
                "its row: {row:?}, want {} messages",
                reference.len()
            );
            let t = cluster.node(victim).transcript(&session).await?;
            anyhow::ensure!(t == reference, "through it: {t:?}");
            Ok(())
        })
        .await;
    caught_up.unwrap();
    println!(
        "catch-up: complete {} ms after the restart began",
        restarted_at.elapsed().as_millis()
    );
    for i in 0..3 {
        assert_eq!(
            cluster.node(i).transcript(&session).await.unwrap(),
            reference,
            "through node {}",
            i + 1
        );
    }
    cluster.assert_no_panics().unwrap();

    // The replicas themselves, read from the stores: identical, holding every acknowledged
    // message, each answered by exactly one final reply.
    cluster.wait_level(&session, reference.len() as u64, Duration::from_secs(20)).await.unwrap();
    let replicas = cluster.kill_all_and_read(&session).unwrap();
    for (i, r) in replicas.iter().enumerate() {
        assert_eq!(r, &replicas[0], "node {}'s replica differs from node 1's", i + 1);
    }
    for text in &acked {
        let id = replicas[0].user_id(text).unwrap_or_else(|| panic!("{text:?} is not stored"));
        let answers = replicas[0].answers(id);
        assert_eq!(answers.len(), 1, "{text:?} has {} final answers: {answers:?}", answers.len());
    }
}
