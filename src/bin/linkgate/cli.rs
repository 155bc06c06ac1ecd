//! Command-line arguments and logging set-up.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use linkgate::Protocol;
use linkgate::proxy::Upstream;
use tracing_subscriber::EnvFilter;

/// An authenticated connection gate: only clients that prove a shared key get through.
#[derive(Debug, Parser)]
#[command(name = "linkgate", version, propagate_version = true)]
#[command(after_help = "Examples:
  linkgate serve --listen 0.0.0.0:7700 --upstream 127.0.0.1:6379 --keys /etc/linkgate/keys
  linkgate connect --listen 127.0.0.1:6380 --server gate.example:7700 --key alice.key
  linkgate check --server gate.example:7700 --key alice.key
  linkgate keygen --out keys/alice.key
  linkgate demo")]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Gate side: admit authenticated clients and forward them to an upstream server.
    Serve(ServeArgs),
    /// Client side: accept local plain connections, authenticate each to a gate, forward.
    Connect(ConnectArgs),
    /// Try to authenticate once: exit 0 and print "admitted as ID", or exit 1 with the reason.
    Check(CheckArgs),
    /// Write a new random 32-byte key file (mode 0600).
    Keygen(KeygenArgs),
    /// A self-contained run on loopback: one client admitted, impostors refused.
    Demo(DemoArgs),
    /// Load generators and test servers for benchmarks (see BENCHMARKS.md).
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example: guard a Redis server; only holders of a key in /etc/linkgate/keys get in
  linkgate serve --listen 0.0.0.0:7700 --upstream 127.0.0.1:6379 --keys /etc/linkgate/keys

With no arguments, serves the built-in echo service on 127.0.0.1:7700 with the keys in keys/,
creating keys/default.key if there is none and printing the client's commands."
)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// Server to forward admitted connections to (HOST:PORT); without it, an echo service.
    #[arg(long, value_name = "ADDR", value_parser = Upstream::tcp)]
    pub upstream: Option<Upstream>,
    /// A key file, or a directory of *.key files (each file's stem is its key id).
    /// Default: keys/, where a first key is created if there is none.
    #[arg(long, value_name = "PATH")]
    pub keys: Option<PathBuf>,
    #[command(flatten)]
    pub key_files: KeyFileArgs,
    /// Handshake: linkgate1, or seed (the original recipe's scheme, for its existing clients:
    /// no key ids, no server authentication; short keys accepted with a warning).
    #[arg(long, value_name = "PROTOCOL", default_value = "linkgate1")]
    pub protocol: Protocol,
    /// How long a client has to complete the handshake.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; past it new connections are closed at once.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = at_least_one)]
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one source IP.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = at_least_one)]
    pub max_handshakes_per_ip: usize,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// Options shared by the two long-running sides.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// Connections forwarded at once; at the bound no new connection is accepted until one ends.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = at_least_one)]
    pub max_connections: usize,
    /// On SIGINT/SIGTERM, how long open connections may take to finish before exit.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    pub drain_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct KeyFileArgs {
    /// Accept key files that group or others can read (not recommended: fix the mode instead).
    #[arg(long)]
    pub allow_open_key_permissions: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example: reach a gated Redis with an unmodified redis-cli
  linkgate connect --listen 127.0.0.1:6380 --server gate.example:7700 --key alice.key
  redis-cli -p 6380 ping"
)]
pub struct ConnectArgs {
    /// Local address to accept plain connections on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7701")]
    pub listen: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// Who to authenticate to, and as whom.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The linkgate server (HOST:PORT).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    pub server: String,
    /// The key file.
    #[arg(long, value_name = "PATH", default_value = "keys/default.key")]
    pub key: PathBuf,
    /// Key id to present (default: the key file's stem).
    #[arg(long, value_name = "NAME")]
    pub id: Option<String>,
    /// Handshake: linkgate1, or seed (the original recipe's scheme, for its existing servers:
    /// no key id, and the server is not authenticated; short keys accepted with a warning).
    #[arg(long, value_name = "PROTOCOL", default_value = "linkgate1")]
    pub protocol: Protocol,
    /// Time allowed to connect and authenticate.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub key_files: KeyFileArgs,
}

#[derive(Debug, Args)]
#[command(after_help = "Example: is my key right?
  linkgate check --server gate.example:7700 --key alice.key && echo ok")]
pub struct CheckArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(after_help = "Example:
  linkgate keygen --out keys/alice.key     # then give alice.key to alice, keep a copy in the gate's keys/
  linkgate keygen --out -                  # print a key as hex, e.g. for a secret store")]
pub struct KeygenArgs {
    /// Where to write the key; the file's stem is its id. `-` prints the key to stdout instead.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Example:
  cargo run --release -- demo")]
pub struct DemoArgs {
    /// The handshake timeout of the demo gate (how long the silent client is given).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    pub handshake_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// More log detail (-v debug, -vv trace). RUST_LOG, when set, wins.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log line format.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogArgs {
    /// Logs go to stderr, so stdout carries only what a command prints as its result.
    /// `quiet_by_default` is for the demo, which prints its own story.
    pub fn init(&self, quiet_by_default: bool) {
        let level = match (self.quiet, self.verbose) {
            (true, _) => "warn",
            (false, 0) if quiet_by_default => "warn",
            (false, 0) => "info",
            (false, 1) => "debug",
            _ => "trace",
        };
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().flatten_event(true).init(),
        }
    }
}

pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("{err} (write durations like 5s or 500ms)"))
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

/// Help and version go out as clap prints them; a usage error becomes one line and exit 2.
pub fn report_usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("linkgate: {first} (see 'linkgate --help')");
    ExitCode::from(2)
}
