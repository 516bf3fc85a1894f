"""The NER model as an MLflow pyfunc: raw text in, the entities of each text out.

    with mlflow.start_run():
        info = log_ner_model("artifacts/finetune-ner", name="model")
    model = mlflow.pyfunc.load_model(info.model_uri)
    model.predict(["Anna flew to Zürich"])     # or pd.DataFrame({"text": [...]})
    #                                              entities
    # 0  [{"text": "Anna", "type": "person", "start": 0, "end": 4, "score": 0.97}, ...]

Each entity is ``{"text", "type", "start", "end", "score"}`` with character offsets into the text as sent
(:func:`bertops.model.entities.extract_entities`: words, first-piece tags, BIO spans read as seqeval reads
them). Under ``mlflow models serve`` the answer is ``{"predictions": [{"entities": [...]}, ...]}``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertops.model.bundle import BundleError, read_labels, read_meta
from bertops.model.pyfunc_common import (
    BUNDLE_ARTIFACT,
    TEXT_COLUMN,
    bundle_metadata,
    log_pyfunc,
    texts_from_input,
)

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.models.model import ModelInfo

logger = logging.getLogger(__name__)
ENTITIES_COLUMN = "entities"
DEFAULT_EXAMPLE = ["Anna Smith flew from London to New York on Monday"]


def _python_model() -> Any:
    import mlflow

    class BertNerModel(mlflow.pyfunc.PythonModel):
        """Loads the bundle once per process; ``predict`` returns one ``entities`` list per text."""

        def load_context(self, context: Any) -> None:
            from bertops.model.bundle import load_bundle

            self.bundle = load_bundle(context.artifacts[BUNDLE_ARTIFACT])

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            # No type hints here: MLflow would derive a schema from them; the signature is set explicitly.
            import pandas as pd

            from bertops.model.entities import extract_entities

            texts = texts_from_input(model_input)
            batch_size = int((params or {}).get("batch_size", 64))
            return pd.DataFrame({ENTITIES_COLUMN: extract_entities(self.bundle, texts, batch_size)})

    return BertNerModel()


def log_ner_model(
    bundle_dir: str | Path,
    name: str = "model",
    registered_model_name: str | None = None,
    input_example: Sequence[str] | None = None,
    metadata_extra: dict[str, Any] | None = None,
) -> ModelInfo:
    """Log an NER bundle as an MLflow pyfunc (in the active run, or a new one) and return its info."""
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    bundle_dir = Path(bundle_dir)
    meta = read_meta(bundle_dir)
    if meta["task"] != "ner":
        raise BundleError(f"{bundle_dir}: log_ner_model needs an ner bundle, got task {meta['task']!r}")
    labels = read_labels(bundle_dir)
    if not labels:
        raise BundleError(f"{bundle_dir}: label_map.json is missing")
    # Inputs as the classifier's (one string column); outputs are nested (a list of entity dicts per text),
    # which MLflow's column schema cannot state: left unchecked.
    signature = ModelSignature(
        inputs=Schema([ColSpec("string")]), params=ParamSchema([ParamSpec("batch_size", "long", 64)])
    )
    info = log_pyfunc(
        bundle_dir,
        _python_model(),
        name=name,
        signature=signature,
        input_example=pd.DataFrame({TEXT_COLUMN: list(input_example or DEFAULT_EXAMPLE)}),
        model_metadata={**bundle_metadata(bundle_dir), **(metadata_extra or {})},
        registered_model_name=registered_model_name,
    )
    logger.info("logged NER pyfunc %s (tags %s)", info.model_uri, labels)
    return info
