"""deploy/kubernetes: valid Kubernetes objects, wired to the worker's real settings, endpoints and shutdown.

No cluster runs here: the manifests are checked offline against the schemas kubernetes-validate bundles
(strict: an unknown field fails), and the KEDA objects, which no bundled schema knows, against the fields KEDA
documents for a ScaledObject with a rabbitmq trigger and for a TriggerAuthentication.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from prometheus_client import CollectorRegistry

from snapworker.amqp.partitioning import partition_queue
from snapworker.ops.health import HealthServer
from snapworker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
#: a recent Kubernetes whose schemas kubernetes-validate bundles
KUBERNETES_VERSION = "1.30"
KEDA_API = "keda.sh/v1alpha1"
SECRET_SETTINGS = ("AMQP_URL", "AUTH_TOKEN", "ACCESS_KEY", "SECRET_KEY", "SECURITY_TOKEN", "API_PROXY")
#: what the worker may still do after SHUTDOWN_TIMEOUT_S: the last settlements and results, closing connections
MIN_MARGIN_S = 10

# KEDA's documented fields (keda.sh/docs, "ScaledObject specification" and the "RabbitMQ Queue" scaler)
SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
    "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
}  # fmt: skip
SCALED_OBJECT_ADVANCED = {"restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig", "scalingModifiers"}
TRIGGER = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
RABBITMQ_METADATA = {
    "host", "protocol", "mode", "value", "activationValue", "queueName", "vhostName", "hostFromEnv",
    "usernameFromEnv", "passwordFromEnv", "unsafeSsl", "timeout", "excludeUnacknowledged", "useRegex",
    "pageSize", "operation",
}  # fmt: skip

Doc = dict[str, Any]


def _load(name: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if doc]


def _kustomization() -> Doc:
    [doc] = _load("kustomization.yaml")
    return doc


def _applied() -> list[Doc]:
    """Every object `kubectl apply -k deploy/kubernetes` creates."""
    return [doc for name in _kustomization()["resources"] for doc in _load(name)]


def _one(kind: str, docs: list[Doc] | None = None) -> Doc:
    [doc] = [doc for doc in (_applied() if docs is None else docs) if doc["kind"] == kind]
    return doc


def _secret_example() -> Doc:
    return _one("Secret", _load("secret.example.yaml"))


def _container() -> Doc:
    [container] = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    found: Doc = container
    return found


def _config() -> dict[str, str]:
    data: dict[str, str] = _one("ConfigMap")["data"]
    return data


def _env() -> dict[str, Doc]:
    return {var["name"]: var for var in _container()["env"]}


def _named_port(port: int | str) -> int:
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in _container()["ports"] if p["name"] == port]
    return int(number)


# -- the files and the schemas


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(_kustomization()["resources"]) == manifests
    assert "secretGenerator" not in _kustomization()  # its literals would put the credential in the repository


def test_the_kustomization_image_is_the_deployments() -> None:
    [image] = _kustomization()["images"]
    assert image["name"] == _container()["image"]


def _schema_checked() -> list[Doc]:
    """Every object of deploy/kubernetes but KEDA's, whose CRDs no bundled schema covers."""
    return [doc for doc in _applied() + _load("secret.example.yaml") if doc["apiVersion"] != KEDA_API]


def test_every_object_but_keda_s_is_checked_against_a_schema() -> None:
    kinds = {doc["kind"] for doc in _schema_checked()}
    assert kinds == {"ConfigMap", "Deployment", "PodDisruptionBudget", "Secret"}


@pytest.mark.parametrize("doc", _schema_checked(), ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}")
def test_manifest_validates_strictly_against_the_kubernetes_schema(doc: Doc) -> None:
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_a_misspelt_field_fails_the_schema_check() -> None:
    deployment = _one("Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# -- the worker's settings, endpoints and shutdown


def test_every_snapworker_variable_named_in_deploy_kubernetes_is_a_setting() -> None:
    named = {m for path in K8S.iterdir() for m in re.findall(r"SNAPWORKER_[A-Z0-9_]*[A-Z0-9]", path.read_text("utf-8"))}
    known = {f"SNAPWORKER_{name.upper()}" for name in Settings.model_fields}
    assert "SNAPWORKER_AUTH_TOKEN_FILE" in named
    assert named - known == set()


def test_no_variable_is_set_both_in_the_configmap_and_the_deployment() -> None:
    assert set(_config()) & set(_env()) == set()


def test_the_configmap_and_deployment_values_are_valid_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = _config() | {name: var["value"] for name, var in _env().items() if "value" in var}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    token = tmp_path / "auth-token"  # the Secret's file in the pod (its mount is checked below)
    token.write_text("an-iam-token\n", encoding="utf-8")
    monkeypatch.setenv("SNAPWORKER_AUTH_TOKEN_FILE", str(token))
    settings = Settings()
    assert settings.auth_mode == "token"
    assert settings.metrics_port == int(_config()["SNAPWORKER_METRICS_PORT"])
    assert settings.idempotency_backend == "redis"  # the fleet shares the idempotency store too


def test_grace_period_covers_the_prestop_sleep_the_shutdown_timeout_and_a_margin() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    command = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    shutdown_s = float(_env()["SNAPWORKER_SHUTDOWN_TIMEOUT_S"]["value"])
    assert pod["terminationGracePeriodSeconds"] >= float(command[1]) + shutdown_s + MIN_MARGIN_S


def test_the_redis_url_names_the_redis_service() -> None:
    assert urlsplit(_config()["SNAPWORKER_REDIS_URL"]).hostname == "redis"


@pytest.mark.parametrize(("probe", "path"), [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")])
async def test_probe_asks_a_path_the_worker_serves_on_the_metrics_port(probe: str, path: str) -> None:
    get = _container()[probe]["httpGet"]
    assert get["path"] == path
    assert _named_port(get["port"]) == int(_config()["SNAPWORKER_METRICS_PORT"])
    health = HealthServer(CollectorRegistry(), lambda: True, host="127.0.0.1", port=0)
    await health.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{health.port}{path}") as answer:
            assert answer.status == 200
    finally:
        await health.stop()


def test_prometheus_scrapes_the_metrics_port() -> None:
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == int(_config()["SNAPWORKER_METRICS_PORT"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_state_dir_is_a_writable_volume_under_a_read_only_root() -> None:
    assert _container()["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in _container()["volumeMounts"]}
    volumes = {v["name"]: v for v in _one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[_config()["SNAPWORKER_STATE_DIR"]]]


def test_the_worker_runs_as_the_images_non_root_user_with_requests_and_limits() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]["securityContext"]
    [uid] = re.findall(r"--uid (\d+)", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == int(uid) != 0
    assert _container()["securityContext"]["allowPrivilegeEscalation"] is False
    assert _container()["securityContext"]["capabilities"]["drop"] == ["ALL"]
    resources = _container()["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_the_disruption_budget_selects_the_deployments_pods() -> None:
    selector = _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= _one("Deployment")["spec"]["template"]["metadata"]["labels"].items()


# -- credentials


def test_credentials_come_from_the_secret_never_from_the_manifests() -> None:
    assert "Secret" not in {doc["kind"] for doc in _applied()}
    for name in SECRET_SETTINGS:
        assert f"SNAPWORKER_{name}" not in _config()
    for name, var in _env().items():
        if name.removeprefix("SNAPWORKER_") in SECRET_SETTINGS:
            assert set(var) == {"name", "valueFrom"}
            assert var["valueFrom"]["secretKeyRef"]["name"] == _secret_example()["metadata"]["name"]
    for value in _config().values():
        assert urlsplit(value).password is None


def test_the_api_token_is_a_file_of_a_whole_secret_mount_that_updates() -> None:
    token = PurePosixPath(_env()["SNAPWORKER_AUTH_TOKEN_FILE"]["value"])
    [mount] = [m for m in _container()["volumeMounts"] if m["mountPath"] == str(token.parent)]
    assert "subPath" not in mount  # a subPath mount never sees the Secret's updates
    [volume] = [v for v in _one("Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == _secret_example()["metadata"]["name"]
    assert token.name in {item["path"] for item in volume["secret"]["items"]}


def test_the_amqp_url_comes_from_the_secret() -> None:
    ref = _env()["SNAPWORKER_AMQP_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] in _secret_example()["stringData"]


def test_every_secret_key_read_is_in_the_secret_example_and_it_holds_placeholders_only() -> None:
    example = _secret_example()
    volumes = _one("Deployment")["spec"]["template"]["spec"]["volumes"]
    read = {var["valueFrom"]["secretKeyRef"]["key"] for var in _env().values() if "valueFrom" in var}
    read |= {item["key"] for v in volumes if "secret" in v for item in v["secret"]["items"]}
    read |= {ref["key"] for ref in _one("TriggerAuthentication")["spec"]["secretTargetRef"]}
    assert read <= set(example["stringData"])
    assert "data" not in example
    assert all("CHANGE-ME" in value for value in example["stringData"].values())


# -- KEDA: no bundled schema, so the fields KEDA documents


def test_the_scaled_object_scales_the_deployment_on_the_request_queues_length() -> None:
    scaled = _one("ScaledObject")
    assert scaled["apiVersion"] == KEDA_API
    assert scaled["spec"]["scaleTargetRef"]["name"] == _one("Deployment")["metadata"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["mode"] == "QueueLength"
    assert float(trigger["metadata"]["value"]) > 0
    assert "host" not in trigger["metadata"]  # it holds the broker's password: from the TriggerAuthentication


def test_the_scaled_object_uses_only_documented_fields() -> None:
    spec = _one("ScaledObject")["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC
    assert set(spec["advanced"]) <= SCALED_OBJECT_ADVANCED
    [trigger] = spec["triggers"]
    assert set(trigger) <= TRIGGER
    assert set(trigger["metadata"]) <= RABBITMQ_METADATA
    assert all(isinstance(value, str) for value in trigger["metadata"].values())  # KEDA's map[string]string


def test_the_trigger_authenticates_with_a_trigger_authentication_reading_the_host_from_the_secret() -> None:
    [trigger] = _one("ScaledObject")["spec"]["triggers"]
    auth = _one("TriggerAuthentication")
    assert auth["apiVersion"] == KEDA_API
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    [ref] = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "host"
    assert ref == {"parameter": "host", "name": _secret_example()["metadata"]["name"], "key": ref["key"]}
    # the management API of the broker the worker consumes from, with the same vhost (the default, %2F)
    management = urlsplit(_secret_example()["stringData"][ref["key"]])
    amqp = urlsplit(_secret_example()["stringData"][_env()["SNAPWORKER_AMQP_URL"]["valueFrom"]["secretKeyRef"]["key"]])
    assert (management.scheme, management.hostname) == ("http", amqp.hostname)
    assert _vhost(management.path) == _vhost(amqp.path) == "/"


def _vhost(path: str) -> str:
    """The vhost a broker URL's path names (amqp://h/ and http://h:15672/%2F both name the default, "/")."""
    return unquote(path[1:]) or "/"


def _settings_of_the_config_map() -> Settings:
    fields = {k.removeprefix("SNAPWORKER_").lower(): v for k, v in _config().items()}
    return Settings.model_validate({k: v for k, v in fields.items() if k in Settings.model_fields})


def test_keda_sums_the_request_queue_and_every_partition_queue_and_nothing_else() -> None:
    # the routers move the backlog from the request queue to <REQUEST_QUEUE>.pNNN at once: both are the backlog
    [trigger] = _one("ScaledObject")["spec"]["triggers"]
    meta = trigger["metadata"]
    assert (meta["protocol"], meta["useRegex"], meta["operation"]) == ("http", "true", "sum")
    settings = _settings_of_the_config_map()
    pattern = re.compile(meta["queueName"])
    counted = [settings.request_queue] + [
        partition_queue(settings.request_queue, p) for p in range(settings.partitions)
    ]
    assert all(pattern.fullmatch(queue) for queue in counted), counted
    others = [settings.result_queue, settings.error_queue, settings.dead_letter_queue, settings.tracking_queue]
    assert not any(pattern.fullmatch(queue) for queue in others)


def test_the_fleet_never_outgrows_its_partitions() -> None:
    # a worker beyond PARTITIONS only routes: it adds no consumer of the backlog
    assert _one("ScaledObject")["spec"]["maxReplicaCount"] <= _settings_of_the_config_map().partitions
