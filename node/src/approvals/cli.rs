//! `beamclaw approvals list|approve|deny`: exec approvals of the whole mesh, through any node's
//! gateway (`exec.approval.list` and `exec.approval.resolve`, scope `operator.approvals`).

use serde_json::{Value, json};

use crate::cli::{CALL_TIMEOUT_MS, ClientError, Credentials, GatewayClient};

/// What `beamclaw approvals` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApprovalsAction {
    /// Pending approvals, then recent decisions; `all` shows decided ones too.
    List {
        all: bool,
        json: bool,
    },
    /// `allow-once`, or `allow-always` with `--always`.
    Approve {
        id: String,
        always: bool,
    },
    Deny {
        id: String,
    },
}

fn age(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    if s < 120 { format!("{s}s") } else { format!("{}m", s / 60) }
}

/// One line per approval, for people.
pub fn render(rows: &[Value], now_ms: i64, all: bool) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for r in rows {
        let status = r["status"].as_str().unwrap_or("?");
        if !all && status != "pending" {
            continue;
        }
        shown += 1;
        let req = &r["request"];
        let node = req["nodeId"].as_str().unwrap_or("?");
        let node: String = node.chars().take(12).collect();
        let when = match status {
            "pending" => {
                format!("expires in {}", age(r["expiresAtMs"].as_i64().unwrap_or(0) - now_ms))
            }
            _ => format!(
                "{} by {}",
                r["decision"].as_str().unwrap_or("?"),
                r["resolvedBy"].as_str().unwrap_or("?")
            ),
        };
        out.push_str(&format!(
            "{}  {status:<8} agent {}  node {node}  {when}\n    $ {}\n    in {}  ({})\n",
            r["id"].as_str().unwrap_or("?"),
            req["agentId"].as_str().unwrap_or("?"),
            req["command"].as_str().unwrap_or(""),
            req["cwd"].as_str().unwrap_or(""),
            req["resolvedPaths"]
                .as_array()
                .map(|p| p.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "no resolved binary".into()),
        ));
    }
    if shown == 0 {
        out.push_str(if all { "no exec approvals\n" } else { "no pending exec approvals\n" });
    }
    out
}

/// Runs `action` against the gateway at `url`.
pub async fn run(
    url: &str,
    creds: &Credentials,
    action: ApprovalsAction,
) -> Result<(), ClientError> {
    let mut client = GatewayClient::connect(url, creds, &["operator.approvals"]).await?;
    match action {
        ApprovalsAction::List { all, json } => {
            let listed = client.call("exec.approval.list", json!({}), CALL_TIMEOUT_MS).await?;
            let rows = listed["approvals"].as_array().cloned().unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&listed).unwrap_or_default());
            } else {
                print!("{}", render(&rows, chrono::Utc::now().timestamp_millis(), all));
            }
        }
        ApprovalsAction::Approve { id, always } => {
            let decision = if always { "allow-always" } else { "allow-once" };
            let r = client
                .call(
                    "exec.approval.resolve",
                    json!({"id": id, "decision": decision}),
                    CALL_TIMEOUT_MS,
                )
                .await?;
            println!(
                "{}: {}",
                r["id"].as_str().unwrap_or(&id),
                r["decision"].as_str().unwrap_or(decision)
            );
        }
        ApprovalsAction::Deny { id } => {
            let r = client
                .call(
                    "exec.approval.resolve",
                    json!({"id": id, "decision": "deny"}),
                    CALL_TIMEOUT_MS,
                )
                .await?;
            println!(
                "{}: {}",
                r["id"].as_str().unwrap_or(&id),
                r["decision"].as_str().unwrap_or("deny")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_pending_with_command_and_binaries() {
        let rows = vec![
            json!({"id": "a1", "status": "pending", "expiresAtMs": 61_000,
                   "request": {"command": "ls -la", "cwd": "/w", "agentId": "main", "nodeId": "node123456789xyz",
                               "resolvedPaths": ["/usr/bin/ls"]}}),
            json!({"id": "b2", "status": "denied", "decision": "deny", "resolvedBy": "cli",
                   "request": {"command": "rm x", "cwd": "/w", "agentId": "main", "nodeId": "n"}}),
        ];
        let text = render(&rows, 1_000, false);
        assert!(text.contains("a1") && text.contains("$ ls -la") && text.contains("/usr/bin/ls"));
        assert!(text.contains("expires in 60s") && text.contains("node node12345678"), "{text}");
        assert!(!text.contains("b2"));
        assert!(render(&rows, 1_000, true).contains("deny by cli"));
        assert_eq!(render(&[], 0, false), "no pending exec approvals\n");
    }
}
