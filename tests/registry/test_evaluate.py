"""Evaluation of real tiny bundles: metrics, slices, latency, reviewer/DVC files, and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tests.registry.conftest import write_jsonl

from bertops.config import EvaluationConfig
from bertops.evaluation.errors import EvaluationError
from bertops.evaluation.evaluate import evaluate

pytestmark = pytest.mark.slow
CFG = EvaluationConfig(length_buckets=[8, 16], latency_repeats=5, worst_examples=5)


def test_trained_bundle_beats_untrained_and_writes_dvc_files(
    good_bundle: Path, weak_bundle: Path, test_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "evaluation"
    good = evaluate(good_bundle, test_file, CFG, output_dir=out)
    weak = evaluate(weak_bundle, test_file, CFG, output_dir=tmp_path / "weak")
    assert good.metrics["accuracy"] >= 0.9 > weak.metrics["accuracy"] + 0.2
    assert good.run_id is None and weak.output_dir == tmp_path / "weak"
    m = good.metrics
    for key in ("macro_f1", "f1_negative", "f1_positive", "roc_auc", "log_loss", "ece",
                "slice_len_0_8_accuracy", "slice_len_16_inf_accuracy",
                "latency_p50_ms_batch1", "latency_p50_ms_batch32"):  # fmt: skip
        assert key in m, key
    assert sum(m[f"slice_{b}_n"] for b in ("len_0_8", "len_8_16", "len_16_inf")) == 120
    assert m["latency_p50_ms_batch32"] > 0 and m["latency_p50_ms_batch1"] > 0

    assert json.loads((out / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 120 and set(rows[0]) == {"actual", "predicted"}
    for name in ("roc.csv", "pr.csv", "calibration.csv", "confusion_matrix.png", "roc_curve.png",
                 "pr_curve.png", "calibration.png", "metrics_table.md"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    worst = [json.loads(x) for x in (tmp_path / "weak" / "worst_examples.jsonl").read_text().splitlines()]
    assert len(worst) == 5 and all(w["label"] != w["predicted"] for w in worst)
    assert worst[0]["confidence"] >= worst[-1]["confidence"]  # most confidently wrong first


def test_different_label_map_is_rejected_and_outputs_untouched(good_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "metrics.json").write_text('{"accuracy": 0.5}\n')
    bad = write_jsonl(tmp_path / "test.jsonl", [{"text": "good film", "label": "positive"},
                                                {"text": "meh", "label": "neutral"}])  # fmt: skip
    with pytest.raises(
        EvaluationError, match=r"test.jsonl, row 2, field 'label': 'neutral' is not in the label map"
    ):
        evaluate(good_bundle, bad, CFG, output_dir=out)
    assert (out / "metrics.json").read_text() == '{"accuracy": 0.5}\n'
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
