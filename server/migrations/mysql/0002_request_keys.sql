-- Idempotency keys of client requests (the Idempotency-Key header of POST /api/holds and
-- POST /api/orders): one record per key, written in the transaction of the effect it names, so a
-- retry after a lost answer finds the hold or order it made instead of making another.

CREATE TABLE IF NOT EXISTS request_keys (
    idempotency_key VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    request         VARCHAR(16) NOT NULL,
    product_id      BIGINT UNSIGNED NULL,
    qty             INT UNSIGNED NULL,
    hold_id         BIGINT UNSIGNED NULL,
    resource_id     BIGINT UNSIGNED NOT NULL,
    created         BOOLEAN NOT NULL,
    created_at      BIGINT UNSIGNED NOT NULL
) ENGINE = InnoDB;
