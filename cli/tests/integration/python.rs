//! Python interop, with real Python processes and the real `linkgate` binary on 127.0.0.1: the
//! `linkgate` Python package (python/) against the Rust gate and clients in every mode, its
//! threaded and asyncio servers against bad peers and tampering relays, the original recipe's
//! code against `--protocol seed`, and the package's own unit tests.
//!
//! Which Python: `LINKGATE_PYTHON` if set (CI points it at a virtualenv made with
//! `pip install "./python[sealed]"`; the tests then import the installed package, run outside
//! python/ and without PYTHONPATH), else `python3` with PYTHONPATH=python/src. Without either,
//! each test prints that it was skipped and why; without `cryptography`, the sealed modes' parts
//! print "skipped: cryptography not installed".

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use linkgate::protocol::ClientHello;
use linkgate::{Credentials, Error, Key, Mode, Rejection};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::payload;
use crate::support::process::{Linkgate, check, keygen, start_serve};
use crate::support::start_connect;
use crate::support::wire::record_counting_relay;

const ALL_MODES: [&str; 3] = ["plain", "sealed", "sealed-fs"];
/// How long one Python process may run before the test fails.
const PYTHON_LIMIT: Duration = Duration::from_secs(120);
/// How long one test may run.
const TEST_LIMIT: Duration = Duration::from_secs(300);

/// Runs a test's body within TEST_LIMIT (the blocking parts are bounded on their own).
async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test finished in time");
}

/// The Python the tests run, and how.
struct Python {
    program: PathBuf,
    /// From LINKGATE_PYTHON: test the package installed there, never the source folder.
    installed: bool,
    cryptography: OnceLock<bool>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository")
}

fn vectors() -> PathBuf {
    repo().join("tests/vectors/linkgate1.json")
}

fn python() -> Option<&'static Python> {
    static PYTHON: OnceLock<Option<Python>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        if let Some(program) = std::env::var_os("LINKGATE_PYTHON") {
            return Some(Python {
                program: program.into(),
                installed: true,
                cryptography: OnceLock::new(),
            });
        }
        match Command::new("python3").arg("--version").output() {
            Ok(out) if out.status.success() => Some(Python {
                program: "python3".into(),
                installed: false,
                cryptography: OnceLock::new(),
            }),
            _ => None,
        }
    });
    if found.is_none() {
        assert!(
            std::env::var_os("LINKGATE_REQUIRE_PEERS").is_none(),
            "python3 is not installed, which LINKGATE_REQUIRE_PEERS requires"
        );
        println!(
            "skipped: python3 is not installed (and LINKGATE_PYTHON is not set), \
             so the Python interop tests cannot run"
        );
    }
    found.as_ref()
}

impl Python {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .current_dir(std::env::temp_dir())
            .env("LINKGATE_VECTORS", vectors())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null());
        if self.installed {
            command.env_remove("PYTHONPATH");
        } else {
            command.env("PYTHONPATH", repo().join("python/src"));
        }
        command
    }

    fn has_cryptography(&self) -> bool {
        let found = *self.cryptography.get_or_init(|| {
            let mut command = self.command();
            command.args(["-c", "import cryptography"]);
            run_bounded(&mut command, PYTHON_LIMIT).status.success()
        });
        // Without it the sealed-mode interop tests shrink to plain mode or skip.
        assert!(
            found || std::env::var_os("LINKGATE_REQUIRE_PEERS").is_none(),
            "{} lacks cryptography, which LINKGATE_REQUIRE_PEERS requires",
            self.program.display()
        );
        found
    }

    /// The modes to test: all three, or plain only (saying so) without `cryptography`.
    fn modes(&self) -> Vec<&'static str> {
        if self.has_cryptography() {
            ALL_MODES.to_vec()
        } else {
            println!("skipped: cryptography not installed (modes sealed and sealed-fs)");
            vec!["plain"]
        }
    }

    /// sealed-fs if it can be tested, else plain.
    fn best_mode(&self) -> &'static str {
        if self.has_cryptography() {
            "sealed-fs"
        } else {
            "plain"
        }
    }

    /// Runs a script to completion, within PYTHON_LIMIT, off the async runtime's thread.
    fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command();
        command.args(args);
        tokio::task::block_in_place(|| run_bounded(&mut command, PYTHON_LIMIT))
    }

    /// A long-running script, killed when dropped.
    fn spawn(&self, args: &[&str]) -> Linkgate {
        let mut command = self.command();
        command.args(args);
        Linkgate::spawn_command(command)
    }
}

/// Runs `command` to completion with its output captured; kills it and fails past `limit`.
fn run_bounded(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `linkgate check`, off the async runtime's thread.
fn check_now(server: &str, key: &Path, extra: &[&str]) -> Output {
    tokio::task::block_in_place(|| check(server, key, extra))
}

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// client.py's test pattern: byte i is (31 i + 7) mod 251.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((31 * i + 7) % 251) as u8).collect()
}

/// What client.py --size SIZE prints after a clean exchange in `mode`.
fn size_report(mode: &str, size: usize) -> String {
    let digest = sha256_hex(&pattern(size));
    format!("admitted alice mode={mode}\n")
        + &format!("sent {size} sha256={digest}\n")
        + &format!("received {size} sha256={digest}\n")
        + "clean end\n"
}

/// The port a Python server printed as "listening PORT".
async fn python_port(server: &Linkgate) -> String {
    let line = server.wait_for_stdout(&["listening"]).await;
    line.split_whitespace().nth(1).expect("a port").to_owned()
}

/// Starts cli/tests/py/server.py KIND KEYS EXTRA...; returns it and its address.
async fn start_python_server(
    py: &Python,
    kind: &str,
    keys: &Path,
    extra: &[&str],
) -> (Linkgate, String) {
    let server_py = script("server.py");
    let mut args = vec![server_py.as_str(), kind, keys.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = py.spawn(&args);
    let addr = format!("127.0.0.1:{}", python_port(&server).await);
    (server, addr)
}

/// A key file holding `secret` (any length), mode 0600.
fn raw_key_file(dir: &Path, id: &str, secret: &[u8]) -> PathBuf {
    let path = dir.join(format!("{id}.key"));
    std::fs::write(&path, hex::encode(secret)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

/// Sends `data` and half-closes, while reading until the peer's clean end; returns what came
/// back.
async fn echo_with_half_close<S>(stream: S, data: Vec<u8>) -> Vec<u8>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let sender = tokio::spawn(async move {
        writer.write_all(&data).await.unwrap();
        writer.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut back))
        .await
        .expect("the echo ends in time")
        .expect("a clean end");
    sender.await.unwrap();
    back
}

// --- the package itself ---------------------------------------------------------------------

#[test]
fn python_unit_tests_pass() {
    let Some(py) = python() else { return };
    let tests = repo().join("python/tests");
    let mut command = py.command();
    command.args([
        "-m",
        "unittest",
        "discover",
        "-s",
        tests.to_str().unwrap(),
        "-v",
    ]);
    let out = run_bounded(&mut command, Duration::from_secs(300));
    let report = stderr(&out);
    println!("{report}");
    assert!(out.status.success(), "Python unit tests failed:\n{report}");
    let ran_ok = |name: &str| {
        report
            .lines()
            .any(|line| line.starts_with(name) && line.ends_with("... ok"))
    };
    assert!(report.contains("\nOK"), "{report}");
    assert!(ran_ok("test_mode_0x00_plain"), "the plain vectors ran");
    if py.has_cryptography() {
        assert!(ran_ok("test_mode_0x01_sealed"), "the sealed vectors ran");
        assert!(
            ran_ok("test_mode_0x02_sealed_fs"),
            "the sealed-fs vectors ran"
        );
        assert!(
            !report.contains("cryptography not installed"),
            "nothing skipped: {report}"
        );
    } else {
        println!("skipped: cryptography not installed (the sealed modes' unit tests)");
    }
}

#[test]
fn the_python_package_is_the_one_under_test_and_in_step_with_the_crate() {
    let Some(py) = python() else { return };
    let mut command = py.command();
    command.args([
        "-c",
        "import linkgate; print(linkgate.__version__); print(linkgate.__file__)",
    ]);
    let out = run_bounded(&mut command, PYTHON_LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(env!("CARGO_PKG_VERSION")), "{text}");
    let location = PathBuf::from(lines.next().expect("the package's file"));
    let source = repo().join("python/src");
    if py.installed {
        assert!(
            !location.starts_with(&source),
            "LINKGATE_PYTHON must test the installed package, not {}",
            location.display()
        );
    } else {
        assert!(location.starts_with(&source), "{}", location.display());
    }
}

// --- the Python client against the Rust gate -------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn python_client_through_the_rust_gate_in_every_mode() {
    bounded(async {
        let Some(py) = python() else { return };
        let keys = TempDir::new().unwrap();
        let key = keygen(keys.path(), "alice");
        let (serve, gate) = start_serve(keys.path(), None, &["--allow-plain"]).await;
        let (host, port) = (gate.ip().to_string(), gate.port().to_string());
        let client = script("client.py");
        let key_arg = key.to_str().unwrap();

        for mode in py.modes() {
            // A megabyte and a bit each way at once, then half-close: the echo still comes back in
            // full, and the gate's clean end follows.
            let size = (1 << 20) + 7;
            let out = py.run(&[
                &client,
                &host,
                &port,
                key_arg,
                "--mode",
                mode,
                "--size",
                &size.to_string(),
            ]);
            assert_eq!(
                stdout(&out),
                size_report(mode, size),
                "{mode}: {}",
                stderr(&out)
            );
            serve
                .wait_for_log(&["admitted", "key_id=alice", &format!("mode={mode}")])
                .await;

            let out = py.run(&[
                &client,
                &host,
                &port,
                key_arg,
                "--mode",
                mode,
                "--message",
                "hello from python",
            ]);
            assert_eq!(
                stdout(&out),
                format!("admitted alice mode={mode}\necho hello from python\nclean end\n"),
                "{mode}: {}",
                stderr(&out)
            );
        }

        let other = TempDir::new().unwrap();
        let wrong = keygen(other.path(), "alice");
        let out = py.run(&[
            &client,
            &host,
            &port,
            wrong.to_str().unwrap(),
            "--mode",
            py.best_mode(),
            "--message",
            "x",
        ]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert_eq!(stdout(&out), "Denied: denied by the server\n");
        serve
            .wait_for_log(&["connection rejected", "wrong proof for key id alice"])
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_client_and_a_gate_that_requires_forward_secrecy() {
    bounded(async {
        let Some(py) = python() else { return };
        if !py.has_cryptography() {
            println!("skipped: cryptography not installed");
            return;
        }
        let keys = TempDir::new().unwrap();
        let key = keygen(keys.path(), "alice");
        let (serve, gate) = start_serve(keys.path(), None, &["--require-forward-secrecy"]).await;
        let (host, port) = (gate.ip().to_string(), gate.port().to_string());
        let client = script("client.py");
        for mode in ["plain", "sealed"] {
            let out = py.run(&[
                &client,
                &host,
                &port,
                key.to_str().unwrap(),
                "--mode",
                mode,
                "--message",
                "x",
            ]);
            assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
            assert_eq!(
                stdout(&out),
                format!(
                    "RefusedAsMalformed: the server refused our response as malformed \
                 (it may not allow mode {mode})\n"
                )
            );
            serve
                .wait_for_log(&[
                    "connection rejected",
                    &format!("mode {mode} refused by policy"),
                ])
                .await;
        }
        // The default mode gets in.
        let out = py.run(&[
            &client,
            &host,
            &port,
            key.to_str().unwrap(),
            "--message",
            "fs",
        ]);
        assert_eq!(
            stdout(&out),
            "admitted alice mode=sealed-fs\necho fs\nclean end\n",
            "{}",
            stderr(&out)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_client_key_updates_through_the_rust_gate() {
    bounded(async {
        let Some(py) = python() else { return };
        if !py.has_cryptography() {
            println!("skipped: cryptography not installed");
            return;
        }
        let keys = TempDir::new().unwrap();
        let key = keygen(keys.path(), "alice");
        // Both sides update their keys every 4 records: about 130 updates each way per mode.
        let (_serve, gate) =
            start_serve(keys.path(), None, &["--key-update-after-records", "4"]).await;
        let size = 2 << 20;
        // In sealed mode, "alice"'s RESPONSE is 2 + 5 + 64 bytes; CHALLENGE and VERDICT 40 + 33.
        for (mode, skip_up, skip_down) in [
            ("sealed", 71, 73),
            (
                "sealed-fs",
                SEALED_FS_ALICE_RESPONSE,
                SEALED_FS_GATE_HANDSHAKE,
            ),
        ] {
            let (relay, counts) = record_counting_relay(gate, skip_up, skip_down).await;
            let (host, port) = (relay.ip().to_string(), relay.port().to_string());
            let out = py.run(&[
                &script("client.py"),
                &host,
                &port,
                key.to_str().unwrap(),
                "--mode",
                mode,
                "--size",
                &size.to_string(),
                "--key-update-interval",
                "4",
            ]);
            assert_eq!(
                stdout(&out),
                size_report(mode, size),
                "{mode}: {}",
                stderr(&out)
            );
            for (way, count) in [("up", &counts.up), ("down", &counts.down)] {
                // The KeyUpdate is every 4th record, at `seq` 3 under each key.
                if let Err(wrong) = count.key_updates_every(4, 128) {
                    panic!("{mode} {way}: {wrong}");
                }
            }
        }
    })
    .await;
}

// --- Rust clients against the Python servers -------------------------------------------------

async fn rust_clients_against(kind: &str) {
    let Some(py) = python() else { return };
    let keys = TempDir::new().unwrap();
    let key_path = keygen(keys.path(), "alice");
    let (server, addr) = start_python_server(py, kind, keys.path(), &["--allow-plain"]).await;
    let gate: SocketAddr = addr.parse().unwrap();

    for (i, mode) in py.modes().into_iter().enumerate() {
        // `linkgate check`: admitted, then a clean end from the Python handler.
        let out = check_now(&addr, &key_path, &["--mode", mode]);
        assert_eq!(
            stdout(&out),
            format!("admitted as alice (mode {mode}, upstream reachable)\n"),
            "{kind} {mode}: {}\nserver:\n{}",
            stderr(&out),
            server.stdout()
        );
        server
            .wait_for_stdout(&["admitted", "key_id=alice", &format!("mode={mode}")])
            .await;

        // The library: a megabyte each way, with half-close.
        let credentials = Credentials::new(Key::from_file(&key_path).unwrap())
            .with_mode(mode.parse::<Mode>().unwrap());
        let stream = linkgate::connect(addr.as_str(), &credentials)
            .await
            .unwrap();
        assert_eq!(stream.mode().as_str(), mode);
        let data = payload(1 << 20, 100 + i as u64);
        let back = echo_with_half_close(stream, data.clone()).await;
        assert!(
            back == data,
            "{kind} {mode}: the library got other bytes back"
        );
        server
            .wait_for_stdout(&[
                "handler done key_id=alice",
                &format!("received={}", data.len()),
                &sha256_hex(&data),
            ])
            .await;

        // `linkgate connect` in front of an unmodified client.
        let (_connect, local) = start_connect(gate, &key_path, &["--mode", mode]).await;
        let data = payload(300_000 + i, 200 + i as u64);
        let back =
            echo_with_half_close(TcpStream::connect(local).await.unwrap(), data.clone()).await;
        assert!(
            back == data,
            "{kind} {mode}: `connect` got other bytes back"
        );
        server
            .wait_for_stdout(&["handler done key_id=alice", &sha256_hex(&data)])
            .await;
    }

    // A wrong key is denied by the Python server, and it says why.
    let other = TempDir::new().unwrap();
    let wrong = keygen(other.path(), "alice");
    let out = check_now(&addr, &wrong, &["--mode", py.best_mode()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("denied for key id alice"),
        "{}",
        stderr(&out)
    );
    server
        .wait_for_stdout(&[
            "connection rejected",
            "reason=wrong_proof",
            "denied: wrong proof for key id alice",
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_clients_against_the_threaded_python_server_in_every_mode() {
    bounded(rust_clients_against("threaded")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_clients_against_the_asyncio_python_server_in_every_mode() {
    bounded(rust_clients_against("asyncio")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_servers_apply_their_mode_policy() {
    bounded(async {
        let Some(py) = python() else { return };
        if !py.has_cryptography() {
            println!("skipped: cryptography not installed (a server refusing plain needs it)");
            return;
        }
        let keys = TempDir::new().unwrap();
        let key = keygen(keys.path(), "alice");
        for kind in ["threaded", "asyncio"] {
            let (server, addr) =
                start_python_server(py, kind, keys.path(), &["--require-forward-secrecy"]).await;
            for (mode, policy) in [
                ("plain", "plain mode is not allowed"),
                ("sealed", "forward secrecy is required"),
            ] {
                let out = check_now(&addr, &key, &["--mode", mode]);
                assert_eq!(out.status.code(), Some(1), "{kind} {mode}");
                assert!(
                    stderr(&out).contains(&format!("the gate refused mode {mode}")),
                    "{}",
                    stderr(&out)
                );
                server
                    .wait_for_stdout(&[
                        "connection rejected",
                        "reason=mode_not_allowed",
                        &format!("mode {mode} refused by policy: {policy}"),
                    ])
                    .await;
            }
            let out = check_now(&addr, &key, &[]);
            assert_eq!(
                stdout(&out),
                "admitted as alice (mode sealed-fs, upstream reachable)\n",
                "{kind}: {}",
                stderr(&out)
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_server_with_the_wrong_key_is_an_impostor() {
    bounded(async {
        let Some(py) = python() else { return };
        let client_keys = TempDir::new().unwrap();
        let key_path = keygen(client_keys.path(), "alice");
        let impostor_keys = TempDir::new().unwrap();
        keygen(impostor_keys.path(), "alice");
        let (server, addr) = start_python_server(py, "impostor", impostor_keys.path(), &[]).await;

        for mode in py.modes() {
            let out = check_now(&addr, &key_path, &["--mode", mode]);
            assert_eq!(out.status.code(), Some(1));
            let message = stderr(&out);
            assert!(
                message.contains("the server failed to prove the key: possible impostor"),
                "{mode}: {message}"
            );
            server.wait_for_stdout(&["fooled?", "alice", mode]).await;

            let credentials = Credentials::new(Key::from_file(&key_path).unwrap())
                .with_mode(mode.parse::<Mode>().unwrap());
            let err = linkgate::connect(addr.as_str(), &credentials)
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::Rejected(Rejection::ImpostorServer)),
                "{mode}: {err}"
            );
        }
    })
    .await;
}

// --- bad peers against the Python servers ----------------------------------------------------

/// The cases that crashed the old inline loop, against `server.py KIND`: connect then reset, a
/// valid RESPONSE then reset, random bytes, and silence. The server keeps serving, and a
/// legitimate client is admitted promptly while the silent one is still connected.
async fn bad_peers_against(kind: &str) {
    let Some(py) = python() else { return };
    let keys = TempDir::new().unwrap();
    let key_path = keygen(keys.path(), "alice");
    let mode = py.best_mode();
    let extra: &[&str] = if mode == "plain" {
        &["--allow-plain"]
    } else {
        &[]
    };
    // The default handshake timeout: 5 s.
    let (mut server, addr) = start_python_server(py, kind, keys.path(), extra).await;
    let gate: SocketAddr = addr.parse().unwrap();
    let key = Key::from_file(&key_path).unwrap();

    let mut silent = TcpStream::connect(gate).await.unwrap();
    let mut challenge = [0u8; 40];
    silent.read_exact(&mut challenge).await.unwrap();
    assert_eq!(&challenge[..8], b"LGATE/1\n");

    for round in 0..10u8 {
        // Connect, then reset.
        let stream = TcpStream::connect(gate).await.unwrap();
        stream.set_zero_linger().unwrap();
        drop(stream);

        // A valid RESPONSE, then reset before the verdict.
        let mut stream = TcpStream::connect(gate).await.unwrap();
        let mut challenge = [0u8; 40];
        stream.read_exact(&mut challenge).await.unwrap();
        let server_nonce: [u8; 32] = challenge[8..].try_into().unwrap();
        let hello = ClientHello::new(
            &key,
            key.id(),
            mode.parse::<Mode>().unwrap(),
            &server_nonce,
            [round; 32],
            None,
        )
        .unwrap();
        stream.write_all(&hello.response().encode()).await.unwrap();
        stream.set_zero_linger().unwrap();
        drop(stream);

        // Random bytes.
        let mut stream = TcpStream::connect(gate).await.unwrap();
        let _ = stream.write_all(&payload(200, u64::from(round))).await;
        drop(stream);
    }

    // A legitimate client gets in at once, although the silent one still holds on.
    let started = Instant::now();
    let out = check_now(&addr, &key_path, &["--mode", mode]);
    let took = started.elapsed();
    assert_eq!(
        stdout(&out),
        format!(
            "admitted as {} (mode {mode}, upstream reachable)\n",
            "alice"
        ),
        "{kind}: {}\nserver:\n{}",
        stderr(&out),
        server.stdout()
    );
    assert!(
        took < Duration::from_secs(3),
        "{kind}: the check took {took:?}"
    );
    let mut byte = [0u8; 1];
    let still_open = matches!(
        silent.try_read(&mut byte),
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock
    );
    assert!(still_open, "{kind}: the silent client was still connected");

    // Each bad peer was refused, and logged.
    server
        .wait_for_stdout(&["connection rejected", "reason=malformed"])
        .await;
    server
        .wait_for_stdout(&["connection rejected", "reason=peer_reset"])
        .await;

    // The silent client is closed at the handshake timeout, which names the setting.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut rest))
        .await
        .expect("the server closes the silent client");
    server
        .wait_for_stdout(&[
            "connection rejected",
            "reason=timeout",
            "handshake timed out after 5s waiting for the client's response",
        ])
        .await;

    // Still serving.
    let out = check_now(&addr, &key_path, &["--mode", mode]);
    assert_eq!(out.status.code(), Some(0), "{kind}: {}", stderr(&out));
    assert!(
        server.wait_exit(Duration::from_millis(10)).await.is_none(),
        "{kind}: the server is still running"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_peers_do_not_stop_or_delay_the_threaded_python_server() {
    bounded(bad_peers_against("threaded")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_peers_do_not_stop_or_delay_the_asyncio_python_server() {
    bounded(bad_peers_against("asyncio")).await;
}

// --- tampering relays --------------------------------------------------------------------------

/// What the relay does to the records of the direction it tampers with (numbered from 0 after
/// the handshake).
#[derive(Clone, Copy, Debug)]
enum Tamper {
    FlipBit(usize),
    CutAfter(usize),
    Inject,
}

/// A relay to `target` that passes the first `handshake_len` bytes of one direction (towards
/// `target` if `to_target`, else back from it) untouched, then applies `tamper` to that
/// direction's records; the other direction passes as it is. When either side fails, the relay
/// ends and resets both (SO_LINGER 0), a second later. Also returns how many plaintext bytes the
/// records it passed intact, before the tampered one, carried.
async fn tampering_relay(
    target: SocketAddr,
    to_target: bool,
    handshake_len: usize,
    tamper: Tamper,
) -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let intact = Arc::new(Mutex::new(0usize));
    let counted = Arc::clone(&intact);
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let far = TcpStream::connect(target).await.unwrap();
        client.set_zero_linger().unwrap();
        far.set_zero_linger().unwrap();
        let (source, sink) = if to_target {
            (client, far)
        } else {
            (far, client)
        };
        let (mut source_read, mut source_write) = source.into_split();
        let (mut sink_read, mut sink_write) = sink.into_split();

        // sink → source, untouched. True if it ended in an error.
        let back = async {
            let mut buf = vec![0u8; 65536];
            loop {
                match sink_read.read(&mut buf).await {
                    Ok(0) => {
                        let _ = source_write.shutdown().await;
                        return false;
                    }
                    Ok(n) => {
                        if source_write.write_all(&buf[..n]).await.is_err() {
                            return true;
                        }
                    }
                    Err(_) => return true,
                }
            }
        };
        // source → sink, tampered. True if it ended in an error.
        let forth = async {
            let mut pending = Vec::new();
            let mut passed = 0usize;
            let mut record = 0usize;
            let mut buf = vec![0u8; 65536];
            loop {
                let n = match source_read.read(&mut buf).await {
                    Ok(0) => {
                        let _ = sink_write.shutdown().await;
                        return false;
                    }
                    Ok(n) => n,
                    Err(_) => return true,
                };
                pending.extend_from_slice(&buf[..n]);
                if passed < handshake_len {
                    let take = (handshake_len - passed).min(pending.len());
                    let head: Vec<u8> = pending.drain(..take).collect();
                    if sink_write.write_all(&head).await.is_err() {
                        return true;
                    }
                    passed += take;
                    if passed == handshake_len && matches!(tamper, Tamper::Inject) {
                        let _ = sink_write.write_all(b"SET injected 1\r\n").await;
                    }
                }
                while pending.len() >= 5 {
                    let len = 5 + usize::from(u16::from_be_bytes([pending[3], pending[4]]));
                    if pending.len() < len {
                        break;
                    }
                    let mut one: Vec<u8> = pending.drain(..len).collect();
                    let untouched = match tamper {
                        Tamper::FlipBit(k) => record < k,
                        Tamper::CutAfter(k) => record <= k,
                        Tamper::Inject => false,
                    };
                    if untouched {
                        // Data, type byte and tag: L - 17 bytes of plaintext.
                        *counted.lock().unwrap() += len - 5 - 17;
                    }
                    match tamper {
                        Tamper::FlipBit(k) if k == record => one[len / 2] ^= 0x04,
                        Tamper::CutAfter(k) if k < record => {
                            // The far side sees TCP end without close_notify.
                            let _ = sink_write.shutdown().await;
                            std::future::pending::<()>().await;
                        }
                        _ => {}
                    }
                    record += 1;
                    if sink_write.write_all(&one).await.is_err() {
                        return true;
                    }
                }
            }
        };
        tokio::pin!(back, forth);
        let (mut back_done, mut forth_done) = (false, false);
        loop {
            tokio::select! {
                failed = &mut back, if !back_done => {
                    back_done = true;
                    if failed { break; }
                }
                failed = &mut forth, if !forth_done => {
                    forth_done = true;
                    if failed { break; }
                }
                else => break,
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Dropping the halves resets both sides.
    });
    (addr, intact)
}

/// The RESPONSE of a sealed-fs client presenting "alice": 2 + 5 + 32 + 32 + 32 bytes.
const SEALED_FS_ALICE_RESPONSE: usize = 103;
/// What a sealed-fs gate sends before its first record: CHALLENGE (40) and VERDICT (65).
const SEALED_FS_GATE_HANDSHAKE: usize = 105;

/// A relay tampering with the records from `linkgate connect` (sealed-fs) to `server.py KIND`:
/// the Python server refuses the stream with the right reason, has received exactly what the
/// records before the tampered one carried, and the client sees a reset, never a clean end.
async fn tampered_records_refused_by(kind: &str) {
    let Some(py) = python() else { return };
    if !py.has_cryptography() {
        println!("skipped: cryptography not installed");
        return;
    }
    let keys = TempDir::new().unwrap();
    let key = keygen(keys.path(), "alice");
    let (server, addr) = start_python_server(py, kind, keys.path(), &[]).await;
    let gate: SocketAddr = addr.parse().unwrap();
    for (tamper, reason) in [
        (Tamper::FlipBit(2), "record_bad_tag"),
        (Tamper::CutAfter(2), "record_truncated"),
        (Tamper::Inject, "record_bad_header"),
    ] {
        let (relay, intact) = tampering_relay(gate, true, SEALED_FS_ALICE_RESPONSE, tamper).await;
        let (connect, local) = start_connect(relay, &key, &[]).await;

        // Five messages, most in a record of their own (the client waits between them).
        let mut client = TcpStream::connect(local).await.unwrap();
        // Only once the tunnel is up does each message become a record of its own: before,
        // they would pile up and be sealed together, and the tampered record might not exist.
        connect.wait_for_log(&["authenticated to the gate"]).await;
        let mut sent = Vec::new();
        let mut failed = None;
        for i in 0..5u8 {
            let message = vec![b'0' + i; 1000];
            if let Err(err) = client.write_all(&message).await {
                failed = Some(err);
                break;
            }
            sent.push(message);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if failed.is_none() {
            let _ = client.shutdown().await;
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
                .await
                .expect("the client hears the end");
            failed = read.err();
        }
        assert!(
            failed
                .as_ref()
                .is_some_and(|err| err.kind() == std::io::ErrorKind::ConnectionReset),
            "{kind} {tamper:?}: the client saw {failed:?}, not a reset\nserver:\n{}",
            server.stdout()
        );

        let intact = *intact.lock().unwrap();
        let expected = &sent.concat()[..intact];
        server
            .wait_for_stdout(&[
                "handler failed key_id=alice",
                &format!("reason={reason} "),
                &format!("received={intact} "),
                &format!("sha256={}", sha256_hex(expected)),
            ])
            .await;
        server
            .wait_for_stdout(&["closed after an error", &format!("reason={reason}")])
            .await;
        if !matches!(tamper, Tamper::Inject) {
            assert!(
                intact >= 1000,
                "{kind} {tamper:?}: some records passed before the tampering"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_records_are_refused_by_the_threaded_python_server() {
    bounded(tampered_records_refused_by("threaded")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_records_are_refused_by_the_asyncio_python_server() {
    bounded(tampered_records_refused_by("asyncio")).await;
}

/// A relay flipping a bit in a record from the Rust gate to the Python client: the client
/// refuses it and has received exactly the records before it.
#[tokio::test(flavor = "multi_thread")]
async fn tampered_records_are_refused_by_the_python_client() {
    bounded(async {
        let Some(py) = python() else { return };
        if !py.has_cryptography() {
            println!("skipped: cryptography not installed");
            return;
        }
        let keys = TempDir::new().unwrap();
        let key = keygen(keys.path(), "alice");
        let (serve, gate) = start_serve(keys.path(), None, &[]).await;
        let (relay, intact) =
            tampering_relay(gate, false, SEALED_FS_GATE_HANDSHAKE, Tamper::FlipBit(2)).await;
        let out = py.run(&[
            &script("client.py"),
            &relay.ip().to_string(),
            &relay.port().to_string(),
            key.to_str().unwrap(),
            "--size",
            "200000",
        ]);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        let intact = *intact.lock().unwrap();
        assert!(intact > 0, "some records passed before the tampering");
        let text = stdout(&out);
        assert!(
            text.starts_with(
                "admitted alice mode=sealed-fs\nstream failed RecordError reason=record_bad_tag "
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "received={intact} sha256={}",
                sha256_hex(&pattern(intact))
            )),
            "exactly the {intact} bytes before the tampered record: {text}"
        );
        serve.wait_for_log(&["admitted", "key_id=alice"]).await;
    })
    .await;
}

// --- the original recipe ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn recipe_client_against_serve_protocol_seed() {
    bounded(async {
        let Some(py) = python() else { return };
        // The recipe's deployments use short text keys: b"secret".
        let keys = TempDir::new().unwrap();
        raw_key_file(keys.path(), "recipe", b"secret");
        let (serve, gate) = start_serve(keys.path(), None, &["--protocol", "seed"]).await;
        serve
            .wait_for_log(&["WARN", "--protocol seed", "no server authentication"])
            .await;
        serve
            .wait_for_log(&["WARN", "short key", "key_id=recipe"])
            .await;
        let (host, port) = (gate.ip().to_string(), gate.port().to_string());
        let client = script("recipe_client.py");

        let out = py.run(&[&client, &host, &port, &hex::encode(b"secret"), "hello"]);
        assert_eq!(stdout(&out), "reply hello\n", "{}", stderr(&out));
        serve.wait_for_log(&["admitted", "key_id=recipe"]).await;

        let out = py.run(&[&client, &host, &port, &hex::encode(b"guess"), "hello"]);
        assert_eq!(
            stdout(&out),
            "closed\n",
            "a wrong key gets the connection closed"
        );
        serve
            .wait_for_log(&["connection rejected", "matches no key (seed protocol)"])
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_protocol_seed_against_a_recipe_server() {
    bounded(async {
        let Some(py) = python() else { return };
        let dir = TempDir::new().unwrap();
        let right = raw_key_file(dir.path(), "right", b"secret");
        let wrong = raw_key_file(dir.path(), "wrong", b"guess");
        let server = py.spawn(&[&script("recipe_server.py"), &hex::encode(b"secret"), "2"]);
        let addr = format!("127.0.0.1:{}", python_port(&server).await);

        let out = check_now(&addr, &right, &["--protocol", "seed"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(
            stdout(&out)
                .starts_with("admitted as right (mode seed, upstream unknown (seed protocol"),
            "{}",
            stdout(&out)
        );
        assert!(
            stderr(&out).contains("short key"),
            "warned about the short key"
        );
        server.wait_for_stdout(&["authenticated"]).await;

        let out = check_now(&addr, &wrong, &["--protocol", "seed"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("closed the connection after our answer"));
        server.wait_for_stdout(&["rejected"]).await;

        // Without --protocol seed, the short key is refused outright.
        let out = check_now(&addr, &right, &[]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("6 bytes"));
    })
    .await;
}

/// The recipe as published: `hmac.new(key, msg)`, HMAC-MD5 before Python 3.8 (the scripts name
/// md5, since later Pythons require a digest). `--protocol seed-md5` speaks it both ways.
#[tokio::test(flavor = "multi_thread")]
async fn seed_md5_speaks_the_published_recipe_both_ways() {
    bounded(async {
        let Some(py) = python() else { return };
        let keys = TempDir::new().unwrap();
        let key = raw_key_file(keys.path(), "recipe", b"peekaboo");
        let (serve, gate) = start_serve(keys.path(), None, &["--protocol", "seed-md5"]).await;
        serve
            .wait_for_log(&["WARN", "--protocol seed-md5", "no server authentication"])
            .await;
        let (host, port) = (gate.ip().to_string(), gate.port().to_string());
        let client = script("recipe_client.py");
        let secret = hex::encode(b"peekaboo");

        let out = py.run(&[&client, &host, &port, &secret, "hello", "md5"]);
        assert_eq!(stdout(&out), "reply hello\n", "{}", stderr(&out));
        serve.wait_for_log(&["admitted", "key_id=recipe"]).await;
        // A client of the SHA-256 variant is refused by this gate.
        let out = py.run(&[&client, &host, &port, &secret, "hello", "sha256"]);
        assert_eq!(stdout(&out), "closed\n", "{}", stderr(&out));
        serve
            .wait_for_log(&["connection rejected", "matches no key (seed protocol)"])
            .await;

        // `check` against an MD5 recipe server: admitted with seed-md5; with seed (SHA-256)
        // refused, and the message names the other digest.
        let server = py.spawn(&[&script("recipe_server.py"), &secret, "2", "md5"]);
        let addr = format!("127.0.0.1:{}", python_port(&server).await);
        let out = check_now(&addr, &key, &["--protocol", "seed-md5"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(
            stdout(&out).starts_with("admitted as recipe (mode seed-md5, upstream unknown"),
            "{}",
            stdout(&out)
        );
        server.wait_for_stdout(&["authenticated"]).await;
        let out = check_now(&addr, &key, &["--protocol", "seed"]);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.contains("closed the connection after our answer") && err.contains("seed-md5"),
            "{err}"
        );
        server.wait_for_stdout(&["rejected"]).await;
    })
    .await;
}

/// linkgate in front of an unchanged recipe server: linkgate/1 clients with their own keys →
/// `serve` → `connect --protocol seed` (answers the recipe's challenge) → the recipe server.
#[tokio::test(flavor = "multi_thread")]
async fn linkgate_in_front_of_an_unchanged_recipe_server() {
    bounded(async {
        let Some(py) = python() else { return };
        let dir = TempDir::new().unwrap();
        let recipe_key = raw_key_file(dir.path(), "recipe", b"secret");
        let recipe = py.spawn(&[&script("recipe_server.py"), &hex::encode(b"secret"), "1"]);
        let recipe_addr = format!("127.0.0.1:{}", python_port(&recipe).await);
        let answerer = Linkgate::spawn(&[
            "connect",
            "--listen",
            "127.0.0.1:0",
            "--protocol",
            "seed",
            "--server",
            &recipe_addr,
            "--key",
            recipe_key.to_str().unwrap(),
        ]);
        let answerer_addr = answerer.listen_addr().await;

        let keys = TempDir::new().unwrap();
        let alice = keygen(keys.path(), "alice");
        let (_serve, gate) = start_serve(keys.path(), Some(answerer_addr), &[]).await;

        let credentials = Credentials::new(Key::from_file(&alice).unwrap());
        let mut stream = linkgate::connect(gate, &credentials).await.unwrap();
        stream.write_all(b"hello recipe").await.unwrap();
        let mut reply = [0u8; 12];
        stream.read_exact(&mut reply).await.unwrap();
        assert_eq!(
            &reply, b"HELLO RECIPE",
            "the recipe server's upper-casing echo answered"
        );
        recipe.wait_for_stdout(&["authenticated"]).await;
    })
    .await;
}
