-- Flashsale schema for SQLite. Times are Unix milliseconds, as the core counts them; ids are
-- allocated here. Unique keys back the rules: one order per hold, one record per webhook
-- idempotency key. Writers serialise on BEGIN IMMEDIATE, so there are no row locks.

CREATE TABLE products (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT NOT NULL,
    price_cents    INTEGER NOT NULL CHECK (price_cents >= 0),
    stock          INTEGER NOT NULL CHECK (stock >= 0),
    units_received INTEGER NOT NULL CHECK (units_received >= 0)
);

CREATE TABLE holds (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id     INTEGER NOT NULL REFERENCES products (id),
    qty            INTEGER NOT NULL CHECK (qty > 0),
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    state          TEXT NOT NULL,
    release_reason TEXT NULL,
    order_id       INTEGER NULL
);
CREATE INDEX holds_by_product_state ON holds (product_id, state, expires_at);
CREATE INDEX holds_by_state_expiry ON holds (state, expires_at);

CREATE TABLE orders (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    hold_id        INTEGER NOT NULL UNIQUE REFERENCES holds (id),
    product_id     INTEGER NOT NULL REFERENCES products (id),
    qty            INTEGER NOT NULL CHECK (qty > 0),
    total_cents    INTEGER NOT NULL CHECK (total_cents >= 0),
    status         TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    payment_due_at INTEGER NOT NULL
);
CREATE INDEX orders_by_status_due ON orders (status, payment_due_at);

CREATE TABLE webhooks (
    idempotency_key TEXT NOT NULL PRIMARY KEY,
    hold_id         INTEGER NOT NULL,
    status          TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    result          TEXT NOT NULL,
    order_id        INTEGER NULL,
    received_at     INTEGER NOT NULL
);
