"""The board's dead letters: what is parked in each consumer queue's DLQ, and, for an admin key,
sending some or all of a queue's back to be handled, after a dry run.

GET /board/dead-letters lists the first DEAD_LETTERS_SHOWN messages of each DLQ (nothing is
removed). POST /board/dead-letters/{queue}/replay takes the message ids to move: with
`"dry_run": true` (the default) it only answers which of them are in the DLQ now and would be
moved (with no ids: the messages a replay of all would take now), changing nothing; with
`"dry_run": false` it moves exactly those ids, and a message that arrived after the dry run stays
where it is. Both read the DLQ as `acme-orders dlq list|replay` do (ops/dead_letters.py), with
the API's broker user, which may read the DLQs and publish to the default exchange, nothing more
(deploy/rabbitmq/definitions.json, user acme-board).

CSRF: the board authenticates with a bearer key, never with cookies, and these routes take only
`application/json` from the API's own origin: a form of another site can send neither that header
nor that content type without a CORS preflight, which the API never grants. With AUTH_DISABLED the
origin check is what stops another site's page in the operator's browser.

Bounds: at most DEAD_LETTERS_SHOWN messages per queue are read, and a replay names at most that
many ids; the calls share a token bucket per key (DEAD_LETTER_CALLS_PER_SECOND, bursts of
DEAD_LETTER_CALLS_BURST); and one runs at a time in a process, since each holds the messages it
reads (another would see them missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from aio_pika.exceptions import AMQPError
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from acme_orders.core import topology
from acme_orders.core.settings import Settings
from acme_orders.ops import dead_letters
from acme_orders.ops.api_keys import Scope
from acme_orders.ops.privacy import mask_emails_in
from acme_orders.order_api.security import Caller, require_scope, take_token

logger = logging.getLogger(__name__)

# The messages of a DLQ the board reads, and the most ids one replay may name.
DEAD_LETTERS_SHOWN = 100
# Per API key (per address with AUTH_DISABLED): listings, dry runs and replays together.
DEAD_LETTER_CALLS_PER_SECOND = 1.0
DEAD_LETTER_CALLS_BURST = 10
# Seconds a call waits for the one before it in this process (longer than the board's look for
# stuck orders may hold the dead letters: board.STUCK_BUDGET), and the most one may take.
DEAD_LETTER_CALL_WAIT = 20.0
DEAD_LETTER_CALL_BUDGET = 30.0

board_dead_letters = APIRouter(prefix="/board", tags=["board"], include_in_schema=False)


def dead_letter_reads(app: FastAPI) -> asyncio.Lock:
    """The lock held by whatever of the app reads the DLQs (these routes, and the board's look for
    stuck orders): each holds the messages it reads, so another read meanwhile would miss them.
    One per app, made on its event loop when first asked for."""
    lock: asyncio.Lock | None = getattr(app.state, "dead_letter_reads", None)
    if lock is None:
        lock = app.state.dead_letter_reads = asyncio.Lock()
    return lock


class DeadLetterOut(BaseModel):
    queue: str
    message_id: str | None
    event_type: str | None
    order_id: str | None
    reason: str
    dead_lettered_at: datetime | None
    body_preview: str


class QueueDeadLetters(BaseModel):
    queue: str
    dead_letter_queue: str
    messages: list[DeadLetterOut]
    limit: int = Field(description="At most this many of the DLQ's messages are read.")


class DeadLetterListing(BaseModel):
    queues: list[QueueDeadLetters]


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_ids: list[str] | None = Field(
        None,
        max_length=DEAD_LETTERS_SHOWN,
        description="The messages to move; a dry run without them lists what a replay of all "
        "would take now.",
    )
    dry_run: bool = True


class ReplayAnswer(BaseModel):
    queue: str
    dead_letter_queue: str
    dry_run: bool
    messages: list[DeadLetterOut] = Field(description="Would be moved (dry run), or were moved.")
    missing: list[str] = Field(description="Ids asked for that are not in the DLQ (any more).")


async def same_origin_json(request: Request) -> None:
    """Refuse what a page of another site could send: a body that is not JSON, or an Origin
    that is not the API's own."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send the body as application/json"
        )
    origin = request.headers.get("origin")
    if origin is not None:
        own = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
        if origin.rstrip("/").lower() != own.lower():
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"requests from {origin} may not replay dead letters"
            )


async def limit_dead_letter_calls(
    request: Request, caller: Annotated[Caller, Depends(require_scope(Scope.ADMIN))]
) -> Caller:
    return take_token(request, caller, "dead_letter_rate_limit", "dead-letter requests")


DeadLetterAdmin = Annotated[Caller, Depends(limit_dead_letter_calls)]


def _out(letter: dead_letters.DeadLetter) -> DeadLetterOut:
    return DeadLetterOut(
        queue=letter.queue,
        message_id=letter.message_id,
        event_type=letter.event_type,
        order_id=letter.order_id,
        reason=letter.reason,
        dead_lettered_at=letter.dead_lettered_at,
        # The body carries the customer's e-mail address; the board shows no address whole.
        body_preview=mask_emails_in(letter.body_preview),
    )


def _known_queue(queue: str) -> str:
    names = {spec.name for spec in topology.QUEUES}
    original, _ = dead_letters.queue_names(queue)
    if original not in names:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"{queue!r} is no consumer queue; these are: {', '.join(sorted(names))}",
        )
    return original


@contextlib.asynccontextmanager
async def _broker(reads: asyncio.Lock, what: str) -> AsyncIterator[None]:
    """One dead-letter call at a time in this process, bounded in time; what goes wrong with
    the broker becomes an answer that says so."""
    try:
        async with asyncio.timeout(DEAD_LETTER_CALL_WAIT):
            await reads.acquire()
    except TimeoutError:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "another dead-letter request of this API process is still under way; retry",
            headers={"Retry-After": "5"},
        ) from None
    try:
        async with asyncio.timeout(DEAD_LETTER_CALL_BUDGET):
            yield
    except dead_letters.UnknownQueueError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except (AMQPError, OSError, TimeoutError, RuntimeError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        logger.warning("board: could not %s: %s", what, detail)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"could not {what}: RabbitMQ: {detail}",
            headers={"Retry-After": "5"},
        ) from exc
    finally:
        reads.release()


@board_dead_letters.get("/dead-letters")
async def list_board_dead_letters(request: Request, caller: DeadLetterAdmin) -> DeadLetterListing:
    """The first DEAD_LETTERS_SHOWN messages of each consumer queue's DLQ; nothing is removed."""
    settings: Settings = request.app.state.settings
    names = [spec.name for spec in topology.QUEUES]
    async with _broker(dead_letter_reads(request.app), "list the dead letters"):
        letters = await dead_letters.list_dead_letters(settings, names, limit=DEAD_LETTERS_SHOWN)
    by_queue: dict[str, list[DeadLetterOut]] = {name: [] for name in names}
    for letter in letters:
        by_queue.setdefault(letter.queue, []).append(_out(letter))
    return DeadLetterListing(
        queues=[
            QueueDeadLetters(
                queue=name,
                dead_letter_queue=dead_letters.queue_names(name)[1],
                messages=messages,
                limit=DEAD_LETTERS_SHOWN,
            )
            for name, messages in by_queue.items()
        ]
    )


@board_dead_letters.post("/dead-letters/{queue}/replay", dependencies=[Depends(same_origin_json)])
async def replay_board_dead_letters(
    queue: str, wanted: ReplayRequest, request: Request, caller: DeadLetterAdmin
) -> ReplayAnswer:
    """A dry run (the default) says which messages would be moved and changes nothing; a replay
    (`"dry_run": false`, with the ids of a dry run) moves exactly those."""
    settings: Settings = request.app.state.settings
    original = _known_queue(queue)
    dlq = dead_letters.queue_names(original)[1]
    ids = None if wanted.message_ids is None else set(wanted.message_ids)
    if not wanted.dry_run and not ids:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "a replay names the messages to move (message_ids, from a dry run)",
        )
    if wanted.dry_run:
        async with _broker(dead_letter_reads(request.app), f"read {dlq}"):
            found = await dead_letters.list_dead_letters(
                settings, [original], limit=DEAD_LETTERS_SHOWN
            )
        chosen = [letter for letter in found if ids is None or letter.message_id in ids]
    else:
        async with _broker(dead_letter_reads(request.app), f"replay from {dlq}"):
            chosen = await dead_letters.move_dead_letters(
                settings, original, ids, limit=DEAD_LETTERS_SHOWN
            )
        who = caller.key.name if caller.key is not None else "(no key: AUTH_DISABLED)"
        logger.warning(
            "board: %s replayed %d message(s) from %s to %s: %s",
            who,
            len(chosen),
            dlq,
            original,
            ", ".join(letter.message_id or "(no id)" for letter in chosen),
        )
    seen = {letter.message_id for letter in chosen}
    return ReplayAnswer(
        queue=original,
        dead_letter_queue=dlq,
        dry_run=wanted.dry_run,
        messages=[_out(letter) for letter in chosen],
        missing=sorted((ids or set()) - seen),
    )
