"""The Airflow operator that runs one Ray job per task: re-attaches on retry, stops the job on kill or timeout.

``RayJobOperator(task_id="finetune", build=<callable>)``: ``build(context)`` returns the job to run (a
:class:`~bertops.orchestration.ray_jobs.JobSpec` and the Ray dashboard URL) or raises ``AirflowSkipException``.
The submission id comes from the DAG id, the run id and the task id, so a retry finds the same job
(:mod:`bertops.orchestration.ray_jobs`). The job's logs stream into the task log. Only small ids go to XCom:
what ``on_result(outcome, context)`` returns.

A job that refuses its configuration (``BERTOPS_CONFIG_ERROR``) fails the task without retries.

Airflow calls ``on_kill`` when a task is killed (SIGTERM: marked failed/cleared in the UI) and when its
``execution_timeout`` expires; both stop the Ray job so no orphan keeps the cluster busy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from airflow.sdk import BaseOperator

from bertops.orchestration.ray_jobs import (
    JobOutcome,
    JobSpec,
    RayJobConfigError,
    RayJobRunner,
    submission_id_for,
)

log = logging.getLogger(__name__)

JobBuilder = Callable[[Any], tuple[str, JobSpec, float]]
ResultHandler = Callable[[JobOutcome, Any], Any]


class RayJobOperator(BaseOperator):
    """Run a Ray job for this task through the Ray Jobs API (see module docstring)."""

    ui_color = "#cfe8ff"

    def __init__(
        self,
        *,
        build: JobBuilder,
        on_result: ResultHandler | None = None,
        poll_interval_s: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.build = build
        self.on_result = on_result
        self.poll_interval_s = poll_interval_s
        self._runner: RayJobRunner | None = None

    def submission_id(self, context: Any) -> str:
        """The try-independent Ray submission id of this task in this DAG run."""
        return submission_id_for(self.dag_id, context["run_id"], self.task_id)

    def execute(self, context: Any) -> Any:
        address, spec, timeout_s = self.build(context)
        task_log = self.log
        self._runner = RayJobRunner(
            address, poll_interval_s=self.poll_interval_s, log_sink=lambda line: task_log.info("%s", line)
        )
        try:
            outcome = self._runner.run(self.submission_id(context), spec, timeout_s)
        except RayJobConfigError as exc:
            # Deterministic: the same config fails the same way on every try. Infrastructure errors
            # (RayJobError, unreachable cluster) keep the task's retries.
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from exc
        self.log.info(
            "Ray job %s %s (%s)",
            outcome.submission_id,
            outcome.status,
            "re-attached" if outcome.attached else "new",
        )
        if self.on_result is not None:
            return self.on_result(outcome, context)
        return {"ray_job_id": outcome.submission_id}

    def on_kill(self) -> None:
        """Stop the Ray job this task is waiting on (task killed, or its execution_timeout hit)."""
        if self._runner is not None and self._runner.current_id:
            self.log.warning("task killed: stopping Ray job %s", self._runner.current_id)
            self._runner.stop()
