-- POST /orders honours an Idempotency-Key header: the key, a hash of the request it came with,
-- and the order it created. A retry with the same key and body gets that order back.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key           text PRIMARY KEY,
    request_hash  text NOT NULL,
    order_id      uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at_idx ON idempotency_keys (created_at);

-- Housekeeping deletes processed_events by age. BRIN: the table only grows at the end, in time
-- order, and a BRIN index costs next to nothing per insert.
CREATE INDEX IF NOT EXISTS processed_events_processed_at_brin
    ON processed_events USING brin (processed_at);
