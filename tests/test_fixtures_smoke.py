"""The shared real-service fixtures start and answer (they back every integration test)."""

import json
import urllib.request

import pytest


@pytest.mark.slow
def test_mlflow_server_answers(mlflow_server):
    with urllib.request.urlopen(f"{mlflow_server.uri}/health") as resp:
        assert resp.status == 200


@pytest.mark.slow
def test_ray_cluster_runs_a_task_and_serves_jobs_api(ray_cluster):
    import ray

    ray.init(address=ray_cluster.address, ignore_reinit_error=True)
    try:
        @ray.remote
        def square(x: int) -> int:
            return x * x

        assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
    finally:
        ray.shutdown()
    with urllib.request.urlopen(f"{ray_cluster.dashboard_url}/api/version") as resp:
        assert "ray_version" in json.loads(resp.read())
