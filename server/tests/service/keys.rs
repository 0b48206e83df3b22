//! Keys: webhook keys applied once, client idempotency keys replayed, one key on two servers, a key in flight refused at once, ids past what the storage keeps.

use super::*;

async fn webhooks_apply_once_and_answer_replays_from_the_record(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 3).await;
    let hold = service.place_hold(p, Qty(2)).await.expect("granted").hold;
    let early = service
        .apply_webhook(&paid("evt_1", hold.id))
        .await
        .expect("applied");
    assert_eq!(early.record.result, WebhookResult::Applied);
    let order = early.order.expect("created paid");
    assert_eq!(order.status, OrderStatus::Paid);
    let again = service
        .apply_webhook(&paid("evt_1", hold.id))
        .await
        .expect("replayed");
    assert!(again.replayed);
    assert_eq!(again.record, early.record);
    let placed = service.place_order(hold.id).await.expect("answered");
    assert_eq!((placed.order.id, placed.created), (order.id, false));
    let reused = WebhookPayload {
        status: PaymentStatus::Failed,
        ..paid("evt_1", hold.id)
    };
    assert_eq!(
        rejected(service.apply_webhook(&reused).await),
        Rejection::IdempotencyKeyReused {
            key: key("evt_1"),
            field: "status"
        }
    );
    let conflict = WebhookPayload {
        key: key("evt_2"),
        ..reused
    };
    let answer = service.apply_webhook(&conflict).await.expect("recorded");
    assert_eq!(answer.record.result, WebhookResult::Conflict);
    assert_eq!(
        service.product(p).await.expect("exists").product.stock,
        Qty(1)
    );
    db.finish(&service).await;
}

async fn concurrent_duplicate_webhooks_apply_once(db: Db) {
    let clock = ManualClock::new(T0);
    let service = Arc::new(db.service(&clock).await);
    let p = product(&service, 1).await;
    let hold = service.place_hold(p, Qty(1)).await.expect("granted").hold;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let service = service.clone();
            // Half the deliveries reuse one key; the others each bring their own.
            let k = if i % 2 == 0 {
                "dup".to_owned()
            } else {
                format!("other_{i}")
            };
            tokio::spawn(async move { service.apply_webhook(&paid(&k, hold.id)).await })
        })
        .collect();
    let mut applied = 0;
    for task in tasks {
        let answer = task.await.expect("task ran").expect("answered");
        if answer.record.result == WebhookResult::Applied && !answer.replayed {
            applied += 1;
        }
    }
    assert_eq!(applied, 1);
    assert_eq!(
        service.product(p).await.expect("exists").product.stock,
        Qty(0)
    );
    db.finish(&service).await;
}

async fn a_keyed_hold_is_placed_once_and_replayed(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 5).await;
    let k = key("hold-1");
    let first = service.place_hold_keyed(Some(&k), p, Qty(2)).await;
    let first = first.expect("granted");
    assert!(!first.replayed);
    clock.advance(1_000);
    let again = service.place_hold_keyed(Some(&k), p, Qty(2)).await;
    let again = again.expect("replayed");
    assert!(again.replayed);
    assert_eq!(
        again.value.hold, first.value.hold,
        "the same hold, as stored"
    );
    assert_eq!(
        service.product(p).await.expect("exists").available,
        Qty(3),
        "the replay held nothing more"
    );
    let other_qty = service.place_hold_keyed(Some(&k), p, Qty(3)).await;
    assert_eq!(
        rejected(other_qty),
        Rejection::IdempotencyKeyReused {
            key: k.clone(),
            field: "qty"
        }
    );
    let other_request = service
        .place_order_keyed(Some(&k), first.value.hold.id)
        .await;
    assert_eq!(
        rejected(other_request),
        Rejection::IdempotencyKeyReused {
            key: k.clone(),
            field: "request"
        }
    );
    let dump = service.dump().await.expect("dump");
    assert_eq!(dump.holds.len(), 1);
    assert!(
        dump.orders.is_empty(),
        "the refused order request changed nothing"
    );
    db.finish(&service).await;
}

async fn a_rejected_keyed_hold_leaves_the_key_unused(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 1).await;
    service.place_hold(p, Qty(1)).await.expect("granted");
    let k = key("hold-later");
    let refused = service.place_hold_keyed(Some(&k), p, Qty(1)).await;
    assert_eq!(rejected(refused), rejection_for(1));
    clock.advance(TTL_MS as i64);
    let granted = service.place_hold_keyed(Some(&k), p, Qty(1)).await;
    let granted = granted.expect("the stock came back");
    assert!(!granted.replayed, "the refusal stored nothing to replay");
    let replay = service.place_hold_keyed(Some(&k), p, Qty(1)).await;
    assert_eq!(replay.expect("replayed").value.hold, granted.value.hold);
    db.finish(&service).await;
}

async fn a_keyed_order_replays_its_first_answer(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 3).await;
    let hold = service.place_hold(p, Qty(1)).await.expect("granted").hold;
    let k = key("order-1");
    let first = service.place_order_keyed(Some(&k), hold.id).await;
    let first = first.expect("ordered");
    assert!(first.value.created && !first.replayed);
    service
        .apply_webhook(&paid("evt-1", hold.id))
        .await
        .expect("paid");
    let again = service.place_order_keyed(Some(&k), hold.id).await;
    let again = again.expect("replayed");
    assert!(
        again.replayed && again.value.created,
        "201 again, as first answered"
    );
    assert_eq!(again.value.order.id, first.value.order.id);
    assert_eq!(again.value.order.status, OrderStatus::Paid, "as it is now");
    // A new key for the same hold finds the order (200) and keeps that answer.
    let k2 = key("order-2");
    let found = service.place_order_keyed(Some(&k2), hold.id).await;
    let found = found.expect("found");
    assert!(!found.value.created && !found.replayed);
    let found_again = service.place_order_keyed(Some(&k2), hold.id).await;
    let found_again = found_again.expect("replayed");
    assert!(!found_again.value.created && found_again.replayed);
    let other = service
        .place_order_keyed(Some(&k), HoldId(hold.id.0 + 1))
        .await;
    assert_eq!(
        rejected(other),
        Rejection::IdempotencyKeyReused {
            key: k.clone(),
            field: "hold_id"
        }
    );
    assert_eq!(
        service.product(p).await.expect("exists").product.stock,
        Qty(2),
        "one order took one unit"
    );
    db.finish(&service).await;
}

async fn concurrent_requests_under_one_key_on_two_servers_place_one_hold(db: Db) {
    let clock = ManualClock::new(T0);
    let servers = [
        Arc::new(db.service(&clock).await),
        Arc::new(db.service(&clock).await),
    ];
    let p = product(&servers[0], 50).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let service = servers[i % 2].clone();
            tokio::spawn(async move {
                service
                    .place_hold_keyed(Some(&key("same")), p, Qty(1))
                    .await
            })
        })
        .collect();
    let mut holds = Vec::new();
    let mut in_flight = 0;
    for task in tasks {
        match task.await.expect("task ran") {
            Ok(keyed) => holds.push(keyed.value.hold.id),
            Err(ServiceError::KeyInFlight { .. }) => in_flight += 1,
            Err(other) => panic!("unexpected failure: {other}"),
        }
    }
    assert!(!holds.is_empty());
    assert!(
        holds.iter().all(|&id| id == holds[0]),
        "every answer names the one hold: {holds:?}"
    );
    assert_eq!(holds.len() + in_flight, 20);
    let dump = servers[0].dump().await.expect("dump");
    assert_eq!(dump.holds.len(), 1, "one key, one hold");
    db.finish(&servers[0]).await;
}

/// While a keyed request runs on a server (here: waiting on the product's lock), the same key on
/// the same server is answered `KeyInFlight` at once, without touching the database; once the
/// first has answered, the key replays its hold.
async fn a_key_in_flight_on_this_server_is_refused_at_once(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 5).await;
    let lock = Elsewhere::lock(&db, p).await;
    let k = key("k");
    let mut first = Box::pin(service.place_hold_keyed(Some(&k), p, Qty(1)));
    let waiting = tokio::time::timeout(std::time::Duration::from_millis(100), &mut first).await;
    assert!(waiting.is_err(), "the first request waits on the lock");
    // At once: a request that went to the database would wait on the lock too.
    let second = service.place_hold_keyed(Some(&k), p, Qty(1));
    match tokio::time::timeout(std::time::Duration::from_secs(2), second).await {
        Ok(Err(ServiceError::KeyInFlight { key: in_flight })) => assert_eq!(in_flight, k),
        other => panic!("expected the key in flight, got {other:?}"),
    }
    lock.release().await;
    let placed = first.await.expect("the first request granted");
    assert!(!placed.replayed);
    let again = service
        .place_hold_keyed(Some(&key("k")), p, Qty(1))
        .await
        .expect("replayed");
    assert_eq!(
        (again.value.hold.id, again.replayed),
        (placed.value.hold.id, true)
    );
    db.finish(&service).await;
}

/// Ids past what the storage keeps exactly (`ID_MAX`) are refused before they reach it: a
/// webhook for one is refused, not recorded (its record could not keep the id, so would not match
/// its own redelivery), while one for the largest storable id is recorded unmatched and replayed.
async fn ids_beyond_the_storage_are_refused_before_it(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let beyond = ID_MAX + 1;
    assert_eq!(
        rejected(
            service
                .apply_webhook(&paid("evt_beyond", HoldId(beyond)))
                .await
        ),
        Rejection::UnknownHold {
            hold_id: HoldId(beyond)
        }
    );
    assert_eq!(
        rejected(
            service
                .apply_webhook(&paid("evt_max", HoldId(u64::MAX)))
                .await
        ),
        Rejection::UnknownHold {
            hold_id: HoldId(u64::MAX)
        }
    );
    let largest = paid("evt_largest", HoldId(ID_MAX));
    let first = service.apply_webhook(&largest).await.expect("recorded");
    assert_eq!(
        (first.record.result, first.replayed),
        (WebhookResult::Unmatched, false)
    );
    let again = service.apply_webhook(&largest).await.expect("replayed");
    assert_eq!((again.record, again.replayed), (first.record, true));
    let keys: Vec<_> = service
        .dump()
        .await
        .expect("dump")
        .webhooks
        .into_iter()
        .map(|w| w.key)
        .collect();
    assert_eq!(keys, vec![key("evt_largest")]);
    for id in [beyond, u64::MAX] {
        assert_eq!(
            rejected(service.place_hold(ProductId(id), Qty(1)).await),
            Rejection::UnknownProduct {
                product_id: ProductId(id)
            }
        );
        assert_eq!(
            rejected(service.place_order(HoldId(id)).await),
            Rejection::UnknownHold {
                hold_id: HoldId(id)
            }
        );
        assert!(matches!(
            service.hold(HoldId(id)).await,
            Err(ServiceError::NotFound { what: "hold", .. })
        ));
        assert!(matches!(
            service.order(OrderId(id)).await,
            Err(ServiceError::NotFound { what: "order", .. })
        ));
        assert!(matches!(
            service.product(ProductId(id)).await,
            Err(ServiceError::NotFound { .. })
        ));
    }
    db.finish(&service).await;
}

on_both_databases!(
    webhooks_apply_once_and_answer_replays_from_the_record,
    concurrent_duplicate_webhooks_apply_once,
    a_keyed_hold_is_placed_once_and_replayed,
    a_rejected_keyed_hold_leaves_the_key_unused,
    a_keyed_order_replays_its_first_answer,
    concurrent_requests_under_one_key_on_two_servers_place_one_hold,
    ids_beyond_the_storage_are_refused_before_it,
    a_key_in_flight_on_this_server_is_refused_at_once,
);
