//! Group commit: the commands of one server instance wait in one queue while a transaction runs,
//! and the next transaction decides all of them together (up to a bound), whatever their kinds
//! and products.
//!
//! The queue is the only shared state. A request that finds no transaction running marks the
//! queue as draining and is told to start the drainer, which takes it at once (nothing waits
//! without contention); every other request only joins. The drainer takes batches until the queue
//! is empty and then stops draining, under the same lock as the joins, so a request either lands
//! in a batch of the running drainer or starts a new one: none is lost, none is taken twice, and
//! batches keep arrival order. A full queue refuses at once rather than blocking, so overload
//! turns into 503s, not into memory or latency without bound.
//!
//! Hand-written rather than a channel: the drainer must know, under the same lock as a request's
//! join, whether the queue is empty as it stops, or a request joining at that instant would wait
//! for a drainer that already left; loom explores exactly that interleaving.

use std::collections::VecDeque;

#[cfg(loom)]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{Mutex, MutexGuard};

/// A command waiting in the queue, with where to send its answer.
#[derive(Debug)]
pub struct Waiting<C, R> {
    /// The command.
    pub command: C,
    /// Its answer's way back.
    pub reply: R,
}

/// The commands waiting for the next transaction of this instance.
#[derive(Debug)]
pub struct Batches<C, R> {
    queue: Mutex<Queue<C, R>>,
    batch_max: usize,
    queue_max: usize,
}

#[derive(Debug)]
struct Queue<C, R> {
    waiting: VecDeque<Waiting<C, R>>,
    /// Whether a drainer is running: it will take whatever joins.
    draining: bool,
}

impl<C, R> Batches<C, R> {
    /// A queue taking at most `batch_max` commands per batch and holding at most `queue_max`
    /// waiting ones (both at least 1).
    pub fn new(batch_max: usize, queue_max: usize) -> Self {
        Batches {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                draining: false,
            }),
            batch_max: batch_max.max(1),
            queue_max: queue_max.max(1),
        }
    }

    /// Adds a command. `Ok(true)`: no drainer was running, and the caller must start one;
    /// `Ok(false)`: the running drainer will take it.
    ///
    /// # Errors
    /// The number of commands already waiting, when the queue is full; nothing was queued.
    pub fn push(&self, waiting: Waiting<C, R>) -> Result<bool, usize> {
        let mut queue = self.lock();
        if queue.waiting.len() >= self.queue_max {
            return Err(queue.waiting.len());
        }
        queue.waiting.push_back(waiting);
        let start = !queue.draining;
        queue.draining = true;
        Ok(start)
    }

    /// The drainer's next batch, oldest first: up to `batch_max` commands. `None` when none
    /// wait; the drainer must then stop, and the next push starts a new one.
    pub fn next_batch(&self) -> Option<Vec<Waiting<C, R>>> {
        let mut queue = self.lock();
        if queue.waiting.is_empty() {
            queue.draining = false;
            return None;
        }
        let n = queue.waiting.len().min(self.batch_max);
        Some(queue.waiting.drain(..n).collect())
    }

    /// How many commands wait.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    fn lock(&self) -> MutexGuard<'_, Queue<C, R>> {
        // A panic while holding this lock cannot leave the queue half-changed: every change is
        // one std collection call or one flag.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn waiting(n: u32) -> Waiting<u32, u32> {
        Waiting {
            command: n,
            reply: n,
        }
    }

    #[test]
    fn the_first_command_starts_the_drainer_and_batches_keep_arrival_order() {
        let batches = Batches::new(2, 10);
        assert_eq!(batches.push(waiting(1)), Ok(true));
        assert_eq!(batches.push(waiting(2)), Ok(false));
        assert_eq!(batches.push(waiting(3)), Ok(false));
        assert_eq!(batches.waiting(), 3);
        let batch = |b: &Batches<u32, u32>| {
            b.next_batch()
                .map(|b| b.iter().map(|w| w.command).collect::<Vec<_>>())
        };
        assert_eq!(batch(&batches), Some(vec![1, 2]));
        assert_eq!(batch(&batches), Some(vec![3]));
        assert_eq!(batch(&batches), None);
        assert_eq!(
            batches.push(waiting(4)),
            Ok(true),
            "an idle queue starts anew"
        );
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let batches = Batches::new(1, 2);
        assert_eq!(batches.push(waiting(1)), Ok(true));
        assert_eq!(batches.push(waiting(2)), Ok(false));
        assert_eq!(batches.push(waiting(3)), Err(2));
        assert_eq!(batches.next_batch().map(|b| b.len()), Some(1));
        assert_eq!(
            batches.push(waiting(4)),
            Ok(false),
            "room again, drainer running"
        );
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::thread;

    /// Two clients push while a drainer may be running: every command is taken exactly once or
    /// refused, each client's commands in its order, every batch within its bound, and nothing
    /// is left waiting once the drainers stop (no push joins a queue whose drainer already left).
    #[test]
    fn no_command_is_lost_or_taken_twice_and_batches_keep_arrival_order() {
        loom::model(|| {
            let batches = Arc::new(Batches::new(2, 3));
            let taken = Arc::new(Mutex::new(Vec::new()));
            let refused = Arc::new(AtomicUsize::new(0));
            let client = |first: u32| {
                let (batches, taken, refused) = (batches.clone(), taken.clone(), refused.clone());
                thread::spawn(move || {
                    for n in [first, first + 1] {
                        let waiting = Waiting {
                            command: n,
                            reply: (),
                        };
                        match batches.push(waiting) {
                            Ok(true) => {
                                while let Some(batch) = batches.next_batch() {
                                    assert!(batch.len() <= 2, "a batch is bounded");
                                    let mut taken = taken.lock().unwrap();
                                    taken.extend(batch.into_iter().map(|w| w.command));
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
            assert_eq!(taken.len() + refused, 4, "every command taken or refused");
            let mut sorted = taken.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), taken.len(), "none taken twice");
            for first in [10, 20] {
                let mine: Vec<_> = taken.iter().filter(|&&n| n / 10 == first / 10).collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "arrival order");
            }
            assert_eq!(
                batches.next_batch().map(|b| b.len()),
                None,
                "nothing left behind"
            );
        });
    }

    /// The hand-off: a drainer that finds the queue empty stops under the same lock a push
    /// takes, so a command pushed as it stops starts a new drainer instead of waiting forever.
    #[test]
    fn a_command_pushed_as_the_drainer_stops_starts_a_new_one() {
        loom::model(|| {
            let batches = Arc::new(Batches::<u32, ()>::new(4, 4));
            assert_eq!(
                batches.push(Waiting {
                    command: 1,
                    reply: ()
                }),
                Ok(true)
            );
            let drainer = {
                let batches = batches.clone();
                thread::spawn(move || {
                    let mut taken = 0;
                    while let Some(batch) = batches.next_batch() {
                        taken += batch.len();
                    }
                    taken
                })
            };
            let started = batches.push(Waiting {
                command: 2,
                reply: (),
            });
            let taken_by_first = drainer.join().unwrap();
            match started {
                // The first drainer had stopped: this push must drain its own command.
                Ok(true) => {
                    assert_eq!(taken_by_first, 1);
                    assert_eq!(batches.next_batch().map(|b| b.len()), Some(1));
                }
                // The first drainer was still running: it took both.
                Ok(false) => assert_eq!(taken_by_first, 2),
                Err(_) => panic!("the queue had room"),
            }
            assert!(batches.next_batch().is_none(), "nothing left behind");
        });
    }
}
