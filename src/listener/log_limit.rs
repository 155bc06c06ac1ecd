//! Refusal logs that cannot flood: per source and reason, the first few lines of each window go
//! out, the rest are counted and reported in one summary line when the window ends.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::bounds::Source;

/// Lines per source and reason per window.
const LINES_PER_WINDOW: u32 = 5;
/// The window.
const WINDOW: Duration = Duration::from_secs(10);
/// Keys tracked at most; past it, everything is counted under one overflow key.
const MAX_KEYS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    /// `None` for the overflow bucket.
    source: Option<Source>,
    reason: &'static str,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
    /// A peer of the source, to name it in the summary.
    example: String,
}

/// The limiter, shared by the listener and its handshake tasks.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    windows: Mutex<HashMap<Key, Window>>,
    /// The listener's name, for the summaries.
    service: Option<std::sync::Arc<str>>,
}

impl LogLimit {
    pub(crate) fn new(service: Option<std::sync::Arc<str>>) -> Self {
        Self {
            windows: Mutex::default(),
            service,
        }
    }

    /// Whether a refusal line for `source` and `reason` may be written now (`peer` names the
    /// source in a later summary).
    pub(crate) fn allow(
        &self,
        source: Source,
        reason: &'static str,
        peer: &dyn std::fmt::Display,
        now: Instant,
    ) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key = Key {
            source: Some(source),
            reason,
        };
        if !windows.contains_key(&key) && windows.len() >= MAX_KEYS {
            key.source = None;
        }
        let window = windows.entry(key).or_insert_with(|| Window {
            started: now,
            logged: 0,
            suppressed: 0,
            example: peer.to_string(),
        });
        if now.duration_since(window.started) >= WINDOW {
            summarize(self.service.as_deref(), &key, window);
            *window = Window {
                started: now,
                logged: 0,
                suppressed: 0,
                example: peer.to_string(),
            };
        }
        if window.logged < LINES_PER_WINDOW && key.source.is_some() {
            window.logged += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }

    /// Writes the summaries of windows that have ended, and forgets them.
    pub(crate) fn flush(&self, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows.retain(|key, window| {
            let ended = now.duration_since(window.started) >= WINDOW;
            if ended {
                summarize(self.service.as_deref(), key, window);
            }
            !ended
        });
    }
}

fn summarize(service: Option<&str>, key: &Key, window: &Window) {
    if window.suppressed == 0 {
        return;
    }
    let seconds = WINDOW.as_secs();
    match key.source {
        Some(_) => tracing::info!(
            service = service.map(tracing::field::display),
            source = %window.example, reason = key.reason, suppressed = window.suppressed,
            "connection rejected: {} more like it from this source in {seconds}s (not logged one by one)",
            window.suppressed
        ),
        None => tracing::info!(
            service = service.map(tracing::field::display),
            reason = key.reason,
            suppressed = window.suppressed,
            "connection rejected: {} more from many sources in {seconds}s (not logged one by one)",
            window.suppressed
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_per_window_then_a_count() {
        let limit = LogLimit::default();
        let t0 = Instant::now();
        let allowed = (0..100)
            .filter(|_| limit.allow(Source::V4(1), "denied", &"10.0.0.1:1", t0))
            .count();
        assert_eq!(allowed, LINES_PER_WINDOW as usize);
        // Another reason, another source: their own allowance.
        assert!(limit.allow(Source::V4(1), "timeout", &"10.0.0.1:2", t0));
        assert!(limit.allow(Source::V4(2), "denied", &"10.0.0.2:1", t0));
        // A new window starts fresh.
        assert!(limit.allow(Source::V4(1), "denied", &"10.0.0.1:3", t0 + WINDOW));
        limit.flush(t0 + WINDOW * 3);
        assert!(limit.windows.lock().unwrap().is_empty());
    }
}
