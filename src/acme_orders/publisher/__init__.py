"""Publisher: relays the outbox to RabbitMQ."""
