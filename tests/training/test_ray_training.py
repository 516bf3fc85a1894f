"""Real Ray Train runs on the session's Ray head, logging to the session's MLflow server.

One pretraining run (1 worker) is killed mid-run and must complete from its last checkpoint (FailureConfig);
restarted under its name it resumes at the step it had reached. A 2-worker fine-tune from that pretraining
output must beat the majority baseline and leave a loadable bundle plus a complete MLflow run.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bertops.paths import DataLayout

from .conftest import expected_batches, training_config
from .ray_nodes import RayNodes, start_head

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_driver() -> Any:
    """A 4-CPU Ray head owned by this module (no dashboard: the Jobs API is not needed here)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    nodes = start_head(num_cpus=4)
    yield nodes
    ray.shutdown()
    nodes.stop()


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def _kill_worker_after_first_checkpoint(
    run_dir: Path, nodes: RayNodes, stop: threading.Event, killed: list[int]
) -> None:
    """Wait until the run has a registered checkpoint, then SIGKILL its Ray Train worker process.

    A ``checkpoint_*`` folder appears while the report is still in flight; only the controller's snapshot
    (``checkpoint_manager_snapshot.json`` with a latest result) says the checkpoint will be restored from.
    """
    import psutil

    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    while not stop.is_set():
        try:
            registered = bool(json.loads(snapshot.read_text()).get("latest_checkpoint_result"))
        except (OSError, ValueError):
            registered = False
        if registered:
            for pid in nodes.pids():
                try:
                    title = " ".join(psutil.Process(pid).cmdline())
                except psutil.Error:
                    continue
                if "RayTrainWorker" in title:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def pretrained(
    mlflow_server: Any, ray_driver: Any, repo_root: Path, synthetic_data: DataLayout, tmp_path_factory: Any
) -> dict[str, Any]:
    """A pretraining run whose worker is killed after its first checkpoint."""
    from bertops.training.trainer import pretrain

    state = tmp_path_factory.mktemp("state")
    overrides = [
        f"tracking.uri={mlflow_server.uri}",
        f"pretrain.scaling.address={ray_driver.address}",
        "pretrain.scaling.num_workers=1",
        "pretrain.scaling.max_failures=2",
        "pretrain.batch_size=32",
        "pretrain.max_steps=400",
        "pretrain.checkpoint_every_steps=40",
        "pretrain.eval_every_steps=200",
        "pretrain.eval_batches=4",
        "pretrain.log_every_steps=10",
        "pretrain.optimizer.learning_rate=2e-3",
        "pretrain.run_name=pt-kill",
        f"pretrain.output_dir={state / 'pretrain-bundle'}",
    ]
    cfg = training_config(repo_root, synthetic_data, state, overrides)
    stop, killed = threading.Event(), []
    killer = threading.Thread(
        target=_kill_worker_after_first_checkpoint,
        args=(state / "ray_results" / "pt-kill", ray_driver, stop, killed),
    )
    killer.start()
    try:
        result = pretrain(cfg)
    finally:
        stop.set()
        killer.join()
    return {"result": result, "killed": killed, "cfg": cfg, "overrides": overrides, "state": state}


def test_pretraining_survives_a_killed_worker_and_learns(
    pretrained: dict[str, Any], mlflow_server: Any
) -> None:
    from bertops.model.bundle import load_bundle

    result = pretrained["result"]
    assert pretrained["killed"], "the worker was never killed: the run finished before its first checkpoint"
    assert result.metrics["steps"] == 400
    resumed = _history(mlflow_server.uri, result.run_id, "resumed_from_step")
    assert resumed and resumed[-1][1] > 0 and resumed[-1][1] % 40 == 0, resumed  # from a checkpoint, not 0
    losses = [v for _, v in _history(mlflow_server.uri, result.run_id, "loss")]
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:3]) / 3, losses  # pretraining loss decreases
    assert result.metrics["heldout_mlm_accuracy"] > 0.05  # chance is 1/100
    assert result.metrics["heldout_perplexity"] < 50
    bundle = load_bundle(result.bundle_dir)
    assert bundle.task == "pretraining" and bundle.meta["source_run_id"] == result.run_id
    _assert_batches_of_an_uninterrupted_run(pretrained["cfg"], mlflow_server.uri, result.run_id, 400)


def _assert_batches_of_an_uninterrupted_run(cfg: Any, uri: str, run_id: str, steps: int) -> None:
    """Every logged step (replayed ones after the kill included) trained on the global batch, cut to the same
    bucket, that a run which never stopped trains on at that step."""
    from bertops.training.trainer import make_plan

    want = expected_batches(make_plan(cfg, "pretrain"), steps)
    logged = {"seq_len": _history(uri, run_id, "seq_len"), "fp": _history(uri, run_id, "batch_fingerprint")}
    assert logged["fp"] and logged["fp"][-1][0] == steps, logged["fp"][-3:]
    for step, value in logged["fp"]:
        assert value == want[step - 1][1], (step, value, want[step - 1])
    for step, value in logged["seq_len"]:
        assert value == want[step - 1][0], (step, value, want[step - 1])


def test_restarted_run_resumes_at_its_step(
    pretrained: dict[str, Any], mlflow_server: Any, repo_root: Path, synthetic_data: DataLayout
) -> None:
    from bertops.training.trainer import pretrain

    first = pretrained["result"]
    cfg = training_config(
        repo_root, synthetic_data, pretrained["state"], [*pretrained["overrides"], "pretrain.max_steps=420"]
    )
    again = pretrain(cfg)
    assert again.run_id == first.run_id  # the same MLflow run continues
    assert again.metrics["steps"] == 420
    resumed = _history(mlflow_server.uri, again.run_id, "resumed_from_step")
    assert resumed[-1] == (401, 400.0)  # first step after the restart is 401, restored at 400
    steps = [s for s, _ in _history(mlflow_server.uri, again.run_id, "loss")]
    assert steps[-1] == 420 and 410 in steps
    _assert_batches_of_an_uninterrupted_run(cfg, mlflow_server.uri, again.run_id, 420)


def test_two_worker_finetune_from_pretraining(
    pretrained: dict[str, Any],
    mlflow_server: Any,
    repo_root: Path,
    synthetic_data: DataLayout,
    tmp_path: Path,
) -> None:
    import numpy as np
    from mlflow import MlflowClient

    from bertops.model.bundle import load_bundle
    from bertops.training.trainer import finetune

    pre = pretrained["result"]
    cfg = training_config(
        repo_root, synthetic_data, tmp_path,
        [
            f"tracking.uri={mlflow_server.uri}",
            f"finetune.scaling.address={ray_driver_address(pretrained)}",
            "finetune.scaling.num_workers=2",
            "finetune.init=pretrained",
            f"pretrain.output_dir={pre.bundle_dir}",
            "finetune.batch_size=16",
            "finetune.epochs=10",
            "finetune.early_stopping_patience=4",
            "finetune.learning_rate=1e-3",
            "finetune.log_every_steps=4",
            "finetune.class_weights=balanced",
            f"finetune.output_dir={tmp_path / 'ft-bundle'}",
        ],
    )  # fmt: skip
    with _TrainWorkerListeners() as seen:
        result = finetune(cfg)
    # Two workers talk through TensorFlow's gRPC server (TF_CONFIG), on every interface while the run lasts;
    # Ray Train kills its worker actors when the run ends, so the processes and their servers are gone after it.
    assert any(ip in ("0.0.0.0", "::") for sockets in seen.sockets.values() for ip, _ in sockets), (
        seen.sockets
    )
    seen.assert_gone_within(60)
    m = result.metrics
    assert m["global_batch_size"] == 32
    assert m["validation_accuracy"] > 0.75, m  # the majority baseline is ~0.5 on this balanced set
    assert m["test_accuracy"] > 0.7, m

    run = MlflowClient(mlflow_server.uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    assert tags["bertops.pretrain_run_id"] == pre.run_id == result.pretrain_run_id
    assert tags["bertops.git_commit"] and tags["bertops.data_version"] and tags["bertops.ray_job_id"]
    assert params["finetune.scaling.num_workers"] == "2" and params["run.global_batch_size"] == "32"
    for key in ("loss", "learning_rate", "tokens_per_s", "examples_per_s", "validation_accuracy"):
        assert key in run.data.metrics, key
    lrs = [v for _, v in _history(mlflow_server.uri, result.run_id, "learning_rate")]
    assert max(lrs) <= 1e-3 + 1e-12 and lrs[-1] < max(lrs)  # warm-up then decay
    artifacts = {a.path for a in MlflowClient(mlflow_server.uri).list_artifacts(result.run_id)}
    assert {"config", "plan", "bundle"} <= artifacts
    bundle_files = {a.path for a in MlflowClient(mlflow_server.uri).list_artifacts(result.run_id, "bundle")}
    assert {
        "bundle/model.keras",
        "bundle/vocab.txt",
        "bundle/label_map.json",
        "bundle/bertops.json",
    } <= bundle_files

    bundle = load_bundle(result.bundle_dir)
    assert bundle.labels == ["negative", "positive"] and bundle.meta["source_run_id"] == result.run_id
    probs = bundle.predict_proba(["w10 w11 w40 w50 w12", "w20 w21 w40 w50 w22"])
    assert np.argmax(probs, axis=1).tolist() == [1, 0]
    assert result.result_line().startswith("BERTOPS_RESULT {")


class _TrainWorkerListeners:
    """Samples, twice a second on a thread, the listening sockets of every Ray Train worker process."""

    def __init__(self) -> None:
        import threading

        self.sockets: dict[int, set[tuple[str, int]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    @staticmethod
    def _workers() -> list[Any]:
        import psutil

        return [
            p
            for p in psutil.process_iter(["cmdline"])
            if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])
        ]

    def _watch(self) -> None:
        import psutil

        while not self._stop.wait(0.5):
            for proc in self._workers():
                try:
                    found = {(c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                             if c.status == psutil.CONN_LISTEN}  # fmt: skip
                except psutil.Error:
                    continue
                self.sockets.setdefault(proc.pid, set()).update(found)

    def __enter__(self) -> _TrainWorkerListeners:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def assert_gone_within(self, seconds: float) -> None:
        """Every worker process seen has exited, and nothing listens on the ports its servers had."""
        import socket

        import psutil

        deadline = time.monotonic() + seconds
        while any(psutil.pid_exists(pid) for pid in self.sockets) and time.monotonic() < deadline:
            time.sleep(1)
        alive = [pid for pid in self.sockets if psutil.pid_exists(pid)]
        assert not alive, f"Ray Train worker processes outlived the run: {alive}"
        for ip, port in {s for sockets in self.sockets.values() for s in sockets}:
            with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as sock:
                sock.settimeout(2)
                host = "::1" if ip == "::" else "127.0.0.1" if ip == "0.0.0.0" else ip
                assert sock.connect_ex((host, port)) != 0, f"{ip}:{port} still listens after the run"


def ray_driver_address(pretrained: dict[str, Any]) -> str:
    return pretrained["cfg"].pretrain.scaling.address
