//! The in-memory ledger: products, holds, orders, webhook and request-key records, and the one
//! entry point [`Ledger::apply`] that runs a command through the one driver the SQL server runs,
//! [`decide`]: load its [`Plan`](crate::Plan)'s rows, [`execute`](crate::execute()), write the
//! [`WriteSet`], in a transaction of the ledger's own that stages its writes until it commits.
//!
//! Rows live in dense tables indexed by id (each kind has its own sequence from 1, as a database
//! table does), so a lookup is an index, not a search. The products' expiry buckets are rows too,
//! by product and deadline. Two indexes sit beside the rows so that no command scans every hold:
//! the held holds of each product ordered by deadline (where the sweep finds the holds to retire),
//! and the pre-payment orders ordered by payment deadline. Both are derived from the rows and
//! checked against them in debug builds.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::task::{Context, Poll, Waker};

use crate::command::Command;
use crate::driver::{Decided, Steps, decide};
use crate::errors::{Refusal, Rejection, Violation};
use crate::hold;
use crate::ids::{HoldId, IdempotencyKey, OrderId, ProductId, Qty};
use crate::invariants::{self, Stored};
use crate::outcome::Outcome;
use crate::plan::{Load, Loaded};
use crate::product;
use crate::rows::expiry::{DUE_BUCKETS_MAX, ExpiryBucket, Folded};
use crate::rows::hold::{Hold, HoldState};
use crate::rows::order::{Order, OrderStatus};
use crate::rows::payment::WebhookRecord;
use crate::rows::product::Product;
use crate::rows::request::RequestRecord;
use crate::time::{Timestamp, is_past};
use crate::writes::{BucketRead, Inserted, Put, Tables, WriteSet, lay};

/// Adds a product's sweep transaction's outcome to the whole sweep's; returns whether it changed
/// anything.
fn add_swept(swept: &mut Outcome, outcome: Outcome) -> bool {
    let (
        Outcome::Swept {
            folded,
            holds_retired,
            orders_cancelled,
        },
        Outcome::Swept {
            folded: more,
            holds_retired: retired,
            orders_cancelled: cancelled,
        },
    ) = (swept, outcome)
    else {
        panic!("a sweep answers Swept");
    };
    let changed = !more.is_empty() || !retired.is_empty() || !cancelled.is_empty();
    folded.holds = folded.holds.saturating_add(more.holds);
    folded.units = folded.units.saturating_add(more.units);
    holds_retired.extend(retired);
    orders_cancelled.extend(cancelled);
    changed
}

/// A refusal of the ledger's own decision: a rejection is answered; a violation means the
/// ledger's own rows are corrupt, which is a bug.
fn refused(refusal: Refusal) -> Rejection {
    match refusal {
        Refusal::Rejected(rejection) => rejection,
        Refusal::Violated(violation) => panic!("ledger corrupt: {violation}"),
    }
}

/// The held holds of one product in deadline order (their units are the product's
/// `units_held` counter).
///
/// A queue, because deadlines mostly arrive in order (`now + ttl` with a steady clock): a grant
/// appends, and releasing expired holds pops from the front. A hold that leaves held another way
/// (an order, a failed payment) stays in the queue as a dead entry and is dropped when it reaches
/// the front, so no removal searches the middle. Entries are live when their hold is still held.
#[derive(Clone, Debug, Default)]
struct HeldIndex {
    by_expiry: VecDeque<(Timestamp, HoldId)>,
}

impl HeldIndex {
    fn insert(&mut self, hold: &Hold) {
        let entry = (hold.expires_at, hold.id);
        // A clock that stepped back, or a shorter TTL, puts a deadline before the last one.
        match self.by_expiry.back() {
            Some(&last) if last > entry => {
                let at = self.by_expiry.partition_point(|&e| e < entry);
                self.by_expiry.insert(at, entry);
            }
            _ => self.by_expiry.push_back(entry),
        }
    }

    /// The live entries, in deadline order.
    fn live<'a>(&'a self, holds: &'a Table<Hold>) -> impl Iterator<Item = &'a Hold> + 'a {
        self.by_expiry
            .iter()
            .filter_map(|&(_, id)| holds.get(id.0))
            .filter(|h| is_held(h))
    }
}

fn is_held(hold: &Hold) -> bool {
    hold.state == HoldState::Held
}

/// Rows by id: row `id` lives at index `id - 1`; ids a database skipped are `None`. Ids are
/// allocated from 1 in sequence, so the table stays dense.
#[derive(Clone, Debug)]
struct Table<R> {
    rows: Vec<Option<R>>,
    len: usize,
}

impl<R> Default for Table<R> {
    fn default() -> Self {
        Table {
            rows: Vec::new(),
            len: 0,
        }
    }
}

impl<R> Table<R> {
    fn index(id: u64) -> Option<usize> {
        usize::try_from(id.checked_sub(1)?).ok()
    }

    fn get(&self, id: u64) -> Option<&R> {
        self.rows.get(Self::index(id)?)?.as_ref()
    }

    /// The id the next inserted row gets.
    fn next_id(&self) -> u64 {
        u64::try_from(self.rows.len())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn insert(&mut self, id: u64, row: R) {
        let index = Self::index(id).unwrap_or_else(|| panic!("row id {id} out of range"));
        if index >= self.rows.len() {
            self.rows.resize_with(index.saturating_add(1), || None);
        }
        if self.rows[index].replace(row).is_none() {
            self.len = self.len.saturating_add(1);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &R> {
        self.rows.iter().flatten()
    }
}

/// Every row of the service, in memory. Each kind of row has its own id sequence from 1.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    products: Table<Product>,
    holds: Table<Hold>,
    orders: Table<Order>,
    webhooks: BTreeMap<IdempotencyKey, WebhookRecord>,
    request_keys: BTreeMap<IdempotencyKey, RequestRecord>,
    buckets: BTreeMap<(ProductId, Timestamp), ExpiryBucket>,
    held: BTreeMap<ProductId, HeldIndex>,
    due: BTreeSet<(Timestamp, OrderId)>,
}

/// How many holds, and how many orders, one of the ledger's own sweep transactions names at
/// most ([`Command::Sweep`] runs as many as it takes), as the server's sweeper chunks its own.
const SWEEP_CHUNK: usize = 1_000;

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// A ledger holding these rows, for checking a database's contents with the same code.
    /// New ids of each kind continue after the largest present. Its expiry buckets are none:
    /// [`Ledger::with_buckets`] gives them.
    pub fn from_rows(
        products: impl IntoIterator<Item = Product>,
        holds: impl IntoIterator<Item = Hold>,
        orders: impl IntoIterator<Item = Order>,
        webhooks: impl IntoIterator<Item = WebhookRecord>,
    ) -> Self {
        let mut ledger = Ledger::new();
        products
            .into_iter()
            .for_each(|p| ledger.products.insert(p.id.0, p));
        holds
            .into_iter()
            .for_each(|h| ledger.holds.insert(h.id.0, h));
        orders
            .into_iter()
            .for_each(|o| ledger.orders.insert(o.id.0, o));
        ledger.webhooks = webhooks.into_iter().map(|w| (w.key.clone(), w)).collect();
        ledger.held = ledger.held_index_from_rows();
        ledger.due = ledger.due_index_from_rows();
        ledger
    }

    /// The same ledger with these expiry buckets.
    pub fn with_buckets(mut self, buckets: impl IntoIterator<Item = ExpiryBucket>) -> Self {
        self.buckets = buckets.into_iter().map(|b| (b.key(), b)).collect();
        self
    }

    /// The same ledger with these client request-key records.
    pub fn with_request_keys(mut self, records: impl IntoIterator<Item = RequestRecord>) -> Self {
        self.request_keys = records.into_iter().map(|r| (r.key.clone(), r)).collect();
        self
    }

    /// Applies `command` at `now` through the one driver: loads its plan's rows, decides it
    /// ([`execute`](crate::execute())), and writes the write-set. A rejection changes nothing.
    ///
    /// In debug builds every call ends by checking the invariants and the indexes, and panics on a
    /// violation: corrupt state is a bug, never a condition to handle.
    ///
    /// # Errors
    /// The command's [`Rejection`], as documented on each decision.
    pub fn apply(&mut self, now: Timestamp, command: Command) -> Result<Outcome, Rejection> {
        let outcome = match command {
            Command::Sweep => Ok(self.sweep(now)),
            command => {
                let mut answers = self.execute(now, std::slice::from_ref(&command));
                answers
                    .pop()
                    .unwrap_or_else(|| panic!("one answer per command"))
            }
        };
        self.check_in_debug(now);
        outcome
    }

    /// Applies `commands` as one batch at `now`, as the service's group commit does: one plan,
    /// one [`execute`](crate::execute()), one write-set. Returns one answer per command, in order.
    ///
    /// # Panics
    /// On a [`Command::Sweep`], which is not batched; in debug
    /// builds, on a broken invariant afterwards.
    pub fn apply_batch(
        &mut self,
        now: Timestamp,
        commands: &[Command],
    ) -> Vec<Result<Outcome, Rejection>> {
        let answers = self.execute(now, commands);
        self.check_in_debug(now);
        answers
    }

    /// Runs `commands` through [`decide`] in one transaction of the ledger's own
    /// ([`LedgerTx`]): committed, or rolled back and decided again in two parts when the batch
    /// is stale, as a storage's would be.
    fn execute(&mut self, now: Timestamp, commands: &[Command]) -> Vec<Result<Outcome, Rejection>> {
        let mut tx = LedgerTx {
            ledger: self,
            now,
            staged: Vec::new(),
        };
        let decided = at_once(decide(&mut tx, commands));
        let decided = decided.unwrap_or_else(|v| panic!("ledger corrupt: {v}"));
        let staged = tx.staged;
        match decided {
            Decided::SplitAt(split) => {
                let (before, after) = commands.split_at(split);
                let mut answers = self.execute(now, before);
                answers.extend(self.execute(now, after));
                answers
            }
            Decided::Answers { answers, .. } => {
                staged.into_iter().for_each(|put| self.put(put));
                let answers = answers.into_iter();
                answers.map(|answer| answer.map_err(refused)).collect()
            }
        }
    }

    fn check_in_debug(&self, now: Timestamp) {
        if cfg!(debug_assertions) {
            if let Err(violation) = self.check_invariants() {
                panic!("invariant violated after apply at {now}: {violation}");
            }
            assert_eq!(
                self.held_live(),
                self.held_from_rows(),
                "held index matches the rows"
            );
            assert_eq!(
                self.due,
                self.due_index_from_rows(),
                "due index matches the rows"
            );
        }
    }

    /// The earliest instant at which a [`Command::Sweep`] would change something: the first
    /// deadline of a held hold or a pre-payment order. `None` when nothing is pending.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let holds = self
            .held
            .values()
            .filter_map(|index| index.live(&self.holds).next());
        let hold_first = holds.map(|hold| hold.expires_at).min();
        let order_first = self.due.first().map(|&(at, _)| at);
        hold_first.into_iter().chain(order_first).min()
    }

    /// Checks docs/DESIGN.md's invariants on the rows alone, with no clock.
    ///
    /// # Errors
    /// The first [`Violation`] found, naming the rows involved.
    pub fn check_invariants(&self) -> Result<(), Violation> {
        invariants::check(self)
    }

    /// A product.
    pub fn product(&self, id: ProductId) -> Option<&Product> {
        self.products.get(id.0)
    }

    /// Units of a product available to a new hold at `now`, without folding anything: its
    /// counters and the first [`DUE_BUCKETS_MAX`] buckets due, as a storage's product read.
    pub fn available(&self, id: ProductId, now: Timestamp) -> Option<Qty> {
        let product = self.products.get(id.0)?;
        let now = product.decision_time(now);
        let units_due = hold::due_units(product, &self.due_buckets(id, now), now);
        let available = units_due.and_then(|units| product::available(product, units));
        Some(available.unwrap_or_else(|v| panic!("ledger corrupt: {v}")))
    }

    /// The earliest deadline after `now` (the product's decision time) of a bucket of the
    /// product: when its availability next changes without a write.
    pub fn next_bucket(&self, id: ProductId, now: Timestamp) -> Option<Timestamp> {
        let product = self.products.get(id.0)?;
        let now = product.decision_time(now);
        let after = (id, Timestamp(now.as_ms().saturating_add(1)));
        let bucket = self.buckets.range(after..=(id, Timestamp(u64::MAX))).next();
        let open = product.live_bucket().map(|open| open.expires_at);
        let open = open.filter(|&at| !is_past(at, now));
        bucket.map(|(&(_, at), _)| at).into_iter().chain(open).min()
    }

    /// A hold.
    pub fn hold(&self, id: HoldId) -> Option<&Hold> {
        self.holds.get(id.0)
    }

    /// An order.
    pub fn order(&self, id: OrderId) -> Option<&Order> {
        self.orders.get(id.0)
    }

    /// A webhook record.
    pub fn webhook(&self, key: &IdempotencyKey) -> Option<&WebhookRecord> {
        self.webhooks.get(key)
    }

    /// Every product, by id.
    pub fn products(&self) -> impl Iterator<Item = &Product> {
        self.products.iter()
    }

    /// Every hold, by id.
    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.iter()
    }

    /// Every order, by id.
    pub fn orders(&self) -> impl Iterator<Item = &Order> {
        self.orders.iter()
    }

    /// Every webhook record, by key.
    pub fn webhooks(&self) -> impl Iterator<Item = &WebhookRecord> {
        self.webhooks.values()
    }

    /// Every expiry bucket, by product and deadline.
    pub fn buckets(&self) -> impl Iterator<Item = &ExpiryBucket> {
        self.buckets.values()
    }

    /// A client request key's record.
    pub fn request_key(&self, key: &IdempotencyKey) -> Option<&RequestRecord> {
        self.request_keys.get(key)
    }

    /// Every client request-key record, by key.
    pub fn request_keys(&self) -> impl Iterator<Item = &RequestRecord> {
        self.request_keys.values()
    }

    /// Folds due buckets, retires holds expired for good and cancels overdue orders of every
    /// product, in [`Command::SweepProduct`] transactions of at most [`SWEEP_CHUNK`] holds and
    /// orders each, as the server's sweeper commits them, until nothing is left. As the
    /// sweeper, it visits the products that have, by the clock's `now`, a bucket due or an order
    /// overdue, and those with holds to retire; each transaction then decides at its product's
    /// decision time.
    fn sweep(&mut self, now: Timestamp) -> Outcome {
        let overdue = self
            .due
            .iter()
            .take_while(|&&(due_at, _)| is_past(due_at, now));
        let mut product_ids: BTreeSet<ProductId> = overdue
            .filter_map(|&(_, id)| self.orders.get(id.0))
            .map(|order| order.product_id)
            .collect();
        let due = self.buckets.values().filter(|b| is_past(b.expires_at, now));
        product_ids.extend(due.map(|bucket| bucket.product_id));
        let to_retire = self.products.iter().filter(|p| p.holds_to_retire > 0);
        product_ids.extend(to_retire.map(|product| product.id));
        let open_due = (self.products.iter()).filter(|p| {
            p.live_bucket()
                .is_some_and(|open| is_past(open.expires_at, now))
        });
        product_ids.extend(open_due.map(|product| product.id));
        let mut swept = Outcome::Swept {
            folded: Folded::default(),
            holds_retired: Vec::new(),
            orders_cancelled: Vec::new(),
        };
        for product_id in product_ids {
            while let Some(command) = self.sweep_of(product_id, now) {
                let before = self.product(product_id).map(Product::counters);
                let mut answers = self.execute(now, std::slice::from_ref(&command));
                let Some(Ok(outcome)) = answers.pop() else {
                    panic!("ledger sweep refused: {command:?}");
                };
                let folded = self.product(product_id).map(Product::counters) != before;
                if !add_swept(&mut swept, outcome) && !folded {
                    break;
                }
            }
        }
        if let Outcome::Swept {
            holds_retired,
            orders_cancelled,
            ..
        } = &mut swept
        {
            holds_retired.sort_unstable();
            orders_cancelled.sort_unstable();
        }
        swept
    }

    /// The product's next sweep transaction at `now`: its held holds whose deadline has passed
    /// at its decision time and its overdue orders, a chunk of each in deadline order; `None`
    /// when it has neither and no bucket due.
    fn sweep_of(&self, product_id: ProductId, now: Timestamp) -> Option<Command> {
        let now = self.products.get(product_id.0)?.decision_time(now);
        let holds: Vec<HoldId> = self.held.get(&product_id).map_or_else(Vec::new, |index| {
            (index.live(&self.holds))
                .take_while(|hold| hold.is_expired(now))
                .take(SWEEP_CHUNK)
                .map(|hold| hold.id)
                .collect()
        });
        let overdue = self.due.iter().take_while(|&&(at, _)| is_past(at, now));
        let orders: Vec<OrderId> = (overdue.filter_map(|&(_, id)| self.orders.get(id.0)))
            .filter(|order| order.product_id == product_id)
            .take(SWEEP_CHUNK)
            .map(|order| order.id)
            .collect();
        let open = self
            .products
            .get(product_id.0)
            .and_then(Product::live_bucket);
        let due = !self.due_buckets(product_id, now).is_empty()
            || open.is_some_and(|open| is_past(open.expires_at, now));
        (due || !holds.is_empty() || !orders.is_empty()).then_some(Command::SweepProduct {
            product_id,
            holds,
            orders,
        })
    }

    fn read(&self, load: &Load, now: Timestamp) -> Loaded<'_> {
        let hold = |id: &HoldId| self.holds.get(id.0).copied();
        let order = |id: &OrderId| self.orders.get(id.0).copied();
        match load {
            Load::FirstProduct => {
                Loaded::Products(self.products.iter().take(1).map(Cow::Borrowed).collect())
            }
            Load::RequestKeys(keys) => Loaded::RequestKeys(
                keys.iter()
                    .filter_map(|k| self.request_keys.get(k).cloned())
                    .collect(),
            ),
            Load::FindHolds(ids) => Loaded::Holds(ids.iter().filter_map(hold).collect()),
            Load::Products(ids) => Loaded::Products(
                ids.iter()
                    .filter_map(|id| self.products.get(id.0).map(Cow::Borrowed))
                    .collect(),
            ),
            Load::Holds(ids) => Loaded::Holds(ids.iter().filter_map(|(_, id)| hold(id)).collect()),
            Load::Orders(ids) => {
                Loaded::Orders(ids.iter().filter_map(|(_, id)| order(id)).collect())
            }
            Load::DueBuckets(ids) => Loaded::Buckets(
                ids.iter()
                    .flat_map(|&id| self.due_buckets(id, now))
                    .collect(),
            ),
            Load::Webhooks(keys) => Loaded::Webhooks(
                keys.iter()
                    .filter_map(|k| self.webhooks.get(k).map(Cow::Borrowed))
                    .collect(),
            ),
        }
    }

    /// The product's first [`DUE_BUCKETS_MAX`] expiry buckets due at `now`, in deadline order.
    fn due_buckets(&self, product_id: ProductId, now: Timestamp) -> Vec<ExpiryBucket> {
        let range = (product_id, Timestamp(0))..=(product_id, now);
        (self.buckets.range(range).map(|(_, bucket)| *bucket))
            .take(DUE_BUCKETS_MAX)
            .collect()
    }

    /// Applies a write-set: the one place the ledger changes rows, laid by [`lay`] as every
    /// in-memory view of the rows lays one. Returns the ids it assigned.
    ///
    /// # Panics
    /// If the write-set names rows that are missing or not in the state it expects: decisions
    /// only write what they read, so this is a bug.
    pub fn write(&mut self, writes: &WriteSet) -> Inserted {
        let mut writing = Writing {
            ledger: self,
            staged: Vec::new(),
        };
        let mut inserted = Inserted::default();
        let laid = lay(&mut writing, writes, &mut inserted);
        laid.unwrap_or_else(|v| panic!("the ledger's write-set does not fit its rows: {v}"));
        let staged = writing.staged;
        staged.into_iter().for_each(|put| self.put(put));
        inserted
    }

    /// Stores a row a write-set put, keeping the indexes in step with the rows.
    fn put(&mut self, row: Put) {
        match row {
            Put::Product(product) => self.products.insert(product.id.0, product),
            Put::Bucket(bucket) => {
                self.buckets.insert(bucket.key(), bucket);
            }
            Put::BucketGone(product_id, expires_at) => {
                self.buckets.remove(&(product_id, expires_at));
            }
            Put::Hold(hold) => self.put_hold(hold),
            Put::Order(order) => self.put_order(order),
            Put::Webhook(record) => {
                self.webhooks.insert(record.key.clone(), record);
            }
            Put::RequestKey(record) => {
                self.request_keys.insert(record.key.clone(), record);
            }
        }
    }

    /// Stores a hold. A hold that becomes held joins its product's queue; one that leaves held
    /// leaves its entry dead, and dead entries at the front of the queue are dropped.
    fn put_hold(&mut self, hold: Hold) {
        let was_held = self.holds.get(hold.id.0).is_some_and(is_held);
        let product_id = hold.product_id;
        if is_held(&hold) && !was_held {
            self.held.entry(product_id).or_default().insert(&hold);
        }
        self.holds.insert(hold.id.0, hold);
        if !was_held || is_held(&hold) {
            return;
        }
        let Some(index) = self.held.get_mut(&product_id) else {
            panic!("held index lost product {product_id}");
        };
        while let Some(&(_, id)) = index.by_expiry.front() {
            if self.holds.get(id.0).is_some_and(is_held) {
                break;
            }
            index.by_expiry.pop_front();
        }
        if index.by_expiry.is_empty() {
            self.held.remove(&product_id);
        }
    }

    /// Stores an order; the due index holds the pre-payment ones.
    fn put_order(&mut self, order: Order) {
        let was = self.orders.get(order.id.0).copied();
        if let Some(was) = was.filter(|o| o.status == OrderStatus::PrePayment) {
            self.due.remove(&(was.payment_due_at, was.id));
        }
        if order.status == OrderStatus::PrePayment {
            self.due.insert((order.payment_due_at, order.id));
        }
        self.orders.insert(order.id.0, order);
    }

    fn held_index_from_rows(&self) -> BTreeMap<ProductId, HeldIndex> {
        let mut held: BTreeMap<ProductId, HeldIndex> = BTreeMap::new();
        let mut rows: Vec<&Hold> = self.holds.iter().filter(|h| is_held(h)).collect();
        rows.sort_by_key(|h| (h.expires_at, h.id));
        for hold in rows {
            held.entry(hold.product_id).or_default().insert(hold);
        }
        held
    }

    /// The held index's live entries, for comparing with the rows.
    fn held_live(&self) -> BTreeMap<ProductId, Vec<(Timestamp, HoldId)>> {
        let live = self.held.iter().map(|(&product_id, index)| {
            let entries: Vec<_> = index
                .live(&self.holds)
                .map(|h| (h.expires_at, h.id))
                .collect();
            (product_id, entries)
        });
        // A queue of dead entries only is bookkeeping, not state.
        live.filter(|(_, entries)| !entries.is_empty()).collect()
    }

    /// What [`Self::held_live`] must be, recomputed from the rows.
    fn held_from_rows(&self) -> BTreeMap<ProductId, Vec<(Timestamp, HoldId)>> {
        let mut held: BTreeMap<ProductId, Vec<(Timestamp, HoldId)>> = BTreeMap::new();
        for hold in self.holds.iter().filter(|h| is_held(h)) {
            held.entry(hold.product_id)
                .or_default()
                .push((hold.expires_at, hold.id));
        }
        held.values_mut()
            .for_each(|entries| entries.sort_unstable());
        held
    }

    fn due_index_from_rows(&self) -> BTreeSet<(Timestamp, OrderId)> {
        let pending = self
            .orders
            .iter()
            .filter(|o| o.status == OrderStatus::PrePayment);
        pending.map(|o| (o.payment_due_at, o.id)).collect()
    }
}

/// A transaction of the ledger's: its loads lend the ledger's rows, its write stages the rows a
/// write-set puts, and the ledger puts them once the transaction commits.
struct LedgerTx<'l> {
    ledger: &'l Ledger,
    now: Timestamp,
    staged: Vec<Put>,
}

impl Steps for LedgerTx<'_> {
    type Error = Violation;

    fn now(&mut self) -> Timestamp {
        self.now
    }

    fn load(
        &mut self,
        load: &Load,
        now: Option<Timestamp>,
    ) -> impl Future<Output = Result<Loaded<'static>, Violation>> + Send {
        let loaded = self.ledger.read(load, now.unwrap_or(self.now));
        std::future::ready(Ok(loaded.into_owned()))
    }

    fn write(
        &mut self,
        writes: &WriteSet,
    ) -> impl Future<Output = Result<Inserted, Violation>> + Send {
        let mut writing = Writing {
            ledger: self.ledger,
            staged: Vec::new(),
        };
        let mut inserted = Inserted::default();
        let laid = lay(&mut writing, writes, &mut inserted);
        self.staged = writing.staged;
        std::future::ready(laid.map(|()| inserted))
    }
}

/// Runs a future whose steps never wait (the ledger's are in memory) to its end.
fn at_once<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("an in-memory step of the ledger waited"),
    }
}

/// The ledger's tables as a write-set is laid over them: read as they are, with the rows it
/// puts staged until the ledger puts them.
struct Writing<'l> {
    ledger: &'l Ledger,
    staged: Vec<Put>,
}

impl Tables for Writing<'_> {
    type Error = Violation;

    fn product(&self, id: ProductId) -> Option<Product> {
        self.ledger.products.get(id.0).cloned()
    }

    fn bucket(&self, product_id: ProductId, expires_at: Timestamp) -> BucketRead {
        let bucket = self.ledger.buckets.get(&(product_id, expires_at));
        bucket.map_or(BucketRead::Absent, |bucket| BucketRead::Row(*bucket))
    }

    fn hold(&self, id: HoldId) -> Option<Hold> {
        self.ledger.holds.get(id.0).copied()
    }

    fn order(&self, id: OrderId) -> Option<Order> {
        self.ledger.orders.get(id.0).copied()
    }

    /// Dense: after the last hold, and the ones assigned before it.
    fn new_hold_id(&mut self, assigned: &Inserted) -> HoldId {
        let before = u64::try_from(assigned.holds.len()).unwrap_or(u64::MAX);
        HoldId(self.ledger.holds.next_id().saturating_add(before))
    }

    /// Dense, as holds.
    fn new_order_id(&mut self, assigned: &Inserted) -> OrderId {
        let before = u64::try_from(assigned.orders.len()).unwrap_or(u64::MAX);
        OrderId(self.ledger.orders.next_id().saturating_add(before))
    }

    /// Dense, as holds.
    fn new_product_id(&mut self, assigned: &Inserted) -> ProductId {
        let before = u64::try_from(assigned.products.len()).unwrap_or(u64::MAX);
        ProductId(self.ledger.products.next_id().saturating_add(before))
    }

    fn put(&mut self, row: Put) -> Result<(), Violation> {
        self.staged.push(row);
        Ok(())
    }
}

impl Stored for Ledger {
    fn products(&self) -> impl Iterator<Item = &Product> {
        Ledger::products(self)
    }

    fn holds(&self) -> impl Iterator<Item = &Hold> {
        Ledger::holds(self)
    }

    fn orders(&self) -> impl Iterator<Item = &Order> {
        Ledger::orders(self)
    }

    fn webhooks(&self) -> impl Iterator<Item = &WebhookRecord> {
        Ledger::webhooks(self)
    }

    fn request_keys(&self) -> impl Iterator<Item = &RequestRecord> {
        Ledger::request_keys(self)
    }

    fn buckets(&self) -> impl Iterator<Item = &ExpiryBucket> {
        Ledger::buckets(self)
    }

    fn product(&self, id: ProductId) -> Option<&Product> {
        Ledger::product(self, id)
    }

    fn hold(&self, id: HoldId) -> Option<&Hold> {
        Ledger::hold(self, id)
    }

    fn order(&self, id: OrderId) -> Option<&Order> {
        Ledger::order(self, id)
    }
}
