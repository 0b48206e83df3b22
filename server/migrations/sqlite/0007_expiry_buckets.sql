-- Expiry in bounded work (docs/ARCHITECTURE.md, "Expiry buckets"): each product keeps one bucket
-- per deadline of its held holds, with their units and number. A grant or a sweep folds the
-- buckets due into the product's counters (`units_held` gives their units back, `holds_to_retire`
-- counts the holds expired for good, `expired_through` is the last deadline folded), so no
-- request's work grows with the number of holds that expired; the sweeper retires the expired
-- hold rows later, in chunks. A product's latest bucket (`open_*`) stays in its own row, which
-- every grant writes anyway, and reaches the table when a later deadline opens.
--
-- A bucket is written by signed deltas in one upsert, so its counts carry no CHECK (the databases
-- check an upsert's inserted row before they find the conflict): a bucket read below zero is
-- corrupt, and the storage says so on the way out. An existing database gets one bucket per
-- product and deadline of its held holds in the table, none folded and none open: availability
-- reads the same before and after.

CREATE TABLE expiry_buckets (
    product_id INTEGER NOT NULL REFERENCES products (id),
    expires_at INTEGER NOT NULL,
    units      INTEGER NOT NULL,
    holds      INTEGER NOT NULL,
    PRIMARY KEY (product_id, expires_at)
) WITHOUT ROWID;
CREATE INDEX expiry_buckets_by_deadline ON expiry_buckets (expires_at);

ALTER TABLE products ADD COLUMN expired_through INTEGER NOT NULL DEFAULT 0 CHECK (expired_through >= 0);
ALTER TABLE products ADD COLUMN holds_to_retire INTEGER NOT NULL DEFAULT 0 CHECK (holds_to_retire >= 0);
ALTER TABLE products ADD COLUMN open_expires_at INTEGER NOT NULL DEFAULT 0 CHECK (open_expires_at >= 0);
ALTER TABLE products ADD COLUMN open_units INTEGER NOT NULL DEFAULT 0 CHECK (open_units >= 0);
ALTER TABLE products ADD COLUMN open_holds INTEGER NOT NULL DEFAULT 0 CHECK (open_holds >= 0);
CREATE INDEX products_to_retire ON products (holds_to_retire) WHERE holds_to_retire > 0;

INSERT INTO expiry_buckets (product_id, expires_at, units, holds)
SELECT product_id, expires_at, SUM(qty), COUNT(*) FROM holds
WHERE state = 'held'
GROUP BY product_id, expires_at;
