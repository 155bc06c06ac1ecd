//! The sealed stream: [`crate::record`] driven over any `AsyncRead + AsyncWrite`.
//!
//! Reads take ciphertext in chunks of several records and open them in place; writes seal into a
//! buffer that is written out before more is accepted. Both buffers exist only while data moves:
//! a drained buffer is freed, so an idle connection holds no buffer at all (a busy tunnel keeps
//! its read buffer: see [`SealedState::keep_read_buffer`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::RecordError;
use crate::protocol::SessionSecrets;
use crate::record::{MAX_DATA_LEN, MAX_RECORD_LEN, Opened, Opener, RecordLimits, Sealer};

/// Ciphertext read per system call, at most: four full records.
const READ_BUF_LEN: usize = 4 * MAX_RECORD_LEN;
/// Plaintext accepted per `poll_write`, at most: four full records.
const WRITE_CHUNK: usize = 4 * MAX_DATA_LEN;

/// Which side of the handshake this stream is on: it decides which secret seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    /// close_notify received: the peer's direction ended cleanly.
    Closed,
    Failed(RecordError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteState {
    Open,
    /// close_notify is sealed into the buffer; the write half shuts down once it is out.
    Closing,
    Closed,
    Failed(RecordError),
}

/// The record state of one sealed connection.
#[derive(Debug)]
pub(crate) struct SealedState {
    sealer: Sealer,
    opener: Opener,
    /// Ciphertext read but not yet opened is `rbuf[rstart..]`; opened plaintext not yet handed
    /// out is `rbuf[plain.0..plain.1]`. Reads fill its spare capacity, never zeroed first: a
    /// tunnel that goes quiet between bursts would otherwise clear 64 KiB for every burst.
    rbuf: BytesMut,
    rstart: usize,
    plain: (usize, usize),
    /// Keep the read buffer while waiting for more, rather than free it: set for a busy tunnel,
    /// where freeing and allocating 80 KiB for every few frames cost more than the frames.
    keep_read_buffer: bool,
    read: ReadState,
    /// Sealed bytes not yet written are `wbuf[wpos..]`.
    wbuf: Vec<u8>,
    wpos: usize,
    write: WriteState,
}

impl SealedState {
    pub(crate) fn new(secrets: &SessionSecrets, side: Side, limits: RecordLimits) -> Self {
        let (seal, open) = match side {
            Side::Client => (secrets.client_to_server(), secrets.server_to_client()),
            Side::Server => (secrets.server_to_client(), secrets.client_to_server()),
        };
        Self {
            sealer: Sealer::with_limits(seal, limits),
            opener: Opener::with_limits(open, limits),
            rbuf: BytesMut::new(),
            rstart: 0,
            plain: (0, 0),
            keep_read_buffer: false,
            read: ReadState::Open,
            wbuf: Vec::new(),
            wpos: 0,
            write: WriteState::Open,
        }
    }

    /// The record halves and any ciphertext already read but not opened (see
    /// [`crate::Admitted::into_parts`]).
    pub(crate) fn into_parts(mut self) -> crate::SealedParts {
        let unread_plaintext = self.rbuf[self.plain.0..self.plain.1].to_vec();
        let unread = self.rbuf[self.rstart..].to_vec();
        let unsent = self.wbuf.split_off(self.wpos);
        crate::SealedParts {
            sealer: self.sealer,
            opener: self.opener,
            unread_plaintext,
            unread_ciphertext: unread,
            unsent_ciphertext: unsent,
        }
    }

    fn fail_read(&mut self, err: RecordError) -> io::Error {
        self.read = ReadState::Failed(err);
        self.drop_read_buffer();
        crate::Error::from(err).into()
    }

    pub(crate) fn poll_read<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if let ReadState::Failed(err) = self.read {
                return Poll::Ready(Err(crate::Error::from(err).into()));
            }
            let (start, end) = self.plain;
            if start < end {
                let n = out.remaining().min(end - start);
                out.put_slice(&self.rbuf[start..start + n]);
                self.plain.0 += n;
                return Poll::Ready(Ok(()));
            }
            if out.remaining() == 0 || self.read == ReadState::Closed {
                // After close_notify: end of stream.
                return Poll::Ready(Ok(()));
            }
            match self.open_next() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(err) => return Poll::Ready(Err(self.fail_read(err))),
            }
            // Need more ciphertext.
            self.make_room();
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut self.rbuf) {
                Poll::Pending => {
                    if self.rstart == self.rbuf.len() {
                        if self.keep_read_buffer {
                            self.rbuf.clear();
                            (self.rstart, self.plain) = (0, (0, 0));
                        } else {
                            // Idle: hold no buffer while waiting.
                            self.drop_read_buffer();
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                // TCP EOF without close_notify: truncation, never a clean end.
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(self.fail_read(RecordError::Truncated)));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Opens the next whole record in the buffer, if there is one. `Ok(true)` if a record was
    /// consumed (data may now be waiting in `plain`).
    fn open_next(&mut self) -> Result<bool, RecordError> {
        let buffered = &self.rbuf[self.rstart..];
        let Some(len) = crate::record::Opener::record_len(buffered)? else {
            return Ok(false);
        };
        if buffered.len() < len {
            return Ok(false);
        }
        let start = self.rstart;
        let opened = self
            .opener
            .open_in_place(&mut self.rbuf[start..start + len])?;
        self.rstart += len;
        match opened {
            Opened::Data(range) => self.plain = (start + range.start, start + range.end),
            Opened::KeyUpdate => {}
            Opened::CloseNotify => {
                if self.rstart != self.rbuf.len() {
                    return Err(RecordError::DataAfterClose);
                }
                self.read = ReadState::Closed;
                self.drop_read_buffer();
            }
        }
        Ok(true)
    }

    #[cfg(all(test, feature = "mux"))]
    pub(crate) fn read_buffer_capacity(&self) -> usize {
        self.rbuf.capacity()
    }

    /// Whether to keep the read buffer while waiting for more (see `keep_read_buffer`).
    #[cfg(any(feature = "mux", test))]
    pub(crate) fn keep_read_buffer(&mut self, keep: bool) {
        self.keep_read_buffer = keep;
    }

    /// Frees the read buffer, and with it every position into it (a stale plaintext range
    /// would index the empty buffer).
    fn drop_read_buffer(&mut self) {
        self.rbuf = BytesMut::new();
        (self.rstart, self.plain) = (0, (0, 0));
    }

    /// Makes sure there is room after what is buffered for at least one whole record.
    fn make_room(&mut self) {
        if self.rbuf.capacity() == 0 {
            self.rbuf = BytesMut::with_capacity(READ_BUF_LEN);
        }
        if self.rbuf.capacity() - self.rbuf.len() < MAX_RECORD_LEN {
            // Only unopened ciphertext is kept; plaintext handed out is gone.
            let kept = self.rbuf.len() - self.rstart;
            self.rbuf.copy_within(self.rstart.., 0);
            self.rbuf.truncate(kept);
            self.rstart = 0;
            self.plain = (0, 0);
        }
    }

    /// Writes out what is buffered; `Ready(Ok)` once the buffer is empty (and freed).
    fn poll_drain<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            match ready!(Pin::new(&mut *io).poll_write(cx, &self.wbuf[self.wpos..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.wpos += n,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
        self.wbuf = Vec::new();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    fn check_writable(&self) -> io::Result<()> {
        match self.write {
            WriteState::Open => Ok(()),
            WriteState::Failed(err) => Err(crate::Error::from(err).into()),
            WriteState::Closing | WriteState::Closed => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown (close_notify already sent)",
            )),
        }
    }

    pub(crate) fn poll_write<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_writable()?;
        ready!(self.poll_drain(io, cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let take = data.len().min(WRITE_CHUNK);
        if let Err(err) = self.sealer.seal(&data[..take], &mut self.wbuf) {
            self.write = WriteState::Failed(err);
            return Poll::Ready(Err(crate::Error::from(err).into()));
        }
        // Start writing now; what the socket does not take yet goes out on the next write or
        // flush.
        if let Poll::Ready(Err(err)) = self.poll_drain(io, cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(take))
    }

    /// As [`SealedState::poll_write`], sealing the slices (up to one write's worth) into the
    /// same records: a frame header and its payload, written as two slices, become one record
    /// and one system call instead of two.
    pub(crate) fn poll_write_vectored<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_writable()?;
        ready!(self.poll_drain(io, cx))?;
        let taken = match self.sealer.seal_gathered(bufs, WRITE_CHUNK, &mut self.wbuf) {
            Ok(taken) => taken,
            Err(err) => {
                self.write = WriteState::Failed(err);
                return Poll::Ready(Err(crate::Error::from(err).into()));
            }
        };
        if taken > 0 {
            // Start writing now, as poll_write does.
            if let Poll::Ready(Err(err)) = self.poll_drain(io, cx) {
                return Poll::Ready(Err(err));
            }
        }
        Poll::Ready(Ok(taken))
    }

    pub(crate) fn poll_flush<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(io, cx))?;
        Pin::new(io).poll_flush(cx)
    }

    pub(crate) fn poll_shutdown<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        match self.write {
            WriteState::Open => {
                ready!(self.poll_drain(io, cx))?;
                if let Err(err) = self.sealer.seal_close_notify(&mut self.wbuf) {
                    self.write = WriteState::Failed(err);
                    return Poll::Ready(Err(crate::Error::from(err).into()));
                }
                self.write = WriteState::Closing;
            }
            WriteState::Failed(err) => return Poll::Ready(Err(crate::Error::from(err).into())),
            WriteState::Closing | WriteState::Closed => {}
        }
        ready!(self.poll_drain(io, cx))?;
        ready!(Pin::new(io).poll_shutdown(cx))?;
        self.write = WriteState::Closed;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::protocol::Transcript;
    use crate::{Key, KeyId, Mode};

    fn secrets() -> SessionSecrets {
        let key = Key::new(KeyId::new("alice").unwrap(), &[7u8; 32]).unwrap();
        let (server_nonce, client_nonce) = ([1u8; 32], [2u8; 32]);
        let transcript = Transcript {
            server_nonce: &server_nonce,
            client_nonce: &client_nonce,
            mode: Mode::Sealed,
            key_id: key.id(),
        };
        SessionSecrets::derive(&key, &transcript, None)
    }

    /// Reads one record the client sealed, then polls again with nothing more sent: returns the
    /// server's state, now waiting.
    async fn read_then_wait(keep: bool) -> SealedState {
        let secrets = secrets();
        let (mut client_io, mut server_io) = tokio::io::duplex(1 << 20);
        let mut client = SealedState::new(&secrets, Side::Client, RecordLimits::default());
        let mut server = SealedState::new(&secrets, Side::Server, RecordLimits::default());
        server.keep_read_buffer(keep);
        std::future::poll_fn(|cx| client.poll_write(&mut client_io, cx, b"frames"))
            .await
            .unwrap();
        std::future::poll_fn(|cx| client.poll_flush(&mut client_io, cx))
            .await
            .unwrap();
        client_io.flush().await.unwrap();
        let mut out = [0u8; 16];
        let mut buf = ReadBuf::new(&mut out);
        std::future::poll_fn(|cx| server.poll_read(&mut server_io, cx, &mut buf))
            .await
            .unwrap();
        assert_eq!(buf.filled(), b"frames");
        let mut cx = Context::from_waker(Waker::noop());
        let mut buf = ReadBuf::new(&mut out);
        assert!(
            server
                .poll_read(&mut server_io, &mut cx, &mut buf)
                .is_pending()
        );
        server
    }

    #[tokio::test]
    async fn a_waiting_stream_frees_its_read_buffer_unless_told_to_keep_it() {
        assert_eq!(read_then_wait(false).await.rbuf.capacity(), 0);
        let kept = read_then_wait(true).await;
        assert!(kept.rbuf.capacity() >= MAX_RECORD_LEN);
        assert!(kept.rbuf.is_empty(), "what was read is not read again");
        assert_eq!((kept.rstart, kept.plain), (0, (0, 0)));
    }
}
