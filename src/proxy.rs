//! The two halves of the `linkgate` proxy, usable in-process too.
//!
//! - [`serve`]: in front of an unmodified server. Admits linkgate clients and, only after
//!   admission, connects to the upstream and forwards bytes both ways.
//! - [`connect`]: beside an unmodified client. Accepts plain local connections, authenticates each
//!   to the gate and forwards.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::client::Credentials;
use crate::forward::{Transfer, forward};
use crate::listener::{Admission, GatedListener};
use crate::serve::{Drained, ServeOptions, run, serve_with_shutdown};

/// Where [`serve`] sends admitted connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A TCP server, as `HOST:PORT`, resolved and connected for each admitted connection.
    Tcp(String),
    /// A built-in echo service: each admitted connection gets its own bytes back.
    Echo,
}

impl Upstream {
    /// Checks that `addr` looks like `HOST:PORT` (a literal `IP:PORT`, `[IPv6]:PORT` or
    /// `name:PORT`), so a typo fails at start-up rather than on the first client.
    pub fn tcp(addr: &str) -> Result<Self, String> {
        if addr.parse::<SocketAddr>().is_ok() {
            return Ok(Upstream::Tcp(addr.to_owned()));
        }
        match addr.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty()
                    && !host.contains([':', '[', ']', ' ', '/'])
                    && port.parse::<u16>().is_ok_and(|p| p != 0) =>
            {
                Ok(Upstream::Tcp(addr.to_owned()))
            }
            _ => Err(format!(
                "upstream address {addr:?} is not HOST:PORT (e.g. 127.0.0.1:6379)"
            )),
        }
    }
}

/// How long [`serve`] waits for the upstream to accept a connection.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the gate side until `shutdown` completes, then drains (see [`serve_with_shutdown`]).
///
/// The upstream is contacted only after a client is admitted, so it never sees a connection
/// from a client without a key. If it cannot be reached, the admitted client is closed, a warning
/// says why, and serving goes on. Logs one line per admission, per close (bytes each way,
/// duration) and, from the listener, per rejection.
pub async fn serve(
    listener: GatedListener,
    upstream: Upstream,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    let upstream = Arc::new(upstream);
    serve_with_shutdown(listener, options, shutdown, move |client, admission| {
        let upstream = Arc::clone(&upstream);
        async move { serve_one(client, admission, &upstream).await }
    })
    .await
}

async fn serve_one(mut client: TcpStream, who: Admission, upstream: &Upstream) {
    let Admission { peer, key_id } = &who;
    tracing::info!(%peer, %key_id, "admitted");
    let _ = client.set_nodelay(true);
    let started = Instant::now();
    let result = match upstream {
        Upstream::Echo => echo(&mut client).await,
        Upstream::Tcp(addr) => match connect_upstream(addr).await {
            Ok(mut server) => forward(&mut client, &mut server).await,
            Err(err) => {
                tracing::warn!(%peer, %key_id, upstream = %addr, error = %err,
                    "upstream unreachable: closing the admitted connection");
                return;
            }
        },
    };
    log_close(&who, started, result);
}

async fn connect_upstream(addr: &str) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The built-in echo service.
async fn echo(client: &mut TcpStream) -> io::Result<Transfer> {
    let (mut reader, mut writer) = client.split();
    let echoed = tokio::io::copy(&mut reader, &mut writer).await?;
    Ok(Transfer {
        a_to_b: echoed,
        b_to_a: echoed,
    })
}

fn log_close(who: &Admission, started: Instant, result: io::Result<Transfer>) {
    let Admission { peer, key_id } = who;
    let duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(transfer) => tracing::info!(%peer, %key_id, bytes_in = transfer.a_to_b,
            bytes_out = transfer.b_to_a, duration_ms, "closed"),
        Err(err) => tracing::info!(%peer, %key_id, duration_ms, error = %err,
            "closed after an error"),
    }
}

/// Runs the client side until `shutdown` completes, then drains: each plain connection to
/// `listener` is authenticated to the gate at `server` with `credentials`, then forwarded.
///
/// A failed authentication (denied, impostor server, timeout, not a linkgate server) closes
/// the local connection and logs one line saying why.
pub async fn connect(
    listener: TcpListener,
    server: String,
    credentials: Credentials,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    let credentials = Arc::new(credentials);
    let server = Arc::new(server);
    run(listener, options, shutdown, move |(local, peer)| {
        connect_one(local, peer, Arc::clone(&server), Arc::clone(&credentials))
    })
    .await
}

async fn connect_one(
    mut local: TcpStream,
    peer: SocketAddr,
    server: Arc<String>,
    credentials: Arc<Credentials>,
) {
    let _ = local.set_nodelay(true);
    let key_id = credentials.key_id();
    let mut remote = match crate::client::connect(server.as_str(), &credentials).await {
        Ok(remote) => remote,
        Err(err) => {
            tracing::warn!(%peer, server = %server, %key_id, "{err}");
            return;
        }
    };
    let who = Admission {
        peer,
        key_id: key_id.clone(),
    };
    tracing::info!(%peer, server = %server, %key_id, "authenticated to the gate");
    let started = Instant::now();
    log_close(&who, started, forward(&mut local, &mut remote).await);
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
                Upstream::tcp(good),
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
            assert!(Upstream::tcp(bad).is_err(), "{bad}");
        }
    }
}
