//! `--max-connections-per-key`: a bound on what one key id holds open at once, so that one
//! client (one key) cannot take every place `--max-connections` gives, nor every stream place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use linkgate::KeyId;

/// Connections, tunnels and tunnel streams open per key id. Only proved key ids are counted, so
/// the map holds at most one entry per key the gate knows (or knew).
#[derive(Debug)]
pub(crate) struct PerKey {
    max: usize,
    open: Mutex<HashMap<KeyId, usize>>,
}

/// One place taken under a key id, given back when dropped.
#[derive(Debug)]
pub(crate) struct PerKeySlot {
    owner: Arc<PerKey>,
    key_id: KeyId,
}

impl PerKey {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::default(),
        })
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// A place for `key_id`, or `None` when it holds `max` already.
    pub(crate) fn take(self: &Arc<Self>, key_id: &KeyId) -> Option<PerKeySlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key_id.clone()).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(PerKeySlot {
            owner: Arc::clone(self),
            key_id: key_id.clone(),
        })
    }

    #[cfg(test)]
    fn open(&self, key_id: &KeyId) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(key_id).copied().unwrap_or(0)
    }
}

impl Drop for PerKeySlot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_has_its_own_places_and_gets_them_back() {
        let per_key = PerKey::new(2);
        let (alice, bob) = (KeyId::new("alice").unwrap(), KeyId::new("bob").unwrap());
        let first = per_key.take(&alice).unwrap();
        let _second = per_key.take(&alice).unwrap();
        assert!(per_key.take(&alice).is_none(), "a third place for alice");
        let _bob = per_key.take(&bob).expect("bob is not held back by alice");
        drop(first);
        assert_eq!(per_key.open(&alice), 1);
        let _again = per_key
            .take(&alice)
            .expect("a place given back is free again");
        assert_eq!(per_key.open(&alice), 2);
    }
}
