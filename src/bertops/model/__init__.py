"""The Keras 3 BERT: backbone, task heads, checkpoint import, the model bundle, SavedModel and MLflow export.

Importing ``bertops.model`` is cheap; TensorFlow/Keras load on first use of a model class::

    from bertops.model import BertBackbone, BertClassifier, load_bundle
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BertBackbone": "bertops.model.backbone",
    "BertPretrainer": "bertops.model.heads",
    "BertClassifier": "bertops.model.heads",
    "BertTokenClassifier": "bertops.model.heads",
    "MaskedLMHead": "bertops.model.heads",
    "TransformerEncoder": "bertops.model.layers",
    "MultiHeadSelfAttention": "bertops.model.layers",
    "PositionEmbedding": "bertops.model.layers",
    "PRESETS": "bertops.model.presets",
    "Architecture": "bertops.model.presets",
    "resolve_architecture": "bertops.model.presets",
    "backbone_from_config": "bertops.model.presets",
    "Bundle": "bertops.model.bundle",
    "BundleError": "bertops.model.bundle",
    "save_bundle": "bertops.model.bundle",
    "load_bundle": "bertops.model.bundle",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bertops.model' has no attribute {name!r}")
