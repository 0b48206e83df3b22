//! Requests, answers, rows and violated invariants in the API's words (docs/DESIGN.md's routes and
//! fields, ids as the API shows them), for failures and traces a person reads. Times are the
//! instance's wall clock as milliseconds since the run's epoch (`t+12345ms`), so they compare
//! with the simulated times in the trace.

use flashsale_core::{
    Command, Hold, HoldState, Order, OrderStatus, Product, RequestRecord, Timestamp, Violation,
    WebhookRecord,
};

use crate::history::{Answer, Request, Seen, Target};

/// The wall clock the simulated world starts at, 2026-01-01T00:00:00Z, which times are written
/// from.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// A wall-clock reading as an offset from the run's epoch.
pub fn time(at: Timestamp) -> String {
    let ms = i128::from(at.as_ms()) - i128::from(EPOCH_MS);
    format!("t{ms:+}ms")
}

/// A request, as the route it stands for.
pub fn command(command: &Command) -> String {
    match command {
        Command::CreateProduct { name, stock, .. } => {
            format!("POST /api/admin/products {{name: {name:?}, stock: {stock}}}")
        }
        Command::SeedDemo => "the demo seed (--seed-demo)".to_owned(),
        Command::Restock { product_id, qty } => {
            format!("POST /api/admin/products/{product_id}/restock {{qty: {qty}}}")
        }
        Command::PlaceHold {
            product_id, qty, ..
        } => format!("POST /api/holds {{product_id: {product_id}, qty: {qty}}}"),
        Command::PlaceOrder { hold_id, .. } => format!("POST /api/orders {{hold_id: {hold_id}}}"),
        Command::ApplyWebhook(p) => format!(
            "POST /api/payments/webhook {{idempotency_key: {}, hold_id: {}, status: {}}}",
            p.key,
            p.hold_id,
            p.status.as_str()
        ),
        Command::Sweep => "sweep".to_owned(),
        Command::SweepProduct {
            product_id,
            holds,
            orders,
        } => format!(
            "sweep of product {product_id} (naming {} holds and {} orders)",
            holds.len(),
            orders.len()
        ),
    }
}

/// A request, as the route it stands for.
pub fn request(request: &Request) -> String {
    match request {
        Request::Command(c) => command(c),
        Request::Read(t) => target(*t),
    }
}

/// A read, as the route it stands for.
pub fn target(target: Target) -> String {
    match target {
        Target::Product(id) => format!("GET /api/products/{id}"),
        Target::Hold(id) => format!("GET /api/holds/{id}"),
        Target::Order(id) => format!("GET /api/orders/{id}"),
    }
}

/// What a read was answered.
pub fn seen(seen: &Seen) -> String {
    match seen {
        Seen::Product {
            product: p,
            available,
        } => format!("200 {}, available {available}", product(p)),
        Seen::Hold { hold: h, view } => format!("200 {}, shown as {}", hold(h), view.as_str()),
        Seen::Order(o) => format!("200 {}", order(o)),
    }
}

/// A hold as `GET /api/holds/{id}` would show it.
pub fn hold(hold: &Hold) -> String {
    format!(
        "hold {} {{product_id: {}, qty: {}, expires_at: {}, state: {}}}",
        hold.id,
        hold.product_id,
        hold.qty,
        time(hold.expires_at),
        hold_state(hold.state)
    )
}

fn hold_state(state: HoldState) -> String {
    match state {
        HoldState::Held => "held".to_owned(),
        HoldState::Consumed(order) => format!("consumed by order {order}"),
        HoldState::Released(reason) => format!("released ({reason:?})").to_lowercase(),
    }
}

/// An order as `GET /api/orders/{id}` would show it.
pub fn order(order: &Order) -> String {
    format!(
        "order {} {{hold_id: {}, product_id: {}, qty: {}, total_cents: {}, status: {}, \
         payment_due_at: {}}}",
        order.id,
        order.hold_id,
        order.product_id,
        order.qty,
        order.total_cents.0,
        order_status(order.status),
        time(order.payment_due_at)
    )
}

fn order_status(status: OrderStatus) -> String {
    format!("{status:?}").to_lowercase()
}

/// A product row, with the counters the API does not show (its expiry's once it folded).
pub fn product(product: &Product) -> String {
    let expiry = if product.expired_through == Timestamp(0) {
        String::new()
    } else {
        format!(
            ", expired_through: {}, holds_to_retire: {}",
            time(product.expired_through),
            product.holds_to_retire
        )
    };
    format!(
        "product {} {{stock: {}, units_held: {}, units_received: {}{expiry}}}",
        product.id, product.stock, product.units_held, product.units_received
    )
}

/// A webhook record.
pub fn webhook(record: &WebhookRecord) -> String {
    format!(
        "webhook {} {{hold_id: {}, status: {}, result: {}{}}}",
        record.key,
        record.hold_id,
        record.status.as_str(),
        record.result.as_str(),
        record
            .order_id
            .map(|o| format!(", order_id: {o}"))
            .unwrap_or_default()
    )
}

/// A client request key's record.
pub fn request_key(record: &RequestRecord) -> String {
    format!(
        "Idempotency-Key {} -> {} {}",
        record.key,
        record.request.name(),
        record.resource_id
    )
}

/// The `Idempotent-Replayed: true` header, in words, when a key's record answered.
fn replayed_words(replayed: bool) -> &'static str {
    if replayed {
        " (Idempotent-Replayed)"
    } else {
        ""
    }
}

/// What a client was answered, as the API's status and body.
pub fn answer(answer: &Answer) -> String {
    match answer {
        Answer::Hold {
            hold: h,
            folded,
            replayed,
        } => {
            let folded = if folded.is_empty() {
                String::new()
            } else {
                format!(
                    " (folding {} expired holds, {} units)",
                    folded.holds, folded.units
                )
            };
            format!("201 {}{folded}{}", hold(h), replayed_words(*replayed))
        }
        Answer::Order {
            order: o,
            created,
            replayed,
        } => {
            let status = if *created { 201 } else { 200 };
            format!("{status} {}{}", order(o), replayed_words(*replayed))
        }
        Answer::Webhook {
            result,
            order_id,
            replayed,
        } => format!(
            "200 {{result: {}{}, replayed: {replayed}}}",
            result.as_str(),
            order_id
                .map(|o| format!(", order_id: {o}"))
                .unwrap_or_default()
        ),
        Answer::Restocked {
            stock,
            units_received,
        } => format!("200 {{stock: {stock}, units_received: {units_received}}}"),
        Answer::Rejected(rejection) => format!("{} {rejection}", rejection.code()),
    }
}

/// A violated invariant, as docs/DESIGN.md states it, and a short stable name for its kind.
pub fn violation(violation: &Violation) -> (&'static str, String) {
    match violation {
        Violation::HeldExceedsStock {
            product_id,
            units_held,
            stock,
        } => (
            "units held exceed stock",
            format!("product {product_id} has {units_held} units held but a stock of {stock}"),
        ),
        Violation::HeldCounterMismatch {
            product_id,
            counter,
            units_held,
        } => (
            "units held counter",
            format!(
                "product {product_id} counts {counter} units held, but its held holds hold \
                 {units_held}"
            ),
        ),
        Violation::CounterOutOfRange {
            product_id,
            counter,
        } => (
            "counter out of range",
            format!("product {product_id}: {counter} is out of range"),
        ),
        Violation::HoldNotHeld { hold_id } => (
            "hold not held",
            format!("hold {hold_id} was changed while no longer held"),
        ),
        Violation::TerminalOrderChanged { order_id } => (
            "terminal order changed",
            format!("order {order_id} changed after it was paid or cancelled"),
        ),
        Violation::WriteSetUnresolved => (
            "write set unresolved",
            "a write named a row that was never inserted".to_owned(),
        ),
        Violation::UnitsNotConserved {
            product_id,
            stock,
            units_sold,
            units_received,
        } => (
            "units not conserved",
            format!(
                "product {product_id}: stock {stock} + units sold {units_sold} != units \
                 received {units_received}"
            ),
        ),
        Violation::DanglingProduct { product_id } => (
            "dangling product",
            format!("product {product_id} is named by a hold or order but does not exist"),
        ),
        Violation::HoldOrderMismatch { hold_id, order_id } => (
            "hold and order disagree",
            format!("hold {hold_id} and order {order_id} do not name each other"),
        ),
        Violation::OrderDisagreesWithHold { order_id } => (
            "order disagrees with its hold",
            format!("order {order_id} disagrees with its hold (product or qty)"),
        ),
        Violation::WebhookAppliedTwice {
            hold_id,
            first,
            second,
        } => (
            "webhook applied twice",
            format!("hold {hold_id} was changed by two webhook keys, {first} and {second}"),
        ),
        Violation::WebhookResultMismatch { key } => (
            "webhook result",
            format!("webhook {key}'s stored result does not match its hold and order"),
        ),
        Violation::PaymentDropped { key, hold_id } => (
            "payment dropped",
            format!("webhook {key} paid for hold {hold_id}, which has no paid order nor refund"),
        ),
        Violation::RequestKeyDangling { key } => (
            "request key dangling",
            format!("Idempotency-Key {key} names a hold or order that its request never got"),
        ),
        Violation::CancelReasonMismatch { order_id } => (
            "cancel reason mismatch",
            format!("order {order_id} has a cancel reason that disagrees with its status"),
        ),
        Violation::CommandOutsideExecute => (
            "command outside execute",
            "a command that is not decided over a plan reached the execute step".to_owned(),
        ),
        Violation::RetireCounterMismatch {
            product_id,
            counter,
            holds,
        } => (
            "holds to retire counter",
            format!(
                "product {product_id} counts {counter} holds to retire, but {holds} of its held \
                 holds have expired for good"
            ),
        ),
        Violation::ExpiryBucketMismatch {
            product_id,
            expires_at,
        } => (
            "expiry bucket",
            format!(
                "product {product_id}'s expiry bucket at {expires_at} disagrees with its held \
                 holds of that deadline, or lies in what the product folded"
            ),
        ),
        Violation::OverBudget { what, rows, budget } => (
            "over budget",
            format!("a transaction {what} {rows} rows, over its commands' budget of {budget}"),
        ),
    }
}
