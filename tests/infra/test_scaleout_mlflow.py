"""Switching bertops from the embedded MLflow to a cluster's is configuration only.

The same bertops code path — resolve ``cfg.tracking_uri()``, open and close a training run with an artifact
(``bertops.training.tracking``), register a model version (``bertops.registry``), review it, promote it, load
``models:/<name>@champion`` as serving does — runs against three settings, changed only through the
environment: the embedded SQLite store (nothing set) and, with ``MLFLOW_TRACKING_URI`` set, the production
layout of ``infra/``: an MLflow server on a real PostgreSQL with an S3-compatible artifact store that the server
proxies (the client holds no S3 credentials). (A plain SQLite-backed server is the other suites' fixture.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pytest

from bertops.config import load_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "bert-sentiment-scaleout"


class Constant(mlflow.pyfunc.PythonModel):
    """A stand-in model: what matters here is where it is stored and how it is found, not what it predicts."""

    def predict(self, context: Any, model_input: list[str], params: Any = None) -> list[str]:
        return ["positive" for _ in range(len(model_input))]


def exercise(cfg: Any, artifact: Path) -> dict[str, Any]:
    """What bertops steps do with MLflow, through bertops' own functions, against ``cfg.tracking_uri()``."""
    import mlflow

    from bertops.registry import registry as reg
    from bertops.registry.client import connect
    from bertops.registry.promote import promote
    from bertops.training.tracking import close_run, open_run

    uri = cfg.tracking_uri()
    client = connect(uri)  # also makes it MLflow's global URI, which mlflow.start_run/load_model read
    run_id = open_run(
        uri, cfg.tracking.finetune_experiment, "scaleout", cfg.flat(), {"bertops.kind": "finetune"}
    )
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=Constant())
    close_run(uri, run_id, metrics={"accuracy": 0.9}, artifacts={"config": artifact})
    version = reg.register_candidate(info.model_uri, tracking_uri=uri, model_name=MODEL_NAME,
                                     training_run_id=run_id, data_version="test")["version"]  # fmt: skip
    # The gate asks for a review; a reviewer approves in the MLflow UI (a version tag), then promotion runs.
    client.set_model_version_tag(MODEL_NAME, version, reg.TAG_GATE, "pending-approval")
    client.set_model_version_tag(MODEL_NAME, version, reg.TAG_APPROVAL, "approved")
    promoted = promote(cfg, MODEL_NAME, version)
    served = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    artifacts = [a.path for a in client.list_artifacts(run_id, "config")]
    return {"uri": uri, "run_id": run_id, "version": version, "promoted": promoted,
            "prediction": list(served.predict(["a", "b"])), "artifacts": artifacts}  # fmt: skip


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "resolved_config.yaml"
    path.write_text("finetune: {epochs: 1}\n")
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No endpoint or cloud credential inherited from the caller; cwd in a temp dir (MLflow's default ./mlruns)."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def _config(tmp_path: Path) -> Any:
    return load_config(REPO / "params.yaml", [f"project.state_dir={tmp_path / 'state'}"])


def _check(result: dict[str, Any]) -> None:
    assert result["promoted"]["changed"] and result["promoted"]["champion"] == result["version"]
    assert result["prediction"] == ["positive", "positive"]
    assert result["artifacts"] == ["config/resolved_config.yaml"]


def test_embedded_default(clean_env: pytest.MonkeyPatch, tmp_path: Path, artifact: Path) -> None:
    cfg = _config(tmp_path)
    assert cfg.tracking_uri() == f"sqlite:///{(tmp_path / 'state' / 'mlflow' / 'mlflow.db').resolve()}"
    _check(exercise(cfg, artifact))


def test_postgres_and_s3_backed_server_by_environment(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, artifact: Path, mlflow_postgres_s3, postgres, s3_server
) -> None:
    import psycopg2

    clean_env.setenv("MLFLOW_TRACKING_URI", mlflow_postgres_s3.uri)
    cfg = _config(tmp_path)
    assert cfg.tracking_uri() == mlflow_postgres_s3.uri
    result = exercise(cfg, artifact)
    _check(result)
    # The run, the version and the champion alias live in PostgreSQL ...
    conn = psycopg2.connect(host=postgres.host, port=postgres.port, user=postgres.user,
                            password=postgres.password, dbname="mlflow")  # fmt: skip
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (result["run_id"],))
            assert cur.fetchone() == ("FINISHED",)
            cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", (MODEL_NAME,))
            assert ("champion", int(result["version"])) in cur.fetchall()
    finally:
        conn.close()
    # ... and the artifacts (the config file and the model) in the S3 bucket, uploaded through the server.
    keys = s3_server.keys(mlflow_postgres_s3.bucket)
    assert any(k.endswith("config/resolved_config.yaml") and result["run_id"] in k for k in keys), keys
    assert any(k.endswith("MLmodel") for k in keys), keys
