//! Multiplexed tunnels: many connections carried as streams of one admitted, sealed connection.
//!
//! A client admitted in a multiplexed mode ([`Mode::SealedMux`], [`Mode::SealedFsMux`]) speaks
//! HTTP/2 (RFC 9113, by the `h2` crate) inside the sealed records; each carried connection is
//! one `CONNECT` stream, the way Envoy tunnels TCP over HTTP/2. The server answers `200` once
//! it has connected the stream's upstream, or `502` when it cannot (that stream alone fails).
//! HTTP/2 gives each stream its own flow-control window, half-close (`END_STREAM`) and reset
//! (`RST_STREAM`), so a carried connection behaves like a direct one, and a slow reader stalls
//! only its own stream. A short connection then costs one stream open, not a TCP and a
//! linkgate handshake: on a network with delay, its first byte can arrive sooner than over a
//! direct TCP connection.
//!
//! The client side is [`Tunnel`] (one tunnel) or [`Pool`] (a few, re-established with backoff);
//! the server side is [`MuxServer`], fed by a [`crate::Gate`] that allows multiplexing
//! ([`crate::GateConfig::with_multiplexing_allowed`]).
//!
//! ```no_run
//! # async fn demo(key: linkgate::Key) -> Result<(), Box<dyn std::error::Error>> {
//! use linkgate::mux::{MuxConfig, Tunnel};
//! use linkgate::{Credentials, Mode};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let credentials = Credentials::new(key).with_mode(Mode::SealedFsMux);
//! let admitted = linkgate::connect("gate.example:27820", &credentials).await?;
//! let tunnel = Tunnel::new(admitted, &MuxConfig::default()).await?;
//! // Every open is a new connection to the gate's upstream, with no new handshake.
//! let mut stream = tunnel.open().await?;
//! stream.write_all(b"PING\r\n").await?;
//! let mut reply = [0u8; 7];
//! stream.read_exact(&mut reply).await?;
//! # Ok(()) }
//! ```

mod coalesce;
mod keepalive;
mod pacing;
mod pool;
mod reset;
mod stream;

use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::admitted::{Admission, Admitted, ConnectionId};
use crate::mode::Mode;

pub use pacing::Pacing;
pub use pool::{Pool, PoolConfig};
pub use reset::ResetHandle;
pub use stream::{MuxReadHalf, MuxStream, MuxWriteHalf};

/// The `:authority` of every open: the server forwards to its own upstream, whatever is named.
const AUTHORITY: &str = "upstream.linkgate.invalid:0";

/// [`AUTHORITY`] parsed once: parsing it for every open cost about 1,000 instructions, a
/// fiftieth of `connect --mux`'s work per connection. A clone shares the static bytes.
static AUTHORITY_URI: std::sync::LazyLock<http::Uri> =
    std::sync::LazyLock::new(|| http::Uri::from_static(AUTHORITY));

/// Bounds and windows of a multiplexed tunnel; the same on both sides.
///
/// The tunnel-wide window is `max_streams × stream_window`, capped at HTTP/2's 2 GiB: HTTP/2
/// frees tunnel window only as a stream's data is read, so a smaller one would let a few stalled
/// readers stop every stream (seen in the trial that chose h2). With the defaults (2 MiB, 8,192
/// streams) it takes 1,024 readers that have all stopped reading to slow the others; that is
/// also the most a tunnel buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MuxConfig {
    stream_window: u32,
    max_streams: u32,
    keepalive: Option<keepalive::KeepaliveTimes>,
}

impl Default for MuxConfig {
    fn default() -> Self {
        Self {
            // Measured on loopback: 256 KiB gave one stream about half the speed of a tunnel-less
            // sealed connection, 2 MiB about 0.7 of it (BENCHMARKS.md).
            stream_window: 2 * 1024 * 1024,
            max_streams: 8192,
            keepalive: Some(keepalive::KeepaliveTimes {
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(20),
            }),
        }
    }
}

/// The streams a tunnel opens at once before the gate's SETTINGS announce its bound: RFC 9113's
/// recommended least (100). Opens past it until then fail with `WouldBlock` (a pool tries again
/// shortly) rather than wait in h2 for a place the gate may never give.
pub const ASSUMED_MAX_STREAMS: usize = 100;

/// HTTP/2's largest window.
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// The largest DATA frame payload either side accepts: with its 9-byte header, exactly four
/// full records, so a frame is sealed without a short record for its header or its tail.
/// Writers that hand a stream pieces of this size (or multiples) get whole frames.
pub const MAX_FRAME_DATA: usize = 4 * crate::record::MAX_DATA_LEN - 9;
const MAX_FRAME: u32 = MAX_FRAME_DATA as u32;

/// The largest header list (RFC 9113 counting: name + value + 32 per field) either side takes.
/// An open is `:method` and `:authority` (115), an answer `:status` (42). h2's default, 16 MiB,
/// let a key holder park that much per pending stream: HPACK's table turns a few KiB on the wire
/// into 16 MB of decoded headers, and 8,192 streams may wait to be accepted. A larger list
/// refuses its stream (h2 answers 431); four times this much ends the tunnel.
const MAX_HEADER_LIST: u32 = 1024;

impl MuxConfig {
    /// Bytes a stream may have in flight toward a reader that has not read them (default
    /// 2 MiB, at least 64 KiB): the most a stalled reader holds, and one stream's speed limit
    /// at a given round-trip time (50 MiB/s at 40 ms).
    pub fn with_stream_window(mut self, bytes: u32) -> Self {
        self.stream_window = bytes.clamp(65_535, MAX_WINDOW);
        self
    }

    /// The per-stream window.
    pub fn stream_window(&self) -> u32 {
        self.stream_window
    }

    /// Streams open at once in one tunnel (default 8,192; announced by the server: a client's
    /// [`Tunnel::open`] past it fails with `WouldBlock`, and a [`Pool`] waits for a place).
    pub fn with_max_streams(mut self, streams: u32) -> Self {
        self.max_streams = streams.max(1);
        self
    }

    /// Streams open at once in one tunnel.
    pub fn max_streams(&self) -> u32 {
        self.max_streams
    }

    /// Sends an HTTP/2 PING every `interval` and closes the tunnel (failing its streams) when
    /// nothing from the peer, not even the answer, has arrived within `timeout`: a peer that
    /// vanished without a FIN or a reset is noticed then, not when TCP gives up, while one whose
    /// answer queues behind data on a slow link is kept. Both sides ping; the default is every
    /// 30 s with 20 s to answer. Each is at least 10 ms.
    pub fn with_keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        let least = Duration::from_millis(10);
        self.keepalive = Some(keepalive::KeepaliveTimes {
            interval: interval.max(least),
            timeout: timeout.max(least),
        });
        self
    }

    /// Sends no keepalive PINGs (a dead peer is then noticed only by TCP). PINGs from the
    /// other side are still answered.
    pub fn without_keepalive(mut self) -> Self {
        self.keepalive = None;
        self
    }

    /// The keepalive's interval and timeout, if it is on.
    pub fn keepalive(&self) -> Option<(Duration, Duration)> {
        self.keepalive.map(|times| (times.interval, times.timeout))
    }

    /// The tunnel-wide window: every stream's window at once (at most HTTP/2's 2 GiB).
    pub fn connection_window(&self) -> u32 {
        let total = u64::from(self.stream_window) * u64::from(self.max_streams);
        u32::try_from(total.min(u64::from(MAX_WINDOW))).unwrap_or(MAX_WINDOW)
    }
}

fn not_multiplexed(mode: Mode) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("the session was admitted in mode {mode}, not a multiplexed one"),
    )
}

/// The client side of one multiplexed tunnel: opens streams. Cheap to clone; the tunnel closes
/// when every clone and every stream is gone, or when it fails.
#[derive(Clone)]
pub struct Tunnel {
    sender: h2::client::SendRequest<Bytes>,
    admission: Arc<Admission>,
    closed: CancellationToken,
    /// Cancelled once the gate has asked for no new streams (GOAWAY), or the tunnel closed.
    going_away: CancellationToken,
    open: coalesce::OpenStreams,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("admission", &self.admission)
            .field("closed", &self.is_closed())
            .field("going_away", &self.is_going_away())
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    /// Starts the tunnel on a stream admitted in a multiplexed mode; its frames are then read
    /// and written by a task on the current tokio runtime. A tunnel that fails just closes its
    /// transport; [`Tunnel::with_reset`] resets a TCP connection instead, as PROTOCOL.md asks.
    pub async fn new<S>(admitted: Admitted<S>, config: &MuxConfig) -> io::Result<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::with_reset(admitted, config, None).await
    }

    /// [`Tunnel::new`]; with `reset` (taken from the tunnel's socket before it was admitted), a
    /// tunnel that fails resets its connection instead of closing it, as PROTOCOL.md asks.
    /// [`Pool`] does this for its tunnels. `Tunnel::new` cannot: its transport is any stream.
    pub async fn with_reset<S>(
        admitted: Admitted<S>,
        config: &MuxConfig,
        reset: Option<ResetHandle>,
    ) -> io::Result<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mode = admitted.mode();
        if !mode.is_multiplexed() {
            return Err(not_multiplexed(mode));
        }
        let admission = Arc::new(admitted.admission().clone());
        let open = coalesce::OpenStreams::default();
        let transport = coalesce::Coalescing::new(admitted, open.clone());
        let received = transport.received();
        let (sender, mut connection) = h2::client::Builder::new()
            // Until the gate's SETTINGS say otherwise (h2 assumes no bound at all).
            .initial_max_send_streams(ASSUMED_MAX_STREAMS)
            .enable_push(false)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(MAX_HEADER_LIST)
            // The peer proved the key: resets that arrive late (a slow link) must not add up,
            // over a long-lived tunnel, to h2's lifetime limit and end every stream.
            .max_local_error_reset_streams(None)
            .initial_window_size(config.stream_window)
            .initial_connection_window_size(config.connection_window())
            .handshake(transport)
            .await
            .map_err(|err| {
                // The transport is gone with the failed handshake; the reset goes with its close.
                if let Some(reset) = &reset {
                    reset.reset();
                }
                stream::stream_error(err)
            })?;
        let closed = CancellationToken::new();
        let going_away = CancellationToken::new();
        let (done, gone) = (closed.clone(), going_away.clone());
        let conn = admission.connection_id();
        let mut keepalive = config.keepalive.and_then(|times| {
            let ping_pong = connection.ping_pong()?;
            Some(keepalive::Keepalive::new(ping_pong, times, received))
        });
        tokio::spawn(async move {
            let ended = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = std::pin::Pin::new(&mut connection).poll(cx) {
                    return Poll::Ready(result.map_err(stream::stream_error));
                }
                match &mut keepalive {
                    Some(keepalive) => keepalive.poll_failed(cx).map(Err),
                    None => Poll::Pending,
                }
            })
            .await;
            match &ended {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                    tracing::warn!(%conn, error = %err, "tunnel closed: its streams were reset");
                }
                Err(err) => tracing::debug!(%conn, error = %err, "tunnel ended with an error"),
            }
            if let (Err(_), Some(reset)) = (&ended, &reset) {
                reset.reset();
            }
            // Dropping the connection fails the streams still open.
            drop(connection);
            drop(reset);
            done.cancel();
            gone.cancel();
        });
        Ok(Self {
            sender,
            admission,
            closed,
            going_away,
            open,
        })
    }

    /// Opens a stream: a new connection to the gate's upstream. It may be written at once;
    /// its first read also reports whether the server could connect it. Fails with
    /// [`io::ErrorKind::WouldBlock`] while the tunnel has as many streams open as the gate
    /// allows at once (HTTP/2 would queue the open until one ends, for as long as that takes).
    /// The count is of [`MuxStream`]s not yet dropped, so a stream ended both ways but still
    /// held counts until it is dropped; until the gate's SETTINGS arrive, the bound is
    /// [`ASSUMED_MAX_STREAMS`].
    pub async fn open(&self) -> io::Result<MuxStream> {
        // Counted before the bound is looked at, so opens at once cannot all pass it.
        let ticket = self.open.ticket();
        let bound = self.sender.current_max_send_streams();
        if self.open.count() > bound {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("the tunnel has {bound} streams open, as many as the gate allows"),
            ));
        }
        let mut sender = self
            .sender
            .clone()
            .ready()
            .await
            .map_err(|err| self.refused_open(err))?;
        let mut request = Request::new(());
        *request.method_mut() = Method::CONNECT;
        *request.uri_mut() = AUTHORITY_URI.clone();
        let (answer, send) = sender
            .send_request(request, false)
            .map_err(|err| self.refused_open(err))?;
        Ok(MuxStream::new(
            MuxReadHalf::awaiting(answer),
            MuxWriteHalf::new(send),
            self.admission.connection_id(),
            ticket,
        ))
    }

    /// Who the tunnel was admitted as.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// An open that failed. Every request is the same CONNECT, so the failure is the
    /// tunnel's, not this request's: a GOAWAY (the gate drains, or revoked the tunnel's key),
    /// stream ids used up, a connection error. No open will succeed on it again, though its
    /// open streams may go on.
    fn refused_open(&self, err: h2::Error) -> io::Error {
        self.going_away.cancel();
        if err.is_go_away() && err.is_remote() && err.reason() == Some(h2::Reason::NO_ERROR) {
            return io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the gate takes no new streams on this tunnel (it is draining, or the \
                 tunnel's key was revoked); its open streams go on",
            );
        }
        stream::stream_error(err)
    }

    /// True once the tunnel's connection has ended (its streams have failed with it).
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// True once the tunnel takes no new streams: the gate said so (HTTP/2 GOAWAY, seen by an
    /// open it refused: the gate is draining, or revoked the tunnel's key), or it has closed.
    /// Its open streams may go on; new connections need another tunnel.
    pub fn is_going_away(&self) -> bool {
        self.going_away.is_cancelled()
    }

    /// Completes when [`Tunnel::is_going_away`] becomes true.
    pub async fn going_away(&self) {
        self.going_away.cancelled().await;
    }

    /// Completes when the tunnel's connection has ended.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }
}

/// The server side of a multiplexed tunnel: yields each stream the client opens.
///
/// The connection's frames move only while [`MuxServer::next_stream`] is being awaited, so
/// call it in a loop and handle each stream in its own task. When it fails, the tunnel's
/// connection should be reset, not closed (PROTOCOL.md): over TCP, take a [`ResetHandle`] of
/// the socket before admitting it, and call [`ResetHandle::reset`] before dropping the server.
pub struct MuxServer<S> {
    connection: h2::server::Connection<coalesce::Coalescing<Admitted<S>>, Bytes>,
    admission: Admission,
    keepalive: Option<keepalive::Keepalive>,
    open: coalesce::OpenStreams,
}

impl<S> std::fmt::Debug for MuxServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxServer")
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

impl<S> MuxServer<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Starts serving a stream admitted in a multiplexed mode.
    pub async fn new(admitted: Admitted<S>, config: &MuxConfig) -> io::Result<Self> {
        let mode = admitted.mode();
        if !mode.is_multiplexed() {
            return Err(not_multiplexed(mode));
        }
        let admission = admitted.admission().clone();
        let open = coalesce::OpenStreams::default();
        let transport = coalesce::Coalescing::new(admitted, open.clone());
        let received = transport.received();
        let mut connection = h2::server::Builder::new()
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(MAX_HEADER_LIST)
            // Clients reset streams for every local connection that fails at once (a health
            // check that closes with RST): a burst of them must not look like a reset flood,
            // whose answer (GOAWAY) would end every stream. The peer proved the key.
            .max_pending_accept_reset_streams(config.max_streams as usize)
            .max_local_error_reset_streams(None)
            .initial_window_size(config.stream_window)
            .initial_connection_window_size(config.connection_window())
            .max_concurrent_streams(config.max_streams)
            .handshake(transport)
            .await
            .map_err(stream::stream_error)?;
        let keepalive = config.keepalive.and_then(|times| {
            let ping_pong = connection.ping_pong()?;
            Some(keepalive::Keepalive::new(ping_pong, times, received))
        });
        Ok(Self {
            connection,
            admission,
            keepalive,
            open,
        })
    }

    /// Who the tunnel was admitted as.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The next stream the client opens; `None` once the tunnel has closed cleanly. An error
    /// means the tunnel failed (or its keepalive went unanswered, [`io::ErrorKind::TimedOut`]):
    /// drop the server, and the streams still open fail with it.
    pub async fn next_stream(&mut self) -> Option<io::Result<IncomingStream>> {
        loop {
            let opened = std::future::poll_fn(|cx| {
                if let Poll::Ready(opened) = self.connection.poll_accept(cx) {
                    return Poll::Ready(opened.map(|result| result.map_err(stream::stream_error)));
                }
                match &mut self.keepalive {
                    Some(keepalive) => keepalive.poll_failed(cx).map(|err| Some(Err(err))),
                    None => Poll::Pending,
                }
            });
            let (request, respond) = match opened.await? {
                Ok(opened) => opened,
                Err(err) => return Some(Err(err)),
            };
            let is_connect = request.method() == Method::CONNECT;
            let mut incoming = IncomingStream {
                recv: request.into_body(),
                respond,
                tunnel: self.admission.connection_id(),
                ticket: self.open.ticket(),
            };
            if is_connect {
                return Some(Ok(incoming));
            }
            // Nothing but CONNECT is spoken here.
            incoming.respond.send_reset(h2::Reason::PROTOCOL_ERROR);
        }
    }

    /// Asks the client to open no more streams (GOAWAY); those already open go on, and
    /// [`MuxServer::next_stream`] returns `None` once they are done.
    pub fn graceful_shutdown(&mut self) {
        self.connection.graceful_shutdown();
    }
}

/// A stream the client has opened, not yet accepted or refused.
pub struct IncomingStream {
    recv: h2::RecvStream,
    respond: h2::server::SendResponse<Bytes>,
    tunnel: ConnectionId,
    ticket: Arc<coalesce::StreamTicket>,
}

impl std::fmt::Debug for IncomingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingStream")
            .field("stream_id", &self.stream_id())
            .finish_non_exhaustive()
    }
}

impl IncomingStream {
    /// The HTTP/2 stream id (unique within its tunnel), for logs.
    pub fn stream_id(&self) -> u32 {
        u32::from(self.respond.stream_id())
    }

    /// The connection id of the tunnel that carries it.
    pub fn tunnel_id(&self) -> ConnectionId {
        self.tunnel
    }

    /// Accepts the stream (once its upstream is connected): the client's first read succeeds,
    /// and what it sent so far can now be read.
    pub fn accept(mut self) -> io::Result<MuxStream> {
        let answer = response(StatusCode::OK)?;
        let send = self
            .respond
            .send_response(answer, false)
            .map_err(stream::stream_error)?;
        Ok(MuxStream::new(
            MuxReadHalf::answered(self.recv),
            MuxWriteHalf::new(send),
            self.tunnel,
            self.ticket,
        ))
    }

    /// Refuses this stream alone (its upstream cannot be reached): the client's reads fail
    /// with [`io::ErrorKind::ConnectionRefused`]; the tunnel and its other streams go on.
    pub fn refuse(mut self) {
        match response(StatusCode::BAD_GATEWAY) {
            Ok(answer) => {
                if self.respond.send_response(answer, true).is_err() {
                    self.respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            }
            Err(_) => self.respond.send_reset(h2::Reason::REFUSED_STREAM),
        }
    }
}

fn response(status: StatusCode) -> io::Result<Response<()>> {
    Response::builder()
        .status(status)
        .body(())
        .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_is_on_by_default_and_can_be_set_or_turned_off() {
        let config = MuxConfig::default();
        assert_eq!(
            config.keepalive(),
            Some((Duration::from_secs(30), Duration::from_secs(20)))
        );
        assert_eq!(config.without_keepalive().keepalive(), None);
        // A zero interval would ping without pause: each time is at least 10 ms.
        let tight = config.with_keepalive(Duration::ZERO, Duration::from_millis(1));
        let least = Duration::from_millis(10);
        assert_eq!(tight.keepalive(), Some((least, least)));
    }

    #[test]
    fn the_tunnel_window_covers_every_stream_window_up_to_http2s_limit() {
        let small = MuxConfig::default()
            .with_stream_window(65_535)
            .with_max_streams(4);
        assert_eq!(small.connection_window(), 4 * 65_535);
        assert_eq!(MuxConfig::default().connection_window(), MAX_WINDOW);
    }
}
