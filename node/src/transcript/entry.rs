//! One `sessions.json` value (OpenClaw's SessionEntry) as session metadata.
//!
//! Settings map to the metadata of the same camelCase name (`label`, `displayName`,
//! `modelOverride`, `providerOverride`, `thinkingLevel`, `verboseLevel`, `reasoningLevel`,
//! `elevatedLevel`, `fastMode`, `queueMode`, `sendPolicy`, `channel`, `chatType`, `lastChannel`,
//! `lastTo`, `lastAccountId`, `lastThreadId`, `spawnedBy`, `spawnDepth`, `contextTokens`).
//! A field that is absent is left alone; one of the wrong type or over the metadata size limit is
//! ignored with a note. OpenClaw's `inputTokens`/`outputTokens`/`totalTokens` are its own rolling
//! figures: the document's counters are sums of per-turn usage, so the import adds up the usage
//! of the assistant messages it appends instead. Fields BeamClaw has no place for (`origin`,
//! `deliveryContext`, `skillsSnapshot`, `authProfileOverride`, `memoryFlushAt`, `systemSent`...)
//! are not imported.

use super::{Issue, IssueReason};
use beamclaw_crdt::doc::META_VALUE_BYTES_MAX;
use beamclaw_crdt::{FieldPatch, MetaPatch, SessionMeta};
use serde_json::{Map, Value};
use std::path::Path;

/// What a SessionEntry says about its session.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionSettings {
    /// The current transcript (`sessionId`).
    pub session_id: String,
    /// The settings to write (each set or left alone, never cleared).
    pub patch: MetaPatch,
    /// `sessionStartedAt`, milliseconds since the Unix epoch.
    pub started_at_ms: Option<i64>,
    /// `updatedAt`, milliseconds since the Unix epoch.
    pub updated_at_ms: Option<i64>,
    /// `compactionCount`.
    pub compaction_count: Option<u64>,
    /// `sessionFile`: a transcript path that overrides `<sessionId>.jsonl`.
    pub session_file: Option<String>,
    /// Fields ignored (wrong type, too long), as notes.
    pub notes: Vec<Issue>,
}

fn timestamp_ms(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f.round() as i64)),
        Value::String(s) => {
            chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
        }
        _ => None,
    }
}

struct Reader<'a> {
    file: &'a Path,
    key: &'a str,
    entry: &'a Map<String, Value>,
    notes: Vec<Issue>,
}

impl Reader<'_> {
    fn ignore(&mut self, field: &str, problem: impl Into<String>) {
        let reason = IssueReason::FieldIgnored {
            field: format!("{:?}.{field}", self.key),
            problem: problem.into(),
        };
        self.notes.push(Issue::note(self.file, None, reason));
    }

    fn string(&mut self, field: &str) -> FieldPatch<String> {
        let text = match self.entry.get(field) {
            None | Some(Value::Null) => return FieldPatch::Leave,
            Some(Value::String(text)) => text.clone(),
            // Thread ids are numbers on some channels (Telegram topics).
            Some(Value::Number(n)) if field == "lastThreadId" => n.to_string(),
            Some(_) => {
                self.ignore(field, "not a string");
                return FieldPatch::Leave;
            }
        };
        if text.len() > META_VALUE_BYTES_MAX {
            let problem = format!("{} bytes; at most {META_VALUE_BYTES_MAX} are kept", text.len());
            self.ignore(field, problem);
            return FieldPatch::Leave;
        }
        FieldPatch::Set(text)
    }

    fn bool(&mut self, field: &str) -> FieldPatch<bool> {
        match self.entry.get(field) {
            None | Some(Value::Null) => FieldPatch::Leave,
            Some(Value::Bool(b)) => FieldPatch::Set(*b),
            Some(_) => {
                self.ignore(field, "not true or false");
                FieldPatch::Leave
            }
        }
    }

    fn count(&mut self, field: &str) -> Option<u64> {
        match self.entry.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(_) => {
                self.ignore(field, "not a whole number");
                None
            }
        }
    }

    fn time(&mut self, field: &str) -> Option<i64> {
        let value = self.entry.get(field)?;
        if value.is_null() {
            return None;
        }
        let parsed = timestamp_ms(value);
        if parsed.is_none() {
            self.ignore(field, "not milliseconds since the epoch nor an ISO time");
        }
        parsed
    }
}

fn set_if(value: Option<u64>) -> FieldPatch<u64> {
    value.map_or(FieldPatch::Leave, FieldPatch::Set)
}

/// Reads the SessionEntry stored under `key` in `file`. An entry that is not an object or has
/// no `sessionId` is an issue: the session cannot be imported.
pub fn read_session_entry(file: &Path, key: &str, value: &Value) -> Result<SessionSettings, Issue> {
    let problem = |problem: &str| {
        let reason = IssueReason::Session { key: key.to_owned(), problem: problem.to_owned() };
        Issue::skipped(file, None, reason)
    };
    let Some(entry) = value.as_object() else {
        return Err(problem("the entry is not a JSON object"));
    };
    let session_id = match entry.get("sessionId") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => return Err(problem("the entry has no sessionId")),
    };
    let mut r = Reader { file, key, entry, notes: Vec::new() };
    let patch = MetaPatch {
        label: r.string("label"),
        display_name: r.string("displayName"),
        model_override: r.string("modelOverride"),
        provider_override: r.string("providerOverride"),
        thinking_level: r.string("thinkingLevel"),
        fast_mode: r.bool("fastMode"),
        verbose_level: r.string("verboseLevel"),
        reasoning_level: r.string("reasoningLevel"),
        elevated_level: r.string("elevatedLevel"),
        queue_mode: r.string("queueMode"),
        send_policy: r.string("sendPolicy"),
        channel: r.string("channel"),
        chat_type: r.string("chatType"),
        last_channel: r.string("lastChannel"),
        last_to: r.string("lastTo"),
        last_account_id: r.string("lastAccountId"),
        last_thread_id: r.string("lastThreadId"),
        spawned_by: r.string("spawnedBy"),
        spawn_depth: {
            let depth = r.count("spawnDepth");
            set_if(depth)
        },
        context_tokens: {
            let tokens = r.count("contextTokens");
            set_if(tokens)
        },
        deleted_at: FieldPatch::Leave,
    };
    let started_at_ms = r.time("sessionStartedAt");
    let updated_at_ms = r.time("updatedAt");
    let compaction_count = r.count("compactionCount");
    let session_file = match entry.get("sessionFile") {
        Some(Value::String(path)) if !path.is_empty() => Some(path.clone()),
        _ => None,
    };
    Ok(SessionSettings {
        session_id,
        patch,
        started_at_ms,
        updated_at_ms,
        compaction_count,
        session_file,
        notes: r.notes,
    })
}

fn unless_equal<T: PartialEq + Clone>(patch: &FieldPatch<T>, current: &Option<T>) -> FieldPatch<T> {
    match patch {
        FieldPatch::Set(value) if current.as_ref() == Some(value) => FieldPatch::Leave,
        other => other.clone(),
    }
}

/// The part of `patch` that changes `current`: a setting already at its value is left alone, so
/// that importing the same state again writes nothing.
pub fn patch_changes(patch: &MetaPatch, current: &SessionMeta) -> MetaPatch {
    MetaPatch {
        label: unless_equal(&patch.label, &current.label),
        display_name: unless_equal(&patch.display_name, &current.display_name),
        model_override: unless_equal(&patch.model_override, &current.model_override),
        provider_override: unless_equal(&patch.provider_override, &current.provider_override),
        thinking_level: unless_equal(&patch.thinking_level, &current.thinking_level),
        fast_mode: unless_equal(&patch.fast_mode, &current.fast_mode),
        verbose_level: unless_equal(&patch.verbose_level, &current.verbose_level),
        reasoning_level: unless_equal(&patch.reasoning_level, &current.reasoning_level),
        elevated_level: unless_equal(&patch.elevated_level, &current.elevated_level),
        queue_mode: unless_equal(&patch.queue_mode, &current.queue_mode),
        send_policy: unless_equal(&patch.send_policy, &current.send_policy),
        channel: unless_equal(&patch.channel, &current.channel),
        chat_type: unless_equal(&patch.chat_type, &current.chat_type),
        last_channel: unless_equal(&patch.last_channel, &current.last_channel),
        last_to: unless_equal(&patch.last_to, &current.last_to),
        last_account_id: unless_equal(&patch.last_account_id, &current.last_account_id),
        last_thread_id: unless_equal(&patch.last_thread_id, &current.last_thread_id),
        spawned_by: unless_equal(&patch.spawned_by, &current.spawned_by),
        spawn_depth: unless_equal(&patch.spawn_depth, &current.spawn_depth),
        context_tokens: unless_equal(&patch.context_tokens, &current.context_tokens),
        deleted_at: unless_equal(&patch.deleted_at, &current.deleted_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::Severity;
    use serde_json::json;

    fn read(value: Value) -> Result<SessionSettings, Issue> {
        read_session_entry(Path::new("sessions.json"), "agent:main:main", &value)
    }

    #[test]
    fn every_mirrored_field_is_read() {
        let settings = read(json!({
            "sessionId": "6c1f0000-0000-4000-8000-000000000001",
            "sessionStartedAt": 1_767_000_000_000_i64,
            "updatedAt": "2026-01-02T03:04:05.000Z",
            "label": "work", "displayName": "Work chat",
            "modelOverride": "claude-opus-4", "providerOverride": "anthropic",
            "thinkingLevel": "high", "verboseLevel": "on", "reasoningLevel": "stream",
            "elevatedLevel": "ask", "fastMode": true, "queueMode": "collect", "sendPolicy": "allow",
            "channel": "telegram", "chatType": "direct", "lastChannel": "telegram",
            "lastTo": "12345", "lastAccountId": "default", "lastThreadId": 42,
            "spawnedBy": "agent:main:main", "spawnDepth": 1, "contextTokens": 200000,
            "compactionCount": 3, "inputTokens": 10, "skillsSnapshot": {"x": 1},
        }))
        .unwrap();
        assert_eq!(settings.session_id, "6c1f0000-0000-4000-8000-000000000001");
        assert_eq!(settings.started_at_ms, Some(1_767_000_000_000));
        assert_eq!(settings.updated_at_ms, Some(1_767_323_045_000));
        assert_eq!(settings.compaction_count, Some(3));
        let p = &settings.patch;
        assert_eq!(p.label, FieldPatch::Set("work".into()));
        assert_eq!(p.display_name, FieldPatch::Set("Work chat".into()));
        assert_eq!(p.model_override, FieldPatch::Set("claude-opus-4".into()));
        assert_eq!(p.provider_override, FieldPatch::Set("anthropic".into()));
        assert_eq!(p.thinking_level, FieldPatch::Set("high".into()));
        assert_eq!(p.fast_mode, FieldPatch::Set(true));
        assert_eq!(p.queue_mode, FieldPatch::Set("collect".into()));
        assert_eq!(p.channel, FieldPatch::Set("telegram".into()));
        assert_eq!(p.chat_type, FieldPatch::Set("direct".into()));
        assert_eq!(p.last_thread_id, FieldPatch::Set("42".into()));
        assert_eq!(p.spawned_by, FieldPatch::Set("agent:main:main".into()));
        assert_eq!(p.spawn_depth, FieldPatch::Set(1));
        assert_eq!(p.context_tokens, FieldPatch::Set(200_000));
        assert_eq!(p.deleted_at, FieldPatch::Leave);
        assert!(settings.notes.is_empty(), "{:?}", settings.notes);
    }

    #[test]
    fn absent_fields_are_left_alone_and_bad_ones_ignored_with_a_note() {
        let settings = read(json!({
            "sessionId": "s1",
            "label": 7,
            "displayName": "x".repeat(META_VALUE_BYTES_MAX + 1),
            "spawnDepth": -1,
            "updatedAt": "yesterday",
        }))
        .unwrap();
        assert_eq!(settings.patch.label, FieldPatch::Leave);
        assert_eq!(settings.patch.display_name, FieldPatch::Leave);
        assert_eq!(settings.patch.spawn_depth, FieldPatch::Leave);
        assert_eq!(settings.patch.model_override, FieldPatch::Leave);
        assert_eq!(settings.updated_at_ms, None);
        assert_eq!(settings.notes.len(), 4, "{:?}", settings.notes);
        assert!(settings.notes.iter().all(|n| n.severity == Severity::Note));
        let text: Vec<String> = settings.notes.iter().map(ToString::to_string).collect();
        assert!(
            text[0].starts_with("sessions.json: \"agent:main:main\".label ignored"),
            "{text:?}"
        );
    }

    #[test]
    fn only_settings_that_differ_are_patched() {
        let patch = MetaPatch {
            label: FieldPatch::Set("same".into()),
            display_name: FieldPatch::Set("new".into()),
            spawn_depth: FieldPatch::Set(2),
            ..MetaPatch::default()
        };
        let current = SessionMeta {
            label: Some("same".into()),
            display_name: Some("old".into()),
            spawn_depth: Some(2),
            ..SessionMeta::default()
        };
        let changes = patch_changes(&patch, &current);
        assert_eq!(
            changes,
            MetaPatch { display_name: FieldPatch::Set("new".into()), ..MetaPatch::default() }
        );
        assert_eq!(
            patch_changes(&changes, &SessionMeta { display_name: Some("new".into()), ..current }),
            MetaPatch::default()
        );
    }

    #[test]
    fn an_entry_without_a_session_id_cannot_be_imported() {
        let error = read(json!({"label": "x"})).unwrap_err();
        assert_eq!(error.severity, Severity::Skipped);
        assert_eq!(
            error.to_string(),
            "sessions.json: session \"agent:main:main\": the entry has no sessionId"
        );
        assert!(read(json!("nope")).is_err());
    }
}
