//! # linkgate — an authenticated connection gate
//!
//! A server challenges each new connection with a random nonce and admits only clients that
//! answer with a correct HMAC-SHA-256 under a shared key; the server then proves the key back, so
//! clients cannot be fooled by an impostor. After admission the stream carries application bytes
//! unchanged. The wire format, `linkgate/1`, is specified in `PROTOCOL.md`.
//!
//! - Server side: [`Gate::admit`] over any `AsyncRead + AsyncWrite + Unpin` stream, or
//!   [`GatedListener`] in front of a `TcpListener`.
//! - Client side: [`authenticate`] a stream you already have, or [`connect`].
//! - Keys: [`Key`] and [`Keyring`], loaded from hex key files (`keys/alice.key` is `alice`).
//! - Wrapping an existing server: [`serve_with`] for a plain tokio `async fn handle(stream)`
//!   server; with the `axum` feature, `GatedListener` is an `axum::serve::Listener` (see the
//!   `axum` module); [`proxy`] for the two halves of the `linkgate` command.
//!
//! ```
//! use linkgate::{Credentials, Gate, Key, KeyId, Keyring};
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
//! let (client_end, server_end) = tokio::io::duplex(1024);
//!
//! let server = tokio::spawn(async move {
//!     let (mut stream, key_id) = gate.admit(server_end).await?;
//!     stream.write_all(format!("hello, {key_id}").as_bytes()).await?;
//!     Ok::<_, linkgate::Error>(())
//! });
//!
//! let mut stream = linkgate::authenticate(client_end, &Credentials::new(key)).await?;
//! let mut greeting = String::new();
//! stream.read_to_string(&mut greeting).await?;
//! assert_eq!(greeting, "hello, alice");
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
//! assert!(matches!(refused, Err(linkgate::Error::Denied)));
//! assert!(matches!(server.await.expect("server task"), Err(linkgate::Error::WrongProof(_))));
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "axum")]
pub mod axum;
mod client;
mod error;
mod forward;
mod keys;
mod listener;
pub mod protocol;
pub mod proxy;
mod serve;
mod server;

#[cfg(feature = "axum")]
pub use crate::axum::AdmittedStream;
pub use client::{Credentials, authenticate, connect};
pub use error::{Error, KeyFileProblem, Malformed, Result};
pub use forward::{Transfer, forward};
pub use keys::{Key, KeyFileOptions, KeyId, Keyring, MAX_KEY_LEN, MIN_KEY_LEN, key_files_in};
pub use listener::{Admission, GatedListener};
pub use protocol::Protocol;
pub use serve::{Drained, ServeOptions, serve_with, serve_with_shutdown};
pub use server::{Config, Gate};
