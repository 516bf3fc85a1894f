"""Errors of evaluation; each message says what was wrong and where (file, row, field, model)."""

from __future__ import annotations


class EvaluationError(ValueError):
    """An evaluation that cannot run: test data that does not match the model (labels), empty data."""


class LabelMapMismatch(EvaluationError):
    """The test set holds a label that is not in the model's label map: the data, not the model, is at fault."""
