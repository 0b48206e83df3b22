//! Hot-product batching: hold requests for one product wait in that product's queue while a
//! transaction for it runs, and the next transaction decides all of them together (up to a bound).
//!
//! The queue is the only shared state. A request that finds its product's queue absent creates
//! it and is told to start the drainer; every other request only joins. The drainer takes
//! batches until the queue is empty and then removes it, under the same lock as the joins, so a
//! request either lands in a batch of the running drainer or starts a new one: none is lost, none
//! is taken twice, and batches keep arrival order. A full queue refuses at once rather than
//! blocking, so overload turns into 503s, not into memory or latency without bound.

use std::collections::{BTreeMap, VecDeque};

use flashsale_core::{HoldRequest, ProductId};

#[cfg(loom)]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{Mutex, MutexGuard};

/// A request waiting in a queue, with where to send its answer.
#[derive(Debug)]
pub struct Waiting<R> {
    /// The request.
    pub request: HoldRequest,
    /// Its answer's way back.
    pub reply: R,
}

/// The waiting hold requests of every product being decided right now.
#[derive(Debug)]
pub struct HoldQueues<R> {
    queues: Mutex<BTreeMap<ProductId, VecDeque<Waiting<R>>>>,
    batch_max: usize,
    queue_max: usize,
}

impl<R> HoldQueues<R> {
    /// Queues taking at most `batch_max` requests per batch and holding at most `queue_max`
    /// waiting requests per product (both at least 1).
    pub fn new(batch_max: usize, queue_max: usize) -> Self {
        HoldQueues {
            queues: Mutex::new(BTreeMap::new()),
            batch_max: batch_max.max(1),
            queue_max: queue_max.max(1),
        }
    }

    /// Adds a request to its product's queue. `Ok(true)`: the queue was idle, and the caller
    /// must start its drainer; `Ok(false)`: a drainer is running and will take it.
    ///
    /// # Errors
    /// The number of requests already waiting, when the queue is full; nothing was queued.
    pub fn push(&self, product_id: ProductId, waiting: Waiting<R>) -> Result<bool, usize> {
        let mut queues = self.lock();
        match queues.get_mut(&product_id) {
            Some(queue) if queue.len() >= self.queue_max => Err(queue.len()),
            Some(queue) => {
                queue.push_back(waiting);
                Ok(false)
            }
            None => {
                queues.insert(product_id, VecDeque::from([waiting]));
                Ok(true)
            }
        }
    }

    /// The drainer's next batch, oldest first: up to `batch_max` requests. `None` when none
    /// wait; the queue is then removed, so the next push starts a new drainer.
    pub fn next_batch(&self, product_id: ProductId) -> Option<Vec<Waiting<R>>> {
        let mut queues = self.lock();
        let queue = queues.get_mut(&product_id)?;
        if queue.is_empty() {
            queues.remove(&product_id);
            return None;
        }
        let n = queue.len().min(self.batch_max);
        Some(queue.drain(..n).collect())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<ProductId, VecDeque<Waiting<R>>>> {
        // A panic while holding this lock cannot leave a queue half-changed: every change is one
        // std collection call.
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use flashsale_core::Qty;

    fn waiting(n: u32) -> Waiting<u32> {
        Waiting {
            request: HoldRequest::unkeyed(Qty(1)),
            reply: n,
        }
    }

    #[test]
    fn the_first_request_starts_the_drainer_and_batches_keep_arrival_order() {
        let queues = HoldQueues::new(2, 10);
        let p = ProductId(1);
        assert_eq!(queues.push(p, waiting(1)), Ok(true));
        assert_eq!(queues.push(p, waiting(2)), Ok(false));
        assert_eq!(queues.push(p, waiting(3)), Ok(false));
        let batch = |q: &HoldQueues<u32>| {
            q.next_batch(p)
                .map(|b| b.iter().map(|w| w.reply).collect::<Vec<_>>())
        };
        assert_eq!(batch(&queues), Some(vec![1, 2]));
        assert_eq!(batch(&queues), Some(vec![3]));
        assert_eq!(batch(&queues), None);
        assert_eq!(
            queues.push(p, waiting(4)),
            Ok(true),
            "an idle queue starts anew"
        );
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let queues = HoldQueues::new(1, 2);
        let p = ProductId(1);
        assert_eq!(queues.push(p, waiting(1)), Ok(true));
        assert_eq!(queues.push(p, waiting(2)), Ok(false));
        assert_eq!(queues.push(p, waiting(3)), Err(2));
        assert_eq!(
            queues.push(ProductId(2), waiting(4)),
            Ok(true),
            "per product"
        );
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use flashsale_core::Qty;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::thread;

    /// Two clients push while a drainer may be running: every request is taken exactly once or
    /// refused, each client's requests in its order, every batch within its bound, and nothing is
    /// left waiting once the drainers stop (no push joins a queue whose drainer already left).
    #[test]
    fn no_request_is_lost_or_taken_twice_and_batches_keep_arrival_order() {
        loom::model(|| {
            let queues = Arc::new(HoldQueues::new(2, 3));
            let taken = Arc::new(Mutex::new(Vec::new()));
            let refused = Arc::new(AtomicUsize::new(0));
            let p = ProductId(1);
            let client = |first: u32| {
                let (queues, taken, refused) = (queues.clone(), taken.clone(), refused.clone());
                thread::spawn(move || {
                    for n in [first, first + 1] {
                        let waiting = Waiting {
                            request: HoldRequest::unkeyed(Qty(1)),
                            reply: n,
                        };
                        match queues.push(p, waiting) {
                            Ok(true) => {
                                while let Some(batch) = queues.next_batch(p) {
                                    assert!(batch.len() <= 2, "a batch is bounded");
                                    let mut taken = taken.lock().unwrap();
                                    taken.extend(batch.into_iter().map(|w| w.reply));
                                }
                            }
                            Ok(false) => {}
                            Err(_) => drop(refused.fetch_add(1, Ordering::SeqCst)),
                        }
                    }
                })
            };
            let a = client(10);
            let b = client(20);
            a.join().unwrap();
            b.join().unwrap();
            let taken = taken.lock().unwrap().clone();
            let refused = refused.load(Ordering::SeqCst);
            assert_eq!(taken.len() + refused, 4, "every request taken or refused");
            let mut sorted = taken.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), taken.len(), "none taken twice");
            for first in [10, 20] {
                let mine: Vec<_> = taken.iter().filter(|&&n| n / 10 == first / 10).collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "arrival order");
            }
            assert_eq!(
                queues.next_batch(p).map(|b| b.len()),
                None,
                "nothing left behind"
            );
        });
    }
}
