-- The overdue orders of a product, found through an index of their own rather than the orders of
-- every product in (status, payment_due_at).

CREATE INDEX IF NOT EXISTS orders_by_product_status_due ON orders (product_id, status, payment_due_at);
