//! The `beamclaw` command line: parses arguments and dispatches into the library's modules.

use beamclaw::config::{self, ConfigSource};
use beamclaw::mock_llm;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
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
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with the config file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
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
enum ConfigCommand {
    /// Check the config: prints OK, or every problem with its key path.
    Validate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Config { command: ConfigCommand::Validate } => {
            validate(cli.data_dir.as_deref(), cli.config.as_deref())
        }
        Command::MockLlm { listen, script } => mock(&listen, script.as_deref()),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn validate(data_dir: Option<&std::path::Path>, file: Option<&std::path::Path>) -> ExitCode {
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

fn mock(listen: &str, script: Option<&std::path::Path>) -> ExitCode {
    let responses = match script.map(mock_llm::read_script).transpose() {
        Ok(r) => r.unwrap_or_default(),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(mock_llm::serve(listen, responses, |addr| {
        // Tests read this line to learn the port.
        println!("mock-llm listening on http://{addr}");
        tracing::info!(%addr, "mock LLM listening");
    }));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
