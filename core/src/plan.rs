//! Which rows a command's transaction reads, in the global lock order ([`crate::locks`]).
//!
//! A [`Plan`] is asked for its next [`Load`] with the [`Rows`] loaded so far, until it needs
//! nothing more; what it asks for next depends on what was found (an order's hold names the
//! product to lock; a replayed key needs nothing else). Every storage runs the same loop: the SQL
//! storage and the simulator's through the service layer, the [`crate::Ledger`] from its maps. The
//! decisions then take their inputs from the [`Rows`], so which rows a decision sees, and which
//! locks guard them, is decided here once.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::hold::{Hold, HoldRequest, HoldState};
use crate::ids::{HoldId, IdempotencyKey, OrderId, ProductId};
use crate::invariants::Violation;
use crate::locks::RowLock;
use crate::order::Order;
use crate::payment::WebhookRecord;
use crate::product::Product;
use crate::request::RequestRecord;

/// One read a plan asks for. The locking ones say which lock in [`Load::lock`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Load {
    /// Lock and read a client request's idempotency-key record.
    RequestKey(IdempotencyKey),
    /// Read a hold without a lock, only to learn which product to lock before it.
    FindHold(HoldId),
    /// Lock and read a product.
    Product(ProductId),
    /// Lock and read a hold, under its product's lock.
    Hold {
        /// Its product, locked already.
        product: ProductId,
        /// The hold.
        id: HoldId,
    },
    /// Lock and read an order, under its product's lock.
    Order {
        /// Its product, locked already.
        product: ProductId,
        /// The order.
        id: OrderId,
    },
    /// Read the product's held holds whose deadline has passed at the decision's `now`, under
    /// the product's lock (which keeps every other transaction off them).
    ExpiredHolds(ProductId),
    /// Lock and read the product's pre-payment orders whose payment window closed at `now`.
    OverdueOrders(ProductId),
    /// Lock and read a webhook's idempotency-key record.
    Webhook(IdempotencyKey),
}

impl Load {
    /// The one row lock this read takes, if it names one. [`Load::OverdueOrders`] locks the
    /// orders it finds, each a [`RowLock::Order`] under the product's lock.
    pub fn lock(&self) -> Option<RowLock> {
        match self {
            Load::RequestKey(key) => Some(RowLock::RequestKey(key.clone())),
            Load::Product(id) => Some(RowLock::Product(*id)),
            Load::Hold { product, id } => Some(RowLock::Hold {
                product: *product,
                id: *id,
            }),
            Load::Order { product, id } => Some(RowLock::Order {
                product: *product,
                id: *id,
            }),
            Load::Webhook(key) => Some(RowLock::Webhook(key.clone())),
            Load::FindHold(_) | Load::ExpiredHolds(_) | Load::OverdueOrders(_) => None,
        }
    }
}

/// What one [`Load`] found, handed to [`Rows::put`]. A storage that reads rows into new values
/// hands them over owned; the [`crate::Ledger`] lends its own rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loaded<'a> {
    /// For [`Load::RequestKey`].
    RequestKey(IdempotencyKey, Option<RequestRecord>),
    /// For [`Load::FindHold`].
    FoundHold(Option<Hold>),
    /// For [`Load::Product`].
    Product(Option<Cow<'a, Product>>),
    /// For [`Load::Hold`].
    Hold(Option<Hold>),
    /// For [`Load::Order`].
    Order(Option<Order>),
    /// For [`Load::ExpiredHolds`].
    ExpiredHolds(Vec<Hold>),
    /// For [`Load::OverdueOrders`].
    OverdueOrders(Vec<Order>),
    /// For [`Load::Webhook`].
    Webhook(Option<Cow<'a, WebhookRecord>>),
}

/// The rows a plan has loaded. A field is `None` until its load ran, then holds what was found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rows<'a> {
    request_keys: BTreeMap<IdempotencyKey, Option<RequestRecord>>,
    found_hold: Option<Option<Hold>>,
    product: Option<Option<Cow<'a, Product>>>,
    hold: Option<Option<Hold>>,
    order: Option<Option<Order>>,
    expired: Option<Vec<Hold>>,
    overdue: Option<Vec<Order>>,
    webhook: Option<Option<Cow<'a, WebhookRecord>>>,
}

impl<'a> Rows<'a> {
    /// Records what a load found.
    pub fn put(&mut self, loaded: Loaded<'a>) {
        match loaded {
            Loaded::RequestKey(key, record) => {
                self.request_keys.insert(key, record);
            }
            Loaded::FoundHold(hold) => self.found_hold = Some(hold),
            Loaded::Product(product) => self.product = Some(product),
            Loaded::Hold(hold) => self.hold = Some(hold),
            Loaded::Order(order) => self.order = Some(order),
            Loaded::ExpiredHolds(holds) => self.expired = Some(holds),
            Loaded::OverdueOrders(orders) => self.overdue = Some(orders),
            Loaded::Webhook(record) => self.webhook = Some(record),
        }
    }

    /// The record of a client request key, if the plan loaded one for it.
    pub fn request_record(&self, key: &IdempotencyKey) -> Option<&RequestRecord> {
        self.request_keys.get(key).and_then(Option::as_ref)
    }

    /// The locked product, if it was loaded and exists.
    pub fn product(&self) -> Option<&Product> {
        self.product.as_ref().and_then(Option::as_deref)
    }

    /// The hold, read under its product's lock, with that product; `None` for an unknown hold.
    ///
    /// # Errors
    /// [`Violation::DanglingProduct`] when the hold names a product that does not exist.
    pub fn hold_and_product(&self) -> Result<Option<(&Hold, &Product)>, Violation> {
        let Some(found) = self.found_hold.as_ref().and_then(Option::as_ref) else {
            return Ok(None);
        };
        let Some(product) = self.product() else {
            return Err(Violation::DanglingProduct {
                product_id: found.product_id,
            });
        };
        Ok(self
            .hold
            .as_ref()
            .and_then(Option::as_ref)
            .map(|hold| (hold, product)))
    }

    /// The order that consumed the hold, locked, when the hold is consumed and the plan loads
    /// it (a webhook's does; an order's does not: [`crate::order::place_order`] needs only the
    /// hold).
    ///
    /// # Errors
    /// [`Violation::HoldOrderMismatch`] when the hold names an order that does not exist.
    pub fn order_of_hold(&self) -> Result<Option<&Order>, Violation> {
        match (self.locked_hold(), &self.order) {
            (_, None) | (None, _) => Ok(None),
            (Some(_), Some(Some(order))) => Ok(Some(order)),
            (Some(hold), Some(None)) => Err(Violation::HoldOrderMismatch {
                hold_id: hold.id,
                order_id: match hold.state {
                    HoldState::Consumed(id) => id,
                    HoldState::Held | HoldState::Released(_) => OrderId(0),
                },
            }),
        }
    }

    /// The product's expired held holds, as loaded (none when not loaded).
    pub fn expired(&self) -> &[Hold] {
        self.expired.as_deref().unwrap_or(&[])
    }

    /// The product's overdue orders, as loaded (none when not loaded).
    pub fn overdue(&self) -> &[Order] {
        self.overdue.as_deref().unwrap_or(&[])
    }

    /// The webhook's record, if one exists.
    pub fn webhook(&self) -> Option<&WebhookRecord> {
        self.webhook.as_ref().and_then(Option::as_deref)
    }

    fn locked_hold(&self) -> Option<&Hold> {
        self.hold.as_ref().and_then(Option::as_ref)
    }
}

/// The rows one command's transaction needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// A batch of hold requests on one product: their keys in key order, then (when any request
    /// is fresh: unkeyed, or its key has no record) the product and its expired holds.
    PlaceHolds {
        /// The product.
        product_id: ProductId,
        /// The requests' keys, sorted and without duplicates.
        keys: Vec<IdempotencyKey>,
        /// Whether any request has no key.
        unkeyed: bool,
    },
    /// An order from a hold: the key (a record ends the plan: the request replays or is
    /// refused), then the hold's product, then the hold.
    PlaceOrder {
        /// The hold.
        hold_id: HoldId,
        /// The request's key.
        key: Option<IdempotencyKey>,
    },
    /// A webhook: the hold's product, the hold, its order when consumed, then the webhook's
    /// record (last in the lock order, so the product's rows are locked first even when the
    /// record replays).
    ApplyWebhook {
        /// The hold the payment is for.
        hold_id: HoldId,
        /// The webhook's key.
        key: IdempotencyKey,
    },
    /// A restock: the product.
    Restock {
        /// The product.
        product_id: ProductId,
    },
    /// One product's sweep: the product, its expired holds, its overdue orders.
    SweepProduct {
        /// The product.
        product_id: ProductId,
    },
}

impl Plan {
    /// The plan of a batch of hold requests.
    pub fn place_holds(product_id: ProductId, requests: &[HoldRequest]) -> Plan {
        let mut keys: Vec<IdempotencyKey> = requests.iter().filter_map(|r| r.key.clone()).collect();
        keys.sort();
        keys.dedup();
        Plan::PlaceHolds {
            product_id,
            keys,
            unkeyed: requests.iter().any(|r| r.key.is_none()),
        }
    }

    /// The next row to load, given the rows loaded so far; `None` when the decision has all it
    /// needs.
    pub fn next(&self, rows: &Rows) -> Option<Load> {
        match self {
            Plan::PlaceHolds {
                product_id,
                keys,
                unkeyed,
            } => {
                if let Some(key) = keys.iter().find(|k| !rows.request_keys.contains_key(*k)) {
                    return Some(Load::RequestKey(key.clone()));
                }
                let fresh = *unkeyed || rows.request_keys.values().any(Option::is_none);
                if !fresh {
                    return None;
                }
                product_then(rows, *product_id, |_| {
                    rows.expired
                        .is_none()
                        .then_some(Load::ExpiredHolds(*product_id))
                })
            }
            Plan::PlaceOrder { hold_id, key } => {
                if let Some(key) = key {
                    match rows.request_keys.get(key) {
                        None => return Some(Load::RequestKey(key.clone())),
                        Some(Some(_)) => return None,
                        Some(None) => {}
                    }
                }
                hold_then(rows, *hold_id, |_| None)
            }
            Plan::ApplyWebhook { hold_id, key } => {
                let before = hold_then(rows, *hold_id, |hold| match hold.state {
                    HoldState::Consumed(id) if rows.order.is_none() => Some(Load::Order {
                        product: hold.product_id,
                        id,
                    }),
                    _ => None,
                });
                before.or_else(|| rows.webhook.is_none().then(|| Load::Webhook(key.clone())))
            }
            Plan::Restock { product_id } => product_then(rows, *product_id, |_| None),
            Plan::SweepProduct { product_id } => product_then(rows, *product_id, |_| {
                if rows.expired.is_none() {
                    Some(Load::ExpiredHolds(*product_id))
                } else if rows.overdue.is_none() {
                    Some(Load::OverdueOrders(*product_id))
                } else {
                    None
                }
            }),
        }
    }
}

/// The product's lock, then what `then` asks for once the product exists.
fn product_then(
    rows: &Rows,
    product_id: ProductId,
    then: impl FnOnce(&Product) -> Option<Load>,
) -> Option<Load> {
    match &rows.product {
        None => Some(Load::Product(product_id)),
        Some(None) => None,
        Some(Some(product)) => then(product.as_ref()),
    }
}

/// A hold found without a lock, its product locked, the hold locked and read again, then what
/// `then` asks for once the locked hold exists. Nothing when the hold or its product is missing.
fn hold_then(
    rows: &Rows,
    hold_id: HoldId,
    then: impl FnOnce(&Hold) -> Option<Load>,
) -> Option<Load> {
    let found = match &rows.found_hold {
        None => return Some(Load::FindHold(hold_id)),
        Some(None) => return None,
        Some(Some(found)) => found,
    };
    product_then(rows, found.product_id, |product| match &rows.hold {
        None => Some(Load::Hold {
            product: product.id,
            id: hold_id,
        }),
        Some(None) => None,
        Some(Some(hold)) => then(hold),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Qty;
    use crate::locks::LockOrder;
    use crate::time::Timestamp;

    fn key(k: &str) -> IdempotencyKey {
        IdempotencyKey::parse(k).unwrap()
    }

    fn product(id: u64) -> Product {
        crate::product::create_product("p", crate::ids::Cents(100), Qty(5))
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
            assert!(loads.len() < 32, "the plan ends: {loads:?}");
            if let Some(lock) = load.lock() {
                locks.take(lock).unwrap();
            }
            rows.put(answer(&load));
            loads.push(load);
        }
        (loads, rows)
    }

    #[test]
    fn a_batch_locks_its_keys_in_order_then_the_product_unless_every_key_replays() {
        let request = |k: Option<&str>| HoldRequest {
            qty: Qty(1),
            key: k.map(key),
        };
        let plan = Plan::place_holds(ProductId(3), &[request(Some("b")), request(Some("a"))]);
        let record = |k: &IdempotencyKey| RequestRecord {
            key: k.clone(),
            request: crate::request::KeyedRequest::PlaceHold {
                product_id: ProductId(3),
                qty: Qty(1),
            },
            resource_id: 1,
            created: true,
            created_at: Timestamp(0),
        };
        let (loads, _) = run(&plan, |load| match load {
            Load::RequestKey(k) => Loaded::RequestKey(k.clone(), Some(record(k))),
            other => panic!("asked for {other:?}"),
        });
        assert_eq!(
            loads,
            [Load::RequestKey(key("a")), Load::RequestKey(key("b"))]
        );
        let (loads, rows) = run(&plan, |load| match load {
            Load::RequestKey(k) if k == &key("a") => Loaded::RequestKey(k.clone(), None),
            Load::RequestKey(k) => Loaded::RequestKey(k.clone(), Some(record(k))),
            Load::Product(id) => Loaded::Product(Some(Cow::Owned(product(id.0)))),
            Load::ExpiredHolds(_) => Loaded::ExpiredHolds(vec![]),
            other => panic!("asked for {other:?}"),
        });
        assert_eq!(
            loads[2..],
            [
                Load::Product(ProductId(3)),
                Load::ExpiredHolds(ProductId(3))
            ]
        );
        assert_eq!(rows.product().map(|p| p.id), Some(ProductId(3)));
        assert!(rows.request_record(&key("b")).is_some());
        assert!(rows.request_record(&key("a")).is_none());
        let unknown = Plan::place_holds(ProductId(3), &[request(None)]);
        let (loads, _) = run(&unknown, |_| Loaded::Product(None));
        assert_eq!(loads, [Load::Product(ProductId(3))]);
    }

    #[test]
    fn an_order_finds_its_hold_then_locks_the_product_and_the_hold() {
        let plan = Plan::PlaceOrder {
            hold_id: HoldId(4),
            key: Some(key("k")),
        };
        let (loads, rows) = run(&plan, |load| match load {
            Load::RequestKey(k) => Loaded::RequestKey(k.clone(), None),
            Load::FindHold(_) => Loaded::FoundHold(Some(hold(4, 2, HoldState::Held))),
            Load::Product(id) => Loaded::Product(Some(Cow::Owned(product(id.0)))),
            Load::Hold { .. } => Loaded::Hold(Some(hold(4, 2, HoldState::Held))),
            other => panic!("asked for {other:?}"),
        });
        assert_eq!(
            loads,
            [
                Load::RequestKey(key("k")),
                Load::FindHold(HoldId(4)),
                Load::Product(ProductId(2)),
                Load::Hold {
                    product: ProductId(2),
                    id: HoldId(4)
                },
            ]
        );
        let (hold_read, product_read) = rows.hold_and_product().unwrap().unwrap();
        assert_eq!((hold_read.id, product_read.id), (HoldId(4), ProductId(2)));
        // A hold naming a missing product is corrupt rows, said so.
        let (_, rows) = run(&plan, |load| match load {
            Load::RequestKey(k) => Loaded::RequestKey(k.clone(), None),
            Load::FindHold(_) => Loaded::FoundHold(Some(hold(4, 2, HoldState::Held))),
            _ => Loaded::Product(None),
        });
        assert_eq!(
            rows.hold_and_product(),
            Err(Violation::DanglingProduct {
                product_id: ProductId(2)
            })
        );
        let (loads, rows) = run(&plan, |load| match load {
            Load::RequestKey(k) => Loaded::RequestKey(k.clone(), None),
            _ => Loaded::FoundHold(None),
        });
        assert_eq!(loads.len(), 2, "an unknown hold ends the plan: {loads:?}");
        assert_eq!(rows.hold_and_product(), Ok(None));
    }

    #[test]
    fn a_webhook_locks_the_product_its_rows_then_its_record() {
        let plan = Plan::ApplyWebhook {
            hold_id: HoldId(4),
            key: key("w"),
        };
        let consumed = hold(4, 2, HoldState::Consumed(OrderId(9)));
        let (loads, rows) = run(&plan, |load| match load {
            Load::FindHold(_) => Loaded::FoundHold(Some(consumed)),
            Load::Hold { .. } => Loaded::Hold(Some(consumed)),
            Load::Product(id) => Loaded::Product(Some(Cow::Owned(product(id.0)))),
            Load::Order { .. } => Loaded::Order(None),
            Load::Webhook(_) => Loaded::Webhook(None),
            other => panic!("asked for {other:?}"),
        });
        assert_eq!(
            loads[3..],
            [
                Load::Order {
                    product: ProductId(2),
                    id: OrderId(9)
                },
                Load::Webhook(key("w"))
            ]
        );
        assert_eq!(
            rows.order_of_hold(),
            Err(Violation::HoldOrderMismatch {
                hold_id: HoldId(4),
                order_id: OrderId(9)
            })
        );
        // An unknown hold: only the record, still last.
        let (loads, _) = run(&plan, |load| match load {
            Load::FindHold(_) => Loaded::FoundHold(None),
            _ => Loaded::Webhook(None),
        });
        assert_eq!(loads, [Load::FindHold(HoldId(4)), Load::Webhook(key("w"))]);
    }

    #[test]
    fn a_sweep_locks_the_product_then_reads_its_expired_holds_and_overdue_orders() {
        let plan = Plan::SweepProduct {
            product_id: ProductId(1),
        };
        let (loads, _) = run(&plan, |load| match load {
            Load::Product(id) => Loaded::Product(Some(Cow::Owned(product(id.0)))),
            Load::ExpiredHolds(_) => Loaded::ExpiredHolds(vec![]),
            Load::OverdueOrders(_) => Loaded::OverdueOrders(vec![]),
            other => panic!("asked for {other:?}"),
        });
        assert_eq!(
            loads,
            [
                Load::Product(ProductId(1)),
                Load::ExpiredHolds(ProductId(1)),
                Load::OverdueOrders(ProductId(1))
            ]
        );
        let restock = Plan::Restock {
            product_id: ProductId(1),
        };
        let (loads, _) = run(&restock, |_| Loaded::Product(None));
        assert_eq!(loads, [Load::Product(ProductId(1))]);
    }
}
