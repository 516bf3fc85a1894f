# TEMPORARY, not committed: run the Ray tests against an already running MLflow server.
from types import SimpleNamespace

import pytest

from .test_ray_training import *  # noqa: F403
from .test_ray_training import (  # noqa: F401
    test_pretraining_survives_a_killed_worker_and_learns,
    test_restarted_run_resumes_at_its_step,
    test_two_worker_finetune_from_pretraining,
)


@pytest.fixture(scope="session")
def mlflow_server():
    return SimpleNamespace(uri="http://127.0.0.1:47111")
