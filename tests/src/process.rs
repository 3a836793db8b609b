//! Child processes that never outlive their test, the `beamclaw` binary, free ports, deadlines.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Environment variable naming the `beamclaw` binary to test (default: the one cargo builds
/// into the target directory of this test run).
pub const BIN_ENV: &str = "BEAMCLAW_BIN";
/// How often [`poll_until`] tries again.
pub const POLL_INTERVAL_MS: u64 = 50;
/// The workspace crates the `beamclaw` binary is built from: a binary older than any file
/// under these is rebuilt before the tests use it.
const BIN_SOURCES: &[&str] = &[
    "node/src",
    "node/Cargo.toml",
    "gateway/src",
    "gateway/Cargo.toml",
    "mesh/src",
    "mesh/Cargo.toml",
    "crdt/src",
    "crdt/Cargo.toml",
    "Cargo.toml",
    "Cargo.lock",
];
/// Files looked at when deciding whether the binary is stale, at most.
const SOURCE_FILES_MAX: usize = 20_000;

/// The `beamclaw` binary: `$BEAMCLAW_BIN`, else `<target>/<profile>/beamclaw` of the target
/// directory and profile of the running test (in `<target>/<profile>/deps/`) or binary.
/// `cargo test --workspace` builds it before running any test (the `beamclaw` package has
/// integration tests); when it is missing (`cargo test -p beamclaw-e2e` on a fresh checkout) or
/// older than its sources, it is built here with `cargo build -p beamclaw`, into the same
/// target directory and profile.
pub fn beamclaw_bin() -> Result<PathBuf> {
    static FOUND: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| find_or_build_bin().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("{e}"))
}

fn find_or_build_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(BIN_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("{BIN_ENV}={} is not a file", path.display());
    }
    let exe = std::env::current_exe().context("cannot locate the test executable")?;
    // Tests live in `<target>/<profile>/deps/`, binaries (the benchmark driver) one level up.
    let exe_dir = exe.parent();
    let in_deps = exe_dir.and_then(Path::file_name).is_some_and(|n| n == "deps");
    let profile_dir = if in_deps { exe_dir.and_then(Path::parent) } else { exe_dir }
        .ok_or_else(|| anyhow!("the test executable {} has no target directory", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", profile_dir.display()))?;
    let bin = profile_dir.join("beamclaw");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let why = match std::fs::metadata(&bin).and_then(|m| m.modified()) {
        Err(_) => "it is not built".to_string(),
        Ok(built) => match newer_source(&workspace, built) {
            None => return Ok(bin),
            Some(source) => format!("{} changed since it was built", source.display()),
        },
    };
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "building {} ({why}): cargo build -p beamclaw --bin beamclaw --profile {profile}",
        bin.display()
    );
    let status = Command::new(&cargo)
        .args(["build", "-p", "beamclaw", "--bin", "beamclaw", "--profile", &profile])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", Path::new(&cargo).display()))?;
    if !status.success() || !bin.is_file() {
        bail!(
            "`cargo build -p beamclaw` failed ({status}) and {} is missing; build it, or set \
             {BIN_ENV}",
            bin.display()
        );
    }
    Ok(bin)
}

/// A source file of the binary modified after `built`, if any.
fn newer_source(workspace: &Path, built: std::time::SystemTime) -> Option<PathBuf> {
    let mut stack: Vec<PathBuf> = BIN_SOURCES.iter().map(|s| workspace.join(s)).collect();
    let mut seen = 0;
    while let Some(path) = stack.pop() {
        seen += 1;
        if seen > SOURCE_FILES_MAX {
            return None;
        }
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.modified().is_ok_and(|m| m > built) {
            return Some(path);
        }
    }
    None
}

/// A TCP port free on `ip` right now (the kernel's choice; closed again before returning).
pub fn free_tcp_port(ip: IpAddr) -> Result<u16> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("cannot bind a TCP port on {ip}"))?;
    Ok(listener.local_addr()?.port())
}

/// A port free on `ip` for both TCP and UDP right now.
pub fn free_port(ip: IpAddr) -> Result<u16> {
    for _ in 0..100 {
        let port = free_tcp_port(ip)?;
        if UdpSocket::bind(SocketAddr::new(ip, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both TCP and UDP on {ip} after 100 tries")
}

/// Whether `setpriv --pdeathsig` is available: children then die with the test process even
/// when it is killed (a panic or a normal end kills them through [`ChildGuard`]'s drop).
fn setpriv() -> Option<&'static Path> {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            ["/usr/bin/setpriv", "/bin/setpriv"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .filter(|p| {
                    Command::new(p)
                        .args(["--pdeathsig", "KILL", "true"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                })
        })
        .as_deref()
}

/// A command that runs `program args` with the parent-death signal set when possible, so the
/// child is killed when the thread that started it (the test) goes away.
pub fn command(program: &Path, args: &[&str]) -> Command {
    match setpriv() {
        Some(setpriv) => {
            let mut cmd = Command::new(setpriv);
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(program).args(args);
            cmd
        }
        None => {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        }
    }
}

/// A child process that is killed with SIGKILL when dropped (a test's end, or its panic).
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    what: String,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr going to `stdout` and `stderr` (files).
    pub fn spawn(mut cmd: Command, what: &str, stdout: &Path, stderr: &Path) -> Result<Self> {
        let out = std::fs::File::create(stdout)
            .with_context(|| format!("cannot create {}", stdout.display()))?;
        let err = std::fs::File::create(stderr)
            .with_context(|| format!("cannot create {}", stderr.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().with_context(|| format!("cannot start {what}: {cmd:?}"))?;
        Ok(ChildGuard { child, what: what.to_string() })
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(self.pid(), signal).with_context(|| format!("cannot send {signal} to {}", self.what))
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// SIGKILL, then reaps it.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        if self.child.try_wait()?.is_none() {
            // ESRCH (already gone but not reaped) is fine: wait() below reaps it.
            let _ = kill(self.pid(), Signal::SIGKILL);
        }
        Ok(self.child.wait()?)
    }

    /// Waits for the process to exit on its own, until `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Deadline::after(timeout);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if deadline.passed() {
                bail!("{} did not exit within {} ms", self.what, timeout.as_millis());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// A point in time a test must not wait past.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
    started: Instant,
}

impl Deadline {
    pub fn after(d: Duration) -> Self {
        let now = Instant::now();
        Deadline { at: now + d, started: now }
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Calls `attempt` every [`POLL_INTERVAL_MS`] until it returns `Ok(Some(value))` or `timeout`
/// passes; the error then names `what` and the last answer (`Ok(None)` carries the reason in
/// the `Err` of the previous attempt, so attempts return `Err` to explain why they are not done).
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Deadline::after(timeout);
    let mut last = "no attempt finished".to_string();
    loop {
        match tokio::time::timeout(deadline.remaining(), attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => last = format!("{e:#}"),
            Err(_) => last = format!("{last} (and the next attempt was still running)"),
        }
        if deadline.passed() {
            bail!("{what}: not done within {} ms; last: {last}", timeout.as_millis());
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS).min(deadline.remaining())).await;
    }
}
