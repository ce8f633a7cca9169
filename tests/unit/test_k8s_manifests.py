"""The Kubernetes manifests under deploy/k8s/ (docs/deploy.md): no cluster, no network.

- Every object validates against the Kubernetes OpenAPI schemas that the ``kubernetes-validate``
  package ships (strict: an unknown field is an error), for ``KUBERNETES_VERSION``.
- The kustomizations are rendered with kustomize (built by ``ops/tools/kustomize.sh``,
  ``make tools``), and each rendered object is validated; the base's files are also validated
  as they are, without kustomize.
- The custom resources (ServiceMonitor, ScaledObject) validate against their CRDs' schemas,
  vendored under tests/unit/data/k8s-crds/ (SOURCES.md names their versions).
- The objects agree with each other and with the code: selectors match pod labels, probes and
  Services name ports that exist, the headless Service is the StatefulSet's serviceName, the
  autoscalers target the StatefulSet within the partition count and read the workers' consumer
  group, every environment variable is a real setting (and every value is one the settings
  accept), every container runs a real CLI command, and every ConfigMap and Secret key used
  exists.
- The single-replica workers (projections, policy) keep their state on a claim, and the image
  tag is the package's version.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

import novaquota
from novaquota.ops.cli import DELEGATED, build_parser, delegated_parsers
from novaquota.projections.config import ProjectionSettings
from novaquota.projections.policy.worker import PolicySettings
from novaquota.streams.delivery.config import DeliveryConfig
from novaquota.streams.delivery.settings import DeliverySettings
from novaquota.streams.settings import Settings, TopicNames
from tests.support.settings_names import env_names
from tests.support.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CRDS = Path(__file__).parent / "data" / "k8s-crds"
EXAMPLE_SECRETS = K8S / "examples" / "secrets.example.yaml"
PROMETHEUS_CONFIG = ROOT / "ops" / "prometheus" / "prometheus.yml"

#: the Kubernetes release whose schemas the manifests must satisfy (one kubernetes-validate ships)
KUBERNETES_VERSION = "1.30.0"
KUSTOMIZATIONS = ["base", "overlays/production", "overlays/hpa"]
CRD_FILES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
}
WORKLOAD_KINDS = {"StatefulSet", "Deployment"}
#: Not settings: set from the downward API only to build other values through $(NAME).
HELPER_ENV = {"POD_NAME", "POD_NAMESPACE"}


# -- loading -------------------------------------------------------------------------------------


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@functools.cache
def _kustomize_bin() -> str:
    return require_tool(
        "kustomize", "KUSTOMIZE", "build it with `bash ops/tools/kustomize.sh` (`make tools`)"
    )


@functools.cache
def _rendered(kustomization: str) -> tuple[dict[str, Any], ...]:
    proc = subprocess.run(
        [_kustomize_bin(), "build", str(K8S / kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def _base_files() -> list[dict[str, Any]]:
    """The base's resources as written (what kustomize reads), without kustomize."""
    kust = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kust["resources"]:
        docs += _load_all(K8S / "base" / name)
    return docs


def _component_resources() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for kust_file in sorted((K8S / "components").glob("*/kustomization.yaml")):
        kust = yaml.safe_load(kust_file.read_text())
        for name in kust.get("resources", []):
            docs += _load_all(kust_file.parent / name)
    return docs


def _example_secrets() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _load_all(EXAMPLE_SECRETS)}


def _by_kind(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str) -> list[Any]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _pod_specs(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[dict[str, Any], Any]]:
    for d in docs:
        if d["kind"] in WORKLOAD_KINDS:
            yield d, d["spec"]["template"]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def _config(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    return dict(_one(docs, "ConfigMap", "novaquota-config")["data"])


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- schema validation ---------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """A CRD's structural schema, with unknown fields made errors as the API server's pruning
    would drop them silently (``additionalProperties: false`` wherever the schema lists
    ``properties`` and does not keep unknown fields)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _strict(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = _strict(out[key])
    return out


@functools.cache
def _crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    (crd,) = _load_all(CRDS / CRD_FILES[(api_version, kind)])
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _strict(served["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def _validate(doc: dict[str, Any]) -> None:
    """Raise if ``doc`` does not validate against its kind's schema."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_FILES:
        _crd_validator(*key).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _validate_all(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> None:
    errors = []
    for doc in docs:
        try:
            _validate(doc)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert not errors, "\n".join(errors)


def test_the_pinned_kubernetes_schemas_are_shipped() -> None:
    shipped = {v.rsplit(".", 1)[0] for v in kubernetes_validate.utils.all_versions()}
    assert KUBERNETES_VERSION.rsplit(".", 1)[0] in shipped


def test_the_base_files_validate_as_written() -> None:
    docs = _base_files() + _component_resources() + list(_load_all(EXAMPLE_SECRETS))
    kinds = {d["kind"] for d in docs}
    expected = {
        "StatefulSet", "Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget",
        "NetworkPolicy", "PersistentVolumeClaim", "ServiceAccount", "ServiceMonitor",
        "ScaledObject", "HorizontalPodAutoscaler",
    }  # fmt: skip
    assert expected <= kinds, expected - kinds
    _validate_all(docs)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_rendered_kustomization_validates(kustomization: str) -> None:
    docs = _rendered(kustomization)
    assert _by_kind(docs, "StatefulSet") and _by_kind(docs, "Deployment")
    assert all(d["metadata"].get("namespace") == "novaquota" for d in docs)
    _validate_all(docs)


def test_the_validators_reject_what_is_wrong() -> None:
    """The validation above could fail: a wrong type, an unknown field, a CRD field of the
    wrong type are each refused."""
    sts = copy.deepcopy(_one(_rendered("base"), "StatefulSet", "novaquota-enforcement"))
    sts["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(sts)
    sts = copy.deepcopy(_one(_rendered("base"), "StatefulSet", "novaquota-enforcement"))
    sts["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(sts)
    so = copy.deepcopy(
        _one(_rendered("overlays/production"), "ScaledObject", "novaquota-enforcement")
    )
    so["spec"]["maxReplicaCount"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        _validate(so)
    sm = copy.deepcopy(_one(_rendered("overlays/production"), "ServiceMonitor", "novaquota"))
    sm["spec"]["endpoints"][0]["scrapeEvery"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        _validate(sm)


# -- how the objects fit together ----------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_selectors_match_the_pods(kustomization: str) -> None:
    docs = _rendered(kustomization)
    pods = {d["metadata"]["name"]: t["metadata"]["labels"] for d, t in _pod_specs(docs)}
    for workload, template in _pod_specs(docs):
        assert _selects(workload["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
    for svc in _by_kind(docs, "Service"):
        matched = [n for n, labels in pods.items() if _selects(svc["spec"]["selector"], labels)]
        assert len(matched) == 1, (svc["metadata"]["name"], matched)
    for pdb in _by_kind(docs, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert [n for n, labels in pods.items() if _selects(sel, labels)] == [
            "novaquota-enforcement"
        ]
    for policy in _by_kind(docs, "NetworkPolicy"):
        sel = policy["spec"]["podSelector"].get("matchLabels", {})
        assert any(_selects(sel, labels) for labels in pods.values()), policy["metadata"]["name"]
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    peer_sel = peer["podSelector"]["matchLabels"]
                    assert any(_selects(peer_sel, labels) for labels in pods.values())


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_ports_named_in_probes_and_services_exist(kustomization: str) -> None:
    docs = _rendered(kustomization)
    ports_of: dict[str, dict[str, int]] = {}
    for workload, template in _pod_specs(docs):
        names: dict[str, int] = {}
        for c in template["spec"]["containers"]:
            names |= {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in c:
                    port = c[probe]["httpGet"]["port"]
                    assert port in {p["name"] for p in c["ports"]}, (c["name"], probe, port)
            assert "livenessProbe" in c and "readinessProbe" in c, c["name"]
        ports_of[workload["metadata"]["name"]] = names
    for svc in _by_kind(docs, "Service"):
        (workload,) = [
            d["metadata"]["name"]
            for d, t in _pod_specs(docs)
            if _selects(svc["spec"]["selector"], t["metadata"]["labels"])
        ]
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports_of[workload], (svc["metadata"]["name"], port)
            assert port["port"] == ports_of[workload][port["targetPort"]]
    for policy in _by_kind(docs, "NetworkPolicy"):
        sel = policy["spec"]["podSelector"].get("matchLabels", {})
        own = {
            port
            for d, t in _pod_specs(docs)
            if _selects(sel, t["metadata"]["labels"])
            for port in ports_of[d["metadata"]["name"]].values()
        }
        for rule in policy["spec"].get("ingress", []):
            for p in rule["ports"]:
                assert p["port"] in own, (policy["metadata"]["name"], p)


def test_the_probes_are_the_documented_endpoints() -> None:
    docs = _rendered("base")
    worker = _container(docs, "novaquota-enforcement", "worker")
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["ports"] == [{"name": "http", "containerPort": Settings().web_port}]
    projections = _container(docs, "novaquota-projections", "projections")
    assert projections["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert projections["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert projections["ports"][0]["containerPort"] == ProjectionSettings().web_port
    policy = _container(docs, "novaquota-policy", "policy")
    assert policy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert policy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert policy["ports"] == [{"name": "http", "containerPort": PolicySettings().web_port}]


def _policy_routes() -> set[str]:
    """The GET paths the policy worker's HTTP app serves (its routes; no worker needed)."""
    from novaquota.projections.policy.http import build_app
    from novaquota.streams.auth import build_access

    app = build_app(cast(Any, None), build_access(Settings()))
    return {r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_policy_workers_probes_and_metrics_are_routes_of_its_app(kustomization: str) -> None:
    docs = _rendered(kustomization)
    routes = _policy_routes()
    policy = _container(docs, "novaquota-policy", "policy")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert policy[probe]["httpGet"]["path"] in routes, probe
    if kustomization != "base":  # the ServiceMonitor scrapes it
        (monitor,) = _by_kind(docs, "ServiceMonitor")
        assert monitor["spec"]["endpoints"][0]["path"] in routes
    # the check could fail: a path the app does not serve is not among its routes
    assert "/metrics" in routes and "/ready" not in routes


def _container(docs: tuple[dict[str, Any], ...], workload: str, name: str) -> dict[str, Any]:
    for d, t in _pod_specs(docs):
        if d["metadata"]["name"] == workload:
            (c,) = [c for c in _containers(t) if c["name"] == name]
            return c
    raise AssertionError(f"no workload {workload}")


def _env_values(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_statefulset_is_reachable_through_its_headless_service(kustomization: str) -> None:
    docs = _rendered(kustomization)
    (sts,) = _by_kind(docs, "StatefulSet")
    svc = _one(docs, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert _selects(svc["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    worker = _container(docs, sts["metadata"]["name"], "worker")
    env = _env_values(worker)
    # Each pod advertises its own DNS name under the headless Service, on its web port.
    assert env["NOVAQUOTA_ADVERTISED_URL"] == (
        f"http://$(POD_NAME).{svc['metadata']['name']}.$(POD_NAMESPACE).svc:"
        f"{env['NOVAQUOTA_WEB_PORT']}"
    )
    assert env["NOVAQUOTA_WEB_HOST"] == "0.0.0.0"
    assert int(env["NOVAQUOTA_WEB_PORT"]) == worker["ports"][0]["containerPort"]
    # $(VAR) expands only from variables defined earlier in the list, from the downward API.
    names = [e["name"] for e in worker["env"]]
    for helper, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        entry = worker["env"][names.index(helper)]
        assert entry["valueFrom"]["fieldRef"]["fieldPath"] == field
        assert names.index(helper) < names.index("NOVAQUOTA_ADVERTISED_URL")
    # RocksDB on the claim template's volume, so that a restarted pod warm-starts.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mount = _mount_of(worker, env["NOVAQUOTA_DATA_DIR"])
    assert mount["name"] == claim["metadata"]["name"] and not mount.get("readOnly")
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    # Long enough for a clean stop (the test harness gives a worker 60 s), and more than the
    # session timeout after which a killed worker's partitions move.
    grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 60 and grace > Settings().session_timeout_seconds


#: the one-replica Deployments that keep their state in a data dir: (Deployment, container,
#: the setting naming the data dir)
SINGLE_REPLICA_WORKERS = [
    ("novaquota-projections", "projections", "NOVAQUOTA_PROJECTIONS_DATA_DIR"),
    ("novaquota-policy", "policy", "NOVAQUOTA_POLICY_DATA_DIR"),
]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
@pytest.mark.parametrize(("workload", "name", "data_dir"), SINGLE_REPLICA_WORKERS)
def test_the_single_replica_workers_keep_their_state_on_a_claim(
    kustomization: str, workload: str, name: str, data_dir: str
) -> None:
    """One replica (a second would read every partition and act again), replaced, not rolled
    (the claim is ReadWriteOnce), with its data dir on the claim rather than the pod."""
    docs = _rendered(kustomization)
    deployment = _one(docs, "Deployment", workload)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = _container(docs, workload, name)
    mount = _mount_of(container, _env_values(container)[data_dir])
    assert not mount.get("readOnly")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = _one(
        docs,
        "PersistentVolumeClaim",
        volumes[mount["name"]]["persistentVolumeClaim"]["claimName"],
    )
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert (
        claim["metadata"]["labels"]["app.kubernetes.io/component"]
        == (deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"])
    )


def _mount_of(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount that holds ``path`` (the longest matching mount path)."""
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert mounts, f"{container['name']}: {path} is on no volume"
    return max(mounts, key=lambda m: len(m["mountPath"]))


@pytest.mark.parametrize("kustomization", ["overlays/production", "overlays/hpa"])
def test_the_autoscaler_targets_the_statefulset_within_the_partitions(kustomization: str) -> None:
    docs = _rendered(kustomization)
    config = _config(docs)
    partitions = int(config["NOVAQUOTA_PARTITIONS"])
    (sts,) = _by_kind(docs, "StatefulSet")
    assert "replicas" not in sts["spec"], "the autoscaler owns the replica count"
    scalers = _by_kind(docs, "ScaledObject") + _by_kind(docs, "HorizontalPodAutoscaler")
    (scaler,) = scalers
    ref = scaler["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        "apps/v1",
        "StatefulSet",
        sts["metadata"]["name"],
    )
    topic = TopicNames(config["NOVAQUOTA_TOPIC_PREFIX"]).resource_events
    if scaler["kind"] == "ScaledObject":
        low, high = scaler["spec"]["minReplicaCount"], scaler["spec"]["maxReplicaCount"]
        (kafka,) = [t for t in scaler["spec"]["triggers"] if t["type"] == "kafka"]
        meta = kafka["metadata"]
        assert meta["consumerGroup"] == config["NOVAQUOTA_APP_ID"]
        assert meta["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
        assert meta["topic"] == topic
        assert meta["allowIdleConsumers"] == "false"
        (cpu,) = [t for t in scaler["spec"]["triggers"] if t["type"] == "cpu"]
        assert cpu["metadata"]["containerName"] == "worker"
    else:
        low, high = scaler["spec"]["minReplicas"], scaler["spec"]["maxReplicas"]
        (external,) = [m for m in scaler["spec"]["metrics"] if m["type"] == "External"]
        assert external["external"]["metric"]["selector"]["matchLabels"]["topic"] == topic
    assert 2 <= low <= high <= partitions


def test_without_an_autoscaler_the_statefulset_fits_the_partitions() -> None:
    docs = _rendered("base")
    (sts,) = _by_kind(docs, "StatefulSet")
    assert 2 <= sts["spec"]["replicas"] <= int(_config(docs)["NOVAQUOTA_PARTITIONS"])


# -- settings ------------------------------------------------------------------------------------


def _cli_commands() -> set[str]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices) | set(DELEGATED)


def _parse_command(args: list[str]) -> argparse.Namespace:
    """``args`` parsed as ``novaquota ARGS`` would parse them: the top-level parser, or a
    delegated command's own parser for the rest (``policy run``); raises on what either
    refuses."""
    try:
        if args and args[0] in DELEGATED:
            return delegated_parsers()[args[0]].parse_args(args[1:])
        return build_parser().parse_args(args)
    except SystemExit as exc:  # argparse exits on an unknown command or option
        raise AssertionError(f"novaquota {' '.join(args)}: not a valid command") from exc


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_container_runs_a_real_command(
    kustomization: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The image's entrypoint is ``novaquota``: each container's args, subcommand and options
    included, must parse."""
    docs = _rendered(kustomization)
    commands = []
    for _workload, template in _pod_specs(docs):
        for container in _containers(template):
            assert "command" not in container, container["name"]  # keep the entrypoint
            _parse_command(container["args"])
            commands.append(" ".join(container["args"][:2]))
    assert {"worker", "topics create", "projections run", "policy run", "deliver"} <= {
        c.split(" --")[0] for c in commands
    }
    # the check could fail: a subcommand the delegated parser lacks is refused
    with pytest.raises(AssertionError):
        _parse_command(["policy", "serve"])
    with pytest.raises(AssertionError):
        _parse_command(["policy", "run", "--replicas", "2"])
    capsys.readouterr()  # argparse's usage messages


def _settings_for(container: dict[str, Any]) -> list[type[BaseSettings]]:
    """The settings classes the process a container runs reads (by its command)."""
    command = container["args"][0]
    classes: list[type[BaseSettings]] = [Settings]
    if command == "projections":
        classes.append(ProjectionSettings)
    elif command == "policy":
        classes.append(PolicySettings)
    elif command == "deliver":
        classes.append(DeliverySettings)
    return classes


def _env_of(container: dict[str, Any], docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """Every variable the container gets: ConfigMap keys by envFrom, then its env list."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        cm = _one(docs, "ConfigMap", source["configMapRef"]["name"])
        env |= cm["data"]
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_environment_variable_is_a_setting(kustomization: str) -> None:
    docs = _rendered(kustomization)
    known_commands = _cli_commands()
    checked = 0
    for _workload, template in _pod_specs(docs):
        for container in _containers(template):
            command = container["args"][0]
            assert command in known_commands, command
            allowed = set().union(*(env_names(c) for c in _settings_for(container)))
            env = _env_of(container, docs)
            for name, value in env.items():
                if name in HELPER_ENV:
                    assert isinstance(value, dict) and "fieldRef" in value, name
                    continue
                assert name in allowed, f"{container['name']}: {name} is not a setting"
                checked += 1
    assert checked > 20


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_settings_accept_every_value(
    kustomization: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each container's plain values (ConfigMap and env), loaded as the process would load
    them: a value a setting refuses (a bad number, origin or format) fails here."""
    docs = _rendered(kustomization)
    for _workload, template in _pod_specs(docs):
        for container in _containers(template):
            with monkeypatch.context() as m:
                for name in [n for n in os.environ if n.startswith("NOVAQUOTA_")]:
                    m.delenv(name)
                m.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
                for name, value in _env_of(container, docs).items():
                    if isinstance(value, str) and "$(" not in value:
                        m.setenv(name, value)
                for cls in _settings_for(container):
                    cls()  # raises on a refused value


def test_the_configmap_names_the_topics_the_autoscaler_reads() -> None:
    config = _config(_rendered("overlays/production"))
    settings = Settings.model_validate(
        {
            "bootstrap_servers": config["KAFKA_BOOTSTRAP_SERVERS"],
            "topic_prefix": config["NOVAQUOTA_TOPIC_PREFIX"],
            "app_id": config["NOVAQUOTA_APP_ID"],
            "partitions": config["NOVAQUOTA_PARTITIONS"],
        }
    )
    assert settings.partitions == 24 and settings.app_id == "novaquota-enforcement"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_configmap_and_secret_key_used_exists(kustomization: str) -> None:
    docs = _rendered(kustomization)
    secrets = _example_secrets()
    assert not _by_kind(docs, "Secret"), "applying must never overwrite the real Secrets"
    configmaps = {d["metadata"]["name"]: d["data"] for d in _by_kind(docs, "ConfigMap")}
    for workload, template in _pod_specs(docs):
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for container in _containers(template):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
            for e in container.get("env", []):
                ref = e.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    key = ref["configMapKeyRef"]
                    assert key["key"] in configmaps[key["name"]], e["name"]
                if "secretKeyRef" in ref:
                    key = ref["secretKeyRef"]
                    assert key["key"] in secrets[key["name"]]["stringData"], e["name"]
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims, mount["name"]
        for volume in volumes.values():
            if "configMap" in volume:
                data = configmaps[volume["configMap"]["name"]]
                assert all(i["key"] in data for i in volume["configMap"].get("items", []))
            if "secret" in volume:
                data = secrets[volume["secret"]["secretName"]]["stringData"]
                assert all(i["key"] in data for i in volume["secret"].get("items", []))
                # Secret files are root-owned: mode 0440 is readable through fsGroup only.
                assert template["spec"]["securityContext"].get("fsGroup"), volume["name"]
            if "persistentVolumeClaim" in volume:
                _one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])


def test_the_example_secrets_hold_placeholders_only() -> None:
    for secret in _example_secrets().values():
        for key, value in secret["stringData"].items():
            if key == "tokens.json":
                assert yaml.safe_load(value) == {"version": 1, "tokens": []}
            else:
                assert value.startswith("PLACEHOLDER"), key


def test_the_files_the_workers_read_and_write_are_on_volumes() -> None:
    docs = _rendered("base")
    for _workload, template in _pod_specs(docs):
        for container in template["spec"]["containers"]:
            env = _env_values(container)
            for name in (
                "NOVAQUOTA_DATA_DIR",
                "NOVAQUOTA_PROJECTIONS_DATA_DIR",
                "NOVAQUOTA_POLICY_DATA_DIR",
            ):
                if name in env:
                    assert not _mount_of(container, env[name]).get("readOnly"), name
            if "NOVAQUOTA_TOKENS_FILE" in env:
                _mount_of(container, env["NOVAQUOTA_TOKENS_FILE"])
            assert not _mount_of(container, "/tmp/x").get("readOnly")
            if "--config" in container["args"]:
                config = container["args"][container["args"].index("--config") + 1]
                _mount_of(container, config)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_pod_runs_unprivileged_on_a_read_only_root(kustomization: str) -> None:
    docs = _rendered(kustomization)
    images = set()
    for _workload, template in _pod_specs(docs):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (Dockerfile)
        assert pod["automountServiceAccountToken"] is False
        for c in _containers(template):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert set(c["resources"]["requests"]) == {"cpu", "memory"}, c["name"]
            assert set(c["resources"]["limits"]) == {"cpu", "memory"}, c["name"]
            images.add(c["image"])
    assert len(images) == 1 and re.fullmatch(r"novaquota:\d+\.\d+\.\d+", images.pop())


def test_the_image_tag_is_the_package_version() -> None:
    kust = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (image,) = kust["images"]
    assert image["name"] == "novaquota"
    assert image["newTag"] == novaquota.__version__
    for kustomization in KUSTOMIZATIONS:
        for _workload, template in _pod_specs(_rendered(kustomization)):
            for c in _containers(template):
                assert c["image"] == f"novaquota:{novaquota.__version__}", c["name"]


def test_the_service_monitor_scrapes_every_worker_under_its_prometheus_job() -> None:
    docs = _rendered("overlays/production")
    (monitor,) = _by_kind(docs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [s for s in _by_kind(docs, "Service") if _selects(selector, s["metadata"]["labels"])]
    jobs = {s["metadata"]["labels"][monitor["spec"]["jobLabel"]] for s in scraped}
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    # The job names of ops/prometheus (its alert rules select on them).
    assert {j["job_name"] for j in prometheus["scrape_configs"]} <= jobs
    (sts,) = _by_kind(docs, "StatefulSet")
    assert sts["spec"]["serviceName"] in {s["metadata"]["name"] for s in scraped}
    for svc in scraped:
        assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    # every worker is scraped, each under a job of its own
    for workload, template in _pod_specs(docs):
        labels = template["metadata"]["labels"]
        assert any(_selects(s["spec"]["selector"], labels) for s in scraped), workload["metadata"]
    assert len(jobs) == len(scraped)
    assert "novaquota-policy" in jobs


def _secret_files(raw: Any) -> Iterator[str]:
    """The ``{file: PATH}`` secret references anywhere in a delivery configuration."""
    if isinstance(raw, dict):
        if set(raw) == {"file"}:
            yield str(raw["file"])
        for value in raw.values():
            yield from _secret_files(value)
    elif isinstance(raw, list):
        for value in raw:
            yield from _secret_files(value)


def test_the_delivery_configuration_reads_its_secrets_from_the_mounted_secret() -> None:
    docs = _rendered("base")
    raw = yaml.safe_load(_one(docs, "ConfigMap", "novaquota-delivery")["data"]["delivery.yaml"])
    delivery = _container(docs, "novaquota-delivery", "delivery")
    (deployment,) = [
        d for d, _t in _pod_specs(docs) if d["metadata"]["name"] == "novaquota-delivery"
    ]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    secrets = _example_secrets()
    files = list(_secret_files(raw))
    assert files
    for path in files:
        mount = _mount_of(delivery, path)
        secret = volumes[mount["name"]]["secret"]["secretName"]
        assert path[len(mount["mountPath"]) :].strip("/") in secrets[secret]["stringData"], path


def test_the_delivery_configuration_is_valid() -> None:
    cm = _one(_rendered("base"), "ConfigMap", "novaquota-delivery")
    DeliveryConfig.model_validate(yaml.safe_load(cm["data"]["delivery.yaml"]))
