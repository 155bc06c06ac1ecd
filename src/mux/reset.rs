//! A tunnel that fails is reset, not closed (PROTOCOL.md, "Failure"): the peer of its TCP
//! connection sees an RST, as it would after a failed record on a sealed connection. A tunnel's
//! transport is generic and owned by h2 once the tunnel runs, so a second descriptor of the
//! socket is kept to set `SO_LINGER` 0 on it just before the transport is dropped. [`Pool`]
//! does this for its tunnels, [`Tunnel::with_reset`] for a tunnel of one's own; a server running
//! [`MuxServer`] over TCP keeps one itself and resets when `next_stream` fails.
//!
//! [`Pool`]: super::Pool
//! [`Tunnel::with_reset`]: super::Tunnel::with_reset
//! [`MuxServer`]: super::MuxServer

#[cfg(unix)]
mod imp {
    use std::os::fd::{AsFd, OwnedFd};
    use std::time::Duration;

    /// A second descriptor of a tunnel's socket, to make its close a reset when the tunnel
    /// fails. Take it before the socket goes into the tunnel; call [`ResetHandle::reset`]
    /// before dropping a tunnel that failed (it resets whenever called); drop it with the tunnel
    /// either way (the socket stays open while it lives).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let socket = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    /// let reset = linkgate::mux::ResetHandle::new(&socket);
    /// // ... the socket is admitted and runs a tunnel, which fails ...
    /// if let Some(reset) = &reset {
    ///     reset.reset();
    /// }
    /// drop(socket);
    /// drop(reset); // the last descriptor: the peer sees a reset
    /// # Ok(())
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct ResetHandle(OwnedFd);

    impl ResetHandle {
        /// None if the descriptor cannot be duplicated (out of descriptors): the tunnel then
        /// just closes on failure.
        pub fn new(socket: &impl AsFd) -> Option<Self> {
            socket.as_fd().try_clone_to_owned().ok().map(Self)
        }

        /// Makes the socket's close a reset, once every descriptor of it is closed (this one
        /// when it is dropped). A Unix socket has no reset: its peer sees the end.
        pub fn reset(&self) {
            let _ = socket2::SockRef::from(&self.0).set_linger(Some(Duration::ZERO));
        }
    }
}

#[cfg(not(unix))]
mod imp {
    /// No second descriptor where there are no file descriptors: a failed tunnel just closes.
    #[derive(Debug)]
    pub struct ResetHandle;

    impl ResetHandle {
        /// Always None here.
        pub fn new<S>(_: &S) -> Option<Self> {
            None
        }

        /// Nothing to do here.
        pub fn reset(&self) {}
    }
}

pub use imp::ResetHandle;
