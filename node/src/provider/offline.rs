//! The offline provider `beamclaw/offline`: the default when no model is configured.
//!
//! Deterministic, no network, no key. It echoes the user's message with facts about the session
//! (message count, session key, model, node) so a first start shows the whole pipeline working;
//! `/tool <name> <json-args>` makes it call that tool, and it then answers from the tool result.
//! Every reply says it is the offline provider and how to configure a real model.

use super::{Provider, ProviderEvent, ProviderRequest, ProviderStream};
use crate::config::{
    ANTHROPIC_API_KEY_ENV, OFFLINE_MODEL_ID, OFFLINE_PROVIDER_ID, OPENAI_API_KEY_ENV, Secret,
};
use beamclaw_crdt::{ContentPart, Role, StopReason, Usage};

/// Characters per streamed delta.
pub const OFFLINE_DELTA_CHARS: usize = 24;
/// Longest user text echoed back, in characters.
pub const OFFLINE_ECHO_CHARS_MAX: usize = 2000;
/// The chat command that makes the offline provider call a tool.
pub const OFFLINE_TOOL_COMMAND: &str = "/tool";

/// How to leave offline mode; appended to every reply.
pub fn how_to_configure() -> String {
    format!(
        "This reply comes from the built-in offline provider ({OFFLINE_PROVIDER_ID}/{OFFLINE_MODEL_ID}): \
no model is configured, so nothing was sent to any network. To use a real model, set \
{ANTHROPIC_API_KEY_ENV} or {OPENAI_API_KEY_ENV} in the environment, or add to beamclaw.json5 in the \
data directory:\n\
  models: {{ providers: {{ anthropic: {{ apiKey: \"${{{ANTHROPIC_API_KEY_ENV}}}\" }} }} }},\n\
  agents: {{ defaults: {{ model: \"anthropic/claude-sonnet-4-5\" }} }}"
    )
}

#[derive(Debug, Default)]
pub struct OfflineProvider;

impl OfflineProvider {
    pub fn new() -> Self {
        OfflineProvider
    }
}

impl Provider for OfflineProvider {
    fn id(&self) -> &str {
        OFFLINE_PROVIDER_ID
    }

    fn needs_credential(&self) -> bool {
        false
    }

    fn stream(
        &self,
        request: &ProviderRequest<'_>,
        _credential: Option<&Secret>,
    ) -> ProviderStream {
        Box::pin(futures::stream::iter(reply(request).into_iter().map(Ok)))
    }
}

/// The whole reply as events (pure: the same request always gives the same events).
pub fn reply(request: &ProviderRequest<'_>) -> Vec<ProviderEvent> {
    let input_chars: usize =
        request.system.len() + request.messages.iter().map(|m| m.text_len()).sum::<usize>();
    let mut events = Vec::new();
    let last = request.messages.last();
    let tool_call =
        last.filter(|m| m.role == Role::User).and_then(|m| parse_tool_command(&m.text_content()));
    let text = match (last, tool_call) {
        (_, Some(Ok((name, args)))) => {
            let id = format!("offline-call-{}", request.messages.len());
            events.push(ProviderEvent::ToolCallStart { index: 0, id, name });
            let json = args.to_string();
            let (a, b) = json.split_at(json.len() / 2);
            for piece in [a, b].into_iter().filter(|p| !p.is_empty()) {
                events.push(ProviderEvent::ToolCallArgsDelta { index: 0, json: piece.to_string() });
            }
            events.push(ProviderEvent::ToolCallEnd { index: 0 });
            let output = (json.len() / 4 + 8) as u64;
            events.push(ProviderEvent::Usage(Usage {
                input: (input_chars / 4) as u64,
                output,
                ..Usage::default()
            }));
            events.push(ProviderEvent::Stop(StopReason::ToolUse));
            return events;
        }
        (_, Some(Err(problem))) => {
            format!("I could not read that tool command: {problem}.\n\n{}", facts(request))
        }
        (Some(m), None) if m.role == Role::ToolResult => {
            let mut lines = Vec::new();
            for part in &m.content {
                if let ContentPart::ToolResult { tool_name, content, is_error, .. } = part {
                    let outcome = if *is_error { "failed" } else { "returned" };
                    lines.push(format!("The tool `{tool_name}` {outcome}:\n{}", truncate(content)));
                }
            }
            format!("{}\n\n{}", lines.join("\n"), facts(request))
        }
        (Some(m), None) => {
            format!("You said: {}\n\n{}", truncate(&m.text_content()), facts(request))
        }
        (None, None) => format!("There is no message to answer.\n\n{}", facts(request)),
    };
    let text = format!("{text}\n\n{}", how_to_configure());
    let mut piece = String::new();
    for c in text.chars() {
        piece.push(c);
        if piece.chars().count() >= OFFLINE_DELTA_CHARS {
            events.push(ProviderEvent::TextDelta(std::mem::take(&mut piece)));
        }
    }
    if !piece.is_empty() {
        events.push(ProviderEvent::TextDelta(piece));
    }
    let usage = Usage {
        input: (input_chars / 4) as u64,
        output: (text.len() / 4) as u64,
        ..Usage::default()
    };
    events.push(ProviderEvent::Usage(usage));
    events.push(ProviderEvent::Stop(StopReason::Stop));
    events
}

fn facts(request: &ProviderRequest<'_>) -> String {
    let c = &request.context;
    let tools: Vec<&str> = request.tools.iter().map(|t| t.name.as_str()).collect();
    format!(
        "Session facts: session {session}, agent {agent}, {count} message(s) in context, model {OFFLINE_PROVIDER_ID}/{model}, node {node}, run {run}, tools available: {tools}. Try `{OFFLINE_TOOL_COMMAND} <name> {{\"arg\": 1}}` to see a tool call.",
        session = or_none(&c.session),
        agent = or_none(&c.agent_id),
        count = request.messages.len(),
        model = if request.model.is_empty() { OFFLINE_MODEL_ID } else { request.model },
        node = or_none(&c.node),
        run = or_none(&c.run_id),
        tools = if tools.is_empty() { "none".to_string() } else { tools.join(", ") },
    )
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= OFFLINE_ECHO_CHARS_MAX {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(OFFLINE_ECHO_CHARS_MAX).collect();
    cut.push_str(" [...]");
    cut
}

/// `/tool <name> [json-args]` -> (name, args); `None` when the text is not a tool command.
fn parse_tool_command(text: &str) -> Option<Result<(String, serde_json::Value), String>> {
    let rest = text.trim().strip_prefix(OFFLINE_TOOL_COMMAND)?;
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim();
    let (name, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if name.is_empty() {
        return Some(Err(format!("usage: {OFFLINE_TOOL_COMMAND} <name> <json-args>")));
    }
    let args = args.trim();
    let args = if args.is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        match serde_json::from_str::<serde_json::Value>(args) {
            Ok(v) if v.is_object() => v,
            Ok(_) => return Some(Err("the arguments must be a JSON object".into())),
            Err(e) => return Some(Err(format!("the arguments are not JSON ({e})"))),
        }
    };
    Some(Ok((name.to_string(), args)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ThinkingLevel;
    use crate::provider::RequestContext;
    use beamclaw_crdt::Message;

    /// The offline reply to a request carrying `messages`.
    fn reply_for(messages: Vec<Message>) -> Vec<ProviderEvent> {
        let context = RequestContext {
            session: "agent:main:main".into(),
            agent_id: "main".into(),
            node: "node-a".into(),
            run_id: "run-1".into(),
        };
        reply(&ProviderRequest {
            model: OFFLINE_MODEL_ID,
            system: "sys",
            messages: &messages.into_iter().map(std::sync::Arc::new).collect::<Vec<_>>(),
            tools: &[],
            max_tokens: 100,
            thinking: ThinkingLevel::Off,
            context: &context,
        })
    }

    fn text_of(events: &[ProviderEvent]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                ProviderEvent::TextDelta(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn echo_states_facts_and_how_to_configure_in_several_deltas() {
        let events = reply_for(vec![Message::user_text("u1", "hello there", 0)]);
        let deltas = events.iter().filter(|e| matches!(e, ProviderEvent::TextDelta(_))).count();
        assert!(deltas > 3, "{deltas} deltas");
        let text = text_of(&events);
        assert!(text.starts_with("You said: hello there"));
        for fact in [
            "agent:main:main",
            "1 message(s)",
            "beamclaw/offline",
            "node-a",
            "ANTHROPIC_API_KEY",
            "apiKey",
        ] {
            assert!(text.contains(fact), "missing {fact:?} in {text}");
        }
        assert_eq!(events.last(), Some(&ProviderEvent::Stop(StopReason::Stop)));
        assert_eq!(
            reply_for(vec![Message::user_text("u1", "hello there", 0)]),
            events,
            "deterministic"
        );
    }

    #[test]
    fn tool_command_emits_a_tool_call_then_answers_from_the_result() {
        let ask = Message::user_text("u1", "/tool read {\"path\": \"a.txt\"}", 0);
        let events = reply_for(vec![ask.clone()]);
        assert_eq!(
            events[0],
            ProviderEvent::ToolCallStart {
                index: 0,
                id: "offline-call-1".into(),
                name: "read".into()
            }
        );
        let args: String = events
            .iter()
            .filter_map(|e| match e {
                ProviderEvent::ToolCallArgsDelta { json, .. } => Some(json.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&args).unwrap(),
            serde_json::json!({"path": "a.txt"})
        );
        assert_eq!(events.last(), Some(&ProviderEvent::Stop(StopReason::ToolUse)));

        let mut result = Message::text("t1", Role::ToolResult, "", 1);
        result.content = vec![ContentPart::ToolResult {
            tool_call_id: "offline-call-1".into(),
            tool_name: "read".into(),
            content: "file body".into(),
            is_error: false,
        }];
        let text = text_of(&reply_for(vec![ask, result]));
        assert!(text.starts_with("The tool `read` returned:\nfile body"), "{text}");
        assert!(text.contains("offline provider"));
    }

    #[test]
    fn bad_tool_commands_are_explained() {
        let text = text_of(&reply_for(vec![Message::user_text("u", "/tool read [1]", 0)]));
        assert!(text.contains("must be a JSON object"), "{text}");
        assert!(parse_tool_command("/toolbox x").is_none());
    }
}
