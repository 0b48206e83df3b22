//! The commands the ledger applies and [`crate::execute()`] decides. Each carries everything its
//! decision needs besides the state and `now`, so replaying a list of commands with their
//! timestamps rebuilds the same state.

use crate::ids::{Cents, HoldId, IdempotencyKey, ProductId, Qty};
use crate::rows::payment::WebhookPayload;

/// One thing the service is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Create a product with an initial stock.
    CreateProduct {
        /// Display name.
        name: String,
        /// Price of one unit.
        price_cents: Cents,
        /// Initial stock.
        stock: Qty,
    },
    /// Add units to a product's stock.
    Restock {
        /// The product.
        product_id: ProductId,
        /// Units added; at least one.
        qty: Qty,
    },
    /// Hold `qty` units of a product for `ttl_ms`.
    PlaceHold {
        /// The product.
        product_id: ProductId,
        /// Units asked for.
        qty: Qty,
        /// How long the hold lasts.
        ttl_ms: u64,
        /// The client's idempotency key: the same key and request again answers the same hold.
        key: Option<IdempotencyKey>,
    },
    /// Turn a hold into an order that must be paid within `payment_window_ms`.
    PlaceOrder {
        /// The hold to consume.
        hold_id: HoldId,
        /// How long the order waits for its payment.
        payment_window_ms: u64,
        /// The client's idempotency key: the same key and request again answers the same order.
        key: Option<IdempotencyKey>,
    },
    /// Apply a payment webhook.
    ApplyWebhook(WebhookPayload),
    /// Release every expired hold and cancel every order past its payment window. The ledger
    /// runs it as one [`Command::SweepProduct`] per product.
    Sweep,
    /// The same for one product only, as the server's sweeper does, one product per
    /// transaction.
    SweepProduct {
        /// The product.
        product_id: ProductId,
    },
}

impl Command {
    /// The product it names itself, before anything is decided: a hold's, a restock's, a
    /// product's sweep. An order or a webhook names its product only through rows it finds.
    pub fn product(&self) -> Option<ProductId> {
        match self {
            Command::PlaceHold { product_id, .. }
            | Command::Restock { product_id, .. }
            | Command::SweepProduct { product_id } => Some(*product_id),
            Command::CreateProduct { .. }
            | Command::PlaceOrder { .. }
            | Command::ApplyWebhook(_)
            | Command::Sweep => None,
        }
    }
}
