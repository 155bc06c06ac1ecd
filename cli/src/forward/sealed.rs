//! Forwarding between a sealed connection and a plain one, driving the record layer directly.
//!
//! Sealing: plaintext is read straight into record-sized slots (one vectored read fills up to 16
//! of them), sealed in place, and written in one call. Opening: ciphertext is read in bursts of
//! up to 256 KiB, each record opened in place, and the plaintext pieces written with one vectored
//! call. Buffers and AEAD key objects exist only during a burst; a waiting direction holds
//! neither.

use std::io::{self, IoSlice, IoSliceMut};
use std::ops::Range;

use linkgate::record::{MAX_DATA_LEN, MAX_RECORD_LEN, Opened, Opener, Sealer};
use linkgate::{RecordError, SealedParts};

use crate::socket::{Socket, shutdown_write, write_all, write_all_vectored};

use super::pool::{BURST_LEN, Burst};

/// Records sealed per read, at most: one burst buffer of record-sized slots.
const SLOTS: usize = BURST_LEN / MAX_RECORD_LEN;

/// Bytes of plaintext moved each way by [`forward`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SealedTransfer {
    /// Opened from the sealed side and written to the plain side.
    pub(crate) opened: u64,
    /// Read from the plain side and sealed to the sealed side.
    pub(crate) sealed: u64,
}

/// Forwards until both directions have ended: records from `sealed` are opened and their data
/// written to `plain`; what `plain` sends is sealed to `sealed`.
///
/// Half-close passes through both ways (close_notify ⇄ shutting down a write half). Any record
/// failure, truncation (EOF without close_notify) or bytes after close_notify stop both
/// directions with an error, after nothing of the failed record was written; the caller resets
/// both connections.
///
/// `parts` comes boxed and stays boxed: a waiting connection's task then holds a pointer, not a
/// copy of the record state.
pub(crate) async fn forward<S: Socket, P: Socket>(
    sealed: &S,
    mut parts: Box<SealedParts>,
    plain: &P,
) -> io::Result<SealedTransfer> {
    let SealedParts {
        sealer,
        opener,
        unread_plaintext,
        unread_ciphertext,
        unsent_ciphertext,
        ..
    } = &mut *parts;
    let (unread_plaintext, unread_ciphertext, unsent_ciphertext) = (
        std::mem::take(unread_plaintext),
        std::mem::take(unread_ciphertext),
        std::mem::take(unsent_ciphertext),
    );
    // What the handshake left over is written first (boxed and dropped right after, so the
    // waiting pumps hold neither it nor the write's state).
    let opening = async {
        let early = unread_plaintext.len() as u64;
        if early > 0 {
            Box::pin(write_all(plain, &unread_plaintext)).await?;
        }
        drop(unread_plaintext);
        let opened = open_pump(sealed, plain, opener, unread_ciphertext).await?;
        Ok::<_, io::Error>(opened + early)
    };
    let sealing = async {
        if !unsent_ciphertext.is_empty() {
            Box::pin(write_all(sealed, &unsent_ciphertext)).await?;
        }
        drop(unsent_ciphertext);
        seal_pump(plain, sealed, sealer).await
    };
    let (opened, sealed) = tokio::try_join!(opening, sealing)?;
    Ok(SealedTransfer { opened, sealed })
}

fn record_error(err: RecordError) -> io::Error {
    linkgate::Error::from(err).into()
}

/// Opens records from `from` and writes their data to `to` until close_notify, then shuts down
/// `to`'s write half and makes sure nothing follows.
async fn open_pump<F: Socket, T: Socket>(
    from: &F,
    to: &T,
    opener: &mut Opener,
    already_read: Vec<u8>,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut carried = None;
    if !already_read.is_empty() {
        let mut burst = Burst::take();
        burst[..already_read.len()].copy_from_slice(&already_read);
        carried = Some((burst, already_read.len()));
    }
    drop(already_read);
    loop {
        if carried.is_none() {
            // Idle: hold neither a buffer nor the AEAD key object while waiting.
            opener.release_key();
            from.readable().await?;
        }
        // Boxed: the burst's state is allocated only while records arrive, so an idle
        // connection's task is sized for waiting, not for opening.
        let (opened, closed) = Box::pin(open_burst(from, to, opener, carried.take())).await?;
        total += opened;
        if closed {
            shutdown_write(to)?;
            expect_end(from).await?;
            return Ok(total);
        }
    }
}

/// Opens and writes what `from` has now: returns the plaintext bytes written and whether
/// close_notify ended the stream. A record split across reads is waited for here.
async fn open_burst<F: Socket, T: Socket>(
    from: &F,
    to: &T,
    opener: &mut Opener,
    carried: Option<(Burst, usize)>,
) -> io::Result<(u64, bool)> {
    let mut total = 0u64;
    // Ciphertext read but not yet opened is `burst[..filled]`.
    let (mut burst, mut filled) = carried.unwrap_or_else(|| (Burst::take(), 0));
    // Ciphertext carried in may hold whole records (close_notify among them): opened before
    // anything is read, since the peer may send nothing more until it has an answer.
    let mut open_first = filled > 0;
    let mut pieces: Vec<Range<usize>> = Vec::with_capacity(SLOTS);
    loop {
        tokio::task::consume_budget().await;
        if !std::mem::take(&mut open_first) {
            let n = match from.try_read(&mut burst[filled..]) {
                Ok(0) => return Err(record_error(RecordError::Truncated)),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if filled == 0 {
                        return Ok((total, false));
                    }
                    // Part of a record is here; wait for the rest, keeping it.
                    from.readable().await?;
                    continue;
                }
                Err(err) => return Err(err),
            };
            filled += n;
        }

        let mut start = 0;
        let mut closed = false;
        pieces.clear();
        while let Some(len) = Opener::record_len(&burst[start..filled]).map_err(record_error)? {
            if filled - start < len {
                break;
            }
            match opener
                .open_in_place(&mut burst[start..start + len])
                .map_err(record_error)?
            {
                Opened::Data(range) => pieces.push(start + range.start..start + range.end),
                Opened::KeyUpdate => {}
                Opened::CloseNotify => closed = true,
            }
            start += len;
            if closed {
                if start != filled {
                    return Err(record_error(RecordError::DataAfterClose));
                }
                break;
            }
        }
        total += write_pieces(to, &burst, &mut pieces).await?;
        if closed {
            return Ok((total, true));
        }
        burst.copy_within(start..filled, 0);
        filled -= start;
    }
}

/// After close_notify the peer shuts down its write half: anything but EOF is an error.
async fn expect_end<F: Socket>(from: &F) -> io::Result<()> {
    let mut byte = [0u8; 1];
    loop {
        from.readable().await?;
        match from.try_read(&mut byte) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(record_error(RecordError::DataAfterClose)),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Writes the plaintext pieces of `buf` in order, with vectored writes.
async fn write_pieces<T: Socket>(
    to: &T,
    buf: &[u8],
    pieces: &mut [Range<usize>],
) -> io::Result<u64> {
    let total: usize = pieces.iter().map(|piece| piece.len()).sum();
    let mut slices: Vec<IoSlice<'_>> = pieces
        .iter()
        .map(|piece| IoSlice::new(&buf[piece.clone()]))
        .collect();
    write_all_vectored(to, &mut slices).await?;
    Ok(total as u64)
}

/// Reads plaintext from `from` into record slots, seals them in place and writes them to `to`;
/// at EOF sends close_notify and shuts down `to`'s write half.
async fn seal_pump<F: Socket, T: Socket>(from: &F, to: &T, sealer: &mut Sealer) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // Idle: no buffer, no AEAD key object.
        sealer.release_key();
        from.readable().await?;
        // Boxed, as in `open_pump`: an idle connection holds no sealing state.
        let (sealed, ended) = Box::pin(seal_burst(from, to, sealer)).await?;
        total += sealed;
        if ended {
            return Ok(total);
        }
    }
}

/// Seals and writes what `from` has now: returns the plaintext bytes sealed and whether `from`
/// reached EOF (close_notify sent, `to`'s write half shut down).
async fn seal_burst<F: Socket, T: Socket>(
    from: &F,
    to: &T,
    sealer: &mut Sealer,
) -> io::Result<(u64, bool)> {
    let mut total = 0u64;
    let mut buf = Burst::take();
    loop {
        tokio::task::consume_budget().await;
        let read = {
            let mut slots: Vec<IoSliceMut<'_>> = buf
                .chunks_mut(MAX_RECORD_LEN)
                .map(|slot| IoSliceMut::new(&mut slot[5..5 + MAX_DATA_LEN]))
                .collect();
            from.try_read_vectored(&mut slots)
        };
        let n = match read {
            Ok(0) => {
                let mut close = Vec::new();
                sealer.seal_close_notify(&mut close).map_err(record_error)?;
                write_all(to, &close).await?;
                shutdown_write(to)?;
                return Ok((total, true));
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok((total, false)),
            Err(err) => return Err(err),
        };
        seal_slots(to, sealer, &mut buf, n).await?;
        total += n as u64;
    }
}

/// Seals the `n` bytes read into the slots of `buf` and writes the records, with a KeyUpdate
/// wherever one is due.
async fn seal_slots<T: Socket>(
    to: &T,
    sealer: &mut Sealer,
    buf: &mut [u8],
    n: usize,
) -> io::Result<()> {
    let mut written = 0;
    let mut end = 0;
    let mut left = n;
    for slot_start in (0..buf.len()).step_by(MAX_RECORD_LEN) {
        if left == 0 {
            break;
        }
        let len = left.min(MAX_DATA_LEN);
        if sealer.needs_key_update() {
            // Every slot before this one holds a full record, so the output so far ends here.
            write_all(to, &buf[written..slot_start]).await?;
            let mut update = Vec::new();
            sealer.seal_key_update(&mut update).map_err(record_error)?;
            write_all(to, &update).await?;
            written = slot_start;
        }
        let record = sealer
            .seal_in_place(&mut buf[slot_start..], len)
            .map_err(record_error)?;
        end = slot_start + record;
        left -= len;
    }
    write_all(to, &buf[written..end]).await
}

#[cfg(test)]
mod tests {
    use linkgate::record::TrafficSecret;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    use super::*;

    /// Records read before forwarding began (carried in) are opened at once, though the peer
    /// sends nothing more: it may be waiting for the answer to them.
    #[tokio::test]
    async fn records_carried_in_are_opened_without_waiting_for_more() {
        let secret = TrafficSecret::from_bytes_for_tests([7; 32]);
        let (mut sealer, mut opener) = (Sealer::new(&secret), Opener::new(&secret));
        let mut carried = Vec::new();
        sealer.seal(b"carried request", &mut carried).unwrap();
        let (sealed_near, _sealed_far) = UnixStream::pair().unwrap();
        let (plain_near, mut plain_far) = UnixStream::pair().unwrap();
        let pump = open_pump(&sealed_near, &plain_near, &mut opener, carried);
        let mut got = [0u8; 15];
        let read = async {
            plain_far.read_exact(&mut got).await.unwrap();
        };
        tokio::select! {
            outcome = pump => panic!("the pump ended before its data was read: {outcome:?}"),
            () = read => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {
                panic!("records carried in were held until the peer sent more")
            }
        }
        assert_eq!(&got, b"carried request");
    }

    /// A carried close_notify ends the direction: the plain side is shut down, and the
    /// sealed peer's end afterwards is a clean end, not a truncation.
    #[tokio::test]
    async fn a_carried_close_notify_ends_the_direction_cleanly() {
        let secret = TrafficSecret::from_bytes_for_tests([9; 32]);
        let (mut sealer, mut opener) = (Sealer::new(&secret), Opener::new(&secret));
        let mut carried = Vec::new();
        sealer.seal(b"last words", &mut carried).unwrap();
        sealer.seal_close_notify(&mut carried).unwrap();
        let (sealed_near, mut sealed_far) = UnixStream::pair().unwrap();
        let (plain_near, mut plain_far) = UnixStream::pair().unwrap();
        sealed_far.shutdown().await.unwrap();
        let opened = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            open_pump(&sealed_near, &plain_near, &mut opener, carried),
        )
        .await
        .expect("a carried close_notify was not seen")
        .unwrap();
        assert_eq!(opened, 10);
        let mut got = Vec::new();
        plain_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }
}
