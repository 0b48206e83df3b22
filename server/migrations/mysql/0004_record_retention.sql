-- The sweeper purges client request-key records and webhook records once they are older than
-- their retention (--request-key-retention, --webhook-retention), oldest first, in small
-- batches; these indexes find them without reading every record.

CREATE INDEX IF NOT EXISTS request_keys_by_created ON request_keys (created_at);
CREATE INDEX IF NOT EXISTS webhooks_by_received ON webhooks (received_at);
