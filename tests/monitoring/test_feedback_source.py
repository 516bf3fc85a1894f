"""Feedback-labelled requests exported as a data source: joined on (request_id, index), the latest label wins,
texts already in any split (or repeated) are dropped, texts not kept (store_text false) never appear."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from bertops.monitoring.feedback_source import export_feedback
from bertops.monitoring.recorder import Recorder, RecorderSettings
from bertops.monitoring.store import Store
from bertops.paths import DataLayout

PRED = {"label": "positive", "probability": 0.6}


class Model:
    name, version, task, pyfunc = "m", "1", "classification", None


def test_export_dedupes_against_splits_and_itself(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "data")
    for split, text in (("train", "Seen in Train"), ("test", "seen in test")):
        path = layout.split_file("classification", split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"text": text, "label": "positive"}) + "\n")
    rec = Recorder(
        RecorderSettings(store_uri=str(tmp_path / "store")), registry=CollectorRegistry(), start=False
    )
    texts = ["a new review", "seen in train", "Seen in test", "A new review", "never labelled"]
    rec.record("r1", Model(), texts, [PRED] * 5)
    for index, label in ((0, "positive"), (0, "negative"), (1, "positive"), (2, "negative"), (3, "positive")):
        rec.feedback("r1", index, label, None)
    rec.flush()
    out = tmp_path / "data" / "raw" / "feedback" / "feedback.jsonl"
    assert export_feedback(Store(rec.settings.store_uri), layout, out) == 1
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        {"text": "a new review", "label": "negative", "request_id": "r1"}
    ]


def test_texts_not_kept_are_not_exported(tmp_path: Path) -> None:
    settings = RecorderSettings(store_uri=str(tmp_path / "store"), store_text=False)
    rec = Recorder(settings, registry=CollectorRegistry(), start=False)
    rec.record("r", Model(), ["private text"], [PRED])
    rec.feedback("r", 0, "positive", None)
    rec.flush()
    out = tmp_path / "feedback.jsonl"
    assert export_feedback(Store(settings.store_uri), DataLayout(tmp_path / "data"), out) == 0
    assert out.read_text() == ""
