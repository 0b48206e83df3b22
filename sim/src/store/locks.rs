//! The lock table: each row's exclusive lock, its holder and its waiters in arrival order; the
//! wait-for graph's deadlock check; and the release of a transaction's locks, each granted to its
//! next live waiter.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use tokio::sync::oneshot;

use super::Shared;
use super::tables::RowKey;

/// How long a locking read waits before failing as InnoDB's error 1205 would.
pub const LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub(super) struct Lock {
    pub(super) holder: u64,
    pub(super) waiters: VecDeque<(u64, Option<oneshot::Sender<()>>)>,
}

/// Whether `tx` waiting for `key` would close a cycle in the wait-for graph.
pub(super) fn deadlocks(shared: &Shared, tx: u64, key: &RowKey) -> bool {
    let mut seen = BTreeSet::new();
    let mut next = shared.locks.get(key).map(|lock| lock.holder);
    while let Some(holder) = next {
        if holder == tx {
            return true;
        }
        if !seen.insert(holder) {
            return false;
        }
        next = shared
            .waiting_for
            .get(&holder)
            .and_then(|k| shared.locks.get(k))
            .map(|l| l.holder);
    }
    false
}

/// Releases every lock `tx` holds, granting each to its next live waiter, and takes `tx` out of
/// every queue. Found by holder, not by a list the transaction keeps: a lock granted to a
/// waiter whose task was cut off (a crash) before it woke would otherwise never be released.
pub(super) fn release_locks(shared: &mut Shared, tx: u64) {
    shared.waiting_for.remove(&tx);
    shared.batches_open.remove(&tx);
    let keys: Vec<RowKey> = shared.locks.keys().cloned().collect();
    for key in keys {
        let Some(lock) = shared.locks.get_mut(&key) else {
            continue;
        };
        lock.waiters.retain(|(id, _)| *id != tx);
        if lock.holder != tx {
            continue;
        }
        let mut granted = false;
        while let Some((waiter, sender)) = lock.waiters.pop_front() {
            lock.holder = waiter;
            if sender.is_some_and(|s| s.send(()).is_ok()) {
                granted = true;
                break;
            }
        }
        if !granted {
            shared.locks.remove(&key);
        }
    }
}
