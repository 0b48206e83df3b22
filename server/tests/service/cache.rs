//! The availability cache: own writes seen at once, others within the staleness bound, whatever the wall clock does.

use super::*;

async fn the_cache_shows_own_writes_at_once_and_others_within_the_staleness_bound(db: Db) {
    let clock = ManualClock::new(T0);
    let here = db.service(&clock).await;
    let there = db.service(&clock).await;
    let p = product(&here, 5).await;
    let available = |s: &TestService| {
        let s = s.clone();
        async move { s.product(p).await.expect("exists").available }
    };
    assert_eq!(available(&here).await, Qty(5));
    assert_eq!(available(&there).await, Qty(5), "now cached on both");
    here.place_hold(p, Qty(2)).await.expect("granted");
    assert_eq!(available(&here).await, Qty(3), "its own write, at once");
    assert_eq!(
        available(&there).await,
        Qty(5),
        "another instance's write may be a second late"
    );
    clock.advance(i64::try_from(CACHE_STALENESS_MS_DEFAULT).expect("small"));
    assert_eq!(available(&there).await, Qty(3), "and no later");
    // Even with a staleness bound far beyond the TTL, an entry is never served past the next
    // hold deadline, when units come back by themselves.
    let patient = Config {
        cache_staleness_ms: 100 * TTL_MS,
        ..Config::default()
    };
    let patient = db.service_with(&clock, patient).await;
    assert_eq!(available(&patient).await, Qty(3));
    // The hold was granted at T0 and the clock reads T0 + the staleness bound.
    clock.set(Timestamp(T0.as_ms() + TTL_MS - 1));
    assert_eq!(
        available(&patient).await,
        Qty(3),
        "cached, or read again: still held"
    );
    clock.advance(1);
    assert_eq!(
        available(&patient).await,
        Qty(5),
        "the hold expired: its units are back"
    );
    // And a clock stepped back before the read misses rather than serving the future.
    here.place_hold(p, Qty(1)).await.expect("granted");
    assert_eq!(
        available(&patient).await,
        Qty(5),
        "cached before that write, by design"
    );
    clock.advance(-1);
    assert_eq!(available(&patient).await, Qty(4), "read again");
    db.finish(&here).await;
}

/// A wall clock that steps forward, then back, then catches up again reads as it did when an
/// entry was stored; the entry must still be gone once the staleness bound has passed on the
/// monotonic clock. (The simulator's reads found an entry served 8 s after it was stored.)
async fn a_cached_value_never_outlives_the_staleness_bound_whatever_the_wall_clock_does(db: Db) {
    let here_clock = ManualClock::new(T0);
    let there_clock = ManualClock::new(T0);
    let here = db.service(&here_clock).await;
    let there = db.service(&there_clock).await;
    let p = product(&here, 5).await;
    let step = 6_672;
    there_clock.advance(step);
    here_clock.advance(step);
    assert_eq!(there.product(p).await.expect("exists").available, Qty(5));
    here.place_hold(p, Qty(2)).await.expect("granted");
    // Back by more than the step, then forward again to 300 ms past the read: the wall clock
    // is inside the entry's window, but 8.2 s have passed.
    there_clock.advance(-7_931);
    there_clock.advance(7_931 + 300);
    assert_eq!(
        there.product(p).await.expect("exists").available,
        Qty(3),
        "an entry older than the staleness bound is read again"
    );
    db.finish(&here).await;
}

on_both_databases!(
    the_cache_shows_own_writes_at_once_and_others_within_the_staleness_bound,
    a_cached_value_never_outlives_the_staleness_bound_whatever_the_wall_clock_does,
);
