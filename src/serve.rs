//! Serving connections: one task each, a bound on how many are open, graceful drain.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Limits for [`serve_with_shutdown`].
///
/// ```
/// use std::time::Duration;
/// let options = linkgate::ServeOptions::new()
///     .with_max_connections(500)
///     .with_drain_timeout(Duration::from_secs(10));
/// assert_eq!(options.max_connections(), 500);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    max_connections: usize,
    drain_timeout: Duration,
    /// The connection slots, when serve loops share them (see [`ServeOptions::with_shared_bound`]).
    shared_slots: Option<Arc<Semaphore>>,
    service: Option<Arc<str>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
            shared_slots: None,
            service: None,
        }
    }
}

impl ServeOptions {
    /// Defaults: 10 000 connections at once, 30 s to drain on shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most this many connections are handled at once; at the bound no new connection is
    /// taken until one ends (they wait in the OS's backlog). Clamped to
    /// 1..=[`Semaphore::MAX_PERMITS`].
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.clamp(1, Semaphore::MAX_PERMITS);
        if self.shared_slots.is_some() {
            self = self.with_shared_bound();
        }
        self
    }

    /// One bound for every serve loop given these options or a clone made after this call,
    /// such as loops on several threads that each accept from a socket of their own: at
    /// `max_connections` open over all of them, none accepts. Without it, each loop has a
    /// bound of its own. A loop holds the slot it will accept with while it waits, so within one
    /// slot per loop of the bound, a connection can wait in one loop's backlog while another
    /// loop holds a free slot.
    ///
    /// ```
    /// let options = linkgate::ServeOptions::new().with_max_connections(100).with_shared_bound();
    /// let per_thread = [options.clone(), options.clone()]; // 100 between them, not 100 each
    /// # drop(per_thread);
    /// ```
    pub fn with_shared_bound(mut self) -> Self {
        self.shared_slots = Some(Arc::new(Semaphore::new(self.max_connections)));
        self
    }

    /// The bound on open connections.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// After shutdown is signalled, how long open connections may take to finish.
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// The name as a log field, shown as written.
    fn service_field(&self) -> Option<tracing::field::DisplayValue<&str>> {
        crate::listener::shown(self.service.as_deref())
    }

    /// A name for the serve loop's log lines (a `service` field), for a process that runs
    /// several.
    pub fn with_service_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.service = Some(name.into());
        self
    }
}

/// Says when the connection bound stops accepting: at most one line per [`BoundLog::EVERY`],
/// counting the times in between (at a busy bound every connection that ends lets one in, and
/// the bound is reached again at once).
struct BoundLog {
    last: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl BoundLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn reached(&mut self, options: &ServeOptions) {
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Self::EVERY)
        {
            self.unlogged += 1;
            return;
        }
        self.last = Some(now);
        let before = std::mem::take(&mut self.unlogged);
        tracing::warn!(
            service = options.service_field(),
            bound = options.max_connections,
            reached_since_last_line = before,
            "connection bound reached: no new connection is accepted until one ends (they wait in the listen backlog)"
        );
    }
}

/// How a [`serve_with_shutdown`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drained {
    /// Connections still open when the drain ended; they were cut off.
    pub aborted: usize,
}

/// Serves every connection with `handler`, each in its own task, forever.
///
/// Wrapping an existing tokio server is one call: `connections` is a [`crate::GatedListener`]
/// (a stream of admitted connections), and the handler learns who connected. The handler gets an
/// [`crate::Admitted`] stream: take `impl AsyncRead + AsyncWrite` in your own `handle`, so it
/// works in every mode.
///
/// ```no_run
/// # async fn run(gate: linkgate::Gate) -> std::io::Result<()> {
/// let listener = linkgate::GatedListener::bind("127.0.0.1:7000", gate).await?;
/// linkgate::serve_with(listener, |stream| async move {
///     println!("{} connected", stream.key_id());
///     // ... the server's own handle(stream).await ...
///     drop(stream);
/// })
/// .await;
/// # Ok(())
/// # }
/// ```
pub async fn serve_with<S, H, Fut>(connections: S, handler: H)
where
    S: Stream + Unpin,
    H: Fn(S::Item) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve_with_shutdown(
        connections,
        ServeOptions::default(),
        std::future::pending(),
        handler,
    )
    .await;
}

/// Like [`serve_with`], with a bound on open connections and a graceful shutdown: once
/// `shutdown` completes, stop taking connections (the stream is dropped, closing the listener),
/// let open connections finish for up to the drain timeout, then cut off the rest. If
/// `cut_off` completes during the drain (a second signal, say), the rest are cut off at once.
///
/// `connections` can be any stream, e.g. a [`crate::GatedListener`] or, for a proxy's plain
/// side, `tokio_stream::wrappers::TcpListenerStream`.
pub async fn serve_with_shutdown<S, H, Fut, F>(
    connections: S,
    options: ServeOptions,
    shutdown: F,
    handler: H,
) -> Drained
where
    S: Stream + Unpin,
    H: Fn(S::Item) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    F: Future<Output = ()>,
{
    serve_until(
        connections,
        options,
        shutdown,
        std::future::pending(),
        handler,
    )
    .await
}

/// [`serve_with_shutdown`] with a second future that, if it completes during the drain, cuts off
/// the open connections at once (an operator's second SIGTERM).
pub async fn serve_until<S, H, Fut, F, C>(
    mut connections: S,
    options: ServeOptions,
    shutdown: F,
    cut_off: C,
    handler: H,
) -> Drained
where
    S: Stream + Unpin,
    H: Fn(S::Item) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    F: Future<Output = ()>,
    C: Future<Output = ()>,
{
    let permits = options
        .shared_slots
        .clone()
        .unwrap_or_else(|| Arc::new(Semaphore::new(options.max_connections)));
    let open = Connections::new();
    let mut bound_log = BoundLog {
        last: None,
        unlogged: 0,
    };
    tokio::pin!(shutdown);
    loop {
        // Take a connection slot before accepting, so at the bound nothing new is accepted.
        // `biased`: shutdown is looked at first, so a busy listener still stops (and no random
        // branch order is drawn for every connection).
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                bound_log.reached(&options);
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    permit = Arc::clone(&permits).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break, // never closed; stop rather than spin
                    },
                }
            }
        };
        let next = poll_fn(|cx| Pin::new(&mut connections).poll_next(cx));
        let connection = tokio::select! {
            biased;
            () = &mut shutdown => break,
            connection = next => match connection {
                Some(connection) => connection,
                None => break,
            },
        };
        open.spawn(handler(connection), permit);
    }
    drop(connections);
    open.drain(&options, cut_off).await
}

/// Open connection tasks, tracked so shutdown can wait for them and then cut them off.
struct Connections {
    tracker: TaskTracker,
    cut_off: CancellationToken,
}

impl Connections {
    fn new() -> Self {
        Self {
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
        // Boxed: moved into the task's own future, `connection` would be stored twice over (a
        // captured value and the value being awaited), doubling what every open connection
        // holds. Boxed, the task keeps a pointer.
        let connection = Box::pin(connection);
        self.tracker.spawn(async move {
            // `biased`: the connection ends once, so it cannot starve the cut-off; and no
            // random branch order is drawn each time the task wakes.
            tokio::select! {
                biased;
                () = connection => {}
                () = cut_off.cancelled() => {}
            }
            drop(permit);
        });
    }

    /// Waits up to `timeout` (or until `cut_off` completes) for open connections to finish, then
    /// cuts off the rest.
    async fn drain(self, options: &ServeOptions, cut_off: impl Future<Output = ()>) -> Drained {
        let (timeout, service) = (options.drain_timeout, options.service_field());
        self.tracker.close();
        if !self.tracker.is_empty() {
            tracing::info!(
                service,
                open = self.tracker.len(),
                "shutting down: waiting for open connections"
            );
        }
        let finished = tokio::select! {
            finished = tokio::time::timeout(timeout, self.tracker.wait()) => finished.is_ok(),
            () = cut_off => false,
        };
        if finished {
            return Drained { aborted: 0 };
        }
        let aborted = self.tracker.len();
        if aborted > 0 {
            tracing::warn!(service, aborted, "closing the connections still open");
        }
        self.cut_off.cancel();
        self.tracker.wait().await;
        Drained { aborted }
    }
}
