//! A node with the wrong cluster secret is refused: it never appears in the cluster's status, and
//! it learns nothing about sessions (its own status shows no other member and no session, its
//! listing is empty, and it cannot read the cluster's transcript). The same node with the right
//! secret then joins: the refusal was the secret's doing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use beamclaw_e2e::node::{TOKEN, all_members, unique_key};
use beamclaw_e2e::process::free_port;
use beamclaw_e2e::{Cluster, ClusterOptions, Node, NodeOptions};
use serde_json::json;

/// How long the intruder is watched: several SWIM probe periods (1 s on the LAN preset) and
/// redials.
const WATCH: Duration = Duration::from_secs(4);
const TURN_TIMEOUT_MS: u64 = 30_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_is_refused_and_learns_nothing() {
    let (mut cluster, _) =
        Cluster::start(&ClusterOptions::default(), Duration::from_secs(10)).await.unwrap();
    let session = unique_key("secret");
    let secret_text = "the cluster's private conversation";
    let mut c = cluster.node(0).client().await.unwrap();
    c.chat_turn(&session, secret_text, "k-1", TURN_TIMEOUT_MS).await.unwrap();
    c.close().await;

    let ip = cluster.node(0).opts.gateway.ip();
    let mut intruder = Node::new(NodeOptions {
        name: "intruder".into(),
        data_dir: cluster.dir.path().join("intruder"),
        gateway: std::net::SocketAddr::new(ip, free_port(ip).unwrap()),
        mesh: std::net::SocketAddr::new(ip, free_port(ip).unwrap()),
        join: cluster.nodes.iter().map(|n| n.opts.mesh).collect(),
        token: Some(TOKEN.to_string()),
        cluster_secret: Some("not-the-cluster-secret".into()),
        config: cluster.node(0).opts.config.clone(),
        netns: None,
    });
    intruder.start().await.unwrap();

    let watch = Instant::now();
    while watch.elapsed() < WATCH {
        for node in &cluster.nodes {
            let seen = all_members(&node.status().await.unwrap());
            assert!(!seen.contains(&intruder.id), "{} lists the intruder: {seen:?}", node.name());
        }
        let status = intruder.status().await.unwrap();
        assert_eq!(
            all_members(&status),
            vec![intruder.id.clone()],
            "the intruder sees members: {status}"
        );
        assert_eq!(status["sessions"]["owned"], 0, "{status}");
        assert_eq!(status["sessions"]["replicated"], 0, "{status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut ic = intruder.client().await.unwrap();
    let listed = ic.call("sessions.list", json!({}), 10_000).await.unwrap();
    assert_eq!(listed["sessions"], json!([]), "the intruder lists sessions: {listed}");
    // Reading the session through the intruder must not reach the cluster's copy.
    match ic.history(&session, 10_000).await {
        Ok(h) => {
            assert!(!h.to_string().contains(secret_text), "the intruder read the transcript: {h}")
        }
        Err(e) => println!("history through the intruder: {e}"),
    }
    ic.close().await;
    // It did try, and was refused at the handshake: the cluster's nodes logged its address.
    let intruder_addr = intruder.opts.mesh.to_string();
    let refusals: Vec<String> = cluster
        .nodes
        .iter()
        .flat_map(|n| n.stderr_logs())
        .flat_map(|log| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            text.lines().map(str::to_string).collect::<Vec<_>>()
        })
        .filter(|l| l.contains("mesh handshake refused") && l.contains(&intruder_addr))
        .collect();
    assert!(!refusals.is_empty(), "no node logged a refused handshake from {intruder_addr}");
    println!("{} handshakes from the intruder refused, e.g. {}", refusals.len(), refusals[0]);

    // Control: the same node (same identity) with the right secret joins.
    intruder.kill9().unwrap();
    intruder.opts.cluster_secret = cluster.node(0).opts.cluster_secret.clone();
    intruder.start().await.unwrap();
    let id = intruder.id.clone();
    let joined = Instant::now();
    beamclaw_e2e::poll_until(
        "the node with the right secret joins",
        Duration::from_secs(10),
        || async {
            for node in &cluster.nodes {
                let alive = node.alive_members().await?;
                anyhow::ensure!(alive.contains(&id), "{} does not see it", node.name());
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    println!("with the right secret it joined in {} ms", joined.elapsed().as_millis());
    cluster.nodes.push(intruder);
    cluster.assert_no_panics().unwrap();
}
