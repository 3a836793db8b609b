//! The OpenClaw WebSocket protocol against a gateway on a real socket, over the fake service.

mod support;

use std::time::Duration;

use beamclaw_crdt::SessionKey;
use beamclaw_gateway::{AuthConfig, Member, NodeEvent, NodeHealth, PairingStore};
use futures::SinkExt;
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn detail_code(response: &Value) -> &str {
    response["error"]["details"]["code"].as_str().unwrap_or("")
}

fn is_chat(run: &str, state: &'static str) -> impl Fn(&Value) -> bool {
    let run = run.to_owned();
    move |f: &Value| {
        f["event"] == "chat" && f["payload"]["runId"] == run && f["payload"]["state"] == state
    }
}

#[tokio::test]
async fn handshake_answers_hello_ok_with_policy_features_and_snapshot() {
    let gw = start(config()).await;
    let client = connect(&gw, &ConnectOptions::default()).await;
    let hello = &client.hello;
    assert_eq!(hello["type"], "hello-ok");
    assert_eq!(hello["protocol"], 4);
    assert_eq!(hello["server"]["version"], "0.1.0-test");
    assert!(hello["server"]["connId"].as_str().is_some_and(|s| !s.is_empty()));
    let methods: Vec<&str> = hello["features"]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in [
        "health",
        "chat.send",
        "agent",
        "sessions.patch",
        "device.pair.approve",
        "device.token.rotate",
    ] {
        assert!(methods.contains(&m), "{m} missing from features.methods");
    }
    assert!(!methods.contains(&"cron.list"));
    let events = hello["features"]["events"].as_array().unwrap();
    assert!(events.contains(&json!("chat")) && events.contains(&json!("tick")));
    assert_eq!(
        hello["policy"],
        json!({"maxPayload": 26214400, "maxBufferedBytes": 52428800, "tickIntervalMs": 15000})
    );
    let snapshot = &hello["snapshot"];
    assert_eq!(snapshot["sessionDefaults"]["mainSessionKey"], "agent:main:main");
    assert_eq!(snapshot["authMode"], "token");
    assert!(snapshot["presence"].is_array());
    assert!(snapshot["stateVersion"]["presence"].is_u64());
    assert!(snapshot["uptimeMs"].is_u64());
    assert_eq!(snapshot["health"]["ok"], true);
    assert_eq!(hello["auth"]["role"], "operator");
    assert_eq!(hello["auth"]["scopes"], json!(["operator.admin"]));
    assert!(hello["auth"].get("deviceToken").is_none(), "no device, no device token");
    gw.stop().await;
}

#[tokio::test]
async fn v3_clients_get_protocol_3_and_other_ranges_are_refused() {
    let gw = start(config()).await;
    let v3 = ConnectOptions { min_protocol: 3, max_protocol: 3, ..Default::default() };
    let client = connect(&gw, &v3).await;
    assert_eq!(client.hello["protocol"], 3);
    let both = ConnectOptions { min_protocol: 3, max_protocol: 9, ..Default::default() };
    assert_eq!(connect(&gw, &both).await.hello["protocol"], 4);

    let future = ConnectOptions { min_protocol: 5, max_protocol: 6, ..Default::default() };
    let (mut socket, response) = connect_raw(&gw, &future, None).await;
    assert_eq!(response["ok"], false);
    assert_eq!(response["error"]["code"], "INVALID_REQUEST");
    assert_eq!(detail_code(&response), "PROTOCOL_MISMATCH");
    assert_eq!(response["error"]["details"]["expectedProtocol"], 4);
    let (code, _) = read_close(&mut socket).await.unwrap();
    assert_eq!(code, 1008);
    gw.stop().await;
}

#[tokio::test]
async fn the_first_frame_must_be_a_connect_request() {
    let gw = start(config()).await;
    let mut socket = open(&gw).await;
    challenge(&mut socket).await;
    send_json(&mut socket, &json!({"type": "req", "id": "1", "method": "health"})).await;
    let response = next_json(&mut socket).await.unwrap();
    assert_eq!(response["ok"], false);
    assert!(
        response["error"]["message"].as_str().unwrap().contains("first request must be connect")
    );
    let (code, reason) = read_close(&mut socket).await.unwrap();
    assert_eq!(code, 1008);
    assert!(reason.contains("connect"), "{reason}");
    gw.stop().await;
}

#[tokio::test]
async fn shared_secret_failures_are_named() {
    let gw = start(config()).await;
    let wrong = ConnectOptions { token: Some("nope".into()), ..Default::default() };
    let (mut socket, response) = connect_raw(&gw, &wrong, None).await;
    assert_eq!(response["error"]["code"], "INVALID_REQUEST");
    assert_eq!(detail_code(&response), "AUTH_TOKEN_MISMATCH");
    let (code, reason) = read_close(&mut socket).await.unwrap();
    assert_eq!(code, 1008);
    assert!(reason.contains("unauthorized"), "{reason}");

    let missing = ConnectOptions { token: None, ..Default::default() };
    let (_, response) = connect_raw(&gw, &missing, None).await;
    assert_eq!(detail_code(&response), "AUTH_TOKEN_MISSING");
    gw.stop().await;

    let gw =
        start(beamclaw_gateway::GatewayConfig { auth: AuthConfig::password("pw"), ..config() })
            .await;
    let good = ConnectOptions { token: None, password: Some("pw".into()), ..Default::default() };
    connect(&gw, &good).await;
    let bad = ConnectOptions { token: None, password: Some("px".into()), ..Default::default() };
    let (_, response) = connect_raw(&gw, &bad, None).await;
    assert_eq!(detail_code(&response), "AUTH_PASSWORD_MISMATCH");
    gw.stop().await;
}

#[tokio::test]
async fn client_id_and_mode_are_closed_enums() {
    let gw = start(config()).await;
    let bad_id = ConnectOptions { client_id: "my-app".into(), ..Default::default() };
    let (_, response) = connect_raw(&gw, &bad_id, None).await;
    assert!(response["error"]["message"].as_str().unwrap().contains("params.client.id"));
    let bad_mode = ConnectOptions { mode: "operator".into(), ..Default::default() };
    let (_, response) = connect_raw(&gw, &bad_mode, None).await;
    assert!(response["error"]["message"].as_str().unwrap().contains("params.client.mode"));
    gw.stop().await;
}

#[tokio::test]
async fn devices_sign_v3_or_v2_and_reconnect_with_their_device_token() {
    let gw = start(config()).await;
    let device = Device::new(1);
    let options = ConnectOptions::default().scopes(&["operator.read", "operator.write"]);
    let client = connect_with(&gw, &options, Some((&device, true))).await;
    let token =
        client.hello["auth"]["deviceToken"].as_str().expect("device token issued").to_owned();
    assert_eq!(client.hello["auth"]["scopes"], json!(["operator.read", "operator.write"]));
    assert!(gw.pairing.device(&device.id()).unwrap().is_some(), "loopback device auto-approved");

    // Reconnect with the device token alone (no shared secret), as the reference client does.
    let again = ConnectOptions {
        token: Some(token.clone()),
        device_token: Some(token.clone()),
        ..options.clone()
    };
    let client = connect_with(&gw, &again, Some((&device, true))).await;
    assert!(client.hello["auth"].get("deviceToken").is_none(), "a valid device token is kept");

    let v2_device = Device::new(2);
    let client = connect_with(&gw, &options, Some((&v2_device, false))).await;
    assert!(client.hello["auth"]["deviceToken"].is_string());
    gw.stop().await;
}

#[tokio::test]
async fn device_proofs_that_do_not_match_the_challenge_are_refused() {
    let gw = start(config()).await;
    let device = Device::new(3);
    let options = ConnectOptions::default();
    for (case, expected) in [
        ("nonce", "DEVICE_AUTH_NONCE_MISMATCH"),
        ("ts", "DEVICE_AUTH_SIGNATURE_EXPIRED"),
        ("scopes", "DEVICE_AUTH_SIGNATURE_INVALID"),
        ("id", "DEVICE_AUTH_DEVICE_ID_MISMATCH"),
    ] {
        let mut socket = open(&gw).await;
        let (nonce, ts) = challenge(&mut socket).await;
        let proof = match case {
            "nonce" => device.proof(true, &options, "other-nonce", ts),
            "ts" => device.proof(true, &options, &nonce, ts - 1),
            "scopes" => device.proof(true, &options.clone().scopes(&["operator.read"]), &nonce, ts),
            _ => {
                let mut p = device.proof(true, &options, &nonce, ts);
                p["id"] = json!("0".repeat(64));
                p
            }
        };
        send_json(&mut socket, &json!({"type": "req", "id": "c", "method": "connect", "params": options.params(Some(proof))})).await;
        let response = next_json(&mut socket).await.unwrap();
        assert_eq!(detail_code(&response), expected, "{case}: {response}");
        assert_eq!(read_close(&mut socket).await.unwrap().0, 1008);
    }
    gw.stop().await;
}

#[tokio::test]
async fn unknown_devices_wait_for_approval_then_get_a_token() {
    let mut cfg = config();
    cfg.pairing.auto_approve_loopback = false;
    let gw = start(cfg).await;
    let mut admin = connect(&gw, &ConnectOptions::default()).await;
    let device = Device::new(4);
    let options =
        ConnectOptions { client_id: "cli".into(), mode: "cli".into(), ..Default::default() }
            .scopes(&["operator.read"]);

    let (mut socket, response) = connect_raw(&gw, &options, Some((&device, true))).await;
    assert_eq!(response["error"]["code"], "NOT_PAIRED");
    assert_eq!(detail_code(&response), "PAIRING_REQUIRED");
    assert_eq!(response["error"]["details"]["reason"], "not-paired");
    let request_id = response["error"]["details"]["requestId"].as_str().unwrap().to_owned();
    assert_eq!(read_close(&mut socket).await.unwrap().0, 1008);

    let requested = admin.event(|f| f["event"] == "device.pair.requested").await;
    assert_eq!(requested["payload"]["requestId"], request_id.as_str());
    assert_eq!(requested["payload"]["deviceId"], device.id().as_str());

    let list = admin.ok("device.pair.list", json!({})).await;
    assert_eq!(list["pending"][0]["requestId"], request_id.as_str());
    assert!(list["paired"].as_array().unwrap().is_empty());

    let approved = admin.ok("device.pair.approve", json!({"requestId": request_id})).await;
    assert_eq!(approved["device"]["deviceId"], device.id().as_str());
    let resolved = admin.event(|f| f["event"] == "device.pair.resolved").await;
    assert_eq!(resolved["payload"]["decision"], "approved");

    let client = connect_with(&gw, &options, Some((&device, true))).await;
    assert!(client.hello["auth"]["deviceToken"].is_string());

    // Asking for more than was approved is a scope upgrade that needs approval again.
    let wider = options.clone().scopes(&["operator.read", "operator.write"]);
    let (_, response) = connect_raw(&gw, &wider, Some((&device, true))).await;
    assert_eq!(response["error"]["details"]["reason"], "scope-upgrade");

    // Rejection removes the pending request.
    let other = Device::new(5);
    let (_, response) = connect_raw(&gw, &options, Some((&other, true))).await;
    let rejected = response["error"]["details"]["requestId"].as_str().unwrap().to_owned();
    admin.ok("device.pair.reject", json!({"requestId": rejected})).await;
    let res = admin.request("device.pair.approve", json!({"requestId": rejected})).await;
    assert_eq!(res["error"]["code"], "INVALID_REQUEST");
    gw.stop().await;
}

#[tokio::test]
async fn device_tokens_rotate_and_revoke() {
    let gw = start(config()).await;
    let device = Device::new(6);
    let options = ConnectOptions::default();
    let first = connect_with(&gw, &options, Some((&device, true))).await;
    let old = first.hello["auth"]["deviceToken"].as_str().unwrap().to_owned();
    let mut admin = connect(&gw, &options).await;
    let rotated =
        admin.ok("device.token.rotate", json!({"deviceId": device.id(), "role": "operator"})).await;
    let new = rotated["token"].as_str().unwrap().to_owned();
    assert_ne!(old, new);
    assert_eq!(rotated["tokenDelivery"], "in-band");

    let with_old =
        ConnectOptions { token: Some(old.clone()), device_token: Some(old), ..options.clone() };
    let (_, response) = connect_raw(&gw, &with_old, Some((&device, true))).await;
    assert_eq!(detail_code(&response), "AUTH_DEVICE_TOKEN_MISMATCH");
    let with_new = ConnectOptions {
        token: Some(new.clone()),
        device_token: Some(new.clone()),
        ..options.clone()
    };
    let mut live = connect_with(&gw, &with_new, Some((&device, true))).await;

    admin.ok("device.token.revoke", json!({"deviceId": device.id(), "role": "operator"})).await;
    assert_eq!(
        read_close(&mut live.socket).await.unwrap().0,
        1008,
        "revocation disconnects the device"
    );
    let (_, response) = connect_raw(&gw, &with_new, Some((&device, true))).await;
    assert_eq!(detail_code(&response), "AUTH_DEVICE_TOKEN_MISMATCH");

    admin.ok("device.pair.remove", json!({"deviceId": device.id()})).await;
    assert!(gw.pairing.device(&device.id()).unwrap().is_none());
    gw.stop().await;
}

#[tokio::test]
async fn scopes_are_enforced_per_method_and_per_event() {
    let gw = start(config()).await;
    let mut reader = connect(&gw, &ConnectOptions::default().scopes(&["operator.read"])).await;
    let res = reader
        .request(
            "chat.send",
            json!({"sessionKey": "agent:main:s1", "message": "hi", "idempotencyKey": "k1"}),
        )
        .await;
    assert_eq!(res["error"]["code"], "FORBIDDEN");
    assert_eq!(
        res["error"]["details"],
        json!({"code": "MISSING_SCOPE", "missingScope": "operator.write", "requiredScopes": ["operator.write"]})
    );
    let res = reader.request("config.get", json!({})).await;
    assert_eq!(res["error"]["details"]["missingScope"], "operator.admin");
    let res = reader.request("device.pair.list", json!({})).await;
    assert_eq!(res["error"]["details"]["missingScope"], "operator.pairing");
    reader.ok("health", json!({})).await;
    reader.ok("sessions.messages.subscribe", json!({"key": "agent:main:s1"})).await;

    let mut blind = connect(&gw, &ConnectOptions::default().scopes(&["operator.approvals"])).await;
    let res = blind.request("sessions.messages.subscribe", json!({"key": "agent:main:s1"})).await;
    assert_eq!(res["error"]["details"]["missingScope"], "operator.read");

    let mut writer = connect(&gw, &ConnectOptions::default().scopes(&["operator.write"])).await;
    let sent = writer
        .ok(
            "chat.send",
            json!({"sessionKey": "agent:main:s1", "message": "hi", "idempotencyKey": "k1"}),
        )
        .await;
    let run = sent["runId"].as_str().unwrap().to_owned();
    let final_for_reader = reader.event(is_chat(&run, "final")).await;
    assert_eq!(final_for_reader["payload"]["sessionKey"], "agent:main:s1");
    writer.event(is_chat(&run, "final")).await;
    gw.stop().await;
}

#[tokio::test]
async fn unsupported_and_unknown_methods_are_refused_and_the_connection_stays_up() {
    let gw = start(config()).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    let res = client.request("cron.list", json!({})).await;
    assert_eq!(res["error"]["code"], "INVALID_REQUEST");
    let message = res["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cron.list") && message.contains("not supported by BeamClaw"),
        "{message}"
    );
    let res = client.request("no.such.method", json!({})).await;
    assert!(res["error"]["message"].as_str().unwrap().contains("unknown method"));
    assert!(res["error"]["message"].as_str().unwrap().contains("not supported by BeamClaw"));
    client.ok("health", json!({})).await;
    let res = client.request("connect", json!({})).await;
    assert!(res["error"]["message"].as_str().unwrap().contains("already connected"), "{res}");
    gw.stop().await;
}

#[tokio::test]
async fn stopping_the_gateway_says_shutdown_then_closes_with_1012() {
    let gw = start(config()).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    let stopping = tokio::spawn(gw.stop());
    let shutdown = client.event(|f| f["event"] == "shutdown").await;
    assert_eq!(shutdown["payload"]["reason"], "gateway stopping");
    assert_eq!(read_close(&mut client.socket).await.unwrap().0, 1012);
    stopping.await.unwrap();
}

#[tokio::test]
async fn malformed_frames_and_params_name_what_is_wrong() {
    let gw = start(config()).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    client.socket.send(Message::text("{not json")).await.unwrap();
    let res = next_json(&mut client.socket).await.unwrap();
    assert_eq!(res["id"], "invalid");
    assert!(res["error"]["message"].as_str().unwrap().starts_with("malformed JSON"));

    send_json(
        &mut client.socket,
        &json!({"type": "req", "id": "x1", "method": "health", "extra": true}),
    )
    .await;
    let res = next_json(&mut client.socket).await.unwrap();
    assert_eq!(res["id"], "x1");
    assert!(res["error"]["message"].as_str().unwrap().contains("extra"));

    let res = client
        .request("chat.send", json!({"sessionKey": 5, "message": "m", "idempotencyKey": "k"}))
        .await;
    assert!(
        res["error"]["message"].as_str().unwrap().starts_with("params.sessionKey: invalid type"),
        "{res}"
    );
    let res = client
        .request(
            "chat.send",
            json!({"sessionKey": "agent:main:a", "message": "m", "idempotencyKey": "k", "nope": 1}),
        )
        .await;
    assert!(
        res["error"]["message"].as_str().unwrap().starts_with("params.nope: unknown property"),
        "{res}"
    );
    let res = client
        .request("chat.send", json!({"sessionKey": "a/b", "message": "m", "idempotencyKey": "k"}))
        .await;
    assert!(res["error"]["message"].as_str().unwrap().starts_with("params.sessionKey:"), "{res}");
    let res =
        client.request("chat.history", json!({"sessionKey": "agent:main:a", "limit": 0})).await;
    assert!(res["error"]["message"].as_str().unwrap().contains("params.limit"), "{res}");
    client.socket.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let res = next_json(&mut client.socket).await.unwrap();
    assert!(res["error"]["message"].as_str().unwrap().contains("binary"));
    client.ok("health", json!({})).await;
    gw.stop().await;
}

#[tokio::test]
async fn chat_send_streams_cumulative_deltas_then_the_final_message() {
    let gw = start(config()).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    let sent = client
        .ok("chat.send", json!({"sessionKey": "agent:main:main", "message": "one two three four", "idempotencyKey": "k-1"}))
        .await;
    assert_eq!(sent["status"], "started");
    let run = sent["runId"].as_str().unwrap().to_owned();
    let final_event = client.event(is_chat(&run, "final")).await;
    let final_text =
        final_event["payload"]["message"]["content"][0]["text"].as_str().unwrap().to_owned();
    assert_eq!(final_text, "echo: one two three four");
    assert_eq!(final_event["payload"]["stopReason"], "stop");
    assert_eq!(final_event["payload"]["usage"]["input"], 3);

    let deltas: Vec<&Value> = client
        .events
        .iter()
        .filter(|f| f["event"] == "chat" && f["payload"]["state"] == "delta")
        .collect();
    assert!(!deltas.is_empty());
    let mut joined = String::new();
    let mut previous = String::new();
    for d in &deltas {
        let text = d["payload"]["message"]["content"][0]["text"].as_str().unwrap();
        assert!(text.starts_with(&previous), "deltas are cumulative");
        assert!(final_text.starts_with(text));
        previous = text.to_owned();
        joined.push_str(d["payload"]["deltaText"].as_str().unwrap());
    }
    assert_eq!(joined, final_text, "v4 deltaText adds up to the reply");

    // Per-connection seq increases by one across every event frame.
    let mut frames: Vec<&Value> = client.events.iter().collect();
    frames.push(&final_event);
    let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (sorted[0]..sorted[0] + seqs.len() as u64).collect::<Vec<_>>());

    let lifecycle: Vec<&str> = client
        .events
        .iter()
        .filter(|f| f["event"] == "agent" && f["payload"]["stream"] == "lifecycle")
        .map(|f| f["payload"]["data"]["phase"].as_str().unwrap())
        .collect();
    assert_eq!(lifecycle, ["start", "end"]);
    assert!(
        client
            .events
            .iter()
            .any(|f| f["event"] == "agent" && f["payload"]["stream"] == "assistant")
    );

    let history = client.ok("chat.history", json!({"sessionKey": "agent:main:main"})).await;
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[0]["content"][0]["text"], "one two three four");
    assert_eq!(messages[1]["role"], "assistant");
    gw.stop().await;
}

#[tokio::test]
async fn a_repeated_idempotency_key_gives_in_flight_then_ok() {
    let gw = start(config()).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    let params =
        json!({"sessionKey": "agent:main:dup", "message": "slow", "idempotencyKey": "same"});
    let first = client.ok("chat.send", params.clone()).await;
    let second = client.ok("chat.send", params.clone()).await;
    assert_eq!(second["status"], "in_flight");
    assert_eq!(second["runId"], first["runId"]);
    let run = first["runId"].as_str().unwrap().to_owned();
    client.event(is_chat(&run, "final")).await;
    let third = client.ok("chat.send", params).await;
    assert_eq!(third["status"], "ok");
    assert_eq!(third["runId"], first["runId"]);
    gw.stop().await;
}

#[tokio::test]
async fn abort_inject_and_errors() {
    let gw = start(config()).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    let sent = client
        .ok(
            "chat.send",
            json!({"sessionKey": "agent:main:ab", "message": "slow", "idempotencyKey": "a1"}),
        )
        .await;
    let run = sent["runId"].as_str().unwrap().to_owned();
    client.event(is_chat(&run, "delta")).await;
    let aborted = client.ok("chat.abort", json!({"sessionKey": "agent:main:ab"})).await;
    assert_eq!(aborted["aborted"], true);
    assert_eq!(aborted["runIds"], json!([run]));
    let event = client.event(is_chat(&run, "aborted")).await;
    assert_eq!(event["payload"]["stopReason"], "aborted");

    let injected =
        client.ok("chat.inject", json!({"sessionKey": "agent:main:ab", "message": "a note"})).await;
    assert!(injected["messageId"].is_string());
    let history =
        client.ok("chat.history", json!({"sessionKey": "agent:main:ab", "limit": 1})).await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
    assert_eq!(history["messages"][0]["content"][0]["text"], "a note");

    let sent = client.ok("sessions.send", json!({"key": "agent:main:ab", "message": "fail"})).await;
    let run = sent["runId"].as_str().unwrap().to_owned();
    let error = client.event(is_chat(&run, "error")).await;
    assert_eq!(error["payload"]["errorMessage"], "the fake provider failed");
    assert_eq!(error["payload"]["errorKind"], "unknown");
    gw.stop().await;
}

#[tokio::test]
async fn agent_answers_accepted_then_final_on_one_request_id() {
    let gw = start(config()).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    let id = client.send("agent", json!({"message": "ping", "idempotencyKey": "ag-1"})).await;
    let accepted = client.response(&id).await;
    assert_eq!(accepted["payload"]["status"], "accepted");
    let run = accepted["payload"]["runId"].as_str().unwrap().to_owned();
    let final_res = client.response(&id).await;
    assert_eq!(final_res["payload"]["status"], "ok");
    assert_eq!(final_res["payload"]["runId"], run.as_str());
    assert_eq!(final_res["payload"]["summary"], "completed");
    assert_eq!(final_res["payload"]["result"]["payloads"][0]["text"], "echo: ping");
    // The agent stream was delivered too (the default session is agent:main:main).
    assert!(
        client
            .events
            .iter()
            .any(|f| f["event"] == "agent" && f["payload"]["runId"] == run.as_str())
    );

    let waited = client.ok("agent.wait", json!({"runId": run})).await;
    assert_eq!(waited["status"], "ok");
    assert!(waited["endedAt"].is_i64());
    let sent = client
        .ok(
            "chat.send",
            json!({"sessionKey": "agent:main:w", "message": "slow", "idempotencyKey": "w1"}),
        )
        .await;
    let waited = client.ok("agent.wait", json!({"runId": sent["runId"], "timeoutMs": 1})).await;
    assert_eq!(waited["status"], "timeout");
    gw.stop().await;
}

#[tokio::test]
async fn tool_events_stream_start_update_result() {
    let gw = start(config()).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    let sent = client
        .ok(
            "chat.send",
            json!({"sessionKey": "agent:main:t", "message": "tool", "idempotencyKey": "t1"}),
        )
        .await;
    let run = sent["runId"].as_str().unwrap().to_owned();
    client.event(is_chat(&run, "final")).await;
    let phases: Vec<&str> = client
        .events
        .iter()
        .filter(|f| f["event"] == "agent" && f["payload"]["stream"] == "tool")
        .map(|f| f["payload"]["data"]["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["start", "update", "result"]);
    let start_event = client
        .events
        .iter()
        .find(|f| f["payload"]["data"]["phase"] == "start" && f["payload"]["stream"] == "tool")
        .unwrap();
    assert_eq!(start_event["payload"]["data"]["args"]["path"], "a.txt");
    gw.stop().await;
}

#[tokio::test]
async fn sessions_lifecycle_and_sessions_changed_events() {
    let gw = start(config()).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    client.ok("sessions.subscribe", json!({})).await;
    let created =
        client.ok("sessions.create", json!({"key": "agent:main:work", "label": "Work"})).await;
    assert_eq!(created["ok"], true);
    assert_eq!(created["entry"]["label"], "Work");
    let changed = client.event(|f| f["event"] == "sessions.changed").await;
    assert_eq!(changed["payload"]["sessionKey"], "agent:main:work");
    assert_eq!(changed["payload"]["reason"], "created");

    let list = client.ok("sessions.list", json!({})).await;
    let rows = list["sessions"].as_array().unwrap();
    let row = rows.iter().find(|r| r["key"] == "agent:main:work").unwrap();
    assert_eq!(row["kind"], "direct");
    assert_eq!(row["ownerNode"], support::fake::NODE_ID);

    let patched = client.ok("sessions.patch", json!({"key": "agent:main:work", "label": null, "thinkingLevel": "high", "fastMode": "auto"})).await;
    assert!(patched["entry"].get("label").is_none(), "null clears the label");
    assert_eq!(patched["entry"]["thinkingLevel"], "high");
    assert_eq!(patched["entry"]["fastMode"], "auto");
    let res =
        client.request("sessions.patch", json!({"key": "agent:main:work", "icon": "x"})).await;
    assert!(res["error"]["message"].as_str().unwrap().contains("params.icon"), "{res}");

    let got = client.ok("sessions.get", json!({"key": "agent:main:work"})).await;
    assert_eq!(got["session"]["key"], "agent:main:work");
    let before = got["session"]["sessionId"].clone();
    let reset =
        client.ok("sessions.reset", json!({"key": "agent:main:work", "reason": "new"})).await;
    assert_ne!(reset["entry"]["sessionId"], before);
    let deleted = client.ok("sessions.delete", json!({"key": "agent:main:work"})).await;
    assert_eq!(
        deleted,
        json!({"ok": true, "key": "agent:main:work", "deleted": true, "archived": []})
    );
    let res = client.request("sessions.get", json!({"key": "agent:main:work"})).await;
    assert_eq!(res["error"]["code"], "INVALID_REQUEST");
    client.event(|f| f["event"] == "sessions.changed" && f["payload"]["reason"] == "deleted").await;

    let started =
        client.ok("sessions.create", json!({"key": "agent:main:kick", "message": "go"})).await;
    assert_eq!(started["runStarted"], true);
    let run = started["runId"].as_str().unwrap().to_owned();
    client.event(is_chat(&run, "final")).await;
    gw.stop().await;
}

#[tokio::test]
async fn config_methods_need_admin_and_pass_json_through() {
    let gw = start(config()).await;
    let mut admin = connect(&gw, &ConnectOptions::default()).await;
    let got = admin.ok("config.get", json!({})).await;
    let hash = got["hash"].as_str().unwrap().to_owned();
    admin.ok("config.patch", json!({"raw": "{\"agents\": {}}", "baseHash": hash})).await;
    let res = admin.request("config.set", json!({"raw": "{}", "baseHash": hash})).await;
    assert_eq!(res["error"]["code"], "INVALID_REQUEST", "a stale baseHash is refused");
    let res = admin.request("config.set", json!({"raw": ""})).await;
    assert!(res["error"]["message"].as_str().unwrap().contains("params.raw"));
    let mut writer = connect(&gw, &ConnectOptions::default().scopes(&["operator.write"])).await;
    let res = writer.request("config.patch", json!({"raw": "{}"})).await;
    assert_eq!(res["error"]["code"], "FORBIDDEN");
    gw.stop().await;
}

#[tokio::test]
async fn tick_presence_health_and_shutdown_events() {
    let mut cfg = config();
    cfg.limits.tick_interval_ms = 200;
    let gw = start(cfg).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    assert_eq!(client.hello["policy"]["tickIntervalMs"], 200);
    let tick = client.event(|f| f["event"] == "tick").await;
    assert!(tick["payload"]["ts"].is_u64());
    assert!(tick["seq"].is_u64());

    let mut ui = connect(
        &gw,
        &ConnectOptions {
            client_id: "webchat-ui".into(),
            mode: "webchat".into(),
            ..Default::default()
        },
    )
    .await;
    let presence = client.event(|f| f["event"] == "presence").await;
    assert!(presence["stateVersion"]["presence"].is_u64());
    assert!(
        presence["payload"]["presence"].as_array().unwrap().iter().any(|p| p["mode"] == "webchat")
    );
    ui.ok("system-presence", json!({})).await;

    gw.fake.emit(NodeEvent::Members(vec![Member {
        node_id: "peer-1".into(),
        name: "edge-1".into(),
        state: "alive".into(),
        address: None,
        version: None,
        sessions_owned: None,
    }]));
    client
        .event(|f| {
            f["event"] == "presence"
                && f["payload"]["presence"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["instanceId"] == "peer-1")
        })
        .await;

    gw.fake.emit(NodeEvent::Health(NodeHealth { ok: true, session_count: 7, recent: vec![] }));
    let health = client.event(|f| f["event"] == "health").await;
    assert_eq!(health["payload"]["sessions"]["count"], 7);
    assert!(health["stateVersion"]["health"].as_u64().unwrap() >= 2);

    gw.fake.emit(NodeEvent::Shutdown { reason: "drain".into(), restart_expected_ms: Some(5000) });
    let shutdown = client.event(|f| f["event"] == "shutdown").await;
    assert_eq!(shutdown["payload"], json!({"reason": "drain", "restartExpectedMs": 5000}));

    let mut socket = client.socket;
    gw.stop().await;
    assert_eq!(read_close(&mut socket).await.unwrap().0, 1012);
}

#[tokio::test]
async fn frames_before_auth_are_limited_to_64_kib() {
    let gw = start(config()).await;
    let mut socket = open(&gw).await;
    challenge(&mut socket).await;
    let big = format!(
        "{{\"type\":\"req\",\"id\":\"1\",\"method\":\"connect\",\"params\":{{\"pad\":\"{}\"}}}}",
        "x".repeat(70 * 1024)
    );
    let _ = socket.send(Message::text(big)).await;
    let (code, reason) = read_close(&mut socket).await.unwrap();
    assert_eq!(code, 1009);
    assert!(reason.contains("65536"), "{reason}");
    gw.stop().await;
}

#[tokio::test]
async fn max_payload_is_enforced_after_auth() {
    let mut cfg = config();
    cfg.limits.max_payload_bytes = 128 * 1024;
    let gw = start(cfg).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    assert_eq!(client.hello["policy"]["maxPayload"], 131072);
    // Under the limit (but over the pre-auth one) is fine.
    let res = client.request("chat.send", json!({"sessionKey": "agent:main:big", "message": "y".repeat(100 * 1024), "idempotencyKey": "b1"})).await;
    assert_eq!(res["ok"], true);
    let _ = client.socket.send(Message::text("z".repeat(200 * 1024))).await;
    let (code, reason) = read_close(&mut client.socket).await.unwrap();
    assert_eq!(code, 1009);
    assert!(reason.contains("maxPayload"), "{reason}");
    gw.stop().await;
}

#[tokio::test]
async fn the_rate_limit_answers_retryable_unavailable() {
    let mut cfg = config();
    cfg.limits.requests_per_second = 5;
    cfg.limits.requests_burst = 5;
    let gw = start(cfg).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(client.send("health", json!({})).await);
    }
    let mut limited = 0;
    for id in &ids {
        let res = client.response(id).await;
        if res["ok"] == false {
            assert_eq!(res["error"]["code"], "UNAVAILABLE");
            assert_eq!(res["error"]["retryable"], true);
            assert!(res["error"]["retryAfterMs"].as_u64().unwrap() >= 1);
            assert_eq!(res["error"]["details"]["code"], "RATE_LIMITED");
            limited += 1;
        }
    }
    assert!(limited >= 10, "{limited} of 20 were limited");
    // Malformed frames cost tokens too.
    for _ in 0..20 {
        client.socket.send(Message::text("{oops")).await.unwrap();
    }
    let mut rate_limited = 0;
    for _ in 0..20 {
        let res = next_json(&mut client.socket).await.unwrap();
        if res["error"]["details"]["code"] == "RATE_LIMITED" {
            rate_limited += 1;
        }
    }
    assert!(rate_limited >= 10, "{rate_limited} of 20 malformed frames were limited");
    tokio::time::sleep(Duration::from_millis(400)).await;
    client.ok("health", json!({})).await;
    gw.stop().await;
}

#[tokio::test]
async fn the_connection_limit_refuses_upgrades_with_503() {
    let mut cfg = config();
    cfg.limits.connections_max = 2;
    let gw = start(cfg).await;
    let _a = connect(&gw, &ConnectOptions::default()).await;
    let _b = connect(&gw, &ConnectOptions::default()).await;
    match tokio_tungstenite::connect_async(gw.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected HTTP 503, got {:?}", other.map(|_| ())),
    }
    drop(_a);
    // The slot comes back once the server sees the close.
    let mut reconnected = false;
    for _ in 0..100 {
        if tokio_tungstenite::connect_async(gw.ws_url()).await.is_ok() {
            reconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reconnected);
    gw.stop().await;
}

#[tokio::test]
async fn a_slow_reader_is_closed_with_1008_instead_of_buffering() {
    let mut cfg = config();
    cfg.limits.max_payload_bytes = 128 * 1024;
    cfg.limits.max_buffered_bytes = 256 * 1024;
    let gw = start(cfg).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    // ~300 deltas with cumulative agent text add up to tens of megabytes: far more than the
    // socket buffers and the 256 KiB queue. The client does not read until the end.
    let id = client.send("chat.send", json!({"sessionKey": "agent:main:flood", "message": "flood 300", "idempotencyKey": "f1"})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut close = None;
    for _ in 0..100_000 {
        match tokio::time::timeout(FRAME_WAIT, futures::StreamExt::next(&mut client.socket))
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                close = Some((u16::from(frame.code), frame.reason.to_string()));
                break;
            }
            Some(Ok(_)) => continue,
            _ => break,
        }
    }
    let (code, reason) = close.expect("the server closed the connection");
    assert_eq!(code, 1008);
    assert!(reason.contains("slow consumer"), "{reason}");
    let _ = id;
    let metrics = http(gw.addr, "GET", "/metrics", &[("Authorization", &bearer())], None).await;
    assert!(metrics.body.contains("beamclaw_gateway_slow_consumers_total 1"), "{}", metrics.body);
    gw.stop().await;
}

#[tokio::test]
async fn cancel_stops_waiting_for_a_request() {
    let gw = start(config()).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    let sent = client
        .ok(
            "chat.send",
            json!({"sessionKey": "agent:main:c", "message": "slow", "idempotencyKey": "c1"}),
        )
        .await;
    let id = client.send("agent.wait", json!({"runId": sent["runId"], "timeoutMs": 60000})).await;
    send_json(&mut client.socket, &json!({"type": "cancel", "id": id})).await;
    let res = client.response(&id).await;
    assert_eq!(res["ok"], false);
    assert_eq!(res["error"]["details"]["code"], "REQUEST_CANCELLED");
    client.ok("health", json!({})).await;

    // v3 connections cannot cancel.
    let mut v3 =
        connect(&gw, &ConnectOptions { min_protocol: 3, max_protocol: 3, ..Default::default() })
            .await;
    send_json(&mut v3.socket, &json!({"type": "cancel", "id": "r1"})).await;
    let res = next_json(&mut v3.socket).await.unwrap();
    assert!(res["error"]["message"].as_str().unwrap().contains("protocol 4"));
    gw.stop().await;
}

#[tokio::test]
async fn session_feeds_end_with_their_last_follower() {
    let gw = start(config()).await;
    let mut a = connect(&gw, &ConnectOptions::default()).await;
    let mut b = connect(&gw, &ConnectOptions::default()).await;
    a.ok("sessions.messages.subscribe", json!({"key": "agent:main:f"})).await;
    b.ok("sessions.messages.subscribe", json!({"key": "agent:main:f"})).await;
    assert_eq!(
        gw.fake.subscription_count("agent:main:f"),
        1,
        "one service subscription per session"
    );
    a.ok("sessions.messages.unsubscribe", json!({"key": "agent:main:f"})).await;
    assert_eq!(gw.fake.subscription_count("agent:main:f"), 1);
    drop(b);
    let mut ended = false;
    for _ in 0..200 {
        if gw.fake.subscription_count("agent:main:f") == 0 {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ended, "the subscription ends when the last follower leaves");
    let res =
        a.request("sessions.messages.subscribe", json!({"key": "agent:main:unsubscribable"})).await;
    assert_eq!(res["error"]["code"], "UNAVAILABLE");
    assert_eq!(res["error"]["retryable"], true);
    let _ = SessionKey::new("agent:main:f").unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn the_node_role_gets_no_operator_scopes() {
    let gw = start(config()).await;
    let device = Device::new(9);
    let options = ConnectOptions {
        role: "node".into(),
        client_id: "node-host".into(),
        mode: "node".into(),
        ..Default::default()
    };
    let mut node = connect_with(&gw, &options, Some((&device, true))).await;
    assert_eq!(node.hello["auth"]["role"], "node");
    assert_eq!(node.hello["auth"]["scopes"], json!([]));
    let res = node
        .request(
            "chat.send",
            json!({"sessionKey": "agent:main:n", "message": "x", "idempotencyKey": "n"}),
        )
        .await;
    assert_eq!(res["error"]["code"], "FORBIDDEN");
    let (_, res) = connect_raw(&gw, &options, None).await;
    assert!(res["error"]["message"].as_str().unwrap().contains("device identity"), "{res}");
    gw.stop().await;
}
