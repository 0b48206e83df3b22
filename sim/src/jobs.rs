//! A sweep's seeds on several threads at once. Each seed runs in a simulation of its own on one
//! of N worker threads: madsim keeps a runtime, its randomness and its simulated clock in the
//! thread that runs it, and so does `world::panics` with what it remembers of a panic, so runs on
//! different threads share nothing and each seed's trace is the one it has alone. Seeds are handed
//! out in increasing order from one counter, and their outcomes are handed back to the calling
//! thread in that order, so what the sweep adds up, prints and judges does not depend on N.
//!
//! A seed that stops the sweep (a failure, without `--keep-going`) stops the handing out of the
//! seeds after it, while the seeds before it still run: the sweep stops at the first such seed
//! in order, the one a sweep on one thread stops at, whichever thread met a failure first.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};

/// The most worker threads a sweep takes: beyond the cores of any machine it runs on, every
/// thread is memory and start-up time for nothing.
pub const JOBS_MAX: usize = 256;

/// A worker's stack, the size of the main thread's: a run's futures are polled on the thread
/// that runs it, and a spawned thread's default stack (2 MiB) is a quarter of the main thread's,
/// on which every run was made before.
const WORKER_STACK_BYTES: usize = 8 << 20;

/// How many worker threads a sweep runs its seeds on, from 1 to [`JOBS_MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jobs(NonZeroUsize);

impl Jobs {
    /// One worker thread.
    pub const ONE: Jobs = Jobs(NonZeroUsize::MIN);

    /// `n` worker threads, if `1 <= n <= JOBS_MAX`.
    pub fn new(n: usize) -> Option<Jobs> {
        NonZeroUsize::new(n)
            .filter(|n| n.get() <= JOBS_MAX)
            .map(Jobs)
    }

    /// As many as the machine has cores (`std::thread::available_parallelism`, which counts
    /// the cores this process may run on), at most [`JOBS_MAX`]; one when that is unknown.
    pub fn available() -> Jobs {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Jobs::new(cores.min(JOBS_MAX)).unwrap_or(Jobs::ONE)
    }

    /// Parses N, `1 <= N <= JOBS_MAX`.
    ///
    /// # Errors
    /// A message for anything else.
    pub fn parse(text: &str) -> Result<Jobs, String> {
        let n = text
            .parse::<usize>()
            .map_err(|_| format!("takes a number of threads, not {text}"))?;
        Jobs::new(n).ok_or(format!("takes 1 to {JOBS_MAX} threads, not {n}"))
    }

    /// How many.
    pub fn get(self) -> usize {
        self.0.get()
    }
}

impl std::fmt::Display for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Runs `run` on each of `seeds` on `jobs` worker threads, and hands each outcome to `fold` on
/// the calling thread in the order of `seeds`, which is also the order they are handed out in.
///
/// After an outcome for which `stops` is true, no seed after it is handed out, the seeds before
/// it still run, and `fold` gets every outcome up to the first such one in order, and no other.
/// It returns as soon as it has folded that one: runs of later seeds already under way are left
/// to end on their own and their outcomes dropped, so a later seed whose run never ends (a
/// planted bug may make one) cannot hold up a sweep that a sweep on one thread would have ended.
///
/// A worker thread that cannot be started is said on stderr; the seeds run on those that did
/// start, or on the calling thread when none did. A panic on a worker (outside a run, which
/// catches its own) is raised again on the calling thread.
pub fn in_seed_order<T, R, S, F>(seeds: Vec<u64>, jobs: Jobs, run: R, stops: S, fold: F)
where
    T: Send + 'static,
    R: Fn(u64) -> T + Send + Sync + 'static,
    S: Fn(&T) -> bool + Send + Sync + 'static,
    F: FnMut(u64, T),
{
    let shared = Arc::new(Shared {
        seeds,
        next: AtomicUsize::new(0),
        stop_at: AtomicUsize::new(usize::MAX),
        run,
        stops,
    });
    let (sender, receiver) = mpsc::channel();
    // More threads than seeds would have nothing to do.
    let wanted = jobs.get().min(shared.seeds.len().max(1));
    let mut workers = Vec::with_capacity(wanted);
    for n in 0..wanted {
        let sender = sender.clone();
        let shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("sweep-{n}"))
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || shared.work(&sender));
        match spawned {
            Ok(worker) => workers.push(worker),
            Err(e) => {
                eprintln!(
                    "note: {} of {wanted} worker threads started ({e})",
                    workers.len()
                );
                break;
            }
        }
    }
    // The workers hold the only senders left: the receiver ends when the last one is done.
    drop(sender);
    if workers.is_empty() {
        eprintln!("note: the seeds run on the calling thread");
        shared.on_this_thread(fold);
        return;
    }
    let folded = fold_in_order(&shared.seeds, receiver, fold);
    if folded == Folded::Stopped {
        return;
    }
    // Every worker is done: the receiver ended. One that panicked left seeds unfolded.
    for worker in workers {
        if let Err(panic) = worker.join() {
            std::panic::resume_unwind(panic);
        }
    }
    assert_eq!(
        folded,
        Folded::All,
        "every seed is folded when no worker panicked"
    );
}

/// What the workers share: the seeds, the next one to hand out, the first index that stopped
/// the sweep so far, and what to do with a seed.
struct Shared<R, S> {
    seeds: Vec<u64>,
    next: AtomicUsize,
    /// The lowest index whose outcome stops the sweep, `usize::MAX` while none has.
    stop_at: AtomicUsize,
    run: R,
    stops: S,
}

/// An outcome with its seed's index and whether it stops the sweep.
type Sent<T> = (usize, bool, T);

impl<R, S> Shared<R, S> {
    /// Takes seeds in order and runs them until none is left, one past the first that stopped
    /// the sweep is reached, or the outcomes are no longer wanted.
    fn work<T>(&self, sender: &Sender<Sent<T>>)
    where
        R: Fn(u64) -> T,
        S: Fn(&T) -> bool,
    {
        loop {
            // Relaxed is enough: `next` hands out each index once whatever the order, and
            // `stop_at` only goes down, so any value read is at or above the final one and an
            // index skipped for being above it is above the final one too: every index up to
            // the first that stops the sweep runs.
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(&seed) = self.seeds.get(index) else {
                return;
            };
            if index > self.stop_at.load(Ordering::Relaxed) {
                return;
            }
            let outcome = (self.run)(seed);
            let stops = (self.stops)(&outcome);
            if stops {
                self.stop_at.fetch_min(index, Ordering::Relaxed);
            }
            if sender.send((index, stops, outcome)).is_err() {
                return;
            }
        }
    }

    /// Runs the seeds one after the other and folds each, up to the first that stops the sweep.
    fn on_this_thread<T>(&self, mut fold: impl FnMut(u64, T))
    where
        R: Fn(u64) -> T,
        S: Fn(&T) -> bool,
    {
        for &seed in &self.seeds {
            let outcome = (self.run)(seed);
            let stops = (self.stops)(&outcome);
            fold(seed, outcome);
            if stops {
                return;
            }
        }
    }
}

/// How far [`fold_in_order`] went.
#[derive(Debug, PartialEq, Eq)]
enum Folded {
    /// Every seed.
    All,
    /// Up to the first seed that stops the sweep.
    Stopped,
    /// The outcomes ended before the last seed's: a worker died.
    Short,
}

/// Hands the outcomes to `fold` in index order as they arrive, up to the first that stops the
/// sweep; keeps those that arrive early until their turn.
fn fold_in_order<T>(
    seeds: &[u64],
    receiver: Receiver<Sent<T>>,
    mut fold: impl FnMut(u64, T),
) -> Folded {
    let mut early = BTreeMap::new();
    let mut due = 0usize;
    for (index, stops, outcome) in receiver {
        early.insert(index, (stops, outcome));
        while let Some((stops, outcome)) = early.remove(&due) {
            let Some(&seed) = seeds.get(due) else {
                return Folded::Short;
            };
            fold(seed, outcome);
            if stops {
                return Folded::Stopped;
            }
            due += 1;
        }
    }
    if due == seeds.len() {
        Folded::All
    } else {
        Folded::Short
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The seeds folded, running `outcome` for each on `jobs` threads and stopping at a failure.
    fn folded(
        seeds: &[u64],
        jobs: usize,
        outcome: impl Fn(u64) -> bool + Send + Sync + 'static,
    ) -> Vec<u64> {
        let mut folded = Vec::new();
        let jobs = Jobs::new(jobs).expect("a number of jobs in range");
        in_seed_order(
            seeds.to_vec(),
            jobs,
            move |seed| (seed, outcome(seed)),
            |&(_, failed)| failed,
            |seed, (ran, _)| {
                assert_eq!(seed, ran, "each outcome with its own seed");
                folded.push(seed);
            },
        );
        folded
    }

    #[test]
    fn every_seed_is_folded_once_in_order_whatever_the_jobs() {
        let seeds: Vec<u64> = (100..400).collect();
        for jobs in [1, 2, 3, 8] {
            assert_eq!(folded(&seeds, jobs, |_| false), seeds, "{jobs} jobs");
        }
        assert_eq!(folded(&[7], 8, |_| false), [7], "more jobs than seeds");
        assert_eq!(folded(&[], 2, |_| false), [0u64; 0], "no seeds");
    }

    #[test]
    fn the_sweep_stops_at_the_first_failing_seed_in_order_not_in_time() {
        // Seed 1 fails only after seed 3 has failed: in time seed 3 fails first, yet the
        // sweep, like one on a single thread, stops at seed 1 and never folds 2 or 3.
        let (three_failed, three_has_failed) = mpsc::channel::<()>();
        let three_failed = Mutex::new(three_failed);
        let three_has_failed = Mutex::new(three_has_failed);
        let outcome = move |seed| match seed {
            1 => {
                let wait = three_has_failed.lock().expect("not poisoned").recv();
                assert!(wait.is_ok(), "seed 3 runs while seed 1 waits");
                true
            }
            3 => {
                let said = three_failed.lock().expect("not poisoned").send(());
                assert!(said.is_ok());
                true
            }
            _ => false,
        };
        let seeds: Vec<u64> = (0..50).collect();
        assert_eq!(folded(&seeds, 2, outcome), [0, 1]);
    }

    #[test]
    fn a_later_seed_still_running_does_not_hold_up_a_stopped_sweep() {
        // Seed 1 never ends while the test runs; seed 0 fails, which stops the sweep.
        let (_never, never_said) = mpsc::channel::<()>();
        let never_said = Mutex::new(never_said);
        let outcome = move |seed| {
            if seed == 1 {
                let _ = never_said.lock().expect("not poisoned").recv();
            }
            seed == 0
        };
        assert_eq!(folded(&[0, 1, 2], 2, outcome), [0]);
    }

    #[test]
    fn on_one_thread_no_seed_after_a_failure_runs() {
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&ran);
        let seeds: Vec<u64> = (0..1_000).collect();
        let outcome = move |seed| {
            counted.fetch_add(1, Ordering::Relaxed);
            seed == 10
        };
        assert_eq!(folded(&seeds, 1, outcome), (0..=10).collect::<Vec<u64>>());
        assert_eq!(ran.load(Ordering::Relaxed), 11);
    }

    #[test]
    fn a_panic_on_a_worker_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| {
            folded(&[0, 1, 2, 3], 2, |seed| {
                assert_ne!(seed, 2, "a worker's own bug");
                false
            })
        });
        assert!(caught.is_err());
    }

    #[test]
    fn jobs_are_from_one_to_the_most() {
        assert_eq!(Jobs::parse("1"), Ok(Jobs::ONE));
        assert_eq!(Jobs::parse("256").map(Jobs::get), Ok(JOBS_MAX));
        for bad in ["0", "257", "-1", "two", ""] {
            assert!(Jobs::parse(bad).is_err(), "{bad:?}");
        }
        assert!((1..=JOBS_MAX).contains(&Jobs::available().get()));
    }
}
