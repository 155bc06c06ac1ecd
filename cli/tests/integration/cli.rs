//! The real `linkgate` binary on loopback: unmodified client → `connect` → `serve` → upstream,
//! the subcommands' results, and one-line errors.

use std::fs;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use linkgate::{Credentials, Error, Key, KeyId, Rejection};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::process::{self, Linkgate, check, keygen, run, start_serve};
use crate::support::{
    echo_through, echo_upstream, payload, serve_echo, silent_upstream, start_connect,
};

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_mib_each_way_arrive_unchanged() {
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "alice");
    let upstream = echo_upstream().await;
    let (serve, gate) = start_serve(dir.path(), Some(upstream.addr), &[]).await;
    let (connect, local) = start_connect(gate, &key, &[]).await;

    let data = payload(64 << 20, 1);
    let sent_digest = Sha256::digest(&data);
    let started = Instant::now();
    let received = echo_through(TcpStream::connect(local).await.unwrap(), data).await;
    println!(
        "64 MiB each way through connect → serve (debug build) in {:?}",
        started.elapsed()
    );
    assert_eq!(received.len(), 64 << 20);
    assert_eq!(
        Sha256::digest(&received),
        sent_digest,
        "SHA-256 of what came back"
    );
    assert_eq!(
        upstream.bytes.load(Ordering::SeqCst),
        64 << 20,
        "the upstream got every byte"
    );
    assert_eq!(upstream.accepts.load(Ordering::SeqCst), 1);

    // One admission line and, once closed, one close line with byte counts.
    serve.wait_for_log(&["admitted", "key_id=alice"]).await;
    connect
        .wait_for_log(&["authenticated to the gate", "key_id=alice"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_connections_are_each_forwarded_intact() {
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "alice");
    let upstream = echo_upstream().await;
    let (_serve, gate) = start_serve(dir.path(), Some(upstream.addr), &[]).await;
    let (_connect, local) = start_connect(gate, &key, &[]).await;

    let mut clients = Vec::new();
    for i in 0..50u64 {
        clients.push(tokio::spawn(async move {
            let data = payload(200_000 + i as usize * 1000, i + 100);
            let stream = TcpStream::connect(local).await.unwrap();
            let received = echo_through(stream, data.clone()).await;
            assert!(received == data, "connection {i} got different bytes back");
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(upstream.accepts.load(Ordering::SeqCst), 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn impostors_never_reach_the_upstream() {
    let dir = TempDir::new().unwrap();
    let server_keys = TempDir::new().unwrap();
    let real = keygen(server_keys.path(), "alice");
    let upstream = echo_upstream().await;
    let (serve, gate) = start_serve(server_keys.path(), Some(upstream.addr), &[]).await;

    // Wrong key, through an unmodified client and `connect`.
    let wrong = keygen(dir.path(), "alice");
    let (connect, local) = start_connect(gate, &wrong, &[]).await;
    let mut client = TcpStream::connect(local).await.unwrap();
    let _ = client.write_all(b"SET secret 1\r\n").await;
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got).await;
    assert!(got.is_empty(), "the local client is closed with nothing");
    connect.wait_for_log(&["denied by the server"]).await;
    serve
        .wait_for_log(&["connection rejected", "wrong proof for key id alice"])
        .await;

    // A plain client that skips the handshake and talks straight to the gate.
    let mut plain = TcpStream::connect(gate).await.unwrap();
    plain.write_all(b"SET secret 1\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got).await;
    assert_eq!(
        got.len(),
        41,
        "challenge + malformed verdict, nothing from the upstream"
    );
    assert_eq!(got[40], linkgate::protocol::VERDICT_MALFORMED);
    serve
        .wait_for_log(&["connection rejected", "malformed response"])
        .await;

    // The upstream saw no connection at all, and no byte.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(upstream.accepts.load(Ordering::SeqCst), 0);
    assert_eq!(upstream.bytes.load(Ordering::SeqCst), 0);

    // No key bytes in any log.
    let secret = fs::read_to_string(&real).unwrap();
    let wrong_secret = fs::read_to_string(&wrong).unwrap();
    for log in [serve.stderr(), connect.stderr()] {
        assert!(!log.contains(secret.trim()) && !log.contains(wrong_secret.trim()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn half_close_passes_through() {
    // An upstream that reads the whole request (until EOF), then sends a 1 MiB reply.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let reply = payload(1 << 20, 7);
    let expected = reply.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"the whole request");
        stream.write_all(&reply).await.unwrap();
    });

    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "alice");
    let (_serve, gate) = start_serve(dir.path(), Some(upstream), &[]).await;
    let (_connect, local) = start_connect(gate, &key, &[]).await;
    let mut client = TcpStream::connect(local).await.unwrap();
    client.write_all(b"the whole request").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert!(
        got == expected,
        "got {} of {} reply bytes",
        got.len(),
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_never_answers_is_given_up_at_the_connect_timeout() {
    let silent = silent_upstream().await;
    let dir = TempDir::new().unwrap();
    let key_path = keygen(dir.path(), "alice");
    let credentials = Credentials::new(Key::from_file(&key_path).unwrap());
    let (serve, gate) = start_serve(
        dir.path(),
        Some(silent.addr),
        &["--upstream-connect-timeout", "400ms"],
    )
    .await;
    let started = Instant::now();
    let mut client = linkgate::connect(gate, &credentials).await.unwrap();
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got))
        .await
        .expect("the admitted client was neither answered nor reset");
    let waited = started.elapsed();
    assert!(got.is_empty(), "the admitted client gets nothing");
    assert!(
        ended
            .as_ref()
            .is_err_and(|err| err.kind() == std::io::ErrorKind::ConnectionReset),
        "a reset, never a clean end: {ended:?}"
    );
    // Reset by the timeout, and by this one, not the default 5 s.
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(4),
        "reset after {waited:?}"
    );
    let warning = serve
        .wait_for_log(&["upstream unreachable", "connect timed out"])
        .await;
    assert!(warning.contains("key_id=alice"), "{warning}");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_closes_the_client_and_the_gate_keeps_serving() {
    let dir = TempDir::new().unwrap();
    let key_path = keygen(dir.path(), "alice");
    let credentials = Credentials::new(Key::from_file(&key_path).unwrap());
    let port_holder = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = port_holder.local_addr().unwrap();
    drop(port_holder);
    let (serve, gate) = start_serve(dir.path(), Some(upstream_addr), &[]).await;

    let mut client = linkgate::connect(gate, &credentials).await.unwrap();
    // The gate's reset can arrive before this write: the write then fails with it (and consumes
    // it, so the read only sees the end). Either way the reset must show, never a clean end.
    let written = client.write_all(b"anyone there?").await;
    let mut got = Vec::new();
    let err = client.read_to_end(&mut got).await.unwrap_err();
    assert!(got.is_empty(), "the admitted client gets nothing");
    let reset = match &written {
        Err(write_err) => write_err,
        Ok(()) => &err,
    };
    assert!(
        matches!(
            reset.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ) && (written.is_err() || err.kind() == std::io::ErrorKind::ConnectionReset),
        "a reset, never a clean end: write {written:?}, read {err}"
    );
    let warning = serve
        .wait_for_log(&["upstream unreachable", "key_id=alice"])
        .await;
    assert!(
        warning.contains("WARN") && warning.contains(&upstream_addr.to_string()),
        "{warning}"
    );

    // The upstream comes back on the same port: the next client is served.
    let upstream = serve_echo(TcpListener::bind(upstream_addr).await.unwrap());
    let mut client = linkgate::connect(gate, &credentials).await.unwrap();
    client.write_all(b"back").await.unwrap();
    let mut back = [0u8; 4];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"back");
    assert_eq!(upstream.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_each_outcome_with_its_exit_code() {
    let dir = TempDir::new().unwrap();
    let keys = TempDir::new().unwrap();
    let key = keygen(keys.path(), "alice");
    let (serve, gate) = start_serve(keys.path(), None, &[]).await;
    let gate = gate.to_string();

    let ok = check(&gate, &key, &[]);
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "admitted as alice (mode sealed-fs, upstream reachable)\n"
    );

    let wrong = keygen(dir.path(), "alice");
    let denied = check(&gate, &wrong, &[]);
    assert_eq!(denied.status.code(), Some(1));
    let message = String::from_utf8_lossy(&denied.stderr);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains("denied for key id alice"),
        "names the id presented: {message}"
    );
    serve
        .wait_for_log(&["connection rejected", "wrong proof"])
        .await;

    let renamed = check(&gate, &key, &["--id", "bob"]);
    assert_eq!(
        renamed.status.code(),
        Some(1),
        "the key presented as another id is denied"
    );
    serve
        .wait_for_log(&["connection rejected", "unknown key id bob"])
        .await;

    let free = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let nobody = check(&free, &key, &[]);
    assert_eq!(nobody.status.code(), Some(1));
    let message = String::from_utf8_lossy(&nobody.stderr);
    assert!(
        message.contains(&format!("cannot connect to {free}: connection refused"))
            && message.contains("is the gate running")
            && message.lines().count() == 1,
        "{message}"
    );

    let ssh = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ssh_addr = ssh.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut stream, _) = ssh.accept().await.unwrap();
        stream
            .write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n")
            .await
            .unwrap();
        let _ = stream.read(&mut [0u8; 16]).await;
    });
    let other = check(&ssh_addr, &key, &[]);
    assert_eq!(other.status.code(), Some(1));
    let message = String::from_utf8_lossy(&other.stderr);
    assert!(
        message.contains("not a linkgate/1 server") && message.contains("SSH-2.0-OpenSSH_9.2p1"),
        "{message}"
    );
}

/// Seed has no verdict, so `check --protocol seed` judges by whether the server hangs up. A
/// linkgate/1 gate is named as such, and a server that sends something and then closes has not
/// admitted us.
#[tokio::test(flavor = "multi_thread")]
async fn check_protocol_seed_is_not_fooled_by_a_refusing_server() {
    let dir = TempDir::new().unwrap();
    let recipe = dir.path().join("recipe.key");
    fs::write(&recipe, format!("{}\n", hex::encode(b"secret"))).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&recipe, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let keys = TempDir::new().unwrap();
    keygen(keys.path(), "alice");
    let (serve, gate) = start_serve(keys.path(), None, &[]).await;
    let gate = gate.to_string();
    let out = tokio::task::block_in_place(|| check(&gate, &recipe, &["--protocol", "seed"]));
    let message = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(
        message.contains("it speaks linkgate/1, not the seed protocol (leave out --protocol seed)"),
        "{message}"
    );
    assert!(out.stdout.is_empty(), "nothing reported as admitted");
    serve.wait_for_log(&["connection rejected"]).await;

    // A server that takes the answer, says one byte and hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(&[7u8; 32]).await.unwrap();
        let mut answer = [0u8; 32];
        stream.read_exact(&mut answer).await.unwrap();
        let _ = stream.write_all(b"x").await;
    });
    let out = tokio::task::block_in_place(|| check(&addr, &recipe, &["--protocol", "seed"]));
    let message = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(
        message.contains("closed the connection after our answer"),
        "{message}"
    );

    // An MD5 answer (16 bytes) to a SHA-256 seed gate: the gate waits for the rest until its
    // handshake timeout; the check waits that out rather than call it an admission.
    let (seed_gate, seed_addr) = start_serve(
        dir.path(),
        None,
        &["--protocol", "seed", "--handshake-timeout", "1s"],
    )
    .await;
    let seed_addr = seed_addr.to_string();
    let out =
        tokio::task::block_in_place(|| check(&seed_addr, &recipe, &["--protocol", "seed-md5"]));
    let message = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(message.contains("the other digest"), "{message}");
    seed_gate.wait_for_log(&["connection rejected"]).await;
    let out = tokio::task::block_in_place(|| check(&seed_addr, &recipe, &["--protocol", "seed"]));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--server` is checked when `connect` starts, not when its first client arrives, and may not
/// be the address it listens on (each client would open another connection through itself).
#[test]
fn connect_checks_its_server_address_at_start() {
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "alice");
    let key = key.to_str().unwrap();
    for (server, says, status) in [
        ("127.0.0.1:65536", "\"65536\" is not a port number", 2),
        ("127.0.0.1", "is not HOST:PORT", 2),
        ("unix:/tmp/gate.sock", "reaches a gate over TCP only", 2),
        ("::1:7700", "in brackets", 2),
    ] {
        let out = run(&[
            "connect",
            "--listen",
            "127.0.0.1:0",
            "--server",
            server,
            "--key",
            key,
        ]);
        let message = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "{server}: {message}");
        assert!(message.contains(says), "{server}: {message}");
        assert_eq!(message.lines().count(), 1, "{message}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let own = format!("127.0.0.1:{port}");
    for server in [
        own.clone(),
        format!("localhost:{port}"),
        format!("0.0.0.0:{port}"),
    ] {
        let out = run(&[
            "connect", "--listen", &own, "--server", &server, "--key", key,
        ]);
        let message = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{server}: {message}");
        assert!(
            message.contains("it would connect to itself"),
            "{server}: {message}"
        );
    }
}

/// An argument that is not UTF-8 is a usage error like any other, not a panic.
#[cfg(unix)]
#[test]
fn an_argument_that_is_not_utf8_is_a_usage_error() {
    use std::os::unix::ffi::OsStrExt;
    let out = std::process::Command::new(process::BIN)
        .arg("check")
        .arg("--server")
        .arg(std::ffi::OsStr::from_bytes(b"\xff:7700"))
        .env("RUST_BACKTRACE", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid UTF-8"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// `--id` names the key, so the file may be called anything, even what is no key id.
#[tokio::test(flavor = "multi_thread")]
async fn id_presents_a_key_file_under_another_name() {
    let keys = TempDir::new().unwrap();
    let alice = keygen(keys.path(), "alice");
    let (serve, gate) = start_serve(keys.path(), None, &[]).await;
    let elsewhere = TempDir::new().unwrap();
    let odd = elsewhere.path().join("my laptop's key.key");
    fs::copy(&alice, &odd).unwrap();
    let gate = gate.to_string();
    let out = tokio::task::block_in_place(|| check(&gate, &odd, &["--id", "alice"]));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("admitted as alice"));
    serve.wait_for_log(&["admitted", "key_id=alice"]).await;
    let out = tokio::task::block_in_place(|| check(&gate, &odd, &[]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid key id"));
}

/// Flags that would be silently ignored are refused instead.
#[test]
fn flags_that_cannot_apply_are_refused() {
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "alice");
    let (key, keys) = (key.to_str().unwrap(), dir.path().to_str().unwrap());
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "check",
                "--server",
                "127.0.0.1:9",
                "--key",
                key,
                "--protocol",
                "seed",
                "--mode",
                "sealed-fs",
            ],
            "--mode sealed-fs does not apply to --protocol seed",
        ),
        (
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--keys",
                keys,
                "--key-id",
                "bob",
            ],
            "--key-id names a key read from standard input",
        ),
        (
            &["serve", "--listen", "127.0.0.1:0", "--key-id", "bob"],
            "--key-id names a key read with --keys - or --key-env",
        ),
        (
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--keys",
                keys,
                "--penalty-min",
                "1m",
                "--penalty-max",
                "10s",
            ],
            "penalty-min (1m) is longer than penalty-max (10s)",
        ),
        (
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--keys",
                keys,
                "--protocol",
                "seed",
                "--require-forward-secrecy",
            ],
            "protocol seed has no sealed modes",
        ),
    ];
    for (args, says) in cases {
        let out = run(args);
        let message = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {message}");
        assert!(message.contains(says), "{args:?}: {message}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// The open-files estimate from a bound the user chose cannot overflow (a debug build panicked
/// at `2 * max-connections`).
#[tokio::test(flavor = "multi_thread")]
async fn the_largest_max_connections_is_taken_without_a_panic() {
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "alice");
    let connect = Linkgate::spawn(&[
        "connect",
        "--listen",
        "127.0.0.1:0",
        "--server",
        "127.0.0.1:9",
        "--key",
        key.to_str().unwrap(),
        "--max-connections",
        "18446744073709551615",
    ]);
    connect.wait_for_log(&["linkgate connect: listening"]).await;
    assert!(
        !connect.stderr().contains("panicked"),
        "{}",
        connect.stderr()
    );
}

/// `println!` panics when standard output cannot be written (a closed pipe, a full disk): the
/// command says so in one line instead.
#[cfg(target_os = "linux")]
#[test]
fn an_unwritable_standard_output_is_one_line_and_status_1() {
    let dir = TempDir::new().unwrap();
    let key = dir.path().join("alice.key");
    let config = dir.path().join("gate.toml");
    fs::write(
        &config,
        format!(
            "[[service]]\nname = \"one\"\nlisten = \"127.0.0.1:0\"\nkeys = \"{}\"\n",
            key.display()
        ),
    )
    .unwrap();
    for args in [
        vec!["keygen", "--out", key.to_str().unwrap()],
        vec!["check-config", config.to_str().unwrap()],
    ] {
        let full = fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = std::process::Command::new(process::BIN)
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .stdin(std::process::Stdio::null())
            .stdout(full)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr,
            "linkgate: cannot write to standard output: No space left on device (os error 28)\n",
            "{args:?}"
        );
    }
}

#[cfg(unix)]
#[test]
fn keygen_writes_private_files_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("bob.key");
    let out = run(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("bob") && said.contains(path.to_str().unwrap()),
        "{said}"
    );
    let first = fs::read_to_string(&path).unwrap();
    assert!(
        !said.contains(first.trim()),
        "the key itself is not printed"
    );
    assert_eq!(first.trim().len(), 64, "32 bytes as hex");
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    Key::from_file(&path).expect("loads as a key");

    let again = run(&["keygen", "--out", path.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(
        message.contains("already exists") && message.contains("--force"),
        "{message}"
    );
    let missing_dir = dir.path().join("newdir/alice.key");
    let out = run(&["keygen", "--out", missing_dir.to_str().unwrap()]);
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("does not exist")
            && message.contains("mkdir -m 700")
            && !message.contains("--force"),
        "{message}"
    );
    for unloadable in [".key", ".hidden.key", "alice"] {
        let out = run(&[
            "keygen",
            "--out",
            dir.path().join(unloadable).to_str().unwrap(),
        ]);
        let message = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{unloadable}");
        assert!(
            message.contains("name the file ID.key"),
            "{unloadable}: {message}"
        );
    }
    assert_eq!(fs::read_to_string(&path).unwrap(), first, "untouched");

    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let forced = run(&["keygen", "--out", path.to_str().unwrap(), "--force"]);
    assert!(forced.status.success());
    assert_ne!(fs::read_to_string(&path).unwrap(), first, "replaced");
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let printed = run(&["keygen", "--out", "-"]);
    assert!(printed.status.success());
    let hex_line = String::from_utf8_lossy(&printed.stdout);
    assert_eq!(hex_line.trim().len(), 64);
    assert!(hex_line.trim().chars().all(|c| c.is_ascii_hexdigit()));

    let bad = run(&[
        "keygen",
        "--out",
        dir.path().join("my key.key").to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("stem is its"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_transfer_finish_then_exits_zero() {
    let dir = TempDir::new().unwrap();
    let key_path = keygen(dir.path(), "alice");
    let credentials = Credentials::new(Key::from_file(&key_path).unwrap());
    let (mut serve, gate) = start_serve(dir.path(), None, &["--drain-timeout", "20s"]).await;

    let stream = linkgate::connect(gate, &credentials).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let data = payload(8 << 20, 3);
    let expected = Sha256::digest(&data);
    let sender = tokio::spawn(async move {
        // Slowly: 8 MiB in 64 chunks over about 1.3 s.
        for chunk in data.chunks(128 * 1024) {
            writer.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writer.shutdown().await.unwrap();
    });
    let mut first = vec![0u8; 1024];
    reader.read_exact(&mut first).await.unwrap();

    // Mid-transfer.
    let signalled = Instant::now();
    serve.signal("TERM");
    serve.wait_for_log(&["received SIGTERM"]).await;
    assert!(
        linkgate::connect(gate, &credentials).await.is_err(),
        "no new connection is accepted while draining"
    );

    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).await.unwrap();
    sender.await.unwrap();
    first.extend_from_slice(&rest);
    assert_eq!(
        Sha256::digest(&first),
        expected,
        "the transfer finished intact"
    );

    let status = serve
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exits within the drain timeout");
    assert_eq!(status.code(), Some(0));
    println!("exited {:?} after SIGTERM", signalled.elapsed());
    serve
        .wait_for_log(&["closed", "key_id=alice", "bytes_in=8388608"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_timeout_cuts_off_a_stuck_connection_and_still_exits_zero() {
    // Through an upstream that never answers, in plain mode (the case where a cut-off could pass
    // for a clean end) and sealed.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = upstream.accept().await {
            held.push(stream);
        }
    });
    for mode in [linkgate::Mode::Plain, linkgate::Mode::SealedFs] {
        let dir = TempDir::new().unwrap();
        let key_path = keygen(dir.path(), "alice");
        let credentials = Credentials::new(Key::from_file(&key_path).unwrap()).with_mode(mode);
        let (mut serve, gate) = start_serve(
            dir.path(),
            Some(upstream_addr),
            &["--drain-timeout", "300ms", "--allow-plain"],
        )
        .await;
        let mut stuck = linkgate::connect(gate, &credentials).await.unwrap();
        serve.wait_for_log(&["admitted"]).await;
        serve.signal("INT");
        let status = serve
            .wait_exit(Duration::from_secs(5))
            .await
            .expect("exits after the drain timeout");
        assert_eq!(status.code(), Some(0));
        serve
            .wait_for_log(&["closing the connections still open"])
            .await;
        serve
            .wait_for_log(&["closed: still open at shutdown", "key_id=alice"])
            .await;
        let end = stuck.read_to_end(&mut Vec::new()).await;
        assert!(
            end.is_err(),
            "{mode}: the client sees a reset or a truncation, not an end: {end:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_during_the_drain_stops_at_once() {
    let dir = TempDir::new().unwrap();
    let key_path = keygen(dir.path(), "alice");
    let credentials = Credentials::new(Key::from_file(&key_path).unwrap());
    let (mut serve, gate) = start_serve(dir.path(), None, &["--drain-timeout", "60s"]).await;
    let _open = linkgate::connect(gate, &credentials).await.unwrap();
    serve.wait_for_log(&["admitted"]).await;
    serve.signal("TERM");
    serve
        .wait_for_log(&["received SIGTERM", "letting open connections finish"])
        .await;
    assert!(
        serve.wait_exit(Duration::from_millis(500)).await.is_none(),
        "still draining"
    );
    serve.signal("TERM");
    let status = serve
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("stops at once");
    assert_eq!(status.code(), Some(0));
    serve
        .wait_for_log(&["received SIGTERM again", "closing open connections now"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_json_logs_every_line_of_a_failing_start_is_json() {
    let dir = TempDir::new().unwrap();
    for args in [
        vec![
            "serve",
            "--keys",
            dir.path().to_str().unwrap(),
            "--log-format",
            "json",
        ],
        vec![
            "serve",
            "--listen",
            "unix:/nonexistent/dir/x.sock",
            "--keys",
            "k",
            "--log-format",
            "json",
        ],
        vec!["check", "--key", "/nonexistent.key", "--log-format", "json"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.trim().is_empty());
        for line in stderr.lines() {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
            assert!(value["level"].is_string(), "{line}");
        }
        assert!(stderr.contains("\"error\""), "{stderr}");
    }
    // Usage errors (status 2) too, though the arguments did not parse.
    for args in [
        vec!["--log-format", "json", "serv"],
        vec!["--log-format=json", "check", "--timeout", "5x"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let value: serde_json::Value = serde_json::from_str(stderr.trim())
            .unwrap_or_else(|err| panic!("not JSON ({err}): {stderr}"));
        assert!(
            value["error"].as_str().unwrap().contains("see 'linkgate"),
            "{stderr}"
        );
    }
    // check's result, as JSON too.
    let keys = TempDir::new().unwrap();
    let key = keygen(keys.path(), "alice");
    let (_serve, gate) = start_serve(keys.path(), None, &[]).await;
    let out = check(&gate.to_string(), &key, &["--log-format", "json"]);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["admitted"], true);
    assert_eq!(value["key_id"], "alice");
    assert_eq!(value["mode"], "sealed-fs");
}

#[tokio::test(flavor = "multi_thread")]
async fn newcomer_mistakes_get_messages_that_say_what_to_do() {
    // clap's suggestions survive, and point at the subcommand's help.
    let out = run(&["serv"]);
    assert_one_line_error(&out, &["did you mean 'serve'?", "see 'linkgate --help'"]);
    let out = run(&["serve", "--upstrem", "127.0.0.1:1"]);
    assert_one_line_error(
        &out,
        &["did you mean '--upstream'?", "see 'linkgate serve --help'"],
    );
    // A bare port is explained; :PORT is every interface.
    let out = run(&["serve", "--listen", "7720"]);
    assert_one_line_error(&out, &["only a port", "127.0.0.1:7720", ":7720"]);
    // A key on standard input given as /dev/stdin: told how to do it.
    let mut child = std::process::Command::new(process::BIN)
        .args(["check", "--key", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_one_line_error(&out, &["--key - with --id NAME", "not a regular file"]);
    // A server that sends nothing is named for what it probably is.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let _held = silent.accept().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "alice");
    let out = check(&silent_addr, &key, &["--timeout", "500ms"]);
    assert_one_line_error(
        &out,
        &["the server sent nothing", "is it a linkgate gate?", "500ms"],
    );
    // Raw binary (spiped) and base64 keys load; text that is no key says what would be.
    let raw = dir.path().join("raw.key");
    let bytes: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(91) ^ 0xa5).collect();
    fs::write(&raw, &bytes).unwrap();
    let b64 = dir.path().join("b64.key");
    fs::write(&b64, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
    fs::remove_file(&key).unwrap();
    for path in [&raw, &b64] {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (gate_process, _) = start_serve(dir.path(), None, &[]).await;
    gate_process
        .wait_for_log(&["listening", "keys=b64,raw"])
        .await;
    let text = dir.path().join("text.key");
    fs::write(&text, "my secret password").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&text, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--keys",
        dir.path().to_str().unwrap(),
    ]);
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("text.key: not a key") && message.contains("raw bytes (spiped"),
        "{message}"
    );
}

/// Exit status and stderr of a bad invocation: one line, nonzero, no panic.
fn assert_one_line_error(out: &std::process::Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("linkgate: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gives_one_line_errors() {
    let dir = TempDir::new().unwrap();
    let keys = dir.path().to_str().unwrap();

    let out = run(&["serve", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(&out, &["--bogus"]);

    let out = run(&["serve", "--keys", keys, "--upstream", "localhost"]);
    assert_one_line_error(&out, &["localhost", "HOST:PORT"]);

    let out = run(&["serve", "--keys", keys, "--handshake-timeout", "five"]);
    assert_one_line_error(&out, &["5s or 500ms"]);

    // A weak key: 15 bytes.
    let weak = dir.path().join("weak.key");
    fs::write(&weak, "00".repeat(15)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&weak, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = run(&["serve", "--listen", "127.0.0.1:0", "--keys", keys]);
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(&out, &[weak.to_str().unwrap(), "15 bytes"]);
    fs::remove_file(&weak).unwrap();

    // A key readable by others.
    let open = dir.path().join("open.key");
    fs::write(&open, "00".repeat(32)).unwrap();
    let out = run(&["check", "--key", open.to_str().unwrap()]);
    #[cfg(unix)]
    assert_one_line_error(&out, &[open.to_str().unwrap(), "too open"]);

    // Address in use.
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    keygen(dir.path(), "alice");
    #[cfg(unix)]
    fs::remove_file(&open).unwrap();
    let out = run(&["serve", "--listen", &taken_addr, "--keys", keys]);
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(&out, &["cannot listen on", &taken_addr, "in use"]);

    let out = run(&[
        "serve",
        "--keys",
        dir.path().join("nothing-here").to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &["nothing-here", "cannot read"]);

    let empty = TempDir::new().unwrap();
    let out = run(&["serve", "--keys", empty.path().to_str().unwrap()]);
    assert_one_line_error(&out, &["no *.key files", "linkgate keygen"]);

    let out = run(&["serve", "--upstream", "127.0.0.1:6379"]);
    assert_one_line_error(&out, &["--upstream needs --keys", "linkgate keygen"]);

    // A config file's service is told in the file's own words, and not about an upstream it
    // does not name.
    let config = empty.path().join("gate.toml");
    fs::write(
        &config,
        "[[service]]\nname = \"x\"\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    for command in ["check-config", "serve"] {
        let out = if command == "serve" {
            run(&["serve", "--config", config.to_str().unwrap()])
        } else {
            run(&["check-config", config.to_str().unwrap()])
        };
        assert_one_line_error(
            &out,
            &["service x: no keys: set keys = ", "linkgate keygen"],
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains("--upstream"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_without_keys_creates_a_first_key_and_shows_the_client_commands() {
    let dir = TempDir::new().unwrap();
    let serve = Linkgate::spawn_in(Some(dir.path()), &["serve", "--listen", "127.0.0.1:0"]);
    let gate = serve.listen_addr().await;
    let key_path = dir.path().join("keys/default.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let shown = serve.stdout();
    let check_line = format!("linkgate check --server {gate} --key keys/default.key");
    assert!(shown.contains(&check_line), "{shown}");
    assert!(shown.contains("linkgate connect"), "{shown}");

    // The printed command works, from the same directory.
    let out = std::process::Command::new(process::BIN)
        .current_dir(dir.path())
        .args([
            "check",
            "--server",
            &gate.to_string(),
            "--key",
            "keys/default.key",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "admitted as default (mode sealed-fs, upstream reachable)\n"
    );

    // The built-in echo answers an admitted client.
    let key = Key::from_file(&key_path).unwrap();
    let mut stream = linkgate::connect(gate, &Credentials::new(key))
        .await
        .unwrap();
    stream.write_all(b"echo?").await.unwrap();
    let mut back = [0u8; 5];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"echo?");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_admissions_and_closes() {
    let dir = TempDir::new().unwrap();
    let key = Key::from_file(keygen(dir.path(), "alice")).unwrap();
    let keys = dir.path().to_str().unwrap();
    let serve = Linkgate::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--keys",
        keys,
        "--log-format",
        "json",
    ]);
    let line = serve
        .wait_for_log(&["\"message\":\"linkgate serve: listening\""])
        .await;
    let start = line.find("\"listen\":\"").unwrap() + 10;
    let gate: SocketAddr = line[start..].split('"').next().unwrap().parse().unwrap();

    let mut stream = linkgate::connect(gate, &Credentials::new(key))
        .await
        .unwrap();
    stream.write_all(b"12345").await.unwrap();
    stream.read_exact(&mut [0u8; 5]).await.unwrap();
    // End the session cleanly (close_notify); dropping it would read as a truncation.
    stream.shutdown().await.unwrap();
    stream.read_to_end(&mut Vec::new()).await.unwrap();
    let admitted = serve
        .wait_for_log(&["\"message\":\"admitted\"", "\"key_id\":\"alice\""])
        .await;
    assert!(
        admitted.starts_with('{') && admitted.ends_with('}'),
        "{admitted}"
    );
    serve
        .wait_for_log(&[
            "\"message\":\"closed\"",
            "\"bytes_in\":5",
            "\"bytes_out\":5",
            "duration_ms",
        ])
        .await;

    let err = linkgate::connect(
        gate,
        &Credentials::new(Key::generate(KeyId::new("alice").unwrap()).unwrap()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Rejected(Rejection::Denied)));
    serve
        .wait_for_log(&[
            "\"message\":\"connection rejected\"",
            "\"reason\":\"denied: wrong proof for key id alice\"",
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_limits_are_clamped_not_a_panic() {
    let dir = TempDir::new().unwrap();
    let key = Key::from_file(keygen(dir.path(), "alice")).unwrap();
    let max = usize::MAX.to_string();
    let (serve, gate) = start_serve(dir.path(), None, &["--max-connections", &max]).await;
    let mut stream = linkgate::connect(gate, &Credentials::new(key))
        .await
        .unwrap();
    stream.write_all(b"ok").await.unwrap();
    stream.read_exact(&mut [0u8; 2]).await.unwrap();
    assert!(!serve.stderr().contains("panicked"), "{}", serve.stderr());
}

/// At --max-connections nothing new is accepted, and the log says so (once, not per waiting
/// connection); a connection that ends lets the next one in.
#[tokio::test(flavor = "multi_thread")]
async fn the_connection_bound_holds_new_connections_back_and_says_so() {
    let dir = TempDir::new().unwrap();
    let key = Key::from_file(keygen(dir.path(), "alice")).unwrap();
    let (serve, gate) = start_serve(dir.path(), None, &["--max-connections", "1"]).await;
    let credentials = Credentials::new(key);
    let mut first = linkgate::connect(gate, &credentials).await.unwrap();
    first.write_all(b"1").await.unwrap();
    first.read_exact(&mut [0u8; 1]).await.unwrap();
    let waiting = tokio::spawn(async move { linkgate::connect(gate, &credentials).await });
    serve
        .wait_for_log(&["connection bound reached", "service=default", "bound=1"])
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a second connection was taken at a bound of one"
    );
    drop(first);
    let mut second = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the next connection was not taken once the first ended")
        .unwrap()
        .unwrap();
    second.write_all(b"2").await.unwrap();
    second.read_exact(&mut [0u8; 1]).await.unwrap();
    assert_eq!(
        serve.stderr().matches("connection bound reached").count(),
        1
    );
}

/// The README's first command: the demo tells its story on stdout, exits 0, and nothing else
/// (no warning) interrupts it.
#[test]
fn the_demo_admits_its_client_and_refuses_its_three_impostors() {
    // Long enough for a loaded machine to finish the real client's handshake within it.
    let out = run(&["demo", "--handshake-timeout", "1s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "admitted  plain client via `connect`",
        "got it back",
        "refused   impostor with a wrong key for \"demo\": denied by the server",
        "refused   plain HTTP client that skips the handshake",
        "refused   silent client: got only the 40-byte challenge, closed after",
        "demo ok: 1 client admitted, 3 refused",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert_eq!(stderr, "", "the demo's story was interrupted");
}
