//! The tunnel's transport, with small writes held back for one turn of the scheduler.
//!
//! HTTP/2 writes out its frames whenever its connection task runs, and tokio runs a task woken
//! by another right after it (the "LIFO slot"). So when one readiness event wakes many carried
//! connections at once, each of them wakes the tunnel's task, which seals and sends one small
//! record per connection: a system call, and a TCP segment the other side must take in, each.
//! Holding back a small write once (the task wakes itself and returns `Pending`, so it runs again
//! after the tasks already queued) lets the frames of every connection woken together leave in
//! one write. A write of at least [`HOLD_BELOW`] bytes (a bulk transfer) goes out at once, and
//! nothing is held while the tunnel carries fewer than two streams: there is nothing to
//! coalesce with, and a lone stream's receiver, which sends a window update for about every
//! frame, lost a tenth of its throughput to the extra turns.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::admitted::Admitted;

/// Writes smaller than this are held back once (a frame header and a few small frames).
const HOLD_BELOW: usize = 16 * 1024;
/// A tunnel whose last two reads came closer together than this is busy: it keeps its read
/// buffer while it waits for the next.
const BUSY_READS_WITHIN: Duration = Duration::from_secs(1);

/// How many streams of one tunnel are open (held by a [`StreamTicket`] each).
#[derive(Debug, Clone, Default)]
pub(crate) struct OpenStreams(Arc<AtomicUsize>);

impl OpenStreams {
    /// Counts one more stream until the ticket (shared by the stream's halves) is dropped.
    pub(crate) fn ticket(&self) -> Arc<StreamTicket> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Arc::new(StreamTicket(Arc::clone(&self.0)))
    }

    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One open stream, for [`OpenStreams`].
#[derive(Debug)]
pub(crate) struct StreamTicket(Arc<AtomicUsize>);

impl Drop for StreamTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A transport whose small writes wait for one turn of the scheduler before they go out. It also
/// counts the bytes it reads: the keepalive takes them as a sign the peer is alive.
#[derive(Debug)]
pub(crate) struct Coalescing<S> {
    inner: S,
    open: OpenStreams,
    /// This write has been held back once already: it goes out on the next try.
    held: bool,
    received: Arc<AtomicU64>,
    /// When bytes last came in, and how long before that the previous ones did.
    last_read: Instant,
    read_gap: Duration,
}

impl<S> Coalescing<S> {
    pub(crate) fn new(inner: S, open: OpenStreams) -> Self {
        Self {
            inner,
            open,
            held: false,
            received: Arc::default(),
            last_read: Instant::now(),
            read_gap: Duration::MAX,
        }
    }

    /// Bytes read so far, shared.
    pub(crate) fn received(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.received)
    }

    /// Whether to hold this write of `len` bytes in `slices` pieces back (and arrange to be
    /// polled again).
    ///
    /// Only a write of HTTP/2's frame buffer alone can gather more frames while it waits: with
    /// a DATA payload chained after it (a second slice; h2 chains payloads of 256 bytes or
    /// more instead of copying them), h2 adds nothing until that is out.
    fn hold(&mut self, len: usize, slices: usize, cx: &Context<'_>) -> bool {
        if self.held || len >= HOLD_BELOW || slices > 1 || self.open.count() < 2 {
            self.held = false;
            return false;
        }
        self.held = true;
        cx.waker().wake_by_ref();
        true
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalescing<Admitted<IO>> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A busy tunnel (a stream open, reads less than a second apart) keeps its read buffer
        // (80 KiB) between reads: one stream is enough, since short connections one after
        // another often leave just one open. Otherwise the buffer is freed while the tunnel
        // waits, as an idle sealed connection's is: a tunnel whose streams went quiet frees it
        // at its next read, a keepalive's at the latest, and one with no stream open frees it
        // however often it hears from its peer (keepalives can be set below a second).
        let busy = this.open.count() >= 1 && this.read_gap < BUSY_READS_WITHIN;
        this.inner.keep_read_buffer(busy);
        let before = buf.filled().len();
        let read = match Pin::new(&mut this.inner).poll_read(cx, buf) {
            // The end of a tunnel without close_notify is truncation, a failure (PROTOCOL.md).
            // As `UnexpectedEof`, h2 would take it for a clean close on the gate's side (its
            // workaround for hyper#3427): it would end the tunnel quietly, and nothing would
            // reset the connection.
            Poll::Ready(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, err)))
            }
            read => read,
        };
        let n = buf.filled().len() - before;
        if n > 0 {
            this.received.fetch_add(n as u64, Ordering::Relaxed);
            let now = Instant::now();
            this.read_gap = now.saturating_duration_since(this.last_read);
            this.last_read = now;
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalescing<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.hold(buf.len(), 1, cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|buf| buf.len()).sum();
        let slices = bufs.iter().filter(|buf| !buf.is_empty()).count();
        if this.hold(len, slices, cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use super::*;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn write(io: &mut Coalescing<Vec<u8>>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<usize> {
        Pin::new(io)
            .poll_write(cx, buf)
            .map(|written| written.unwrap())
    }

    /// A transport with two streams open (so small writes are held), and their tickets.
    fn with_two_streams() -> (Coalescing<Vec<u8>>, [Arc<StreamTicket>; 2]) {
        let open = OpenStreams::default();
        let tickets = [open.ticket(), open.ticket()];
        (Coalescing::new(Vec::new(), open), tickets)
    }

    fn counting_waker() -> (Arc<CountingWaker>, Waker) {
        let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&wakes));
        (wakes, waker)
    }

    #[test]
    fn a_small_write_is_held_back_once_and_wakes_its_task() {
        let (wakes, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let (mut io, _streams) = with_two_streams();

        assert!(write(&mut io, &mut cx, b"frame").is_pending());
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "held back without a wake would hang"
        );
        assert!(io.inner.is_empty());
        assert_eq!(write(&mut io, &mut cx, b"frame+more"), Poll::Ready(10));
        // The next batch is held back again.
        assert!(write(&mut io, &mut cx, b"next").is_pending());
        assert_eq!(write(&mut io, &mut cx, b"next"), Poll::Ready(4));
        assert_eq!(io.inner, b"frame+morenext");
    }

    #[test]
    fn a_bulk_write_goes_out_at_once() {
        let (wakes, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let (mut io, _streams) = with_two_streams();
        let bulk = vec![1u8; HOLD_BELOW];
        assert_eq!(write(&mut io, &mut cx, &bulk), Poll::Ready(HOLD_BELOW));
        let slices = [io::IoSlice::new(&bulk[..9]), io::IoSlice::new(&bulk[9..])];
        let vectored = Pin::new(&mut io).poll_write_vectored(&mut cx, &slices);
        assert!(matches!(vectored, Poll::Ready(Ok(_))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_frame_header_with_a_chained_payload_is_not_held() {
        let mut cx = Context::from_waker(Waker::noop());
        let (mut io, _streams) = with_two_streams();
        let (header, payload) = ([0u8; 9], [7u8; 300]);
        let slices = [io::IoSlice::new(&header), io::IoSlice::new(&payload)];
        let vectored = Pin::new(&mut io).poll_write_vectored(&mut cx, &slices);
        assert!(matches!(vectored, Poll::Ready(Ok(309))));
    }
}

#[cfg(test)]
mod stream_count_tests {
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use tokio::io::AsyncWrite;

    use super::{Coalescing, OpenStreams};

    #[test]
    fn with_fewer_than_two_streams_open_nothing_is_held() {
        let mut cx = Context::from_waker(Waker::noop());
        let open = OpenStreams::default();
        let mut io = Coalescing::new(Vec::new(), open.clone());
        let write = |io: &mut Coalescing<Vec<u8>>, cx: &mut Context<'_>| {
            std::pin::Pin::new(io)
                .poll_write(cx, b"small")
                .map(Result::unwrap)
        };
        assert_eq!(write(&mut io, &mut cx), Poll::Ready(5));
        let first = open.ticket();
        assert_eq!(write(&mut io, &mut cx), Poll::Ready(5));
        // A stream's halves share one ticket: still one stream.
        let halves = (Arc::clone(&first), first);
        assert_eq!(write(&mut io, &mut cx), Poll::Ready(5));
        let second = open.ticket();
        assert!(write(&mut io, &mut cx).is_pending());
        assert_eq!(write(&mut io, &mut cx), Poll::Ready(5));
        drop((halves, second));
        assert_eq!(open.count(), 0);
        assert_eq!(write(&mut io, &mut cx), Poll::Ready(5));
    }
}

#[cfg(test)]
mod read_buffer_tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::{Coalescing, OpenStreams};
    use crate::admitted::Admitted;
    use crate::{Credentials, Gate, GateConfig, Key, KeyId, Keyring, Mode};

    /// An admitted sealed pair over memory: the client's end, and the gate's end in the
    /// tunnel's transport.
    async fn sealed_pair(
        open: OpenStreams,
    ) -> (Admitted<DuplexStream>, Coalescing<Admitted<DuplexStream>>) {
        let key = Key::generate(KeyId::new("alice").unwrap()).unwrap();
        let mut keyring = Keyring::new();
        keyring.insert(key.clone());
        let gate = Gate::with_config(keyring, GateConfig::new()).unwrap();
        let (client_io, gate_io) = tokio::io::duplex(1 << 20);
        let credentials = Credentials::new(key).with_mode(Mode::Sealed);
        let (client, admitted) = tokio::join!(
            crate::authenticate(client_io, &credentials),
            gate.admit(gate_io)
        );
        (client.unwrap(), Coalescing::new(admitted.unwrap(), open))
    }

    /// Sends `byte`, reads it through the transport, then polls once more with nothing sent:
    /// the read that decides whether the buffer is kept.
    async fn one_read(
        client: &mut Admitted<DuplexStream>,
        tunnel: &mut Coalescing<Admitted<DuplexStream>>,
        byte: u8,
    ) {
        client.write_all(&[byte]).await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 1];
        tunnel.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [byte]);
        let mut more = [0u8; 1];
        let waiting = tokio::time::timeout(Duration::from_millis(20), tunnel.read(&mut more)).await;
        assert!(waiting.is_err(), "nothing more was sent");
    }

    #[tokio::test]
    async fn a_busy_tunnel_keeps_its_read_buffer_and_a_quiet_or_empty_one_frees_it() {
        let open = OpenStreams::default();
        let stream = open.ticket();
        let (mut client, mut tunnel) = sealed_pair(open).await;
        // Reads in quick succession with one stream open: kept.
        one_read(&mut client, &mut tunnel, 1).await;
        one_read(&mut client, &mut tunnel, 2).await;
        assert!(tunnel.inner.read_buffer_capacity() > 0);
        // The next read after a quiet second: freed while it waits.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        one_read(&mut client, &mut tunnel, 3).await;
        assert_eq!(tunnel.inner.read_buffer_capacity(), 0);
        // Busy again, kept again.
        one_read(&mut client, &mut tunnel, 4).await;
        assert!(tunnel.inner.read_buffer_capacity() > 0);
        // No stream open: freed, however quickly reads come (keepalives below a second).
        drop(stream);
        one_read(&mut client, &mut tunnel, 5).await;
        assert_eq!(tunnel.inner.read_buffer_capacity(), 0);
        one_read(&mut client, &mut tunnel, 6).await;
        assert_eq!(tunnel.inner.read_buffer_capacity(), 0);
    }
}
