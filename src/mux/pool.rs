//! A few tunnels to one gate, kept open and re-established with backoff when they drop.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::pacing::{Pacing, REFUSED_PAUSE};
use super::{MuxConfig, MuxStream, Tunnel};
use crate::client::Credentials;
use crate::error::{Error, Rejection};

/// Settings of a [`Pool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    tunnels: usize,
    mux: MuxConfig,
    min_backoff: Duration,
    max_backoff: Duration,
    first_slot: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            first_slot: 0,
            tunnels: 2,
            mux: MuxConfig::default(),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl PoolConfig {
    /// Tunnels kept open (default 2, at least 1): streams are spread over them, and one
    /// dropping leaves the others to carry new connections while it is re-established.
    pub fn with_tunnels(mut self, tunnels: usize) -> Self {
        self.tunnels = tunnels.max(1);
        self
    }

    /// Tunnels kept open.
    pub fn tunnels(&self) -> usize {
        self.tunnels
    }

    /// Numbers this pool's tunnels (the `slot` of its log lines) from `first` rather than 0:
    /// for several pools in one process, such as one per thread, whose lines should not
    /// collide.
    pub fn with_first_slot(mut self, first: usize) -> Self {
        self.first_slot = first;
        self
    }

    /// The tunnels' windows.
    pub fn with_mux(mut self, mux: MuxConfig) -> Self {
        self.mux = mux;
        self
    }

    /// The tunnels' windows.
    pub fn mux(&self) -> &MuxConfig {
        &self.mux
    }

    /// The first and the longest wait before a failed tunnel is tried again (default 100 ms
    /// and 10 s); the wait doubles after each failure, with jitter.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }
}

/// A small set of multiplexed tunnels to one gate: [`Pool::open`] carries a new connection
/// over whichever is up, and each tunnel that drops is re-established in the background, with
/// exponential backoff while the gate cannot be reached. When the gate *refuses* a tunnel (a
/// wrong key, a mode it does not allow), the error says so and no tunnel is tried again for a
/// minute: retrying sooner would add to the gate's penalty for this host until it refused every
/// client here at accept (see [`Pacing`]). Dropping the pool closes the tunnels once their
/// streams are done.
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    server: String,
    credentials: ArcSwap<Credentials>,
    slots: Vec<ArcSwapOption<Tunnel>>,
    /// Woken when a tunnel comes up.
    up: Notify,
    last_error: ArcSwapOption<String>,
    /// Shared with other pools to the same gate, if any.
    pacing: Pacing,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("server", &self.inner.server)
            .field("tunnels_up", &self.tunnels_up())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Starts keeping `config.tunnels()` tunnels to `server` (host:port), in the multiplexed
    /// form of the credentials' mode. Needs a tokio runtime; fails only if the mode cannot be
    /// multiplexed (plain).
    pub fn new(
        server: impl Into<String>,
        credentials: Credentials,
        config: PoolConfig,
    ) -> io::Result<Self> {
        Self::with_pacing(server, credentials, config, &Pacing::new())
    }

    /// [`Pool::new`], with attempts paced together with every other pool given the same
    /// `pacing`: several pools to one gate (one per thread, say) then make one attempt at a
    /// time while the gate is not known to admit them, and all wait after a refusal.
    pub fn with_pacing(
        server: impl Into<String>,
        credentials: Credentials,
        config: PoolConfig,
        pacing: &Pacing,
    ) -> io::Result<Self> {
        let credentials = multiplexed(credentials)?;
        let inner = Arc::new(Inner {
            server: server.into(),
            credentials: ArcSwap::from_pointee(credentials),
            slots: (0..config.tunnels)
                .map(|_| ArcSwapOption::empty())
                .collect(),
            up: Notify::new(),
            last_error: ArcSwapOption::empty(),
            pacing: pacing.clone(),
            next: AtomicUsize::new(0),
            stop: CancellationToken::new(),
        });
        for slot in 0..config.tunnels {
            tokio::spawn(keep_up(Arc::clone(&inner), slot, config));
        }
        Ok(Self { inner })
    }

    /// Uses `credentials` for tunnels established from now on (a key reload); tunnels already
    /// up stay as they are.
    pub fn set_credentials(&self, credentials: Credentials) -> io::Result<()> {
        self.inner
            .credentials
            .store(Arc::new(multiplexed(credentials)?));
        Ok(())
    }

    /// How many tunnels are up now.
    pub fn tunnels_up(&self) -> usize {
        self.inner
            .slots
            .iter()
            .filter(|slot| slot.load().as_ref().is_some_and(|t| !t.is_going_away()))
            .count()
    }

    /// Opens a stream over a tunnel that is up, waiting up to `wait` for one to come up, or for
    /// a place on one that has as many streams open as the gate allows.
    pub async fn open(&self, wait: Duration) -> io::Result<MuxStream> {
        let deadline = crate::deadline::deadline_after(wait);
        loop {
            // Tried before registering for news of a tunnel: registering costs a lock and a
            // list insertion each way, and nearly every open finds a tunnel up.
            let full = match self.open_on_a_tunnel_up().await {
                Ok(stream) => return Ok(stream),
                Err(full) => full,
            };
            if full {
                // Streams end without news: looked at again shortly, until the deadline.
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no tunnel to {} took a new stream within {wait:?}: each has as \
                             many open as the gate allows",
                            self.inner.server
                        ),
                    ));
                }
                tokio::time::sleep_until(deadline.min(now + FULL_RETRY)).await;
                continue;
            }
            let came_up = self.inner.up.notified();
            tokio::pin!(came_up);
            came_up.as_mut().enable();
            // Looked at again once registered, so a tunnel that came up in between is not
            // missed.
            if let Ok(stream) = self.open_on_a_tunnel_up().await {
                return Ok(stream);
            }
            if tokio::time::timeout_at(deadline, came_up).await.is_err() {
                // The gate's refusal, until an attempt is admitted or fails otherwise, is why
                // nothing is tried now: it comes before an older failure of this pool's own (a
                // gate that was not up yet), and a pool waiting out another's refusal has the
                // other's.
                let why = self
                    .inner
                    .pacing
                    .refusal()
                    .or_else(|| self.inner.last_error.load_full())
                    .map_or_else(|| "still connecting".to_owned(), |why| why.to_string());
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no tunnel to {} came up within {wait:?}: {why}",
                        self.inner.server
                    ),
                ));
            }
        }
    }

    /// Opens a stream on the first tunnel up that takes it, trying each once: one that is
    /// closing (the gate is draining, or it just dropped) refuses new streams while its slot
    /// is re-established. Otherwise an error that says whether a tunnel up was full; the last
    /// other refusal is kept for the error.
    async fn open_on_a_tunnel_up(&self) -> Result<MuxStream, bool> {
        let mut full = false;
        for _ in 0..self.inner.slots.len() {
            let Some(tunnel) = self.pick() else {
                break;
            };
            match tunnel.open().await {
                Ok(stream) => return Ok(stream),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => full = true,
                Err(err) => {
                    self.inner.last_error.store(Some(Arc::new(err.to_string())));
                }
            }
        }
        Err(full)
    }

    /// The next tunnel that is up, round robin.
    fn pick(&self) -> Option<Tunnel> {
        let slots = &self.inner.slots;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        (0..slots.len()).find_map(|i| {
            let tunnel = slots[(start + i) % slots.len()].load_full()?;
            (!tunnel.is_going_away()).then(|| Tunnel::clone(&tunnel))
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

fn multiplexed(credentials: Credentials) -> io::Result<Credentials> {
    let mode = credentials.mode();
    let mux = mode.multiplexed().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("mode {mode} cannot be multiplexed: tunnels are sealed"),
        )
    })?;
    Ok(credentials.with_mode(mux))
}

/// How long a tunnel must have been up for its loss to be replaced at once (and the backoff
/// reset): a shorter one is treated as a failed attempt.
const STEADY: Duration = Duration::from_secs(2);

/// How often an open waiting for a place on a full tunnel looks again.
const FULL_RETRY: Duration = Duration::from_millis(10);

/// Keeps one slot's tunnel up until the pool is dropped.
async fn keep_up(inner: Arc<Inner>, index: usize, config: PoolConfig) {
    let pacing = &inner.pacing;
    // In log lines.
    let slot = config.first_slot.saturating_add(index);
    let mut backoff = config.min_backoff;
    loop {
        let turn = tokio::select! {
            () = inner.stop.cancelled() => return,
            turn = pacing.turn() => turn,
        };
        let credentials = inner.credentials.load_full();
        let attempt = async {
            let admitted = crate::connect(inner.server.as_str(), &credentials)
                .await
                .map_err(|err| {
                    // The gate answered, and said no: trying again soon would not change that.
                    let refused = matches!(err, Error::Rejected(_));
                    (explain(err), refused)
                })?;
            let reset = super::ResetHandle::new(admitted.get_ref());
            Tunnel::with_reset(admitted, &config.mux, reset)
                .await
                .map_err(|err| (err, false))
        };
        let tunnel = tokio::select! {
            () = inner.stop.cancelled() => return,
            tunnel = attempt => tunnel,
        };
        match tunnel {
            Ok(tunnel) => {
                turn.admitted();
                let up_at = tokio::time::Instant::now();
                let conn = tunnel.admission().connection_id();
                tracing::info!(server = %inner.server, %conn, key_id = %credentials.key_id(),
                    mode = %credentials.mode(), slot, "tunnel up");
                inner.slots[index].store(Some(Arc::new(tunnel.clone())));
                inner.up.notify_waiters();
                tokio::select! {
                    () = inner.stop.cancelled() => return,
                    () = tunnel.going_away() => {}
                }
                inner.slots[index].store(None);
                pacing.lost();
                // A tunnel that lasted is replaced at once; one lost right after admission (a
                // gate that admits and then drops it, or resets it at a per-key bound) is
                // replaced on the backoff, as a failure would be, not in a tight loop.
                let pause = if up_at.elapsed() >= STEADY {
                    backoff = config.min_backoff;
                    Duration::ZERO
                } else {
                    let pause = jittered(backoff);
                    backoff = backoff.saturating_mul(2).min(config.max_backoff);
                    pause
                };
                let retry_in_ms = pause.as_millis() as u64;
                if tunnel.is_closed() {
                    tracing::warn!(server = %inner.server, %conn, slot, retry_in_ms,
                        "tunnel closed: its open streams are reset; establishing a new one");
                } else {
                    // Its streams finish on the old tunnel; new ones need a new tunnel now, not
                    // when the last of those ends (the drain of a restarting gate may be long).
                    tracing::info!(server = %inner.server, %conn, slot, retry_in_ms,
                        "tunnel going away (the gate is draining, or revoked its key): its open \
                         streams go on; establishing a new one");
                }
                if !pause.is_zero() {
                    tokio::select! {
                        () = inner.stop.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
            Err((err, true)) => {
                tracing::warn!(server = %inner.server, slot, error = %err,
                    retry_in_ms = REFUSED_PAUSE.as_millis() as u64,
                    "tunnel refused by the gate: no tunnel is tried again before the pause is over");
                inner.last_error.store(Some(Arc::new(err.to_string())));
                turn.refused(REFUSED_PAUSE, err.to_string());
                // The pause itself is kept by the pacing: every slot waits in `turn`.
                backoff = config.max_backoff;
            }
            Err((err, false)) => {
                turn.failed();
                tracing::warn!(server = %inner.server, slot, error = %err,
                    retry_in_ms = backoff.as_millis() as u64, "tunnel could not be established");
                inner.last_error.store(Some(Arc::new(err.to_string())));
                let pause = jittered(backoff);
                tokio::select! {
                    () = inner.stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                backoff = backoff.saturating_mul(2).min(config.max_backoff);
            }
        }
    }
}

/// A failed attempt as the pool reports it; a refused mode most likely means the gate does not
/// allow tunnels.
fn explain(err: Error) -> io::Error {
    match err {
        Error::Rejected(Rejection::RefusedAsMalformed(mode)) => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the gate refused mode {mode}: it does not allow multiplexed tunnels (or not over {})",
                mode.records()
            ),
        ),
        other => other.into(),
    }
}

/// Between half and all of `backoff`, so tunnels that failed together do not retry together.
fn jittered(backoff: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = backoff / 2;
    let spread = half.as_micros().max(1) as u64;
    half + Duration::from_micros(random % spread)
}
