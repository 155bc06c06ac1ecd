//! Helpers for the library's integration tests: keys, a log capture (to assert the server's
//! stated reason for a refusal), raw clients, and one echo server.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use linkgate::protocol::{self, CHALLENGE_LEN, Nonce};
use linkgate::{Gate, GateConfig, Key, KeyId, Keyring};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) mod wire;

pub(crate) fn key(id: &str) -> Key {
    Key::generate(KeyId::new(id).unwrap()).unwrap()
}

pub(crate) fn keyring(keys: &[&Key]) -> Keyring {
    let mut ring = Keyring::new();
    for key in keys {
        ring.insert((*key).clone());
    }
    ring
}

/// A gate for `keys` with the default settings.
pub(crate) fn gate(keys: &[&Key]) -> Gate {
    Gate::new(keyring(keys)).unwrap()
}

/// A gate for `keys` that admits every mode (plain and the multiplexed ones too).
pub(crate) fn plain_gate(keys: &[&Key]) -> Gate {
    let config = GateConfig::new()
        .with_plain_allowed(true)
        .with_multiplexing_allowed(true);
    Gate::with_config(keyring(keys), config).unwrap()
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
pub(crate) fn capture_logs() {
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
pub(crate) fn logs() -> String {
    let buffer = LOGS.get().expect("call capture_logs() first");
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}

/// Waits (up to 5 s) for a log line containing every one of `needles`, and returns it.
pub(crate) async fn wait_for_log_line(needles: &[&str]) -> String {
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

/// Connects without the SDK and reads the CHALLENGE.
pub(crate) async fn raw_connect(addr: SocketAddr) -> (TcpStream, Nonce) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut challenge = [0u8; CHALLENGE_LEN];
    stream.read_exact(&mut challenge).await.unwrap();
    let nonce = protocol::decode_challenge(&challenge).expect("a linkgate/1 challenge");
    (stream, nonce)
}

/// Everything the peer sends until it closes (a reset after its last byte counts as a close).
pub(crate) async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!("peer neither closed nor sent anything for 5 s"),
        }
    }
}

/// Echoes a stream (any mode) until its peer ends its side, then ends ours.
pub(crate) async fn echo(stream: impl AsyncRead + AsyncWrite) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    if tokio::io::copy(&mut reader, &mut writer).await.is_ok() {
        let _ = writer.shutdown().await;
    }
}

/// Sends `message` and reads back as many bytes.
pub(crate) async fn echo_once(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    message: &[u8],
) -> Vec<u8> {
    stream.write_all(message).await.unwrap();
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).await.unwrap();
    back
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

/// A listener on an ephemeral loopback port.
pub(crate) async fn loopback_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}
