"""Run work on a Ray cluster through the Ray Jobs API, idempotently across Airflow task retries.

A task's job gets a submission id derived from the DAG id, the DAG run id and the task id (never the try
number). A retried task therefore finds its job again instead of starting a second one:

- the job is still PENDING/RUNNING: re-attach, stream its logs, wait;
- it SUCCEEDED: take its result without running anything;
- it FAILED or was STOPPED: submit a fresh attempt under ``<id>-2``, ``<id>-3``, ... (Ray never reuses an id).

A job reports its outcome as one log line ``BERTOPS_RESULT {json}`` (the training entry points print it);
:func:`parse_result` reads the last such line. Logs are streamed into the caller's logger as they grow.

    runner = RayJobRunner("http://127.0.0.1:8265")
    outcome = runner.run(submission_id_for("bert_retrain", run_id, "finetune"), JobSpec("python x.py"), 3600)
    outcome.result["run_id"]
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bertops.training.job import CONFIG_ERROR_MARKER

log = logging.getLogger(__name__)

RESULT_MARKER = "BERTOPS_RESULT"
ACTIVE = frozenset({"PENDING", "RUNNING"})
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class RayJobError(RuntimeError):
    """A Ray job that failed, was stopped or timed out; the message carries its status and log tail."""


class RayJobConfigError(RayJobError):
    """A Ray job that refused its configuration (a ``BERTOPS_CONFIG_ERROR`` line): a retry fails the same way."""


def submission_id_for(dag_id: str, run_id: str, task_id: str) -> str:
    """A stable, URL-safe Ray submission id for one task of one DAG run (the same for every try).

    Readable parts plus a short hash of the exact strings, so that two run ids that sanitise alike
    (``a:b`` and ``a+b``) still differ.
    """
    digest = hashlib.sha256(f"{dag_id}\x00{run_id}\x00{task_id}".encode()).hexdigest()[:10]
    readable = "-".join(_UNSAFE.sub("_", p).strip("_") for p in (dag_id, task_id, run_id))
    return f"{readable[:90]}-{digest}"


def parse_result(logs: str, marker: str = RESULT_MARKER) -> dict[str, Any] | None:
    """The JSON of the last ``<marker> {json}`` line in ``logs``, or None when there is none."""
    for line in reversed(logs.splitlines()):
        idx = line.find(marker)
        if idx < 0:
            continue
        payload = line[idx + len(marker) :].strip()
        try:
            value = json.loads(payload)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def python_entrypoint(
    script: str, args: list[str], python: str = "python", workdir: str | None = None
) -> str:
    """A shell entrypoint ``cd <workdir> && <python> <script> <args...>``, every part quoted."""
    cmd = " ".join(shlex.quote(p) for p in [python, script, *args])
    return f"cd {shlex.quote(workdir)} && {cmd}" if workdir else cmd


@dataclass(frozen=True)
class JobSpec:
    """What to run: the shell entrypoint and its runtime environment (env vars, resources)."""

    entrypoint: str
    runtime_env: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    entrypoint_num_cpus: float | None = None


@dataclass(frozen=True)
class JobOutcome:
    """A finished job: its submission id, whether this call re-attached to it, and its BERTOPS_RESULT."""

    submission_id: str
    status: str
    attached: bool
    result: dict[str, Any] | None


class RayJobRunner:
    """Submit-or-re-attach, stream logs, wait with a timeout, stop. One instance per task execution."""

    def __init__(
        self,
        address: str,
        poll_interval_s: float = 2.0,
        log_sink: Callable[[str], None] | None = None,
    ) -> None:
        self.address = address
        self.poll_interval_s = poll_interval_s
        self.log_sink = log_sink or (lambda line: log.info("[ray job] %s", line))
        self._client: Any = None
        self.current_id: str | None = None  # the job this runner is waiting on (for stop on kill)

    @property
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            try:
                self._client = JobSubmissionClient(self.address)
            except Exception as exc:  # ConnectionError, RuntimeError: both mean "no Jobs API there"
                raise RayJobError(
                    f"cannot reach the Ray Jobs API at {self.address} ({exc}); start the stack "
                    "(`bertops stack up`) or set orchestration.ray_dashboard_url"
                ) from exc
        return self._client

    # -- lookup
    def info(self, submission_id: str) -> Any | None:
        """The job's ``JobDetails``, or None when no job has that id."""
        try:
            return self.client.get_job_info(submission_id)
        except RuntimeError as exc:
            if "404" in str(exc) or "does not exist" in str(exc):
                return None
            raise

    def attempts(self, base_id: str) -> list[tuple[str, Any]]:
        """Every job submitted under ``base_id`` so far, oldest first: ``[(id, JobDetails), ...]``."""
        found: list[tuple[str, Any]] = []
        n = 1
        while True:
            sid = base_id if n == 1 else f"{base_id}-{n}"
            details = self.info(sid)
            if details is None:
                return found
            found.append((sid, details))
            n += 1

    def submit_or_attach(self, base_id: str, spec: JobSpec) -> tuple[str, bool]:
        """Return ``(submission_id, attached)``: the live or succeeded job of ``base_id``, else a new one."""
        found = self.attempts(base_id)
        if found:
            sid, details = found[-1]
            status = str(details.status)
            if status in ACTIVE or status == "SUCCEEDED":
                log.info("re-attaching to Ray job %s (%s); not submitting another", sid, status)
                return sid, True
            log.info("previous Ray job %s ended %s; submitting a new attempt", sid, status)
        sid = base_id if not found else f"{base_id}-{len(found) + 1}"
        # The job learns its own id (training tags its MLflow run with it: bertops.ray_job_id).
        runtime_env = dict(spec.runtime_env or {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), "BERTOPS_RAY_JOB_ID": sid}
        self.client.submit_job(
            entrypoint=spec.entrypoint,
            submission_id=sid,
            runtime_env=runtime_env,
            metadata=spec.metadata or None,
            entrypoint_num_cpus=spec.entrypoint_num_cpus,
        )
        log.info("submitted Ray job %s: %s", sid, spec.entrypoint)
        return sid, False

    # -- waiting
    def wait(self, submission_id: str, timeout_s: float) -> tuple[str, str]:
        """Stream the job's logs until it ends; return ``(status, logs)``. Stops the job on timeout."""
        self.current_id = submission_id
        deadline = time.monotonic() + timeout_s
        shown = 0
        while True:
            status = str(self.client.get_job_status(submission_id))
            logs = self.client.get_job_logs(submission_id)
            if len(logs) > shown:
                for line in logs[shown:].splitlines():
                    self.log_sink(line)
                shown = len(logs)
            if status in TERMINAL:
                self.current_id = None
                return status, logs
            if time.monotonic() > deadline:
                self.stop(submission_id)
                raise RayJobError(
                    f"Ray job {submission_id} did not finish within {timeout_s:.0f}s; stopped it"
                )
            time.sleep(self.poll_interval_s)

    def stop(self, submission_id: str | None = None) -> bool:
        """Stop the job (default: the one being waited on). True when a running job was asked to stop."""
        sid = submission_id or self.current_id
        if not sid:
            return False
        try:
            stopped = bool(self.client.stop_job(sid))
        except RuntimeError as exc:
            log.warning("could not stop Ray job %s: %s", sid, exc)
            return False
        log.info("stop requested for Ray job %s: %s", sid, stopped)
        return stopped

    def run(self, base_id: str, spec: JobSpec, timeout_s: float) -> JobOutcome:
        """Submit (or re-attach), wait, and return the outcome; raise :class:`RayJobError` unless it succeeded."""
        sid, attached = self.submit_or_attach(base_id, spec)
        status, logs = self.wait(sid, timeout_s)
        if status != "SUCCEEDED":
            details = self.info(sid)
            message = getattr(details, "message", "") if details is not None else ""
            tail = "\n".join(logs.splitlines()[-30:])
            refused = parse_result(logs, CONFIG_ERROR_MARKER)
            if refused is not None:
                raise RayJobConfigError(f"Ray job {sid} refused its configuration: {refused.get('error')}")
            raise RayJobError(f"Ray job {sid} ended {status}: {message}\nlast log lines:\n{tail}")
        return JobOutcome(submission_id=sid, status=status, attached=attached, result=parse_result(logs))
