//! Operating the gate: key reload (SIGHUP, --watch-keys, --drop-revoked), metrics, Unix sockets,
//! systemd socket activation and readiness, the config file, keys from stdin and the
//! environment, and `check` against a gate whose upstream is down.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use linkgate::{Credentials, Error, Key, Rejection};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixDatagram, UnixListener, UnixStream};

use crate::support::process::{self, Linkgate, check, keygen, run, start_serve};
use crate::support::{echo_upstream, payload};

fn key(path: &Path) -> Key {
    Key::from_file(path).unwrap()
}

async fn admitted(gate: SocketAddr, key: &Key) -> bool {
    linkgate::connect(gate, &Credentials::new(key.clone()))
        .await
        .is_ok()
}

/// Polls `condition` for up to 10 s.
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

/// One key cannot take every place: past --max-connections-per-key its next connection is
/// reset after admission (the log says why), while another key still gets in.
#[tokio::test(flavor = "multi_thread")]
async fn one_key_is_held_to_its_own_share_of_connections() {
    let keys = TempDir::new().unwrap();
    let alice = key(&keygen(keys.path(), "alice"));
    let bob = key(&keygen(keys.path(), "bob"));
    let (serve, gate) = start_serve(keys.path(), None, &["--max-connections-per-key", "2"]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = linkgate::connect(gate, &Credentials::new(alice.clone()))
            .await
            .unwrap();
        stream.write_all(b"hi").await.unwrap();
        stream.read_exact(&mut [0u8; 2]).await.unwrap();
        held.push(stream);
    }
    let mut third = linkgate::connect(gate, &Credentials::new(alice.clone()))
        .await
        .unwrap();
    let _ = third.write_all(b"hi").await;
    let mut rest = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut rest))
        .await
        .expect("the connection past the bound was kept open");
    assert!(outcome.is_err(), "a third connection was served: {rest:?}");
    serve
        .wait_for_log(&[
            "key at --max-connections-per-key",
            "key_id=alice",
            "bound=2",
        ])
        .await;
    // Bob is not held back by alice, and alice gets a place back when one of hers ends.
    let mut other = linkgate::connect(gate, &Credentials::new(bob))
        .await
        .unwrap();
    other.write_all(b"ok").await.unwrap();
    other.read_exact(&mut [0u8; 2]).await.unwrap();
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = linkgate::connect(gate, &Credentials::new(alice.clone()))
            .await
            .unwrap();
        let _ = again.write_all(b"ok").await;
        if again.read_exact(&mut [0u8; 2]).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The README's one-client setup: removing that client's key file and sending SIGHUP withdraws
/// it, though a key directory with no key is refused at start. The watcher does not act on an
/// empty directory (files replaced one by one leave it empty for a moment): only SIGHUP does.
#[tokio::test(flavor = "multi_thread")]
async fn removing_the_last_key_withdraws_its_client() {
    let keys = TempDir::new().unwrap();
    let alice = key(&keygen(keys.path(), "alice"));
    let (serve, gate) = start_serve(keys.path(), None, &["--watch-keys"]).await;
    assert!(admitted(gate, &alice).await);
    std::fs::remove_file(keys.path().join("alice.key")).unwrap();
    serve
        .wait_for_log(&[
            "key reload failed: the previous keys stay in force",
            "why=key files changed",
            "no *.key files",
        ])
        .await;
    assert!(
        admitted(gate, &alice).await,
        "an empty directory seen by the watcher"
    );
    serve.signal("HUP");
    serve
        .wait_for_log(&["keys reloaded: no key is left", "removed=alice"])
        .await;
    let denied = linkgate::connect(gate, &Credentials::new(alice.clone())).await;
    assert!(
        matches!(denied, Err(Error::Rejected(Rejection::Denied))),
        "{denied:?}"
    );
    serve
        .wait_for_log(&["connection rejected", "unknown key id alice"])
        .await;
    // A key added back is admitted again.
    let bob = key(&keygen(keys.path(), "bob"));
    serve.signal("HUP");
    serve.wait_for_log(&["keys reloaded", "added=bob"]).await;
    assert!(admitted(gate, &bob).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_keys_all_or_nothing_and_never_stops_the_gate() {
    let keys = TempDir::new().unwrap();
    let outside = TempDir::new().unwrap();
    let alice = key(&keygen(keys.path(), "alice"));
    let bob_file = keygen(outside.path(), "bob");
    let bob = key(&bob_file);
    let (mut serve, gate) = start_serve(keys.path(), None, &["--drain-timeout", "5s"]).await;
    assert!(!admitted(gate, &bob).await, "bob is unknown at first");

    // Add bob, HUP: bob gets in, alice still does.
    std::fs::copy(&bob_file, keys.path().join("bob.key")).unwrap();
    std::fs::set_permissions(
        keys.path().join("bob.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    serve.signal("HUP");
    serve
        .wait_for_log(&["keys reloaded", "why=SIGHUP", "added=bob"])
        .await;
    assert!(admitted(gate, &bob).await);
    assert!(admitted(gate, &alice).await);

    // Alice's open connection, then alice removed: she is denied, the connection still works.
    let mut open = linkgate::connect(gate, &Credentials::new(alice.clone()))
        .await
        .unwrap();
    std::fs::remove_file(keys.path().join("alice.key")).unwrap();
    serve.signal("HUP");
    serve
        .wait_for_log(&["keys reloaded", "removed=alice"])
        .await;
    let denied = linkgate::connect(gate, &Credentials::new(alice.clone())).await;
    assert!(
        matches!(denied, Err(Error::Rejected(Rejection::Denied))),
        "{denied:?}"
    );
    open.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    open.read_exact(&mut back).await.unwrap();
    assert_eq!(
        &back, b"still here",
        "admitted connections stay open by default"
    );

    // A broken key file: the old keyring stays, the log says which file and why.
    let broken = keys.path().join("broken.key");
    std::fs::write(&broken, "not a key").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o600)).unwrap();
    serve.signal("HUP");
    let line = serve
        .wait_for_log(&["key reload failed", "previous keys stay"])
        .await;
    assert!(
        line.contains("broken.key") && line.contains("not a key"),
        "{line}"
    );
    assert!(admitted(gate, &bob).await, "bob is still admitted");

    // A transfer in flight through 20 HUPs completes intact.
    std::fs::remove_file(&broken).unwrap();
    let mut stream = linkgate::connect(gate, &Credentials::new(bob.clone()))
        .await
        .unwrap();
    let data = payload(4 << 20, 9);
    let digest = Sha256::digest(&data);
    let (mut reader, mut writer) = tokio::io::split(&mut stream);
    let sending = async {
        for chunk in data.chunks(256 * 1024) {
            writer.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        writer.shutdown().await.unwrap();
    };
    let hups = async {
        for _ in 0..20 {
            serve.signal("HUP");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let mut echoed = Vec::new();
    let receiving = reader.read_to_end(&mut echoed);
    let ((), (), received) = tokio::join!(sending, hups, receiving);
    received.unwrap();
    assert_eq!(Sha256::digest(&echoed), digest);
    assert!(
        serve.wait_exit(Duration::from_millis(100)).await.is_none(),
        "SIGHUP never stops the gate"
    );
    serve.signal("TERM");
    assert_eq!(
        serve
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap()
            .code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn drop_revoked_closes_connections_of_a_removed_key() {
    let keys = TempDir::new().unwrap();
    let alice = key(&keygen(keys.path(), "alice"));
    keygen(keys.path(), "bob");
    let (serve, gate) = start_serve(keys.path(), None, &["--drop-revoked"]).await;
    let mut open = linkgate::connect(gate, &Credentials::new(alice))
        .await
        .unwrap();
    serve.wait_for_log(&["admitted", "key_id=alice"]).await;
    std::fs::remove_file(keys.path().join("alice.key")).unwrap();
    serve.signal("HUP");
    serve
        .wait_for_log(&["closed", "key_id=alice", "revoked"])
        .await;
    let mut rest = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(
        outcome.is_err(),
        "the revoked connection ends in an error, not a clean end"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_keys_follows_a_kubernetes_style_symlink_swap() {
    // A Secret volume: ..2026_a/alice.key, ..data -> ..2026_a, alice.key -> ..data/alice.key.
    let volume = TempDir::new().unwrap();
    let v = volume.path();
    std::fs::set_permissions(v, std::fs::Permissions::from_mode(0o700)).unwrap();
    let first = v.join("..2026_a");
    std::fs::create_dir(&first).unwrap();
    let alice = key(&keygen(&first, "alice"));
    std::os::unix::fs::symlink("..2026_a", v.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/alice.key", v.join("alice.key")).unwrap();
    let (serve, gate) = start_serve(v, None, &["--watch-keys"]).await;
    serve.wait_for_log(&["watching for key changes"]).await;
    assert!(admitted(gate, &alice).await);

    // The update: a new timestamped directory with alice rotated and bob added, then the atomic
    // swap of ..data, then the new top-level link, as kubelet does.
    let second = v.join("..2026_b");
    std::fs::create_dir(&second).unwrap();
    let alice2 = key(&keygen(&second, "alice"));
    let bob = key(&keygen(&second, "bob"));
    std::os::unix::fs::symlink("..2026_b", v.join("..data_tmp")).unwrap();
    std::fs::rename(v.join("..data_tmp"), v.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/bob.key", v.join("bob.key")).unwrap();
    serve
        .wait_for_log(&[
            "keys reloaded",
            "why=key files changed",
            "added=bob",
            "changed=alice",
        ])
        .await;
    assert!(admitted(gate, &bob).await);
    assert!(admitted(gate, &alice2).await);
    assert!(
        !admitted(gate, &alice).await,
        "the old alice key no longer works"
    );
}

/// `GET /metrics` over a plain TCP connection; the body.
pub(crate) async fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The value of the sample whose line starts with `prefix` (name and labels).
pub(crate) fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_happened_and_parse() {
    let keys = TempDir::new().unwrap();
    let alice = key(&keygen(keys.path(), "alice"));
    let port = crate::support::free_port().await;
    let metrics = format!("127.0.0.1:{port}");
    let (serve, gate) = start_serve(
        keys.path(),
        None,
        // Without penalties: this one source fails often enough to be refused at accept, and
        // the timeout below must be a timeout.
        &[
            "--metrics",
            &metrics,
            "--handshake-timeout",
            "2s",
            "--no-penalties",
        ],
    )
    .await;
    serve.wait_for_log(&["serving metrics"]).await;

    // Before any connection, the service's series are there at 0, not missing.
    let fresh = scrape(&metrics).await;
    for series in [
        "linkgate_connections_accepted_total{service=\"default\"}",
        "linkgate_handshakes_in_progress{service=\"default\"}",
        "linkgate_connections_open{service=\"default\"}",
        "linkgate_tunnels_open{service=\"default\"}",
        "linkgate_connections_closed_total{service=\"default\",result=\"ok\"}",
        "linkgate_connections_closed_total{service=\"default\",result=\"cut_off\"}",
        "linkgate_upstream_connect_failures_total{service=\"default\"}",
        "linkgate_handshake_refusals_total{service=\"default\",bound=\"global\"}",
        "linkgate_handshake_refusals_total{service=\"default\",bound=\"per_source\"}",
        "linkgate_handshake_refusals_total{service=\"default\",bound=\"penalty\"}",
    ] {
        assert_eq!(sample(&fresh, series), 0.0, "{series} in:\n{fresh}");
    }

    // 3 admissions with 10 bytes each way, 2 denials (one claiming an id nobody has),
    // 1 malformed, 1 timeout.
    for _ in 0..3 {
        let mut stream = linkgate::connect(gate, &Credentials::new(alice.clone()))
            .await
            .unwrap();
        stream.write_all(b"0123456789").await.unwrap();
        stream.read_exact(&mut [0u8; 10]).await.unwrap();
        stream.shutdown().await.unwrap();
        let end = stream.read_to_end(&mut Vec::new()).await;
        assert!(end.is_ok(), "{end:?}\n{}", serve.stderr());
    }
    let impostor = TempDir::new().unwrap();
    let wrong = key(&keygen(impostor.path(), "alice"));
    let stranger = key(&keygen(impostor.path(), "made-up-id"));
    assert!(!admitted(gate, &wrong).await);
    assert!(!admitted(gate, &stranger).await);
    let mut plain = TcpStream::connect(gate).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let _ = plain.read_to_end(&mut Vec::new()).await;
    let mut silent = TcpStream::connect(gate).await.unwrap();
    let _ = silent.read_to_end(&mut Vec::new()).await;

    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(&metrics).await;
        if text.contains("linkgate_connections_closed_total{service=\"default\",result=\"ok\"} 3") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = |prefix: &str| sample(&text, prefix);
    assert_eq!(
        s("linkgate_connections_accepted_total{service=\"default\"}"),
        7.0
    );
    assert_eq!(
        s("linkgate_handshakes_total{service=\"default\",outcome=\"admitted\"}"),
        3.0
    );
    assert_eq!(
        s("linkgate_handshakes_total{service=\"default\",outcome=\"denied\"}"),
        2.0
    );
    assert_eq!(
        s("linkgate_handshakes_total{service=\"default\",outcome=\"malformed\"}"),
        1.0
    );
    assert_eq!(
        s("linkgate_handshakes_total{service=\"default\",outcome=\"timeout\"}"),
        1.0
    );
    assert_eq!(
        s("linkgate_handshakes_in_progress{service=\"default\"}"),
        0.0
    );
    assert_eq!(
        s("linkgate_admissions_total{service=\"default\",key_id=\"alice\",mode=\"sealed-fs\"}"),
        3.0
    );
    assert_eq!(
        s("linkgate_bytes_total{service=\"default\",key_id=\"alice\",direction=\"in\"}"),
        30.0
    );
    assert_eq!(
        s("linkgate_bytes_total{service=\"default\",key_id=\"alice\",direction=\"out\"}"),
        30.0
    );
    assert_eq!(s("linkgate_keys_loaded{service=\"default\"}"), 1.0);
    assert_eq!(s("linkgate_sources_penalized{service=\"default\"}"), 0.0);
    assert_eq!(s("linkgate_log_lines_dropped_total"), 0.0);
    assert_eq!(s("linkgate_connections_open{service=\"default\"}"), 0.0);
    assert!(
        !text.contains("made-up-id"),
        "a claimed id never becomes a label"
    );

    // An independent parser: Python's prometheus_client (OpenMetrics), when it is available.
    if let Some(python) = python_with("prometheus_client") {
        let mut child = Command::new(python)
            .args([
                "-c",
                "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\nfams = list(parse(sys.stdin.read()))\nprint(len(fams), sum(len(f.samples) for f in fams))",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "prometheus_client refused the output: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        let families: usize = said.split_whitespace().next().unwrap().parse().unwrap();
        assert!(families >= 10, "{said}");
    }
}

/// A Python with `module`, preferring the CI's virtualenv; `None` (and a note) without one.
fn python_with(module: &str) -> Option<String> {
    let python = std::env::var("LINKGATE_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|out| out.status.success());
    if !ok {
        assert!(
            std::env::var_os("LINKGATE_REQUIRE_PEERS").is_none(),
            "{python} lacks {module}, which LINKGATE_REQUIRE_PEERS requires"
        );
        println!("skipped the independent parse: {python} has no {module}");
    }
    ok.then_some(python)
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_sockets_on_both_sides_with_mode_and_stale_files() {
    let dir = TempDir::new().unwrap();
    let alice = key(&keygen(dir.path(), "alice"));
    // The upstream: redis-server on a Unix socket when installed, else a Rust echo on one.
    let upstream_path = dir.path().join("upstream.sock");
    let redis = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let _redis = if redis {
        let mut command = Command::new("redis-server");
        command.args([
            "--port",
            "0",
            "--unixsocket",
            upstream_path.to_str().unwrap(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.path().to_str().unwrap(),
        ]);
        let server = Linkgate::spawn_command(command);
        eventually("redis is up", || {
            let path = upstream_path.clone();
            async move { UnixStream::connect(path).await.is_ok() }
        })
        .await;
        Some(server)
    } else {
        assert!(
            std::env::var_os("LINKGATE_REQUIRE_PEERS").is_none(),
            "redis-server is required"
        );
        println!("redis-server is not installed: a Rust echo stands in");
        let listener = UnixListener::bind(&upstream_path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        None
    };

    // A stale socket file where the gate will listen: nobody answers on it.
    let gate_path = dir.path().join("gate.sock");
    drop(std::os::unix::net::UnixListener::bind(&gate_path).unwrap());
    assert!(gate_path.exists());
    let upstream = format!("unix:{}", upstream_path.display());
    let listen = format!("unix:{}", gate_path.display());
    let mut serve = Linkgate::spawn(&[
        "serve",
        "--listen",
        &listen,
        "--socket-mode",
        "0660",
        "--upstream",
        &upstream,
        "--keys",
        dir.path().to_str().unwrap(),
    ]);
    serve.wait_for_log(&["replacing a stale socket file"]).await;
    serve.wait_for_log(&["listening", &listen]).await;
    let mode = std::fs::metadata(&gate_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    let stream = UnixStream::connect(&gate_path).await.unwrap();
    let mut session = linkgate::authenticate(stream, &Credentials::new(alice))
        .await
        .unwrap();
    if redis {
        session.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
        let mut reply = [0u8; 7];
        session.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"+PONG\r\n", "redis answered through the gate");
    } else {
        session.write_all(b"ping").await.unwrap();
        session.read_exact(&mut [0u8; 4]).await.unwrap();
    }
    serve.wait_for_log(&["admitted", "peer=unix:uid="]).await;

    // A second gate on the same, live socket is refused; the first keeps its file.
    let out = run(&[
        "serve",
        "--listen",
        &listen,
        "--keys",
        dir.path().to_str().unwrap(),
    ]);
    let message = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        message.contains("another process is listening"),
        "{message}"
    );
    assert!(gate_path.exists());

    // On a clean exit the socket file goes away.
    drop(session);
    serve.signal("TERM");
    serve.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(!gate_path.exists(), "removed on exit");
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_socket_activation_and_readiness() {
    if !crate::support::systemd_socket_activate_available() {
        println!("skipped: systemd-socket-activate is not installed");
        return;
    }
    let dir = TempDir::new().unwrap();
    let alice = key(&keygen(dir.path(), "alice"));
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let port = crate::support::free_port().await;
    let mut command = Command::new("systemd-socket-activate");
    command.args([
        "-l",
        &format!("127.0.0.1:{port}"),
        "--fdname=gate",
        "-E",
        &format!("NOTIFY_SOCKET={}", notify_path.display()),
        "-E",
        "RUST_LOG=info",
        process::BIN,
        "serve",
        "--listen",
        "systemd:gate",
        "--keys",
        dir.path().to_str().unwrap(),
    ]);
    let activator = Linkgate::spawn_command(command);
    // The first connection starts the gate, which takes the listening socket from systemd.
    let gate: SocketAddr = ([127, 0, 0, 1], port).into();
    let stream = crate::support::connect_when_listening(gate).await;
    let mut session = linkgate::authenticate(stream, &Credentials::new(alice))
        .await
        .unwrap();
    session.write_all(b"activated").await.unwrap();
    let mut back = [0u8; 9];
    session.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"activated");
    let mut message = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), notify.recv(&mut message))
        .await
        .expect("a notification")
        .unwrap();
    let text = String::from_utf8_lossy(&message[..n]);
    assert!(
        text.contains("READY=1") && text.contains("STATUS=serving 1 service"),
        "{text}"
    );
    activator
        .wait_for_log(&["listening", "listen=127.0.0.1:"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_process_serves_two_services_from_a_config_file() {
    let dir = TempDir::new().unwrap();
    let (red_keys, blue_keys) = (dir.path().join("red"), dir.path().join("blue"));
    for d in [&red_keys, &blue_keys] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let red = key(&keygen(&red_keys, "red"));
    let blue = key(&keygen(&blue_keys, "blue"));
    let red_upstream = echo_upstream().await;
    let blue_upstream = echo_upstream().await;
    let free = || async {
        TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (red_gate, blue_gate) = (free().await, free().await);
    let config = dir.path().join("linkgate.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"red\"\nlisten = \"{red_gate}\"\nupstream = \"{}\"\nkeys = \"{}\"\n\n\
             [[service]]\nname = \"blue\"\nlisten = \"{blue_gate}\"\nupstream = \"{}\"\nkeys = \"{}\"\nrequire-forward-secrecy = true\n",
            red_upstream.addr, red_keys.display(), blue_upstream.addr, blue_keys.display()
        ),
    )
    .unwrap();
    let out = run(&["check-config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("service red") && said.contains("service blue") && said.contains(": ok"),
        "{said}"
    );

    let serve = Linkgate::spawn(&["serve", "--config", config.to_str().unwrap()]);
    serve.wait_for_log(&["listening", "service=red"]).await;
    serve.wait_for_log(&["listening", "service=blue"]).await;
    assert!(admitted(red_gate, &red).await);
    assert!(admitted(blue_gate, &blue).await);
    assert!(
        !admitted(red_gate, &blue).await,
        "blue's key is refused by red"
    );
    assert!(
        !admitted(blue_gate, &red).await,
        "red's key is refused by blue"
    );
    // Each gate's refusals say which gate refused.
    serve
        .wait_for_log(&["connection rejected", "service=red", "unknown key id blue"])
        .await;
    serve
        .wait_for_log(&["connection rejected", "service=blue", "unknown key id red"])
        .await;

    // SIGHUP reloads keys only. Nothing to say while the file is as it was at start; once it
    // has changed, the reload says a restart is needed for the rest.
    serve.signal("HUP");
    serve
        .wait_for_log(&["keys reloaded", "service=blue", "why=SIGHUP"])
        .await;
    assert!(!serve.stderr().contains("config file changed"));
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("# max-connections = 5000 (a change a reload does not apply)\n");
    std::fs::write(&config, text).unwrap();
    serve.signal("HUP");
    serve
        .wait_for_log(&[
            "WARN",
            "the config file changed since linkgate started",
            "restart to apply the rest",
        ])
        .await;

    // Bad configs: one line, naming the problem and where.
    std::fs::write(&config, "[[service]]\nname = \"x\"\nlisen = \":1\"\n").unwrap();
    let out = run(&["check-config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("unknown field `lisen`") && message.contains("line 3"),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
    let out = run(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--upstream",
        "127.0.0.1:1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--config and service flags do not mix"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_from_stdin_and_the_environment_never_echoed() {
    let dir = TempDir::new().unwrap();
    let path = keygen(dir.path(), "alice");
    let secret = std::fs::read_to_string(&path).unwrap();
    let hex = secret.trim().to_owned();
    assert_eq!(
        hex.len(),
        64,
        "the key file holds one line of hex: {secret:?}"
    );
    // Neither output shows the key, or any 16 digits of it, in either case of hex.
    let pieces: Vec<String> = (0..=hex.len() - 16)
        .map(|at| hex[at..at + 16].to_ascii_lowercase())
        .collect();
    let never_echoed = |out: &std::process::Output, how: &str| {
        for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let text = String::from_utf8_lossy(text).to_ascii_lowercase();
            assert!(
                !pieces.iter().any(|piece| text.contains(piece.as_str())),
                "{how}: part of the key is on {name}"
            );
        }
    };
    let (_serve, gate) = start_serve(dir.path(), None, &[]).await;
    let gate = gate.to_string();

    let mut child = Command::new(process::BIN)
        .args(["check", "--server", &gate, "--key", "-", "--id", "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().next(),
        Some("admitted as alice (mode sealed-fs, upstream reachable)")
    );
    never_echoed(&out, "--key -");

    let out = Command::new(process::BIN)
        .args([
            "check",
            "--server",
            &gate,
            "--key-env",
            "ALICE_KEY",
            "--id",
            "alice",
        ])
        .env("ALICE_KEY", secret.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    never_echoed(&out, "--key-env");

    // Without an id there is nothing to present; a bad value is refused without showing it.
    let out = Command::new(process::BIN)
        .args(["check", "--server", &gate, "--key-env", "ALICE_KEY"])
        .env("ALICE_KEY", secret.trim())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("add --id NAME"));
    never_echoed(&out, "--key-env without --id");
    let out = Command::new(process::BIN)
        .args([
            "check",
            "--server",
            &gate,
            "--key-env",
            "ALICE_KEY",
            "--id",
            "alice",
        ])
        .env("ALICE_KEY", "hunter2-not-a-key")
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        message.contains("$ALICE_KEY") && !message.contains("hunter2"),
        "{message}"
    );
    // No file is involved, and the message does not pretend one is.
    assert!(
        message.contains("the key in $ALICE_KEY: not a key") && !message.contains("key file"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_tells_admission_from_an_unreachable_upstream() {
    let dir = TempDir::new().unwrap();
    let path = keygen(dir.path(), "alice");
    let gone = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (serve, gate) = start_serve(dir.path(), Some(gone), &[]).await;
    let out = check(&gate.to_string(), &path, &[]);
    assert_eq!(out.status.code(), Some(1));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("admitted as alice") && message.contains("could not reach its upstream"),
        "{message}"
    );
    serve.wait_for_log(&["upstream unreachable"]).await;
}

#[cfg(target_os = "linux")]
/// What a scan of the writable memory of process `pid` (heap, stacks, anonymous mappings)
/// found: whether `needle` is there, and how many bytes could not be read (a mapping that went
/// away during the scan). None where this process may not read another's memory (it needs to
/// be its parent, or root).
fn scan_process_memory(pid: u32, needle: &[u8]) -> Option<(bool, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    const CHUNK: u64 = 1 << 20;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let (mut found, mut unreadable) = (false, 0u64);
    // Chunks overlap by one needle less a byte, so no match is split between two.
    let overlap = needle.len() as u64 - 1;
    let mut buf = vec![0u8; (CHUNK + overlap) as usize];
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !fields[1].starts_with("rw") {
            continue;
        }
        let (start, end) = fields[0].split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut at = start;
        while at < end {
            let len = (end - at).min(CHUNK + overlap) as usize;
            let chunk = &mut buf[..len];
            if mem.seek(SeekFrom::Start(at)).is_ok() && mem.read_exact(chunk).is_ok() {
                found |= chunk.windows(needle.len()).any(|window| window == needle);
            } else {
                unreadable += len as u64;
            }
            at += CHUNK;
        }
    }
    Some((found, unreadable))
}

/// A key given on stdin leaves no copy of its text in the gate's memory once loaded (std's
/// stdin would have kept one in its buffer). The same key given in the environment stays in
/// the process's environment, which shows the scan can find it.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn a_key_read_from_stdin_leaves_no_copy_in_memory() {
    let dir = TempDir::new().unwrap();
    let path = keygen(dir.path(), "alice");
    let hex = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    let serve_args = ["serve", "--listen", "127.0.0.1:0", "--key-id", "alice"];

    let mut command = Command::new(process::BIN);
    command.args(serve_args).args(["--keys", "-"]);
    let from_stdin =
        process::Linkgate::spawn_with_input(command, Some(format!("{hex}\n").as_bytes()));
    from_stdin.listen_addr().await;
    let Some((found, unreadable)) = scan_process_memory(from_stdin.pid(), hex.as_bytes()) else {
        assert!(
            std::env::var_os("LINKGATE_REQUIRE_PEERS").is_none(),
            "cannot read the gate's memory, which LINKGATE_REQUIRE_PEERS requires"
        );
        println!("skipped: this process may not read another's memory");
        return;
    };
    assert!(
        !found,
        "the key's text is still in the memory of a gate that read it from stdin"
    );
    // Nearly all of it was looked at: an idle gate maps and unmaps little.
    assert!(unreadable < 1 << 20, "{unreadable} bytes could not be read");

    let mut command = Command::new(process::BIN);
    command
        .args(serve_args)
        .args(["--key-env", "LINKGATE_TEST_KEY"])
        .env("LINKGATE_TEST_KEY", &hex);
    let from_env = process::Linkgate::spawn_command(command);
    from_env.listen_addr().await;
    assert!(
        scan_process_memory(from_env.pid(), hex.as_bytes()).is_some_and(|(found, _)| found),
        "the scan did not find the key in the environment, where it is"
    );
}
