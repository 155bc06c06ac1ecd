//! The library's integration tests, one binary: real sockets on loopback, in-memory streams
//! for partial reads, the shared protocol vectors.

mod support;

#[cfg(feature = "axum")]
mod axum;
mod handshake;
mod keys;
mod listener;
#[cfg(feature = "mux")]
mod mux;
mod proptest;
mod proxy;
mod sealed;
mod serve;
mod telemetry;
#[cfg(feature = "tonic")]
mod tonic;
mod unix;
