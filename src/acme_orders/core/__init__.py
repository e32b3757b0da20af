"""The core every service uses: settings, database, messaging, the event contracts, the outbox,
the consumer runner, the order life cycle, the runtime and the queue topology. It imports nothing
of the services, the API or the operator tools."""
