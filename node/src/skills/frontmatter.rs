//! Reading a `SKILL.md`: the YAML frontmatter between `---` lines, and the OpenClaw manifest in
//! its `metadata` key.
//!
//! OpenClaw writes `metadata` as a JSON5 flow mapping, often over many indented lines with
//! trailing commas (`metadata:\n  {\n    "openclaw": { "requires": { "bins": ["gh"] }, },\n  }`),
//! and reads it by taking the raw text and handing it to JSON5. A YAML parser is not trusted
//! with that text: the `metadata` lines are cut out first and parsed with `json5`; the rest of
//! the frontmatter goes to the YAML parser (yaml-rust2). When the rest is not valid YAML (often
//! an unquoted `: ` inside a description), it is read line by line as OpenClaw does, and the
//! skill carries a warning saying so.
//!
//! Safer than OpenClaw: a `metadata` block that parses neither as JSON5 nor as YAML makes the
//! skill invalid (OpenClaw silently drops the manifest, so a skill with unreadable requirements
//! would look ready).

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

/// Largest frontmatter read, in bytes.
pub const FRONTMATTER_BYTES_MAX: usize = 64 * 1024;
/// Longest skill name, in characters (AgentSkills spec).
pub const NAME_CHARS_MAX: usize = 64;
/// Longest description, in characters (AgentSkills spec).
pub const DESCRIPTION_CHARS_MAX: usize = 1024;
/// Items read from one list in the manifest (bins, env, os, install...).
pub const MANIFEST_LIST_ITEMS_MAX: usize = 64;
/// The manifest key, then the legacy one (OpenClaw was called Clawdbot).
pub const MANIFEST_KEY: &str = "openclaw";
pub const LEGACY_MANIFEST_KEY: &str = "clawdbot";

/// Why a `SKILL.md` cannot be used; the message says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrontmatterError {
    #[error("SKILL.md does not start with a `---` frontmatter line")]
    NoFrontmatter,
    #[error("the frontmatter has no closing `---` line")]
    Unclosed,
    #[error("the frontmatter is {bytes} bytes; at most {FRONTMATTER_BYTES_MAX} are read")]
    TooLarge { bytes: usize },
    #[error(
        "the frontmatter has no description{yaml}; add `description: <when to use this skill>`"
    )]
    NoDescription { yaml: String },
    #[error("the description is {chars} characters; at most {DESCRIPTION_CHARS_MAX} are allowed")]
    DescriptionTooLong { chars: usize },
    #[error(
        "the name {name:?} is not usable: it must be 1-{NAME_CHARS_MAX} characters without control characters"
    )]
    BadName { name: String },
    #[error("`metadata` is neither JSON5 nor YAML: {0}")]
    Metadata(String),
    #[error("`metadata.{key}` must be an object, found {found}")]
    ManifestShape { key: &'static str, found: String },
}

/// `requires` of the manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requires {
    pub bins: Vec<String>,
    pub any_bins: Vec<String>,
    pub env: Vec<String>,
    pub config: Vec<String>,
}

/// One install option, as shown to operators (BeamClaw never runs installers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstallOption {
    pub id: String,
    pub kind: String,
    pub label: String,
    pub bins: Vec<String>,
}

/// `metadata.openclaw` (or `metadata.clawdbot`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub always: bool,
    pub emoji: Option<String>,
    pub homepage: Option<String>,
    pub skill_key: Option<String>,
    pub primary_env: Option<String>,
    pub os: Vec<String>,
    pub requires: Requires,
    pub install: Vec<InstallOption>,
    /// The manifest was found under the legacy `clawdbot` key.
    pub legacy_key: bool,
}

/// What the frontmatter says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontmatter {
    /// `None` when the frontmatter has no name (the folder's name is used then).
    pub name: Option<String>,
    pub description: String,
    pub homepage: Option<String>,
    pub user_invocable: bool,
    pub disable_model_invocation: bool,
    pub command_dispatch: Option<String>,
    pub command_tool: Option<String>,
    pub manifest: Option<Manifest>,
    /// Things that are not fatal but the operator should know.
    pub warnings: Vec<String>,
}

/// The frontmatter block of `text` (without the `---` lines), CRLF normalized.
fn block(text: &str) -> Result<String, FrontmatterError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let normalized = text.replace("\r\n", "\n");
    let mut lines = normalized.split('\n');
    if lines.next().map(str::trim_end) != Some("---") {
        return Err(FrontmatterError::NoFrontmatter);
    }
    let mut out = String::new();
    for line in lines {
        if line.trim_end() == "---" {
            return Ok(out);
        }
        if out.len() + line.len() + 1 > FRONTMATTER_BYTES_MAX {
            return Err(FrontmatterError::TooLarge { bytes: out.len() + line.len() + 1 });
        }
        out.push_str(line);
        out.push('\n');
    }
    Err(FrontmatterError::Unclosed)
}

/// Cuts the top-level `metadata:` entry out of the frontmatter. Returns the rest and the raw
/// metadata text (the inline value, or the indented lines under the key, joined).
fn split_metadata(block: &str) -> (String, Option<String>) {
    let mut rest = String::new();
    let mut raw: Option<String> = None;
    let mut lines = block.split('\n').peekable();
    while let Some(line) = lines.next() {
        let Some(value) = line.strip_prefix("metadata:") else {
            rest.push_str(line);
            rest.push('\n');
            continue;
        };
        let inline = value.trim();
        let mut continuation = Vec::new();
        while let Some(next) = lines.peek() {
            let indented = next.starts_with(' ') || next.starts_with('\t');
            // A flow mapping may close at column 0 (`}`), which YAML would refuse but JSON5
            // reads; take it too when the inline part opened one.
            let closing = next.starts_with('}') && inline.starts_with('{');
            if indented || next.trim().is_empty() || closing {
                continuation.push(*next);
                lines.next();
                if closing {
                    break;
                }
            } else {
                break;
            }
        }
        let body = continuation.join("\n");
        let text = match inline {
            "" | "|" | "|-" | "|+" | ">" | ">-" | ">+" => body.trim().to_string(),
            _ if continuation.iter().all(|l| l.trim().is_empty()) => inline.to_string(),
            _ => format!("{inline}\n{body}").trim().to_string(),
        };
        raw = Some(text);
    }
    (rest, raw)
}

fn yaml_to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s.parse::<f64>().ok().map(Value::from).unwrap_or(Value::String(s.clone())),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .filter_map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        Yaml::Real(r) => r.clone(),
                        _ => return None,
                    };
                    Some((key, yaml_to_json(v)))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
    }
}

/// Parses YAML text holding one mapping.
fn yaml_mapping(text: &str) -> Result<serde_json::Map<String, Value>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    match docs.first().map(yaml_to_json) {
        None | Some(Value::Null) => Ok(serde_json::Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(other) => Err(format!("expected `key: value` lines, found {}", kind_of(&other))),
    }
}

/// OpenClaw's fallback for frontmatter that is not valid YAML: `key: value` lines, quotes
/// stripped, indented continuation lines ignored.
fn line_mapping(text: &str) -> serde_json::Map<String, Value> {
    let mut map = serde_json::Map::new();
    for line in text.split('\n') {
        if line.starts_with(' ') || line.starts_with('\t') {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else { continue };
        let key = key.trim();
        let valid_key = !key.is_empty()
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_key {
            continue;
        }
        let value = value.trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        if !unquoted.is_empty() {
            map.insert(key.to_string(), Value::String(unquoted.to_string()));
        }
    }
    map
}

fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn string_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn bool_of(v: Option<&Value>, default: bool) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => true,
            "false" | "no" | "off" | "0" => false,
            _ => default,
        },
        Some(Value::Number(n)) => n.as_i64().map(|n| n != 0).unwrap_or(default),
        _ => default,
    }
}

/// A list of strings from a list or a comma-separated string, capped.
fn list_of(v: Option<&Value>) -> Vec<String> {
    let items: Vec<String> = match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| match i {
                Value::String(s) => Some(s.trim().to_string()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        Some(Value::String(s)) => s.split(',').map(|p| p.trim().to_string()).collect(),
        _ => Vec::new(),
    };
    items.into_iter().filter(|s| !s.is_empty()).take(MANIFEST_LIST_ITEMS_MAX).collect()
}

/// Parses the raw `metadata` text: JSON5 first (what OpenClaw writes), then YAML (a block
/// mapping some authors write instead).
pub fn parse_metadata(raw: &str) -> Result<Value, FrontmatterError> {
    match json5::from_str::<Value>(raw) {
        Ok(v) => Ok(v),
        Err(json5_error) => match yaml_mapping(raw) {
            Ok(map) if !map.is_empty() => Ok(Value::Object(map)),
            _ => Err(FrontmatterError::Metadata(json5_error.to_string())),
        },
    }
}

/// The manifest inside parsed metadata: `openclaw`, else the legacy `clawdbot`.
pub fn manifest_of(metadata: &Value) -> Result<Option<Manifest>, FrontmatterError> {
    let (key, legacy) = if metadata.get(MANIFEST_KEY).is_some_and(|v| !v.is_null()) {
        (MANIFEST_KEY, false)
    } else if metadata.get(LEGACY_MANIFEST_KEY).is_some_and(|v| !v.is_null()) {
        (LEGACY_MANIFEST_KEY, true)
    } else {
        return Ok(None);
    };
    let Some(m) = metadata.get(key).and_then(Value::as_object) else {
        let found = metadata.get(key).map(kind_of).unwrap_or_default();
        return Err(FrontmatterError::ManifestShape { key, found });
    };
    let requires = m.get("requires").and_then(Value::as_object);
    let req = |k: &str| list_of(requires.and_then(|r| r.get(k)));
    let install = match m.get("install") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_object)
            .take(MANIFEST_LIST_ITEMS_MAX)
            .map(|o| InstallOption {
                id: string_of(o.get("id")).unwrap_or_default(),
                kind: string_of(o.get("kind")).unwrap_or_default(),
                label: string_of(o.get("label")).unwrap_or_default(),
                bins: list_of(o.get("bins")),
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Some(Manifest {
        always: m.get("always").and_then(Value::as_bool).unwrap_or(false),
        emoji: string_of(m.get("emoji")),
        homepage: string_of(m.get("homepage")),
        skill_key: string_of(m.get("skillKey")),
        primary_env: string_of(m.get("primaryEnv")),
        os: list_of(m.get("os")).into_iter().map(|s| s.to_ascii_lowercase()).collect(),
        requires: Requires {
            bins: req("bins"),
            any_bins: req("anyBins"),
            env: req("env"),
            config: req("config"),
        },
        install,
        legacy_key: legacy,
    }))
}

/// Parses the frontmatter of a `SKILL.md`.
pub fn parse(text: &str) -> Result<Frontmatter, FrontmatterError> {
    let block = block(text)?;
    let (rest, raw_metadata) = split_metadata(&block);
    let mut warnings = Vec::new();
    let (map, yaml_error) = match yaml_mapping(&rest) {
        Ok(map) => (map, None),
        Err(e) => {
            warnings.push(format!(
                "the frontmatter is not valid YAML ({e}); it was read line by line as OpenClaw does"
            ));
            (line_mapping(&rest), Some(e))
        }
    };
    let description = string_of(map.get("description")).unwrap_or_default();
    if description.is_empty() {
        let yaml = yaml_error.map(|e| format!(" (it is not valid YAML: {e})")).unwrap_or_default();
        return Err(FrontmatterError::NoDescription { yaml });
    }
    let chars = description.chars().count();
    if chars > DESCRIPTION_CHARS_MAX {
        return Err(FrontmatterError::DescriptionTooLong { chars });
    }
    let name = string_of(map.get("name"));
    if let Some(n) = &name
        && (n.chars().count() > NAME_CHARS_MAX || n.chars().any(char::is_control))
    {
        return Err(FrontmatterError::BadName { name: n.clone() });
    }
    let manifest = match raw_metadata.as_deref() {
        None | Some("") => None,
        Some(raw) => manifest_of(&parse_metadata(raw)?)?,
    };
    Ok(Frontmatter {
        name,
        description,
        homepage: string_of(map.get("homepage")),
        user_invocable: bool_of(map.get("user-invocable"), true),
        disable_model_invocation: bool_of(map.get("disable-model-invocation"), false),
        command_dispatch: string_of(map.get("command-dispatch")),
        command_tool: string_of(map.get("command-tool")),
        manifest,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_json5_metadata_with_trailing_commas_is_read() {
        let text = "---\nname: github\ndescription: \"Interact with GitHub using the `gh` CLI.\"\nmetadata:\n  {\n    \"openclaw\":\n      {\n        \"emoji\": \"🐙\",\n        \"requires\": { \"bins\": [\"gh\"] },\n        \"install\":\n          [\n            {\n              \"id\": \"brew\",\n              \"kind\": \"brew\",\n              \"formula\": \"gh\",\n              \"bins\": [\"gh\"],\n              \"label\": \"Install GitHub CLI (brew)\",\n            },\n          ],\n      },\n  }\n---\n\n# GitHub\n";
        let fm = parse(text).unwrap();
        assert_eq!(fm.name.as_deref(), Some("github"));
        let m = fm.manifest.unwrap();
        assert_eq!(m.requires.bins, vec!["gh"]);
        assert_eq!(m.emoji.as_deref(), Some("🐙"));
        assert_eq!(m.install[0].label, "Install GitHub CLI (brew)");
        assert!(!m.legacy_key);
    }

    #[test]
    fn one_line_legacy_clawdbot_metadata_is_read() {
        let text = "---\nname: radarr\ndescription: Search movies\nmetadata: {\"clawdbot\":{\"emoji\":\"🎬\",\"requires\":{\"bins\":[\"curl\",\"jq\"]},\"os\":[\"linux\",\"darwin\"]}}\n---\nbody";
        let m = parse(text).unwrap().manifest.unwrap();
        assert!(m.legacy_key);
        assert_eq!(m.requires.bins, vec!["curl", "jq"]);
        assert_eq!(m.os, vec!["linux", "darwin"]);
    }

    #[test]
    fn unquoted_colon_falls_back_to_lines_with_a_warning() {
        let text = "---\nname: x\ndescription: Use when: you need it\n---\n";
        let fm = parse(text).unwrap();
        assert_eq!(fm.description, "Use when: you need it");
        assert_eq!(fm.warnings.len(), 1, "{:?}", fm.warnings);
    }

    #[test]
    fn broken_metadata_and_missing_description_are_errors() {
        let text =
            "---\nname: x\ndescription: d\nmetadata: { \"openclaw\": { \"requires\": [ } }\n---\n";
        assert!(matches!(parse(text), Err(FrontmatterError::Metadata(_))));
        assert!(matches!(
            parse("---\nname: x\n---\n"),
            Err(FrontmatterError::NoDescription { .. })
        ));
        assert_eq!(parse("# no frontmatter"), Err(FrontmatterError::NoFrontmatter));
        assert_eq!(parse("---\nname: x\n"), Err(FrontmatterError::Unclosed));
    }

    #[test]
    fn block_yaml_metadata_and_comma_lists_are_read() {
        let text = "---\nname: y\ndescription: d\nuser-invocable: \"false\"\nmetadata:\n  openclaw:\n    requires:\n      env: A_KEY, B_KEY\n---\n";
        let fm = parse(text).unwrap();
        assert!(!fm.user_invocable);
        assert_eq!(fm.manifest.unwrap().requires.env, vec!["A_KEY", "B_KEY"]);
    }
}
