//! Prometheus / OpenMetrics metrics at `--metrics ADDR` (`GET /metrics`), from the library's
//! telemetry events and the proxy's own counts. Labels are the service name, closed sets
//! (outcome, bound, mode, direction, result) and, for admitted connections only, the proved key
//! id: nothing a client merely claims can create a label value.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use linkgate::Mode;
use linkgate::telemetry::{Bound, Event, Telemetry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    service: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BoundLabels {
    service: String,
    bound: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    service: String,
    key_id: String,
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    service: String,
    key_id: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    service: String,
    result: &'static str,
}

/// How an admitted connection can end, as `connections_closed_total` labels it.
const CLOSE_RESULTS: [&str; 4] = ["ok", "error", "revoked", "cut_off"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

fn seconds_histogram(start: f64) -> Histogram {
    Histogram::new(exponential_buckets(start, 4.0, 10))
}

/// Every metric the command exports.
pub(crate) struct Metrics {
    registry: Registry,
    accepted: Family<ServiceLabel, Counter>,
    handshakes: Family<OutcomeLabels, Counter>,
    refused: Family<BoundLabels, Counter>,
    in_progress: Family<ServiceLabel, Gauge>,
    handshake_seconds: Family<ServiceLabel, Histogram, fn() -> Histogram>,
    admissions: Family<AdmissionLabels, Counter>,
    open: Family<ServiceLabel, Gauge>,
    tunnels: Family<ServiceLabel, Gauge>,
    connection_seconds: Family<ServiceLabel, Histogram, fn() -> Histogram>,
    closed: Family<ClosedLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    upstream_failures: Family<ServiceLabel, Counter>,
    keys: Family<ServiceLabel, Gauge>,
    reloads: Family<ResultLabel, Counter>,
    penalized: Family<ServiceLabel, Gauge>,
    log_dropped: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("linkgate");
        let accepted = Family::default();
        let handshakes = Family::default();
        let refused = Family::default();
        let in_progress = Family::default();
        let handshake_seconds: Family<ServiceLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| seconds_histogram(0.000_25));
        let admissions = Family::default();
        let open = Family::default();
        let tunnels = Family::default();
        let connection_seconds: Family<ServiceLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| seconds_histogram(0.001));
        let closed = Family::default();
        let bytes = Family::default();
        let upstream_failures = Family::default();
        let keys = Family::default();
        let reloads = Family::default();
        let penalized = Family::default();
        let log_dropped = Counter::default();
        registry.register(
            "connections_accepted",
            "Connections the listener accepted",
            accepted.clone(),
        );
        registry.register(
            "handshakes",
            "Handshakes by outcome (admitted, denied, malformed, refused_by_policy, timeout, closed_early, proxy_header, health_check, shed, error)",
            handshakes.clone(),
        );
        registry.register(
            "handshake_refusals",
            "Connections closed at once because a bound was full (global, per_source, penalty)",
            refused.clone(),
        );
        registry.register(
            "handshakes_in_progress",
            "Handshakes in progress",
            in_progress.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "Time from accept to the handshake's outcome",
            handshake_seconds.clone(),
        );
        registry.register(
            "admissions",
            "Admitted connections by key id and mode",
            admissions.clone(),
        );
        registry.register(
            "connections_open",
            "Admitted connections being forwarded",
            open.clone(),
        );
        registry.register(
            "tunnels_open",
            "Multiplexed tunnels admitted and open (each of their streams counts as a connection)",
            tunnels.clone(),
        );
        registry.register(
            "connection_duration_seconds",
            "Lifetime of admitted connections",
            connection_seconds.clone(),
        );
        registry.register(
            "connections_closed",
            "Admitted connections closed (ok, error, revoked, cut_off at the drain deadline)",
            closed.clone(),
        );
        registry.register(
            "bytes",
            "Bytes forwarded by key id, in (client to upstream) and out",
            bytes.clone(),
        );
        registry.register(
            "upstream_connect_failures",
            "Admitted connections whose upstream could not be reached",
            upstream_failures.clone(),
        );
        registry.register("keys_loaded", "Keys in the service's keyring", keys.clone());
        registry.register(
            "key_reloads",
            "Key reloads by result (ok, failed)",
            reloads.clone(),
        );
        registry.register(
            "sources_penalized",
            "Sources (addresses or prefixes) whose connections are refused at accept for now",
            penalized.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because stderr could not keep up (the gate never waits for it)",
            log_dropped.clone(),
        );
        Arc::new(Self {
            registry,
            accepted,
            handshakes,
            refused,
            in_progress,
            handshake_seconds,
            admissions,
            open,
            tunnels,
            connection_seconds,
            closed,
            bytes,
            upstream_failures,
            keys,
            reloads,
            penalized,
            log_dropped,
        })
    }

    /// The text exposition (OpenMetrics).
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The handle one service reports through.
    pub(crate) fn service(self: &Arc<Self>, name: &str) -> ServiceMetrics {
        let service = ServiceMetrics {
            metrics: Arc::clone(self),
            service: name.to_owned(),
        };
        // Shown as 0 from the start, not missing until first used: a dashboard or an alert
        // on rate() needs the series to exist.
        let label = service.label();
        drop(self.accepted.get_or_create(&label));
        drop(self.in_progress.get_or_create(&label));
        drop(self.open.get_or_create(&label));
        drop(self.tunnels.get_or_create(&label));
        drop(self.upstream_failures.get_or_create(&label));
        for bound in [Bound::Global, Bound::PerSource, Bound::Penalty] {
            drop(self.refused.get_or_create(&BoundLabels {
                service: name.to_owned(),
                bound: bound.as_str(),
            }));
        }
        for result in CLOSE_RESULTS {
            drop(self.closed.get_or_create(&ClosedLabels {
                service: name.to_owned(),
                result,
            }));
        }
        service
    }

    /// Brings the dropped-lines counter up to `total` (the log writer's own count).
    pub(crate) fn log_lines_dropped(&self, total: u64) {
        let seen = self.log_dropped.get();
        if total > seen {
            self.log_dropped.inc_by(total - seen);
        }
    }

    pub(crate) fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }
}

/// One service's metrics; also its [`Telemetry`].
#[derive(Clone)]
pub(crate) struct ServiceMetrics {
    metrics: Arc<Metrics>,
    service: String,
}

impl ServiceMetrics {
    fn label(&self) -> ServiceLabel {
        ServiceLabel {
            service: self.service.clone(),
        }
    }

    pub(crate) fn connection_opened(&self) {
        self.metrics.open.get_or_create(&self.label()).inc();
    }

    /// An admitted connection ended: how, how long, bytes each way.
    pub(crate) fn connection_closed(
        &self,
        key_id: &str,
        result: &'static str,
        duration: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let m = &self.metrics;
        m.open.get_or_create(&self.label()).dec();
        m.connection_seconds
            .get_or_create(&self.label())
            .observe(duration.as_secs_f64());
        m.closed
            .get_or_create(&ClosedLabels {
                service: self.service.clone(),
                result,
            })
            .inc();
        for (direction, n) in [("in", bytes_in), ("out", bytes_out)] {
            m.bytes
                .get_or_create(&BytesLabels {
                    service: self.service.clone(),
                    key_id: key_id.to_owned(),
                    direction,
                })
                .inc_by(n);
        }
    }

    /// A multiplexed tunnel is open until the returned guard is dropped.
    pub(crate) fn tunnel_opened(&self) -> TunnelOpen {
        self.metrics.tunnels.get_or_create(&self.label()).inc();
        TunnelOpen(self.clone())
    }

    pub(crate) fn upstream_failed(&self) {
        self.metrics
            .upstream_failures
            .get_or_create(&self.label())
            .inc();
    }

    pub(crate) fn keys_loaded(&self, n: usize) {
        self.metrics.keys.get_or_create(&self.label()).set(n as i64);
    }
}

/// Counts one tunnel in `tunnels_open` while it lives.
pub(crate) struct TunnelOpen(ServiceMetrics);

impl Drop for TunnelOpen {
    fn drop(&mut self) {
        self.0.metrics.tunnels.get_or_create(&self.0.label()).dec();
    }
}

impl Telemetry for ServiceMetrics {
    fn event(&self, event: &Event<'_>) {
        let m = &self.metrics;
        match event {
            Event::Accepted => {
                m.accepted.get_or_create(&self.label()).inc();
            }
            Event::Refused(bound) => {
                m.refused
                    .get_or_create(&BoundLabels {
                        service: self.service.clone(),
                        bound: bound.as_str(),
                    })
                    .inc();
            }
            Event::Penalized { sources } => {
                m.penalized
                    .get_or_create(&self.label())
                    .set(*sources as i64);
            }
            Event::HandshakeStarted => {
                m.in_progress.get_or_create(&self.label()).inc();
            }
            Event::HandshakeFinished {
                outcome,
                duration,
                admitted,
            } => {
                m.in_progress.get_or_create(&self.label()).dec();
                m.handshakes
                    .get_or_create(&OutcomeLabels {
                        service: self.service.clone(),
                        outcome: outcome.as_str(),
                    })
                    .inc();
                m.handshake_seconds
                    .get_or_create(&self.label())
                    .observe(duration.as_secs_f64());
                if let Some((key_id, mode)) = admitted {
                    m.admissions
                        .get_or_create(&AdmissionLabels {
                            service: self.service.clone(),
                            key_id: key_id.to_string(),
                            mode: mode_label(*mode),
                        })
                        .inc();
                }
            }
            _ => {}
        }
    }
}

fn mode_label(mode: Mode) -> &'static str {
    mode.as_str()
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let metrics = Arc::clone(&metrics);
                    async move { Ok::<_, Infallible>(respond(&request, &metrics)) }
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
        });
    }
}

fn respond(request: &Request<hyper::body::Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            *response.body_mut() = Full::new(Bytes::from(metrics.encode()));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
        }
        _ => *response.status_mut() = StatusCode::NOT_FOUND,
    }
    response
}

/// Binds the metrics endpoint.
pub(crate) async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
