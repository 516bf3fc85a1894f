"""``bert_retrain`` end to end with ``dag.test()`` against real components: DVC in a temp git repo, the shared Ray
head (Jobs API), the shared MLflow server, and a live Ray Serve deployment of the serving app.

One run that exercises what a data scientist asks for: a data override (``ingest.classification.max_records``,
which becomes a DVC experiment), pretraining through the Ray Jobs path (``ray_jobs/pretrain.py``,
``after_pretrain``, a few steps) and fine-tuning from it. Afterwards: the evaluation saw the overridden data
(~10% of the records in test), the lineage (MLflow run, model version tags, model card, summary) names the
override and the DVC experiment, the live service answers with the new version, and ``git status`` is clean.

Small on purpose (hundreds of records, a few steps); the gate's thresholds are loose so that this tiny model is
promoted over the untrained champion the service starts with: the test checks the orchestration, not quality.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from tests.orchestration.conftest import git, make_project, run_retrain_dag
from tests.serving.conftest import Registry, start_service
from tests.serving.request_stream import RequestStream

from bertops.serving.client import predict

pytestmark = [pytest.mark.slow]

MODEL = f"e2e-sentiment-{uuid.uuid4().hex[:6]}"
SMALL = {
    "ingest": {
        "corpus": {"max_records": 40},
        "classification": {"max_records": 400},
        "ner": {"max_records": 100},
    },
    "vocab": {"vocab_size": 400, "min_frequency": 1},
    "pretrain_data": {"dupe_factor": 1, "max_seq_length": 64, "num_workers": 1},
    "finetune_data": {"max_seq_length": 64},
    "pretrain": {"batch_size": 8, "eval_batches": 2, "log_every_steps": 2},
    "finetune": {"batch_size": 16, "checkpoint_every_steps": 20, "log_every_steps": 5},
    "evaluation": {"latency_repeats": 2, "worst_examples": 5},
    "registry": {"model_name": MODEL},
    "promotion": {"min_absolute": 0.0, "min_over_majority": 0.0, "min_improvement": -1.0,
                  "max_regression": 1.0, "max_latency_ms": 100000.0,
                  # live traffic before the alias moves: shadow, then one canary step (issue 20)
                  "shadow": {"enabled": True, "requests": 15, "duration_s": 300, "min_agreement": 0.0,
                             "max_p99_ratio": 1000.0},
                  "canary": {"enabled": True, "percent": 30, "steps": [], "step_requests": 5,
                             "step_duration_s": 300, "max_error_rate": 0.0, "max_p99_ratio": 1000.0}},
    "orchestration": {"task_retries": 1, "retry_delay_s": 1, "ray_job_timeout_s": 900},
}  # fmt: skip
OVERRIDE = "ingest.classification.max_records=1500"
CONF = {
    "pretraining": "always",
    "init_checkpoint": "pretrained",
    "max_steps": 20,
    "epochs": 1,
    "workers": 1,
    "overrides": [OVERRIDE, "pretrain.max_steps=4", "pretrain.eval_every_steps=4"],
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small project with its baseline data built and committed (dvc.lock), as a DVC user keeps it."""
    root = make_project(tmp_path_factory.mktemp("retrain_project"), SMALL)
    from bertops.orchestration import dvc_ops

    dvc_ops.repro(root)
    git(root, "add", "dvc.lock", "data/reports/data_report.json")
    git(root, "commit", "-qm", "data: baseline")
    return root


@pytest.fixture(scope="module")
def service(ray_cluster, mlflow_server, tmp_path_factory: pytest.TempPathFactory):
    """The serving app, live on the shared Ray head, following ``champion`` of MODEL (an untrained v1)."""
    registry = Registry(tracking_uri=mlflow_server.uri, name=MODEL)
    registry.set_alias(registry.register_bertops_classifier(tmp_path_factory.mktemp("champion_v1")))
    yield from start_service(ray_cluster.address, registry)


def test_bert_retrain_does_what_was_asked_end_to_end(
    project: Path, airflow_home: Path, ray_cluster, mlflow_server, service
) -> None:
    served_before = predict(service.url, ["a fine film"])["version"]
    # A steady stream of plain HTTP requests (no client retries) from 12 callers while the DAG runs: the shadow
    # mirrors them, the canary answers some callers with the candidate, then the alias moves; none may fail.
    with RequestStream(
        service.url, lambda i: f"a fine film {i}", callers=12, threads=1, pause_s=0.05
    ) as stream:
        result, output = run_retrain_dag(
            project, airflow_home, ray_cluster, mlflow_server, CONF, serving_url=service.url
        )
    failures, answered_by = stream.failures, stream.versions_by_caller()
    assert not failures, failures[:5]
    assert all(state == "success" for state in result["tasks"].values()), result["tasks"]
    summary = result["xcoms"]["summary"]
    assert "plan: pretraining: yes" in output  # check_params logged the plan

    # the evaluation saw the overridden data: ~10% of 1500 records
    assert 120 <= summary["metrics"]["num_examples"] <= 180, summary["metrics"]
    assert OVERRIDE in summary["overrides"]
    assert summary["dvc_experiment"] and summary["data_version"]
    assert summary["pretrained"] is True

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    run = client.get_run(summary["training_run_id"])
    assert f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in summary["mlflow_run_url"]
    assert run.data.tags["bertops.airflow_run_id"] == result["run_id"]
    assert OVERRIDE in json.loads(run.data.tags["bertops.overrides"])
    assert run.data.tags["bertops.dvc_experiment"] == summary["dvc_experiment"]
    assert run.data.tags["bertops.dvc_data_version"] == summary["data_version"]
    assert run.data.tags.get("bertops.pretrain_run_id")  # fine-tuned from this run's pretraining

    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == summary["version"] != served_before
    assert champion.tags["bertops.airflow_run_id"] == result["run_id"]
    assert champion.tags["bertops.data_version"] == summary["data_version"]
    assert champion.tags["bertops.dvc_experiment"] == summary["dvc_experiment"]
    assert OVERRIDE in json.loads(champion.tags["bertops.overrides"])
    assert champion.tags.get("bertops.ray_job_id", "").startswith("bert_retrain-finetune-")
    assert summary["dvc_experiment"] in champion.description and OVERRIDE in champion.description

    # the live trial ran on the DAG's path: shadow passed (its report on the version), one canary step, then the switch
    live = summary["live_trial"]
    assert live["passed"] and live["shadow_run_id"] and [s["percent"] for s in live["canary"]] == [30], live
    assert champion.tags["bertops.shadow"] == "passed", champion.tags
    assert "## Live shadow" in client.get_model_version(MODEL, champion.version).description
    assert any(champion.version in versions for versions in answered_by.values()), answered_by

    # the live service follows the new champion, and the checkout is as clean as before the run
    assert summary["serving_version"] == champion.version
    assert predict(service.url, ["a fine film"])["version"] == champion.version
    assert git(project, "status", "--porcelain") == ""
