//! The driver over real sockets: QUIC on loopback, mutual TLS, the redb store, tokio time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use beamclaw_crdt::store::{Store, StoreOptions};
use beamclaw_crdt::{Message, Role, SessionKey, StopReason, Usage};
use beamclaw_mesh::core::{RequestBody, Response, RunStatus, TurnInput};
use beamclaw_mesh::driver::{self, MeshConfig, MeshHandle, NodeKey, TurnCommand};
use tokio::sync::mpsc;

struct TestNode {
    handle: MeshHandle,
    _dir: tempfile::TempDir,
}

async fn node(
    seed: u8,
    secret: &str,
    seeds: Vec<std::net::SocketAddr>,
) -> (TestNode, mpsc::Receiver<TurnCommand>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), &StoreOptions::default()).unwrap());
    let key = NodeKey::from_secret([seed; 32]).unwrap();
    let mut cfg = MeshConfig::new(key, "127.0.0.1:0".parse().unwrap());
    cfg.cluster_secret = Some(secret.to_string());
    cfg.seeds = seeds;
    let (handle, turns) = driver::start(cfg, store).await.unwrap();
    (TestNode { handle, _dir: dir }, turns)
}

/// Answers every turn like a runtime would: one final assistant message.
fn answer_turns(handle: MeshHandle, mut turns: mpsc::Receiver<TurnCommand>) {
    tokio::spawn(async move {
        while let Some(cmd) = turns.recv().await {
            if let TurnCommand::Start { run, input, .. } = cmd {
                assert!(
                    handle.check_epoch(&run.session, run.epoch).await,
                    "fenced out of a fresh turn"
                );
                let mut reply =
                    Message::text(format!("r:{}", input.id), Role::Assistant, "pong", 1);
                reply.reply_to = vec![input.id.clone()];
                reply.stop_reason = Some(StopReason::Stop);
                let out = TurnInput::Output {
                    run,
                    messages: vec![reply],
                    usage: Usage::default(),
                    done: true,
                    reply: None,
                };
                handle.turn(out).await.unwrap();
            }
        }
    });
}

async fn wait_members(handle: &MeshHandle, n: usize) {
    for _ in 0..200 {
        let status = handle.status().await.unwrap();
        if status.members.iter().filter(|m| m.alive).count() + 1 == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cluster of {n} did not form: {:?}", handle.status().await.unwrap().members);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_form_a_cluster_and_forward_requests_to_the_owner() {
    let (a, a_turns) = node(1, "test-secret", vec![]).await;
    let (b, b_turns) = node(2, "test-secret", vec![a.handle.mesh_addr()]).await;
    answer_turns(a.handle.clone(), a_turns);
    answer_turns(b.handle.clone(), b_turns);
    wait_members(&a.handle, 2).await;
    wait_members(&b.handle, 2).await;

    // Sessions land on both nodes; every one is served through either node.
    for i in 0..8 {
        let session = SessionKey::new(format!("agent:main:s{i}")).unwrap();
        let via = if i % 2 == 0 { &a.handle } else { &b.handle };
        let body = RequestBody::Submit {
            agent_id: "main".into(),
            message: Box::new(Message::user_text("", "ping", 1)),
            idempotency_key: format!("k{i}"),
        };
        match via.request(session.clone(), body).await {
            Ok(Response::Submitted { status: RunStatus::Started, .. }) => {}
            other => panic!("submit {i}: {other:?}"),
        }
        // The reply is written by the owner and readable through the other node.
        let other = if i % 2 == 0 { &b.handle } else { &a.handle };
        let mut messages = Vec::new();
        for _ in 0..100 {
            if let Ok(Response::History { messages: m, .. }) =
                other.request(session.clone(), RequestBody::Read { limit: 10, before: None }).await
            {
                messages = m;
                if messages.len() == 2 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(messages.len(), 2, "session {i}: {messages:?}");
    }
    let owned_a = a.handle.status().await.unwrap().sessions_owned;
    let owned_b = b.handle.status().await.unwrap().sessions_owned;
    assert_eq!(owned_a + owned_b, 8);
    assert!(
        owned_a > 0 && owned_b > 0,
        "placement put everything on one node: {owned_a}/{owned_b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_cluster_secret_is_refused() {
    let (a, a_turns) = node(3, "right-secret", vec![]).await;
    answer_turns(a.handle.clone(), a_turns);
    let session = SessionKey::new("agent:main:secret").unwrap();
    let body = RequestBody::Submit {
        agent_id: "main".into(),
        message: Box::new(Message::user_text("", "private", 1)),
        idempotency_key: "k".into(),
    };
    a.handle.request(session, body).await.unwrap();
    let (intruder, _turns) = node(4, "wrong-secret", vec![a.handle.mesh_addr()]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = intruder.handle.status().await.unwrap();
    assert!(status.members.iter().all(|m| !m.alive), "intruder joined: {:?}", status.members);
    assert_eq!(status.sessions_known, 0, "intruder learned about sessions");
    let status = a.handle.status().await.unwrap();
    assert!(status.members.iter().all(|m| !m.alive), "the cluster admitted the intruder");
    let refused =
        a.handle.transport_stats().handshakes_refused.load(std::sync::atomic::Ordering::Relaxed)
            + intruder
                .handle
                .transport_stats()
                .handshakes_refused
                .load(std::sync::atomic::Ordering::Relaxed);
    assert!(refused > 0, "no handshake was refused");
}
