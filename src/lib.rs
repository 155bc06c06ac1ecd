//! # linkgate — an authenticated connection gate and secure pipe
//!
//! A server challenges each new connection with a random nonce and admits only clients that
//! answer with a correct HMAC-SHA-256 under a shared key; the server then proves the key back,
//! so clients cannot be fooled by an impostor. After admission every byte is sealed (AES-256-GCM
//! in TLS 1.3 records, by default with an X25519 exchange for forward secrecy), or, where the
//! path is already trusted and the gate allows it, passes plain. The wire format, `linkgate/1`,
//! is specified in `PROTOCOL.md`.
//!
//! - Server side: [`Gate::admit`] over any `AsyncRead + AsyncWrite + Unpin` stream, or
//!   [`GatedListener`] in front of a TCP or Unix listener. Both give [`Admitted`] streams that
//!   say who connected ([`Admission`]).
//! - Client side: [`authenticate`] a stream you already have, or [`connect`], with
//!   [`Credentials`] (key, mode, timeout).
//! - Keys: [`Key`] and [`Keyring`], loaded from key files (`keys/alice.key` is `alice`).
//! - Wrapping an existing server: [`serve_with`] for a tokio server; [`GatedListener`] is an
//!   `axum::serve::Listener` (feature `axum`) and feeds tonic's `serve_with_incoming` (feature
//!   `tonic`) through [`GatedListener::into_incoming`].
//! - [`protocol`] and [`record`]: the I/O-free handshake and record layer, for tests, fuzzers
//!   and other implementations.
//!
//! ```
//! use linkgate::{Credentials, Gate, Key, KeyId, Keyring, Mode};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), linkgate::Error> {
//! let key = Key::generate(KeyId::new("alice")?)?;
//! let mut keyring = Keyring::new();
//! keyring.insert(key.clone());
//! let gate = Gate::new(keyring)?;
//!
//! // Any byte stream will do; here an in-memory pipe stands in for a TCP connection.
//! let (client_end, server_end) = tokio::io::duplex(64 * 1024);
//!
//! let server = tokio::spawn(async move {
//!     let mut stream = gate.admit(server_end).await?;
//!     let greeting = format!("hello, {} ({})", stream.key_id(), stream.mode());
//!     stream.write_all(greeting.as_bytes()).await?;
//!     stream.shutdown().await?; // close_notify: the client reads a clean end
//!     Ok::<_, linkgate::Error>(())
//! });
//!
//! let mut stream = linkgate::authenticate(client_end, &Credentials::new(key)).await?;
//! let mut greeting = String::new();
//! stream.read_to_string(&mut greeting).await?;
//! assert_eq!(greeting, "hello, alice (sealed-fs)");
//! server.await.expect("server task")?;
//!
//! // A client with another key for the same id is denied, and the server says why.
//! let impostor = Key::generate(KeyId::new("alice")?)?;
//! let mut keyring = Keyring::new();
//! keyring.insert(Key::generate(KeyId::new("alice")?)?);
//! let gate = Gate::new(keyring)?;
//! let (client_end, server_end) = tokio::io::duplex(1024);
//! let server = tokio::spawn(async move { gate.admit(server_end).await.map(|_| ()) });
//! let refused = linkgate::authenticate(client_end, &Credentials::new(impostor)).await;
//! assert!(matches!(refused, Err(linkgate::Error::Rejected(linkgate::Rejection::Denied))));
//! let reason = server.await.expect("server task").unwrap_err();
//! assert_eq!(reason.to_string(), "denied: wrong proof for key id alice");
//! assert_eq!(reason.reason(), "wrong_proof");
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "tonic")]
pub mod tonic;

mod admitted;
mod client;
mod deadline;
mod error;
mod gate;
mod key_file;
mod keys;
mod listener;
mod mode;
#[cfg(feature = "mux")]
pub mod mux;
mod net;
pub mod protocol;
pub mod proxy_protocol;
pub mod record;
mod sealed;
mod serve;
pub mod telemetry;

pub use admitted::{Admission, Admitted, ConnectionId, Peer, SealedParts, UnixPeer};
pub use client::{Credentials, authenticate, connect};
pub use error::{
    Error, KeyError, KeyFileProblem, Malformed, RecordError, Refusal, Rejection, Result, Timeout,
    Waiting,
};
pub use gate::{Gate, GateConfig};
pub use ipnet::IpNet;
pub use key_file::{KeyFileOptions, key_files_in};
pub use keys::{Key, KeyId, Keyring, KeyringDiff, MAX_KEY_ID_LEN, MAX_KEY_LEN, MIN_KEY_LEN};
pub use listener::{GatedListener, Incoming, ListenerConfig, PenaltyConfig, SourcePrefix};
pub use mode::Mode;
pub use net::{Accepted, Listen};
pub use protocol::Protocol;
pub use serve::{Drained, ServeOptions, serve_until, serve_with, serve_with_shutdown};
