"""Worker placement on a simulated multi-node Ray cluster (three real Ray nodes on this machine).

The head has no GPU; two worker nodes declare one GPU each (``ray start --num-gpus=1``: Ray schedules declared
GPUs without any being present). With ``scaling.use_gpu=true`` the Ray Train workers must land one per GPU node
with ``CUDA_VISIBLE_DEVICES`` set by Ray, and asking for more GPUs than exist must fail before ``fit``.
A tiny train loop reports where it ran; no TensorFlow is needed to check placement.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bertops.config import ScalingSettings

from .ray_nodes import start_head

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def three_node_cluster() -> Iterator[Any]:
    """A CPU-only head plus two worker nodes that declare one GPU each."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    nodes = start_head(num_cpus=1)
    try:
        for i in range(2):
            nodes.add_node("--num-cpus", "1", "--num-gpus", "1", name=f"gpu{i}")
        deadline = time.monotonic() + 240
        while len([n for n in ray.nodes() if n["Alive"]]) < 3:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the GPU nodes did not join; logs in {nodes.temp_dir}")
            time.sleep(1)
        yield nodes
    finally:
        ray.shutdown()
        nodes.stop()


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


def test_gpu_workers_land_on_the_gpu_nodes(three_node_cluster: dict[str, Any], tmp_path: Path) -> None:
    import ray
    from ray.train import RunConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from bertops.training.trainer import TrainingSetupError, check_resources, scaling_config

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
    infos = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    assert [i["rank"] for i in infos] == [0, 1]
    assert {i["node_id"] for i in infos} == gpu_nodes  # one worker per GPU node, none on the head
    for info in infos:
        assert info["cuda_visible_devices"] == "0" and info["gpu_ids"] == ["0"]
