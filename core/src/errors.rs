//! Why a decision did not go through: a [`Rejection`] is the client's (answered, nothing
//! changes); a [`Violation`] is a broken invariant (a bug: a unit could be sold twice or a
//! payment lost); a [`Refusal`] is either, as a decision over stored rows returns it.

use std::fmt;

use crate::ids::{HoldId, IdempotencyKey, OrderId, ProductId, Qty};
use crate::rows::hold::{HOLD_QTY_MAX, HOLD_TTL_MS_MAX, HOLD_TTL_MS_MIN};
use crate::rows::order::{PAYMENT_WINDOW_MS_MAX, PAYMENT_WINDOW_MS_MIN};
use crate::rows::product::PRICE_CENTS_MAX;
use crate::time::Timestamp;

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
                HOLD_QTY_MAX
            ),
            Rejection::InvalidTtl { ttl_ms } => write!(
                f,
                "hold ttl {ttl_ms} ms is out of range: it must be from {} to {} ms",
                HOLD_TTL_MS_MIN, HOLD_TTL_MS_MAX
            ),
            Rejection::InvalidPaymentWindow { payment_window_ms } => write!(
                f,
                "payment window {payment_window_ms} ms is out of range: it must be from {} to {} ms",
                PAYMENT_WINDOW_MS_MIN, PAYMENT_WINDOW_MS_MAX
            ),
            Rejection::InvalidName => f.write_str("name must be 1 to 255 bytes and not blank"),
            Rejection::InvalidPrice { price_cents } => write!(
                f,
                "price_cents {} is out of range: it must be at most {}",
                price_cents.0, PRICE_CENTS_MAX.0
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

/// A broken invariant. Any of these is a bug: it means a unit could be sold twice or a payment
/// lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Invariant 1: the held holds of a product claim more units than it has in stock.
    HeldExceedsStock {
        /// The product.
        product_id: ProductId,
        /// Units in held holds.
        units_held: u64,
        /// Units in stock.
        stock: Qty,
    },
    /// Invariant 1: a product's `units_held` counter differs from the units of its held holds.
    HeldCounterMismatch {
        /// The product.
        product_id: ProductId,
        /// The counter on the product row.
        counter: Qty,
        /// Units in held holds, summed from the rows.
        units_held: u64,
    },
    /// A product counter read from the rows cannot give up or take the units a decision moves:
    /// the rows are corrupt.
    CounterOutOfRange {
        /// The product.
        product_id: ProductId,
        /// `stock` or `units_held`.
        counter: &'static str,
    },
    /// A decision was handed a hold as held that is not held, or not of the locked product.
    HoldNotHeld {
        /// The hold.
        hold_id: HoldId,
    },
    /// Invariant 3: a decision would move an order that is already terminal (or of another
    /// product).
    TerminalOrderChanged {
        /// The order.
        order_id: OrderId,
    },
    /// A write-set names an inserted row whose id the storage did not return.
    WriteSetUnresolved,
    /// Invariant 2: stock plus units sold differs from units ever received.
    UnitsNotConserved {
        /// The product.
        product_id: ProductId,
        /// Units in stock.
        stock: Qty,
        /// Units in pre-payment and paid orders.
        units_sold: u64,
        /// Units ever received.
        units_received: u64,
    },
    /// A hold or order names a product that does not exist.
    DanglingProduct {
        /// The product named.
        product_id: ProductId,
    },
    /// Invariant 3: a hold and an order disagree on who consumed whom (a hold consumed by an
    /// order that does not name it, an order whose hold is not consumed by it, or two orders
    /// for one hold).
    HoldOrderMismatch {
        /// The hold.
        hold_id: HoldId,
        /// The order.
        order_id: OrderId,
    },
    /// Invariant 3: an order's units, product or total disagree with its hold.
    OrderDisagreesWithHold {
        /// The order.
        order_id: OrderId,
    },
    /// Invariant 4: two keys were both applied to one hold.
    WebhookAppliedTwice {
        /// The hold.
        hold_id: HoldId,
        /// The first key applied.
        first: IdempotencyKey,
        /// The second key applied.
        second: IdempotencyKey,
    },
    /// Invariant 4: a record's result does not match the state it claims to have produced.
    WebhookResultMismatch {
        /// The key.
        key: IdempotencyKey,
    },
    /// Invariant 5: a `paid` webhook neither ended as a paid order nor as a refund to make.
    PaymentDropped {
        /// The key.
        key: IdempotencyKey,
        /// The hold it was for.
        hold_id: HoldId,
    },
    /// Invariant 4: a client request key's record names a hold or order that does not exist or
    /// does not match the request (another product, qty or hold), so its replay would answer
    /// something the request never got.
    RequestKeyDangling {
        /// The key.
        key: IdempotencyKey,
    },
    /// An order's cancel reason disagrees with its status: a cancelled order says why, and no
    /// other does.
    CancelReasonMismatch {
        /// The order.
        order_id: OrderId,
    },
    /// A command that is not decided over a plan's rows (creating a product, sweeping every
    /// product) reached [`crate::execute()`]: a bug in its caller.
    CommandOutsideExecute,
    /// A product's `holds_to_retire` differs from its held holds expired for good (deadline at
    /// or before its `expired_through`).
    RetireCounterMismatch {
        /// The product.
        product_id: ProductId,
        /// The counter's value.
        counter: u32,
        /// Held holds at or before `expired_through`, counted.
        holds: u64,
    },
    /// An expiry bucket disagrees with the held holds of its product and instant, lies at or
    /// before its product's `expired_through`, or is missing for a live deadline.
    ExpiryBucketMismatch {
        /// The product.
        product_id: ProductId,
        /// The bucket's instant.
        expires_at: Timestamp,
    },
    /// A transaction loaded or wrote more rows than its plan's budget allows
    /// ([`crate::plan::Budget`]): work that grows with history crept into a request.
    OverBudget {
        /// `loaded` or `written`.
        what: &'static str,
        /// Rows it loaded or wrote.
        rows: usize,
        /// The most its commands may.
        budget: usize,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}
