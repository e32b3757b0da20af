-- The scope `metrics`: a key that reads GET /metrics and nothing else, for Prometheus (README
-- "Metrics"). Only the CHECK changes: keys of the other scopes stay as they are.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scope_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scope_check
    CHECK (scope IN ('orders:write', 'admin', 'metrics'));
