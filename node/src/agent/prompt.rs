//! The system prompt: identity, tools, and the agent workspace files (AGENTS.md, SOUL.md,
//! TOOLS.md, IDENTITY.md, USER.md, MEMORY.md) when present, each capped in size.
//!
//! Workspace files are re-read at most every [`PROMPT_CACHE_TTL_MS`], so edits take effect on a
//! later turn without a file read on every turn. With skills configured
//! ([`PromptBuilder::with_skills`]), the ready skills of the agent's workspace are listed by name,
//! description and path (re-read at most every [`SKILLS_CACHE_TTL_MS`]).

use crate::config::ResolvedAgent;
use crate::provider::ToolDefinition;
use crate::skills::SkillSettings;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The workspace files read into the prompt, in this order (OpenClaw's bootstrap files).
pub const WORKSPACE_FILES: [&str; 6] =
    ["AGENTS.md", "SOUL.md", "TOOLS.md", "IDENTITY.md", "USER.md", "MEMORY.md"];
/// Largest part of one workspace file put in the prompt, in bytes (OpenClaw's bootstrapMaxChars).
pub const WORKSPACE_FILE_BYTES_MAX: usize = 20_000;
/// How long the workspace files read for a prompt are reused.
pub const PROMPT_CACHE_TTL_MS: u64 = 2_000;
/// How long the skills section read for a workspace is reused.
pub const SKILLS_CACHE_TTL_MS: u64 = 5_000;

/// Reads workspace files and builds system prompts, caching the files per workspace.
#[derive(Debug, Default)]
pub struct PromptBuilder {
    cache: Mutex<HashMap<PathBuf, (Instant, String)>>,
    skills: Option<SkillSettings>,
    skills_cache: Mutex<HashMap<PathBuf, (Instant, String)>>,
}

impl PromptBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists the ready skills of each agent's workspace in its prompts.
    pub fn with_skills(mut self, settings: SkillSettings) -> Self {
        self.skills = Some(settings);
        self
    }

    fn skills_section(&self, workspace: &Path) -> String {
        let Some(settings) = &self.skills else { return String::new() };
        let ttl = Duration::from_millis(SKILLS_CACHE_TTL_MS);
        let mut cache = self.skills_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, section)) = cache.get(workspace)
            && at.elapsed() < ttl
        {
            return section.clone();
        }
        let section = crate::skills::load(workspace, settings).prompt_section();
        cache.insert(workspace.to_path_buf(), (Instant::now(), section.clone()));
        section
    }

    /// The system prompt for one turn of `agent` with these tools.
    pub fn build(&self, agent: &ResolvedAgent, tools: &[ToolDefinition]) -> String {
        let identity = &agent.identity;
        let name = identity.name.as_deref().or(agent.name.as_deref()).unwrap_or("a BeamClaw agent");
        let mut prompt = format!("You are {name}");
        if let Some(emoji) = &identity.emoji {
            prompt.push(' ');
            prompt.push_str(emoji);
        }
        prompt.push_str(&format!(
            ", a personal AI assistant running in BeamClaw (agent id {}).\n",
            agent.id
        ));
        if let Some(theme) = &identity.theme {
            prompt.push_str(&format!("Your style: {theme}\n"));
        }
        if !tools.is_empty() {
            prompt.push_str("\n## Tools\nYou can call these tools:\n");
            for tool in tools {
                prompt.push_str(&format!("- {}: {}\n", tool.name, tool.description));
            }
        }
        prompt.push_str(&self.skills_section(&agent.workspace));
        prompt.push_str(&format!(
            "\n## Workspace\nYour workspace directory is {}.\n",
            agent.workspace.display()
        ));
        prompt.push_str(&self.workspace_section(&agent.workspace));
        prompt
    }

    fn workspace_section(&self, workspace: &Path) -> String {
        let ttl = Duration::from_millis(PROMPT_CACHE_TTL_MS);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, section)) = cache.get(workspace)
            && at.elapsed() < ttl
        {
            return section.clone();
        }
        let section = read_workspace_files(workspace);
        cache.insert(workspace.to_path_buf(), (Instant::now(), section.clone()));
        section
    }
}

fn read_workspace_files(workspace: &Path) -> String {
    let mut section = String::new();
    for name in WORKSPACE_FILES {
        let path = workspace.join(name);
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read workspace file; left out of the prompt");
                continue;
            }
        };
        let text = String::from_utf8_lossy(&text);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        if section.is_empty() {
            section.push_str("\n## Project context\nThese files from your workspace describe you, the user and your memory:\n");
        }
        section.push_str(&format!("\n### {name}\n"));
        if text.len() > WORKSPACE_FILE_BYTES_MAX {
            let mut cut = WORKSPACE_FILE_BYTES_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            section.push_str(&text[..cut]);
            section.push_str(&format!(
                "\n[... {name} is {} bytes; only the first {cut} are shown. Read the file for the rest.]\n",
                text.len()
            ));
        } else {
            section.push_str(text);
            section.push('\n');
        }
    }
    section
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Identity, ModelChain, ModelRef, ThinkingLevel};

    fn agent(workspace: &Path) -> ResolvedAgent {
        ResolvedAgent {
            id: "main".into(),
            name: None,
            model: ModelChain { primary: ModelRef::offline(), fallbacks: Vec::new() },
            workspace: workspace.to_path_buf(),
            timeout: Duration::from_secs(1),
            max_concurrent: 1,
            identity: Identity {
                name: Some("Molty".into()),
                emoji: Some("🦞".into()),
                ..Identity::default()
            },
            thinking: ThinkingLevel::Off,
        }
    }

    #[test]
    fn prompt_has_identity_tools_and_present_files_in_order_capped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("SOUL.md"), "Be kind.").unwrap();
        std::fs::write(dir.path().join("AGENTS.md"), "Follow the rules.").unwrap();
        std::fs::write(dir.path().join("MEMORY.md"), "x".repeat(WORKSPACE_FILE_BYTES_MAX + 10))
            .unwrap();
        std::fs::write(dir.path().join("USER.md"), "  \n").unwrap();
        let tools = vec![ToolDefinition {
            name: "read".into(),
            description: "Reads a file".into(),
            parameters: serde_json::json!({}),
        }];
        let prompt = PromptBuilder::new().build(&agent(dir.path()), &tools);
        assert!(prompt.starts_with("You are Molty 🦞"));
        assert!(prompt.contains("- read: Reads a file"));
        let agents_at = prompt.find("### AGENTS.md\nFollow the rules.").unwrap();
        let soul_at = prompt.find("### SOUL.md\nBe kind.").unwrap();
        assert!(agents_at < soul_at);
        assert!(!prompt.contains("### USER.md"), "blank files are left out");
        assert!(!prompt.contains("### TOOLS.md"), "missing files are left out");
        assert!(prompt.contains("MEMORY.md is 20010 bytes; only the first 20000 are shown"));
    }

    #[test]
    fn no_workspace_files_means_no_project_context() {
        let dir = tempfile::tempdir().unwrap();
        let prompt = PromptBuilder::new().build(&agent(&dir.path().join("missing")), &[]);
        assert!(!prompt.contains("Project context"));
        assert!(!prompt.contains("## Tools"));
    }
}
