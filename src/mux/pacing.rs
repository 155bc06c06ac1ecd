//! Pacing of tunnel attempts against a gate that refuses them.
//!
//! A gate charges each failed handshake to its source (5 s for a wrong key or a refused mode,
//! see [`crate::PenaltyConfig`]) and refuses a source at accept once 15 s have accrued. Tunnels
//! retried on the usual backoff after a *refusal* (a stale key, a gate without tunnels) would
//! cross that line within a second, and then every client on the same host, with the right key
//! or not, would be refused for minutes. So while the gate is not known to admit us, attempts go
//! one at a time, and after a refusal none is made for [`REFUSED_PAUSE`]: one charge a minute
//! runs out long before the next.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long every slot waits after the gate refused a tunnel before one tries again.
pub(crate) const REFUSED_PAUSE: Duration = Duration::from_secs(60);

/// Shared by the slots of one or more [`super::Pool`]s to the same gate (see
/// [`super::Pool::with_pacing`]): it paces their attempts while the gate refuses them.
#[derive(Debug, Clone, Default)]
pub struct Pacing(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug)]
struct State {
    /// The gate has not admitted a tunnel since the start, a refusal or a lost tunnel: one
    /// attempt at a time.
    uncertain: bool,
    /// A slot is making the one attempt.
    probing: bool,
    /// No attempt before this, after a refusal.
    refused_until: Option<Instant>,
    /// What the gate said when it refused, for pools that have not tried themselves.
    refusal: Option<Arc<String>>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            uncertain: true,
            probing: false,
            refused_until: None,
            refusal: None,
        }
    }
}

/// What a slot must do before its attempt.
enum Turn {
    Go,
    WaitUntil(Instant),
    WaitForProbe,
}

impl Pacing {
    /// A pacing of its own, for pools that do not share one.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until this slot may make an attempt, and hands back the attempt: report how it
    /// went on it (dropping it unreported counts as [`Attempt::failed`], so a slot that stops
    /// mid-attempt never leaves the others waiting).
    pub(crate) async fn turn(&self) -> Attempt<'_> {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            // Registered before the state is read, so a change in between is not missed.
            changed.as_mut().enable();
            let turn = {
                let mut state = self.state();
                let now = Instant::now();
                match state.refused_until {
                    Some(until) if until > now => Turn::WaitUntil(until),
                    _ if state.uncertain && state.probing => Turn::WaitForProbe,
                    _ => {
                        state.probing = state.uncertain;
                        Turn::Go
                    }
                }
            };
            match turn {
                Turn::Go => {
                    return Attempt {
                        pacing: self,
                        reported: false,
                    };
                }
                Turn::WaitUntil(until) => tokio::time::sleep_until(until).await,
                Turn::WaitForProbe => changed.await,
            }
        }
    }

    /// The gate admitted a tunnel: every slot may try at once.
    fn admitted(&self) {
        *self.state() = State {
            uncertain: false,
            probing: false,
            refused_until: None,
            refusal: None,
        };
        self.0.changed.notify_waiters();
    }

    /// The gate refused a tunnel (denied, or refused the mode): nobody tries for `pause`.
    fn refused(&self, pause: Duration, why: String) {
        {
            let mut state = self.state();
            state.uncertain = true;
            state.probing = false;
            state.refused_until = Instant::now().checked_add(pause);
            state.refusal = Some(Arc::new(why));
        }
        self.0.changed.notify_waiters();
    }

    /// An attempt failed otherwise (the gate unreachable): the next slot may probe, each on
    /// its own backoff. An earlier refusal is no longer the latest news.
    fn failed(&self) {
        {
            let mut state = self.state();
            state.probing = false;
            state.refusal = None;
        }
        self.0.changed.notify_waiters();
    }

    /// Why the gate refused the last attempt, while no attempt has been admitted or has failed
    /// otherwise since.
    pub(crate) fn refusal(&self) -> Option<Arc<String>> {
        self.state().refusal.clone()
    }

    /// A tunnel dropped: until one is admitted again, attempts go one at a time.
    pub(crate) fn lost(&self) {
        self.state().uncertain = true;
    }
}

/// One slot's attempt, between [`Pacing::turn`] and its outcome.
pub(crate) struct Attempt<'a> {
    pacing: &'a Pacing,
    reported: bool,
}

impl Attempt<'_> {
    /// The gate admitted the tunnel.
    pub(crate) fn admitted(mut self) {
        self.reported = true;
        self.pacing.admitted();
    }

    /// The gate refused it (`why`): nobody tries again for `pause`.
    pub(crate) fn refused(mut self, pause: Duration, why: String) {
        self.reported = true;
        self.pacing.refused(pause, why);
    }

    /// It failed for another reason (the gate unreachable).
    pub(crate) fn failed(mut self) {
        self.reported = true;
        self.pacing.failed();
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.pacing.failed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refusal_is_told_until_a_later_attempt_fails_or_is_admitted() {
        let pacing = Pacing::new();
        pacing
            .turn()
            .await
            .refused(Duration::ZERO, "denied by the server".into());
        assert_eq!(
            pacing.refusal().as_deref().map(String::as_str),
            Some("denied by the server")
        );
        // The gate then became unreachable: that is the news now, not the refusal.
        pacing.turn().await.failed();
        assert!(pacing.refusal().is_none());
        pacing.turn().await.refused(Duration::ZERO, "again".into());
        pacing.turn().await.admitted();
        assert!(pacing.refusal().is_none());
    }
}
