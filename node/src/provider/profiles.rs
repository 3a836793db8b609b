//! Auth profiles: several API keys per provider, tried in order, with cooldowns after failures.
//!
//! Cooldowns follow OpenClaw: 30 s after the first failure of a profile, 1 min after the second,
//! 5 min after that; a billing failure disables the profile for hours. A success resets it.

use crate::config::{ANTHROPIC_PROVIDER_ID, LoadedConfig, OPENAI_PROVIDER_ID, Secret};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Cooldown after the 1st, 2nd and 3rd-or-later consecutive failure of a profile.
pub const PROFILE_COOLDOWNS_MS: [u64; 3] = [30_000, 60_000, 300_000];
/// How long a profile is disabled after a billing failure.
pub const BILLING_DISABLE_MS: u64 = 5 * 3600 * 1000;

/// One API key of a provider.
#[derive(Clone, Debug)]
pub struct AuthProfile {
    /// `"<provider>:<name>"` as in `auth.profiles`; `<provider>:config` for the provider's own
    /// `apiKey`, `<provider>:env` for the environment's.
    pub id: String,
    pub provider: String,
    pub key: Secret,
}

#[derive(Clone, Copy, Debug, Default)]
struct ProfileState {
    failures: u32,
    unavailable_until: Option<Instant>,
}

/// Every provider's profiles and their cooldown state.
#[derive(Debug, Default)]
pub struct ProfilePool {
    by_provider: BTreeMap<String, Vec<AuthProfile>>,
    state: Mutex<HashMap<String, ProfileState>>,
}

impl ProfilePool {
    pub fn new(profiles: Vec<AuthProfile>) -> Self {
        let mut by_provider: BTreeMap<String, Vec<AuthProfile>> = BTreeMap::new();
        for p in profiles {
            let list = by_provider.entry(p.provider.clone()).or_default();
            if !list.iter().any(|q| q.id == p.id) {
                list.push(p);
            }
        }
        ProfilePool { by_provider, state: Mutex::new(HashMap::new()) }
    }

    /// Profiles from `auth.profiles` (in `auth.order`, else by id), then each provider's
    /// `apiKey`, then `ANTHROPIC_API_KEY` / `OPENAI_API_KEY`.
    pub fn from_config(config: &LoadedConfig) -> Self {
        let c = &config.config;
        let mut profiles = Vec::new();
        let mut providers: Vec<&String> = c.models.providers.keys().collect();
        providers.extend(c.auth.profiles.values().map(|p| &p.provider));
        providers.sort();
        providers.dedup();
        let owned = [ANTHROPIC_PROVIDER_ID.to_string(), OPENAI_PROVIDER_ID.to_string()];
        for provider in providers.into_iter().chain(owned.iter()) {
            let ordered: Vec<String> = match c.auth.order.get(provider) {
                Some(order) => order.clone(),
                None => c
                    .auth
                    .profiles
                    .iter()
                    .filter(|(_, p)| &p.provider == provider)
                    .map(|(id, _)| id.clone())
                    .collect(),
            };
            for id in ordered {
                if let Some(key) = c.auth.profiles.get(&id).and_then(|p| p.api_key.clone()) {
                    profiles.push(AuthProfile { id, provider: provider.clone(), key });
                }
            }
            if let Some(key) = c.models.providers.get(provider).and_then(|p| p.api_key.clone()) {
                profiles.push(AuthProfile {
                    id: format!("{provider}:config"),
                    provider: provider.clone(),
                    key,
                });
            }
            let env_key = match provider.as_str() {
                ANTHROPIC_PROVIDER_ID => config.env_keys.anthropic.clone(),
                OPENAI_PROVIDER_ID => config.env_keys.openai.clone(),
                _ => None,
            };
            if let Some(key) = env_key {
                profiles.push(AuthProfile {
                    id: format!("{provider}:env"),
                    provider: provider.clone(),
                    key,
                });
            }
        }
        Self::new(profiles)
    }

    /// All profiles of `provider`, in order.
    pub fn profiles(&self, provider: &str) -> &[AuthProfile] {
        self.by_provider.get(provider).map(Vec::as_slice).unwrap_or_default()
    }

    /// When the profile becomes usable again, if it is cooling down or disabled at `now`.
    pub fn unavailable_until(&self, profile: &str, now: Instant) -> Option<Instant> {
        let state = self.lock();
        state.get(profile).and_then(|s| s.unavailable_until).filter(|until| *until > now)
    }

    /// Records a failure that should rest the profile: 30 s, 1 min, then 5 min.
    pub fn cool_down(&self, profile: &str, now: Instant) -> Duration {
        let mut state = self.lock();
        let s = state.entry(profile.to_string()).or_default();
        let step = (s.failures as usize).min(PROFILE_COOLDOWNS_MS.len() - 1);
        s.failures = s.failures.saturating_add(1);
        let wait = Duration::from_millis(PROFILE_COOLDOWNS_MS[step]);
        s.unavailable_until = Some(now + wait);
        wait
    }

    /// Records a billing failure: the profile is disabled for [`BILLING_DISABLE_MS`].
    pub fn disable(&self, profile: &str, now: Instant) {
        let mut state = self.lock();
        let s = state.entry(profile.to_string()).or_default();
        s.failures = s.failures.saturating_add(1);
        s.unavailable_until = Some(now + Duration::from_millis(BILLING_DISABLE_MS));
    }

    pub fn succeeded(&self, profile: &str) {
        self.lock().remove(profile);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ProfileState>> {
        // A poisoned lock only means another thread panicked mid-update of plain counters.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EnvKeys, parse_str};
    use std::path::PathBuf;

    #[test]
    fn cooldowns_grow_30s_1m_5m_and_reset_on_success() {
        let pool = ProfilePool::new(vec![AuthProfile {
            id: "anthropic:a".into(),
            provider: "anthropic".into(),
            key: Secret::new("k"),
        }]);
        let now = Instant::now();
        let waits: Vec<u64> =
            (0..4).map(|_| pool.cool_down("anthropic:a", now).as_secs()).collect();
        assert_eq!(waits, vec![30, 60, 300, 300]);
        assert!(pool.unavailable_until("anthropic:a", now).is_some());
        assert!(pool.unavailable_until("anthropic:a", now + Duration::from_secs(301)).is_none());
        pool.succeeded("anthropic:a");
        assert_eq!(pool.cool_down("anthropic:a", now).as_secs(), 30);
        pool.disable("anthropic:a", now);
        assert!(pool.unavailable_until("anthropic:a", now + Duration::from_secs(3600)).is_some());
    }

    #[test]
    fn profiles_follow_auth_order_then_config_then_env() {
        let text = r#"{
            models: { providers: { anthropic: { apiKey: "cfg" } } },
            auth: { profiles: { "anthropic:a": { provider: "anthropic", apiKey: "a" },
                                "anthropic:b": { provider: "anthropic", apiKey: "b" } },
                    order: { anthropic: ["anthropic:b", "anthropic:a"] } },
        }"#;
        let config = parse_str(text, "t", &|_| None).unwrap();
        let loaded = LoadedConfig {
            config,
            data_dir: PathBuf::from("/d"),
            file: None,
            env_keys: EnvKeys { anthropic: Some(Secret::new("env")), openai: None },
        };
        let pool = ProfilePool::from_config(&loaded);
        let ids: Vec<&str> = pool.profiles("anthropic").iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, vec!["anthropic:b", "anthropic:a", "anthropic:config", "anthropic:env"]);
        assert!(pool.profiles("openai").is_empty());
    }
}
