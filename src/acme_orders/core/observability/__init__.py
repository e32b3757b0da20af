"""Seeing what the system is doing: structured logs that carry an order's ids, traces across the
services, and metrics."""
