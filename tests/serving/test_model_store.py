"""The output-contract check that guards every switch, on plain DataFrames (no services needed)."""

from __future__ import annotations

import pandas as pd
import pytest

from bertops.serving.model_store import (
    WARMUP_TEXTS,
    ModelLoadError,
    labels_of,
    predictions_from_frame,
    warm_up,
)


def frame(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"label": lab, "probability": max(n, p), "prob_negative": n, "prob_positive": p}
            for lab, n, p in rows
        ]
    )


class FixedModel:
    """Answers every text with the same row; enough to exercise the warm-up check."""

    def __init__(self, row: tuple[str, float, float], columns: list[str] | None = None) -> None:
        self.row, self.columns = row, columns

    def predict(self, data: pd.DataFrame) -> pd.DataFrame:
        out = frame([self.row] * len(data))
        return out[self.columns] if self.columns else out


def test_predictions_keep_label_map_order() -> None:
    preds = predictions_from_frame(
        frame([("positive", 0.2, 0.8), ("negative", 0.7, 0.3)]), ["negative", "positive"], 2
    )
    assert preds[0] == {
        "label": "positive",
        "probability": 0.8,
        "probabilities": {"negative": 0.2, "positive": 0.8},
    }
    assert list(preds[1]["probabilities"]) == ["negative", "positive"]
    assert labels_of(frame([("positive", 0.2, 0.8)])) == ["negative", "positive"]


def test_warm_up_accepts_a_contract_keeping_model() -> None:
    assert warm_up(FixedModel(("positive", 0.1, 0.9))) == ["negative", "positive"]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (FixedModel(("positive", 0.9, 0.9)), "not a distribution"),
        (FixedModel(("neutral", 0.1, 0.9)), "label 'neutral' is not one of"),
        (
            FixedModel(("positive", 0.1, 0.9), columns=["label", "prob_negative", "prob_positive"]),
            "lacks column",
        ),
        (
            FixedModel(("positive", 0.1, 0.9), columns=["label", "probability", "prob_positive"]),
            r"2\+ classes",
        ),
    ],
)
def test_warm_up_refuses_a_contract_breaking_model(model: FixedModel, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        warm_up(model)


def test_row_count_must_match() -> None:
    with pytest.raises(ModelLoadError, match=f"1 rows for {len(WARMUP_TEXTS)} texts"):
        predictions_from_frame(frame([("positive", 0.1, 0.9)]), ["negative", "positive"], len(WARMUP_TEXTS))
