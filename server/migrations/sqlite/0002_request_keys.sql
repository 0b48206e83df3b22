-- Idempotency keys of client requests (the Idempotency-Key header of POST /api/holds and
-- POST /api/orders): one record per key, written in the transaction of the effect it names, so a
-- retry after a lost answer finds the hold or order it made instead of making another.

CREATE TABLE request_keys (
    idempotency_key TEXT NOT NULL PRIMARY KEY,
    request         TEXT NOT NULL CHECK (request IN ('place_hold', 'place_order')),
    product_id      INTEGER NULL,
    qty             INTEGER NULL CHECK (qty > 0),
    hold_id         INTEGER NULL,
    resource_id     INTEGER NOT NULL,
    created         BOOLEAN NOT NULL,
    created_at      INTEGER NOT NULL
);
