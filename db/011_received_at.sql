-- When the consumer took the batch that handled each event, by the database's clock: with the
-- outbox's published_at and processed_at it splits an event's way into time in the outbox, in
-- the broker and in the consumer (the order's timeline). Nullable with no default, so adding it
-- rewrites nothing; rows written before it stay NULL and the timeline says "unknown".
ALTER TABLE processed_events ADD COLUMN IF NOT EXISTS received_at timestamptz;
