//! The two halves of the proxy, one connection at a time: `serve` (in front of an unmodified
//! server) and `connect` (beside an unmodified client).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use linkgate::proxy_protocol::{self, Tlvs, Version};
use linkgate::{Admission, Admitted, Credentials, Peer, SealedParts};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::forward::{self, sealed};
use crate::metrics::ServiceMetrics;
use crate::socket::{ResetUnlessDone, Socket, write_all};
use crate::upstream::{Upstream, UpstreamStream};

/// What `serve` needs for each admitted connection.
pub(crate) struct ServeContext {
    pub(crate) service: String,
    pub(crate) upstream: Upstream,
    pub(crate) connect_timeout: Duration,
    /// Send a PROXY protocol header upstream, and whether the key id also goes in AUTHORITY.
    pub(crate) send_proxy: Option<(Version, bool)>,
    /// Key ids revoked by a reload, and whether what they admitted is closed.
    pub(crate) revoked: crate::revocations::Revocations,
    pub(crate) metrics: Option<ServiceMetrics>,
    /// Cancelled when the service starts draining: tunnels then ask their clients to open no
    /// more streams.
    pub(crate) draining: CancellationToken,
    /// Streams of multiplexed tunnels forwarded at once, over all tunnels (`--max-connections`).
    pub(crate) stream_slots: Arc<tokio::sync::Semaphore>,
    /// `--max-connections-per-key`: connections, tunnels and streams one key id holds at once.
    pub(crate) per_key: Option<Arc<crate::per_key::PerKey>>,
    /// The tunnels' settings (keepalive).
    pub(crate) mux: linkgate::mux::MuxConfig,
    /// Where admitted tunnels run, each on one thread with its streams.
    pub(crate) tunnel_threads: Arc<crate::threads::Threads>,
    /// What the drain deadline cut off, for the "stopped" line.
    pub(crate) cut_off: CutOff,
    /// This service's tunnels and their streams, on the tunnel threads: a tunnel dropped at the
    /// drain deadline ends there a moment later, and its streams after it.
    pub(crate) on_threads: tokio_util::task::TaskTracker,
}

/// Tunnels and streams cut off at the drain deadline. The listener counts each admitted
/// connection it drops, a tunnel among them, as one: the "stopped" line counts a tunnel's
/// streams instead.
#[derive(Debug, Default)]
pub(crate) struct CutOff {
    pub(crate) tunnels: AtomicUsize,
    pub(crate) streams: AtomicUsize,
}

impl CutOff {
    /// Whether a task dropped now counts as cut off: during a drain, and not a task unwinding
    /// from a panic (which the listener did not count either).
    pub(crate) fn counts_now(&self, draining: &CancellationToken) -> bool {
        draining.is_cancelled() && !std::thread::panicking()
    }

    /// Connections and streams cut off, from the listener's count of dropped connections.
    pub(crate) fn connections_and_streams(&self, dropped_connections: usize) -> usize {
        dropped_connections.saturating_sub(self.tunnels.load(Ordering::Relaxed))
            + self.streams.load(Ordering::Relaxed)
    }
}

/// Bytes each way through one connection, from the client's point of view.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bytes {
    /// From the client toward the server.
    pub(crate) inbound: u64,
    /// From the server back to the client.
    pub(crate) outbound: u64,
}

/// How a forwarded connection ended.
pub(crate) enum Ended {
    Done(io::Result<Bytes>),
    Revoked,
    /// Still open when the drain ran out (its task was dropped).
    CutOff,
}

/// Logs the close of a connection whose task is dropped before it ends (the drain deadline),
/// so every admitted connection gets its close line.
pub(crate) struct CloseOnDrop<'a> {
    context: &'a ServeContext,
    who: &'a Admission,
    stream: Option<u32>,
    started: Instant,
    pub(crate) armed: bool,
}

impl<'a> CloseOnDrop<'a> {
    /// Counts a connection (or a tunnel's stream) as opened, and arms its close line.
    pub(crate) fn opened(
        context: &'a ServeContext,
        who: &'a Admission,
        stream: Option<u32>,
        started: Instant,
    ) -> Self {
        if let Some(metrics) = &context.metrics {
            metrics.connection_opened();
        }
        Self {
            context,
            who,
            stream,
            started,
            armed: true,
        }
    }
}

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            log_close(
                self.context,
                self.who,
                self.stream,
                self.started,
                Ended::CutOff,
            );
        }
    }
}

/// Serves one admitted connection: connects to the upstream (only now, after admission) and
/// forwards both ways in the admitted mode. If the upstream cannot be reached, the client is
/// reset, so it sees a failure rather than an empty answer.
///
/// Written as a plain function returning an `async move` block: an `async fn` would store its
/// arguments twice over for as long as the connection lives.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
pub(crate) fn serve_one<IO>(
    admitted: Admitted<IO>,
    context: Arc<ServeContext>,
) -> impl Future<Output = ()> + Send
where
    IO: Socket + AsyncRead + AsyncWrite,
{
    async move {
        let who = admitted.admission().clone();
        tracing::info!(service = %context.service, conn = %who.connection_id(), peer = %peer_text(&who),
            via = via_field(&who), key_id = %who.key_id(), mode = %who.mode(), "admitted");
        // Held until the connection (or tunnel) ends.
        let _key_place = match &context.per_key {
            None => None,
            Some(per_key) => match per_key.take(who.key_id()) {
                Some(place) => Some(place),
                None => {
                    tracing::warn!(service = %context.service, conn = %who.connection_id(),
                        peer = %peer_text(&who), key_id = %who.key_id(), bound = per_key.max(),
                        "key at --max-connections-per-key: resetting the admitted connection");
                    admitted.get_ref().set_reset_on_close();
                    return;
                }
            },
        };
        // A revocation since the admission is seen however late this subscribes. A tunnel
        // always listens: without --drop-revoked it still stops opening streams for a revoked
        // key.
        if who.mode().is_multiplexed() {
            let revocations = context.revoked.subscribe(who.keyring_generation());
            // Each stream connects its own upstream, when the client opens it.
            return Box::pin(crate::tunnel::serve_on_a_thread(
                admitted,
                who,
                revocations,
                context,
            ))
            .await;
        }
        let mut revocations = context
            .revoked
            .drop
            .then(|| context.revoked.subscribe(who.keyring_generation()));
        let started = Instant::now();
        // Boxed: a step that is over by the time the connection idles should not size the task
        // that idles.
        let upstream = match Box::pin(context.upstream.connect(context.connect_timeout)).await {
            None => None,
            Some(Ok(stream)) => Some(stream),
            Some(Err(err)) => {
                tracing::warn!(service = %context.service, conn = %who.connection_id(), peer = %peer_text(&who),
                    key_id = %who.key_id(), upstream = %context.upstream, error = %err,
                    "upstream unreachable: resetting the admitted connection");
                admitted.get_ref().set_reset_on_close();
                if let Some(metrics) = &context.metrics {
                    metrics.upstream_failed();
                }
                return;
            }
        };
        let mut guard = CloseOnDrop::opened(&context, &who, None, started);
        let forwarding = forwarding(admitted, upstream, &context);
        let ended = match &mut revocations {
            None => Ended::Done(forwarding.await),
            Some(revocations) => {
                tokio::select! {
                    biased; // forwarding ends once: it cannot starve the revocation
                    result = forwarding => Ended::Done(result),
                    () = revocations.revoked(who.key_id()) => Ended::Revoked,
                }
            }
        };
        guard.armed = false;
        log_close(&context, &who, None, started, ended);
    }
}

/// Forwarding for one admitted connection, boxed: the task holds exactly the state of the way
/// this connection is served (echo, TCP or Unix upstream; plain or sealed) and nothing twice.
type Forwarding = Pin<Box<dyn Future<Output = io::Result<Bytes>> + Send>>;

fn forwarding<IO>(
    admitted: Admitted<IO>,
    upstream: Option<UpstreamStream>,
    context: &ServeContext,
) -> Forwarding
where
    IO: Socket + AsyncRead + AsyncWrite,
{
    let Some(upstream) = upstream else {
        return Box::pin(echo(admitted));
    };
    let header = context
        .send_proxy
        .map(|(version, key_id_as_authority)| {
            let gate = admitted.get_ref().local_ip();
            proxy_header(admitted.admission(), gate, version, key_id_as_authority)
        })
        .transpose();
    let header = match header {
        Ok(header) => header,
        Err(err) => {
            admitted.get_ref().set_reset_on_close();
            return Box::pin(std::future::ready(Err(err)));
        }
    };
    let (client, _, sealed) = admitted.into_parts();
    let sealed = sealed.map(Box::new);
    match upstream {
        UpstreamStream::Tcp(server) => Box::pin(to_upstream(client, server, sealed, header)),
        UpstreamStream::Unix(server) => Box::pin(to_upstream(client, server, sealed, header)),
    }
}

/// Forwards between the admitted client and the upstream, sending the PROXY header first if
/// asked; on any failure both sides are reset.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
pub(crate) fn to_upstream<C: Socket, U: Socket>(
    client: C,
    server: U,
    sealed: Option<Box<SealedParts>>,
    header: Option<Vec<u8>>,
) -> impl Future<Output = io::Result<Bytes>> + Send {
    async move {
        let mut guard = ResetUnlessDone::new(&client, &server);
        if let Some(header) = header {
            Box::pin(write_all(&server, &header)).await?;
        }
        let result = forward_mode(&client, sealed, &server).await;
        guard.done = result.is_ok();
        result
    }
}

/// Forwards between an admitted stream's socket and the plain side in the admitted mode.
async fn forward_mode<A: Socket, P: Socket>(
    admitted: &A,
    sealed: Option<Box<SealedParts>>,
    plain: &P,
) -> io::Result<Bytes> {
    match sealed {
        None => forward::forward(admitted, plain).await.map(|t| Bytes {
            inbound: t.a_to_b,
            outbound: t.b_to_a,
        }),
        Some(parts) => sealed::forward(admitted, parts, plain)
            .await
            .map(|t| Bytes {
                inbound: t.opened,
                outbound: t.sealed,
            }),
    }
}

/// The PROXY protocol header for the upstream: the real client as source, the gate's own address
/// as destination (both only when they are IP addresses), the key id and connection id as TLVs.
pub(crate) fn proxy_header(
    who: &Admission,
    gate: Option<std::net::SocketAddr>,
    version: Version,
    key_id_as_authority: bool,
) -> io::Result<Vec<u8>> {
    let source = who.peer().and_then(Peer::ip_addr);
    let id = who.connection_id().to_string();
    let tlvs = Tlvs::new(who.key_id().as_str(), &id, key_id_as_authority);
    proxy_protocol::encode(version, source.zip(gate), &[tlvs]).map_err(io::Error::other)
}

/// The built-in echo service, in any mode: what the client sends comes back, and its
/// close_notify (or FIN) is answered with ours. A failure (a tampered record, truncation)
/// resets the client, as a forwarded connection's would: an error, never a clean end.
async fn echo<IO: Socket + AsyncRead + AsyncWrite>(admitted: Admitted<IO>) -> io::Result<Bytes> {
    let (mut reader, mut writer) = tokio::io::split(admitted);
    let echoed = async {
        let echoed = tokio::io::copy(&mut reader, &mut writer).await?;
        writer.shutdown().await?;
        Ok(echoed)
    }
    .await;
    match echoed {
        Ok(echoed) => Ok(Bytes {
            inbound: echoed,
            outbound: echoed,
        }),
        Err(err) => {
            reader.unsplit(writer).get_ref().set_reset_on_close();
            Err(err)
        }
    }
}

/// The client for logs: the real one (behind a balancer, the one its header named).
pub(crate) fn peer_text(who: &Admission) -> PeerText<'_> {
    PeerText(who.peer())
}

/// The client's address in a log line, `-` if unknown: formatted only when a line is written.
pub(crate) struct PeerText<'a>(Option<&'a Peer>);

impl std::fmt::Display for PeerText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(peer) => peer.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The balancer a connection came through, as an optional log field.
pub(crate) fn via_field(who: &Admission) -> Option<tracing::field::DisplayValue<&Peer>> {
    who.via().map(tracing::field::display)
}

/// Logs and counts the end of an admitted connection, or of one stream of a tunnel.
pub(crate) fn log_close(
    context: &ServeContext,
    who: &Admission,
    stream: Option<u32>,
    started: Instant,
    ended: Ended,
) {
    let duration = started.elapsed();
    let duration_ms = duration.as_millis() as u64;
    let (conn, peer, key_id) = (who.connection_id(), peer_text(who), who.key_id());
    let service = &context.service;
    let (result, bytes) = match ended {
        Ended::Done(Ok(bytes)) => {
            tracing::info!(%service, %conn, stream, %peer, via = via_field(who), %key_id, bytes_in = bytes.inbound,
                bytes_out = bytes.outbound, duration_ms, "closed");
            ("ok", bytes)
        }
        Ended::Done(Err(err)) => {
            let reason = reason_of(&err);
            tracing::info!(%service, %conn, stream, %peer, via = via_field(who), %key_id, duration_ms, %reason,
                error = %err, "closed after an error (both sides reset)");
            ("error", Bytes::default())
        }
        Ended::Revoked => {
            tracing::info!(%service, %conn, stream, %peer, via = via_field(who), %key_id, duration_ms,
                "closed: its key was revoked by a reload (--drop-revoked)");
            ("revoked", Bytes::default())
        }
        Ended::CutOff => {
            if stream.is_some() && context.cut_off.counts_now(&context.draining) {
                context.cut_off.streams.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(%service, %conn, stream, %peer, via = via_field(who), %key_id, duration_ms,
                "closed: still open at shutdown (cut off: the drain deadline or a second signal)");
            ("cut_off", Bytes::default())
        }
    };
    if let Some(metrics) = &context.metrics {
        metrics.connection_closed(
            key_id.as_str(),
            result,
            duration,
            bytes.inbound,
            bytes.outbound,
        );
    }
}

/// A short reason for a forwarding error: the record layer's, else the I/O kind.
pub(crate) fn reason_of(err: &io::Error) -> &'static str {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<linkgate::Error>())
    {
        Some(inner) => inner.reason(),
        None => match err.kind() {
            io::ErrorKind::ConnectionReset => "reset",
            io::ErrorKind::BrokenPipe => "broken_pipe",
            io::ErrorKind::TimedOut => "timeout",
            _ => "io",
        },
    }
}

/// What `connect` needs for each local connection. The credentials can be swapped by a reload.
pub(crate) struct ConnectContext {
    pub(crate) server: String,
    pub(crate) credentials: ArcSwap<Credentials>,
}

/// Authenticates one local connection to the gate and forwards. A failed authentication resets
/// the local connection and logs why.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
pub(crate) fn connect_one<L: Socket>(
    local: L,
    peer: crate::connect::LocalPeer,
    context: Arc<ConnectContext>,
) -> impl Future<Output = ()> + Send {
    async move {
        let credentials = context.credentials.load_full();
        let key_id = credentials.key_id();
        // Boxed: the handshake's state is gone by the time the connection idles.
        let connecting = Box::pin(linkgate::connect(context.server.as_str(), &credentials));
        let (remote, who, sealed) = match connecting.await {
            Ok(remote) => remote.into_parts(),
            Err(err) => {
                tracing::warn!(%peer, server = %context.server, %key_id, reason = %err.reason(), "{err}");
                local.set_reset_on_close();
                return;
            }
        };
        tracing::info!(conn = %who.connection_id(), %peer, server = %context.server, %key_id,
            mode = %who.mode(), "authenticated to the gate");
        let started = Instant::now();
        let mut guard = ResetUnlessDone::new(&local, &remote);
        // As seen from the local client: what it sends is inbound.
        let result = forward_mode(&remote, sealed.map(Box::new), &local)
            .await
            .map(|bytes| Bytes {
                inbound: bytes.outbound,
                outbound: bytes.inbound,
            });
        guard.done = result.is_ok();
        drop(guard);
        let duration_ms = started.elapsed().as_millis() as u64;
        let conn = who.connection_id();
        match result {
            Ok(bytes) => tracing::info!(%conn, %peer, %key_id, bytes_in = bytes.inbound,
                bytes_out = bytes.outbound, duration_ms, "closed"),
            Err(err) => {
                let reason = reason_of(&err);
                tracing::info!(%conn, %peer, %key_id, duration_ms, %reason, error = %err,
                    "closed after an error (both sides reset)");
            }
        }
    }
}
