//! Random and mutated frames through the real decoder and dispatcher, on a live connection:
//! every frame gets an answer or is ignored, and the connection keeps serving.
// Harness code outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Mutex, OnceLock};

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// Panics on the gateway's runtime threads (a handler task panicking on some input would
/// otherwise go unnoticed: tokio catches it and the request just never gets an answer).
const SERVER_THREAD: &str = "gateway-under-fuzz";
static SERVER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct World {
    runtime: tokio::runtime::Runtime,
    client: Mutex<Option<Client>>,
    _gateway: Gateway,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let on_runtime = std::thread::current().name().is_some_and(|n| n == SERVER_THREAD);
            if on_runtime {
                SERVER_PANICS
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(info.to_string());
            }
            previous(info);
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(SERVER_THREAD)
            .enable_all()
            .build()
            .unwrap();
        let (gateway, client) = runtime.block_on(async {
            let mut cfg = config();
            // The fuzzer sends far faster than a person; the limiter is tested elsewhere.
            cfg.limits.requests_per_second = 100_000;
            cfg.limits.requests_burst = 100_000;
            let gateway = start(cfg).await;
            let client = connect(&gateway, &ConnectOptions::default()).await;
            (gateway, client)
        });
        World { runtime, client: Mutex::new(Some(client)), _gateway: gateway }
    })
}

/// A valid params object for each method, to mutate.
fn valid_params(method: &str) -> Value {
    match method {
        "chat.send" => {
            json!({"sessionKey": "agent:main:fz", "message": "hi", "idempotencyKey": "fz-1"})
        }
        "chat.history" => json!({"sessionKey": "agent:main:fz", "limit": 5}),
        "chat.abort" => json!({"sessionKey": "agent:main:fz"}),
        "chat.inject" => json!({"sessionKey": "agent:main:fz", "message": "note"}),
        "agent" => json!({"message": "hi", "idempotencyKey": "fz-agent", "timeout": 5}),
        "agent.wait" => json!({"runId": "nope", "timeoutMs": 10}),
        "sessions.list" => json!({"limit": 3}),
        "sessions.get"
        | "sessions.messages.subscribe"
        | "sessions.messages.unsubscribe"
        | "sessions.reset" => {
            json!({"key": "agent:main:fz"})
        }
        "sessions.create" => json!({"key": "agent:main:fz2", "label": "x"}),
        "sessions.patch" => json!({"key": "agent:main:fz", "label": null, "fastMode": true}),
        "sessions.delete" => json!({"key": "agent:main:fz2"}),
        "sessions.send" => json!({"key": "agent:main:fz", "message": "hey"}),
        "sessions.abort" => json!({"key": "agent:main:fz"}),
        "config.set" | "config.patch" => json!({"raw": "{}"}),
        "device.pair.approve" | "device.pair.reject" => json!({"requestId": "r"}),
        "device.pair.remove" => json!({"deviceId": "d"}),
        "device.token.rotate" | "device.token.revoke" => {
            json!({"deviceId": "d", "role": "operator"})
        }
        _ => json!({}),
    }
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(|n| Value::from(n as f64 / 7.0)),
        ".{0,24}".prop_map(Value::from),
        Just(json!("agent:main:fz")),
        Just(json!([])),
        Just(json!({})),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Keep,
    Drop(usize),
    Replace(usize, Value),
    Add(String, Value),
    Whole(Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        Just(Mutation::Keep),
        any::<usize>().prop_map(Mutation::Drop),
        (any::<usize>(), any_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        ("[a-zA-Z]{1,10}", any_json()).prop_map(|(k, v)| Mutation::Add(k, v)),
        any_json().prop_map(Mutation::Whole),
    ]
}

fn apply(mut params: Value, mutation: &Mutation) -> Value {
    let Value::Object(map) = &mut params else { return params };
    let keys: Vec<String> = map.keys().cloned().collect();
    match mutation {
        Mutation::Keep => {}
        Mutation::Drop(i) if !keys.is_empty() => {
            map.remove(&keys[i % keys.len()]);
        }
        Mutation::Replace(i, v) if !keys.is_empty() => {
            map.insert(keys[i % keys.len()].clone(), v.clone());
        }
        Mutation::Add(k, v) => {
            map.insert(k.clone(), v.clone());
        }
        Mutation::Whole(v) => return v.clone(),
        _ => {}
    }
    params
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "health",
            "status",
            "system-presence",
            "models.list",
            "config.get",
            "config.set",
            "config.patch",
            "chat.send",
            "chat.history",
            "chat.abort",
            "chat.inject",
            "agent",
            "agent.wait",
            "sessions.list",
            "sessions.get",
            "sessions.create",
            "sessions.patch",
            "sessions.reset",
            "sessions.delete",
            "sessions.subscribe",
            "sessions.messages.subscribe",
            "sessions.messages.unsubscribe",
            "sessions.send",
            "sessions.abort",
            "device.pair.list",
            "device.pair.approve",
            "device.pair.reject",
            "device.pair.remove",
            "device.token.rotate",
            "device.token.revoke",
            "cron.list",
            "node.invoke",
            "connect",
        ])
        .prop_map(str::to_owned),
        "[a-z.]{1,20}",
    ]
}

/// One frame to send: random text, or a request (valid or mutated), or a cancel.
fn frame() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,64}",
        any_json().prop_map(|v| v.to_string()),
        (method(), mutation(), any::<bool>()).prop_map(|(m, mutation, with_params)| {
            let mut frame = json!({"type": "req", "id": format!("fz-{m}"), "method": m});
            if with_params {
                frame["params"] = apply(valid_params(&m), &mutation);
            }
            frame.to_string()
        }),
        (method(), any_json()).prop_map(|(m, extra)| {
            json!({"type": "req", "id": 7, "method": m, "params": extra}).to_string()
        }),
        "[a-z0-9-]{1,8}".prop_map(|id| json!({"type": "cancel", "id": id}).to_string()),
        (".{0,8}", any_json())
            .prop_map(|(t, v)| json!({"type": t, "id": "x", "payload": v}).to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_frames_never_break_the_connection(frames in prop::collection::vec(frame(), 1..4)) {
        let world = world();
        let mut guard = world.client.lock().unwrap();
        let client = guard.as_mut().unwrap();
        world.runtime.block_on(async {
            for text in &frames {
                futures::SinkExt::send(&mut client.socket, Message::text(text.clone())).await.unwrap();
            }
            // The connection still answers, and every answer was well formed.
            let probe = client.request("health", json!({})).await;
            assert_eq!(probe["ok"], true, "{probe}");
            for res in client.responses.drain(..) {
                assert_eq!(res["type"], "res");
                assert!(res["id"].as_str().is_some_and(|id| !id.is_empty()), "{res}");
                if res["ok"] == false {
                    let message = res["error"]["message"].as_str().unwrap_or("");
                    assert!(!message.is_empty(), "{res}");
                    assert!(res["error"]["code"].is_string(), "{res}");
                }
            }
            client.events.clear();
        });
        let panics = SERVER_PANICS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        prop_assert!(panics.is_empty(), "the gateway panicked: {panics:?}");
    }
}
