//! One gated service: its options (from `serve`'s flags or a `[[service]]` table of the config
//! file, the same fields either way), and running it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use linkgate::proxy_protocol::Version;
use linkgate::record::RecordLimits;
use linkgate::{
    Drained, Gate, GateConfig, GatedListener, IpNet, KeyFileOptions, Keyring, Listen,
    ListenerConfig, PenaltyConfig, Protocol, ServeOptions, SourcePrefix,
};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::addr::{ListenAddr, socket_mode};
use crate::args::{KeyFileArgs, duration};
use crate::keys::{self, KeySource};
use crate::listen::{Bound, SystemdSockets};
use crate::metrics::{Metrics, ServiceMetrics};
use crate::proxy::{self, ServeContext};
use crate::revocations::Revocations;
use crate::signals::Signals;
use crate::socket::Socket;
use crate::threads::Threads;
use crate::upstream::Upstream;

/// Everything about one service. As flags of `linkgate serve`, or as the keys of a `[[service]]`
/// table in the config file (the same names, e.g. `max-handshakes = 256`, durations as strings
/// like "5s"; unknown keys are refused with their line and column).
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct ServiceOptions {
    /// The service's name in logs and metrics (config file only; flags make one named "default").
    #[arg(skip = String::from("default"))]
    #[serde(default = "default_name")]
    pub(crate) name: String,
    /// Address to listen on: HOST:PORT, :PORT (every IPv4 interface), unix:/path, or systemd:NAME
    /// (a socket systemd passed, by FileDescriptorName).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    #[serde(deserialize_with = "from_str", default = "default_listen")]
    pub(crate) listen: ListenAddr,
    /// File mode of a Unix listening socket, in octal (default: from the umask). Example: 0660
    #[arg(long, value_name = "MODE", value_parser = socket_mode)]
    #[serde(default, deserialize_with = "opt_mode")]
    pub(crate) socket_mode: Option<u32>,
    /// Server to forward admitted connections to: HOST:PORT or unix:/path; without it, an echo
    /// service.
    #[arg(long, value_name = "ADDR", value_parser = Upstream::parse)]
    #[serde(default, deserialize_with = "opt_upstream")]
    pub(crate) upstream: Option<Upstream>,
    /// A key file, a directory of *.key files (each file's stem is its key id), or - for one key
    /// on standard input (with --key-id). Required with --upstream; without either, keys/ (a
    /// first key is created for the demo echo).
    #[arg(long, value_name = "PATH")]
    #[serde(default)]
    pub(crate) keys: Option<PathBuf>,
    /// Read one key from this environment variable instead (with --key-id), e.g. in a container.
    /// The value is never shown.
    #[arg(long, value_name = "NAME")]
    #[serde(default)]
    pub(crate) key_env: Option<String>,
    /// The key id of a key read from standard input or the environment.
    #[arg(long, value_name = "NAME")]
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    /// Accept key files that group or others can read, and key directories others can write to
    /// (not recommended: fix the modes instead).
    #[arg(long)]
    #[serde(default)]
    pub(crate) allow_open_key_permissions: bool,
    /// Accept key files readable by their group (0640, 0440) when that group is a shared service
    /// group, not a user's private group.
    #[arg(long)]
    #[serde(default)]
    pub(crate) allow_group_readable_keys: bool,
    /// Admit clients that ask for plain mode (no sealing after admission): only for trusted
    /// paths such as loopback or a VPN.
    #[arg(long)]
    #[serde(default)]
    pub(crate) allow_plain: bool,
    /// Refuse sealed mode without forward secrecy: only sealed-fs gets in (not with --allow-plain).
    #[arg(long)]
    #[serde(default)]
    pub(crate) require_forward_secrecy: bool,
    /// Refuse multiplexed tunnels (`connect --mux`): by default a client admitted in a sealed
    /// mode may carry many connections as streams of one tunnel, each with its own upstream
    /// connection.
    #[arg(long)]
    #[serde(default)]
    pub(crate) no_mux: bool,
    /// How often the gate pings each tunnel, and how long an answer may take before the tunnel
    /// is closed: INTERVAL[,TIMEOUT] (e.g. 10s,5s), or off (the client's pings are still
    /// answered).
    #[arg(long, value_name = "INTERVAL[,TIMEOUT]", default_value = "30s,20s")]
    #[serde(default, deserialize_with = "from_str_or_default")]
    pub(crate) tunnel_keepalive: crate::args::TunnelKeepalive,
    /// Handshake: linkgate1, or seed / seed-md5 (the original recipe's scheme with HMAC-SHA-256
    /// or, as published, HMAC-MD5, for its existing clients: no key ids, no server
    /// authentication, no sealing; short keys accepted with a warning).
    #[arg(long, value_name = "PROTOCOL", default_value = "linkgate1")]
    #[serde(default, deserialize_with = "from_str_or_default")]
    pub(crate) protocol: Protocol,
    /// How long a client has to complete the handshake.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    #[serde(default = "five_seconds", deserialize_with = "serde_duration")]
    pub(crate) handshake_timeout: Duration,
    /// Handshakes in progress at once; when all are taken, the oldest handshake of the source
    /// holding the most is ended to make room (RELIABILITY.md).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = at_least_one)]
    #[serde(default = "default_max_handshakes")]
    pub(crate) max_handshakes: usize,
    /// Handshakes in progress at once from one source (an IPv4 address, an IPv6 /64).
    #[arg(long, alias = "max-handshakes-per-ip", value_name = "N", default_value_t = 64, value_parser = at_least_one)]
    #[serde(default = "default_per_source")]
    pub(crate) max_handshakes_per_source: usize,
    /// How addresses are grouped into one source, as IPv4:IPv6 prefix lengths.
    #[arg(long, value_name = "V4:V6", default_value = "32:64")]
    #[serde(default, deserialize_with = "from_str_or_default")]
    pub(crate) source_prefix: SourcePrefix,
    /// Turn off per-source penalties (by default a source whose handshakes keep failing is
    /// refused at accept for a while, as OpenSSH's PerSourcePenalties do).
    #[arg(long)]
    #[serde(default)]
    pub(crate) no_penalties: bool,
    /// Sources never penalized, as CIDR[,CIDR...]. Example: --penalty-exempt 10.1.0.0/16
    #[arg(long, value_name = "CIDRS", value_delimiter = ',', value_parser = cidr)]
    #[serde(default, deserialize_with = "cidrs")]
    pub(crate) penalty_exempt: Vec<IpNet>,
    /// Penalty a source must accrue before its connections are refused (each failed proof or
    /// refused mode adds 5s, a timeout, malformed RESPONSE or refused header 10s, closing early 1s).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = duration)]
    #[serde(default = "fifteen_seconds", deserialize_with = "serde_duration")]
    pub(crate) penalty_min: Duration,
    /// The longest a source can be refused.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = duration)]
    #[serde(default = "ten_minutes", deserialize_with = "serde_duration")]
    pub(crate) penalty_max: Duration,
    /// Load balancers that send a PROXY protocol header (v1 or v2) first, as CIDR[,CIDR...].
    /// Connections from them must send one and are known by the client it names; any other
    /// connection must not send one. Example: --accept-proxy-from 10.0.0.0/8,127.0.0.1/32
    #[arg(long, value_name = "CIDRS", value_delimiter = ',', value_parser = cidr)]
    #[serde(default, deserialize_with = "cidrs")]
    pub(crate) accept_proxy_from: Vec<IpNet>,
    /// Send a PROXY protocol header (v1 or v2) to the upstream before any byte: the real client
    /// as source, the gate's address as destination; v2 also carries the key id (TLV 0xE0) and
    /// the connection id (UNIQUE_ID). The upstream must accept PROXY headers from the gate only.
    #[arg(long, value_name = "VERSION")]
    #[serde(default, deserialize_with = "opt_version")]
    pub(crate) send_proxy: Option<Version>,
    /// Also put the key id where older upstreams look (haproxy before 2.9 reads only
    /// fc_pp_authority): --send-proxy-key-id-as authority.
    #[arg(long, value_name = "TLV", requires = "send_proxy", value_parser = ["authority"])]
    #[serde(default)]
    pub(crate) send_proxy_key_id_as: Option<String>,
    /// How long to wait for the upstream to accept a connection.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    #[serde(default = "five_seconds", deserialize_with = "serde_duration")]
    pub(crate) upstream_connect_timeout: Duration,
    /// Connections forwarded at once; at the bound no new connection is accepted until one ends.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = at_least_one)]
    #[serde(default = "default_max_connections")]
    pub(crate) max_connections: usize,
    /// Connections, tunnels and tunnel streams one key id may hold at once (default: no bound
    /// of its own), so one client cannot take every place: past it a connection is reset right
    /// after admission and a stream refused.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    #[serde(default)]
    pub(crate) max_connections_per_key: Option<usize>,
    /// On SIGINT/SIGTERM, how long open connections may take to finish before exit (a second
    /// signal cuts them off at once).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    #[serde(default = "thirty_seconds", deserialize_with = "serde_duration")]
    pub(crate) drain_timeout: Duration,
    /// Send a KeyUpdate after this many records under one key (tests key updates).
    #[arg(long, hide = true, value_name = "N")]
    #[serde(skip)]
    pub(crate) key_update_after_records: Option<u64>,
}

/// Service names go into every log line and metric label: short, and nothing that could break
/// a line.
fn is_service_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn default_name() -> String {
    "default".into()
}
fn default_listen() -> ListenAddr {
    ListenAddr::Tcp("127.0.0.1:7700".into())
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn fifteen_seconds() -> Duration {
    Duration::from_secs(15)
}
fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}
fn default_max_handshakes() -> usize {
    1024
}
fn default_per_source() -> usize {
    64
}
fn default_max_connections() -> usize {
    10_000
}

pub(crate) fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

pub(crate) fn cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or network (e.g. 10.0.0.0/8, 127.0.0.1)"))
}

fn from_str<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    let text = String::deserialize(de)?;
    text.parse().map_err(serde::de::Error::custom)
}

fn from_str_or_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    from_str(de)
}

fn opt_mode<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<u32>, D::Error> {
    let text = String::deserialize(de)?;
    socket_mode(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn opt_upstream<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Upstream>, D::Error> {
    let text = String::deserialize(de)?;
    Upstream::parse(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn opt_version<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Version>, D::Error> {
    let text = String::deserialize(de)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

fn serde_duration<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    duration(&text).map_err(serde::de::Error::custom)
}

fn cidrs<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<IpNet>, D::Error> {
    let texts = Vec::<String>::deserialize(de)?;
    texts
        .iter()
        .map(|text| cidr(text))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

impl ServiceOptions {
    fn key_file_options(&self) -> KeyFileOptions {
        keys::options(
            &KeyFileArgs {
                allow_open_key_permissions: self.allow_open_key_permissions,
                allow_group_readable_keys: self.allow_group_readable_keys,
            },
            self.protocol,
        )
    }

    fn gate_config(&self) -> GateConfig {
        let mut config = GateConfig::new()
            .with_protocol(self.protocol)
            .with_handshake_timeout(self.handshake_timeout)
            .with_plain_allowed(self.allow_plain)
            .with_forward_secrecy_required(self.require_forward_secrecy)
            .with_multiplexing_allowed(!self.no_mux);
        if let Some(records) = self.key_update_after_records {
            config =
                config.with_record_limits(RecordLimits::new().with_key_update_interval(records));
        }
        config
    }

    fn penalties(&self) -> PenaltyConfig {
        if self.no_penalties {
            return PenaltyConfig::disabled();
        }
        PenaltyConfig::new()
            .with_exempt(self.penalty_exempt.iter().copied())
            .with_min(self.penalty_min)
            .with_max(self.penalty_max)
    }

    fn modes_text(&self) -> String {
        let modes = match (
            self.protocol,
            self.allow_plain,
            self.require_forward_secrecy,
        ) {
            (protocol, _, _) if protocol.is_seed() => {
                return format!("{} (plain)", protocol.name());
            }
            (_, true, _) => "sealed-fs,sealed,plain",
            (_, false, true) => "sealed-fs",
            _ => "sealed-fs,sealed",
        };
        let mux = if self.no_mux { "" } else { " (+mux)" };
        format!("{modes}{mux}")
    }

    /// Checks the options that only make sense together.
    pub(crate) fn check(&self) -> Result<()> {
        if !is_service_name(&self.name) {
            bail!(
                "service name {:?}: use 1 to 64 ASCII letters, digits, '.', '_' or '-' (it appears in every log line and metric)",
                self.name
            );
        }
        for (value, what) in [
            (self.max_handshakes, "max-handshakes"),
            (self.max_handshakes_per_source, "max-handshakes-per-source"),
            (self.max_connections, "max-connections"),
            (
                self.max_connections_per_key.unwrap_or(1),
                "max-connections-per-key",
            ),
        ] {
            if value == 0 {
                bail!("service {}: {what} must be at least 1", self.name);
            }
        }
        if self.handshake_timeout.is_zero() {
            bail!(
                "service {}: a handshake-timeout of 0 would drop every client before it can answer",
                self.name
            );
        }
        if !self.no_penalties && self.penalty_min > self.penalty_max {
            bail!(
                "service {}: penalty-min ({}) is longer than penalty-max ({})",
                self.name,
                humantime::format_duration(self.penalty_min),
                humantime::format_duration(self.penalty_max)
            );
        }
        if let Some(tlv) = &self.send_proxy_key_id_as {
            if tlv != "authority" {
                bail!(
                    "service {}: send-proxy-key-id-as {tlv:?}: the only choice is \"authority\"",
                    self.name
                );
            }
            if self.send_proxy != Some(Version::V2) {
                bail!(
                    "service {}: send-proxy-key-id-as needs send-proxy v2 (v1 headers carry no TLVs)",
                    self.name
                );
            }
        }
        if self.protocol.is_seed() && self.require_forward_secrecy {
            bail!(
                "service {}: protocol {} has no sealed modes, so require-forward-secrecy cannot apply",
                self.name,
                self.protocol.name()
            );
        }
        if self.allow_plain && self.require_forward_secrecy {
            bail!(
                "service {}: allow-plain and require-forward-secrecy contradict each other: choose one",
                self.name
            );
        }
        if self.socket_mode.is_some() && !matches!(self.listen, ListenAddr::Unix(_)) {
            bail!(
                "service {}: socket-mode applies to unix: listen addresses only",
                self.name
            );
        }
        Ok(())
    }

    /// The key source, or the demo's default (`keys/`, a first key created) when the service
    /// serves the built-in echo and names no keys.
    pub(crate) fn key_source(&self, demo_default: bool) -> Result<(KeySource, Option<PathBuf>)> {
        let options = self.key_file_options();
        match KeySource::new(
            self.keys.as_deref(),
            self.key_env.as_deref(),
            self.key_id.as_deref(),
            &options,
        )? {
            Some(source) => Ok((source, None)),
            None if self.upstream.is_none() && demo_default => {
                let (dir, created) = crate::serve::default_keys()?;
                Ok((KeySource::Path(dir), created))
            }
            None if demo_default => bail!(
                "service {}: --upstream needs --keys: the gate would otherwise guard your server with a key nobody chose. Make one with `linkgate keygen --out keys/alice.key`, then add --keys keys/",
                self.name
            ),
            // A config file: its spelling, and no claim about an upstream it may not name.
            None => bail!(
                "service {}: no keys: set keys = \"/path/to/keys/\" (a directory of *.key files, or one file); make one with `linkgate keygen --out /path/to/keys/alice.key`",
                self.name
            ),
        }
    }
}

/// What reloading a service's keys needs.
#[derive(Clone)]
pub(crate) struct ServiceKeys {
    pub(crate) name: String,
    pub(crate) source: KeySource,
    pub(crate) options: KeyFileOptions,
    pub(crate) gate: Gate,
    pub(crate) revoked: Revocations,
    pub(crate) metrics: Option<ServiceMetrics>,
}

/// A service ready to run: keys loaded, gate built, socket bound.
pub(crate) struct Service {
    options: ServiceOptions,
    keys: ServiceKeys,
    bound: Bound,
    key_ids: String,
    pub(crate) created_key: Option<PathBuf>,
}

impl Service {
    /// Loads the keys, builds the gate and binds the listener; fails with one readable line.
    pub(crate) async fn prepare(
        options: ServiceOptions,
        demo_default: bool,
        drop_revoked: bool,
        systemd: &SystemdSockets,
        metrics: Option<&Arc<Metrics>>,
    ) -> Result<Self> {
        options.check()?;
        let (source, created_key) = options.key_source(demo_default)?;
        let key_options = options.key_file_options();
        let keyring = source
            .load(&key_options)
            .with_context(|| format!("service {}", options.name))?;
        for key in keyring.keys().filter(|key| key.is_short()) {
            keys::warn_short_key(key);
        }
        keys::warn_if_seed(options.protocol);
        let key_ids = ids_text(&keyring);
        let keys_loaded = keyring.len();
        let gate = Gate::with_config(keyring, options.gate_config())?;
        let bound = crate::listen::bind(&options.listen, options.socket_mode, systemd).await?;
        let metrics = metrics.map(|metrics| metrics.service(&options.name));
        if let Some(metrics) = &metrics {
            metrics.keys_loaded(keys_loaded);
        }
        let revoked = Revocations::new(drop_revoked);
        Ok(Self {
            keys: ServiceKeys {
                name: options.name.clone(),
                source,
                options: key_options,
                gate,
                revoked,
                metrics,
            },
            options,
            bound,
            key_ids,
            created_key,
        })
    }

    pub(crate) fn keys(&self) -> ServiceKeys {
        self.keys.clone()
    }

    /// What to show in the "listening" line.
    pub(crate) fn local(&self) -> String {
        self.bound.describe()
    }

    /// Serves until the first termination signal, then drains.
    pub(crate) async fn run(self, signals: Signals, tunnel_threads: Arc<Threads>) -> Drained {
        let Self {
            options,
            keys,
            bound,
            key_ids,
            ..
        } = self;
        let upstream = options.upstream.clone().unwrap_or(Upstream::Echo);
        tracing::info!(
            service = %options.name,
            listen = %bound.describe(),
            upstream = %upstream,
            keys = %key_ids,
            modes = %options.modes_text(),
            "linkgate serve: listening"
        );
        let mut listener_config = ListenerConfig::new()
            .with_max_handshakes(options.max_handshakes)
            .with_max_handshakes_per_source(options.max_handshakes_per_source)
            .with_source_prefix(options.source_prefix)
            .with_proxy_protocol_from(options.accept_proxy_from.iter().copied())
            .with_penalties(options.penalties())
            .with_service_name(options.name.as_str());
        if let Some(metrics) = &keys.metrics {
            listener_config = listener_config.with_telemetry(Arc::new(metrics.clone()));
        }
        let draining = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let (signals, draining) = (signals.clone(), draining.clone());
            async move {
                signals.requested().await;
                draining.cancel();
            }
        });
        let context = Arc::new(ServeContext {
            service: options.name.clone(),
            upstream,
            connect_timeout: options.upstream_connect_timeout,
            send_proxy: options
                .send_proxy
                .map(|version| (version, options.send_proxy_key_id_as.is_some())),
            revoked: keys.revoked.clone(),
            metrics: keys.metrics.clone(),
            draining,
            // Clamped: a semaphore refuses (panics at) more permits than it can count.
            per_key: options
                .max_connections_per_key
                .map(crate::per_key::PerKey::new),
            stream_slots: Arc::new(tokio::sync::Semaphore::new(
                options
                    .max_connections
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            mux: options
                .tunnel_keepalive
                .apply(linkgate::mux::MuxConfig::default()),
            tunnel_threads,
            cut_off: crate::proxy::CutOff::default(),
            on_threads: tokio_util::task::TaskTracker::new(),
        });
        let serve_options = ServeOptions::new()
            .with_max_connections(options.max_connections)
            .with_drain_timeout(options.drain_timeout)
            .with_service_name(options.name.as_str());
        let drained = match bound {
            Bound::Tcp(listener) => {
                let listener = GatedListener::with_config(listener, keys.gate, listener_config);
                run_listener(listener, serve_options, Arc::clone(&context), &signals).await
            }
            Bound::Unix(listener, socket_file) => {
                let listener = GatedListener::with_config(listener, keys.gate, listener_config);
                let drained =
                    run_listener(listener, serve_options, Arc::clone(&context), &signals).await;
                drop(socket_file);
                drained
            }
        };
        // The tunnels dropped at the deadline, and their streams, end on their threads: waited
        // for (briefly) so that the count below includes them.
        context.on_threads.close();
        let _ = tokio::time::timeout(CUT_OFF_WAIT, context.on_threads.wait()).await;
        let cut_off = &context.cut_off;
        tracing::info!(service = %options.name,
            closed_at_drain = cut_off.connections_and_streams(drained.aborted),
            tunnels_closed_at_drain = cut_off.tunnels.load(std::sync::atomic::Ordering::Relaxed),
            "linkgate serve: stopped");
        drained
    }
}

/// How long the "stopped" line waits for the tunnels cut off at the drain deadline to end.
const CUT_OFF_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

async fn run_listener<L>(
    listener: GatedListener<L>,
    options: ServeOptions,
    context: Arc<ServeContext>,
    signals: &Signals,
) -> Drained
where
    L: Listen,
    L::Io: Socket + AsyncRead + AsyncWrite,
{
    linkgate::serve_until(
        listener,
        options,
        signals.requested(),
        signals.forced(),
        move |admitted| proxy::serve_one(admitted, Arc::clone(&context)),
    )
    .await
}

pub(crate) fn ids_text(keyring: &Keyring) -> String {
    keyring
        .ids()
        .iter()
        .map(|id| id.as_str())
        .collect::<Vec<_>>()
        .join(",")
}
