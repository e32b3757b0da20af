-- The W3C trace context (traceparent, tracestate) of the span that wrote each event, so that its
-- publishing, and through the message headers its handling by each consumer, continue the same
-- trace across the outbox. NULL when the writer was not tracing (OTEL_EXPORTER_OTLP_ENDPOINT
-- unset). A nullable column without a default: adding it rewrites nothing.
ALTER TABLE event_outbox ADD COLUMN IF NOT EXISTS trace_context jsonb;
