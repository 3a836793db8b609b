//! The HTTP side of the gateway port: probes, auth, the OpenAI API, /tools/invoke, /metrics and
//! the status page.

mod support;

use std::sync::atomic::Ordering;

use beamclaw_gateway::{AuthConfig, ConfigError, GatewayConfig, GatewayError, ToolPolicy, bind};
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn probes_need_no_auth_and_readyz_follows_the_service() {
    let gw = start(config()).await;
    for path in ["/health", "/healthz"] {
        let res = http(gw.addr, "GET", path, &[], None).await;
        assert_eq!(res.status, 200, "{path}");
        assert_eq!(res.json()["ok"], true);
    }
    assert_eq!(http(gw.addr, "GET", "/readyz", &[], None).await.status, 200);
    gw.fake.ready.store(false, Ordering::Release);
    let res = http(gw.addr, "GET", "/readyz", &[], None).await;
    assert_eq!(res.status, 503);
    assert_eq!(res.json(), json!({"ready": false, "reason": "starting"}));
    gw.stop().await;
}

#[tokio::test]
async fn everything_else_needs_the_bearer_secret() {
    let gw = start(config()).await;
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/tools/invoke"),
    ] {
        let body = (method == "POST").then_some("{}");
        let res = http(gw.addr, method, path, &[], body).await;
        assert_eq!(res.status, 401, "{path}");
        assert_eq!(res.json()["error"]["type"], "authentication_error");
        let res = http(gw.addr, method, path, &[("Authorization", "Bearer wrong")], body).await;
        assert_eq!(res.status, 401, "{path}");
    }
    let page = http(gw.addr, "GET", "/", &[], None).await;
    assert_eq!(page.status, 401);
    assert!(
        page.header("www-authenticate").unwrap().starts_with("Basic"),
        "browsers get a login prompt"
    );
    let unknown = http(gw.addr, "GET", "/nope", &[], None).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["type"], "not_found_error");
    gw.stop().await;
}

#[tokio::test]
async fn a_non_loopback_bind_without_auth_refuses_to_start() {
    let config = GatewayConfig {
        bind: "0.0.0.0:0".parse().unwrap(),
        auth: AuthConfig::none(),
        ..Default::default()
    };
    match bind(config).await {
        Err(GatewayError::Config(err @ ConfigError::NonLoopbackWithoutAuth { .. })) => {
            assert!(err.to_string().contains("BEAMCLAW_GATEWAY_TOKEN"));
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_status_page_renders_escaped_html() {
    let gw = start(config()).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    client.ok("sessions.create", json!({"key": "agent:main:page", "label": "<i>x</i>"})).await;
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("any:{TOKEN}"))
    );
    let page = http(gw.addr, "GET", "/", &[("Authorization", &basic)], None).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    let html = &page.body;
    assert!(html.contains(support::fake::NODE_ID));
    assert!(html.contains("agent:main:page"));
    assert!(html.contains("&lt;i&gt;x&lt;/i&gt;"), "labels are escaped");
    assert!(html.contains("12D3KooWPeer&lt;script&gt;"), "member ids are escaped");
    assert!(html.contains("&lt;b&gt;offline&lt;/b&gt;"), "provider stats are escaped");
    assert!(!html.contains("<script>"));
    gw.stop().await;
}

#[tokio::test]
async fn metrics_use_the_prometheus_text_format() {
    let gw = start(config()).await;
    let mut client = connect(&gw, &ConnectOptions::default()).await;
    client.ok("health", json!({})).await;
    client.request("cron.list", json!({})).await;
    let res = http(gw.addr, "GET", "/metrics", &[("Authorization", &bearer())], None).await;
    assert_eq!(res.status, 200);
    let text = &res.body;
    assert!(text.contains("# TYPE beamclaw_gateway_connections gauge"));
    assert!(text.contains("beamclaw_gateway_connections 1"), "{text}");
    assert!(text.contains("beamclaw_gateway_frames_in_total"));
    assert!(
        text.contains("beamclaw_gateway_method_duration_seconds_count{method=\"health\"} 1"),
        "{text}"
    );
    assert!(text.contains("beamclaw_gateway_errors_total{code=\"INVALID_REQUEST\"} 1"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"));
    gw.stop().await;
}

fn completion(model: &str, text: &str, extra: Value) -> String {
    let mut body = json!({"model": model, "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": text}]});
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            body[k] = v;
        }
    }
    body.to_string()
}

#[tokio::test]
async fn chat_completions_answer_in_openai_shape() {
    let gw = start(config()).await;
    let auth = bearer();
    let res = http(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &auth)],
        Some(&completion("beamclaw", "hello there", json!({"user": "bob"}))),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    let body = res.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "beamclaw");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hello there");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
    );

    let mut client = connect(&gw, &ConnectOptions::default()).await;
    let list = client.ok("sessions.list", json!({})).await;
    let keys: Vec<&str> =
        list["sessions"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert!(keys.contains(&"agent:main:openai-user:bob"), "{keys:?}");

    // The header picks the session; forbidden prefixes are refused.
    let res = http(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &auth), ("x-openclaw-session-key", "agent:ops:chosen")],
        Some(&completion("openclaw/ops", "a", json!({}))),
    )
    .await;
    assert_eq!(res.status, 200);
    let res = http(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &auth), ("x-openclaw-session-key", "cron:nightly")],
        Some(&completion("beamclaw", "a", json!({}))),
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["error"]["type"], "invalid_request_error");

    // Without user or header, every request gets a fresh session.
    for _ in 0..2 {
        let res = http(
            gw.addr,
            "POST",
            "/v1/chat/completions",
            &[("Authorization", &auth)],
            Some(&completion("agent:main", "fresh", json!({}))),
        )
        .await;
        assert_eq!(res.status, 200);
    }
    let list = client.ok("sessions.list", json!({})).await;
    let fresh = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["key"].as_str().unwrap().starts_with("agent:main:openai:"))
        .count();
    assert_eq!(fresh, 2);
    assert!(list["sessions"].as_array().unwrap().iter().any(|r| r["key"] == "agent:ops:chosen"));

    let res = http(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &auth)],
        Some(&completion("gpt-4o", "a", json!({}))),
    )
    .await;
    assert_eq!(res.status, 400);
    assert!(res.json()["error"]["message"].as_str().unwrap().contains("model must name an agent"));
    let res = http(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &auth)],
        Some(r#"{"model": "beamclaw", "messages": 5}"#),
    )
    .await;
    assert_eq!(res.status, 400);
    assert!(res.json()["error"]["message"].as_str().unwrap().contains("messages"));
    let res = http(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &auth)],
        Some(&completion("beamclaw", "fail", json!({}))),
    )
    .await;
    assert_eq!(res.status, 500);
    assert_eq!(res.json()["error"]["message"], "the fake provider failed");
    gw.stop().await;
}

#[tokio::test]
async fn streaming_completions_send_sse_chunks_then_done() {
    let gw = start(config()).await;
    let res = http(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &bearer())],
        Some(&completion(
            "beamclaw",
            "stream me please",
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        )),
    )
    .await;
    assert_eq!(res.status, 200);
    assert!(res.header("content-type").unwrap().starts_with("text/event-stream"));
    let events: Vec<&str> = res.body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "echo: stream me please");
    let finish = chunks.iter().find(|c| c["choices"][0]["finish_reason"].is_string()).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["usage"]["total_tokens"], 8);
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-") && chunks.iter().all(|c| c["id"] == id));
    gw.stop().await;
}

#[tokio::test]
async fn models_list_agents_and_the_api_can_be_disabled() {
    let gw = start(config()).await;
    let res = http(gw.addr, "GET", "/v1/models", &[("Authorization", &bearer())], None).await;
    let body = res.json();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> =
        body["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    for id in ["beamclaw", "openclaw", "beamclaw/main", "beamclaw/ops", "openclaw/ops"] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    gw.stop().await;

    let gw = start(GatewayConfig { chat_completions_enabled: false, ..config() }).await;
    let res = http(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &bearer())],
        Some(&completion("beamclaw", "x", json!({}))),
    )
    .await;
    assert_eq!(res.status, 404);
    gw.stop().await;
}

#[tokio::test]
async fn tools_invoke_applies_the_http_policy() {
    let mut cfg = config();
    cfg.tools = ToolPolicy { allow: vec!["spawn".into()], deny: vec!["web_*".into()] };
    let gw = start(cfg).await;
    let auth = bearer();
    let call = |body: Value| body.to_string();
    let res = http(
        gw.addr,
        "POST",
        "/tools/invoke",
        &[("Authorization", &auth)],
        Some(&call(json!({"tool": "echo", "args": {"a": 1}, "sessionKey": "agent:main:main"}))),
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json(), json!({"ok": true, "result": {"tool": "echo", "echo": {"a": 1}}}));
    let calls = gw.fake.tool_calls();
    assert_eq!(calls[0].session.as_ref().unwrap().as_str(), "agent:main:main");

    let res = http(
        gw.addr,
        "POST",
        "/tools/invoke",
        &[("Authorization", &auth)],
        Some(&call(json!({"name": "exec", "args": {"command": "ls"}}))),
    )
    .await;
    assert_eq!(res.status, 404, "exec is on the default HTTP deny list");
    assert!(res.json()["error"]["message"].as_str().unwrap().contains("gateway.tools.allow"));
    let res = http(
        gw.addr,
        "POST",
        "/tools/invoke",
        &[("Authorization", &auth)],
        Some(&call(json!({"tool": "fs_write"}))),
    )
    .await;
    assert_eq!(res.status, 404);
    let res = http(
        gw.addr,
        "POST",
        "/tools/invoke",
        &[("Authorization", &auth)],
        Some(&call(json!({"tool": "spawn"}))),
    )
    .await;
    assert_eq!(res.status, 200, "allow exposes a default-denied tool");
    let res = http(
        gw.addr,
        "POST",
        "/tools/invoke",
        &[("Authorization", &auth)],
        Some(&call(json!({"tool": "web_fetch"}))),
    )
    .await;
    assert_eq!(res.status, 403);
    let res = http(
        gw.addr,
        "POST",
        "/tools/invoke",
        &[("Authorization", &auth)],
        Some(&call(json!({"tool": "missing"}))),
    )
    .await;
    assert_eq!(res.status, 404);
    let res = http(
        gw.addr,
        "POST",
        "/tools/invoke",
        &[("Authorization", &auth)],
        Some(&call(json!({"tool": "owner_only"}))),
    )
    .await;
    assert_eq!(res.status, 403);
    let res = http(
        gw.addr,
        "POST",
        "/tools/invoke",
        &[("Authorization", &auth)],
        Some(&call(json!({"tool": "echo", "args": [1]}))),
    )
    .await;
    assert_eq!(res.status, 400);
    let big = json!({"tool": "echo", "args": {"pad": "x".repeat(3 * 1024 * 1024)}}).to_string();
    let res = http(gw.addr, "POST", "/tools/invoke", &[("Authorization", &auth)], Some(&big)).await;
    assert_eq!(res.status, 413);
    assert_eq!(gw.fake.tool_calls().len(), 4, "refused calls never reach the service");
    gw.stop().await;
}
