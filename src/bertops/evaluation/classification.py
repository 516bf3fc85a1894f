"""Evaluate a classifier on the held-out test split: metrics, length slices, latency, reviewer files, one run.

    result = evaluate_classification("artifacts/finetune/bundle", "data/split/classification/test.jsonl",
                                     cfg.evaluation, tracking_uri=cfg.tracking_uri())
    result.metrics["accuracy"], result.run_id, result.output_dir

(:func:`bertops.evaluation.evaluate.evaluate` dispatches here for classification bundles and models.)
What it does, in order, failing before any output is touched:

1. reads the test JSONL (``{"text", "label", ...}`` a line) and checks every label is in the model's label map
   (a different label map is a :class:`~bertops.evaluation.errors.LabelMapMismatch` naming file, row, label);
2. predicts class probabilities for every text, through the same code a served model runs: a bundle's
   ``predict_proba``, or for ``models:/``/``runs:/`` URIs the logged MLflow pyfunc itself;
3. computes the metrics of :mod:`bertops.evaluation.metrics` plus length slices and batch-1/batch-32 latency;
4. writes the reviewer artifacts (:mod:`bertops.evaluation.artifacts`) into ``output_dir`` atomically (the
   DVC metrics/plots files) and logs metrics, artifacts and tags on one MLflow run of the evaluation experiment.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bertops.evaluation.errors import EvaluationError, LabelMapMismatch
from bertops.evaluation.result import MODEL_URI_SCHEMES, EvaluationResult, connect_tracking, publish

if TYPE_CHECKING:
    from bertops.config import EvaluationConfig

logger = logging.getLogger(__name__)
PROB_PREFIX = "prob_"


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
            "(bertops.evaluation.evaluate.evaluate and `bertops evaluate` dispatch on the bundle's task)"
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


def evaluate_classification(
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
    connect_tracking(tracking_uri)
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
            task="classification",
        )
    return EvaluationResult(str(source), metrics, candidate.labels, run_id, final_dir, test.sha256)
