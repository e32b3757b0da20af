"""The live board: a page at /board that shows orders moving through their statuses as it
happens, and the stream that feeds it.

GET /board serves a static page (HTML, CSS and JavaScript from `static/`, no other origin: it works
without internet access). GET /board/stream is a server-sent event stream of snapshots, one a
second: the newest orders with their statuses, the count of orders per status, the outbox backlog,
the messages ready in each consumer queue and its dead-letter queue, the throughput and the
placed-to-final latency (p50, p99) of the last CHART_WINDOW in CHART_STEP buckets, and the orders
not final BOARD_STUCK_AFTER seconds after they were placed, with where each waits
(ops/waiting.py). The dead letters themselves, and replaying them, are in board_dead_letters.py.

What it costs the server: one task makes the snapshots, however many boards watch, and only while
at least one does. It reads the newest orders and the outbox backlog every second (both by index),
counts statuses every COUNTS_INTERVAL seconds over at most COUNTS_LIMIT orders of the last
COUNTS_WINDOW (orders has no status index, by design: db/004), draws the chart's series from at
most CHART_LIMIT orders placed in the last CHART_WINDOW + CHART_MARGIN (a range of the created_at
index) and looks for stuck orders every STUCK_INTERVAL seconds, and reads the queues with passive
declares over one RabbitMQ connection, opened for the first viewer and closed after the last.

The page needs no key itself (it holds no data); the stream needs an admin key, which the page
sends in an Authorization header (it reads the stream with fetch(), not EventSource, which cannot
send headers, so the key never goes into a URL or a log). With AUTH_DISABLED it is open. An open
stream checks its key again every BOARD_STREAM_RECHECK seconds and ends (an `end` event says why)
once the key is revoked; one API process serves at most BOARD_MAX_STREAMS streams at once, and
answers one more with 503 and Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from importlib import resources
from typing import Any

import asyncpg
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import AMQPError, ChannelNotFoundEntity
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from acme_orders.core import topology
from acme_orders.core.database import DATABASE_ERRORS, Connection
from acme_orders.core.messaging import connect_once
from acme_orders.core.orders import FINAL_STATUSES, OrderStatus
from acme_orders.core.outbox import backlog
from acme_orders.core.settings import Settings
from acme_orders.ops.api_keys import ApiKeyCache, ApiKeysUnavailableError
from acme_orders.ops.privacy import mask_emails_in
from acme_orders.ops.waiting import WaitingOrder, where_orders_wait
from acme_orders.order_api.deps import Admin, BearerCredentials, Pool
from acme_orders.order_api.routes.board_dead_letters import dead_letter_reads

logger = logging.getLogger(__name__)

# Seconds between two snapshots.
INTERVAL = 1.0
# The newest orders shown.
RECENT_ORDERS = 20
# Statuses are counted over the orders of the last COUNTS_WINDOW, at most the newest COUNTS_LIMIT
# of them, every COUNTS_INTERVAL seconds: a bounded read, whatever the size of orders.
COUNTS_WINDOW = timedelta(hours=1)
COUNTS_LIMIT = 10_000
COUNTS_INTERVAL = 5.0
# The chart: CHART_WINDOW of buckets of CHART_STEP seconds, the last one ending at the latest
# whole step (a bucket still filling would read as a dip), recomputed every CHART_INTERVAL. Orders
# finished in the window are looked for among those placed up to CHART_MARGIN before it, and at
# most the newest CHART_LIMIT are read: the cost is bounded by the window, not by the table.
CHART_WINDOW = timedelta(minutes=5)
CHART_STEP = 5.0
CHART_MARGIN = timedelta(minutes=2)
CHART_LIMIT = 50_000
CHART_INTERVAL = 5.0
# Stuck orders shown (the oldest first), and how often they are looked for.
STUCK_SHOWN = 20
STUCK_INTERVAL = 5.0
# The look for stuck orders runs beside the snapshots, as it may read the dead-letter queues over a
# connection of its own: a snapshot waits for it at most STUCK_WAIT (then shows the last ones
# found), the look itself may take up to STUCK_BUDGET.
STUCK_WAIT = 1.0
STUCK_BUDGET = 15.0
# Seconds before trying RabbitMQ again after it could not be reached or refused us, and the
# most one reading of the queues may take.
BROKER_RETRY = 10.0
BROKER_BUDGET = 3.0
# A comment line sent when there is nothing new, so that proxies keep the connection open.
HEARTBEAT = 15.0
# Seconds a board refused for BOARD_MAX_STREAMS is told to wait (the page retries by itself).
STREAMS_FULL_RETRY = 5
QUERY_TIMEOUT = 2.0

STATIC = resources.files("acme_orders.order_api") / "static"
# The page's own files only: no other origin, no inline script, no framing.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

board = APIRouter(prefix="/board", tags=["board"], include_in_schema=False)


@functools.cache
def _static_file(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def _page_file(name: str, media_type: str) -> Response:
    return Response(_static_file(name), media_type=media_type, headers=PAGE_HEADERS)


@board.get("")
async def board_page() -> Response:
    """The page. Open to all, like /docs: it holds no data, the stream it reads needs a key."""
    return _page_file("board.html", "text/html; charset=utf-8")


@board.get("/board.js")
async def board_script() -> Response:
    return _page_file("board.js", "text/javascript; charset=utf-8")


@board.get("/board.css")
async def board_style() -> Response:
    return _page_file("board.css", "text/css; charset=utf-8")


@board.get("/board-icon.svg")
async def board_icon() -> Response:
    return _page_file("board-icon.svg", "image/svg+xml")


@board.get("/stream")
async def board_stream(
    request: Request, pool: Pool, caller: Admin, credentials: BearerCredentials
) -> StreamingResponse:
    """Server-sent events: a `snapshot` event with a JSON object every INTERVAL seconds, until
    the key it was opened with is revoked (an `end` event then says so)."""
    feed: BoardFeed | None = getattr(request.app.state, "board_feed", None)
    if feed is None:
        feed = request.app.state.board_feed = BoardFeed(
            pool, request.app.state.settings, dead_letter_reads(request.app)
        )
    settings: Settings = request.app.state.settings
    if not feed.streams.take():
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the board already has {feed.streams.limit} streams open, the most this API process "
            "serves (BOARD_MAX_STREAMS); close a board or retry after the time in Retry-After",
            headers={"Retry-After": str(STREAMS_FULL_RETRY)},
        )
    check = None
    if caller.key is not None and credentials is not None:
        check = functools.partial(
            key_still_valid, request.app.state.api_keys, credentials.credentials
        )
    return BoardStreamResponse(
        _frames(feed, check, settings.board_stream_recheck),
        feed.streams.give_back,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class StreamSlots:
    """How many board streams are open in this process, and how many may be."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1


class BoardStreamResponse(StreamingResponse):
    """A stream that gives its slot back however it ends: also when the client went away before
    the first byte, when the frames were never even started (so their `finally` cannot do it)."""

    def __init__(
        self, content: AsyncIterator[bytes], on_close: Callable[[], None], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def key_still_valid(keys: ApiKeyCache, token: str) -> str | None:
    """Why the stream of this key must end (revoked, or no longer checkable), or None."""
    try:
        if await keys.find(token) is None:
            return "the API key of this stream is no longer valid (revoked)"
    except ApiKeysUnavailableError:
        return "the API key of this stream cannot be checked now (the database does not answer)"
    return None


async def _frames(
    feed: BoardFeed, check: Callable[[], Awaitable[str | None]] | None, recheck: float
) -> AsyncIterator[bytes]:
    # Starlette cancels this generator when the client goes away, which unsubscribes it.
    async with feed.subscribe() as inbox:
        heartbeat_at = time.monotonic() + HEARTBEAT
        check_at = time.monotonic() + recheck
        while True:
            now = time.monotonic()
            if check is not None and now >= check_at:
                reason = await check()
                if reason is not None:
                    yield b"event: end\ndata: " + orjson.dumps({"reason": reason}) + b"\n\n"
                    return
                check_at = now + recheck
            if now >= heartbeat_at:
                yield b": still here\n\n"
                heartbeat_at = now + HEARTBEAT
            wake_at = min(heartbeat_at, check_at) if check is not None else heartbeat_at
            try:
                yield await asyncio.wait_for(inbox.get(), max(0.0, wake_at - time.monotonic()))
                heartbeat_at = time.monotonic() + HEARTBEAT
            except TimeoutError:
                pass


class BoardFeed:
    """Makes a snapshot every INTERVAL seconds while anybody watches, and hands each watcher the
    latest one (a slow watcher skips snapshots rather than piling them up)."""

    def __init__(
        self, pool: asyncpg.Pool, settings: Settings, dead_letter_reads: asyncio.Lock
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._dead_letter_reads = dead_letter_reads
        self._watchers: set[asyncio.Queue[bytes]] = set()
        self._task: asyncio.Task[None] | None = None
        self._latest: bytes | None = None
        self.streams = StreamSlots(settings.board_max_streams)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[bytes]]:
        inbox: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1)
        if self._latest is not None:
            inbox.put_nowait(self._latest)
        self._watchers.add(inbox)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._produce(), name="board feed")
        try:
            yield inbox
        finally:
            self._watchers.discard(inbox)
            if not self._watchers and self._task is not None:
                # Nobody watches: no more queries, and the broker connection is closed.
                self._task.cancel()
                self._task = None
                self._latest = None

    async def _produce(self) -> None:
        snapshots = Snapshots(self._pool, self._settings, self._dead_letter_reads)
        try:
            while True:
                try:
                    self._publish(snapshot_event(await snapshots.take()))
                except Exception:
                    # Whatever went wrong, the watchers keep their last snapshot and the next
                    # one is tried as usual.
                    logger.exception("board: could not take a snapshot")
                await asyncio.sleep(INTERVAL)
        finally:
            await snapshots.close()

    def _publish(self, frame: bytes) -> None:
        self._latest = frame
        for inbox in self._watchers:
            if inbox.full():
                inbox.get_nowait()
            inbox.put_nowait(frame)


def snapshot_event(snapshot: dict[str, Any]) -> bytes:
    """A snapshot as a server-sent event: its JSON on one `data:` line."""
    return b"event: snapshot\ndata: " + orjson.dumps(snapshot) + b"\n\n"


# The chart's series: per bucket of $1 seconds over the window $2 ending at the latest whole step,
# the orders placed, the orders that reached a final status ($5) and the p50 and p99 of their
# placed-to-final latency. Read from at most $4 of the newest orders placed since the window's
# start minus $3, by orders_created_at_idx; updated_at is when the final status was written.
CHART_SERIES = """
WITH bounds AS (
    SELECT to_timestamp(floor(extract(epoch FROM clock_timestamp()) / $1) * $1) - $2::interval
               AS starts_at
), recent AS (
    SELECT o.status, o.created_at, o.updated_at
    FROM orders AS o, bounds AS b
    WHERE o.created_at >= b.starts_at - $3::interval
    ORDER BY o.created_at DESC, o.id DESC
    LIMIT $4
), placed AS (
    SELECT floor(extract(epoch FROM r.created_at - b.starts_at) / $1)::int AS bucket,
           count(*) AS n
    FROM recent AS r, bounds AS b
    WHERE r.created_at >= b.starts_at AND r.created_at < b.starts_at + $2::interval
    GROUP BY 1
), finished AS (
    SELECT floor(extract(epoch FROM r.updated_at - b.starts_at) / $1)::int AS bucket,
           count(*) AS n,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY r.updated_at - r.created_at) AS p50,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY r.updated_at - r.created_at) AS p99
    FROM recent AS r, bounds AS b
    WHERE r.status = ANY($5::text[])
      AND r.updated_at >= b.starts_at AND r.updated_at < b.starts_at + $2::interval
    GROUP BY 1
)
SELECT g.bucket, b.starts_at + g.bucket * make_interval(secs => $1) AS starts_at,
       coalesce(p.n, 0) AS placed, coalesce(f.n, 0) AS finished, f.p50, f.p99,
       (SELECT count(*) FROM recent) AS read
FROM bounds AS b
CROSS JOIN generate_series(0, (extract(epoch FROM $2::interval) / $1)::int - 1) AS g (bucket)
LEFT JOIN placed AS p ON p.bucket = g.bucket
LEFT JOIN finished AS f ON f.bucket = g.bucket
ORDER BY g.bucket
"""


def chart_of(rows: list[Any], step: float, window: timedelta, limit: int) -> dict[str, Any]:
    """The chart's JSON from the rows of CHART_SERIES: rates per second, latencies in seconds
    (None for a bucket where no order finished)."""
    return {
        "step_seconds": step,
        "window_seconds": window.total_seconds(),
        "limit": limit,
        # The newest `limit` orders were all read: older buckets may lack some.
        "capped": bool(rows) and rows[0]["read"] >= limit,
        "points": [
            {
                "at": row["starts_at"],
                "placed_per_second": row["placed"] / step,
                "finished_per_second": row["finished"] / step,
                "p50_seconds": _seconds_of(row["p50"]),
                "p99_seconds": _seconds_of(row["p99"]),
            }
            for row in rows
        ],
    }


def _seconds_of(value: timedelta | None) -> float | None:
    return value.total_seconds() if value is not None else None


def stuck_of(waiting: list[WaitingOrder], after: float, limit: int) -> dict[str, Any]:
    """The stuck orders' JSON: each with where it waits, in words and as fields."""
    return {
        "after_seconds": after,
        "limit": limit,
        "orders": [
            {
                "id": str(order.order_id),
                "status": order.status,
                "placed_at": order.placed_at,
                "stage": order.stage.value,
                "since": order.since,
                "event_type": order.event_type,
                "services": list(order.services),
                "queues": list(order.queues),
                "where": mask_emails_in(order.describe()),
            }
            for order in waiting
        ],
    }


class Snapshots:
    """What the board shows, read from the database and from RabbitMQ."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        dead_letter_reads: asyncio.Lock | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        # Shared with the app's dead-letter routes (board_dead_letters.dead_letter_reads).
        self._dead_letter_reads = dead_letter_reads or asyncio.Lock()
        self._broker = QueueGauge(settings)
        self._counts: dict[str, Any] | None = None
        self._counted_at = -COUNTS_INTERVAL
        self._chart: dict[str, Any] | None = None
        self._charted_at = -CHART_INTERVAL
        self._stuck: dict[str, Any] | None = None
        self._stuck_at = -STUCK_INTERVAL
        self._stuck_look: asyncio.Task[None] | None = None

    async def take(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = {"interval": INTERVAL}
        try:
            snapshot |= await self._database()
            snapshot["database"] = None
        except DATABASE_ERRORS as exc:
            logger.warning("board: database unavailable: %r", exc)
            snapshot["database"] = "unavailable"
        queues, problem = await self._broker.read()
        snapshot["queues"] = queues
        snapshot["broker"] = problem
        looking = self._stuck_look is not None and not self._stuck_look.done()
        if not looking and time.monotonic() - self._stuck_at >= STUCK_INTERVAL:
            self._stuck_at = time.monotonic()
            self._stuck_look = asyncio.create_task(self._look_for_stuck(), name="board stuck")
        if self._stuck_look is not None and not self._stuck_look.done():
            await asyncio.wait({self._stuck_look}, timeout=STUCK_WAIT)
        snapshot["stuck"] = self._stuck
        return snapshot

    async def _look_for_stuck(self) -> None:
        self._stuck = await self._find_stuck()

    async def _find_stuck(self) -> dict[str, Any] | None:
        """The orders not final BOARD_STUCK_AFTER after they were placed, with where they wait;
        the last ones found when they cannot be read now."""
        after = self._settings.board_stuck_after
        try:
            # The dead-letter queues are read holding their messages: not while a dry run or a
            # replay of the board reads them, which would then miss some.
            async with asyncio.timeout(STUCK_BUDGET), self._dead_letter_reads:
                waiting = await where_orders_wait(
                    self._pool, self._settings, timedelta(seconds=after), STUCK_SHOWN
                )
        except DATABASE_ERRORS as exc:
            logger.warning("board: could not look for stuck orders: %r", exc)
            return self._stuck
        except (AMQPError, OSError, TimeoutError, RuntimeError, LookupError) as exc:
            # LookupError: a dead-letter queue not declared (yet).
            logger.warning("board: could not look for stuck orders: %r", exc)
            return self._stuck
        return stuck_of(waiting, after, STUCK_SHOWN)

    async def _database(self) -> dict[str, Any]:
        async with self._pool.acquire() as conn:
            async with asyncio.timeout(QUERY_TIMEOUT):
                waiting = await backlog(conn)
            orders = await conn.fetch(
                """
                SELECT id, customer_id, status, total, created_at, updated_at
                FROM orders ORDER BY created_at DESC LIMIT $1
                """,
                RECENT_ORDERS,
                timeout=QUERY_TIMEOUT,
            )
            if time.monotonic() - self._counted_at >= COUNTS_INTERVAL:
                self._counts = await self._count_statuses(conn)
                self._counted_at = time.monotonic()
            if time.monotonic() - self._charted_at >= CHART_INTERVAL:
                rows = await conn.fetch(
                    CHART_SERIES,
                    CHART_STEP,
                    CHART_WINDOW,
                    CHART_MARGIN,
                    CHART_LIMIT,
                    sorted(FINAL_STATUSES),
                    timeout=QUERY_TIMEOUT,
                )
                self._chart = chart_of(rows, CHART_STEP, CHART_WINDOW, CHART_LIMIT)
                self._charted_at = time.monotonic()
        oldest = waiting.oldest_age
        return {
            "at": waiting.at,
            "outbox": {
                "backlog": waiting.new_rows,
                "oldest_seconds": oldest.total_seconds() if oldest is not None else None,
            },
            "orders": [
                {
                    # str: asyncpg's UUID is not the standard library's, which orjson wants.
                    "id": str(row["id"]),
                    "customer_id": mask_emails_in(row["customer_id"]),
                    "status": row["status"],
                    "total": str(row["total"]),
                    "created_at": row["created_at"],
                    "updated_at": row["updated_at"],
                }
                for row in orders
            ],
            "counts": self._counts,
            "chart": self._chart,
        }

    async def _count_statuses(self, conn: Connection) -> dict[str, Any]:
        rows = await conn.fetch(
            """
            SELECT status, count(*) AS n, now() AS at
            FROM (
                SELECT status FROM orders WHERE created_at > now() - $1::interval
                ORDER BY created_at DESC LIMIT $2
            ) AS recent
            GROUP BY status
            """,
            COUNTS_WINDOW,
            COUNTS_LIMIT,
            timeout=QUERY_TIMEOUT,
        )
        by_status = {status.value: 0 for status in OrderStatus}
        by_status |= {row["status"]: row["n"] for row in rows}
        return {
            "by_status": by_status,
            "window_seconds": COUNTS_WINDOW.total_seconds(),
            "limit": COUNTS_LIMIT,
            "every_seconds": COUNTS_INTERVAL,
            "capped": sum(by_status.values()) >= COUNTS_LIMIT,
        }

    async def close(self) -> None:
        if self._stuck_look is not None:
            self._stuck_look.cancel()
            await asyncio.gather(self._stuck_look, return_exceptions=True)
        await self._broker.close()


class QueueGauge:
    """Messages ready in each consumer queue and in its dead-letter queue, read with passive
    declares (which change nothing) over one connection of the board's own."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._retry_at = 0.0
        self._problem: str | None = None

    async def read(self) -> tuple[list[dict[str, Any]], str | None]:
        """One entry per consumer queue (counts None when unknown), and what is wrong, if
        anything."""
        figures: list[dict[str, Any]] = [
            {"queue": spec.name, "service": service, "ready": None, "dead_letters": None}
            for service, specs in topology.SUBSCRIPTIONS.items()
            for spec in specs
        ]
        if self._connection is None and time.monotonic() < self._retry_at:
            return figures, self._problem
        try:
            # A broker that does not answer must not hold up the database's figures.
            async with asyncio.timeout(BROKER_BUDGET):
                for figure, spec in zip(figures, topology.QUEUES, strict=True):
                    figure["ready"] = await self._ready(spec.name)
                    figure["dead_letters"] = await self._ready(spec.dead_letter_queue)
        except (AMQPError, OSError, TimeoutError, RuntimeError) as exc:
            # Unreachable, too slow, or it refused the login, the vhost or a queue: say so, try
            # later, on a new connection.
            detail = " ".join(str(exc).split()) or type(exc).__name__
            self._problem = f"RabbitMQ: {detail}"
            logger.warning("board: %s; trying again in %gs", self._problem, BROKER_RETRY)
            self._retry_at = time.monotonic() + BROKER_RETRY
            await self.close()
            return figures, self._problem
        self._problem = None
        return figures, None

    async def _ready(self, queue: str) -> int | None:
        if self._connection is None or self._connection.is_closed:
            self._connection = await connect_once(self._settings, "api board")
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel(publisher_confirms=False)
        try:
            declared = await self._channel.declare_queue(queue, passive=True)
        except ChannelNotFoundEntity:
            return None  # not declared (yet): the broker closed the channel, the next opens anew
        count: int | None = declared.declaration_result.message_count
        return count

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)
