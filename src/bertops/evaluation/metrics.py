"""Evaluation metrics as pure functions over arrays: classification, calibration, slices, NER spans, masked LM.

Everything here takes numpy arrays (or lists) and returns plain ``dict[str, float]`` with MLflow-safe keys, so
the promotion gate and the tests can use them without a model or a server::

    m = classification_metrics(y_true, probs, labels=["negative", "positive"])
    m["accuracy"], m["macro_f1"], m["f1_positive"], m["roc_auc"], m["log_loss"], m["ece"]

Key naming (the gate relies on it): per-class metrics are ``precision_<label>``, ``recall_<label>``,
``f1_<label>``; length slices are ``slice_<name>_accuracy`` / ``slice_<name>_n`` with names such as
``len_0_32`` / ``len_64_inf`` (word pieces, ``[lo, hi)``).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bertops.model.entities import bio_spans  # the one BIO reading, shared with the NER pyfunc

PER_CLASS_PREFIXES = ("precision_", "recall_", "f1_")
SLICE_PREFIX = "slice_"
# Metrics where a smaller value is better; everything else the gate treats as higher-is-better.
LOWER_IS_BETTER = frozenset({"log_loss", "ece", "perplexity", "mlm_loss", "nsp_loss"})
_EPS = 1e-12


def metric_key(text: str) -> str:
    """A label turned into an MLflow-safe metric key part (letters, digits, ``_``, ``-``, ``.``)."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", text).strip("_") or "_"


def _check_probs(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> None:
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(
            f"probabilities must have shape (n, {len(labels)}) for labels {list(labels)}, got {probs.shape}"
        )
    if y_true.shape != (probs.shape[0],):
        raise ValueError(f"y_true has shape {y_true.shape}, expected ({probs.shape[0]},)")
    if len(y_true) == 0:
        raise ValueError("no examples to evaluate")
    if y_true.min() < 0 or y_true.max() >= len(labels):
        raise ValueError(f"y_true holds class indices outside 0..{len(labels) - 1}")


@dataclass(frozen=True)
class ReliabilityTable:
    """Per-bin calibration data: mean confidence, accuracy and count of the predictions in each bin."""

    bin_edges: np.ndarray  # (bins + 1,)
    confidence: np.ndarray  # (bins,), NaN for empty bins
    accuracy: np.ndarray  # (bins,), NaN for empty bins
    count: np.ndarray  # (bins,)


def reliability(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> ReliabilityTable:
    """Bin predictions by confidence (max probability) into ``bins`` equal-width bins on [0, 1]."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 falls in bin 0.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
        mean_acc = np.bincount(idx, weights=correct, minlength=bins) / count
    return ReliabilityTable(edges, mean_conf, mean_acc, count)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between accuracy and confidence over the confidence bins."""
    table = reliability(y_true, probs, bins)
    filled = table.count > 0
    gaps = np.abs(table.accuracy[filled] - table.confidence[filled])
    return float((gaps * table.count[filled]).sum() / table.count.sum())


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    calibration_bins: int = 10,
) -> dict[str, float]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support, ROC-AUC, log loss, ECE and the
    majority-class baseline's accuracy on the same labels (``majority_accuracy``).

    ``probs`` is (n, num_classes) in label-map order. ROC-AUC is the positive-class (index 1) AUC for two
    classes and the one-vs-rest macro AUC for more; it is omitted when the test set holds a single class.
    """
    from sklearn.metrics import log_loss, precision_recall_fscore_support, roc_auc_score

    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    _check_probs(y, p, labels)
    pred = p.argmax(axis=1)
    classes = list(range(len(labels)))
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=classes, zero_division=0)
    out: dict[str, float] = {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(np.mean(f1)),
        "log_loss": float(log_loss(y, np.clip(p, _EPS, 1.0), labels=classes)),
        "ece": expected_calibration_error(y, p, calibration_bins),
        "num_examples": float(len(y)),
        # What always answering the most frequent test class scores: the floor a model must clear.
        "majority_accuracy": float(np.bincount(y, minlength=len(labels)).max() / len(y)) if len(y) else 0.0,
    }
    for i, label in enumerate(labels):
        key = metric_key(label)
        out[f"precision_{key}"] = float(prec[i])
        out[f"recall_{key}"] = float(rec[i])
        out[f"f1_{key}"] = float(f1[i])
        out[f"support_{key}"] = float(support[i])
    if len(np.unique(y)) > 1:
        if len(labels) == 2:
            out["roc_auc"] = float(roc_auc_score(y, p[:, 1]))
        else:
            out["roc_auc"] = float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=classes))
    return out


def bucket_names(boundaries: Sequence[int]) -> list[str]:
    """``[32, 64]`` -> ``["len_0_32", "len_32_64", "len_64_inf"]`` (``[lo, hi)`` in word pieces)."""
    edges = [0, *boundaries]
    names = [f"len_{lo}_{hi}" for lo, hi in itertools.pairwise(edges)]
    return [*names, f"len_{edges[-1]}_inf"]


def length_buckets(lengths: Sequence[int] | np.ndarray, boundaries: Sequence[int]) -> np.ndarray:
    """Bucket index of each length: 0 for ``[0, b0)``, 1 for ``[b0, b1)``, ..., ``len(boundaries)`` above."""
    if list(boundaries) != sorted(set(boundaries)):
        raise ValueError(f"evaluation.length_buckets must be strictly increasing, got {list(boundaries)}")
    return np.searchsorted(np.asarray(boundaries), np.asarray(lengths), side="right")


def slice_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    lengths: Sequence[int] | np.ndarray,
    boundaries: Sequence[int],
) -> dict[str, float]:
    """Accuracy and count per text-length bucket: ``slice_<bucket>_accuracy`` and ``slice_<bucket>_n``.

    Empty buckets get only ``_n = 0`` (no accuracy), so the gate never compares a slice that has no data.
    """
    y = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(probs).argmax(axis=1)
    idx = length_buckets(lengths, boundaries)
    out: dict[str, float] = {}
    for b, name in enumerate(bucket_names(boundaries)):
        sel = idx == b
        out[f"{SLICE_PREFIX}{name}_n"] = float(sel.sum())
        if sel.any():
            out[f"{SLICE_PREFIX}{name}_accuracy"] = float((pred[sel] == y[sel]).mean())
    return out


# ------------------------------------------------------------------------------------------------- NER
def entity_metrics(
    true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Entity-level micro precision/recall/F1 by exact span match (type, start and end), overall and per type.

    Keys: ``entity_precision``, ``entity_recall``, ``entity_f1``, ``num_entities`` (gold spans),
    ``num_predicted_entities``, and per type ``precision_<type>``, ``recall_<type>``, ``f1_<type>``,
    ``support_<type>`` (gold spans of the type). A type with no gold and no predicted span is absent.
    """
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"{len(true_tags)} true sequences but {len(pred_tags)} predicted")
    tp: dict[str, int] = {}
    n_true: dict[str, int] = {}
    n_pred: dict[str, int] = {}
    for row, (gold, guess) in enumerate(zip(true_tags, pred_tags, strict=True)):
        if len(gold) != len(guess):
            raise ValueError(f"sequence {row}: {len(gold)} true tags but {len(guess)} predicted")
        ts, ps = bio_spans(gold), bio_spans(guess)
        for kind, *_ in ts:
            n_true[kind] = n_true.get(kind, 0) + 1
        for kind, *_ in ps:
            n_pred[kind] = n_pred.get(kind, 0) + 1
        for kind, *_ in ts & ps:
            tp[kind] = tp.get(kind, 0) + 1

    def prf(t: int, n_t: int, n_p: int) -> tuple[float, float, float]:
        precision = t / n_p if n_p else 0.0
        recall = t / n_t if n_t else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1

    out: dict[str, float] = {}
    p, r, f = prf(sum(tp.values()), sum(n_true.values()), sum(n_pred.values()))
    out.update(entity_precision=p, entity_recall=r, entity_f1=f)
    out.update(num_entities=float(sum(n_true.values())), num_predicted_entities=float(sum(n_pred.values())))
    for kind in sorted(set(n_true) | set(n_pred)):
        p, r, f = prf(tp.get(kind, 0), n_true.get(kind, 0), n_pred.get(kind, 0))
        key = metric_key(kind)
        out.update({f"precision_{key}": p, f"recall_{key}": r, f"f1_{key}": f})
        out[f"support_{key}"] = float(n_true.get(kind, 0))
    return out


def ner_metrics(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """:func:`entity_metrics` plus ``token_accuracy`` (tags equal, over every word), ``num_tokens`` and
    ``num_sentences``."""
    out = entity_metrics(true_tags, pred_tags)
    n = sum(len(t) for t in true_tags)
    if n == 0:
        raise ValueError("no tagged words to evaluate")
    hits = sum(a == b for t, p in zip(true_tags, pred_tags, strict=True) for a, b in zip(t, p, strict=True))
    out.update(token_accuracy=hits / n, num_tokens=float(n), num_sentences=float(len(true_tags)))
    return out


# -------------------------------------------------------------------------------------------- masked LM
def masked_lm_metrics(logits: np.ndarray, target_ids: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """Masked-LM accuracy and perplexity (exp of the weighted mean cross-entropy) over real predictions.

    ``logits`` (B, P, V), ``target_ids`` and ``weights`` (B, P); weight 0 marks padding predictions.
    """
    logits = np.asarray(logits, dtype=np.float64)
    ids = np.asarray(target_ids, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]  # (B, P)
    correct = (logits.argmax(axis=-1) == ids).astype(np.float64)
    return masked_lm_from_sums(float((nll * w).sum()), float((correct * w).sum()), float(w.sum()))


def masked_lm_from_sums(nll_sum: float, correct: float, count: float) -> dict[str, float]:
    """``mlm_accuracy``, ``mlm_loss`` and ``perplexity = exp(mlm_loss)`` from weighted sums over a split
    (summed batch by batch, so metrics over a whole split are exact, not means of batch means)."""
    if count <= 0:
        raise ValueError("no masked-LM predictions with a non-zero weight")
    mean_nll = nll_sum / count
    return {
        "mlm_accuracy": correct / count,
        "mlm_loss": mean_nll,
        "perplexity": float(math.exp(min(mean_nll, 700.0))),
    }
