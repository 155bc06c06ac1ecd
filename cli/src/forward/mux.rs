//! Forwarding between a socket and one stream of a multiplexed tunnel.
//!
//! Socket to stream: each read goes into the thread's read buffer; a small piece is copied out
//! and the buffer kept, a large one is handed to HTTP/2 with the buffer (no second copy). Stream to socket: each piece HTTP/2 received is written out before the next is taken,
//! so a slow socket holds back only its own stream's window. A waiting direction holds no buffer.

use std::cell::RefCell;
use std::io;

use bytes::{Bytes, BytesMut};
use linkgate::mux::{MuxReadHalf, MuxStream, MuxWriteHalf};

use crate::socket::{ResetUnlessDone, Socket, shutdown_write, write_all};

/// Largest read from the socket per piece: one whole HTTP/2 frame (four whole records), so a
/// 64 KiB read does not leave a 9-byte frame (and record, and system call) behind it.
const CHUNK: usize = linkgate::mux::MAX_FRAME_DATA;
/// Pieces smaller than this are copied out of their chunk.
const SMALL: usize = 4 * 1024;

/// Bytes moved each way by [`forward`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StreamTransfer {
    /// Read from the socket and sent on the stream.
    pub(crate) sent: u64,
    /// Received on the stream and written to the socket.
    pub(crate) received: u64,
}

/// Forwards until both directions have ended. Half-close passes through both ways (a socket's
/// end of stream ⇄ the stream's end). On any failure both directions stop and the stream is
/// reset and so is the socket, so neither side mistakes it for a clean end. Cut off before the
/// end (its task dropped at a drain deadline), the same happens: the socket is reset, and the
/// stream's halves, dropped unfinished, reset the stream.
pub(crate) async fn forward<S: Socket>(
    socket: &S,
    stream: MuxStream,
) -> io::Result<StreamTransfer> {
    let mut guard = ResetUnlessDone::one(socket);
    let (mut from_stream, mut to_stream) = stream.into_split();
    let result = tokio::try_join!(
        socket_to_stream(socket, &mut to_stream),
        stream_to_socket(&mut from_stream, socket)
    );
    match result {
        Ok((sent, received)) => {
            guard.done = true;
            Ok(StreamTransfer { sent, received })
        }
        Err(err) => {
            to_stream.reset();
            Err(err)
        }
    }
}

async fn socket_to_stream<S: Socket>(from: &S, to: &mut MuxWriteHalf) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // A reset (or the tunnel's end) while the socket is quiet ends this at once; otherwise
        // it would hold the connection until the socket sent something. `biased`, reset
        // first: a refusal or reset is reported as such even while the socket has more to
        // send, it ends this loop so it cannot starve the socket, and no random order is
        // drawn per wake-up.
        tokio::select! {
            biased;
            reset = to.reset_by_peer() => match reset {
                Some(err) => return Err(err),
                // Nothing more wanted: stop sending, the other direction tells how it ended.
                None => return Ok(total),
            },
            ready = from.readable() => ready?,
        }
        match read_piece(from) {
            Ok(piece) if piece.is_empty() => {
                to.finish()?;
                return Ok(total);
            }
            Ok(piece) => {
                total += piece.len() as u64;
                to.write_chunk(piece).await?;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
}

thread_local! {
    /// This thread's read buffer: unzeroed capacity for one chunk, reused while the pieces read
    /// are small (copied out), handed to HTTP/2 whole when a piece is large.
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Reads what the socket has, up to one chunk, as a piece to send. A small piece is copied out
/// of the thread's buffer, which is kept (a 64 KiB allocation per 16-byte request cost more than
/// the rest of the read); a large one takes the buffer with it, with no second copy.
fn read_piece<S: Socket>(from: &S) -> io::Result<Bytes> {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        if buf.capacity() < CHUNK {
            *buf = BytesMut::with_capacity(CHUNK);
        }
        let n = from.try_read_buf_draining(&mut buf)?;
        Ok(if n < SMALL {
            let piece = Bytes::copy_from_slice(&buf[..n]);
            buf.clear();
            piece
        } else {
            std::mem::take(&mut *buf).freeze()
        })
    })
}

async fn stream_to_socket<S: Socket>(from: &mut MuxReadHalf, to: &S) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(piece) = from.read_chunk().await? {
        write_all(to, &piece).await?;
        total += piece.len() as u64;
    }
    shutdown_write(to)?;
    Ok(total)
}
