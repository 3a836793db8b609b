//! Commands in their own process group, and the `process` tool over background jobs.
//!
//! Owns: spawning a shell command as the leader of a new process group, its combined output in
//! a bounded buffer, supervision (exit, timeout, kill: always the WHOLE group, so
//! `sh -c 'sleep 1000 & sleep 1000'` leaves nothing behind), and the node's [`ProcessRegistry`]
//! of jobs (running and recently finished), bounded in number per node and per session. A job
//! is visible to `process` only once `exec` moved it to the background, and only from the
//! session that started it.
//!
//! When a command's main process exits, whatever it left running in its group is killed too:
//! nothing escapes the limits by daemonizing into the same group. A process that leaves the
//! group on purpose (`setsid`) is not tracked; the approvals policy is the guard for that.

use super::{Tool, ToolContext, ToolOutput};
use beamclaw_crdt::SessionKey;
use futures::future::BoxFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Jobs running at once on one node (foreground and background).
pub const JOBS_RUNNING_MAX: usize = 32;
/// Background jobs one session may have running at once.
pub const JOBS_PER_SESSION_MAX: usize = 8;
/// Finished jobs kept for `process poll/log`; the oldest are forgotten first.
pub const JOBS_FINISHED_KEPT_MAX: usize = 64;
/// How long a finished job stays listed, in ms.
pub const JOB_FINISHED_KEEP_MS: u64 = 30 * 60 * 1000;
/// Output kept per job, in bytes (the newest; older output is counted as dropped).
pub const JOB_OUTPUT_BYTES_MAX: usize = 1024 * 1024;
/// Most output one `process poll`/`log` returns, in bytes.
pub const POLL_OUTPUT_BYTES_MAX: usize = 200 * 1024;
/// Time between SIGTERM and SIGKILL when a group is stopped, in ms.
pub const KILL_GRACE_MS: u64 = 500;
/// After the main process exits, how long its remaining output is read, in ms.
pub const OUTPUT_DRAIN_MS: u64 = 250;
/// Read size of the output pipes, in bytes.
const PIPE_READ_BYTES: usize = 16 * 1024;

/// Output of a job: the newest [`JOB_OUTPUT_BYTES_MAX`] bytes of stdout and stderr as they
/// arrived, and how much came in total.
#[derive(Debug, Default)]
pub struct OutputBuffer {
    data: VecDeque<u8>,
    cap: usize,
    /// Bytes ever written.
    total: u64,
    /// Absolute offset up to which `poll` returned output.
    polled: u64,
}

impl OutputBuffer {
    pub fn new(cap: usize) -> Self {
        OutputBuffer { data: VecDeque::new(), cap, total: 0, polled: 0 }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        self.data.extend(bytes);
        while self.data.len() > self.cap {
            let excess = self.data.len() - self.cap;
            self.data.drain(..excess);
        }
    }

    fn start(&self) -> u64 {
        self.total - self.data.len() as u64
    }

    /// Output from absolute offset `from`, at most `max` bytes (the newest when there is more).
    fn since(&self, from: u64, max: usize) -> String {
        let start = self.start();
        let skip = (from.max(start) - start) as usize;
        let available = self.data.len() - skip;
        let begin = skip + (available - available.min(max));
        let bytes: Vec<u8> = self.data.range(begin..).copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Everything kept (at most `max` bytes), with a note when older output was dropped.
    pub fn text(&self, max: usize) -> String {
        let text = self.since(0, max);
        let dropped = self.total.saturating_sub(text.len() as u64);
        if dropped > 0 {
            format!("[output truncated: the first {dropped} bytes were dropped]\n{text}")
        } else {
            text
        }
    }

    /// Output since the last poll.
    pub fn poll(&mut self, max: usize) -> String {
        let from = self.polled;
        let text = self.since(from, max);
        let dropped = (self.total - from).saturating_sub(text.len() as u64);
        self.polled = self.total;
        if dropped > 0 {
            format!("[{dropped} bytes of output were dropped since the last poll]\n{text}")
        } else {
            text
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

/// How a job ended (or that it has not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobStatus {
    Running,
    Exited { code: Option<i32>, signal: Option<i32> },
    TimedOut { after: Duration },
    Killed,
    Failed(String),
}

impl JobStatus {
    pub fn is_running(&self) -> bool {
        matches!(self, JobStatus::Running)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Exited { .. } => "exited",
            JobStatus::TimedOut { .. } => "timed out",
            JobStatus::Killed => "killed",
            JobStatus::Failed(_) => "failed",
        }
    }

    /// A line for the model.
    pub fn describe(&self) -> String {
        match self {
            JobStatus::Running => "[still running]".into(),
            JobStatus::Exited { code: Some(c), .. } => format!("[exit code {c}]"),
            JobStatus::Exited { signal: Some(s), .. } => format!("[killed by signal {s}]"),
            JobStatus::Exited { .. } => "[exited]".into(),
            JobStatus::TimedOut { after } => format!(
                "[timed out after {} s: the whole process group was killed]",
                after.as_secs()
            ),
            JobStatus::Killed => "[killed: the whole process group was killed]".into(),
            JobStatus::Failed(e) => format!("[failed: {e}]"),
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, JobStatus::Exited { code: Some(0), .. })
    }
}

/// One command started by `exec`.
pub struct Job {
    pub id: String,
    pub session: SessionKey,
    pub command: String,
    pub started_at_ms: i64,
    pgid: Pid,
    output: Mutex<OutputBuffer>,
    status: watch::Sender<JobStatus>,
    kill: CancellationToken,
    /// Moved to the background (visible to `process`).
    background: AtomicBool,
    ended_at_ms: Mutex<Option<i64>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("id", &self.id).field("pgid", &self.pgid).finish()
    }
}

impl Job {
    pub fn status(&self) -> JobStatus {
        self.status.borrow().clone()
    }

    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    pub fn output(&self) -> std::sync::MutexGuard<'_, OutputBuffer> {
        self.output.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the supervisor to kill the whole group (TERM, then KILL after [`KILL_GRACE_MS`]).
    pub fn kill(&self) {
        self.kill.cancel();
    }

    /// Kills the whole group at once with SIGKILL (for drop paths that cannot wait).
    pub fn kill_now(&self) {
        if self.status().is_running() {
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }

    /// Waits until the job ended.
    pub async fn ended(&self) -> JobStatus {
        let mut rx = self.status.subscribe();
        loop {
            let current = rx.borrow_and_update().clone();
            if !current.is_running() {
                return current;
            }
            if rx.changed().await.is_err() {
                return self.status();
            }
        }
    }

    pub fn is_background(&self) -> bool {
        self.background.load(Ordering::SeqCst)
    }
}

/// Kills the group when a foreground run is dropped (turn aborted, tool timeout) before the
/// job ended or moved to the background.
pub struct ForegroundGuard {
    job: Option<Arc<Job>>,
}

impl ForegroundGuard {
    pub fn new(job: Arc<Job>) -> Self {
        ForegroundGuard { job: Some(job) }
    }

    /// The job continues in the background; dropping the guard no longer kills it.
    pub fn release(mut self) {
        self.job = None;
    }
}

impl Drop for ForegroundGuard {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            job.kill_now();
            job.kill();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(
        "{running} commands are already running on this node (at most {JOBS_RUNNING_MAX}); kill a background job with the process tool first"
    )]
    NodeFull { running: usize },
    #[error(
        "this session already has {JOBS_PER_SESSION_MAX} background jobs running; kill one with the process tool first"
    )]
    SessionFull,
    #[error("cannot start the command: {0}")]
    Spawn(std::io::Error),
}

/// What to run.
pub struct SpawnSpec<'a> {
    pub shell: &'a Path,
    pub command: &'a str,
    pub workdir: &'a Path,
    /// The whole environment of the child.
    pub env: &'a BTreeMap<String, String>,
    pub timeout: Duration,
    pub session: &'a SessionKey,
}

/// The jobs of this node.
#[derive(Default)]
pub struct ProcessRegistry {
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
}

impl std::fmt::Debug for ProcessRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRegistry").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl ProcessRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(ProcessRegistry::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets finished jobs beyond the retention limits.
    fn prune(jobs: &mut BTreeMap<String, Arc<Job>>) {
        let now = now_ms();
        let keep_ms = i64::try_from(JOB_FINISHED_KEEP_MS).unwrap_or(i64::MAX);
        jobs.retain(|_, j| {
            let ended = *j.ended_at_ms.lock().unwrap_or_else(|p| p.into_inner());
            ended.is_none_or(|at| now - at < keep_ms)
        });
        let mut finished: Vec<(i64, String)> = jobs
            .values()
            .filter_map(|j| {
                let ended = *j.ended_at_ms.lock().unwrap_or_else(|p| p.into_inner());
                ended.map(|at| (at, j.id.clone()))
            })
            .collect();
        if finished.len() > JOBS_FINISHED_KEPT_MAX {
            finished.sort();
            for (_, id) in finished.iter().take(finished.len() - JOBS_FINISHED_KEPT_MAX) {
                jobs.remove(id);
            }
        }
    }

    /// Starts `spec` as the leader of a new process group, supervised until it ends.
    pub fn spawn(&self, spec: SpawnSpec<'_>) -> Result<Arc<Job>, SpawnError> {
        let mut jobs = self.lock();
        Self::prune(&mut jobs);
        let running = jobs.values().filter(|j| j.status().is_running()).count();
        if running >= JOBS_RUNNING_MAX {
            return Err(SpawnError::NodeFull { running });
        }
        let mut cmd = tokio::process::Command::new(spec.shell);
        cmd.arg("-c")
            .arg(spec.command)
            .current_dir(spec.workdir)
            .env_clear()
            .envs(spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: every kill below reaches the whole tree it spawns.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(SpawnError::Spawn)?;
        let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            return Err(SpawnError::Spawn(std::io::Error::other("the child has no process id")));
        };
        let (status, _) = watch::channel(JobStatus::Running);
        let job = Arc::new(Job {
            id: format!("job_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            session: spec.session.clone(),
            command: spec.command.to_string(),
            started_at_ms: now_ms(),
            pgid: Pid::from_raw(pid),
            output: Mutex::new(OutputBuffer::new(JOB_OUTPUT_BYTES_MAX)),
            status,
            kill: CancellationToken::new(),
            background: AtomicBool::new(false),
            ended_at_ms: Mutex::new(None),
        });
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        jobs.insert(job.id.clone(), job.clone());
        drop(jobs);
        let span = tracing::info_span!("job", job = %job.id, pgid = pid);
        tracing::debug!(parent: &span, command = %truncate(spec.command, 200), "command started");
        tokio::spawn(tracing::Instrument::instrument(
            supervise(job.clone(), child, stdout, stderr, spec.timeout),
            span,
        ));
        Ok(job)
    }

    /// Makes a job visible to `process`, if its session has room.
    pub fn move_to_background(&self, job: &Arc<Job>) -> Result<(), SpawnError> {
        let jobs = self.lock();
        let running = jobs
            .values()
            .filter(|j| j.session == job.session && j.is_background() && j.status().is_running())
            .count();
        if running >= JOBS_PER_SESSION_MAX {
            return Err(SpawnError::SessionFull);
        }
        job.background.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Background jobs of `session`, oldest first.
    pub fn list(&self, session: &SessionKey) -> Vec<Arc<Job>> {
        let mut jobs = self.lock();
        Self::prune(&mut jobs);
        let mut out: Vec<Arc<Job>> =
            jobs.values().filter(|j| &j.session == session && j.is_background()).cloned().collect();
        out.sort_by_key(|j| j.started_at_ms);
        out
    }

    /// A background job of `session`.
    pub fn get(&self, session: &SessionKey, id: &str) -> Option<Arc<Job>> {
        self.lock().get(id).filter(|j| &j.session == session && j.is_background()).cloned()
    }

    /// Forgets a finished job; a running one must be killed first.
    pub fn remove(&self, session: &SessionKey, id: &str) -> Result<(), String> {
        let mut jobs = self.lock();
        match jobs.get(id).filter(|j| &j.session == session && j.is_background()) {
            None => Err(format!("no background job {id:?} in this session")),
            Some(j) if j.status().is_running() => {
                Err(format!("job {id} is still running; kill it first"))
            }
            Some(_) => {
                jobs.remove(id);
                Ok(())
            }
        }
    }

    /// Kills every running job (the node is stopping).
    pub fn kill_all(&self) {
        for job in self.lock().values() {
            job.kill_now();
            job.kill();
        }
    }

    /// Jobs running now (all sessions, foreground included).
    pub fn running(&self) -> usize {
        self.lock().values().filter(|j| j.status().is_running()).count()
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

async fn pump(job: Arc<Job>, pipe: Option<impl tokio::io::AsyncRead + Unpin>) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; PIPE_READ_BYTES];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => job.output().push(&buf[..n]),
        }
    }
}

/// Signals the whole group: SIGTERM, then SIGKILL after the grace period.
async fn stop_group(pgid: Pid) {
    if killpg(pgid, Signal::SIGTERM).is_err() {
        return; // the group is already gone
    }
    tokio::time::sleep(Duration::from_millis(KILL_GRACE_MS)).await;
    let _ = killpg(pgid, Signal::SIGKILL);
}

async fn supervise(
    job: Arc<Job>,
    mut child: tokio::process::Child,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
    timeout: Duration,
) {
    let out = tokio::spawn(pump(job.clone(), stdout));
    let err = tokio::spawn(pump(job.clone(), stderr));
    let status = tokio::select! {
        exit = child.wait() => match exit {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                JobStatus::Exited { code: s.code(), signal: s.signal() }
            }
            Err(e) => JobStatus::Failed(e.to_string()),
        },
        _ = tokio::time::sleep(timeout) => {
            stop_group(job.pgid).await;
            let _ = child.wait().await;
            JobStatus::TimedOut { after: timeout }
        }
        _ = job.kill.cancelled() => {
            stop_group(job.pgid).await;
            let _ = child.wait().await;
            JobStatus::Killed
        }
    };
    // Whatever the main process left running in its group goes with it.
    let _ = killpg(job.pgid, Signal::SIGKILL);
    let drain = Duration::from_millis(OUTPUT_DRAIN_MS);
    let _ = tokio::time::timeout(drain, async {
        let _ = out.await;
        let _ = err.await;
    })
    .await;
    tracing::debug!(status = %status.describe(), "command ended");
    *job.ended_at_ms.lock().unwrap_or_else(|p| p.into_inner()) = Some(now_ms());
    // `send_replace`, not `send`: `send` drops the value when nobody is subscribed yet, which is
    // the case when the command ends before anyone asks `ended()`; the job would stay running.
    job.status.send_replace(status);
}

/// `process {action, sessionId?}`: list, poll, log, kill and remove background jobs.
pub struct ProcessTool {
    registry: Arc<ProcessRegistry>,
}

impl ProcessTool {
    pub fn new(registry: Arc<ProcessRegistry>) -> Self {
        ProcessTool { registry }
    }
}

fn job_row(job: &Job) -> Value {
    let status = job.status();
    let mut row = json!({
        "sessionId": job.id,
        "command": truncate(&job.command, 200),
        "status": status.as_str(),
        "startedAt": job.started_at_ms,
        "outputBytes": job.output().total(),
    });
    if let JobStatus::Exited { code, signal } = status {
        row["exitCode"] = json!(code);
        row["signal"] = json!(signal);
    }
    row
}

impl Tool for ProcessTool {
    fn name(&self) -> &str {
        "process"
    }
    fn description(&self) -> &str {
        "Manage background commands started by exec (in this session). action: list | poll (new output since the last poll, and the status) | log (all kept output) | kill (kills the whole process group) | remove (forget a finished job). sessionId names the job."
    }
    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "action": {"type": "string", "enum": ["list", "poll", "log", "kill", "remove"]},
                "sessionId": {"type": "string", "description": "The job id exec returned"}
            },
            "required": ["action"]
        })
    }
    fn run<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let action = args.get("action").and_then(Value::as_str).unwrap_or_default();
            let id = args
                .get("sessionId")
                .or_else(|| args.get("id"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let session = &ctx.session;
            let job = || {
                if id.is_empty() {
                    return Err(ToolOutput::error(format!("action {action:?} needs sessionId")));
                }
                self.registry.get(session, &id).ok_or_else(|| {
                    ToolOutput::error(format!(
                        "no background job {id:?} in this session; use action \"list\""
                    ))
                })
            };
            match action {
                "list" => {
                    let rows: Vec<Value> =
                        self.registry.list(session).iter().map(|j| job_row(j)).collect();
                    ToolOutput::ok(json!({"jobs": rows}).to_string())
                }
                "poll" => match job() {
                    Ok(job) => {
                        let output = job.output().poll(POLL_OUTPUT_BYTES_MAX);
                        ToolOutput::ok(format!("{output}\n{}", job.status().describe()))
                    }
                    Err(e) => e,
                },
                "log" => match job() {
                    Ok(job) => {
                        let output = job.output().text(POLL_OUTPUT_BYTES_MAX);
                        ToolOutput::ok(format!("{output}\n{}", job.status().describe()))
                    }
                    Err(e) => e,
                },
                "kill" => match job() {
                    Ok(job) => {
                        if !job.status().is_running() {
                            return ToolOutput::ok(format!(
                                "job {id} already ended {}",
                                job.status().describe()
                            ));
                        }
                        job.kill();
                        let status = job.ended().await;
                        ToolOutput::ok(format!("job {id} {}", status.describe()))
                    }
                    Err(e) => e,
                },
                "remove" | "clear" => match self.registry.remove(session, &id) {
                    Ok(()) => ToolOutput::ok(format!("job {id} forgotten")),
                    Err(e) => ToolOutput::error(e),
                },
                other => ToolOutput::error(format!(
                    "unknown action {other:?}; use list, poll, log, kill or remove"
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_buffer_keeps_the_newest_bytes_and_polls_increments() {
        let mut b = OutputBuffer::new(8);
        b.push(b"hello ");
        assert_eq!(b.poll(100), "hello ");
        b.push(b"world");
        assert_eq!(b.poll(100), "world");
        assert_eq!(b.poll(100), "");
        b.push(b"0123456789");
        let polled = b.poll(100);
        assert!(polled.starts_with("[2 bytes of output were dropped"), "{polled}");
        assert!(polled.ends_with("23456789"), "{polled}");
        let text = b.text(100);
        assert!(text.starts_with("[output truncated: the first 13 bytes"), "{text}");
    }

    /// A command that ends before anyone asked `ended()` is still seen to end (the status is kept
    /// with no subscriber: the 10 s exec flake of the approvals test).
    #[tokio::test]
    async fn a_job_that_ends_unwatched_reports_its_end() {
        let ws = tempfile::tempdir().unwrap();
        let registry = ProcessRegistry::new();
        let job = registry
            .spawn(SpawnSpec {
                shell: Path::new("/bin/sh"),
                command: "exit 0",
                workdir: ws.path(),
                env: &BTreeMap::new(),
                timeout: Duration::from_secs(30),
                session: &SessionKey::new("agent:main:main").unwrap(),
            })
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while job.status().is_running() {
            assert!(std::time::Instant::now() < deadline, "the job never left running");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(job.ended().await.is_success());
    }
}
