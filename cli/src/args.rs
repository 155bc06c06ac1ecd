//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use linkgate::{Mode, Protocol};

use crate::addr::ListenAddr;
use crate::upstream::Upstream;

/// An authenticated connection gate and secure pipe: only clients that prove a shared key get
/// through, and every byte after that is sealed.
#[derive(Debug, Parser)]
#[command(name = "linkgate", version, propagate_version = true)]
#[command(after_help = "Examples:
  linkgate serve --listen 0.0.0.0:7700 --upstream 127.0.0.1:6379 --keys /etc/linkgate/keys
  linkgate connect --listen 127.0.0.1:6380 --server gate.example:7700 --key alice.key
  linkgate check --server gate.example:7700 --key alice.key
  linkgate keygen --out keys/alice.key
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
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example: guard a Redis server; only holders of a key in /etc/linkgate/keys get in
  linkgate serve --listen 0.0.0.0:7700 --upstream 127.0.0.1:6379 --keys /etc/linkgate/keys

With neither --upstream nor --keys, serves the built-in echo service on 127.0.0.1:7700 with the
keys in keys/, creating keys/default.key if there is none and printing the client's commands."
)]
pub(crate) struct ServeArgs {
    /// Address to listen on: HOST:PORT, or :PORT for every interface.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    pub(crate) listen: ListenAddr,
    /// Server to forward admitted connections to (HOST:PORT); without it, an echo service.
    #[arg(long, value_name = "ADDR", value_parser = Upstream::parse)]
    pub(crate) upstream: Option<Upstream>,
    /// A key file, or a directory of *.key files (each file's stem is its key id).
    /// Required with --upstream; without either, keys/ (a first key is created for the demo echo).
    #[arg(long, value_name = "PATH")]
    pub(crate) keys: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) key_files: KeyFileArgs,
    /// Admit clients that ask for plain mode (no sealing after admission): only for trusted
    /// paths such as loopback or a VPN.
    #[arg(long)]
    pub(crate) allow_plain: bool,
    /// Refuse sealed mode without forward secrecy; only sealed-fs (and plain, if allowed) get in.
    #[arg(long)]
    pub(crate) require_forward_secrecy: bool,
    /// Handshake: linkgate1, or seed (the original recipe's scheme, for its existing clients:
    /// no key ids, no server authentication, no sealing; short keys accepted with a warning).
    #[arg(long, value_name = "PROTOCOL", default_value = "linkgate1")]
    pub(crate) protocol: Protocol,
    /// How long a client has to complete the handshake.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub(crate) handshake_timeout: Duration,
    /// Handshakes in progress at once; past it new connections are closed at once.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = at_least_one)]
    pub(crate) max_handshakes: usize,
    /// Handshakes in progress at once from one source (an IPv4 address, an IPv6 /64).
    #[arg(long, alias = "max-handshakes-per-ip", value_name = "N", default_value_t = 64, value_parser = at_least_one)]
    pub(crate) max_handshakes_per_source: usize,
    #[command(flatten)]
    pub(crate) balancer: BalancerArgs,
    #[command(flatten)]
    pub(crate) service: ServiceArgs,
    #[command(flatten)]
    pub(crate) testing: TestingArgs,
}

/// Working behind and in front of load balancers (the PROXY protocol).
#[derive(Debug, Args)]
pub(crate) struct BalancerArgs {
    /// Load balancers that send a PROXY protocol header (v1 or v2) first, as CIDR[,CIDR...].
    /// Connections from them must send one and are known by the client it names; any other
    /// connection must not send one. Example: --accept-proxy-from 10.0.0.0/8,127.0.0.1/32
    #[arg(long, value_name = "CIDRS", value_delimiter = ',', value_parser = cidr)]
    pub(crate) accept_proxy_from: Vec<linkgate::IpNet>,
    /// Send a PROXY protocol header to the upstream before any byte: the real client as source,
    /// the gate's address as destination; v2 also carries the key id (TLV 0xE0) and the
    /// connection id (UNIQUE_ID). The upstream must accept PROXY headers from the gate only.
    #[arg(long, value_name = "VERSION")]
    pub(crate) send_proxy: Option<linkgate::proxy_protocol::Version>,
    /// Also put the key id where older upstreams look (haproxy before 2.9 reads only
    /// fc_pp_authority): --send-proxy-key-id-as authority.
    #[arg(long, value_name = "TLV", requires = "send_proxy", value_parser = ["authority"])]
    pub(crate) send_proxy_key_id_as: Option<String>,
}

fn cidr(text: &str) -> Result<linkgate::IpNet, String> {
    text.parse::<linkgate::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(linkgate::IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or network (e.g. 10.0.0.0/8, 127.0.0.1)"))
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
    /// Local address to accept plain connections on: HOST:PORT, or :PORT for every interface.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7701")]
    pub(crate) listen: ListenAddr,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    #[command(flatten)]
    pub(crate) service: ServiceArgs,
    #[command(flatten)]
    pub(crate) testing: TestingArgs,
}

/// Who to authenticate to, and as whom.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// The linkgate server (HOST:PORT).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    pub(crate) server: String,
    /// The key file.
    #[arg(long, value_name = "PATH", default_value = "keys/default.key")]
    pub(crate) key: PathBuf,
    /// Key id to present (default: the key file's stem).
    #[arg(long, value_name = "NAME")]
    pub(crate) id: Option<String>,
    /// What the connection carries after admission: sealed-fs (sealed, with forward secrecy),
    /// sealed, or plain (only if the gate allows it).
    #[arg(long, value_name = "MODE", default_value = "sealed-fs")]
    pub(crate) mode: Mode,
    /// Handshake: linkgate1, or seed (the original recipe's scheme, for its existing servers:
    /// no key id, and the server is not authenticated; short keys accepted with a warning).
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

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}
