-- The overdue orders of the products a transaction has locked, found through an index of their
-- own: through (status, payment_due_at) a locking read would scan, and lock, the overdue orders
-- of every product, which other transactions hold under their own products' locks.
-- Written to run again over its own partial work.

CREATE INDEX IF NOT EXISTS orders_by_product_status_due ON orders (product_id, status, payment_due_at);
