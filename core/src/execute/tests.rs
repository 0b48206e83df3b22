use std::borrow::Cow;

use super::*;
use crate::ids::Cents;
use crate::plan::{Load, Loaded, Plan};
use crate::rows::hold::{HOLD_TTL_MS_DEFAULT, HoldGrant, ReleaseReason};
use crate::rows::order::{OrderStatus, Settlement};
use crate::rows::payment::PaymentStatus;
use crate::rows::product::DEMO_PRODUCTS;
use crate::writes::Inserted;
use crate::{Ledger, pending_hold, pending_order, pending_product};

const NOW: Timestamp = Timestamp(10_000);

fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey::parse(k).unwrap()
}

fn product(id: u64, stock: u32, units_held: u32) -> Product {
    Product {
        id: ProductId(id),
        name: "p".into(),
        price_cents: Cents(100),
        stock: Qty(stock),
        units_held: Qty(units_held),
        units_received: u64::from(stock),
        expired_through: Timestamp(0),
        holds_to_retire: 0,
        open_bucket: Default::default(),
    }
}

/// The bucket of `holds` (of one product, all with one deadline), as a storage keeps it.
fn bucket_of(holds: &[Hold]) -> ExpiryBucket {
    ExpiryBucket {
        product_id: holds[0].product_id,
        expires_at: holds[0].expires_at,
        units: Qty(holds.iter().map(|h| h.qty.0).sum()),
        holds: holds.len() as u32,
    }
}

fn held(id: u64, product_id: u64, expires_at: u64) -> Hold {
    let grant = HoldGrant {
        qty: Qty(1),
        created_at: Timestamp(0),
        expires_at: Timestamp(expires_at),
    };
    grant.with_id(HoldId(id), ProductId(product_id))
}

fn hold_request(product_id: u64, qty: u32) -> Command {
    Command::PlaceHold {
        product_id: ProductId(product_id),
        qty: Qty(qty),
        ttl_ms: HOLD_TTL_MS_DEFAULT,
        key: None,
    }
}

fn order_request(hold_id: u64) -> Command {
    Command::PlaceOrder {
        hold_id: HoldId(hold_id),
        payment_window_ms: 60_000,
        key: None,
    }
}

fn webhook(k: &str, hold_id: u64, status: PaymentStatus) -> Command {
    Command::ApplyWebhook(WebhookPayload {
        key: key(k),
        hold_id: HoldId(hold_id),
        status,
    })
}

/// The rows `commands`' plan loads from a store of `products` and `holds`, one bucket per held
/// hold (no orders or records).
fn rows_of(products: &[Product], holds: &[Hold], commands: &[Command]) -> Rows<'static> {
    let plan = Plan::new(commands);
    let mut rows = Rows::default();
    let hold = |id: &HoldId| holds.iter().find(|h| h.id == *id).copied();
    while let Some(load) = plan.next(&rows) {
        let loaded = match &load {
            Load::FirstProduct => {
                Loaded::Products(products.iter().take(1).cloned().map(Cow::Owned).collect())
            }
            Load::RequestKeys(_) => Loaded::RequestKeys(vec![]),
            Load::FindHolds(ids) => Loaded::Holds(ids.iter().filter_map(hold).collect()),
            Load::Holds(ids) => Loaded::Holds(ids.iter().filter_map(|(_, id)| hold(id)).collect()),
            Load::Products(ids) => Loaded::Products(
                products
                    .iter()
                    .filter(|p| ids.contains(&p.id))
                    .cloned()
                    .map(Cow::Owned)
                    .collect(),
            ),
            Load::DueBuckets(ids) => Loaded::Buckets(
                holds
                    .iter()
                    .filter(|h| ids.contains(&h.product_id) && h.is_expired(NOW))
                    .map(|h| bucket_of(std::slice::from_ref(h)))
                    .collect(),
            ),
            Load::Orders(_) => Loaded::Orders(vec![]),
            Load::Webhooks(_) => Loaded::Webhooks(vec![]),
        };
        rows.put(load, loaded);
    }
    rows
}

#[test]
fn a_batch_over_two_products_grants_each_in_arrival_order_and_folds_due_buckets_once() {
    let products = [product(1, 3, 1), product(2, 1, 0)];
    let holds = [held(7, 1, 5_000)];
    let commands = [
        hold_request(1, 2),
        hold_request(2, 1),
        hold_request(1, 1),
        hold_request(2, 1),
        hold_request(1, 1),
    ];
    let executed = execute(&rows_of(&products, &holds, &commands), NOW, &commands);
    let granted: Vec<_> = executed
        .answers
        .iter()
        .map(|a| match a {
            Ok(Outcome::HoldPlaced { hold, folded, .. }) => Ok((hold.id, *folded)),
            Ok(other) => panic!("{other:?}"),
            Err(refusal) => Err(refusal.clone()),
        })
        .collect();
    let short = |available| {
        Err(Refusal::Rejected(Rejection::InsufficientStock {
            requested: Qty(1),
            available: Qty(available),
        }))
    };
    assert_eq!(
        granted,
        [
            Ok((pending_hold(0), Folded { holds: 1, units: 1 })),
            Ok((pending_hold(1), Folded::default())),
            Ok((pending_hold(2), Folded::default())),
            short(0),
            short(0),
        ]
    );
    let writes = &executed.writes;
    assert_eq!(
        writes.buckets_folded,
        [bucket_of(&holds)],
        "the due bucket is folded once"
    );
    assert!(writes.holds_released.is_empty(), "no hold row is written");
    assert_eq!(writes.holds_inserted.len(), 3);
    let counters = |id| writes.product(ProductId(id)).map(|c| c.units_held);
    assert_eq!((counters(1), counters(2)), (Some(Qty(3)), Some(Qty(1))));
}

#[test]
fn an_order_and_a_paid_webhook_on_one_hold_in_one_batch_pay_the_order_the_batch_creates() {
    let products = [product(1, 2, 1)];
    let holds = [held(4, 1, 60_000)];
    let commands = [
        order_request(4),
        webhook("evt", 4, PaymentStatus::Paid),
        order_request(4),
    ];
    let executed = execute(&rows_of(&products, &holds, &commands), NOW, &commands);
    let writes = &executed.writes;
    assert_eq!(writes.orders_inserted.len(), 1, "one order for the hold");
    assert_eq!(
        writes.orders_updated,
        [(pending_order(0), Settlement::Paid)]
    );
    assert_eq!(writes.webhooks[0].order_id, Some(pending_order(0)));
    let Ok(Outcome::OrderPlaced { order, created, .. }) = &executed.answers[2] else {
        panic!("{:?}", executed.answers[2]);
    };
    assert!(!created, "the second request finds the order");
    assert_eq!(order.status, OrderStatus::Paid, "as the webhook left it");
    // Once the storage gives the order its id, every answer and record names it.
    let inserted = Inserted {
        holds: vec![],
        orders: vec![OrderId(31)],
        products: vec![],
    };
    let resolved = executed.answers[1].clone().map(|o| o.resolve(&inserted));
    let Ok(Ok(Outcome::WebhookApplied { record, order, .. })) = resolved else {
        panic!("{resolved:?}");
    };
    assert_eq!(record.order_id, Some(OrderId(31)));
    assert_eq!(
        order.map(|o| (o.id, o.status)),
        Some((OrderId(31), OrderStatus::Paid))
    );
}

#[test]
fn a_refused_or_violated_command_writes_nothing_and_the_others_still_decide() {
    // Product 2's counter says one unit is held, but no held hold exists: corrupt, and only
    // the commands on product 2 see it.
    let corrupt = Product {
        stock: Qty(1),
        units_held: Qty(2),
        ..product(2, 1, 0)
    };
    let products = [product(1, 1, 0), corrupt];
    let commands = [
        hold_request(1, 5),
        hold_request(2, 1),
        hold_request(1, 1),
        hold_request(9, 1),
    ];
    let executed = execute(&rows_of(&products, &[], &commands), NOW, &commands);
    let answers = &executed.answers;
    assert!(matches!(
        answers[0],
        Err(Refusal::Rejected(Rejection::InsufficientStock { .. }))
    ));
    assert!(
        matches!(answers[1], Err(Refusal::Violated(_))),
        "{:?}",
        answers[1]
    );
    assert!(matches!(answers[2], Ok(Outcome::HoldPlaced { .. })));
    assert_eq!(
        answers[3],
        Err(Refusal::Rejected(Rejection::UnknownProduct {
            product_id: ProductId(9)
        }))
    );
    assert_eq!(
        executed.writes.products.len(),
        1,
        "only product 1 is written"
    );
    assert_eq!(executed.writes.holds_inserted.len(), 1);
}

#[test]
fn a_command_that_missed_a_hold_its_batch_inserted_is_found_stale() {
    let products = [product(1, 5, 0)];
    let commands = [hold_request(1, 1), order_request(5), hold_request(1, 1)];
    let executed = execute(&rows_of(&products, &[], &commands), NOW, &commands);
    assert!(matches!(
        executed.answers[1],
        Err(Refusal::Rejected(Rejection::UnknownHold { .. }))
    ));
    let inserted = |first: u64| Inserted {
        holds: vec![HoldId(first), HoldId(first + 1)],
        orders: vec![],
        products: vec![],
    };
    // The storage gave the first grant id 5, the very hold the order asked for.
    assert_eq!(executed.stale(&inserted(5)), Some(1));
    // Only the second grant got id 5: it came after the order, which rightly missed it.
    assert_eq!(executed.stale(&inserted(4)), None);
    assert_eq!(executed.stale(&inserted(6)), None);
}

#[test]
fn a_keyed_request_twice_in_one_batch_replays_the_first_answer() {
    let mut ledger = Ledger::new();
    let create = Command::CreateProduct {
        name: "p".into(),
        price_cents: Cents(100),
        stock: Qty(3),
    };
    ledger.apply(NOW, create).unwrap();
    let keyed = |qty| Command::PlaceHold {
        product_id: ProductId(1),
        qty: Qty(qty),
        ttl_ms: HOLD_TTL_MS_DEFAULT,
        key: Some(key("cart-1")),
    };
    let answers = ledger.apply_batch(NOW, &[keyed(2), keyed(2), keyed(1)]);
    let hold_of = |answer: &Result<Outcome, Rejection>| match answer {
        Ok(Outcome::HoldPlaced { hold, replayed, .. }) => (hold.id, *replayed),
        other => panic!("{other:?}"),
    };
    assert_eq!(hold_of(&answers[0]), (HoldId(1), false));
    assert_eq!(hold_of(&answers[1]), (HoldId(1), true));
    assert_eq!(
        answers[2],
        Err(Rejection::IdempotencyKeyReused {
            key: key("cart-1"),
            field: "qty"
        })
    );
    assert_eq!(ledger.holds().count(), 1);
    assert_eq!(ledger.request_keys().count(), 1);
}

#[test]
fn a_hold_released_before_a_grant_in_one_batch_is_counted_once() {
    // Hold 7 expired (its bucket is due, not folded) and hold 8 is live: stock 2, both held.
    let products = [product(1, 2, 2)];
    let holds = [held(7, 1, 5_000), held(8, 1, 60_000)];
    let commands = [
        webhook("evt", 7, PaymentStatus::Failed),
        hold_request(1, 1),
        hold_request(1, 1),
    ];
    let executed = execute(&rows_of(&products, &holds, &commands), NOW, &commands);
    let answers = &executed.answers;
    assert!(matches!(answers[1], Ok(Outcome::HoldPlaced { .. })));
    // Hold 7's unit is free once, whether its bucket or its release frees it: not twice.
    assert_eq!(
        answers[2],
        Err(Refusal::Rejected(Rejection::InsufficientStock {
            requested: Qty(1),
            available: Qty(0)
        }))
    );
    let writes = &executed.writes;
    assert_eq!(
        writes.holds_released,
        [(HoldId(7), ReleaseReason::PaymentFailed)]
    );
    let folded = writes.buckets_folded.first().map(|b| (b.units, b.holds));
    assert_eq!(
        folded,
        Some((Qty(0), 0)),
        "the bucket is folded as the release left it"
    );
    assert!(
        writes
            .buckets
            .iter()
            .all(|b| b.expires_at != Timestamp(5_000)),
        "no change is left to a folded bucket"
    );
}

#[test]
fn a_storage_that_loads_past_the_budget_gets_every_command_refused() {
    // One bucket per expired hold, far more than a product may have due: the old read of every
    // expired hold, which made a grant's work grow with history.
    let products = [product(1, 5_000, 1_000)];
    let holds: Vec<Hold> = (1..=1_000).map(|id| held(id, 1, 1_000 + id)).collect();
    let commands = [hold_request(1, 1)];
    let executed = execute(&rows_of(&products, &holds, &commands), NOW, &commands);
    assert!(
        matches!(
            &executed.answers[0],
            Err(Refusal::Violated(Violation::OverBudget {
                what: "loaded",
                ..
            }))
        ),
        "{:?}",
        executed.answers[0]
    );
    assert!(executed.writes.is_empty());
}

#[test]
fn a_seed_adds_the_demo_products_only_to_a_batch_that_finds_none() {
    let create = Command::CreateProduct {
        name: "after".into(),
        price_cents: Cents(100),
        stock: Qty(2),
    };
    let commands = [Command::SeedDemo, create.clone(), Command::SeedDemo];
    let executed = execute(&rows_of(&[], &[], &commands), NOW, &commands);
    let Ok(Outcome::Seeded(seeded)) = &executed.answers[0] else {
        panic!("{:?}", executed.answers[0]);
    };
    let ids: Vec<ProductId> = seeded.iter().map(|p| p.id).collect();
    let pending: Vec<ProductId> = (0..DEMO_PRODUCTS).map(pending_product).collect();
    assert_eq!(ids, pending, "named by pending ids, in order");
    let names: Vec<&str> = seeded.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names[0], "Product 1");
    assert_eq!(
        (seeded[0].price_cents, seeded[0].stock),
        (Cents(500), Qty(5))
    );
    let Ok(Outcome::ProductCreated(created)) = &executed.answers[1] else {
        panic!("{:?}", executed.answers[1]);
    };
    assert_eq!(
        created.id,
        pending_product(DEMO_PRODUCTS),
        "after the seed's"
    );
    assert_eq!(
        executed.answers[2],
        Ok(Outcome::Seeded(Vec::new())),
        "the batch's own products count"
    );
    assert_eq!(executed.writes.products_inserted.len(), DEMO_PRODUCTS + 1);
    // Stored ids replace the pending ones in the answers.
    let inserted = Inserted {
        products: (100..111).map(ProductId).collect(),
        ..Inserted::default()
    };
    let resolved = executed.answers[1].clone().map(|o| o.resolve(&inserted));
    assert!(
        matches!(&resolved, Ok(Ok(Outcome::ProductCreated(p))) if p.id == ProductId(110)),
        "{resolved:?}"
    );
    // A store with a product: nothing to seed.
    let commands = [Command::SeedDemo];
    let executed = execute(
        &rows_of(&[product(4, 1, 0)], &[], &commands),
        NOW,
        &commands,
    );
    assert_eq!(executed.answers, vec![Ok(Outcome::Seeded(Vec::new()))]);
    assert!(executed.writes.is_empty());
}
