"""The docker compose file and the Dockerfile, checked for structure: no Docker needed.

Service and container names are a contract (the README's `docker logs -f eda-inventory`,
`docker exec -it eda-postgres psql ...`), and every command and variable must be one the code
knows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from acme_orders.core.observability.metrics import ALL_METRICS, exported_names
from acme_orders.core.observability.metrics_server import metrics_port
from acme_orders.core.settings import Settings
from acme_orders.ops.api_keys import PREFIX, Scope
from acme_orders.ops.broker_definitions import password_variable, users_of
from acme_orders.services import SERVICES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
# ${NAME}, ${NAME:-default} and ${NAME-default}: what this file uses of compose's interpolation.
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")

CONTAINERS = {
    "postgres": "eda-postgres",
    "rabbitmq-definitions": "eda-rabbitmq-definitions",
    "rabbitmq": "eda-rabbitmq",
    "migrate": "eda-migrate",
    "orderapi": "eda-orderapi",
    "orderpublisher": "eda-orderpublisher",
    "inventory": "eda-inventory",
    "payment": "eda-payment",
    "notification": "eda-notification",
    "prometheus": "eda-prometheus",
    "grafana": "eda-grafana",
    # Run once per command (`docker compose run --rm operator ...`): no fixed name.
    "operator": None,
}
# Compose service -> the service `acme-orders run` starts in it.
APP_SERVICES = {
    "orderapi": "api",
    "orderpublisher": "publisher",
    "inventory": "inventory",
    "payment": "payment",
    "notification": "notification",
}
# Compose service -> the RabbitMQ user of deploy/rabbitmq/definitions.json it connects as.
BROKER_USERS = {
    "migrate": "acme-migrate",
    "orderapi": "acme-board",
    "orderpublisher": "acme-publisher",
    "inventory": "acme-inventory",
    "payment": "acme-payment",
    "notification": "acme-notification",
    "operator": "acme-operator",
}
APP_IMAGE = "acme-orders:latest"
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
# The address every published port listens on unless .env says otherwise.
LOOPBACK = "127.0.0.1"
URL_PASSWORD = re.compile(r"://[^:/@]+:(?P<password>[^@]*)@")
INITDB_DIR = "/docker-entrypoint-initdb.d/"
DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
OBSERVABILITY = {"prometheus", "grafana"}
# What the dashboard may query beside our own metrics: Prometheus' and prometheus-client's.
OTHER_METRICS = {"up", "process_cpu_seconds_total", "process_resident_memory_bytes"}


def load_compose() -> dict[str, Any]:
    # safe_load resolves the `<<:` merge keys, as compose does.
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def services() -> dict[str, dict[str, Any]]:
    found = load_compose()["services"]
    assert isinstance(found, dict)
    return found


def interpolate(value: str, dot_env: dict[str, str]) -> str:
    """What compose makes of `${NAME:-default}` with these variables in `.env` (and none in the
    shell's environment)."""

    def substitute(match: re.Match[str]) -> str:
        name, op, default = match["name"], match["op"], match["default"] or ""
        if op == ":-":
            return dot_env.get(name) or default
        if op == "-":
            return dot_env.get(name, default)
        return dot_env.get(name, "")

    return VARIABLE.sub(substitute, value)


def environment(service: dict[str, Any], dot_env: dict[str, str] | None = None) -> dict[str, str]:
    """A service's environment, written as a mapping or as a list of NAME=value, as compose
    passes it on: interpolated with `dot_env` (default: no `.env` at all, a fresh clone)."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        pairs = (str(item).partition("=") for item in raw)
        found = {name: value for name, _, value in pairs}
    else:
        found = {str(name): str(value) for name, value in raw.items()}
    return {name: interpolate(value, dot_env or {}) for name, value in found.items()}


def env_example() -> dict[str, str]:
    entries = (
        line.partition("=")
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {name.strip(): value.strip() for name, _, value in entries}


def published_ports(
    service: dict[str, Any], dot_env: dict[str, str] | None = None
) -> set[tuple[str, int]]:
    """(host address, host port) of each published port, as compose makes of them with these
    variables in `.env` (default: none at all, a fresh clone)."""
    ports: set[tuple[str, int]] = set()
    for port in service.get("ports", []):
        address, host_port, _container_port = interpolate(str(port), dot_env or {}).split(":")
        ports.add((address, int(host_port)))
    return ports


def url_user(url: str) -> str:
    return url.split("://", 1)[1].split(":", 1)[0]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    statement = ""
    for raw_line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            statement += line.removesuffix("\\") + " "
            continue
        keyword, _, arguments = (statement + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        statement = ""
    return instructions


def test_compose_file_has_no_obsolete_version_key() -> None:
    assert "version" not in load_compose()


def test_services_and_container_names_are_the_documented_ones() -> None:
    found = services()

    assert set(found) == set(CONTAINERS)
    assert {name: s.get("container_name") for name, s in found.items()} == CONTAINERS


def test_images() -> None:
    found = services()

    assert found["postgres"]["image"] == "postgres:15"
    assert found["rabbitmq"]["image"] == "rabbitmq:3.13-management"
    for name in ("migrate", "rabbitmq-definitions", "operator", *APP_SERVICES):
        assert found[name]["image"] == APP_IMAGE, name
        assert found[name]["build"] == ".", name


def test_each_app_service_runs_a_service_the_cli_knows() -> None:
    found = services()

    assert found["migrate"]["command"] == ["migrate"]
    for name, cli_service in APP_SERVICES.items():
        assert cli_service in SERVICES, name
        assert found[name]["command"] == ["run", cli_service], name
    # ... and every service of the CLI is deployed.
    assert set(APP_SERVICES.values()) == set(SERVICES)


def test_app_services_wait_for_healthy_servers_and_a_successful_migration() -> None:
    found = services()

    assert found["migrate"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "rabbitmq": {"condition": "service_healthy"},
    }
    for name in APP_SERVICES:
        assert found[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "rabbitmq": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name


def test_restart_policies() -> None:
    found = services()

    # A one-shot job: restarting it would keep the services waiting for its completion.
    assert found["migrate"]["restart"] == "no"
    for name in APP_SERVICES:
        assert found[name]["restart"] == "unless-stopped", name
        assert found[name]["stop_grace_period"] == "15s", name


def test_servers_and_the_api_have_healthchecks() -> None:
    found = services()

    for name in ("postgres", "rabbitmq", "orderapi"):
        test = found[name]["healthcheck"]["test"]
        assert isinstance(test, list), name
        assert test[0] in {"CMD", "CMD-SHELL"}, name
    assert "pg_isready" in found["postgres"]["healthcheck"]["test"]
    assert "rabbitmq-diagnostics" in found["rabbitmq"]["healthcheck"]["test"]
    assert any("/health" in part for part in found["orderapi"]["healthcheck"]["test"])


def test_ports_are_published_on_loopback_only_unless_dot_env_says_otherwise() -> None:
    found = services()
    elsewhere = {
        "BIND_ADDRESS": "192.0.2.10",
        "API_PORT": "18000",
        "POSTGRES_PORT": "15432",
        "RABBITMQ_PORT": "15673",
        "RABBITMQ_UI_PORT": "15674",
        "PROMETHEUS_PORT": "19090",
        "GRAFANA_PORT": "13000",
    }

    assert published_ports(found["postgres"]) == {(LOOPBACK, 5432)}
    assert published_ports(found["rabbitmq"]) == {(LOOPBACK, 5672), (LOOPBACK, 15672)}
    assert published_ports(found["orderapi"]) == {(LOOPBACK, 8000)}
    assert published_ports(found["prometheus"]) == {(LOOPBACK, 9090)}
    assert published_ports(found["grafana"]) == {(LOOPBACK, 3000)}
    # Each host port is a setting, so the stack runs beside servers that hold the defaults.
    assert published_ports(found["orderapi"], elsewhere) == {("192.0.2.10", 18000)}
    assert published_ports(found["postgres"], elsewhere) == {("192.0.2.10", 15432)}
    assert published_ports(found["rabbitmq"], elsewhere) == {
        ("192.0.2.10", 15673),
        ("192.0.2.10", 15674),
    }
    assert published_ports(found["prometheus"], elsewhere) == {("192.0.2.10", 19090)}
    assert published_ports(found["grafana"], elsewhere) == {("192.0.2.10", 13000)}
    # Nothing else is published: the workers' metrics stay on the compose network.
    published = {name for name, service in found.items() if service.get("ports")}
    assert published == {"postgres", "rabbitmq", "orderapi", "prometheus", "grafana"}
    # Inside its container the API listens on every address, and its port is the one published.
    assert environment(found["orderapi"])["API_HOST"] == "0.0.0.0"  # noqa: S104
    assert environment(found["orderapi"])["API_PORT"] == "8000"
    assert all(str(port).endswith(":8000") for port in found["orderapi"]["ports"])


def test_the_open_quick_start_api_is_allowed_only_as_far_as_its_published_port() -> None:
    api = services()["orderapi"]
    env = environment(api)

    # The API refuses AUTH_DISABLED on 0.0.0.0 unless told; compose tells it, because who can
    # reach it is decided by the published port, on BIND_ADDRESS (loopback by default).
    settings = Settings.model_validate({k.lower(): v for k, v in env.items()})
    assert settings.auth_disabled
    assert settings.auth_disabled_allow_remote
    assert {address for address, _ in published_ports(api)} == {LOOPBACK}


def test_postgres_gets_the_baseline_schema_then_the_services_role() -> None:
    postgres = services()["postgres"]
    env = environment(postgres)

    assert env["POSTGRES_USER"] == "acme"
    assert env["POSTGRES_DB"] == "acme"
    assert env["POSTGRES_PASSWORD"]
    assert env["APP_DATABASE_USER"] == "acme_app"
    assert env["APP_DATABASE_PASSWORD"]
    initdb_mounts = sorted(
        (target, source)
        for source, target, *_ in (
            str(volume).split(":") for volume in postgres["volumes"] if INITDB_DIR in str(volume)
        )
    )
    # Files, not the db/ folder: the numbered migrations would sort before init.sql. The image
    # runs them in the order of their names.
    assert [source for _, source in initdb_mounts] == [
        "./db/init.sql",
        "./deploy/postgres/app-role.sh",
    ]
    for target, source in initdb_mounts:
        assert (ROOT / source).is_file()
        assert target.startswith(INITDB_DIR)
        assert target.endswith(Path(source).suffix)


def test_the_services_role_may_read_and_write_but_not_change_the_schema() -> None:
    script = (DEPLOY / "postgres" / "app-role.sh").read_text(encoding="utf-8")

    assert "NOSUPERUSER NOCREATEDB NOCREATEROLE" in script
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public" in script
    assert "ALTER DEFAULT PRIVILEGES FOR ROLE" in script
    assert "GRANT CREATE" not in script
    assert "OWNER" not in script


def test_rabbitmq_loads_the_per_service_users_with_the_passwords_of_dot_env() -> None:
    found = services()
    writer, broker = found["rabbitmq-definitions"], found["rabbitmq"]
    template = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    command = dict(argument.removeprefix("--").split("=", 1) for argument in writer["command"][1:])

    assert writer["command"][0] == "broker-definitions"
    assert writer["restart"] == "no"
    assert "depends_on" not in writer
    assert mounts(writer)[command["template"]] == "./deploy/rabbitmq/definitions.json"
    assert command["administrator"] == "eda_user"
    # Every user of the file, and the UI's administrator, gets its password from .env.
    assert set(environment(writer)) == {
        password_variable(user) for user in [*users_of(template), "eda_user"]
    }
    assert environment(writer)[password_variable("eda_user")] == "eda_pass"
    # The broker waits for the file and loads it on every boot, from the same volume.
    assert broker["depends_on"] == {
        "rabbitmq-definitions": {"condition": "service_completed_successfully"}
    }
    [shared] = [
        volume.split(":")[0]
        for volume in writer["volumes"]
        if volume.split(":")[1] == str(Path(command["output"]).parent)
    ]
    [(loaded_from, read_only)] = [
        (volume.split(":")[1], volume.split(":")[2:] == ["ro"])
        for volume in broker["volumes"]
        if volume.split(":")[0] == shared
    ]
    assert read_only
    conf_target = next(
        t for t, s in mounts(broker).items() if s == "./deploy/rabbitmq/compose.conf"
    )
    assert conf_target.startswith("/etc/rabbitmq/conf.d/")
    conf = (DEPLOY / "rabbitmq" / "compose.conf").read_text(encoding="utf-8")
    assert f"load_definitions = {loaded_from}/{Path(command['output']).name}" in conf
    # No default user: the broker that loads definitions creates none (no guest).
    assert "RABBITMQ_DEFAULT_USER" not in environment(broker)


def test_each_service_connects_with_a_user_of_its_own() -> None:
    found = services()

    assert set(BROKER_USERS) == {"migrate", "operator", *APP_SERVICES}
    for name, broker_user in BROKER_USERS.items():
        env = environment(found[name])
        # Only migrate, which owns the schema, connects as its owner; the others as acme_app.
        database_user = "acme" if name == "migrate" else "acme_app"
        assert url_user(env["DATABASE_URL"]) == database_user, name
        assert env["DATABASE_URL"].endswith("@postgres:5432/acme"), name
        assert url_user(env["RABBITMQ_URL"]) == broker_user, name
        assert env["RABBITMQ_URL"].endswith("@rabbitmq:5672/"), name
        assert "LOG_LEVEL" in env, name


def test_the_operator_is_a_tool_that_up_does_not_start() -> None:
    operator = services()["operator"]

    assert operator["profiles"] == ["tools"]
    assert operator["restart"] == "no"
    # `docker compose run --rm operator ...` runs against the running system, starting nothing.
    assert "depends_on" not in operator


def test_app_services_set_only_variables_the_settings_read() -> None:
    known = {name.upper() for name in Settings.model_fields}
    found = services()

    for name in ("migrate", *APP_SERVICES):
        unknown = set(environment(found[name])) - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which Settings does not read"
    assert "PAYMENT_SUCCESS_RATE" in environment(found["payment"])


def test_dockerfile_runs_the_cli_and_carries_the_schema() -> None:
    assert DOCKERFILE.is_file()
    instructions = dockerfile_instructions()

    entrypoints = [arguments for keyword, arguments in instructions if keyword == "ENTRYPOINT"]
    assert [json.loads(arguments) for arguments in entrypoints] == [["acme-orders"]]
    copied = {
        source.rstrip("/")
        for keyword, arguments in instructions
        if keyword == "COPY"
        for source in arguments.split()[:-1]
        if not source.startswith("--")
    }
    assert {"src", "db", "pyproject.toml"} <= copied
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users
    assert users[-1] not in {"root", "0"}


def test_a_fresh_clone_without_dot_env_gets_the_documented_development_defaults() -> None:
    found = services()

    assert environment(found["postgres"])["POSTGRES_PASSWORD"] == "acme"
    assert environment(found["postgres"])["APP_DATABASE_PASSWORD"] == "acme_app"
    # The management UI's user, as the seed documents it.
    assert environment(found["rabbitmq-definitions"])[password_variable("eda_user")] == "eda_pass"
    # The quick start's API is open, as the README's curl examples need.
    assert environment(found["orderapi"])["AUTH_DISABLED"] == "1"


def passwords_in_urls(dot_env: dict[str, str]) -> dict[str, str]:
    """Each user's password as the services' URLs give it: user -> password."""
    found = services()
    passwords: dict[str, str] = {}
    for name in BROKER_USERS:
        env = environment(found[name], dot_env)
        for url in (env["DATABASE_URL"], env["RABBITMQ_URL"]):
            match = URL_PASSWORD.search(url)
            assert match, url
            user = url_user(url)
            assert passwords.setdefault(user, match["password"]) == match["password"], user
    return passwords


def test_passwords_and_switches_come_from_dot_env_consistently_everywhere() -> None:
    found = services()
    template = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    variables = [
        "POSTGRES_PASSWORD",
        "POSTGRES_APP_PASSWORD",
        "RABBITMQ_PASSWORD",
        "RABBITMQ_MIGRATE_PASSWORD",
        "RABBITMQ_PUBLISHER_PASSWORD",
        "RABBITMQ_INVENTORY_PASSWORD",
        "RABBITMQ_PAYMENT_PASSWORD",
        "RABBITMQ_NOTIFICATION_PASSWORD",
        "RABBITMQ_OPERATOR_PASSWORD",
        "RABBITMQ_BOARD_PASSWORD",
        "RABBITMQ_KEDA_PASSWORD",
    ]
    dot_env = {name: f"s3cret{n}" for n, name in enumerate(variables)} | {"AUTH_DISABLED": "0"}

    in_urls = passwords_in_urls(dot_env)
    postgres = environment(found["postgres"], dot_env)
    written = environment(found["rabbitmq-definitions"], dot_env)
    # The servers are given the passwords the services connect with.
    assert in_urls["acme"] == postgres["POSTGRES_PASSWORD"]
    assert in_urls["acme_app"] == postgres["APP_DATABASE_PASSWORD"]
    for user in users_of(template):
        if user in in_urls:
            assert in_urls[user] == written[password_variable(user)], user
    # Each from a variable of its own: no two users share a password (acme-keda, KEDA's on
    # Kubernetes, is in no URL of compose).
    assert written[password_variable("acme-keda")] == dot_env["RABBITMQ_KEDA_PASSWORD"]
    assert len(
        set(in_urls.values())
        | {written[password_variable("eda_user")], written[password_variable("acme-keda")]}
    ) == len(variables)
    assert environment(found["orderapi"], dot_env)["AUTH_DISABLED"] == "0"


def test_no_password_is_written_into_the_compose_file_outside_a_dot_env_default() -> None:
    for name, service in services().items():
        for variable, raw in service.get("environment", {}).items():
            value = str(raw)
            secret = any(word in variable for word in ("PASSWORD", "PASS", "SECRET"))
            if "URL" in variable:
                match = URL_PASSWORD.search(value)
                assert match, (name, variable)
                assert VARIABLE.fullmatch(match["password"]), f"{name} {variable}: not from .env"
            if secret:
                assert VARIABLE.fullmatch(value), f"{name} {variable} is not read from .env"


def test_env_example_documents_every_variable_compose_reads_with_its_default() -> None:
    example = env_example()
    read = {
        match["name"]: match["default"]
        for match in VARIABLE.finditer(COMPOSE_FILE.read_text(encoding="utf-8"))
    }

    assert set(example) == set(read)
    for name, default in read.items():
        assert example[name] == default, name


def test_the_real_dot_env_stays_out_of_git_and_of_the_image() -> None:
    gitignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    dockerignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()

    assert ".env" in gitignored
    assert ".env" in dockerignored


def test_the_image_sets_no_credential() -> None:
    for keyword, arguments in dockerfile_instructions():
        if keyword in {"ENV", "ARG"}:
            assert not re.search(r"PASSWORD|SECRET|TOKEN|_KEY|://\w+:\w+@", arguments), arguments


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's bind mounts: path in the container -> path beside this file."""
    found: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if source.startswith("./"):
            found[target] = source
    return found


def scrape_targets() -> dict[str, tuple[str, int]]:
    """Prometheus' targets: compose service -> (metrics path, port)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    targets: dict[str, tuple[str, int]] = {}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, _, port = target.partition(":")
                assert host not in targets, f"{host} is scraped twice"
                targets[host] = (job.get("metrics_path", "/metrics"), int(port))
    return targets


def test_prometheus_and_grafana_are_an_optional_profile() -> None:
    found = services()

    for name in OBSERVABILITY:
        assert found[name]["profiles"] == ["observability"], name
    # Plain `docker compose up -d` runs everything else but the operator's tool, as before.
    for name in set(found) - OBSERVABILITY - {"operator"}:
        assert "profiles" not in found[name], name


def test_prometheus_scrapes_every_app_service_on_the_port_it_serves_metrics_on() -> None:
    found = services()
    targets = scrape_targets()

    # Each target is a compose service, and every service of the CLI but migrate is scraped.
    assert set(targets) == set(APP_SERVICES)
    for name, (path, port) in targets.items():
        env = environment(found[name])
        settings = Settings.model_validate({k.lower(): v for k, v in env.items()})
        assert path == "/metrics", name
        if APP_SERVICES[name] == "api":
            assert port == settings.api_port
            assert settings.api_host == "0.0.0.0"  # noqa: S104
        else:
            assert port == metrics_port(settings, APP_SERVICES[name]), name
            # Reachable from the Prometheus container, and said so.
            assert settings.metrics_host == "0.0.0.0", name  # noqa: S104
            assert found[name]["expose"] == [str(port)], name
            health = found[name]["healthcheck"]["test"]
            assert any(f"127.0.0.1:{port}/health" in part for part in health), name
    # The configuration Prometheus reads is the file checked here.
    assert mounts(found["prometheus"])["/etc/prometheus/prometheus.yml"] == (
        "./deploy/prometheus/prometheus.yml"
    )


def test_prometheus_scrapes_the_api_with_a_metrics_key_from_a_file_kept_out_of_git() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {
        target.partition(":")[0]: job
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    compose = load_compose()
    secret_file = compose["secrets"]["prometheus-api-key"]["file"]
    default = interpolate(secret_file, {})

    # The API's job sends the key of the compose secret that the Prometheus container is given.
    assert jobs["orderapi"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/run/secrets/prometheus-api-key",
    }
    assert services()["prometheus"]["secrets"] == ["prometheus-api-key"]
    # The workers' metrics servers take no key (compose network only): none is sent to them.
    assert all("authorization" not in job for name, job in jobs.items() if name != "orderapi")
    # A fresh clone's file holds no key; the documented place of a real one is ignored by git,
    # and .env.example shows how to make it, of the scope that reads the metrics only.
    assert default == env_example()["PROMETHEUS_API_KEY_FILE"] == "./deploy/prometheus/no-api-key"
    assert not (ROOT / default).read_text(encoding="utf-8").strip().startswith(PREFIX)
    real = "./deploy/prometheus/api-key"
    assert interpolate(secret_file, {"PROMETHEUS_API_KEY_FILE": real}) == real
    assert real.removeprefix("./") in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert f"apikey create prometheus --scope {Scope.METRICS.value}" in ENV_EXAMPLE.read_text(
        encoding="utf-8"
    )


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    grafana = services()["grafana"]
    mounted = mounts(grafana)
    provisioning = GRAFANA / "provisioning"

    assert mounted["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    datasources = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )["datasources"]
    assert [(d["type"], d["uid"], d["url"]) for d in datasources] == [
        ("prometheus", "prometheus", "http://prometheus:9090")
    ]
    providers = yaml.safe_load(
        (provisioning / "dashboards" / "acme-orders.yml").read_text(encoding="utf-8")
    )["providers"]
    dashboards_dir = providers[0]["options"]["path"]
    assert mounted[dashboards_dir] == "./deploy/grafana/dashboards"
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/")
    assert (GRAFANA / "dashboards" / home.rsplit("/", 1)[1]).is_file()


def dashboard_queries() -> list[str]:
    dashboard = json.loads((GRAFANA / "dashboards" / "acme-orders.json").read_text("utf-8"))
    targets = [target for panel in dashboard["panels"] for target in panel.get("targets", [])]
    # The provisioned data source, by its uid.
    assert {target["datasource"]["uid"] for target in targets} == {"prometheus"}
    return [target["expr"] for target in targets]


def test_the_dashboard_queries_only_metrics_that_exist_and_shows_every_one() -> None:
    queries = dashboard_queries()
    # Every metric name in the queries: identifiers that are neither functions (followed by "(")
    # nor labels (followed by a comparison, or inside by/without lists).
    without_strings = [re.sub(r'"[^"]*"|\[[^\]]*\]|by \([^)]*\)', "", q) for q in queries]
    named = {
        name
        for query in without_strings
        for name in re.findall(r"\b([a-z_][a-z0-9_]*)\b(?!\s*[(=!~])", query)
    } - {"by", "without"}

    assert queries
    assert named - exported_names() <= OTHER_METRICS, named - exported_names()
    assert named - OTHER_METRICS <= exported_names()
    # Each metric of the code has a panel.
    for metric in ALL_METRICS:
        for family in metric.describe():
            assert any(family.name in query for query in queries), family.name
