-- Flashsale schema for MySQL/MariaDB (InnoDB). Times are Unix milliseconds, as the core counts
-- them; ids are allocated here. Unique keys back the rules: one order per hold, one record per
-- webhook idempotency key, one stored response per request idempotency key.
--
-- MySQL cannot roll DDL back, so a process killed in the middle of a migration leaves part of it
-- applied; every MySQL migration is written to run again over its own partial work (IF NOT EXISTS,
-- recomputing updates), and startup reruns a migration left unfinished.

CREATE TABLE IF NOT EXISTS products (
    id             BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name           VARCHAR(255) NOT NULL,
    price_cents    BIGINT UNSIGNED NOT NULL,
    stock          INT UNSIGNED NOT NULL,
    units_received BIGINT UNSIGNED NOT NULL
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS holds (
    id             BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    product_id     BIGINT UNSIGNED NOT NULL,
    qty            INT UNSIGNED NOT NULL,
    created_at     BIGINT UNSIGNED NOT NULL,
    expires_at     BIGINT UNSIGNED NOT NULL,
    state          VARCHAR(16) NOT NULL,
    release_reason VARCHAR(16) NULL,
    order_id       BIGINT UNSIGNED NULL,
    KEY holds_by_product_state (product_id, state, expires_at),
    KEY holds_by_state_expiry (state, expires_at),
    CONSTRAINT holds_product FOREIGN KEY (product_id) REFERENCES products (id)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS orders (
    id             BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    hold_id        BIGINT UNSIGNED NOT NULL,
    product_id     BIGINT UNSIGNED NOT NULL,
    qty            INT UNSIGNED NOT NULL,
    total_cents    BIGINT UNSIGNED NOT NULL,
    status         VARCHAR(16) NOT NULL,
    created_at     BIGINT UNSIGNED NOT NULL,
    payment_due_at BIGINT UNSIGNED NOT NULL,
    UNIQUE KEY orders_one_per_hold (hold_id),
    KEY orders_by_status_due (status, payment_due_at),
    CONSTRAINT orders_hold FOREIGN KEY (hold_id) REFERENCES holds (id),
    CONSTRAINT orders_product FOREIGN KEY (product_id) REFERENCES products (id)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS webhooks (
    idempotency_key VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    hold_id         BIGINT UNSIGNED NOT NULL,
    status          VARCHAR(16) NOT NULL,
    fingerprint     CHAR(16) NOT NULL,
    result          VARCHAR(32) NOT NULL,
    order_id        BIGINT UNSIGNED NULL,
    received_at     BIGINT UNSIGNED NOT NULL
) ENGINE = InnoDB;
