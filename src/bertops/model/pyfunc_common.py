"""What the MLflow pyfuncs of bertops share: input parsing, exact pins, and logging a bundle as a pyfunc.

The classifier (:mod:`bertops.model.pyfunc`) and the NER model (:mod:`bertops.model.ner_pyfunc`) both log the
bundle directory itself as the artifact ``bundle``, the ``bertops`` package as code, exact pins of the running
environment and metadata that names the task (``bertops_task``), so that a loader can tell them apart.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertops.model.bundle import read_labels, read_meta

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.models.model import ModelInfo

logger = logging.getLogger(__name__)

BUNDLE_ARTIFACT = "bundle"
TEXT_COLUMN = "text"
# Distributions the pyfunc needs at load time, pinned to the versions installed where it is logged.
REQUIREMENTS = ("mlflow", "tensorflow-cpu", "keras", "tokenizers", "numpy", "pandas", "pydantic", "pyyaml")


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


def pinned_requirements() -> list[str]:
    """``name==version`` for each of :data:`REQUIREMENTS` installed here (missing ones are skipped)."""
    pins = []
    for dist in REQUIREMENTS:
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            logger.debug("%s not installed; not pinned", dist)
    return pins


def bundle_metadata(bundle_dir: Path) -> dict[str, Any]:
    """The model metadata of a bundle: ``bertops.json`` fields a loader needs, the task first."""
    meta = read_meta(bundle_dir)
    return {
        "bertops_task": meta["task"],
        "labels": read_labels(bundle_dir) or [],
        "max_seq_length": meta["max_seq_length"],
        "tokenizer": meta.get("tokenizer"),
        "data_version": meta.get("data_version"),
        "source_run_id": meta.get("source_run_id"),
    }


def log_pyfunc(
    bundle_dir: Path,
    python_model: Any,
    *,
    name: str,
    signature: Any,
    input_example: Any,
    model_metadata: dict[str, Any],
    registered_model_name: str | None,
) -> ModelInfo:
    """Log ``python_model`` with the bundle as its ``bundle`` artifact (in the active run, or a new one)."""
    import mlflow

    import bertops

    with tempfile.TemporaryDirectory() as tmp:
        # MLflow stores a directory artifact under its own name: stage it as "bundle" so the logged model
        # always holds artifacts/bundle/{model.keras, vocab.txt, label_map.json, bertops.json}.
        staged = Path(tmp) / BUNDLE_ARTIFACT
        shutil.copytree(bundle_dir, staged)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=python_model,
            artifacts={BUNDLE_ARTIFACT: str(staged)},
            code_paths=[str(Path(bertops.__file__).parent)],
            signature=signature,
            input_example=input_example,
            pip_requirements=pinned_requirements(),
            registered_model_name=registered_model_name,
            metadata=model_metadata,
        )
