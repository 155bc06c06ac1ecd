//! Telemetry: what a [`crate::GatedListener`] reports about its connections, through one place,
//! so an application can count it with any metrics library (the `linkgate` command exports
//! Prometheus metrics this way) without the library depending on one.
//!
//! Events carry no peer input: outcomes are a closed set, and a key id appears only for an
//! admitted connection (a proved id from the keyring, never one a client merely claimed), so
//! they are safe to use as metrics labels.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use linkgate::telemetry::{Event, Outcome, Telemetry};
//!
//! #[derive(Default)]
//! struct Admissions(AtomicU64);
//!
//! impl Telemetry for Admissions {
//!     fn event(&self, event: &Event<'_>) {
//!         if let Event::HandshakeFinished { outcome: Outcome::Admitted, .. } = event {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!     }
//! }
//!
//! let counter = Arc::new(Admissions::default());
//! let config = linkgate::ListenerConfig::new().with_telemetry(counter.clone());
//! # drop(config);
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Refusal};
use crate::keys::KeyId;
use crate::mode::Mode;

/// Receives a listener's events. Called inline from the accept loop and the handshake tasks:
/// keep it quick (increment counters, no I/O).
pub trait Telemetry: Send + Sync + 'static {
    /// One event.
    fn event(&self, event: &Event<'_>);
}

/// Something that happened to a connection on its way in.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The listener accepted a connection (before any bound applied).
    Accepted,
    /// A connection was closed at once, before any byte, because a bound was full.
    Refused(Bound),
    /// A handshake started: it counts as in progress until its `HandshakeFinished`.
    HandshakeStarted,
    /// How many sources are serving a penalty now (reported about once a second).
    Penalized {
        /// Sources refused at accept for now.
        sources: usize,
    },
    /// A handshake ended, one way or another.
    HandshakeFinished {
        /// How.
        outcome: Outcome,
        /// From accept to the outcome.
        duration: Duration,
        /// For admitted connections: the proved key id and the mode.
        admitted: Option<(&'a KeyId, Mode)>,
    },
}

/// Which bound refused a connection at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Bound {
    /// All handshakes in progress.
    Global,
    /// Handshakes in progress from one source.
    PerSource,
    /// The source is serving a penalty for earlier failed handshakes.
    Penalty,
}

impl Bound {
    /// A stable label: `global`, `per_source`, `penalty`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::PerSource => "per_source",
            Self::Penalty => "penalty",
        }
    }
}

/// How a handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Admitted.
    Admitted,
    /// Denied: unknown key id, wrong proof, or (seed) no matching key.
    Denied,
    /// The RESPONSE broke the wire format, or its key exchange failed.
    Malformed,
    /// A mode the gate's policy does not allow.
    RefusedByPolicy,
    /// The handshake timed out.
    Timeout,
    /// The peer closed the connection before the handshake finished.
    ClosedEarly,
    /// A load balancer's PROXY protocol header was missing or invalid (or came from an
    /// untrusted source).
    ProxyHeader,
    /// A PROXY protocol LOCAL header: a balancer's health check, closed quietly.
    HealthCheck,
    /// Evicted to make room for a newer connection when every handshake slot was taken.
    Shed,
    /// An I/O or system error.
    Error,
}

impl Outcome {
    /// A stable label: `admitted`, `denied`, `malformed`, `refused_by_policy`, `timeout`,
    /// `closed_early`, `proxy_header`, `health_check`, `shed`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admitted => "admitted",
            Self::Denied => "denied",
            Self::Malformed => "malformed",
            Self::RefusedByPolicy => "refused_by_policy",
            Self::Timeout => "timeout",
            Self::ClosedEarly => "closed_early",
            Self::ProxyHeader => "proxy_header",
            Self::HealthCheck => "health_check",
            Self::Shed => "shed",
            Self::Error => "error",
        }
    }

    /// The outcome an error stands for.
    pub fn of(error: &Error) -> Self {
        match error {
            Error::Refused(
                Refusal::UnknownKeyId(_) | Refusal::WrongProof(_) | Refusal::SeedMismatch,
            ) => Self::Denied,
            Error::Refused(Refusal::ModeNotAllowed { .. }) => Self::RefusedByPolicy,
            Error::Refused(Refusal::ProxyHeader(_)) => Self::ProxyHeader,
            Error::Refused(_) => Self::Malformed,
            Error::Timeout(_) => Self::Timeout,
            Error::ClosedEarly => Self::ClosedEarly,
            _ => Self::Error,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An optional telemetry sink, as configs hold it.
#[derive(Clone, Default)]
pub(crate) struct Sink(Option<Arc<dyn Telemetry>>);

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

impl Sink {
    pub(crate) fn new(telemetry: Arc<dyn Telemetry>) -> Self {
        Self(Some(telemetry))
    }

    pub(crate) fn event(&self, event: &Event<'_>) {
        if let Some(telemetry) = &self.0 {
            telemetry.event(event);
        }
    }

    /// Starts a handshake; the guard reports its end exactly once, even if the task is aborted.
    pub(crate) fn handshake(&self) -> HandshakeTimer {
        self.event(&Event::HandshakeStarted);
        HandshakeTimer {
            sink: self.clone(),
            started: Instant::now(),
            done: false,
        }
    }
}

/// Reports a handshake's end; dropped unfinished (an aborted task), it reports `Shed`.
pub(crate) struct HandshakeTimer {
    sink: Sink,
    started: Instant,
    done: bool,
}

impl HandshakeTimer {
    pub(crate) fn finish(mut self, outcome: Outcome, admitted: Option<(&KeyId, Mode)>) {
        self.done = true;
        self.sink.event(&Event::HandshakeFinished {
            outcome,
            duration: self.started.elapsed(),
            admitted,
        });
    }
}

impl HandshakeTimer {
    /// Ends the timer without a handshake outcome: the connection was refused by a bound or a
    /// penalty, which is reported as such and must not also count as a shed handshake.
    pub(crate) fn discard(mut self) {
        self.done = true;
    }
}

impl Drop for HandshakeTimer {
    fn drop(&mut self) {
        if !self.done {
            self.sink.event(&Event::HandshakeFinished {
                outcome: Outcome::Shed,
                duration: self.started.elapsed(),
                admitted: None,
            });
        }
    }
}
