//! Every webhook against every state its hold and order can be in, built directly as rows rather
//! than reached by commands (which reach some pairs rarely): held before and after its deadline,
//! released either way, consumed by a pre-payment order before and after its payment window, by
//! a paid order, by a cancelled one, and no hold at all. For each, a `paid` and a `failed`
//! webhook must give the result of docs/DESIGN.md's table and its effect, keep the invariants and
//! the units, answer a redelivery from the record without a change, and, followed by the
//! opposite status under a new key, never move a final state: a paid order is never cancelled,
//! an order is never cancelled twice.

// Test arithmetic is on small known numbers; an overflow would panic the test, as it should.
#![allow(clippy::arithmetic_side_effects)]

use flashsale_core::WebhookResult::{AlreadyApplied, Applied, Conflict, RefundRequired, Unmatched};
use flashsale_core::{
    Cents, Command, ExpiryBucket, Hold, HoldId, HoldState, IdempotencyKey, Ledger, Order, OrderId,
    OrderStatus, Outcome, PaymentStatus, Product, ProductId, Qty, ReleaseReason, Timestamp,
    WebhookPayload, WebhookResult,
};

const STOCK: u32 = 5;
const QTY: u32 = 2;
const EXPIRES: u64 = 10_000;
const DUE: u64 = 20_000;

/// Where the hold and its order are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Held,
    Released(ReleaseReason),
    Ordered(OrderStatus),
    NoHold,
}

/// The rows for `state`, with counters that fit it.
fn ledger(state: State) -> Ledger {
    let sold = matches!(
        state,
        State::Ordered(OrderStatus::PrePayment | OrderStatus::Paid)
    );
    let held = state == State::Held;
    let product = Product {
        id: ProductId(1),
        name: "P".into(),
        price_cents: Cents(100),
        stock: Qty(if sold { STOCK - QTY } else { STOCK }),
        units_held: Qty(if held { QTY } else { 0 }),
        units_received: u64::from(STOCK),
        expired_through: Timestamp(0),
        holds_to_retire: 0,
        open_bucket: Default::default(),
    };
    let hold_state = match state {
        State::Held | State::NoHold => HoldState::Held,
        State::Released(reason) => HoldState::Released(reason),
        State::Ordered(_) => HoldState::Consumed(OrderId(1)),
    };
    let hold = Hold {
        id: HoldId(1),
        product_id: ProductId(1),
        qty: Qty(QTY),
        created_at: Timestamp(0),
        expires_at: Timestamp(EXPIRES),
        state: hold_state,
    };
    let orders = match state {
        State::Ordered(status) => vec![Order {
            id: OrderId(1),
            hold_id: HoldId(1),
            product_id: ProductId(1),
            qty: Qty(QTY),
            total_cents: Cents(200),
            status,
            created_at: Timestamp(0),
            payment_due_at: Timestamp(DUE),
            cancel_reason: (status == OrderStatus::Cancelled)
                .then_some(flashsale_core::CancelReason::PaymentFailed),
        }],
        _ => Vec::new(),
    };
    let holds = if state == State::NoHold {
        Vec::new()
    } else {
        vec![hold]
    };
    let buckets = held.then_some(ExpiryBucket {
        product_id: ProductId(1),
        expires_at: Timestamp(EXPIRES),
        units: Qty(QTY),
        holds: 1,
    });
    let ledger = Ledger::from_rows([product], holds, orders, []).with_buckets(buckets);
    ledger
        .check_invariants()
        .unwrap_or_else(|v| panic!("the rows of {state:?} are consistent: {v}"));
    ledger
}

fn webhook(key: &str, paid: bool) -> Command {
    Command::ApplyWebhook(WebhookPayload {
        key: IdempotencyKey::parse(key).expect("a valid key"),
        hold_id: HoldId(1),
        status: if paid {
            PaymentStatus::Paid
        } else {
            PaymentStatus::Failed
        },
    })
}

/// docs/DESIGN.md's table: the result, and the order's status and hold's state after it.
fn expected(
    state: State,
    late: bool,
    paid: bool,
) -> (WebhookResult, Option<OrderStatus>, Option<HoldState>) {
    use OrderStatus::{Cancelled, Paid, PrePayment};
    let released = |reason| Some(HoldState::Released(reason));
    let consumed = Some(HoldState::Consumed(OrderId(1)));
    match (state, late, paid) {
        (State::NoHold, _, _) => (Unmatched, None, None),
        (State::Held, false, true) => (Applied, Some(Paid), consumed),
        (State::Held, true, true) => (RefundRequired, None, released(ReleaseReason::Expired)),
        (State::Held, _, false) => (Applied, None, released(ReleaseReason::PaymentFailed)),
        (State::Released(reason), _, true) => (RefundRequired, None, released(reason)),
        (State::Released(reason), _, false) => (AlreadyApplied, None, released(reason)),
        (State::Ordered(PrePayment), false, true) => (Applied, Some(Paid), consumed),
        (State::Ordered(PrePayment), true, true) => (RefundRequired, Some(Cancelled), consumed),
        (State::Ordered(PrePayment), _, false) => (Applied, Some(Cancelled), consumed),
        (State::Ordered(Paid), _, true) => (AlreadyApplied, Some(Paid), consumed),
        (State::Ordered(Paid), _, false) => (Conflict, Some(Paid), consumed),
        (State::Ordered(Cancelled), _, true) => (RefundRequired, Some(Cancelled), consumed),
        (State::Ordered(Cancelled), _, false) => (AlreadyApplied, Some(Cancelled), consumed),
    }
}

/// The units: stock plus the units of live orders is what was received.
fn conserved(ledger: &Ledger) -> bool {
    let product = ledger.product(ProductId(1)).expect("the product");
    let sold: u64 = ledger
        .orders()
        .filter(|o| o.status.holds_units())
        .map(|o| u64::from(o.qty.0))
        .sum();
    u64::from(product.stock.0) + sold == product.units_received
}

fn result_of(outcome: &Result<Outcome, flashsale_core::Rejection>) -> (WebhookResult, bool) {
    match outcome {
        Ok(Outcome::WebhookApplied {
            record, replayed, ..
        }) => (record.result, *replayed),
        other => panic!("a webhook answer, got {other:?}"),
    }
}

#[test]
fn every_webhook_on_every_hold_and_order_state_follows_the_table() {
    let states = [
        State::Held,
        State::Released(ReleaseReason::Expired),
        State::Released(ReleaseReason::PaymentFailed),
        State::Ordered(OrderStatus::PrePayment),
        State::Ordered(OrderStatus::Paid),
        State::Ordered(OrderStatus::Cancelled),
        State::NoHold,
    ];
    let mut pairs = 0;
    for state in states {
        // Before and at the deadline that matters: the hold's, or the order's payment window.
        let deadline = match state {
            State::Ordered(_) => DUE,
            _ => EXPIRES,
        };
        for (late, now) in [(false, deadline - 1), (true, deadline)] {
            for paid in [true, false] {
                pairs += 1;
                let what = format!("{state:?}, late {late}, paid {paid}");
                let mut ledger = ledger(state);
                let now = Timestamp(now);
                let first = ledger.apply(now, webhook("evt-1", paid));
                let (result, replayed) = result_of(&first);
                let (want, order, hold) = expected(state, late, paid);
                assert_eq!((result, replayed), (want, false), "{what}");
                let order_now = ledger.orders().next().map(|o| o.status);
                let hold_now = ledger.hold(HoldId(1)).map(|h| h.state);
                assert_eq!((order_now, hold_now), (order, hold), "{what}");
                ledger
                    .check_invariants()
                    .unwrap_or_else(|v| panic!("{what}: {v}"));
                assert!(state == State::NoHold || conserved(&ledger), "{what}");

                // Redelivered: the stored answer, nothing changes.
                let before = ledger.clone();
                let again = ledger.apply(Timestamp(now.as_ms() + 5), webhook("evt-1", paid));
                assert_eq!(result_of(&again), (result, true), "{what}: redelivery");
                assert_eq!(
                    format!("{before:?}"),
                    format!("{ledger:?}"),
                    "{what}: redelivery"
                );

                // The opposite status under a new key moves no final state.
                let settled = ledger.orders().next().map(|o| o.status);
                let released = ledger.hold(HoldId(1)).map(|h| h.state);
                let stock = ledger.product(ProductId(1)).map(|p| p.stock);
                let _ = ledger.apply(Timestamp(now.as_ms() + 10), webhook("evt-2", !paid));
                let settled_after = ledger.orders().next().map(|o| o.status);
                if settled.is_some_and(OrderStatus::is_terminal) {
                    assert_eq!(settled_after, settled, "{what}: a final order moved");
                    assert_eq!(
                        ledger.product(ProductId(1)).map(|p| p.stock),
                        stock,
                        "{what}: units moved for a final order"
                    );
                }
                if matches!(
                    released,
                    Some(HoldState::Released(_) | HoldState::Consumed(_))
                ) {
                    assert_eq!(
                        ledger.hold(HoldId(1)).map(|h| h.state),
                        released,
                        "{what}: a final hold moved"
                    );
                }
                ledger
                    .check_invariants()
                    .unwrap_or_else(|v| panic!("{what}, then the opposite: {v}"));
                assert!(state == State::NoHold || conserved(&ledger), "{what}");
            }
        }
    }
    assert_eq!(pairs, 28, "7 states x before/at the deadline x paid/failed");
}
