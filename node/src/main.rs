//! The `beamclaw` command line: parses arguments and dispatches into the library's modules.

use beamclaw::approvals::cli::{self as approvals_cli, ApprovalsAction};
use beamclaw::cli::sessions::{ExportFormat, SessionsAction};
use beamclaw::cli::{self, DevicesAction};
use beamclaw::config::{self, ConfigSource, LoadedConfig};
use beamclaw::mock_llm;
use beamclaw::serve::{self, UpOptions};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit status for an invalid config (EX_CONFIG, as OpenClaw uses).
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "beamclaw",
    version,
    about = "An OpenClaw-compatible AI agent gateway that runs as a mesh of equal peer nodes"
)]
struct Cli {
    /// The data directory (default: $BEAMCLAW_HOME, else ~/.beamclaw).
    #[arg(long, global = true, env = "BEAMCLAW_HOME")]
    data_dir: Option<PathBuf>,
    /// The config file (default: beamclaw.json5 in the data directory).
    #[arg(long, global = true, env = "BEAMCLAW_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr (`RUST_LOG` sets the level, default info).
    #[arg(long, global = true, value_enum, env = "BEAMCLAW_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node: the gateway on 127.0.0.1:18789 and the mesh next to it, with embedded
    /// defaults (the offline provider unless a model is configured).
    Up {
        /// Gateway address (HTTP and WebSocket).
        #[arg(long, env = "BEAMCLAW_LISTEN")]
        listen: Option<String>,
        /// Mesh address (QUIC); default: the gateway's port + 1.
        #[arg(long, env = "BEAMCLAW_MESH_LISTEN")]
        mesh_listen: Option<String>,
        /// The mesh address peers should dial (default: the listen address, or the machine's
        /// routable address when listening on 0.0.0.0).
        #[arg(long, env = "BEAMCLAW_MESH_ADVERTISE")]
        mesh_advertise: Option<String>,
        /// Join a cluster through these mesh addresses (comma-separated host:port).
        #[arg(long, env = "BEAMCLAW_JOIN", value_delimiter = ',')]
        join: Vec<String>,
        /// This node's name in status and presence.
        #[arg(long, env = "BEAMCLAW_NODE_NAME")]
        node_name: Option<String>,
        /// Find peers on the LAN (`mdns`).
        #[arg(long, env = "BEAMCLAW_DISCOVER")]
        discover: Option<String>,
    },
    /// Send a message to a running node and stream the reply.
    Chat {
        message: String,
        /// The session (default: the main session of the default agent).
        #[arg(long, default_value = "agent:main:main")]
        session: String,
        /// The gateway (default: ws://127.0.0.1:<gateway.port>).
        #[arg(long)]
        url: Option<String>,
    },
    /// Show a running node's view of the cluster: members, sessions, owners, sync.
    Status {
        #[arg(long)]
        url: Option<String>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Device pairing (read and changed in the data directory, while the node runs or not).
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Exec approvals of the whole cluster, through a running node's gateway: list pending
    /// commands, approve or deny one.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
        /// The gateway (default: ws://127.0.0.1:<gateway.port>).
        #[arg(long, global = true)]
        url: Option<String>,
    },
    /// Development helpers.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    /// Work with the config file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Skills on this machine: ready, gated (what is missing) or invalid (why).
    Skills {
        #[command(subcommand)]
        command: SkillsCommand,
    },
    /// Sessions of the data directory, read from its store directly (stop the node first).
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Import sessions from another gateway's files into the data directory's store.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// Serve a scripted model API (Anthropic and OpenAI wire formats) for tests and benchmarks.
    MockLlm {
        /// Address to listen on, e.g. 127.0.0.1:8900 (port 0 picks a free one).
        #[arg(long)]
        listen: String,
        /// A JSON script of responses, consumed in order (else every reply echoes).
        #[arg(long)]
        script: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// Pending requests and paired devices.
    List,
    /// Approve a pending request (its request id).
    Approve { request_id: String },
    /// Reject a pending request (its request id).
    Reject { request_id: String },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Commands waiting for an operator (with --all, recent decisions too).
    List {
        #[arg(long)]
        all: bool,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let a waiting command run (once; with --always, also add its binaries to the agent's
    /// allowlist on every node).
    Approve {
        id: String,
        #[arg(long)]
        always: bool,
    },
    /// Refuse a waiting command.
    Deny { id: String },
}

#[derive(Subcommand)]
enum DevCommand {
    /// Start a local cluster on loopback; Ctrl-C drains every node.
    Cluster {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Gateway port of the first node; node i uses base + 10*i (mesh: +1).
        #[arg(long, default_value_t = 18789)]
        base_port: u16,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// The most recently updated sessions (from the index; no session is loaded).
    List {
        /// How many sessions to show.
        #[arg(long, default_value_t = cli::sessions::LIST_LIMIT_DEFAULT)]
        limit: usize,
        /// Only this agent's sessions.
        #[arg(long)]
        agent: Option<String>,
    },
    /// A session's metadata and its last messages.
    Show {
        /// The session key, e.g. agent:main:main.
        key: String,
        /// How many of the last messages to print.
        #[arg(long, default_value_t = cli::sessions::SHOW_LIMIT_DEFAULT)]
        limit: usize,
    },
    /// Write a session's current transcript in OpenClaw's format.
    Export {
        /// The session key, e.g. agent:main:main.
        key: String,
        /// The output format (jsonl: the pi transcript OpenClaw reads as <sessionId>.jsonl).
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormatArg,
        /// Write to this file (written whole, then renamed into place) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormatArg {
    Jsonl,
}

#[derive(Subcommand)]
enum ImportCommand {
    /// An OpenClaw state directory (e.g. ~/.openclaw): every agent's sessions.json and
    /// transcripts. Exits non-zero when any line or session was skipped.
    Openclaw {
        /// The OpenClaw state directory (holds agents/<agentId>/sessions/sessions.json).
        state_dir: PathBuf,
        /// Import only this agent.
        #[arg(long)]
        agent: Option<String>,
    },
}

#[derive(Subcommand)]
enum SkillsCommand {
    /// The skills an agent sees, in precedence order (or only those in --dir).
    List {
        /// List only the skill folders inside this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The agent whose workspace is searched (default: the default agent).
        #[arg(long)]
        agent: Option<String>,
        /// Print the `skills.status` JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check the config: prints OK, or every problem with its key path.
    Validate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let (data_dir, config_file) = (cli.data_dir.as_deref(), cli.config.as_deref());
    match cli.command {
        Command::Config { command: ConfigCommand::Validate } => validate(data_dir, config_file),
        Command::MockLlm { listen, script } => mock(&listen, script.as_deref()),
        Command::Up { listen, mesh_listen, mesh_advertise, join, node_name, discover } => {
            let Some(loaded) = load(data_dir, config_file) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let discover_mdns = match discover.as_deref() {
                None => false,
                Some("mdns") => true,
                Some(other) => {
                    eprintln!("--discover {other:?} is not supported; the only method is mdns");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let opts =
                UpOptions { listen, mesh_listen, mesh_advertise, join, node_name, discover_mdns };
            run_async(async move { serve::up(loaded, opts).await.map_err(|e| e.to_string()) })
        }
        Command::Chat { message, session, url } => {
            let Some(loaded) = load(data_dir, config_file) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let (url, creds) = cli::target(&loaded, url);
            run_async(async move {
                cli::chat(&url, &creds, &session, &message).await.map_err(|e| e.to_string())
            })
        }
        Command::Status { url, json } => {
            let Some(loaded) = load(data_dir, config_file) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let (url, creds) = cli::target(&loaded, url);
            run_async(
                async move { cli::status(&url, &creds, json).await.map_err(|e| e.to_string()) },
            )
        }
        Command::Approvals { command, url } => {
            let Some(loaded) = load(data_dir, config_file) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let (url, creds) = cli::target(&loaded, url);
            let action = match command {
                ApprovalsCommand::List { all, json } => ApprovalsAction::List { all, json },
                ApprovalsCommand::Approve { id, always } => ApprovalsAction::Approve { id, always },
                ApprovalsCommand::Deny { id } => ApprovalsAction::Deny { id },
            };
            run_async(async move {
                approvals_cli::run(&url, &creds, action).await.map_err(|e| e.to_string())
            })
        }
        Command::Devices { command } => {
            let Some(loaded) = load(data_dir, config_file) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let action = match command {
                DevicesCommand::List => DevicesAction::List,
                DevicesCommand::Approve { request_id } => DevicesAction::Approve(request_id),
                DevicesCommand::Reject { request_id } => DevicesAction::Reject(request_id),
            };
            report(cli::devices(&loaded.data_dir, action))
        }
        Command::Sessions { command } => {
            let Some(dir) = locate_data_dir(data_dir) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let action = match command {
                SessionsCommand::List { limit, agent } => SessionsAction::List { limit, agent },
                SessionsCommand::Show { key, limit } => SessionsAction::Show { key, limit },
                SessionsCommand::Export { key, format: ExportFormatArg::Jsonl, out } => {
                    SessionsAction::Export { key, format: ExportFormat::Jsonl, out }
                }
            };
            report(cli::sessions::sessions_command(&dir, action))
        }
        Command::Import { command: ImportCommand::Openclaw { state_dir, agent } } => {
            let Some(dir) = locate_data_dir(data_dir) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            cli::sessions::import_command(&dir, &state_dir, agent.as_deref())
        }
        Command::Skills { command: SkillsCommand::List { dir, agent, json } } => {
            let Some(loaded) = load(data_dir, config_file) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            match beamclaw::skills::list_command(&loaded, dir.as_deref(), agent.as_deref(), json) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dev { command: DevCommand::Cluster { nodes, base_port } } => {
            let Some(loaded) = load(data_dir, config_file) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let root = loaded.data_dir.join("dev-cluster");
            let secret = loaded.config.mesh.cluster_secret.as_ref().map(|s| s.expose().to_string());
            run_async(cli::dev_cluster(nodes, base_port, root, secret))
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

/// The data directory alone (`--data-dir`, else $BEAMCLAW_HOME, else ~/.beamclaw), for the
/// commands that work on its store and need no config.
fn locate_data_dir(data_dir: Option<&Path>) -> Option<PathBuf> {
    match ConfigSource::locate(data_dir, None) {
        Ok(source) => Some(source.data_dir),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

/// Loads the config, printing every problem on failure.
fn load(data_dir: Option<&Path>, file: Option<&Path>) -> Option<LoadedConfig> {
    match ConfigSource::locate(data_dir, file).and_then(|source| config::load(&source)) {
        Ok(loaded) => Some(loaded),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

fn report(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run_async(fut: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    beamclaw::provider::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    report(runtime.block_on(fut))
}

fn validate(data_dir: Option<&Path>, file: Option<&Path>) -> ExitCode {
    let result = ConfigSource::locate(data_dir, file).and_then(|source| config::load(&source));
    match result {
        Ok(loaded) => {
            match &loaded.file {
                Some(path) => println!("OK: {}", path.display()),
                None => println!("OK: no config file; defaults apply"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn mock(listen: &str, script: Option<&Path>) -> ExitCode {
    let responses = match script.map(mock_llm::read_script).transpose() {
        Ok(r) => r.unwrap_or_default(),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    run_async(async move {
        mock_llm::serve(listen, responses, |addr| {
            // Tests read this line to learn the port.
            println!("mock-llm listening on http://{addr}");
            tracing::info!(%addr, "mock LLM listening");
        })
        .await
        .map_err(|e| e.to_string())
    })
}
