-- The product row carries the units of its held holds (expired or not), kept in step by every
-- grant, release and order in the same transaction, so availability reads one row plus the few
-- expired-but-unreleased holds instead of summing every active hold. It also makes every change
-- of a product's units write the product row, which is what Galera's certification compares.

ALTER TABLE products ADD COLUMN IF NOT EXISTS units_held INT UNSIGNED NOT NULL DEFAULT 0 AFTER stock;

UPDATE products SET units_held = (
    SELECT COALESCE(SUM(h.qty), 0) FROM holds h
    WHERE h.product_id = products.id AND h.state = 'held'
);
