"""RABBITMQ_URL naming several nodes: a service connects to the first that answers and, when its
node goes away, moves to the next live one and carries on consuming there. The nodes here are TCP
proxies in front of the one real broker, which can be cut like a node that died."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from acme_orders.core.messaging import connect, connect_once
from tests.support.environment import RABBITMQ_BASE_URL, TestEnvironment
from tests.support.faults import TcpProxy
from tests.support.processes import free_port
from tests.support.waiting import wait_until

BROKER = urlsplit(RABBITMQ_BASE_URL)


def node_url(env: TestEnvironment, port: int) -> str:
    credentials = f"{BROKER.username}:{BROKER.password}"
    return f"amqp://{credentials}@127.0.0.1:{port}/{quote(env.name, safe='')}"


@pytest.fixture
async def proxies() -> AsyncIterator[list[TcpProxy]]:
    """Three 'nodes', all the one real broker behind a proxy each."""
    started = [
        await TcpProxy(BROKER.hostname or "127.0.0.1", BROKER.port or 5672).start()
        for _ in range(3)
    ]
    yield started
    for proxy in started:
        await proxy.stop()


async def test_a_service_connects_to_the_first_node_that_answers(
    fresh_env: TestEnvironment, proxies: list[TcpProxy]
) -> None:
    nobody = free_port()
    nodes = [node_url(fresh_env, nobody), node_url(fresh_env, proxies[0].port)]
    settings = fresh_env.settings().model_copy(update={"rabbitmq_url": ",".join(nodes)})

    robust = await connect(settings, "test")
    plain = await connect_once(settings, "test")
    try:
        assert isinstance(plain, aio_pika.Connection)
        assert robust.url.port == proxies[0].port
        assert plain.url.port == proxies[0].port
    finally:
        await robust.close()
        await plain.close()


async def test_a_connection_whose_node_dies_moves_to_the_next_live_one_and_keeps_consuming(
    fresh_env: TestEnvironment, proxies: list[TcpProxy]
) -> None:
    first, down, third = proxies
    await down.cut()  # a node that is down all along: skipped on the way to the next
    nodes = ",".join(node_url(fresh_env, proxy.port) for proxy in proxies)
    settings = fresh_env.settings().model_copy(update={"rabbitmq_url": nodes})
    queue_name = f"failover.{secrets.token_hex(4)}"
    received: list[bytes] = []

    async def on_message(message: AbstractIncomingMessage) -> None:
        async with message.process():
            received.append(message.body)

    connection = await connect(settings, "test")
    reconnected = asyncio.Event()
    connection.reconnect_callbacks.add(lambda *_: reconnected.set())
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True)
        await queue.consume(on_message)
        assert connection.url.port == first.port

        async def publish(body: bytes) -> None:
            sender = await aio_pika.connect(node_url(fresh_env, third.port))
            async with sender:
                sending = await sender.channel(publisher_confirms=True)
                await sending.default_exchange.publish(
                    aio_pika.Message(body), routing_key=queue_name
                )

        await publish(b"before")
        await wait_until(lambda: asyncio.sleep(0, b"before" in received), what="the first one")

        await first.cut()
        await asyncio.wait_for(reconnected.wait(), timeout=20)
        await publish(b"after")
        await wait_until(lambda: asyncio.sleep(0, b"after" in received), what="the second one")

        assert connection.url.port == third.port
        assert received == [b"before", b"after"]
    finally:
        await connection.close()
