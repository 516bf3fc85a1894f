"""Evaluate a candidate on the held-out test split: classifiers here, NER and pretraining bundles alongside.

    result = evaluate("artifacts/finetune/bundle", "data/split/classification/test.jsonl", cfg.evaluation,
                      tracking_uri=cfg.tracking_uri(), experiment=cfg.tracking.evaluation_experiment)
    result.metrics["accuracy"], result.run_id, result.output_dir

    # any bundle: dispatch on its task (classification, ner, pretraining); test data from the data layout
    result = evaluate_any("artifacts/finetune-ner", None, cfg.evaluation, layout=DataLayout(Path("data")))

NER (:func:`bertops.evaluation.ner.evaluate_ner`) and pretraining
(:func:`bertops.evaluation.pretraining.evaluate_pretraining`) share this module's result type and the way the
files and the MLflow run are published (:func:`publish`).

What classification evaluation does, in order, failing before any output is touched:

1. reads the test JSONL (``{"text", "label", ...}`` a line) and checks every label is in the model's label map
   (a different label map is an :class:`EvaluationError` naming the file, row and label);
2. predicts class probabilities for every text, through the same code a served model runs: a bundle's
   ``predict_proba``, or for ``models:/``/``runs:/`` URIs the logged MLflow pyfunc itself;
3. computes the metrics of :mod:`bertops.evaluation.metrics` plus length slices and batch-1/batch-32 latency;
4. writes the reviewer artifacts (:mod:`bertops.evaluation.artifacts`) into ``output_dir`` atomically (the
   DVC metrics/plots files) and logs metrics, artifacts and tags on one MLflow run of the evaluation experiment.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bertops.registry.errors import EvaluationError, LabelMapMismatch

if TYPE_CHECKING:
    from bertops.config import EvaluationConfig
    from bertops.paths import DataLayout

logger = logging.getLogger(__name__)
MODEL_URI_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
PROB_PREFIX = "prob_"
TAG_MODEL = "bertops.evaluated_model"
TAG_TEST_SHA = "bertops.test_data_sha256"


@dataclass
class Candidate:
    """What evaluation needs of a model: its labels, a probability function and a word-piece counter."""

    source: str
    labels: list[str]
    predict_proba: Callable[[Sequence[str]], np.ndarray]
    count_pieces: Callable[[Sequence[str]], np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TestSet:
    path: Path
    texts: list[str]
    labels: list[str]
    sha256: str


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

    def summary(self) -> str:
        """``entity_f1=0.8123 token_accuracy=0.9612`` (the task's headline metrics)."""
        keys = HEADLINE.get(self.task, ())
        return " ".join(f"{k}={self.metrics[k]:.4f}" for k in keys if k in self.metrics)


def _piece_counter(tokenizer: Any) -> Callable[[Sequence[str]], np.ndarray]:
    from bertops.data.tokenizer import tokenize_ids

    def count(texts: Sequence[str]) -> np.ndarray:
        return np.asarray([len(ids) for ids in tokenize_ids(tokenizer, list(texts))], dtype=np.int64)

    return count


def _from_bundle(path: Path) -> Candidate:
    from bertops.model.bundle import load_bundle

    bundle = load_bundle(path)
    if bundle.task != "classification" or not bundle.labels:
        raise EvaluationError(
            f"{path}: a {bundle.task!r} bundle cannot be evaluated as a classifier "
            "(evaluate_any and `bertops evaluate` dispatch on the bundle's task)"
        )
    return Candidate(
        str(path), list(bundle.labels), bundle.predict_proba, _piece_counter(bundle.tokenizer), bundle.meta
    )


def _from_mlflow(uri: str, workdir: Path) -> Candidate:
    """Download an MLflow model, load it as a pyfunc and find its tokenizer (the bundle inside it)."""
    import mlflow

    from bertops.model.bundle import META_FILE, VOCAB_FILE, bundle_settings, read_labels, read_meta

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(workdir)))
    model = mlflow.pyfunc.load_model(str(local))
    metas = sorted(local.rglob(META_FILE))
    if not metas:
        raise EvaluationError(f"{uri}: the MLflow model holds no bertops bundle ({META_FILE} not found)")
    bundle_dir = metas[0].parent
    meta = read_meta(bundle_dir)
    labels = read_labels(bundle_dir) or []
    tokenizer = bundle_settings(bundle_dir, meta).tokenizer(bundle_dir / VOCAB_FILE)  # as the model encodes
    columns = [f"{PROB_PREFIX}{label}" for label in labels]

    def predict_proba(texts: Sequence[str]) -> np.ndarray:
        import pandas as pd

        out = model.predict(pd.DataFrame({"text": list(texts)}))
        missing = [c for c in columns if c not in out.columns]
        if missing:
            raise EvaluationError(
                f"{uri}: the model's output lacks columns {missing} (has {list(out.columns)})"
            )
        return out[columns].to_numpy(dtype=np.float64)

    return Candidate(uri, labels, predict_proba, _piece_counter(tokenizer), meta)


def load_candidate(source: str | Path, workdir: Path) -> Candidate:
    """A bundle directory, or an MLflow model URI (``models:/name/3``, ``models:/name@champion``, ``runs:/``)."""
    text = str(source)
    if text.startswith(MODEL_URI_SCHEMES):
        return _from_mlflow(text, workdir)
    path = Path(text)
    if not path.is_dir():
        raise EvaluationError(f"model {text!r} is neither a bundle directory nor an MLflow model URI")
    return _from_bundle(path)


def read_test_set(path: str | Path) -> TestSet:
    """Texts and labels of a classification JSONL split; a bad row raises ``DataError`` naming it."""
    from bertops.data.errors import DataError
    from bertops.data.io import read_jsonl

    path = Path(path)
    texts, labels = [], []
    for row, rec in enumerate(read_jsonl(path), start=1):
        for key in ("text", "label"):
            if not isinstance(rec.get(key), str):
                raise DataError(f"expected a string {key!r}", file=str(path), row=row, field=key)
        texts.append(rec["text"])
        labels.append(rec["label"])
    if not texts:
        raise EvaluationError(f"{path}: the test set is empty")
    return TestSet(path, texts, labels, hashlib.sha256(path.read_bytes()).hexdigest())


def label_indices(test: TestSet, model_labels: Sequence[str], source: str) -> np.ndarray:
    """Indices of the test labels in the model's label map; an unknown label names file, row and maps."""
    index = {label: i for i, label in enumerate(model_labels)}
    out = np.empty(len(test.labels), dtype=np.int64)
    for row, label in enumerate(test.labels):
        if label not in index:
            raise LabelMapMismatch(
                f"{test.path}, row {row + 1}, field 'label': {label!r} is not in the label map "
                f"{list(model_labels)} of model {source}; the test set and the model use different label maps"
            )
        out[row] = index[label]
    return out


def compute_metrics(
    candidate: Candidate, test: TestSet, cfg: EvaluationConfig
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Every metric of one candidate on one test set; returns ``(metrics, y, probs)``."""
    from bertops.evaluation.latency import measure_latency
    from bertops.evaluation.metrics import classification_metrics, slice_metrics

    y = label_indices(test, candidate.labels, candidate.source)
    probs = np.asarray(candidate.predict_proba(test.texts), dtype=np.float64)
    if probs.shape != (len(test.texts), len(candidate.labels)):
        raise EvaluationError(
            f"{candidate.source}: predicted shape {probs.shape}, expected "
            f"({len(test.texts)}, {len(candidate.labels)})"
        )
    probs = probs / probs.sum(axis=1, keepdims=True)  # float32 softmax rows sum to 1 only within ~1e-7
    metrics = classification_metrics(y, probs, candidate.labels, cfg.calibration_bins)
    metrics.update(slice_metrics(y, probs, candidate.count_pieces(test.texts), cfg.length_buckets))
    metrics.update(measure_latency(candidate.predict_proba, test.texts, (1, 32), cfg.latency_repeats))
    return metrics, y, probs


def evaluate(
    source: str | Path,
    test_file: str | Path,
    cfg: EvaluationConfig,
    *,
    output_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = "bertops-evaluation",
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> EvaluationResult:
    """Evaluate ``source`` on ``test_file``; write DVC files to ``output_dir`` and log to MLflow when given."""
    if tracking_uri is not None:
        from bertops.registry.client import connect

        connect(tracking_uri)  # an unreachable server fails here, before any work or output
    test = read_test_set(test_file)
    with tempfile.TemporaryDirectory(prefix="bertops-eval-") as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        candidate = load_candidate(source, model_dir)
        metrics, y, probs = compute_metrics(candidate, test, cfg)
        logger.info(
            "evaluated %s on %s (%d examples): accuracy=%.4f macro_f1=%.4f",
            candidate.source,
            test.path,
            len(y),
            metrics["accuracy"],
            metrics["macro_f1"],
        )

        from bertops.evaluation.artifacts import write_artifacts

        art_dir = Path(tmp) / "report"
        art_dir.mkdir()
        write_artifacts(
            art_dir, test.texts, y, probs, candidate.labels, metrics, cfg.calibration_bins, cfg.worst_examples
        )
        params = {
            "model": candidate.source,
            "test_file": str(test.path),
            "num_examples": len(test.texts),
            "labels": ",".join(candidate.labels),
        }
        run_id, final_dir = publish(
            art_dir,
            metrics,
            source=candidate.source,
            test_sha256=test.sha256,
            params=params,
            output_dir=output_dir,
            tracking_uri=tracking_uri,
            experiment=experiment,
            run_name=run_name,
            tags=tags,
        )
    return EvaluationResult(str(source), metrics, candidate.labels, run_id, final_dir, test.sha256)


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
) -> tuple[str | None, Path | None]:
    """Log the evaluation run (when ``tracking_uri``) and swap ``art_dir``'s files into ``output_dir`` atomically.

    Returns ``(run_id, output_dir)``, each None when not asked for.
    """
    run_id = None
    if tracking_uri is not None:
        run_id = _log_run(art_dir, metrics, source, test_sha256, params, experiment, run_name, tags or {})
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
    source: str,
    test_sha256: str,
    params: dict[str, Any],
    experiment: str,
    run_name: str | None,
    tags: dict[str, str],
) -> str:
    import mlflow

    mlflow.set_experiment(experiment)
    all_tags = {TAG_MODEL: source, TAG_TEST_SHA: test_sha256, **tags}
    with mlflow.start_run(run_name=run_name, tags=all_tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(art_dir), artifact_path="evaluation")
        return run.info.run_id


# ------------------------------------------------------------------------------------------ any task
def bundle_task(source: str | Path) -> str:
    """The task of a candidate: an MLflow model URI is a classifier (the logged pyfunc), a bundle says its own."""
    from bertops.model.bundle import BundleError, read_meta

    text = str(source)
    if text.startswith(MODEL_URI_SCHEMES):
        return "classification"
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


def evaluate_any(
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
    """Evaluate any candidate, dispatching on its task: :func:`evaluate` (classification),
    :func:`~bertops.evaluation.ner.evaluate_ner`, :func:`~bertops.evaluation.pretraining.evaluate_pretraining`.

    ``test_data`` None takes the task's default from ``layout`` (:func:`default_test_data`). ``split``,
    ``max_batches`` and ``batch_size`` apply to pretraining records (``batch_size`` also to NER).
    """
    task = bundle_task(source)
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
        return evaluate(source, test_data, cfg, **common)
    if task == "ner":
        from bertops.evaluation.ner import evaluate_ner

        return evaluate_ner(source, test_data, cfg, batch_size=batch_size, **common)
    if task == "pretraining":
        from bertops.evaluation.pretraining import evaluate_pretraining

        return evaluate_pretraining(
            source, test_data, cfg, split=split, max_batches=max_batches, batch_size=batch_size, **common
        )
    raise AssertionError(task)  # pragma: no cover  (HEADLINE lists the tasks handled above)


def _no_evaluation(task: str) -> str:
    return f"a {task!r} bundle has no evaluation (evaluate a classification, ner or pretraining bundle)"
