//! [`GatedListener`]: a listener that yields only admitted connections.

mod bounds;
mod log_limit;
mod penalty;

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use ipnet::IpNet;
use tokio::net::{TcpListener, ToSocketAddrs, UnixListener};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, Sleep};

use crate::admitted::{Admitted, ConnectionId, Peer};
use crate::error::{Error, Refusal, Timeout, Waiting};
use crate::gate::Gate;
use crate::net::Listen;
use crate::proxy_protocol::{self, Received};
use crate::telemetry::{Bound, Event, HandshakeTimer, Outcome, Sink, Telemetry};

pub use bounds::SourcePrefix;
use bounds::{Bounds, HandshakeSlot, SlotHandle, Source};
use log_limit::LogLimit;
pub use penalty::PenaltyConfig;
use penalty::{Charged, Penalties};

/// An admitted connection and its address as the listener reported it.
type AdmittedWithAddr<L> = (Admitted<<L as Listen>::Io>, <L as Listen>::Addr);

/// Settings of a [`GatedListener`]: how many handshakes may run at once.
///
/// ```
/// let config = linkgate::ListenerConfig::new()
///     .with_max_handshakes(4096)
///     .with_max_handshakes_per_source(16);
/// assert_eq!(config.max_handshakes_per_source(), 16);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ListenerConfig {
    max_handshakes: usize,
    max_handshakes_per_source: usize,
    source_prefix: SourcePrefix,
    proxy_protocol_from: Vec<IpNet>,
    penalties: PenaltyConfig,
    shed_after: Duration,
    telemetry: Sink,
    service: Option<Arc<str>>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            max_handshakes: 1024,
            max_handshakes_per_source: 64,
            source_prefix: SourcePrefix::default(),
            proxy_protocol_from: Vec::new(),
            penalties: PenaltyConfig::default(),
            shed_after: Duration::from_millis(100),
            telemetry: Sink::default(),
            service: None,
        }
    }
}

impl ListenerConfig {
    /// The defaults: 1024 handshakes in progress, 64 per source; sources are IPv4 addresses and
    /// IPv6 /64 prefixes (and users, on Unix sockets).
    pub fn new() -> Self {
        Self::default()
    }

    /// At most this many handshakes in progress at once (at least 1); past it, new connections
    /// are closed at once.
    pub fn with_max_handshakes(mut self, max: usize) -> Self {
        self.max_handshakes = max.max(1);
        self
    }

    /// The bound on handshakes in progress.
    pub fn max_handshakes(&self) -> usize {
        self.max_handshakes
    }

    /// At most this many handshakes in progress from one source (at least 1). The default, 64,
    /// leaves room for a client-side forwarder that puts many honest clients behind one address.
    pub fn with_max_handshakes_per_source(mut self, max: usize) -> Self {
        self.max_handshakes_per_source = max.max(1);
        self
    }

    /// The bound per source.
    pub fn max_handshakes_per_source(&self) -> usize {
        self.max_handshakes_per_source
    }

    /// How addresses are grouped into sources for the per-source bound (default: IPv4 /32,
    /// IPv6 /64, since one host usually holds a whole IPv6 /64).
    pub fn with_source_prefix(mut self, prefix: SourcePrefix) -> Self {
        self.source_prefix = prefix;
        self
    }

    /// How addresses are grouped into sources.
    pub fn source_prefix(&self) -> SourcePrefix {
        self.source_prefix
    }

    /// Load balancers that put a PROXY protocol header (v1 or v2) in front of each connection.
    /// Connections from these networks must send one, and are then known by the client it
    /// names (in logs, per-source bounds, [`crate::Admission::peer`], with the balancer as
    /// [`crate::Admission::via`]); connections from anywhere else must not (a header from them
    /// is refused: no one can claim another's address). A v2 LOCAL header (a health check) is
    /// closed quietly. Never guessed: by default no source is trusted.
    ///
    /// ```
    /// let config = linkgate::ListenerConfig::new()
    ///     .with_proxy_protocol_from(["10.0.0.0/8".parse().unwrap()]);
    /// assert_eq!(config.proxy_protocol_from().len(), 1);
    /// ```
    pub fn with_proxy_protocol_from(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.proxy_protocol_from = networks.into_iter().collect();
        self
    }

    /// The networks trusted to send PROXY protocol headers.
    pub fn proxy_protocol_from(&self) -> &[IpNet] {
        &self.proxy_protocol_from
    }

    /// A name for this listener's log lines (a `service` field), for a process that runs several
    /// gates: its refusals and penalties then say which gate they are about.
    pub fn with_service_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.service = Some(name.into());
        self
    }

    /// The name in this listener's log lines, if one was given.
    pub fn service_name(&self) -> Option<&str> {
        self.service.as_deref()
    }

    /// Per-source penalties for failed handshakes (on by default; see [`PenaltyConfig`]).
    pub fn with_penalties(mut self, penalties: PenaltyConfig) -> Self {
        self.penalties = penalties;
        self
    }

    /// The penalties in force.
    pub fn penalties(&self) -> &PenaltyConfig {
        &self.penalties
    }

    /// When every handshake slot is taken, a new connection ends a handshake in progress
    /// rather than being refused: the oldest from the source holding the most slots, at once if
    /// that source holds at least two more than the newcomer's, otherwise only if it has run at
    /// least this long (default 100 ms: an honest handshake takes one round trip) and its source
    /// holds no fewer slots than the newcomer's. Otherwise the new connection is refused.
    pub fn with_shed_after(mut self, age: Duration) -> Self {
        self.shed_after = age;
        self
    }

    /// The age past which a handshake may be shed.
    pub fn shed_after(&self) -> Duration {
        self.shed_after
    }

    /// Reports every connection's way in (accepted, refused by a bound, each handshake's
    /// outcome and duration) to `telemetry`; see [`crate::telemetry`].
    pub fn with_telemetry(mut self, telemetry: Arc<dyn Telemetry>) -> Self {
        self.telemetry = Sink::new(telemetry);
        self
    }

    fn trusts_proxy_header_from(&self, peer: &Peer) -> bool {
        let Some(addr) = peer.ip_addr() else {
            return false;
        };
        let ip = addr.ip().to_canonical();
        self.proxy_protocol_from.iter().any(|net| net.contains(&ip))
    }
}

/// Wraps a listener: [`accept`](Self::accept) yields only connections that completed the
/// handshake, as [`Admitted`] streams that say who connected.
///
/// Each handshake runs in its own task, so a client that connects and says nothing delays no one
/// else; it is closed after the gate's handshake timeout. At most `max_handshakes` run at once,
/// and at most `max_handshakes_per_source` from one source: past either bound a new connection
/// is closed at once. Every refusal is logged through `tracing` with the peer and the reason.
///
/// Handshakes progress in the background whether or not `accept` is being awaited, and dropping
/// the listener aborts those still in progress. It is also a [`Stream`] of admitted
/// connections; [`GatedListener::into_incoming`] gives the `Result` items tonic and hyper-util
/// expect.
///
/// ```no_run
/// use linkgate::{Gate, GatedListener, Keyring};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let gate = Gate::new(Keyring::load("keys/")?)?;
/// let mut listener = GatedListener::bind("0.0.0.0:7000", gate).await?;
/// loop {
///     let stream = listener.accept().await; // only admitted connections
///     tokio::spawn(async move {
///         println!("{} connected from {:?}", stream.key_id(), stream.peer());
///         drop(stream); // serve it here
///     });
/// }
/// # }
/// ```
pub struct GatedListener<L: Listen = TcpListener> {
    listener: L,
    gate: Gate,
    config: ListenerConfig,
    handshakes: JoinSet<Option<AdmittedWithAddr<L>>>,
    bounds: Bounds,
    penalties: Arc<Penalties>,
    log_limit: Arc<LogLimit>,
    /// Handshakes in progress, oldest first (finished ones are dropped lazily), for shedding.
    in_flight: VecDeque<InFlight>,
    /// When refusal summaries are next written and the penalized count reported (once a
    /// second, whether or not connections arrive, so neither goes stale while all is quiet).
    next_flush: Pin<Box<Sleep>>,
    /// After an accept error that is not about one connection (e.g. out of descriptors), wait a
    /// little before accepting again, as axum and hyper do.
    backoff: Option<Pin<Box<Sleep>>>,
}

/// A handshake in progress, as the listener tracks it for shedding.
struct InFlight {
    started: Instant,
    slot: SlotHandle,
    task: AbortHandle,
    peer: Peer,
}

impl<L: Listen> std::fmt::Debug for GatedListener<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedListener")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("gate", &self.gate)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GatedListener<TcpListener> {
    /// Binds a TCP listener and puts `gate` in front of it.
    pub async fn bind(addr: impl ToSocketAddrs, gate: Gate) -> io::Result<Self> {
        Ok(Self::new(TcpListener::bind(addr).await?, gate))
    }

    /// Takes a TCP listener that is already bound, such as one passed by systemd.
    pub fn from_std(listener: std::net::TcpListener, gate: Gate) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self::new(TcpListener::from_std(listener)?, gate))
    }
}

impl GatedListener<UnixListener> {
    /// Binds a Unix domain socket at `path` and puts `gate` in front of it. Per-source bounds
    /// count the peer's user id. The socket file is left behind when the listener is dropped.
    pub fn bind_unix(path: impl AsRef<Path>, gate: Gate) -> io::Result<Self> {
        Ok(Self::new(UnixListener::bind(path)?, gate))
    }

    /// Takes a Unix domain socket listener that is already bound, such as one passed by systemd.
    pub fn from_std_unix(
        listener: std::os::unix::net::UnixListener,
        gate: Gate,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self::new(UnixListener::from_std(listener)?, gate))
    }
}

impl<L: Listen> GatedListener<L> {
    /// Puts `gate` in front of an existing listener, with the default [`ListenerConfig`].
    pub fn new(listener: L, gate: Gate) -> Self {
        Self::with_config(listener, gate, ListenerConfig::default())
    }

    /// Puts `gate` in front of an existing listener.
    pub fn with_config(listener: L, gate: Gate, config: ListenerConfig) -> Self {
        let bounds = Bounds::new(&config);
        let penalties = Arc::new(Penalties::new(config.penalties.clone()));
        let log_limit = Arc::new(LogLimit::new(config.service.clone()));
        Self {
            listener,
            gate,
            config,
            handshakes: JoinSet::new(),
            bounds,
            penalties,
            log_limit,
            in_flight: VecDeque::new(),
            next_flush: Box::pin(tokio::time::sleep(FLUSH_EVERY)),
            backoff: None,
        }
    }

    /// The gate (clone it to replace its keyring while this listener serves).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The settings in force.
    pub fn config(&self) -> &ListenerConfig {
        &self.config
    }

    /// The local address (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<L::Addr> {
        self.listener.local_addr()
    }

    /// Handshakes in progress right now.
    pub fn handshakes_in_progress(&self) -> usize {
        self.bounds.in_progress()
    }

    /// The next admitted connection.
    ///
    /// Cancel-safe: a connection admitted while a cancelled `accept` was pending is kept for the
    /// next call. Errors from the OS's `accept` (e.g. out of file descriptors) are logged and
    /// retried after a short pause, so this never fails.
    pub async fn accept(&mut self) -> Admitted<L::Io> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next admitted connection (see [`GatedListener::accept`]).
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Admitted<L::Io>> {
        self.poll_accept_with_addr(cx).map(|(admitted, _)| admitted)
    }

    /// The next admitted connection with its address as the listener reported it.
    pub(crate) fn poll_accept_with_addr(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<(Admitted<L::Io>, L::Addr)> {
        let now = Instant::now();
        if self.next_flush.as_mut().poll(cx).is_ready() {
            self.next_flush.as_mut().reset(now + FLUSH_EVERY);
            // Registers the waker for the next one.
            let _ = self.next_flush.as_mut().poll(cx);
            self.log_limit.flush(now);
            let sources = self.penalties.penalized(now);
            self.config.telemetry.event(&Event::Penalized { sources });
        }
        loop {
            match self.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(admitted)))) => return Poll::Ready(admitted),
                // A refused handshake (already logged), or a task that panicked or was aborted.
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) | Poll::Pending => {}
            }
            if let Some(backoff) = &mut self.backoff {
                if backoff.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.backoff = None;
            }
            match self.listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, addr, peer))) => self.start_handshake(stream, addr, peer),
                Poll::Ready(Err(err)) => {
                    tracing::warn!(service = shown(self.config.service_name()), error = %err,
                        "accept failed; retrying");
                    if !is_connection_error(&err) {
                        self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// A [`Stream`] of `io::Result<Admitted>` (never an error, never ending) for APIs that
    /// expect one, such as tonic's `serve_with_incoming` and hyper-util's accept loops.
    pub fn into_incoming(self) -> Incoming<L> {
        Incoming { listener: self }
    }

    fn start_handshake(&mut self, stream: L::Io, addr: L::Addr, peer: Peer) {
        let id = ConnectionId::next();
        let now = Instant::now();
        let telemetry = self.config.telemetry.clone();
        telemetry.event(&Event::Accepted);
        // A trusted balancer's connection counts globally now and per source once its header
        // names the real client; any other connection counts for its own source at once.
        let from_balancer = self.config.trusts_proxy_header_from(&peer);
        if !from_balancer
            && self
                .penalties
                .refuses(self.bounds.source_of(&peer), &peer, now)
        {
            // Serving a penalty: closed at once, before any byte; logged when it started.
            telemetry.event(&Event::Refused(Bound::Penalty));
            return;
        }
        let mut slot = self.take_slot(&peer, from_balancer);
        let newcomer = (!from_balancer).then(|| self.bounds.source_of(&peer));
        if matches!(slot, Err(Bound::Global)) && self.shed_for(newcomer, now) {
            slot = self.take_slot(&peer, from_balancer);
        }
        let slot = match slot {
            Ok(slot) => slot,
            Err(bound) => {
                let source = self.bounds.source_of(&peer);
                if self.log_limit.allow(source, "bound", &peer, now) {
                    tracing::warn!(service = shown(self.config.service_name()), conn = %id, %peer,
                        bound = bound.as_str(), "connection refused: too many handshakes in progress");
                }
                telemetry.event(&Event::Refused(bound));
                // Dropping the stream closes it at once.
                return;
            }
        };
        let handle = slot.handle();
        let context = TaskContext {
            gate: self.gate.clone(),
            bounds: self.bounds.clone(),
            penalties: Arc::clone(&self.penalties),
            log_limit: Arc::clone(&self.log_limit),
            telemetry: telemetry.clone(),
            service: self.config.service.clone(),
        };
        let timer = telemetry.handshake();
        let who = Who {
            id,
            peer: peer.clone(),
            from_balancer,
        };
        let task = self.handshakes.spawn(async move {
            let admitted = handshake(context, stream, who, slot, timer).await?;
            Some((admitted, addr))
        });
        while self
            .in_flight
            .front()
            .is_some_and(|oldest| oldest.slot.is_released())
        {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back(InFlight {
            started: now,
            slot: handle,
            task,
            peer,
        });
        // Finished handshakes leave the queue from the front only, so one slow handshake can
        // keep thousands of finished ones (and their task allocations) behind it: sweep them
        // out once the queue is twice as long as the handshakes that can be in progress.
        if self.in_flight.len() > 2 * self.config.max_handshakes.max(SHED_CANDIDATES) {
            self.in_flight.retain(|entry| !entry.slot.is_released());
        }
    }

    fn take_slot(&self, peer: &Peer, from_balancer: bool) -> Result<HandshakeSlot, Bound> {
        if from_balancer {
            HandshakeSlot::take_global(&self.bounds).ok_or(Bound::Global)
        } else {
            HandshakeSlot::take(&self.bounds, peer)
        }
    }

    /// Makes room for a newcomer from `newcomer`'s source (unknown behind a balancer) by ending
    /// one of the oldest handshakes in progress, always the oldest from the busiest source among
    /// them: at once if that source holds at least two slots more than the newcomer's (so a lone
    /// client gets in even while a few sources churn through every slot), otherwise only among
    /// handshakes older than `shed_after` (the likeliest attackers, an honest handshake taking
    /// one round trip) and never for a newcomer whose source holds more slots than the victim's.
    /// Against many single-slot sources it comes down to age. The victim's source is charged as
    /// for closing early.
    fn shed_for(&mut self, newcomer: Option<Source>, now: Instant) -> bool {
        while self
            .in_flight
            .front()
            .is_some_and(|oldest| oldest.slot.is_released())
        {
            self.in_flight.pop_front();
        }
        // The oldest live handshakes, oldest first, with their sources' weights.
        let candidates: Vec<(usize, Option<Source>, bool)> = self
            .in_flight
            .iter()
            .enumerate()
            .filter(|(_, entry)| !entry.slot.is_released())
            .take(SHED_CANDIDATES)
            .map(|(index, entry)| {
                let old_enough = now.duration_since(entry.started) >= self.config.shed_after;
                (index, entry.slot.source(), old_enough)
            })
            .collect();
        let weights = self.bounds.weights(
            candidates
                .iter()
                .map(|&(_, source, _)| source)
                .chain([newcomer]),
        );
        let Some((&newcomer_weight, weights)) = weights.split_last() else {
            return false;
        };
        let heaviest = |old_only: bool| {
            candidates
                .iter()
                .zip(weights)
                .filter(|((_, _, old_enough), _)| *old_enough || !old_only)
                // The first of the heaviest: the oldest of the busiest source.
                .fold(
                    None,
                    |best: Option<(usize, usize)>, ((index, _, _), &weight)| match best {
                        Some((_, heaviest)) if heaviest >= weight => best,
                        _ => Some((*index, weight)),
                    },
                )
        };
        let index = match (heaviest(false), heaviest(true)) {
            (Some((index, weight)), _) if weight >= newcomer_weight + 2 => index,
            // Never a lighter source's handshake for a busier source's newcomer.
            (_, Some((index, weight))) if weight >= newcomer_weight => index,
            _ => return false,
        };
        let Some(victim) = self.in_flight.remove(index) else {
            return false;
        };
        victim.task.abort();
        victim.slot.release();
        if let Some(source) = victim.slot.source() {
            if self.log_limit.allow(source, "shed", &victim.peer, now) {
                tracing::info!(service = shown(self.config.service_name()), peer = %victim.peer,
                    age_ms = now.duration_since(victim.started).as_millis() as u64,
                    "every handshake slot taken: ended an old handshake from the busiest source to make room");
            }
            // The slot's source is the real client's, also behind a balancer (whose own
            // address is `victim.peer`).
            charge_source(
                &self.bounds,
                &self.penalties,
                self.config.service_name(),
                source,
                &victim.peer,
                Outcome::Shed,
                "shed to make room",
                now,
            );
        }
        true
    }
}

/// What each handshake task shares with the listener.
struct TaskContext {
    gate: Gate,
    bounds: Bounds,
    penalties: Arc<Penalties>,
    log_limit: Arc<LogLimit>,
    telemetry: Sink,
    service: Option<Arc<str>>,
}

/// Charges a source for a failed handshake, logging once when its penalty starts.
fn charge(
    bounds: &Bounds,
    penalties: &Penalties,
    service: Option<&str>,
    peer: &Peer,
    outcome: Outcome,
    reason: &str,
    now: Instant,
) {
    let source = bounds.source_of(peer);
    charge_source(
        bounds, penalties, service, source, peer, outcome, reason, now,
    );
}

/// As [`charge`], for a source known already (`peer` only names it in the log).
#[expect(
    clippy::too_many_arguments,
    reason = "each is a different part of the charge"
)]
fn charge_source(
    bounds: &Bounds,
    penalties: &Penalties,
    service: Option<&str>,
    source: Source,
    peer: &Peer,
    outcome: Outcome,
    reason: &str,
    now: Instant,
) {
    if let Some(Charged::Started(penalty)) = penalties.charge(source, peer, outcome, now) {
        tracing::warn!(service = shown(service), source = %bounds.describe(peer), %peer, penalty_s = penalty.as_secs(), last = %reason,
            "source penalized after repeated failed handshakes: its connections are closed at accept until the penalty runs out");
    }
}

/// A listener's or serve loop's name as a log field: shown as written (a plain `&str` field is
/// quoted).
pub(crate) fn shown(service: Option<&str>) -> Option<tracing::field::DisplayValue<&str>> {
    service.map(tracing::field::display)
}

/// A connection as the listener knows it before the handshake.
struct Who {
    id: ConnectionId,
    peer: Peer,
    from_balancer: bool,
}

/// One connection's way in: the PROXY protocol header (from trusted balancers), penalties and the
/// per-source bound for the real client, then the handshake, all within the handshake timeout.
/// Every refusal is logged here (rate-limited per source and reason) and charged to its source.
async fn handshake<IO>(
    context: TaskContext,
    mut stream: IO,
    who: Who,
    slot: HandshakeSlot,
    timer: HandshakeTimer,
) -> Option<Admitted<IO>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let TaskContext {
        gate,
        bounds,
        penalties,
        log_limit,
        telemetry,
        service,
    } = context;
    let service = service.as_deref();
    let Who {
        id,
        peer: socket_peer,
        from_balancer,
    } = who;
    let timeout = gate.config().handshake_timeout();
    let deadline = crate::deadline::deadline_after(timeout);
    let refused = |peer: &Peer, via: Option<&Peer>, reason: &Error, timer: HandshakeTimer| {
        let now = Instant::now();
        let outcome = Outcome::of(reason);
        let source = bounds.source_of(peer);
        if log_limit.allow(source, outcome.as_str(), peer, now) {
            let via = via.map(tracing::field::display);
            tracing::info!(service = shown(service), conn = %id, %peer, via, %reason, "connection rejected");
        }
        charge(
            &bounds,
            &penalties,
            service,
            peer,
            outcome,
            &reason.to_string(),
            now,
        );
        timer.finish(outcome, None);
    };
    let (peer, via) = if from_balancer {
        let header = tokio::time::timeout_at(deadline, proxy_protocol::read_header(&mut stream));
        let client = match header.await {
            Ok(Ok(Received::Proxied { source, .. })) => Peer::Ip(source),
            // The balancer did not know the client's address: the connection's own endpoints.
            Ok(Ok(Received::Unknown)) => socket_peer.clone(),
            Ok(Ok(Received::Local)) => {
                tracing::debug!(service = shown(service), conn = %id, via = %socket_peer,
                    "PROXY protocol LOCAL header (a balancer's health check): closed");
                timer.finish(Outcome::HealthCheck, None);
                return None;
            }
            Ok(Err(problem)) => {
                let reason = Error::from(Refusal::ProxyHeader(problem.to_string()));
                // A broken header is the balancer's fault, not a client's: not charged.
                if log_limit.allow(
                    bounds.source_of(&socket_peer),
                    "proxy_header",
                    &socket_peer,
                    Instant::now(),
                ) {
                    tracing::info!(service = shown(service), conn = %id, via = %socket_peer, %reason, "connection rejected");
                }
                timer.finish(Outcome::of(&reason), None);
                return None;
            }
            Err(_) => {
                let reason = Error::from(Timeout::new(timeout, Waiting::ProxyHeader));
                if log_limit.allow(
                    bounds.source_of(&socket_peer),
                    "proxy_header",
                    &socket_peer,
                    Instant::now(),
                ) {
                    tracing::info!(service = shown(service), conn = %id, via = %socket_peer, %reason, "connection rejected");
                }
                timer.finish(Outcome::of(&reason), None);
                return None;
            }
        };
        if penalties.refuses(bounds.source_of(&client), &client, Instant::now()) {
            timer.discard();
            telemetry.event(&Event::Refused(Bound::Penalty));
            return None;
        }
        if !slot.add_source(&client) {
            if log_limit.allow(bounds.source_of(&client), "bound", &client, Instant::now()) {
                tracing::warn!(service = shown(service), conn = %id, peer = %client, via = %socket_peer,
                    bound = Bound::PerSource.as_str(), "connection refused: too many handshakes in progress");
            }
            timer.discard();
            telemetry.event(&Event::Refused(Bound::PerSource));
            return None;
        }
        (client, Some(socket_peer))
    } else {
        (socket_peer, None)
    };
    match gate.handshake_until(&mut stream, deadline).await {
        // Shed while its last poll was finishing: the listener has already ended it (and charged
        // its source), so it must not come out of accept() after all.
        Ok(_) if slot.is_released() => None,
        Ok(session) => {
            let mut admitted = session.into_admitted(stream, gate.config(), id);
            tracing::debug!(service = shown(service), conn = %id, %peer, via = via.as_ref().map(tracing::field::display),
                key_id = %admitted.key_id(), mode = %admitted.mode(), "handshake admitted");
            let admission = admitted.admission_mut();
            *admission = admission.clone().with_peers(Some(peer), via);
            timer.finish(
                Outcome::Admitted,
                Some((admitted.key_id(), admitted.mode())),
            );
            drop(slot);
            Some(admitted)
        }
        Err(reason) => {
            refused(&peer, via.as_ref(), &reason, timer);
            None
        }
    }
}

/// How long to wait after an accept error that is not about one connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How many of the oldest sheddable handshakes are weighed when choosing which to shed.
const SHED_CANDIDATES: usize = 32;
/// How often refusal summaries are written and the penalized count reported.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Errors that concern one incoming connection, not the listener: retry at once.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl<L: Listen> Stream for GatedListener<L> {
    type Item = Admitted<L::Io>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_accept(cx).map(Some)
    }
}

/// A [`GatedListener`] as a stream of `io::Result<Admitted>`, from
/// [`GatedListener::into_incoming`].
///
/// With the `tonic` feature, serve a tonic server to admitted clients only:
///
/// ```ignore
/// tonic::transport::Server::builder()
///     .add_service(MyServer::new(service))
///     .serve_with_incoming(listener.into_incoming())
///     .await?;
/// // in a handler: request.extensions().get::<linkgate::Admission>()
/// ```
#[derive(Debug)]
pub struct Incoming<L: Listen = TcpListener> {
    listener: GatedListener<L>,
}

impl<L: Listen> Incoming<L> {
    /// The listener back.
    pub fn into_inner(self) -> GatedListener<L> {
        self.listener
    }
}

impl<L: Listen> Stream for Incoming<L> {
    type Item = io::Result<Admitted<L::Io>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .listener
            .poll_accept(cx)
            .map(|admitted| Some(Ok(admitted)))
    }
}
