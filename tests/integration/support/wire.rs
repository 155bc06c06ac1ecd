//! Sealed records on the wire, under the sealing: a relay that notes the length of every record
//! passing each way (so a test can see that key updates really happen where they should), and
//! a bad record sent to see the peer reset. Shared by the library's and the command's
//! integration tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A KeyUpdate record's `L`: `18 00 00 01 00`, the type byte, the 16-byte tag. (Application
/// data of 5 bytes has the same length, so only where a record is tells them apart.)
const KEY_UPDATE_LEN: u16 = 22;

/// Records seen in one direction.
#[derive(Debug, Default)]
pub(crate) struct RecordCount {
    /// Each record's `L`, in order.
    lengths: Mutex<Vec<u16>>,
    /// Headers that were not `17 03 03` (the relay's handshake lengths were wrong).
    bad_headers: AtomicU64,
}

impl RecordCount {
    /// Checks that the sender updated its key every `interval` records: each record at
    /// `seq` = `interval` − 1 under a key is a KeyUpdate (by length), and there are `at_least`
    /// records. Returns the number of key updates, or what is wrong.
    pub(crate) fn key_updates_every(
        &self,
        interval: usize,
        at_least: usize,
    ) -> Result<usize, String> {
        let lengths = self.lengths.lock().unwrap();
        let bad = self.bad_headers.load(Ordering::SeqCst);
        if bad > 0 {
            return Err(format!("{bad} records without a 17 03 03 header"));
        }
        if lengths.len() < at_least {
            return Err(format!("{} records, fewer than {at_least}", lengths.len()));
        }
        let positions: Vec<usize> = (interval - 1..lengths.len()).step_by(interval).collect();
        match positions.iter().find(|&&at| lengths[at] != KEY_UPDATE_LEN) {
            Some(at) => Err(format!(
                "record {at} of {} is {} bytes long, not a KeyUpdate",
                lengths.len(),
                lengths[*at]
            )),
            None => Ok(positions.len()),
        }
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
                if header[..3] != [0x17, 0x03, 0x03] {
                    count.bad_headers.fetch_add(1, Ordering::SeqCst);
                }
                let len = u16::from_be_bytes([header[3], header[4]]);
                count.lengths.lock().unwrap().push(len);
                skipping = usize::from(len);
                header.clear();
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Sends a record that cannot open (a header and 17 bytes that are no valid ciphertext) on the
/// TCP stream under a sealed session, or with `cut_short` ends the stream without close_notify,
/// then reads until the peer ends it: Ok if that end is a reset, else what came instead.
pub(crate) async fn fail_and_expect_a_reset(
    tcp: &mut TcpStream,
    cut_short: bool,
) -> Result<(), String> {
    if cut_short {
        tcp.shutdown().await.map_err(|err| err.to_string())?;
    } else {
        tcp.write_all(&[0x17, 0x03, 0x03, 0x00, 0x11])
            .await
            .map_err(|err| err.to_string())?;
        tcp.write_all(&[0u8; 17])
            .await
            .map_err(|err| err.to_string())?;
    }
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest))
        .await
        .map_err(|_| "the peer never ended the connection".to_owned())?;
    match read {
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        other => Err(format!(
            "a reset, not an end: {other:?} after {} bytes",
            rest.len()
        )),
    }
}
