"""Fine-tuning on a multi-node Ray cluster, submitted through the Jobs API exactly as the Airflow DAG does.

Three real Ray nodes on loopback, laid out like ``infra/kuberay/raycluster.yaml``: a head with the dashboard
(Jobs API) and no CPUs for tasks, and two worker nodes (``ray start --address``). The job is built by the DAG's
own task body (``bertops.orchestration.tasks.training_job``) and run by its runner (``RayJobRunner`` with a
run-derived submission id); it logs to the PostgreSQL + S3 MLflow server of the scale-out MLflow test, found
through ``MLFLOW_TRACKING_URI`` alone. Then: the two Ray Train workers ran on the two worker nodes (not the
head), the run and its lineage tags are in MLflow, and a retried task re-attaches instead of training again.

The worker nodes also declare one GPU each (``ray start --num-gpus=1``: Ray schedules declared GPUs without any
being present), so the same cluster shows GPU placement: with ``scaling.use_gpu=true`` the Ray Train workers land
one per GPU node with ``CUDA_VISIBLE_DEVICES`` set by Ray, and asking for more GPUs than exist fails before
``fit``. (One cluster for both: starting Ray nodes is most of these tests' time on 2 cores.)
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import free_port, start_ray_node, stop_group
from tests.training.conftest import write_synthetic_data

from bertops.config import ScalingSettings, load_config

pytestmark = [pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@dataclass
class MultiNodeRay:
    gcs_address: str
    dashboard_url: str
    temp_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)


def _node_ports() -> list[str]:
    return [
        "--node-ip-address", "127.0.0.1",
        "--node-manager-port", str(free_port()),
        "--object-manager-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--object-store-memory", str(150 * 1024**2),
        "--disable-usage-stats",
    ]  # fmt: skip


def _start_head() -> MultiNodeRay:
    """The head with the dashboard (Jobs API) and 0 CPUs, like the RayCluster's."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ray_io_", dir="/tmp"))
    gcs_port, dash_port = free_port(), free_port()
    cluster = MultiNodeRay(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}", temp_dir)
    head = ["--head", "--port", str(gcs_port), "--num-cpus", "0",
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
            "--ray-client-server-port", str(free_port()), "--temp-dir", str(temp_dir), *_node_ports()]  # fmt: skip
    cluster.procs.append(
        start_ray_node(head, temp_dir, "head", ready_url=f"{cluster.dashboard_url}/api/version")
    )
    return cluster


def _add_worker(cluster: MultiNodeRay, name: str) -> None:
    """A worker node with 1 CPU and 1 declared GPU, once it is up (retried if its raylet dies starting)."""
    args = ["--address", cluster.gcs_address, "--num-cpus", "1", "--num-gpus", "1", *_node_ports()]
    cluster.procs.append(start_ray_node(args, cluster.temp_dir, name))


@pytest.fixture(scope="module")
def multinode_ray() -> Iterator[MultiNodeRay]:
    """Head (dashboard, 0 CPUs) + two worker nodes (1 CPU, 1 declared GPU), each its own process group."""
    from ray.util.state import list_nodes

    cluster = _start_head()
    try:
        for i in range(2):  # one at a time: raylets starting together on 2 cores miss Ray's agent deadline
            _add_worker(cluster, f"worker{i}")
        deadline = time.monotonic() + 420  # a loaded 2-core machine starts Ray nodes slowly
        while len([n for n in list_nodes(address=cluster.dashboard_url) if n.state == "ALIVE"]) < 3:
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker nodes did not join; logs in {cluster.temp_dir}")
            time.sleep(2)
        yield cluster
    finally:
        for proc in reversed(cluster.procs):
            stop_group(proc, timeout=60)


def test_finetune_job_runs_across_worker_nodes(
    multinode_ray: MultiNodeRay, mlflow_postgres_s3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mlflow import MlflowClient
    from ray.util.state import list_actors, list_nodes

    from bertops.orchestration.ray_jobs import RayJobRunner, submission_id_for
    from bertops.orchestration.tasks import require_result, training_job

    # Configuration only: the cluster's MLflow by environment, the cluster's Jobs API by address.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_postgres_s3.uri)
    data = write_synthetic_data(tmp_path / "data")
    overrides = [
        f"project.data_dir={data.root}", f"project.state_dir={tmp_path / 'state'}",
        "model.preset=custom", "model.num_layers=1", "model.hidden_dim=64", "model.num_heads=2",
        "model.intermediate_dim=128", "model.max_sequence_length=64", "model.dropout=0.0",
        "pretrain_data.max_seq_length=32", "finetune_data.max_seq_length=32",
        "finetune.init=scratch", "finetune.epochs=2", "finetune.batch_size=16", "finetune.learning_rate=1e-3",
        "finetune.scaling.num_workers=2", "finetune.scaling.cpus_per_worker=1",
        f"finetune.output_dir={tmp_path / 'bundle'}",
    ]  # fmt: skip
    cfg = load_config(REPO / "params.yaml", overrides)
    assert cfg.tracking_uri() == mlflow_postgres_s3.uri
    airflow_run = "manual__2026-11-28T00:00:00+00:00"
    spec = training_job("finetune", cfg, overrides, airflow_run_id=airflow_run, root=REPO)
    runner = RayJobRunner(multinode_ray.dashboard_url, poll_interval_s=3)
    base_id = submission_id_for("bert_retrain", airflow_run, "finetune")
    outcome = runner.run(base_id, spec, timeout_s=1500)
    assert outcome.status == "SUCCEEDED" and not outcome.attached
    result = require_result("finetune", outcome.result, outcome.submission_id)
    assert "validation_accuracy" in result["metrics"]

    # Placement: both Ray Train workers ran, each on its own worker node; the head (0 CPUs) ran none.
    nodes = list_nodes(address=multinode_ray.dashboard_url)
    head = {n.node_id for n in nodes if n.is_head_node}
    workers = list_actors(address=multinode_ray.dashboard_url, filters=[("class_name", "=", "RayTrainWorker")],
                          detail=True)  # fmt: skip
    placed = {a.node_id for a in workers}
    assert len(workers) == 2 and len(placed) == 2 and not placed & head, [
        (a.node_id, a.state) for a in workers
    ]

    # The run and its lineage are in the PostgreSQL-backed MLflow.
    run = MlflowClient(mlflow_postgres_s3.uri).get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["bertops.ray_job_id"] == outcome.submission_id
    assert run.data.tags["bertops.airflow_run_id"] == airflow_run
    assert run.data.params["finetune.scaling.num_workers"] == "2"

    # A retried Airflow task finds the finished job and takes its result; nothing is trained twice.
    again = runner.run(base_id, spec, timeout_s=60)
    assert again.attached and again.submission_id == outcome.submission_id and again.result == outcome.result


def report_placement(config: dict[str, Any]) -> None:
    """Tiny train loop: record this worker's node and visible GPUs."""
    import ray
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    info = {
        "rank": rank,
        "node_id": ray.get_runtime_context().get_node_id(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
    }
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(info))
    ray.train.report({"rank": rank})


def test_gpu_workers_land_one_per_gpu_node(multinode_ray: MultiNodeRay, tmp_path: Path) -> None:
    import ray
    from ray.train import RunConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from bertops.training.trainer import TrainingSetupError, check_resources, scaling_config

    ray.init(address=multinode_ray.gcs_address, log_to_driver=False)
    try:
        gpu_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")}
        assert len(gpu_nodes) == 2
        scaling = ScalingSettings(num_workers=2, use_gpu=True, cpus_per_worker=1, gpus_per_worker=1)
        check_resources(scaling)  # fits: 2 GPUs declared
        with pytest.raises(TrainingSetupError, match="GPUs, the Ray cluster has 2"):
            check_resources(ScalingSettings(num_workers=3, use_gpu=True, cpus_per_worker=0.5))

        out = tmp_path / "placement"
        out.mkdir()
        trainer = DataParallelTrainer(
            report_placement,
            train_loop_config={"out": str(out)},
            scaling_config=scaling_config(scaling),
            run_config=RunConfig(name="placement", storage_path=str(tmp_path / "results")),
        )
        trainer.fit()
    finally:
        ray.shutdown()
    infos = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    assert [i["rank"] for i in infos] == [0, 1]
    assert {i["node_id"] for i in infos} == gpu_nodes  # one worker per GPU node, none on the head
    for info in infos:
        assert info["cuda_visible_devices"] == "0" and info["gpu_ids"] == ["0"]
