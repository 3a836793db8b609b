//! `exec`: a shell command in the workspace, in its own process group, behind exec approvals.
//!
//! Arguments (OpenClaw's): `command`, `workdir` (relative to the workspace, must stay inside
//! it), `env`, `timeoutSeconds`, `yieldMs` (after this long a running command moves to the
//! background and the tool returns its job id; manage it with `process`), `background` (move to
//! the background at once). Output (stdout and stderr as they arrive) is capped at
//! [`EXEC_OUTPUT_BYTES_MAX`] with a truncation notice (the newest output is kept).
//!
//! On timeout, on abort of the turn (the cancel token, or the tool's future being dropped) and
//! on `process kill`, the whole process group is killed.
//!
//! Safer than OpenClaw: the child gets the node's environment without BeamClaw's and OpenClaw's
//! own variables and provider keys ([`ENV_INHERIT_DENIED`]), and a model may not set loader,
//! shell-startup or `PATH` variables ([`ENV_SET_DENIED`]): approvals match the binary resolved
//! through the node's `PATH`, which the command must not be able to change underneath them.

use super::fs::Workspace;
use super::process::{ForegroundGuard, JobStatus, ProcessRegistry, SpawnSpec};
use super::{Tool, ToolContext, ToolOutput};
use beamclaw_crdt::SessionKey;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Default `timeoutSeconds` (OpenClaw's).
pub const EXEC_TIMEOUT_SECONDS_DEFAULT: u64 = 1800;
/// Largest `timeoutSeconds` accepted.
pub const EXEC_TIMEOUT_SECONDS_MAX: u64 = 24 * 3600;
/// Default `yieldMs` (OpenClaw's `backgroundMs`).
pub const EXEC_YIELD_MS_DEFAULT: u64 = 10_000;
/// Output a finished `exec` returns, in bytes (the newest; older output is cut with a notice).
pub const EXEC_OUTPUT_BYTES_MAX: usize = 200 * 1024;
/// Longest command, in bytes.
pub const EXEC_COMMAND_BYTES_MAX: usize = 32 * 1024;
/// Most variables in `env`, and their total size in bytes.
pub const EXEC_ENV_VARS_MAX: usize = 64;
pub const EXEC_ENV_BYTES_MAX: usize = 64 * 1024;
/// The shell commands run under.
pub const EXEC_SHELL: &str = "/bin/sh";

/// Variables of the node's environment that children never inherit (prefixes end in `_`).
pub const ENV_INHERIT_DENIED: &[&str] =
    &["BEAMCLAW_", "OPENCLAW_", "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_AUTH_TOKEN"];
/// Variables a model may not set through `env` (prefixes end in `_`).
pub const ENV_SET_DENIED: &[&str] = &[
    "PATH",
    "LD_",
    "DYLD_",
    "BASH_ENV",
    "ENV",
    "BASH_FUNC_",
    "SHELLOPTS",
    "BASHOPTS",
    "IFS",
    "PS4",
    "PROMPT_COMMAND",
    "BEAMCLAW_",
    "OPENCLAW_",
];

fn listed(list: &[&str], key: &str) -> bool {
    list.iter().any(|p| if p.ends_with('_') { key.starts_with(p) } else { key == *p })
}

/// An exec about to run, as the approvals gate sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    pub command: String,
    /// Canonical working directory (inside the workspace).
    pub workdir: PathBuf,
    /// The `PATH` the command's binaries are resolved through.
    pub path_env: Option<String>,
    pub session: SessionKey,
    pub agent_id: String,
    pub run_id: String,
}

/// The gate's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateVerdict {
    Allow,
    Deny { reason: String },
}

/// Decides whether a command may run (exec approvals). Implemented by `crate::approvals`.
pub trait ExecGate: Send + Sync {
    /// May wait (for an operator); must return promptly once `cancel` fires.
    fn check<'a>(
        &'a self,
        request: ExecRequest,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, GateVerdict>;
}

/// A gate that allows everything (`security: "full"`, `ask: "off"`); for tests and tools
/// invoked where approvals do not apply.
pub struct AllowAll;

impl ExecGate for AllowAll {
    fn check<'a>(&'a self, _: ExecRequest, _: &'a CancellationToken) -> BoxFuture<'a, GateVerdict> {
        Box::pin(async { GateVerdict::Allow })
    }
}

/// Node-wide exec settings (`tools.exec`).
#[derive(Clone, Debug)]
pub struct ExecSettings {
    pub timeout_default: Duration,
    pub yield_default: Duration,
}

impl Default for ExecSettings {
    fn default() -> Self {
        ExecSettings {
            timeout_default: Duration::from_secs(EXEC_TIMEOUT_SECONDS_DEFAULT),
            yield_default: Duration::from_millis(EXEC_YIELD_MS_DEFAULT),
        }
    }
}

pub struct ExecTool {
    settings: ExecSettings,
    gate: Arc<dyn ExecGate>,
    processes: Arc<ProcessRegistry>,
}

impl ExecTool {
    pub fn new(
        settings: ExecSettings,
        gate: Arc<dyn ExecGate>,
        processes: Arc<ProcessRegistry>,
    ) -> Self {
        ExecTool { settings, gate, processes }
    }
}

/// The parsed arguments.
#[derive(Debug)]
struct ExecArgs {
    command: String,
    workdir: Option<String>,
    env: BTreeMap<String, String>,
    timeout: Duration,
    yield_after: Duration,
    background: bool,
}

fn parse_args(args: &Value, settings: &ExecSettings) -> Result<ExecArgs, String> {
    let command = args
        .get("command")
        .and_then(Value::as_str)
        .ok_or("missing string argument \"command\"")?
        .to_string();
    if command.trim().is_empty() {
        return Err("command is empty".into());
    }
    if command.len() > EXEC_COMMAND_BYTES_MAX {
        return Err(format!(
            "command is {} bytes; at most {EXEC_COMMAND_BYTES_MAX} are allowed",
            command.len()
        ));
    }
    if command.contains('\0') {
        return Err("command contains a NUL byte".into());
    }
    let workdir = match args.get("workdir").or_else(|| args.get("cwd")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() || s == "." => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("workdir must be a string".into()),
    };
    let mut env = BTreeMap::new();
    match args.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            if map.len() > EXEC_ENV_VARS_MAX {
                return Err(format!(
                    "env has {} variables; at most {EXEC_ENV_VARS_MAX}",
                    map.len()
                ));
            }
            let mut bytes = 0usize;
            for (k, v) in map {
                let Some(v) = v.as_str() else {
                    return Err(format!("env.{k} must be a string"));
                };
                if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                    return Err(format!("env key {k:?} is not a valid variable name"));
                }
                if listed(ENV_SET_DENIED, k) {
                    return Err(format!(
                        "env.{k} may not be set (loader, shell start-up, PATH and BeamClaw variables are refused)"
                    ));
                }
                bytes += k.len() + v.len();
                env.insert(k.clone(), v.to_string());
            }
            if bytes > EXEC_ENV_BYTES_MAX {
                return Err(format!("env is {bytes} bytes; at most {EXEC_ENV_BYTES_MAX}"));
            }
        }
        Some(_) => return Err("env must be an object of strings".into()),
    }
    let timeout = match args.get("timeoutSeconds").or_else(|| args.get("timeout")) {
        None | Some(Value::Null) => settings.timeout_default,
        Some(v) => match v.as_u64() {
            Some(s) if (1..=EXEC_TIMEOUT_SECONDS_MAX).contains(&s) => Duration::from_secs(s),
            _ => {
                return Err(format!(
                    "timeoutSeconds must be an integer from 1 to {EXEC_TIMEOUT_SECONDS_MAX}"
                ));
            }
        },
    };
    let yield_after = match args.get("yieldMs") {
        None | Some(Value::Null) => settings.yield_default,
        Some(v) => {
            Duration::from_millis(v.as_u64().ok_or("yieldMs must be a non-negative integer")?)
        }
    };
    let background = args.get("background").and_then(Value::as_bool).unwrap_or(false);
    Ok(ExecArgs { command, workdir, env, timeout, yield_after, background })
}

/// The child's environment: the node's, minus what children never inherit, plus `extra`.
pub fn child_env(extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> =
        std::env::vars().filter(|(k, _)| !listed(ENV_INHERIT_DENIED, k)).collect();
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

impl Tool for ExecTool {
    fn name(&self) -> &str {
        "exec"
    }
    fn description(&self) -> &str {
        "Run a shell command (sh -c) in the workspace. Returns its output and exit code. Commands still running after yieldMs (default 10000) continue in the background: use the process tool with the returned sessionId to poll or kill them. Set background: true to start in the background at once. May need an operator's approval."
    }
    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "Shell command"},
                "workdir": {"type": "string", "description": "Working directory relative to the workspace"},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
                "timeoutSeconds": {"type": "integer", "minimum": 1, "description": "Kill the command (its whole process group) after this long; default 1800"},
                "yieldMs": {"type": "integer", "minimum": 0, "description": "Move to the background after this long; default 10000"},
                "background": {"type": "boolean", "description": "Start in the background at once"}
            },
            "required": ["command"]
        })
    }
    fn run<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            match self.run_inner(args, ctx).await {
                Ok(out) => out,
                Err(e) => ToolOutput::error(e),
            }
        })
    }
}

impl ExecTool {
    async fn run_inner(&self, args: Value, ctx: &ToolContext) -> Result<ToolOutput, String> {
        let args = parse_args(&args, &self.settings)?;
        let root = ctx.workspace.clone();
        let rel = args.workdir.clone();
        let workdir = tokio::task::spawn_blocking(move || -> Result<PathBuf, String> {
            let ws = Workspace::open(&root).map_err(|e| e.to_string())?;
            match rel {
                None => Ok(ws.root().to_path_buf()),
                Some(rel) => ws.dir(&rel).map_err(|e| format!("workdir: {e}")),
            }
        })
        .await
        .map_err(|e| format!("cannot resolve the workdir: {e}"))??;
        let env = child_env(&args.env);
        let request = ExecRequest {
            command: args.command.clone(),
            workdir: workdir.clone(),
            path_env: env.get("PATH").cloned(),
            session: ctx.session.clone(),
            agent_id: ctx.agent_id.clone(),
            run_id: ctx.run_id.clone(),
        };
        if let GateVerdict::Deny { reason } = self.gate.check(request, &ctx.cancel).await {
            tracing::info!(command = %args.command, %reason, "exec refused");
            return Ok(ToolOutput::error(reason));
        }
        if ctx.cancel.is_cancelled() {
            return Ok(ToolOutput::error("the turn was aborted before the command started"));
        }
        let job = self
            .processes
            .spawn(SpawnSpec {
                shell: std::path::Path::new(EXEC_SHELL),
                command: &args.command,
                workdir: &workdir,
                env: &env,
                timeout: args.timeout,
                session: &ctx.session,
            })
            .map_err(|e| e.to_string())?;
        let guard = ForegroundGuard::new(job.clone());
        let yield_after = if args.background { Duration::ZERO } else { args.yield_after };
        tokio::select! {
            biased;
            status = job.ended() => {
                guard.release();
                let output = job.output().text(EXEC_OUTPUT_BYTES_MAX);
                let is_error = !status.is_success();
                let text = format!("{output}{}{}", if output.is_empty() || output.ends_with('\n') { "" } else { "\n" }, status.describe());
                Ok(ToolOutput { content: text, is_error })
            }
            _ = tokio::time::sleep(yield_after) => {
                match self.processes.move_to_background(&job) {
                    Ok(()) => {
                        guard.release();
                        let so_far = job.output().poll(EXEC_OUTPUT_BYTES_MAX);
                        Ok(ToolOutput::ok(format!(
                            "{so_far}{}[running in the background: sessionId {}; use the process tool (poll, log, kill) to follow it; it is killed after {} s]",
                            if so_far.is_empty() || so_far.ends_with('\n') { "" } else { "\n" },
                            job.id,
                            args.timeout.as_secs()
                        )))
                    }
                    Err(e) => {
                        drop(guard);
                        let _ = job.ended().await;
                        Err(format!("the command could not move to the background and was killed: {e}"))
                    }
                }
            }
            _ = ctx.cancel.cancelled() => {
                job.kill();
                let status = job.ended().await;
                guard.release();
                let _ = status;
                Ok(ToolOutput::error(format!("{}\n{}", job.output().text(EXEC_OUTPUT_BYTES_MAX), JobStatus::Killed.describe())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn ctx(ws: &Path) -> ToolContext {
        ToolContext {
            session: SessionKey::new("agent:main:main").unwrap(),
            epoch: 1,
            run_id: "r".into(),
            agent_id: "main".into(),
            workspace: ws.to_path_buf(),
            cancel: CancellationToken::new(),
        }
    }

    fn exec_tool(gate: Arc<dyn ExecGate>) -> (ExecTool, Arc<ProcessRegistry>) {
        let processes = ProcessRegistry::new();
        (ExecTool::new(ExecSettings::default(), gate, processes.clone()), processes)
    }

    /// A command whose grandchild (a second `sleep`, in the background of an inner shell)
    /// writes its pid to `grandchild.pid` in the workspace.
    const TREE: &str = "sh -c 'sleep 1000 & echo $! > grandchild.pid; sleep 1000'";

    async fn grandchild_pid(ws: &Path) -> i32 {
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(ws.join("grandchild.pid"))
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the grandchild never started");
    }

    /// Whether `pid` runs (a zombie waiting for its reaper does not count).
    fn running(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z")
            }
            Err(_) => false,
        }
    }

    async fn assert_gone(pid: i32) {
        for _ in 0..300 {
            if !running(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("process {pid} survived its group being killed");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group_grandchildren_included() {
        let ws = tempfile::tempdir().unwrap();
        let (tool, processes) = exec_tool(Arc::new(AllowAll));
        let c = ctx(ws.path());
        let args = json!({"command": TREE, "timeoutSeconds": 1, "yieldMs": 60_000});
        let (out, pid) = tokio::join!(tool.run(args, &c), grandchild_pid(ws.path()));
        assert!(out.is_error, "{}", out.content);
        assert!(out.content.contains("timed out after 1 s"), "{}", out.content);
        assert_gone(pid).await;
        assert_eq!(processes.running(), 0);
    }

    #[tokio::test]
    async fn abort_kills_the_whole_group_grandchildren_included() {
        let ws = tempfile::tempdir().unwrap();
        let (tool, processes) = exec_tool(Arc::new(AllowAll));
        let c = ctx(ws.path());
        let cancel = c.cancel.clone();
        let args = json!({"command": TREE, "yieldMs": 60_000});
        let abort = async {
            let pid = grandchild_pid(ws.path()).await;
            cancel.cancel();
            pid
        };
        let (out, pid) = tokio::join!(tool.run(args, &c), abort);
        assert!(out.is_error && out.content.contains("killed"), "{}", out.content);
        assert_gone(pid).await;
        assert_eq!(processes.running(), 0);
    }

    #[tokio::test]
    async fn a_dropped_run_kills_the_whole_group() {
        let ws = tempfile::tempdir().unwrap();
        let (tool, _) = exec_tool(Arc::new(AllowAll));
        let c = ctx(ws.path());
        let args = json!({"command": TREE, "yieldMs": 60_000});
        // As the turn's own tool timeout does: the future is dropped mid-run.
        let run = tokio::time::timeout(Duration::from_secs(30), tool.run(args, &c));
        tokio::select! {
            _ = run => panic!("the command cannot finish"),
            pid = grandchild_pid(ws.path()) => assert_gone(pid).await,
        }
    }

    #[tokio::test]
    async fn background_jobs_are_listed_polled_and_killed_with_their_group() {
        let ws = tempfile::tempdir().unwrap();
        let (tool, processes) = exec_tool(Arc::new(AllowAll));
        let process = crate::tools::process::ProcessTool::new(processes.clone());
        let c = ctx(ws.path());
        let cmd = format!("echo started; {TREE}");
        let out = tool.run(json!({"command": cmd, "yieldMs": 200}), &c).await;
        assert!(!out.is_error && out.content.contains("started"), "{}", out.content);
        let id = out.content.split("sessionId ").nth(1).unwrap().split(';').next().unwrap();
        let pid = grandchild_pid(ws.path()).await;
        let list = process.run(json!({"action": "list"}), &c).await;
        assert!(list.content.contains(id) && list.content.contains("running"), "{}", list.content);
        let poll = process.run(json!({"action": "poll", "sessionId": id}), &c).await;
        assert!(poll.content.contains("[still running]"), "{}", poll.content);
        let other =
            ToolContext { session: SessionKey::new("agent:main:other").unwrap(), ..ctx(ws.path()) };
        let foreign = process.run(json!({"action": "kill", "sessionId": id}), &other).await;
        assert!(foreign.is_error, "another session cannot touch the job");
        let kill = process.run(json!({"action": "kill", "sessionId": id}), &c).await;
        assert!(kill.content.contains("whole process group was killed"), "{}", kill.content);
        assert_gone(pid).await;
        assert_eq!(processes.running(), 0);
    }

    #[tokio::test]
    async fn output_is_capped_with_a_notice_and_exit_codes_are_reported() {
        let ws = tempfile::tempdir().unwrap();
        let (tool, _) = exec_tool(Arc::new(AllowAll));
        let c = ctx(ws.path());
        let big = EXEC_OUTPUT_BYTES_MAX + 1000;
        let cmd = format!("head -c {big} /dev/zero | tr '\\0' a; echo; echo tail-line");
        let out = tool.run(json!({"command": cmd}), &c).await;
        assert!(!out.is_error, "{}", &out.content[..200.min(out.content.len())]);
        assert!(out.content.starts_with("[output truncated: the first"), "{}", &out.content[..100]);
        assert!(out.content.contains("tail-line\n[exit code 0]"));
        assert!(out.content.len() < EXEC_OUTPUT_BYTES_MAX + 200);
        let failed = tool.run(json!({"command": "echo oops >&2; exit 3"}), &c).await;
        assert!(failed.is_error && failed.content == "oops\n[exit code 3]", "{}", failed.content);
        let escaped = tool.run(json!({"command": "pwd", "workdir": "../"}), &c).await;
        assert!(escaped.is_error && escaped.content.contains("workdir"), "{}", escaped.content);
    }

    struct DenyAll;

    impl ExecGate for DenyAll {
        fn check<'a>(
            &'a self,
            _: ExecRequest,
            _: &'a CancellationToken,
        ) -> BoxFuture<'a, GateVerdict> {
            Box::pin(async {
                GateVerdict::Deny { reason: "an operator denied the command".into() }
            })
        }
    }

    #[tokio::test]
    async fn a_denied_command_never_starts() {
        let ws = tempfile::tempdir().unwrap();
        let (tool, processes) = exec_tool(Arc::new(DenyAll));
        let c = ctx(ws.path());
        let out = tool.run(json!({"command": "touch ran"}), &c).await;
        assert_eq!(out, ToolOutput::error("an operator denied the command"));
        assert!(!ws.path().join("ran").exists());
        assert_eq!(processes.running(), 0);
    }

    #[test]
    fn env_rules_refuse_loader_and_path_and_strip_secrets() {
        let s = ExecSettings::default();
        let bad = parse_args(&json!({"command": "x", "env": {"LD_PRELOAD": "/x.so"}}), &s);
        assert!(bad.unwrap_err().contains("LD_PRELOAD"));
        assert!(parse_args(&json!({"command": "x", "env": {"PATH": "/tmp"}}), &s).is_err());
        let ok = parse_args(&json!({"command": "x", "env": {"FOO": "bar"}}), &s).unwrap();
        assert_eq!(ok.env.get("FOO").map(String::as_str), Some("bar"));
        assert!(listed(ENV_INHERIT_DENIED, "BEAMCLAW_GATEWAY_TOKEN"));
        assert!(listed(ENV_INHERIT_DENIED, "ANTHROPIC_API_KEY"));
        assert!(!listed(ENV_INHERIT_DENIED, "HOME"));
    }

    #[test]
    fn bad_arguments_are_refused_with_the_reason() {
        let s = ExecSettings::default();
        assert!(parse_args(&json!({}), &s).unwrap_err().contains("command"));
        assert!(parse_args(&json!({"command": "  "}), &s).is_err());
        assert!(parse_args(&json!({"command": "x", "timeoutSeconds": 0}), &s).is_err());
        let a =
            parse_args(&json!({"command": "x", "timeoutSeconds": 5, "yieldMs": 0}), &s).unwrap();
        assert_eq!(a.timeout, Duration::from_secs(5));
        assert_eq!(a.yield_after, Duration::ZERO);
    }
}
