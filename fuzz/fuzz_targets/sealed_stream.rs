//! The library's sealed stream as a gate reads and writes it (`Admitted<IO>`'s AsyncRead and
//! AsyncWrite: the buffering around the record opener and sealer that `record_open` does not
//! reach). A real handshake (mode sealed) runs over a duplex; then the gate's I/O is switched to a
//! scripted one that delivers fuzzer-chosen ciphertext in fuzzer-chosen chunks with Pending in
//! between, and accepts writes in fuzzer-chosen partial sizes.
//!
//! Read side: ciphertext sealed by the client's own sealer (so it is valid), with optional raw
//! bytes or one flipped bit. Untouched: exactly the data comes out, then a clean end
//! (close_notify) or an error (truncation). Touched: never more than a prefix of the data, and
//! an error where it would otherwise have ended cleanly.
//! Write side: what the gate writes (write, write_vectored, flush, shutdown) is opened by the
//! client's opener and must be exactly the data, with close_notify if and only if it shut down.

#![no_main]

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use linkgate::record::{HEADER_LEN, Opened, Opener, RecordLimits};
use linkgate::{Credentials, Gate, Key, KeyId, Keyring, Mode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::runtime::Runtime;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn key() -> &'static Key {
    static K: OnceLock<Key> = OnceLock::new();
    K.get_or_init(|| Key::new(KeyId::new("alice").unwrap(), &[0x11; 32]).unwrap())
}

#[derive(Default)]
struct Script {
    wire: Vec<u8>,
    pos: usize,
    chunks: Vec<u16>,
    ci: usize,
    pend: Vec<bool>,
    pi: usize,
    last_pending: bool,
    written: Vec<u8>,
    wchunks: Vec<u16>,
    wi: usize,
}

impl Script {
    fn pending(&mut self, cx: &mut Context<'_>) -> bool {
        if self.pend.is_empty() || self.last_pending {
            self.last_pending = false;
            return false;
        }
        let p = self.pend[self.pi % self.pend.len()];
        self.pi += 1;
        if p {
            self.last_pending = true;
            cx.waker().wake_by_ref();
        }
        p
    }
}

struct Io {
    inner: DuplexStream,
    script: Option<Script>,
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(s) = &mut this.script else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if s.pending(cx) {
            return Poll::Pending;
        }
        let rest = s.wire.len() - s.pos;
        if rest == 0 {
            return Poll::Ready(Ok(()));
        }
        let chunk = if s.chunks.is_empty() {
            usize::MAX
        } else {
            usize::from(s.chunks[s.ci % s.chunks.len()]).max(1)
        };
        s.ci += 1;
        let n = chunk.min(rest).min(buf.remaining());
        buf.put_slice(&s.wire[s.pos..s.pos + n]);
        s.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(s) = &mut this.script else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        if s.pending(cx) {
            return Poll::Pending;
        }
        let chunk = if s.wchunks.is_empty() {
            usize::MAX
        } else {
            usize::from(s.wchunks[s.wi % s.wchunks.len()]).max(1)
        };
        s.wi += 1;
        let n = chunk.min(buf.len());
        s.written.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match &mut this.script {
            None => Pin::new(&mut this.inner).poll_flush(cx),
            Some(_) => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match &mut this.script {
            None => Pin::new(&mut this.inner).poll_shutdown(cx),
            Some(_) => Poll::Ready(Ok(())),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Step {
    Data(Vec<u8>),
    Large { len: u16, byte: u8 },
    KeyUpdate,
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum WStep {
    Write(Vec<u8>),
    Large { len: u16, byte: u8 },
    Vectored(Vec<Vec<u8>>),
    Flush,
}

#[derive(Debug, Arbitrary)]
struct Plan {
    key_update_interval: Option<u8>,
    steps: Vec<Step>,
    close: bool,
    trailing: Vec<u8>,
    flip: Option<(u32, u8)>,
    chunks: Vec<u16>,
    pend: Vec<bool>,
    reads: Vec<u16>,
    wsteps: Vec<WStep>,
    wchunks: Vec<u16>,
    shutdown: bool,
}

const MAX_SENT: usize = 96 * 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(plan) = Plan::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    runtime().block_on(run(plan));
});

async fn run(plan: Plan) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let mut keyring = Keyring::new();
    keyring.insert(key().clone());
    let gate = Gate::new(keyring).unwrap();
    let mut creds = Credentials::new(key().clone()).with_mode(Mode::Sealed);
    if let Some(i) = plan.key_update_interval {
        creds =
            creds.with_record_limits(RecordLimits::new().with_key_update_interval(u64::from(i)));
    }
    let server_io = Io {
        inner: b,
        script: None,
    };
    let (server, client) = tokio::join!(gate.admit(server_io), linkgate::authenticate(a, &creds));
    let mut server = server.expect("admit");
    let client = client.expect("authenticate");
    let (_, _, parts) = client.into_parts();
    let parts = parts.expect("sealed");
    let (mut sealer, mut client_opener) = (parts.sealer, parts.opener);

    // Build the ciphertext the gate will read.
    let mut wire = Vec::new();
    let mut sent = Vec::new();
    let mut raw_touched = false;
    for step in plan.steps.iter().take(64) {
        if sent.len() >= MAX_SENT {
            break;
        }
        match step {
            Step::Data(d) => {
                sealer.seal(d, &mut wire).unwrap();
                sent.extend_from_slice(d);
            }
            Step::Large { len, byte } => {
                let d = vec![*byte; usize::from(*len)];
                sealer.seal(&d, &mut wire).unwrap();
                sent.extend_from_slice(&d);
            }
            Step::KeyUpdate => sealer.seal_key_update(&mut wire).unwrap(),
            Step::Raw(r) => {
                if !r.is_empty() {
                    raw_touched = true;
                }
                wire.extend_from_slice(r);
            }
        }
    }
    if plan.close {
        sealer.seal_close_notify(&mut wire).unwrap();
    }
    let flipped = match plan.flip {
        Some((i, bit)) if !wire.is_empty() => {
            let at = i as usize % wire.len();
            wire[at] ^= 1 << (bit % 8);
            true
        }
        _ => false,
    };
    let touched = raw_touched || flipped;
    let clean_close = plan.close && plan.trailing.is_empty();
    wire.extend_from_slice(&plan.trailing);

    server.get_mut().script = Some(Script {
        wire,
        chunks: plan.chunks.clone(),
        pend: plan.pend.clone(),
        wchunks: plan.wchunks.clone(),
        ..Default::default()
    });

    // Read side.
    let mut received = Vec::new();
    let mut ri = 0;
    let end: io::Result<()> = loop {
        let size = if plan.reads.is_empty() {
            65536
        } else {
            usize::from(plan.reads[ri % plan.reads.len()]).max(1)
        };
        ri += 1;
        let mut buf = vec![0u8; size];
        match server.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
        assert!(
            received.len() <= sent.len(),
            "more plaintext than was sealed"
        );
    };
    assert!(
        sent.starts_with(&received),
        "opened data that was never sent (touched {touched})"
    );
    if !touched {
        if clean_close {
            assert!(end.is_ok(), "clean close failed: {end:?}");
            assert_eq!(received.len(), sent.len(), "data missing");
        } else if !plan.close {
            assert!(end.is_err(), "EOF without close_notify read as a clean end");
            assert_eq!(received.len(), sent.len(), "data missing before truncation");
        }
    } else if !plan.close || !plan.trailing.is_empty() {
        // nothing more to assert
    } else {
        assert!(end.is_err(), "a touched stream ended cleanly");
    }

    // Write side.
    let mut wrote = Vec::new();
    for step in plan.wsteps.iter().take(32) {
        if wrote.len() >= MAX_SENT {
            break;
        }
        match step {
            WStep::Write(d) => {
                server.write_all(d).await.unwrap();
                wrote.extend_from_slice(d);
            }
            WStep::Large { len, byte } => {
                let d = vec![*byte; usize::from(*len)];
                server.write_all(&d).await.unwrap();
                wrote.extend_from_slice(&d);
            }
            WStep::Vectored(pieces) => {
                let all: Vec<u8> = pieces.concat();
                let mut done = 0;
                while done < all.len() {
                    // Slices over what is left, keeping the pieces' boundaries.
                    let mut slices = Vec::new();
                    let mut off = 0;
                    for p in pieces {
                        let (s, e) = (off, off + p.len());
                        off = e;
                        if e <= done {
                            continue;
                        }
                        slices.push(IoSlice::new(&all[s.max(done)..e]));
                    }
                    let n = server.write_vectored(&slices).await.unwrap();
                    assert!(
                        n > 0,
                        "write_vectored took nothing of {} bytes",
                        all.len() - done
                    );
                    done += n;
                }
                wrote.extend_from_slice(&all);
            }
            WStep::Flush => server.flush().await.unwrap(),
        }
    }
    server.flush().await.unwrap();
    if plan.shutdown {
        server.shutdown().await.unwrap();
    }
    let written = std::mem::take(&mut server.get_mut().script.as_mut().unwrap().written);

    // The client opens what the gate wrote.
    let mut got = Vec::new();
    let mut closed = false;
    let mut buf = written;
    let mut pos = 0;
    while pos < buf.len() {
        let len = Opener::record_len(&buf[pos..])
            .expect("record_len")
            .expect("whole header");
        assert!(pos + len <= buf.len(), "a record cut short");
        match client_opener
            .open_in_place(&mut buf[pos..pos + len])
            .expect("open")
        {
            Opened::Data(r) => {
                assert!(!closed);
                got.extend_from_slice(&buf[pos + r.start..pos + r.end]);
                assert_eq!(r.start, HEADER_LEN);
            }
            Opened::KeyUpdate => {}
            Opened::CloseNotify => closed = true,
        }
        pos += len;
    }
    assert_eq!(got, wrote, "written data differs");
    assert_eq!(closed, plan.shutdown);
}
