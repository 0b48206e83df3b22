//! The availability cache: what `GET /api/products/{id}` answered, kept per product so a GET storm
//! on a hot product costs no database read.
//!
//! An entry is exact for this instance and bounded for the others:
//! - every commit of this instance that writes a product *invalidates* it after the commit and
//!   before its caller is answered, so a client always reads its own writes;
//! - an entry is never served at or past its `valid_until` on the wall clock: the product's next
//!   hold deadline (when a unit comes back on sale by itself), or sooner;
//! - nor once it is older than the staleness bound on the *monotonic* clock, which bounds how
//!   stale another instance's writes can look whatever the wall clock does: a wall clock that
//!   steps forward, stores an entry, then steps back and catches up again would otherwise serve
//!   that entry long after its bound;
//! - a wall clock that jumps back before an entry's read time misses instead of serving it
//!   (holds that had expired at the read count again there).
//!
//! The race it must not lose: a reader reads the database, a writer commits and invalidates, and
//! only then the reader stores what it read, which is already stale. A per-product *generation*
//! closes it: the reader takes the generation before its read and stores only if no invalidation
//! came in between.

use std::collections::BTreeMap;

use flashsale_core::{ProductId, Timestamp};

#[cfg(loom)]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{Mutex, MutexGuard};

/// The most products the cache keeps; past it, storing evicts the oldest read. Products are made
/// by admins, so this only bounds memory against a surprise.
pub const PRODUCTS_MAX: usize = 100_000;

#[derive(Debug)]
struct Slot<V> {
    generation: u64,
    entry: Option<Entry<V>>,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    read_at: Timestamp,
    valid_until: Timestamp,
    /// On the monotonic clock.
    stale_at_ms: u64,
}

/// A moment on both of an instance's clocks: the wall clock, which may step, and a monotonic
/// one (milliseconds from any fixed start), which never does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moment {
    /// The wall clock.
    pub wall: Timestamp,
    /// The monotonic clock.
    pub monotonic_ms: u64,
}

/// Cached values per product, with a generation each.
#[derive(Debug)]
pub struct ProductCache<V> {
    slots: Mutex<BTreeMap<ProductId, Slot<V>>>,
}

impl<V> Default for ProductCache<V> {
    fn default() -> Self {
        ProductCache {
            slots: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<V: Clone> ProductCache<V> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The product's value at `now`, if one is stored, was read at or before `now` on the wall
    /// clock, and is still valid on both clocks.
    pub fn get(&self, id: ProductId, now: Moment) -> Option<V> {
        let slots = self.lock();
        let entry = slots.get(&id)?.entry.as_ref()?;
        let valid = entry.read_at <= now.wall
            && now.wall < entry.valid_until
            && now.monotonic_ms < entry.stale_at_ms;
        valid.then(|| entry.value.clone())
    }

    /// The product's generation, to take before reading the database for [`Self::store`].
    pub fn generation(&self, id: ProductId) -> u64 {
        self.lock().get(&id).map_or(0, |slot| slot.generation)
    }

    /// Stores `value`, read at `read` after taking `generation`, valid until `valid_until` on
    /// the wall clock and for `fresh_ms` on the monotonic one; does nothing if the product was
    /// invalidated since `generation` was taken. Returns whether it stored.
    pub fn store(
        &self,
        id: ProductId,
        generation: u64,
        value: V,
        read: Moment,
        valid_until: Timestamp,
        fresh_ms: u64,
    ) -> bool {
        let mut slots = self.lock();
        if !slots.contains_key(&id) && slots.len() >= PRODUCTS_MAX {
            let oldest = slots
                .iter()
                .filter(|(_, slot)| slot.generation == 0)
                .min_by_key(|(_, slot)| slot.entry.as_ref().map(|e| e.read_at))
                .map(|(&id, _)| id);
            // Only never-invalidated slots may go: forgetting a generation could let a reader
            // that took it before store a stale value.
            match oldest {
                Some(oldest) => drop(slots.remove(&oldest)),
                None => return false,
            }
        }
        let slot = slots.entry(id).or_insert(Slot {
            generation: 0,
            entry: None,
        });
        if slot.generation != generation {
            return false;
        }
        slot.entry = Some(Entry {
            value,
            read_at: read.wall,
            valid_until,
            stale_at_ms: read.monotonic_ms.saturating_add(fresh_ms),
        });
        true
    }

    /// Forgets the product's value and moves its generation on, after a commit that wrote it.
    pub fn invalidate(&self, id: ProductId) {
        let mut slots = self.lock();
        let slot = slots.entry(id).or_insert(Slot {
            generation: 0,
            entry: None,
        });
        slot.generation = slot.generation.wrapping_add(1);
        slot.entry = None;
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<ProductId, Slot<V>>> {
        // Every change under this lock is one assignment or one collection call: a panic cannot
        // leave a slot half-written.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const P: ProductId = ProductId(1);

    /// A moment whose two clocks agree.
    fn at(ms: u64) -> Moment {
        Moment {
            wall: Timestamp(ms),
            monotonic_ms: ms,
        }
    }

    #[test]
    fn a_value_is_served_only_inside_its_window() {
        let cache = ProductCache::new();
        let generation = cache.generation(P);
        assert!(cache.store(P, generation, 5u32, at(100), Timestamp(200), 1_000));
        assert_eq!(cache.get(P, at(100)), Some(5));
        assert_eq!(cache.get(P, at(199)), Some(5));
        assert_eq!(cache.get(P, at(200)), None, "the deadline is exclusive");
        assert_eq!(cache.get(P, at(99)), None, "a clock stepped back misses");
    }

    #[test]
    fn a_value_goes_stale_on_the_monotonic_clock_whatever_the_wall_clock_does() {
        let cache = ProductCache::new();
        let generation = cache.generation(P);
        assert!(cache.store(P, generation, 5u32, at(100), Timestamp(10_000), 1_000));
        // The wall clock stepped back and caught up again: it reads as at the store, but 8 s
        // have passed.
        let later = Moment {
            wall: Timestamp(150),
            monotonic_ms: 8_100,
        };
        assert_eq!(cache.get(P, later), None);
        let within = Moment {
            wall: Timestamp(150),
            monotonic_ms: 1_099,
        };
        assert_eq!(cache.get(P, within), Some(5));
        let bound = Moment {
            wall: Timestamp(150),
            monotonic_ms: 1_100,
        };
        assert_eq!(cache.get(P, bound), None, "the bound is exclusive");
    }

    #[test]
    fn an_invalidation_between_read_and_store_drops_the_stale_value() {
        let cache = ProductCache::new();
        let generation = cache.generation(P);
        cache.invalidate(P);
        assert!(!cache.store(P, generation, 5u32, at(0), Timestamp(10), 10));
        assert_eq!(cache.get(P, at(1)), None);
        let generation = cache.generation(P);
        assert!(cache.store(P, generation, 4, at(0), Timestamp(10), 10));
        cache.invalidate(P);
        assert_eq!(cache.get(P, at(1)), None, "a write forgets the value");
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicU32, Ordering};
    use loom::thread;

    /// A writer commits (the database's value goes 1 -> 2) and then invalidates, while a reader
    /// takes the generation, reads the database and stores what it read. Whatever the
    /// interleaving, the cache never serves 1 once the writer is done.
    #[test]
    fn a_reader_never_stores_a_value_read_before_a_concurrent_invalidation() {
        loom::model(|| {
            let cache = Arc::new(ProductCache::new());
            let database = Arc::new(AtomicU32::new(1));
            let p = ProductId(1);
            let reader = {
                let (cache, database) = (cache.clone(), database.clone());
                thread::spawn(move || {
                    let generation = cache.generation(p);
                    let value = database.load(Ordering::SeqCst);
                    let read = Moment {
                        wall: Timestamp(0),
                        monotonic_ms: 0,
                    };
                    cache.store(p, generation, value, read, Timestamp(10), 10);
                })
            };
            database.store(2, Ordering::SeqCst);
            cache.invalidate(p);
            reader.join().unwrap();
            let served = cache.get(
                p,
                Moment {
                    wall: Timestamp(1),
                    monotonic_ms: 1,
                },
            );
            assert!(served.is_none() || served == Some(2), "served {served:?}");
        });
    }
}
