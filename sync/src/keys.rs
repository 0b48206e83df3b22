//! Idempotency keys of requests running on this server: a second request under a key still in
//! flight here is refused at once (409 `idempotency_key_in_flight`) instead of queueing behind the
//! first on the database. A claim lasts until it is dropped, whatever way its request ends.
//!
//! Lost with the process in a crash, which is fine: the database still runs two requests under
//! one key one after the other, and the second replays the first's record.

use std::collections::BTreeSet;

use flashsale_core::IdempotencyKey;

#[cfg(loom)]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{Mutex, MutexGuard};

/// The keys in flight.
#[derive(Debug, Default)]
pub struct KeysInFlight {
    keys: Mutex<BTreeSet<IdempotencyKey>>,
}

/// A key claimed as in flight until dropped.
#[derive(Debug)]
pub struct Claim<'a> {
    keys: &'a KeysInFlight,
    key: IdempotencyKey,
}

impl KeysInFlight {
    /// Claims `key`, or `None` when a request under it is already in flight here.
    pub fn claim(&self, key: &IdempotencyKey) -> Option<Claim<'_>> {
        self.lock().insert(key.clone()).then(|| Claim {
            keys: self,
            key: key.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<IdempotencyKey>> {
        // One insert or remove per lock: a panic cannot leave the set half-changed.
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.keys.lock().remove(&self.key);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_claimed_once_until_its_claim_drops() {
        let keys = KeysInFlight::default();
        let key = IdempotencyKey::parse("k").expect("a key");
        let claim = keys.claim(&key);
        assert!(claim.is_some());
        assert!(keys.claim(&key).is_none(), "in flight");
        let other = IdempotencyKey::parse("other").expect("a key");
        assert!(keys.claim(&other).is_some(), "per key");
        drop(claim);
        assert!(keys.claim(&key).is_some(), "free again");
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::thread;

    /// Two requests under one key at once: never both in flight, and once both are done the key
    /// is free again.
    #[test]
    fn two_requests_under_one_key_are_never_in_flight_together() {
        loom::model(|| {
            let keys = Arc::new(KeysInFlight::default());
            let running = Arc::new(AtomicUsize::new(0));
            let request = || {
                let (keys, running) = (keys.clone(), running.clone());
                thread::spawn(move || {
                    let key = IdempotencyKey::parse("k").expect("a key");
                    if let Some(claim) = keys.claim(&key) {
                        let before = running.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(before, 0, "two requests under one key in flight");
                        running.fetch_sub(1, Ordering::SeqCst);
                        drop(claim);
                    }
                })
            };
            let a = request();
            let b = request();
            a.join().unwrap();
            b.join().unwrap();
            let key = IdempotencyKey::parse("k").expect("a key");
            assert!(
                keys.claim(&key).is_some(),
                "the key is free once both are done"
            );
        });
    }
}
