"""Why a DAG run failed, in one line per failed task: the task, its try, the first error line and the full log.

The same line reaches the user wherever they look:

- the task's own log and Airflow's UI: every bertops task has :func:`on_task_failure` as its
  ``on_failure_callback`` (``dag_defaults.default_args``), which logs the line and keeps the record as the task's
  XCom ``bertops_failure``; a try that Airflow retries (an infrastructure error: a lost connection, a lost Ray
  job) logs its line too, through :func:`on_task_retry` (``on_retry_callback``: Airflow calls the failure callback
  only for a try that is not retried);
- the retrain's ``summary`` task (``trigger_rule="all_done"``): its ``failed`` list, then it fails the run with the
  first line;
- ``bertops retrain --wait`` and ``bertops stack status``: :meth:`AirflowClient.failures`, read from the tasks' logs
  through the REST API, with :func:`task_log_path` for the file.

Imported by the DAG files at parse time: no Airflow import at module level.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

XCOM_KEY = "bertops_failure"
NOT_RETRIED = "not retried: the same input fails again"
RETRYING = "retried after a delay"
# Airflow's default log_filename_template (no map index: bertops maps no task).
_LOG_TEMPLATE = "dag_id={dag_id}/run_id={run_id}/task_id={task_id}/attempt={try_number}.log"


def task_log_path(
    base_log_folder: Path | str, dag_id: str, run_id: str, task_id: str, try_number: int
) -> str:
    """The file Airflow's local task handler writes one try of a task to."""
    return str(
        Path(base_log_folder)
        / _LOG_TEMPLATE.format(dag_id=dag_id, run_id=run_id, task_id=task_id, try_number=try_number)
    )


def describe(failure: dict[str, Any]) -> str:
    """``"<task> failed (try N of M[, not retried: ...]): <first error>"``."""
    tries, number = int(failure.get("tries") or 1), int(failure.get("try_number") or 1)
    retried = f", {RETRYING}" if failure.get("retrying") else f", {NOT_RETRIED}" if number < tries else ""
    return f"{failure['task_id']} failed (try {number} of {tries}{retried}): {failure['first_error']}"


def first_line(exc: BaseException | None) -> str:
    """``"<ExceptionType>: <first line of its message>"``, the line a user acts on."""
    if exc is None:
        return "(the task ended without an exception: its process was killed or lost; see its log)"
    text = str(exc).strip()
    head = text.splitlines()[0] if text else "(no message)"
    return f"{type(exc).__name__}: {head}"


def _base_log_folder() -> str:
    try:
        from airflow.configuration import conf

        return str(conf.get("logging", "base_log_folder"))
    except Exception:  # outside Airflow (tests): its default under AIRFLOW_HOME
        return str(Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "logs")


def record(context: dict[str, Any]) -> dict[str, Any]:
    """The failure record of the task instance in ``context`` (an Airflow callback's context)."""
    ti = context["ti"]
    number = int(getattr(ti, "try_number", 1) or 1)
    return {
        "task_id": ti.task_id,
        "try_number": number,
        "tries": int(getattr(ti, "max_tries", 0) or 0) + 1,
        "first_error": first_line(context.get("exception")),
        "log_path": task_log_path(_base_log_folder(), ti.dag_id, ti.run_id, ti.task_id, number),
    }


def on_task_retry(context: dict[str, Any]) -> None:
    """``on_retry_callback`` of every bertops task: the try's line in its own log, saying it will be retried."""
    failure = {**record(context), "retrying": True}
    log.warning("bertops: %s; full log: %s", describe(failure), failure["log_path"])


def on_task_failure(context: dict[str, Any]) -> None:
    """``on_failure_callback`` of every bertops task: log the failure's line and keep it as an XCom."""
    failure = record(context)
    log.error("bertops: %s; full log: %s", describe(failure), failure["log_path"])
    try:
        context["ti"].xcom_push(XCOM_KEY, failure)
    except Exception as exc:  # a callback run outside the task's process cannot push
        log.warning("could not keep the failure record as an XCom: %s", exc)


def run_failures(context: dict[str, Any], task_ids: tuple[str, ...]) -> list[dict[str, Any]]:
    """The failure records of ``task_ids`` in the DAG run of ``context`` (a task's context), in task order.

    A task whose state is ``failed`` but that left no record (its process was killed, so its callback ran
    elsewhere) gets a record that says so."""
    ti = context["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, task_ids=list(task_ids), run_ids=[ti.run_id])
    states = states.get(ti.run_id, states) if isinstance(states, dict) else {}  # {run_id: {task_id: state}}
    out = []
    for task_id in task_ids:
        if states.get(task_id) != "failed":
            continue
        found = ti.xcom_pull(task_ids=task_id, key=XCOM_KEY)
        out.append(
            found
            if isinstance(found, dict)
            else {
                "task_id": task_id,
                "try_number": 1,
                "tries": 1,
                "first_error": first_line(None),
                "log_path": None,
            }
        )
    return out


__all__ = ["XCOM_KEY", "describe", "on_task_failure", "record", "run_failures", "task_log_path"]
