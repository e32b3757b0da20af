-- What the reconciliation audit (`acme-orders audit`) holds the products' stock to: a product's
-- stock is what this ledger gives it (its starting stock, plus what operators added with
-- `acme-orders stock add`) minus what orders hold (stock_reservations still 'reserved'). Orders
-- take stock and give it back in the same transaction as their reservation row, so the
-- reservations are the ledger of everything orders did; this table is the rest. Safe to run
-- again, like the files before it: each product gets one starting stock.
CREATE TABLE IF NOT EXISTS stock_ledger (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku          text NOT NULL REFERENCES products (sku),
    qty          integer NOT NULL,
    reason       text NOT NULL CHECK (reason IN ('starting_stock', 'operator_added')),
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((reason = 'starting_stock' AND qty >= 0) OR (reason = 'operator_added' AND qty > 0))
);
CREATE INDEX IF NOT EXISTS stock_ledger_sku_idx ON stock_ledger (sku);

-- A product starts with the stock it is created with, whoever creates it (the catalogue of
-- init.sql, a product added later).
CREATE OR REPLACE FUNCTION products_record_starting_stock() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stock_ledger (sku, qty, reason) VALUES (NEW.sku, NEW.stock_qty, 'starting_stock');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS products_record_starting_stock ON products;
CREATE TRIGGER products_record_starting_stock
    AFTER INSERT ON products
    FOR EACH ROW EXECUTE FUNCTION products_record_starting_stock();

-- The products there already have had stock taken and given back by orders: they started with
-- what they have now plus what orders still hold. The lock (held to the commit, a moment) keeps
-- inventory from moving stock, and anyone from adding a product, between this read and the
-- trigger taking over.
LOCK TABLE products IN SHARE MODE;
INSERT INTO stock_ledger (sku, qty, reason)
SELECT p.sku, p.stock_qty + coalesce(held.qty, 0), 'starting_stock'
FROM products AS p
LEFT JOIN (
    SELECT sku, sum(qty) AS qty FROM stock_reservations WHERE status = 'reserved' GROUP BY sku
) AS held ON held.sku = p.sku
WHERE NOT EXISTS (
    SELECT 1 FROM stock_ledger AS l WHERE l.sku = p.sku AND l.reason = 'starting_stock'
);
