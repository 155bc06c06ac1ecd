//! Keepalive PINGs: a tunnel whose peer has vanished without a FIN or a reset (a host that lost
//! power, a NAT or firewall that forgot the flow) is noticed within `interval + timeout`, not
//! only when TCP gives up after many minutes. Until then a pool would keep handing out streams
//! on it, each failing only at its own deadline.
//!
//! HTTP/2 answers every PING on its own, so either side can send them; both do.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

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
}

impl Keepalive {
    pub(crate) fn new(ping_pong: h2::PingPong, times: KeepaliveTimes) -> Self {
        Self {
            ping_pong,
            times,
            deadline: Box::pin(tokio::time::sleep(times.interval)),
            awaiting: false,
        }
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
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the peer did not answer a keepalive ping within {} ms",
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
            self.awaiting = true;
            self.reset(self.times.timeout);
        }
    }

    fn reset(&mut self, after: Duration) {
        self.deadline.as_mut().reset(Instant::now() + after);
    }
}
