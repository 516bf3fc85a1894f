"""``bert_retrain`` with ``task=ner`` end to end with ``dag.test()`` against real components: DVC in a temp git repo,
the shared Ray head (Jobs API), the shared MLflow server.

The NER test retrains ``task=ner`` twice on the same data version: each run fine-tunes, evaluates (entity F1),
registers under ``registry.ner_model_name``, gates and promotes; the champion loads as the NER pyfunc in a fresh
process and answers entities; the second run's gate reads the first's evaluation of the champion instead of
evaluating it again.

Small on purpose (a few hundred records, tens of steps, pretraining skipped: its path is the same Ray job
machinery as fine-tuning, tested in test_ray_jobs.py and test_retrain_e2e.py); the gate's absolute and
majority-baseline thresholds are 0 so that this tiny model is promoted: the test checks the orchestration, not
the model's quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.orchestration.conftest import make_project, run_retrain_dag

pytestmark = [pytest.mark.slow]

SMALL = {
    "ingest": {
        "corpus": {"max_records": 40},
        "classification": {"max_records": 400},
        "ner": {"max_records": 100},
    },
    "vocab": {"vocab_size": 400, "min_frequency": 1},
    "pretrain_data": {"dupe_factor": 1, "max_seq_length": 64, "num_workers": 1},
    "finetune_data": {"max_seq_length": 64},
    "finetune": {"batch_size": 16, "checkpoint_every_steps": 20, "log_every_steps": 5},
    "evaluation": {"latency_repeats": 2, "worst_examples": 5},
    "promotion": {"min_absolute": 0.0, "min_over_majority": 0.0, "max_latency_ms": 100000.0},
    "orchestration": {"task_retries": 1, "retry_delay_s": 1, "ray_job_timeout_s": 900},
}
CONF = {"pretraining": "skip", "init_checkpoint": "scratch", "max_steps": 20, "epochs": 1, "workers": 1}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy of the checkout: git + DVC, the pipelines, ray_jobs, dags and a tiny params.yaml."""
    return make_project(tmp_path_factory.mktemp("retrain_ner_project"), SMALL)


def _retrain(project: Path, airflow_home: Path, ray_cluster, mlflow_server, conf: dict) -> dict:
    return run_retrain_dag(project, airflow_home, ray_cluster, mlflow_server, conf, timeout=1500)[0]


def test_ner_retrain_end_to_end_to_a_served_model(
    project: Path, airflow_home: Path, ray_cluster, mlflow_server, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    conf = {**CONF, "task": "ner", "max_steps": 10}
    first = _retrain(project, airflow_home, ray_cluster, mlflow_server, conf)
    assert all(first["tasks"][t] == "success" for t in ("finetune", "evaluate", "register", "promotion_gate"))
    champion = client.get_model_version_by_alias("bert-ner", "champion")
    assert (
        champion.tags["bertops.airflow_run_id"] == first["run_id"]
        and champion.tags["bertops.gate"] == "passed"
    )
    evaluation = client.get_run(champion.tags["bertops.evaluation_run_id"])  # the evaluate task's run
    assert evaluation.data.tags["bertops.airflow_run_id"] == first["run_id"]
    assert evaluation.data.tags["bertops.task"] == "ner" and "entity_f1" in evaluation.data.metrics
    assert "**Task:** ner" in champion.description

    # The champion as it is served: the NER pyfunc, loaded in a fresh process, answers entities with offsets.
    script = (
        "import json, sys, mlflow\n"
        "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "print(json.dumps(m.predict([sys.argv[2]])['entities'].tolist()))\n"
    )
    text = "@user  Justin Bieber in New York  today"
    proc = subprocess.run(
        [sys.executable, "-c", script, "models:/bert-ner@champion", text], capture_output=True, text=True,
        timeout=600, env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri}, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (entities,) = json.loads(proc.stdout.strip().splitlines()[-1])
    for e in entities:
        assert text[e["start"] : e["end"]] == e["text"] and set(e) == {
            "text",
            "type",
            "start",
            "end",
            "score",
        }

    # A second retrain on the same data version: its gate compares with that champion without evaluating it again.
    second = _retrain(project, airflow_home, ray_cluster, mlflow_server, conf)
    assert second["tasks"]["promotion_gate"] == "success"
    runs = client.search_runs(
        [evaluation.info.experiment_id],
        f"tags.`bertops.registered_model` = 'bert-ner' and tags.`bertops.model_version` = '{champion.version}'",
    )
    assert [r.info.run_id for r in runs] == [evaluation.info.run_id]
    newest = max(client.search_model_versions("name = 'bert-ner'"), key=lambda v: int(v.version))
    assert newest.version != champion.version and newest.tags["bertops.gate_champion"] == champion.version
