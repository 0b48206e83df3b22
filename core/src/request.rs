//! Idempotency keys on client requests: the optional `Idempotency-Key` header of
//! `POST /api/holds` and `POST /api/orders`.
//!
//! A request that succeeds under a key leaves a [`RequestRecord`] naming the request and the
//! resource it answered with (the hold granted, or the order created or found). The record is
//! written in the same transaction as the request's effect, so a client retrying after a lost
//! answer finds either both or neither: it can never get two holds for one key.
//!
//! | key's record | request | decision |
//! |---|---|---|
//! | none | any | [`KeyDecision::Fresh`]: run the request, store a record if it succeeds |
//! | same request | same fields | [`KeyDecision::Replay`]: answer the stored resource, change nothing |
//! | other request or fields | any | [`Rejection::IdempotencyKeyReused`] naming the first difference |
//!
//! A rejected request changes nothing and leaves no record, so retrying it under the same key
//! decides again (stock may have come back). Whether a key is still in flight on a server is the
//! server's business: nothing here knows about concurrency.

use crate::errors::Rejection;
use crate::ids::IdempotencyKey;
use crate::rows::request::{KeyedRequest, RequestRecord};

/// What to do with a request carrying a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyDecision {
    /// The key is new: run the request.
    Fresh,
    /// The key answered this very request before: answer the same, change nothing.
    Replay(RequestRecord),
}

/// Decides a keyed request from the key's record, if one exists.
///
/// # Errors
/// [`Rejection::IdempotencyKeyReused`] when the key was used with another request, naming the
/// first field that differs (`request` when the other request was of another kind).
pub fn decide_request_key(
    record: Option<&RequestRecord>,
    key: &IdempotencyKey,
    request: &KeyedRequest,
) -> Result<KeyDecision, Rejection> {
    let Some(record) = record else {
        return Ok(KeyDecision::Fresh);
    };
    assert_eq!(&record.key, key, "the caller read the key's own record");
    let field = match (record.request, *request) {
        (
            KeyedRequest::PlaceHold { product_id, qty },
            KeyedRequest::PlaceHold {
                product_id: asked_product,
                qty: asked_qty,
            },
        ) => {
            if product_id != asked_product {
                Some("product_id")
            } else if qty != asked_qty {
                Some("qty")
            } else {
                None
            }
        }
        (KeyedRequest::PlaceOrder { hold_id }, KeyedRequest::PlaceOrder { hold_id: asked }) => {
            (hold_id != asked).then_some("hold_id")
        }
        (KeyedRequest::PlaceHold { .. }, KeyedRequest::PlaceOrder { .. })
        | (KeyedRequest::PlaceOrder { .. }, KeyedRequest::PlaceHold { .. }) => Some("request"),
    };
    match field {
        None => Ok(KeyDecision::Replay(record.clone())),
        Some(field) => Err(Rejection::IdempotencyKeyReused {
            key: key.clone(),
            field,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{HoldId, ProductId, Qty};
    use crate::time::Timestamp;

    fn key(text: &str) -> IdempotencyKey {
        IdempotencyKey::parse(text).unwrap()
    }

    fn hold_request(product: u64, qty: u32) -> KeyedRequest {
        KeyedRequest::PlaceHold {
            product_id: ProductId(product),
            qty: Qty(qty),
        }
    }

    fn record(request: KeyedRequest) -> RequestRecord {
        RequestRecord {
            key: key("k-1"),
            request,
            resource_id: 7,
            created: true,
            created_at: Timestamp(1_000),
        }
    }

    #[test]
    fn a_new_key_runs_the_request() {
        let decision = decide_request_key(None, &key("k-1"), &hold_request(1, 2));
        assert_eq!(decision, Ok(KeyDecision::Fresh));
    }

    #[test]
    fn the_same_request_replays_the_record() {
        let stored = record(hold_request(1, 2));
        let decision = decide_request_key(Some(&stored), &key("k-1"), &hold_request(1, 2));
        assert_eq!(decision, Ok(KeyDecision::Replay(stored)));
        let order = KeyedRequest::PlaceOrder { hold_id: HoldId(3) };
        let stored = record(order);
        let decision = decide_request_key(Some(&stored), &key("k-1"), &order);
        assert_eq!(decision, Ok(KeyDecision::Replay(stored)));
    }

    #[test]
    fn another_request_under_the_key_names_the_first_difference() {
        let cases = [
            (hold_request(1, 2), hold_request(2, 2), "product_id"),
            (hold_request(1, 2), hold_request(1, 3), "qty"),
            (hold_request(1, 2), hold_request(2, 3), "product_id"),
            (
                KeyedRequest::PlaceOrder { hold_id: HoldId(3) },
                KeyedRequest::PlaceOrder { hold_id: HoldId(4) },
                "hold_id",
            ),
            (
                hold_request(1, 2),
                KeyedRequest::PlaceOrder { hold_id: HoldId(7) },
                "request",
            ),
            (
                KeyedRequest::PlaceOrder { hold_id: HoldId(7) },
                hold_request(1, 2),
                "request",
            ),
        ];
        for (first, second, field) in cases {
            let stored = record(first);
            let decision = decide_request_key(Some(&stored), &key("k-1"), &second);
            assert_eq!(
                decision,
                Err(Rejection::IdempotencyKeyReused {
                    key: key("k-1"),
                    field
                }),
                "{first:?} then {second:?}"
            );
        }
    }
}
