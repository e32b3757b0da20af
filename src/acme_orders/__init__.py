"""acme-orders: Acme Corp's order pipeline with a transactional outbox."""

__version__ = "0.1.0"
