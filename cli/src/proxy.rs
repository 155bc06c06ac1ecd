//! The two halves of the proxy: `serve` (in front of an unmodified server) and `connect` (beside
//! an unmodified client), one task per connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkgate::proxy_protocol::{self, Tlvs, Version};
use linkgate::{Admission, Admitted, Credentials};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::forward::{self, Transfer, sealed};
use crate::upstream::Upstream;

/// What `serve` needs for each admitted connection.
#[derive(Debug)]
pub(crate) struct ServeContext {
    pub(crate) upstream: Upstream,
    pub(crate) connect_timeout: Duration,
    /// Send a PROXY protocol header upstream, and whether the key id also goes in AUTHORITY.
    pub(crate) send_proxy: Option<(Version, bool)>,
}

/// Bytes each way through one connection, from the client's point of view.
#[derive(Debug, Clone, Copy, Default)]
struct Bytes {
    /// From the client toward the server.
    inbound: u64,
    /// From the server back to the client.
    outbound: u64,
}

/// Serves one admitted connection: connects to the upstream (only now, after admission) and
/// forwards both ways in the admitted mode. If the upstream cannot be reached, the client is
/// reset, so it sees a failure rather than an empty answer.
pub(crate) async fn serve_one(admitted: Admitted<TcpStream>, context: Arc<ServeContext>) {
    let who = admitted.admission().clone();
    let peer = peer_text(&who);
    tracing::info!(conn = %who.connection_id(), peer = %peer, via = via_field(&who), key_id = %who.key_id(),
        mode = %who.mode(), "admitted");
    let started = Instant::now();
    let result = match &context.upstream {
        Upstream::Echo => echo(admitted).await,
        Upstream::Tcp(addr) => match connect_upstream(addr, &context, &admitted).await {
            Ok(mut server) => {
                let (mut client, _, sealed) = admitted.into_parts();
                let result = match sealed {
                    None => forward::forward(&mut client, &mut server)
                        .await
                        .map(|t| Bytes {
                            inbound: t.a_to_b,
                            outbound: t.b_to_a,
                        }),
                    Some(parts) => {
                        sealed::forward(&mut client, parts, &mut server)
                            .await
                            .map(|t| Bytes {
                                inbound: t.opened,
                                outbound: t.sealed,
                            })
                    }
                };
                if result.is_err() {
                    forward::reset(&[&client, &server]);
                }
                result
            }
            Err(err) => {
                tracing::warn!(conn = %who.connection_id(), peer = %peer, via = via_field(&who), key_id = %who.key_id(),
                    upstream = %addr, error = %err,
                    "upstream unreachable: resetting the admitted connection");
                forward::reset(&[admitted.get_ref()]);
                return;
            }
        },
    };
    log_close(&who, &peer, started, result);
}

/// The built-in echo service, in any mode: what the client sends comes back, and its
/// close_notify (or FIN) is answered with ours.
async fn echo(admitted: Admitted<TcpStream>) -> io::Result<Bytes> {
    let (mut reader, mut writer) = tokio::io::split(admitted);
    let echoed = tokio::io::copy(&mut reader, &mut writer).await?;
    writer.shutdown().await?;
    Ok(Bytes {
        inbound: echoed,
        outbound: echoed,
    })
}

/// Connects to the upstream and, if asked, sends it the PROXY protocol header first.
async fn connect_upstream(
    addr: &str,
    context: &ServeContext,
    admitted: &Admitted<TcpStream>,
) -> io::Result<TcpStream> {
    let mut server = Upstream::connect(addr, context.connect_timeout).await?;
    if let Some((version, key_id_as_authority)) = context.send_proxy {
        let who = admitted.admission();
        let source = who.peer().and_then(linkgate::Peer::ip_addr);
        let gate = admitted.get_ref().local_addr()?;
        let id = who.connection_id().to_string();
        let tlvs = Tlvs::new(who.key_id().as_str(), &id, key_id_as_authority);
        let header = proxy_protocol::encode(version, source.map(|source| (source, gate)), &[tlvs])
            .map_err(io::Error::other)?;
        server.write_all(&header).await?;
    }
    Ok(server)
}

/// The client for logs: the real one (behind a balancer, the one its header named).
fn peer_text(who: &Admission) -> String {
    who.peer()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// The balancer a connection came through, as an optional log field.
fn via_field(who: &Admission) -> Option<tracing::field::DisplayValue<&linkgate::Peer>> {
    who.via().map(tracing::field::display)
}

fn log_close(who: &Admission, peer: &str, started: Instant, result: io::Result<Bytes>) {
    let duration_ms = started.elapsed().as_millis() as u64;
    let conn = who.connection_id();
    match result {
        Ok(bytes) => {
            tracing::info!(%conn, %peer, via = via_field(who), key_id = %who.key_id(), bytes_in = bytes.inbound,
            bytes_out = bytes.outbound, duration_ms, "closed")
        }
        Err(err) => {
            let reason = reason_of(&err);
            tracing::info!(%conn, %peer, via = via_field(who), key_id = %who.key_id(), duration_ms, %reason, error = %err,
                "closed after an error (both sides reset)");
        }
    }
}

/// A short reason for a forwarding error: the record layer's, else the I/O kind.
pub(crate) fn reason_of(err: &io::Error) -> &'static str {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<linkgate::Error>())
    {
        Some(inner) => inner.reason(),
        None => match err.kind() {
            io::ErrorKind::ConnectionReset => "reset",
            io::ErrorKind::BrokenPipe => "broken_pipe",
            io::ErrorKind::TimedOut => "timeout",
            _ => "io",
        },
    }
}

/// What `connect` needs for each local connection.
#[derive(Debug)]
pub(crate) struct ConnectContext {
    pub(crate) server: String,
    pub(crate) credentials: Credentials,
}

/// Authenticates one local connection to the gate and forwards. A failed authentication resets
/// the local connection and logs why.
pub(crate) async fn connect_one(
    mut local: TcpStream,
    peer: SocketAddr,
    context: Arc<ConnectContext>,
) {
    let _ = local.set_nodelay(true);
    let key_id = context.credentials.key_id();
    let remote = match linkgate::connect(context.server.as_str(), &context.credentials).await {
        Ok(remote) => remote,
        Err(err) => {
            tracing::warn!(%peer, server = %context.server, %key_id, reason = %err.reason(), "{err}");
            forward::reset(&[&local]);
            return;
        }
    };
    let who = remote.admission().clone();
    tracing::info!(conn = %who.connection_id(), %peer, server = %context.server, %key_id,
        mode = %who.mode(), "authenticated to the gate");
    let started = Instant::now();
    let (mut remote, _, sealed) = remote.into_parts();
    let result =
        match sealed {
            None => forward::forward(&mut local, &mut remote).await.map(
                |Transfer { a_to_b, b_to_a }| Bytes {
                    inbound: a_to_b,
                    outbound: b_to_a,
                },
            ),
            Some(parts) => sealed::forward(&mut remote, parts, &mut local)
                .await
                .map(|t| Bytes {
                    inbound: t.sealed,
                    outbound: t.opened,
                }),
        };
    if result.is_err() {
        forward::reset(&[&local, &remote]);
    }
    log_close(&who, &peer.to_string(), started, result);
}
