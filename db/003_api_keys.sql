-- API keys of the order API (`acme-orders apikey create|list|revoke`). Only a SHA-256 hash of
-- each key is stored: the key itself is shown once, when it is created. A key is revoked, never
-- deleted, so the orders it placed keep their owner.
CREATE TABLE IF NOT EXISTS api_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    scope       text NOT NULL CHECK (scope IN ('orders:write', 'admin')),
    key_hash    text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    revoked_at  timestamptz
);

-- The key that placed an order; NULL for orders placed while AUTH_DISABLED was set (and for those
-- older than this file). An orders:write key reads only its own orders.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS api_key_id bigint REFERENCES api_keys (id);
-- Partial: orders placed without a key (the quick start, the benchmark) cost no index upkeep.
CREATE INDEX IF NOT EXISTS orders_api_key_idx
    ON orders (api_key_id, created_at DESC) WHERE api_key_id IS NOT NULL;
