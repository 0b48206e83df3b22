//! Properties over random histories built by random commands:
//! - applying any webhook N times equals applying it once;
//! - units are conserved: stock plus units sold equals the units received, counted from the
//!   commands themselves rather than from the ledger's own counter;
//! - a released hold can never be consumed, whatever `now` is passed later;
//! - deciding a batch of hold requests equals applying them one by one;
//! - every command's plan, over any history, takes its locks in the global order, ends, and
//!   leaves rows its decision can read without a violation.
//!
//! Cases: 1,000 per property by default; set `PROPTEST_CASES` for more.

// Test arithmetic runs on small generated numbers; overflow would panic the test.
#![allow(clippy::arithmetic_side_effects)]

mod model;

use flashsale_core::hold::{self, HOLD_TTL_MS_DEFAULT, HoldRequest};
use flashsale_core::{
    Cents, Command, HoldId, HoldState, IdempotencyKey, Ledger, Load, Loaded, LockOrder, Outcome,
    PaymentStatus, Plan, ProductId, Qty, Rejection, RowLock, Rows, Timestamp, WebhookPayload,
};
use std::borrow::Cow;

use proptest::prelude::*;

/// A command over a small id space (products, holds and orders share one id sequence), with a
/// time step that may go backwards.
fn step() -> impl Strategy<Value = (i64, Command)> {
    let key = (0u8..4).prop_map(|k| IdempotencyKey::parse(&format!("k{k}")).expect("valid"));
    let status = prop_oneof![Just(PaymentStatus::Paid), Just(PaymentStatus::Failed)];
    let command = prop_oneof![
        1 => (0u32..6).prop_map(|stock| Command::CreateProduct {
            name: "P".into(), price_cents: Cents(100), stock: Qty(stock),
        }),
        1 => (1u64..4, 0u32..3).prop_map(|(p, qty)| Command::Restock {
            product_id: ProductId(p), qty: Qty(qty),
        }),
        5 => (1u64..4, 1u32..3, 1_000u64..5_000).prop_map(|(p, qty, ttl_ms)| Command::PlaceHold {
            product_id: ProductId(p), qty: Qty(qty), ttl_ms,
        }),
        3 => (1u64..30, 1_000u64..8_000).prop_map(|(h, w)| Command::PlaceOrder {
            hold_id: HoldId(h), payment_window_ms: w,
        }),
        3 => (key, 1u64..30, status).prop_map(|(key, h, status)| {
            Command::ApplyWebhook(WebhookPayload { key, hold_id: HoldId(h), status })
        }),
        1 => Just(Command::Sweep),
    ];
    (prop_oneof![4 => 0i64..3_000, 1 => -6_000i64..0], command)
}

/// Runs the steps from an empty ledger; returns the ledger and the final `now`.
fn run(steps: &[(i64, Command)]) -> (Ledger, Timestamp) {
    let mut ledger = Ledger::new();
    let mut now = 0u64;
    for (dt, command) in steps {
        now = now.saturating_add_signed(*dt);
        let _ = ledger.apply(Timestamp(now), command.clone());
    }
    (ledger, Timestamp(now))
}

/// A plan of any kind, over the same small id space as [`step`].
fn plan() -> impl Strategy<Value = Plan> {
    let key = || (0u8..4).prop_map(|k| IdempotencyKey::parse(&format!("k{k}")).expect("valid"));
    let request = (1u32..3, proptest::option::of(key()))
        .prop_map(|(qty, key)| HoldRequest { qty: Qty(qty), key });
    prop_oneof![
        (1u64..5, proptest::collection::vec(request, 1..5))
            .prop_map(|(p, requests)| Plan::place_holds(ProductId(p), &requests)),
        (1u64..30, proptest::option::of(key())).prop_map(|(h, key)| Plan::PlaceOrder {
            hold_id: HoldId(h),
            key
        }),
        (1u64..30, key()).prop_map(|(h, key)| Plan::ApplyWebhook {
            hold_id: HoldId(h),
            key
        }),
        (1u64..5).prop_map(|p| Plan::Restock {
            product_id: ProductId(p)
        }),
        (1u64..5).prop_map(|p| Plan::SweepProduct {
            product_id: ProductId(p)
        }),
    ]
}

/// What a storage holding `ledger`'s rows finds for `load` at `now`, and the locks it takes:
/// the load's own, and each overdue order it locks.
fn find(ledger: &Ledger, load: Load, now: Timestamp) -> (Loaded<'_>, Vec<RowLock>) {
    let mut locks: Vec<RowLock> = load.lock().into_iter().collect();
    let loaded = match load {
        // The ledger keeps no request records; a storage may have one (it ends the plan).
        Load::RequestKey(key) => Loaded::RequestKey(key, None),
        Load::FindHold(id) => Loaded::FoundHold(ledger.hold(id).copied()),
        Load::Product(id) => Loaded::Product(ledger.product(id).map(Cow::Borrowed)),
        Load::Hold { id, .. } => Loaded::Hold(ledger.hold(id).copied()),
        Load::Order { id, .. } => Loaded::Order(ledger.order(id).copied()),
        Load::ExpiredHolds(id) => Loaded::ExpiredHolds(
            ledger
                .holds()
                .filter(|h| h.product_id == id && h.state == HoldState::Held && h.is_expired(now))
                .copied()
                .collect(),
        ),
        Load::OverdueOrders(id) => {
            let overdue: Vec<_> = ledger
                .orders()
                .filter(|o| o.product_id == id && o.is_overdue(now))
                .copied()
                .collect();
            locks.extend(overdue.iter().map(|o| RowLock::Order {
                product: id,
                id: o.id,
            }));
            Loaded::OverdueOrders(overdue)
        }
        Load::Webhook(key) => Loaded::Webhook(ledger.webhook(&key).map(Cow::Borrowed)),
    };
    (loaded, locks)
}

/// The rows of a ledger, for comparing two ledgers.
fn rows(ledger: &Ledger) -> String {
    let products: Vec<_> = ledger.products().collect();
    let holds: Vec<_> = ledger.holds().collect();
    let orders: Vec<_> = ledger.orders().collect();
    let webhooks: Vec<_> = ledger.webhooks().collect();
    format!("{products:?}\n{holds:?}\n{orders:?}\n{webhooks:?}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(model::cases()))]

    #[test]
    fn applying_a_webhook_n_times_equals_applying_it_once(
        history in proptest::collection::vec(step(), 0..40),
        hold in 1u64..30,
        paid in any::<bool>(),
        repeats in proptest::collection::vec(-5_000i64..5_000, 1..5),
    ) {
        let (mut once, now) = run(&history);
        let payload = WebhookPayload {
            key: IdempotencyKey::parse("replayed").expect("valid"),
            hold_id: HoldId(hold),
            status: if paid { PaymentStatus::Paid } else { PaymentStatus::Failed },
        };
        let first = once.apply(now, Command::ApplyWebhook(payload.clone()));
        let mut many = once.clone();
        for dt in repeats {
            let later = Timestamp(now.as_ms().saturating_add_signed(dt));
            let again = many.apply(later, Command::ApplyWebhook(payload.clone()));
            match (&first, &again) {
                (Ok(Outcome::WebhookApplied { record: a, .. }),
                 Ok(Outcome::WebhookApplied { record: b, replayed: true })) => {
                    prop_assert_eq!(a, b);
                }
                other => prop_assert!(false, "replay answered differently: {:?}", other),
            }
        }
        prop_assert_eq!(rows(&once), rows(&many));
    }

    #[test]
    fn units_are_conserved_against_the_commands_themselves(
        history in proptest::collection::vec(step(), 0..60),
    ) {
        let mut ledger = Ledger::new();
        let mut now = 0u64;
        let mut received: std::collections::BTreeMap<ProductId, u64> = Default::default();
        for (dt, command) in history {
            now = now.saturating_add_signed(dt);
            let restock_qty = match &command {
                Command::Restock { qty, .. } => u64::from(qty.0),
                _ => 0,
            };
            match ledger.apply(Timestamp(now), command) {
                Ok(Outcome::ProductCreated(p)) => {
                    received.insert(p.id, u64::from(p.stock.0));
                }
                Ok(Outcome::Restocked(p)) => {
                    *received.entry(p.id).or_insert(0) += restock_qty;
                }
                _ => {}
            }
            // Recompute from scratch: stock plus units in live orders is every unit received.
            for product in ledger.products() {
                let sold: u64 = ledger
                    .orders()
                    .filter(|o| o.product_id == product.id && o.status.holds_units())
                    .map(|o| u64::from(o.qty.0))
                    .sum();
                let held: u64 = ledger
                    .holds()
                    .filter(|h| h.product_id == product.id && h.state == HoldState::Held)
                    .map(|h| u64::from(h.qty.0))
                    .sum();
                let expected = received.get(&product.id).copied();
                prop_assert_eq!(Some(u64::from(product.stock.0) + sold), expected);
                prop_assert_eq!(Some(product.units_received), expected);
                prop_assert!(held <= u64::from(product.stock.0));
            }
        }
    }

    #[test]
    fn a_released_hold_can_never_be_consumed_whatever_now_is_passed_later(
        history in proptest::collection::vec(step(), 0..50),
        probes in proptest::collection::vec(prop_oneof![
            Just(0u64), 0u64..200_000, Just(u64::MAX)], 1..6),
    ) {
        let (mut ledger, _) = run(&history);
        let released: Vec<HoldId> = ledger
            .holds()
            .filter(|h| matches!(h.state, HoldState::Released(_)))
            .map(|h| h.id)
            .collect();
        for hold_id in released {
            for (i, &at) in probes.iter().enumerate() {
                let order = ledger.apply(
                    Timestamp(at),
                    Command::PlaceOrder { hold_id, payment_window_ms: 60_000 },
                );
                prop_assert_eq!(order, Err(Rejection::HoldReleased { hold_id }));
                let key = IdempotencyKey::parse(&format!("probe-{hold_id}-{i}")).expect("valid");
                let paid = WebhookPayload { key, hold_id, status: PaymentStatus::Paid };
                let _ = ledger.apply(Timestamp(at), Command::ApplyWebhook(paid));
                let state = ledger.hold(hold_id).map(|h| h.state);
                prop_assert!(matches!(state, Some(HoldState::Released(_))), "{:?}", state);
            }
        }
    }

    #[test]
    fn a_batch_of_hold_requests_decides_as_one_by_one(
        stock in 0u32..20,
        held_before in proptest::collection::vec(1u32..4, 0..4),
        requests in proptest::collection::vec(0u32..6, 0..12),
    ) {
        let mut ledger = Ledger::new();
        let now = Timestamp(1_000);
        let create = Command::CreateProduct {
            name: "P".into(), price_cents: Cents(1), stock: Qty(stock),
        };
        let Ok(Outcome::ProductCreated(product)) = ledger.apply(now, create) else {
            return Err(TestCaseError::fail("product not created"));
        };
        let hold = |qty| Command::PlaceHold {
            product_id: product.id, qty: Qty(qty), ttl_ms: HOLD_TTL_MS_DEFAULT,
        };
        for qty in held_before {
            let _ = ledger.apply(now, hold(qty));
        }
        let product_now = ledger.product(product.id).cloned().expect("exists");
        let requests: Vec<HoldRequest> =
            requests.into_iter().map(|qty| HoldRequest::unkeyed(Qty(qty))).collect();
        let batch = hold::place_holds(&product_now, &[], &requests, now, HOLD_TTL_MS_DEFAULT)
            .expect("the ledger's rows are sound");
        let mut ledger_batch = ledger.clone();
        ledger_batch.write(&batch.writes);
        for (request, decided) in requests.iter().zip(batch.decisions) {
            let one = ledger.apply(now, hold(request.qty.0));
            match (decided, one) {
                (Ok(grant), Ok(Outcome::HoldPlaced { hold, .. })) => {
                    prop_assert_eq!(grant.qty, hold.qty);
                    prop_assert_eq!(grant.expires_at, hold.expires_at);
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                other => prop_assert!(false, "batch and one-by-one differ: {:?}", other),
            }
        }
        // The batch's write-set leaves the same rows as the requests one by one.
        prop_assert_eq!(ledger_batch.product(product.id), ledger.product(product.id));
        let holds = |l: &Ledger| l.holds().copied().collect::<Vec<_>>();
        prop_assert_eq!(holds(&ledger_batch), holds(&ledger));
        prop_assert_eq!(ledger_batch.check_invariants(), Ok(()));
    }

    #[test]
    fn every_plan_locks_in_the_global_order_ends_and_reads_sound_rows(
        steps in proptest::collection::vec(step(), 0..40),
        plans in proptest::collection::vec(plan(), 1..6),
    ) {
        let (ledger, now) = run(&steps);
        for plan in plans {
            let mut rows = Rows::default();
            let mut taken = LockOrder::default();
            let mut loads = Vec::new();
            while let Some(load) = plan.next(&rows) {
                prop_assert!(loads.len() < 8, "{:?} does not end: {:?}", plan, loads);
                let (loaded, locks) = find(&ledger, load.clone(), now);
                for lock in locks {
                    prop_assert_eq!(taken.take(lock), Ok(()), "{:?} after {:?}", plan, loads);
                }
                rows.put(loaded);
                loads.push(load);
            }
            prop_assert_eq!(rows.hold_and_product().map(|_| ()), Ok(()));
            prop_assert_eq!(rows.order_of_hold().map(|_| ()), Ok(()));
        }
    }
}
