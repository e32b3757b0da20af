"""The ids the bench writes with SQL, made as the system makes them (acme_orders.core.ids)."""

from __future__ import annotations


def uuid7_sql(moment: str, seed: str) -> str:
    """A SQL expression of a UUIDv7 (RFC 9562) made at `moment` (an expression of a timestamptz):
    its Unix milliseconds in the first 48 bits, version 7, variant 0b10, and the remaining bits
    from the md5 of `seed` (an expression of a text), so that one seed names one id wherever a
    statement repeats it. A history's order thus sorts by when it was placed, as a real one."""
    digest = f"md5({seed})"
    millis = f"CAST(floor(extract(epoch FROM {moment}) * 1000) AS bigint)"
    return (
        f"CAST(lpad(to_hex({millis}), 12, '0') || '7' || substr({digest}, 1, 3) || '8'"
        f" || substr({digest}, 4, 15) AS uuid)"
    )
