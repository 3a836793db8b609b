//! Skills: folders with a `SKILL.md` (AgentSkills format, OpenClaw's manifest in `metadata`).
//!
//! Owns: where skills are found and in which precedence, reading each one (see [`frontmatter`]),
//! gating (bins on PATH, anyBins, env, os, config paths, `skills.entries.<key>.enabled`), the
//! status report (`skills.status`, `beamclaw skills list`) and the system prompt's skills list
//! (name, description and path only: the model reads the file with the read tool).
//! Must not know: the mesh, sessions, providers.
//!
//! Precedence, highest first: `<workspace>/skills`, `<workspace>/.agents/skills`,
//! `~/.agents/skills`, `<data-dir>/skills`, then each of `skills.load.extraDirs`. A skill in a
//! higher root shadows one with the same name in a lower root. One bad skill never stops the
//! others: it is reported as invalid with the reason.

pub mod frontmatter;

use crate::config::{Config, LoadedConfig};
use frontmatter::{Frontmatter, FrontmatterError};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Largest `SKILL.md` read, in bytes (OpenClaw's default `maxSkillFileBytes`).
pub const SKILL_FILE_BYTES_MAX: u64 = 256_000;
/// Entries looked at in one skills root; a root with more is read up to this many (sorted).
pub const SKILL_DIRS_PER_ROOT_MAX: usize = 1_000;
/// Skills reported in total; beyond this, folders are not read and the report says so.
pub const SKILLS_MAX: usize = 500;
/// Skills listed in the system prompt, at most.
pub const SKILLS_IN_PROMPT_MAX: usize = 150;
/// Size of the skills section of the system prompt, at most, in bytes.
pub const SKILLS_PROMPT_BYTES_MAX: usize = 30_000;
/// The file name of a skill.
pub const SKILL_FILE_NAME: &str = "SKILL.md";

/// Where a skills root sits in the precedence order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SkillSource {
    /// `<workspace>/skills`
    Workspace,
    /// `<workspace>/.agents/skills`
    WorkspaceAgents,
    /// `~/.agents/skills`
    PersonalAgents,
    /// `<data-dir>/skills`
    Managed,
    /// `skills.load.extraDirs`
    Extra,
    /// `beamclaw skills list --dir DIR`
    Dir,
}

impl SkillSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SkillSource::Workspace => "workspace",
            SkillSource::WorkspaceAgents => "workspace-agents",
            SkillSource::PersonalAgents => "agents-personal",
            SkillSource::Managed => "managed",
            SkillSource::Extra => "extra",
            SkillSource::Dir => "dir",
        }
    }
}

/// Per-skill settings from `skills.entries.<key>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SkillEntrySettings {
    pub enabled: Option<bool>,
    pub has_api_key: bool,
    pub env_names: Vec<String>,
}

/// What skill loading needs to know, taken from the config once.
#[derive(Clone, Debug, Default)]
pub struct SkillSettings {
    pub data_dir: PathBuf,
    pub home: Option<PathBuf>,
    pub extra_dirs: Vec<PathBuf>,
    pub entries: BTreeMap<String, SkillEntrySettings>,
    /// The config file as JSON, for `requires.config` paths (Null when none).
    pub config_value: Value,
}

impl SkillSettings {
    pub fn from_loaded(loaded: &LoadedConfig) -> Self {
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        let config_value = loaded
            .file
            .as_ref()
            .and_then(|f| {
                let meta = std::fs::metadata(f).ok()?;
                (meta.len() <= crate::config::CONFIG_FILE_BYTES_MAX).then_some(())?;
                std::fs::read_to_string(f).ok()
            })
            .and_then(|raw| json5::from_str::<Value>(&raw).ok())
            .unwrap_or(Value::Null);
        Self::from_config(&loaded.config, loaded.data_dir.clone(), home, config_value)
    }

    pub fn from_config(
        config: &Config,
        data_dir: PathBuf,
        home: Option<PathBuf>,
        config_value: Value,
    ) -> Self {
        let expand = |p: &str| match (p.strip_prefix("~/"), &home) {
            (Some(rest), Some(h)) => h.join(rest),
            _ => PathBuf::from(p),
        };
        let skills = &config.skills;
        SkillSettings {
            data_dir,
            extra_dirs: skills.load.extra_dirs.iter().map(|d| expand(d)).collect(),
            entries: skills
                .entries
                .iter()
                .map(|(k, e)| {
                    (
                        k.clone(),
                        SkillEntrySettings {
                            enabled: e.enabled,
                            has_api_key: e.api_key.is_some(),
                            env_names: e.env.keys().cloned().collect(),
                        },
                    )
                })
                .collect(),
            home,
            config_value,
        }
    }

    /// The skills roots for a workspace, highest precedence first.
    pub fn roots(&self, workspace: &Path) -> Vec<(SkillSource, PathBuf)> {
        let mut roots = vec![
            (SkillSource::Workspace, workspace.join("skills")),
            (SkillSource::WorkspaceAgents, workspace.join(".agents").join("skills")),
        ];
        if let Some(home) = &self.home {
            roots.push((SkillSource::PersonalAgents, home.join(".agents").join("skills")));
        }
        roots.push((SkillSource::Managed, self.data_dir.join("skills")));
        roots.extend(self.extra_dirs.iter().map(|d| (SkillSource::Extra, d.clone())));
        roots
    }
}

/// What a skill's requirements lack on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Missing {
    pub bins: Vec<String>,
    pub any_bins: Vec<String>,
    pub env: Vec<String>,
    pub config: Vec<String>,
    pub os: Vec<String>,
    /// Hints about how to satisfy a missing item.
    pub notes: Vec<String>,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.bins.is_empty()
            && self.any_bins.is_empty()
            && self.env.is_empty()
            && self.config.is_empty()
            && self.os.is_empty()
    }

    /// `bins: gh; env: GH_TOKEN`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut add = |label: &str, items: &[String]| {
            if !items.is_empty() {
                parts.push(format!("{label}: {}", items.join(", ")));
            }
        };
        add("bins", &self.bins);
        add("any of bins", &self.any_bins);
        add("env", &self.env);
        add("config", &self.config);
        add("os (runs on)", &self.os);
        parts.join("; ")
    }
}

/// A skill's state on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkillState {
    Ready,
    Gated(Missing),
    /// `skills.entries.<key>.enabled` is false.
    Disabled,
    /// A skill with the same name in a higher-precedence root wins.
    Shadowed {
        by: PathBuf,
    },
    Invalid(String),
}

impl SkillState {
    pub fn as_str(&self) -> &'static str {
        match self {
            SkillState::Ready => "ready",
            SkillState::Gated(_) => "gated",
            SkillState::Disabled => "disabled",
            SkillState::Shadowed { .. } => "shadowed",
            SkillState::Invalid(_) => "invalid",
        }
    }
}

/// One skill folder as found.
#[derive(Clone, Debug)]
pub struct SkillEntry {
    /// The frontmatter name, else the folder name.
    pub name: String,
    pub file: PathBuf,
    pub dir: PathBuf,
    pub source: SkillSource,
    /// `None` for an invalid skill.
    pub frontmatter: Option<Frontmatter>,
    pub state: SkillState,
}

impl SkillEntry {
    /// `metadata.openclaw.skillKey`, else the name: the key of `skills.entries`.
    pub fn key(&self) -> &str {
        self.frontmatter
            .as_ref()
            .and_then(|f| f.manifest.as_ref())
            .and_then(|m| m.skill_key.as_deref())
            .unwrap_or(&self.name)
    }

    /// Listed in the system prompt: ready and not `disable-model-invocation`.
    pub fn in_prompt(&self) -> bool {
        self.state == SkillState::Ready
            && self.frontmatter.as_ref().is_some_and(|f| !f.disable_model_invocation)
    }
}

/// Every skill found for one workspace, in precedence order, plus notes about the scan.
#[derive(Clone, Debug, Default)]
pub struct SkillCatalog {
    pub skills: Vec<SkillEntry>,
    pub notes: Vec<String>,
}

/// Reads one root's skill folders (immediate subdirectories holding `SKILL.md`), sorted.
fn skill_dirs(root: &Path, notes: &mut Vec<String>) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            notes.push(format!("cannot read skills folder {}: {e}", root.display()));
            return Vec::new();
        }
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut seen = 0usize;
    for entry in entries.flatten() {
        seen += 1;
        if seen > SKILL_DIRS_PER_ROOT_MAX {
            notes.push(format!(
                "{} has more than {SKILL_DIRS_PER_ROOT_MAX} entries; the rest were not read",
                root.display()
            ));
            break;
        }
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && path.is_dir() && path.join(SKILL_FILE_NAME).exists() {
            dirs.push(path);
        }
    }
    dirs.sort();
    dirs
}

/// Reads and parses one skill folder (without gating).
fn read_skill(root: &Path, dir: &Path, source: SkillSource) -> SkillEntry {
    let folder_name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let file = dir.join(SKILL_FILE_NAME);
    let invalid = |reason: String| SkillEntry {
        name: folder_name.clone(),
        file: file.clone(),
        dir: dir.to_path_buf(),
        source,
        frontmatter: None,
        state: SkillState::Invalid(reason),
    };
    // A skill whose folder or file is a symlink leading outside its root is refused: a
    // workspace must not be able to point the agent at arbitrary files as "skills".
    let contained = match (root.canonicalize(), file.canonicalize()) {
        (Ok(r), Ok(f)) => f.starts_with(&r),
        _ => false,
    };
    if !contained {
        return invalid(format!("{} resolves outside {}", file.display(), root.display()));
    }
    let bytes = match std::fs::metadata(&file) {
        Ok(m) if m.len() > SKILL_FILE_BYTES_MAX => {
            return invalid(format!(
                "SKILL.md is {} bytes; at most {SKILL_FILE_BYTES_MAX} are read",
                m.len()
            ));
        }
        Ok(_) => match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) => return invalid(format!("cannot read SKILL.md: {e}")),
        },
        Err(e) => return invalid(format!("cannot read SKILL.md: {e}")),
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return invalid("SKILL.md is not UTF-8".into());
    };
    match frontmatter::parse(&text) {
        Ok(mut fm) => {
            let name = match fm.name.clone() {
                Some(n) => {
                    if n != folder_name {
                        fm.warnings.push(format!(
                            "the name {n:?} differs from its folder {folder_name:?}"
                        ));
                    }
                    n
                }
                None => {
                    fm.warnings.push(format!(
                        "the frontmatter has no name; the folder name {folder_name:?} is used"
                    ));
                    folder_name.clone()
                }
            };
            SkillEntry {
                name,
                file,
                dir: dir.to_path_buf(),
                source,
                frontmatter: Some(fm),
                state: SkillState::Ready,
            }
        }
        Err(e) => invalid(describe_error(&e)),
    }
}

fn describe_error(e: &FrontmatterError) -> String {
    e.to_string()
}

/// The platform name OpenClaw uses (`process.platform`).
pub fn platform() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        "windows" => "win32",
        other => other,
    }
}

/// Whether `bin` is an executable file in one of the PATH directories.
pub fn has_bin(bin: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    if bin.is_empty() || bin.contains('/') {
        return false;
    }
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(bin))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn truthy_path(config: &Value, path: &str) -> bool {
    let mut current = config;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        match current.get(part) {
            Some(v) => current = v,
            None => return false,
        }
    }
    match current {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.trim().is_empty(),
        _ => true,
    }
}

/// How gating looks at this machine: the environment and the binaries on PATH. Tests pass
/// their own.
pub struct Probe<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub has_bin: &'a dyn Fn(&str) -> bool,
}

impl Probe<'static> {
    /// The process environment and PATH.
    pub fn system() -> Self {
        Probe { env: &system_env, has_bin: &has_bin }
    }
}

fn system_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Gates one parsed skill: what it needs that this node lacks.
pub fn gate(fm: &Frontmatter, key: &str, settings: &SkillSettings, probe: &Probe<'_>) -> Missing {
    let (env, has_bin) = (probe.env, probe.has_bin);
    let mut missing = Missing::default();
    let Some(m) = &fm.manifest else { return missing };
    if !m.os.is_empty() && !m.os.iter().any(|o| o == platform()) {
        missing.os = m.os.clone();
    }
    if m.always {
        // OpenClaw: `always` skips the bins/env/config checks (not the OS).
        return missing;
    }
    missing.bins = m.requires.bins.iter().filter(|b| !has_bin(b)).cloned().collect();
    if !m.requires.any_bins.is_empty() && !m.requires.any_bins.iter().any(|b| has_bin(b)) {
        missing.any_bins = m.requires.any_bins.clone();
    }
    let entry = settings.entries.get(key);
    for name in &m.requires.env {
        if env(name).is_some_and(|v| !v.is_empty()) {
            continue;
        }
        missing.env.push(name.clone());
        // OpenClaw injects skills.entries.<key>.env / apiKey into the agent's environment;
        // BeamClaw does not yet, so they do not satisfy the gate (safer than a "ready" skill
        // whose script then fails). Say so.
        let configured = entry.is_some_and(|e| {
            e.env_names.contains(name)
                || (e.has_api_key && m.primary_env.as_deref() == Some(name.as_str()))
        });
        if configured {
            missing.notes.push(format!(
                "{name} is set in skills.entries.{key}, but BeamClaw does not pass skill env to tools yet: export {name} in the node's environment"
            ));
        }
    }
    missing.config = m
        .requires
        .config
        .iter()
        .filter(|p| !truthy_path(&settings.config_value, p))
        .cloned()
        .collect();
    missing
}

/// Applies `skills.entries.<key>.enabled` and the gates to a parsed skill.
fn settle(entry: &mut SkillEntry, settings: &SkillSettings, probe: &Probe<'_>) {
    let Some(fm) = &entry.frontmatter else { return };
    let key = entry.key().to_string();
    if settings.entries.get(&key).and_then(|e| e.enabled) == Some(false) {
        entry.state = SkillState::Disabled;
        return;
    }
    let missing = gate(fm, &key, settings, probe);
    entry.state = if missing.is_empty() { SkillState::Ready } else { SkillState::Gated(missing) };
}

/// Loads every skill of these roots (highest precedence first).
pub fn load_roots(
    roots: &[(SkillSource, PathBuf)],
    settings: &SkillSettings,
    probe: &Probe<'_>,
) -> SkillCatalog {
    let mut catalog = SkillCatalog::default();
    let mut winners: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut seen_roots: HashSet<PathBuf> = HashSet::new();
    'roots: for (source, root) in roots {
        let canonical = root.canonicalize().unwrap_or_else(|_| root.clone());
        if !seen_roots.insert(canonical) {
            continue;
        }
        for dir in skill_dirs(root, &mut catalog.notes) {
            if catalog.skills.len() >= SKILLS_MAX {
                catalog.notes.push(format!(
                    "more than {SKILLS_MAX} skills were found; the rest were not read"
                ));
                break 'roots;
            }
            let mut entry = read_skill(root, &dir, *source);
            if let SkillState::Invalid(reason) = &entry.state {
                tracing::warn!(skill = %entry.file.display(), %reason, "skill is invalid");
            } else if let Some(by) = winners.get(&entry.name) {
                entry.state = SkillState::Shadowed { by: by.clone() };
            } else {
                winners.insert(entry.name.clone(), entry.file.clone());
                settle(&mut entry, settings, probe);
            }
            catalog.skills.push(entry);
        }
    }
    catalog
}

/// Loads the skills of `workspace` with the config's settings and the process environment.
pub fn load(workspace: &Path, settings: &SkillSettings) -> SkillCatalog {
    load_roots(&settings.roots(workspace), settings, &Probe::system())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl SkillCatalog {
    /// The system prompt's skills section: name, description and path of each ready skill.
    /// Empty when there is none.
    pub fn prompt_section(&self) -> String {
        let listed: Vec<&SkillEntry> = self.skills.iter().filter(|s| s.in_prompt()).collect();
        if listed.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "\n## Skills\nThese skills hold instructions for specific tasks. When a task matches a skill's description, read its SKILL.md with the read tool first (only the one that matches), then follow it. Resolve relative paths in a skill against its folder.\n<available_skills>\n",
        );
        let mut shown = 0usize;
        for s in &listed {
            let description =
                s.frontmatter.as_ref().map(|f| f.description.as_str()).unwrap_or_default();
            let item = format!(
                "  <skill>\n    <name>{}</name>\n    <description>{}</description>\n    <location>{}</location>\n  </skill>\n",
                xml_escape(&s.name),
                xml_escape(description),
                xml_escape(&s.file.display().to_string())
            );
            if shown >= SKILLS_IN_PROMPT_MAX || out.len() + item.len() > SKILLS_PROMPT_BYTES_MAX {
                break;
            }
            out.push_str(&item);
            shown += 1;
        }
        out.push_str("</available_skills>\n");
        if shown < listed.len() {
            out.push_str(&format!(
                "({} more ready skills are not listed: the list is capped at {SKILLS_IN_PROMPT_MAX} skills and {SKILLS_PROMPT_BYTES_MAX} bytes)\n",
                listed.len() - shown
            ));
        }
        out
    }

    /// One skill as OpenClaw's `skills.status` reports it, plus BeamClaw's `status`, `reason`
    /// and `warnings`.
    fn status_json(entry: &SkillEntry) -> Value {
        let fm = entry.frontmatter.as_ref();
        let manifest = fm.and_then(|f| f.manifest.as_ref());
        let requires = manifest.map(|m| &m.requires);
        let list = |f: fn(&frontmatter::Requires) -> &Vec<String>| -> Vec<String> {
            requires.map(|r| f(r).clone()).unwrap_or_default()
        };
        let missing = match &entry.state {
            SkillState::Gated(m) => m.clone(),
            _ => Missing::default(),
        };
        let reason = match &entry.state {
            SkillState::Invalid(r) => Some(r.clone()),
            SkillState::Gated(m) => {
                let mut r = format!("missing {}", m.describe());
                for n in &m.notes {
                    r.push_str(&format!(" ({n})"));
                }
                Some(r)
            }
            SkillState::Shadowed { by } => Some(format!("shadowed by {}", by.display())),
            SkillState::Disabled => {
                Some(format!("skills.entries.{}.enabled is false", entry.key()))
            }
            SkillState::Ready => None,
        };
        json!({
            "name": entry.name,
            "description": fm.map(|f| f.description.clone()).unwrap_or_default(),
            "source": entry.source.as_str(),
            "filePath": entry.file.display().to_string(),
            "baseDir": entry.dir.display().to_string(),
            "skillKey": entry.key(),
            "bundled": false,
            "primaryEnv": manifest.and_then(|m| m.primary_env.clone()),
            "emoji": manifest.and_then(|m| m.emoji.clone()),
            "homepage": fm.and_then(|f| f.homepage.clone()).or_else(|| manifest.and_then(|m| m.homepage.clone())),
            "always": manifest.is_some_and(|m| m.always),
            "disabled": entry.state == SkillState::Disabled,
            "blockedByAllowlist": false,
            "eligible": entry.state == SkillState::Ready,
            "userInvocable": fm.is_some_and(|f| f.user_invocable),
            "modelInvocable": fm.is_some_and(|f| !f.disable_model_invocation),
            "requirements": {
                "bins": list(|r| &r.bins),
                "anyBins": list(|r| &r.any_bins),
                "env": list(|r| &r.env),
                "config": list(|r| &r.config),
                "os": manifest.map(|m| m.os.clone()).unwrap_or_default(),
            },
            "missing": {
                "bins": missing.bins,
                "anyBins": missing.any_bins,
                "env": missing.env,
                "config": missing.config,
                "os": missing.os,
            },
            "configChecks": requires.map(|r| r.config.iter().map(|p| json!({
                "path": p,
                "satisfied": entry.state == SkillState::Ready || !missing_config(&entry.state, p),
            })).collect::<Vec<_>>()).unwrap_or_default(),
            "install": manifest.map(|m| m.install.iter().map(|i| json!({
                "id": i.id, "kind": i.kind, "label": i.label, "bins": i.bins,
            })).collect::<Vec<_>>()).unwrap_or_default(),
            "legacyManifestKey": manifest.is_some_and(|m| m.legacy_key),
            "status": entry.state.as_str(),
            "reason": reason,
            "warnings": fm.map(|f| f.warnings.clone()).unwrap_or_default(),
        })
    }

    /// The `skills.status` report.
    pub fn status_report(&self, workspace: &Path, settings: &SkillSettings) -> Value {
        json!({
            "workspaceDir": workspace.display().to_string(),
            "managedSkillsDir": settings.data_dir.join("skills").display().to_string(),
            "skills": self.skills.iter().map(Self::status_json).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }

    /// Counts of (ready, total).
    pub fn ready_count(&self) -> (usize, usize) {
        (self.skills.iter().filter(|s| s.state == SkillState::Ready).count(), self.skills.len())
    }
}

fn missing_config(state: &SkillState, path: &str) -> bool {
    matches!(state, SkillState::Gated(m) if m.config.iter().any(|p| p == path))
}

/// A human table of a catalog (`beamclaw skills list`).
pub fn render_table(catalog: &SkillCatalog) -> String {
    let (ready, total) = catalog.ready_count();
    let mut out = format!("Skills ({ready}/{total} ready)\n");
    if total == 0 {
        out.push_str("  no skills found\n");
    }
    for s in &catalog.skills {
        let detail = match &s.state {
            SkillState::Ready => s.file.display().to_string(),
            SkillState::Gated(m) => {
                let mut d = format!("missing {}", m.describe());
                for n in &m.notes {
                    d.push_str(&format!(" ({n})"));
                }
                d
            }
            SkillState::Disabled => format!("disabled by skills.entries.{}.enabled", s.key()),
            SkillState::Shadowed { by } => format!("shadowed by {}", by.display()),
            SkillState::Invalid(r) => format!("{r} ({})", s.file.display()),
        };
        out.push_str(&format!(
            "{:<9} {:<28} {:<17} {}\n",
            s.state.as_str(),
            s.name,
            s.source.as_str(),
            detail
        ));
        if let Some(fm) = &s.frontmatter {
            for w in &fm.warnings {
                out.push_str(&format!("{:<9} {:<28} {:<17} warning: {w}\n", "", "", ""));
            }
        }
    }
    for n in &catalog.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

/// The `skills.status` report of one agent: its workspace's skills under the config's
/// settings, plus `agentId`. `Err` names what was not found (an unknown agent).
pub fn status_for_agent(loaded: &LoadedConfig, agent_id: &str) -> Result<Value, String> {
    let agent = loaded.agent(agent_id).ok_or_else(|| format!("agent {agent_id:?}"))?;
    let settings = SkillSettings::from_loaded(loaded);
    let catalog = load(&agent.workspace, &settings);
    let (ready, total) = catalog.ready_count();
    tracing::debug!(agent = agent_id, ready, total, "skills.status");
    let mut report = catalog.status_report(&agent.workspace, &settings);
    if let Some(o) = report.as_object_mut() {
        o.insert("agentId".into(), Value::String(agent_id.to_string()));
    }
    Ok(report)
}

/// `beamclaw skills list`: the skills of `agent` (default: the default agent) on this machine,
/// or only those of `dir`; a table, or the `skills.status` JSON.
pub fn list_command(
    loaded: &LoadedConfig,
    dir: Option<&Path>,
    agent: Option<&str>,
    as_json: bool,
) -> Result<String, String> {
    let settings = SkillSettings::from_loaded(loaded);
    let (catalog, workspace) = match dir {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(format!("{} is not a directory", dir.display()));
            }
            let roots = [(SkillSource::Dir, dir.to_path_buf())];
            (load_roots(&roots, &settings, &Probe::system()), dir.to_path_buf())
        }
        None => {
            let id = agent.map(str::to_string).unwrap_or_else(|| loaded.default_agent_id());
            let resolved = loaded.agent(&id).ok_or_else(|| {
                format!("there is no agent {id:?} (agents: {})", loaded.agent_ids().join(", "))
            })?;
            (load(&resolved.workspace, &settings), resolved.workspace)
        }
    };
    if as_json {
        let report = catalog.status_report(&workspace, &settings);
        return serde_json::to_string_pretty(&report).map_err(|e| e.to_string());
    }
    let mut out = String::new();
    if dir.is_none() {
        out.push_str("Searched, highest precedence first:\n");
        for (source, root) in settings.roots(&workspace) {
            out.push_str(&format!("  {:<17} {}\n", source.as_str(), root.display()));
        }
    }
    out.push_str(&render_table(&catalog));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/skills")
    }

    fn settings(config_value: Value) -> SkillSettings {
        SkillSettings { config_value, ..SkillSettings::default() }
    }

    /// A machine with `curl` and `claude` on PATH and nothing else; `OPENAI_API_KEY` set.
    fn probe() -> Probe<'static> {
        Probe {
            env: &|k| (k == "OPENAI_API_KEY").then(|| "sk-test".to_string()),
            has_bin: &|b| b == "curl" || b == "claude",
        }
    }

    fn by_name<'a>(c: &'a SkillCatalog, name: &str) -> &'a SkillEntry {
        c.skills.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no skill {name}"))
    }

    fn write_skill(root: &Path, folder: &str, text: &str) {
        fs::create_dir_all(root.join(folder)).unwrap();
        fs::write(root.join(folder).join(SKILL_FILE_NAME), text).unwrap();
    }

    #[test]
    fn openclaw_published_skills_are_gated_on_bins_env_os_and_config() {
        let roots = [(SkillSource::Dir, fixtures())];
        let config = json!({"channels": {"telegram": {"botToken": "x"}}});
        let c = load_roots(&roots, &settings(config), &probe());
        assert_eq!(c.skills.len(), 11, "{c:#?}");
        let state = |n: &str| by_name(&c, n).state.clone();
        assert_eq!(state("weather"), SkillState::Ready);
        assert_eq!(state("openai-whisper-api"), SkillState::Ready);
        assert_eq!(state("coding-agent"), SkillState::Ready, "one of anyBins is enough");
        let SkillState::Gated(m) = state("github") else { panic!("github: {:?}", state("github")) };
        assert_eq!(m.bins, vec!["gh"]);
        assert_eq!(m.describe(), "bins: gh");
        let SkillState::Gated(m) = state("bird") else { panic!() };
        assert_eq!(m.bins, vec!["bird"], "the legacy clawdbot key is read");
        assert!(
            by_name(&c, "bird").frontmatter.as_ref().unwrap().manifest.as_ref().unwrap().legacy_key
        );
        let SkillState::Gated(m) = state("discord") else { panic!() };
        assert_eq!(m.config, vec!["channels.discord"]);
        let SkillState::Gated(m) = state("notion-helper") else { panic!() };
        assert_eq!(m.env, vec!["NOTION_API_KEY"]);
        let SkillState::Gated(m) = state("apple-notes") else { panic!() };
        if platform() != "darwin" {
            assert_eq!(m.os, vec!["darwin"]);
        }
        assert_eq!(m.bins, vec!["memo"]);
        // The github install options are read from the trailing-comma JSON5.
        let gh = by_name(&c, "github").frontmatter.as_ref().unwrap().manifest.clone().unwrap();
        assert_eq!(gh.install.len(), 2);
        assert_eq!(gh.install[1].label, "Install GitHub CLI (apt)");
        // notion-helper's other frontmatter keys.
        let notion = by_name(&c, "notion-helper").frontmatter.clone().unwrap();
        assert!(!notion.user_invocable && notion.disable_model_invocation);
        assert_eq!(notion.command_dispatch.as_deref(), Some("tool"));
        assert_eq!(notion.command_tool.as_deref(), Some("exec"));
        // The unquoted `: ` in discord's description is read as OpenClaw reads it, with a warning.
        let discord = by_name(&c, "discord").frontmatter.clone().unwrap();
        assert!(discord.description.contains("discord tool: send messages"));
        assert_eq!(discord.warnings.len(), 1);
    }

    #[test]
    fn invalid_skills_are_reported_with_the_reason_and_the_others_still_load() {
        let c = load_roots(&[(SkillSource::Dir, fixtures())], &settings(Value::Null), &probe());
        let reason = |n: &str| match &by_name(&c, n).state {
            SkillState::Invalid(r) => r.clone(),
            other => panic!("{n} is {other:?}"),
        };
        assert!(reason("broken-metadata").contains("`metadata` is neither JSON5 nor YAML"));
        assert!(reason("no-frontmatter").contains("does not start with a `---`"));
        assert!(reason("no-description").contains("no description"));
        let (ready, total) = c.ready_count();
        assert_eq!((ready, total), (3, 11));

        // Too big, not UTF-8, and a symlink out of the root: invalid too, never a panic.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("skills");
        let big = format!("---\nname: big\ndescription: d\n---\n{}", "x".repeat(300_000));
        write_skill(&root, "big", &big);
        fs::create_dir_all(root.join("binary")).unwrap();
        fs::write(root.join("binary").join(SKILL_FILE_NAME), [0xff, 0xfe, 0x00]).unwrap();
        write_skill(dir.path(), "outside", "---\nname: outside\ndescription: d\n---\n");
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("escape")).unwrap();
        write_skill(&root, "fine", "---\nname: fine\ndescription: works\n---\n");
        let c = load_roots(&[(SkillSource::Dir, root)], &settings(Value::Null), &probe());
        let state = |n: &str| by_name(&c, n).state.as_str();
        assert_eq!(
            (state("big"), state("binary"), state("escape"), state("fine")),
            ("invalid", "invalid", "invalid", "ready")
        );
        assert!(
            matches!(&by_name(&c, "big").state, SkillState::Invalid(r) if r.contains("at most 256000"))
        );
        assert!(
            matches!(&by_name(&c, "escape").state, SkillState::Invalid(r) if r.contains("resolves outside"))
        );
    }

    #[test]
    fn precedence_workspace_then_agents_then_personal_then_managed_then_extra() {
        let dir = tempfile::tempdir().unwrap();
        let (ws, home, data, extra) = (
            dir.path().join("ws"),
            dir.path().join("home"),
            dir.path().join("data"),
            dir.path().join("extra"),
        );
        let skill = |d: &str| format!("---\nname: notes\ndescription: from {d}\n---\n");
        write_skill(&extra.clone(), "notes", &skill("extra"));
        write_skill(&data.join("skills"), "notes", &skill("managed"));
        write_skill(&home.join(".agents/skills"), "notes", &skill("personal"));
        write_skill(&ws.join(".agents/skills"), "notes", &skill("workspace-agents"));
        write_skill(&ws.join("skills"), "notes", &skill("workspace"));
        write_skill(&extra, "only-extra", "---\nname: only-extra\ndescription: e\n---\n");
        let settings = SkillSettings {
            data_dir: data,
            home: Some(home),
            extra_dirs: vec![extra],
            ..SkillSettings::default()
        };
        let sources: Vec<SkillSource> = settings.roots(&ws).iter().map(|(s, _)| *s).collect();
        assert_eq!(
            sources,
            [
                SkillSource::Workspace,
                SkillSource::WorkspaceAgents,
                SkillSource::PersonalAgents,
                SkillSource::Managed,
                SkillSource::Extra
            ]
        );
        let description = |c: &SkillCatalog| {
            let winner =
                c.skills.iter().find(|s| s.name == "notes" && s.state == SkillState::Ready);
            winner.and_then(|s| s.frontmatter.as_ref()).map(|f| f.description.clone())
        };
        let order = ["workspace", "workspace-agents", "personal", "managed", "extra"];
        let folders = [
            ws.join("skills"),
            ws.join(".agents/skills"),
            settings.home.clone().unwrap().join(".agents/skills"),
            settings.data_dir.join("skills"),
            settings.extra_dirs[0].clone(),
        ];
        for (i, expected) in order.iter().enumerate() {
            let c = load_roots(&settings.roots(&ws), &settings, &probe());
            assert_eq!(description(&c).as_deref(), Some(format!("from {expected}").as_str()));
            let shadowed =
                c.skills.iter().filter(|s| matches!(s.state, SkillState::Shadowed { .. })).count();
            assert_eq!(shadowed, order.len() - 1 - i);
            assert_eq!(by_name(&c, "only-extra").state, SkillState::Ready);
            // Remove the winner: the next root wins.
            fs::remove_dir_all(folders[i].join("notes")).unwrap();
        }
    }

    #[test]
    fn the_prompt_lists_ready_model_invocable_skills_by_name_description_and_path_only() {
        let c = load_roots(&[(SkillSource::Dir, fixtures())], &settings(Value::Null), &probe());
        let prompt = c.prompt_section();
        for ready in ["weather", "openai-whisper-api", "coding-agent"] {
            assert!(prompt.contains(&format!("<name>{ready}</name>")), "{prompt}");
            let path = fixtures().join(ready).join(SKILL_FILE_NAME);
            assert!(prompt.contains(&format!("<location>{}</location>", path.display())));
        }
        for left_out in ["github", "notion-helper", "broken-metadata", "apple-notes"] {
            assert!(!prompt.contains(&format!("<name>{left_out}</name>")), "{prompt}");
        }
        // Only name, description and location: not the body, the metadata or the emoji.
        assert!(!prompt.contains("wttr.in/London") && !prompt.contains("🌤️"), "{prompt}");
        assert!(prompt.contains("&lt;") || !prompt.contains("<script"));
        assert_eq!(SkillCatalog::default().prompt_section(), "");
    }

    #[test]
    fn disabled_entries_and_the_status_report() {
        let mut s = settings(Value::Null);
        s.entries.insert(
            "weather".into(),
            SkillEntrySettings { enabled: Some(false), ..Default::default() },
        );
        s.entries.insert(
            "github".into(),
            SkillEntrySettings { env_names: vec!["GH_TOKEN".into()], ..Default::default() },
        );
        let c = load_roots(&[(SkillSource::Dir, fixtures())], &s, &probe());
        assert_eq!(by_name(&c, "weather").state, SkillState::Disabled);
        let report = c.status_report(&fixtures(), &s);
        let skills = report["skills"].as_array().unwrap();
        let row = |n: &str| skills.iter().find(|r| r["name"] == n).unwrap().clone();
        let gh = row("github");
        assert_eq!(gh["status"], "gated");
        assert_eq!(gh["missing"]["bins"], json!(["gh"]));
        assert_eq!(gh["requirements"]["bins"], json!(["gh"]));
        assert_eq!(gh["eligible"], false);
        assert_eq!(gh["emoji"], "🐙");
        assert_eq!(gh["reason"], "missing bins: gh");
        let broken = row("broken-metadata");
        assert_eq!(broken["status"], "invalid");
        assert!(broken["reason"].as_str().unwrap().contains("JSON5"));
        assert_eq!(row("weather")["status"], "disabled");
        assert_eq!(row("openai-whisper-api")["primaryEnv"], "OPENAI_API_KEY");
        assert_eq!(row("openai-whisper-api")["status"], "ready");
        let table = render_table(&c);
        assert!(table.starts_with("Skills (2/11 ready)"), "{table}");
        assert!(table.contains("missing bins: gh"), "{table}");
        assert!(table.contains("invalid"), "{table}");
    }

    #[test]
    fn the_number_of_skills_read_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..(SKILLS_MAX + 3) {
            let name = format!("s{i:04}");
            write_skill(dir.path(), &name, &format!("---\nname: {name}\ndescription: d\n---\n"));
        }
        let c = load_roots(
            &[(SkillSource::Dir, dir.path().to_path_buf())],
            &settings(Value::Null),
            &probe(),
        );
        assert_eq!(c.skills.len(), SKILLS_MAX);
        assert!(c.notes.iter().any(|n| n.contains("the rest were not read")), "{:?}", c.notes);
    }
}
