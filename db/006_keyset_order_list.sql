-- GET /orders pages with a cursor: the orders after a position (created_at, id), newest first,
-- the id telling apart orders of the same microsecond (src/acme_orders/order_api/paging.py). Each
-- index the list is read through gains id as its last column, in the list's order, so that any
-- page is one range scan from its cursor on, with no sort, however deep it is.
--
-- The indexes keep their names, so that what refers to them (the board, the metrics' window of
-- recent orders) is unchanged. Built first and swapped in at the end: building takes a SHARE lock,
-- which lets orders be read meanwhile but holds new orders and status changes until the commit
-- (about 1.5 s for the three per million orders in memory); only the swap at the end shuts reads
-- out, briefly.
-- None of it changes what status updates write, so they stay HOT updates (004).
CREATE INDEX orders_created_at_id_idx ON orders (created_at DESC, id DESC);
CREATE INDEX orders_customer_created_at_id_idx ON orders (customer_id, created_at DESC, id DESC);
CREATE INDEX orders_api_key_created_at_id_idx
    ON orders (api_key_id, created_at DESC, id DESC) WHERE api_key_id IS NOT NULL;

DROP INDEX orders_created_at_idx, orders_customer_idx, orders_api_key_idx;
ALTER INDEX orders_created_at_id_idx RENAME TO orders_created_at_idx;
ALTER INDEX orders_customer_created_at_id_idx RENAME TO orders_customer_idx;
ALTER INDEX orders_api_key_created_at_id_idx RENAME TO orders_api_key_idx;
