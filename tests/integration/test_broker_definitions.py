"""The definitions `acme-orders broker-definitions` writes, loaded by a real RabbitMQ: every user
logs in with its own password and no other, and the administrator may do anything in the vhost.
(docker compose's broker loads the same file at boot: tests/compose.)"""

from __future__ import annotations

import secrets
from urllib.parse import quote

import aio_pika
import pytest
from aio_pika.exceptions import ProbableAuthenticationError

from acme_orders.ops.broker_definitions import with_passwords
from tests.support.broker_users import definitions_for, imported
from tests.support.environment import RABBITMQ_BASE_URL, TestEnvironment


def url(env: TestEnvironment, login: str, password: str) -> str:
    host = RABBITMQ_BASE_URL.split("@", 1)[1].rstrip("/")
    return f"amqp://{quote(login)}:{password}@{host}/{quote(env.name, safe='')}"


async def test_each_user_logs_in_with_its_hashed_password_and_only_with_it(
    fresh_env: TestEnvironment,
) -> None:
    document, logins = definitions_for(fresh_env)
    administrator = f"{fresh_env.name}-admin"
    passwords = {login: secrets.token_hex(12) for login in [*logins.values(), administrator]}
    complete = with_passwords(document, passwords, administrator)

    async with imported(fresh_env, complete):
        for login in logins.values():
            connection = await aio_pika.connect(url(fresh_env, login, passwords[login]))
            await connection.close()
            with pytest.raises(ProbableAuthenticationError):
                await aio_pika.connect(url(fresh_env, login, "not-" + passwords[login]))
        admin = await aio_pika.connect(url(fresh_env, administrator, passwords[administrator]))
        async with admin:
            channel = await admin.channel()
            queue = await channel.declare_queue("administrator.may", auto_delete=True)
            await queue.delete()
