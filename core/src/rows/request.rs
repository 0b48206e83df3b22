//! The request-key row: what a client request sent under an `Idempotency-Key` answered, stored
//! with its effect and read back on every retry.

use crate::ids::{HoldId, IdempotencyKey, ProductId, Qty};
use crate::time::Timestamp;

/// A client request an idempotency key can name, with the fields that decide its meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyedRequest {
    /// `POST /api/holds`.
    PlaceHold {
        /// The product.
        product_id: ProductId,
        /// Units asked for.
        qty: Qty,
    },
    /// `POST /api/orders`.
    PlaceOrder {
        /// The hold to turn into an order.
        hold_id: HoldId,
    },
}

impl KeyedRequest {
    /// The request's name as stored: `place_hold` or `place_order`.
    pub fn name(&self) -> &'static str {
        match self {
            KeyedRequest::PlaceHold { .. } => "place_hold",
            KeyedRequest::PlaceOrder { .. } => "place_order",
        }
    }
}

/// What a key answered: stored with the effect, read back on every retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The key; unique across both requests.
    pub key: IdempotencyKey,
    /// The request it was first used with.
    pub request: KeyedRequest,
    /// The id of the hold (for `place_hold`) or order (for `place_order`) answered.
    pub resource_id: u64,
    /// Whether that request created the resource (201) or found it (200: an order that already
    /// existed for the hold).
    pub created: bool,
    /// When the request was decided.
    pub created_at: Timestamp,
}
