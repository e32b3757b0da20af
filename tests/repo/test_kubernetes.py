"""deploy/kubernetes, checked offline: rendered with `kubectl kustomize`, every document validated
against the Kubernetes API's schemas (one pinned version, strict) or against its operator's CRD
schema (pinned in deploy/kubernetes/crds, unknown fields refused), and the design rules held to
what the code says: ports, queues, users, settings. Nothing here reaches a cluster; these
manifests have never been applied to one by this suite."""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from acme_orders.cli import build_parser
from acme_orders.core import topology
from acme_orders.core.observability.metrics_server import ServiceHealth, metrics_port, worker_app
from acme_orders.core.runtime import CLOSE_TIMEOUT
from acme_orders.core.settings import Settings
from acme_orders.order_api.app import create_app
from acme_orders.services import SERVICES

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
CRDS = KUBERNETES / "crds"
OVERLAYS = ("production", "laptop")
# The Kubernetes release whose API the manifests are validated against: within what every
# operator pinned in crds/ supports (CloudNativePG 1.30: 1.34 to 1.36).
KUBERNETES_VERSION = "1.34.0"
NAMESPACE = "acme-orders"
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
APP_ROLE_SCRIPT = ROOT / "deploy" / "postgres" / "app-role.sh"
COMPOSE_FILE = ROOT / "docker-compose.yml"
SECRETS_SCRIPT = KUBERNETES / "create-secrets.sh"
# `acme-orders run` service (and Deployment) -> the RabbitMQ user it connects as.
BROKER_USERS = {
    "api": "acme-board",
    "publisher": "acme-publisher",
    "inventory": "acme-inventory",
    "payment": "acme-payment",
    "notification": "acme-notification",
}
# Compose service -> `acme-orders run` service, to hold both deployments to the same users.
COMPOSE_SERVICES = {
    "orderapi": "api",
    "orderpublisher": "publisher",
    "inventory": "inventory",
    "payment": "payment",
    "notification": "notification",
    "migrate": "migrate",
}
# A liveness probe's path must answer while the database and the broker are down.
LIVENESS_PATHS = {"api": "/docs"} | {
    worker: "/metrics" for worker in BROKER_USERS if worker != "api"
}
URL_CREDENTIALS = re.compile(r"^(?P<scheme>[a-z]+)://(?P<user>[^:/@]+):(?P<password>[^@]*)@")
EXPANSION = re.compile(r"\$\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)")
Document = dict[str, Any]


# --- rendering ------------------------------------------------------------------------------------


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip(
            "kubectl is not installed, and `kubectl kustomize` renders deploy/kubernetes: "
            "install it (Debian: apt-get install kubectl) to check the manifests"
        )
    return found


@functools.cache
def rendered_text(directory: Path) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return result.stdout


def render(directory: Path) -> list[Document]:
    documents = [d for d in yaml.safe_load_all(rendered_text(directory)) if d]
    assert documents, directory
    return copy.deepcopy(documents)


def overlay(name: str) -> list[Document]:
    return render(KUBERNETES / "overlays" / name)


def of_kind(documents: list[Document], kind: str) -> dict[str, Document]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def one(documents: list[Document], kind: str) -> Document:
    [found] = of_kind(documents, kind).values()
    return found


def workloads(documents: list[Document]) -> dict[str, Document]:
    """The Deployments, and the migrate Job, by name."""
    return of_kind(documents, "Deployment") | of_kind(documents, "Job")


def pod_spec(workload: Document) -> Document:
    spec: Document = workload["spec"]["template"]["spec"]
    return spec


def main_container(workload: Document) -> Document:
    containers: list[Document] = pod_spec(workload)["containers"]
    [container] = containers
    return container


# --- validation -----------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """A CRD's schema as the API server applies it to `kubectl apply` (field validation Strict,
    kubectl's default): an object that lists its properties takes no other field, unless the
    schema preserves unknown fields there."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    tightened = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        tightened["additionalProperties"] = False
    return tightened


@dataclass(frozen=True)
class PinnedCrd:
    group: str
    kind: str
    versions: Mapping[str, Any]
    path: Path


@functools.cache
def pinned_crds() -> dict[tuple[str, str], PinnedCrd]:
    """(apiVersion, kind) -> the CRD's strict schema for that version, for every file in crds/."""
    found: dict[tuple[str, str], PinnedCrd] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert crd["kind"] == "CustomResourceDefinition", path
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        versions = {
            v["name"]: strict(v["schema"]["openAPIV3Schema"])
            for v in crd["spec"]["versions"]
            if v.get("served", True)
        }
        for version in versions:
            found[(f"{group}/{version}", kind)] = PinnedCrd(group, kind, versions, path)
    return found


@functools.cache
def kubernetes_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator | None:
    """kubernetes-validate's strict schema of one kind at KUBERNETES_VERSION, as its `validate`
    loads it, but as a validator that reports every error, not only the first."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict"
    try:
        schema = schema_contents(
            f"{folder}/{kind.lower()}-{group_version}.json", KUBERNETES_VERSION
        )
    except FileNotFoundError:
        return None
    definitions = schema_contents(f"{folder}/_definitions.json", KUBERNETES_VERSION)
    registry: Registry[Any] = Resource.from_contents(definitions) @ (
        Resource.from_contents(schema) @ Registry()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def kubernetes_errors(document: Document) -> list[str]:
    validator = kubernetes_validator(document["apiVersion"], document["kind"])
    if validator is None:
        return [f"no schema for {document['apiVersion']} {document['kind']}"]
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def validation_errors(document: Document) -> list[str]:
    """What the API server would refuse in this document, as far as a schema can tell."""
    key = (document["apiVersion"], document["kind"])
    crd = pinned_crds().get(key)
    if crd is None:
        return kubernetes_errors(document)
    version = document["apiVersion"].rpartition("/")[2]
    validator = jsonschema.Draft202012Validator(crd.versions[version])
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(document)
    ]
    # A CRD's schema says only `metadata: {type: object}`: the API server checks metadata as
    # every object's ObjectMeta, which a ConfigMap's schema carries.
    errors += kubernetes_errors(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": document["metadata"]}
    )
    return errors


def all_errors(documents: list[Document]) -> dict[str, list[str]]:
    found = {f"{d['kind']}/{d['metadata']['name']}": validation_errors(d) for d in documents}
    return {name: errors for name, errors in found.items() if errors}


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_rendered_document_is_valid_against_its_schema(name: str) -> None:
    documents = overlay(name)

    assert all_errors(documents) == {}
    # Everything is something the API or a pinned CRD knows, in our namespace.
    for document in documents:
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == NAMESPACE, document["metadata"]["name"]


# (file under base/, text in it, the same with a typo, the field the error must name)
TYPOS = [
    ("api.yaml", "  replicas: 2\n", "  replica: 2\n", "replica"),
    ("publisher.yaml", "      containers:\n", "      contaners:\n", "contaners"),
    ("api.yaml", "path: /health, port: http", "path: /health, prot: http", "prot"),
    ("networkpolicies.yaml", "  policyTypes:", "  policyType:", "policyType"),
    ("rabbitmq.yaml", "  replicas: 3\n", "  replica: 3\n", "replica"),
    ("postgres.yaml", "  instances: 3\n", "  instance: 3\n", "instance"),
    ("postgres.yaml", "      dataDurability:", "      dataDurabilty:", "dataDurabilty"),
    ("inventory.yaml", "  minReplicaCount:", "  minReplicasCount:", "minReplicasCount"),
    ("keda.yaml", "    - parameter: username", "    - parameters: username", "parameters"),
    (
        "rabbitmq-users.yaml",
        "  importCredentialsSecret:",
        "  importCredentialSecret:",
        "importCredentialSecret",
    ),
    ("rabbitmq-users.yaml", "    exchange: acme.events", "    exchang: acme.events", "exchang"),
]


@pytest.mark.parametrize(("file", "good", "typo", "named"), TYPOS)
def test_a_typo_in_a_manifest_fails_validation(
    tmp_path: Path, file: str, good: str, typo: str, named: str
) -> None:
    copied = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copied, ignore=shutil.ignore_patterns("crds"))
    manifest = copied / "base" / file
    text = manifest.read_text(encoding="utf-8")
    assert good in text, f"{file} no longer has {good!r}: update the typo test"
    manifest.write_text(text.replace(good, typo, 1), encoding="utf-8")

    errors = all_errors(render(copied / "overlays" / "production"))

    assert errors, f"{typo!r} in {file} passed validation"
    assert any(named in message for messages in errors.values() for message in messages), errors


def test_a_crd_schema_is_made_strict_only_where_unknown_fields_are_not_kept() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "properties": {"a": {"type": "string"}}},
            "override": {
                "type": "object",
                "properties": {"b": {"type": "string"}},
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
    }

    tightened = strict(schema)

    validator = jsonschema.Draft202012Validator(tightened)
    assert not validator.is_valid({"spec": {"a": "x", "typo": 1}})
    assert not validator.is_valid({"spec": {}, "typo": 1})
    assert validator.is_valid({"spec": {"a": "x"}, "override": {"anything": {"goes": 1}}})


def test_the_pinned_crds_are_the_ones_the_manifests_use_and_say_where_they_come_from() -> None:
    readme = (CRDS / "README.md").read_text(encoding="utf-8")
    custom = {
        (d["apiVersion"], d["kind"])
        for name in OVERLAYS
        for d in overlay(name)
        if kubernetes_validator(d["apiVersion"], d["kind"]) is None
    }

    # Every custom resource has its CRD here, and every CRD here is used.
    assert custom <= set(pinned_crds())
    assert {kind for _, kind in custom} == {crd.kind for crd in pinned_crds().values()}
    for path in {crd.path for crd in pinned_crds().values()}:
        assert f"`{path.name}`" in readme, f"crds/README.md does not say where {path.name} is from"


# --- what each workload runs, and as whom ---------------------------------------------------------


def configmaps(documents: list[Document]) -> dict[str, dict[str, str]]:
    return {name: d.get("data", {}) for name, d in of_kind(documents, "ConfigMap").items()}


@dataclass
class Environment:
    """A container's environment as Kubernetes builds it: envFrom, then env in order, with
    $(NAME) expanded; a value from a Secret stands as `secret:NAME/KEY`."""

    values: dict[str, str] = field(default_factory=dict)
    from_secrets: dict[str, tuple[str, str]] = field(default_factory=dict)
    listed: list[str] = field(default_factory=list)


def environment(container: Document, documents: list[Document]) -> Environment:
    env = Environment()
    maps = configmaps(documents)
    for source in container.get("envFrom", []):
        env.values.update(maps[source["configMapRef"]["name"]])
    for entry in container.get("env", []):
        name = entry["name"]
        env.listed.append(name)
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            env.from_secrets[name] = (ref["name"], ref["key"])
            env.values[name] = f"secret:{ref['name']}/{ref['key']}"
        else:
            env.values[name] = EXPANSION.sub(
                lambda m: env.values.get(m[1], m[0]), str(entry["value"])
            )
    return env


def settings_of(container: Document, documents: list[Document]) -> Settings:
    known = Settings.model_fields
    values = environment(container, documents).values
    return Settings.model_validate({k.lower(): v for k, v in values.items() if k.lower() in known})


def url_user(url: str) -> str:
    match = URL_CREDENTIALS.match(url)
    assert match, url
    return match["user"]


def test_each_deployment_runs_a_service_of_the_cli_and_every_service_is_deployed() -> None:
    for name in OVERLAYS:
        deployments = of_kind(overlay(name), "Deployment")

        assert set(deployments) == set(SERVICES)
        for service, deployment in deployments.items():
            assert main_container(deployment)["args"] == ["run", service]
            assert main_container(deployment)["image"].rpartition(":")[0].endswith("acme-orders")


def test_the_migrate_job_runs_migrate_as_the_owner_and_every_service_waits_for_its_schema() -> None:
    documents = overlay("production")
    job = of_kind(documents, "Job")["migrate"]
    migrate_env = environment(main_container(job), documents).values

    assert main_container(job)["args"] == ["migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 6
    assert url_user(migrate_env["DATABASE_URL"]) == "acme"
    assert url_user(migrate_env["RABBITMQ_URL"]) == "acme-migrate"
    # The services start only once the schema is what their image needs: an initContainer runs
    # a command the CLI has, against the database the service uses.
    assert build_parser().parse_args(["wait-for-schema"]).command == "wait-for-schema"
    for service, deployment in of_kind(documents, "Deployment").items():
        [waiter] = pod_spec(deployment)["initContainers"]
        assert waiter["args"] == ["wait-for-schema"], service
        assert waiter["image"] == main_container(deployment)["image"], service
        waiter_url = environment(waiter, documents).values["DATABASE_URL"]
        service_url = environment(main_container(deployment), documents).values["DATABASE_URL"]
        assert waiter_url == service_url, service


def test_each_service_connects_with_a_user_of_its_own_as_in_docker_compose() -> None:
    documents = overlay("production")
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]

    for name, workload in workloads(documents).items():
        env = environment(main_container(workload), documents).values
        database_user = "acme" if name == "migrate" else "acme_app"
        assert url_user(env["DATABASE_URL"]) == database_user, name
        assert "@postgres-rw:5432/acme?" in env["DATABASE_URL"], name
        assert "sslmode=verify-full" in env["DATABASE_URL"], name
        assert env["RABBITMQ_URL"].endswith("@rabbitmq:5672/"), name
        # The same users as docker compose gives the same services.
        [compose_name] = [c for c, s in COMPOSE_SERVICES.items() if s == name]
        compose_url = compose[compose_name]["environment"]["RABBITMQ_URL"]
        assert url_user(env["RABBITMQ_URL"]) == url_user(compose_url), name
        if name != "migrate":
            assert url_user(env["RABBITMQ_URL"]) == BROKER_USERS[name], name


def test_every_variable_is_a_setting_or_a_secret_a_later_variable_expands() -> None:
    known = {name.upper() for name in Settings.model_fields}
    for name in OVERLAYS:
        documents = overlay(name)
        for key in (k for data in configmaps(documents).values() for k in data):
            assert key in known, f"the ConfigMap sets {key}, which Settings does not read"
        for workload_name, workload in workloads(documents).items():
            spec = pod_spec(workload)
            for container in spec.get("initContainers", []) + spec["containers"]:
                entries = container.get("env", [])
                for index, entry in enumerate(entries):
                    if entry["name"] in known:
                        continue
                    # Not a setting: only a password from a Secret, for a later URL to expand.
                    later = " ".join(str(e.get("value", "")) for e in entries[index + 1 :])
                    where = f"{workload_name}/{container['name']} {entry['name']}"
                    assert "secretKeyRef" in entry.get("valueFrom", {}), where
                    assert f"$({entry['name']})" in later, where


def test_the_api_requires_keys_and_listens_on_the_pods_address() -> None:
    for name in OVERLAYS:
        documents = overlay(name)
        settings = settings_of(main_container(of_kind(documents, "Deployment")["api"]), documents)

        assert not settings.auth_disabled
        assert not settings.auth_disabled_allow_remote
        assert settings.api_host == "0.0.0.0"  # noqa: S104


@pytest.mark.parametrize("limit", ["rate_limit_orders_per_second", "rate_limit_reads_per_second"])
def test_the_rate_limit_per_key_is_the_same_whatever_the_number_of_api_replicas(
    limit: str,
) -> None:
    single_process = Settings.model_fields[limit].default
    for name in OVERLAYS:
        documents = overlay(name)
        api = of_kind(documents, "Deployment")["api"]
        settings = settings_of(main_container(api), documents)

        assert getattr(settings, limit) * api["spec"]["replicas"] == single_process


# --- probes, resources, disruption, shutdown ------------------------------------------------------


def served_port(service: str, settings: Settings) -> int:
    """The port `service` serves /health on, as the code computes it from its settings."""
    return settings.api_port if service == "api" else metrics_port(settings, service)


def probe_port(container: Document, probe: Document) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    assert isinstance(number, int)
    return number


def test_every_deployment_probes_the_port_its_health_is_served_on() -> None:
    for name in OVERLAYS:
        documents = overlay(name)
        for service, deployment in of_kind(documents, "Deployment").items():
            container = main_container(deployment)
            port = served_port(service, settings_of(container, documents))
            readiness, liveness = container["readinessProbe"], container["livenessProbe"]

            assert port > 0, service
            assert readiness["httpGet"]["path"] == "/health", service
            assert liveness["httpGet"]["path"] == LIVENESS_PATHS[service], service
            assert container["startupProbe"]["httpGet"] == liveness["httpGet"], service
            for probe in (readiness, liveness, container["startupProbe"]):
                assert probe_port(container, probe) == port, service
            # A minute without an answer before a restart; readiness reacts within seconds.
            assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60, service


async def test_liveness_answers_while_the_database_is_down_and_readiness_does_not() -> None:
    # Nothing listens on port 1: every database and broker connection fails at once.
    down = Settings(
        database_url="postgresql://acme_app:x@127.0.0.1:1/acme",
        rabbitmq_url="amqp://acme-board:x@127.0.0.1:1/",
    )
    app = create_app(down)
    workers = worker_app(ServiceHealth())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=workers), base_url="http://worker"
        ) as worker,
    ):
        assert (await api.get(LIVENESS_PATHS["api"])).status_code == 200
        assert (await api.get("/health")).status_code == 503
        assert (await worker.get(LIVENESS_PATHS["inventory"])).status_code == 200
        assert (await worker.get("/health")).status_code == 503


def test_every_container_has_requests_and_limits() -> None:
    for name in OVERLAYS:
        for workload_name, workload in workloads(overlay(name)).items():
            spec = pod_spec(workload)
            for container in spec.get("initContainers", []) + spec["containers"]:
                resources = container["resources"]
                where = f"{workload_name}/{container['name']}"
                assert set(resources["requests"]) == {"cpu", "memory"}, where
                assert set(resources["limits"]) == {"cpu", "memory"}, where
        for kind, path in (("RabbitmqCluster", "resources"), ("Cluster", "resources")):
            resources = one(overlay(name), kind)["spec"][path]
            assert {"requests", "limits"} <= set(resources), kind


def test_every_pod_of_ours_runs_as_the_images_user_with_nothing_it_does_not_need() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    created = re.search(r"useradd .*--uid (\d+)", dockerfile)
    assert created, "the Dockerfile no longer creates the services' user with useradd --uid"
    uid = int(created[1])
    for name in OVERLAYS:
        for workload_name, workload in workloads(overlay(name)).items():
            spec = pod_spec(workload)
            # The pods never call the Kubernetes API.
            assert spec["automountServiceAccountToken"] is False, workload_name
            assert spec["securityContext"]["runAsNonRoot"] is True, workload_name
            assert spec["securityContext"]["runAsUser"] == uid, workload_name
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for container in spec.get("initContainers", []) + spec["containers"]:
                context = container["securityContext"]
                where = f"{workload_name}/{container['name']}"
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["readOnlyRootFilesystem"] is True, where
                assert context["capabilities"] == {"drop": ["ALL"]}, where


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def test_every_deployment_has_a_disruption_budget_that_lets_a_node_drain() -> None:
    for name in OVERLAYS:
        documents = overlay(name)
        budgets = of_kind(documents, "PodDisruptionBudget").values()
        for deployment_name, deployment in of_kind(documents, "Deployment").items():
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            [budget] = [b for b in budgets if selects(b["spec"]["selector"], labels)]
            # maxUnavailable, not minAvailable: one replica must not block a drain forever.
            assert budget["spec"]["maxUnavailable"] == 1, deployment_name
            assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", deployment_name
        rabbitmq_pods = {
            "app.kubernetes.io/name": "rabbitmq",
            "app.kubernetes.io/component": "rabbitmq",
        }
        assert [b for b in budgets if selects(b["spec"]["selector"], rabbitmq_pods)]


def test_termination_grace_covers_a_clean_shutdown() -> None:
    for name in OVERLAYS:
        documents = overlay(name)
        for service, deployment in of_kind(documents, "Deployment").items():
            container = main_container(deployment)
            settings = settings_of(container, documents)
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
            # In-flight work, then the broker connection and the pool, each closed within
            # CLOSE_TIMEOUT (runtime.py).
            needed = pre_stop.get("seconds", 0) + settings.shutdown_timeout + 2 * CLOSE_TIMEOUT
            assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= needed, service


# --- autoscaling ----------------------------------------------------------------------------------


def test_each_consumer_scales_on_the_depth_of_the_queues_it_consumes() -> None:
    documents = overlay("production")
    scaled = of_kind(documents, "ScaledObject")
    auth = of_kind(documents, "TriggerAuthentication")
    [cluster_name] = of_kind(documents, "RabbitmqCluster")

    assert set(scaled) == set(topology.CONSUMER_SERVICES)
    for service, specs in topology.SUBSCRIPTIONS.items():
        scaled_object = scaled[service]
        triggers = scaled_object["spec"]["triggers"]
        assert scaled_object["spec"]["scaleTargetRef"] == {"name": service}
        assert [t["metadata"]["queueName"] for t in triggers] == [spec.name for spec in specs]
        for trigger in triggers:
            assert trigger["type"] == "rabbitmq"
            assert trigger["metadata"]["mode"] == "QueueLength"
            assert trigger["metadata"]["protocol"] == "amqp"
            # The RabbitmqCluster's Service, in our namespace, from KEDA's.
            assert trigger["metadata"]["host"] == f"amqp://{cluster_name}.{NAMESPACE}.svc:5672/"
            assert trigger["authenticationRef"]["name"] in auth
        # KEDA owns the count: a count in the Deployment would fight it on every apply.
        assert "replicas" not in of_kind(documents, "Deployment")[service]["spec"]
        assert scaled_object["spec"]["minReplicaCount"] >= 2


def test_keda_reads_queue_depths_as_the_look_only_user() -> None:
    auth = one(overlay("production"), "TriggerAuthentication")
    definitions = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    [keda] = [p for p in definitions["permissions"] if p["user"] == "acme-keda"]

    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {
        "username": ("broker-acme-keda", "username"),
        "password": ("broker-acme-keda", "password"),
    }
    # Passive declares need no permission: KEDA's user may do nothing else (not the API's
    # acme-board, which also reads and replays the dead letters for the board).
    assert (keda["configure"], keda["write"], keda["read"]) == ("^$", "^$", "^$")


def test_the_api_and_the_publisher_have_a_fixed_count() -> None:
    documents = overlay("production")
    targets = {
        s["spec"]["scaleTargetRef"]["name"] for s in of_kind(documents, "ScaledObject").values()
    }
    for service in ("api", "publisher"):
        assert service not in targets
        assert of_kind(documents, "Deployment")[service]["spec"]["replicas"] == 2


# --- the servers ----------------------------------------------------------------------------------


def test_rabbitmq_users_and_permissions_are_exactly_those_of_definitions_json() -> None:
    documents = overlay("production")
    definitions = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    [cluster_name] = of_kind(documents, "RabbitmqCluster")

    users = {
        name: (u["spec"]["tags"], u["spec"]["importCredentialsSecret"]["name"])
        for name, u in of_kind(documents, "User").items()
    }
    permissions = [
        {"user": p["spec"]["user"], "vhost": p["spec"]["vhost"], **p["spec"]["permissions"]}
        for p in of_kind(documents, "Permission").values()
    ]
    topic_permissions = [
        {"user": p["spec"]["user"], "vhost": p["spec"]["vhost"], **p["spec"]["permissions"]}
        for p in of_kind(documents, "TopicPermission").values()
    ]

    assert users == {u["name"]: (u["tags"], f"broker-{u['name']}") for u in definitions["users"]}
    key = functools.partial(json.dumps, sort_keys=True)
    assert sorted(map(key, permissions)) == sorted(map(key, definitions["permissions"]))
    assert sorted(map(key, topic_permissions)) == sorted(map(key, definitions["topic_permissions"]))
    for kind in ("User", "Permission", "TopicPermission"):
        for document in of_kind(documents, kind).values():
            assert document["spec"]["rabbitmqClusterReference"] == {"name": cluster_name}


def test_rabbitmq_is_a_cluster_of_three() -> None:
    cluster = one(overlay("production"), "RabbitmqCluster")

    assert cluster["spec"]["replicas"] == 3


def app_role_grants() -> list[str]:
    """The statements of deploy/postgres/app-role.sh, with its psql variables filled in as
    docker compose fills them (owner acme, database acme, role acme_app), password left out."""
    script = APP_ROLE_SCRIPT.read_text(encoding="utf-8")
    sql = script.split("<<'SQL'\n", 1)[1].split("\nSQL", 1)[0]
    filled = (
        sql.replace(':"app_role"', "acme_app")
        .replace(':"database"', "acme")
        .replace(':"owner"', "acme")
    )
    statements = [" ".join(s.split()) for s in filled.split(";") if s.strip()]
    return [s for s in statements if not s.startswith("CREATE ROLE")]


def test_postgresql_is_three_instances_with_synchronous_replication_and_the_compose_roles() -> None:
    cluster = one(overlay("production"), "Cluster")
    spec = cluster["spec"]
    initdb = spec["bootstrap"]["initdb"]
    post_init = [" ".join(s.split()) for s in initdb["postInitApplicationSQL"]]
    [role] = spec["managed"]["roles"]

    assert spec["instances"] == 3
    assert spec["postgresql"]["synchronous"]["method"] in {"any", "first"}
    assert spec["postgresql"]["synchronous"]["number"] >= 1
    assert spec["postgresql"]["synchronous"]["dataDurability"] == "required"
    # The schema's owner, as in docker compose: only migrate connects as it.
    assert (initdb["database"], initdb["owner"], initdb["secret"]["name"]) == (
        "acme",
        "acme",
        "db-acme",
    )
    assert spec["enableSuperuserAccess"] is False
    # The services' role gets exactly the grants app-role.sh gives it in docker compose.
    assert post_init[1:] == app_role_grants()
    assert post_init[0].startswith(
        "CREATE ROLE acme_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
    )
    assert (role["name"], role["login"], role["superuser"], role["createrole"]) == (
        "acme_app",
        True,
        False,
        False,
    )
    assert role["passwordSecret"] == {"name": "db-acme-app"}


# --- secrets --------------------------------------------------------------------------------------


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, f"{path}[{index}]")
    else:
        yield path, value


def compose_default_passwords() -> set[str]:
    """Every development default password of docker compose, from the ${VAR:-default}s."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    return {
        m["default"]
        for m in re.finditer(r"\$\{(?P<name>[A-Z_]*PASSWORD[A-Z_]*):-(?P<default>[^}]*)\}", text)
    }


def test_no_password_is_written_in_the_manifests() -> None:
    defaults = compose_default_passwords()
    assert {"acme", "acme_app", "eda_pass"} <= defaults
    for name in OVERLAYS:
        documents = overlay(name)
        # Secrets are created apart (create-secrets.sh), never rendered from the repository.
        assert not of_kind(documents, "Secret")
        for document in documents:
            for path, value in walk(document):
                leaf = path.rsplit(".", 1)[-1].lower()
                where = f"{document['kind']}/{document['metadata']['name']}{path}"
                if "password" in leaf and not leaf.endswith("secret"):
                    assert not isinstance(value, str), f"{where} holds a password"
                if isinstance(value, str) and (match := URL_CREDENTIALS.match(value)):
                    # A URL's password is always a variable Kubernetes fills from a Secret.
                    assert EXPANSION.fullmatch(match["password"]), where
        for workload_name, workload in workloads(documents).items():
            spec = pod_spec(workload)
            for container in spec.get("initContainers", []) + spec["containers"]:
                env = environment(container, documents)
                for variable, value in env.values.items():
                    if "PASSWORD" in variable or "SECRET" in variable:
                        assert variable in env.from_secrets, f"{workload_name} {variable}"
                    assert value not in defaults, f"{workload_name} {variable}"
                for url in (v for k, v in env.values.items() if k.endswith("_URL")):
                    match = URL_CREDENTIALS.match(url)
                    assert match, url
                    assert match["password"].startswith("secret:"), f"{workload_name} {url}"


@functools.cache
def script_secrets() -> dict[str, Document]:
    result = subprocess.run(
        ["bash", str(SECRETS_SCRIPT), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": str(Path(kubectl()).parent) + ":/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    found = [d for d in yaml.safe_load_all(result.stdout) if d]
    return {d["metadata"]["name"]: d for d in found}


def secret_value(secret: Document, key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode("utf-8")


def referenced_secrets(documents: list[Document]) -> set[tuple[str, str]]:
    """(Secret, key) of every reference in the manifests."""
    refs: set[tuple[str, str]] = set()
    for workload in workloads(documents).values():
        spec = pod_spec(workload)
        for container in spec.get("initContainers", []) + spec["containers"]:
            refs |= set(environment(container, documents).from_secrets.values())
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                refs |= {
                    (volume["secret"]["secretName"], i["key"]) for i in volume["secret"]["items"]
                }
    for auth in of_kind(documents, "TriggerAuthentication").values():
        refs |= {(r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    for user in of_kind(documents, "User").values():
        name = user["spec"]["importCredentialsSecret"]["name"]
        refs |= {(name, "username"), (name, "password")}
    cluster = one(documents, "Cluster")["spec"]
    for name in [cluster["bootstrap"]["initdb"]["secret"]["name"]] + [
        r["passwordSecret"]["name"] for r in cluster["managed"]["roles"]
    ]:
        refs |= {(name, "username"), (name, "password")}
    return refs


def test_the_secrets_script_makes_every_secret_the_manifests_read_with_the_right_user() -> None:
    documents = overlay("production")
    secrets = script_secrets()
    cluster = one(documents, "Cluster")

    made = {(name, key) for name, secret in secrets.items() for key in secret["data"]}
    # The one Secret the script does not make is the CA CloudNativePG makes: <cluster>-ca.
    assert referenced_secrets(documents) - made == {(f"{cluster['metadata']['name']}-ca", "ca.crt")}
    for secret in secrets.values():
        assert secret["type"] == "kubernetes.io/basic-auth"
        assert secret["metadata"]["namespace"] == NAMESPACE
    # Each holds the user that reads it.
    spec = cluster["spec"]
    assert (
        secret_value(secrets[spec["bootstrap"]["initdb"]["secret"]["name"]], "username") == "acme"
    )
    for role in spec["managed"]["roles"]:
        assert secret_value(secrets[role["passwordSecret"]["name"]], "username") == role["name"]
    for name, user in of_kind(documents, "User").items():
        assert (
            secret_value(secrets[user["spec"]["importCredentialsSecret"]["name"]], "username")
            == name
        )
    for workload_name, workload in workloads(documents).items():
        env = environment(main_container(workload), documents)
        for url_variable, password_variable in (
            ("DATABASE_URL", "DATABASE_PASSWORD"),
            ("RABBITMQ_URL", "RABBITMQ_PASSWORD"),
        ):
            secret_name, _ = env.from_secrets[password_variable]
            secret_user = secret_value(secrets[secret_name], "username")
            assert url_user(env.values[url_variable]) == secret_user, (workload_name, url_variable)
    # CloudNativePG applies a changed password at once only from a labelled Secret.
    for name in {spec["bootstrap"]["initdb"]["secret"]["name"], "db-acme-app"}:
        assert secrets[name]["metadata"]["labels"] == {"cnpg.io/reload": "true"}
    # New random passwords, one each, that go into a URL as they are.
    passwords = [secret_value(s, "password") for s in secrets.values()]
    assert len(set(passwords)) == len(passwords)
    assert all(re.fullmatch(r"[0-9a-f]{48}", p) for p in passwords)


# --- the network ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: Mapping[str, str]
    # Outside the cluster's pods: the Kubernetes API server, the internet.
    external: bool = False


def peer_matches(peer: Document, pod: Pod, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return pod.external
    if pod.external:
        return False
    namespace_selector = peer.get("namespaceSelector")
    if namespace_selector is None:
        in_namespace = pod.namespace == policy_namespace
    else:
        in_namespace = selects(namespace_selector, {"kubernetes.io/metadata.name": pod.namespace})
    return in_namespace and selects(peer.get("podSelector", {}), pod.labels)


def port_matches(rule: Document, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    return any(
        p.get("protocol", "TCP") == protocol and p["port"] <= port <= p.get("endPort", p["port"])
        for p in ports
    )


def side_allows(
    policies: list[Document], pod: Pod, peer: Pod, port: int, protocol: str, direction: str
) -> bool:
    """Whether `pod`'s policies let it send to (Egress) or receive from (Ingress) `peer`."""
    if pod.external or pod.namespace != NAMESPACE:
        return True
    applying = [
        p
        for p in policies
        if direction in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], pod.labels)
    ]
    if not applying:
        return True
    peers_key = "to" if direction == "Egress" else "from"
    return any(
        port_matches(rule, port, protocol)
        and (
            not rule.get(peers_key)
            or any(peer_matches(x, peer, NAMESPACE) for x in rule[peers_key])
        )
        for policy in applying
        for rule in policy["spec"].get(direction.lower(), [])
    )


def allowed(
    policies: list[Document], source: Pod, destination: Pod, port: int, protocol: str = "TCP"
) -> bool:
    return side_allows(policies, source, destination, port, protocol, "Egress") and side_allows(
        policies, destination, source, port, protocol, "Ingress"
    )


def test_each_pod_may_reach_only_what_it_needs() -> None:
    documents = overlay("production")
    policies = list(of_kind(documents, "NetworkPolicy").values())
    [postgres_name] = of_kind(documents, "Cluster")
    [rabbitmq_name] = of_kind(documents, "RabbitmqCluster")
    # The labels each operator puts on its pods, and those of the add-ons' pods.
    postgres = Pod(NAMESPACE, {"cnpg.io/cluster": postgres_name, "cnpg.io/instanceRole": "primary"})
    rabbitmq = Pod(
        NAMESPACE,
        {"app.kubernetes.io/name": rabbitmq_name, "app.kubernetes.io/component": "rabbitmq"},
    )
    dns = Pod("kube-system", {"k8s-app": "kube-dns"})
    cnpg_operator = Pod("cnpg-system", {"app.kubernetes.io/name": "cloudnative-pg"})
    rabbitmq_operators = [
        Pod(
            "rabbitmq-system",
            {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "rabbitmq-operator"},
        )
        for name in ("rabbitmq-cluster-operator", "messaging-topology-operator")
    ]
    keda = Pod("keda", {"app": "keda-operator", "app.kubernetes.io/name": "keda-operator"})
    prometheus = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
    stranger = Pod("default", {"app": "stranger"})
    api_server = Pod("", {}, external=True)
    apps = {
        name: Pod(NAMESPACE, w["spec"]["template"]["metadata"]["labels"])
        for name, w in workloads(documents).items()
    }

    assert policies
    for name, pod in apps.items():
        assert allowed(policies, pod, postgres, 5432), name
        assert allowed(policies, pod, rabbitmq, 5672), name
        assert allowed(policies, pod, dns, 53, "UDP"), name
        # Nothing else: not the servers' other ports, not each other, not the outside.
        assert not allowed(policies, pod, postgres, 8000), name
        assert not allowed(policies, pod, rabbitmq, 15672), name
        assert not allowed(policies, pod, apps["api"], 8000), name
        assert not allowed(policies, pod, api_server, 443), name
        assert not allowed(policies, stranger, pod, 8001), name
    # The API on its port from anywhere (its keys decide); each worker's metrics to Prometheus.
    assert allowed(policies, stranger, apps["api"], 8000)
    for worker in ("publisher", "inventory", "payment", "notification"):
        container = main_container(workloads(documents)[worker])
        port = metrics_port(settings_of(container, documents), worker)
        assert allowed(policies, prometheus, apps[worker], port), worker
        assert not allowed(policies, stranger, apps[worker], port), worker
        assert not allowed(policies, prometheus, apps[worker], port + 1), worker
    # The servers: only our pods, their operators, their peers and Prometheus.
    assert not allowed(policies, stranger, postgres, 5432)
    assert not allowed(policies, stranger, rabbitmq, 5672)
    assert allowed(policies, cnpg_operator, postgres, 8000)
    assert allowed(policies, cnpg_operator, postgres, 5432)
    assert allowed(policies, postgres, postgres, 5432)
    assert allowed(policies, postgres, api_server, 6443)
    assert allowed(policies, prometheus, postgres, 9187)
    for operator in rabbitmq_operators:
        assert allowed(policies, operator, rabbitmq, 15672)
    assert not allowed(policies, stranger, rabbitmq, 15672)
    assert allowed(policies, keda, rabbitmq, 5672)
    assert allowed(policies, rabbitmq, rabbitmq, 25672)
    assert allowed(policies, rabbitmq, rabbitmq, 4369)
    assert allowed(policies, prometheus, rabbitmq, 15692)
    assert not allowed(policies, rabbitmq, api_server, 443)


# --- the laptop -----------------------------------------------------------------------------------


def test_the_laptop_overlay_runs_one_of_everything() -> None:
    documents = overlay("laptop")

    for name, deployment in of_kind(documents, "Deployment").items():
        assert deployment["spec"].get("replicas", 1) == 1, name
    for name, scaled_object in of_kind(documents, "ScaledObject").items():
        assert scaled_object["spec"]["minReplicaCount"] == 1, name
        assert scaled_object["spec"]["maxReplicaCount"] == 1, name
    assert one(documents, "RabbitmqCluster")["spec"]["replicas"] == 1
    postgres = one(documents, "Cluster")["spec"]
    assert postgres["instances"] == 1
    # No standby to wait for: synchronous replication would block every commit.
    assert "synchronous" not in postgres["postgresql"]
    assert "minSyncReplicas" not in postgres
