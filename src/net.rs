//! What a [`crate::GatedListener`] can listen on: TCP and Unix domain sockets, bound here or
//! handed in already bound (as systemd does with socket activation).

use std::fmt;
use std::io;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::admitted::{Peer, UnixPeer};

/// What [`Listen::poll_accept`] yields: the connection, its address as the listener reports it,
/// and the peer.
pub type Accepted<L> = (<L as Listen>::Io, <L as Listen>::Addr, Peer);

/// A source of incoming connections for [`crate::GatedListener`]: implemented for tokio's
/// [`TcpListener`] and [`UnixListener`]; implement it for other transports.
pub trait Listen: Send + Unpin + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The listener's own address.
    type Addr: Clone + fmt::Debug + Send + Sync + 'static;

    /// The next connection, its address as the listener reports it, and who is on the other
    /// end.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Accepted<Self>>>;

    /// The address the listener is bound to.
    fn local_addr(&self) -> io::Result<Self::Addr>;
}

impl Listen for TcpListener {
    type Io = TcpStream;
    type Addr = std::net::SocketAddr;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Accepted<Self>>> {
        let (stream, addr) = ready!(Self::poll_accept(self, cx))?;
        // The handshake is one round trip of small messages, and a server's first records can
        // follow the VERDICT at once: Nagle would hold them for a delayed ACK.
        let _ = stream.set_nodelay(true);
        Poll::Ready(Ok((stream, addr, Peer::Ip(addr))))
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Self::local_addr(self)
    }
}

impl Listen for UnixListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Accepted<Self>>> {
        let (stream, addr) = ready!(Self::poll_accept(self, cx))?;
        // Without credentials the peer cannot be bounded per user: drop that one connection
        // (reported as a per-connection error, so accepting goes on at once).
        let cred = stream.peer_cred().map_err(|err| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("cannot read the peer's credentials: {err}"),
            )
        })?;
        let peer = UnixPeer::new(cred.uid(), cred.gid(), cred.pid());
        Poll::Ready(Ok((stream, addr, Peer::Unix(peer))))
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Self::local_addr(self)
    }
}
