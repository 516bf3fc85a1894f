"""Errors of the registry and promotion; each message says what was wrong and where.

Evaluation's errors live in :mod:`bertops.evaluation.errors` and the tracking server's in
:mod:`bertops.tracking_client`; both are re-exported here for the callers that handle every registry failure.
"""

from __future__ import annotations

from bertops.evaluation.errors import EvaluationError, LabelMapMismatch
from bertops.tracking_client import TrackingUnavailable

__all__ = [
    "EvaluationError",
    "LabelMapMismatch",
    "PromotionConflict",
    "RegistryError",
    "TrackingUnavailable",
]


class RegistryError(RuntimeError):
    """A registry operation that cannot go ahead (unknown model or version, failed gate, lost race)."""


class PromotionConflict(RegistryError):
    """Another promotion moved the champion since this one's gate ran, or holds the promotion lock."""
