"""deploy/rabbitmq/definitions.json in a test's own vhost: every user renamed `<vhost>-<user>`
(users are global to a broker, vhosts are not), imported with rabbitmqctl, deleted afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from acme_orders_bench.scratch import ScratchError
from tests.support.environment import RABBITMQCTL, TestEnvironment, rabbitmqctl
from tests.support.waiting import wait_until

DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"


def import_definitions(document: dict[str, Any]) -> None:
    """`rabbitmqctl import_definitions`. A broker in a container (TEST_RABBITMQCTL) cannot see our
    files, so it reads the definitions from stdin. The local one reads a file, readable by the
    broker's own user, which Debian's rabbitmqctl runs as (and which cannot read stdin through its
    wrapper); it holds no secret."""
    if RABBITMQCTL != ["rabbitmqctl"]:
        rabbitmqctl("import_definitions", stdin=json.dumps(document))
        return
    descriptor, path = tempfile.mkstemp(prefix="acme-definitions-", suffix=".json")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(document, file)
        os.chmod(path, 0o644)
        rabbitmqctl("import_definitions", path)
    finally:
        os.unlink(path)


def definitions_for(env: TestEnvironment) -> tuple[dict[str, Any], dict[str, str]]:
    """The definitions moved into the test's vhost, and each user's login by its name in the
    file."""
    document: dict[str, Any] = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    logins = {user["name"]: f"{env.name}-{user['name']}" for user in document["users"]}
    for user in document["users"]:
        user["name"] = logins[user["name"]]
    for entry in document["permissions"] + document["topic_permissions"]:
        entry["user"] = logins[entry["user"]]
        entry["vhost"] = env.name
    return document, logins


@asynccontextmanager
async def imported(env: TestEnvironment, document: dict[str, Any]) -> AsyncIterator[None]:
    """The document imported; its users deleted on the way out."""
    logins = [user["name"] for user in document["users"]]
    expected = {
        "list_permissions": {entry["user"] for entry in document["permissions"]},
        "list_topic_permissions": {entry["user"] for entry in document["topic_permissions"]},
    }
    try:
        await asyncio.to_thread(import_definitions, document)

        # The import runs in the background: wait until every user has its permissions.
        async def permissions_in_place() -> bool:
            for command, users in expected.items():
                listed = await asyncio.to_thread(rabbitmqctl, command, "-p", env.name)
                if not all(user in listed for user in users):
                    return False
            return True

        await wait_until(permissions_in_place, deadline=30, what="the definitions imported")
        yield
    finally:
        for login in logins:
            # Not there if the import failed.
            with contextlib.suppress(ScratchError):
                await asyncio.to_thread(rabbitmqctl, "delete_user", login)
