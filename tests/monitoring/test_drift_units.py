"""The drift statistics and the report on their own: fast, pure numpy/scipy, a temp store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from bertops.monitoring import drift
from bertops.monitoring.check import feedback_accuracy
from bertops.monitoring.feedback import BadFeedback, parse_feedback
from bertops.monitoring.report import build_report, latest_report, write_report
from bertops.monitoring.store import Store


def test_mmd_tells_a_shift_from_the_same_distribution() -> None:
    rng = np.random.default_rng(0)
    same = drift.embedding_check(rng.normal(size=(200, 8)), rng.normal(size=(150, 8)), 0.01, 100)
    shifted = drift.embedding_check(rng.normal(size=(200, 8)), rng.normal(0.5, size=(150, 8)), 0.01, 100)
    assert not same.drifted and same.p_value > 0.01
    assert shifted.drifted and shifted.p_value <= 1 / 101 + 1e-12 and shifted.statistic > same.statistic


def test_ks_rate_and_counts_checks() -> None:
    rng = np.random.default_rng(1)
    assert not drift.ks_check("length", rng.poisson(20, 300), rng.poisson(20, 200), 0.01).drifted
    longer = drift.ks_check("length", rng.poisson(20, 300), rng.poisson(35, 200), 0.01)
    assert longer.drifted and longer.current["mean"] > longer.reference["mean"]
    assert drift.rate_check("unk_rate", 10, 5000, 400, 3000, 0.01).drifted
    assert drift.rate_check("unk_rate", 0, 5000, 0, 3000, 0.01).p_value == 1.0  # no [UNK] on either side
    assert drift.counts_check("prediction", ["a"] * 50 + ["b"] * 50, ["a"] * 90 + ["b"] * 10, 0.01).drifted
    assert not drift.counts_check(
        "prediction", ["a"] * 50 + ["b"] * 50, ["a"] * 48 + ["b"] * 52, 0.01
    ).drifted
    assert drift.ks_check("confidence", [], [0.5], 0.01).skipped


def test_drift_score_counts_only_checks_that_ran() -> None:
    checks = [
        drift.Check("a", 1.0, 0.001, True),
        drift.Check("b", 0.1, 0.5, False),
        drift.skipped("c", "no text"),
    ]
    assert drift.drift_score(checks) == 0.5
    assert drift.drift_score([drift.skipped("c", "no text")]) == 0.0


def test_feedback_accuracy_joins_on_request_and_index() -> None:
    records = [{"request_id": "r", "index": i, "label": lab} for i, lab in enumerate(["pos", "neg", "pos"])]
    feedback = [{"request_id": "r", "index": 0, "label": "pos"}, {"request_id": "r", "index": 1, "label": "pos"},
                {"request_id": "other", "index": 0, "label": "neg"}]  # fmt: skip
    assert feedback_accuracy(records, feedback) == {"n": 2, "accuracy": 0.5}
    assert feedback_accuracy(records, []) == {"n": 0, "accuracy": None}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not JSON"),
        (b"[1]", "body must be an object"),
        (b'{"label": "positive"}', "field 'request_id'"),
        (b'{"request_id": "r", "index": -1, "label": "positive"}', "field 'index'"),
        (b'{"request_id": "r"}', "exactly one of 'label'"),
        (b'{"request_id": "r", "label": "meh"}', "'meh' is not one of the model's labels"),
        (b'{"request_id": "r", "label": "positive", "extra": 1}', "field 'extra'"),
        (b'{"request_id": "r", "entities": [{"start": 0, "type": "PER"}]}', "field 'entities.0.end'"),
    ],
)
def test_bad_feedback_names_the_field(body: bytes, message: str) -> None:
    with pytest.raises(BadFeedback, match=message.replace("(", r"\(")):
        parse_feedback(body, ["negative", "positive"])


def test_entities_feedback_is_kept_as_json() -> None:
    fb = parse_feedback(b'{"request_id": "r", "entities": [{"start": 0, "end": 5, "type": "PER"}]}', None)
    assert json.loads(fb.entities_json()) == [{"start": 0, "end": 5, "type": "PER"}]


def test_report_round_trips_through_the_store(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    checks = [drift.Check("embedding", 0.2, 0.001, True, {"n": 3}, {"n": 4}), drift.skipped("unk_rate", "x")]
    report = build_report(
        checks, 0.5, created_at="2026-12-01T10:00:00+00:00", model="m", champion_version="2",
        window_start="a", window_end="b", n_current=150, n_reference=300, served_versions=["2"],
        drift_threshold=0.4, min_samples=100, drifted=True, triggered=True, feedback={"n": 0, "accuracy": None},
    )  # fmt: skip
    write_report(store, report, datetime(2026, 12, 1, 10, tzinfo=UTC))
    again = latest_report(store)
    assert again == report and Path(again.html_path).read_text().count("<tr>") == 3
    assert report.metrics()["embedding_p_value"] == 0.001 and "unk_rate_p_value" not in report.metrics()
    assert latest_report(Store(str(tmp_path / "empty"))) is None
