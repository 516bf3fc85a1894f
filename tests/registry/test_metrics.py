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
    masked_lm_from_sums,
    masked_lm_metrics,
    ner_metrics,
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
    assert m["majority_accuracy"] == pytest.approx(0.5)
    skewed = classification_metrics(np.array([1, 1, 1, 0]), p, LABELS)
    assert skewed["majority_accuracy"] == pytest.approx(0.75)  # 3 of 4 are "positive"


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


@pytest.mark.parametrize(
    ("tags", "spans"),
    [
        (["I-PER", "I-PER", "O"], {("PER", 0, 2)}),  # I- without B- starts a span (IOB1 / conlleval)
        (["O", "I-LOC"], {("LOC", 1, 2)}),
        (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 1), ("LOC", 1, 3)}),  # a type change ends the span
        (["B-PER", "B-PER", "I-PER"], {("PER", 0, 1), ("PER", 1, 3)}),  # B- after I-/B- of the type: new span
        (["I-PER", "B-PER"], {("PER", 0, 1), ("PER", 1, 2)}),  # IOB1: B- separates adjacent same-type spans
        (["B-LOC", "O", "I-LOC"], {("LOC", 0, 1), ("LOC", 2, 3)}),  # O ends a span; I- after O restarts
        (["B-WORK-OF-ART", "I-WORK-OF-ART"], {("WORK-OF-ART", 0, 2)}),  # types may hold '-'
        (["B-PER", "I-PER"], {("PER", 0, 2)}),  # a span running to the end is closed
        ([], set()),
        (["O", "O"], set()),
    ],
)
def test_bio_spans_edge_cases(tags: list[str], spans: set[tuple[str, int, int]]) -> None:
    assert bio_spans(tags) == spans


def test_ner_metrics_counts_supports_and_token_accuracy() -> None:
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-PER"], ["O", "O"]]
    m = ner_metrics(true, pred)
    # gold PER(0,2) LOC(3,4) ORG(0,1); predicted PER(0,2) PER(3,4): one exact match
    assert m["num_entities"] == 3 and m["num_predicted_entities"] == 2
    assert m["entity_precision"] == 0.5 and m["entity_recall"] == pytest.approx(1 / 3)
    assert m["entity_f1"] == pytest.approx(0.4)
    assert m["support_PER"] == 1 and m["support_LOC"] == 1 and m["support_ORG"] == 1
    assert m["precision_PER"] == 0.5 and m["recall_PER"] == 1.0 and m["f1_ORG"] == 0.0
    assert m["token_accuracy"] == pytest.approx(4 / 6) and m["num_tokens"] == 6 and m["num_sentences"] == 2
    with pytest.raises(ValueError, match="sequence 0: 2 true tags but 1 predicted"):
        ner_metrics([["O", "O"]], [["O"]])


def test_masked_lm_sums_over_batches_equal_the_whole() -> None:
    rng = np.random.default_rng(0)
    logits, ids = rng.normal(size=(6, 4, 7)), rng.integers(0, 7, size=(6, 4))
    weights = (rng.random((6, 4)) > 0.3).astype(float)
    whole = masked_lm_metrics(logits, ids, weights)
    parts = [masked_lm_metrics(logits[a:b], ids[a:b], weights[a:b]) for a, b in ((0, 2), (2, 6))]
    counts = [weights[0:2].sum(), weights[2:6].sum()]
    summed = masked_lm_from_sums(
        sum(p["mlm_loss"] * c for p, c in zip(parts, counts, strict=True)),
        sum(p["mlm_accuracy"] * c for p, c in zip(parts, counts, strict=True)),
        sum(counts),
    )
    assert summed == pytest.approx(whole)
    assert whole["perplexity"] == pytest.approx(np.exp(whole["mlm_loss"]))
    with pytest.raises(ValueError, match="non-zero weight"):
        masked_lm_metrics(logits, ids, np.zeros_like(weights))
