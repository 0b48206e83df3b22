//! Time and expiry: clocks that jump and differ, holds refused or granted at their deadline, the sweep cancelling overdue orders, a mass expiry folded at once and retired in chunks, records purged past their retention.

use super::*;

async fn a_clock_that_jumps_back_never_revives_a_released_hold(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 1).await;
    let hold = service.place_hold(p, Qty(1)).await.expect("granted").hold;
    clock.advance(TTL_MS as i64);
    assert_eq!(
        service.hold(hold.id).await.expect("exists").1,
        HoldView::Expired
    );
    let swept = service.sweep().await.expect("swept");
    assert_eq!((swept.folded.holds, swept.holds_retired), (1, 1));
    clock.set(T0);
    assert_eq!(
        rejected(service.place_order(hold.id).await),
        Rejection::HoldReleased { hold_id: hold.id }
    );
    let refund = service
        .apply_webhook(&paid("late", hold.id))
        .await
        .expect("recorded");
    assert_eq!(refund.record.result, WebhookResult::RefundRequired);
    assert_eq!(service.product(p).await.expect("exists").available, Qty(1));
    db.finish(&service).await;
}

async fn two_servers_with_skewed_clocks_agree_on_one_database(db: Db) {
    let ahead = ManualClock::new(Timestamp(T0.as_ms() + TTL_MS));
    let behind = ManualClock::new(T0);
    let fast = db.service(&ahead).await;
    let slow = db.service(&behind).await;
    let p = product(&slow, 2).await;
    let old = slow.place_hold(p, Qty(2)).await.expect("granted").hold;
    // The fast server sees the hold expired: granting a new hold folds its bucket first.
    let new = fast.place_hold(p, Qty(2)).await.expect("granted");
    assert_eq!(new.folded, Folded { holds: 1, units: 2 });
    // The slow server's clock still thinks the old hold is young, but the product decides no
    // earlier than what it folded: the old hold has expired for good.
    assert_eq!(
        rejected(slow.place_order(old.id).await),
        Rejection::HoldExpired { hold_id: old.id }
    );
    assert_eq!(
        rejected(slow.place_hold(p, Qty(1)).await),
        Rejection::InsufficientStock {
            requested: Qty(1),
            available: Qty(0)
        }
    );
    let order = slow.place_order(new.hold.id).await.expect("ordered");
    assert!(order.created);
    assert_eq!(slow.product(p).await.expect("exists").product.stock, Qty(0));
    db.finish(&slow).await;
}

async fn a_refused_hold_leaves_expired_holds_as_they_were(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 2).await;
    let first = service.place_hold(p, Qty(2)).await.expect("granted").hold;
    clock.advance(TTL_MS as i64);
    rejected(service.place_hold(p, Qty(3)).await);
    let dump = service.dump().await.expect("dump");
    let state = dump
        .holds
        .iter()
        .find(|h| h.id == first.id)
        .map(|h| h.state);
    assert_eq!(state, Some(HoldState::Held), "a rejection changes nothing");
    let second = service.place_hold(p, Qty(2)).await.expect("granted");
    assert_eq!(second.folded, Folded { holds: 1, units: 2 });
    db.finish(&service).await;
}

/// Reads and grants agree at and around a hold's exact deadline: one instant before it the
/// hold's units are held, at it they are free. Each read is asked of the database (the cache is
/// off) and of the cache, which may not serve a value past the deadline.
async fn reads_and_grants_agree_at_a_holds_exact_deadline(db: Db) {
    let mut last = None;
    for cache_staleness_ms in [0, CACHE_STALENESS_MS_DEFAULT] {
        let clock = ManualClock::new(T0);
        let config = Config {
            cache_staleness_ms,
            ..Config::default()
        };
        let service = db.service_with(&clock, config).await;
        let p = product(&service, 5).await;
        let hold = service.place_hold(p, Qty(2)).await.expect("granted").hold;
        let view = async |service: &TestService| {
            let read = service.product(p).await.expect("the product");
            let (_, state) = service.hold(hold.id).await.expect("the hold");
            (read.available, state)
        };
        // Read once before the deadline, so that a cached value exists to be wrongly kept.
        assert_eq!(view(&service).await, (Qty(3), HoldView::Held));
        clock.set(Timestamp(hold.expires_at.as_ms().saturating_sub(1)));
        assert_eq!(
            view(&service).await,
            (Qty(3), HoldView::Held),
            "one ms before"
        );
        rejected(service.place_hold(p, Qty(4)).await);
        clock.set(hold.expires_at);
        assert_eq!(
            view(&service).await,
            (Qty(5), HoldView::Expired),
            "at the deadline the units are free (cache {cache_staleness_ms} ms)"
        );
        // ... and a grant agrees: all five.
        let placed = service
            .place_hold(p, Qty(5))
            .await
            .expect("granted at the deadline");
        assert_eq!(placed.folded, Folded { holds: 1, units: 2 });
        assert_eq!(view(&service).await.0, Qty(0));
        last = Some(service);
    }
    db.finish(&last.expect("two rounds")).await;
}

async fn the_sweep_cancels_overdue_orders_and_returns_their_units_once(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 4).await;
    let hold = service.place_hold(p, Qty(3)).await.expect("granted").hold;
    let order = service.place_order(hold.id).await.expect("ordered").order;
    let expiring = service.place_hold(p, Qty(1)).await.expect("granted").hold;
    assert_eq!(service.product(p).await.expect("exists").available, Qty(0));
    clock.advance(WINDOW_MS as i64);
    let report = service.sweep().await.expect("swept");
    assert_eq!((report.holds_retired, report.orders_cancelled), (1, 1));
    assert_eq!(
        service.sweep().await.expect("swept again"),
        Default::default()
    );
    assert_eq!(
        service.order(order.id).await.expect("exists").status,
        OrderStatus::Cancelled
    );
    let (released, _) = service.hold(expiring.id).await.expect("exists");
    assert_eq!(released.state, HoldState::Released(ReleaseReason::Expired));
    assert_eq!(service.product(p).await.expect("exists").available, Qty(4));
    let late = service
        .apply_webhook(&paid("late", hold.id))
        .await
        .expect("recorded");
    assert_eq!(late.record.result, WebhookResult::RefundRequired);
    assert_eq!(
        service.product(p).await.expect("exists").product.stock,
        Qty(4)
    );
    db.finish(&service).await;
}

/// A mass expiry: far more holds expire together than one statement may name (65,535
/// placeholders on MySQL, 32,766 on SQLite). A read counts their one due bucket; the first grant
/// after their deadline folds it, writing no hold row; the sweeper retires the rows a chunk per
/// product and pass, each transaction within its budget, and the units stay available throughout.
async fn a_mass_expiry_is_folded_at_once_and_retired_in_chunks(db: Db) {
    const EXPIRED: u32 = 70_000;
    const CHUNK: u32 = 10_000;
    let clock = ManualClock::new(T0);
    let config = Config {
        sweep_chunk: CHUNK,
        ..Config::default()
    };
    let service = db.service_with(&clock, config).await;
    let p = product(&service, EXPIRED + 5).await;
    let (created, expires) = (T0.as_ms(), T0.as_ms() + 1_000);
    let numbers = if db.url.starts_with("sqlite:") {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {EXPIRED}) \
             SELECT i FROM n"
        )
    } else {
        format!("SELECT seq FROM seq_1_to_{EXPIRED}")
    };
    db.execute(&format!(
        "INSERT INTO holds (product_id, qty, created_at, expires_at, state) \
         SELECT {}, 1, {created}, {expires}, 'held' FROM ({numbers}) AS numbers",
        p.0
    ))
    .await;
    db.execute(&format!(
        "INSERT INTO expiry_buckets (product_id, expires_at, units, holds) \
         VALUES ({}, {expires}, {EXPIRED}, {EXPIRED})",
        p.0
    ))
    .await;
    db.execute(&format!(
        "UPDATE products SET units_held = {EXPIRED} WHERE id = {}",
        p.0
    ))
    .await;
    assert_eq!(service.product(p).await.expect("exists").available, Qty(5));
    clock.advance(1_000);
    let due = service.product(p).await.expect("exists");
    assert_eq!(
        due.available,
        Qty(EXPIRED + 5),
        "a read counts the due bucket"
    );
    let placed = service.place_hold(p, Qty(1)).await.expect("granted");
    let all = u64::from(EXPIRED);
    assert_eq!(
        placed.folded,
        Folded {
            holds: all,
            units: all
        }
    );
    let folded = service.product(p).await.expect("exists").product;
    assert_eq!(
        (folded.units_held, folded.holds_to_retire),
        (Qty(1), EXPIRED),
        "the grant wrote no hold row: every expired one waits to be retired"
    );
    let pass = service.sweep().await.expect("swept");
    assert_eq!(
        pass.holds_retired, CHUNK as usize,
        "one chunk per product and pass"
    );
    let rest = service.sweep_all().await.expect("swept");
    assert_eq!(rest.holds_retired, (EXPIRED - CHUNK) as usize);
    let after = service.product(p).await.expect("exists");
    assert_eq!(
        (after.product.holds_to_retire, after.available),
        (0, Qty(EXPIRED + 4))
    );
    db.finish(&service).await;
}

/// The sweeper purges records older than their retention, each kind by its own, in transactions
/// of at most `PURGE_BATCH` until none is left; a key whose record is gone is a new request.
async fn the_sweep_purges_records_past_their_retention_batch_after_batch(db: Db) {
    let clock = ManualClock::new(T0);
    let config = Config {
        request_key_retention_ms: 10_000,
        webhook_retention_ms: 20_000,
        ..Config::default()
    };
    let service = db.service_with(&clock, config).await;
    let p = product(&service, 5).await;
    let k = key("hold-key");
    let first = service
        .place_hold_keyed(Some(&k), p, Qty(1))
        .await
        .expect("granted");
    // More webhook records than one purge transaction deletes (unmatched: no such holds).
    let webhooks = PURGE_BATCH as u64 + 20;
    for i in 0..webhooks {
        let payload = paid(&format!("evt_{i}"), HoldId(1_000 + i));
        service.apply_webhook(&payload).await.expect("recorded");
    }
    // A record is purged once it is older than its retention, not at it.
    clock.advance(10_000);
    assert_eq!(service.sweep().await.expect("swept").records_purged, 0);
    clock.advance(1);
    let report = service.sweep().await.expect("swept");
    assert_eq!(report.records_purged, 1, "the request key only");
    let again = service
        .place_hold_keyed(Some(&k), p, Qty(1))
        .await
        .expect("new");
    assert!(!again.replayed && again.value.hold.id != first.value.hold.id);
    clock.advance(10_000);
    let report = service.sweep().await.expect("swept");
    assert_eq!(
        report.records_purged, webhooks,
        "every webhook, the new key not yet"
    );
    let dump = service.dump().await.expect("dump");
    assert!(dump.webhooks.is_empty());
    let keys: Vec<_> = dump.request_keys.iter().map(|r| r.resource_id).collect();
    assert_eq!(keys, vec![again.value.hold.id.0]);
    db.finish(&service).await;
}

on_both_databases!(
    a_clock_that_jumps_back_never_revives_a_released_hold,
    two_servers_with_skewed_clocks_agree_on_one_database,
    a_refused_hold_leaves_expired_holds_as_they_were,
    reads_and_grants_agree_at_a_holds_exact_deadline,
    the_sweep_cancels_overdue_orders_and_returns_their_units_once,
    a_mass_expiry_is_folded_at_once_and_retired_in_chunks,
    the_sweep_purges_records_past_their_retention_batch_after_batch,
);
