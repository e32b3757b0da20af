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

from acme_orders.cli import SERVICES
from acme_orders.observability.metrics import ALL_METRICS, exported_names
from acme_orders.observability.metrics_server import metrics_port
from acme_orders.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
# ${NAME}, ${NAME:-default} and ${NAME-default}: what this file uses of compose's interpolation.
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")

CONTAINERS = {
    "postgres": "eda-postgres",
    "rabbitmq": "eda-rabbitmq",
    "migrate": "eda-migrate",
    "orderapi": "eda-orderapi",
    "orderpublisher": "eda-orderpublisher",
    "inventory": "eda-inventory",
    "payment": "eda-payment",
    "notification": "eda-notification",
    "prometheus": "eda-prometheus",
    "grafana": "eda-grafana",
}
# Compose service -> the service `acme-orders run` starts in it.
APP_SERVICES = {
    "orderapi": "api",
    "orderpublisher": "publisher",
    "inventory": "inventory",
    "payment": "payment",
    "notification": "notification",
}
APP_IMAGE = "acme-orders:latest"
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


def published_ports(service: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.add(int(port["published"]))
        else:
            host_side = str(port).rsplit(":", 1)[0].rsplit(":", 1)[-1]
            ports.add(int(host_side))
    return ports


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
    for name in ("migrate", *APP_SERVICES):
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


def test_ports_are_published() -> None:
    found = services()

    assert published_ports(found["postgres"]) == {5432}
    assert published_ports(found["rabbitmq"]) == {5672, 15672}
    assert published_ports(found["orderapi"]) == {8000}
    assert environment(found["orderapi"])["API_HOST"] == "0.0.0.0"  # noqa: S104
    assert environment(found["orderapi"])["API_PORT"] == "8000"


def test_postgres_gets_the_acme_database_and_only_the_baseline_schema() -> None:
    postgres = services()["postgres"]
    env = environment(postgres)

    assert env["POSTGRES_USER"] == "acme"
    assert env["POSTGRES_DB"] == "acme"
    assert env["POSTGRES_PASSWORD"]
    initdb_mounts = [
        str(volume).split(":") for volume in postgres["volumes"] if INITDB_DIR in str(volume)
    ]
    # One file, not the db/ folder: the numbered migrations would sort before init.sql.
    assert len(initdb_mounts) == 1
    source, target, *_ = initdb_mounts[0]
    assert source == "./db/init.sql"
    assert (ROOT / source).is_file()
    assert target.startswith(INITDB_DIR)
    assert target.endswith(".sql")


def test_rabbitmq_user() -> None:
    env = environment(services()["rabbitmq"])

    assert env["RABBITMQ_DEFAULT_USER"] == "eda_user"
    assert env["RABBITMQ_DEFAULT_PASS"] == "eda_pass"


def test_app_services_reach_the_servers_with_their_credentials() -> None:
    found = services()

    for name in ("migrate", *APP_SERVICES):
        env = environment(found[name])
        # Without a .env: the development defaults.
        assert env["DATABASE_URL"] == "postgresql://acme:acme@postgres:5432/acme", name
        assert env["RABBITMQ_URL"] == "amqp://eda_user:eda_pass@rabbitmq:5672/", name
        assert "LOG_LEVEL" in env, name


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
    assert environment(found["rabbitmq"])["RABBITMQ_DEFAULT_PASS"] == "eda_pass"
    # The quick start's API is open, as the README's curl examples need.
    assert environment(found["orderapi"])["AUTH_DISABLED"] == "1"


def test_passwords_and_switches_come_from_dot_env_consistently_everywhere() -> None:
    found = services()
    dot_env = {
        "POSTGRES_PASSWORD": "pg5ecret",
        "RABBITMQ_PASSWORD": "mq5ecret",
        "AUTH_DISABLED": "0",
    }

    assert environment(found["postgres"], dot_env)["POSTGRES_PASSWORD"] == "pg5ecret"
    assert environment(found["rabbitmq"], dot_env)["RABBITMQ_DEFAULT_PASS"] == "mq5ecret"
    for name in ("migrate", *APP_SERVICES):
        env = environment(found[name], dot_env)
        assert env["DATABASE_URL"] == "postgresql://acme:pg5ecret@postgres:5432/acme", name
        assert env["RABBITMQ_URL"] == "amqp://eda_user:mq5ecret@rabbitmq:5672/", name
    assert environment(found["orderapi"], dot_env)["AUTH_DISABLED"] == "0"


def test_no_password_is_written_into_the_compose_file_outside_a_dot_env_default() -> None:
    for name, service in services().items():
        for variable, raw in service.get("environment", {}).items():
            value = str(raw)
            secret = any(word in variable for word in ("PASSWORD", "PASS", "SECRET"))
            if secret or "URL" in variable:
                without_defaults = VARIABLE.sub("", value)
                assert ":acme@" not in without_defaults, (name, variable)
                assert ":eda_pass@" not in without_defaults, (name, variable)
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
    # Plain `docker compose up -d` runs everything else, as before.
    for name in set(found) - OBSERVABILITY:
        assert "profiles" not in found[name], name
    assert published_ports(found["prometheus"]) == {9090}
    assert published_ports(found["grafana"]) == {3000}


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
