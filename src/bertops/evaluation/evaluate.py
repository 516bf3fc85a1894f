"""``evaluate()``: evaluate any candidate on its held-out data, dispatching on the model's task.

    result = evaluate("artifacts/finetune/bundle", "data/split/classification/test.jsonl", cfg.evaluation,
                      tracking_uri=cfg.tracking_uri(), experiment=cfg.tracking.evaluation_experiment)
    result.metrics["accuracy"], result.run_id, result.output_dir

    # test data from the data layout when not given; NER and pretraining bundles alike
    result = evaluate("artifacts/finetune-ner", None, cfg.evaluation, layout=DataLayout(Path("data")))

    # a registered version on a test file and data version: evaluated once, read back afterwards
    result = evaluate_version("bert-ner", "3", test_file, cfg.evaluation, tracking_uri=uri,
                              experiment="bertops-evaluation", data_version="a1b2c3", role="champion")

One module per task does the work: :mod:`~bertops.evaluation.classification`, :mod:`~bertops.evaluation.ner`,
:mod:`~bertops.evaluation.pretraining`; they share the result type and publishing of
:mod:`~bertops.evaluation.result`. The evaluation package imports nothing of the registry or orchestration
(they import it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertops.evaluation.classification import evaluate_classification
from bertops.evaluation.errors import EvaluationError
from bertops.evaluation.ner import evaluate_ner
from bertops.evaluation.pretraining import evaluate_pretraining
from bertops.evaluation.result import (
    HEADLINE,
    MODEL_URI_SCHEMES,
    TAG_DATA_VERSION,
    TAG_MODEL_NAME,
    TAG_MODEL_VERSION,
    TAG_TEST_SHA,
    EvaluationResult,
    find_evaluation,
)
from bertops.tracking_client import connect

if TYPE_CHECKING:
    from bertops.config import EvaluationConfig
    from bertops.paths import DataLayout

TASK_METADATA_KEY = "bertops_task"  # in a logged MLflow model's metadata (bertops.model.pyfunc)
TAG_ROLE = "bertops.role"


def model_task(source: str | Path) -> str:
    """The task of a candidate: a bundle says its own; a logged MLflow model says it in its metadata."""
    from bertops.model.bundle import BundleError, read_meta

    text = str(source)
    if text.startswith(MODEL_URI_SCHEMES):
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            metadata = mlflow.models.get_model_info(text).metadata or {}
        except (MlflowException, OSError) as exc:
            raise EvaluationError(f"model {text!r}: cannot read its MLflow model metadata ({exc})") from None
        return str(metadata.get(TASK_METADATA_KEY, "classification"))  # models logged before NER existed
    if not Path(text).is_dir():
        raise EvaluationError(f"model {text!r} is neither a bundle directory nor an MLflow model URI")
    try:
        return str(read_meta(text)["task"])
    except BundleError as exc:
        raise EvaluationError(str(exc)) from None


def default_test_data(task: str, layout: DataLayout) -> Path:
    """Where the data stages put a task's held-out data: the test split JSONL (classification, NER; the
    words, so predictions map back to them) or the pretraining manifest (its ``heldout`` split)."""
    from bertops.paths import MANIFEST

    if task in ("classification", "ner"):
        return layout.split_file(task, "test")
    if task == "pretraining":
        return layout.pretrain_dir / MANIFEST
    raise EvaluationError(_no_evaluation(task))


def default_output_dir(base: str | Path, task: str) -> Path:
    """``evaluation.output_dir`` for classification (the DVC metrics/plots), ``<it>-ner``/``<it>-pretraining``
    for the other tasks: siblings, so one task's atomic swap never replaces another's files."""
    base = Path(base)
    return base if task == "classification" else base.with_name(f"{base.name}-{task}")


def evaluate(
    source: str | Path,
    test_data: str | Path | None,
    cfg: EvaluationConfig,
    *,
    layout: DataLayout | None = None,
    output_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = "bertops-evaluation",
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    split: str = "heldout",
    max_batches: int | None = None,
    batch_size: int = 32,
) -> EvaluationResult:
    """Evaluate any candidate (bundle directory or MLflow model URI), dispatching on its task.

    ``test_data`` None takes the task's default from ``layout`` (:func:`default_test_data`). ``split``,
    ``max_batches`` and ``batch_size`` apply to pretraining records (``batch_size`` also to NER).
    """
    task = model_task(source)
    if task not in HEADLINE:
        raise EvaluationError(f"{source}: {_no_evaluation(task)}")
    if test_data is None:
        if layout is None:
            raise EvaluationError(f"no test data given for the {task} model {source} (and no data layout)")
        test_data = default_test_data(task, layout)
    common: dict[str, Any] = {
        "output_dir": output_dir,
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "run_name": run_name,
        "tags": tags,
    }
    if task == "classification":
        return evaluate_classification(source, test_data, cfg, **common)
    if task == "ner":
        return evaluate_ner(source, test_data, cfg, batch_size=batch_size, **common)
    return evaluate_pretraining(
        source, test_data, cfg, split=split, max_batches=max_batches, batch_size=batch_size, **common
    )


def version_key(name: str, version: str, test_file: str | Path, data_version: str | None) -> dict[str, str]:
    """The tags that identify an evaluation of a registered version: nothing in them changes its metrics."""
    sha = hashlib.sha256(Path(test_file).read_bytes()).hexdigest()
    return {
        TAG_MODEL_NAME: name,
        TAG_MODEL_VERSION: str(version),
        TAG_TEST_SHA: sha,
        TAG_DATA_VERSION: data_version or "unknown",
    }


def evaluate_version(
    name: str,
    version: str,
    test_file: str | Path,
    cfg: EvaluationConfig,
    *,
    tracking_uri: str,
    experiment: str,
    data_version: str | None,
    role: str,
) -> EvaluationResult:
    """The evaluation of registered ``name`` v``version`` on ``test_file`` at ``data_version``: read back from
    the evaluation run that has those tags when there is one, else made now (and tagged so, for next time)."""
    client = connect(tracking_uri)
    key = version_key(name, version, test_file, data_version)
    found = find_evaluation(client, experiment, key)
    if found is not None:
        return found
    return evaluate(
        f"models:/{name}/{version}",
        test_file,
        cfg,
        tracking_uri=tracking_uri,
        experiment=experiment,
        run_name=f"{name}-v{version}-{role}",
        tags={**key, TAG_ROLE: role},
    )


def _no_evaluation(task: str) -> str:
    return f"a {task!r} bundle has no evaluation (evaluate a classification, ner or pretraining bundle)"
