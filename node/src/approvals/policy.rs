//! The exec approval policy: what a command needs before it runs.
//!
//! OpenClaw's rules: `security` `deny` refuses every command; `full` runs every command; with
//! `allowlist` a command runs when every binary it starts matches a pattern (a glob on the
//! resolved binary path) of the allowlist (the configured one plus the allow-always entries
//! operators granted). `ask` `always` asks an operator for every command, `on-miss` when the
//! allowlist does not cover it, `off` never (a miss is then refused). An unanswered question
//! falls back to `askFallback` (default `deny`).
//!
//! Safer than OpenClaw: the command is analysed conservatively. Pipelines and `&&`, `||`, `;`
//! chains are split and every segment's binary must match; anything the analysis cannot see
//! through (command substitution, subshells, redirections to files, variable expansion in
//! command position, background `&`, assignments before the command, shell keywords) is an
//! allowlist miss, never a match. Binaries are resolved through the node's `PATH` (absolute
//! entries only) and canonicalized, so a pattern matches the real file, not a symlink to it.

use crate::config::tools::{ExecAsk, ExecSecurity};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default wait for an operator's decision, in seconds.
pub const APPROVAL_TIMEOUT_SECONDS_DEFAULT: u64 = 120;
/// Segments (pipeline parts and chained commands) analysed per command.
pub const SEGMENTS_MAX: usize = 64;
/// Patterns in the configured allowlist.
pub const ALLOWLIST_PATTERNS_MAX: usize = 1024;

/// The approval policy of the node (`tools.exec`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalPolicy {
    pub security: ExecSecurity,
    pub ask: ExecAsk,
    pub ask_fallback: ExecSecurity,
    /// Configured globs on resolved binary paths.
    pub allowlist: Vec<String>,
    pub timeout: Duration,
}

impl Default for ApprovalPolicy {
    /// BeamClaw's default: allowlist with an empty list, ask on a miss, deny when unanswered.
    /// (OpenClaw runs host commands with `full` unless configured; asking first is safer.)
    fn default() -> Self {
        ApprovalPolicy {
            security: ExecSecurity::Allowlist,
            ask: ExecAsk::OnMiss,
            ask_fallback: ExecSecurity::Deny,
            allowlist: Vec::new(),
            timeout: Duration::from_secs(APPROVAL_TIMEOUT_SECONDS_DEFAULT),
        }
    }
}

impl ApprovalPolicy {
    pub fn from_config(exec: &crate::config::tools::ExecConfig) -> Self {
        let d = ApprovalPolicy::default();
        ApprovalPolicy {
            security: exec.security.unwrap_or(d.security),
            ask: exec.ask.unwrap_or(d.ask),
            ask_fallback: exec.ask_fallback.unwrap_or(d.ask_fallback),
            allowlist: exec.allowlist.iter().take(ALLOWLIST_PATTERNS_MAX).cloned().collect(),
            timeout: exec.approval_timeout_seconds.map(Duration::from_secs).unwrap_or(d.timeout),
        }
    }
}

/// One command of a pipeline or chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The command word as written.
    pub program: String,
    /// The binary it resolves to (canonical), when it resolves.
    pub resolved: Option<PathBuf>,
}

/// What the analysis saw in a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analysis {
    pub segments: Vec<Segment>,
    /// Why the command cannot be matched against an allowlist, if it cannot.
    pub problem: Option<String>,
}

impl Analysis {
    /// The resolved binaries (for allow-always).
    pub fn resolved_paths(&self) -> Vec<String> {
        self.segments
            .iter()
            .filter_map(|s| s.resolved.as_ref().map(|p| p.display().to_string()))
            .collect()
    }
}

/// Splits a command into segments and resolves each segment's binary.
pub fn analyze(command: &str, workdir: &Path, path_env: Option<&str>) -> Analysis {
    match split_segments(command) {
        Ok(words) => {
            let mut problem = None;
            let segments: Vec<Segment> = words
                .into_iter()
                .map(|program| {
                    let resolved = resolve_binary(&program, workdir, path_env);
                    if resolved.is_none() && problem.is_none() {
                        problem = Some(format!("{program:?} does not resolve to a binary"));
                    }
                    Segment { program, resolved }
                })
                .collect();
            Analysis { segments, problem }
        }
        Err(problem) => Analysis { segments: Vec::new(), problem: Some(problem) },
    }
}

const KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac",
    "function", "select", "!", "[[", "]]", "time", "coproc",
];

/// The command word of each segment, or why the command cannot be analysed.
pub fn split_segments(command: &str) -> Result<Vec<String>, String> {
    let mut segments: Vec<Vec<String>> = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars().peekable();
    let end_word = |word: &mut String, in_word: &mut bool, segments: &mut Vec<Vec<String>>| {
        if *in_word {
            if let Some(last) = segments.last_mut() {
                last.push(std::mem::take(word));
            }
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => word.push(ch),
                        None => return Err("an unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\')) => word.push(ch),
                            Some(_) | None => {
                                return Err("a backslash escape inside \" quotes".into());
                            }
                        },
                        Some('$') | Some('`') => {
                            return Err("an expansion ($ or `) inside \" quotes".into());
                        }
                        Some(ch) => word.push(ch),
                        None => return Err("an unterminated \" quote".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(ch) => {
                    in_word = true;
                    word.push(ch);
                }
                None => return Err("a trailing backslash".into()),
            },
            '`' => return Err("command substitution (`...`)".into()),
            '$' => {
                if matches!(chars.peek(), Some('(')) {
                    return Err("command substitution ($(...))".into());
                }
                // A variable is fine as an argument, never as the command word.
                let is_command_word = !in_word && segments.last().is_some_and(|s| s.is_empty());
                if is_command_word || (in_word && segments.last().is_some_and(|s| s.is_empty())) {
                    return Err("a variable expansion in the command word".into());
                }
                in_word = true;
                word.push('$');
            }
            '(' | ')' => return Err("a subshell or grouping ( ... )".into()),
            '<' | '>' => {
                // `N>&M` (descriptor duplication) and redirection to /dev/null write no file.
                let fd_dup = c == '>' && matches!(chars.peek(), Some('&'));
                if fd_dup {
                    chars.next();
                    let mut target = String::new();
                    while let Some(d) =
                        chars.peek().copied().filter(|d| d.is_ascii_digit() || *d == '-')
                    {
                        target.push(d);
                        chars.next();
                    }
                    if target.is_empty() {
                        return Err("a redirection (>&)".into());
                    }
                    if in_word && word.chars().all(|d| d.is_ascii_digit()) {
                        word.clear();
                        in_word = false;
                    }
                    continue;
                }
                if c == '<' && matches!(chars.peek(), Some('(')) {
                    return Err("process substitution <(...)".into());
                }
                if in_word && word.chars().all(|d| d.is_ascii_digit()) {
                    word.clear();
                    in_word = false;
                }
                if c == '>' && matches!(chars.peek(), Some('>')) {
                    chars.next();
                }
                while matches!(chars.peek(), Some(' ' | '\t')) {
                    chars.next();
                }
                let mut target = String::new();
                while let Some(t) =
                    chars.peek().copied().filter(|t| !t.is_whitespace() && !";|&<>()".contains(*t))
                {
                    target.push(t);
                    chars.next();
                }
                if target != "/dev/null" {
                    return Err(format!(
                        "a redirection to {target:?} (only /dev/null is analysable)"
                    ));
                }
            }
            '|' | ';' | '\n' | '&' => {
                end_word(&mut word, &mut in_word, &mut segments);
                match c {
                    '&' if matches!(chars.peek(), Some('&')) => {
                        chars.next();
                    }
                    '&' => return Err("a background job (&)".into()),
                    '|' if matches!(chars.peek(), Some('|')) => {
                        chars.next();
                    }
                    '|' if matches!(chars.peek(), Some('&')) => {
                        return Err("a |& pipe".into());
                    }
                    _ => {}
                }
                if segments.last().is_some_and(|s| s.is_empty()) {
                    if c == ';' || c == '\n' {
                        continue;
                    }
                    return Err("an empty command in a pipeline or chain".into());
                }
                segments.push(Vec::new());
                if segments.len() > SEGMENTS_MAX {
                    return Err(format!("more than {SEGMENTS_MAX} commands"));
                }
            }
            ' ' | '\t' => end_word(&mut word, &mut in_word, &mut segments),
            '#' if !in_word => {
                // A comment runs to the end of the line.
                for ch in chars.by_ref() {
                    if ch == '\n' {
                        break;
                    }
                }
                end_word(&mut word, &mut in_word, &mut segments);
                segments.push(Vec::new());
            }
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    end_word(&mut word, &mut in_word, &mut segments);
    let mut out = Vec::new();
    for words in segments.into_iter().filter(|s| !s.is_empty()) {
        let first = &words[0];
        if first.contains('=') && !first.starts_with('=') && !first.contains('/') {
            return Err("a variable assignment before the command".into());
        }
        if KEYWORDS.contains(&first.as_str()) || first == "{" || first == "}" {
            return Err(format!("the shell keyword {first:?}"));
        }
        out.push(first.clone());
    }
    if out.is_empty() {
        return Err("no command".into());
    }
    Ok(out)
}

/// The canonical binary `program` runs: relative to `workdir` when it has a `/`, else found in
/// the absolute entries of `path_env`.
pub fn resolve_binary(program: &str, workdir: &Path, path_env: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let p = workdir.join(program);
        return executable(&p).then(|| std::fs::canonicalize(&p).ok()).flatten();
    }
    for dir in path_env?.split(':').filter(|d| d.starts_with('/')) {
        let p = Path::new(dir).join(program);
        if executable(&p) {
            return std::fs::canonicalize(&p).ok();
        }
    }
    None
}

/// Whether `path` matches the glob `pattern`: `*` within one path segment, `**` across
/// segments, `?` one character; a leading `~/` is the home directory.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let expanded;
    let pattern = match (pattern.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) if !home.is_empty() => {
            expanded = format!("{}/{rest}", home.trim_end_matches('/'));
            expanded.as_str()
        }
        _ => pattern,
    };
    glob(pattern.as_bytes(), path.as_bytes())
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative matcher with backtracking on the last star (classic wildcard algorithm).
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize, bool)> = None; // (pattern index after star, s index, crosses '/')
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            let double = pi + 1 < p.len() && p[pi + 1] == b'*';
            pi += if double { 2 } else { 1 };
            star = Some((pi, si, double));
            continue;
        }
        if pi < p.len() && (p[pi] == s[si] || (p[pi] == b'?' && s[si] != b'/')) {
            pi += 1;
            si += 1;
            continue;
        }
        match star {
            Some((after, from, crosses)) if crosses || s[from] != b'/' => {
                star = Some((after, from + 1, crosses));
                pi = after;
                si = from + 1;
            }
            _ => return false,
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// What the policy says about one command before anyone is asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evaluation {
    Allow,
    Deny(String),
    /// Ask an operator; `allowlisted` says whether the allowlist covered it (for `askFallback:
    /// allowlist`).
    Ask {
        allowlisted: bool,
    },
}

/// Whether every segment's binary matches one of `patterns`.
pub fn allowlisted<'a>(
    analysis: &Analysis,
    patterns: impl Iterator<Item = &'a String> + Clone,
) -> bool {
    analysis.problem.is_none()
        && !analysis.segments.is_empty()
        && analysis.segments.iter().all(|s| {
            s.resolved.as_ref().is_some_and(|r| {
                let r = r.display().to_string();
                patterns.clone().any(|p| glob_match(p, &r))
            })
        })
}

/// The policy's verdict for a command, given whether the allowlist covers it.
pub fn evaluate(policy: &ApprovalPolicy, analysis: &Analysis, allowlisted: bool) -> Evaluation {
    match (policy.security, policy.ask) {
        (ExecSecurity::Deny, _) => Evaluation::Deny(
            "exec is disabled on this node (tools.exec.security is \"deny\")".into(),
        ),
        (_, ExecAsk::Always) => Evaluation::Ask { allowlisted },
        (ExecSecurity::Full, _) => Evaluation::Allow,
        (ExecSecurity::Allowlist, _) if allowlisted => Evaluation::Allow,
        (ExecSecurity::Allowlist, ExecAsk::Off) => Evaluation::Deny(format!(
            "the command is not covered by the exec allowlist ({}); tools.exec.ask is \"off\", so nobody can approve it",
            miss_reason(analysis)
        )),
        (ExecSecurity::Allowlist, ExecAsk::OnMiss) => Evaluation::Ask { allowlisted },
    }
}

/// Why the allowlist did not cover a command, for messages.
pub fn miss_reason(analysis: &Analysis) -> String {
    if let Some(problem) = &analysis.problem {
        return format!("it contains {problem}");
    }
    let unmatched: Vec<String> = analysis
        .segments
        .iter()
        .map(|s| s.resolved.as_ref().map(|p| p.display().to_string()).unwrap_or(s.program.clone()))
        .collect();
    format!("binaries: {}", unmatched.join(", "))
}

/// What happens when nobody answered: `askFallback` decides.
pub fn fallback(policy: &ApprovalPolicy, allowlisted: bool) -> bool {
    match policy.ask_fallback {
        ExecSecurity::Deny => false,
        ExecSecurity::Allowlist => allowlisted,
        ExecSecurity::Full => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(security: ExecSecurity, ask: ExecAsk) -> ApprovalPolicy {
        ApprovalPolicy { security, ask, ..ApprovalPolicy::default() }
    }

    #[test]
    fn split_segments_accepts_plain_chains_and_refuses_what_it_cannot_see_through() {
        assert_eq!(
            split_segments("ls -la | grep x && echo 'a b' ; wc").unwrap(),
            vec!["ls", "grep", "echo", "wc"]
        );
        assert_eq!(split_segments("make 2>&1 > /dev/null").unwrap(), vec!["make"]);
        assert_eq!(split_segments("echo $HOME").unwrap(), vec!["echo"]);
        for bad in [
            "echo $(id)",
            "echo `id`",
            "ls > out.txt",
            "cat < /etc/shadow",
            "sleep 1 &",
            "(rm -rf /)",
            "FOO=1 ls",
            "$CMD arg",
            "if true; then ls; fi",
            "diff <(a) <(b)",
            "echo \"$(id)\"",
            "ls |& cat",
        ] {
            assert!(split_segments(bad).is_err(), "{bad:?} must not be analysable");
        }
    }

    #[test]
    fn glob_matches_resolved_paths() {
        assert!(glob_match("/usr/bin/ls", "/usr/bin/ls"));
        assert!(!glob_match("/usr/bin/ls", "/usr/bin/lsblk"));
        assert!(glob_match("/usr/bin/*", "/usr/bin/git"));
        assert!(!glob_match("/usr/*", "/usr/bin/git"), "* stays within a segment");
        assert!(glob_match("/usr/**", "/usr/bin/git"));
        assert!(glob_match("/usr/bin/python3*", "/usr/bin/python3.12"));
        assert!(glob_match("/usr/bin/l?", "/usr/bin/ls"));
        assert!(!glob_match("/usr/bin/l?", "/usr/bin/l/"));
    }

    #[test]
    fn binaries_resolve_through_absolute_path_entries_only() {
        let sh = resolve_binary("sh", Path::new("/"), Some("relative/dir:/usr/bin:/bin")).unwrap();
        assert!(sh.is_absolute());
        assert!(resolve_binary("sh", Path::new("/"), Some("relative/dir")).is_none());
        assert!(
            resolve_binary("definitely-not-a-binary-xyz", Path::new("/"), Some("/usr/bin:/bin"))
                .is_none()
        );
    }

    #[test]
    fn policy_follows_openclaw_rules() {
        let a = analyze("ls", Path::new("/"), Some("/usr/bin:/bin"));
        use ExecAsk::*;
        use ExecSecurity::*;
        assert!(matches!(evaluate(&policy(Deny, Always), &a, true), Evaluation::Deny(_)));
        assert_eq!(evaluate(&policy(Full, Off), &a, false), Evaluation::Allow);
        assert_eq!(evaluate(&policy(Full, OnMiss), &a, false), Evaluation::Allow);
        assert_eq!(
            evaluate(&policy(Full, Always), &a, true),
            Evaluation::Ask { allowlisted: true }
        );
        assert_eq!(evaluate(&policy(Allowlist, Off), &a, true), Evaluation::Allow);
        assert!(matches!(evaluate(&policy(Allowlist, Off), &a, false), Evaluation::Deny(_)));
        assert_eq!(evaluate(&policy(Allowlist, OnMiss), &a, true), Evaluation::Allow);
        assert_eq!(
            evaluate(&policy(Allowlist, OnMiss), &a, false),
            Evaluation::Ask { allowlisted: false }
        );
        assert_eq!(
            evaluate(&policy(Allowlist, Always), &a, true),
            Evaluation::Ask { allowlisted: true }
        );
        let mut p = ApprovalPolicy::default();
        assert!(!fallback(&p, true), "askFallback defaults to deny");
        p.ask_fallback = Allowlist;
        assert!(fallback(&p, true) && !fallback(&p, false));
        p.ask_fallback = Full;
        assert!(fallback(&p, false));
    }

    #[test]
    fn allowlist_needs_every_segment_to_match() {
        let a = analyze("ls | sh", Path::new("/"), Some("/usr/bin:/bin"));
        let ls = a.segments[0].resolved.clone().unwrap().display().to_string();
        let only_ls = [ls.clone()];
        assert!(!allowlisted(&a, only_ls.iter()));
        let both = [ls, a.segments[1].resolved.clone().unwrap().display().to_string()];
        assert!(allowlisted(&a, both.iter()));
        let bad = analyze("ls > /etc/x", Path::new("/"), Some("/usr/bin:/bin"));
        assert!(!allowlisted(&bad, ["/**".to_string()].iter()));
    }
}
