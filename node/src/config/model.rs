//! The typed config: what `beamclaw.json5` says, after `${ENV}` substitution and the schema check.
//!
//! Field names follow OpenClaw's camelCase keys (OPENCLAW.md §4). Every struct rejects unknown
//! fields as a second line of defence behind `config::schema`.

use super::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    pub models: ModelsConfig,
    pub agents: AgentsConfig,
    pub auth: AuthConfig,
    pub messages: MessagesConfig,
    pub gateway: GatewayConfig,
    pub mesh: MeshConfig,
    pub logging: LoggingConfig,
    pub tools: super::tools::ToolsConfig,
    pub skills: SkillsConfig,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ModelsConfig {
    pub providers: BTreeMap<String, ProviderConfig>,
}

/// The wire protocol a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ApiKind {
    #[serde(rename = "anthropic-messages")]
    AnthropicMessages,
    #[serde(rename = "openai-completions")]
    OpenAiCompletions,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProviderConfig {
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Defaults to `anthropic-messages` for a provider named `anthropic`, else `openai-completions`.
    #[serde(default)]
    pub api: Option<ApiKind>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub models: Vec<ModelEntry>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModelEntry {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub context_window: Option<u32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub reasoning: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AgentsConfig {
    pub defaults: AgentSettings,
    /// 2026.9+ form: an object keyed by agent id.
    pub entries: BTreeMap<String, AgentEntry>,
    /// The older v3 form: a list of agents with an `id` each.
    pub list: Vec<AgentEntry>,
}

/// Settings an agent may have; in `agents.defaults` they apply to every agent.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AgentSettings {
    pub model: Option<ModelSetting>,
    pub workspace: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub max_concurrent: Option<u32>,
    pub identity: Option<Identity>,
    pub thinking_default: Option<ThinkingLevel>,
    pub tools: Option<super::tools::AgentToolsConfig>,
    pub subagents: Option<SubagentsConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AgentEntry {
    /// Only in the `agents.list` form.
    pub id: Option<String>,
    pub name: Option<String>,
    pub default: bool,
    pub model: Option<ModelSetting>,
    pub workspace: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub max_concurrent: Option<u32>,
    pub identity: Option<Identity>,
    pub thinking_default: Option<ThinkingLevel>,
    pub tools: Option<super::tools::AgentToolsConfig>,
    pub subagents: Option<SubagentsConfig>,
}

/// `model: "provider/model"` or `model: {primary, fallbacks}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ModelSetting {
    Ref(String),
    Chain(ModelChainConfig),
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ModelChainConfig {
    pub primary: Option<String>,
    pub fallbacks: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Identity {
    pub name: Option<String>,
    pub emoji: Option<String>,
    pub theme: Option<String>,
    pub avatar: Option<String>,
}

/// How much the model should think before answering (OpenClaw `thinkingDefault`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThinkingLevel {
    #[default]
    Off,
    Minimal,
    Low,
    Medium,
    High,
    Xhigh,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AuthConfig {
    /// `"<provider>:<name>" -> profile`: several keys per provider, rotated on failure.
    pub profiles: BTreeMap<String, AuthProfileConfig>,
    /// `provider -> [profile ids]`: the order profiles are tried in (else by id).
    pub order: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthProfileConfig {
    pub provider: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub api_key: Option<Secret>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct MessagesConfig {
    pub queue: QueueConfig,
}

/// What happens to messages that arrive while a turn runs (OpenClaw `messages.queue`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct QueueConfig {
    pub mode: Option<QueueMode>,
    pub debounce_ms: Option<u64>,
    pub cap: Option<u32>,
    pub drop: Option<QueueDrop>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueMode {
    /// Inject into the running turn at its next tool boundary.
    Steer,
    /// Run as its own turn after the running one.
    Followup,
    /// Merge everything queued into one follow-up turn (OpenClaw's default).
    #[default]
    Collect,
    /// Abort the running turn, then run.
    Interrupt,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueDrop {
    /// Drop the oldest queued message.
    Old,
    /// Refuse the newest message.
    New,
    /// Drop the oldest but keep a one-line summary of it for the next turn (OpenClaw's default).
    #[default]
    Summarize,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct GatewayConfig {
    pub port: Option<u16>,
    pub bind: Option<String>,
    pub custom_bind_host: Option<String>,
    pub auth: GatewayAuthConfig,
    pub http: GatewayHttpConfig,
    pub tools: ToolPolicyConfig,
    pub nodes: GatewayNodesConfig,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct GatewayNodesConfig {
    pub pairing: GatewayPairingConfig,
}

/// OpenClaw's `gateway.nodes.pairing`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct GatewayPairingConfig {
    /// Approve new devices connecting from loopback without asking (default true, as OpenClaw).
    pub auto_approve_local: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct GatewayAuthConfig {
    pub mode: Option<String>,
    pub token: Option<Secret>,
    pub password: Option<Secret>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct GatewayHttpConfig {
    pub endpoints: GatewayEndpointsConfig,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct GatewayEndpointsConfig {
    pub chat_completions: EndpointToggle,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct EndpointToggle {
    pub enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ToolPolicyConfig {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct MeshConfig {
    pub listen: Option<String>,
    /// The mesh address peers should dial (default: the listen address, or a routable local
    /// address when listening on 0.0.0.0).
    pub advertise: Option<String>,
    pub join: Vec<String>,
    pub node_name: Option<String>,
    pub cluster_secret: Option<Secret>,
    pub replication_factor: Option<u32>,
    pub discover: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct LoggingConfig {
    pub level: Option<String>,
    pub format: Option<String>,
}

/// `agents.defaults.subagents` / `agents.<id>.subagents`: limits of `sessions_spawn`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SubagentsConfig {
    pub max_spawn_depth: Option<u32>,
    pub max_children_per_agent: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub run_timeout_seconds: Option<u64>,
    /// Agent ids a session may spawn sub-agents as (`*` for any); default: its own agent.
    pub allow_agents: Option<Vec<String>>,
}

/// `skills`: per-skill settings and extra folders to load skills from.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SkillsConfig {
    /// Keyed by skill key (`metadata.openclaw.skillKey`, else the skill's name).
    pub entries: BTreeMap<String, SkillEntryConfig>,
    pub load: SkillsLoadConfig,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SkillEntryConfig {
    pub enabled: Option<bool>,
    pub api_key: Option<Secret>,
    pub env: BTreeMap<String, Secret>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SkillsLoadConfig {
    /// Lowest-precedence skill folders, in order (`~/` is the home directory).
    pub extra_dirs: Vec<String>,
}
