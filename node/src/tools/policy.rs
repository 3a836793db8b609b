//! Which tools an agent may call: OpenClaw's tool profiles, groups and allow/deny lists.
//!
//! Resolution, as OpenClaw does it: the profile gives the base set (`full`, or no profile, means
//! every tool); `allow`, when not empty, narrows it further; `deny` always wins. Entries are tool
//! names, `group:<name>` or `*`; `bash` means `exec` and `apply-patch` means `apply_patch`.
//! Unknown names are kept (a plugin or a tool another module registers later may carry them),
//! but unknown `group:` names are refused by the config check.

use std::collections::BTreeSet;

/// `tools.profile`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolProfile {
    /// `session_status` only.
    Minimal,
    /// Files, runtime, sessions, memory, image.
    Coding,
    /// Messaging and the session tools that read and send.
    Messaging,
    /// Every tool (also what no profile means).
    #[default]
    Full,
}

impl ToolProfile {
    pub const NAMES: &'static [&'static str] = &["minimal", "coding", "messaging", "full"];

    pub fn as_str(self) -> &'static str {
        match self {
            ToolProfile::Minimal => "minimal",
            ToolProfile::Coding => "coding",
            ToolProfile::Messaging => "messaging",
            ToolProfile::Full => "full",
        }
    }

    /// The entries the profile allows (`None`: everything).
    fn entries(self) -> Option<&'static [&'static str]> {
        match self {
            ToolProfile::Minimal => Some(&["session_status"]),
            ToolProfile::Coding => {
                Some(&["group:fs", "group:runtime", "group:sessions", "group:memory", "image"])
            }
            ToolProfile::Messaging => Some(&[
                "group:messaging",
                "sessions_list",
                "sessions_history",
                "sessions_send",
                "session_status",
            ]),
            ToolProfile::Full => None,
        }
    }
}

/// OpenClaw's tool groups (`group:<name>`), with the tools each stands for.
pub const TOOL_GROUPS: &[(&str, &[&str])] = &[
    ("group:fs", &["read", "write", "edit", "apply_patch"]),
    ("group:runtime", &["exec", "process"]),
    ("group:web", &["web_search", "web_fetch"]),
    (
        "group:sessions",
        &["sessions_list", "sessions_history", "sessions_send", "sessions_spawn", "session_status"],
    ),
    ("group:memory", &["memory_search", "memory_get"]),
    ("group:messaging", &["message"]),
    ("group:nodes", &["nodes"]),
    ("group:ui", &["browser", "canvas"]),
    ("group:automation", &["cron", "gateway"]),
    ("group:plugins", &[]),
    (
        "group:openclaw",
        &[
            "read",
            "write",
            "edit",
            "apply_patch",
            "exec",
            "process",
            "web_search",
            "web_fetch",
            "sessions_list",
            "sessions_history",
            "sessions_send",
            "sessions_spawn",
            "session_status",
            "memory_search",
            "memory_get",
            "message",
            "nodes",
            "browser",
            "canvas",
            "cron",
            "gateway",
            "image",
            "agents_list",
            "subagents",
        ],
    ),
];

/// Names of the known groups, for the config check's messages.
pub fn group_names() -> Vec<&'static str> {
    TOOL_GROUPS.iter().map(|(g, _)| *g).collect()
}

/// The canonical name of a tool entry (`bash` is `exec`, `apply-patch` is `apply_patch`).
pub fn canonical(entry: &str) -> &str {
    match entry {
        "bash" => "exec",
        "apply-patch" => "apply_patch",
        other => other,
    }
}

/// A resolved policy: the profile, then allow (narrows when not empty), then deny (always wins).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolPolicy {
    pub profile: ToolProfile,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl ToolPolicy {
    pub fn new(profile: Option<ToolProfile>, allow: Vec<String>, deny: Vec<String>) -> Self {
        ToolPolicy { profile: profile.unwrap_or_default(), allow, deny }
    }

    /// `self` with an agent's own settings on top: its profile replaces the global one, its
    /// allow list replaces the global one when not empty, and both deny lists apply.
    pub fn overlay(&self, profile: Option<ToolProfile>, allow: &[String], deny: &[String]) -> Self {
        let mut out = self.clone();
        if let Some(p) = profile {
            out.profile = p;
        }
        if !allow.is_empty() {
            out.allow = allow.to_vec();
        }
        out.deny.extend(deny.iter().cloned());
        out
    }

    /// Whether the tool `name` is permitted.
    pub fn permits(&self, name: &str) -> bool {
        let name = canonical(name);
        let in_profile = self.profile.entries().is_none_or(|entries| matches(entries, name));
        let allowed = self.allow.is_empty() || matches(&self.allow, name);
        in_profile && allowed && !matches(&self.deny, name)
    }
}

/// Whether `name` is listed in `entries` (by name, group or `*`).
fn matches<S: AsRef<str>>(entries: &[S], name: &str) -> bool {
    entries.iter().any(|entry| {
        let entry = canonical(entry.as_ref());
        entry == "*"
            || entry == name
            || TOOL_GROUPS.iter().any(|(group, members)| *group == entry && members.contains(&name))
    })
}

/// The tool names an entry list expands to (for messages and docs).
pub fn expand<S: AsRef<str>>(entries: &[S]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in entries {
        let entry = canonical(entry.as_ref());
        match TOOL_GROUPS.iter().find(|(g, _)| *g == entry) {
            Some((_, members)) => out.extend(members.iter().map(|m| m.to_string())),
            None => {
                out.insert(entry.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn profiles_give_openclaw_base_sets() {
        let minimal = ToolPolicy::new(Some(ToolProfile::Minimal), vec![], vec![]);
        assert!(minimal.permits("session_status"));
        assert!(!minimal.permits("read"));
        let coding = ToolPolicy::new(Some(ToolProfile::Coding), vec![], vec![]);
        for t in ["read", "write", "edit", "apply_patch", "exec", "bash", "process"] {
            assert!(coding.permits(t), "{t}");
        }
        assert!(!coding.permits("web_fetch"));
        assert!(!coding.permits("message"));
        let messaging = ToolPolicy::new(Some(ToolProfile::Messaging), vec![], vec![]);
        assert!(messaging.permits("message") && messaging.permits("sessions_send"));
        assert!(!messaging.permits("exec") && !messaging.permits("sessions_spawn"));
        let full = ToolPolicy::default();
        assert!(full.permits("anything_at_all"));
    }

    #[test]
    fn allow_narrows_and_deny_wins() {
        let p = ToolPolicy::new(None, list(&["group:fs", "web_fetch"]), list(&["write"]));
        assert!(p.permits("read") && p.permits("web_fetch"));
        assert!(!p.permits("write"), "deny wins over a group in allow");
        assert!(!p.permits("exec"));
        let p = ToolPolicy::new(Some(ToolProfile::Coding), list(&["*"]), list(&["bash"]));
        assert!(!p.permits("exec"), "bash is exec");
        assert!(!p.permits("web_fetch"), "allow cannot widen the profile");
    }

    #[test]
    fn agent_overlay_replaces_profile_and_adds_denies() {
        let global = ToolPolicy::new(Some(ToolProfile::Full), vec![], list(&["web_fetch"]));
        let agent = global.overlay(Some(ToolProfile::Coding), &[], &list(&["group:runtime"]));
        assert!(agent.permits("read"));
        assert!(!agent.permits("exec"));
        assert!(!agent.permits("web_fetch"));
    }

    #[test]
    fn expand_lists_group_members() {
        let names = expand(&["group:runtime", "bash", "read"]);
        assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["exec", "process", "read"]);
    }
}
