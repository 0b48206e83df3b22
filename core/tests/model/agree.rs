//! What "the ledger agrees with the model" means, in one place: the command translation, the
//! comparison of every row and derived number, and the rule that final states never move. Used
//! by the proptest state machine (`core/tests/state_machine.rs`) and by the fuzz target over
//! command sequences (`fuzzing/`).

use flashsale_core::{
    Cents, Command, HoldId, HoldState, IdempotencyKey, Ledger, OrderId, PaymentStatus, ProductId,
    Qty, Timestamp, WebhookPayload,
};

use super::{Model, ModelCommand};

/// The model's command in the core's terms.
pub fn to_command(command: &ModelCommand) -> Command {
    match command.clone() {
        ModelCommand::CreateProduct { name, price, stock } => Command::CreateProduct {
            name,
            price_cents: Cents(price),
            stock: Qty(stock),
        },
        ModelCommand::Restock { product, qty } => Command::Restock {
            product_id: ProductId(product),
            qty: Qty(qty),
        },
        ModelCommand::PlaceHold {
            product,
            qty,
            ttl,
            key,
        } => Command::PlaceHold {
            product_id: ProductId(product),
            qty: Qty(qty),
            ttl_ms: ttl,
            key: key.as_deref().map(parse_key),
        },
        ModelCommand::PlaceOrder { hold, window, key } => Command::PlaceOrder {
            hold_id: HoldId(hold),
            payment_window_ms: window,
            key: key.as_deref().map(parse_key),
        },
        ModelCommand::Webhook { key, hold, paid } => Command::ApplyWebhook(WebhookPayload {
            key: IdempotencyKey::parse(&key).expect("generated keys are valid"),
            hold_id: HoldId(hold),
            status: if paid {
                PaymentStatus::Paid
            } else {
                PaymentStatus::Failed
            },
        }),
        ModelCommand::Sweep => Command::Sweep,
    }
}

fn parse_key(key: &str) -> IdempotencyKey {
    IdempotencyKey::parse(key).expect("generated keys are valid")
}

/// The ledger's rows and derived numbers equal the model's at `now`, and its invariants hold.
///
/// # Panics
/// On the first difference, naming it.
pub fn assert_agree(ledger: &Ledger, model: &Model, now_ms: u64) {
    if let Err(violation) = ledger.check_invariants() {
        panic!("invariant violated: {violation}");
    }
    let now = Timestamp(now_ms);
    assert_eq!(ledger.products().count(), model.products.len());
    for product in &model.products {
        let id = ProductId(product.id);
        assert_eq!(ledger.product(id), Some(&model.product_row(product.id)));
        let available = Some(Qty(model.available(product.id, now_ms) as u32));
        assert_eq!(
            ledger.available(id, now),
            available,
            "available of {id} at {now}"
        );
    }
    assert_eq!(ledger.holds().count(), model.holds.len());
    for hold in &model.holds {
        assert_eq!(ledger.hold(HoldId(hold.id)), Some(&model.hold_row(hold.id)));
    }
    assert_eq!(ledger.orders().count(), model.orders.len());
    for order in &model.orders {
        assert_eq!(
            ledger.order(OrderId(order.id)),
            Some(&model.order_row(order.id))
        );
    }
    assert_eq!(ledger.webhooks().count(), model.webhooks.len());
    for webhook in &model.webhooks {
        let key = IdempotencyKey::parse(&webhook.key).expect("valid key");
        assert_eq!(ledger.webhook(&key), Some(&model.webhook_row(&webhook.key)));
    }
    assert_eq!(ledger.request_keys().count(), model.request_keys.len());
    for record in &model.request_keys {
        let key = parse_key(&record.key);
        let row = model.request_key_row(&record.key);
        assert_eq!(ledger.request_key(&key), Some(&row));
    }
    // The buckets that count something. A bucket row may also stand at zero until it is folded
    // (its holds ordered after it reached the table); whether one does is how the rows came to
    // be written, not what the product has held.
    let buckets: Vec<_> = (ledger.buckets().copied())
        .filter(|b| b.holds > 0 || b.units.0 > 0)
        .collect();
    assert_eq!(buckets, model.buckets(), "expiry buckets");
    assert_eq!(ledger.next_deadline(), model.next_deadline().map(Timestamp));
}

/// A consumed or released hold keeps its state, and a paid or cancelled order its status, across
/// any command at any `now`.
pub fn final_states_never_move(before: &Ledger, after: &Ledger) {
    for hold in before.holds().filter(|h| h.state != HoldState::Held) {
        let now = after.hold(hold.id).map(|h| h.state);
        assert_eq!(now, Some(hold.state), "final hold {} moved", hold.id);
    }
    for order in before.orders().filter(|o| o.status.is_terminal()) {
        let now = after.order(order.id).map(|o| o.status);
        assert_eq!(now, Some(order.status), "final order {} moved", order.id);
    }
}
