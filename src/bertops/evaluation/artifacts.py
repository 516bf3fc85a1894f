"""Reviewer artifacts of an evaluation: plots (PNG), DVC plot data (CSV), worst examples, a metrics table.

:func:`write_artifacts` fills one directory (the caller makes it atomic) with::

    metrics.json              every metric (a DVC metrics file: ``dvc metrics diff`` compares revisions)
    metrics_table.md          the same as a Markdown table for reviewers
    predictions.csv           actual,predicted per test example (DVC confusion-matrix plot)
    roc.csv, pr.csv           ROC and precision-recall curve points, per class one-vs-rest (DVC plots)
    calibration.csv           reliability bins: confidence, accuracy, count (DVC plot)
    confusion_matrix.png, roc_curve.png, pr_curve.png, calibration.png
    worst_examples.jsonl      the most confidently wrong predictions, with their text

NER (:func:`write_ner_artifacts`)::

    metrics.json              every metric (entity-level micro P/R/F1, per type, token accuracy)
    metrics_table.md          overall metrics, then one row per entity type
    entity_types.csv          type,precision,recall,f1,support: the per-type table (a DVC plot source too)
    predictions.csv           actual,predicted tag per word (DVC confusion-matrix plot)
    entity_errors.jsonl       sentences whose predicted spans differ most from the gold ones

Pretraining (:func:`write_summary_artifacts`): ``metrics.json`` and ``metrics_table.md``.

matplotlib runs on the non-interactive Agg backend; nothing is drawn on import.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bertops.evaluation.metrics import reliability

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
ROC_FILE = "roc.csv"
PR_FILE = "pr.csv"
CALIBRATION_FILE = "calibration.csv"
WORST_FILE = "worst_examples.jsonl"
TABLE_FILE = "metrics_table.md"
ENTITY_TYPES_FILE = "entity_types.csv"
ENTITY_ERRORS_FILE = "entity_errors.jsonl"


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _curve_classes(labels: Sequence[str]) -> list[int]:
    # Binary: one curve for the positive class (index 1); otherwise one-vs-rest per class.
    return [1] if len(labels) == 2 else list(range(len(labels)))


def worst_examples(
    texts: Sequence[str], y: np.ndarray, probs: np.ndarray, labels: Sequence[str], n: int
) -> list[dict[str, Any]]:
    """The ``n`` misclassified examples with the highest confidence in their wrong label."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:n]
    return [
        {
            "index": int(i),
            "text": texts[i],
            "label": labels[y[i]],
            "predicted": labels[pred[i]],
            "confidence": round(float(probs[i, pred[i]]), 6),
            "probability_of_label": round(float(probs[i, y[i]]), 6),
        }
        for i in order
    ]


def metrics_table(metrics: Mapping[str, float], title: str = "Evaluation metrics") -> str:
    """A Markdown table of the metrics, sorted by name."""
    lines = [f"### {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
    return "\n".join(lines) + "\n"


def write_artifacts(
    out_dir: Path,
    texts: Sequence[str],
    y: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    metrics: Mapping[str, float],
    calibration_bins: int = 10,
    n_worst: int = 25,
) -> list[Path]:
    """Write every reviewer artifact into ``out_dir`` (which must exist); returns the files written."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, precision_recall_curve, roc_curve

    pred = probs.argmax(axis=1)
    files: list[Path] = []

    def keep(path: Path) -> Path:
        files.append(path)
        return path

    keep(out_dir / METRICS_FILE).write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")
    keep(out_dir / TABLE_FILE).write_text(metrics_table(metrics))
    _write_csv(
        keep(out_dir / PREDICTIONS_FILE),
        ["actual", "predicted"],
        [(labels[a], labels[p]) for a, p in zip(y, pred, strict=True)],
    )

    roc_rows, pr_rows = [], []
    fig_roc, ax_roc = plt.subplots(figsize=(5, 5))
    fig_pr, ax_pr = plt.subplots(figsize=(5, 5))
    for c in _curve_classes(labels):
        positives = (y == c).astype(int)
        if positives.min() == positives.max():  # one class only: no curve
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, c])
        prec, rec, _ = precision_recall_curve(positives, probs[:, c])
        roc_rows += [
            (labels[c], round(float(a), 6), round(float(b), 6)) for a, b in zip(fpr, tpr, strict=True)
        ]
        pr_rows += [
            (labels[c], round(float(a), 6), round(float(b), 6)) for a, b in zip(rec, prec, strict=True)
        ]
        ax_roc.plot(fpr, tpr, label=labels[c])
        ax_pr.plot(rec, prec, label=labels[c])
    ax_roc.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall curve")
    for ax in (ax_roc, ax_pr):
        ax.legend(loc="lower right")
    fig_roc.savefig(keep(out_dir / "roc_curve.png"), dpi=80, bbox_inches="tight")
    fig_pr.savefig(keep(out_dir / "pr_curve.png"), dpi=80, bbox_inches="tight")
    _write_csv(keep(out_dir / ROC_FILE), ["class", "fpr", "tpr"], roc_rows)
    _write_csv(keep(out_dir / PR_FILE), ["class", "recall", "precision"], pr_rows)

    table = reliability(y, probs, calibration_bins)
    filled = table.count > 0
    _write_csv(
        keep(out_dir / CALIBRATION_FILE),
        ["confidence", "accuracy", "count"],
        [
            (round(float(c), 6), round(float(a), 6), int(n))
            for c, a, n in zip(
                table.confidence[filled], table.accuracy[filled], table.count[filled], strict=True
            )
        ],
    )
    fig_cal, ax_cal = plt.subplots(figsize=(5, 5))
    ax_cal.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfectly calibrated")
    ax_cal.plot(table.confidence[filled], table.accuracy[filled], "o-", label="model")
    ax_cal.set(
        xlabel="confidence",
        ylabel="accuracy",
        title=f"Calibration (ECE {metrics.get('ece', float('nan')):.3f})",
    )
    ax_cal.legend(loc="upper left")
    fig_cal.savefig(keep(out_dir / "calibration.png"), dpi=80, bbox_inches="tight")

    fig_cm, ax_cm = plt.subplots(figsize=(5, 5))
    ConfusionMatrixDisplay.from_predictions(
        y, pred, labels=list(range(len(labels))), display_labels=list(labels), ax=ax_cm, colorbar=False
    )
    ax_cm.set_title("Confusion matrix")
    fig_cm.savefig(keep(out_dir / "confusion_matrix.png"), dpi=80, bbox_inches="tight")
    for fig in (fig_roc, fig_pr, fig_cal, fig_cm):
        plt.close(fig)

    with keep(out_dir / WORST_FILE).open("w", encoding="utf-8") as fh:
        for rec in worst_examples(texts, y, probs, labels, n_worst):
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return files


def write_summary_artifacts(
    out_dir: Path, metrics: Mapping[str, float], title: str = "Evaluation metrics"
) -> list[Path]:
    """``metrics.json`` (DVC metrics) and ``metrics_table.md``: what every task writes."""
    files = [out_dir / METRICS_FILE, out_dir / TABLE_FILE]
    files[0].write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")
    files[1].write_text(metrics_table(metrics, title))
    return files


def entity_type_rows(
    metrics: Mapping[str, float], types: Sequence[str]
) -> list[tuple[str, float, float, float, int]]:
    """``(type, precision, recall, f1, support)`` per entity type, from :func:`~.metrics.entity_metrics` keys."""
    from bertops.evaluation.metrics import metric_key

    rows = []
    for kind in types:
        key = metric_key(kind)
        rows.append(
            (
                kind,
                round(float(metrics.get(f"precision_{key}", 0.0)), 6),
                round(float(metrics.get(f"recall_{key}", 0.0)), 6),
                round(float(metrics.get(f"f1_{key}", 0.0)), 6),
                int(metrics.get(f"support_{key}", 0)),
            )
        )
    return rows


def entity_errors(
    tokens: Sequence[Sequence[str]],
    gold: Sequence[Sequence[str]],
    pred: Sequence[Sequence[str]],
    n: int,
) -> list[dict[str, Any]]:
    """The ``n`` sentences with the most span errors (missed + spurious entities), most first."""
    from bertops.evaluation.metrics import bio_spans

    scored = []
    for i, (t, p) in enumerate(zip(gold, pred, strict=True)):
        ts, ps = bio_spans(t), bio_spans(p)
        missed, spurious = sorted(ts - ps, key=lambda x: x[1:]), sorted(ps - ts, key=lambda x: x[1:])
        if missed or spurious:
            scored.append((len(missed) + len(spurious), i, missed, spurious))
    scored.sort(key=lambda x: -x[0])  # stable: ties keep test-set order

    def spans(items: list[tuple[str, int, int]], words: Sequence[str]) -> list[dict[str, Any]]:
        return [{"type": k, "start": s, "end": e, "text": " ".join(words[s:e])} for k, s, e in items]

    return [
        {
            "index": i,
            "tokens": list(tokens[i]),
            "tags": list(gold[i]),
            "predicted": list(pred[i]),
            "missed": spans(missed, tokens[i]),
            "spurious": spans(spurious, tokens[i]),
        }
        for _, i, missed, spurious in scored[:n]
    ]


def write_ner_artifacts(
    out_dir: Path,
    tokens: Sequence[Sequence[str]],
    gold: Sequence[Sequence[str]],
    pred: Sequence[Sequence[str]],
    metrics: Mapping[str, float],
    types: Sequence[str],
    n_errors: int = 25,
) -> list[Path]:
    """Write the NER reviewer artifacts into ``out_dir`` (which must exist); returns the files written.

    ``types`` are the entity types of the per-type table (the model's, so a type the test set lacks shows
    support 0).
    """
    files = write_summary_artifacts(out_dir, metrics, "NER evaluation metrics")
    rows = entity_type_rows(metrics, types)
    with files[1].open("a", encoding="utf-8") as fh:
        fh.write(
            "\n### Per entity type\n\n| type | precision | recall | f1 | support |\n|---|---|---|---|---|\n"
        )
        fh.writelines(f"| {k} | {p:.4f} | {r:.4f} | {f:.4f} | {n} |\n" for k, p, r, f, n in rows)
    files.append(out_dir / ENTITY_TYPES_FILE)
    _write_csv(files[-1], ["type", "precision", "recall", "f1", "support"], rows)
    files.append(out_dir / PREDICTIONS_FILE)
    _write_csv(
        files[-1],
        ["actual", "predicted"],
        [(a, b) for t, p in zip(gold, pred, strict=True) for a, b in zip(t, p, strict=True)],
    )
    files.append(out_dir / ENTITY_ERRORS_FILE)
    with files[-1].open("w", encoding="utf-8") as fh:
        for rec in entity_errors(tokens, gold, pred, n_errors):
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return files
