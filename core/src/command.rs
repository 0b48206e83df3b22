//! The commands the ledger applies and [`crate::execute()`] decides. Each carries everything its
//! decision needs besides the state and `now`, so replaying a list of commands with their
//! timestamps rebuilds the same state.

use crate::ids::{Cents, HoldId, IdempotencyKey, OrderId, ProductId, Qty};
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
    /// Create the demo products ([`crate::product::demo_products`]) when no product exists;
    /// nothing otherwise.
    SeedDemo,
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
    /// Fold every due expiry bucket, retire every hold expired for good and cancel every order
    /// past its payment window. The ledger runs it as [`Command::SweepProduct`]s, product by
    /// product, until nothing is left.
    Sweep,
    /// One sweep transaction on one product, as the server's sweeper commits them: fold the
    /// product's due expiry buckets, retire those of `holds` that are held and expired for good,
    /// cancel those of `orders` still waiting for a payment whose window has closed. The sweeper
    /// chooses `holds` and `orders` with a read of its own, at most a chunk of each, so the
    /// transaction's work is bounded and a replay retires the very same rows; those that changed
    /// since are left as they are.
    SweepProduct {
        /// The product.
        product_id: ProductId,
        /// Holds to retire, if they are held and expired for good.
        holds: Vec<HoldId>,
        /// Orders to cancel, if they still wait for a payment past its window.
        orders: Vec<OrderId>,
    },
}

impl Command {
    /// The product it names itself, before anything is decided: a hold's, a restock's, a
    /// product's sweep. An order or a webhook names its product only through rows it finds.
    pub fn product(&self) -> Option<ProductId> {
        match self {
            Command::PlaceHold { product_id, .. }
            | Command::Restock { product_id, .. }
            | Command::SweepProduct { product_id, .. } => Some(*product_id),
            Command::CreateProduct { .. }
            | Command::SeedDemo
            | Command::PlaceOrder { .. }
            | Command::ApplyWebhook(_)
            | Command::Sweep => None,
        }
    }
}
