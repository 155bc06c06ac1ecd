//! [`GatedListener`]: a TCP listener that yields only admitted connections.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::task::JoinSet;

use crate::keys::KeyId;
use crate::server::Gate;

/// Who was admitted: the peer's address and the key id it proved.
///
/// Handed out with every connection by [`GatedListener::accept`] and [`crate::serve_with`]; with
/// the `axum` feature, handlers extract it as `ConnectInfo<Admission>`.
///
/// ```no_run
/// # async fn run(mut listener: linkgate::GatedListener) {
/// let (stream, who) = listener.accept().await;
/// if who.key_id.as_str() != "admin" {
///     println!("{} from {} may only read", who.key_id, who.peer);
/// }
/// # drop(stream);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The client's address.
    pub peer: SocketAddr,
    /// The key id the client proved.
    pub key_id: KeyId,
}

/// Wraps a [`TcpListener`]: [`accept`](Self::accept) yields only connections that completed the
/// linkgate/1 handshake.
///
/// Each handshake runs in its own task, so a client that connects and says nothing delays no one
/// else; it is closed after the gate's handshake timeout. At most `max_handshakes` run at once,
/// and at most `max_handshakes_per_ip` from one source IP: past either bound a new connection is
/// closed at once. Every refusal is logged through `tracing` with the peer and the reason.
///
/// Handshakes progress in the background whether or not `accept` is being awaited, and
/// dropping the listener aborts those still in progress.
///
/// ```no_run
/// use linkgate::{Config, Gate, GatedListener, Keyring};
/// use std::time::Duration;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::new()
///     .handshake_timeout(Duration::from_secs(3))
///     .max_handshakes_per_ip(16);
/// let gate = Gate::with_config(Keyring::load("keys/")?, config)?;
/// let mut listener = GatedListener::bind("0.0.0.0:7000", gate).await?;
/// loop {
///     let (stream, who) = listener.accept().await; // only admitted connections
///     tokio::spawn(async move {
///         println!("{} connected from {}", who.key_id, who.peer);
///         drop(stream); // serve it here
///     });
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct GatedListener {
    listener: TcpListener,
    gate: Gate,
    handshakes: JoinSet<Option<(TcpStream, Admission)>>,
    bounds: Arc<Bounds>,
}

impl GatedListener {
    /// Puts `gate` in front of an existing listener.
    pub fn new(listener: TcpListener, gate: Gate) -> Self {
        let config = gate.config();
        let bounds = Arc::new(Bounds {
            max_total: config.max_handshakes,
            max_per_ip: config.max_handshakes_per_ip,
            in_progress: Mutex::new(InProgress::default()),
        });
        GatedListener {
            listener,
            gate,
            handshakes: JoinSet::new(),
            bounds,
        }
    }

    /// Binds a TCP listener and puts `gate` in front of it.
    pub async fn bind(addr: impl ToSocketAddrs, gate: Gate) -> io::Result<Self> {
        Ok(Self::new(TcpListener::bind(addr).await?, gate))
    }

    /// The local address (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Handshakes in progress right now.
    pub fn handshakes_in_progress(&self) -> usize {
        self.bounds.lock().total
    }

    /// The next admitted connection and who it is.
    ///
    /// Cancel-safe: a connection admitted while a cancelled `accept` was pending is kept for the
    /// next call. Errors from the OS's `accept` (e.g. out of file descriptors) are logged and
    /// retried after a short pause, as axum and hyper do, so this never fails.
    pub async fn accept(&mut self) -> (TcpStream, Admission) {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => self.start_handshake(stream, peer),
                    Err(err) => {
                        tracing::warn!(error = %err, "accept failed; retrying");
                        if !is_connection_error(&err) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                },
                Some(joined) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(admitted)) = joined {
                        return admitted;
                    }
                }
            }
        }
    }

    fn start_handshake(&mut self, stream: TcpStream, peer: SocketAddr) {
        let Some(slot) = HandshakeSlot::take(&self.bounds, peer.ip()) else {
            tracing::warn!(%peer, "connection refused: too many handshakes in progress");
            // Dropping the stream closes it at once.
            return;
        };
        let gate = self.gate.clone();
        self.handshakes.spawn(async move {
            let _slot = slot;
            match gate.admit(stream).await {
                Ok((stream, key_id)) => {
                    tracing::debug!(%peer, %key_id, "handshake admitted");
                    Some((stream, Admission { peer, key_id }))
                }
                Err(reason) => {
                    tracing::info!(%peer, %reason, "connection rejected");
                    None
                }
            }
        });
    }
}

/// Errors that concern one incoming connection, not the listener: retry at once.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[derive(Debug)]
struct Bounds {
    max_total: usize,
    max_per_ip: usize,
    in_progress: Mutex<InProgress>,
}

#[derive(Debug, Default)]
struct InProgress {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Bounds {
    fn lock(&self) -> std::sync::MutexGuard<'_, InProgress> {
        // The counters stay consistent even if a holder panicked: each update is one step.
        self.in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One handshake's place within the bounds; released when dropped, however the task ends.
struct HandshakeSlot {
    bounds: Arc<Bounds>,
    ip: IpAddr,
}

impl HandshakeSlot {
    fn take(bounds: &Arc<Bounds>, ip: IpAddr) -> Option<Self> {
        let ip = ip.to_canonical();
        let mut counts = bounds.lock();
        let from_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if counts.total >= bounds.max_total || from_ip >= bounds.max_per_ip {
            return None;
        }
        counts.total += 1;
        counts.per_ip.insert(ip, from_ip + 1);
        Some(HandshakeSlot {
            bounds: Arc::clone(bounds),
            ip,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut counts = self.bounds.lock();
        counts.total -= 1;
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}
