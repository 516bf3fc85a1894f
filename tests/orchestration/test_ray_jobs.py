"""Submit-or-re-attach against the real Ray Jobs API: a retried task never starts a second job."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from bertops.orchestration.ray_jobs import (
    JobSpec,
    RayJobError,
    RayJobRunner,
    parse_result,
    python_entrypoint,
    submission_id_for,
)

SCRIPT = str(Path(__file__).with_name("job_script.py"))


def test_submission_id_is_stable_safe_and_distinct() -> None:
    a = submission_id_for("bert_retrain", "manual__2026-11-28T13:00:00+00:00", "finetune")
    assert a == submission_id_for("bert_retrain", "manual__2026-11-28T13:00:00+00:00", "finetune")
    assert all(c.isalnum() or c in "-_" for c in a)
    assert a != submission_id_for("bert_retrain", "manual__2026-11-28T13:00:00+00:00", "pretrain")
    assert a != submission_id_for("bert_retrain", "manual__2026-11-28T13_00_00+00_00", "finetune")


def test_parse_result_takes_the_last_marker_line() -> None:
    logs = 'x\nBERTOPS_RESULT {"a": 1}\nINFO BERTOPS_RESULT {"run_id": "r", "metrics": {}}\ntrailing\n'
    assert parse_result(logs) == {"run_id": "r", "metrics": {}}
    assert parse_result("no marker\nBERTOPS_RESULT not-json") is None


def _spec(counter: Path, seconds: float, code: int = 0) -> JobSpec:
    return JobSpec(python_entrypoint(SCRIPT, [str(counter), str(seconds), str(code)], python=sys.executable))


def _wait_status(runner: RayJobRunner, sid: str, wanted: set[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(runner.client.get_job_status(sid))
        if status in wanted:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {sid} never reached {wanted}")


@pytest.mark.slow
def test_retry_reattaches_to_the_running_job_and_never_resubmits(ray_cluster, tmp_path) -> None:
    counter = tmp_path / "starts.txt"
    base = submission_id_for("bert_retrain", f"manual__{tmp_path.name}", "finetune")
    # Try 1: submits, then the task "dies" (worker lost) before the job ends.
    first = RayJobRunner(ray_cluster.dashboard_url, poll_interval_s=0.5)
    sid, attached = first.submit_or_attach(base, _spec(counter, seconds=6))
    assert (sid, attached) == (base, False)
    _wait_status(first, sid, {"RUNNING"})

    # Try 2: the same task of the same DAG run re-attaches, streams the logs and returns the job's result.
    lines: list[str] = []
    second = RayJobRunner(ray_cluster.dashboard_url, poll_interval_s=0.5, log_sink=lines.append)
    outcome = second.run(base, _spec(counter, seconds=6), timeout_s=180)
    assert outcome.attached and outcome.submission_id == base and outcome.status == "SUCCEEDED"
    assert outcome.result == {"run_id": "r-123", "starts": 1}
    assert any("tiny job started" in line for line in lines)

    # Try 3, after success: re-uses the finished job's result, submits nothing.
    third = RayJobRunner(ray_cluster.dashboard_url, poll_interval_s=0.5).run(base, _spec(counter, 6), 60)
    assert third.attached and third.result == outcome.result
    assert counter.read_text().splitlines() == ["start"]
    ids = [j.submission_id for j in first.client.list_jobs() if (j.submission_id or "").startswith(base)]
    assert ids == [base]


@pytest.mark.slow
def test_failed_job_raises_with_logs_and_a_retry_submits_a_new_attempt(ray_cluster, tmp_path) -> None:
    counter = tmp_path / "starts.txt"
    base = submission_id_for("bert_retrain", f"manual__{tmp_path.name}", "pretrain")
    runner = RayJobRunner(ray_cluster.dashboard_url, poll_interval_s=0.5)
    with pytest.raises(RayJobError, match=r"ended FAILED(.|\n)*failing on purpose"):
        runner.run(base, _spec(counter, seconds=0, code=3), timeout_s=120)
    outcome = runner.run(base, _spec(counter, seconds=0), timeout_s=120)
    assert outcome.submission_id == f"{base}-2" and not outcome.attached
    assert outcome.result is not None and outcome.result["starts"] == 2


@pytest.mark.slow
def test_timeout_stops_the_ray_job(ray_cluster, tmp_path) -> None:
    base = submission_id_for("bert_retrain", f"manual__{tmp_path.name}", "evaluate")
    runner = RayJobRunner(ray_cluster.dashboard_url, poll_interval_s=0.5)
    sid, _ = runner.submit_or_attach(base, _spec(tmp_path / "c.txt", seconds=300))
    _wait_status(runner, sid, {"RUNNING"})
    with pytest.raises(RayJobError, match="did not finish"):
        runner.wait(sid, timeout_s=1)
    assert _wait_status(runner, sid, {"STOPPED"}, timeout=60) == "STOPPED"


@pytest.mark.slow
def test_a_config_error_in_the_real_job_fails_the_task_without_retries(ray_cluster, tmp_path) -> None:
    """``ray_jobs/finetune.py`` refusing its config: RayJobConfigError, which the operator turns into
    AirflowFailException (no retries); an infrastructure error stays a plain RayJobError (retried)."""
    from airflow.sdk.exceptions import AirflowFailException

    from bertops.config import load_config
    from bertops.orchestration import tasks
    from bertops.orchestration.operators import RayJobOperator

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "params.yaml")
    spec = tasks.training_job("finetune", cfg, ["finetune.epochs=0"], None, root=root)
    op = RayJobOperator(task_id="finetune", build=lambda ctx: (ray_cluster.dashboard_url, spec, 300.0),
                        poll_interval_s=0.5)  # fmt: skip
    with pytest.raises(AirflowFailException, match=r"refused its configuration(.|\n)*finetune\.epochs"):
        op.execute({"run_id": f"manual__{tmp_path.name}"})
    down = RayJobOperator(task_id="finetune", build=lambda ctx: ("http://127.0.0.1:9", spec, 30.0))
    with pytest.raises(RayJobError, match="cannot reach the Ray Jobs API") as err:
        down.execute({"run_id": f"manual__{tmp_path.name}"})
    assert not isinstance(err.value, AirflowFailException)
