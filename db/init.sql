-- acme-orders schema and catalogue.
--
-- Every statement is idempotent: docker compose's PostgreSQL runs this file on first start, and
-- `acme-orders migrate` runs it (and the numbered files beside it) on every upgrade.

CREATE TABLE IF NOT EXISTS products (
    sku        text PRIMARY KEY,
    name       text NOT NULL,
    price      numeric(12, 2) NOT NULL CHECK (price >= 0),
    stock_qty  integer NOT NULL CHECK (stock_qty >= 0)
);

CREATE TABLE IF NOT EXISTS orders (
    id           uuid PRIMARY KEY,
    customer_id  text NOT NULL,
    email        text NOT NULL,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'reserved', 'paid', 'payment_failed', 'out_of_stock',
                                   'cancelled')),
    total        numeric(18, 2) NOT NULL CHECK (total >= 0),
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The time the current status was written: latency is updated_at - created_at.
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
-- Room on each page for the three status updates of an order's life as HOT updates (see
-- 004_hot_status_updates.sql).
) WITH (fillfactor = 80);
-- Both end in id, as GET /orders pages (006_keyset_order_list.sql).
CREATE INDEX IF NOT EXISTS orders_created_at_idx ON orders (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS orders_customer_idx ON orders (customer_id, created_at DESC, id DESC);

CREATE TABLE IF NOT EXISTS order_items (
    order_id    uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    sku         text NOT NULL REFERENCES products (sku),
    qty         integer NOT NULL CHECK (qty > 0),
    unit_price  numeric(12, 2) NOT NULL CHECK (unit_price >= 0),
    PRIMARY KEY (order_id, sku)
);

-- The database itself refuses a status that moves backwards or leaves a final status, whoever
-- writes it, and stamps updated_at whenever the status changes.
CREATE OR REPLACE FUNCTION orders_guard_status() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF NOT ((OLD.status = 'pending' AND NEW.status IN ('reserved', 'out_of_stock', 'cancelled'))
             OR (OLD.status = 'reserved' AND NEW.status IN ('paid', 'payment_failed', 'cancelled')))
        THEN
            RAISE EXCEPTION 'order % cannot move from % to %', OLD.id, OLD.status, NEW.status
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.updated_at := clock_timestamp();
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS orders_guard_status ON orders;
CREATE TRIGGER orders_guard_status
    BEFORE UPDATE OF status ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_guard_status();

-- Stock the inventory service holds for an order, so that a failed payment gives back exactly
-- what was taken, once.
CREATE TABLE IF NOT EXISTS stock_reservations (
    order_id     uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    sku          text NOT NULL REFERENCES products (sku),
    qty          integer NOT NULL CHECK (qty > 0),
    status       text NOT NULL DEFAULT 'reserved' CHECK (status IN ('reserved', 'released')),
    reserved_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    released_at  timestamptz,
    PRIMARY KEY (order_id, sku)
);

CREATE TABLE IF NOT EXISTS event_outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      uuid NOT NULL UNIQUE,
    event_type    text NOT NULL,
    routing_key   text NOT NULL,
    order_id      uuid,
    payload       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'NEW' CHECK (status IN ('NEW', 'SENT')),
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at  timestamptz
);
-- The publisher only ever scans NEW rows; a partial index keeps that scan small as SENT rows pile up.
CREATE INDEX IF NOT EXISTS event_outbox_new_idx ON event_outbox (id) WHERE status = 'NEW';
CREATE INDEX IF NOT EXISTS event_outbox_order_idx ON event_outbox (order_id);

-- One notification per statement, not per row: NOTIFY folds identical payloads within a
-- transaction, and the publisher only needs to know that there is something to relay.
CREATE OR REPLACE FUNCTION event_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('event_outbox', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS event_outbox_notify ON event_outbox;
CREATE TRIGGER event_outbox_notify
    AFTER INSERT ON event_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION event_outbox_notify();

CREATE TABLE IF NOT EXISTS processed_events (
    service       text NOT NULL,
    event_id      uuid NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (service, event_id)
);

CREATE TABLE IF NOT EXISTS notifications (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id    uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('order_paid', 'payment_failed', 'out_of_stock',
                                         'order_cancelled')),
    recipient   text NOT NULL,
    subject     text NOT NULL,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (order_id, kind)
);

-- The catalogue. ON CONFLICT DO NOTHING: re-running never resets the stock of a product.
INSERT INTO products (sku, name, price, stock_qty) VALUES
    ('TSHIRT-BLK-M',  'T-shirt, black, M',        19.90, 100),
    ('TSHIRT-GRY-S',  'T-shirt, grey, S',         19.90,  50),
    ('TSHIRT-WHT-L',  'T-shirt, white, L',        19.90, 120),
    ('HOODIE-NVY-L',  'Hoodie, navy, L',          49.00,  40),
    ('JEANS-IND-32',  'Jeans, indigo, W32',       59.50,  60),
    ('CAP-RED-OS',    'Cap, red, one size',       14.00,  80),
    ('SOCKS-BLK-3P',  'Socks, black, 3 pairs',     9.90, 200),
    ('MUG-ACME-350',  'Acme mug, 350 ml',         12.50,  75),
    ('BOTTLE-STL-750', 'Steel bottle, 750 ml',    24.00,  30),
    ('TOTE-CNV-NAT',  'Canvas tote, natural',     16.00,  90)
ON CONFLICT (sku) DO NOTHING;
