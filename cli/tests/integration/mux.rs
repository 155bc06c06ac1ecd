//! `connect --mux` → `serve` with the real binary: thousands of connections and large transfers
//! through two tunnels, every byte checked; per-stream flow control, half-close and reset; a
//! tunnel dropping under its streams; `--no-mux`; an unreachable upstream.

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::operations::{sample, scrape};
use crate::support::process::{Linkgate, keygen, start_serve};
use crate::support::wire::fail_and_expect_a_reset;
use crate::support::{echo_upstream, payload, silent_upstream, start_connect};

/// A key directory holding alice's key, and `serve` (with `serve_extra`) in front of `upstream`.
struct TestGate {
    dir: tempfile::TempDir,
    keys: std::path::PathBuf,
    key: std::path::PathBuf,
    serve: Linkgate,
    addr: SocketAddr,
}

async fn gate(upstream: SocketAddr, serve_extra: &[&str]) -> TestGate {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let key = keygen(&keys, "alice");
    let (serve, addr) = start_serve(&keys, Some(upstream), serve_extra).await;
    TestGate {
        dir,
        keys,
        key,
        serve,
        addr,
    }
}

/// A gate (with `serve_extra`) in front of `upstream`, and `connect --mux` (two tunnels) in
/// front of it.
async fn mux_pair(
    upstream: SocketAddr,
    serve_extra: &[&str],
) -> (tempfile::TempDir, Linkgate, Linkgate, SocketAddr) {
    mux_pair_with(upstream, serve_extra, &[]).await
}

async fn mux_pair_with(
    upstream: SocketAddr,
    serve_extra: &[&str],
    connect_extra: &[&str],
) -> (tempfile::TempDir, Linkgate, Linkgate, SocketAddr) {
    let gate = gate(upstream, serve_extra).await;
    let mut args = vec!["--mux"];
    args.extend(connect_extra);
    let (connect, local) = start_connect(gate.addr, &gate.key, &args).await;
    (gate.dir, gate.serve, connect, local)
}

/// Counts the serve log's admission lines: one per tunnel, however many connections.
/// How many tunnels `serve` has admitted, counted once at least `expected` are logged (or after
/// 10 s): a gate may log its admission a little after `connect` logs the tunnel up.
async fn admissions(serve: &Linkgate, expected: usize) -> usize {
    let count = || {
        serve
            .stderr()
            .lines()
            .filter(|line| line.contains(" admitted ") && line.contains("mode=sealed-fs+mux"))
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count() < expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    count()
}

async fn round_trip(local: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let stream = TcpStream::connect(local).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let sending = async move {
        write.write_all(&data).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let (_, read_result) = tokio::join!(sending, read.read_to_end(&mut got));
    read_result.unwrap();
    got
}

/// `total` connections through `local`, `at_once` at a time, connection `i` echoing
/// `payload(len(i), i)`: every byte checked.
async fn round_trips(local: SocketAddr, total: u64, at_once: u64, len: fn(u64) -> usize) {
    for start in (0..total).step_by(at_once as usize) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in start..(start + at_once).min(total) {
            tasks.spawn(async move {
                let data = payload(len(i), i);
                assert_eq!(
                    round_trip(local, data.clone()).await,
                    data,
                    "connection {i}"
                );
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_ride_one_tunnel() {
    let upstream = echo_upstream().await;
    let (_dir, serve, connect, local) =
        mux_pair_with(upstream.addr, &[], &["--tunnels", "1"]).await;
    connect.wait_for_log(&["tunnel up", "slot=0"]).await;
    let total = 2_000u64;
    round_trips(local, total, 100, |i| 32 + (i % 500) as usize).await;
    // Every connection reached the upstream as its own connection, over one admission.
    assert_eq!(
        upstream.accepts.load(std::sync::atomic::Ordering::SeqCst),
        total as usize
    );
    assert_eq!(admissions(&serve, 1).await, 1, "{}", serve.stderr());
    serve
        .wait_for_log(&["closed", "stream=", "key_id=alice", "bytes_in="])
        .await;
}

/// Metrics count each stream as a connection (opened, closed, bytes by key id), and the
/// tunnels carrying them in `tunnels_open`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_streams_as_connections_and_tunnels_apart() {
    let upstream = echo_upstream().await;
    let port = crate::support::free_port().await;
    let metrics = format!("127.0.0.1:{port}");
    let (_dir, serve, connect, local) =
        mux_pair_with(upstream.addr, &["--metrics", &metrics], &["--tunnels", "2"]).await;
    serve.wait_for_log(&["serving metrics"]).await;
    connect.wait_for_log(&["tunnel up", "slot=1"]).await;
    connect.wait_for_log(&["tunnel up", "slot=0"]).await;
    // 20 connections of 100 bytes each way.
    round_trips(local, 20, 5, |_| 100).await;
    // A stream is counted closed a moment before its bytes, and the gate counts a tunnel open
    // after its own side of the handshake: polled until every figure is in.
    let expected = [
        (
            "linkgate_connections_closed_total{service=\"default\",result=\"ok\"}",
            20.0,
        ),
        ("linkgate_connections_open{service=\"default\"}", 0.0),
        (
            "linkgate_bytes_total{service=\"default\",key_id=\"alice\",direction=\"in\"}",
            2000.0,
        ),
        (
            "linkgate_bytes_total{service=\"default\",key_id=\"alice\",direction=\"out\"}",
            2000.0,
        ),
        // Two admissions, the tunnels, both still open.
        (
            "linkgate_admissions_total{service=\"default\",key_id=\"alice\",mode=\"sealed-fs+mux\"}",
            2.0,
        ),
        ("linkgate_tunnels_open{service=\"default\"}", 2.0),
    ];
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(&metrics).await;
        let has = |(prefix, value): &(&str, f64)| {
            text.lines()
                .any(|line| line.starts_with(prefix) && line.ends_with(&format!(" {value}")))
        };
        if expected.iter().all(has) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (prefix, value) in expected {
        assert_eq!(sample(&text, prefix), value, "{prefix}\n{text}");
    }
    // When connect goes, so do its tunnels.
    drop(connect);
    let mut open = f64::NAN;
    for _ in 0..100 {
        open = sample(
            &scrape(&metrics).await,
            "linkgate_tunnels_open{service=\"default\"}",
        );
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 0.0, "{}", serve.stderr());
}

/// CPU time each of `pid`'s tunnel threads has used, in nanoseconds (from schedstat).
fn tunnel_thread_cpu(pid: u32) -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if !name.starts_with("linkgate-tunnel") {
            continue;
        }
        let schedstat = std::fs::read_to_string(task.join("schedstat")).unwrap();
        let ns = schedstat
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        threads.push((name.trim().to_owned(), ns));
    }
    threads.sort();
    threads
}

/// With two tunnel threads on each side: `connect` accepts local connections on both of its
/// threads, each carrying them over a tunnel of its own, and `serve` runs the two tunnels on its
/// two threads. Seen from outside: both tunnel ids in connect's stream lines, and CPU time on
/// every tunnel thread of both processes, well beyond what starting up costs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_tunnels_spread_over_the_tunnel_threads() {
    let upstream = echo_upstream().await;
    let threads = ["--tunnel-threads", "2"];
    let (_dir, serve, connect, local) = mux_pair_with(upstream.addr, &threads, &threads).await;
    connect.wait_for_log(&["tunnel up", "slot=1"]).await;
    connect.wait_for_log(&["tunnel up", "slot=0"]).await;
    assert!(connect.stderr().contains("tunnel_threads=2"));
    let before = [
        tunnel_thread_cpu(serve.pid()),
        tunnel_thread_cpu(connect.pid()),
    ];
    for side in &before {
        assert_eq!(side.len(), 2, "{side:?}");
    }
    let total = 1_000u64;
    round_trips(local, total, 50, |_| 64).await;
    assert_eq!(
        upstream.accepts.load(std::sync::atomic::Ordering::SeqCst),
        total as usize
    );
    assert_eq!(admissions(&serve, 2).await, 2, "{}", serve.stderr());
    let tunnels: std::collections::HashSet<String> = connect
        .stderr()
        .lines()
        .filter(|line| line.contains(" closed ") && line.contains("stream="))
        .filter_map(|line| line.split_whitespace().find(|f| f.starts_with("conn=")))
        .map(str::to_owned)
        .collect();
    assert_eq!(tunnels.len(), 2, "connections rode {tunnels:?}");
    let after = [
        tunnel_thread_cpu(serve.pid()),
        tunnel_thread_cpu(connect.pid()),
    ];
    for (side, (before, after)) in ["serve", "connect"].iter().zip(before.iter().zip(&after)) {
        for ((name, was), (_, is)) in before.iter().zip(after) {
            // A round trip costs tens of microseconds per side: 1,000 spread over two threads
            // give each well over 2 ms.
            assert!(
                is - was > 2_000_000,
                "{side}'s {name} used {} µs for 1,000 connections",
                (is - was) / 1000
            );
        }
    }
}

/// The threads' SO_REUSEPORT sockets do not let a second `connect` share the port: it fails
/// to start, as it would without them, and the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connect_on_the_same_port_is_refused() {
    let upstream = echo_upstream().await;
    let threads = ["--tunnel-threads", "2"];
    let gate = gate(upstream.addr, &[]).await;
    let (first, local) =
        start_connect(gate.addr, &gate.key, &["--mux", "--tunnel-threads", "2"]).await;
    first.wait_for_log(&["tunnel up", "slot=1"]).await;
    let (server, local_text) = (gate.addr.to_string(), local.to_string());
    let mut second = Linkgate::spawn(&[
        "connect",
        "--listen",
        &local_text,
        "--server",
        &server,
        "--key",
        gate.key.to_str().unwrap(),
        "--mux",
        threads[0],
        threads[1],
    ]);
    let status = second
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the second connect exits");
    assert!(!status.success());
    second.wait_for_log(&["cannot listen on", "in use"]).await;
    let data = payload(1000, 7);
    assert_eq!(round_trip(local, data.clone()).await, data);
    drop(first);
}

/// Echoes `payload(100, i)` through `connect`'s Unix socket at `path`, for 200 connections.
async fn unix_round_trips(path: &std::path::Path) {
    for i in 0..200u64 {
        let mut client = tokio::net::UnixStream::connect(path).await.unwrap();
        let data = payload(100, i);
        client.write_all(&data).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data, "connection {i}");
    }
}

/// Sockets that cannot be bound again per thread are shared by the tunnel threads: a Unix
/// socket, and a TCP socket systemd passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_threads_share_a_unix_socket_and_a_systemd_socket() {
    let upstream = echo_upstream().await;
    let gate = gate(upstream.addr, &[]).await;
    let (server, key) = (gate.addr.to_string(), gate.key.to_str().unwrap().to_owned());
    let path = gate.dir.path().join("local.sock");
    let listen = format!("unix:{}", path.display());
    let threads = ["--mux", "--tunnel-threads", "2"];
    let mut args = vec![
        "connect", "--listen", &listen, "--server", &server, "--key", &key,
    ];
    args.extend(threads);
    let unix = Linkgate::spawn(&args);
    unix.wait_for_log(&["listening", "tunnel_threads=2"]).await;
    unix_round_trips(&path).await;
    drop(unix);

    if !crate::support::systemd_socket_activate_available() {
        println!("skipped the systemd half: systemd-socket-activate is not installed");
        return;
    }
    let port = crate::support::free_port().await;
    let mut command = std::process::Command::new("systemd-socket-activate");
    command.args([
        "-l",
        &format!("127.0.0.1:{port}"),
        "--fdname=local",
        "-E",
        "RUST_LOG=info",
    ]);
    command.arg(crate::support::process::BIN);
    command.args([
        "connect",
        "--listen",
        "systemd:local",
        "--server",
        &server,
        "--key",
        &key,
    ]);
    command.args(threads);
    let activated = Linkgate::spawn_command(command);
    // The first connection (once the activator listens) starts connect, which takes the
    // socket from systemd.
    let local: SocketAddr = ([127, 0, 0, 1], port).into();
    let first = crate::support::connect_when_listening(local).await;
    let echoed = crate::support::echo_through(first, payload(10, 1));
    let echoed = tokio::time::timeout(Duration::from_secs(20), echoed)
        .await
        .expect("the activated connect answers");
    assert_eq!(echoed, payload(10, 1));
    activated
        .wait_for_log(&["listening", "tunnel_threads=2"])
        .await;
    round_trips(local, 200, 20, |_| 100).await;
}

type Counts = std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>;

/// A relay to `target` that counts the bytes it passes: [toward target, back].
async fn counting_relay(target: SocketAddr) -> (SocketAddr, Counts) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts: Counts = std::sync::Arc::new([0, 0].map(std::sync::atomic::AtomicU64::new));
    let counted = std::sync::Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            for (way, mut from, mut to) in [
                (0, client_read, server_write),
                (1, server_read, client_write),
            ] {
                let counted = std::sync::Arc::clone(&counted);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = from.read(&mut buf).await {
                        counted[way].fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                        if to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown().await;
                });
            }
        }
    });
    (addr, counts)
}

/// Bytes each way through `counts` during `quiet` of an idle tunnel.
async fn idle_traffic(counts: &Counts, quiet: Duration) -> [u64; 2] {
    let read = || {
        counts
            .each_ref()
            .map(|c| c.load(std::sync::atomic::Ordering::SeqCst))
    };
    let before = read();
    tokio::time::sleep(quiet).await;
    let after = read();
    [after[0] - before[0], after[1] - before[1]]
}

/// `--tunnel-keepalive` on either side: an idle tunnel carries a PING and its answer every
/// 100 ms from the side that asked for it, and nothing with `off` on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_keepalive_pings_as_each_side_is_told() {
    let upstream = echo_upstream().await;
    // (connect's setting, serve's, which directions must carry pings or answers)
    for (client, gate_side, expect_traffic) in [
        ("100ms,1s", "off", true),
        ("off", "100ms,1s", true),
        ("off", "off", false),
    ] {
        let gate = gate(upstream.addr, &["--tunnel-keepalive", gate_side]).await;
        let (relay, counts) = counting_relay(gate.addr).await;
        let (connect, _) = start_connect(
            relay,
            &gate.key,
            &["--mux", "--tunnels", "1", "--tunnel-keepalive", client],
        )
        .await;
        connect.wait_for_log(&["tunnel up", "slot=0"]).await;
        // Past the settings exchange and its acknowledgements.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let [toward_gate, back] = idle_traffic(&counts, Duration::from_secs(1)).await;
        if expect_traffic {
            // About ten PINGs and ten answers, each a sealed record of 39 bytes; at least three
            // each way even on a loaded machine (an idle tunnel with keepalive off sends none).
            assert!(
                toward_gate >= 117 && back >= 117,
                "connect {client}, serve {gate_side}: {toward_gate} bytes toward the gate, {back} back"
            );
        } else {
            assert_eq!([toward_gate, back], [0, 0], "keepalive off on both sides");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_at_once_through_one_tunnel_are_checked_by_hash() {
    let upstream = echo_upstream().await;
    let (_dir, serve, connect, local) =
        mux_pair_with(upstream.addr, &[], &["--tunnels", "1"]).await;
    connect.wait_for_log(&["tunnel up", "slot=0"]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..3u64 {
        tasks.spawn(async move {
            let data = payload(64 << 20, 100 + i);
            let want = Sha256::digest(&data);
            let got = round_trip(local, data).await;
            assert_eq!(got.len(), 64 << 20, "transfer {i} was cut short");
            assert_eq!(Sha256::digest(&got), want, "transfer {i}");
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(admissions(&serve, 1).await, 1);
}

/// An upstream that answers each connection's 8-byte length with that many bytes of
/// `payload(len, 9)`, then ends.
async fn source_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut len = [0u8; 8];
                if stream.read_exact(&mut len).await.is_ok() {
                    let data = payload(u64::from_be_bytes(len) as usize, 9);
                    if stream.write_all(&data).await.is_ok() {
                        let _ = stream.shutdown().await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_stall_the_others() {
    let (_dir, _serve, connect, local) = mux_pair(source_upstream().await, &[]).await;
    connect.wait_for_log(&["tunnel up", "slot=1"]).await;
    // Several clients ask for 16 MiB and read nothing (more than both tunnels' streams hold).
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(local).await.unwrap();
        stream
            .write_all(&(16u64 << 20).to_be_bytes())
            .await
            .unwrap();
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile 32 MiB reaches a client that reads (bounded: a stall fails the test).
    let fast = async {
        let mut stream = TcpStream::connect(local).await.unwrap();
        stream
            .write_all(&(32u64 << 20).to_be_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(60), fast)
        .await
        .expect("the reading client stalled behind the others");
    assert_eq!(Sha256::digest(&got), Sha256::digest(payload(32 << 20, 9)));
    // The stalled clients lose nothing once they read.
    let want = Sha256::digest(payload(16 << 20, 9));
    for mut stream in stalled {
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(Sha256::digest(&got), want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_and_reset_reach_the_upstream_per_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (_dir, _serve, _connect, local) = mux_pair(upstream, &[]).await;

    // Half-close: the client ends its side; the upstream reads the end, then still answers.
    let mut client = TcpStream::connect(local).await.unwrap();
    let (mut server_side, _) = listener.accept().await.unwrap();
    client.write_all(b"question").await.unwrap();
    client.shutdown().await.unwrap();
    let mut asked = Vec::new();
    server_side.read_to_end(&mut asked).await.unwrap();
    assert_eq!(asked, b"question");
    server_side
        .write_all(b"answer after your end")
        .await
        .unwrap();
    server_side.shutdown().await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"answer after your end");

    // Reset by the client: the upstream sees a reset, not an end.
    let client = TcpStream::connect(local).await.unwrap();
    let (mut server_side, _) = listener.accept().await.unwrap();
    client.set_zero_linger().unwrap();
    drop(client);
    let mut buf = [0u8; 16];
    let err = server_side
        .read(&mut buf)
        .await
        .expect_err("the upstream read a clean end for a reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);

    // Reset by the upstream: the client sees a reset.
    let mut client = TcpStream::connect(local).await.unwrap();
    client.write_all(b"x").await.unwrap();
    let (server_side, _) = listener.accept().await.unwrap();
    server_side.set_zero_linger().unwrap();
    drop(server_side);
    let err = client
        .read(&mut buf)
        .await
        .expect_err("the client read a clean end for a reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_tunnel_resets_its_connections_and_a_new_one_takes_over() {
    let upstream = source_upstream().await;
    let TestGate {
        dir: _dir,
        keys,
        key,
        serve,
        addr: gate,
    } = gate(upstream, &[]).await;
    let (connect, local) = start_connect(gate, &key, &["--mux", "--tunnels", "1"]).await;
    connect.wait_for_log(&["tunnel up", "slot=0"]).await;
    let mut client = TcpStream::connect(local).await.unwrap();
    client
        .write_all(&(256u64 << 20).to_be_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    client.read_exact(&mut buf).await.unwrap();
    // The gate dies mid-transfer.
    drop(serve);
    let outcome = async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(err) => return Err(err),
            }
        }
    };
    let err = outcome
        .await
        .expect_err("a dropped tunnel looked like a complete transfer");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    connect
        .wait_for_log(&["tunnel closed: its open streams are reset"])
        .await;
    // A gate on the same address again: new connections get a new tunnel.
    let gate_text = gate.to_string();
    let serve = Linkgate::spawn(&[
        "serve",
        "--listen",
        &gate_text,
        "--keys",
        keys.to_str().unwrap(),
        "--upstream",
        &upstream.to_string(),
    ]);
    serve.wait_for_log(&["listening"]).await;
    connect
        .wait_for_log(&["tunnel up", "slot=0", "00000001"])
        .await;
    let mut client = TcpStream::connect(local).await.unwrap();
    client.write_all(&1000u64.to_be_bytes()).await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, payload(1000, 9));
}

#[tokio::test]
async fn a_gate_with_no_mux_refuses_the_mode() {
    let upstream = echo_upstream().await;
    let (_dir, serve, connect, local) = mux_pair(upstream.addr, &["--no-mux"]).await;
    // The gate's reason, and the client side's.
    serve
        .wait_for_log(&["connection rejected", "multiplexed tunnels are not allowed"])
        .await;
    connect
        .wait_for_log(&[
            "tunnel refused by the gate",
            "the gate refused mode sealed-fs+mux: it does not allow multiplexed tunnels",
        ])
        .await;
    // A local connection is reset, not answered.
    assert_reset_before_any_answer(local, b"").await;
    assert_eq!(
        upstream.accepts.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // Both tunnels (two threads) were tried once between them, not on the usual backoff: each
    // refusal adds to the gate's penalty for this host.
    let refusals = serve
        .stderr()
        .matches("multiplexed tunnels are not allowed")
        .count();
    assert_eq!(refusals, 1, "{}", serve.stderr());
}

/// Connects to `local`, sends `request` and asserts the connection is reset without an answer
/// or a clean end.
async fn assert_reset_before_any_answer(local: SocketAddr, request: &[u8]) {
    if let Err(outcome) = reset_before_any_answer(local, request).await {
        panic!("a reset, never an answer or a clean end: {outcome}");
    }
}

/// Whether a connection to `local` that sends `request` is reset before any answer; if not,
/// what happened instead. A quick refusal can land at any of the three steps: `connect()`
/// itself reports it when the reset arrives before the handshake's completion is polled, and
/// a write that meets it fails with it (consuming it, so a read after that may see the end).
async fn reset_before_any_answer(local: SocketAddr, request: &[u8]) -> Result<(), String> {
    let is_reset = |err: &std::io::Error| {
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        )
    };
    let mut client = match TcpStream::connect(local).await {
        Ok(client) => client,
        Err(err) if is_reset(&err) => return Ok(()),
        Err(err) => panic!("connect to {local}: {err}"),
    };
    let written = client.write_all(request).await;
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
        .await
        .expect("the connection was neither answered nor reset");
    if written.as_ref().is_err_and(is_reset) || read.as_ref().is_err_and(is_reset) {
        Ok(())
    } else {
        Err(format!("write {written:?}, read {read:?}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_refuses_that_connection_alone() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = unused.local_addr().unwrap();
    drop(unused);
    let (_dir, serve, connect, local) = mux_pair(nowhere, &[]).await;
    connect.wait_for_log(&["tunnel up", "slot=1"]).await;
    for _ in 0..14 {
        assert_reset_before_any_answer(local, b"hello").await;
    }
    serve
        .wait_for_log(&["upstream unreachable: refusing the stream", "stream="])
        .await;
    // At most five lines per tunnel (two) in ten seconds: the rest are counted, not logged.
    let lines = serve.stderr().matches("refusing the stream").count();
    assert!((1..=10).contains(&lines), "{lines} refusal lines");
    connect
        .wait_for_log(&["closed after an error", "refused the stream"])
        .await;
    // The tunnels stayed up: still the first two admissions.
    assert_eq!(admissions(&serve, 2).await, 2);
    assert!(!connect.stderr().contains("tunnel closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_is_given_up_at_the_connect_timeout() {
    let silent = silent_upstream().await;
    let (_dir, serve, connect, local) =
        mux_pair(silent.addr, &["--upstream-connect-timeout", "400ms"]).await;
    connect.wait_for_log(&["tunnel up", "slot=1"]).await;
    let started = std::time::Instant::now();
    assert_reset_before_any_answer(local, b"hello").await;
    let waited = started.elapsed();
    // Refused by the timeout (not at once, as for a closed port), and by this one, not the
    // default 5 s.
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(4),
        "refused after {waited:?}"
    );
    serve
        .wait_for_log(&[
            "upstream unreachable: refusing the stream",
            "connect timed out",
        ])
        .await;
    connect
        .wait_for_log(&["closed after an error", "refused the stream"])
        .await;
    assert_eq!(admissions(&serve, 2).await, 2, "the tunnels stayed up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stream_gets_its_own_proxy_header_with_the_key_id() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (_dir, serve, _connect, local) = mux_pair(upstream_addr, &["--send-proxy", "v2"]).await;
    for i in 0..3u8 {
        let mut client = TcpStream::connect(local).await.unwrap();
        client.write_all(&[i; 4]).await.unwrap();
        let (mut stream, _) = upstream.accept().await.unwrap();
        let header = crate::balancer::read_v2_header(&mut stream).await;
        assert_eq!(
            linkgate::proxy_protocol::key_id_of(&header).as_deref(),
            Some("alice")
        );
        let mut first = [0u8; 4];
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(first, [i; 4], "the header came before the stream's bytes");
    }
    assert_eq!(admissions(&serve, 2).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gate_lets_open_streams_finish_and_takes_no_new_ones() {
    let upstream = source_upstream().await;
    let TestGate {
        dir: _dir,
        key,
        mut serve,
        addr: gate,
        ..
    } = gate(upstream, &["--drain-timeout", "20s"]).await;
    let (connect, local) =
        start_connect(gate, &key, &["--mux", "--tunnels", "1", "--timeout", "1s"]).await;
    connect.wait_for_log(&["tunnel up", "slot=0"]).await;
    let len = 32u64 << 20;
    let mut client = TcpStream::connect(local).await.unwrap();
    client.write_all(&len.to_be_bytes()).await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = vec![0u8; 1 << 20];
    client.read_exact(&mut got).await.unwrap();
    serve.signal("TERM");
    serve.wait_for_log(&["received SIGTERM"]).await;
    // HTTP/2's graceful shutdown takes a round trip (GOAWAY, PING, final GOAWAY): streams
    // opened before it completes are still served. After it, a new connection is not carried.
    let request = 8u64.to_be_bytes();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(outcome) = reset_before_any_answer(local, &request).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new connections are still carried 10 s after the drain began: {outcome}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once refused, refused for good.
    assert_reset_before_any_answer(local, &request).await;
    // The open stream still completes, every byte.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    got.extend_from_slice(&rest);
    assert_eq!(
        Sha256::digest(&got),
        Sha256::digest(payload(len as usize, 9))
    );
    let status = serve.wait_exit(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    serve.wait_for_log(&["tunnel closed", "streams="]).await;
}

/// A gate (`serve_extra` added) with keys alice and bob, a `connect --mux` with one tunnel under
/// a copy of alice's key, and one carried connection that has been echoed; then alice's key is
/// removed from the gate and the gate reloads.
async fn revoke_under_an_open_stream(
    serve_extra: &[&str],
) -> (
    TestGate,
    Linkgate,
    SocketAddr,
    TcpStream,
    crate::support::Upstream,
) {
    let upstream = echo_upstream().await;
    let test_gate = gate(upstream.addr, serve_extra).await;
    keygen(&test_gate.keys, "bob");
    let client_key = test_gate.dir.path().join("alice.key");
    std::fs::copy(&test_gate.key, &client_key).unwrap();
    let (connect, local) = start_connect(
        test_gate.addr,
        &client_key,
        &["--mux", "--tunnels", "1", "--timeout", "1s"],
    )
    .await;
    connect.wait_for_log(&["tunnel up", "slot=0"]).await;
    let mut client = TcpStream::connect(local).await.unwrap();
    client.write_all(b"ping").await.unwrap();
    client.read_exact(&mut [0u8; 4]).await.unwrap();
    std::fs::remove_file(&test_gate.key).unwrap();
    test_gate.serve.signal("HUP");
    (test_gate, connect, local, client, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_key_closes_the_tunnel_and_resets_its_connections() {
    let (
        TestGate {
            dir: _dir, serve, ..
        },
        connect,
        _local,
        mut client,
        _upstream,
    ) = revoke_under_an_open_stream(&["--drop-revoked"]).await;
    serve
        .wait_for_log(&["tunnel closed: its key was revoked", "key_id=alice"])
        .await;
    // Its stream is logged as revoked too, not as an error ("streams=" is not "stream=").
    serve
        .wait_for_log(&[
            "closed: its key was revoked by a reload (--drop-revoked)",
            "stream=",
            "key_id=alice",
        ])
        .await;
    let mut rest = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
        .await
        .expect("the connection stayed open after its key was revoked");
    let err = outcome.expect_err("a revoked tunnel's connection ended cleanly");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    // The pool cannot get a new tunnel with the revoked key: it says so.
    connect
        .wait_for_log(&["tunnel refused by the gate", "denied"])
        .await;
}

/// A tunnel and its streams count against --max-connections-per-key: with a bound of 2, one
/// tunnel carries one connection at a time, and the next is refused alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_streams_count_against_its_share() {
    let upstream = echo_upstream().await;
    let TestGate {
        dir: _dir,
        key,
        serve,
        addr: gate,
        ..
    } = gate(upstream.addr, &["--max-connections-per-key", "2"]).await;
    let (connect, local) = start_connect(gate, &key, &["--mux", "--tunnels", "1"]).await;
    connect.wait_for_log(&["tunnel up", "slot=0"]).await;
    let mut held = TcpStream::connect(local).await.unwrap();
    held.write_all(b"ping").await.unwrap();
    held.read_exact(&mut [0u8; 4]).await.unwrap();
    assert_reset_before_any_answer(local, b"more").await;
    serve
        .wait_for_log(&[
            "key at --max-connections-per-key: refusing the stream",
            "key_id=alice",
            "bound=2",
        ])
        .await;
    // The held one goes on; once it ends, its place is free again.
    held.write_all(b"pong").await.unwrap();
    held.read_exact(&mut [0u8; 4]).await.unwrap();
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Refused while the place is not free yet: a reset that can come as soon as connect()
        // itself (see reset_before_any_answer).
        let answered = match TcpStream::connect(local).await {
            Ok(mut next) => {
                let _ = next.write_all(b"next").await;
                next.read_exact(&mut [0u8; 4]).await.is_ok()
            }
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(err) => panic!("connect to {local}: {err}"),
        };
        if answered {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_keeps_its_open_streams_but_opens_no_new_ones() {
    let (
        TestGate {
            dir: _dir, serve, ..
        },
        connect,
        local,
        mut client,
        _upstream,
    ) = revoke_under_an_open_stream(&[]).await;
    let mut echoed = [0u8; 4];
    serve
        .wait_for_log(&[
            "tunnel's key was revoked by a reload: no new streams",
            "key_id=alice",
        ])
        .await;
    // A new connection is not carried: not by the old tunnel (GOAWAY), nor by a new one (the
    // key is denied). Before this rule the old tunnel carried it, with its echo.
    let request = b"new!";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(outcome) = reset_before_any_answer(local, request).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new connections are still carried 10 s after the key was revoked: {outcome}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_reset_before_any_answer(local, request).await;
    connect
        .wait_for_log(&["tunnel refused by the gate", "denied"])
        .await;
    // The stream opened before the reload goes on, as a connection does without --drop-revoked.
    client.write_all(b"pong").await.unwrap();
    client.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"pong");
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    serve
        .wait_for_log(&["closed", "stream=", "key_id=alice", "bytes_in=8"])
        .await;
}

/// An HTTP/2 frame as a hand-made client sees it.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(from: &mut R) -> Frame {
    let mut head = [0u8; 9];
    from.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    from.read_exact(&mut payload).await.unwrap();
    Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A CONNECT for the gate's upstream in HPACK without the dynamic table or Huffman: `:method`
/// (static name 2) and `:authority` (static name 1), each a literal value.
fn connect_headers(stream: u32) -> Vec<u8> {
    let authority = b"upstream.linkgate.invalid:0";
    let mut block = vec![0x02, 7];
    block.extend_from_slice(b"CONNECT");
    block.extend_from_slice(&[0x01, authority.len() as u8]);
    block.extend_from_slice(authority);
    frame(HEADERS, 0x4, stream, &block)
}

/// The first HEADERS or RST_STREAM for `stream`, answering SETTINGS (never PING).
async fn answer_to<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tunnel: &mut S,
    stream: u32,
) -> Frame {
    loop {
        let got = read_frame(tunnel).await;
        if got.kind == SETTINGS && got.flags & 0x1 == 0 {
            tunnel
                .write_all(&frame(SETTINGS, 0x1, 0, &[]))
                .await
                .unwrap();
        } else if got.stream == stream && (got.kind == HEADERS || got.kind == RST_STREAM) {
            return got;
        }
    }
}

/// A tunnel to `test_gate` spoken by hand: the HTTP/2 preface, SETTINGS and a CONNECT on stream
/// 1, answered `200` (the static table's entry 8) with the stream left open.
async fn raw_tunnel_with_a_stream(test_gate: &TestGate) -> linkgate::Admitted<TcpStream> {
    let alice = linkgate::Key::from_file(&test_gate.key).unwrap();
    let credentials = linkgate::Credentials::new(alice).with_mode(linkgate::Mode::SealedFsMux);
    let mut tunnel = linkgate::connect(test_gate.addr, &credentials)
        .await
        .unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(connect_headers(1));
    tunnel.write_all(&hello).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), answer_to(&mut tunnel, 1))
        .await
        .expect("no answer to the first stream");
    assert_eq!(
        (first.kind, first.payload.as_slice()),
        (HEADERS, &[0x88u8][..])
    );
    assert_eq!(first.flags & END_STREAM, 0);
    tunnel
}

/// After a revocation the gate sends GOAWAY, but h2 takes new streams until the client answers
/// the PING that follows it. A client that never answers must still open no connection under
/// the revoked key: its streams are refused. Hand-made frames, as no HTTP/2 library lets a
/// client leave a PING unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_ignores_goaway_opens_nothing_under_a_revoked_key() {
    let upstream = echo_upstream().await;
    let test_gate = gate(upstream.addr, &[]).await;
    keygen(&test_gate.keys, "bob");
    let mut tunnel = raw_tunnel_with_a_stream(&test_gate).await;

    std::fs::remove_file(&test_gate.key).unwrap();
    test_gate.serve.signal("HUP");
    let goaway = async { while read_frame(&mut tunnel).await.kind != GOAWAY {} };
    tokio::time::timeout(Duration::from_secs(10), goaway)
        .await
        .expect("no GOAWAY after the revocation");
    // The PING after the GOAWAY is left unanswered; a new stream arrives after it.
    tunnel.write_all(&connect_headers(3)).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), answer_to(&mut tunnel, 3))
        .await
        .expect("no answer to a stream opened after the revocation");
    let was_refused = refused.kind == RST_STREAM
        || (refused.kind == HEADERS
            && refused.flags & END_STREAM != 0
            && refused.payload != [0x88]);
    assert!(
        was_refused,
        "a stream under a revoked key was accepted: frame {:#x} flags {:#x} {:?}",
        refused.kind, refused.flags, refused.payload
    );
    test_gate
        .serve
        .wait_for_log(&[
            "tunnel's key was revoked: refusing the stream",
            "key_id=alice",
        ])
        .await;
    // Nothing reached the upstream for the refused stream: its one connection is the first
    // stream's. (A connect made before the refusal is accepted by then; the pause covers the
    // echo's accept loop.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        upstream.accepts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the refused stream reached the upstream"
    );
}

#[test]
fn mux_over_plain_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "alice");
    let out = crate::support::process::run(&[
        "connect",
        "--mux",
        "--mode",
        "plain",
        "--listen",
        "127.0.0.1:0",
        "--key",
        key.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("mode plain cannot be multiplexed (use --mode sealed-fs or sealed)"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_failing_reaches_a_quiet_client_after_its_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (_dir, serve, connect, local) = mux_pair(upstream, &[]).await;
    let mut client = TcpStream::connect(local).await.unwrap();
    let (mut server_side, _) = listener.accept().await.unwrap();
    server_side.write_all(b"bye").await.unwrap();
    server_side.shutdown().await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"bye");
    // The client could still send but is quiet; the tunnel now fails. `connect` must not wait
    // for the client to speak before resetting it.
    drop(serve);
    connect
        .wait_for_log(&["closed after an error (reset)", "stream="])
        .await;
    // The reset arrives without the client sending anything: its socket reports it (EPIPE in
    // Linux's terms, as the client had the gate's end already). Polled, because `connect` logs
    // the line just before it resets the connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let err = loop {
        if let Some(err) = client.take_error().unwrap() {
            break err;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the quiet client's connection was not reset"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_off_at_the_drain_deadline_is_reset_not_ended() {
    let upstream = echo_upstream().await;
    let TestGate {
        dir: _dir,
        key,
        serve: _serve,
        addr: gate,
        ..
    } = gate(upstream.addr, &[]).await;
    let (mut connect, local) =
        start_connect(gate, &key, &["--mux", "--drain-timeout", "500ms"]).await;
    let mut client = TcpStream::connect(local).await.unwrap();
    client.write_all(b"hi").await.unwrap();
    let mut echoed = [0u8; 2];
    client.read_exact(&mut echoed).await.unwrap();
    connect.signal("TERM");
    let status = connect.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some(),
        "connect did not exit after its drain deadline"
    );
    let mut buf = [0u8; 8];
    let read = client.read(&mut buf).await;
    assert!(
        matches!(&read, Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset),
        "a connection cut off at the deadline must be reset, not ended: {read:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_still_open_at_the_gates_drain_deadline_are_cut_off_reset_and_counted() {
    let upstream = echo_upstream().await;
    let TestGate {
        dir: _dir,
        key,
        mut serve,
        addr: gate,
        ..
    } = gate(upstream.addr, &["--drain-timeout", "500ms"]).await;
    let (_connect, local) = start_connect(gate, &key, &["--mux", "--tunnels", "1"]).await;
    // Two connections, two streams of the one tunnel.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut client = TcpStream::connect(local).await.unwrap();
        client.write_all(b"hi").await.unwrap();
        let mut echoed = [0u8; 2];
        client.read_exact(&mut echoed).await.unwrap();
        clients.push(client);
    }
    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some(),
        "serve did not exit after its drain deadline"
    );
    // The gate's side: each stream is logged as cut off, not as an error …
    let line = serve
        .wait_for_log(&["closed: still open at shutdown (cut off", "stream="])
        .await;
    assert!(line.contains("key_id=alice"), "{line}");
    let stderr = serve.stderr();
    let cut_off = |line: &&str| line.contains("closed: still open at shutdown (cut off");
    assert_eq!(
        stderr
            .lines()
            .filter(cut_off)
            .filter(|line| line.contains("stream="))
            .count(),
        2,
        "{stderr}"
    );
    // … and so is the tunnel that carried them, once.
    let tunnel: Vec<&str> = stderr
        .lines()
        .filter(cut_off)
        .filter(|line| line.contains("tunnel closed"))
        .collect();
    assert_eq!(tunnel.len(), 1, "{stderr}");
    assert!(
        tunnel[0].contains("streams=2") && tunnel[0].contains("key_id=alice"),
        "{}",
        tunnel[0]
    );
    assert!(!stderr.contains("closed after an error"), "{stderr}");
    // … and the "stopped" line counts the streams, not the tunnel that carried them.
    let stopped = serve.wait_for_log(&["linkgate serve: stopped"]).await;
    assert!(
        stopped.contains("closed_at_drain=2") && stopped.contains("tunnels_closed_at_drain=1"),
        "{stopped}"
    );
    // The clients' side: a reset, never a clean end.
    for mut client in clients {
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the client's connection stayed open");
        assert!(
            matches!(&read, Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset),
            "a stream cut off at the gate's deadline must reach its client as a reset: {read:?}"
        );
    }
}

/// A tunnel whose record fails, or that is cut off without close_notify, is reset by the gate,
/// as a sealed connection is (PROTOCOL.md, "Failure"): before its HTTP/2 preface, and with a
/// stream open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_with_a_bad_record_or_cut_short_is_reset_by_the_gate() {
    let upstream = echo_upstream().await;
    let test_gate = gate(upstream.addr, &[]).await;
    let alice = linkgate::Key::from_file(&test_gate.key).unwrap();
    let credentials = linkgate::Credentials::new(alice).with_mode(linkgate::Mode::SealedFsMux);
    for (with_a_stream, cut_short) in [(false, false), (true, false), (true, true)] {
        let mut tunnel = if with_a_stream {
            raw_tunnel_with_a_stream(&test_gate).await
        } else {
            linkgate::connect(test_gate.addr, &credentials)
                .await
                .unwrap()
        };
        if let Err(wrong) = fail_and_expect_a_reset(tunnel.get_mut(), cut_short).await {
            panic!("stream {with_a_stream}, cut short {cut_short}: {wrong}");
        }
    }
    test_gate
        .serve
        .wait_for_log(&[
            "tunnel failed before its first stream",
            "record failed authentication",
        ])
        .await;
    for cause in ["record failed authentication", "truncated"] {
        test_gate
            .serve
            .wait_for_log(&[
                "tunnel failed: its open streams were reset",
                cause,
                "streams=1",
            ])
            .await;
    }
}

/// A tunnel still open at the gate's drain deadline is reset, as a connection cut off there is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_cut_off_at_the_drain_deadline_is_reset() {
    let upstream = echo_upstream().await;
    let test_gate = gate(upstream.addr, &["--drain-timeout", "300ms"]).await;
    let mut tunnel = raw_tunnel_with_a_stream(&test_gate).await;
    test_gate.serve.signal("TERM");
    // The stream stays open past the deadline; the raw bytes (a GOAWAY, then nothing) are read
    // until the connection ends.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tunnel.get_mut().read_to_end(&mut rest),
    )
    .await
    .expect("the gate never ended the tunnel");
    assert!(
        matches!(&read, Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset),
        "a reset, not an end: {read:?} after {} bytes",
        rest.len()
    );
    test_gate
        .serve
        .wait_for_log(&[
            "tunnel closed: still open at shutdown (cut off",
            "streams=1",
        ])
        .await;
}
