"""RabbitMQ definitions with passwords: deploy/rabbitmq/definitions.json (one user per service,
exactly the permissions its code needs, no passwords) made into a file a broker can load at boot.

docker compose runs `acme-orders broker-definitions` once before RabbitMQ starts, with each user's
password from the environment; RabbitMQ loads the result (`load_definitions`) on every boot, so the
users, their permissions and their passwords are always those of `.env`. A broker that loads
definitions creates no default user and no default vhost, so the file also holds the vhost and an
administrator (the management UI's user).

The passwords are stored as RabbitMQ stores them (`rabbit_password_hashing_sha256`): base64 of a
random 4-byte salt followed by SHA-256(salt + password), never in clear.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import secrets
from collections.abc import Mapping
from typing import Any

HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
SALT_BYTES = 4


class MissingPasswordError(Exception):
    """A user of the definitions has no password to go with it."""


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's stored form of a password, for the `password_hash` of a definitions file."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def password_variable(user: str) -> str:
    """The environment variable `broker-definitions` reads a user's password from:
    acme-publisher -> RABBITMQ_PASSWORD_ACME_PUBLISHER."""
    return "RABBITMQ_PASSWORD_" + user.upper().replace("-", "_").replace(".", "_")


def users_of(template: Mapping[str, Any]) -> list[str]:
    return [str(user["name"]) for user in template.get("users", [])]


def with_passwords(
    template: Mapping[str, Any],
    passwords: Mapping[str, str],
    administrator: str | None = None,
) -> dict[str, Any]:
    """The template with each user's password hashed in, every vhost its permissions name, and
    `administrator` (when given, with its password in `passwords`) as an administrator of each
    of those vhosts. Raises MissingPasswordError naming every user without a password."""
    wanted = users_of(template) + ([administrator] if administrator else [])
    missing = [user for user in wanted if not passwords.get(user)]
    if missing:
        raise MissingPasswordError(
            "no password for "
            + ", ".join(f"{user} ({password_variable(user)})" for user in missing)
        )
    definitions = copy.deepcopy(dict(template))
    users = definitions.setdefault("users", [])
    for user in users:
        user["password_hash"] = password_hash(passwords[user["name"]])
        user["hashing_algorithm"] = HASHING_ALGORITHM
    vhosts = sorted(
        {p["vhost"] for p in definitions.get("permissions", [])}
        | {p["vhost"] for p in definitions.get("topic_permissions", [])}
        | {v["name"] for v in definitions.get("vhosts", [])}
    ) or ["/"]
    definitions["vhosts"] = [{"name": name} for name in vhosts]
    if administrator:
        users.append(
            {
                "name": administrator,
                "password_hash": password_hash(passwords[administrator]),
                "hashing_algorithm": HASHING_ALGORITHM,
                "tags": ["administrator"],
            }
        )
        definitions.setdefault("permissions", []).extend(
            {"user": administrator, "vhost": name, "configure": ".*", "write": ".*", "read": ".*"}
            for name in vhosts
        )
    return definitions
