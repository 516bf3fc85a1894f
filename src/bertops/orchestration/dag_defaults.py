"""What every bertops DAG shares: the config it is scheduled by, its timetable, default task arguments, tags.

Read at DAG-parse time, so it only reads ``params.yaml`` (YAML + pydantic): no Airflow operators, Ray,
MLflow or TensorFlow here.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bertops.config import BertopsConfig, load_config
from bertops.orchestration.tasks import PARAMS_FILE, project_root

OWNER = "bertops"
TAGS = ["bertops", "bert"]


def dag_config() -> BertopsConfig:
    """``params.yaml`` of the checkout the DAGs run in (schedules, retries, pool, timeouts)."""
    return load_config(project_root() / PARAMS_FILE)


def future_ticks_only(cron: str):
    """A cron timetable that never runs a tick that passed before the DAG was unpaused (or the stack started).

    ``schedule="@daily"`` with ``catchup=False`` still runs the interval that has just closed as soon as the DAG is
    unpaused, and ``CronTriggerTimetable(run_immediately=False)`` in Airflow 3.3 runs a tick less than a tenth of the
    period ago; ``run_immediately=timedelta(0)`` runs neither (tests/orchestration/test_schedule.py).
    """
    from airflow.sdk import CronTriggerTimetable

    return CronTriggerTimetable(cron, timezone="UTC", run_immediately=dt.timedelta(0))


def default_args(cfg: BertopsConfig) -> dict[str, Any]:
    """Retries with exponential backoff on every task (a task that cannot succeed on a retry raises
    ``AirflowFailException`` and is not retried); the failure callback that says why where the user looks
    (:mod:`bertops.orchestration.failures`); the owner shown in the UI."""
    from bertops.orchestration.failures import on_task_failure, on_task_retry

    o = cfg.orchestration
    return {
        "owner": OWNER,
        "on_failure_callback": on_task_failure,
        "on_retry_callback": on_task_retry,  # a retried try's line (the failure callback is for the last try)
        "retries": o.task_retries,
        "retry_delay": dt.timedelta(seconds=o.retry_delay_s),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(seconds=max(o.retry_delay_s * 10, 60)),
    }


def ray_task_timeout(cfg: BertopsConfig) -> dt.timedelta:
    """Airflow's execution_timeout for a Ray-job task: the job's own limit plus a margin to stop it cleanly."""
    return dt.timedelta(seconds=cfg.orchestration.ray_job_timeout_s + 120)
