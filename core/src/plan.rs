//! Which rows a batch of commands reads, in the global lock order ([`crate::locks`]).
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
//! 4. those holds again, locked under their products;
//! 5. the orders of the consumed ones (locked);
//! 6. the expired holds of the products that hold requests, restocks and sweeps name (locked
//!    under the product's lock, at the decision's `now`: a grant or a sweep releases them, and
//!    every row a batch writes is locked while it loads, before any webhook record);
//! 7. the overdue orders of the products swept (locked);
//! 8. the webhook records, in key order (locked).
//!
//! What a stage asks for depends only on what the stages before it found, so every storage runs
//! the same loop: the SQL storage and the simulator's through the service layer, the
//! [`crate::Ledger`] from its tables. [`crate::execute()`] then decides on the [`Rows`], so which
//! rows a decision sees, and which locks guard them, is decided here once.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::command::Command;
use crate::ids::{HoldId, IdempotencyKey, OrderId, ProductId};
use crate::locks::RowLock;
use crate::rows::hold::{Hold, HoldState};
use crate::rows::order::Order;
use crate::rows::payment::WebhookRecord;
use crate::rows::product::Product;
use crate::rows::request::{KeyedRequest, RequestRecord};

/// One read a plan asks for: every row of one kind the batch needs, in the lock order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Load {
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
    /// Lock and read the products' held holds whose deadline has passed at the decision's
    /// `now`, under the products' locks (which keep every other transaction off them).
    ExpiredHolds(Vec<ProductId>),
    /// Lock and read the products' pre-payment orders whose payment window closed at `now`.
    OverdueOrders(Vec<ProductId>),
    /// Lock and read webhook idempotency-key records, in key order.
    Webhooks(Vec<IdempotencyKey>),
}

impl Load {
    /// The row locks this read takes, in the order it takes them. [`Load::ExpiredHolds`] and
    /// [`Load::OverdueOrders`] lock the rows they find, each a [`RowLock::Hold`] or
    /// [`RowLock::Order`] under its product's lock.
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
            Load::FindHolds(_) | Load::ExpiredHolds(_) | Load::OverdueOrders(_) => Vec::new(),
        }
    }

    /// Whether it needs the decision's `now`.
    pub fn needs_now(&self) -> bool {
        matches!(self, Load::ExpiredHolds(_) | Load::OverdueOrders(_))
    }
}

/// What one [`Load`] found: the rows that exist, in any order; a row asked for and absent does
/// not exist. A storage that reads rows into new values hands them over owned; the
/// [`crate::Ledger`] lends its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loaded<'a> {
    /// For [`Load::RequestKeys`].
    RequestKeys(Vec<RequestRecord>),
    /// For [`Load::FindHolds`] and [`Load::Holds`].
    Holds(Vec<Hold>),
    /// For [`Load::Products`].
    Products(Vec<Cow<'a, Product>>),
    /// For [`Load::Orders`] and [`Load::OverdueOrders`].
    Orders(Vec<Order>),
    /// For [`Load::Webhooks`].
    Webhooks(Vec<Cow<'a, WebhookRecord>>),
}

/// The rows a plan has loaded. A map holds an entry for every row asked for: the row, or `None`
/// when it does not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rows<'a> {
    request_keys: BTreeMap<IdempotencyKey, Option<RequestRecord>>,
    found_holds: BTreeMap<HoldId, Option<Hold>>,
    products: BTreeMap<ProductId, Option<Cow<'a, Product>>>,
    /// Holds read under their product's lock: the locked reads and the expired holds.
    holds: BTreeMap<HoldId, Option<Hold>>,
    /// Orders read under their product's lock: the locked reads and the overdue orders.
    orders: BTreeMap<OrderId, Option<Order>>,
    expired: BTreeMap<ProductId, Vec<HoldId>>,
    overdue: BTreeMap<ProductId, Vec<OrderId>>,
    webhooks: BTreeMap<IdempotencyKey, Option<Cow<'a, WebhookRecord>>>,
}

impl<'a> Rows<'a> {
    /// Records what `load` found.
    ///
    /// # Panics
    /// If `loaded` is not the kind of rows `load` asks for: the storage's loop is wrong.
    pub fn put(&mut self, load: Load, loaded: Loaded<'a>) {
        match (load, loaded) {
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
            (Load::ExpiredHolds(ids), Loaded::Holds(holds)) => {
                self.expired
                    .extend(ids.into_iter().map(|id| (id, Vec::new())));
                for hold in holds {
                    self.expired
                        .entry(hold.product_id)
                        .or_default()
                        .push(hold.id);
                    self.holds.entry(hold.id).or_insert(Some(hold));
                }
            }
            (Load::OverdueOrders(ids), Loaded::Orders(orders)) => {
                self.overdue
                    .extend(ids.into_iter().map(|id| (id, Vec::new())));
                for order in orders {
                    self.overdue
                        .entry(order.product_id)
                        .or_default()
                        .push(order.id);
                    self.orders.entry(order.id).or_insert(Some(order));
                }
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

    /// The record of a client request key, if the plan loaded one for it.
    pub fn request_record(&self, key: &IdempotencyKey) -> Option<&RequestRecord> {
        self.request_keys.get(key).and_then(Option::as_ref)
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

    /// The product's expired held holds, as loaded (none when not loaded).
    pub fn expired(&self, product_id: ProductId) -> impl Iterator<Item = &Hold> {
        let ids = self.expired.get(&product_id).into_iter().flatten();
        ids.filter_map(|id| self.hold(*id))
    }

    /// The product's overdue orders, as loaded (none when not loaded).
    pub fn overdue(&self, product_id: ProductId) -> impl Iterator<Item = &Order> {
        let ids = self.overdue.get(&product_id).into_iter().flatten();
        ids.filter_map(|id| self.order(*id))
    }

    /// A webhook key's record, if one exists.
    pub fn webhook(&self, key: &IdempotencyKey) -> Option<&WebhookRecord> {
        self.webhooks.get(key).and_then(Option::as_deref)
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
    /// Products whose expired holds the decisions count or release.
    expired_of: BTreeSet<ProductId>,
    /// Products whose overdue orders a sweep cancels.
    overdue_of: BTreeSet<ProductId>,
    /// Webhook keys, sorted.
    webhooks: BTreeSet<IdempotencyKey>,
}

impl Plan {
    /// The plan of `commands`, decided together in one transaction. [`Command::CreateProduct`]
    /// and [`Command::Sweep`] read no rows: they are not decided over a plan.
    pub fn new(commands: &[Command]) -> Plan {
        let mut plan = Plan::default();
        for command in commands {
            plan.add(command);
        }
        plan
    }

    fn add(&mut self, command: &Command) {
        match command {
            Command::PlaceHold {
                product_id, key, ..
            } => {
                self.request_keys.extend(key.iter().cloned());
                self.products.insert(*product_id);
                self.expired_of.insert(*product_id);
            }
            Command::PlaceOrder { hold_id, key, .. } => {
                self.request_keys.extend(key.iter().cloned());
                self.holds.insert(*hold_id);
            }
            Command::ApplyWebhook(payload) => {
                self.holds.insert(payload.hold_id);
                self.webhooks.insert(payload.key.clone());
            }
            Command::Restock { product_id, .. } => {
                self.products.insert(*product_id);
                self.expired_of.insert(*product_id);
            }
            Command::SweepProduct { product_id } => {
                self.products.insert(*product_id);
                self.expired_of.insert(*product_id);
                self.overdue_of.insert(*product_id);
            }
            Command::CreateProduct { .. } | Command::Sweep => {}
        }
    }

    /// The next rows to load, given the rows loaded so far; `None` when the decisions have all
    /// they need.
    pub fn next(&self, rows: &Rows) -> Option<Load> {
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
        let holds: Vec<(ProductId, HoldId)> = found()
            .filter(|h| exists(&h.product_id) && !rows.holds.contains_key(&h.id))
            .map(|h| (h.product_id, h.id))
            .collect();
        if !holds.is_empty() {
            return Some(Load::Holds(holds));
        }
        let orders: Vec<(ProductId, OrderId)> = found()
            .filter_map(|found| rows.hold(found.id))
            .filter_map(|hold| match hold.state {
                HoldState::Consumed(order_id) => Some((hold.product_id, order_id)),
                HoldState::Held | HoldState::Released(_) => None,
            })
            .filter(|(_, id)| !rows.orders.contains_key(id))
            .collect();
        if !orders.is_empty() {
            return Some(Load::Orders(orders));
        }
        let expired: Vec<ProductId> = self.expired_of.iter().copied().filter(exists).collect();
        let expired = missing_in(expired, &rows.expired);
        if !expired.is_empty() {
            return Some(Load::ExpiredHolds(expired));
        }
        let overdue: Vec<ProductId> = self.overdue_of.iter().copied().filter(exists).collect();
        let overdue = missing_in(overdue, &rows.overdue);
        if !overdue.is_empty() {
            return Some(Load::OverdueOrders(overdue));
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
            Load::Orders(_) | Load::OverdueOrders(_) => Loaded::Orders(vec![]),
            Load::ExpiredHolds(_) => Loaded::Holds(vec![]),
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
                Load::ExpiredHolds(vec![ProductId(1), ProductId(3)]),
                Load::Webhooks(vec![key("w")]),
            ]
        );
        assert_eq!(rows.order(OrderId(9)), None, "asked for, and missing");
        assert!(rows.hold(HoldId(4)).is_some());
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
    fn a_sweep_locks_the_product_then_reads_its_expired_holds_and_overdue_orders() {
        let plan = Plan::new(&[Command::SweepProduct {
            product_id: ProductId(1),
        }]);
        let (loads, _) = run(&plan, store(false));
        assert_eq!(
            loads,
            [
                Load::Products(vec![ProductId(1)]),
                Load::ExpiredHolds(vec![ProductId(1)]),
                Load::OverdueOrders(vec![ProductId(1)])
            ]
        );
        assert!(
            Plan::new(&[Command::Sweep])
                .next(&Rows::default())
                .is_none()
        );
    }
}
