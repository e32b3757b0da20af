"""`acme-orders broker-definitions`: the definitions file with each user's password hashed in as
RabbitMQ stores them, the vhosts its permissions name, and an administrator."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from acme_orders.ops import broker_definitions
from acme_orders.ops.commands import write_broker_definitions

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"


def template() -> dict[str, object]:
    document: dict[str, object] = json.loads(TEMPLATE.read_text(encoding="utf-8"))
    return document


def test_a_hash_is_the_salt_then_sha256_of_salt_and_password() -> None:
    salt = bytes.fromhex("908d c60a".replace(" ", ""))
    expected = base64.b64encode(salt + hashlib.sha256(salt + b"test12").digest()).decode()

    assert broker_definitions.password_hash("test12", salt) == expected
    assert len(base64.b64decode(expected)) == 4 + 32


def test_every_hash_has_its_own_salt() -> None:
    assert broker_definitions.password_hash("same") != broker_definitions.password_hash("same")


def test_each_user_gets_its_password_and_the_administrator_every_permission() -> None:
    users = broker_definitions.users_of(template())
    passwords = {user: f"pw-{user}" for user in [*users, "eda_user"]}

    complete = broker_definitions.with_passwords(template(), passwords, "eda_user")

    for user in complete["users"]:
        stored = base64.b64decode(user["password_hash"])
        salt, digest = stored[:4], stored[4:]
        assert digest == hashlib.sha256(salt + passwords[user["name"]].encode()).digest()
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert [u["name"] for u in complete["users"]] == [*users, "eda_user"]
    assert complete["vhosts"] == [{"name": "/"}]
    [admin] = [u for u in complete["users"] if u["name"] == "eda_user"]
    assert admin["tags"] == ["administrator"]
    assert {"user": "eda_user", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"} in (
        complete["permissions"]
    )
    # The template itself is left as it was.
    assert all(user["password_hash"] == "" for user in template()["users"])  # type: ignore[attr-defined]


def test_a_user_without_a_password_is_an_error_naming_its_variable() -> None:
    with pytest.raises(broker_definitions.MissingPasswordError) as missing:
        broker_definitions.with_passwords(template(), {}, "eda_user")

    assert "acme-publisher (RABBITMQ_PASSWORD_ACME_PUBLISHER)" in str(missing.value)
    assert "eda_user (RABBITMQ_PASSWORD_EDA_USER)" in str(missing.value)


def test_the_command_reads_each_password_from_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for user in [*broker_definitions.users_of(template()), "eda_user"]:
        monkeypatch.setenv(broker_definitions.password_variable(user), f"pw-{user}")
    output = tmp_path / "definitions.json"

    assert write_broker_definitions(TEMPLATE, output, "eda_user") == 0

    written = json.loads(output.read_text())
    assert {user["name"] for user in written["users"]} >= {"acme-publisher", "eda_user"}
    assert output.stat().st_mode & 0o777 == 0o644
    assert "eda_user" in capsys.readouterr().out


def test_the_command_writes_nothing_when_a_password_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "definitions.json"

    assert write_broker_definitions(TEMPLATE, output, None) == 1

    assert not output.exists()
    assert "RABBITMQ_PASSWORD_ACME_MIGRATE" in capsys.readouterr().err
