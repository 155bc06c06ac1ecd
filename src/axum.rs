//! axum integration (cargo feature `axum`): serve an axum app only to admitted clients.
//!
//! [`GatedListener`] implements [`axum::serve::Listener`]. axum awaits `accept()` one
//! connection at a time, but the handshakes do not run inside it: they run concurrently in their
//! own tasks (with the gate's timeout and bounds), and `accept()` only hands over connections
//! that are already admitted. Handlers learn who is calling through
//! `ConnectInfo<Admission>`:
//!
//! ```no_run
//! use axum::{Router, extract::ConnectInfo, routing::get};
//! use linkgate::{Admission, Gate, GatedListener, Keyring};
//!
//! async fn whoami(ConnectInfo(who): ConnectInfo<Admission>) -> String {
//!     format!("hello {} from {}", who.key_id, who.peer)
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let gate = Gate::new(Keyring::load("keys/")?)?;
//! let listener = GatedListener::bind("127.0.0.1:8443", gate).await?;
//! let app = Router::new().route("/", get(whoami));
//! axum::serve(listener, app.into_make_service_with_connect_info::<Admission>()).await?;
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::listener::{Admission, GatedListener};

/// An admitted TCP connection that remembers who was admitted; what [`GatedListener`] hands
/// to axum.
#[derive(Debug)]
pub struct AdmittedStream {
    stream: TcpStream,
    admission: Admission,
}

impl AdmittedStream {
    /// Who was admitted on this connection.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The TCP stream.
    pub fn into_inner(self) -> TcpStream {
        self.stream
    }
}

impl AsyncRead for AdmittedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AdmittedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl axum::serve::Listener for GatedListener {
    type Io = AdmittedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, admission) = GatedListener::accept(self).await;
        let peer = admission.peer;
        (AdmittedStream { stream, admission }, peer)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        GatedListener::local_addr(self)
    }
}

/// Lets handlers extract `ConnectInfo<Admission>`: the peer address and the key id it proved.
impl Connected<IncomingStream<'_, GatedListener>> for Admission {
    fn connect_info(stream: IncomingStream<'_, GatedListener>) -> Self {
        stream.io().admission.clone()
    }
}
