"""Notification: tells the customer how their order ended (a simulated e-mail)."""
