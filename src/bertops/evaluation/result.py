"""The result of an evaluation, and how one is published: DVC files swapped into place, one MLflow run.

    result = EvaluationResult(source, metrics, labels, run_id, output_dir, test_sha256, task="ner")
    run_id, final_dir = publish(art_dir, metrics, source=..., test_sha256=..., params=..., output_dir=...,
                                tracking_uri=..., experiment=..., run_name=..., tags=...)
    again = find_evaluation(client, "bertops-evaluation", {TAG_MODEL_NAME: "bert-ner", ...})  # or None

Every evaluation run carries the tags ``bertops.evaluated_model`` (the source), ``bertops.test_data_sha256``
(the test file's hash) and ``bertops.task``; callers add their own (a registered version's name and number,
the data version). :func:`find_evaluation` finds a finished run by such tags, so that an evaluation that
nothing can have changed (a registered version on the same test file and data version) is made once and read
back afterwards (:func:`bertops.evaluation.evaluate.evaluate_version`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertops.tracking_client import connect

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)
MODEL_URI_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
TAG_MODEL = "bertops.evaluated_model"
TAG_TEST_SHA = "bertops.test_data_sha256"
TAG_TASK = "bertops.task"
TAG_MODEL_NAME = "bertops.registered_model"
TAG_MODEL_VERSION = "bertops.model_version"
TAG_DATA_VERSION = "bertops.data_version"
PARAM_LABELS = "labels"

# The metrics a one-line summary shows, per task.
HEADLINE = {
    "classification": ("accuracy", "macro_f1"),
    "ner": ("entity_f1", "token_accuracy"),
    "pretraining": ("mlm_accuracy", "perplexity"),
}


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics of one evaluation, the MLflow run that holds them (None when not logged), and the files."""

    source: str
    metrics: dict[str, float]
    labels: list[str]
    run_id: str | None
    output_dir: Path | None
    test_sha256: str
    task: str = "classification"
    reused: bool = False  # read back from an earlier run by find_evaluation, not computed now

    def summary(self) -> str:
        """``entity_f1=0.8123 token_accuracy=0.9612`` (the task's headline metrics)."""
        keys = HEADLINE.get(self.task, ())
        return " ".join(f"{k}={self.metrics[k]:.4f}" for k in keys if k in self.metrics)


def connect_tracking(tracking_uri: str | None) -> None:
    """Fail before any work or output when the tracking server is unreachable (None: nothing is logged)."""
    if tracking_uri is not None:
        connect(tracking_uri)


def publish(
    art_dir: Path,
    metrics: dict[str, float],
    *,
    source: str,
    test_sha256: str,
    params: dict[str, Any],
    output_dir: str | Path | None,
    tracking_uri: str | None,
    experiment: str,
    run_name: str | None,
    tags: dict[str, str] | None,
    task: str = "classification",
) -> tuple[str | None, Path | None]:
    """Log the evaluation run (when ``tracking_uri``) and swap ``art_dir``'s files into ``output_dir`` atomically.

    Returns ``(run_id, output_dir)``, each None when not asked for.
    """
    run_id = None
    if tracking_uri is not None:
        all_tags = {TAG_MODEL: source, TAG_TEST_SHA: test_sha256, TAG_TASK: task, **(tags or {})}
        run_id = _log_run(art_dir, metrics, params, experiment, run_name, all_tags)
    final_dir = None
    if output_dir is not None:
        from bertops.data.io import atomic_dir

        with atomic_dir(output_dir) as staged:
            shutil.copytree(art_dir, staged, dirs_exist_ok=True)
        final_dir = Path(output_dir)
    return run_id, final_dir


def _log_run(
    art_dir: Path,
    metrics: dict[str, float],
    params: dict[str, Any],
    experiment: str,
    run_name: str | None,
    tags: dict[str, str],
) -> str:
    import mlflow

    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(art_dir), artifact_path="evaluation")
        return run.info.run_id


def result_of_run(client: MlflowClient, run_id: str) -> EvaluationResult:
    """An :class:`EvaluationResult` read back from a logged evaluation run (its metrics, labels and tags)."""
    run = client.get_run(run_id)
    tags, params = run.data.tags, run.data.params
    labels = [x for x in params.get(PARAM_LABELS, "").split(",") if x]
    return EvaluationResult(
        source=tags.get(TAG_MODEL, ""),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        labels=labels,
        run_id=run_id,
        output_dir=None,
        test_sha256=tags.get(TAG_TEST_SHA, ""),
        task=tags.get(TAG_TASK, "classification"),
        reused=True,
    )


def find_evaluation(client: MlflowClient, experiment: str, tags: dict[str, str]) -> EvaluationResult | None:
    """The newest finished evaluation run of ``experiment`` carrying every tag in ``tags``, or None."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    clauses = [f"tags.`{k}` = '{v}'" for k, v in sorted(tags.items())]
    clauses.append("attributes.status = 'FINISHED'")
    runs = client.search_runs(
        [found.experiment_id], " and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        return None
    logger.info("reusing evaluation run %s (%s)", runs[0].info.run_id, tags)
    return result_of_run(client, runs[0].info.run_id)
