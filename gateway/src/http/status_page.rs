//! `GET /`: a server-rendered HTML page for people: this node, the mesh members, the sessions
//! and their owners, provider statistics. Every value from outside is HTML-escaped.

use std::fmt::Write;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::server::Shared;
use crate::service::{GatewayService, SessionQuery};
use crate::util::now_ms;

/// Sessions listed on the page at most.
const SESSIONS_SHOWN_MAX: usize = 100;
/// The page reloads itself this often, seconds.
const REFRESH_SECONDS: u32 = 10;

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5rem}\
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;font-size:.9rem}\
th{background:#f3f3f3}pre{background:#f7f7f7;padding:1rem;overflow:auto}\
.muted{color:#777}";

pub(crate) async fn render<S: GatewayService>(shared: &Shared<S>) -> Response {
    let node = &shared.node;
    let now = now_ms();
    let status = shared.service.status().await;
    let sessions = shared
        .service
        .sessions_list(SessionQuery { limit: Some(SESSIONS_SHOWN_MAX), ..Default::default() })
        .await;

    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>BeamClaw {name}</title><style>{STYLE}</style></head><body>\
         <h1>BeamClaw node {name}</h1>\
         <table><tr><th>Node id</th><td>{id}</td></tr>\
         <tr><th>Version</th><td>{version}</td></tr>\
         <tr><th>Uptime</th><td>{uptime}</td></tr>\
         <tr><th>Listening on</th><td>{listen}</td></tr>\
         <tr><th>Auth</th><td>{auth}</td></tr>\
         <tr><th>WebSocket connections</th><td>{conns}</td></tr></table>",
        name = escape(&node.name),
        id = escape(&node.node_id),
        version = escape(&node.version),
        uptime = duration(now - node.started_at_ms),
        listen = escape(&shared.local_addr.to_string()),
        auth = shared.config.auth.mode.as_str(),
        conns = shared.connections.open_count(),
    );

    match &status {
        Ok(status) => {
            let _ = write!(
                html,
                "<h2>Mesh members ({})</h2><table><tr><th>Node</th><th>Name</th><th>State</th>\
                 <th>Address</th><th>Version</th><th>Sessions owned</th></tr>",
                status.members.len()
            );
            for m in &status.members {
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&m.node_id),
                    escape(&m.name),
                    escape(&m.state),
                    escape(m.address.as_deref().unwrap_or("")),
                    escape(m.version.as_deref().unwrap_or("")),
                    m.sessions_owned.map(|n| n.to_string()).unwrap_or_default(),
                );
            }
            let _ = write!(
                html,
                "</table><p>Sessions owned here: {} &middot; replicated here: {}</p>",
                status.sessions_owned, status.sessions_replicated
            );
        }
        Err(err) => {
            let _ = write!(
                html,
                "<p class=\"muted\">Status unavailable: {}</p>",
                escape(&err.to_string())
            );
        }
    }

    match &sessions {
        Ok(sessions) => {
            let _ = write!(
                html,
                "<h2>Sessions (newest {})</h2><table><tr><th>Key</th><th>Label</th><th>Owner</th>\
                 <th>Epoch</th><th>Messages</th><th>Updated</th></tr>",
                sessions.len().min(SESSIONS_SHOWN_MAX)
            );
            for s in sessions.iter().take(SESSIONS_SHOWN_MAX) {
                let (owner, epoch) = match &s.entry.owner {
                    Some(o) => (escape(&o.node), o.epoch.to_string()),
                    None => ("<span class=\"muted\">none</span>".to_owned(), String::new()),
                };
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{owner}</td><td>{epoch}</td><td>{}</td>\
                     <td>{} ago</td></tr>",
                    escape(s.key.as_str()),
                    escape(s.entry.label.as_deref().unwrap_or("")),
                    s.entry.message_count,
                    duration(now - s.entry.updated_at_ms),
                );
            }
            html.push_str("</table>");
        }
        Err(err) => {
            let _ = write!(
                html,
                "<p class=\"muted\">Sessions unavailable: {}</p>",
                escape(&err.to_string())
            );
        }
    }

    if let Ok(status) = &status {
        let providers = serde_json::to_string_pretty(&status.providers)
            .unwrap_or_else(|_| status.providers.to_string());
        let _ = write!(html, "<h2>Providers</h2><pre>{}</pre>", escape(&providers));
    }
    html.push_str("</body></html>");
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup() {
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(5_000), "5s");
        assert_eq!(duration(125_000), "2m 5s");
        assert_eq!(duration(7_260_000), "2h 1m");
        assert_eq!(duration(-1), "0s");
    }
}
