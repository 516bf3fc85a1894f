"""The classifier as an MLflow pyfunc model: raw text in, a DataFrame of labels and probabilities out.

    with mlflow.start_run():
        info = log_classifier("artifacts/finetune/bundle", name="model")
    model = mlflow.pyfunc.load_model(info.model_uri)
    model.predict(["a fine film", "a dull one"])     # or pd.DataFrame({"text": [...]})
    #        label  probability  prob_negative  prob_positive
    # 0   positive         0.91           0.09           0.91

Tokenisation happens inside the model (the bundle's vocab and settings), so a client sends plain strings.
The logged artifacts are the bundle directory itself (``artifacts/bundle``); the model carries a signature, an
input example and exact pip pins of the running environment, plus the ``bertops`` package as code.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertops.model.bundle import BundleError, read_labels, read_meta

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from mlflow.models.model import ModelInfo

logger = logging.getLogger(__name__)

BUNDLE_ARTIFACT = "bundle"
TEXT_COLUMN = "text"
# Distributions the pyfunc needs at load time, pinned to the versions installed where it is logged.
REQUIREMENTS = ("mlflow", "tensorflow-cpu", "keras", "tokenizers", "numpy", "pandas", "pydantic", "pyyaml")
DEFAULT_EXAMPLE = ["a moving, beautifully acted film", "dull and far too long"]


def texts_from_input(model_input: Any) -> list[str]:
    """Accept list/tuple of str, a pandas Series, a one-column DataFrame (``text`` or any single column),
    a ``{"text": [...]}`` dict or a NumPy array; return the texts. Non-strings raise naming the row."""
    import numpy as np
    import pandas as pd

    if isinstance(model_input, str):
        texts: list[Any] = [model_input]
    elif isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN in model_input.columns:
            texts = model_input[TEXT_COLUMN].tolist()
        elif len(model_input.columns) == 1:
            texts = model_input.iloc[:, 0].tolist()
        else:
            raise ValueError(
                f"expected a one-column DataFrame or a {TEXT_COLUMN!r} column, got columns {list(model_input.columns)}"
            )
    elif isinstance(model_input, pd.Series | np.ndarray):
        texts = list(np.asarray(model_input).reshape(-1))
    elif isinstance(model_input, dict):
        if TEXT_COLUMN not in model_input:
            raise ValueError(f"expected a dict with key {TEXT_COLUMN!r}, got keys {sorted(model_input)}")
        texts = list(model_input[TEXT_COLUMN])
    elif isinstance(model_input, Sequence):
        texts = list(model_input)
    else:
        raise TypeError(f"unsupported input type {type(model_input).__name__}; send a list of strings")
    for row, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"row {row}: expected a string, got {type(t).__name__} ({t!r:.40})")
    return texts


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


def pinned_requirements() -> list[str]:
    """``name==version`` for each of :data:`REQUIREMENTS` installed here (missing ones are skipped)."""
    pins = []
    for dist in REQUIREMENTS:
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            logger.debug("%s not installed; not pinned", dist)
    return pins


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
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    import bertops

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
    model_metadata = {
        "bertops_task": meta["task"],
        "labels": labels,
        "max_seq_length": meta["max_seq_length"],
        "tokenizer": meta.get("tokenizer"),
        "data_version": meta.get("data_version"),
        "source_run_id": meta.get("source_run_id"),
        **(metadata_extra or {}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        # MLflow stores a directory artifact under its own name: stage it as "bundle" so the logged model
        # always holds artifacts/bundle/{model.keras, vocab.txt, label_map.json, bertops.json}.
        staged = Path(tmp) / BUNDLE_ARTIFACT
        shutil.copytree(bundle_dir, staged)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=_python_model(),
            artifacts={BUNDLE_ARTIFACT: str(staged)},
            code_paths=[str(Path(bertops.__file__).parent)],
            signature=signature,
            input_example=example,
            pip_requirements=pinned_requirements(),
            registered_model_name=registered_model_name,
            metadata=model_metadata,
        )
    logger.info("logged pyfunc %s (labels %s)", info.model_uri, labels)
    return info
