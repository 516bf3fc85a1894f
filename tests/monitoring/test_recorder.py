"""The recorder on its own: sampling, the hourly cap, a full queue, Parquet segments, store_text false.
Real pyarrow files in a temp store; the writer thread is started only where a test needs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from bertops.data.tokenizer import load_tokenizer
from bertops.monitoring.recorder import Recorder, RecorderSettings
from bertops.monitoring.store import FEEDBACK, RECORDS, Store

PREDICTION = {"label": "positive", "probability": 0.75, "probabilities": {"negative": 0.25, "positive": 0.75}}


@dataclass
class Model:
    name: str = "m"
    version: str = "3"
    task: str = "classification"
    pyfunc: object = None


def recorder(tmp_path: Path, start: bool = False, **settings) -> tuple[Recorder, CollectorRegistry]:
    registry = CollectorRegistry()
    rec = Recorder(
        RecorderSettings(store_uri=str(tmp_path / "store"), **settings), registry=registry, start=start
    )
    return rec, registry


def count(registry: CollectorRegistry, outcome: str, name: str = "bertops_monitoring_texts_total") -> float:
    return registry.get_sample_value(name, {"outcome": outcome}) or 0.0


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    # The writer is not running: the queue (2 requests) fills and stays full, as when the writer falls behind.
    rec, registry = recorder(tmp_path, queue_size=2, flush_interval_s=3600)
    queued = [rec.record(f"r{i}", Model(), ["a fine film", "dull"], [PREDICTION] * 2) for i in range(5)]
    assert queued == [2, 2, 0, 0, 0]
    assert count(registry, "queued") == 4 and count(registry, "dropped") == 6
    assert rec.flush() == 4
    assert count(registry, "written") == 4
    table = Store(rec.settings.store_uri).read(RECORDS)
    assert sorted(set(table["request_id"].to_pylist())) == ["r0", "r1"]
    # Room again once drained: the next request is recorded.
    assert rec.record("r5", Model(), ["x"], [PREDICTION]) == 1


def test_rows_carry_model_prediction_and_features(tmp_path: Path, repo_root: Path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "fine", "film"]) + "\n")

    class Pyfunc:  # what bertops' pyfunc exposes: unwrap_python_model().bundle.tokenizer
        def unwrap_python_model(self):
            return type("PM", (), {"bundle": type("B", (), {"tokenizer": load_tokenizer(vocab)})()})()

    rec, _ = recorder(tmp_path)
    rec.record("req-1", Model(pyfunc=Pyfunc()), ["a fine film", "a zebra"], [PREDICTION] * 2)
    rec.flush()
    rows = Store(rec.settings.store_uri).read(RECORDS).to_pylist()
    assert [(r["index"], r["model"], r["version"], r["label"]) for r in rows] == [
        (0, "m", "3", "positive"),
        (1, "m", "3", "positive"),
    ]
    assert rows[0]["confidence"] == 0.75 and rows[0]["text"] == "a fine film"
    assert (rows[0]["n_pieces"], rows[0]["n_unk"], rows[1]["n_unk"]) == (3, 0, 1)
    assert (rows[0]["n_chars"], rows[0]["n_words"]) == (11, 3)


def strings_in(path: Path) -> list[str]:
    """Every string value of every column of a Parquet file."""
    table = pq.read_table(path)
    return [v for col in table.columns for v in col.to_pylist() if isinstance(v, str)]


@pytest.mark.parametrize("store_text", [True, False])
def test_store_text_false_writes_no_raw_text(tmp_path: Path, store_text: bool) -> None:
    rec, _ = recorder(tmp_path, store_text=store_text)
    secret = "zqxsecretword and a private sentence"
    rec.record("req-s", Model(), [secret], [PREDICTION])
    rec.feedback("req-s", 0, "positive", None)
    rec.flush()
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert {p.parent.name for p in files} == {RECORDS, FEEDBACK}
    found = [p for p in files if any("zqxsecretword" in v for v in strings_in(p))]
    if store_text:  # the control: the same check finds the text when it is kept
        assert [p.parent.name for p in found] == [RECORDS]
        return
    assert found == []
    for path in files:
        assert b"zqxsecretword" not in path.read_bytes(), path
    row = pq.read_table(next(p for p in files if p.parent.name == RECORDS)).to_pylist()[0]
    assert row["text"] is None and row["n_chars"] == len(secret) and row["n_words"] == 5


def test_sample_rate_and_hourly_cap(tmp_path: Path) -> None:
    rec, registry = recorder(tmp_path, max_records_per_hour=3)
    assert rec.record("r", Model(), ["a"] * 5, [PREDICTION] * 5) == 3
    assert count(registry, "not_sampled") == 2
    rec, registry = recorder(tmp_path, sample_rate=0.0)
    assert rec.record("r", Model(), ["a"] * 4, [PREDICTION] * 4) == 0
    assert count(registry, "not_sampled") == 4


def test_writer_thread_writes_on_its_own(tmp_path: Path) -> None:
    import time

    rec, registry = recorder(tmp_path, start=True, segment_records=2, flush_interval_s=3600)
    rec.record("r", Model(), ["a", "b", "c"], [PREDICTION] * 3)  # over segment_records: wakes the writer
    deadline = time.monotonic() + 60
    while count(registry, "written") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(registry, "written") == 3
    rec.close()
    assert len(Store(rec.settings.store_uri).segments(RECORDS)) == 1
