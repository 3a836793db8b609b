//! Command-line actions that talk to a running node or to a data directory: `chat`, `status`,
//! `devices`, `dev cluster`, and (in [`sessions`]) `sessions list|show|export` and
//! `import openclaw`.

pub mod client;
pub mod sessions;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use beamclaw_gateway::{FilePairingStore, PairingStore};
use serde_json::{Value, json};

use crate::config::LoadedConfig;
pub use client::{ClientError, Credentials, GatewayClient};

/// How long `beamclaw chat` waits for the next event of its run before giving up.
pub const CHAT_IDLE_TIMEOUT_MS: u64 = 300_000;
/// How long a single method call may take.
pub const CALL_TIMEOUT_MS: u64 = 30_000;

/// The gateway URL and credentials a CLI command uses: `--url`, else the config's port on
/// loopback; the token or password from the config or the environment.
pub fn target(loaded: &LoadedConfig, url: Option<String>) -> (String, Credentials) {
    let g = &loaded.config.gateway;
    let url = url.unwrap_or_else(|| {
        format!("ws://127.0.0.1:{}", g.port.unwrap_or(crate::serve::GATEWAY_PORT_DEFAULT))
    });
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let creds = Credentials {
        token: g
            .auth
            .token
            .as_ref()
            .map(|s| s.expose().to_string())
            .or_else(|| env("BEAMCLAW_GATEWAY_TOKEN"))
            .or_else(|| env("OPENCLAW_GATEWAY_TOKEN")),
        password: g
            .auth
            .password
            .as_ref()
            .map(|s| s.expose().to_string())
            .or_else(|| env("BEAMCLAW_GATEWAY_PASSWORD")),
    };
    (url, creds)
}

/// The concatenated text parts of an OpenClaw chat message payload.
fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect(),
        _ => String::new(),
    }
}

/// `beamclaw chat "message"`: sends one message and streams the reply to stdout.
pub async fn chat(
    url: &str,
    creds: &Credentials,
    session: &str,
    message: &str,
) -> Result<(), ClientError> {
    use std::io::Write;
    let mut client =
        GatewayClient::connect(url, creds, &["operator.read", "operator.write"]).await?;
    let idempotency_key = uuid::Uuid::new_v4().to_string();
    let params =
        json!({"sessionKey": session, "message": message, "idempotencyKey": idempotency_key});
    let accepted = client.call("chat.send", params, CALL_TIMEOUT_MS).await?;
    let run_id = accepted["runId"].as_str().unwrap_or(&idempotency_key).to_string();
    let mut printed = 0usize;
    let mut out = std::io::stdout();
    loop {
        let event = client.next_event(CHAT_IDLE_TIMEOUT_MS).await?;
        if event["event"] != "chat" || event["payload"]["runId"] != run_id.as_str() {
            continue;
        }
        let payload = &event["payload"];
        let text = text_of(&payload["message"]);
        let new = text.get(printed..).unwrap_or_default();
        match payload["state"].as_str() {
            Some("delta") => {
                let _ = out.write_all(new.as_bytes());
                let _ = out.flush();
                printed = text.len();
            }
            Some("final") => {
                let _ = out.write_all(new.as_bytes());
                let _ = out.write_all(b"\n");
                let _ = out.flush();
                return Ok(());
            }
            Some("aborted") => {
                let _ = out.write_all(b"\n[aborted]\n");
                return Ok(());
            }
            Some("error") => {
                let message =
                    payload["errorMessage"].as_str().unwrap_or("the run failed").to_string();
                return Err(ClientError::Method {
                    method: "chat".into(),
                    code: payload["errorKind"].as_str().unwrap_or("error").into(),
                    message,
                });
            }
            _ => {}
        }
    }
}

/// `beamclaw status`: members, sessions and owners as the node sees them.
pub async fn status(url: &str, creds: &Credentials, as_json: bool) -> Result<(), ClientError> {
    let mut client = GatewayClient::connect(url, creds, &["operator.read"]).await?;
    let status = client.call("status", json!({}), CALL_TIMEOUT_MS).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
        return Ok(());
    }
    print_status(&status);
    Ok(())
}

fn print_status(status: &Value) {
    let field = |v: &Value, k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .or_else(|| v[k].as_u64().map(|n| n.to_string()))
            .unwrap_or_else(|| "-".into())
    };
    if let Some(members) =
        status["members"].as_array().or_else(|| status["mesh"]["members"].as_array())
    {
        println!("members ({}):", members.len());
        println!("  {:<54} {:<9} {:<22} {:>6}", "node", "state", "address", "owned");
        for m in members {
            let node = m["nodeId"].as_str().or_else(|| m["node_id"].as_str()).unwrap_or("-");
            println!(
                "  {:<54} {:<9} {:<22} {:>6}",
                node,
                field(m, "state"),
                field(m, "address"),
                field(m, "sessionsOwned")
            );
        }
    }
    for (label, key) in
        [("sessions owned", "sessionsOwned"), ("sessions replicated", "sessionsReplicated")]
    {
        if !status[key].is_null() {
            println!("{label}: {}", status[key]);
        }
    }
    let mesh = &status["providers"]["mesh"];
    if !mesh.is_null() {
        println!(
            "hydrated sessions: {}  pending writes: {}  handoffs: {}  sync exchanges: {}",
            field(mesh, "hydrated"),
            field(mesh, "pendingWrites"),
            field(mesh, "handoffs"),
            field(mesh, "syncExchanges")
        );
    }
    if let Some(models) = status["providers"]["models"].as_array() {
        for m in models {
            println!(
                "model {}: {}",
                m["model"].as_str().or_else(|| m["provider"].as_str()).unwrap_or("-"),
                m
            );
        }
    }
}

/// `beamclaw devices ...`: the data directory's device pairings, while the node runs or not.
pub fn devices(data_dir: &Path, action: DevicesAction) -> Result<(), String> {
    let store = FilePairingStore::open(data_dir.join("devices")).map_err(|e| e.to_string())?;
    let now = chrono::Utc::now().timestamp_millis();
    match action {
        DevicesAction::List => {
            let snap = store.snapshot(now).map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string_pretty(&snapshot_json(&snap)).unwrap_or_default());
        }
        DevicesAction::Approve(id) => {
            let device = store.approve(&id, now).map_err(|e| e.to_string())?;
            println!("approved {id}: device {}", device.device_id);
        }
        DevicesAction::Reject(id) => {
            store.reject(&id, now).map_err(|e| e.to_string())?;
            println!("rejected {id}");
        }
    }
    Ok(())
}

fn snapshot_json(snap: &beamclaw_gateway::PairingSnapshot) -> Value {
    json!({ "pending": snap.pending, "paired": snap.paired })
}

#[derive(Clone, Debug)]
pub enum DevicesAction {
    List,
    Approve(String),
    Reject(String),
}

/// One node of `beamclaw dev cluster`.
struct DevNode {
    name: String,
    child: tokio::process::Child,
}

/// `beamclaw dev cluster --nodes N`: a local cluster on loopback, one process per node; Ctrl-C
/// drains them all.
pub async fn dev_cluster(
    nodes: usize,
    base_port: u16,
    root: PathBuf,
    secret: Option<String>,
) -> Result<(), String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the beamclaw binary: {e}"))?;
    let mut children: Vec<DevNode> = Vec::new();
    let seed = format!("127.0.0.1:{}", base_port + 1);
    for i in 0..nodes {
        let port = base_port + u16::try_from(10 * i).map_err(|_| "too many nodes".to_string())?;
        let name = format!("node-{}", i + 1);
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("--data-dir")
            .arg(&dir)
            .arg("up")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--mesh-listen")
            .arg(format!("127.0.0.1:{}", port + 1))
            .arg("--node-name")
            .arg(&name)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if i > 0 {
            cmd.arg("--join").arg(&seed);
        }
        if let Some(s) = &secret {
            cmd.env("BEAMCLAW_CLUSTER_SECRET", s);
        }
        let child = cmd.spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
        println!(
            "{name}: gateway http://127.0.0.1:{port}  ws://127.0.0.1:{port}  mesh 127.0.0.1:{}  data {}",
            port + 1,
            dir.display()
        );
        children.push(DevNode { name, child });
        if i == 0 {
            // Let the seed bind before the others dial it.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    println!("{nodes} nodes running; Ctrl-C drains them all");
    let _ = tokio::signal::ctrl_c().await;
    println!("draining...");
    for node in &children {
        if let Some(pid) = node.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for mut node in children {
        match tokio::time::timeout(
            Duration::from_millis(crate::serve::DRAIN_TIMEOUT_MS + 10_000),
            node.child.wait(),
        )
        .await
        {
            Ok(Ok(status)) => println!("{}: exited ({status})", node.name),
            _ => {
                let _ = node.child.kill().await;
                println!("{}: killed after the drain deadline", node.name);
            }
        }
    }
    Ok(())
}
