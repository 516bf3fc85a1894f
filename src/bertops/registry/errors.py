"""Errors of evaluation, registry and promotion; each message says what was wrong and where."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """A registry operation that cannot go ahead (unknown model or version, failed gate, lost race)."""


class TrackingUnavailable(RegistryError):
    """The MLflow tracking server (or store) cannot be reached."""


class PromotionConflict(RegistryError):
    """Another promotion moved the champion since this one's gate ran, or holds the promotion lock."""


class EvaluationError(ValueError):
    """An evaluation that cannot run: test data that does not match the model (labels), empty data."""


class LabelMapMismatch(EvaluationError):
    """The test set holds a label that is not in the model's label map: the data, not the model, is at fault."""
