//! The simulated database's committed rows, one table per kind, with each kind's last id, as a
//! transaction reads and stages them ([`Row`], keyed by [`RowKey`]) and as the trace shows them.
//! A product's expiry buckets are rows too; a folded bucket is staged as gone and deleted at
//! commit.

use std::collections::BTreeMap;

use flashsale_check::words;
use flashsale_core::{
    ExpiryBucket, Hold, Ledger, Order, Product, ProductId, RequestRecord, Timestamp, WebhookRecord,
};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum RowKey {
    Product(u64),
    Hold(u64),
    Order(u64),
    Webhook(String),
    RequestKey(String),
    /// A product's bucket at an instant.
    Bucket(u64, u64),
}

#[derive(Clone, Debug)]
pub(super) enum Row {
    Product(Product),
    Hold(Hold),
    Order(Order),
    Webhook(WebhookRecord),
    RequestKey(RequestRecord),
    Bucket(ExpiryBucket),
    /// A bucket folded: deleted at commit.
    BucketGone(ProductId, Timestamp),
}

impl Row {
    /// The row's key.
    pub(super) fn key(&self) -> RowKey {
        match self {
            Row::Product(p) => RowKey::Product(p.id.0),
            Row::Hold(h) => RowKey::Hold(h.id.0),
            Row::Order(o) => RowKey::Order(o.id.0),
            Row::Webhook(w) => RowKey::Webhook(w.key.as_str().to_owned()),
            Row::RequestKey(r) => RowKey::RequestKey(r.key.as_str().to_owned()),
            Row::Bucket(b) => RowKey::Bucket(b.product_id.0, b.expires_at.as_ms()),
            Row::BucketGone(p, at) => RowKey::Bucket(p.0, at.as_ms()),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(super) struct Tables {
    pub(super) products: BTreeMap<u64, Product>,
    pub(super) holds: BTreeMap<u64, Hold>,
    pub(super) orders: BTreeMap<u64, Order>,
    pub(super) webhooks: BTreeMap<String, WebhookRecord>,
    pub(super) request_keys: BTreeMap<String, RequestRecord>,
    pub(super) buckets: BTreeMap<(u64, u64), ExpiryBucket>,
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
            RowKey::Bucket(p, at) => self.buckets.get(&(*p, *at)).copied().map(Row::Bucket),
        }
    }

    pub(super) fn put(&mut self, row: Row) {
        match row {
            Row::Product(p) => drop(self.products.insert(p.id.0, p)),
            Row::Hold(h) => drop(self.holds.insert(h.id.0, h)),
            Row::Order(o) => drop(self.orders.insert(o.id.0, o)),
            Row::Webhook(w) => drop(self.webhooks.insert(w.key.as_str().to_owned(), w)),
            Row::RequestKey(r) => drop(self.request_keys.insert(r.key.as_str().to_owned(), r)),
            Row::Bucket(b) => drop(
                self.buckets
                    .insert((b.product_id.0, b.expires_at.as_ms()), b),
            ),
            Row::BucketGone(p, at) => drop(self.buckets.remove(&(p.0, at.as_ms()))),
        }
    }

    pub(super) fn ledger(&self) -> Ledger {
        Ledger::from_rows(
            self.products.values().cloned(),
            self.holds.values().copied(),
            self.orders.values().copied(),
            self.webhooks.values().cloned(),
        )
        .with_buckets(self.buckets.values().copied())
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
        Row::Bucket(b) => (
            Some(b.product_id),
            format!(
                "expiry bucket {}: {} units of {} holds",
                words::time(b.expires_at),
                b.units,
                b.holds
            ),
        ),
        Row::BucketGone(p, at) => (
            Some(*p),
            format!("expiry bucket {} folded", words::time(*at)),
        ),
    }
}
