"""deploy/rabbitmq/definitions.json applied to a real RabbitMQ, as the README says to: imported with
rabbitmqctl, a password set per user. The whole pipeline runs with those users, each service as
its own, and each user is refused what it does not need.

The users and permissions go into the test's own vhost, under names of the test's own, and are
deleted afterwards."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aio_pika
import httpx
import pytest
from aio_pika.exceptions import AMQPError

from acme_orders.core import messaging
from acme_orders.core.events import EXCHANGE
from acme_orders.core.orders import FINAL_STATUSES
from acme_orders.core.retries import RETRY_EXCHANGE, retry_queue_name
from acme_orders.core.topology import INVENTORY_ORDER_PLACED, PAYMENT_INVENTORY_RESERVED, QUEUES
from tests.support.api import one_line_order
from tests.support.broker_users import definitions_for, imported
from tests.support.environment import RABBITMQ_BASE_URL, TestEnvironment, rabbitmqctl
from tests.support.processes import ServiceProcess, acme_orders, free_port, stop_all
from tests.support.system import start_service
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
async def broker_users(fresh_env: TestEnvironment) -> AsyncIterator[dict[str, str]]:
    """The definitions imported into the test's vhost, each user renamed `<vhost>-<user>` and
    given a password with rabbitmqctl, as the README says; returns each user's AMQP URL, by its
    name in the file."""
    document, logins = definitions_for(fresh_env)
    host = RABBITMQ_BASE_URL.split("@", 1)[1].rstrip("/")
    async with imported(fresh_env, document):
        urls = {}
        for name, login in logins.items():
            password = secrets.token_hex(16)  # never starting with '-', an option
            await asyncio.to_thread(rabbitmqctl, "change_password", login, password)
            urls[name] = f"amqp://{quote(login)}:{password}@{host}/{quote(fresh_env.name, safe='')}"
        yield urls


async def refused(url: str, action: str, *, key: str = "order.placed") -> bool:
    """Whether RabbitMQ refuses this user the action (True), or lets it (False)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        if action == "publish an event":
            exchange = await channel.get_exchange(EXCHANGE, ensure=False)
            await exchange.publish(aio_pika.Message(b"{}"), routing_key=key, timeout=10)
        elif action.startswith("retry into "):
            exchange = await channel.get_exchange(RETRY_EXCHANGE, ensure=False)
            await exchange.publish(
                aio_pika.Message(b"{}"), routing_key=action.removeprefix("retry into "), timeout=10
            )
        elif action == "publish to the default exchange":
            await channel.default_exchange.publish(
                aio_pika.Message(b"{}"), routing_key=PAYMENT_INVENTORY_RESERVED.name, timeout=10
            )
        elif action.startswith("consume "):
            queue = await channel.get_queue(action.removeprefix("consume "), ensure=False)
            await queue.get(no_ack=False, fail=False, timeout=10)
        elif action == "bind to everything":
            queue = await channel.get_queue(PAYMENT_INVENTORY_RESERVED.name, ensure=False)
            await queue.bind(EXCHANGE, routing_key="#", timeout=10)
        elif action == "declare a queue":
            await channel.declare_queue("analytics.all-events", durable=True, timeout=10)
        else:
            raise AssertionError(f"unknown action {action!r}")
    except AMQPError:
        return True
    finally:
        await connection.close()
    return False


async def first_board_snapshot(client: httpx.AsyncClient) -> dict[str, Any]:
    async with client.stream("GET", "/board/stream") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                snapshot: dict[str, Any] = json.loads(line.removeprefix("data: "))
                return snapshot
    raise AssertionError("the board's stream ended without a snapshot")


async def park_by_hand(env: TestEnvironment, message_id: str) -> None:
    """A message in inventory's dead-letter queue, put there as the test's own user."""
    connection = await aio_pika.connect(env.rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"not json", message_id=message_id),
            routing_key=INVENTORY_ORDER_PLACED.dead_letter_queue,
        )


async def park_garbage_through_the_consumer(env: TestEnvironment) -> None:
    """Garbage into inventory's queue (as the test's own, all-powerful user), and wait for
    inventory, running as its own user, to park it."""
    connection = await aio_pika.connect(env.rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"not json", message_id="garbage"),
            routing_key=INVENTORY_ORDER_PLACED.name,
        )
        dlq = await channel.get_queue(INVENTORY_ORDER_PLACED.dead_letter_queue)

        async def parked() -> bool:
            message = await dlq.get(no_ack=True, fail=False)
            return message is not None and message.message_id == "garbage"

        await wait_until(parked, what="the garbage in inventory's dead-letter queue")


async def test_the_pipeline_runs_with_one_least_privileged_user_per_service(
    fresh_env: TestEnvironment, broker_users: dict[str, str]
) -> None:
    # migrate's part: the whole topology, declared again as its own user.
    await messaging.declare_topology(
        fresh_env.settings().model_copy(update={"rabbitmq_url": broker_users["acme-migrate"]}),
        QUEUES,
    )
    port = free_port()
    base = fresh_env.environ(API_PORT=str(port))
    processes: list[ServiceProcess] = []
    try:
        for service in ("publisher", "inventory", "payment", "notification"):
            environ = base | {"RABBITMQ_URL": broker_users[f"acme-{service}"]}
            processes.append(await start_service(service, environ, f"least-privilege-{service}"))
        # The API never publishes events or consumes work; its board looks at the queues and
        # reads and replays the dead letters as acme-board.
        api_environ = base | {"RABBITMQ_URL": broker_users["acme-board"]}
        processes.append(await start_service("api", api_environ, "least-privilege-api"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            board = await first_board_snapshot(client)
            assert board["broker"] is None, board["broker"]
            depths = {queue["queue"]: queue["ready"] for queue in board["queues"]}
            assert set(depths) == {spec.name for spec in QUEUES}
            assert all(isinstance(ready, int) for ready in depths.values()), depths
            placed = await client.post(
                "/orders",
                json=one_line_order(),
            )
            assert placed.status_code == 201, placed.text

            async def finished() -> str | None:
                order = (await client.get(f"/orders/{placed.json()['id']}")).json()
                return str(order["status"]) if order["status"] in FINAL_STATUSES else None

            assert await wait_until(finished, what="the order to finish") == "paid"
            # What the board does with the dead letters, acme-board may: list, dry run, replay.
            await park_by_hand(fresh_env, "parked-by-hand")
            listed = await client.get("/board/dead-letters")
            assert listed.status_code == 200, listed.text
            replay = f"/board/dead-letters/{INVENTORY_ORDER_PLACED.name}/replay"
            dry_run = await client.post(replay, json={"dry_run": True})
            assert [m["message_id"] for m in dry_run.json()["messages"]] == ["parked-by-hand"]
            moved = await client.post(
                replay, json={"message_ids": ["parked-by-hand"], "dry_run": False}
            )
            assert moved.status_code == 200, moved.text
            assert [m["message_id"] for m in moved.json()["messages"]] == ["parked-by-hand"]
        # And what a consumer cannot read, it may still park in its dead-letter queue.
        await park_garbage_through_the_consumer(fresh_env)
    finally:
        await stop_all(processes)
    for process in processes:
        assert "ACCESS_REFUSED" not in process.log(), process.log_path.name


# What a user of each service must not be able to do: publish events it does not own, read
# another service's queue, bind to everything, create queues.
FORBIDDEN = [
    ("acme-inventory", "publish an event"),
    ("acme-payment", "publish an event"),
    ("acme-notification", "publish an event"),
    ("acme-operator", "publish an event"),
    ("acme-inventory", f"consume {PAYMENT_INVENTORY_RESERVED.name}"),
    ("acme-notification", f"consume {PAYMENT_INVENTORY_RESERVED.name}"),
    ("acme-publisher", f"consume {PAYMENT_INVENTORY_RESERVED.name}"),
    ("acme-operator", f"consume {PAYMENT_INVENTORY_RESERVED.name}"),
    ("acme-payment", "bind to everything"),
    ("acme-publisher", "declare a queue"),
    ("acme-operator", "declare a queue"),
    ("acme-payment", "declare a queue"),
    ("acme-board", "publish an event"),
    ("acme-board", f"consume {PAYMENT_INVENTORY_RESERVED.name}"),
    ("acme-board", "declare a queue"),
    ("acme-keda", "publish an event"),
    ("acme-keda", f"consume {PAYMENT_INVENTORY_RESERVED.name}"),
    ("acme-keda", "declare a queue"),
    ("acme-keda", "publish to the default exchange"),
    # A retry goes to the service's own retry queues, never into a work queue or another's.
    ("acme-inventory", f"retry into {retry_queue_name(PAYMENT_INVENTORY_RESERVED.name, 1)}"),
    ("acme-inventory", f"retry into {PAYMENT_INVENTORY_RESERVED.name}"),
    ("acme-payment", f"retry into {PAYMENT_INVENTORY_RESERVED.name}"),
    ("acme-publisher", f"retry into {retry_queue_name(PAYMENT_INVENTORY_RESERVED.name, 1)}"),
    ("acme-migrate", f"retry into {retry_queue_name(PAYMENT_INVENTORY_RESERVED.name, 1)}"),
    ("acme-inventory", "publish to the default exchange"),
    ("acme-payment", "publish to the default exchange"),
]


async def test_each_user_is_refused_what_its_service_does_not_need(
    broker_users: dict[str, str],
) -> None:
    # One test over the whole table: setting the users up is the slow part.
    allowed = [
        f"{user} may {action}"
        for user, action in FORBIDDEN
        if not await refused(broker_users[user], action)
    ]

    assert not allowed


async def test_the_publisher_may_publish_events_only_and_the_operator_list_dead_letters(
    fresh_env: TestEnvironment, broker_users: dict[str, str]
) -> None:
    listed = await acme_orders(
        fresh_env.environ(RABBITMQ_URL=broker_users["acme-operator"]), "dlq", "list"
    )

    assert not await refused(broker_users["acme-publisher"], "publish an event")
    own_retry = f"retry into {retry_queue_name(PAYMENT_INVENTORY_RESERVED.name, 1)}"
    assert not await refused(broker_users["acme-payment"], own_retry)
    assert await refused(broker_users["acme-publisher"], "publish an event", key="bench.drain")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "no dead letters\n"
