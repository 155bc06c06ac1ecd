//! A bare h2 TCP tunnel: one HTTP/2 connection per thread over plain TCP, one CONNECT stream
//! per client connection, a `200` once the upstream is connected: linkgate's tunnel with its
//! records, admission, bounds, metrics and logs taken out. Small writes are held for one
//! scheduler turn, as linkgate's coalescing layer holds them, so frames of streams woken
//! together leave in one segment. Failures are not carried as resets the way linkgate carries
//! them: a floor for the rate of connections that succeed, not a tunnel to use.
use bytes::Bytes;
use linkgate_mux_floor::main_with;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// linkgate's stream window and frame size.
const STREAM_WINDOW: u32 = 2 << 20;
const MAX_FRAME: u32 = 65_535;

fn main() {
    main_with(client, server);
}

async fn client(tunnel: TcpStream, listener: TcpListener) -> Result<(), String> {
    let handshake = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(u32::MAX >> 1)
        .max_frame_size(MAX_FRAME)
        .enable_push(false)
        .handshake::<_, Bytes>(Coalesce::new(tunnel))
        .await;
    let (opener, connection) = handshake.map_err(|e| format!("tunnel handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("tunnel: {e}");
        }
    });
    let authority = http::uri::Authority::from_static("upstream:0");
    loop {
        let (local, _) = listener
            .accept()
            .await
            .map_err(|e| format!("accept: {e}"))?;
        let _ = local.set_nodelay(true);
        let opener = opener.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let Ok(mut opener) = opener.ready().await else {
                return;
            };
            let uri = http::Uri::from(authority);
            let Ok(request) = http::Request::connect(uri).body(()) else {
                return;
            };
            let Ok((response, to_server)) = opener.send_request(request, false) else {
                return;
            };
            let (from_local, to_local) = local.into_split();
            let down = async move {
                if let Ok(response) = response.await
                    && response.status() == http::StatusCode::OK
                {
                    carry_down(response.into_body(), to_local).await;
                }
            };
            tokio::join!(carry_up(from_local, to_server), down);
        });
    }
}

async fn server(tunnel: TcpStream, upstream: std::net::SocketAddr) {
    let _ = tunnel.set_nodelay(true);
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(u32::MAX >> 1)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(10_000)
        .handshake::<_, Bytes>(Coalesce::new(tunnel))
        .await;
    let Ok(mut connection) = handshake else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        tokio::spawn(async move {
            let Ok(up) = TcpStream::connect(upstream).await else {
                return respond.send_reset(h2::Reason::CONNECT_ERROR);
            };
            let _ = up.set_nodelay(true);
            let Ok(to_client) = respond.send_response(http::Response::new(()), false) else {
                return;
            };
            let (from_up, to_up) = up.into_split();
            tokio::join!(
                carry_up(from_up, to_client),
                carry_down(request.into_body(), to_up)
            );
        });
    }
}

thread_local! {
    /// Reads land here and are copied out at their size, as linkgate's relay does: no buffer is
    /// allocated or zeroed per connection.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
}

/// A socket's bytes into a stream, its end as END_STREAM. Leaves out linkgate's flow control:
/// h2 buffers whatever is sent, where linkgate waits for window (the rate runs never fill one).
async fn carry_up(from: OwnedReadHalf, mut to: h2::SendStream<Bytes>) {
    loop {
        if from.readable().await.is_err() {
            return to.send_reset(h2::Reason::CANCEL);
        }
        let read = SCRATCH.with_borrow_mut(|scratch| {
            from.try_read(scratch)
                .map(|n| Bytes::copy_from_slice(&scratch[..n]))
        });
        match read {
            Ok(data) if data.is_empty() => return drop(to.send_data(data, true)),
            Ok(data) => {
                if to.send_data(data, false).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return to.send_reset(h2::Reason::CANCEL),
        }
    }
}

/// A stream's DATA into a socket, END_STREAM as a shutdown.
async fn carry_down(mut from: h2::RecvStream, mut to: OwnedWriteHalf) {
    while let Some(data) = from.data().await {
        let Ok(data) = data else { return };
        if to.write_all(&data).await.is_err() {
            return;
        }
        let _ = from.flow_control().release_capacity(data.len());
    }
    let _ = to.shutdown().await;
}

/// Holds h2's writes below 4 KiB for one scheduler turn, then writes them in one call.
struct Coalesce {
    io: TcpStream,
    pending: Vec<u8>,
    held: bool,
}

impl Coalesce {
    fn new(io: TcpStream) -> Self {
        Self {
            io,
            pending: Vec::new(),
            held: false,
        }
    }

    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Coalesce {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalesce {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.pending.len() >= 256 * 1024 {
            ready!(self.poll_write_pending(cx))?;
        }
        self.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.held && !self.pending.is_empty() && self.pending.len() < 4096 {
            self.held = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(self.poll_write_pending(cx))?;
        self.held = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_write_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
