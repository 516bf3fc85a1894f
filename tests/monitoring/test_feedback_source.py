"""Feedback-labelled requests exported as data sources: joined on (request_id, index), the latest label of a text
wins, a text served twice is one row, texts not kept (store_text false) never appear, NER entities become BIO
tags on word boundaries (anything else is an error naming the request)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from bertops.monitoring.feedback_source import FeedbackSourceError, export_feedback
from bertops.monitoring.recorder import Recorder, RecorderSettings
from bertops.monitoring.store import Store

PRED = {"label": "positive", "probability": 0.6}


class Model:
    name, version, task, pyfunc = "m", "1", "classification", None


class NerModel:
    name, version, task, pyfunc = "n", "1", "ner", None


def _recorder(tmp_path: Path, **kw: object) -> Recorder:
    settings = RecorderSettings(store_uri=str(tmp_path / "store"), **kw)
    return Recorder(settings, registry=CollectorRegistry(), start=False)


def _files(out: Path) -> dict[str, Path]:
    return {task: out / f"{task}.jsonl" for task in ("classification", "ner")}


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_latest_label_wins_and_a_text_served_twice_is_one_row(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    rec.record("r1", Model(), ["a new review", "never labelled", "Another  one"], [PRED] * 3)
    rec.record("r2", Model(), ["A new REVIEW"], [PRED])
    for request, index, label in (("r1", 0, "positive"), ("r1", 2, "negative"), ("r2", 0, "negative")):
        rec.feedback(request, index, label, None)
    rec.flush()
    out = tmp_path / "feedback"
    assert export_feedback(Store(rec.settings.store_uri), _files(out)) == {"classification": 2, "ner": 0}
    assert _lines(out / "classification.jsonl") == [
        {"text": "a new review", "label": "negative", "request_id": "r2", "index": 0},
        {"text": "Another  one", "label": "negative", "request_id": "r1", "index": 2},
    ]
    assert not (out / "ner.jsonl").exists()
    before = (out / "classification.jsonl").read_bytes()
    export_feedback(
        Store(rec.settings.store_uri), _files(out)
    )  # the same feedback: the same bytes (no DVC change)
    assert (out / "classification.jsonl").read_bytes() == before


def test_texts_not_kept_are_not_exported_and_an_old_file_goes(tmp_path: Path) -> None:
    rec = _recorder(tmp_path, store_text=False)
    rec.record("r", Model(), ["private text"], [PRED])
    rec.feedback("r", 0, "positive", None)
    rec.flush()
    out = tmp_path / "feedback"
    out.mkdir()
    (out / "classification.jsonl").write_text('{"text": "old"}\n')
    assert export_feedback(Store(rec.settings.store_uri), _files(out)) == {"classification": 0, "ner": 0}
    assert not (out / "classification.jsonl").exists()


def test_ner_entities_become_bio_tags_on_word_boundaries(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    rec.record("n1", NerModel(), ["Anna Smith flew to Zürich, today"], [{"entities": []}])
    ents = [{"start": 0, "end": 10, "type": "person"}, {"start": 19, "end": 25, "type": "location"}]
    rec.feedback("n1", 0, None, json.dumps(ents))
    rec.flush()
    out = tmp_path / "feedback"
    assert export_feedback(Store(rec.settings.store_uri), _files(out)) == {"classification": 0, "ner": 1}
    assert _lines(out / "ner.jsonl") == [{
        "tokens": ["Anna", "Smith", "flew", "to", "Zürich", ",", "today"],
        "tags": ["B-person", "I-person", "O", "O", "B-location", "O", "O"], "request_id": "n1", "index": 0,
    }]  # fmt: skip


def test_an_entity_off_word_boundaries_names_the_request_and_writes_nothing(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    rec.record("n2", NerModel(), ["Anna Smith flew"], [{"entities": []}])
    rec.feedback("n2", 0, None, json.dumps([{"start": 1, "end": 10, "type": "person"}]))
    rec.flush()
    with pytest.raises(FeedbackSourceError, match=r"request 'n2', index 0: entity \[1, 10\) 'nna Smith'"):
        export_feedback(Store(rec.settings.store_uri), _files(tmp_path / "feedback"))
    assert not (tmp_path / "feedback").exists()


class TopicModel:
    name, version, task, pyfunc = "news-topics", "2", "classification", None


def test_feedback_reaches_only_the_model_it_was_given_to(tmp_path: Path) -> None:
    """A sentiment model's labels never become a topic model's data: each model's retrain exports its own."""
    from bertops.config import BertopsConfig
    from bertops.monitoring.feedback_source import export_for_retrain

    rec = _recorder(tmp_path)
    rec.record("s", Model(), ["a fine film"], [PRED])
    rec.record("t", TopicModel(), ["the match ended in a draw"], [{"label": "sport", "probability": 0.9}])
    rec.feedback("s", 0, "positive", None)
    rec.feedback("t", 0, "sport", None)
    rec.flush()
    cfg = BertopsConfig().model_copy(deep=True)
    cfg.ingest.feedback_dir = str(tmp_path / "raw" / "feedback")
    cfg.monitoring.store_uri = rec.settings.store_uri
    cfg.registry.model_name = "news-topics"
    assert export_for_retrain(cfg, tmp_path) == {"classification": 1, "ner": 0}
    assert cfg.feedback_file("classification") == tmp_path / "raw/feedback/news-topics/classification.jsonl"
    assert [r["label"] for r in _lines(tmp_path / "raw/feedback/news-topics/classification.jsonl")] == [
        "sport"
    ]
    cfg.registry.model_name = "m"
    assert export_for_retrain(cfg, tmp_path) == {"classification": 1, "ner": 0}
    assert [r["label"] for r in _lines(tmp_path / "raw/feedback/m/classification.jsonl")] == ["positive"]
    # the topic model's folder is as its own export left it
    assert [r["label"] for r in _lines(tmp_path / "raw/feedback/news-topics/classification.jsonl")] == [
        "sport"
    ]
