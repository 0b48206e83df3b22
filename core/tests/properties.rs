//! Properties over random histories built by random commands:
//! - applying any webhook N times equals applying it once;
//! - units are conserved: stock plus units sold equals the units received, counted from the
//!   commands themselves rather than from the ledger's own counter;
//! - a released hold can never be consumed, whatever `now` is passed later;
//! - deciding a batch of hold requests equals applying them one by one;
//! - executing a batch of mixed commands (holds, orders, webhooks, restocks, sweeps, keyed or
//!   not, on any products) answers and writes exactly as applying them one by one in its order;
//! - every batch's plan, over any history, takes its locks in the global order, ends, and
//!   leaves rows its decisions read without a violation.
//!
//! Cases: 1,000 per property by default; set `PROPTEST_CASES` for more.

// Test arithmetic runs on small generated numbers; overflow would panic the test.
#![allow(clippy::arithmetic_side_effects)]

mod model;

use flashsale_core::hold::{self, HoldRequest};
use flashsale_core::rows::hold::HOLD_TTL_MS_DEFAULT;
use flashsale_core::{
    Cents, Command, HoldId, HoldState, IdempotencyKey, Ledger, Load, Loaded, LockOrder, OrderId,
    Outcome, PaymentStatus, Plan, ProductId, Qty, Refusal, Rejection, RowLock, Rows, Timestamp,
    WebhookPayload, execute,
};
use std::borrow::Cow;

use proptest::prelude::*;

/// A command over a small id space (each kind has its own sequence from 1), with a time step
/// that may go backwards.
fn step() -> impl Strategy<Value = (i64, Command)> {
    let command = prop_oneof![
        1 => (0u32..6).prop_map(|stock| Command::CreateProduct {
            name: "P".into(), price_cents: Cents(100), stock: Qty(stock),
        }),
        10 => batched(),
        1 => Just(Command::Sweep),
    ];
    (prop_oneof![4 => 0i64..3_000, 1 => -6_000i64..0], command)
}

/// A command a batch may hold: anything but creating a product or sweeping every product.
fn batched() -> impl Strategy<Value = Command> {
    let webhook_key =
        (0u8..4).prop_map(|k| IdempotencyKey::parse(&format!("k{k}")).expect("valid"));
    let client_key = || {
        let key = (0u8..3).prop_map(|k| IdempotencyKey::parse(&format!("c{k}")).expect("valid"));
        proptest::option::weighted(0.3, key)
    };
    let status = prop_oneof![Just(PaymentStatus::Paid), Just(PaymentStatus::Failed)];
    prop_oneof![
        1 => (1u64..4, 0u32..3).prop_map(|(p, qty)| Command::Restock {
            product_id: ProductId(p), qty: Qty(qty),
        }),
        5 => (1u64..4, 1u32..3, 1_000u64..5_000, client_key()).prop_map(|(p, qty, ttl_ms, key)| {
            Command::PlaceHold { product_id: ProductId(p), qty: Qty(qty), ttl_ms, key }
        }),
        3 => (1u64..12, 1_000u64..8_000, client_key()).prop_map(|(h, w, key)| Command::PlaceOrder {
            hold_id: HoldId(h), payment_window_ms: w, key,
        }),
        3 => (webhook_key, 1u64..12, status).prop_map(|(key, h, status)| {
            Command::ApplyWebhook(WebhookPayload { key, hold_id: HoldId(h), status })
        }),
        1 => (1u64..4, proptest::collection::vec(1u64..12, 0..4), proptest::collection::vec(1u64..8, 0..3)).prop_map(|(p, holds, orders)| {
            Command::SweepProduct {
                product_id: ProductId(p),
                holds: holds.into_iter().map(HoldId).collect(),
                orders: orders.into_iter().map(OrderId).collect(),
            }
        }),
    ]
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

/// What a storage holding `ledger`'s rows finds for `load` at `now`, and the locks it takes.
fn find(ledger: &Ledger, load: &Load, now: Timestamp) -> (Loaded<'static>, Vec<RowLock>) {
    let locks = load.locks();
    let loaded = match load {
        Load::FirstProduct => {
            Loaded::Products(ledger.products().take(1).cloned().map(Cow::Owned).collect())
        }
        Load::RequestKeys(keys) => Loaded::RequestKeys(
            keys.iter()
                .filter_map(|k| ledger.request_key(k).cloned())
                .collect(),
        ),
        Load::FindHolds(ids) => Loaded::Holds(
            ids.iter()
                .filter_map(|&id| ledger.hold(id).copied())
                .collect(),
        ),
        Load::Holds(ids) => Loaded::Holds(
            ids.iter()
                .filter_map(|&(_, id)| ledger.hold(id).copied())
                .collect(),
        ),
        Load::Products(ids) => Loaded::Products(
            ids.iter()
                .filter_map(|&id| ledger.product(id).cloned().map(Cow::Owned))
                .collect(),
        ),
        Load::Orders(ids) => Loaded::Orders(
            ids.iter()
                .filter_map(|&(_, id)| ledger.order(id).copied())
                .collect(),
        ),
        Load::DueBuckets(ids) => {
            let due = ledger.buckets().filter(|b| ids.contains(&b.product_id));
            let due: Vec<_> = due.filter(|b| b.expires_at <= now).copied().collect();
            Loaded::Buckets(due)
        }
        Load::Webhooks(keys) => Loaded::Webhooks(
            keys.iter()
                .filter_map(|k| ledger.webhook(k).cloned().map(Cow::Owned))
                .collect(),
        ),
    };
    (loaded, locks)
}

/// The rows of a ledger, for comparing two ledgers.
fn rows(ledger: &Ledger) -> String {
    let products: Vec<_> = ledger.products().collect();
    let holds: Vec<_> = ledger.holds().collect();
    let orders: Vec<_> = ledger.orders().collect();
    let webhooks: Vec<_> = ledger.webhooks().collect();
    let keys: Vec<_> = ledger.request_keys().collect();
    format!("{products:?}\n{holds:?}\n{orders:?}\n{webhooks:?}\n{keys:?}")
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
                 Ok(Outcome::WebhookApplied { record: b, replayed: true, .. })) => {
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
                Ok(Outcome::Restocked { product: p, .. }) => {
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
                // Held holds not expired for good: the others' units are back on sale.
                let held: u64 = ledger
                    .holds()
                    .filter(|h| h.product_id == product.id && h.state == HoldState::Held)
                    .filter(|h| !product.expired_for_good(h.expires_at))
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
                    Command::PlaceOrder { hold_id, payment_window_ms: 60_000, key: None },
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
            product_id: product.id, qty: Qty(qty), ttl_ms: HOLD_TTL_MS_DEFAULT, key: None,
        };
        for qty in held_before {
            let _ = ledger.apply(now, hold(qty));
        }
        let product_now = ledger.product(product.id).cloned().expect("exists");
        // A request with values out of range is refused as it is made, and never reaches the
        // batch; one by one, the ledger refuses it the same way.
        let asked: Vec<Result<HoldRequest, Rejection>> = requests
            .iter()
            .map(|&qty| HoldRequest::new(Qty(qty), HOLD_TTL_MS_DEFAULT, None))
            .collect();
        let valid: Vec<HoldRequest> = asked.iter().filter_map(|r| r.clone().ok()).collect();
        let batch = hold::place_holds(&product_now, &[], &valid, now)
            .expect("the ledger's rows are sound");
        let mut ledger_batch = ledger.clone();
        ledger_batch.write(&batch.writes);
        let mut decisions = batch.decisions.into_iter();
        for (&qty, request) in requests.iter().zip(asked) {
            let decided = match request {
                Ok(_) => decisions.next().expect("one decision per valid request"),
                Err(rejection) => Err(rejection),
            };
            let one = ledger.apply(now, hold(qty));
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
    fn a_batch_of_mixed_commands_answers_and_writes_as_one_by_one(
        history in proptest::collection::vec(step(), 0..40),
        batch in proptest::collection::vec(batched(), 1..12),
        dt in 0u64..4_000,
    ) {
        let (mut one_by_one, now) = run(&history);
        let now = Timestamp(now.as_ms() + dt);
        let mut batched = one_by_one.clone();
        let answers = batched.apply_batch(now, &batch);
        prop_assert_eq!(answers.len(), batch.len());
        for (command, answer) in batch.iter().zip(answers) {
            let one = one_by_one.apply(now, command.clone());
            prop_assert_eq!(answer, one, "{:?} in a batch of {:?}", command, batch);
        }
        prop_assert_eq!(rows(&batched), rows(&one_by_one));
    }

    #[test]
    fn every_plan_locks_in_the_global_order_ends_and_reads_sound_rows(
        steps in proptest::collection::vec(step(), 0..40),
        batches in proptest::collection::vec(proptest::collection::vec(batched(), 1..8), 1..4),
    ) {
        let (ledger, now) = run(&steps);
        for batch in batches {
            let plan = Plan::new(&batch);
            let mut rows = Rows::default();
            let mut taken = LockOrder::default();
            let mut loads = Vec::new();
            while let Some(load) = plan.next(&rows) {
                prop_assert!(loads.len() < 8, "{:?} does not end: {:?}", plan, loads);
                let (loaded, locks) = find(&ledger, &load, now);
                for lock in locks {
                    prop_assert_eq!(taken.take(lock), Ok(()), "{:?} after {:?}", batch, loads);
                }
                rows.put(load.clone(), loaded);
                loads.push(load);
            }
            let executed = execute(&rows, now, &batch);
            for (command, answer) in batch.iter().zip(&executed.answers) {
                let violated = matches!(answer, Err(Refusal::Violated(_)));
                prop_assert!(!violated, "{:?} read unsound rows: {:?}", command, answer);
            }
        }
    }
}
