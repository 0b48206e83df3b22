//! The simulated database's committed rows, one table per kind, with each kind's last id, as a
//! transaction reads and stages them ([`Row`], keyed by [`RowKey`]) and as the trace shows them.

use std::collections::BTreeMap;

use flashsale_check::words;
use flashsale_core::{Hold, Ledger, Order, Product, ProductId, RequestRecord, WebhookRecord};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum RowKey {
    Product(u64),
    Hold(u64),
    Order(u64),
    Webhook(String),
    RequestKey(String),
}

#[derive(Clone, Debug)]
pub(super) enum Row {
    Product(Product),
    Hold(Hold),
    Order(Order),
    Webhook(WebhookRecord),
    RequestKey(RequestRecord),
}

#[derive(Clone, Debug, Default)]
pub(super) struct Tables {
    pub(super) products: BTreeMap<u64, Product>,
    pub(super) holds: BTreeMap<u64, Hold>,
    pub(super) orders: BTreeMap<u64, Order>,
    pub(super) webhooks: BTreeMap<String, WebhookRecord>,
    pub(super) request_keys: BTreeMap<String, RequestRecord>,
    pub(super) id_last: [u64; 3],
}

impl Tables {
    pub(super) fn get(&self, key: &RowKey) -> Option<Row> {
        match key {
            RowKey::Product(id) => self.products.get(id).cloned().map(Row::Product),
            RowKey::Hold(id) => self.holds.get(id).copied().map(Row::Hold),
            RowKey::Order(id) => self.orders.get(id).copied().map(Row::Order),
            RowKey::Webhook(key) => self.webhooks.get(key).cloned().map(Row::Webhook),
            RowKey::RequestKey(key) => self.request_keys.get(key).cloned().map(Row::RequestKey),
        }
    }

    pub(super) fn put(&mut self, row: Row) {
        match row {
            Row::Product(p) => drop(self.products.insert(p.id.0, p)),
            Row::Hold(h) => drop(self.holds.insert(h.id.0, h)),
            Row::Order(o) => drop(self.orders.insert(o.id.0, o)),
            Row::Webhook(w) => drop(self.webhooks.insert(w.key.as_str().to_owned(), w)),
            Row::RequestKey(r) => drop(self.request_keys.insert(r.key.as_str().to_owned(), r)),
        }
    }

    pub(super) fn ledger(&self) -> Ledger {
        Ledger::from_rows(
            self.products.values().cloned(),
            self.holds.values().copied(),
            self.orders.values().copied(),
            self.webhooks.values().cloned(),
        )
        .with_request_keys(self.request_keys.values().cloned())
    }
}

/// A row as the trace shows it, and its product.
pub(super) fn row_words(row: &Row) -> (Option<ProductId>, String) {
    match row {
        Row::Product(p) => (Some(p.id), words::product(p)),
        Row::Hold(h) => (Some(h.product_id), words::hold(h)),
        Row::Order(o) => (Some(o.product_id), words::order(o)),
        Row::Webhook(w) => (None, words::webhook(w)),
        Row::RequestKey(r) => (None, words::request_key(r)),
    }
}
