//! Refinement: the simulated storage's final rows must equal what the core's in-memory
//! [`Ledger`] produces when it replays the committed operations in commit order, each at the time
//! its server's clock gave inside the transaction. If the row locks serialise the transactions
//! as they should, commit order is a legal sequential order and the two agree; a transaction that
//! decided on rows another one changed underneath it shows up here as a difference.
//!
//! Each request runs inside [`OP`], a task-local naming its command; the instance's clock notes
//! every reading in it, and the storage logs the command, the last reading and the rows it
//! inserted when the transaction commits with writes.

use std::cell::RefCell;
use std::collections::BTreeMap;

use flashsale_core::{
    Command, Hold, HoldId, HoldState, Ledger, Order, OrderId, ProductId, Timestamp, WebhookPayload,
    WebhookRecord,
};

tokio::task_local! {
    /// The operation the current request performs, and the last time its clock gave.
    pub static OP: RefCell<OpContext>;
}

/// What the current request does.
#[derive(Clone, Debug)]
pub struct OpContext {
    /// The command, with the storage's ids.
    pub command: Command,
    /// The last clock reading inside the request.
    pub now: Option<Timestamp>,
}

impl OpContext {
    /// A context for `command`.
    pub fn new(command: Command) -> RefCell<OpContext> {
        RefCell::new(OpContext { command, now: None })
    }
}

/// Notes a clock reading in the current request, if there is one.
pub fn note_now(now: Timestamp) {
    let _ = OP.try_with(|op| op.borrow_mut().now = Some(now));
}

/// The current request's command and clock, if there is one.
pub fn current() -> Option<OpContext> {
    OP.try_with(|op| op.borrow().clone()).ok()
}

/// One committed transaction that wrote rows.
#[derive(Clone, Debug)]
pub struct Committed {
    /// What it did, with the storage's ids.
    pub command: Command,
    /// The clock reading it decided at.
    pub now: Timestamp,
    /// Holds it inserted (storage ids).
    pub holds_inserted: Vec<u64>,
    /// Orders it inserted (storage ids).
    pub orders_inserted: Vec<u64>,
    /// Products it inserted (storage ids).
    pub products_inserted: Vec<u64>,
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
            } => Command::PlaceHold {
                product_id: self.product(product_id)?,
                qty,
                ttl_ms,
            },
            Command::PlaceOrder {
                hold_id,
                payment_window_ms,
            } => Command::PlaceOrder {
                hold_id: self.hold(hold_id),
                payment_window_ms,
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
}

/// Replays `log` through a fresh ledger and compares the result with `stored`, the storage's
/// final rows.
///
/// # Errors
/// The first disagreement: a committed transaction the ledger refuses, a different number of
/// rows created, or a final row that differs.
pub fn check(stored: &Ledger, log: &[Committed]) -> Result<(), String> {
    let mut ledger = Ledger::new();
    let mut ids = Ids::default();
    for (i, entry) in log.iter().enumerate() {
        let command = ids
            .command(&entry.command)
            .map_err(|e| format!("commit {i}: {e}"))?;
        let before = counts(&ledger);
        ledger
            .apply(entry.now, command.clone())
            .map_err(|rejection| {
                format!(
                    "commit {i} ({command:?} at {}) wrote rows, the ledger refuses it: {rejection}",
                    entry.now
                )
            })?;
        // The ledger allocates each kind's ids densely from 1, so what it created is the ids
        // past the counts from before.
        let after = counts(&ledger);
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
        let stored_counts = (
            entry.products_inserted.len(),
            entry.holds_inserted.len(),
            entry.orders_inserted.len(),
        );
        if counts != stored_counts {
            return Err(format!(
                "commit {i} ({command:?}): the storage inserted {stored_counts:?} rows, the ledger {counts:?}"
            ));
        }
        ids.products
            .extend(entry.products_inserted.iter().copied().zip(products));
        ids.holds
            .extend(entry.holds_inserted.iter().copied().zip(holds));
        ids.orders
            .extend(entry.orders_inserted.iter().copied().zip(orders));
    }
    compare(stored, &ledger, &ids)
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
        let want = replayed.product(id).map(|p| (p.stock, p.units_received));
        if want != Some((product.stock, product.units_received)) {
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
        let translated = Order {
            id: ids.order(order.id)?,
            hold_id: ids.hold(order.hold_id),
            product_id: ids.product(order.product_id)?,
            ..*order
        };
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
    use flashsale_core::{Cents, Qty};

    use super::*;

    fn log() -> Vec<Committed> {
        let create = Command::CreateProduct {
            name: "P".into(),
            price_cents: Cents(1),
            stock: Qty(3),
        };
        let hold = Command::PlaceHold {
            product_id: ProductId(7),
            qty: Qty(2),
            ttl_ms: 1_000,
        };
        vec![
            Committed {
                command: create,
                now: Timestamp(0),
                holds_inserted: vec![],
                orders_inserted: vec![],
                products_inserted: vec![7],
            },
            Committed {
                command: hold,
                now: Timestamp(10),
                holds_inserted: vec![40],
                orders_inserted: vec![],
                products_inserted: vec![],
            },
        ]
    }

    fn stored(qty: u32) -> Ledger {
        let product = flashsale_core::Product {
            id: ProductId(7),
            name: "P".into(),
            price_cents: Cents(1),
            stock: Qty(3),
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
        assert_eq!(check(&stored(2), &log()), Ok(()));
    }

    #[test]
    fn a_row_that_differs_from_the_replay_is_reported() {
        let difference = check(&stored(1), &log()).expect_err("qty 1 is not what was decided");
        assert!(difference.starts_with("hold 40"), "{difference}");
    }

    #[test]
    fn a_commit_the_ledger_refuses_is_reported() {
        let mut log = log();
        log[1].command = Command::PlaceHold {
            product_id: ProductId(7),
            qty: Qty(4),
            ttl_ms: 1_000,
        };
        let difference = check(&stored(2), &log).expect_err("4 of 3 units cannot be held");
        assert!(difference.contains("refuses"), "{difference}");
    }
}
