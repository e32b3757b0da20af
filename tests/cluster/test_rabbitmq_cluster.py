"""The 3-node RabbitMQ cluster of tests/support/rabbitmq_cluster.py: it forms, listens on
loopback only, spreads quorum queues over every node, and keeps confirmed messages through a
kill -9 of the leader and a graceful stop of another node."""

from __future__ import annotations

import json

import aio_pika
import pytest

from acme_orders.core.retries import RetryPolicy, retry_queue_name
from acme_orders.core.topology import QUEUES
from tests.support.clusters import ClusterEnvironment, RabbitCluster
from tests.support.rabbitmq_cluster import RabbitNode

pytestmark = pytest.mark.cluster

MESSAGES = 50


async def test_three_nodes_run_as_one_cluster_on_loopback(rabbitmq_cluster: RabbitCluster) -> None:
    names = sorted(node.name for node in rabbitmq_cluster.nodes)
    assert len(names) == 3
    for node in rabbitmq_cluster.nodes:
        assert await rabbitmq_cluster.running_nodes(node) == names, f"as {node.name} sees it"

    status = json.loads(await rabbitmq_cluster.rabbitmqctl("cluster_status", "--formatter", "json"))
    listeners = [entry for node in status["listeners"].values() for entry in node]
    assert {entry["interface"] for entry in listeners} == {"127.0.0.1"}
    assert {(entry["protocol"], entry["port"]) for entry in listeners} == {
        *(("amqp", node.amqp_port) for node in rabbitmq_cluster.nodes),
        *(("clustering", node.dist_port) for node in rabbitmq_cluster.nodes),
    }
    for url in rabbitmq_cluster.urls():
        connection = await aio_pika.connect(url)
        await connection.close()


async def test_the_consumer_queues_have_a_member_on_every_node(
    rabbitmq_cluster: RabbitCluster, cluster_env: ClusterEnvironment
) -> None:
    """declare_topology sets no x-quorum-initial-group-size: RabbitMQ 3.10 then gives a quorum
    queue a member on each node of the cluster. The retry queues too: a message waiting for its
    next attempt survives a node's loss like one in its work queue."""
    queues = {q.name: q for q in await rabbitmq_cluster.queues(cluster_env.name)}
    waits = RetryPolicy.from_settings(cluster_env.settings()).waits
    expected = {
        name
        for spec in QUEUES
        for name in (
            spec.name,
            spec.dead_letter_queue,
            *(retry_queue_name(spec.name, attempt) for attempt in waits),
        )
    }
    assert set(queues) == expected
    every_node = sorted(node.name for node in rabbitmq_cluster.nodes)
    for queue in queues.values():
        assert queue.type == "quorum"
        assert sorted(queue.members) == every_node, queue.name


async def test_confirmed_messages_survive_a_kill_of_the_leader_and_a_stop_of_another_node(
    rabbitmq_cluster: RabbitCluster, cluster_env: ClusterEnvironment
) -> None:
    cluster, vhost = rabbitmq_cluster, cluster_env.name
    first = cluster.nodes[0]
    sent = [f"message {n}".encode() for n in range(MESSAGES)]
    connection = await aio_pika.connect(cluster.url(first, vhost))
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        # Declared through the first node, like every queue of the vhost: RabbitMQ puts the
        # leader on the node the client is connected to.
        await channel.declare_queue(
            "cluster.survivor", durable=True, arguments={"x-queue-type": "quorum"}
        )
        for body in sent:
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key="cluster.survivor",
            )

    leader = await cluster.leader_of_most_queues(vhost)
    survivor = next(q for q in await cluster.queues(vhost) if q.name == "cluster.survivor")
    assert survivor.leader == leader.name == first.name

    await cluster.kill(leader)
    after_kill = await cluster.wait_for_leaders(vhost)
    assert all(q.leader != leader.name for q in after_kill)
    others = [node for node in cluster.nodes if node != leader]
    assert await count(cluster, others[0], vhost) == MESSAGES

    await cluster.start(leader)
    await cluster.stop(others[1])
    await cluster.wait_for_leaders(vhost)
    assert await count(cluster, leader, vhost) == MESSAGES
    await cluster.start(others[1])

    assert len(cluster.running()) == 3
    survivor = next(q for q in await cluster.queues(vhost) if q.name == "cluster.survivor")
    assert sorted(survivor.members) == sorted(node.name for node in cluster.nodes)
    assert await drain(cluster, others[1], vhost) == sent


async def count(cluster: RabbitCluster, node: RabbitNode, vhost: str) -> int:
    connection = await aio_pika.connect(cluster.url(node, vhost))
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("cluster.survivor", passive=True)
        total = queue.declaration_result.message_count
        assert total is not None
        return total


async def drain(cluster: RabbitCluster, node: RabbitNode, vhost: str) -> list[bytes]:
    connection = await aio_pika.connect(cluster.url(node, vhost))
    bodies = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("cluster.survivor", passive=True)
        while (message := await queue.get(fail=False)) is not None:
            bodies.append(message.body)
            await message.ack()
    return bodies
