"""MLflow tracking of training runs: the run, its tags, params, metrics and artifacts.

The driver opens the run before Ray starts (so the run id exists even if training fails), logs the resolved
config as params and the lineage tags, and after training logs the artifacts and closes the run. The rank-0
worker logs per-step metrics into the same run by id (:class:`MetricLogger`): Ray Train V2 refuses Tune's
MLflow callback, and logging from inside the loop needs no callback at all.

Tags (``docs/architecture.md``): ``bertops.git_commit``, ``bertops.data_version`` (:mod:`bertops.data.version`
of the run's inputs), ``bertops.ray_job_id``, ``bertops.airflow_run_id``, ``bertops.pretrain_run_id``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bertops.data import version

log = logging.getLogger(__name__)

TAG_GIT_COMMIT = "bertops.git_commit"
TAG_DATA_VERSION = "bertops.data_version"
TAG_RAY_JOB_ID = "bertops.ray_job_id"
TAG_AIRFLOW_RUN_ID = "bertops.airflow_run_id"
TAG_PRETRAIN_RUN_ID = "bertops.pretrain_run_id"
TAG_KIND = "bertops.kind"  # pretrain | finetune
TAG_TRAINED = "bertops.trained"  # JSON: what was trained, read back from the bundle (bertops.model.lineage)
AIRFLOW_RUN_ENV = "BERTOPS_AIRFLOW_RUN_ID"
# Set by the retrain DAG (bertops.orchestration.tasks.LINEAGE_ENV): what the run asked for and the data it got.
RUN_LINEAGE_ENV = {
    "BERTOPS_OVERRIDES": "bertops.overrides",
    "BERTOPS_DVC_EXPERIMENT": "bertops.dvc_experiment",
    "BERTOPS_DVC_REV": "bertops.dvc_rev",
    "BERTOPS_DATA_VERSION": "bertops.dvc_data_version",
}
UNVERSIONED = "unversioned"


def git_commit(cwd: str | Path = ".") -> str:
    """The checked-out commit (``<sha>-dirty`` with uncommitted changes), or ``unknown`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def data_version(inputs: Iterable[str | Path], lock_file: str | Path = "dvc.lock") -> str:
    """The data version of a run's ``inputs``, in the one format bertops records (:mod:`bertops.data.version`).

    A retrain prepares its data and says which version it is (``BERTOPS_DATA_VERSION``, set by the DAG for the
    run's own snapshot). Otherwise the inputs are the workspace's: the version of ``lock_file`` when every input
    lies under one of its outputs, else ``unversioned`` (data the lock does not describe has no version).
    """
    prepared = os.environ.get("BERTOPS_DATA_VERSION")
    if prepared:
        return prepared
    lock = Path(lock_file)
    loose = version.covered_by_lock(inputs, lock)
    if loose:
        log.warning("data not versioned by %s: %s", lock, ", ".join(loose))
        return UNVERSIONED
    return version.data_version(lock) or UNVERSIONED


def ray_job_id() -> str | None:
    """The Ray job submission id when running as ``ray job submit``, else the Ray job id of this driver."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if raw:
        try:
            sub = json.loads(raw).get("metadata", {}).get("job_submission_id")
        except json.JSONDecodeError:
            sub = None
        if sub:
            return str(sub)
    if os.environ.get("RAY_JOB_ID"):
        return os.environ["RAY_JOB_ID"]
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_job_id()
    except Exception:  # the id is best effort: a tag, not a requirement
        log.debug("no Ray runtime context for the job id", exc_info=True)
    return None


def lineage_tags(
    kind: str, inputs: Iterable[str | Path], pretrain_run_id: str | None = None
) -> dict[str, str]:
    """Every tag a training run carries (values that are unknown are left out)."""
    tags = {TAG_KIND: kind, TAG_GIT_COMMIT: git_commit(), TAG_DATA_VERSION: data_version(inputs)}
    job = ray_job_id()
    if job:
        tags[TAG_RAY_JOB_ID] = job
    if os.environ.get(AIRFLOW_RUN_ENV):
        tags[TAG_AIRFLOW_RUN_ID] = os.environ[AIRFLOW_RUN_ENV]
    if pretrain_run_id:
        tags[TAG_PRETRAIN_RUN_ID] = pretrain_run_id
    tags.update({tag: os.environ[env] for env, tag in RUN_LINEAGE_ENV.items() if os.environ.get(env)})
    return tags


def open_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    existing_run_id: str | None = None,
) -> str:
    """Create (or, with ``existing_run_id``, reopen) the run; log params and tags; return the run id."""
    from mlflow import MlflowClient
    from mlflow.entities import Param, RunTag

    client = MlflowClient(tracking_uri)
    if existing_run_id:
        client.update_run(existing_run_id, status="RUNNING")
        client.set_tag(existing_run_id, "bertops.resumed", "true")
        return existing_run_id
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=run_name, tags=dict(tags))
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow's per-request limit on params
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return run.info.run_id


def close_run(
    tracking_uri: str,
    run_id: str,
    *,
    status: str = "FINISHED",
    metrics: Mapping[str, float] | None = None,
    artifacts: Mapping[str, str | Path] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Log final metrics (``final_*``), artifacts (``{artifact_path: local file or dir}``), tags; end the run."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    if metrics:
        client.log_batch(run_id, metrics=[Metric(f"final_{k}", float(v), now, 0) for k, v in metrics.items()])
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    for artifact_path, local in (artifacts or {}).items():
        local = Path(local)
        if local.is_dir():
            client.log_artifacts(run_id, str(local), artifact_path=artifact_path)
        elif local.is_file():
            client.log_artifact(run_id, str(local), artifact_path=artifact_path or None)
    client.set_terminated(run_id, status=status)


class MetricLogger:
    """Per-step metrics into an existing run, from the rank-0 worker (batched; never raises into training).

    Sending happens on a background thread, started by the first ``log``/``set_tags``: MLflow's import and its
    store's first connection (about 2.5 s on 2 cores) and every ``log_batch`` overlap the train steps instead
    of delaying the first one. Each metric keeps the time of its ``log`` call. ``flush`` waits until everything
    queued is sent; ``close`` flushes and stops the thread (the loop closes its logger before the final report).

    Also the progress relay: with ``total_steps`` the first batch carries a ``total_steps`` metric, so that a
    watcher (``bertops finetune``'s live display, ``bertops retrain --wait``) shows step / total and an ETA.
    """

    def __init__(self, tracking_uri: str, run_id: str, total_steps: int | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._pending_total = total_steps
        self._queue: queue.Queue[tuple[str, Any, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self._pending_total is not None:
            metrics = {**metrics, "total_steps": self._pending_total}
            self._pending_total = None
        now = int(time.time() * 1000)
        self._put(("metrics", [(k, float(v), now) for k, v in metrics.items() if v is not None], step))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tags on the run (e.g. the dtype policy ``auto`` resolved to on the worker); never raises."""
        self._put(("tags", dict(tags), 0))

    def flush(self) -> None:
        """Block until every metric and tag queued so far has been sent (or its failure logged)."""
        if self._thread is not None:
            self._queue.join()

    def close(self, timeout: float = 60.0) -> None:
        """Send what is queued, then stop the thread (waits at most ``timeout`` seconds)."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("MLflow run %s: metrics still unsent after %.0f s", self.run_id, timeout)
        self._thread = None

    def _put(self, item: tuple[str, Any, int]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._send_all, name="bertops-metrics", daemon=True)
            self._thread.start()
        self._queue.put(item)

    def _send_all(self) -> None:
        client = None
        try:
            from mlflow import MlflowClient

            client = MlflowClient(self.tracking_uri)
        except Exception:  # a tracking hiccup must not kill hours of training
            log.warning("no MLflow client for %s: metrics of run %s are not logged", self.tracking_uri,
                        self.run_id, exc_info=True)  # fmt: skip
        while (item := self._queue.get()) is not None:
            try:
                if client is not None:
                    self._send(client, *item)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _send(self, client: Any, kind: str, payload: Any, step: int) -> None:
        from mlflow.entities import Metric, RunTag

        try:
            if kind == "metrics":
                client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v, ts in payload])
            else:
                client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in payload.items()])
        except Exception:  # as above
            log.warning(
                "could not log %s at step %d to MLflow run %s", kind, step, self.run_id, exc_info=True
            )
