//! Multiplexed tunnels in the command: `serve` gives each stream of an admitted tunnel its own
//! upstream connection; `connect --mux` carries each local connection as a stream of a pooled
//! tunnel.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::revocations::RevocationWatch;
use linkgate::mux::{IncomingStream, MuxServer, MuxStream, Pool};
use linkgate::{Admission, Admitted};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::TaskTracker;

use crate::forward::mux::{StreamTransfer, forward};
use crate::proxy::{self, Bytes, CloseOnDrop, Ended, ServeContext, peer_text};
use crate::socket::{Socket, write_all};
use crate::upstream::UpstreamStream;

/// How a tunnel ended, for its close line.
enum TunnelEnd {
    Closed,
    Failed(io::Error),
    Revoked,
}

/// Why a tunnel took its open streams down with it, when it was the gate's doing: a stream that
/// fails then is logged and counted as revoked or cut off, as a connection would be, not as an
/// error.
#[derive(Debug, Clone, Copy)]
enum StreamsEnded {
    Revoked,
    CutOff,
}

type TunnelOutcome = Arc<std::sync::OnceLock<StreamsEnded>>;

/// Streams one tunnel refused, logged without flooding: a client can open streams as fast as
/// the gate refuses them (a review logged 131,000 lines a second at the stream bound). The first
/// few of each window are logged; the rest are counted, and told in one line at the first
/// refusal after the window, or when the tunnel ends. Per tunnel: a key holder with several
/// tunnels gets as many times the lines.
#[derive(Debug, Default)]
struct Refusals(std::sync::Mutex<RefusalWindow>);

#[derive(Debug, Default)]
struct RefusalWindow {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl Refusals {
    const LINES_PER_WINDOW: u32 = 5;
    const WINDOW: Duration = Duration::from_secs(10);

    /// Whether this refusal gets its own line; also the count left unlogged in a window that
    /// has just ended, to be told now.
    fn allow(&self, now: Instant) -> (bool, u64) {
        let mut window = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ended = 0;
        let started = *window.started.get_or_insert(now);
        if now.duration_since(started) >= Self::WINDOW {
            ended = window.suppressed;
            *window = RefusalWindow {
                started: Some(now),
                ..RefusalWindow::default()
            };
        }
        if window.logged < Self::LINES_PER_WINDOW {
            window.logged += 1;
            (true, ended)
        } else {
            window.suppressed += 1;
            (false, ended)
        }
    }

    /// Refusals not yet told, at the tunnel's end.
    fn unlogged(&self) -> u64 {
        let mut window = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut window.suppressed)
    }
}

/// Logs the refusals of `who`'s tunnel that had no line of their own.
fn log_unlogged_refusals(context: &ServeContext, who: &Admission, unlogged: u64) {
    if unlogged > 0 {
        tracing::warn!(service = %context.service, conn = %who.connection_id(),
            peer = %peer_text(who), key_id = %who.key_id(), refused = unlogged,
            "tunnel: {unlogged} more streams refused (not logged one by one)");
    }
}

/// Marks the tunnel's streams as cut off if the tunnel's task is dropped (the drain deadline)
/// before it ends on its own. Declared after the tunnel's connection, so it runs before the
/// connection is dropped and its streams fail.
struct CutOffOnDrop<'a> {
    outcome: TunnelOutcome,
    context: &'a ServeContext,
    who: &'a Admission,
    started: Instant,
    /// Streams the tunnel carried, for its close line.
    opened: u64,
    /// Cut off, the tunnel is reset, as a connection cut off at the drain deadline is.
    reset: Option<linkgate::mux::ResetHandle>,
    armed: bool,
}

impl Drop for CutOffOnDrop<'_> {
    /// A tunnel dropped while still serving was cut off at shutdown (or its task failed): its
    /// streams are logged as cut off, and so is the tunnel itself (every admitted connection
    /// gets a close line).
    fn drop(&mut self) {
        if self.armed {
            if let Some(reset) = &self.reset {
                reset.reset();
            }
            let _ = self.outcome.set(StreamsEnded::CutOff);
            let cut_off = &self.context.cut_off;
            if cut_off.counts_now(&self.context.draining) {
                cut_off
                    .tunnels
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let who = self.who;
            tracing::info!(service = %self.context.service, conn = %who.connection_id(),
                peer = %peer_text(who), key_id = %who.key_id(), streams = self.opened,
                duration_ms = self.started.elapsed().as_millis() as u64,
                "tunnel closed: still open at shutdown (cut off: the drain deadline or a second signal)");
        }
    }
}

/// Serves one admitted tunnel on the least busy tunnel thread (see [`crate::threads`]), with
/// every stream it carries and their upstream connections, and waits for it to close.
pub(crate) async fn serve_on_a_thread<IO>(
    admitted: Admitted<IO>,
    who: Admission,
    revocations: RevocationWatch,
    context: Arc<ServeContext>,
) where
    IO: Socket + AsyncRead + AsyncWrite,
{
    let conn = who.connection_id();
    let detached = match admitted.map_io(Socket::detach) {
        Ok(detached) => detached,
        Err(err) => {
            tracing::warn!(service = %context.service, %conn, error = %err,
                "tunnel closed: cannot move it to a tunnel thread");
            return;
        }
    };
    let threads = Arc::clone(&context.tunnel_threads);
    let service = context.service.clone();
    let on_threads = context.on_threads.token();
    let tunnel = async move {
        let _on_threads = on_threads;
        match detached.map_io(IO::attach) {
            Ok(admitted) => serve(admitted, who, revocations, context).await,
            Err(err) => tracing::warn!(service = %context.service, %conn, error = %err,
                "tunnel closed: cannot move it to a tunnel thread"),
        }
    };
    if let Err(err) = threads.run_on_least_busy(tunnel).await {
        tracing::warn!(%service, %conn, error = %err, "tunnel ended abnormally");
    }
}

/// Serves one admitted tunnel until it closes: each stream the client opens gets an upstream
/// connection (or is refused alone when the upstream cannot be reached), is forwarded in its own
/// task, and is logged and counted like a connection. A drain asks the client for no more
/// streams, and so does a revocation of the tunnel's key; with `--drop-revoked` the revocation
/// closes the tunnel with all its streams instead.
async fn serve<IO>(
    admitted: Admitted<IO>,
    who: Admission,
    mut revocations: RevocationWatch,
    context: Arc<ServeContext>,
) where
    IO: Socket + AsyncRead + AsyncWrite,
{
    let started = Instant::now();
    let gate_ip = admitted.get_ref().local_ip();
    let service = &context.service;
    let conn = who.connection_id();
    // A tunnel that fails, is revoked, or is cut off at the drain deadline is reset, as a
    // connection is.
    let reset = linkgate::mux::ResetHandle::new(admitted.get_ref());
    let mut server = match MuxServer::new(admitted, &context.mux).await {
        Ok(server) => server,
        Err(err) => {
            if let Some(reset) = &reset {
                reset.reset();
            }
            tracing::info!(%service, %conn, peer = %peer_text(&who), key_id = %who.key_id(),
                error = %err, "tunnel failed before its first stream");
            return;
        }
    };
    let _open = context
        .metrics
        .as_ref()
        .map(crate::metrics::ServiceMetrics::tunnel_opened);
    let streams = TaskTracker::new();
    let outcome = TunnelOutcome::default();
    let refusals = Arc::new(Refusals::default());
    let mut cut_off = CutOffOnDrop {
        outcome: Arc::clone(&outcome),
        context: &context,
        who: &who,
        started,
        opened: 0,
        reset,
        armed: true,
    };
    let (mut draining, mut key_revoked) = (false, false);
    // Made once, not once per stream: each would register with its notifier anew.
    let drain_signal = context.draining.cancelled();
    let revocation = revocations.revoked(who.key_id());
    tokio::pin!(drain_signal, revocation);
    let end = loop {
        tokio::select! {
            // The signals first, so a tunnel busy with new streams still sees them.
            biased;
            () = &mut drain_signal, if !draining => {
                draining = true;
                server.graceful_shutdown();
            }
            () = &mut revocation, if !key_revoked => {
                if context.revoked.drop {
                    break TunnelEnd::Revoked;
                }
                // The streams open go on, as connections do; new ones would be new connections
                // under a key that admits none now. The client's next tunnel is refused.
                key_revoked = true;
                server.graceful_shutdown();
                tracing::info!(%service, %conn, peer = %peer_text(&who), key_id = %who.key_id(),
                    "tunnel's key was revoked by a reload: no new streams, the open ones go on");
            }
            incoming = server.next_stream() => match incoming {
                // h2 takes new streams until the client answers the GOAWAY's PING: one that never
                // does could go on opening connections under the revoked key.
                Some(Ok(incoming)) if key_revoked => {
                    let (log, unlogged) = refusals.allow(Instant::now());
                    log_unlogged_refusals(&context, &who, unlogged);
                    if log {
                        tracing::warn!(%service, %conn, stream = incoming.stream_id(),
                            key_id = %who.key_id(), "tunnel's key was revoked: refusing the stream");
                    }
                    incoming.refuse();
                }
                Some(Ok(incoming)) => {
                    cut_off.opened += 1;
                    let (who, outcome) = (who.clone(), Arc::clone(&outcome));
                    // Boxed: the future is nearly 2 KiB, and spawning moves it several times
                    // over (into the tracker, the task, its cell); boxed, each move is a pointer.
                    let stream = Box::pin(serve_stream(
                        incoming,
                        who,
                        gate_ip,
                        Arc::clone(&context),
                        outcome,
                        Arc::clone(&refusals),
                    ));
                    streams.spawn(context.on_threads.track_future(stream));
                }
                Some(Err(err)) => break TunnelEnd::Failed(err),
                None => break TunnelEnd::Closed,
            },
        }
    };
    cut_off.armed = false;
    let (opened, reset) = (cut_off.opened, cut_off.reset.take());
    if matches!(end, TunnelEnd::Revoked) {
        let _ = outcome.set(StreamsEnded::Revoked);
    }
    if let (TunnelEnd::Failed(_) | TunnelEnd::Revoked, Some(reset)) = (&end, &reset) {
        reset.reset();
    }
    // Dropping the connection fails the streams still open (they reset their upstreams).
    drop(server);
    // The socket's last descriptor: it closes now, not when the last stream has ended.
    drop(reset);
    // The tunnel's line now, as it has ended: a shutdown while its last streams finish below
    // cuts off only them (they log that themselves).
    log_tunnel_end(&context, &who, end, opened, started);
    streams.close();
    streams.wait().await;
    log_unlogged_refusals(&context, &who, refusals.unlogged());
}

fn log_tunnel_end(
    context: &ServeContext,
    who: &Admission,
    end: TunnelEnd,
    opened: u64,
    started: Instant,
) {
    let (service, conn) = (&context.service, who.connection_id());
    let duration_ms = started.elapsed().as_millis() as u64;
    let (peer, key_id) = (peer_text(who), who.key_id());
    match end {
        TunnelEnd::Closed => tracing::info!(%service, %conn, %peer, %key_id, streams = opened,
            duration_ms, "tunnel closed"),
        TunnelEnd::Failed(err) => tracing::info!(%service, %conn, %peer, %key_id, streams = opened,
            duration_ms, error = %err, "tunnel failed: its open streams were reset"),
        TunnelEnd::Revoked => tracing::info!(%service, %conn, %peer, %key_id, streams = opened,
            duration_ms, "tunnel closed: its key was revoked by a reload (--drop-revoked)"),
    }
}

/// One stream: its upstream connection, then forwarding, then its close line.
async fn serve_stream(
    incoming: IncomingStream,
    who: Admission,
    gate_ip: Option<std::net::SocketAddr>,
    context: Arc<ServeContext>,
    tunnel_outcome: TunnelOutcome,
    refusals: Arc<Refusals>,
) {
    let stream_id = incoming.stream_id();
    let started = Instant::now();
    let may_log = || {
        let (log, unlogged) = refusals.allow(started);
        log_unlogged_refusals(&context, &who, unlogged);
        log
    };
    let Ok(_slot) = Arc::clone(&context.stream_slots).try_acquire_owned() else {
        if may_log() {
            tracing::warn!(service = %context.service, conn = %who.connection_id(), stream = stream_id,
                key_id = %who.key_id(), "at --max-connections streams: refusing the stream");
        }
        incoming.refuse();
        return;
    };
    let _key_place = match &context.per_key {
        None => None,
        Some(per_key) => match per_key.take(who.key_id()) {
            Some(place) => Some(place),
            None => {
                if may_log() {
                    tracing::warn!(service = %context.service, conn = %who.connection_id(),
                        stream = stream_id, key_id = %who.key_id(), bound = per_key.max(),
                        "key at --max-connections-per-key: refusing the stream");
                }
                incoming.refuse();
                return;
            }
        },
    };
    let upstream = match Box::pin(context.upstream.connect(context.connect_timeout)).await {
        None => None,
        Some(Ok(upstream)) => Some(upstream),
        Some(Err(err)) => {
            if may_log() {
                tracing::warn!(service = %context.service, conn = %who.connection_id(), stream = stream_id,
                    peer = %peer_text(&who), key_id = %who.key_id(), upstream = %context.upstream,
                    error = %err, "upstream unreachable: refusing the stream");
            }
            incoming.refuse();
            if let Some(metrics) = &context.metrics {
                metrics.upstream_failed();
            }
            return;
        }
    };
    let header = match context.send_proxy {
        Some((version, as_authority)) => {
            match proxy::proxy_header(&who, gate_ip, version, as_authority) {
                Ok(header) => Some(header),
                Err(err) => {
                    tracing::warn!(service = %context.service, conn = %who.connection_id(),
                        stream = stream_id, error = %err, "no PROXY header: refusing the stream");
                    incoming.refuse();
                    return;
                }
            }
        }
        None => None,
    };
    let Ok(stream) = incoming.accept() else {
        // The client reset the stream, or the tunnel is gone, while the upstream connected:
        // the upstream is reset, not told of a clean end.
        match &upstream {
            Some(UpstreamStream::Tcp(server)) => server.set_reset_on_close(),
            Some(UpstreamStream::Unix(server)) => server.set_reset_on_close(),
            None => {}
        }
        return;
    };
    let mut guard = CloseOnDrop::opened(&context, &who, Some(stream_id), started);
    let result = match upstream {
        None => echo(stream).await,
        Some(UpstreamStream::Tcp(server)) => to_upstream(&server, stream, header).await,
        Some(UpstreamStream::Unix(server)) => to_upstream(&server, stream, header).await,
    };
    guard.armed = false;
    let ended = match (result, tunnel_outcome.get()) {
        (Err(_), Some(StreamsEnded::Revoked)) => Ended::Revoked,
        (Err(_), Some(StreamsEnded::CutOff)) => Ended::CutOff,
        (result, _) => Ended::Done(result),
    };
    proxy::log_close(&context, &who, Some(stream_id), started, ended);
}

/// Forwards one stream to its upstream, the PROXY header first if asked; on any failure the
/// upstream is reset as well as the stream.
async fn to_upstream<U: Socket>(
    server: &U,
    stream: MuxStream,
    header: Option<Vec<u8>>,
) -> io::Result<Bytes> {
    let result = async {
        if let Some(header) = header {
            write_all(server, &header).await?;
        }
        forward(server, stream).await
    }
    .await;
    if result.is_err() {
        server.set_reset_on_close();
    }
    result.map(|moved| Bytes {
        inbound: moved.received,
        outbound: moved.sent,
    })
}

/// The built-in echo service for one stream.
async fn echo(stream: MuxStream) -> io::Result<Bytes> {
    let (mut read, mut write) = stream.into_split();
    let mut echoed = 0u64;
    let result = async {
        while let Some(piece) = read.read_chunk().await? {
            echoed += piece.len() as u64;
            write.write_chunk(piece).await?;
        }
        write.finish()
    }
    .await;
    if result.is_err() {
        write.reset();
    }
    result.map(|()| Bytes {
        inbound: echoed,
        outbound: echoed,
    })
}

/// What `connect --mux` needs for each local connection: the pools of every tunnel thread,
/// and which one is this thread's.
pub(crate) struct MuxConnect {
    pub(crate) pools: Arc<[Pool]>,
    pub(crate) own: usize,
    /// How long a new connection waits for a tunnel to come up.
    pub(crate) wait: Duration,
}

impl MuxConnect {
    /// A stream over this thread's tunnels; while none of them takes one (it just dropped, or
    /// the gate is draining it), over another thread's, which is slower but better than
    /// waiting; failing both, waits for this thread's.
    async fn open(&self) -> io::Result<MuxStream> {
        let own = &self.pools[self.own];
        if let Ok(stream) = own.open(Duration::ZERO).await {
            return Ok(stream);
        }
        for (index, pool) in self.pools.iter().enumerate() {
            if index != self.own
                && pool.tunnels_up() > 0
                && let Ok(stream) = pool.open(Duration::ZERO).await
            {
                return Ok(stream);
            }
        }
        own.open(self.wait).await
    }
}

/// Carries one local connection as a stream of a pooled tunnel. If no tunnel is up in time, or
/// the gate cannot reach its upstream, or the tunnel fails, the local connection is reset.
pub(crate) async fn connect_one<L: Socket>(
    local: L,
    peer: crate::connect::LocalPeer,
    mux: Arc<MuxConnect>,
) {
    let stream = match mux.open().await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::warn!(%peer, error = %err, "no stream to the gate: resetting the connection");
            local.set_reset_on_close();
            return;
        }
    };
    let (conn, stream_id) = (stream.tunnel_id(), stream.stream_id());
    tracing::debug!(%conn, stream = stream_id, %peer, "stream opened");
    let started = Instant::now();
    let result = forward(&local, stream).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(StreamTransfer { sent, received }) => tracing::info!(%conn, stream = stream_id, %peer,
            bytes_in = sent, bytes_out = received, duration_ms, "closed"),
        Err(err) => {
            local.set_reset_on_close();
            let reason = proxy::reason_of(&err);
            tracing::info!(%conn, stream = stream_id, %peer, duration_ms, %reason, error = %err,
                "closed after an error (reset)");
        }
    }
}

#[cfg(test)]
mod tests {
    use linkgate::mux::{MuxConfig, PoolConfig};
    use linkgate::{Credentials, Gate, GateConfig, Key, Keyring};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn stream_refusals_are_logged_a_few_per_window_and_the_rest_counted() {
        let refusals = Refusals::default();
        let start = Instant::now();
        let allowed: Vec<_> = (0..8).map(|_| refusals.allow(start)).collect();
        assert_eq!(allowed[..5], [(true, 0); 5]);
        assert_eq!(allowed[5..], [(false, 0); 3]);
        // The next window logs again, and tells the three of the last one.
        let later = start + Refusals::WINDOW;
        assert_eq!(refusals.allow(later), (true, 3));
        assert_eq!(refusals.unlogged(), 0);
        for _ in 0..6 {
            refusals.allow(later);
        }
        // The tunnel's end tells what is left, once.
        assert_eq!(refusals.unlogged(), 2);
        assert_eq!(refusals.unlogged(), 0);
    }

    /// A gate on loopback whose tunnels greet every stream with "hi".
    async fn greeting_gate(key: &Key) -> std::net::SocketAddr {
        let mut keyring = Keyring::new();
        keyring.insert(key.clone());
        let config = GateConfig::new().with_multiplexing_allowed(true);
        let gate = Gate::with_config(keyring, config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(admitted) = gate.admit(tcp).await else {
                    continue;
                };
                let Ok(mut server) = MuxServer::new(admitted, &MuxConfig::default()).await else {
                    continue;
                };
                tokio::spawn(async move {
                    while let Some(Ok(incoming)) = server.next_stream().await {
                        if let Ok(mut stream) = incoming.accept() {
                            tokio::spawn(async move {
                                let _ = stream.write_all(b"hi").await;
                                let _ = stream.shutdown().await;
                            });
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_thread_whose_tunnels_are_down_borrows_another_threads() {
        let alice = Key::generate(linkgate::KeyId::new("alice").unwrap()).unwrap();
        let live = greeting_gate(&alice).await;
        // Nothing listens here: this thread's tunnel never comes up.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let credentials = Credentials::new(alice);
        let one = PoolConfig::default().with_tunnels(1);
        let down = Pool::new(dead.to_string(), credentials.clone(), one).unwrap();
        let up = Pool::new(live.to_string(), credentials, one.with_first_slot(1)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while up.tunnels_up() == 0 {
            assert!(
                Instant::now() < deadline,
                "the live gate's tunnel never came up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mux = MuxConnect {
            pools: vec![down, up].into(),
            own: 0,
            wait: Duration::from_secs(30),
        };
        // At once, not after the 30 s wait for its own tunnel.
        let mut stream = tokio::time::timeout(Duration::from_secs(2), mux.open())
            .await
            .expect("a stream of the other thread's tunnel, without waiting")
            .unwrap();
        let mut hi = Vec::new();
        stream.read_to_end(&mut hi).await.unwrap();
        assert_eq!(hi, b"hi");
        // With no tunnel up anywhere, it waits for its own and says why it gave up.
        let lonely = MuxConnect {
            pools: vec![
                Pool::new(
                    dead.to_string(),
                    Credentials::new(Key::generate(linkgate::KeyId::new("bob").unwrap()).unwrap()),
                    one,
                )
                .unwrap(),
            ]
            .into(),
            own: 0,
            wait: Duration::from_millis(300),
        };
        let err = lonely.open().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    }
}
