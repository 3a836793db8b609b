//! Configuration: finding, reading and checking `beamclaw.json5`, and resolving what it means.
//!
//! Owns: the data directory rule (`--data-dir`, else `$BEAMCLAW_HOME`, else `~/.beamclaw`), the
//! JSON5 file (`<data dir>/beamclaw.json5` or `--config FILE`), `${ENV}` substitution, the strict
//! schema check (every unknown key is named with the nearest valid one), semantic checks (model
//! references, agent ids, auth), and the resolved views the runtime uses (`ResolvedAgent`,
//! `ModelChain`, `QueueSettings`). Secrets stay inside [`Secret`].
//! Must not know: providers' wire formats, sessions, the mesh.

mod model;
pub(crate) mod schema;
mod secret;
pub mod tools;

pub use model::{
    AgentEntry, AgentSettings, ApiKind, AuthProfileConfig, Config, Identity, ModelEntry,
    ModelSetting, ProviderConfig, QueueDrop, QueueMode, SkillEntryConfig, SkillsConfig,
    SkillsLoadConfig, SubagentsConfig, ThinkingLevel,
};
pub use secret::Secret;

use schema::SchemaIssue;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The config file's name inside the data directory.
pub const CONFIG_FILE_NAME: &str = "beamclaw.json5";
/// Largest config file read, in bytes.
pub const CONFIG_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// The agent that exists when none is configured (OpenClaw's `main`).
pub const DEFAULT_AGENT_ID: &str = "main";
/// Longest agent id (OpenClaw normalizes ids to at most 64 characters).
pub const AGENT_ID_CHARS_MAX: usize = 64;
/// Turn timeout when `timeoutSeconds` is not set (OpenClaw's default).
pub const TURN_TIMEOUT_SECONDS_DEFAULT: u64 = 600;
/// Concurrent turns per agent when `maxConcurrent` is not set.
pub const MAX_CONCURRENT_DEFAULT: u32 = 4;
/// `messages.queue` defaults, as OpenClaw has them.
pub const QUEUE_DEBOUNCE_MS_DEFAULT: u64 = 1000;
pub const QUEUE_CAP_MESSAGES_DEFAULT: u32 = 20;
/// The providers that exist without configuration: `anthropic` and `openai` (given a key) and
/// the offline provider.
pub const OFFLINE_PROVIDER_ID: &str = "beamclaw";
pub const OFFLINE_MODEL_ID: &str = "offline";
pub const ANTHROPIC_PROVIDER_ID: &str = "anthropic";
pub const OPENAI_PROVIDER_ID: &str = "openai";
pub const ANTHROPIC_BASE_URL_DEFAULT: &str = "https://api.anthropic.com";
pub const OPENAI_BASE_URL_DEFAULT: &str = "https://api.openai.com/v1";
pub const ANTHROPIC_API_KEY_ENV: &str = "ANTHROPIC_API_KEY";
pub const OPENAI_API_KEY_ENV: &str = "OPENAI_API_KEY";
/// The model used when only an API key is given in the environment.
pub const ANTHROPIC_MODEL_DEFAULT: &str = "claude-sonnet-4-5";
pub const OPENAI_MODEL_DEFAULT: &str = "gpt-4.1-mini";

/// One problem in a config file. `message` names the key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<SchemaIssue> for ConfigIssue {
    fn from(issue: SchemaIssue) -> Self {
        ConfigIssue { path: issue.path, message: issue.message }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no home directory to put ~/.beamclaw in: set BEAMCLAW_HOME or pass --data-dir")]
    NoHome,
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is {bytes} bytes; at most {max} are read", max = CONFIG_FILE_BYTES_MAX)]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("{origin}: not valid JSON5: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: {count} problem(s):\n{list}", count = issues.len(), list = issue_list(issues))]
    Invalid { origin: String, issues: Vec<ConfigIssue> },
}

fn issue_list(issues: &[ConfigIssue]) -> String {
    issues.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n")
}

/// Where the config comes from.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    pub data_dir: PathBuf,
    pub file: PathBuf,
    /// True when the file was named with `--config` (then it must exist).
    pub explicit: bool,
}

impl ConfigSource {
    /// `--data-dir`, else `$BEAMCLAW_HOME`, else `~/.beamclaw`; `--config`, else
    /// `<data dir>/beamclaw.json5`.
    pub fn locate(data_dir: Option<&Path>, config: Option<&Path>) -> Result<Self, ConfigError> {
        let data_dir = match data_dir {
            Some(dir) => dir.to_path_buf(),
            None => match std::env::var_os("BEAMCLAW_HOME") {
                Some(dir) if !dir.is_empty() => PathBuf::from(dir),
                _ => home_dir().ok_or(ConfigError::NoHome)?.join(".beamclaw"),
            },
        };
        let (file, explicit) = match config {
            Some(file) => (file.to_path_buf(), true),
            None => (data_dir.join(CONFIG_FILE_NAME), false),
        };
        Ok(ConfigSource { data_dir, file, explicit })
    }
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// A checked config with the place it came from and the environment it was resolved against.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub config: Config,
    pub data_dir: PathBuf,
    /// The file read, or `None` when there was none and defaults apply.
    pub file: Option<PathBuf>,
    /// `ANTHROPIC_API_KEY` / `OPENAI_API_KEY` as found at load time.
    pub env_keys: EnvKeys,
}

/// API keys found in the environment.
#[derive(Clone, Debug, Default)]
pub struct EnvKeys {
    pub anthropic: Option<Secret>,
    pub openai: Option<Secret>,
}

impl EnvKeys {
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| env(name).filter(|v| !v.is_empty()).map(Secret::new);
        EnvKeys { anthropic: get(ANTHROPIC_API_KEY_ENV), openai: get(OPENAI_API_KEY_ENV) }
    }
}

/// Reads the process environment (the `env` argument of the loaders).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Loads and checks the config named by `source`.
pub fn load(source: &ConfigSource) -> Result<LoadedConfig, ConfigError> {
    load_with_env(source, &process_env)
}

pub fn load_with_env(
    source: &ConfigSource,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigError> {
    let read = |path: &Path| -> Result<String, ConfigError> {
        let err = |source| ConfigError::Read { path: path.to_path_buf(), source };
        let bytes = std::fs::metadata(path).map_err(err)?.len();
        if bytes > CONFIG_FILE_BYTES_MAX {
            return Err(ConfigError::TooLarge { path: path.to_path_buf(), bytes });
        }
        std::fs::read_to_string(path).map_err(err)
    };
    let (config, file) = if source.explicit || source.file.exists() {
        let text = read(&source.file)?;
        let origin = source.file.display().to_string();
        (parse_str(&text, &origin, env)?, Some(source.file.clone()))
    } else {
        (Config::default(), None)
    };
    Ok(LoadedConfig {
        config,
        data_dir: source.data_dir.clone(),
        file,
        env_keys: EnvKeys::from_env(env),
    })
}

/// Parses config text: JSON5, `${ENV}` substitution, schema, typed structs, semantic checks.
/// `origin` names the text in errors (a file path).
pub fn parse_str(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut value: Value = json5::from_str(text)
        .map_err(|e| ConfigError::Parse { origin: origin.to_string(), message: e.to_string() })?;
    let invalid = |issues| ConfigError::Invalid { origin: origin.to_string(), issues };
    let mut issues = Vec::new();
    substitute_env(&mut value, "", env, &mut issues);
    let mut schema_issues = Vec::new();
    schema::check(&value, &schema::root(), "", &mut schema_issues);
    issues.extend(schema_issues.into_iter().map(ConfigIssue::from));
    if !issues.is_empty() {
        issues.sort_by(|a, b| a.path.cmp(&b.path));
        return Err(invalid(issues));
    }
    let config: Config = serde_json::from_value(value)
        .map_err(|e| invalid(vec![ConfigIssue { path: String::new(), message: e.to_string() }]))?;
    let issues = semantic_issues(&config);
    if !issues.is_empty() {
        return Err(invalid(issues));
    }
    Ok(config)
}

/// Replaces `${NAME}` in every string with the environment variable (`$${` is a literal `${`).
fn substitute_env(
    value: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
) {
    match value {
        Value::String(s) if s.contains("${") => match expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => issues.push(ConfigIssue {
                path: path.to_string(),
                message: format!("{path}: {message}"),
            }),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_env(item, &format!("{path}[{i}]"), env, issues);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                substitute_env(item, &schema::join(path, key), env, issues);
            }
        }
        _ => {}
    }
}

fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
            let name = &after[..end];
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!(
                    "${{{name}}} is not an environment variable name (A-Z, 0-9 and _ only)"
                ));
            }
            let found =
                env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&found);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A `provider/model` reference. The model part may itself contain `/` (OpenRouter ids).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRef {
    pub provider: String,
    pub model: String,
}

impl ModelRef {
    pub fn parse(reference: &str) -> Option<Self> {
        let (provider, model) = reference.split_once('/')?;
        if provider.is_empty() || model.is_empty() {
            return None;
        }
        Some(ModelRef { provider: provider.to_string(), model: model.to_string() })
    }

    pub fn offline() -> Self {
        ModelRef { provider: OFFLINE_PROVIDER_ID.into(), model: OFFLINE_MODEL_ID.into() }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

/// The model to use and the ones to fall back to, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelChain {
    pub primary: ModelRef,
    pub fallbacks: Vec<ModelRef>,
}

/// One agent's settings with the defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedAgent {
    pub id: String,
    pub name: Option<String>,
    pub model: ModelChain,
    pub workspace: PathBuf,
    pub timeout: Duration,
    pub max_concurrent: u32,
    pub identity: Identity,
    pub thinking: ThinkingLevel,
}

/// `messages.queue` with defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSettings {
    pub mode: QueueMode,
    pub debounce: Duration,
    pub cap: usize,
    pub drop: QueueDrop,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            mode: QueueMode::default(),
            debounce: Duration::from_millis(QUEUE_DEBOUNCE_MS_DEFAULT),
            cap: QUEUE_CAP_MESSAGES_DEFAULT as usize,
            drop: QueueDrop::default(),
        }
    }
}

impl LoadedConfig {
    /// Defaults only: no file, the environment's keys.
    pub fn defaults(data_dir: PathBuf, env_keys: EnvKeys) -> Self {
        LoadedConfig { config: Config::default(), data_dir, file: None, env_keys }
    }

    /// Every configured agent id (from `entries` and `list`), or `main` when none is.
    pub fn agent_ids(&self) -> Vec<String> {
        let agents = &self.config.agents;
        let mut ids: Vec<String> = agents.entries.keys().cloned().collect();
        ids.extend(agents.list.iter().filter_map(|a| a.id.clone()));
        if ids.is_empty() {
            ids.push(DEFAULT_AGENT_ID.to_string());
        }
        ids
    }

    /// The agent marked `default: true`, else the first one, else `main`.
    pub fn default_agent_id(&self) -> String {
        let agents = &self.config.agents;
        let marked = agents.entries.iter().find(|(_, a)| a.default).map(|(id, _)| id.clone());
        let listed = agents.list.iter().find(|a| a.default).and_then(|a| a.id.clone());
        marked.or(listed).unwrap_or_else(|| {
            self.agent_ids().into_iter().next().unwrap_or_else(|| DEFAULT_AGENT_ID.to_string())
        })
    }

    fn entry(&self, id: &str) -> Option<&AgentEntry> {
        let agents = &self.config.agents;
        agents.entries.get(id).or_else(|| agents.list.iter().find(|a| a.id.as_deref() == Some(id)))
    }

    /// The model chain used when an agent names none: `agents.defaults.model`, else a key in the
    /// environment, else the first configured provider's first model, else the offline provider.
    pub fn default_model_chain(&self) -> ModelChain {
        if let Some(chain) = self.config.agents.defaults.model.as_ref().and_then(chain_of) {
            return chain;
        }
        let single = |provider: &str, model: &str| ModelChain {
            primary: ModelRef { provider: provider.into(), model: model.into() },
            fallbacks: Vec::new(),
        };
        let providers = &self.config.models.providers;
        if let Some((id, first)) =
            providers.iter().find_map(|(id, p)| Some((id, p.models.first()?)))
        {
            return single(id, &first.id);
        }
        if self.env_keys.anthropic.is_some() || providers.contains_key(ANTHROPIC_PROVIDER_ID) {
            return single(ANTHROPIC_PROVIDER_ID, ANTHROPIC_MODEL_DEFAULT);
        }
        if self.env_keys.openai.is_some() || providers.contains_key(OPENAI_PROVIDER_ID) {
            return single(OPENAI_PROVIDER_ID, OPENAI_MODEL_DEFAULT);
        }
        single(OFFLINE_PROVIDER_ID, OFFLINE_MODEL_ID)
    }

    /// The agent `id` with `agents.defaults` applied; `None` when no such agent exists (`main`
    /// always exists when no agent is configured).
    pub fn agent(&self, id: &str) -> Option<ResolvedAgent> {
        let entry = self.entry(id);
        if entry.is_none() && !(id == DEFAULT_AGENT_ID && self.agent_ids() == [DEFAULT_AGENT_ID]) {
            return None;
        }
        let defaults = &self.config.agents.defaults;
        let model = entry
            .and_then(|e| e.model.as_ref())
            .and_then(chain_of)
            .unwrap_or_else(|| self.default_model_chain());
        let workspace = entry
            .and_then(|e| e.workspace.clone())
            .or_else(|| {
                defaults
                    .workspace
                    .clone()
                    .map(|w| if id == self.default_agent_id() { w } else { format!("{w}-{id}") })
            })
            .map(|w| expand_home(&w))
            .unwrap_or_else(|| {
                if id == self.default_agent_id() {
                    self.data_dir.join("workspace")
                } else {
                    self.data_dir.join(format!("workspace-{id}"))
                }
            });
        let timeout_seconds = entry
            .and_then(|e| e.timeout_seconds)
            .or(defaults.timeout_seconds)
            .unwrap_or(TURN_TIMEOUT_SECONDS_DEFAULT);
        Some(ResolvedAgent {
            id: id.to_string(),
            name: entry.and_then(|e| e.name.clone()),
            model,
            workspace,
            timeout: Duration::from_secs(timeout_seconds),
            max_concurrent: entry
                .and_then(|e| e.max_concurrent)
                .or(defaults.max_concurrent)
                .unwrap_or(MAX_CONCURRENT_DEFAULT),
            identity: entry
                .and_then(|e| e.identity.clone())
                .or_else(|| defaults.identity.clone())
                .unwrap_or_default(),
            thinking: entry
                .and_then(|e| e.thinking_default)
                .or(defaults.thinking_default)
                .unwrap_or_default(),
        })
    }

    pub fn queue_settings(&self) -> QueueSettings {
        let q = &self.config.messages.queue;
        let d = QueueSettings::default();
        QueueSettings {
            mode: q.mode.unwrap_or(d.mode),
            debounce: q.debounce_ms.map(Duration::from_millis).unwrap_or(d.debounce),
            cap: q.cap.map(|c| c as usize).unwrap_or(d.cap),
            drop: q.drop.unwrap_or(d.drop),
        }
    }
}

fn chain_of(setting: &ModelSetting) -> Option<ModelChain> {
    match setting {
        ModelSetting::Ref(r) => {
            Some(ModelChain { primary: ModelRef::parse(r)?, fallbacks: Vec::new() })
        }
        ModelSetting::Chain(c) => Some(ModelChain {
            primary: ModelRef::parse(c.primary.as_deref()?)?,
            fallbacks: c.fallbacks.iter().filter_map(|f| ModelRef::parse(f)).collect(),
        }),
    }
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), home_dir()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

/// Checks that the parts of a well-typed config fit together.
fn semantic_issues(config: &Config) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let mut issue = |path: String, message: String| {
        let message = format!("{path}: {message}");
        issues.push(ConfigIssue { path, message });
    };
    let providers = &config.models.providers;
    for (id, provider) in providers {
        let path = format!("models.providers.{id}");
        if id.contains('/') || id.is_empty() {
            issue(path.clone(), "a provider id must be non-empty and must not contain '/'".into());
        }
        if id == OFFLINE_PROVIDER_ID {
            issue(
                path.clone(),
                format!(
                    "the provider id {OFFLINE_PROVIDER_ID} is reserved for the offline provider"
                ),
            );
        }
        match &provider.base_url {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => issue(
                format!("{path}.baseUrl"),
                format!("{url:?} must start with http:// or https://"),
            ),
            None if id != ANTHROPIC_PROVIDER_ID && id != OPENAI_PROVIDER_ID => issue(
                format!("{path}.baseUrl"),
                "is required (only the anthropic and openai providers have a default)".into(),
            ),
            _ => {}
        }
    }
    let known_provider = |p: &str| {
        providers.contains_key(p)
            || p == ANTHROPIC_PROVIDER_ID
            || p == OPENAI_PROVIDER_ID
            || p == OFFLINE_PROVIDER_ID
    };
    let check_ref = |path: String, reference: &str, issues: &mut Vec<ConfigIssue>| {
        let problem = match ModelRef::parse(reference) {
            None => {
                Some(format!("{reference:?} is not a model reference of the form provider/model"))
            }
            Some(r) if r.provider == OFFLINE_PROVIDER_ID && r.model != OFFLINE_MODEL_ID => Some(
                format!("the {OFFLINE_PROVIDER_ID} provider has only the model {OFFLINE_MODEL_ID}"),
            ),
            Some(r) if !known_provider(&r.provider) => {
                let mut names: Vec<&str> = providers.keys().map(String::as_str).collect();
                names.extend([ANTHROPIC_PROVIDER_ID, OPENAI_PROVIDER_ID, OFFLINE_PROVIDER_ID]);
                Some(format!(
                    "unknown provider {:?} in {reference:?} (known: {})",
                    r.provider,
                    names.join(", ")
                ))
            }
            Some(_) => None,
        };
        if let Some(message) = problem {
            issues.push(ConfigIssue { message: format!("{path}: {message}"), path });
        }
    };
    let mut model_checks: Vec<(String, &ModelSetting)> = Vec::new();
    if let Some(m) = &config.agents.defaults.model {
        model_checks.push(("agents.defaults.model".into(), m));
    }
    for (id, entry) in &config.agents.entries {
        if let Some(m) = &entry.model {
            model_checks.push((format!("agents.entries.{id}.model"), m));
        }
    }
    for (i, entry) in config.agents.list.iter().enumerate() {
        if let Some(m) = &entry.model {
            model_checks.push((format!("agents.list[{i}].model"), m));
        }
    }
    for (path, setting) in model_checks {
        match setting {
            ModelSetting::Ref(r) => check_ref(path, r, &mut issues),
            ModelSetting::Chain(chain) => {
                match &chain.primary {
                    Some(p) => check_ref(format!("{path}.primary"), p, &mut issues),
                    None => issues.push(ConfigIssue {
                        message: format!("{path}.primary: is required when model is an object"),
                        path: format!("{path}.primary"),
                    }),
                }
                for (i, f) in chain.fallbacks.iter().enumerate() {
                    check_ref(format!("{path}.fallbacks[{i}]"), f, &mut issues);
                }
            }
        }
    }
    let mut issue = |path: String, message: String| {
        issues.push(ConfigIssue { message: format!("{path}: {message}"), path });
    };
    let mut seen = BTreeSet::new();
    let mut defaults = 0;
    let ids = config
        .agents
        .entries
        .iter()
        .map(|(id, e)| (format!("agents.entries.{id}"), Some(id.clone()), e))
        .chain(
            config
                .agents
                .list
                .iter()
                .enumerate()
                .map(|(i, e)| (format!("agents.list[{i}]"), e.id.clone(), e)),
        );
    for (path, id, entry) in ids {
        defaults += usize::from(entry.default);
        match id {
            None => issue(format!("{path}.id"), "is required in agents.list".into()),
            Some(id) => {
                let valid = !id.is_empty()
                    && id.len() <= AGENT_ID_CHARS_MAX
                    && id.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
                    });
                if !valid {
                    issue(
                        path.clone(),
                        format!(
                            "agent id {id:?} must be 1-{AGENT_ID_CHARS_MAX} characters of a-z, 0-9, - and _"
                        ),
                    );
                }
                if !seen.insert(id.clone()) {
                    issue(path, format!("agent id {id:?} is defined twice"));
                }
            }
        }
    }
    if defaults > 1 {
        issue(
            "agents".into(),
            format!("{defaults} agents are marked default: true; at most one may be"),
        );
    }
    for (id, profile) in &config.auth.profiles {
        let path = format!("auth.profiles.{id}");
        if !known_provider(&profile.provider) || profile.provider == OFFLINE_PROVIDER_ID {
            issue(format!("{path}.provider"), format!("unknown provider {:?}", profile.provider));
        }
        if profile.api_key.as_ref().is_none_or(Secret::is_empty) {
            issue(format!("{path}.apiKey"), "is required".into());
        }
    }
    for (provider, order) in &config.auth.order {
        for (i, profile_id) in order.iter().enumerate() {
            match config.auth.profiles.get(profile_id) {
                Some(p) if &p.provider == provider => {}
                Some(p) => issue(
                    format!("auth.order.{provider}[{i}]"),
                    format!("profile {profile_id:?} belongs to provider {:?}", p.provider),
                ),
                None => issue(
                    format!("auth.order.{provider}[{i}]"),
                    format!("no profile {profile_id:?} in auth.profiles"),
                ),
            }
        }
    }
    let auth = &config.gateway.auth;
    match auth.mode.as_deref() {
        Some("token") if auth.token.is_none() => issue(
            "gateway.auth.token".into(),
            "is required when gateway.auth.mode is \"token\"".into(),
        ),
        Some("password") if auth.password.is_none() => issue(
            "gateway.auth.password".into(),
            "is required when gateway.auth.mode is \"password\"".into(),
        ),
        _ => {}
    }
    if config.mesh.replication_factor == Some(0) {
        issue("mesh.replicationFactor".into(), "must be at least 1".into());
    }
    if config.messages.queue.cap == Some(0) {
        issue("messages.queue.cap".into(), "must be at least 1".into());
    }
    issues.extend(tools::issues(config));
    issues.extend(crate::subagents::config_issues(config));
    issues
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: BTreeMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.get(name).cloned()
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str(text, "test.json5", &env_of(&[("KEY", "sk-1")]))
    }

    fn issues(text: &str) -> Vec<String> {
        match parse(text) {
            Err(ConfigError::Invalid { issues, .. }) => {
                issues.into_iter().map(|i| i.message).collect()
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn every_schema_key_is_accepted_by_the_typed_config() {
        let value = schema::sample(&schema::root());
        let parsed: Result<Config, _> = serde_json::from_value(value);
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn full_example_parses() {
        let config = parse(
            r#"{
              // comments and trailing commas: JSON5
              models: { providers: {
                anthropic: { apiKey: "${KEY}", api: "anthropic-messages", models: [{ id: "claude-x" }] },
                local: { baseUrl: "http://127.0.0.1:11434/v1", api: "openai-completions",
                         headers: { "X-Org": "o" }, models: [{ id: "llama3", contextWindow: 8192 }] },
              } },
              agents: {
                defaults: { model: { primary: "anthropic/claude-x", fallbacks: ["local/llama3"] },
                            timeoutSeconds: 120, thinkingDefault: "low" },
                entries: { ops: { name: "Ops", default: true, model: "local/llama3" } },
                list: [{ id: "old", workspace: "/tmp/ws-old" }],
              },
              auth: { profiles: { "anthropic:a": { provider: "anthropic", apiKey: "k1" } },
                      order: { anthropic: ["anthropic:a"] } },
              messages: { queue: { mode: "steer", debounceMs: 0, cap: 5, drop: "new" } },
              gateway: { port: 18789, bind: "loopback", auth: { mode: "token", token: "t" },
                         http: { endpoints: { chatCompletions: { enabled: true } } } },
              mesh: { join: ["10.0.0.1:7946"], replicationFactor: 3 },
              logging: { level: "debug", format: "json" },
            }"#,
        )
        .unwrap();
        let key = config.models.providers["anthropic"].api_key.clone().unwrap();
        assert_eq!(key.expose(), "sk-1");
        assert!(!format!("{config:?}").contains("sk-1"), "secrets must not appear in Debug");
        let loaded = LoadedConfig {
            config,
            data_dir: PathBuf::from("/data"),
            file: None,
            env_keys: EnvKeys::default(),
        };
        assert_eq!(loaded.default_agent_id(), "ops");
        let ops = loaded.agent("ops").unwrap();
        assert_eq!(ops.model.primary.to_string(), "local/llama3");
        assert_eq!(ops.timeout, Duration::from_secs(120));
        assert_eq!(ops.thinking, ThinkingLevel::Low);
        let old = loaded.agent("old").unwrap();
        assert_eq!(old.model.fallbacks, vec![ModelRef::parse("local/llama3").unwrap()]);
        assert_eq!(old.workspace, PathBuf::from("/tmp/ws-old"));
        assert!(loaded.agent("nobody").is_none());
        let q = loaded.queue_settings();
        assert_eq!((q.mode, q.cap, q.drop), (QueueMode::Steer, 5, QueueDrop::New));
    }

    #[test]
    fn unknown_keys_are_named_with_the_nearest_valid_key() {
        assert_eq!(
            issues("{agents: {defaults: {modle: 'anthropic/x'}}}"),
            vec!["unknown key agents.defaults.modle (did you mean agents.defaults.model?)"]
        );
        assert_eq!(
            issues("{gateway: {auth: {tokn: 'x'}}, modles: {}}"),
            vec![
                "unknown key gateway.auth.tokn (did you mean gateway.auth.token?)",
                "unknown key modles (did you mean models?)",
            ]
        );
    }

    #[test]
    fn missing_env_var_names_the_key_and_the_variable() {
        assert_eq!(
            issues("{models: {providers: {openai: {apiKey: '${NOPE_KEY}'}}}}"),
            vec!["models.providers.openai.apiKey: environment variable NOPE_KEY is not set"]
        );
    }

    #[test]
    fn dollar_dollar_brace_is_a_literal() {
        assert_eq!(expand("a$${B}c", &env_of(&[])).unwrap(), "a${B}c");
        assert_eq!(expand("x${KEY}y$z", &env_of(&[("KEY", "1")])).unwrap(), "x1y$z");
        assert!(expand("${lower}", &env_of(&[])).is_err());
        assert!(expand("${OPEN", &env_of(&[])).is_err());
    }

    #[test]
    fn semantic_problems_are_reported() {
        let found = issues(
            r#"{
              models: { providers: { local: { api: "openai-completions" } } },
              agents: { defaults: { model: "nowhere/x" },
                        list: [{ name: "no id" }, { id: "Bad Id" }],
                        entries: { a: { default: true }, b: { default: true } } },
              gateway: { auth: { mode: "token" } },
            }"#,
        );
        let expected = [
            "models.providers.local.baseUrl: is required (only the anthropic and openai providers have a default)",
            "agents.defaults.model: unknown provider \"nowhere\" in \"nowhere/x\" (known: local, anthropic, openai, beamclaw)",
            "agents.list[0].id: is required in agents.list",
            "agents.list[1]: agent id \"Bad Id\" must be 1-64 characters of a-z, 0-9, - and _",
            "agents: 2 agents are marked default: true; at most one may be",
            "gateway.auth.token: is required when gateway.auth.mode is \"token\"",
        ];
        for e in expected {
            assert!(found.iter().any(|f| f == e), "missing {e:?} in {found:#?}");
        }
    }

    #[test]
    fn nothing_configured_means_the_offline_provider_and_main() {
        let loaded = LoadedConfig::defaults(PathBuf::from("/d"), EnvKeys::default());
        let main = loaded.agent(DEFAULT_AGENT_ID).unwrap();
        assert_eq!(main.model.primary, ModelRef::offline());
        assert_eq!(main.workspace, PathBuf::from("/d/workspace"));
        let with_key = LoadedConfig::defaults(
            PathBuf::from("/d"),
            EnvKeys::from_env(&env_of(&[(ANTHROPIC_API_KEY_ENV, "k")])),
        );
        assert_eq!(with_key.default_model_chain().primary.provider, ANTHROPIC_PROVIDER_ID);
    }

    #[test]
    fn json5_syntax_errors_name_the_position() {
        match parse("{models: }") {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.contains("line 1"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
