//! Deadlines from durations a caller chose, without overflow.

use std::time::Duration;

use tokio::time::Instant;

/// What a deadline too far to represent becomes: about 30 years away, as tokio's own timers do.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// `now + after`; a time decades away if that would overflow, so a caller may pass
/// `Duration::MAX` to mean "no limit" without a panic.
pub(crate) fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after).unwrap_or_else(|| now + FAR_FUTURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_too_long_to_add_is_a_deadline_decades_away() {
        let now = Instant::now();
        assert!(deadline_after(Duration::MAX) > now + Duration::from_secs(20 * 365 * 24 * 3600));
        let soon = deadline_after(Duration::from_secs(5));
        assert!(soon >= now + Duration::from_secs(5) && soon < now + Duration::from_secs(60));
    }
}
