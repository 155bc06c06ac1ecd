//! One carried connection: an HTTP/2 stream read and written like a socket.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::{Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::coalesce::StreamTicket;
use crate::admitted::ConnectionId;

/// Largest piece handed to HTTP/2 per write: frames are split from it by the connection.
const MAX_SEND: usize = 256 * 1024;

/// A connection carried as one stream of a multiplexed tunnel: what one side writes, the other
/// reads, with half-close (`shutdown`) and reset ([`MuxStream::reset`]) as on a TCP connection.
///
/// Read errors tell how the stream ended when it did not end cleanly:
/// [`io::ErrorKind::ConnectionReset`] for a reset by the other side,
/// [`io::ErrorKind::ConnectionRefused`] when the server refused the stream (its upstream could
/// not be reached), [`io::ErrorKind::ConnectionAborted`] when the tunnel itself failed. A
/// stream never ends with a clean end of stream unless the other side ended it.
///
/// Flow control is per stream: a reader that stops reading stalls only its own stream.
#[derive(Debug)]
pub struct MuxStream {
    read: MuxReadHalf,
    write: MuxWriteHalf,
    tunnel: ConnectionId,
}

impl MuxStream {
    /// A stream of a tunnel; both halves hold its `ticket`, so the tunnel counts it as open
    /// until both are gone.
    pub(crate) fn new(
        mut read: MuxReadHalf,
        mut write: MuxWriteHalf,
        tunnel: ConnectionId,
        ticket: Arc<StreamTicket>,
    ) -> Self {
        read.ticket = Some(Arc::clone(&ticket));
        write.ticket = Some(ticket);
        Self {
            read,
            write,
            tunnel,
        }
    }

    /// The connection id of the tunnel that carries this stream, for logs.
    pub fn tunnel_id(&self) -> ConnectionId {
        self.tunnel
    }

    /// The HTTP/2 stream id (unique within its tunnel), for logs.
    pub fn stream_id(&self) -> u32 {
        self.write.stream_id()
    }

    /// Resets the stream both ways, as an RST on a TCP connection: the other side's reads and
    /// writes fail with [`io::ErrorKind::ConnectionReset`].
    pub fn reset(&mut self) {
        self.write.reset();
    }

    /// The two halves, to read and write from separate tasks.
    pub fn into_split(self) -> (MuxReadHalf, MuxWriteHalf) {
        (self.read, self.write)
    }
}

/// Where the read half is: waiting for the server's answer to the open (client side), reading
/// the stream's data, or ended.
enum Recv {
    Answer(h2::client::ResponseFuture),
    Data(RecvStream),
    Ended,
    /// Failed: every later read fails the same way, never a clean end.
    Failed(io::ErrorKind),
}

/// The reading half of a [`MuxStream`].
pub struct MuxReadHalf {
    recv: Recv,
    /// Received, not yet read; its flow-control capacity is released as it is read.
    unread: Bytes,
    ticket: Option<Arc<StreamTicket>>,
}

impl std::fmt::Debug for MuxReadHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxReadHalf")
            .field("unread", &self.unread.len())
            .finish_non_exhaustive()
    }
}

impl MuxReadHalf {
    pub(crate) fn answered(recv: RecvStream) -> Self {
        Self {
            recv: Recv::Data(recv),
            unread: Bytes::new(),
            ticket: None,
        }
    }

    pub(crate) fn awaiting(answer: h2::client::ResponseFuture) -> Self {
        Self {
            recv: Recv::Answer(answer),
            unread: Bytes::new(),
            ticket: None,
        }
    }

    /// The next piece of data, `None` at a clean end of stream. The stream's flow-control
    /// window reopens by the piece's size as it is returned, so a caller that writes each piece
    /// out before asking for the next keeps at most one window in memory.
    pub async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.unread.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.unread))));
        }
        loop {
            match &mut self.recv {
                Recv::Answer(answer) => match opened(ready!(Pin::new(answer).poll(cx))) {
                    Ok(recv) => self.recv = Recv::Data(recv),
                    Err(err) => return Poll::Ready(Err(self.fail(err))),
                },
                Recv::Data(recv) => match ready!(recv.poll_data(cx)) {
                    Some(Ok(data)) => {
                        // Released now: the caller takes the piece whole.
                        let _ = recv.flow_control().release_capacity(data.len());
                        if !data.is_empty() {
                            return Poll::Ready(Ok(Some(data)));
                        }
                    }
                    Some(Err(err)) => return Poll::Ready(Err(self.fail(stream_error(err)))),
                    None => {
                        self.recv = Recv::Ended;
                        return Poll::Ready(Ok(None));
                    }
                },
                Recv::Ended => return Poll::Ready(Ok(None)),
                Recv::Failed(kind) => {
                    return Poll::Ready(Err(io::Error::new(*kind, "the stream failed earlier")));
                }
            }
        }
    }

    fn fail(&mut self, err: io::Error) -> io::Error {
        self.recv = Recv::Failed(err.kind());
        err
    }
}

/// The server's answer to an open: 200 means its upstream is connected.
fn opened(answered: Result<Response<RecvStream>, h2::Error>) -> io::Result<RecvStream> {
    let response = answered.map_err(stream_error)?;
    if response.status() == StatusCode::OK {
        return Ok(response.into_body());
    }
    Err(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!(
            "the gate refused the stream (HTTP/2 status {}): it could not reach its upstream",
            response.status().as_u16()
        ),
    ))
}

/// How an HTTP/2 failure looks to a reader or writer of the stream.
pub(crate) fn stream_error(err: h2::Error) -> io::Error {
    if err.is_reset() && err.is_remote() {
        io::Error::new(
            io::ErrorKind::ConnectionReset,
            "the stream was reset by the other side",
        )
    } else if err.is_io() {
        let cause = err
            .into_io()
            .map_or_else(|| "unknown".to_owned(), |io| io.to_string());
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("the tunnel failed: {cause}"),
        )
    } else if err.is_go_away() {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("the tunnel was closed: {err}"),
        )
    } else {
        io::Error::new(io::ErrorKind::ConnectionReset, err)
    }
}

impl AsyncRead for MuxReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let Some(mut chunk) = ready!(this.poll_chunk(cx))? else {
            return Poll::Ready(Ok(()));
        };
        let n = buf.remaining().min(chunk.len());
        buf.put_slice(&chunk.split_to(n));
        this.unread = chunk;
        Poll::Ready(Ok(()))
    }
}

/// The writing half of a [`MuxStream`].
pub struct MuxWriteHalf {
    send: SendStream<Bytes>,
    id: u32,
    ended: bool,
    ticket: Option<Arc<StreamTicket>>,
}

impl std::fmt::Debug for MuxWriteHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxWriteHalf")
            .field("stream_id", &self.id)
            .field("ended", &self.ended)
            .finish()
    }
}

impl MuxWriteHalf {
    pub(crate) fn new(send: SendStream<Bytes>) -> Self {
        let id = u32::from(send.stream_id());
        Self {
            send,
            id,
            ended: false,
            ticket: None,
        }
    }

    /// The HTTP/2 stream id.
    pub fn stream_id(&self) -> u32 {
        self.id
    }

    /// Sends all of `data`, waiting for the stream's flow-control window as needed; the bytes
    /// are handed on without a copy.
    pub async fn write_chunk(&mut self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_room(cx, data.len())).await?;
            self.send
                .send_data(data.split_to(n), false)
                .map_err(stream_error)?;
        }
        Ok(())
    }

    /// Waits until some of `wanted` bytes may be sent; how many.
    fn poll_room(&mut self, cx: &mut Context<'_>, wanted: usize) -> Poll<io::Result<usize>> {
        if self.ended {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        self.send.reserve_capacity(wanted.min(MAX_SEND));
        match ready!(self.send.poll_capacity(cx)) {
            Some(Ok(room)) => Poll::Ready(Ok(room.min(wanted))),
            Some(Err(err)) => Poll::Ready(Err(stream_error(err))),
            None => Poll::Ready(Err(self.reset_error())),
        }
    }

    /// Why the stream cannot be written: the other side's reset, or the tunnel's end.
    fn reset_error(&mut self) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionReset,
            "the stream was reset or its tunnel closed",
        )
    }

    /// Completes when the other side resets the stream or the tunnel ends, with the error a
    /// write would now get; `None` when the other side only asked for nothing more to be sent
    /// (`RST_STREAM` with `NO_ERROR`, as after a refusal: its reader reports the outcome). For a
    /// writer that waits for something to send: a reset must not go unnoticed until it has some.
    pub async fn reset_by_peer(&mut self) -> Option<io::Error> {
        match std::future::poll_fn(|cx| self.send.poll_reset(cx)).await {
            Ok(h2::Reason::NO_ERROR) => None,
            Ok(_) => Some(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the stream was reset by the other side",
            )),
            Err(err) => Some(stream_error(err)),
        }
    }

    /// Ends this direction (half-close): the other side reads a clean end of stream.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        self.send
            .send_data(Bytes::new(), true)
            .map_err(stream_error)
    }

    /// Resets the stream both ways (RST_STREAM with CANCEL).
    pub fn reset(&mut self) {
        self.ended = true;
        self.send.send_reset(h2::Reason::CANCEL);
    }
}

impl AsyncWrite for MuxWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_room(cx, buf.len()))?;
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(stream_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The tunnel's connection task writes frames out as soon as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().finish())
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_read(cx, buf)
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().write).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_shutdown(cx)
    }
}
