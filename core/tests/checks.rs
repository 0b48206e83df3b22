//! The checkers and the words, tested by value: the invariant checker finds each kind of broken
//! rows (it is what every other test relies on to see a bug), the guards of `Changes` refuse rows
//! not in the state they move, and every stored or API word round-trips. Written against the
//! mutants cargo-mutants left alive (docs/VERIFICATION.md).

use flashsale_core::rows::hold::{HOLD_TTL_MS_DEFAULT, HOLD_TTL_MS_MAX};
use flashsale_core::{
    Cents, Changes, ExpiryBucket, Hold, HoldId, HoldState, HoldView, IdempotencyKey, KeyedRequest,
    Ledger, Order, OrderId, OrderStatus, Product, ProductId, Qty, Rejection, ReleaseReason,
    Timestamp, Violation,
};

fn product(stock: u32, units_held: u32, received: u64) -> Product {
    Product {
        id: ProductId(1),
        name: "P".into(),
        price_cents: Cents(100),
        stock: Qty(stock),
        units_held: Qty(units_held),
        units_received: received,
        expired_through: Timestamp(0),
        holds_to_retire: 0,
        open_bucket: Default::default(),
    }
}

/// The expiry buckets of `holds` as a storage keeps them: one per product and deadline of the
/// held holds, whatever their products folded (a case that folds says so itself).
fn buckets_of(holds: &[Hold]) -> Vec<ExpiryBucket> {
    let mut buckets: Vec<ExpiryBucket> = Vec::new();
    for hold in holds.iter().filter(|h| h.state == HoldState::Held) {
        match (buckets.iter_mut()).find(|b| b.key() == (hold.product_id, hold.expires_at)) {
            Some(bucket) => {
                bucket.units = Qty(bucket.units.0.saturating_add(hold.qty.0));
                bucket.holds = bucket.holds.saturating_add(1);
            }
            None => buckets.push(ExpiryBucket {
                product_id: hold.product_id,
                expires_at: hold.expires_at,
                units: hold.qty,
                holds: 1,
            }),
        }
    }
    buckets
}

fn hold(id: u64, qty: u32, state: HoldState) -> Hold {
    Hold {
        id: HoldId(id),
        product_id: ProductId(1),
        qty: Qty(qty),
        created_at: Timestamp(0),
        expires_at: Timestamp(1_000),
        state,
    }
}

fn order(id: u64, hold_id: u64, qty: u32, status: OrderStatus) -> Order {
    Order {
        id: OrderId(id),
        hold_id: HoldId(hold_id),
        product_id: ProductId(1),
        qty: Qty(qty),
        total_cents: Cents(100 * u64::from(qty)),
        status,
        created_at: Timestamp(0),
        payment_due_at: Timestamp(5_000),
        cancel_reason: (status == OrderStatus::Cancelled)
            .then_some(flashsale_core::CancelReason::PaymentFailed),
    }
}

/// What a case breaks, and its products, holds and orders.
type Case = (&'static str, Vec<Product>, Vec<Hold>, Vec<Order>);

fn violation(products: Vec<Product>, holds: Vec<Hold>, orders: Vec<Order>) -> Option<Violation> {
    let buckets = buckets_of(&holds);
    violation_with(products, holds, orders, buckets)
}

fn violation_with(
    products: Vec<Product>,
    holds: Vec<Hold>,
    orders: Vec<Order>,
    buckets: Vec<ExpiryBucket>,
) -> Option<Violation> {
    Ledger::from_rows(products, holds, orders, [])
        .with_buckets(buckets)
        .check_invariants()
        .err()
}

#[test]
fn the_invariant_checker_finds_broken_expiry_buckets_and_retire_counters() {
    // Hold 1 expired for good (its deadline is the product's `expired_through`): its units left
    // `units_held`, and it waits to be retired. Hold 2 is live, in its bucket.
    let folded = Product {
        expired_through: Timestamp(1_000),
        holds_to_retire: 1,
        ..product(5, 1, 5)
    };
    let live = Hold {
        expires_at: Timestamp(2_000),
        ..hold(2, 1, HoldState::Held)
    };
    let holds = vec![hold(1, 2, HoldState::Held), live];
    let bucket = ExpiryBucket {
        product_id: ProductId(1),
        expires_at: Timestamp(2_000),
        units: Qty(1),
        holds: 1,
    };
    let check = |product: Product, buckets: Vec<ExpiryBucket>| {
        violation_with(vec![product], holds.clone(), vec![], buckets)
    };
    assert_eq!(check(folded.clone(), vec![bucket]), None, "sound");
    let mismatch = |at| {
        Some(Violation::ExpiryBucketMismatch {
            product_id: ProductId(1),
            expires_at: Timestamp(at),
        })
    };
    assert_eq!(
        check(folded.clone(), vec![]),
        mismatch(2_000),
        "a live deadline's bucket missing"
    );
    let short = ExpiryBucket {
        units: Qty(2),
        ..bucket
    };
    assert_eq!(
        check(folded.clone(), vec![short]),
        mismatch(2_000),
        "a bucket's units differ"
    );
    let stale = ExpiryBucket {
        expires_at: Timestamp(1_000),
        units: Qty(2),
        ..bucket
    };
    let both = vec![stale, bucket];
    assert_eq!(
        check(folded.clone(), both),
        mismatch(1_000),
        "a bucket already folded"
    );
    let forgotten = Product {
        holds_to_retire: 0,
        ..folded.clone()
    };
    assert_eq!(
        check(forgotten, vec![bucket]),
        Some(Violation::RetireCounterMismatch {
            product_id: ProductId(1),
            counter: 0,
            holds: 1
        })
    );
    let counted_twice = Product {
        units_held: Qty(3),
        ..folded
    };
    assert!(
        matches!(
            check(counted_twice, vec![bucket]),
            Some(Violation::HeldCounterMismatch { .. })
        ),
        "a hold expired for good still counted as held"
    );
}

#[test]
fn the_invariant_checker_finds_each_kind_of_broken_rows() {
    let consumed = HoldState::Consumed(OrderId(1));
    // Sound rows first: a held hold, and a consumed one with its order.
    let sound = violation(
        vec![product(3, 1, 5)],
        vec![hold(1, 2, consumed), hold(2, 1, HoldState::Held)],
        vec![order(1, 1, 2, OrderStatus::Paid)],
    );
    assert_eq!(sound, None);

    let cases: Vec<Case> = vec![
        (
            "held over stock",
            vec![product(1, 2, 1)],
            vec![hold(1, 2, HoldState::Held)],
            vec![],
        ),
        (
            "units_held disagrees",
            vec![product(5, 1, 5)],
            vec![hold(1, 2, HoldState::Held)],
            vec![],
        ),
        (
            "units not conserved",
            vec![product(5, 0, 5)],
            vec![hold(1, 2, consumed)],
            vec![order(1, 1, 2, OrderStatus::Paid)],
        ),
        (
            "an order without its hold",
            vec![product(3, 0, 5)],
            vec![],
            vec![order(1, 1, 2, OrderStatus::Paid)],
        ),
        (
            "an order whose hold is held",
            vec![product(3, 2, 5)],
            vec![hold(1, 2, HoldState::Held)],
            vec![order(1, 1, 2, OrderStatus::Paid)],
        ),
        (
            "two orders of one hold",
            vec![product(1, 0, 5)],
            vec![hold(1, 2, consumed)],
            vec![
                order(1, 1, 2, OrderStatus::Paid),
                order(2, 1, 2, OrderStatus::Paid),
            ],
        ),
        (
            "an order of another qty",
            vec![product(4, 0, 5)],
            vec![hold(1, 2, consumed)],
            vec![order(1, 1, 1, OrderStatus::Paid)],
        ),
        (
            "a consumed hold without its order",
            vec![product(5, 0, 5)],
            vec![hold(1, 2, consumed)],
            vec![],
        ),
    ];
    for (what, products, holds, orders) in cases {
        assert!(violation(products, holds, orders).is_some(), "{what}");
    }
    // An order priced otherwise than qty times the price.
    let mut mispriced = order(1, 1, 2, OrderStatus::Paid);
    mispriced.total_cents = Cents(150);
    let found = violation(
        vec![product(3, 0, 5)],
        vec![hold(1, 2, consumed)],
        vec![mispriced],
    );
    assert_eq!(
        found,
        Some(Violation::OrderDisagreesWithHold {
            order_id: OrderId(1)
        })
    );
    // An order of another product than its hold's.
    let mut elsewhere = order(1, 1, 2, OrderStatus::Paid);
    elsewhere.product_id = ProductId(2);
    let mut second = product(5, 0, 5);
    second.id = ProductId(2);
    let found = violation(
        vec![product(5, 0, 5), second],
        vec![hold(1, 2, consumed)],
        vec![elsewhere],
    );
    assert!(found.is_some(), "an order of another product");
}

#[test]
fn changes_refuse_rows_not_in_the_state_they_move() {
    let p = product(5, 2, 5);
    let paid = order(1, 1, 2, OrderStatus::Paid);
    let cancelled = order(1, 1, 2, OrderStatus::Cancelled);
    for settled in [paid, cancelled] {
        let mut changes = Changes::on(&p);
        let refused = changes.cancel(&settled, flashsale_core::CancelReason::PaymentFailed);
        assert_eq!(
            refused,
            Err(Violation::TerminalOrderChanged {
                order_id: OrderId(1)
            })
        );
        assert_eq!(
            changes.pay(&settled),
            Err(Violation::TerminalOrderChanged {
                order_id: OrderId(1)
            })
        );
    }
    let mut other_product = order(1, 1, 2, OrderStatus::PrePayment);
    other_product.product_id = ProductId(9);
    let mut changes = Changes::on(&p);
    assert!(
        changes.pay(&other_product).is_err(),
        "an order of another product"
    );
    // A hold that is not held, or of another product, cannot be released.
    let mut changes = Changes::on(&p);
    let released = hold(1, 2, HoldState::Released(ReleaseReason::Expired));
    assert_eq!(
        changes.release(&released, ReleaseReason::Expired),
        Err(Violation::HoldNotHeld { hold_id: HoldId(1) })
    );
    let mut foreign = hold(2, 2, HoldState::Held);
    foreign.product_id = ProductId(9);
    assert_eq!(
        changes.release(&foreign, ReleaseReason::Expired),
        Err(Violation::HoldNotHeld { hold_id: HoldId(2) })
    );
    assert!(changes.finish().is_empty(), "refused changes write nothing");
    let mut changes = Changes::on(&p);
    changes
        .release(&hold(3, 2, HoldState::Held), ReleaseReason::Expired)
        .expect("a held hold of the product");
    assert!(!changes.finish().is_empty());
}

#[test]
fn the_hold_ttl_is_two_minutes_by_default_and_a_day_at_most() {
    assert_eq!(HOLD_TTL_MS_DEFAULT, 120_000);
    assert_eq!(HOLD_TTL_MS_MAX, 86_400_000);
}

#[test]
fn every_word_round_trips_and_says_what_it_is() {
    for (reason, word) in [
        (ReleaseReason::Expired, "expired"),
        (ReleaseReason::PaymentFailed, "payment_failed"),
    ] {
        assert_eq!(reason.as_str(), word);
        assert_eq!(ReleaseReason::parse(word), Some(reason));
    }
    assert_eq!(ReleaseReason::parse("Expired"), None);
    let views = [
        (HoldView::Held, "held"),
        (HoldView::Expired, "expired"),
        (HoldView::Consumed, "consumed"),
        (HoldView::Released, "released"),
    ];
    for (view, word) in views {
        assert_eq!(view.as_str(), word);
    }
    let key = IdempotencyKey::parse("evt_1").expect("valid");
    assert_eq!(
        (key.as_str(), key.to_string()),
        ("evt_1", "evt_1".to_owned())
    );
    assert_eq!(Qty(7).to_string(), "7");
    assert_eq!(Qty(3).saturating_sub(Qty(1)), Qty(2));
    assert_eq!(Qty(1).saturating_sub(Qty(3)), Qty(0));
    assert_eq!(Timestamp(1_234).as_ms(), 1_234);
    assert!(!Timestamp(1_234).to_string().is_empty());
    let codes = [
        (Rejection::InvalidQty { qty: Qty(0) }, "validation_failed"),
        (
            Rejection::UnknownProduct {
                product_id: ProductId(1),
            },
            "unknown_product",
        ),
        (
            Rejection::UnknownHold { hold_id: HoldId(1) },
            "unknown_hold",
        ),
        (
            Rejection::HoldReleased { hold_id: HoldId(1) },
            "hold_released",
        ),
        (
            Rejection::HoldExpired { hold_id: HoldId(1) },
            "hold_expired",
        ),
        (
            Rejection::InsufficientStock {
                requested: Qty(2),
                available: Qty(1),
            },
            "insufficient_stock",
        ),
    ];
    for (rejection, code) in codes {
        assert_eq!(rejection.code(), code);
        assert!(!rejection.to_string().is_empty(), "{code} says why");
    }
    let text = Rejection::InsufficientStock {
        requested: Qty(2),
        available: Qty(1),
    }
    .to_string();
    assert!(text.contains('2') && text.contains('1'), "{text}");
    let violation = Violation::HoldNotHeld { hold_id: HoldId(4) }.to_string();
    assert!(violation.contains('4'), "{violation}");
    let requests = [
        KeyedRequest::PlaceHold {
            product_id: ProductId(1),
            qty: Qty(1),
        },
        KeyedRequest::PlaceOrder { hold_id: HoldId(1) },
    ];
    let names: Vec<&str> = requests.iter().map(KeyedRequest::name).collect();
    assert_eq!(names, ["place_hold", "place_order"]);
}

#[test]
fn only_the_products_own_held_holds_expired_for_good_are_retired() {
    let p = Product {
        expired_through: Timestamp(1_000),
        holds_to_retire: 1,
        ..product(5, 0, 5)
    };
    let mut foreign = hold(1, 2, HoldState::Held);
    foreign.product_id = ProductId(9);
    let released = hold(2, 2, HoldState::Released(ReleaseReason::Expired));
    let young = Hold {
        expires_at: Timestamp(2_000),
        ..hold(3, 2, HoldState::Held)
    };
    for (what, wrong) in [
        ("another product's", foreign),
        ("released", released),
        ("not expired for good", young),
    ] {
        let mut changes = Changes::on(&p);
        let refused = flashsale_core::hold::retire_expired(&mut changes, &[wrong]);
        assert_eq!(
            refused,
            Err(Violation::HoldNotHeld { hold_id: wrong.id }),
            "{what}"
        );
    }
    let mut changes = Changes::on(&p);
    flashsale_core::hold::retire_expired(&mut changes, &[hold(4, 2, HoldState::Held)])
        .expect("the product's own hold expired for good");
    let writes = changes.finish();
    assert_eq!(
        writes.holds_retired,
        vec![(HoldId(4), ReleaseReason::Expired)]
    );
    assert!(writes.holds_released.is_empty() && writes.buckets.is_empty());
    let counters = writes
        .product(ProductId(1))
        .map(|c| (c.units_held, c.holds_to_retire));
    assert_eq!(counters, Some((Qty(0), 0)), "only the retire counter moves");
}

#[test]
fn an_inserted_order_reads_back_with_its_id() {
    let p = product(5, 2, 5);
    let decided = flashsale_core::order::place_order(
        &hold(1, 2, HoldState::Held),
        &p,
        Timestamp(10),
        1_000,
        None,
    )
    .expect("a held hold becomes an order");
    let inserted = flashsale_core::Inserted {
        holds: Vec::new(),
        orders: vec![OrderId(7)],
        products: Vec::new(),
    };
    let new = decided.writes.orders_inserted[0];
    let row = inserted
        .order_row(new.with_id(flashsale_core::pending_order(0)))
        .expect("resolved");
    assert_eq!(
        (row.id, row.hold_id, row.qty),
        (OrderId(7), HoldId(1), Qty(2))
    );
}

#[test]
fn the_invariant_checker_finds_a_webhook_that_disagrees_with_its_order() {
    use flashsale_core::{Fingerprint, PaymentStatus, WebhookRecord, WebhookResult};
    let record = |status, result| WebhookRecord {
        key: IdempotencyKey::parse("evt").expect("valid"),
        hold_id: HoldId(1),
        status,
        fingerprint: Fingerprint::of(HoldId(1), status),
        result,
        order_id: Some(OrderId(1)),
        received_at: Timestamp(1),
    };
    let rows = |status, result, order_status| {
        Ledger::from_rows(
            [product(3, 0, 5)],
            [hold(1, 2, HoldState::Consumed(OrderId(1)))],
            [order(1, 1, 2, order_status)],
            [record(status, result)],
        )
        .check_invariants()
    };
    assert_eq!(
        rows(
            PaymentStatus::Paid,
            WebhookResult::Applied,
            OrderStatus::Paid
        ),
        Ok(())
    );
    // A paid webhook applied, and the order not paid: a payment dropped.
    assert!(
        rows(
            PaymentStatus::Paid,
            WebhookResult::Applied,
            OrderStatus::PrePayment
        )
        .is_err()
    );
    // A failed webhook in conflict with an order that is not paid.
    assert!(
        rows(
            PaymentStatus::Failed,
            WebhookResult::Conflict,
            OrderStatus::PrePayment
        )
        .is_err()
    );
}
