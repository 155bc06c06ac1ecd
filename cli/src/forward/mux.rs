//! Forwarding between a socket and one stream of a multiplexed tunnel.
//!
//! Socket to stream: each read goes into a fresh buffer that is handed to HTTP/2 whole (no second
//! copy). Stream to socket: each piece HTTP/2 received is written out before the next is taken,
//! so a slow socket holds back only its own stream's window. A waiting direction holds no buffer.

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
        // it would hold the connection until the socket sent something.
        tokio::select! {
            ready = from.readable() => ready?,
            reset = to.reset_by_peer() => match reset {
                Some(err) => return Err(err),
                // Nothing more wanted: stop sending, the other direction tells how it ended.
                None => return Ok(total),
            },
        }
        // Read into fresh, unzeroed capacity that is handed to HTTP/2 as it is (zeroing 64 KiB
        // for every 16-byte request cost more than the rest of the read); a small piece is
        // copied out so it does not hold the whole chunk while it waits to be sent.
        let mut buf = BytesMut::with_capacity(CHUNK);
        let read = from.try_read_buf_draining(&mut buf).map(|n| {
            if n < SMALL {
                Bytes::copy_from_slice(&buf[..n])
            } else {
                buf.freeze()
            }
        });
        match read {
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

async fn stream_to_socket<S: Socket>(from: &mut MuxReadHalf, to: &S) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(piece) = from.read_chunk().await? {
        write_all(to, &piece).await?;
        total += piece.len() as u64;
    }
    shutdown_write(to)?;
    Ok(total)
}
