//! Burst buffers, reused per worker thread: a bulk transfer reads into a buffer on every burst,
//! and allocating and zeroing 256 KiB each time costs more than the copy itself. An idle
//! connection holds none: its buffer goes back to the pool when the burst ends.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers kept per thread, at most (each [`BURST_LEN`] bytes).
const KEPT_PER_THREAD: usize = 8;
/// The size of every pooled buffer.
pub(crate) const BURST_LEN: usize = 16 * linkgate::record::MAX_RECORD_LEN;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of [`BURST_LEN`] bytes that returns to its thread's pool when dropped. Its contents
/// are whatever the previous user left: callers only read what they wrote.
pub(crate) struct Burst(Vec<u8>);

impl Burst {
    pub(crate) fn take() -> Self {
        let reused = POOL.with(|pool| pool.borrow_mut().pop());
        Self(reused.unwrap_or_else(|| vec![0u8; BURST_LEN]))
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        if buf.len() == BURST_LEN {
            POOL.with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < KEPT_PER_THREAD {
                    pool.push(buf);
                }
            });
        }
    }
}

impl Deref for Burst {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for Burst {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}
