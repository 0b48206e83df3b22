//! Which rows a batch of commands reads, in the global lock order ([`crate::locks`]), and the
//! most it may read and write ([`Budget`]).
//!
//! A [`Plan`] is made from the commands one transaction decides (one, or a batch of any kinds
//! and products) and asked for its next [`Load`] with the [`Rows`] loaded so far, until it needs
//! nothing more. Each load reads every row of one kind the batch needs at once, so a storage can
//! read them in one statement, and the loads come in the lock order:
//!
//! 1. the client request keys, in key order (locked);
//! 2. the holds that orders, webhooks and replayed keys name, read without a lock only to learn
//!    their products;
//! 3. the products, in id order (locked);
//! 4. those holds again, and the holds a sweep names, locked under their products;
//! 5. the orders of the consumed ones, and the orders a sweep names (locked);
//! 6. the expiry buckets due at the decision's `now` of the products that hold requests,
//!    restocks and sweeps name, at most [`DUE_BUCKETS_MAX`] per product (read under the
//!    product's lock, which every writer of a bucket holds, so they need no lock of their own);
//! 7. the webhook records, in key order (locked).
//!
//! What a stage asks for depends only on what the stages before it found, so every storage runs
//! the same loop: the SQL storage and the simulator's through the service layer, the
//! [`crate::Ledger`] from its tables. [`crate::execute()`] then decides on the [`Rows`], so which
//! rows a decision sees, and which locks guard them, is decided here once.
//!
//! Every load is bounded by the commands alone, never by history: a hold request reads its key,
//! its product and at most [`DUE_BUCKETS_MAX`] buckets, however many holds expired before it.
//! [`Plan::budget`] states the most rows a batch may load and write, and each driver checks its
//! transaction against it ([`Budget::check_loaded`], [`Budget::check_written`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::command::Command;
use crate::errors::Violation;
use crate::ids::{HoldId, IdempotencyKey, OrderId, ProductId, storable};
use crate::locks::RowLock;
use crate::rows::expiry::{DUE_BUCKETS_MAX, ExpiryBucket};
use crate::rows::hold::{Hold, HoldState};
use crate::rows::order::Order;
use crate::rows::payment::WebhookRecord;
use crate::rows::product::{DEMO_PRODUCTS, Product};
use crate::rows::request::{KeyedRequest, RequestRecord};

/// One read a plan asks for: every row of one kind the batch needs, in the lock order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Load {
    /// Read the product of the lowest id, if any, without a lock: whether any product exists
    /// (the demo seed creates its products only when none does).
    FirstProduct,
    /// Lock and read client request idempotency-key records, in key order.
    RequestKeys(Vec<IdempotencyKey>),
    /// Read holds without a lock, only to learn which products to lock before them.
    FindHolds(Vec<HoldId>),
    /// Lock and read products, in id order.
    Products(Vec<ProductId>),
    /// Lock and read holds, each under its product's lock (taken already).
    Holds(Vec<(ProductId, HoldId)>),
    /// Lock and read orders, each under its product's lock (taken already).
    Orders(Vec<(ProductId, OrderId)>),
    /// Read the products' expiry buckets due at the decision's `now` (deadline at or before
    /// it), at most [`DUE_BUCKETS_MAX`] per product, the earliest first. Under the products'
    /// locks, which every transaction that writes a bucket holds: no lock of their own.
    DueBuckets(Vec<ProductId>),
    /// Lock and read webhook idempotency-key records, in key order.
    Webhooks(Vec<IdempotencyKey>),
}

impl Load {
    /// The row locks this read takes, in the order it takes them.
    pub fn locks(&self) -> Vec<RowLock> {
        match self {
            Load::RequestKeys(keys) => keys.iter().cloned().map(RowLock::RequestKey).collect(),
            Load::Products(ids) => ids.iter().copied().map(RowLock::Product).collect(),
            Load::Holds(ids) => ids
                .iter()
                .map(|&(product, id)| RowLock::Hold { product, id })
                .collect(),
            Load::Orders(ids) => ids
                .iter()
                .map(|&(product, id)| RowLock::Order { product, id })
                .collect(),
            Load::Webhooks(keys) => keys.iter().cloned().map(RowLock::Webhook).collect(),
            Load::FirstProduct | Load::FindHolds(_) | Load::DueBuckets(_) => Vec::new(),
        }
    }

    /// Whether it needs the decision's `now`.
    pub fn needs_now(&self) -> bool {
        matches!(self, Load::DueBuckets(_))
    }

    /// The most rows it may find: one per id or key asked for, [`DUE_BUCKETS_MAX`] per product
    /// for due buckets.
    pub fn rows_max(&self) -> usize {
        match self {
            Load::FirstProduct => 1,
            Load::RequestKeys(keys) | Load::Webhooks(keys) => keys.len(),
            Load::FindHolds(ids) => ids.len(),
            Load::Products(ids) => ids.len(),
            Load::Holds(ids) => ids.len(),
            Load::Orders(ids) => ids.len(),
            Load::DueBuckets(ids) => ids.len().saturating_mul(DUE_BUCKETS_MAX),
        }
    }
}

/// What one [`Load`] found: the rows that exist, in any order; a row asked for and absent does
/// not exist. The larger rows may be lent (a test's rows); the driver takes them owned
/// ([`Loaded::into_owned`]), as a storage reads them into new values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loaded<'a> {
    /// For [`Load::RequestKeys`].
    RequestKeys(Vec<RequestRecord>),
    /// For [`Load::FindHolds`] and [`Load::Holds`].
    Holds(Vec<Hold>),
    /// For [`Load::Products`] and [`Load::FirstProduct`].
    Products(Vec<Cow<'a, Product>>),
    /// For [`Load::Orders`].
    Orders(Vec<Order>),
    /// For [`Load::DueBuckets`].
    Buckets(Vec<ExpiryBucket>),
    /// For [`Load::Webhooks`].
    Webhooks(Vec<Cow<'a, WebhookRecord>>),
}

impl Loaded<'_> {
    /// The same rows, owned.
    pub fn into_owned(self) -> Loaded<'static> {
        fn owned<T: Clone>(rows: Vec<Cow<'_, T>>) -> Vec<Cow<'static, T>> {
            let rows = rows.into_iter();
            rows.map(|row| Cow::Owned(row.into_owned())).collect()
        }
        match self {
            Loaded::RequestKeys(rows) => Loaded::RequestKeys(rows),
            Loaded::Holds(rows) => Loaded::Holds(rows),
            Loaded::Products(rows) => Loaded::Products(owned(rows)),
            Loaded::Orders(rows) => Loaded::Orders(rows),
            Loaded::Buckets(rows) => Loaded::Buckets(rows),
            Loaded::Webhooks(rows) => Loaded::Webhooks(owned(rows)),
        }
    }

    /// How many rows it holds.
    pub fn len(&self) -> usize {
        match self {
            Loaded::RequestKeys(rows) => rows.len(),
            Loaded::Holds(rows) => rows.len(),
            Loaded::Products(rows) => rows.len(),
            Loaded::Orders(rows) => rows.len(),
            Loaded::Buckets(rows) => rows.len(),
            Loaded::Webhooks(rows) => rows.len(),
        }
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rows a plan has loaded. A map holds an entry for every row asked for: the row, or `None`
/// when it does not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rows<'a> {
    request_keys: BTreeMap<IdempotencyKey, Option<RequestRecord>>,
    found_holds: BTreeMap<HoldId, Option<Hold>>,
    products: BTreeMap<ProductId, Option<Cow<'a, Product>>>,
    /// Holds read under their product's lock.
    holds: BTreeMap<HoldId, Option<Hold>>,
    /// Orders read under their product's lock.
    orders: BTreeMap<OrderId, Option<Order>>,
    /// The due buckets of each product asked for, in deadline order.
    due: BTreeMap<ProductId, Vec<ExpiryBucket>>,
    webhooks: BTreeMap<IdempotencyKey, Option<Cow<'a, WebhookRecord>>>,
    /// Whether any product exists, once [`Load::FirstProduct`] read it.
    any_product: Option<bool>,
    /// Rows found by every load so far.
    loaded: usize,
}

impl<'a> Rows<'a> {
    /// Records what `load` found.
    ///
    /// # Panics
    /// If `loaded` is not the kind of rows `load` asks for: the storage's loop is wrong.
    pub fn put(&mut self, load: Load, loaded: Loaded<'a>) {
        self.loaded = self.loaded.saturating_add(loaded.len());
        match (load, loaded) {
            (Load::FirstProduct, Loaded::Products(products)) => {
                self.any_product = Some(!products.is_empty());
            }
            (Load::RequestKeys(keys), Loaded::RequestKeys(records)) => {
                self.request_keys
                    .extend(keys.into_iter().map(|k| (k, None)));
                for record in records {
                    self.request_keys.insert(record.key.clone(), Some(record));
                }
            }
            (Load::FindHolds(ids), Loaded::Holds(holds)) => {
                self.found_holds
                    .extend(ids.into_iter().map(|id| (id, None)));
                self.found_holds
                    .extend(holds.into_iter().map(|h| (h.id, Some(h))));
            }
            (Load::Products(ids), Loaded::Products(products)) => {
                self.products.extend(ids.into_iter().map(|id| (id, None)));
                self.products
                    .extend(products.into_iter().map(|p| (p.id, Some(p))));
            }
            (Load::Holds(ids), Loaded::Holds(holds)) => {
                self.holds.extend(ids.into_iter().map(|(_, id)| (id, None)));
                self.holds
                    .extend(holds.into_iter().map(|h| (h.id, Some(h))));
            }
            (Load::Orders(ids), Loaded::Orders(orders)) => {
                self.orders
                    .extend(ids.into_iter().map(|(_, id)| (id, None)));
                self.orders
                    .extend(orders.into_iter().map(|o| (o.id, Some(o))));
            }
            (Load::DueBuckets(ids), Loaded::Buckets(buckets)) => {
                self.due.extend(ids.into_iter().map(|id| (id, Vec::new())));
                for bucket in buckets {
                    self.due.entry(bucket.product_id).or_default().push(bucket);
                }
                self.due.values_mut().for_each(|due| due.sort_unstable());
            }
            (Load::Webhooks(keys), Loaded::Webhooks(records)) => {
                self.webhooks.extend(keys.into_iter().map(|k| (k, None)));
                for record in records {
                    self.webhooks.insert(record.key.clone(), Some(record));
                }
            }
            (load, loaded) => panic!("{load:?} answered with {loaded:?}"),
        }
    }

    /// How many rows every load so far found: what [`Budget::loaded`] bounds.
    pub fn loaded(&self) -> usize {
        self.loaded
    }

    /// The record of a client request key, if the plan loaded one for it.
    pub fn request_record(&self, key: &IdempotencyKey) -> Option<&RequestRecord> {
        self.request_keys.get(key).and_then(Option::as_ref)
    }

    /// Whether any product exists: [`Load::FirstProduct`] found one, or a product loaded
    /// exists.
    pub fn any_product(&self) -> bool {
        self.any_product == Some(true) || self.products.values().any(Option::is_some)
    }

    /// A hold as found without a lock (only its product is to be trusted).
    pub fn found_hold(&self, id: HoldId) -> Option<&Hold> {
        self.found_holds.get(&id).and_then(Option::as_ref)
    }

    /// A locked product, if it was loaded and exists.
    pub fn product(&self, id: ProductId) -> Option<&Product> {
        self.products.get(&id).and_then(Option::as_deref)
    }

    /// A hold read under its product's lock, if it was loaded and exists.
    pub fn hold(&self, id: HoldId) -> Option<&Hold> {
        self.holds.get(&id).and_then(Option::as_ref)
    }

    /// An order read under its product's lock, if it was loaded and exists.
    pub fn order(&self, id: OrderId) -> Option<&Order> {
        self.orders.get(&id).and_then(Option::as_ref)
    }

    /// The product's due expiry buckets, in deadline order, as loaded (none when not loaded).
    pub fn due(&self, product_id: ProductId) -> &[ExpiryBucket] {
        self.due.get(&product_id).map_or(&[], Vec::as_slice)
    }

    /// A webhook key's record, if one exists.
    pub fn webhook(&self, key: &IdempotencyKey) -> Option<&WebhookRecord> {
        self.webhooks.get(key).and_then(Option::as_deref)
    }
}

/// The most rows a batch's transaction may load and write: a sum over its commands of what one
/// command of each kind may, plus [`DUE_BUCKETS_MAX`] loaded and folded for each product whose
/// due buckets it reads. Bounded by the commands alone, whatever happened before them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Rows its loads may find ([`Rows::loaded`]).
    pub loaded: usize,
    /// Rows its write-set may write ([`crate::WriteSet::rows`]).
    pub written: usize,
}

impl Budget {
    /// What a hold request loads (its key; the hold its key's record answered, found and locked,
    /// with that hold's product and order; its own product) and writes (its product, its
    /// deadline's bucket, the hold, its key).
    const HOLD: Budget = Budget::of(6, 4);
    /// What an order request loads (its key; its hold and the hold its key's record names, each
    /// found and locked, with its product and order) and writes (the product, the hold's bucket,
    /// the order, the consumed hold, the key).
    const ORDER: Budget = Budget::of(9, 5);
    /// What a webhook loads (its hold found and locked, the product, the hold's order, the
    /// record) and writes (the product, the hold's bucket, the hold, the order, the record).
    const WEBHOOK: Budget = Budget::of(5, 5);
    /// What a restock loads and writes: its product.
    const RESTOCK: Budget = Budget::of(1, 1);
    /// What a product's creation loads (nothing) and writes (the product).
    const CREATE: Budget = Budget::of(0, 1);
    /// What the demo seed loads (the first product) and writes (the demo products).
    const SEED: Budget = Budget::of(1, DEMO_PRODUCTS);
    /// What a product's due buckets add: each loaded, and deleted when folded.
    const DUE: Budget = Budget::of(DUE_BUCKETS_MAX, DUE_BUCKETS_MAX);

    const fn of(loaded: usize, written: usize) -> Budget {
        Budget { loaded, written }
    }

    fn add(self, other: Budget) -> Budget {
        Budget {
            loaded: self.loaded.saturating_add(other.loaded),
            written: self.written.saturating_add(other.written),
        }
    }

    /// Checks that a transaction's loads found at most [`Budget::loaded`] rows.
    ///
    /// # Errors
    /// [`Violation::OverBudget`] naming both numbers.
    pub fn check_loaded(&self, rows: usize) -> Result<(), Violation> {
        Self::check("loaded", rows, self.loaded)
    }

    /// Checks that a transaction's write-set writes at most [`Budget::written`] rows.
    ///
    /// # Errors
    /// [`Violation::OverBudget`] naming both numbers.
    pub fn check_written(&self, rows: usize) -> Result<(), Violation> {
        Self::check("written", rows, self.written)
    }

    fn check(what: &'static str, rows: usize, budget: usize) -> Result<(), Violation> {
        if rows <= budget {
            Ok(())
        } else {
            Err(Violation::OverBudget { what, rows, budget })
        }
    }
}

/// The rows one transaction's commands need, stage by stage (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Client request keys (hold and order requests), sorted.
    request_keys: BTreeSet<IdempotencyKey>,
    /// Holds named by order requests and webhooks.
    holds: BTreeSet<HoldId>,
    /// Products named by hold requests, restocks and sweeps.
    products: BTreeSet<ProductId>,
    /// Products whose due expiry buckets the decisions count or fold.
    due_of: BTreeSet<ProductId>,
    /// Holds a sweep names, with the product it names them of.
    swept_holds: BTreeSet<(ProductId, HoldId)>,
    /// Orders a sweep names, with the product it names them of.
    swept_orders: BTreeSet<(ProductId, OrderId)>,
    /// Webhook keys, sorted.
    webhooks: BTreeSet<IdempotencyKey>,
    /// Whether a command asks whether any product exists (the demo seed).
    any_product: bool,
    /// What the commands load and write besides their products' due buckets.
    budget: Budget,
}

impl Plan {
    /// The plan of `commands`, decided together in one transaction. [`Command::CreateProduct`]
    /// reads no row, [`Command::SeedDemo`] whether any product exists; [`Command::Sweep`] is
    /// not decided over a plan.
    pub fn new(commands: &[Command]) -> Plan {
        let mut plan = Plan::default();
        for command in commands {
            plan.add(command);
        }
        plan
    }

    fn add(&mut self, command: &Command) {
        let budget = match command {
            Command::PlaceHold {
                product_id, key, ..
            } => {
                self.request_keys.extend(key.iter().cloned());
                self.lock_product(*product_id);
                Budget::HOLD
            }
            Command::PlaceOrder { hold_id, key, .. } => {
                self.request_keys.extend(key.iter().cloned());
                self.find_hold(*hold_id);
                Budget::ORDER
            }
            Command::ApplyWebhook(payload) => {
                self.find_hold(payload.hold_id);
                self.webhooks.insert(payload.key.clone());
                Budget::WEBHOOK
            }
            Command::Restock { product_id, .. } => {
                self.lock_product(*product_id);
                Budget::RESTOCK
            }
            Command::SweepProduct {
                product_id,
                holds,
                orders,
            } => {
                self.products.insert(*product_id);
                self.due_of.insert(*product_id);
                let p = *product_id;
                self.swept_holds.extend(holds.iter().map(|&id| (p, id)));
                self.swept_orders.extend(orders.iter().map(|&id| (p, id)));
                // The product, then each hold and order named: read, and retired or cancelled.
                let rows = holds.len().saturating_add(orders.len()).saturating_add(1);
                Budget::of(rows, rows)
            }
            Command::CreateProduct { .. } => Budget::CREATE,
            Command::SeedDemo => {
                self.any_product = true;
                Budget::SEED
            }
            Command::Sweep => Budget::default(),
        };
        self.budget = self.budget.add(budget);
    }

    /// A product a command names, to lock with its due buckets; none above [`ID_MAX`](crate::ID_MAX)
    /// ([`storable`]).
    fn lock_product(&mut self, product_id: ProductId) {
        if storable(product_id.0) {
            self.products.insert(product_id);
            self.due_of.insert(product_id);
        }
    }

    /// A hold a command names, to find; none above [`ID_MAX`](crate::ID_MAX) ([`storable`]).
    fn find_hold(&mut self, hold_id: HoldId) {
        if storable(hold_id.0) {
            self.holds.insert(hold_id);
        }
    }

    /// The most rows the batch's transaction may load and write.
    pub fn budget(&self) -> Budget {
        let products = self.due_of.len();
        let due = Budget::of(
            Budget::DUE.loaded.saturating_mul(products),
            Budget::DUE.written.saturating_mul(products),
        );
        self.budget.add(due)
    }

    /// The next rows to load, given the rows loaded so far; `None` when the decisions have all
    /// they need.
    pub fn next(&self, rows: &Rows) -> Option<Load> {
        if self.any_product && rows.any_product.is_none() {
            return Some(Load::FirstProduct);
        }
        let keys = missing(&self.request_keys, &rows.request_keys);
        if !keys.is_empty() {
            return Some(Load::RequestKeys(keys));
        }
        let to_find = self.holds_to_find(rows);
        let find = missing(&to_find, &rows.found_holds);
        if !find.is_empty() {
            return Some(Load::FindHolds(find));
        }
        let found = || rows.found_holds.values().flatten();
        let mut products = self.products.clone();
        products.extend(found().map(|h| h.product_id));
        let lock = missing(&products, &rows.products);
        if !lock.is_empty() {
            return Some(Load::Products(lock));
        }
        let exists = |id: &ProductId| rows.product(*id).is_some();
        let mut holds: BTreeSet<(ProductId, HoldId)> =
            found().map(|h| (h.product_id, h.id)).collect();
        holds.extend(self.swept_holds.iter().copied());
        let holds: Vec<(ProductId, HoldId)> = (holds.into_iter())
            .filter(|(product, id)| exists(product) && !rows.holds.contains_key(id))
            .collect();
        if !holds.is_empty() {
            return Some(Load::Holds(holds));
        }
        let mut orders: BTreeSet<(ProductId, OrderId)> = found()
            .filter_map(|found| rows.hold(found.id))
            .filter_map(|hold| match hold.state {
                HoldState::Consumed(order_id) => Some((hold.product_id, order_id)),
                HoldState::Held | HoldState::Released(_) => None,
            })
            .collect();
        orders.extend(self.swept_orders.iter().copied());
        let orders: Vec<(ProductId, OrderId)> = (orders.into_iter())
            .filter(|(product, id)| exists(product) && !rows.orders.contains_key(id))
            .collect();
        if !orders.is_empty() {
            return Some(Load::Orders(orders));
        }
        let due: Vec<ProductId> = self.due_of.iter().copied().filter(exists).collect();
        let due = missing_in(due, &rows.due);
        if !due.is_empty() {
            return Some(Load::DueBuckets(due));
        }
        let webhooks = missing(&self.webhooks, &rows.webhooks);
        (!webhooks.is_empty()).then_some(Load::Webhooks(webhooks))
    }

    /// The holds to find: those the commands name, and those the loaded hold-request keys
    /// answered before (a replay answers its hold as it is now, read under its product's lock).
    fn holds_to_find(&self, rows: &Rows) -> BTreeSet<HoldId> {
        let mut holds = self.holds.clone();
        let records = rows.request_keys.values().flatten();
        holds.extend(records.map(|record| match record.request {
            KeyedRequest::PlaceHold { .. } => HoldId(record.resource_id),
            KeyedRequest::PlaceOrder { hold_id } => hold_id,
        }));
        holds
    }
}

/// The members of `wanted` not yet asked for, in order.
fn missing<K: Ord + Clone, V>(wanted: &BTreeSet<K>, asked: &BTreeMap<K, V>) -> Vec<K> {
    wanted
        .iter()
        .filter(|k| !asked.contains_key(*k))
        .cloned()
        .collect()
}

fn missing_in<K: Ord, V>(wanted: Vec<K>, asked: &BTreeMap<K, V>) -> Vec<K> {
    wanted
        .into_iter()
        .filter(|k| !asked.contains_key(k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Cents, Qty};
    use crate::locks::LockOrder;
    use crate::rows::payment::{PaymentStatus, WebhookPayload};
    use crate::time::Timestamp;

    fn key(k: &str) -> IdempotencyKey {
        IdempotencyKey::parse(k).unwrap()
    }

    fn product(id: u64) -> Product {
        crate::product::create_product("p", Cents(100), Qty(5))
            .unwrap()
            .with_id(ProductId(id))
    }

    fn hold(id: u64, product: u64, state: HoldState) -> Hold {
        Hold {
            id: HoldId(id),
            product_id: ProductId(product),
            qty: Qty(1),
            state,
            created_at: Timestamp(0),
            expires_at: Timestamp(10),
        }
    }

    fn place_hold(product: u64, k: Option<&str>) -> Command {
        Command::PlaceHold {
            product_id: ProductId(product),
            qty: Qty(1),
            ttl_ms: 1_000,
            key: k.map(key),
        }
    }

    fn webhook(hold: u64, k: &str) -> Command {
        Command::ApplyWebhook(WebhookPayload {
            key: key(k),
            hold_id: HoldId(hold),
            status: PaymentStatus::Paid,
        })
    }

    /// Runs `plan` over `answer`, checking every lock against the global order; returns the
    /// loads it asked for.
    fn run(
        plan: &Plan,
        mut answer: impl FnMut(&Load) -> Loaded<'static>,
    ) -> (Vec<Load>, Rows<'static>) {
        let mut rows = Rows::default();
        let mut loads = Vec::new();
        let mut locks = LockOrder::default();
        while let Some(load) = plan.next(&rows) {
            assert!(loads.len() < 16, "the plan ends: {loads:?}");
            for lock in load.locks() {
                locks.take(lock).unwrap();
            }
            let loaded = answer(&load);
            rows.put(load.clone(), loaded);
            loads.push(load);
        }
        (loads, rows)
    }

    /// A store of a few rows: products 1..=3, hold 4 of product 2 (consumed by order 9 when
    /// `consumed`), and no records.
    fn store(consumed: bool) -> impl FnMut(&Load) -> Loaded<'static> {
        let state = if consumed {
            HoldState::Consumed(OrderId(9))
        } else {
            HoldState::Held
        };
        move |load| match load {
            Load::FirstProduct => Loaded::Products(vec![Cow::Owned(product(1))]),
            Load::RequestKeys(_) => Loaded::RequestKeys(vec![]),
            Load::FindHolds(ids) => Loaded::Holds(
                ids.iter()
                    .filter(|id| id.0 == 4)
                    .map(|_| hold(4, 2, state))
                    .collect(),
            ),
            Load::Holds(ids) => Loaded::Holds(
                ids.iter()
                    .filter(|(_, id)| id.0 == 4)
                    .map(|_| hold(4, 2, state))
                    .collect(),
            ),
            Load::Products(ids) => Loaded::Products(
                ids.iter()
                    .filter(|id| id.0 <= 3)
                    .map(|id| Cow::Owned(product(id.0)))
                    .collect(),
            ),
            Load::Orders(_) => Loaded::Orders(vec![]),
            Load::DueBuckets(_) => Loaded::Buckets(vec![]),
            Load::Webhooks(_) => Loaded::Webhooks(vec![]),
        }
    }

    #[test]
    fn a_batch_loads_each_kind_once_in_the_lock_order() {
        let commands = [
            place_hold(3, Some("b")),
            webhook(4, "w"),
            place_hold(1, Some("a")),
            Command::PlaceOrder {
                hold_id: HoldId(4),
                payment_window_ms: 1_000,
                key: None,
            },
        ];
        let (loads, rows) = run(&Plan::new(&commands), store(true));
        assert_eq!(
            loads,
            [
                Load::RequestKeys(vec![key("a"), key("b")]),
                Load::FindHolds(vec![HoldId(4)]),
                Load::Products(vec![ProductId(1), ProductId(2), ProductId(3)]),
                Load::Holds(vec![(ProductId(2), HoldId(4))]),
                Load::Orders(vec![(ProductId(2), OrderId(9))]),
                Load::DueBuckets(vec![ProductId(1), ProductId(3)]),
                Load::Webhooks(vec![key("w")]),
            ]
        );
        assert_eq!(rows.order(OrderId(9)), None, "asked for, and missing");
        assert!(rows.hold(HoldId(4)).is_some());
    }

    #[test]
    fn a_seed_reads_the_first_product_once_without_a_lock_and_a_creation_reads_nothing() {
        let create = Command::CreateProduct {
            name: "p".into(),
            price_cents: Cents(100),
            stock: Qty(1),
        };
        let (loads, _) = run(&Plan::new(std::slice::from_ref(&create)), store(false));
        assert_eq!(loads, []);
        let commands = [
            Command::SeedDemo,
            create,
            Command::SeedDemo,
            place_hold(2, None),
        ];
        let plan = Plan::new(&commands);
        let (loads, rows) = run(&plan, store(false));
        assert_eq!(
            loads,
            [
                Load::FirstProduct,
                Load::Products(vec![ProductId(2)]),
                Load::DueBuckets(vec![ProductId(2)]),
            ]
        );
        assert!(Load::FirstProduct.locks().is_empty());
        assert!(rows.any_product());
        // Creations and seeds write the products they insert, and the seed reads one row.
        let budget = plan.budget();
        assert_eq!(budget.written, 1 + 2 * DEMO_PRODUCTS + 4 + DUE_BUCKETS_MAX);
        assert_eq!(budget.loaded, 2 + 6 + DUE_BUCKETS_MAX);
    }

    #[test]
    fn a_hold_replayed_by_its_key_is_found_and_locked_under_its_product() {
        let record = RequestRecord {
            key: key("k"),
            request: KeyedRequest::PlaceHold {
                product_id: ProductId(2),
                qty: Qty(1),
            },
            resource_id: 4,
            created: true,
            created_at: Timestamp(0),
        };
        let mut rows_of = store(false);
        let plan = Plan::new(&[place_hold(2, Some("k"))]);
        let (loads, rows) = run(&plan, |load| match load {
            Load::RequestKeys(_) => Loaded::RequestKeys(vec![record.clone()]),
            other => rows_of(other),
        });
        assert_eq!(loads[1], Load::FindHolds(vec![HoldId(4)]));
        assert_eq!(loads[3], Load::Holds(vec![(ProductId(2), HoldId(4))]));
        assert_eq!(rows.request_record(&key("k")), Some(&record));
    }

    #[test]
    fn an_unknown_hold_or_product_ends_its_part_of_the_plan() {
        let plan = Plan::new(&[webhook(5, "w"), place_hold(7, None)]);
        let (loads, rows) = run(&plan, store(false));
        assert_eq!(
            loads,
            [
                Load::FindHolds(vec![HoldId(5)]),
                Load::Products(vec![ProductId(7)]),
                Load::Webhooks(vec![key("w")]),
            ]
        );
        assert_eq!(rows.product(ProductId(7)), None);
        assert_eq!(rows.found_hold(HoldId(5)), None);
    }

    #[test]
    fn a_sweep_locks_the_product_then_the_rows_it_names_then_reads_its_due_buckets() {
        let plan = Plan::new(&[Command::SweepProduct {
            product_id: ProductId(2),
            holds: vec![HoldId(4)],
            orders: vec![OrderId(9)],
        }]);
        let (loads, _) = run(&plan, store(false));
        assert_eq!(
            loads,
            [
                Load::Products(vec![ProductId(2)]),
                Load::Holds(vec![(ProductId(2), HoldId(4))]),
                Load::Orders(vec![(ProductId(2), OrderId(9))]),
                Load::DueBuckets(vec![ProductId(2)]),
            ]
        );
        assert!(
            Plan::new(&[Command::Sweep])
                .next(&Rows::default())
                .is_none()
        );
    }

    #[test]
    fn a_budget_is_bounded_by_the_commands_not_by_history() {
        let one = Plan::new(&[place_hold(1, Some("a"))]).budget();
        assert_eq!(one, Budget::of(6 + DUE_BUCKETS_MAX, 4 + DUE_BUCKETS_MAX));
        // A second hold on the same product adds its own rows, not a second product's buckets.
        let two = Plan::new(&[place_hold(1, Some("a")), place_hold(1, None)]).budget();
        assert_eq!(two.loaded, one.loaded + 6);
        assert_eq!(
            two.check_loaded(two.loaded + 1),
            Err(Violation::OverBudget {
                what: "loaded",
                rows: two.loaded + 1,
                budget: two.loaded
            })
        );
        assert_eq!(two.check_written(two.written), Ok(()));
    }
}
