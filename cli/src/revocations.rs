//! Key ids that reloads removed or changed, and how what was admitted under them hears of it.
//!
//! A watch, not a broadcast queue: a connection or tunnel whose task is slow to run while many
//! reloads happen must still see every revocation after its admission. A bounded queue drops
//! the oldest messages when it fills, and with them the revocation it would have missed.

use std::collections::HashMap;

use linkgate::KeyId;
use tokio::sync::watch;

/// Every key id ever revoked, with the reload that last revoked it. It grows by the ids the
/// operator's key files have had, not by anything a peer sends.
#[derive(Debug, Default)]
struct RevokedLog {
    /// Reloads that revoked anything so far.
    reloads: u64,
    /// Key id → the latest of those reloads that removed or changed it.
    last_revoked: HashMap<KeyId, u64>,
}

/// The sending side, one per service.
#[derive(Clone, Debug)]
pub(crate) struct Revocations {
    log: watch::Sender<RevokedLog>,
    /// `--drop-revoked`: connections and tunnels admitted under a revoked key are closed.
    /// Without it they go on, but a tunnel opens no new streams (each would be a new
    /// connection made with a key that no longer admits one).
    pub(crate) drop: bool,
}

impl Revocations {
    pub(crate) fn new(drop: bool) -> Self {
        Self {
            log: watch::Sender::new(RevokedLog::default()),
            drop,
        }
    }

    /// Announces the ids one reload removed or changed.
    pub(crate) fn announce(&self, ids: Vec<KeyId>) {
        if ids.is_empty() {
            return;
        }
        // Kept whether or not anything listens now: a later subscriber only looks at reloads
        // after its own subscription.
        self.log.send_modify(|log| {
            log.reloads += 1;
            let reload = log.reloads;
            for id in ids {
                log.last_revoked.insert(id, reload);
            }
        });
    }

    /// Watches for revocations from now on.
    pub(crate) fn subscribe(&self) -> RevocationWatch {
        let log = self.log.subscribe();
        let since = log.borrow().reloads;
        RevocationWatch { log, since }
    }
}

/// What one admitted connection or tunnel watches: revocations after it subscribed.
#[derive(Debug)]
pub(crate) struct RevocationWatch {
    log: watch::Receiver<RevokedLog>,
    since: u64,
}

impl RevocationWatch {
    /// Completes when a reload after the subscription revokes `key_id`.
    pub(crate) async fn revoked(&mut self, key_id: &KeyId) {
        loop {
            let revoked = self
                .log
                .borrow_and_update()
                .last_revoked
                .get(key_id)
                .is_some_and(|&reload| reload > self.since);
            if revoked {
                return;
            }
            if self.log.changed().await.is_err() {
                // The service is gone, and no reload will come.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(name: &str) -> KeyId {
        KeyId::new(name).expect("a valid key id")
    }

    async fn is_revoked(watch: &mut RevocationWatch, key_id: &KeyId) -> bool {
        tokio::time::timeout(Duration::from_millis(50), watch.revoked(key_id))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_revocation_among_many_reloads_is_not_lost() {
        let revocations = Revocations::new(true);
        let mut watch = revocations.subscribe();
        revocations.announce(vec![id("alice")]);
        // More reloads than a queue of 16 held before the watcher ran.
        for n in 0..40 {
            revocations.announce(vec![id(&format!("other{n}"))]);
        }
        assert!(is_revoked(&mut watch, &id("alice")).await);
    }

    #[tokio::test]
    async fn only_revocations_after_the_subscription_count() {
        let revocations = Revocations::new(false);
        revocations.announce(vec![id("alice")]);
        let mut watch = revocations.subscribe();
        assert!(!is_revoked(&mut watch, &id("alice")).await);
        revocations.announce(vec![id("bob")]);
        assert!(!is_revoked(&mut watch, &id("alice")).await);
        revocations.announce(vec![id("alice")]);
        assert!(is_revoked(&mut watch, &id("alice")).await);
    }

    #[tokio::test]
    async fn an_empty_reload_announces_nothing() {
        let revocations = Revocations::new(false);
        let mut watch = revocations.subscribe();
        revocations.announce(Vec::new());
        assert!(!watch.log.has_changed().expect("the sender is alive"));
        assert!(!is_revoked(&mut watch, &id("alice")).await);
    }

    #[tokio::test]
    async fn a_service_gone_revokes_nothing() {
        let revocations = Revocations::new(false);
        let mut watch = revocations.subscribe();
        drop(revocations);
        assert!(!is_revoked(&mut watch, &id("alice")).await);
    }
}
