//! What applying a command answers: an [`Outcome`] on success, a [`Rejection`](crate::errors::Rejection) otherwise.
//!
//! A rejection is a value the caller matches on, never a panic, and it changes nothing. Checks run
//! in a fixed order and the first failure wins: the request's own values (qty, ttl, window, name),
//! then the existence of what it names (product, hold), then its state (released, expired,
//! consumed), then stock, then numeric limits (overflow).

use crate::errors::Violation;
use crate::ids::{HoldId, OrderId, ProductId, Qty};
use crate::rows::expiry::Folded;
use crate::rows::hold::{Hold, ReleaseReason};
use crate::rows::order::Order;
use crate::rows::payment::WebhookRecord;
use crate::rows::product::Product;
use crate::writes::{Inserted, Pending};

/// What a new webhook changed besides storing its record, as its answer tells it (the hold is
/// the record's, the order the answer's): the effect of `payment::decide_webhook`, so that a
/// caller counting sales or releases reads it instead of deciding it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookChange {
    /// Nothing but the record (and nothing at all for a replay).
    None,
    /// A pre-payment order is now paid.
    OrderPaid,
    /// A pre-payment order is now cancelled, its units back in stock (a `failed` verdict, or a
    /// `paid` one past the payment window).
    OrderCancelled,
    /// An order was created already paid, consuming its hold (a `paid` verdict before the order).
    PaidOrderCreated,
    /// A held hold was released (a `failed` verdict before the order, or a `paid` one on an
    /// expired hold).
    HoldReleased(ReleaseReason),
}

/// What a successfully applied command did. Rows a batch inserts carry pending ids
/// ([`crate::writes::pending_hold`]) until [`Outcome::resolve`] gives them the stored ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A product was created.
    ProductCreated(Product),
    /// The demo products were created, or none when a product existed already.
    Seeded(Vec<Product>),
    /// A product was restocked.
    Restocked {
        /// Its new state.
        product: Product,
        /// Units available to a new hold after it.
        available: Qty,
    },
    /// A hold was granted, or answered again under its idempotency key.
    HoldPlaced {
        /// The hold (as it is now, on a replay).
        hold: Hold,
        /// What the same decision's fold of the product's due expiry buckets gave back to sale:
        /// the first grant of a batch on a product folds, as the requests one by one would.
        folded: Folded,
        /// Whether the request's key had answered it before, so nothing was decided now.
        replayed: bool,
    },
    /// An order for the hold exists: created now (`created`), or found from an earlier request.
    OrderPlaced {
        /// The order, as it is now.
        order: Order,
        /// Whether the request that made this answer created it.
        created: bool,
        /// Whether the request's key had answered it before, so nothing was decided now.
        replayed: bool,
    },
    /// A webhook was answered; `replayed` when the key was seen before with the same payload.
    WebhookApplied {
        /// The key's record.
        record: WebhookRecord,
        /// Whether this was a replay that changed nothing.
        replayed: bool,
        /// The order concerned, as it is now.
        order: Option<Order>,
        /// What it changed besides its record ([`WebhookChange::None`] for a replay).
        change: WebhookChange,
    },
    /// A sweep ran.
    Swept {
        /// What folding the due expiry buckets gave back to sale.
        folded: Folded,
        /// Holds expired for good whose rows were retired, by id.
        holds_retired: Vec<HoldId>,
        /// Orders cancelled because their payment window closed, by id.
        orders_cancelled: Vec<OrderId>,
    },
}

impl Outcome {
    /// The product it concerns, when it names one: a hold's, an order's, a restocked one.
    pub fn product(&self) -> Option<ProductId> {
        match self {
            Outcome::ProductCreated(product) | Outcome::Restocked { product, .. } => {
                Some(product.id)
            }
            Outcome::HoldPlaced { hold, .. } => Some(hold.product_id),
            Outcome::OrderPlaced { order, .. } => Some(order.product_id),
            Outcome::WebhookApplied { order, .. } => order.map(|o| o.product_id),
            Outcome::Seeded(_) | Outcome::Swept { .. } => None,
        }
    }

    /// The same outcome in its batch's numbering: a decision numbers the rows it inserts in a
    /// range of its own, and its batch moves them after the rows earlier commands inserted.
    pub fn moved(self, offsets: Pending) -> Outcome {
        match self {
            Outcome::HoldPlaced {
                hold,
                folded,
                replayed,
            } => Outcome::HoldPlaced {
                hold: offsets.hold_row(hold),
                folded,
                replayed,
            },
            Outcome::OrderPlaced {
                order,
                created,
                replayed,
            } => Outcome::OrderPlaced {
                order: offsets.order_row(order),
                created,
                replayed,
            },
            Outcome::WebhookApplied {
                record,
                replayed,
                order,
                change,
            } => Outcome::WebhookApplied {
                record: offsets.webhook_record(record),
                replayed,
                order: order.map(|o| offsets.order_row(o)),
                change,
            },
            Outcome::ProductCreated(product) => Outcome::ProductCreated(Product {
                id: offsets.product(product.id),
                ..product
            }),
            Outcome::Seeded(products) => Outcome::Seeded(
                (products.into_iter())
                    .map(|product| Product {
                        id: offsets.product(product.id),
                        ..product
                    })
                    .collect(),
            ),
            other @ (Outcome::Restocked { .. } | Outcome::Swept { .. }) => other,
        }
    }

    /// The same outcome in stored ids, once a storage applied its batch's write-set and
    /// assigned `inserted`.
    ///
    /// # Errors
    /// [`Violation::WriteSetUnresolved`] when a pending id names a row the storage did not
    /// insert.
    pub fn resolve(self, inserted: &Inserted) -> Result<Outcome, Violation> {
        Ok(match self {
            Outcome::HoldPlaced {
                hold,
                folded,
                replayed,
            } => Outcome::HoldPlaced {
                hold: inserted.hold_row(hold)?,
                folded,
                replayed,
            },
            Outcome::OrderPlaced {
                order,
                created,
                replayed,
            } => Outcome::OrderPlaced {
                order: inserted.order_row(order)?,
                created,
                replayed,
            },
            Outcome::WebhookApplied {
                record,
                replayed,
                order,
                change,
            } => Outcome::WebhookApplied {
                record: inserted.webhook_record(&record)?,
                replayed,
                order: order.map(|o| inserted.order_row(o)).transpose()?,
                change,
            },
            Outcome::ProductCreated(product) => Outcome::ProductCreated(Product {
                id: inserted.product(product.id)?,
                ..product
            }),
            Outcome::Seeded(products) => Outcome::Seeded(
                (products.into_iter())
                    .map(|product| {
                        Ok(Product {
                            id: inserted.product(product.id)?,
                            ..product
                        })
                    })
                    .collect::<Result<_, Violation>>()?,
            ),
            other @ (Outcome::Restocked { .. } | Outcome::Swept { .. }) => other,
        })
    }
}
