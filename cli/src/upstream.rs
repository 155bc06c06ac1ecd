//! Where `serve` sends admitted connections.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// The protected server behind the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// A TCP server, as `HOST:PORT`, resolved and connected for each admitted connection.
    Tcp(String),
    /// The built-in echo service: each admitted connection gets its own bytes back.
    Echo,
}

impl Upstream {
    /// Checks that `addr` looks like `HOST:PORT` (a literal `IP:PORT`, `[IPv6]:PORT` or
    /// `name:PORT`), so a typo fails at start-up rather than on the first client.
    pub(crate) fn parse(addr: &str) -> Result<Self, String> {
        if addr.parse::<SocketAddr>().is_ok() {
            return Ok(Self::Tcp(addr.to_owned()));
        }
        match addr.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty()
                    && !host.contains([':', '[', ']', ' ', '/'])
                    && port.parse::<u16>().is_ok_and(|p| p != 0) =>
            {
                Ok(Self::Tcp(addr.to_owned()))
            }
            _ => Err(format!(
                "upstream address {addr:?} is not HOST:PORT (e.g. 127.0.0.1:6379)"
            )),
        }
    }

    /// Connects to a TCP upstream within `timeout`.
    pub(crate) async fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::Echo => f.write_str("built-in echo"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Upstream;

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
        for bad in [
            "",
            "6379",
            "localhost",
            "localhost:",
            ":80",
            "host:99999",
            "a b:1",
            "host:0",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
    }
}
