"""The single-host docker-compose stack: compose-spec valid, wired consistently, credentials only from env.

``docker compose config`` cannot run here (no compose plugin, no engine), so the file is checked against the
compose-spec JSON schema that check-jsonschema vendors (pinned), both as written and after interpolating the
``.env.example`` values the way compose does, plus the cross-references compose would resolve.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from tests.infra.infra_helpers import INFRA, compose_spec_validator, errors_of

COMPOSE_DIR = INFRA / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yaml"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}; $$ escapes a dollar.
_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
REQUIRED_SERVICES = {"postgres", "minio", "mlflow", "ray-head", "ray-worker", "airflow-apiserver",
                     "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}  # fmt: skip


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation, enough for this file: a missing required variable is an error."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        value = env.get(name)
        if op and op.endswith("?") and not value:
            raise KeyError(f"{name}: {arg}")
        if op and op.endswith("-") and not value:
            return arg
        return value or ""

    return _VAR.sub(sub, node)


def read_env_file(text: str) -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file((COMPOSE_DIR / ".env.example").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def resolved(raw: dict[str, Any], env_example: dict[str, str]) -> dict[str, Any]:
    return interpolate(raw, env_example)


def test_compose_file_validates_against_the_compose_spec(
    raw: dict[str, Any], resolved: dict[str, Any]
) -> None:
    validator = compose_spec_validator()
    assert errors_of(validator, raw) == []
    assert errors_of(validator, resolved) == []
    # The schema bites: a misspelt service key is refused.
    bad = yaml.safe_load(COMPOSE.read_text())
    bad["services"]["mlflow"]["enviroment"] = {}
    assert any("enviroment" in e for e in errors_of(validator, bad))


def test_compose_runs_the_whole_stack(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) >= REQUIRED_SERVICES
    ray_head, worker = services["ray-head"]["command"], services["ray-worker"]["command"]
    assert "--head" in ray_head and "--address=ray-head:6379" in worker
    mlflow = services["mlflow"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "--serve-artifacts" in services["mlflow"]["command"]
    for name in ("airflow-scheduler", "airflow-apiserver"):
        env = services[name]["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["RAY_ADDRESS"] == env["BERTOPS_RAY_DASHBOARD_URL"] == "http://ray-head:8265"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert services["ray-worker"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_compose_references_resolve(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    volumes = set(resolved.get("volumes", {}))
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for dep in deps if isinstance(deps, dict) else {d: {} for d in deps}:
            assert dep in services, f"service {name} depends on unknown service {dep}"
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount["source"]
            if source.startswith((".", "/")):
                assert (COMPOSE_DIR / source).resolve().exists(), (
                    f"service {name}: bind source {source} missing"
                )
            else:
                assert source in volumes, f"service {name}: named volume {source} is not declared"


def test_compose_credentials_come_from_the_environment(
    raw: dict[str, Any], env_example: dict[str, str]
) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    required = {m.group("name") for m in _VAR.finditer(text) if m.group("op") and m.group("op").endswith("?")}
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AIRFLOW_FERNET_KEY"} <= required
    assert required <= set(env_example), f".env.example lacks {sorted(required - set(env_example))}"
    for key in required:
        assert env_example[key] == "REPLACE_ME", f".env.example {key} must be a placeholder"
    secret_like = re.compile(r"PASSWORD|SECRET|FERNET|ACCESS_KEY", re.I)
    for name, svc in raw["services"].items():
        env = svc.get("environment", {})
        for key, value in env.items() if isinstance(env, dict) else []:
            if secret_like.search(key) and not key.endswith("_FILE"):  # a path, not a credential
                assert "${" in str(value), (
                    f"service {name}: {key} is a literal, not ${{VAR}} from the environment"
                )
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(raw, {k: v for k, v in env_example.items() if k != "POSTGRES_PASSWORD"})


def test_compose_publishes_only_on_loopback_and_pins_images(raw: dict[str, Any]) -> None:
    for name, svc in raw["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"service {name} publishes {port} beyond loopback"
        image = svc.get("image", "")
        assert image and not image.endswith(":latest") and ":" in image.split("/")[-1], (
            f"{name}: pin {image!r}"
        )
