-- Orders can be cancelled (by their key, an operator, or ORDER_TIMEOUT): a new final status, and
-- the customer's e-mail about it. The transitions into `cancelled` are in init.sql's trigger,
-- which every migrate re-applies.
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('pending', 'reserved', 'paid', 'payment_failed', 'out_of_stock', 'cancelled'));
ALTER TABLE notifications DROP CONSTRAINT notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check
    CHECK (kind IN ('order_paid', 'payment_failed', 'out_of_stock', 'order_cancelled'));

-- How far the expiry of overdue orders has got: every order placed up to this (created_at, id),
-- in the order of orders_created_at_idx, was final or has been cancelled as timed out. One row;
-- a publisher expires orders only while it holds this row's lock, so each order is looked at by
-- one instance, and each tick reads only the orders that fell due since the last one.
CREATE TABLE IF NOT EXISTS order_expiry (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    expired_through  timestamptz NOT NULL,
    through_id       uuid NOT NULL
);
