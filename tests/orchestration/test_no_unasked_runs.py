"""Starting the stack never starts a run nobody asked for: a real Airflow scheduler, the three DAGs unpaused as
``bertops stack up`` leaves them, and no DAG run of any of them two minutes later.

It happened: ``bert_data``'s ``@daily`` schedule with ``catchup=False`` ran the interval that had just closed
seconds after ``make demo``; its data Asset event then started a ``bert_retrain`` that trained on both cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import stop_group
from tests.orchestration.conftest import REPO_ROOT, VENV_BIN, airflow_env

pytestmark = pytest.mark.slow

DAGS = ("bert_data", "bert_monitor", "bert_retrain")
WAIT_S = 120

_STATE = """
import json
from airflow.jobs.job import Job
from airflow.models.dag import DagModel
from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
with create_session() as s:
    dags = {m.dag_id: {"paused": m.is_paused, "next_create_after": m.next_dagrun_create_after.timestamp()
                       if m.next_dagrun_create_after else None} for m in s.query(DagModel)}
    runs = [(r.dag_id, r.run_id, str(r.run_type)) for r in s.query(DagRun)]
    beats = [j.latest_heartbeat.timestamp() for j in s.query(Job).filter(Job.job_type == "SchedulerJob")]
print("STATE " + json.dumps({"dags": dags, "runs": runs, "scheduler_beats": beats}))
"""


def _airflow(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run(
        [str(VENV_BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _state(env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _STATE], env=env, capture_output=True, text=True, timeout=300
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("STATE ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line.removeprefix("STATE "))


def test_an_unpaused_stack_starts_no_run_for_a_past_tick(tmp_path: Path) -> None:
    env = airflow_env(tmp_path / "airflow", {"BERTOPS_PROJECT_DIR": str(REPO_ROOT)})
    _airflow(env, "db", "migrate")
    _airflow(env, "dags", "reserialize")
    for dag_id in DAGS:
        _airflow(env, "dags", "unpause", dag_id)
    started = time.time()
    log = tmp_path / "scheduler.log"
    with open(log, "wb") as fh:
        scheduler = subprocess.Popen([str(VENV_BIN / "airflow"), "scheduler", "--skip-serve-logs"], env=env,
                                     stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        time.sleep(WAIT_S)
        assert scheduler.poll() is None, log.read_text()[-4000:]
        state = _state(env)
    finally:
        stop_group(scheduler)
    assert {d: state["dags"][d]["paused"] for d in DAGS} == dict.fromkeys(DAGS, False), state["dags"]
    # the scheduler was alive and looping the whole time ...
    assert state["scheduler_beats"] and max(state["scheduler_beats"]) > started + WAIT_S - 30, state
    # ... each scheduled DAG's next run is a future tick ...
    for dag_id in ("bert_data", "bert_monitor"):
        assert state["dags"][dag_id]["next_create_after"] > started, (dag_id, state["dags"][dag_id])
    # ... and nothing ran
    assert state["runs"] == [], (state["runs"], log.read_text()[-4000:])
