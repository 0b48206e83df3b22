-- The product row carries the units of its held holds (expired or not), kept in step by every
-- grant, release and order in the same transaction, so availability reads one row plus the few
-- expired-but-unreleased holds instead of summing every active hold.

ALTER TABLE products ADD COLUMN units_held INTEGER NOT NULL DEFAULT 0 CHECK (units_held >= 0);

UPDATE products SET units_held = (
    SELECT COALESCE(SUM(h.qty), 0) FROM holds h
    WHERE h.product_id = products.id AND h.state = 'held'
);
