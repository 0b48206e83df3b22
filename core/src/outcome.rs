//! What applying a command answers: an [`Outcome`] on success, a [`Rejection`] otherwise.
//!
//! A rejection is a value the caller matches on, never a panic, and it changes nothing. Checks run
//! in a fixed order and the first failure wins: the request's own values (qty, ttl, window, name),
//! then the existence of what it names (product, hold), then its state (released, expired,
//! consumed), then stock, then numeric limits (overflow).

use std::fmt;

use crate::hold::Hold;
use crate::ids::{HoldId, IdempotencyKey, OrderId, ProductId, Qty};
use crate::invariants::Violation;
use crate::order::Order;
use crate::payment::WebhookRecord;
use crate::product::Product;
use crate::writes::{Inserted, Pending};

/// What a successfully applied command did. Rows a batch inserts carry pending ids
/// ([`crate::writes::pending_hold`]) until [`Outcome::resolve`] gives them the stored ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A product was created.
    ProductCreated(Product),
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
        /// Expired holds of the same product released by the same decision, by id.
        holds_released: Vec<HoldId>,
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
    },
    /// A sweep ran.
    Swept {
        /// Holds released because they expired, by id.
        holds_released: Vec<HoldId>,
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
            Outcome::Swept { .. } => None,
        }
    }

    /// The same outcome in its batch's numbering: a decision numbers the rows it inserts in a
    /// range of its own, and its batch moves them after the rows earlier commands inserted.
    pub fn moved(self, offsets: Pending) -> Outcome {
        match self {
            Outcome::HoldPlaced {
                hold,
                holds_released,
                replayed,
            } => Outcome::HoldPlaced {
                hold: offsets.hold_row(hold),
                holds_released,
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
            } => Outcome::WebhookApplied {
                record: offsets.webhook_record(record),
                replayed,
                order: order.map(|o| offsets.order_row(o)),
            },
            other @ (Outcome::ProductCreated(_)
            | Outcome::Restocked { .. }
            | Outcome::Swept { .. }) => other,
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
                holds_released,
                replayed,
            } => Outcome::HoldPlaced {
                hold: inserted.hold_row(hold)?,
                holds_released,
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
            } => Outcome::WebhookApplied {
                record: inserted.webhook_record(&record)?,
                replayed,
                order: order.map(|o| inserted.order_row(o)).transpose()?,
            },
            other @ (Outcome::ProductCreated(_)
            | Outcome::Restocked { .. }
            | Outcome::Swept { .. }) => other,
        })
    }
}

/// Why a command was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A quantity was zero or above its limit.
    InvalidQty {
        /// The quantity asked for.
        qty: Qty,
    },
    /// A hold TTL was out of range.
    InvalidTtl {
        /// The TTL asked for.
        ttl_ms: u64,
    },
    /// A payment window was out of range.
    InvalidPaymentWindow {
        /// The window asked for.
        payment_window_ms: u64,
    },
    /// A product name was empty, blank or too long.
    InvalidName,
    /// A unit price was above the limit.
    InvalidPrice {
        /// The price asked for.
        price_cents: crate::ids::Cents,
    },
    /// No such product.
    UnknownProduct {
        /// The id asked for.
        product_id: ProductId,
    },
    /// No such hold.
    UnknownHold {
        /// The id asked for.
        hold_id: HoldId,
    },
    /// The hold was released (expired and swept, or its payment failed).
    HoldReleased {
        /// The hold.
        hold_id: HoldId,
    },
    /// The hold's TTL has passed.
    HoldExpired {
        /// The hold.
        hold_id: HoldId,
    },
    /// Fewer units are available than asked for.
    InsufficientStock {
        /// Units asked for.
        requested: Qty,
        /// Units available to this request.
        available: Qty,
    },
    /// A restock would overflow the stock counters.
    StockOverflow {
        /// The product.
        product_id: ProductId,
    },
    /// An order's total does not fit in 64 bits of cents.
    TotalOverflow {
        /// The hold being ordered.
        hold_id: HoldId,
    },
    /// The idempotency key (of a webhook, or of a hold or order request) was used before with
    /// another payload.
    IdempotencyKeyReused {
        /// The key.
        key: IdempotencyKey,
        /// The first payload field that differs.
        field: &'static str,
    },
}

impl Rejection {
    /// A stable machine-readable code, as the HTTP API's problem documents carry it.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::InvalidQty { .. }
            | Rejection::InvalidTtl { .. }
            | Rejection::InvalidPaymentWindow { .. }
            | Rejection::InvalidName
            | Rejection::InvalidPrice { .. }
            | Rejection::StockOverflow { .. }
            | Rejection::TotalOverflow { .. } => "validation_failed",
            Rejection::UnknownProduct { .. } => "unknown_product",
            Rejection::UnknownHold { .. } => "unknown_hold",
            Rejection::HoldReleased { .. } => "hold_released",
            Rejection::HoldExpired { .. } => "hold_expired",
            Rejection::InsufficientStock { .. } => "insufficient_stock",
            Rejection::IdempotencyKeyReused { .. } => "idempotency_key_reused",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::InvalidQty { qty } => write!(
                f,
                "qty {qty} is out of range: it must be from 1 to {}",
                crate::hold::HOLD_QTY_MAX
            ),
            Rejection::InvalidTtl { ttl_ms } => write!(
                f,
                "hold ttl {ttl_ms} ms is out of range: it must be from {} to {} ms",
                crate::hold::HOLD_TTL_MS_MIN,
                crate::hold::HOLD_TTL_MS_MAX
            ),
            Rejection::InvalidPaymentWindow { payment_window_ms } => write!(
                f,
                "payment window {payment_window_ms} ms is out of range: it must be from {} to {} ms",
                crate::order::PAYMENT_WINDOW_MS_MIN,
                crate::order::PAYMENT_WINDOW_MS_MAX
            ),
            Rejection::InvalidName => f.write_str("name must be 1 to 255 bytes and not blank"),
            Rejection::InvalidPrice { price_cents } => write!(
                f,
                "price_cents {} is out of range: it must be at most {}",
                price_cents.0,
                crate::product::PRICE_CENTS_MAX.0
            ),
            Rejection::UnknownProduct { product_id } => write!(f, "product {product_id} not found"),
            Rejection::UnknownHold { hold_id } => write!(f, "hold {hold_id} not found"),
            Rejection::HoldReleased { hold_id } => write!(f, "hold {hold_id} was released"),
            Rejection::HoldExpired { hold_id } => write!(f, "hold {hold_id} has expired"),
            Rejection::InsufficientStock {
                requested,
                available,
            } => {
                write!(f, "requested {requested} units, {available} available")
            }
            Rejection::StockOverflow { product_id } => {
                write!(
                    f,
                    "restock would overflow the stock of product {product_id}"
                )
            }
            Rejection::TotalOverflow { hold_id } => {
                write!(f, "the total for hold {hold_id} is too large")
            }
            Rejection::IdempotencyKeyReused { key, field } => {
                write!(f, "idempotency key {key} was used with another {field}")
            }
        }
    }
}

impl std::error::Error for Rejection {}

/// Why a decision wrote nothing: the command was refused (a [`Rejection`], which the client is
/// told), or the rows the shell read for it break an invariant (a [`Violation`]: the shell fails
/// the request closed and reports it, since the core cannot repair stored state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The command was refused.
    Rejected(Rejection),
    /// The rows read are corrupt.
    Violated(Violation),
}

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Self {
        Refusal::Rejected(rejection)
    }
}

impl From<Violation> for Refusal {
    fn from(violation: Violation) -> Self {
        Refusal::Violated(violation)
    }
}
