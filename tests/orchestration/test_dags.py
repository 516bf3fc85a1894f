"""DAG integrity: the DAG files import cleanly and fast, every task retries, tags/owners/docs are set,
nothing heavy (TensorFlow, Ray, MLflow, Keras) is imported while parsing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.orchestration.conftest import REPO_ROOT, airflow_env

HEAVY = ("tensorflow", "keras", "ray", "mlflow", "torch")

PROBE = textwrap.dedent(
    """
    import json, sys, time
    from airflow.dag_processing.dagbag import DagBag
    t0 = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    total = time.perf_counter() - t0
    # A second fill re-executes every DAG file with the libraries already imported, as a long-lived
    # dag-processor does: the parse cost of the files themselves.
    warm = DagBag(dag_folder=sys.argv[1])
    out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()},
           "stats": [{"file": s.file, "duration": s.duration.total_seconds()} for s in bag.dagbag_stats],
           "warm_stats": [{"file": s.file, "duration": s.duration.total_seconds()} for s in warm.dagbag_stats],
           "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(","))),
           "total": total, "dags": {}}
    for dag_id, dag in bag.dags.items():
        out["dags"][dag_id] = {
            "tags": sorted(dag.tags), "doc_md": dag.doc_md or "", "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs, "owner": dag.owner,
            "params": sorted(dag.params.keys()),
            "tasks": {t.task_id: {"retries": t.retries, "pool": t.pool, "owner": t.owner,
                                  "retry_exponential_backoff": bool(t.retry_exponential_backoff),
                                  "on_failure": [getattr(f, "__qualname__", str(f)) for f in (t.on_failure_callback if isinstance(t.on_failure_callback, list) else [t.on_failure_callback] if t.on_failure_callback else [])],
                                  "on_retry": [getattr(f, "__qualname__", str(f)) for f in (t.on_retry_callback if isinstance(t.on_retry_callback, list) else [t.on_retry_callback] if t.on_retry_callback else [])],
                                  "execution_timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                                  "upstream": sorted(t.upstream_task_ids), "trigger_rule": getattr(t.trigger_rule, "value", str(t.trigger_rule))}
                      for t in dag.tasks},
        }
    print("PROBE " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("airflow_parse")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO_ROOT / "dags"), ",".join(HEAVY)],
        env=airflow_env(home), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line.removeprefix("PROBE "))


def test_no_import_errors_and_both_dags_load(probe: dict) -> None:
    assert probe["import_errors"] == {}
    assert {"bert_data", "bert_retrain"} <= set(probe["dags"])


def test_each_dag_file_is_parsed_on_its_own_and_again(probe: dict) -> None:
    # What keeps parsing fast is checked as behaviour, not by a clock: each file is parsed (first, then warm,
    # as the dag-processor re-parses it) and nothing heavy is imported meanwhile (the test below).
    for key in ("stats", "warm_stats"):
        parsed = {Path(s["file"]).name for s in probe[key]}
        assert {"bert_data.py", "bert_retrain.py"} <= parsed, (key, parsed)


def test_no_heavy_imports_while_parsing(probe: dict) -> None:
    assert probe["heavy"] == []


def test_every_task_retries_with_backoff_and_dags_are_documented(probe: dict) -> None:
    for dag_id, dag in probe["dags"].items():
        assert "bertops" in dag["tags"], dag_id
        assert dag["doc_md"].strip().startswith(f"### {dag_id}"), dag_id
        assert dag["catchup"] is False, dag_id
        assert dag["owner"] == "bertops", dag_id
        for task_id, t in dag["tasks"].items():
            assert t["retries"] >= 1, (dag_id, task_id)
            assert t["retry_exponential_backoff"], (dag_id, task_id)
            # every task says why it failed where the user looks, but the retrain's summary, which repeats it
            expected = [] if (dag_id, task_id) == ("bert_retrain", "summary") else ["on_task_failure"]
            assert t["on_failure"] == expected, (dag_id, task_id, t["on_failure"])
            assert t["on_retry"] == ["on_task_retry"], (
                dag_id,
                task_id,
                t["on_retry"],
            )  # a retried try says why


def test_retrain_shape_pool_timeouts_and_params(probe: dict) -> None:
    dag = probe["dags"]["bert_retrain"]
    assert dag["max_active_runs"] == 1
    tasks = dag["tasks"]
    assert set(tasks) == {"check_params", "prepare_data", "pretrain", "finetune", "evaluate", "register",
                          "promotion_gate", "update_serving", "summary"}  # fmt: skip
    assert tasks["prepare_data"]["pool"] == "dvc"
    assert probe["dags"]["bert_data"]["tasks"]["repro"]["pool"] == "dvc"
    assert tasks["prepare_data"]["upstream"] == ["check_params"]
    assert (
        tasks["finetune"]["upstream"] == ["pretrain"]
        and tasks["finetune"]["trigger_rule"] == "none_failed"
        and tasks["summary"]["trigger_rule"] == "all_done"
    )
    assert tasks["pretrain"]["execution_timeout"] and tasks["finetune"]["execution_timeout"]
    assert {"task", "model_size", "init_checkpoint", "learning_rate", "epochs", "workers", "use_gpu",
            "pretraining", "promotion", "overrides"} <= set(dag["params"])  # fmt: skip
