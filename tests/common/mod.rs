//! Helpers shared by the integration tests: keys in temporary directories, and a log capture
//! so tests can assert the server's stated reason for a refusal.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use linkgate::{Key, KeyId, Keyring};

pub fn key(id: &str) -> Key {
    Key::generate(KeyId::new(id).unwrap()).unwrap()
}

pub fn keyring(keys: &[&Key]) -> Keyring {
    let mut ring = Keyring::new();
    for key in keys {
        ring.insert((*key).clone());
    }
    ring
}

static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();

struct Sink(&'static Mutex<Vec<u8>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per test binary) a global subscriber that records every log line.
pub fn capture_logs() {
    LOGS.get_or_init(|| {
        let buffer: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        tracing_subscriber::fmt()
            .with_env_filter("linkgate=debug")
            .with_ansi(false)
            .with_writer(move || Sink(buffer))
            .init();
        buffer
    });
}

/// All log lines so far.
pub fn logs() -> String {
    let buffer = LOGS.get().expect("call capture_logs() first");
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}

/// Waits (up to 5 s) for a log line containing every one of `needles`, and returns it.
pub async fn wait_for_log_line(needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(line) = logs()
            .lines()
            .find(|line| needles.iter().all(|needle| line.contains(needle)))
        {
            return line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line with {needles:?} in:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub mod process {
    //! The real `linkgate` binary as a child process, with its output captured.

    use std::io::{BufRead, BufReader, Read};
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus, Output, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    pub const BIN: &str = env!("CARGO_BIN_EXE_linkgate");

    /// Runs `linkgate ARGS` to completion (for check, keygen, bad input).
    pub fn run(args: &[&str]) -> Output {
        command(args).output().expect("run linkgate")
    }

    /// `linkgate check --server SERVER --key KEY EXTRA...`.
    pub fn check(server: &str, key: &Path, extra: &[&str]) -> Output {
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
    pub struct Linkgate {
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
        pub fn spawn(args: &[&str]) -> Self {
            Self::spawn_in(None, args)
        }

        pub fn spawn_in(dir: Option<&Path>, args: &[&str]) -> Self {
            let mut command = command(args);
            if let Some(dir) = dir {
                command.current_dir(dir);
            }
            Self::spawn_command(command)
        }

        /// Any program (e.g. python3), with the same capture and clean-up.
        pub fn spawn_command(mut command: Command) -> Self {
            command
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .stdin(Stdio::null());
            let mut child = command.spawn().expect("spawn");
            let stderr = Arc::new(Mutex::new(String::new()));
            let stdout = Arc::new(Mutex::new(String::new()));
            collect(child.stderr.take().unwrap(), Arc::clone(&stderr));
            collect(child.stdout.take().unwrap(), Arc::clone(&stdout));
            Linkgate {
                child,
                stderr,
                stdout,
            }
        }

        pub fn stderr(&self) -> String {
            self.stderr.lock().unwrap().clone()
        }

        pub fn stdout(&self) -> String {
            self.stdout.lock().unwrap().clone()
        }

        /// Waits (up to 10 s) for a stderr line containing all `needles`.
        pub async fn wait_for_log(&self, needles: &[&str]) -> String {
            self.wait_for_line(&self.stderr, needles).await
        }

        /// Waits (up to 10 s) for a stdout line containing all `needles`.
        pub async fn wait_for_stdout(&self, needles: &[&str]) -> String {
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
        pub async fn listen_addr(&self) -> SocketAddr {
            let line = self.wait_for_log(&["listening", "listen="]).await;
            let value = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("listen="))
                .expect("listen= field");
            value.parse().expect("a socket address")
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        pub fn signal(&self, name: &str) {
            let status = Command::new("kill")
                .args([&format!("-{name}"), &self.pid().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
        }

        /// Waits up to `limit` for the process to exit.
        pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
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
    pub fn keygen(dir: &Path, id: &str) -> PathBuf {
        let path = dir.join(format!("{id}.key"));
        let out = run(&["keygen", "--out", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    pub async fn start_serve(
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
