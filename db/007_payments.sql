-- One row per charged order: the idempotency key the charge was made with (the same for every
-- attempt at it, see payment/gateway.py), the gateway and its reference of the charge, and the
-- outcome. Written in the payment's transaction, with the order's status: what an operator
-- reconciles with the gateway's records, key by key.
CREATE TABLE IF NOT EXISTS payments (
    order_id           uuid PRIMARY KEY REFERENCES orders (id) ON DELETE CASCADE,
    idempotency_key    text NOT NULL UNIQUE,
    gateway            text NOT NULL,
    gateway_reference  text NOT NULL,
    outcome            text NOT NULL CHECK (outcome IN ('completed', 'failed')),
    amount             numeric(18, 2) NOT NULL CHECK (amount >= 0),
    payment_id         uuid NOT NULL,
    reason             text,
    created_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
