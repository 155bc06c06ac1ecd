//! Faults at small scale: a FIFO among the keys, a writable key directory, a stderr nobody
//! reads, resets in either direction, and per-source penalties through the real binary.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use linkgate::{Credentials, Key, Mode};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::operations::{sample, scrape};
use crate::support::process::{self, keygen, run, start_serve};
use crate::support::start_connect;

#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_or_a_writable_directory_among_the_keys_is_refused_at_once() {
    let dir = TempDir::new().unwrap();
    keygen(dir.path(), "alice");
    assert!(
        Command::new("mkfifo")
            .arg(dir.path().join("x.key"))
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--keys",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "never blocked on the FIFO"
    );
    assert_eq!(out.status.code(), Some(1));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("x.key") && message.contains("a FIFO"),
        "{message}"
    );

    std::fs::remove_file(dir.path().join("x.key")).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--keys",
        dir.path().to_str().unwrap(),
    ]);
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("another user could add a key"),
        "{message}"
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stderr_nobody_reads_never_stalls_the_gate() {
    let dir = TempDir::new().unwrap();
    let key = Key::from_file(keygen(dir.path(), "alice")).unwrap();
    // stderr is a pipe this test never reads: it fills after a few hundred lines.
    let child = KillOnDrop(
        Command::new(process::BIN)
            .args([
                "-v",
                "--log-buffer-lines",
                "64",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--keys",
                dir.path().to_str().unwrap(),
                "--allow-plain",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The address: this test's only way in is the port it can find by probing /proc.
    let pid = child.0.id();
    let gate = listening_port(pid).await;
    let credentials = Credentials::new(key).with_mode(Mode::Plain);
    let started = Instant::now();
    for i in 0..1500 {
        let attempt = tokio::time::timeout(Duration::from_secs(5), async {
            let mut stream = linkgate::connect(gate, &credentials).await?;
            stream.write_all(b"x").await?;
            stream.read_exact(&mut [0u8; 1]).await?;
            Ok::<_, std::io::Error>(())
        })
        .await;
        assert!(
            matches!(attempt, Ok(Ok(()))),
            "connection {i} stalled or failed with stderr blocked: {attempt:?}"
        );
    }
    println!(
        "1500 connections (4500+ log lines) in {:?} with stderr blocked",
        started.elapsed()
    );
    // The writer counted what it dropped (reported every 10 s; the test does not wait for it).
}

/// A child process killed when the test ends, passed or failed.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The TCP port process `pid` listens on, from /proc (it logs it to the blocked stderr).
async fn listening_port(pid: u32) -> SocketAddr {
    for _ in 0..200 {
        let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| {
                dir.filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                    .filter_map(|link| {
                        let text = link.to_string_lossy().into_owned();
                        text.strip_prefix("socket:[")?
                            .strip_suffix(']')
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(table) = std::fs::read_to_string("/proc/net/tcp") {
            for line in table.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // state 0A = LISTEN
                if fields.len() > 9 && fields[3] == "0A" && inodes.iter().any(|i| i == fields[9]) {
                    let port =
                        u16::from_str_radix(fields[1].rsplit(':').next().unwrap(), 16).unwrap();
                    return SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} never listened");
}

/// An upstream that takes some bytes, then resets the connection.
async fn resetting_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                let _ = stream.read_exact(&mut buf).await;
                let _ = stream.write_all(b"partial answer").await;
                let _ = stream.set_zero_linger();
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_reset_reaches_the_client_as_a_reset_in_every_mode() {
    let upstream = resetting_upstream().await;
    for mode in ["plain", "sealed", "sealed-fs"] {
        let dir = TempDir::new().unwrap();
        let key = keygen(dir.path(), "alice");
        let (serve, gate) = start_serve(dir.path(), Some(upstream), &["--allow-plain"]).await;
        let (_connect, local) = start_connect(gate, &key, &["--mode", mode]).await;
        let mut client = TcpStream::connect(local).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut got = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .unwrap();
        assert_eq!(
            end.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "{mode}: a reset, never a clean end (got {got:?})"
        );
        serve
            .wait_for_log(&["closed after an error", "reason=reset"])
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_reset_reaches_the_upstream_as_a_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let end = stream.read_to_end(&mut got).await;
        let _ = tx.send(end.map_err(|e| e.kind()));
    });
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "alice");
    let (_serve, gate) = start_serve(dir.path(), Some(upstream), &[]).await;
    let (_connect, local) = start_connect(gate, &key, &[]).await;
    let client = TcpStream::connect(local).await.unwrap();
    let mut client = client;
    client.write_all(b"half a request").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.set_zero_linger().unwrap();
    drop(client);
    let end = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        end,
        Err(std::io::ErrorKind::ConnectionReset),
        "the upstream sees the reset"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_keeps_failing_is_refused_at_accept_but_not_its_neighbours() {
    let dir = TempDir::new().unwrap();
    let key = Key::from_file(keygen(dir.path(), "alice")).unwrap();
    let metrics = format!("127.0.0.1:{}", crate::support::free_port().await);
    let (serve, gate) = start_serve(dir.path(), None, &["--metrics", &metrics]).await;
    let attacker = Ipv4Addr::new(127, 0, 0, 40);
    for _ in 0..4 {
        let mut stream = connect_from(attacker, gate).await;
        stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let _ = stream.read_to_end(&mut Vec::new()).await;
    }
    serve
        .wait_for_log(&["source penalized", "source=127.0.0.40 peer=127.0.0.40:"])
        .await;
    let mut stream = connect_from(attacker, gate).await;
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got).await;
    assert!(got.is_empty(), "no challenge while penalized");
    // The gauge is reported within a second, with no further connection needed.
    let mut penalized = 0.0;
    for _ in 0..30 {
        let text = scrape(&metrics).await;
        let gauge = "linkgate_sources_penalized{service=\"default\"}";
        if text.contains(gauge) {
            penalized = sample(&text, gauge);
            if penalized == 1.0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(penalized, 1.0, "one source penalized");
    // A neighbour in another /32, and the exempt-by-flag case.
    let neighbour = connect_from(Ipv4Addr::new(127, 0, 0, 41), gate).await;
    assert!(
        linkgate::authenticate(neighbour, &Credentials::new(key.clone()))
            .await
            .is_ok()
    );
    let (_serve, exempt_gate) =
        start_serve(dir.path(), None, &["--penalty-exempt", "127.0.0.40/32"]).await;
    for _ in 0..6 {
        let mut stream = connect_from(attacker, exempt_gate).await;
        stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got).await;
        assert_eq!(got.len(), 41, "an exempt source always gets its challenge");
    }
}

async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// `connect` out of file descriptors: accept fails with EMFILE while the listener stays ready,
/// so an accept loop that retried at once would spin (a core at 100% and a log line per try).
/// It pauses instead, and serves again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_out_of_file_descriptors_pauses_accepting_instead_of_spinning() {
    let upstream = crate::support::echo_upstream().await;
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "alice");
    let (_serve, gate) = start_serve(dir.path(), Some(upstream.addr), &[]).await;
    let mut command = Command::new("prlimit");
    command.args([
        "--nofile=40:40",
        "--",
        process::BIN,
        "connect",
        "--listen",
        "127.0.0.1:0",
    ]);
    command.args([
        "--server",
        &gate.to_string(),
        "--key",
        key.to_str().unwrap(),
    ]);
    command.env_remove("RUST_LOG");
    let connect = process::Linkgate::spawn_command(command);
    let local = connect.listen_addr().await;

    // More connections than 40 descriptors can carry (each takes two: local and gate). The one
    // accepted with no descriptor left for its gate connection is reset at once, which may show
    // at the connect or the write: that is `connect` doing its job, not a failure here.
    let mut held = Vec::new();
    for _ in 0..60 {
        if let Ok(mut client) = TcpStream::connect(local).await {
            let _ = client.write_all(b"x").await;
            held.push(client);
        }
    }
    let exhausted = Instant::now();
    connect.wait_for_log(&["accept failed"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failures = connect.stderr().matches("accept failed").count();
    let seconds = exhausted.elapsed().as_secs_f64();
    // At most one try per 100 ms pause (and a few connection errors); a spinning loop logs
    // thousands in this time.
    assert!(
        (failures as f64) <= 15.0 * seconds + 5.0,
        "{failures} accept failures in {seconds:.1} s"
    );

    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let mut client = TcpStream::connect(local).await?;
            client.write_all(b"ping").await?;
            let mut echoed = [0u8; 4];
            client.read_exact(&mut echoed).await?;
            Ok::<_, std::io::Error>(echoed)
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(echoed)) => {
                assert_eq!(&echoed, b"ping");
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "connect did not serve again after descriptors were freed: {other:?}"
            ),
        }
    }
}
