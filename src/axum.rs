//! axum integration (cargo feature `axum`): serve an axum app only to admitted clients.
//!
//! [`GatedListener`] implements [`axum::serve::Listener`]. axum awaits `accept()` one
//! connection at a time, but the handshakes do not run inside it: they run concurrently in their
//! own tasks (with the gate's timeout and the listener's bounds), and `accept()` only hands over
//! connections that are already admitted. Handlers learn who is calling through
//! `ConnectInfo<Admission>`:
//!
//! ```no_run
//! use axum::{Router, extract::ConnectInfo, routing::get};
//! use linkgate::{Admission, Gate, GatedListener, Keyring};
//!
//! async fn whoami(ConnectInfo(who): ConnectInfo<Admission>) -> String {
//!     format!("hello {} ({})", who.key_id(), who.mode())
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

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;

use crate::admitted::{Admission, Admitted};
use crate::listener::GatedListener;
use crate::net::Listen;

impl<L: Listen> axum::serve::Listener for GatedListener<L> {
    type Io = Admitted<L::Io>;
    type Addr = L::Addr;

    /// The admitted stream and the socket's peer address. (The admission, with the real client
    /// behind a load balancer, travels on the stream and reaches handlers through
    /// `ConnectInfo<Admission>`.)
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        std::future::poll_fn(|cx| self.poll_accept_with_addr(cx)).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Self::local_addr(self)
    }
}

/// Lets handlers extract `ConnectInfo<Admission>`: the key id, the mode and the peer.
impl<L: Listen> Connected<IncomingStream<'_, GatedListener<L>>> for Admission {
    fn connect_info(stream: IncomingStream<'_, GatedListener<L>>) -> Self {
        stream.io().admission().clone()
    }
}
