-- Why each cancelled order was cancelled (payment_failed: a failed payment webhook;
-- payment_window_closed: no payment before payment_due_at), so that an operator can list the
-- payments that did not become a sale. Orders cancelled before this migration get the reason
-- their webhook records show: a failed webhook applied to their hold, else the payment window.

ALTER TABLE orders ADD COLUMN cancel_reason TEXT NULL;

UPDATE orders SET cancel_reason = CASE
    WHEN EXISTS (SELECT 1 FROM webhooks w WHERE w.hold_id = orders.hold_id
                 AND w.status = 'failed' AND w.result = 'applied') THEN 'payment_failed'
    ELSE 'payment_window_closed' END
WHERE status = 'cancelled' AND cancel_reason IS NULL;

CREATE INDEX orders_by_cancel_reason ON orders (cancel_reason, id);
CREATE INDEX webhooks_by_result ON webhooks (result, received_at, idempotency_key);
