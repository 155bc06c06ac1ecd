//! Forwarding between an admitted connection and the plain side: plain mode copies bytes (with
//! `splice(2)` for bulk bursts), the sealed modes run the record layer in [`sealed`].

pub(crate) mod mux;
mod pool;
pub(crate) mod sealed;

use std::io;

use crate::socket::{Socket, shutdown_write, write_all};

/// Bytes moved by [`forward`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Transfer {
    /// Bytes read from the first stream and written to the second.
    pub(crate) a_to_b: u64,
    /// Bytes read from the second stream and written to the first.
    pub(crate) b_to_a: u64,
}

/// Largest read per system call while data moves through userspace.
const CHUNK: usize = 64 * 1024;

/// Copies bytes both ways between `a` and `b` until both directions have ended.
///
/// Half-close passes through: when one side shuts down its write half, the other side's write
/// half is shut down too while the opposite direction keeps flowing. If either side fails, the
/// copy stops at once with the error (drop both streams to close them).
///
/// An idle connection holds no copy buffer: a direction takes one only once its source is
/// readable, and gives it back when the source has nothing more for now. Small messages go
/// through that buffer; on Linux, once a read fills it (a bulk transfer), the rest of the burst
/// is moved with `splice(2)` through a pipe, so the bytes never enter userspace (if the system
/// refuses pipes or splicing, the copy simply continues in userspace).
///
/// Not cancel-safe: dropping the future loses the bytes in flight (up to a pipe's or a buffer's
/// worth) and leaves the streams in an unknown state, so close both.
pub(crate) async fn forward<A: Socket, B: Socket>(a: &A, b: &B) -> io::Result<Transfer> {
    let (a_to_b, b_to_a) = tokio::try_join!(pump(a, b), pump(b, a))?;
    Ok(Transfer { a_to_b, b_to_a })
}

/// Why a burst of data ended.
enum Burst {
    /// The source has nothing more for now.
    Drained,
    /// The source reached end of stream.
    Ended,
}

async fn pump<F: Socket, T: Socket>(from: &F, to: &T) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        from.readable().await?;
        // Boxed: the burst's state is allocated only while data moves, so an idle connection's
        // task is sized for waiting, not for copying.
        let (moved, burst) = Box::pin(copy_burst(from, to)).await?;
        total += moved;
        if let Burst::Ended = burst {
            shutdown_write(to)?;
            return Ok(total);
        }
    }
}

/// Moves what the source has now, through a buffer that lives only for this burst.
async fn copy_burst<F: Socket, T: Socket>(from: &F, to: &T) -> io::Result<(u64, Burst)> {
    let mut moved = 0u64;
    let mut buf = pool::Burst::take();
    let chunk = &mut buf[..CHUNK];
    loop {
        match from.try_read(chunk) {
            Ok(0) => return Ok((moved, Burst::Ended)),
            Ok(n) => {
                write_all(to, &chunk[..n]).await?;
                moved += n as u64;
                #[cfg(target_os = "linux")]
                if n == CHUNK {
                    // None: no splicing on this system; go on through the buffer.
                    if let Some((spliced, burst)) = splice::burst(from, to).await? {
                        return Ok((moved + spliced, burst));
                    }
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                return Ok((moved, Burst::Drained));
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(target_os = "linux")]
mod splice {
    //! Bulk transfers through a pipe with `splice(2)`: socket → pipe → socket, page references
    //! instead of copies.

    use std::io;

    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
    use tokio::io::Interest;

    use super::Burst;
    use crate::socket::Socket;

    /// Pipe capacity asked for; the kernel may give less (fs.pipe-max-size), which only means
    /// more system calls.
    const PIPE_SIZE: usize = 1 << 20;

    const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

    /// Splices until the source has nothing more for now or ends. The pipe exists only for the
    /// burst and is empty when the burst ends normally. `None` if this system will not splice
    /// (no pipe to be had, or sockets that cannot be spliced): the caller copies instead.
    pub(super) async fn burst<F: Socket, T: Socket>(
        from: &F,
        to: &T,
    ) -> io::Result<Option<(u64, Burst)>> {
        let Ok((pipe_out, pipe_in)) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) else {
            return Ok(None);
        };
        let capacity = fcntl_setpipe_size(&pipe_in, PIPE_SIZE).unwrap_or(64 * 1024);
        let mut moved = 0u64;
        loop {
            // try_io and readiness do not count against tokio's cooperative budget, so yield
            // now and then: a long burst must not starve the other tasks on this worker.
            tokio::task::consume_budget().await;
            let filled = from.try_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe_in, None, capacity, FLAGS)?)
            });
            let mut in_pipe = match filled {
                Ok(0) => return Ok(Some((moved, Burst::Ended))),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Some((moved, Burst::Drained)));
                }
                Err(err) if moved == 0 && cannot_splice(&err) => return Ok(None),
                Err(err) => return Err(err),
            };
            moved += in_pipe as u64;
            // Drain the pipe completely before reading more, so it is empty when dropped.
            while in_pipe > 0 {
                match to.try_io(Interest::WRITABLE, || {
                    Ok(splice(&pipe_out, None, to, None, in_pipe, FLAGS)?)
                }) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => in_pipe -= n,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                    Err(err) => return Err(err),
                }
            }
        }
    }

    /// Errors that mean "splice is not available here", not "the connection failed".
    fn cannot_splice(err: &io::Error) -> bool {
        matches!(
            rustix::io::Errno::from_io_error(err),
            Some(
                rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP
            )
        )
    }
}
