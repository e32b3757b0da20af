"""Inventory: reserves stock for placed orders, all lines or none, and gives it back when the
payment fails."""
