# TEMPORARY, not committed: run the Ray tests against an already running MLflow server, with only the
# Ray node start-up boosted (pytest started under nice -10; everything reniced to 0 once the head is up).
import os
from types import SimpleNamespace

import psutil
import pytest

from .ray_nodes import start_head
from .test_ray_training import *  # noqa: F403
from .test_ray_training import (  # noqa: F401
    test_pretraining_survives_a_killed_worker_and_learns,
    test_restarted_run_resumes_at_its_step,
    test_two_worker_finetune_from_pretraining,
)


@pytest.fixture(scope="session")
def mlflow_server():
    return SimpleNamespace(uri="http://127.0.0.1:47111")


@pytest.fixture(scope="module")
def ray_driver():
    import ray

    nodes = start_head(num_cpus=4)
    for pid in nodes.pids() | {p.pid for p in nodes.procs} | {os.getpid()}:
        try:
            psutil.Process(pid).nice(0)
        except psutil.Error:
            pass
    yield nodes
    ray.shutdown()
    nodes.stop()
