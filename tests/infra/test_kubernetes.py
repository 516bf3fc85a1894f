"""Plain Kubernetes manifests and the Airflow Helm values: strict offline schema checks, and no secrets.

Kubernetes objects are checked with kubernetes-validate's strict schemas for the oldest supported and the newest
known Kubernetes version. No pinned package ships the official Airflow chart's ``values.schema.json``, so the
values are checked structurally: the keys used exist in that chart (the list below, from its values.yaml),
the Kubernetes-typed parts (volumes, mounts, resources) validate against Kubernetes' schema, and every Secret
they name is one that ``secrets.example.yaml`` documents.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from tests.infra.infra_helpers import (
    INFRA,
    K8S_VERSIONS,
    REPO,
    errors_of,
    k8s_definition_validator,
    load_docs,
    validate_k8s,
)

K8S_FILES = sorted((INFRA / "kubernetes").glob("*.yaml"))
PLACEHOLDER = "REPLACE_ME"
HELM_VALUES = INFRA / "helm" / "airflow-values.yaml"

# Keys of the official chart's values.yaml that these values use (top level, then selected nested blocks).
CHART_TOP_LEVEL = {
    "airflowVersion", "defaultAirflowRepository", "defaultAirflowTag", "images", "executor", "postgresql",
    "redis", "data", "fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName", "webserverSecretKeySecretName",
    "dags", "config", "env", "secret", "extraEnv", "extraEnvFrom", "workers", "scheduler", "apiServer",
    "dagProcessor", "triggerer", "migrateDatabaseJob", "createUserJob", "logs", "statsd", "ingress", "uid", "gid",
}  # fmt: skip
CHART_NESTED = {
    "images": {"airflow", "pod_template", "flower", "statsd", "redis", "pgbouncer", "gitSync", "migrationsWaitTimeout"},
    "images.airflow": {"repository", "tag", "digest", "pullPolicy"},
    "data": {"metadataSecretName", "resultBackendSecretName", "brokerUrlSecretName", "metadataConnection"},
    "dags": {"mountPath", "persistence", "gitSync"},
    "dags.persistence": {"enabled", "size", "storageClassName", "accessMode", "existingClaim", "subPath"},
    "dags.gitSync": {"enabled", "repo", "branch", "rev", "ref", "depth", "maxFailures", "subPath",
                     "credentialsSecret", "sshKeySecret", "knownHosts", "period", "wait", "containerName",
                     "uid", "resources", "env", "envFrom"},
    "workers": {"replicas", "resources", "extraVolumes", "extraVolumeMounts", "serviceAccount", "nodeSelector",
                "tolerations", "affinity", "annotations", "podAnnotations", "labels", "securityContexts"},
    "scheduler": {"replicas", "resources", "extraVolumes", "extraVolumeMounts", "nodeSelector", "tolerations"},
    "apiServer": {"replicas", "resources", "service", "extraVolumes", "extraVolumeMounts"},
    "dagProcessor": {"enabled", "replicas", "resources", "extraVolumes", "extraVolumeMounts"},
    "triggerer": {"enabled", "replicas", "resources", "persistence"},
    "migrateDatabaseJob": {"enabled", "useHelmHooks", "ttlSecondsAfterFinished", "resources"},
    "postgresql": {"enabled", "auth"},
    "redis": {"enabled"},
}  # fmt: skip
# Secret key the chart reads from each *SecretName value.
CHART_SECRET_KEYS = {
    "data.metadataSecretName": "connection",
    "fernetKeySecretName": "fernet-key",
    "apiSecretKeySecretName": "api-secret-key",
    "jwtSecretName": "jwt-secret",
}


def _secrets() -> dict[str, set[str]]:
    """``{secret name: {keys}}`` documented by secrets.example.yaml."""
    docs = load_docs(INFRA / "kubernetes" / "secrets.example.yaml")
    return {d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {})) for d in docs}


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    out = [(path, node)]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _walk(v, f"{path}[{i}]")
    return out


def _secret_refs(node: Any) -> list[tuple[str, str, str | None]]:
    """Every (where, secret name, key or None) that a manifest or values file refers to."""
    refs: list[tuple[str, str, str | None]] = []
    for path, value in _walk(node):
        if not isinstance(value, dict):
            continue
        if "secretKeyRef" in value:
            refs.append((path, value["secretKeyRef"]["name"], value["secretKeyRef"]["key"]))
        if "secretRef" in value:
            refs.append((path, value["secretRef"]["name"], None))
        if {"secretName", "secretKey"} <= set(value):
            refs.append((path, value["secretName"], value["secretKey"]))
    return refs


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: f"k8s-{v or 'latest'}")
def test_kubernetes_manifests_validate_strictly(path: Path, version: str | None) -> None:
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        validate_k8s(doc, version)  # raises kubernetes_validate.ValidationError naming the field


def test_kubernetes_validation_is_not_vacuous() -> None:
    import kubernetes_validate

    deployment = load_docs(INFRA / "kubernetes" / "mlflow.yaml")[0]
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolcy"):
        validate_k8s(bad)


def test_secrets_example_holds_only_placeholders() -> None:
    for doc in load_docs(INFRA / "kubernetes" / "secrets.example.yaml"):
        assert doc["kind"] == "Secret"
        assert "data" not in doc, "use stringData placeholders, never base64 data"
        for key, value in doc["stringData"].items():
            url = urlparse(value) if "://" in value else None
            if url and url.password is None:
                continue  # a credential-free endpoint (a connection URI to an in-cluster service)
            assert PLACEHOLDER in value, (
                f"secrets.example.yaml {doc['metadata']['name']}.{key} is not a placeholder"
            )


def test_no_credentials_anywhere_in_infra() -> None:
    """No literal keys, passwords or tokens in any infra file: only placeholders and ${VAR} references."""
    patterns = {
        "AWS access key": re.compile(r"AKIA[0-9A-Z]{16}"),
        "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        "password in a URI": re.compile(r"://[^/\s:@]+:(?!REPLACE_ME@|\$\{)[^@\s/]+@"),
    }
    for path in sorted(INFRA.rglob("*")):
        if not path.is_file() or path.suffix in {".json"}:
            continue
        text = path.read_text(encoding="utf-8")
        for what, pattern in patterns.items():
            m = pattern.search(text)
            assert m is None, f"{path.relative_to(REPO)}: looks like a {what}: {m.group(0) if m else ''}"


def test_every_secret_reference_is_documented() -> None:
    secrets = _secrets()
    docs: list[tuple[str, Any]] = [
        (p.name, d) for p in [*K8S_FILES, *sorted((INFRA / "kuberay").glob("*.yaml"))] for d in load_docs(p)
    ]
    docs.append((HELM_VALUES.name, yaml.safe_load(HELM_VALUES.read_text())))
    refs = [(name, *ref) for name, doc in docs for ref in _secret_refs(doc)]
    assert refs, "expected Secret references"
    for name, where, secret, key in refs:
        assert secret in secrets, f"{name} {where}: Secret {secret!r} is not in secrets.example.yaml"
        assert key is None or key in secrets[secret], f"{name} {where}: {secret} has no key {key!r}"


# --------------------------------------------------------------------------------------------- Helm values
@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))


def test_helm_values_use_only_chart_keys(values: dict[str, Any]) -> None:
    unknown = set(values) - CHART_TOP_LEVEL
    assert not unknown, f"{HELM_VALUES.name}: keys the official chart does not have: {sorted(unknown)}"
    for dotted, allowed in CHART_NESTED.items():
        node: Any = values
        for part in dotted.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        extra = set(node) - allowed
        assert not extra, f"{HELM_VALUES.name}: {dotted} has unknown keys {sorted(extra)}"


def test_helm_values_run_bertops_on_kubernetes(values: dict[str, Any], locked: dict[str, str]) -> None:
    assert values["executor"] == "KubernetesExecutor"
    assert values["airflowVersion"] == locked["apache-airflow"], "airflowVersion != uv.lock's apache-airflow"
    assert values["images"]["airflow"]["repository"].endswith("/bertops-airflow")
    assert values["postgresql"]["enabled"] is False and values["redis"]["enabled"] is False
    # DAGs: from the image by default, git-sync documented and switchable.
    assert values["config"]["core"]["dags_folder"] == "/opt/bertops/dags"
    assert set(values["dags"]["gitSync"]) >= {"enabled", "repo", "branch", "subPath"}
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow.")
    for var in ("RAY_ADDRESS", "BERTOPS_RAY_DASHBOARD_URL"):
        assert urlparse(env[var]).port == 8265, f"{var} must be the Ray head's Jobs API (8265)"
    assert env["BERTOPS_PROJECT_DIR"] == "/opt/bertops"
    conns = {s["envName"] for s in values["secret"]}
    assert {"AIRFLOW_CONN_BERTOPS_RAY", "AIRFLOW_CONN_BERTOPS_MLFLOW"} <= conns, (
        "connections come from Secrets"
    )


def test_helm_values_secrets_exist_with_the_keys_the_chart_reads(values: dict[str, Any]) -> None:
    secrets = _secrets()
    for dotted, key in CHART_SECRET_KEYS.items():
        node: Any = values
        for part in dotted.split("."):
            node = node[part]
        assert node in secrets and key in secrets[node], f"{dotted}: Secret {node!r} needs key {key!r}"


@pytest.mark.parametrize(
    ("path", "definition"),
    [
        ("workers.extraVolumes[]", "io.k8s.api.core.v1.Volume"),
        ("workers.extraVolumeMounts[]", "io.k8s.api.core.v1.VolumeMount"),
        ("workers.resources", "io.k8s.api.core.v1.ResourceRequirements"),
        ("scheduler.resources", "io.k8s.api.core.v1.ResourceRequirements"),
        ("apiServer.resources", "io.k8s.api.core.v1.ResourceRequirements"),
        ("dagProcessor.resources", "io.k8s.api.core.v1.ResourceRequirements"),
        ("env[]", "io.k8s.api.core.v1.EnvVar"),
    ],
)
def test_helm_values_kubernetes_parts_validate(values: dict[str, Any], path: str, definition: str) -> None:
    validator = k8s_definition_validator(definition)
    many = path.endswith("[]")
    node: Any = values
    for part in path.removesuffix("[]").split("."):
        node = node[part]
    for item in node if many else [node]:
        assert errors_of(validator, item) == [], f"{HELM_VALUES.name} {path}"
    # and the check bites: a misspelt field fails
    sample = copy.deepcopy(node[0] if many else node)
    sample["bogusField"] = 1
    assert errors_of(validator, sample)


def test_database_uris_use_an_installed_driver() -> None:
    """Every SQLAlchemy URI in infra/ names a DBAPI the lock installs (a bare postgresql:// means psycopg 3)."""
    from sqlalchemy.engine import make_url

    uri = re.compile(r"postgresql[+\w]*://[^\s\"']+")
    found = []
    for path in sorted(INFRA.rglob("*.y*ml")):
        text = re.sub(r"\$\{[^}]*\}", "x", path.read_text(encoding="utf-8"))  # ${VAR:?msg} -> x
        for m in uri.finditer(text):
            found.append(m.group(0))
            url = make_url(m.group(0))
            url.get_dialect().import_dbapi()  # ImportError when the driver is not installed
    assert len(found) >= 3


# ---------------------------------------------------------------- who reaches a Ray worker (networkpolicy.yaml)
def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions with In/NotIn/Exists/DoesNotExist) on ``labels``."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]  # fmt: skip
        if not ok:
            return False
    return True


def _admits(policy: dict[str, Any], source: dict[str, str], port: int) -> bool:
    """Whether an ingress NetworkPolicy lets a pod labelled ``source`` (same namespace) reach ``port``."""
    for rule in policy["spec"].get("ingress") or []:
        peers, ports = rule.get("from"), rule.get("ports")
        peer_ok = peers is None or any(
            "podSelector" in p and _selects(p["podSelector"], source) for p in peers
        )
        port_ok = ports is None or any(p.get("port") == port for p in ports)
        if peer_ok and port_ok:
            return True
    return False


def test_only_ray_pods_reach_a_ray_worker_where_training_opens_its_grpc_server() -> None:
    """A multi-worker run's TensorFlow gRPC server (any port, every interface of a worker pod) is reachable from
    the Ray pods only; everyone reaches the Serve proxy and the metrics exporter; the head is not selected."""
    (policy,) = load_docs(INFRA / "kubernetes" / "networkpolicy.yaml")
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    cluster = load_docs(INFRA / "kuberay" / "raycluster.yaml")[0]["spec"]
    kuberay = {"ray.io/cluster": "bertops", "ray.io/is-ray-node": "yes"}  # labels KubeRay adds to every pod
    worker = {
        **cluster["workerGroupSpecs"][0]["template"]["metadata"]["labels"],
        **kuberay,
        "ray.io/node-type": "worker",
    }
    head = {
        **cluster["headGroupSpec"]["template"]["metadata"]["labels"],
        **kuberay,
        "ray.io/node-type": "head",
    }
    selector = policy["spec"]["podSelector"]
    assert _selects(selector, worker) and not _selects(selector, head)
    mlflow = load_docs(INFRA / "kubernetes" / "mlflow.yaml")[0]["spec"]["template"]["metadata"]["labels"]
    airflow_worker = {"tier": "airflow", "component": "worker", "release": "airflow"}  # the chart's labels
    tf_server = 50007  # any port: TF_CONFIG takes a free one
    for source in (head, worker):
        assert _admits(policy, source, tf_server), source
    for source in (mlflow, airflow_worker, {}):
        assert not _admits(policy, source, tf_server), source
        assert _admits(policy, source, 8000) and _admits(policy, source, 8080), source
