//! `beamclaw up` processes: one [`Node`] per data directory (restartable, so the same identity),
//! a [`Cluster`] of them joined to each other, and `beamclaw mock-llm` as their model.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::client::{Client, ClientError};
use crate::process::{ChildGuard, Deadline, beamclaw_bin, command, free_port, poll_until};

/// How long a node may take from spawn to printing where it listens.
pub const READY_TIMEOUT_MS: u64 = 30_000;
/// How long one gateway call of the harness may take.
pub const CALL_TIMEOUT_MS: u64 = 10_000;
/// Lines of each log shown when a test fails.
pub const LOG_TAIL_LINES: usize = 80;
/// The log level of the nodes (`RUST_LOG`), unless `BEAMCLAW_E2E_LOG` overrides it.
pub const NODE_LOG_DEFAULT: &str = "info";
/// The gateway token every test cluster uses.
pub const TOKEN: &str = "e2e-gateway-token-0123456789";
/// The cluster secret every test cluster uses (loopback would accept none; being explicit makes
/// the wrong-secret test meaningful).
pub const CLUSTER_SECRET: &str = "e2e-cluster-secret-0123456789";

/// Environment a node must not inherit from the machine running the tests.
const SCRUBBED_ENV: &[&str] = &[
    "BEAMCLAW_HOME",
    "BEAMCLAW_CONFIG",
    "BEAMCLAW_LISTEN",
    "BEAMCLAW_MESH_LISTEN",
    "BEAMCLAW_JOIN",
    "BEAMCLAW_NODE_NAME",
    "BEAMCLAW_DISCOVER",
    "BEAMCLAW_GATEWAY_TOKEN",
    "BEAMCLAW_GATEWAY_PASSWORD",
    "BEAMCLAW_CLUSTER_SECRET",
    "BEAMCLAW_LOG_FORMAT",
    "OPENCLAW_GATEWAY_TOKEN",
    "OPENCLAW_GATEWAY_PASSWORD",
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
];

/// One HTTP client for the harness (rustls needs its process-wide crypto provider first).
pub fn http() -> Result<reqwest::Client> {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
        .no_proxy()
        .build()
        .context("cannot build the HTTP client")
}

/// Polls `path` until a line starting with `prefix` appears; gives the rest of the line.
async fn wait_for_line(
    path: &Path,
    prefixes: &[&str],
    child: &mut ChildGuard,
    what: &str,
    stderr: &Path,
) -> Result<Vec<String>> {
    let deadline = Deadline::after(Duration::from_millis(READY_TIMEOUT_MS));
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found: Vec<Option<String>> = prefixes
            .iter()
            .map(|p| text.lines().find_map(|l| l.strip_prefix(p).map(|r| r.trim().to_string())))
            .collect();
        if found.iter().all(Option::is_some) {
            return Ok(found.into_iter().flatten().collect());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited ({status}) before it was ready:\n{}",
                tail(stderr, LOG_TAIL_LINES)
            );
        }
        if deadline.passed() {
            bail!(
                "{what} was not ready within {READY_TIMEOUT_MS} ms:\n{}",
                tail(stderr, LOG_TAIL_LINES)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `beamclaw mock-llm`, killed with the test.
pub struct MockLlm {
    _child: ChildGuard,
    /// `http://ip:port` (the OpenAI base URL is this plus `/v1`).
    pub url: String,
    http: reqwest::Client,
}

impl MockLlm {
    /// Starts the mock on `ip` (a free port), logging into `dir`.
    pub async fn start(ip: IpAddr, dir: &Path) -> Result<MockLlm> {
        let bin = beamclaw_bin()?;
        let listen = SocketAddr::new(ip, 0).to_string();
        let cmd = command(&bin, &["mock-llm", "--listen", &listen]);
        let (out, err) = (dir.join("mock-llm.stdout"), dir.join("mock-llm.stderr"));
        let mut child = ChildGuard::spawn(cmd, "beamclaw mock-llm", &out, &err)?;
        let found =
            wait_for_line(&out, &["mock-llm listening on "], &mut child, "mock-llm", &err).await?;
        let url = found.into_iter().next().unwrap_or_default();
        Ok(MockLlm { _child: child, url, http: http()? })
    }

    /// Replaces the script (`{"responses": [...]}`).
    pub async fn load_script(&self, script: &Value) -> Result<()> {
        let response =
            self.http.post(format!("{}/_mock/script", self.url)).json(script).send().await?;
        if !response.status().is_success() {
            bail!("the mock refused the script: {}", response.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// Every request the mock received (at most its last 1000), oldest first.
    pub async fn requests(&self) -> Result<Vec<Value>> {
        let v: Value =
            self.http.get(format!("{}/_mock/requests", self.url)).send().await?.json().await?;
        let list = v.as_array().or_else(|| v["requests"].as_array()).cloned();
        list.ok_or_else(|| anyhow!("GET /_mock/requests answered {v}"))
    }

    /// The node config that makes this mock the model of every agent.
    pub fn node_config(&self) -> Value {
        json!({
            "models": {"providers": {"mock": {
                "baseUrl": format!("{}/v1", self.url),
                "api": "openai-completions",
                "apiKey": "x",
                "models": [{"id": "m"}],
            }}},
            "agents": {"defaults": {"model": "mock/m"}},
        })
    }
}

/// The last user message's text of a model request (what the turn answers).
pub fn last_user_text(request: &Value) -> Option<String> {
    let messages = request["body"]["messages"].as_array()?;
    let last = messages.iter().rev().find(|m| m["role"] == "user")?;
    Some(crate::client::text_of(last))
}

/// How one node is started.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub name: String,
    pub data_dir: PathBuf,
    pub gateway: SocketAddr,
    pub mesh: SocketAddr,
    pub join: Vec<SocketAddr>,
    pub token: Option<String>,
    pub cluster_secret: Option<String>,
    /// `beamclaw.json5` in the data directory.
    pub config: Value,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
}

/// One `beamclaw up` with its data directory; stopped and started again as the same node.
pub struct Node {
    pub opts: NodeOptions,
    child: Option<ChildGuard>,
    /// Process starts so far (log files are numbered by it).
    pub starts: u32,
    /// The node id (its PeerId), once it has started.
    pub id: String,
}

impl Node {
    pub fn new(opts: NodeOptions) -> Node {
        Node { opts, child: None, starts: 0, id: String::new() }
    }

    pub fn name(&self) -> &str {
        &self.opts.name
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.opts.gateway)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.opts.gateway)
    }

    fn log(&self, n: u32, stream: &str) -> PathBuf {
        self.opts.data_dir.join(format!("{}.{n}.{stream}", self.opts.name))
    }

    /// Every stderr log of this node, oldest first.
    pub fn stderr_logs(&self) -> Vec<PathBuf> {
        (1..=self.starts).map(|n| self.log(n, "stderr")).collect()
    }

    /// Starts the process and waits until it prints where it listens.
    pub async fn start(&mut self) -> Result<Duration> {
        if self.is_running() {
            bail!("{} is already running", self.opts.name);
        }
        std::fs::create_dir_all(&self.opts.data_dir)?;
        let config = serde_json::to_string_pretty(&self.opts.config)?;
        std::fs::write(self.opts.data_dir.join("beamclaw.json5"), config)?;
        let bin = beamclaw_bin()?;
        let data_dir = self.opts.data_dir.display().to_string();
        let (gateway, mesh) = (self.opts.gateway.to_string(), self.opts.mesh.to_string());
        let mut args = vec![
            "--data-dir",
            &data_dir,
            "up",
            "--listen",
            &gateway,
            "--mesh-listen",
            &mesh,
            "--node-name",
            &self.opts.name,
        ];
        let join = self.opts.join.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        if !join.is_empty() {
            args.extend(["--join", &join]);
        }
        let bin_text = bin.display().to_string();
        let mut cmd = match &self.opts.netns {
            Some(ns) => {
                let ip = crate::netns::ip_bin().ok_or_else(|| {
                    anyhow!("{} needs a namespace but `ip` is missing", self.opts.name)
                })?;
                let mut all = vec!["netns", "exec", ns.as_str(), bin_text.as_str()];
                all.extend(args.iter().copied());
                command(&ip, &all)
            }
            None => command(&bin, &args),
        };
        for k in SCRUBBED_ENV {
            cmd.env_remove(k);
        }
        let log = std::env::var("BEAMCLAW_E2E_LOG").unwrap_or_else(|_| NODE_LOG_DEFAULT.into());
        cmd.env("RUST_LOG", log).env("NO_COLOR", "1");
        if let Some(t) = &self.opts.token {
            cmd.env("BEAMCLAW_GATEWAY_TOKEN", t);
        }
        if let Some(s) = &self.opts.cluster_secret {
            cmd.env("BEAMCLAW_CLUSTER_SECRET", s);
        }
        self.starts += 1;
        let (out, err) = (self.log(self.starts, "stdout"), self.log(self.starts, "stderr"));
        let started = Instant::now();
        let mut child =
            ChildGuard::spawn(cmd, &format!("beamclaw up ({})", self.opts.name), &out, &err)?;
        let found = wait_for_line(
            &out,
            &["  node     ", "  gateway  ", "  mesh     "],
            &mut child,
            &self.opts.name,
            &err,
        )
        .await?;
        let id = found[0].clone();
        if !self.id.is_empty() && self.id != id {
            bail!("{} restarted as {id}, not as {} (identity not kept)", self.opts.name, self.id);
        }
        self.id = id;
        let printed = format!("http://{}", self.opts.gateway);
        if !found[1].starts_with(&printed) {
            bail!("{} printed gateway {:?}, expected {printed}", self.opts.name, found[1]);
        }
        self.child = Some(child);
        Ok(started.elapsed())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.pid().as_raw())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill9()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the drain to finish and the process to exit.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child =
            self.child.take().ok_or_else(|| anyhow!("{} is not running", self.opts.name))?;
        child.signal(Signal::SIGTERM)?;
        let status = child.wait_exit(timeout).await;
        if status.is_err() {
            let _ = child.kill9();
        }
        status
    }

    pub async fn client(&self) -> Result<Client, ClientError> {
        Client::connect(&self.ws_url(), self.opts.token.as_deref()).await
    }

    /// `status` over the gateway.
    pub async fn status(&self) -> Result<Value> {
        let mut c = self.client().await?;
        let s = c.status(CALL_TIMEOUT_MS).await?;
        c.close().await;
        Ok(s)
    }

    /// The ids of the members this node sees alive, itself included.
    pub async fn alive_members(&self) -> Result<Vec<String>> {
        let status = self.status().await?;
        Ok(alive_members(&status))
    }

    /// This node's index row of `session` (`sessions.list` reads the local index only), if it
    /// holds a replica.
    pub async fn local_row(&self, session: &str) -> Result<Option<Value>> {
        let mut c = self.client().await?;
        let list = c.call("sessions.list", json!({"limit": 1000}), CALL_TIMEOUT_MS).await?;
        c.close().await;
        Ok(list["sessions"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["key"] == session).cloned()))
    }

    /// `chat.history` through this node, as `(role, text)` pairs.
    pub async fn transcript(&self, session: &str) -> Result<Vec<(String, String)>> {
        let mut c = self.client().await?;
        let h = c.history(session, CALL_TIMEOUT_MS).await?;
        c.close().await;
        Ok(crate::client::transcript(&h))
    }
}

/// A session key of the default agent that no other test run uses: `agent:main:<prefix>-<uuid>`.
pub fn unique_key(prefix: &str) -> String {
    format!("agent:main:{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The ids of the members a `status` answer shows alive.
pub fn alive_members(status: &Value) -> Vec<String> {
    status["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter(|m| m["state"] == "alive")
                .filter_map(|m| m["nodeId"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The ids of every member a `status` answer shows, in any state.
pub fn all_members(status: &Value) -> Vec<String> {
    status["members"]
        .as_array()
        .map(|members| {
            members.iter().filter_map(|m| m["nodeId"].as_str().map(str::to_string)).collect()
        })
        .unwrap_or_default()
}

/// What model the nodes of a [`Cluster`] use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// `beamclaw mock-llm`, one process for the whole cluster.
    Mock,
    /// The built-in offline provider.
    Offline,
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub model: Model,
    pub cluster_secret: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            model: Model::Mock,
            cluster_secret: Some(CLUSTER_SECRET.to_string()),
        }
    }
}

/// Nodes on loopback, each joining all the others, with a shared mock model; every process
/// dies with the cluster. When a test panics, the tail of every node's log is printed.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub mock: Option<MockLlm>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Creates the nodes (not started).
    pub async fn new(opts: &ClusterOptions) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("beamclaw-e2e-").tempdir()?;
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mock = match opts.model {
            Model::Mock => Some(MockLlm::start(ip, dir.path()).await?),
            Model::Offline => None,
        };
        let config = mock.as_ref().map(MockLlm::node_config).unwrap_or_else(|| json!({}));
        let mut addrs = Vec::new();
        for _ in 0..opts.nodes {
            addrs.push((SocketAddr::new(ip, free_port(ip)?), SocketAddr::new(ip, free_port(ip)?)));
        }
        let nodes = (0..opts.nodes)
            .map(|i| {
                let name = format!("node-{}", i + 1);
                Node::new(NodeOptions {
                    data_dir: dir.path().join(&name),
                    name,
                    gateway: addrs[i].0,
                    mesh: addrs[i].1,
                    join: (0..opts.nodes).filter(|j| *j != i).map(|j| addrs[j].1).collect(),
                    token: Some(TOKEN.to_string()),
                    cluster_secret: opts.cluster_secret.clone(),
                    config: config.clone(),
                    netns: None,
                })
            })
            .collect();
        Ok(Cluster { nodes, mock, dir })
    }

    /// Creates and starts every node, then waits until each sees all of them alive. Returns the
    /// cluster and the time from the first spawn until it had formed.
    pub async fn start(
        opts: &ClusterOptions,
        form_within: Duration,
    ) -> Result<(Cluster, Duration)> {
        let mut cluster = Cluster::new(opts).await?;
        let started = Instant::now();
        for node in &mut cluster.nodes {
            node.start().await?;
        }
        cluster.wait_formed(form_within.saturating_sub(started.elapsed())).await?;
        Ok((cluster, started.elapsed()))
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn mock(&self) -> Result<&MockLlm> {
        self.mock.as_ref().ok_or_else(|| anyhow!("this cluster has no mock model"))
    }

    /// Waits until every running node sees every running node alive.
    pub async fn wait_formed(&mut self, timeout: Duration) -> Result<()> {
        let running: Vec<usize> =
            (0..self.nodes.len()).filter(|i| self.nodes[*i].is_running()).collect();
        let ids: Vec<String> = running.iter().map(|i| self.nodes[*i].id.clone()).collect();
        let nodes = &self.nodes;
        poll_until("the cluster forms", timeout, || async {
            for i in &running {
                let alive = nodes[*i].alive_members().await?;
                let missing: Vec<&String> = ids.iter().filter(|id| !alive.contains(id)).collect();
                if !missing.is_empty() {
                    bail!("{} does not see {missing:?} alive (sees {alive:?})", nodes[*i].name());
                }
            }
            Ok(())
        })
        .await
    }

    /// The index of the node with this id.
    pub fn index_of(&self, id: &str) -> Result<usize> {
        self.nodes.iter().position(|n| n.id == id).ok_or_else(|| anyhow!("no node has id {id}"))
    }

    /// The owner of `session` as node `via` records it (`sessions.get` → `ownerNode`,
    /// `ownerEpoch`).
    pub async fn owner_seen_by(&self, via: usize, session: &str) -> Result<(usize, u64)> {
        let mut c = self.nodes[via].client().await?;
        let got = c.call("sessions.get", json!({"key": session}), CALL_TIMEOUT_MS).await?;
        c.close().await;
        let row = if got["session"].is_object() { &got["session"] } else { &got };
        let owner = row["ownerNode"].as_str().ok_or_else(|| {
            anyhow!("{} has no owner for {session} yet: {got}", self.nodes[via].name())
        })?;
        let epoch = row["ownerEpoch"].as_u64().unwrap_or(0);
        Ok((self.index_of(owner)?, epoch))
    }

    /// Creates sessions through node `via` until one is owned by node `owner`; returns its key.
    pub async fn session_owned_by(&self, owner: usize, via: usize, prefix: &str) -> Result<String> {
        /// Keys tried at most (each is owned by a given one of n nodes with probability 1/n).
        const TRIES_MAX: usize = 64;
        for _ in 0..TRIES_MAX {
            let key = unique_key(prefix);
            let mut c = self.nodes[via].client().await?;
            c.call("sessions.create", json!({"key": key}), CALL_TIMEOUT_MS).await?;
            c.close().await;
            let (found, _) =
                poll_until("the new session has an owner", Duration::from_secs(5), || {
                    self.owner_seen_by(via, &key)
                })
                .await?;
            if found == owner {
                return Ok(key);
            }
        }
        bail!("no session of {TRIES_MAX} created was owned by {}", self.nodes[owner].name())
    }

    /// Waits until every running node's own row of `session` (`sessions.list`, its local index)
    /// counts `messages` messages and all rows agree on the token counters and `updatedAt`.
    /// Equal message counts alone do not mean equal copies: a turn run twice (on both sides of
    /// a partition) adds its usage in a change of its own, which may still be on its way.
    pub async fn wait_level(
        &mut self,
        session: &str,
        messages: u64,
        timeout: Duration,
    ) -> Result<()> {
        const AGREED: [&str; 4] = ["inputTokens", "outputTokens", "totalTokens", "updatedAt"];
        let running: Vec<usize> =
            (0..self.nodes.len()).filter(|i| self.nodes[*i].is_running()).collect();
        let nodes = &self.nodes;
        poll_until("every copy of the session is level", timeout, || async {
            let mut first: Option<(String, Vec<Value>)> = None;
            for node in running.iter().map(|i| &nodes[*i]) {
                let row = node.local_row(session).await?.unwrap_or_default();
                let count = row["messageCount"].as_u64();
                anyhow::ensure!(
                    count == Some(messages),
                    "{}: {count:?} of {messages} messages",
                    node.name()
                );
                let fields: Vec<Value> = AGREED.iter().map(|f| row[*f].clone()).collect();
                match &first {
                    None => first = Some((node.name().to_string(), fields)),
                    Some((name, want)) => anyhow::ensure!(
                        &fields == want,
                        "{} has {AGREED:?} = {fields:?}, {name} has {want:?}",
                        node.name()
                    ),
                }
            }
            Ok(())
        })
        .await
    }

    /// Kills every node (SIGKILL: what is acknowledged is durable, so nothing may be missing)
    /// and reads each one's copy of `session` from its store.
    pub fn kill_all_and_read(&mut self, session: &str) -> Result<Vec<crate::replica::Replica>> {
        let mut replicas = Vec::new();
        for node in &mut self.nodes {
            node.kill9()?;
        }
        for node in &self.nodes {
            let replica = crate::replica::read(&node.opts.data_dir, session)?
                .ok_or_else(|| anyhow!("{} holds no copy of {session}", node.name()))?;
            replicas.push(replica);
        }
        Ok(replicas)
    }

    /// Fails when any node's log shows a panic.
    pub fn assert_no_panics(&self) -> Result<()> {
        for node in &self.nodes {
            for log in node.stderr_logs() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Some(line) = text.lines().find(|l| l.contains("panicked at")) {
                    bail!("{} panicked ({}): {line}", node.name(), log.display());
                }
            }
        }
        Ok(())
    }

    /// Prints the tail of every node's latest log (on failure).
    pub fn print_logs(&self) {
        for node in &self.nodes {
            if let Some(log) = node.stderr_logs().last() {
                eprintln!(
                    "---- {} ({}) {} ----\n{}",
                    node.name(),
                    node.id,
                    log.display(),
                    tail(log, LOG_TAIL_LINES)
                );
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        // Kept on request, failed or not (logs of a benchmark run are read afterwards too).
        if std::env::var_os("BEAMCLAW_E2E_KEEP").is_some() {
            let path = self.dir.path().to_path_buf();
            eprintln!("keeping {}", path.display());
            let dir = std::mem::replace(
                &mut self.dir,
                match tempfile::tempdir() {
                    Ok(d) => d,
                    Err(_) => return,
                },
            );
            let _ = dir.keep();
        }
        for node in &mut self.nodes {
            let _ = node.kill9();
        }
    }
}
