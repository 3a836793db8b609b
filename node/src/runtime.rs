//! Wiring: a loaded config + the ports -> a ready agent runtime (providers, router, turn runner,
//! session actors). The lead's `up` command calls [`AgentRuntime::build`] with the mesh's ports.

use crate::agent::{RuntimePorts, SessionActors, TurnRunner};
use crate::config::{LoadedConfig, ModelRef, OFFLINE_PROVIDER_ID};
use crate::provider::{
    ModelRouter, ProfilePool, ProviderError, ProviderStats, RetryPolicy, providers_from_config,
};
use crate::tools::ToolRegistry;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot set up the model providers: {0}")]
    Providers(#[from] ProviderError),
    #[error(
        "agent {agent} uses model {model}, whose provider {provider:?} is not available (configure models.providers.{provider} or its API key)"
    )]
    MissingProvider { agent: String, model: String, provider: String },
}

/// The agent runtime of one node.
pub struct AgentRuntime {
    pub router: Arc<ModelRouter>,
    pub runner: Arc<TurnRunner>,
    pub actors: Arc<SessionActors>,
    pub stats: Arc<ProviderStats>,
}

impl AgentRuntime {
    /// Builds the runtime. Provider metrics go into `registry` when one is given. Logs, for each
    /// agent, the provider and model it will use.
    pub fn build(
        config: &LoadedConfig,
        tools: ToolRegistry,
        ports: RuntimePorts,
        node: String,
        registry: Option<&mut Registry>,
        policy: RetryPolicy,
    ) -> Result<Self, RuntimeError> {
        let providers = providers_from_config(config)?;
        let stats = Arc::new(match registry {
            Some(r) => ProviderStats::registered(r),
            None => ProviderStats::new(),
        });
        let mut max_tokens = BTreeMap::new();
        for (provider, p) in &config.config.models.providers {
            for m in &p.models {
                if let Some(n) = m.max_tokens {
                    max_tokens
                        .insert(ModelRef { provider: provider.clone(), model: m.id.clone() }, n);
                }
            }
        }
        let router = Arc::new(
            ModelRouter::new(
                providers,
                Arc::new(ProfilePool::from_config(config)),
                policy,
                stats.clone(),
            )
            .with_max_tokens(max_tokens),
        );
        let mut agents = Vec::new();
        for id in config.agent_ids() {
            let Some(agent) = config.agent(&id) else { continue };
            for model in std::iter::once(&agent.model.primary).chain(agent.model.fallbacks.iter()) {
                if !router.has_provider(&model.provider) {
                    return Err(RuntimeError::MissingProvider {
                        agent: id.clone(),
                        model: model.to_string(),
                        provider: model.provider.clone(),
                    });
                }
            }
            if agent.model.primary.provider == OFFLINE_PROVIDER_ID {
                tracing::info!(agent = %id, provider = OFFLINE_PROVIDER_ID, model = %agent.model.primary,
                    "no model configured: replies come from the offline provider; set ANTHROPIC_API_KEY or OPENAI_API_KEY, or models.providers in beamclaw.json5");
            } else {
                let fallbacks: Vec<String> =
                    agent.model.fallbacks.iter().map(ToString::to_string).collect();
                tracing::info!(agent = %id, provider = %agent.model.primary.provider, model = %agent.model.primary, fallbacks = ?fallbacks, "agent model");
            }
            agents.push(agent);
        }
        let runner = Arc::new(
            TurnRunner::new(
                router.clone(),
                // The agents' tool policy is `tools.*` (gateway.tools is the HTTP /tools/invoke list).
                Arc::new(tools.with_config_policy(config)),
                agents,
                config.default_agent_id(),
                ports,
                node,
            )
            .with_skills(crate::skills::SkillSettings::from_loaded(config)),
        );
        let actors = SessionActors::new(runner.clone(), config.queue_settings());
        Ok(AgentRuntime { router, runner, actors, stats })
    }
}
