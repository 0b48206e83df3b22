//! The history's vocabulary: what a client asked ([`Request`], a command or a read of a
//! [`Target`]) and what it was answered ([`Answer`] to a command, [`Seen`] by a read, with the
//! log positions it may have read in [`Read`]), all with the storage's ids, as the API shows them.

use std::ops::Range;

use flashsale_core::{
    Command, Folded, Hold, HoldId, HoldView, Order, OrderId, Outcome, Product, ProductId, Qty,
    Rejection, Timestamp, WebhookResult,
};
use flashsale_service::{HoldPlaced, Keyed, OrderPlaced, ProductView, WebhookAnswer};

use crate::recording::OpContext;

/// What a client was answered, with the storage's ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A hold granted (or replayed under its key), and what its decision folded.
    Hold {
        /// The hold.
        hold: Hold,
        /// What folding its product's due expiry buckets gave back to sale first.
        folded: Folded,
        /// Whether its key's record answered it.
        replayed: bool,
    },
    /// An order, and whether the request that made this answer created it.
    Order {
        /// The order.
        order: Order,
        /// Whether that request created it.
        created: bool,
        /// Whether its key's record answered it.
        replayed: bool,
    },
    /// A webhook's result.
    Webhook {
        /// The key's result.
        result: WebhookResult,
        /// The key's order.
        order_id: Option<OrderId>,
        /// Whether the key was answered before.
        replayed: bool,
    },
    /// A restock's new counters.
    Restocked {
        /// The stock.
        stock: Qty,
        /// Units ever received.
        units_received: u64,
    },
    /// A refusal.
    Rejected(Rejection),
}

impl From<&Keyed<HoldPlaced>> for Answer {
    fn from(placed: &Keyed<HoldPlaced>) -> Self {
        Answer::Hold {
            hold: placed.value.hold,
            folded: placed.value.folded,
            replayed: placed.replayed,
        }
    }
}

impl From<&Keyed<OrderPlaced>> for Answer {
    fn from(placed: &Keyed<OrderPlaced>) -> Self {
        Answer::Order {
            order: placed.value.order,
            created: placed.value.created,
            replayed: placed.replayed,
        }
    }
}

impl From<&HoldPlaced> for Answer {
    /// An unkeyed request's hold.
    fn from(placed: &HoldPlaced) -> Self {
        Answer::Hold {
            hold: placed.hold,
            folded: placed.folded,
            replayed: false,
        }
    }
}

impl From<&OrderPlaced> for Answer {
    /// An unkeyed request's order.
    fn from(placed: &OrderPlaced) -> Self {
        Answer::Order {
            order: placed.order,
            created: placed.created,
            replayed: false,
        }
    }
}

impl From<&WebhookAnswer> for Answer {
    fn from(answer: &WebhookAnswer) -> Self {
        Answer::Webhook {
            result: answer.record.result,
            order_id: answer.record.order_id,
            replayed: answer.replayed,
        }
    }
}

impl From<&ProductView> for Answer {
    /// A restock's answer.
    fn from(view: &ProductView) -> Self {
        Answer::Restocked {
            stock: view.product.stock,
            units_received: view.product.units_received,
        }
    }
}

impl Answer {
    /// The answer the ledger's result stands for.
    pub(crate) fn of(result: Result<Outcome, Rejection>) -> Result<Answer, String> {
        Ok(match result {
            Ok(Outcome::HoldPlaced {
                hold,
                folded,
                replayed,
            }) => Answer::Hold {
                hold,
                folded,
                replayed,
            },
            Ok(Outcome::OrderPlaced {
                order,
                created,
                replayed,
            }) => Answer::Order {
                order,
                created,
                replayed,
            },
            Ok(Outcome::WebhookApplied {
                record, replayed, ..
            }) => Answer::Webhook {
                result: record.result,
                order_id: record.order_id,
                replayed,
            },
            Ok(Outcome::Restocked { product, .. }) => Answer::Restocked {
                stock: product.stock,
                units_received: product.units_received,
            },
            Ok(other) => return Err(format!("no client is answered {other:?}")),
            Err(rejection) => Answer::Rejected(rejection),
        })
    }

    /// The answer as compared: every field is compared as it is.
    pub(crate) fn normalised(self) -> Answer {
        self
    }
}

/// What a request asks of the service: a command, or a read.
#[derive(Clone, Debug)]
pub enum Request {
    /// A command, which the commit log records.
    Command(Command),
    /// A read, which writes nothing and is checked against every state it may have seen.
    Read(Target),
}

impl From<Command> for Request {
    fn from(command: Command) -> Self {
        Request::Command(command)
    }
}

/// What a read asks for, with the storage's ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `GET /api/products/{id}`.
    Product(ProductId),
    /// `GET /api/holds/{id}`.
    Hold(HoldId),
    /// `GET /api/orders/{id}`.
    Order(OrderId),
}

impl Target {
    /// The clock reading a read of it decided at, from the readings its request noted: an
    /// order's row does not depend on the time, so its read may read no clock and stands at
    /// any; a product's or hold's read that read none is `None`.
    pub fn reading(self, noted: Option<Timestamp>) -> Option<Timestamp> {
        match self {
            Target::Order(_) => Some(noted.unwrap_or_default()),
            Target::Product(_) | Target::Hold(_) => noted,
        }
    }
}

/// What a read was answered, with the storage's ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A product's row and its units available at the read's clock reading.
    Product {
        /// The row.
        product: Product,
        /// Units available.
        available: Qty,
    },
    /// A hold's row and how it looks at the read's clock reading.
    Hold {
        /// The row.
        hold: Hold,
        /// Its view.
        view: HoldView,
    },
    /// An order's row.
    Order(Order),
}

impl Seen {
    /// Reads `target` through `service`, as its route does.
    ///
    /// # Errors
    /// The service's: not found, busy, storage.
    pub async fn read<S, C>(
        service: &flashsale_service::Service<S, C>,
        target: Target,
    ) -> Result<Seen, flashsale_service::ServiceError>
    where
        S: flashsale_service::store::Storage + Clone,
        C: flashsale_service::clock::Clock + Clone,
    {
        Ok(match target {
            Target::Product(id) => {
                let view = service.product(id).await?;
                Seen::Product {
                    product: view.product,
                    available: view.available,
                }
            }
            Target::Hold(id) => {
                let (hold, view) = service.hold(id).await?;
                Seen::Hold { hold, view }
            }
            Target::Order(id) => Seen::Order(service.order(id).await?),
        })
    }
}

/// What a read was answered, and the clock reading its request noted: what a recorded read keeps
/// of its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadAnswer {
    /// What it was answered.
    pub seen: Seen,
    /// The clock reading its request noted, if it read a clock.
    pub now: Option<Timestamp>,
}

impl ReadAnswer {
    /// Reads `target` through `service`, as its route does, inside the current request
    /// ([`crate::recording::OP`]), and takes the clock reading the request noted.
    ///
    /// # Errors
    /// The service's: not found, busy, storage.
    pub async fn read<S, C>(
        service: &flashsale_service::Service<S, C>,
        target: Target,
    ) -> Result<ReadAnswer, flashsale_service::ServiceError>
    where
        S: flashsale_service::store::Storage + Clone,
        C: flashsale_service::clock::Clock + Clone,
    {
        let seen = Seen::read(service, target).await?;
        Ok(ReadAnswer {
            seen,
            now: OpContext::now_of_current(),
        })
    }
}

/// A read a client was answered, and the positions of the commit log whose states it may have
/// read: a read is linearizable if some state between the commits before it was sent and those
/// before it was answered gives its answer at its clock reading. A product read may be
/// answered from the instance's cache, so its first position is the log's length a
/// cache-staleness before it was sent.
#[derive(Clone, Debug)]
pub struct Read {
    /// The request's number.
    pub op: u64,
    /// What it read.
    pub target: Target,
    /// The clock reading it decided at.
    pub now: Timestamp,
    /// The first position (a log length) it may have read.
    pub from: usize,
    /// The last position (the log's length when it was answered).
    pub to: usize,
    /// What it was answered.
    pub seen: Seen,
}

impl Read {
    /// Request `op`'s read of `target`, answered `answer` while the log went through
    /// `positions` (from the first length it may have read to its length when the read was
    /// answered); `None` for a read whose answer depends on a clock it never read (see
    /// [`Target::reading`]).
    pub fn of(
        op: u64,
        target: Target,
        positions: Range<usize>,
        answer: ReadAnswer,
    ) -> Option<Read> {
        let now = target.reading(answer.now)?;
        Some(Read {
            op,
            target,
            now,
            from: positions.start,
            to: positions.end,
            seen: answer.seen,
        })
    }
}
