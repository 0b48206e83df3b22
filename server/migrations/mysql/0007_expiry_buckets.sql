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
-- reads the same before and after. Written to run again over its own partial work.

CREATE TABLE IF NOT EXISTS expiry_buckets (
    product_id BIGINT UNSIGNED NOT NULL,
    expires_at BIGINT UNSIGNED NOT NULL,
    units      BIGINT NOT NULL,
    holds      BIGINT NOT NULL,
    PRIMARY KEY (product_id, expires_at),
    KEY expiry_buckets_by_deadline (expires_at)
) ENGINE = InnoDB;

ALTER TABLE products
    ADD COLUMN IF NOT EXISTS expired_through BIGINT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS holds_to_retire INT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS open_expires_at BIGINT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS open_units INT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS open_holds INT UNSIGNED NOT NULL DEFAULT 0;

CREATE INDEX IF NOT EXISTS products_to_retire ON products (holds_to_retire);

DELETE FROM expiry_buckets;

INSERT INTO expiry_buckets (product_id, expires_at, units, holds)
SELECT product_id, expires_at, SUM(qty), COUNT(*) FROM holds
WHERE state = 'held'
GROUP BY product_id, expires_at;
