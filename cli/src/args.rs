//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use linkgate::{Mode, Protocol};

use crate::addr::ListenAddr;
use crate::service::ServiceOptions;

/// An authenticated connection gate and secure pipe: only clients that prove a shared key get
/// through, and every byte after that is sealed.
#[derive(Debug, Parser)]
#[command(name = "linkgate", version, propagate_version = true)]
#[command(after_help = "Examples:
  linkgate serve --listen 0.0.0.0:7700 --upstream 127.0.0.1:6379 --keys /etc/linkgate/keys
  linkgate connect --listen 127.0.0.1:6380 --server gate.example:7700 --key alice.key
  linkgate check --server gate.example:7700 --key alice.key
  linkgate keygen --out keys/alice.key
  linkgate probe gate.example:7700 --key alice.key
  linkgate demo")]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) log: LogArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Gate side: admit authenticated clients and forward them to an upstream server.
    Serve(Box<ServeArgs>),
    /// Client side: accept local plain connections, authenticate each to a gate, forward.
    Connect(ConnectArgs),
    /// Try to authenticate once: exit 0 and print "admitted as ID", or exit 1 with the reason.
    Check(CheckArgs),
    /// Write a new random 32-byte key file (mode 0600).
    Keygen(KeygenArgs),
    /// A self-contained run on loopback: one client admitted, impostors refused.
    Demo(DemoArgs),
    /// Check a config file (TOML, several services) without starting: keys, addresses, options.
    CheckConfig(CheckConfigArgs),
    /// Try impostors against a gate and report what it did with each: exit 0 only if every one
    /// was refused (and, with --key, the key's holder admitted).
    Probe(ProbeArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  linkgate probe gate.example:7700                       # impostors only
  linkgate probe gate.example:7700 --key alice.key      # also: admission, plain mode, replay, tampering
  linkgate probe 127.0.0.1:7700 --key alice.key --json  # one JSON object per check

Run it from an address the gate exempts from penalties (--penalty-exempt) to test every impostor
itself: otherwise the gate soon refuses the probe at accept, which is right but tests less.")]
pub(crate) struct ProbeArgs {
    /// The gate (HOST:PORT).
    #[arg(value_name = "ADDR", value_parser = crate::addr::server_addr)]
    pub(crate) addr: String,
    /// A real key: check that its holder is admitted, and try plain mode, a replayed RESPONSE,
    /// the real id with a wrong key, and a tampered record after admission.
    #[arg(long, value_name = "PATH")]
    pub(crate) key: Option<PathBuf>,
    /// Read the real key from this environment variable instead (with --id).
    #[arg(long, value_name = "NAME")]
    pub(crate) key_env: Option<String>,
    /// Key id to present (default: the key file's stem; needs --key or --key-env).
    #[arg(long, value_name = "NAME")]
    pub(crate) id: Option<String>,
    /// The mode the legitimate client asks for (default sealed-fs; needs --key or --key-env).
    #[arg(long, value_name = "MODE", value_parser = session_mode)]
    pub(crate) mode: Option<Mode>,
    /// How long to wait for each reply.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration)]
    pub(crate) wait: Duration,
    /// How long a silent client may stay connected before that counts as a failure.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub(crate) silent_limit: Duration,
    /// One JSON object per check, then one for the summary.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) key_files: KeyFileArgs,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  guard a Redis server; only holders of a key in /etc/linkgate/keys get in:
    linkgate serve --listen 0.0.0.0:7700 --upstream 127.0.0.1:6379 --keys /etc/linkgate/keys
  behind haproxy (send-proxy-v2), telling the upstream who connected:
    linkgate serve --listen :7700 --accept-proxy-from 10.0.0.0/8 --send-proxy v2 \\
      --upstream 127.0.0.1:8080 --keys /etc/linkgate/keys
  Unix sockets, metrics, reload on key changes:
    linkgate serve --listen unix:/run/gate.sock --socket-mode 0660 \\
      --upstream unix:/run/redis/redis.sock --keys keys/ --metrics 127.0.0.1:9100 --watch-keys
  several services in one process:
    linkgate serve --config /etc/linkgate/linkgate.toml

SIGHUP reloads the keys (never stops the process; other config changes need a restart);
SIGINT/SIGTERM drain, a second one stops.
With neither --upstream nor --keys, serves the built-in echo service on 127.0.0.1:7700 with the
keys in keys/, creating keys/default.key if there is none and printing the client's commands.")]
pub(crate) struct ServeArgs {
    /// Several services from a TOML file instead of the service flags (see README,
    /// "Operating linkgate"). Example: --config /etc/linkgate/linkgate.toml
    #[arg(long, value_name = "FILE", conflicts_with_all = SERVICE_FLAGS)]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) service: ServiceOptions,
    #[command(flatten)]
    pub(crate) operations: OperationsArgs,
}

/// The service flags that a config file replaces.
const SERVICE_FLAGS: [&str; 26] = [
    "no_penalties",
    "penalty_exempt",
    "penalty_min",
    "penalty_max",
    "listen",
    "socket_mode",
    "upstream",
    "keys",
    "key_env",
    "key_id",
    "allow_open_key_permissions",
    "allow_group_readable_keys",
    "allow_plain",
    "require_forward_secrecy",
    "no_mux",
    "protocol",
    "handshake_timeout",
    "max_handshakes",
    "max_handshakes_per_source",
    "source_prefix",
    "accept_proxy_from",
    "send_proxy",
    "send_proxy_key_id_as",
    "upstream_connect_timeout",
    "max_connections",
    "drain_timeout",
];

/// Process-wide operations options (also settable in the config file).
#[derive(Debug, Args)]
pub(crate) struct OperationsArgs {
    /// Serve Prometheus/OpenMetrics metrics at http://ADDR/metrics (off by default).
    /// Example: --metrics 127.0.0.1:9100
    #[arg(long, value_name = "ADDR", value_parser = crate::addr::metrics_addr)]
    pub(crate) metrics: Option<String>,
    /// Reload keys when a key directory (or a key file's directory) changes, as well as on SIGHUP.
    #[arg(long)]
    pub(crate) watch_keys: bool,
    /// When a reload removes or changes a key, close the connections admitted under it (by
    /// default they stay open).
    #[arg(long)]
    pub(crate) drop_revoked: bool,
    /// Threads that run multiplexed tunnels, each tunnel with all its streams on one of them
    /// (default: the cores this process may use).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub(crate) tunnel_threads: Option<usize>,
}

#[derive(Debug, Args)]
#[command(after_help = "Example (as systemd's ExecReload would):
  linkgate check-config /etc/linkgate/linkgate.toml && kill -HUP $MAINPID")]
pub(crate) struct CheckConfigArgs {
    /// The config file.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
}

/// Options shared by the two long-running sides.
#[derive(Debug, Args)]
pub(crate) struct ServiceArgs {
    /// Connections forwarded at once; at the bound no new connection is accepted until one ends.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = at_least_one)]
    pub(crate) max_connections: usize,
    /// On SIGINT/SIGTERM, how long open connections may take to finish before exit.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    pub(crate) drain_timeout: Duration,
}

/// Hidden knobs for tests and benchmarks.
#[derive(Debug, Args)]
pub(crate) struct TestingArgs {
    /// Send a KeyUpdate after this many records under one key (tests key updates).
    #[arg(long, hide = true, value_name = "N")]
    pub(crate) key_update_after_records: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct KeyFileArgs {
    /// Accept key files that group or others can read, and key directories others can write to
    /// (not recommended: fix the modes instead).
    #[arg(long)]
    pub(crate) allow_open_key_permissions: bool,
    /// Accept key files readable by their group (0640, 0440) when that group is a shared
    /// service group, not a user's private group.
    #[arg(long)]
    pub(crate) allow_group_readable_keys: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example: reach a gated Redis with an unmodified redis-cli
  linkgate connect --listen 127.0.0.1:6380 --server gate.example:7700 --key alice.key
  redis-cli -p 6380 ping"
)]
pub(crate) struct ConnectArgs {
    /// Local address to accept plain connections on: HOST:PORT, :PORT (every IPv4 interface),
    /// unix:/path or systemd:NAME.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7701")]
    pub(crate) listen: ListenAddr,
    /// File mode of a Unix listening socket, in octal. Example: 0660
    #[arg(long, value_name = "MODE", value_parser = crate::addr::socket_mode)]
    pub(crate) socket_mode: Option<u32>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Carry every local connection as a stream of a few long-lived tunnels to the gate instead
    /// of a gate connection each: no TCP or linkgate handshake per connection (sealed modes only;
    /// the gate must not have --no-mux).
    #[arg(long)]
    pub(crate) mux: bool,
    /// Tunnels kept open with --mux; each one that drops is re-established with backoff.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = at_least_one, requires = "mux")]
    pub(crate) tunnels: usize,
    /// Threads that accept local connections with --mux, each with its share of the tunnels
    /// (default: the cores this process may use, at most --tunnels); --max-connections bounds
    /// them together.
    #[arg(long, value_name = "N", value_parser = at_least_one, requires = "mux")]
    pub(crate) tunnel_threads: Option<usize>,
    /// How often each tunnel's ends ping each other, and how long an answer may take before the
    /// tunnel is given up: INTERVAL[,TIMEOUT] (e.g. 10s,5s; the timeout defaults to 20s or the
    /// interval if shorter), or off. Shorter than a NAT's idle timeout keeps its flow alive.
    #[arg(
        long,
        value_name = "INTERVAL[,TIMEOUT]",
        default_value = "30s,20s",
        requires = "mux"
    )]
    pub(crate) tunnel_keepalive: TunnelKeepalive,
    #[command(flatten)]
    pub(crate) service: ServiceArgs,
    #[command(flatten)]
    pub(crate) testing: TestingArgs,
}

/// Who to authenticate to, and as whom.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// The linkgate server (HOST:PORT).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700", value_parser = crate::addr::server_addr)]
    pub(crate) server: String,
    /// The key file, or - to read the key from standard input (with --id). Default:
    /// keys/default.key. A running connect reloads it on SIGHUP.
    #[arg(long, value_name = "PATH")]
    pub(crate) key: Option<PathBuf>,
    /// Read the key from this environment variable instead (with --id); its value is never shown.
    #[arg(long, value_name = "NAME")]
    pub(crate) key_env: Option<String>,
    /// Key id to present (default: the key file's stem; required with --key - and --key-env).
    #[arg(long, value_name = "NAME")]
    pub(crate) id: Option<String>,
    /// What the connection carries after admission: sealed-fs (sealed, with forward secrecy),
    /// sealed, or plain (only if the gate allows it). Default: sealed-fs; the seed protocols
    /// have no modes.
    #[arg(long, value_name = "MODE", value_parser = session_mode)]
    pub(crate) mode: Option<Mode>,
    /// Handshake: linkgate1, or seed / seed-md5 (the original recipe's scheme with HMAC-SHA-256
    /// or, as published, HMAC-MD5, for its existing servers: no key id, and the server is not
    /// authenticated; short keys accepted with a warning).
    #[arg(long, value_name = "PROTOCOL", default_value = "linkgate1")]
    pub(crate) protocol: Protocol,
    /// Time allowed to connect and authenticate.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub(crate) timeout: Duration,
    #[command(flatten)]
    pub(crate) key_files: KeyFileArgs,
}

#[derive(Debug, Args)]
#[command(after_help = "Example: is my key right?
  linkgate check --server gate.example:7700 --key alice.key && echo ok")]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(after_help = "Example:
  linkgate keygen --out keys/alice.key     # then give alice.key to alice, keep a copy in the gate's keys/
  linkgate keygen --out -                  # print a key as hex, e.g. for a secret store")]
pub(crate) struct KeygenArgs {
    /// Where to write the key, named ID.key (the file's stem is its key id). `-` prints the key
    /// to stdout instead.
    #[arg(long, value_name = "PATH")]
    pub(crate) out: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Example:
  cargo run --release -- demo")]
pub(crate) struct DemoArgs {
    /// The handshake timeout of the demo gate (how long the silent client is given).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    pub(crate) handshake_timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// More log detail (-v debug, -vv trace). RUST_LOG, when set, wins.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Log lines held while stderr is slow before lines are dropped (tests lower it).
    #[arg(
        long,
        hide = true,
        value_name = "N",
        default_value_t = 16_384,
        global = true
    )]
    pub(crate) log_buffer_lines: usize,
    /// Log line format (json also makes errors and check's result JSON).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, global = true)]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("{err} (write durations like 5s or 500ms)"))
}

/// How a tunnel's ends check that the other is still there (`--tunnel-keepalive`): a PING
/// every `interval`, the tunnel closed when nothing has come back within `timeout`; or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunnelKeepalive {
    Every {
        interval: Duration,
        timeout: Duration,
    },
    Off,
}

impl Default for TunnelKeepalive {
    fn default() -> Self {
        let (interval, timeout) = linkgate::mux::MuxConfig::default()
            .keepalive()
            .unwrap_or((Duration::from_secs(30), Duration::from_secs(20)));
        Self::Every { interval, timeout }
    }
}

impl TunnelKeepalive {
    pub(crate) fn apply(self, config: linkgate::mux::MuxConfig) -> linkgate::mux::MuxConfig {
        match self {
            Self::Every { interval, timeout } => config.with_keepalive(interval, timeout),
            Self::Off => config.without_keepalive(),
        }
    }
}

impl std::str::FromStr for TunnelKeepalive {
    type Err = String;

    /// `off`, `INTERVAL` (20 s to answer, or the interval if shorter) or `INTERVAL,TIMEOUT`.
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "off" {
            return Ok(Self::Off);
        }
        let (interval, timeout) = match text.split_once(',') {
            Some((interval, timeout)) => (duration(interval)?, Some(duration(timeout)?)),
            None => (duration(text)?, None),
        };
        let least = Duration::from_millis(10);
        if interval < least || timeout.is_some_and(|t| t < least) {
            return Err("the interval and the timeout must be at least 10ms".into());
        }
        let timeout = timeout.unwrap_or_else(|| interval.min(Duration::from_secs(20)));
        Ok(Self::Every { interval, timeout })
    }
}

/// A mode for --mode: the multiplexed ones are asked for with `connect --mux`.
pub(crate) fn session_mode(text: &str) -> Result<Mode, String> {
    let mode: Mode = text
        .parse()
        .map_err(|_| format!("unknown mode {text:?} (use sealed-fs, sealed or plain)"))?;
    if mode.is_multiplexed() {
        return Err(format!(
            "{mode} is not chosen with --mode: use `linkgate connect --mux --mode {}`",
            mode.records()
        ));
    }
    Ok(mode)
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}
