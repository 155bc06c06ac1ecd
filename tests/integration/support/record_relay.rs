//! A relay that counts the sealed records passing each way, by their 5-byte headers, so a test
//! can see that key updates really happen (a KeyUpdate is the only record type of its size in
//! a bulk transfer). Shared by the library's and the command's integration tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A KeyUpdate record's `L`: `18 00 00 01 00`, the type byte, the 16-byte tag.
const KEY_UPDATE_LEN: usize = 22;

/// Records seen in one direction.
#[derive(Debug, Default)]
pub(crate) struct RecordCount {
    pub(crate) records: AtomicU64,
    pub(crate) key_updates: AtomicU64,
}

impl RecordCount {
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.records.load(Ordering::SeqCst),
            self.key_updates.load(Ordering::SeqCst),
        )
    }
}

/// Records each way through one relayed connection: client to server, server to client.
#[derive(Debug, Default)]
pub(crate) struct RecordCounts {
    pub(crate) up: RecordCount,
    pub(crate) down: RecordCount,
}

/// Relays one connection to `target`, counting records after the handshake: `skip_up` bytes
/// from the client (its RESPONSE) and `skip_down` from the server (CHALLENGE and VERDICT).
pub(crate) async fn record_counting_relay(
    target: SocketAddr,
    skip_up: usize,
    skip_down: usize,
) -> (SocketAddr, Arc<RecordCounts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(RecordCounts::default());
    let relay_counts = Arc::clone(&counts);
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(target).await.unwrap();
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let down = Arc::clone(&relay_counts);
        tokio::join!(
            count_and_copy(cr, sw, skip_up, &relay_counts.up),
            count_and_copy(sr, cw, skip_down, &down.down),
        );
    });
    (addr, counts)
}

async fn count_and_copy(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    skip: usize,
    count: &RecordCount,
) {
    // Bytes before the next record header (the handshake first, then each record's body).
    let mut skipping = skip;
    let mut header = Vec::with_capacity(5);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut at = 0;
        while at < n {
            if skipping > 0 {
                let step = skipping.min(n - at);
                skipping -= step;
                at += step;
                continue;
            }
            header.push(buf[at]);
            at += 1;
            if header.len() == 5 {
                let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
                count.records.fetch_add(1, Ordering::SeqCst);
                if len == KEY_UPDATE_LEN {
                    count.key_updates.fetch_add(1, Ordering::SeqCst);
                }
                skipping = len;
                header.clear();
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
