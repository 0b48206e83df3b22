//! Rows as the SQL storages read them (tuples of columns) parsed into core types, with every
//! stored word and range checked on the way out: a value no write could have stored is
//! [`StoreError::Corrupt`], never a default. A webhook record's fingerprint is recomputed from
//! its fields and compared with the stored one (the paired assertion of its write).

use flashsale_core::{
    CancelReason, Cents, ExpiryBucket, Fingerprint, Hold, HoldId, HoldState, IdempotencyKey,
    KeyedRequest, OpenBucket, Order, OrderId, OrderStatus, PaymentStatus, Product, ProductId, Qty,
    ReleaseReason, RequestRecord, Timestamp, WebhookRecord, WebhookResult,
};

use flashsale_service::store::{StoreError, StoreResult};

pub(super) type ProductRow = (u64, String, u64, u32, u32, u64, u64, u32, u64, u32, u32);
pub(super) type BucketRow = (u64, u64, i64, i64);
pub(super) type HoldRow = (u64, u64, u32, u64, u64, String, Option<String>, Option<u64>);
pub(crate) type OrderRow = (u64, u64, u64, u32, u64, String, u64, u64, Option<String>);
pub(crate) type WebhookRow = (String, u64, String, String, String, Option<u64>, u64);
pub(super) type RequestKeyRow = (
    String,
    String,
    Option<u64>,
    Option<u32>,
    Option<u64>,
    u64,
    bool,
    u64,
);

/// The columns of a [`ProductRow`], in order, as a literal for `concat!`.
macro_rules! product_columns {
    () => {
        "id, name, price_cents, stock, units_held, units_received, expired_through, \
         holds_to_retire, open_expires_at, open_units, open_holds"
    };
}
pub(super) use product_columns;

pub(super) fn product_from_row(row: ProductRow) -> Product {
    let (id, name, price_cents, stock, units_held, units_received, expired_through, to_retire) =
        (row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7);
    let (open_at, open_units, open_holds) = (row.8, row.9, row.10);
    Product {
        id: ProductId(id),
        name,
        price_cents: Cents(price_cents),
        stock: Qty(stock),
        units_held: Qty(units_held),
        units_received,
        expired_through: Timestamp(expired_through),
        holds_to_retire: to_retire,
        open_bucket: OpenBucket {
            expires_at: Timestamp(open_at),
            units: Qty(open_units),
            holds: open_holds,
        },
    }
}

pub(super) fn bucket_from_row(row: BucketRow) -> StoreResult<ExpiryBucket> {
    let (product_id, expires_at, units, holds) = row;
    let units = u32::try_from(units);
    let holds = u32::try_from(holds);
    let (Ok(units), Ok(holds)) = (units, holds) else {
        return Err(corrupt(
            "expiry bucket of product",
            product_id,
            &format!("at {expires_at}: counts out of range"),
        ));
    };
    Ok(ExpiryBucket {
        product_id: ProductId(product_id),
        expires_at: Timestamp(expires_at),
        units: Qty(units),
        holds,
    })
}

fn corrupt(what: &str, id: impl std::fmt::Display, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {id}: unexpected value {value:?}"))
}

pub(super) fn hold_from_row(row: HoldRow) -> StoreResult<Hold> {
    let (id, product_id, qty, created_at, expires_at, state, reason, order_id) = row;
    let state = match (state.as_str(), reason.as_deref(), order_id) {
        ("held", None, None) => HoldState::Held,
        ("consumed", None, Some(order_id)) => HoldState::Consumed(OrderId(order_id)),
        ("released", Some(reason), None) => HoldState::Released(
            ReleaseReason::parse(reason).ok_or_else(|| corrupt("hold", id, reason))?,
        ),
        _ => return Err(corrupt("hold", id, &state)),
    };
    Ok(Hold {
        id: HoldId(id),
        product_id: ProductId(product_id),
        qty: Qty(qty),
        created_at: Timestamp(created_at),
        expires_at: Timestamp(expires_at),
        state,
    })
}

pub(crate) fn order_from_row(row: OrderRow) -> StoreResult<Order> {
    let (id, hold_id, product_id, qty, total_cents, status, created_at, payment_due_at, reason) =
        row;
    let cancel_reason = reason
        .map(|r| CancelReason::parse(&r).ok_or_else(|| corrupt("order", id, &r)))
        .transpose()?;
    Ok(Order {
        id: OrderId(id),
        hold_id: HoldId(hold_id),
        product_id: ProductId(product_id),
        qty: Qty(qty),
        total_cents: Cents(total_cents),
        status: OrderStatus::parse(&status).ok_or_else(|| corrupt("order", id, &status))?,
        created_at: Timestamp(created_at),
        payment_due_at: Timestamp(payment_due_at),
        cancel_reason,
    })
}

pub(crate) fn webhook_from_row(row: WebhookRow) -> StoreResult<WebhookRecord> {
    let (key, hold_id, status, fingerprint, result, order_id, received_at) = row;
    let parsed_key = IdempotencyKey::parse(&key).ok_or_else(|| corrupt("webhook", &key, &key))?;
    let status = PaymentStatus::parse(&status).ok_or_else(|| corrupt("webhook", &key, &status))?;
    let result = WebhookResult::parse(&result).ok_or_else(|| corrupt("webhook", &key, &result))?;
    let stored = u64::from_str_radix(&fingerprint, 16)
        .map_err(|_| corrupt("webhook", &key, &fingerprint))?;
    let expected = Fingerprint::of(HoldId(hold_id), status);
    // Paired assertion: the print was computed from these fields when written.
    if stored != expected.0 {
        return Err(corrupt("webhook", &key, &fingerprint));
    }
    Ok(WebhookRecord {
        key: parsed_key,
        hold_id: HoldId(hold_id),
        status,
        fingerprint: expected,
        result,
        order_id: order_id.map(OrderId),
        received_at: Timestamp(received_at),
    })
}

pub(super) fn request_key_from_row(row: RequestKeyRow) -> StoreResult<RequestRecord> {
    let (key, request, product_id, qty, hold_id, resource_id, created, created_at) = row;
    let parsed_key =
        IdempotencyKey::parse(&key).ok_or_else(|| corrupt("request key", &key, &key))?;
    let request = match (request.as_str(), product_id, qty, hold_id) {
        ("place_hold", Some(product_id), Some(qty), None) => KeyedRequest::PlaceHold {
            product_id: ProductId(product_id),
            qty: Qty(qty),
        },
        ("place_order", None, None, Some(hold_id)) => KeyedRequest::PlaceOrder {
            hold_id: HoldId(hold_id),
        },
        _ => return Err(corrupt("request key", &key, &request)),
    };
    Ok(RequestRecord {
        key: parsed_key,
        request,
        resource_id,
        created,
        created_at: Timestamp(created_at),
    })
}
