"""Evaluation metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from bertops.evaluation.metrics import (
    bio_spans,
    bucket_names,
    classification_metrics,
    entity_metrics,
    expected_calibration_error,
    masked_lm_metrics,
    slice_metrics,
)

LABELS = ["negative", "positive"]


def test_classification_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    m = classification_metrics(y, p, LABELS)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["precision_positive"] == pytest.approx(2 / 3) and m["recall_positive"] == pytest.approx(1.0)
    assert m["precision_negative"] == pytest.approx(1.0) and m["recall_negative"] == pytest.approx(0.5)
    assert m["f1_negative"] == pytest.approx(2 / 3) and m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["roc_auc"] == pytest.approx(1.0)  # every positive scores above every negative
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.7])))


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident() -> None:
    y = np.array([0, 1, 0, 1])
    calibrated = np.array([[0.5, 0.5]] * 4)  # confidence 0.5, argmax 0: half right
    assert expected_calibration_error(y, calibrated) == pytest.approx(0.0)
    over = np.array([[0.99, 0.01]] * 4)
    assert expected_calibration_error(y, over) == pytest.approx(0.49)


def test_label_map_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1], np.ones((2, 3)) / 3, LABELS)


def test_length_slices() -> None:
    assert bucket_names([32, 64]) == ["len_0_32", "len_32_64", "len_64_inf"]
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.1]])
    m = slice_metrics(y, p, lengths=[5, 40, 31, 100], boundaries=[32, 64])
    assert m["slice_len_0_32_n"] == 2 and m["slice_len_0_32_accuracy"] == 1.0
    assert m["slice_len_32_64_accuracy"] == 0.0 and m["slice_len_64_inf_accuracy"] == 1.0


def test_bio_spans_and_entity_metrics_exact_match() -> None:
    assert bio_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"]) == {
        ("PER", 0, 2),
        ("LOC", 3, 4),
        ("LOC", 4, 5),
    }
    true = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"]]  # PER span cut short: not an exact match
    m = entity_metrics(true, pred)
    assert m["entity_precision"] == 0.5 and m["entity_recall"] == 0.5
    assert m["f1_LOC"] == 1.0 and m["f1_PER"] == 0.0


def test_masked_lm_accuracy_and_perplexity_ignore_padding() -> None:
    logits = np.zeros((1, 3, 4))
    logits[0, 0, 2] = 10.0
    m = masked_lm_metrics(logits, np.array([[2, 1, 3]]), np.array([[1.0, 1.0, 0.0]]))
    assert m["mlm_accuracy"] == pytest.approx(0.5)
    uniform_nll = np.log(4)
    peaked_nll = -(10 - np.log(np.exp(10) + 3))
    assert m["perplexity"] == pytest.approx(np.exp((uniform_nll + peaked_nll) / 2))
