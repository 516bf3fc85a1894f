"""Fixtures of the serving tests: registering classifier versions in the real MLflow server, and a real
Ray Serve deployment of bertops' serving app on a free port (started once per module)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bertops.net import free_port

HERE = Path(__file__).resolve().parent
KEYWORD_MODEL = HERE / "keyword_model.py"


@dataclass
class Registry:
    """Registers pyfunc versions under one model name and moves its aliases (real MlflowClient calls)."""

    tracking_uri: str
    name: str

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def register_keyword(self, **model_config) -> str:
        """Log and register a keyword pyfunc version (see keyword_model.py); return its version."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        mlflow.set_experiment("serving-tests")
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(KEYWORD_MODEL), model_config=model_config or None,
                registered_model_name=self.name, pip_requirements=["mlflow", "pandas"],
            )  # fmt: skip
        return str(info.registered_model_version)

    def register_bertops_classifier(
        self, workdir: Path, labels: tuple[str, ...] = ("negative", "positive")
    ) -> str:
        """Build a tiny (untrained) bertops classifier bundle with ``labels``, log it with bertops' own pyfunc
        (``bertops.model.pyfunc.log_classifier``) and register it; return the version."""
        import mlflow

        from bertops.config import ModelConfig
        from bertops.model.bundle import save_bundle
        from bertops.model.heads import BertClassifier
        from bertops.model.presets import backbone_from_config
        from bertops.model.pyfunc import log_classifier

        words = [
            "a",
            "the",
            "film",
            "good",
            "bad",
            "dull",
            "fine",
            "moving",
            "long",
            "##s",
            "##ly",
            ",",
            ".",
            "!",
        ]
        vocab = workdir / "vocab.txt"
        vocab.write_text(
            "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n", encoding="utf-8"
        )
        backbone = backbone_from_config(
            ModelConfig(preset="tiny", max_sequence_length=64), vocab_size=5 + len(words)
        )
        bundle = save_bundle(
            workdir / "bundle", BertClassifier(backbone, num_classes=len(labels)), vocab_file=vocab,
            task="classification", max_seq_length=32, labels=list(labels), data_version="test-data-v1",
        )  # fmt: skip
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        mlflow.set_experiment("serving-tests")
        with mlflow.start_run():
            info = log_classifier(bundle, name="model", registered_model_name=self.name)
        return str(info.registered_model_version)

    def set_alias(self, version: str, alias: str = "champion") -> None:
        self.client().set_registered_model_alias(self.name, alias, version)


@pytest.fixture(scope="module")
def registry(request: pytest.FixtureRequest) -> Registry:
    """A fresh model name on the session's MLflow server (``mlflow_server``), or, for local runs on a busy
    machine, on one that is already up: ``BERTOPS_TEST_MLFLOW_URI=http://127.0.0.1:PORT``."""
    uri = os.environ.get("BERTOPS_TEST_MLFLOW_URI") or request.getfixturevalue("mlflow_server").uri
    return Registry(tracking_uri=uri, name=f"serving-test-{uuid.uuid4().hex[:8]}")


@dataclass
class Service:
    url: str
    registry: Registry


@pytest.fixture(scope="module")
def ray_address(request: pytest.FixtureRequest) -> str:
    """The session's Ray head (``ray_cluster``), or, for local runs on a busy machine, a head that is already
    up: ``BERTOPS_TEST_RAY_ADDRESS=127.0.0.1:PORT``. Serve needs no dashboard."""
    return os.environ.get("BERTOPS_TEST_RAY_ADDRESS") or request.getfixturevalue("ray_cluster").address


def start_service(
    ray_address: str, registry: Registry, extra: tuple[str, ...] = (), **serving
) -> Iterator[Service]:
    """Deploy the app with ``serving`` overrides (and ``extra`` ``key=value`` ones) on the session's Ray head;
    tear down Serve afterwards."""
    import ray
    from ray import serve

    from bertops.config import load_config
    from bertops.serving.app import APP_NAME, app_from_config
    from bertops.serving.client import wait_ready

    port = free_port()
    overrides = [f"tracking.uri={registry.tracking_uri}", f"registry.model_name={registry.name}"]
    overrides += [f"serving.{k}={v}" for k, v in serving.items()] + list(extra)
    if "models" not in serving and not any(e.startswith(("serving.models=", "registry.ner_model_name=")) for e in extra):
        # Only this test's model: not the default bert-ner, which other tests may have registered on the server.
        overrides.append(f"serving.models=[{registry.name}]")
    cfg = load_config(Path(__file__).resolve().parents[2] / "params.yaml", overrides)
    ray.init(address=ray_address, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app_from_config(cfg), name=APP_NAME, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout=300)
        yield Service(url=url, registry=registry)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def start_mlflow_models_serve(tracking_uri: str, model_uri: str, log: Path) -> Iterator[str]:
    """A real ``mlflow models serve -m <model_uri> --env-manager local`` on a free loopback port; its URL.
    Stopped (its whole process group) afterwards."""
    import httpx

    port = free_port()
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    # `mlflow models serve` execs `uvicorn` from PATH: the venv's bin must come first.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (
                f"mlflow models serve exited: {log.read_text(errors='replace')[-2000:]}"
            )
            try:
                if httpx.get(f"{url}/ping", timeout=3).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not come up"
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
