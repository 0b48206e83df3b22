//! Refinement: the simulated storage's final rows must equal what the core's in-memory
//! [`Ledger`] produces when it replays the committed operations in commit order, each at the time
//! its server's clock gave inside the transaction; and every answer a client saw must be the one
//! the ledger gives at that point of the order. If the row locks serialise the transactions as
//! they should, commit order is a legal sequential order and the two agree; a transaction that
//! decided on rows another one changed underneath it shows up here as a difference.
//!
//! Each request runs inside [`OP`], a task-local naming its number and command; the instance's
//! clock notes every reading in it, and the storage logs an [`Entry`] whenever one of its
//! transactions ends: a commit that wrote (with the rows it inserted), and, for requests a client
//! is answered, a commit without writes or a rollback. A request's last entry is where its answer
//! was decided: a refusal or a replay under the locks it held, which no other commit could
//! change before it ended.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use flashsale_core::{
    Command, Hold, HoldId, HoldState, HoldView, IdempotencyKey, KeyedRequest, Ledger, Order,
    OrderId, Outcome, Product, ProductId, Qty, Rejection, RequestRecord, Timestamp, WebhookPayload,
    WebhookRecord, WebhookResult,
};
use flashsale_server::service::{
    BatchRun, BatchScope, BatchTag, HoldPlaced, Keyed, OrderPlaced, ProductView, WebhookAnswer,
};

use crate::failure::{Check, Failure};
use crate::words;

tokio::task_local! {
    /// The operation the current request performs, and the last time its clock gave.
    pub static OP: RefCell<OpContext>;
    /// The hold requests a batch's transaction decides, in arrival order, on the drainer's task.
    pub static BATCH: RefCell<Vec<OpContext>>;
}

/// What the current request does.
#[derive(Clone, Debug)]
pub struct OpContext {
    /// The request's number in the run; answers are matched to log entries by it.
    pub id: u64,
    /// The command, with the storage's ids; `None` for a read, which commands nothing.
    pub command: Option<Command>,
    /// The client's idempotency key, on keyed hold and order requests.
    pub key: Option<IdempotencyKey>,
    /// The last clock reading inside the request.
    pub now: Option<Timestamp>,
    /// The server instance serving it (from 0), if any.
    pub instance: Option<usize>,
    /// The product it concerns, if known.
    pub product: Option<ProductId>,
}

impl OpContext {
    /// A context for request `id` doing `command`.
    pub fn new(id: u64, command: Command, key: Option<IdempotencyKey>) -> RefCell<OpContext> {
        let product = match &command {
            Command::PlaceHold { product_id, .. }
            | Command::Restock { product_id, .. }
            | Command::SweepProduct { product_id } => Some(*product_id),
            _ => None,
        };
        RefCell::new(OpContext {
            id,
            command: Some(command),
            key,
            now: None,
            instance: None,
            product,
        })
    }

    /// A context for request `id` doing `command` (or reading, without one) on `instance`,
    /// about `product`.
    pub fn on(
        id: u64,
        command: Option<Command>,
        key: Option<IdempotencyKey>,
        instance: usize,
        product: Option<ProductId>,
    ) -> RefCell<OpContext> {
        let op = match command {
            Some(command) => OpContext::new(id, command, key),
            None => RefCell::new(OpContext {
                id,
                command: None,
                key,
                now: None,
                instance: None,
                product: None,
            }),
        };
        {
            let mut context = op.borrow_mut();
            context.instance = Some(instance);
            context.product = product.or(context.product);
        }
        op
    }

    /// The clock reading of the current request, if it is one and read its clock.
    pub fn now_of_current() -> Option<Timestamp> {
        OP.try_with(|op| op.borrow().now).ok().flatten()
    }

    /// Whether a client is answered with what this command decides, so that an end without
    /// writes is worth logging.
    pub fn is_answered(&self) -> bool {
        matches!(
            self.command,
            Some(
                Command::PlaceHold { .. }
                    | Command::PlaceOrder { .. }
                    | Command::ApplyWebhook(_)
                    | Command::Restock { .. }
            )
        )
    }
}

/// Notes a clock reading in the current request, or in every request of the current batch.
pub fn note_now(now: Timestamp) {
    if OP.try_with(|op| op.borrow_mut().now = Some(now)).is_err() {
        let _ = BATCH.try_with(|ops| {
            ops.borrow_mut()
                .iter_mut()
                .for_each(|op| op.now = Some(now))
        });
    }
}

/// The requests the current transaction serves: the current request, or the current batch's.
pub fn current() -> Vec<OpContext> {
    if let Ok(op) = OP.try_with(|op| op.borrow().clone()) {
        return vec![op];
    }
    BATCH
        .try_with(|ops| ops.borrow().clone())
        .unwrap_or_default()
}

/// The numbers of the requests the current transaction serves, and the first one's instance
/// and product, without copying their commands.
pub fn current_ids() -> (Vec<u64>, Option<usize>, Option<ProductId>) {
    let of = |ops: &[OpContext]| {
        let first = ops.first();
        (
            ops.iter().map(|op| op.id).collect(),
            first.and_then(|op| op.instance),
            first.and_then(|op| op.product),
        )
    };
    if let Ok(found) = OP.try_with(|op| of(std::slice::from_ref(&*op.borrow()))) {
        return found;
    }
    BATCH.try_with(|ops| of(&ops.borrow())).unwrap_or_default()
}

/// Carries [`OP`] from a queued request's task to its batch's, as [`BATCH`]: a service given it
/// (`Service::with_batch_scope`) has its storage log a batch's transaction for each request.
#[derive(Debug)]
pub struct RequestContexts;

impl BatchScope for RequestContexts {
    fn capture(&self) -> Option<BatchTag> {
        let op = OP.try_with(|op| op.borrow().clone()).ok()?;
        Some(Box::new(op))
    }

    fn scope<'a>(&self, tags: Vec<Option<BatchTag>>, run: BatchRun<'a>) -> BatchRun<'a> {
        let ops: Vec<OpContext> = tags
            .into_iter()
            .flatten()
            .filter_map(|tag| tag.downcast::<OpContext>().ok().map(|op| *op))
            .collect();
        Box::pin(BATCH.scope(RefCell::new(ops), run))
    }
}

/// How one transaction ended, as a storage saw it: what its log entries are made of.
#[derive(Clone, Debug, Default)]
pub struct Ending {
    /// The transaction.
    pub tx: u64,
    /// When it ended, in microseconds from the run's start.
    pub at_us: u64,
    /// Whether it committed writes.
    pub wrote: bool,
    /// The client request keys whose records it found: the requests it answered by replay.
    pub keys_found: BTreeSet<String>,
    /// Holds it inserted (storage ids).
    pub holds_inserted: Vec<u64>,
    /// Orders it inserted (storage ids).
    pub orders_inserted: Vec<u64>,
    /// Products it inserted (storage ids).
    pub products_inserted: Vec<u64>,
    /// Client idempotency keys whose records it wrote.
    pub keys_recorded: Vec<String>,
    /// The product whose rows it wrote: a sweep's transaction is the sweep of that product.
    pub product_written: Option<ProductId>,
}

impl Ending {
    /// The log's entries for the requests `ops` this transaction served: one per request
    /// (several for a batch's transaction, in arrival order, its inserted rows on the first);
    /// always when it wrote, otherwise only for requests a client is answered, where the end is
    /// the point its answer was decided at. Reads write nothing and are answered outside the log
    /// (see [`Read`]).
    pub fn entries(mut self, ops: Vec<OpContext>) -> Vec<Entry> {
        let mut entries = Vec::new();
        for op in ops {
            if !self.wrote && !op.is_answered() {
                continue;
            }
            let Some(command) = op.command else { continue };
            let replayed = op
                .key
                .as_ref()
                .is_some_and(|k| self.keys_found.contains(k.as_str()));
            let command = match (command, self.product_written) {
                // The sweeper commits one product per transaction.
                (Command::Sweep, Some(product_id)) => Command::SweepProduct { product_id },
                (command, _) => command,
            };
            entries.push(Entry {
                tx: self.tx,
                op: op.id,
                command,
                key: op.key,
                now: op.now.unwrap_or_default(),
                at_us: self.at_us,
                wrote: self.wrote,
                replayed,
                holds_inserted: std::mem::take(&mut self.holds_inserted),
                orders_inserted: std::mem::take(&mut self.orders_inserted),
                products_inserted: std::mem::take(&mut self.products_inserted),
                keys_recorded: self.keys_recorded.clone(),
            });
        }
        entries
    }
}

/// One transaction's end for one request it served, in the order the storage saw them. A batch's
/// transaction logs one entry per request, in arrival order, sharing `tx`; its inserted rows are
/// on the first.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The transaction.
    pub tx: u64,
    /// The request it served.
    pub op: u64,
    /// What it did, with the storage's ids.
    pub command: Command,
    /// The client's idempotency key, if the request carried one.
    pub key: Option<IdempotencyKey>,
    /// The clock reading it decided at.
    pub now: Timestamp,
    /// The true simulated time it ended at, in microseconds from the run's start.
    pub at_us: u64,
    /// Whether it committed writes; otherwise it rolled back or committed a read.
    pub wrote: bool,
    /// Whether it answered this request from its idempotency key's record, deciding nothing.
    pub replayed: bool,
    /// Holds it inserted (storage ids).
    pub holds_inserted: Vec<u64>,
    /// Orders it inserted (storage ids).
    pub orders_inserted: Vec<u64>,
    /// Products it inserted (storage ids).
    pub products_inserted: Vec<u64>,
    /// Client idempotency keys whose records it wrote.
    pub keys_recorded: Vec<String>,
}

/// What a client was answered, with the storage's ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A hold granted (or replayed under its key), and the expired holds its decision
    /// released.
    Hold {
        /// The hold.
        hold: Hold,
        /// The holds released first, by id.
        holds_released: Vec<HoldId>,
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
            holds_released: placed.value.holds_released.clone(),
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
            holds_released: placed.holds_released.clone(),
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
    fn of(result: Result<Outcome, Rejection>) -> Result<Answer, String> {
        Ok(match result {
            Ok(Outcome::HoldPlaced {
                hold,
                holds_released,
                replayed,
            }) => Answer::Hold {
                hold,
                holds_released,
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

    /// Holds released in id order: the storage and the ledger list them in their own orders.
    fn normalised(mut self) -> Answer {
        if let Answer::Hold { holds_released, .. } = &mut self {
            holds_released.sort_unstable();
        }
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
        service: &flashsale_server::service::Service<S, C>,
        target: Target,
    ) -> Result<Seen, flashsale_server::service::ServiceError>
    where
        S: flashsale_server::store::Storage + Clone,
        C: flashsale_server::clock::Clock + Clone,
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

/// What `check` checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Answers to commands, each at its request's last log entry.
    pub answers: usize,
    /// Reads, each against the states of its positions.
    pub reads: usize,
}

/// Storage ids to ledger ids, built while replaying.
#[derive(Debug, Default)]
struct Ids {
    products: BTreeMap<u64, ProductId>,
    holds: BTreeMap<u64, HoldId>,
    orders: BTreeMap<u64, OrderId>,
}

impl Ids {
    fn product(&self, id: ProductId) -> Result<ProductId, String> {
        self.products
            .get(&id.0)
            .copied()
            .ok_or(format!("product {id} never committed"))
    }

    /// A hold the storage knows, or an id no replayed hold has (a webhook for a hold that never
    /// existed keeps its number, far above any replayed id).
    fn hold(&self, id: HoldId) -> HoldId {
        self.holds.get(&id.0).copied().unwrap_or(id)
    }

    fn order(&self, id: OrderId) -> Result<OrderId, String> {
        self.orders
            .get(&id.0)
            .copied()
            .ok_or(format!("order {id} never committed"))
    }

    fn command(&self, command: &Command) -> Result<Command, String> {
        Ok(match command.clone() {
            Command::Restock { product_id, qty } => Command::Restock {
                product_id: self.product(product_id)?,
                qty,
            },
            Command::PlaceHold {
                product_id,
                qty,
                ttl_ms,
                key,
            } => Command::PlaceHold {
                product_id: self.product(product_id)?,
                qty,
                ttl_ms,
                key,
            },
            Command::PlaceOrder {
                hold_id,
                payment_window_ms,
                key,
            } => Command::PlaceOrder {
                hold_id: self.hold(hold_id),
                payment_window_ms,
                key,
            },
            Command::ApplyWebhook(payload) => Command::ApplyWebhook(WebhookPayload {
                hold_id: self.hold(payload.hold_id),
                ..payload
            }),
            Command::SweepProduct { product_id } => Command::SweepProduct {
                product_id: self.product(product_id)?,
            },
            other @ (Command::CreateProduct { .. } | Command::Sweep) => other,
        })
    }

    fn order_row(&self, order: &Order) -> Result<Order, String> {
        Ok(Order {
            id: self.order(order.id)?,
            hold_id: self.hold(order.hold_id),
            product_id: self.product(order.product_id)?,
            ..*order
        })
    }

    /// A stored request-key record in the ledger's ids.
    fn request_record(&self, record: &RequestRecord) -> Result<RequestRecord, String> {
        let (request, resource_id) = match record.request {
            KeyedRequest::PlaceHold { product_id, qty } => (
                KeyedRequest::PlaceHold {
                    product_id: self.product(product_id)?,
                    qty,
                },
                self.holds
                    .get(&record.resource_id)
                    .map(|id| id.0)
                    .ok_or(format!("hold {} never committed", record.resource_id))?,
            ),
            KeyedRequest::PlaceOrder { hold_id } => (
                KeyedRequest::PlaceOrder {
                    hold_id: self.hold(hold_id),
                },
                self.order(OrderId(record.resource_id))?.0,
            ),
        };
        Ok(RequestRecord {
            request,
            resource_id,
            ..record.clone()
        })
    }

    fn rejection(&self, rejection: &Rejection) -> Result<Rejection, String> {
        Ok(match rejection.clone() {
            Rejection::UnknownProduct { product_id } => Rejection::UnknownProduct {
                product_id: self.product(product_id)?,
            },
            Rejection::StockOverflow { product_id } => Rejection::StockOverflow {
                product_id: self.product(product_id)?,
            },
            Rejection::UnknownHold { hold_id } => Rejection::UnknownHold {
                hold_id: self.hold(hold_id),
            },
            Rejection::HoldReleased { hold_id } => Rejection::HoldReleased {
                hold_id: self.hold(hold_id),
            },
            Rejection::HoldExpired { hold_id } => Rejection::HoldExpired {
                hold_id: self.hold(hold_id),
            },
            Rejection::TotalOverflow { hold_id } => Rejection::TotalOverflow {
                hold_id: self.hold(hold_id),
            },
            other => other,
        })
    }

    /// A ledger id's storage id, where the storage has one.
    fn back<T: Copy + PartialEq>(map: &BTreeMap<u64, T>, id: T, make: fn(u64) -> T) -> T {
        map.iter()
            .find(|&(_, &v)| v == id)
            .map_or(id, |(&k, _)| make(k))
    }

    /// A ledger's hold row in the storage's ids.
    fn storage_hold(&self, hold: &Hold) -> Hold {
        Hold {
            id: Ids::back(&self.holds, hold.id, HoldId),
            product_id: Ids::back(&self.products, hold.product_id, ProductId),
            state: match hold.state {
                HoldState::Consumed(o) => HoldState::Consumed(Ids::back(&self.orders, o, OrderId)),
                other => other,
            },
            ..*hold
        }
    }

    /// A ledger's order row in the storage's ids.
    fn storage_order(&self, order: &Order) -> Order {
        Order {
            id: Ids::back(&self.orders, order.id, OrderId),
            hold_id: Ids::back(&self.holds, order.hold_id, HoldId),
            product_id: Ids::back(&self.products, order.product_id, ProductId),
            ..*order
        }
    }

    /// An answer of the ledger's in the storage's ids (the API's), where the storage has them.
    fn to_storage(&self, answer: &Answer) -> Answer {
        match answer {
            Answer::Hold {
                hold,
                holds_released,
                replayed,
            } => Answer::Hold {
                hold: self.storage_hold(hold),
                holds_released: holds_released
                    .iter()
                    .map(|&h| Ids::back(&self.holds, h, HoldId))
                    .collect(),
                replayed: *replayed,
            },
            Answer::Order {
                order,
                created,
                replayed,
            } => Answer::Order {
                order: self.storage_order(order),
                created: *created,
                replayed: *replayed,
            },
            Answer::Webhook {
                result,
                order_id: order,
                replayed,
            } => Answer::Webhook {
                result: *result,
                order_id: order.map(|o| Ids::back(&self.orders, o, OrderId)),
                replayed: *replayed,
            },
            other => other.clone(),
        }
    }

    /// What the ledger answers `read` with at its clock reading, in the storage's ids; `None`
    /// where the row it reads does not exist yet (in this state, or in the ledger).
    fn read(&self, ledger: &Ledger, read: &Read) -> Option<Seen> {
        match read.target {
            Target::Product(id) => {
                let id = *self.products.get(&id.0)?;
                let product = ledger.product(id)?;
                Some(Seen::Product {
                    product: Product {
                        id: Ids::back(&self.products, product.id, ProductId),
                        ..product.clone()
                    },
                    available: ledger.available(id, read.now)?,
                })
            }
            Target::Hold(id) => {
                let hold = ledger.hold(*self.holds.get(&id.0)?)?;
                Some(Seen::Hold {
                    hold: self.storage_hold(hold),
                    view: hold.view(read.now),
                })
            }
            Target::Order(id) => {
                let order = ledger.order(*self.orders.get(&id.0)?)?;
                Some(Seen::Order(self.storage_order(order)))
            }
        }
    }

    /// A client's answer in the ledger's ids.
    fn answer(&self, answer: &Answer) -> Result<Answer, String> {
        Ok(match answer {
            Answer::Hold {
                hold,
                holds_released,
                replayed,
            } => Answer::Hold {
                hold: translate_hold(hold, self)?,
                holds_released: holds_released.iter().map(|&id| self.hold(id)).collect(),
                replayed: *replayed,
            },
            Answer::Order {
                order,
                created,
                replayed,
            } => Answer::Order {
                order: self.order_row(order)?,
                created: *created,
                replayed: *replayed,
            },
            Answer::Webhook {
                result,
                order_id,
                replayed,
            } => Answer::Webhook {
                result: *result,
                order_id: order_id.map(|id| self.order(id)).transpose()?,
                replayed: *replayed,
            },
            Answer::Restocked { .. } => answer.clone(),
            Answer::Rejected(rejection) => Answer::Rejected(self.rejection(rejection)?),
        })
    }
}

/// Replays `log` through a fresh ledger, checks every answer in `answers` (by request number)
/// against the ledger's at its request's last entry and every read in `reads` against the
/// states of its positions, and compares the result with `stored`, the storage's final rows.
/// Returns how many answers and reads it checked.
///
/// # Errors
/// The first disagreement: a committed transaction the ledger refuses, a different number of
/// rows created, an answer the ledger would not have given at that point, a read no state of
/// its positions gives, or a final row that differs.
#[allow(
    clippy::result_large_err,
    reason = "a failure ends the run's check: it is returned once, never on a hot path"
)]
pub fn check(
    stored: &Ledger,
    log: &[Entry],
    answers: &BTreeMap<u64, Answer>,
    reads: &[Read],
) -> Result<Checked, Failure> {
    let mut last = BTreeMap::new();
    // One request attempt commits its effect at most once: the service must never run a
    // transaction again after a commit whose answer it lost. (A sweep is one request over many
    // products, a transaction each.)
    let mut committed: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, entry) in log.iter().enumerate() {
        last.insert(entry.op, i);
        let sweeping = matches!(entry.command, Command::Sweep | Command::SweepProduct { .. });
        if entry.wrote
            && !entry.replayed
            && !sweeping
            && let Some(first) = committed.insert(entry.op, i)
        {
            return Err(Failure::new(
                Check::Refinement,
                "request committed twice",
                format!(
                    "request r{} ({}) committed twice, in tx{} and tx{}: a transaction ran \
                     again after a commit that had applied",
                    entry.op,
                    words::command(&entry.command),
                    log[first].tx,
                    entry.tx
                ),
            )
            .at_request(Some(entry.op)));
        }
    }
    let mut ledger = Ledger::new();
    let mut ids = Ids::default();
    let mut checked = 0usize;
    let mut readings = Readings::new(reads);
    let mut start = 0;
    while start < log.len() {
        readings.at(start, &ledger, &ids, log)?;
        // One transaction: one entry, or a batch's entries in arrival order.
        let tx = log[start].tx;
        let end = log[start..]
            .iter()
            .position(|e| e.tx != tx)
            .map_or(log.len(), |n| start + n);
        checked = checked.saturating_add(replay_transaction(
            &mut ledger,
            &mut ids,
            log,
            start..end,
            |i| {
                answers
                    .get(&log[i].op)
                    .filter(|_| last.get(&log[i].op) == Some(&i))
            },
        )?);
        start = end;
    }
    readings.at(log.len(), &ledger, &ids, log)?;
    compare(stored, &ledger, &ids)
        .map_err(|message| Failure::new(Check::Refinement, "final rows differ", message))?;
    Ok(Checked {
        answers: checked,
        reads: readings.checked,
    })
}

/// The reads being checked while the log replays: each is tried at every position from its
/// first to its last, and passes at the first state that gives its answer.
struct Readings<'a> {
    /// By first position.
    waiting: std::iter::Peekable<std::vec::IntoIter<&'a Read>>,
    /// Reads whose first position has passed, not yet matched.
    open: Vec<&'a Read>,
    checked: usize,
}

impl<'a> Readings<'a> {
    fn new(reads: &'a [Read]) -> Self {
        let mut waiting: Vec<&Read> = reads.iter().collect();
        waiting.sort_by_key(|r| r.from);
        Readings {
            waiting: waiting.into_iter().peekable(),
            open: Vec::new(),
            checked: 0,
        }
    }

    /// Tries the open reads against the state at log position `position`.
    #[allow(
        clippy::result_large_err,
        reason = "a failure ends the run's check: it is returned once, never on a hot path"
    )]
    fn at(
        &mut self,
        position: usize,
        ledger: &Ledger,
        ids: &Ids,
        log: &[Entry],
    ) -> Result<(), Failure> {
        while let Some(read) = self.waiting.next_if(|r| r.from <= position) {
            self.open.push(read);
        }
        let mut failed = None;
        let mut checked = 0usize;
        self.open.retain(|read| {
            if ids.read(ledger, read).as_ref() == Some(&read.seen) {
                checked = checked.saturating_add(1);
                false
            } else if read.to <= position {
                if failed.is_none() {
                    failed = Some((*read, ids.read(ledger, read)));
                }
                false
            } else {
                true
            }
        });
        self.checked = self.checked.saturating_add(checked);
        match failed {
            None => Ok(()),
            Some((read, last)) => {
                let tx = |at: usize| {
                    log.get(at)
                        .map_or("the end".to_owned(), |e| format!("tx{}", e.tx))
                };
                Err(Failure::new(
                    Check::Refinement,
                    "read differs",
                    format!(
                        "read r{} ({} at {} on its instance's clock) was answered `{}`, but no \
                         state in commit order from before {} to before {} gives that; the last \
                         one gives `{}`",
                        read.op,
                        words::target(read.target),
                        words::time(read.now),
                        words::seen(&read.seen),
                        tx(read.from),
                        tx(read.to),
                        last.map_or("nothing: no such row".to_owned(), |s| words::seen(&s))
                    ),
                )
                .at_request(Some(read.op)))
            }
        }
    }
}

/// A replay that could not go on: an id the storage never committed, or an outcome no client is
/// answered with.
fn broken(message: String, entry: &Entry) -> Failure {
    Failure::new(Check::Refinement, "replay broken", message).at_request(Some(entry.op))
}

/// Replays the entries `range` of one transaction through `ledger`: each request in order at its
/// clock reading, then (if it wrote) the rows it created against the storage's, then each
/// answered request's answer. Returns how many answers it checked.
#[allow(
    clippy::result_large_err,
    reason = "a failure ends the run's check: it is returned once, never on a hot path"
)]
fn replay_transaction<'a>(
    ledger: &mut Ledger,
    ids: &mut Ids,
    log: &[Entry],
    range: std::ops::Range<usize>,
    answer_of: impl Fn(usize) -> Option<&'a Answer>,
) -> Result<usize, Failure> {
    let first = range.start;
    let wrote = log[first].wrote;
    let alone = range.len() == 1;
    let before = counts(ledger);
    let mut pending = Vec::new();
    let mut checked = 0usize;
    for i in range.clone() {
        let entry = &log[i];
        let answer = answer_of(i);
        if !wrote && answer.is_none() {
            // A rolled-back attempt nobody was answered by has nothing to replay. A replay under
            // a client's key is replayed too: the ledger keeps the keys' records, and answers
            // it from its own.
            continue;
        }
        let command = ids
            .command(&entry.command)
            .map_err(|e| broken(format!("tx{}: {e}", entry.tx), entry))?;
        let result = ledger.apply(entry.now, command.clone());
        if wrote
            && alone
            && let Err(rejection) = &result
        {
            return Err(Failure::new(
                Check::Refinement,
                "commit the replay refuses",
                format!(
                    "request r{} ({} at {}) committed writes in tx{}, but in commit order it is \
                     refused: {} {rejection}",
                    entry.op,
                    words::command(&entry.command),
                    words::time(entry.now),
                    entry.tx,
                    rejection.code()
                ),
            )
            .at_request(Some(entry.op)));
        }
        if let Some(answer) = answer {
            let replayed = Answer::of(result)
                .map_err(|e| broken(e, entry))?
                .normalised();
            pending.push((i, command, answer, replayed));
        }
    }
    if wrote {
        // The ledger allocates each kind's ids densely from 1, so what it created is the ids
        // past the counts from before.
        let after = counts(ledger);
        let new_ids = |from: usize, to: usize| (from as u64 + 1..=to as u64).collect::<Vec<u64>>();
        let products: Vec<ProductId> = new_ids(before.0, after.0)
            .into_iter()
            .map(ProductId)
            .collect();
        let holds: Vec<HoldId> = new_ids(before.1, after.1).into_iter().map(HoldId).collect();
        let orders: Vec<OrderId> = new_ids(before.2, after.2)
            .into_iter()
            .map(OrderId)
            .collect();
        let counts = (products.len(), holds.len(), orders.len());
        let entry = &log[first];
        let stored_counts = (
            entry.products_inserted.len(),
            entry.holds_inserted.len(),
            entry.orders_inserted.len(),
        );
        if counts != stored_counts {
            return Err(Failure::new(
                Check::Refinement,
                "rows inserted differ",
                format!(
                    "tx{} ({}, {} requests) inserted (products, holds, orders) \
                     {stored_counts:?}; in commit order it inserts {counts:?}",
                    entry.tx,
                    words::command(&entry.command),
                    range.len()
                ),
            )
            .at_request(Some(entry.op)));
        }
        ids.products
            .extend(entry.products_inserted.iter().copied().zip(products));
        ids.holds
            .extend(entry.holds_inserted.iter().copied().zip(holds));
        ids.orders
            .extend(entry.orders_inserted.iter().copied().zip(orders));
    }
    for (i, _command, answer, replayed) in pending {
        let entry = &log[i];
        let seen = ids
            .answer(answer)
            .map_err(|e| broken(e, entry))?
            .normalised();
        if seen != replayed {
            let in_storage_ids = ids.to_storage(&replayed);
            return Err(Failure::new(
                Check::Refinement,
                "answer differs",
                format!(
                    "request r{} ({}, decided at {} on its instance's clock in tx{}): the \
                     client was answered `{}`, but in commit order the answer is `{}`",
                    entry.op,
                    words::command(&entry.command),
                    words::time(entry.now),
                    entry.tx,
                    words::answer(&answer.clone().normalised()),
                    words::answer(&in_storage_ids)
                ),
            )
            .at_request(Some(entry.op)));
        }
        checked = checked.saturating_add(1);
    }
    Ok(checked)
}

/// Rows of each kind: products, holds, orders, webhook records.
fn counts(ledger: &Ledger) -> (usize, usize, usize, usize) {
    (
        ledger.products().count(),
        ledger.holds().count(),
        ledger.orders().count(),
        ledger.webhooks().count(),
    )
}

fn compare(stored: &Ledger, replayed: &Ledger, ids: &Ids) -> Result<(), String> {
    for product in stored.products() {
        let id = ids.product(product.id)?;
        let want = replayed
            .product(id)
            .map(|p| (p.stock, p.units_held, p.units_received));
        if want != Some((product.stock, product.units_held, product.units_received)) {
            return Err(format!(
                "product {}: stored {product:?}, replayed {want:?}",
                product.id
            ));
        }
    }
    for hold in stored.holds() {
        let translated = translate_hold(hold, ids)?;
        let want = replayed.hold(translated.id);
        if want != Some(&translated) {
            return Err(format!(
                "hold {}: stored {hold:?}, replayed {want:?}",
                hold.id
            ));
        }
    }
    for order in stored.orders() {
        let translated = ids.order_row(order)?;
        let want = replayed.order(translated.id);
        if want != Some(&translated) {
            return Err(format!(
                "order {}: stored {order:?}, replayed {want:?}",
                order.id
            ));
        }
    }
    for record in stored.webhooks() {
        let order_id = record.order_id.map(|id| ids.order(id)).transpose()?;
        let translated = WebhookRecord {
            hold_id: ids.hold(record.hold_id),
            order_id,
            ..record.clone()
        };
        let want = replayed.webhook(&record.key);
        // The fingerprint covers the hold id as the provider sent it: compare the rest.
        let same = want.is_some_and(|w| {
            (w.hold_id, w.status, w.result, w.order_id, w.received_at)
                == (
                    translated.hold_id,
                    translated.status,
                    translated.result,
                    translated.order_id,
                    translated.received_at,
                )
        });
        if !same {
            return Err(format!(
                "webhook {}: stored {record:?}, replayed {want:?}",
                record.key
            ));
        }
    }
    for record in stored.request_keys() {
        let translated = ids.request_record(record)?;
        let want = replayed.request_key(&record.key);
        if want != Some(&translated) {
            return Err(format!(
                "Idempotency-Key {}: stored {record:?}, replayed {want:?}",
                record.key
            ));
        }
    }
    if stored.request_keys().count() != replayed.request_keys().count() {
        return Err(format!(
            "request-key records: stored {}, replayed {}",
            stored.request_keys().count(),
            replayed.request_keys().count()
        ));
    }
    if counts(stored) != counts(replayed) {
        return Err(format!(
            "row counts: stored {:?}, replayed {:?}",
            counts(stored),
            counts(replayed)
        ));
    }
    Ok(())
}

fn translate_hold(hold: &Hold, ids: &Ids) -> Result<Hold, String> {
    let state = match hold.state {
        HoldState::Consumed(order_id) => HoldState::Consumed(ids.order(order_id)?),
        other => other,
    };
    Ok(Hold {
        id: ids.hold(hold.id),
        product_id: ids.product(hold.product_id)?,
        state,
        ..*hold
    })
}

#[cfg(test)]
mod tests {
    use flashsale_core::Cents;

    use super::*;

    fn entry(op: u64, command: Command, now: u64) -> Entry {
        Entry {
            tx: op,
            replayed: false,
            keys_recorded: vec![],
            op,
            command,
            key: None,
            now: Timestamp(now),
            at_us: now,
            wrote: true,
            holds_inserted: vec![],
            orders_inserted: vec![],
            products_inserted: vec![],
        }
    }

    fn log() -> Vec<Entry> {
        let create = Command::CreateProduct {
            name: "P".into(),
            price_cents: Cents(1),
            stock: Qty(3),
        };
        let hold = Command::PlaceHold {
            product_id: ProductId(7),
            qty: Qty(2),
            ttl_ms: 1_000,
            key: None,
        };
        vec![
            Entry {
                products_inserted: vec![7],
                ..entry(1, create, 0)
            },
            Entry {
                holds_inserted: vec![40],
                ..entry(2, hold, 10)
            },
        ]
    }

    fn stored(qty: u32) -> Ledger {
        let product = flashsale_core::Product {
            id: ProductId(7),
            name: "P".into(),
            price_cents: Cents(1),
            stock: Qty(3),
            // What the replay's grant of 2 leaves, so only the hold can differ.
            units_held: Qty(2),
            units_received: 3,
        };
        let hold = Hold {
            id: HoldId(40),
            product_id: ProductId(7),
            qty: Qty(qty),
            created_at: Timestamp(10),
            expires_at: Timestamp(1_010),
            state: HoldState::Held,
        };
        Ledger::from_rows([product], [hold], [], [])
    }

    #[test]
    fn rows_that_match_the_replay_pass_whatever_their_ids() {
        assert_eq!(
            check(&stored(2), &log(), &BTreeMap::new(), &[]),
            Ok(Checked {
                answers: 0,
                reads: 0
            })
        );
    }

    #[test]
    fn a_row_that_differs_from_the_replay_is_reported() {
        let difference = check(&stored(1), &log(), &BTreeMap::new(), &[])
            .expect_err("qty 1 is not what was decided");
        assert_eq!(difference.kind, "refinement: final rows differ");
        assert!(difference.message.starts_with("hold 40"), "{difference}");
    }

    #[test]
    fn a_commit_the_ledger_refuses_is_reported() {
        let mut log = log();
        log[1].command = Command::PlaceHold {
            product_id: ProductId(7),
            qty: Qty(4),
            ttl_ms: 1_000,
            key: None,
        };
        let difference = check(&stored(2), &log, &BTreeMap::new(), &[])
            .expect_err("4 of 3 units cannot be held");
        assert_eq!(difference.kind, "refinement: commit the replay refuses");
        assert_eq!(difference.request, Some(2));
        assert!(
            difference
                .message
                .contains("POST /api/holds {product_id: 7, qty: 4}"),
            "{difference}"
        );
    }

    fn granted(hold_id: u64, qty: u32) -> Answer {
        Answer::Hold {
            hold: Hold {
                id: HoldId(hold_id),
                product_id: ProductId(7),
                qty: Qty(qty),
                created_at: Timestamp(10),
                expires_at: Timestamp(1_010),
                state: HoldState::Held,
            },
            holds_released: vec![],
            replayed: false,
        }
    }

    #[test]
    fn answers_that_match_the_replay_pass() {
        let answers = BTreeMap::from([(2, granted(40, 2))]);
        assert_eq!(
            check(&stored(2), &log(), &answers, &[]),
            Ok(Checked {
                answers: 1,
                reads: 0
            })
        );
    }

    #[test]
    fn an_answer_other_than_the_replay_is_reported() {
        let answers = BTreeMap::from([(2, granted(40, 1))]);
        let difference =
            check(&stored(2), &log(), &answers, &[]).expect_err("the client saw qty 1");
        assert_eq!(difference.kind, "refinement: answer differs");
        assert_eq!(difference.request, Some(2));
        // In the API's ids: hold 40 of product 7, as the storage numbered them.
        assert!(
            difference.message.contains(
                "answered `201 hold 40 {product_id: 7, qty: 1, expires_at: t-1767225598990ms, \
                 state: held}`, but in commit order the answer is `201 hold 40 {product_id: 7, \
                 qty: 2,"
            ),
            "{difference}"
        );
    }

    #[test]
    fn a_refusal_the_replay_would_not_give_is_reported() {
        // A request for 1 unit, refused at a point where 1 of 3 units was free.
        let mut log = log();
        let ask = Command::PlaceHold {
            product_id: ProductId(7),
            qty: Qty(1),
            ttl_ms: 1_000,
            key: None,
        };
        log.push(Entry {
            wrote: false,
            ..entry(3, ask, 20)
        });
        let refused = Answer::Rejected(Rejection::InsufficientStock {
            requested: Qty(1),
            available: Qty(0),
        });
        let answers = BTreeMap::from([(3, refused)]);
        let difference = check(&stored(2), &log, &answers, &[]).expect_err("a unit was free");
        assert_eq!(difference.request, Some(3));
        assert!(
            difference
                .message
                .contains("answered `insufficient_stock requested 1 units, 0 available`"),
            "{difference}"
        );
        // The same refusal where the ledger refuses too passes, and changes nothing.
        let refused = Answer::Rejected(Rejection::InsufficientStock {
            requested: Qty(2),
            available: Qty(1),
        });
        log[2].command = Command::PlaceHold {
            product_id: ProductId(7),
            qty: Qty(2),
            ttl_ms: 1_000,
            key: None,
        };
        let answers = BTreeMap::from([(3, refused)]);
        assert_eq!(
            check(&stored(2), &log, &answers, &[]),
            Ok(Checked {
                answers: 1,
                reads: 0
            })
        );
    }

    /// How many of `reads` the check over `log()` and `stored(2)` passed, or its failure.
    #[allow(
        clippy::result_large_err,
        reason = "a test helper handing back the check's own failure"
    )]
    fn reads_checked(reads: &[Read]) -> Result<usize, Failure> {
        check(&stored(2), &log(), &BTreeMap::new(), reads).map(|c| c.reads)
    }

    /// Product 7 as the storage has it after `log()`'s hold of 2, and a read of it.
    fn product_read(now: u64, from: usize, available: u32, units_held: u32) -> Read {
        Read {
            op: 9,
            target: Target::Product(ProductId(7)),
            now: Timestamp(now),
            from,
            to: 2,
            seen: Seen::Product {
                product: flashsale_core::Product {
                    id: ProductId(7),
                    name: "P".into(),
                    price_cents: Cents(1),
                    stock: Qty(3),
                    units_held: Qty(units_held),
                    units_received: 3,
                },
                available: Qty(available),
            },
        }
    }

    #[test]
    fn a_read_at_a_hold_deadline_must_count_the_hold_free() {
        // Hold 40 of 2 units expires at 1010: a read then sees all 3 units free.
        let reads = [product_read(1_010, 1, 3, 2)];
        assert_eq!(reads_checked(&reads), Ok(1));
        // Counting it held, one millisecond too long, matches no state.
        let reads = [product_read(1_010, 1, 1, 2)];
        let difference = reads_checked(&reads).expect_err("the hold is free at its deadline");
        assert_eq!(difference.kind, "refinement: read differs");
        assert_eq!(difference.request, Some(9));
        assert!(
            difference.message.contains("available 1`, but no state")
                && difference.message.ends_with("available 3`"),
            "{difference}"
        );
        // One millisecond before, it is held.
        let reads = [product_read(1_009, 1, 1, 2)];
        assert_eq!(reads_checked(&reads), Ok(1));
    }

    #[test]
    fn a_read_may_show_any_state_of_its_window_and_no_other() {
        // Before the hold: 3 available and none held. From position 1 that state is in the
        // window; from position 2 only the state after the hold is.
        let before_the_hold = product_read(500, 1, 3, 0);
        assert_eq!(reads_checked(&[before_the_hold]), Ok(1));
        let too_old = product_read(500, 2, 3, 0);
        let difference = reads_checked(&[too_old])
            .expect_err("the state before the hold is older than the read's window");
        assert_eq!(difference.kind, "refinement: read differs");
    }

    #[test]
    fn a_hold_read_is_checked_with_its_view_at_the_reading() {
        let read = |now: u64, view: HoldView| Read {
            op: 9,
            target: Target::Hold(HoldId(40)),
            now: Timestamp(now),
            from: 2,
            to: 2,
            seen: Seen::Hold {
                hold: Hold {
                    id: HoldId(40),
                    product_id: ProductId(7),
                    qty: Qty(2),
                    created_at: Timestamp(10),
                    expires_at: Timestamp(1_010),
                    state: HoldState::Held,
                },
                view,
            },
        };
        let ok = [read(1_009, HoldView::Held), read(1_010, HoldView::Expired)];
        assert_eq!(reads_checked(&ok), Ok(2));
        let wrong = [read(1_010, HoldView::Held)];
        let difference = reads_checked(&wrong).expect_err("held past its deadline");
        assert!(difference.message.contains("shown as held"), "{difference}");
    }
}
