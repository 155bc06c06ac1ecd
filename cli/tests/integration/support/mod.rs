//! Helpers for the command's tests: the real `linkgate` binary as a child process, keys made
//! with `keygen`, upstream servers that count what reaches them, and test data.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[path = "../../../../tests/integration/support/wire.rs"]
pub(crate) mod wire;

pub(crate) mod process {
    //! The real `linkgate` binary as a child process, with its output captured.

    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus, Output, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_linkgate");

    /// Runs `linkgate ARGS` to completion (for check, keygen, bad input).
    pub(crate) fn run(args: &[&str]) -> Output {
        command(args).output().expect("run linkgate")
    }

    /// `linkgate check --server SERVER --key KEY EXTRA...`.
    pub(crate) fn check(server: &str, key: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["check", "--server", server, "--key", key.to_str().unwrap()];
        args.extend_from_slice(extra);
        run(&args)
    }

    fn command(args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null());
        command
    }

    /// A long-running `linkgate` (serve, connect) or any other program, killed when dropped.
    pub(crate) struct Linkgate {
        child: Child,
        stderr: Arc<Mutex<String>>,
        stdout: Arc<Mutex<String>>,
    }

    fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { return };
                let mut text = into.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
    }

    impl Linkgate {
        pub(crate) fn spawn(args: &[&str]) -> Self {
            Self::spawn_in(None, args)
        }

        pub(crate) fn spawn_in(dir: Option<&Path>, args: &[&str]) -> Self {
            let mut command = command(args);
            if let Some(dir) = dir {
                command.current_dir(dir);
            }
            Self::spawn_command(command)
        }

        /// Any program (e.g. python3), with the same capture and clean-up.
        pub(crate) fn spawn_command(command: Command) -> Self {
            Self::spawn_with_input(command, None)
        }

        /// [`Linkgate::spawn_command`], with `input` written to its stdin, which is then closed.
        pub(crate) fn spawn_with_input(mut command: Command, input: Option<&[u8]>) -> Self {
            command
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .stdin(if input.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                });
            let mut child = command.spawn().expect("spawn");
            if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
                stdin.write_all(input).expect("write to stdin");
            }
            let stderr = Arc::new(Mutex::new(String::new()));
            let stdout = Arc::new(Mutex::new(String::new()));
            collect(child.stderr.take().unwrap(), Arc::clone(&stderr));
            collect(child.stdout.take().unwrap(), Arc::clone(&stdout));
            Self {
                child,
                stderr,
                stdout,
            }
        }

        pub(crate) fn stderr(&self) -> String {
            self.stderr.lock().unwrap().clone()
        }

        pub(crate) fn stdout(&self) -> String {
            self.stdout.lock().unwrap().clone()
        }

        /// Waits (up to 10 s) for a stderr line containing all `needles`.
        pub(crate) async fn wait_for_log(&self, needles: &[&str]) -> String {
            self.wait_for_line(&self.stderr, needles).await
        }

        /// Waits (up to 10 s) for a stdout line containing all `needles`.
        pub(crate) async fn wait_for_stdout(&self, needles: &[&str]) -> String {
            self.wait_for_line(&self.stdout, needles).await
        }

        async fn wait_for_line(&self, text: &Mutex<String>, needles: &[&str]) -> String {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let seen = text.lock().unwrap().clone();
                if let Some(line) = seen
                    .lines()
                    .find(|line| needles.iter().all(|needle| line.contains(needle)))
                {
                    return line.to_owned();
                }
                assert!(
                    Instant::now() < deadline,
                    "no line with {needles:?}; so far:\n{seen}\nstderr:\n{}",
                    self.stderr()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        /// The address from the "listening" log line (start with `--listen 127.0.0.1:0`).
        pub(crate) async fn listen_addr(&self) -> SocketAddr {
            let line = self.wait_for_log(&["listening", "listen="]).await;
            let value = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("listen="))
                .expect("listen= field");
            value.parse().expect("a socket address")
        }

        pub(crate) fn pid(&self) -> u32 {
            self.child.id()
        }

        pub(crate) fn signal(&self, name: &str) {
            let status = Command::new("kill")
                .args([&format!("-{name}"), &self.pid().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
        }

        /// Waits up to `limit` for the process to exit.
        pub(crate) async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return Some(status);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        }
    }

    impl Drop for Linkgate {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Writes a fresh key file `dir/ID.key` (mode 0600) with `linkgate keygen`.
    pub(crate) fn keygen(dir: &Path, id: &str) -> PathBuf {
        let path = dir.join(format!("{id}.key"));
        let out = run(&["keygen", "--out", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    pub(crate) async fn start_serve(
        keys: &Path,
        upstream: Option<SocketAddr>,
        extra: &[&str],
    ) -> (Linkgate, SocketAddr) {
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--keys",
            keys.to_str().unwrap(),
        ];
        let upstream = upstream.map(|addr| addr.to_string());
        if let Some(addr) = &upstream {
            args.extend(["--upstream", addr.as_str()]);
        }
        args.extend(extra);
        let serve = Linkgate::spawn(&args);
        let addr = serve.listen_addr().await;
        (serve, addr)
    }
}

/// An upstream echo server that counts the connections it accepts and the bytes it receives.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) accepts: Arc<AtomicUsize>,
    pub(crate) bytes: Arc<AtomicU64>,
}

/// A loopback port nothing listens on (a listener bound to it and dropped).
pub(crate) async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A loopback upstream that never answers a connect: a listener with a backlog of 0 whose
/// one queue place is taken by a connection nobody accepts, so the kernel drops every later
/// SYN (a connect to it hangs, as to a host that is down). Keep it alive while it is used.
pub(crate) struct SilentUpstream {
    pub(crate) addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

pub(crate) async fn silent_upstream() -> SilentUpstream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    // The first connect takes the queue's one place: it must succeed, however slow the machine.
    let mut queued = vec![TcpStream::connect(addr).await.unwrap()];
    for _ in 0..8 {
        let attempt = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            TcpStream::connect(addr),
        );
        match attempt.await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(err)) => panic!("filling the silent upstream's queue: {err}"),
            // The queue is full: this SYN went unanswered, and so will the next.
            Err(_) => {
                return SilentUpstream {
                    addr,
                    _listener: listener,
                    _queued: queued,
                };
            }
        }
    }
    panic!("the kernel kept accepting connects to a backlog-0 listener");
}

pub(crate) async fn echo_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_echo(listener)
}

/// Echoes every connection to `listener`, counting accepts and bytes; ends each connection
/// when its client ends its side.
pub(crate) fn serve_echo(listener: TcpListener) -> Upstream {
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let (a, b) = (Arc::clone(&accepts), Arc::clone(&bytes));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let b = Arc::clone(&b);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            b.fetch_add(n as u64, Ordering::SeqCst);
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    Upstream {
        addr,
        accepts,
        bytes,
    }
}

/// A deterministic pseudo-random stream of `len` bytes.
pub(crate) fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Sends `data` and reads back as many bytes, concurrently; returns the bytes received.
pub(crate) async fn echo_through(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut reader, mut writer) = stream.into_split();
    let len = data.len();
    let sender = tokio::spawn(async move {
        writer.write_all(&data).await.unwrap();
        writer
    });
    let mut received = vec![0u8; len];
    reader.read_exact(&mut received).await.unwrap();
    drop(sender.await.unwrap());
    received
}

/// Starts `linkgate connect` in front of the gate at `server`.
pub(crate) async fn start_connect(
    server: SocketAddr,
    key: &std::path::Path,
    extra: &[&str],
) -> (process::Linkgate, SocketAddr) {
    let server = server.to_string();
    let mut args = vec![
        "connect",
        "--listen",
        "127.0.0.1:0",
        "--server",
        &server,
        "--key",
        key.to_str().unwrap(),
    ];
    args.extend(extra);
    let connect = process::Linkgate::spawn(&args);
    let addr = connect.listen_addr().await;
    (connect, addr)
}

/// Whether `systemd-socket-activate` can run here. Without it a test skips its systemd part,
/// unless LINKGATE_REQUIRE_PEERS is set (CI), where its absence fails the test.
pub(crate) fn systemd_socket_activate_available() -> bool {
    let available = std::process::Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        available || std::env::var_os("LINKGATE_REQUIRE_PEERS").is_none(),
        "systemd-socket-activate is required"
    );
    available
}

/// Connects to `addr` once something listens there (up to 5 s): a socket activator that was
/// just started may not have bound yet.
pub(crate) async fn connect_when_listening(addr: SocketAddr) -> TcpStream {
    for _ in 0..100 {
        if let Ok(stream) = TcpStream::connect(addr).await {
            return stream;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr} after 5 s");
}
