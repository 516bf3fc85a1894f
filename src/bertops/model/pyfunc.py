"""The classifier as an MLflow pyfunc model: raw text in, a DataFrame of labels and probabilities out.

    with mlflow.start_run():
        info = log_classifier("artifacts/finetune/bundle", name="model")
    model = mlflow.pyfunc.load_model(info.model_uri)
    model.predict(["a fine film", "a dull one"])     # or pd.DataFrame({"text": [...]})
    #        label  probability  prob_negative  prob_positive
    # 0   positive         0.91           0.09           0.91

    info = log_bundle("artifacts/finetune-ner")      # any task: the classifier or the NER model (ner_pyfunc)

Tokenisation happens inside the model (the bundle's vocab and settings), so a client sends plain strings.
The logged artifacts are the bundle directory itself (``artifacts/bundle``); the model carries a signature, an
input example and exact pip pins of the running environment, plus the ``bertops`` package as code
(:mod:`bertops.model.pyfunc_common`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertops.model.bundle import BundleError, read_labels, read_meta
from bertops.model.ner_pyfunc import log_ner_model
from bertops.model.pyfunc_common import (
    BUNDLE_ARTIFACT,
    TEXT_COLUMN,
    bundle_metadata,
    log_pyfunc,
    pinned_requirements,
    texts_from_input,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from mlflow.models.model import ModelInfo

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_ARTIFACT",
    "TEXT_COLUMN",
    "log_bundle",
    "log_classifier",
    "pinned_requirements",
    "probabilities_frame",
    "texts_from_input",
]
DEFAULT_EXAMPLE = ["a moving, beautifully acted film", "dull and far too long"]


def probabilities_frame(probs: Any, labels: Sequence[str]) -> pd.DataFrame:
    """``label``, ``probability`` (of that label) and ``prob_<label>`` per class, in label-map order."""
    import numpy as np
    import pandas as pd

    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(labels))
    best = probs.argmax(axis=1)
    frame = pd.DataFrame(
        {
            "label": [labels[i] for i in best],
            "probability": probs[np.arange(len(best)), best] if len(best) else [],
        }
    )
    for j, label in enumerate(labels):
        frame[f"prob_{label}"] = probs[:, j]
    return frame


def _python_model() -> Any:
    import mlflow

    class BertClassifierModel(mlflow.pyfunc.PythonModel):
        """Loads the bundle once per process; ``predict`` tokenises and classifies in batches."""

        def load_context(self, context: Any) -> None:
            from bertops.model.bundle import load_bundle

            self.bundle = load_bundle(context.artifacts[BUNDLE_ARTIFACT])

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            # No type hints here: MLflow would derive a schema from them; the signature is set explicitly.
            texts = texts_from_input(model_input)
            batch_size = int((params or {}).get("batch_size", 64))
            probs = self.bundle.predict_proba(texts, batch_size=batch_size)
            return probabilities_frame(probs, self.bundle.labels or [])

    return BertClassifierModel()


def log_classifier(
    bundle_dir: str | Path,
    name: str = "model",
    registered_model_name: str | None = None,
    input_example: Sequence[str] | None = None,
    metadata_extra: dict[str, Any] | None = None,
) -> ModelInfo:
    """Log a classification bundle as an MLflow pyfunc (in the active run, or a new one) and return its info.

    ``registered_model_name`` also registers a new version. The model's metadata carries the bundle's
    ``bertops.json`` fields (task, labels, max_seq_length, data_version, source_run_id).
    """
    import pandas as pd
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    bundle_dir = Path(bundle_dir)
    meta = read_meta(bundle_dir)
    if meta["task"] != "classification":
        raise BundleError(
            f"{bundle_dir}: log_classifier needs a classification bundle, got task {meta['task']!r}"
        )
    labels = read_labels(bundle_dir)
    if not labels:
        raise BundleError(f"{bundle_dir}: label_map.json is missing")
    example = pd.DataFrame({TEXT_COLUMN: list(input_example or DEFAULT_EXAMPLE)})
    output_example = probabilities_frame([[1.0 / len(labels)] * len(labels)] * len(example), labels)
    signature = infer_signature(example, output_example)
    # One unnamed string column: a list of str and a one-column DataFrame (``text`` or any name) both validate.
    signature.inputs = Schema([ColSpec("string")])
    signature.params = ParamSchema([ParamSpec("batch_size", "long", 64)])
    info = log_pyfunc(
        bundle_dir,
        _python_model(),
        name=name,
        signature=signature,
        input_example=example,
        model_metadata={**bundle_metadata(bundle_dir), **(metadata_extra or {})},
        registered_model_name=registered_model_name,
    )
    logger.info("logged pyfunc %s (labels %s)", info.model_uri, labels)
    return info


def log_bundle(bundle_dir: str | Path, name: str = "model", **kwargs: Any) -> ModelInfo:
    """Log a classification or NER bundle as its task's pyfunc (:func:`log_classifier`, :func:`log_ner_model`)."""
    task = read_meta(bundle_dir)["task"]
    if task == "classification":
        return log_classifier(bundle_dir, name=name, **kwargs)
    if task == "ner":
        return log_ner_model(bundle_dir, name=name, **kwargs)
    raise BundleError(f"{bundle_dir}: a {task!r} bundle has no MLflow model (classification or ner only)")
