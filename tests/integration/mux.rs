//! Multiplexed tunnels over real loopback TCP: many streams through one admitted connection,
//! per-stream flow control, half-close, reset and refusal, the tunnel failing under its
//! streams, and gates that do not allow the mode.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use linkgate::mux::{IncomingStream, MuxConfig, MuxServer, MuxStream, Pool, PoolConfig, Tunnel};
use linkgate::{Credentials, Error, Gate, GateConfig, Key, KeyId, Mode, Refusal, Rejection};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::wire::fail_and_expect_a_reset;
use crate::support::{key, keyring, payload};

/// What the test server does with each stream.
#[derive(Clone, Copy)]
enum Service {
    /// Echoes what it reads, then ends its side after the client's end.
    Echo,
    /// Reads an 8-byte length, then sends that many bytes of `payload(len, 7)` and ends.
    Source,
    /// Refuses every stream whose id is 3 modulo 4, echoes the others.
    RefuseSome,
}

fn mux_gate(keys: &[&Key]) -> Gate {
    let config = GateConfig::new().with_multiplexing_allowed(true);
    Gate::with_config(keyring(keys), config).unwrap()
}

/// Serves tunnels on a loopback port: each admitted tunnel's streams get `service`. The
/// returned sender aborts the tunnels (dropping their connections) when sent `()`.
async fn serve_tunnels(
    gate: Gate,
    service: Service,
) -> (SocketAddr, tokio::sync::broadcast::Sender<()>) {
    serve_tunnels_with(gate, service, MuxConfig::default()).await
}

async fn serve_tunnels_with(
    gate: Gate,
    service: Service,
    mux: MuxConfig,
) -> (SocketAddr, tokio::sync::broadcast::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (abort, _) = tokio::sync::broadcast::channel::<()>(1);
    let aborts = abort.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let gate = gate.clone();
            let mut aborted = aborts.subscribe();
            tokio::spawn(async move {
                let Ok(admitted) = gate.admit(tcp).await else {
                    return;
                };
                let mut server = MuxServer::new(admitted, &mux).await.unwrap();
                loop {
                    let incoming = tokio::select! {
                        incoming = server.next_stream() => incoming,
                        _ = aborted.recv() => return,
                    };
                    match incoming {
                        Some(Ok(incoming)) => {
                            tokio::spawn(handle(incoming, service));
                        }
                        Some(Err(_)) | None => return,
                    }
                }
            });
        }
    });
    (addr, abort)
}

async fn handle(incoming: IncomingStream, service: Service) {
    if matches!(service, Service::RefuseSome) && incoming.stream_id() % 4 == 3 {
        incoming.refuse();
        return;
    }
    let Ok(stream) = incoming.accept() else {
        return;
    };
    let (mut read, mut write) = stream.into_split();
    match service {
        Service::Echo | Service::RefuseSome => {
            if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                let _ = write.shutdown().await;
            }
        }
        Service::Source => {
            let mut len = [0u8; 8];
            if read.read_exact(&mut len).await.is_err() {
                return;
            }
            let data = payload(u64::from_be_bytes(len) as usize, 7);
            if write.write_all(&data).await.is_ok() {
                let _ = write.shutdown().await;
            }
        }
    }
}

async fn tunnel_to(addr: SocketAddr, alice: Key) -> Tunnel {
    let credentials = Credentials::new(alice).with_mode(Mode::SealedFsMux);
    let admitted = linkgate::connect(addr, &credentials).await.unwrap();
    assert_eq!(admitted.mode(), Mode::SealedFsMux);
    Tunnel::new(admitted, &MuxConfig::default()).await.unwrap()
}

/// Writes `data`, ends the direction, and reads everything back.
async fn echo_through(stream: MuxStream, data: Vec<u8>) -> io::Result<Vec<u8>> {
    let (mut read, mut write) = stream.into_split();
    let sending = async move {
        write.write_all(&data).await?;
        write.shutdown().await
    };
    let mut got = Vec::new();
    let (sent, received) = tokio::join!(sending, read.read_to_end(&mut got));
    sent?;
    received?;
    Ok(got)
}

async fn fetch(stream: MuxStream, len: u64) -> io::Result<Vec<u8>> {
    let (mut read, mut write) = stream.into_split();
    write.write_all(&len.to_be_bytes()).await?;
    write.shutdown().await?;
    let mut got = Vec::new();
    read.read_to_end(&mut got).await?;
    Ok(got)
}

#[tokio::test]
async fn thousands_of_short_streams_through_one_tunnel() {
    let alice = key("alice");
    let (addr, _abort) = serve_tunnels(mux_gate(&[&alice]), Service::Echo).await;
    let tunnel = tunnel_to(addr, alice).await;
    let streams = 3_000u64;
    let batch = 100;
    for start in (0..streams).step_by(batch) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in start..start + batch as u64 {
            let tunnel = tunnel.clone();
            tasks.spawn(async move {
                let data = payload(64 + (i % 200) as usize, i);
                let got = echo_through(tunnel.open().await.unwrap(), data.clone()).await;
                assert_eq!(got.unwrap(), data, "stream {i}");
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    }
    assert!(!tunnel.is_closed());
}

#[tokio::test]
async fn large_transfers_at_once_arrive_whole() {
    let alice = key("alice");
    let (addr, _abort) = serve_tunnels(mux_gate(&[&alice]), Service::Echo).await;
    let tunnel = tunnel_to(addr, alice).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..3u8 {
        let tunnel = tunnel.clone();
        tasks.spawn(async move {
            let data = payload(8 << 20, u64::from(i));
            let want = Sha256::digest(&data);
            let got = echo_through(tunnel.open().await.unwrap(), data)
                .await
                .unwrap();
            assert_eq!(Sha256::digest(&got), want, "transfer {i}");
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

#[tokio::test]
async fn a_reader_that_stops_reading_stalls_only_its_own_stream() {
    let alice = key("alice");
    let (addr, _abort) = serve_tunnels(mux_gate(&[&alice]), Service::Source).await;
    let tunnel = tunnel_to(addr, alice).await;
    // 80 stalled streams each ask for more than their window, then read nothing for now
    // (more than a tunnel window of a fixed 32 MiB would survive at 512 KiB per stream).
    let stalled_len = 1u64 << 20;
    let mut stalled = Vec::new();
    for _ in 0..80 {
        let (mut read, mut write) = tunnel.open().await.unwrap().into_split();
        write.write_all(&stalled_len.to_be_bytes()).await.unwrap();
        write.shutdown().await.unwrap();
        let mut first = [0u8; 1];
        read.read_exact(&mut first).await.unwrap();
        stalled.push((read, first[0]));
    }
    // Meanwhile a 32 MiB transfer on the same tunnel completes (bounded wait: a stall fails).
    let fast = tokio::time::timeout(
        Duration::from_secs(60),
        fetch(tunnel.open().await.unwrap(), 32 << 20),
    )
    .await
    .expect("the fast stream stalled behind the slow one")
    .unwrap();
    assert_eq!(Sha256::digest(&fast), Sha256::digest(payload(32 << 20, 7)));
    // The stalled streams lost nothing.
    let want = payload(stalled_len as usize, 7);
    for (mut read, first) in stalled {
        let mut whole = vec![first];
        read.read_to_end(&mut whole).await.unwrap();
        assert!(whole == want, "a stalled stream lost bytes");
    }
}

#[tokio::test]
async fn half_close_passes_through_each_stream() {
    let alice = key("alice");
    let (addr, _abort) = serve_tunnels(mux_gate(&[&alice]), Service::Source).await;
    let tunnel = tunnel_to(addr, alice).await;
    // The client ends its side first (after the length); the server still sends everything.
    let got = fetch(tunnel.open().await.unwrap(), 300_000).await.unwrap();
    assert_eq!(got, payload(300_000, 7));
}

#[tokio::test]
async fn a_reset_stays_a_reset_both_ways() {
    let alice = key("alice");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gate = mux_gate(&[&alice]);
    let (seen_tx, mut seen) = tokio::sync::mpsc::channel::<io::Result<usize>>(4);
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let admitted = gate.admit(tcp).await.unwrap();
        let mut server = MuxServer::new(admitted, &MuxConfig::default())
            .await
            .unwrap();
        // Stream 1: the client resets it; report what the server's read sees.
        let first = server
            .next_stream()
            .await
            .unwrap()
            .unwrap()
            .accept()
            .unwrap();
        let seen_tx2 = seen_tx.clone();
        tokio::spawn(async move {
            let mut first = first;
            let mut buf = [0u8; 16];
            let mut total = 0;
            loop {
                match first.read(&mut buf).await {
                    Ok(0) => break seen_tx2.send(Ok(total)).await.unwrap(),
                    Ok(n) => total += n,
                    Err(err) => break seen_tx2.send(Err(err)).await.unwrap(),
                }
            }
        });
        // Stream 3: the server resets it after one byte (in its own task: the tunnel's frames
        // move only while next_stream is awaited).
        let mut second = server
            .next_stream()
            .await
            .unwrap()
            .unwrap()
            .accept()
            .unwrap();
        tokio::spawn(async move {
            second.write_all(b"x").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            second.reset();
        });
        while server.next_stream().await.is_some() {}
    });
    let tunnel = tunnel_to(addr, alice).await;
    let mut first = tunnel.open().await.unwrap();
    first.write_all(b"hello").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.reset();
    let server_saw = seen.recv().await.unwrap();
    assert_eq!(
        server_saw.expect_err("the server read a clean end").kind(),
        io::ErrorKind::ConnectionReset
    );

    let mut second = tunnel.open().await.unwrap();
    let mut byte = [0u8; 1];
    second.read_exact(&mut byte).await.unwrap();
    let err = second
        .read(&mut byte)
        .await
        .expect_err("a reset read as a clean end");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    // The tunnel carries on.
    assert!(!tunnel.is_closed());
}

#[tokio::test]
async fn a_refused_stream_fails_alone() {
    let alice = key("alice");
    let (addr, _abort) = serve_tunnels(mux_gate(&[&alice]), Service::RefuseSome).await;
    let tunnel = tunnel_to(addr, alice).await;
    // Client stream ids are 1, 3, 5, 7…: the second is refused, the others echo.
    for i in 0..4u8 {
        let stream = tunnel.open().await.unwrap();
        let id = stream.stream_id();
        let result = echo_through(stream, vec![i; 10]).await;
        if id % 4 == 3 {
            let err = result.expect_err("a refused stream read data");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
            assert!(err.to_string().contains("502"), "{err}");
        } else {
            assert_eq!(result.unwrap(), vec![i; 10]);
        }
    }
}

#[tokio::test]
async fn the_tunnel_failing_resets_its_streams_never_a_clean_end() {
    let alice = key("alice");
    let (addr, abort) = serve_tunnels(mux_gate(&[&alice]), Service::Source).await;
    let tunnel = tunnel_to(addr, alice).await;
    let (mut read, mut write) = tunnel.open().await.unwrap().into_split();
    write.write_all(&(64u64 << 20).to_be_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    read.read_exact(&mut buf).await.unwrap();
    // The server side drops the tunnel's connection mid-transfer.
    abort.send(()).unwrap();
    let outcome = async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(err) => return Err(err),
            }
        }
    };
    let err = outcome
        .await
        .expect_err("a dropped tunnel looked like a complete transfer");
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );
    tokio::time::timeout(Duration::from_secs(5), tunnel.closed())
        .await
        .expect("the tunnel still looks open");
    assert!(tunnel.open().await.is_err());
}

#[tokio::test]
async fn a_pool_replaces_a_tunnel_that_drops() {
    let alice = key("alice");
    let (addr, abort) = serve_tunnels(mux_gate(&[&alice]), Service::Echo).await;
    let config = PoolConfig::default()
        .with_tunnels(2)
        .with_backoff(Duration::from_millis(10), Duration::from_millis(200));
    let pool = Pool::new(addr.to_string(), Credentials::new(alice), config).unwrap();
    let wait = Duration::from_secs(5);
    let got = echo_through(pool.open(wait).await.unwrap(), b"one".to_vec()).await;
    assert_eq!(got.unwrap(), b"one");
    abort.send(()).unwrap();
    // New connections get a new tunnel (bounded wait for the pool to notice and reconnect).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async { echo_through(pool.open(wait).await?, b"two".to_vec()).await };
        match attempt.await {
            Ok(got) => {
                assert_eq!(got, b"two");
                break;
            }
            Err(err) => assert!(
                tokio::time::Instant::now() < deadline,
                "no new tunnel: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The other slot reconnects on its own schedule: both are up again before long.
    while pool.tunnels_up() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 2 tunnels up again",
            pool.tunnels_up()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pool.tunnels_up(), 2);
}

#[tokio::test]
async fn an_open_on_a_tunnel_at_the_gates_stream_bound_gives_up_at_its_wait() {
    let alice = key("alice");
    let one_stream = MuxConfig::default().with_max_streams(1);
    let (addr, _abort) = serve_tunnels_with(mux_gate(&[&alice]), Service::Echo, one_stream).await;
    let config = PoolConfig::default().with_tunnels(1);
    let pool = Pool::new(addr.to_string(), Credentials::new(alice), config).unwrap();
    let mut held = pool.open(Duration::from_secs(5)).await.unwrap();
    held.write_all(b"held").await.unwrap();
    let mut echoed = [0u8; 4];
    held.read_exact(&mut echoed).await.unwrap();
    // The gate allows one stream at once: a second open waits for it, but not for ever.
    let started = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        pool.open(Duration::from_millis(300)),
    )
    .await
    .expect("an open at the gate's stream bound waited past its wait");
    let err = outcome.expect_err("a second stream opened past the gate's bound of one");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(
        err.to_string().contains("as many open as the gate allows"),
        "{err}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // Once the first one ends, its place is free.
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match pool.open(Duration::from_millis(500)).await {
            Ok(stream) => {
                let got = echo_through(stream, b"next".to_vec()).await.unwrap();
                assert_eq!(got, b"next");
                break;
            }
            Err(err) => assert!(tokio::time::Instant::now() < deadline, "{err}"),
        }
    }
}

/// A gate that admits a tunnel and drops it at once is not hammered: a tunnel lost right
/// after admission is replaced on the backoff, like a failed attempt (a review counted 3,298
/// admissions in 2 s before).
#[tokio::test]
async fn a_tunnel_lost_right_after_admission_is_replaced_on_the_backoff() {
    let alice = key("alice");
    let gate = mux_gate(&[&alice]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admitted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&admitted);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            if gate.admit(tcp).await.is_ok() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let config = PoolConfig::default()
        .with_tunnels(1)
        .with_backoff(Duration::from_millis(50), Duration::from_millis(800));
    let _pool = Pool::new(addr.to_string(), Credentials::new(alice), config).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let count = admitted.load(std::sync::atomic::Ordering::SeqCst);
    // 50, 100, 200, 400, 800, 800 ms (jittered): about six in 2 s.
    assert!((2..=12).contains(&count), "{count} admissions in 2 s");
}

/// Pools to `addr`, one per config, all under one pacing and a key for "alice" that no gate
/// here holds.
fn stale_pools<const N: usize>(
    addr: SocketAddr,
    configs: [PoolConfig; N],
) -> (Vec<Pool>, linkgate::mux::Pacing) {
    let stale = Key::generate(KeyId::new("alice").unwrap()).unwrap();
    let pacing = linkgate::mux::Pacing::new();
    let pools = configs
        .into_iter()
        .map(|config| {
            Pool::with_pacing(
                addr.to_string(),
                Credentials::new(stale.clone()),
                config,
                &pacing,
            )
            .unwrap()
        })
        .collect();
    (pools, pacing)
}

/// A gate that refuses the pool's tunnels (a stale key) is tried once, not on the usual
/// backoff: each refusal adds to the gate's penalty for this host, and a few per second would
/// get every client here refused at accept. Pools sharing a pacing count as one.
#[tokio::test]
async fn a_refused_pool_tries_once_a_minute_and_says_why() {
    let gate = mux_gate(&[&key("alice")]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&attempts);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let gate = gate.clone();
            tokio::spawn(async move { gate.admit(tcp).await });
        }
    });
    let (pools, _) = stale_pools(
        addr,
        [3, 2].map(|tunnels| PoolConfig::default().with_tunnels(tunnels)),
    );
    for pool in &pools {
        let err = pool.open(Duration::from_millis(1500)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("denied by the server"), "{err}");
    }
    assert_eq!(
        attempts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "five tunnels in two pools, one attempt in 3 s"
    );
}

/// Pools that failed to connect before the gate was up, then were refused by it: each says the
/// refusal (why nothing is tried now), not its own older connection failure.
#[tokio::test]
async fn a_refusal_comes_before_an_older_failure_in_the_error() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let quick = PoolConfig::default()
        .with_tunnels(1)
        .with_backoff(Duration::from_millis(10), Duration::from_millis(40));
    let (pools, _) = stale_pools(addr, [quick, quick]);
    // Both have failed to connect at least once before the gate comes up.
    for pool in &pools {
        let err = pool.open(Duration::from_millis(300)).await.unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
    }
    let listener = TcpListener::bind(addr).await.unwrap();
    let gate = mux_gate(&[&key("alice")]);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let gate = gate.clone();
            tokio::spawn(async move { gate.admit(tcp).await });
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pacing_refused(&pools[0]).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never refused");
    }
    for pool in &pools {
        let err = pool.open(Duration::from_millis(200)).await.unwrap_err();
        assert!(err.to_string().contains("denied by the server"), "{err}");
    }
}

/// The pool's error once the gate has refused it, if it has.
async fn pacing_refused(pool: &Pool) -> Option<io::Error> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let err = pool.open(Duration::ZERO).await.err()?;
    err.to_string()
        .contains("denied by the server")
        .then_some(err)
}

#[tokio::test]
async fn a_pool_without_a_gate_says_why() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let pool = Pool::new(
        addr.to_string(),
        Credentials::new(key("alice")),
        PoolConfig::default(),
    )
    .unwrap();
    let err = pool.open(Duration::from_millis(500)).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(err.to_string().contains("no tunnel to"), "{err}");
    let plain = Credentials::new(key("alice")).with_mode(Mode::Plain);
    let err = Pool::new(addr.to_string(), plain, PoolConfig::default()).unwrap_err();
    assert!(err.to_string().contains("cannot be multiplexed"), "{err}");
}

/// Opens a raw HTTP/2 CONNECT with an extra header of `extra` bytes, as a hostile key holder
/// could, and returns the answer's status (or the error that replaced it).
async fn raw_open(
    sender: &mut h2::client::SendRequest<bytes::Bytes>,
    extra: usize,
) -> Result<u16, h2::Error> {
    let mut request = http::Request::connect("upstream.linkgate.invalid:0")
        .body(())
        .unwrap();
    if extra > 0 {
        let value = http::HeaderValue::from_str(&"v".repeat(extra)).unwrap();
        request.headers_mut().insert("x-padding", value);
    }
    let (answer, mut send) = sender.clone().ready().await?.send_request(request, false)?;
    let answer = answer.await?;
    send.send_reset(h2::Reason::CANCEL);
    Ok(answer.status().as_u16())
}

#[tokio::test]
async fn oversized_headers_are_refused_and_a_header_bomb_ends_only_its_tunnel() {
    let alice = key("alice");
    let (addr, _abort) = serve_tunnels(mux_gate(&[&alice]), Service::Echo).await;
    let credentials = Credentials::new(alice.clone()).with_mode(Mode::SealedFsMux);
    let admitted = linkgate::connect(addr, &credentials).await.unwrap();
    // A raw client announces h2's default limits, so it can send what ours would refuse.
    let (mut sender, connection) = h2::client::handshake(admitted).await.unwrap();
    let driver = tokio::spawn(connection);
    assert_eq!(raw_open(&mut sender, 0).await.unwrap(), 200);
    // Over the 1 KiB header list the gate announces: that stream alone is refused.
    assert_eq!(raw_open(&mut sender, 2000).await.unwrap(), 431);
    assert_eq!(raw_open(&mut sender, 0).await.unwrap(), 200);
    // Far over it (h2's default would have decoded up to 16 MiB per stream): the tunnel ends.
    let err = raw_open(&mut sender, 60_000).await.unwrap_err();
    assert!(
        err.is_go_away() || err.is_io() || err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM),
        "{err}"
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    // Other tunnels go on.
    let tunnel = tunnel_to(addr, alice).await;
    let stream = tunnel.open().await.unwrap();
    let got = echo_through(stream, b"still served".to_vec())
        .await
        .unwrap();
    assert_eq!(got, b"still served");
}

#[tokio::test]
async fn gates_refuse_multiplexing_unless_allowed() {
    let alice = key("alice");
    let cases = [
        (
            GateConfig::new(),
            Mode::SealedFsMux,
            "multiplexed tunnels are not allowed",
        ),
        (
            GateConfig::new()
                .with_multiplexing_allowed(true)
                .with_forward_secrecy_required(true),
            Mode::SealedMux,
            "forward secrecy is required",
        ),
    ];
    for (config, mode, why) in cases {
        let gate = Gate::with_config(keyring(&[&alice]), config).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            gate.admit(tcp).await
        });
        let credentials = Credentials::new(alice.clone()).with_mode(mode);
        let client_err = linkgate::connect(addr, &credentials).await.unwrap_err();
        assert!(
            matches!(client_err, Error::Rejected(Rejection::RefusedAsMalformed(m)) if m == mode),
            "{client_err}"
        );
        let server_err = server.await.unwrap().unwrap_err();
        assert!(
            matches!(&server_err, Error::Refused(Refusal::ModeNotAllowed { mode: m, .. }) if *m == mode),
            "{server_err}"
        );
        assert!(server_err.to_string().contains(why), "{server_err}");
    }
    // A session admitted in a plain or sealed mode is not a tunnel.
    let gate = mux_gate(&[&alice]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _kept = gate.admit(tcp).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let sealed = linkgate::connect(addr, &Credentials::new(alice))
        .await
        .unwrap();
    let err = Tunnel::new(sealed, &MuxConfig::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a multiplexed one"), "{err}");
}

/// A relay to the gate that can be frozen: it then stops moving bytes but keeps both
/// connections open, as a peer that vanished (or a NAT that forgot the flow) would look.
async fn freezable_relay(to: SocketAddr) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (freeze, frozen) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(to).await.unwrap();
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::spawn(relay_until_frozen(
            client_read,
            server_write,
            frozen.clone(),
        ));
        tokio::spawn(relay_until_frozen(server_read, client_write, frozen));
    });
    (addr, freeze)
}

async fn relay_until_frozen(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *frozen.borrow() {
            // Silent from now on, with both connections held open until the test ends.
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn keepalive_closes_a_tunnel_whose_peer_vanished_on_both_sides() {
    let alice = key("alice");
    let config =
        MuxConfig::default().with_keepalive(Duration::from_millis(100), Duration::from_millis(300));
    assert_eq!(
        config.keepalive(),
        Some((Duration::from_millis(100), Duration::from_millis(300)))
    );
    // The gate: one tunnel, its streams echoed; how it ended is reported.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_addr = listener.local_addr().unwrap();
    let gate = mux_gate(&[&alice]);
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<io::Result<()>>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let admitted = gate.admit(tcp).await.unwrap();
        let mut server = MuxServer::new(admitted, &config).await.unwrap();
        let ended = loop {
            match server.next_stream().await {
                Some(Ok(incoming)) => {
                    tokio::spawn(handle(incoming, Service::Echo));
                }
                Some(Err(err)) => break Err(err),
                None => break Ok(()),
            }
        };
        let _ = ended_tx.send(ended);
    });
    let (relay_addr, freeze) = freezable_relay(gate_addr).await;
    let credentials = Credentials::new(alice).with_mode(Mode::SealedFsMux);
    let admitted = linkgate::connect(relay_addr, &credentials).await.unwrap();
    let tunnel = Tunnel::new(admitted, &config).await.unwrap();

    // Idle for ten intervals: the pings are answered, the tunnel stays up and works.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !tunnel.is_closed(),
        "a live tunnel was closed by its keepalive"
    );
    let got = echo_through(tunnel.open().await.unwrap(), b"still here".to_vec()).await;
    assert_eq!(got.unwrap(), b"still here");
    let (mut held_read, mut held_write) = tunnel.open().await.unwrap().into_split();
    held_write.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    held_read.read_exact(&mut one).await.unwrap();

    // The peer vanishes: nothing more gets through, and no FIN or reset either.
    freeze.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), tunnel.closed())
        .await
        .expect("the client did not notice the vanished gate");
    let err = tokio::time::timeout(Duration::from_secs(5), held_read.read(&mut one))
        .await
        .expect("the held stream still waits")
        .expect_err("the held stream ended as if complete");
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );
    let server_end = tokio::time::timeout(Duration::from_secs(5), ended_rx)
        .await
        .expect("the gate did not notice the vanished client")
        .unwrap();
    let err = server_end.expect_err("the gate took the silence for a clean close");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(err.to_string().contains("keepalive"), "{err}");
}

/// A relay to the gate whose gate-to-client direction is a slow link with a deep buffer: it
/// takes whatever the gate sends at once and passes it on at about 1 MiB/s.
async fn slow_downlink_relay(to: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(to).await.unwrap();
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        });
        let (queue, mut queued) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                if queue.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(chunk) = queued.recv().await {
                for piece in chunk.chunks(16 * 1024) {
                    tokio::time::sleep(Duration::from_millis(16)).await;
                    if client_write.write_all(piece).await.is_err() {
                        return;
                    }
                }
            }
        });
    });
    addr
}

/// On a slow link the answer to a PING can wait behind megabytes of data: a peer whose data
/// keeps arriving is alive, even when its answer comes after the keepalive's timeout.
#[tokio::test]
async fn keepalive_keeps_a_tunnel_whose_answers_queue_behind_data() {
    let alice = key("alice");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_addr = listener.local_addr().unwrap();
    let gate = mux_gate(&[&alice]);
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let admitted = gate.admit(tcp).await.unwrap();
        // The gate does not ping here: only the client's keepalive is under test.
        let config = MuxConfig::default().without_keepalive();
        let mut server = MuxServer::new(admitted, &config).await.unwrap();
        while let Some(Ok(incoming)) = server.next_stream().await {
            tokio::spawn(handle(incoming, Service::Source));
        }
    });
    let relay = slow_downlink_relay(gate_addr).await;
    let credentials = Credentials::new(alice).with_mode(Mode::SealedFsMux);
    let admitted = linkgate::connect(relay, &credentials).await.unwrap();
    let config =
        MuxConfig::default().with_keepalive(Duration::from_millis(100), Duration::from_millis(300));
    let tunnel = Tunnel::new(admitted, &config).await.unwrap();
    // 3 MiB at about 1 MiB/s: the PONG waits behind up to a 2 MiB window of data, far past the
    // 300 ms timeout, while data keeps coming.
    let len = 3u64 << 20;
    let got = tokio::time::timeout(
        Duration::from_secs(20),
        fetch(tunnel.open().await.unwrap(), len),
    )
    .await
    .expect("the transfer did not finish");
    let got = got.expect("the keepalive closed a tunnel whose data was still arriving");
    assert_eq!(
        Sha256::digest(&got),
        Sha256::digest(payload(len as usize, 7))
    );
    assert!(!tunnel.is_closed());
}

/// A pool's tunnel that fails (here: a record that does not open) resets its connection, as a
/// sealed connection does after a failed record: the gate sees a reset, not an end.
#[tokio::test]
async fn a_pools_tunnel_that_fails_resets_its_connection() {
    let alice = key("alice");
    let gate = mux_gate(&[&alice]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = PoolConfig::default().with_tunnels(1);
    let pool = Pool::new(addr.to_string(), Credentials::new(alice), config).unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let mut admitted = gate.admit(stream).await.unwrap();
    if let Err(wrong) = fail_and_expect_a_reset(admitted.get_mut(), false).await {
        panic!("the pool's side: {wrong}");
    }
    drop(pool);
}
