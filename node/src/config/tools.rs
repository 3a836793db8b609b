//! `tools`: the tool policy (profile, allow, deny), `exec` and its approvals, `web.fetch`; and
//! the per-agent `tools` override. OpenClaw's layout (`tools.profile`, `tools.exec.security`,
//! `tools.exec.ask`, `tools.exec.backgroundMs`, `tools.exec.timeoutSec`, `tools.web.fetch.*`),
//! plus BeamClaw's `askFallback`, `allowlist`, `approvalTimeoutSeconds`, `allowPrivate` and
//! `allowCidrs` (OpenClaw keeps the approval policy in a separate `exec-approvals.json`).

use super::ConfigIssue;
use super::schema::Shape;
use crate::tools::ToolProfile;
use serde::{Deserialize, Serialize};

/// `exec` security (OpenClaw's `deny | allowlist | full`; also the `askFallback` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecSecurity {
    /// No command runs.
    Deny,
    /// Commands whose binaries match the allowlist run; others per `ask`.
    Allowlist,
    /// Every command runs (unless `ask` is `always`).
    Full,
}

impl ExecSecurity {
    pub const NAMES: &'static [&'static str] = &["deny", "allowlist", "full"];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecSecurity::Deny => "deny",
            ExecSecurity::Allowlist => "allowlist",
            ExecSecurity::Full => "full",
        }
    }
}

/// When an operator is asked (OpenClaw's `off | on-miss | always`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecAsk {
    #[serde(rename = "off")]
    Off,
    #[serde(rename = "on-miss")]
    OnMiss,
    #[serde(rename = "always")]
    Always,
}

impl ExecAsk {
    pub const NAMES: &'static [&'static str] = &["off", "on-miss", "always"];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecAsk::Off => "off",
            ExecAsk::OnMiss => "on-miss",
            ExecAsk::Always => "always",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ToolsConfig {
    pub profile: Option<ToolProfile>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub exec: ExecConfig,
    pub web: WebConfig,
}

/// `agents.*.tools`: an agent's own profile and lists (its profile replaces the global one,
/// a non-empty allow replaces the global allow, denies add up).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AgentToolsConfig {
    pub profile: Option<ToolProfile>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ExecConfig {
    pub security: Option<ExecSecurity>,
    pub ask: Option<ExecAsk>,
    pub ask_fallback: Option<ExecSecurity>,
    /// Globs on the resolved binary path (`/usr/bin/ls`, `/usr/bin/*`, `/opt/tools/**`).
    pub allowlist: Vec<String>,
    /// How long an approval waits for an operator before `askFallback` applies.
    pub approval_timeout_seconds: Option<u64>,
    /// Default `timeoutSeconds` of a command.
    pub timeout_sec: Option<u64>,
    /// Default `yieldMs`: a command still running after this long moves to the background.
    pub background_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct WebConfig {
    pub fetch: WebFetchConfig,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct WebFetchConfig {
    pub enabled: Option<bool>,
    /// Let `web_fetch` reach loopback, private, link-local... addresses (off by default).
    pub allow_private: Option<bool>,
    /// Ranges `web_fetch` may reach even though they are private (`10.1.2.0/24`).
    pub allow_cidrs: Vec<String>,
    pub max_bytes: Option<u64>,
    pub max_chars: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub max_redirects: Option<u64>,
    pub user_agent: Option<String>,
}

/// Longest approval wait accepted, in seconds.
pub const APPROVAL_TIMEOUT_SECONDS_MAX: u64 = 24 * 3600;

fn policy_keys() -> Vec<(&'static str, Shape)> {
    vec![
        ("profile", Shape::Enum(ToolProfile::NAMES)),
        ("allow", Shape::List(Box::new(Shape::Str))),
        ("deny", Shape::List(Box::new(Shape::Str))),
    ]
}

/// The shape of `tools`.
pub(crate) fn shape() -> Shape {
    let mut keys = policy_keys();
    keys.push((
        "exec",
        Shape::Object(vec![
            ("security", Shape::Enum(ExecSecurity::NAMES)),
            ("ask", Shape::Enum(ExecAsk::NAMES)),
            ("askFallback", Shape::Enum(ExecSecurity::NAMES)),
            ("allowlist", Shape::List(Box::new(Shape::Str))),
            ("approvalTimeoutSeconds", Shape::UInt(APPROVAL_TIMEOUT_SECONDS_MAX)),
            ("timeoutSec", Shape::UInt(crate::tools::exec::EXEC_TIMEOUT_SECONDS_MAX)),
            ("backgroundMs", Shape::UInt(crate::tools::exec::EXEC_TIMEOUT_SECONDS_MAX * 1000)),
        ]),
    ));
    keys.push((
        "web",
        Shape::Object(vec![(
            "fetch",
            Shape::Object(vec![
                ("enabled", Shape::Bool),
                ("allowPrivate", Shape::Bool),
                ("allowCidrs", Shape::List(Box::new(Shape::Str))),
                ("maxBytes", Shape::UInt(crate::tools::web_fetch::WEB_FETCH_BYTES_LIMIT as u64)),
                ("maxChars", Shape::UInt(crate::tools::web_fetch::WEB_FETCH_CHARS_LIMIT as u64)),
                (
                    "timeoutSeconds",
                    Shape::UInt(crate::tools::web_fetch::WEB_FETCH_TIMEOUT_SECONDS_LIMIT),
                ),
                (
                    "maxRedirects",
                    Shape::UInt(crate::tools::web_fetch::WEB_FETCH_REDIRECTS_LIMIT as u64),
                ),
                ("userAgent", Shape::Str),
            ]),
        )]),
    ));
    Shape::Object(keys)
}

/// The shape of `agents.*.tools`.
pub(crate) fn agent_shape() -> Shape {
    Shape::Object(policy_keys())
}

fn check_entries(path: &str, entries: &[String], issues: &mut Vec<ConfigIssue>) {
    let groups = crate::tools::policy::group_names();
    for (i, entry) in entries.iter().enumerate() {
        if entry.starts_with("group:") && !groups.contains(&entry.as_str()) {
            let path = format!("{path}[{i}]");
            issues.push(ConfigIssue {
                message: format!(
                    "{path}: unknown tool group {entry:?} (known: {})",
                    groups.join(", ")
                ),
                path,
            });
        }
    }
}

/// Problems in `tools` and the agents' `tools` that the schema cannot see.
pub(crate) fn issues(config: &super::Config) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let tools = &config.tools;
    check_entries("tools.allow", &tools.allow, &mut issues);
    check_entries("tools.deny", &tools.deny, &mut issues);
    let agents = &config.agents;
    let mut agent_tools: Vec<(String, &AgentToolsConfig)> = Vec::new();
    if let Some(t) = &agents.defaults.tools {
        agent_tools.push(("agents.defaults.tools".into(), t));
    }
    for (id, a) in &agents.entries {
        if let Some(t) = &a.tools {
            agent_tools.push((format!("agents.entries.{id}.tools"), t));
        }
    }
    for (i, a) in agents.list.iter().enumerate() {
        if let Some(t) = &a.tools {
            agent_tools.push((format!("agents.list[{i}].tools"), t));
        }
    }
    for (path, t) in agent_tools {
        check_entries(&format!("{path}.allow"), &t.allow, &mut issues);
        check_entries(&format!("{path}.deny"), &t.deny, &mut issues);
    }
    for (i, pattern) in tools.exec.allowlist.iter().enumerate() {
        if !(pattern.starts_with('/') || pattern.starts_with("~/")) {
            let path = format!("tools.exec.allowlist[{i}]");
            issues.push(ConfigIssue {
                message: format!(
                    "{path}: {pattern:?} must be a glob on an absolute binary path, like /usr/bin/ls or /usr/local/bin/*"
                ),
                path,
            });
        }
    }
    if tools.exec.approval_timeout_seconds == Some(0) {
        issues.push(ConfigIssue {
            path: "tools.exec.approvalTimeoutSeconds".into(),
            message: "tools.exec.approvalTimeoutSeconds: must be at least 1".into(),
        });
    }
    for (i, cidr) in tools.web.fetch.allow_cidrs.iter().enumerate() {
        if let Err(e) = crate::tools::web_fetch::Cidr::parse(cidr) {
            let path = format!("tools.web.fetch.allowCidrs[{i}]");
            issues.push(ConfigIssue { message: format!("{path}: {e}"), path });
        }
    }
    if tools.web.fetch.allow_cidrs.len() > crate::tools::web_fetch::ALLOW_CIDRS_MAX {
        issues.push(ConfigIssue {
            path: "tools.web.fetch.allowCidrs".into(),
            message: format!(
                "tools.web.fetch.allowCidrs: at most {} entries",
                crate::tools::web_fetch::ALLOW_CIDRS_MAX
            ),
        });
    }
    issues
}
