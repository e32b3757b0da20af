-- Every order's status is written three times, the hottest writes of the pipeline. An index on
-- status made each of them a non-HOT update: a new entry in every index of orders, and more work
-- for vacuum. Without it, and with room left on each page (fillfactor), PostgreSQL updates the
-- row in place of its indexes (a HOT update). Listing orders by status scans orders_created_at_idx
-- newest first instead, which a LIMITed page of a common status finds quickly.
DROP INDEX IF EXISTS orders_status_idx;
ALTER TABLE orders SET (fillfactor = 80);
