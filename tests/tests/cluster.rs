//! Three real nodes on loopback: they form a cluster within 5 s; a session written through node 1
//! is read complete through node 3 (and node 3 holds a complete replica); a chat turn sent to
//! node 2 for a session owned by node 1 runs on node 1 and streams its deltas and final back
//! through node 2.

// Test code: a failed step is a failed test (clippy.toml allows unwrap/expect in #[test] fns;
// the helpers here are part of the tests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use beamclaw_e2e::client::text_of;
use beamclaw_e2e::node::{CALL_TIMEOUT_MS, unique_key};
use beamclaw_e2e::{Cluster, ClusterOptions, poll_until};
use serde_json::json;

/// The bound on forming a 3-node cluster, from the first spawn.
const FORM_WITHIN: Duration = Duration::from_secs(5);
const TURN_TIMEOUT_MS: u64 = 30_000;

/// Model requests the mock served, by node: provider statistics from a node's `status`.
async fn provider_requests(cluster: &Cluster, i: usize) -> u64 {
    let status = cluster.node(i).status().await.unwrap();
    let models = &status["providers"]["models"];
    // Sum every numeric "requests" field, whatever the nesting of the snapshot.
    fn sum(v: &serde_json::Value) -> u64 {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, v)| if k == "requests" { v.as_u64().unwrap_or(0) } else { sum(v) })
                .sum(),
            serde_json::Value::Array(a) => a.iter().map(sum).sum(),
            _ => 0,
        }
    }
    sum(models)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_replicate_and_forward() {
    let (cluster, formed) = Cluster::start(&ClusterOptions::default(), FORM_WITHIN)
        .await
        .expect("3 nodes form a cluster within 5 s");
    println!(
        "formed: 3 nodes, every one sees all alive, {} ms after the first spawn",
        formed.as_millis()
    );

    // A session written through node 1 ...
    let session = unique_key("written-on-1");
    let mut c1 = cluster.node(0).client().await.unwrap();
    let mut expected = Vec::new();
    for n in 1..=3 {
        let text = format!("message {n} through node 1 ({session})");
        let key = format!("{session}-k{n}");
        c1.chat_turn(&session, &text, &key, TURN_TIMEOUT_MS).await.unwrap();
        expected.push(("user".to_string(), text.clone()));
        expected.push(("assistant".to_string(), format!("echo: {text}")));
    }
    assert_eq!(cluster.node(0).transcript(&session).await.unwrap(), expected);

    // ... is read complete through node 3,
    assert_eq!(
        cluster.node(2).transcript(&session).await.unwrap(),
        expected,
        "chat.history through node 3"
    );
    // and node 3's own replica is complete (its local index, not the owner's answer).
    poll_until("node 3 holds every message", Duration::from_secs(5), || async {
        let row = cluster.node(2).local_row(&session).await?;
        match row.as_ref().and_then(|r| r["messageCount"].as_u64()) {
            Some(n) if n == expected.len() as u64 => Ok(()),
            _ => anyhow::bail!("node 3's row: {row:?}"),
        }
    })
    .await
    .unwrap();

    // A session owned by node 1, driven through node 2.
    let owned = cluster.session_owned_by(0, 1, "owned-by-1").await.unwrap();
    let reply = "A reply streamed from node 1 through the mesh to node 2, in pieces.";
    cluster
        .mock()
        .unwrap()
        .load_script(&json!({"responses": [
            {"text": reply, "chunkChars": 4, "tokensPerSecond": 30.0}
        ]}))
        .await
        .unwrap();
    let before = [provider_requests(&cluster, 0).await, provider_requests(&cluster, 1).await];
    let mut c2 = cluster.node(1).client().await.unwrap();
    let events =
        c2.chat_turn(&owned, "stream to me through node 2", "fwd-1", TURN_TIMEOUT_MS).await;
    let events = events.expect("the turn sent to node 2 completes");
    let deltas: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["payload"]["state"] == "delta").collect();
    let last = events.last().unwrap();
    assert_eq!(last["payload"]["state"], "final");
    assert_eq!(text_of(&last["payload"]["message"]), reply);
    assert!(
        deltas.len() >= 2,
        "several deltas stream through node 2, got {}: {events:?}",
        deltas.len()
    );
    let mut previous = String::new();
    let mut added = String::new();
    for d in &deltas {
        let cumulative = text_of(&d["payload"]["message"]);
        assert!(
            cumulative.starts_with(&previous),
            "deltas are cumulative: {previous:?} then {cumulative:?}"
        );
        previous = cumulative;
        added.push_str(d["payload"]["deltaText"].as_str().unwrap_or_default());
    }
    assert_eq!(added, previous, "deltaText adds up to the streamed text");
    assert!(reply.starts_with(&previous));
    let after = [provider_requests(&cluster, 0).await, provider_requests(&cluster, 1).await];
    assert_eq!(
        (after[0] - before[0], after[1] - before[1]),
        (1, 0),
        "the turn ran on node 1 (the owner), not on node 2"
    );
    assert_eq!(cluster.owner_seen_by(1, &owned).await.unwrap().0, 0, "node 1 still owns it");
    let history = cluster.node(1).transcript(&owned).await.unwrap();
    assert_eq!(history.last().unwrap(), &("assistant".to_string(), reply.to_string()));
    println!("forwarded turn: {} deltas then final through node 2", deltas.len());

    c1.close().await;
    c2.close().await;
    let _ = CALL_TIMEOUT_MS;
    cluster.assert_no_panics().unwrap();
}
