"""Feedback labels reach the next data version, the real way: ``bert_retrain``'s data step
(:func:`bertops.orchestration.retrain.prepare_data`: export from the monitoring store, then ``dvc repro``) in a
real git + DVC project.

New feedback texts land in the train split (classification and NER) and nowhere else; the test and validation
splits are byte for byte what they were; a feedback text already in the data is dropped and counted; the same
feedback again changes nothing (same data version, no stage runs); an unknown label fails the step naming the
feedback file, row and request, and the data and the store keep what they had.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from tests.orchestration.conftest import make_project

from bertops.monitoring.recorder import Recorder, RecorderSettings
from bertops.monitoring.store import FEEDBACK, Store
from bertops.orchestration import dvc_ops, retrain

pytestmark = pytest.mark.slow

SMALL = {
    "ingest": {"corpus": {"max_records": 30}, "classification": {"max_records": 300}, "ner": {"max_records": 60}},
    "vocab": {"vocab_size": 300, "min_frequency": 1},
    "pretrain_data": {"dupe_factor": 1, "max_seq_length": 64, "num_workers": 1},
    "finetune_data": {"max_seq_length": 64},
}  # fmt: skip
NEW = [("a feedback review nobody wrote before", "positive"), ("another unseen feedback snippet", "negative")]
NER_TEXT = "Anna Smith flew home today"


class Classifier:
    name, version, task, pyfunc = "bert-sentiment", "1", "classification", None


class Tagger:
    name, version, task, pyfunc = "bert-ner", "1", "ner", None


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _stages_run(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Running stage" in r.getMessage()]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    store = tmp_path / "store"
    (tmp_path / "project").mkdir()
    root = make_project(tmp_path / "project", {**SMALL, "monitoring": {"store_uri": str(store)}})
    monkeypatch.setenv("BERTOPS_PROJECT_DIR", str(root))
    return root


def test_feedback_reaches_the_train_split_of_the_next_data_version(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    store = Store(str(project.parent / "store"))
    split = project / "data" / "split"
    first = retrain.prepare_data({}, "manual__before")  # no feedback yet: the store is empty
    assert first["feedback_texts"] == {"classification": 0, "ner": 0}
    held_out = {p: p.read_bytes() for t in ("classification", "ner") for p in (split / t).glob("*.jsonl")
                if p.stem != "train"}  # fmt: skip
    seen = _read(split / "classification" / "test.jsonl")[0]  # a text the data has: feedback on it is dropped
    kind = next(t[2:] for r in _read(split / "ner" / "train.jsonl") for t in r["tags"] if t.startswith("B-"))

    rec = Recorder(RecorderSettings(store_uri=store.uri), registry=CollectorRegistry(), start=False)
    texts = [t for t, _ in NEW] + [seen["text"].upper()]
    rec.record("req-new", Classifier(), texts, [{"label": "positive", "probability": 0.5}] * 3)
    for index, label in enumerate([lab for _, lab in NEW] + [seen["label"]]):
        rec.feedback("req-new", index, label, None)
    rec.record("req-ner", Tagger(), [NER_TEXT], [{"entities": []}])
    rec.feedback("req-ner", 0, None, json.dumps([{"start": 0, "end": 10, "type": kind}]))
    rec.flush()

    second = retrain.prepare_data({}, "asset_triggered__after")
    assert second["feedback_texts"] == {"classification": 3, "ner": 1}
    assert second["data_version"] != first["data_version"]
    train = _read(Path(second["data_dir"]) / "split/classification/train.jsonl")  # the run's own copy
    fed = [(r["text"], r["label"]) for r in train if r.get("request_id") == "req-new"]
    assert fed == NEW and all(r["split"] == "train" for r in train if "request_id" in r)
    ner_train = _read(Path(second["data_dir"]) / "split/ner/train.jsonl")
    assert [(r["tokens"], r["tags"]) for r in ner_train if r.get("request_id") == "req-ner"] == [
        (["Anna", "Smith", "flew", "home", "today"], [f"B-{kind}", f"I-{kind}", "O", "O", "O"])
    ]
    assert {p: p.read_bytes() for p in held_out} == held_out  # test and validation: not a byte changed
    stats = json.loads((project / "data/ingested/ingest_stats.json").read_text(encoding="utf-8"))
    assert stats["classification"]["feedback_records"] == 2
    assert stats["classification"]["feedback_duplicates"] == 1
    assert "(req-new)" in stats["classification"]["feedback_duplicate_rows"][0]
    assert stats["ner"]["feedback_records"] == 1

    caplog.clear()
    again = retrain.prepare_data(
        {}, "scheduled__same"
    )  # no new feedback: the same data version, nothing runs
    assert again["data_version"] == second["data_version"] and _stages_run(caplog) == []

    rec.record("req-bad", Classifier(), ["a text whose label is made up"], [{"label": "positive"}])
    rec.feedback("req-bad", 0, "neutral", None)
    rec.flush()
    train_before = (split / "classification" / "train.jsonl").read_bytes()
    with pytest.raises(
        Exception, match=r"(?s)classification.jsonl, row 4, field 'label'.*request 'req-bad'.*'neutral'"
    ):
        retrain.prepare_data({}, "asset_triggered__bad")
    assert (split / "classification" / "train.jsonl").read_bytes() == train_before
    assert dvc_ops.data_version(project) == second["data_version"]
    assert len(store.read(FEEDBACK)) == 5  # the store keeps every feedback row, the bad one too
