//! Keepalive PINGs: a tunnel whose peer has vanished without a FIN or a reset (a host that lost
//! power, a NAT or firewall that forgot the flow) is noticed within `interval + timeout`, not
//! only when TCP gives up after many minutes. Until then a pool would keep handing out streams
//! on it, each failing only at its own deadline.
//!
//! HTTP/2 answers every PING on its own, so either side can send them; both do. An answer can
//! queue behind megabytes of data on a slow link, so bytes arriving from the peer while a PING
//! is out also prove it alive: only a peer that sends nothing at all for `timeout` is given up.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

/// When to ping and how long to wait for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeepaliveTimes {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

/// One side's keepalive: sends a PING every `interval`, and fails if its PONG has not come
/// back within `timeout`. Driven by polling it beside the connection.
pub(crate) struct Keepalive {
    ping_pong: h2::PingPong,
    times: KeepaliveTimes,
    /// The next ping (idle) or the deadline of the one in flight (awaiting).
    deadline: Pin<Box<Sleep>>,
    awaiting: bool,
    /// Bytes read from the peer so far (counted by the transport), and at the last check.
    received: Arc<AtomicU64>,
    received_at_check: u64,
}

impl Keepalive {
    pub(crate) fn new(
        ping_pong: h2::PingPong,
        times: KeepaliveTimes,
        received: Arc<AtomicU64>,
    ) -> Self {
        Self {
            ping_pong,
            times,
            deadline: Box::pin(tokio::time::sleep(times.interval)),
            awaiting: false,
            received,
            received_at_check: 0,
        }
    }

    /// Whether the peer sent anything since the last check.
    fn heard_from_peer(&mut self) -> bool {
        let received = self.received.load(Ordering::Relaxed);
        let heard = received != self.received_at_check;
        self.received_at_check = received;
        heard
    }

    /// `Ready` only with the error that ends the tunnel: no answer in time, or the connection
    /// already failed.
    pub(crate) fn poll_failed(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.awaiting {
                match self.ping_pong.poll_pong(cx) {
                    Poll::Ready(Ok(_pong)) => {
                        self.awaiting = false;
                        self.reset(self.times.interval);
                        continue;
                    }
                    Poll::Ready(Err(err)) => return Poll::Ready(super::stream::stream_error(err)),
                    Poll::Pending => {}
                }
                if self.deadline.as_mut().poll(cx).is_ready() {
                    if self.heard_from_peer() {
                        // Alive, its answer queued behind data: give it another timeout.
                        self.reset(self.times.timeout);
                        continue;
                    }
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the peer sent nothing, not even the answer to a keepalive ping, within {} ms",
                            self.times.timeout.as_millis()
                        ),
                    ));
                }
                return Poll::Pending;
            }
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if let Err(err) = self.ping_pong.send_ping(h2::Ping::opaque()) {
                return Poll::Ready(super::stream::stream_error(err));
            }
            self.heard_from_peer();
            self.awaiting = true;
            self.reset(self.times.timeout);
        }
    }

    fn reset(&mut self, after: Duration) {
        self.deadline
            .as_mut()
            .reset(crate::deadline::deadline_after(after));
    }
}
