"""Keeping personal data out of places it does not belong, such as logs."""

from __future__ import annotations


def mask_email(address: str) -> str:
    """``c100@example.com`` -> ``c1***@example.com``: enough to tell customers apart in a log,
    not enough to write to them."""
    local, at, domain = address.partition("@")
    if not at:
        return "***"
    return f"{local[:2]}***@{domain}"
