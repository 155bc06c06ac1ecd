//! Key ids that reloads removed or changed, and how what was admitted under them hears of it.
//!
//! Each connection knows which keyring admitted it (its admission's keyring generation), and
//! each revocation which keyring first lacked the key: a connection is revoked when a keyring
//! newer than its own dropped its key. That holds whatever the order of events: a revocation
//! between the admission and the subscription is seen at once, and a connection admitted under
//! a key's new value is not taken for one of the old value's. A watch, not a queue: a task slow
//! to run while many reloads happen loses none of them.

use std::collections::HashMap;

use linkgate::KeyId;
use tokio::sync::watch;

/// Every key id ever revoked, with the keyring generation that last revoked it. It grows by the
/// ids the operator's key files have had, not by anything a peer sends.
#[derive(Debug, Default)]
struct RevokedLog {
    /// Key id → the generation of the latest keyring that removed or changed it.
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

    /// Announces the ids that the keyring of `generation` removed or changed.
    pub(crate) fn announce(&self, ids: Vec<KeyId>, generation: u64) {
        if ids.is_empty() {
            return;
        }
        // Kept whether or not anything listens now: a later subscriber admitted under an older
        // keyring finds it at once.
        self.log.send_modify(|log| {
            for id in ids {
                let at = log.last_revoked.entry(id).or_default();
                *at = (*at).max(generation);
            }
        });
    }

    /// Watches for revocations of what the keyring of `admitted_under` admitted.
    pub(crate) fn subscribe(&self, admitted_under: u64) -> RevocationWatch {
        RevocationWatch {
            log: self.log.subscribe(),
            admitted_under,
        }
    }
}

/// What one admitted connection or tunnel watches.
#[derive(Debug)]
pub(crate) struct RevocationWatch {
    log: watch::Receiver<RevokedLog>,
    admitted_under: u64,
}

impl RevocationWatch {
    /// Completes when a keyring newer than the one that admitted this connection has dropped
    /// `key_id` (at once, if one already has).
    pub(crate) async fn revoked(&mut self, key_id: &KeyId) {
        loop {
            let revoked = self
                .log
                .borrow_and_update()
                .last_revoked
                .get(key_id)
                .is_some_and(|&generation| generation > self.admitted_under);
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
        let mut watch = revocations.subscribe(0);
        revocations.announce(vec![id("alice")], 1);
        // More reloads than a queue of 16 held before the watcher ran.
        for generation in 2..40 {
            revocations.announce(vec![id(&format!("other{generation}"))], generation);
        }
        assert!(is_revoked(&mut watch, &id("alice")).await);
    }

    #[tokio::test]
    async fn a_revocation_before_the_subscription_still_counts() {
        // Admitted under keyring 0; keyring 1 removed the key before the task subscribed.
        let revocations = Revocations::new(true);
        revocations.announce(vec![id("alice")], 1);
        let mut watch = revocations.subscribe(0);
        assert!(is_revoked(&mut watch, &id("alice")).await);
    }

    #[tokio::test]
    async fn only_newer_keyrings_revoke() {
        // Admitted under keyring 1, which already held alice's new key.
        let revocations = Revocations::new(false);
        revocations.announce(vec![id("alice")], 1);
        let mut watch = revocations.subscribe(1);
        assert!(!is_revoked(&mut watch, &id("alice")).await);
        revocations.announce(vec![id("bob")], 2);
        assert!(!is_revoked(&mut watch, &id("alice")).await);
        revocations.announce(vec![id("alice")], 3);
        assert!(is_revoked(&mut watch, &id("alice")).await);
    }

    #[tokio::test]
    async fn an_empty_reload_announces_nothing() {
        let revocations = Revocations::new(false);
        let mut watch = revocations.subscribe(0);
        revocations.announce(Vec::new(), 1);
        assert!(!watch.log.has_changed().expect("the sender is alive"));
        assert!(!is_revoked(&mut watch, &id("alice")).await);
    }

    #[tokio::test]
    async fn a_service_gone_revokes_nothing() {
        let revocations = Revocations::new(false);
        let mut watch = revocations.subscribe(0);
        drop(revocations);
        assert!(!is_revoked(&mut watch, &id("alice")).await);
    }
}
