//! Id translation for the replay: the storage numbers its rows its own way (MariaDB never hands
//! out a rolled-back id again), the ledger densely from 1, so commands, rows, answers and reads
//! are translated between the two as the replay learns which rows each commit inserted.

use std::collections::BTreeMap;

use flashsale_core::{
    Command, Hold, HoldId, HoldState, KeyedRequest, Ledger, Order, OrderId, Product, ProductId,
    Rejection, RequestRecord, WebhookPayload,
};

use crate::history::{Answer, Read, Seen, Target};

/// Storage ids to ledger ids, built while replaying.
#[derive(Debug, Default)]
pub(super) struct Ids {
    pub(super) products: BTreeMap<u64, ProductId>,
    pub(super) holds: BTreeMap<u64, HoldId>,
    pub(super) orders: BTreeMap<u64, OrderId>,
}

impl Ids {
    pub(super) fn product(&self, id: ProductId) -> Result<ProductId, String> {
        self.products
            .get(&id.0)
            .copied()
            .ok_or(format!("product {id} never committed"))
    }

    /// A hold the storage knows, or an id no replayed hold has (a webhook for a hold that never
    /// existed keeps its number, far above any replayed id).
    pub(super) fn hold(&self, id: HoldId) -> HoldId {
        self.holds.get(&id.0).copied().unwrap_or(id)
    }

    pub(super) fn order(&self, id: OrderId) -> Result<OrderId, String> {
        self.orders
            .get(&id.0)
            .copied()
            .ok_or(format!("order {id} never committed"))
    }

    pub(super) fn command(&self, command: &Command) -> Result<Command, String> {
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
            Command::SweepProduct {
                product_id,
                holds,
                orders,
            } => Command::SweepProduct {
                product_id: self.product(product_id)?,
                holds: holds.into_iter().map(|id| self.hold(id)).collect(),
                orders: (orders.into_iter())
                    .map(|id| self.order(id))
                    .collect::<Result<_, _>>()?,
            },
            other @ (Command::CreateProduct { .. } | Command::SeedDemo | Command::Sweep) => other,
        })
    }

    pub(super) fn order_row(&self, order: &Order) -> Result<Order, String> {
        Ok(Order {
            id: self.order(order.id)?,
            hold_id: self.hold(order.hold_id),
            product_id: self.product(order.product_id)?,
            ..*order
        })
    }

    /// A stored request-key record in the ledger's ids.
    pub(super) fn request_record(&self, record: &RequestRecord) -> Result<RequestRecord, String> {
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

    pub(super) fn rejection(&self, rejection: &Rejection) -> Result<Rejection, String> {
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
    pub(super) fn storage_hold(&self, hold: &Hold) -> Hold {
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
    pub(super) fn storage_order(&self, order: &Order) -> Order {
        Order {
            id: Ids::back(&self.orders, order.id, OrderId),
            hold_id: Ids::back(&self.holds, order.hold_id, HoldId),
            product_id: Ids::back(&self.products, order.product_id, ProductId),
            ..*order
        }
    }

    /// An answer of the ledger's in the storage's ids (the API's), where the storage has them.
    pub(super) fn to_storage(&self, answer: &Answer) -> Answer {
        match answer {
            Answer::Hold {
                hold,
                folded,
                replayed,
            } => Answer::Hold {
                hold: self.storage_hold(hold),
                folded: *folded,
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
    pub(super) fn read(&self, ledger: &Ledger, read: &Read) -> Option<Seen> {
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
    pub(super) fn answer(&self, answer: &Answer) -> Result<Answer, String> {
        Ok(match answer {
            Answer::Hold {
                hold,
                folded,
                replayed,
            } => Answer::Hold {
                hold: translate_hold(hold, self)?,
                folded: *folded,
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

pub(super) fn translate_hold(hold: &Hold, ids: &Ids) -> Result<Hold, String> {
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
