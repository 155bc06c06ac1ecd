//! Copying bytes both ways between two TCP streams, for proxies.

use std::io;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// Bytes moved by [`forward`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes read from the first stream and written to the second.
    pub a_to_b: u64,
    /// Bytes read from the second stream and written to the first.
    pub b_to_a: u64,
}

/// Largest read per system call while data moves.
const CHUNK: usize = 64 * 1024;

/// Copies bytes both ways between `a` and `b` until both directions have ended.
///
/// Half-close passes through: when one side shuts down its write half, the other side's write
/// half is shut down too while the opposite direction keeps flowing. If either side fails, the
/// copy stops at once with the error (drop both streams to close them).
///
/// An idle connection holds no copy buffer: a direction takes one only once its source is
/// readable, and gives it back when the source has nothing more for now. So thousands of idle
/// connections cost little memory, while bulk transfers still move 64 KiB per system call.
pub async fn forward(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<Transfer> {
    let (a_read, a_write) = a.split();
    let (b_read, b_write) = b.split();
    let (a_to_b, b_to_a) = tokio::try_join!(pump(a_read, b_write), pump(b_read, a_write))?;
    Ok(Transfer { a_to_b, b_to_a })
}

async fn pump(from: ReadHalf<'_>, mut to: WriteHalf<'_>) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let mut chunk = Vec::with_capacity(CHUNK);
        loop {
            chunk.clear();
            match from.try_read_buf(&mut chunk) {
                Ok(0) => {
                    to.shutdown().await?;
                    return Ok(total);
                }
                Ok(n) => {
                    to.write_all(&chunk).await?;
                    total += n as u64;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err),
            }
        }
    }
}
