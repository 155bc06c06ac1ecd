//! Where `serve` sends admitted connections.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

/// The protected server behind the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// A TCP server, as `HOST:PORT`, resolved and connected for each admitted connection.
    Tcp(String),
    /// A Unix domain socket server, as `unix:/path`.
    Unix(PathBuf),
    /// The built-in echo service: each admitted connection gets its own bytes back.
    Echo,
}

/// A connection to the upstream.
pub(crate) enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Upstream {
    /// Checks that `addr` looks like `HOST:PORT` (a literal `IP:PORT`, `[IPv6]:PORT` or
    /// `name:PORT`) or `unix:/path`, so a typo fails at start-up rather than on the first client.
    pub(crate) fn parse(addr: &str) -> Result<Self, String> {
        if let Some(path) = addr.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/redis.sock".into());
            }
            return Ok(Self::Unix(path.into()));
        }
        match crate::addr::check_host_port(addr) {
            Ok(0) => Err(format!(
                "upstream address {addr:?}: port 0 cannot be connected to"
            )),
            Ok(_) => Ok(Self::Tcp(addr.to_owned())),
            Err(err) => Err(err.unwrap_or_else(|| {
                format!(
                    "upstream address {addr:?} is not HOST:PORT or unix:/path (e.g. 127.0.0.1:6379)"
                )
            })),
        }
    }

    /// Connects within `timeout`. `None` for the built-in echo.
    pub(crate) async fn connect(&self, timeout: Duration) -> Option<io::Result<UpstreamStream>> {
        let connecting = async {
            match self {
                Self::Tcp(addr) => {
                    let stream = TcpStream::connect(addr.as_str()).await?;
                    stream.set_nodelay(true)?;
                    Ok(UpstreamStream::Tcp(stream))
                }
                Self::Unix(path) => Ok(UpstreamStream::Unix(UnixStream::connect(path).await?)),
                Self::Echo => Err(io::ErrorKind::Unsupported.into()),
            }
        };
        if matches!(self, Self::Echo) {
            return None;
        }
        // A timeout too long to add to the clock is no timeout.
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        let mut connecting = pin!(connecting);
        // A connect over loopback (or to a Unix socket) is done by the runtime's next look at
        // its sockets. Only one that is not needs the timer: arming one for every connect costs
        // a timer registration and a wake-up of this thread's event loop (a system call).
        if let Some(done) = poll_once(connecting.as_mut()).await {
            return Some(done);
        }
        tokio::task::yield_now().await;
        if let Some(done) = poll_once(connecting.as_mut()).await {
            return Some(done);
        }
        let Some(deadline) = deadline else {
            return Some(connecting.await);
        };
        Some(
            tokio::time::timeout_at(deadline, connecting)
                .await
                .unwrap_or_else(|_| {
                    Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
                }),
        )
    }
}

/// Polls `future` once: its output if it is ready, `None` if not (it stays usable).
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Echo => f.write_str("built-in echo"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Upstream, UpstreamStream};

    #[tokio::test]
    async fn a_connect_timeout_too_long_for_the_clock_is_no_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream::Tcp(listener.local_addr().unwrap().to_string());
        let connected = upstream.connect(Duration::MAX).await;
        assert!(
            matches!(connected, Some(Ok(UpstreamStream::Tcp(_)))),
            "connected: {:?}",
            connected.map(|result| result.map(|_| ()))
        );
    }

    #[test]
    fn upstream_addresses() {
        for good in [
            "127.0.0.1:6379",
            "[::1]:80",
            "redis.internal:6379",
            "localhost:8080",
        ] {
            assert_eq!(
                Upstream::parse(good),
                Ok(Upstream::Tcp(good.into())),
                "{good}"
            );
        }
        assert_eq!(
            Upstream::parse("unix:/run/redis.sock"),
            Ok(Upstream::Unix("/run/redis.sock".into()))
        );
        for bad in [
            "",
            "6379",
            "localhost",
            "localhost:",
            ":80",
            "host:99999",
            "a b:1",
            "host:0",
            "unix:",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
    }
}
