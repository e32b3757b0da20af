"""The ids the bench writes with SQL, made as the system makes them (acme_orders.core.ids)."""

from __future__ import annotations


def unix_ms(moment: str) -> str:
    """A SQL expression of the Unix milliseconds of `moment`, an expression of a timestamptz."""
    return f"CAST(floor(extract(epoch FROM {moment}) * 1000) AS bigint)"


def uuid7_sql(millis: str, seed: str) -> str:
    """A SQL expression of a UUIDv7 (RFC 9562) of the Unix milliseconds `millis` (an expression
    of a bigint, see unix_ms): those in its first 48 bits, version 7, variant 0b10, and the
    remaining bits from the md5 of `seed` (an expression of a text), so that one seed names one
    id wherever a statement repeats it. A history's order thus sorts by when it was placed, as a
    real one does."""
    digest = f"md5({seed})"
    return (
        f"CAST(lpad(to_hex({millis}), 12, '0') || '7' || substr({digest}, 1, 3) || '8'"
        f" || substr({digest}, 4, 15) AS uuid)"
    )
