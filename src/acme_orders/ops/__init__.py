"""The operator's tools: the order timeline, dead letters, housekeeping, personal data, API keys,
the AsyncAPI document and the broker's definitions. They use the core, never a service."""
