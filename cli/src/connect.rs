//! `linkgate connect` (beside an unmodified client) and `linkgate check` (one attempt).

use crate::output::say;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use arc_swap::ArcSwap;
use linkgate::ServeOptions;
use linkgate::mux::{MuxConfig, Pacing, Pool, PoolConfig};
use linkgate::record::RecordLimits;
use linkgate::{Credentials, Error, Rejection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::args::{CheckArgs, ConnectArgs, LogFormat};
use crate::keys;
use crate::listen::{self, Bound, SystemdSockets};
use crate::proxy::{self, ConnectContext};
use crate::signals::Signals;
use crate::threads::{self, Threads};
use crate::tunnel::{self, MuxConnect};

pub(crate) async fn run(args: ConnectArgs, systemd_sockets: SystemdSockets) -> Result<()> {
    let signals = Signals::install()?;
    let credentials = client_credentials(&args)?;
    if args.mux && credentials.mode().multiplexed().is_none() {
        bail!(
            "--mux carries connections in a sealed tunnel: mode {} cannot be multiplexed (use --mode sealed-fs or sealed)",
            credentials.mode()
        );
    }
    keys::warn_if_seed(args.client.protocol);
    crate::systemd::raise_open_files_limit(
        (args.service.max_connections as u64)
            .saturating_mul(2)
            .saturating_add(64),
    );
    let threads = if args.mux {
        TunnelThreads::count(&args)
    } else {
        0
    };
    // Threads past the first bind sockets of their own to a TCP address this process binds;
    // a socket from systemd, or a Unix socket, is shared.
    let reuse_port = threads > 1 && matches!(args.listen, crate::addr::ListenAddr::Tcp(_));
    let bound =
        listen::bind_shared(&args.listen, args.socket_mode, &systemd_sockets, reuse_port).await?;
    refuse_own_address(&bound, &args.client.server).await?;
    let mode = match credentials.mode().multiplexed() {
        Some(mux) if args.mux => mux,
        _ => credentials.mode(),
    };
    tracing::info!(
        listen = %bound.describe(),
        server = %args.client.server,
        key_id = %credentials.key_id(),
        %mode,
        tunnels = args.mux.then_some(args.tunnels),
        tunnel_threads = args.mux.then_some(threads),
        "linkgate connect: listening"
    );
    let context = Arc::new(ConnectContext {
        server: args.client.server.clone(),
        credentials: ArcSwap::from_pointee(credentials.clone()),
    });
    let options = crate::serve::serve_options(&args.service);
    let tunnels = if args.mux {
        Some(TunnelThreads::start(&args, &credentials)?)
    } else {
        None
    };
    let pools = tunnels.as_ref().map(|t| Arc::clone(&t.pools));
    tokio::spawn(reload_key(
        args,
        Arc::clone(&context),
        pools,
        signals.reloads(),
    ));
    crate::systemd::ready("forwarding");
    let (listener, socket_file) = match bound {
        Bound::Tcp(listener) => (Local::Tcp(listener), None),
        Bound::Unix(listener, socket_file) => (Local::Unix(listener), socket_file),
    };
    let closed_at_drain = match tunnels {
        Some(tunnels) => {
            tunnels
                .serve(listener, reuse_port, &options, &signals)
                .await?
        }
        None => {
            let carrier = Carrier::Connections(context);
            match listener {
                Local::Tcp(listener) => serve(listener, options, signals, carrier).await,
                Local::Unix(listener) => serve(listener, options, signals, carrier).await,
            }
        }
    };
    drop(socket_file);
    tracing::info!(closed_at_drain, "linkgate connect: stopped");
    Ok(())
}

/// The local listener, of either kind.
enum Local {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// `connect --mux` on tunnel threads (see [`crate::threads`]): each thread accepts local
/// connections on a listening socket of its own (or a shared one), with pooled tunnels of its
/// own, so a local connection, its stream and the tunnel carrying it stay on one thread. The
/// tunnels are shared out among the threads, and `--max-connections` bounds them all together.
struct TunnelThreads {
    threads: Threads,
    pools: Arc<[Pool]>,
    wait: Duration,
}

impl TunnelThreads {
    fn count(args: &ConnectArgs) -> usize {
        args.tunnel_threads
            .unwrap_or_else(threads::default_count)
            .min(args.tunnels)
            .min(args.service.max_connections)
    }

    fn start(args: &ConnectArgs, credentials: &Credentials) -> Result<Self> {
        let count = Self::count(args);
        let threads = Threads::start(count)?;
        let mut pools = Vec::with_capacity(count);
        // One pacing for all the pools: while the gate refuses, they try one at a time, and
        // not again for a minute (this host would otherwise be penalized into lockout).
        let pacing = Pacing::new();
        for index in 0..count {
            // Tunnels numbered across the threads: thread 0 has slots 0.., thread 1 the next.
            let first_slot = (0..index).map(|i| share(args.tunnels, count, i)).sum();
            let config = PoolConfig::default()
                .with_mux(args.tunnel_keepalive.apply(MuxConfig::default()))
                .with_tunnels(share(args.tunnels, count, index))
                .with_first_slot(first_slot);
            // The pool's tunnels are spawned on the thread it serves.
            let _on_thread = threads.enter(index);
            let pool = Pool::with_pacing(
                args.client.server.clone(),
                credentials.clone(),
                config,
                &pacing,
            )
            .map_err(|err| anyhow!("--mux: {err}"))?;
            pools.push(pool);
        }
        Ok(Self {
            threads,
            pools: pools.into(),
            wait: args.client.timeout,
        })
    }

    /// Serves until the drain ends; returns how many connections it cut off.
    async fn serve(
        self,
        listener: Local,
        reuse_port: bool,
        options: &ServeOptions,
        signals: &Signals,
    ) -> Result<usize> {
        let options = options.clone().with_shared_bound();
        let mut running = Vec::with_capacity(self.threads.len());
        for own in 0..self.threads.len() {
            let mux = Arc::new(MuxConnect {
                pools: Arc::clone(&self.pools),
                own,
                wait: self.wait,
            });
            let (options, signals, carrier) =
                (options.clone(), signals.clone(), Carrier::Tunnels(mux));
            // Sockets are registered with the runtime of the thread that accepts on them.
            let _on_thread = self.threads.enter(own);
            let task = match &listener {
                // The others bind their own sockets to the address (SO_REUSEPORT), so that the
                // kernel spreads connections over them, rather than share one that wakes them all.
                Local::Tcp(listener) if own > 0 && reuse_port => {
                    let listener = listen::bind_again(listener.local_addr()?)?;
                    self.threads
                        .spawn_on(own, serve(listener, options, signals, carrier))
                }
                Local::Tcp(listener) => {
                    let listener = tokio::net::TcpListener::from_std(clone_tcp(listener)?)?;
                    self.threads
                        .spawn_on(own, serve(listener, options, signals, carrier))
                }
                Local::Unix(listener) => {
                    let listener = tokio::net::UnixListener::from_std(clone_unix(listener)?)?;
                    self.threads
                        .spawn_on(own, serve(listener, options, signals, carrier))
                }
            };
            running.push(task);
        }
        // Every thread has its own copy of the socket.
        drop(listener);
        let mut aborted = 0;
        for task in running {
            aborted += task.await.context("a tunnel thread failed")?;
        }
        self.threads.shutdown().await;
        Ok(aborted)
    }
}

/// Thread `index`'s share of `total` over `count` threads (the first ones get one more).
fn share(total: usize, count: usize, index: usize) -> usize {
    total / count + usize::from(index < total % count)
}

fn clone_tcp(listener: &tokio::net::TcpListener) -> Result<std::net::TcpListener> {
    let fd = std::os::fd::AsFd::as_fd(listener).try_clone_to_owned()?;
    Ok(std::net::TcpListener::from(fd))
}

fn clone_unix(listener: &tokio::net::UnixListener) -> Result<std::os::unix::net::UnixListener> {
    let fd = std::os::fd::AsFd::as_fd(listener).try_clone_to_owned()?;
    Ok(std::os::unix::net::UnixListener::from(fd))
}

/// How `connect` takes each local connection to the gate.
#[derive(Clone)]
enum Carrier {
    /// A gate connection and handshake of its own.
    Connections(Arc<ConnectContext>),
    /// A stream of a pooled tunnel (`--mux`).
    Tunnels(Arc<MuxConnect>),
}

impl Carrier {
    async fn carry<S: crate::socket::Socket>(self, local: S, peer: LocalPeer) {
        match self {
            Self::Connections(context) => proxy::connect_one(local, peer, context).await,
            Self::Tunnels(mux) => tunnel::connect_one(local, peer, mux).await,
        }
    }
}

/// Accepts from `listener` and carries each connection until the drain ends; returns how many
/// connections the drain cut off.
async fn serve<L>(listener: L, options: ServeOptions, signals: Signals, carrier: Carrier) -> usize
where
    L: LocalListener,
    L::Stream: crate::socket::Socket,
{
    linkgate::serve_until(
        Accepted::new(listener),
        options,
        signals.requested(),
        signals.forced(),
        move |(stream, peer)| carrier.clone().carry(stream, peer),
    )
    .await
    .aborted
}

fn client_credentials(args: &ConnectArgs) -> Result<Credentials> {
    let mut credentials = keys::credentials(&args.client)?;
    if let Some(records) = args.testing.key_update_after_records {
        credentials =
            credentials.with_record_limits(RecordLimits::new().with_key_update_interval(records));
    }
    Ok(credentials)
}

/// On SIGHUP, reads the key again (a key file; a key from standard input stays as it was).
async fn reload_key(
    args: ConnectArgs,
    context: Arc<ConnectContext>,
    pools: Option<Arc<[Pool]>>,
    mut hups: tokio::sync::watch::Receiver<u64>,
) {
    while hups.changed().await.is_ok() {
        if args.client.key.as_deref() == Some(std::path::Path::new("-")) {
            tracing::info!("SIGHUP: the key came from standard input; nothing to reload");
            continue;
        }
        match client_credentials(&args) {
            Ok(credentials) => {
                tracing::info!(key_id = %credentials.key_id(), "SIGHUP: key reloaded");
                // New tunnels use it; those up stay as they are.
                for pool in pools.iter().flat_map(|pools| pools.iter()) {
                    if let Err(err) = pool.set_credentials(credentials.clone()) {
                        tracing::warn!(error = %err, "SIGHUP: the reloaded key cannot be used for tunnels");
                        break;
                    }
                }
                context.credentials.store(Arc::new(credentials));
            }
            Err(err) => tracing::warn!(error = %format!("{err:#}"),
                "SIGHUP: key reload failed: the previous key stays in use"),
        }
    }
}

/// Who connected locally, for log lines: formatted only when a line is written (an address
/// formatted for every connection cost more than a twentieth of `connect --mux`'s own work).
#[derive(Debug, Clone, Copy)]
pub(crate) enum LocalPeer {
    Tcp(std::net::SocketAddr),
    Unix,
}

impl std::fmt::Display for LocalPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => addr.fmt(f),
            Self::Unix => f.write_str("unix"),
        }
    }
}

/// A local listener `connect` accepts from: TCP (with the peer address accept returned, so no
/// `getpeername` per connection) or Unix.
trait LocalListener: Unpin {
    type Stream;
    fn poll_accept(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<(Self::Stream, LocalPeer)>>;
}

impl LocalListener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    fn poll_accept(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<(Self::Stream, LocalPeer)>> {
        self.poll_accept(cx).map_ok(|(stream, peer)| {
            let _ = stream.set_nodelay(true);
            (stream, LocalPeer::Tcp(peer))
        })
    }
}

impl LocalListener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    fn poll_accept(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<(Self::Stream, LocalPeer)>> {
        self.poll_accept(cx)
            .map_ok(|(stream, _)| (stream, LocalPeer::Unix))
    }
}

/// How long accepting pauses after an error that is not about one connection (EMFILE, ENFILE,
/// ENOMEM): retrying at once would spin, since such an error leaves the listener ready.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepted local connections with their peer; accept errors are logged and skipped.
struct Accepted<L> {
    listener: L,
    backoff: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<L> Accepted<L> {
    fn new(listener: L) -> Self {
        Self {
            listener,
            backoff: None,
        }
    }
}

impl<L: LocalListener> futures_core::Stream for Accepted<L> {
    type Item = (L::Stream, LocalPeer);

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        loop {
            if let Some(backoff) = &mut self.backoff {
                if backoff.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.backoff = None;
            }
            match self.listener.poll_accept(cx) {
                Poll::Ready(Ok(accepted)) => return Poll::Ready(Some(accepted)),
                Poll::Ready(Err(err)) => {
                    tracing::warn!(error = %err, "accept failed; retrying");
                    let one_connection = matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionRefused
                    );
                    if !one_connection {
                        self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// How long `check` waits, after admission, for the gate to show how its upstream answered.
const UPSTREAM_VERDICT_WAIT: Duration = Duration::from_secs(2);
/// How long `check --protocol seed` waits for a refusing server to close.
const SEED_VERDICT_WAIT: Duration = Duration::from_millis(500);
/// The same for `seed-md5`: a gate of the SHA-256 variant (linkgate's, or the Python package's)
/// takes our 16-byte answer as the start of a 32-byte one and waits for the rest until its
/// handshake timeout (5 s by default) before it closes.
const SEED_MD5_VERDICT_WAIT: Duration = Duration::from_secs(6);

pub(crate) async fn check(args: CheckArgs, format: LogFormat) -> Result<()> {
    let credentials = keys::credentials(&args.client)?;
    let server = &args.client.server;
    let mut stream = match linkgate::connect(server.as_str(), &credentials).await {
        Ok(stream) => stream,
        Err(err) => bail!(explain_failure(server, &credentials, &err)),
    };
    let id = credentials.key_id();
    if credentials.protocol().is_seed() {
        // Seed has no verdict: a refusing server just closes. Whatever it sends first (a
        // greeting) does not count; only still being open at the end of the wait does.
        let closed = async {
            let mut discard = [0u8; 512];
            loop {
                match stream.read(&mut discard).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let wait = match credentials.protocol() {
            linkgate::Protocol::SeedMd5 => SEED_MD5_VERDICT_WAIT,
            _ => SEED_VERDICT_WAIT,
        };
        if tokio::time::timeout(wait, closed).await.is_ok() {
            bail!(
                "not admitted by {server}: it closed the connection after our answer (wrong key, or the other digest: --protocol seed is HMAC-SHA-256, seed-md5 HMAC-MD5)"
            );
        }
        return report(
            format,
            id.as_str(),
            credentials.protocol().name(),
            "unknown (seed protocol: the server cannot prove it holds the key)",
        );
    }
    // Admitted. End our side: a gate whose upstream answers passes the end on and closes
    // cleanly; one that cannot reach its upstream resets the connection.
    let mode = stream.mode();
    let reset = || {
        anyhow!(
            "admitted as {id} by {server}, but the gate then reset the connection: most likely it could not reach its upstream server (or this key is at the gate's --max-connections-per-key)"
        )
    };
    // The gate's reset can arrive before our end is written: the failed write then consumes
    // it, and a read would only see the connection end.
    if let Err(err) = stream.shutdown().await
        && matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        )
    {
        return Err(reset());
    }
    let mut sink = Vec::new();
    let upstream =
        match tokio::time::timeout(UPSTREAM_VERDICT_WAIT, stream.read_to_end(&mut sink)).await {
            Ok(Ok(_)) => "reachable",
            Ok(Err(err)) if err.kind() == io::ErrorKind::ConnectionReset => return Err(reset()),
            Ok(Err(err)) => {
                return Err(anyhow!(
                    "admitted as {id} by {server}, but the connection then failed: {err}"
                ));
            }
            Err(_) => "connected (still open after 2s)",
        };
    report(format, id.as_str(), mode.as_str(), upstream)
}

fn report(format: LogFormat, id: &str, mode: &str, upstream: &str) -> Result<()> {
    match format {
        LogFormat::Text => say!("admitted as {id} (mode {mode}, upstream {upstream})"),
        LogFormat::Json => say!(
            "{}",
            serde_json::json!({"admitted": true, "key_id": id, "mode": mode, "upstream": upstream})
        ),
    }
}

/// `--server` naming the address `connect` itself listens on would make every client
/// connection open another through itself, until the process runs out of descriptors. Names
/// are resolved (briefly; one that does not resolve yet is left to the first connection).
async fn refuse_own_address(bound: &listen::Bound, server: &str) -> Result<()> {
    let listen::Bound::Tcp(listener) = bound else {
        return Ok(());
    };
    let Ok(local) = listener.local_addr() else {
        return Ok(());
    };
    let resolving = tokio::net::lookup_host(server);
    let Ok(Ok(resolved)) = tokio::time::timeout(Duration::from_secs(1), resolving).await else {
        return Ok(());
    };
    for target in resolved {
        // Connecting to 0.0.0.0 (or ::) reaches this machine, as loopback does.
        let here = |ip: std::net::IpAddr| ip.is_loopback() || ip.is_unspecified();
        let reaches_us = target.port() == local.port()
            && (target.ip() == local.ip()
                || (local.ip().is_unspecified() && here(target.ip()))
                || (target.ip().is_unspecified() && here(local.ip())));
        if reaches_us {
            bail!(
                "--server {server} is the address this connect listens on ({local}): it would connect to itself"
            );
        }
    }
    Ok(())
}

/// One line that names what failed and what to try next.
fn explain_failure(server: &str, credentials: &Credentials, err: &Error) -> String {
    let id = credentials.key_id();
    match err {
        Error::Rejected(Rejection::Denied) => format!(
            "not admitted by {server}: denied for key id {id} (the gate does not know {id}, or holds another key for it)"
        ),
        Error::Rejected(Rejection::RefusedAsMalformed(mode)) => {
            let why = match mode {
                linkgate::Mode::Plain => {
                    "it admits plain only with --allow-plain; try --mode sealed-fs"
                }
                linkgate::Mode::Sealed => "it may require forward secrecy; try --mode sealed-fs",
                _ => {
                    "it does not tell clients why; its log does (e.g. a PROXY header it does not trust)"
                }
            };
            format!("not admitted by {server}: the gate refused mode {mode} as malformed ({why})")
        }
        Error::Rejected(Rejection::SpeaksLinkgate1) => format!(
            "not admitted by {server}: it speaks linkgate/1, not the seed protocol (leave out --protocol {})",
            credentials.protocol().name()
        ),
        Error::ClosedEarly => format!(
            "not admitted by {server} as {id}: it closed the connection during the handshake (a gate does that, without a word, to a source it is penalizing for failed handshakes or when it is full; its log says which)"
        ),
        Error::Io(io) => match io.kind() {
            io::ErrorKind::ConnectionRefused => format!(
                "cannot connect to {server}: connection refused (is the gate running and listening there?)"
            ),
            _ => format!("cannot connect to {server}: {io}"),
        },
        other => format!("not admitted by {server} as {id}: {other}"),
    }
}
