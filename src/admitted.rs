//! [`Admitted`]: a stream that passed the handshake, plain or sealed underneath, and
//! [`Admission`]: who it is.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::keys::KeyId;
use crate::mode::Mode;
use crate::record::{Opener, Sealer};
use crate::sealed::SealedState;

/// Who was admitted on a connection: the key id it proved, the mode in force, and where it came
/// from.
///
/// Every [`Admitted`] stream carries one; with the `axum` feature handlers extract it as
/// `ConnectInfo<Admission>`, with the `tonic` feature from the request's extensions.
///
/// ```
/// # fn show(who: &linkgate::Admission) {
/// match who.peer() {
///     Some(peer) => println!("{} ({}) from {peer}", who.key_id(), who.mode()),
///     None => println!("{} ({})", who.key_id(), who.mode()),
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Admission {
    key_id: KeyId,
    mode: Mode,
    peer: Option<Peer>,
    via: Option<Peer>,
    connection_id: ConnectionId,
    keyring_generation: u64,
}

impl Admission {
    pub(crate) fn new(key_id: KeyId, mode: Mode, connection_id: ConnectionId) -> Self {
        Self {
            key_id,
            mode,
            peer: None,
            via: None,
            connection_id,
            keyring_generation: 0,
        }
    }

    pub(crate) fn with_keyring_generation(mut self, generation: u64) -> Self {
        self.keyring_generation = generation;
        self
    }

    pub(crate) fn with_peers(mut self, peer: Option<Peer>, via: Option<Peer>) -> Self {
        self.peer = peer;
        self.via = via;
        self
    }

    /// The key id the client proved (server side) or presented and had accepted (client side).
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The mode in force: plain, sealed or sealed-fs.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The client: the socket's peer, or the address a trusted load balancer reported in a
    /// PROXY protocol header. `None` for a stream admitted outside a listener.
    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_ref()
    }

    /// The load balancer the connection came through, when it sent a PROXY protocol header.
    pub fn via(&self) -> Option<&Peer> {
        self.via.as_ref()
    }

    /// This connection's id, unique within the process; it appears in the gate's logs and in
    /// the PROXY protocol header sent upstream.
    pub fn connection_id(&self) -> ConnectionId {
        self.connection_id
    }

    /// Which of the gate's keyrings admitted this connection ([`crate::Gate::keyring_generation`]:
    /// 0 for the one it started with, one more after each replacement); 0 on the client side.
    /// A key that a replacement removed or changed still admits nothing after it, but this
    /// connection was admitted under it if this is older than that replacement.
    pub fn keyring_generation(&self) -> u64 {
        self.keyring_generation
    }
}

/// Where a connection came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Peer {
    /// An IP socket address.
    Ip(SocketAddr),
    /// A Unix domain socket peer, known by its credentials.
    Unix(UnixPeer),
}

impl Peer {
    /// The IP socket address, if the peer has one.
    pub fn ip_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Ip(addr) => Some(*addr),
            Self::Unix(_) => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(addr) => write!(f, "{addr}"),
            Self::Unix(peer) => write!(f, "{peer}"),
        }
    }
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Self {
        Self::Ip(addr)
    }
}

/// The credentials of a Unix domain socket peer (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct UnixPeer {
    uid: u32,
    gid: u32,
    pid: Option<i32>,
}

impl UnixPeer {
    pub(crate) fn new(uid: u32, gid: u32, pid: Option<i32>) -> Self {
        Self { uid, gid, pid }
    }

    /// The peer process's user id (what per-source bounds count on a Unix socket).
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The peer process's group id.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// The peer process's id, where the system reports it.
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }
}

impl fmt::Display for UnixPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unix:uid={}", self.uid)?;
        if let Some(pid) = self.pid {
            write!(f, ",pid={pid}")?;
        }
        Ok(())
    }
}

/// A connection's id within the gate's process: 16 hex digits, a random per-process prefix and
/// a counter, so ids from several gates behind one balancer do not collide in practice.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

impl fmt::Debug for ConnectionId {
    /// As in the logs (`conn=…`), so a `Debug` dump can be matched to their lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({self})")
    }
}

impl ConnectionId {
    /// The next id.
    pub fn next() -> Self {
        static PREFIX: OnceLock<u32> = OnceLock::new();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let prefix = *PREFIX.get_or_init(|| {
            let mut bytes = [0u8; 4];
            // Without randomness the ids are still unique within the process.
            let _ = crate::keys::fill_random(&mut bytes);
            u32::from_ne_bytes(bytes)
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self((u64::from(prefix) << 32) | u64::from(n))
    }

    /// The id as a number.
    pub fn as_u64(&self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// An admitted connection, shaped like tokio-rustls' `TlsStream`: read and write application
/// bytes through it, whatever the mode. In the sealed modes every byte is sealed into records
/// on the way out and opened on the way in; in plain mode bytes pass straight through.
///
/// Returned by [`crate::Gate::admit`], yielded by [`crate::GatedListener`], and returned on the
/// client side by [`crate::authenticate`] and [`crate::connect`].
///
/// Shutting down the write half ([`tokio::io::AsyncWriteExt::shutdown`]) sends close_notify in
/// the sealed modes; the peer's read then ends cleanly while the other direction keeps flowing.
/// A stream cut off without close_notify reads as an error
/// ([`crate::RecordError::Truncated`]), never as a clean end.
///
/// ```
/// # async fn run(gate: linkgate::Gate, tcp: tokio::net::TcpStream) -> Result<(), linkgate::Error> {
/// use tokio::io::AsyncWriteExt;
/// let mut stream = gate.admit(tcp).await?;
/// println!("{} connected in mode {}", stream.key_id(), stream.mode());
/// stream.write_all(b"welcome\n").await?;
/// stream.shutdown().await?; // close_notify, then FIN
/// # Ok(()) }
/// ```
pub struct Admitted<IO> {
    io: IO,
    sealed: Option<Box<SealedState>>,
    admission: Admission,
}

impl<IO> fmt::Debug for Admitted<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admitted")
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

/// The record state of a sealed [`Admitted`] taken apart (see [`Admitted::into_parts`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct SealedParts {
    /// Seals what this side sends.
    pub sealer: Sealer,
    /// Opens what this side receives.
    pub opener: Opener,
    /// Plaintext already opened but not yet read by the application.
    pub unread_plaintext: Vec<u8>,
    /// Ciphertext already read from the stream but not yet opened.
    pub unread_ciphertext: Vec<u8>,
    /// Ciphertext already sealed but not yet written to the stream.
    pub unsent_ciphertext: Vec<u8>,
}

impl<IO> Admitted<IO> {
    pub(crate) fn new(io: IO, sealed: Option<SealedState>, admission: Admission) -> Self {
        Self {
            io,
            sealed: sealed.map(Box::new),
            admission,
        }
    }

    /// Whether a sealed stream keeps its read buffer while it waits for more (by default an
    /// idle stream holds none). Only tunnels ask.
    #[cfg(feature = "mux")]
    pub(crate) fn keep_read_buffer(&mut self, keep: bool) {
        if let Some(sealed) = &mut self.sealed {
            sealed.keep_read_buffer(keep);
        }
    }

    /// The sealed read buffer's capacity (0 when freed), for tests.
    #[cfg(all(test, feature = "mux"))]
    pub(crate) fn read_buffer_capacity(&self) -> usize {
        self.sealed
            .as_ref()
            .map_or(0, |sealed| sealed.read_buffer_capacity())
    }

    pub(crate) fn admission_mut(&mut self) -> &mut Admission {
        &mut self.admission
    }

    /// Who was admitted.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The key id.
    pub fn key_id(&self) -> &KeyId {
        &self.admission.key_id
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.admission.mode
    }

    /// The client's address, where there is one (see [`Admission::peer`]).
    pub fn peer(&self) -> Option<&Peer> {
        self.admission.peer.as_ref()
    }

    /// The underlying stream. In a sealed mode, reading or writing it directly corrupts the
    /// session; use it to look at socket options or addresses.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The underlying stream, mutably (same caution as [`Admitted::get_ref`]).
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// The underlying stream. In plain mode it carries on where the handshake left it; in a
    /// sealed mode the session keys are dropped, so only closing it makes sense (use
    /// [`Admitted::into_parts`] to keep them).
    pub fn into_inner(self) -> IO {
        self.io
    }

    /// The stream, who was admitted and, in the sealed modes, the record state with anything
    /// already buffered: for code that drives [`crate::record`] itself, such as a proxy's fast
    /// forwarding loop.
    pub fn into_parts(self) -> (IO, Admission, Option<SealedParts>) {
        let sealed = self.sealed.map(|state| state.into_parts());
        (self.io, self.admission, sealed)
    }

    /// The same admitted connection, session and buffers intact, over `f(stream)`: e.g. to move
    /// it to another tokio runtime with `into_std` here and `from_std` there. If `f` fails, the
    /// connection is dropped (closed) with the error returned.
    ///
    /// ```
    /// # fn run(admitted: linkgate::Admitted<tokio::net::TcpStream>) -> std::io::Result<()> {
    /// let detached = admitted.map_io(tokio::net::TcpStream::into_std)?;
    /// std::thread::spawn(move || {
    ///     let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    ///     runtime.block_on(async move {
    ///         let admitted = detached.map_io(tokio::net::TcpStream::from_std)?;
    ///         // … serve `admitted` on this thread's runtime.
    ///         # drop(admitted);
    ///         Ok::<_, std::io::Error>(())
    ///     })
    /// });
    /// # Ok(()) }
    /// ```
    pub fn map_io<T>(self, f: impl FnOnce(IO) -> io::Result<T>) -> io::Result<Admitted<T>> {
        Ok(Admitted {
            io: f(self.io)?,
            sealed: self.sealed,
            admission: self.admission,
        })
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.sealed {
            Some(sealed) => sealed.poll_read(&mut this.io, cx, buf),
            None => Pin::new(&mut this.io).poll_read(cx, buf),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.sealed {
            Some(sealed) => sealed.poll_write(&mut this.io, cx, buf),
            None => Pin::new(&mut this.io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.sealed {
            Some(sealed) => sealed.poll_write_vectored(&mut this.io, cx, bufs),
            None => Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        // Sealed: the slices are gathered into records, so writers that frame their data
        // (HTTP/2) get one record per frame instead of one per slice.
        self.sealed.is_some() || self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.sealed {
            Some(sealed) => sealed.poll_flush(&mut this.io, cx),
            None => Pin::new(&mut this.io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.sealed {
            Some(sealed) => sealed.poll_shutdown(&mut this.io, cx),
            None => Pin::new(&mut this.io).poll_shutdown(cx),
        }
    }
}

#[cfg(unix)]
impl<IO: std::os::fd::AsRawFd> std::os::fd::AsRawFd for Admitted<IO> {
    /// The socket's descriptor. In a sealed mode, bytes moved through it directly bypass the
    /// record layer and break the session.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.io.as_raw_fd()
    }
}

#[cfg(unix)]
impl<IO: std::os::fd::AsFd> std::os::fd::AsFd for Admitted<IO> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.as_fd()
    }
}
