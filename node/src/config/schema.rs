//! The shape of `beamclaw.json5`, checked before the typed structs see it.
//!
//! serde alone stops at the first problem and does not say where it was; this walk reports every
//! unknown key with its full path and the nearest valid key, and every wrongly typed value with its
//! path, so `beamclaw config validate` can list them all at once. The typed structs in
//! `config::model` then deserialize a value that is known to fit (a test pins that the two agree).

use serde_json::Value;

/// What a value at one place in the config may be.
#[derive(Clone, Debug)]
pub(crate) enum Shape {
    Str,
    Bool,
    /// A non-negative integer no larger than the bound.
    UInt(u64),
    Enum(&'static [&'static str]),
    /// An object with exactly these keys (each optional).
    Object(Vec<(&'static str, Shape)>),
    /// An object with keys chosen by the user (provider ids, agent ids...).
    Map(Box<Shape>),
    List(Box<Shape>),
    /// Either a string or the given object shape (e.g. `model: "p/m"` or `{primary, fallbacks}`).
    StrOr(Box<Shape>),
}

/// One problem found in the config: the path of the offending key and a message that names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SchemaIssue {
    pub(crate) path: String,
    pub(crate) message: String,
}

/// Largest edit distance accepted as a "did you mean" suggestion.
const SUGGESTION_DISTANCE_MAX: usize = 3;

pub(crate) const API_KINDS: &[&str] = &["anthropic-messages", "openai-completions"];
pub(crate) const THINKING_LEVELS: &[&str] = &["off", "minimal", "low", "medium", "high", "xhigh"];
pub(crate) const QUEUE_MODES: &[&str] = &["steer", "followup", "collect", "interrupt"];
pub(crate) const QUEUE_DROPS: &[&str] = &["old", "new", "summarize"];
pub(crate) const AUTH_MODES: &[&str] = &["none", "token", "password"];
pub(crate) const BIND_MODES: &[&str] = &["loopback", "lan", "tailnet", "auto", "custom"];
pub(crate) const LOG_FORMATS: &[&str] = &["pretty", "json"];
pub(crate) const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];
pub(crate) const PROFILE_MODES: &[&str] = &["api_key", "token"];

fn obj(keys: Vec<(&'static str, Shape)>) -> Shape {
    Shape::Object(keys)
}

fn list(shape: Shape) -> Shape {
    Shape::List(Box::new(shape))
}

fn map(shape: Shape) -> Shape {
    Shape::Map(Box::new(shape))
}

/// The keys an agent may set, both in `agents.defaults` and per agent.
fn agent_keys() -> Vec<(&'static str, Shape)> {
    vec![
        (
            "model",
            Shape::StrOr(Box::new(obj(vec![
                ("primary", Shape::Str),
                ("fallbacks", list(Shape::Str)),
            ]))),
        ),
        ("workspace", Shape::Str),
        ("timeoutSeconds", Shape::UInt(7 * 24 * 3600)),
        ("maxConcurrent", Shape::UInt(1024)),
        (
            "identity",
            obj(vec![
                ("name", Shape::Str),
                ("emoji", Shape::Str),
                ("theme", Shape::Str),
                ("avatar", Shape::Str),
            ]),
        ),
        ("thinkingDefault", Shape::Enum(THINKING_LEVELS)),
        ("tools", super::tools::agent_shape()),
        (
            "subagents",
            obj(vec![
                ("maxSpawnDepth", Shape::UInt(5)),
                ("maxChildrenPerAgent", Shape::UInt(100)),
                ("maxConcurrent", Shape::UInt(1000)),
                ("runTimeoutSeconds", Shape::UInt(7 * 24 * 3600)),
                ("allowAgents", list(Shape::Str)),
            ]),
        ),
    ]
}

fn agent_entry_keys(with_id: bool) -> Vec<(&'static str, Shape)> {
    let mut keys = agent_keys();
    keys.push(("name", Shape::Str));
    keys.push(("default", Shape::Bool));
    if with_id {
        keys.push(("id", Shape::Str));
    }
    keys
}

/// The whole config file.
pub(crate) fn root() -> Shape {
    obj(vec![
        (
            "models",
            obj(vec![(
                "providers",
                map(obj(vec![
                    ("baseUrl", Shape::Str),
                    ("apiKey", Shape::Str),
                    ("api", Shape::Enum(API_KINDS)),
                    ("headers", map(Shape::Str)),
                    (
                        "models",
                        list(obj(vec![
                            ("id", Shape::Str),
                            ("name", Shape::Str),
                            ("contextWindow", Shape::UInt(u64::from(u32::MAX))),
                            ("maxTokens", Shape::UInt(u64::from(u32::MAX))),
                            ("reasoning", Shape::Bool),
                        ])),
                    ),
                ])),
            )]),
        ),
        (
            "agents",
            obj(vec![
                ("defaults", obj(agent_keys())),
                ("entries", map(obj(agent_entry_keys(false)))),
                ("list", list(obj(agent_entry_keys(true)))),
            ]),
        ),
        (
            "auth",
            obj(vec![
                (
                    "profiles",
                    map(obj(vec![
                        ("provider", Shape::Str),
                        ("mode", Shape::Enum(PROFILE_MODES)),
                        ("apiKey", Shape::Str),
                    ])),
                ),
                ("order", map(list(Shape::Str))),
            ]),
        ),
        (
            "messages",
            obj(vec![(
                "queue",
                obj(vec![
                    ("mode", Shape::Enum(QUEUE_MODES)),
                    ("debounceMs", Shape::UInt(60_000)),
                    ("cap", Shape::UInt(1000)),
                    ("drop", Shape::Enum(QUEUE_DROPS)),
                ]),
            )]),
        ),
        (
            "gateway",
            obj(vec![
                ("port", Shape::UInt(65_535)),
                ("bind", Shape::Enum(BIND_MODES)),
                ("customBindHost", Shape::Str),
                (
                    "auth",
                    obj(vec![
                        ("mode", Shape::Enum(AUTH_MODES)),
                        ("token", Shape::Str),
                        ("password", Shape::Str),
                    ]),
                ),
                (
                    "http",
                    obj(vec![(
                        "endpoints",
                        obj(vec![("chatCompletions", obj(vec![("enabled", Shape::Bool)]))]),
                    )]),
                ),
                ("tools", obj(vec![("allow", list(Shape::Str)), ("deny", list(Shape::Str))])),
                ("nodes", obj(vec![("pairing", obj(vec![("autoApproveLocal", Shape::Bool)]))])),
            ]),
        ),
        (
            "mesh",
            obj(vec![
                ("listen", Shape::Str),
                ("advertise", Shape::Str),
                ("join", list(Shape::Str)),
                ("nodeName", Shape::Str),
                ("clusterSecret", Shape::Str),
                ("replicationFactor", Shape::UInt(16)),
                ("discover", Shape::Bool),
            ]),
        ),
        ("tools", super::tools::shape()),
        (
            "logging",
            obj(vec![("level", Shape::Enum(LOG_LEVELS)), ("format", Shape::Enum(LOG_FORMATS))]),
        ),
        (
            "skills",
            obj(vec![
                (
                    "entries",
                    map(obj(vec![
                        ("enabled", Shape::Bool),
                        ("apiKey", Shape::Str),
                        ("env", map(Shape::Str)),
                    ])),
                ),
                ("load", obj(vec![("extraDirs", list(Shape::Str))])),
            ]),
        ),
    ])
}

/// Checks `value` against `shape`, appending every problem found to `issues`.
pub(crate) fn check(value: &Value, shape: &Shape, path: &str, issues: &mut Vec<SchemaIssue>) {
    let mismatch = |expected: &str, issues: &mut Vec<SchemaIssue>| {
        issues.push(SchemaIssue {
            path: path.to_string(),
            message: format!("{path}: expected {expected}, found {}", describe(value)),
        });
    };
    match shape {
        Shape::Str => {
            if !value.is_string() {
                mismatch("a string", issues);
            }
        }
        Shape::Bool => {
            if !value.is_boolean() {
                mismatch("true or false", issues);
            }
        }
        Shape::UInt(max) => match value.as_u64() {
            Some(n) if n <= *max => {}
            Some(n) => issues.push(SchemaIssue {
                path: path.to_string(),
                message: format!("{path}: {n} is larger than the maximum {max}"),
            }),
            None => mismatch("a non-negative integer", issues),
        },
        Shape::Enum(allowed) => match value.as_str() {
            Some(s) if allowed.contains(&s) => {}
            _ => mismatch(&format!("one of {}", quoted_list(allowed)), issues),
        },
        Shape::StrOr(inner) => {
            if !value.is_string() {
                if value.is_object() {
                    check(value, inner, path, issues);
                } else {
                    mismatch("a string or an object", issues);
                }
            }
        }
        Shape::List(inner) => match value.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(item, inner, &format!("{path}[{i}]"), issues);
                }
            }
            None => mismatch("a list", issues),
        },
        Shape::Map(inner) => match value.as_object() {
            Some(entries) => {
                for (key, item) in entries {
                    check(item, inner, &join(path, key), issues);
                }
            }
            None => mismatch("an object", issues),
        },
        Shape::Object(keys) => match value.as_object() {
            Some(entries) => {
                for (key, item) in entries {
                    match keys.iter().find(|(name, _)| name == key) {
                        Some((_, inner)) => check(item, inner, &join(path, key), issues),
                        None => issues.push(unknown_key(path, key, keys)),
                    }
                }
            }
            None => mismatch("an object", issues),
        },
    }
}

fn unknown_key(path: &str, key: &str, keys: &[(&'static str, Shape)]) -> SchemaIssue {
    let nearest = keys
        .iter()
        .map(|(name, _)| (strsim::damerau_levenshtein(key, name), *name))
        .filter(|(distance, name)| {
            *distance <= SUGGESTION_DISTANCE_MAX.min(name.len().div_ceil(2))
                || name.eq_ignore_ascii_case(key)
        })
        .min();
    let full = join(path, key);
    let message = match nearest {
        Some((_, name)) => format!("unknown key {full} (did you mean {}?)", join(path, name)),
        None => {
            let names: Vec<&str> = keys.iter().map(|(name, _)| *name).collect();
            format!("unknown key {full} (valid keys here: {})", names.join(", "))
        }
    };
    SchemaIssue { path: full, message }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn quoted_list(items: &[&str]) -> String {
    items.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// A value that fits `shape` with every key present: used by tests to prove that the typed
/// structs accept everything this schema allows.
#[cfg(test)]
pub(crate) fn sample(shape: &Shape) -> Value {
    use serde_json::json;
    match shape {
        Shape::Str => json!("x/y"),
        Shape::Bool => json!(true),
        Shape::UInt(max) => json!((*max).min(7)),
        Shape::Enum(allowed) => json!(allowed[0]),
        Shape::Object(keys) => {
            Value::Object(keys.iter().map(|(k, s)| ((*k).to_string(), sample(s))).collect())
        }
        Shape::Map(inner) => json!({ "k": sample(inner) }),
        Shape::List(inner) => json!([sample(inner)]),
        Shape::StrOr(inner) => sample(inner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues_of(value: Value) -> Vec<SchemaIssue> {
        let mut issues = Vec::new();
        check(&value, &root(), "", &mut issues);
        issues
    }

    #[test]
    fn unknown_key_names_path_and_nearest_key() {
        let issues = issues_of(json!({"agents": {"defaults": {"modle": "a/b"}}}));
        assert_eq!(issues.len(), 1);
        assert_eq!(
            issues[0].message,
            "unknown key agents.defaults.modle (did you mean agents.defaults.model?)"
        );
        assert_eq!(issues[0].path, "agents.defaults.modle");
    }

    #[test]
    fn unknown_key_without_near_match_lists_valid_keys() {
        let issues = issues_of(json!({"logging": {"zzzzzzzz": 1}}));
        assert_eq!(
            issues[0].message,
            "unknown key logging.zzzzzzzz (valid keys here: level, format)"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let issues = issues_of(json!({
            "gateway": {"port": "80", "auth": {"mode": "magic"}},
            "models": {"providers": {"p": {"api": "x", "models": [{"id": 3}]}}},
            "agents": {"list": [{"id": "a", "timeoutSeconds": -1}]},
        }));
        let mut paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            vec![
                "agents.list[0].timeoutSeconds",
                "gateway.auth.mode",
                "gateway.port",
                "models.providers.p.api",
                "models.providers.p.models[0].id",
            ]
        );
    }

    #[test]
    fn model_accepts_string_or_object() {
        assert!(issues_of(json!({"agents": {"defaults": {"model": "a/b"}}})).is_empty());
        assert!(
            issues_of(
                json!({"agents": {"defaults": {"model": {"primary": "a/b", "fallbacks": ["c/d"]}}}})
            )
            .is_empty()
        );
        let issues = issues_of(json!({"agents": {"defaults": {"model": {"primry": "a/b"}}}}));
        assert_eq!(
            issues[0].message,
            "unknown key agents.defaults.model.primry (did you mean agents.defaults.model.primary?)"
        );
    }
}
