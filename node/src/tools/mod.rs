//! Tools the model may call: the [`Tool`] trait and the [`ToolRegistry`] the agent loop uses.
//!
//! Owns: what a tool is (name, description, JSON schema of its arguments, an async `run`), the
//! context a run gets (session, epoch, run id, workspace, cancellation), and the registry with
//! OpenClaw's tool policy (`tools.profile`, `tools.allow`, `tools.deny`, groups; per agent).
//! The tools themselves live in their own modules: `fs` (read, write, edit, apply_patch confined
//! to the workspace), `exec` and `process` (commands in their own process group, background
//! jobs), `web_fetch` (http/https with an SSRF guard), `policy` (profiles and groups).
//! Exec approvals are asked through the [`exec::ExecGate`] trait, which `crate::approvals`
//! implements.
//! Must not know: providers, the session document, the mesh.

pub mod exec;
pub mod fs;
pub mod policy;
pub mod process;
pub mod sessions;
pub mod web_fetch;

pub use policy::{ToolPolicy, ToolProfile};

use crate::provider::ToolDefinition;
use beamclaw_crdt::SessionKey;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Longest tool name (Anthropic and OpenAI both allow 64 characters).
pub const TOOL_NAME_CHARS_MAX: usize = 64;

/// What a tool run knows about where it runs.
#[derive(Clone, Debug)]
pub struct ToolContext {
    pub session: SessionKey,
    pub epoch: u64,
    pub run_id: String,
    pub agent_id: String,
    pub workspace: PathBuf,
    /// Fires when the turn is aborted or times out; long tools must stop promptly.
    pub cancel: CancellationToken,
}

/// The result of a tool run as the model will see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

impl ToolOutput {
    pub fn ok(content: impl Into<String>) -> Self {
        ToolOutput { content: content.into(), is_error: false }
    }

    pub fn error(content: impl Into<String>) -> Self {
        ToolOutput { content: content.into(), is_error: true }
    }
}

pub trait Tool: Send + Sync {
    fn name(&self) -> &str;
    fn description(&self) -> &str;
    /// JSON schema of the arguments object.
    fn parameters(&self) -> serde_json::Value;
    /// Runs the tool. Failures the model should see (bad arguments, a command that failed) are
    /// `ToolOutput::error`, not panics.
    fn run<'a>(
        &'a self,
        args: serde_json::Value,
        ctx: &'a ToolContext,
    ) -> BoxFuture<'a, ToolOutput>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "tool name {name:?} must be 1-{TOOL_NAME_CHARS_MAX} characters of a-z, A-Z, 0-9, _ and -"
    )]
    BadName { name: String },
    #[error("a tool named {name:?} is already registered")]
    Duplicate { name: String },
}

/// The tools an agent may call, after the tool policy (a default one and one per agent).
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
    policy: ToolPolicy,
    agent_policies: BTreeMap<String, ToolPolicy>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRegistry")
            .field("tools", &self.tools.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ToolRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `tools.allow` (empty: everything) and `tools.deny` (wins over allow). Entries are
    /// tool names, `group:<name>` or `*`.
    pub fn with_policy(mut self, allow: Vec<String>, deny: Vec<String>) -> Self {
        self.policy.allow = allow;
        self.policy.deny = deny;
        self
    }

    /// Sets the default policy (profile, allow, deny).
    pub fn with_tool_policy(mut self, policy: ToolPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the policy of one agent (replacing the default one for its sessions).
    pub fn with_agent_policy(mut self, agent_id: impl Into<String>, policy: ToolPolicy) -> Self {
        self.agent_policies.insert(agent_id.into(), policy);
        self
    }

    /// The policy that applies to `agent_id`.
    pub fn policy_for(&self, agent_id: &str) -> &ToolPolicy {
        self.agent_policies.get(agent_id).unwrap_or(&self.policy)
    }

    pub fn register(&mut self, tool: Arc<dyn Tool>) -> Result<(), RegistryError> {
        let name = tool.name().to_string();
        let valid = !name.is_empty()
            && name.chars().count() <= TOOL_NAME_CHARS_MAX
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(RegistryError::BadName { name });
        }
        if self.tools.contains_key(&name) {
            return Err(RegistryError::Duplicate { name });
        }
        self.tools.insert(name, tool);
        Ok(())
    }

    /// The tool, if registered and permitted by the default policy.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.get_with(&self.policy, name)
    }

    /// Names of the tools the default policy permits, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.names_with(&self.policy)
    }

    /// Definitions of the tools the default policy permits, for the provider request.
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        self.definitions_with(&self.policy)
    }

    /// The tool, if registered and permitted for `agent_id`.
    pub fn get_for(&self, agent_id: &str, name: &str) -> Option<&Arc<dyn Tool>> {
        self.get_with(self.policy_for(agent_id), name)
    }

    /// Names of the tools `agent_id` may call, sorted.
    pub fn names_for(&self, agent_id: &str) -> Vec<&str> {
        self.names_with(self.policy_for(agent_id))
    }

    /// Definitions of the tools `agent_id` may call.
    pub fn definitions_for(&self, agent_id: &str) -> Vec<ToolDefinition> {
        self.definitions_with(self.policy_for(agent_id))
    }

    /// The tool if registered and permitted by `policy` (for callers with their own policy,
    /// such as a sub-agent's narrower one).
    pub fn get_with(&self, policy: &ToolPolicy, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name).filter(|_| policy.permits(name))
    }

    pub fn names_with(&self, policy: &ToolPolicy) -> Vec<&str> {
        self.tools.keys().map(String::as_str).filter(|n| policy.permits(n)).collect()
    }

    pub fn definitions_with(&self, policy: &ToolPolicy) -> Vec<ToolDefinition> {
        self.tools
            .values()
            .filter(|t| policy.permits(t.name()))
            .map(|t| ToolDefinition {
                name: t.name().to_string(),
                description: t.description().to_string(),
                parameters: t.parameters(),
            })
            .collect()
    }
}

impl ToolRegistry {
    /// Applies the config's tool policy: `tools.{profile, allow, deny}` for every agent, with
    /// `agents.defaults.tools` and each agent's own `tools` on top.
    pub fn with_config_policy(mut self, loaded: &crate::config::LoadedConfig) -> Self {
        let c = &loaded.config;
        let global = ToolPolicy::new(c.tools.profile, c.tools.allow.clone(), c.tools.deny.clone());
        let base = match &c.agents.defaults.tools {
            Some(d) => global.overlay(d.profile, &d.allow, &d.deny),
            None => global,
        };
        let mut agents: Vec<(String, &crate::config::tools::AgentToolsConfig)> = Vec::new();
        for (id, entry) in &c.agents.entries {
            if let Some(t) = &entry.tools {
                agents.push((id.clone(), t));
            }
        }
        for entry in &c.agents.list {
            if let (Some(id), Some(t)) = (&entry.id, &entry.tools) {
                agents.push((id.clone(), t));
            }
        }
        for (id, t) in agents {
            self.agent_policies.insert(id, base.overlay(t.profile, &t.allow, &t.deny));
        }
        self.policy = base;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    #[error("cannot register the built-in tools: {0}")]
    Registry(#[from] RegistryError),
    #[error("web_fetch: {0}")]
    WebFetch(String),
    #[error("tools.web.fetch.allowCidrs: {0}")]
    Cidr(String),
}

/// The built-in tools and the node's background jobs (killed when the node stops).
pub struct BuiltinTools {
    pub registry: ToolRegistry,
    pub processes: Arc<process::ProcessRegistry>,
}

/// Registers the built-in tools of a node: `read`, `write`, `edit`, `apply_patch` (confined to
/// the agent's workspace), `exec` (behind `gate`, the exec approvals) and `process`, and
/// `web_fetch` (unless `tools.web.fetch.enabled` is false), configured from `tools.*`.
pub fn builtin_registry(
    loaded: &crate::config::LoadedConfig,
    gate: Arc<dyn exec::ExecGate>,
) -> Result<BuiltinTools, BuiltinError> {
    let tools = &loaded.config.tools;
    let mut registry = ToolRegistry::new();
    registry.register(Arc::new(fs::ReadTool))?;
    registry.register(Arc::new(fs::WriteTool))?;
    registry.register(Arc::new(fs::EditTool))?;
    registry.register(Arc::new(fs::ApplyPatchTool))?;
    let processes = process::ProcessRegistry::new();
    let defaults = exec::ExecSettings::default();
    let exec_settings = exec::ExecSettings {
        timeout_default: tools
            .exec
            .timeout_sec
            .map(std::time::Duration::from_secs)
            .unwrap_or(defaults.timeout_default),
        yield_default: tools
            .exec
            .background_ms
            .map(std::time::Duration::from_millis)
            .unwrap_or(defaults.yield_default),
    };
    registry.register(Arc::new(exec::ExecTool::new(exec_settings, gate, processes.clone())))?;
    registry.register(Arc::new(process::ProcessTool::new(processes.clone())))?;
    let fetch = &tools.web.fetch;
    if fetch.enabled != Some(false) {
        let d = web_fetch::WebFetchSettings::default();
        let cidrs = fetch
            .allow_cidrs
            .iter()
            .map(|c| web_fetch::Cidr::parse(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(BuiltinError::Cidr)?;
        let clamp = |v: Option<u64>, default: usize, max: usize| {
            v.and_then(|n| usize::try_from(n).ok()).unwrap_or(default).clamp(1, max)
        };
        let settings = web_fetch::WebFetchSettings {
            guard: web_fetch::AddressGuard {
                allow_private: fetch.allow_private.unwrap_or(false),
                allow_cidrs: cidrs,
            },
            max_bytes: clamp(fetch.max_bytes, d.max_bytes, web_fetch::WEB_FETCH_BYTES_LIMIT),
            timeout: std::time::Duration::from_secs(
                fetch
                    .timeout_seconds
                    .unwrap_or(d.timeout.as_secs())
                    .clamp(1, web_fetch::WEB_FETCH_TIMEOUT_SECONDS_LIMIT),
            ),
            max_redirects: fetch
                .max_redirects
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(d.max_redirects)
                .min(web_fetch::WEB_FETCH_REDIRECTS_LIMIT),
            max_chars: clamp(fetch.max_chars, d.max_chars, web_fetch::WEB_FETCH_CHARS_LIMIT),
            user_agent: fetch.user_agent.clone().unwrap_or(d.user_agent),
        };
        let tool = web_fetch::WebFetchTool::new(settings).map_err(BuiltinError::WebFetch)?;
        registry.register(Arc::new(tool))?;
    }
    Ok(BuiltinTools { registry, processes })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);

    impl Tool for Named {
        fn name(&self) -> &str {
            self.0
        }
        fn description(&self) -> &str {
            "test"
        }
        fn parameters(&self) -> serde_json::Value {
            serde_json::json!({"type": "object"})
        }
        fn run<'a>(
            &'a self,
            _: serde_json::Value,
            _: &'a ToolContext,
        ) -> BoxFuture<'a, ToolOutput> {
            Box::pin(async { ToolOutput::ok("ran") })
        }
    }

    #[test]
    fn registry_validates_names_and_applies_policy() {
        let mut r = ToolRegistry::new();
        r.register(Arc::new(Named("read"))).unwrap();
        r.register(Arc::new(Named("exec"))).unwrap();
        assert_eq!(
            r.register(Arc::new(Named("read"))),
            Err(RegistryError::Duplicate { name: "read".into() })
        );
        assert!(matches!(
            r.register(Arc::new(Named("bad name"))),
            Err(RegistryError::BadName { .. })
        ));
        assert_eq!(r.names(), vec!["exec", "read"]);
        let r = r.with_policy(vec!["*".into()], vec!["exec".into()]);
        assert_eq!(r.names(), vec!["read"]);
        assert!(r.get("exec").is_none());
        assert_eq!(r.definitions().len(), 1);
    }
}
