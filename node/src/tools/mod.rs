//! Tools the model may call: the [`Tool`] trait and the [`ToolRegistry`] the agent loop uses.
//!
//! Owns: what a tool is (name, description, JSON schema of its arguments, an async `run`), the
//! context a run gets (session, epoch, run id, workspace, cancellation), and the registry with
//! the `tools.allow` / `tools.deny` policy. The tools themselves (exec, file tools, web fetch,
//! session tools) live in their own modules.
//! Must not know: providers, the session document, the mesh.

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

/// The tools an agent may call, after the allow/deny policy.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
    allow: Vec<String>,
    deny: Vec<String>,
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
    /// tool names or `*`.
    pub fn with_policy(mut self, allow: Vec<String>, deny: Vec<String>) -> Self {
        self.allow = allow;
        self.deny = deny;
        self
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

    fn permitted(&self, name: &str) -> bool {
        let listed = |list: &[String]| list.iter().any(|p| p == "*" || p == name);
        (self.allow.is_empty() || listed(&self.allow)) && !listed(&self.deny)
    }

    /// The tool, if registered and permitted.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name).filter(|_| self.permitted(name))
    }

    /// Names of the permitted tools, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tools.keys().map(String::as_str).filter(|n| self.permitted(n)).collect()
    }

    /// Definitions of the permitted tools, for the provider request.
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        self.tools
            .values()
            .filter(|t| self.permitted(t.name()))
            .map(|t| ToolDefinition {
                name: t.name().to_string(),
                description: t.description().to_string(),
                parameters: t.parameters(),
            })
            .collect()
    }
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
