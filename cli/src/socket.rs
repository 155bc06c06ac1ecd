//! What forwarding needs of a connection, for TCP and Unix domain sockets alike: readiness and
//! non-blocking reads and writes through a shared reference (so both directions run at once on
//! one socket), a write-half shutdown, and a reset.

use std::future::Future;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::AsFd;

use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// A connected stream socket that forwarding can drive.
pub(crate) trait Socket: AsFd + Send + Sync + Unpin + 'static {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Reads into the spare capacity of `buf` (no zeroing first).
    fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> io::Result<usize>;
    /// [`Socket::try_read_buf`], and a read that did not fill the spare capacity also clears
    /// the socket's readiness, as tokio's own `poll_read` does: the socket was drained, so the
    /// next wait sleeps until more arrives instead of spending a system call on `EAGAIN`.
    fn try_read_buf_draining(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        let mut short_read = None;
        let result = self.try_io(Interest::READABLE, || {
            let spare = buf.capacity() - buf.len();
            let n = self.try_read_buf(buf)?;
            if n > 0 && n < spare {
                short_read = Some(n);
                // Reported to tokio as "would block" so that it clears the readiness (an end
                // of stream stays ready: tokio never clears a closed state).
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match (result, short_read) {
            (_, Some(n)) => Ok(n),
            (result, None) => result,
        }
    }
    fn try_read_vectored(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize>;
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
    /// Makes the next close a reset (TCP); Unix sockets have no reset, their peer sees the end.
    fn set_reset_on_close(&self);
    /// This end's IP address, for sockets that have one.
    fn local_ip(&self) -> Option<std::net::SocketAddr>;
    /// The socket, taken off this runtime (see [`crate::threads`]), to be attached to another.
    type Detached: Send + 'static;
    fn detach(self) -> io::Result<Self::Detached>;
    /// Registers a detached socket with the current runtime.
    fn attach(detached: Self::Detached) -> io::Result<Self>
    where
        Self: Sized;
}

macro_rules! socket {
    ($type:ty, $std:ty, $reset:expr, $local:expr) => {
        impl Socket for $type {
            type Detached = $std;
            fn detach(self) -> io::Result<$std> {
                <$type>::into_std(self)
            }
            fn attach(detached: $std) -> io::Result<Self> {
                <$type>::from_std(detached)
            }
            fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$type>::readable(self)
            }
            fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$type>::writable(self)
            }
            fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$type>::try_read(self, buf)
            }
            fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
                <$type>::try_read_buf(self, buf)
            }
            fn try_read_vectored(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
                <$type>::try_read_vectored(self, bufs)
            }
            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$type>::try_write(self, buf)
            }
            fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
                <$type>::try_write_vectored(self, bufs)
            }
            fn try_io<R>(
                &self,
                interest: Interest,
                f: impl FnOnce() -> io::Result<R>,
            ) -> io::Result<R> {
                <$type>::try_io(self, interest, f)
            }
            fn set_reset_on_close(&self) {
                let reset: fn(&$type) = $reset;
                reset(self);
            }
            fn local_ip(&self) -> Option<std::net::SocketAddr> {
                let local: fn(&$type) -> Option<std::net::SocketAddr> = $local;
                local(self)
            }
        }
    };
}

socket!(
    TcpStream,
    std::net::TcpStream,
    |stream| {
        let _ = stream.set_zero_linger();
    },
    |stream| stream.local_addr().ok()
);
socket!(UnixStream, std::os::unix::net::UnixStream, |_| {}, |_| None);

/// Writes all of `buf`.
pub(crate) async fn write_all<S: Socket>(to: &S, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match to.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Writes all of `bufs`, in order, with vectored writes.
pub(crate) async fn write_all_vectored<S: Socket>(
    to: &S,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match to.try_write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Shuts down the write half: the peer reads the end of this direction.
pub(crate) fn shutdown_write<S: Socket>(socket: &S) -> io::Result<()> {
    rustix::net::shutdown(socket, rustix::net::Shutdown::Write).map_err(io::Error::from)
}

/// Resets every connection given (RST instead of FIN where the transport has one), so no peer
/// can take a failed transfer for a complete one.
pub(crate) fn reset_both<A: Socket, B: Socket>(a: &A, b: &B) {
    a.set_reset_on_close();
    b.set_reset_on_close();
}

/// Resets both connections when dropped, unless the transfer completed: whether it failed or its
/// task was cut off (the drain deadline), neither peer may take it for a complete one.
pub(crate) struct ResetUnlessDone<'a, A: Socket, B: Socket> {
    a: &'a A,
    b: &'a B,
    pub(crate) done: bool,
}

impl<'a, A: Socket, B: Socket> ResetUnlessDone<'a, A, B> {
    pub(crate) fn new(a: &'a A, b: &'a B) -> Self {
        Self { a, b, done: false }
    }
}

impl<'a, A: Socket> ResetUnlessDone<'a, A, A> {
    /// For a transfer with one socket (the other side resets by other means).
    pub(crate) fn one(a: &'a A) -> Self {
        Self::new(a, a)
    }
}

impl<A: Socket, B: Socket> Drop for ResetUnlessDone<'_, A, B> {
    fn drop(&mut self) {
        if !self.done {
            reset_both(self.a, self.b);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::Socket;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// A short read clears readiness, but an end of stream that arrived with the data must
    /// still wake the next wait (else a half-close would hang the transfer).
    #[tokio::test]
    async fn a_short_read_keeps_an_end_that_came_with_the_data() {
        let (mut peer, socket) = pair().await;
        peer.write_all(b"hello").await.unwrap();
        peer.shutdown().await.unwrap();
        // Both the data and the FIN are in before the first read.
        tokio::time::sleep(Duration::from_millis(50)).await;
        socket.readable().await.unwrap();
        let mut buf = bytes::BytesMut::with_capacity(1024);
        assert_eq!(socket.try_read_buf_draining(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..], b"hello");
        tokio::time::timeout(Duration::from_secs(5), socket.readable())
            .await
            .expect("the end of stream must keep the socket readable")
            .unwrap();
        let mut rest = bytes::BytesMut::with_capacity(1024);
        assert_eq!(socket.try_read_buf_draining(&mut rest).unwrap(), 0);
    }

    /// After a short read the next wait sleeps until more arrives, and then wakes.
    #[tokio::test]
    async fn a_short_read_waits_for_more_and_wakes_for_it() {
        let (mut peer, socket) = pair().await;
        peer.write_all(b"one").await.unwrap();
        socket.readable().await.unwrap();
        let mut buf = bytes::BytesMut::with_capacity(1024);
        assert_eq!(socket.try_read_buf_draining(&mut buf).unwrap(), 3);
        // Drained: not ready until the peer writes again (no EAGAIN read spent to learn it).
        let waiting = tokio::time::timeout(Duration::from_millis(100), socket.readable()).await;
        assert!(
            waiting.is_err(),
            "readiness must be cleared by the short read"
        );
        peer.write_all(b"two").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), socket.readable())
            .await
            .expect("new data must wake the wait")
            .unwrap();
        assert_eq!(socket.try_read_buf_draining(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..], b"onetwo");
    }

    /// A read that fills the buffer leaves the socket ready: more may be waiting.
    #[tokio::test]
    async fn a_full_read_stays_ready() {
        let (mut peer, socket) = pair().await;
        peer.write_all(&[7u8; 64]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        socket.readable().await.unwrap();
        let mut buf = bytes::BytesMut::with_capacity(16);
        let first = socket.try_read_buf_draining(&mut buf).unwrap();
        assert_eq!(first, buf.capacity());
        tokio::time::timeout(Duration::from_secs(5), socket.readable())
            .await
            .expect("a full read must not clear readiness")
            .unwrap();
    }
}
