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
