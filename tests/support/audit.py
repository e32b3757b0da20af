"""The reconciliation audit (ops/audit.py) as a test's last word on a run's books: once every
order is final, `acme-orders audit` must find nothing in that run's database and vhost."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from acme_orders.core.settings import Settings
from acme_orders.ops.audit import Report, audit, render_report
from tests.support.waiting import wait_until


async def audit_now(pool: asyncpg.Pool, settings: Settings) -> Report:
    """The audit with no grace: every final order and every published event is checked, however
    recent."""
    return await audit(pool, settings, grace=timedelta(0), stuck_after=timedelta(0))


async def assert_audit_clean(
    pool: asyncpg.Pool, settings: Settings, deadline: float = 30
) -> Report:
    """Wait (up to `deadline` seconds) for the audit to find nothing, and fail with its report
    if it still finds something then. Waited for, not asserted at once: with no grace, the last
    handlings of a run (a payment's no-op on a cancelled order, say) may still be landing when
    the orders are all final; a real fault stays and fails the test."""
    last: Report | None = None

    async def clean() -> Report | None:
        nonlocal last
        last = await audit_now(pool, settings)
        return last if last.clean else None

    try:
        return await wait_until(clean, deadline=deadline, interval=0.5, what="a clean audit")
    except AssertionError:
        assert last is not None
        raise AssertionError(f"the audit is not clean:\n{render_report(last)}") from None
