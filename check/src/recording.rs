//! Recording what a storage did, for the commit-order replay: each request runs inside [`OP`],
//! a task-local naming its number and command (a batch's transaction sees its requests'
//! contexts in [`BATCH`]); the instance's clock notes every reading in it, and a storage turns
//! each transaction's end ([`Ending`]) into the log's [`Entry`]s for the requests it served: a
//! commit that wrote (with the rows it inserted), and, for requests a client is answered, a
//! commit without writes or a rollback. A request's last entry is where its answer was decided.

use std::cell::RefCell;
use std::collections::BTreeSet;

use flashsale_core::{Command, HoldId, IdempotencyKey, OrderId, ProductId, Timestamp};
use flashsale_service::{BatchRun, BatchScope, BatchTag};

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
            | Command::SweepProduct { product_id, .. } => Some(*product_id),
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

/// The instance whose committer runs the current batch, when a batch (not one request alone)
/// is current.
pub fn batch_instance() -> Option<usize> {
    BATCH
        .try_with(|ops| ops.borrow().first().and_then(|op| op.instance))
        .ok()
        .flatten()
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
    /// The product whose rows it wrote: a sweep's transaction is the sweep of that product.
    pub product_written: Option<ProductId>,
    /// Holds its locking reads by id asked for (storage ids): those a sweep's transaction named.
    pub holds_locked: Vec<u64>,
    /// Orders its locking reads by id asked for (storage ids): those a sweep's transaction
    /// named.
    pub orders_locked: Vec<u64>,
}

impl Ending {
    /// The command the transaction decided for a request that asked `command`: the sweeper asks
    /// for a sweep and commits one product per transaction, naming the holds and orders its
    /// locking reads asked for; any other command is itself.
    pub fn decided(&self, command: Command, product: Option<ProductId>) -> Command {
        match (command, product) {
            (Command::Sweep, Some(product_id)) => Command::SweepProduct {
                product_id,
                holds: self.holds_locked.iter().copied().map(HoldId).collect(),
                orders: self.orders_locked.iter().copied().map(OrderId).collect(),
            },
            (command, _) => command,
        }
    }

    /// The log's entries for the requests `ops` this transaction served: one per request
    /// (several for a batch's transaction, in arrival order, its inserted rows on the first);
    /// always when it wrote, otherwise only for requests a client is answered, where the end is
    /// the point its answer was decided at. Reads write nothing and are answered outside the log
    /// (see [`crate::history::Read`]).
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
            let command = self.decided(command, self.product_written);
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
}
