//! Serving admitted connections: one task each, a bound on how many are open, graceful drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listener::{Admission, GatedListener};

/// Limits for [`serve_with_shutdown`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    max_connections: usize,
    drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl ServeOptions {
    /// Defaults: 10 000 admitted connections at once, 30 s to drain on shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most this many admitted connections are handled at once; at the bound no new
    /// connection is accepted until one ends (they wait in the OS's backlog). Clamped to
    /// 1..=[`Semaphore::MAX_PERMITS`].
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// After shutdown is signalled, how long open connections may take to finish.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }
}

/// How a [`serve_with_shutdown`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open when the drain timeout ran out; they were closed.
    pub aborted: usize,
}

/// Serves every admitted connection with `handler`, each in its own task, forever.
///
/// Wrapping an existing `async fn handle(stream)` server is one call; the handler also learns
/// who connected:
///
/// ```no_run
/// # async fn run(gate: linkgate::Gate) -> std::io::Result<()> {
/// let listener = linkgate::GatedListener::bind("127.0.0.1:7000", gate).await?;
/// linkgate::serve_with(listener, |stream, who| async move {
///     println!("{} connected from {}", who.key_id, who.peer);
///     // ... the server's own handle(stream).await ...
///     drop(stream);
/// })
/// .await;
/// # Ok(())
/// # }
/// ```
pub async fn serve_with<H, Fut>(listener: GatedListener, handler: H)
where
    H: Fn(TcpStream, Admission) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve_with_shutdown(
        listener,
        ServeOptions::default(),
        std::future::pending(),
        handler,
    )
    .await;
}

/// Like [`serve_with`], with a bound on open connections and a graceful shutdown: once
/// `shutdown` completes, stop accepting (the listener is closed), let open connections finish
/// for up to the drain timeout, then abort the rest.
pub async fn serve_with_shutdown<H, Fut, S>(
    listener: GatedListener,
    options: ServeOptions,
    shutdown: S,
    handler: H,
) -> Drained
where
    H: Fn(TcpStream, Admission) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    S: Future<Output = ()>,
{
    run(listener, options, shutdown, |(stream, admission)| {
        handler(stream, admission)
    })
    .await
}

/// A source of connections for [`run`].
pub(crate) trait Accept {
    type Connection;
    /// The next connection; errors are handled (logged, retried) inside.
    async fn next(&mut self) -> Self::Connection;
}

impl Accept for GatedListener {
    type Connection = (TcpStream, Admission);
    async fn next(&mut self) -> Self::Connection {
        self.accept().await
    }
}

impl Accept for TcpListener {
    type Connection = (TcpStream, SocketAddr);
    async fn next(&mut self) -> Self::Connection {
        loop {
            match self.accept().await {
                Ok(accepted) => return accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// The serving loop shared by [`serve_with_shutdown`] and the proxy's client side: one task per
/// connection, at most `max_connections` at once, and a graceful drain once `shutdown` completes.
pub(crate) async fn run<A, H, Fut, S>(
    mut listener: A,
    options: ServeOptions,
    shutdown: S,
    handler: H,
) -> Drained
where
    A: Accept,
    H: Fn(A::Connection) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    S: Future<Output = ()>,
{
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let connections = Connections::new();
    tokio::pin!(shutdown);
    loop {
        // Take a connection slot before accepting, so at the bound nothing new is accepted.
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed; stop rather than spin
            },
            () = &mut shutdown => break,
        };
        let connection = tokio::select! {
            connection = listener.next() => connection,
            () = &mut shutdown => break,
        };
        connections.spawn(handler(connection), permit);
    }
    drop(listener);
    connections.drain(options.drain_timeout).await
}

/// Open connection tasks, tracked so shutdown can wait for them and then cut them off.
struct Connections {
    tracker: TaskTracker,
    cut_off: CancellationToken,
}

impl Connections {
    fn new() -> Self {
        Connections {
            tracker: TaskTracker::new(),
            cut_off: CancellationToken::new(),
        }
    }

    /// Runs `connection` in its own task, holding `permit` (its connection slot) until it ends.
    fn spawn<F>(&self, connection: F, permit: OwnedSemaphorePermit)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cut_off = self.cut_off.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = connection => {}
                () = cut_off.cancelled() => {}
            }
            drop(permit);
        });
    }

    /// Waits up to `timeout` for open connections to finish, then cuts off the rest.
    async fn drain(self, timeout: Duration) -> Drained {
        self.tracker.close();
        if !self.tracker.is_empty() {
            tracing::info!(
                open = self.tracker.len(),
                "shutting down: waiting for open connections"
            );
        }
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok()
        {
            return Drained { aborted: 0 };
        }
        let aborted = self.tracker.len();
        tracing::warn!(
            aborted,
            ?timeout,
            "drain timeout reached: closing open connections"
        );
        self.cut_off.cancel();
        self.tracker.wait().await;
        Drained { aborted }
    }
}
